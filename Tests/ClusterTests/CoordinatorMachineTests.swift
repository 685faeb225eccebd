import Cluster
import Kernels
import TestSupport
import NN
import Training
import Wire
import XCTest

/// The coordinator's state machine driven message by message, with time passed in: no sockets, no clock.
final class CoordinatorMachineTests: XCTestCase {
    let job = JobDescription(yaml: "model: {sizes: [3, 2]}\ntraining: {batch_size: 4, micro_batches: 2}", overrides: [])
    let layout = ParameterLayout(entries: [("0.weight", [2, 3], true), ("0.bias", [2], true)])
    let w1 = Array("w1".utf8), w2 = Array("w2".utf8)
    let sessions = SimulatedSessions()

    func receive(_ machine: inout CoordinatorMachine, _ name: String, _ frames: [[UInt8]], now: Double) -> [CoordinatorMachine.Action] {
        sessions.receive(&machine, name, frames, now: now)
    }

    func gradients(_ step: UInt64, _ range: Range<Int>, jobID: UInt64? = nil, tensors: [[Float]]? = nil) -> [[UInt8]] {
        Message(type: .gradients, jobID: jobID ?? job.jobID, step: step, microBatches: range,
                tensors: tensors ?? [[1, 2, 3, 4, 5, 6], [7, 8], [0.5]]).encoded()
    }

    func warnings(_ actions: [CoordinatorMachine.Action]) -> [String] {
        actions.compactMap {
            if case let .log(event) = $0, event.name == "warning", case let .string(text)? = event.fields.first?.1 { return text }
            return nil
        }
    }

    /// A tensor of 64 KB or more starts a weights message; smaller ones (biases, a small last layer) join it.
    func testWeightsTravelALayerAMessageWithSmallTensorsJoiningTheOneBefore() {
        let mlp = ParameterLayout(entries: [("0.weight", [256, 784], true), ("0.bias", [256], true), ("2.weight", [256, 256], true),
                                            ("2.bias", [256], true), ("4.weight", [10, 256], true), ("4.bias", [10], true)])
        XCTAssertEqual(CoordinatorMachine.weightGroups(mlp), [0..<2, 2..<6])
        XCTAssertEqual(CoordinatorMachine.weightGroups(layout), [0..<2])
        let sends = { (machine: inout CoordinatorMachine) -> [Message] in
            machine.startStep(0, parameters: (0..<mlp.totalCount).map(Float.init), now: 0).compactMap {
                if case let .send(_, message) = $0, message.type == .weights { return message }
                return nil
            }
        }
        var machine = CoordinatorMachine(job: job, layout: mlp, microBatches: 2, newSession: sessions.issue)
        _ = receive(&machine, "w1", helloFrames(name: "w1"), now: 0)
        _ = receive(&machine, "w1", Message(type: .heartbeat, jobID: job.jobID).encoded(), now: 0)
        let weights = sends(&machine)
        XCTAssertEqual(weights.map(\.block), [0, 2])
        XCTAssertEqual(weights.map { $0.tensors.map(\.count) }, [[256 * 784, 256], [256 * 256, 256, 2560, 10]])
        XCTAssertEqual(weights.flatMap(\.tensors).flatMap { $0 }, (0..<mlp.totalCount).map(Float.init))
    }

    func testJoinAssignCollectAndReportWithInjectedTime() throws {
        var machine = CoordinatorMachine(job: job, layout: layout, microBatches: 2, newSession: sessions.issue)
        let welcome = receive(&machine, "w1", helloFrames(name: "w1"), now: 0)
        guard case let .send(peer, message)? = welcome.first else { return XCTFail("no welcome: \(welcome)") }
        XCTAssertEqual(peer, w1)
        XCTAssertEqual(message.type, .welcome)
        XCTAssertEqual(message.jobID, job.jobID)
        _ = receive(&machine, "w2", helloFrames(name: "w2"), now: 0)
        XCTAssertEqual(machine.readyToJoin, 0)
        _ = receive(&machine, "w1", Message(type: .heartbeat, jobID: job.jobID).encoded(), now: 1)
        _ = receive(&machine, "w2", Message(type: .heartbeat, jobID: job.jobID).encoded(), now: 1)
        XCTAssertEqual(machine.readyToJoin, 2)

        let parameters: [Float] = [1, 2, 3, 4, 5, 6, 7, 8]
        let start = machine.startStep(5, parameters: parameters, now: 100)
        let sends = start.compactMap { action -> ([UInt8], Message)? in
            if case let .send(peer, message) = action { return (peer, message) }
            return nil
        }
        // Round-robin: both assignments, then both workers' weights (small tensors share a message, here all).
        XCTAssertEqual(sends.map(\.0), [w1, w2, w1, w2])
        // Each worker's messages carry the session of its own welcome.
        let (s1, s2) = (try XCTUnwrap(sessions.byName["w1"]), try XCTUnwrap(sessions.byName["w2"]))
        XCTAssertNotEqual(s1, s2)
        XCTAssertEqual(sends.map(\.1.session), [s1, s2, s1, s2])
        XCTAssertEqual(sends[0].1, Message(type: .assignment, jobID: job.jobID, session: s1, step: 5, microBatches: 0..<1))
        XCTAssertEqual(sends[1].1.microBatches, 1..<2)
        XCTAssertEqual(sends[2].1, Message(type: .weights, jobID: job.jobID, session: s1, step: 5, block: 0, tensors: [[1, 2, 3, 4, 5, 6], [7, 8]]))
        XCTAssertEqual(machine.workerCount, 2)

        // Messages that cannot belong are dropped with the reason and change nothing.
        XCTAssertEqual(warnings(receive(&machine, "w1", gradients(4, 0..<1), now: 100.1)),
                       ["dropped a message from w1: gradients for step 4 during step 5"])
        XCTAssertEqual(warnings(receive(&machine, "w1", gradients(5, 1..<2), now: 100.1)),
                       ["dropped a message from w1: gradients for micro-batches 1..<2 it was not assigned"])
        XCTAssertEqual(warnings(receive(&machine, "w1", gradients(5, 0..<1, jobID: 7), now: 100.1)),
                       ["dropped a message from w1: job id 7, expected \(String(job.jobID, radix: 16))"])
        XCTAssertEqual(warnings(receive(&machine, "w1", gradients(5, 0..<1, tensors: [[1]]), now: 100.1)),
                       ["dropped a message from w1: block 0 has 1 values, expected 6"])
        XCTAssertEqual(warnings(receive(&machine, "w1", gradients(5, 0..<1, tensors: [[1, 2, 3, 4, 5, 6], [7, 8], [0.5], [1]]), now: 100.1)),
                       ["dropped a message from w1: 4 tensors from block 0, expected blocks within 0..<3 (2 parameter blocks, then the loss)"])
        XCTAssertEqual(receive(&machine, "w1", gradients(5, 0..<1), now: 100.25), [])
        XCTAssertEqual(warnings(receive(&machine, "w1", gradients(5, 0..<1), now: 100.3)),
                       ["dropped a message from w1: gradients for micro-batches 0..<1 it was not assigned"])
        XCTAssertFalse(machine.isStepComplete)
        XCTAssertEqual(receive(&machine, "w2", gradients(5, 1..<2), now: 100.5), [])
        XCTAssertTrue(machine.isStepComplete)
        let result = try XCTUnwrap(machine.finishStep(now: 100.6))
        XCTAssertEqual(result.gradientSum, [2, 4, 6, 8, 10, 12, 14, 16])
        XCTAssertEqual(result.lossSum, 1)
        let fields = JSONValue.object(result.fields).serialized
        XCTAssertTrue(fields.contains("\"worker_s\":{\"w1\":0.25,\"w2\":0.5}"), fields)
        XCTAssertTrue(fields.contains("\"slowest_worker\":\"w2\""), fields)
        XCTAssertTrue(fields.contains("\"waited_for_slowest_s\":0.25"), fields)
    }
}

/// Lost, leaving, slow and joining workers, driven tick by tick with injected time. Simulated workers send the
/// tree sums of per-micro-batch leaves, so every completed step can be checked against the tree over all leaves.
final class CoordinatorMachineFaultTests: XCTestCase {
    let job = JobDescription(yaml: "model: {sizes: [3, 2]}\ntraining: {batch_size: 8, micro_batches: 4}", overrides: [])
    let layout = ParameterLayout(entries: [("0.weight", [2, 3], true), ("0.bias", [2], true)])
    let k = 4
    var cluster: JobConfig.ClusterSection {
        var cluster = JobConfig.ClusterSection()
        (cluster.heartbeatInterval, cluster.heartbeatTimeout, cluster.stepDeadline, cluster.stragglerDelay) = (1, 10, 60, 5)
        return cluster
    }

    /// Per-micro-batch leaves: 8 gradient values (both blocks) and a loss each.
    lazy var leaves: [[Float]] = (0..<k).map { testValues(9, seed: UInt64(40 + $0)).map { $0 * 100 } }

    func id(_ name: String) -> [UInt8] { Array(name.utf8) }
    let sessions = SimulatedSessions()

    func receive(_ machine: inout CoordinatorMachine, _ name: String, _ frames: [[UInt8]], now: Double) -> [CoordinatorMachine.Action] {
        sessions.receive(&machine, name, frames, now: now)
    }

    /// What a worker holding `range` sends: one message per maximal aligned block, each the tree sum of its leaves.
    func gradients(_ step: UInt64, _ range: Range<Int>, job: JobDescription) -> [[[UInt8]]] {
        GradientTree.alignedBlocks(range).map { block in
            let sum = GradientTree.sum(Array(leaves[block]))
            return Message(type: .gradients, jobID: job.jobID, step: step, microBatches: block,
                           tensors: [Array(sum[0..<6]), Array(sum[6..<8]), [sum[8]]]).encoded()
        }
    }

    func expectedSum() -> [Float] { GradientTree.sum(leaves) }

    func machine(workers names: [String], now: Double = 0) -> CoordinatorMachine {
        var machine = CoordinatorMachine(job: job, layout: layout, microBatches: k, cluster: cluster, newSession: sessions.issue)
        for name in names {
            _ = receive(&machine, name, helloFrames(name: name, host: "h-\(name)"), now: now)
            _ = receive(&machine, name, Message(type: .heartbeat, jobID: job.jobID).encoded(), now: now)
        }
        return machine
    }

    /// The (peer, type, micro-batches) of the sends among `actions`.
    func sends(_ actions: [CoordinatorMachine.Action]) -> [(String, MessageType, Range<Int>)] {
        actions.compactMap {
            if case let .send(peer, message) = $0 { return (String(decoding: peer, as: UTF8.self), message.type, message.microBatches) }
            return nil
        }
    }

    func events(_ actions: [CoordinatorMachine.Action], _ name: String) -> [String] {
        actions.compactMap {
            if case let .log(event) = $0, event.name == name { return JSONValue.object(event.fields).serialized }
            return nil
        }
    }

    func heartbeat(_ machine: inout CoordinatorMachine, _ names: [String], now: Double) {
        for name in names { _ = receive(&machine, name, Message(type: .heartbeat, jobID: job.jobID).encoded(), now: now) }
    }

    func deliver(_ machine: inout CoordinatorMachine, _ name: String, _ step: UInt64, _ range: Range<Int>, now: Double) -> [CoordinatorMachine.Action] {
        gradients(step, range, job: job).flatMap { receive(&machine, name, $0, now: now) }
    }

    func finish(_ machine: inout CoordinatorMachine, now: Double, file: StaticString = #filePath, line: UInt = #line) throws -> StepSums {
        XCTAssertTrue(machine.isStepComplete, file: file, line: line)
        let result = try XCTUnwrap(machine.finishStep(now: now), file: file, line: line)
        let expected = expectedSum()
        assertBitIdentical(result.gradientSum, Array(expected[0..<8]), "gradient", file: file, line: line)
        XCTAssertEqual(result.lossSum.bitPattern, expected[8].bitPattern, file: file, line: line)
        return result
    }

    func testASilentWorkerIsLostAndItsMicroBatchesGoToTheOthers() throws {
        var machine = machine(workers: ["a", "b", "c"])
        XCTAssertEqual(sends(machine.startStep(0, parameters: [Float](repeating: 0, count: 8), now: 0)).filter { $0.1 == .assignment }.map(\.2),
                       [0..<1, 1..<2, 2..<4])
        XCTAssertEqual(deliver(&machine, "a", 0, 0..<1, now: 1), [])
        heartbeat(&machine, ["a", "b"], now: 9)
        XCTAssertEqual(events(machine.tick(now: 9.5), "worker_lost"), [])
        let lost = machine.tick(now: 10.5)  // c silent since its hello
        XCTAssertEqual(events(lost, "worker_lost"), [
            #"{"worker":"c","host":"h-c","reason":"no heartbeat for 10.5 s (heartbeat_timeout 10 s)","step":0,"workers":2}"#,
        ])
        // c's micro-batches 2 and 3 go one each to a (which needs nothing else) and b; c is told to rejoin.
        XCTAssertEqual(sends(lost).filter { $0.1 == .assignment }.map { "\($0.0) \($0.2)" }, ["a 2..<3", "b 3..<4"])
        XCTAssertTrue(sends(lost).contains { $0.0 == "c" && $0.1 == .error })
        XCTAssertFalse(sends(lost).contains { $0.0 == "a" && $0.1 == .weights }, "a already has the step's weights")
        _ = deliver(&machine, "b", 0, 1..<2, now: 11)
        _ = deliver(&machine, "a", 0, 2..<3, now: 11)
        XCTAssertFalse(machine.isStepComplete)
        _ = deliver(&machine, "b", 0, 3..<4, now: 12)
        let result = try finish(&machine, now: 12)
        XCTAssertTrue(JSONValue.object(result.fields).serialized.contains(#""lost_workers":["c"]"#))
        XCTAssertEqual(machine.workerNames, ["a", "b"])
    }

    /// What a worker streaming its results sends for `range`: one message per parameter block and one for the
    /// loss (block 2), per maximal aligned block, in the given block order.
    func pieces(_ step: UInt64, _ range: Range<Int>, order: [Int] = [2, 1, 0]) -> [[[UInt8]]] {
        GradientTree.alignedBlocks(range).flatMap { block in
            let sum = GradientTree.sum(Array(leaves[block]))
            let tensors = [Array(sum[0..<6]), Array(sum[6..<8]), [sum[8]]]
            return order.map { index in
                Message(type: .gradients, jobID: job.jobID, step: step, microBatches: block, block: UInt32(index),
                        tensors: [tensors[index]]).encoded()
            }
        }
    }

    func testStreamedBlocksInAnyOrderGiveTheSameBitsAsWholeMessages() throws {
        for order in [[2, 1, 0], [0, 1, 2], [1, 2, 0]] {
            var machine = machine(workers: ["a", "b"])
            _ = machine.startStep(0, parameters: [Float](repeating: 0, count: 8), now: 0)
            let streamed = pieces(0, 0..<2, order: order)
            for message in streamed.dropLast() {
                XCTAssertEqual(receive(&machine, "a", message, now: 1), [])
            }
            let duplicate = events(receive(&machine, "a", streamed[0], now: 1), "warning")
            XCTAssertTrue(duplicate.count == 1 && duplicate[0].contains("duplicate block \(order[0]) for micro-batches 0..<2 of step 0"), "\(duplicate)")
            XCTAssertEqual(receive(&machine, "a", streamed.last!, now: 1), [])
            _ = deliver(&machine, "b", 0, 2..<4, now: 2)
            _ = try finish(&machine, now: 2)
        }
    }

    func testALostWorkersHalfSentPiecesAreDiscardedAndItsWorkRedone() throws {
        var machine = machine(workers: ["a", "b"])
        _ = machine.startStep(0, parameters: [Float](repeating: 0, count: 8), now: 0)
        let partial = pieces(0, 2..<4)
        _ = receive(&machine, "b", partial[0], now: 1)  // the loss, then b dies before its gradients
        let lost = machine.declareLost(name: "b", reason: "process exited", now: 2)
        XCTAssertEqual(sends(lost).filter { $0.1 == .assignment }.map { "\($0.0) \($0.2)" }, ["a 2..<4"])
        for message in pieces(0, 0..<2) + pieces(0, 2..<3) + pieces(0, 3..<4) {
            XCTAssertEqual(receive(&machine, "a", message, now: 3), [])
        }
        _ = try finish(&machine, now: 3)
    }

    func testAWorkerSayingByeOrFailingMidStepHandsItsWorkOn() throws {
        for leaving in [Message(type: .bye, jobID: job.jobID), Message(type: .error, jobID: job.jobID, metadata: Array(#"{"message":"out of memory"}"#.utf8))] {
            var machine = machine(workers: ["a", "b"])
            _ = machine.startStep(3, parameters: [Float](repeating: 0, count: 8), now: 0)
            let actions = receive(&machine, "b", leaving.encoded(), now: 1)
            XCTAssertEqual(sends(actions).map { "\($0.0) \($0.1) \($0.2)" }, ["a assignment 2..<4"], "\(leaving.type)")
            XCTAssertEqual(events(actions, leaving.type == .bye ? "worker_left" : "worker_lost").count, 1)
            if leaving.type == .error { XCTAssertTrue(events(actions, "worker_lost")[0].contains("failed: out of memory")) }
            _ = deliver(&machine, "a", 3, 0..<2, now: 2)
            _ = deliver(&machine, "a", 3, 2..<4, now: 2)
            _ = try finish(&machine, now: 2)
        }
    }

    func testAStragglersWorkIsReissuedToAnIdleWorkerAndTheFirstResultCounts() throws {
        var machine = machine(workers: ["a", "b"])
        _ = machine.startStep(0, parameters: [Float](repeating: 0, count: 8), now: 0)
        _ = deliver(&machine, "a", 0, 0..<2, now: 0.5)
        heartbeat(&machine, ["a", "b"], now: 5)
        XCTAssertEqual(events(machine.tick(now: 5), "straggler"), [])
        let reissue = machine.tick(now: 5.1)
        XCTAssertEqual(events(reissue, "straggler"), [#"{"worker":"b","step":0,"micro_batches":"2–3","reissued_to":["a"]}"#])
        XCTAssertEqual(sends(reissue).filter { $0.1 == .assignment }.map { "\($0.0) \($0.2)" }, ["a 2..<4"])
        XCTAssertEqual(events(machine.tick(now: 9), "straggler"), [], "re-issued once")
        // b's late result for the same micro-batches, whole or in pieces, is not used and not an error.
        _ = receive(&machine, "b", pieces(0, 2..<4)[0], now: 5.5)
        _ = deliver(&machine, "a", 0, 2..<4, now: 6)
        XCTAssertEqual(pieces(0, 2..<4).dropFirst().flatMap { receive(&machine, "b", $0, now: 6.5) }, [])
        let result = try finish(&machine, now: 7)
        XCTAssertTrue(JSONValue.object(result.fields).serialized.contains(#""reissued_micro_batches":2"#))
        XCTAssertEqual(machine.workerNames, ["a", "b"])
    }

    func testAWorkerPastTheStepDeadlineIsLostEvenWhileItHeartbeats() throws {
        var machine = machine(workers: ["a", "b"])
        _ = machine.startStep(0, parameters: [Float](repeating: 0, count: 8), now: 0)
        _ = deliver(&machine, "a", 0, 0..<2, now: 1)
        for second in stride(from: 1.0, through: 60, by: 1) { heartbeat(&machine, ["a", "b"], now: second); _ = machine.tick(now: second) }
        let lost = machine.tick(now: 60.5)
        XCTAssertEqual(events(lost, "worker_lost").count, 1)
        XCTAssertTrue(events(lost, "worker_lost")[0].contains("no gradients for micro-batches 2–3 of step 0 within step_deadline 60 s"))
        XCTAssertEqual(machine.workerNames, ["a"])
    }

    func testWhenEveryWorkerIsLostANewWorkerTakesTheStepAtOnce() throws {
        var machine = machine(workers: ["a"])
        XCTAssertNil(machine.waitingReason(required: 1))
        XCTAssertEqual(machine.waitingReason(required: 2), "waiting for workers: 1 of 2 (cluster.min_workers) ready")
        _ = machine.startStep(0, parameters: [Float](repeating: 0, count: 8), now: 0)
        _ = deliver(&machine, "a", 0, 0..<2, now: 1)
        _ = machine.tick(now: 12)
        XCTAssertEqual(machine.workerCount, 0)
        XCTAssertEqual(machine.waitingReason(required: 1), "waiting for a worker: every worker of step 0 was lost")
        _ = receive(&machine, "z", helloFrames(name: "z"), now: 13)
        XCTAssertEqual(machine.waitingReason(required: 1), "waiting for a worker: every worker of step 0 was lost")
        let ready = receive(&machine, "z", Message(type: .heartbeat, jobID: job.jobID).encoded(), now: 14)
        XCTAssertEqual(events(ready, "worker_joined").count, 1)
        XCTAssertEqual(sends(ready).map { "\($0.0) \($0.1) \($0.2)" }, ["z assignment 2..<4", "z weights 0..<0"])
        _ = deliver(&machine, "z", 0, 2..<4, now: 15)
        _ = try finish(&machine, now: 15)
    }

    /// A worker that reconnects mid-step (its hello while it is still a peer) drops the weights it had; when it
    /// takes the step's work again it gets them again (it would otherwise wait for them until step_deadline).
    func testAWorkerThatReconnectsMidStepGetsTheStepsWeightsAgain() throws {
        var machine = machine(workers: ["a"])
        XCTAssertEqual(sends(machine.startStep(0, parameters: [Float](repeating: 0, count: 8), now: 0)).map(\.1), [.assignment, .weights])
        let hello = receive(&machine, "a", helloFrames(name: "a"), now: 1)
        XCTAssertEqual(events(hello, "worker_lost").count, 1)
        let ready = receive(&machine, "a", Message(type: .heartbeat, jobID: job.jobID).encoded(), now: 2)
        XCTAssertEqual(sends(ready).map { "\($0.0) \($0.1) \($0.2)" }, ["a assignment 0..<4", "a weights 0..<0"])
        _ = deliver(&machine, "a", 0, 0..<4, now: 3)
        _ = try finish(&machine, now: 3)
    }

    func testAWorkerJoiningMidStepGetsWorkFromTheNextStep() throws {
        var machine = machine(workers: ["a"])
        _ = machine.startStep(0, parameters: [Float](repeating: 0, count: 8), now: 0)
        _ = receive(&machine, "b", helloFrames(name: "b"), now: 0.1)
        XCTAssertEqual(sends(receive(&machine, "b", Message(type: .heartbeat, jobID: job.jobID).encoded(), now: 0.2)).count, 0)
        _ = deliver(&machine, "a", 0, 0..<4, now: 1)
        _ = try finish(&machine, now: 1)
        let next = machine.startStep(1, parameters: [Float](repeating: 0, count: 8), now: 2)
        XCTAssertEqual(sends(next).filter { $0.1 == .assignment }.map { "\($0.0) \($0.2)" }, ["a 0..<2", "b 2..<4"])
    }

    func testHeartbeatsGoOutEveryIntervalAndStrangersAreToldToSayHello() throws {
        var machine = machine(workers: ["a"])
        XCTAssertEqual(sends(machine.tick(now: 0.5)).count, 0)
        XCTAssertEqual(sends(machine.tick(now: 1)).map { "\($0.0) \($0.1)" }, ["a heartbeat"])
        XCTAssertEqual(sends(machine.tick(now: 1.5)).count, 0)
        let stranger = receive(&machine, "x", Message(type: .heartbeat, jobID: job.jobID).encoded(), now: 2)
        guard case let .send(_, reply)? = stranger.first else { return XCTFail("\(stranger)") }
        XCTAssertEqual(reply.type, .error)
        XCTAssertTrue(String(decoding: reply.metadata, as: UTF8.self).contains(#""rejoin":true"#))
        // A worker that says hello again (it restarted) loses what it owed and is welcomed afresh.
        _ = machine.startStep(0, parameters: [Float](repeating: 0, count: 8), now: 3)
        let again = receive(&machine, "a", helloFrames(name: "a"), now: 4)
        XCTAssertEqual(events(again, "worker_lost").count, 1)
        XCTAssertEqual(sends(again).map { "\($0.0) \($0.1)" }, ["a welcome"])
    }

    func testNonFiniteGradientsAreTakenAndTheirSenderNamed() throws {
        var machine = machine(workers: ["a", "b"])
        _ = machine.startStep(0, parameters: [Float](repeating: 0, count: 8), now: 0)
        _ = deliver(&machine, "a", 0, 0..<2, now: 1)
        let bad = Message(type: .gradients, jobID: job.jobID, step: 0, microBatches: 2..<4,
                          tensors: [[1, 2, 3, 4, 5, 6], [.nan, 1], [.infinity]]).encoded()
        XCTAssertEqual(receive(&machine, "b", bad, now: 1), [])
        let result = try XCTUnwrap(machine.finishStep(now: 1))
        XCTAssertEqual(result.nonFiniteSources[1], ["b"])
        XCTAssertEqual(result.nonFiniteSources[nil], ["b"])
        XCTAssertNil(result.nonFiniteSources[0])
    }
}

/// A worker's hello, as `Worker` sends it.
func helloFrames(name: String, host: String = "unknown") -> [[UInt8]] {
    Message(Hello(name: name, host: host, pid: 1), jobID: 0).encoded()
}

/// The sessions the coordinator issued to simulated workers, by name, and the delivery of their messages in them.
final class SimulatedSessions {
    var byName: [String: UInt64] = [:]
    private var next: UInt64 = 0x5E55_0000

    /// Sessions for `CoordinatorMachine(newSession:)`: distinct and predictable.
    func issue() -> UInt64 {
        next += 1
        return next
    }

    /// Hands `frames` from the worker `name` to `machine`, in the session its last welcome gave it (a hello keeps the
    /// session it carries), and notes the session of a welcome in the reply.
    func receive(_ machine: inout CoordinatorMachine, _ name: String, _ frames: [[UInt8]], key: String? = nil,
                 now: Double) -> [CoordinatorMachine.Action] {
        var frames = frames
        if frames[0][6] != MessageType.hello.rawValue, let session = byName[name] {
            withUnsafeBytes(of: session.littleEndian) { frames[0].replaceSubrange(16..<24, with: $0) }
        }
        let actions = machine.receive(from: Array(name.utf8), frames, key: key, now: now)
        for case let .send(peer, message) in actions where message.type == .welcome && peer == Array(name.utf8) {
            byName[name] = message.session
        }
        return actions
    }
}
