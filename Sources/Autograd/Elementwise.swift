import Kernels

/// NumPy-style broadcasting of two shapes: dimensions align from the right; a dimension of 1 (or a missing one)
/// stretches to the other's size.
struct Broadcast {
    let shape: [Int]
    /// Element strides of each operand in the output's index space (0 along stretched dimensions).
    let stridesA: [Int], stridesB: [Int]

    init?(_ a: [Int], _ b: [Int]) {
        let rank = max(a.count, b.count)
        let paddedA = Array(repeating: 1, count: rank - a.count) + a
        let paddedB = Array(repeating: 1, count: rank - b.count) + b
        var shape: [Int] = []
        for (x, y) in zip(paddedA, paddedB) {
            guard x == y || x == 1 || y == 1 else { return nil }
            shape.append(x == 1 ? y : x)
        }
        self.shape = shape
        stridesA = Broadcast.strides(paddedA)
        stridesB = Broadcast.strides(paddedB)
    }

    private static func strides(_ dims: [Int]) -> [Int] {
        var strides = [Int](repeating: 0, count: dims.count)
        var step = 1
        for axis in dims.indices.reversed() {
            strides[axis] = dims[axis] == 1 ? 0 : step
            step *= dims[axis]
        }
        return strides
    }

    /// Calls body(outputIndex, indexInA, indexInB) for every output element in row-major order.
    func forEach(_ body: (Int, Int, Int) -> Void) {
        let total = shape.reduce(1, *)
        guard total > 0 else { return }
        var position = [Int](repeating: 0, count: shape.count)
        var ia = 0, ib = 0
        for out in 0..<total {
            body(out, ia, ib)
            var axis = shape.count - 1
            while axis >= 0 {
                position[axis] += 1
                ia += stridesA[axis]
                ib += stridesB[axis]
                if position[axis] < shape[axis] { break }
                ia -= stridesA[axis] * shape[axis]
                ib -= stridesB[axis] * shape[axis]
                position[axis] = 0
                axis -= 1
            }
        }
    }
}

extension Tensor {
    /// Elementwise binary op with broadcasting. `local(a, b)` gives (∂y/∂a, ∂y/∂b) at one element; backward
    /// multiplies by the upstream gradient and sums over stretched dimensions (in output order).
    private static func broadcasting(
        _ a: Tensor, _ b: Tensor, _ name: String,
        forward: (Float, Float) -> Float, local: @escaping (Float, Float) -> (Float, Float)
    ) -> Tensor {
        guard let plan = Broadcast(a.shape, b.shape) else {
            preconditionFailure("\(name): shapes \(a.shape) and \(b.shape) do not broadcast")
        }
        let av = a.storage, bv = b.storage
        var out = [Float](repeating: 0, count: plan.shape.reduce(1, *))
        plan.forEach { o, i, j in out[o] = forward(av[i], bv[j]) }
        return recorded(shape: plan.shape, storage: out, inputs: [a, b]) { upstream, needs in
            var ga = needs[0] ? [Float](repeating: 0, count: av.count) : []
            var gb = needs[1] ? [Float](repeating: 0, count: bv.count) : []
            plan.forEach { o, i, j in
                let (da, db) = local(av[i], bv[j])
                if needs[0] { ga[i] += upstream[o] * da }
                if needs[1] { gb[j] += upstream[o] * db }
            }
            return [needs[0] ? ga : nil, needs[1] ? gb : nil]
        }
    }

    /// y = a + b (broadcast). dy/da = 1, dy/db = 1: the sum passes the upstream gradient to both unchanged,
    /// which is why a skip connection y = f(x) + x keeps gradients alive.
    public static func + (a: Tensor, b: Tensor) -> Tensor {
        if a.shape == b.shape {
            var out = a.storage
            Elementwise.add(b.storage, to: &out)
            return recorded(shape: a.shape, storage: out, inputs: [a, b]) { upstream, needs in
                [needs[0] ? upstream : nil, needs[1] ? upstream : nil]
            }
        }
        return broadcasting(a, b, "add", forward: +, local: { _, _ in (1, 1) })
    }

    /// y = a · b (broadcast). dy/da = b, dy/db = a.
    public static func * (a: Tensor, b: Tensor) -> Tensor {
        broadcasting(a, b, "mul", forward: *, local: { x, y in (y, x) })
    }

    /// y = −a. dy/da = −1.
    public static prefix func - (a: Tensor) -> Tensor {
        var out = a.storage
        Elementwise.scale(&out, by: -1)
        return recorded(shape: a.shape, storage: out, inputs: [a]) { upstream, _ in
            var grad = upstream
            Elementwise.scale(&grad, by: -1)
            return [grad]
        }
    }

    /// y = a − b (broadcast) = a + (−b).
    public static func - (a: Tensor, b: Tensor) -> Tensor { a + (-b) }

    /// y = a / b (broadcast). dy/da = 1/b, dy/db = −a/b².
    public static func / (a: Tensor, b: Tensor) -> Tensor {
        broadcasting(a, b, "div", forward: /, local: { x, y in (1 / y, -x / (y * y)) })
    }

    public static func + (a: Tensor, b: Float) -> Tensor { a + Tensor(b) }
    public static func + (a: Float, b: Tensor) -> Tensor { Tensor(a) + b }
    public static func - (a: Tensor, b: Float) -> Tensor { a + Tensor(-b) }
    public static func - (a: Float, b: Tensor) -> Tensor { Tensor(a) - b }
    public static func * (a: Tensor, b: Float) -> Tensor { a * Tensor(b) }
    public static func * (a: Float, b: Tensor) -> Tensor { Tensor(a) * b }
    public static func / (a: Tensor, b: Float) -> Tensor { a / Tensor(b) }
}
