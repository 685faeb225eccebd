import Foundation
import TestSupport
import XCTest

/// What operators watch: the Prometheus metrics file (`--metrics-file`) and the health check (`trainerd status`).
final class OperationsTests: CLITestCase {
    /// A `launch` with a log stream and a metrics file: `status` answers while it runs and fails once it has
    /// stopped; the metrics file is valid Prometheus text throughout (prometheus_client's parser where installed)
    /// and ends with `up` 0 and the last step.
    func testStatusAndMetricsFollowALaunchedJob() throws {
        try requireDataset()
        let endpoint = "tcp://127.0.0.1:\(try freePort())"
        let run = scratch + "/ops", metrics = scratch + "/trainerd.prom"
        let launch = try start(["launch", config, "--workers", "2", "--run-dir", run, "--log-bind", endpoint,
                                "--metrics-file", metrics] + openEnded)
        defer { if launch.isRunning { launch.terminate() } }
        var status: Result?
        let deadline = Date().addingTimeInterval(120)
        repeat {
            status = try trainerd(["status", endpoint, "--timeout", "2"])
        } while status?.status != 0 && Date() < deadline && launch.isRunning
        let answer = try XCTUnwrap(status)
        XCTAssertEqual(answer.status, 0, answer.stderr)
        XCTAssertTrue(answer.stdout.hasPrefix("running: job fmnist-mlp, "), answer.stdout)
        // Steps rewrite the file at most once a second: wait until it shows step 100.
        func stepInFile() -> Double {
            let text = (try? String(contentsOfFile: metrics, encoding: .utf8)) ?? ""
            let line = text.split(separator: "\n").first { $0.hasPrefix("trainerd_step{") }
            return line.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
        }
        while stepInFile() < 100 && launch.isRunning && Date() < deadline { usleep(50_000) }
        let running = try parseMetrics(metrics)
        XCTAssertEqual(running["trainerd_up"], 1)
        XCTAssertEqual(running["trainerd_workers"], 2)
        XCTAssertGreaterThan(running["trainerd_gradient_bytes_total"] ?? 0, 0)

        launch.interrupt()
        launch.waitUntilExit()
        let stopped = try parseMetrics(metrics)
        let last = try XCTUnwrap(events(run).last)
        XCTAssertEqual(last["event"] as? String, "stopped")
        XCTAssertEqual(stopped["trainerd_up"], 0)
        XCTAssertEqual(stopped["trainerd_step"], (last["step"] as? NSNumber)?.doubleValue)
        let total = try XCTUnwrap(events(run).first { $0["event"] as? String == "job_start" }?["steps"] as? NSNumber)
        XCTAssertEqual(stopped["trainerd_total_steps"], total.doubleValue)
        XCTAssertGreaterThanOrEqual(stopped["trainerd_checkpoints_total"] ?? 0, 1)

        let gone = try trainerd(["status", endpoint, "--timeout", "1"])
        XCTAssertEqual(gone.status, 1)
        XCTAssertEqual(gone.stderr, "trainerd: error: \(endpoint): no answer within 1.0 s (is the coordinator running, with --log-bind there?); if it uses CURVE, give --key and --server-key\n")
    }

    func testAnUnwritableMetricsFileStopsTheJobBeforeItStarts() throws {
        try requireDataset()
        let result = try trainerd(["train", config, "--run-dir", scratch + "/run", "--metrics-file", "/nonexistent/trainerd.prom"])
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.hasPrefix("trainerd: error: /nonexistent/trainerd.prom: "), result.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch + "/run/events.jsonl") &&
                       events(scratch + "/run").contains { $0["event"] as? String == "step" })
    }

    /// Every sample of the file, after checking its syntax: with Python's prometheus_client when it is installed,
    /// otherwise line by line here. Each series must have HELP and TYPE and the label job_name="fmnist-mlp" (not
    /// `job`, which Prometheus sets to the scrape target's name).
    func parseMetrics(_ path: String) throws -> [String: Double] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let python = try run("/usr/bin/env", ["python3", "-c", """
            import sys
            from prometheus_client.parser import text_string_to_metric_families
            for family in text_string_to_metric_families(open(sys.argv[1]).read()):
                assert family.documentation and family.type in ("gauge", "counter"), family.name
                for sample in family.samples:
                    assert sample.labels == {"job_name": "fmnist-mlp"}, sample
                    print(sample.name, sample.value)
            """, path], timeout: 60)
        var samples: [String: Double] = [:]
        if python.status == 0 {
            for line in python.stdout.split(separator: "\n") {
                let fields = line.split(separator: " ")
                samples[String(fields[0])] = Double(fields[1])
            }
        } else {
            XCTAssertTrue(python.stderr.contains("No module named 'prometheus_client'"), python.stderr)
        }
        var own: [String: Double] = [:], described = Set<String>()
        for line in text.split(separator: "\n") {
            if line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") {
                described.insert(String(line.split(separator: " ")[2]))
                continue
            }
            let parts = line.split(separator: " ")
            XCTAssertEqual(parts.count, 2, String(line))
            let name = String(parts[0].prefix { $0 != "{" })
            XCTAssertEqual(parts[0].dropFirst(name.count), "{job_name=\"fmnist-mlp\"}")
            XCTAssertTrue(described.contains(name), "\(name) has HELP and TYPE")
            own[name] = Double(parts[1])
        }
        if !samples.isEmpty { XCTAssertEqual(samples, own, "prometheus_client reads what the file says") }
        return own
    }
}
