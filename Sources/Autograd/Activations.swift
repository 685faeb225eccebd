import Kernels

extension Tensor {
    /// Unary op through a kernel pair: `forward(x, &y)` and `backward(saved, dy, &dx)`, where `saved` is the input
    /// (`savesInput`) or the output.
    private func unary(
        savesInput: Bool,
        _ forward: (_ x: [Float], _ y: inout [Float]) -> Void,
        _ backward: @escaping (_ saved: [Float], _ dy: [Float], _ dx: inout [Float]) -> Void
    ) -> Tensor {
        let input = storage
        var out = uninitializedFloats(count)
        forward(input, &out)
        let saved = savesInput ? input : out
        return Tensor.recorded(shape: shape, storage: out, inputs: [self]) { upstream, _ in
            var grad = uninitializedFloats(saved.count)
            backward(saved, upstream, &grad)
            return [grad]
        }
    }

    /// y = max(x, 0). dy/dx = 1 where x > 0, else 0: the upstream gradient passes only where the unit was active.
    public func relu() -> Tensor { unary(savesInput: true, Activations.relu, Activations.reluBackward) }

    /// y = tanh(x). dy/dx = 1 − y².
    public func tanh() -> Tensor { unary(savesInput: false, Activations.tanh, Activations.tanhBackward) }

    /// y = σ(x) = 1 / (1 + e^−x). dy/dx = y(1 − y).
    public func sigmoid() -> Tensor { unary(savesInput: false, Activations.sigmoid, Activations.sigmoidBackward) }

    /// GELU as torch.nn.functional.gelu: `.none` is exact, y = x·Φ(x) = ½x(1 + erf(x/√2)), dy/dx = Φ(x) + x·φ(x);
    /// `.tanh` is y = ½x(1 + tanh(√(2/π)(x + 0.044715x³))), dy/dx = ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 0.134145x²).
    public func gelu(approximate: GELUApproximation = .none) -> Tensor {
        switch approximate {
        case .none: return unary(savesInput: true, Activations.geluErf, Activations.geluErfBackward)
        case .tanh: return unary(savesInput: true, Activations.geluTanh, Activations.geluTanhBackward)
        }
    }

    /// Rows of the last dimension and their length, for row-wise kernels.
    var rowsAndColumns: (rows: Int, columns: Int) {
        let columns = shape.last ?? 1
        return (columns == 0 ? 0 : count / columns, columns)
    }

    /// softmax over the last dimension: y = e^(x − max) / Σ e^(x − max). dx = y ⊙ (dy − Σ dy·y).
    public func softmax() -> Tensor {
        let (rows, columns) = rowsAndColumns
        var out = uninitializedFloats(count)
        Softmax.forward(storage, rows: rows, columns: columns, into: &out)
        return Tensor.recorded(shape: shape, storage: out, inputs: [self]) { upstream, _ in
            var grad = uninitializedFloats(out.count)
            Softmax.backward(output: out, upstream: upstream, rows: rows, columns: columns, into: &grad)
            return [grad]
        }
    }

    /// log-softmax over the last dimension: y = x − max − log Σ e^(x − max). dx = dy − softmax(x) · Σ dy.
    public func logSoftmax() -> Tensor {
        let (rows, columns) = rowsAndColumns
        var out = uninitializedFloats(count)
        LogSoftmax.forward(storage, rows: rows, columns: columns, into: &out)
        return Tensor.recorded(shape: shape, storage: out, inputs: [self]) { upstream, _ in
            var grad = uninitializedFloats(out.count)
            LogSoftmax.backward(output: out, upstream: upstream, rows: rows, columns: columns, into: &grad)
            return [grad]
        }
    }
}

/// PyTorch's `approximate` argument of GELU.
public enum GELUApproximation: String, Sendable, CaseIterable {
    case none, tanh
}
