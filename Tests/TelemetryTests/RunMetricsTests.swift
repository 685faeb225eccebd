import Prometheus
import Telemetry
import Training
import XCTest

/// `RunMetrics` from a coordinator's events (the fields as `Trainer` and the cluster log them) and `RunSeries`,
/// their series in a registry's text exposition.
final class RunMetricsTests: XCTestCase {
    func run(_ events: [(String, [(String, JSONValue)])]) -> RunMetrics {
        var metrics = RunMetrics()
        for (index, (event, fields)) in events.enumerated() { metrics.observe(event, fields, time: 1000 + Double(index)) }
        return metrics
    }

    let start: (String, [(String, JSONValue)]) = ("job_start", [("job", "fmnist-mlp"), ("batch_size", 128), ("steps", 4680), ("start_step", 0)])

    func step(_ step: Int, loss: Double, samplesPerSecond: Double, bytes: [Int]) -> (String, [(String, JSONValue)]) {
        ("step", [("step", .int(step)), ("loss", .number(loss)), ("grad_norm", 0.5), ("lr", 0.001),
                  ("samples_per_s", .number(samplesPerSecond)), ("total_steps", 4680), ("workers", .int(bytes.count)),
                  ("worker_bytes", .object(bytes.enumerated().map { ("w\($0.offset)", .int($0.element)) }))])
    }

    func testGaugesFollowTheLatestEventsAndCountersAddUp() {
        let metrics = run([
            start, ("worker_joined", [("worker", "w0"), ("workers", 1)]),
            step(1, loss: 2.3, samplesPerSecond: 0, bytes: [1000]),
            step(2, loss: 2.1, samplesPerSecond: 6400, bytes: [600, 400]),
            ("eval", [("step", 2), ("test_loss", 2.0), ("test_accuracy", 0.31)]),
            ("checkpoint", [("step", 2)]), ("skipped", [("step", 2)]),
            ("worker_lost", [("worker", "w1"), ("workers", 1)]),
        ])
        XCTAssertEqual(metrics.jobName, "fmnist-mlp")
        XCTAssertEqual(metrics["up"], 1)
        XCTAssertEqual(metrics["step"], 2)
        XCTAssertEqual(metrics["loss"], 2.1)
        XCTAssertEqual(metrics["workers"], 1, "the loss came after the last step")
        XCTAssertEqual(metrics["test_accuracy"], 0.31)
        XCTAssertEqual(metrics["gradient_bytes_total"], 2000)
        XCTAssertEqual(metrics["checkpoints_total"], 1)
        XCTAssertEqual(metrics["skipped_steps_total"], 1)
        XCTAssertEqual(metrics["last_event_timestamp_seconds"], 1007)
        // 4,678 steps of 128 samples at 6,400 samples/s.
        XCTAssertEqual(try XCTUnwrap(metrics.etaSeconds), 4678 * 128 / 6400, accuracy: 1e-9)
    }

    func testAnEndedJobIsDownAndHasNoETA() {
        let metrics = run([start, step(5, loss: 1, samplesPerSecond: 100, bytes: [10]), ("job_end", [("state", "cancelled"), ("step", 5)])])
        XCTAssertEqual(metrics["up"], 0)
        XCTAssertEqual(metrics["step"], 5)
        XCTAssertNil(metrics.etaSeconds)
    }

    /// The exposition has each series once with its labels (quotes escaped), counters at their totals however often
    /// they were updated, and nothing of a run once it is unregistered.
    func testSeriesInARegistry() {
        let registry = PrometheusCollectorRegistry()
        let series = RunSeries(registry: registry, labels: [("job_id", "7"), ("job_name", "a \"quoted\" name")])
        var metrics = run([start, step(1, loss: 2.5, samplesPerSecond: 0, bytes: [300])])
        series.update(from: metrics)
        metrics.observe("step", step(2, loss: 2.25, samplesPerSecond: 0, bytes: [200]).1, time: 2000)
        series.update(from: metrics)
        series.update(from: metrics)
        let lines = registry.emitToString().split(separator: "\n").map(String.init)
        let labels = #"{job_id="7",job_name="a \"quoted\" name"}"#
        XCTAssertTrue(lines.contains("trainerd_loss\(labels) 2.25"), lines.joined(separator: "\n"))
        XCTAssertTrue(lines.contains("trainerd_gradient_bytes_total\(labels) 500.0"), lines.joined(separator: "\n"))
        XCTAssertTrue(lines.contains("# TYPE trainerd_gradient_bytes_total counter"))
        XCTAssertTrue(lines.contains("# TYPE trainerd_loss gauge"))
        XCTAssertFalse(lines.contains { $0.hasPrefix("trainerd_test_accuracy") }, "no evaluation yet: no series")
        XCTAssertEqual(lines.filter { $0.hasPrefix("trainerd_step{") }.count, 1)
        series.unregister()
        XCTAssertFalse(registry.emitToString().contains("job_id=\"7\""))
    }
}
