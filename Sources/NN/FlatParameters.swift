import Autograd
import Kernels

/// Where each parameter lives in one flat float32 buffer, in the model's canonical order. Optimizers,
/// checkpoints, the gradient reduction and `weights_sha256` all work on this layout.
public struct ParameterLayout: Equatable, Sendable {
    public struct Entry: Equatable, Sendable {
        public var name: String
        public var shape: [Int]
        public var offset: Int
        public var trainable: Bool
        public var count: Int { shape.reduce(1, *) }
        public var range: Range<Int> { offset..<(offset + count) }
    }

    public private(set) var entries: [Entry]
    public var totalCount: Int { entries.last.map { $0.offset + $0.count } ?? 0 }

    public init(entries: [(name: String, shape: [Int], trainable: Bool)]) {
        var offset = 0
        self.entries = entries.map { name, shape, trainable in
            defer { offset += shape.reduce(1, *) }
            return Entry(name: name, shape: shape, offset: offset, trainable: trainable)
        }
    }

    public init(_ module: Module) {
        self.init(entries: module.namedParameters.map { ($0.name, $0.parameter.shape, !$0.parameter.isFrozen) })
    }
}

extension Module {
    /// All parameter values, concatenated in canonical order.
    public func flatValues() -> [Float] {
        var flat: [Float] = []
        flat.reserveCapacity(parameterCount)
        for parameter in parameters { flat += parameter.value.storage }
        return flat
    }

    /// All gradients in canonical order; zeros where a parameter is frozen or has none yet.
    public func flatGradients() -> [Float] {
        var flat = [Float](repeating: 0, count: parameterCount)
        writeFlatGradients(into: &flat)
        return flat
    }

    /// Writes the gradients into `flat` (which must hold `parameterCount` values).
    public func writeFlatGradients(into flat: inout [Float]) {
        precondition(flat.count == parameterCount)
        var offset = 0
        for parameter in parameters {
            let n = parameter.value.count
            if let grad = parameter.value.grad {
                flat.replaceSubrange(offset..<(offset + n), with: grad.storage)
            } else {
                for i in offset..<(offset + n) { flat[i] = 0 }
            }
            offset += n
        }
    }

    /// Sets every parameter's values from `flat` (canonical order), keeping each leaf and its frozen state.
    /// Each parameter gets a new array (one copy, on several threads): writing in place would first copy the
    /// values that replicas still share.
    public func load(flatValues flat: [Float]) {
        precondition(flat.count == parameterCount, "flat buffer has \(flat.count) values, model \(parameterCount)")
        let parameters = parameters
        var offsets = [0]
        for parameter in parameters { offsets.append(offsets.last! + parameter.value.count) }
        var arrays = [[Float]](repeating: [], count: parameters.count)
        flat.withUnsafeBufferPointer { source in
            arrays.withUnsafeMutableBufferPointer { arrays in
                Parallel.forEach(parameters.count) { index in
                    arrays[index] = Array(source[offsets[index]..<offsets[index + 1]])
                }
            }
        }
        for (parameter, values) in zip(parameters, arrays) { parameter.value.withMutableStorage { $0 = values } }
    }

    /// Shares `source`'s current parameter values (no copy until either side writes).
    public func shareValues(from source: Module) {
        for (mine, theirs) in zip(parameters, source.parameters) {
            mine.value.shareStorage(of: theirs.value)
        }
    }
}
