import Foundation
import Glibc
import Transport
import XCTest

/// `ConnectionGuard` on loopback: a peer speaking raw ZMTP streams one message that never ends (which libzmq would
/// buffer whole) and is cut, with the process's memory held below the guard's bound, while honest libzmq peers,
/// large messages included, go on as before.
final class ConnectionGuardTests: XCTestCase {
    let context = ZMQContext()
    static let kib = 1024, mib = 1024 * 1024

    /// The guard's bound for a connection (limit + handshake allowance + what arrives in one check interval, ≈ 16 MB
    /// at loopback's 3.3 GB/s), with room for three more intervals of a busy machine's scheduling delay and for
    /// the allocator: 64 MiB over the limit.
    func memoryBound(limit: Int) -> Int { limit + ConnectionGuard.handshakeAllowance + 64 * Self.mib }

    func testAnEndlessMessageIsCutWithinTheBoundAndTheRouterServesHonestPeersAfter() throws {
        let router = try ZMQSocket(context, .router)
        let limit = 4 * Self.mib
        let connectionGuard = try ConnectionGuard(context: context, watching: [(router, limit)], totalLimit: 64 * Self.mib)
        defer { connectionGuard.stop() }
        try router.bind("tcp://127.0.0.1:*")

        let memory = MemorySampler()
        let attacker = try RawZMTPPeer(port: try port(of: router), socketType: "DEALER")
        let started = Date()
        let stream = attacker.stream(RawZMTPPeer.frame([UInt8](repeating: 7, count: 80 * Self.kib), more: true))
        var cut: ConnectionCut?
        try waitUntil(seconds: 30, "the guard cuts the endless message") {
            memory.sample()
            cut = connectionGuard.takeCuts().first
            return cut != nil
        }
        let timeToCut = Date().timeIntervalSince(started)
        try waitUntil(seconds: 30, "the attacker sees its connection closed") {
            memory.sample()
            return stream.isFinished
        }
        let cutAt = try XCTUnwrap(cut)
        XCTAssertTrue(stream.closed, "the stream ended at its deadline, not at a closed connection")
        XCTAssertEqual(cutAt.address, "127.0.0.1")
        XCTAssertEqual(cutAt.port, attacker.localPort)
        XCTAssertEqual(cutAt.limit, limit)
        XCTAssertFalse(cutAt.overTotal)
        XCTAssertGreaterThan(cutAt.unread, limit)
        XCTAssertLessThanOrEqual(cutAt.unread, stream.sent, "the greeting and READY fit in the handshake allowance")
        XCTAssertLessThan(memory.peakGrowth, memoryBound(limit: limit), "\(memory)")
        print("endless message: \(stream.sent) bytes sent, cut after \(String(format: "%.3f", timeToCut)) s with \(cutAt.unread) bytes unread; \(memory); \(cutAt)")

        try assertExchanges(router)
        XCTAssertEqual(connectionGuard.takeCuts(), [], "honest peers are not cut")
    }

    /// A message larger than the default limit arrives whole from a peer whose limit was raised by its identity;
    /// the same message from a peer at the default limit is cut.
    func testALargeMessageFromAPeerWithARaisedLimitIsDelivered() throws {
        let router = try ZMQSocket(context, .router)
        let limit = 1 * Self.mib
        let connectionGuard = try ConnectionGuard(context: context, watching: [(router, limit)], totalLimit: 64 * Self.mib)
        defer { connectionGuard.stop() }
        try router.bind("tcp://127.0.0.1:*")
        let large = (0..<20).map { [UInt8](repeating: UInt8($0), count: Self.mib) }

        let trusted = try dealer(to: router, identity: "trusted")
        try trusted.send([Array("hello".utf8)])
        XCTAssertEqual(try router.receive(timeout: 10), [Array("trusted".utf8), Array("hello".utf8)])
        connectionGuard.setLimit(64 * Self.mib, forPeer: Array("trusted".utf8))
        try trusted.send(large)
        let received = try XCTUnwrap(try router.receive(timeout: 30), "the large message arrives")
        XCTAssertEqual(received, [Array("trusted".utf8)] + large)
        XCTAssertEqual(connectionGuard.takeCuts(), [])

        let stranger = try dealer(to: router, identity: "stranger")
        try stranger.send([Array("hello".utf8)])
        XCTAssertEqual(try router.receive(timeout: 10), [Array("stranger".utf8), Array("hello".utf8)])
        try stranger.send(large)
        var cuts: [ConnectionCut] = []
        try waitUntil(seconds: 30, "the peer at the default limit is cut") {
            cuts += connectionGuard.takeCuts()
            return !cuts.isEmpty
        }
        XCTAssertEqual(cuts.map(\.identity), [Array("stranger".utf8)])
        XCTAssertEqual(cuts.first?.limit, limit)
        XCTAssertNil(try router.receive(timeout: 0.2), "the cut message is not delivered")
        try assertExchanges(router)
    }

    /// Subscriptions are tiny and never credited (libzmq's XPUB delivers them without their descriptor), so a
    /// subscriber's limit is small; an endless message of subscription frames passes it.
    func testAnEndlessSubscriptionIsCutAtAnXPUB() throws {
        let publisher = try ZMQSocket(context, .xpublisher)
        let limit = 64 * Self.kib
        let connectionGuard = try ConnectionGuard(context: context, watching: [(publisher, limit)], totalLimit: 16 * Self.mib)
        defer { connectionGuard.stop() }
        try publisher.bind("tcp://127.0.0.1:*")

        let memory = MemorySampler()
        let attacker = try RawZMTPPeer(port: try port(of: publisher), socketType: "SUB")
        let subscription = RawZMTPPeer.frame([1] + Array("events".utf8), more: true)
        let stream = attacker.stream(Array((0..<8192).map { _ in subscription }.joined()))
        var cut: ConnectionCut?
        try waitUntil(seconds: 30, "the guard cuts the endless subscription") {
            memory.sample()
            cut = connectionGuard.takeCuts().first
            return cut != nil
        }
        try waitUntil(seconds: 30, "the attacker sees its connection closed") { stream.isFinished }
        XCTAssertTrue(stream.closed)
        XCTAssertEqual(cut?.address, "127.0.0.1")
        XCTAssertEqual(cut?.limit, limit)
        print("endless subscription: \(stream.sent) bytes sent; \(memory); \(cut.map { "\($0)" } ?? "")")

        let subscriber = try ZMQSocket(context, .subscriber)
        try subscriber.subscribe()
        try subscriber.connect(try publisher.lastEndpoint)
        XCTAssertEqual(try publisher.receive(timeout: 10), [[1]], "an honest subscription arrives")
        try publisher.send([Array("event".utf8)])
        XCTAssertEqual(try subscriber.receive(timeout: 10), [Array("event".utf8)])
    }

    /// Connections each under their limit but together over `totalLimit`: the largest is cut, the others stay.
    func testTheLargestConnectionIsCutWhenAllTogetherPassTheTotalLimit() throws {
        let router = try ZMQSocket(context, .router)
        let total = 8 * Self.mib
        let connectionGuard = try ConnectionGuard(context: context, watching: [(router, 256 * Self.mib)], totalLimit: total)
        defer { connectionGuard.stop() }
        try router.bind("tcp://127.0.0.1:*")
        let frame = RawZMTPPeer.frame([UInt8](repeating: 1, count: 64 * Self.kib), more: true)

        let waiting = try RawZMTPPeer(port: try port(of: router), socketType: "DEALER")
        for _ in 0..<48 { XCTAssertTrue(waiting.send(frame)) }  // 3 MiB of a message it never finishes
        let flooding = try RawZMTPPeer(port: try port(of: router), socketType: "DEALER")
        let stream = flooding.stream(frame)
        var cuts: [ConnectionCut] = []
        try waitUntil(seconds: 30, "the flooding connection is cut") {
            cuts += connectionGuard.takeCuts()
            return !cuts.isEmpty
        }
        try waitUntil(seconds: 30, "the flooding peer sees its connection closed") { stream.isFinished }
        XCTAssertEqual(cuts.map(\.port), [flooding.localPort])
        XCTAssertEqual(cuts.first?.limit, total)
        XCTAssertEqual(cuts.first?.overTotal, true)
        XCTAssertTrue(waiting.send(frame), "the smaller connection stays open")
        XCTAssertTrue(waiting.isOpen)
        XCTAssertEqual(connectionGuard.takeCuts(), [])
    }

    /// One monitor per socket serves the guard and the gatekeeper: a CURVE peer with an allowed key delivers a
    /// large message (credited under CURVE too), and a plaintext peer's failed handshake is a refusal.
    func testTheGatekeeperReportsFailedHandshakesThroughTheGuard() throws {
        let server = try CurveKeyPair.generate(), client = try CurveKeyPair.generate()
        let router = try ZMQSocket(context, .router)
        try router.makeCurveServer(secretKey: server.secretKey)
        let connectionGuard = try ConnectionGuard(context: context, watching: [(router, Self.mib)], totalLimit: 64 * Self.mib)
        defer { connectionGuard.stop() }
        let gatekeeper = try Gatekeeper(context: context, allowedKeys: [client.publicKey: "good"], guard: connectionGuard)
        defer { gatekeeper.stop() }
        try router.bind("tcp://127.0.0.1:*")

        let good = try ZMQSocket(context, .dealer)
        try good.setIdentity("good")
        try good.makeCurveClient(keys: client, serverKey: server.publicKey)
        try good.connect(try router.lastEndpoint)
        try good.send([Array("hello".utf8)])
        XCTAssertEqual(try router.receive(timeout: 10), [Array("good".utf8), Array("hello".utf8)])
        connectionGuard.setLimit(64 * Self.mib, forPeer: Array("good".utf8))
        let large = (0..<8).map { [UInt8](repeating: UInt8($0), count: Self.mib) }
        try good.send(large)
        XCTAssertEqual(try router.receive(timeout: 30), [Array("good".utf8)] + large)

        let plaintext = try dealer(to: router, identity: "plain")
        try plaintext.send([Array("hello".utf8)])
        var refusals: [HandshakeRefusal] = []
        try waitUntil(seconds: 30, "the plaintext peer is refused") {
            refusals += gatekeeper.takeRefusals()
            return !refusals.isEmpty
        }
        // As in SecurityTests: the connection can close before its address is read.
        XCTAssertTrue(refusals.allSatisfy { ["127.0.0.1", "unknown"].contains($0.address) && $0.reason.hasPrefix("no CURVE handshake") },
                      "\(refusals)")
        XCTAssertEqual(connectionGuard.takeCuts(), [])
    }

    /// libzmq allows one monitor per socket (a second replaces the first), so a socket gets one guard.
    func testASocketIsWatchedByOneGuard() throws {
        let router = try ZMQSocket(context, .router)
        let connectionGuard = try ConnectionGuard(context: context, watching: [(router, Self.mib)], totalLimit: .max)
        defer { connectionGuard.stop() }
        XCTAssertThrowsError(try ConnectionGuard(context: context, watching: [(router, Self.mib)], totalLimit: .max)) {
            XCTAssertEqual(($0 as? TransportError)?.code, EINVAL)
        }
        XCTAssertThrowsError(try HandshakeMonitor(context, router))
    }

    /// The guard reads `tcpi_bytes_received` at its offset in Linux's struct tcp_info: it counts every byte.
    func testBytesReceivedCountsWhatTCPReceived() throws {
        let listener = try TCPListener()
        let client = try RawZMTPPeer(port: listener.port, socketType: nil)
        let accepted = try listener.accept()
        defer { Glibc.close(accepted) }
        XCTAssertTrue(client.send([UInt8](repeating: 9, count: 12345)))
        var buffer = [UInt8](repeating: 0, count: 65536), read = 0
        while read < 12345 {
            let count = recv(accepted, &buffer, buffer.count, 0)
            XCTAssertGreaterThan(count, 0)
            guard count > 0 else { break }
            read += count
        }
        XCTAssertEqual(ConnectionGuard.bytesReceived(onTCPSocket: accepted), 12345)
        XCTAssertNil(ConnectionGuard.bytesReceived(onTCPSocket: listener.pipe), "not a TCP socket")
    }

    // MARK: helpers

    func port(of socket: ZMQSocket) throws -> Int {
        try XCTUnwrap(Int(try socket.lastEndpoint.split(separator: ":").last ?? ""))
    }

    func dealer(to router: ZMQSocket, identity: String) throws -> ZMQSocket {
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.setIdentity(identity)
        try dealer.setOption(reconnectInterval, -1)
        try dealer.connect(try router.lastEndpoint)
        return dealer
    }

    /// An honest libzmq DEALER exchanges a message each way with `router`.
    func assertExchanges(_ router: ZMQSocket) throws {
        let honest = try dealer(to: router, identity: "honest-\(UUID().uuidString.prefix(8))")
        try honest.send([Array("ping".utf8)])
        let received = try XCTUnwrap(try router.receive(timeout: 10), "the router hears an honest peer")
        XCTAssertEqual(received.last, Array("ping".utf8))
        try router.send([received[0], Array("pong".utf8)])
        XCTAssertEqual(try honest.receive(timeout: 10), [Array("pong".utf8)])
    }

    /// Evaluates `condition` until it holds, failing after `seconds`.
    func waitUntil(seconds: Double, _ what: String, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while try !condition() {
            guard Date() < deadline else { throw TimeoutError(what) }
            usleep(200)
        }
    }
}

struct TimeoutError: Error, CustomStringConvertible {
    let description: String
    init(_ what: String) { description = "timed out waiting until \(what)" }
}

/// ZMQ_RECONNECT_IVL (zmq.h; this target does not import CZMQ): -1 keeps a dealer that was cut disconnected.
let reconnectInterval: Int32 = 18

/// The process's resident memory, sampled, and its peak (VmHWM, reset when the sampler is made) to catch what
/// falls between samples.
final class MemorySampler: CustomStringConvertible {
    let start: Int
    private(set) var peak: Int
    /// Whether the kernel's peak could be reset (/proc/self/clear_refs), and so means this sampler's peak.
    let peakWasReset: Bool

    init() {
        peakWasReset = (try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)) != nil
        start = Self.resident()
        peak = start
    }

    func sample() { peak = max(peak, Self.resident()) }

    /// The growth of the larger peak, sampled or the kernel's.
    var peakGrowth: Int {
        sample()
        let kernelPeak = peakWasReset ? (Self.status("VmHWM") ?? peak) : peak
        return max(peak, kernelPeak) - start
    }

    var description: String {
        "resident memory \(start / 1_048_576) MiB at the start, peak growth \(peakGrowth / 1_048_576) MiB"
            + (peakWasReset ? " (VmHWM)" : " (sampled)")
    }

    static func resident() -> Int {
        let statm = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? ""
        let pages = statm.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// A "kB" field of /proc/self/status, in bytes.
    static func status(_ field: String) -> Int? {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") }) else { return nil }
        return line.split(separator: " ").dropFirst().first.flatMap { Int($0) }.map { $0 * 1024 }
    }
}

/// A ZMTP 3.0 peer over a plain TCP socket, to send what libzmq never would: one message that never ends.
/// Greeting: signature (0xFF, 8 bytes padding, 0x7F), version 3.0, mechanism "NULL" padded to 20 bytes, as-server 0,
/// 31 bytes filler; then a READY command with its Socket-Type.
final class RawZMTPPeer: @unchecked Sendable {
    let fd: Int32
    let localPort: Int

    /// Connects to 127.0.0.1:`port`, and greets as a `socketType` peer (nil: sends nothing).
    init(port: Int, socketType: String?) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw TimeoutError("connecting to port \(port): \(String(cString: strerror(errno)))") }
        var sendTimeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &sendTimeout, socklen_t(MemoryLayout<timeval>.size))
        var local = sockaddr_in(), length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        localPort = Int(UInt16(bigEndian: local.sin_port))
        guard let socketType else { return }
        let mechanism = Array("NULL".utf8) + [UInt8](repeating: 0, count: 16)
        let greeting = [0xFF] + [UInt8](repeating: 0, count: 8) + [0x7F, 3, 0] + mechanism + [0] + [UInt8](repeating: 0, count: 31)
        let name = Array("Socket-Type".utf8), value = Array(socketType.utf8)
        let ready = [5] + Array("READY".utf8) + [UInt8(name.count)] + name + Self.bigEndian(value.count, bytes: 4) + value
        guard send(greeting + [0x04, UInt8(ready.count)] + ready) else { throw TimeoutError("greeting port \(port)") }
        // libzmq takes a data frame that comes before it has sent its own READY for a command, and fails the
        // handshake: wait for its greeting and READY.
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let flags = try receive(64 + 1)[64]
        let size = try receive(flags & 0x02 == 0 ? 1 : 8).reduce(0) { $0 << 8 | Int($1) }
        guard flags & 0x04 != 0, try receive(size).starts(with: [5] + Array("READY".utf8)) else {
            throw TimeoutError("a READY command from port \(port)")
        }
    }

    /// Exactly `count` bytes.
    func receive(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count), offset = 0
        while offset < count {
            let read = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + offset, count - offset, 0) }
            guard read > 0 else { throw TimeoutError("the server's handshake (\(offset) of \(count) bytes)") }
            offset += read
        }
        return bytes
    }

    deinit { Glibc.close(fd) }

    /// A data frame: flags MORE (0x01) and LONG (0x02, an 8-byte size) as needed, its size, its body.
    static func frame(_ body: [UInt8], more: Bool) -> [UInt8] {
        let flags: UInt8 = more ? 0x01 : 0
        if body.count > 255 { return [flags | 0x02] + bigEndian(body.count, bytes: 8) + body }
        return [flags, UInt8(body.count)] + body
    }

    static func bigEndian(_ value: Int, bytes: Int) -> [UInt8] {
        (0..<bytes).reversed().map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }

    /// Sends all of `bytes`, telling `progress` of each part the kernel takes; false once the connection is closed
    /// (or a send stays blocked for 10 s).
    func send(_ bytes: [UInt8], progress: (Int) -> Void = { _ in }) -> Bool {
        var offset = 0, blocked = 0
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if sent > 0 {
                offset += sent
                progress(sent)
                blocked = 0
            } else if sent < 0, errno == EAGAIN || errno == EINTR, blocked < 10 {
                blocked += 1
            } else {
                return false
            }
        }
        return true
    }

    /// Whether the connection is still open: nothing to read, and no end of stream or error.
    var isOpen: Bool {
        var item = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&item, 1, 0) == 0
    }

    /// Sends `chunk` over and over on a thread of its own until the connection closes (or 60 s pass), counting the
    /// bytes the kernel took.
    func stream(_ chunk: [UInt8]) -> Stream {
        let stream = Stream()
        Thread.detachNewThread { [self] in
            let deadline = Date().addingTimeInterval(60)
            var sent = 0, closed = false
            while Date() < deadline {
                let whole = send(chunk) { part in
                    sent += part
                    stream.update(sent: sent)
                }
                guard whole else {
                    closed = true
                    break
                }
            }
            stream.finish(sent: sent, closed: closed)
        }
        return stream
    }

    /// A stream's progress. Thread-safe: `lock` guards every property.
    final class Stream: @unchecked Sendable {
        private let lock = NSLock()
        private var _sent = 0, _closed = false, _finished = false

        var sent: Int { lock.lock(); defer { lock.unlock() }; return _sent }
        var closed: Bool { lock.lock(); defer { lock.unlock() }; return _closed }
        var isFinished: Bool { lock.lock(); defer { lock.unlock() }; return _finished }

        func update(sent: Int) {
            lock.lock()
            _sent = sent
            lock.unlock()
        }

        func finish(sent: Int, closed: Bool) {
            lock.lock()
            (_sent, _closed, _finished) = (sent, closed, true)
            lock.unlock()
        }
    }
}

/// A plain TCP listener on 127.0.0.1, and a pipe (a descriptor that is not a TCP socket).
final class TCPListener {
    let fd: Int32
    let port: Int
    let pipe: Int32
    private let pipeWriter: Int32

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound, listen(fd, 4) == 0 else { throw TimeoutError("listening: \(String(cString: strerror(errno)))") }
        port = Int(UInt16(bigEndian: address.sin_port))
        var ends: [Int32] = [0, 0]
        guard Glibc.pipe(&ends) == 0 else { throw TimeoutError("making a pipe") }
        (pipe, pipeWriter) = (ends[0], ends[1])
    }

    deinit {
        Glibc.close(fd)
        Glibc.close(pipe)
        Glibc.close(pipeWriter)
    }

    func accept() throws -> Int32 {
        let accepted = Glibc.accept(fd, nil, nil)
        guard accepted >= 0 else { throw TimeoutError("accepting: \(String(cString: strerror(errno)))") }
        return accepted
    }
}
