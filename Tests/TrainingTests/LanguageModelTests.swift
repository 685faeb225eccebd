import Foundation
import TestSupport
import XCTest

/// configs/fortunes-gpt.yaml end to end, at a size a CI machine trains in seconds: it beats the bigram baseline
/// on the validation split by a clear margin, `launch --workers 2` ends with `train`'s weights, and `sample`
/// prints seeded text in the run's vocabulary.
final class LanguageModelTests: CLITestCase {
    var gptConfig: String { repository.appendingPathComponent("configs/fortunes-gpt.yaml").path }
    /// 2 blocks of width 64 (about 110k parameters), 600 steps of 32 windows of 64 characters.
    let small = ["--set", "model.dim=64", "--set", "model.layers=2", "--set", "optimizer.lr=0.004",
                 "--set", "schedule.warmup_steps=20", "--set", "training.max_steps=600",
                 "--set", "training.eval_every=0", "--set", "training.checkpoint_every=300"]

    func requireFortunes() throws {
        try XCTSkipUnless(FileManager.default.fileExists(atPath: "/usr/share/games/fortunes/fortunes"),
                          "Debian's fortunes package is not installed (deploy/setup.sh installs it)")
    }

    func testFortunesGPTBeatsTheBigramLaunchMatchesTrainAndSampleIsSeeded() throws {
        try requireFortunes()
        let trained = scratch + "/train", launched = scratch + "/launch"
        let train = try trainerd(["train", gptConfig, "--run-dir", trained] + small, timeout: 600)
        XCTAssertEqual(train.status, 0, train.stderr)
        let start = try XCTUnwrap(events(trained).first)
        let done = try doneEvent(trained)
        let bigram = try XCTUnwrap(start["bigram_validation_loss"] as? Double)
        let validation = try XCTUnwrap(done["test_loss"] as? Double)
        print(String(format: "fortunes GPT: validation loss %.4f, bigram %.4f, margin %.4f nats per character",
                     validation, bigram, bigram - validation))
        XCTAssertLessThan(validation, bigram - 0.2, "the GPT must beat the bigram model clearly")

        let launch = try trainerd(["launch", gptConfig, "--workers", "2", "--run-dir", launched] + small, timeout: 600)
        XCTAssertEqual(launch.status, 0, launch.stderr)
        XCTAssertEqual(try doneEvent(launched)["weights_sha256"] as? String, done["weights_sha256"] as? String,
                       "launch --workers 2 must end with train's weights")

        let vocabularyFile = try Data(contentsOf: URL(fileURLWithPath: trained + "/vocabulary.json"))
        let vocabulary = try XCTUnwrap((try JSONSerialization.jsonObject(with: vocabularyFile) as? [String: Any])?["characters"] as? [String])
        func sample(_ arguments: [String]) throws -> String {
            let result = try trainerd(["sample", "--run-dir", trained] + arguments)
            XCTAssertEqual(result.status, 0, result.stderr)
            return String(result.stdout.dropLast())  // print's new line
        }
        let first = try sample(["--prompt", "The ", "--tokens", "120", "--seed", "3"])
        print("sample: \(first.debugDescription)")
        XCTAssertTrue(first.hasPrefix("The "))
        XCTAssertEqual(first.unicodeScalars.count, 4 + 120)
        XCTAssertTrue(first.unicodeScalars.allSatisfy { vocabulary.contains(String($0)) })
        XCTAssertEqual(try sample(["--prompt", "The ", "--tokens", "120", "--seed", "3"]), first, "same seed, same text")
        XCTAssertNotEqual(try sample(["--prompt", "The ", "--tokens", "120", "--seed", "4"]), first)
        XCTAssertEqual(try sample(["--tokens", "40", "--temperature", "0", "--seed", "1"]),
                       try sample(["--tokens", "40", "--temperature", "0", "--seed", "2"]), "greedy ignores the seed")

        let missing = try trainerd(["sample", "--run-dir", scratch + "/nothing"])
        XCTAssertEqual(missing.stderr, "trainerd: error: \(scratch!)/nothing/model.json (only language-model runs can be sampled): file not found\n")
        let foreign = try trainerd(["sample", "--run-dir", trained, "--prompt", "€"])
        XCTAssertEqual(foreign.stderr, "trainerd: error: the prompt: character \"€\" (U+20AC) is not in the vocabulary\n")
    }

    func testLanguageModelConfigsAreValidated() throws {
        try assertFails(["train", gptConfig, "--set", "model.heads=3", "--run-dir", scratch + "/run"],
                        "\(gptConfig): model.heads must divide dim 128, got 3")
        try assertFails(["train", gptConfig, "--set", "model.dropout=1", "--run-dir", scratch + "/run"],
                        "\(gptConfig): model.dropout must be in [0, 1), got 1.0")
        try assertFails(["train", gptConfig, "--set", "training.precision=fp8", "--run-dir", scratch + "/run"],
                        "\(gptConfig): training.precision must be float32 or bf16, got 'fp8'")
        try assertFails(["train", gptConfig, "--set", "data.kind=fashion-mnist", "--run-dir", scratch + "/run"],
                        "\(gptConfig): model.kind gpt cannot train on data.kind fashion-mnist (gpt needs fortunes, mlp images)")
        try assertFails(["train", gptConfig, "--set", "data.directory=/nonexistent", "--run-dir", scratch + "/run"],
                        "/nonexistent (install Debian's fortunes package: apt-get install fortunes): file not found")
    }
}

extension LanguageModelTests {
    /// Dropout's masks follow each sample's position in the step, so 1 thread, 2 threads and 3 workers (which split
    /// the 8 micro-batches 3/3/2, here with activation checkpointing) draw the same ones and end with the same
    /// weights; the masks do change the weights.
    func testDropoutAndCheckpointingGiveTheSameWeightsForAnyWorkerCount() throws {
        try requireFortunes()
        let short = ["--set", "model.dim=32", "--set", "model.layers=1", "--set", "training.max_steps=30",
                     "--set", "training.eval_every=0", "--set", "training.checkpoint_every=0"]
        func hash(_ command: [String], dropout: String, _ name: String) throws -> String? {
            let result = try trainerd(command + [gptConfig, "--run-dir", scratch + "/" + name, "--set", "model.dropout=" + dropout] + short)
            XCTAssertEqual(result.status, 0, result.stderr)
            return try doneEvent(scratch + "/" + name)["weights_sha256"] as? String
        }
        let train = try hash(["train"], dropout: "0.2", "train")
        XCTAssertEqual(try hash(["train", "--set", "training.threads=1"], dropout: "0.2", "one-thread"), train)
        // With activation checkpointing too: the recomputed blocks redraw the same masks.
        XCTAssertEqual(try hash(["launch", "--workers", "3", "--set", "model.checkpoint_activations=true"], dropout: "0.2", "launch"),
                       train)
        XCTAssertNotEqual(try hash(["train"], dropout: "0", "no-dropout"), train)
    }
}

extension LanguageModelTests {
    /// training.precision bf16 (matmul inputs rounded to bfloat16, float32 sums, weights and optimizer state):
    /// `launch --workers 2` ends with `train`'s weights, and the loss stays within 2 % of float32's.
    func testBF16MixedPrecisionTrainsAndIsTheSameForAnyWorkerCount() throws {
        try requireFortunes()
        let short = ["--set", "model.dim=32", "--set", "model.layers=1", "--set", "training.max_steps=60",
                     "--set", "training.eval_every=0", "--set", "training.checkpoint_every=0"]
        func done(_ command: [String], precision: String, _ name: String) throws -> [String: Any] {
            let result = try trainerd(command + [gptConfig, "--run-dir", scratch + "/" + name, "--set", "training.precision=" + precision] + short)
            XCTAssertEqual(result.status, 0, result.stderr)
            return try doneEvent(scratch + "/" + name)
        }
        let float32 = try done(["train"], precision: "float32", "float32")
        let bf16 = try done(["train"], precision: "bf16", "bf16")
        let launched = try done(["launch", "--workers", "2"], precision: "bf16", "launch")
        XCTAssertEqual(launched["weights_sha256"] as? String, bf16["weights_sha256"] as? String)
        XCTAssertNotEqual(bf16["weights_sha256"] as? String, float32["weights_sha256"] as? String)
        let (a, b) = (try XCTUnwrap(float32["test_loss"] as? Double), try XCTUnwrap(bf16["test_loss"] as? Double))
        print(String(format: "validation loss after 60 steps: float32 %.4f, bf16 %.4f", a, b))
        XCTAssertEqual(b, a, accuracy: 0.02 * a)
    }
}
