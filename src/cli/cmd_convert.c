/* `ziplora convert IN -o OUT --format kohya|peft`: load a LoRA in any layout and
 * write it in kohya or PEFT layout (values unchanged, dtype kept unless --dtype). */
#include <stdio.h>
#include <string.h>

#include "lora_cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ziplora convert IN.safetensors -o OUT.safetensors [--format kohya|peft] [options]\n\n"
            "Rewrite a LoRA (any supported layout) in kohya layout (default; ldm names for SDXL, as kohya\n"
            "writes them) or PEFT/diffusers layout (lora_A/lora_B, scale folded so that alpha = rank).\n\n"
            "options:\n"
            "  -o, --output FILE     output file (never one of the inputs)\n"
            "  --format kohya|peft   output layout (default kohya)\n"
            "  --dtype f32|f16|bf16  output dtype (default: keep each layer's dtype)\n"
            "  --title TEXT          modelspec.title (default: the output file name)\n"
            "  --model M             name layers with this model's UNet config (diffusers folder or single file)\n"
            "  --adapter-config F    PEFT adapter_config.json for the input's alpha\n"
            "  -q, -v, --threads N   quiet, verbose, threads\n");
}

int zl_cmd_convert(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *title = NULL;
    zl_lora_write_opts wo;
    memset(&wo, 0, sizeof wo);
    zl_lora_cli_flags lf;
    memset(&lf, 0, sizeof lf);
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
                      !strcmp(a, "--title");
        if (has_val && i + 1 >= argc) return zl_cli_usage("convert", "%s needs a value", a);
        if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = argv[++i];
        else if (!strcmp(a, "--title")) title = argv[++i];
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
    int rc = zl_lora_cli_prepare(&lf);
    if (rc) return zl_cli_fail(rc, NULL);
    zl_lora *l = NULL;
    rc = zl_lora_cli_load(in, &lf, &l);
    if (rc) return zl_cli_fail(rc == ZL_EINVAL ? ZL_EFORMAT : rc, NULL);
    char params[160];
    snprintf(params, sizeof params, "{\"format\":\"%s\",\"dtype\":\"%s\"}", wo.format == ZL_FORMAT_PEFT ? "peft" : "kohya",
             wo.dtype == ZL_DT_INVALID ? "keep" : zl_dtype_name(wo.dtype));
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
