/* Synthetic models: the tensor lists of the full-size SDXL base and SD 1.5
 * parts equal the real diffusers key lists (tests/data/real-keys), the config
 * texts parse back to the standard configs, and a small synthetic SDXL-family
 * folder (mini-sdxl's configs) writes deterministically, is reused when
 * complete, loads through the ordinary loaders and runs UNet, text encoders and
 * VAE to finite outputs with the advertised weight statistics. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "testlib.h"
#include "ziplora/synth.h"
#include "ziplora/sample.h"
#include "ziplora/unet.h"
#include "ziplora/vae.h"

typedef struct {
    json_t *want; /* the real key -> {shape, dtype} map */
    int n, missing, bad;
} cmp_ctx;

static void cmp_cb(void *ctx, const char *name, zl_dtype dt, int ndim, const int64_t *shape) {
    cmp_ctx *c = ctx;
    c->n++;
    json_t *e = json_object_get(c->want, name);
    if (!e) {
        if (c->missing++ < 5) printf("  not in the real list: %s\n", name);
        return;
    }
    json_t *s = json_object_get(e, "shape");
    int ok = (int)json_array_size(s) == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = json_integer_value(json_array_get(s, i)) == shape[i];
    /* Real files are F32 (or F16 for .fp16 variants); integer buffers keep their type. */
    const char *rdt = json_string_value(json_object_get(e, "dtype"));
    ok = ok && (!strcmp(rdt, "I64") == (dt == ZL_DT_I64));
    if (!ok && c->bad++ < 5) printf("  shape/dtype differs: %s\n", name);
}

static void check_keys(const char *file, const char *comp, zl_family fam, unsigned part) {
    json_error_t err;
    json_t *root = json_load_file(zt_data(file), 0, &err);
    CHECKM(root != NULL, "%s: %s", file, err.text);
    if (!root) return;
    cmp_ctx c = {json_object_get(json_object_get(root, comp), "tensors"), 0, 0, 0};
    zl_synth_opts o = {.family = fam};
    CHECK_OK(zl_synth_list(&o, part, cmp_cb, &c));
    CHECKM(c.n == (int)json_object_size(c.want) && !c.missing && !c.bad, "%s %s: %d synthesized, %d real, %d missing, %d bad",
           file, comp, c.n, (int)json_object_size(c.want), c.missing, c.bad);
    json_decref(root);
}

static void check_configs(void) {
    zl_synth_opts o = {.family = ZL_FAMILY_SDXL};
    char *s = NULL;
    zl_unet_config got, want;
    CHECK_OK(zl_synth_config_json(&o, ZL_SYNTH_UNET, &s));
    CHECK_OK(zl_unet_config_parse(s, "synth sdxl unet", &got));
    zl_unet_config_sdxl_base(&want);
    CHECKM(!memcmp(&got, &want, sizeof got), "SDXL UNet config round trip");
    free(s);
    o.family = ZL_FAMILY_SD1;
    CHECK_OK(zl_synth_config_json(&o, ZL_SYNTH_UNET, &s));
    CHECK_OK(zl_unet_config_parse(s, "synth sd15 unet", &got));
    zl_unet_config_sd15(&want);
    CHECKM(!memcmp(&got, &want, sizeof got), "SD 1.5 UNet config round trip");
    free(s);
    zl_vae_config vg, vw;
    CHECK_OK(zl_synth_config_json(&o, ZL_SYNTH_VAE, &s));
    CHECK_OK(zl_vae_config_parse(s, "synth sd15 vae", &vg));
    zl_vae_config_standard(&vw, ZL_FAMILY_SD1);
    CHECK(!memcmp(&vg, &vw, sizeof vg));
    CHECK(strstr(s, "\"scaling_factor\": 0.18215") != NULL);
    free(s);
    o.family = ZL_FAMILY_SDXL;
    CHECK_OK(zl_synth_config_json(&o, ZL_SYNTH_TE2, &s));
    CHECK(strstr(s, "\"CLIPTextModelWithProjection\"") && strstr(s, "\"hidden_act\": \"gelu\"") &&
          strstr(s, "\"num_hidden_layers\": 32") && strstr(s, "\"hidden_size\": 1280"));
    free(s);
    CHECK_OK(zl_synth_config_json(&o, ZL_SYNTH_TE1, &s));
    CHECK(strstr(s, "\"hidden_act\": \"quick_gelu\"") && strstr(s, "\"num_hidden_layers\": 12"));
    free(s);
    /* Bytes: the SDXL base UNet in F16 is 2.567 B parameters * 2. */
    int64_t ub = zl_synth_part_bytes(&o, ZL_SYNTH_UNET);
    CHECKM(ub > 5.1e9 && ub < 5.16e9, "SDXL UNet F16 bytes %lld", (long long)ub);
}

static int files_equal(const char *a, const char *b) {
    char ha[65], hb[65];
    if (zl_sha256_file(a, ha) || zl_sha256_file(b, hb)) return 0;
    return !strcmp(ha, hb);
}

static double finite_rms(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) return NAN;
        s += (double)x[i] * x[i];
    }
    return sqrt(s / (double)n);
}

static void small_model(void) {
    zl_unet_config uc;
    zl_vae_config vc;
    CHECK_OK(zl_unet_config_load(zt_data("mini-sdxl/unet/config.json"), &uc));
    CHECK_OK(zl_vae_config_load(zt_data("mini-sdxl/vae/config.json"), &vc));
    zl_clip_config t1 = {.hidden = 32, .intermediate = 128, .heads = 4, .layers = 3, .max_pos = 77, .vocab = 49408,
                         .projection_dim = 32, .quick_gelu = 1, .has_projection = 0, .eps = 1e-5f};
    zl_clip_config t2 = t1;
    t2.quick_gelu = 0;
    t2.has_projection = 1;
    zl_synth_opts o = {.family = ZL_FAMILY_SDXL, .seed = 7, .unet = &uc, .te1 = &t1, .te2 = &t2, .vae = &vc};
    char dir[512], dir2[512];
    snprintf(dir, sizeof dir, "%s", zt_tmp("synth/a"));
    snprintf(dir2, sizeof dir2, "%s", zt_tmp("synth/b"));
    unsigned w = 0;
    CHECK_OK(zl_synth_model(dir, &o, &w));
    CHECKM(w == ZL_SYNTH_ALL, "first write wrote %#x", w);
    CHECK_OK(zl_synth_model(dir, &o, &w));
    CHECKM(w == 0, "complete folder reused (wrote %#x)", w);
    /* Same seed elsewhere: identical bytes. */
    o.parts = ZL_SYNTH_UNET;
    CHECK_OK(zl_synth_model(dir2, &o, &w));
    char pa[600], pb[600];
    snprintf(pa, sizeof pa, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    snprintf(pb, sizeof pb, "%s/unet/diffusion_pytorch_model.safetensors", dir2);
    CHECK(files_equal(pa, pb));
    /* Another seed: rewritten, different bytes. */
    o.seed = 8;
    CHECK_OK(zl_synth_model(dir2, &o, &w));
    CHECK(w == ZL_SYNTH_UNET && !files_equal(pa, pb));
    o.seed = 7;
    o.parts = 0;

    /* Weight statistics as documented. */
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(pa, &f));
    if (f) {
        CHECK(!strcmp(zl_st_meta(f, "ziplora_synth_seed"), "7"));
        int64_t n = 0;
        float *x = zl_st_load_f32(f, "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj.weight", &n);
        double want = 1.0 / sqrt(64.0), m = 0, s2 = 0;
        for (int64_t i = 0; x && i < n; i++) { m += x[i]; s2 += (double)x[i] * x[i]; }
        m /= (double)n;
        double sd = sqrt(s2 / (double)n - m * m);
        CHECKM(x && n == 512 * 64 && fabs(sd / want - 1) < 0.03 && fabs(m) < 0.05 * want, "ff weight std %.5f (want %.5f), mean %.5f",
               sd, want, m);
        free(x);
        x = zl_st_load_f32(f, "conv_norm_out.weight", &n);
        int ones = 1;
        for (int64_t i = 0; x && i < n; i++) ones &= x[i] == 1.0f;
        CHECK(x && ones);
        free(x);
        CHECK(zl_st_find(f, "conv_in.weight")->dtype == ZL_DT_F16);
        zl_st_close(f);
    }

    /* The folder runs through the ordinary pipeline code. */
    zl_model_paths mp;
    CHECK_OK(zl_model_paths_resolve(dir, &mp));
    CHECK(mp.family == ZL_FAMILY_SDXL);
    zl_text *tx = NULL;
    zl_unet *u = NULL;
    zl_vae *v = NULL;
    CHECK_OK(zl_text_load(&mp, NULL, &tx));
    CHECK_OK(zl_unet_load_model(&mp, NULL, &u));
    CHECK_OK(zl_vae_load_model(&mp, NULL, &v));
    if (tx && u && v) {
        int ctxd = zl_text_context_dim(tx), pd = zl_text_pooled_dim(tx);
        CHECK(ctxd == uc.cross_attention_dim && pd == zl_unet_pooled_dim(u));
        float *emb = malloc(sizeof(float) * 77 * ctxd), *pooled = malloc(sizeof(float) * pd);
        CHECK_OK(zl_text_encode_prompt(tx, "a photo of a dog", 0, emb, pooled));
        double re = finite_rms(emb, (size_t)77 * ctxd);
        CHECKM(re > 0.1 && re < 100, "prompt embeds rms %g", re);
        float sample[4 * 16 * 16], out[4 * 16 * 16], t = 500, ids[6] = {128, 128, 0, 0, 128, 128};
        zl_rng r;
        zl_rng_init(&r, 1, 0);
        zl_rng_normal(&r, 0, sample, 4 * 16 * 16);
        zl_unet_input in = {1, 16, 16, 77, sample, &t, emb, pooled, ids};
        CHECK_OK(zl_unet_forward(u, &in, out));
        double ru = finite_rms(out, 4 * 16 * 16);
        CHECKM(ru > 0.05 && ru < 100, "UNet output rms %g", ru);
        /* A synthetic LoRA attaches as a runtime branch and changes the output. */
        zl_lora *l = NULL;
        zl_synth_lora_opts lo = {.targets = ZL_SYNTH_LORA_ATTN | ZL_SYNTH_LORA_FF_PROJ | ZL_SYNTH_LORA_CONV, .rank = 4,
                                 .seed = 3};
        CHECK_OK(zl_synth_lora(&uc, &lo, &l));
        if (l) {
            CHECK_OK(zl_unet_add_lora(u, l, 1.0f, ZL_UNET_LORA_RUNTIME, NULL));
            float out2[4 * 16 * 16];
            CHECK_OK(zl_unet_forward(u, &in, out2));
            double d = 0;
            for (int i = 0; i < 4 * 16 * 16; i++) d += fabs(out2[i] - out[i]);
            CHECKM(isfinite(d) && d > 0, "LoRA changed the output by %g", d);
            zl_unet_clear_loras(u);
            zl_lora_free(l);
        }
        float *img = malloc(sizeof(float) * 3 * 64 * 64);
        CHECK_OK(zl_vae_decode(v, sample, 1, 8, 8, img));
        double rv = finite_rms(img, 3 * 64 * 64);
        CHECKM(rv > 0.01 && rv < 1000, "VAE decode rms %g", rv);
        free(img);
        free(emb);
        free(pooled);
    }
    zl_text_free(tx);
    zl_unet_free(u);
    zl_vae_free(v);
    zl_model_paths_free(&mp);
}

static void loras(void) {
    zl_unet_config xl;
    zl_unet_config_sdxl_base(&xl);
    zl_lora *l = NULL;
    /* kohya's default SDXL LoRA covers every Linear of the transformers: 722 modules. */
    zl_synth_lora_opts o = {.targets = ZL_SYNTH_LORA_ATTN | ZL_SYNTH_LORA_FF_PROJ, .rank = 1};
    CHECK_OK(zl_synth_lora(&xl, &o, &l));
    CHECKM(l && l->n == 722, "SDXL attention+ff+proj LoRA has %d layers", l ? l->n : -1);
    for (int i = 1; l && i < l->n; i++) CHECK(strcmp(l->layers[i - 1].module, l->layers[i].module) < 0);
    zl_lora_free(l);
    o.targets = ZL_SYNTH_LORA_ATTN;
    CHECK_OK(zl_synth_lora(&xl, &o, &l));
    CHECK(l && l->n == 70 * 8);
    zl_lora_free(l);
}

int main(void) {
    zl_set_threads(1);
    check_keys("real-keys/sdxl_base_1.0.diffusers.keys.json", "unet", ZL_FAMILY_SDXL, ZL_SYNTH_UNET);
    check_keys("real-keys/sdxl_base_1.0.diffusers.keys.json", "vae", ZL_FAMILY_SDXL, ZL_SYNTH_VAE);
    check_keys("real-keys/sdxl_base_1.0.diffusers.keys.json", "text_encoder", ZL_FAMILY_SDXL, ZL_SYNTH_TE1);
    check_keys("real-keys/sdxl_base_1.0.diffusers.keys.json", "text_encoder_2", ZL_FAMILY_SDXL, ZL_SYNTH_TE2);
    check_keys("real-keys/sd15.diffusers.keys.json", "unet", ZL_FAMILY_SD1, ZL_SYNTH_UNET);
    check_keys("real-keys/sd15.diffusers.keys.json", "vae", ZL_FAMILY_SD1, ZL_SYNTH_VAE);
    check_keys("real-keys/sd15.diffusers.keys.json", "text_encoder", ZL_FAMILY_SD1, ZL_SYNTH_TE1);
    check_configs();
    small_model();
    loras();
    /* Bad input: a folder under a regular file. */
    zl_synth_opts o = {.family = ZL_FAMILY_SD1, .parts = ZL_SYNTH_VAE};
    CHECK_ERR(zl_synth_model("/dev/null/x", &o, NULL));
    o.family = ZL_FAMILY_UNKNOWN;
    CHECK_ERR(zl_synth_model(zt_tmp("synth/c"), &o, NULL));
    return zt_done();
}
