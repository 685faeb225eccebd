import Cluster
import NN
import Training
import Wire
import XCTest

/// A worker is the connection that joined: what another peer can and cannot do under a worker's name or identity,
/// and what happens to a peer that does not take what it is sent, driven message by message without sockets.
final class WorkerIdentityTests: XCTestCase {
    let job = JobDescription(yaml: "model: {sizes: [3, 2]}\ntraining: {batch_size: 8, micro_batches: 4}", overrides: [])
    let layout = ParameterLayout(entries: [("0.weight", [2, 3], true), ("0.bias", [2], true)])
    let sessions = SimulatedSessions()

    /// Workers a and b, admitted, in step 0; "a" and "b" are also their connections' identities.
    func twoWorkersInAStep() -> CoordinatorMachine {
        var machine = CoordinatorMachine(job: job, layout: layout, microBatches: 4, newSession: sessions.issue)
        for name in ["a", "b"] {
            _ = sessions.receive(&machine, name, helloFrames(name: name, host: "h-\(name)"), now: 0)
            _ = sessions.receive(&machine, name, Message(type: .heartbeat, jobID: job.jobID).encoded(), now: 0)
        }
        _ = machine.startStep(0, parameters: [Float](repeating: 0, count: 8), now: 0)
        XCTAssertEqual(machine.workerNames, ["a", "b"])
        return machine
    }

    func names(_ actions: [CoordinatorMachine.Action]) -> [String] {
        actions.compactMap { if case let .log(event) = $0 { return event.name }; return nil }
    }

    func sentTypes(_ actions: [CoordinatorMachine.Action], to identity: String) -> [MessageType] {
        actions.compactMap { if case let .send(peer, message) = $0, peer == Array(identity.utf8) { return message.type }; return nil }
    }

    func refusal(_ actions: [CoordinatorMachine.Action]) throws -> Refusal? {
        for case let .send(_, message) in actions where message.type == .error { return try message.payload(Refusal.self) }
        return nil
    }

    func testAHelloUnderATakenNameIsRefusedAndTheHolderKept() throws {
        var machine = twoWorkersInAStep()
        // Another connection says hello as "a", without a's session, then with a guess.
        for session: UInt64 in [0, 12345] {
            var hello = Message(Hello(name: "a", host: "intruder", pid: 1), jobID: job.jobID)
            hello.session = session
            let actions = machine.receive(from: Array("x".utf8), hello.encoded(), address: "10.0.0.9", now: 1)
            XCTAssertEqual(names(actions), ["warning"])
            XCTAssertEqual(sentTypes(actions, to: "x"), [.error])
            let refused = try XCTUnwrap(try refusal(actions))
            XCTAssertTrue(refused.reason.hasPrefix("the worker name a is taken by a connected worker on h-a"), refused.reason)
            XCTAssertTrue(refused.rejoin, "an honest worker whose old connection is not yet seen closed tries again")
        }
        XCTAssertEqual(machine.workerNames, ["a", "b"])
        XCTAssertFalse(machine.isMember(Array("x".utf8)))
    }

    func testAStrangersByeErrorAndHeartbeatChangeNothing() throws {
        var machine = twoWorkersInAStep()
        let stranger = Array("x".utf8)
        XCTAssertEqual(machine.receive(from: stranger, Message(type: .bye, jobID: job.jobID).encoded(), now: 1), [])
        XCTAssertEqual(machine.receive(from: stranger, Message(Refusal("a failed"), jobID: job.jobID).encoded(), now: 1), [])
        let heartbeat = machine.receive(from: stranger, Message(type: .heartbeat, jobID: job.jobID).encoded(), now: 1)
        XCTAssertEqual(sentTypes(heartbeat, to: "x"), [.error], "told to say hello, nothing else")
        XCTAssertEqual(names(heartbeat), [])
        XCTAssertEqual(machine.workerNames, ["a", "b"])
    }

    /// Under a worker's own identity (an on-path peer that took over its connection), messages of another session
    /// count for nothing: no bye, no failure, no heartbeat, no gradients.
    func testMessagesOfAnotherSessionCountForNothing() throws {
        var machine = twoWorkersInAStep()
        let a = Array("a".utf8)
        let wrong = try XCTUnwrap(sessions.byName["a"]) &+ 1
        let gradients = Message(type: .gradients, jobID: job.jobID, session: wrong, step: 0, microBatches: 0..<2,
                                tensors: [[1, 2, 3, 4, 5, 6], [7, 8], [0.5]])
        for message in [Message(type: .bye, jobID: job.jobID, session: wrong), Message(type: .heartbeat, jobID: job.jobID, session: wrong),
                        Message(type: .error, jobID: job.jobID, session: wrong, metadata: Refusal("x").encoded()), gradients] {
            let actions = machine.receive(from: a, message.encoded(), now: 1)
            XCTAssertEqual(names(actions), ["warning"], "\(message.type)")
            guard case let .log(event)? = actions.first else { return XCTFail() }
            XCTAssertEqual(event, .messageDropped(from: "a", address: "unknown", reason: "\(message.type) of another session than a's"))
        }
        XCTAssertEqual(machine.workerNames, ["a", "b"])
        // The heartbeats did not count: a is still silent since 0 and is lost at the heartbeat timeout.
        XCTAssertEqual(machine.tick(now: 10.5).contains { if case let .log(event) = $0 { return event.name == "worker_lost" }; return false }, true)
    }

    func testAWorkerReconnectingWithItsSessionReclaimsItsName() throws {
        var machine = twoWorkersInAStep()
        var hello = Message(Hello(name: "a", host: "h-a", pid: 2), jobID: job.jobID)
        hello.session = try XCTUnwrap(sessions.byName["a"])
        let actions = sessions.receive(&machine, "a-reconnected", hello.encoded(), now: 1)
        XCTAssertEqual(names(actions), ["worker_lost"])
        guard case let .log(.workerLost(worker, _, reason, _, _))? = actions.first else { return XCTFail("\(actions)") }
        XCTAssertEqual(worker, "a")
        XCTAssertEqual(reason, "reconnected on a new connection")
        XCTAssertTrue(sentTypes(actions, to: "a-reconnected").contains(.welcome))
        XCTAssertEqual(sentTypes(actions, to: "b"), [.assignment], "a's micro-batches go to b")
        XCTAssertNotEqual(sessions.byName["a-reconnected"], sessions.byName["a"])
    }

    func testWithSecurityANameStaysWithTheKeyThatFirstJoinedUnderIt() throws {
        var machine = CoordinatorMachine(job: job, layout: layout, microBatches: 4, newSession: sessions.issue)
        let hello = helloFrames(name: "gpu-1")
        XCTAssertTrue(sentTypes(sessions.receive(&machine, "c1", hello, key: "KEY-1", now: 0), to: "c1").contains(.welcome))
        _ = sessions.receive(&machine, "c1", Message(type: .bye, jobID: job.jobID).encoded(), now: 1)
        XCTAssertEqual(machine.identities, [], "gpu-1 left; its name stays with KEY-1")
        let other = machine.receive(from: Array("c2".utf8), hello, key: "KEY-2", now: 2)
        let refused = try XCTUnwrap(try refusal(other))
        XCTAssertEqual(refused, Refusal("the worker name gpu-1 belongs to another CURVE key; start this worker with another --name"))
        XCTAssertTrue(sentTypes(machine.receive(from: Array("c3".utf8), hello, key: "KEY-1", now: 3), to: "c3").contains(.welcome))
    }

    /// A worker whose queue is full (it does not read) is lost at once and its work goes to the others; what it
    /// sends afterwards is not heard.
    func testAPeerThatDoesNotTakeWhatItIsSentIsLostAndNotHeardAgain() throws {
        var machine = twoWorkersInAStep()
        let actions = machine.undeliverable(to: Array("b".utf8), reason: "its queue is full", muting: true, now: 1)
        XCTAssertEqual(names(actions), ["worker_lost"])
        XCTAssertEqual(sentTypes(actions, to: "a"), [.assignment])
        XCTAssertEqual(sentTypes(actions, to: "b"), [], "nothing more is sent to it")
        XCTAssertEqual(machine.workerNames, ["a"])
        let later = sessions.receive(&machine, "b", Message(type: .heartbeat, jobID: job.jobID).encoded(), now: 2)
        XCTAssertEqual(later, [], "ignored, without a warning each time")
        // A connection that closed is lost too, but a new connection under the same name may join.
        _ = sessions.receive(&machine, "b2", helloFrames(name: "b"), now: 3)
        XCTAssertEqual(machine.undeliverable(to: Array("b2".utf8), reason: "its connection closed", muting: false, now: 4).count, 1)
        XCTAssertFalse(machine.isMuted(Array("b2".utf8)))
    }

    /// The worker's side: asked to try again (its name is held by a connection the coordinator has not yet seen
    /// close), it says hello each second until the join timeout, which then names the coordinator's reason.
    func testAWorkerAskedToTryAgainSaysHelloEachSecondUntilTheJoinTimeout() throws {
        let hello = Hello(name: "a", host: "h", pid: 1)
        var machine = WorkerMachine(hello: hello, endpoint: "tcp://c:1", joinTimeout: 5, now: 0)
        XCTAssertEqual(machine.start(now: 0), [.send(Message(hello, jobID: 0))])
        let taken = Message(Refusal("the worker name a is taken", rejoin: true), jobID: job.jobID).encoded()
        for second in 0..<4 {
            let now = Double(second)
            XCTAssertEqual(try machine.receive(taken, now: now + 0.1), [.log("the coordinator asks this worker to say hello again (the worker name a is taken)")])
            XCTAssertEqual(try machine.tick(now: now + 0.5), [])
            XCTAssertEqual(try machine.tick(now: now + 1.1), [.send(Message(hello, jobID: 0))])
        }
        XCTAssertThrowsError(try machine.tick(now: 5.5)) {
            XCTAssertEqual("\($0)", "tcp://c:1: not admitted within 5 s: the worker name a is taken")
        }
    }

    /// Every message after the welcome carries its session (a hello after a rejoin request too, to reclaim the
    /// name); a message of another session is dropped.
    func testTheWelcomesSessionGoesOnEveryMessageAndOtherSessionsAreDropped() throws {
        let hello = Hello(name: "a", host: "h", pid: 1)
        var machine = WorkerMachine(hello: hello, endpoint: "tcp://c:1", now: 0)
        _ = machine.start(now: 0)
        let welcome = Message(type: .welcome, jobID: 9, session: 77, metadata: job.welcome.encoded())
        XCTAssertEqual(try machine.receive(welcome.encoded(), now: 0), [.join(job, jobID: 9)])
        XCTAssertEqual(machine.session, 77)
        var cluster = JobConfig.ClusterSection()
        cluster.heartbeatInterval = 1
        let joined = machine.joined(blockSizes: [6, 2], cluster: cluster, jobName: "j", now: 0)
        XCTAssertEqual(joined.last, .send(Message(type: .heartbeat, jobID: 9, session: 77)))
        XCTAssertEqual(try machine.receive(Message(type: .assignment, jobID: 9, session: 78, microBatches: 0..<1).encoded(), now: 1),
                       [.log("dropped a message of another session (assignment)")])
        let rejoin = try machine.receive(Message(Refusal("declared lost", rejoin: true), jobID: 9).encoded(), now: 2)
        XCTAssertEqual(rejoin.last, .send(Message(type: .hello, jobID: 0, session: 77, metadata: hello.encoded())))
    }
}

/// Warnings that peers cause: 20 a minute per address, 200 from all, the rest summed up once the minute is over.
final class WarningLimiterTests: XCTestCase {
    func testWarningsAreBoundedPerAddressAndInAllAndTheRestSummedUp() {
        var limiter = WarningLimiter()
        XCTAssertEqual((0..<25).filter { limiter.admit("10.0.0.1", now: Double($0)) }.count, 20)
        XCTAssertEqual((0..<3).filter { _ in limiter.admit("10.0.0.2", now: 30) }.count, 3)
        XCTAssertEqual(limiter.summaries(now: 59), [], "the minute is not over")
        XCTAssertEqual(limiter.summaries(now: 60), [.warningsSuppressed(address: "10.0.0.1", count: 5)])
        XCTAssertTrue(limiter.admit("10.0.0.1", now: 61), "a new minute")
        // From many addresses: at most 200 in all; past 1,024 addresses, the rest count as one source.
        var many = WarningLimiter()
        let admitted = (0..<2000).filter { many.admit("10.1.\($0 / 256).\($0 % 256)", now: 0) }.count
        XCTAssertEqual(admitted, WarningLimiter.total)
        // 824 addresses had one warning left out and 976 more were not told apart: 20 summaries, then one for the rest.
        let summaries = many.summaries(now: .infinity)
        XCTAssertEqual(summaries.count, WarningLimiter.perSource + 1)
        XCTAssertEqual(summaries.last, .warningsSuppressed(address: WarningLimiter.otherSources, count: 2000 - WarningLimiter.total - WarningLimiter.perSource))
    }
}
