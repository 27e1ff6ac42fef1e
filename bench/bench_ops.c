/* nn ops benchmark: achieved GFLOP/s of the heavy ops at SDXL shapes, each as a
 * ratio to the sgemm rate at M = N = K = 2048 measured in the same run.
 * Usage: bench_ops [threads] [reps] [filter]   (threads 0 = all cores; reps
 * default 3, best time kept; filter: run only cases whose name contains it). Memory-bound ops (group norm) report GB/s instead.
 * Each line also gives the ratio by process CPU time ("cpu"): on a shared
 * machine that figure is robust to other load when run with 1 thread (with 2,
 * OpenMP's spin-waiting inflates CPU time, so read the wall-clock ratio). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nn/conv_tiles.h"
#include "nn/ops.h"
#include "ziplora.h"

static int g_reps = 3;
static const char *g_filter = NULL;
static int wanted(const char *name) { return !g_filter || strstr(name, g_filter) != NULL; }

static float *rnd(size_t n, float s) {
    float *p = malloc(n * sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        p[i] = s * ((float)(x >> 8) / 8388608.0f - 1.0f);
    }
    return p;
}

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef void (*bench_fn)(void *);
static double g_cpu; /* CPU seconds of the fastest run of the last best_time() */
static double best_time(bench_fn f, void *ctx) {
    f(ctx); /* warm-up: page faults, BLAS buffers */
    double best = 1e30;
    g_cpu = 1e30;
    for (int r = 0; r < g_reps; r++) {
        double t0 = zl_now(), c0 = cpu_now();
        f(ctx);
        double t = zl_now() - t0, c = cpu_now() - c0;
        if (t < best) best = t;
        if (c < g_cpu) g_cpu = c;
    }
    return best;
}

/* ---- cases ---- */
typedef struct { int n; float *A, *B, *C; } gemm_ctx;
static void run_gemm(void *c) {
    gemm_ctx *g = c;
    zl_sgemm(0, 0, g->n, g->n, g->n, 1.0f, g->A, g->n, g->B, g->n, 0.0f, g->C, g->n);
}

/* mode: 0 forward as zl_conv2d_fwd picks, 1 forward by im2col + sgemm, 2 forward
 * by Winograd, 3 Winograd from F16 weights (as the UNet's stored weights), 4 backward. */
typedef struct { zl_conv_shape s; float *x, *W, *b, *y, *dx, *dW, *db; int mode; uint16_t *W16; } conv_ctx;
static void run_conv(void *c) {
    conv_ctx *k = c;
    if (k->mode == 4) zl_conv2d_bwd(k->dx, k->dW, k->db, k->y, k->x, k->W, &k->s);
    else if (k->mode == 1) zl_conv2d_fwd_rows(k->y, k->x, k->W, k->b, &k->s, 0);
    else if (k->mode == 2) zl_conv2d_fwd_winograd(k->y, k->x, ZL_DT_F32, k->W, k->b, &k->s);
    else if (k->mode == 3) zl_conv2d_fwd_winograd(k->y, k->x, ZL_DT_F16, k->W16, k->b, &k->s);
    else zl_conv2d_fwd(k->y, k->x, k->W, k->b, &k->s);
}

typedef struct { int B, T, Tk, H, d, bwd; float *q, *k, *v, *o, *lse, *dq, *dk, *dv; } att_ctx;
static void run_att(void *c) {
    att_ctx *a = c;
    const int HD = a->H * a->d;
    if (a->bwd)
        zl_attention_bwd(a->dq, a->dk, a->dv, a->o, a->q, HD, a->k, HD, a->v, HD, a->o, a->lse, a->B, a->T, a->Tk,
                         a->H, a->d, 0);
    else
        zl_attention_fwd(a->o, a->lse, a->q, HD, a->k, HD, a->v, HD, a->B, a->T, a->Tk, a->H, a->d, 0);
}

typedef struct { int N, in, out; float *x, *W, *b, *y; } lin_ctx;
static void run_lin(void *c) {
    lin_ctx *l = c;
    zl_linear_fwd(l->y, l->x, l->W, l->b, l->N, l->in, l->out);
}

typedef struct { int B, C, HW, G; float *x, *y, *g, *b, *mean, *rstd; } gn_ctx;
static void run_gn(void *c) {
    gn_ctx *g = c;
    zl_groupnorm_fwd(g->y, g->mean, g->rstd, g->x, g->g, g->b, g->B, g->C, g->HW, g->G, 1e-5f);
}
/* the UNet's resnet pair before fusion: group norm, then SiLU in place */
static void run_gn_then_silu(void *c) {
    gn_ctx *g = c;
    zl_groupnorm_fwd(g->y, g->mean, g->rstd, g->x, g->g, g->b, g->B, g->C, g->HW, g->G, 1e-5f);
    zl_silu_fwd(g->y, g->y, (size_t)g->B * g->C * g->HW);
}
static void run_gn_silu(void *c) {
    gn_ctx *g = c;
    zl_groupnorm_silu_fwd(g->y, g->mean, g->rstd, g->x, g->g, g->b, g->B, g->C, g->HW, g->G, 1e-5f);
}

/* Reference rates: OpenBLAS's own 2048^3 sgemm with its native threading (wall
 * clock; the figure the UNet targets are stated against), and zl_sgemm's
 * 2048^3 rate by CPU time (for the "cpu" column). */
static double g_ref, g_ref_cpu;
static void report(const char *name, double flops, double t);

static void bench_lin(int N, int in, int out) {
    char name[96];
    snprintf(name, sizeof name, "linear %d->%d, %d tokens", in, out, N);
    if (!wanted(name)) return;
    lin_ctx l = {N, in, out, rnd((size_t)N * in, 1), rnd((size_t)out * in, 0.03f), rnd(out, 1), rnd((size_t)N * out, 1)};
    report(name, 2.0 * N * in * out, best_time(run_lin, &l));
    free(l.x), free(l.W), free(l.b), free(l.y);
}

static void report(const char *name, double flops, double t) {
    const double gf = flops / t * 1e-9, gc = flops / g_cpu * 1e-9;
    printf("%-44s %9.2f ms %8.1f GFLOP/s %6.2fx sgemm  (cpu %6.2fx)\n", name, t * 1e3, gf, gf / g_ref, gc / g_ref_cpu);
    fflush(stdout);
}

static void bench_conv2(int Cin, int C, int HW, int mode) {
    static const char *what[] = {"fwd", "fwd im2col", "fwd winograd", "fwd winograd f16", "bwd (dx+dW)"};
    char name[96];
    snprintf(name, sizeof name, "conv3x3 %d->%d @%dx%d %s", Cin, C, HW, HW, what[mode]);
    if (!wanted(name)) return;
    conv_ctx k = {{1, Cin, HW, HW, C, 3, 3, 1, 1, 1, 1, 1}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, mode, NULL};
    const size_t nx = (size_t)Cin * HW * HW, ny = (size_t)C * HW * HW, nw = (size_t)C * Cin * 9;
    k.x = rnd(nx, 1), k.W = rnd(nw, 0.05f), k.b = rnd(C, 1), k.y = rnd(ny, 1);
    if (mode == 3) {
        k.W16 = malloc(nw * sizeof(uint16_t));
        for (size_t i = 0; i < nw; i++) k.W16[i] = zl_f32_to_f16(k.W[i]);
    }
    if (mode == 4) k.dx = calloc(nx, sizeof(float)), k.dW = calloc(nw, sizeof(float)), k.db = calloc(C, sizeof(float));
    report(name, (mode == 4 ? 4.0 : 2.0) * Cin * 9.0 * C * HW * HW, best_time(run_conv, &k));
    free(k.x), free(k.W), free(k.b), free(k.y), free(k.dx), free(k.dW), free(k.db), free(k.W16);
}
static void bench_conv(int C, int HW, int bwd) { bench_conv2(C, C, HW, bwd ? 4 : 0); }

static void bench_att(int T, int Tk, int H, int bwd) {
    const int d = 64;
    att_ctx a = {1, T, Tk, H, d, bwd, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    const size_t nq = (size_t)T * H * d, nk = (size_t)Tk * H * d;
    a.q = rnd(nq, 1), a.k = rnd(nk, 1), a.v = rnd(nk, 1), a.o = rnd(nq, 1), a.lse = rnd((size_t)H * T, 1);
    if (bwd) {
        zl_attention_fwd(a.o, a.lse, a.q, H * d, a.k, H * d, a.v, H * d, 1, T, Tk, H, d, 0);
        a.dq = calloc(nq, sizeof(float)), a.dk = calloc(nk, sizeof(float)), a.dv = calloc(nk, sizeof(float));
    }
    char name[96];
    snprintf(name, sizeof name, "attention T=%d Tk=%d H=%d d=64 %s", T, Tk, H, bwd ? "bwd" : "fwd");
    if (!wanted(name)) {
        free(a.q), free(a.k), free(a.v), free(a.o), free(a.lse), free(a.dq), free(a.dk), free(a.dv);
        return;
    }
    /* fwd: QK^T and PV, 2 flops each per (i, j, e); bwd counts the 5 products of
     * flash-attention-2 (this implementation recomputes QK^T once more: 7). */
    report(name, (bwd ? 10.0 : 4.0) * T * Tk * d * H, best_time(run_att, &a));
    free(a.q), free(a.k), free(a.v), free(a.o), free(a.lse), free(a.dq), free(a.dk), free(a.dv);
}

int main(int argc, char **argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 0;
    if (argc > 2) g_reps = atoi(argv[2]) > 0 ? atoi(argv[2]) : 1;
    if (argc > 3) g_filter = argv[3];
    zl_set_threads(threads);
    printf("bench_ops: %d threads, best of %d\n", zl_get_threads(), g_reps);

    g_ref = zl_sgemm_reference_gflops(2048, g_reps, zl_get_threads());
    printf("%-44s %9.2f ms %8.1f GFLOP/s   1.00x sgemm\n", "OpenBLAS native sgemm 2048^3 (reference)",
           2.0 * 2048 * 2048 * 2048 / g_ref * 1e-6, g_ref);
    gemm_ctx g = {2048, rnd(2048 * 2048, 1), rnd(2048 * 2048, 1), rnd(2048 * 2048, 1)};
    const double tg = best_time(run_gemm, &g);
    g_ref_cpu = 2.0 * 2048 * 2048 * 2048 / g_cpu * 1e-9;
    report("zl_sgemm 2048^3 (cpu reference)", 2.0 * 2048 * 2048 * 2048, tg);
    free(g.A), free(g.B), free(g.C);

    bench_conv(320, 128, 0);
    bench_conv(640, 64, 0);
    bench_conv(1280, 32, 0);
    bench_conv(640, 64, 1);
    /* im2col against Winograd at the UNet's 3x3 shapes (batch 1: 64x64 and
     * 128x128 latents put the levels at these sizes) and a VAE decoder shape */
    static const int cs[][3] = {{320, 320, 64}, {640, 640, 32}, {1280, 1280, 16}, {2560, 1280, 16},
                                {320, 320, 128}, {640, 640, 64}, {1280, 1280, 32}, {2560, 1280, 32},
                                {960, 320, 64}, {512, 512, 128}};
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
        for (int m = 1; m <= 3; m++) bench_conv2(cs[i][0], cs[i][1], cs[i][2], m);

    bench_att(4096, 4096, 10, 0);
    bench_att(4096, 77, 10, 0);
    bench_att(1024, 1024, 20, 0);
    bench_att(1024, 77, 20, 0);
    bench_att(1024, 1024, 20, 1);

    bench_lin(4096, 1280, 1280);
    bench_lin(1024, 1280, 1280);
    bench_lin(256, 1280, 1280);
    bench_lin(1024, 1280, 10240);
    bench_lin(1024, 5120, 1280);
    if (wanted("groupnorm")) {
        gn_ctx n = {1, 320, 128 * 128, 32, rnd((size_t)320 * 16384, 1), rnd((size_t)320 * 16384, 1), rnd(320, 1),
                    rnd(320, 1), rnd(32, 1), rnd(32, 1)};
        /* bytes that must move: x read once (the statistics' second read is
         * cache-resident per group), y written once */
        const double bytes = 2.0 * 4 * 320 * 16384;
        double t = best_time(run_gn, &n);
        printf("%-44s %9.2f ms %8.1f GB/s\n", "groupnorm 320ch @128x128 G=32", t * 1e3, bytes / t * 1e-9);
        t = best_time(run_gn_then_silu, &n);
        printf("%-44s %9.2f ms %8.1f GB/s\n", "groupnorm then silu 320ch @128x128", t * 1e3, bytes / t * 1e-9);
        t = best_time(run_gn_silu, &n);
        printf("%-44s %9.2f ms %8.1f GB/s\n", "groupnorm+silu fused 320ch @128x128", t * 1e3, bytes / t * 1e-9);
        free(n.x), free(n.y), free(n.g), free(n.b), free(n.mean), free(n.rstd);
    }
    printf("peak RSS %.0f MB\n", zl_peak_rss() / 1048576.0);
    return 0;
}
