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

    func assertRejected(_ yaml: String, overrides: [String] = [], _ message: String, line: UInt = #line) {
        XCTAssertThrowsError(try JobConfig.parse(yaml: yaml, source: "job.yaml", overrides: overrides), line: line) {
            XCTAssertEqual("\($0)", message, line: line)
        }
    }

    func testBadConfigsNameTheFieldAndWhatWasExpected() {
        assertRejected("trainig: {epochs: 1}",
                       "job.yaml: unknown field 'trainig' (expected one of: data, model, name, optimizer, schedule, seed, training)")
        assertRejected("optimizer: {lr: -0.1}", "job.yaml: optimizer.lr must be positive, got -0.1")
        assertRejected("optimizer: {lr: fast}", "job.yaml: optimizer.lr must be a number, got a string fast")
        assertRejected("training: {batch_size: 100, micro_batches: 8}",
                       "job.yaml: training.micro_batches must be positive and divide batch_size 100, got 8")
        assertRejected("model: {sizes: [784]}", "job.yaml: model.sizes must list at least two positive layer widths, got [784]")
        assertRejected("model: {activation: gelu}", "job.yaml: model.activation must be one of relu, tanh, sigmoid, got 'gelu'")
        assertRejected("optimizer: {kind: adam, momentum: 0.9}",
                       "job.yaml: unknown field 'optimizer.momentum' (expected one of: betas, eps, kind, lr, weight_decay)")
        assertRejected("training: 5", "job.yaml: training must be a mapping, got an integer")
        assertRejected("seed: 1.5", "job.yaml: seed must be an integer, got a number 1.5")
        assertRejected("", overrides: ["training.epochs"], "--set training.epochs: expected key.path=value")
        assertRejected("- a\n- b", "job.yaml: the top level must be a mapping of sections")
        XCTAssertThrowsError(try JobConfig.load(path: "/nonexistent/job.yaml")) {
            XCTAssertEqual("\($0)", "/nonexistent/job.yaml: cannot read the config file (missing or not UTF-8)")
        }
    }
}
