/* Register-blocked tile products for attention (see tile_gemm.h). Each
 * 16-column panel of op(B) is first copied into a contiguous, zero-padded
 * [K, 16] buffer: the source rows are often a power-of-two stride apart (a
 * head's slice of a [T, H*d] row), which would thrash L1 sets, and the copy
 * also absorbs the transpose. The AVX2 kernel then keeps a 6 x 16 block of C
 * in twelve ymm registers (the Haswell layout). Without AVX2 a plain loop does
 * the same arithmetic. */
#include <stdlib.h>

#include "nn/tile_gemm.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#define FMA_ROW(r)                                                                                                     \
    do {                                                                                                               \
        const __m256 x = _mm256_broadcast_ss(a##r + off);                                                             \
        c##r##0 = _mm256_fmadd_ps(x, b0, c##r##0);                                                                     \
        c##r##1 = _mm256_fmadd_ps(x, b1, c##r##1);                                                                     \
    } while (0)

#define STORE_ROW(r)                                                                                                   \
    do {                                                                                                               \
        if (r < mr) {                                                                                                  \
            float *cr = C + (size_t)r * ldc;                                                                           \
            __m256 v0 = _mm256_mul_ps(va, c##r##0), v1 = _mm256_mul_ps(va, c##r##1);                                  \
            if (nr == 16) {                                                                                            \
                if (acc) v0 = _mm256_add_ps(v0, _mm256_loadu_ps(cr)), v1 = _mm256_add_ps(v1, _mm256_loadu_ps(cr + 8)); \
                _mm256_storeu_ps(cr, v0);                                                                              \
                _mm256_storeu_ps(cr + 8, v1);                                                                          \
            } else {                                                                                                   \
                if (acc)                                                                                               \
                    v0 = _mm256_add_ps(v0, _mm256_maskload_ps(cr, m0)),                                                \
                    v1 = _mm256_add_ps(v1, _mm256_maskload_ps(cr + 8, m1));                                            \
                _mm256_maskstore_ps(cr, m0, v0);                                                                       \
                _mm256_maskstore_ps(cr + 8, m1, v1);                                                                   \
            }                                                                                                          \
        }                                                                                                              \
    } while (0)

/* One block of mr <= 6 rows and nr <= 16 columns. Row r of op(A) is element
 * k at A + r*ra + k*ka. Bp is the packed [K, 16] panel. */
static void kern_6x16(int K, float alpha, const float *A, size_t ra, size_t ka, const float *Bp, int acc, float *C,
                      int ldc, int mr, int nr) {
    /* Rows past mr alias row 0: computed, never stored, never out of bounds. */
    const float *a0 = A, *a1 = A + (mr > 1 ? 1 : 0) * ra, *a2 = A + (mr > 2 ? 2 : 0) * ra,
                *a3 = A + (mr > 3 ? 3 : 0) * ra, *a4 = A + (mr > 4 ? 4 : 0) * ra, *a5 = A + (mr > 5 ? 5 : 0) * ra;
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
           c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    size_t off = 0;
    for (int k = 0; k < K; k++, off += ka) {
        const __m256 b0 = _mm256_loadu_ps(Bp + (size_t)k * 16), b1 = _mm256_loadu_ps(Bp + (size_t)k * 16 + 8);
        FMA_ROW(0); FMA_ROW(1); FMA_ROW(2); FMA_ROW(3); FMA_ROW(4); FMA_ROW(5);
    }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), lane);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8), lane);
    const __m256 va = _mm256_set1_ps(alpha);
    STORE_ROW(0); STORE_ROW(1); STORE_ROW(2); STORE_ROW(3); STORE_ROW(4); STORE_ROW(5);
}

/* dst[r * 16 + c] = rows[c][r] for an 8 x 8 block: eight source rows of eight floats. */
static inline void transpose8(float *dst, const float *const *rows, int k) {
    __m256 r0 = _mm256_loadu_ps(rows[0] + k), r1 = _mm256_loadu_ps(rows[1] + k), r2 = _mm256_loadu_ps(rows[2] + k),
           r3 = _mm256_loadu_ps(rows[3] + k), r4 = _mm256_loadu_ps(rows[4] + k), r5 = _mm256_loadu_ps(rows[5] + k),
           r6 = _mm256_loadu_ps(rows[6] + k), r7 = _mm256_loadu_ps(rows[7] + k);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
           t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
           t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
           u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
           u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
           u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst + 0 * 16, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(dst + 1 * 16, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(dst + 2 * 16, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(dst + 3 * 16, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(dst + 4 * 16, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(dst + 5 * 16, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(dst + 6 * 16, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(dst + 7 * 16, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* Bp [K, 16] = columns j0 .. j0+nr of op(B), zero beyond nr. Vector copies:
 * these run once per panel and must stay small next to the K*M*16 FMAs. */
static void pack_panel(float *Bp, int tB, const float *B, int ldb, int K, int j0, int nr) {
    if (!tB) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), lane);
        const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8), lane);
        for (int k = 0; k < K; k++) {
            const float *src = B + (size_t)k * ldb + j0;
            float *dst = Bp + (size_t)k * 16;
            if (nr == 16) {
                _mm256_storeu_ps(dst, _mm256_loadu_ps(src));
                _mm256_storeu_ps(dst + 8, _mm256_loadu_ps(src + 8));
            } else {
                _mm256_storeu_ps(dst, _mm256_maskload_ps(src, m0));
                _mm256_storeu_ps(dst + 8, _mm256_maskload_ps(src + 8, m1));
            }
        }
        return;
    }
    /* Transposed: Bp[k, c] = B[j0 + c, k], by 8 x 8 register transposes. */
    int k8 = 0;
    for (int half = 0; half < 2; half++) {
        const int c0 = half * 8;
        if (nr >= c0 + 8) {
            const float *rows[8];
            for (int c = 0; c < 8; c++) rows[c] = B + (size_t)(j0 + c0 + c) * ldb;
            for (k8 = 0; k8 + 8 <= K; k8 += 8) transpose8(Bp + (size_t)k8 * 16 + c0, rows, k8);
        } else {
            k8 = 0;
        }
        for (int c = c0; c < c0 + 8; c++)
            for (int k = (nr >= c0 + 8 ? k8 : 0); k < K; k++) Bp[(size_t)k * 16 + c] = c < nr ? B[(size_t)(j0 + c) * ldb + k] : 0.0f;
    }
}

void zl_tile_gemm(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                  int acc, float *C, int ldc) {
    float stackbuf[16 * 1024];
    float *Bp = K <= 1024 ? stackbuf : malloc(sizeof(float) * 16 * (size_t)K);
    if (!Bp) { /* no memory for the panel: the portable loop below needs none */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float s = 0.0f;
                for (int k = 0; k < K; k++)
                    s += (tA ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                         (tB ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
                C[(size_t)i * ldc + j] = alpha * s + (acc ? C[(size_t)i * ldc + j] : 0.0f);
            }
        return;
    }
    const size_t ra = tA ? 1 : (size_t)lda, ka = tA ? (size_t)lda : 1;
    for (int j0 = 0; j0 < N; j0 += 16) {
        const int nr = N - j0 < 16 ? N - j0 : 16;
        pack_panel(Bp, tB, B, ldb, K, j0, nr);
        for (int i0 = 0; i0 < M; i0 += 6) {
            const int mr = M - i0 < 6 ? M - i0 : 6;
            kern_6x16(K, alpha, A + i0 * ra, ra, ka, Bp, acc, C + (size_t)i0 * ldc + j0, ldc, mr, nr);
        }
    }
    if (Bp != stackbuf) free(Bp);
}

#else

void zl_tile_gemm(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                  int acc, float *C, int ldc) {
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        for (int j = 0; j < N; j++) {
            float s = 0.0f;
            for (int k = 0; k < K; k++)
                s += (tA ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                     (tB ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
            c[j] = alpha * s + (acc ? c[j] : 0.0f);
        }
    }
}

#endif
