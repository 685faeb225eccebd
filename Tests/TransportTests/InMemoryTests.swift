import Transport
import Wire
import XCTest

/// The in-memory transport follows the same rules the ZeroMQ tests check, so code tested on it behaves the same
/// over the network.
final class InMemoryTests: XCTestCase {
    /// The same exchange against both implementations.
    func exchange(router: MessageSocket, dealer: MessageSocket) throws {
        let hello = Message(Hello(name: "w2", host: "b", pid: 2), jobID: 5)
        try dealer.send(hello.encoded())
        let received = try XCTUnwrap(try router.receive(timeout: 5))
        XCTAssertEqual(String(decoding: received[0], as: UTF8.self), "worker-2")
        XCTAssertEqual(try Message.decode(Array(received.dropFirst())), hello)
        let reply = Message(Welcome(config: "seed: 1", overrides: []), jobID: 5)
        try router.send([received[0]] + reply.encoded())
        XCTAssertEqual(try Message.decode(try XCTUnwrap(try dealer.receive(timeout: 5))), reply)
        XCTAssertThrowsError(try router.send([Array("nobody".utf8)] + reply.encoded())) {
            XCTAssertEqual(($0 as? TransportError)?.code, EHOSTUNREACH)
        }
        XCTAssertNil(try dealer.receive(timeout: 0.01))
    }

    func testInMemoryAndZeroMQBehaveAlike() throws {
        let memory = InMemoryRouter()
        try exchange(router: memory, dealer: memory.connect(identity: "worker-2"))

        let context = ZMQContext()
        let router = try ZMQSocket(context, .router)
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(context, .dealer)
        try dealer.setIdentity("worker-2")
        try dealer.connect(try router.lastEndpoint)
        try exchange(router: router, dealer: dealer)
    }

    func testDisconnectedPeersAreUnreachableAndReconnectsTakeOver() throws {
        let router = InMemoryRouter()
        let first = router.connect(identity: "w")
        router.disconnect(identity: "w")
        XCTAssertThrowsError(try router.send([Array("w".utf8), [1]]))
        let second = router.connect(identity: "w")
        try router.send([Array("w".utf8), [1]])
        XCTAssertEqual(try second.receive(timeout: 1), [[1]])
        XCTAssertNil(try first.receive(timeout: 0.01))
    }
}
