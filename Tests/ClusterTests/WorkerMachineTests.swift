import Cluster
import Training
import Wire
import XCTest

/// The worker's state machine driven message by message and tick by tick, with time passed in: join, work,
/// heartbeats, a silent coordinator, reconnects with backoff, stale generations and leaving, without sockets.
final class WorkerMachineTests: XCTestCase {
    let job = JobDescription(yaml: "seed: 3", overrides: ["training.batch_size=16"])
    let hello = Hello(name: "w1", host: "node-1", pid: 11)
    let jobID: UInt64 = 0x2a
    /// Heartbeats every second, the coordinator lost after 10 s of silence.
    var cluster: JobConfig.ClusterSection {
        var cluster = JobConfig.ClusterSection()
        (cluster.heartbeatInterval, cluster.heartbeatTimeout) = (1, 10)
        return cluster
    }

    func frames(_ message: Message) -> [[UInt8]] { message.encoded() }
    func welcome(_ id: UInt64? = nil) -> [[UInt8]] { frames(Message(job.welcome, jobID: id ?? jobID)) }
    var helloMessage: WorkerMachine.Action { .send(Message(hello, jobID: 0)) }
    var heartbeat: WorkerMachine.Action { .send(Message(type: .heartbeat, jobID: jobID)) }

    /// A machine that has joined the job at time `now` with parameter tensors of sizes `blocks`.
    func joinedMachine(now: Double = 0, blocks: [Int] = [2, 1], retryTimeout: Double = 40) throws -> WorkerMachine {
        var machine = WorkerMachine(hello: hello, endpoint: "tcp://c:1", joinTimeout: 30, retryTimeout: retryTimeout, now: now)
        XCTAssertEqual(machine.start(now: now), [helloMessage])
        XCTAssertEqual(try machine.receive(welcome(), now: now), [.join(job, jobID: jobID)])
        XCTAssertEqual(machine.phase, .loading)
        XCTAssertEqual(machine.joined(blockSizes: blocks, cluster: cluster, jobName: "small", now: now),
                       [.log("joined job small (2a)"), heartbeat])
        XCTAssertEqual(machine.phase, .working)
        return machine
    }

    func testJoinComputeAndLeaveInResponseToTheCoordinator() throws {
        var fresh = WorkerMachine(hello: hello, endpoint: "tcp://c:1", now: 0)
        _ = fresh.start(now: 0)
        XCTAssertEqual(try fresh.receive(frames(Message(type: .welcome, jobID: jobID)), now: 0),
                       [.log("dropped a message from the coordinator: welcome metadata is missing")])
        var machine = try joinedMachine()
        // The assignment comes first; the weights follow a tensor at a time into the same feed.
        let assigned = try machine.receive(frames(Message(type: .assignment, jobID: jobID, step: 0, microBatches: 0..<2)), now: 0.1)
        guard case let .compute(0, 0..<2, feed, 0)? = assigned.first, assigned.count == 1 else { return XCTFail("\(assigned)") }
        XCTAssertEqual(feed.received, [false, false])
        XCTAssertEqual(try machine.receive(frames(Message(type: .weights, jobID: jobID, step: 0, tensors: [[1], [2]])), now: 0.1),
                       [.log("dropped weights whose shapes do not match the model")])
        XCTAssertEqual(try machine.receive(frames(Message(type: .weights, jobID: jobID, step: 0, block: 1, tensors: [[3]])), now: 0.1), [])
        XCTAssertEqual(feed.received, [false, true])
        XCTAssertEqual(try machine.receive(frames(Message(type: .weights, jobID: jobID, step: 0, tensors: [[1, 2]])), now: 0.1), [])
        XCTAssertEqual(try feed.tensor(0), [1, 2])
        // A second assignment of the same step (a straggler's work) computes at the same weights.
        XCTAssertEqual(try machine.receive(frames(Message(type: .assignment, jobID: jobID, step: 0, microBatches: 2..<3)), now: 0.2),
                       [.compute(step: 0, range: 2..<3, weights: feed, generation: 0)])
        // The next step's assignment starts a new feed and abandons the old one's waiters.
        guard case let .compute(1, _, next, 0)? = try machine.receive(frames(Message(type: .assignment, jobID: jobID, step: 1, microBatches: 0..<2)), now: 0.3).first
        else { return XCTFail("no compute for step 1") }
        XCTAssertFalse(next === feed)
        XCTAssertEqual(try machine.receive(frames(Message(type: .assignment, jobID: 7, step: 0, microBatches: 0..<2)), now: 0.4),
                       [.log("dropped a message of type assignment for job 7")])
        XCTAssertEqual(try machine.receive(frames(Message(type: .bye, jobID: jobID)), now: 0.5), [.send(Message(type: .bye, jobID: jobID)), .finish])
        XCTAssertEqual(machine.phase, .finished)
        XCTAssertThrowsError(try next.tensor(0), "the run is over: a pass still waiting is woken")

        var refused = try joinedMachine()
        XCTAssertThrowsError(try refused.receive(frames(Message(Refusal("no"), jobID: jobID)), now: 1)) {
            XCTAssertEqual("\($0)", "the coordinator refused this worker: no")
        }
    }

    func testNoWelcomeWithinTheJoinTimeoutGivesUpNamingTheEndpoint() throws {
        var machine = WorkerMachine(hello: hello, endpoint: "tcp://c:1", joinTimeout: 30, now: 100)
        _ = machine.start(now: 100)
        XCTAssertEqual(try machine.tick(now: 130), [])
        XCTAssertThrowsError(try machine.tick(now: 130.5)) {
            XCTAssertEqual("\($0)", "tcp://c:1: no answer from the coordinator within 30 s")
        }
    }

    func testHeartbeatsGoOutEveryIntervalAndAnyMessageCountsAsHeard() throws {
        var machine = try joinedMachine()
        XCTAssertEqual(try machine.tick(now: 0.5), [])
        XCTAssertEqual(try machine.tick(now: 1), [heartbeat])
        XCTAssertEqual(try machine.tick(now: 1.5), [])
        XCTAssertEqual(try machine.tick(now: 2), [heartbeat])
        _ = try machine.receive(frames(Message(type: .heartbeat, jobID: jobID)), now: 9)
        for second in stride(from: 3.0, through: 19, by: 1) {
            XCTAssertEqual(try machine.tick(now: second), [heartbeat], "at \(second) s, heard at 9 s")
        }
    }

    /// A coordinator silent for heartbeat_timeout: the worker abandons its work (a new generation), reconnects on
    /// a fresh socket and says hello again after 0, 1, 2, 4, 8, 15, 15 … s, until a welcome for the same job comes
    /// (it rejoins without reloading) or retry_timeout has passed.
    func testASilentCoordinatorIsRetriedWithGrowingPausesUntilItAnswers() throws {
        var machine = try joinedMachine(retryTimeout: 40)
        guard case let .compute(_, _, feed, 0)? = try machine.receive(frames(Message(type: .assignment, jobID: jobID, step: 4, microBatches: 0..<1)), now: 0).first
        else { return XCTFail("no compute") }
        XCTAssertEqual(try machine.tick(now: 9.9), [heartbeat])
        XCTAssertEqual(try machine.tick(now: 10.5), [.log("lost the coordinator (silent for 10 s); reconnecting"), .reconnect, helloMessage])
        XCTAssertEqual(machine.generation, 1)
        XCTAssertThrowsError(try feed.tensor(0), "the step's work is void")
        var hellos: [Double] = [10.5]
        for tenth in 106...505 {
            let now = Double(tenth) / 10
            let actions = try machine.tick(now: now)
            if actions == [.reconnect, helloMessage] { hellos.append(now) } else { XCTAssertEqual(actions, [], "at \(now) s") }
        }
        XCTAssertEqual(hellos, [10.5, 11.5, 13.5, 17.5, 25.5, 40.5])
        XCTAssertEqual(try machine.receive(welcome(), now: 42), [.log("rejoined the coordinator"), heartbeat])
        XCTAssertEqual(machine.phase, .working)
        XCTAssertEqual(machine.generation, 1, "no new generation: the work was already abandoned")
        XCTAssertEqual(try machine.tick(now: 43), [heartbeat])

        var unreachable = try joinedMachine(retryTimeout: 40)
        _ = try unreachable.tick(now: 10.5)
        for tenth in 106...505 { _ = try unreachable.tick(now: Double(tenth) / 10) }
        XCTAssertThrowsError(try unreachable.tick(now: 55.5)) {
            XCTAssertEqual("\($0)", "tcp://c:1: the coordinator has been unreachable for 40 s; giving up")
        }
    }

    /// A coordinator that forgot this worker asks it to say hello again: the work in flight is void (its results,
    /// which arrive later, are not sent), one hello goes out however often it is asked, and the welcome of the
    /// same job brings it back without reloading; another job's welcome is refused.
    func testARejoinRequestVoidsTheWorkInFlightAndStaleResultsAreNotSent() throws {
        var machine = try joinedMachine()
        guard case let .compute(4, _, old, 0)? = try machine.receive(frames(Message(type: .assignment, jobID: jobID, step: 4, microBatches: 0..<1)), now: 1).first
        else { return XCTFail("no compute") }
        let rejoin = frames(Message(Refusal("declared lost", rejoin: true), jobID: jobID))
        XCTAssertEqual(try machine.receive(rejoin, now: 2),
                       [.log("the coordinator asks this worker to join again (declared lost)"), helloMessage])
        XCTAssertEqual(try machine.receive(rejoin, now: 2.1), [], "a hello is already out")
        XCTAssertEqual(machine.phase, .rejoining)
        XCTAssertEqual(try machine.tick(now: 3.5), [], "no heartbeats while the welcome is awaited")
        XCTAssertThrowsError(try old.tensor(0), "a pass waiting for the old weights is woken with an error")
        let stale = ComputeResult(generation: 0, step: 4, outcome: .success(GradientEngine.Piece(microBatches: 0..<1, parameter: 0, values: [1, 2])))
        XCTAssertEqual(try machine.computed([stale], now: 3), [])
        XCTAssertEqual(try machine.receive(welcome(), now: 4), [.log("rejoined the coordinator"), heartbeat])
        guard case let .compute(4, _, fresh, 1)? = try machine.receive(frames(Message(type: .assignment, jobID: jobID, step: 4, microBatches: 0..<1)), now: 5).first
        else { return XCTFail("no compute under generation 1") }
        XCTAssertFalse(fresh === old, "the old weights are void")
        XCTAssertThrowsError(try machine.receive(welcome(0x2b), now: 6)) {
            XCTAssertTrue("\($0)".contains("now runs job 2b, not 2a"), "\($0)")
        }
    }

    /// Pieces of one range with consecutive blocks share a message (block 2 is the loss sum here); with bf16 on the
    /// wire the loss travels alone, as float32. A failed computation sends what is done, then the reason.
    func testFinishedPiecesTravelAsRunsOfConsecutiveBlocks() throws {
        func piece(_ range: Range<Int>, _ parameter: Int?, _ values: [Float]) -> ComputeResult {
            ComputeResult(generation: 0, step: 7, outcome: .success(GradientEngine.Piece(microBatches: range, parameter: parameter, values: values)))
        }
        var machine = try joinedMachine()
        XCTAssertEqual(try machine.computed([piece(0..<2, nil, [0.5]), piece(0..<2, 1, [3]), piece(2..<3, 1, [4]), piece(0..<2, 0, [1, 2])], now: 1), [
            .send(Message(type: .gradients, jobID: jobID, step: 7, microBatches: 0..<2, block: 0, tensors: [[1, 2], [3], [0.5]])),
            .send(Message(type: .gradients, jobID: jobID, step: 7, microBatches: 2..<3, block: 1, tensors: [[4]])),
        ])
        var halved = WorkerMachine(hello: hello, endpoint: "tcp://c:1", now: 0)
        _ = halved.start(now: 0)
        _ = try halved.receive(welcome(), now: 0)
        var bf16 = cluster
        bf16.wireDType = .bf16
        _ = halved.joined(blockSizes: [2, 1], cluster: bf16, jobName: "small", now: 0)
        XCTAssertEqual(try halved.computed([piece(0..<2, nil, [0.5]), piece(0..<2, 1, [3]), piece(0..<2, 0, [1, 2])], now: 1), [
            .send(Message(type: .gradients, jobID: jobID, step: 7, microBatches: 0..<2, block: 0, tensors: [[1, 2], [3]], tensorType: .bfloat16)),
            .send(Message(type: .gradients, jobID: jobID, step: 7, microBatches: 0..<2, block: 2, tensors: [[0.5]])),
        ])
        struct OutOfMemory: Error, CustomStringConvertible { var description: String { "out of memory" } }
        let failed = ComputeResult(generation: 0, step: 7, outcome: .failure(OutOfMemory()))
        XCTAssertThrowsError(try machine.computed([piece(2..<3, 0, [5, 6]), failed], now: 2)) {
            let failure = $0 as? WorkerMachine.ComputeFailure
            XCTAssertEqual(failure?.report, [
                .send(Message(type: .gradients, jobID: jobID, step: 7, microBatches: 2..<3, block: 0, tensors: [[5, 6]])),
                .send(Message(Refusal("out of memory"), jobID: jobID)),
            ])
        }
    }

    func testLeavingSaysByeAndAFailedJoinSaysWhy() throws {
        var machine = try joinedMachine()
        XCTAssertEqual(machine.leave(now: 1), [.log("leaving the job"), .send(Message(type: .bye, jobID: jobID)), .finish])
        XCTAssertEqual(machine.phase, .finished)
        XCTAssertEqual(try machine.tick(now: 100), [], "a finished worker neither heartbeats nor reconnects")

        var failing = WorkerMachine(hello: hello, endpoint: "tcp://c:1", now: 0)
        _ = failing.start(now: 0)
        _ = try failing.receive(welcome(), now: 0)
        XCTAssertEqual(failing.joinFailed("/data/train.gz: file not found", now: 1),
                       [.send(Message(Refusal("/data/train.gz: file not found"), jobID: jobID)), .finish])
    }

    /// A daemon answers the hello with `pooled`: the worker waits without a join timeout, exchanging heartbeats;
    /// a job's bye, or a job it cannot load, sends it back to the pool with a fresh hello (session 0) instead of
    /// ending it; a silent daemon is reconnected to.
    func testAPooledWorkerStaysBetweenJobs() throws {
        var machine = WorkerMachine(hello: hello, endpoint: "tcp://d:1", joinTimeout: 30, retryTimeout: 600, now: 0)
        XCTAssertEqual(machine.start(now: 0), [helloMessage])
        let pooled = frames(Message(Pooled(heartbeatInterval: 2, heartbeatTimeout: 8), jobID: 0))
        XCTAssertEqual(try machine.receive(pooled, now: 0.1), [.log("in the pool of tcp://d:1, waiting for a job")])
        XCTAssertEqual(machine.phase, .idle)
        XCTAssertEqual(try machine.tick(now: 1), [])
        XCTAssertEqual(try machine.tick(now: 2.2), [.send(Message(type: .heartbeat, jobID: 0))])
        XCTAssertEqual(try machine.receive(frames(Message(type: .heartbeat, jobID: 0)), now: 7), [])
        XCTAssertEqual(try machine.tick(now: 40), [.log("lost the pool's daemon (silent for 33 s); reconnecting"), .reconnect, helloMessage],
                       "idle for longer than the join timeout is fine; a silent daemon is not")
        XCTAssertEqual(try machine.receive(pooled, now: 40.1), [])
        XCTAssertEqual(machine.phase, .idle)
        // A job welcomes it (session 9), it works, and the job says bye: back to the pool.
        var welcome = Message(job.welcome, jobID: jobID)
        welcome.session = 9
        XCTAssertEqual(try machine.receive(frames(welcome), now: 41), [.join(job, jobID: jobID)])
        XCTAssertEqual(machine.joined(blockSizes: [2], cluster: cluster, jobName: "small", now: 41).last,
                       .send(Message(type: .heartbeat, jobID: jobID, session: 9)))
        XCTAssertEqual(try machine.receive(frames(Message(type: .bye, jobID: jobID, session: 9)), now: 42),
                       [.send(Message(type: .bye, jobID: jobID, session: 9)), .log("left job 2a; back in the pool"), helloMessage])
        XCTAssertEqual(machine.session, 0)
        XCTAssertFalse(machine.hasJoined)
        XCTAssertEqual(try machine.receive(pooled, now: 42.1), [])
        XCTAssertEqual(machine.phase, .idle)
        // A job it cannot load: the job hears why, and the worker is back in the pool.
        XCTAssertEqual(try machine.receive(frames(welcome), now: 43), [.join(job, jobID: jobID)])
        var refusal = Message(Refusal("no data"), jobID: jobID)
        refusal.session = 9
        XCTAssertEqual(machine.joinFailed("no data", now: 43),
                       [.send(refusal),
                        .log("cannot join job 2a (no data); back in the pool"), helloMessage])
        XCTAssertNotEqual(machine.phase, .finished)
    }

    func testWithoutAPoolAByeEndsTheWorkerAsBefore() throws {
        var machine = try joinedMachine()
        XCTAssertEqual(try machine.receive(frames(Message(type: .bye, jobID: jobID)), now: 1),
                       [.send(Message(type: .bye, jobID: jobID)), .finish])
        XCTAssertEqual(machine.phase, .finished)
    }
}
