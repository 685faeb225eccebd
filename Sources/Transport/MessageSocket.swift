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
    /// What is queued in this process for `peer` (a ROUTER-side socket's), not yet handed to its connection.
    func queue(to peer: [UInt8]) -> SendLedger.Queue
    /// Bytes queued for all peers together.
    var queuedBytes: Int { get }
}

extension MessageSocket {
    public func close(deliveringWithin seconds: Double) {}
    public func queue(to peer: [UInt8]) -> SendLedger.Queue { SendLedger.Queue() }
    public var queuedBytes: Int { 0 }

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

extension ZMQSocket: MessageSocket {
    public func queue(to peer: [UInt8]) -> SendLedger.Queue { ledger.queue(peer) }
    public var queuedBytes: Int { ledger.totalBytes }
}
