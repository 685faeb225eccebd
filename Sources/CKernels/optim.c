// Optimizer updates over ranges of a flat parameter buffer. Every element is updated by the same fixed sequence
// of IEEE operations (no contraction, no reassociation), so the clones built for each ISA give identical bits.

#include "ckernels.h"
#include "clones.h"

#include <math.h>

CLONES
void tk_sgd_update(int64_t n, float *restrict p, const float *restrict g, float *restrict buf,
                   float lr, float momentum, float dampening, int nesterov, float weight_decay, int first_step) {
    for (int64_t i = 0; i < n; i++) {
        float d = g[i];
        if (weight_decay != 0.0f) d = d + weight_decay * p[i];
        if (momentum != 0.0f) {
            buf[i] = first_step ? d : momentum * buf[i] + (1.0f - dampening) * d;
            d = nesterov ? d + momentum * buf[i] : buf[i];
        }
        p[i] = p[i] - lr * d;
    }
}

CLONES
void tk_adam_update(int64_t n, float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
                    float lr, float beta1, float beta2, float eps, float l2_decay, float decoupled_decay,
                    float step_size, float correction2_sqrt) {
    for (int64_t i = 0; i < n; i++) {
        float param = p[i];
        float grad = g[i];
        if (decoupled_decay != 0.0f) param = param * (1.0f - lr * decoupled_decay);
        if (l2_decay != 0.0f) grad = grad + l2_decay * param;
        float mi = m[i] + (1.0f - beta1) * (grad - m[i]);
        float vi = beta2 * v[i] + (1.0f - beta2) * grad * grad;
        m[i] = mi;
        v[i] = vi;
        p[i] = param - step_size * mi / (sqrtf(vi) / correction2_sqrt + eps);
    }
}

double tk_divide_sum_of_squares(int64_t n, float divisor, float *y) {
    // Each value divided, then the same accumulation pattern as tk_sum_of_squares.
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            y[i + j] /= divisor;
            acc[j] += (double)y[i + j] * (double)y[i + j];
        }
    for (; i < n; i++) {
        y[i] /= divisor;
        acc[i & 7] += (double)y[i] * (double)y[i];
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

double tk_sum_of_squares(int64_t n, const float *x) {
    // Eight accumulators in a fixed pattern: fast, and the same order on every machine.
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += (double)x[i + j] * (double)x[i + j];
    for (; i < n; i++) acc[i & 7] += (double)x[i] * (double)x[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}
