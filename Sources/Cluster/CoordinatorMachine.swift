import Foundation
import NN
import Training
import Wire

/// The coordinator's protocol logic as a state machine: events in, actions out, time passed in. It owns no socket
/// and reads no clock, so tests drive it message by message; `Coordinator` is the thin loop around it.
///
/// Peers say hello and get a welcome; after their first heartbeat (model and data loaded) they are admitted at
/// the start of the next step. A step assigns each admitted worker a contiguous range of the micro-batches, sends
/// it the weights and its range, and completes the gradient tree from the block sums it returns. A malformed or
/// unexpected message is logged and dropped and changes nothing.
public struct CoordinatorMachine {
    public enum Action: Equatable {
        case send(peer: [UInt8], Message)
        /// An event for the run's log (`warning`, `worker_joined`).
        case log(String, [(String, JSONValue)])

        public static func == (a: Action, b: Action) -> Bool {
            switch (a, b) {
            case let (.send(p, m), .send(q, n)): return p == q && m == n
            case let (.log(e, f), .log(g, h)): return e == g && JSONValue.object(f) == JSONValue.object(h)
            default: return false
            }
        }
    }

    struct Peer {
        var identity: [UInt8]
        var name: String
        /// Set by the worker's first heartbeat after the welcome: its model and data are loaded.
        var ready = false
    }

    /// The step in flight: who owns each micro-batch, the gradients received so far, and per-worker accounting.
    struct Round {
        var step: Int
        var owners: [Int: [UInt8]]
        var reducer: StepReducer
        var started: Double
        var outstanding: [[UInt8]: Int] = [:]
        var finished: [[UInt8]: Double] = [:]
        var bytes: [[UInt8]: Int] = [:]
    }

    public let job: JobDescription
    public let jobID: UInt64
    let layout: ParameterLayout
    let microBatches: Int
    var peers: [Peer] = []
    /// Welcomed workers; once ready they get work from the next step.
    var joining: [Peer] = []
    var round: Round?

    public init(job: JobDescription, layout: ParameterLayout, microBatches: Int) {
        self.job = job
        jobID = job.jobID
        self.layout = layout
        self.microBatches = microBatches
    }

    public var workerCount: Int { peers.count }
    public var readyToJoin: Int { joining.filter(\.ready).count }
    public var isStepComplete: Bool { round?.reducer.isComplete ?? false }
    /// Workers that still owe gradients for the step in flight.
    public var silentWorkers: [String] { peers.filter { round?.outstanding[$0.identity, default: 0] ?? 0 > 0 }.map(\.name) }

    /// Contiguous, near-equal ranges of 0..<K for `workers` workers (empty ranges for workers beyond K).
    public static func assignments(microBatches: Int, workers: Int) -> [Range<Int>] {
        (0..<workers).map { ($0 * microBatches / workers)..<(($0 + 1) * microBatches / workers) }
    }

    /// Admits ready workers and starts `step` at weights `parameters`.
    public mutating func startStep(_ step: Int, parameters: [Float], now: Double) -> [Action] {
        var actions = admitReadyWorkers()
        let ranges = Self.assignments(microBatches: microBatches, workers: peers.count)
        let weights = Message(type: .weights, jobID: jobID, step: UInt64(step), tensors: parameterBlocks(parameters, layout))
        var next = Round(step: step, owners: [:],
                         reducer: StepReducer(step: UInt64(step), microBatches: microBatches, blockSizes: layout.entries.map(\.count)),
                         started: now)
        for (peer, range) in zip(peers, ranges) where !range.isEmpty {
            actions.append(.send(peer: peer.identity, weights))
            actions.append(.send(peer: peer.identity, Message(type: .assignment, jobID: jobID, step: UInt64(step), microBatches: range)))
            for index in range { next.owners[index] = peer.identity }
            next.outstanding[peer.identity] = range.count
        }
        round = next
        return actions
    }

    /// Admits workers that reported ready (between steps).
    public mutating func admitReadyWorkers() -> [Action] {
        var actions: [Action] = []
        for peer in joining where peer.ready {
            peers.append(peer)
            actions.append(.log("worker_joined", [("worker", .string(peer.name)), ("workers", .int(peers.count))]))
        }
        joining.removeAll(where: \.ready)
        return actions
    }

    /// The finished step's gradient and loss sums and its step-event fields; ends the step.
    public mutating func finishStep(now: Double) -> (gradientSum: [Float], lossSum: Float, fields: [(String, JSONValue)])? {
        guard let round, let (gradientSum, lossSum) = round.reducer.reduced() else { return nil }
        self.round = nil
        let seconds = peers.compactMap { peer in round.finished[peer.identity].map { (peer.name, $0 - round.started) } }
        let slowest = seconds.max { $0.1 < $1.1 }
        let fastest = seconds.map(\.1).min() ?? 0
        return (gradientSum, lossSum, [
            ("workers", .int(peers.count)),
            ("worker_s", .object(seconds.map { ($0.0, .number($0.1)) })),
            ("worker_bytes", .object(peers.compactMap { peer in round.bytes[peer.identity].map { (peer.name, .int($0)) } })),
            ("slowest_worker", slowest.map { .string($0.0) } ?? .null),
            ("waited_for_slowest_s", .number((slowest?.1 ?? 0) - fastest)),
        ])
    }

    /// Everyone to say bye to at the end.
    public var allPeers: [[UInt8]] { (peers + joining).map(\.identity) }

    /// Handles one received message (`frames` after the sender's identity). Throws only when the job cannot go on.
    public mutating func receive(from identity: [UInt8], _ frames: [[UInt8]], now: Double) throws -> [Action] {
        let name = Self.peerName(identity)
        let message: Message
        do {
            message = try Message.decode(frames, maximumTensorBytes: (layout.entries.map(\.count).max() ?? 1) * 4)
        } catch {
            return [drop(from: name, "\(error)"), refuse(identity, "\(error)")]
        }
        if message.type != .hello && message.jobID != jobID {
            return [drop(from: name, "job id \(String(message.jobID, radix: 16)), expected \(String(jobID, radix: 16))")]
        }
        switch message.type {
        case .hello:
            return welcome(identity, name: name, message)
        case .gradients:
            return accept(gradients: message, from: identity, name: name, now: now)
        case .heartbeat:
            if let index = joining.firstIndex(where: { $0.identity == identity }) { joining[index].ready = true }
            return []
        case .bye:
            if peers.contains(where: { $0.identity == identity }) {
                throw CoordinatorError("worker \(name) left during the run; the job cannot continue without it")
            }
            guard joining.contains(where: { $0.identity == identity }) else { return [] }
            joining.removeAll { $0.identity == identity }
            return [.log("worker_left", [("worker", .string(name)), ("workers", .int(peers.count))])]
        case .error:
            let reason = "worker \(name) failed: \(errorText(message))"
            if peers.contains(where: { $0.identity == identity }) { throw CoordinatorError(reason) }
            // A worker that could not join (its dataset is missing, say) leaves the job as it was.
            joining.removeAll { $0.identity == identity }
            return [.log("warning", [("message", .string(reason))])]
        case .welcome, .assignment, .weights:
            return [drop(from: name, "a \(message.type) message, which only the coordinator sends")]
        }
    }

    private mutating func welcome(_ identity: [UInt8], name: String, _ hello: Message) -> [Action] {
        if hello.jobID != 0 && hello.jobID != jobID {
            let reason = "this coordinator runs job \(String(jobID, radix: 16)), not \(String(hello.jobID, radix: 16))"
            return [drop(from: name, reason), refuse(identity, reason)]
        }
        guard !peers.contains(where: { $0.identity == identity }), !joining.contains(where: { $0.identity == identity }) else {
            return [drop(from: name, "a second hello")]
        }
        joining.append(Peer(identity: identity, name: name))
        return [.send(peer: identity, Message(type: .welcome, jobID: jobID, metadata: job.metadata))]
    }

    /// Adds a gradients message to the step in flight: every tensor is checked on a copy of the reducer first,
    /// so a bad message changes nothing.
    private mutating func accept(gradients message: Message, from identity: [UInt8], name: String, now: Double) -> [Action] {
        guard var round else { return [drop(from: name, "gradients while no step is running")] }
        guard message.step == UInt64(round.step) else {
            return [drop(from: name, "gradients for step \(message.step) during step \(round.step)")]
        }
        guard !message.microBatches.isEmpty, message.microBatches.allSatisfy({ round.owners[$0] == identity }) else {
            return [drop(from: name, "gradients for micro-batches \(message.microBatches) it was not assigned")]
        }
        guard message.tensors.count == layout.entries.count + 1, message.tensors.last!.count == 1 else {
            return [drop(from: name, "\(message.tensors.count) tensors, expected \(layout.entries.count) parameter blocks and the loss")]
        }
        do {
            for (block, values) in message.tensors.dropLast().enumerated() {
                try round.reducer.add(block: block, range: message.microBatches, values: values)
            }
            try round.reducer.addLoss(range: message.microBatches, sum: message.tensors.last![0])
        } catch {
            return [drop(from: name, "\(error)")]
        }
        round.bytes[identity, default: 0] += message.tensors.reduce(0) { $0 + 4 * $1.count }
        round.outstanding[identity, default: 0] -= message.microBatches.count
        if round.outstanding[identity] == 0 { round.finished[identity] = now }
        self.round = round
        return []
    }

    private func drop(from name: String, _ reason: String) -> Action {
        .log("warning", [("message", .string("dropped a message from \(name): \(reason)"))])
    }

    private func refuse(_ identity: [UInt8], _ reason: String) -> Action {
        .send(peer: identity, Message(type: .error, jobID: jobID, metadata: metadataJSON(["message": reason])))
    }

    static func peerName(_ identity: [UInt8]) -> String {
        let text = String(decoding: identity, as: UTF8.self)
        return text.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value < 0x7F }) && !text.isEmpty
            ? text : identity.map { String(format: "%02x", $0) }.joined()
    }
}
