import CZMQ
import Foundation
import Transport
import Wire
import XCTest

/// ROUTER/DEALER over loopback TCP, carrying protocol messages, with the options the coordinator relies on.
final class ZMQSocketTests: XCTestCase {
    let context = ZMQContext()

    func testDealerAndRouterExchangeMultipartMessagesWithStableIdentities() throws {
        let router = try ZMQSocket(context, .router)
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = try router.lastEndpoint
        XCTAssertTrue(endpoint.hasPrefix("tcp://127.0.0.1:"), endpoint)

        let dealer = try ZMQSocket(context, .dealer)
        try dealer.setIdentity("worker-7")
        try dealer.connect(endpoint)
        let hello = Message(Hello(name: "w7", host: "a", pid: 7), jobID: 99)
        try dealer.send(hello.encoded())

        let received = try XCTUnwrap(try router.receive(timeout: 5), "no message within 5 s")
        XCTAssertEqual(String(decoding: received[0], as: UTF8.self), "worker-7")
        XCTAssertEqual(try Message.decode(Array(received.dropFirst())), hello)

        let weights = Message(type: .weights, jobID: 99, step: 3, block: 1, tensors: [[1, 2, 3], [4]])
        try router.send([received[0]] + weights.encoded())
        let reply = try XCTUnwrap(try dealer.receive(timeout: 5))
        XCTAssertEqual(try Message.decode(reply), weights)
        XCTAssertNil(try dealer.receive(timeout: 0))
    }

    /// ROUTER_MANDATORY: a message to a peer that is not connected fails instead of vanishing.
    func testSendingToAnUnknownPeerFails() throws {
        let router = try ZMQSocket(context, .router)
        try router.bind("tcp://127.0.0.1:*")
        XCTAssertThrowsError(try router.send([Array("nobody".utf8)] + Message(type: .heartbeat, jobID: 1).encoded())) {
            XCTAssertEqual(($0 as? TransportError)?.code, EHOSTUNREACH)
        }
    }

    func testBindingAPortInUseNamesTheEndpoint() throws {
        let first = try ZMQSocket(context, .router)
        try first.bind("tcp://127.0.0.1:*")
        let endpoint = try first.lastEndpoint
        let second = try ZMQSocket(context, .router)
        XCTAssertThrowsError(try second.bind(endpoint)) {
            XCTAssertEqual("\($0)", "cannot bind \(endpoint): Address already in use")
        }
    }

    /// ZMQ_MAXMSGSIZE: an oversized message drops the sender's connection and never reaches the receiver.
    func testOversizedMessagesAreNotDelivered() throws {
        let router = try ZMQSocket(context, .router, limits: SocketLimits(maximumFrame: 1024))
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.connect(try router.lastEndpoint)
        try dealer.send(Message(type: .gradients, jobID: 1, tensors: [[Float](repeating: 1, count: 1000)]).encoded())
        XCTAssertNil(try router.receive(timeout: 0.5))
    }

    /// A dealer that never reads, with room for one message: the router's sends to it fail with EAGAIN once its
    /// queue of `sendQueue` messages is full, at once and never waiting (a blocking send would hang this test).
    func testARoutersSendToAPeerThatDoesNotReadFailsInsteadOfWaiting() throws {
        let router = try ZMQSocket(context, .router, limits: SocketLimits(sendQueue: 10))
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.setOption(ZMQ_RCVHWM, 1)
        try dealer.setOption(ZMQ_RCVBUF, 4096)
        try dealer.setIdentity("silent")
        try dealer.connect(try router.lastEndpoint)
        try dealer.send([[1]])
        let identity = try XCTUnwrap(try router.receive(timeout: 5)?.first)
        final class Outcome: @unchecked Sendable { var sent = 0; var error: TransportError? }
        let outcome = Outcome(), done = DispatchSemaphore(value: 0)
        Thread {
            let frame = [UInt8](repeating: 7, count: 1000)
            while outcome.sent < 1_000_000 {
                do { try router.send([identity, frame]) } catch { outcome.error = error as? TransportError; break }
                outcome.sent += 1
            }
            done.signal()
        }.start()
        XCTAssertEqual(done.wait(timeout: .now() + 60), .success, "a send waited for the peer")
        XCTAssertEqual(outcome.error?.code, EAGAIN)
        XCTAssertLessThan(outcome.sent, 100_000, "the queue is bounded")
    }

    /// Zero-copy frames count in the ledger from the send until libzmq has written them to the connection.
    func testTheLedgerCountsZeroCopyBytesUntilTheyAreWritten() throws {
        let router = try ZMQSocket(context, .router)
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.setOption(ZMQ_RCVHWM, 1)
        try dealer.setOption(ZMQ_RCVBUF, 4096)
        try dealer.connect(try router.lastEndpoint)
        try dealer.send([[1]])
        let received = try XCTUnwrap(try router.receive(timeout: 5))
        XCTAssertEqual(router.ledger.queue(received[0]), SendLedger.Queue())
        // 32 frames of 1 MiB: far more than the dealer's socket buffers take while it does not read.
        let tensor = [Float](repeating: 1, count: 1 << 18)
        for _ in 0..<32 { try router.send(frames: [.bytes(received[0]), .floats(tensor)]) }
        let queued = router.ledger.queue(received[0])
        XCTAssertGreaterThan(queued.bytes, 1 << 20)
        XCTAssertNotNil(queued.oldest)
        XCTAssertEqual(router.ledger.totalBytes, queued.bytes)
        for _ in 0..<32 { XCTAssertEqual(try XCTUnwrap(try dealer.receive(timeout: 10)).last?.count, 1 << 20) }
        let deadline = Date().addingTimeInterval(10)
        while router.ledger.totalBytes > 0 && Date() < deadline { usleep(1000) }
        XCTAssertEqual(router.ledger.queue(received[0]), SendLedger.Queue())
    }

    /// A router's received message carries the sender's address on its identity frame.
    func testReceivedMessagesNameTheirConnectionsAddress() throws {
        let router = try ZMQSocket(context, .router)
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.connect(try router.lastEndpoint)
        try dealer.send([[1]])
        let frames = try XCTUnwrap(try router.receiveFrames(timeout: 5, wakingOn: nil))
        XCTAssertEqual(frames[0].peerAddress, "127.0.0.1")
        XCTAssertNil(frames[0].userID, "no CURVE, no user id")
    }

    func testCurveIsAvailable() {
        XCTAssertTrue(ZMQContext.hasCurve, "libzmq without CURVE: the security issue needs libsodium")
    }
}

final class CurveKeyTests: XCTestCase {
    /// Key pairs are Z85 text of 40 characters, distinct each time, and the public key follows from the secret.
    func testKeyPairsAreFreshAndConsistent() throws {
        let a = try CurveKeyPair.generate(), b = try CurveKeyPair.generate()
        XCTAssertEqual(a.publicKey.count, 40)
        XCTAssertEqual(a.secretKey.count, 40)
        XCTAssertNotEqual(a, b)
        XCTAssertEqual(try CurveKeyPair.publicKey(forSecret: a.secretKey), a.publicKey)
    }
}
