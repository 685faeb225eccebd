import CZMQ
import Foundation

/// What the coordinator and workers need from a socket: whole multipart messages in and out. A ROUTER-side
/// socket prefixes every message with the peer's identity frame; a DEALER-side one does not.
public protocol MessageSocket: AnyObject {
    func send(_ frames: [[UInt8]]) throws
    /// Sends frames that may hold float arrays, without copying them where the transport can.
    func send(frames: [OutgoingFrame]) throws
    /// The next message, or nil when none arrives within `timeout` seconds.
    func receive(timeout: Double) throws -> [[UInt8]]?
    /// Like `receive(timeout:)`, but returns nil as soon as file descriptor `fd` is readable (a wake-up pipe).
    func receive(timeout: Double, wakingOn fd: Int32) throws -> [[UInt8]]?
    /// Like `receive(timeout:wakingOn:)`, with frames that may still be in the transport's buffers (no copy).
    func receiveFrames(timeout: Double, wakingOn fd: Int32?) throws -> [ReceivedFrame]?
    /// Closes the socket after at most `seconds` spent delivering what was sent (a last bye).
    func close(deliveringWithin seconds: Double)
}

extension MessageSocket {
    public func close(deliveringWithin seconds: Double) {}

    public func send(frames: [OutgoingFrame]) throws { try send(frames.map(\.byteArray)) }

    public func receiveFrames(timeout: Double, wakingOn fd: Int32?) throws -> [ReceivedFrame]? {
        let frames = try fd.map { try receive(timeout: timeout, wakingOn: $0) } ?? receive(timeout: timeout)
        return frames?.map(ReceivedFrame.init)
    }

    /// Waits in slices of a millisecond, checking `fd` between them (for sockets that cannot poll a descriptor).
    public func receive(timeout: Double, wakingOn fd: Int32) throws -> [[UInt8]]? {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            var item = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&item, 1, 0) > 0 { return nil }
            if let message = try receive(timeout: 0.001) { return message }
        } while Date() < deadline
        return nil
    }
}

extension ZMQSocket: MessageSocket {}

/// A thread-safe queue of messages with a timed wait.
final class MessageQueue: @unchecked Sendable {
    private var messages: [[[UInt8]]] = []
    private let condition = NSCondition()

    func push(_ message: [[UInt8]]) {
        condition.lock()
        messages.append(message)
        condition.signal()
        condition.unlock()
    }

    func pop(timeout: Double) -> [[UInt8]]? {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while messages.isEmpty {
            guard condition.wait(until: deadline) else { return nil }
        }
        return messages.removeFirst()
    }
}

/// An in-process stand-in for a ROUTER and its DEALERs, with ZeroMQ's routing rules (identity frames, and
/// ROUTER_MANDATORY's failure for an unknown peer), for tests that need no network.
public final class InMemoryRouter: MessageSocket, @unchecked Sendable {
    private let inbox = MessageQueue()
    private var dealers: [[UInt8]: MessageQueue] = [:]
    private let lock = NSLock()

    public init() {}

    /// A DEALER connected to this router under `identity`; connecting again with the same identity takes over
    /// the old connection (ROUTER_HANDOVER).
    public func connect(identity: String) -> InMemoryDealer {
        let queue = MessageQueue()
        lock.lock()
        dealers[Array(identity.utf8)] = queue
        lock.unlock()
        return InMemoryDealer(identity: Array(identity.utf8), router: inbox, inbox: queue)
    }

    /// Forgets a peer, as when its connection drops.
    public func disconnect(identity: String) {
        lock.lock()
        dealers[Array(identity.utf8)] = nil
        lock.unlock()
    }

    public func send(_ frames: [[UInt8]]) throws {
        guard let identity = frames.first else { throw TransportError("sending an empty message", code: EINVAL) }
        lock.lock()
        let queue = dealers[identity]
        lock.unlock()
        guard let queue else { throw TransportError("sending to \(String(decoding: identity, as: UTF8.self))", code: EHOSTUNREACH) }
        queue.push(Array(frames.dropFirst()))
    }

    public func receive(timeout: Double) throws -> [[UInt8]]? { inbox.pop(timeout: timeout) }
}

/// The worker side of an `InMemoryRouter`.
public final class InMemoryDealer: MessageSocket, @unchecked Sendable {
    let identity: [UInt8]
    private let router: MessageQueue
    private let inbox: MessageQueue

    init(identity: [UInt8], router: MessageQueue, inbox: MessageQueue) {
        self.identity = identity
        self.router = router
        self.inbox = inbox
    }

    public func send(_ frames: [[UInt8]]) throws { router.push([identity] + frames) }
    public func receive(timeout: Double) throws -> [[UInt8]]? { inbox.pop(timeout: timeout) }
}
