import Kernels

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
        let a = min(normalized(dim0), normalized(dim1)), b = max(normalized(dim0), normalized(dim1))
        guard a != b else { return self }
        var newShape = shape
        newShape.swapAt(a, b)
        let oldShape = shape
        let out = Tensor.permute(storage, shape: oldShape, swapping: a, b)
        return Tensor.recorded(shape: newShape, storage: out, inputs: [self]) { upstream, _ in
            [Tensor.permute(upstream, shape: newShape, swapping: a, b)]
        }
    }

    /// `values` laid out in `shape`, rewritten with dimensions a < b swapped.
    static func permute(_ values: [Float], shape: [Int], swapping a: Int, _ b: Int) -> [Float] {
        let outer = shape[..<a].reduce(1, *), mid = shape[(a + 1)..<b].reduce(1, *), inner = shape[(b + 1)...].reduce(1, *)
        var out = uninitializedFloats(values.count)
        Transpose.swapAxes(values, outer: outer, first: shape[a], middle: mid, second: shape[b], inner: inner,
                           into: &out)
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
        let x = storage, chunk = length * inner
        var out = uninitializedFloats(outer * chunk)
        copyChunks(outer, chunk, from: x, stride: size * inner, offset: start * inner, to: &out, stride: chunk, offset: 0)
        var newShape = shape
        newShape[axis] = length
        return Tensor.recorded(shape: newShape, storage: out, inputs: [self]) { upstream, _ in
            var grad = [Float](repeating: 0, count: outer * size * inner)
            copyChunks(outer, chunk, from: upstream, stride: chunk, offset: 0, to: &grad, stride: size * inner, offset: start * inner)
            return [grad]
        }
    }
}

/// Copies `count` chunks of `length` values: chunk o from source[o·sourceStride + sourceOffset] to
/// destination[o·destinationStride + destinationOffset].
func copyChunks(_ count: Int, _ length: Int, from source: [Float], stride sourceStride: Int, offset sourceOffset: Int,
                to destination: inout [Float], stride destinationStride: Int, offset destinationOffset: Int) {
    guard count > 0, length > 0 else { return }
    source.withUnsafeBufferPointer { from in
        destination.withUnsafeMutableBufferPointer { to in
            for o in 0..<count {
                (to.baseAddress! + o * destinationStride + destinationOffset)
                    .update(from: from.baseAddress! + o * sourceStride + sourceOffset, count: length)
            }
        }
    }
}
