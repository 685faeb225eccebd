import Checkpoint
import Data
import Foundation
import Kernels
import NN
import Optim

/// The training and evaluation sets of a job: images with their test set, or a text's next-token windows with
/// its validation split.
public typealias JobDatasets = (train: any SampleSource, test: any SampleSource)

/// The train and test sets a config names, checked against the model's input and output widths.
public func loadData(_ config: JobConfig) throws -> JobDatasets {
    if config.data.isText { return try loadText(config) }
    var (train, test) = try ImageDataset.loadMNISTStyle(directory: config.data.directory)
    (train.mean, train.std) = (config.data.mean, config.data.std)
    (test.mean, test.std) = (config.data.mean, config.data.std)
    let sizes = config.model.sizes
    guard sizes[0] == train.features else {
        throw ConfigError("model.sizes[0] is \(sizes[0]) but \(config.data.directory) has \(train.features) features per sample")
    }
    let classes = Int((train.labels.max() ?? 0) + 1)
    guard sizes.last! >= classes else {
        throw ConfigError("model.sizes ends in \(sizes.last!) outputs but the labels have \(classes) classes")
    }
    try checkBatch(config, trainingSamples: train.count)
    return (train, test)
}

/// The fortunes corpus as windows of model.context characters: the vocabulary is every character of both splits.
func loadText(_ config: JobConfig) throws -> JobDatasets {
    let corpus = try FortunesCorpus(directory: config.data.directory, validationEvery: config.data.validationEvery)
    let vocabulary = CharacterVocabulary(text: corpus.train + corpus.validation)
    let train = TokenDataset(tokens: try vocabulary.encode(corpus.train), context: config.model.context, vocabulary: vocabulary)
    let validation = TokenDataset(tokens: try vocabulary.encode(corpus.validation), context: config.model.context,
                                  vocabulary: vocabulary)
    try checkBatch(config, trainingSamples: train.count)
    return (train, validation)
}

private func checkBatch(_ config: JobConfig, trainingSamples: Int) throws {
    guard trainingSamples >= config.training.batchSize else {
        throw ConfigError("training.batch_size \(config.training.batchSize) exceeds the \(trainingSamples) training samples")
    }
}

/// The job cannot go on (too many skipped steps).
public struct TrainingError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// What a finished run reports (also the `done` event).
public struct RunSummary {
    public var steps: Int
    public var loss: Float
    public var testLoss: Float
    public var testAccuracy: Double
    public var weightsSHA256: String
    public var seconds: Double
    public var samplesPerSecond: Double
    /// False when a stop request ended the run early (a checkpoint holds its state).
    public var finished: Bool
}

/// A step's sums over its samples, as a gradient source returns them.
public struct StepSums {
    /// Σ ∂ℓ/∂θ (flat, canonical order), combined over the micro-batches in the gradient tree.
    public var gradientSum: [Float]
    /// Σ ℓ, combined the same way.
    public var lossSum: Float
    /// Fields for the step event.
    public var fields: [(String, JSONValue)]
    /// The workers that sent NaN or infinite values, by parameter block (nil: the loss).
    public var nonFiniteSources: [Int?: [String]]

    public init(gradientSum: [Float], lossSum: Float, fields: [(String, JSONValue)] = [], nonFiniteSources: [Int?: [String]] = [:]) {
        self.gradientSum = gradientSum
        self.lossSum = lossSum
        self.fields = fields
        self.nonFiniteSources = nonFiniteSources
    }
}

/// Where a step's gradient sums come from: this process's threads, or workers over the network.
public protocol GradientSource: AnyObject {
    /// The sums of global step `step` at weights `parameters` (which the trainer's model holds too when
    /// `computesOnModel`).
    func sums(step: Int, parameters: [Float]) throws -> StepSums
    /// Whether `sums` runs the trainer's model, which must then hold the weights before every step. Otherwise
    /// the trainer loads them into its model only when it evaluates.
    var computesOnModel: Bool { get }
    /// Called once when the run ends (finished or stopped).
    func finish(summary: RunSummary)
}

extension GradientSource {
    public var computesOnModel: Bool { true }
}

/// Computes every micro-batch of a step in this process.
public final class LocalGradientSource: GradientSource {
    let engine: GradientEngine
    let plan: BatchPlan
    let train: any SampleSource
    private var cachedEpoch = -1
    private var permutation: [Int] = []

    public init(model: Module, plan: BatchPlan, train: any SampleSource, precision: MatmulPrecision = .float32) {
        engine = GradientEngine(model: model, precision: precision)
        self.plan = plan
        self.train = train
    }

    /// The gradient and loss sums over micro-batches `range` of `step` at the weights `feed` delivers (taken
    /// without a copy, each layer as soon as its tensors are in), handed to `emit` piece by piece as the passes
    /// produce them.
    public func streamBlockSums(step: Int, range: Range<Int>, weights feed: WeightFeed,
                                emit: (GradientEngine.Piece) -> Void) throws {
        let samples = samples(step: step)
        try engine.streamBlockSums(range, weights: feed, dropoutSeed: dropoutSeed(step: step),
                                   inputs: { train.batch(plan.microBatch($0, of: samples)) }, emit: emit)
    }

    /// Dropout's masks for `step`: a function of the job's seed and the step alone.
    private func dropoutSeed(step: Int) -> UInt64 { plan.seed &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(step) }

    /// The sample indices of `step`.
    private func samples(step: Int) -> ArraySlice<Int> {
        let epoch = step / plan.stepsPerEpoch
        if epoch != cachedEpoch {
            permutation = plan.permutation(epoch: epoch)
            cachedEpoch = epoch
        }
        return plan.samples(step: step, permutation: permutation)
    }

    /// The step's sums at the model's weights, which the trainer keeps equal to `parameters`.
    public func sums(step: Int, parameters: [Float]) throws -> StepSums {
        let samples = samples(step: step)
        let blocks = try engine.blockSums(0..<plan.microBatches, dropoutSeed: dropoutSeed(step: step)) {
            train.batch(plan.microBatch($0, of: samples))
        }
        // 0..<K is one aligned block when K is a power of two; otherwise finish the tree over the blocks.
        let gradient = Trace.span("tree_sum", "step") {
            GradientTree.sum(tensors: blocks.map { ($0.microBatches, $0.gradients) }, leaves: plan.microBatches)
        }
        let loss = GradientTree.sum(blocks: blocks.map { ($0.microBatches, [$0.lossSum]) }, leaves: plan.microBatches)[0]
        return StepSums(gradientSum: gradient, lossSum: loss)
    }

    public func finish(summary: RunSummary) {}
}

/// The training loop, shared by `train` (gradients from this process) and the coordinator (from workers).
///
/// A step: the global batch's micro-batch gradient sums, combined in the fixed tree, are divided by the global
/// batch, clipped by global norm, and the optimizer updates the flat parameter buffer.
public final class Trainer {
    public let config: JobConfig
    /// The model; after steps from a source that does not compute on it, `syncModel()` loads the current weights.
    public let model: Module
    public let layout: ParameterLayout
    public let plan: BatchPlan
    public let train: any SampleSource
    public let test: any SampleSource
    public let events: EventLog
    public let runDirectory: String?
    public private(set) var state: TrainingState
    public let source: GradientSource
    var schedule: LearningRateSchedule { config.resolvedSchedule(totalSteps: totalSteps) }
    /// Set from a signal handler to stop after the current step (a checkpoint is written).
    nonisolated(unsafe) public static var stopRequested = false

    public var totalSteps: Int {
        let epochSteps = config.training.epochs * plan.stepsPerEpoch
        return config.training.maxSteps > 0 ? min(config.training.maxSteps, epochSteps) : epochSteps
    }

    /// `makeSource` nil computes gradients in this process.
    public init(config: JobConfig, runDirectory: String?, data: JobDatasets? = nil,
                makeSource: ((Module, BatchPlan, any SampleSource) -> GradientSource)? = nil) throws {
        self.config = config
        self.runDirectory = runDirectory
        Parallel.threadCount = config.training.threads > 0 ? config.training.threads
            : ProcessInfo.processInfo.activeProcessorCount
        (train, test) = try data ?? loadData(config)
        model = makeModel(config.model, seed: config.seed, data: train)
        layout = ParameterLayout(model)
        plan = BatchPlan(seed: config.seed, datasetSize: train.count, batchSize: config.training.batchSize,
                         microBatches: config.training.microBatches)
        source = makeSource?(model, plan, train) ?? LocalGradientSource(model: model, plan: plan, train: train,
                                                                                 precision: config.training.precision)
        let optimizer = Optimizer(config.optimizer.config, parameterCount: layout.totalCount,
                                  trainable: layout.entries.filter(\.trainable).map(\.range))
        state = TrainingState(step: 0, parameters: model.flatValues(), optimizer: optimizer)
        if let runDirectory {
            try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
            if let gpt = model as? GPT, let text = train as? TokenDataset {
                try LanguageModelFiles.write(shape: gpt.shape, vocabulary: text.vocabulary, runDirectory: runDirectory)
            }
            events = try EventLog(path: (runDirectory as NSString).appendingPathComponent("events.jsonl"))
        } else {
            events = try EventLog(path: nil)
        }
    }

    /// The run directory's checkpoints (nil without a run directory).
    public var checkpoints: CheckpointStore? {
        runDirectory.map { CheckpointStore(runDirectory: $0, layout: layout) }
    }

    /// Continues from the newest valid checkpoint in the run directory, if there is one; returns its step.
    @discardableResult
    public func resume() -> Int? {
        guard let store = checkpoints,
              let restored = store.newestValid(optimizer: state.optimizer, warn: { self.events.emit("warning", [("message", .string($0))]) })
        else { return nil }
        state = restored
        modelIsCurrent = false
        syncModel()
        events.emit("resumed", [("step", .int(state.step))])
        return state.step
    }

    /// Gradient (already divided by the global batch), mean loss, and each parameter tensor's gradient norm of
    /// global step `step` at the current weights. Division and norm share one pass, a tensor per thread.
    public func gradient(step: Int) throws -> (gradient: [Float], loss: Float, sums: StepSums, norms: [Float]) {
        var sums = try source.sums(step: step, parameters: state.parameters)
        var gradient = sums.gradientSum
        sums.gradientSum = []
        let batch = Float(plan.batchSize)
        let norms = Trace.span("norms", "step") {
            tensorNorms(dividing: &gradient, by: batch, tensors: layout.entries.map(\.range))
        }
        return (gradient, sums.lossSum / batch, sums, norms)
    }

    /// What one call of `step()` did.
    public enum StepOutcome {
        /// The optimizer stepped: the loss before it, the clipping result, the learning rate, step-event fields.
        case updated(loss: Float, clip: ClipResult, lr: Float, fields: [(String, JSONValue)])
        /// The gradient or loss was not finite: the weights are unchanged and the step's data is passed over.
        /// `layers` names the parameter tensors (or "loss") with NaN or infinite values, `workers` who sent them.
        case skipped(layers: [String], workers: [String])
    }

    /// Whether `model` holds `state.parameters`.
    private var modelIsCurrent = true

    /// The model, with the current weights loaded if they were not yet.
    @discardableResult
    public func syncModel() -> Module {
        if !modelIsCurrent {
            Trace.span("load", "step") { model.load(flatValues: state.parameters) }
            modelIsCurrent = true
        }
        return model
    }

    /// Steps skipped for a non-finite gradient or loss in this run.
    public private(set) var skippedSteps = 0

    /// One optimizer step, or a skipped one (see `StepOutcome`).
    public func step() throws -> StepOutcome {
        var (gradient, loss, sums, norms) = try Trace.span("gradients", "step") { try self.gradient(step: state.step) }
        let tensors = layout.entries.map(\.range)
        let badBlocks = norms.indices.filter { !norms[$0].isFinite }
        if !badBlocks.isEmpty || !loss.isFinite {
            state.step += 1
            skippedSteps += 1
            let blocks: [Int?] = badBlocks + (loss.isFinite ? [] : [nil])
            return .skipped(layers: blocks.map { $0.map { layout.entries[$0].name } ?? "loss" },
                            workers: Array(Set(blocks.flatMap { sums.nonFiniteSources[$0] ?? [] })).sorted())
        }
        var fields = sums.fields
        let clip = config.training.clipNorm > 0
            ? clipGradientNorm(&gradient, tensors: tensors, maxNorm: config.training.clipNorm, norms: norms)
            : ClipResult(totalNorm: globalGradientNorm(tensorNorms: norms), clipped: false)
        // Per-layer gradient norms before clipping: the gradient flow the monitor shows.
        fields.append(("grad_norms", .object(zip(layout.entries, norms).map { ($0.name, JSONValue($1)) })))
        let lr = schedule.learningRate(base: config.optimizer.lr, step: state.step)
        var parameters = state.parameters
        state.parameters = []  // keeps `parameters` uniquely referenced: updated in place
        Trace.span("optimizer", "step") { state.optimizer.step(parameters: &parameters, gradients: gradient, lr: lr) }
        state.parameters = parameters
        state.step += 1
        modelIsCurrent = false
        if source.computesOnModel { syncModel() }
        return .updated(loss: loss, clip: clip, lr: lr, fields: fields)
    }

    var modelDescription: String {
        let m = config.model
        if let gpt = model as? GPT {
            return "gpt \(m.layers) layers, dim \(m.dim), \(m.heads) heads, context \(m.context), vocabulary \(gpt.shape.vocabulary)"
        }
        return "mlp \(m.sizes.map(String.init).joined(separator: "-"))"
    }

    public func run() throws -> RunSummary {
        let total = totalSteps
        var dataFields: [(String, JSONValue)] = []
        if let train = train as? TokenDataset, let validation = test as? TokenDataset {
            let bigram = bigramValidationLoss(train: train, validation: validation)
            dataFields = [("vocabulary", .int(train.vocabulary.count)), ("train_tokens", .int(train.tokens.count)),
                          ("validation_tokens", .int(validation.tokens.count)), ("bigram_validation_loss", .number(bigram.loss))]
        }
        events.emit("job_start", [
            ("job", .string(config.name)), ("mode", "train"), ("seed", .int(Int(config.seed))),
            ("model", .string(modelDescription)),
            ("parameters", .int(layout.totalCount)), ("optimizer", .string(config.optimizer.config.name)),
            ("batch_size", .int(plan.batchSize)), ("micro_batches", .int(plan.microBatches)),
            ("steps", .int(total)), ("start_step", .int(state.step)), ("threads", .int(Parallel.threadCount)),
            ("isa", .string(VectorISA.active.name)),
        ] + dataFields)
        let started = Date()
        var windowStart = Date(), windowSteps = 0
        var samplesPerSecond = 0.0
        var lastLoss = Float.nan
        var lastEval: (loss: Float, accuracy: Double)?
        let startStep = state.step
        while state.step < total && !Trainer.stopRequested {
            let epoch = state.step / plan.stepsPerEpoch
            let (loss, clip, lr, fields): (Float, ClipResult, Float, [(String, JSONValue)])
            switch try Trace.span("step", "step", { try step() }) {
            case let .updated(stepLoss, stepClip, stepLR, stepFields):
                (loss, clip, lr, fields) = (stepLoss, stepClip, stepLR, stepFields)
            case let .skipped(layers, workers):
                try reportSkip(layers: layers, workers: workers)
                continue
            }
            lastLoss = loss
            windowSteps += 1
            let elapsed = Date().timeIntervalSince(windowStart)
            if elapsed >= 0.5 || state.step == total {
                samplesPerSecond = Double(windowSteps * plan.batchSize) / elapsed
                windowStart = Date()
                windowSteps = 0
            }
            events.emit("step", [
                ("step", .int(state.step)), ("epoch", .int(epoch)), ("loss", JSONValue(loss)),
                ("grad_norm", JSONValue(clip.totalNorm)), ("clipped", .bool(clip.clipped)), ("lr", JSONValue(lr)),
                ("samples_per_s", .number(samplesPerSecond.rounded())), ("total_steps", .int(total)),
            ] + fields)
            if config.training.evalEvery > 0 && state.step % config.training.evalEvery == 0 && state.step < total {
                lastEval = try Trace.span("eval", "step") { try evaluate(syncModel(), on: test) }
                events.emit("eval", [("step", .int(state.step)), ("test_loss", JSONValue(lastEval!.loss)),
                                     ("test_accuracy", .number(lastEval!.accuracy))])
            }
            if config.training.checkpointEvery > 0 && state.step % config.training.checkpointEvery == 0 {
                writeCheckpoint()
            }
        }
        if state.step > startStep { writeCheckpoint() }
        let seconds = Date().timeIntervalSince(started)
        let overall = Double((state.step - startStep) * plan.batchSize) / max(seconds, 1e-9)
        if state.step < total {
            // Interrupted: the checkpoint is the output; nothing may look like a finished run.
            let hash = weightsSHA256(state.parameters)
            events.emit("stopped", [("step", .int(state.step)), ("loss", JSONValue(lastLoss)), ("weights_sha256", .string(hash)),
                                    ("elapsed_s", .number(seconds))])
            let summary = RunSummary(steps: state.step, loss: lastLoss, testLoss: .nan, testAccuracy: .nan,
                                     weightsSHA256: hash, seconds: seconds, samplesPerSecond: overall, finished: false)
            source.finish(summary: summary)
            return summary
        }
        let (testLoss, accuracy) = try Trace.span("eval", "step") { try evaluate(syncModel(), on: test) }
        events.emit("eval", [("step", .int(state.step)), ("test_loss", JSONValue(testLoss)),
                             ("test_accuracy", .number(accuracy))])
        let hash = weightsSHA256(state.parameters)
        if let store = checkpoints {
            let final = (runDirectory! as NSString).appendingPathComponent("final.safetensors")
            try SafeTensors(tensors: store.weightEntries(state.parameters),
                            metadata: ["step": String(state.step), "weights_sha256": hash, "job": config.name])
                .write(to: final)
        }
        let summary = RunSummary(steps: state.step, loss: lastLoss, testLoss: testLoss, testAccuracy: accuracy,
                                 weightsSHA256: hash, seconds: seconds, samplesPerSecond: overall, finished: true)
        events.emit("done", [
            ("step", .int(summary.steps)), ("loss", JSONValue(summary.loss)), ("test_loss", JSONValue(testLoss)),
            ("test_accuracy", .number(accuracy)), ("weights_sha256", .string(hash)), ("elapsed_s", .number(seconds)),
            ("samples_per_s", .number(overall.rounded())),
        ])
        source.finish(summary: summary)
        return summary
    }

    /// Logs a skipped step; stops the job once more than `training.max_skipped_steps` were skipped.
    func reportSkip(layers: [String], workers: [String]) throws {
        let step = state.step - 1
        events.emit("skipped", [
            ("step", .int(step)), ("layers", .array(layers.map { .string($0) })),
            ("workers", .array(workers.map { .string($0) })), ("skipped_steps", .int(skippedSteps)),
            ("max_skipped_steps", .int(config.training.maxSkippedSteps)),
        ])
        guard skippedSteps > config.training.maxSkippedSteps else { return }
        let from = workers.isEmpty ? "" : " from \(workers.joined(separator: ", "))"
        throw TrainingError("step \(step): a non-finite gradient or loss in \(layers.joined(separator: ", "))\(from); "
            + "\(skippedSteps) steps skipped, more than training.max_skipped_steps (\(config.training.maxSkippedSteps)). "
            + "The job stops rather than train on garbage: lower optimizer.lr, set training.clip_norm, or check the data.")
    }

    /// Writes a checkpoint. A failure (disk full, read-only directory) is logged as an `error` event and training
    /// goes on: the write is atomic, so the previous checkpoints are intact.
    func writeCheckpoint() {
        guard let store = checkpoints else { return }
        Trace.span("checkpoint", "step") { saveCheckpoint(store) }
    }

    private func saveCheckpoint(_ store: CheckpointStore) {
        do {
            let file = try store.save(state, seed: config.seed, jobName: config.name, keep: config.training.keepCheckpoints)
            events.emit("checkpoint", [("step", .int(state.step)), ("path", .string(file))])
        } catch {
            events.emit("error", [("message", .string("checkpoint at step \(state.step) not written, the previous ones are kept: \(error)"))])
        }
    }
}
