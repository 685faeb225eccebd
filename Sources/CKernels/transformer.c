// Row kernels of the Transformer ops: LayerNorm, GELU and the causal softmax. Every output element is the same
// IEEE operations in the same order on every ISA, so the bits never depend on the build or the thread count.
#include "ckernels.h"
#include "clones.h"
#include <math.h>
#include <stddef.h>

// MARK: LayerNorm

void tk_layernorm_forward(int rows, int cols, const float *x, const float *gamma, const float *beta, float eps,
                          float *y, float *mean, float *rstd) {
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float sum = 0.0f;
        for (int c = 0; c < cols; c++) sum += xr[c];
        float mu = sum / (float)cols;
        float squares = 0.0f;
        for (int c = 0; c < cols; c++) {
            float d = xr[c] - mu;
            squares += d * d;
        }
        float s = 1.0f / sqrtf(squares / (float)cols + eps);
        for (int c = 0; c < cols; c++) {
            float normalized = (xr[c] - mu) * s;
            yr[c] = normalized * (gamma ? gamma[c] : 1.0f) + (beta ? beta[c] : 0.0f);
        }
        mean[r] = mu;
        rstd[r] = s;
    }
}

void tk_layernorm_backward(int rows, int cols, const float *x, const float *gamma, const float *mean,
                           const float *rstd, const float *dy, float *dx, float *dgamma, float *dbeta) {
    if (dgamma) for (int c = 0; c < cols; c++) dgamma[c] = 0.0f;
    if (dbeta) for (int c = 0; c < cols; c++) dbeta[c] = 0.0f;
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * cols, *dyr = dy + r * cols;
        float mu = mean[r], s = rstd[r];
        float sum_dxhat = 0.0f, sum_dxhat_xhat = 0.0f;
        for (int c = 0; c < cols; c++) {
            float xhat = (xr[c] - mu) * s;
            float dxhat = dyr[c] * (gamma ? gamma[c] : 1.0f);
            sum_dxhat += dxhat;
            sum_dxhat_xhat += dxhat * xhat;
            if (dgamma) dgamma[c] += dyr[c] * xhat;
            if (dbeta) dbeta[c] += dyr[c];
        }
        if (!dx) continue;
        float mean_dxhat = sum_dxhat / (float)cols, mean_dxhat_xhat = sum_dxhat_xhat / (float)cols;
        float *dxr = dx + r * cols;
        for (int c = 0; c < cols; c++) {
            float xhat = (xr[c] - mu) * s;
            float dxhat = dyr[c] * (gamma ? gamma[c] : 1.0f);
            dxr[c] = s * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
        }
    }
}

// MARK: GELU

#define GELU_TANH_C 0.7978845608028654f  // √(2/π)
#define GELU_TANH_A 0.044715f
#define INV_SQRT2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

// exp from IEEE additions and multiplications only (no libm call), so the GELU loops vectorise and give the same
// bits on every ISA: Cephes' expf (x = n·ln2 + r, |r| ≤ ln2/2, degree-6 polynomial), within 2 ulp.
static inline float exp_arith(float x) {
    x = x > 88.0f ? 88.0f : (x < -87.0f ? -87.0f : x);
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * (r * r) + r + 1.0f;
    union { int32_t i; float f; } scale = { .i = ((int32_t)n + 127) << 23 };
    return y * scale.f;
}

// With u = √(2/π)(x + 0.044715x³), t = tanh(u) and e = e^{−2|u|} ≤ 1: 1 + t = 2/(1 + e) for u ≥ 0 and
// 2e/(1 + e) below, 1 − t² = 4e/(1 + e)². Neither subtracts nearly equal numbers, so both stay accurate to a
// few ulps where 1 + tanh(u) would cancel (large negative x).
static inline float gelu_one_plus_tanh(float u, float *one_minus_t2) {
    float e = exp_arith(-2.0f * fabsf(u));
    float inverse = 1.0f / (1.0f + e);
    *one_minus_t2 = 4.0f * e * inverse * inverse;
    return u >= 0.0f ? 2.0f * inverse : 2.0f * e * inverse;
}

CLONES
void tk_gelu_tanh_forward(int64_t n, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i], unused;
        y[i] = 0.5f * v * gelu_one_plus_tanh(GELU_TANH_C * (v + GELU_TANH_A * v * v * v), &unused);
    }
}

CLONES
void tk_gelu_tanh_backward(int64_t n, const float *x, const float *dy, float *dx) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i], one_minus_t2;
        float one_plus_t = gelu_one_plus_tanh(GELU_TANH_C * (v + GELU_TANH_A * v * v * v), &one_minus_t2);
        float du = GELU_TANH_C * (1.0f + 3.0f * GELU_TANH_A * v * v);
        dx[i] = dy[i] * (0.5f * one_plus_t + 0.5f * v * one_minus_t2 * du);
    }
}

void tk_gelu_erf_forward(int64_t n, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * INV_SQRT2));
}

void tk_gelu_erf_backward(int64_t n, const float *x, const float *dy, float *dx) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + erff(v * INV_SQRT2));
        float pdf = INV_SQRT_2PI * expf(-0.5f * v * v);
        dx[i] = dy[i] * (cdf + v * pdf);
    }
}

// MARK: causal softmax

void tk_causal_softmax(int T, float scale, const float *scores, float *probs) {
    for (long i = 0; i < T; i++) {
        const float *s = scores + i * T;
        float *p = probs + i * T;
        float m = s[0] * scale;
        for (long j = 1; j <= i; j++) {
            float v = s[j] * scale;
            if (v > m) m = v;
        }
        float total = 0.0f;
        for (long j = 0; j <= i; j++) {
            p[j] = expf(s[j] * scale - m);
            total += p[j];
        }
        float inv = 1.0f / total;
        for (long j = 0; j <= i; j++) p[j] *= inv;
        for (long j = i + 1; j < T; j++) p[j] = 0.0f;
    }
}

// MARK: layout and masks

void tk_swap_axes(long outer, long n1, long mid, long n2, long inner, const float *x, float *y) {
    for (long o = 0; o < outer; o++)
        for (long j = 0; j < n2; j++)
            for (long m = 0; m < mid; m++)
                for (long i = 0; i < n1; i++) {
                    const float *source = x + ((((o * n1 + i) * mid + m) * n2 + j) * inner);
                    float *destination = y + ((((o * n2 + j) * mid + m) * n1 + i) * inner);
                    for (long r = 0; r < inner; r++) destination[r] = source[r];
                }
}

static inline uint64_t splitmix_finalize(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void tk_dropout_mask(long samples, long per_sample, uint64_t seed, uint64_t site, long first_sample,
                     uint32_t threshold, float keep, float *mask) {
    uint64_t site_key = splitmix_finalize(seed ^ splitmix_finalize(site + 0x5851F42D4C957F2Dull));
    for (long s = 0; s < samples; s++) {
        uint64_t sample_key = splitmix_finalize(site_key ^ (uint64_t)(first_sample + s));
        for (long e = 0; e < per_sample; e++) {
            uint32_t draw = (uint32_t)(splitmix_finalize(sample_key ^ splitmix_finalize((uint64_t)e)) >> 40);
            mask[s * per_sample + e] = draw < threshold ? 0.0f : keep;
        }
    }
}
