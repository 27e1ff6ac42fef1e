/* LoRA loading: every fixture format (PEFT + adapter_config, kohya on diffusers
 * names, kohya on ldm names, text-encoder kohya) loads to the same canonical dW
 * (computed here by a naive loop in double); scales, kinds, counts, families and
 * layouts; alpha sources; the other key layouts (processor form, .lora.down,
 * adapter names, base_model.model.); and every refusal, each naming its key. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"

/* dW = scale * up @ down for one layer, [out, in*kh*kw], in double. */
static double *dense(const zl_lora_layer *y) {
    int k = y->in_features * y->kh * y->kw;
    double *w = calloc((size_t)y->out_features * (size_t)k, sizeof *w), s = (double)y->alpha / y->rank;
    for (int o = 0; o < y->out_features; o++)
        for (int r = 0; r < y->rank; r++) {
            double u = y->up[o * y->rank + r];
            for (int i = 0; i < k; i++) w[(size_t)o * k + i] += s * u * y->down[(size_t)r * k + i];
        }
    return w;
}

/* max |a-b| / max |a| over the module's dW. */
static double rel_diff(const zl_lora_layer *a, const zl_lora_layer *b) {
    int k = a->in_features * a->kh * a->kw;
    double *wa = dense(a), *wb = dense(b), md = 0, mr = 0;
    for (size_t i = 0; i < (size_t)a->out_features * k; i++) {
        md = fmax(md, fabs(wa[i] - wb[i]));
        mr = fmax(mr, fabs(wa[i]));
    }
    free(wa);
    free(wb);
    return mr > 0 ? md / mr : md;
}

static int file_tensor_count(const char *path) {
    zl_st_file *f;
    if (zl_st_open(path, &f)) return -1;
    int n = zl_st_count(f);
    zl_st_close(f);
    return n;
}

/* Compare two loaded LoRAs layer by layer. */
static void same_lora(const char *what, const zl_lora *a, const zl_lora *b) {
    CHECKM(a->n == b->n, "%s: %d vs %d layers", what, a->n, b->n);
    if (a->n != b->n) return;
    double worst = 0;
    for (int i = 0; i < a->n; i++) {
        const zl_lora_layer *x = &a->layers[i], *y = &b->layers[i];
        int same = x->part == y->part && !strcmp(x->module, y->module) && x->kind == y->kind && x->rank == y->rank &&
                   x->in_features == y->in_features && x->out_features == y->out_features && x->kh == y->kh &&
                   x->kw == y->kw;
        CHECKM(same, "%s: layer %d: %s vs %s", what, i, x->module, y->module);
        if (!same) continue;
        CHECKM(fabsf(zl_lora_scale(x) - zl_lora_scale(y)) < 1e-7f, "%s: %s scale %g vs %g", what, x->module,
               zl_lora_scale(x), zl_lora_scale(y));
        worst = fmax(worst, rel_diff(x, y));
    }
    CHECKM(worst <= 1e-6, "%s: max relative dW difference %g", what, worst);
}

static void test_fixture(const char *dir, int sdxl, int has_sgm) {
    char p[512];
    zl_unet_config cfg;
    snprintf(p, sizeof p, "%s/unet/config.json", dir);
    CHECK_OK(zl_unet_config_load(zt_data(p), &cfg));
    zl_family fam = sdxl ? ZL_FAMILY_SDXL : ZL_FAMILY_SD1;
    zl_lora_load_opts with = {.unet_config = &cfg};
    const char *names[2] = {"content", "style"};
    const float scale[2] = {1.0f, 0.5f};
    for (int w = 0; w < 2; w++) {
        zl_lora *peft = NULL, *kohya = NULL, *sgm = NULL, *bare = NULL;
        snprintf(p, sizeof p, "%s/loras/%s.peft.safetensors", dir, names[w]);
        CHECK_OK(zl_lora_load(zt_data(p), &with, &peft));
        int npeft = file_tensor_count(zt_data(p));
        snprintf(p, sizeof p, "%s/loras/%s.kohya.safetensors", dir, names[w]);
        CHECK_OK(zl_lora_load(zt_data(p), &with, &kohya));
        int nkohya = file_tensor_count(zt_data(p));
        /* no config: family and tables come from the file itself */
        CHECK_OK(zl_lora_load(zt_data(p), NULL, &bare));
        if (has_sgm) {
            snprintf(p, sizeof p, "%s/loras/%s.kohya_sgm.safetensors", dir, names[w]);
            CHECK_OK(zl_lora_load(zt_data(p), &with, &sgm));
        }
        if (!peft || !kohya || !bare || (has_sgm && !sgm)) goto next;
        char what[256];
        CHECKM(peft->n * 2 == npeft && kohya->n * 3 == nkohya, "%s %s: %d/%d layers for %d/%d tensors", dir,
               names[w], peft->n, kohya->n, npeft, nkohya);
        snprintf(what, sizeof what, "%s %s peft vs kohya", dir, names[w]);
        same_lora(what, peft, kohya);
        snprintf(what, sizeof what, "%s %s kohya with vs without config", dir, names[w]);
        same_lora(what, kohya, bare);
        if (sgm) {
            snprintf(what, sizeof what, "%s %s peft vs kohya_sgm", dir, names[w]);
            same_lora(what, peft, sgm);
            CHECK(sgm->layout == ZL_LAYOUT_KOHYA_LDM);
            CHECK(sgm->family == fam);
        }
        CHECK(peft->layout == ZL_LAYOUT_PEFT && kohya->layout == ZL_LAYOUT_KOHYA_DIFFUSERS);
        CHECKM(peft->family == fam && kohya->family == fam && bare->family == fam, "%s %s: families %s %s %s", dir,
               names[w], zl_family_name(peft->family), zl_family_name(kohya->family), zl_family_name(bare->family));
        int nconv3 = 0, nconv1 = 0;
        for (int i = 0; i < peft->n; i++) {
            const zl_lora_layer *y = &peft->layers[i];
            CHECKM(fabsf(zl_lora_scale(y) - scale[w]) < 1e-7f, "%s: scale %g", y->module, zl_lora_scale(y));
            CHECKM(y->rank == (w ? 8 : 4), "%s: rank %d", y->module, y->rank);
            CHECK(y->part == ZL_PART_UNET);
            size_t n = strlen(y->module);
            int resconv = n > 6 && (!strcmp(y->module + n - 6, ".conv1") || !strcmp(y->module + n - 6, ".conv2"));
            int proj = strstr(y->module, ".proj_in") || strstr(y->module, ".proj_out");
            if (resconv) {
                CHECKM(y->kind == ZL_LORA_CONV && y->kh == 3 && y->kw == 3, "%s: kind %d kernel %dx%d", y->module,
                       y->kind, y->kh, y->kw);
                nconv3++;
            } else if (proj && !cfg.use_linear_projection) {
                CHECKM(y->kind == ZL_LORA_CONV && y->kh == 1 && y->kw == 1, "%s: SD1 proj is a 1x1 conv", y->module);
                nconv1++;
            } else {
                CHECKM(y->kind == ZL_LORA_LINEAR && y->kh == 1 && y->kw == 1, "%s: kind %d", y->module, y->kind);
            }
        }
        if (w == 1) CHECKM(nconv3 > 0, "%s: style LoRA has LoCon 3x3 layers", dir);
        if (w == 1 && !cfg.use_linear_projection) CHECK(nconv1 > 0);
        /* lookups */
        const zl_lora_layer *y0 = &peft->layers[peft->n / 2];
        CHECK(zl_lora_find(peft, ZL_PART_UNET, y0->module) == y0);
        CHECK(zl_lora_find(peft, ZL_PART_TE1, y0->module) == NULL);
        CHECK(zl_lora_find(peft, ZL_PART_UNET, "no.such.module") == NULL);
    next:
        zl_lora_free(peft);
        zl_lora_free(kohya);
        zl_lora_free(sgm);
        zl_lora_free(bare);
    }
}

/* Fill a CLIP config from a transformers config.json, independently of the library. */
static int clip_cfg(const char *path, zl_clip_config *c) {
    json_error_t je;
    json_t *o = json_load_file(path, 0, &je);
    if (!o) return -1;
    memset(c, 0, sizeof *c);
    c->hidden = (int)json_integer_value(json_object_get(o, "hidden_size"));
    c->intermediate = (int)json_integer_value(json_object_get(o, "intermediate_size"));
    c->heads = (int)json_integer_value(json_object_get(o, "num_attention_heads"));
    c->layers = (int)json_integer_value(json_object_get(o, "num_hidden_layers"));
    c->max_pos = (int)json_integer_value(json_object_get(o, "max_position_embeddings"));
    c->vocab = (int)json_integer_value(json_object_get(o, "vocab_size"));
    c->projection_dim = (int)json_integer_value(json_object_get(o, "projection_dim"));
    json_t *arch = json_array_get(json_object_get(o, "architectures"), 0);
    c->has_projection = arch && !strcmp(json_string_value(arch), "CLIPTextModelWithProjection");
    json_decref(o);
    return 0;
}

static void test_text_encoders(const char *dir, int sdxl) {
    char p[512];
    zl_clip_config c1, c2;
    snprintf(p, sizeof p, "%s/text_encoder/config.json", dir);
    CHECK(clip_cfg(zt_data(p), &c1) == 0);
    if (sdxl) {
        snprintf(p, sizeof p, "%s/text_encoder_2/config.json", dir);
        CHECK(clip_cfg(zt_data(p), &c2) == 0);
    }
    snprintf(p, sizeof p, "%s/loras/text_encoders.kohya.safetensors", dir);
    int nt = file_tensor_count(zt_data(p));
    zl_lora *a = NULL, *b = NULL;
    zl_lora_load_opts strict = {.te1_config = &c1, .te2_config = sdxl ? &c2 : NULL};
    CHECK_OK(zl_lora_load(zt_data(p), &strict, &a));
    CHECK_OK(zl_lora_load(zt_data(p), NULL, &b));
    if (a && b) {
        CHECKM(a->n * 3 == nt, "%s: %d layers for %d tensors", p, a->n, nt);
        same_lora(p, a, b);
        CHECK(a->family == (sdxl ? ZL_FAMILY_SDXL : ZL_FAMILY_SD1));
        CHECK(b->family == a->family);
        int n1 = 0, n2 = 0;
        for (int i = 0; i < a->n; i++) {
            const zl_lora_layer *y = &a->layers[i];
            CHECKM(fabsf(zl_lora_scale(y) - 0.5f) < 1e-7f, "%s scale %g", y->module, zl_lora_scale(y));
            CHECK(y->kind == ZL_LORA_LINEAR && y->rank == 4);
            CHECKM(!strncmp(y->module, "text_model.encoder.layers.", 26) && strstr(y->module, "_proj"), "%s",
                   y->module);
            n1 += y->part == ZL_PART_TE1;
            n2 += y->part == ZL_PART_TE2;
            const zl_clip_config *c = y->part == ZL_PART_TE2 ? &c2 : &c1;
            CHECK(y->in_features == c->hidden && y->out_features == c->hidden);
        }
        /* q/k/v/out on every layer of each encoder */
        CHECKM(n1 == 4 * c1.layers && n2 == (sdxl ? 4 * c2.layers : 0), "%s: %d + %d layers", p, n1, n2);
        CHECK(zl_lora_find(a, ZL_PART_TE1, "text_model.encoder.layers.0.self_attn.q_proj") != NULL);
    }
    zl_lora_free(a);
    zl_lora_free(b);
}

/* ---------------------------------------------------------------- synthetic files */

typedef struct {
    const char *name;
    zl_dtype dt;
    int ndim;
    int64_t shape[4];
    double fill; /* value pattern: fill * (i+1) / numel, or a constant for alphas */
    int constant;
} spec;

/* Write a small safetensors file from specs (+ optional metadata). */
static int write_file(const char *path, const spec *s, int n, const zl_st_meta_kv *meta, int nmeta) {
    zl_st_entry e[32] = {0};
    void *bufs[32];
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        for (int d = 0; d < s[i].ndim; d++) numel *= s[i].shape[d];
        float *v = malloc((size_t)numel * sizeof *v);
        for (int64_t j = 0; j < numel; j++)
            v[j] = s[i].constant ? (float)s[i].fill : (float)(s[i].fill * (double)((j * 7) % 13 - 6) / 8.0);
        bufs[i] = malloc((size_t)numel * 8);
        if (s[i].dt == ZL_DT_I64) {
            for (int64_t j = 0; j < numel; j++) ((int64_t *)bufs[i])[j] = (int64_t)v[j];
        } else {
            zl_convert_from_f32(s[i].dt, v, bufs[i], (size_t)numel);
        }
        free(v);
        memset(&e[i], 0, sizeof e[i]);
        e[i].name = s[i].name;
        e[i].dtype = s[i].dt;
        e[i].ndim = s[i].ndim;
        memcpy(e[i].shape, s[i].shape, sizeof s[i].shape);
        e[i].data = bufs[i];
    }
    int rc = zl_st_write(path, e, n, meta, nmeta, NULL, 0);
    for (int i = 0; i < n; i++) free(bufs[i]);
    return rc;
}

#define Q "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
#define QD "down_blocks.1.attentions.0.transformer_blocks.0.attn1"

/* Load a synthetic file against the tiny-sdxl config; returns the status. */
static int load_tiny(const char *name, const spec *s, int n, const zl_st_meta_kv *meta, int nmeta, zl_lora **out) {
    static zl_unet_config cfg;
    static int have;
    if (!have) have = !zl_unet_config_load(zt_data("tiny-sdxl/unet/config.json"), &cfg);
    const char *path = zt_tmp(name);
    int rc = write_file(path, s, n, meta, nmeta);
    if (rc) return rc;
    zl_lora_load_opts o = {.unet_config = &cfg};
    *out = NULL;
    return zl_lora_load(path, &o, out);
}

static void expect_refusal(const char *name, const spec *s, int n, int code, const char *must1, const char *must2) {
    zl_lora *l = NULL;
    int rc = load_tiny(name, s, n, NULL, 0, &l);
    CHECKM(rc == code, "%s: status %d (%s), want %d", name, rc, zl_errmsg(), code);
    CHECKM(strstr(zl_errmsg(), must1) != NULL, "%s: message '%s' lacks '%s'", name, zl_errmsg(), must1);
    if (must2) CHECKM(strstr(zl_errmsg(), must2) != NULL, "%s: message '%s' lacks '%s'", name, zl_errmsg(), must2);
    CHECK(l == NULL);
    zl_lora_free(l);
    /* the lazy loader (merge) refuses the same files with the same message; a
     * value error shows when the values are read */
    static zl_unet_config cfg;
    static int have;
    if (!have) have = !zl_unet_config_load(zt_data("tiny-sdxl/unet/config.json"), &cfg);
    zl_lora_load_opts o = {.unet_config = &cfg};
    zl_lora_lazy *z = NULL;
    l = NULL;
    rc = zl_lora_load_lazy(zt_tmp(name), &o, &l, &z);
    if (!rc && code == ZL_ENUMERIC && l) {
        for (int i = 0; i < l->n && !rc; i++) {
            const zl_lora_layer *y = &l->layers[i];
            float *d = malloc(sizeof(float) * (size_t)y->rank * y->in_features * y->kh * y->kw);
            float *u = malloc(sizeof(float) * (size_t)y->out_features * y->rank);
            rc = d && u ? zl_lora_lazy_read(z, l, i, d, u) : ZL_ENOMEM;
            free(d);
            free(u);
        }
        zl_lora_free(l);
        zl_lora_lazy_free(z);
        l = NULL;
        z = NULL;
    }
    CHECKM(rc == code, "%s (lazy): status %d (%s), want %d", name, rc, zl_errmsg(), code);
    CHECKM(strstr(zl_errmsg(), must1) != NULL, "%s (lazy): message '%s' lacks '%s'", name, zl_errmsg(), must1);
    if (must2)
        CHECKM(strstr(zl_errmsg(), must2) != NULL, "%s (lazy): message '%s' lacks '%s'", name, zl_errmsg(), must2);
    CHECK(l == NULL && z == NULL);
}

static void test_refusals(void) {
    /* LoHa and LoKr load (test_lycoris), their Tucker-decomposed forms too (formulas checked there): here,
     * that files that were refused before load with the rank of their exact LoRA form. The
     * LoHa's Tucker sides are t [4, 4, 1, 1], w_a [4, out], w_b [4, in]. */
    spec loha[] = {
        {"lora_unet_" Q ".hada_w1_a", ZL_DT_F32, 2, {4, 64}, 1, 0},
        {"lora_unet_" Q ".hada_w1_b", ZL_DT_F32, 2, {4, 64}, 1, 0},
        {"lora_unet_" Q ".hada_t1", ZL_DT_F32, 4, {4, 4, 1, 1}, 1, 0},
        {"lora_unet_" Q ".hada_w2_a", ZL_DT_F32, 2, {4, 64}, 1, 0},
        {"lora_unet_" Q ".hada_w2_b", ZL_DT_F32, 2, {4, 64}, 1, 0},
        {"lora_unet_" Q ".hada_t2", ZL_DT_F32, 4, {4, 4, 1, 1}, 1, 0},
        {"lora_unet_" Q ".alpha", ZL_DT_F32, 0, {0}, 4, 1},
    };
    spec lokr[] = {
        {"lora_unet_" Q ".lokr_w1", ZL_DT_F32, 2, {8, 8}, 1, 0},
        {"lora_unet_" Q ".lokr_w2_a", ZL_DT_F32, 2, {2, 8}, 1, 0},
        {"lora_unet_" Q ".lokr_w2_b", ZL_DT_F32, 2, {2, 8}, 1, 0},
        {"lora_unet_" Q ".lokr_t2", ZL_DT_F32, 4, {2, 2, 1, 1}, 1, 0},
    };
    spec tucker[] = {
        {"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", ZL_DT_F16, 4, {4, 32, 1, 1}, 1, 0},
        {"lora_unet_down_blocks_0_resnets_0_conv1.lora_mid.weight", ZL_DT_F16, 4, {4, 4, 3, 3}, 1, 0},
        {"lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight", ZL_DT_F16, 4, {32, 4, 1, 1}, 1, 0},
    };
    struct {
        const char *name;
        const spec *s;
        int n, rank, kh;
    } tk[3] = {{"loha.safetensors", loha, 7, 16, 1}, {"lokr.safetensors", lokr, 4, 16, 1},
               {"tucker.safetensors", tucker, 3, 4, 3}};
    for (int i = 0; i < 3; i++) {
        zl_lora *l = NULL;
        int rc = load_tiny(tk[i].name, tk[i].s, tk[i].n, NULL, 0, &l);
        CHECKM(rc == ZL_OK && l && l->n == 1 && l->n_tucker == 1 && l->layers[0].rank == tk[i].rank &&
                   l->layers[0].kh == tk[i].kh,
               "%s: a Tucker module loads (rank %d, want %d): %s", tk[i].name, l && l->n == 1 ? l->layers[0].rank : -1,
               tk[i].rank, rc ? zl_errmsg() : "");
        zl_lora_free(l);
    }
    spec dora[] = {
        {"lora_unet_" Q ".lora_down.weight", ZL_DT_F16, 2, {4, 64}, 1, 0},
        {"lora_unet_" Q ".lora_up.weight", ZL_DT_F16, 2, {64, 4}, 1, 0},
        {"lora_unet_" Q ".dora_scale", ZL_DT_F16, 2, {1, 64}, 1, 0},
    };
    expect_refusal("dora.safetensors", dora, 3, ZL_EUNSUPPORTED, "lora_unet_" Q ".dora_scale", "DoRA");
    spec peft_dora[] = {
        {"unet." QD ".to_q.lora_A.weight", ZL_DT_F32, 2, {4, 64}, 1, 0},
        {"unet." QD ".to_q.lora_B.weight", ZL_DT_F32, 2, {64, 4}, 1, 0},
        {"unet." QD ".to_q.lora_magnitude_vector", ZL_DT_F32, 1, {64}, 1, 0},
    };
    expect_refusal("peft_dora.safetensors", peft_dora, 3, ZL_EUNSUPPORTED, "unet." QD ".to_q.lora_magnitude_vector",
                   "DoRA");
    /* unknown module: down_blocks.0 of this model has no attentions */
    spec unknown[] = {
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", ZL_DT_F16, 2, {4, 32}, 1, 0},
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", ZL_DT_F16, 2, {32, 4}, 1, 0},
        {"lora_unet_" Q ".lora_down.weight", ZL_DT_F16, 2, {4, 64}, 1, 0},
        {"lora_unet_" Q ".lora_up.weight", ZL_DT_F16, 2, {64, 4}, 1, 0},
    };
    expect_refusal("unknown.safetensors", unknown, 4, ZL_ENOTFOUND,
                   "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", "no module");
    /* an underscore-guessing loader would accept this: "to_q" split differently */
    spec guessed[] = {
        {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to.q.lora_down.weight", ZL_DT_F16, 2, {4, 64}, 1, 0},
    };
    expect_refusal("guessed.safetensors", guessed, 1, ZL_EFORMAT,
                   "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to.q.lora_down.weight", NULL);
    spec rank_mismatch[] = {
        {"lora_unet_" Q ".lora_down.weight", ZL_DT_F16, 2, {4, 64}, 1, 0},
        {"lora_unet_" Q ".lora_up.weight", ZL_DT_F16, 2, {64, 3}, 1, 0},
    };
    expect_refusal("rank.safetensors", rank_mismatch, 2, ZL_ESHAPE, "lora_unet_" Q ".lora_up.weight", "lora_unet_" Q ".lora_down.weight");
    spec width_mismatch[] = {
        {"unet." QD ".to_q.lora_A.weight", ZL_DT_F32, 2, {4, 32}, 1, 0},
        {"unet." QD ".to_q.lora_B.weight", ZL_DT_F32, 2, {64, 4}, 1, 0},
    };
    expect_refusal("width.safetensors", width_mismatch, 2, ZL_ESHAPE, "unet." QD ".to_q.lora_A.weight", "[4, 32]");
    spec kernel_mismatch[] = {
        {"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", ZL_DT_F16, 4, {4, 32, 1, 1}, 1, 0},
        {"lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight", ZL_DT_F16, 4, {32, 4, 1, 1}, 1, 0},
    };
    expect_refusal("kernel.safetensors", kernel_mismatch, 2, ZL_ESHAPE,
                   "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", "3x3");
    spec no_up[] = {
        {"lora_unet_" Q ".lora_down.weight", ZL_DT_F16, 2, {4, 64}, 1, 0},
        {"lora_unet_" Q ".alpha", ZL_DT_F16, 0, {0}, 4, 1},
    };
    expect_refusal("noup.safetensors", no_up, 2, ZL_EFORMAT, "lora_unet_" Q, "up");
    spec nan[] = {
        {"lora_unet_" Q ".lora_down.weight", ZL_DT_F32, 2, {4, 64}, NAN, 1},
        {"lora_unet_" Q ".lora_up.weight", ZL_DT_F32, 2, {64, 4}, 1, 0},
    };
    expect_refusal("nan.safetensors", nan, 2, ZL_ENUMERIC, "lora_unet_" Q ".lora_down.weight", "NaN");
    spec inf16[] = {
        {"lora_unet_" Q ".lora_down.weight", ZL_DT_F16, 2, {4, 64}, 1, 0},
        {"lora_unet_" Q ".lora_up.weight", ZL_DT_F16, 2, {64, 4}, INFINITY, 1},
    };
    expect_refusal("inf16.safetensors", inf16, 2, ZL_ENUMERIC, "lora_unet_" Q ".lora_up.weight", "Inf");
    spec nan16[] = {
        {"lora_unet_" Q ".lora_down.weight", ZL_DT_BF16, 2, {4, 64}, NAN, 1},
        {"lora_unet_" Q ".lora_up.weight", ZL_DT_BF16, 2, {64, 4}, 1, 0},
    };
    expect_refusal("nanbf16.safetensors", nan16, 2, ZL_ENUMERIC, "lora_unet_" Q ".lora_down.weight", "NaN");
    spec inf_alpha[] = {
        {"lora_unet_" Q ".lora_down.weight", ZL_DT_F32, 2, {4, 64}, 1, 0},
        {"lora_unet_" Q ".lora_up.weight", ZL_DT_F32, 2, {64, 4}, 1, 0},
        {"lora_unet_" Q ".alpha", ZL_DT_F32, 0, {0}, INFINITY, 1},
    };
    expect_refusal("infalpha.safetensors", inf_alpha, 3, ZL_ENUMERIC, "lora_unet_" Q ".alpha", "Inf");
    /* the same module twice, once per naming scheme */
    spec twice[] = {
        {"lora_unet_" Q ".lora_down.weight", ZL_DT_F16, 2, {4, 64}, 1, 0},
        {"lora_unet_" Q ".lora_up.weight", ZL_DT_F16, 2, {64, 4}, 1, 0},
        {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight", ZL_DT_F16, 2, {4, 64}, 1, 0},
        {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight", ZL_DT_F16, 2, {64, 4}, 1, 0},
    };
    expect_refusal("twice.safetensors", twice, 4, ZL_EFORMAT, "lora_unet_" Q ".lora_down.weight",
                   "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight");

    /* SD 2.x is a different UNet (context 1024, linear projections): refused, not mapped onto SD1 */
    spec sd2[] = {
        {"lora_unet_" Q ".lora_down.weight", ZL_DT_F16, 2, {4, 64}, 1, 0},
        {"lora_unet_" Q ".lora_up.weight", ZL_DT_F16, 2, {64, 4}, 1, 0},
    };
    zl_st_meta_kv sd2m = {"ss_base_model_version", "sd_v2"};
    zl_lora *l = NULL;
    CHECK(write_file(zt_tmp("sd2.safetensors"), sd2, 2, &sd2m, 1) == ZL_OK);
    CHECK(zl_lora_load(zt_tmp("sd2.safetensors"), NULL, &l) == ZL_EUNSUPPORTED);
    CHECKM(strstr(zl_errmsg(), "sd_v2") != NULL, "%s", zl_errmsg());
    CHECK(l == NULL);

    /* family: an SDXL LoRA for an SD1 model names both families */
    zl_lora_load_opts o = {.expect_family = ZL_FAMILY_SD1};
    int rc = zl_lora_load(zt_data("mini-sdxl/loras/text_encoders.kohya.safetensors"), &o, &l);
    CHECKM(rc != ZL_OK && strstr(zl_errmsg(), "sdxl") && strstr(zl_errmsg(), "sd1"), "family mismatch: %s",
           zl_errmsg());
    zl_lora_free(l);
    zl_unet_config sd1;
    CHECK_OK(zl_unet_config_load(zt_data("tiny-sd15/unet/config.json"), &sd1));
    zl_lora_load_opts o2 = {.unet_config = &sd1};
    rc = zl_lora_load(zt_data("mini-sdxl/loras/content.kohya_sgm.safetensors"), &o2, &l);
    CHECKM(rc != ZL_OK && strstr(zl_errmsg(), "sdxl") && strstr(zl_errmsg(), "sd1"), "config mismatch: %s",
           zl_errmsg());
    zl_lora_free(l);
}

/* ---------------------------------------------------------------- alpha + layouts */

static float scale_of(const zl_lora *l, const char *module) {
    const zl_lora_layer *y = l ? zl_lora_find(l, ZL_PART_UNET, module) : NULL;
    return y ? zl_lora_scale(y) : -1.0f;
}

static void test_alpha(void) {
    zl_lora *l = NULL;
    /* .alpha in I64 (diffusers' kohya converter), BF16, F32 [1]; alpha 0 means rank */
    const zl_dtype dts[3] = {ZL_DT_I64, ZL_DT_BF16, ZL_DT_F32};
    for (int i = 0; i < 3; i++) {
        spec s[] = {
            {"lora_unet_" Q ".lora_down.weight", ZL_DT_F16, 2, {4, 64}, 1, 0},
            {"lora_unet_" Q ".lora_up.weight", ZL_DT_F16, 2, {64, 4}, 1, 0},
            {"lora_unet_" Q ".alpha", dts[i], i == 2 ? 1 : 0, {1}, 2, 1},
        };
        CHECK_OK(load_tiny("alpha.safetensors", s, 3, NULL, 0, &l));
        CHECKM(scale_of(l, QD ".to_q") == 0.5f, "alpha dtype %s: scale %g", zl_dtype_name(dts[i]), scale_of(l, QD ".to_q"));
        zl_lora_free(l);
        s[2].fill = 0;
        CHECK_OK(load_tiny("alpha0.safetensors", s, 3, NULL, 0, &l));
        CHECK(scale_of(l, QD ".to_q") == 1.0f);
        zl_lora_free(l);
    }
    /* kohya without alpha: scale 1 */
    spec kn[] = {
        {"lora_unet_" Q ".lora_down.weight", ZL_DT_F16, 2, {4, 64}, 1, 0},
        {"lora_unet_" Q ".lora_up.weight", ZL_DT_F16, 2, {64, 4}, 1, 0},
    };
    CHECK_OK(load_tiny("noalpha.safetensors", kn, 2, NULL, 0, &l));
    CHECK(scale_of(l, QD ".to_q") == 1.0f);
    zl_lora_free(l);

    /* PEFT with lora_adapter_metadata: plain, per component, rsLoRA, alpha_pattern */
    spec pf[] = {
        {"unet." QD ".to_q.lora_A.weight", ZL_DT_F32, 2, {4, 64}, 1, 0},
        {"unet." QD ".to_q.lora_B.weight", ZL_DT_F32, 2, {64, 4}, 1, 0},
        {"unet." QD ".to_k.lora_A.weight", ZL_DT_F32, 2, {4, 64}, 1, 0},
        {"unet." QD ".to_k.lora_B.weight", ZL_DT_F32, 2, {64, 4}, 1, 0},
    };
    zl_st_meta_kv m1 = {"lora_adapter_metadata", "{\"r\": 4, \"lora_alpha\": 2}"};
    CHECK_OK(load_tiny("meta1.safetensors", pf, 4, &m1, 1, &l));
    CHECK(scale_of(l, QD ".to_q") == 0.5f && scale_of(l, QD ".to_k") == 0.5f);
    zl_lora_free(l);
    zl_st_meta_kv m2 = {"lora_adapter_metadata", "{\"unet.r\": 4, \"unet.lora_alpha\": 1, \"text_encoder.lora_alpha\": 8}"};
    CHECK_OK(load_tiny("meta2.safetensors", pf, 4, &m2, 1, &l));
    CHECK(scale_of(l, QD ".to_q") == 0.25f);
    zl_lora_free(l);
    zl_st_meta_kv m3 = {"lora_adapter_metadata", "{\"r\": 4, \"lora_alpha\": 3, \"use_rslora\": true}"};
    CHECK_OK(load_tiny("meta3.safetensors", pf, 4, &m3, 1, &l));
    CHECKM(fabsf(scale_of(l, QD ".to_q") - 1.5f) < 1e-6f, "rsLoRA scale %g (want 3/sqrt(4))", scale_of(l, QD ".to_q"));
    zl_lora_free(l);
    zl_st_meta_kv m4 = {"lora_adapter_metadata",
                        "{\"r\": 4, \"lora_alpha\": 4, \"alpha_pattern\": {\"attn1.to_k\": 1}}"};
    CHECK_OK(load_tiny("meta4.safetensors", pf, 4, &m4, 1, &l));
    CHECK(scale_of(l, QD ".to_q") == 1.0f && scale_of(l, QD ".to_k") == 0.25f);
    zl_lora_free(l);
    zl_st_meta_kv m5 = {"lora_adapter_metadata", "{\"r\": 8, \"lora_alpha\": 4}"};
    CHECK(load_tiny("meta5.safetensors", pf, 4, &m5, 1, &l) == ZL_ESHAPE);
    CHECKM(strstr(zl_errmsg(), "rank 8") != NULL, "%s", zl_errmsg());

    /* adapter_config.json: beside the file by stem, then given explicitly (which wins over metadata) */
    CHECK_OK(zl_write_file_atomic(zt_tmp("side.adapter_config.json"), "{\"r\": 4, \"lora_alpha\": 1}", 25, NULL, 0));
    CHECK_OK(load_tiny("side.peft.safetensors", pf, 4, NULL, 0, &l));
    CHECK(scale_of(l, QD ".to_q") == 0.25f);
    zl_lora_free(l);
    CHECK_OK(zl_write_file_atomic(zt_tmp("given.json"), "{\"r\": 4, \"lora_alpha\": 8}", 25, NULL, 0));
    zl_unet_config cfg;
    CHECK_OK(zl_unet_config_load(zt_data("tiny-sdxl/unet/config.json"), &cfg));
    zl_lora_load_opts o = {.unet_config = &cfg, .adapter_config = zt_tmp("given.json")};
    CHECK_OK(write_file(zt_tmp("meta1.safetensors"), pf, 4, &m1, 1));
    CHECK_OK(zl_lora_load(zt_tmp("meta1.safetensors"), &o, &l));
    CHECK(scale_of(l, QD ".to_q") == 2.0f);
    zl_lora_free(l);
    /* nothing anywhere: alpha = r */
    CHECK_OK(load_tiny("bare.safetensors", pf, 4, NULL, 0, &l));
    CHECK(scale_of(l, QD ".to_q") == 1.0f);
    zl_lora_free(l);
}

/* The other layouts all name the same module, with the same values. */
static void test_layouts(void) {
    const char *forms[][2] = {
        {"unet." QD ".to_out.0.lora_A.weight", "unet." QD ".to_out.0.lora_B.weight"},
        {"unet." QD ".to_out.0.lora_A.default.weight", "unet." QD ".to_out.0.lora_B.default.weight"},
        {"base_model.model." QD ".to_out.0.lora_A.weight", "base_model.model." QD ".to_out.0.lora_B.weight"},
        {"unet." QD ".to_out.0.lora.down.weight", "unet." QD ".to_out.0.lora.up.weight"},
        {"unet." QD ".processor.to_out_lora.down.weight", "unet." QD ".processor.to_out_lora.up.weight"},
        {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_down.weight",
         "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_up.weight"},
        {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_out_0.lora_down.weight",
         "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_out_0.lora_up.weight"},
    };
    const zl_lora_layout want[] = {ZL_LAYOUT_PEFT, ZL_LAYOUT_PEFT, ZL_LAYOUT_PEFT, ZL_LAYOUT_DIFFUSERS_OLD,
                                   ZL_LAYOUT_DIFFUSERS_OLD, ZL_LAYOUT_KOHYA_DIFFUSERS, ZL_LAYOUT_KOHYA_LDM};
    zl_lora *ref = NULL;
    for (int i = 0; i < 7; i++) {
        spec s[] = {
            {forms[i][0], ZL_DT_F32, 2, {4, 64}, 1, 0},
            {forms[i][1], ZL_DT_F32, 2, {64, 4}, 0.5, 0},
        };
        zl_lora *l = NULL;
        CHECK_OK(load_tiny("layout.safetensors", s, 2, NULL, 0, &l));
        if (!l) continue;
        CHECKM(l->n == 1 && !strcmp(l->layers[0].module, QD ".to_out.0") && l->layout == want[i],
               "%s: %d layers, %s, layout %d", forms[i][0], l->n, l->n ? l->layers[0].module : "-", l->layout);
        if (!ref) ref = l;
        else {
            same_lora(forms[i][0], ref, l);
            zl_lora_free(l);
        }
    }
    zl_lora_free(ref);
    /* text encoders in PEFT and old diffusers forms */
    const char *te[][2] = {
        {"text_encoder.text_model.encoder.layers.1.self_attn.out_proj.lora_A.weight",
         "text_encoder.text_model.encoder.layers.1.self_attn.out_proj.lora_B.weight"},
        {"text_encoder.text_model.encoder.layers.1.self_attn.to_out_lora.down.weight",
         "text_encoder.text_model.encoder.layers.1.self_attn.to_out_lora.up.weight"},
        {"text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj.lora_A.weight",
         "text_encoder_2.text_model.encoder.layers.1.self_attn.out_proj.lora_B.weight"},
    };
    for (int i = 0; i < 3; i++) {
        spec s[] = {
            {te[i][0], ZL_DT_F32, 2, {4, 32}, 1, 0},
            {te[i][1], ZL_DT_F32, 2, {32, 4}, 1, 0},
        };
        zl_lora *l = NULL;
        CHECK_OK(load_tiny("te.safetensors", s, 2, NULL, 0, &l));
        if (!l) continue;
        CHECK(l->n == 1 && l->layers[0].part == (i == 2 ? ZL_PART_TE2 : ZL_PART_TE1) &&
              !strcmp(l->layers[0].module, "text_model.encoder.layers.1.self_attn.out_proj"));
        if (i == 2) CHECK(l->family == ZL_FAMILY_SDXL);
        zl_lora_free(l);
    }
}

/* Family rules without a model: names that exist in both standard UNets decide nothing. */
static void test_family_rules(void) {
    spec both[] = {
        {"lora_unet_" Q ".lora_down.weight", ZL_DT_F16, 2, {4, 64}, 1, 0},
        {"lora_unet_" Q ".lora_up.weight", ZL_DT_F16, 2, {64, 4}, 1, 0},
    };
    zl_lora *l = NULL;
    CHECK_OK(write_file(zt_tmp("both.safetensors"), both, 2, NULL, 0));
    CHECK_OK(zl_lora_load(zt_tmp("both.safetensors"), NULL, &l));
    CHECK(l && l->family == ZL_FAMILY_UNKNOWN && l->n == 1 && !strcmp(l->layers[0].module, QD ".to_q"));
    zl_lora_free(l);
    zl_lora_load_opts o = {.expect_family = ZL_FAMILY_SD1};
    CHECK_OK(zl_lora_load(zt_tmp("both.safetensors"), &o, &l));
    CHECK(l && l->family == ZL_FAMILY_SD1);
    zl_lora_free(l);
    /* modelspec.architecture decides */
    zl_st_meta_kv ms = {"modelspec.architecture", "stable-diffusion-xl-v1-base/lora"};
    CHECK_OK(write_file(zt_tmp("ms.safetensors"), both, 2, &ms, 1));
    CHECK_OK(zl_lora_load(zt_tmp("ms.safetensors"), NULL, &l));
    CHECK(l && l->family == ZL_FAMILY_SDXL);
    zl_lora_free(l);
    /* the cross-attention width decides: 768 -> SD 1.x */
    spec ctx[] = {
        {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight", ZL_DT_F32, 2, {4, 768}, 1, 0},
        {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight", ZL_DT_F32, 2, {640, 4}, 1, 0},
    };
    CHECK_OK(write_file(zt_tmp("ctx.safetensors"), ctx, 2, NULL, 0));
    CHECK_OK(zl_lora_load(zt_tmp("ctx.safetensors"), NULL, &l));
    CHECK(l && l->family == ZL_FAMILY_SD1);
    zl_lora_free(l);
    /* SD1 proj_in is a 1x1 conv, SDXL's a Linear: a 4-D LoRA on it says SD 1.x */
    spec proj[] = {
        {"lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight", ZL_DT_F16, 4, {4, 640, 1, 1}, 1, 0},
        {"lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight", ZL_DT_F16, 4, {640, 4, 1, 1}, 1, 0},
    };
    CHECK_OK(write_file(zt_tmp("proj.safetensors"), proj, 2, NULL, 0));
    CHECK_OK(zl_lora_load(zt_tmp("proj.safetensors"), NULL, &l));
    CHECK(l && l->family == ZL_FAMILY_SD1 && l->layers[0].kind == ZL_LORA_CONV);
    zl_lora_free(l);
}

/* ---------------------------------------------------------------- ComfyUI's generic keys */

/* Find the key of `f` that is prefix + P + ".weight" with P's dots as underscores equal to
 * `flat`; return P (static buffer) or NULL. The dotted path comes from the checkpoint's own
 * key list, so nothing is guessed. */
static const char *dotted_from(const zl_st_file *f, const char *prefix, const char *flat) {
    static char buf[512];
    size_t pl = strlen(prefix);
    for (int i = 0; i < zl_st_count(f); i++) {
        const char *k = zl_st_at(f, i)->name;
        size_t n = strlen(k);
        if (strncmp(k, prefix, pl) || n < pl + 8 || strcmp(k + n - 7, ".weight") || n - pl - 7 >= sizeof buf) continue;
        memcpy(buf, k + pl, n - pl - 7);
        buf[n - pl - 7] = 0;
        int same = strlen(buf) == strlen(flat);
        for (size_t j = 0; same && buf[j]; j++) same = (buf[j] == '.' ? '_' : buf[j]) == flat[j];
        if (same) return buf;
    }
    return NULL;
}

/* Rewrite a kohya file into ComfyUI's generic form (what its LoRA extraction and training
 * nodes save): diffusion_model.<ldm path>.lora_up.weight, text_encoders.clip_l.transformer.<HF
 * path>... (clip_g for SDXL's second encoder), with or without the alpha tensors. */
static int write_comfy(const char *dir, const char *src, int keep_alpha, const char *out) {
    char p[512];
    zl_st_file *f = NULL, *ckpt = NULL, *te[2] = {NULL, NULL};
    snprintf(p, sizeof p, "%s/loras/%s", dir, src);
    int rc = zl_st_open(zt_data(p), &f);
    snprintf(p, sizeof p, "%s/single_file.safetensors", dir);
    if (!rc) rc = zl_st_open(zt_data(p), &ckpt);
    snprintf(p, sizeof p, "%s/text_encoder/model.safetensors", dir);
    if (!rc) rc = zl_st_open(zt_data(p), &te[0]);
    snprintf(p, sizeof p, "%s/text_encoder_2/model.safetensors", dir);
    if (!rc && access(zt_data(p), F_OK) == 0) rc = zl_st_open(zt_data(p), &te[1]);
    int n = rc ? 0 : zl_st_count(f), m = 0;
    zl_st_entry *e = calloc((size_t)(n ? n : 1), sizeof *e);
    char **names = calloc((size_t)(n ? n : 1), sizeof *names);
    for (int i = 0; i < n && !rc; i++) {
        const zl_st_tensor *t = zl_st_at(f, i);
        const char *dot = strchr(t->name, '.');
        if (!dot) { rc = -1; break; }
        if (!keep_alpha && !strcmp(dot, ".alpha")) continue;
        char flat[512];
        const char *pre, *path = NULL;
        snprintf(flat, sizeof flat, "%.*s", (int)(dot - t->name), t->name);
        if (!strncmp(flat, "lora_unet_", 10)) pre = "diffusion_model.", path = dotted_from(ckpt, "model.diffusion_model.", flat + 10);
        else if (!strncmp(flat, "lora_te2_", 9)) pre = "text_encoders.clip_g.transformer.", path = te[1] ? dotted_from(te[1], "", flat + 9) : NULL;
        else if (!strncmp(flat, "lora_te1_", 9)) pre = "text_encoders.clip_l.transformer.", path = dotted_from(te[0], "", flat + 9);
        else if (!strncmp(flat, "lora_te_", 8)) pre = "text_encoders.clip_l.transformer.", path = dotted_from(te[0], "", flat + 8);
        else pre = "";
        if (!path) { CHECKM(0, "%s: no checkpoint key for '%s'", src, t->name); rc = -1; break; }
        size_t len = strlen(pre) + strlen(path) + strlen(dot) + 1;
        names[m] = malloc(len);
        snprintf(names[m], len, "%s%s%s", pre, path, dot);
        e[m].name = names[m];
        e[m].dtype = t->dtype;
        e[m].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) e[m].shape[d] = t->shape[d];
        e[m].data = t->data;
        m++;
    }
    if (!rc) rc = zl_st_write(out, e, m, NULL, 0, NULL, 0);
    for (int i = 0; i < m; i++) free(names[i]);
    free(names);
    free(e);
    zl_st_close(f);
    zl_st_close(ckpt);
    zl_st_close(te[0]);
    zl_st_close(te[1]);
    return rc;
}

static void test_comfy(const char *dir, int sdxl) {
    const char *src[3] = {"content.kohya_sgm.safetensors", "style.kohya_sgm.safetensors", "text_encoders.kohya.safetensors"};
    zl_family fam = sdxl ? ZL_FAMILY_SDXL : ZL_FAMILY_SD1;
    for (int s = 0; s < 3; s++)
        for (int keep = 0; keep < 2; keep++) {
            const char *out = zt_tmp("comfy.safetensors");
            CHECKM(write_comfy(dir, src[s], keep, out) == 0, "%s %s: writing the ComfyUI form", dir, src[s]);
            char p[512], what[600];
            snprintf(p, sizeof p, "%s/loras/%s", dir, src[s]);
            zl_lora *a = NULL, *b = NULL;
            CHECK_OK(zl_lora_load(zt_data(p), NULL, &a));
            CHECK_OK(zl_lora_load(out, NULL, &b));
            remove(out);
            if (a && b) {
                snprintf(what, sizeof what, "%s %s as ComfyUI keys%s", dir, src[s], keep ? " with alpha" : "");
                /* without alpha tensors every layer's scale is 1 (alpha = rank), as ComfyUI reads it */
                if (!keep)
                    for (int i = 0; i < a->n; i++) a->layers[i].alpha = (float)a->layers[i].rank;
                same_lora(what, a, b);
                /* CLIP-L keys alone cannot tell SD 1.x from SDXL's first encoder */
                zl_family want = !sdxl && s == 2 ? ZL_FAMILY_UNKNOWN : fam;
                CHECKM(b->family == want, "%s: family %s", what, zl_family_name(b->family));
                CHECKM(b->layout == ZL_LAYOUT_COMFY, "%s: layout %d", what, b->layout);
                int scale_one = 1;
                for (int i = 0; i < b->n; i++) scale_one &= fabsf(zl_lora_scale(&b->layers[i]) - 1.0f) < 1e-7f;
                if (!keep) CHECKM(scale_one, "%s: every scale 1", what);
                if (keep && s > 0) CHECKM(!scale_one, "%s: the alpha tensors are read", what);
            }
            zl_lora_free(a);
            zl_lora_free(b);
        }
}

int main(void) {
    test_fixture("tiny-sdxl", 1, 0);
    test_fixture("mini-sdxl", 1, 1);
    test_fixture("tiny-sd15", 0, 1);
    test_text_encoders("mini-sdxl", 1);
    test_text_encoders("tiny-sd15", 0);
    test_refusals();
    test_alpha();
    test_layouts();
    test_family_rules();
    test_comfy("mini-sdxl", 1);
    test_comfy("tiny-sd15", 0);
    return zt_done();
}
