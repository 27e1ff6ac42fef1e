/* ZipLoRA benchmarks.
 *
 *   bench_zip tune MODEL CONTENT STYLE CONTENT_PROMPT STYLE_PROMPT [K] [threads]
 *     One prepared run (generated references, the driver's draws), then, on the
 *     same K held-out draws (default 16, eval-merge's stream): direct merge,
 *     full mode, and layerwise variants (weighting, λ scale, local steps,
 *     hybrid full steps) from ONE capture. Prints the held-out objective (the
 *     first two terms, mergers as runtime branches), the similarity term, the
 *     share of full mode's reduction, and CPU/wall time per stage. This is the
 *     measurement the layerwise defaults were chosen from.
 *
 *   bench_zip sdxl full RES | layerwise RES  [threads]
 *     SDXL base at its real shapes with random weights (synth.h, folder
 *     /tmp/ziplora-bench/sdxl) and two random rank-64 attention LoRAs: one
 *     full-mode step (draw, eval with gradients in recompute mode, Adam) or a
 *     complete layerwise run at RES px, with fixed random latents in place of
 *     generated references (a --fixed-inputs file written first). Time (wall
 *     and CPU) and peak RSS of the process: run one configuration per process.
 *
 *   bench_zip solve [STEPS]
 *     One layerwise per-layer solve at SDXL's input widths against a memory
 *     streaming baseline measured in the same run.
 *
 * Uses the driver's internal header (src/lora/zip_run_internal.h) to reuse one
 * prepared run; benchmarks only. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "lora/zip_run_internal.h"
#include "nn/ops.h"
#include "ziplora.h"
#include "ziplora/synth.h"
#include "ziplora/zip_layerwise.h"

static double cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void die(const char *what) {
    fprintf(stderr, "bench_zip: %s: %s\n", what, zl_errmsg());
    exit(1);
}

static float *rnd_n(size_t n) { /* N(0, 1) by Box-Muller from a fixed LCG */
    static uint64_t st = 42;
    float *p = malloc(n * sizeof(float));
    if (!p) die("out of memory");
    for (size_t i = 0; i < n; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        double u1 = ((st >> 11) + 1.0) / 9007199254740993.0;
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        double u2 = (st >> 11) / 9007199254740992.0;
        p[i] = (float)(sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
    }
    return p;
}

static double loadavg(void) {
    double l[3] = {0};
    return getloadavg(l, 3) > 0 ? l[0] : NAN;
}

/* ------------------------------------------------------------------ tune */

typedef struct {
    int K;
    size_t n;
    float *x[2], *tg[2], *ts;
    zl_ziprun_draw_t d;
} heldout;

static void heldout_make(zl_ziprun *r, heldout *h, int K) {
    h->K = K;
    h->n = (size_t)r->B * r->C * r->h * r->w;
    if (zl_ziprun_draw(r, 0, &h->d)) die("draw"); /* the input structs (they point at the run's buffers) */
    for (int s = 0; s < 2; s++) {
        h->x[s] = malloc(h->n * K * sizeof(float));
        h->tg[s] = malloc(h->n * K * sizeof(float));
    }
    h->ts = malloc((size_t)r->B * K * sizeof(float));
    for (int k = 0; k < K; k++) {
        if (zr_noisy(r, k, ZL_ZIPRUN_HELDOUT)) die("held-out draw");
        for (int s = 0; s < 2; s++) memcpy(h->x[s] + h->n * k, r->x[s], h->n * sizeof(float));
        memcpy(h->ts + (size_t)r->B * k, r->tstep, (size_t)r->B * sizeof(float));
        if (zl_zip_targets(r->zip, &h->d.tc, &h->d.ts, h->tg[0] + h->n * k, h->tg[1] + h->n * k)) die("targets");
    }
    r->cur_draw = -1; /* the run's buffers now hold held-out inputs */
}

/* The first two terms on the held-out draws at the zip's mergers, and the similarity term. */
static void heldout_eval(zl_ziprun *r, heldout *h, double *lc, double *ls, double *sim) {
    double a[2] = {0, 0};
    zl_zip_loss L = {0};
    for (int k = 0; k < h->K; k++) {
        for (int s = 0; s < 2; s++) memcpy(r->x[s], h->x[s] + h->n * k, h->n * sizeof(float));
        memcpy(r->tstep, h->ts + (size_t)r->B * k, (size_t)r->B * sizeof(float));
        if (zl_zip_eval(r->zip, &h->d.xc, h->tg[0] + h->n * k, &h->d.xs, h->tg[1] + h->n * k, 0, &L)) die("eval");
        a[0] += L.loss_content;
        a[1] += L.loss_style;
    }
    r->cur_draw = -1;
    *lc = a[0] / h->K;
    *ls = a[1] / h->K;
    *sim = L.similarity;
}

static void fresh_zip(zl_ziprun *r) {
    zl_zip_free(r->zip);
    r->zip = NULL;
    zl_zip_opts zo;
    zl_zip_opts_default(&zo);
    zo.lr = r->p->lr;
    zo.lambda = r->p->lambda;
    if (zl_zip_create(r->unet, r->lora[0], r->lora[1], &zo, &r->zip)) die("zip");
    r->n_curve = 0;
}

typedef struct {
    const char *name;
    zl_lw_weighting wt;
    double lam;
    int steps, full;
} variant;

static int tune(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: bench_zip tune MODEL CONTENT STYLE CONTENT_PROMPT STYLE_PROMPT [K] [threads]\n");
        return 2;
    }
    int K = argc > 7 ? atoi(argv[7]) : 16;
    zl_set_threads(argc > 8 ? atoi(argv[8]) : 0); /* 0: every core */
    zl_ziprun_params p;
    zl_ziprun_params_default(&p);
    p.model = argv[2];
    p.content = argv[3];
    p.style = argv[4];
    p.content_prompt = argv[5];
    p.style_prompt = argv[6];
    p.output = "/dev/null";
    p.progress = 0;
    zl_ziprun r;
    double c0 = cpu_s(), w0 = zl_now();
    if (zr_prepare(&r, &p, 0)) die("prepare");
    fresh_zip(&r);
    r.n_both = 0;
    for (int i = 0; i < zl_zip_n_layers(r.zip); i++) r.n_both += zl_zip_layer_at(r.zip, i)->m[0] && zl_zip_layer_at(r.zip, i)->m[1];
    printf("# bench_zip tune: %s, content %s, style %s, %d held-out draws, %d px, steps %d, lr %g, lambda %g, "
           "threads %d, load average %.1f\n",
           p.model, p.content, p.style, K, r.res, p.steps, p.lr, p.lambda, zl_get_threads(), loadavg());
    printf("# prepare (references): cpu %.1f s, wall %.1f s\n", cpu_s() - c0, zl_now() - w0);
    heldout h;
    heldout_make(&r, &h, K);
    double dc, ds, dsim, fc, fs, fsim;
    heldout_eval(&r, &h, &dc, &ds, &dsim);
    printf("%-34s %11s %11s %11s %8s %9s %9s %9s\n", "variant", "content", "style", "total", "%full", "sim", "cpu_s",
           "wall_s");
    printf("%-34s %11.5g %11.5g %11.5g %8s %9.4g %9s %9s\n", "direct", dc, ds, dc + ds, "0", dsim, "-", "-");
    fflush(stdout);
    c0 = cpu_s();
    w0 = zl_now();
    if (zl_ziprun_mode_full(&r)) die("full mode");
    double fcpu = cpu_s() - c0, fwall = zl_now() - w0;
    heldout_eval(&r, &h, &fc, &fs, &fsim);
    double red = (dc + ds) - (fc + fs);
    printf("%-34s %11.5g %11.5g %11.5g %8s %9.4g %9.1f %9.1f\n", "full (100 steps)", fc, fs, fc + fs, "100", fsim, fcpu,
           fwall);
    fflush(stdout);

    /* one capture for every layerwise variant */
    fresh_zip(&r);
    zl_layerwise_opts o;
    zl_layerwise_opts_default(&o);
    o.capture_mb = 1e9;
    zl_lw *w = NULL;
    c0 = cpu_s();
    w0 = zl_now();
    if (zl_lw_begin(&r, &o, &w) || zl_lw_capture(w, 0)) die("capture");
    double ccpu = cpu_s() - c0, cwall = zl_now() - w0;
    zl_layerwise_stats st;
    zl_lw_stats(w, &st);
    printf("# layerwise capture (%d draws, %d cal draws with a full gradient): cpu %.1f s, wall %.1f s; %d groups, "
           "%.1f MB\n",
           o.draws, o.cal_draws, ccpu, cwall, st.groups, st.capture_bytes / 1048576.0);
    static const variant vs[] = {
        {"calibrated l x1 100", ZL_LW_WEIGHT_CALIBRATED, 1, 100, 0},
        {"calibrated l x1 50", ZL_LW_WEIGHT_CALIBRATED, 1, 50, 0},
        {"calibrated l x1 200", ZL_LW_WEIGHT_CALIBRATED, 1, 200, 0},
        {"calibrated l x1 400", ZL_LW_WEIGHT_CALIBRATED, 1, 400, 0},
        {"calibrated l x0 100", ZL_LW_WEIGHT_CALIBRATED, 0, 100, 0},
        {"calibrated l x0.3 100", ZL_LW_WEIGHT_CALIBRATED, 0.3, 100, 0},
        {"calibrated l x3 100", ZL_LW_WEIGHT_CALIBRATED, 3, 100, 0},
        {"relative l x1 100", ZL_LW_WEIGHT_RELATIVE, 1, 100, 0},
        {"relative l x1 300", ZL_LW_WEIGHT_RELATIVE, 1, 300, 0},
        {"relative l x0 100", ZL_LW_WEIGHT_RELATIVE, 0, 100, 0},
        {"unit l x1 100", ZL_LW_WEIGHT_RAW, 1, 100, 0},
        {"calibrated 100 + 3 full", ZL_LW_WEIGHT_CALIBRATED, 1, 100, 3},
        {"calibrated 100 + 10 full", ZL_LW_WEIGHT_CALIBRATED, 1, 100, 10},
    };
    for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++) {
        fresh_zip(&r);
        zl_layerwise_opts v = o;
        v.weighting = vs[i].wt;
        v.lambda_scale = vs[i].lam;
        v.steps = vs[i].steps;
        c0 = cpu_s();
        w0 = zl_now();
        if (zl_lw_solve(w, 0, &v)) die("solve");
        zl_zip *z = r.zip;
        for (int k = 0; k < vs[i].full; k++) {
            zl_ziprun_draw_t d;
            zl_zip_loss L;
            if (zl_ziprun_draw(&r, o.draws + k, &d) || zl_zip_eval(z, &d.xc, d.target_c, &d.xs, d.target_s, 1, &L) ||
                zl_zip_adam_step(z))
                die("full step");
        }
        double vcpu = cpu_s() - c0, vwall = zl_now() - w0;
        double lc, ls, sim;
        heldout_eval(&r, &h, &lc, &ls, &sim);
        double pct = red != 0 ? 100 * ((dc + ds) - (lc + ls)) / red : NAN;
        printf("%-34s %11.5g %11.5g %11.5g %8.1f %9.4g %9.1f %9.1f\n", vs[i].name, lc, ls, lc + ls, pct, sim,
               vcpu + ccpu, vwall + cwall);
        fflush(stdout);
    }
    zl_lw_stats(w, &st);
    printf("# mean cos(full gradient, local gradient) at m = 1 over layers: %.3f\n", st.mean_cos);
    zl_lw_free(w);
    w = NULL;
    /* the capture's size: draws and calibration draws, each from its own capture */
    static const struct { int draws, cal; zl_lw_weighting wt; } cv[] = {
        {8, 2, ZL_LW_WEIGHT_CALIBRATED}, {4, 1, ZL_LW_WEIGHT_CALIBRATED}, {2, 1, ZL_LW_WEIGHT_CALIBRATED},
        {4, 1, ZL_LW_WEIGHT_RELATIVE}, {4, 1, ZL_LW_WEIGHT_RAW}};
    for (size_t i = 0; i < sizeof cv / sizeof cv[0]; i++) {
        fresh_zip(&r);
        zl_layerwise_opts v = o;
        v.draws = cv[i].draws;
        v.cal_draws = cv[i].cal;
        v.weighting = cv[i].wt;
        v.steps = 100;
        c0 = cpu_s();
        w0 = zl_now();
        if (zl_lw_begin(&r, &v, &w) || zl_lw_capture(w, 0) || zl_lw_solve(w, 0, &v)) die("capture variant");
        double vcpu = cpu_s() - c0, vwall = zl_now() - w0;
        zl_lw_free(w);
        w = NULL;
        double lc, ls, sim;
        heldout_eval(&r, &h, &lc, &ls, &sim);
        char name[64];
        snprintf(name, sizeof name, "%s, %d draws, %d cal", cv[i].wt == ZL_LW_WEIGHT_CALIBRATED ? "calibrated"
                 : cv[i].wt == ZL_LW_WEIGHT_RELATIVE ? "relative" : "unit", cv[i].draws,
                 cv[i].wt == ZL_LW_WEIGHT_CALIBRATED ? cv[i].cal : 0);
        printf("%-34s %11.5g %11.5g %11.5g %8.1f %9.4g %9.1f %9.1f\n", name, lc, ls, lc + ls,
               red != 0 ? 100 * ((dc + ds) - (lc + ls)) / red : NAN, sim, vcpu, vwall);
    }
    printf("# cpu_s / wall_s of layerwise rows include the capture; load average now %.1f\n", loadavg());
    zl_lw_free(w);
    zr_release(&r);
    return 0;
}

/* ------------------------------------------------------------------ sdxl */

static void put(zl_st_entry *e, const char *name, const float *data, int ndim, int64_t a, int64_t b, int64_t c,
                int64_t d) {
    memset(e, 0, sizeof *e);
    e->name = name;
    e->dtype = ZL_DT_F32;
    e->ndim = ndim;
    int64_t sh[4] = {a, b, c, d};
    for (int i = 0; i < ndim; i++) e->shape[i] = sh[i];
    e->data = data;
}

static int sdxl(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: bench_zip sdxl full|layerwise RES [threads]\n");
        return 2;
    }
    const char *what = argv[2];
    int res = atoi(argv[3]), lat = res / 8;
    zl_set_threads(argc > 4 ? atoi(argv[4]) : 0); /* 0: every core */
    const char *dir = "/tmp/ziplora-bench/sdxl";
    zl_synth_opts so;
    memset(&so, 0, sizeof so);
    so.family = ZL_FAMILY_SDXL;
    so.parts = ZL_SYNTH_UNET;
    so.dtype = ZL_DT_F16;
    so.seed = 1; /* the same model bench_unet and bench_generate synthesize, so they share the folder */
    double w0 = zl_now();
    if (zl_synth_model(dir, &so, NULL)) die("synth model");
    printf("# bench_zip sdxl %s %d px: synthetic SDXL base UNet (%s) ready in %.1f s; threads %d, load average %.1f\n",
           what, res, dir, zl_now() - w0, zl_get_threads(), loadavg());
    /* two random rank-64 attention LoRAs and a fixed-inputs file (random latents, conditioning) */
    zl_unet_config cfg;
    zl_unet_config_sdxl_base(&cfg);
    char lp[2][256], fx[256];
    for (int s = 0; s < 2; s++) {
        snprintf(lp[s], sizeof lp[s], "/tmp/ziplora-bench/zip_%s_r64.safetensors", s ? "style" : "content");
        zl_synth_lora_opts lo = {.targets = ZL_SYNTH_LORA_ATTN, .rank = 64, .seed = 11 + (uint64_t)s};
        zl_lora *l = NULL;
        zl_lora_write_opts wo = {.format = ZL_FORMAT_KOHYA, .dtype = ZL_DT_F16, .unet_config = &cfg};
        if (zl_synth_lora(&cfg, &lo, &l) || zl_lora_write(lp[s], l, &wo)) die("synth lora");
        zl_lora_free(l);
    }
    snprintf(fx, sizeof fx, "/tmp/ziplora-bench/zip_inputs_%d.safetensors", res);
    {
        size_t nl = (size_t)4 * lat * lat;
        float *xc = rnd_n(nl), *xs = rnd_n(nl), *pc = rnd_n(77 * 2048), *ps = rnd_n(77 * 2048), *tc = rnd_n(1280),
              *ts = rnd_n(1280), t = 500, ti[6] = {(float)res, (float)res, 0, 0, (float)res, (float)res};
        zl_st_entry e[8];
        put(&e[0], "noisy_content", xc, 4, 1, 4, lat, lat);
        put(&e[1], "noisy_style", xs, 4, 1, 4, lat, lat);
        put(&e[2], "timestep", &t, 1, 1, 0, 0, 0);
        put(&e[3], "prompt_embeds_content", pc, 3, 1, 77, 2048, 0);
        put(&e[4], "prompt_embeds_style", ps, 3, 1, 77, 2048, 0);
        put(&e[5], "text_embeds_content", tc, 2, 1, 1280, 0, 0);
        put(&e[6], "text_embeds_style", ts, 2, 1, 1280, 0, 0);
        put(&e[7], "time_ids", ti, 2, 1, 6, 0, 0);
        if (zl_st_write(fx, e, 8, NULL, 0, NULL, 0)) die("fixed inputs");
        free(xc); free(xs); free(pc); free(ps); free(tc); free(ts);
    }
    zl_ziprun_params p;
    zl_ziprun_params_default(&p);
    p.model = dir;
    p.content = lp[0];
    p.style = lp[1];
    p.fixed_inputs = fx;
    p.output = "/dev/null";
    p.progress = 0;
    p.grad_mode = ZL_UNET_GRAD_RECOMPUTE;
    zl_ziprun r;
    if (zr_prepare(&r, &p, 0)) die("prepare");
    fresh_zip(&r);
    size_t rss0 = zl_peak_rss();
    printf("# prepared: peak RSS %.2f GB so far\n", rss0 / 1e9);
    double c0 = cpu_s();
    w0 = zl_now();
    if (!strcmp(what, "full")) {
        zl_ziprun_draw_t d;
        zl_zip_loss L;
        if (zl_ziprun_draw(&r, 0, &d)) die("draw");
        double c1 = cpu_s(), w1 = zl_now();
        printf("targets (2 forwards)                 wall %8.1f s  cpu %8.1f s\n", w1 - w0, c1 - c0);
        if (zl_zip_eval(r.zip, &d.xc, d.target_c, &d.xs, d.target_s, 1, &L) || zl_zip_adam_step(r.zip)) die("step");
        double c2 = cpu_s(), w2 = zl_now();
        printf("eval with gradients + Adam (recompute) wall %6.1f s  cpu %8.1f s\n", w2 - w1, c2 - c1);
        printf("full-mode step total                 wall %8.1f s  cpu %8.1f s  peak RSS %.2f GB\n", w2 - w0, c2 - c0,
               zl_peak_rss() / 1e9);
        printf("# paper: 560 s per pair (100 steps) on an A100, 21 GB -> 5.6 s per step\n");
    } else {
        zl_layerwise_opts o;
        zl_layerwise_opts_default(&o);
        zl_layerwise_stats st;
        if (zl_ziprun_layerwise(&r, &o, &st)) die("layerwise");
        printf("layerwise run: %d layers, %d groups, %d pass(es), %.2f GB statistics; capture %.1f s, solve %.1f s\n",
               st.layers, st.groups, st.passes, st.capture_bytes / 1e9, st.capture_s, st.solve_s);
        printf("layerwise total                      wall %8.1f s  cpu %8.1f s  peak RSS %.2f GB\n", zl_now() - w0,
               cpu_s() - c0, zl_peak_rss() / 1e9);
        printf("# paper: 560 s per pair on an A100, 21 GB\n");
    }
    printf("# load average at the end %.1f\n", loadavg());
    zr_release(&r);
    return 0;
}

/* bench_zip solve [STEPS]: one layerwise per-layer solve (zl_lw_layer_solve:
 * the quadratic's setup, then STEPS Adam steps, default 100) for two rank-64
 * linear LoRAs at SDXL's input widths, single-threaded (the solves run one
 * layer per thread). Baseline, same run: streaming the Adam loop's matrix
 * (half of nv x nv doubles, nv = 2 in) from memory once per step, a vectorised
 * summing loop over an array of that size; the ratio is solve / stream. */
static int solve_bench(int argc, char **argv) {
    const int steps = argc > 2 ? atoi(argv[2]) : 100, r = 64;
    zl_set_threads(1);
    printf("bench_zip solve: one layer, 2 rank-%d LoRAs, %d Adam steps, 1 thread\n", r, steps);
    printf("%-8s %12s %14s %8s\n", "in", "solve", "stream x steps", "ratio");
    const int widths[] = {640, 1280, 2048};
    for (int wi = 0; wi < 3; wi++) {
        const int n = widths[wi], T = 1024;
        zl_lora_layer L[2];
        for (int k = 0; k < 2; k++) {
            L[k] = (zl_lora_layer){.module = "bench", .kind = ZL_LORA_LINEAR, .rank = r, .in_features = n,
                                   .out_features = n, .kh = 1, .kw = 1, .alpha = (float)r};
            L[k].down = rnd_n((size_t)r * n);
            L[k].up = rnd_n((size_t)n * r);
            for (size_t i = 0; i < (size_t)r * n; i++) L[k].down[i] *= 0.05f, L[k].up[i] *= 0.05f;
        }
        float *X = rnd_n((size_t)T * n), *C = malloc(sizeof(float) * n * n);
        if (!C) die("out of memory");
        zl_sgemm(1, 0, n, n, T, 1.0f, X, n, X, n, 0.0f, C, n); /* second moments of T random tokens */
        float *mc = malloc(sizeof(float) * n), *ms = malloc(sizeof(float) * n);
        for (int j = 0; j < n; j++) mc[j] = ms[j] = 1.0f;
        double before, after, t0 = zl_now();
        if (zl_lw_layer_solve(&L[0], &L[1], C, C, T, T, 1, 1, 0.01, steps, 0.01, mc, ms, &before, &after))
            die("solve");
        const double ts = zl_now() - t0;
        /* the baseline: nv*nv/2 doubles read once per step */
        const size_t nh = (size_t)(2 * n) * (2 * n) / 2;
        double *a = malloc(sizeof(double) * nh);
        volatile double sink = 0;
        if (!a) die("out of memory");
        for (size_t i = 0; i < nh; i++) a[i] = (double)(i & 1023);
        t0 = zl_now();
        for (int k = 0; k < steps; k++) {
            double sacc = 0;
            #pragma omp simd reduction(+ : sacc)
            for (size_t i = 0; i < nh; i++) sacc += a[i];
            sink += sacc;
        }
        const double tb = zl_now() - t0;
        (void)sink;
        printf("%-8d %10.3f s %12.3f s %8.2f   (objective %.6g -> %.6g)\n", n, ts, tb, ts / tb, before, after);
        free(a), free(X), free(C), free(mc), free(ms);
        for (int k = 0; k < 2; k++) free(L[k].down), free(L[k].up);
    }
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && !strcmp(argv[1], "solve")) return solve_bench(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "tune")) return tune(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "sdxl")) return sdxl(argc, argv);
    fprintf(stderr, "usage: bench_zip tune ... | bench_zip sdxl full|layerwise RES [threads] | bench_zip solve [STEPS]\n");
    return 2;
}
