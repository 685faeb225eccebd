import Foundation

/// Bytes a socket has handed to libzmq without a copy and libzmq has not yet released, per peer: what is queued
/// for a peer in this process until it is written to the peer's connection. Frames below
/// `ZMQSocket.zeroCopyThreshold` are copied by libzmq and not counted (the socket's send high-water mark bounds
/// their number).
///
/// Thread-safe: `lock` guards `queues`; frames are released on libzmq's I/O thread.
public final class SendLedger: @unchecked Sendable {
    /// What is queued for one peer.
    public struct Queue: Equatable, Sendable {
        public var bytes = 0
        /// When the oldest frame still queued was sent (seconds since 1970), or nil when nothing is queued.
        public var oldest: Double?

        public init(bytes: Int = 0, oldest: Double? = nil) {
            self.bytes = bytes
            self.oldest = oldest
        }
    }

    private struct Entry {
        let serial: UInt64
        let sent: Double
        let bytes: Int
    }

    private let lock = NSLock()
    private var queues: [[UInt8]: [Entry]] = [:]
    private var nextSerial: UInt64 = 0

    public init() {}

    /// Counts `bytes` sent to `peer` at `sent`; the returned closure releases them.
    func add(peer: [UInt8], bytes: Int, sent: Double) -> @Sendable () -> Void {
        lock.lock()
        let serial = nextSerial
        nextSerial += 1
        queues[peer, default: []].append(Entry(serial: serial, sent: sent, bytes: bytes))
        lock.unlock()
        return { [self] in release(peer: peer, serial: serial) }
    }

    private func release(peer: [UInt8], serial: UInt64) {
        lock.lock()
        defer { lock.unlock() }
        guard var entries = queues[peer], let index = entries.firstIndex(where: { $0.serial == serial }) else { return }
        entries.remove(at: index)
        queues[peer] = entries.isEmpty ? nil : entries
    }

    /// What is queued for `peer`.
    public func queue(_ peer: [UInt8]) -> Queue {
        lock.lock()
        defer { lock.unlock() }
        guard let entries = queues[peer] else { return Queue() }
        return Queue(bytes: entries.reduce(0) { $0 + $1.bytes }, oldest: entries.map(\.sent).min())
    }

    /// Bytes queued for all peers together.
    public var totalBytes: Int {
        lock.lock()
        defer { lock.unlock() }
        return queues.values.reduce(0) { total, entries in entries.reduce(total) { $0 + $1.bytes } }
    }
}
