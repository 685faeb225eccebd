import Kernels

/// An n-dimensional float32 array with value semantics, row-major, that can take part in reverse-mode autograd.
///
/// Copies share their buffer until one is written (copy-on-write), and every recorded operation keeps the
/// values it needs for backward, so changing a tensor after using it never corrupts a recorded graph. Writing
/// the values of a non-leaf tensor detaches it (it becomes a constant); writing a leaf's values (an optimizer
/// step) keeps the leaf and its accumulated gradient.
public struct Tensor {
    public private(set) var shape: [Int]
    public internal(set) var storage: [Float]
    var node: Node?

    /// A constant tensor. `values.count` must equal the product of `shape` (1 for a scalar, shape []).
    public init(shape: [Int], storage: [Float]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in shape \(shape)")
        precondition(shape.reduce(1, *) == storage.count,
                     "shape \(shape) needs \(shape.reduce(1, *)) values, got \(storage.count)")
        self.shape = shape
        self.storage = storage
    }

    /// A scalar constant (shape []).
    public init(_ value: Float) { self.init(shape: [], storage: [value]) }

    public var count: Int { storage.count }
    public var rank: Int { shape.count }

    /// The single value of a one-element tensor.
    public var item: Float {
        precondition(count == 1, "item needs one element, shape is \(shape)")
        return storage[0]
    }

    // MARK: gradient tracking

    /// Whether operations on this tensor are recorded for backward.
    public var requiresGrad: Bool {
        get { node != nil }
        set {
            if newValue {
                if node == nil { node = Node() }
            } else {
                node = nil
            }
        }
    }

    /// A leaf that accumulates a gradient (a parameter or an input to differentiate against).
    public func requiringGrad() -> Tensor {
        var leaf = detached()
        leaf.requiresGrad = true
        return leaf
    }

    /// True for tensors created by the user rather than by a recorded operation.
    public var isLeaf: Bool { node?.isLeaf ?? true }

    /// The gradient accumulated into this leaf by `backward()` (or into a non-leaf after `retainGrad()`);
    /// nil before any.
    public var grad: Tensor? {
        guard let grad = node?.grad else { return nil }
        return Tensor(shape: shape, storage: grad)
    }

    /// Keeps this intermediate result's gradient after `backward()`, like PyTorch's `retain_grad()`.
    public func retainGrad() { node?.retainsGrad = true }

    /// Forgets the accumulated gradient (PyTorch's `zero_grad(set_to_none=True)`).
    public func zeroGrad() { node?.grad = nil }

    /// The same values, cut from the graph: no gradient flows through the result.
    public func detached() -> Tensor { Tensor(shape: shape, storage: storage) }

    // MARK: writing values

    /// Writes the values in place. A non-leaf tensor becomes a constant; a leaf keeps its identity and gradient.
    public mutating func withMutableStorage<R>(_ body: (inout [Float]) throws -> R) rethrows -> R {
        if let node, !node.isLeaf { self.node = nil }
        let before = storage.count
        defer { precondition(storage.count == before, "the number of values cannot change") }
        return try body(&storage)
    }

    public subscript(flat index: Int) -> Float {
        get { storage[index] }
        set { withMutableStorage { $0[index] = newValue } }
    }
}

extension Tensor: ExpressibleByFloatLiteral, ExpressibleByIntegerLiteral {
    public init(floatLiteral value: Float) { self.init(value) }
    public init(integerLiteral value: Int) { self.init(Float(value)) }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let preview = storage.prefix(8).map { "\($0)" }.joined(separator: ", ")
        return "Tensor(shape: \(shape), [\(preview)\(count > 8 ? ", …" : "")]\(requiresGrad ? ", requiresGrad" : ""))"
    }
}

extension Tensor {
    /// Takes `other`'s values (same shape) without copying them, keeping this leaf's identity and gradient.
    public mutating func shareStorage(of other: Tensor) {
        precondition(shape == other.shape, "shapes \(shape) and \(other.shape) differ")
        if let node, !node.isLeaf { self.node = nil }
        storage = other.storage
    }
}
