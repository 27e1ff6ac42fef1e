/* `ziplora run unet`: one UNet forward on tensors from a safetensors file, with
 * any LoRAs, written to another safetensors file. The tensor names are those of
 * the fixtures' unet_io.safetensors, so any model can be checked against
 * another implementation's dump. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "ziplora/unet.h"

#define MAX_LORAS 16

static void usage(FILE *f) {
    fprintf(f,
            "usage: ziplora run unet --model M --in IN.safetensors -o OUT.safetensors [options]\n\n"
            "Runs one UNet forward. IN holds sample [B,C,H,W], timestep [B] (or a scalar),\n"
            "encoder_hidden_states [B,T,ctx] and, for SDXL, text_embeds [B,pooled] and time_ids [B,6].\n"
            "OUT receives out [B,C,H,W] (F32).\n\n"
            "options:\n"
            "  --model M            diffusers model folder or single-file checkpoint\n"
            "  --lora FILE[:W]      apply a LoRA with weight W (default 1); repeatable\n"
            "  --fold               fold LoRAs into the weights (default)\n"
            "  --runtime            apply LoRAs as runtime branches\n"
            "  --unet-config JSON   diffusers unet config.json (for a non-standard single file)\n"
            "  --f32-weights        widen all weights to float32 once (more memory)\n"
            "  --precision P        auto (default: bf16x3 with AMX-BF16, else f32), f32, bf16x3 or bf16\n"
            "                       (see generate --help)\n"
            "  --in FILE, -o FILE   input and output tensors\n"
            "  -q, -v, --threads N  quiet, verbose, thread count\n");
}

/* Read a float tensor named `name` of IN into a new buffer, checking its rank. */
static int read_tensor(const zl_st_file *f, const char *name, int min_nd, int max_nd, const zl_st_tensor **tt,
                       float **out) {
    const zl_st_tensor *t = zl_st_find(f, name);
    if (!t) return zl_set_error(ZL_ENOTFOUND, "%s: missing tensor '%s'", zl_st_path(f), name);
    if (t->ndim < min_nd || t->ndim > max_nd)
        return zl_set_error(ZL_ESHAPE, "%s: tensor '%s' has %d dimensions", zl_st_path(f), name, t->ndim);
    if (t->dtype != ZL_DT_F32 && t->dtype != ZL_DT_F16 && t->dtype != ZL_DT_BF16 && t->dtype != ZL_DT_F64)
        return zl_set_error(ZL_EFORMAT, "%s: tensor '%s' has dtype %s, expected a float type", zl_st_path(f), name,
                            zl_dtype_name(t->dtype));
    float *p = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    if (!p) return zl_set_error(ZL_ENOMEM, "out of memory reading '%s'", name);
    zl_st_read_f32(t, p);
    *tt = t;
    *out = p;
    return ZL_OK;
}

int zl_run_unet(int argc, char **argv) {
    const char *model = NULL, *in_path = NULL, *out_path = NULL, *cfg_path = NULL;
    const char *lora_args[MAX_LORAS];
    int n_lora = 0, runtime = 0, f32 = 0;
    int prec = ZL_CLI_PREC_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int c = zl_cli_common("run unet", argc, argv, &i);
        if (!c) c = zl_cli_precision_flag("run unet", argc, argv, &i, &prec);
        if (c < 0) return ZL_EXIT_USAGE;
        if (c) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return ZL_EXIT_OK; }
        if (!strcmp(a, "--fold")) { runtime = 0; continue; }
        if (!strcmp(a, "--runtime")) { runtime = 1; continue; }
        if (!strcmp(a, "--f32-weights")) { f32 = 1; continue; }
        const char **dst = !strcmp(a, "--model") ? &model
                           : !strcmp(a, "--in") ? &in_path
                           : (!strcmp(a, "-o") || !strcmp(a, "--out")) ? &out_path
                           : !strcmp(a, "--unet-config") ? &cfg_path
                           : NULL;
        int is_lora = !strcmp(a, "--lora");
        if (!dst && !is_lora) return zl_cli_usage("run unet", "unknown option '%s'", a);
        if (i + 1 >= argc) return zl_cli_usage("run unet", "%s needs a value", a);
        if (is_lora) {
            if (n_lora == MAX_LORAS) return zl_cli_usage("run unet", "at most %d --lora", MAX_LORAS);
            lora_args[n_lora++] = argv[++i];
        } else {
            *dst = argv[++i];
        }
    }
    if (!model) return zl_cli_usage("run unet", "--model is required");
    if (!in_path) return zl_cli_usage("run unet", "--in is required");
    if (!out_path) return zl_cli_usage("run unet", "-o is required");
    zl_cli_set_precision("run unet", prec);

    int rc = ZL_OK;
    zl_model_paths mp;
    zl_unet *u = NULL;
    zl_st_file *in = NULL;
    zl_lora *loras[MAX_LORAS] = {0};
    char *lpaths[MAX_LORAS] = {0};
    float *sample = NULL, *ts = NULL, *ctx = NULL, *te = NULL, *tid = NULL, *out = NULL, *tsb = NULL;
    const char *inputs[MAX_LORAS + 2];
    int n_inputs = 0;
    if ((rc = zl_model_paths_resolve(model, &mp))) return zl_cli_fail(rc, NULL);
    zl_unet_load_opts lo = {.config_path = cfg_path, .weights = f32 ? ZL_UNET_WEIGHTS_F32 : ZL_UNET_WEIGHTS_STORED};
    if ((rc = zl_unet_load_model(&mp, &lo, &u))) goto done;
    const zl_unet_config *cfg = zl_unet_get_config(u);
    for (int k = 0; k < n_lora; k++) {
        float w;
        if ((rc = zl_cli_lora_arg(lora_args[k], &lpaths[k], &w))) goto done;
        zl_lora_load_opts opts = {.unet_config = cfg, .expect_family = cfg->family, .allow_dora = 1};
        if ((rc = zl_lora_load(lpaths[k], &opts, &loras[k]))) goto done;
        if ((rc = zl_unet_add_lora(u, loras[k], w, runtime ? ZL_UNET_LORA_RUNTIME : ZL_UNET_LORA_FOLD, NULL))) goto done;
        inputs[n_inputs++] = lpaths[k];
    }

    if ((rc = zl_st_open(in_path, &in))) goto done;
    const zl_st_tensor *ts_s, *tt, *tc, *tte, *tti;
    if ((rc = read_tensor(in, "sample", 4, 4, &ts_s, &sample))) goto done;
    int B = (int)ts_s->shape[0], C = (int)ts_s->shape[1], H = (int)ts_s->shape[2], W = (int)ts_s->shape[3];
    if (C != cfg->in_channels) {
        rc = zl_set_error(ZL_ESHAPE, "%s: 'sample' has %d channels, the UNet takes %d", in_path, C, cfg->in_channels);
        goto done;
    }
    if ((rc = read_tensor(in, "timestep", 0, 1, &tt, &ts))) goto done;
    if (tt->numel != 1 && tt->numel != B) {
        rc = zl_set_error(ZL_ESHAPE, "%s: 'timestep' has %lld values for a batch of %d", in_path, (long long)tt->numel, B);
        goto done;
    }
    if (!(tsb = malloc((size_t)B * sizeof(float)))) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto done; }
    for (int b = 0; b < B; b++) tsb[b] = ts[tt->numel == 1 ? 0 : b];
    if ((rc = read_tensor(in, "encoder_hidden_states", 3, 3, &tc, &ctx))) goto done;
    if (tc->shape[0] != B || tc->shape[2] != cfg->cross_attention_dim) {
        rc = zl_set_error(ZL_ESHAPE, "%s: 'encoder_hidden_states' must be [%d, T, %d]", in_path, B, cfg->cross_attention_dim);
        goto done;
    }
    if (cfg->has_text_time) {
        int P = zl_unet_pooled_dim(u);
        if ((rc = read_tensor(in, "text_embeds", 2, 2, &tte, &te))) goto done;
        if (tte->shape[0] != B || tte->shape[1] != P) {
            rc = zl_set_error(ZL_ESHAPE, "%s: 'text_embeds' must be [%d, %d]", in_path, B, P);
            goto done;
        }
        if ((rc = read_tensor(in, "time_ids", 2, 2, &tti, &tid))) goto done;
        if (tti->shape[0] != B || tti->shape[1] != 6) {
            rc = zl_set_error(ZL_ESHAPE, "%s: 'time_ids' must be [%d, 6]", in_path, B);
            goto done;
        }
    }
    size_t n_out = (size_t)B * cfg->out_channels * H * W;
    if (!(out = malloc(n_out * sizeof(float)))) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto done; }
    zl_unet_input ui = {.B = B, .H = H, .W = W, .T = (int)tc->shape[1], .sample = sample, .timestep = tsb,
                        .context = ctx, .text_embeds = te, .time_ids = tid};
    double t0 = zl_now();
    if ((rc = zl_unet_forward(u, &ui, out))) goto done;
    zl_info("UNet forward: %.3f s", zl_now() - t0);
    zl_st_entry e = {.name = "out", .dtype = ZL_DT_F32, .ndim = 4, .shape = {B, cfg->out_channels, H, W}, .data = out};
    inputs[n_inputs++] = in_path;
    inputs[n_inputs++] = mp.unet_weights;
    rc = zl_st_write(out_path, &e, 1, NULL, 0, inputs, n_inputs);
done:
    if (rc) zl_cli_fail(rc, NULL);
    zl_unet_free(u);
    for (int k = 0; k < n_lora; k++) {
        zl_lora_free(loras[k]);
        free(lpaths[k]);
    }
    zl_st_close(in);
    zl_model_paths_free(&mp);
    free(sample); free(ts); free(tsb); free(ctx); free(te); free(tid); free(out);
    if (!rc) return ZL_EXIT_OK;
    return rc == ZL_EINVAL ? ZL_EXIT_USAGE : ZL_EXIT_FAIL;
}
