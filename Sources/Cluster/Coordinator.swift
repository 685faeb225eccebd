import COpenSSL
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
        var digest = [UInt8](repeating: 0, count: Int(SHA256_DIGEST_LENGTH))
        _ = SHA256(bytes, bytes.count, &digest)
        return digest.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
    }

    public func parse() throws -> JobConfig { try JobConfig.parse(yaml: yaml, source: "the coordinator's config", overrides: overrides) }

    var metadata: [UInt8] {
        let object: [String: Any] = ["config": yaml, "overrides": overrides]
        return [UInt8]((try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data())
    }

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

/// The coordinator's side of a step: assigns each worker a contiguous range of the step's micro-batches, sends
/// it the weights, and completes the gradient tree from the block sums it returns (`StepReducer`).
///
/// Used as the `Trainer`'s gradient source, so clipping, the optimizer, evaluation, checkpoints and the event log
/// are exactly those of `train`, and the weights are the same bits. Messages are handled one at a time by small
/// handlers; a malformed or unexpected message is logged and dropped and changes nothing.
public final class Coordinator: GradientSource {
    struct Peer {
        var identity: [UInt8]
        var name: String
        /// Set by the worker's first heartbeat after the welcome: its model and data are loaded.
        var ready = false
    }

    let socket: MessageSocket
    let job: JobDescription
    public let jobID: UInt64
    let layout: ParameterLayout
    let microBatches: Int
    let minimumWorkers: Int
    public let events: EventLog
    /// Seconds to wait for a step's gradients before failing with the names of the silent workers.
    let stepTimeout: Double
    var peers: [Peer] = []
    /// Welcomed workers; once ready they get work from the next step.
    var joining: [Peer] = []
    /// Polled while waiting: a reason to give up (a local worker process died), or nil.
    public var abortReason: () -> String? = { nil }
    /// The step in flight: who owns each micro-batch, the gradients received so far, and per-worker accounting.
    struct Round {
        var step: Int
        var owners: [Int: [UInt8]]
        var reducer: StepReducer
        var started = Date()
        var outstanding: [[UInt8]: Int] = [:]
        var finished: [[UInt8]: Date] = [:]
        var bytes: [[UInt8]: Int] = [:]
    }

    var round: Round?

    public init(socket: MessageSocket, job: JobDescription, layout: ParameterLayout, microBatches: Int,
                minimumWorkers: Int, events: EventLog, stepTimeout: Double = 600) {
        self.socket = socket
        self.job = job
        jobID = job.jobID
        self.layout = layout
        self.microBatches = microBatches
        self.minimumWorkers = minimumWorkers
        self.events = events
        self.stepTimeout = stepTimeout
    }

    /// Contiguous, near-equal ranges of 0..<K for `workers` workers (empty ranges for workers beyond K).
    public static func assignments(microBatches: Int, workers: Int) -> [Range<Int>] {
        (0..<workers).map { ($0 * microBatches / workers)..<(($0 + 1) * microBatches / workers) }
    }

    public func sums(step: Int, parameters: [Float]) throws -> (gradientSum: [Float], lossSum: Float, fields: [(String, JSONValue)]) {
        try admitJoiners()
        while peers.count < minimumWorkers {
            if Trainer.stopRequested { throw CoordinatorError("stopped while waiting for workers") }
            try receiveOne(timeout: 1)
            try admitJoiners()
        }
        let ranges = Coordinator.assignments(microBatches: microBatches, workers: peers.count)
        let weights = Message(type: .weights, jobID: jobID, step: UInt64(step), tensors: parameterBlocks(parameters, layout))
            .encoded()
        var owners: [Int: [UInt8]] = [:]
        for (peer, range) in zip(peers, ranges) where !range.isEmpty {
            try socket.send([peer.identity] + weights)
            try socket.send([peer.identity] + Message(type: .assignment, jobID: jobID, step: UInt64(step), microBatches: range).encoded())
            for index in range { owners[index] = peer.identity }
        }
        round = Round(step: step, owners: owners,
                      reducer: StepReducer(step: UInt64(step), microBatches: microBatches, blockSizes: layout.entries.map(\.count)))
        for (peer, range) in zip(peers, ranges) where !range.isEmpty { round!.outstanding[peer.identity] = range.count }
        defer { round = nil }
        while !round!.reducer.isComplete {
            try receiveOne(timeout: 1)
            if Date().timeIntervalSince(round!.started) > stepTimeout {
                let silent = peers.filter { round!.outstanding[$0.identity, default: 0] > 0 }.map(\.name)
                throw CoordinatorError("step \(step): no gradients from \(silent.joined(separator: ", ")) within \(Int(stepTimeout)) s")
            }
        }
        let (gradientSum, lossSum) = round!.reducer.reduced()!
        return (gradientSum, lossSum, roundFields(round!))
    }

    /// Per-worker seconds from assignment to its last gradients, bytes received, and the wait for the slowest.
    private func roundFields(_ round: Round) -> [(String, JSONValue)] {
        let seconds = peers.compactMap { peer in round.finished[peer.identity].map { (peer.name, $0.timeIntervalSince(round.started)) } }
        let slowest = seconds.max { $0.1 < $1.1 }
        let fastest = seconds.map(\.1).min() ?? 0
        return [
            ("workers", .int(peers.count)),
            ("worker_s", .object(seconds.map { ($0.0, .number($0.1)) })),
            ("worker_bytes", .object(peers.compactMap { peer in round.bytes[peer.identity].map { (peer.name, .int($0)) } })),
            ("slowest_worker", slowest.map { .string($0.0) } ?? .null),
            ("waited_for_slowest_s", .number((slowest?.1 ?? 0) - fastest)),
        ]
    }

    public func finish(summary: RunSummary) { sayGoodbye() }

    /// Says bye to every worker and waits (at most `byeTimeout` seconds) for each to answer bye, so that the
    /// messages are delivered before the coordinator's socket closes.
    public func sayGoodbye() {
        var waiting = Set((peers + joining).map(\.identity))
        for identity in waiting { try? socket.send([identity] + Message(type: .bye, jobID: jobID).encoded()) }
        let deadline = Date().addingTimeInterval(byeTimeout)
        while !waiting.isEmpty && Date() < deadline {
            guard let frames = try? socket.receive(timeout: 0.1), let identity = frames.first,
                  let message = try? Message.decode(Array(frames.dropFirst())), message.type == .bye else { continue }
            waiting.remove(identity)
        }
    }

    /// Seconds `finish` waits for the workers' goodbyes.
    let byeTimeout = 5.0

    private func admitJoiners() throws {
        for peer in joining where peer.ready {
            peers.append(peer)
            events.emit("worker_joined", [("worker", .string(peer.name)), ("workers", .int(peers.count))])
        }
        joining.removeAll(where: \.ready)
    }

    /// Receives and handles at most one message.
    private func receiveOne(timeout: Double) throws {
        if let reason = abortReason() { throw CoordinatorError(reason) }
        guard let frames = try socket.receive(timeout: timeout), let identity = frames.first else { return }
        let name = peerName(identity)
        let message: Message
        do {
            message = try Message.decode(Array(frames.dropFirst()), maximumTensorBytes: (layout.entries.map(\.count).max() ?? 1) * 4)
        } catch {
            drop(from: name, "\(error)")
            try? socket.send([identity] + Message(type: .error, jobID: jobID, metadata: metadataJSON(["message": "\(error)"])).encoded())
            return
        }
        if message.type != .hello && message.jobID != jobID {
            drop(from: name, "job id \(String(message.jobID, radix: 16)), expected \(String(jobID, radix: 16))")
            return
        }
        switch message.type {
        case .hello:
            try welcome(identity, name: name, message)
        case .gradients:
            accept(gradients: message, from: identity, name: name)
        case .bye:
            if peers.contains(where: { $0.identity == identity }) {
                throw CoordinatorError("worker \(name) left during the run; the job cannot continue without it")
            }
            joining.removeAll { $0.identity == identity }
        case .error:
            let text = (try? JSONSerialization.jsonObject(with: Data(message.metadata)) as? [String: Any])?["message"] as? String
            let reason = "worker \(name) failed: \(text ?? "no reason given")"
            if peers.contains(where: { $0.identity == identity }) { throw CoordinatorError(reason) }
            // A worker that could not join (its dataset is missing, say) leaves the job as it was.
            joining.removeAll { $0.identity == identity }
            events.emit("warning", [("message", .string(reason))])
        case .heartbeat:
            if let index = joining.firstIndex(where: { $0.identity == identity }) { joining[index].ready = true }
        case .welcome, .assignment, .weights:
            drop(from: name, "a \(message.type) message, which only the coordinator sends")
        }
    }

    /// Adds a gradients message to the step in flight: every tensor is checked on a copy of the reducer first,
    /// so a bad message changes nothing.
    private func accept(gradients message: Message, from identity: [UInt8], name: String) {
        guard let round else { return drop(from: name, "gradients while no step is running") }
        guard message.step == UInt64(round.step) else {
            return drop(from: name, "gradients for step \(message.step) during step \(round.step)")
        }
        guard !message.microBatches.isEmpty, message.microBatches.allSatisfy({ round.owners[$0] == identity }) else {
            return drop(from: name, "gradients for micro-batches \(message.microBatches) it was not assigned")
        }
        guard message.tensors.count == layout.entries.count + 1, message.tensors.last!.count == 1 else {
            return drop(from: name, "\(message.tensors.count) tensors, expected \(layout.entries.count) parameter blocks and the loss")
        }
        var trial = round.reducer
        do {
            for (block, values) in message.tensors.dropLast().enumerated() {
                try trial.add(block: block, range: message.microBatches, values: values)
            }
            try trial.addLoss(range: message.microBatches, sum: message.tensors.last![0])
        } catch {
            return drop(from: name, "\(error)")
        }
        self.round!.reducer = trial
        self.round!.bytes[identity, default: 0] += message.tensors.reduce(0) { $0 + 4 * $1.count }
        self.round!.outstanding[identity, default: 0] -= message.microBatches.count
        if self.round!.outstanding[identity] == 0 { self.round!.finished[identity] = Date() }
    }

    private func welcome(_ identity: [UInt8], name: String, _ hello: Message) throws {
        if hello.jobID != 0 && hello.jobID != jobID {
            let reason = "this coordinator runs job \(String(jobID, radix: 16)), not \(String(hello.jobID, radix: 16))"
            drop(from: name, reason)
            try? socket.send([identity] + Message(type: .error, jobID: jobID, metadata: metadataJSON(["message": reason])).encoded())
            return
        }
        guard !peers.contains(where: { $0.identity == identity }), !joining.contains(where: { $0.identity == identity }) else {
            return drop(from: name, "a second hello")
        }
        try socket.send([identity] + Message(type: .welcome, jobID: jobID, metadata: job.metadata).encoded())
        joining.append(Peer(identity: identity, name: name))
    }

    private func drop(from name: String, _ reason: String) {
        events.emit("warning", [("message", .string("dropped a message from \(name): \(reason)"))])
    }

    private func peerName(_ identity: [UInt8]) -> String {
        String(decoding: identity, as: UTF8.self).unicodeScalars.allSatisfy { $0.value >= 0x20 && $0.value < 0x7F }
            ? String(decoding: identity, as: UTF8.self) : identity.map { String(format: "%02x", $0) }.joined()
    }
}

public struct CoordinatorError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
