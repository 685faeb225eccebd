#ifndef TRAINERD_CKERNELS_H
#define TRAINERD_CKERNELS_H

#include <stdint.h>

/// Vector instruction sets with a GEMM micro-kernel. Every ISA computes each output element as the same
/// sequence of fused multiply-adds, so results are bit-identical whichever one runs.
typedef enum {
    TK_ISA_SCALAR = 0,
    TK_ISA_AVX2 = 1,
    TK_ISA_AVX512 = 2,
    /// AVX-512 with AVX512-BF16: the same float32 kernels; mixed-precision products on `vdpbf16ps`.
    TK_ISA_AVX512_BF16 = 3,
} tk_isa;

/// The best ISA this CPU supports (detected once).
tk_isa tk_isa_detected(void);
/// The ISA in use: the detected one unless `tk_isa_force` chose a lower one.
tk_isa tk_isa_active(void);
/// Forces an ISA (clamped to the detected one); returns the ISA now active. For tests and benchmarks.
tk_isa tk_isa_force(tk_isa isa);
const char *tk_isa_name(tk_isa isa);

/// C[M,N] = (accumulate ? C : 0) + op(A)[M,K] · op(B)[K,N], row-major with leading dimensions.
/// op(A) = A ([M,K], lda) or, with transA, Aᵀ where A is [K,M]; op(B) = B ([K,N], ldb) or, with transB, Bᵀ
/// where B is [N,K]. Each C element is one chain c = fma(a_k, b_k, c) for k = 0..K-1 starting from its initial
/// value, whatever the ISA, blocking or caller's partition of C.
///
/// With bf16 (mixed precision), every element of op(A) and op(B) is rounded to bfloat16 (nearest, ties to even)
/// and the sums stay float32: the chain runs over k in pairs (2p, 2p + 1), a missing last odd element being 0,
/// c = fma(a₂ₚ₊₁, b₂ₚ₊₁, c); c = fma(a₂ₚ, b₂ₚ, c) — the order of AVX512-BF16's vdpbf16ps, which runs it where the
/// CPU has it (a product of bfloat16 values is exact in float32, so each step rounds once there too; that
/// instruction also flushes denormals, which the other ISAs do not).
void tk_sgemm(int transA, int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
              float *C, int ldc, int accumulate, int bf16);

/// The plain triple loop with the same chain: the reference the fast path is tested against.
void tk_sgemm_reference(int transA, int transB, int M, int N, int K, const float *A, int lda, const float *B,
                        int ldb, float *C, int ldc, int accumulate, int bf16);

/// Weight gradients summed per micro-batch and combined in the gradient tree, without materialising the
/// per-micro-batch products: C[M,N] = tree over s of A_sᵀ · B_s, where A_s and B_s are rows
/// [s·segment_rows, (s+1)·segment_rows) of A [rows, M] and B [rows, N]. Each A_sᵀ·B_s is the same chain
/// as `tk_sgemm` with transA (and bf16); the tree is node(start, 2w) = node(start, w) + node(start + w, w) over
/// segments 0..<segments (a missing right half leaves the left unchanged). Bit-identical to
/// `tk_sgemm_tn_segmented_reference`, for any ISA and any partition of C's columns.
void tk_sgemm_tn_segmented(int M, int N, int segment_rows, int segments, const float *A, int lda,
                           const float *B, int ldb, float *C, int ldc, int bf16);
void tk_sgemm_tn_segmented_reference(int M, int N, int segment_rows, int segments, const float *A, int lda,
                                     const float *B, int ldb, float *C, int ldc, int bf16);

// MARK: elementwise, [n]

/// y = max(x, 0)
void tk_relu_forward(int64_t n, const float *x, float *y);
/// dx = dy where x > 0, else 0
void tk_relu_backward(int64_t n, const float *x, const float *dy, float *dx);
/// y = tanh(x)
void tk_tanh_forward(int64_t n, const float *x, float *y);
/// dx = dy · (1 − y²), from the forward output y
void tk_tanh_backward(int64_t n, const float *y, const float *dy, float *dx);
/// y = 1 / (1 + exp(−x))
void tk_sigmoid_forward(int64_t n, const float *x, float *y);
/// dx = dy · y · (1 − y), from the forward output y
void tk_sigmoid_backward(int64_t n, const float *y, const float *dy, float *dx);
/// y += x
void tk_add_inplace(int64_t n, const float *x, float *y);
/// How many of x[0..<n] are NaN or ±∞.
int64_t tk_count_nonfinite(int64_t n, const float *x);
/// out = a + b.
void tk_add(int64_t n, const float *a, const float *b, float *out);
/// y *= x, elementwise
void tk_mul_inplace(int64_t n, const float *x, float *y);
/// y *= s
void tk_scale_inplace(int64_t n, float s, float *y);

// MARK: rows of a [rows, cols] matrix

/// y[r, c] = x[r, c] + bias[c]
void tk_add_row_vector(int rows, int cols, const float *x, const float *bias, float *y);
/// y[r, c] = max(x[r, c] + bias[c], 0): the bias and ReLU of a layer in one pass (y may be x).
void tk_add_row_vector_relu(int rows, int cols, const float *x, const float *bias, float *y);
/// out[c] = Σ_r x[r, c], summed in row order
void tk_sum_rows(int rows, int cols, const float *x, float *out);
/// y[r, :] = softmax(x[r, :]) = exp(x − max) / Σ exp(x − max)
void tk_softmax_rows(int rows, int cols, const float *x, float *y);
/// y[r, :] = x[r, :] − max − log Σ exp(x − max)
void tk_log_softmax_rows(int rows, int cols, const float *x, float *y);
/// dx[r, :] = y ⊙ (dy − Σ_c dy·y), from the softmax output y
void tk_softmax_backward_rows(int rows, int cols, const float *y, const float *dy, float *dx);
/// dx[r, :] = dy − softmax(x) · Σ_c dy, from the log-softmax output y (softmax = exp(y))
void tk_log_softmax_backward_rows(int rows, int cols, const float *y, const float *dy, float *dx);
/// Cross-entropy of logits [rows, cols] against class labels: losses[r] = −log softmax(x[r])[label[r]].
/// Writes softmax probabilities to probs (for the backward pass). Returns the first row whose label is
/// outside 0..<cols, or −1.
int tk_cross_entropy_forward(int rows, int cols, const float *logits, const int32_t *labels,
                             float *probs, float *losses);
/// dlogits[r, :] = scale · (probs[r, :] − onehot(label[r]))
void tk_cross_entropy_backward(int rows, int cols, const float *probs, const int32_t *labels,
                               float scale, float *dlogits);


// MARK: optimizers, over n elements of a flat buffer (see Optim for the formulas)

/// torch.optim.SGD: d = g + wd·p; buf = first ? d : μ·buf + (1 − dampening)·d; d = nesterov ? d + μ·buf : buf;
/// p −= lr·d. `buf` is unused when momentum is 0.
void tk_sgd_update(int64_t n, float *p, const float *g, float *buf, float lr, float momentum, float dampening,
                   int nesterov, float weight_decay, int first_step);
/// Adam/AdamW: p ·= 1 − lr·decoupled; g += l2·p; m += (1 − β1)(g − m); v = β2·v + (1 − β2)·g²;
/// p −= step_size · m / (√v / correction2_sqrt + eps), with step_size = lr/(1 − β1ᵗ), correction2_sqrt = √(1 − β2ᵗ).
void tk_adam_update(int64_t n, float *p, const float *g, float *m, float *v, float lr, float beta1, float beta2,
                    float eps, float l2_decay, float decoupled_decay, float step_size, float correction2_sqrt);
/// Σ x² in double, with a fixed summation order.
double tk_sum_of_squares(int64_t n, const float *x);
/// y /= divisor (a division, not a multiplication by the reciprocal), then Σ y² exactly as `tk_sum_of_squares`
/// computes it, in one pass over y.
double tk_divide_sum_of_squares(int64_t n, float divisor, float *y);

// MARK: Transformer rows (see transformer.c)
/// LayerNorm of each row of x [rows, cols] (biased variance): mean[r], rstd[r] = 1/√(var + eps),
/// y = (x − mean)·rstd·γ + β. gamma and beta may be NULL (1 and 0).
void tk_layernorm_forward(int rows, int cols, const float *x, const float *gamma, const float *beta, float eps,
                          float *y, float *mean, float *rstd);
/// With x̂ = (x − mean)·rstd and dx̂ = dy·γ: dx = rstd·(dx̂ − mean_c(dx̂) − x̂·mean_c(dx̂·x̂)); dγ = Σ_r dy·x̂ and
/// dβ = Σ_r dy over these rows in row order (written, not accumulated). dx, dgamma, dbeta may be NULL.
void tk_layernorm_backward(int rows, int cols, const float *x, const float *gamma, const float *mean,
                           const float *rstd, const float *dy, float *dx, float *dgamma, float *dbeta);
/// GELU, tanh form: y = ½x(1 + tanh(√(2/π)(x + 0.044715x³))).
void tk_gelu_tanh_forward(int64_t n, const float *x, float *y);
/// dx = dy·(½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²)), t as in the forward, from the input x.
void tk_gelu_tanh_backward(int64_t n, const float *x, const float *dy, float *dx);
/// GELU, exact form: y = ½x(1 + erf(x/√2)) = x·Φ(x).
void tk_gelu_erf_forward(int64_t n, const float *x, float *y);
/// dx = dy·(Φ(x) + x·φ(x)), from the input x.
void tk_gelu_erf_backward(int64_t n, const float *x, const float *dy, float *dx);
/// Causal softmax of a [T, T] score matrix: row i is softmax(scale·scores[i, 0...i]) and 0 after column i.
void tk_causal_softmax(int T, float scale, const float *scores, float *probs);
/// y = x with axes 1 and 3 of the view [outer, n1, mid, n2, inner] swapped: y[o, j, m, i, r] = x[o, i, m, j, r].
void tk_swap_axes(long outer, long n1, long mid, long n2, long inner, const float *x, float *y);
/// Dropout mask for element e of sample s: with F SplitMix64's finaliser, k = F(seed ^ F(site + 0x5851F42D4C957F2D))
/// and h = F(F(k ^ (first_sample + s)) ^ F(e)); mask = 0 where the top 24 bits of h are below threshold (p·2²⁴),
/// else keep (1/(1 − p)).
void tk_dropout_mask(long samples, long per_sample, uint64_t seed, uint64_t site, long first_sample,
                     uint32_t threshold, float keep, float *mask);
#endif
