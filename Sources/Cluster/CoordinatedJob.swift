import Foundation
import Training
import Transport

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
    public init(_ description: JobDescription, config: JobConfig, socket: MessageSocket, runDirectory: String?,
                data: JobDatasets? = nil, startWorkers: Int? = nil, context: RunContext? = nil) throws {
        let job = try TrainingJob(config: config, data: data)
        let context = context ?? job.context()
        let events = try EventLog(runDirectory: runDirectory)
        coordinator = Coordinator(socket: socket, job: description, layout: job.layout, microBatches: job.plan.microBatches,
                                  cluster: config.cluster, startWorkers: startWorkers, events: events, context: context)
        trainer = try Trainer(job: job, runDirectory: runDirectory, events: events, source: coordinator, context: context)
    }

    /// A coordinator bound to `bind` (ROUTER, for workers) and, with `logBind`, publishing its events there
    /// (XPUB, for monitors), both with CURVE when the config has `security`; frames beyond the protocol's bounds
    /// are refused.
    public static func bound(_ description: JobDescription, config: JobConfig, bind: String, logBind: String?,
                             runDirectory: String?, startWorkers: Int? = nil, context: RunContext? = nil) throws -> CoordinatedJob {
        let zmq = ZMQContext()
        let router = try ZMQSocket(zmq, .router)
        let publisher = try logBind.map { _ in try ZMQSocket(zmq, .xpublisher) }
        let security = try config.security.map {
            try CoordinatorSecurity(secretKeyFile: $0.secretKey, allowedKeys: $0.allowedKeys, context: zmq,
                                    sockets: [router] + (publisher.map { [$0] } ?? []))
        }
        try router.bind(bind)
        let job = try CoordinatedJob(description, config: config, socket: router, runDirectory: runDirectory,
                                     startWorkers: startWorkers, context: context)
        job.endpoint = try router.lastEndpoint
        job.security = security
        try job.coordinator.harden(router)
        if let publisher, let logBind {
            try publisher.bind(logBind)
            let log = LogPublisher(socket: publisher)
            job.trainer.events.observers.append(log.publish)
            job.coordinator.companions.append(log)
        }
        if let security { job.coordinator.companions.append(RefusalReporter(security.gatekeeper)) }
        return job
    }
}
