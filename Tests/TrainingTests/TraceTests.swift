import Foundation
import TestSupport
import XCTest

/// `--trace FILE` writes a Chrome trace (Trace Event Format) that chrome://tracing and Perfetto open: for `launch`,
/// one file with the coordinator's and every worker's spans on one wall clock.
final class TraceTests: CLITestCase {
    func spans(_ path: String) throws -> [[String: Any]] {
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any]
        return try XCTUnwrap(object?["traceEvents"] as? [[String: Any]], "no traceEvents in \(path)")
    }

    func testLaunchWritesOneTraceWithTheCoordinatorAndEveryWorker() throws {
        try requireDataset()
        let trace = scratch + "/trace.json"
        let result = try trainerd(["launch", config, "--workers", "2", "--run-dir", scratch + "/run", "--trace", trace,
                                   "--set", "training.max_steps=20", "--set", "training.eval_every=0"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let events = try spans(trace)
        let names = Dictionary(uniqueKeysWithValues: events.filter { $0["ph"] as? String == "M" }.compactMap { event in
            (event["pid"] as? Int).flatMap { pid in ((event["args"] as? [String: Any])?["name"] as? String).map { (pid, $0) } }
        })
        XCTAssertEqual(Set(names.values), ["coordinator", "worker-0", "worker-1"])
        let complete = events.filter { $0["ph"] as? String == "X" }
        func count(_ process: String, _ span: String) -> Int {
            complete.filter { names[$0["pid"] as? Int ?? -1] == process && $0["name"] as? String == span }.count
        }
        for span in ["step", "gradients", "send_weights", "wait", "reduce", "optimizer"] {
            XCTAssertEqual(count("coordinator", span), 20, span)
        }
        for worker in ["worker-0", "worker-1"] {
            for span in ["forward", "backward", "send"] { XCTAssertGreaterThanOrEqual(count(worker, span), 20, "\(worker) \(span)") }
        }
        XCTAssertTrue(complete.allSatisfy { ($0["dur"] as? Double ?? -1) >= 0 && ($0["ts"] as? Double ?? 0) > 1.7e15 })
        // One wall clock: each worker's first forward pass lies inside the coordinator's first step.
        let firstStep = try XCTUnwrap(complete.filter { names[$0["pid"] as? Int ?? -1] == "coordinator" && $0["name"] as? String == "step" }
            .min { ($0["ts"] as! Double) < ($1["ts"] as! Double) })
        let (start, end) = (firstStep["ts"] as! Double, (firstStep["ts"] as! Double) + (firstStep["dur"] as! Double))
        for worker in ["worker-0", "worker-1"] {
            let forward = try XCTUnwrap(complete.filter { names[$0["pid"] as? Int ?? -1] == worker && $0["name"] as? String == "forward" }
                .map { $0["ts"] as! Double }.min())
            XCTAssertTrue(forward >= start && forward <= end, "\(worker)'s first forward at \(forward), step \(start)…\(end)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: trace + ".worker-0"), "the workers' files are merged and removed")
    }

    func testTrainTracesForwardAndBackwardOnEveryThread() throws {
        try requireDataset()
        let trace = scratch + "/train.json"
        let result = try trainerd(["train", config, "--run-dir", scratch + "/run", "--trace", trace,
                                   "--set", "training.max_steps=10", "--set", "training.threads=2"])
        XCTAssertEqual(result.status, 0, result.stderr)
        let forward = try spans(trace).filter { $0["name"] as? String == "forward" }
        XCTAssertEqual(forward.count, 20, "one pass per thread per step")
        // On at least 2 threads (Dispatch may serve the second lane from a different pool thread in each step).
        XCTAssertGreaterThanOrEqual(Set(forward.compactMap { $0["tid"] as? Int }).count, 2)
    }
}
