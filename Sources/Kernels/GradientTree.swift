/// The fixed binary tree that sums per-micro-batch gradients (DESIGN.md, "Determinism across worker counts").
///
/// Over micro-batch indices 0..<K, node (level l, index i) covers the aligned block [i·2ˡ, (i+1)·2ˡ) ∩ [0, K);
/// its sum is left + right (right omitted when empty). Any holder of an aligned block can send its partial sum,
/// and every split of the work into such blocks gives the same bits as one process summing all K.
public enum GradientTree {
    /// The sum of `leaves` (one buffer per micro-batch, equal lengths) combined in the tree's order.
    public static func sum(_ leaves: [[Float]]) -> [Float] {
        var copy = leaves
        return sum(consuming: &copy)
    }

    /// The same sum, built in place in `leaves` (which it leaves spent): bottom-up, node (start, 2w) =
    /// node(start, w) + node(start + w, w).
    public static func sum(consuming leaves: inout [[Float]]) -> [Float] {
        precondition(!leaves.isEmpty, "nothing to reduce")
        var width = 1
        while width < leaves.count {
            for start in stride(from: 0, to: leaves.count - width, by: 2 * width) {
                let right = leaves[start + width]
                leaves[start + width] = []
                tk_add_inplace(Int64(right.count), right, &leaves[start])
            }
            width *= 2
        }
        return leaves[0]
    }

    /// Completes the tree over 0..<leaves from partial sums of aligned blocks that tile it (as workers send
    /// them): the same bits as `sum` over the individual leaves.
    public static func sum(blocks: [(range: Range<Int>, sum: [Float])], leaves: Int) -> [Float] {
        var width = 1
        while width < leaves { width *= 2 }
        func node(_ start: Int, _ size: Int) -> [Float] {
            if let block = blocks.first(where: { $0.range == start..<min(start + size, leaves) }) {
                return block.sum
            }
            precondition(size > 1, "blocks do not tile 0..<\(leaves) with aligned ranges")
            var left = node(start, size / 2)
            if start + size / 2 < leaves {
                let right = node(start + size / 2, size / 2)
                tk_add_inplace(Int64(right.count), right, &left)
            }
            return left
        }
        return node(0, width)
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
