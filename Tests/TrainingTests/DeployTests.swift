import Foundation
import TestSupport
import XCTest

/// deploy/: the systemd units pass `systemd-analyze verify` without a warning, score as "OK" or better in
/// `systemd-analyze security`, and keep the hardening the README promises.
final class DeployTests: CLITestCase {
    var systemdDirectory: URL { repository.appendingPathComponent("deploy/systemd") }

    func testSystemdUnitsVerifyCleanlyAndAreHardened() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze"),
                          "systemd-analyze is not installed (deploy/setup.sh --tests installs systemd)")
        // verify checks that ExecStart's program exists: point it at the trainerd just built.
        let units = ["trainerd-coordinator.service", "trainerd-worker@.service", "trainerd-serve.service"]
        var paths: [String] = []
        for unit in units {
            let text = try String(contentsOf: systemdDirectory.appendingPathComponent(unit), encoding: .utf8)
            let keys = Set(text.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") })
            for required in ["User=trainerd", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                             "CapabilityBoundingSet="] {
                XCTAssertTrue(keys.contains(required), "\(unit) lacks \(required)")
            }
            XCTAssertTrue(keys.contains { $0.hasPrefix("Restart=") }, "\(unit) has a restart policy")
            XCTAssertTrue(text.contains("ExecStart=/usr/local/bin/trainerd "), "\(unit) runs the installed trainerd")
            let path = scratch + "/" + unit
            try text.replacingOccurrences(of: "/usr/local/bin/trainerd", with: executable).write(toFile: path, atomically: true, encoding: .utf8)
            paths.append(path)
        }
        let coordinator = try String(contentsOf: systemdDirectory.appendingPathComponent(units[0]), encoding: .utf8)
        XCTAssertTrue(coordinator.contains("ReadWritePaths=/var/lib/trainerd"), "the run directory stays writable")
        XCTAssertTrue(coordinator.contains("--run-dir /var/lib/trainerd/run --resume"), "a restart resumes")
        XCTAssertTrue(coordinator.contains("SuccessExitStatus=130"), "a stop (exit 130 after the checkpoint) is clean")
        let serve = try String(contentsOf: systemdDirectory.appendingPathComponent(units[2]), encoding: .utf8)
        XCTAssertTrue(serve.contains("ReadWritePaths=/var/lib/trainerd"), "the state directory stays writable")
        XCTAssertTrue(serve.contains("serve --state-dir /var/lib/trainerd/serve "), "one state directory across restarts")

        let verify = try run("/usr/bin/systemd-analyze", ["verify"] + paths, timeout: 60)
        XCTAssertEqual(verify.status, 0, verify.stderr)
        XCTAssertEqual(verify.stdout + verify.stderr, "", "no warnings (unknown keys and bad values are only warnings)")
        for path in paths {
            let security = try run("/usr/bin/systemd-analyze", ["security", "--offline=true", "--no-pager", path], timeout: 60)
            let verdict = try XCTUnwrap(security.stdout.split(separator: "\n").last { $0.contains("Overall exposure level") })
            print("systemd-analyze security \((path as NSString).lastPathComponent): \(verdict)")
            let score = try XCTUnwrap(Double(verdict.split(separator: ":").last!.split(separator: " ").first!))
            XCTAssertLessThanOrEqual(score, 4.0, "exposure \(score): \(security.stdout)")
        }
    }
}
