/* Name tables against real layouts. The UNet table of the standard SDXL / SD 1.5
 * configs must produce exactly the UNet keys and shapes of the real diffusers
 * files and, through the ldm names, of the real single files (tests/data/real-keys,
 * written by diffusers' own code); the CLIP tables must cover the real text
 * encoders. The fixture models' own configs must produce their files' keys.
 * Every real LoRA key list (kohya, kohya LoCon, diffusers, old diffusers,
 * diffusers->kohya) is turned into a file of zeros at the real shapes and loaded:
 * every key must map (the loader refuses otherwise) to a module of the real model
 * with a consistent shape, with the module counts the producers report. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "models/names.h"
#include "testlib.h"

static json_t *load_json(const char *rel) {
    json_error_t je;
    json_t *o = json_load_file(zt_data(rel), 0, &je);
    CHECKM(o != NULL, "%s: %s", rel, je.text);
    return o;
}

/* The tensors map of a keys.json (component NULL: top level). */
static json_t *tensors_of(json_t *root, const char *component) {
    json_t *c = component ? json_object_get(root, component) : root;
    return json_object_get(c, "tensors");
}

static int shape_is(json_t *entry, const int64_t *shape, int ndim) {
    json_t *s = json_object_get(entry, "shape");
    if (!json_is_array(s) || (int)json_array_size(s) != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (json_integer_value(json_array_get(s, (size_t)i)) != shape[i]) return 0;
    return 1;
}

/* The weight shape a table entry implies. */
static int weight_shape(const zl_module_info *m, int64_t *s) {
    switch (m->kind) {
    case ZL_MOD_LINEAR: s[0] = m->out, s[1] = m->in; return 2;
    case ZL_MOD_CONV: s[0] = m->out, s[1] = m->in, s[2] = m->kh, s[3] = m->kw; return 4;
    case ZL_MOD_NORM: s[0] = m->out; return 1;
    default: s[0] = m->in, s[1] = m->out; return 2; /* embedding [entries, dim] */
    }
}

/* A key set from a JSON tensors map or a safetensors file. */
typedef struct {
    json_t *json;          /* {key: {"shape": [...]}} */
    const zl_st_file *st;
    const char *prefix;    /* prepended to table names ("model.diffusion_model.") */
    const char *label;
} keyset;

static int keyset_has(const keyset *k, const char *name, const int64_t *shape, int ndim) {
    if (k->json) {
        json_t *e = json_object_get(k->json, name);
        return e && shape_is(e, shape, ndim);
    }
    const zl_st_tensor *t = zl_st_find(k->st, name);
    if (!t || t->ndim != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i]) return 0;
    return 1;
}

/* Keys under k->prefix, not counting position_ids buffers (a loader tolerates them). */
static int keyset_count(const keyset *k) {
    int n = 0;
    size_t pl = strlen(k->prefix);
    if (k->json) {
        const char *key;
        json_t *v;
        json_object_foreach(k->json, key, v) n += !strncmp(key, k->prefix, pl) && !strstr(key, "position_ids");
    } else {
        for (int i = 0; i < zl_st_count(k->st); i++) {
            const char *key = zl_st_at(k->st, i)->name;
            n += !strncmp(key, k->prefix, pl) && !strstr(key, "position_ids");
        }
    }
    return n;
}

/* Every table entry's weight (+ bias) is in the key set with its shape, and the
 * key set has nothing else under the prefix: the table is exactly the model. */
static void covers_exactly(const zl_name_table *t, const keyset *k, int use_ldm) {
    int expected = 0, missing = 0;
    char name[512];
    for (int i = 0; i < zl_name_table_count(t); i++) {
        const zl_module_info *m = zl_name_table_at(t, i);
        int64_t s[4];
        int nd = weight_shape(m, s);
        const char *base = use_ldm ? m->ldm : m->diffusers;
        snprintf(name, sizeof name, "%s%s.weight", k->prefix, base);
        expected++;
        if (!keyset_has(k, name, s, nd)) {
            if (missing++ < 5) CHECKM(0, "%s: no '%s' of the table's shape", k->label, name);
        }
        if (m->has_bias) {
            snprintf(name, sizeof name, "%s%s.bias", k->prefix, base);
            expected++;
            int64_t b = m->out;
            if (!keyset_has(k, name, &b, 1) && missing++ < 5) CHECKM(0, "%s: no '%s' [%d]", k->label, name, m->out);
        }
    }
    int have = keyset_count(k);
    CHECKM(missing == 0 && expected == have, "%s: table gives %d keys, %d missing; the file has %d", k->label,
           expected, missing, have);
}

static void test_unet_tables_real(void) {
    zl_unet_config sx, s1;
    zl_unet_config_sdxl_base(&sx);
    zl_unet_config_sd15(&s1);
    zl_name_table *tx = NULL, *t1 = NULL;
    CHECK_OK(zl_name_table_unet(&sx, &tx));
    CHECK_OK(zl_name_table_unet(&s1, &t1));
    json_t *dx = load_json("real-keys/sdxl_base_1.0.diffusers.keys.json");
    json_t *d1 = load_json("real-keys/sd15.diffusers_unet.keys.json");
    json_t *fx = load_json("real-keys/sdxl_base_1.0.single_file.keys.json");
    json_t *f1 = load_json("real-keys/sd15.single_file.keys.json");
    if (tx && t1 && dx && d1 && fx && f1) {
        keyset k;
        k = (keyset){tensors_of(dx, "unet"), NULL, "", "sdxl diffusers unet"};
        covers_exactly(tx, &k, 0);
        k = (keyset){tensors_of(d1, NULL), NULL, "", "sd15 diffusers unet"};
        covers_exactly(t1, &k, 0);
        k = (keyset){tensors_of(fx, NULL), NULL, "model.diffusion_model.", "sdxl single file"};
        covers_exactly(tx, &k, 1);
        k = (keyset){tensors_of(f1, NULL), NULL, "model.diffusion_model.", "sd15 single file"};
        covers_exactly(t1, &k, 1);
        /* spot checks of formats.md §4 */
        const zl_module_info *m = zl_name_find_diffusers(tx, "up_blocks.0.upsamplers.0.conv");
        CHECK(m && !strcmp(m->ldm, "output_blocks.2.2.conv"));
        m = zl_name_find_diffusers(t1, "up_blocks.0.upsamplers.0.conv");
        CHECK(m && !strcmp(m->ldm, "output_blocks.2.1.conv"));
        m = zl_name_find_ldm(tx, "input_blocks.4.1.transformer_blocks.0.attn1.to_q");
        CHECK(m && !strcmp(m->diffusers, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"));
        m = zl_name_find_diffusers(t1, "down_blocks.2.downsamplers.0.conv");
        CHECK(m && !strcmp(m->ldm, "input_blocks.9.0.op"));
        int ldm = -1;
        m = zl_name_find_kohya(tx, "output_blocks_5_0_skip_connection", &ldm);
        CHECK(m && ldm == 1 && !strcmp(m->diffusers, "up_blocks.1.resnets.2.conv_shortcut"));
        m = zl_name_find_kohya(tx, "mid_block_attentions_0_proj_in", &ldm);
        CHECK(m && ldm == 0 && m->kind == ZL_MOD_LINEAR);
        CHECK(zl_name_find_kohya(tx, "mid_block_attentions_0_proj", &ldm) == NULL);
        CHECK(zl_name_find_diffusers(tx, "mid_block.attentions.0.proj_in.weight") == NULL);
    }
    json_decref(dx);
    json_decref(d1);
    json_decref(fx);
    json_decref(f1);
    zl_name_table_free(tx);
    zl_name_table_free(t1);
}

static void test_clip_tables_real(void) {
    zl_clip_config l, g;
    zl_names_clip_l_config(&l);
    zl_names_clip_bigg_config(&g);
    zl_name_table *tl = NULL, *tg = NULL;
    CHECK_OK(zl_name_table_clip(&l, &tl));
    CHECK_OK(zl_name_table_clip(&g, &tg));
    json_t *dx = load_json("real-keys/sdxl_base_1.0.diffusers.keys.json");
    json_t *d1 = load_json("real-keys/sd15.diffusers.keys.json");
    json_t *f1 = load_json("real-keys/sd15.single_file.keys.json");
    json_t *fx = load_json("real-keys/sdxl_base_1.0.single_file.keys.json");
    if (tl && tg && dx && d1 && f1 && fx) {
        keyset k;
        k = (keyset){tensors_of(dx, "text_encoder"), NULL, "", "sdxl text_encoder"};
        covers_exactly(tl, &k, 0);
        k = (keyset){tensors_of(dx, "text_encoder_2"), NULL, "", "sdxl text_encoder_2"};
        covers_exactly(tg, &k, 0);
        k = (keyset){tensors_of(d1, "text_encoder"), NULL, "", "sd15 text_encoder"};
        covers_exactly(tl, &k, 0);
        /* CLIP-L keeps its HF names inside both single files */
        k = (keyset){tensors_of(f1, NULL), NULL, "cond_stage_model.transformer.", "sd15 single-file CLIP-L"};
        covers_exactly(tl, &k, 1);
        k = (keyset){tensors_of(fx, NULL), NULL, "conditioner.embedders.0.transformer.", "sdxl single-file CLIP-L"};
        covers_exactly(tl, &k, 1);
    }
    json_decref(dx);
    json_decref(d1);
    json_decref(f1);
    json_decref(fx);
    zl_name_table_free(tl);
    zl_name_table_free(tg);
}

static void test_fixture_tables(const char *dir, int single) {
    char p[512];
    zl_unet_config c;
    snprintf(p, sizeof p, "%s/unet/config.json", dir);
    CHECK_OK(zl_unet_config_load(zt_data(p), &c));
    zl_name_table *t = NULL;
    CHECK_OK(zl_name_table_unet(&c, &t));
    if (!t) return;
    zl_st_file *f = NULL;
    snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    CHECK_OK(zl_st_open(zt_data(p), &f));
    if (f) {
        keyset k = {NULL, f, "", p};
        covers_exactly(t, &k, 0);
        zl_st_close(f);
    }
    if (single) {
        snprintf(p, sizeof p, "%s/single_file.safetensors", dir);
        CHECK_OK(zl_st_open(zt_data(p), &f));
        if (f) {
            keyset k = {NULL, f, "model.diffusion_model.", p};
            covers_exactly(t, &k, 1);
            zl_st_close(f);
        }
    }
    zl_name_table_free(t);
}

/* ---------------------------------------------------------------- real LoRA key lists */

static int fill_zero(void *ctx, void *dst, size_t n) {
    (void)ctx;
    memset(dst, 0, n);
    return ZL_OK;
}

/* Write a file holding every tensor of a LoRA key list, zeros at the real shapes and dtypes. */
static int write_zero_file(const char *path, json_t *tensors, int *count) {
    int n = (int)json_object_size(tensors), i = 0;
    zl_st_entry *e = calloc((size_t)n, sizeof *e);
    const char *key;
    json_t *v;
    json_object_foreach(tensors, key, v) {
        json_t *s = json_object_get(v, "shape");
        e[i].name = key;
        e[i].dtype = zl_dtype_from_name(json_string_value(json_object_get(v, "dtype")));
        e[i].ndim = (int)json_array_size(s);
        for (int d = 0; d < e[i].ndim; d++) e[i].shape[d] = json_integer_value(json_array_get(s, (size_t)d));
        e[i].fill = fill_zero;
        i++;
    }
    *count = n;
    int rc = zl_st_write(path, e, n, NULL, 0, NULL, 0);
    free(e);
    return rc;
}

/* The module's weight in the real model has the LoRA's shape. */
static int layer_fits(const zl_lora_layer *y, json_t *model_tensors) {
    char name[512];
    snprintf(name, sizeof name, "%s.weight", y->module);
    json_t *e = json_object_get(model_tensors, name);
    if (!e) return 0;
    int64_t s[4] = {y->out_features, y->in_features, y->kh, y->kw};
    if (y->kind == ZL_LORA_LINEAR) return shape_is(e, s, 2);
    /* a 1x1 conv LoRA may be stored 2-D; the module is still [out, in, 1, 1] */
    return shape_is(e, s, 4);
}

static void test_lora_tensors(const char *list, json_t *tensors, int sdxl, int n_unet, int n_te1, int n_te2,
                              int per_module, zl_lora_layout layout, json_t *model) {
    int count = 0;
    char path[600];
    snprintf(path, sizeof path, "%s", zt_tmp("real_lora.safetensors"));
    CHECK_OK(write_zero_file(path, tensors, &count));
    json_t *mu = tensors_of(model, "unet"), *m1 = tensors_of(model, "text_encoder"),
           *m2 = sdxl ? tensors_of(model, "text_encoder_2") : NULL;

    zl_unet_config cfg;
    zl_clip_config cl, cg;
    if (sdxl) zl_unet_config_sdxl_base(&cfg);
    else zl_unet_config_sd15(&cfg);
    zl_names_clip_l_config(&cl);
    zl_names_clip_bigg_config(&cg);
    zl_lora_load_opts strict = {.unet_config = &cfg, .te1_config = &cl, .te2_config = sdxl ? &cg : NULL};
    for (int pass = 0; pass < 2; pass++) {
        zl_lora *l = NULL;
        /* pass 0: no model given, so the family comes from the keys alone */
        int rc = zl_lora_load(path, pass ? &strict : NULL, &l);
        CHECKM(rc == ZL_OK, "%s (pass %d): %s", list, pass, zl_errmsg());
        if (rc) continue;
        int nu = 0, n1 = 0, n2 = 0, bad = 0;
        for (int i = 0; i < l->n; i++) {
            const zl_lora_layer *y = &l->layers[i];
            json_t *m = y->part == ZL_PART_UNET ? mu : y->part == ZL_PART_TE1 ? m1 : m2;
            nu += y->part == ZL_PART_UNET;
            n1 += y->part == ZL_PART_TE1;
            n2 += y->part == ZL_PART_TE2;
            if (!m || !layer_fits(y, m)) {
                if (bad++ < 5)
                    CHECKM(0, "%s: layer %s (part %d, %d -> %d, %dx%d) is not a module of the real model", list,
                           y->module, y->part, y->in_features, y->out_features, y->kh, y->kw);
            }
        }
        CHECKM(bad == 0, "%s: %d layers without a matching module", list, bad);
        CHECKM(nu == n_unet && n1 == n_te1 && n2 == n_te2, "%s: %d UNet + %d TE1 + %d TE2 modules", list, nu, n1, n2);
        /* every key used: down + up (+ alpha) per module */
        CHECKM(l->n * per_module == count, "%s: %d modules for %d keys", list, l->n, count);
        CHECKM(l->family == (sdxl ? ZL_FAMILY_SDXL : ZL_FAMILY_SD1), "%s: family %s", list, zl_family_name(l->family));
        CHECKM(l->layout == layout, "%s: layout %d, want %d", list, l->layout, layout);
        zl_lora_free(l);
    }
    remove(path);
}

static void test_lora_list(const char *list, int sdxl, int n_unet, int n_te1, int n_te2, int per_module,
                           zl_lora_layout layout, json_t *model) {
    char rel[256];
    snprintf(rel, sizeof rel, "real-keys/%s.keys.json", list);
    json_t *j = load_json(rel);
    if (!j) return;
    test_lora_tensors(list, tensors_of(j, NULL), sdxl, n_unet, n_te1, n_te2, per_module, layout, model);
    json_decref(j);
}

/* The key of `tensors` that is prefix + P + ".weight" with P's dots as underscores equal to
 * `flat`: P, or NULL. (The dotted path comes from the real checkpoint's key list.) */
static const char *dotted_path(json_t *tensors, const char *prefix, const char *flat, char *buf, size_t n) {
    const char *k;
    json_t *v;
    size_t pl = strlen(prefix);
    json_object_foreach(tensors, k, v) {
        size_t kl = strlen(k);
        if (strncmp(k, prefix, pl) || kl < pl + 8 || strcmp(k + kl - 7, ".weight") || kl - pl - 7 >= n) continue;
        memcpy(buf, k + pl, kl - pl - 7);
        buf[kl - pl - 7] = 0;
        int same = strlen(buf) == strlen(flat);
        for (size_t i = 0; same && buf[i]; i++) same = (buf[i] == '.' ? '_' : buf[i]) == flat[i];
        if (same) return buf;
    }
    return NULL;
}

/* A kohya key list rewritten into ComfyUI's generic form (diffusion_model.<ldm path>,
 * text_encoders.clip_l/clip_g.transformer.<HF path>), as its extraction and training nodes save. */
static void test_comfy_list(const char *list, int sdxl, int n_unet, int n_te1, int n_te2, json_t *model) {
    char rel[256];
    snprintf(rel, sizeof rel, "real-keys/%s.keys.json", list);
    json_t *j = load_json(rel);
    json_t *ck = load_json(sdxl ? "real-keys/sdxl_base_1.0.single_file.keys.json" : "real-keys/sd15.single_file.keys.json");
    if (!j || !ck) {
        json_decref(j);
        json_decref(ck);
        return;
    }
    json_t *out = json_object(), *ckt = tensors_of(ck, NULL), *t1 = tensors_of(model, "text_encoder"),
           *t2 = sdxl ? tensors_of(model, "text_encoder_2") : NULL;
    const char *k;
    json_t *v;
    int missing = 0;
    json_object_foreach(tensors_of(j, NULL), k, v) {
        const char *dot = strchr(k, '.');
        char flat[512], buf[512], name[1024];
        snprintf(flat, sizeof flat, "%.*s", dot ? (int)(dot - k) : 0, k);
        const char *pre = "", *p = NULL;
        if (!strncmp(flat, "lora_unet_", 10)) pre = "diffusion_model.", p = dotted_path(ckt, "model.diffusion_model.", flat + 10, buf, sizeof buf);
        else if (!strncmp(flat, "lora_te2_", 9) && t2) pre = "text_encoders.clip_g.transformer.", p = dotted_path(t2, "", flat + 9, buf, sizeof buf);
        else if (!strncmp(flat, "lora_te1_", 9)) pre = "text_encoders.clip_l.transformer.", p = dotted_path(t1, "", flat + 9, buf, sizeof buf);
        else if (!strncmp(flat, "lora_te_", 8)) pre = "text_encoders.clip_l.transformer.", p = dotted_path(t1, "", flat + 8, buf, sizeof buf);
        if (!p) {
            if (missing++ < 3) CHECKM(0, "%s: no checkpoint key for '%s'", list, k);
            continue;
        }
        snprintf(name, sizeof name, "%s%s%s", pre, p, dot);
        json_object_set(out, name, v);
    }
    char label[300];
    snprintf(label, sizeof label, "%s as ComfyUI keys", list);
    if (!missing) test_lora_tensors(label, out, sdxl, n_unet, n_te1, n_te2, 3, ZL_LAYOUT_COMFY, model);
    json_decref(out);
    json_decref(ck);
    json_decref(j);
}

/* What ComfyUI's LoRA extraction node saves: a rank-r pair for every weight of the diffusion
 * model with two or more dimensions, under its own key (no alpha). */
static void test_comfy_extract(int sdxl, json_t *model) {
    json_t *ck = load_json(sdxl ? "real-keys/sdxl_base_1.0.single_file.keys.json" : "real-keys/sd15.single_file.keys.json");
    if (!ck) return;
    json_t *out = json_object();
    const char *k;
    json_t *v;
    int n = 0;
    json_object_foreach(tensors_of(ck, NULL), k, v) {
        json_t *sh = json_object_get(v, "shape");
        size_t kl = strlen(k), nd = json_array_size(sh);
        if (strncmp(k, "model.diffusion_model.", 22) || kl < 30 || strcmp(k + kl - 7, ".weight") || nd < 2) continue;
        char name[600];
        for (int up = 0; up < 2; up++) {
            json_t *shape = json_array();
            json_int_t o = json_integer_value(json_array_get(sh, 0)), i = json_integer_value(json_array_get(sh, 1));
            json_array_append_new(shape, json_integer(up ? o : 8));
            json_array_append_new(shape, json_integer(up ? 8 : i));
            for (size_t d = 2; d < nd; d++)
                json_array_append_new(shape, json_integer(up ? 1 : json_integer_value(json_array_get(sh, d))));
            json_t *e = json_pack("{s:o, s:s}", "shape", shape, "dtype", "F16");
            snprintf(name, sizeof name, "diffusion_model.%.*s.%s", (int)(kl - 29), k + 22, up ? "lora_up.weight" : "lora_down.weight");
            json_object_set_new(out, name, e);
        }
        n++;
    }
    char label[64];
    snprintf(label, sizeof label, "%s ComfyUI extraction", sdxl ? "SDXL" : "SD 1.5");
    test_lora_tensors(label, out, sdxl, n, 0, 0, 2, ZL_LAYOUT_COMFY, model);
    json_decref(out);
    json_decref(ck);
}

static void test_real_loras(void) {
    json_t *mx = load_json("real-keys/sdxl_base_1.0.diffusers.keys.json");
    json_t *m1 = load_json("real-keys/sd15.diffusers.keys.json");
    if (mx && m1) {
        /* counts from each producer (real-keys/README.md) */
        test_lora_list("sdxl.kohya_lora", 1, 722, 72, 192, 3, ZL_LAYOUT_KOHYA_LDM, mx);
        test_lora_list("sdxl.kohya_locon", 1, 788, 72, 192, 3, ZL_LAYOUT_KOHYA_LDM, mx);
        test_lora_list("sd15.kohya_lora", 0, 192, 72, 0, 3, ZL_LAYOUT_KOHYA_DIFFUSERS, m1);
        test_lora_list("sd15.kohya_locon", 0, 278, 72, 0, 3, ZL_LAYOUT_KOHYA_DIFFUSERS, m1);
        test_lora_list("sdxl.diffusers_lora", 1, 560, 0, 0, 2, ZL_LAYOUT_DIFFUSERS_OLD, mx);
        test_lora_list("sdxl.diffusers_lora_old", 1, 560, 0, 0, 2, ZL_LAYOUT_DIFFUSERS_OLD, mx);
        test_lora_list("sdxl.kohya_from_diffusers", 1, 560, 0, 0, 3, ZL_LAYOUT_KOHYA_DIFFUSERS, mx);
        test_comfy_list("sdxl.kohya_locon", 1, 788, 72, 192, mx);
        test_comfy_extract(1, mx);
        test_comfy_extract(0, m1);
    }
    json_decref(mx);
    json_decref(m1);
}

int main(void) {
    test_unet_tables_real();
    test_clip_tables_real();
    test_fixture_tables("tiny-sdxl", 0);
    test_fixture_tables("mini-sdxl", 1);
    test_fixture_tables("tiny-sd15", 1);
    test_real_loras();
    return zt_done();
}
