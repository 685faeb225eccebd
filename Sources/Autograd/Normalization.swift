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
        Normalization.layerNorm(x, rows: rows, columns: columns, gamma: gamma, beta: beta, eps: eps,
                                into: &out, mean: &mean, rstd: &rstd)
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
            withRowBuffers(x, upstream, mean, rstd, &dx) { x, dy, mean, rstd, dx in
                parts.withUnsafeMutableBufferPointer { slots in
                    Parallel.forEach(segments) { segment in
                        let rowRange = (segment * segmentRows)..<((segment + 1) * segmentRows)
                        let valueRange = (rowRange.lowerBound * columns)..<(rowRange.upperBound * columns)
                        var dgamma = needsGamma ? uninitializedFloats(columns) : []
                        var dbeta = needsBeta ? uninitializedFloats(columns) : []
                        dgamma.withUnsafeMutableBufferPointer { dgamma in
                            dbeta.withUnsafeMutableBufferPointer { dbeta in
                                Normalization.layerNormBackward(
                                    input: UnsafeBufferPointer(rebasing: x[valueRange]), gamma: gamma,
                                    mean: UnsafeBufferPointer(rebasing: mean[rowRange]),
                                    rstd: UnsafeBufferPointer(rebasing: rstd[rowRange]),
                                    upstream: UnsafeBufferPointer(rebasing: dy[valueRange]),
                                    rows: segmentRows, columns: columns,
                                    dx: needs[0] ? UnsafeMutableBufferPointer(rebasing: dx[valueRange]) : nil,
                                    dgamma: needsGamma ? dgamma : nil, dbeta: needsBeta ? dbeta : nil)
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

/// Buffers over the arrays a row kernel reads (x, dy, mean, rstd) and writes (dx), valid for the call.
func withRowBuffers<R>(
    _ x: [Float], _ dy: [Float], _ mean: [Float], _ rstd: [Float], _ dx: inout [Float],
    _ body: (UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>,
             UnsafeBufferPointer<Float>, UnsafeMutableBufferPointer<Float>) -> R
) -> R {
    x.withUnsafeBufferPointer { x in
        dy.withUnsafeBufferPointer { dy in
            mean.withUnsafeBufferPointer { mean in
                rstd.withUnsafeBufferPointer { rstd in
                    dx.withUnsafeMutableBufferPointer { dx in body(x, dy, mean, rstd, dx) }
                }
            }
        }
    }
}
