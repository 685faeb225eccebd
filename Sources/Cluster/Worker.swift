import Data
import Foundation
import Kernels
import NN
import Training
import Transport
import Wire

/// The worker's protocol logic as a state machine: messages from the coordinator in, actions out. Joining
/// (building the model, loading data) and computing gradients are actions the loop performs.
public struct WorkerMachine {
    public enum Action: Equatable {
        /// Build the job's model and load its data, then report ready (or the reason it cannot).
        case join(JobDescription, jobID: UInt64)
        /// Already joined this job (the coordinator restarted or lost track of us): report ready again.
        case ready
        /// Compute the gradient sums of micro-batches `range` of `step` at the weights `feed` delivers (they may
        /// still be arriving) and send them.
        case compute(step: UInt64, range: Range<Int>, weights: WeightFeed)
        case send(Message)
        case log(String)
        /// Say hello again: the coordinator does not know this worker (any work in progress is void).
        case rejoin(String)
        /// The run is over (the coordinator said bye).
        case stop
    }

    var jobID: UInt64 = 0
    /// Numbers of values of each parameter tensor, known once joined.
    var blockSizes: [Int]?
    /// The weights of the latest step assigned or sent, as they arrive.
    var weights: WeightFeed?

    public init() {}

    public var hasJoined: Bool { blockSizes != nil }

    /// The feed of `step`'s weights (a new one when the step is new: its weights follow the assignment).
    mutating func feed(for step: UInt64) -> WeightFeed {
        if let weights, weights.step == step { return weights }
        weights?.cancel("step \(step) began")
        let feed = WeightFeed(step: step, count: blockSizes?.count ?? 0)
        weights = feed
        return feed
    }

    /// Wakes any pass still waiting for weights that will not come (the step's work is void).
    public mutating func abandonWeights(_ reason: String) {
        weights?.cancel(reason)
        weights = nil
    }

    /// Records that the join action succeeded with a model of these parameter tensor sizes.
    public mutating func joined(blockSizes: [Int]) { self.blockSizes = blockSizes }

    public mutating func receive(_ message: Message) throws -> [Action] {
        if message.type != .welcome && message.type != .error && message.jobID != jobID {
            return [.log("dropped a message of type \(message.type) for job \(String(message.jobID, radix: 16))")]
        }
        switch message.type {
        case .welcome:
            if hasJoined {
                guard message.jobID == jobID else {
                    throw CoordinatorError("the coordinator now runs job \(String(message.jobID, radix: 16)), not \(String(jobID, radix: 16)); start a new worker for it")
                }
                abandonWeights("the coordinator welcomed this worker again")
                return [.ready]
            }
            jobID = message.jobID
            return [.join(try JobDescription(metadata: message.metadata), jobID: message.jobID)]
        case .weights:
            let first = Int(message.block)
            guard let blockSizes, first + message.tensors.count <= blockSizes.count,
                  message.tensors.map(\.count) == Array(blockSizes[first..<(first + message.tensors.count)]) else {
                return [.log("dropped weights whose shapes do not match the model")]
            }
            let feed = self.feed(for: message.step)
            for (offset, values) in message.tensors.enumerated() { feed.provide(first + offset, values) }
            return []
        case .assignment:
            guard hasJoined else { throw CoordinatorError("an assignment arrived before the welcome") }
            return [.compute(step: message.step, range: message.microBatches, weights: feed(for: message.step))]
        case .bye:
            return [.send(Message(type: .bye, jobID: jobID)), .stop]
        case .error:
            let details = (try? JSONSerialization.jsonObject(with: Data(message.metadata))) as? [String: Any]
            if details?["rejoin"] as? Bool == true {
                abandonWeights("the coordinator forgot this worker")
                return [.rejoin(errorText(message))]
            }
            throw CoordinatorError("the coordinator refused this worker: \(errorText(message))")
        case .heartbeat:
            return []
        case .hello, .gradients:
            return [.log("dropped a \(message.type) message, which only workers send")]
        }
    }
}

/// A worker: says hello, builds the job's model and data plan from the coordinator's welcome, and answers each
/// assignment with the gradient sums of its micro-batches as aligned blocks, at the weights sent for that step.
/// It needs only the dataset to exist where it runs. The loop around `WorkerMachine`.
///
/// Gradients are computed on a thread of their own, so the loop keeps exchanging heartbeats during long steps.
/// When the coordinator falls silent for `cluster.heartbeat_timeout`, the worker reconnects and says hello again
/// with growing pauses (1, 2, 4 … 15 s) until a coordinator for the same job answers (`coordinator --resume`),
/// or gives up after `retryTimeout` seconds.
public final class Worker {
    let connect: () throws -> MessageSocket
    var socket: MessageSocket
    let name: String
    /// Seconds to wait for the first welcome.
    let joinTimeout: Double
    /// Seconds to keep trying to reach a coordinator that was lost.
    let retryTimeout: Double
    let log: (String) -> Void
    let loadDatasets: (JobConfig) throws -> JobDatasets
    /// Kernel threads; nil follows the job's `training.threads`.
    let threads: Int?
    /// Polled in the loop: a reason to stop at once (the parent `launch` is gone), or nil.
    public var stopReason: () -> String? = { nil }
    /// Polled in the loop: leave the job (say bye; the coordinator hands this worker's micro-batches on).
    public var leaveRequested: () -> Bool = { false }
    var machine = WorkerMachine()
    var source: LocalGradientSource?
    var layout: ParameterLayout?
    var cluster = JobConfig.ClusterSection()
    let computer = ComputeThread()
    /// Work handed to the compute thread under an older generation is void (the coordinator forgot it).
    var generation = 0
    var lastHeard = Date()
    var lastSent = Date()
    /// While reconnecting: since when, and when to say hello next.
    var reconnecting: (since: Date, nextHello: Date, pause: Double)?
    /// A hello is out and its welcome not yet in.
    var awaitingWelcome = false

    public init(connect: @escaping () throws -> MessageSocket, name: String, joinTimeout: Double = 30,
                retryTimeout: Double = 600, threads: Int? = nil,
                loadDatasets: @escaping (JobConfig) throws -> JobDatasets = loadData,
                log: @escaping (String) -> Void = { _ in }) throws {
        self.connect = connect
        socket = try connect()
        self.name = name
        self.joinTimeout = joinTimeout
        self.retryTimeout = retryTimeout
        self.loadDatasets = loadDatasets
        self.threads = threads
        self.log = log
    }

    /// Runs until the coordinator says bye; throws with a clear message when refused, unreachable, or a step fails.
    public func run() throws {
        try sayHello()
        while true {
            if let reason = stopReason() { throw CoordinatorError(reason) }
            if leaveRequested() {
                log("leaving the job")
                machine.abandonWeights("this worker left the job")
                try? send(Message(type: .bye, jobID: machine.jobID))
                socket.close(deliveringWithin: 1)
                return
            }
            let timeout = min(0.25, cluster.heartbeatInterval / 2)
            let frames = try socket.receiveFrames(timeout: timeout, wakingOn: computer.wakeDescriptor)
            try sendFinishedWork()
            if let frames, try Trace.span("handle", "communication", { try handle(frames) }) { return }
            try keepAlive()
        }
    }

    private func sayHello() throws {
        let hello = Message(type: .hello, jobID: 0, metadata: metadataJSON([
            "host": ProcessInfo.processInfo.hostName, "pid": Int(getpid()), "name": name,
        ]))
        try send(hello)
        awaitingWelcome = true
    }

    private func send(_ message: Message) throws {
        try socket.send(frames: message.outgoingFrames)
        lastSent = Date()
    }

    /// Handles one message from the coordinator; true when the run is over.
    private func handle(_ frames: [ReceivedFrame]) throws -> Bool {
        lastHeard = Date()
        let message: Message
        do {
            message = try Message.decode(frames)
        } catch {
            log("dropped a message from the coordinator: \(error)")
            return false
        }
        if message.type == .welcome {
            if machine.hasJoined { log("rejoined the coordinator") }
            reconnecting = nil
            awaitingWelcome = false
        }
        for action in try machine.receive(message) {
            switch action {
            case let .join(job, jobID):
                try join(job, jobID: jobID)
            case .ready:
                try send(Message(type: .heartbeat, jobID: machine.jobID))
            case let .compute(step, range, weights):
                computer.submit(generation: generation, step: step) { [source] emit in
                    try source!.streamBlockSums(step: Int(step), range: range, weights: weights, emit: emit)
                }
            case let .send(message):
                try send(message)
            case let .log(line):
                log(line)
            case let .rejoin(reason):
                guard !awaitingWelcome else { continue }
                log("the coordinator asks this worker to join again (\(reason))")
                generation += 1
                try sayHello()
            case .stop:
                machine.abandonWeights("the run is over")
                socket.close(deliveringWithin: 1)
                return true
            }
        }
        return false
    }

    /// Sends the pieces of gradients computed so far under the current generation. Pieces of one step and range
    /// whose blocks are consecutive (block i < P is parameter tensor i, block P the loss sum; see `WireProtocol`)
    /// and travel as the same tensor type share a message.
    private func sendFinishedWork() throws {
        var groups: [(step: UInt64, pieces: [GradientEngine.Piece])] = []
        for result in computer.takeResults() where result.generation == generation {
            switch result.outcome {
            case let .success(piece):
                if let index = groups.firstIndex(where: { $0.step == result.step && $0.pieces[0].microBatches == piece.microBatches }) {
                    groups[index].pieces.append(piece)
                } else {
                    groups.append((result.step, [piece]))
                }
            case let .failure(error) where error is WeightsAbandoned:
                log("\(error)")  // work the coordinator no longer wants (a newer step began, or a rejoin)
            case let .failure(error):
                try groups.forEach { try send(step: $0.step, $0.pieces) }
                try? send(Message(type: .error, jobID: machine.jobID, metadata: metadataJSON(["message": "\(error)"])))
                throw error
            }
        }
        try groups.forEach { try send(step: $0.step, $0.pieces) }
    }

    /// Sends pieces of one step and range as runs of consecutive blocks; the loss sum (one value, for the log)
    /// always travels as float32, so with another tensor type it goes alone.
    private func send(step: UInt64, _ pieces: [GradientEngine.Piece]) throws {
        guard let layout else { return }
        let lossBlock = layout.entries.count
        func block(_ piece: GradientEngine.Piece) -> Int { piece.parameter ?? lossBlock }
        var runs: [[GradientEngine.Piece]] = []
        for piece in pieces.sorted(by: { block($0) < block($1) }) {
            if let last = runs.last?.last, block(last) + 1 == block(piece),
               piece.parameter != nil || cluster.wireDType == .float32 {
                runs[runs.count - 1].append(piece)
            } else {
                runs.append([piece])
            }
        }
        try Trace.span("send", "communication") {
            for run in runs {
                try send(Message(type: .gradients, jobID: machine.jobID, step: step, microBatches: run[0].microBatches,
                                 block: UInt32(block(run[0])), tensors: run.map(\.values),
                                 tensorType: run[0].parameter == nil ? .float32 : cluster.wireDType.tensorType))
            }
        }
    }

    /// Heartbeats; notices a silent coordinator and reconnects with growing pauses, or gives up.
    private func keepAlive() throws {
        let now = Date()
        if !awaitingWelcome && machine.hasJoined && now.timeIntervalSince(lastSent) >= cluster.heartbeatInterval {
            try send(Message(type: .heartbeat, jobID: machine.jobID))
        }
        let silence = now.timeIntervalSince(lastHeard)
        if !machine.hasJoined && reconnecting == nil {
            if silence > joinTimeout { throw CoordinatorError("no answer from the coordinator within \(Int(joinTimeout)) s") }
            return
        }
        if reconnecting == nil && silence > cluster.heartbeatTimeout {
            log("lost the coordinator (silent for \(Int(silence)) s); reconnecting")
            generation += 1
            machine.abandonWeights("lost the coordinator")
            reconnecting = (now, now, 1)
        }
        guard let state = reconnecting, now >= state.nextHello else { return }
        guard now.timeIntervalSince(state.since) <= retryTimeout else {
            throw CoordinatorError("the coordinator has been unreachable for \(Int(retryTimeout)) s; giving up")
        }
        socket = try connect()  // a fresh socket: nothing stale queued for the new coordinator
        try sayHello()
        reconnecting = (state.since, now.addingTimeInterval(state.pause), min(state.pause * 2, 15))
    }

    /// Builds the model and data plan; reports ready, or tells the coordinator why it cannot and stops.
    private func join(_ job: JobDescription, jobID: UInt64) throws {
        do {
            let config = try job.parse()
            let wanted = threads ?? config.training.threads
            Parallel.threadCount = wanted > 0 ? wanted : ProcessInfo.processInfo.activeProcessorCount
            let data = try loadDatasets(config)
            let model = makeModel(config.model, seed: config.seed, data: data.train)
            let plan = BatchPlan(seed: config.seed, datasetSize: data.train.count, batchSize: config.training.batchSize,
                                 microBatches: config.training.microBatches)
            layout = ParameterLayout(model)
            source = LocalGradientSource(model: model, plan: plan, train: data.train, precision: config.training.precision)
            cluster = config.cluster
            machine.joined(blockSizes: layout!.entries.map(\.count))
            log("joined job \(config.name) (\(String(jobID, radix: 16)))")
        } catch {
            try? send(Message(type: .error, jobID: jobID, metadata: metadataJSON(["message": "\(error)"])))
            throw error
        }
        lastHeard = Date()  // loading took a while; the coordinator was not silent
        try send(Message(type: .heartbeat, jobID: jobID))  // ready for work
    }
}

/// Runs gradient computations one after another on a thread of its own and wakes the worker's loop (through a
/// pipe it can poll next to its socket) with every piece they hand on, and when one fails.
final class ComputeThread: @unchecked Sendable {
    struct Result {
        var generation: Int
        var step: UInt64
        var outcome: Swift.Result<GradientEngine.Piece, Error>
    }

    private let queue = DispatchQueue(label: "trainerd.compute")
    private let lock = NSLock()
    private var results: [Result] = []
    private let pipeDescriptors: [Int32]

    init() {
        var descriptors: [Int32] = [0, 0]
        precondition(pipe(&descriptors) == 0, "cannot create a pipe")
        _ = fcntl(descriptors[0], F_SETFL, fcntl(descriptors[0], F_GETFL) | O_NONBLOCK)
        pipeDescriptors = descriptors
    }

    deinit { pipeDescriptors.forEach { close($0) } }

    /// Readable while finished work waits to be taken.
    var wakeDescriptor: Int32 { pipeDescriptors[0] }

    /// Runs `work` after the work already submitted; what it emits (from any thread) reaches `takeResults`.
    func submit(generation: Int, step: UInt64, work: @escaping (_ emit: (GradientEngine.Piece) -> Void) throws -> Void) {
        queue.async { [self] in
            do {
                try work { post(Result(generation: generation, step: step, outcome: .success($0))) }
            } catch {
                post(Result(generation: generation, step: step, outcome: .failure(error)))
            }
        }
    }

    private func post(_ result: Result) {
        lock.lock()
        results.append(result)
        lock.unlock()
        var byte: UInt8 = 1
        _ = write(pipeDescriptors[1], &byte, 1)
    }

    /// The finished work, oldest first.
    func takeResults() -> [Result] {
        var buffer = [UInt8](repeating: 0, count: 64)
        while read(pipeDescriptors[0], &buffer, buffer.count) > 0 {}
        lock.lock()
        defer { lock.unlock() }
        let taken = results
        results = []
        return taken
    }
}
