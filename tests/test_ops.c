/* nn ops tests. Every forward kernel is compared with a naive double-precision
 * loop written here; every backward kernel with central finite differences of
 * that same double-precision naive forward (the forward check shows the kernel
 * computes that function, so its derivative is the reference).
 *
 * Tolerances:
 * - forward: max|diff| <= 1e-5 * max(1, max|ref|), ten times tighter than the
 *   FIXTURES.md output tolerance: these are float32 kernels with at most a few
 *   thousand accumulated terms against an exact double loop.
 * - backward: relative error (norm of diff / norm of reference) <= 1e-4, ten
 *   times tighter than the FIXTURES.md gradient tolerance. The FD runs in
 *   double with step h = 1e-4 on inputs of size ~1: truncation ~h^2 ~ 1e-8,
 *   rounding ~1e-16/h ~ 1e-12, so the error left is the float32 kernel's own
 *   rounding (~1e-6).
 * Backward outputs are pre-filled with GPRE to check that kernels accumulate. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn/conv_tiles.h"
#include "nn/ops.h"
#include "nn/tile_gemm.h"
#include "nn/vexp.h"
#include "testlib.h"

#define FWD_TOL 1e-5
#define BWD_TOL 1e-4
#define FD_H 1e-4
#define GPRE 0.25f

/* ---- helpers ---------------------------------------------------------------- */

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((double)(g_rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *frnd(size_t n, float s) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = s * frand();
    return p;
}
static float *ffill(size_t n, float v) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = v;
    return p;
}
static double *todbl(const float *f, size_t n) {
    double *d = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = f[i];
    return d;
}
static float *toflt(const double *d, size_t n) {
    float *f = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) f[i] = (float)d[i];
    return f;
}

/* Forward check: float kernel output vs double naive output. */
static void fwd_close(const char *what, const float *got, const double *ref, size_t n) {
    float *r = toflt(ref, n);
    zt_close(what, got, r, (int64_t)n, FWD_TOL);
    free(r);
}

static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Gradient check: `got` (pre-filled with GPRE, then accumulated into) against
 * central differences of loss(ctx) w.r.t. p[0..n). At most `maxs` entries are
 * sampled (evenly strided) to keep big shapes cheap. */
typedef double (*loss_fn)(void *ctx);
static void grad_check(const char *what, const float *got, loss_fn L, void *ctx, double *p, size_t n, size_t maxs) {
    size_t step = n > maxs ? (n + maxs - 1) / maxs : 1;
    double num = 0, den = 0;
    size_t worst = 0;
    double wd = -1;
    for (size_t i = (size_t)(step > 1 ? (g_rng % step) : 0); i < n; i += step) {
        const double s = p[i];
        p[i] = s + FD_H;
        const double a = L(ctx);
        p[i] = s - FD_H;
        const double b = L(ctx);
        p[i] = s;
        const double fd = (a - b) / (2 * FD_H), an = (double)got[i] - GPRE;
        num += (an - fd) * (an - fd);
        den += fd * fd;
        if (fabs(an - fd) > wd) { wd = fabs(an - fd); worst = i; }
    }
    const double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    CHECKM(rel <= BWD_TOL && den > 0, "%s: gradient relative error %.3g (worst at %zu, |diff| %.3g)", what, rel, worst,
           wd);
}

/* ---- linear ------------------------------------------------------------------- */

typedef struct { int N, in, out; double *x, *W, *b, *dy, *y; } lin_ctx;
static void nv_linear(double *y, const double *x, const double *W, const double *b, int N, int in, int out) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < out; o++) {
            double s = b ? b[o] : 0;
            for (int i = 0; i < in; i++) s += x[n * in + i] * W[o * in + i];
            y[n * out + o] = s;
        }
}
static double lin_loss(void *c) {
    lin_ctx *t = c;
    nv_linear(t->y, t->x, t->W, t->b, t->N, t->in, t->out);
    return dot(t->y, t->dy, (size_t)t->N * t->out);
}

static void test_linear(void) {
    const int N = 7, in = 13, out = 9;
    float *x = frnd(N * in, 1), *W = frnd(out * in, 0.5f), *b = frnd(out, 1), *y = ffill(N * out, NAN);
    float *dy = frnd(N * out, 1);
    lin_ctx c = {N, in, out, todbl(x, N * in), todbl(W, out * in), todbl(b, out), todbl(dy, N * out),
                 malloc(sizeof(double) * N * out)};
    zl_linear_fwd(y, x, W, b, N, in, out); /* y starts as NaN: forward must not read it */
    nv_linear(c.y, c.x, c.W, c.b, N, in, out);
    fwd_close("linear fwd", y, c.y, N * out);
    zl_linear_fwd(y, x, W, NULL, N, in, out);
    nv_linear(c.y, c.x, c.W, NULL, N, in, out);
    fwd_close("linear fwd (no bias)", y, c.y, N * out);

    float *dx = ffill(N * in, GPRE), *dW = ffill(out * in, GPRE), *db = ffill(out, GPRE);
    zl_linear_bwd(dx, dW, db, dy, x, W, N, in, out);
    grad_check("linear dx", dx, lin_loss, &c, c.x, N * in, 1000);
    grad_check("linear dW", dW, lin_loss, &c, c.W, out * in, 1000);
    grad_check("linear db", db, lin_loss, &c, c.b, out, 1000);
    /* NULL gradients are skipped; dx alone gives the same dx. */
    float *dx2 = ffill(N * in, GPRE);
    zl_linear_bwd(dx2, NULL, NULL, dy, x, W, N, in, out);
    CHECK(memcmp(dx, dx2, sizeof(float) * N * in) == 0);
    free(x), free(W), free(b), free(y), free(dy), free(dx), free(dW), free(db), free(dx2);
    free(c.x), free(c.W), free(c.b), free(c.dy), free(c.y);
}

static void test_sgemm(void) {
    /* beta == 0 must not read C (NaN stays out); transposes and leading dims. */
    const int M = 5, N = 6, K = 7, ld = 11;
    float *A = frnd(K * ld, 1), *B = frnd(K * ld, 1), *C = ffill(M * ld, NAN);
    for (int tA = 0; tA < 2; tA++)
        for (int tB = 0; tB < 2; tB++) {
            for (int i = 0; i < M * ld; i++) C[i] = NAN;
            zl_sgemm(tA, tB, M, N, K, 0.5f, A, ld, B, ld, 0.0f, C, ld);
            double md = 0;
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0;
                    for (int k = 0; k < K; k++)
                        s += (double)(tA ? A[k * ld + i] : A[i * ld + k]) * (tB ? B[j * ld + k] : B[k * ld + j]);
                    double d = fabs(0.5 * s - C[i * ld + j]);
                    if (!(d <= md)) md = d;
                }
            CHECKM(md <= 1e-5, "sgemm tA=%d tB=%d max diff %g", tA, tB, md);
        }
    /* beta = 1 accumulates */
    for (int i = 0; i < M * ld; i++) C[i] = 1.0f;
    zl_sgemm(0, 0, M, N, K, 1.0f, A, ld, B, ld, 1.0f, C, ld);
    double s = 1;
    for (int k = 0; k < K; k++) s += (double)A[k] * B[k * ld];
    CHECK(fabs(C[0] - s) <= 1e-5);
    free(A), free(B), free(C);
}

/* The block grid of zl_sgemm follows the thread count (fewer, larger blocks on fewer
 * threads), but no element's arithmetic may: every product, plain and with a stored F16
 * weight, every transpose, at SDXL's shapes and at ones that are no multiple of anything,
 * gives the same bytes on 1, 2, 3, 4 and 8 threads. */
static void test_sgemm_grid_threads(void) {
    const int shapes[][3] = {{256, 1280, 1280}, {77, 1280, 2048}, {1000, 1000, 300}, {4096, 320, 320},
                             {512, 10240, 640}, {333, 517, 129}};
    const int threads[] = {1, 2, 3, 4, 8};
    const int saved = zl_get_threads();
    int bad = 0, runs = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        float *A = frnd((size_t)M * K, 1), *B = frnd((size_t)N * K, 1);
        uint16_t *W = malloc(sizeof(uint16_t) * (size_t)N * K);
        for (size_t i = 0; i < (size_t)N * K; i++) W[i] = zl_f32_to_f16(B[i]);
        float *ref[3] = {NULL, NULL, NULL};
        for (size_t ti = 0; ti < sizeof threads / sizeof threads[0]; ti++) {
            zl_set_threads(threads[ti]);
            for (int v = 0; v < 3; v++) {
                float *C = ffill((size_t)M * N, NAN);
                if (v == 0) zl_sgemm(0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C, N);
                else if (v == 1) zl_sgemm(1, 0, M, N, K, 1.0f, A, M, B, N, 0.0f, C, N); /* A^T [K,M], B [K,N] */
                else CHECK_OK(zl_sgemm_nt_stored(M, N, K, A, K, ZL_DT_F16, W, 0.0f, C, N));
                if (!ref[v]) ref[v] = C;
                else {
                    runs++;
                    if (memcmp(C, ref[v], sizeof(float) * (size_t)M * N)) {
                        bad++;
                        printf("grid: %dx%dx%d variant %d differs on %d threads\n", M, N, K, v, threads[ti]);
                    }
                    free(C);
                }
            }
        }
        for (int v = 0; v < 3; v++) free(ref[v]);
        free(A), free(B), free(W);
    }
    zl_set_threads(saved);
    CHECKM(bad == 0, "zl_sgemm on 1-8 threads: the same bytes (%d of %d runs differ)", bad, runs);
}

/* zl_tile_gemm (attention's register-blocked product) against a double loop:
 * every transpose / accumulate combination, sizes around the kernels' row and
 * panel blocks (6 x 16 with AVX2, 12 x 32 with AVX-512), K past the stack
 * panel (heap path), leading dimensions wider than the operands, and C's
 * entries outside the product left untouched. */
static void test_tile_gemm(void) {
    const int Ms[] = {1, 5, 6, 7, 12, 13, 25, 40}, Ns[] = {1, 8, 15, 16, 17, 31, 32, 33, 64, 77};
    const int Ks[] = {1, 3, 8, 9, 64, 700};
    int bad = 0, untouched = 1;
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
        for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++)
            for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
                for (int mode = 0; mode < 8; mode++) {
                    const int M = Ms[mi], N = Ns[ni], K = Ks[ki], tA = mode & 1, tB = (mode >> 1) & 1, acc = mode >> 2;
                    const int lda = (tA ? M : K) + 3, ldb = (tB ? K : N) + 5, ldc = N + 2;
                    float *A = frnd((size_t)(tA ? K : M) * lda, 1), *B = frnd((size_t)(tB ? N : K) * ldb, 1);
                    float *C = frnd((size_t)M * ldc, 1), *C0 = malloc(sizeof(float) * M * ldc);
                    memcpy(C0, C, sizeof(float) * M * ldc);
                    zl_tile_gemm(tA, tB, M, N, K, 0.75f, A, lda, B, ldb, acc, C, ldc);
                    for (int i = 0; i < M; i++) {
                        for (int j = 0; j < N; j++) {
                            double s = 0;
                            for (int k = 0; k < K; k++)
                                s += (double)(tA ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                                     (tB ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
                            const double ref = 0.75 * s + (acc ? C0[(size_t)i * ldc + j] : 0.0);
                            if (!(fabs(C[(size_t)i * ldc + j] - ref) <= FWD_TOL * fmax(1.0, sqrt((double)K)))) {
                                if (!bad) fprintf(stderr, "tile_gemm M=%d N=%d K=%d tA=%d tB=%d acc=%d (%d,%d): %g vs %g\n",
                                                  M, N, K, tA, tB, acc, i, j, C[(size_t)i * ldc + j], ref);
                                bad++;
                            }
                        }
                        for (int j = N; j < ldc; j++) untouched &= C[(size_t)i * ldc + j] == C0[(size_t)i * ldc + j];
                    }
                    free(A), free(B), free(C), free(C0);
                }
    CHECKM(bad == 0, "tile_gemm: %d entries off", bad);
    CHECKM(untouched, "tile_gemm wrote outside C's columns");
}

/* Attention's vectorised exp (nn/vexp.h): x - m (in float, as it computes it)
 * over [-90, 10] against libm's double exp, within 3e-7 relative (2.5 ulp at
 * worst; a scan of the whole range measured 1.26 ulp), exact
 * 0 below -87.3 and for -INF (masked scores), for every length 1..40 (the
 * vector bodies and their masked tails) and the returned sum. */
static void test_vexp(void) {
    int bad = 0;
    double worst = 0;
    for (int n = 1; n <= 40; n++) {
        float x[40];
        for (int i = 0; i < n; i++) x[i] = -90.0f + 100.0f * (float)((i * 37 + n * 11) % 41) / 40.0f + 0.001f * frand();
        if (n > 3) x[1] = -INFINITY, x[2] = -87.5f;
        float y[40];
        memcpy(y, x, sizeof x);
        const float m = 0.5f;
        const float s = zl_exp_sub_sum(y, n, m);
        double sum = 0;
        for (int i = 0; i < n; i++) {
            const float xm = x[i] - m; /* the function's own float subtraction */
            const double ref = xm < -87.33654f ? 0.0 : exp((double)xm);
            const double rel = ref == 0 ? fabs(y[i]) : fabs(y[i] - ref) / ref;
            if (rel > worst) worst = rel;
            bad += !(rel <= 3e-7);
            sum += y[i];
        }
        bad += !(fabs(s - sum) <= 1e-6 * sum);
    }
    CHECKM(bad == 0, "vexp: %d values off (worst relative error %g)", bad, worst);
}

/* zl_sgemm_nt_stored (W widened block by block) gives exactly what zl_sgemm
 * gives on the widened W, for F16, BF16 and unaligned F32, on one block and on
 * a multi-block grid, with beta 0 (NaN garbage in C) and beta 1. */
static void test_sgemm_stored(void) {
    const int shapes[][3] = {{5, 7, 9}, {200, 300, 70}, {256, 1280, 64}};
    const zl_dtype dts[] = {ZL_DT_F16, ZL_DT_BF16, ZL_DT_F32};
    for (size_t si = 0; si < 3; si++)
        for (size_t di = 0; di < 3; di++) {
            const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
            const zl_dtype dt = dts[di];
            float *A = frnd((size_t)M * K, 1), *W = frnd((size_t)N * K, 1);
            unsigned char *raw = malloc((size_t)N * K * 4 + 1), *wp = raw + 1;
            for (size_t i = 0; i < (size_t)N * K; i++) {
                uint16_t h;
                if (dt == ZL_DT_F16) h = zl_f32_to_f16(W[i]), W[i] = zl_f16_to_f32(h), memcpy(wp + 2 * i, &h, 2);
                else if (dt == ZL_DT_BF16) h = zl_f32_to_bf16(W[i]), W[i] = zl_bf16_to_f32(h), memcpy(wp + 2 * i, &h, 2);
                else memcpy(wp + 4 * i, &W[i], 4);
            }
            for (int beta = 0; beta <= 1; beta++) {
                float *C1 = ffill((size_t)M * N, beta ? 0.5f : NAN), *C2 = ffill((size_t)M * N, beta ? 0.5f : NAN);
                zl_sgemm(0, 1, M, N, K, 1.0f, A, K, W, K, (float)beta, C1, N);
                CHECK_OK(zl_sgemm_nt_stored(M, N, K, A, K, dt, wp, (float)beta, C2, N));
                CHECKM(memcmp(C1, C2, sizeof(float) * M * N) == 0, "stored-dtype gemm %dx%dx%d %s beta %d bit-identical",
                       M, N, K, zl_dtype_name(dt), beta);
                free(C1), free(C2);
                /* the stored operand on the left: C [N, M] = W [N, K] * A^T, A^T given as [K, M] */
                float *At = malloc(sizeof(float) * K * M);
                for (int r = 0; r < M; r++)
                    for (int k = 0; k < K; k++) At[(size_t)k * M + r] = A[(size_t)r * K + k];
                C1 = ffill((size_t)N * M, beta ? 0.5f : NAN), C2 = ffill((size_t)N * M, beta ? 0.5f : NAN);
                zl_sgemm(0, 0, N, M, K, 1.0f, W, K, At, M, (float)beta, C1, M);
                CHECK_OK(zl_sgemm_stored_nn(N, M, K, dt, wp, At, M, (float)beta, C2, M));
                CHECKM(memcmp(C1, C2, sizeof(float) * M * N) == 0, "stored-dtype gemm (left) %dx%dx%d %s beta %d bit-identical",
                       N, M, K, zl_dtype_name(dt), beta);
                free(C1), free(C2);
                /* a linear's input gradient: C [M, K] = A' [M, N] * W [N, K], W stored */
                float *G = frnd((size_t)M * N, 1);
                C1 = ffill((size_t)M * K, beta ? 0.5f : NAN), C2 = ffill((size_t)M * K, beta ? 0.5f : NAN);
                zl_sgemm(0, 0, M, K, N, 1.0f, G, N, W, K, (float)beta, C1, K);
                CHECK_OK(zl_sgemm_nn_stored(M, K, N, G, N, dt, wp, (float)beta, C2, K));
                CHECKM(memcmp(C1, C2, sizeof(float) * M * K) == 0, "stored-dtype gemm (right, not transposed) %dx%dx%d %s beta %d bit-identical",
                       M, K, N, zl_dtype_name(dt), beta);
                free(C1), free(C2), free(At), free(G);
            }
            free(A), free(W), free(raw);
        }
}

/* ---- conv2d --------------------------------------------------------------------- */

typedef struct { zl_conv_shape s; double *x, *W, *b, *dy, *y; } conv_ctx;
static void nv_conv(double *y, const double *x, const double *W, const double *b, const zl_conv_shape *s) {
    const int Ho = zl_conv_out_h(s), Wo = zl_conv_out_w(s);
    for (int n = 0; n < s->B; n++)
        for (int o = 0; o < s->Cout; o++)
            for (int oy = 0; oy < Ho; oy++)
                for (int ox = 0; ox < Wo; ox++) {
                    double acc = b ? b[o] : 0;
                    for (int c = 0; c < s->Cin; c++)
                        for (int ky = 0; ky < s->kh; ky++)
                            for (int kx = 0; kx < s->kw; kx++) {
                                int iy = oy * s->stride - s->pad_t + ky, ix = ox * s->stride - s->pad_l + kx;
                                if (iy < 0 || iy >= s->H || ix < 0 || ix >= s->W) continue;
                                acc += x[((n * s->Cin + c) * s->H + iy) * s->W + ix] *
                                       W[((o * s->Cin + c) * s->kh + ky) * s->kw + kx];
                            }
                    y[((n * s->Cout + o) * Ho + oy) * Wo + ox] = acc;
                }
}
static double conv_loss(void *c) {
    conv_ctx *t = c;
    nv_conv(t->y, t->x, t->W, t->b, &t->s);
    return dot(t->y, t->dy, (size_t)t->s.B * t->s.Cout * zl_conv_out_h(&t->s) * zl_conv_out_w(&t->s));
}

static void conv_case(const char *name, zl_conv_shape s, int with_bias, int rows) {
    const int Ho = zl_conv_out_h(&s), Wo = zl_conv_out_w(&s);
    const size_t nx = (size_t)s.B * s.Cin * s.H * s.W, nw = (size_t)s.Cout * s.Cin * s.kh * s.kw,
                 ny = (size_t)s.B * s.Cout * Ho * Wo;
    float *x = frnd(nx, 1), *W = frnd(nw, 0.5f), *b = with_bias ? frnd(s.Cout, 1) : NULL, *y = ffill(ny, NAN);
    float *dy = frnd(ny, 1);
    conv_ctx c = {s, todbl(x, nx), todbl(W, nw), b ? todbl(b, s.Cout) : NULL, todbl(dy, ny), malloc(sizeof(double) * ny)};
    char what[128];
    if (rows) zl_conv2d_fwd_rows(y, x, W, b, &s, rows);
    else zl_conv2d_fwd(y, x, W, b, &s);
    nv_conv(c.y, c.x, c.W, c.b, &s);
    snprintf(what, sizeof what, "conv %s fwd", name);
    fwd_close(what, y, c.y, ny);

    float *dx = ffill(nx, GPRE), *dW = ffill(nw, GPRE), *db = ffill(s.Cout, GPRE);
    if (rows) zl_conv2d_bwd_rows(dx, dW, with_bias ? db : NULL, dy, x, W, &s, rows);
    else zl_conv2d_bwd(dx, dW, with_bias ? db : NULL, dy, x, W, &s);
    snprintf(what, sizeof what, "conv %s dx", name);
    grad_check(what, dx, conv_loss, &c, c.x, nx, 300);
    snprintf(what, sizeof what, "conv %s dW", name);
    grad_check(what, dW, conv_loss, &c, c.W, nw, 300);
    if (with_bias) {
        snprintf(what, sizeof what, "conv %s db", name);
        grad_check(what, db, conv_loss, &c, c.b, s.Cout, 300);
    }
    free(x), free(W), free(b), free(y), free(dy), free(dx), free(dW), free(db);
    free(c.x), free(c.W), free(c.b), free(c.dy), free(c.y);
}

static void test_conv(void) {
    /* B, Cin, H, W, Cout, kh, kw, stride, pad_t, pad_l, pad_b, pad_r */
    conv_case("3x3 s1 p1", (zl_conv_shape){2, 3, 7, 6, 4, 3, 3, 1, 1, 1, 1, 1}, 1, 0);
    conv_case("3x3 s2 p1", (zl_conv_shape){2, 3, 7, 8, 5, 3, 3, 2, 1, 1, 1, 1}, 1, 0);
    conv_case("3x3 s2 pad(0,0,1,1)", (zl_conv_shape){1, 4, 8, 8, 3, 3, 3, 2, 0, 0, 1, 1}, 1, 0);
    conv_case("1x1", (zl_conv_shape){2, 5, 4, 6, 3, 1, 1, 1, 0, 0, 0, 0}, 1, 0);
    conv_case("1x1 no bias", (zl_conv_shape){1, 5, 3, 3, 6, 1, 1, 1, 0, 0, 0, 0}, 0, 0);
    conv_case("3x3 no pad", (zl_conv_shape){1, 2, 5, 6, 3, 3, 3, 1, 0, 0, 0, 0}, 0, 0);
    conv_case("1x3 pad(0,2,0,1)", (zl_conv_shape){1, 2, 4, 5, 2, 1, 3, 1, 0, 2, 0, 1}, 1, 0);
    /* Output rows split into im2col tiles of 2 and 3 rows (the last one partial),
     * with padding rows at the tile edges. */
    conv_case("3x3 tiles of 2", (zl_conv_shape){2, 3, 9, 5, 4, 3, 3, 1, 1, 1, 1, 1}, 1, 2);
    conv_case("3x3 s2 tiles of 3", (zl_conv_shape){1, 3, 15, 7, 2, 3, 3, 2, 0, 0, 1, 1}, 1, 3);
    zl_conv_shape s = {1, 1, 2, 2, 1, 3, 3, 1, 0, 0, 0, 0};
    CHECK(zl_conv_out_h(&s) == 0 && zl_conv_out_w(&s) == 0); /* kernel larger than the padded image */
    /* Big enough for Winograd (src/nn/winograd.c): the forward through
     * zl_conv2d_fwd, the backward (im2col) checked against its differences. */
    conv_case("3x3 winograd-size", (zl_conv_shape){2, 17, 13, 22, 18, 3, 3, 1, 1, 1, 1, 1}, 1, 0);
}

/* Winograd F(4x4, 3x3) against the float64 direct convolution: ragged tile
 * edges (H, W not multiples of 4), channel counts off the 8-lane steps, two
 * images, every chunking of output channels and tiles (chunks that split a
 * tile row and an image), and weights given as F16 and as unaligned BF16. */
static void wino_case(const char *name, zl_conv_shape s, int with_bias, zl_dtype dt, int kc, int pc) {
    const size_t nx = (size_t)s.B * s.Cin * s.H * s.W, nw = (size_t)s.Cout * s.Cin * 9, ny = (size_t)s.B * s.Cout * s.H * s.W;
    float *x = frnd(nx, 1), *W = frnd(nw, 0.5f), *b = with_bias ? frnd(s.Cout, 1) : NULL, *y = ffill(ny, NAN);
    unsigned char *store = malloc(nw * 4 + 1), *wp = store + (dt == ZL_DT_F32 ? 0 : 1);
    for (size_t i = 0; i < nw; i++) { /* round to the stored type; the reference uses the rounded values */
        uint16_t h;
        if (dt == ZL_DT_F16) h = zl_f32_to_f16(W[i]), W[i] = zl_f16_to_f32(h), memcpy(wp + 2 * i, &h, 2);
        else if (dt == ZL_DT_BF16) h = zl_f32_to_bf16(W[i]), W[i] = zl_bf16_to_f32(h), memcpy(wp + 2 * i, &h, 2);
        else memcpy(wp + 4 * i, &W[i], 4);
    }
    double *ref = malloc(sizeof(double) * ny), *xd = todbl(x, nx), *Wd = todbl(W, nw), *bd = b ? todbl(b, s.Cout) : NULL;
    nv_conv(ref, xd, Wd, bd, &s);
    zl_conv2d_fwd_winograd_chunks(y, x, dt, wp, b, &s, kc, pc);
    char what[160];
    snprintf(what, sizeof what, "winograd %s (chunks %d/%d)", name, kc, pc);
    fwd_close(what, y, ref, ny);
    free(x), free(W), free(b), free(y), free(store), free(ref), free(xd), free(Wd), free(bd);
}

/* zl_conv2d_fwd_stored (F16 weights) gives exactly zl_conv2d_fwd on the
 * widened weights, through im2col (stride 2, 1x1, a Winograd-size shape with
 * too few tiles) and through Winograd. */
static void test_conv_stored(void) {
    const zl_conv_shape shapes[] = {{2, 20, 9, 11, 24, 3, 3, 2, 1, 1, 1, 1},
                                    {2, 20, 9, 11, 24, 1, 1, 1, 0, 0, 0, 0},
                                    {1, 32, 12, 12, 40, 3, 3, 1, 1, 1, 1, 1},
                                    {2, 19, 13, 22, 17, 3, 3, 1, 1, 1, 1, 1}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const zl_conv_shape s = shapes[i];
        const size_t nx = (size_t)s.B * s.Cin * s.H * s.W, nw = (size_t)s.Cout * s.Cin * s.kh * s.kw,
                     ny = (size_t)s.B * s.Cout * zl_conv_out_h(&s) * zl_conv_out_w(&s);
        float *x = frnd(nx, 1), *W = frnd(nw, 0.5f), *b = frnd(s.Cout, 1), *y1 = ffill(ny, NAN), *y2 = ffill(ny, NAN);
        uint16_t *h = malloc(nw * sizeof(uint16_t));
        for (size_t k = 0; k < nw; k++) h[k] = zl_f32_to_f16(W[k]), W[k] = zl_f16_to_f32(h[k]);
        zl_conv2d_fwd(y1, x, W, b, &s);
        CHECK_OK(zl_conv2d_fwd_stored(y2, x, ZL_DT_F16, h, b, &s));
        CHECKM(memcmp(y1, y2, sizeof(float) * ny) == 0, "conv from F16 weights, shape %zu (%s), bit-identical", i,
               zl_conv2d_winograd_ok(&s) ? "winograd" : "im2col");
        free(x), free(W), free(b), free(y1), free(y2), free(h);
    }
}

static void test_winograd(void) {
    const zl_conv_shape s1 = {2, 19, 13, 22, 17, 3, 3, 1, 1, 1, 1, 1}; /* 2 x 4 x 6 = 48 tiles */
    wino_case("19->17 13x22 b2", s1, 1, ZL_DT_F32, 0, 0);
    wino_case("19->17 13x22 b2", s1, 1, ZL_DT_F32, 16, 5);  /* 2 channel chunks, tile chunks of 5 */
    wino_case("19->17 13x22 b2", s1, 0, ZL_DT_F32, 8, 48);  /* 3 channel chunks, input transformed once */
    wino_case("19->17 13x22 b2 F16", s1, 1, ZL_DT_F16, 0, 7);
    wino_case("19->17 13x22 b2 BF16 unaligned", s1, 1, ZL_DT_BF16, 5, 0);
    wino_case("32->24 16x16", (zl_conv_shape){1, 32, 16, 16, 24, 3, 3, 1, 1, 1, 1, 1}, 1, ZL_DT_F16, 0, 0);
    wino_case("16->16 1x1 image", (zl_conv_shape){3, 16, 1, 1, 16, 3, 3, 1, 1, 1, 1, 1}, 1, ZL_DT_F32, 0, 0);
    wino_case("16->40 5x33 (tile row wider than 8)", (zl_conv_shape){1, 16, 5, 33, 40, 3, 3, 1, 1, 1, 1, 1}, 1,
              ZL_DT_F32, 0, 11);
    /* Which shapes take it: 3x3, stride 1, pad 1, >= 16 channels each side, >= 48 tiles. */
    /* the input gradient, against the im2col backward (itself checked against differences above) */
    const zl_conv_shape sg[] = {s1, {1, 16, 5, 33, 40, 3, 3, 1, 1, 1, 1, 1}};
    for (int g = 0; g < 2; g++) {
        const zl_conv_shape t = sg[g];
        const size_t nx = (size_t)t.B * t.Cin * t.H * t.W, nw = (size_t)t.Cout * t.Cin * 9, ny = (size_t)t.B * t.Cout * t.H * t.W;
        float *W = frnd(nw, 0.5f), *dy = frnd(ny, 1), *x = frnd(nx, 1), *ref = frnd(nx, 1);
        float *got = malloc(nx * sizeof(float)), *got2 = malloc(nx * sizeof(float));
        uint16_t *h = malloc(nw * sizeof(uint16_t));
        for (size_t k = 0; k < nw; k++) h[k] = zl_f32_to_f16(W[k]), W[k] = zl_f16_to_f32(h[k]);
        memcpy(got, ref, nx * sizeof(float)); /* all accumulate onto the same values */
        memcpy(got2, ref, nx * sizeof(float));
        zl_conv2d_bwd_rows(ref, NULL, NULL, dy, x, W, &t, 3);
        zl_conv2d_dx_winograd_chunks(got, dy, ZL_DT_F32, W, &t, 0, 0);
        zt_close("winograd dx (F32 weights)", got, ref, (int64_t)nx, FWD_TOL);
        zl_conv2d_dx_winograd_chunks(got2, dy, ZL_DT_F16, h, &t, 16, 5); /* F16, chunked */
        zt_close("winograd dx (F16 weights, chunks 16/5)", got2, ref, (int64_t)nx, FWD_TOL);
        free(W), free(dy), free(x), free(ref), free(got), free(got2), free(h);
    }
    CHECK(zl_conv2d_winograd_ok(&s1));
    zl_conv_shape t = s1;
    t.B = 1; /* 24 tiles */
    CHECK(!zl_conv2d_winograd_ok(&t));
    t = s1, t.stride = 2;
    CHECK(!zl_conv2d_winograd_ok(&t));
    t = s1, t.pad_t = t.pad_l = 0;
    CHECK(!zl_conv2d_winograd_ok(&t));
    t = s1, t.Cin = 15;
    CHECK(!zl_conv2d_winograd_ok(&t));
    t = s1, t.kh = t.kw = 1, t.pad_t = t.pad_l = t.pad_b = t.pad_r = 0;
    CHECK(!zl_conv2d_winograd_ok(&t));
}

/* ---- norms ------------------------------------------------------------------------ */

typedef struct { int B, C, HW, G; float eps; double *x, *g, *b, *dy, *y; } gn_ctx;
static void nv_groupnorm(double *y, const double *x, const double *g, const double *b, int B, int C, int HW, int G,
                         double eps) {
    const int cpg = C / G;
    for (int n = 0; n < B; n++)
        for (int gg = 0; gg < G; gg++) {
            const double *p = x + ((size_t)n * C + gg * cpg) * HW;
            const size_t m = (size_t)cpg * HW;
            double mu = 0, var = 0;
            for (size_t i = 0; i < m; i++) mu += p[i];
            mu /= m;
            for (size_t i = 0; i < m; i++) var += (p[i] - mu) * (p[i] - mu);
            var /= m;
            for (int cc = 0; cc < cpg; cc++) {
                const int c = gg * cpg + cc;
                for (int i = 0; i < HW; i++) {
                    size_t k = ((size_t)n * C + c) * HW + i;
                    y[k] = (x[k] - mu) / sqrt(var + eps) * g[c] + b[c];
                }
            }
        }
}
static double gn_loss(void *c) {
    gn_ctx *t = c;
    nv_groupnorm(t->y, t->x, t->g, t->b, t->B, t->C, t->HW, t->G, t->eps);
    return dot(t->y, t->dy, (size_t)t->B * t->C * t->HW);
}

/* The fused group norm + SiLU against the naive double group norm followed by
 * a double SiLU, on rows long enough for the vector loops (ragged length). */
static void groupnorm_silu_case(void) {
    const int B = 2, C = 8, HW = 37 * 29, G = 2;
    const size_t n = (size_t)B * C * HW;
    float *x = frnd(n, 2), *g = frnd(C, 1), *b = frnd(C, 1), *y = ffill(n, NAN), *y2 = ffill(n, NAN);
    for (size_t i = 0; i < n; i++) x[i] += 3.0f;
    float mean[B * G], rstd[B * G], mean2[B * G], rstd2[B * G];
    double *xd = todbl(x, n), *gd = todbl(g, C), *bd = todbl(b, C), *ref = malloc(sizeof(double) * n);
    nv_groupnorm(ref, xd, gd, bd, B, C, HW, G, 1e-5);
    for (size_t i = 0; i < n; i++) ref[i] = ref[i] / (1.0 + exp(-ref[i]));
    zl_groupnorm_silu_fwd(y, mean, rstd, x, g, b, B, C, HW, G, 1e-5f);
    fwd_close("groupnorm+silu fwd", y, ref, n);
    /* the same statistics as the plain group norm, and in place works */
    zl_groupnorm_fwd(y2, mean2, rstd2, x, g, b, B, C, HW, G, 1e-5f);
    CHECK(memcmp(mean, mean2, sizeof mean) == 0 && memcmp(rstd, rstd2, sizeof rstd) == 0);
    memcpy(y2, x, n * sizeof(float));
    zl_groupnorm_silu_fwd(y2, NULL, NULL, y2, g, b, B, C, HW, G, 1e-5f);
    CHECK(memcmp(y, y2, n * sizeof(float)) == 0);
    free(x), free(g), free(b), free(y), free(y2), free(xd), free(gd), free(bd), free(ref);
}

static void test_groupnorm(void) {
    const int B = 2, C = 6, HW = 10, G = 3;
    const size_t n = (size_t)B * C * HW;
    float *x = frnd(n, 1), *g = frnd(C, 1), *b = frnd(C, 1), *y = ffill(n, NAN), *dy = frnd(n, 1);
    for (size_t i = 0; i < n; i++) x[i] += 3.0f; /* an offset mean tests the centred variance */
    float mean[B * G], rstd[B * G];
    gn_ctx c = {B, C, HW, G, 1e-5f, todbl(x, n), todbl(g, C), todbl(b, C), todbl(dy, n), malloc(sizeof(double) * n)};
    zl_groupnorm_fwd(y, mean, rstd, x, g, b, B, C, HW, G, 1e-5f);
    nv_groupnorm(c.y, c.x, c.g, c.b, B, C, HW, G, 1e-5);
    fwd_close("groupnorm fwd", y, c.y, n);
    /* in place, and without saved stats */
    float *y2 = malloc(n * sizeof(float));
    memcpy(y2, x, n * sizeof(float));
    zl_groupnorm_fwd(y2, NULL, NULL, y2, g, b, B, C, HW, G, 1e-5f);
    CHECK(memcmp(y, y2, n * sizeof(float)) == 0);

    float *dx = ffill(n, GPRE), *dg = ffill(C, GPRE), *db = ffill(C, GPRE);
    zl_groupnorm_bwd(dx, dg, db, dy, x, mean, rstd, g, B, C, HW, G);
    grad_check("groupnorm dx", dx, gn_loss, &c, c.x, n, 1000);
    grad_check("groupnorm dgamma", dg, gn_loss, &c, c.g, C, 1000);
    grad_check("groupnorm dbeta", db, gn_loss, &c, c.b, C, 1000);
    free(x), free(g), free(b), free(y), free(y2), free(dy), free(dx), free(dg), free(db);
    free(c.x), free(c.g), free(c.b), free(c.dy), free(c.y);
    groupnorm_silu_case();
}

typedef struct { int N, C; double eps; double *x, *g, *b, *dy, *y; } ln_ctx;
static double ln_loss(void *c) {
    ln_ctx *t = c;
    /* LayerNorm is GroupNorm with one group per row and HW = 1 per channel, but
     * written out directly here to stay independent. */
    for (int n = 0; n < t->N; n++) {
        const double *p = t->x + (size_t)n * t->C;
        double mu = 0, var = 0;
        for (int i = 0; i < t->C; i++) mu += p[i];
        mu /= t->C;
        for (int i = 0; i < t->C; i++) var += (p[i] - mu) * (p[i] - mu);
        var /= t->C;
        for (int i = 0; i < t->C; i++) t->y[(size_t)n * t->C + i] = (p[i] - mu) / sqrt(var + t->eps) * t->g[i] + t->b[i];
    }
    return dot(t->y, t->dy, (size_t)t->N * t->C);
}

static void test_layernorm(void) {
    const int N = 5, C = 70; /* C > 64 spans two column blocks of the dg/db reduction */
    const size_t n = (size_t)N * C;
    float *x = frnd(n, 2), *g = frnd(C, 1), *b = frnd(C, 1), *y = ffill(n, NAN), *dy = frnd(n, 1);
    float mean[N], rstd[N];
    ln_ctx c = {N, C, 1e-5, todbl(x, n), todbl(g, C), todbl(b, C), todbl(dy, n), malloc(sizeof(double) * n)};
    zl_layernorm_fwd(y, mean, rstd, x, g, b, N, C, 1e-5f);
    ln_loss(&c);
    fwd_close("layernorm fwd", y, c.y, n);
    float *dx = ffill(n, GPRE), *dg = ffill(C, GPRE), *db = ffill(C, GPRE);
    zl_layernorm_bwd(dx, dg, db, dy, x, mean, rstd, g, N, C);
    grad_check("layernorm dx", dx, ln_loss, &c, c.x, n, 1000);
    grad_check("layernorm dg", dg, ln_loss, &c, c.g, C, 1000);
    grad_check("layernorm db", db, ln_loss, &c, c.b, C, 1000);
    free(x), free(g), free(b), free(y), free(dy), free(dx), free(dg), free(db);
    free(c.x), free(c.g), free(c.b), free(c.dy), free(c.y);
}

/* ---- activations -------------------------------------------------------------------- */

enum { A_SILU, A_GELU, A_QGELU, A_GEGLU };
typedef struct { int kind, N, D; double *x, *dy, *y; } act_ctx;
static double nv_gelu(double v) { return 0.5 * v * (1 + erf(v / sqrt(2.0))); }
static double act_loss(void *c) {
    act_ctx *t = c;
    const size_t n = (size_t)t->N * t->D;
    for (size_t i = 0; i < n; i++) {
        const double v = t->x[i];
        if (t->kind == A_SILU) t->y[i] = v / (1 + exp(-v));
        else if (t->kind == A_GELU) t->y[i] = nv_gelu(v);
        else if (t->kind == A_QGELU) t->y[i] = v / (1 + exp(-1.702 * v));
        else {
            const size_t r = i / t->D, j = i % t->D;
            t->y[i] = t->x[r * 2 * t->D + j] * nv_gelu(t->x[r * 2 * t->D + t->D + j]);
        }
    }
    return dot(t->y, t->dy, n);
}

static void test_activations(void) {
    const char *names[] = {"silu", "gelu", "quickgelu", "geglu"};
    for (int kind = 0; kind < 4; kind++) {
        const int N = 9, D = 11;
        const size_t ny = (size_t)N * D, nx = kind == A_GEGLU ? 2 * ny : ny;
        float *x = frnd(nx, 4), *y = ffill(ny, NAN), *dy = frnd(ny, 1), *dx = ffill(nx, GPRE);
        act_ctx c = {kind, N, D, todbl(x, nx), todbl(dy, ny), malloc(sizeof(double) * ny)};
        if (kind == A_SILU) zl_silu_fwd(y, x, ny), zl_silu_bwd(dx, dy, x, ny);
        if (kind == A_GELU) zl_gelu_fwd(y, x, ny), zl_gelu_bwd(dx, dy, x, ny);
        if (kind == A_QGELU) zl_quickgelu_fwd(y, x, ny), zl_quickgelu_bwd(dx, dy, x, ny);
        if (kind == A_GEGLU) zl_geglu_fwd(y, x, N, D), zl_geglu_bwd(dx, dy, x, N, D);
        act_loss(&c);
        char what[64];
        snprintf(what, sizeof what, "%s fwd", names[kind]);
        fwd_close(what, y, c.y, ny);
        snprintf(what, sizeof what, "%s dx", names[kind]);
        grad_check(what, dx, act_loss, &c, c.x, nx, 1000);
        if (kind != A_GEGLU) { /* in place */
            float *z = malloc(nx * sizeof(float));
            memcpy(z, x, nx * sizeof(float));
            if (kind == A_SILU) zl_silu_fwd(z, z, ny);
            if (kind == A_GELU) zl_gelu_fwd(z, z, ny);
            if (kind == A_QGELU) zl_quickgelu_fwd(z, z, ny);
            CHECK(memcmp(z, y, ny * sizeof(float)) == 0);
            free(z);
        }
        free(x), free(y), free(dy), free(dx), free(c.x), free(c.dy), free(c.y);
    }
    /* The vector paths over a wide range (tails saturate, negative tails stay
     * accurate) against double formulas for values and derivatives. */
    {
        const int n = 2001;
        float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float)), *dx = malloc(n * sizeof(float));
        float *one = ffill(n, 1.0f);
        double *ref = malloc(n * sizeof(double));
        for (int i = 0; i < n; i++) x[i] = -12.0f + 24.0f * (float)i / (float)(n - 1);
        for (int kind = 0; kind < 3; kind++) {
            if (kind == A_SILU) zl_silu_fwd(y, x, n);
            if (kind == A_GELU) zl_gelu_fwd(y, x, n);
            if (kind == A_QGELU) zl_quickgelu_fwd(y, x, n);
            for (int i = 0; i < n; i++) {
                const double v = x[i];
                ref[i] = kind == A_SILU ? v / (1 + exp(-v))
                       : kind == A_GELU ? 0.5 * v * erfc(-v / sqrt(2.0))
                                        : v / (1 + exp(-1.702 * v));
            }
            fwd_close(kind == A_SILU ? "silu wide range" : kind == A_GELU ? "gelu wide range" : "quickgelu wide range",
                      y, ref, n);
            if (kind == A_QGELU) continue;
            memset(dx, 0, n * sizeof(float));
            if (kind == A_SILU) zl_silu_bwd(dx, one, x, n);
            if (kind == A_GELU) zl_gelu_bwd(dx, one, x, n);
            for (int i = 0; i < n; i++) {
                const double v = x[i], s = 1 / (1 + exp(-v));
                ref[i] = kind == A_SILU ? s * (1 + v * (1 - s))
                                        : 0.5 * erfc(-v / sqrt(2.0)) + v * exp(-0.5 * v * v) / sqrt(2 * M_PI);
            }
            fwd_close(kind == A_SILU ? "silu' wide range" : "gelu' wide range", dx, ref, n);
        }
        free(x), free(y), free(dx), free(one), free(ref);
    }
    /* exact GELU, not the tanh approximation: gelu(1) = 0.8413447460685429 */
    float one = 1.0f, g1;
    zl_gelu_fwd(&g1, &one, 1);
    CHECK(fabs(g1 - 0.8413447460685429) < 1e-7);
    float ones[8] = {1, 1, 1, 1, 1, 1, 1, 1}, g8[8]; /* the same through the 8-wide path */
    zl_gelu_fwd(g8, ones, 8);
    for (int i = 0; i < 8; i++) CHECK(fabs(g8[i] - 0.8413447460685429) < 1e-7);
}

/* ---- attention ------------------------------------------------------------------------ */

typedef struct {
    int B, Tq, Tk, H, d, causal, ldq, ldk, ldv;
    double *q, *k, *v, *dy, *y;
} att_ctx;
static void nv_attention(const att_ctx *t) {
    const int HD = t->H * t->d;
    double *s = malloc(sizeof(double) * t->Tk);
    for (int b = 0; b < t->B; b++)
        for (int h = 0; h < t->H; h++)
            for (int i = 0; i < t->Tq; i++) {
                double mx = -INFINITY, sum = 0;
                const int nk = t->causal ? (i + 1 < t->Tk ? i + 1 : t->Tk) : t->Tk;
                for (int j = 0; j < nk; j++) {
                    double a = 0;
                    for (int e = 0; e < t->d; e++)
                        a += t->q[((size_t)b * t->Tq + i) * t->ldq + h * t->d + e] *
                             t->k[((size_t)b * t->Tk + j) * t->ldk + h * t->d + e];
                    s[j] = a / sqrt((double)t->d);
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = 0; j < nk; j++) sum += (s[j] = exp(s[j] - mx));
                for (int e = 0; e < t->d; e++) {
                    double a = 0;
                    for (int j = 0; j < nk; j++) a += s[j] * t->v[((size_t)b * t->Tk + j) * t->ldv + h * t->d + e];
                    t->y[((size_t)b * t->Tq + i) * HD + h * t->d + e] = a / sum;
                }
            }
    free(s);
}
static double att_loss(void *c) {
    att_ctx *t = c;
    nv_attention(t);
    return dot(t->y, t->dy, (size_t)t->B * t->Tq * t->H * t->d);
}

static void attention_case(const char *name, int B, int Tq, int Tk, int H, int d, int causal, int pad, size_t maxs) {
    const int HD = H * d, ldq = HD + pad, ldk = HD + 2 * pad, ldv = HD + 3 * pad;
    const size_t nq = (size_t)B * Tq * ldq, nk = (size_t)B * Tk * ldk, nv = (size_t)B * Tk * ldv,
                 no = (size_t)B * Tq * HD;
    /* Scale 2 makes the softmax peaky enough that the online rescaling matters. */
    float *q = frnd(nq, 2), *k = frnd(nk, 2), *v = frnd(nv, 1), *o = ffill(no, NAN), *dy = frnd(no, 1);
    float *lse = ffill((size_t)B * H * Tq, NAN);
    att_ctx c = {B, Tq, Tk, H, d, causal, ldq, ldk, ldv, todbl(q, nq), todbl(k, nk), todbl(v, nv), todbl(dy, no),
                 malloc(sizeof(double) * no)};
    char what[128];
    zl_attention_fwd(o, lse, q, ldq, k, ldk, v, ldv, B, Tq, Tk, H, d, causal);
    nv_attention(&c);
    snprintf(what, sizeof what, "attention %s fwd", name);
    fwd_close(what, o, c.y, no);
    /* lse of one row, recomputed here */
    {
        const int b = B - 1, h = H - 1, i = Tq - 1, nkv = causal ? (i + 1 < Tk ? i + 1 : Tk) : Tk;
        double mx = -INFINITY, s[4096], sum = 0;
        for (int j = 0; j < nkv; j++) {
            double a = 0;
            for (int e = 0; e < d; e++)
                a += c.q[((size_t)b * Tq + i) * ldq + h * d + e] * c.k[((size_t)b * Tk + j) * ldk + h * d + e];
            s[j] = a / sqrt((double)d);
            if (s[j] > mx) mx = s[j];
        }
        for (int j = 0; j < nkv; j++) sum += exp(s[j] - mx);
        const double ref = mx + log(sum), got = lse[((size_t)b * H + h) * Tq + i];
        CHECKM(fabs(got - ref) <= 1e-5 * fmax(1, fabs(ref)), "attention %s lse %g vs %g", name, got, ref);
    }
    float *dq = ffill(nq, GPRE), *dk = ffill(nk, GPRE), *dv = ffill(nv, GPRE);
    zl_attention_bwd(dq, dk, dv, dy, q, ldq, k, ldk, v, ldv, o, lse, B, Tq, Tk, H, d, causal);
    /* Only the H*d columns of each strided row are gradients; the gaps must stay untouched. */
    int gaps_ok = 1;
    for (size_t r = 0; r < (size_t)B * Tq; r++)
        for (int j = HD; j < ldq; j++) gaps_ok &= dq[r * ldq + j] == GPRE;
    for (size_t r = 0; r < (size_t)B * Tk; r++) {
        for (int j = HD; j < ldk; j++) gaps_ok &= dk[r * ldk + j] == GPRE;
        for (int j = HD; j < ldv; j++) gaps_ok &= dv[r * ldv + j] == GPRE;
    }
    CHECKM(gaps_ok, "attention %s: stride gaps untouched", name);
    snprintf(what, sizeof what, "attention %s dq", name);
    grad_check(what, dq, att_loss, &c, c.q, nq, maxs);
    snprintf(what, sizeof what, "attention %s dk", name);
    grad_check(what, dk, att_loss, &c, c.k, nk, maxs);
    snprintf(what, sizeof what, "attention %s dv", name);
    grad_check(what, dv, att_loss, &c, c.v, nv, maxs);
    /* NULL gradients: dq alone matches. */
    float *dq2 = ffill(nq, GPRE);
    zl_attention_bwd(dq2, NULL, NULL, dy, q, ldq, k, ldk, v, ldv, o, lse, B, Tq, Tk, H, d, causal);
    CHECKM(memcmp(dq, dq2, nq * sizeof(float)) == 0, "attention %s: dq alone", name);
    free(q), free(k), free(v), free(o), free(dy), free(lse), free(dq), free(dk), free(dv), free(dq2);
    free(c.q), free(c.k), free(c.v), free(c.dy), free(c.y);
}

static void test_attention(void) {
    attention_case("small", 2, 5, 7, 2, 4, 0, 0, 1000);
    attention_case("small causal", 2, 6, 6, 2, 4, 1, 0, 1000);
    attention_case("strided Tq!=Tk", 1, 4, 9, 3, 4, 0, 5, 1000);
    attention_case("strided causal Tq!=Tk", 2, 7, 5, 2, 3, 1, 3, 1000);
    /* More rows than one query tile and more keys than one key tile, so the
     * online softmax rescales across key tiles and causal tiles are skipped. */
    attention_case("multi-tile", 1, 250, 300, 2, 8, 0, 2, 120);
    attention_case("multi-tile causal", 1, 300, 300, 1, 8, 1, 1, 120);
    /* B*H >= 8 takes the one-sweep-per-head backward; again across tiles. */
    attention_case("many heads multi-tile", 2, 196, 260, 4, 2, 0, 1, 16);
    attention_case("many heads multi-tile causal", 2, 260, 260, 4, 2, 1, 0, 16);
    /* All keys in one tile (cross-attention's 77 tokens) over several query tiles. */
    attention_case("77 keys, query tiles", 1, 400, 77, 2, 8, 0, 2, 60);
}

/* ---- shape ops ------------------------------------------------------------------------------ */

typedef struct { int kind, B, C, C2, H, W; double *a, *b, *dy, *y; } shp_ctx;
enum { S_UP, S_CAT, S_BIAS };
static double shp_loss(void *c) {
    shp_ctx *t = c;
    const size_t HW = (size_t)t->H * t->W;
    size_t ny = 0;
    if (t->kind == S_UP) {
        ny = (size_t)t->B * t->C * 4 * HW;
        for (int bc = 0; bc < t->B * t->C; bc++)
            for (int i = 0; i < 2 * t->H; i++)
                for (int j = 0; j < 2 * t->W; j++)
                    t->y[(size_t)bc * 4 * HW + (size_t)i * 2 * t->W + j] = t->a[(size_t)bc * HW + (i / 2) * t->W + j / 2];
    } else if (t->kind == S_CAT) {
        ny = (size_t)t->B * (t->C + t->C2) * HW;
        for (int n = 0; n < t->B; n++)
            for (int ch = 0; ch < t->C + t->C2; ch++)
                for (size_t i = 0; i < HW; i++)
                    t->y[((size_t)n * (t->C + t->C2) + ch) * HW + i] =
                        ch < t->C ? t->a[((size_t)n * t->C + ch) * HW + i] : t->b[((size_t)n * t->C2 + ch - t->C) * HW + i];
    } else {
        ny = (size_t)t->B * t->C * HW;
        for (int bc = 0; bc < t->B * t->C; bc++)
            for (size_t i = 0; i < HW; i++) t->y[(size_t)bc * HW + i] = t->a[(size_t)bc * HW + i] + t->b[bc];
    }
    return dot(t->y, t->dy, ny);
}

static void test_shape_ops(void) {
    const int B = 2, C = 3, C2 = 4, H = 3, W = 5;
    const size_t HW = (size_t)H * W;
    /* upsample: exact */
    {
        const size_t nx = B * C * HW, ny = 4 * nx;
        float *x = frnd(nx, 1), *y = ffill(ny, NAN), *dy = frnd(ny, 1), *dx = ffill(nx, GPRE);
        shp_ctx c = {S_UP, B, C, 0, H, W, todbl(x, nx), NULL, todbl(dy, ny), malloc(sizeof(double) * ny)};
        zl_upsample2x_fwd(y, x, B, C, H, W);
        shp_loss(&c);
        fwd_close("upsample fwd", y, c.y, ny);
        zl_upsample2x_bwd(dx, dy, B, C, H, W);
        grad_check("upsample dx", dx, shp_loss, &c, c.a, nx, 1000);
        free(x), free(y), free(dy), free(dx), free(c.a), free(c.dy), free(c.y);
    }
    /* concat */
    {
        const size_t na = B * C * HW, nb = B * C2 * HW, ny = na + nb;
        float *a = frnd(na, 1), *b = frnd(nb, 1), *y = ffill(ny, NAN), *dy = frnd(ny, 1);
        float *da = ffill(na, GPRE), *db = ffill(nb, GPRE);
        shp_ctx c = {S_CAT, B, C, C2, H, W, todbl(a, na), todbl(b, nb), todbl(dy, ny), malloc(sizeof(double) * ny)};
        zl_concat_fwd(y, a, b, B, C, C2, (int)HW);
        shp_loss(&c);
        fwd_close("concat fwd", y, c.y, ny);
        zl_concat_bwd(da, db, dy, B, C, C2, (int)HW);
        grad_check("concat da", da, shp_loss, &c, c.a, na, 1000);
        grad_check("concat db", db, shp_loss, &c, c.b, nb, 1000);
        free(a), free(b), free(y), free(dy), free(da), free(db), free(c.a), free(c.b), free(c.dy), free(c.y);
    }
    /* channel bias */
    {
        const size_t nx = B * C * HW;
        float *x = frnd(nx, 1), *v = frnd(B * C, 1), *dy = frnd(nx, 1), *dv = ffill(B * C, GPRE);
        shp_ctx c = {S_BIAS, B, C, 0, H, W, todbl(x, nx), todbl(v, B * C), todbl(dy, nx), malloc(sizeof(double) * nx)};
        zl_add_channel_bias(x, v, B, C, (int)HW);
        shp_loss(&c);
        fwd_close("channel bias fwd", x, c.y, nx);
        zl_add_channel_bias_bwd(dv, dy, B, C, (int)HW);
        grad_check("channel bias dv", dv, shp_loss, &c, c.b, B * C, 1000);
        free(x), free(v), free(dy), free(dv), free(c.a), free(c.b), free(c.dy), free(c.y);
    }
    /* transpose: exact both ways, and an involution */
    {
        const int T = 37, CC = 45; /* not multiples of the 32 block */
        const size_t n = (size_t)B * CC * T;
        float *x = frnd(n, 1), *y = ffill(n, NAN), *z = ffill(n, NAN);
        zl_transpose_ct(y, x, B, CC, T);
        int ok = 1;
        for (int b = 0; b < B; b++)
            for (int c = 0; c < CC; c++)
                for (int t = 0; t < T; t++) ok &= y[((size_t)b * T + t) * CC + c] == x[((size_t)b * CC + c) * T + t];
        CHECK(ok);
        zl_transpose_ct(z, y, B, T, CC);
        CHECK(memcmp(z, x, n * sizeof(float)) == 0);
        free(x), free(y), free(z);
    }
    /* add / acc / scale: exact */
    {
        float a[5] = {1, 2, 3, 4, 5}, b[5] = {0.5f, -1, 2, 0, 8}, y[5];
        zl_add(y, a, b, 5);
        CHECK(y[0] == 1.5f && y[1] == 1 && y[2] == 5 && y[3] == 4 && y[4] == 13);
        zl_add(a, a, b, 5); /* aliasing */
        CHECK(a[4] == 13);
        zl_acc(y, b, 5);
        CHECK(y[0] == 2 && y[4] == 21);
        zl_scale(y, 0.5f, 5);
        CHECK(y[0] == 1 && y[4] == 10.5f);
    }
}

/* ---- embedding and loss ------------------------------------------------------------------------ */

static void test_timestep_embedding(void) {
    const float t[3] = {0, 281, 999};
    for (int flip = 0; flip < 2; flip++)
        for (int dim = 7; dim <= 8; dim++) {
            float e[3 * 8];
            zl_timestep_embedding(e, t, 3, dim, flip, flip ? 0.0f : 1.0f);
            const int half = dim / 2;
            double ref[3 * 8];
            for (int n = 0; n < 3; n++) {
                for (int i = 0; i < half; i++) {
                    const double a = t[n] * exp(-log(10000.0) * i / (half - (flip ? 0.0 : 1.0)));
                    ref[n * dim + i] = flip ? cos(a) : sin(a);
                    ref[n * dim + half + i] = flip ? sin(a) : cos(a);
                }
                if (dim % 2) ref[n * dim + dim - 1] = 0;
            }
            /* Float32 angles of up to ~1000 rad carry ~6e-5 absolute error, as in torch. */
            float *r = toflt(ref, 3 * dim);
            zt_close("timestep embedding", e, r, 3 * dim, 1e-4);
            if (dim % 2) CHECK(e[dim - 1] == 0 && e[2 * dim - 1] == 0);
            CHECK(e[0] == (flip ? 1.0f : 0.0f)); /* t = 0: cos 0 first when flipped */
            free(r);
        }
}

static void test_mse(void) {
    const size_t n = 100003; /* several chunks and a ragged end */
    float *a = frnd(n, 1), *b = frnd(n, 1), *g = ffill(n, GPRE);
    double ref = 0;
    for (size_t i = 0; i < n; i++) ref += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    ref /= n;
    const double got = zl_mse(a, b, n, g, 3.0f);
    CHECKM(fabs(got - ref) <= 1e-12 * ref, "mse %.17g vs %.17g", got, ref);
    double md = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((g[i] - GPRE) - 2.0 * ((double)a[i] - b[i]) / n * 3.0);
        if (d > md) md = d;
    }
    /* The gradient (|g| ~ 6e-5) is accumulated onto GPRE = 0.25 in float: half an ulp of 0.25 is 1.5e-8. */
    CHECKM(md <= 3e-8, "mse grad max diff %g", md);
    CHECK(zl_mse(a, a, n, NULL, 1) == 0);
    free(a), free(b), free(g);
}

/* ---- thread-count independence ---------------------------------------------------------------- */

static double maxrel(const float *a, const float *b, size_t n) {
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)a[i] - b[i]));
        mr = fmax(mr, fabs((double)b[i]));
    }
    return md / fmax(mr, 1e-30);
}

/* Runs a mid-sized case of each threaded op, writing every result into out. */
static size_t run_threaded(float *out) {
    size_t pos = 0;
    g_rng = 12345;
    { /* conv 3x3 with grads */
        zl_conv_shape s = {2, 16, 24, 24, 16, 3, 3, 1, 1, 1, 1, 1};
        size_t nx = 2 * 16 * 24 * 24, nw = 16 * 16 * 9;
        float *x = frnd(nx, 1), *W = frnd(nw, 0.3f), *b = frnd(16, 1), *dy = frnd(nx, 1);
        zl_conv2d_fwd(out + pos, x, W, b, &s), pos += nx;
        memset(out + pos, 0, sizeof(float) * (nx + nw + 16));
        zl_conv2d_bwd(out + pos, out + pos + nx, out + pos + nx + nw, dy, x, W, &s), pos += nx + nw + 16;
        free(x), free(W), free(b), free(dy);
    }
    { /* group norm with grads */
        const int B = 2, C = 32, HW = 40 * 40, G = 8;
        size_t n = (size_t)B * C * HW;
        float *x = frnd(n, 1), *g = frnd(C, 1), *b = frnd(C, 1), *dy = frnd(n, 1), mean[16], rstd[16];
        zl_groupnorm_fwd(out + pos, mean, rstd, x, g, b, B, C, HW, G, 1e-5f), pos += n;
        memset(out + pos, 0, sizeof(float) * (n + 2 * C));
        zl_groupnorm_bwd(out + pos, out + pos + n, out + pos + n + C, dy, x, mean, rstd, g, B, C, HW, G);
        pos += n + 2 * C;
        free(x), free(g), free(b), free(dy);
    }
    { /* layer norm + linear + geglu with grads */
        const int N = 300, C = 256;
        size_t n = (size_t)N * C;
        float *x = frnd(n, 1), *g = frnd(C, 1), *b = frnd(C, 1), *dy = frnd(n, 1), mean[300], rstd[300];
        zl_layernorm_fwd(out + pos, mean, rstd, x, g, b, N, C, 1e-5f), pos += n;
        memset(out + pos, 0, sizeof(float) * (n + 2 * C));
        zl_layernorm_bwd(out + pos, out + pos + n, out + pos + n + C, dy, x, mean, rstd, g, N, C);
        pos += n + 2 * C;
        float *W = frnd((size_t)C * C, 0.1f);
        zl_linear_fwd(out + pos, x, W, b, N, C, C), pos += n;
        memset(out + pos, 0, sizeof(float) * (n + (size_t)C * C + C));
        zl_linear_bwd(out + pos, out + pos + n, out + pos + n + (size_t)C * C, dy, x, W, N, C, C);
        pos += n + (size_t)C * C + C;
        zl_geglu_fwd(out + pos, x, N, C / 2), pos += n / 2;
        uint16_t *Wh = malloc(sizeof(uint16_t) * C * C); /* the stored-dtype products of the UNet */
        for (int i = 0; i < C * C; i++) Wh[i] = zl_f32_to_f16(W[i]);
        CHECK_OK(zl_linear_fwd_stored(out + pos, x, ZL_DT_F16, Wh, b, N, C, C));
        pos += n;
        CHECK_OK(zl_sgemm_nn_stored(N, C, C, dy, C, ZL_DT_F16, Wh, 0.0f, out + pos, C));
        pos += n;
        free(Wh);
        free(x), free(g), free(b), free(dy), free(W);
    }
    { /* attention with grads, causal and not */
        for (int causal = 0; causal < 2; causal++) {
            const int B = 1, T = 300, H = 2, d = 16, HD = H * d;
            size_t n = (size_t)B * T * HD;
            float *q = frnd(n, 1), *k = frnd(n, 1), *v = frnd(n, 1), *dy = frnd(n, 1), lse[600];
            float *o = out + pos;
            zl_attention_fwd(o, lse, q, HD, k, HD, v, HD, B, T, T, H, d, causal), pos += n;
            memset(out + pos, 0, sizeof(float) * 3 * n);
            zl_attention_bwd(out + pos, out + pos + n, out + pos + 2 * n, dy, q, HD, k, HD, v, HD, o, lse, B, T, T, H,
                             d, causal);
            pos += 3 * n;
            free(q), free(k), free(v), free(dy);
        }
    }
    { /* mse */
        size_t n = 200000;
        float *a = frnd(n, 1), *b = frnd(n, 1);
        memset(out + pos, 0, sizeof(float) * n);
        out[pos + n] = (float)zl_mse(a, b, n, out + pos, 1.0f), pos += n + 1;
        free(a), free(b);
    }
    return pos;
}

static void test_threads(void) {
    const size_t cap = 2000000;
    float *r1 = malloc(cap * sizeof(float)), *r2 = malloc(cap * sizeof(float));
    const int saved = zl_get_threads();
    zl_set_threads(1);
    size_t n1 = run_threaded(r1);
    zl_set_threads(2);
    size_t n2 = run_threaded(r2);
    zl_set_threads(saved);
    CHECK(n1 == n2 && n1 <= cap);
    const double rel = maxrel(r2, r1, n1);
    CHECKM(rel <= 1e-6, "1 vs 2 threads: max relative difference %g", rel);
    free(r1), free(r2);
}

int main(void) {
    test_sgemm();
    test_sgemm_grid_threads();
    test_tile_gemm();
    test_vexp();
    test_sgemm_stored();
    test_linear();
    test_conv();
    test_winograd();
    test_conv_stored();
    test_groupnorm();
    test_layernorm();
    test_activations();
    test_attention();
    test_shape_ops();
    test_timestep_embedding();
    test_mse();
    test_threads();
    return zt_done();
}
