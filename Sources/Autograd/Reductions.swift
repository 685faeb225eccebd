import Kernels

extension Tensor {
    /// Splits the shape around `dim` into (outer, size, inner) so that element [o, j, i] is at (o·size + j)·inner + i.
    func split(around dim: Int) -> (outer: Int, size: Int, inner: Int) {
        let outer = shape[..<dim].reduce(1, *)
        let inner = shape[(dim + 1)...].reduce(1, *)
        return (outer, shape[dim], inner)
    }

    func normalized(_ dim: Int) -> Int {
        let axis = dim < 0 ? dim + rank : dim
        precondition(axis >= 0 && axis < rank, "dimension \(dim) is out of range for shape \(shape)")
        return axis
    }

    /// y = Σ x over every element (a scalar, shape []). dx = dy broadcast to x's shape.
    public func sum() -> Tensor {
        var total: Float = 0
        for value in storage { total += value }
        let n = count
        return Tensor.recorded(shape: [], storage: [total], inputs: [self]) { upstream, _ in
            [[Float](repeating: upstream[0], count: n)]
        }
    }

    /// y = Σ x / n. dx = dy / n.
    public func mean() -> Tensor { sum() * (1 / Float(count)) }

    /// Sum along `dim` (negative counts from the end), which disappears from the shape. dx[o, j, i] = dy[o, i].
    public func sum(dim: Int) -> Tensor {
        let axis = normalized(dim)
        let (outer, size, inner) = split(around: axis)
        let x = storage
        var out = [Float](repeating: 0, count: outer * inner)
        for o in 0..<outer {
            for j in 0..<size {
                for i in 0..<inner { out[o * inner + i] += x[(o * size + j) * inner + i] }
            }
        }
        var reduced = shape
        reduced.remove(at: axis)
        return Tensor.recorded(shape: reduced, storage: out, inputs: [self]) { upstream, _ in
            var grad = [Float](repeating: 0, count: outer * size * inner)
            for o in 0..<outer {
                for j in 0..<size {
                    for i in 0..<inner { grad[(o * size + j) * inner + i] = upstream[o * inner + i] }
                }
            }
            return [grad]
        }
    }

    /// Mean along `dim`: sum(dim) / size.
    public func mean(dim: Int) -> Tensor { sum(dim: dim) * (1 / Float(shape[normalized(dim)])) }
}
