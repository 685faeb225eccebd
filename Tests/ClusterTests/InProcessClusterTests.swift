import Cluster
import Data
import Foundation
import NN
import TestSupport
import Training
import Transport
import Wire
import XCTest

/// A coordinator and workers in one process over the in-memory transport: the distributed step must give the
/// single-process weights bit for bit, for any number of workers.
final class InProcessClusterTests: XCTestCase {
    static let yaml = """
        name: cluster
        seed: 11
        model: {sizes: [16, 12, 4], activation: tanh}
        optimizer: {kind: adamw, lr: 0.01}
        training: {batch_size: 48, micro_batches: 6, max_steps: 12, checkpoint_every: 0, threads: 1}
        """

    /// 4 classes of noisy 16-pixel prototypes, made here so the test needs no dataset files.
    static func data(_ config: JobConfig) -> (train: ImageDataset, test: ImageDataset) {
        func make(_ count: Int, _ seed: UInt64) -> ImageDataset {
            let noise = testValues(count * 16, seed: seed)
            let pixels = (0..<(count * 16)).map { i in UInt8(max(0, min(255, ((i % 16) / 4 == (i / 16) % 4 ? 200 : 40) + 60 * noise[i]))) }
            return ImageDataset(features: 16, pixels: pixels, labels: (0..<count).map { Int32($0 % 4) })
        }
        return (make(480, 1), make(96, 2))
    }

    func runCluster(workers: Int) throws -> String { try runCluster(workers: workers, overrides: []).summary.weightsSHA256 }

    /// Runs the job with `workers` in-process workers; the summary and the gradient bytes each step received.
    func runCluster(workers: Int, overrides: [String]) throws -> (summary: RunSummary, bytesPerStep: [Int]) {
        let job = JobDescription(yaml: Self.yaml, overrides: overrides)
        let config = try job.parse()
        let router = InMemoryRouter()
        let trainer = try CoordinatedJob(job, config: config, socket: router, runDirectory: nil, data: Self.data(config),
                                         startWorkers: workers).trainer
        final class Failures: @unchecked Sendable { var list: [String] = []; let lock = NSLock() }
        let failures = Failures()
        let threads = (0..<workers).map { index in
            Thread {
                do {
                    try Worker(connect: { router.connect(identity: "worker-\(index)") }, name: "worker-\(index)",
                               loadDatasets: { Self.data($0) }).run()
                } catch {
                    failures.lock.lock(); failures.list.append("\(error)"); failures.lock.unlock()
                }
            }
        }
        var bytesPerStep: [Int] = []
        trainer.events.observers.append { event, fields in
            guard event == "step", case let .object(bytes)? = fields.first(where: { $0.0 == "worker_bytes" })?.1 else { return }
            bytesPerStep.append(bytes.reduce(0) { total, entry in
                if case let .int(count) = entry.1 { return total + count }
                return total
            })
        }
        threads.forEach { $0.start() }
        let summary = try trainer.run()
        XCTAssertEqual(summary.steps, 12)
        let deadline = Date().addingTimeInterval(10)
        while threads.contains(where: { !$0.isFinished }) && Date() < deadline { usleep(10_000) }
        XCTAssertTrue(threads.allSatisfy(\.isFinished), "workers did not stop after bye")
        XCTAssertEqual(failures.list, [])
        return (summary, bytesPerStep)
    }

    /// `cluster.wire_dtype: bf16` halves the gradient bytes; training follows the float32 run closely but not
    /// bit for bit (the documented price).
    func testBFloat16OnTheWireHalvesTheBytesAndStaysCloseToFloat32() throws {
        let exact = try runCluster(workers: 2, overrides: [])
        let halved = try runCluster(workers: 2, overrides: ["cluster.wire_dtype=bf16"])
        let parameters = 16 * 12 + 12 + 12 * 4 + 4
        // Per step: each worker holds 3 of the 6 micro-batches, 2 aligned blocks (0..<2, 2..<3 and 3..<4, 4..<6),
        // each sending every parameter's gradient and a float32 loss sum.
        XCTAssertEqual(Set(exact.bytesPerStep), [4 * (4 * parameters + 4)])
        XCTAssertEqual(Set(halved.bytesPerStep), [4 * (2 * parameters + 4)])
        XCTAssertNotEqual(halved.summary.weightsSHA256, exact.summary.weightsSHA256)
        XCTAssertEqual(halved.summary.loss, exact.summary.loss, accuracy: 0.02 * exact.summary.loss)
        XCTAssertEqual(halved.summary.testAccuracy, exact.summary.testAccuracy, accuracy: 0.05)
    }

    func testOneToFourWorkersGiveTheSingleProcessWeights() throws {
        let config = try JobConfig.parse(yaml: Self.yaml)
        let single = try Trainer(config: config, runDirectory: nil, data: Self.data(config)).run().weightsSHA256
        for workers in 1...4 {
            XCTAssertEqual(try runCluster(workers: workers), single, "\(workers) workers")
        }
    }

    /// A peer with another protocol version, a foreign job id or garbage frames is refused or dropped; the job
    /// still finishes with the same weights.
    func testBadPeersAreRefusedAndDoNotDisturbTheJob() throws {
        let config = try JobConfig.parse(yaml: Self.yaml)
        let single = try Trainer(config: config, runDirectory: nil, data: Self.data(config)).run().weightsSHA256
        let job = JobDescription(yaml: Self.yaml, overrides: [])
        let router = InMemoryRouter()
        let trainer = try CoordinatedJob(job, config: config, socket: router, runDirectory: nil, data: Self.data(config)).trainer
        var warnings: [String] = []
        trainer.events.observers.append { event, fields in
            if event == "warning", case let .string(text)? = fields.first?.1 { warnings.append(text) }
        }
        let stranger = router.connect(identity: "stranger")
        let hello = Message(Hello(name: "stranger", host: "elsewhere", pid: 1), jobID: 0)
        var oldVersion = hello.encoded()
        oldVersion[0][4] = 0  // protocol version 0
        try stranger.send(oldVersion)
        var otherJob = hello
        otherJob.jobID = 12345
        try stranger.send(otherJob.encoded())
        try stranger.send([[1, 2, 3]])
        // A worker whose dataset is missing tells the coordinator why and leaves; the job goes on without it.
        /// Written by the failing worker's thread before the good worker's thread reads it (it polls until then).
        final class Outcome: @unchecked Sendable { var error: String? }
        let outcome = Outcome()
        let missing = Thread {
            do {
                try Worker(connect: { router.connect(identity: "no-data") }, name: "no-data", loadDatasets: { _ in
                    throw DataError.missingFile("/nowhere/train-images-idx3-ubyte.gz")
                }).run()
            } catch {
                outcome.error = "\(error)"
            }
        }
        missing.start()
        // The good worker says hello only once the other has failed, so its refusal is in before the first step.
        let worker = Thread {
            while outcome.error == nil { usleep(1_000) }
            try? Worker(connect: { router.connect(identity: "good") }, name: "good", loadDatasets: { Self.data($0) }).run()
        }
        worker.start()
        XCTAssertEqual(try trainer.run().weightsSHA256, single)
        var replies: [String] = []
        while let frames = try stranger.receive(timeout: 0.1) {
            let message = try Message.decode(frames)
            if message.type == .error { replies.append(try message.payload(Refusal.self).reason) }
        }
        XCTAssertTrue(replies.contains("protocol version 0, expected 5"), "\(replies)")
        XCTAssertTrue(replies.contains { $0.hasPrefix("this coordinator runs job ") }, "\(replies)")
        XCTAssertTrue(warnings.contains("dropped a message from unknown: header frame has 3 bytes, expected at least 52"), "\(warnings)")
        XCTAssertTrue(warnings.contains { $0.hasPrefix("worker no-data on ") && $0.hasSuffix(" did not join: failed: /nowhere/train-images-idx3-ubyte.gz: file not found") }, "\(warnings)")
        XCTAssertEqual(outcome.error, "/nowhere/train-images-idx3-ubyte.gz: file not found")
    }

    /// A ROUTER whose peer said bye and closed before the coordinator read the bye: ZeroMQ then fails sends to the
    /// peer (EHOSTUNREACH) while the bye still waits in the receive queue. This stand-in holds back the bye of
    /// `leaving`, drops its connection, and hands the bye over only once a send to it has failed.
    final class ByeAfterCloseRouter: MessageSocket, @unchecked Sendable {
        let router = InMemoryRouter()
        let leaving: [UInt8]
        private let lock = NSLock()
        private var heldBye: [[UInt8]]?
        private var releasedBye: [[UInt8]]?
        private(set) var failedSends = 0

        init(leaving: String) { self.leaving = Array(leaving.utf8) }

        func send(_ frames: [[UInt8]]) throws {
            do {
                try router.send(frames)
            } catch {
                lock.lock()
                if frames[0] == leaving, let bye = heldBye { (heldBye, releasedBye) = (nil, bye) }
                failedSends += 1
                lock.unlock()
                throw error
            }
        }

        func receive(timeout: Double) throws -> [[UInt8]]? {
            lock.lock()
            if let bye = releasedBye {
                releasedBye = nil
                lock.unlock()
                return bye
            }
            lock.unlock()
            guard let frames = try router.receive(timeout: timeout) else { return nil }
            guard frames[0] == leaving, let message = try? Message.decode(Array(frames.dropFirst())), message.type == .bye else {
                return frames
            }
            lock.lock()
            heldBye = frames
            lock.unlock()
            router.disconnect(identity: String(decoding: leaving, as: UTF8.self))
            return try receive(timeout: 0)
        }
    }

    /// A worker that leaves (bye) and closes its connection before the coordinator reads the bye has left, not
    /// been lost: the failed send to it waits for what is still queued from it.
    func testAByeQueuedBeforeTheConnectionClosedCountsAsLeaving() throws {
        let config = try JobConfig.parse(yaml: Self.yaml)
        let single = try Trainer(config: config, runDirectory: nil, data: Self.data(config)).run().weightsSHA256
        // Heartbeats often: the held bye waits for the coordinator's next send to the worker.
        let job = JobDescription(yaml: Self.yaml, overrides: ["cluster.heartbeat_interval=0.05"])
        let socket = ByeAfterCloseRouter(leaving: "leaves")
        let trainer = try CoordinatedJob(job, config: try job.parse(), socket: socket, runDirectory: nil, data: Self.data(config),
                                         startWorkers: 2).trainer
        let leave = StopRequest()
        var departures: [String] = []
        trainer.events.observers.append { event, fields in
            if event == "step", case .int(4)? = fields.first(where: { $0.0 == "step" })?.1 { leave.request() }
            if event == "worker_left" || event == "worker_lost", case let .string(name)? = fields.first(where: { $0.0 == "worker" })?.1 {
                departures.append("\(event) \(name)")
            }
        }
        let threads = [("stays", StopRequest()), ("leaves", leave)].map { name, stop in
            Thread {
                try? Worker(connect: { socket.router.connect(identity: name) }, name: name, loadDatasets: { Self.data($0) }, stop: stop).run()
            }
        }
        threads.forEach { $0.start() }
        XCTAssertEqual(try trainer.run().weightsSHA256, single)
        XCTAssertEqual(departures, ["worker_left leaves"])
        XCTAssertGreaterThan(socket.failedSends, 0, "a send to the worker that left failed before its bye was read")
    }
}
