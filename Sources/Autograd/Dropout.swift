import Kernels

extension Tensor {
    /// Inverted dropout: y = x·m/(1 − p) with m = 0 with probability p, else 1 (the identity without the pass
    /// context's dropout stream, or for p = 0). dx = dy·m/(1 − p). `site` tells apart the dropout calls of one
    /// forward.
    public func dropout(_ probability: Float, site: UInt64) -> Tensor {
        precondition(probability >= 0 && probability < 1, "dropout: probability \(probability) is outside [0, 1)")
        guard probability > 0, let stream = PassContext.currentDropout, rank >= 1 else { return self }
        let samples = shape[0], perSample = samples == 0 ? 0 : count / samples
        let seed = stream.seed, first = stream.firstSample
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
