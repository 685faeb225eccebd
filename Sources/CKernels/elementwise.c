// Elementwise and row-wise kernels. Each output element depends on one fixed sequence of operations, so
// splitting rows or elements across threads never changes a bit. Built with -ffp-contract=off: no implicit FMA.

#include "ckernels.h"
#include "clones.h"

#include <math.h>

CLONES
void tk_relu_forward(int64_t n, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

CLONES
void tk_relu_backward(int64_t n, const float *x, const float *dy, float *dx) {
    for (int64_t i = 0; i < n; i++) {
        float upstream = dy[i];  // loaded unconditionally, so the loop is a compare and a mask
        dx[i] = x[i] > 0.0f ? upstream : 0.0f;
    }
}

void tk_tanh_forward(int64_t n, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] = tanhf(x[i]);
}

CLONES
void tk_tanh_backward(int64_t n, const float *y, const float *dy, float *dx) {
    for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
}

void tk_sigmoid_forward(int64_t n, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) {
        // Two branches so that exp never overflows.
        if (x[i] >= 0.0f) {
            y[i] = 1.0f / (1.0f + expf(-x[i]));
        } else {
            float e = expf(x[i]);
            y[i] = e / (1.0f + e);
        }
    }
}

CLONES
void tk_sigmoid_backward(int64_t n, const float *y, const float *dy, float *dx) {
    for (int64_t i = 0; i < n; i++) dx[i] = dy[i] * y[i] * (1.0f - y[i]);
}

CLONES
void tk_add_inplace(int64_t n, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

CLONES
void tk_add(int64_t n, const float *a, const float *b, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

CLONES
int64_t tk_count_nonfinite(int64_t n, const float *x) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        __builtin_memcpy(&bits, x + i, sizeof bits);
        count += (bits & 0x7f800000u) == 0x7f800000u;  // exponent all ones: ±∞ or NaN
    }
    return count;
}

CLONES
void tk_mul_inplace(int64_t n, const float *x, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] *= x[i];
}

CLONES
void tk_scale_inplace(int64_t n, float s, float *y) {
    for (int64_t i = 0; i < n; i++) y[i] *= s;
}

CLONES
void tk_add_row_vector(int rows, int cols, const float *x, const float *bias, float *y) {
    for (long r = 0; r < rows; r++)
        for (long c = 0; c < cols; c++) y[r * cols + c] = x[r * cols + c] + bias[c];
}

CLONES
void tk_add_row_vector_relu(int rows, int cols, const float *x, const float *bias, float *y) {
    for (long r = 0; r < rows; r++)
        for (long c = 0; c < cols; c++) {
            float z = x[r * cols + c] + bias[c];
            y[r * cols + c] = z > 0.0f ? z : 0.0f;
        }
}

CLONES
void tk_sum_rows(int rows, int cols, const float *x, float *out) {
    for (long c = 0; c < cols; c++) out[c] = 0.0f;
    for (long r = 0; r < rows; r++)
        for (long c = 0; c < cols; c++) out[c] += x[r * cols + c];
}

static float row_max(int cols, const float *x) {
    float m = x[0];
    for (int c = 1; c < cols; c++) m = x[c] > m ? x[c] : m;
    return m;
}

void tk_softmax_rows(int rows, int cols, const float *x, float *y) {
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float m = row_max(cols, xr);
        float total = 0.0f;
        for (int c = 0; c < cols; c++) {
            yr[c] = expf(xr[c] - m);
            total += yr[c];
        }
        float inv = 1.0f / total;
        for (int c = 0; c < cols; c++) yr[c] *= inv;
    }
}

void tk_log_softmax_rows(int rows, int cols, const float *x, float *y) {
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float m = row_max(cols, xr);
        float total = 0.0f;
        for (int c = 0; c < cols; c++) total += expf(xr[c] - m);
        float shift = m + logf(total);
        for (int c = 0; c < cols; c++) yr[c] = xr[c] - shift;
    }
}

void tk_softmax_backward_rows(int rows, int cols, const float *y, const float *dy, float *dx) {
    for (long r = 0; r < rows; r++) {
        const float *yr = y + r * cols, *dyr = dy + r * cols;
        float dot = 0.0f;
        for (int c = 0; c < cols; c++) dot += dyr[c] * yr[c];
        for (int c = 0; c < cols; c++) dx[r * cols + c] = yr[c] * (dyr[c] - dot);
    }
}

void tk_log_softmax_backward_rows(int rows, int cols, const float *y, const float *dy, float *dx) {
    for (long r = 0; r < rows; r++) {
        const float *yr = y + r * cols, *dyr = dy + r * cols;
        float total = 0.0f;
        for (int c = 0; c < cols; c++) total += dyr[c];
        for (int c = 0; c < cols; c++) dx[r * cols + c] = dyr[c] - expf(yr[c]) * total;
    }
}

int tk_cross_entropy_forward(int rows, int cols, const float *logits, const int32_t *labels,
                             float *probs, float *losses) {
    for (long r = 0; r < rows; r++) {
        if (labels[r] < 0 || labels[r] >= cols) return (int)r;
        const float *xr = logits + r * cols;
        float *pr = probs + r * cols;
        float m = row_max(cols, xr);
        float total = 0.0f;
        for (int c = 0; c < cols; c++) {
            pr[c] = expf(xr[c] - m);
            total += pr[c];
        }
        float inv = 1.0f / total;
        for (int c = 0; c < cols; c++) pr[c] *= inv;
        losses[r] = logf(total) + m - xr[labels[r]];
    }
    return -1;
}

void tk_cross_entropy_backward(int rows, int cols, const float *probs, const int32_t *labels,
                               float scale, float *dlogits) {
    for (long r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) {
            float target = c == labels[r] ? 1.0f : 0.0f;
            dlogits[r * cols + c] = scale * (probs[r * cols + c] - target);
        }
    }
}
