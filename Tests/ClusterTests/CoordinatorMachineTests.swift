import Cluster
import NN
import Training
import Wire
import XCTest

/// The coordinator's state machine driven message by message, with time passed in: no sockets, no clock.
final class CoordinatorMachineTests: XCTestCase {
    let job = JobDescription(yaml: "model: {sizes: [3, 2]}\ntraining: {batch_size: 4, micro_batches: 2}", overrides: [])
    let layout = ParameterLayout(entries: [("0.weight", [2, 3], true), ("0.bias", [2], true)])
    let w1 = Array("w1".utf8), w2 = Array("w2".utf8)

    func gradients(_ step: UInt64, _ range: Range<Int>, jobID: UInt64? = nil, tensors: [[Float]]? = nil) -> [[UInt8]] {
        Message(type: .gradients, jobID: jobID ?? job.jobID, step: step, microBatches: range,
                tensors: tensors ?? [[1, 2, 3, 4, 5, 6], [7, 8], [0.5]]).encoded()
    }

    func warnings(_ actions: [CoordinatorMachine.Action]) -> [String] {
        actions.compactMap {
            if case let .log("warning", fields) = $0, case let .string(text)? = fields.first?.1 { return text }
            return nil
        }
    }

    func testJoinAssignCollectAndReportWithInjectedTime() throws {
        var machine = CoordinatorMachine(job: job, layout: layout, microBatches: 2)
        let welcome = try machine.receive(from: w1, Message(type: .hello, jobID: 0).encoded(), now: 0)
        guard case let .send(peer, message)? = welcome.first else { return XCTFail("no welcome: \(welcome)") }
        XCTAssertEqual(peer, w1)
        XCTAssertEqual(message.type, .welcome)
        XCTAssertEqual(message.jobID, job.jobID)
        _ = try machine.receive(from: w2, Message(type: .hello, jobID: 0).encoded(), now: 0)
        XCTAssertEqual(machine.readyToJoin, 0)
        _ = try machine.receive(from: w1, Message(type: .heartbeat, jobID: job.jobID).encoded(), now: 1)
        _ = try machine.receive(from: w2, Message(type: .heartbeat, jobID: job.jobID).encoded(), now: 1)
        XCTAssertEqual(machine.readyToJoin, 2)

        let parameters: [Float] = [1, 2, 3, 4, 5, 6, 7, 8]
        let start = machine.startStep(5, parameters: parameters, now: 100)
        let sends = start.compactMap { action -> ([UInt8], Message)? in
            if case let .send(peer, message) = action { return (peer, message) }
            return nil
        }
        XCTAssertEqual(sends.map(\.0), [w1, w1, w2, w2])
        XCTAssertEqual(sends[0].1, Message(type: .weights, jobID: job.jobID, step: 5, tensors: [[1, 2, 3, 4, 5, 6], [7, 8]]))
        XCTAssertEqual(sends[1].1, Message(type: .assignment, jobID: job.jobID, step: 5, microBatches: 0..<1))
        XCTAssertEqual(sends[3].1.microBatches, 1..<2)
        XCTAssertEqual(machine.workerCount, 2)

        // Messages that cannot belong are dropped with the reason and change nothing.
        XCTAssertEqual(warnings(try machine.receive(from: w1, gradients(4, 0..<1), now: 100.1)),
                       ["dropped a message from w1: gradients for step 4 during step 5"])
        XCTAssertEqual(warnings(try machine.receive(from: w1, gradients(5, 1..<2), now: 100.1)),
                       ["dropped a message from w1: gradients for micro-batches 1..<2 it was not assigned"])
        XCTAssertEqual(warnings(try machine.receive(from: w1, gradients(5, 0..<1, jobID: 7), now: 100.1)),
                       ["dropped a message from w1: job id 7, expected \(String(job.jobID, radix: 16))"])
        XCTAssertEqual(warnings(try machine.receive(from: w1, gradients(5, 0..<1, tensors: [[1]]), now: 100.1)),
                       ["dropped a message from w1: 1 tensors, expected 2 parameter blocks and the loss"])
        XCTAssertEqual(warnings(try machine.receive(from: w1, gradients(5, 0..<1, tensors: [[1, 2, 3, 4, 5, .nan], [7, 8], [0.5]]), now: 100.1)),
                       ["dropped a message from w1: block 0 of micro-batches 0..<1 has a non-finite value nan at 5"])
        XCTAssertEqual(machine.silentWorkers, ["w1", "w2"])

        XCTAssertEqual(try machine.receive(from: w1, gradients(5, 0..<1), now: 100.25), [])
        XCTAssertEqual(warnings(try machine.receive(from: w1, gradients(5, 0..<1), now: 100.3)).first?.hasPrefix("dropped a message from w1: duplicate"), true)
        XCTAssertFalse(machine.isStepComplete)
        XCTAssertEqual(try machine.receive(from: w2, gradients(5, 1..<2), now: 100.5), [])
        XCTAssertTrue(machine.isStepComplete)
        let result = try XCTUnwrap(machine.finishStep(now: 100.6))
        XCTAssertEqual(result.gradientSum, [2, 4, 6, 8, 10, 12, 14, 16])
        XCTAssertEqual(result.lossSum, 1)
        let fields = JSONValue.object(result.fields).serialized
        XCTAssertTrue(fields.contains("\"worker_s\":{\"w1\":0.25,\"w2\":0.5}"), fields)
        XCTAssertTrue(fields.contains("\"slowest_worker\":\"w2\""), fields)
        XCTAssertTrue(fields.contains("\"waited_for_slowest_s\":0.25"), fields)
    }

    func testAWorkerLeavingDuringTheRunStopsTheJobWithItsName() throws {
        var machine = CoordinatorMachine(job: job, layout: layout, microBatches: 2)
        _ = try machine.receive(from: w1, Message(type: .hello, jobID: 0).encoded(), now: 0)
        _ = try machine.receive(from: w1, Message(type: .heartbeat, jobID: job.jobID).encoded(), now: 0)
        _ = machine.startStep(0, parameters: [Float](repeating: 0, count: 8), now: 0)
        XCTAssertThrowsError(try machine.receive(from: w1, Message(type: .bye, jobID: job.jobID).encoded(), now: 1)) {
            XCTAssertEqual("\($0)", "worker w1 left during the run; the job cannot continue without it")
        }
    }
}

final class WorkerMachineTests: XCTestCase {
    let job = JobDescription(yaml: "seed: 3", overrides: ["training.batch_size=16"])

    func testJoinComputeAndLeaveInResponseToTheCoordinator() throws {
        var machine = WorkerMachine()
        let welcome = Message(type: .welcome, jobID: 42, metadata: Message(type: .welcome, jobID: 42).metadata)
        XCTAssertThrowsError(try machine.receive(welcome))  // a welcome without a job description
        var real = WorkerMachine()
        let actions = try real.receive(Message(type: .welcome, jobID: 42, metadata: Array(
            "{\"config\":\"seed: 3\",\"overrides\":[\"training.batch_size=16\"]}".utf8)))
        XCTAssertEqual(actions, [.join(job, jobID: 42)])
        real.joined(blockSizes: [2, 1])
        XCTAssertThrowsError(try real.receive(Message(type: .assignment, jobID: 42, step: 0, microBatches: 0..<2))) {
            XCTAssertEqual("\($0)", "an assignment for step 0 arrived without its weights")
        }
        XCTAssertEqual(try real.receive(Message(type: .weights, jobID: 42, step: 0, tensors: [[1], [2]])),
                       [.log("dropped weights whose shapes do not match the model")])
        XCTAssertEqual(try real.receive(Message(type: .weights, jobID: 42, step: 0, tensors: [[1, 2], [3]])), [])
        XCTAssertEqual(try real.receive(Message(type: .assignment, jobID: 42, step: 0, microBatches: 0..<2)),
                       [.compute(step: 0, range: 0..<2, weights: [1, 2, 3])])
        XCTAssertEqual(try real.receive(Message(type: .assignment, jobID: 7, step: 0, microBatches: 0..<2)),
                       [.log("dropped a message of type assignment for job 7")])
        XCTAssertEqual(try real.receive(Message(type: .bye, jobID: 42)), [.send(Message(type: .bye, jobID: 42)), .stop])
        XCTAssertThrowsError(try real.receive(Message(type: .error, jobID: 42, metadata: Array("{\"message\":\"no\"}".utf8)))) {
            XCTAssertEqual("\($0)", "the coordinator refused this worker: no")
        }
    }
}
