import CKernels

/// Sums and counts over arrays, each in a fixed order (the same bits on every machine and thread count).
public enum Reductions {
    /// out[c] = Σ_r x[r, c], summed in row order; x: [rows, columns], out: [columns]
    public static func sumRows(_ x: UnsafeBufferPointer<Float>, rows: Int, columns: Int,
                               into out: UnsafeMutableBufferPointer<Float>) {
        assert(x.count == rows * columns && out.count == columns)
        tk_sum_rows(Int32(rows), Int32(columns), x.baseAddress, out.baseAddress)
    }

    /// Σ_i x[i]², in Double with eight interleaved accumulators (acc[i mod 8]) combined pairwise; x: [n]
    public static func sumOfSquares(_ x: UnsafeBufferPointer<Float>) -> Double {
        tk_sum_of_squares(Int64(x.count), x.baseAddress)
    }

    /// y[i] /= divisor (a division, not a multiplication by the reciprocal), then Σ_i y[i]² exactly as
    /// `sumOfSquares` computes it, in one pass over y; y: [n]
    public static func divideAndSumOfSquares(_ y: UnsafeMutableBufferPointer<Float>, by divisor: Float) -> Double {
        tk_divide_sum_of_squares(Int64(y.count), divisor, y.baseAddress)
    }

    /// How many x[i] are NaN or ±∞; x: [n]
    public static func countNonFinite(_ x: [Float]) -> Int {
        Int(x.withUnsafeBufferPointer { tk_count_nonfinite(Int64($0.count), $0.baseAddress) })
    }
}
