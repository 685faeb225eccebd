import Kernels

/// Result of global-norm clipping.
public struct ClipResult: Sendable, Equatable {
    /// ‖g‖ before clipping: sqrt(Σ over tensors of ‖g_t‖²).
    public var totalNorm: Float
    /// Whether the gradients were scaled down.
    public var clipped: Bool

    public init(totalNorm: Float, clipped: Bool) {
        self.totalNorm = totalNorm
        self.clipped = clipped
    }
}

/// ‖g_t‖₂ of each tensor in `tensors` (ranges of the flat buffer), summed in Double in a fixed order.
public func tensorNorms(_ gradients: [Float], tensors: [Range<Int>]) -> [Float] {
    gradients.withUnsafeBufferPointer { values in
        perTensorNorms(tensors) { Reductions.sumOfSquares(UnsafeBufferPointer(rebasing: values[$0])) }
    }
}

/// Divides `gradients` by `divisor` in place and returns each tensor's norm of the result, in one pass over the
/// values: the same bits as dividing and then calling `tensorNorms`.
public func tensorNorms(dividing gradients: inout [Float], by divisor: Float, tensors: [Range<Int>]) -> [Float] {
    gradients.withUnsafeMutableBufferPointer { buffer in
        let values = buffer
        return perTensorNorms(tensors) {
            Reductions.divideAndSumOfSquares(UnsafeMutableBufferPointer(rebasing: values[$0]), by: divisor)
        }
    }
}

/// √(sumOfSquares(range)) for every range in `tensors`, a tensor per thread.
private func perTensorNorms(_ tensors: [Range<Int>], _ sumOfSquares: (Range<Int>) -> Double) -> [Float] {
    var norms = [Float](repeating: 0, count: tensors.count)
    norms.withUnsafeMutableBufferPointer { out in
        Parallel.forEach(tensors.count) { index in
            out[index] = Float(sumOfSquares(tensors[index]).squareRoot())
        }
    }
    return norms
}

/// ‖(‖g_1‖, …, ‖g_T‖)‖₂, as PyTorch's clip_grad_norm_ computes it, from the per-tensor norms.
public func globalGradientNorm(tensorNorms norms: [Float]) -> Float {
    Float(norms.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot())
}

/// The global norm over the tensors in `tensors` (ranges of the flat buffer).
public func globalGradientNorm(_ gradients: [Float], tensors: [Range<Int>]) -> Float {
    globalGradientNorm(tensorNorms: tensorNorms(gradients, tensors: tensors))
}

/// torch.nn.utils.clip_grad_norm_: coefficient = min(1, maxNorm / (total + 1e-6)), every gradient × coefficient.
/// `norms` may pass the per-tensor norms when the caller has them already.
@discardableResult
public func clipGradientNorm(_ gradients: inout [Float], tensors: [Range<Int>], maxNorm: Float, norms: [Float]? = nil) -> ClipResult {
    let total = globalGradientNorm(tensorNorms: norms ?? tensorNorms(gradients, tensors: tensors))
    let coefficient = min(1, maxNorm / (total + 1e-6))
    if coefficient < 1 {
        gradients.withUnsafeMutableBufferPointer { g in
            for range in tensors { Elementwise.scale(UnsafeMutableBufferPointer(rebasing: g[range]), by: coefficient) }
        }
    }
    return ClipResult(totalNorm: total, clipped: coefficient < 1)
}
