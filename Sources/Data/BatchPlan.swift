import Random

/// Which samples every step and micro-batch uses: a fixed function of (seed, step), so any process (a worker,
/// a resumed coordinator) finds the same micro-batch j of step s without shared state.
///
/// Each epoch is a Fisher–Yates permutation from the seed and the epoch number; the last partial batch is dropped
/// (as PyTorch's DataLoader with drop_last). The global batch is cut into `microBatches` equal micro-batches.
public struct BatchPlan: Sendable, Equatable {
    public let seed: UInt64
    public let datasetSize: Int
    public let batchSize: Int
    public let microBatches: Int

    public init(seed: UInt64, datasetSize: Int, batchSize: Int, microBatches: Int) {
        precondition(batchSize > 0 && microBatches > 0 && batchSize % microBatches == 0)
        precondition(datasetSize >= batchSize, "dataset smaller than one batch")
        self.seed = seed
        self.datasetSize = datasetSize
        self.batchSize = batchSize
        self.microBatches = microBatches
    }

    public var stepsPerEpoch: Int { datasetSize / batchSize }
    public var microBatchSize: Int { batchSize / microBatches }

    public func permutation(epoch: Int) -> [Int] {
        var rng = Xoshiro256(seed: seed, stream: 0x5EED_0000 + UInt64(epoch))
        return rng.permutation(datasetSize)
    }

    /// The samples of global step `step` (0-based), in micro-batch order.
    public func samples(step: Int, permutation: [Int]? = nil) -> ArraySlice<Int> {
        let epoch = step / stepsPerEpoch
        let order = permutation ?? self.permutation(epoch: epoch)
        let start = (step % stepsPerEpoch) * batchSize
        return order[start..<(start + batchSize)]
    }

    /// The samples of micro-batch `index` within a step's samples.
    public func microBatch(_ index: Int, of stepSamples: ArraySlice<Int>) -> ArraySlice<Int> {
        let start = stepSamples.startIndex + index * microBatchSize
        return stepSamples[start..<(start + microBatchSize)]
    }
}
