/* VAE benchmark at SDXL's real shapes with random weights: decode of a 64x64
 * latent (512 px, untiled) and a 128x128 latent (1024 px, tiled by default),
 * optionally 1024 px untiled, and an encode at 512 px. Prints seconds, GFLOP/s
 * against an sgemm rate measured in the same run, and the peak RSS after each
 * stage (peak RSS only grows, so stages run from small to large).
 *
 * usage: bench_vae [--threads N] [--untiled-1024] [--skip-1024] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nn/ops.h"
#include "ziplora/safetensors.h"
#include "ziplora/sample.h"
#include "ziplora/vae.h"

typedef struct {
    zl_st_entry *e;
    int n, cap;
    uint64_t counter;
} builder;

static void add_cb(void *ctx, const char *name, int nd, const int64_t *shape) {
    builder *b = ctx;
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 256;
        b->e = realloc(b->e, sizeof *b->e * b->cap);
    }
    zl_st_entry *e = &b->e[b->n++];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    e->dtype = ZL_DT_F16;
    e->ndim = nd;
    int64_t n = 1;
    for (int i = 0; i < nd; i++) { e->shape[i] = shape[i]; n *= shape[i]; }
    float *f = malloc(sizeof(float) * n);
    const char *last = strrchr(name, '.');
    int is_bias = last && !strcmp(last, ".bias");
    int is_norm = strstr(name, "norm") != NULL;
    if (is_norm && !is_bias) {
        for (int64_t i = 0; i < n; i++) f[i] = 1.0f;
    } else if (is_bias) {
        memset(f, 0, sizeof(float) * n);
    } else {
        /* He-style scale keeps activations O(1) through the residual stacks */
        int64_t fan_in = n / shape[0];
        zl_rng r;
        zl_rng_init(&r, 1, b->counter++);
        zl_rng_normal(&r, 0, f, (size_t)n);
        float sc = 1.0f / sqrtf((float)fan_in);
        for (int64_t i = 0; i < n; i++) f[i] *= sc;
    }
    uint16_t *h = malloc(sizeof(uint16_t) * n);
    zl_convert_from_f32(ZL_DT_F16, f, h, (size_t)n);
    free(f);
    e->data = h;
}

static double sgemm_gflops(void) {
    const int M = 512, N = 4096, K = 1152;
    float *A = calloc((size_t)M * K, 4), *B = calloc((size_t)K * N, 4), *C = calloc((size_t)M * N, 4);
    for (int i = 0; i < M * K; i++) A[i] = (float)(i % 7) * 0.1f;
    for (int i = 0; i < K * N; i++) B[i] = (float)(i % 5) * 0.1f;
    zl_sgemm(0, 0, M, N, K, 1, A, K, B, N, 0, C, N);
    double t0 = zl_now();
    int reps = 5;
    for (int r = 0; r < reps; r++) zl_sgemm(0, 0, M, N, K, 1, A, K, B, N, 0, C, N);
    double dt = zl_now() - t0;
    free(A); free(B); free(C);
    return 2.0 * M * N * K * reps / dt / 1e9;
}

/* Multiply-adds of an untiled decode of an h x w latent (convs and attention, x2 for FLOPs). */
static double decode_flops(const zl_vae_config *c, int h, int w) {
    double f = 0;
    int L = c->n_levels, top = c->block_out_channels[L - 1];
    double hw = (double)h * w;
    f += hw * c->latent_channels * c->latent_channels + hw * top * c->latent_channels * 9;
    double res = 2 * hw * top * top * 9; /* one resnet of top channels */
    f += 2 * res + hw * 4 * top * top + 2 * hw * hw * top;
    int prev = top;
    for (int i = 0; i < L; i++) {
        int oc = c->block_out_channels[L - 1 - i];
        for (int j = 0; j <= c->layers_per_block; j++) {
            int ci = j ? oc : prev;
            f += hw * oc * ci * 9 + hw * oc * oc * 9 + (ci != oc ? hw * oc * ci : 0);
        }
        prev = oc;
        if (i < L - 1) { hw *= 4; f += hw * oc * oc * 9; }
    }
    f += hw * c->out_channels * c->block_out_channels[0] * 9;
    return 2 * f;
}

int main(int argc, char **argv) {
    int untiled_1024 = 0, skip_1024 = 0;
    setvbuf(stdout, NULL, _IOLBF, 0); /* show each stage as it finishes, even into a file */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) zl_set_threads(atoi(argv[++i]));
        else if (!strcmp(argv[i], "--untiled-1024")) untiled_1024 = 1;
        else if (!strcmp(argv[i], "--skip-1024")) skip_1024 = 1;
    }
    zl_vae_config cfg;
    zl_vae_config_standard(&cfg, ZL_FAMILY_SDXL);
    builder b = {0};
    zl_vae_list_tensors(&cfg, 0, add_cb, &b);
    char path[] = "/tmp/bench_vae_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) { perror("mkstemp"); return 1; }
    close(fd);
    if (zl_st_write(path, b.e, b.n, NULL, 0, NULL, 0)) { fprintf(stderr, "%s\n", zl_errmsg()); return 1; }
    for (int i = 0; i < b.n; i++) { free((void *)b.e[i].name); free((void *)b.e[i].data); }
    free(b.e);
    zl_vae *v;
    zl_vae_load_opts o = {.config = &cfg};
    if (zl_vae_load(path, &o, &v)) { fprintf(stderr, "%s\n", zl_errmsg()); return 1; }
    unlink(path); /* the mapping stays valid */
    double g = sgemm_gflops();
    printf("SDXL-shaped VAE (random weights), %d threads; sgemm %.1f GFLOP/s\n", zl_get_threads(), g);
    printf("%-28s %9s %9s %7s %12s\n", "stage", "seconds", "GFLOP/s", "ratio", "peak RSS MB");
    int sizes[3][3] = {{64, 64, ZL_VAE_TILE_OFF}, {128, 128, ZL_VAE_TILE_AUTO}, {128, 128, ZL_VAE_TILE_OFF}};
    /* encode 512 px first (smallest footprint) */
    {
        int H = 512, W = 512;
        float *img = malloc(sizeof(float) * 3 * H * W), *m = malloc(sizeof(float) * 4 * 64 * 64), *l = malloc(sizeof(float) * 4 * 64 * 64);
        zl_rng r;
        zl_rng_init(&r, 2, 0);
        zl_rng_uniform(&r, 0, img, (size_t)3 * H * W);
        double t0 = zl_now();
        int rc = zl_vae_encode(v, img, 1, H, W, m, l);
        double dt = zl_now() - t0;
        printf("%-28s %9.2f %9s %7s %12.0f%s\n", "encode 512x512", dt, "-", "-", zl_peak_rss() / 1048576.0, rc ? " FAILED" : "");
        free(img); free(m); free(l);
    }
    for (int s = 0; s < 3; s++) {
        int h = sizes[s][0], w = sizes[s][1];
        if (h == 128 && skip_1024) continue;
        if (s == 2 && !untiled_1024) continue;
        zl_vae_set_tiling(v, (zl_vae_tile_mode)sizes[s][2], 80, 16);
        float *z = malloc(sizeof(float) * 4 * h * w), *img = malloc(sizeof(float) * 3 * 64 * h * w);
        zl_rng r;
        zl_rng_init(&r, 3, 0);
        zl_rng_normal(&r, 0, z, (size_t)4 * h * w);
        double t0 = zl_now();
        int rc = zl_vae_decode(v, z, 1, h, w, img);
        double dt = zl_now() - t0;
        double fl = decode_flops(&cfg, h, w);
        int tiled = sizes[s][2] == ZL_VAE_TILE_AUTO && (h > 80 || w > 80);
        char label[64];
        snprintf(label, sizeof label, "decode %dx%d %s", h * 8, w * 8, tiled ? "(tiled 80/16)" : "(untiled)");
        /* GFLOP/s counts the untiled work; tiling recomputes overlaps, so it is a per-image rate */
        printf("%-28s %9.2f %9.1f %7.2f %12.0f%s\n", label, dt, fl / dt / 1e9, fl / dt / 1e9 / g,
               zl_peak_rss() / 1048576.0, rc ? " FAILED" : "");
        if (rc) fprintf(stderr, "%s\n", zl_errmsg());
        free(z); free(img);
    }
    zl_vae_free(v);
    return 0;
}
