import Checkpoint
import Foundation
import NN
import Training
import Transport
import Wire

/// What a worker needs to join a job: the config text it was started with, so that the worker builds the same
/// model and data plan. Travels as the welcome message's metadata.
public struct JobDescription: Equatable, Sendable {
    public var yaml: String
    public var overrides: [String]

    public init(yaml: String, overrides: [String]) {
        self.yaml = yaml
        self.overrides = overrides
    }

    /// Identifies the job on the wire: the first 8 bytes of SHA-256 over the config text and overrides.
    public var jobID: UInt64 {
        let bytes = Array((yaml + "\u{0}" + overrides.joined(separator: "\u{0}")).utf8)
        return bytes.withUnsafeBytes(sha256).prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
    }

    public func parse() throws -> JobConfig { try JobConfig.parse(yaml: yaml, source: "the coordinator's config", overrides: overrides) }

    var metadata: [UInt8] { metadataJSON(["config": yaml, "overrides": overrides]) }

    init(metadata: [UInt8]) throws {
        guard let object = try? JSONSerialization.jsonObject(with: Data(metadata)) as? [String: Any],
              let yaml = object["config"] as? String, let overrides = object["overrides"] as? [String] else {
            throw WireError("welcome metadata is not a job description")
        }
        self.init(yaml: yaml, overrides: overrides)
    }
}

func metadataJSON(_ object: [String: Any]) -> [UInt8] {
    [UInt8]((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data())
}

/// The text of an error message's `{"message": …}` metadata.
func errorText(_ message: Message) -> String {
    ((try? JSONSerialization.jsonObject(with: Data(message.metadata))) as? [String: Any])?["message"] as? String
        ?? "no reason given"
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
    let startWorkers: Int
    public let events: EventLog
    /// Seconds `sayGoodbye` waits for the workers' goodbyes.
    let byeTimeout = 5.0
    /// Polled while waiting: a reason to give up (every local worker process died), or nil.
    public var abortReason: () -> String? = { nil }
    /// Called at least once a second while waiting (the log stream serves new monitors, `launch` reaps workers).
    public var whileWaiting: () -> Void = {}
    /// Warnings about dropped messages logged per peer before the rest are only counted.
    let warningsPerPeer = 20
    private var droppedMessages: [String: Int] = [:]
    private var hasStarted = false

    public var jobID: UInt64 { machine.jobID }
    public var cluster: JobConfig.ClusterSection { machine.cluster }
    public init(socket: MessageSocket, job: JobDescription, layout: ParameterLayout, microBatches: Int,
                cluster: JobConfig.ClusterSection, startWorkers: Int? = nil, events: EventLog) {
        self.socket = socket
        machine = CoordinatorMachine(job: job, layout: layout, microBatches: microBatches, cluster: cluster)
        self.startWorkers = max(startWorkers ?? 0, cluster.minWorkers)
        self.events = events
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
        try Trace.span("send_weights", "communication") { try perform(machine.startStep(step, parameters: parameters, now: now)) }
        try Trace.span("wait", "communication") {
            try waitWhile { $0.isStepComplete ? nil : ($0.waitingReason(required: required) ?? "") }
        }
        return Trace.span("reduce", "communication") { machine.finishStep(now: now)! }
    }

    /// Receives, ticks and reports the machine's waiting reason (when it changes, and every 30 s) while `reason`
    /// gives one; "" means busy, not waiting. Fails after `cluster.wait_timeout` s of waiting for workers.
    private func waitWhile(_ reason: (CoordinatorMachine) -> String?) throws {
        var waitingSince: Double?
        var reported: (reason: String, at: Double)?
        while let current = reason(machine) {
            if Trainer.stopRequested && !current.isEmpty { throw CoordinatorError("stopped while waiting for workers") }
            if current.isEmpty {
                waitingSince = nil
            } else {
                let start = waitingSince ?? now
                waitingSince = start
                if reported?.reason != current || now - reported!.at >= 30 {
                    events.emit("waiting", [("reason", .string(current)), ("workers", .int(machine.workerCount)),
                                            ("min_workers", .int(cluster.minWorkers))])
                    reported = (current, now)
                }
                if now - start > cluster.waitTimeout {
                    throw CoordinatorError("\(current) for \(Int(cluster.waitTimeout)) s (cluster.wait_timeout); giving up")
                }
            }
            try receiveOne(timeout: min(0.5, cluster.heartbeatInterval / 2))
        }
    }

    /// Declares a worker lost at once (`launch` saw its process exit).
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
        if let reason = abortReason() { throw CoordinatorError(reason) }
        whileWaiting()
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
                    log("warning", [("message", .string("could not send \(message.type) to \(CoordinatorMachine.peerName(peer)): \(error)"))])
                }
            case let .log(event, fields):
                log(event, fields)
            }
        }
    }

    /// Emits an event; warnings about dropped messages are limited to `warningsPerPeer` per peer, then counted.
    private func log(_ event: String, _ fields: [(String, JSONValue)]) {
        if case let .string(peer)? = fields.first(where: { $0.0 == "dropped_from" })?.1 {
            droppedMessages[peer, default: 0] += 1
            let count = droppedMessages[peer]!
            if count == warningsPerPeer + 1 {
                events.emit("warning", [("message", .string("further messages dropped from \(peer) are counted, not logged"))])
            }
            if count > warningsPerPeer { return }
        }
        events.emit(event, fields)
    }

    /// Messages dropped from each peer (all, including those not logged).
    public var droppedMessageCounts: [String: Int] { droppedMessages }
}

extension ReceivedFrame: FrameBytes {}

extension Message {
    /// The frames to send; float32 tensors go out from their own arrays (zero-copy in libzmq).
    var outgoingFrames: [OutgoingFrame] { encoded(bytes: OutgoingFrame.bytes, float32: OutgoingFrame.floats) }
}

public struct CoordinatorError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
