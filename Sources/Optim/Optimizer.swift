import Foundation
import Kernels

/// Optimizer hyper-parameters, with PyTorch's defaults and update rules.
public enum OptimizerConfig: Equatable, Sendable {
    /// torch.optim.SGD: d = g + wd·p; b = μ·b + (1 − dampening)·d (b = d on the first step);
    /// d = d + μ·b (Nesterov) or b; p −= lr·d.
    case sgd(momentum: Float = 0, dampening: Float = 0, nesterov: Bool = false, weightDecay: Float = 0)
    /// torch.optim.Adam: g += wd·p (L2); m = β1·m + (1 − β1)·g; v = β2·v + (1 − β2)·g²;
    /// p −= lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε).
    case adam(beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0)
    /// torch.optim.AdamW: p ·= 1 − lr·wd (decoupled), then Adam without L2.
    case adamw(beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0.01)

    public var name: String {
        switch self {
        case .sgd: return "sgd"
        case .adam: return "adam"
        case .adamw: return "adamw"
        }
    }
}

/// An optimizer over one flat parameter buffer. Only the `trainable` ranges are touched (frozen parameters
/// keep their values and get no state updates), so the coordinator can step without any model code.
public struct Optimizer: Sendable {
    public let config: OptimizerConfig
    public let trainable: [Range<Int>]
    /// Number of steps taken (PyTorch's `step` in the state), used for Adam's bias correction.
    public private(set) var stepCount: Int = 0
    /// SGD: momentum buffer. Adam/AdamW: exp_avg (m) and exp_avg_sq (v). Empty until needed.
    public private(set) var firstMoment: [Float]
    public private(set) var secondMoment: [Float]

    public init(_ config: OptimizerConfig, parameterCount: Int, trainable: [Range<Int>]? = nil) {
        self.config = config
        self.trainable = trainable ?? [0..<parameterCount]
        switch config {
        case let .sgd(momentum, _, _, _):
            firstMoment = momentum != 0 ? [Float](repeating: 0, count: parameterCount) : []
            secondMoment = []
        case .adam, .adamw:
            firstMoment = [Float](repeating: 0, count: parameterCount)
            secondMoment = [Float](repeating: 0, count: parameterCount)
        }
    }

    /// Names and values of the state tensors, for checkpoints (PyTorch's names).
    public var stateTensors: [(name: String, values: [Float])] {
        switch config {
        case .sgd: return firstMoment.isEmpty ? [] : [("momentum_buffer", firstMoment)]
        case .adam, .adamw: return [("exp_avg", firstMoment), ("exp_avg_sq", secondMoment)]
        }
    }

    /// Restores the state written by `stateTensors` and `stepCount`; throws when a tensor is missing or has
    /// the wrong length.
    public mutating func restore(stepCount: Int, tensors: [String: [Float]]) throws {
        for (name, values) in stateTensors {
            guard let saved = tensors[name] else { throw OptimizerStateError.missing(name) }
            guard saved.count == values.count else {
                throw OptimizerStateError.wrongLength(name, expected: values.count, got: saved.count)
            }
            if name == "exp_avg_sq" { secondMoment = saved } else { firstMoment = saved }
        }
        self.stepCount = stepCount
    }

    /// One update of `parameters` from `gradients` (same layout) at learning rate `lr`, spread over threads in
    /// fixed chunks (each element's update is independent, so threads never change a bit).
    public mutating func step(parameters: inout [Float], gradients: [Float], lr: Float) {
        precondition(parameters.count == gradients.count, "parameters and gradients differ in length")
        stepCount += 1
        let t = Float(stepCount)
        let config = self.config
        let firstStep = stepCount == 1
        let chunks = trainable.flatMap { range in
            stride(from: range.lowerBound, to: range.upperBound, by: Optimizer.chunk).map {
                $0..<min($0 + Optimizer.chunk, range.upperBound)
            }
        }
        parameters.withUnsafeMutableBufferPointer { p in
            gradients.withUnsafeBufferPointer { g in
                firstMoment.withUnsafeMutableBufferPointer { m in
                    secondMoment.withUnsafeMutableBufferPointer { v in
                        let (p, m, v) = (p, m, v)
                        Parallel.forEach(chunks.count) { index in
                            let range = chunks[index]
                            let parameters = UnsafeMutableBufferPointer(rebasing: p[range])
                            let gradients = UnsafeBufferPointer(rebasing: g[range])
                            switch config {
                            case let .sgd(momentum, dampening, nesterov, weightDecay):
                                let buffer = m.isEmpty ? nil : UnsafeMutableBufferPointer(rebasing: m[range])
                                OptimizerUpdates.sgd(parameters: parameters, gradients: gradients, momentumBuffer: buffer,
                                                     lr: lr, momentum: momentum, dampening: dampening, nesterov: nesterov,
                                                     weightDecay: weightDecay, firstStep: firstStep)
                            case let .adam(beta1, beta2, eps, weightDecay):
                                OptimizerUpdates.adam(
                                    parameters: parameters, gradients: gradients,
                                    firstMoment: UnsafeMutableBufferPointer(rebasing: m[range]),
                                    secondMoment: UnsafeMutableBufferPointer(rebasing: v[range]),
                                    lr: lr, beta1: beta1, beta2: beta2, eps: eps, l2Decay: weightDecay, decoupledDecay: 0,
                                    stepSize: lr / (1 - pow(beta1, t)), correction2SquareRoot: (1 - pow(beta2, t)).squareRoot())
                            case let .adamw(beta1, beta2, eps, weightDecay):
                                OptimizerUpdates.adam(
                                    parameters: parameters, gradients: gradients,
                                    firstMoment: UnsafeMutableBufferPointer(rebasing: m[range]),
                                    secondMoment: UnsafeMutableBufferPointer(rebasing: v[range]),
                                    lr: lr, beta1: beta1, beta2: beta2, eps: eps, l2Decay: 0, decoupledDecay: weightDecay,
                                    stepSize: lr / (1 - pow(beta1, t)), correction2SquareRoot: (1 - pow(beta2, t)).squareRoot())
                            }
                        }
                    }
                }
            }
        }
    }

    /// Elements updated per parallel task.
    static let chunk = 1 << 15
}

public enum OptimizerStateError: Error, CustomStringConvertible {
    case missing(String)
    case wrongLength(String, expected: Int, got: Int)

    public var description: String {
        switch self {
        case let .missing(name): return "optimizer state '\(name)' is missing"
        case let .wrongLength(name, expected, got):
            return "optimizer state '\(name)' has \(got) values, expected \(expected)"
        }
    }
}
