import Checkpoint
import Data
import Foundation
import Kernels
import NN
import TestSupport
import Training
import XCTest

/// A small learnable image set: 4 classes, each a noisy prototype pattern of 16 "pixels".
func syntheticData(train: Int = 512, test: Int = 256, seed: UInt64 = 5) -> (train: ImageDataset, test: ImageDataset) {
    func make(_ count: Int, _ seed: UInt64) -> ImageDataset {
        let noise = testValues(count * 16, seed: seed)
        var pixels: [UInt8] = []
        var labels: [Int32] = []
        for i in 0..<count {
            let label = i % 4
            labels.append(Int32(label))
            for j in 0..<16 {
                let prototype: Float = (j / 4 == label) ? 200 : 40
                pixels.append(UInt8(max(0, min(255, prototype + 60 * noise[i * 16 + j]))))
            }
        }
        return ImageDataset(features: 16, pixels: pixels, labels: labels)
    }
    return (make(train, seed), make(test, seed + 1))
}

func smallConfig(threads: Int = 2, steps: Int = 24, microBatches: Int = 4) throws -> JobConfig {
    try JobConfig.parse(yaml: """
        name: small
        seed: 3
        model: {sizes: [16, 12, 12, 4], activation: relu}
        optimizer: {kind: adamw, lr: 0.01}
        training: {batch_size: 32, micro_batches: \(microBatches), max_steps: \(steps), threads: \(threads), checkpoint_every: 10}
        """)
}

final class TrainerTests: XCTestCase {
    var runDirectory: String!

    override func setUp() {
        runDirectory = NSTemporaryDirectory() + "trainerd-run-\(UUID().uuidString)"
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: runDirectory)
    }

    func run(_ config: JobConfig, directory: String? = nil, resume: Bool = false) throws -> RunSummary {
        let trainer = try Trainer(config: config, runDirectory: directory, data: syntheticData())
        if resume { XCTAssertNotNil(trainer.resume()) }
        return try trainer.run()
    }

    func testTrainingLearnsAndLeavesACompleteRunDirectory() throws {
        let summary = try run(try smallConfig(steps: 60), directory: runDirectory)
        XCTAssertGreaterThan(summary.testAccuracy, 0.9)
        let lines = try String(contentsOfFile: runDirectory + "/events.jsonl", encoding: .utf8).split(separator: "\n")
        let last = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(lines.last!.utf8)) as? [String: Any])
        XCTAssertEqual(last["event"] as? String, "done")
        XCTAssertEqual(last["step"] as? Int, 60)
        XCTAssertEqual(last["weights_sha256"] as? String, summary.weightsSHA256)
        XCTAssertNotNil(last["test_accuracy"] as? Double)
        XCTAssertNotNil(last["loss"] as? Double)
        let first = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(lines.first!.utf8)) as? [String: Any])
        XCTAssertEqual(first["event"] as? String, "job_start")
        let final = try SafeTensors.read(runDirectory + "/final.safetensors")
        XCTAssertEqual(final.tensors.map(\.name), ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"])
        XCTAssertEqual(final["0.weight"]?.shape, [12, 16])
        XCTAssertEqual(weightsSHA256(final.tensors.flatMap(\.values)), summary.weightsSHA256)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: runDirectory + "/checkpoints").sorted(),
                       ["step-00000040.safetensors", "step-00000050.safetensors", "step-00000060.safetensors"])
    }

    func testSameSeedSameHashAndThreadCountDoesNotMatter() throws {
        let one = try run(try smallConfig(threads: 1))
        let two = try run(try smallConfig(threads: 2))
        let again = try run(try smallConfig(threads: 2))
        XCTAssertEqual(one.weightsSHA256, two.weightsSHA256)
        XCTAssertEqual(two.weightsSHA256, again.weightsSHA256)
        var other = try smallConfig()
        other.seed = 4
        XCTAssertNotEqual(try run(other).weightsSHA256, one.weightsSHA256)
    }

    /// A worker holding any contiguous range of micro-batches sends aligned block sums; combined in the tree
    /// they equal the single-process step's gradient bit for bit.
    func testBlockSumsFromAnyWorkerSplitReproduceTheStepGradient() throws {
        let config = try smallConfig(microBatches: 8)
        let data = syntheticData()
        let trainer = try Trainer(config: config, runDirectory: nil, data: data)
        let permutation = trainer.plan.permutation(epoch: 0)
        let full = try trainer.gradient(step: 0)
        let samples = trainer.plan.samples(step: 0, permutation: permutation)
        let engine = GradientEngine(model: trainer.model, threads: 2)
        for workers in [2, 3, 5] {
            let cuts = (0...workers).map { $0 * 8 / workers }
            var blocks: [GradientBlock] = []
            for w in 0..<workers {
                blocks += try engine.blockSums(cuts[w]..<cuts[w + 1]) { data.train.batch(trainer.plan.microBatch($0, of: samples)) }
            }
            var gradient = GradientTree.sum(blocks: blocks.map { ($0.microBatches, $0.gradientSum) }, leaves: 8)
            for i in gradient.indices { gradient[i] /= 32 }
            assertBitIdentical(gradient, full.gradient, "\(workers) workers")
        }
    }

    /// A worker's streamed pieces, with weights arriving a tensor at a time, are the bits of `blockSums`; the
    /// passes wait for the weights that are missing and give up when the feed is abandoned.
    func testStreamedPiecesAtArrivingWeightsEqualTheBlockSums() throws {
        let config = try smallConfig(microBatches: 8)
        let data = syntheticData()
        let trainer = try Trainer(config: config, runDirectory: nil, data: data)
        let samples = trainer.plan.samples(step: 0, permutation: trainer.plan.permutation(epoch: 0))
        let inputs = { (index: Int) in data.train.batch(trainer.plan.microBatch(index, of: samples)) }
        let expected = try GradientEngine(model: trainer.model, threads: 2).blockSums(2..<7, inputs: inputs)
        let weights = trainer.model.parameters.map(\.value.storage)

        let engine = GradientEngine(model: makeModel(config.model, seed: 99), threads: 2)  // other weights: the feed's count
        let feed = WeightFeed(step: 0, count: weights.count)
        for index in weights.indices.dropLast() { feed.provide(index, weights[index]) }
        final class Pieces: @unchecked Sendable { var list: [GradientEngine.Piece] = []; let lock = NSLock() }
        let pieces = Pieces()
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            try? engine.streamBlockSums(2..<7, weights: feed, inputs: inputs) { piece in
                pieces.lock.lock(); pieces.list.append(piece); pieces.lock.unlock()
            }
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 0.2), .timedOut, "the last layer's weights are missing")
        XCTAssertTrue(pieces.list.isEmpty)
        feed.provide(weights.count - 1, weights.last!)
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        for block in expected {
            let mine = pieces.list.filter { $0.microBatches == block.microBatches }
            XCTAssertEqual(mine.compactMap { $0.parameter == nil ? $0.values[0] : nil }.map(\.bitPattern), [block.lossSum.bitPattern])
            for (index, gradient) in block.gradients.enumerated() {
                let piece = mine.filter { $0.parameter == index }
                XCTAssertEqual(piece.count, 1)
                assertBitIdentical(piece.first?.values ?? [], gradient, "block \(block.microBatches) tensor \(index)")
            }
        }

        let abandoned = WeightFeed(step: 1, count: weights.count)
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.05) { abandoned.cancel("test") }
        XCTAssertThrowsError(try engine.streamBlockSums(0..<8, weights: abandoned, inputs: inputs) { _ in }) {
            XCTAssertEqual("\($0)", "weights of step 1 abandoned: test")
        }
    }

    func testResumeContinuesToTheSameWeightsAsAnUninterruptedRun() throws {
        let straight = try run(try smallConfig(steps: 24))
        _ = try run(try smallConfig(steps: 10), directory: runDirectory)
        let resumed = try run(try smallConfig(steps: 24), directory: runDirectory, resume: true)
        XCTAssertEqual(resumed.weightsSHA256, straight.weightsSHA256)
    }

    func testCorruptNewestCheckpointFallsBackToThePreviousOne() throws {
        let straight = try run(try smallConfig(steps: 24))
        _ = try run(try smallConfig(steps: 20), directory: runDirectory)
        let newest = runDirectory + "/checkpoints/step-00000020.safetensors"
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: newest)))
        bytes[bytes.count - 5] ^= 0xFF
        XCTAssertTrue(FileManager.default.createFile(atPath: newest, contents: Data(bytes)))
        let trainer = try Trainer(config: try smallConfig(steps: 24), runDirectory: runDirectory, data: syntheticData())
        var warnings: [String] = []
        trainer.events.observers.append { event, fields in
            if event == "warning", case let .string(message)? = fields.first(where: { $0.0 == "message" })?.1 {
                warnings.append(message)
            }
        }
        XCTAssertEqual(trainer.resume(), 10)
        XCTAssertEqual(warnings.count, 1)
        XCTAssertTrue(warnings.first?.contains("step-00000020.safetensors") ?? false, "\(warnings)")
        XCTAssertEqual(try trainer.run().weightsSHA256, straight.weightsSHA256)
    }

    /// A checkpoint that cannot be written is logged as an error; training goes on and the earlier checkpoints
    /// stay intact and loadable.
    func testAFailedCheckpointWriteKeepsThePreviousOneAndTrainingGoesOn() throws {
        let straight = try run(try smallConfig(steps: 24))
        let trainer = try Trainer(config: try smallConfig(steps: 24), runDirectory: runDirectory, data: syntheticData())
        // A directory where step 20's temporary file would go makes that write fail (whoever runs the test).
        let blocker = runDirectory + "/checkpoints/.step-00000020.safetensors.tmp-\(getpid())"
        try FileManager.default.createDirectory(atPath: blocker, withIntermediateDirectories: true)
        var errors: [String] = []
        trainer.events.observers.append { event, fields in
            if event == "error", case let .string(text)? = fields.first?.1 { errors.append(text) }
        }
        XCTAssertEqual(try trainer.run().weightsSHA256, straight.weightsSHA256)
        XCTAssertEqual(errors.count, 1)
        XCTAssertTrue(errors.first?.hasPrefix("checkpoint at step 20 not written, the previous ones are kept: ") ?? false, "\(errors)")
        let store = try XCTUnwrap(trainer.checkpoints)
        XCTAssertEqual(store.checkpointFiles().map { ($0 as NSString).lastPathComponent },
                       ["step-00000010.safetensors", "step-00000024.safetensors"])
        XCTAssertEqual(try store.load(store.checkpointFiles()[0], optimizer: trainer.state.optimizer).step, 10)
    }

    func testModelWiderThanTheDataIsRejectedWithTheFieldName() throws {
        var config = try smallConfig()
        config.model.sizes = [784, 10]
        let data = syntheticData()
        config.data.directory = "/nonexistent"
        XCTAssertThrowsError(try Trainer(config: config, runDirectory: nil)) {
            XCTAssertEqual("\($0)", "/nonexistent/train-images-idx3-ubyte.gz: file not found")
        }
        _ = data
    }
}

/// Non-finite gradients: the step is skipped (weights unchanged, data passed over), logged with the layer and the
/// worker, counted, and the job stops once more than `training.max_skipped_steps` steps were skipped.
final class NonFiniteStepTests: XCTestCase {
    /// A local source that poisons one parameter block at chosen steps, as a faulty worker would.
    final class PoisonedSource: GradientSource {
        let inner: LocalGradientSource
        let steps: Set<Int>
        init(_ inner: LocalGradientSource, steps: Set<Int>) { self.inner = inner; self.steps = steps }

        func sums(step: Int, parameters: [Float]) throws -> StepSums {
            var sums = try inner.sums(step: step, parameters: parameters)
            guard steps.contains(step) else { return sums }
            sums.gradientSum[16 * 12 + 12 + 3] = .nan  // block 2, "2.weight"
            sums.nonFiniteSources = [2: ["worker-7"]]
            return sums
        }

        func finish(summary: RunSummary) {}
    }

    func testASkippedStepLeavesTheWeightsAndNamesTheLayerAndWorker() throws {
        let config = try smallConfig(steps: 6)
        let data = syntheticData()
        func poisoned() throws -> Trainer {
            let job = try TrainingJob(config: config, data: data)
            return try Trainer(job: job, runDirectory: nil, source: PoisonedSource(job.localGradientSource(job.context()), steps: [2]))
        }
        let trainer = try poisoned()
        var skipped: [String] = []
        trainer.events.observers.append { event, fields in
            if event == "skipped" { skipped.append(JSONValue.object(fields).serialized) }
        }
        for _ in 0..<2 { _ = try trainer.step() }
        let before = trainer.state.parameters
        guard case let .skipped(layers, workers) = try trainer.step() else { return XCTFail("step 2 was not skipped") }
        XCTAssertEqual(layers, ["2.weight"])
        XCTAssertEqual(workers, ["worker-7"])
        assertBitIdentical(trainer.state.parameters, before, "weights after a skipped step")
        XCTAssertEqual(trainer.state.step, 3, "the skipped step's data is passed over")
        guard case .updated = try trainer.step() else { return XCTFail("step 3 was skipped") }

        let full = try poisoned()
        full.events.observers.append { event, fields in
            if event == "skipped" { skipped.append(JSONValue.object(fields).serialized) }
        }
        XCTAssertEqual(try full.run().steps, 6)
        XCTAssertEqual(skipped, [#"{"step":2,"layers":["2.weight"],"workers":["worker-7"],"skipped_steps":1,"max_skipped_steps":10}"#])
    }

    func testTooManySkippedStepsStopTheJobWithAClearError() throws {
        var config = try smallConfig(steps: 20)
        config.training.maxSkippedSteps = 2
        // A learning rate this large overflows the weights after one step: every later gradient is NaN.
        config.optimizer.config = .sgd(momentum: 0)
        config.optimizer.lr = 1e30
        config.training.clipNorm = 0
        let trainer = try Trainer(config: config, runDirectory: nil, data: syntheticData())
        var skippedSteps: [Int] = []
        trainer.events.observers.append { event, fields in
            if event == "skipped", case let .int(count)? = fields.first(where: { $0.0 == "skipped_steps" })?.1 { skippedSteps.append(count) }
        }
        XCTAssertThrowsError(try trainer.run()) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("a non-finite gradient or loss in "), text)
            XCTAssertTrue(text.contains("3 steps skipped, more than training.max_skipped_steps (2)"), text)
            XCTAssertTrue(text.contains("lower optimizer.lr"), text)
        }
        XCTAssertEqual(skippedSteps, [1, 2, 3])
    }
}
