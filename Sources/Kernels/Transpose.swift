import CKernels

/// Copies that reorder the axes of a row-major array.
public enum Transpose {
    /// y[o, j, m, i, r] = x[o, i, m, j, r]: axes 1 and 3 swapped, with x viewed as [outer, first, middle, second,
    /// inner] and y as [outer, second, middle, first, inner]
    public static func swapAxes(_ x: [Float], outer: Int, first: Int, middle: Int, second: Int, inner: Int,
                                into y: inout [Float]) {
        assert(x.count == outer * first * middle * second * inner && y.count == x.count)
        tk_swap_axes(outer, first, middle, second, inner, x, &y)
    }
}
