import CKernels

/// The fixed binary tree that sums per-micro-batch gradients, so that the weights are the same bits for any number
/// of workers and threads (README, "How it works": Determinism).
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
        let count = blocks.first?.sum.count ?? 0
        return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            sum(blocks: blocks, leaves: leaves, into: buffer)
            initialized = count
        }
    }

    /// The same, written to `destination` (as many values as each block): the root's addition writes there
    /// directly, so a sum of two halves passes over memory once.
    public static func sum(blocks: [(range: Range<Int>, sum: [Float])], leaves: Int,
                           into destination: UnsafeMutableBufferPointer<Float>) {
        var width = 1
        while width < leaves { width *= 2 }
        func block(_ start: Int, _ size: Int) -> [Float]? {
            blocks.first(where: { $0.range == start..<min(start + size, leaves) })?.sum
        }
        /// Node (start, size) into `out`: the block that covers it, or left + right (right omitted when empty).
        func node(_ start: Int, _ size: Int, into out: UnsafeMutableBufferPointer<Float>) {
            if let values = block(start, size) {
                precondition(values.count == out.count, "blocks differ in length")
                values.withUnsafeBufferPointer { out.baseAddress!.update(from: $0.baseAddress!, count: out.count) }
                return
            }
            precondition(size > 1, "blocks do not tile 0..<\(leaves) with aligned ranges")
            let half = size / 2
            guard start + half < leaves else { return node(start, half, into: out) }
            let left = block(start, half) ?? computed(start, half), right = block(start + half, half) ?? computed(start + half, half)
            tk_add(Int64(out.count), left, right, out.baseAddress!)
        }
        func computed(_ start: Int, _ size: Int) -> [Float] {
            [Float](unsafeUninitializedCapacity: destination.count) { buffer, initialized in
                node(start, size, into: buffer)
                initialized = destination.count
            }
        }
        guard !destination.isEmpty else { return }
        node(0, width, into: destination)
    }

    /// The tree sums of blocks that each hold one array per tensor, concatenated: tensor t's values are
    /// `sum(blocks: blocks.map { ($0.range, $0.tensors[t]) }, leaves:)`.
    public static func sum(tensors blocks: [(range: Range<Int>, tensors: [[Float]])], leaves: Int) -> [Float] {
        guard let tensorCount = blocks.first?.tensors.count else { return [] }
        return sum(perTensor: (0..<tensorCount).map { tensor in blocks.map { ($0.range, $0.tensors[tensor]) } }, leaves: leaves)
    }

    /// Each tensor's tree sum (`perTensor[t]` holds its blocks), concatenated in tensor order; tensors are spread
    /// over threads.
    public static func sum(perTensor: [[(range: Range<Int>, sum: [Float])]], leaves: Int) -> [Float] {
        var offsets = [0]
        for blocks in perTensor { offsets.append(offsets.last! + (blocks.first?.sum.count ?? 0)) }
        let total = offsets.last!
        return [Float](unsafeUninitializedCapacity: total) { buffer, initialized in
            let destination = buffer
            Parallel.forEach(perTensor.count) { tensor in
                sum(blocks: perTensor[tensor], leaves: leaves,
                    into: UnsafeMutableBufferPointer(rebasing: destination[offsets[tensor]..<offsets[tensor + 1]]))
            }
            initialized = total
        }
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
