import CKernels

/// Cross-entropy of logits against class labels, row by row.
public enum CrossEntropy {
    /// p[r, :] = softmax(logits[r, :]) and losses[r] = −log p[r, labels[r]]; logits, p (probabilities):
    /// [rows, classes], labels, losses: [rows]. Returns the first row whose label is outside 0..<classes (rows from
    /// there on are not written), or nil.
    public static func forward(logits: [Float], labels: [Int32], rows: Int, classes: Int,
                               probabilities p: inout [Float], losses: inout [Float]) -> Int? {
        assert(logits.count == rows * classes && p.count == rows * classes)
        assert(labels.count == rows && losses.count == rows)
        let badRow = tk_cross_entropy_forward(Int32(rows), Int32(classes), logits, labels, &p, &losses)
        return badRow >= 0 ? Int(badRow) : nil
    }

    /// dlogits[r, c] = scale·(p[r, c] − (c == labels[r] ? 1 : 0)), from the forward's probabilities p;
    /// p, dlogits: [rows, classes], labels: [rows]
    public static func backward(probabilities p: [Float], labels: [Int32], rows: Int, classes: Int, scale: Float,
                                into dlogits: inout [Float]) {
        assert(p.count == rows * classes && dlogits.count == rows * classes && labels.count == rows)
        tk_cross_entropy_backward(Int32(rows), Int32(classes), p, labels, scale, &dlogits)
    }
}
