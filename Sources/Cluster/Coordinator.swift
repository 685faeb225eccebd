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

/// The tensors of a message for the flat buffer `values` cut by `layout`, one per parameter tensor.
func parameterBlocks(_ values: [Float], _ layout: ParameterLayout) -> [[Float]] {
    layout.entries.map { Array(values[$0.range]) }
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
/// each worker a contiguous range of the step's micro-batches, sends it the weights, and completes the gradient
/// tree from the block sums it returns.
///
/// Used as the `Trainer`'s gradient source, so clipping, the optimizer, evaluation, checkpoints and the event log
/// are exactly those of `train`, and the weights are the same bits.
public final class Coordinator: GradientSource {
    let socket: MessageSocket
    var machine: CoordinatorMachine
    let minimumWorkers: Int
    public let events: EventLog
    /// Seconds to wait for a step's gradients before failing with the names of the silent workers.
    let stepTimeout: Double
    /// Seconds `sayGoodbye` waits for the workers' goodbyes.
    let byeTimeout = 5.0
    /// Polled while waiting: a reason to give up (a local worker process died), or nil.
    public var abortReason: () -> String? = { nil }
    /// Called at least once a second while waiting for workers (the log stream serves new monitors).
    public var whileWaiting: () -> Void = {}

    public var jobID: UInt64 { machine.jobID }

    public init(socket: MessageSocket, job: JobDescription, layout: ParameterLayout, microBatches: Int,
                minimumWorkers: Int, events: EventLog, stepTimeout: Double = 600) {
        self.socket = socket
        machine = CoordinatorMachine(job: job, layout: layout, microBatches: microBatches)
        self.minimumWorkers = minimumWorkers
        self.events = events
        self.stepTimeout = stepTimeout
    }

    private var now: Double { Date().timeIntervalSince1970 }

    public func sums(step: Int, parameters: [Float]) throws -> (gradientSum: [Float], lossSum: Float, fields: [(String, JSONValue)]) {
        while machine.workerCount + machine.readyToJoin < minimumWorkers {
            if Trainer.stopRequested { throw CoordinatorError("stopped while waiting for workers") }
            try receiveOne(timeout: 1)
        }
        try perform(machine.startStep(step, parameters: parameters, now: now))
        let started = now
        while !machine.isStepComplete {
            try receiveOne(timeout: 1)
            if now - started > stepTimeout {
                throw CoordinatorError("step \(step): no gradients from \(machine.silentWorkers.joined(separator: ", ")) within \(Int(stepTimeout)) s")
            }
        }
        return machine.finishStep(now: now)!
    }

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

    /// Receives and handles at most one message.
    private func receiveOne(timeout: Double) throws {
        if let reason = abortReason() { throw CoordinatorError(reason) }
        whileWaiting()
        guard let frames = try socket.receive(timeout: timeout), let identity = frames.first else { return }
        try perform(machine.receive(from: identity, Array(frames.dropFirst()), now: now))
    }

    /// The step's weights message, encoded once for all workers (the machine sends one per step).
    private var encodedWeights: (step: UInt64, frames: [[UInt8]])?

    private func encode(_ message: Message) -> [[UInt8]] {
        guard message.type == .weights else { return message.encoded() }
        if let encodedWeights, encodedWeights.step == message.step { return encodedWeights.frames }
        let frames = message.encoded()
        encodedWeights = (message.step, frames)
        return frames
    }

    private func perform(_ actions: [CoordinatorMachine.Action]) throws {
        for action in actions {
            switch action {
            case let .send(peer, message):
                do {
                    try socket.send([peer] + encode(message))
                } catch let error as TransportError where message.type == .error {
                    // A refused peer that has already gone needs no answer.
                    events.emit("warning", [("message", .string("could not answer \(CoordinatorMachine.peerName(peer)): \(error)"))])
                }
            case let .log(event, fields):
                events.emit(event, fields)
            }
        }
    }
}

public struct CoordinatorError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
