/* Flag handling shared by the LoRA subcommands (see lora_cli.h). */
#include "lora_cli.h"

#include <stdio.h>
#include <string.h>

int zl_lora_cli_flag(const char *cmd, int argc, char **argv, int *i, zl_lora_cli_flags *f) {
    const char *a = argv[*i];
    const char **dst = !strcmp(a, "--model") ? &f->model : !strcmp(a, "--adapter-config") ? &f->adapter_config : NULL;
    if (!dst) return 0;
    if (*i + 1 >= argc) {
        zl_cli_usage(cmd, "%s needs a value", a);
        return -1;
    }
    *dst = argv[++*i];
    return 1;
}

int zl_lora_cli_prepare(zl_lora_cli_flags *f) {
    f->have_cfg = 0;
    if (!f->model) return ZL_OK;
    zl_model_paths mp;
    int rc = zl_model_paths_resolve(f->model, &mp);
    if (rc) return rc;
    if (mp.unet_config) {
        rc = zl_unet_config_load(mp.unet_config, &f->cfg);
        if (!rc) f->have_cfg = 1;
    } else if (mp.single_file) {
        /* a single file: its key shapes give the config, as zl_unet_load infers it
         * (the family's standard config would refuse a smaller model's LoRAs) */
        zl_st_file *sf;
        rc = zl_st_open(mp.unet_weights, &sf);
        if (!rc) {
            rc = zl_unet_config_infer(sf, "model.diffusion_model.", &f->cfg);
            zl_st_close(sf);
        }
        if (!rc) f->have_cfg = 1;
    } else if (mp.family == ZL_FAMILY_SDXL) {
        zl_unet_config_sdxl_base(&f->cfg);
        f->have_cfg = 1;
    } else if (mp.family == ZL_FAMILY_SD1) {
        zl_unet_config_sd15(&f->cfg);
        f->have_cfg = 1;
    }
    zl_model_paths_free(&mp);
    return rc;
}

int zl_lora_cli_load(const char *path, const zl_lora_cli_flags *f, zl_lora **out) {
    zl_lora_load_opts o;
    memset(&o, 0, sizeof o);
    o.adapter_config = f->adapter_config;
    o.unet_config = f->have_cfg ? &f->cfg : NULL;
    o.allow_dora = f->allow_dora || (f->bake_dora && f->model);
    int rc = zl_lora_load(path, &o, out);
    if (rc || !f->bake_dora || !f->model || !(*out)->n_dora) return rc;
    zl_model_paths mp;
    if ((rc = zl_model_paths_resolve(f->model, &mp))) return rc;
    rc = zl_lora_bake_dora_model(*out, &mp, NULL, 0, NULL);
    zl_model_paths_free(&mp);
    if (rc) {
        zl_lora_free(*out);
        *out = NULL;
    }
    return rc;
}

int zl_lora_cli_dtype(const char *cmd, const char *s, zl_dtype *out) {
    if (!strcmp(s, "f32") || !strcmp(s, "fp32") || !strcmp(s, "float32")) *out = ZL_DT_F32;
    else if (!strcmp(s, "f16") || !strcmp(s, "fp16") || !strcmp(s, "float16")) *out = ZL_DT_F16;
    else if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16")) *out = ZL_DT_BF16;
    else {
        zl_cli_usage(cmd, "--dtype expects f32, f16 or bf16, got '%s'", s);
        return -1;
    }
    return 0;
}

/* Length of the valid UTF-8 sequence at s (1-4), or 0 if the bytes there are not one. */
static int utf8_len(const unsigned char *s) {
    unsigned c = s[0];
    int n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (!n) return 0;
    unsigned cp = n == 1 ? c : n == 2 ? c & 0x1f : n == 3 ? c & 0x0f : c & 0x07;
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    static const unsigned min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0; /* overlong, surrogate */
    return n;
}

void zl_lora_cli_json_str(FILE *fp, const char *s) {
    fputc('"', fp);
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned char c = *p;
        int n = utf8_len(p);
        if (c == '"' || c == '\\') fprintf(fp, "\\%c", c);
        else if (c < 0x20) fprintf(fp, "\\u%04x", c);
        else if (n) fwrite(p, 1, (size_t)n, fp);
        else fputs("\\ufffd", fp); /* not UTF-8 (a file name, say): JSON must stay valid */
        p += n ? n : 1;
    }
    fputc('"', fp);
}
