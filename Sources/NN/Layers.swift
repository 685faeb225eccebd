import Autograd
import Random

/// torch.nn.Linear: y = x · Wᵀ + b with W [out, in] and b [out], initialised as PyTorch does:
/// W, b ~ U(−1/√in, 1/√in) (Kaiming-uniform with a = √5).
public final class Linear: Module {
    public let weight: Parameter
    public let bias: Parameter?

    public init(weight: Parameter, bias: Parameter?) {
        self.weight = weight
        self.bias = bias
    }

    public convenience init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true, rng: inout Xoshiro256) {
        let bound = 1 / Float(inFeatures).squareRoot()
        let w = (0..<(outFeatures * inFeatures)).map { _ in rng.nextFloat(in: -bound, bound) }
        let weight = Parameter(Tensor(shape: [outFeatures, inFeatures], storage: w))
        var biasParameter: Parameter?
        if bias {
            let b = (0..<outFeatures).map { _ in rng.nextFloat(in: -bound, bound) }
            biasParameter = Parameter(Tensor(shape: [outFeatures], storage: b))
        }
        self.init(weight: weight, bias: biasParameter)
    }

    public var inFeatures: Int { weight.shape[1] }
    public var outFeatures: Int { weight.shape[0] }

    public func forward(_ input: Tensor) -> Tensor {
        input.linear(weight: weight.value, bias: bias?.value)
    }

    public var namedParameters: [(name: String, parameter: Parameter)] {
        [("weight", weight)] + (bias.map { [("bias", $0)] } ?? [])
    }

    public func replica() -> Module { Linear(weight: replicate(weight), bias: bias.map(replicate)) }

}

/// Elementwise activation without parameters.
public final class Activation: Module {
    public enum Kind: String, CaseIterable, Sendable {
        case relu, tanh, sigmoid
    }

    public let kind: Kind

    public init(_ kind: Kind) { self.kind = kind }

    public func forward(_ input: Tensor) -> Tensor {
        switch kind {
        case .relu: return input.relu()
        case .tanh: return input.tanh()
        case .sigmoid: return input.sigmoid()
        }
    }

    public var namedParameters: [(name: String, parameter: Parameter)] { [] }

    public func replica() -> Module { self }
}

/// torch.nn.Sequential: applies its layers in order; parameter names are prefixed with the layer's index.
public final class Sequential: Module {
    public let layers: [Module]

    public init(_ layers: [Module]) { self.layers = layers }

    public func forward(_ input: Tensor) -> Tensor { forward(input, beforeLayer: { _ in }) }

    /// The forward pass, calling `beforeLayer(i)` before layer i runs (a worker waits there for the layer's
    /// weights). A Linear followed by a ReLU runs as one fused op (`linearReLU`), with the same bits.
    public func forward(_ input: Tensor, beforeLayer: (Int) throws -> Void) rethrows -> Tensor {
        var output = input, index = 0
        while index < layers.count {
            try beforeLayer(index)
            if let linear = layers[index] as? Linear, index + 1 < layers.count,
               let activation = layers[index + 1] as? Activation, activation.kind == .relu {
                try beforeLayer(index + 1)
                output = output.linearReLU(weight: linear.weight.value, bias: linear.bias?.value)
                index += 2
            } else {
                output = layers[index].forward(output)
                index += 1
            }
        }
        return output
    }

    public var namedParameters: [(name: String, parameter: Parameter)] {
        layers.enumerated().flatMap { index, layer in
            layer.namedParameters.map { ("\(index).\($0.name)", $0.parameter) }
        }
    }

    public func replica() -> Module { Sequential(layers.map { $0.replica() }) }

}

/// y = x + f(x): the skip path adds the upstream gradient unchanged, so dL/dx = dL/dy · (f′(x) + 1).
/// Parameter names are f's, under `body.`.
public final class Residual: Module {
    public let body: Module

    public init(_ body: Module) { self.body = body }

    public func forward(_ input: Tensor) -> Tensor { input + body.forward(input) }

    public var namedParameters: [(name: String, parameter: Parameter)] {
        body.namedParameters.map { ("body.\($0.name)", $0.parameter) }
    }

    public func replica() -> Module { Residual(body.replica()) }

}

/// A multilayer perceptron as PyTorch's `nn.Sequential(Linear, act, Linear, act, …, Linear)`: sizes
/// [in, h1, …, out]. With `residual`, each hidden layer whose input and output widths agree becomes
/// `Residual(Sequential(Linear, act))` (names `2.body.0.weight`, …).
public func makeMLP(sizes: [Int], activation: Activation.Kind, residual: Bool = false, seed: UInt64) -> Sequential {
    precondition(sizes.count >= 2, "an MLP needs at least input and output sizes")
    var rng = Xoshiro256(seed: seed, stream: 0x1417)
    var layers: [Module] = []
    for index in 0..<(sizes.count - 1) {
        let linear = Linear(sizes[index], sizes[index + 1], rng: &rng)
        let isLast = index == sizes.count - 2
        if isLast {
            layers.append(linear)
        } else if residual && sizes[index] == sizes[index + 1] {
            layers.append(Residual(Sequential([linear, Activation(activation)])))
        } else {
            layers.append(linear)
            layers.append(Activation(activation))
        }
    }
    return Sequential(layers)
}
