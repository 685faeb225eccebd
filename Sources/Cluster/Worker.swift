import Foundation
import Training
import Transport
import Wire

/// A worker: the loop around `WorkerMachine`. It says hello, builds the job from the coordinator's welcome
/// (`TrainingJob`: it needs only the dataset to exist where it runs), and answers each assignment with the
/// gradient sums of its micro-batches as aligned blocks, at the weights sent for that step.
///
/// Gradients are computed on a thread of their own, so the loop keeps exchanging heartbeats during long steps.
public final class Worker {
    let connect: () throws -> MessageSocket
    var socket: MessageSocket
    let loadDatasets: (JobConfig) throws -> JobDatasets
    /// Kernel threads; nil follows the job's `training.threads`.
    let threads: Int?
    let log: (String) -> Void
    /// The worker leaves the job (says bye) once this is requested.
    let stop: StopRequest
    let trace: Trace?
    /// Polled in the loop: a reason to stop at once (the parent `launch` is gone, the key was refused), or nil.
    public var stopReason: () -> String? = { nil }
    var machine: WorkerMachine
    let computer = ComputeThread()
    private var finished = false

    public init(connect: @escaping () throws -> MessageSocket, name: String, endpoint: String = "the coordinator",
                joinTimeout: Double = 30, retryTimeout: Double = 600, threads: Int? = nil,
                loadDatasets: @escaping (JobConfig) throws -> JobDatasets = loadData, stop: StopRequest = StopRequest(),
                trace: Trace? = nil, log: @escaping (String) -> Void = { _ in }) throws {
        self.connect = connect
        socket = try connect()
        self.loadDatasets = loadDatasets
        self.threads = threads
        self.stop = stop
        self.trace = trace
        self.log = log
        machine = WorkerMachine(hello: Hello(name: name, host: ProcessInfo.processInfo.hostName, pid: Int(getpid())),
                                endpoint: endpoint, joinTimeout: joinTimeout, retryTimeout: retryTimeout, now: Self.now)
    }

    private static var now: Double { Date().timeIntervalSince1970 }

    /// Runs until the coordinator says bye or the worker leaves; throws with a clear message when refused,
    /// unreachable, or a step fails.
    public func run() throws {
        try perform(machine.start(now: Self.now))
        while !finished {
            if let reason = stopReason() { throw ClusterError(reason) }
            if stop.isRequested {
                try perform(machine.leave(now: Self.now))
                break
            }
            let frames = try socket.receiveFrames(timeout: machine.pollInterval, wakingOn: computer.wakeDescriptor)
            do {
                try perform(machine.computed(computer.takeResults(), now: Self.now))
            } catch let failure as WorkerMachine.ComputeFailure {
                try? perform(failure.report)
                throw failure.error
            }
            if let frames { try trace.span("handle", "communication") { try perform(machine.receive(frames, now: Self.now)) } }
            if !finished { try perform(machine.tick(now: Self.now)) }
        }
    }

    private func perform(_ actions: [WorkerMachine.Action]) throws {
        for action in actions {
            switch action {
            case let .send(message):
                if message.type == .gradients {
                    try trace.span("send", "communication") { try socket.send(frames: message.outgoingFrames) }
                } else {
                    try socket.send(frames: message.outgoingFrames)
                }
            case let .join(job, _):
                try join(job)
            case let .compute(step, range, weights, generation):
                computer.submit(generation: generation, step: step, range: range, weights: weights)
            case let .log(line):
                log(line)
            case .reconnect:
                socket = try connect()
            case .finish:
                socket.close(deliveringWithin: 1)
                finished = true
            }
        }
    }

    /// Builds the job's model and data plan and reports ready, or tells the coordinator why it cannot and stops.
    private func join(_ description: JobDescription) throws {
        do {
            let config = try description.parse()
            let job = try TrainingJob(config: config, loadDatasets: loadDatasets)
            let context = RunContext(threads: threads ?? config.training.threads, trace: trace)
            computer.load(job.localGradientSource(context))
            try perform(machine.joined(blockSizes: job.layout.entries.map(\.count), cluster: config.cluster,
                                       jobName: config.name, now: Self.now))
        } catch {
            try? perform(machine.joinFailed("\(error)", now: Self.now))
            if machine.pool == nil { throw error }  // a pool worker goes back to its pool instead
        }
    }
}
