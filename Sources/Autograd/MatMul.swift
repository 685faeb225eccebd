import Kernels

/// Runs `body` with base pointers of arrays that may be empty (their products are then empty too).
@inline(__always)
func withPointers<R>(
    _ a: [Float], _ b: [Float], _ c: inout [Float],
    _ body: (UnsafePointer<Float>, UnsafePointer<Float>, UnsafeMutablePointer<Float>) -> R
) -> R {
    a.withUnsafeBufferPointer { pa in
        b.withUnsafeBufferPointer { pb in
            c.withUnsafeMutableBufferPointer { pc in
                let dummy = UnsafeMutablePointer<Float>.allocate(capacity: 1)
                defer { dummy.deallocate() }
                return body(pa.baseAddress ?? UnsafePointer(dummy), pb.baseAddress ?? UnsafePointer(dummy),
                            pc.baseAddress ?? dummy)
            }
        }
    }
}

extension Tensor {
    /// Matrix product over the last two dimensions: a [..., m, k] · b [..., k, n] → [..., m, n], with inputs in
    /// this thread's `MatmulPrecision` (forward and backward).
    /// b may be 2-D (shared by every batch entry) or carry the same batch dimensions as a.
    /// dA = dC · Bᵀ, dB = Aᵀ · dC (summed over the batch when b is shared).
    public func matmul(_ other: Tensor) -> Tensor {
        precondition(rank >= 2 && other.rank >= 2, "matmul needs matrices, got \(shape) and \(other.shape)")
        let m = shape[rank - 2], k = shape[rank - 1]
        let n = other.shape[other.rank - 1]
        precondition(other.shape[other.rank - 2] == k,
                     "matmul: inner dimensions differ, \(shape) · \(other.shape)")
        let batchShape = Array(shape.dropLast(2))
        let sharedB = other.rank == 2
        precondition(sharedB || Array(other.shape.dropLast(2)) == batchShape,
                     "matmul: batch dimensions differ, \(shape) · \(other.shape)")
        let batches = batchShape.reduce(1, *)
        let a = storage, b = other.storage, precision = PassContext.currentPrecision
        let strideB = sharedB ? 0 : k * n
        var out = [Float](repeating: 0, count: batches * m * n)
        withPointers(a, b, &out) { pa, pb, pc in
            for i in 0..<batches {
                GEMM.multiply(GEMMShape(m: m, n: n, k: k, precision: precision), pa + i * m * k, pb + i * strideB, pc + i * m * n)
            }
        }
        return Tensor.recorded(shape: batchShape + [m, n], storage: out, inputs: [self, other]) { upstream, needs in
            var gradA = needs[0] ? [Float](repeating: 0, count: a.count) : []
            var gradB = needs[1] ? [Float](repeating: 0, count: b.count) : []
            if needs[0] {
                withPointers(upstream, b, &gradA) { dc, pb, da in
                    for i in 0..<batches {  // dA[m, k] = dC[m, n] · B[k, n]ᵀ
                        GEMM.multiply(GEMMShape(m: m, n: k, k: n, transposeB: true, precision: precision), dc + i * m * n,
                                      pb + i * strideB, da + i * m * k)
                    }
                }
            }
            if needs[1] {
                withPointers(a, upstream, &gradB) { pa, dc, db in
                    for i in 0..<batches {  // dB[k, n] = A[m, k]ᵀ · dC[m, n]
                        GEMM.multiply(GEMMShape(m: k, n: n, k: m, transposeA: true, precision: precision), pa + i * m * k,
                                      dc + i * m * n, db + i * strideB, accumulate: sharedB && i > 0)
                    }
                }
            }
            return [needs[0] ? gradA : nil, needs[1] ? gradB : nil]
        }
    }

    /// torch.nn.functional.linear: y = x · Wᵀ + b, x [..., in], W [out, in], b [out] → [..., out]; the products'
    /// inputs in this thread's `MatmulPrecision` (bf16 under mixed precision), forward and backward.
    /// dx = dy · W; dW = dyᵀ · x and db = Σ_rows dy, each summed per micro-batch (`SampleSegments`) in row
    /// order and combined in the gradient tree.
    public func linear(weight: Tensor, bias: Tensor? = nil) -> Tensor { linear(weight: weight, bias: bias, relu: false) }

    /// relu(x · Wᵀ + b) as one op, [..., in] → [..., out]: the bias and the ReLU take one pass over the output
    /// instead of two, and no pre-activation tensor is kept. dz = dy where y > 0 (exactly where x · Wᵀ + b > 0),
    /// then dx, dW and db as `linear`'s from dz: the same bits as `linear(...).relu()`.
    public func linearReLU(weight: Tensor, bias: Tensor? = nil) -> Tensor { linear(weight: weight, bias: bias, relu: true) }

    private func linear(weight: Tensor, bias: Tensor?, relu: Bool) -> Tensor {
        precondition(weight.rank == 2, "linear: weight must be [out, in], got \(weight.shape)")
        let outFeatures = weight.shape[0], inFeatures = weight.shape[1]
        precondition(shape.last == inFeatures, "linear: input \(shape) does not end in \(inFeatures) features")
        if let bias { precondition(bias.shape == [outFeatures], "linear: bias must be [\(outFeatures)], got \(bias.shape)") }
        let rows = count / max(inFeatures, 1)
        let x = storage, w = weight.storage, precision = PassContext.currentPrecision
        var out = uninitializedFloats(rows * outFeatures)
        withPointers(x, w, &out) { px, pw, py in
            GEMM.multiply(GEMMShape(m: rows, n: outFeatures, k: inFeatures, transposeB: true, precision: precision),
                          px, pw, py)
        }
        if !out.isEmpty {
            switch (bias?.storage, relu) {
            case let (b?, false): Elementwise.addRowVector(b, toRowsOf: &out, rows: rows, columns: outFeatures)
            case let (b?, true): Elementwise.addRowVectorReLU(b, toRowsOf: &out, rows: rows, columns: outFeatures)
            case (nil, true): Activations.reluInPlace(&out)
            case (nil, false): break
            }
        }
        let activated = relu ? out : []
        let segments = SampleSegments.count(forRows: rows)
        let segmentRows = rows / segments
        let inputs = bias.map { [self, weight, $0] } ?? [self, weight]
        return Tensor.recorded(shape: shape.dropLast() + [outFeatures], storage: out, inputs: inputs) { upstream, needs in
            var dy = upstream
            if relu {
                dy = uninitializedFloats(upstream.count)
                Activations.reluBackward(input: activated, upstream: upstream, into: &dy)
            }
            var grads: [[Float]?] = [nil, nil]
            if needs[0] {
                var dx = uninitializedFloats(x.count)
                withPointers(dy, w, &dx) { pdy, pw, pdx in
                    GEMM.multiply(GEMMShape(m: rows, n: inFeatures, k: outFeatures, precision: precision), pdy, pw, pdx)
                }
                grads[0] = dx
            }
            if needs[1] {
                var dw = uninitializedFloats(w.count)
                withPointers(dy, x, &dw) { pdy, px, pdw in
                    GEMM.multiplyTransposedSegmented(m: outFeatures, n: inFeatures, segmentRows: segmentRows,
                                                     segments: segments, pdy, px, pdw, precision: precision)
                }
                grads[1] = dw
            }
            if needs.count == 3 {
                grads.append(needs[2] ? dy.withUnsafeBufferPointer { pdy in
                    segmentedReduction(segments: segments, length: outFeatures) { segment, db in
                        let values = segmentRows * outFeatures, start = segment * values
                        Reductions.sumRows(UnsafeBufferPointer(rebasing: pdy[start..<(start + values)]),
                                           rows: segmentRows, columns: outFeatures, into: db)
                    }
                } : nil)
            }
            return grads
        }
    }
}
