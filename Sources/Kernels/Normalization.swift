import CKernels

/// Normalization over the last dimension of each row of a [rows, columns] matrix.
public enum Normalization {
    /// LayerNorm with the biased variance: mean[r] = Σ_c x[r, c] / columns,
    /// rstd[r] = 1/√(Σ_c (x[r, c] − mean[r])² / columns + eps),
    /// y[r, c] = (x[r, c] − mean[r])·rstd[r]·γ[c] + β[c];
    /// x, y: [rows, columns], γ, β: [columns] (nil: 1 and 0), mean, rstd: [rows]
    public static func layerNorm(_ x: [Float], rows: Int, columns: Int, gamma: [Float]?, beta: [Float]?, eps: Float,
                                 into y: inout [Float], mean: inout [Float], rstd: inout [Float]) {
        assert(x.count == rows * columns && y.count == rows * columns && mean.count == rows && rstd.count == rows)
        tk_layernorm_forward(Int32(rows), Int32(columns), x, gamma, beta, eps, &y, &mean, &rstd)
    }

    /// LayerNorm's backward over these rows, with x̂ = (x − mean)·rstd and dx̂ = dy·γ:
    /// dx[r, :] = rstd[r]·(dx̂ − mean_c(dx̂) − x̂·mean_c(dx̂·x̂));
    /// dγ[c] = Σ_r dy[r, c]·x̂[r, c] and dβ[c] = Σ_r dy[r, c], summed in row order (written, not accumulated).
    /// x, dy, dx: [rows, columns], γ, dγ, dβ: [columns] (γ nil: 1), mean, rstd: [rows]; an output passed as nil is
    /// not computed.
    public static func layerNormBackward(
        input x: UnsafeBufferPointer<Float>, gamma: [Float]?, mean: UnsafeBufferPointer<Float>,
        rstd: UnsafeBufferPointer<Float>, upstream dy: UnsafeBufferPointer<Float>, rows: Int, columns: Int,
        dx: UnsafeMutableBufferPointer<Float>?, dgamma: UnsafeMutableBufferPointer<Float>?,
        dbeta: UnsafeMutableBufferPointer<Float>?
    ) {
        assert(x.count == rows * columns && dy.count == rows * columns && mean.count == rows && rstd.count == rows)
        assert((dx?.count ?? rows * columns) == rows * columns)
        assert((dgamma?.count ?? columns) == columns && (dbeta?.count ?? columns) == columns)
        tk_layernorm_backward(Int32(rows), Int32(columns), x.baseAddress, gamma, mean.baseAddress, rstd.baseAddress,
                              dy.baseAddress, dx?.baseAddress, dgamma?.baseAddress, dbeta?.baseAddress)
    }
}
