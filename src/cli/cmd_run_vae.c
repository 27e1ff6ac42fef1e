/* `ziplora run vae-encode` and `ziplora run vae-decode`: the VAE on tensors
 * from a safetensors file, written to another. Names follow the fixtures'
 * vae_io.safetensors (image -> latent_mean, latent_logvar; z -> decoded), and,
 * as there, no scaling factor is applied. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "ziplora/vae.h"

static void usage(FILE *f, int enc) {
    fprintf(f,
            "usage: ziplora run %s --model M --in IN.safetensors -o OUT.safetensors [options]\n\n"
            "%s\n"
            "No scaling factor is applied (multiply latents by it after encoding, divide before decoding).\n\n"
            "options:\n"
            "  --model M            diffusers model folder, single-file checkpoint or standalone VAE file\n"
            "  --vae-config JSON    diffusers vae/config.json (for a non-standard single file)\n"
            "%s"
            "  --precision P        auto (default: bf16x3 with AMX-BF16, else f32), f32, bf16x3 or bf16\n"
            "                       (see generate --help)\n"
            "  --in FILE, -o FILE   input and output tensors\n"
            "  -q, -v, --threads N  quiet, verbose, thread count\n",
            enc ? "vae-encode" : "vae-decode",
            enc ? "Encodes IN's image [B,3,H,W] (values in [-1,1]) into OUT's latent_mean and latent_logvar\n"
                  "[B,4,H/8,W/8] (F32)."
                : "Decodes IN's z [B,4,h,w] into OUT's decoded [B,3,8h,8w] (F32, not clamped).",
            enc ? "" : "  --tile N             decode in tiles of N latent cells (default: 80 for latents over 80)\n"
                       "  --tile-overlap N     overlap between tiles in latent cells (default 16)\n"
                       "  --no-tile            never tile (exact, more memory)\n");
}

static int run_vae(int argc, char **argv, int enc) {
    const char *cmd = enc ? "run vae-encode" : "run vae-decode";
    const char *model = NULL, *in_path = NULL, *out_path = NULL, *cfg_path = NULL;
    long tile = 80, overlap = 16;
    zl_vae_tile_mode mode = ZL_VAE_TILE_AUTO;
    int prec = ZL_CLI_PREC_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int c = zl_cli_common(cmd, argc, argv, &i);
        if (!c) c = zl_cli_precision_flag(cmd, argc, argv, &i, &prec);
        if (c < 0) return ZL_EXIT_USAGE;
        if (c) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout, enc); return ZL_EXIT_OK; }
        if (!enc && !strcmp(a, "--no-tile")) { mode = ZL_VAE_TILE_OFF; continue; }
        if (!enc && (!strcmp(a, "--tile") || !strcmp(a, "--tile-overlap"))) {
            if (i + 1 >= argc) return zl_cli_usage(cmd, "%s needs a value", a);
            long *dst = !strcmp(a, "--tile") ? &tile : &overlap;
            if (zl_cli_int(cmd, a, argv[++i], !strcmp(a, "--tile") ? 2 : 0, 4096, dst)) return ZL_EXIT_USAGE;
            if (dst == &tile) mode = ZL_VAE_TILE_ON;
            continue;
        }
        const char **dst = !strcmp(a, "--model") ? &model
                           : !strcmp(a, "--in") ? &in_path
                           : (!strcmp(a, "-o") || !strcmp(a, "--out")) ? &out_path
                           : !strcmp(a, "--vae-config") ? &cfg_path
                           : NULL;
        if (!dst) return zl_cli_usage(cmd, "unknown option '%s'", a);
        if (i + 1 >= argc) return zl_cli_usage(cmd, "%s needs a value", a);
        *dst = argv[++i];
    }
    if (!model) return zl_cli_usage(cmd, "--model is required");
    if (!in_path) return zl_cli_usage(cmd, "--in is required");
    if (!out_path) return zl_cli_usage(cmd, "-o is required");
    zl_cli_set_precision(cmd, prec);
    if (overlap >= tile) return zl_cli_usage(cmd, "--tile-overlap %ld must be smaller than --tile %ld", overlap, tile);

    int rc = ZL_OK;
    zl_model_paths mp;
    memset(&mp, 0, sizeof mp);
    zl_vae *v = NULL;
    zl_st_file *in = NULL;
    float *x = NULL, *o1 = NULL, *o2 = NULL;
    zl_vae_load_opts lo = {.config_path = cfg_path};
    /* a standalone VAE file is not a full checkpoint: load it directly */
    if (!zl_is_dir(model)) {
        zl_st_file *probe = NULL;
        if ((rc = zl_st_open(model, &probe))) goto done;
        int full = 0;
        for (int i = 0; i < zl_st_count(probe) && !full; i++)
            full = !strncmp(zl_st_at(probe, i)->name, "model.diffusion_model.", 22);
        zl_st_close(probe);
        if (!full) {
            if ((rc = zl_vae_load(model, &lo, &v))) goto done;
        }
    }
    if (!v) {
        if ((rc = zl_model_paths_resolve(model, &mp))) goto done;
        if ((rc = zl_vae_load_model(&mp, &lo, &v))) goto done;
    }
    if ((rc = zl_vae_set_tiling(v, mode, (int)tile, (int)overlap))) goto done;
    const zl_vae_config *cfg = zl_vae_get_config(v);
    int s = zl_vae_scale(v);
    if ((rc = zl_st_open(in_path, &in))) goto done;
    const char *name = enc ? "image" : "z";
    const zl_st_tensor *t = zl_st_find(in, name);
    if (!t) { rc = zl_set_error(ZL_ENOTFOUND, "%s: missing tensor '%s'", in_path, name); goto done; }
    int want_c = enc ? cfg->in_channels : cfg->latent_channels;
    if (t->ndim != 4 || t->shape[1] != want_c || t->shape[0] < 1 || t->shape[2] < 1 || t->shape[3] < 1 ||
        t->shape[2] > 65536 || t->shape[3] > 65536 || t->shape[0] > 4096) {
        rc = zl_set_error(ZL_ESHAPE, "%s: tensor '%s' must be [B, %d, H, W]", in_path, name, want_c);
        goto done;
    }
    if (t->dtype != ZL_DT_F32 && t->dtype != ZL_DT_F16 && t->dtype != ZL_DT_BF16 && t->dtype != ZL_DT_F64) {
        rc = zl_set_error(ZL_EFORMAT, "%s: tensor '%s' has dtype %s, expected a float type", in_path, name,
                          zl_dtype_name(t->dtype));
        goto done;
    }
    int B = (int)t->shape[0], H = (int)t->shape[2], W = (int)t->shape[3];
    if (!(x = malloc((size_t)t->numel * sizeof(float)))) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto done; }
    zl_st_read_f32(t, x);
    const char *inputs[2] = {in_path, mp.vae_weights ? mp.vae_weights : model};
    double t0 = zl_now();
    if (enc) {
        if (H % s || W % s) {
            rc = zl_set_error(ZL_ESHAPE, "%s: image is %dx%d; sides must be multiples of %d", in_path, W, H, s);
            goto done;
        }
        size_t n = (size_t)B * cfg->latent_channels * (H / s) * (W / s);
        o1 = malloc(n * sizeof(float));
        o2 = malloc(n * sizeof(float));
        if (!o1 || !o2) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto done; }
        if ((rc = zl_vae_encode(v, x, B, H, W, o1, o2))) goto done;
        zl_info("VAE encode: %.3f s", zl_now() - t0);
        zl_st_entry e[2] = {
            {.name = "latent_logvar", .dtype = ZL_DT_F32, .ndim = 4, .shape = {B, cfg->latent_channels, H / s, W / s}, .data = o2},
            {.name = "latent_mean", .dtype = ZL_DT_F32, .ndim = 4, .shape = {B, cfg->latent_channels, H / s, W / s}, .data = o1},
        };
        rc = zl_st_write(out_path, e, 2, NULL, 0, inputs, 2);
    } else {
        size_t n = (size_t)B * cfg->out_channels * H * s * W * s;
        o1 = malloc(n * sizeof(float));
        if (!o1) { rc = zl_set_error(ZL_ENOMEM, "out of memory for a %dx%d decode", W * s, H * s); goto done; }
        if ((rc = zl_vae_decode(v, x, B, H, W, o1))) goto done;
        zl_info("VAE decode: %.3f s", zl_now() - t0);
        zl_st_entry e = {.name = "decoded", .dtype = ZL_DT_F32, .ndim = 4, .shape = {B, cfg->out_channels, H * s, W * s}, .data = o1};
        rc = zl_st_write(out_path, &e, 1, NULL, 0, inputs, 2);
    }
done:
    if (rc) zl_cli_fail(rc, NULL);
    zl_vae_free(v);
    zl_st_close(in);
    zl_model_paths_free(&mp);
    free(x); free(o1); free(o2);
    if (!rc) return ZL_EXIT_OK;
    return rc == ZL_EINVAL ? ZL_EXIT_USAGE : ZL_EXIT_FAIL;
}

int zl_run_vae_encode(int argc, char **argv) { return run_vae(argc, argv, 1); }
int zl_run_vae_decode(int argc, char **argv) { return run_vae(argc, argv, 0); }
