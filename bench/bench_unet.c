/* UNet benchmark at SDXL base size (random weights at the real shapes, stored
 * F16 and kept F16-resident: ZL_UNET_WEIGHTS_STORED). Prints, for this machine
 * and thread count:
 *  - the OpenBLAS sgemm rate at M=N=K=2048 measured in the same run (median);
 *  - seconds per forward at 64x64 and 128x128 latents, batch 1 and 2, the
 *    achieved GFLOP/s (zl_unet_flops / time) and its ratio to the sgemm rate,
 *    both to the rate at the start and "bracketed": each forward against the
 *    mean of sgemm rates measured just before and just after it, in the same
 *    process (the shared host's speed drifts by 30 % within minutes);
 *  - peak RSS of each configuration (each runs in its own forked process, so
 *    the figure is that configuration's own peak);
 *  - forward + backward (merger and input gradients, two runtime LoRAs with
 *    mergers as ZipLoRA trains them) at 64x64 batch 1: time and peak RSS;
 * next to the targets and context figures. The model is synthesized
 * into --dir on first use (about 5.1 GB) and reused afterwards.
 *
 * usage: bench_unet [--dir D] [--threads N] [--quick] [--sizes 64,128] [--batches 1,2] [--bf16]
 *                   [--reps N] [--warmup N] [--no-backward] [--backward-only]
 *                   [--grad-mode keep|recompute] [--rank R] [--f32-weights]
 *   --bf16: bfloat16 products on AMX tiles (zl_set_matmul_precision); use --warmup 2, since the UNet
 *   packs its weights for the tiles at their second use */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "nn/ops.h"
#include "ziplora.h"
#include "ziplora/flops.h"
#include "ziplora/sample.h"
#include "ziplora/synth.h"
#include "ziplora/unet.h"

typedef struct {
    const char *dir;
    int threads, reps, warmup, backward, forward, rank, f32;
    zl_unet_grad_mode grad_mode;
    int sizes[4], n_sizes, batches[4], n_batches;
} opts;

/* What a child reports back through its pipe. */
typedef struct {
    int ok;
    char err[256];
    double load_s, times[16], cpu[16];
    int n_times;
    double ref[17]; /* sgemm rate just before timed forward k (ref[k]) and just after it (ref[k + 1]) */
    double rss_loaded, rss_peak; /* bytes */
    double out_rms;
    /* backward run */
    double fwd_lora_s, fwd_tape_s, bwd_s, grad_rms, dsample_rms;
    int n_layers;
} report;

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n) {
    double t[16];
    memcpy(t, v, (size_t)n * sizeof *t);
    qsort(t, (size_t)n, sizeof *t, cmp_d);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* Process CPU time: on a shared machine, GFLOP per CPU-second is steadier than
 * per wall-second (other processes steal cores but not our CPU time). */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double sgemm_rate(int reps, double *cpu_rate) {
    const int n = 2048;
    size_t nn = (size_t)n * n;
    float *a = malloc(nn * sizeof(float)), *b = malloc(nn * sizeof(float)), *c = malloc(nn * sizeof(float));
    if (!a || !b || !c) return 0;
    zl_rng r;
    zl_rng_init(&r, 5, 0);
    zl_rng_normal(&r, 0, a, nn);
    zl_rng_normal(&r, nn, b, nn);
    zl_sgemm(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n); /* warm-up */
    double t[16], tc[16];
    for (int i = 0; i < reps; i++) {
        double t0 = zl_now(), c0 = cpu_now();
        zl_sgemm(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        t[i] = zl_now() - t0;
        tc[i] = cpu_now() - c0;
    }
    free(a);
    free(b);
    free(c);
    *cpu_rate = 2.0 * n * n * (double)n / median(tc, reps) / 1e9;
    return 2.0 * n * n * (double)n / median(t, reps) / 1e9;
}

/* Random inputs of the right shapes (SDXL: T = 77, context 2048, pooled 1280). */
typedef struct {
    float *sample, *t, *ctx, *pooled, *ids, *out;
    zl_unet_input in;
} inputs;

static int make_inputs(zl_unet *u, int B, int S, inputs *x) {
    const zl_unet_config *c = zl_unet_get_config(u);
    int T = 77, P = zl_unet_pooled_dim(u);
    size_t ns = (size_t)B * c->in_channels * S * S, nc = (size_t)B * T * c->cross_attention_dim;
    memset(x, 0, sizeof *x);
    x->sample = malloc(ns * sizeof(float));
    x->out = malloc((size_t)B * c->out_channels * S * S * sizeof(float));
    x->t = malloc((size_t)B * sizeof(float));
    x->ctx = malloc(nc * sizeof(float));
    x->pooled = malloc((size_t)B * (P ? P : 1) * sizeof(float));
    x->ids = malloc((size_t)B * 6 * sizeof(float));
    if (!x->sample || !x->out || !x->t || !x->ctx || !x->pooled || !x->ids) return ZL_ENOMEM;
    zl_rng r;
    zl_rng_init(&r, 11, 0);
    zl_rng_normal(&r, 0, x->sample, ns);
    zl_rng_normal(&r, ns, x->ctx, nc);
    zl_rng_normal(&r, ns + nc, x->pooled, (size_t)B * (P ? P : 1));
    for (int b = 0; b < B; b++) {
        x->t[b] = 500;
        float px = 8.0f * S, id[6] = {px, px, 0, 0, px, px};
        memcpy(x->ids + 6 * b, id, sizeof id);
    }
    x->in = (zl_unet_input){B, S, S, T, x->sample, x->t, x->ctx, P ? x->pooled : NULL, P ? x->ids : NULL};
    return ZL_OK;
}

static void free_inputs(inputs *x) {
    free(x->sample);
    free(x->out);
    free(x->t);
    free(x->ctx);
    free(x->pooled);
    free(x->ids);
}

static double rms(const float *v, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)v[i] * v[i];
    return sqrt(s / (double)n);
}

static int load(const opts *o, const char *model, zl_unet **u, report *rp) {
    zl_model_paths mp;
    int rc = zl_model_paths_resolve(model, &mp);
    if (rc) return rc;
    zl_unet_load_opts lo = {.weights = o->f32 ? ZL_UNET_WEIGHTS_F32 : ZL_UNET_WEIGHTS_STORED};
    double t0 = zl_now();
    rc = zl_unet_load_model(&mp, &lo, u);
    rp->load_s = zl_now() - t0;
    zl_model_paths_free(&mp);
    rp->rss_loaded = (double)zl_peak_rss();
    return rc;
}

static void child_forward(const opts *o, const char *model, int S, int B, report *rp) {
    zl_unet *u = NULL;
    inputs x;
    int rc = load(o, model, &u, rp);
    if (!rc) rc = make_inputs(u, B, S, &x);
    if (rc) {
        snprintf(rp->err, sizeof rp->err, "%s", zl_errmsg());
        return;
    }
    int warm = o->warmup >= 0 ? o->warmup : (S <= 64 ? 1 : 0);
    double ref_cpu;
    for (int i = 0; i < warm + o->reps && !rc; i++) {
        if (i == warm) rp->ref[0] = sgemm_rate(3, &ref_cpu); /* bracket every timed forward */
        double t0 = zl_now(), c0 = cpu_now();
        rc = zl_unet_forward(u, &x.in, x.out);
        double dt = zl_now() - t0, dc = cpu_now() - c0;
        fprintf(stderr, "  %dx%d b%d %s %d: %.2f s\n", S, S, B, i < warm ? "warm-up" : "forward", i < warm ? i + 1 : i - warm + 1, dt);
        if (i >= warm) {
            rp->cpu[rp->n_times] = dc;
            rp->times[rp->n_times++] = dt;
            rp->ref[rp->n_times] = sgemm_rate(3, &ref_cpu);
        }
    }
    if (rc) snprintf(rp->err, sizeof rp->err, "%s", zl_errmsg());
    else {
        rp->out_rms = rms(x.out, (size_t)B * 4 * S * S);
        rp->ok = isfinite(rp->out_rms);
        if (!rp->ok) snprintf(rp->err, sizeof rp->err, "output is not finite");
    }
    rp->rss_peak = (double)zl_peak_rss();
    free_inputs(&x);
    zl_unet_free(u);
}

/* Two runtime LoRAs with mergers, as ZipLoRA trains them: a content LoRA on the
 * attention projections and a style LoRA on attention, feed-forward, proj_in/out
 * and the resnet 3x3 convs (LoCon). Mergers are set (to ones) so the m ⊙ x path runs. */
static int attach(zl_unet *u, zl_lora *l, float **ones, int *n_ones) {
    int slot, rc = zl_unet_add_lora(u, l, 1.0f, ZL_UNET_LORA_RUNTIME, &slot);
    for (int i = 0; i < l->n && !rc; i++) {
        int n = l->layers[i].in_features;
        if (n > *n_ones) {
            free(*ones);
            if (!(*ones = malloc((size_t)n * sizeof(float)))) return ZL_ENOMEM;
            for (int j = 0; j < n; j++) (*ones)[j] = 1.0f;
            *n_ones = n;
        }
        rc = zl_unet_set_merger(u, slot, l->layers[i].module, *ones, n);
    }
    return rc;
}

static void child_backward(const opts *o, const char *model, int S, int B, report *rp) {
    zl_unet *u = NULL;
    zl_lora *lc = NULL, *ls = NULL;
    inputs x;
    float *ones = NULL, *dout = NULL, *dsample = NULL;
    int n_ones = 0;
    int rc = load(o, model, &u, rp);
    if (!rc) rc = make_inputs(u, B, S, &x);
    const zl_unet_config *c = u ? zl_unet_get_config(u) : NULL;
    zl_synth_lora_opts co = {.targets = ZL_SYNTH_LORA_ATTN, .rank = o->rank, .seed = 21};
    zl_synth_lora_opts so = {.targets = ZL_SYNTH_LORA_ATTN | ZL_SYNTH_LORA_FF_PROJ | ZL_SYNTH_LORA_CONV,
                             .rank = o->rank, .seed = 22};
    if (!rc) rc = zl_synth_lora(c, &co, &lc);
    if (!rc) rc = zl_synth_lora(c, &so, &ls);
    if (!rc) rc = attach(u, lc, &ones, &n_ones);
    if (!rc) rc = attach(u, ls, &ones, &n_ones);
    size_t n = (size_t)B * 4 * S * S;
    if (!rc && (!(dout = malloc(n * sizeof(float))) || !(dsample = malloc(n * sizeof(float))))) rc = ZL_ENOMEM;
    if (rc) {
        snprintf(rp->err, sizeof rp->err, "%s", zl_errmsg());
        goto out;
    }
    rp->n_layers = lc->n + ls->n;
    zl_rng r;
    zl_rng_init(&r, 31, 0);
    zl_rng_normal(&r, 0, dout, n);
    /* A plain forward with the branches first (warms the pages, gives the baseline). */
    double t0 = zl_now();
    rc = zl_unet_forward(u, &x.in, x.out);
    rp->fwd_lora_s = zl_now() - t0;
    fprintf(stderr, "  forward with 2 LoRAs (%d layers, rank %d): %.2f s\n", rp->n_layers, o->rank, rp->fwd_lora_s);
    zl_unet_tape *tape = NULL;
    if (!rc) {
        t0 = zl_now();
        rc = zl_unet_forward_tape(u, &x.in, o->grad_mode, x.out, &tape);
        rp->fwd_tape_s = zl_now() - t0;
        fprintf(stderr, "  forward with tape: %.2f s\n", rp->fwd_tape_s);
    }
    if (!rc) {
        t0 = zl_now();
        rc = zl_unet_backward(u, tape, dout, dsample);
        rp->bwd_s = zl_now() - t0;
        fprintf(stderr, "  backward: %.2f s\n", rp->bwd_s);
    }
    zl_unet_tape_free(tape);
    if (rc) snprintf(rp->err, sizeof rp->err, "%s", zl_errmsg());
    else {
        rp->dsample_rms = rms(dsample, n);
        rp->ok = isfinite(rp->dsample_rms);
        if (!rp->ok) snprintf(rp->err, sizeof rp->err, "input gradient is not finite");
    }
    rp->rss_peak = (double)zl_peak_rss();
out:
    free(ones);
    free(dout);
    free(dsample);
    free_inputs(&x);
    zl_unet_free(u);
    zl_lora_free(lc);
    zl_lora_free(ls);
}

/* GNU libgomp cannot fork once its thread pool exists (the child hangs in its
 * first parallel region), so the parent stays single-threaded and every
 * measurement, the sgemm reference included, runs in a forked child. */
static double sgemm_rate_forked(int reps, int threads, double *cpu_rate) {
    int fd[2];
    double r[2] = {0, 0};
    *cpu_rate = 0;
    if (pipe(fd)) return 0;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return 0;
    if (pid == 0) {
        close(fd[0]);
        zl_set_threads(threads);
        r[0] = sgemm_rate(reps, &r[1]);
        _exit(write(fd[1], r, sizeof r) == (ssize_t)sizeof r ? 0 : 1);
    }
    close(fd[1]);
    if (read(fd[0], r, sizeof r) != (ssize_t)sizeof r) r[0] = r[1] = 0;
    close(fd[0]);
    waitpid(pid, NULL, 0);
    *cpu_rate = r[1];
    return r[0];
}

/* Run fn in a forked child so its peak RSS is its own. */
static int in_child(const opts *o, const char *model, int S, int B, int bwd, report *rp) {
    int fd[2];
    memset(rp, 0, sizeof *rp);
    if (pipe(fd)) return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        close(fd[0]);
        zl_set_threads(o->threads);
        report r;
        memset(&r, 0, sizeof r);
        if (bwd) child_backward(o, model, S, B, &r);
        else child_forward(o, model, S, B, &r);
        ssize_t wr = write(fd[1], &r, sizeof r);
        _exit(wr == (ssize_t)sizeof r ? 0 : 1);
    }
    close(fd[1]);
    size_t got = 0;
    while (got < sizeof *rp) {
        ssize_t k = read(fd[0], (char *)rp + got, sizeof *rp - got);
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    if (got != sizeof *rp) {
        memset(rp, 0, sizeof *rp);
        snprintf(rp->err, sizeof rp->err, "child died (%s %d)", WIFSIGNALED(st) ? "signal" : "exit",
                 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    }
    return 0;
}

static int parse_list(const char *s, int *v, int max) {
    int n = 0;
    while (*s && n < max) {
        v[n++] = atoi(s);
        const char *c = strchr(s, ',');
        if (!c) break;
        s = c + 1;
    }
    return n;
}

static void machine_line(void) {
    char model[256] = "?", la[128] = "?";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "model name", 10)) {
                char *p = strchr(line, ':');
                if (p) snprintf(model, sizeof model, "%s", p + 2);
                model[strcspn(model, "\n")] = 0;
                break;
            }
        fclose(f);
    }
    f = fopen("/proc/loadavg", "r");
    if (f) {
        if (!fgets(la, sizeof la, f)) la[0] = 0;
        la[strcspn(la, "\n")] = 0;
        fclose(f);
    }
    time_t now = time(NULL);
    char date[64];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M", localtime(&now));
    printf("# %s | %s | %ld online CPUs | load average %s\n", date, model, sysconf(_SC_NPROCESSORS_ONLN), la);
}

int main(int argc, char **argv) {
    opts o = {.dir = "/tmp/ziplora-bench", .threads = 2, .reps = 1, .warmup = -1, .backward = 1, .forward = 1,
              .rank = 16, .grad_mode = ZL_UNET_GRAD_KEEP, .sizes = {64, 128}, .n_sizes = 2, .batches = {1, 2},
              .n_batches = 2};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--dir") && v) o.dir = argv[++i];
        else if (!strcmp(a, "--threads") && v) o.threads = atoi(argv[++i]);
        else if (!strcmp(a, "--reps") && v) o.reps = atoi(argv[++i]);
        else if (!strcmp(a, "--warmup") && v) o.warmup = atoi(argv[++i]);
        else if (!strcmp(a, "--rank") && v) o.rank = atoi(argv[++i]);
        else if (!strcmp(a, "--sizes") && v) o.n_sizes = parse_list(argv[++i], o.sizes, 4);
        else if (!strcmp(a, "--batches") && v) o.n_batches = parse_list(argv[++i], o.batches, 4);
        else if (!strcmp(a, "--grad-mode") && v) o.grad_mode = !strcmp(argv[++i], "recompute") ? ZL_UNET_GRAD_RECOMPUTE : ZL_UNET_GRAD_KEEP;
        else if (!strcmp(a, "--quick")) { o.n_sizes = 1; o.sizes[0] = 64; o.n_batches = 1; o.batches[0] = 1; }
        else if (!strcmp(a, "--no-backward")) o.backward = 0;
        else if (!strcmp(a, "--backward-only")) o.forward = 0;
        else if (!strcmp(a, "--f32-weights")) o.f32 = 1;
        else if (!strcmp(a, "--bf16")) zl_set_matmul_precision(ZL_MATMUL_BF16);
        else if (!strcmp(a, "--bf16x3")) zl_set_matmul_precision(ZL_MATMUL_BF16X3);
        else {
            fprintf(stderr, "usage: %s [--dir D] [--threads N] [--quick] [--sizes 64,128] [--batches 1,2] [--reps N] "
                            "[--warmup N] [--no-backward] [--backward-only] [--grad-mode keep|recompute] [--rank R] "
                            "[--f32-weights] [--bf16|--bf16x3]\n", argv[0]);
            return 2;
        }
    }
    if (o.reps < 1 || o.reps > 16 - 1) o.reps = 1;
    zl_set_threads(1); /* the parent only forks: see sgemm_rate_forked */

    char model[1024];
    snprintf(model, sizeof model, "%s/sdxl", o.dir);
    zl_synth_opts so = {.family = ZL_FAMILY_SDXL, .parts = ZL_SYNTH_UNET, .dtype = ZL_DT_F16, .seed = 1};
    unsigned written = 0;
    double t0 = zl_now();
    if (zl_synth_model(model, &so, &written)) {
        fprintf(stderr, "bench_unet: %s\n", zl_errmsg());
        return 1;
    }
    printf("model: %s (SDXL base UNet, random weights, F16, %s weights%s)\n", model,
           o.f32 ? "resident F32" : "F16-resident (stored dtype)", written ? "" : "; reused");
    if (written) printf("synthesized in %.1f s\n", zl_now() - t0);
    if (zl_get_matmul_precision() != ZL_MATMUL_F32)
        printf("matmul precision: %s (%s)\n", zl_get_matmul_precision() == ZL_MATMUL_BF16 ? "bf16" : "bf16x3",
               zl_bf16_units() ? "AMX-BF16 tiles" : "no AMX-BF16 here: float32");

    machine_line();
    double sgc = 0, sg = sgemm_rate_forked(5, o.threads, &sgc);
    printf("threads %d | OpenBLAS sgemm 2048^3: %.1f GFLOP/s wall, %.1f GFLOP per CPU-second (median of 5)\n\n",
           o.threads, sg, sgc);

    zl_unet_config cfg;
    zl_unet_config_sdxl_base(&cfg);
    if (o.forward) {
        printf("%-12s %9s %9s %9s %7s %9s %9s %10s %7s  %s\n", "forward", "TFLOP", "s (med)", "GFLOP/s", "ratio", "cpu ratio",
               "bracketed", "peak RSS", "load s", "target");
        for (int si = 0; si < o.n_sizes; si++)
            for (int bi = 0; bi < o.n_batches; bi++) {
                int S = o.sizes[si], B = o.batches[bi];
                zl_flops fl;
                if (zl_unet_flops(&cfg, B, S, S, 77, &fl)) continue;
                report r;
                in_child(&o, model, S, B, 0, &r);
                char tgt[96] = "";
                if (S == 64 && B == 1) snprintf(tgt, sizeof tgt, "ratio >= 0.95, RSS <= 6 GB (PyTorch 17.4 s, 0.91x)");
                else if (S == 64 && B == 2) snprintf(tgt, sizeof tgt, "(PyTorch 28.5 s, 111 GFLOP/s)");
                else if (S == 128 && B == 1) snprintf(tgt, sizeof tgt, "ratio >= 1.15 (PyTorch 59.4 s, 1.14x)");
                else if (S == 128 && B == 2) snprintf(tgt, sizeof tgt, "RSS <= 7 GB");
                char lab[32];
                snprintf(lab, sizeof lab, "%dx%d b%d", S, S, B);
                if (!r.ok) {
                    printf("%-12s %9.3f  FAILED: %s\n", lab, fl.total / 1e12, r.err);
                    continue;
                }
                double t = median(r.times, r.n_times), gf = fl.total / t / 1e9;
                double gfc = fl.total / median(r.cpu, r.n_times) / 1e9;
                /* bracketed: each forward against the mean of the sgemm rates measured just before and just
                 * after it (this host's speed drifts within minutes), median over the timed forwards */
                double br[16];
                for (int k = 0; k < r.n_times; k++) br[k] = fl.total / r.times[k] / 1e9 / (0.5 * (r.ref[k] + r.ref[k + 1]));
                printf("%-12s %9.3f %9.2f %9.1f %7.3f %9.3f %9.3f %7.2f GB %7.1f  %s\n", lab, fl.total / 1e12, t, gf, gf / sg,
                       gfc / sgc, median(br, r.n_times), r.rss_peak / 1e9, r.load_s, tgt);
                printf("%12s times:", "");
                for (int k = 0; k < r.n_times; k++) printf(" %.2f", r.times[k]);
                printf(" | sgemm around them:");
                for (int k = 0; k <= r.n_times; k++) printf(" %.1f", r.ref[k]);
                printf(" GFLOP/s\n");
                fflush(stdout);
            }
    }
    if (o.backward) {
        printf("\nforward+backward, 64x64 b1, 2 runtime LoRAs (rank %d) with mergers, grad mode %s:\n", o.rank,
               o.grad_mode == ZL_UNET_GRAD_KEEP ? "keep" : "recompute");
        {
            report r;
            in_child(&o, model, 64, 1, 1, &r);
            if (!r.ok) printf("  FAILED: %s\n", r.err);
            else {
                double fb = r.fwd_tape_s + r.bwd_s;
                printf("  forward (LoRAs, no tape) %.2f s | forward with tape %.2f s | backward %.2f s | fwd+bwd %.2f s\n",
                       r.fwd_lora_s, r.fwd_tape_s, r.bwd_s, fb);
                printf("  backward / forward %.2f (target <= 3) | fwd+bwd / forward %.2f | peak RSS %.2f GB (target <= 16 GB)\n",
                       r.bwd_s / r.fwd_lora_s, fb / r.fwd_lora_s, r.rss_peak / 1e9);
                printf("  %d LoRA layers; |dL/dsample| rms %.3g\n", r.n_layers, r.dsample_rms);
            }
        }
    }
    machine_line();
    printf("\ncontext (issue 3, 2 threads): OpenBLAS sgemm ~100 GFLOP/s; PyTorch 1.13 64x64 17.4 s (0.91x), b2 28.5 s, "
           "128x128 59.4 s (1.14x), RSS 10.1-11.6 GB; stable-diffusion.cpp 64x64 26-28 s (~0.6x), 128x128 111-127 s\n");
    return 0;
}
