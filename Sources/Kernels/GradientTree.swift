/// The fixed binary tree that sums per-micro-batch gradients (DESIGN.md, "Determinism across worker counts").
///
/// Over micro-batch indices 0..<K, node (level l, index i) covers the aligned block [i·2ˡ, (i+1)·2ˡ) ∩ [0, K);
/// its sum is left + right (right omitted when empty). Any holder of an aligned block can send its partial sum,
/// and every split of the work into such blocks gives the same bits as one process summing all K.
public enum GradientTree {
    /// The sum of `leaves` (one buffer per micro-batch, equal lengths) combined in the tree's order.
    public static func sum(_ leaves: [[Float]]) -> [Float] {
        precondition(!leaves.isEmpty, "nothing to reduce")
        var width = 1
        while width < leaves.count { width *= 2 }
        return sum(leaves, from: 0, width: width)
    }

    /// The sum of the aligned block [start, start + width) ∩ [0, leaves.count).
    static func sum(_ leaves: [[Float]], from start: Int, width: Int) -> [Float] {
        if width == 1 { return leaves[start] }
        let half = width / 2
        var left = sum(leaves, from: start, width: half)
        guard start + half < leaves.count else { return left }
        let right = sum(leaves, from: start + half, width: half)
        tk_add_inplace(Int64(left.count), right, &left)
        return left
    }

    /// The maximal aligned blocks covering `range` of micro-batch indices, in order: what a worker holding
    /// that range sends.
    public static func alignedBlocks(_ range: Range<Int>) -> [Range<Int>] {
        var blocks: [Range<Int>] = []
        var start = range.lowerBound
        while start < range.upperBound {
            var width = 1
            while start % (width * 2) == 0 && start + width * 2 <= range.upperBound { width *= 2 }
            blocks.append(start..<(start + width))
            start += width
        }
        return blocks
    }
}
