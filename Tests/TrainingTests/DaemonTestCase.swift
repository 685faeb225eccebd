import Foundation
import XCTest

/// Helpers for tests of `trainerd serve` with pool workers, all real processes (`StandingClusterTests`,
/// `DashboardInBrowserTests`).
class DaemonTestCase: CLITestCase {
    /// No evaluation between steps, a checkpoint every 10, and heartbeats fast enough that a worker notices a dead
    /// daemon within 2 s.
    let job = ["--set", "training.eval_every=0", "--set", "training.checkpoint_every=10",
               "--set", "cluster.heartbeat_interval=0.2", "--set", "cluster.heartbeat_timeout=2"]

    struct Daemon {
        var process: Process
        var state: String
        var endpoint: String
        var server: String
        var log: String
        /// The log stream's endpoint (`--log-bind`).
        var logEndpoint: String
        /// The network namespace it runs in (nil: this one); the command line reaches its API from there.
        var namespace: String?
    }

    /// `serve` on free loopback ports (or those given), in `directory` when given, with `options` (TLS, CURVE); in
    /// network namespace `namespace`, its worker and log ports on `address` there (the API on its loopback).
    func startDaemon(state: String, workerPort: UInt16? = nil, apiPort: UInt16? = nil, options: [String] = [],
                     directory: String? = nil, namespace: (name: String, address: String)? = nil) throws -> Daemon {
        let host = namespace?.address ?? "127.0.0.1"
        let endpoint = "tcp://\(host):\(try workerPort ?? freePort())", port = try apiPort ?? freePort()
        let logEndpoint = "tcp://\(host):\(try freePort())"
        let log = state + "-serve-\(UUID().uuidString.prefix(8)).log"
        let process = try start(["serve", "--state-dir", state, "--bind", endpoint, "--log-bind", logEndpoint,
                                 "--api", "127.0.0.1:\(port)", "--heartbeat-timeout", "30"] + options, log: log, directory: directory,
                                namespace: namespace?.name)
        let server = (options.contains("--tls-cert") ? "https" : "http") + "://127.0.0.1:\(port)"
        try waitForText(log, containing: "api on \(server)", while: process)
        return Daemon(process: process, state: state, endpoint: endpoint, server: server, log: log, logEndpoint: logEndpoint,
                      namespace: namespace?.name)
    }

    func token(_ state: String, _ name: String, role: String) throws -> String {
        let made = try trainerd(["token", "create", name, "--role", role, "--state-dir", state])
        XCTAssertEqual(made.status, 0, made.stderr)
        return String(try XCTUnwrap(made.stdout.split(separator: "\n").last))
    }

    func client(_ daemon: Daemon, _ token: String, _ arguments: [String]) throws -> Result {
        let arguments = arguments + ["--server", daemon.server, "--token", token]
        guard let namespace = daemon.namespace else { return try trainerd(arguments) }
        return try run("/usr/bin/env", ["ip", "netns", "exec", namespace, executable] + arguments, timeout: 300)
    }

    /// Submits the default config with `overrides`; the job's id (the last line `submit` prints).
    func submit(_ daemon: Daemon, _ token: String, _ overrides: [String], options: [String] = []) throws -> Int {
        let result = try client(daemon, token, ["submit", config] + overrides + options)
        XCTAssertEqual(result.status, 0, result.stderr)
        return try XCTUnwrap(Int(result.stdout.split(separator: "\n").last ?? ""), result.stdout)
    }

    func show(_ daemon: Daemon, _ token: String, _ id: Int) throws -> [String: Any] {
        let result = try client(daemon, token, ["show", "\(id)", "--json"])
        XCTAssertEqual(result.status, 0, result.stderr)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
    }

    func run(_ daemon: Daemon, _ id: Int) -> String { daemon.state + "/jobs/\(id)" }

    /// Pool workers named `names`, each in the network namespace of the same name when `namespaces`.
    func startWorkers(_ daemon: Daemon, _ names: [String], options: [String] = [], namespaces: Bool = false) throws -> [Process] {
        let workers = try names.map { name in
            try start(["worker", "--connect", daemon.endpoint, "--name", name, "--threads", "1"] + options, log: scratch + "/\(name).log",
                      directory: scratch, namespace: namespaces ? name : nil)
        }
        for name in names { try waitForText(daemon.log, containing: "worker \(name) on ", while: daemon.process) }
        return workers
    }

    func step(workers: Int) -> ([String: Any]) -> Bool {
        { $0["event"] as? String == "step" && $0["workers"] as? Int == workers }
    }

    func event(_ name: String) -> ([String: Any]) -> Bool { { $0["event"] as? String == name } }

    func logs(_ daemon: Daemon) -> String {
        ([daemon.log] + ((try? FileManager.default.contentsOfDirectory(atPath: scratch)) ?? []).filter { $0.hasSuffix(".log") }
            .map { scratch + "/" + $0 })
            .map { "--- \($0)\n" + ((try? String(contentsOfFile: $0, encoding: .utf8)) ?? "") }.joined(separator: "\n")
    }
}
