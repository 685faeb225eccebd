import Daemon
import Wire
import XCTest

/// The pool's state machine, message by message with a manual clock: joining, heartbeats, lending and returning,
/// names held by one connection, silent members.
final class PoolMachineTests: XCTestCase {
    let a: [UInt8] = [1], b: [UInt8] = [2]

    func hello(_ name: String) -> Message { Message(Hello(name: name, host: "node", pid: 1), jobID: 0) }
    var pooled: Message { Message(Pooled(heartbeatInterval: 1, heartbeatTimeout: 5), jobID: 0) }

    func testAHelloJoinsThePoolAndTheMemberIsFree() {
        var pool = PoolMachine(heartbeatInterval: 1, heartbeatTimeout: 5)
        XCTAssertEqual(pool.receive(from: a, hello("w0"), address: "10.0.0.2", now: 0),
                       [.log(.joined(worker: "w0", host: "node", address: "10.0.0.2")), .send(identity: a, pooled), .free(identity: a)])
        XCTAssertEqual(pool.idle.map(\.name), ["w0"])
        XCTAssertEqual(pool.member(a)?.hello, hello("w0"), "kept for the job it is lent to")
    }

    func testANameIsHeldByOneConnection() {
        var pool = PoolMachine()
        _ = pool.receive(from: a, hello("w0"), address: "x", now: 0)
        let refused = pool.receive(from: b, hello("w0"), address: "y", now: 0)
        guard case let .send(identity, message)? = refused.last else { return XCTFail("\(refused)") }
        XCTAssertEqual(identity, b)
        XCTAssertEqual(try message.payload(Refusal.self).rejoin, true)
        XCTAssertEqual(pool.members.count, 1)
    }

    /// With CURVE, a name stays with the key that first joined under it: another allowed key is refused for good
    /// (no rejoin), even once the first connection is gone; the first key may come back on a new connection.
    func testWithCURVEANameStaysWithItsKey() {
        var pool = PoolMachine()
        _ = pool.receive(from: a, hello("w0"), address: "x", key: "KEY-A", now: 0)
        _ = pool.lost(a, reason: "its connection closed")
        let refused = pool.receive(from: b, hello("w0"), address: "y", key: "KEY-B", now: 1)
        guard case let .send(identity, message)? = refused.last else { return XCTFail("\(refused)") }
        XCTAssertEqual(identity, b)
        XCTAssertEqual(try message.payload(Refusal.self).rejoin, false)
        XCTAssertTrue(pool.members.isEmpty)
        let c: [UInt8] = [3]
        XCTAssertEqual(pool.receive(from: c, hello("w0"), address: "z", key: "KEY-A", now: 2).last, .free(identity: c))
        XCTAssertEqual(pool.member(c)?.key, "KEY-A", "given to the job with the worker's hello")
        pool.rejoined(b, hello("w0"), to: 7, address: "y", key: "KEY-B", now: 3)
        XCTAssertEqual(pool.members.map(\.identity), [c], "another key's rejoin takes nothing over")
    }

    func testIdleMembersHeartbeatAndSilentOnesAreGone() {
        var pool = PoolMachine(heartbeatInterval: 1, heartbeatTimeout: 5)
        _ = pool.receive(from: a, hello("w0"), address: "x", now: 0)
        XCTAssertEqual(pool.tick(now: 0.5), [])
        XCTAssertEqual(pool.tick(now: 1), [.send(identity: a, Message(type: .heartbeat, jobID: 0))])
        XCTAssertEqual(pool.receive(from: a, Message(type: .heartbeat, jobID: 0), address: "x", now: 4), [])
        XCTAssertEqual(pool.tick(now: 8.9).filter { if case .gone = $0 { true } else { false } }, [])
        XCTAssertEqual(pool.tick(now: 9.1).suffix(2), [.log(.gone(worker: "w0", reason: "no heartbeat for 5 s")), .gone(identity: a, job: nil)])
        XCTAssertTrue(pool.members.isEmpty)
    }

    func testALentMemberIsNotFreeUntilItSaysHelloAgainAndAReturningOneMustDoSoInTime() {
        var pool = PoolMachine(heartbeatInterval: 1, heartbeatTimeout: 5)
        _ = pool.receive(from: a, hello("w0"), address: "x", now: 0)
        _ = pool.receive(from: b, hello("w1"), address: "y", now: 0)
        pool.lend(a, to: 7)
        pool.lend(b, to: 7)
        XCTAssertEqual(pool.idle.map(\.name), [])
        XCTAssertEqual(pool.tick(now: 100).filter { if case .send = $0 { false } else { true } }, [], "a lent member is its job's to watch")
        pool.returning(a, now: 100)
        pool.returning(b, now: 100)
        XCTAssertEqual(pool.receive(from: a, hello("w0"), address: "x", now: 101), [.send(identity: a, pooled), .free(identity: a)])
        XCTAssertEqual(pool.idle.map(\.name), ["w0"])
        XCTAssertEqual(pool.tick(now: 105.5).filter { if case .send = $0 { false } else { true } },
                       [.log(.gone(worker: "w1", reason: "no hello within 5 s of leaving its job")), .gone(identity: b, job: nil)])
    }

    func testAWorkerThatRejoinsItsJobOnANewConnectionKeepsItsPlace() {
        var pool = PoolMachine()
        _ = pool.receive(from: a, hello("w0"), address: "x", now: 0)
        pool.lend(a, to: 3)
        pool.rejoined(b, hello("w0"), to: 3, address: "x", now: 5)
        XCTAssertEqual(pool.members.map(\.identity), [b])
        XCTAssertEqual(pool.member(b)?.phase, .lent(job: 3))
        XCTAssertEqual(pool.lost(b, reason: "its connection closed"),
                       [.log(.gone(worker: "w0", reason: "its connection closed")), .gone(identity: b, job: 3)])
    }
}
