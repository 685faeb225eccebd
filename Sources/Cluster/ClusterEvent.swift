import Training
import Wire

/// What the cluster layer reports to the run's event log: the one place that names each event and its fields.
public enum ClusterEvent: Equatable, Sendable {
    /// A worker was admitted; it takes work from this step on.
    case workerJoined(worker: String, host: String, workers: Int)
    /// A worker said bye; `step` is the step in flight (nil between steps or before it was admitted).
    case workerLeft(worker: String, host: String, reason: String, step: Int?, workers: Int)
    /// A worker fell silent, missed the step deadline, failed, or said hello again; what it owed went to the others.
    case workerLost(worker: String, host: String, reason: String, step: Int?, workers: Int)
    /// A worker reported that it cannot run the job (it could not load the config or the data, or its
    /// computation threw); it is then lost (or not joined).
    case workerFailed(worker: String, host: String, reason: String)
    /// A welcomed worker failed, fell silent or left before it was admitted.
    case workerNotJoined(worker: String, host: String, address: String, reason: String)
    /// A worker's micro-batches were still outstanding after `straggler_delay` and went to idle workers as well.
    case straggler(worker: String, step: Int, microBatches: [Range<Int>], reissuedTo: [String])
    /// A message that cannot belong was dropped and changed nothing; `from` is the worker's name, or the address of
    /// a peer that is not a worker.
    case messageDropped(from: String, address: String, reason: String)
    /// More warnings were caused from `address` in the last `WarningLimiter.window` seconds than are logged.
    case warningsSuppressed(address: String, count: Int)
    /// A message could not be handed to the transport (the peer has gone).
    case sendFailed(type: MessageType, to: String, error: String)
    /// The job waits for workers (`reason`), reported when the reason changes and every 30 s.
    case waiting(reason: String, workers: Int, minWorkers: Int)
    /// `launch` started a worker process in place of one that exited.
    case workerRestarted(worker: String, replaces: String, restarts: Int, maxRestarts: Int)
    /// CURVE turned a peer away (once a minute per address and reason).
    case peerRefused(address: String, reason: String)
    /// The log stream dropped events for a subscriber that does not keep up (said once a minute).
    case logSubscriberBehind
    /// `ConnectionGuard` cut the connection from `address` (worker `peer`, or "a peer"): it had sent `unread` bytes
    /// that were not delivered, over its `limit` (or, `overTotal`, the limit on all not-welcomed connections).
    case connectionCut(address: String, peer: String, unread: Int, limit: Int, overTotal: Bool)

    /// The event's name in the log.
    public var name: String {
        switch self {
        case .workerJoined: return "worker_joined"
        case .workerLeft: return "worker_left"
        case .workerLost: return "worker_lost"
        case .workerFailed: return "worker_failed"
        case .straggler: return "straggler"
        case .workerNotJoined, .messageDropped, .warningsSuppressed, .sendFailed, .logSubscriberBehind, .connectionCut: return "warning"
        case .waiting: return "waiting"
        case .workerRestarted: return "worker_restarted"
        case .peerRefused: return "peer_refused"
        }
    }

    /// Where a peer-caused warning came from (`WarningLimiter` bounds them per source), or nil for other events.
    var warningSource: String? {
        switch self {
        case let .messageDropped(_, address, _), let .workerNotJoined(_, _, address, _), let .connectionCut(address, _, _, _, _): return address
        case .sendFailed: return "sending"
        default: return nil
        }
    }

    /// Bytes of a string field in the log at most: names, hosts and reasons can come from peers.
    static let maximumText = 300

    /// The event's fields in the log, in this order, strings cut to `maximumText` bytes.
    public var fields: [(String, JSONValue)] { uncutFields.map { ($0.0, Self.cut($0.1)) } }

    private static func cut(_ value: JSONValue) -> JSONValue {
        switch value {
        case let .string(text) where text.utf8.count > maximumText:
            var kept = Substring(text)
            while kept.utf8.count > maximumText - 3 { kept = kept.dropLast() }
            return .string(kept + "…")
        case let .array(values): return .array(values.map(cut))
        default: return value
        }
    }

    private var uncutFields: [(String, JSONValue)] {
        switch self {
        case let .workerJoined(worker, host, workers):
            return [("worker", .string(worker)), ("host", .string(host)), ("workers", .int(workers))]
        case let .workerLeft(worker, host, reason, step, workers), let .workerLost(worker, host, reason, step, workers):
            return [("worker", .string(worker)), ("host", .string(host)), ("reason", .string(reason)),
                    ("step", step.map { .int($0) } ?? .null), ("workers", .int(workers))]
        case let .workerFailed(worker, host, reason):
            return [("worker", .string(worker)), ("host", .string(host)), ("reason", .string(reason))]
        case let .workerNotJoined(worker, host, address, reason):
            return [("message", .string("worker \(worker) on \(host) did not join: \(reason)")), ("worker", .string(worker)),
                    ("host", .string(host)), ("address", .string(address))]
        case let .straggler(worker, step, microBatches, reissuedTo):
            return [("worker", .string(worker)), ("step", .int(step)), ("micro_batches", .string(describe(microBatches))),
                    ("reissued_to", .array(reissuedTo.map { .string($0) }))]
        case let .messageDropped(from, address, reason):
            return [("message", .string("dropped a message from \(from): \(reason)")), ("dropped_from", .string(from)),
                    ("address", .string(address))]
        case let .warningsSuppressed(address, count):
            return [("message", .string("\(count) more warnings from \(address) in the last \(Int(WarningLimiter.window)) s were not logged")),
                    ("address", .string(address)), ("suppressed", .int(count))]
        case let .sendFailed(type, to, error):
            return [("message", .string("could not send \(type) to \(to): \(error)"))]
        case let .waiting(reason, workers, minWorkers):
            return [("reason", .string(reason)), ("workers", .int(workers)), ("min_workers", .int(minWorkers))]
        case let .workerRestarted(worker, replaces, restarts, maxRestarts):
            return [("worker", .string(worker)), ("replaces", .string(replaces)), ("restarts", .int(restarts)),
                    ("max_restarts", .int(maxRestarts))]
        case let .peerRefused(address, reason):
            return [("address", .string(address)), ("reason", .string(reason))]
        case .logSubscriberBehind:
            return [("message", .string("a log subscriber does not keep up: events are dropped for it"))]
        case let .connectionCut(address, peer, unread, limit, overTotal):
            let over = overTotal ? "the limit of \(limit) bytes on all connections not welcomed (it held the most)" : "its limit of \(limit) bytes"
            return [("message", .string("cut the connection of \(peer) from \(address): \(unread) bytes sent and not delivered, over \(over)")),
                    ("address", .string(address)), ("unread", .int(unread)), ("limit", .int(limit))]
        }
    }
}

extension EventLog {
    public func emit(_ event: ClusterEvent) { emit(event.name, event.fields) }
}

/// Ranges of micro-batches as people write them: "0–3, 6".
func describe(_ ranges: [Range<Int>]) -> String {
    ranges.map { $0.count == 1 ? "\($0.lowerBound)" : "\($0.lowerBound)–\($0.upperBound - 1)" }.joined(separator: ", ")
}
