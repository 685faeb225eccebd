import CKernels

/// Optimizer updates of n parameters in place (a range of a flat buffer), with PyTorch's update rules. Every
/// element goes through the same fixed sequence of IEEE operations.
public enum OptimizerUpdates {
    /// torch.optim.SGD, for each i: d = g[i] + weightDecay·p[i];
    /// b[i] = firstStep ? d : μ·b[i] + (1 − dampening)·d; d = nesterov ? d + μ·b[i] : b[i]; p[i] −= lr·d,
    /// with μ = momentum and b the momentum buffer (neither b line runs when μ = 0, nor the decay when
    /// weightDecay = 0). p, g, b: [n]; b may be nil when μ = 0.
    public static func sgd(parameters p: UnsafeMutableBufferPointer<Float>, gradients g: UnsafeBufferPointer<Float>,
                           momentumBuffer b: UnsafeMutableBufferPointer<Float>?, lr: Float, momentum: Float,
                           dampening: Float, nesterov: Bool, weightDecay: Float, firstStep: Bool) {
        assert(g.count == p.count && (b?.count ?? p.count) == p.count)
        tk_sgd_update(Int64(p.count), p.baseAddress, g.baseAddress, b?.baseAddress, lr, momentum, dampening,
                      nesterov ? 1 : 0, weightDecay, firstStep ? 1 : 0)
    }

    /// Adam and AdamW, for each i: p[i] ·= 1 − lr·decoupledDecay; g' = g[i] + l2Decay·p[i];
    /// m[i] += (1 − β1)(g' − m[i]); v[i] = β2·v[i] + (1 − β2)·g'²;
    /// p[i] −= stepSize·m[i] / (√v[i] / correction2SquareRoot + eps), where for step t
    /// stepSize = lr/(1 − β1ᵗ) and correction2SquareRoot = √(1 − β2ᵗ); a decay whose coefficient is 0 is skipped.
    /// p, g, m (first moment), v (second moment): [n]
    public static func adam(parameters p: UnsafeMutableBufferPointer<Float>, gradients g: UnsafeBufferPointer<Float>,
                            firstMoment m: UnsafeMutableBufferPointer<Float>,
                            secondMoment v: UnsafeMutableBufferPointer<Float>, lr: Float, beta1: Float, beta2: Float,
                            eps: Float, l2Decay: Float, decoupledDecay: Float, stepSize: Float,
                            correction2SquareRoot: Float) {
        assert(g.count == p.count && m.count == p.count && v.count == p.count)
        tk_adam_update(Int64(p.count), p.baseAddress, g.baseAddress, m.baseAddress, v.baseAddress, lr, beta1, beta2,
                       eps, l2Decay, decoupledDecay, stepSize, correction2SquareRoot)
    }
}
