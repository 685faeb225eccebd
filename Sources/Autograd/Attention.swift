import Kernels

extension Tensor {
    /// torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal: causal) for q, k, v [B, H, T, d]:
    /// S = q·kᵀ [T, T] per (batch, head), P = softmax(S/√d) over the keys (with `causal`, only keys j ≤ i),
    /// y = P·v [B, H, T, d].
    /// Backward: dP = dy·vᵀ, dv = Pᵀ·dy, dS = P ⊙ (dP − Σ_j dP·P)/√d, dq = dS·k, dk = dSᵀ·q.
    /// Each (batch, head) is independent; they run in parallel and nothing is summed across them. The products'
    /// inputs are in this thread's `MatmulPrecision`.
    public static func scaledDotProductAttention(query: Tensor, key: Tensor, value: Tensor, causal: Bool = true) -> Tensor {
        precondition(query.rank == 4, "attention: query must be [batch, heads, time, headDim], got \(query.shape)")
        precondition(key.shape == query.shape && value.shape == query.shape,
                     "attention: query, key and value must have one shape, got \(query.shape), \(key.shape), \(value.shape)")
        let time = query.shape[2], headDim = query.shape[3]
        let slices = query.shape[0] * query.shape[1]
        let scale = 1 / Float(headDim).squareRoot()
        let q = query.storage, k = key.storage, v = value.storage, precision = PassContext.currentPrecision
        let vectors = time * headDim, scores = time * time
        var probabilities = uninitializedFloats(slices * scores)
        var out = uninitializedFloats(q.count)
        withPointers(q, k, &probabilities) { pq, pk, pp in
            withPointers(v, [], &out) { pv, _, po in
                Parallel.forEach(slices) { slice in
                    let p = UnsafeMutableBufferPointer(start: pp + slice * scores, count: scores)
                    let qs = pq + slice * vectors, ks = pk + slice * vectors
                    var raw = uninitializedFloats(scores)
                    raw.withUnsafeMutableBufferPointer { s in
                        GEMM.multiply(GEMMShape(m: time, n: time, k: headDim, transposeB: true, precision: precision),
                                      qs, ks, s.baseAddress!)
                        if causal {
                            Softmax.causal(scores: UnsafeBufferPointer(s), time: time, scale: scale, into: p)
                        } else {
                            Elementwise.scale(s, by: scale)
                            Softmax.forward(UnsafeBufferPointer(s), rows: time, columns: time, into: p)
                        }
                    }
                    GEMM.multiply(GEMMShape(m: time, n: headDim, k: time, precision: precision), p.baseAddress!,
                                  pv + slice * vectors, po + slice * vectors)
                }
            }
        }
        return recorded(shape: query.shape, storage: out, inputs: [query, key, value]) { upstream, needs in
            var dq = needs[0] ? uninitializedFloats(q.count) : []
            var dk = needs[1] ? uninitializedFloats(k.count) : []
            var dv = needs[2] ? uninitializedFloats(v.count) : []
            withPointers(q, k, &dq) { pq, pk, pdq in
                withPointers(v, upstream, &dk) { pv, pdy, pdk in
                    withPointers(probabilities, [], &dv) { pp, _, pdv in
                        Parallel.forEach(slices) { slice in
                            let offset = slice * vectors
                            let p = UnsafeBufferPointer(start: pp + slice * scores, count: scores)
                            if needs[2] {  // dv [T, d] = Pᵀ · dy
                                GEMM.multiply(GEMMShape(m: time, n: headDim, k: time, transposeA: true, precision: precision),
                                              p.baseAddress!, pdy + offset, pdv + offset)
                            }
                            guard needs[0] || needs[1] else { return }
                            var dp = uninitializedFloats(scores), ds = uninitializedFloats(scores)
                            dp.withUnsafeMutableBufferPointer { dp in
                                ds.withUnsafeMutableBufferPointer { ds in
                                    // dP [T, T] = dy · vᵀ; dS = softmax backward, then the 1/√d of the forward.
                                    GEMM.multiply(GEMMShape(m: time, n: time, k: headDim, transposeB: true, precision: precision),
                                                  pdy + offset, pv + offset, dp.baseAddress!)
                                    Softmax.backward(output: p, upstream: UnsafeBufferPointer(dp), rows: time, columns: time,
                                                     into: ds)
                                    Elementwise.scale(ds, by: scale)
                                    if needs[0] {  // dq = dS · k
                                        GEMM.multiply(GEMMShape(m: time, n: headDim, k: time, precision: precision), ds.baseAddress!,
                                                      pk + offset, pdq + offset)
                                    }
                                    if needs[1] {  // dk = dSᵀ · q
                                        GEMM.multiply(GEMMShape(m: time, n: headDim, k: time, transposeA: true, precision: precision),
                                                      ds.baseAddress!, pq + offset, pdk + offset)
                                    }
                                }
                            }
                        }
                    }
                }
            }
            return [needs[0] ? dq : nil, needs[1] ? dk : nil, needs[2] ? dv : nil]
        }
    }
}
