import Foundation
import Training
import Transport

/// Publishes events on a ZeroMQ XPUB socket, each as its `events.jsonl` line. A monitor that subscribes late first
/// gets a `snapshot` event with the latest job, worker, step, eval and end fields (the last-value cache of the
/// zguide), then every event as it happens.
///
/// A coordinator publishes one job's events, a frame each, and takes nothing but subscriptions to every event (the
/// empty topic). The daemon (`topics`) publishes every job's events as two frames, the job's id and the line, and
/// also takes subscriptions to one job's id: ZeroMQ matches topics by prefix, so a subscriber to job 1 also gets
/// jobs 10 to 19 and drops them itself. A frame of more than `maximumFrame` bytes drops the connection, and other
/// topics are ignored, so subscribers cannot grow the socket's subscription table past what the `ConnectionGuard`
/// lets one connection send. A subscriber that does not keep up never holds up a job: after `sendQueue` events are
/// queued for it, events are dropped for it (and `reportBehind` is called, once a minute).
public final class LogPublisher: CoordinatorCompanion {
    private let socket: ZMQSocket
    private let topics: Bool
    private let reportBehind: () -> Void
    /// Topic ("" without topics) → event → its latest fields.
    private var latest: [String: [String: [(String, JSONValue)]]] = [:]
    /// Events were dropped for a slow subscriber since the last report.
    private var behind = false
    private var lastReportedBehind: Date?
    /// The events a snapshot holds, in this order.
    public static let cached = ["job_start", "worker_joined", "eval", "step", "done", "job_end"]
    /// Bytes of the longest topic a subscriber may ask for: a job id.
    static let maximumTopic = 20

    /// Bytes of the largest frame a subscriber may send: a subscription (one byte, then the topic) needs 21, but the
    /// limit also bounds the handshake's frames, and CURVE's INITIATE has a few hundred.
    public static let maximumFrame = 1024
    /// Bytes a subscriber's connection may send that are not delivered (`ConnectionGuard`; subscriptions are never
    /// counted as delivered): its handshake and a few dozen subscriptions.
    public static let connectionLimit = 64 << 10
    /// Events queued per subscriber before they are dropped for it.
    public static let sendQueue: Int32 = 1000
    /// The kernel's send buffer per subscriber: small, so that one that does not read is noticed after about
    /// `sendQueue` events rather than megabytes more.
    public static let sendBuffer: Int32 = 128 << 10
    public static let socketLimits = SocketLimits(maximumFrame: maximumFrame, sendQueue: sendQueue, sendBuffer: sendBuffer)

    /// Publishes on `socket` (an XPUB socket made with `socketLimits`, not yet bound), with job ids as topics when
    /// `topics`; `reportBehind` is told when a slow subscriber has missed events.
    public init(socket: ZMQSocket, topics: Bool = false, reportBehind: @escaping () -> Void) throws {
        self.socket = socket
        self.topics = topics
        self.reportBehind = reportBehind
        try socket.takeSubscriptionsManually()
        try socket.setFailsWhenASubscriberIsFull(true)
    }

    /// A coordinator's publisher: one job, no topics, reporting to the job's `events`.
    public convenience init(socket: ZMQSocket, events: EventLog) throws {
        try self.init(socket: socket) { events.emit(.logSubscriberBehind) }
    }

    /// Publishes `line` (as `EventLog.line` made it for `event` and `fields`) under `topic` (a job id; nil without
    /// topics).
    public func publish(_ event: String, _ fields: [(String, JSONValue)], line: String? = nil, topic: String? = nil) {
        serveNewSubscribers()
        let key = topic ?? ""
        if Self.cached.contains(event) { latest[key, default: [:]][event] = fields }
        send(line ?? EventLog.line(event, fields), topic: topic)
    }

    /// Drops what a late subscriber to `topic` would be sent (the job is long over).
    public func forget(topic: String) { latest[topic] = nil }

    public func poll(_ coordinator: Coordinator) { poll() }

    /// Applies new subscriptions, and reports a slow subscriber at most once a minute.
    public func poll() {
        serveNewSubscribers()
        guard behind, lastReportedBehind.map({ Date().timeIntervalSince($0) >= 60 }) ?? true else { return }
        behind = false
        lastReportedBehind = Date()
        reportBehind()
    }

    /// Sends to every subscriber that has room; when one has none, the line is dropped for it alone.
    private func send(_ line: String, topic: String?) {
        let frames = (topic.map { [Array($0.utf8)] } ?? []) + [Array(line.utf8)]
        do {
            try socket.send(frames)
        } catch {
            // XPUB_NODROP refuses the whole send when any subscriber is full; sent again lossy, it reaches the rest.
            behind = true
            try? socket.setFailsWhenASubscriberIsFull(false)
            try? socket.send(frames)
            try? socket.setFailsWhenASubscriberIsFull(true)
        }
    }

    /// Whether a subscriber may subscribe to `topic`: every event, or (with topics) one job id.
    private func accepts(_ topic: ArraySlice<UInt8>) -> Bool {
        topic.isEmpty || (topics && topic.count <= Self.maximumTopic && topic.allSatisfy { (0x30...0x39).contains($0) })
    }

    /// Applies subscriptions (XPUB_MANUAL: first byte 1 subscribes, 0 unsubscribes; the rest is the topic), and
    /// brings each new subscriber up to date at once.
    func serveNewSubscribers() {
        var subscribed: [String] = []
        while let frames = try? socket.receive(timeout: 0) {
            guard let frame = frames.first, let kind = frame.first, kind <= 1, accepts(frame.dropFirst()) else { continue }
            try? socket.applySubscription(to: Array(frame.dropFirst()), subscribe: kind == 1)
            if kind == 1 { subscribed.append(String(decoding: frame.dropFirst(), as: UTF8.self)) }
        }
        for topic in subscribed {
            let keys = topic.isEmpty ? latest.keys.sorted { ($0.count, $0) < ($1.count, $1) } : [topic]
            for key in keys {
                guard let events = latest[key] else { continue }
                let snapshot = Self.cached.compactMap { name in events[name].map { (name, JSONValue.object($0)) } }
                send(EventLog.line("snapshot", snapshot), topic: topics ? key : nil)
            }
        }
    }
}
