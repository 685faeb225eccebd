import Foundation
import TestSupport
import XCTest

/// Real processes on loopback, disturbed with kill -9, SIGTERM, SIGSTOP and late joins: every run must stop with
/// the weights of the undisturbed `train` run to the same step. The jobs are open-ended, so each disturbance lands
/// while the job runs however fast the machine is; the test stops the job with Ctrl-C once it has seen the events
/// it waits for. Heartbeats are fast here (0.2 s, timeout 1.5 s) so that faults are noticed quickly; every wait is
/// bounded.
final class FaultToleranceTests: CLITestCase {
    var job: [String] {
        ["--set", "training.eval_every=0", "--set", "training.checkpoint_every=0",
         "--set", "cluster.heartbeat_interval=0.2", "--set", "cluster.heartbeat_timeout=1.5"]
    }

    func step(atLeast step: Int) -> ([String: Any]) -> Bool {
        { $0["event"] as? String == "step" && ($0["step"] as? Int ?? 0) >= step }
    }

    func event(_ name: String, worker: String) -> ([String: Any]) -> Bool {
        { $0["event"] as? String == name && $0["worker"] as? String == worker }
    }

    /// The step of the first event in `run` that satisfies `match`.
    func stepOf(_ run: String, _ match: ([String: Any]) -> Bool) throws -> Int {
        try XCTUnwrap(events(run).first(where: match)?["step"] as? Int)
    }

    func logs(_ paths: [String]) -> String {
        paths.map { "--- \($0)\n" + ((try? String(contentsOfFile: $0, encoding: .utf8)) ?? "") }.joined(separator: "\n")
    }

    /// A number below `bound` drawn from `seed` (splitmix64), so each seed disturbs its own, reproducible step.
    func draw(_ seed: UInt64, below bound: Int) -> Int {
        var z = seed &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Int((z ^ (z >> 31)) % UInt64(bound))
    }

    func testAWorkerKilledAtARandomStepChangesNoWeight() throws {
        try requireDataset()
        for seed: UInt64 in [1, 2, 3] {
            let killStep = 10 + draw(seed, below: 90), victim = Int(seed % 3)
            let run = scratch + "/kill\(seed)", endpoint = "tcp://127.0.0.1:\(try freePort())"
            let logPaths = [run + "-coordinator.log"] + (0..<3).map { run + "-w\($0).log" }
            let coordinator = try start(["coordinator", config, "--bind", endpoint, "--workers", "3", "--run-dir", run] + job + openEnded,
                                        log: logPaths[0])
            let workers = try (0..<3).map {
                try start(["worker", "--connect", endpoint, "--name", "w\($0)", "--threads", "1"], log: logPaths[$0 + 1])
            }
            try waitForEvent(run, while: coordinator, step(atLeast: killStep))
            kill(workers[victim].processIdentifier, SIGKILL)
            try waitForEvent(run, while: coordinator, event("worker_lost", worker: "w\(victim)"))
            let lostAt = try stepOf(run, event("worker_lost", worker: "w\(victim)"))
            try waitForEvent(run, while: coordinator, step(atLeast: lostAt + 5))
            let stop = try interrupt(coordinator, run, logs: logs(logPaths))
            workers.forEach { finish($0, timeout: 30) }
            XCTAssertEqual(stop.hash, try trainedHash(job, to: stop.step),
                           "seed \(seed): w\(victim) killed at step \(killStep)\n\(logs(logPaths))")
            let lost = events(run).filter { $0["event"] as? String == "worker_lost" }
            XCTAssertEqual(lost.map { $0["worker"] as? String }, ["w\(victim)"], "seed \(seed)")
            print("seed \(seed): w\(victim) killed at step \(killStep), lost at step \(lostAt): \(lost.first?["reason"] ?? ""); "
                  + "stopped at step \(stop.step) with train's weights")
        }
    }

    func testAWorkerJoiningAtStepKAndOneLeavingAtStepMChangeNoWeight() throws {
        try requireDataset()
        let run = scratch + "/elastic", endpoint = "tcp://127.0.0.1:\(try freePort())"
        let logPaths = [run + "-coordinator.log", run + "-first.log", run + "-late.log"]
        let coordinator = try start(["coordinator", config, "--bind", endpoint, "--workers", "1", "--run-dir", run] + job + openEnded,
                                    log: logPaths[0])
        let first = try start(["worker", "--connect", endpoint, "--name", "first", "--threads", "1"], log: logPaths[1])
        try waitForEvent(run, while: coordinator, step(atLeast: 30))
        let late = try start(["worker", "--connect", endpoint, "--name", "late", "--threads", "1"], log: logPaths[2])
        try waitForEvent(run, while: coordinator, event("worker_joined", worker: "late"))
        try waitForEvent(run, while: coordinator) { $0["event"] as? String == "step" && $0["workers"] as? Int == 2 }
        first.terminate()  // SIGTERM: the worker says bye and leaves
        XCTAssertEqual(finish(first, timeout: 30), 0, logs(logPaths))
        try waitForEvent(run, while: coordinator, event("worker_left", worker: "first"))
        let leftAt = try stepOf(run, event("worker_left", worker: "first"))
        try waitForEvent(run, while: coordinator, step(atLeast: leftAt + 5))
        let stop = try interrupt(coordinator, run, logs: logs(logPaths))
        XCTAssertEqual(finish(late, timeout: 30), 0, logs(logPaths))
        XCTAssertEqual(stop.hash, try trainedHash(job, to: stop.step), logs(logPaths))
        let all = events(run)
        let joined = try XCTUnwrap(all.first(where: event("worker_joined", worker: "late")))
        let steps = all.filter { $0["event"] as? String == "step" }
        let stepsWithTwo = steps.filter { $0["workers"] as? Int == 2 }.count
        XCTAssertGreaterThan(stepsWithTwo, 0, "the late worker took part")
        XCTAssertEqual(steps.last?["workers"] as? Int, 1, "the last steps ran without the worker that left")
        print("late joined (\(joined["workers"] ?? "?") workers), first left at step \(leftAt); \(stepsWithTwo) steps with "
              + "2 workers; stopped at step \(stop.step) with train's weights")
    }

    /// A worker frozen with SIGSTOP is a straggler, not a lost worker (heartbeat_timeout is 30 s here): its
    /// micro-batches are re-issued to the idle worker after 0.5 s, its late results are ignored after SIGCONT, and
    /// it stays in the job.
    func testAFrozenWorkersMicroBatchesAreReissuedAndItStaysInTheJob() throws {
        try requireDataset()
        let slow = job + ["--set", "cluster.heartbeat_timeout=30", "--set", "cluster.straggler_delay=0.5"]
        let run = scratch + "/straggler", endpoint = "tcp://127.0.0.1:\(try freePort())"
        let logPaths = [run + "-coordinator.log", run + "-w0.log", run + "-w1.log"]
        let coordinator = try start(["coordinator", config, "--bind", endpoint, "--workers", "2", "--run-dir", run] + slow + openEnded,
                                    log: logPaths[0])
        let workers = try (0..<2).map {
            try start(["worker", "--connect", endpoint, "--name", "w\($0)", "--threads", "1"], log: logPaths[$0 + 1])
        }
        try waitForEvent(run, while: coordinator, step(atLeast: 40))
        kill(workers[1].processIdentifier, SIGSTOP)
        let frozen: ([String: Any]) -> Bool = {
            $0["event"] as? String == "straggler" && $0["worker"] as? String == "w1" && ($0["step"] as? Int ?? 0) >= 40
        }
        try waitForEvent(run, while: coordinator, frozen)
        let frozenAt = try stepOf(run, frozen)
        try waitForEvent(run, while: coordinator, step(atLeast: frozenAt + 3))
        kill(workers[1].processIdentifier, SIGCONT)
        let thawedAt = try lastStep(run)
        try waitForEvent(run, while: coordinator) {
            $0["event"] as? String == "step" && ($0["step"] as? Int ?? 0) > thawedAt + 5 && $0["slowest_worker"] != nil
                && ($0["worker_s"] as? [String: Any])?.count == 2
        }
        let stop = try interrupt(coordinator, run, logs: logs(logPaths))
        XCTAssertEqual(workers.map { finish($0, timeout: 30) }, [0, 0], logs(logPaths))
        XCTAssertEqual(stop.hash, try trainedHash(slow, to: stop.step), logs(logPaths))
        let all = events(run)
        let stragglers = all.filter { $0["event"] as? String == "straggler" }
        XCTAssertTrue(stragglers.allSatisfy { $0["worker"] as? String == "w1" && $0["reissued_to"] as? [String] == ["w0"] }, "\(stragglers)")
        XCTAssertFalse(all.contains { $0["event"] as? String == "worker_lost" })
        let lastStep = try XCTUnwrap(all.last { $0["event"] as? String == "step" })
        XCTAssertEqual(lastStep["workers"] as? Int, 2, "w1 is still in the job")
        print("w1 frozen after step 40 for steps \(frozenAt)–\(thawedAt): \(stragglers.count) re-issues to w0, no worker lost; "
              + "stopped at step \(stop.step) with train's weights")
    }

    /// `launch` replaces a worker process killed with kill -9: the new one joins at the next step.
    func testLaunchReplacesAKilledWorkerProcess() throws {
        try requireDataset()
        let runDirectory = scratch + "/launch-restart", log = runDirectory + "-launch.log"
        let launch = try start(["launch", config, "--workers", "2", "--run-dir", runDirectory] + job + openEnded, log: log)
        try waitForEvent(runDirectory, while: launch, step(atLeast: 30))
        let children = try run("/usr/bin/pgrep", ["-P", String(launch.processIdentifier)], timeout: 10).stdout
            .split(separator: "\n").compactMap { pid_t($0) }
        XCTAssertEqual(children.count, 2)
        let victim = try XCTUnwrap(children.first)
        let arguments = try String(contentsOfFile: "/proc/\(victim)/cmdline", encoding: .utf8).split(separator: "\0").map(String.init)
        let victimName = try XCTUnwrap(arguments.firstIndex(of: "--name").map { arguments[$0 + 1] })
        kill(victim, SIGKILL)
        try waitForEvent(runDirectory, while: launch, event("worker_joined", worker: "\(victimName).1"))
        let joinedAt = try lastStep(runDirectory)
        try waitForEvent(runDirectory, while: launch) {
            $0["event"] as? String == "step" && ($0["step"] as? Int ?? 0) > joinedAt && $0["workers"] as? Int == 2
        }
        let stop = try interrupt(launch, runDirectory, logs: logs([log]))
        XCTAssertEqual(stop.hash, try trainedHash(job, to: stop.step), logs([log]))
        let all = events(runDirectory)
        XCTAssertTrue(all.contains(where: event("worker_lost", worker: victimName)))
        let restarted = try XCTUnwrap(all.first { $0["event"] as? String == "worker_restarted" })
        XCTAssertEqual(restarted["replaces"] as? String, victimName)
        print("launch: \(victimName) killed after step 30, replaced by \(victimName).1; stopped at step \(stop.step) with train's weights")
    }

    func testACoordinatorKilledAndResumedTrainsOnWithTheSameWorkers() throws {
        try requireDataset()
        let checkpointed = job + ["--set", "training.checkpoint_every=20"]
        for seed: UInt64 in [1, 2] {
            let killStep = 25 + draw(seed, below: 70)
            let run = scratch + "/restart\(seed)", endpoint = "tcp://127.0.0.1:\(try freePort())"
            let logPaths = [run + "-coordinator.log", run + "-coordinator2.log", run + "-w0.log", run + "-w1.log"]
            let arguments = ["coordinator", config, "--bind", endpoint, "--workers", "2", "--run-dir", run] + checkpointed + openEnded
            let coordinator = try start(arguments, log: logPaths[0])
            let workers = try (0..<2).map {
                try start(["worker", "--connect", endpoint, "--name", "w\($0)", "--threads", "1", "--retry-timeout", "60"],
                          log: logPaths[$0 + 2])
            }
            try waitForEvent(run, while: coordinator, step(atLeast: killStep))
            kill(coordinator.processIdentifier, SIGKILL)
            coordinator.waitUntilExit()
            // The second restart comes after the workers noticed the silence, so they reconnect with fresh sockets.
            if seed == 2 {
                for (worker, path) in zip(workers, logPaths[2...]) {
                    try waitForText(path, containing: "lost the coordinator", while: worker)
                }
            }
            let restarted = try start(arguments + ["--resume"], log: logPaths[1])
            let resumed: ([String: Any]) -> Bool = { $0["event"] as? String == "resumed" }
            try waitForEvent(run, while: restarted, resumed)
            let resumedAt = try stepOf(run, resumed)
            try waitForEvent(run, while: restarted, after: resumed) {
                $0["event"] as? String == "step" && ($0["step"] as? Int ?? 0) >= resumedAt + 10 && $0["workers"] as? Int == 2
            }
            let stop = try interrupt(restarted, run, logs: logs(logPaths))
            XCTAssertEqual(workers.map { finish($0, timeout: 30) }, [0, 0], logs(logPaths))
            XCTAssertEqual(stop.hash, try trainedHash(checkpointed, to: stop.step),
                           "seed \(seed): coordinator killed at step \(killStep)\n\(logs(logPaths))")
            XCTAssertTrue(logs(Array(logPaths[2...])).contains("rejoined the coordinator"), logs(logPaths))
            print("seed \(seed): coordinator killed at step \(killStep), resumed from step \(resumedAt); workers rejoined; "
                  + "stopped at step \(stop.step) with train's weights")
        }
    }

    /// Resident memory of a process in MB, from /proc.
    func residentMB(_ pid: pid_t) -> Double? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kilobytes = Double(line.split(separator: " ").dropFirst().first ?? "") else { return nil }
        return kilobytes / 1024
    }

    /// 16 worker processes and a coordinator on this machine with a small model, for at least 1,500 steps and 16
    /// memory samples: no hang, and the coordinator's memory stays flat (the last quarter's median within 8 MB of
    /// the second's).
    func testSoakWith16WorkersKeepsTheCoordinatorsMemoryFlat() throws {
        try requireDataset()
        let run = scratch + "/soak"
        let soak = ["--set", "model.sizes=[784, 32, 10]", "--set", "training.micro_batches=16",
                    "--set", "training.eval_every=0", "--set", "training.checkpoint_every=500"]
        let launch = try start(["launch", config, "--workers", "16", "--run-dir", run] + soak + openEnded, log: run + "-launch.log")
        var samples: [(step: Int, mb: Double)] = []
        let deadline = Date().addingTimeInterval(300)
        while launch.isRunning && Date() < deadline && (samples.count < 16 || samples.last!.step < 1500) {
            let step = events(run).last { $0["event"] as? String == "step" }?["step"] as? Int ?? 0
            if step > 0, let mb = residentMB(launch.processIdentifier) { samples.append((step, mb)) }
            usleep(250_000)
        }
        let stop = try interrupt(launch, run, logs: logs([run + "-launch.log"]))
        XCTAssertGreaterThanOrEqual(stop.step, 1500)
        let workerCounts = Set(events(run).compactMap { $0["event"] as? String == "step" ? $0["workers"] as? Int : nil })
        XCTAssertEqual(workerCounts, [16], "every step ran with all 16 workers")
        let quarter = samples.count / 4
        XCTAssertGreaterThan(quarter, 2, "too few memory samples")
        func median(_ values: ArraySlice<(step: Int, mb: Double)>) -> Double { values.map(\.mb).sorted()[values.count / 2] }
        let second = median(samples[quarter..<(2 * quarter)]), last = median(samples[(3 * quarter)...])
        XCTAssertLessThan(last - second, 8, "coordinator memory grew from \(second) MB to \(last) MB")
        let stopped = try doneEvent(run)
        print(String(format: "soak: 16 workers, %d steps in %.1f s; coordinator RSS median %.1f MB (2nd quarter) -> %.1f MB (last quarter), max %.1f MB, %d samples",
                     stop.step, stopped["elapsed_s"] as? Double ?? 0, second, last, samples.map(\.mb).max() ?? 0, samples.count))
    }
}
