import Foundation
import TestSupport
import XCTest

/// deploy/slurm/trainerd.sbatch on a real one-node Slurm cluster (Debian's slurm-wlm and munge, started by
/// deploy/slurm/one-node-cluster.sh in the scratch directory): the job ends with the weights of a single-process run,
/// and a job requeued after its first checkpoint resumes and ends with them too.
final class SlurmTests: CLITestCase {
    var clusterScript: String { repository.appendingPathComponent("deploy/slurm/one-node-cluster.sh").path }
    var batchScript: String { repository.appendingPathComponent("deploy/slurm/trainerd.sbatch").path }
    var clusterDirectory: String { scratch + "/slurm" }
    var slurmEnvironment: [String: String] { ["SLURM_CONF": clusterDirectory + "/slurm.conf"] }
    let job = ["--set", "training.eval_every=0", "--set", "training.threads=1", "--set", "cluster.heartbeat_interval=0.5"]

    /// Starts the cluster, or skips the test saying why it cannot run here.
    func startCluster() throws {
        try requireDataset()
        try XCTSkipUnless(getuid() == 0, "the Slurm test starts slurmd, which needs root")
        for program in ["/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/bin/sbatch"] {
            try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: program),
                              "\(program) is not installed (deploy/setup.sh --tests installs slurm-wlm and munge)")
        }
        let port = try freePort()
        let started = try run("/bin/bash", [clusterScript, "start", clusterDirectory, String(port)], timeout: 90)
        if started.status != 0 {
            _ = try? run("/bin/bash", [clusterScript, "stop", clusterDirectory], timeout: 60)
            throw XCTSkip("the one-node Slurm cluster did not start here: \(started.stderr)")
        }
        addTeardownBlock { [self] in
            let stopped = try? run("/bin/bash", [clusterScript, "stop", clusterDirectory], timeout: 90)
            XCTAssertEqual(stopped?.status, 0, "one-node-cluster.sh stop: \(stopped?.stderr ?? "did not run")")
        }
    }

    /// Submits trainerd.sbatch with `tasks` workers and returns the job id.
    func submit(tasks: Int, runDirectory: String, config: String? = nil, extra: [String]) throws -> String {
        let environment = slurmEnvironment.merging(["TRAINERD": executable, "TRAINERD_RUN": runDirectory,
                                                    "TRAINERD_PORT": String(try freePort())]) { $1 }
        let submitted = try run("/usr/bin/sbatch", ["--parsable", "--ntasks=\(tasks)", "--chdir=\(scratch!)",
                                                    "--output=\(scratch!)/slurm-%j.out", batchScript, config ?? self.config] + job + extra,
                                timeout: 30, environment: environment)
        XCTAssertEqual(submitted.status, 0, submitted.stderr)
        return submitted.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The job's fields (`JobState`, `ExitCode`, `Restarts`, …) from `scontrol show job`.
    func jobFields(_ id: String) throws -> [String: String] {
        let shown = try run("/usr/bin/scontrol", ["show", "job", "--oneliner", id], timeout: 30, environment: slurmEnvironment)
        var fields: [String: String] = [:]
        for field in shown.stdout.split(whereSeparator: \.isWhitespace) {
            let parts = field.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
        }
        return fields
    }

    /// Polls the job until it leaves the pending and running states (or `timeout` passes); returns its fields.
    func waitForEnd(_ id: String, timeout: TimeInterval) throws -> [String: String] {
        let deadline = Date().addingTimeInterval(timeout)
        var fields = try jobFields(id)
        while ["PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", nil].contains(fields["JobState"]) && Date() < deadline {
            usleep(500_000)
            fields = try jobFields(id)
        }
        return fields
    }

    func jobOutput(_ id: String) -> String {
        (try? String(contentsOfFile: "\(scratch!)/slurm-\(id).out", encoding: .utf8)) ?? "(no output file)"
    }

    func testBatchScriptWithTwoWorkerTasksMatchesASingleProcess() throws {
        try startCluster()
        let steps = ["--set", "training.checkpoint_every=0"]
        let runDirectory = scratch + "/slurm-run"
        let id = try submit(tasks: 2, runDirectory: runDirectory, extra: steps + ["--set", "training.max_steps=150"])
        let fields = try waitForEnd(id, timeout: 300)
        XCTAssertEqual(fields["JobState"], "COMPLETED", jobOutput(id))
        XCTAssertEqual(fields["ExitCode"], "0:0")
        let workers = Set(events(runDirectory).filter { $0["event"] as? String == "worker_joined" }.compactMap { $0["worker"] as? String })
        XCTAssertEqual(workers, ["slurm-\(id)-0", "slurm-\(id)-1"], "one worker per task, named after job and task")
        let hash = try XCTUnwrap(try doneEvent(runDirectory)["weights_sha256"] as? String, jobOutput(id))
        XCTAssertEqual(hash, try trainedHash(job + steps, to: 150))
        print("Slurm job \(id) (2 worker tasks): \(fields["JobState"] ?? "?"), weights_sha256 \(hash)")
    }

    /// The job's config file is open-ended (10⁵ epochs) until the requeue has stopped it, so the requeue always
    /// lands while it trains; then the file gets `max_steps` 100 past the newest checkpoint, and the restarted
    /// job resumes there and finishes.
    func testRequeuedJobResumesFromItsCheckpoint() throws {
        try startCluster()
        let steps = ["--set", "training.checkpoint_every=50"]
        let runDirectory = scratch + "/slurm-run", jobConfig = scratch + "/job.yaml"
        let yaml = try String(contentsOfFile: config, encoding: .utf8)
        XCTAssertTrue(yaml.contains("\n  epochs: 10\n"))
        func writeConfig(_ training: String) throws {
            try yaml.replacingOccurrences(of: "\n  epochs: 10\n", with: "\n  epochs: 100000\n\(training)")
                .write(toFile: jobConfig, atomically: true, encoding: .utf8)
        }
        try writeConfig("")
        let id = try submit(tasks: 2, runDirectory: runDirectory, config: jobConfig, extra: steps)
        try waitForEvent(runDirectory, timeout: 180) { $0["event"] as? String == "checkpoint" }
        let requeue = try run("/usr/bin/scontrol", ["requeue", id], timeout: 30, environment: slurmEnvironment)
        XCTAssertEqual(requeue.status, 0, requeue.stderr)
        // A requeued job waits for a begin time about two minutes ahead; let it start again now.
        let pendingDeadline = Date().addingTimeInterval(60)
        while try jobFields(id)["JobState"] != "PENDING" && Date() < pendingDeadline { usleep(200_000) }
        let checkpoints = try FileManager.default.contentsOfDirectory(atPath: runDirectory + "/checkpoints")
        let newest = try XCTUnwrap(checkpoints.compactMap { Int($0.dropFirst("step-".count).prefix(8)) }.max())
        let end = newest + 100
        try writeConfig("  max_steps: \(end)\n")
        let release = try run("/usr/bin/scontrol", ["update", "JobId=\(id)", "StartTime=now"], timeout: 30, environment: slurmEnvironment)
        XCTAssertEqual(release.status, 0, release.stderr)
        let fields = try waitForEnd(id, timeout: 300)
        XCTAssertEqual(fields["JobState"], "COMPLETED", jobOutput(id))
        XCTAssertEqual(fields["Restarts"], "1")
        XCTAssertTrue(jobOutput(id).contains("trainerd.sbatch: resuming from \(runDirectory) (restart 1)"), jobOutput(id))
        let resumed = try XCTUnwrap(events(runDirectory).first { $0["event"] as? String == "resumed" }, "a resumed event")
        XCTAssertEqual(resumed["step"] as? Int, newest)
        let done = try doneEvent(runDirectory)
        XCTAssertEqual(done["step"] as? Int, end)
        let hash = try XCTUnwrap(done["weights_sha256"] as? String, jobOutput(id))
        XCTAssertEqual(hash, try trainedHash(job + steps, to: end))
        print("Slurm job \(id) requeued, resumed at step \(newest), finished at step \(end): weights_sha256 \(hash)")
    }
}
