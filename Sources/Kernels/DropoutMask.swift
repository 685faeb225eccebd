import CKernels

/// Dropout masks drawn from a counter-based hash, so a mask depends only on its coordinates, never on threads or
/// on how samples are grouped.
public enum DropoutMask {
    /// mask[s, e] for sample s and element e: with F SplitMix64's finaliser, k = F(seed ^ F(site + 0x5851F42D4C957F2D))
    /// and h = F(F(k ^ (firstSample + s)) ^ F(e)); mask[s, e] = 0 where the top 24 bits of h are below `threshold`
    /// (p·2²⁴ for dropout probability p), else `keep` (1/(1 − p)). mask: [samples, perSample]
    public static func generate(samples: Int, perSample: Int, seed: UInt64, site: UInt64, firstSample: Int,
                                threshold: UInt32, keep: Float, into mask: inout [Float]) {
        assert(mask.count == samples * perSample)
        tk_dropout_mask(samples, perSample, seed, site, firstSample, threshold, keep, &mask)
    }
}
