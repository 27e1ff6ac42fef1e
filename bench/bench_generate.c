/* Benchmark of `generate` at SDXL base size with random weights at the real
 * shapes (a synthetic diffusers folder, include/ziplora/synth.h): for each
 * image size, in its own forked process so that its peak RSS is its own, the
 * pipeline as `ziplora generate` runs it:
 *  - open (map) the model, encode a prompt and a negative prompt (CLIP-L +
 *    bigG), release the text encoders;
 *  - ONE Euler step with CFG (one batch-2 UNet forward), release the UNet;
 *  - VAE decode (tiled above 640 px, as by default).
 * It prints seconds for each, the step's GFLOP/s (zl_unet_flops of the batch-2
 * forward / time) and its ratio to the OpenBLAS sgemm 2048^3 rate measured in
 * the same run (also per CPU-second, steadier on a shared machine, and
 * "bracketed": against sgemm rates measured in the child just before and just
 * after the steps), and the peak RSS.
 *
 * usage: bench_generate [--dir D] [--threads N] [--sizes 512,1024] [--steps N] [--warmup-steps N] [--bf16|--bf16x3]
 *   --warmup-steps N: sample N steps first, untimed (with --bf16 the UNet packs its weights at their
 *   second use, so the timed steps are then the steady state); --bf16: bfloat16 products (AMX);
 *   --bf16x3: split-bfloat16 products, three per product (AMX; the `generate` default there) */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ziplora/flops.h"
#include "ziplora/pipeline.h"
#include "ziplora/progress.h"
#include "ziplora/synth.h"

static int g_threads = 2; /* threads of the measuring children */

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* OpenBLAS's own sgemm at 2048^3 with `threads` threads: median wall-clock and
 * median CPU-time rates of 5 runs after a warm-up. The CPU-time rate (FLOP per
 * CPU-second of this process) is the steadier baseline on a shared machine. */
static void sgemm_rates(int threads, double *wall, double *cpu) {
    const int n = 2048, reps = 5;
    size_t nn = (size_t)n * n;
    float *a = malloc(nn * sizeof(float)), *b = malloc(nn * sizeof(float)), *c = malloc(nn * sizeof(float));
    *wall = *cpu = 0;
    if (!a || !b || !c) { free(a); free(b); free(c); return; }
    for (size_t i = 0; i < nn; i++) { a[i] = (float)(i % 1000) * 1e-3f - 0.5f; b[i] = (float)(i % 997) * 1e-3f - 0.5f; }
    openblas_set_num_threads(threads);
    double tw[reps], tc[reps];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    for (int r = 0; r < reps; r++) {
        double w0 = zl_now(), c0 = cpu_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        tw[r] = zl_now() - w0;
        tc[r] = cpu_now() - c0;
    }
    openblas_set_num_threads(1); /* the library threads with OpenMP around single-threaded BLAS calls */
    for (int i = 1; i < reps; i++)
        for (int j = i; j > 0; j--) {
            if (tw[j - 1] > tw[j]) { double x = tw[j]; tw[j] = tw[j - 1]; tw[j - 1] = x; }
            if (tc[j - 1] > tc[j]) { double x = tc[j]; tc[j] = tc[j - 1]; tc[j - 1] = x; }
        }
    double f = 2.0 * n * (double)n * n / 1e9;
    *wall = f / tw[reps / 2];
    *cpu = f / tc[reps / 2];
    free(a); free(b); free(c);
}

typedef struct {
    double step_cpu_s, ref_before, ref_after; /* sgemm rate just before and just after the steps */
    double open_s, text_s, step_s, decode_s, gflop, rss_text, rss_step, rss_end;
    int ok;
    char err[512];
} report;

/* GNU libgomp cannot fork once its thread pool exists (the child hangs in its
 * first parallel region), so the parent stays single-threaded and the sgemm
 * reference, like every measurement, runs in a forked child. */
static void sgemm_rates_forked(int threads, double *wall, double *cpu) {
    int fd[2];
    double r[2] = {0, 0};
    *wall = *cpu = 0;
    if (pipe(fd)) return;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return;
    if (pid == 0) {
        close(fd[0]);
        g_threads = threads;
    zl_set_threads(1); /* the parent only forks: see sgemm_rates_forked */
        sgemm_rates(threads, &r[0], &r[1]);
        _exit(write(fd[1], r, sizeof r) == (ssize_t)sizeof r ? 0 : 1);
    }
    close(fd[1]);
    if (read(fd[0], r, sizeof r) != (ssize_t)sizeof r) r[0] = r[1] = 0;
    close(fd[0]);
    waitpid(pid, NULL, 0);
    *wall = r[0];
    *cpu = r[1];
}

static int g_warmup_steps;

static void child(const char *model, int size, int steps, report *r) {
    zl_pipeline *p = NULL;
    zl_cond c = {0};
    float *lat = NULL;
    zl_image im = {0};
    double t0 = zl_now();
    if (zl_pipeline_open(model, NULL, &p)) goto fail;
    r->open_s = zl_now() - t0;
    t0 = zl_now();
    if (zl_pipeline_encode(p, "a photo of sks dog in zwx style, watercolor", "blurry, low quality", &c)) goto fail;
    r->text_s = zl_now() - t0;
    r->rss_text = (double)zl_peak_rss();
    zl_pipeline_release(p, ZL_PIPE_TEXT);
    const int s = zl_pipeline_vae_scale(p), h = size / s, w = size / s;
    zl_flops fl;
    if (zl_unet_flops(zl_pipeline_unet_config(p), 2, h, w, 77, &fl)) goto fail;
    r->gflop = fl.total / 1e9;
    lat = malloc(sizeof(float) * 4 * (size_t)h * w); // [4, h, w]
    zl_gen_params g = {.width = size, .height = size, .steps = steps, .cfg = 5.0f, .sampler = ZL_SAMPLER_EULER,
                       .seed = 1};
    if (g_warmup_steps > 0) { /* e.g. bf16: the UNet packs its weights at their second use */
        zl_gen_params gw = g;
        gw.steps = g_warmup_steps;
        zl_set_threads(g_threads);
        if (!lat || zl_pipeline_sample(p, &c, &gw, lat)) goto fail;
    }
    double ref_cpu;
    sgemm_rates(g_threads, &r->ref_before, &ref_cpu);
    zl_set_threads(g_threads); /* OpenBLAS's thread setting also resets OpenMP's */
    t0 = zl_now();
    double c0 = cpu_now();
    if (!lat || zl_pipeline_sample(p, &c, &g, lat)) goto fail;
    r->step_s = (zl_now() - t0) / steps;
    r->step_cpu_s = (cpu_now() - c0) / steps;
    r->rss_step = (double)zl_peak_rss();
    sgemm_rates(g_threads, &r->ref_after, &ref_cpu);
    zl_set_threads(g_threads);
    zl_pipeline_release(p, ZL_PIPE_UNET);
    t0 = zl_now();
    if (zl_pipeline_decode(p, lat, h, w, NULL, &im)) goto fail;
    r->decode_s = zl_now() - t0;
    r->rss_end = (double)zl_peak_rss();
    r->ok = 1;
    goto done;
fail:
    snprintf(r->err, sizeof r->err, "%s", zl_errmsg());
done:
    zl_image_free(&im);
    free(lat);
    zl_cond_free(&c);
    zl_pipeline_free(p);
}

static int run_forked(const char *model, int size, int steps, report *rp) {
    int fd[2];
    memset(rp, 0, sizeof *rp);
    if (pipe(fd)) return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        close(fd[0]);
        zl_set_threads(g_threads);
        report r;
        memset(&r, 0, sizeof r);
        child(model, size, steps, &r);
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

/* Read a file once so the first forward measures compute, not the disk. */
static void warm_page_cache(const char *path) {
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) return;
    static char buf[1 << 20];
    while (fread(buf, 1, sizeof buf, f) == sizeof buf) {}
    fclose(f);
}

int main(int argc, char **argv) {
    const char *dir = "/tmp/ziplora-bench";
    int threads = 2, steps = 1, sizes[4] = {512, 1024}, n_sizes = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--dir") && v) dir = argv[++i];
        else if (!strcmp(a, "--threads") && v) threads = atoi(argv[++i]);
        else if (!strcmp(a, "--steps") && v) steps = atoi(argv[++i]);
        else if (!strcmp(a, "--bf16")) zl_set_matmul_precision(ZL_MATMUL_BF16);
        else if (!strcmp(a, "--bf16x3")) zl_set_matmul_precision(ZL_MATMUL_BF16X3);
        else if (!strcmp(a, "--warmup-steps") && v) g_warmup_steps = atoi(argv[++i]);
        else if (!strcmp(a, "--sizes") && v) {
            n_sizes = 0;
            for (const char *s = argv[++i]; *s && n_sizes < 4;) {
                sizes[n_sizes++] = atoi(s);
                const char *c = strchr(s, ',');
                if (!c) break;
                s = c + 1;
            }
        } else {
            fprintf(stderr, "usage: %s [--dir D] [--threads N] [--sizes 512,1024] [--steps N] [--warmup-steps N] [--bf16|--bf16x3]\n", argv[0]);
            return 2;
        }
    }
    if (steps < 1) steps = 1;
    g_threads = threads;
    zl_set_threads(1); /* the parent only forks: see sgemm_rates_forked */
    zl_set_verbosity(-1);

    char cpu[256] = "?", la[128] = "?", date[64];
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
                snprintf(cpu, sizeof cpu, "%s", strchr(line, ':') + 2);
                cpu[strcspn(cpu, "\n")] = 0;
                break;
            }
        fclose(f);
    }
    if ((f = fopen("/proc/loadavg", "r"))) {
        if (!fgets(la, sizeof la, f)) la[0] = 0;
        la[strcspn(la, "\n")] = 0;
        fclose(f);
    }
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M", localtime(&now));
    printf("# %s | %s | %ld online CPUs | load average %s | threads %d\n", date, cpu, sysconf(_SC_NPROCESSORS_ONLN), la,
           threads);

    char model[1024];
    snprintf(model, sizeof model, "%s/sdxl", dir);
    zl_synth_opts so = {.family = ZL_FAMILY_SDXL, .parts = ZL_SYNTH_ALL, .dtype = ZL_DT_F16, .seed = 1};
    unsigned written = 0;
    double t0 = zl_now();
    if (zl_synth_model(model, &so, &written)) {
        fprintf(stderr, "bench_generate: %s\n", zl_errmsg());
        return 1;
    }
    printf("model: %s (SDXL base shapes, random F16 weights%s)\n", model, written ? "" : ", reused");
    if (zl_get_matmul_precision() != ZL_MATMUL_F32)
        printf("matmul precision: %s (%s)\n", zl_get_matmul_precision() == ZL_MATMUL_BF16 ? "bf16" : "bf16x3",
               zl_bf16_units() ? "AMX-BF16 tiles" : "no AMX-BF16 here: float32");
    if (written) printf("synthesized in %.1f s\n", zl_now() - t0);
    zl_model_paths mp;
    if (!zl_model_paths_resolve(model, &mp)) {
        warm_page_cache(mp.unet_weights);
        warm_page_cache(mp.te1_weights);
        warm_page_cache(mp.te2_weights);
        warm_page_cache(mp.vae_weights);
        zl_model_paths_free(&mp);
    }
    double sg, sgc;
    sgemm_rates_forked(threads, &sg, &sgc);
    printf("OpenBLAS sgemm 2048^3: %.1f GFLOP/s wall, %.1f GFLOP per CPU-second (medians of 5)\n\n", sg, sgc);
    printf("%-9s %7s %8s %10s %9s %8s %7s %7s %9s %9s %11s %11s %11s\n", "size", "open s", "text s", "CFG step s", "GFLOP",
           "GFLOP/s", "/sgemm", "cpu", "bracketed", "decode s", "RSS text GB", "RSS step GB", "peak RSS GB");
    for (int i = 0; i < n_sizes; i++) {
        report r;
        if (run_forked(model, sizes[i], steps, &r)) {
            perror("fork");
            return 1;
        }
        char label[32];
        snprintf(label, sizeof label, "%dx%d", sizes[i], sizes[i]);
        if (!r.ok) {
            printf("%-9s FAILED: %s\n", label, r.err);
            continue;
        }
        double rate = r.gflop / r.step_s, cpu_ratio = r.gflop / r.step_cpu_s / sgc;
        printf("%-9s %7.2f %8.2f %10.2f %9.0f %8.1f %6.2fx %6.2fx %8.2fx %9.2f %11.2f %11.2f %11.2f\n", label, r.open_s,
               r.text_s, r.step_s, r.gflop, rate, rate / sg, cpu_ratio, rate / (0.5 * (r.ref_before + r.ref_after)),
               r.decode_s, r.rss_text / 1e9, r.rss_step / 1e9, r.rss_end / 1e9);
        printf("%-9s sgemm just before / after the steps: %.1f / %.1f GFLOP/s\n", "", r.ref_before, r.ref_after);
    }
    printf("\n/sgemm = wall-clock GFLOP/s ratio; cpu = the same ratio per CPU-second of each process (steadier when\n"
           "other processes share the cores); bracketed = against the mean of the sgemm rates measured in the same\n"
           "process just before and just after the steps (this host's speed drifts by 30%% within minutes).\n");
    printf("CFG step = one Euler step, batch-2 [uncond, cond] UNet forward (%d step%s averaged); text = prompt +\n"
           "negative through CLIP-L and bigG; decode = VAE of one latent (tiled above 80 latent cells).\n"
           "context (issue 4, 2 threads): stable-diffusion.cpp 51-58 s per CFG step at 512, 221-264 s at 1024, peak 7.2 GB;\n"
           "diffusers/PyTorch CPU 28.5 s per batch-2 forward at 512 = 1.11x the sgemm rate.\n",
           steps, steps == 1 ? "" : "s");
    return 0;
}
