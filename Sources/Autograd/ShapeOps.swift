extension Tensor {
    /// The same values in a new shape (one dimension may be −1, inferred). dx = dy in the old shape.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        var resolved = newShape
        if let unknown = newShape.firstIndex(of: -1) {
            let known = newShape.enumerated().filter { $0.offset != unknown }.map(\.element).reduce(1, *)
            precondition(known > 0 && count % known == 0, "cannot reshape \(shape) to \(newShape)")
            resolved[unknown] = count / known
        }
        precondition(resolved.reduce(1, *) == count, "cannot reshape \(shape) (\(count) values) to \(newShape)")
        return Tensor.recorded(shape: resolved, storage: storage, inputs: [self]) { upstream, _ in [upstream] }
    }

    /// Swaps two dimensions (negative counts from the end), copying into the new row-major order.
    /// dx = transpose(dy) with the same two dimensions.
    public func transposed(_ dim0: Int = -2, _ dim1: Int = -1) -> Tensor {
        let a = normalized(dim0), b = normalized(dim1)
        guard a != b else { return self }
        var newShape = shape
        newShape.swapAt(a, b)
        let oldShape = shape
        let out = Tensor.permute(storage, shape: oldShape, swapping: a, b)
        return Tensor.recorded(shape: newShape, storage: out, inputs: [self]) { upstream, _ in
            [Tensor.permute(upstream, shape: newShape, swapping: a, b)]
        }
    }

    /// `values` laid out in `shape`, rewritten with dimensions a and b swapped.
    static func permute(_ values: [Float], shape: [Int], swapping a: Int, _ b: Int) -> [Float] {
        var strides = [Int](repeating: 1, count: shape.count)
        for axis in stride(from: shape.count - 2, through: 0, by: -1) { strides[axis] = strides[axis + 1] * shape[axis + 1] }
        var outShape = shape
        outShape.swapAt(a, b)
        var sourceStrides = strides
        sourceStrides.swapAt(a, b)
        var out = [Float](repeating: 0, count: values.count)
        guard !values.isEmpty else { return out }
        var position = [Int](repeating: 0, count: shape.count)
        var source = 0
        for index in 0..<values.count {
            out[index] = values[source]
            var axis = outShape.count - 1
            while axis >= 0 {
                position[axis] += 1
                source += sourceStrides[axis]
                if position[axis] < outShape[axis] { break }
                source -= sourceStrides[axis] * outShape[axis]
                position[axis] = 0
                axis -= 1
            }
        }
        return out
    }
}

extension Tensor {
    /// torch.narrow: elements start..<start + length along `dim`. dx = dy in that slice, 0 elsewhere.
    public func narrowed(_ dim: Int, start: Int, length: Int) -> Tensor {
        let axis = normalized(dim)
        let (outer, size, inner) = split(around: axis)
        precondition(start >= 0 && length >= 0 && start + length <= size,
                     "narrow: \(start)..<\(start + length) is outside 0..<\(size) along dimension \(dim) of \(shape)")
        let x = storage
        var out = uninitializedFloats(outer * length * inner)
        for o in 0..<outer {
            let source = (o * size + start) * inner, destination = o * length * inner
            for i in 0..<(length * inner) { out[destination + i] = x[source + i] }
        }
        var newShape = shape
        newShape[axis] = length
        return Tensor.recorded(shape: newShape, storage: out, inputs: [self]) { upstream, _ in
            var grad = [Float](repeating: 0, count: outer * size * inner)
            for o in 0..<outer {
                let destination = (o * size + start) * inner, source = o * length * inner
                for i in 0..<(length * inner) { grad[destination + i] = upstream[source + i] }
            }
            return [grad]
        }
    }
}
