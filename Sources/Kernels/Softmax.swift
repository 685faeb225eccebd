import CKernels

/// Softmax over each row of a [rows, columns] matrix, and the causal softmax of attention scores.
public enum Softmax {
    /// y[r, c] = exp(x[r, c] − m_r) / Σ_j exp(x[r, j] − m_r), m_r = max_j x[r, j]; x, y: [rows, columns]
    public static func forward(_ x: [Float], rows: Int, columns: Int, into y: inout [Float]) {
        assert(x.count == rows * columns && y.count == rows * columns)
        tk_softmax_rows(Int32(rows), Int32(columns), x, &y)
    }

    /// The same on buffers; x, y: [rows, columns]
    public static func forward(_ x: UnsafeBufferPointer<Float>, rows: Int, columns: Int,
                               into y: UnsafeMutableBufferPointer<Float>) {
        assert(x.count == rows * columns && y.count == rows * columns)
        tk_softmax_rows(Int32(rows), Int32(columns), x.baseAddress, y.baseAddress)
    }

    /// dx[r, c] = y[r, c]·(dy[r, c] − Σ_j dy[r, j]·y[r, j]), from the forward output y; y, dy, dx: [rows, columns]
    public static func backward(output y: [Float], upstream dy: [Float], rows: Int, columns: Int,
                                into dx: inout [Float]) {
        assert(y.count == rows * columns && dy.count == rows * columns && dx.count == rows * columns)
        tk_softmax_backward_rows(Int32(rows), Int32(columns), y, dy, &dx)
    }

    /// The same on buffers; y, dy, dx: [rows, columns]
    public static func backward(output y: UnsafeBufferPointer<Float>, upstream dy: UnsafeBufferPointer<Float>,
                                rows: Int, columns: Int, into dx: UnsafeMutableBufferPointer<Float>) {
        assert(y.count == rows * columns && dy.count == rows * columns && dx.count == rows * columns)
        tk_softmax_backward_rows(Int32(rows), Int32(columns), y.baseAddress, dy.baseAddress, dx.baseAddress)
    }

    /// Causal softmax of attention scores: row i of p is softmax(scale·s[i, 0...i]), and p[i, j] = 0 for j > i;
    /// s (scores), p (probabilities): [time, time]
    public static func causal(scores s: UnsafeBufferPointer<Float>, time: Int, scale: Float,
                              into p: UnsafeMutableBufferPointer<Float>) {
        assert(s.count == time * time && p.count == time * time)
        tk_causal_softmax(Int32(time), scale, s.baseAddress, p.baseAddress)
    }
}

/// Log-softmax over each row of a [rows, columns] matrix.
public enum LogSoftmax {
    /// y[r, c] = x[r, c] − m_r − log Σ_j exp(x[r, j] − m_r), m_r = max_j x[r, j]; x, y: [rows, columns]
    public static func forward(_ x: [Float], rows: Int, columns: Int, into y: inout [Float]) {
        assert(x.count == rows * columns && y.count == rows * columns)
        tk_log_softmax_rows(Int32(rows), Int32(columns), x, &y)
    }

    /// dx[r, c] = dy[r, c] − exp(y[r, c])·Σ_j dy[r, j], from the forward output y (exp(y) = softmax(x));
    /// y, dy, dx: [rows, columns]
    public static func backward(output y: [Float], upstream dy: [Float], rows: Int, columns: Int,
                                into dx: inout [Float]) {
        assert(y.count == rows * columns && dy.count == rows * columns && dx.count == rows * columns)
        tk_log_softmax_backward_rows(Int32(rows), Int32(columns), y, dy, &dx)
    }
}
