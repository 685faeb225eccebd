import Autograd
import Data
import Kernels
import NN

/// Builds the model a config describes, initialised from the job's seed.
public func makeModel(_ model: JobConfig.ModelSection, seed: UInt64) -> Sequential {
    makeMLP(sizes: model.sizes, activation: model.activation, residual: model.residual, seed: seed)
}

/// The summed gradient and loss of one aligned block of micro-batches.
public struct GradientBlock: Sendable {
    /// Micro-batch indices covered (an aligned dyadic block).
    public var microBatches: Range<Int>
    /// Σ over the block's samples of ∂ℓ/∂θ, flat in canonical parameter order.
    public var gradientSum: [Float]
    /// Σ over the block's samples of ℓ (cross-entropy).
    public var lossSum: Float
}

/// Forward and backward passes over micro-batches, each into its own gradient buffer, spread over threads.
///
/// One model replica per thread shares the master's parameter values and keeps its own gradients. Every
/// micro-batch is one forward and backward pass with summed cross-entropy; the per-micro-batch sums are combined
/// in the fixed `GradientTree`, so the result is the same bits for any thread count or split of the work.
public final class GradientEngine {
    public let model: Module
    private var replicas: [Module]

    public init(model: Module, threads: Int) {
        self.model = model
        replicas = (0..<max(1, threads)).map { _ in model.replica() }
    }

    /// Gradient and loss sums of each micro-batch in `microBatches`, in order.
    public func microBatchSums(
        _ microBatches: Range<Int>, inputs: (Int) -> (inputs: [Float], labels: [Int32])
    ) throws -> [(gradient: [Float], loss: Float)] {
        let features = (model.parameters.first?.shape.last) ?? 0
        let lanes = min(replicas.count, microBatches.count)
        for replica in replicas[..<lanes] { replica.shareValues(from: model) }
        var results = [(gradient: [Float], loss: Float)?](repeating: nil, count: microBatches.count)
        var failure: Error?
        let lock = NSLockLike()
        results.withUnsafeMutableBufferPointer { slots in
            Parallel.forEach(lanes) { lane in
                let replica = replicas[lane]
                var slot = lane
                while slot < microBatches.count {
                    do {
                        let batch = inputs(microBatches.lowerBound + slot)
                        replica.zeroGrad()
                        let x = Tensor(shape: [batch.labels.count, features], storage: batch.inputs)
                        let loss = try replica(x).crossEntropy(labels: batch.labels, reduction: .sum)
                        loss.backward()
                        slots[slot] = (replica.flatGradients(), loss.item)
                    } catch {
                        lock.locked { failure = failure ?? error }
                    }
                    slot += lanes
                }
            }
        }
        if let failure { throw failure }
        return results.map { $0! }
    }

    /// The sums over `microBatches` as the maximal aligned blocks a worker holding that range sends.
    public func blockSums(
        _ microBatches: Range<Int>, inputs: (Int) -> (inputs: [Float], labels: [Int32])
    ) throws -> [GradientBlock] {
        let sums = try microBatchSums(microBatches, inputs: inputs)
        return GradientTree.alignedBlocks(microBatches).map { block in
            let leaves = block.map { sums[$0 - microBatches.lowerBound] }
            return GradientBlock(
                microBatches: block,
                gradientSum: GradientTree.sum(leaves.map(\.gradient)),
                lossSum: GradientTree.sum(leaves.map { [$0.loss] })[0])
        }
    }
}

/// A mutex for the rare error path of parallel loops.
final class NSLockLike {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func locked<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body()
    }
}

import Foundation

/// Test-set loss and accuracy of `model` (no graph recorded), in chunks spread over threads.
public func evaluate(_ model: Module, on dataset: ImageDataset, chunk: Int = 500) throws -> (loss: Float, accuracy: Double) {
    let chunks = (dataset.count + chunk - 1) / chunk
    var lossSums = [Double](repeating: 0, count: chunks)
    var correct = [Int](repeating: 0, count: chunks)
    var failure: Error?
    let lock = NSLockLike()
    lossSums.withUnsafeMutableBufferPointer { losses in
        correct.withUnsafeMutableBufferPointer { hits in
            Parallel.forEach(chunks) { index in
                withNoGrad {
                    let range = (index * chunk)..<min(dataset.count, (index + 1) * chunk)
                    let batch = dataset.batch(Array(range)[...])
                    let logits = model(Tensor(shape: [range.count, dataset.features], storage: batch.inputs))
                    do {
                        losses[index] = Double(try logits.crossEntropy(labels: batch.labels, reduction: .sum).item)
                    } catch {
                        lock.locked { failure = failure ?? error }
                    }
                    let classes = logits.shape[1]
                    for row in 0..<range.count {
                        let scores = logits.storage[(row * classes)..<((row + 1) * classes)]
                        let predicted = scores.indices.max { scores[$0] < scores[$1] }! - row * classes
                        if predicted == Int(batch.labels[row]) { hits[index] += 1 }
                    }
                }
            }
        }
    }
    if let failure { throw failure }
    return (Float(lossSums.reduce(0, +) / Double(dataset.count)), Double(correct.reduce(0, +)) / Double(dataset.count))
}
