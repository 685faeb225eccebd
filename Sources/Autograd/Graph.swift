import Foundation
import Kernels

/// One recorded operation (or a leaf that wants a gradient) in the computational graph.
///
/// `backward` receives dL/d(output) and which inputs need a gradient, and returns dL/d(input i) for each entry
/// of `inputs` (nil where none is needed). Leaves keep the gradient accumulated into them with `+=`.
final class Node {
    let inputs: [Node?]
    let backward: BackwardRule?
    /// The accumulated gradient of a leaf, or of an interior node asked to retain it.
    var grad: [Float]?
    /// Set by `retainGrad()`: keep this interior node's gradient after backward.
    var retainsGrad = false

    var isLeaf: Bool { backward == nil }

    /// A leaf: a tensor that wants its gradient.
    init() {
        self.inputs = []
        self.backward = nil
    }

    init(inputs: [Node?], backward: @escaping BackwardRule) {
        self.inputs = inputs
        self.backward = backward
    }
}

/// dL/d(inputs) from dL/d(output) and the inputs that need a gradient.
typealias BackwardRule = (_ upstream: [Float], _ needsGrad: [Bool]) -> [[Float]?]

/// Whether operations record the graph on the current thread (`withNoGrad` turns it off, like
/// `torch.no_grad()`).
public enum GradMode {
    static let disabled = ThreadLocalInt()

    public static var isEnabled: Bool { disabled.value == 0 }
}

/// Runs `body` without recording a graph: results need no gradient and keep no inputs alive.
public func withNoGrad<R>(_ body: () throws -> R) rethrows -> R {
    try GradMode.disabled.with(1, body)
}

extension Tensor {
    /// Records the result of an operation: a tensor whose node points at the inputs that need gradients.
    /// Without grad mode or without such inputs the result is a constant and `backward` is never kept.
    static func recorded(
        shape: [Int], storage: [Float], inputs: [Tensor], backward: @escaping BackwardRule
    ) -> Tensor {
        var result = Tensor(shape: shape, storage: storage)
        let nodes = inputs.map(\.node)
        if GradMode.isEnabled, nodes.contains(where: { $0 != nil }) {
            result.node = Node(inputs: nodes, backward: backward)
        }
        return result
    }

    /// Backpropagates from this scalar: dL/dL = 1, then upstream × local gradient at every node in reverse
    /// topological order. Leaves accumulate (`+=`) into `grad`, as PyTorch does until `zeroGrad()`.
    public func backward() {
        precondition(count == 1, "backward() needs a scalar loss, got shape \(shape)")
        backward(seed: [1])
    }

    /// Backpropagates an upstream gradient of this tensor's shape (`sum(self * upstream)` as the loss).
    public func backward(seed upstream: [Float]) {
        backward(seed: upstream, reporting: [], { _, _ in })
    }

    /// Backpropagates from this scalar and calls `ready(i, gradient)` as soon as the gradient of `leaves[i]` is
    /// final (right after the backward of its last consumer), so that it can leave while backward goes on.
    /// The gradient passed is what this backward adds to the leaf.
    public func backward(reporting leaves: [Tensor], _ ready: (Int, [Float]) -> Void) {
        precondition(count == 1, "backward() needs a scalar loss, got shape \(shape)")
        backward(seed: [1], reporting: leaves, ready)
    }

    private func backward(seed upstream: [Float], reporting leaves: [Tensor], _ ready: (Int, [Float]) -> Void) {
        precondition(upstream.count == count, "upstream gradient has \(upstream.count) values, tensor \(count)")
        guard let root = node else { return }
        var order: [Node] = []
        var visited = Set<ObjectIdentifier>()
        // Iterative depth-first post-order, so deep graphs cannot overflow the stack. Leaves are pushed before the
        // other inputs, so they come right after their consumer in reverse order (a leaf's gradient is ready as
        // early as it can be); the order among the other nodes, and so every sum's order, is unchanged.
        var stack: [(Node, Bool)] = [(root, false)]
        while let (current, expanded) = stack.popLast() {
            if expanded { order.append(current); continue }
            guard visited.insert(ObjectIdentifier(current)).inserted else { continue }
            stack.append((current, true))
            for isLeafPass in [true, false] {
                for case let input? in current.inputs
                where input.isLeaf == isLeafPass && !visited.contains(ObjectIdentifier(input)) {
                    stack.append((input, false))
                }
            }
        }
        var reported: [ObjectIdentifier: Int] = [:]
        for (index, leaf) in leaves.enumerated() {
            if let node = leaf.node { reported[ObjectIdentifier(node)] = index }
        }
        var pending: [ObjectIdentifier: [Float]] = [ObjectIdentifier(root): upstream]
        for current in order.reversed() {
            guard let upstream = pending.removeValue(forKey: ObjectIdentifier(current)) else { continue }
            if current.isLeaf || current.retainsGrad { accumulate(upstream, into: &current.grad) }
            if let index = reported[ObjectIdentifier(current)] { ready(index, upstream) }
            guard let backward = current.backward else { continue }
            let inputGrads = backward(upstream, current.inputs.map { $0 != nil })
            for (input, grad) in zip(current.inputs, inputGrads) {
                guard let input, let grad else { continue }
                accumulate(grad, into: &pending[ObjectIdentifier(input)])
            }
        }
    }
}

/// slot += gradient (or slot = gradient when empty).
private func accumulate(_ gradient: [Float], into slot: inout [Float]?) {
    if slot == nil {
        slot = gradient
    } else {
        Elementwise.add(gradient, to: &slot!)
    }
}
