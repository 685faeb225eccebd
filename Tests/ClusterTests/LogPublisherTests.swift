import Cluster
import Foundation
import Training
import Transport
import XCTest

/// The daemon's log port (`LogPublisher` with topics) against libzmq's own SUB sockets on loopback: each event
/// comes under its job's id, a subscriber to one job gets its snapshot and its events (and, ZeroMQ's topics being
/// prefixes, those of jobs 10 to 19, which the monitor drops), one to every job gets every snapshot, and a topic
/// that is not a job id is not applied.
final class LogPublisherTests: XCTestCase {
    /// Messages `socket` receives within `seconds` while `publisher` serves subscriptions, as (topic, event name).
    func drain(_ socket: ZMQSocket, _ publisher: LogPublisher, seconds: Double, until done: ([(String, String)]) -> Bool = { _ in false })
        throws -> [(String, String)] {
        var received: [(String, String)] = []
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline && !done(received) {
            publisher.poll()
            guard let frames = try socket.receive(timeout: 0.02) else { continue }
            XCTAssertEqual(frames.count, 2, "topic and line")
            let event = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(frames[1])) as? [String: Any])
            received.append((String(decoding: frames[0], as: UTF8.self), try XCTUnwrap(event["event"] as? String)))
        }
        return received
    }

    func testEventsGoUnderTheirJobAndLateSubscribersGetTheirJobsSnapshot() throws {
        let context = ZMQContext()
        let socket = try ZMQSocket(context, .xpublisher, limits: LogPublisher.socketLimits)
        let publisher = try LogPublisher(socket: socket, topics: true) {}
        try socket.bind("tcp://127.0.0.1:*")
        let endpoint = try socket.lastEndpoint
        for topic in ["1", "10", "2"] { publisher.publish("step", [("step", .int(3))], topic: topic) }

        func subscriber(_ topic: String) throws -> ZMQSocket {
            let sub = try ZMQSocket(context, .subscriber)
            try sub.subscribe(prefix: Array(topic.utf8))
            try sub.connect(endpoint)
            return sub
        }
        let one = try subscriber("1")
        let snapshotsOfOne = try drain(one, publisher, seconds: 30) { $0.contains { $0 == ("1", "snapshot") } }
        XCTAssertEqual(snapshotsOfOne.map(\.0), ["1"], "job 1's snapshot alone")
        let every = try subscriber("")
        let snapshots = try drain(every, publisher, seconds: 30) { $0.count == 3 }
        XCTAssertEqual(snapshots.map(\.0), ["1", "2", "10"])
        XCTAssertEqual(Set(snapshots.map(\.1)), ["snapshot"])
        let junk = try subscriber("job")
        // Job 1's subscriber also got every snapshot that matched its prefix: 1 and 10.
        XCTAssertEqual(try drain(one, publisher, seconds: 30) { $0.count == 2 }.map(\.0), ["1", "10"])

        for topic in ["2", "1", "10"] { publisher.publish("done", [("step", .int(4))], topic: topic) }
        XCTAssertEqual(try drain(one, publisher, seconds: 30) { $0.count == 2 }.map(\.0), ["1", "10"])
        XCTAssertEqual(try drain(every, publisher, seconds: 30) { $0.count == 3 }.map(\.0), ["2", "1", "10"])
        XCTAssertTrue(try drain(junk, publisher, seconds: 0.5).isEmpty, "a topic that is not a job id is ignored")
        for sub in [one, every, junk] { sub.close() }
        socket.close()
    }
}
