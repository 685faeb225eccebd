import Foundation
import TestSupport
import XCTest

/// `security` in the config: CURVE on loopback with keys from `trainerd keygen`. A stranger's key, a plaintext
/// worker and a stranger's monitor are refused and logged with their address; the allowed worker trains to the
/// weights of `train`, and so does `launch`, which gives its own workers keys.
final class SecurityTests: CLITestCase {
    func testOnlyAllowedKeysJoinAndRefusedPeersAreLoggedWithTheirAddress() throws {
        try requireDataset()
        let keys = scratch + "/keys", allowed = keys + "/allowed"
        for (directory, name) in [(keys, "coordinator"), (keys, "stranger"), (allowed, "good"), (allowed, "watcher")] {
            XCTAssertEqual(try trainerd(["keygen", "--directory", directory, "--name", name]).status, 0)
        }
        let steps = ["--set", "training.max_steps=40", "--set", "training.eval_every=0", "--set", "training.checkpoint_every=0"]
        let secured = steps + ["--set", "security.secret_key=\(keys)/coordinator.key", "--set", "security.allowed_keys=\(allowed)"]
        XCTAssertEqual(try trainerd(["train", config, "--run-dir", scratch + "/plain"] + steps).status, 0)
        let expected = try XCTUnwrap(try doneEvent(scratch + "/plain")["weights_sha256"] as? String)

        let run = scratch + "/secured", port = try freePort(), logPort = try freePort()
        let endpoint = "tcp://127.0.0.1:\(port)", logEndpoint = "tcp://127.0.0.1:\(logPort)"
        let coordinator = try start(["coordinator", config, "--bind", endpoint, "--log-bind", logEndpoint, "--workers", "1",
                                     "--run-dir", run] + secured)
        defer { if coordinator.isRunning { coordinator.terminate() } }
        let server = ["--server-key", keys + "/coordinator.pub"]

        let stranger = try trainerd(["worker", "--connect", endpoint, "--key", keys + "/stranger.key", "--join-timeout", "10"] + server, timeout: 30)
        XCTAssertEqual(stranger.status, 1)
        XCTAssertEqual(stranger.stderr, "trainerd: error: \(endpoint): the coordinator refused this key (ZAP status 400); add this worker's public key to its allowed_keys\n")
        let plaintext = try trainerd(["worker", "--connect", endpoint, "--join-timeout", "2"], timeout: 30)
        XCTAssertEqual(plaintext.status, 1)
        XCTAssertEqual(plaintext.stderr, "trainerd: error: \(endpoint): no answer from the coordinator within 2 s\n")
        let spy = try trainerd(["monitor", logEndpoint, "--key", keys + "/stranger.key", "--idle-timeout", "10"] + server, timeout: 30)
        XCTAssertEqual(spy.status, 1)
        XCTAssertTrue(spy.stderr.contains("the coordinator refused this key"), spy.stderr)

        // The worker starts once the watcher has the snapshot of the waiting job, so the watcher sees the whole run.
        let watched = scratch + "/watcher.out"
        let watcher = try start(["monitor", logEndpoint, "--json", "--key", allowed + "/watcher.key", "--idle-timeout", "60"] + server,
                                output: watched)
        defer { if watcher.isRunning { watcher.terminate() } }
        XCTAssertTrue(try waitForText(watched, while: watcher).contains("\"snapshot\""))
        let good = try trainerd(["worker", "--connect", endpoint, "--key", allowed + "/good.key", "--name", "good"] + server, timeout: 120)
        XCTAssertEqual(good.status, 0, good.stderr)
        coordinator.waitUntilExit()
        watcher.waitUntilExit()
        XCTAssertEqual(coordinator.terminationStatus, 0)
        XCTAssertEqual(watcher.terminationStatus, 0, "the allowed monitor follows the run to its end")
        XCTAssertTrue(try String(contentsOfFile: watched, encoding: .utf8).contains("\"event\":\"done\""))
        XCTAssertEqual(try doneEvent(run)["weights_sha256"] as? String, expected)

        let refusals = events(run).filter { $0["event"] as? String == "peer_refused" }
        let strangerKey = try String(contentsOfFile: keys + "/stranger.pub", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(refusals.contains { $0["address"] as? String == "127.0.0.1" && ($0["reason"] as? String)?.contains(strangerKey) == true }, "\(refusals)")
        // A plaintext peer's connection can close before the gatekeeper reads its address; it is then "unknown".
        XCTAssertTrue(refusals.contains { ["127.0.0.1", "unknown"].contains($0["address"] as? String)
            && ($0["reason"] as? String)?.hasPrefix("no CURVE handshake") == true }, "\(refusals)")
        for refusal in refusals { print("peer_refused \(refusal["address"] ?? "") \(refusal["reason"] ?? "")") }

        let launched = try trainerd(["launch", config, "--workers", "2", "--run-dir", scratch + "/launch"] + secured)
        XCTAssertEqual(launched.status, 0, launched.stderr)
        XCTAssertEqual(try doneEvent(scratch + "/launch")["weights_sha256"] as? String, expected)
    }
}
