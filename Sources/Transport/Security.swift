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
/// `allowedKeys`, on a thread of its own. Failed handshakes, which is how a plaintext peer shows (libzmq never asks
/// ZAP about it), come from the `ConnectionGuard` of the watched sockets, which reads their monitors (a socket has
/// only one). `takeRefusals` is safe from any thread.
///
/// Thread-safe: `lock` guards `refusals` and `allowed`; `handler` is used only on the gatekeeper's
/// thread once it has started.
public final class Gatekeeper: @unchecked Sendable {
    private let lock = NSLock()
    private var refusals: [HandshakeRefusal] = []
    private var allowed: [String: String]
    private var thread: WorkerThread?
    private let handler: ZMQSocket
    private let connectionGuard: ConnectionGuard
    /// Whether `stop` stops the guard too (the gatekeeper made it).
    private let ownsGuard: Bool

    /// `allowedKeys` maps Z85 public keys to names (the key file's stem). Call before `bind` on the watched sockets.
    /// It watches `sockets` with a guard of its own that bounds nothing; to bound them too, make the
    /// `ConnectionGuard` and use `init(context:allowedKeys:guard:)`.
    public convenience init(context: ZMQContext, allowedKeys: [String: String], watching sockets: [ZMQSocket]) throws {
        let unbounded = try ConnectionGuard(context: context, watching: sockets.map { ($0, Int.max) }, totalLimit: .max)
        try self.init(context: context, allowedKeys: allowedKeys, guard: unbounded, owningGuard: true)
    }

    /// The same for the sockets `connectionGuard` watches, whose handshake failures it reports as refusals (the
    /// guard's owner stops it, after the gatekeeper).
    public convenience init(context: ZMQContext, allowedKeys: [String: String], guard connectionGuard: ConnectionGuard) throws {
        try self.init(context: context, allowedKeys: allowedKeys, guard: connectionGuard, owningGuard: false)
    }

    private init(context: ZMQContext, allowedKeys: [String: String], guard connectionGuard: ConnectionGuard,
                 owningGuard: Bool) throws {
        allowed = allowedKeys
        self.connectionGuard = connectionGuard
        ownsGuard = owningGuard
        do {
            handler = try ZMQSocket(context, .reply)
            try handler.bind("inproc://zeromq.zap.01")
        } catch {
            if owningGuard { connectionGuard.stop() }
            throw error
        }
        thread = WorkerThread { [self] thread in
            while thread.isRunning { serve() }
        }
    }

    /// Stops the thread (its socket closes with it), and the guard the gatekeeper made.
    public func stop() {
        thread?.stop()
        if ownsGuard { connectionGuard.stop() }
    }

    /// Allows another public key (a worker `launch` started with a key it made).
    public func allow(_ publicKey: String, name: String) {
        lock.lock()
        allowed[publicKey] = name
        lock.unlock()
    }

    /// The peers turned away since the last call: by ZAP, then by failed handshakes.
    public func takeRefusals() -> [HandshakeRefusal] {
        lock.lock()
        let taken = refusals
        refusals = []
        lock.unlock()
        return taken + connectionGuard.takeHandshakeFailures()
    }

    private func refuse(_ address: String, _ reason: String) {
        lock.lock()
        refusals.append(HandshakeRefusal(address: address, reason: reason))
        lock.unlock()
    }

    /// Waits up to 0.1 s for a ZAP request and answers it.
    private func serve() {
        if let request = try? handler.receive(timeout: 0.1) { answer(request, on: handler) }
    }

    /// A ZAP request: version, request id, domain, address, routing id, mechanism, credentials…
    private func answer(_ request: [[UInt8]], on handler: ZMQSocket) {
        guard request.count >= 6 else { return }
        let address = String(decoding: request[3], as: UTF8.self)
        let mechanism = String(decoding: request[5], as: UTF8.self)
        var status = "400", text = "not allowed", userID = ""
        if mechanism == "CURVE", request.count >= 7, request[6].count == 32 {
            var z85 = [CChar](repeating: 0, count: 41)
            _ = zmq_z85_encode(&z85, request[6], 32)
            let key = String(cString: z85)
            lock.lock()
            let name = allowed[key]
            lock.unlock()
            if let name {
                // The key is the user id of every message from the connection (its "User-Id" property).
                (status, text, userID) = ("200", "OK \(name)", key)
            } else {
                refuse(address, "CURVE key \(key) is not in the allowed keys")
            }
        } else {
            refuse(address, "\(mechanism) security is not accepted")
        }
        try? handler.send([Array("1.0".utf8), request[1], Array(status.utf8), Array(text.utf8), Array(userID.utf8), []])
    }
}

/// Reads a socket's monitor events and turns failed handshakes into refusals with the peer's address: an
/// accepted connection's address is looked up from its descriptor, and the handshake failure is reported when
/// that connection closes. On a connecting socket, a refusal by the server's ZAP handler is reported at once.
/// (The coordinator's binding sockets have a `ConnectionGuard` instead, which does the same.)
public final class HandshakeMonitor {
    private let monitor: SocketMonitor
    private var addresses: [Int32: String] = [:]
    private var failures = FailedHandshakes()

    public init(_ context: ZMQContext, _ socket: ZMQSocket, index: Int = 0, connecting: Bool = false) throws {
        let events = MonitorEvent.handshakeEvents | (connecting ? ZMQ_EVENT_HANDSHAKE_FAILED_AUTH : 0)
        monitor = try SocketMonitor(context, socket, events: events, name: "handshake-\(index)")
    }

    /// The next connection that failed its handshake, if any (does not wait).
    public func nextFailure() -> (address: String, reason: String)? {
        while let event = monitor.next() {
            switch event.kind {
            case ZMQ_EVENT_ACCEPTED:
                addresses[event.value] = PeerAddress(descriptor: event.value)?.host ?? "unknown"
            case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
                // Only a connecting socket sees this: the server's ZAP handler said no (a binding socket's own
                // refusals come from the gatekeeper).
                return ("the server", "refused this key (ZAP status \(event.value))")
            default:
                let refusal = failures.note(event) { addresses[$0] ?? "unknown" }
                if event.kind == ZMQ_EVENT_DISCONNECTED { addresses[event.value] = nil }
                if let refusal { return (refusal.address, refusal.reason) }
            }
        }
        return nil
    }
}
