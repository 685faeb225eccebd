import Foundation
import Training
import Transport
import Wire

/// A job trained with workers: its parts (`TrainingJob`), a `Coordinator` on a socket as the gradient source of a
/// `Trainer`, and one event log for both. The one place that wires a coordinator to its socket and trainer, for
/// the `coordinator` and `launch` commands, `bench` and the tests.
public final class CoordinatedJob {
    public let coordinator: Coordinator
    public let trainer: Trainer
    /// The workers' endpoint (as bound, with the port chosen), when `bind` made the socket.
    public private(set) var endpoint: String?
    /// CURVE on the sockets, when the job has `security`.
    public private(set) var security: CoordinatorSecurity?

    /// Wires a coordinator on `socket` (already bound) to a trainer of `description`, whose config is `config`.
    public convenience init(_ description: JobDescription, config: JobConfig, socket: MessageSocket, runDirectory: String?,
                            data: JobDatasets? = nil, startWorkers: Int? = nil, context: RunContext? = nil) throws {
        try self.init(description, job: try TrainingJob(config: config, data: data), socket: socket, runDirectory: runDirectory,
                      startWorkers: startWorkers, context: context)
    }

    /// Wires a coordinator on `socket` to a trainer of `job`, built from `description`.
    public init(_ description: JobDescription, job: TrainingJob, socket: MessageSocket, runDirectory: String?, startWorkers: Int? = nil,
                context: RunContext? = nil) throws {
        let config = job.config
        let context = context ?? job.context()
        let events = try EventLog(runDirectory: runDirectory)
        coordinator = Coordinator(socket: socket, job: description, layout: job.layout, microBatches: job.plan.microBatches,
                                  cluster: config.cluster, startWorkers: startWorkers, events: events, context: context)
        trainer = try Trainer(job: job, runDirectory: runDirectory, events: events, source: coordinator, context: context)
    }

    /// A coordinator bound to `bind` (ROUTER, for workers) and, with `logBind`, publishing its events there
    /// (XPUB, for monitors), both with CURVE when the config has `security`; frames beyond the protocol's bounds
    /// are refused (`Coordinator.socketLimits`, `LogPublisher.socketLimits`), and a `ConnectionGuard` cuts a
    /// connection that has sent more than its limit that was not delivered.
    public static func bound(_ description: JobDescription, config: JobConfig, bind: String, logBind: String?,
                             runDirectory: String?, startWorkers: Int? = nil, context: RunContext? = nil) throws -> CoordinatedJob {
        let training = try TrainingJob(config: config)
        let zmq = ZMQContext()
        let router = try ZMQSocket(zmq, .router, limits: Coordinator.socketLimits(training.layout))
        router.maximumFrames = 2 + WireProtocol.maximumTensors
        let publisher = try logBind.map { _ in try ZMQSocket(zmq, .xpublisher, limits: LogPublisher.socketLimits) }
        let connectionGuard = try ConnectionGuard(
            context: zmq, watching: [(router, Coordinator.connectionLimit)] + (publisher.map { [($0, LogPublisher.connectionLimit)] } ?? []),
            totalLimit: Coordinator.totalConnectionLimit)
        let security = try config.security.map {
            try CoordinatorSecurity(secretKeyFile: $0.secretKey, allowedKeys: $0.allowedKeys, context: zmq,
                                    sockets: [router] + (publisher.map { [$0] } ?? []), guard: connectionGuard)
        }
        try router.bind(bind)
        let job = try CoordinatedJob(description, job: training, socket: router, runDirectory: runDirectory,
                                     startWorkers: startWorkers, context: context)
        job.endpoint = try router.lastEndpoint
        job.security = security
        job.coordinator.connectionGuard = connectionGuard
        if let publisher, let logBind {
            let log = try LogPublisher(socket: publisher, events: job.trainer.events)
            try publisher.bind(logBind)
            job.trainer.events.observers.append { log.publish($0, $1) }
            job.coordinator.companions.append(log)
        }
        if let security { job.coordinator.companions.append(RefusalReporter(security.gatekeeper)) }
        return job
    }
}
