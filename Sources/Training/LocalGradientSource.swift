import Data
import Foundation
import Kernels
import NN

/// Computes every micro-batch of a step in this process.
///
/// One thread at a time uses it (the trainer's loop, or a worker's compute queue); it is Sendable so that it can
/// move to that thread, which alone touches its epoch cache.
public final class LocalGradientSource: GradientSource, @unchecked Sendable {
    let engine: GradientEngine
    let plan: BatchPlan
    let train: any SampleSource
    private var cachedEpoch = -1
    private var permutation: [Int] = []

    let trace: Trace?

    /// Passes run on `context.threads` replicas of `model`, their spans recorded in `context.trace`.
    public init(model: Module, plan: BatchPlan, train: any SampleSource, precision: MatmulPrecision = .float32,
                context: RunContext = RunContext()) {
        engine = GradientEngine(model: model, threads: context.threads, precision: precision, trace: context.trace)
        self.plan = plan
        self.train = train
        trace = context.trace
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
        let gradient = trace.span("tree_sum", "step") {
            GradientTree.sum(tensors: blocks.map { ($0.microBatches, $0.gradients) }, leaves: plan.microBatches)
        }
        let loss = GradientTree.sum(blocks: blocks.map { ($0.microBatches, [$0.lossSum]) }, leaves: plan.microBatches)[0]
        return StepSums(gradientSum: gradient, lossSum: loss)
    }

    public func finish(summary: RunSummary) {}
}
