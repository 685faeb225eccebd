import CZMQ
import Foundation

/// A connection a `ConnectionGuard` shut down, with the figures that decided it.
public struct ConnectionCut: Equatable, Sendable, CustomStringConvertible {
    /// The peer's IP address and port.
    public var address: String
    public var port: Int
    /// The endpoint of the watched socket it had connected to.
    public var endpoint: String
    /// Its routing id, when a ROUTER had delivered a message from it.
    public var identity: [UInt8]?
    /// Bytes it had sent that were not yet delivered to the application (`ConnectionGuard`'s formula).
    public var unread: Int
    /// The limit `unread` passed: the connection's own, or with `overTotal` the guard's `totalLimit`.
    public var limit: Int
    /// Whether the connections at their socket's default limit held more than `totalLimit` together, and this one
    /// held the most of them.
    public var overTotal: Bool

    public var description: String {
        let peer = "\(address):\(port)" + (identity.map { " (\(String(decoding: $0, as: UTF8.self)))" } ?? "")
        let limit = overTotal
            ? "the \(self.limit)-byte limit on all connections at their default limit together (it held the most)"
            : "its limit of \(self.limit) bytes"
        return "\(peer) on \(endpoint): cut with \(unread) bytes sent and not yet delivered, over \(limit)"
    }
}

/// Bounds the memory peers can make binding sockets hold, by cutting a connection that has sent too much that the
/// application has not received.
///
/// libzmq 4.3 hands a multipart message to the application only once all its frames are in, and ZMQ_MAXMSGSIZE
/// bounds each frame, not their number: one message of endless frames is buffered whole, and no option bounds it.
/// The guard does, from its own thread, every `checkInterval`, for each TCP connection its sockets accepted
/// (a socket monitor's ACCEPTED event gives the descriptor):
///
///     unread    = tcpi_bytes_received − handshakeAllowance − delivered
///     delivered = Σ over the messages the application received from it (ZMQ_SRCFD of a frame)
///                   of (payload bytes + framingAllowance × frames),   a ROUTER's routing id frame not counted
///
/// `delivered` is clamped to `tcpi_bytes_received` at each check (and when a descriptor number is reused), so the
/// generous framing credit cannot be saved up for later. `unread` is everything the peer sent that the application
/// has not taken: a half-received message, complete messages still queued in libzmq, and bytes still in the
/// kernel's receive buffer (so a limit must cover what an honest peer may have queued while the application is
/// busy). A connection whose `unread` passes its limit is ended under libzmq (`disconnect`: the kernel drops what it
/// holds of it, and libzmq closes the connection and discards its half-received message) and recorded for
/// `takeCuts`.
///
/// Limits: a connection's is its socket's `connectionLimit` (for a peer that has not joined), or the one
/// `setLimit(_:forPeer:)` gave its ROUTER routing id. Connections at their socket's default are also bounded
/// together by `totalLimit`: past it, the largest are cut until the rest fit.
///
/// Memory bound: a connection is cut at the first check after its `unread` passes its limit, so what it makes this
/// process hold stays below `limit + handshakeAllowance + R × checkInterval` wire bytes, R being the rate its bytes
/// arrive at (on loopback ≈ 3.3 GB/s: 16 MB per 5 ms interval; 10 Gb/s: 6 MB), and all connections together below
/// Σ raised limits + `totalLimit` + (their rate) × `checkInterval`, while the guard's thread runs on time. In
/// memory, libzmq keeps a 64-byte message per frame, holding up to 33 bytes itself and a larger payload beside it
/// with 40 bytes of bookkeeping: per wire byte (a frame of s ≤ 255 bytes takes s + 2) that is 64 / (s + 2), up to 32
/// for empty frames, then (104 + s) / (s + 2), under 4, falling to about 1 for large frames. So for a peer sending
/// empty frames the bound is 32 times larger, which is why a socket's default limit is best kept to what a peer
/// that has not joined sends (a hello: a 256 KiB limit holds such a peer to about 8 MiB).
///
/// Watches TCP connections only; a peer's limit is only as sure as its routing id (use CURVE, or anyone may claim a
/// joined worker's id). Descriptors are reused: a connection is shut only while getpeername still gives the address
/// recorded when it was accepted. ZMQ_SRCFD names a descriptor, not a connection, so a message delivered after its
/// connection closed may be credited to the next connection with the same number, which then holds at most one
/// limit more until the next check clamps it.
///
/// Thread-safe: `lock` guards `deliveries`, `peerLimits`, `cuts` and `handshakeFailures`; `watched`,
/// `pairs` and `connections` are used only on the guard's thread once it has started. A watched socket tells its
/// guard of each message it delivers, on the socket's own thread, taking the lock once.
public final class ConnectionGuard: @unchecked Sendable {
    /// Seconds between checks: with loopback's 3.3 GB/s, 16 MB arrive in one; the check is a getsockopt per
    /// connection.
    public static let checkInterval = 0.005
    /// Seconds the thread waits for monitor events while no connection is open (`stop` takes at most this long).
    static let idleWait = 0.1
    /// Bytes credited per delivered frame beyond its payload: ZMTP's frame header (2 or 9 bytes) and, with CURVE,
    /// the MESSAGE command around each frame (33 bytes more).
    public static let framingAllowance = 64
    /// Bytes a connection sends that are never delivered as messages: the ZMTP greeting (64) and handshake (NULL's
    /// READY, or CURVE's HELLO, INITIATE and its metadata: under 1 KiB).
    public static let handshakeAllowance = 4096
    /// Cuts and handshake failures kept until taken; the oldest go first past this.
    static let maximumRecords = 1000

    /// The offset of `tcpi_bytes_received` (RFC 4898's tcpEStatsAppHCThruOctetsReceived, Linux ≥ 4.1) in
    /// <linux/tcp.h>'s struct tcp_info. Glibc's <netinet/tcp.h> declares an older, shorter struct, and the two
    /// headers cannot be imported together; the length the kernel returns shows whether it has the field.
    static let bytesReceivedOffset = 128

    private struct Watched {
        let monitor: SocketMonitor
        let connectionLimit: Int
        var failures = FailedHandshakes()
    }

    private struct Connection {
        /// Its socket's index in `watched`.
        let socket: Int
        /// Where it came from, read when it was accepted (nil when it had already gone).
        let peer: PeerAddress?
        let endpoint: String
        var isCut = false
    }

    /// What the application received from a descriptor: `credited` bytes (`delivered` in the formula), and the
    /// routing id of its last ROUTER message.
    private struct Delivery {
        var credited = 0
        var routingID: [UInt8]?
    }

    private let lock = NSLock()
    private var deliveries: [Int32: Delivery] = [:]
    private var peerLimits: [[UInt8]: Int] = [:]
    private var cuts: [ConnectionCut] = []
    private var handshakeFailures: [HandshakeRefusal] = []
    private var thread: WorkerThread?
    private var watched: [Watched]
    private let pairs: [ZMQSocket]
    private var connections: [Int32: Connection] = [:]
    private let totalLimit: Int

    /// Watches binding `sockets`, each with the limit of its connections that have no limit of their own, and
    /// `totalLimit` on those connections together (bytes; `Int.max` for none). Make it before the sockets bind
    /// (connections accepted earlier are not watched). A socket has one monitor: one that has a guard or a
    /// `HandshakeMonitor` already is refused (EINVAL), and a `Gatekeeper` for it takes this guard.
    public init(context: ZMQContext, watching sockets: [(socket: ZMQSocket, connectionLimit: Int)], totalLimit: Int) throws {
        let events = MonitorEvent.handshakeEvents
        watched = try sockets.enumerated().map { index, entry in
            Watched(monitor: try SocketMonitor(context, entry.socket, events: events, name: "guard-\(index)"),
                    connectionLimit: entry.connectionLimit)
        }
        pairs = watched.map(\.monitor.pair)
        self.totalLimit = totalLimit
        for (socket, _) in sockets { socket.connectionGuard = self }
        thread = WorkerThread { [self] in run($0) }
    }

    /// Stops the thread (its monitor sockets close with it); the watched sockets are no longer bounded.
    public func stop() { thread?.stop() }

    /// Gives the connections of a ROUTER peer `identity` (its routing id) a limit of `bytes`, or with nil their
    /// socket's default again. It applies from the first message the application receives from a connection, which
    /// tells the guard whose the connection is.
    public func setLimit(_ bytes: Int?, forPeer identity: [UInt8]) {
        lock.lock()
        peerLimits[identity] = bytes
        lock.unlock()
    }

    /// The connections cut since the last call.
    public func takeCuts() -> [ConnectionCut] {
        lock.lock()
        defer { lock.unlock() }
        let taken = cuts
        cuts = []
        return taken
    }

    /// The peers whose handshake failed since the last call (a `Gatekeeper` on these sockets takes them).
    public func takeHandshakeFailures() -> [HandshakeRefusal] {
        lock.lock()
        defer { lock.unlock() }
        let taken = handshakeFailures
        handshakeFailures = []
        return taken
    }

    /// Bytes TCP has received on socket `fd` (`tcpi_bytes_received`), or nil for a descriptor that is not a TCP
    /// socket or a kernel without the field.
    public static func bytesReceived(onTCPSocket fd: Int32) -> Int? {
        withUnsafeTemporaryAllocation(of: UInt64.self, capacity: 64) { info in
            var length = socklen_t(info.count * MemoryLayout<UInt64>.size)
            guard getsockopt(fd, Int32(IPPROTO_TCP), TCP_INFO, info.baseAddress, &length) == 0,
                  Int(length) >= bytesReceivedOffset + MemoryLayout<UInt64>.size else { return nil }
            return Int(truncatingIfNeeded: info[bytesReceivedOffset / MemoryLayout<UInt64>.size])
        }
    }

    /// Credits `message`, received from a watched socket; a ROUTER's first frame, `routingID`, tells whose
    /// connection it came from.
    func credit(_ message: DeliveredMessage, routingID: ReceivedFrame?) {
        guard message.descriptor >= 0 else { return }
        let bytes = message.bytes - (routingID?.count ?? 0), frames = message.frames - (routingID == nil ? 0 : 1)
        lock.lock()
        defer { lock.unlock() }
        deliveries[message.descriptor, default: Delivery()].credited += bytes + frames * Self.framingAllowance
        guard let routingID else { return }
        routingID.withUnsafeBytes { id in
            if deliveries[message.descriptor]?.routingID?.elementsEqual(id) != true {
                deliveries[message.descriptor]?.routingID = Array(id)
            }
        }
    }

    private func run(_ thread: WorkerThread) {
        var nextCheck = ProcessInfo.processInfo.systemUptime
        while thread.isRunning {
            let now = ProcessInfo.processInfo.systemUptime
            let wait = connections.isEmpty ? Self.idleWait : max(0.001, nextCheck - now)
            _ = try? ZMQSocket.poll(pairs, timeout: wait)
            readEvents()
            if ProcessInfo.processInfo.systemUptime >= nextCheck {
                check()
                nextCheck = ProcessInfo.processInfo.systemUptime + Self.checkInterval
            }
        }
    }

    private func readEvents() {
        for index in watched.indices {
            while let event = watched[index].monitor.next() {
                let failure = watched[index].failures.note(event) { connections[$0]?.peer?.host ?? "unknown" }
                if let failure { record(failure, in: &handshakeFailures) }
                switch event.kind {
                case ZMQ_EVENT_ACCEPTED:
                    accept(event.value, socket: index, endpoint: event.endpoint)
                case ZMQ_EVENT_DISCONNECTED where connections[event.value]?.socket == index:
                    // Its credits stay: a new connection on the same number may have been credited already, and
                    // its acceptance clamps them.
                    connections[event.value] = nil
                    lock.lock()
                    deliveries[event.value]?.routingID = nil
                    lock.unlock()
                default:
                    break
                }
            }
        }
    }

    private func accept(_ fd: Int32, socket: Int, endpoint: String) {
        let peer = PeerAddress(descriptor: fd)
        connections[fd] = Connection(socket: socket, peer: peer, endpoint: endpoint)
        // Credits an earlier connection with this number left go now, not at the next check.
        lock.lock()
        let credited = deliveries[fd]?.credited ?? 0
        lock.unlock()
        if let received = Self.bytesReceived(onTCPSocket: fd), credited > received { burn([(fd, credited - received)]) }
    }

    /// Checks every connection against its limit, then those at their default against `totalLimit`.
    private func check() {
        let open = connections.filter { !$0.value.isCut && $0.value.peer != nil }
        guard !open.isEmpty else { return }
        // Credits are read before the byte counts, so that every credit is for bytes already counted.
        lock.lock()
        let credits = open.keys.map { ($0, deliveries[$0] ?? Delivery()) }
        let limits = peerLimits
        lock.unlock()
        var excess: [(Int32, Int)] = []
        var atDefault: [(fd: Int32, unread: Int, identity: [UInt8]?)] = []
        for (fd, delivery) in credits {
            guard let received = Self.bytesReceived(onTCPSocket: fd) else {
                connections[fd] = nil
                continue
            }
            if delivery.credited > received { excess.append((fd, delivery.credited - received)) }
            let unread = max(0, received - Self.handshakeAllowance - min(delivery.credited, received))
            if let identity = delivery.routingID, let limit = limits[identity] {
                if unread > limit { cut(fd, unread: unread, limit: limit, identity: identity, overTotal: false) }
            } else if let connection = connections[fd], unread > watched[connection.socket].connectionLimit {
                cut(fd, unread: unread, limit: watched[connection.socket].connectionLimit, identity: delivery.routingID,
                    overTotal: false)
            } else {
                atDefault.append((fd, unread, delivery.routingID))
            }
        }
        if !excess.isEmpty { burn(excess) }
        var total = atDefault.reduce(0) { $0 + $1.unread }
        for (fd, unread, identity) in atDefault.sorted(by: { $0.unread > $1.unread }) where total > totalLimit {
            cut(fd, unread: unread, limit: totalLimit, identity: identity, overTotal: true)
            total -= unread
        }
    }

    /// Takes back credits beyond what the connections have received (`excess` of each descriptor, as read before).
    private func burn(_ excess: [(Int32, Int)]) {
        lock.lock()
        for (fd, bytes) in excess { deliveries[fd]?.credited -= bytes }
        lock.unlock()
    }

    private func cut(_ fd: Int32, unread: Int, limit: Int, identity: [UInt8]?, overTotal: Bool) {
        guard let connection = connections[fd], let peer = connection.peer else { return }
        guard PeerAddress(descriptor: fd) == peer else {
            // Closed, its number reused: not this connection's any more.
            connections[fd] = nil
            return
        }
        Self.disconnect(fd)
        connections[fd]?.isCut = true
        record(ConnectionCut(address: peer.host, port: peer.port, endpoint: connection.endpoint, identity: identity,
                             unread: unread, limit: limit, overTotal: overTotal), in: &cuts)
    }

    /// Ends the TCP connection of `fd` under libzmq, which still owns the descriptor: connect(2) to AF_UNSPEC
    /// dissolves it (the kernel drops what it has queued, resets the peer, and libzmq's next read fails), and
    /// shutdown(2) makes libzmq read EOF should that fail. libzmq then closes the descriptor and discards the
    /// connection's half-received message.
    static func disconnect(_ fd: Int32) {
        var unspecified = sockaddr()
        unspecified.sa_family = sa_family_t(AF_UNSPEC)
        _ = connect(fd, &unspecified, socklen_t(MemoryLayout<sockaddr>.size))
        shutdown(fd, Int32(SHUT_RDWR))
    }

    private func record<Record>(_ record: Record, in records: inout [Record]) {
        lock.lock()
        records.append(record)
        if records.count > Self.maximumRecords { records.removeFirst(records.count - Self.maximumRecords) }
        lock.unlock()
    }
}

/// What one received message came as: the descriptor of its connection (ZMQ_SRCFD of its first frame that has one:
/// a ROUTER's routing id frame has none), and its frames' number and bytes.
struct DeliveredMessage {
    var descriptor: Int32 = -1
    var frames = 0
    var bytes = 0

    mutating func add(_ frame: UnsafeMutablePointer<zmq_msg_t>) {
        frames += 1
        bytes += zmq_msg_size(frame)
        if descriptor < 0 { descriptor = zmq_msg_get(frame, ZMQ_SRCFD) }
    }
}
