import CZMQ
import Foundation

/// A ZeroMQ error with the operation and endpoint it concerns.
public struct TransportError: Error, Equatable, CustomStringConvertible {
    public var description: String
    public var code: Int32

    init(_ what: String, code: Int32 = zmq_errno()) {
        self.code = code
        description = "\(what): \(String(cString: zmq_strerror(code)))"
    }
}

/// One libzmq context per process; sockets keep it alive. Sendable because libzmq contexts are thread-safe.
public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    public init() {
        handle = zmq_ctx_new()
    }

    deinit { zmq_ctx_term(handle) }

    /// Whether libzmq was built with CURVE security (libsodium).
    public static var hasCurve: Bool { zmq_has("curve") != 0 }
}

/// A CURVE key pair in Z85 text (40 characters each), as `zmq_curve_keypair` makes it.
public struct CurveKeyPair: Equatable, Sendable {
    public var publicKey: String
    public var secretKey: String

    public static func generate() throws -> CurveKeyPair {
        var publicKey = [CChar](repeating: 0, count: 41), secretKey = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&publicKey, &secretKey) == 0 else { throw TransportError("generating a CURVE key pair") }
        return CurveKeyPair(publicKey: String(cString: publicKey), secretKey: String(cString: secretKey))
    }

    /// The public key that belongs to a Z85 secret key.
    public static func publicKey(forSecret secretKey: String) throws -> String {
        var publicKey = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&publicKey, secretKey) == 0 else { throw TransportError("deriving a CURVE public key") }
        return String(cString: publicKey)
    }
}

/// Bounds set on a socket when it is made, before it binds or connects (libzmq applies a socket's options to the
/// connections of an endpoint as they were when it was bound or connected).
public struct SocketLimits: Sendable {
    /// Bytes of the largest frame accepted: a larger one drops the connection in libzmq before it is buffered.
    public var maximumFrame: Int?
    /// Messages queued per peer before sends to it fail (a ROUTER) or are dropped for it (a publisher).
    public var sendQueue: Int32?
    /// Bytes of each connection's kernel send buffer (SO_SNDBUF), when not the system's.
    public var sendBuffer: Int32?

    public init(maximumFrame: Int? = nil, sendQueue: Int32? = nil, sendBuffer: Int32? = nil) {
        self.maximumFrame = maximumFrame
        self.sendQueue = sendQueue
        self.sendBuffer = sendBuffer
    }
}

/// A ZeroMQ socket that moves multipart messages (arrays of frames) and knows nothing of their encoding.
/// Linger is 0, so closing never waits for unsent messages.
///
/// A ROUTER never waits on a peer: a send to a peer whose queue is full fails at once with EAGAIN, to one that is
/// not connected with EHOSTUNREACH, and a routing id belongs to the connection that has it (no handover), so no
/// other peer can take over a connected peer's messages.
public final class ZMQSocket {
    public enum Kind {
        /// `xpublisher` is a PUB socket that also receives subscriptions (first byte 1: subscribe).
        /// `reply` answers ZAP requests; `pair` reads a socket monitor's events.
        case router, dealer, publisher, xpublisher, subscriber, reply, pair

        var zmqType: Int32 {
            switch self {
            case .router: return ZMQ_ROUTER
            case .dealer: return ZMQ_DEALER
            case .publisher: return ZMQ_PUB
            case .xpublisher: return ZMQ_XPUB
            case .subscriber: return ZMQ_SUB
            case .reply: return ZMQ_REP
            case .pair: return ZMQ_PAIR
            }
        }
    }

    private var handle: UnsafeMutableRawPointer?
    private let context: ZMQContext
    public let kind: Kind
    /// Zero-copy bytes queued per peer (a ROUTER's).
    public let ledger = SendLedger()
    /// A ROUTER's and an XPUB's sends fail with EAGAIN rather than wait for a peer with a full queue.
    private var neverWaits: Bool { kind == .router || kind == .xpublisher }

    public init(_ context: ZMQContext, _ kind: Kind, limits: SocketLimits = SocketLimits()) throws {
        guard let socket = zmq_socket(context.handle, kind.zmqType) else { throw TransportError("cannot create a socket") }
        self.context = context
        self.kind = kind
        handle = socket
        try setOption(ZMQ_LINGER, 0)
        if kind == .router { try setOption(ZMQ_ROUTER_MANDATORY, 1) }
        if let bytes = limits.maximumFrame { try setInt64Option(ZMQ_MAXMSGSIZE, Int64(bytes)) }
        if let messages = limits.sendQueue { try setOption(ZMQ_SNDHWM, messages) }
        if let bytes = limits.sendBuffer { try setOption(ZMQ_SNDBUF, bytes) }
    }

    deinit { close() }

    public func close() {
        if let handle { zmq_close(handle) }
        handle = nil
    }

    public func close(deliveringWithin seconds: Double) {
        try? setOption(ZMQ_LINGER, Int32(seconds * 1000))
        close()
    }

    /// Waits up to `timeout` seconds until one of `sockets` has a message; returns which have.
    public static func poll(_ sockets: [ZMQSocket], timeout: Double) throws -> [Bool] {
        var items = try sockets.map { zmq_pollitem_t(socket: try $0.socket, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0) }
        guard zmq_poll(&items, Int32(items.count), Int(timeout * 1000)) >= 0 else {
            if zmq_errno() == EINTR { return sockets.map { _ in false } }
            throw TransportError("polling")
        }
        return items.map { $0.revents & Int16(ZMQ_POLLIN) != 0 }
    }

    /// The libzmq socket, for calls this class does not wrap (a monitor).
    var rawHandle: UnsafeMutableRawPointer { get throws { try socket } }

    private var socket: UnsafeMutableRawPointer {
        get throws {
            guard let handle else { throw TransportError("socket is closed", code: ENOTSOCK) }
            return handle
        }
    }

    public func setOption(_ option: Int32, _ value: Int32) throws {
        var value = value
        guard zmq_setsockopt(try socket, option, &value, MemoryLayout<Int32>.size) == 0 else {
            throw TransportError("setting socket option \(option)")
        }
    }

    public func setInt64Option(_ option: Int32, _ value: Int64) throws {
        var value = value
        guard zmq_setsockopt(try socket, option, &value, MemoryLayout<Int64>.size) == 0 else {
            throw TransportError("setting socket option \(option)")
        }
    }

    public func setOption(_ option: Int32, bytes: [UInt8]) throws {
        guard zmq_setsockopt(try socket, option, bytes, bytes.count) == 0 else {
            throw TransportError("setting socket option \(option)")
        }
    }

    /// A DEALER's routing id at the ROUTER it connects to (set before connecting).
    public func setIdentity(_ identity: String) throws { try setIdentity(bytes: Array(identity.utf8)) }
    public func setIdentity(bytes: [UInt8]) throws { try setOption(ZMQ_ROUTING_ID, bytes: bytes) }

    /// A routing id for one connection: 16 random bytes, the first not 0 (libzmq's own ids start with 0), so that no
    /// other peer can guess it.
    public static func connectionIdentity() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return [UInt8.random(in: 1...255, using: &generator)] + (1..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    public func subscribe(prefix: [UInt8] = []) throws { try setOption(ZMQ_SUBSCRIBE, bytes: prefix) }

    /// XPUB: subscription messages go to the application, which applies them (`applySubscription`), not libzmq.
    public func takeSubscriptionsManually() throws { try setOption(ZMQ_XPUB_MANUAL, 1) }

    /// XPUB with manual subscriptions: applies (or removes) `topic` for the subscriber whose message was received
    /// last.
    public func applySubscription(to topic: [UInt8], subscribe: Bool) throws {
        try setOption(subscribe ? ZMQ_SUBSCRIBE : ZMQ_UNSUBSCRIBE, bytes: topic)
    }

    /// XPUB: whether a send fails with EAGAIN when a subscriber's queue is full (true), or drops the message for that
    /// subscriber alone (false, libzmq's default).
    public func setFailsWhenASubscriberIsFull(_ fails: Bool) throws { try setOption(ZMQ_XPUB_NODROP, fails ? 1 : 0) }

    public func bind(_ endpoint: String) throws {
        guard zmq_bind(try socket, endpoint) == 0 else { throw TransportError("cannot bind \(endpoint)") }
    }

    public func connect(_ endpoint: String) throws {
        guard zmq_connect(try socket, endpoint) == 0 else { throw TransportError("cannot connect to \(endpoint)") }
    }

    /// The endpoint actually bound (resolves a wildcard port such as tcp://127.0.0.1:*).
    public var lastEndpoint: String {
        get throws {
            var buffer = [CChar](repeating: 0, count: 256)
            var size = buffer.count
            guard zmq_getsockopt(try socket, ZMQ_LAST_ENDPOINT, &buffer, &size) == 0 else {
                throw TransportError("reading the bound endpoint")
            }
            return String(cString: buffer)
        }
    }

    /// Frames of one received message kept in memory; a message with more is returned cut to one frame over.
    public var maximumFrames = Int.max

    /// The guard told of every message this (binding) socket delivers, set by `ConnectionGuard.init`.
    var connectionGuard: ConnectionGuard?
    /// Whether a `SocketMonitor` reads this socket's events (libzmq allows one monitor per socket).
    var isMonitored = false

    /// Frames at least this large are handed to libzmq without a copy.
    public static let zeroCopyThreshold = 4096

    /// Sends all frames as one message. A ROUTER's first frame is the peer's identity, and its sends never wait
    /// (see the type's comment). Large frames (tensors) are sent zero-copy: libzmq reads the array's own storage and
    /// releases it when the bytes are on the wire; until then a ROUTER counts them in `ledger`.
    public func send(_ frames: [[UInt8]]) throws { try send(frames: frames.map(OutgoingFrame.bytes)) }

    /// The same for frames that may hold float32 values, which large frames send from the float array itself.
    public func send(frames: [OutgoingFrame]) throws {
        let socket = try self.socket
        let now = Date().timeIntervalSince1970
        let peer = kind == .router ? frames.first?.byteArray : nil
        for (index, frame) in frames.enumerated() {
            let flags = (index < frames.count - 1 ? ZMQ_SNDMORE : 0) | (neverWaits ? ZMQ_DONTWAIT : 0)
            let sent: Int32
            let box = FrameBox(frame)
            if box.count >= Self.zeroCopyThreshold {
                if let peer { box.onRelease = ledger.add(peer: peer, bytes: box.count, sent: now) }
                // The box keeps the (immutable) array, and so its storage, alive until libzmq calls back.
                let retained = Unmanaged.passRetained(box)
                var message = zmq_msg_t()
                guard zmq_msg_init_data(&message, box.baseAddress, box.count, { _, hint in
                    Unmanaged<FrameBox>.fromOpaque(hint!).release()
                }, retained.toOpaque()) == 0 else {
                    retained.release()
                    throw TransportError("preparing frame \(index) of \(frames.count)")
                }
                sent = zmq_msg_send(&message, socket, flags)
                if sent < 0 { zmq_msg_close(&message) }
            } else {
                sent = zmq_send(socket, box.count > 0 ? box.baseAddress : nil, box.count, flags)
            }
            guard sent >= 0 else { throw TransportError("sending frame \(index) of \(frames.count)") }
        }
    }

    /// The next whole message, or nil when none arrives within `timeout` seconds (0 polls without waiting).
    /// A ROUTER's first frame is the sender's identity.
    public func receive(timeout: Double) throws -> [[UInt8]]? {
        try receive(timeout: timeout, wakingOn: nil)
    }

    public func receive(timeout: Double, wakingOn fd: Int32) throws -> [[UInt8]]? {
        try receive(timeout: timeout, wakingOn: Optional(fd))
    }

    private func receive(timeout: Double, wakingOn fd: Int32?) throws -> [[UInt8]]? {
        try receiveFrames(timeout: timeout, wakingOn: fd)?.map(\.bytes)
    }

    /// The next whole message with each frame left in libzmq's buffer (no copy), or nil when none arrives within
    /// `timeout` seconds or as soon as `fd` is readable.
    public func receiveFrames(timeout: Double, wakingOn fd: Int32?) throws -> [ReceivedFrame]? {
        let socket = try self.socket
        var items = [zmq_pollitem_t(socket: socket, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)]
        if let fd { items.append(zmq_pollitem_t(socket: nil, fd: fd, events: Int16(ZMQ_POLLIN), revents: 0)) }
        let ready = zmq_poll(&items, Int32(items.count), Int(timeout * 1000))
        guard ready >= 0 else {
            if zmq_errno() == EINTR { return nil }
            throw TransportError("polling")
        }
        guard items[0].revents & Int16(ZMQ_POLLIN) != 0 else { return nil }
        var frames: [ReceivedFrame] = []
        var delivered = connectionGuard.map { _ in DeliveredMessage() }
        var more = true
        while more {
            let frame = ReceivedFrame()
            guard zmq_msg_recv(frame.message, socket, 0) >= 0 else { throw TransportError("receiving") }
            if frames.count == 1, kind == .router {
                // The connection's properties, read from the first frame it sent, go with the routing id.
                frames[0].peerAddress = frame.property("Peer-Address")
                frames[0].userID = frame.property("User-Id")
            }
            more = zmq_msg_more(frame.message) != 0
            // Frames past the limit are read and thrown away; the message, one frame too long, fails decoding.
            if frames.count <= maximumFrames { frames.append(frame) }
            delivered?.add(frame.message!)
        }
        if let connectionGuard, let delivered { connectionGuard.credit(delivered, routingID: kind == .router ? frames.first : nil) }
        return frames
    }
}

/// One received frame. From a ZeroMQ socket its bytes stay in libzmq's message buffer, released with the frame,
/// so reading a tensor from it copies once, straight into the tensor.
///
/// Used by one thread at a time: handing a frame to another thread (a daemon's loop to a job) hands it over.
public final class ReceivedFrame: @unchecked Sendable {
    fileprivate let message: UnsafeMutablePointer<zmq_msg_t>?
    private let array: [UInt8]

    fileprivate init() {
        message = .allocate(capacity: 1)
        zmq_msg_init(message)
        array = []
    }

    /// A frame held in an array (transports that have no buffers of their own).
    public init(_ bytes: [UInt8]) {
        message = nil
        array = bytes
    }

    /// A routing-id frame held in an array, with its connection's properties (a message passed on in-process).
    public convenience init(_ bytes: [UInt8], peerAddress: String?, userID: String?) {
        self.init(bytes)
        self.peerAddress = peerAddress
        self.userID = userID
    }

    deinit {
        if let message {
            zmq_msg_close(message)
            message.deallocate()
        }
    }

    public var count: Int { message.map { zmq_msg_size($0) } ?? array.count }

    /// On the routing id frame of a message a ROUTER received: the sending connection's remote address and (with
    /// CURVE) the user id its ZAP handler gave.
    public fileprivate(set) var peerAddress: String?
    public fileprivate(set) var userID: String?

    /// A metadata property of a received frame ("Peer-Address", "User-Id", …), if it has one.
    public func property(_ name: String) -> String? {
        guard let message, let value = zmq_msg_gets(message, name) else { return nil }
        return String(cString: value)
    }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        guard let message else { return try array.withUnsafeBytes(body) }
        return try body(UnsafeRawBufferPointer(start: zmq_msg_data(message), count: zmq_msg_size(message)))
    }

    /// The bytes, copied.
    public var bytes: [UInt8] { message == nil ? array : withUnsafeBytes { Array($0) } }
}

/// A frame to send: bytes, or float32 values that go out as their little-endian bytes.
public enum OutgoingFrame {
    case bytes([UInt8])
    case floats([Float])

    public var count: Int {
        switch self {
        case let .bytes(bytes): return bytes.count
        case let .floats(values): return 4 * values.count
        }
    }

    /// The frame's bytes, copied (for transports that keep no reference to the array).
    public var byteArray: [UInt8] {
        switch self {
        case let .bytes(bytes): return bytes
        case let .floats(values):
            #if _endian(little)
            return values.withUnsafeBytes { Array($0) }
            #else
            return values.flatMap { value in withUnsafeBytes(of: value.bitPattern.littleEndian) { Array($0) } }
            #endif
        }
    }
}

/// Owns a frame's array while libzmq sends its bytes without copying.
private final class FrameBox {
    let owner: Any
    let baseAddress: UnsafeMutableRawPointer?
    let count: Int
    /// Called when libzmq releases the frame.
    var onRelease: (@Sendable () -> Void)?

    deinit { onRelease?() }

    init(_ frame: OutgoingFrame) {
        // An array held in a `let` is never reallocated or written, so its storage stays where it is.
        switch frame {
        case let .bytes(bytes):
            owner = bytes
            baseAddress = bytes.withUnsafeBytes { $0.baseAddress.map(UnsafeMutableRawPointer.init(mutating:)) }
            count = bytes.count
        case let .floats(values):
            #if _endian(little)
            owner = values
            baseAddress = values.withUnsafeBytes { $0.baseAddress.map(UnsafeMutableRawPointer.init(mutating:)) }
            count = values.count * 4
            #else
            let bytes = frame.byteArray
            owner = bytes
            baseAddress = bytes.withUnsafeBytes { $0.baseAddress.map(UnsafeMutableRawPointer.init(mutating:)) }
            count = bytes.count
            #endif
        }
    }
}
