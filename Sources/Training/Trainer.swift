import Checkpoint
import Data
import Foundation
import Kernels
import NN
import Optim

/// The job cannot go on (too many skipped steps).
public struct TrainingError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The training loop, shared by `train` (gradients from this process) and the coordinator (from workers).
///
/// A step: the global batch's micro-batch gradient sums, combined in the fixed tree, are divided by the global
/// batch, clipped by global norm, and the optimizer updates the flat parameter buffer.
public final class Trainer {
    public let job: TrainingJob
    public var config: JobConfig { job.config }
    /// The model; after steps from a source that does not compute on it, `syncModel()` loads the current weights.
    public var model: Module { job.model }
    public var layout: ParameterLayout { job.layout }
    public var plan: BatchPlan { job.plan }
    public var train: any SampleSource { job.train }
    public var test: any SampleSource { job.test }
    public let events: EventLog
    public let runDirectory: String?
    /// The job's threads, stop request and trace.
    public let context: RunContext
    public private(set) var state: TrainingState
    public let source: GradientSource
    var schedule: LearningRateSchedule { config.resolvedSchedule(totalSteps: totalSteps) }

    public var totalSteps: Int {
        let epochSteps = config.training.epochs * plan.stepsPerEpoch
        return config.training.maxSteps > 0 ? min(config.training.maxSteps, epochSteps) : epochSteps
    }

    /// Trains `job`, logging to `events` (default: the run directory's `events.jsonl`, or memory only without
    /// one), with gradients from `source` (default: computed in this process).
    public init(job: TrainingJob, runDirectory: String?, events: EventLog? = nil, source: GradientSource? = nil,
                context: RunContext? = nil) throws {
        self.job = job
        self.runDirectory = runDirectory
        self.context = context ?? job.context()
        self.source = source ?? job.localGradientSource(self.context)
        let optimizer = Optimizer(job.config.optimizer.config, parameterCount: job.layout.totalCount,
                                  trainable: job.layout.entries.filter(\.trainable).map(\.range))
        state = TrainingState(step: 0, parameters: job.model.flatValues(), optimizer: optimizer)
        if let runDirectory, let gpt = job.model as? GPT, let text = job.train as? TokenDataset {
            try FileManager.default.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
            try LanguageModelFiles.write(shape: gpt.shape, vocabulary: text.vocabulary, runDirectory: runDirectory)
        }
        self.events = try events ?? EventLog(runDirectory: runDirectory)
    }

    /// Builds the job from `config` (its datasets loaded unless given) and trains it in this process.
    public convenience init(config: JobConfig, runDirectory: String?, data: JobDatasets? = nil, context: RunContext? = nil) throws {
        try self.init(job: TrainingJob(config: config, data: data), runDirectory: runDirectory, context: context)
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
        let norms = context.trace.span("norms", "step") {
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
            context.trace.span("load", "step") { model.load(flatValues: state.parameters) }
            modelIsCurrent = true
        }
        return model
    }

    /// Steps skipped for a non-finite gradient or loss in this run.
    public private(set) var skippedSteps = 0

    /// One optimizer step, or a skipped one (see `StepOutcome`), on the job's threads.
    public func step() throws -> StepOutcome { try Parallel.withThreads(context.threads) { try optimizerStep() } }

    private func optimizerStep() throws -> StepOutcome {
        var (gradient, loss, sums, norms) = try context.trace.span("gradients", "step") { try self.gradient(step: state.step) }
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
        context.trace.span("optimizer", "step") { state.optimizer.step(parameters: &parameters, gradients: gradient, lr: lr) }
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

    /// Trains to the end or until the job's stop request, on the job's threads.
    public func run() throws -> RunSummary { try Parallel.withThreads(context.threads) { try runSteps() } }

    private func runSteps() throws -> RunSummary {
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
            ("steps", .int(total)), ("start_step", .int(state.step)), ("threads", .int(context.threads)),
            ("isa", .string(VectorISA.active.name)),
        ] + dataFields)
        let started = Date()
        var windowStart = Date(), windowSteps = 0
        var samplesPerSecond = 0.0
        var lastLoss = Float.nan
        var lastEval: (loss: Float, accuracy: Double)?
        let startStep = state.step
        while state.step < total && !context.stop.isRequested {
            let epoch = state.step / plan.stepsPerEpoch
            let (loss, clip, lr, fields): (Float, ClipResult, Float, [(String, JSONValue)])
            switch try context.trace.span("step", "step", { try optimizerStep() }) {
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
                lastEval = try context.trace.span("eval", "step") { try evaluate(syncModel(), on: test) }
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
        let (testLoss, accuracy) = try context.trace.span("eval", "step") { try evaluate(syncModel(), on: test) }
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
        context.trace.span("checkpoint", "step") { saveCheckpoint(store) }
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
