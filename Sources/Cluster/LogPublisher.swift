import Training
import Transport

/// Publishes the run's events on a ZeroMQ XPUB socket, each as its `events.jsonl` line. A monitor that subscribes
/// mid-run first gets a `snapshot` event with the latest job, worker, step and eval fields (the last-value cache
/// of the zguide), then every event as it happens.
public final class LogPublisher: CoordinatorCompanion {
    private let socket: ZMQSocket
    private var latest: [String: [(String, JSONValue)]] = [:]
    /// The events a snapshot holds, in this order.
    static let cached = ["job_start", "worker_joined", "eval", "step"]

    /// Publishes on `socket` (an XPUB socket, bound).
    public init(socket: ZMQSocket) { self.socket = socket }

    public func publish(_ event: String, _ fields: [(String, JSONValue)]) {
        serveNewSubscribers()
        if Self.cached.contains(event) { latest[event] = fields }
        try? socket.send([Array(EventLog.line(event, fields).utf8)])
    }

    public func poll(_ coordinator: Coordinator) { serveNewSubscribers() }

    /// A subscription message (first byte 1) means a new monitor: bring it up to date at once.
    func serveNewSubscribers() {
        var newSubscriber = false
        while let frames = try? socket.receive(timeout: 0), let first = frames.first?.first {
            if first == 1 { newSubscriber = true }
        }
        guard newSubscriber && !latest.isEmpty else { return }
        let snapshot = Self.cached.compactMap { name in latest[name].map { (name, JSONValue.object($0)) } }
        try? socket.send([Array(EventLog.line("snapshot", snapshot).utf8)])
    }
}
