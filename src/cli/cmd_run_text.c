/* `ziplora run text`: the text encoders on token ids from a safetensors file,
 * with any LoRAs' text-encoder layers folded in. Input and output names are
 * those of the fixtures' text_io.safetensors, so any model can be compared
 * with another implementation's dump. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "ziplora/text.h"

#define MAX_LORAS 16

static void usage(FILE *f) {
    fprintf(f,
            "usage: ziplora run text --model M --in IN.safetensors -o OUT.safetensors [options]\n\n"
            "Runs the text encoders on token ids. IN holds ids_clip_l [B,77] (CLIP-L, padded with 49407)\n"
            "and, for SDXL, ids_bigg [B,77] (padded with 0), as I64, I32 or F32.\n"
            "OUT receives (F32): prompt_embeds [B,77,ctx]; te1_penultimate, te1_last_hidden [B,77,C1];\n"
            "te1_pooled [B,C1]; for SDXL also pooled_prompt_embeds [B,P], te2_penultimate,\n"
            "te2_last_hidden [B,77,C2], te2_pooled [B,C2] and te2_text_embeds [B,P].\n\n"
            "options:\n"
            "  --model M            diffusers model folder or single-file checkpoint\n"
            "  --lora FILE[:W]      fold a LoRA's text-encoder layers in with weight W (default 1); repeatable\n"
            "  --te1-config JSON    config.json of the first text encoder (for a single file whose\n"
            "  --te2-config JSON    heads are not 64 wide); likewise for the second\n"
            "  --clip-skip N        prompt_embeds from the N-th layer from the end (A1111's Clip skip, as\n"
            "                       generate); the per-encoder tensors are unchanged\n"
            "  --precision P        auto (default: bf16x3 with AMX-BF16, else f32), f32, bf16x3 or bf16\n"
            "                       (see generate --help)\n"
            "  --in FILE, -o FILE   input ids and output tensors\n"
            "  -q, -v, --threads N  quiet, verbose, thread count\n");
}

/* ids [B, 77] of an integer or float tensor; every value must be a whole token id. */
static int read_ids(zl_st_file *f, const char *name, int32_t **out, int *B) {
    const zl_st_tensor *t = zl_st_find(f, name);
    if (!t) return zl_set_error(ZL_ENOTFOUND, "%s: missing tensor '%s'", zl_st_path(f), name);
    if (t->ndim != 2 || t->shape[1] != ZL_CLIP_CTX || t->shape[0] < 1)
        return zl_set_error(ZL_ESHAPE, "%s: '%s' must be [B, %d]", zl_st_path(f), name, ZL_CLIP_CTX);
    if (t->dtype != ZL_DT_I64 && t->dtype != ZL_DT_I32 && t->dtype != ZL_DT_F32)
        return zl_set_error(ZL_EFORMAT, "%s: '%s' has dtype %s (I64, I32 or F32 expected)", zl_st_path(f), name,
                            zl_dtype_name(t->dtype));
    int32_t *ids = malloc((size_t)t->numel * sizeof *ids);
    if (!ids) return zl_set_error(ZL_ENOMEM, "out of memory");
    for (int64_t i = 0; i < t->numel; i++) {
        double v;
        if (t->dtype == ZL_DT_I64) { int64_t x; memcpy(&x, t->data + 8 * i, 8); v = (double)x; }
        else if (t->dtype == ZL_DT_I32) { int32_t x; memcpy(&x, t->data + 4 * i, 4); v = x; }
        else { float x; memcpy(&x, t->data + 4 * i, 4); v = x; }
        if (!(v >= 0 && v < ZL_CLIP_VOCAB) || v != (double)(int32_t)v) {
            free(ids);
            return zl_set_error(ZL_EFORMAT, "%s: '%s' holds %g at [%lld, %lld], not a token id (0..%d)", zl_st_path(f), name,
                                v, (long long)(i / ZL_CLIP_CTX), (long long)(i % ZL_CLIP_CTX), ZL_CLIP_VOCAB - 1);
        }
        ids[i] = (int32_t)v;
    }
    *out = ids;
    *B = (int)t->shape[0];
    return ZL_OK;
}

int zl_run_text(int argc, char **argv) {
    const char *model = NULL, *in_path = NULL, *out_path = NULL, *c1 = NULL, *c2 = NULL;
    const char *lora_args[MAX_LORAS];
    int n_lora = 0;
    long clip_skip = 1;
    int prec = ZL_CLI_PREC_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int c = zl_cli_common("run text", argc, argv, &i);
        if (!c) c = zl_cli_precision_flag("run text", argc, argv, &i, &prec);
        if (c < 0) return ZL_EXIT_USAGE;
        if (c) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return ZL_EXIT_OK; }
        const char **dst = !strcmp(a, "--model") ? &model
                           : !strcmp(a, "--in") ? &in_path
                           : (!strcmp(a, "-o") || !strcmp(a, "--out")) ? &out_path
                           : !strcmp(a, "--te1-config") ? &c1
                           : !strcmp(a, "--te2-config") ? &c2
                           : NULL;
        int is_lora = !strcmp(a, "--lora"), is_skip = !strcmp(a, "--clip-skip");
        if (!dst && !is_lora && !is_skip) return zl_cli_usage("run text", "unknown option '%s'", a);
        if (i + 1 >= argc) return zl_cli_usage("run text", "%s needs a value", a);
        if (is_skip) {
            if (zl_cli_int("run text", a, argv[++i], 1, 48, &clip_skip)) return ZL_EXIT_USAGE;
        } else if (is_lora) {
            if (n_lora == MAX_LORAS) return zl_cli_usage("run text", "at most %d --lora", MAX_LORAS);
            lora_args[n_lora++] = argv[++i];
        } else {
            *dst = argv[++i];
        }
    }
    if (!model) return zl_cli_usage("run text", "--model is required");
    if (!in_path) return zl_cli_usage("run text", "--in is required");
    if (!out_path) return zl_cli_usage("run text", "-o is required");
    zl_cli_set_precision("run text", prec);

    int rc;
    zl_model_paths mp;
    zl_text *tx = NULL;
    zl_st_file *in = NULL;
    zl_lora *loras[MAX_LORAS] = {0};
    char *lpaths[MAX_LORAS] = {0};
    int32_t *il = NULL, *ig = NULL;
    zl_text_cond c = {0};
    const char *inputs[MAX_LORAS + 4];
    int n_inputs = 0;
    if ((rc = zl_model_paths_resolve(model, &mp))) return zl_cli_fail(rc, NULL);
    zl_text_load_opts lo = {.te1_config = c1, .te2_config = c2};
    if ((rc = zl_text_load(&mp, &lo, &tx))) goto done;
    if (clip_skip > 1 && (rc = zl_text_set_clip_skip(tx, (int)clip_skip))) goto done;
    zl_family fam = zl_text_family(tx);
    for (int k = 0; k < n_lora; k++) {
        float w;
        if ((rc = zl_cli_lora_arg(lora_args[k], &lpaths[k], &w))) goto done;
        zl_lora_load_opts opts = {.expect_family = fam, .allow_dora = 1}; /* folded */
        if ((rc = zl_lora_load(lpaths[k], &opts, &loras[k]))) goto done;
        if ((rc = zl_text_apply_lora(tx, loras[k], w))) goto done;
        inputs[n_inputs++] = lpaths[k];
    }
    if ((rc = zl_st_open(in_path, &in))) goto done;
    int B = 0, Bg = 0;
    if ((rc = read_ids(in, "ids_clip_l", &il, &B))) goto done;
    if (fam == ZL_FAMILY_SDXL) {
        if ((rc = read_ids(in, "ids_bigg", &ig, &Bg))) goto done;
        if (Bg != B) {
            rc = zl_set_error(ZL_ESHAPE, "%s: ids_clip_l has %d prompts but ids_bigg %d", in_path, B, Bg);
            goto done;
        }
    }
    const int T = ZL_CLIP_CTX;
    int D = zl_text_context_dim(tx), P = zl_text_pooled_dim(tx);
    int C1 = zl_clip_get_config(zl_text_encoder(tx, ZL_PART_TE1))->hidden;
    int C2 = ig ? zl_clip_get_config(zl_text_encoder(tx, ZL_PART_TE2))->hidden : 0;
    size_t N = (size_t)B * T;
    int ok = (c.prompt_embeds = malloc(N * D * sizeof(float))) && (c.te1.penultimate = malloc(N * C1 * sizeof(float))) &&
             (c.te1.last_hidden = malloc(N * C1 * sizeof(float))) && (c.te1.pooled = malloc((size_t)B * C1 * sizeof(float)));
    if (ok && ig)
        ok = (c.pooled = malloc((size_t)B * P * sizeof(float))) && (c.te2.penultimate = malloc(N * C2 * sizeof(float))) &&
             (c.te2.last_hidden = malloc(N * C2 * sizeof(float))) && (c.te2.pooled = malloc((size_t)B * C2 * sizeof(float))) &&
             (c.te2.projected = malloc((size_t)B * P * sizeof(float)));
    if (!ok) { rc = zl_set_error(ZL_ENOMEM, "out of memory for %d prompts", B); goto done; }
    double t0 = zl_now();
    if ((rc = zl_text_encode_ids(tx, il, ig, B, &c))) goto done;
    zl_info("text encoders: %.3f s for %d prompts", zl_now() - t0, B);
    zl_st_entry e[9];
    int ne = 0;
#define OUT3(nm, p, w) e[ne++] = (zl_st_entry){.name = nm, .dtype = ZL_DT_F32, .ndim = 3, .shape = {B, T, w}, .data = p}
#define OUT2(nm, p, w) e[ne++] = (zl_st_entry){.name = nm, .dtype = ZL_DT_F32, .ndim = 2, .shape = {B, w}, .data = p}
    OUT3("prompt_embeds", c.prompt_embeds, D);
    OUT3("te1_penultimate", c.te1.penultimate, C1);
    OUT3("te1_last_hidden", c.te1.last_hidden, C1);
    OUT2("te1_pooled", c.te1.pooled, C1);
    if (ig) {
        OUT2("pooled_prompt_embeds", c.pooled, P);
        OUT3("te2_penultimate", c.te2.penultimate, C2);
        OUT3("te2_last_hidden", c.te2.last_hidden, C2);
        OUT2("te2_pooled", c.te2.pooled, C2);
        OUT2("te2_text_embeds", c.te2.projected, P);
    }
#undef OUT3
#undef OUT2
    inputs[n_inputs++] = in_path;
    inputs[n_inputs++] = mp.te1_weights;
    if (mp.te2_weights) inputs[n_inputs++] = mp.te2_weights;
    rc = zl_st_write(out_path, e, ne, NULL, 0, inputs, n_inputs);
done:
    if (rc) zl_cli_fail(rc, NULL);
    zl_text_free(tx);
    for (int k = 0; k < n_lora; k++) {
        zl_lora_free(loras[k]);
        free(lpaths[k]);
    }
    zl_st_close(in);
    zl_model_paths_free(&mp);
    free(il); free(ig);
    free(c.prompt_embeds); free(c.pooled);
    free(c.te1.penultimate); free(c.te1.last_hidden); free(c.te1.pooled);
    free(c.te2.penultimate); free(c.te2.last_hidden); free(c.te2.pooled); free(c.te2.projected);
    if (!rc) return ZL_EXIT_OK;
    return rc == ZL_EINVAL ? ZL_EXIT_USAGE : ZL_EXIT_FAIL;
}
