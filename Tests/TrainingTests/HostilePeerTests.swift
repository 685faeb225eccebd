import CZMQ
import Foundation
import Transport
import Wire
import XCTest

/// An outside peer on loopback against `trainerd coordinator` with two honest workers and no `security`: peers that
/// never read, a frozen worker, floods of frames, subscriptions and junk, and peers that claim a worker's name. The
/// jobs are open-ended and every wait is for an event, bounded in time; each test ends with the weights of an
/// undisturbed `train` to the step the job stopped at, and no honest worker lost.
final class HostilePeerTests: CLITestCase {
    /// Fast heartbeats and straggler re-issue, so that peers that do not answer are noticed quickly.
    var job: [String] {
        ["--set", "training.eval_every=0", "--set", "training.checkpoint_every=0", "--set", "cluster.heartbeat_interval=0.2",
         "--set", "cluster.heartbeat_timeout=1.5", "--set", "cluster.straggler_delay=0.5"]
    }
    let zmq = ZMQContext()

    struct Cluster {
        let run: String, endpoint: String, logEndpoint: String
        let coordinator: Process
        let workers: [Process]
        let logs: [String]
    }

    /// A coordinator with a log port waiting for two workers; the workers start when `startWorkers` is called.
    func coordinator(_ name: String) throws -> Cluster {
        let run = scratch + "/" + name
        let endpoint = "tcp://127.0.0.1:\(try freePort())", logEndpoint = "tcp://127.0.0.1:\(try freePort())"
        let logs = [run + "-coordinator.log", run + "-w0.log", run + "-w1.log"]
        let coordinator = try start(["coordinator", config, "--bind", endpoint, "--log-bind", logEndpoint, "--workers", "2",
                                     "--run-dir", run] + job + openEnded, log: logs[0])
        try waitForEvent(run, while: coordinator) { $0["event"] as? String == "waiting" }
        return Cluster(run: run, endpoint: endpoint, logEndpoint: logEndpoint, coordinator: coordinator, workers: [], logs: logs)
    }

    func startWorkers(_ cluster: Cluster) throws -> Cluster {
        let workers = try (0..<2).map {
            try start(["worker", "--connect", cluster.endpoint, "--name", "w\($0)", "--threads", "1"], log: cluster.logs[$0 + 1])
        }
        return Cluster(run: cluster.run, endpoint: cluster.endpoint, logEndpoint: cluster.logEndpoint,
                       coordinator: cluster.coordinator, workers: workers, logs: cluster.logs)
    }

    func logs(_ cluster: Cluster) -> String {
        cluster.logs.map { "--- \($0)\n" + ((try? String(contentsOfFile: $0, encoding: .utf8)) ?? "") }.joined(separator: "\n")
    }

    func step(atLeast step: Int) -> ([String: Any]) -> Bool {
        { $0["event"] as? String == "step" && ($0["step"] as? Int ?? 0) >= step }
    }

    /// Stops the job, checks its weights against `train`'s to the same step and that neither honest worker was
    /// lost or left; returns the stop step.
    @discardableResult
    func stopAndCheck(_ cluster: Cluster, file: StaticString = #filePath, line: UInt = #line) throws -> Int {
        let stop = try interrupt(cluster.coordinator, cluster.run, logs: logs(cluster))
        XCTAssertEqual(cluster.workers.map { finish($0, timeout: 30) }, [0, 0], logs(cluster), file: file, line: line)
        XCTAssertEqual(stop.hash, try trainedHash(job + openEnded, to: stop.step), logs(cluster), file: file, line: line)
        let honest = events(cluster.run).filter {
            ["worker_lost", "worker_left"].contains($0["event"] as? String) && ["w0", "w1"].contains($0["worker"] as? String)
        }
        XCTAssertEqual(honest.count, 0, "\(honest)", file: file, line: line)
        return stop.step
    }

    /// A DEALER connected to the coordinator that takes at most one message into its queue and a 4 KiB socket
    /// buffer: once it stops reading, what is sent to it piles up at the coordinator.
    func nonReader(_ endpoint: String) throws -> ZMQSocket {
        let dealer = try ZMQSocket(zmq, .dealer)
        try dealer.setOption(ZMQ_RCVHWM, 1)
        try dealer.setOption(ZMQ_RCVBUF, 4096)
        try dealer.setOption(ZMQ_SNDHWM, 0)
        try dealer.connect(endpoint)
        return dealer
    }

    func hello(_ name: String, host: String = "attacker") -> [[UInt8]] { Message(Hello(name: name, host: host, pid: 1), jobID: 0).encoded() }

    func warnings(_ run: String) -> [String] {
        events(run).filter { $0["event"] as? String == "warning" }.compactMap { $0["message"] as? String }
    }

    /// A peer that sends 5,000 hellos and reads nothing, while the coordinator waits for workers and again mid-run,
    /// then a peer that joins, reads its welcome and stops reading while it heartbeats: none holds up the job.
    func testPeersThatNeverReadCannotStallTheJob() throws {
        try requireDataset()
        var cluster = try coordinator("non-reader")
        let before = try nonReader(cluster.endpoint)
        for _ in 0..<5000 { try before.send(hello("hog")) }
        cluster = try startWorkers(cluster)
        try waitForEvent(cluster.run, while: cluster.coordinator, step(atLeast: 20))
        try waitForEvent(cluster.run, while: cluster.coordinator) {
            ($0["message"] as? String)?.hasPrefix("worker hog on attacker did not join: its queue is full") == true
        }

        // Mid-run: a peer that joins for real, then stops reading and only heartbeats.
        let member = try nonReader(cluster.endpoint)
        try member.send(hello("sloth"))
        let welcome = try Message.decode(try XCTUnwrap(try member.receive(timeout: 30), "no welcome"))
        XCTAssertEqual(welcome.type, .welcome)
        let beat = Message(type: .heartbeat, jobID: welcome.jobID, session: welcome.session).encoded()
        try member.send(beat)
        try waitForEvent(cluster.run, while: cluster.coordinator) { $0["event"] as? String == "worker_joined" && $0["worker"] as? String == "sloth" }
        let joinedAt = try lastStep(cluster.run)
        let midRun = try nonReader(cluster.endpoint)
        for _ in 0..<5000 { try midRun.send(hello("hog-2")) }
        var beats = 0
        let lost: ([String: Any]) -> Bool = { $0["event"] as? String == "worker_lost" && $0["worker"] as? String == "sloth" }
        while !events(cluster.run).contains(where: lost) && cluster.coordinator.isRunning && beats < 3000 {
            try member.send(beat)
            beats += 1
            usleep(50_000)
        }
        let reason = try XCTUnwrap(events(cluster.run).first(where: lost)?["reason"] as? String, logs(cluster))
        XCTAssertTrue(reason.hasPrefix("it has not taken") || reason.contains("bytes are queued for it"), reason)
        try waitForEvent(cluster.run, while: cluster.coordinator) {
            ($0["message"] as? String)?.hasPrefix("worker hog-2 on attacker did not join: its queue is full") == true
        }
        let lostAt = try XCTUnwrap(events(cluster.run).first(where: lost)?["step"] as? Int)
        try waitForEvent(cluster.run, while: cluster.coordinator, step(atLeast: try lastStep(cluster.run) + 20))
        let stopped = try stopAndCheck(cluster)
        print("non-readers: hog before the first step and hog-2 mid-run dropped (queue full); sloth joined at step \(joinedAt), "
              + "lost at step \(lostAt) after \(beats) heartbeats: \(reason); stopped at step \(stopped) with train's weights")
    }

    /// A worker frozen (SIGSTOP) past the heartbeat timeout is lost; thawed, it reads what was queued for it,
    /// learns it must say hello again and rejoins.
    func testAFrozenWorkerIsLostAndRejoinsWhenThawed() throws {
        try requireDataset()
        let cluster = try startWorkers(try coordinator("frozen"))
        try waitForEvent(cluster.run, while: cluster.coordinator, step(atLeast: 20))
        kill(cluster.workers[1].processIdentifier, SIGSTOP)
        let lost: ([String: Any]) -> Bool = { $0["event"] as? String == "worker_lost" && $0["worker"] as? String == "w1" }
        try waitForEvent(cluster.run, while: cluster.coordinator, lost)
        let lostAt = try lastStep(cluster.run)
        try waitForEvent(cluster.run, while: cluster.coordinator, step(atLeast: lostAt + 10))
        kill(cluster.workers[1].processIdentifier, SIGCONT)
        try waitForEvent(cluster.run, while: cluster.coordinator, after: lost) { $0["event"] as? String == "worker_joined" && $0["worker"] as? String == "w1" }
        try waitForEvent(cluster.run, while: cluster.coordinator) { $0["event"] as? String == "step" && $0["workers"] as? Int == 2 && ($0["step"] as? Int ?? 0) > lostAt + 10 }
        let stop = try interrupt(cluster.coordinator, cluster.run, logs: logs(cluster))
        XCTAssertEqual(cluster.workers.map { finish($0, timeout: 30) }, [0, 0], logs(cluster))
        XCTAssertEqual(stop.hash, try trainedHash(job + openEnded, to: stop.step), logs(cluster))
        let reason = events(cluster.run).first(where: lost)?["reason"] as? String ?? ""
        print("w1 frozen at step 20, lost at step \(lostAt) (\(reason)), rejoined after SIGCONT; stopped at step \(stop.step) with train's weights")
    }

    /// Another peer says hello, bye, error and heartbeats under a worker's name (learned from the log port), from a
    /// connection of its own and under the worker's name as its routing id: the workers stay, nothing changes.
    /// Junk from 200 connections, and a hello with a 1 MiB host name, leave at most 20 warnings a minute per
    /// address and short lines.
    func testNoPeerCanRemoveOrImpersonateAWorkerAndWarningsStayBounded() throws {
        try requireDataset()
        let cluster = try startWorkers(try coordinator("impostor"))
        try waitForEvent(cluster.run, while: cluster.coordinator, step(atLeast: 10))
        let names = try XCTUnwrap(events(cluster.run).last { $0["event"] as? String == "step" }?["worker_s"] as? [String: Any]).keys.sorted()
        XCTAssertEqual(names, ["w0", "w1"])
        // The job id, from a welcome of its own.
        let spy = try ZMQSocket(zmq, .dealer)
        try spy.connect(cluster.endpoint)
        try spy.send(hello("spy"))
        let jobID = try Message.decode(try XCTUnwrap(try spy.receive(timeout: 30))).jobID
        var replies: [String] = []
        for identity in [nil, "w0"] {
            let impostor = try ZMQSocket(zmq, .dealer)
            if let identity { try impostor.setIdentity(identity) }
            try impostor.connect(cluster.endpoint)
            try impostor.send(hello("w0"))
            for type in [MessageType.bye, .heartbeat, .gradients] { try impostor.send(Message(type: type, jobID: jobID).encoded()) }
            try impostor.send(Message(Refusal("out of memory"), jobID: jobID).encoded())
            while let frames = try impostor.receive(timeout: 2), let message = try? Message.decode(frames) {
                if message.type == .error { replies.append(try message.payload(Refusal.self).reason) }
                XCTAssertNotEqual(message.type, .weights, "an impostor got weights")
                XCTAssertNotEqual(message.type, .assignment, "an impostor got work")
            }
        }
        XCTAssertTrue(replies.contains { $0.hasPrefix("the worker name w0 is taken by a connected worker") }, "\(replies)")
        // Junk from 200 connections, 25 messages each, and a hello with a 1 MiB host name.
        let floodStart = Date()
        for _ in 0..<200 {
            let junk = try ZMQSocket(zmq, .dealer)
            try junk.connect(cluster.endpoint)
            for index in 0..<25 { try junk.send([[UInt8(index), 1, 2, 3]]) }
            junk.close(deliveringWithin: 1)
        }
        try spy.send(hello("big", host: String(repeating: "h", count: 1 << 20)))
        let flooded = try lastStep(cluster.run)
        try waitForEvent(cluster.run, while: cluster.coordinator, step(atLeast: flooded + 20))
        let stopped = try stopAndCheck(cluster)
        let text = try String(contentsOfFile: cluster.run + "/events.jsonl", encoding: .utf8)
        let warningLines = text.split(separator: "\n").filter { $0.contains(#""event":"warning""#) }
        XCTAssertLessThanOrEqual(warningLines.count, 20 + 2, "20 a minute from 127.0.0.1, and summaries")
        XCTAssertLessThan(warningLines.map(\.utf8.count).max() ?? 0, 1500)
        XCTAssertLessThan(text.utf8.count, 2 << 20)
        print("impostors refused (\(replies.count) replies, no weights or work); flood of 5,000 junk messages from 200 connections "
              + "in \(String(format: "%.1f", Date().timeIntervalSince(floodStart))) s: \(warningLines.count) warning lines, the longest "
              + "\(warningLines.map(\.utf8.count).max() ?? 0) bytes, events.jsonl \(text.utf8.count) bytes; stopped at step \(stopped)")
    }

    /// Samples a process's resident memory every few milliseconds on a thread of its own; `peak` is the largest.
    final class MemorySampler: @unchecked Sendable {
        private let lock = NSLock()
        private var largest = 0
        private var running = true
        private let done = DispatchSemaphore(value: 0)

        init(_ sample: @escaping @Sendable () -> Int) {
            Thread { [self] in
                while isRunning {
                    let bytes = sample()
                    lock.lock(); largest = max(largest, bytes); lock.unlock()
                    usleep(2_000)
                }
                done.signal()
            }.start()
        }

        private var isRunning: Bool { lock.lock(); defer { lock.unlock() }; return running }

        /// Stops sampling; the peak.
        func stop() -> Int {
            lock.lock(); running = false; lock.unlock()
            done.wait()
            return largest
        }
    }

    /// A 64 MiB frame and a message of 5,000 frames of 80 KiB on the workers' port; 4 KiB subscriptions, 10,000
    /// distinct subscriptions and a subscriber that never reads on the log port: the coordinator's memory stays within `memoryBound` of what it was, the slow
    /// subscriber is said to fall behind, and the job goes on unchanged.
    func testFloodsOfFramesAndSubscriptionsLeaveTheCoordinatorsMemoryBounded() throws {
        try requireDataset()
        let cluster = try startWorkers(try coordinator("floods"))
        try waitForEvent(cluster.run, while: cluster.coordinator, step(atLeast: 10))
        let pid = cluster.coordinator.processIdentifier
        /// The coordinator's resident memory in bytes, from /proc.
        let resident: @Sendable () -> Int = {
            let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
        }
        let baseline = resident()
        let sampler = MemorySampler(resident)
        // One frame of 64 MiB: refused by libzmq as its size is read (the limit is 1 MiB for this model). One message
        // of 5,000 frames of 80 KiB (400 MB): cut by the connection guard after 256 KiB not delivered.
        let big = try ZMQSocket(zmq, .dealer)
        try big.connect(cluster.endpoint)
        try big.send([[UInt8](repeating: 7, count: 64 << 20)])
        let many = try ZMQSocket(zmq, .dealer)
        try many.setOption(ZMQ_SNDHWM, 0)
        try many.connect(cluster.endpoint)
        let frame = [UInt8](repeating: 8, count: 80 << 10)
        try many.send(Array(repeating: frame, count: 5000))
        try waitForEvent(cluster.run, while: cluster.coordinator) {
            ($0["message"] as? String)?.hasPrefix("cut the connection of a peer from 127.0.0.1") == true
        }
        // Two subscriptions of 4 KiB (libzmq's own SUB socket cannot hold much longer ones: it frees its
        // subscription tree recursively), then 10,000 distinct ones of 600 bytes, then a subscriber that never reads.
        for _ in 0..<2 {
            let subscriber = try ZMQSocket(zmq, .subscriber)
            try subscriber.connect(cluster.logEndpoint)
            try subscriber.subscribe(prefix: [UInt8](repeating: 65, count: 4096))
        }
        let subscriptions = try ZMQSocket(zmq, .subscriber)
        try subscriptions.connect(cluster.logEndpoint)
        for index in 0..<10_000 { try subscriptions.subscribe(prefix: Array("\(index)-".utf8) + [UInt8](repeating: 66, count: 594)) }
        let slow = try ZMQSocket(zmq, .subscriber)
        try slow.setOption(ZMQ_RCVHWM, 1)
        try slow.setOption(ZMQ_RCVBUF, 4096)
        try slow.connect(cluster.logEndpoint)
        try slow.subscribe()
        let attacked = try lastStep(cluster.run)
        try waitForEvent(cluster.run, while: cluster.coordinator, timeout: 240) {
            $0["message"] as? String == "a log subscriber does not keep up: events are dropped for it"
        }
        let behindAt = try lastStep(cluster.run)
        let cuts = warnings(cluster.run).filter { $0.hasPrefix("cut the connection") }
        XCTAssertGreaterThanOrEqual(cuts.count, 2, "the 5,000-frame message and the 10,000 subscriptions: \(cuts)")
        try waitForEvent(cluster.run, while: cluster.coordinator, step(atLeast: behindAt + 20))
        let peak = sampler.stop()
        let stopped = try stopAndCheck(cluster)
        let growth = peak - baseline
        print("floods from step \(attacked): coordinator RSS \(baseline >> 20) MiB before, peak \(peak >> 20) MiB (+\(growth >> 20) MiB); "
              + "cuts: \(cuts); the slow subscriber reported behind at step \(behindAt); stopped at step \(stopped) with train's weights")
        XCTAssertLessThan(growth, memoryBound, "peak \(peak), baseline \(baseline)")
    }

    /// What the floods may add to the coordinator's resident memory for the default model (1.08 MB of weights).
    let memoryBound = 64 << 20
}
