import Data
import Foundation
import Kernels
import NN
import Training
import Transport
import Wire

/// A worker: says hello, builds the job's model and data plan from the coordinator's welcome, and answers each
/// assignment with the gradient sums of its micro-batches as aligned blocks, at the weights sent for that step.
/// It needs only the dataset to exist where it runs.
public final class Worker {
    let socket: MessageSocket
    let name: String
    /// Seconds to wait for the coordinator's welcome.
    let joinTimeout: Double
    var jobID: UInt64 = 0
    var source: LocalGradientSource?
    var layout: ParameterLayout?
    var weights: (step: UInt64, values: [Float])?
    let log: (String) -> Void
    let loadDatasets: (JobConfig) throws -> (train: ImageDataset, test: ImageDataset)
    /// Kernel threads; nil follows the job's `training.threads`.
    let threads: Int?

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
                if source == nil && Date().timeIntervalSince(started) > joinTimeout {
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
            if try handle(message) == .stop { return }
        }
    }

    enum Next { case proceed, stop }

    func handle(_ message: Message) throws -> Next {
        if message.type != .welcome && message.type != .error && message.jobID != jobID {
            log("dropped a \(message.type) message for job \(String(message.jobID, radix: 16))")
            return .proceed
        }
        switch message.type {
        case .welcome:
            do {
                try join(message)
                try socket.send(Message(type: .heartbeat, jobID: jobID).encoded())  // ready for work
            } catch {
                // Tell the coordinator why this worker cannot take part, then stop.
                try? socket.send(Message(type: .error, jobID: message.jobID, metadata: metadataJSON(["message": "\(error)"])).encoded())
                throw error
            }
        case .weights:
            guard let layout, message.tensors.map(\.count) == layout.entries.map(\.count) else {
                log("dropped weights whose shapes do not match the model")
                return .proceed
            }
            weights = (message.step, message.tensors.flatMap { $0 })
        case .assignment:
            try compute(message)
        case .bye:
            try? socket.send(Message(type: .bye, jobID: jobID).encoded())
            return .stop
        case .error:
            let text = (try? JSONSerialization.jsonObject(with: Data(message.metadata)) as? [String: Any])?["message"] as? String
            throw CoordinatorError("the coordinator refused this worker: \(text ?? "no reason given")")
        case .heartbeat:
            break
        case .hello, .gradients:
            log("dropped a \(message.type) message, which only workers send")
        }
        return .proceed
    }

    private func join(_ welcome: Message) throws {
        let job = try JobDescription(metadata: welcome.metadata)
        let config = try job.parse()
        let wanted = threads ?? config.training.threads
        Parallel.threadCount = wanted > 0 ? wanted : ProcessInfo.processInfo.activeProcessorCount
        let data = try loadDatasets(config)
        let model = makeModel(config.model, seed: config.seed)
        let plan = BatchPlan(seed: config.seed, datasetSize: data.train.count, batchSize: config.training.batchSize,
                             microBatches: config.training.microBatches)
        jobID = welcome.jobID
        layout = ParameterLayout(model)
        source = LocalGradientSource(model: model, plan: plan, train: data.train)
        log("joined job \(config.name) (\(String(jobID, radix: 16)))")
    }

    private func compute(_ assignment: Message) throws {
        guard let source, let layout else { throw CoordinatorError("an assignment arrived before the welcome") }
        guard let weights, weights.step == assignment.step else {
            throw CoordinatorError("an assignment for step \(assignment.step) arrived without its weights")
        }
        let step = Int(assignment.step)
        do {
            for block in try source.blockSums(step: step, range: assignment.microBatches, parameters: weights.values) {
                let tensors = parameterBlocks(block.gradientSum, layout) + [[block.lossSum]]
                try socket.send(Message(type: .gradients, jobID: jobID, step: assignment.step,
                                        microBatches: block.microBatches, tensors: tensors).encoded())
            }
        } catch let error as TransportError {
            throw error
        } catch {
            try? socket.send(Message(type: .error, jobID: jobID, metadata: metadataJSON(["message": "\(error)"])).encoded())
            throw error
        }
    }
}
