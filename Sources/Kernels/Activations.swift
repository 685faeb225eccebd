import CKernels

/// Elementwise activation functions and their derivatives, over flat arrays of n values. Each backward takes the
/// forward's input or its output, whichever its formula needs.
public enum Activations {
    /// y[i] = max(x[i], 0); x, y: [n]
    public static func relu(_ x: [Float], into y: inout [Float]) { map(tk_relu_forward, x, &y) }

    /// y[i] = max(y[i], 0), in place; y: [n]
    public static func reluInPlace(_ y: inout [Float]) {
        y.withUnsafeMutableBufferPointer { tk_relu_forward(Int64($0.count), $0.baseAddress, $0.baseAddress) }
    }

    /// dx[i] = x[i] > 0 ? dy[i] : 0, from the forward input x; x, dy, dx: [n]
    public static func reluBackward(input x: [Float], upstream dy: [Float], into dx: inout [Float]) {
        chain(tk_relu_backward, x, dy, &dx)
    }

    /// y[i] = tanh(x[i]); x, y: [n]
    public static func tanh(_ x: [Float], into y: inout [Float]) { map(tk_tanh_forward, x, &y) }

    /// dx[i] = dy[i]·(1 − y[i]²), from the forward output y; y, dy, dx: [n]
    public static func tanhBackward(output y: [Float], upstream dy: [Float], into dx: inout [Float]) {
        chain(tk_tanh_backward, y, dy, &dx)
    }

    /// y[i] = 1 / (1 + exp(−x[i])); x, y: [n]
    public static func sigmoid(_ x: [Float], into y: inout [Float]) { map(tk_sigmoid_forward, x, &y) }

    /// dx[i] = dy[i]·y[i]·(1 − y[i]), from the forward output y; y, dy, dx: [n]
    public static func sigmoidBackward(output y: [Float], upstream dy: [Float], into dx: inout [Float]) {
        chain(tk_sigmoid_backward, y, dy, &dx)
    }

    /// Exact GELU: y[i] = ½x[i](1 + erf(x[i]/√2)) = x[i]·Φ(x[i]); x, y: [n]
    public static func geluErf(_ x: [Float], into y: inout [Float]) { map(tk_gelu_erf_forward, x, &y) }

    /// dx[i] = dy[i]·(Φ(x[i]) + x[i]·φ(x[i])), from the forward input x; x, dy, dx: [n]
    public static func geluErfBackward(input x: [Float], upstream dy: [Float], into dx: inout [Float]) {
        chain(tk_gelu_erf_backward, x, dy, &dx)
    }

    /// GELU, tanh form: y[i] = ½x(1 + t) with t = tanh(√(2/π)(x + 0.044715x³)), x = x[i]; x, y: [n]
    public static func geluTanh(_ x: [Float], into y: inout [Float]) { map(tk_gelu_tanh_forward, x, &y) }

    /// dx[i] = dy[i]·(½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²)), t as in the forward, from the forward
    /// input x; x, dy, dx: [n]
    public static func geluTanhBackward(input x: [Float], upstream dy: [Float], into dx: inout [Float]) {
        chain(tk_gelu_tanh_backward, x, dy, &dx)
    }

    /// y = kernel(x) elementwise; x, y: [n]
    private static func map(_ kernel: (Int64, UnsafePointer<Float>?, UnsafeMutablePointer<Float>?) -> Void,
                            _ x: [Float], _ y: inout [Float]) {
        assert(y.count == x.count)
        kernel(Int64(x.count), x, &y)
    }

    /// dx = kernel(saved, dy) elementwise, `saved` the forward's input or output; saved, dy, dx: [n]
    private static func chain(
        _ kernel: (Int64, UnsafePointer<Float>?, UnsafePointer<Float>?, UnsafeMutablePointer<Float>?) -> Void,
        _ saved: [Float], _ dy: [Float], _ dx: inout [Float]
    ) {
        assert(dy.count == saved.count && dx.count == saved.count)
        kernel(Int64(saved.count), saved, dy, &dx)
    }
}
