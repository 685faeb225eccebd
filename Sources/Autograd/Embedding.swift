import Kernels

extension Tensor {
    /// torch.nn.functional.embedding with this tensor as the table [V, D]: y[p] = table[indices[p]], shape
    /// `indexShape + [D]`. dtable[v] = Σ dy[p] over the positions p with indices[p] = v (a repeated index adds up),
    /// summed per micro-batch (`SampleSegments`) in position order and combined in the gradient tree.
    public func embedding(_ indices: [Int32], shape indexShape: [Int]) -> Tensor {
        precondition(rank == 2, "embedding: the table must be [vocabulary, dim], got \(shape)")
        precondition(indexShape.reduce(1, *) == indices.count,
                     "embedding: \(indices.count) indices do not fill shape \(indexShape)")
        let vocabulary = shape[0], dim = shape[1]
        if let bad = indices.firstIndex(where: { $0 < 0 || Int($0) >= vocabulary }) {
            preconditionFailure("embedding: index \(indices[bad]) at position \(bad) is outside 0..<\(vocabulary)")
        }
        let table = storage
        var out = uninitializedFloats(indices.count * dim)
        if dim > 0 {
            table.withUnsafeBufferPointer { rows in
                out.withUnsafeMutableBufferPointer { out in
                    for (position, index) in indices.enumerated() {
                        (out.baseAddress! + position * dim).update(from: rows.baseAddress! + Int(index) * dim, count: dim)
                    }
                }
            }
        }
        let positions = indices.count
        let segments = SampleSegments.count(forRows: positions)
        let segmentPositions = positions / max(segments, 1)
        return Tensor.recorded(shape: indexShape + [dim], storage: out, inputs: [self]) { upstream, _ in
            guard positions > 0, dim > 0 else { return [[Float](repeating: 0, count: vocabulary * dim)] }
            return [upstream.withUnsafeBufferPointer { dy in
                segmentedReduction(segments: segments, length: vocabulary * dim) { segment, part in
                    part.initialize(repeating: 0)
                    for position in (segment * segmentPositions)..<((segment + 1) * segmentPositions) {
                        let row = Int(indices[position]) * dim
                        Elementwise.add(UnsafeBufferPointer(rebasing: dy[(position * dim)..<((position + 1) * dim)]),
                                        to: UnsafeMutableBufferPointer(rebasing: part[row..<(row + dim)]))
                    }
                }
            }]
        }
    }
}
