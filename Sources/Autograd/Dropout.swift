import Kernels

/// Where dropout draws its masks: a seed for the step and the global index of the pass's first sample, set by
/// the training loop around each forward pass. Outside a stream (evaluation, sampling) dropout is the identity,
/// like a PyTorch module in `eval()` mode.
public enum DropoutStream {
    static let active = ThreadLocalInt()
    static let seed = ThreadLocalInt()
    static let firstSample = ThreadLocalInt()

    public static var isActive: Bool { active.value != 0 }

    /// This thread's stream (active, seed, first sample), to run a recomputation under the same one.
    static var state: (active: Int, seed: Int, firstSample: Int) { (active.value, seed.value, firstSample.value) }

    static func with<R>(_ state: (active: Int, seed: Int, firstSample: Int), _ body: () throws -> R) rethrows -> R {
        try active.with(state.active) { try seed.with(state.seed) { try firstSample.with(state.firstSample, body) } }
    }
}

/// Runs `body` with dropout on: the mask of element e of sample s (dimension 0 of the dropped tensor) at a
/// site is a hash of (seed, site, firstSample + s, e). It depends neither on how samples are grouped into passes
/// nor on threads, so every worker count draws the same masks, and recomputing a pass redraws the same ones.
public func withDropoutStream<R>(seed: UInt64, firstSample: Int, _ body: () throws -> R) rethrows -> R {
    try DropoutStream.active.with(1) {
        try DropoutStream.seed.with(Int(bitPattern: UInt(seed))) {
            try DropoutStream.firstSample.with(firstSample, body)
        }
    }
}

extension Tensor {
    /// Inverted dropout: y = x·m/(1 − p) with m = 0 with probability p, else 1 (the identity outside a
    /// `withDropoutStream` or for p = 0). dx = dy·m/(1 − p). `site` tells apart the dropout calls of one forward.
    public func dropout(_ probability: Float, site: UInt64) -> Tensor {
        precondition(probability >= 0 && probability < 1, "dropout: probability \(probability) is outside [0, 1)")
        guard probability > 0, DropoutStream.isActive, rank >= 1 else { return self }
        let samples = shape[0], perSample = samples == 0 ? 0 : count / samples
        let seed = UInt64(UInt(bitPattern: DropoutStream.seed.value)), first = DropoutStream.firstSample.value
        let threshold = UInt64((Double(probability) * Double(1 << 24)).rounded())
        let keep = 1 / (1 - probability)
        var mask = uninitializedFloats(count)
        DropoutMask.generate(samples: samples, perSample: perSample, seed: seed, site: site, firstSample: first,
                             threshold: UInt32(threshold), keep: keep, into: &mask)
        var out = storage
        Elementwise.multiply(&out, by: mask)
        return Tensor.recorded(shape: shape, storage: out, inputs: [self]) { upstream, _ in
            var grad = upstream
            Elementwise.multiply(&grad, by: mask)
            return [grad]
        }
    }
}
