/* The bfloat16 matmul precisions (src/nn/gemm_bf16.c): products with stored
 * weights whose factors are rounded to bfloat16 and summed in float32 (BF16),
 * or split into two bfloat16 parts, x = hi + lo, with three products summed,
 * hi hi + hi lo + lo hi (BF16X3).
 *
 * Every result is held against a float64 computation of the same products
 * from the bfloat16 parts of the factors, within the a priori bound of
 * float32 summation, (n + 2) 2^-24 sum |terms| over its n terms; and against
 * the exact float32 product, from which BF16 must differ by bfloat16's
 * rounding (so the mode really ran) and BF16X3 by far less. An input whose
 * three products are known exactly shows BF16X3 ran, neither BF16 nor F32.
 * Both the scalar model of the tile product (any CPU) and, where the CPU
 * has them, the AMX tiles are checked; the tiles also bit for bit across
 * thread counts. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "nn/ops.h"
#include "testlib.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) & 0xFFFFFF) / 16777216.0f * 2.0f - 1.0f;
}
static double bf(float x) { return (double)zl_bf16_to_f32(zl_f32_to_bf16(x)); }

/* The checks below model BF16X3 when set, else BF16. */
static int g_x3;
/* What bfloat16 rounding of x leaves, rounded (x - hi is exact in float32). */
static double lo(float x) {
    const float h = zl_bf16_to_f32(zl_f32_to_bf16(x));
    return isfinite(h) ? bf(x - h) : 0.0;
}
/* a b as the mode computes it, in float64 from the bfloat16 parts; adds the
 * magnitude of each term to *mag. */
static double mprod(float a, float b, double *mag) {
    if (!g_x3) {
        const double p = bf(a) * bf(b);
        *mag += fabs(p);
        return p;
    }
    const double p1 = bf(a) * bf(b), p2 = bf(a) * lo(b), p3 = lo(a) * bf(b);
    *mag += fabs(p1) + fabs(p2) + fabs(p3);
    return p1 + p2 + p3;
}
/* The parts of n values: h[i] = bf(v[i]), l[i] = lo(v[i]) (0 under BF16). */
static void parts(const float *v, size_t n, double *h, double *l) {
    for (size_t i = 0; i < n; i++) h[i] = bf(v[i]), l[i] = g_x3 ? lo(v[i]) : 0.0;
}

/* float32 terms summed per product */
static int nterm(void) { return g_x3 ? 3 : 1; }
static const char *pname(void) { return g_x3 ? "bf16x3" : "bf16"; }

/* Fill n values of dtype dt at W; vals gets the exact values stored. */
static void make_weight(zl_dtype dt, void *W, float *vals, size_t n) {
    for (size_t i = 0; i < n; i++) vals[i] = frand() * 0.5f;
    zl_convert_from_f32(dt, vals, W, n);
    zl_convert_to_f32(dt, W, vals, n);
}

typedef struct {
    double maxratio; /* max |C - ref| / bound */
    double rel32;    /* ||C - exact f32 product|| / ||exact|| */
} outcome;

/* mode 0: C[M,N] = beta C + F[M,K] W[N,K]^T ; mode 1: C = beta C + W[M,K] F[K,N];
 * mode 2: C = beta C + F[M,K] W[K,N]. */
static outcome run_case(int mode, int M, int N, int K, zl_dtype wdt, float beta, float *Cout) {
    const size_t wn = mode == 0 ? (size_t)N * K : mode == 1 ? (size_t)M * K : (size_t)K * N;
    const size_t fn = mode == 1 ? (size_t)K * N : (size_t)M * K;
    float *F = malloc(fn * sizeof(float)), *Wv = malloc(wn * sizeof(float)), *C0 = malloc((size_t)M * N * sizeof(float));
    void *W = malloc(wn * 4);
    float *C = Cout;
    for (size_t i = 0; i < fn; i++) F[i] = frand();
    make_weight(wdt, W, Wv, wn);
    for (size_t i = 0; i < (size_t)M * N; i++) C0[i] = beta == 0.0f ? NAN : frand();
    memcpy(C, C0, (size_t)M * N * sizeof(float));
    double *fh = malloc(fn * 8), *fl = malloc(fn * 8), *wh = malloc(wn * 8), *wl = malloc(wn * 8);
    parts(F, fn, fh, fl);
    parts(Wv, wn, wh, wl);
    int rc = mode == 0   ? zl_sgemm_nt_stored(M, N, K, F, K, wdt, W, beta, C, N)
             : mode == 1 ? zl_sgemm_stored_nn(M, N, K, wdt, W, F, N, beta, C, N)
                         : zl_sgemm_nn_stored(M, N, K, F, K, wdt, W, beta, C, N);
    CHECKM(rc == ZL_OK, "bf16 product mode %d returned %d", mode, rc);
    outcome o = {0, 0};
    double d2 = 0, r2 = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double ref = beta == 0.0f ? 0.0 : (double)beta * C0[(size_t)i * N + j], bound = fabs(ref), exact = ref;
            for (int k = 0; k < K; k++) {
                const size_t ia = (size_t)i * K + k;
                const size_t ib = mode == 0 ? (size_t)j * K + k : (size_t)k * N + j;
                const float a = mode == 1 ? Wv[ia] : F[ia];
                const float b = mode == 0 || mode == 2 ? Wv[ib] : F[ib];
                const double ah = mode == 1 ? wh[ia] : fh[ia], al = mode == 1 ? wl[ia] : fl[ia];
                const double bh = mode == 1 ? fh[ib] : wh[ib], bl = mode == 1 ? fl[ib] : wl[ib];
                /* mprod(a, b) from the parts (al, bl are 0 under BF16) */
                const double p1 = ah * bh, p2 = ah * bl, p3 = al * bh;
                ref += p1 + p2 + p3;
                bound += fabs(p1) + fabs(p2) + fabs(p3);
                exact += (double)a * b;
            }
            const double got = C[(size_t)i * N + j];
            const double lim = (K * nterm() + 2) * ldexp(1.0, -24) * bound + 1e-30;
            const double r = fabs(got - ref) / lim;
            if (!(r <= o.maxratio)) o.maxratio = r; /* NaN sticks */
            d2 += (got - exact) * (got - exact);
            r2 += exact * exact;
        }
    o.rel32 = sqrt(d2 / r2);
    free(F), free(Wv), free(C0), free(W), free(fh), free(fl), free(wh), free(wl);
    return o;
}

static const char *dtname(zl_dtype d) { return zl_dtype_name(d); }

static void check_cases(const char *path) {
    static const int shapes[][3] = {{37, 45, 70}, {16, 16, 32}, {100, 96, 64}, {33, 17, 5}, {300, 200, 1000}};
    const zl_dtype dts[] = {ZL_DT_F16, ZL_DT_BF16, ZL_DT_F32};
    const float betas[] = {0.0f, 1.0f, 0.5f};
    for (int mode = 0; mode < 3; mode++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int d = 0; d < 3; d++)
                for (int bi = 0; bi < 3; bi++) {
                    const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                    /* the large shape: F16 weights, beta 0 and 1; for bf16x3's scalar model beta 1 only
                     * (the grid's splits are also checked by check_packed and check_threads) */
                    if (s == 4 && (d != 0 || bi == 2 || (g_x3 && !strcmp(path, "emulated") && bi == 0))) continue;
                    float *C = malloc((size_t)M * N * sizeof(float));
                    const outcome o = run_case(mode, M, N, K, dts[d], betas[bi], C);
                    CHECKM(o.maxratio <= 1.0, "%s %s mode %d %dx%dx%d %s beta %g: error %.3g of the float32-sum bound",
                           path, pname(), mode, M, N, K, dtname(dts[d]), betas[bi], o.maxratio);
                    /* bfloat16 rounding of random factors: about 2^-9 relative per
                     * product; the sum's relative error is of that order. The
                     * split parts leave about 2^-17 per factor. */
                    if (!g_x3)
                        CHECKM(o.rel32 > 2e-4 && o.rel32 < 1e-2, "%s mode %d %dx%dx%d %s: relative error %.3g to the "
                               "float32 product is not bfloat16's", path, mode, M, N, K, dtname(dts[d]), o.rel32);
                    else
                        CHECKM(o.rel32 < 5e-5, "%s bf16x3 mode %d %dx%dx%d %s: relative error %.3g to the float32 "
                               "product", path, mode, M, N, K, dtname(dts[d]), o.rel32);
                    free(C);
                }
}

/* One product known exactly in all three precisions (F16 weight w at K
 * position 32, the rest 0, so the K padding is crossed):
 *   x = 1 + 2^-7 + 2^-15 + 2^-23 splits as hi 1 + 2^-7, lo 2^-15 (the tie
 *   2^-15 (1 + 2^-8) rounds to even);  w = 1 + 2^-10 as hi 1, lo 2^-10.
 *   BF16X3: x_hi w_hi + x_hi w_lo + x_lo w_hi = 1 + 2^-7 + 2^-10 + 2^-15 + 2^-17;
 *   float32 rounds x w to that + 2^-23; BF16 gives 1 + 2^-7.
 * Every value above is a float32, and so is every partial sum. */
static void check_exact(const char *path) {
    const int K = 33;
    float F[33] = {0}, Wf[33] = {0}, C[1];
    uint16_t W[33] = {0};
    F[32] = 1.0f + ldexpf(1, -7) + ldexpf(1, -15) + ldexpf(1, -23);
    Wf[32] = 1.0f + ldexpf(1, -10);
    zl_convert_from_f32(ZL_DT_F16, Wf, W, 33);
    const float x3 = 1.0f + ldexpf(1, -7) + ldexpf(1, -10) + ldexpf(1, -15) + ldexpf(1, -17);
    const float want = g_x3 ? x3 : 1.0f + ldexpf(1, -7);
    CHECK(x3 + ldexpf(1, -23) == F[32] * Wf[32]); /* what float32 would give */
    for (int mode = 0; mode < 3; mode++) {
        C[0] = NAN;
        const int rc = mode == 0   ? zl_sgemm_nt_stored(1, 1, K, F, K, ZL_DT_F16, W, 0.0f, C, 1)
                       : mode == 1 ? zl_sgemm_stored_nn(1, 1, K, ZL_DT_F16, W, F, 1, 0.0f, C, 1)
                                   : zl_sgemm_nn_stored(1, 1, K, F, K, ZL_DT_F16, W, 0.0f, C, 1);
        CHECKM(rc == ZL_OK && C[0] == want, "%s %s mode %d: x w = 1 + %.9g, expected 1 + %.9g", path, pname(), mode,
               (double)C[0] - 1, (double)want - 1);
    }
}

/* A 3x3 convolution (shape Winograd would take in float32) and a linear with
 * float32 weights, through the ops' own entries. */
/* One convolution through both entries (F16 stored, float32 weights): equal
 * to each other, within the float32-sum bound of float64 on bf16-rounded
 * factors, and not float32's result. */
static void check_conv(const char *path, zl_conv_shape s) {
    const int Ho = zl_conv_out_h(&s), Wo = zl_conv_out_w(&s), kk = s.kh * s.kw;
    const size_t xn = (size_t)s.B * s.Cin * s.H * s.W, wn = (size_t)s.Cout * s.Cin * kk, yn = (size_t)s.B * s.Cout * Ho * Wo;
    float *x = malloc(xn * 4), *wv = malloc(wn * 4), *bias = malloc(s.Cout * 4), *y = malloc(yn * 4), *y2 = malloc(yn * 4);
    uint16_t *w16 = malloc(wn * 2);
    for (size_t i = 0; i < xn; i++) x[i] = frand();
    make_weight(ZL_DT_F16, w16, wv, wn);
    for (int o = 0; o < s.Cout; o++) bias[o] = frand();
    CHECK_OK(zl_conv2d_fwd_stored(y, x, ZL_DT_F16, w16, bias, &s));
    zl_conv2d_fwd(y2, x, wv, bias, &s);
    double worst = 0, d2 = 0, r2 = 0;
    int same = 1;
    for (int b = 0; b < s.B; b++)
        for (int o = 0; o < s.Cout; o++)
            for (int i = 0; i < Ho; i++)
                for (int j = 0; j < Wo; j++) {
                    double ref = bias[o], bound = fabs(bias[o]), exact = bias[o];
                    for (int c = 0; c < s.Cin; c++)
                        for (int u = 0; u < s.kh; u++)
                            for (int v = 0; v < s.kw; v++) {
                                const int yi = i * s.stride + u - s.pad_t, xj = j * s.stride + v - s.pad_l;
                                if (yi < 0 || yi >= s.H || xj < 0 || xj >= s.W) continue;
                                const float a = wv[((size_t)o * s.Cin + c) * kk + u * s.kw + v];
                                const float xv = x[(((size_t)b * s.Cin + c) * s.H + yi) * s.W + xj];
                                ref += mprod(a, xv, &bound), exact += (double)a * xv;
                            }
                    const size_t at = (((size_t)b * s.Cout + o) * Ho + i) * Wo + j;
                    const double r = fabs(y[at] - ref) / ((s.Cin * kk * nterm() + 2) * ldexp(1.0, -24) * bound);
                    if (!(r <= worst)) worst = r;
                    same &= y[at] == y2[at];
                    d2 += (y[at] - exact) * (y[at] - exact), r2 += exact * exact;
                }
    CHECKM(same, "%s conv %dx%d stride %d: float32-weight and F16-stored entries differ", path, s.kh, s.kw, s.stride);
    CHECKM(worst <= 1.0, "%s conv %dx%d stride %d (%dx%d): error %.3g of the bound", path, s.kh, s.kw, s.stride, s.H,
           s.W, worst);
    if (!g_x3)
        CHECKM(sqrt(d2 / r2) > 2e-4, "%s conv %dx%d: no bfloat16 rounding (%.3g)", path, s.kh, s.kw, sqrt(d2 / r2));
    else
        CHECKM(sqrt(d2 / r2) < 5e-5, "%s bf16x3 conv %dx%d: relative error %.3g", path, s.kh, s.kw, sqrt(d2 / r2));
    free(x), free(wv), free(bias), free(y), free(y2), free(w16);
}

static void check_ops(const char *path) {
    zl_conv_shape s = {.B = 2, .Cin = 24, .H = 20, .W = 18, .Cout = 40, .kh = 3, .kw = 3, .stride = 1,
                       .pad_t = 1, .pad_l = 1, .pad_b = 1, .pad_r = 1};
    CHECK(zl_conv2d_winograd_ok(&s)); /* float32 would take Winograd here; bf16 must not */
    check_conv(path, s);
    /* the VAE's downsampler: stride 2, padding right/bottom only */
    check_conv(path, (zl_conv_shape){.B = 1, .Cin = 16, .H = 17, .W = 32, .Cout = 20, .kh = 3, .kw = 3, .stride = 2,
                                     .pad_t = 0, .pad_l = 0, .pad_b = 1, .pad_r = 1});
    /* the UNet's downsampler (stride 2, padding 1) and a 1x1 shortcut */
    check_conv(path, (zl_conv_shape){.B = 2, .Cin = 32, .H = 32, .W = 32, .Cout = 48, .kh = 3, .kw = 3, .stride = 2,
                                     .pad_t = 1, .pad_l = 1, .pad_b = 1, .pad_r = 1});
    check_conv(path, (zl_conv_shape){.B = 2, .Cin = 40, .H = 16, .W = 16, .Cout = 24, .kh = 1, .kw = 1, .stride = 1});
    float *bias = malloc(64 * 4);
    for (int o = 0; o < 64; o++) bias[o] = frand();
    double worst;

    /* linear, float32 weights */
    const int N = 50, in = 70, out = 33;
    float *lx = malloc((size_t)N * in * 4), *lw = malloc((size_t)out * in * 4), *ly = malloc((size_t)N * out * 4);
    for (int i = 0; i < N * in; i++) lx[i] = frand();
    for (int i = 0; i < out * in; i++) lw[i] = frand();
    zl_linear_fwd(ly, lx, lw, bias, N, in, out);
    worst = 0;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < out; o++) {
            double ref = bias[o], bound = fabs(bias[o]);
            for (int k = 0; k < in; k++) ref += mprod(lx[n * in + k], lw[o * in + k], &bound);
            const double r = fabs(ly[n * out + o] - ref) / ((in * nterm() + 2) * ldexp(1.0, -24) * bound);
            if (!(r <= worst)) worst = r;
        }
    CHECKM(worst <= 1.0, "%s linear (float32 weights): error %.3g of the bound", path, worst);
    free(bias), free(lx), free(lw), free(ly);
}

/* The tile path: the same bytes on 1-4 threads (a shape zl_sgemm splits). */
static void check_threads(void) {
    const int M = 300, N = 200, K = 1000;
    float *ref = malloc((size_t)M * N * 4), *C = malloc((size_t)M * N * 4);
    const int t0 = omp_get_max_threads();
    for (int t = 1; t <= 4; t++) {
        omp_set_num_threads(t);
        rng_state = 12345;
        run_case(0, M, N, K, ZL_DT_F16, 1.0f, t == 1 ? ref : C);
        if (t > 1) CHECKM(memcmp(ref, C, (size_t)M * N * 4) == 0, "AMX bf16 product differs on %d threads", t);
    }
    omp_set_num_threads(t0);
    free(ref), free(C);
}

/* The weight packed once (zl_bf16_pack_weight) gives the bytes of per-call
 * packing, on grids whose blocks start at odd 16-row groups (1-4 threads). */
static void check_packed(void) {
    const int M = 300, N = 208, K = 1000; /* N: 13 groups of 16 */
    float *A = malloc((size_t)M * K * 4), *Wv = malloc((size_t)N * K * 4), *c1 = malloc((size_t)M * N * 4),
          *c2 = malloc((size_t)M * N * 4), *Bm = malloc((size_t)K * M * 4);
    uint16_t *W = malloc((size_t)N * K * 2);
    for (int i = 0; i < M * K; i++) A[i] = frand(), Bm[i] = frand();
    make_weight(ZL_DT_F16, W, Wv, (size_t)N * K);
    uint16_t *p0 = zl_bf16_pack_weight(ZL_DT_F16, W, N, K, 0), *p1 = zl_bf16_pack_weight(ZL_DT_F16, W, N, K, 1);
    CHECK(p0 && p1);
    const int t0 = omp_get_max_threads();
    for (int t = 1; t <= 4 && p0 && p1; t++) {
        omp_set_num_threads(t);
        for (int i = 0; i < M * N; i++) c1[i] = c2[i] = (float)(i % 7);
        CHECK_OK(zl_sgemm_nt_stored(M, N, K, A, K, ZL_DT_F16, W, 1.0f, c1, N));
        CHECK_OK(zl_sgemm_nt_bf16p(M, N, K, A, K, p0, 1.0f, c2, N));
        CHECKM(!memcmp(c1, c2, (size_t)M * N * 4), "packed linear weight = per-call packing (%d threads)", t);
        /* mode 1: W [N rows as output channels, K] times B [K, M] */
        CHECK_OK(zl_sgemm_stored_nn(N, M, K, ZL_DT_F16, W, Bm, M, 0.0f, c1, M));
        CHECK_OK(zl_sgemm_bf16p_nn(N, M, K, p1, Bm, M, 0.0f, c2, M));
        CHECKM(!memcmp(c1, c2, (size_t)M * N * 4), "packed conv weight = per-call packing (%d threads)", t);
        /* mode 3: the columns packed once (stored or packed weight) */
        uint16_t *bp = zl_bf16_pack_cols(Bm, M, K, M);
        CHECK(bp != NULL);
        if (bp) {
            CHECK_OK(zl_sgemm_bf16_cols(N, M, K, ZL_DT_F16, W, NULL, bp, 0.0f, c2, M));
            CHECKM(!memcmp(c1, c2, (size_t)M * N * 4), "columns packed once = per panel (%d threads)", t);
            CHECK_OK(zl_sgemm_bf16_cols(N, M, K, ZL_DT_F16, NULL, p1, bp, 0.0f, c2, M));
            CHECKM(!memcmp(c1, c2, (size_t)M * N * 4), "columns packed once, packed weight (%d threads)", t);
            free(bp);
        }
    }
    omp_set_num_threads(t0);
    free(A), free(Wv), free(c1), free(c2), free(Bm), free(W), free(p0), free(p1);
}

/* Columns packed straight from the image = the im2col matrix (built here)
 * packed, byte for byte: stride 1 with whole 16-pixel runs (the vector path,
 * edges masked), and shapes that take the scalar path. */
static void check_im2col(const char *path) {
    static const zl_conv_shape shapes[] = {
        {.B = 1, .Cin = 20, .H = 12, .W = 32, .Cout = 8, .kh = 3, .kw = 3, .stride = 1, .pad_t = 1, .pad_l = 1, .pad_b = 1, .pad_r = 1},
        {.B = 1, .Cin = 7, .H = 9, .W = 16, .Cout = 8, .kh = 1, .kw = 1, .stride = 1},
        {.B = 1, .Cin = 5, .H = 11, .W = 13, .Cout = 8, .kh = 3, .kw = 3, .stride = 1, .pad_t = 1, .pad_l = 1, .pad_b = 1, .pad_r = 1},
        {.B = 1, .Cin = 6, .H = 17, .W = 32, .Cout = 8, .kh = 3, .kw = 3, .stride = 2, .pad_t = 0, .pad_l = 0, .pad_b = 1, .pad_r = 1}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        const zl_conv_shape *s = &shapes[t];
        const int Ho = zl_conv_out_h(s), Wo = zl_conv_out_w(s), K = s->Cin * s->kh * s->kw;
        const int r0 = 1, r1 = Ho - 1, N = (r1 - r0) * Wo;
        float *x = malloc((size_t)s->Cin * s->H * s->W * 4), *col = malloc((size_t)K * N * 4);
        for (int i = 0; i < s->Cin * s->H * s->W; i++) x[i] = frand();
        for (int k = 0; k < K; k++)
            for (int c = 0; c < N; c++) {
                const int cin = k / (s->kh * s->kw), ky = (k / s->kw) % s->kh, kx = k % s->kw;
                const int iy = (r0 + c / Wo) * s->stride - s->pad_t + ky, ix = (c % Wo) * s->stride - s->pad_l + kx;
                col[(size_t)k * N + c] = iy < 0 || iy >= s->H || ix < 0 || ix >= s->W ? 0.0f : x[((size_t)cin * s->H + iy) * s->W + ix];
            }
        uint16_t *a = zl_bf16_pack_im2col(x, s, Wo, r0, r1), *b = zl_bf16_pack_cols(col, N, K, N);
        const size_t bytes = ((size_t)(N + 31) / 32 * 2 + 1) * ((size_t)(K + 31) / 32 * 32) * 16 * 2 * (g_x3 ? 2 : 1);
        CHECKM(a && b && !memcmp(a, b, bytes), "%s: im2col packing, shape %zu (%dx%d stride %d, %dx%d)", path, t, s->kh,
               s->kw, s->stride, s->H, s->W);
        free(a), free(b), free(x), free(col);
    }
}

/* A whole UNet (mini-sdxl, mapped F32): its first bf16 forward packs per
 * product, later ones use the packed weights: the same bytes. Folding a LoRA
 * and clearing it repack; float32 afterwards reads the dropped pages again. */
static void check_unet(void) {
    char cfgp[1024], wp[1024], lp[1024], io[1024];
    snprintf(cfgp, sizeof cfgp, "%s", zt_data("mini-sdxl/unet/config.json"));
    snprintf(wp, sizeof wp, "%s", zt_data("mini-sdxl/unet/diffusion_pytorch_model.safetensors"));
    snprintf(lp, sizeof lp, "%s", zt_data("mini-sdxl/loras/content.kohya.safetensors"));
    snprintf(io, sizeof io, "%s", zt_data("mini-sdxl/unet_io.safetensors"));
    zl_unet_load_opts o = {.config_path = cfgp, .weights = ZL_UNET_WEIGHTS_STORED};
    zl_unet *u = NULL, *u2 = NULL;
    zl_lora *l = NULL;
    zl_st_file *f = NULL;
    CHECK_OK(zl_unet_load(wp, &o, &u));
    CHECK_OK(zl_unet_load(wp, &o, &u2));
    CHECK_OK(zl_st_open(io, &f));
    if (!u || !u2 || !f) return;
    zl_lora_load_opts lo = {.unet_config = zl_unet_get_config(u), .expect_family = zl_unet_get_config(u)->family};
    CHECK_OK(zl_lora_load(lp, &lo, &l));
    const zl_st_tensor *ts = zl_st_find(f, "sample"), *tc = zl_st_find(f, "encoder_hidden_states");
    const size_t n = (size_t)ts->numel;
    float *x[5] = {0}, *out[6];
    const char *names[5] = {"sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"};
    for (int i = 0; i < 5; i++) {
        const zl_st_tensor *t = zl_st_find(f, names[i]);
        x[i] = malloc((size_t)t->numel * 4);
        zl_st_read_f32(t, x[i]);
    }
    for (int i = 0; i < 6; i++) out[i] = malloc(n * 4);
    zl_unet_input in = {(int)ts->shape[0], (int)ts->shape[2], (int)ts->shape[3], (int)tc->shape[1], x[0], x[1], x[2], x[3], x[4]};
    zl_set_matmul_precision(ZL_MATMUL_BF16);
    CHECK_OK(zl_unet_forward(u, &in, out[0]));  /* per product */
    CHECK_OK(zl_unet_forward(u, &in, out[1]));  /* packs */
    CHECK_OK(zl_unet_forward(u, &in, out[2]));  /* packed */
    CHECKM(!memcmp(out[0], out[1], n * 4) && !memcmp(out[0], out[2], n * 4), "UNet bf16: packed weights = per product");
    CHECK_OK(zl_unet_add_lora(u, l, 1.0f, ZL_UNET_LORA_FOLD, NULL));
    CHECK_OK(zl_unet_forward(u, &in, out[3]));  /* folded: repacked from the folded float32 */
    CHECK_OK(zl_unet_add_lora(u2, l, 1.0f, ZL_UNET_LORA_FOLD, NULL));
    CHECK_OK(zl_unet_forward(u2, &in, out[4])); /* a fresh model's first forward with the LoRA */
    CHECKM(!memcmp(out[3], out[4], n * 4), "UNet bf16: folding a LoRA repacks the weights");
    CHECKM(memcmp(out[3], out[2], n * 4) != 0, "the LoRA changes the output");
    CHECK_OK(zl_unet_clear_loras(u));
    CHECK_OK(zl_unet_forward(u, &in, out[5]));
    CHECKM(!memcmp(out[5], out[0], n * 4), "UNet bf16: clearing the LoRA repacks the stored weights");
    zl_set_matmul_precision(ZL_MATMUL_F32);
    CHECK_OK(zl_unet_forward(u, &in, out[5]));  /* float32 from the (dropped, re-read) mapped pages */
    const zl_st_tensor *tr = zl_st_find(f, "out_base");
    float *ref = malloc(n * 4);
    zl_st_read_f32(tr, ref);
    zt_close("UNet float32 after bf16 = diffusers out_base", out[5], ref, (int64_t)n, 1e-4);
    free(ref);
    for (int i = 0; i < 5; i++) free(x[i]);
    for (int i = 0; i < 6; i++) free(out[i]);
    zl_lora_free(l);
    zl_unet_free(u), zl_unet_free(u2);
    zl_st_close(f);
}

/* BF16X3 through a whole UNet (mini-sdxl): within FIXTURES.md's tolerance of
 * diffusers' float32 out_base. The BF16 packing of earlier forwards (one part
 * per value) is not used: the same bytes as a fresh model's. */
static void check_unet_x3(const char *path) {
    char cfgp[1024], wp[1024], io[1024];
    snprintf(cfgp, sizeof cfgp, "%s", zt_data("mini-sdxl/unet/config.json"));
    snprintf(wp, sizeof wp, "%s", zt_data("mini-sdxl/unet/diffusion_pytorch_model.safetensors"));
    snprintf(io, sizeof io, "%s", zt_data("mini-sdxl/unet_io.safetensors"));
    zl_unet_load_opts o = {.config_path = cfgp, .weights = ZL_UNET_WEIGHTS_STORED};
    zl_unet *u = NULL, *u2 = NULL;
    zl_st_file *f = NULL;
    CHECK_OK(zl_unet_load(wp, &o, &u));
    CHECK_OK(zl_unet_load(wp, &o, &u2));
    CHECK_OK(zl_st_open(io, &f));
    if (!u || !u2 || !f) return;
    const zl_st_tensor *ts = zl_st_find(f, "sample"), *tc = zl_st_find(f, "encoder_hidden_states");
    const size_t n = (size_t)ts->numel;
    float *x[5] = {0}, *a = malloc(n * 4), *b = malloc(n * 4), *ref = malloc(n * 4);
    const char *names[5] = {"sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"};
    for (int i = 0; i < 5; i++) {
        const zl_st_tensor *t = zl_st_find(f, names[i]);
        x[i] = malloc((size_t)t->numel * 4);
        zl_st_read_f32(t, x[i]);
    }
    zl_st_read_f32(zl_st_find(f, "out_base"), ref);
    zl_unet_input in = {(int)ts->shape[0], (int)ts->shape[2], (int)ts->shape[3], (int)tc->shape[1], x[0], x[1], x[2], x[3], x[4]};
    zl_set_matmul_precision(ZL_MATMUL_BF16);
    CHECK_OK(zl_unet_forward(u, &in, a));
    CHECK_OK(zl_unet_forward(u, &in, a)); /* packs for BF16 */
    zl_set_matmul_precision(ZL_MATMUL_BF16X3);
    CHECK_OK(zl_unet_forward(u, &in, a));
    CHECK_OK(zl_unet_forward(u2, &in, b));
    CHECKM(!memcmp(a, b, n * 4), "%s UNet bf16x3 after bf16's packing = a fresh model's", path);
    /* the same bytes on one thread */
    const int t0 = omp_get_max_threads();
    omp_set_num_threads(1);
    CHECK_OK(zl_unet_forward(u2, &in, b));
    omp_set_num_threads(t0);
    CHECKM(!memcmp(a, b, n * 4), "%s UNet bf16x3: %d threads = 1 thread, bit for bit", path, t0);
    char what[96];
    snprintf(what, sizeof what, "%s UNet bf16x3 = diffusers out_base (mini-sdxl)", path);
    zt_close(what, a, ref, (int64_t)n, 1e-4);
    for (int i = 0; i < 5; i++) free(x[i]);
    free(a), free(b), free(ref);
    zl_unet_free(u), zl_unet_free(u2);
    zl_st_close(f);
}

/* Attention with bfloat16 products (self-attention over more than one key
 * tile). Against float64 attention of the unrounded inputs, within what the
 * roundings allow: q scale and k rounded (u = 2^-8 each) move each logit by
 * at most D = 2.01 u sum_k |q_k scale k_jk|, which moves each probability by
 * a factor within e^(+-2 max D); P and v rounded add u each. So per output
 * |o - o64| <= sum_j p_j |v_j| (e^(2 max D) (1 + u)^2 (1 + 1e-5) - 1).
 * BF16X3: each product within e3 = 3.01 2^-16 of a b (two parts leave 2^-16
 * of each factor, and lo lo is dropped), plus float32's sum of 3n terms: D =
 * (e3 + (3d + 2) 2^-24) sum |..|, and (1 + u)^2 becomes 1 + e3 + (3 Tk + 2) 2^-24. */
static void check_attention(const char *path) {
    static const int cases[][6] = {/* B, Tq, Tk, H, d, causal */ {2, 300, 600, 3, 40, 0}, {1, 520, 520, 2, 64, 1}};
    for (int c = 0; c < 2; c++) {
        const int B = cases[c][0], Tq = cases[c][1], Tk = cases[c][2], H = cases[c][3], d = cases[c][4], causal = cases[c][5];
        const int HD = H * d;
        float *q = malloc((size_t)B * Tq * HD * 4), *k = malloc((size_t)B * Tk * HD * 4), *v = malloc((size_t)B * Tk * HD * 4);
        float *o = malloc((size_t)B * Tq * HD * 4), *o2 = malloc((size_t)B * Tq * HD * 4), *lse = malloc((size_t)B * H * Tq * 4);
        double *p = malloc((size_t)Tk * sizeof(double));
        for (size_t i = 0; i < (size_t)B * Tq * HD; i++) q[i] = 2.0f * frand();
        for (size_t i = 0; i < (size_t)B * Tk * HD; i++) k[i] = 2.0f * frand(), v[i] = frand();
        zl_attention_fwd(o, lse, q, HD, k, HD, v, HD, B, Tq, Tk, H, d, causal);
        const double u = ldexp(1.0, -8), scale = 1.0 / sqrt((double)d);
        double worst = 0, d2 = 0, r2 = 0, lworst = 0;
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < Tq; i++) {
                    const float *qi = q + ((size_t)b * Tq + i) * HD + (size_t)h * d;
                    const int nk = causal ? i + 1 : Tk;
                    double mx = -1e300, D = 0, sum = 0;
                    for (int j = 0; j < nk; j++) {
                        const float *kj = k + ((size_t)b * Tk + j) * HD + (size_t)h * d;
                        double sj = 0, aj = 0;
                        for (int t = 0; t < d; t++) sj += (double)qi[t] * kj[t], aj += fabs((double)qi[t] * scale * kj[t]);
                        p[j] = sj * scale;
                        if (p[j] > mx) mx = p[j];
                        const double e = g_x3 ? (3.01 * ldexp(1.0, -16) + (3 * d + 2) * ldexp(1.0, -24)) : 2.01 * u;
                        if (e * aj > D) D = e * aj;
                    }
                    for (int j = 0; j < nk; j++) sum += (p[j] = exp(p[j] - mx));
                    const double lse64 = mx + log(sum);
                    const double lf = lse[((size_t)b * H + h) * Tq + i];
                    if (fabs(lf - lse64) > lworst) lworst = fabs(lf - lse64);
                    const double pv = g_x3 ? 1 + 3.01 * ldexp(1.0, -16) + (3.0 * Tk + 2) * ldexp(1.0, -24) : (1 + u) * (1 + u);
                    const double grow = exp(2 * D) * pv * (1 + 1e-5) - 1;
                    for (int t = 0; t < d; t++) {
                        double ref = 0, mag = 0;
                        for (int j = 0; j < nk; j++) {
                            const double vj = v[((size_t)b * Tk + j) * HD + (size_t)h * d + t];
                            ref += p[j] / sum * vj, mag += p[j] / sum * fabs(vj);
                        }
                        const double got = o[((size_t)b * Tq + i) * HD + (size_t)h * d + t];
                        const double r = fabs(got - ref) / (grow * mag + 1e-30);
                        if (!(r <= worst)) worst = r;
                        d2 += (got - ref) * (got - ref), r2 += ref * ref;
                    }
                }
        CHECKM(worst <= 1.0, "%s attention %d (Tq %d Tk %d d %d%s): error %.3g of the bound", path, c, Tq, Tk, d,
               causal ? " causal" : "", worst);
        if (!g_x3)
            CHECKM(sqrt(d2 / r2) > ldexp(1.0, -14), "%s attention %d: no bfloat16 rounding (%.3g)", path, c, sqrt(d2 / r2));
        else
            CHECKM(sqrt(d2 / r2) < ldexp(1.0, -14), "%s bf16x3 attention %d: relative error %.3g", path, c, sqrt(d2 / r2));
        /* the log-sum-exp (for a backward) follows the logits: within 2 max D (+ float32) */
        CHECKM(lworst < 0.1, "%s attention %d: log-sum-exp off by %.3g", path, c, lworst);
        /* the same bytes on 1-3 threads */
        const int t0 = omp_get_max_threads();
        for (int t = 1; t <= 3; t++) {
            omp_set_num_threads(t);
            zl_attention_fwd(o2, NULL, q, HD, k, HD, v, HD, B, Tq, Tk, H, d, causal);
            CHECKM(!memcmp(o, o2, (size_t)B * Tq * HD * 4), "%s attention %d: differs on %d threads", path, c, t);
        }
        omp_set_num_threads(t0);
        free(q), free(k), free(v), free(o), free(o2), free(lse), free(p);
    }
}

/* A tensor of a safetensors file as float32 (malloc'd), or NULL. */
static float *load_tensor(const char *path, const char *name, int64_t *n) {
    zl_st_file *f = NULL;
    if (zl_st_open(path, &f)) return NULL;
    const zl_st_tensor *t = zl_st_find(f, name);
    float *v = t ? malloc((size_t)t->numel * sizeof(float)) : NULL;
    if (v) zl_st_read_f32(t, v), *n = t->numel;
    zl_st_close(f);
    return v;
}

/* The CLI: run unet --precision bf16 against diffusers' output and our float32
 * output; the fallback without tiles; generate's parameters and --from-png. */
static void check_cli(void) {
    char model[1024], io[1024], o32[1024], o16[1024], png[1024], png2[1024], lat[1024], lat2[1024];
    snprintf(model, sizeof model, "%s", zt_data("tiny-sd15"));
    snprintf(io, sizeof io, "%s", zt_data("tiny-sd15/unet_io.safetensors"));
    snprintf(o32, sizeof o32, "%s", zt_tmp("o32.safetensors"));
    snprintf(o16, sizeof o16, "%s", zt_tmp("o16.safetensors"));
    int rc = zt_cli("run unet --model %s --in %s -o %s --precision f32 -q", model, io, o32);
    CHECKM(rc == 0, "run unet --precision f32: rc %d %s", rc, zt_err);
    rc = zt_cli("run unet --model %s --in %s -o %s --precision bf16 -q", model, io, o16);
    CHECKM(rc == 0, "run unet --precision bf16: rc %d %s", rc, zt_err);
    int64_t n32 = 0, n16 = 0, nref = 0;
    float *a = load_tensor(o32, "out", &n32), *b = load_tensor(o16, "out", &n16), *ref = load_tensor(io, "out_base", &nref);
    CHECK(a && b && ref && n32 == nref && n16 == nref);
    if (a && b && ref && n32 == nref && n16 == nref) {
        zt_close("run unet --precision f32 = diffusers", a, ref, nref, 1e-4);
        const double e = zt_relerr(b, ref, nref);
        if (zl_bf16_units())
            /* bfloat16 keeps 8 bits: a few of its rounding steps (2^-8 each) through the network */
            CHECKM(e > ldexp(1.0, -12) && e < ldexp(1.0, -6), "run unet --precision bf16: relative error %.3g to "
                   "diffusers is not bfloat16's (2^-12 .. 2^-6)", e);
        else
            CHECKM(memcmp(a, b, (size_t)nref * sizeof(float)) == 0, "no AMX: --precision bf16 must be float32");
    }
    free(a), free(b), free(ref);

    /* Without tiles (ZL_NO_AMX=1) bf16 is float32, bit for bit, and says so. */
    const char *had = getenv("ZL_NO_AMX");
    char *saved = had ? strdup(had) : NULL;
    setenv("ZL_NO_AMX", "1", 1);
    rc = zt_cli("run unet --model %s --in %s -o %s --precision bf16", model, io, o16);
    if (saved) setenv("ZL_NO_AMX", saved, 1);
    else unsetenv("ZL_NO_AMX");
    CHECKM(rc == 0 && strstr(zt_err, "no AMX-BF16") != NULL, "ZL_NO_AMX=1 run unet --precision bf16: rc %d, %s", rc,
           zt_err);
    a = load_tensor(o32, "out", &n32), b = load_tensor(o16, "out", &n16);
    CHECKM(a && b && n32 == n16 && memcmp(a, b, (size_t)n32 * sizeof(float)) == 0,
           "ZL_NO_AMX=1: --precision bf16 gives the float32 output bit for bit");
    free(a), free(b);

    /* bf16x3: diffusers' outputs within FIXTURES.md's tolerance, for every
     * fixture, both model layouts, LoRAs in every format, folded and as a
     * runtime branch, one and two; without tiles, float32 bit for bit */
    static const struct {
        const char *fx, *model, *lora, *ref;
    } xc[] = {
        {"tiny-sdxl", "", "", "out_base"},
        {"tiny-sdxl", "", "--lora %s/loras/content.peft.safetensors", "out_content"},
        {"tiny-sdxl", "", "--lora %s/loras/style.kohya.safetensors --runtime", "out_style"},
        {"mini-sdxl", "", "", "out_base"},
        {"mini-sdxl", "/single_file.safetensors", "--lora %s/loras/content.kohya_sgm.safetensors", "out_content"},
        {"mini-sdxl", "", "--lora %s/loras/content.kohya.safetensors --lora %s/loras/style.peft.safetensors --runtime",
         "out_direct_1_1"},
        {"tiny-sd15", "", "", "out_base"},
        {"tiny-sd15", "/single_file.safetensors", "--lora %s/loras/style.kohya_sgm.safetensors --runtime", "out_style"},
        {"tiny-sd15", "", "--lora %s/loras/content.peft.safetensors:0.8 --lora %s/loras/style.kohya.safetensors:0.5",
         "out_direct_08_05"},
    };
    for (size_t t = 0; t < sizeof xc / sizeof xc[0]; t++) {
        char mp[1024], iop[1100], mf[2200], la[2400], what[4800];
        snprintf(mp, sizeof mp, "%s", zt_data(xc[t].fx));
        snprintf(iop, sizeof iop, "%s/unet_io.safetensors", mp);
        /* a single file of a fixture needs its config: head counts cannot be inferred at these widths */
        if (*xc[t].model) snprintf(mf, sizeof mf, "%s%s --unet-config %s/unet/config.json", mp, xc[t].model, mp);
        else snprintf(mf, sizeof mf, "%s", mp);
        snprintf(la, sizeof la, xc[t].lora, mp, mp);
        rc = zt_cli("run unet --model %s %s --in %s -o %s --precision bf16x3 -q", mf, la, iop, o16);
        CHECKM(rc == 0, "run unet --precision bf16x3 %s %s: rc %d %s", xc[t].fx, la, rc, zt_err);
        a = load_tensor(o16, "out", &n16), ref = load_tensor(iop, xc[t].ref, &nref);
        snprintf(what, sizeof what, "run unet --precision bf16x3, %s%s %s = %s", xc[t].fx, xc[t].model, la, xc[t].ref);
        if (a && ref && n16 == nref) zt_close(what, a, ref, nref, 1e-4);
        else CHECKM(0, "%s: no output", what);
        free(a), free(ref);
    }
    setenv("ZL_NO_AMX", "1", 1);
    rc = zt_cli("run unet --model %s --in %s -o %s --precision bf16x3", model, io, o16);
    if (saved) setenv("ZL_NO_AMX", saved, 1);
    else unsetenv("ZL_NO_AMX");
    free(saved);
    CHECKM(rc == 0 && strstr(zt_err, "--precision bf16x3: this CPU has no AMX-BF16") != NULL,
           "ZL_NO_AMX=1 run unet --precision bf16x3: rc %d, %s", rc, zt_err);
    a = load_tensor(o32, "out", &n32), b = load_tensor(o16, "out", &n16);
    CHECKM(a && b && n32 == n16 && memcmp(a, b, (size_t)n32 * sizeof(float)) == 0,
           "ZL_NO_AMX=1: --precision bf16x3 gives the float32 output bit for bit");
    free(a), free(b);

    /* bf16x3 text encoders: text_io within FIXTURES.md's tolerance, both fixtures and layouts, with and
     * without the text-encoder LoRA */
    for (int t = 0; t < 8; t++) {
        const char *fx = t < 4 ? "mini-sdxl" : "tiny-sd15";
        const int lora = t & 1, single = (t >> 1) & 1;
        char mp[1024], tio[1100], margs[3300], la[1200];
        snprintf(mp, sizeof mp, "%s", zt_data(fx));
        snprintf(tio, sizeof tio, "%s/text_io.safetensors", mp);
        /* a fixture's single file needs its configs: its heads are not 64 wide */
        if (!single) snprintf(margs, sizeof margs, "%s", mp);
        else if (t < 4)
            snprintf(margs, sizeof margs, "%s/single_file.safetensors --te1-config %s/text_encoder/config.json "
                     "--te2-config %s/text_encoder_2/config.json", mp, mp, mp);
        else
            snprintf(margs, sizeof margs, "%s/single_file.safetensors --te1-config %s/text_encoder/config.json", mp, mp);
        snprintf(la, sizeof la, lora ? "--lora %s/loras/text_encoders.kohya.safetensors" : "", mp);
        rc = zt_cli("run text --model %s %s --in %s -o %s --precision bf16x3 -q", margs, la, tio, o16);
        CHECKM(rc == 0, "run text --precision bf16x3 %s %s: rc %d %s", margs, la, rc, zt_err);
        static const char *names[] = {"prompt_embeds", "te1_penultimate", "te1_last_hidden", "pooled_prompt_embeds",
                                      "te2_penultimate", "te2_text_embeds"};
        for (int k = 0; k < (t < 4 ? 6 : 3) && rc == 0; k++) {
            char rn[64], what[4700];
            snprintf(rn, sizeof rn, "%s%s", lora ? "lora." : "", names[k]);
            a = load_tensor(o16, names[k], &n16), ref = load_tensor(tio, rn, &nref);
            snprintf(what, sizeof what, "run text --precision bf16x3 %s %s: %s", margs, la, rn);
            if (a && ref && n16 == nref) zt_close(what, a, ref, nref, 1e-4);
            else CHECKM(0, "%s: missing", what);
            free(a), free(ref);
        }
    }

    /* the VAE computes in float32 under bf16x3 (and so by default) */
    {
        char vio[1024];
        snprintf(vio, sizeof vio, "%s", zt_data("mini-sdxl/vae_io.safetensors"));
        rc = zt_cli("run vae-decode --model %s --in %s -o %s --precision f32 -q", zt_data("mini-sdxl"), vio, o32);
        int rc2 = zt_cli("run vae-decode --model %s --in %s -o %s --precision bf16x3 -q", zt_data("mini-sdxl"), vio, o16);
        CHECKM(rc == 0 && rc2 == 0, "run vae-decode: rc %d %d %s", rc, rc2, zt_err);
        a = load_tensor(o32, "decoded", &n32), b = load_tensor(o16, "decoded", &n16);
        CHECKM(a && b && n32 == n16 && memcmp(a, b, (size_t)n32 * sizeof(float)) == 0,
               "run vae-decode --precision bf16x3 = float32, bit for bit");
        free(a), free(b);
    }

    rc = zt_cli("run unet --model %s --in %s -o %s --precision fp8", model, io, o16);
    CHECKM(rc == 2 && strstr(zt_err, "--precision 'fp8'"), "--precision fp8: rc %d, %s", rc, zt_err);
    rc = zt_cli("generate --model %s -p x --precision", model);
    CHECKM(rc == 2 && strstr(zt_err, "--precision needs a value"), "--precision without value: rc %d, %s", rc, zt_err);

    /* generate: the parameters say bf16 when the tiles ran; --from-png repeats it */
    snprintf(png, sizeof png, "%s", zt_tmp("b.png"));
    snprintf(png2, sizeof png2, "%s", zt_tmp("b2.png"));
    snprintf(lat, sizeof lat, "%s", zt_tmp("b.safetensors"));
    snprintf(lat2, sizeof lat2, "%s", zt_tmp("b2.safetensors"));
    rc = zt_cli("generate --model %s -p 'a cat' -W 64 -H 64 --steps 3 --seed 5 --precision bf16 --save-latent %s -o %s -q",
                model, lat, png);
    CHECKM(rc == 0, "generate --precision bf16: rc %d %s", rc, zt_err);
    zl_png_params pp = {0};
    if (!rc && !zl_png_params_read(png, &pp)) {
        const char *v = zl_png_params_get(&pp, "Precision");
        if (zl_bf16_units())
            CHECKM(v && !strcmp(v, "bf16"), "generate --precision bf16: parameters say 'Precision: %s'", v ? v : "-");
        else
            CHECKM(!v, "no AMX: the parameters must not claim bf16");
        zl_png_params_free(&pp);
    }
    rc = zt_cli("generate --model %s --from-png %s --save-latent %s -o %s -q", model, png, lat2, png2);
    CHECKM(rc == 0, "--from-png of a bf16 image: rc %d %s", rc, zt_err);
    a = load_tensor(lat, "latent", &n32), b = load_tensor(lat2, "latent", &n16);
    CHECKM(a && b && n32 == n16 && memcmp(a, b, (size_t)n32 * sizeof(float)) == 0,
           "--from-png repeats a bf16 generation bit for bit");
    free(a), free(b);
    if (zl_bf16_units()) {
        /* and it did differ from float32 */
        rc = zt_cli("generate --model %s --from-png %s --precision f32 --save-latent %s -o %s -q", model, png, lat2, png2);
        a = load_tensor(lat, "latent", &n32), b = load_tensor(lat2, "latent", &n16);
        CHECKM(rc == 0 && a && b && n32 == n16 && memcmp(a, b, (size_t)n32 * sizeof(float)) != 0,
               "--precision f32 overrides the image's bf16");
        free(a), free(b);
    }
}

/* generate by default: bf16x3 on the tiles (the parameters say so) and --from-png repeats it; an image of
 * ours made in float32 carries no Precision and --from-png repeats it in float32. */
static void check_generate_default(void) {
    char model[1024], p1[1024], p2[1024], l1[1024], l2[1024], l3[1024];
    snprintf(model, sizeof model, "%s", zt_data("tiny-sd15"));
    snprintf(p1, sizeof p1, "%s", zt_tmp("d1.png"));
    snprintf(p2, sizeof p2, "%s", zt_tmp("d2.png"));
    snprintf(l1, sizeof l1, "%s", zt_tmp("d1.safetensors"));
    snprintf(l2, sizeof l2, "%s", zt_tmp("d2.safetensors"));
    snprintf(l3, sizeof l3, "%s", zt_tmp("d3.safetensors"));
    const char *gen = "generate --model %s -p 'a cat' -W 64 -H 64 --steps 3 --seed 9 --save-latent %s -o %s -q %s";
    int rc = zt_cli(gen, model, l1, p1, "");
    CHECKM(rc == 0, "generate (default precision): rc %d %s", rc, zt_err);
    zl_png_params pp = {0};
    if (!rc && !zl_png_params_read(p1, &pp)) {
        const char *v = zl_png_params_get(&pp, "Precision");
        if (zl_bf16_units())
            CHECKM(v && !strcmp(v, "bf16x3"), "generate's default on AMX: 'Precision: %s'", v ? v : "-");
        else
            CHECKM(!v, "no AMX: the default is float32, and the parameters say no Precision");
        zl_png_params_free(&pp);
    }
    rc = zt_cli("generate --model %s --from-png %s --save-latent %s -o %s -q", model, p1, l2, p2);
    int64_t n1 = 0, n2 = 0;
    float *a = load_tensor(l1, "latent", &n1), *b = load_tensor(l2, "latent", &n2);
    CHECKM(rc == 0 && a && b && n1 == n2 && !memcmp(a, b, (size_t)n1 * 4), "--from-png repeats the default run");
    free(b);
    /* float32: no Precision parameter; --from-png of it computes float32 again */
    rc = zt_cli(gen, model, l2, p2, "--precision f32");
    CHECKM(rc == 0, "generate --precision f32: rc %d %s", rc, zt_err);
    if (!rc && !zl_png_params_read(p2, &pp)) {
        CHECKM(!zl_png_params_get(&pp, "Precision"), "a float32 image's parameters have no Precision");
        zl_png_params_free(&pp);
    }
    rc = zt_cli("generate --model %s --from-png %s --save-latent %s -o %s -q", model, p2, l3, p1);
    b = load_tensor(l2, "latent", &n2);
    float *c = load_tensor(l3, "latent", &n1);
    CHECKM(rc == 0 && b && c && n1 == n2 && !memcmp(b, c, (size_t)n1 * 4),
           "--from-png of a float32 image of ours computes float32");
    if (zl_bf16_units() && a && b) CHECKM(memcmp(a, b, (size_t)n2 * 4) != 0, "the default differs from float32 here");
    free(a), free(b), free(c);
}

/* 1 when two safetensors files hold the same tensors, byte for byte (metadata aside). */
static int same_tensors(const char *a, const char *b) {
    zl_st_file *fa = NULL, *fb = NULL;
    int same = !zl_st_open(a, &fa) && !zl_st_open(b, &fb) && zl_st_count(fa) == zl_st_count(fb);
    for (int i = 0; same && i < zl_st_count(fa); i++) {
        const zl_st_tensor *x = zl_st_at(fa, i), *y = zl_st_at(fb, i);
        same = !strcmp(x->name, y->name) && x->nbytes == y->nbytes && !memcmp(x->data, y->data, (size_t)x->nbytes);
    }
    zl_st_close(fa);
    zl_st_close(fb);
    return same;
}

/* zip --precision bf16: references in bfloat16 (they move the result), the
 * report says so; without tiles, float32 bit for bit. */
static void check_zip(void) {
    char m[1024], c[1024], st[1024], o1[1024], o2[1024], r1[1024], r2[1024];
    snprintf(m, sizeof m, "%s", zt_data("tiny-sd15"));
    snprintf(c, sizeof c, "%s", zt_data("tiny-sd15/loras/content.kohya.safetensors"));
    snprintf(st, sizeof st, "%s", zt_data("tiny-sd15/loras/style.kohya.safetensors"));
    snprintf(o1, sizeof o1, "%s", zt_tmp("z32.safetensors"));
    snprintf(o2, sizeof o2, "%s", zt_tmp("z16.safetensors"));
    snprintf(r1, sizeof r1, "%s", zt_tmp("z32.json"));
    snprintf(r2, sizeof r2, "%s", zt_tmp("z16.json"));
    const char *fmt = "zip --model %s --content %s --style %s --content-prompt 'a sks dog' --style-prompt watercolor "
                      "--ref-count 1 --ref-steps 3 --steps 2 --mode full -o %s --report %s --precision %s -q";
    int rc = zt_cli(fmt, m, c, st, o1, r1, "f32");
    CHECKM(rc == 0, "zip --precision f32: rc %d %s", rc, zt_err);
    rc = zt_cli(fmt, m, c, st, o2, r2, "bf16");
    CHECKM(rc == 0, "zip --precision bf16: rc %d %s", rc, zt_err);
    char *j1 = NULL, *j2 = NULL;
    size_t n1 = 0, n2 = 0;
    if (rc == 0 && !zl_read_file(r1, &j1, &n1) && !zl_read_file(r2, &j2, &n2)) {
        CHECK(strstr(j1, "\"inference_precision\": \"f32\"") != NULL);
        const int same = same_tensors(o1, o2);
        if (zl_bf16_units()) {
            CHECK(strstr(j2, "\"inference_precision\": \"bf16\"") != NULL);
            CHECKM(!same, "zip --precision bf16: the references (so the merged LoRA) differ from float32's");
        } else {
            CHECK(strstr(j2, "\"inference_precision\": \"f32\"") != NULL);
            CHECKM(same, "zip --precision bf16 without AMX: float32's result bit for bit");
        }
    } else {
        CHECKM(0, "zip outputs missing");
    }
    free(j1), free(j2);
}

int main(void) {
    for (g_x3 = 0; g_x3 < 2; g_x3++) {
        zl_set_matmul_precision(g_x3 ? ZL_MATMUL_BF16X3 : ZL_MATMUL_BF16);
        zl_bf16_emulate(1);
        CHECK(zl_bf16_active());
        CHECK(zl_bf16_parts() == 1 + g_x3);
        check_exact("emulated");
        check_cases("emulated");
        check_ops("emulated");
        check_packed(); /* emulated */
        check_im2col("emulated");
        check_attention("emulated");
        /* a whole UNet through the scalar model where no tiles check it below */
        if (g_x3 && !zl_bf16_units()) check_unet_x3("emulated");
        zl_bf16_emulate(0);
        zl_set_matmul_precision(g_x3 ? ZL_MATMUL_BF16X3 : ZL_MATMUL_BF16);
        if (zl_bf16_units()) {
            CHECK(zl_bf16_active());
            check_exact("AMX");
            check_cases("AMX");
            check_ops("AMX");
            check_threads();
            check_packed();
            check_im2col("AMX");
            check_attention("AMX");
            if (g_x3) check_unet_x3("AMX");
            else check_unet();
        } else {
            /* No tiles: the precision is a permission only. */
            CHECK(!zl_bf16_active());
            if (g_x3) printf("note: this CPU has no AMX-BF16; the tile path was checked through its scalar model only\n");
        }
    }
    g_x3 = 0;
    zl_set_matmul_precision(ZL_MATMUL_F32);
    CHECK(!zl_bf16_active());
    check_cli();
    check_generate_default();
    check_zip();
    return zt_done();
}
