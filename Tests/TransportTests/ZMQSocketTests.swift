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
        let router = try ZMQSocket(context, .router)
        try router.setMaximumMessageSize(1024)
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.connect(try router.lastEndpoint)
        try dealer.send(Message(type: .gradients, jobID: 1, tensors: [[Float](repeating: 1, count: 1000)]).encoded())
        XCTAssertNil(try router.receive(timeout: 0.5))
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
