/* Products with a stored weight in bfloat16 on Intel AMX (the "bf16" and
 * "bf16x3" matmul precisions, zl_set_matmul_precision).
 *
 * bf16: both operands are rounded to bfloat16 (nearest even) and their
 * products are summed in float32 by the tile unit's TDPBF16PS, 16x16 outputs
 * at a time. That is the precision of PyTorch's bfloat16 autocast on CPU;
 * each product carries a relative error of about 2^-8.
 *
 * bf16x3: each operand value x is split into two bfloat16 parts, hi = x
 * rounded and lo = (x - hi) rounded (x - hi is exact), which leave about
 * 2^-16 |x|; the tiles sum hi hi + hi lo + lo hi in float32, dropping lo lo
 * (at most about 2^-16 |a b|). So each product is within 3.01 2^-16 |a b|,
 * typically about 2^-17 (a stored F16 weight splits exactly, which leaves only
 * the other factor's split), what PyTorch calls "high" float32 matmul precision
 * and oneMKL BF16X3. Packed operands then hold, per K block, the tile of high
 * parts and after it the tile of low parts (np = 2 parts). bench/RESULTS.md
 * measures what both do to a whole UNet.
 *
 * On a CPU without AMX-BF16 either setting is a permission only:
 * zl_bf16_active() is 0 and products stay float32.
 *
 * Layout. The tile unit multiplies A tiles (16 rows x 32 bfloat16 of K) by B
 * tiles in "VNNI" order (16 pairs of K x 16 columns, each pair adjacent).
 * Operands are packed as whole tiles: A as [row group][K block][16][32], B as
 * [column group][K block][16][16][2], zero-padded to 32 rows or columns and to
 * a multiple of 32 in K (zero products change no sum). Where they are packed:
 * - a weight once for all products (zl_bf16_pack_weight; the UNet does so at a
 *   weight's second use), or else its slice per block of zl_sgemm's grid,
 *   into a thread-local buffer;
 * - other B operands a panel of 32 columns at a time just before its products,
 *   except a convolution's columns: once per product, straight from the image
 *   (zl_bf16_pack_im2col) or from the input (zl_bf16_pack_cols).
 * The kernel computes 32x32 blocks of C from two A and two B tiles per K
 * block, accumulating onto C as it was (the caller has zeroed it or written
 * the bias). Every way of packing gives the same tiles, so the same bytes.
 *
 * Determinism: every element of C is one accumulator's sum over the K blocks
 * in order, whatever the block of the grid around it, so results do not
 * depend on the thread count (test_bf16 checks 1-4 threads bit for bit).
 *
 * For machines without AMX, tests can run the same packing and a scalar
 * model of the tile product (zl_bf16_emulate), so the packing and edge logic
 * are checked everywhere. */
#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "nn/bf16_tiles.h"
#include "nn/ops.h"
#include "ziplora/core.h"

#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16,f16c")))

static zl_matmul_precision g_prec = ZL_MATMUL_F32;
static int g_emulate;
static int g_amx = -1;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

/* AMX-BF16 is usable when the CPU has it, the OS saves the tile state
 * (XCR0 bits 17-18) and Linux grants this process the tile data
 * (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA). ZL_NO_AMX=1 in the
 * environment turns it off (to compare, or to test the fallback). */
static void amx_detect(void) {
    g_amx = 0;
    const char *off = getenv("ZL_NO_AMX");
    if (off && *off && strcmp(off, "0") != 0) return;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(1, 0, &a, &b, &c, &d)) return;
    if (!(c & (1u << 27)) || !(c & (1u << 29))) return; /* OSXSAVE, F16C */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    const int tile = (d >> 24) & 1, tbf16 = (d >> 22) & 1;
    const int avx512 = ((b >> 16) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1); /* F, BW, VL */
    if (!tile || !tbf16 || !avx512) return;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !((a >> 5) & 1)) return; /* AVX512_BF16 */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    const unsigned long long xcr0 = ((unsigned long long)hi << 32) | lo;
    if ((xcr0 & 0xE6) != 0xE6 || (xcr0 & (3ull << 17)) != (3ull << 17)) return;
#ifdef SYS_arch_prctl
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) != 0) return;
    g_amx = 1;
#endif
}

int zl_bf16_units(void) {
    pthread_once(&amx_once, amx_detect);
    return g_amx;
}

void zl_set_matmul_precision(zl_matmul_precision p) { g_prec = p; }
zl_matmul_precision zl_get_matmul_precision(void) { return g_prec; }
void zl_bf16_emulate(int on) { g_emulate = on; }
/* The tiles run the products (0: the scalar model, for tests). */
static int tiles(void) { return !g_emulate && zl_bf16_units() == 1; }
int zl_bf16_active(void) { return g_prec != ZL_MATMUL_F32 && (g_emulate || zl_bf16_units()); }
int zl_bf16_parts(void) { return g_prec == ZL_MATMUL_BF16X3 ? 2 : 1; }

/* ---- packing -------------------------------------------------------------
 * A source is a row-major matrix of `dt` values with leading dimension ld:
 * element (r, c) at src + (r * ld + c) * size. */
typedef struct {
    zl_dtype dt;
    const void *p;
    size_t ld;
    float mul; /* F32 sources: values multiplied by this before rounding (0: not) */
} msrc;

static inline float src_at(const msrc *s, size_t r, size_t c) {
    const size_t i = r * s->ld + c;
    switch (s->dt) {
    case ZL_DT_F32: { float f; memcpy(&f, (const char *)s->p + 4 * i, 4); return s->mul != 0.0f ? f * s->mul : f; }
    case ZL_DT_F16: { uint16_t h; memcpy(&h, (const char *)s->p + 2 * i, 2); return zl_f16_to_f32(h); }
    case ZL_DT_BF16: { uint16_t h; memcpy(&h, (const char *)s->p + 2 * i, 2); return zl_bf16_to_f32(h); }
    default: return 0.0f; /* not reached: gemm_stored takes float dtypes its loader accepted */
    }
}

static int ceil_to(int a, int b) { return (a + b - 1) / b * b; }

/* Part p of v in bfloat16: 0, v rounded; 1, what that rounding left, rounded
 * (0 where the first part is not finite). */
static inline uint16_t bf16_part(float v, int p) {
    const uint16_t h = zl_f32_to_bf16(v);
    if (!p) return h;
    const float hv = zl_bf16_to_f32(h);
    return isfinite(hv) ? zl_f32_to_bf16(v - hv) : 0;
}

/* A tiles of rows [r0, r0+m) x K of the logical matrix op(s) = s (rows of s),
 * into dst [ceil(m,32)/16][K32/32][16][32]. Scalar. */
static void pack_a_scalar(uint16_t *dst, const msrc *s, int r0, int m, int K, int np) {
    const int mg = ceil_to(m, 32) / 16, nkb = ceil_to(K, 32) / 32;
    for (int g = 0; g < mg; g++)
        for (int kb = 0; kb < nkb; kb++)
            for (int pt = 0; pt < np; pt++) {
                uint16_t *t = dst + (((size_t)g * nkb + kb) * np + pt) * 512;
                for (int r = 0; r < 16; r++)
                    for (int c = 0; c < 32; c++) {
                        const int row = g * 16 + r, k = kb * 32 + c;
                        t[r * 32 + c] = row < m && k < K ? bf16_part(src_at(s, (size_t)(r0 + row), (size_t)k), pt) : 0;
                    }
            }
}

/* B tiles of columns [c0, c0+n) of op(B) [K, N]: with nt, op(B) = s^T (s is
 * [N, K], a linear's weight); else op(B) = s ([K, N], im2col columns).
 * dst [ceil(n,32)/16][K32/32][16 pairs][16 columns][2]. Scalar. */
static void pack_b_scalar(uint16_t *dst, const msrc *s, int nt, int c0, int n, int K, int np) {
    const int ng = ceil_to(n, 32) / 16, nkb = ceil_to(K, 32) / 32;
    for (int g = 0; g < ng; g++)
        for (int kb = 0; kb < nkb; kb++) {
            uint16_t *t = dst + ((size_t)g * nkb + kb) * 512 * np;
            for (int p = 0; p < 16; p++)
                for (int c = 0; c < 16; c++)
                    for (int h = 0; h < 2; h++) {
                        const int col = g * 16 + c, k = kb * 32 + 2 * p + h;
                        float v = 0.0f;
                        if (col < n && k < K)
                            v = nt ? src_at(s, (size_t)(c0 + col), (size_t)k) : src_at(s, (size_t)k, (size_t)(c0 + col));
                        for (int pt = 0; pt < np; pt++) t[pt * 512 + (p * 16 + c) * 2 + h] = bf16_part(v, pt);
                    }
        }
}

/* 16 values of a row from element (r, c), the first `len` of them (the rest 0). */
AMX_TARGET static inline __m512 load16(const msrc *s, size_t r, size_t c, int len) {
    if (len <= 0) return _mm512_setzero_ps();
    const __mmask16 mk = len >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << len) - 1);
    const size_t i = r * s->ld + c;
    switch (s->dt) {
    case ZL_DT_F32: {
        const __m512 v = _mm512_maskz_loadu_ps(mk, (const float *)s->p + i);
        return s->mul != 0.0f ? _mm512_mul_ps(v, _mm512_set1_ps(s->mul)) : v;
    }
    case ZL_DT_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, (const uint16_t *)s->p + i));
    default: /* BF16: widening is a shift */
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, (const uint16_t *)s->p + i)), 16));
    }
}

AMX_TARGET static inline __m512 widen16(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Of 32 values (lanes 0-15 in lo, 16-31 in hi) rounded to bfloat16 as v =
 * VCVTNE2PS2BF16(hi, lo): what the rounding left, rounded the same way; 0
 * where v is not finite (bf16_part's part 1). */
AMX_TARGET static inline __m512i low_part(__m512 hi, __m512 lo, __m512i v) {
    const __m512 vl = widen16(_mm512_castsi512_si256(v)), vh = widen16(_mm512_extracti64x4_epi64(v, 1));
    const __m512 inf = _mm512_set1_ps(INFINITY);
    const __mmask16 fl = _mm512_cmp_ps_mask(_mm512_abs_ps(vl), inf, _CMP_LT_OQ),
                    fh = _mm512_cmp_ps_mask(_mm512_abs_ps(vh), inf, _CMP_LT_OQ);
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_sub_ps(fh, hi, vh), _mm512_maskz_sub_ps(fl, lo, vl));
}

/* 32 values of a row as bfloat16, rounded to nearest even (VCVTNE2PS2BF16);
 * with np 2 also their low parts, to *low. */
AMX_TARGET static inline __m512i row32(const msrc *s, size_t r, size_t c, int len, int np, __m512i *low) {
    const __m512 lo = load16(s, r, c, len), hi = load16(s, r, c + 16, len - 16);
    const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
    if (np == 2) *low = low_part(hi, lo, v);
    return v;
}

AMX_TARGET static void pack_a_avx(uint16_t *dst, const msrc *s, int r0, int m, int K, int np) {
    const int mg = ceil_to(m, 32) / 16, nkb = ceil_to(K, 32) / 32;
    for (int g = 0; g < mg; g++)
        for (int r = 0; r < 16; r++) {
            const int row = g * 16 + r;
            for (int kb = 0; kb < nkb; kb++) {
                uint16_t *t = dst + ((size_t)g * nkb + kb) * 512 * np + r * 32;
                __m512i low = _mm512_setzero_si512();
                const __m512i v =
                    row >= m ? low : row32(s, (size_t)(r0 + row), (size_t)kb * 32, K - kb * 32, np, &low);
                _mm512_storeu_si512(t, v);
                if (np == 2) _mm512_storeu_si512(t + 512, low);
            }
        }
}

/* Transpose a 16x16 matrix of 32-bit elements held in 16 registers. */
AMX_TARGET static inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    /* Now lane L of r[4q + c] holds rows 4q..4q+3 of column 4L + c; output
     * row 4L + c is lane L of r[c], r[4 + c], r[8 + c], r[12 + c]. */
    for (int j = 0; j < 4; j++) {
        const __m512i a = r[j], b = r[4 + j], c = r[8 + j], d = r[12 + j];
        const __m512i ab_lo = _mm512_shuffle_i32x4(a, b, 0x88), ab_hi = _mm512_shuffle_i32x4(a, b, 0xDD);
        const __m512i cd_lo = _mm512_shuffle_i32x4(c, d, 0x88), cd_hi = _mm512_shuffle_i32x4(c, d, 0xDD);
        t[j] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0x88);
        t[8 + j] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0xDD);
        t[4 + j] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0x88);
        t[12 + j] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0xDD);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

AMX_TARGET static void pack_b_avx(uint16_t *dst, const msrc *s, int nt, int c0, int n, int K, int np) {
    const int ng = ceil_to(n, 32) / 16, nkb = ceil_to(K, 32) / 32;
    if (nt) {
        /* Rows of s are columns of op(B): 16 rows of 32 K values make 16 x 16
         * dwords (K pairs); the tile wants them transposed. */
        for (int g = 0; g < ng; g++)
            for (int kb = 0; kb < nkb; kb++) {
                __m512i r[16], l[16];
                for (int c = 0; c < 16; c++) {
                    const int col = g * 16 + c;
                    l[c] = r[c] = _mm512_setzero_si512();
                    if (col < n) r[c] = row32(s, (size_t)(c0 + col), (size_t)kb * 32, K - kb * 32, np, &l[c]);
                }
                uint16_t *t = dst + ((size_t)g * nkb + kb) * 512 * np;
                transpose16(r);
                for (int p = 0; p < 16; p++) _mm512_storeu_si512(t + p * 32, r[p]);
                if (np == 2) {
                    transpose16(l);
                    for (int p = 0; p < 16; p++) _mm512_storeu_si512(t + 512 + p * 32, l[p]);
                }
            }
        return;
    }
    /* op(B) = s [K, N]: tile row p interleaves rows 2p and 2p+1 of s. */
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int g = 0; g < ng; g++) {
        const int len = n - g * 16;
        for (int kb = 0; kb < nkb; kb++) {
            uint16_t *t = dst + ((size_t)g * nkb + kb) * 512 * np;
            for (int p = 0; p < 16; p++) {
                const int k = kb * 32 + 2 * p;
                const __m512 e = k < K ? load16(s, (size_t)k, (size_t)(c0 + g * 16), len) : _mm512_setzero_ps();
                const __m512 o = k + 1 < K ? load16(s, (size_t)k + 1, (size_t)(c0 + g * 16), len) : _mm512_setzero_ps();
                const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(o, e); /* e in 0..15, o in 16..31 */
                _mm512_storeu_si512(t + p * 32, _mm512_permutexvar_epi16(idx, v));
                if (np == 2) _mm512_storeu_si512(t + 512 + p * 32, _mm512_permutexvar_epi16(idx, low_part(o, e, v)));
            }
        }
    }
}

/* Rows k and k+1 of B (zeros past K) as tile row pr of K block kb, for every
 * group of 16 columns (zeros past N): dst + g gs + kb 512 np + pr 32 (and
 * the low parts 512 further on). */
AMX_TARGET static void pack_pair_avx(uint16_t *dst, size_t gs, const msrc *s, int k, int K, int N, int ng, int kb,
                                     int pr, int np) {
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int g = 0; g < ng; g++) {
        const int len = N - g * 16;
        const __m512 e = k < K ? load16(s, (size_t)k, (size_t)g * 16, len) : _mm512_setzero_ps();
        const __m512 o = k + 1 < K ? load16(s, (size_t)k + 1, (size_t)g * 16, len) : _mm512_setzero_ps();
        const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(o, e);
        uint16_t *t = dst + (size_t)g * gs + (size_t)kb * 512 * np + (size_t)pr * 32;
        _mm512_storeu_si512(t, _mm512_permutexvar_epi16(idx, v));
        if (np == 2) _mm512_storeu_si512(t + 512, _mm512_permutexvar_epi16(idx, low_part(o, e, v)));
    }
}

/* ---- tile products -------------------------------------------------------
 * C block [m, n] (ldc) += A tiles (ceil(m,32)/16 groups) x B tiles. */
typedef struct {
    uint8_t palette, start;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;

static _Thread_local int tl_cfg;

AMX_TARGET static void tiles_config(void) {
    if (tl_cfg) return;
    tilecfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int i = 0; i < 8; i++) c.rows[i] = 16, c.colsb[i] = 64;
    _tile_loadconfig(&c);
    tl_cfg = 1;
}

/* Copy a 16x16 tile of C at (i, j), clipped to m x n, to/from a scratch tile. */
static void tile_in(float *sc, const float *C, int ldc, int i, int j, int m, int n) {
    memset(sc, 0, 256 * sizeof(float));
    for (int r = 0; r < 16 && i + r < m; r++)
        for (int c = 0; c < 16 && j + c < n; c++) sc[r * 16 + c] = C[(size_t)(i + r) * ldc + j + c];
}
static void tile_out(const float *sc, float *C, int ldc, int i, int j, int m, int n) {
    for (int r = 0; r < 16 && i + r < m; r++)
        for (int c = 0; c < 16 && j + c < n; c++) C[(size_t)(i + r) * ldc + j + c] = sc[r * 16 + c];
}

#define TILE_FULL(i, j) ((i) + 16 <= m && (j) + 16 <= n)

/* The 32x32 block of C at (i, j) += A B over K blocks [k0, k1). */
AMX_TARGET static inline void block_amx(const uint16_t *Ap, size_t gsa, const uint16_t *Bp, size_t gsb, int m, int n,
                                        int i, int j, int k0, int k1, float *C, int ldc, int np) {
    const size_t ld = (size_t)ldc * sizeof(float);
    float sc[4][256] __attribute__((aligned(64)));
    float *c00 = C + (size_t)i * ldc + j, *c01 = c00 + 16, *c10 = c00 + (size_t)16 * ldc, *c11 = c10 + 16;
    const int f00 = TILE_FULL(i, j), f01 = TILE_FULL(i, j + 16), f10 = TILE_FULL(i + 16, j),
              f11 = TILE_FULL(i + 16, j + 16);
    if (f00) _tile_loadd(0, c00, ld); else { tile_in(sc[0], C, ldc, i, j, m, n); _tile_loadd(0, sc[0], 64); }
    if (f01) _tile_loadd(1, c01, ld); else { tile_in(sc[1], C, ldc, i, j + 16, m, n); _tile_loadd(1, sc[1], 64); }
    if (f10) _tile_loadd(2, c10, ld); else { tile_in(sc[2], C, ldc, i + 16, j, m, n); _tile_loadd(2, sc[2], 64); }
    if (f11) _tile_loadd(3, c11, ld); else { tile_in(sc[3], C, ldc, i + 16, j + 16, m, n); _tile_loadd(3, sc[3], 64); }
    const uint16_t *a0 = Ap + (size_t)(i / 16) * gsa, *a1 = a0 + gsa;
    const uint16_t *b0 = Bp + (size_t)(j / 16) * gsb, *b1 = b0 + gsb;
    if (np == 1)
        for (int kb = k0; kb < k1; kb++) {
            _tile_loadd(4, a0 + (size_t)kb * 512, 64);
            _tile_loadd(6, b0 + (size_t)kb * 512, 64);
            _tile_loadd(5, a1 + (size_t)kb * 512, 64);
            _tile_loadd(7, b1 + (size_t)kb * 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    else /* per K block: A hi B hi, A hi B lo, A lo B hi */
        for (int kb = k0; kb < k1; kb++) {
            const size_t o = (size_t)kb * 1024;
            _tile_loadd(4, a0 + o, 64);
            _tile_loadd(6, b0 + o, 64);
            _tile_loadd(5, a1 + o, 64);
            _tile_loadd(7, b1 + o, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
            _tile_loadd(6, b0 + o + 512, 64);
            _tile_loadd(7, b1 + o + 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
            _tile_loadd(4, a0 + o + 512, 64);
            _tile_loadd(6, b0 + o, 64);
            _tile_loadd(5, a1 + o + 512, 64);
            _tile_loadd(7, b1 + o, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    if (f00) _tile_stored(0, c00, ld); else { _tile_stored(0, sc[0], 64); tile_out(sc[0], C, ldc, i, j, m, n); }
    if (f01) _tile_stored(1, c01, ld); else { _tile_stored(1, sc[1], 64); tile_out(sc[1], C, ldc, i, j + 16, m, n); }
    if (f10) _tile_stored(2, c10, ld); else { _tile_stored(2, sc[2], 64); tile_out(sc[2], C, ldc, i + 16, j, m, n); }
    if (f11) _tile_stored(3, c11, ld); else { _tile_stored(3, sc[3], 64); tile_out(sc[3], C, ldc, i + 16, j + 16, m, n); }
}

/* K blocks per chunk: a 32-row slice of A over one chunk (16 KB in one part,
 * 32 KB in two) stays in L1 while it meets every 32 columns of B. */
#define KB_CHUNK(np) ((np) == 2 ? 8 : 16)

/* C [m, n] += A B. Group strides: gsa, gsb elements from one 16-row (column)
 * group's tiles to the next (nkb * 512 * np when the packing holds exactly
 * K). Over chunks of K, for every 32 rows of A, every 32 columns of B: A's
 * slice is read from L1, B (n columns of one chunk) from L2. Partial sums
 * wait in C in float32 between chunks, which the tiles hold anyway: the
 * bytes do not depend on the chunking. */
AMX_TARGET static void kernel_amx(const uint16_t *Ap, size_t gsa, const uint16_t *Bp, size_t gsb, int m, int n, int K,
                                  float *C, int ldc, int np) {
    tiles_config();
    const int nkb = ceil_to(K, 32) / 32, kc = KB_CHUNK(np);
    for (int k0 = 0; k0 < nkb; k0 += kc) {
        const int k1 = nkb - k0 < kc ? nkb : k0 + kc;
        for (int i = 0; i < m; i += 32)
            for (int j = 0; j < n; j += 32) block_amx(Ap, gsa, Bp, gsb, m, n, i, j, k0, k1, C, ldc, np);
    }
}

/* The scalar model of the same kernel: per element, per K block, per
 * product of parts (np 2: A hi B hi, A hi B lo, A lo B hi), per pair, the two
 * products added to the float32 accumulator in order. */
static void kernel_emulated(const uint16_t *Ap, size_t gsa, const uint16_t *Bp, size_t gsb, int m, int n, int K,
                            float *C, int ldc, int np) {
    static const int pa[3] = {0, 0, 1}, pb[3] = {0, 1, 0};
    const int nkb = ceil_to(K, 32) / 32, nprod = np == 2 ? 3 : 1;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            const uint16_t *a = Ap + (size_t)(i / 16) * gsa + (size_t)(i % 16) * 32;
            const uint16_t *b = Bp + (size_t)(j / 16) * gsb + (size_t)(j % 16) * 2;
            float acc = C[(size_t)i * ldc + j];
            for (int kb = 0; kb < nkb; kb++)
                for (int q = 0; q < nprod; q++) {
                    const uint16_t *ak = a + ((size_t)kb * np + pa[q]) * 512, *bk = b + ((size_t)kb * np + pb[q]) * 512;
                    for (int p = 0; p < 16; p++) {
                        acc += zl_bf16_to_f32(ak[2 * p]) * zl_bf16_to_f32(bk[p * 32]);
                        acc += zl_bf16_to_f32(ak[2 * p + 1]) * zl_bf16_to_f32(bk[p * 32 + 1]);
                    }
                }
            C[(size_t)i * ldc + j] = acc;
        }
}

/* Thread-local packing buffers, kept between calls (freed with the thread
 * through a pthread key, or by zl_sgemm_release_buffers). */
static _Thread_local uint16_t *tl_pack;
static _Thread_local size_t tl_pack_n;
static pthread_key_t pack_key;
static pthread_once_t pack_once = PTHREAD_ONCE_INIT;
static int pack_key_ok;

static void pack_key_init(void) { pack_key_ok = pthread_key_create(&pack_key, free) == 0; }

static uint16_t *pack_buf(size_t n) {
    if (tl_pack_n < n) {
        free(tl_pack);
        tl_pack = aligned_alloc(64, (n * sizeof(uint16_t) + 63) / 64 * 64);
        tl_pack_n = tl_pack ? n : 0;
        pthread_once(&pack_once, pack_key_init);
        if (pack_key_ok) pthread_setspecific(pack_key, tl_pack);
    }
    return tl_pack;
}

void zl_bf16_release_buffers(void) {
    free(tl_pack);
    tl_pack = NULL;
    tl_pack_n = 0;
    if (pack_key_ok) pthread_setspecific(pack_key, NULL);
}

/* Columns of B per call of the kernel (a multiple of 32): 256 instead of 32
 * took an SDXL 128x128 bf16x3 forward from 20.4 s to 17.8 s (bench/RESULTS.md,
 * session 11). */
#define B_PANEL 256

int zl_bf16_block(int mode, int m, int n, int K, const float *F, int ldf, zl_dtype wdt, const void *W, int ldw,
                  const uint16_t *Wp, const uint16_t *Fp, int i, int j, float *C, int ldc) {
    const int np = zl_bf16_parts();
    const size_t K32 = (size_t)ceil_to(K, 32), gs = K32 * 16 * np;
    /* the weight's side comes packed (Wp) or is packed here: all of A, and B a
     * panel of B_PANEL columns at a time, just before its products (the
     * kernel then keeps a K chunk of the panel in L2 for all of A's rows);
     * mode 3's B comes packed (Fp) */
    const int packA = mode == 1 || mode == 3 ? !Wp : !(mode == 0 && Fp), packB = mode == 0 ? !Wp : mode != 3; /* mode 2: no Wp */
    const size_t asz = packA ? (size_t)ceil_to(m, 32) * K32 * np : 0, bsz = packB ? B_PANEL * K32 * np : 0;
    uint16_t *buf = pack_buf(asz + bsz > 0 ? asz + bsz : 1);
    if (!buf) return ZL_ENOMEM;
    const int fast = tiles();
    /* mode 0: C = F W^T (W [N, K] rows); mode 1: C = W F (W [M, K] rows, F [K, N]);
     * mode 2: C = F W (W [K, N] rows). */
    const msrc f = {ZL_DT_F32, F, (size_t)ldf, 0.0f}, w = {wdt, W, (size_t)ldw, 0.0f};
    const msrc *a = mode == 1 || mode == 3 ? &w : &f, *b = mode == 1 ? &f : &w;
    const uint16_t *Ap = packA ? buf : (mode == 0 ? Fp : Wp) + (size_t)(i / 16) * gs;
    if (packA) {
        if (fast) pack_a_avx(buf, a, i, m, K, np);
        else pack_a_scalar(buf, a, i, m, K, np);
    }
    for (int jp = 0; jp < n; jp += B_PANEL) {
        const int nc = n - jp < B_PANEL ? n - jp : B_PANEL;
        const uint16_t *Bp = mode == 3           ? Fp + (size_t)((j + jp) / 16) * gs
                             : Wp && mode == 0 ? Wp + (size_t)((j + jp) / 16) * gs
                                               : buf + asz;
        if (packB) {
            if (fast) pack_b_avx(buf + asz, b, mode == 0, j + jp, nc, K, np);
            else pack_b_scalar(buf + asz, b, mode == 0, j + jp, nc, K, np);
        }
        float *c = C + (size_t)i * ldc + j + jp;
        if (fast)
            kernel_amx(Ap, gs, Bp, gs, m, nc, K, c, ldc, np);
        else
            kernel_emulated(Ap, gs, Bp, gs, m, nc, K, c, ldc, np);
    }
    return 0;
}

/* B [K, N] (row stride ldb) as B tiles for all its columns, for mode 3. Pairs
 * of rows at a time, each read along its length (the per-panel packing reads
 * 16 columns of every row: a new page per row at im2col's widths). */
uint16_t *zl_bf16_pack_cols(const float *B, int ldb, int K, int N) {
    const int np = zl_bf16_parts();
    const size_t K32 = (size_t)ceil_to(K, 32), ng = (size_t)ceil_to(N, 32) / 16 + 1, gs = K32 * 16 * np;
    uint16_t *p = aligned_alloc(64, ng * gs * sizeof(uint16_t));
    if (!p) return NULL;
    const msrc s = {ZL_DT_F32, B, (size_t)ldb, 0.0f};
    const int fast = tiles();
    const long npair = (long)(K32 / 2);
    #pragma omp parallel for schedule(static) if (!omp_in_parallel() && (size_t)K * N > 65536)
    for (long q = 0; q < npair; q++) {
        const int k = (int)q * 2, kb = k / 32, pr = (k % 32) / 2;
        if (fast) {
            pack_pair_avx(p, gs, &s, k, K, N, (int)ng, kb, pr, np);
        } else {
            for (size_t g = 0; g < ng; g++)
                for (int c = 0; c < 16; c++)
                    for (int h = 0; h < 2; h++) {
                        const int col = (int)g * 16 + c, kk = k + h;
                        const float v = col < N && kk < K ? src_at(&s, (size_t)kk, (size_t)col) : 0.0f;
                        for (int pt = 0; pt < np; pt++)
                            p[g * gs + ((size_t)kb * np + pt) * 512 + (size_t)pr * 32 + (size_t)c * 2 + h] =
                                bf16_part(v, pt);
                    }
        }
    }
    return p;
}

/* Element (k, c) of the im2col matrix of x [Cin, H, W] for output rows from r0. */
static inline float im2col_at(const float *x, const zl_conv_shape *s, int Wo, int r0, int k, int c) {
    const int kk = s->kh * s->kw, cin = k / kk, ky = (k % kk) / s->kw, kx = k % s->kw;
    const int oy = r0 + c / Wo, ox = c % Wo;
    const int iy = oy * s->stride - s->pad_t + ky, ix = ox * s->stride - s->pad_l + kx;
    if (iy < 0 || iy >= s->H || ix < 0 || ix >= s->W) return 0.0f;
    return x[((size_t)cin * s->H + iy) * s->W + ix];
}

/* K block kb (32 rows) of the im2col matrix (stride 1, Wo a multiple of 16:
 * every 16 columns are one run of an input row), for every column group: each
 * group's 1 KB tile is written whole, in order, and each of the block's input
 * rows is read along its length from one group to the next. */
AMX_TARGET static void im2col_kb_avx(uint16_t *dst, size_t gs, const float *x, const zl_conv_shape *s, int Wo, int r0,
                                     int r1, int kb, int ng, int np) {
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const int kk = s->kh * s->kw, K = s->Cin * kk;
    int cin[32], ky[32], kx[32], ok[32];
    for (int t = 0; t < 32; t++) {
        const int k = kb * 32 + t;
        ok[t] = k < K;
        cin[t] = k / kk, ky[t] = (k % kk) / s->kw, kx[t] = k % s->kw;
    }
    uint16_t *d = dst + (size_t)kb * 512 * np;
    int g = 0;
    for (int oy = r0; oy < r1; oy++) {
        uintptr_t row[32];
        for (int t = 0; t < 32; t++) {
            const int iy = oy - s->pad_t + ky[t];
            row[t] = ok[t] && iy >= 0 && iy < s->H ? (uintptr_t)(x + ((size_t)cin[t] * s->H + iy) * s->W) : 0;
        }
        for (int ox0 = 0; ox0 < Wo; ox0 += 16, g++) {
            uint16_t *tile = d + (size_t)g * gs;
            for (int pr = 0; pr < 16; pr++) {
                __m512 v[2];
                for (int h = 0; h < 2; h++) {
                    const int t = 2 * pr + h;
                    if (!row[t]) {
                        v[h] = _mm512_setzero_ps();
                        continue;
                    }
                    const int ix0 = ox0 - s->pad_l + kx[t];
                    unsigned mk = 0xFFFFu;
                    if (ix0 < 0) mk &= 0xFFFFu << (-ix0 < 16 ? -ix0 : 16);
                    if (ix0 + 16 > s->W) mk &= s->W - ix0 <= 0 ? 0u : (1u << (s->W - ix0)) - 1u;
                    /* lanes outside the row are masked off, so they are never read */
                    v[h] = _mm512_maskz_loadu_ps((__mmask16)mk, (const void *)(row[t] + (uintptr_t)((intptr_t)ix0 * 4)));
                }
                const __m512i b = (__m512i)_mm512_cvtne2ps_pbh(v[1], v[0]);
                _mm512_storeu_si512(tile + (size_t)pr * 32, _mm512_permutexvar_epi16(idx, b));
                if (np == 2)
                    _mm512_storeu_si512(tile + 512 + (size_t)pr * 32,
                                        _mm512_permutexvar_epi16(idx, low_part(v[1], v[0], b)));
            }
        }
    }
    for (; g < ng; g++) memset(d + (size_t)g * gs, 0, (size_t)512 * np * sizeof(uint16_t));
}

uint16_t *zl_bf16_pack_im2col(const float *x, const zl_conv_shape *s, int Wo, int r0, int r1) {
    const int K = s->Cin * s->kh * s->kw, N = (r1 - r0) * Wo, np = zl_bf16_parts();
    const size_t K32 = (size_t)ceil_to(K, 32), ng = (size_t)ceil_to(N, 32) / 16 + 1, gs = K32 * 16 * np;
    uint16_t *p = aligned_alloc(64, ng * gs * sizeof(uint16_t));
    if (!p) return NULL;
    const int fast = tiles() && s->stride == 1 && Wo % 16 == 0;
    if (fast) {
        const int nkb = (int)(K32 / 32);
        #pragma omp parallel for schedule(static) if (!omp_in_parallel() && (size_t)K * N > 65536)
        for (int kb = 0; kb < nkb; kb++) im2col_kb_avx(p, gs, x, s, Wo, r0, r1, kb, (int)ng, np);
        return p;
    }
    const long npair = (long)(K32 / 2);
    #pragma omp parallel for schedule(static) if (!omp_in_parallel() && (size_t)K * N > 65536)
    for (long q = 0; q < npair; q++) {
        const int k = (int)q * 2, kb = k / 32, pr = (k % 32) / 2;
        for (size_t g = 0; g < ng; g++)
            for (int c = 0; c < 16; c++)
                for (int h = 0; h < 2; h++) {
                    const int col = (int)g * 16 + c, kk = k + h;
                    const float v = col < N && kk < K ? im2col_at(x, s, Wo, r0, kk, col) : 0.0f;
                    for (int pt = 0; pt < np; pt++)
                        p[g * gs + ((size_t)kb * np + pt) * 512 + (size_t)pr * 32 + (size_t)c * 2 + h] =
                            bf16_part(v, pt);
                }
    }
    return p;
}

/* Elements of a packed weight [rows, K]: one more zero group than the rows
 * padded to 32, since a block of the grid may start at an odd group and its
 * last pair then reaches one group past the padded rows. */
static size_t packed_weight_n(int rows, int K) {
    return ((size_t)ceil_to(rows, 32) + 16) * (size_t)ceil_to(K, 32) * (size_t)zl_bf16_parts();
}

/* Rows [rows, K] of W (row stride ld) packed as A tiles (conv) or as the B
 * tiles of W^T, with the zero group after them. */
static void pack_weight_into(uint16_t *p, zl_dtype dt, const void *W, int ld, int rows, int K, int conv) {
    const int npt = zl_bf16_parts();
    const size_t K32 = (size_t)ceil_to(K, 32) * npt, R32 = (size_t)ceil_to(rows, 32), gs = K32 * 16;
    memset(p + R32 * K32, 0, 16 * K32 * sizeof(uint16_t));
    const msrc w = {dt, W, (size_t)ld, 0.0f};
    const int fast = tiles();
    const long np = (long)(R32 / 32);
    /* a pair of 16-row groups per task: the packers pad to 32 rows */
    #pragma omp parallel for schedule(dynamic, 4) if (np > 1 && !omp_in_parallel())
    for (long q = 0; q < np; q++) {
        const int r0 = (int)q * 32, nr = rows - r0 < 32 ? rows - r0 : 32;
        uint16_t *dst = p + (size_t)q * 2 * gs;
        if (conv) {
            if (fast) pack_a_avx(dst, &w, r0, nr, K, npt);
            else pack_a_scalar(dst, &w, r0, nr, K, npt);
        } else {
            if (fast) pack_b_avx(dst, &w, 1, r0, nr, K, npt);
            else pack_b_scalar(dst, &w, 1, r0, nr, K, npt);
        }
    }
}

uint16_t *zl_bf16_pack_weight(zl_dtype dt, const void *W, int rows, int K, int conv) {
    uint16_t *p = aligned_alloc(64, packed_weight_n(rows, K) * sizeof(uint16_t));
    if (p) pack_weight_into(p, dt, W, K, rows, K, conv);
    return p;
}

/* Buffers kept between products (fresh pages cost a fault each) for an
 * operand of the product running now, packed once for all its blocks: 0 the
 * weight, 1 the A operand of mode 0 (the input rows). A mutex each keeps a
 * buffer to one product at a time. */
typedef struct {
    pthread_mutex_t mu;
    uint16_t *buf;
    size_t n;
} shared_pack;
static shared_pack g_shared[2] = {{PTHREAD_MUTEX_INITIALIZER, NULL, 0}, {PTHREAD_MUTEX_INITIALIZER, NULL, 0}};

const uint16_t *zl_bf16_shared_pack(int which, zl_dtype dt, const void *W, int ld, int rows, int K, int conv) {
    shared_pack *sp = &g_shared[which];
    if (omp_in_parallel() || pthread_mutex_trylock(&sp->mu)) return NULL;
    const size_t n = packed_weight_n(rows, K);
    if (sp->n < n) {
        free(sp->buf);
        sp->buf = aligned_alloc(64, (n * sizeof(uint16_t) + 63) / 64 * 64);
        sp->n = sp->buf ? n : 0;
    }
    if (!sp->buf) {
        pthread_mutex_unlock(&sp->mu);
        return NULL;
    }
    pack_weight_into(sp->buf, dt, W, ld, rows, K, conv);
    return sp->buf;
}

void zl_bf16_shared_done(int which) { pthread_mutex_unlock(&g_shared[which].mu); }

void zl_bf16_release_shared(void) {
    for (int w = 0; w < 2; w++) {
        if (pthread_mutex_trylock(&g_shared[w].mu)) continue; /* in use */
        free(g_shared[w].buf);
        g_shared[w].buf = NULL;
        g_shared[w].n = 0;
        pthread_mutex_unlock(&g_shared[w].mu);
    }
}

/* ---- for other ops (attention) ------------------------------------------ */

void zl_bf16_pack_a_f32(uint16_t *dst, const float *src, int ld, int m, int K, float mul) {
    const msrc s = {ZL_DT_F32, src, (size_t)ld, mul};
    if (tiles()) pack_a_avx(dst, &s, 0, m, K, zl_bf16_parts());
    else pack_a_scalar(dst, &s, 0, m, K, zl_bf16_parts());
}

void zl_bf16_pack_b_f32(uint16_t *dst, const float *src, int ld, int nt, int n, int K) {
    const msrc s = {ZL_DT_F32, src, (size_t)ld, 0.0f};
    if (tiles()) pack_b_avx(dst, &s, nt, 0, n, K, zl_bf16_parts());
    else pack_b_scalar(dst, &s, nt, 0, n, K, zl_bf16_parts());
}

void zl_bf16_tiles(const uint16_t *Ap, size_t gsa, const uint16_t *Bp, size_t gsb, int m, int n, int K, float *C,
                   int ldc) {
    if (tiles())
        kernel_amx(Ap, gsa, Bp, gsb, m, n, K, C, ldc, zl_bf16_parts());
    else
        kernel_emulated(Ap, gsa, Bp, gsb, m, n, K, C, ldc, zl_bf16_parts());
}
