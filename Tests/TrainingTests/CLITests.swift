import Checkpoint
import Foundation
import TestSupport
import XCTest

/// The `trainerd` executable end to end: the default job, outputs checked by an independent evaluator, and
/// bad input rejected with one clear line.
final class CLITests: CLITestCase {

    /// The README's main job, `launch` with 2 workers on the default config, reaches ≥ 88.0 % test accuracy, and
    /// final.safetensors gives the same accuracy in an independent NumPy implementation and in `trainerd eval`.
    /// (`train` ends with the same weights: testLaunchWithOneToFourWorkersMatchesTrain.)
    func testDefaultJobReaches88PercentAndIndependentEvaluationAgrees() throws {
        try requireDataset()
        let runDirectory = scratch + "/default"
        let result = try trainerd(["launch", config, "--workers", "2", "--run-dir", runDirectory], timeout: 900)
        XCTAssertEqual(result.status, 0, result.stderr)
        let done = try doneEvent(runDirectory)
        XCTAssertEqual(done["event"] as? String, "done")
        let accuracy = try XCTUnwrap(done["test_accuracy"] as? Double)
        print("default job: test accuracy \(accuracy), weights_sha256 \(done["weights_sha256"] ?? "?"), \(done["samples_per_s"] ?? "?") samples/s (debug build)")
        XCTAssertGreaterThanOrEqual(accuracy, 0.88)

        let weights = runDirectory + "/final.safetensors"
        let python = try run("/usr/bin/env", ["python3", "-c", "import numpy"], timeout: 60)
        if python.status == 0 {
            let script = repository.appendingPathComponent("Tests/tools/independent_eval.py").path
            let independent = try run("/usr/bin/env", ["python3", script, weights, Self.dataset], timeout: 120)
            XCTAssertEqual(independent.status, 0, independent.stderr)
            print("independent NumPy evaluation: \(independent.stdout)")
            let fields = independent.stdout.split(separator: " ")
            let numpyAccuracy = try XCTUnwrap(Double(fields[1]))
            XCTAssertEqual(numpyAccuracy, accuracy, accuracy: 0.0002, "float64 NumPy vs float32 trainerd")
        } else {
            print("NumPy not available: independent evaluation skipped")
        }
        let eval = try trainerd(["eval", config, "--weights", weights])
        XCTAssertEqual(eval.status, 0, eval.stderr)
        XCTAssertTrue(eval.stdout.contains(String(format: "accuracy %.2f%%", accuracy * 100)), eval.stdout)
    }

    func testSameSeedAndEitherThreadCountGiveTheSameWeights() throws {
        try requireDataset()
        var hashes: [String] = []
        for (index, threads) in [1, 2, 2].enumerated() {
            let runDirectory = scratch + "/run\(index)"
            let result = try trainerd(["train", config, "--run-dir", runDirectory, "--set", "training.max_steps=60",
                                       "--set", "training.threads=\(threads)", "--set", "training.eval_every=0"])
            XCTAssertEqual(result.status, 0, result.stderr)
            hashes.append(try XCTUnwrap(try doneEvent(runDirectory)["weights_sha256"] as? String))
        }
        print("weights_sha256 with 1, 2, 2 threads: \(hashes)")
        XCTAssertEqual(Set(hashes).count, 1)
    }

    /// Ctrl-C: the step finishes, a checkpoint is written, exit status 130, no final.safetensors and no `done`;
    /// `--resume` to a later step then ends with the weights of an uninterrupted run to that step.
    func testInterruptedRunResumesToTheUninterruptedWeights() throws {
        try requireDataset()
        let steps = ["--set", "training.eval_every=0", "--set", "training.checkpoint_every=50"]
        let interrupted = scratch + "/interrupted"
        let stop = try interruptAfterFirstCheckpoint(["train", config, "--run-dir", interrupted] + steps, interrupted)
        XCTAssertFalse(FileManager.default.fileExists(atPath: interrupted + "/final.safetensors"))
        XCTAssertGreaterThanOrEqual(stop.step, 50)
        let end = ["--set", "training.max_steps=\(stop.step + 100)"]
        let refused = try trainerd(["train", config, "--run-dir", interrupted] + steps + end)
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("already holds checkpoints; pass --resume"), refused.stderr)
        let resumed = try trainerd(["train", config, "--run-dir", interrupted, "--resume"] + steps + end)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertEqual(try doneEvent(interrupted)["weights_sha256"] as? String, try trainedHash(steps, to: stop.step + 100))
        XCTAssertEqual(stop.hash, try trainedHash(steps, to: stop.step), "the stopped event's weights are the checkpoint's")
    }

    /// `launch` with 1 to 4 worker processes over ZeroMQ ends with the weights of `train`, bit for bit.
    func testLaunchWithOneToFourWorkersMatchesTrain() throws {
        try requireDataset()
        let steps = ["--set", "training.max_steps=40", "--set", "training.eval_every=0", "--set", "training.checkpoint_every=0"]
        let single = scratch + "/single"
        XCTAssertEqual(try trainerd(["train", config, "--run-dir", single] + steps).status, 0)
        let expected = try XCTUnwrap(try doneEvent(single)["weights_sha256"] as? String)
        for workers in 1...4 {
            let runDirectory = scratch + "/launch\(workers)"
            let result = try trainerd(["launch", config, "--workers", String(workers), "--run-dir", runDirectory] + steps)
            XCTAssertEqual(result.status, 0, result.stderr)
            let done = try doneEvent(runDirectory)
            XCTAssertEqual(done["weights_sha256"] as? String, expected, "\(workers) workers")
            let events = try String(contentsOfFile: runDirectory + "/events.jsonl", encoding: .utf8)
            XCTAssertEqual(events.components(separatedBy: "\"event\":\"worker_joined\"").count - 1, workers)
        }
        print("train and launch with 1-4 workers: weights_sha256 \(expected)")
    }

    /// Coordinator and two workers on three network namespaces joined by a bridge in a fourth, so the job
    /// crosses a real network stack; the weights equal `train`'s. The namespaces are removed afterwards.
    func testAcrossNetworkNamespaces() throws {
        try requireDataset()
        let hosts = try networkNamespaces(3, subnet: 77)
        let (coordinatorHost, workerHosts) = (hosts[0].name, hosts.dropFirst().map(\.name))
        let steps = ["--set", "training.max_steps=40", "--set", "training.eval_every=0", "--set", "training.checkpoint_every=0"]
        XCTAssertEqual(try trainerd(["train", config, "--run-dir", scratch + "/single"] + steps).status, 0)
        let endpoint = "tcp://\(hosts[0].address):5555"
        let workers = try workerHosts.map { host in
            try start(["worker", "--connect", endpoint, "--name", host, "--threads", "1"], namespace: host)
        }
        defer { workers.filter(\.isRunning).forEach { $0.terminate() } }
        let coordinator = try run("/usr/bin/env", ["ip", "netns", "exec", coordinatorHost, executable, "coordinator", config,
                                                   "--bind", endpoint, "--workers", "2",
                                                   "--run-dir", scratch + "/netns"] + steps, timeout: 180)
        XCTAssertEqual(coordinator.status, 0, coordinator.stderr)
        let expected = try doneEvent(scratch + "/single")["weights_sha256"] as? String
        XCTAssertEqual(try doneEvent(scratch + "/netns")["weights_sha256"] as? String, expected)
        let events = try String(contentsOfFile: scratch + "/netns/events.jsonl", encoding: .utf8)
        for host in workerHosts { XCTAssertTrue(events.contains("\"worker\":\"\(host)\""), "\(host) never joined") }
        let deadline = Date().addingTimeInterval(30)
        while workers.contains(where: \.isRunning) && Date() < deadline { usleep(50_000) }
        XCTAssertFalse(workers.contains(where: \.isRunning), "workers did not stop after the coordinator's bye")
        workers.filter(\.isRunning).forEach { kill($0.processIdentifier, SIGKILL) }
        workers.forEach { $0.waitUntilExit() }
        XCTAssertEqual(workers.map(\.terminationStatus), [0, 0])
    }

    /// Ctrl-C on `launch` stops after the step with a checkpoint (exit 130, workers told bye); `launch --resume`
    /// to a later step then ends with the weights of an uninterrupted `train` to that step.
    func testInterruptedLaunchResumesToTheUninterruptedWeights() throws {
        try requireDataset()
        let steps = ["--set", "training.eval_every=0", "--set", "training.checkpoint_every=40"]
        let runDirectory = scratch + "/launch"
        let stop = try interruptAfterFirstCheckpoint(["launch", config, "--workers", "2", "--run-dir", runDirectory] + steps,
                                                     runDirectory)
        let end = ["--set", "training.max_steps=\(stop.step + 60)"]
        let resumed = try trainerd(["launch", config, "--workers", "2", "--run-dir", runDirectory, "--resume"] + steps + end)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertEqual(try doneEvent(runDirectory)["weights_sha256"] as? String, try trainedHash(steps, to: stop.step + 60))
    }

    /// `monitor --json` follows the log stream to the end and sees the same final weights. The workers start only
    /// once the monitor has its first event (the snapshot of the waiting job), so it sees every step.
    func testMonitorFollowsTheLogStream() throws {
        try requireDataset()
        let runDirectory = scratch + "/monitored"
        let output = try monitoredRun(["--workers", "2", "--run-dir", runDirectory, "--set", "training.max_steps=150",
                                       "--set", "training.eval_every=50"], monitor: ["--json"], workers: 2)
        let events = output.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        XCTAssertEqual(events.first?["event"] as? String, "snapshot")
        XCTAssertEqual(Set(events.compactMap { $0["event"] as? String == "step" ? $0["step"] as? Int : nil }), Set(1...150))
        XCTAssertTrue(events.contains { $0["event"] as? String == "step" && $0["grad_norms"] is [String: Any] })
        XCTAssertTrue(events.contains { $0["event"] as? String == "eval" })
        let done = try XCTUnwrap(events.last)
        XCTAssertEqual(done["event"] as? String, "done")
        XCTAssertEqual(done["weights_sha256"] as? String, try doneEvent(runDirectory)["weights_sha256"] as? String)
    }

    func testWorkerWithoutACoordinatorGivesUpWithTheEndpoint() throws {
        let result = try trainerd(["worker", "--connect", "tcp://127.0.0.1:9", "--join-timeout", "1"])
        XCTAssertEqual(result.status, 1)
        XCTAssertEqual(result.stderr, "trainerd: error: tcp://127.0.0.1:9: no answer from the coordinator within 1 s\n")
    }

    func testCoordinatorReportsAPortInUse() throws {
        // Hold a loopback port with a plain TCP listener, then ask the coordinator to bind it.
        let (listener, port) = try loopbackListener()
        defer { close(listener) }
        try assertFails(["coordinator", config, "--bind", "tcp://127.0.0.1:\(port)", "--run-dir", scratch + "/run"],
                        "cannot bind tcp://127.0.0.1:\(port): Address already in use")
    }

    func testGradcheckPassesOnTheDefaultModel() throws {
        try requireDataset()
        let result = try trainerd(["gradcheck", config, "--set", "model.sizes=[784, 64, 64, 10]"])
        XCTAssertEqual(result.status, 0, result.stdout + result.stderr)
        XCTAssertTrue(result.stdout.contains("PASS"), result.stdout)
        XCTAssertTrue(result.stdout.contains("4.bias"), result.stdout)
    }

    // MARK: bad input: one line naming the file or field, exit status 1, no outputs that look complete

    func testBadConfigsAreRejected() throws {
        try assertFails(["train", "/nonexistent.yaml", "--run-dir", scratch + "/run"],
                        "/nonexistent.yaml: cannot read the config file (missing or not UTF-8)")
        try assertFails(["train", config, "--run-dir", scratch + "/run", "--set", "optimizer.lr=-1"],
                        "\(config): optimizer.lr must be positive, got -1.0")
        try assertFails(["train", config, "--run-dir", scratch + "/run", "--set", "training.batchsize=3"],
                        "\(config): unknown field 'training.batchsize' (expected one of: batch_size, checkpoint_every, clip_norm, epochs, eval_every, keep_checkpoints, max_skipped_steps, max_steps, micro_batches, precision, threads)")
        try requireDataset()
        try assertFails(["train", config, "--run-dir", scratch + "/run", "--set", "model.sizes=[100, 10]"],
                        "model.sizes[0] is 100 but \(Self.dataset) has 784 features per sample")
    }

    func testMissingTruncatedAndMalformedDatasetFilesAreNamed() throws {
        try requireDataset()
        let data = scratch + "/data"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        try assertFails(["train", config, "--run-dir", scratch + "/run", "--set", "data.directory=\(data)"],
                        "\(data)/train-images-idx3-ubyte.gz: file not found")
        // A header promising 60000 images followed by only 100 bytes (zlib reads plain files as they are).
        let images = data + "/train-images-idx3-ubyte.gz"
        XCTAssertTrue(FileManager.default.createFile(atPath: images, contents: Data([0, 0, 8, 3, 0, 0, 0xEA, 0x60, 0, 0, 0, 28, 0, 0, 0, 28] + [UInt8](repeating: 0, count: 100))))
        try assertFails(["train", config, "--run-dir", scratch + "/run", "--set", "data.directory=\(data)"],
                        "\(images): truncated, expected 47040000 bytes of data, found 100")
        XCTAssertTrue(FileManager.default.createFile(atPath: images, contents: Data([0, 0, 9, 3, 0, 0, 0, 1])))
        try assertFails(["train", config, "--run-dir", scratch + "/run", "--set", "data.directory=\(data)"],
                        "\(images): wrong magic 0x00000903, expected 0x000008NN (unsigned bytes, rank 1–4)")
        // A real gzip file cut in half.
        let original = try Data(contentsOf: URL(fileURLWithPath: Self.dataset + "/train-images-idx3-ubyte.gz"))
        XCTAssertTrue(FileManager.default.createFile(atPath: images, contents: original.prefix(original.count / 2)))
        let result = try trainerd(["train", config, "--run-dir", scratch + "/run", "--set", "data.directory=\(data)"])
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.hasPrefix("trainerd: error: \(images): "), result.stderr)
    }

    func testEvalRejectsCorruptAndMisShapedWeights() throws {
        try requireDataset()
        let corrupt = scratch + "/corrupt.safetensors"
        XCTAssertTrue(FileManager.default.createFile(atPath: corrupt, contents: Data([200, 0, 0, 0, 0, 0, 0, 0] + Array("{\"a\":".utf8))))
        try assertFails(["eval", config, "--weights", corrupt],
                        "\(corrupt): not a valid safetensors file (header length 200 exceeds the file's 5 bytes)")
        let wrong = scratch + "/wrong.safetensors"
        try SafeTensors(tensors: [.init(name: "0.weight", shape: [784, 256], values: [Float](repeating: 0, count: 784 * 256))])
            .write(to: wrong)
        try assertFails(["eval", config, "--weights", wrong],
                        "\(wrong): tensor '0.weight' has shape [784, 256], expected [256, 784]")
        let partial = scratch + "/partial.safetensors"
        try SafeTensors(tensors: [.init(name: "0.weight", shape: [256, 784], values: [Float](repeating: 0, count: 784 * 256))])
            .write(to: partial)
        try assertFails(["eval", config, "--weights", partial], "\(partial): tensor '0.bias' is missing")
        try assertFails(["eval", config, "--weights", scratch + "/none.safetensors"], "\(scratch!)/none.safetensors: file not found")
    }
}
