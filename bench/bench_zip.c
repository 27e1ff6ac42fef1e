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
    if (argc > 8) zl_set_threads(atoi(argv[8]));
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
    printf("# cpu_s / wall_s of layerwise rows include the capture; load average now %.1f\n", loadavg());
    zl_lw_free(w);
    zr_release(&r);
    return 0;
}

/* ------------------------------------------------------------------ sdxl */

static int sdxl(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "bench_zip sdxl: not written yet\n");
    return 2;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && !strcmp(argv[1], "tune")) return tune(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "sdxl")) return sdxl(argc, argv);
    fprintf(stderr, "usage: bench_zip tune ... | bench_zip sdxl full|layerwise RES [threads]\n");
    return 2;
}
