/* Register-blocked tile products for attention (see tile_gemm.h). Each
 * PW-column panel of op(B) is first copied into a contiguous, zero-padded
 * [K, PW] buffer: the source rows are often a power-of-two stride apart (a
 * head's slice of a [T, H*d] row), which would thrash L1 sets, and the copy
 * also absorbs the transpose. With AVX-512 the kernel keeps a 12 x 32 block of
 * C in 24 zmm registers (PW = 32); with AVX2 a 6 x 16 block in twelve ymm
 * registers (PW = 16, the Haswell layout). Without AVX2 a plain loop does the
 * same arithmetic. Every path sums each element's K products in order, one
 * fused multiply-add at a time. */
#include <stdlib.h>

#include "nn/tile_gemm.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#if defined(__AVX512F__)
#define PW 32
#define MR 12
#else
#define PW 16
#define MR 6
#endif

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

#if defined(__AVX512F__)
#define FMA_ROW16(r)                                                                                                   \
    do {                                                                                                               \
        const __m512 x = _mm512_set1_ps(a##r[off]);                                                                   \
        c##r##0 = _mm512_fmadd_ps(x, b0, c##r##0);                                                                     \
        c##r##1 = _mm512_fmadd_ps(x, b1, c##r##1);                                                                     \
    } while (0)

#define STORE_ROW16(r)                                                                                                 \
    do {                                                                                                               \
        if (r < mr) {                                                                                                  \
            float *cr = C + (size_t)r * ldc;                                                                           \
            __m512 v0 = _mm512_mul_ps(va, c##r##0), v1 = _mm512_mul_ps(va, c##r##1);                                  \
            if (acc)                                                                                                   \
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cr)),                                                 \
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cr + 16));                                            \
            _mm512_mask_storeu_ps(cr, m0, v0);                                                                         \
            _mm512_mask_storeu_ps(cr + 16, m1, v1);                                                                    \
        }                                                                                                              \
    } while (0)

/* One block of mr <= 12 rows and nr <= 32 columns. Row r of op(A) is element
 * k at A + r*ra + k*ka. Bp is the packed [K, 32] panel. */
static void kern(int K, float alpha, const float *A, size_t ra, size_t ka, const float *Bp, int acc, float *C, int ldc,
                 int mr, int nr) {
    /* Rows past mr alias row 0: computed, never stored, never out of bounds. */
#define AROW(r) const float *a##r = A + (mr > r ? r : 0) * ra
    AROW(0); AROW(1); AROW(2); AROW(3); AROW(4); AROW(5); AROW(6); AROW(7); AROW(8); AROW(9); AROW(10); AROW(11);
#undef AROW
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
           c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00, c80 = c00,
           c81 = c00, c90 = c00, c91 = c00, c100 = c00, c101 = c00, c110 = c00, c111 = c00;
    size_t off = 0;
    for (int k = 0; k < K; k++, off += ka) {
        const __m512 b0 = _mm512_loadu_ps(Bp + (size_t)k * 32), b1 = _mm512_loadu_ps(Bp + (size_t)k * 32 + 16);
        FMA_ROW16(0); FMA_ROW16(1); FMA_ROW16(2); FMA_ROW16(3); FMA_ROW16(4); FMA_ROW16(5);
        FMA_ROW16(6); FMA_ROW16(7); FMA_ROW16(8); FMA_ROW16(9); FMA_ROW16(10); FMA_ROW16(11);
    }
    const __mmask16 m0 = (__mmask16)(nr >= 16 ? 0xFFFF : (1u << nr) - 1u);
    const __mmask16 m1 = (__mmask16)(nr >= 32 ? 0xFFFF : nr <= 16 ? 0 : (1u << (nr - 16)) - 1u);
    const __m512 va = _mm512_set1_ps(alpha);
    STORE_ROW16(0); STORE_ROW16(1); STORE_ROW16(2); STORE_ROW16(3); STORE_ROW16(4); STORE_ROW16(5);
    STORE_ROW16(6); STORE_ROW16(7); STORE_ROW16(8); STORE_ROW16(9); STORE_ROW16(10); STORE_ROW16(11);
}
#else
/* One block of mr <= 6 rows and nr <= 16 columns. Row r of op(A) is element
 * k at A + r*ra + k*ka. Bp is the packed [K, 16] panel. */
static void kern(int K, float alpha, const float *A, size_t ra, size_t ka, const float *Bp, int acc, float *C, int ldc,
                 int mr, int nr) {
    /* Rows past mr alias row 0: computed, never stored, never out of bounds. */
    const float *a0 = A, *a1 = A + (mr > 1 ? 1 : 0) * ra, *a2 = A + (mr > 2 ? 2 : 0) * ra,
                *a3 = A + (mr > 3 ? 3 : 0) * ra, *a4 = A + (mr > 4 ? 4 : 0) * ra, *a5 = A + (mr > 5 ? 5 : 0) * ra;
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
           c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    size_t off = 0;
    for (int k = 0; k < K; k++, off += ka) {
        const __m256 b0 = _mm256_loadu_ps(Bp + (size_t)k * PW), b1 = _mm256_loadu_ps(Bp + (size_t)k * PW + 8);
        FMA_ROW(0); FMA_ROW(1); FMA_ROW(2); FMA_ROW(3); FMA_ROW(4); FMA_ROW(5);
    }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), lane);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8), lane);
    const __m256 va = _mm256_set1_ps(alpha);
    STORE_ROW(0); STORE_ROW(1); STORE_ROW(2); STORE_ROW(3); STORE_ROW(4); STORE_ROW(5);
}

#endif

/* dst[r * PW + c] = rows[c][r] for an 8 x 8 block: eight source rows of eight floats. */
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
    _mm256_storeu_ps(dst + 0 * PW, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(dst + 1 * PW, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(dst + 2 * PW, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(dst + 3 * PW, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(dst + 4 * PW, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(dst + 5 * PW, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(dst + 6 * PW, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(dst + 7 * PW, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* Bp [K, PW] = columns j0 .. j0+nr of op(B), zero beyond nr. Vector copies:
 * these run once per panel and must stay small next to the K*M*PW FMAs. */
static void pack_panel(float *Bp, int tB, const float *B, int ldb, int K, int j0, int nr) {
    if (!tB) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (int k = 0; k < K; k++) {
            const float *src = B + (size_t)k * ldb + j0;
            float *dst = Bp + (size_t)k * PW;
            for (int c = 0; c < PW; c += 8) {
                if (nr >= c + 8) {
                    _mm256_storeu_ps(dst + c, _mm256_loadu_ps(src + c));
                } else {
                    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - c), lane);
                    _mm256_storeu_ps(dst + c, _mm256_maskload_ps(src + c, m)); /* masked lanes read as 0 */
                }
            }
        }
        return;
    }
    /* Transposed: Bp[k, c] = B[j0 + c, k], by 8 x 8 register transposes. */
    for (int c0 = 0; c0 < PW; c0 += 8) {
        int k8 = 0;
        if (nr >= c0 + 8) {
            const float *rows[8];
            for (int c = 0; c < 8; c++) rows[c] = B + (size_t)(j0 + c0 + c) * ldb;
            for (k8 = 0; k8 + 8 <= K; k8 += 8) transpose8(Bp + (size_t)k8 * PW + c0, rows, k8);
        }
        for (int c = c0; c < c0 + 8; c++)
            for (int k = k8; k < K; k++) Bp[(size_t)k * PW + c] = c < nr ? B[(size_t)(j0 + c) * ldb + k] : 0.0f;
    }
}

void zl_tile_gemm(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                  int acc, float *C, int ldc) {
    float stackbuf[PW * 512];
    float *Bp = K <= 512 ? stackbuf : malloc(sizeof(float) * PW * (size_t)K);
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
    for (int j0 = 0; j0 < N; j0 += PW) {
        const int nr = N - j0 < PW ? N - j0 : PW;
        pack_panel(Bp, tB, B, ldb, K, j0, nr);
        for (int i0 = 0; i0 < M; i0 += MR) {
            const int mr = M - i0 < MR ? M - i0 : MR;
            kern(K, alpha, A + i0 * ra, ra, ka, Bp, acc, C + (size_t)i0 * ldc + j0, ldc, mr, nr);
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
