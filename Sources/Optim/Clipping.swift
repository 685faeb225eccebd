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

/// ‖(‖g_1‖, …, ‖g_T‖)‖₂ over the tensors in `tensors` (ranges of the flat buffer), as PyTorch's
/// clip_grad_norm_ computes it. Sums of squares run in Double in a fixed order, the same on every machine.
public func globalGradientNorm(_ gradients: [Float], tensors: [Range<Int>]) -> Float {
    var sumOfSquares: Double = 0
    gradients.withUnsafeBufferPointer { g in
        for range in tensors {
            let tensorNorm = Float(tk_sum_of_squares(Int64(range.count), g.baseAddress! + range.lowerBound).squareRoot())
            sumOfSquares += Double(tensorNorm) * Double(tensorNorm)
        }
    }
    return Float(sumOfSquares.squareRoot())
}

/// torch.nn.utils.clip_grad_norm_: coefficient = min(1, maxNorm / (total + 1e-6)), every gradient × coefficient.
@discardableResult
public func clipGradientNorm(_ gradients: inout [Float], tensors: [Range<Int>], maxNorm: Float) -> ClipResult {
    let total = globalGradientNorm(gradients, tensors: tensors)
    let coefficient = min(1, maxNorm / (total + 1e-6))
    if coefficient < 1 {
        gradients.withUnsafeMutableBufferPointer { g in
            for range in tensors { tk_scale_inplace(Int64(range.count), coefficient, g.baseAddress! + range.lowerBound) }
        }
    }
    return ClipResult(totalNorm: total, clipped: coefficient < 1)
}
