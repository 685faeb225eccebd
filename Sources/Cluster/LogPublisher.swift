import Foundation
import Training
import Transport

/// Publishes the run's events on a ZeroMQ XPUB socket, each as its `events.jsonl` line. A monitor that subscribes
/// mid-run first gets a `snapshot` event with the latest job, worker, step and eval fields (the last-value cache
/// of the zguide), then every event as it happens.
///
/// The port takes nothing but subscriptions to every event (the empty topic): a frame of more than `maximumFrame`
/// bytes drops the connection, and other topics are ignored, so subscribers cannot grow the socket's subscription
/// table. A subscriber that does not keep up never holds up the job: after `sendQueue`
/// events are queued for it, events are dropped for it (and the log says so, once a minute).
public final class LogPublisher: CoordinatorCompanion {
    private let socket: ZMQSocket
    private let events: EventLog
    private var latest: [String: [(String, JSONValue)]] = [:]
    /// Events were dropped for a slow subscriber since the last report.
    private var behind = false
    private var lastReportedBehind: Date?
    /// The events a snapshot holds, in this order.
    static let cached = ["job_start", "worker_joined", "eval", "step"]

    /// Bytes of the largest frame a subscriber may send: a subscription (one byte, then the topic) needs 1, but the
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

    /// Publishes on `socket` (an XPUB socket made with `socketLimits`, not yet bound); reports to `events`.
    public init(socket: ZMQSocket, events: EventLog) throws {
        self.socket = socket
        self.events = events
        try socket.takeSubscriptionsManually()
        try socket.setFailsWhenASubscriberIsFull(true)
    }

    public func publish(_ event: String, _ fields: [(String, JSONValue)]) {
        serveNewSubscribers()
        if Self.cached.contains(event) { latest[event] = fields }
        send(EventLog.line(event, fields))
    }

    public func poll(_ coordinator: Coordinator) {
        serveNewSubscribers()
        guard behind, lastReportedBehind.map({ Date().timeIntervalSince($0) >= 60 }) ?? true else { return }
        behind = false
        lastReportedBehind = Date()
        events.emit(.logSubscriberBehind)
    }

    /// Sends to every subscriber that has room; when one has none, the line is dropped for it alone.
    private func send(_ line: String) {
        let frames = [Array(line.utf8)]
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

    /// Applies subscriptions to every event (XPUB_MANUAL: first byte 1 subscribes, 0 unsubscribes; the rest is the
    /// topic, which must be empty), and brings a new subscriber up to date at once.
    func serveNewSubscribers() {
        var newSubscriber = false
        while let frames = try? socket.receive(timeout: 0), let frame = frames.first, frame.count == 1 {
            if frame[0] == 1 {
                try? socket.applySubscription(to: [], subscribe: true)
                newSubscriber = true
            } else if frame[0] == 0 {
                try? socket.applySubscription(to: [], subscribe: false)
            }
        }
        guard newSubscriber && !latest.isEmpty else { return }
        let snapshot = Self.cached.compactMap { name in latest[name].map { (name, JSONValue.object($0)) } }
        send(EventLog.line("snapshot", snapshot))
    }
}
