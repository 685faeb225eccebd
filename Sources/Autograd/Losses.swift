import Kernels

/// How a loss combines per-sample losses: their mean (PyTorch's default) or their sum. Data-parallel training
/// uses sums per micro-batch and divides once by the global batch.
public enum Reduction: String, Sendable, Codable {
    case mean, sum
}

public enum LossError: Error, CustomStringConvertible {
    case labelOutOfRange(row: Int, label: Int32, classes: Int)

    public var description: String {
        switch self {
        case let .labelOutOfRange(row, label, classes):
            return "label \(label) in row \(row) is outside 0..<\(classes)"
        }
    }
}

extension Tensor {
    /// Cross-entropy of logits [n, classes] against integer labels [n]: ℓ_r = −log softmax(x_r)[label_r], then
    /// mean or sum over rows. dlogits = (softmax(x) − onehot(label)) · dy (/ n for the mean).
    public func crossEntropy(labels: [Int32], reduction: Reduction = .mean) throws -> Tensor {
        precondition(rank == 2, "crossEntropy needs logits [n, classes], got \(shape)")
        let rows = shape[0], classes = shape[1]
        precondition(labels.count == rows, "crossEntropy: \(labels.count) labels for \(rows) rows")
        var probabilities = uninitializedFloats(count)
        var losses = uninitializedFloats(rows)
        if let badRow = CrossEntropy.forward(logits: storage, labels: labels, rows: rows, classes: classes,
                                             probabilities: &probabilities, losses: &losses) {
            throw LossError.labelOutOfRange(row: badRow, label: labels[badRow], classes: classes)
        }
        // Summed per micro-batch and combined in the tree, like every reduction over samples.
        let segments = SampleSegments.count(forRows: rows)
        let segmentRows = rows / segments
        let total = segmentedReduction(segments: segments, length: 1) { segment, sum in
            sum[0] = 0
            for row in (segment * segmentRows)..<((segment + 1) * segmentRows) { sum[0] += losses[row] }
        }[0]
        let scale: Float = reduction == .mean ? 1 / Float(rows) : 1
        return Tensor.recorded(shape: [], storage: [total * scale], inputs: [self]) { upstream, _ in
            var grad = uninitializedFloats(probabilities.count)
            CrossEntropy.backward(probabilities: probabilities, labels: labels, rows: rows, classes: classes,
                                  scale: upstream[0] * scale, into: &grad)
            return [grad]
        }
    }

    /// Mean (or summed) squared error: Σ (x − target)² [/ n]. Gradients flow to both operands.
    public func mse(_ target: Tensor, reduction: Reduction = .mean) -> Tensor {
        precondition(shape == target.shape, "mse: shapes \(shape) and \(target.shape) differ")
        let difference = self - target
        let squared = (difference * difference).sum()
        return reduction == .mean ? squared * (1 / Float(count)) : squared
    }
}
