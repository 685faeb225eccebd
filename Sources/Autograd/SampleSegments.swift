import Kernels

/// How many equal micro-batches the leading (sample) rows of the current pass hold (`PassContext.segments`).
///
/// Every reduction over samples — a weight or bias gradient, a summed loss — is computed per micro-batch and
/// combined in the fixed `GradientTree`, so one pass over K micro-batches gives the same bits as K separate
/// passes, or as workers each holding some of them. Row-wise work (forward, input gradients) is the same
/// either way. Ops capture the value when they record.
public enum SampleSegments {
    /// Micro-batches among `rows` sample rows: the pass's count when it divides them, else 1 (one segment).
    static func count(forRows rows: Int) -> Int {
        let segments = PassContext.currentSegments
        return rows % segments == 0 ? segments : 1
    }
}

/// A float array of `count` elements that the caller overwrites completely (no zero fill).
@inline(__always)
func uninitializedFloats(_ count: Int) -> [Float] {
    [Float](unsafeUninitializedCapacity: count) { _, initialized in initialized = count }
}

/// Per-segment reductions combined in the tree: `reduce(segment, buffer)` writes segment `segment`'s partial
/// result (all `length` values of `buffer`); segments run in parallel.
func segmentedReduction(segments: Int, length: Int,
                        _ reduce: (Int, UnsafeMutableBufferPointer<Float>) -> Void) -> [Float] {
    var parts = [[Float]](repeating: [], count: segments)
    parts.withUnsafeMutableBufferPointer { slots in
        Parallel.forEach(segments) { segment in
            var part = uninitializedFloats(length)
            part.withUnsafeMutableBufferPointer { reduce(segment, $0) }
            slots[segment] = part
        }
    }
    return GradientTree.sum(consuming: &parts)
}
