import Foundation
import TestSupport
import XCTest

/// `trainerd serve` with pool workers, all real processes on loopback, driven through the command line (`submit`,
/// `show --json`, `cancel`, `token create`) and, for the API's status codes, curl. Every wait is for an event in a
/// job's events.jsonl or a line in the daemon's log; open-ended jobs are ended with `cancel`, so nothing depends on
/// how fast the machine trains.
final class StandingClusterTests: DaemonTestCase {
    /// The scenario on 3 pool workers. A (min 1, max 3, open-ended) takes all three; B (min 1, max 2) waits;
    /// C (priority 1, exactly 2) takes two of A's at A's next step boundary; when C ends they go back to A, the
    /// running job below its max; when A is cancelled B starts with two. The same three worker processes serve
    /// every job and join the pool once each; B and C end with `train`'s hash, A with `train`'s hash to the step it
    /// was cancelled at.
    ///
    /// On the log port, `monitor --job A` (started once A trains: its snapshot comes first) gets every one of A's
    /// steps from there on, as events.jsonl has them, and ends by itself at A's `job_end`; `monitor` without `--job`
    /// shows all three jobs; a `monitor --job C` started after C ended gets C's end in its snapshot and exits.
    func testJobsShareAStandingPoolAndWorkersMoveAtStepBoundaries() throws {
        try requireDataset()
        let daemon = try startDaemon(state: scratch + "/state")
        let admin = try token(daemon.state, "alice", role: "admin")
        let workers = try startWorkers(daemon, ["w0", "w1", "w2"])
        let a = try submit(daemon, admin, job + openEnded, options: ["--workers", "1:3"])
        try waitForEvent(run(daemon, a), while: daemon.process, step(workers: 3))
        let followA = scratch + "/monitor-a.jsonl", followAll = scratch + "/monitor-all.txt"
        let monitorA = try start(["monitor", daemon.logEndpoint, "--job", "\(a)", "--json"], output: followA)
        let monitorAll = try start(["monitor", daemon.logEndpoint, "--every", "0"], output: followAll)
        try waitForText(followA, containing: "\"snapshot\"", while: monitorA)
        try waitForText(followAll, containing: "[job \(a)] step", while: monitorAll)
        let finite = job + ["--set", "training.max_steps=60"]
        let b = try submit(daemon, admin, finite, options: ["--workers", "1:2"])
        let c = try submit(daemon, admin, finite + ["--set", "seed=5"], options: ["--workers", "2", "--priority", "1"])
        try waitForEvent(run(daemon, c), while: daemon.process, event("done"))
        try waitForEvent(run(daemon, a), while: daemon.process, after: event("worker_left"), step(workers: 3))
        XCTAssertEqual(try show(daemon, admin, b)["state"] as? String, "queued", "B waits while A holds the workers")
        let cancelled = try client(daemon, admin, ["cancel", "\(a)"])
        XCTAssertEqual(cancelled.stdout, "job \(a): cancelling at its next step boundary\n", cancelled.stderr)
        try waitForEvent(run(daemon, b), while: daemon.process, event("done"))

        let stopped = try doneEvent(run(daemon, a))
        XCTAssertEqual(stopped["event"] as? String, "stopped", logs(daemon))
        let stopStep = try XCTUnwrap(stopped["step"] as? Int)
        let shown = try [a, b, c].map { try show(daemon, admin, $0) }
        XCTAssertEqual(shown.map { $0["state"] as? String }, ["cancelled", "completed", "completed"])
        XCTAssertEqual(shown[0]["weights_sha256"] as? String, try trainedHash(job + openEnded, to: stopStep))
        XCTAssertEqual(shown[1]["weights_sha256"] as? String, try trainedHash(finite, to: 60))
        XCTAssertEqual(shown[2]["weights_sha256"] as? String, try trainedHash(finite + ["--set", "seed=5"], to: 60))
        XCTAssertEqual(shown[1]["step"] as? Int, 60)

        // A gave two workers to C and got them back; B ran on two of them after A.
        let aEvents = events(run(daemon, a)), cEvents = events(run(daemon, c)), bEvents = events(run(daemon, b))
        let released = aEvents.filter { $0["event"] as? String == "worker_left" && $0["reason"] as? String == "released to the pool" }
        XCTAssertEqual(released.count, 2, logs(daemon))
        let cJoined = Set(cEvents.filter(event("worker_joined")).compactMap { $0["worker"] as? String })
        XCTAssertEqual(cJoined, Set(released.compactMap { $0["worker"] as? String }))
        XCTAssertEqual(bEvents.filter(event("worker_joined")).count, 2)
        XCTAssertEqual(bEvents.filter(event("step")).compactMap { $0["workers"] as? Int }.max(), 2, "B's max")

        // The log port: A's own stream, whole from its snapshot on, to its end.
        XCTAssertEqual(finish(monitorA, timeout: 60), 0, "monitor --job ends with the job")
        let followed = try String(contentsOfFile: followA, encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        XCTAssertEqual(followed.first?["event"] as? String, "snapshot")
        let firstStep = try XCTUnwrap((followed.first?["step"] as? [String: Any])?["step"] as? Int)
        let loggedSteps = aEvents.filter(event("step")).filter { ($0["step"] as? Int ?? 0) > firstStep }
        let followedSteps = followed.filter(event("step"))
        XCTAssertEqual(followedSteps.compactMap { $0["step"] as? Int }, Array((firstStep + 1)...stopStep), "no step dropped")
        XCTAssertEqual(followedSteps.compactMap { $0["loss"] as? Double }, loggedSteps.compactMap { $0["loss"] as? Double })
        let end = try XCTUnwrap(followed.last)
        XCTAssertEqual(end["event"] as? String, "job_end")
        XCTAssertEqual(end["state"] as? String, "cancelled")
        XCTAssertEqual(end["weights_sha256"] as? String, shown[0]["weights_sha256"] as? String)
        monitorAll.interrupt()
        finish(monitorAll)
        let all = try String(contentsOfFile: followAll, encoding: .utf8)
        for (id, state) in [(a, "cancelled"), (b, "completed"), (c, "completed")] {
            XCTAssertTrue(all.contains("[job \(id)] step "), all)
            XCTAssertTrue(all.contains("[job \(id)] job \(id) \(state) at step "), all)
        }
        let late = try trainerd(["monitor", daemon.logEndpoint, "--job", "\(c)", "--json"], timeout: 30)
        XCTAssertEqual(late.status, 0, late.stderr)
        let snapshot = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(late.stdout.utf8)) as? [String: Any])
        XCTAssertEqual((snapshot["job_end"] as? [String: Any])?["weights_sha256"] as? String, shown[2]["weights_sha256"] as? String)
        XCTAssertEqual((snapshot["done"] as? [String: Any])?["step"] as? Int, 60)
        // The same processes throughout: each is alive and joined the pool once.
        let daemonLog = try String(contentsOfFile: daemon.log, encoding: .utf8)
        for (index, worker) in workers.enumerated() {
            XCTAssertTrue(worker.isRunning, "w\(index) exited")
            XCTAssertEqual(daemonLog.components(separatedBy: "worker w\(index) on ").count - 1, 1, daemonLog)
        }
        print("standing pool: A cancelled at step \(stopStep), C took \(cJoined.sorted()) from A and gave them back, "
              + "B ran after A on 2 workers; all three with train's weights")
        daemon.process.interrupt()
        XCTAssertEqual(finish(daemon.process), 0, logs(daemon))
        workers.forEach { $0.terminate() }
        workers.forEach { XCTAssertEqual(finish($0), 0) }
    }

    /// kill -9 of the daemon while two jobs run and a third waits: started again on the same state directory, it
    /// continues both from their newest checkpoints with the same workers (they reconnect by themselves) and keeps
    /// the third, which runs once they are cancelled; all end with `train`'s weights.
    func testAKilledDaemonContinuesItsJobsFromTheirCheckpoints() throws {
        try requireDataset()
        let state = scratch + "/state"
        let workerPort = try freePort(), apiPort = try freePort()
        var daemon = try startDaemon(state: state, workerPort: workerPort, apiPort: apiPort)
        let admin = try token(state, "alice", role: "admin")
        let workers = try startWorkers(daemon, ["w0", "w1", "w2"])
        let x = try submit(daemon, admin, job + openEnded, options: ["--workers", "1"])
        let y = try submit(daemon, admin, job + openEnded + ["--set", "seed=7"], options: ["--workers", "1"])
        try waitForEvent(run(daemon, x), while: daemon.process, event("checkpoint"))
        try waitForEvent(run(daemon, y), while: daemon.process, event("checkpoint"))
        let finite = job + ["--set", "training.max_steps=30"]
        let z = try submit(daemon, admin, finite, options: ["--workers", "2"])
        kill(daemon.process.processIdentifier, SIGKILL)
        daemon.process.waitUntilExit()

        daemon = try startDaemon(state: state, workerPort: workerPort, apiPort: apiPort)
        XCTAssertEqual(try show(daemon, admin, z)["state"] as? String, "queued", "the job submitted before the kill is there")
        for id in [x, y] {
            try waitForEvent(run(daemon, id), while: daemon.process, event("resumed"))
            try waitForEvent(run(daemon, id), while: daemon.process, after: event("resumed"), event("checkpoint"))
            XCTAssertGreaterThan(try XCTUnwrap(events(run(daemon, id)).last(where: event("job_start"))?["start_step"] as? Int), 0)
            XCTAssertEqual(try client(daemon, admin, ["cancel", "\(id)"]).status, 0)
        }
        try waitForEvent(run(daemon, z), while: daemon.process, event("done"))
        for (id, overrides) in [(x, job + openEnded), (y, job + openEnded + ["--set", "seed=7"])] {
            let stopped = try doneEvent(run(daemon, id))
            XCTAssertEqual(stopped["event"] as? String, "stopped", logs(daemon))
            let shown = try show(daemon, admin, id)
            XCTAssertEqual(shown["state"] as? String, "cancelled")
            XCTAssertEqual(shown["weights_sha256"] as? String, try trainedHash(overrides, to: try XCTUnwrap(stopped["step"] as? Int)))
        }
        XCTAssertEqual(try show(daemon, admin, z)["weights_sha256"] as? String, try trainedHash(finite, to: 30))
        XCTAssertTrue(workers.allSatisfy(\.isRunning), "the workers stayed up through the daemon's restart")
        daemon.process.interrupt()
        XCTAssertEqual(finish(daemon.process), 0, logs(daemon))
        workers.forEach { $0.terminate() }
    }

    /// A bad config is refused at submit naming the field; a job whose data is missing fails alone, next to one
    /// that completes, and so does one whose data the daemon has and its workers do not (a relative directory, which
    /// exists only where the daemon runs): after `Daemon.workerFailuresToFail` reports from its workers, with the
    /// last one's reason. A queued job is cancelled at once.
    func testFailuresStayWithTheirJob() throws {
        try requireDataset()
        let head = scratch + "/head"
        try FileManager.default.createDirectory(atPath: head, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: head + "/fmnist", withDestinationPath: "/usr/share/datasets/fashion-mnist")
        let daemon = try startDaemon(state: scratch + "/state", directory: head)
        let admin = try token(daemon.state, "alice", role: "admin")
        let refused = try client(daemon, admin, ["submit", config, "--set", "training.batch_size=0"])
        XCTAssertEqual(refused.status, 1)
        let trained = try trainerd(["train", config, "--set", "training.batch_size=0", "--run-dir", scratch + "/bad"])
        XCTAssertTrue(refused.stderr.hasSuffix(trained.stderr.replacingOccurrences(of: "trainerd: error: ", with: "")),
                      "\(refused.stderr) / \(trained.stderr)")
        XCTAssertTrue(refused.stderr.contains("training.batch_size"), refused.stderr)
        let workers = try startWorkers(daemon, ["w0", "w1"])
        let finite = job + ["--set", "training.max_steps=20"]
        let broken = try submit(daemon, admin, finite + ["--set", "data.directory=" + scratch + "/nowhere"], options: ["--workers", "1"])
        let good = try submit(daemon, admin, finite, options: ["--workers", "1"])
        let unloadable = try submit(daemon, admin, finite + ["--set", "data.directory=fmnist"], options: ["--workers", "1:1"])
        let waiting = try submit(daemon, admin, finite, options: ["--workers", "3"])
        let cancelled = try client(daemon, admin, ["cancel", "\(waiting)"])
        XCTAssertEqual(cancelled.stdout, "job \(waiting): cancelled\n", cancelled.stderr)
        try waitForEvent(run(daemon, good), while: daemon.process, event("done"))
        try waitForText(daemon.log, containing: "job \(broken): failed", while: daemon.process)
        let failed = try show(daemon, admin, broken)
        XCTAssertEqual(failed["state"] as? String, "failed")
        XCTAssertTrue((failed["failure"] as? String ?? "").contains(scratch + "/nowhere"), "\(failed)")
        XCTAssertEqual(try show(daemon, admin, good)["weights_sha256"] as? String, try trainedHash(finite, to: 20))
        try waitForText(daemon.log, containing: "job \(unloadable): failed", while: daemon.process)
        let notLoaded = try show(daemon, admin, unloadable)
        XCTAssertEqual(notLoaded["state"] as? String, "failed")
        XCTAssertTrue((notLoaded["failure"] as? String ?? "").hasPrefix("its workers reported 3 times that they cannot run it; the last, w"),
                      "\(notLoaded)")
        XCTAssertTrue((notLoaded["failure"] as? String ?? "").contains("fmnist"), "\(notLoaded)")
        XCTAssertEqual(events(run(daemon, unloadable)).filter(event("worker_failed")).count, 3)
        XCTAssertEqual(events(run(daemon, unloadable)).last?["event"] as? String, "job_end")
        XCTAssertEqual(try show(daemon, admin, waiting)["state"] as? String, "cancelled")
        XCTAssertTrue(workers.allSatisfy(\.isRunning))
        daemon.process.interrupt()
        XCTAssertEqual(finish(daemon.process), 0, logs(daemon))
        workers.forEach { $0.terminate() }
    }

    /// The daemon in one network namespace and a pool worker in each of two others, on a bridge: two jobs, the first
    /// on both workers and the second on one of them once the first has ended, end with `train`'s weights.
    func testAPoolAcrossNetworkNamespaces() throws {
        try requireDataset()
        let hosts = try networkNamespaces(3, subnet: 78)
        let daemon = try startDaemon(state: scratch + "/state", workerPort: 5555, apiPort: 8470, namespace: hosts[0])
        let admin = try token(daemon.state, "alice", role: "admin")
        let workers = try startWorkers(daemon, hosts.dropFirst().map(\.name), namespaces: true)
        let first = job + ["--set", "training.max_steps=30"], second = first + ["--set", "seed=9"]
        let a = try submit(daemon, admin, first, options: ["--workers", "2"])
        let b = try submit(daemon, admin, second, options: ["--workers", "1"])
        try waitForEvent(run(daemon, b), while: daemon.process, event("done"))
        try waitForEvent(run(daemon, a), while: daemon.process, event("done"))
        XCTAssertEqual(try show(daemon, admin, a)["weights_sha256"] as? String, try trainedHash(first, to: 30))
        XCTAssertEqual(try show(daemon, admin, b)["weights_sha256"] as? String, try trainedHash(second, to: 30))
        let log = try String(contentsOfFile: daemon.log, encoding: .utf8)
        for host in hosts.dropFirst() {
            XCTAssertTrue(log.contains("worker \(host.name) on ") && log.contains("(\(host.address)) joined the pool"), log)
        }
        daemon.process.interrupt()
        XCTAssertEqual(finish(daemon.process), 0, logs(daemon))
        workers.forEach { $0.terminate() }
        workers.forEach { XCTAssertEqual(finish($0), 0) }
    }

    /// curl, a client of its own, against the API: no token and an unknown one get 401 (logged with the address),
    /// a read token 403 on submit; a submit token cannot cancel another submitter's job, an admin can.
    func testTokensDecideWhoMayDoWhat() throws {
        let daemon = try startDaemon(state: scratch + "/state")
        let reader = try token(daemon.state, "rita", role: "read")
        let alice = try token(daemon.state, "alice", role: "submit")
        let bob = try token(daemon.state, "bob", role: "submit")
        let admin = try token(daemon.state, "root", role: "admin")
        func curl(_ method: String, _ path: String, token: String?, body: String? = nil) throws -> (status: Int, body: String) {
            var arguments = ["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, daemon.server + path]
            if let token { arguments += ["-H", "Authorization: Bearer \(token)"] }
            if let body { arguments += ["-H", "Content-Type: application/json", "--data-binary", body] }
            let result = try run("/usr/bin/curl", arguments, timeout: 30)
            let lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false)
            return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
        }
        let yaml = try String(contentsOfFile: config, encoding: .utf8)
        let body = String(decoding: try JSONSerialization.data(withJSONObject: ["config": yaml, "overrides": ["training.max_steps=5"], "min_workers": 3]), as: UTF8.self)
        XCTAssertEqual(try curl("GET", "/v1/jobs", token: nil).status, 401)
        XCTAssertEqual(try curl("GET", "/v1/jobs", token: "trainerd_" + String(repeating: "0", count: 64)).status, 401)
        XCTAssertEqual(try curl("GET", "/v1/jobs", token: reader).status, 200)
        let denied = try curl("POST", "/v1/jobs", token: reader, body: body)
        XCTAssertEqual(denied.status, 403)
        XCTAssertTrue(denied.body.contains("role read"), denied.body)
        let submitted = try curl("POST", "/v1/jobs", token: alice, body: body)
        XCTAssertEqual(submitted.status, 201, submitted.body)
        let id = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(submitted.body.utf8)) as? [String: Any])?["id"] as? Int)
        XCTAssertEqual(try curl("POST", "/v1/jobs/\(id)/cancel", token: bob).status, 403)
        XCTAssertEqual(try curl("POST", "/v1/jobs/\(id)/cancel", token: reader).status, 403)
        let cancelled = try curl("POST", "/v1/jobs/\(id)/cancel", token: admin)
        XCTAssertEqual(cancelled.status, 200)
        XCTAssertTrue(cancelled.body.contains("\"state\":\"cancelled\""), cancelled.body)
        let refusedByCLI = try client(daemon, reader, ["submit", config])
        XCTAssertEqual(refusedByCLI.status, 1)
        XCTAssertTrue(refusedByCLI.stderr.contains("answered 403"), refusedByCLI.stderr)
        let log = try String(contentsOfFile: daemon.log, encoding: .utf8)
        XCTAssertTrue(log.contains("api: refused GET /v1/jobs from 127.0.0.1: no bearer token"), log)
        XCTAssertTrue(log.contains("api: refused GET /v1/jobs from 127.0.0.1: unknown token"), log)
        daemon.process.interrupt()
        XCTAssertEqual(finish(daemon.process), 0)
    }

    /// CURVE on the daemon's ports (`--secret-key`, `--allowed-keys`): a worker with a stranger's key is refused and
    /// logged with its address; an allowed key cannot take the name another allowed key joined under; the allowed
    /// worker trains a job to `train`'s weights, and an allowed monitor follows it on the log port to its end.
    func testCURVEAdmitsPoolWorkersAndMonitorsByTheirKeys() throws {
        try requireDataset()
        let keys = scratch + "/keys", allowed = keys + "/allowed"
        for (directory, name) in [(keys, "daemon"), (keys, "stranger"), (allowed, "w0"), (allowed, "w1"), (allowed, "watcher")] {
            XCTAssertEqual(try trainerd(["keygen", "--directory", directory, "--name", name]).status, 0)
        }
        let daemon = try startDaemon(state: scratch + "/state", options: ["--secret-key", keys + "/daemon.key", "--allowed-keys", allowed])
        let admin = try token(daemon.state, "alice", role: "admin")
        let server = ["--server-key", keys + "/daemon.pub"]
        let stranger = try trainerd(["worker", "--connect", daemon.endpoint, "--key", keys + "/stranger.key", "--join-timeout", "10"] + server,
                                    timeout: 30)
        XCTAssertEqual(stranger.status, 1)
        XCTAssertTrue(stranger.stderr.contains("refused this key"), stranger.stderr)
        let workers = try startWorkers(daemon, ["w0"], options: ["--key", allowed + "/w0.key"] + server)
        let impostor = try trainerd(["worker", "--connect", daemon.endpoint, "--name", "w0", "--key", allowed + "/w1.key",
                                     "--join-timeout", "10"] + server, timeout: 30)
        XCTAssertEqual(impostor.status, 1)
        XCTAssertTrue(impostor.stderr.contains("the name w0 belongs to another worker's key"), impostor.stderr)

        let finite = job + ["--set", "training.max_steps=20"]
        let watched = scratch + "/watcher.jsonl"
        // Job ids start at 1 in a new state directory; the watcher subscribes before the job exists.
        let watcher = try start(["monitor", daemon.logEndpoint, "--job", "1", "--json", "--key", allowed + "/watcher.key"] + server,
                                output: watched)
        let id = try submit(daemon, admin, finite, options: ["--workers", "1"])
        XCTAssertEqual(id, 1)
        try waitForEvent(run(daemon, id), while: daemon.process, event("done"))
        XCTAssertEqual(finish(watcher, timeout: 60), 0, "the allowed monitor follows the job to its end")
        let lastLine = try XCTUnwrap(try String(contentsOfFile: watched, encoding: .utf8).split(separator: "\n").last)
        let end = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(lastLine.utf8)) as? [String: Any])
        XCTAssertEqual(end["event"] as? String, "job_end")
        let expected = try trainedHash(finite, to: 20)
        XCTAssertEqual(end["weights_sha256"] as? String, expected)
        XCTAssertEqual(try show(daemon, admin, id)["weights_sha256"] as? String, expected)
        let strangerKey = try String(contentsOfFile: keys + "/stranger.pub", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let log = try String(contentsOfFile: daemon.log, encoding: .utf8)
        XCTAssertTrue(log.contains("refused a peer from 127.0.0.1: ") && log.contains(strangerKey), log)
        XCTAssertTrue(log.contains("with CURVE"), log)
        daemon.process.interrupt()
        XCTAssertEqual(finish(daemon.process), 0, logs(daemon))
        workers.forEach { $0.terminate() }
    }

    /// With a certificate and key the API speaks only HTTPS: curl trusting that certificate gets its answer, plain
    /// HTTP gets none, and curl without the certificate refuses the server.
    func testTheAPIServesTLSWithTheGivenCertificate() throws {
        let certificate = scratch + "/api.pem", key = scratch + "/api.key"
        let made = try run("/usr/bin/openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", certificate,
                                                "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                           timeout: 60)
        XCTAssertEqual(made.status, 0, made.stderr)
        let daemon = try startDaemon(state: scratch + "/state", options: ["--tls-cert", certificate, "--tls-key", key])
        let reader = try token(daemon.state, "rita", role: "read")
        let trusted = try run("/usr/bin/curl", ["-s", "--cacert", certificate, "-H", "Authorization: Bearer \(reader)",
                                                daemon.server + "/v1/jobs"], timeout: 30)
        XCTAssertEqual(trusted.status, 0, trusted.stderr)
        XCTAssertEqual(trusted.stdout, "[]")
        let untrusted = try run("/usr/bin/curl", ["-s", daemon.server + "/v1/jobs"], timeout: 30)
        XCTAssertEqual(untrusted.status, 60, "curl: the peer's certificate cannot be verified")
        let plain = try run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}",
                                              daemon.server.replacingOccurrences(of: "https:", with: "http:") + "/v1/jobs"], timeout: 30)
        XCTAssertNotEqual(plain.stdout, "200", "plain HTTP is not served")
        daemon.process.interrupt()
        XCTAssertEqual(finish(daemon.process), 0)
    }
}
