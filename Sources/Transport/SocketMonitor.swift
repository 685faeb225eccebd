import CZMQ
import Foundation

/// A socket's libzmq monitor, read without waiting. libzmq allows one monitor per socket: a second
/// `zmq_socket_monitor` on it replaces the first, so each socket has one reader of its events (a binding socket's
/// is its `ConnectionGuard`, a connecting one's its `HandshakeMonitor`).
final class SocketMonitor {
    /// The PAIR socket the events arrive on; it wakes a poll when one is waiting.
    let pair: ZMQSocket

    /// Starts monitoring `events` (ZMQ_EVENT_… flags) of `socket`; `name` goes into the monitor's endpoint, which a
    /// UUID makes unique (a closed socket's monitor can keep its endpoint a while, and its address can be reused).
    init(_ context: ZMQContext, _ socket: ZMQSocket, events: Int32, name: String) throws {
        guard !socket.isMonitored else {
            throw TransportError("monitoring a socket that has a monitor already (libzmq allows one)", code: EINVAL)
        }
        let endpoint = "inproc://trainerd-monitor-\(name)-\(UUID().uuidString)"
        guard zmq_socket_monitor(try socket.rawHandle, endpoint, events) == 0 else {
            throw TransportError("monitoring a socket")
        }
        socket.isMonitored = true
        pair = try ZMQSocket(context, .pair)
        try pair.connect(endpoint)
    }

    /// The next event, if one is waiting.
    func next() -> MonitorEvent? {
        while let frames = try? pair.receive(timeout: 0) {
            if let event = MonitorEvent(frames) { return event }
        }
        return nil
    }
}

/// One monitor event as libzmq 4.3 sends it: a frame of the event (2 bytes) and its value (4 bytes: a descriptor for
/// ACCEPTED and DISCONNECTED, an error or status code for a failure), then a frame of the endpoint.
struct MonitorEvent {
    let kind: Int32
    let value: Int32
    /// The endpoint of the socket's listener (for an accepted connection) or of the connection.
    let endpoint: String

    init?(_ frames: [[UInt8]]) {
        guard let first = frames.first, first.count >= 6 else { return nil }
        kind = Int32(UInt16(first[0]) | UInt16(first[1]) << 8)
        value = first[2...5].reversed().reduce(Int32(0)) { $0 << 8 | Int32($1) }
        endpoint = frames.count > 1 ? String(decoding: frames[1], as: UTF8.self) : ""
    }

    /// The events that tell a binding socket's failed handshakes (`FailedHandshakes`).
    static let handshakeEvents = ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
        | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL

    /// Why the handshake failed, for a failure event a binding socket sees.
    var handshakeFailure: String? {
        switch kind {
        case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
            return value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
                ? "no CURVE handshake (a plaintext peer, or another security mechanism)"
                : "a malformed handshake (ZMTP protocol error \(String(value, radix: 16)))"
        case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            // A plaintext peer often shows only as a closed pipe in libzmq 4.3, not as a mechanism mismatch.
            return "no CURVE handshake (a plaintext peer, or a wrong server key): \(String(cString: strerror(value)))"
        default:
            return nil
        }
    }
}

/// Pairs a binding socket's failed handshakes with their connections: libzmq reports the failure (without the
/// descriptor), then the disconnection of that connection's descriptor.
struct FailedHandshakes {
    private var failed: String?

    /// The refusal `event` completes, with the address `address` gives for a descriptor (read before the caller
    /// forgets the connection).
    mutating func note(_ event: MonitorEvent, address: (Int32) -> String) -> HandshakeRefusal? {
        if let reason = event.handshakeFailure {
            failed = reason
        } else if event.kind == ZMQ_EVENT_DISCONNECTED, let reason = failed {
            failed = nil
            return HandshakeRefusal(address: address(event.value), reason: reason)
        }
        return nil
    }
}

/// The remote end of a connected socket (getpeername), read as soon as it is accepted: once the connection is
/// closed its descriptor tells nothing, or tells of the next connection that gets the same number.
struct PeerAddress: Equatable {
    /// The numeric IP address.
    var host: String
    var port: Int

    init?(descriptor: Int32) {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let connected = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(descriptor, $0, &length) == 0 }
        }
        guard connected else { return nil }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST)), service = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let found = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, length, &host, socklen_t(host.count), &service, socklen_t(service.count),
                            NI_NUMERICHOST | NI_NUMERICSERV) == 0
            }
        }
        guard found else { return nil }
        self.host = String(cString: host)
        port = Int(String(cString: service)) ?? 0
    }
}
