import Foundation
import Transport

/// One job's view of the daemon's worker socket: the loop hands it the messages of the job's workers, and its sends
/// go out through the loop's thread (`send`), which alone touches the ZeroMQ socket. The job's `Coordinator` uses
/// it as it would a ROUTER of its own.
///
/// Thread-safe: the inbox is a `MessageQueue`; `send` and the ledger are the daemon's and are thread-safe.
final class JobSocket: MessageSocket, @unchecked Sendable {
    private let inbox = MessageQueue<[ReceivedFrame]>()
    private let sendFrames: ([OutgoingFrame]) throws -> Void
    private let ledger: SendLedger

    /// `send` performs a send on the loop's thread (throwing what the ZeroMQ send threw); `ledger` is the
    /// daemon socket's.
    init(send: @escaping ([OutgoingFrame]) throws -> Void, ledger: SendLedger) {
        sendFrames = send
        self.ledger = ledger
    }

    /// From the loop: a message from one of the job's workers (routing id first).
    func deliver(_ frames: [ReceivedFrame]) { inbox.push(frames) }

    func send(_ frames: [[UInt8]]) throws { try sendFrames(frames.map(OutgoingFrame.bytes)) }
    func send(frames: [OutgoingFrame]) throws { try sendFrames(frames) }

    func receive(timeout: Double) throws -> [[UInt8]]? { inbox.pop(timeout: timeout)?.map(\.bytes) }
    func receive(timeout: Double, wakingOn fd: Int32) throws -> [[UInt8]]? { try receive(timeout: timeout) }
    func receiveFrames(timeout: Double, wakingOn fd: Int32?) throws -> [ReceivedFrame]? { inbox.pop(timeout: timeout) }

    func queue(to peer: [UInt8]) -> SendLedger.Queue { ledger.queue(peer) }
    var queuedBytes: Int { ledger.totalBytes }
}
