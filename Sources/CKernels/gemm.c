// Packed, cache-blocked SGEMM with one register-tiled micro-kernel per ISA (GotoBLAS/BLIS loop order).
//
// Determinism: every output element is the single chain c = fma(a_k, b_k, c), k ascending, starting from 0 or
// from C (in bf16 mode, over bfloat16 pairs: see tk_sgemm). K-blocking stores c and reloads it, which changes
// nothing; edge tiles run the same micro-kernel on a zero-padded copy. So the result is the same bits for every
// ISA, block size and partition of C.

#include "ckernels.h"
#include "clones.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86_KERNELS 1
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

// MARK: ISA selection

static int detected_isa = -1;
static int active_isa = -1;

tk_isa tk_isa_detected(void) {
    if (detected_isa < 0) {
        detected_isa = TK_ISA_SCALAR;
#ifdef HAVE_X86_KERNELS
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) {
            detected_isa = __builtin_cpu_supports("avx512bf16") ? TK_ISA_AVX512_BF16 : TK_ISA_AVX512;
        } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            detected_isa = TK_ISA_AVX2;
        }
#endif
    }
    return (tk_isa)detected_isa;
}

tk_isa tk_isa_active(void) {
    if (active_isa < 0) active_isa = tk_isa_detected();
    return (tk_isa)active_isa;
}

tk_isa tk_isa_force(tk_isa isa) {
    tk_isa best = tk_isa_detected();
    active_isa = isa > best ? best : isa;
    return (tk_isa)active_isa;
}

const char *tk_isa_name(tk_isa isa) {
    switch (isa) {
    case TK_ISA_AVX512_BF16: return "avx512-bf16";
    case TK_ISA_AVX512: return "avx512";
    case TK_ISA_AVX2: return "avx2";
    default: return "scalar";
    }
}

// MARK: micro-kernels
// Ap: MR×kc packed k-major (MR values per k). Bp: kc×NR packed k-major (NR values per k).
// C tile [MR, NR] with row stride ldc; load_c selects whether the chain starts from C or from 0.

typedef void (*micro_kernel)(int kc, const float *Ap, const float *Bp, float *C, long ldc, int load_c);

#define SCALAR_MR 4
#define SCALAR_NR 8

static void micro_kernel_scalar(int kc, const float *Ap, const float *Bp, float *C, long ldc, int load_c) {
    float c[SCALAR_MR][SCALAR_NR];
    for (int i = 0; i < SCALAR_MR; i++)
        for (int j = 0; j < SCALAR_NR; j++) c[i][j] = load_c ? C[i * ldc + j] : 0.0f;
    for (int k = 0; k < kc; k++) {
        for (int i = 0; i < SCALAR_MR; i++)
            for (int j = 0; j < SCALAR_NR; j++) c[i][j] = fmaf(Ap[i], Bp[j], c[i][j]);
        Ap += SCALAR_MR;
        Bp += SCALAR_NR;
    }
    for (int i = 0; i < SCALAR_MR; i++)
        for (int j = 0; j < SCALAR_NR; j++) C[i * ldc + j] = c[i][j];
}

#define AVX2_MR 6
#define AVX2_NR 16
#define AVX512_MR 12
#define AVX512_NR 32

#ifdef HAVE_X86_KERNELS

// One kernel per row count: a tile of fewer than MR rows (the bottom edge of C) runs a kernel that computes only
// its rows, straight into C. Every element is still the same fma chain, so the bits do not depend on the tile.
#define DEFINE_AVX2_KERNEL(ROWS)                                                                                    \
    __attribute__((target("avx2,fma"))) static void micro_kernel_avx2_##ROWS(                                       \
        int kc, const float *Ap, const float *Bp, float *C, long ldc, int load_c) {                                 \
        __m256 c[ROWS][2];                                                                                          \
        _Pragma("clang loop unroll(full)") for (int i = 0; i < ROWS; i++) {                                         \
            c[i][0] = load_c ? _mm256_loadu_ps(C + i * ldc) : _mm256_setzero_ps();                                  \
            c[i][1] = load_c ? _mm256_loadu_ps(C + i * ldc + 8) : _mm256_setzero_ps();                              \
        }                                                                                                           \
        for (int k = 0; k < kc; k++) {                                                                              \
            __m256 b0 = _mm256_loadu_ps(Bp);                                                                        \
            __m256 b1 = _mm256_loadu_ps(Bp + 8);                                                                    \
            _Pragma("clang loop unroll(full)") for (int i = 0; i < ROWS; i++) {                                     \
                __m256 a = _mm256_broadcast_ss(Ap + i);                                                             \
                c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);                                                          \
                c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);                                                          \
            }                                                                                                       \
            Ap += AVX2_MR;                                                                                          \
            Bp += AVX2_NR;                                                                                          \
        }                                                                                                           \
        _Pragma("clang loop unroll(full)") for (int i = 0; i < ROWS; i++) {                                         \
            _mm256_storeu_ps(C + i * ldc, c[i][0]);                                                                 \
            _mm256_storeu_ps(C + i * ldc + 8, c[i][1]);                                                             \
        }                                                                                                           \
    }

#define DEFINE_AVX512_KERNEL(ROWS)                                                                                  \
    __attribute__((target("avx512f,fma"))) static void micro_kernel_avx512_##ROWS(                                  \
        int kc, const float *Ap, const float *Bp, float *C, long ldc, int load_c) {                                 \
        __m512 c[ROWS][2];                                                                                          \
        _Pragma("clang loop unroll(full)") for (int i = 0; i < ROWS; i++) {                                         \
            c[i][0] = load_c ? _mm512_loadu_ps(C + i * ldc) : _mm512_setzero_ps();                                  \
            c[i][1] = load_c ? _mm512_loadu_ps(C + i * ldc + 16) : _mm512_setzero_ps();                             \
        }                                                                                                           \
        for (int k = 0; k < kc; k++) {                                                                              \
            __m512 b0 = _mm512_loadu_ps(Bp);                                                                        \
            __m512 b1 = _mm512_loadu_ps(Bp + 16);                                                                   \
            _Pragma("clang loop unroll(full)") for (int i = 0; i < ROWS; i++) {                                     \
                __m512 a = _mm512_set1_ps(Ap[i]);                                                                   \
                c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);                                                          \
                c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);                                                          \
            }                                                                                                       \
            Ap += AVX512_MR;                                                                                        \
            Bp += AVX512_NR;                                                                                        \
        }                                                                                                           \
        _Pragma("clang loop unroll(full)") for (int i = 0; i < ROWS; i++) {                                         \
            _mm512_storeu_ps(C + i * ldc, c[i][0]);                                                                 \
            _mm512_storeu_ps(C + i * ldc + 16, c[i][1]);                                                            \
        }                                                                                                           \
    }

DEFINE_AVX2_KERNEL(1) DEFINE_AVX2_KERNEL(2) DEFINE_AVX2_KERNEL(3) DEFINE_AVX2_KERNEL(4) DEFINE_AVX2_KERNEL(5)
DEFINE_AVX2_KERNEL(6)
DEFINE_AVX512_KERNEL(1) DEFINE_AVX512_KERNEL(2) DEFINE_AVX512_KERNEL(3) DEFINE_AVX512_KERNEL(4)
DEFINE_AVX512_KERNEL(5) DEFINE_AVX512_KERNEL(6) DEFINE_AVX512_KERNEL(7) DEFINE_AVX512_KERNEL(8)
DEFINE_AVX512_KERNEL(9) DEFINE_AVX512_KERNEL(10) DEFINE_AVX512_KERNEL(11) DEFINE_AVX512_KERNEL(12)

/// Indexed by the number of rows, 1...MR.
static const micro_kernel avx2_kernels[AVX2_MR + 1] = {
    NULL, micro_kernel_avx2_1, micro_kernel_avx2_2, micro_kernel_avx2_3, micro_kernel_avx2_4, micro_kernel_avx2_5,
    micro_kernel_avx2_6,
};
static const micro_kernel avx512_kernels[AVX512_MR + 1] = {
    NULL, micro_kernel_avx512_1, micro_kernel_avx512_2, micro_kernel_avx512_3, micro_kernel_avx512_4,
    micro_kernel_avx512_5, micro_kernel_avx512_6, micro_kernel_avx512_7, micro_kernel_avx512_8,
    micro_kernel_avx512_9, micro_kernel_avx512_10, micro_kernel_avx512_11, micro_kernel_avx512_12,
};

#endif

typedef struct {
    micro_kernel kernel;
    int mr, nr;
    /// Kernels for tiles of 1...mr rows (NULL: pad short tiles instead).
    const micro_kernel *by_rows;
} kernel_shape;

static kernel_shape active_kernel(void) {
    switch (tk_isa_active()) {
#ifdef HAVE_X86_KERNELS
    case TK_ISA_AVX512_BF16:
    case TK_ISA_AVX512: return (kernel_shape){micro_kernel_avx512_12, AVX512_MR, AVX512_NR, avx512_kernels};
    case TK_ISA_AVX2: return (kernel_shape){micro_kernel_avx2_6, AVX2_MR, AVX2_NR, avx2_kernels};
#endif
    default: return (kernel_shape){micro_kernel_scalar, SCALAR_MR, SCALAR_NR, NULL};
    }
}

// MARK: bfloat16 pair micro-kernels (mixed precision)
// Ap: MR × ⌈kc/2⌉ pairs, Bp: ⌈kc/2⌉ × NR pairs (panel_to_bf16_pairs); the first argument counts pairs. Each C
// element is the chain c = fma(a_odd, b_odd, c); c = fma(a_even, b_even, c), pair by pair (see tk_sgemm).

static inline float bf16_low(uint32_t pair) { uint32_t u = pair << 16; float f; memcpy(&f, &u, 4); return f; }
static inline float bf16_high(uint32_t pair) { uint32_t u = pair & 0xffff0000u; float f; memcpy(&f, &u, 4); return f; }

#define PAIR_KERNEL_BODY(MR, NR)                                                                                \
    float acc[MR][NR];                                                                                         \
    for (int i = 0; i < MR; i++)                                                                               \
        for (int j = 0; j < NR; j++) acc[i][j] = load_c ? C[i * ldc + j] : 0.0f;                               \
    const uint32_t *a = (const uint32_t *)Ap, *b = (const uint32_t *)Bp;                                       \
    for (int p = 0; p < pairs; p++) {                                                                          \
        float b_low[NR], b_high[NR];                                                                           \
        for (int j = 0; j < NR; j++) { b_low[j] = bf16_low(b[p * NR + j]); b_high[j] = bf16_high(b[p * NR + j]); } \
        for (int i = 0; i < MR; i++) {                                                                         \
            float a_low = bf16_low(a[p * MR + i]), a_high = bf16_high(a[p * MR + i]);                          \
            for (int j = 0; j < NR; j++) {                                                                     \
                acc[i][j] = fmaf(a_high, b_high[j], acc[i][j]);                                                \
                acc[i][j] = fmaf(a_low, b_low[j], acc[i][j]);                                                  \
            }                                                                                                  \
        }                                                                                                      \
    }                                                                                                          \
    for (int i = 0; i < MR; i++)                                                                               \
        for (int j = 0; j < NR; j++) C[i * ldc + j] = acc[i][j];

static void pair_kernel_scalar(int pairs, const float *Ap, const float *Bp, float *C, long ldc, int load_c) {
    PAIR_KERNEL_BODY(SCALAR_MR, SCALAR_NR)
}

#ifdef HAVE_X86_KERNELS
__attribute__((target("avx2,fma")))
static void pair_kernel_avx2(int pairs, const float *Ap, const float *Bp, float *C, long ldc, int load_c) {
    PAIR_KERNEL_BODY(AVX2_MR, AVX2_NR)
}

__attribute__((target("avx512f,fma")))
static void pair_kernel_avx512(int pairs, const float *Ap, const float *Bp, float *C, long ldc, int load_c) {
    PAIR_KERNEL_BODY(AVX512_MR, AVX512_NR)
}

/// 12×32 on vdpbf16ps: per pair, two loads of B (32 columns), and for each row a broadcast of its pair and two
/// dot-product accumulations into 24 registers.
__attribute__((target("avx512f,avx512bf16")))
static void pair_kernel_avx512_bf16(int pairs, const float *Ap, const float *Bp, float *C, long ldc, int load_c) {
    __m512 c[AVX512_MR][2];
    for (int i = 0; i < AVX512_MR; i++) {
        c[i][0] = load_c ? _mm512_loadu_ps(C + i * ldc) : _mm512_setzero_ps();
        c[i][1] = load_c ? _mm512_loadu_ps(C + i * ldc + 16) : _mm512_setzero_ps();
    }
    const int *a = (const int *)Ap;
    for (int p = 0; p < pairs; p++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(Bp + (long)p * AVX512_NR);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(Bp + (long)p * AVX512_NR + 16);
        for (int i = 0; i < AVX512_MR; i++) {
            __m512bh ai = (__m512bh)_mm512_set1_epi32(a[p * AVX512_MR + i]);
            c[i][0] = _mm512_dpbf16_ps(c[i][0], ai, b0);
            c[i][1] = _mm512_dpbf16_ps(c[i][1], ai, b1);
        }
    }
    for (int i = 0; i < AVX512_MR; i++) {
        _mm512_storeu_ps(C + i * ldc, c[i][0]);
        _mm512_storeu_ps(C + i * ldc + 16, c[i][1]);
    }
}
#endif

static kernel_shape active_pair_kernel(void) {
    switch (tk_isa_active()) {
#ifdef HAVE_X86_KERNELS
    case TK_ISA_AVX512_BF16: return (kernel_shape){pair_kernel_avx512_bf16, AVX512_MR, AVX512_NR, NULL};
    case TK_ISA_AVX512: return (kernel_shape){pair_kernel_avx512, AVX512_MR, AVX512_NR, NULL};
    case TK_ISA_AVX2: return (kernel_shape){pair_kernel_avx2, AVX2_MR, AVX2_NR, NULL};
#endif
    default: return (kernel_shape){pair_kernel_scalar, SCALAR_MR, SCALAR_NR, NULL};
    }
}

// MARK: packing

static inline float element_of_A(int transA, const float *A, long lda, long row, long k) {
    return transA ? A[k * lda + row] : A[row * lda + k];
}

static inline float element_of_B(int transB, const float *B, long ldb, long k, long col) {
    return transB ? B[col * ldb + k] : B[k * ldb + col];
}

/// dst[k·ldd + r] = src[r·lds + k] for r < rows, k < cols: a strided transpose, the slow part of packing an
/// operand whose k runs along its rows. Copies only; 8×8 tiles go through AVX registers when the CPU has them.
static void transpose_copy(const float *src, long lds, int rows, int cols, float *dst, long ldd);

/// The bfloat16 nearest to the float32 with bits u (ties to even), as its 16 bits. NaN stays NaN.
static inline uint32_t bf16_bits_of(uint32_t u) {
    return (u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

static inline uint32_t bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return bf16_bits_of(u);
}

/// Rewrites a packed panel [kc, width ≤ 32] (k-major floats) in place as [⌈kc/2⌉, width] bfloat16 pairs: 32 bits per
/// (pair, column), k = 2p in the low half and k = 2p + 1 in the high half (0 past kc). The panel's start does not
/// move, so the packed offsets stay valid.
CLONES
static void panel_to_bf16_pairs(float *panel, int kc, int width) {
    uint32_t row[32];
    for (int p = 0; p < (kc + 1) / 2; p++) {
        const uint32_t *even = (const uint32_t *)(panel + (long)(2 * p) * width);
        const uint32_t *odd = even + width;
        if (2 * p + 1 < kc) {
            for (int i = 0; i < width; i++) row[i] = bf16_bits_of(even[i]) | (bf16_bits_of(odd[i]) << 16);
        } else {
            for (int i = 0; i < width; i++) row[i] = bf16_bits_of(even[i]);
        }
        memcpy(panel + (long)p * width, row, sizeof(uint32_t) * (size_t)width);
    }
}

/// Converts every panel of a packed block (panels of `width` rows or columns, `kc` deep each) to bf16 pairs.
static void block_to_bf16_pairs(float *packed, int panels, int kc, int width) {
    for (int q = 0; q < panels; q++) panel_to_bf16_pairs(packed + (long)q * kc * width, kc, width);
}

/// Packs op(A)[rows, kc] into micro-panels of mr rows, k-major; rows past `rows` are zero.
static void pack_A(int transA, const float *A, long lda, int rows, int kc, int mr, float *dst) {
    for (int p = 0; p < rows; p += mr) {
        int valid = rows - p < mr ? rows - p : mr;
        if (!transA) {
            transpose_copy(A + (long)p * lda, lda, valid, kc, dst, mr);
            for (int i = valid; i < mr; i++)
                for (int k = 0; k < kc; k++) dst[k * mr + i] = 0.0f;
            dst += (long)kc * mr;
        } else {
            for (int k = 0; k < kc; k++) {
                const float *src = A + (long)k * lda + p;
                for (int i = 0; i < valid; i++) dst[i] = src[i];
                for (int i = valid; i < mr; i++) dst[i] = 0.0f;
                dst += mr;
            }
        }
    }
}

/// dst[r·ldd + j] = src[r·lds + j] for r < rows, j < cols: short rows (a packed panel, a tile) that are not worth
/// a memcpy call each.
static void copy_rows(const float *src, long lds, int rows, int cols, float *dst, long ldd);

/// Packs op(B)[kc, cols] into micro-panels of nr columns, k-major; columns past `cols` are zero.
static void pack_B(int transB, const float *B, long ldb, int kc, int cols, int nr, float *dst) {
    for (int p = 0; p < cols; p += nr) {
        int valid = cols - p < nr ? cols - p : nr;
        if (!transB) {
            copy_rows(B + p, ldb, kc, valid, dst, nr);
            if (valid < nr)
                for (int k = 0; k < kc; k++)
                    for (int j = valid; j < nr; j++) dst[k * nr + j] = 0.0f;
            dst += (long)kc * nr;
        } else {
            transpose_copy(B + (long)p * ldb, ldb, valid, kc, dst, nr);
            for (int j = valid; j < nr; j++)
                for (int k = 0; k < kc; k++) dst[k * nr + j] = 0.0f;
            dst += (long)kc * nr;
        }
    }
}

static void copy_rows_scalar(const float *src, long lds, int rows, int cols, float *dst, long ldd) {
    for (int r = 0; r < rows; r++) memcpy(dst + r * ldd, src + r * lds, sizeof(float) * (size_t)cols);
}

#ifdef HAVE_X86_KERNELS
__attribute__((target("avx512f")))
static void copy_rows_avx512(const float *src, long lds, int rows, int cols, float *dst, long ldd) {
    int full = cols / 16 * 16;
    __mmask16 tail = (__mmask16)((1u << (cols - full)) - 1);
    for (int r = 0; r < rows; r++) {
        const float *from = src + r * lds;
        float *to = dst + r * ldd;
        for (int j = 0; j < full; j += 16) _mm512_storeu_ps(to + j, _mm512_loadu_ps(from + j));
        if (tail) _mm512_mask_storeu_ps(to + full, tail, _mm512_maskz_loadu_ps(tail, from + full));
    }
}
#endif

static void copy_rows(const float *src, long lds, int rows, int cols, float *dst, long ldd) {
#ifdef HAVE_X86_KERNELS
    if (tk_isa_active() >= TK_ISA_AVX512) return copy_rows_avx512(src, lds, rows, cols, dst, ldd);
#endif
    copy_rows_scalar(src, lds, rows, cols, dst, ldd);
}

static void transpose_copy_scalar(const float *src, long lds, int rows, int cols, float *dst, long ldd) {
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < cols; k++) dst[k * ldd + r] = src[r * lds + k];
}

#ifdef HAVE_X86_KERNELS
/// One 8×8 tile: dst[k·ldd + r] = src[r·lds + k], r, k < 8 (the unpack/shuffle/permute transpose).
__attribute__((target("avx2")))
static inline void transpose_8x8(const float *src, long lds, float *dst, long ldd) {
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + lds);
    __m256 r2 = _mm256_loadu_ps(src + 2 * lds), r3 = _mm256_loadu_ps(src + 3 * lds);
    __m256 r4 = _mm256_loadu_ps(src + 4 * lds), r5 = _mm256_loadu_ps(src + 5 * lds);
    __m256 r6 = _mm256_loadu_ps(src + 6 * lds), r7 = _mm256_loadu_ps(src + 7 * lds);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(dst + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/// One 4×4 tile, as `transpose_8x8`.
__attribute__((target("avx2")))
static inline void transpose_4x4(const float *src, long lds, float *dst, long ldd) {
    __m128 r0 = _mm_loadu_ps(src), r1 = _mm_loadu_ps(src + lds);
    __m128 r2 = _mm_loadu_ps(src + 2 * lds), r3 = _mm_loadu_ps(src + 3 * lds);
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    _mm_storeu_ps(dst, r0);
    _mm_storeu_ps(dst + ldd, r1);
    _mm_storeu_ps(dst + 2 * ldd, r2);
    _mm_storeu_ps(dst + 3 * ldd, r3);
}
#endif

static void transpose_copy(const float *src, long lds, int rows, int cols, float *dst, long ldd) {
#ifdef HAVE_X86_KERNELS
    if (tk_isa_active() >= TK_ISA_AVX2) {
        int rows8 = rows / 8 * 8, rows4 = rows / 4 * 4, cols8 = cols / 8 * 8, cols4 = cols / 4 * 4;
        for (int r = 0; r < rows8; r += 8)
            for (int k = 0; k < cols8; k += 8) transpose_8x8(src + r * lds + k, lds, dst + k * ldd + r, ldd);
        for (int r = rows8; r < rows4; r += 4)
            for (int k = 0; k < cols4; k += 4) transpose_4x4(src + r * lds + k, lds, dst + k * ldd + r, ldd);
        // The ragged right and bottom edges, element by element.
        if (cols8 < cols) transpose_copy_scalar(src + cols8, lds, rows8, cols - cols8, dst + cols8 * ldd, ldd);
        if (rows8 < rows4 && cols4 < cols)
            transpose_copy_scalar(src + rows8 * lds + cols4, lds, rows4 - rows8, cols - cols4, dst + cols4 * ldd + rows8, ldd);
        if (rows4 < rows) transpose_copy_scalar(src + rows4 * lds, lds, rows - rows4, cols, dst + rows4, ldd);
        return;
    }
#endif
    transpose_copy_scalar(src, lds, rows, cols, dst, ldd);
}

// MARK: blocked driver

enum { BLOCK_MC = 96, BLOCK_KC = 256, BLOCK_NC = 512 };

typedef struct {
    float *data;
    size_t capacity;
} scratch;

static _Thread_local scratch packed_a_scratch, packed_b_scratch;

static float *reserve(scratch *s, size_t count) {
    if (s->capacity < count) {
        free(s->data);
        size_t bytes = (count * sizeof(float) + 63) / 64 * 64;
        s->data = aligned_alloc(64, bytes);
        s->capacity = s->data ? count : 0;
    }
    return s->data;
}

void tk_sgemm(int transA, int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
              float *C, int ldc, int accumulate, int bf16) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!accumulate)
            for (long i = 0; i < M; i++) memset(C + i * ldc, 0, sizeof(float) * (size_t)N);
        return;
    }
    kernel_shape ks = bf16 ? active_pair_kernel() : active_kernel();
    int mr = ks.mr, nr = ks.nr;
    int mc_max = BLOCK_MC / mr * mr;
    int nc_max = N < BLOCK_NC ? N : BLOCK_NC;
    // Equal K blocks (784 = 4 × 196, not 3 × 256 + 16): a short last block would reload C for little work. With
    // bf16 pairs the blocks are even, so that only the chain's end can hold a padding zero.
    int k_blocks = (K + BLOCK_KC - 1) / BLOCK_KC;
    int kc_max = (K + k_blocks - 1) / k_blocks;
    if (bf16) kc_max += kc_max & 1;
    int mc_alloc = M < mc_max ? M : mc_max;
    float *Ap = reserve(&packed_a_scratch, (size_t)((mc_alloc + mr - 1) / mr * mr) * (size_t)kc_max);
    float *Bp = reserve(&packed_b_scratch, (size_t)((nc_max + nr - 1) / nr * nr) * (size_t)kc_max);
    if (!Ap || !Bp) {
        tk_sgemm_reference(transA, transB, M, N, K, A, lda, B, ldb, C, ldc, accumulate, bf16);
        return;
    }
    float edge[AVX512_MR * AVX512_NR];

    for (int jc = 0; jc < N; jc += nc_max) {
        int nc = N - jc < nc_max ? N - jc : nc_max;
        for (int pc = 0; pc < K; pc += kc_max) {
            int kc = K - pc < kc_max ? K - pc : kc_max;
            int load_c = accumulate || pc > 0;
            const float *Bblock = transB ? B + (long)jc * ldb + pc : B + (long)pc * ldb + jc;
            pack_B(transB, Bblock, ldb, kc, nc, nr, Bp);
            if (bf16) block_to_bf16_pairs(Bp, (nc + nr - 1) / nr, kc, nr);
            int chain = bf16 ? (kc + 1) / 2 : kc;  // what the micro-kernel steps through
            for (int ic = 0; ic < M; ic += mc_max) {
                int mc = M - ic < mc_max ? M - ic : mc_max;
                const float *Ablock = transA ? A + (long)pc * lda + ic : A + (long)ic * lda + pc;
                pack_A(transA, Ablock, lda, mc, kc, mr, Ap);
                if (bf16) block_to_bf16_pairs(Ap, (mc + mr - 1) / mr, kc, mr);
                for (int jr = 0; jr < nc; jr += nr) {
                    int cols = nc - jr < nr ? nc - jr : nr;
                    for (int ir = 0; ir < mc; ir += mr) {
                        int rows = mc - ir < mr ? mc - ir : mr;
                        float *Ctile = C + (long)(ic + ir) * ldc + jc + jr;
                        const float *Apanel = Ap + (long)ir * kc;
                        const float *Bpanel = Bp + (long)jr * kc;
                        if (rows == mr && cols == nr) {
                            ks.kernel(chain, Apanel, Bpanel, Ctile, ldc, load_c);
                        } else if (cols == nr && ks.by_rows) {
                            ks.by_rows[rows](chain, Apanel, Bpanel, Ctile, ldc, load_c);
                        } else {
                            for (int i = 0; i < mr; i++)
                                for (int j = 0; j < nr; j++)
                                    edge[i * nr + j] = (load_c && i < rows && j < cols) ? Ctile[(long)i * ldc + j] : 0.0f;
                            ks.kernel(chain, Apanel, Bpanel, edge, nr, load_c);
                            for (int i = 0; i < rows; i++)
                                for (int j = 0; j < cols; j++) Ctile[(long)i * ldc + j] = edge[i * nr + j];
                        }
                    }
                }
            }
        }
    }
}

void tk_sgemm_reference(int transA, int transB, int M, int N, int K, const float *A, int lda, const float *B,
                        int ldb, float *C, int ldc, int accumulate, int bf16) {
    for (long i = 0; i < M; i++) {
        for (long j = 0; j < N; j++) {
            float c = accumulate ? C[i * ldc + j] : 0.0f;
            if (!bf16) {
                for (long k = 0; k < K; k++)
                    c = fmaf(element_of_A(transA, A, lda, i, k), element_of_B(transB, B, ldb, k, j), c);
            } else {
                for (long k = 0; k < K; k += 2) {
                    uint32_t a_even = bf16_bits(element_of_A(transA, A, lda, i, k)) << 16;
                    uint32_t b_even = bf16_bits(element_of_B(transB, B, ldb, k, j)) << 16;
                    uint32_t a_odd = k + 1 < K ? bf16_bits(element_of_A(transA, A, lda, i, k + 1)) << 16 : 0;
                    uint32_t b_odd = k + 1 < K ? bf16_bits(element_of_B(transB, B, ldb, k + 1, j)) << 16 : 0;
                    c = fmaf(bf16_high(a_odd), bf16_high(b_odd), c);
                    c = fmaf(bf16_high(a_even), bf16_high(b_even), c);
                }
            }
            C[i * ldc + j] = c;
        }
    }
}

// MARK: segmented Aᵀ·B with the gradient tree

static void add_tile_scalar(float *left, const float *right, int count) {
    for (int i = 0; i < count; i++) left[i] += right[i];
}

#ifdef HAVE_X86_KERNELS
__attribute__((target("avx512f")))
static void add_tile_avx512(float *left, const float *right, int count) {
    int i = 0;
    for (; i + 16 <= count; i += 16) _mm512_storeu_ps(left + i, _mm512_add_ps(_mm512_loadu_ps(left + i), _mm512_loadu_ps(right + i)));
    for (; i < count; i++) left[i] += right[i];
}

__attribute__((target("avx2")))
static void add_tile_avx2(float *left, const float *right, int count) {
    int i = 0;
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(left + i, _mm256_add_ps(_mm256_loadu_ps(left + i), _mm256_loadu_ps(right + i)));
    for (; i < count; i++) left[i] += right[i];
}
#endif

/// Adds tile `right` into `left` (both MR×NR, contiguous): left[i] = left[i] + right[i], whatever the ISA.
static void add_tile(float *left, const float *right, int count) {
#ifdef HAVE_X86_KERNELS
    if (tk_isa_active() >= TK_ISA_AVX512) return add_tile_avx512(left, right, count);
    if (tk_isa_active() >= TK_ISA_AVX2) return add_tile_avx2(left, right, count);
#endif
    add_tile_scalar(left, right, count);
}

void tk_sgemm_tn_segmented(int M, int N, int segment_rows, int segments, const float *A, int lda,
                           const float *B, int ldb, float *C, int ldc, int bf16) {
    if (M <= 0 || N <= 0) return;
    if (segment_rows <= 0 || segments <= 0) {
        for (long i = 0; i < M; i++) memset(C + i * ldc, 0, sizeof(float) * (size_t)N);
        return;
    }
    kernel_shape ks = bf16 ? active_pair_kernel() : active_kernel();
    int mr = ks.mr, nr = ks.nr;
    int chain = bf16 ? (segment_rows + 1) / 2 : segment_rows;  // what the micro-kernel steps through
    long rows = (long)segment_rows * segments;
    int mc_max = BLOCK_MC / mr * mr;
    // Keep the packed B block (all segments' rows × nc) around 256 KB.
    int nc_max = (int)((1L << 16) / rows) / nr * nr;
    if (nc_max < nr) nc_max = nr;
    if (nc_max > BLOCK_NC) nc_max = BLOCK_NC;
    if (nc_max > N) nc_max = N;
    int mc_alloc = M < mc_max ? M : mc_max;
    float *Ap = reserve(&packed_a_scratch, (size_t)((mc_alloc + mr - 1) / mr * mr) * (size_t)rows);
    float *Bp = reserve(&packed_b_scratch, (size_t)((nc_max + nr - 1) / nr * nr) * (size_t)rows);
    if (!Ap || !Bp) {
        tk_sgemm_tn_segmented_reference(M, N, segment_rows, segments, A, lda, B, ldb, C, ldc, bf16);
        return;
    }
    int tile = mr * nr;
    // Partial sums waiting to be combined: at most one per tree level, plus the newest.
    float stack[34][AVX512_MR * AVX512_NR];
    int sizes[34];

    for (int jc = 0; jc < N; jc += nc_max) {
        int nc = N - jc < nc_max ? N - jc : nc_max;
        int ncp = (nc + nr - 1) / nr * nr;
        for (int s = 0; s < segments; s++)
            pack_B(0, B + (long)s * segment_rows * ldb + jc, ldb, segment_rows, nc, nr, Bp + (long)s * segment_rows * ncp);
        if (bf16)
            for (int s = 0; s < segments; s++) block_to_bf16_pairs(Bp + (long)s * segment_rows * ncp, ncp / nr, segment_rows, nr);
        for (int ic = 0; ic < M; ic += mc_max) {
            int mc = M - ic < mc_max ? M - ic : mc_max;
            int mcp = (mc + mr - 1) / mr * mr;
            for (int s = 0; s < segments; s++)
                pack_A(1, A + (long)s * segment_rows * lda + ic, lda, mc, segment_rows, mr, Ap + (long)s * segment_rows * mcp);
            if (bf16)
                for (int s = 0; s < segments; s++)
                    block_to_bf16_pairs(Ap + (long)s * segment_rows * mcp, mcp / mr, segment_rows, mr);
            for (int jr = 0; jr < nc; jr += nr) {
                int cols = nc - jr < nr ? nc - jr : nr;
                for (int ir = 0; ir < mc; ir += mr) {
                    int rows_here = mc - ir < mr ? mc - ir : mr;
                    int depth = 0;
                    for (int s = 0; s < segments; s++) {
                        const float *Apanel = Ap + (long)s * segment_rows * mcp + (long)ir * segment_rows;
                        const float *Bpanel = Bp + (long)s * segment_rows * ncp + (long)jr * segment_rows;
                        ks.kernel(chain, Apanel, Bpanel, stack[depth], nr, 0);
                        int size = 1;
                        // Node (start, 2w) = node(start, w) + node(start + w, w): merge equal-sized neighbours.
                        while (depth > 0 && sizes[depth - 1] == size) {
                            add_tile(stack[depth - 1], stack[depth], tile);
                            depth--;
                            size *= 2;
                        }
                        sizes[depth++] = size;
                    }
                    // A truncated tree (segments not a power of two): combine the rest from the right.
                    while (depth > 1) {
                        add_tile(stack[depth - 2], stack[depth - 1], tile);
                        depth--;
                    }
                    copy_rows(stack[0], nr, rows_here, cols, C + (long)(ic + ir) * ldc + jc + jr, ldc);
                }
            }
        }
    }
}

void tk_sgemm_tn_segmented_reference(int M, int N, int segment_rows, int segments, const float *A, int lda,
                                     const float *B, int ldb, float *C, int ldc, int bf16) {
    // Each segment's product by the reference GEMM, then the tree over segments, bottom-up.
    size_t count = (size_t)M * (size_t)N;
    float *parts = malloc(sizeof(float) * count * (size_t)(segments > 0 ? segments : 1));
    for (int s = 0; s < segments; s++)
        tk_sgemm_reference(1, 0, M, N, segment_rows, A + (long)s * segment_rows * lda, lda,
                        B + (long)s * segment_rows * ldb, ldb, parts + count * (size_t)s, N, 0, bf16);
    for (int width = 1; width < segments; width *= 2)
        for (int start = 0; start + width < segments; start += 2 * width)
            add_tile(parts + count * (size_t)start, parts + count * (size_t)(start + width), (int)count);
    for (long i = 0; i < M; i++)
        for (long j = 0; j < N; j++) C[i * ldc + j] = segments > 0 ? parts[i * N + j] : 0.0f;
    free(parts);
}
