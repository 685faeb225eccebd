import Autograd
import Data
import Foundation
import NN

/// Backpropagation against central finite differences computed in Double, per parameter tensor: the
/// "numerical differentiation vs backpropagation" check, as a tool for any model the config describes.
public struct GradientCheck {
    public struct Row {
        public var name: String
        public var shape: [Int]
        public var checked: Int
        public var worstRelativeError: Double
        public var worstAbsoluteError: Double
    }

    /// Half the entries with the largest backprop gradients (where an error would show), half spread evenly.
    static func entriesToCheck(_ gradient: [Float], _ range: Range<Int>, count: Int) -> [Int] {
        guard range.count > count else { return Array(range) }
        let largest = range.sorted { abs(gradient[$0]) > abs(gradient[$1]) }.prefix(count / 2)
        let spread = stride(from: range.lowerBound, to: range.upperBound, by: range.count / (count - largest.count))
        return Array(Set(largest).union(spread.prefix(count - largest.count))).sorted()
    }

    /// Checks `entriesPerTensor` entries of every tensor (all of a small one) on `inputs`/`labels`, with the
    /// mean cross-entropy loss. The Double forward pass is a second implementation of the model's layers.
    public static func run(
        model: Sequential, inputs: [Float], labels: [Int32], entriesPerTensor: Int = 16, step h: Double = 1e-6
    ) throws -> [Row] {
        let rows = labels.count
        let features = inputs.count / rows
        model.zeroGrad()
        try model(Tensor(shape: [rows, features], storage: inputs)).crossEntropy(labels: labels).backward()
        let analytic = model.flatGradients()
        let layout = ParameterLayout(model)
        var parameters = model.flatValues().map(Double.init)
        let x = inputs.map(Double.init)
        var result: [Row] = []
        for entry in layout.entries {
            var worstRelative = 0.0, worstAbsolute = 0.0, checked = 0
            for index in entriesToCheck(analytic, entry.range, count: entriesPerTensor) {
                let original = parameters[index]
                parameters[index] = original + h
                let plus = DoubleForward.loss(model, parameters: parameters, inputs: x, labels: labels)
                parameters[index] = original - h
                let minus = DoubleForward.loss(model, parameters: parameters, inputs: x, labels: labels)
                parameters[index] = original
                let numeric = (plus - minus) / (2 * h)
                let backprop = Double(analytic[index])
                let absolute = abs(numeric - backprop)
                let scale = max(abs(numeric), abs(backprop))
                worstAbsolute = max(worstAbsolute, absolute)
                // Entries whose gradient is ~0 (a dead unit, a black pixel) compare absolutely.
                worstRelative = max(worstRelative, scale > 1e-7 ? absolute / scale : 0)
                checked += 1
            }
            result.append(Row(name: entry.name, shape: entry.shape, checked: checked,
                              worstRelativeError: worstRelative, worstAbsoluteError: worstAbsolute))
        }
        return result
    }
}

/// A plain Double-precision forward pass of Sequential/Linear/Activation/Residual models, written independently
/// of the float32 kernels, with parameters taken from a flat buffer in canonical order.
public enum DoubleForward {
    public static func loss(_ model: Module, parameters: [Double], inputs: [Double], labels: [Int32]) -> Double {
        var cursor = 0
        let logits = forward(model, inputs, rows: labels.count, parameters: parameters, cursor: &cursor)
        let classes = logits.count / labels.count
        var total = 0.0
        for r in 0..<labels.count {
            let row = logits[(r * classes)..<((r + 1) * classes)]
            let m = row.max()!
            let logSum = log(row.reduce(0) { $0 + exp($1 - m) }) + m
            total += logSum - row[r * classes + Int(labels[r])]
        }
        return total / Double(labels.count)
    }

    static func forward(_ module: Module, _ x: [Double], rows: Int, parameters: [Double], cursor: inout Int) -> [Double] {
        switch module {
        case let sequential as Sequential:
            return sequential.layers.reduce(x) { forward($1, $0, rows: rows, parameters: parameters, cursor: &cursor) }
        case let residual as Residual:
            let body = forward(residual.body, x, rows: rows, parameters: parameters, cursor: &cursor)
            return zip(x, body).map { $0 + $1 }
        case let linear as Linear:
            let (out, inFeatures) = (linear.outFeatures, linear.inFeatures)
            let w = parameters[cursor..<(cursor + out * inFeatures)].map { $0 }
            cursor += out * inFeatures
            var b = [Double](repeating: 0, count: out)
            if linear.bias != nil {
                b = Array(parameters[cursor..<(cursor + out)])
                cursor += out
            }
            var y = [Double](repeating: 0, count: rows * out)
            for r in 0..<rows {
                for o in 0..<out {
                    var s = b[o]
                    for i in 0..<inFeatures { s += x[r * inFeatures + i] * w[o * inFeatures + i] }
                    y[r * out + o] = s
                }
            }
            return y
        case let activation as Activation:
            switch activation.kind {
            case .relu: return x.map { max($0, 0) }
            case .tanh: return x.map { Foundation.tanh($0) }
            case .sigmoid: return x.map { 1 / (1 + exp(-$0)) }
            }
        default:
            preconditionFailure("DoubleForward does not know \(type(of: module))")
        }
    }
}
