import Foundation
import NN
import Training
import Transport
import Wire

/// Work a coordinator does while it waits for messages, at least once a second: serve the log stream's new
/// subscribers, report refused peers, supervise local worker processes.
public protocol CoordinatorCompanion: AnyObject {
    /// Called from the coordinator's loop; may declare workers lost. Throwing ends the job with that error.
    func poll(_ coordinator: Coordinator) throws
}

/// The coordinator's side of a step, wired to a socket: a thin loop around `CoordinatorMachine`, which assigns
/// each worker a contiguous range of the step's micro-batches, sends it the weights, completes the gradient tree
/// from the block sums it returns, and moves the work of lost and slow workers to the others.
///
/// Used as the `Trainer`'s gradient source, so clipping, the optimizer, evaluation, checkpoints and the event log
/// are exactly those of `train`, and the weights are the same bits.
///
/// It never waits on one peer: sends do not block, and a worker whose queue is full, for which more than
/// `queueLimit` bytes would be queued, or which has not taken what it was sent within `heartbeat_timeout`, is lost;
/// a peer that is not a worker gets nothing once all peers together have `totalQueueLimit` bytes queued.
/// Warnings that peers cause are bounded by `WarningLimiter`.
public final class Coordinator: GradientSource {
    let socket: MessageSocket
    var machine: CoordinatorMachine
    /// Workers to wait for before the first step (then `cluster.min_workers` before each).
    public let startWorkers: Int
    public let events: EventLog
    let context: RunContext
    /// Seconds `sayGoodbye` waits for the workers' goodbyes.
    let byeTimeout = 5.0
    /// Polled while waiting, in order.
    public var companions: [CoordinatorCompanion] = []
    private var warnings = WarningLimiter()
    /// Messages dropped from peers (all, including those not logged).
    public private(set) var droppedMessages = 0
    private var hasStarted = false

    public var jobID: UInt64 { machine.jobID }
    public var cluster: JobConfig.ClusterSection { machine.cluster }

    public init(socket: MessageSocket, job: JobDescription, layout: ParameterLayout, microBatches: Int,
                cluster: JobConfig.ClusterSection, startWorkers: Int? = nil, events: EventLog, context: RunContext = RunContext()) {
        self.socket = socket
        machine = CoordinatorMachine(job: job, layout: layout, microBatches: microBatches, cluster: cluster)
        self.startWorkers = max(startWorkers ?? 0, cluster.minWorkers)
        self.events = events
        self.context = context
    }

    /// The bounds of the workers' socket for a model of `layout`: a frame larger than its largest tensor (or the
    /// metadata limit, or the largest header) drops the sender's connection in libzmq before it is buffered; at most
    /// `sendQueue` messages wait for one peer.
    public static func socketLimits(_ layout: ParameterLayout) -> SocketLimits {
        SocketLimits(maximumFrame: max(CoordinatorMachine.maximumTensorBytes(layout), WireProtocol.maximumMetadata,
                                       WireProtocol.headerSize + 8 * WireProtocol.maximumTensors),
                     sendQueue: sendQueue)
    }

    /// Messages queued for one peer before sends to it fail.
    public static let sendQueue: Int32 = 1000

    /// Bytes a connection that has not been welcomed may have sent that were not delivered (`ConnectionGuard`): a
    /// hello needs a few hundred.
    public static let connectionLimit = 256 << 10
    /// The same for all such connections together.
    public static let totalConnectionLimit = 64 << 20
    /// The same for a welcomed worker: its gradients for two steps' micro-batches (a step's, and a straggler's late
    /// ones) and the kernel's receive buffer (up to 32 MiB).
    public var workerConnectionLimit: Int { 2 * (machine.microBatches + 1) * (machine.modelBytes + (64 << 10)) + (33 << 20) }
    /// Cuts connections that send more than their limit without it being delivered; welcomed workers get
    /// `workerConnectionLimit`.
    public var connectionGuard: ConnectionGuard?
    private var raisedLimits: Set<[UInt8]> = []
    /// Identities gone from the job whose raised limit stays until then: what a worker sent before it left or
    /// reconnected (in the kernels' buffers, up to megabytes) still arrives on its old connection.
    private var limitsLowered: [[UInt8]: Double] = [:]
    /// Workers a send found gone (EHOSTUNREACH), in the order found. Each is declared lost only once a receive has
    /// found nothing more queued: what the worker sent before its connection closed (a bye) is read first.
    private var closedConnections: [[UInt8]] = []

    /// Bytes that may be queued for one peer: two copies of the weights (a step's, and the next one's while the
    /// last piece of the first is on its way) and 1 MiB of welcome and small messages.
    public var queueLimit: Int { 2 * machine.modelBytes + (1 << 20) }
    /// Bytes that may be queued for all peers together before peers that are not workers get nothing more.
    public var totalQueueLimit: Int { (machine.workerCount + 1) * queueLimit + (16 << 20) }

    private var now: Double { Date().timeIntervalSince1970 }

    public func sums(step: Int, parameters: [Float]) throws -> StepSums {
        let required = hasStarted ? cluster.minWorkers : startWorkers
        try performReleases()
        try waitWhile { $0.waitingReason(required: required) }
        hasStarted = true
        try context.trace.span("send_weights", "communication") { try perform(machine.startStep(step, parameters: parameters, now: now)) }
        try context.trace.span("wait", "communication") {
            try waitWhile { $0.isStepComplete ? nil : ($0.waitingReason(required: required) ?? "") }
        }
        return context.trace.span("reduce", "communication") { machine.finishStep(now: now)! }
    }

    /// Receives, ticks and reports the machine's waiting reason (when it changes, and every 30 s) while `reason`
    /// gives one; "" means busy, not waiting. Fails after `cluster.wait_timeout` s of waiting for workers.
    private func waitWhile(_ reason: (CoordinatorMachine) -> String?) throws {
        var waitingSince: Double?
        var reported: (reason: String, at: Double)?
        while let current = reason(machine) {
            if context.stop.isRequested && !current.isEmpty { throw ClusterError("stopped while waiting for workers") }
            if current.isEmpty {
                waitingSince = nil
            } else {
                let start = waitingSince ?? now
                waitingSince = start
                if reported?.reason != current || now - reported!.at >= 30 {
                    events.emit(.waiting(reason: current, workers: machine.workerCount, minWorkers: cluster.minWorkers))
                    reported = (current, now)
                }
                if now - start > cluster.waitTimeout {
                    throw ClusterError("\(current) for \(Int(cluster.waitTimeout)) s (cluster.wait_timeout); giving up")
                }
            }
            try receiveOne(timeout: min(0.5, cluster.heartbeatInterval / 2))
        }
    }

    /// Names of workers to let go at the next step boundary (`release`); any thread may add to it.
    private let releases = LockedNames()

    /// Lets worker `name` go at the job's next step boundary: it is told bye and leaves the job (a daemon moves
    /// a pool worker this way). Thread-safe.
    public func release(_ name: String) { releases.insert(name) }

    private func performReleases() throws {
        guard machine.isBetweenSteps else { return }
        for name in releases.takeAll() {
            try perform(machine.release(name: name, reason: "released to the pool", now: now))
        }
    }

    /// Declares a worker lost at once (its process was seen to exit).
    public func declareLost(name: String, reason: String) {
        try? perform(machine.declareLost(name: name, reason: reason, now: now))
    }

    /// Workers compute; the trainer's model is only evaluated.
    public var computesOnModel: Bool { false }

    public func finish(summary: RunSummary) { sayGoodbye() }

    /// Says bye to every worker and waits (at most `byeTimeout` seconds) for each to answer bye, so that the
    /// messages are delivered before the coordinator's socket closes. A worker that reconnected meanwhile (it
    /// thought the coordinator lost during a long evaluation) says hello on a new connection with its session: it
    /// gets its bye there.
    public func sayGoodbye() {
        var waiting = Set<UInt64>()
        for case let .send(identity, bye) in machine.goodbyes {
            waiting.insert(bye.session)
            try? socket.send([identity] + bye.encoded())
        }
        let deadline = now + byeTimeout
        while !waiting.isEmpty && now < deadline {
            guard let frames = try? socket.receive(timeout: 0.1), let identity = frames.first,
                  let message = try? Message.decode(Array(frames.dropFirst())), waiting.contains(message.session) else { continue }
            if message.type == .bye {
                waiting.remove(message.session)
            } else if message.type == .hello {
                try? socket.send([identity] + Message(type: .bye, jobID: jobID, session: message.session).encoded())
            }
        }
    }

    /// Receives and handles at most one message, then lets the machine check the clock and drops workers that have
    /// not taken what they were sent.
    private func receiveOne(timeout: Double) throws {
        for companion in companions { try companion.poll(self) }
        try performReleases()
        if let frames = try socket.receiveFrames(timeout: closedConnections.isEmpty ? timeout : 0, wakingOn: nil) {
            if let identity = frames.first {
                try perform(machine.receive(from: identity.bytes, Array(frames.dropFirst()), address: identity.peerAddress ?? "unknown",
                                            key: identity.userID, now: now))
            }
        } else {
            let closed = closedConnections
            closedConnections = []
            for identity in closed {
                try perform(machine.undeliverable(to: identity, reason: "its connection closed", muting: false, now: now))
            }
        }
        try perform(machine.tick(now: now))
        reportCuts()
        for identity in machine.identities {
            let queue = socket.queue(to: identity)
            guard let oldest = queue.oldest, now - oldest > cluster.heartbeatTimeout else { continue }
            try perform(machine.undeliverable(to: identity, reason: "it has not taken \(queue.bytes) bytes sent \(format(now - oldest)) s ago (heartbeat_timeout \(format(cluster.heartbeatTimeout)) s)",
                                              muting: true, now: now))
        }
        for summary in warnings.summaries(now: now) { events.emit(summary) }
    }

    /// The tensor frames of the step's weights messages (by parameter block), each encoded once for all workers;
    /// each worker's copy has a header of its own (its session).
    private var encodedWeights: (step: UInt64, frames: [UInt32: ArraySlice<OutgoingFrame>]) = (.max, [:])

    private func encode(_ message: Message) -> [OutgoingFrame] {
        guard message.type == .weights else { return message.outgoingFrames }
        if encodedWeights.step != message.step { encodedWeights = (message.step, [:]) }
        if let tensors = encodedWeights.frames[message.block] { return [.bytes(message.header)] + tensors }
        let frames = message.outgoingFrames
        encodedWeights.frames[message.block] = frames.dropFirst()
        return frames
    }

    private func perform(_ actions: [CoordinatorMachine.Action]) throws {
        for action in actions {
            switch action {
            case let .send(peer, message):
                try send(message, to: peer)
            case let .log(event):
                log(event)
            }
        }
    }

    /// Logs the connections the guard cut, and gives workers welcomed since the last call their raised limit
    /// (and takes it from those gone for `heartbeat_timeout`).
    private func reportCuts() {
        guard let connectionGuard else { return }
        for cut in connectionGuard.takeCuts() {
            let who = cut.identity.map(machine.describePeer) ?? "a peer"
            log(.connectionCut(address: cut.address, peer: who, unread: cut.unread, limit: cut.limit, overTotal: cut.overTotal))
        }
        let current = Set(machine.identities), now = now
        for identity in current.subtracting(raisedLimits) { connectionGuard.setLimit(workerConnectionLimit, forPeer: identity) }
        for identity in raisedLimits.subtracting(current) where limitsLowered[identity] == nil {
            limitsLowered[identity] = now + cluster.heartbeatTimeout
        }
        raisedLimits.formUnion(current)
        guard !limitsLowered.isEmpty else { return }
        for (identity, time) in limitsLowered where current.contains(identity) || time <= now {
            limitsLowered[identity] = nil
            guard !current.contains(identity) else { continue }
            connectionGuard.setLimit(nil, forPeer: identity)
            raisedLimits.remove(identity)
        }
    }

    /// Hands a message to the transport without waiting; a peer that cannot take it is dropped.
    private func send(_ message: Message, to peer: [UInt8]) throws {
        guard !machine.isMuted(peer) else { return }
        let frames = [OutgoingFrame.bytes(peer)] + encode(message)
        let bytes = frames.reduce(0) { $0 + $1.count }
        let queued = socket.queue(to: peer).bytes
        if queued + bytes > queueLimit || (!machine.isMember(peer) && socket.queuedBytes + bytes > totalQueueLimit) {
            let limit = queued + bytes > queueLimit ? "its limit of \(queueLimit)" : "the limit of \(totalQueueLimit) for all peers"
            return try perform(machine.undeliverable(to: peer, reason: "\(queued) bytes are queued for it and \(bytes) more would pass \(limit)",
                                                     muting: true, now: now))
        }
        do {
            try socket.send(frames: frames)
        } catch let error as TransportError where error.code == EAGAIN {
            try perform(machine.undeliverable(to: peer, reason: "its queue is full (\(Self.sendQueue) messages it has not taken)",
                                              muting: true, now: now))
        } catch let error as TransportError where error.code == EHOSTUNREACH {
            if machine.identities.contains(peer) && !closedConnections.contains(peer) { closedConnections.append(peer) }
        } catch let error as TransportError {
            log(.sendFailed(type: message.type, to: machine.describePeer(peer), error: "\(error)"))
        }
    }

    /// Emits an event; warnings that peers cause are bounded by `warnings`.
    private func log(_ event: ClusterEvent) {
        if case .messageDropped = event { droppedMessages += 1 }
        if let source = event.warningSource, !warnings.admit(source, now: now) { return }
        events.emit(event)
    }
}

/// A set of names behind a lock, taken whole.
final class LockedNames: @unchecked Sendable {
    private let lock = NSLock()
    private var names: [String] = []

    func insert(_ name: String) {
        lock.lock()
        if !names.contains(name) { names.append(name) }
        lock.unlock()
    }

    func takeAll() -> [String] {
        lock.lock()
        defer { lock.unlock() }
        let taken = names
        names = []
        return taken
    }
}
