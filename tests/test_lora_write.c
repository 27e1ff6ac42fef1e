/* LoRA writer tests: load -> write kohya -> load -> write PEFT -> load gives the
 * same tensors; kohya files for SDXL carry exactly the ldm key set of the
 * fixtures' *.kohya_sgm files (SD 1.x: the diffusers-name set of *.kohya, as
 * kohya writes them); metadata; convert CLI behaviour on bad input. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testlib.h"

static zl_lora *load(const char *p) {
    zl_lora *l = NULL;
    int rc = zl_lora_load(p, NULL, &l);
    CHECKM(rc == ZL_OK, "load %s: %s", p, zl_errmsg());
    return l;
}

/* f32 value after a round trip through dtype dt */
static float through(zl_dtype dt, float v) {
    if (dt == ZL_DT_F16) return zl_f16_to_f32(zl_f32_to_f16(v));
    if (dt == ZL_DT_BF16) return zl_bf16_to_f32(zl_f32_to_bf16(v));
    return v;
}

/* Same layers, shapes and values. folded: b holds a's scale in its up and alpha = rank. */
static void same_lora(const char *what, const zl_lora *a, const zl_lora *b, int folded) {
    CHECKM(a->n == b->n, "%s: %d vs %d layers", what, a->n, b->n);
    CHECKM(a->family == b->family, "%s: family", what);
    int bad = 0;
    for (int i = 0; i < a->n && i < b->n; i++) {
        const zl_lora_layer *x = &a->layers[i], *y = &b->layers[i];
        if (x->part != y->part || strcmp(x->module, y->module) || x->kind != y->kind || x->rank != y->rank ||
            x->in_features != y->in_features || x->out_features != y->out_features || x->kh != y->kh || x->kw != y->kw ||
            x->dtype != y->dtype) {
            bad++;
            fprintf(stderr, "  %s: layer %d (%s) differs in name/shape/dtype\n", what, i, x->module);
            continue;
        }
        size_t nd = (size_t)x->rank * x->in_features * x->kh * x->kw, nu = (size_t)x->out_features * x->rank;
        if (memcmp(x->down, y->down, nd * sizeof(float))) bad++;
        float s = folded ? zl_lora_scale(x) : 1.0f;
        for (size_t k = 0; k < nu; k++)
            if (through(x->dtype, x->up[k] * s) != y->up[k]) {
                bad++;
                fprintf(stderr, "  %s: %s up[%zu] %.9g vs %.9g\n", what, x->module, k, (double)(x->up[k] * s), (double)y->up[k]);
                break;
            }
        if (folded ? y->alpha != (float)y->rank : x->alpha != y->alpha) {
            bad++;
            fprintf(stderr, "  %s: %s alpha %g vs %g\n", what, x->module, (double)x->alpha, (double)y->alpha);
        }
    }
    CHECKM(bad == 0, "%s: %d differences", what, bad);
}

static const char *meta(const zl_lora *l, const char *k) {
    for (int i = 0; i < l->n_meta; i++)
        if (!strcmp(l->meta_k[i], k)) return l->meta_v[i];
    return NULL;
}

static void round_trip(const char *rel) {
    const char *in = strdup(zt_data(rel));
    zl_lora *a = load(in);
    if (!a) { free((void *)in); return; }
    const char *k = strdup(zt_tmp("rt.kohya.safetensors")), *p = strdup(zt_tmp("rt.peft.safetensors"));
    zl_lora_write_opts wo = {.format = ZL_FORMAT_KOHYA, .inputs = &in, .n_inputs = 1, .method = "convert"};
    CHECK_OK(zl_lora_write(k, a, &wo));
    zl_lora *b = load(k);
    char what[600];
    if (b) {
        snprintf(what, sizeof what, "%s -> kohya", rel);
        same_lora(what, a, b, 0);
        CHECK(b->layout == (a->family == ZL_FAMILY_SDXL && a->layers[0].part == ZL_PART_UNET ? ZL_LAYOUT_KOHYA_LDM
                                                                                             : ZL_LAYOUT_KOHYA_DIFFUSERS));
        wo.format = ZL_FORMAT_PEFT;
        wo.inputs = &k;
        CHECK_OK(zl_lora_write(p, b, &wo));
        zl_lora *c = load(p);
        if (c) {
            snprintf(what, sizeof what, "%s -> kohya -> peft", rel);
            same_lora(what, a, c, 1);
            CHECK(c->layout == ZL_LAYOUT_PEFT);
            /* PEFT metadata: every component has r = lora_alpha */
            const char *js = meta(c, "lora_adapter_metadata");
            CHECK(js != NULL);
            json_t *j = js ? json_loads(js, 0, NULL) : NULL;
            CHECK(j != NULL);
            if (j) {
                json_t *r = json_object_get(j, a->layers[0].part == ZL_PART_UNET ? "unet.r" : "text_encoder.r");
                json_t *al = json_object_get(j, a->layers[0].part == ZL_PART_UNET ? "unet.lora_alpha" : "text_encoder.lora_alpha");
                CHECK(json_is_integer(r) && json_is_integer(al) && json_integer_value(r) == json_integer_value(al));
                json_decref(j);
            }
            /* and back to kohya from PEFT: the folded values stay */
            wo.format = ZL_FORMAT_KOHYA;
            wo.inputs = &p;
            const char *k2 = zt_tmp("rt2.kohya.safetensors");
            CHECK_OK(zl_lora_write(k2, c, &wo));
            zl_lora *d = load(k2);
            if (d) same_lora("peft -> kohya", c, d, 0);
            zl_lora_free(d);
        }
        zl_lora_free(c);
    }
    zl_lora_free(a);
    zl_lora_free(b);
    free((void *)in);
    free((void *)k);
    free((void *)p);
}

/* The key set (and dtypes/shapes) a converted file has equals a fixture file's. */
static void same_keys(const char *what, const char *written, const char *fixture) {
    zl_st_file *w = NULL, *f = NULL;
    CHECK_OK(zl_st_open(written, &w));
    CHECK_OK(zl_st_open(fixture, &f));
    if (w && f) {
        CHECKM(zl_st_count(w) == zl_st_count(f), "%s: %d keys vs %d in %s", what, zl_st_count(w), zl_st_count(f), fixture);
        int missing = 0;
        for (int i = 0; i < zl_st_count(f); i++) {
            const zl_st_tensor *t = zl_st_at(f, i), *u = zl_st_find(w, t->name);
            if (!u) {
                if (missing++ < 3) fprintf(stderr, "  %s: missing %s\n", what, t->name);
                continue;
            }
            int same = u->ndim == t->ndim && u->dtype == t->dtype;
            for (int d = 0; same && d < t->ndim; d++) same = u->shape[d] == t->shape[d];
            if (!same) missing++;
        }
        CHECKM(missing == 0, "%s: %d keys missing or different", what, missing);
    }
    zl_st_close(w);
    zl_st_close(f);
}

static void test_key_sets(void) {
    static const struct { const char *from, *fixture; } cases[] = {
        /* SDXL: PEFT / diffusers-name kohya in, ldm-name kohya out, exactly like *.kohya_sgm */
        {"mini-sdxl/loras/content.peft.safetensors", "mini-sdxl/loras/content.kohya_sgm.safetensors"},
        {"mini-sdxl/loras/style.kohya.safetensors", "mini-sdxl/loras/style.kohya_sgm.safetensors"},
        {"mini-sdxl/loras/text_encoders.kohya.safetensors", "mini-sdxl/loras/text_encoders.kohya.safetensors"},
        /* SD 1.x: kohya writes diffusers names */
        {"tiny-sd15/loras/style.kohya_sgm.safetensors", "tiny-sd15/loras/style.kohya.safetensors"},
        {"tiny-sd15/loras/content.peft.safetensors", "tiny-sd15/loras/content.kohya.safetensors"},
        {"tiny-sd15/loras/text_encoders.kohya.safetensors", "tiny-sd15/loras/text_encoders.kohya.safetensors"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *in = strdup(zt_data(cases[i].from)), *fx = strdup(zt_data(cases[i].fixture));
        const char *o = zt_tmp("keys.safetensors");
        /* dtype as the fixture's (the PEFT fixtures are F32) */
        zl_lora *ref = load(fx);
        const char *dt = ref && ref->layers[0].dtype == ZL_DT_BF16 ? "bf16" : ref && ref->layers[0].dtype == ZL_DT_F16 ? "f16" : "f32";
        int code = zt_cli("convert '%s' -o '%s' --format kohya --dtype %s -q", in, o, dt);
        CHECKM(code == 0, "convert %s: %s", cases[i].from, zt_err);
        if (code == 0) same_keys(cases[i].from, o, fx);
        /* the values are the fixture's too (all formats hold identical values) */
        zl_lora *w = code == 0 ? load(o) : NULL;
        if (w && ref) same_lora(cases[i].from, ref, w, 0);
        zl_lora_free(w);
        zl_lora_free(ref);
        free((void *)in);
        free((void *)fx);
    }
}

static void test_metadata(void) {
    const char *in = strdup(zt_data("mini-sdxl/loras/style.kohya_sgm.safetensors"));
    const char *o = zt_tmp("meta.safetensors");
    CHECK(zt_cli("convert '%s' -o '%s' --title 'My style'", in, o) == 0);
    zl_lora *l = load(o);
    char hex[65];
    CHECK_OK(zl_sha256_file(in, hex));
    if (l) {
        const char *exp[][2] = {
            {"ss_network_module", "networks.lora"}, {"ss_network_dim", "8"}, {"ss_network_alpha", "4.0"},
            {"ss_base_model_version", "sdxl_base_v1-0"}, {"modelspec.sai_model_spec", "1.0.1"},
            {"modelspec.architecture", "stable-diffusion-xl-v1-base/lora"}, {"modelspec.resolution", "1024x1024"},
            {"modelspec.title", "My style"}, {"ziplora_method", "convert"},
        };
        for (size_t i = 0; i < sizeof exp / sizeof *exp; i++) {
            const char *v = meta(l, exp[i][0]);
            CHECKM(v && !strcmp(v, exp[i][1]), "metadata %s = %s (want %s)", exp[i][0], v ? v : "(none)", exp[i][1]);
        }
        const char *d = meta(l, "modelspec.date");
        CHECK(d && strlen(d) == 19 && d[4] == '-' && d[10] == 'T');
        const char *inp = meta(l, "ziplora_inputs");
        CHECK(inp && strstr(inp, hex) && strstr(inp, "style.kohya_sgm.safetensors"));
        const char *par = meta(l, "ziplora_params");
        json_t *j = par ? json_loads(par, 0, NULL) : NULL;
        CHECK(j != NULL);
        json_decref(j);
        CHECK(l->layers[0].dtype == ZL_DT_BF16); /* source dtype kept */
    }
    zl_lora_free(l);
    /* SD 1.x */
    const char *in2 = strdup(zt_data("tiny-sd15/loras/content.kohya.safetensors"));
    CHECK(zt_cli("convert '%s' -o '%s' --format peft --dtype f16", in2, o) == 0);
    l = load(o);
    if (l) {
        CHECK(meta(l, "ss_base_model_version") && !strcmp(meta(l, "ss_base_model_version"), "sd_v1"));
        CHECK(meta(l, "modelspec.architecture") && !strcmp(meta(l, "modelspec.architecture"), "stable-diffusion-v1/lora"));
        CHECK(meta(l, "modelspec.resolution") && !strcmp(meta(l, "modelspec.resolution"), "512x512"));
        CHECK(l->layers[0].dtype == ZL_DT_F16);
    }
    zl_lora_free(l);
    /* reproducible bytes with SOURCE_DATE_EPOCH */
    const char *o1 = strdup(zt_tmp("r1.safetensors")), *o2 = strdup(zt_tmp("r2.safetensors"));
    CHECK(zt_cli("convert '%s' -o '%s'", in, o1) == 0);
    setenv("SOURCE_DATE_EPOCH", "1700000000", 1);
    CHECK(zt_cli("convert '%s' -o '%s' --title t", in, o1) == 0);
    CHECK(zt_cli("convert '%s' -o '%s' --title t", in, o2) == 0);
    unsetenv("SOURCE_DATE_EPOCH");
    char h1[65], h2[65];
    CHECK_OK(zl_sha256_file(o1, h1));
    CHECK_OK(zl_sha256_file(o2, h2));
    CHECK(!strcmp(h1, h2));
    free((void *)o1);
    free((void *)o2);
    free((void *)in);
    free((void *)in2);
}

/* Per-layer ranks may differ: each layer keeps its own rank and alpha; ss_network_dim is the max. */
static void test_mixed_ranks(void) {
    float d1[2 * 4], u1[3 * 2], d2[5 * 4], u2[3 * 5];
    for (int i = 0; i < 8; i++) d1[i] = (float)i - 3.5f;
    for (int i = 0; i < 6; i++) u1[i] = 0.25f * (float)i;
    for (int i = 0; i < 20; i++) d2[i] = 0.125f * (float)(i % 7);
    for (int i = 0; i < 15; i++) u2[i] = (float)(i % 3) - 1;
    zl_lora_layer ls[2] = {
        {.module = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", .part = ZL_PART_UNET, .kind = ZL_LORA_LINEAR,
         .rank = 2, .in_features = 4, .out_features = 3, .kh = 1, .kw = 1, .alpha = 1.5f, .down = d1, .up = u1, .dtype = ZL_DT_F32},
        {.module = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v", .part = ZL_PART_UNET, .kind = ZL_LORA_LINEAR,
         .rank = 5, .in_features = 4, .out_features = 3, .kh = 1, .kw = 1, .alpha = 5, .down = d2, .up = u2, .dtype = ZL_DT_F32},
    };
    zl_lora L = {.family = ZL_FAMILY_SDXL, .n = 2, .layers = ls};
    const char *o = zt_tmp("mixed.safetensors");
    zl_lora_write_opts wo = {.format = ZL_FORMAT_KOHYA};
    CHECK_OK(zl_lora_write(o, &L, &wo));
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(o, &f));
    if (f) {
        CHECK(zl_st_find(f, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight") != NULL);
        const zl_st_tensor *t = zl_st_find(f, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_v.lora_up.weight");
        CHECK(t && t->ndim == 2 && t->shape[0] == 3 && t->shape[1] == 5);
        CHECK(zl_st_meta(f, "ss_network_dim") && !strcmp(zl_st_meta(f, "ss_network_dim"), "5"));
        zl_st_close(f);
    }
    zl_lora *r = load(o);
    if (r) {
        same_lora("mixed ranks", &L, r, 0);
        /* PEFT with mixed ranks: rank_pattern makes it load with the right ranks, scale 1 */
        const char *p = zt_tmp("mixed.peft.safetensors");
        wo.format = ZL_FORMAT_PEFT;
        CHECK_OK(zl_lora_write(p, r, &wo));
        zl_lora *q = load(p);
        if (q) same_lora("mixed ranks peft", &L, q, 1);
        zl_lora_free(q);
    }
    zl_lora_free(r);
    /* a module the SDXL name table lacks cannot get an ldm name: an error naming it */
    ls[1].module = "down_blocks.7.nonexistent";
    CHECK(zl_lora_write(zt_tmp("x.safetensors"), &L, &wo) == ZL_OK); /* PEFT needs no table */
    wo.format = ZL_FORMAT_KOHYA;
    const char *x = zt_tmp("y.safetensors");
    CHECK(zl_lora_write(x, &L, &wo) == ZL_ENOTFOUND);
    CHECK(strstr(zl_errmsg(), "down_blocks.7.nonexistent") != NULL);
    struct stat st;
    CHECK(stat(x, &st) != 0);
    /* F16 overflow is refused, not written as Inf */
    ls[1].module = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_v";
    d2[3] = 1e6f;
    wo.dtype = ZL_DT_F16;
    CHECK(zl_lora_write(x, &L, &wo) == ZL_ENUMERIC);
    CHECK(stat(x, &st) != 0);
}

static void test_convert_cli(void) {
    const char *in = strdup(zt_data("mini-sdxl/loras/content.kohya_sgm.safetensors"));
    const char *o = strdup(zt_tmp("conv.safetensors"));
    struct stat st;
    CHECK(zt_cli("convert --help") == 0 && strstr(zt_out, "--format"));
    CHECK(zt_cli("convert") == 2);
    CHECK(zt_cli("convert '%s'", in) == 2);
    CHECK(zt_cli("convert '%s' -o '%s' --format tf", in, o) == 2);
    CHECK(zt_cli("convert '%s' -o '%s' --dtype f8", in, o) == 2);
    CHECK(stat(o, &st) != 0);
    int code = zt_cli("convert /nonexistent.safetensors -o '%s'", o);
    CHECKM(code == 1 && strstr(zt_err, "/nonexistent.safetensors"), "missing input: %d %s", code, zt_err);
    CHECK(stat(o, &st) != 0);
    /* a non-LoRA safetensors file */
    code = zt_cli("convert '%s' -o '%s'", zt_data("mini-sdxl/unet_io.safetensors"), o);
    CHECKM(code == 1, "not a LoRA: %d %s", code, zt_err);
    CHECK(stat(o, &st) != 0);
    char h0[65], h1[65];
    CHECK_OK(zl_sha256_file(in, h0));
    code = zt_cli("convert '%s' -o '%s'", in, in);
    CHECKM(code != 0 && strstr(zt_err, "input"), "output = input: %d %s", code, zt_err);
    CHECK_OK(zl_sha256_file(in, h1));
    CHECK(!strcmp(h0, h1));
    /* --model as a single-file checkpoint names layers with the config its shapes
     * give (as generate loads it), not the family's full-size config */
    code = zt_cli("convert '%s' -o '%s' --model '%s' -q", zt_data("mini-sdxl/loras/style.kohya.safetensors"), o,
                  zt_data("mini-sdxl/single_file.safetensors"));
    CHECKM(code == 0 && stat(o, &st) == 0, "--model single file: %d %s", code, zt_err);
    remove(o);
    free((void *)in);
    free((void *)o);
}

int main(void) {
    static const char *files[] = {
        "mini-sdxl/loras/content.kohya_sgm.safetensors", "mini-sdxl/loras/style.kohya_sgm.safetensors",
        "mini-sdxl/loras/style.peft.safetensors",        "mini-sdxl/loras/text_encoders.kohya.safetensors",
        "tiny-sd15/loras/content.kohya.safetensors",     "tiny-sd15/loras/style.kohya_sgm.safetensors",
        "tiny-sd15/loras/text_encoders.kohya.safetensors", "tiny-sdxl/loras/style.kohya.safetensors",
        "tiny-sdxl/loras/content.peft.safetensors",
    };
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) round_trip(files[i]);
    test_key_sets();
    test_metadata();
    test_mixed_ranks();
    test_convert_cli();
    return zt_done();
}
