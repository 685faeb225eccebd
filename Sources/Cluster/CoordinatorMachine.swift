import Foundation
import NN
import Training
import Wire

extension JobConfig.ClusterSection.WireDType {
    /// How tensors of this job travel.
    var tensorType: TensorType { self == .bf16 ? .bfloat16 : .float32 }
}

/// The coordinator's protocol logic as a state machine: events in, actions out, time passed in. It owns no socket
/// and reads no clock, so tests drive it message by message and tick by tick; `Coordinator` is the loop around it.
///
/// Peers say hello and get a welcome; after their first heartbeat (model and data loaded) they are admitted at the
/// start of the next step. A step assigns each worker a contiguous range of the micro-batches, sends it the weights
/// and its range, and completes the gradient tree from the block sums it returns. Which worker computes a
/// micro-batch never changes its bits, so work moves freely:
///
/// - a worker silent for `heartbeat_timeout`, past `step_deadline` with its work, saying bye or failing is lost,
///   and the micro-batches it still owed go to the others (to a newly ready worker when none is left);
/// - a worker still busy `straggler_delay` after its assignment has its micro-batches re-issued to idle workers,
///   and the first result for each micro-batch is used.
///
/// A malformed or unexpected message is logged and dropped and changes nothing.
public struct CoordinatorMachine {
    public enum Action: Equatable {
        case send(peer: [UInt8], Message)
        /// An event for the run's log (`warning`, `worker_joined`, `worker_lost`, `straggler`, …).
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
        var host: String
        /// Set by the worker's first heartbeat after the welcome: its model and data are loaded.
        var ready = false
        var lastHeard: Double
        var lastSent: Double
    }

    /// Micro-batches given to one worker at one time, minus those it has returned.
    struct Task {
        var ranges: [Range<Int>]
        var assigned: Double
        /// Already given to idle workers as well (a straggler's work is re-issued once).
        var reissued = false
    }

    /// The step in flight.
    struct Round {
        var step: Int
        /// The step's weights, one message per parameter tensor in canonical order.
        var weights: [Message]
        var reducer: StepReducer
        var started: Double
        var tasks: [[UInt8]: [Task]] = [:]
        /// Workers that have this step's weights.
        var haveWeights: Set<[UInt8]> = []
        var finished: [[UInt8]: Double] = [:]
        var bytes: [[UInt8]: Int] = [:]
        /// Pieces of gradients per worker and range, until the range's every block and its loss are in.
        var staged: [[UInt8]: [Range<Int>: [[Float]?]]] = [:]
        /// Names of the workers that sent non-finite values, by parameter block (nil: the loss).
        var nonFinite: [Int?: Set<String>] = [:]
        var lost: [String] = []
        var reissued = 0
    }

    public let job: JobDescription
    public let jobID: UInt64
    public let cluster: JobConfig.ClusterSection
    let layout: ParameterLayout
    let microBatches: Int
    var peers: [Peer] = []
    /// Welcomed workers; once ready they get work from the next step.
    var joining: [Peer] = []
    var round: Round?

    public init(job: JobDescription, layout: ParameterLayout, microBatches: Int, cluster: JobConfig.ClusterSection = .init()) {
        self.job = job
        jobID = job.jobID
        self.layout = layout
        self.microBatches = microBatches
        self.cluster = cluster
    }

    public var workerCount: Int { peers.count }
    public var workerNames: [String] { peers.map(\.name) }
    public var readyToJoin: Int { joining.filter(\.ready).count }
    public var isStepComplete: Bool { round?.reducer.isComplete ?? false }
    /// Micro-batches of the step in flight that no live worker is computing (all workers were lost).
    public var hasOrphanedWork: Bool { round.map { !orphaned($0).isEmpty } ?? false }

    /// Bytes a tensor frame from a worker may have: the model's largest parameter block.
    public var maximumTensorBytes: Int { (layout.entries.map(\.count).max() ?? 1) * 4 }

    /// Contiguous, near-equal ranges of 0..<K for `workers` workers (empty ranges for workers beyond K).
    public static func assignments(microBatches: Int, workers: Int) -> [Range<Int>] {
        (0..<workers).map { ($0 * microBatches / workers)..<(($0 + 1) * microBatches / workers) }
    }

    /// Admits ready workers and starts `step` at weights `parameters`.
    public mutating func startStep(_ step: Int, parameters: [Float], now: Double) -> [Action] {
        var actions = admitReadyWorkers()
        var next = Round(step: step,
                         weights: Self.weightGroups(layout).map { group in
                             Message(type: .weights, jobID: jobID, step: UInt64(step), block: UInt32(group.lowerBound),
                                     tensors: group.map { Array(parameters[layout.entries[$0].range]) },
                                     tensorType: cluster.wireDType.tensorType)
                         },
                         reducer: StepReducer(step: UInt64(step), microBatches: microBatches, blockSizes: layout.entries.map(\.count)),
                         started: now)
        let ranges = Self.assignments(microBatches: microBatches, workers: peers.count)
        var perWorker: [[Action]] = []
        for (index, range) in ranges.enumerated() where !range.isEmpty {
            perWorker.append(assign([range], to: peers[index].identity, in: &next, now: now))
        }
        // Round-robin over the workers (every assignment, then every first layer, …), so that the last worker's
        // first layer does not wait behind everyone's whole model.
        for position in 0..<(perWorker.map(\.count).max() ?? 0) {
            actions += perWorker.compactMap { position < $0.count ? $0[position] : nil }
        }
        round = next
        return actions
    }

    /// Tensors smaller than this travel in the message of the tensor before them (a bias with its weight).
    static let smallTensorBytes = 1 << 16

    /// Runs of parameter blocks sent as one weights message each: a tensor of at least `smallTensorBytes` starts a
    /// new message, smaller ones join the previous, so a layer's weight and bias arrive together and the forward
    /// pass can start on the first layer while the rest are on the way, with few messages for small models.
    public static func weightGroups(_ layout: ParameterLayout) -> [Range<Int>] {
        var groups: [Range<Int>] = []
        for (block, entry) in layout.entries.enumerated() {
            if let last = groups.last, 4 * entry.count < smallTensorBytes {
                groups[groups.count - 1] = last.lowerBound..<(block + 1)
            } else {
                groups.append(block..<(block + 1))
            }
        }
        return groups
    }

    /// Admits workers that reported ready.
    public mutating func admitReadyWorkers() -> [Action] {
        var actions: [Action] = []
        for peer in joining where peer.ready {
            peers.append(peer)
            actions.append(.log("worker_joined", [("worker", .string(peer.name)), ("host", .string(peer.host)),
                                                  ("workers", .int(peers.count))]))
        }
        joining.removeAll(where: \.ready)
        return actions
    }

    /// The finished step's gradient and loss sums and its step-event fields; ends the step. `nonFinite` names, per
    /// parameter block (nil: the loss), the workers that sent NaN or infinite values.
    public mutating func finishStep(now: Double) -> StepSums? {
        guard let round, let (gradientSum, lossSum) = round.reducer.reduced() else { return nil }
        self.round = nil
        let seconds = peers.compactMap { peer in round.finished[peer.identity].map { (peer.name, $0 - round.started) } }
        let slowest = seconds.max { $0.1 < $1.1 }
        let fastest = seconds.map(\.1).min() ?? 0
        var fields: [(String, JSONValue)] = [
            ("workers", .int(peers.count)),
            ("worker_s", .object(seconds.map { ($0.0, .number($0.1)) })),
            ("worker_bytes", .object(peers.compactMap { peer in round.bytes[peer.identity].map { (peer.name, .int($0)) } })),
            ("slowest_worker", slowest.map { .string($0.0) } ?? .null),
            ("waited_for_slowest_s", .number((slowest?.1 ?? 0) - fastest)),
        ]
        if !round.lost.isEmpty { fields.append(("lost_workers", .array(round.lost.map { .string($0) }))) }
        if round.reissued > 0 { fields.append(("reissued_micro_batches", .int(round.reissued))) }
        return StepSums(gradientSum: gradientSum, lossSum: lossSum, fields: fields,
                        nonFiniteSources: round.nonFinite.mapValues { $0.sorted() })
    }

    /// Everyone to say bye to at the end.
    public var allPeers: [[UInt8]] { (peers + joining).map(\.identity) }

    /// Handles one received message (`frames` after the sender's identity).
    public mutating func receive<Frame: FrameBytes>(from identity: [UInt8], _ frames: [Frame], now: Double) -> [Action] {
        let name = Self.peerName(identity)
        let message: Message
        do {
            message = try Message.decode(frames, maximumTensorBytes: maximumTensorBytes)
        } catch {
            return [drop(from: name, "\(error)"), refuse(identity, "\(error)")]
        }
        if message.type != .hello && message.jobID != jobID {
            return [drop(from: name, "job id \(String(message.jobID, radix: 16)), expected \(String(jobID, radix: 16))")]
        }
        let known = peers.contains { $0.identity == identity } || joining.contains { $0.identity == identity }
        if known { heard(from: identity, now: now) }
        switch message.type {
        case .hello:
            return welcome(identity, name: name, message, now: now)
        case .gradients:
            guard known else { return rejoin(identity) }
            return accept(gradients: message, from: identity, name: name, now: now)
        case .heartbeat:
            guard known else { return rejoin(identity) }
            if let index = joining.firstIndex(where: { $0.identity == identity }) { joining[index].ready = true }
            return admitIntoOrphanedWork(now: now)
        case .bye:
            return remove(identity, event: "worker_left", reason: "said bye", now: now)
        case .error:
            return remove(identity, event: "worker_lost", reason: "failed: \(errorText(message))", now: now, tellPeer: false)
        case .welcome, .assignment, .weights:
            return [drop(from: name, "a \(message.type) message, which only the coordinator sends")]
        }
    }

    /// Sends due heartbeats, declares silent and overdue workers lost, and re-issues stragglers' work.
    public mutating func tick(now: Double) -> [Action] {
        var actions: [Action] = []
        for peer in peers + joining where now - peer.lastHeard > cluster.heartbeatTimeout {
            actions += remove(peer.identity, event: "worker_lost",
                              reason: "no heartbeat for \(format(now - peer.lastHeard)) s (heartbeat_timeout \(format(cluster.heartbeatTimeout)) s)",
                              now: now)
        }
        for peer in peers {
            guard let round, let tasks = round.tasks[peer.identity], let oldest = tasks.map(\.assigned).min(),
                  now - oldest > cluster.stepDeadline else { continue }
            actions += remove(peer.identity, event: "worker_lost",
                              reason: "no gradients for micro-batches \(describe(tasks.flatMap(\.ranges))) of step \(round.step) within step_deadline \(format(cluster.stepDeadline)) s",
                              now: now)
        }
        actions += reissueStragglers(now: now)
        for index in peers.indices where now - peers[index].lastSent >= cluster.heartbeatInterval {
            actions.append(send(Message(type: .heartbeat, jobID: jobID), to: peers[index].identity, now: now))
        }
        for index in joining.indices where now - joining[index].lastSent >= cluster.heartbeatInterval {
            actions.append(send(Message(type: .heartbeat, jobID: jobID), to: joining[index].identity, now: now))
        }
        return actions
    }

    /// Declares the worker named `name` lost (its process is known to have exited).
    public mutating func declareLost(name: String, reason: String, now: Double) -> [Action] {
        guard let peer = (peers + joining).first(where: { $0.name == name }) else { return [] }
        return remove(peer.identity, event: "worker_lost", reason: reason, now: now)
    }

    /// Why the job cannot go on yet, if it cannot: fewer than `required` workers, or orphaned work and no worker.
    public func waitingReason(required: Int) -> String? {
        let available = peers.count + readyToJoin
        if round == nil && available < required {
            let loading = joining.filter { !$0.ready }.map(\.name)
            return "waiting for workers: \(available) of \(required) (cluster.min_workers) ready"
                + (loading.isEmpty ? "" : "; loading the job: \(loading.joined(separator: ", "))")
        }
        if hasOrphanedWork {
            return "waiting for a worker: every worker of step \(round!.step) was lost"
        }
        return nil
    }

    // MARK: handlers

    private mutating func welcome(_ identity: [UInt8], name: String, _ hello: Message, now: Double) -> [Action] {
        if hello.jobID != 0 && hello.jobID != jobID {
            let reason = "this coordinator runs job \(String(jobID, radix: 16)), not \(String(hello.jobID, radix: 16))"
            return [drop(from: name, reason), refuse(identity, reason)]
        }
        var actions: [Action] = []
        joining.removeAll { $0.identity == identity }  // a repeated hello while joining is answered again
        if peers.contains(where: { $0.identity == identity }) {
            // The worker restarted or reconnected without our noticing: what it owed is lost with its old self.
            actions += remove(identity, event: "worker_lost", reason: "said hello again (restarted or reconnected)",
                              now: now, tellPeer: false)
        }
        let host = (try? JSONSerialization.jsonObject(with: Data(hello.metadata)) as? [String: Any])?["host"] as? String
        joining.append(Peer(identity: identity, name: name, host: host ?? "unknown", lastHeard: now, lastSent: now))
        actions.append(.send(peer: identity, Message(type: .welcome, jobID: jobID, metadata: job.metadata)))
        return actions
    }

    /// Takes a gradients message's pieces for the step in flight. A worker's pieces for one range are staged
    /// until every parameter block and the loss are in; then they are checked together on a copy of the reducer,
    /// so a bad piece changes nothing. A result for micro-batches another worker has already returned (a
    /// re-issued straggler's) is not used.
    private mutating func accept(gradients message: Message, from identity: [UInt8], name: String, now: Double) -> [Action] {
        guard var round else { return [drop(from: name, "gradients while no step is running")] }
        guard message.step == UInt64(round.step) else {
            return [drop(from: name, "gradients for step \(message.step) during step \(round.step)")]
        }
        let range = message.microBatches
        let owned = round.tasks[identity, default: []].flatMap(\.ranges)
        guard !range.isEmpty, range.allSatisfy({ index in owned.contains { $0.contains(index) } }) else {
            return [drop(from: name, "gradients for micro-batches \(range) it was not assigned")]
        }
        let blockCount = layout.entries.count + 1
        let first = Int(message.block)
        guard !message.tensors.isEmpty, first + message.tensors.count <= blockCount else {
            return [drop(from: name, "\(message.tensors.count) tensors from block \(first), expected blocks within 0..<\(blockCount) (\(layout.entries.count) parameter blocks, then the loss)")]
        }
        var slots = round.staged[identity, default: [:]][range] ?? Array(repeating: nil, count: blockCount)
        for (offset, values) in message.tensors.enumerated() {
            let block = first + offset
            let expected = block < layout.entries.count ? layout.entries[block].count : 1
            guard values.count == expected else {
                return [drop(from: name, "block \(block) has \(values.count) values, expected \(expected)")]
            }
            guard slots[block] == nil else {
                return [drop(from: name, "duplicate block \(block) for micro-batches \(range) of step \(round.step)")]
            }
            slots[block] = values
        }
        round.bytes[identity, default: 0] += message.tensors.reduce(0) { $0 + message.tensorType.bytesPerValue * $1.count }
        guard slots.allSatisfy({ $0 != nil }) else {
            round.staged[identity, default: [:]][range] = slots
            self.round = round
            return []
        }
        round.staged[identity]?[range] = nil
        if !round.reducer.received.contains(where: { $0.overlaps(range) }) {
            var reducer = round.reducer
            do {
                for block in 0..<layout.entries.count { try reducer.add(block: block, range: range, values: slots[block]!) }
                try reducer.addLoss(range: range, sum: slots[layout.entries.count]![0])
            } catch {
                self.round = round
                return [drop(from: name, "\(error)")]
            }
            for entry in reducer.nonFinite.dropFirst(round.reducer.nonFinite.count) {
                round.nonFinite[entry.block, default: []].insert(name)
            }
            round.reducer = reducer
        }
        var tasks = round.tasks[identity, default: []]
        for index in tasks.indices { tasks[index].ranges = tasks[index].ranges.flatMap { subtract(range, from: $0) } }
        tasks.removeAll { $0.ranges.isEmpty }
        round.tasks[identity] = tasks.isEmpty ? nil : tasks
        if tasks.isEmpty { round.finished[identity] = now }
        self.round = round
        return []
    }

    /// Removes a peer; the micro-batches it still owed go to the remaining workers.
    private mutating func remove(_ identity: [UInt8], event: String, reason: String, now: Double,
                                 tellPeer: Bool = true) -> [Action] {
        let name = Self.peerName(identity)
        if let index = joining.firstIndex(where: { $0.identity == identity }) {
            let peer = joining.remove(at: index)
            if event == "worker_left" {
                return [.log(event, [("worker", .string(name)), ("host", .string(peer.host)), ("workers", .int(peers.count))])]
            }
            return [.log("warning", [("message", .string("worker \(name) on \(peer.host) did not join: \(reason)")),
                                     ("worker", .string(name)), ("host", .string(peer.host))])]
        }
        guard let index = peers.firstIndex(where: { $0.identity == identity }) else { return [] }
        let peer = peers.remove(at: index)
        var actions: [Action] = [
            .log(event, [("worker", .string(name)), ("host", .string(peer.host)), ("reason", .string(reason)),
                         ("step", round.map { .int($0.step) } ?? .null), ("workers", .int(peers.count))]),
        ]
        // If it is alive after all (stuck, cut off), it learns it must say hello again.
        if event == "worker_lost" && tellPeer { actions += rejoin(identity, reason: "declared lost: \(reason)") }
        guard var round else { return actions }
        round.tasks[identity] = nil
        round.finished[identity] = nil
        round.staged[identity] = nil
        round.haveWeights.remove(identity)  // if it comes back in this step, it needs them again
        round.lost.append(name)
        actions += distribute(orphaned(round), to: peers.map(\.identity), in: &round, now: now)
        self.round = round
        return actions
    }

    /// When every worker of the step was lost, a worker that becomes ready takes the work at once.
    private mutating func admitIntoOrphanedWork(now: Double) -> [Action] {
        guard var round, peers.isEmpty, readyToJoin > 0, !orphaned(round).isEmpty else { return [] }
        let actions = admitReadyWorkers()
        let work = distribute(orphaned(round), to: peers.map(\.identity), in: &round, now: now)
        self.round = round
        return actions + work
    }

    /// Gives work still outstanding `straggler_delay` after its assignment to idle workers as well.
    private mutating func reissueStragglers(now: Double) -> [Action] {
        guard cluster.stragglerDelay > 0, var round else { return [] }
        var actions: [Action] = []
        for peer in peers {
            for (taskIndex, task) in round.tasks[peer.identity, default: []].enumerated()
            where !task.reissued && now - task.assigned > cluster.stragglerDelay {
                let idle = peers.map(\.identity).filter { round.tasks[$0] == nil }
                guard !idle.isEmpty else { break }
                round.tasks[peer.identity]![taskIndex].reissued = true
                let work = task.ranges.flatMap { subtracting(round.reducer.received, from: $0) }
                round.reissued += work.reduce(0) { $0 + $1.count }
                actions.append(.log("straggler", [
                    ("worker", .string(peer.name)), ("step", .int(round.step)), ("micro_batches", .string(describe(work))),
                    ("reissued_to", .array(idle.prefix(work.reduce(0) { $0 + $1.count }).map { .string(Self.peerName($0)) })),
                ]))
                actions += distribute(work, to: idle, in: &round, now: now)
            }
        }
        self.round = round
        return actions
    }

    // MARK: work distribution

    /// Micro-batches of `round` that are neither received nor held by a live worker.
    private func orphaned(_ round: Round) -> [Range<Int>] {
        var open = [Bool](repeating: true, count: microBatches)
        for range in round.reducer.received + round.tasks.values.flatMap({ $0.flatMap(\.ranges) }) {
            for index in range { open[index] = false }
        }
        return runs(open)
    }

    /// Splits `work` into near-equal contiguous shares for `workers` and assigns them.
    private mutating func distribute(_ work: [Range<Int>], to workers: [[UInt8]], in round: inout Round, now: Double) -> [Action] {
        let indices = work.flatMap { Array($0) }
        guard !indices.isEmpty, !workers.isEmpty else { return [] }
        var actions: [Action] = []
        for (worker, share) in zip(workers, Self.assignments(microBatches: indices.count, workers: workers.count)) where !share.isEmpty {
            var open = [Bool](repeating: false, count: microBatches)
            for index in indices[share] { open[index] = true }
            actions += assign(runs(open), to: worker, in: &round, now: now)
        }
        return actions
    }

    /// Sends `worker` one assignment per range, then (once a step) the weights a tensor at a time, first layer
    /// first: the worker starts the forward pass as soon as the first layer's tensors are in.
    private mutating func assign(_ ranges: [Range<Int>], to worker: [UInt8], in round: inout Round, now: Double) -> [Action] {
        var actions: [Action] = []
        for range in ranges {
            actions.append(send(Message(type: .assignment, jobID: jobID, step: UInt64(round.step), microBatches: range), to: worker, now: now))
        }
        if !round.haveWeights.contains(worker) {
            actions += round.weights.map { send($0, to: worker, now: now) }
            round.haveWeights.insert(worker)
        }
        round.tasks[worker, default: []].append(Task(ranges: ranges, assigned: now))
        round.finished[worker] = nil
        return actions
    }

    private mutating func send(_ message: Message, to identity: [UInt8], now: Double) -> Action {
        if let index = peers.firstIndex(where: { $0.identity == identity }) { peers[index].lastSent = now }
        if let index = joining.firstIndex(where: { $0.identity == identity }) { joining[index].lastSent = now }
        return .send(peer: identity, message)
    }

    private mutating func heard(from identity: [UInt8], now: Double) {
        if let index = peers.firstIndex(where: { $0.identity == identity }) { peers[index].lastHeard = now }
        if let index = joining.firstIndex(where: { $0.identity == identity }) { joining[index].lastHeard = now }
    }

    // MARK: messages to peers

    private func drop(from name: String, _ reason: String) -> Action {
        .log("warning", [("message", .string("dropped a message from \(name): \(reason)")), ("dropped_from", .string(name))])
    }

    private func refuse(_ identity: [UInt8], _ reason: String) -> Action {
        .send(peer: identity, Message(type: .error, jobID: jobID, metadata: metadataJSON(["message": reason])))
    }

    /// Tells a peer this coordinator does not know (it restarted, or declared the peer lost) to say hello again.
    private func rejoin(_ identity: [UInt8], reason: String = "unknown worker (the coordinator restarted?)") -> [Action] {
        [.send(peer: identity, Message(type: .error, jobID: jobID, metadata: metadataJSON(["message": reason, "rejoin": true])))]
    }

    static func peerName(_ identity: [UInt8]) -> String {
        let text = String(decoding: identity, as: UTF8.self)
        return text.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value < 0x7F }) && !text.isEmpty
            ? text : identity.map { String(format: "%02x", $0) }.joined()
    }
}

/// The true runs of `flags` as ranges.
func runs(_ flags: [Bool]) -> [Range<Int>] {
    var result: [Range<Int>] = []
    var start: Int?
    for (index, flag) in (flags + [false]).enumerated() {
        if flag, start == nil { start = index }
        if !flag, let first = start {
            result.append(first..<index)
            start = nil
        }
    }
    return result
}

/// `range` without the indices in `removed`.
func subtracting(_ removed: [Range<Int>], from range: Range<Int>) -> [Range<Int>] {
    removed.reduce([range]) { pieces, cut in pieces.flatMap { subtract(cut, from: $0) } }
}

func subtract(_ cut: Range<Int>, from range: Range<Int>) -> [Range<Int>] {
    guard cut.overlaps(range) else { return [range] }
    return [range.lowerBound..<max(range.lowerBound, cut.lowerBound), min(range.upperBound, cut.upperBound)..<range.upperBound]
        .filter { !$0.isEmpty }
}

func describe(_ ranges: [Range<Int>]) -> String {
    ranges.map { $0.count == 1 ? "\($0.lowerBound)" : "\($0.lowerBound)–\($0.upperBound - 1)" }.joined(separator: ", ")
}

func format(_ seconds: Double) -> String { String(format: "%.3g", seconds) }
