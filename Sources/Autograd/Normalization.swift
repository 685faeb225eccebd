import Kernels

extension Tensor {
    /// torch.nn.functional.layer_norm over the last dimension: x [..., C], weight γ [C], bias β [C].
    /// y = (x − μ)/√(σ² + eps)·γ + β with μ, σ² the row's mean and biased variance.
    /// dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) with dx̂ = dy·γ; dγ = Σ_rows dy·x̂, dβ = Σ_rows dy, each summed per
    /// micro-batch (`SampleSegments`) in row order and combined in the gradient tree.
    public func layerNorm(weight: Tensor?, bias: Tensor?, eps: Float = 1e-5) -> Tensor {
        let (rows, columns) = rowsAndColumns
        if let weight { precondition(weight.shape == [columns], "layerNorm: weight must be [\(columns)], got \(weight.shape)") }
        if let bias { precondition(bias.shape == [columns], "layerNorm: bias must be [\(columns)], got \(bias.shape)") }
        let x = storage, gamma = weight?.storage, beta = bias?.storage
        var out = uninitializedFloats(count), mean = uninitializedFloats(rows), rstd = uninitializedFloats(rows)
        tk_layernorm_forward(Int32(rows), Int32(columns), x, gamma, beta, eps, &out, &mean, &rstd)
        let segments = SampleSegments.count(forRows: rows)
        let segmentRows = rows / segments
        var inputs = [self]
        if let weight { inputs.append(weight) }
        if let bias { inputs.append(bias) }
        let hasWeight = weight != nil, hasBias = bias != nil
        return Tensor.recorded(shape: shape, storage: out, inputs: inputs) { upstream, needs in
            let needsGamma = hasWeight && needs[1], needsBeta = hasBias && needs.last!
            var dx = needs[0] ? uninitializedFloats(x.count) : []
            var parts = [(gamma: [Float], beta: [Float])](repeating: ([], []), count: segments)
            withRowPointers(x, upstream, mean, rstd, &dx) { px, pdy, pmean, prstd, pdx in
                parts.withUnsafeMutableBufferPointer { slots in
                    Parallel.forEach(segments) { segment in
                        let row = segment * segmentRows, offset = row * columns
                        var dgamma = needsGamma ? uninitializedFloats(columns) : []
                        var dbeta = needsBeta ? uninitializedFloats(columns) : []
                        dgamma.withUnsafeMutableBufferPointer { pg in
                            dbeta.withUnsafeMutableBufferPointer { pb in
                                tk_layernorm_backward(Int32(segmentRows), Int32(columns), px + offset, gamma,
                                                      pmean + row, prstd + row, pdy + offset,
                                                      needs[0] ? pdx + offset : nil,
                                                      needsGamma ? pg.baseAddress : nil, needsBeta ? pb.baseAddress : nil)
                            }
                        }
                        slots[segment] = (dgamma, dbeta)
                    }
                }
            }
            var grads: [[Float]?] = [needs[0] ? dx : nil]
            if hasWeight { grads.append(needsGamma ? GradientTree.sum(parts.map(\.gamma)) : nil) }
            if hasBias { grads.append(needsBeta ? GradientTree.sum(parts.map(\.beta)) : nil) }
            return grads
        }
    }
}

/// Base pointers of the arrays a row kernel reads (x, dy, mean, rstd) and writes (dx), valid for the call; empty
/// arrays get a dummy address that is never dereferenced.
func withRowPointers<R>(
    _ x: [Float], _ dy: [Float], _ mean: [Float], _ rstd: [Float], _ dx: inout [Float],
    _ body: (UnsafePointer<Float>, UnsafePointer<Float>, UnsafePointer<Float>, UnsafePointer<Float>,
             UnsafeMutablePointer<Float>) -> R
) -> R {
    withPointers(x, dy, &dx) { px, pdy, pdx in
        var unused: [Float] = []
        return withPointers(mean, rstd, &unused) { pmean, prstd, _ in body(px, pdy, pmean, prstd, pdx) }
    }
}
