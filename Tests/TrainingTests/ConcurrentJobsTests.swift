import Foundation
import Kernels
import Training
import XCTest

/// A process may host several jobs: thread count, precision, stop request and trace belong to each job, not to
/// the process.
final class ConcurrentJobsTests: XCTestCase {
    /// Two jobs train at the same time on two threads of one process, one with 1 kernel thread in float32 and one
    /// with 2 threads in bf16 (they meet at step 5, so both are mid-run together), and each ends with the weights
    /// it has when it runs alone. Stopping one leaves the other running.
    func testTwoJobsAtOnceKeepTheirOwnThreadsPrecisionAndStop() throws {
        var float32 = try smallConfig(threads: 1, steps: 30)
        float32.name = "one-thread-float32"
        var bf16 = try smallConfig(threads: 2, steps: 30)
        bf16.name = "two-threads-bf16"
        bf16.training.precision = .bf16
        let data = syntheticData()
        let alone = try [float32, bf16].map { try Trainer(config: $0, runDirectory: nil, data: data).run().weightsSHA256 }
        XCTAssertNotEqual(alone[0], alone[1], "bf16 changes the weights, so a leaked precision would show")

        let trainers = try [float32, bf16].map { try Trainer(config: $0, runDirectory: nil, data: data) }
        let atStep5 = [DispatchSemaphore(value: 0), DispatchSemaphore(value: 0)]
        final class Outcome: @unchecked Sendable {
            // Each slot is written by one job's thread before `done` is signalled, and read after `done.wait()`.
            var hashes: [String?] = [nil, nil]
            var threads: [Int?] = [nil, nil]
            var met: [Bool] = [false, false]
            var errors: [String] = []
            let lock = NSLock()
        }
        let outcome = Outcome()
        for (index, trainer) in trainers.enumerated() {
            trainer.events.observers.append { event, fields in
                let value = Dictionary(fields, uniquingKeysWith: { a, _ in a })
                guard event == "step", value["step"] == .int(5) else { return }
                outcome.threads[index] = Parallel.threadCount  // on the job's own thread, mid-run
                atStep5[index].signal()
                outcome.met[index] = atStep5[1 - index].wait(timeout: .now() + 60) == .success
            }
        }
        let done = DispatchGroup()
        for (index, trainer) in trainers.enumerated() {
            done.enter()
            Thread.detachNewThread {
                do {
                    outcome.hashes[index] = try trainer.run().weightsSHA256
                } catch {
                    outcome.lock.lock(); outcome.errors.append("\(error)"); outcome.lock.unlock()
                }
                done.leave()
            }
        }
        XCTAssertEqual(done.wait(timeout: .now() + 120), .success)
        XCTAssertEqual(outcome.errors, [])
        XCTAssertEqual(outcome.met, [true, true], "both jobs were at step 5 at the same time")
        XCTAssertEqual(outcome.threads, [1, 2])
        XCTAssertEqual(outcome.hashes, alone.map { $0 })

        // A stop request is the job's: the first job stops after its step, the second runs to its end.
        let stopped = try Trainer(config: float32, runDirectory: nil, data: data)
        let running = try Trainer(config: bf16, runDirectory: nil, data: data)
        stopped.events.observers.append { event, fields in
            if event == "step", Dictionary(fields, uniquingKeysWith: { a, _ in a })["step"] == .int(3) { stopped.context.stop.request() }
        }
        XCTAssertEqual(try stopped.run().steps, 3)
        XCTAssertEqual(try running.run().weightsSHA256, alone[1])
    }
}
