/* 3x3 stride-1 "same" convolution by Winograd's minimal filtering F(4x4, 3x3)
 * (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016),
 * the algorithm oneDNN, NNPACK and cuDNN use for these layers.
 *
 * Each 4x4 block of output ("tile") comes from a 6x6 input patch:
 *   Y = A^T [ (G g G^T) (.) (B^T d B) ] A
 * summed over input channels. For all tiles at once that is 36 independent
 * matrix products (one per position xi of the 6x6 transformed tile):
 *   M[xi] [Cout, P] = U[xi] [Cout, Cin] * V[xi] [Cin, P]
 * with U the transformed weights and V the transformed input patches, P the
 * tile count. They do 36/16 of the multiplications per output pixel where
 * direct convolution does 9 (4x fewer); the transforms are cheap by
 * comparison (they scale with Cin or Cout, the products with Cin * Cout).
 *
 * Numerics: every value passes through the transforms in float32; the
 * result differs from direct convolution by about 1e-6 of the output's
 * scale (tests/test_ops.c checks it against a float64 direct convolution).
 *
 * Memory stays bounded: the weights are transformed for a chunk of output
 * channels and the input for a chunk of tiles at a time, each within a byte
 * budget. Chunks, and so the summation order of every output, depend on the
 * shape alone: the result is the same on any thread count. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "nn/conv_tiles.h"
#include "nn/ops.h"

/* Byte budgets for one chunk of transformed weights (U), of transformed
 * input (V) and of products (M): the workspace stays under 256 MB. */
#define WG_U_BYTES ((size_t)128 << 20)
#define WG_V_BYTES ((size_t)64 << 20)
#define WG_M_BYTES ((size_t)64 << 20)
/* Fewest tiles and channels for which the transforms pay for themselves
 * (bench_ops "conv3x3 ... winograd" against im2col + sgemm). */
#define WG_MIN_TILES 48
#define WG_MIN_CH 16

#define L8 for (int l = 0; l < 8; l++)

static int g_wg_off;
static long g_wg_calls;

void zl_conv2d_winograd_disable(int off) { g_wg_off = off; }
long zl_conv2d_winograd_calls(void) { return g_wg_calls; }

int zl_conv2d_winograd_ok(const zl_conv_shape *s) {
    if (g_wg_off) return 0;
    if (s->kh != 3 || s->kw != 3 || s->stride != 1) return 0;
    if (s->pad_t != 1 || s->pad_l != 1 || s->pad_b != 1 || s->pad_r != 1) return 0;
    if (s->Cin < WG_MIN_CH || s->Cout < WG_MIN_CH || s->H < 1 || s->W < 1) return 0;
    const size_t tiles = (size_t)s->B * ((s->H + 3) / 4) * ((s->W + 3) / 4);
    return tiles >= WG_MIN_TILES;
}

/* 1-D transforms on 8 lanes. */
/* B^T: 6 -> 6 (input patches); d[j] points at 8 lanes of element j. */
static inline void bt_tf(float o[6][8], const float *d0, const float *d1, const float *d2, const float *d3,
                         const float *d4, const float *d5) {
    #pragma omp simd
    L8 {
        const float a = d0[l], b = d1[l], c = d2[l], d = d3[l], e = d4[l], f = d5[l];
        o[0][l] = 4.0f * a - 5.0f * c + e;
        o[1][l] = -4.0f * (b + c) + (d + e);
        o[2][l] = 4.0f * (b - c) + (e - d);
        o[3][l] = 2.0f * (d - b) + (e - c);
        o[4][l] = 2.0f * (b - d) + (e - c);
        o[5][l] = 4.0f * b - 5.0f * d + f;
    }
}

/* A^T: 6 -> 4 (output tiles). */
static inline void at_tf(float o[4][8], const float *m0, const float *m1, const float *m2, const float *m3,
                         const float *m4, const float *m5) {
    #pragma omp simd
    L8 {
        const float a = m0[l], b = m1[l], c = m2[l], d = m3[l], e = m4[l], f = m5[l];
        const float p = b + c, q = b - c, r = d + e, t = d - e;
        o[0][l] = a + p + r;
        o[1][l] = q + 2.0f * t;
        o[2][l] = p + 4.0f * r;
        o[3][l] = q + 8.0f * t + f;
    }
}

/* 8 lanes as a GCC/clang vector: AVX with -march=native, two SSE halves otherwise. */
typedef float v8 __attribute__((vector_size(32)));

/* (pointers, not vector arguments: their ABI depends on the target's AVX) */
static inline void g_tf8(v8 o[6], const v8 *px, const v8 *py, const v8 *pz) {
    const v8 x = *px, y = *py, z = *pz;
    const v8 s = x + z, q = x * (1.0f / 24.0f) + z * (1.0f / 6.0f);
    o[0] = x * 0.25f;
    o[1] = -(s + y) * (1.0f / 6.0f);
    o[2] = -(s - y) * (1.0f / 6.0f);
    o[3] = q + y * (1.0f / 12.0f);
    o[4] = q - y * (1.0f / 12.0f);
    o[5] = z;
}

/* U[xi][k - k0][c] for output channels k in [k0, k0 + kc) and input channels
 * c < Cin, 8 input channels per step; ldu = kc * Cin. Forward (tr = 0): G g G^T
 * of g = W[k][c], W [Cout, Cin, 3, 3]. For the input gradient (tr = 1) the
 * convolution runs from dy to dx with g = W[c][k] rotated by 180 degrees, W
 * then being the forward's [Cin', Cout', 3, 3] = [this Cin, this Cout]. W is
 * in its stored dtype dt, at any alignment. */
static void weights_tf(float *U, const void *W, zl_dtype dt, int Cin, int Cout, int k0, int kc, int tr) {
    const size_t esz = (size_t)zl_dtype_bits(dt) / 8, ldu = (size_t)kc * Cin;
    #pragma omp parallel for schedule(static) if ((size_t)kc * Cin > 4096)
    for (int k = 0; k < kc; k++) {
        unsigned char raw[72 * 8];
        float tmp[72];
        for (int c0 = 0; c0 < Cin; c0 += 8) {
            const int n = Cin - c0 < 8 ? Cin - c0 : 8;
            if (!tr) /* the 8 channels' taps are contiguous */
                memcpy(raw, (const char *)W + ((size_t)(k0 + k) * Cin + c0) * 9 * esz, (size_t)n * 9 * esz);
            else
                for (int l = 0; l < n; l++)
                    memcpy(raw + (size_t)l * 9 * esz, (const char *)W + ((size_t)(c0 + l) * Cout + k0 + k) * 9 * esz, 9 * esz);
            zl_convert_to_f32(dt, raw, tmp, (size_t)n * 9);
            if (n < 8) memset(tmp + n * 9, 0, (size_t)(8 - n) * 9 * sizeof(float));
            v8 g[9], a[6][3], u[6];
            for (int t = 0; t < 9; t++) {
                const int q = tr ? 8 - t : t; /* tap (i, j) of the rotated kernel is (2 - i, 2 - j) */
                g[t] = (v8){tmp[q], tmp[9 + q], tmp[18 + q], tmp[27 + q], tmp[36 + q], tmp[45 + q], tmp[54 + q], tmp[63 + q]};
            }
            for (int j = 0; j < 3; j++) { /* columns j of g (t = 3i + j): a[.][j] = G g[:, j] */
                v8 o[6];
                g_tf8(o, &g[j], &g[3 + j], &g[6 + j]);
                for (int r = 0; r < 6; r++) a[r][j] = o[r];
            }
            float *dst = U + (size_t)k * Cin + c0;
            for (int r = 0; r < 6; r++) {
                g_tf8(u, &a[r][0], &a[r][1], &a[r][2]);
                for (int q = 0; q < 6; q++) {
                    float *d = dst + (size_t)(r * 6 + q) * ldu;
                    if (n == 8) memcpy(d, &u[q], sizeof(v8));
                    else memcpy(d, &u[q], (size_t)n * sizeof(float));
                }
            }
        }
    }
}

/* V[xi][c][p - p0] for tiles p in [p0, p0 + pc) of x [B, Cin, H, W]: B^T d B of
 * each 6x6 patch (rows 4ty-1.., columns 4tx-1.., zero outside), 8 tiles of a
 * tile row per step. ldv = Cin * pc. */
/* Tiles are numbered p = (b * th + ty) * tw + tx. From tile p: its image b,
 * tile row ty and column tx0, and how many tiles of that row lie before pend. */
static int tile_run(size_t p, size_t pend, int th, int tw, size_t *b, int *ty, int *tx0) {
    const size_t tpi = (size_t)th * tw, r = p % tpi;
    *b = p / tpi;
    *ty = (int)(r / tw);
    *tx0 = (int)(r % tw);
    return (int)((size_t)(tw - *tx0) < pend - p ? (size_t)(tw - *tx0) : pend - p);
}

static size_t row_floats(int tw) { return (size_t)6 * (4 * tw + 34); }

/* rows: row_floats(tw) floats per OpenMP thread. */
static void input_tf(float *V, const float *x, const zl_conv_shape *s, int th, int tw, size_t p0, int pc, float *rows) {
    const int H = s->H, W = s->W, Cin = s->Cin;
    const size_t ldv = (size_t)Cin * pc;
    const int wp = 4 * tw + 2; /* a padded row: columns -1 .. 4*tw, then slack for the unused lanes */
    #pragma omp parallel
    {
        float *row = rows + (size_t)omp_get_thread_num() * row_floats(tw);
        #pragma omp for schedule(static)
        for (int c = 0; c < Cin; c++) {
            size_t p = p0;
            const size_t pend = p0 + (size_t)pc;
            while (p < pend) {
                size_t b;
                int ty, tx0;
                const int n8 = tile_run(p, pend, th, tw, &b, &ty, &tx0);
                const float *xc = x + ((size_t)b * Cin + c) * H * W;
                /* the six padded input rows of this tile row */
                for (int i = 0; i < 6; i++) {
                    float *rw = row + (size_t)i * (wp + 32);
                    const int iy = 4 * ty - 1 + i;
                    memset(rw, 0, (size_t)(wp + 32) * sizeof(float));
                    if (iy >= 0 && iy < H) memcpy(rw + 1, xc + (size_t)iy * W, (size_t)W * sizeof(float));
                }
                for (int t0 = 0; t0 < n8; t0 += 8) {
                    const int n = n8 - t0 < 8 ? n8 - t0 : 8;
                    float d[6][6][8], e[6][6][8], v[6][6][8];
                    for (int i = 0; i < 6; i++) {
                        const float *rw = row + (size_t)i * (wp + 32) + 4 * (tx0 + t0);
                        for (int j = 0; j < 6; j++) L8 d[i][j][l] = rw[4 * l + j]; /* lanes past n read zeros */
                    }
                    /* along x within each row, then along y */
                    for (int i = 0; i < 6; i++) bt_tf(e[i], d[i][0], d[i][1], d[i][2], d[i][3], d[i][4], d[i][5]);
                    for (int j = 0; j < 6; j++) {
                        float o[6][8];
                        bt_tf(o, e[0][j], e[1][j], e[2][j], e[3][j], e[4][j], e[5][j]);
                        for (int i = 0; i < 6; i++) L8 v[i][j][l] = o[i][l];
                    }
                    float *dst = V + (size_t)c * pc + (p + t0 - p0);
                    for (int i = 0; i < 6; i++)
                        for (int j = 0; j < 6; j++) {
                            float *d = dst + (size_t)(i * 6 + j) * ldv;
                            if (n == 8) memcpy(d, v[i][j], 8 * sizeof(float));
                            else memcpy(d, v[i][j], (size_t)n * sizeof(float));
                        }
                }
                p += (size_t)n8;
            }
        }
    }
}

/* y[b][k0 + k] tiles p in [p0, p0 + pc) from M[xi][k][p - p0] (ldm = kc * pc):
 * A^T m A, plus the bias (or added to y if acc), cropped at the image's right
 * and bottom edges. */
static void output_tf(float *y, const float *M, const float *bias, const zl_conv_shape *s, int th, int tw, int k0,
                      int kc, size_t p0, int pc, int acc) {
    const int H = s->H, W = s->W, Cout = s->Cout;
    const size_t ldm = (size_t)kc * pc;
    #pragma omp parallel for schedule(static)
    for (int k = 0; k < kc; k++) {
        const float bv = bias ? bias[k0 + k] : 0.0f;
        size_t p = p0;
        const size_t pend = p0 + (size_t)pc;
        while (p < pend) {
            size_t b;
            int ty, tx0;
            const int n8 = tile_run(p, pend, th, tw, &b, &ty, &tx0);
            float *yk = y + ((size_t)b * Cout + k0 + k) * H * W;
            for (int t0 = 0; t0 < n8; t0 += 8) {
                const int n = n8 - t0 < 8 ? n8 - t0 : 8;
                float m[6][6][8], e[4][6][8], o[4][4][8];
                const float *src = M + (size_t)k * pc + (p + t0 - p0);
                for (int i = 0; i < 6; i++)
                    for (int j = 0; j < 6; j++) {
                        const float *sr = src + (size_t)(i * 6 + j) * ldm;
                        if (n == 8) memcpy(m[i][j], sr, 8 * sizeof(float));
                        else {
                            memcpy(m[i][j], sr, (size_t)n * sizeof(float));
                            for (int l = n; l < 8; l++) m[i][j][l] = 0.0f;
                        }
                    }
                for (int j = 0; j < 6; j++) { /* along y */
                    float q[4][8];
                    at_tf(q, m[0][j], m[1][j], m[2][j], m[3][j], m[4][j], m[5][j]);
                    for (int i = 0; i < 4; i++) L8 e[i][j][l] = q[i][l];
                }
                for (int i = 0; i < 4; i++) at_tf(o[i], e[i][0], e[i][1], e[i][2], e[i][3], e[i][4], e[i][5]);
                for (int i = 0; i < 4; i++) {
                    const int oy = 4 * ty + i;
                    if (oy >= H) break;
                    float *yr = yk + (size_t)oy * W;
                    for (int l = 0; l < n; l++) {
                        const int ox = 4 * (tx0 + t0 + l);
                        const int nj = W - ox < 4 ? W - ox : 4;
                        if (acc)
                            for (int j = 0; j < nj; j++) yr[ox + j] += o[i][j][l];
                        else
                            for (int j = 0; j < nj; j++) yr[ox + j] = o[i][j][l] + bv;
                    }
                }
            }
            p += (size_t)n8;
        }
    }
}

/* One workspace, kept between calls: these buffers are tens of MB, and fresh
 * pages from the kernel (a page fault and zeroing per 4 KB) cost as much as
 * the transforms. A second caller while it is taken gets its own buffer. */
static float *g_ws;
static size_t g_ws_floats;
static int g_ws_busy;

static float *ws_take(size_t n, int *owned) {
    int busy;
    #pragma omp atomic capture
    busy = g_ws_busy++;
    if (busy) {
        #pragma omp atomic
        g_ws_busy--;
        *owned = 1;
        return malloc(n * sizeof(float));
    }
    *owned = 0;
    if (g_ws_floats < n) {
        free(g_ws);
        g_ws = malloc(n * sizeof(float));
        g_ws_floats = g_ws ? n : 0;
    }
    if (!g_ws) {
        #pragma omp atomic
        g_ws_busy--;
    }
    return g_ws;
}

static void ws_give(float *p, int owned) {
    if (owned) {
        free(p);
        return;
    }
    #pragma omp atomic
    g_ws_busy--;
}

void zl_conv2d_winograd_release(void) {
    free(g_ws);
    g_ws = NULL;
    g_ws_floats = 0;
}

static int round16_down(size_t v) { return v >= 16 ? (int)(v & ~(size_t)15) : 16; }

/* The driver: s is the shape of the convolution this computes (for the input
 * gradient, the one from dy [B, Cout', H, W] to dx [B, Cin', H, W]). */
static void wino(float *y, const float *x, zl_dtype wdt, const void *Wt, const float *b, const zl_conv_shape *s, int kc,
                 int pc, int tr) {
    const int th = (s->H + 3) / 4, tw = (s->W + 3) / 4, Cin = s->Cin, Cout = s->Cout;
    const size_t P = (size_t)s->B * th * tw;
    #pragma omp atomic
    g_wg_calls++;
    const size_t ny = (size_t)s->B * Cout * s->H * s->W;
    if (kc <= 0) kc = round16_down(WG_U_BYTES / (36 * sizeof(float) * (size_t)Cin));
    if (kc > Cout) kc = Cout;
    if (pc <= 0) {
        const size_t pv = WG_V_BYTES / (36 * sizeof(float) * (size_t)Cin), pm = WG_M_BYTES / (36 * sizeof(float) * (size_t)kc);
        pc = round16_down(pv < pm ? pv : pm);
    }
    if ((size_t)pc > P) pc = (int)P;
    const size_t nu = (size_t)36 * kc * Cin, nv = (size_t)36 * Cin * pc, nm = (size_t)36 * kc * pc;
    const size_t nr = (size_t)omp_get_max_threads() * row_floats(tw);
    int owned;
    float *U = ws_take(nu + nv + nm + nr, &owned);
    if (!U) {
        for (size_t i = 0; i < ny; i++) y[i] = NAN; /* the model's finite-value check reports it */
        return;
    }
    float *V = U + nu, *M = V + nv, *rows = M + nm;
    const int one_v = (size_t)pc >= P; /* then V is transformed once for every chunk of channels */
    if (one_v) input_tf(V, x, s, th, tw, 0, (int)P, rows);
    for (int k0 = 0; k0 < Cout; k0 += kc) {
        const int kn = Cout - k0 < kc ? Cout - k0 : kc;
        weights_tf(U, Wt, wdt, Cin, Cout, k0, kn, tr);
        for (size_t p0 = 0; p0 < P; p0 += (size_t)pc) {
            const int pn = (int)(P - p0 < (size_t)pc ? P - p0 : (size_t)pc);
            if (!one_v) input_tf(V, x, s, th, tw, p0, pn, rows);
            /* 36 independent products, each one single-threaded call */
            #pragma omp parallel for schedule(dynamic, 1)
            for (int xi = 0; xi < 36; xi++)
                zl_sgemm_serial(0, 0, kn, pn, Cin, 1.0f, U + (size_t)xi * kn * Cin, Cin, V + (size_t)xi * Cin * pn, pn,
                                0.0f, M + (size_t)xi * kn * pn, pn);
            output_tf(y, M, b, s, th, tw, k0, kn, p0, pn, tr);
        }
    }
    ws_give(U, owned);
}

void zl_conv2d_fwd_winograd_chunks(float *y, const float *x, zl_dtype wdt, const void *Wt, const float *b,
                                   const zl_conv_shape *s, int kc, int pc) {
    wino(y, x, wdt, Wt, b, s, kc, pc, 0);
}

void zl_conv2d_dx_winograd_chunks(float *dx, const float *dy, zl_dtype wdt, const void *Wt, const zl_conv_shape *s,
                                  int kc, int pc) {
    zl_conv_shape t = *s; /* dy [B, Cout, H, W] -> dx [B, Cin, H, W], the same padding */
    t.Cin = s->Cout;
    t.Cout = s->Cin;
    wino(dx, dy, wdt, Wt, NULL, &t, kc, pc, 1);
}

void zl_conv2d_fwd_winograd(float *y, const float *x, zl_dtype wdt, const void *Wt, const float *b,
                            const zl_conv_shape *s) {
    wino(y, x, wdt, Wt, b, s, 0, 0, 0);
}

void zl_conv2d_dx_winograd(float *dx, const float *dy, zl_dtype wdt, const void *Wt, const zl_conv_shape *s) {
    zl_conv2d_dx_winograd_chunks(dx, dy, wdt, Wt, s, 0, 0);
}
