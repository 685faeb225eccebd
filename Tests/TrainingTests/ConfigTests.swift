import Optim
import TestSupport
import Training
import XCTest

final class ConfigTests: XCTestCase {
    var repository: URL { fixturesDirectory().deletingLastPathComponent().deletingLastPathComponent() }

    func testDefaultJobConfigIsTheIssuesSetup() throws {
        let config = try JobConfig.load(path: repository.appendingPathComponent("configs/fmnist-mlp.yaml").path)
        XCTAssertEqual(config.model.sizes, [784, 256, 256, 10])
        XCTAssertEqual(config.model.activation, .relu)
        XCTAssertEqual(config.optimizer.config, .adamw(beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01))
        XCTAssertEqual(config.optimizer.lr, 1e-3)
        XCTAssertEqual(config.training.batchSize, 128)
        XCTAssertEqual(config.training.clipNorm, 1.0)
        XCTAssertEqual(config.data.directory, "/usr/share/datasets/fashion-mnist")
    }

    func testOverridesSetNestedFieldsWithYAMLValues() throws {
        let config = try JobConfig.parse(yaml: "optimizer: {kind: sgd, lr: 0.1}", overrides: [
            "optimizer.momentum=0.9", "training.batch_size=64", "model.sizes=[784, 32, 10]", "schedule.kind=step",
            "schedule.step_size=100",
        ])
        XCTAssertEqual(config.optimizer.config, .sgd(momentum: 0.9))
        XCTAssertEqual(config.training.batchSize, 64)
        XCTAssertEqual(config.model.sizes, [784, 32, 10])
        XCTAssertEqual(config.schedule, .step(stepSize: 100, gamma: 0.1))
    }

    func testClusterAndSecuritySections() throws {
        let config = try JobConfig.parse(yaml: """
            cluster: {min_workers: 3, heartbeat_interval: 0.5, heartbeat_timeout: 4, step_deadline: 60, straggler_delay: 0, wait_timeout: 30}
            security: {secret_key: keys/coordinator.key, allowed_keys: keys/allowed}
            training: {max_skipped_steps: 2}
            """)
        XCTAssertEqual(config.cluster.minWorkers, 3)
        XCTAssertEqual(config.cluster.heartbeatInterval, 0.5)
        XCTAssertEqual(config.cluster.heartbeatTimeout, 4)
        XCTAssertEqual(config.cluster.stepDeadline, 60)
        XCTAssertEqual(config.cluster.stragglerDelay, 0)
        XCTAssertEqual(config.cluster.waitTimeout, 30)
        XCTAssertEqual(config.security, JobConfig.SecuritySection(secretKey: "keys/coordinator.key", allowedKeys: "keys/allowed"))
        XCTAssertEqual(config.training.maxSkippedSteps, 2)
        XCTAssertNil(try JobConfig.parse(yaml: "").security)
    }

    func assertRejected(_ yaml: String, overrides: [String] = [], _ message: String, line: UInt = #line) {
        XCTAssertThrowsError(try JobConfig.parse(yaml: yaml, source: "job.yaml", overrides: overrides), line: line) {
            XCTAssertEqual("\($0)", message, line: line)
        }
    }

    func testBadConfigsNameTheFieldAndWhatWasExpected() {
        assertRejected("trainig: {epochs: 1}",
                       "job.yaml: unknown field 'trainig' (expected one of: cluster, data, model, name, optimizer, schedule, security, seed, training)")
        assertRejected("optimizer: {lr: -0.1}", "job.yaml: optimizer.lr must be positive, got -0.1")
        assertRejected("optimizer: {lr: fast}", "job.yaml: optimizer.lr must be a number, got a string fast")
        assertRejected("training: {batch_size: 100, micro_batches: 8}",
                       "job.yaml: training.micro_batches must be positive and divide batch_size 100, got 8")
        assertRejected("model: {sizes: [784]}", "job.yaml: model.sizes must list at least two positive layer widths, got [784]")
        assertRejected("model: {activation: gelu}", "job.yaml: model.activation must be one of relu, tanh, sigmoid, got 'gelu'")
        assertRejected("cluster: {wire_dtype: fp16}", "job.yaml: cluster.wire_dtype must be float32 or bf16, got 'fp16'")
        assertRejected("optimizer: {kind: adam, momentum: 0.9}",
                       "job.yaml: unknown field 'optimizer.momentum' (expected one of: betas, eps, kind, lr, weight_decay)")
        assertRejected("training: 5", "job.yaml: training must be a mapping, got an integer")
        assertRejected("seed: 1.5", "job.yaml: seed must be an integer, got a number 1.5")
        assertRejected("", overrides: ["training.epochs"], "--set training.epochs: expected key.path=value")
        assertRejected("- a\n- b", "job.yaml: the top level must be a mapping of sections")
        assertRejected("cluster: {min_workers: 0}", "job.yaml: cluster.min_workers must be positive, got 0")
        assertRejected("cluster: {heartbeat_interval: 2, heartbeat_timeout: 3}",
                       "job.yaml: cluster.heartbeat_timeout must be at least twice heartbeat_interval (2.0 s), got 3.0")
        assertRejected("cluster: {step_deadline: 0}", "job.yaml: cluster.step_deadline must be a positive number of seconds, got 0.0")
        assertRejected("cluster: {straggler_delay: -1}",
                       "job.yaml: cluster.straggler_delay must be 0 (off) or a positive number of seconds, got -1.0")
        assertRejected("security: {secret_key: c.key}",
                       "job.yaml: security.allowed_keys is required: a directory of allowed public keys (*.pub)")
        assertRejected("training: {max_skipped_steps: -1}",
                       "job.yaml: training.max_skipped_steps must be 0 (stop at the first) or positive, got -1")
        XCTAssertThrowsError(try JobConfig.load(path: "/nonexistent/job.yaml")) {
            XCTAssertEqual("\($0)", "/nonexistent/job.yaml: cannot read the config file (missing or not UTF-8)")
        }
    }
}
