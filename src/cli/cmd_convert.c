/* `ziplora convert IN -o OUT --format kohya|peft`: load a LoRA in any layout and
 * write it in kohya or PEFT layout (values unchanged, dtype kept unless --dtype). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora_cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ziplora convert IN.safetensors -o OUT.safetensors [--format kohya|peft] [options]\n\n"
            "Rewrite a LoRA (any supported layout) in kohya layout (default; ldm names for SDXL, as kohya\n"
            "writes them) or PEFT/diffusers layout (lora_A/lora_B, scale folded so that alpha = rank).\n"
            "LyCORIS LoHa/LoKr inputs are written as their exact LoRA form (of a higher rank); --rank\n"
            "shrinks any layer above R to its best rank-R approximation (truncated SVD, as kohya's\n"
            "resize_lora), printing each layer's relative error.\n"
            "A DoRA LoRA (LyCORIS dora_scale, PEFT lora_magnitude_vector) is baked into a plain LoRA with\n"
            "--model: each DoRA layer becomes the best rank-R approximation (R: --rank, else the layer's\n"
            "rank) of the change it makes to that model's weight at LoRA weight 1, with its relative error\n"
            "printed. Merge and zip then take the result. (A DoRA update depends on the base weights:\n"
            "use the model the LoRA was trained on. The new factors are rounded to the layer's dtype\n"
            "unless --dtype says otherwise: a BF16 file loses about 3e-3 of each update.)\n\n"
            "options:\n"
            "  -o, --output FILE     output file (never one of the inputs)\n"
            "  --format kohya|peft   output layout (default kohya)\n"
            "  --dtype f32|f16|bf16  output dtype (default: keep each layer's dtype)\n"
            "  --title TEXT          modelspec.title (default: the output file name)\n"
            "  --rank R              re-rank layers above rank R (truncated SVD; the scale is kept);\n"
            "                        DoRA layers are baked at rank R\n"
            "  --model M             name layers with this model's UNet config (diffusers folder or single\n"
            "                        file); its weights bake DoRA layers\n"
            "  --adapter-config F    PEFT adapter_config.json for the input's alpha\n"
            "  --te1-config JSON     with --model a single file whose text encoders' sizes its shapes\n"
            "  --te2-config JSON     cannot tell: their diffusers config.json (for baking DoRA)\n"
            "  -q, -v, --threads N   quiet, verbose, threads\n");
}

/* Bake l's DoRA layers against --model (zl_lora_bake_dora_model) and print each layer's error. */
static int bake_dora(zl_lora *l, const char *model, int rank, const zl_text_load_opts *to) {
    zl_model_paths mp;
    int rc = zl_model_paths_resolve(model, &mp);
    if (rc) return rc;
    zl_dora_bake_report rep;
    rc = zl_lora_bake_dora_model(l, &mp, to, rank, &rep);
    zl_model_paths_free(&mp);
    if (rc) return rc;
    printf("%-5s %-70s %6s %6s %12s\n", "part", "DoRA layer", "rank", "->", "rel. error");
    for (int j = 0; j < rep.n; j++) {
        const zl_lora_layer *y = &l->layers[rep.layer[j]];
        printf("%-5s %-70s %6d %6d %12.3e\n", y->part == ZL_PART_UNET ? "unet" : y->part == ZL_PART_TE1 ? "te1" : "te2",
               y->module, rep.rank_before[j], y->rank, rep.rel_err[j]);
    }
    printf("overall relative Frobenius error of the baked DoRA layers: %.6e\n", rep.overall);
    zl_dora_bake_report_free(&rep);
    return ZL_OK;
}

int zl_cmd_convert(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *title = NULL;
    long rank = 0;
    zl_lora_write_opts wo;
    memset(&wo, 0, sizeof wo);
    zl_lora_cli_flags lf;
    memset(&lf, 0, sizeof lf);
    zl_text_load_opts to = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int c = zl_cli_common("convert", argc, argv, &i);
        if (c < 0) return ZL_EXIT_USAGE;
        if (c) continue;
        c = zl_lora_cli_flag("convert", argc, argv, &i, &lf);
        if (c < 0) return ZL_EXIT_USAGE;
        if (c) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return ZL_EXIT_OK;
        }
        int has_val = !strcmp(a, "-o") || !strcmp(a, "--output") || !strcmp(a, "--format") || !strcmp(a, "--dtype") ||
                      !strcmp(a, "--title") || !strcmp(a, "--rank") || !strcmp(a, "--te1-config") ||
                      !strcmp(a, "--te2-config");
        if (has_val && i + 1 >= argc) return zl_cli_usage("convert", "%s needs a value", a);
        if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = argv[++i];
        else if (!strcmp(a, "--title")) title = argv[++i];
        else if (!strcmp(a, "--te1-config")) to.te1_config = argv[++i];
        else if (!strcmp(a, "--te2-config")) to.te2_config = argv[++i];
        else if (!strcmp(a, "--rank")) {
            if (zl_cli_int("convert", a, argv[++i], 1, 65536, &rank)) return ZL_EXIT_USAGE;
        }
        else if (!strcmp(a, "--format")) {
            int f = zl_lora_format_parse(argv[++i]);
            if (f < 0) return zl_cli_usage("convert", "--format expects kohya or peft, got '%s'", argv[i]);
            wo.format = (zl_lora_format)f;
        } else if (!strcmp(a, "--dtype")) {
            if (zl_lora_cli_dtype("convert", argv[++i], &wo.dtype)) return ZL_EXIT_USAGE;
        } else if (a[0] == '-' && a[1]) return zl_cli_usage("convert", "unknown option '%s'", a);
        else if (!in) in = a;
        else return zl_cli_usage("convert", "unexpected argument '%s'", a);
    }
    if (!in) return zl_cli_usage("convert", "no input LoRA given");
    if (!out) return zl_cli_usage("convert", "no output file given (-o OUT)");
    if ((to.te1_config || to.te2_config) && !lf.model)
        return zl_cli_usage("convert", "--te1-config / --te2-config need --model");
    int rc = zl_lora_cli_prepare(&lf);
    if (rc) return zl_cli_fail(rc, NULL);
    zl_lora *l = NULL;
    lf.allow_dora = lf.model != NULL;
    rc = zl_lora_cli_load(in, &lf, &l);
    if (rc) return zl_cli_fail(rc == ZL_EINVAL ? ZL_EFORMAT : rc, NULL);
    const int n_dora = l->n_dora;
    if (n_dora && (rc = bake_dora(l, lf.model, (int)rank, &to))) {
        zl_lora_free(l);
        return zl_cli_fail(rc, NULL);
    }
    if (rank > 0) {
        /* best rank-R approximation of every layer above R, its scale kept */
        double dropped = 0, total = 0;
        int n_cut = 0;
        for (int i = 0; i < l->n && !rc; i++) {
            zl_lora_layer *y = &l->layers[i];
            const int n = y->in_features * y->kh * y->kw, k = (int)rank;
            double err = 0, norm = 0;
            if (y->rank <= k) continue;
            float *nu = malloc(sizeof(float) * (size_t)y->out_features * k), *nd = malloc(sizeof(float) * (size_t)k * n);
            rc = nu && nd ? zl_lowrank_truncate(y->up, y->down, y->out_features, y->rank, n, k, nu, nd, &err, &norm)
                          : zl_set_error(ZL_ENOMEM, "out of memory");
            if (rc) {
                free(nu);
                free(nd);
                break;
            }
            if (!n_cut++) printf("%-5s %-70s %6s %6s %12s\n", "part", "layer", "rank", "->", "rel. error");
            printf("%-5s %-70s %6d %6d %12.3e\n", y->part == ZL_PART_UNET ? "unet" : y->part == ZL_PART_TE1 ? "te1" : "te2",
                   y->module, y->rank, k, err);
            const float scale = zl_lora_scale(y);
            free(y->up);
            free(y->down);
            y->up = nu;
            y->down = nd;
            y->alpha = scale * (float)k;
            y->rank = k;
            dropped += err * err * norm * norm;
            total += norm * norm;
        }
        if (!rc && n_cut) printf("overall relative Frobenius error of the re-ranked layers: %.6e\n", total > 0 ? sqrt(dropped / total) : 0.0);
        if (!rc && !n_cut) zl_info("no layer is above rank %ld", rank);
        if (rc) {
            zl_lora_free(l);
            return zl_cli_fail(rc, NULL);
        }
    }
    char params[200], rank_s[32] = "null";
    if (rank > 0) snprintf(rank_s, sizeof rank_s, "%ld", rank);
    snprintf(params, sizeof params, "{\"format\":\"%s\",\"dtype\":\"%s\",\"rank\":%s,\"dora_baked\":%d}",
             wo.format == ZL_FORMAT_PEFT ? "peft" : "kohya", wo.dtype == ZL_DT_INVALID ? "keep" : zl_dtype_name(wo.dtype),
             rank_s, n_dora);
    const char *inputs[1] = {in};
    wo.unet_config = lf.have_cfg ? &lf.cfg : NULL;
    wo.title = title;
    wo.method = "convert";
    wo.params_json = params;
    wo.inputs = inputs;
    wo.n_inputs = 1;
    rc = zl_lora_write(out, l, &wo);
    if (!rc)
        zl_info("wrote %s: %d layers, %s layout, family %s", out, l->n, wo.format == ZL_FORMAT_PEFT ? "PEFT" : "kohya",
                zl_family_name(l->family));
    zl_lora_free(l);
    return rc ? zl_cli_fail(rc, NULL) : ZL_EXIT_OK;
}
