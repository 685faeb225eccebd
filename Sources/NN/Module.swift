import Autograd

/// A trainable tensor of a module. Its value is a leaf that accumulates gradients unless the parameter is frozen.
public final class Parameter {
    public var value: Tensor

    /// A frozen parameter records no graph and gets no gradient; optimizers leave it unchanged.
    public var isFrozen: Bool {
        didSet { value.requiresGrad = !isFrozen }
    }

    public init(_ value: Tensor, frozen: Bool = false) {
        self.value = value.detached()
        self.isFrozen = frozen
        self.value.requiresGrad = !frozen
    }

    public var shape: [Int] { value.shape }
    public var grad: Tensor? { value.grad }
    public func zeroGrad() { value.zeroGrad() }
}

/// A layer or a network. Parameters are listed explicitly (no reflection) in canonical order with the names
/// PyTorch's `state_dict()` would give them.
public protocol Module: AnyObject {
    func forward(_ input: Tensor) -> Tensor
    /// (name, parameter) in canonical order, e.g. `0.weight`, `0.bias`, `2.weight`.
    var namedParameters: [(name: String, parameter: Parameter)] { get }
    /// The same architecture with parameters that share the current values (copy-on-write) but accumulate
    /// gradients of their own: one per thread when blocks of micro-batches run in parallel.
    func replica() -> Module
}

extension Module {
    public func callAsFunction(_ input: Tensor) -> Tensor { forward(input) }
    public var parameters: [Parameter] { namedParameters.map(\.parameter) }
    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.value.count } }

    public func zeroGrad() {
        for parameter in parameters { parameter.zeroGrad() }
    }
}

/// A copy of a parameter for a replica: same values, same frozen state, its own gradient.
func replicate(_ parameter: Parameter) -> Parameter {
    Parameter(parameter.value, frozen: parameter.isFrozen)
}

/// `module(input)` under activation checkpointing (`Tensor.checkpoint`): its activations are recomputed during
/// backward instead of kept. The module's trainable parameters are swapped for the checkpoint's leaves while it
/// runs, so their gradients flow through the checkpoint node, as the plain forward's would.
public func checkpointed(_ module: Module, _ input: Tensor) -> Tensor {
    let parameters = module.parameters.filter { !$0.isFrozen }
    let values = parameters.map(\.value)
    return Tensor.checkpoint(input, parameters: values) { x, leaves in
        for (parameter, leaf) in zip(parameters, leaves) { parameter.value = leaf }
        defer { for (parameter, value) in zip(parameters, values) { parameter.value = value } }
        return module.forward(x)
    }
}
