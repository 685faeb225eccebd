import Cluster
import CZMQ
import Foundation
import NN
import Random
import Training
import Transport
import Wire
import XCTest

/// Random and mutated frames from strangers at a live coordinator on loopback ZeroMQ: N messages while it waits
/// for workers, then N/5 more while two workers train, with a peer alongside that says hello for the job again and
/// again and never reads. The coordinator must take every message and survive, no worker may be lost, and the job
/// must end with the single-process weights. `TRAINERD_FUZZ_MESSAGES` sets N (10,000 by default; the
/// README's 100,000 run uses it).
final class FuzzTests: XCTestCase {
    static let yaml = InProcessClusterTests.yaml.replacingOccurrences(of: "max_steps: 12", with: "max_steps: 100")
        + "\ncluster: {heartbeat_interval: 0.2, heartbeat_timeout: 1, straggler_delay: 0.5, step_deadline: 2}"

    var messageCount: Int { Int(ProcessInfo.processInfo.environment["TRAINERD_FUZZ_MESSAGES"] ?? "") ?? 10_000 }

    /// Messages a careless or hostile peer might send: valid ones of every type with one field broken, random
    /// bytes, truncated and padded frames, too many frames, non-finite gradients, foreign job ids and steps.
    struct Fuzzer {
        var random: Xoshiro256
        let jobID: UInt64
        let blockSizes: [Int]

        mutating func int(_ bound: Int) -> Int { random.nextInt(below: bound) }
        mutating func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) } }

        mutating func validMessage() -> Message {
            let type = MessageType.allCases[int(MessageType.allCases.count)]
            let step = UInt64(int(160))
            let first = int(6), count = 1 + int(3)
            let tensors = blockSizes.map { size in (0..<size).map { _ in Float(int(1000)) / 100 - 5 } } + [[1]]
            switch type {
            // A hello for this job would make the stranger a worker whose (random) gradients are trusted, as in any
            // job without `security`; strangers here say hello only to other jobs.
            case .hello: return Message(Hello(name: "fuzz", host: "fuzz", pid: int(1000)), jobID: [99, jobID ^ 1][int(2)])
            case .gradients, .weights:
                return Message(type: type, jobID: jobID, step: step, microBatches: first..<(first + count), tensors: tensors)
            case .assignment: return Message(type: type, jobID: jobID, step: step, microBatches: first..<(first + count))
            case .welcome: return Message(Welcome(config: "seed: \(int(9))", overrides: []), jobID: jobID)
            case .error: return Message(Refusal("fuzz", rejoin: int(2) == 0), jobID: jobID)
            default: return Message(type: type, jobID: jobID, step: step)
            }
        }

        mutating func frames() -> [[UInt8]] {
            var message = validMessage()
            switch int(12) {
            case 0:  // random frames
                return (0..<(1 + int(4))).map { _ in bytes(int(120)) }
            case 1:  // a header with one random byte changed
                var frames = message.encoded()
                frames[0][int(frames[0].count)] = UInt8(truncatingIfNeeded: random.next())
                return frames
            case 2:  // a frame cut short
                var frames = message.encoded()
                let index = int(frames.count)
                frames[index] = Array(frames[index].prefix(int(frames[index].count + 1)))
                return frames
            case 3:  // a frame padded
                var frames = message.encoded()
                frames[int(frames.count)] += bytes(1 + int(9))
                return frames
            case 4:  // frames missing or extra
                var frames = message.encoded()
                if frames.count > 1 && int(2) == 0 { frames.removeLast() } else { frames.append(bytes(int(16))) }
                return frames
            case 5:  // another protocol version
                var frames = message.encoded()
                frames[0][4] = UInt8(2 + int(200))
                return frames
            case 6:  // an unknown type
                var frames = message.encoded()
                frames[0][6] = UInt8(9 + int(240))
                return frames
            case 7:  // non-finite gradients for a plausible range
                message.type = .gradients
                message.tensors = blockSizes.map { size in (0..<size).map { _ in [Float.nan, .infinity, -.infinity, 1][int(4)] } } + [[.nan]]
                return message.encoded()
            case 8:  // tensor lengths that lie
                var frames = message.encoded()
                frames[0] = Array(frames[0].prefix(48)) + withUnsafeBytes(of: UInt32(1 + int(5000)).littleEndian) { Array($0) }
                    + bytes(8 * int(4))
                return frames
            case 9:  // thousands of tiny frames
                return [message.encoded()[0]] + (0..<(4000 + int(1000))).map { _ in [UInt8(int(256))] }
            case 10:  // a wrong job id or step
                message.jobID = random.next()
                message.step = random.next()
                return message.encoded()
            default:
                return message.encoded()
            }
        }
    }

    /// Counts the messages a socket has received, for a thread that watches the coordinator.
    final class CountingSocket: MessageSocket, @unchecked Sendable {
        let inner: MessageSocket
        private let lock = NSLock()
        private var count = 0
        init(_ inner: MessageSocket) { self.inner = inner }

        var received: Int { lock.lock(); defer { lock.unlock() }; return count }
        func send(_ frames: [[UInt8]]) throws { try inner.send(frames) }
        func receive(timeout: Double) throws -> [[UInt8]]? {
            let message = try inner.receive(timeout: timeout)
            if message != nil { lock.lock(); count += 1; lock.unlock() }
            return message
        }
    }

    func testRandomAndMutatedFramesLeaveTheCoordinatorAliveAndTheWeightsUnchanged() throws {
        let job = JobDescription(yaml: Self.yaml, overrides: [])
        let config = try job.parse()
        let expected = try Trainer(config: config, runDirectory: nil, data: InProcessClusterTests.data(config)).run().weightsSHA256

        let context = ZMQContext()
        let layout = try TrainingJob(config: config, data: InProcessClusterTests.data(config)).layout
        let router = try ZMQSocket(context, .router, limits: Coordinator.socketLimits(layout))
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = try router.lastEndpoint
        let counted = CountingSocket(router)
        let cluster = try CoordinatedJob(job, config: config, socket: counted, runDirectory: nil,
                                         data: InProcessClusterTests.data(config), startWorkers: 2)
        let (coordinator, trainer) = (cluster.coordinator, cluster.trainer)
        var events: [String: Int] = [:]
        coordinator.events.observers.append { event, _ in events[event, default: 0] += 1 }
        var lost: [String] = []
        coordinator.events.observers.append { event, fields in
            if event == "worker_lost" || event == "worker_left", case let .string(name)? = fields.first?.1 { lost.append(name) }
        }

        let total = messageCount, duringTraining = messageCount / 5
        final class Progress: @unchecked Sendable {
            var sent = 0, sentDuringTraining = 0, receivedBeforeTraining = 0
            var errors: [String] = []
            var trainingDone = false
        }
        let progress = Progress()
        let workers = (0..<2).map { index in
            Thread {
                let worker = try? Worker(connect: {
                    let dealer = try ZMQSocket(context, .dealer)
                    try dealer.setIdentity("worker-\(index)")
                    try dealer.connect(endpoint)
                    return dealer
                }, name: "worker-\(index)", loadDatasets: { InProcessClusterTests.data($0) })
                try? worker?.run()
            }
        }
        let fuzzer = Thread {
            var fuzz = Fuzzer(random: Xoshiro256(seed: 2024), jobID: job.jobID, blockSizes: layout.entries.map(\.count))
            do {
                let strangers = try (0..<4).map { index -> ZMQSocket in
                    let dealer = try ZMQSocket(context, .dealer)
                    try dealer.setIdentity("fuzz-\(index)")
                    try dealer.setOption(ZMQ_SNDHWM, 0)  // never blocks, even when the coordinator has finished
                    try dealer.connect(endpoint)
                    return dealer
                }
                let nonReader = try ZMQSocket(context, .dealer)
                try nonReader.setOption(ZMQ_RCVHWM, 1)
                try nonReader.setOption(ZMQ_RCVBUF, 4096)
                try nonReader.setOption(ZMQ_SNDHWM, 0)
                try nonReader.connect(endpoint)
                let hello = Message(Hello(name: "hog", host: "fuzz", pid: 1), jobID: job.jobID).encoded()
                func send(_ index: Int) throws {
                    let stranger = strangers[index % strangers.count]
                    try stranger.send(fuzz.frames())
                    while try stranger.receive(timeout: 0) != nil {}  // answers are not read
                    if index % 4 == 0 { try nonReader.send(hello) }
                    progress.sent += 1
                }
                for index in 0..<total { try send(index) }
                // Every frame is in before the workers come.
                let deadline = Date().addingTimeInterval(120)
                while counted.received < total && Date() < deadline { usleep(5_000) }
                progress.receivedBeforeTraining = counted.received
                workers.forEach { $0.start() }
                for index in 0..<duringTraining where !progress.trainingDone {
                    try send(index)
                    progress.sentDuringTraining += 1
                }
            } catch {
                progress.errors.append("\(error)")
            }
        }
        fuzzer.start()
        let summary = try trainer.run()
        progress.trainingDone = true
        let deadline = Date().addingTimeInterval(60)
        while !(fuzzer.isFinished && workers.allSatisfy(\.isFinished)) && Date() < deadline { usleep(10_000) }
        XCTAssertTrue(fuzzer.isFinished)
        XCTAssertEqual(progress.errors, [])
        XCTAssertEqual(progress.sent, total + progress.sentDuringTraining)
        XCTAssertGreaterThan(progress.sentDuringTraining, 0)
        XCTAssertGreaterThanOrEqual(progress.receivedBeforeTraining, total, "the coordinator took every frame before training")
        XCTAssertEqual(summary.weightsSHA256, expected)
        XCTAssertEqual(summary.steps, 100)
        XCTAssertEqual(lost, [], "no worker lost or left")
        let dropped = coordinator.droppedMessages
        print("fuzz: \(progress.sent) messages sent (\(total) before, \(progress.sentDuringTraining) during training), "
              + "\(counted.received) received by the coordinator, \(dropped) dropped with a reason, "
              + "events \(events.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")); "
              + "weights_sha256 unchanged")
        XCTAssertGreaterThan(dropped, total / 4, "fuzz messages must be refused with a reason")
    }
}
