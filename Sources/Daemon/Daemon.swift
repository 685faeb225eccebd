import Cluster
import Foundation
import JobStore
import Scheduling
import Training
import Transport
import Wire

/// `trainerd serve`: a standing trainer. Jobs are submitted to its `JobStore`; pool workers connect to its one
/// worker socket and stay between jobs; the `Scheduler` decides which job each worker serves; each running job has
/// a coordinator of its own, in this process, on a thread of its own (`DaemonJob`).
///
/// The loop (`run`, one thread) alone owns the ZeroMQ socket, the `PoolMachine` and the routing tables: it hands
/// each message to the job its sender is lent to (or to the pool), performs the jobs' sends (`JobSocket`), and
/// runs the work other threads post to `loop` (job events, submissions, cancels). Coordinators run in-process
/// because a worker moves between jobs on the same connection (a bye from one job, a hello that the next one
/// welcomes), one port serves every job (one firewall rule, one Kubernetes Service port), and a job's failure is an
/// error on its own thread, in its own context, that ends only that job.
public final class Daemon: @unchecked Sendable {
    public struct Options: Sendable {
        /// The workers' endpoint (ROUTER).
        public var bind: String
        /// The log stream's endpoint (XPUB), every job's events under its id as the topic; nil: none.
        public var logBind: String?
        /// CURVE on both ports: the daemon's secret key file and the directory of allowed public keys (`*.pub`).
        public var secretKeyFile: String?
        public var allowedKeys: String?
        /// Heartbeats between the daemon and its idle pool workers.
        public var heartbeatInterval: Double
        public var heartbeatTimeout: Double

        public init(bind: String, logBind: String? = nil, secretKeyFile: String? = nil, allowedKeys: String? = nil,
                    heartbeatInterval: Double = 1, heartbeatTimeout: Double = 10) {
            self.bind = bind
            self.logBind = logBind
            self.secretKeyFile = secretKeyFile
            self.allowedKeys = allowedKeys
            self.heartbeatInterval = heartbeatInterval
            self.heartbeatTimeout = heartbeatTimeout
        }
    }

    /// A job whose workers report this many times that they cannot run it (they cannot load its config or data,
    /// or their computation throws) ends as failed.
    public static let workerFailuresToFail = 3
    /// Ended jobs whose latest events the log port keeps for late subscribers.
    static let endedJobsCached = 100

    public let store: JobStore
    let options: Options
    let loop = LoopQueue()
    private let zmq = ZMQContext()
    private let router: ZMQSocket
    private let publisherSocket: ZMQSocket?
    private let publisher: LogPublisher?
    private let connectionGuard: ConnectionGuard
    private let security: CoordinatorSecurity?
    private let refusals: RefusalReporter?
    /// The worker socket's endpoint as bound (with the port chosen).
    public let endpoint: String
    /// The log stream's endpoint as bound, with `logBind`.
    public let logEndpoint: String?
    private let datasets = DatasetCache()
    /// Each job's latest metrics (running jobs and the `endedJobsCached` latest ended).
    public let metrics = LiveMetrics(kept: Daemon.endedJobsCached)
    private let log: @Sendable (String) -> Void

    // The loop thread's state.
    private var pool: PoolMachine
    private var jobs: [Int64: DaemonJob] = [:]
    /// Identity → the job it is lent to, until its next hello to the pool.
    private var routes: [[UInt8]: Int64] = [:]
    /// Session → the job that issued it (from the welcomes the jobs sent).
    private var sessions: [UInt64: Int64] = [:]
    private var needsPlan = true
    /// After a failed plan (the store could not be read), the next try waits until then.
    private var planRetry = 0.0
    private var stopping = false
    /// Pool members whose connection limit is raised (they serve a job), and to what.
    private var raisedLimits: [[UInt8]: Int] = [:]
    /// Connections no longer serving a job whose raised limit stays until then: what a worker sent before it left
    /// or reconnected (in the kernels' buffers) still arrives.
    private var limitsLowered: [[UInt8]: Double] = [:]
    private var limitsChanged = false
    /// Ended jobs, oldest first, whose last events the log port still keeps.
    private var endedTopics: [String] = []

    public init(store: JobStore, options: Options, log: @escaping @Sendable (String) -> Void = { _ in }) throws {
        self.store = store
        self.options = options
        self.log = log
        pool = PoolMachine(heartbeatInterval: options.heartbeatInterval, heartbeatTimeout: options.heartbeatTimeout)
        let zmq = zmq
        router = try ZMQSocket(zmq, .router, limits: SocketLimits(maximumFrame: WireProtocol.maximumFrame,
                                                                   sendQueue: Coordinator.sendQueue))
        router.maximumFrames = 2 + WireProtocol.maximumTensors
        publisherSocket = try options.logBind.map { _ in try ZMQSocket(zmq, .xpublisher, limits: LogPublisher.socketLimits) }
        let sockets = [router] + (publisherSocket.map { [$0] } ?? [])
        connectionGuard = try ConnectionGuard(
            context: zmq, watching: [(router, Coordinator.connectionLimit)] + (publisherSocket.map { [($0, LogPublisher.connectionLimit)] } ?? []),
            totalLimit: Coordinator.totalConnectionLimit)
        switch (options.secretKeyFile, options.allowedKeys) {
        case let (secretKeyFile?, allowedKeys?):
            security = try CoordinatorSecurity(secretKeyFile: secretKeyFile, allowedKeys: allowedKeys, context: zmq,
                                               sockets: sockets, guard: connectionGuard)
        case (nil, nil):
            security = nil
        default:
            throw DaemonError("CURVE needs both the daemon's secret key file and the directory of allowed keys")
        }
        refusals = security.map { RefusalReporter($0.gatekeeper) }
        publisher = try publisherSocket.map { socket in
            try LogPublisher(socket: socket, topics: true) { log("log port: a subscriber does not keep up; events are dropped for it") }
        }
        try router.bind(options.bind)
        endpoint = try router.lastEndpoint
        if let publisherSocket, let logBind = options.logBind {
            try publisherSocket.bind(logBind)
            logEndpoint = try publisherSocket.lastEndpoint
        } else {
            logEndpoint = nil
        }
    }

    private var now: Double { Date().timeIntervalSince1970 }

    // MARK: Requests from other threads

    /// Stores a job (validated as `train` would: a bad config is refused naming `source` and the field) and
    /// schedules it; returns once it is on disk.
    public func submit(_ submission: JobSubmission, source: String = "the submitted config") throws -> JobRecord {
        let config = try JobConfig.parse(yaml: submission.config, source: source, overrides: submission.overrides)
        var submission = submission
        if submission.name.isEmpty { submission.name = config.name }
        guard submission.minWorkers >= 1, (submission.maxWorkers ?? .max) >= submission.minWorkers else {
            throw DaemonError("workers \(submission.minWorkers):\(submission.maxWorkers.map(String.init) ?? ""): the min must be at least 1 and the max at least the min")
        }
        let record = try store.submit(submission, now: now)
        loop.async { [self] in needsPlan = true }
        return record
    }

    /// Cancels job `id`: a queued job at once, a running one at its next step boundary (with a checkpoint).
    public func cancel(_ id: Int64) throws -> JobRecord {
        let record = try store.cancel(id, now: now)
        if record.state == .running {
            loop.async { [self] in
                if let job = jobs[id] { return job.stop.request() }
                // Running before the daemon restarted, and not continued yet: nothing is training it.
                end(id, as: .cancelled)
            }
        }
        if record.state == .cancelled { loop.async { [self] in needsPlan = true } }
        return record
    }

    /// Names of the pool's workers and what each is doing ("idle", "job N", "returning").
    public func poolMembers() throws -> [(name: String, host: String, state: String)] {
        try loop.sync { [self] in
            pool.members.map { member in
                let state = switch member.phase {
                case .idle: "idle"
                case let .lent(job): "job \(job)"
                case .returning: "returning"
                }
                return (member.name, member.host, state)
            }
        }
    }

    // MARK: The loop

    /// Runs until `stop` is requested; then stops every running job at its next step boundary (each writes a
    /// checkpoint and stays `running` in the store, to be continued by the next `serve` on the same state
    /// directory), waiting at most `drainTimeout` s for them.
    public func run(stop: StopRequest, drainTimeout: Double = 60) throws {
        log("serving workers on \(endpoint)" + (logEndpoint.map { ", the log stream on \($0)" } ?? "")
            + (security == nil ? "" : ", with CURVE") + "; state in \(store.directory)")
        var drainDeadline: Double?
        while true {
            if stop.isRequested {
                if drainDeadline == nil {
                    stopping = true
                    drainDeadline = now + drainTimeout
                    jobs.values.forEach { $0.stop.request() }
                }
                if jobs.isEmpty || now > drainDeadline! { break }
            }
            if let frames = try router.receiveFrames(timeout: 0.05, wakingOn: loop.wake.descriptor) { route(frames) }
            loop.runPending()
            perform(pool.tick(now: now))
            publisher?.poll()
            reportRefusedPeers()
            if limitsChanged || !limitsLowered.isEmpty { raiseConnectionLimits() }
            if needsPlan && !stopping && now >= planRetry {
                do {
                    try plan()
                } catch {
                    needsPlan = true
                    planRetry = now + 1
                    log("scheduling failed, retrying in 1 s: \(error)")
                }
            }
        }
        loop.close()
        connectionGuard.stop()
        security?.gatekeeper.stop()
        router.close()
        publisherSocket?.close()
    }

    /// Logs the connections the guard cut and the peers CURVE refused.
    private func reportRefusedPeers() {
        for cut in connectionGuard.takeCuts() {
            let who = cut.identity.flatMap(pool.member).map { "worker \($0.name)" } ?? "a peer"
            log("cut the connection of \(who) from \(cut.address): \(cut.unread) bytes sent and not delivered, over \(cut.limit)")
        }
        for refusal in refusals?.take() ?? [] { log("refused a peer from \(refusal.address): \(refusal.reason)") }
    }

    /// A pool member serving a job (or on its way back from one, its last gradients in flight) may have that job's
    /// `workerConnectionLimit` undelivered; an idle one, or a connection that is gone, a peer's default once
    /// `heartbeatTimeout` has passed.
    private func raiseConnectionLimits() {
        limitsChanged = false
        var wanted: [[UInt8]: Int] = [:]
        for member in pool.members {
            switch member.phase {
            case let .lent(job), let .returning(_, job):
                if let limit = jobs[job]?.workerConnectionLimit { wanted[member.identity] = limit }
            case .idle:
                break
            }
        }
        let now = now
        for (identity, limit) in wanted where raisedLimits[identity] != limit {
            connectionGuard.setLimit(limit, forPeer: identity)
            raisedLimits[identity] = limit
            limitsLowered[identity] = nil
        }
        for identity in raisedLimits.keys where wanted[identity] == nil {
            let time = limitsLowered[identity] ?? now + options.heartbeatTimeout
            guard time <= now else {
                limitsLowered[identity] = time
                continue
            }
            connectionGuard.setLimit(nil, forPeer: identity)
            raisedLimits[identity] = nil
            limitsLowered[identity] = nil
        }
    }

    /// Hands a message to the job its sender is lent to, or to the pool.
    private func route(_ frames: [ReceivedFrame]) {
        guard frames.count >= 2, let (type, session) = Message.peek(frames[1]) else { return }  // not a message of ours
        let identity = frames[0].bytes
        let address = frames[0].peerAddress ?? "unknown"
        let key = frames[0].userID
        if type == .hello {
            guard let message = try? Message.decode(Array(frames.dropFirst())) else { return }
            if session != 0, let jobID = sessions[session], let job = jobs[jobID] {
                // A worker of a running job reconnected or was asked to rejoin: the job hears it.
                pool.rejoined(identity, message, to: jobID, address: address, key: key, now: now)
                routes[identity] = jobID
                limitsChanged = true
                job.socket.deliver(frames)
                return
            }
            routes[identity] = nil
            return perform(pool.receive(from: identity, message, address: address, key: key, now: now))
        }
        // Session 0 is a worker idle in its own view (not yet welcomed by the job it was given to): the pool's.
        if session != 0, let jobID = routes[identity], let job = jobs[jobID] {
            return job.socket.deliver(frames)
        }
        guard pool.member(identity) != nil, let message = try? Message.decode(Array(frames.dropFirst())) else { return }
        perform(pool.receive(from: identity, message, address: address, key: key, now: now))
    }

    private func perform(_ actions: [PoolMachine.Action]) {
        for action in actions {
            switch action {
            case let .send(identity, message):
                do {
                    try router.send(frames: [.bytes(identity)] + message.outgoingFrames)
                } catch {
                    perform(pool.lost(identity, reason: "cannot send to it: \(error)"))
                }
            case let .log(event):
                log("\(event)")
            case .free:
                needsPlan = true
                limitsChanged = true
            case let .gone(identity, _):
                routes[identity] = nil
                needsPlan = true
                limitsChanged = true
            }
        }
    }

    /// A job's send, on the loop's thread: a welcome ties its session to the job; a bye lets the worker go.
    private func send(_ frames: [OutgoingFrame], for jobID: Int64) throws {
        try router.send(frames: frames)
        guard frames.count >= 2, case let .bytes(identity) = frames[0], case let .bytes(header) = frames[1],
              let (type, session) = Message.peek(header) else { return }
        if type == .welcome { sessions[session] = jobID }
        if type == .bye { pool.returning(identity, now: now) }
    }

    // MARK: Scheduling

    private func plan() throws {
        needsPlan = false
        let records = try store.jobs(in: [.queued, .running]).filter { !(jobs[$0.id!]?.finishing ?? false) }
        // A worker on its way back from a job (told bye, no hello yet) still counts there, as leaving.
        var held: [Int64: [String]] = [:], returning: [Int64: Set<String>] = [:]
        for member in pool.members {
            switch member.phase {
            case let .lent(job): held[job, default: []].append(member.name)
            case let .returning(_, job):
                held[job, default: []].append(member.name)
                returning[job, default: []].insert(member.name)
            case .idle: break
            }
        }
        let scheduled = records.map { record -> ScheduledJob in
            let id = record.id!
            guard let job = jobs[id] else {
                return ScheduledJob(id: id, priority: record.priority, minWorkers: record.minWorkers,
                                    maxWorkers: record.maxWorkers ?? .max)
            }
            let workers = job.workers.filter { held[id]?.contains($0) ?? false }
                + (returning[id] ?? []).filter { !job.workers.contains($0) }.sorted()
            return ScheduledJob(id: id, priority: record.priority, minWorkers: record.minWorkers, maxWorkers: record.maxWorkers ?? .max,
                                state: .running, workers: workers,
                                releasing: job.releasing.union(returning[id] ?? []).intersection(workers))
        }
        let byID = Dictionary(uniqueKeysWithValues: records.map { ($0.id!, $0) })
        for move in Scheduler.plan(jobs: scheduled, freeWorkers: pool.idle.map(\.name)) {
            switch move {
            case let .start(id, workers):
                guard let record = byID[id] else { continue }
                let job = start(record)
                workers.forEach { lend($0, to: job) }
            case let .assign(worker, id):
                guard let job = jobs[id] else { continue }
                lend(worker, to: job)
            case let .release(worker, id):
                guard let job = jobs[id] else { continue }
                job.releasing.insert(worker)
                job.release(worker)
                log("job \(id): releasing worker \(worker) at its next step boundary")
            }
        }
    }

    /// Gives pool worker `name` to `job`: the job's coordinator gets the worker's hello and welcomes it.
    private func lend(_ name: String, to job: DaemonJob) {
        guard let member = pool.idle.first(where: { $0.name == name }) else { return }
        pool.lend(member.identity, to: job.id)
        routes[member.identity] = job.id
        job.workers.removeAll { $0 == name }
        job.workers.append(name)
        limitsChanged = true
        let identity = ReceivedFrame(member.identity, peerAddress: member.address, userID: member.key)
        job.socket.deliver([identity] + member.hello.encoded().map(ReceivedFrame.init))
        log("job \(job.id): gave it worker \(name)")
    }

    /// Starts a queued job, or one that was running when the daemon last stopped, on a thread of its own.
    private func start(_ record: JobRecord) -> DaemonJob {
        let id = record.id!
        let resume = record.state == .running
        let socket = JobSocket(send: { [loop, unowned self] frames in
            try loop.sync { try self.send(frames, for: id) }
        }, ledger: router.ledger)
        let job = DaemonJob(record: record, socket: socket, resume: resume)
        if record.cancelRequested { job.stop.request() }  // cancelled while the daemon was down
        jobs[id] = job
        if !resume { try? store.markRunning(id, now: now) }
        log("job \(id) (\(record.name)): \(resume ? "continuing from its newest checkpoint" : "started")")
        let runDirectory = store.runDirectory(id)
        let progress = ProgressRecorder(store: store, job: id)
        let topic = String(id)
        let thread = Thread { [self, datasets] in
            let built = { [self] (limit: Int) in
                loop.async { [self] in
                    job.workerConnectionLimit = limit
                    limitsChanged = true
                }
            }
            let result = job.run(runDirectory: runDirectory, datasets: datasets, built: built) { [self] event, fields in
                progress.observe(event, fields)
                metrics.observe(id, event, fields)
                if logEndpoint != nil {
                    let line = EventLog.line(event, fields)
                    loop.async { [self] in publisher?.publish(event, fields, line: line, topic: topic) }
                }
                if event == "worker_failed", case let .string(name)? = fields.first(where: { $0.0 == "worker" })?.1,
                   case let .string(reason)? = fields.first(where: { $0.0 == "reason" })?.1 {
                    loop.async { [self] in workerFailed(name, reason: reason, in: id) }
                }
                if event == "done" || event == "stopped" { loop.async { [self] in jobs[id]?.finishing = true } }
                if event == "worker_left" || event == "worker_lost",
                   case let .string(name)? = fields.first(where: { $0.0 == "worker" })?.1 {
                    loop.async { [self] in departed(name, from: id) }
                }
            }
            loop.async { [self] in ended(id, result) }
        }
        thread.name = "trainerd job \(id)"
        thread.start()
        return job
    }

    /// A worker left a job or was lost by it: if it is alive it says hello to the pool again.
    private func departed(_ name: String, from id: Int64) {
        if let job = jobs[id] {
            job.releasing.remove(name)
            job.workers.removeAll { $0 == name }
        }
        if let member = pool.members.first(where: { $0.name == name && $0.phase == .lent(job: id) }) {
            pool.returning(member.identity, now: now)
        }
        needsPlan = true
    }

    /// A worker reported that it cannot run job `id`; the `workerFailuresToFail`th report ends the job as failed.
    private func workerFailed(_ name: String, reason: String, in id: Int64) {
        guard let job = jobs[id], job.failure == nil else { return }
        job.workerFailures += 1
        log("job \(id): worker \(name) cannot run it (\(job.workerFailures) of \(Self.workerFailuresToFail) such reports fail the job): \(reason)")
        guard job.workerFailures >= Self.workerFailuresToFail else { return }
        job.failure = "its workers reported \(job.workerFailures) times that they cannot run it; the last, \(name), said: \(reason)"
        job.stop.request()
    }

    private func ended(_ id: Int64, _ result: Result<RunSummary, Error>) {
        guard let job = jobs.removeValue(forKey: id) else { return }
        for member in pool.members where member.phase == .lent(job: id) { pool.returning(member.identity, now: now) }
        sessions = sessions.filter { $0.value != id }
        needsPlan = true
        limitsChanged = true
        let cancelled = (try? store.job(id))?.cancelRequested ?? false
        let summary = try? result.get()
        let loss = summary.flatMap { $0.loss.isNaN ? nil : Double($0.loss) }
        if let failure = job.failure {
            end(id, as: .failed, step: summary?.steps, loss: loss, failure: failure)
        } else if let summary, summary.finished {
            end(id, as: .completed, step: summary.steps, loss: loss, accuracy: summary.testAccuracy, weightsSHA256: summary.weightsSHA256)
        } else if cancelled {
            end(id, as: .cancelled, step: summary?.steps, loss: loss, weightsSHA256: summary?.weightsSHA256)
        } else if let summary {
            log("job \(id): stopped at step \(summary.steps) with the daemon; it continues when the daemon starts again")
        } else if case let .failure(error) = result, stopping && job.stop.isRequested {
            log("job \(id): stopped with the daemon (\(error)); it continues when the daemon starts again")
        } else if case let .failure(error) = result {
            end(id, as: .failed, failure: "\(error)")
        }
    }

    /// Ends job `id` as `state`: its event log (and its log-port stream) ends with a `job_end` event, then the store
    /// records the end, so that whoever sees the stored end finds the whole log.
    private func end(_ id: Int64, as state: JobState, step: Int? = nil, loss: Double? = nil, accuracy: Double? = nil,
                     weightsSHA256: String? = nil, failure: String? = nil) {
        var fields: [(String, JSONValue)] = [("job_id", .int(Int(id))), ("state", .string(state.rawValue))]
        if let step { fields.append(("step", .int(step))) }
        if let weightsSHA256 { fields.append(("weights_sha256", .string(weightsSHA256))) }
        if let failure { fields.append(("failure", .string(failure))) }
        (try? EventLog(runDirectory: store.runDirectory(id)))?.emit("job_end", fields)
        metrics.observe(id, "job_end", fields)
        metrics.end(id)
        if let publisher {
            publisher.publish("job_end", fields, topic: String(id))
            endedTopics.append(String(id))
            if endedTopics.count > Self.endedJobsCached { publisher.forget(topic: endedTopics.removeFirst()) }
        }
        do {
            try store.finish(id, as: state, now: now, step: step, loss: loss, accuracy: accuracy, weightsSHA256: weightsSHA256, failure: failure)
            log("job \(id): \(state.rawValue)" + (step.map { " at step \($0)" } ?? "") + (weightsSHA256.map { ", weights_sha256 \($0)" } ?? "")
                + (failure.map { ": \($0)" } ?? ""))
        } catch {
            log("job \(id): its end (\(state.rawValue)) could not be stored: \(error)")
        }
    }
}

/// Writes a job's progress to the store from its events: each step's number and loss at most once a second, and
/// every checkpoint's step.
final class ProgressRecorder: @unchecked Sendable {
    private let store: JobStore
    private let job: Int64
    private var lastWrite = 0.0

    init(store: JobStore, job: Int64) {
        self.store = store
        self.job = job
    }

    /// On the job's thread.
    func observe(_ event: String, _ fields: [(String, JSONValue)]) {
        guard event == "step" || event == "checkpoint", case let .int(step)? = fields.first(where: { $0.0 == "step" })?.1 else { return }
        let now = Date().timeIntervalSince1970
        guard event == "checkpoint" || now - lastWrite >= 1 else { return }
        lastWrite = now
        var loss: Double?
        if case let .number(value)? = fields.first(where: { $0.0 == "loss" })?.1 { loss = value }
        try? store.recordProgress(job, step: step, loss: loss)
    }
}
