import CKernels

/// In-place arithmetic over flat arrays of n values, and bias rows added to a [rows, columns] matrix.
public enum Elementwise {
    /// y[i] += x[i]; x, y: [n]
    public static func add(_ x: [Float], to y: inout [Float]) {
        assert(y.count == x.count)
        tk_add_inplace(Int64(x.count), x, &y)
    }

    /// The same on buffers; x, y: [n]
    public static func add(_ x: UnsafeBufferPointer<Float>, to y: UnsafeMutableBufferPointer<Float>) {
        assert(y.count == x.count)
        tk_add_inplace(Int64(x.count), x.baseAddress, y.baseAddress)
    }

    /// y[i] *= x[i]; x, y: [n]
    public static func multiply(_ y: inout [Float], by x: [Float]) {
        assert(y.count == x.count)
        tk_mul_inplace(Int64(x.count), x, &y)
    }

    /// y[i] *= s; y: [n]
    public static func scale(_ y: inout [Float], by s: Float) {
        tk_scale_inplace(Int64(y.count), s, &y)
    }

    /// The same on a buffer; y: [n]
    public static func scale(_ y: UnsafeMutableBufferPointer<Float>, by s: Float) {
        tk_scale_inplace(Int64(y.count), s, y.baseAddress)
    }

    /// y[r, c] += bias[c]; y: [rows, columns], bias: [columns]
    public static func addRowVector(_ bias: [Float], toRowsOf y: inout [Float], rows: Int, columns: Int) {
        assert(y.count == rows * columns && bias.count == columns)
        y.withUnsafeMutableBufferPointer {
            tk_add_row_vector(Int32(rows), Int32(columns), $0.baseAddress, bias, $0.baseAddress)
        }
    }

    /// y[r, c] = max(y[r, c] + bias[c], 0): a layer's bias and ReLU in one pass; y: [rows, columns], bias: [columns]
    public static func addRowVectorReLU(_ bias: [Float], toRowsOf y: inout [Float], rows: Int, columns: Int) {
        assert(y.count == rows * columns && bias.count == columns)
        y.withUnsafeMutableBufferPointer {
            tk_add_row_vector_relu(Int32(rows), Int32(columns), $0.baseAddress, bias, $0.baseAddress)
        }
    }
}
