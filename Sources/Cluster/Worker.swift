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
        /// Compute the gradient sums of micro-batches `range` of `step` at `weights` and send them.
        case compute(step: UInt64, range: Range<Int>, weights: [Float])
        case send(Message)
        case log(String)
        /// The run is over (the coordinator said bye).
        case stop
    }

    var jobID: UInt64 = 0
    /// Numbers of values of each parameter tensor, known once joined.
    var blockSizes: [Int]?
    var weights: (step: UInt64, values: [Float])?

    public init() {}

    public var hasJoined: Bool { blockSizes != nil }

    /// Records that the join action succeeded with a model of these parameter tensor sizes.
    public mutating func joined(blockSizes: [Int]) { self.blockSizes = blockSizes }

    public mutating func receive(_ message: Message) throws -> [Action] {
        if message.type != .welcome && message.type != .error && message.jobID != jobID {
            return [.log("dropped a message of type \(message.type) for job \(String(message.jobID, radix: 16))")]
        }
        switch message.type {
        case .welcome:
            guard !hasJoined else { return [.log("dropped a second welcome")] }
            jobID = message.jobID
            return [.join(try JobDescription(metadata: message.metadata), jobID: message.jobID)]
        case .weights:
            guard let blockSizes, message.tensors.map(\.count) == blockSizes else {
                return [.log("dropped weights whose shapes do not match the model")]
            }
            weights = (message.step, message.tensors.flatMap { $0 })
            return []
        case .assignment:
            guard hasJoined else { throw CoordinatorError("an assignment arrived before the welcome") }
            guard let weights, weights.step == message.step else {
                throw CoordinatorError("an assignment for step \(message.step) arrived without its weights")
            }
            return [.compute(step: message.step, range: message.microBatches, weights: weights.values)]
        case .bye:
            return [.send(Message(type: .bye, jobID: jobID)), .stop]
        case .error:
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
/// It needs only the dataset to exist where it runs. The thin loop around `WorkerMachine`.
public final class Worker {
    let socket: MessageSocket
    let name: String
    /// Seconds to wait for the coordinator's welcome.
    let joinTimeout: Double
    let log: (String) -> Void
    let loadDatasets: (JobConfig) throws -> (train: ImageDataset, test: ImageDataset)
    /// Kernel threads; nil follows the job's `training.threads`.
    let threads: Int?
    var machine = WorkerMachine()
    var source: LocalGradientSource?
    var layout: ParameterLayout?

    public init(socket: MessageSocket, name: String, joinTimeout: Double = 30, threads: Int? = nil,
                loadDatasets: @escaping (JobConfig) throws -> (train: ImageDataset, test: ImageDataset) = loadData,
                log: @escaping (String) -> Void = { _ in }) {
        self.socket = socket
        self.name = name
        self.joinTimeout = joinTimeout
        self.loadDatasets = loadDatasets
        self.threads = threads
        self.log = log
    }

    /// Runs until the coordinator says bye; throws with a clear message when refused or when a step fails.
    public func run() throws {
        let hello = Message(type: .hello, jobID: 0, metadata: metadataJSON([
            "host": ProcessInfo.processInfo.hostName, "pid": Int(getpid()), "name": name,
        ]))
        try socket.send(hello.encoded())
        let started = Date()
        while true {
            guard let frames = try socket.receive(timeout: 1) else {
                if !machine.hasJoined && Date().timeIntervalSince(started) > joinTimeout {
                    throw CoordinatorError("no answer from the coordinator within \(Int(joinTimeout)) s")
                }
                continue
            }
            let message: Message
            do {
                message = try Message.decode(frames)
            } catch {
                log("dropped a message from the coordinator: \(error)")
                continue
            }
            for action in try machine.receive(message) {
                switch action {
                case let .join(job, jobID):
                    try join(job, jobID: jobID)
                case let .compute(step, range, weights):
                    try compute(step: step, range: range, weights: weights)
                case let .send(message):
                    try socket.send(message.encoded())
                case let .log(line):
                    log(line)
                case .stop:
                    return
                }
            }
        }
    }

    /// Builds the model and data plan; reports ready, or tells the coordinator why it cannot and stops.
    private func join(_ job: JobDescription, jobID: UInt64) throws {
        do {
            let config = try job.parse()
            let wanted = threads ?? config.training.threads
            Parallel.threadCount = wanted > 0 ? wanted : ProcessInfo.processInfo.activeProcessorCount
            let data = try loadDatasets(config)
            let model = makeModel(config.model, seed: config.seed)
            let plan = BatchPlan(seed: config.seed, datasetSize: data.train.count, batchSize: config.training.batchSize,
                                 microBatches: config.training.microBatches)
            layout = ParameterLayout(model)
            source = LocalGradientSource(model: model, plan: plan, train: data.train)
            machine.joined(blockSizes: layout!.entries.map(\.count))
            log("joined job \(config.name) (\(String(jobID, radix: 16)))")
        } catch {
            try? socket.send(Message(type: .error, jobID: jobID, metadata: metadataJSON(["message": "\(error)"])).encoded())
            throw error
        }
        try socket.send(Message(type: .heartbeat, jobID: jobID).encoded())  // ready for work
    }

    private func compute(step: UInt64, range: Range<Int>, weights: [Float]) throws {
        guard let source, let layout else { return }
        let blocks: [GradientBlock]
        do {
            blocks = try source.blockSums(step: Int(step), range: range, parameters: weights)
        } catch {
            try? socket.send(Message(type: .error, jobID: machine.jobID, metadata: metadataJSON(["message": "\(error)"])).encoded())
            throw error
        }
        for block in blocks {
            let tensors = parameterBlocks(block.gradientSum, layout) + [[block.lossSum]]
            try socket.send(Message(type: .gradients, jobID: machine.jobID, step: step, microBatches: block.microBatches,
                                    tensors: tensors).encoded())
        }
    }
}
