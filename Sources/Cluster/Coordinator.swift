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
    /// Warnings about dropped messages logged per peer before the rest are only counted.
    let warningsPerPeer = 20
    private var droppedMessages: [String: Int] = [:]
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

    /// Bounds what `router` accepts from any peer: a frame larger than the model's largest tensor (or the
    /// metadata limit) drops the connection in libzmq (ZMQ_MAXMSGSIZE); a message with more frames than the
    /// protocol allows is read but not kept.
    public func harden(_ router: ZMQSocket) throws {
        router.maximumFrames = 2 + WireProtocol.maximumTensors
        let largestFrame = max(machine.maximumTensorBytes, WireProtocol.maximumMetadata,
                               WireProtocol.headerSize + 8 * WireProtocol.maximumTensors)
        try router.setMaximumMessageSize(Int64(largestFrame))
    }

    private var now: Double { Date().timeIntervalSince1970 }

    public func sums(step: Int, parameters: [Float]) throws -> StepSums {
        let required = hasStarted ? cluster.minWorkers : startWorkers
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

    /// Declares a worker lost at once (its process was seen to exit).
    public func declareLost(name: String, reason: String) {
        try? perform(machine.declareLost(name: name, reason: reason, now: now))
    }

    /// Workers compute; the trainer's model is only evaluated.
    public var computesOnModel: Bool { false }

    public func finish(summary: RunSummary) { sayGoodbye() }

    /// Says bye to every worker and waits (at most `byeTimeout` seconds) for each to answer bye, so that the
    /// messages are delivered before the coordinator's socket closes.
    public func sayGoodbye() {
        var waiting = Set(machine.allPeers)
        for identity in waiting { try? socket.send([identity] + Message(type: .bye, jobID: jobID).encoded()) }
        let deadline = now + byeTimeout
        while !waiting.isEmpty && now < deadline {
            guard let frames = try? socket.receive(timeout: 0.1), let identity = frames.first,
                  let message = try? Message.decode(Array(frames.dropFirst())), message.type == .bye else { continue }
            waiting.remove(identity)
        }
    }

    /// Receives and handles at most one message, then lets the machine check the clock.
    private func receiveOne(timeout: Double) throws {
        for companion in companions { try companion.poll(self) }
        if let frames = try socket.receiveFrames(timeout: timeout, wakingOn: nil), let identity = frames.first {
            try perform(machine.receive(from: identity.bytes, Array(frames.dropFirst()), now: now))
        }
        try perform(machine.tick(now: now))
    }

    /// The step's weights messages (by parameter block), each encoded once for all workers.
    private var encodedWeights: (step: UInt64, frames: [UInt32: [OutgoingFrame]]) = (.max, [:])

    private func encode(_ message: Message) -> [OutgoingFrame] {
        guard message.type == .weights else { return message.outgoingFrames }
        if encodedWeights.step != message.step { encodedWeights = (message.step, [:]) }
        if let frames = encodedWeights.frames[message.block] { return frames }
        let frames = message.outgoingFrames
        encodedWeights.frames[message.block] = frames
        return frames
    }

    private func perform(_ actions: [CoordinatorMachine.Action]) throws {
        for action in actions {
            switch action {
            case let .send(peer, message):
                do {
                    try socket.send(frames: [.bytes(peer)] + encode(message))
                } catch let error as TransportError {
                    // A peer that has gone cannot be reached; its heartbeat timeout declares it lost.
                    log(.sendFailed(type: message.type, to: CoordinatorMachine.peerName(peer), error: "\(error)"))
                }
            case let .log(event):
                log(event)
            }
        }
    }

    /// Emits an event; warnings about dropped messages are limited to `warningsPerPeer` per peer, then counted.
    private func log(_ event: ClusterEvent) {
        if case let .messageDropped(peer, _) = event {
            droppedMessages[peer, default: 0] += 1
            let count = droppedMessages[peer]!
            if count == warningsPerPeer + 1 { events.emit(.droppedMessagesCounted(from: peer)) }
            if count > warningsPerPeer { return }
        }
        events.emit(event)
    }

    /// Messages dropped from each peer (all, including those not logged).
    public var droppedMessageCounts: [String: Int] { droppedMessages }
}
