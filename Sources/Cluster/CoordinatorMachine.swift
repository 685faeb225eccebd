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
/// A worker is the connection that joined: each join gets a random session, which every later message of the
/// worker carries; a message under a worker's identity with another session, and a hello under a taken name, count
/// for nothing (see `welcome`). A peer that does not take what it is sent is dropped (`undeliverable`).
///
/// A malformed or unexpected message is logged and dropped and changes nothing.
public struct CoordinatorMachine {
    public enum Action: Equatable {
        case send(peer: [UInt8], Message)
        case log(ClusterEvent)
    }

    /// Micro-batches given to one worker at one time, minus those it has returned.
    struct Task: Equatable {
        var ranges: [Range<Int>]
        var assigned: Double
        /// Already given to idle workers as well (a straggler's work is re-issued once).
        var reissued = false
    }

    /// One worker as the coordinator knows it: who it is, where it is in the job, and what it owes.
    struct WorkerRecord {
        enum Phase: Equatable {
            /// Welcomed; loading the job's model and data.
            case loading
            /// Loaded (its first heartbeat after the welcome came): admitted at the start of the next step.
            case ready
            /// In the job, owing nothing in the step in flight; `finished` is when it returned its last result.
            case idle(finished: Double?)
            /// In the job, owing the micro-batches of `tasks`.
            case working([Task])
        }

        /// The transport's identity of its connection (a ZeroMQ routing id), never logged.
        let identity: [UInt8]
        let name: String
        let host: String
        /// The connection's remote address, for warnings.
        let address: String
        /// The join this record belongs to: the header session of every message from and to it.
        let session: UInt64
        var phase: Phase
        var lastHeard: Double
        var lastSent: Double
        /// Gradient bytes received from it in the step in flight.
        var bytes = 0
        /// Whether it has the step in flight's weights.
        var hasWeights = false
        /// Pieces of gradients per range of the step in flight, until the range's every block and its loss are in.
        var staged: [Range<Int>: [[Float]?]] = [:]

        var isMember: Bool {
            switch phase {
            case .idle, .working: return true
            case .loading, .ready: return false
            }
        }

        var tasks: [Task] {
            if case let .working(tasks) = phase { return tasks }
            return []
        }

        /// Starts a step: nothing owed, sent or received yet.
        mutating func reset() {
            phase = .idle(finished: nil)
            bytes = 0
            hasWeights = false
            staged = [:]
        }
    }

    /// How a worker leaves the job.
    enum Departure {
        /// It said bye.
        case left(String)
        /// It fell silent, missed the deadline, failed, or said hello again.
        case lost(String)
    }

    /// The step in flight.
    struct Round {
        var step: Int
        /// The step's weights, one message per run of parameter tensors (`weightGroups`).
        var weights: [Message]
        var reducer: StepReducer
        var started: Double
        /// Names of the workers that sent non-finite values, by parameter block (nil: the loss).
        var nonFinite: [Int?: Set<String>] = [:]
        var lost: [String] = []
        var reissued = 0
    }

    public let job: JobDescription
    public let jobID: UInt64
    public let cluster: JobConfig.ClusterSection
    let layout: ParameterLayout
    public let microBatches: Int
    /// Every worker: the members in the order they were admitted, then the welcomed ones in the order they came.
    var workers: [WorkerRecord] = []
    var round: Round?
    /// Issues each join's session (random and never 0, so that it cannot be guessed by another peer).
    let newSession: () -> UInt64
    /// With `security`: the CURVE key that first joined under each worker name; the name stays with that key.
    var nameKeys: [String: String] = [:]
    /// Identities of peers dropped because they did not take what they were sent; what they send is ignored,
    /// silently (a reconnecting worker comes back on a new connection, under a new identity).
    var muted: Set<[UInt8]> = []
    /// Muted identities kept at most.
    static let mutedLimit = 4096

    public init(job: JobDescription, layout: ParameterLayout, microBatches: Int, cluster: JobConfig.ClusterSection = .init(),
                newSession: @escaping () -> UInt64 = { UInt64.random(in: 1...UInt64.max) }) {
        self.job = job
        jobID = job.jobID
        self.layout = layout
        self.microBatches = microBatches
        self.cluster = cluster
        self.newSession = newSession
    }

    var members: [WorkerRecord] { workers.filter(\.isMember) }
    public var workerCount: Int { members.count }
    public var workerNames: [String] { members.map(\.name) }
    public var readyToJoin: Int { workers.filter { $0.phase == .ready }.count }
    public var isStepComplete: Bool { round?.reducer.isComplete ?? false }
    /// Micro-batches of the step in flight that no live worker is computing (all workers were lost).
    public var hasOrphanedWork: Bool { round.map { !orphaned($0).isEmpty } ?? false }

    /// Bytes a tensor frame from a worker may have: the model's largest parameter block.
    public var maximumTensorBytes: Int { Self.maximumTensorBytes(layout) }

    public static func maximumTensorBytes(_ layout: ParameterLayout) -> Int { (layout.entries.map(\.count).max() ?? 1) * 4 }

    /// Bytes of the model's weights (float32).
    public var modelBytes: Int { layout.totalCount * 4 }

    public func isMember(_ identity: [UInt8]) -> Bool { workers.contains { $0.identity == identity && $0.isMember } }
    public func isMuted(_ identity: [UInt8]) -> Bool { muted.contains(identity) }
    /// The identities of every worker, joined or joining.
    public var identities: [[UInt8]] { workers.map(\.identity) }

    /// Contiguous, near-equal ranges of 0..<K for `workers` workers (empty ranges for workers beyond K).
    public static func assignments(microBatches: Int, workers: Int) -> [Range<Int>] {
        (0..<workers).map { ($0 * microBatches / workers)..<(($0 + 1) * microBatches / workers) }
    }

    /// Admits ready workers and starts `step` at weights `parameters`.
    public mutating func startStep(_ step: Int, parameters: [Float], now: Double) -> [Action] {
        var actions = admitReadyWorkers()
        round = Round(step: step,
                      weights: Self.weightGroups(layout).map { group in
                          Message(type: .weights, jobID: jobID, step: UInt64(step), block: UInt32(group.lowerBound),
                                  tensors: group.map { Array(parameters[layout.entries[$0].range]) },
                                  tensorType: cluster.wireDType.tensorType)
                      },
                      reducer: StepReducer(step: UInt64(step), microBatches: microBatches, blockSizes: layout.entries.map(\.count)),
                      started: now)
        for index in workers.indices where workers[index].isMember { workers[index].reset() }
        let memberIdentities = members.map(\.identity)
        let ranges = Self.assignments(microBatches: microBatches, workers: memberIdentities.count)
        var perWorker: [[Action]] = []
        for (identity, range) in zip(memberIdentities, ranges) where !range.isEmpty {
            perWorker.append(assign([range], to: identity, now: now))
        }
        // Round-robin over the workers (every assignment, then every first layer, …), so that the last worker's
        // first layer does not wait behind everyone's whole model.
        for position in 0..<(perWorker.map(\.count).max() ?? 0) {
            actions += perWorker.compactMap { position < $0.count ? $0[position] : nil }
        }
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

    /// Admits workers that reported ready, after the members, in the order they came.
    public mutating func admitReadyWorkers() -> [Action] {
        var actions: [Action] = []
        while let index = workers.firstIndex(where: { $0.phase == .ready }) {
            var record = workers.remove(at: index)
            record.phase = .idle(finished: nil)
            workers.insert(record, at: workers.lastIndex(where: \.isMember).map { $0 + 1 } ?? 0)
            actions.append(.log(.workerJoined(worker: record.name, host: record.host, workers: workerCount)))
        }
        return actions
    }

    /// The finished step's gradient and loss sums and its step-event fields; ends the step. `nonFinite` names, per
    /// parameter block (nil: the loss), the workers that sent NaN or infinite values.
    public mutating func finishStep(now: Double) -> StepSums? {
        guard let round, let (gradientSum, lossSum) = round.reducer.reduced() else { return nil }
        self.round = nil
        let seconds = members.compactMap { worker -> (String, Double)? in
            guard case let .idle(finished?) = worker.phase else { return nil }
            return (worker.name, finished - round.started)
        }
        let slowest = seconds.max { $0.1 < $1.1 }
        let fastest = seconds.map(\.1).min() ?? 0
        var fields: [(String, JSONValue)] = [
            ("workers", .int(workerCount)),
            ("worker_s", .object(seconds.map { ($0.0, .number($0.1)) })),
            ("worker_bytes", .object(members.filter { $0.bytes > 0 }.map { ($0.name, .int($0.bytes)) })),
            ("slowest_worker", slowest.map { .string($0.0) } ?? .null),
            ("waited_for_slowest_s", .number((slowest?.1 ?? 0) - fastest)),
        ]
        if !round.lost.isEmpty { fields.append(("lost_workers", .array(round.lost.map { .string($0) }))) }
        if round.reissued > 0 { fields.append(("reissued_micro_batches", .int(round.reissued))) }
        return StepSums(gradientSum: gradientSum, lossSum: lossSum, fields: fields,
                        nonFiniteSources: round.nonFinite.mapValues { $0.sorted() })
    }

    /// The bye to send every worker at the end.
    public var goodbyes: [Action] {
        workers.map { .send(peer: $0.identity, Message(type: .bye, jobID: jobID, session: $0.session)) }
    }

    /// Handles one received message (`frames` after the sender's identity) from the connection at `address`,
    /// authenticated as CURVE public key `key` (with `security`).
    public mutating func receive<Frame: FrameBytes>(from identity: [UInt8], _ frames: [Frame], address: String = "unknown",
                                                    key: String? = nil, now: Double) -> [Action] {
        let index = workers.firstIndex { $0.identity == identity }
        let name = index.map { workers[$0].name } ?? address
        func drop(_ reason: String) -> Action { .log(.messageDropped(from: name, address: address, reason: reason)) }
        // Its loss was logged with the reason; what it sends now is ignored without a word each.
        if muted.contains(identity) { return [] }
        let message: Message
        do {
            message = try Message.decode(frames, maximumTensorBytes: maximumTensorBytes)
        } catch {
            return [drop("\(error)"), refuse(identity, "\(error)")]
        }
        if message.type != .hello && message.jobID != jobID {
            return [drop("job id \(String(message.jobID, radix: 16)), expected \(String(jobID, radix: 16))")]
        }
        if let index, message.type != .hello, message.session != workers[index].session {
            return [drop("\(message.type) of another session than \(name)'s")]
        }
        if let index { workers[index].lastHeard = now }
        switch message.type {
        case .hello:
            return welcome(identity, message, address: address, key: key, now: now)
        case .gradients:
            guard let index else { return rejoin(identity) }
            return accept(gradients: message, from: index, now: now)
        case .heartbeat:
            guard let index else { return rejoin(identity) }
            if workers[index].phase == .loading { workers[index].phase = .ready }
            return admitIntoOrphanedWork(now: now)
        case .bye:
            return remove(identity, .left("said bye"), now: now)
        case .error:
            let reason = (try? message.payload(Refusal.self).reason) ?? "no reason given"
            let reported: [Action] = index.map { [.log(.workerFailed(worker: workers[$0].name, host: workers[$0].host, reason: reason))] } ?? []
            return reported + remove(identity, .lost("failed: \(reason)"), now: now, tellPeer: false)
        case .welcome, .assignment, .weights, .pooled:
            return [drop("a \(message.type) message, which only the coordinator sends")]
        }
    }

    /// The transport could not take a message for `identity`: its connection closed, or it has not taken what it
    /// was sent (its queue is full). The worker is lost; a peer that does not read is not heard again.
    public mutating func undeliverable(to identity: [UInt8], reason: String, muting: Bool, now: Double) -> [Action] {
        if muting {
            if muted.count >= Self.mutedLimit { muted.remove(muted.first!) }
            muted.insert(identity)
        }
        return remove(identity, .lost(reason), now: now, tellPeer: false)
    }

    /// Sends due heartbeats, declares silent and overdue workers lost, and re-issues stragglers' work.
    public mutating func tick(now: Double) -> [Action] {
        var actions: [Action] = []
        for worker in workers where now - worker.lastHeard > cluster.heartbeatTimeout {
            actions += remove(worker.identity, .lost("no heartbeat for \(format(now - worker.lastHeard)) s (heartbeat_timeout \(format(cluster.heartbeatTimeout)) s)"),
                              now: now)
        }
        if let round {
            for worker in members {
                guard let oldest = worker.tasks.map(\.assigned).min(), now - oldest > cluster.stepDeadline else { continue }
                actions += remove(worker.identity, .lost("no gradients for micro-batches \(describe(worker.tasks.flatMap(\.ranges))) of step \(round.step) within step_deadline \(format(cluster.stepDeadline)) s"),
                                  now: now)
            }
        }
        actions += reissueStragglers(now: now)
        for index in workers.indices where now - workers[index].lastSent >= cluster.heartbeatInterval {
            actions.append(send(Message(type: .heartbeat, jobID: jobID), to: index, now: now))
        }
        return actions
    }

    /// Declares the worker named `name` lost (its process is known to have exited).
    /// Lets worker `name` go between steps: it is told bye (a daemon's pool worker goes back to the pool) and
    /// leaves as if it had said bye. Nothing happens during a step or for a name not in the job.
    public mutating func release(name: String, reason: String, now: Double) -> [Action] {
        guard round == nil, let worker = workers.first(where: { $0.name == name }) else { return [] }
        return [.send(peer: worker.identity, Message(type: .bye, jobID: jobID, session: worker.session))]
            + remove(worker.identity, .left(reason), now: now)
    }

    public var isBetweenSteps: Bool { round == nil }

    public mutating func declareLost(name: String, reason: String, now: Double) -> [Action] {
        guard let worker = workers.first(where: { $0.name == name }) else { return [] }
        return remove(worker.identity, .lost(reason), now: now)
    }

    /// Why the job cannot go on yet, if it cannot: fewer than `required` workers, or orphaned work and no worker.
    public func waitingReason(required: Int) -> String? {
        let available = workerCount + readyToJoin
        if round == nil && available < required {
            let loading = workers.filter { $0.phase == .loading }.map(\.name)
            return "waiting for workers: \(available) of \(required) (cluster.min_workers) ready"
                + (loading.isEmpty ? "" : "; loading the job: \(loading.joined(separator: ", "))")
        }
        if let round, hasOrphanedWork {
            return "waiting for a worker: every worker of step \(round.step) was lost"
        }
        return nil
    }

    // MARK: handlers

    /// Admits a hello: a new session for the connection, the welcome with the job. A name belongs to one connected
    /// worker: a hello under a name another connection holds is refused (the worker may try again: the name frees
    /// when that connection is lost), unless it carries the holder's session (the same worker, reconnected). With
    /// `security`, a name stays with the CURVE key that first joined under it.
    private mutating func welcome(_ identity: [UInt8], _ message: Message, address: String, key: String?, now: Double) -> [Action] {
        // `Message.decode` checked the payload.
        let hello = try! message.payload(Hello.self)
        func refused(_ reason: String, rejoin: Bool = false) -> [Action] {
            [.log(.messageDropped(from: address, address: address, reason: "hello as \(hello.name) refused: \(reason)")),
             .send(peer: identity, Message(Refusal(reason, rejoin: rejoin), jobID: jobID))]
        }
        if message.jobID != 0 && message.jobID != jobID {
            return refused("this coordinator runs job \(String(jobID, radix: 16)), not \(String(message.jobID, radix: 16))")
        }
        if let key, let owner = nameKeys[hello.name], owner != key {
            return refused("the worker name \(hello.name) belongs to another CURVE key; start this worker with another --name")
        }
        var actions: [Action] = []
        if let holder = workers.first(where: { $0.name == hello.name && $0.identity != identity }) {
            guard message.session != 0 && message.session == holder.session else {
                return refused("the worker name \(hello.name) is taken by a connected worker on \(holder.host); "
                               + "it frees when that connection is lost, or start this worker with another --name", rejoin: true)
            }
            actions += remove(holder.identity, .lost("reconnected on a new connection"), now: now, tellPeer: false)
        }
        if let index = workers.firstIndex(where: { $0.identity == identity }) {
            if workers[index].isMember {
                // The worker restarted its join without our noticing: what it owed is lost with its old self.
                actions += remove(identity, .lost("said hello again"), now: now, tellPeer: false)
            } else {
                workers.remove(at: index)  // a repeated hello while joining is answered again
            }
        }
        if let key { nameKeys[hello.name] = key }
        let session = newSession()
        workers.append(WorkerRecord(identity: identity, name: hello.name, host: hello.host, address: address, session: session,
                                    phase: .loading, lastHeard: now, lastSent: now))
        actions.append(.send(peer: identity, Message(type: .welcome, jobID: jobID, session: session, metadata: job.welcome.encoded())))
        return actions
    }

    /// Takes a gradients message's pieces for the step in flight. A worker's pieces for one range are staged
    /// until every parameter block and the loss are in; then they are checked together on a copy of the reducer,
    /// so a bad piece changes nothing. A result for micro-batches another worker has already returned (a
    /// re-issued straggler's) is not used.
    private mutating func accept(gradients message: Message, from index: Int, now: Double) -> [Action] {
        var worker = workers[index]
        func drop(_ reason: String) -> [Action] { [.log(.messageDropped(from: worker.name, address: worker.address, reason: reason))] }
        guard var round else { return drop("gradients while no step is running") }
        guard message.step == UInt64(round.step) else {
            return drop("gradients for step \(message.step) during step \(round.step)")
        }
        let range = message.microBatches
        let owned = worker.tasks.flatMap(\.ranges)
        guard !range.isEmpty, range.allSatisfy({ index in owned.contains { $0.contains(index) } }) else {
            return drop("gradients for micro-batches \(range) it was not assigned")
        }
        let blockCount = layout.entries.count + 1
        let first = Int(message.block)
        guard !message.tensors.isEmpty, first + message.tensors.count <= blockCount else {
            return drop("\(message.tensors.count) tensors from block \(first), expected blocks within 0..<\(blockCount) (\(layout.entries.count) parameter blocks, then the loss)")
        }
        var slots = worker.staged[range] ?? Array(repeating: nil, count: blockCount)
        for (offset, values) in message.tensors.enumerated() {
            let block = first + offset
            let expected = block < layout.entries.count ? layout.entries[block].count : 1
            guard values.count == expected else { return drop("block \(block) has \(values.count) values, expected \(expected)") }
            guard slots[block] == nil else { return drop("duplicate block \(block) for micro-batches \(range) of step \(round.step)") }
            slots[block] = values
        }
        worker.bytes += message.tensors.reduce(0) { $0 + message.tensorType.bytesPerValue * $1.count }
        defer { workers[index] = worker }
        guard slots.allSatisfy({ $0 != nil }) else {
            worker.staged[range] = slots
            return []
        }
        worker.staged[range] = nil
        if !round.reducer.received.contains(where: { $0.overlaps(range) }) {
            var reducer = round.reducer
            do {
                for block in 0..<layout.entries.count { try reducer.add(block: block, range: range, values: slots[block]!) }
                try reducer.addLoss(range: range, sum: slots[layout.entries.count]![0])
            } catch {
                return drop("\(error)")
            }
            for entry in reducer.nonFinite.dropFirst(round.reducer.nonFinite.count) {
                round.nonFinite[entry.block, default: []].insert(worker.name)
            }
            round.reducer = reducer
            self.round = round
        }
        var tasks = worker.tasks
        for task in tasks.indices { tasks[task].ranges = tasks[task].ranges.flatMap { subtract(range, from: $0) } }
        tasks.removeAll { $0.ranges.isEmpty }
        worker.phase = tasks.isEmpty ? .idle(finished: now) : .working(tasks)
        return []
    }

    /// Removes a worker; the micro-batches it still owed go to the remaining members.
    private mutating func remove(_ identity: [UInt8], _ departure: Departure, now: Double, tellPeer: Bool = true) -> [Action] {
        guard let index = workers.firstIndex(where: { $0.identity == identity }) else { return [] }
        let worker = workers.remove(at: index)
        guard worker.isMember else {
            switch departure {
            case let .left(reason), let .lost(reason):
                return [.log(.workerNotJoined(worker: worker.name, host: worker.host, address: worker.address, reason: reason))]
            }
        }
        var actions: [Action]
        switch departure {
        case let .left(reason):
            actions = [.log(.workerLeft(worker: worker.name, host: worker.host, reason: reason, step: round?.step, workers: workerCount))]
        case let .lost(reason):
            actions = [.log(.workerLost(worker: worker.name, host: worker.host, reason: reason, step: round?.step, workers: workerCount))]
            // If it is alive after all (stuck, cut off), it learns it must say hello again.
            if tellPeer { actions += rejoin(identity, reason: "declared lost: \(reason)") }
        }
        guard var round else { return actions }
        round.lost.append(worker.name)
        self.round = round
        actions += distribute(orphaned(round), to: members.map(\.identity), now: now)
        return actions
    }

    /// When every worker of the step was lost, a worker that becomes ready takes the work at once.
    private mutating func admitIntoOrphanedWork(now: Double) -> [Action] {
        guard let round, members.isEmpty, readyToJoin > 0, !orphaned(round).isEmpty else { return [] }
        let actions = admitReadyWorkers()
        return actions + distribute(orphaned(round), to: members.map(\.identity), now: now)
    }

    /// Gives work still outstanding `straggler_delay` after its assignment to idle workers as well.
    private mutating func reissueStragglers(now: Double) -> [Action] {
        guard cluster.stragglerDelay > 0, let step = round?.step else { return [] }
        var actions: [Action] = []
        for straggler in members.map(\.identity) {
            guard let index = workers.firstIndex(where: { $0.identity == straggler }) else { continue }
            for (taskIndex, task) in workers[index].tasks.enumerated() where !task.reissued && now - task.assigned > cluster.stragglerDelay {
                let idle = members.filter { $0.tasks.isEmpty }.map(\.identity)
                guard !idle.isEmpty, let received = round?.reducer.received else { break }
                var tasks = workers[index].tasks
                tasks[taskIndex].reissued = true
                workers[index].phase = .working(tasks)
                let work = task.ranges.flatMap { subtracting(received, from: $0) }
                let count = work.reduce(0) { $0 + $1.count }
                round?.reissued += count
                let names = idle.prefix(count).compactMap { identity in workers.first { $0.identity == identity }?.name }
                actions.append(.log(.straggler(worker: workers[index].name, step: step, microBatches: work, reissuedTo: names)))
                actions += distribute(work, to: idle, now: now)
            }
        }
        return actions
    }

    // MARK: work distribution

    /// Micro-batches of `round` that are neither received nor owed by a member.
    private func orphaned(_ round: Round) -> [Range<Int>] {
        var open = [Bool](repeating: true, count: microBatches)
        for range in round.reducer.received + members.flatMap({ $0.tasks.flatMap(\.ranges) }) {
            for index in range { open[index] = false }
        }
        return runs(open)
    }

    /// Splits `work` into near-equal contiguous shares for `identities` and assigns them.
    private mutating func distribute(_ work: [Range<Int>], to identities: [[UInt8]], now: Double) -> [Action] {
        let indices = work.flatMap { Array($0) }
        guard !indices.isEmpty, !identities.isEmpty else { return [] }
        var actions: [Action] = []
        for (identity, share) in zip(identities, Self.assignments(microBatches: indices.count, workers: identities.count)) where !share.isEmpty {
            var open = [Bool](repeating: false, count: microBatches)
            for index in indices[share] { open[index] = true }
            actions += assign(runs(open), to: identity, now: now)
        }
        return actions
    }

    /// Sends a member one assignment per range, then (once a step) the weights a tensor at a time, first layer
    /// first: the worker starts the forward pass as soon as the first layer's tensors are in.
    private mutating func assign(_ ranges: [Range<Int>], to identity: [UInt8], now: Double) -> [Action] {
        guard let round, let index = workers.firstIndex(where: { $0.identity == identity }) else { return [] }
        var actions = ranges.map { range in
            send(Message(type: .assignment, jobID: jobID, step: UInt64(round.step), microBatches: range), to: index, now: now)
        }
        if !workers[index].hasWeights {
            actions += round.weights.map { send($0, to: index, now: now) }
            workers[index].hasWeights = true
        }
        workers[index].phase = .working(workers[index].tasks + [Task(ranges: ranges, assigned: now)])
        return actions
    }

    private mutating func send(_ message: Message, to index: Int, now: Double) -> Action {
        workers[index].lastSent = now
        var message = message
        message.session = workers[index].session
        return .send(peer: workers[index].identity, message)
    }

    // MARK: messages to peers

    private func refuse(_ identity: [UInt8], _ reason: String) -> Action {
        .send(peer: identity, Message(Refusal(reason), jobID: jobID))
    }

    /// Tells a peer this coordinator does not know (it restarted, or declared the peer lost) to say hello again.
    private func rejoin(_ identity: [UInt8], reason: String = "unknown worker (the coordinator restarted?)") -> [Action] {
        [.send(peer: identity, Message(Refusal(reason, rejoin: true), jobID: jobID))]
    }

    /// Who `identity` is, for a log line: the worker's name, or "a peer" (identities are never logged).
    func describePeer(_ identity: [UInt8]) -> String {
        workers.first { $0.identity == identity }?.name ?? "a peer"
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

func format(_ seconds: Double) -> String { String(format: "%.3g", seconds) }
