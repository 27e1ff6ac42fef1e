/* UNet backward benchmark: time and peak RSS of a forward, and of a taped
 * forward + backward (input and merger gradients) in one memory mode, for a
 * fixture model with its content and style LoRAs as runtime branches at a
 * chosen latent size. Peak RSS is per process, so run once per mode:
 *   bench_unet_grad [model_dir] [latent] [keep|recompute] [threads] [batch]
 * (defaults: tests/data/mini-sdxl, 64, recompute, 0 = all cores, 1). The
 * backward's cost is reported as a ratio to the plain forward of the same run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ziplora.h"

static uint64_t st = 88172645463325252ull;
static float frand(void) {
    st ^= st << 13;
    st ^= st >> 7;
    st ^= st << 17;
    return (float)((double)(st >> 11) / 9007199254740992.0 * 2 - 1);
}

static float *rnd(size_t n) {
    float *p = malloc(n * sizeof(float));
    if (!p) { fprintf(stderr, "out of memory\n"); exit(1); }
    for (size_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

static zl_lora *lora(const char *dir, const char *which, const zl_unet *u) {
    char p[1024], ac[1024];
    snprintf(p, sizeof p, "%s/loras/%s.peft.safetensors", dir, which);
    snprintf(ac, sizeof ac, "%s/loras/%s.adapter_config.json", dir, which);
    zl_lora_load_opts o = {.adapter_config = ac, .unet_config = zl_unet_get_config(u)};
    zl_lora *l = NULL;
    if (zl_lora_load(p, &o, &l)) { fprintf(stderr, "%s\n", zl_errmsg()); exit(1); }
    return l;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "tests/data/mini-sdxl";
    int lat = argc > 2 ? atoi(argv[2]) : 64;
    zl_unet_grad_mode mode = argc > 3 && !strcmp(argv[3], "keep") ? ZL_UNET_GRAD_KEEP : ZL_UNET_GRAD_RECOMPUTE;
    if (argc > 4) zl_set_threads(atoi(argv[4]));
    int B = argc > 5 ? atoi(argv[5]) : 1;
    char w[1024], c[1024];
    snprintf(w, sizeof w, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    snprintf(c, sizeof c, "%s/unet/config.json", dir);
    zl_unet_load_opts o = {.config_path = c};
    zl_unet *u = NULL;
    if (zl_unet_load(w, &o, &u)) { fprintf(stderr, "%s\n", zl_errmsg()); return 1; }
    const zl_unet_config *cf = zl_unet_get_config(u);
    zl_lora *lc = lora(dir, "content", u), *ls = lora(dir, "style", u);
    if (zl_unet_add_lora(u, lc, 1.0f, ZL_UNET_LORA_RUNTIME, NULL) ||
        zl_unet_add_lora(u, ls, 1.0f, ZL_UNET_LORA_RUNTIME, NULL)) {
        fprintf(stderr, "%s\n", zl_errmsg());
        return 1;
    }
    int T = 77, pooled = zl_unet_pooled_dim(u);
    size_t nx = (size_t)B * cf->in_channels * lat * lat, ny = (size_t)B * cf->out_channels * lat * lat;
    float *x = rnd(nx), *ctx = rnd((size_t)B * T * cf->cross_attention_dim), *te = pooled ? rnd((size_t)B * pooled) : NULL;
    float ts[16], tid[16 * 6];
    for (int b = 0; b < B && b < 16; b++) {
        ts[b] = 500;
        float v[6] = {(float)lat * 8, (float)lat * 8, 0, 0, (float)lat * 8, (float)lat * 8};
        memcpy(tid + 6 * b, v, sizeof v);
    }
    zl_unet_input in = {B, lat, lat, T, x, ts, ctx, te, pooled ? tid : NULL};
    float *out = malloc(ny * sizeof(float)), *dx = malloc(nx * sizeof(float)), *dy = rnd(ny);
    size_t rss0 = zl_peak_rss();
    double t0 = zl_now();
    if (zl_unet_forward(u, &in, out)) { fprintf(stderr, "%s\n", zl_errmsg()); return 1; }
    double t_fwd = zl_now() - t0;
    size_t rss_fwd = zl_peak_rss();
    zl_unet_tape *tp = NULL;
    t0 = zl_now();
    if (zl_unet_forward_tape(u, &in, mode, out, &tp)) { fprintf(stderr, "%s\n", zl_errmsg()); return 1; }
    double t_tf = zl_now() - t0;
    t0 = zl_now();
    if (zl_unet_backward(u, tp, dy, dx)) { fprintf(stderr, "%s\n", zl_errmsg()); return 1; }
    double t_bw = zl_now() - t0;
    zl_unet_tape_free(tp);
    size_t rss_bw = zl_peak_rss();
    printf("model %s, latent %dx%d, batch %d, mode %s, threads %d\n", dir, lat, lat, B,
           mode == ZL_UNET_GRAD_KEEP ? "keep" : "recompute", zl_get_threads());
    printf("forward            %8.3f s   peak RSS %8.1f MB (before: %.1f MB)\n", t_fwd, rss_fwd / 1048576.0,
           rss0 / 1048576.0);
    printf("taped forward      %8.3f s   (%.2fx forward)\n", t_tf, t_tf / t_fwd);
    printf("backward           %8.3f s   (%.2fx forward)\n", t_bw, t_bw / t_fwd);
    printf("forward + backward %8.3f s   (%.2fx forward)   peak RSS %8.1f MB\n", t_tf + t_bw, (t_tf + t_bw) / t_fwd,
           rss_bw / 1048576.0);
    free(x); free(ctx); free(te); free(out); free(dx); free(dy);
    zl_unet_free(u);
    zl_lora_free(lc);
    zl_lora_free(ls);
    return 0;
}
