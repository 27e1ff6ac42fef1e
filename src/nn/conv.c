/* 2-D convolution, forward and backward. A 1x1 stride-1 unpadded conv is one
 * sgemm per image. Everything else goes through im2col, tiled over output
 * rows so the column buffer stays bounded (ZL_CONV_COL_BYTES) however large
 * the image: y[:, rows] = Wt [Cout, Cin*kh*kw] * col [Cin*kh*kw, rows*Wo]. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn/conv_tiles.h"
#include "nn/ops.h"

/* Column-buffer budget per tile: big enough that sgemm sees N >= ~1000
 * columns for SDXL shapes, small enough to stay near the caches. */
#define ZL_CONV_COL_BYTES ((size_t)12 << 20)

int zl_conv_out_h(const zl_conv_shape *s) {
    int n = s->H + s->pad_t + s->pad_b - s->kh;
    return n < 0 || s->stride <= 0 ? 0 : n / s->stride + 1;
}

int zl_conv_out_w(const zl_conv_shape *s) {
    int n = s->W + s->pad_l + s->pad_r - s->kw;
    return n < 0 || s->stride <= 0 ? 0 : n / s->stride + 1;
}

static int is_pointwise(const zl_conv_shape *s) {
    return s->kh == 1 && s->kw == 1 && s->stride == 1 && !s->pad_t && !s->pad_l && !s->pad_b && !s->pad_r;
}

/* A column buffer for R output rows; on allocation failure retry with one row.
 * NULL only when even one row does not fit; callers then poison their outputs
 * with NaN so the model's finite-value check reports it (the ops return no status). */
static float *alloc_col(int K, int Wo, int *R) {
    float *c = malloc((size_t)K * *R * Wo * sizeof(float));
    if (!c && *R > 1) {
        *R = 1;
        c = malloc((size_t)K * Wo * sizeof(float));
    }
    return c;
}

static void poison(float *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = NAN;
}

/* Output rows per tile so that the column buffer fits the budget. */
static int tile_rows(const zl_conv_shape *s, int Ho, int Wo) {
    size_t K = (size_t)s->Cin * s->kh * s->kw;
    size_t per_row = K * (size_t)Wo * sizeof(float);
    int r = per_row ? (int)(ZL_CONV_COL_BYTES / per_row) : Ho;
    if (r < 1) r = 1;
    if (r > Ho) r = Ho;
    return r;
}

/* Range [*lo, *hi) of ox whose input column ix = ox*stride - pad_l + kx lies in [0, W). */
static void valid_ox(int Wo, int W, int stride, int pad_l, int kx, int *lo, int *hi) {
    int a = pad_l - kx; /* need ox*stride >= a */
    int l = a <= 0 ? 0 : (a + stride - 1) / stride;
    int b = W + pad_l - kx; /* need ox*stride < b */
    int h = b <= 0 ? 0 : (b + stride - 1) / stride;
    if (h > Wo) h = Wo;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

/* col [Cin*kh*kw, (r1-r0)*Wo] from one image x [Cin, H, W], output rows [r0, r1). */
static void im2col(float *col, const float *x, const zl_conv_shape *s, int Wo, int r0, int r1) {
    const int kk = s->kh * s->kw, K = s->Cin * kk, N = (r1 - r0) * Wo;
    #pragma omp parallel for schedule(static) if ((size_t)K * N > 32768)
    for (int row = 0; row < K; row++) {
        const int c = row / kk, ky = (row % kk) / s->kw, kx = row % s->kw;
        const float *xc = x + (size_t)c * s->H * s->W;
        float *dst = col + (size_t)row * N;
        int lo, hi;
        valid_ox(Wo, s->W, s->stride, s->pad_l, kx, &lo, &hi);
        for (int oy = r0; oy < r1; oy++, dst += Wo) {
            const int iy = oy * s->stride - s->pad_t + ky;
            if (iy < 0 || iy >= s->H || lo >= hi) {
                memset(dst, 0, (size_t)Wo * sizeof(float));
                continue;
            }
            const float *src = xc + (size_t)iy * s->W; /* input column of ox: ox*stride - pad_l + kx */
            const int off = kx - s->pad_l;
            for (int ox = 0; ox < lo; ox++) dst[ox] = 0.0f;
            if (s->stride == 1)
                memcpy(dst + lo, src + lo + off, (size_t)(hi - lo) * sizeof(float));
            else
                for (int ox = lo; ox < hi; ox++) dst[ox] = src[ox * s->stride + off];
            for (int ox = hi; ox < Wo; ox++) dst[ox] = 0.0f;
        }
    }
}

/* dx [Cin, H, W] += col2im(dcol), the adjoint of im2col. Parallel over input
 * channels: every kernel tap of a channel is summed by the same thread in the
 * same order, so the result is thread-count independent. */
static void col2im_add(float *dx, const float *dcol, const zl_conv_shape *s, int Wo, int r0, int r1) {
    const int kk = s->kh * s->kw, N = (r1 - r0) * Wo;
    #pragma omp parallel for schedule(static) if ((size_t)s->Cin * kk * N > 32768)
    for (int c = 0; c < s->Cin; c++) {
        float *xc = dx + (size_t)c * s->H * s->W;
        for (int t = 0; t < kk; t++) {
            const int ky = t / s->kw, kx = t % s->kw;
            const float *src = dcol + ((size_t)c * kk + t) * N;
            int lo, hi;
            valid_ox(Wo, s->W, s->stride, s->pad_l, kx, &lo, &hi);
            for (int oy = r0; oy < r1; oy++, src += Wo) {
                const int iy = oy * s->stride - s->pad_t + ky;
                if (iy < 0 || iy >= s->H) continue;
                float *dst = xc + (size_t)iy * s->W;
                const int off = kx - s->pad_l;
                if (s->stride == 1) {
                    float *d1 = dst + lo + off; /* lo + off >= 0 by valid_ox */
                    const float *s1 = src + lo;
                    #pragma omp simd
                    for (int i = 0; i < hi - lo; i++) d1[i] += s1[i];
                } else {
                    for (int ox = lo; ox < hi; ox++) dst[ox * s->stride + off] += src[ox];
                }
            }
        }
    }
}

static void fill_bias(float *y, const float *b, int Cout, size_t HW) {
    #pragma omp parallel for schedule(static) if ((size_t)Cout * HW > 65536)
    for (int o = 0; o < Cout; o++) {
        float *r = y + (size_t)o * HW, v = b ? b[o] : 0.0f;
        for (size_t i = 0; i < HW; i++) r[i] = v;
    }
}

static int conv_fwd(float *y, const float *x, const float *F, zl_dtype wdt, const void *Wst, const uint16_t *Wp,
                    const float *b, const zl_conv_shape *s, int rows);

void zl_conv2d_fwd(float *y, const float *x, const float *Wt, const float *b, const zl_conv_shape *s) {
    /* bfloat16 products: direct (im2col) on the tile unit, never Winograd, whose
     * transforms would magnify bfloat16's rounding. */
    if (zl_bf16_active() && conv_fwd(y, x, NULL, ZL_DT_F32, Wt, NULL, b, s, 0) == ZL_OK) return;
    if (zl_conv2d_winograd_ok(s)) {
        zl_conv2d_fwd_winograd(y, x, ZL_DT_F32, Wt, b, s);
        return;
    }
    zl_conv2d_fwd_rows(y, x, Wt, b, s, 0);
}

void zl_conv2d_bwd(float *dx, float *dW, float *db, const float *dy, const float *x, const float *Wt,
                   const zl_conv_shape *s) {
    if (dx && zl_conv2d_winograd_ok(s)) {
        zl_conv2d_dx_winograd(dx, dy, ZL_DT_F32, Wt, s);
        dx = NULL;
    }
    zl_conv2d_bwd_rows(dx, dW, db, dy, x, Wt, s, 0);
}

/* The forward, with the weights as float32 (F != NULL), packed for the
 * bfloat16 tile products (Wp != NULL) or in a stored dtype. */
static int conv_fwd(float *y, const float *x, const float *F, zl_dtype wdt, const void *Wst, const uint16_t *Wp,
                    const float *b, const zl_conv_shape *s, int rows) {
    const int Ho = zl_conv_out_h(s), Wo = zl_conv_out_w(s);
    const size_t HWo = (size_t)Ho * Wo, HWi = (size_t)s->H * s->W;
    const int K = s->Cin * s->kh * s->kw;
    int rc = 0;
    if (Ho <= 0 || Wo <= 0 || s->Cout <= 0) return 0;
    const int bf16 = Wp || (!F && zl_bf16_active());
    if (is_pointwise(s)) {
        for (int n = 0; n < s->B && !rc; n++) {
            float *yb = y + (size_t)n * s->Cout * HWo;
            const float *xb = x + (size_t)n * s->Cin * HWi;
            if (b) fill_bias(yb, b, s->Cout, HWo);
            /* bfloat16: the input packed once for all blocks of the product */
            uint16_t *Bp = bf16 ? zl_bf16_pack_cols(xb, (int)HWo, s->Cin, (int)HWo) : NULL;
            if (Bp) {
                rc = zl_sgemm_bf16_cols(s->Cout, (int)HWo, s->Cin, wdt, Wst, Wp, Bp, b ? 1.0f : 0.0f, yb, (int)HWo);
                free(Bp);
                continue;
            }
            if (Wp)
                rc = zl_sgemm_bf16p_nn(s->Cout, (int)HWo, s->Cin, Wp, xb, (int)HWo, b ? 1.0f : 0.0f, yb, (int)HWo);
            else if (F)
                zl_sgemm(0, 0, s->Cout, (int)HWo, s->Cin, 1.0f, F, s->Cin, xb, (int)HWo, b ? 1.0f : 0.0f, yb, (int)HWo);
            else
                rc = zl_sgemm_stored_nn(s->Cout, (int)HWo, s->Cin, wdt, Wst, xb, (int)HWo, b ? 1.0f : 0.0f, yb, (int)HWo);
        }
        return rc;
    }
    int R = rows > 0 ? (rows < Ho ? rows : Ho) : tile_rows(s, Ho, Wo);
    /* float32 columns [K, R*Wo]; bfloat16 packs from x and needs them only if
     * its own buffer cannot be had */
    float *col = bf16 ? NULL : alloc_col(K, Wo, &R);
    if (!bf16 && !col) {
        poison(y, (size_t)s->B * s->Cout * HWo);
        return 0;
    }
    for (int n = 0; n < s->B && !rc; n++) {
        const float *xb = x + (size_t)n * s->Cin * HWi;
        float *yb = y + (size_t)n * s->Cout * HWo; // [Cout, Ho*Wo]
        if (b) fill_bias(yb, b, s->Cout, HWo);
        for (int r0 = 0; r0 < Ho && !rc; r0 += R) {
            int r1 = r0 + R < Ho ? r0 + R : Ho, N = (r1 - r0) * Wo;
            /* bfloat16: the columns packed straight from x, once for all blocks */
            uint16_t *Bp = bf16 ? zl_bf16_pack_im2col(xb, s, Wo, r0, r1) : NULL;
            if (Bp) {
                rc = zl_sgemm_bf16_cols(s->Cout, N, K, wdt, Wst, Wp, Bp, b ? 1.0f : 0.0f, yb + (size_t)r0 * Wo,
                                        (int)HWo);
                free(Bp);
                continue;
            }
            if (!col) { /* bfloat16's buffer could not be had: float32 columns, maybe fewer rows */
                if (!(col = alloc_col(K, Wo, &R))) {
                    poison(y, (size_t)s->B * s->Cout * HWo);
                    return 0;
                }
                r1 = r0 + R < Ho ? r0 + R : Ho, N = (r1 - r0) * Wo;
            }
            im2col(col, xb, s, Wo, r0, r1);
            if (Wp)
                rc = zl_sgemm_bf16p_nn(s->Cout, N, K, Wp, col, N, b ? 1.0f : 0.0f, yb + (size_t)r0 * Wo, (int)HWo);
            else if (F)
                zl_sgemm(0, 0, s->Cout, N, K, 1.0f, F, K, col, N, b ? 1.0f : 0.0f, yb + (size_t)r0 * Wo, (int)HWo);
            else
                rc = zl_sgemm_stored_nn(s->Cout, N, K, wdt, Wst, col, N, b ? 1.0f : 0.0f, yb + (size_t)r0 * Wo, (int)HWo);
        }
    }
    free(col);
    return rc;
}

void zl_conv2d_fwd_rows(float *y, const float *x, const float *Wt, const float *b, const zl_conv_shape *s, int rows) {
    conv_fwd(y, x, Wt, ZL_DT_F32, NULL, NULL, b, s, rows);
}

int zl_conv2d_fwd_bf16p(float *y, const float *x, const uint16_t *Wp, const float *b, const zl_conv_shape *s) {
    return conv_fwd(y, x, NULL, ZL_DT_BF16, NULL, Wp, b, s, 0);
}

int zl_conv2d_fwd_stored(float *y, const float *x, zl_dtype wdt, const void *Wt, const float *b, const zl_conv_shape *s) {
    if (!zl_bf16_active() && zl_conv2d_winograd_ok(s)) {
        zl_conv2d_fwd_winograd(y, x, wdt, Wt, b, s);
        return 0;
    }
    return conv_fwd(y, x, NULL, wdt, Wt, NULL, b, s, 0);
}

void zl_conv2d_bwd_rows(float *dx, float *dW, float *db, const float *dy, const float *x, const float *Wt,
                        const zl_conv_shape *s, int rows) {
    const int Ho = zl_conv_out_h(s), Wo = zl_conv_out_w(s);
    const size_t HWo = (size_t)Ho * Wo, HWi = (size_t)s->H * s->W;
    const int K = s->Cin * s->kh * s->kw;
    if (Ho <= 0 || Wo <= 0 || s->Cout <= 0) return;
    if (db) {
        #pragma omp parallel for schedule(static) if ((size_t)s->B * s->Cout * HWo > 65536)
        for (int o = 0; o < s->Cout; o++) {
            double acc = 0;
            for (int n = 0; n < s->B; n++) {
                const float *r = dy + ((size_t)n * s->Cout + o) * HWo;
                float part = 0.0f;
                for (size_t i = 0; i < HWo; i++) part += r[i];
                acc += part;
            }
            db[o] += (float)acc;
        }
    }
    if (!dx && !dW) return;
    if (is_pointwise(s)) {
        for (int n = 0; n < s->B; n++) {
            const float *dyb = dy + (size_t)n * s->Cout * HWo;
            if (dW) zl_sgemm(0, 1, s->Cout, s->Cin, (int)HWo, 1.0f, dyb, (int)HWo, x + (size_t)n * s->Cin * HWi,
                             (int)HWi, 1.0f, dW, s->Cin);
            if (dx) zl_sgemm(1, 0, s->Cin, (int)HWo, s->Cout, 1.0f, Wt, s->Cin, dyb, (int)HWo, 1.0f,
                             dx + (size_t)n * s->Cin * HWi, (int)HWi);
        }
        return;
    }
    int R = rows > 0 ? (rows < Ho ? rows : Ho) : tile_rows(s, Ho, Wo);
    float *col = alloc_col(K, Wo, &R); // [K, R*Wo], im2col of x or dcol
    if (!col) {
        if (dx) poison(dx, (size_t)s->B * s->Cin * HWi);
        if (dW) poison(dW, (size_t)s->Cout * K);
        return;
    }
    for (int n = 0; n < s->B; n++) {
        const float *xb = x + (size_t)n * s->Cin * HWi;
        const float *dyb = dy + (size_t)n * s->Cout * HWo; // [Cout, Ho*Wo]
        for (int r0 = 0; r0 < Ho; r0 += R) {
            const int r1 = r0 + R < Ho ? r0 + R : Ho, N = (r1 - r0) * Wo;
            const float *dyt = dyb + (size_t)r0 * Wo;
            if (dW) {
                im2col(col, xb, s, Wo, r0, r1);
                zl_sgemm(0, 1, s->Cout, K, N, 1.0f, dyt, (int)HWo, col, N, 1.0f, dW, K);
            }
            if (dx) {
                zl_sgemm(1, 0, K, N, s->Cout, 1.0f, Wt, K, dyt, (int)HWo, 0.0f, col, N);
                col2im_add(dx + (size_t)n * s->Cin * HWi, col, s, Wo, r0, r1);
            }
        }
    }
    free(col);
}
