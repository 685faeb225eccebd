import Foundation

/// An in-process stand-in for a ROUTER and its DEALERs, with ZeroMQ's routing rules (identity frames, and
/// ROUTER_MANDATORY's failure for an unknown peer), for tests that need no network.
///
/// Thread-safe: `lock` guards `dealers`; the queues guard themselves.
public final class InMemoryRouter: MessageSocket, @unchecked Sendable {
    private let inbox = MessageQueue<[[UInt8]]>()
    private var dealers: [[UInt8]: MessageQueue<[[UInt8]]>] = [:]
    private let lock = NSLock()

    public init() {}

    /// A DEALER connected to this router under `identity`; connecting again with the same identity takes over
    /// the old connection (as a ZeroMQ ROUTER with ROUTER_HANDOVER would; trainerd's does not hand over, and its
    /// workers connect under a fresh random identity each time).
    public func connect(identity: String) -> InMemoryDealer {
        let queue = MessageQueue<[[UInt8]]>()
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
public final class InMemoryDealer: MessageSocket, Sendable {
    let identity: [UInt8]
    private let router: MessageQueue<[[UInt8]]>
    private let inbox: MessageQueue<[[UInt8]]>

    init(identity: [UInt8], router: MessageQueue<[[UInt8]]>, inbox: MessageQueue<[[UInt8]]>) {
        self.identity = identity
        self.router = router
        self.inbox = inbox
    }

    public func send(_ frames: [[UInt8]]) throws { router.push([identity] + frames) }
    public func receive(timeout: Double) throws -> [[UInt8]]? { inbox.pop(timeout: timeout) }
}
