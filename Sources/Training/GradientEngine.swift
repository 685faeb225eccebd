import Foundation
import Autograd
import Data
import Kernels
import NN

/// Σ over the samples of each sample's loss, from the model's output: cross-entropy of logits [samples, classes]
/// against one label per sample, or, for a language model's logits [samples, T, vocabulary] against the next
/// token at every position, each sample's mean over its T positions (so that dividing by the global batch gives
/// the mean over all positions, PyTorch's F.cross_entropy of the flattened logits).
public func summedLoss(_ output: Tensor, labels: [Int32]) throws -> Tensor {
    guard output.rank == 3 else { return try output.crossEntropy(labels: labels, reduction: .sum) }
    let positions = output.shape[1]
    return try output.reshaped([-1, output.shape[2]]).crossEntropy(labels: labels, reduction: .sum) * (1 / Float(positions))
}

/// The summed gradient and loss of one aligned block of micro-batches.
public struct GradientBlock: Sendable {
    /// Micro-batch indices covered (an aligned dyadic block).
    public var microBatches: Range<Int>
    /// Σ over the block's samples of ∂ℓ/∂θ, one array per parameter tensor in canonical order (zeros for a
    /// frozen one).
    public var gradients: [[Float]]
    /// The same, flat.
    public var gradientSum: [Float] { gradients.flatMap { $0 } }
    /// Σ over the block's samples of ℓ (cross-entropy).
    public var lossSum: Float
}

/// Forward and backward passes that produce gradient sums per aligned block of micro-batches.
///
/// A block of micro-batches runs as one pass over all its samples, with `SampleSegments` set to the block's
/// size: each reduction over samples is summed per micro-batch and combined in the fixed `GradientTree`, so the
/// result is the same bits as one pass per micro-batch. Blocks run in parallel, one per thread, each on a
/// replica of the model (shared parameter values, its own gradients); the kernels inside a pass then stay on
/// that thread. Halving aligned blocks until every thread has one keeps them aligned, so the caller's tree
/// gives the same bits for any thread count or split of the work among workers.
public final class GradientEngine {
    public let model: Module
    private let replicas: [Module]
    /// The inputs of the passes' matrix products (`MatmulPrecision`).
    public let precision: MatmulPrecision

    let trace: Trace?

    /// `threads` replicas of `model` run blocks in parallel; spans go to `trace`.
    public init(model: Module, threads: Int, precision: MatmulPrecision = .float32, trace: Trace? = nil) {
        self.model = model
        self.precision = precision
        self.trace = trace
        replicas = (0..<max(1, threads)).map { _ in model.replica() }
    }

    /// Gradient and loss sums over `microBatches` as aligned blocks; `inputs(j)` gives micro-batch j's samples.
    public func blockSums(
        _ microBatches: Range<Int>, dropoutSeed: UInt64 = 0, inputs: (Int) -> Batch
    ) throws -> [GradientBlock] {
        try run(microBatches) { block, replica in try self.pass(block, on: replica, dropoutSeed: dropoutSeed, inputs: inputs) }
    }

    /// One piece of a block's result, handed on as soon as it exists: each parameter tensor's gradient sum as
    /// backward finishes it, the loss sum (`parameter == nil`) just before the first of them.
    public struct Piece {
        public var microBatches: Range<Int>
        /// Index in canonical parameter order; nil for the loss sum.
        public var parameter: Int?
        public var values: [Float]

        public init(microBatches: Range<Int>, parameter: Int?, values: [Float]) {
            self.microBatches = microBatches
            self.parameter = parameter
            self.values = values
        }
    }

    /// The same sums as `blockSums`, at the weights `feed` delivers, handed to `emit` piece by piece while the
    /// passes run (from the threads running them, so `emit` must be thread-safe). Each top-level layer of a
    /// `Sequential` model starts its forward as soon as its own tensors are in the feed. Frozen parameters'
    /// zeros come after backward.
    public func streamBlockSums(
        _ microBatches: Range<Int>, weights feed: WeightFeed, dropoutSeed: UInt64 = 0, inputs: (Int) -> Batch,
        emit: (Piece) -> Void
    ) throws {
        try withoutActuallyEscaping(emit) { emit in
            _ = try run(microBatches, sharingValues: false) { block, replica in
                try self.pass(block, on: replica, dropoutSeed: dropoutSeed, inputs: inputs, feed: feed, emit: emit)
            }
        }
    }

    /// `body(block, replica)` for the aligned blocks of `microBatches` (the maximal ones, halved until each
    /// thread has one), in parallel, one replica per thread; the results in block order.
    private func run<T>(
        _ microBatches: Range<Int>, sharingValues: Bool = true, _ body: (Range<Int>, Module) throws -> T
    ) throws -> [T] {
        var blocks = GradientTree.alignedBlocks(microBatches)
        while blocks.count < replicas.count, let widest = blocks.indices.max(by: { blocks[$0].count < blocks[$1].count }),
              blocks[widest].count > 1 {
            let block = blocks[widest], half = block.lowerBound + block.count / 2
            blocks.replaceSubrange(widest...widest, with: [block.lowerBound..<half, half..<block.upperBound])
        }
        let lanes = min(replicas.count, blocks.count)
        if sharingValues { for replica in replicas[..<lanes] { replica.shareValues(from: model) } }
        var results = [Result<T, Error>?](repeating: nil, count: blocks.count)
        results.withUnsafeMutableBufferPointer { slots in
            Parallel.withThreads(replicas.count) { Parallel.forEach(lanes) { lane in
                for index in stride(from: lane, to: blocks.count, by: lanes) {
                    slots[index] = Result { try body(blocks[index], replicas[lane]) }
                }
            } }
        }
        return try results.map { try $0!.get() }
    }

    /// Forward and backward of one block on `replica`; with `emit`, pieces leave as they are ready, and with
    /// `feed` the replica takes its weights from it layer by layer. Dropout draws its masks from `dropoutSeed` and
    /// each sample's position in the step, so they do not depend on the block.
    @discardableResult
    private func pass(
        _ block: Range<Int>, on replica: Module, dropoutSeed: UInt64, inputs: (Int) -> Batch,
        feed: WeightFeed? = nil, emit: ((Piece) -> Void)? = nil
    ) throws -> GradientBlock {
        var x: [Float] = [], labels: [Int32] = [], samples = 0
        trace.span("batch", "compute") {
            for index in block {
                let batch = inputs(index)
                x += batch.inputs
                labels += batch.labels
                samples += batch.samples
            }
        }
        let firstSample = block.lowerBound * (samples / max(1, block.count))
        let context = PassContext(segments: block.count, dropout: .init(seed: dropoutSeed, firstSample: firstSample), precision: precision)
        return try context.apply {
            replica.zeroGrad()
            let loss = try trace.span("forward", "compute") {
                let input = Tensor(shape: [samples, x.count / max(samples, 1)], storage: x)
                guard let feed else { return try summedLoss(replica(input), labels: labels) }
                return try summedLoss(forward(input, on: replica, feed: feed), labels: labels)
            }
            guard let emit else {
                trace.span("backward", "compute") { loss.backward() }
                let gradients = replica.parameters.map { $0.grad?.storage ?? [Float](repeating: 0, count: $0.value.count) }
                return GradientBlock(microBatches: block, gradients: gradients, lossSum: loss.item)
            }
            // The loss sum leaves with the first gradient (one message instead of two when they can share one).
            let parameters = replica.parameters
            var sent = [Bool](repeating: false, count: parameters.count), lossSent = false
            func emitLoss() {
                if !lossSent { emit(Piece(microBatches: block, parameter: nil, values: [loss.item])) }
                lossSent = true
            }
            trace.span("backward", "compute") {
                loss.backward(reporting: parameters.map(\.value)) { index, gradient in
                    emitLoss()
                    sent[index] = true
                    emit(Piece(microBatches: block, parameter: index, values: gradient))
                }
            }
            emitLoss()
            for (index, parameter) in parameters.enumerated() where !sent[index] {
                emit(Piece(microBatches: block, parameter: index, values: [Float](repeating: 0, count: parameter.value.count)))
            }
            return GradientBlock(microBatches: block, gradients: [], lossSum: loss.item)
        }
    }
}

extension GradientEngine {
    /// `replica`'s forward pass, each top-level layer of a `Sequential` once its tensors have arrived in `feed`
    /// (any other model once all have).
    func forward(_ input: Tensor, on replica: Module, feed: WeightFeed) throws -> Tensor {
        let parameters = replica.parameters
        func take(_ indices: Range<Int>) throws {
            for index in indices {
                let values = try feed.tensor(index)
                parameters[index].value.withMutableStorage { $0 = values }  // shared, not copied
            }
        }
        guard let sequential = replica as? Sequential else {
            try take(parameters.indices)
            return replica(input)
        }
        var offsets = [0]
        for layer in sequential.layers { offsets.append(offsets.last! + layer.namedParameters.count) }
        return try sequential.forward(input) { layer in
            try trace.span("wait_weights", "communication") { try take(offsets[layer]..<offsets[layer + 1]) }
        }
    }
}
