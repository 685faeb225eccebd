import Wire

/// What happened in the pool, for the daemon's log.
public enum PoolEvent: Equatable, Sendable, CustomStringConvertible {
    case joined(worker: String, host: String, address: String)
    case gone(worker: String, reason: String)
    case refused(address: String, reason: String)

    public var description: String {
        switch self {
        case let .joined(worker, host, address): "worker \(worker) on \(host) (\(address)) joined the pool"
        case let .gone(worker, reason): "worker \(worker) left the pool: \(reason)"
        case let .refused(address, reason): "refused a worker from \(address): \(reason)"
        }
    }
}

/// The daemon's pool of workers as a state machine: who is connected, under which name, and whether each is idle
/// or lent to a job. Messages and time in; messages, log events and the scheduler's inputs out. It owns no socket
/// and reads no clock.
///
/// A worker's hello (session 0) makes it a pool member: it is told `pooled` and is free. While it is idle the
/// pool and the worker exchange heartbeats; in a job, the job's coordinator hears it instead, and its messages go
/// there. When the job lets it go (a bye: the job ended or released it; or the job lost it) it is `returning`:
/// its next hello makes it free again, and one that does not say hello within `heartbeatTimeout` is gone. A name is held by one connection at a time; a second one is asked to say hello again later
/// (`rejoin`), as a job's coordinator does. With CURVE a name also stays with the key that first joined under it.
public struct PoolMachine {
    public enum Action: Equatable, Sendable {
        case send(identity: [UInt8], Message)
        case log(PoolEvent)
        /// The worker is free: the scheduler may give it to a job.
        case free(identity: [UInt8])
        /// The worker is gone: forget it wherever it was (idle, or in `job`).
        case gone(identity: [UInt8], job: Int64?)
    }

    public enum Phase: Equatable, Sendable {
        case idle
        case lent(job: Int64)
        /// Let go by `job` at `since`; not yet back with a hello.
        case returning(since: Double, from: Int64)
    }

    public struct Member: Equatable, Sendable {
        public var identity: [UInt8]
        public var name: String
        public var host: String
        public var address: String
        /// The CURVE public key it connected with (with security).
        public var key: String?
        public var phase: Phase
        /// The hello it joined with, for the job it is given to.
        public var hello: Message
        var lastHeard: Double
        var lastSent: Double
    }

    public let heartbeatInterval: Double
    public let heartbeatTimeout: Double
    /// In the order they joined.
    public private(set) var members: [Member] = []
    /// With CURVE: the key that first joined under each name.
    private var keyOfName: [String: String] = [:]

    public init(heartbeatInterval: Double = 1, heartbeatTimeout: Double = 10) {
        self.heartbeatInterval = heartbeatInterval
        self.heartbeatTimeout = heartbeatTimeout
    }

    public func member(_ identity: [UInt8]) -> Member? { members.first { $0.identity == identity } }
    public var idle: [Member] { members.filter { $0.phase == .idle } }

    /// A message from a peer that is not in a job: a hello, or an idle member's heartbeat or bye. `key` is the CURVE
    /// public key the peer connected with (with security).
    public mutating func receive(from identity: [UInt8], _ message: Message, address: String, key: String? = nil,
                                 now: Double) -> [Action] {
        let index = members.firstIndex { $0.identity == identity }
        if let index { members[index].lastHeard = now }
        switch message.type {
        case .hello:
            guard let hello = try? message.payload(Hello.self) else { return [] }
            if let key, let owner = keyOfName[hello.name], owner != key {
                let reason = "the name \(hello.name) belongs to another worker's key"
                return [.log(.refused(address: address, reason: reason)), .send(identity: identity, Message(Refusal(reason), jobID: 0))]
            }
            if let key { keyOfName[hello.name] = key }
            if let holder = members.first(where: { $0.name == hello.name && $0.identity != identity }) {
                let reason = "the name \(hello.name) is held by another connection (\(holder.address)); say hello again once it has closed"
                return [.log(.refused(address: address, reason: reason)),
                        .send(identity: identity, Message(Refusal(reason, rejoin: true), jobID: 0))]
            }
            let pooled = Message(Pooled(heartbeatInterval: heartbeatInterval, heartbeatTimeout: heartbeatTimeout), jobID: 0)
            if let index {
                members[index].phase = .idle
                members[index].hello = message
                members[index].lastSent = now
                return [.send(identity: identity, pooled), .free(identity: identity)]
            }
            members.append(Member(identity: identity, name: hello.name, host: hello.host, address: address, key: key,
                                  phase: .idle, hello: message, lastHeard: now, lastSent: now))
            return [.log(.joined(worker: hello.name, host: hello.host, address: address)),
                    .send(identity: identity, pooled), .free(identity: identity)]
        case .heartbeat:
            // A returning worker still idle in its own view (its job ended before welcoming it) is free again.
            guard let index, case .returning = members[index].phase, message.session == 0 else { return [] }
            members[index].phase = .idle
            return [.free(identity: identity)]
        case .bye:
            return remove(identity, reason: "said bye")
        case .error:
            return remove(identity, reason: (try? message.payload(Refusal.self).reason) ?? "failed")
        case .welcome, .assignment, .gradients, .weights, .pooled:
            return []
        }
    }

    /// The worker is given to `job` (its hello goes there).
    public mutating func lend(_ identity: [UInt8], to job: Int64) {
        guard let index = members.firstIndex(where: { $0.identity == identity }) else { return }
        members[index].phase = .lent(job: job)
    }

    /// The worker's job let it go (told it bye, or lost it).
    public mutating func returning(_ identity: [UInt8], now: Double) {
        guard let index = members.firstIndex(where: { $0.identity == identity }) else { return }
        if case let .lent(job) = members[index].phase { members[index].phase = .returning(since: now, from: job) }
    }

    /// A worker said hello to `job` again with its session (it reconnected, or the job asked it to rejoin): it is
    /// lent to that job, under this connection.
    public mutating func rejoined(_ identity: [UInt8], _ message: Message, to job: Int64, address: String, key: String? = nil,
                                  now: Double) {
        guard let hello = try? message.payload(Hello.self) else { return }
        if let key, let owner = keyOfName[hello.name], owner != key { return }  // the job refuses it too
        members.removeAll { $0.name == hello.name && $0.identity != identity }
        if let index = members.firstIndex(where: { $0.identity == identity }) {
            members[index].phase = .lent(job: job)
            members[index].lastHeard = now
        } else {
            members.append(Member(identity: identity, name: hello.name, host: hello.host, address: address, key: key,
                                  phase: .lent(job: job), hello: message, lastHeard: now, lastSent: now))
        }
    }

    /// The worker's connection closed, or its job lost it: it is no longer in the pool.
    public mutating func lost(_ identity: [UInt8], reason: String) -> [Action] { remove(identity, reason: reason) }

    /// Heartbeats to idle members; an idle member silent for `heartbeatTimeout` is gone.
    public mutating func tick(now: Double) -> [Action] {
        var actions: [Action] = []
        for member in members {
            switch member.phase {
            case .idle where now - member.lastHeard > heartbeatTimeout:
                actions += remove(member.identity, reason: "no heartbeat for \(Int(now - member.lastHeard)) s")
            case let .returning(since, _) where now - since > heartbeatTimeout:
                actions += remove(member.identity, reason: "no hello within \(Int(heartbeatTimeout)) s of leaving its job")
            default:
                break
            }
        }
        for index in members.indices where members[index].phase == .idle && now - members[index].lastSent >= heartbeatInterval {
            members[index].lastSent = now
            actions.append(.send(identity: members[index].identity, Message(type: .heartbeat, jobID: 0)))
        }
        return actions
    }

    private mutating func remove(_ identity: [UInt8], reason: String) -> [Action] {
        guard let index = members.firstIndex(where: { $0.identity == identity }) else { return [] }
        let member = members.remove(at: index)
        let job: Int64? = if case let .lent(job) = member.phase { job } else { nil }
        return [.log(.gone(worker: member.name, reason: reason)), .gone(identity: identity, job: job)]
    }
}
