import Training
import Wire

/// The worker's protocol logic as a state machine: messages, finished work and time in; messages to send, work to
/// start and log lines out. It owns no socket and reads no clock, so tests drive it message by message and tick
/// by tick; `Worker` is the loop around it.
///
/// A worker says hello and waits up to `joinTimeout` for the welcome (saying hello again each second while the
/// coordinator asks it to: its name is still held by a connection the coordinator has not yet seen close), builds
/// the job (the `join` action), then reports ready with a heartbeat and computes what it is assigned. Every message
/// after the welcome carries the session the welcome issued; messages of another session are dropped. When the
/// coordinator is silent for the job's `heartbeat_timeout`, the worker reconnects and says hello again (carrying its
/// session, to reclaim its name) with growing pauses (1, 2, 4 … 15 s) until a coordinator for the same job answers
/// (`coordinator --resume`), or gives up after `retryTimeout`. Each time the
/// coordinator forgets the worker (a rejoin request, a lost coordinator) the generation grows, and work started
/// under an older generation is void.
///
/// A daemon (`trainerd serve`) answers the hello with `pooled`: the worker then waits in the pool, exchanging
/// heartbeats, until a job welcomes it; from then on a bye from a job (it ended, or the daemon moved the worker)
/// or a job it cannot load sends it back to the pool with a new hello instead of ending it.
public struct WorkerMachine {
    public enum Action: Equatable, Sendable {
        case send(Message)
        /// Build the job's model and load its data, then call `joined` (or `joinFailed`).
        case join(JobDescription, jobID: UInt64)
        /// Compute the gradient sums of micro-batches `range` of `step` at the weights `feed` delivers (they may
        /// still be arriving) and hand them to `computed` with `generation`.
        case compute(step: UInt64, range: Range<Int>, weights: WeightFeed, generation: Int)
        case log(String)
        /// Replace the socket by a fresh connection (nothing stale is queued for a new coordinator), before the
        /// hello that follows.
        case reconnect
        /// Close the socket once what is queued is delivered: the run is over for this worker.
        case finish
    }

    public enum Phase: Equatable {
        /// Hello sent at `since`, the first welcome not yet in; another goes out at `nextHello`, if set.
        case greeting(since: Double, nextHello: Double?)
        /// In a daemon's pool, waiting for a job.
        case idle
        /// Welcomed; building the job.
        case loading
        /// In the job: heartbeats, assignments, gradients.
        case working
        /// The coordinator asked this worker to say hello again; the hello is out, the welcome not yet in.
        case rejoining
        /// The coordinator fell silent at `since`; the next hello goes out at `nextHello`, then after `pause` s.
        case reconnecting(since: Double, nextHello: Double, pause: Double)
        /// Said bye, or was told bye.
        case finished
    }

    /// Who this worker is, as its hello says.
    public let hello: Hello
    /// The coordinator's endpoint, for messages.
    public let endpoint: String
    /// Seconds to wait for the first welcome.
    public let joinTimeout: Double
    /// Seconds to keep trying to reach a coordinator that was lost.
    public let retryTimeout: Double
    public private(set) var phase: Phase
    public private(set) var jobID: UInt64 = 0
    /// The session of the latest welcome (0 before the first): in the header of every message this worker sends.
    public private(set) var session: UInt64 = 0
    /// Why the coordinator last asked this worker to say hello again, while greeting.
    var lastRefusal: String?
    /// The heartbeats of the daemon's pool, once it has said `pooled`: the worker stays between jobs.
    public private(set) var pool: Pooled?
    /// The job's timing and wire settings, known once joined.
    public private(set) var cluster = JobConfig.ClusterSection()
    /// Work computed under an older generation is void (the coordinator forgot it).
    public private(set) var generation = 0
    /// Numbers of values of each parameter tensor, known once joined.
    var blockSizes: [Int]?
    /// The weights of the latest step assigned or sent, as they arrive.
    var weights: WeightFeed?
    var lastHeard: Double
    var lastSent: Double

    public init(hello: Hello, endpoint: String, joinTimeout: Double = 30, retryTimeout: Double = 600, now: Double) {
        self.hello = hello
        self.endpoint = endpoint
        self.joinTimeout = joinTimeout
        self.retryTimeout = retryTimeout
        phase = .greeting(since: now, nextHello: nil)
        lastHeard = now
        lastSent = now
    }

    public var hasJoined: Bool { blockSizes != nil }
    /// How long the loop may wait for a message before it ticks again.
    public var pollInterval: Double { min(0.25, cluster.heartbeatInterval / 2) }

    /// The first hello.
    public mutating func start(now: Double) -> [Action] {
        phase = .greeting(since: now, nextHello: nil)
        lastHeard = now
        return [sayHello(now: now)]
    }

    /// Handles one message from the coordinator; throws when it refuses this worker or changed jobs.
    public mutating func receive<Frame: FrameBytes>(_ frames: [Frame], now: Double) throws -> [Action] {
        lastHeard = now
        let message: Message
        do {
            message = try Message.decode(frames)
        } catch {
            return [.log("dropped a message from the coordinator: \(error)")]
        }
        if message.type == .pooled { return pooled(try message.payload(Pooled.self), now: now) }
        if message.type != .welcome && message.type != .error && message.jobID != jobID {
            return [.log("dropped a message of type \(message.type) for job \(String(message.jobID, radix: 16))")]
        }
        if message.type != .welcome && message.type != .error && message.session != session {
            return [.log("dropped a message of another session (\(message.type))")]
        }
        switch message.type {
        case .welcome:
            return try welcomed(message, now: now)
        case .weights:
            let first = Int(message.block)
            guard let blockSizes, first + message.tensors.count <= blockSizes.count,
                  message.tensors.map(\.count) == Array(blockSizes[first..<(first + message.tensors.count)]) else {
                return [.log("dropped weights whose shapes do not match the model")]
            }
            let feed = self.feed(for: message.step)
            for (offset, values) in message.tensors.enumerated() { feed.provide(first + offset, values) }
            return []
        case .assignment:
            guard hasJoined else { throw ClusterError("an assignment arrived before the welcome") }
            return [.compute(step: message.step, range: message.microBatches, weights: feed(for: message.step), generation: generation)]
        case .bye:
            abandonWeights("the run is over")
            let answer = send(Message(type: .bye, jobID: jobID), now: now)
            guard pool != nil, hasJoined || phase == .loading else {
                phase = .finished
                return [answer, .finish]
            }
            return [answer, .log("left job \(String(jobID, radix: 16)); back in the pool")] + returnToPool(now: now)
        case .error:
            let refusal = try message.payload(Refusal.self)
            guard refusal.rejoin else { throw ClusterError("the coordinator refused this worker: \(refusal.reason)") }
            if case let .greeting(since, nil) = phase {
                lastRefusal = refusal.reason
                phase = .greeting(since: since, nextHello: now + 1)
                return [.log("the coordinator asks this worker to say hello again (\(refusal.reason))")]
            }
            guard phase == .working else { return [] }  // a hello is already out
            abandonWeights("the coordinator forgot this worker")
            generation += 1
            phase = .rejoining
            return [.log("the coordinator asks this worker to join again (\(refusal.reason))"), sayHello(now: now)]
        case .heartbeat:
            return []
        case .hello, .gradients:
            return [.log("dropped a \(message.type) message, which only workers send")]
        case .pooled:
            return []
        }
    }

    /// The `join` action succeeded with a model of these parameter tensor sizes: report ready for work.
    public mutating func joined(blockSizes: [Int], cluster: JobConfig.ClusterSection, jobName: String, now: Double) -> [Action] {
        self.blockSizes = blockSizes
        self.cluster = cluster
        phase = .working
        lastHeard = now  // loading took a while; the coordinator was not silent
        return [.log("joined job \(jobName) (\(String(jobID, radix: 16)))"), send(Message(type: .heartbeat, jobID: jobID), now: now)]
    }

    /// The `join` action failed: tell the coordinator why (the worker then stops, or goes back to its pool).
    public mutating func joinFailed(_ reason: String, now: Double) -> [Action] {
        let report = send(Message(Refusal(reason), jobID: jobID), now: now)
        guard pool != nil else {
            phase = .finished
            return [report, .finish]
        }
        return [report, .log("cannot join job \(String(jobID, radix: 16)) (\(reason)); back in the pool")] + returnToPool(now: now)
    }

    /// Heartbeats; notices a silent coordinator and reconnects with growing pauses; gives up after the join or
    /// retry timeout.
    public mutating func tick(now: Double) throws -> [Action] {
        let silence = now - lastHeard
        switch phase {
        case let .greeting(since, nextHello):
            if now - since > joinTimeout {
                throw ClusterError("\(endpoint): " + (lastRefusal.map { "not admitted within \(Int(joinTimeout)) s: \($0)" }
                    ?? "no answer from the coordinator within \(Int(joinTimeout)) s"))
            }
            guard let nextHello, now >= nextHello else { return [] }
            phase = .greeting(since: since, nextHello: nil)
            return [sayHello(now: now)]
        case .idle:
            guard let pool else { return [] }
            if silence > pool.heartbeatTimeout {
                phase = .reconnecting(since: now, nextHello: now, pause: 1)
                return [.log("lost the pool's daemon (silent for \(Int(silence)) s); reconnecting")] + (try tick(now: now))
            }
            guard now - lastSent >= pool.heartbeatInterval else { return [] }
            return [send(Message(type: .heartbeat, jobID: 0), now: now)]
        case .loading, .finished:
            return []
        case .working, .rejoining:
            if silence > cluster.heartbeatTimeout {
                abandonWeights("lost the coordinator")
                generation += 1
                phase = .reconnecting(since: now, nextHello: now, pause: 1)
                return [.log("lost the coordinator (silent for \(Int(silence)) s); reconnecting")] + (try tick(now: now))
            }
            guard phase == .working, now - lastSent >= cluster.heartbeatInterval else { return [] }
            return [send(Message(type: .heartbeat, jobID: jobID), now: now)]
        case let .reconnecting(since, nextHello, pause):
            guard now >= nextHello else { return [] }
            guard now - since <= retryTimeout else {
                throw ClusterError("\(endpoint): the coordinator has been unreachable for \(Int(retryTimeout)) s; giving up")
            }
            phase = .reconnecting(since: since, nextHello: now + pause, pause: min(pause * 2, 15))
            return [.reconnect, sayHello(now: now)]
        }
    }

    /// Leave the job: say bye (the coordinator hands this worker's micro-batches on) and finish.
    public mutating func leave(now: Double) -> [Action] {
        abandonWeights("this worker left the job")
        phase = .finished
        return [.log("leaving the job"), send(Message(type: .bye, jobID: jobID), now: now), .finish]
    }

    /// Messages for the pieces of gradients computed so far: those of older generations are dropped. Pieces of one
    /// step and range whose blocks are consecutive (block i < P is parameter tensor i, block P the loss sum; see
    /// `WireProtocol`) and travel as the same tensor type share a message; the loss sum always travels as float32.
    /// A failed computation is reported to the coordinator and thrown.
    public mutating func computed(_ results: [ComputeResult], now: Double) throws -> [Action] {
        var groups: [(step: UInt64, pieces: [GradientEngine.Piece])] = []
        var actions: [Action] = []
        func flush() {
            for group in groups { actions += gradients(step: group.step, group.pieces).map { send($0, now: now) } }
            groups = []
        }
        for result in results where result.generation == generation {
            switch result.outcome {
            case let .success(piece):
                if let index = groups.firstIndex(where: { $0.step == result.step && $0.pieces[0].microBatches == piece.microBatches }) {
                    groups[index].pieces.append(piece)
                } else {
                    groups.append((result.step, [piece]))
                }
            case let .failure(error) where error is WeightsAbandoned:
                actions.append(.log("\(error)"))  // work the coordinator no longer wants (a newer step began, or a rejoin)
            case let .failure(error):
                flush()
                throw ComputeFailure(error: error, report: actions + [send(Message(Refusal("\(error)"), jobID: jobID), now: now)])
            }
        }
        flush()
        return actions
    }

    /// A computation failed: the messages to send before stopping (the finished pieces, then the reason).
    public struct ComputeFailure: Error, CustomStringConvertible {
        public var error: Error
        public var report: [Action]
        public var description: String { "\(error)" }
    }

    // MARK: helpers

    private mutating func welcomed(_ message: Message, now: Double) throws -> [Action] {
        let job = JobDescription(try message.payload(Welcome.self))
        if hasJoined {
            guard message.jobID == jobID else {
                throw ClusterError("the coordinator now runs job \(String(message.jobID, radix: 16)), not \(String(jobID, radix: 16)); start a new worker for it")
            }
            abandonWeights("the coordinator welcomed this worker again")
            session = message.session
            phase = .working
            return [.log("rejoined the coordinator"), send(Message(type: .heartbeat, jobID: jobID), now: now)]
        }
        switch phase {
        case .greeting, .idle: break
        default: return []  // a repeated welcome while loading
        }
        jobID = message.jobID
        session = message.session
        phase = .loading
        return [.join(job, jobID: message.jobID)]
    }

    /// In the pool (`pooled` from a daemon): wait for a job, with heartbeats.
    /// After a reconnect the job this worker was in is gone: its work is void.
    private mutating func pooled(_ pool: Pooled, now: Double) -> [Action] {
        let joining = self.pool == nil
        self.pool = pool
        switch phase {
        case .greeting: break
        case .reconnecting: forgetJob()
        default: return []
        }
        lastHeard = now
        phase = .idle
        return joining ? [.log("in the pool of \(endpoint), waiting for a job")] : []
    }

    /// Forgets the job (its work is void) and says hello to the pool again.
    private mutating func returnToPool(now: Double) -> [Action] {
        forgetJob()
        phase = .greeting(since: now, nextHello: nil)
        return [sayHello(now: now)]
    }

    private mutating func forgetJob() {
        abandonWeights("this worker left the job")
        jobID = 0
        session = 0
        blockSizes = nil
        cluster = JobConfig.ClusterSection()
        generation += 1
    }

    private mutating func sayHello(now: Double) -> Action {
        send(Message(hello, jobID: 0), now: now)
    }

    private mutating func send(_ message: Message, now: Double) -> Action {
        lastSent = now
        var message = message
        message.session = session
        return .send(message)
    }

    /// The feed of `step`'s weights (a new one when the step is new: its weights follow the assignment).
    private mutating func feed(for step: UInt64) -> WeightFeed {
        if let weights, weights.step == step { return weights }
        weights?.cancel("step \(step) began")
        let feed = WeightFeed(step: step, count: blockSizes?.count ?? 0)
        weights = feed
        return feed
    }

    /// Wakes any pass still waiting for weights that will not come (the step's work is void).
    private mutating func abandonWeights(_ reason: String) {
        weights?.cancel(reason)
        weights = nil
    }

    /// Messages for pieces of one step and range, as runs of consecutive blocks.
    private func gradients(step: UInt64, _ pieces: [GradientEngine.Piece]) -> [Message] {
        guard let blockSizes else { return [] }
        let lossBlock = blockSizes.count
        func block(_ piece: GradientEngine.Piece) -> Int { piece.parameter ?? lossBlock }
        var runs: [[GradientEngine.Piece]] = []
        for piece in pieces.sorted(by: { block($0) < block($1) }) {
            if let last = runs.last?.last, block(last) + 1 == block(piece),
               piece.parameter != nil || cluster.wireDType == .float32 {
                runs[runs.count - 1].append(piece)
            } else {
                runs.append([piece])
            }
        }
        return runs.map { run in
            Message(type: .gradients, jobID: jobID, step: step, microBatches: run[0].microBatches, block: UInt32(block(run[0])),
                    tensors: run.map(\.values), tensorType: run[0].parameter == nil ? .float32 : cluster.wireDType.tensorType)
        }
    }
}

/// A piece of a gradient computation, or its failure, under the generation it was started in.
public struct ComputeResult {
    public var generation: Int
    public var step: UInt64
    public var outcome: Result<GradientEngine.Piece, Error>

    public init(generation: Int, step: UInt64, outcome: Result<GradientEngine.Piece, Error>) {
        self.generation = generation
        self.step = step
        self.outcome = outcome
    }
}
