import CZMQ
import Foundation

extension CurveKeyPair {
    /// The pair of a Z85 secret key (the public key is derived from it).
    public init(secretKey: String) throws {
        self.init(publicKey: try Self.publicKey(forSecret: secretKey), secretKey: secretKey)
    }

    /// The key pair of a secret key file written by `trainerd keygen` (Z85, 40 characters).
    public static func load(secretKeyFile path: String) throws -> CurveKeyPair {
        try CurveKeyPair(secretKey: try readKey(path, what: "secret key"))
    }

    /// The Z85 key in a file written by `trainerd keygen`.
    public static func readKey(_ path: String, what: String = "public key") throws -> String {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw TransportError("\(path): cannot read the \(what) file", code: ENOENT)
        }
        let key = text.trimmingCharacters(in: .whitespacesAndNewlines)
        var decoded = [UInt8](repeating: 0, count: 32)
        guard key.count == 40, zmq_z85_decode(&decoded, key) != nil else {
            throw TransportError("\(path): not a CURVE \(what) (40 Z85 characters, as trainerd keygen writes)", code: EINVAL)
        }
        return key
    }

    /// Every public key (`*.pub`) in `directory`.
    public static func publicKeys(inDirectory directory: String) throws -> [String: String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else {
            throw TransportError("\(directory): cannot read the allowed keys directory", code: ENOENT)
        }
        var keys: [String: String] = [:]
        for name in names.sorted() where name.hasSuffix(".pub") {
            keys[try readKey((directory as NSString).appendingPathComponent(name))] = String(name.dropLast(4))
        }
        return keys
    }
}

extension ZMQSocket {
    /// Encrypts this (binding) socket with CURVE under `secretKey`; a `Gatekeeper` on the same context decides
    /// who may connect. Plaintext peers fail the handshake.
    public func makeCurveServer(secretKey: String) throws {
        try setOption(ZMQ_CURVE_SERVER, 1)
        try setOption(ZMQ_CURVE_SECRETKEY, bytes: Array(secretKey.utf8))
        try setOption(ZMQ_ZAP_DOMAIN, bytes: Array("trainerd".utf8))
    }

    /// Connects with CURVE as `keys` to a server whose public key is `serverKey`.
    public func makeCurveClient(keys: CurveKeyPair, serverKey: String) throws {
        try setOption(ZMQ_CURVE_SERVERKEY, bytes: Array(serverKey.utf8))
        try setOption(ZMQ_CURVE_PUBLICKEY, bytes: Array(keys.publicKey.utf8))
        try setOption(ZMQ_CURVE_SECRETKEY, bytes: Array(keys.secretKey.utf8))
    }
}

/// A peer the gatekeeper turned away.
public struct HandshakeRefusal: Equatable, Sendable {
    /// The peer's IP address.
    public var address: String
    public var reason: String
}

/// Admits CURVE peers by public key and reports everyone it turns away, with their address.
///
/// It answers libzmq's ZAP requests (RFC 27) on `inproc://zeromq.zap.01` of its context, allowing only
/// `allowedKeys`, and watches the sockets it is given for failed handshakes, which is how a plaintext peer shows
/// (libzmq never asks ZAP about it). Runs on a thread of its own; `takeRefusals` is safe from any thread.
///
/// Thread-safe: `lock` guards `refusals`, `allowed` and `running`; `handler` and `monitors` are used only on the
/// gatekeeper's thread once it has started.
public final class Gatekeeper: @unchecked Sendable {
    private let lock = NSLock()
    private var refusals: [HandshakeRefusal] = []
    private var allowed: [String: String]
    private var running = true
    private let done = DispatchSemaphore(value: 0)
    private let handler: ZMQSocket
    private let monitors: [HandshakeMonitor]

    /// `allowedKeys` maps Z85 public keys to names (the key file's stem). Call before `bind` on the watched sockets.
    public init(context: ZMQContext, allowedKeys: [String: String], watching sockets: [ZMQSocket]) throws {
        allowed = allowedKeys
        handler = try ZMQSocket(context, .reply)
        try handler.bind("inproc://zeromq.zap.01")
        monitors = try sockets.enumerated().map { index, socket in try HandshakeMonitor(context, socket, index: index) }
        Thread.detachNewThread { [self] in
            while isRunning { serve() }
            done.signal()
        }
    }

    private var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        return running
    }

    /// Stops the thread (its sockets close with it).
    public func stop() {
        lock.lock()
        running = false
        lock.unlock()
        done.wait()
    }

    /// Allows another public key (a worker `launch` started with a key it made).
    public func allow(_ publicKey: String, name: String) {
        lock.lock()
        allowed[publicKey] = name
        lock.unlock()
    }

    /// The peers turned away since the last call.
    public func takeRefusals() -> [HandshakeRefusal] {
        lock.lock()
        defer { lock.unlock() }
        let taken = refusals
        refusals = []
        return taken
    }

    private func refuse(_ address: String, _ reason: String) {
        lock.lock()
        refusals.append(HandshakeRefusal(address: address, reason: reason))
        lock.unlock()
    }

    /// Waits up to 0.1 s for ZAP requests and monitor events and handles them. Monitor events are read as
    /// soon as they come, so that an accepted connection's address is looked up while it is still open.
    private func serve() {
        guard let ready = try? ZMQSocket.poll([handler] + monitors.map(\.pair), timeout: 0.1) else { return }
        if ready[0], let request = try? handler.receive(timeout: 0) { answer(request, on: handler) }
        for monitor in monitors {
            while let failure = monitor.nextFailure() { refuse(failure.address, failure.reason) }
        }
    }

    /// A ZAP request: version, request id, domain, address, routing id, mechanism, credentials…
    private func answer(_ request: [[UInt8]], on handler: ZMQSocket) {
        guard request.count >= 6 else { return }
        let address = String(decoding: request[3], as: UTF8.self)
        let mechanism = String(decoding: request[5], as: UTF8.self)
        var status = "400", text = "not allowed"
        if mechanism == "CURVE", request.count >= 7, request[6].count == 32 {
            var z85 = [CChar](repeating: 0, count: 41)
            _ = zmq_z85_encode(&z85, request[6], 32)
            let key = String(cString: z85)
            lock.lock()
            let name = allowed[key]
            lock.unlock()
            if let name {
                (status, text) = ("200", "OK \(name)")
            } else {
                refuse(address, "CURVE key \(key) is not in the allowed keys")
            }
        } else {
            refuse(address, "\(mechanism) security is not accepted")
        }
        try? handler.send([Array("1.0".utf8), request[1], Array(status.utf8), Array(text.utf8), [], []])
    }
}

/// Reads a socket's monitor events and turns failed handshakes into refusals with the peer's address: an
/// accepted connection's address is looked up from its descriptor, and the handshake failure is reported when
/// that connection closes. On a connecting socket, a refusal by the server's ZAP handler is reported at once.
public final class HandshakeMonitor {
    let pair: ZMQSocket
    private var addresses: [Int32: String] = [:]
    private var failed: String?

    public init(_ context: ZMQContext, _ socket: ZMQSocket, index: Int = 0, connecting: Bool = false) throws {
        let endpoint = "inproc://trainerd-monitor-\(UInt(bitPattern: ObjectIdentifier(socket).hashValue))-\(index)"
        let events = ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
            | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | (connecting ? ZMQ_EVENT_HANDSHAKE_FAILED_AUTH : 0)
        guard zmq_socket_monitor(try socket.rawHandle, endpoint, events) == 0 else {
            throw TransportError("monitoring a socket")
        }
        pair = try ZMQSocket(context, .pair)
        try pair.connect(endpoint)
    }

    /// The next connection that failed its handshake, if any (does not wait).
    public func nextFailure() -> (address: String, reason: String)? {
        while let frames = try? pair.receive(timeout: 0), let first = frames.first, first.count >= 6 {
            let event = Int32(UInt16(first[0]) | UInt16(first[1]) << 8)
            let value = first[2...5].reversed().reduce(Int32(0)) { $0 << 8 | Int32($1) }
            switch event {
            case ZMQ_EVENT_ACCEPTED:
                addresses[value] = peerAddress(value)
            case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
                // Only a connecting socket sees this: the server's ZAP handler said no (a binding socket's own
                // refusals come from the gatekeeper).
                return ("the server", "refused this key (ZAP status \(value))")
            case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
                failed = value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
                    ? "no CURVE handshake (a plaintext peer, or another security mechanism)"
                    : "a malformed handshake (ZMTP protocol error \(String(value, radix: 16)))"
            case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                // A plaintext peer often shows only as a closed pipe in libzmq 4.3, not as a mechanism mismatch.
                failed = "no CURVE handshake (a plaintext peer, or a wrong server key): \(String(cString: strerror(value)))"
            case ZMQ_EVENT_DISCONNECTED:
                let address = addresses.removeValue(forKey: value) ?? "unknown"
                if let reason = failed {
                    failed = nil
                    return (address, reason)
                }
            default:
                break
            }
        }
        return nil
    }

    private func peerAddress(_ descriptor: Int32) -> String {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(descriptor, $0, &length) == 0 }
        }
        guard ok else { return "unknown" }
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        let found = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, length, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0
            }
        }
        return found ? String(cString: host) : "unknown"
    }
}
