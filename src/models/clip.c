/* CLIP text encoders (transformers' CLIPTextModel / WithProjection): token +
 * position embeddings, pre-LN layers with a causal mask, final LayerNorm.
 * One code path serves CLIP-L (quick_gelu) and OpenCLIP bigG (exact GELU +
 * text_projection, no bias); the config comes from config.json or from the
 * weights' shapes.
 *
 * On-disk layouts are translated here, at load, into HF module names:
 * - HF names under a prefix: "text_model." (diffusers), SDXL's
 *   "conditioner.embedders.0.transformer.text_model.", SD1's
 *   "cond_stage_model.transformer.text_model." (old files: without "text_model.");
 * - OpenCLIP names under "conditioner.embedders.1.model.": the fused
 *   attn.in_proj_weight [3C, C] is viewed as q | k | v row blocks (no copy), and
 *   text_projection [C, P] (used as x @ P) is transposed into HF's [P, C]
 *   (files from diffusers <= 0.21's conversion script hold HF's matrix as
 *   text_projection.weight instead; kohya's SDXL saver writes HF's matrix under
 *   the OpenCLIP name, which a square shape cannot reveal: we follow SGM).
 * Weights stay in their stored dtype (mmap) and are widened per layer during
 * the forward; a weight that receives a LoRA is widened once and kept. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "nn/ops.h"
#include "nn/weight.h"
#include "ziplora/safetensors.h"
#include "ziplora/text.h"

typedef struct {
    zl_weight ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
} clip_layer;

struct zl_clip {
    zl_clip_config cfg;
    zl_part part;
    zl_st_file *f;
    int openclip;
    char prefix[64];       /* prefix of the HF "embeddings." / OpenCLIP "token_embedding" names */
    zl_weight tok, pos;    /* [V, C], [max_pos, C] */
    zl_weight lnf_w, lnf_b;
    zl_weight proj;        /* [P, C] (HF Linear layout); numel 0 if none */
    clip_layer *layers;
};

/* ---- loading -------------------------------------------------------------------- */

static const zl_st_tensor *find_t(const zl_clip *c, const char *fmt, int layer) {
    char name[256], rest[192];
    snprintf(rest, sizeof rest, fmt, layer);
    snprintf(name, sizeof name, "%s%s", c->prefix, rest);
    return zl_st_find(c->f, name);
}

/* Point w at `t` (rows [row0, row0 + rows) of dim 0 when rows > 0), checking its shape. */
static int view(const zl_clip *c, zl_weight *w, const zl_st_tensor *t, const char *what, int64_t d0, int64_t d1,
                int64_t row0, int64_t rows) {
    if (!t) return zl_set_error(ZL_ENOTFOUND, "%s: missing tensor %s%s", zl_st_path(c->f), c->prefix, what);
    int64_t want0 = rows ? 3 * d0 : d0; /* a fused q|k|v tensor holds three blocks */
    int nd = d1 ? 2 : 1;
    if (t->ndim != nd || t->shape[0] != want0 || (d1 && t->shape[1] != d1))
        return zl_set_error(ZL_ESHAPE, "%s: tensor '%s' has shape [%lld%s%lld], expected [%lld%s%lld]", zl_st_path(c->f),
                            t->name, (long long)t->shape[0], t->ndim > 1 ? ", " : "",
                            t->ndim > 1 ? (long long)t->shape[1] : 0LL, (long long)want0, d1 ? ", " : "",
                            (long long)(d1 ? d1 : 0));
    if (!zl_dtype_is_float(t->dtype) || t->dtype == ZL_DT_BOOL || zl_dtype_bits(t->dtype) < 8)
        return zl_set_error(ZL_EFORMAT, "%s: tensor '%s' has dtype %s", zl_st_path(c->f), t->name, zl_dtype_name(t->dtype));
    zl_weight_from_st(w, t);
    if (rows) {
        int64_t row = d1 ? d1 : 1;
        w->data = (const uint8_t *)t->data + (size_t)(row0 * row) * (size_t)(zl_dtype_bits(t->dtype) / 8);
        w->shape[0] = rows;
        w->numel = rows * row;
    }
    return ZL_OK;
}

/* HF names relative to the text model; OpenCLIP equivalents. */
static int load_layer(zl_clip *c, int i) {
    clip_layer *L = &c->layers[i];
    int64_t C = c->cfg.hidden, I = c->cfg.intermediate;
    int rc;
#define V(w, t, what, d0, d1, r0, rows) \
    if ((rc = view(c, w, t, what, d0, d1, r0, rows))) return rc
    char what[160];
    if (!c->openclip) {
        static const char *const nm[8] = {"layer_norm1", "layer_norm2", "self_attn.q_proj", "self_attn.k_proj",
                                          "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"};
        zl_weight *ws[8][2] = {{&L->ln1_w, &L->ln1_b}, {&L->ln2_w, &L->ln2_b}, {&L->q_w, &L->q_b}, {&L->k_w, &L->k_b},
                               {&L->v_w, &L->v_b},     {&L->o_w, &L->o_b},     {&L->fc1_w, &L->fc1_b},
                               {&L->fc2_w, &L->fc2_b}};
        int64_t shp[8][2] = {{C, 0}, {C, 0}, {C, C}, {C, C}, {C, C}, {C, C}, {I, C}, {C, I}};
        for (int k = 0; k < 8; k++) {
            char f[160];
            snprintf(f, sizeof f, "encoder.layers.%%d.%s.weight", nm[k]);
            snprintf(what, sizeof what, f, i);
            V(ws[k][0], find_t(c, f, i), what, shp[k][0], shp[k][1], 0, 0);
            snprintf(f, sizeof f, "encoder.layers.%%d.%s.bias", nm[k]);
            snprintf(what, sizeof what, f, i);
            V(ws[k][1], find_t(c, f, i), what, shp[k][0], 0, 0, 0);
        }
        return ZL_OK;
    }
    const char *fw = "transformer.resblocks.%d.attn.in_proj_weight", *fb = "transformer.resblocks.%d.attn.in_proj_bias";
    const zl_st_tensor *tw = find_t(c, fw, i), *tb = find_t(c, fb, i);
    snprintf(what, sizeof what, fw, i);
    V(&L->q_w, tw, what, C, C, 0, C);
    V(&L->k_w, tw, what, C, C, C, C);
    V(&L->v_w, tw, what, C, C, 2 * C, C);
    snprintf(what, sizeof what, fb, i);
    V(&L->q_b, tb, what, C, 0, 0, C);
    V(&L->k_b, tb, what, C, 0, C, C);
    V(&L->v_b, tb, what, C, 0, 2 * C, C);
    static const char *const nm[5] = {"ln_1", "ln_2", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"};
    zl_weight *ws[5][2] = {{&L->ln1_w, &L->ln1_b}, {&L->ln2_w, &L->ln2_b}, {&L->o_w, &L->o_b}, {&L->fc1_w, &L->fc1_b},
                           {&L->fc2_w, &L->fc2_b}};
    int64_t shp[5][2] = {{C, 0}, {C, 0}, {C, C}, {I, C}, {C, I}};
    for (int k = 0; k < 5; k++) {
        char f[160];
        snprintf(f, sizeof f, "transformer.resblocks.%%d.%s.weight", nm[k]);
        snprintf(what, sizeof what, f, i);
        V(ws[k][0], find_t(c, f, i), what, shp[k][0], shp[k][1], 0, 0);
        snprintf(f, sizeof f, "transformer.resblocks.%%d.%s.bias", nm[k]);
        snprintf(what, sizeof what, f, i);
        V(ws[k][1], find_t(c, f, i), what, shp[k][0], 0, 0, 0);
    }
#undef V
    return ZL_OK;
}

static int json_int(json_t *root, const char *key, int *out, const char *path) {
    json_t *v = json_object_get(root, key);
    if (!json_is_integer(v)) return zl_set_error(ZL_EFORMAT, "%s: '%s' is missing or not an integer", path, key);
    json_int_t x = json_integer_value(v);
    if (x < 1 || x > 1000000) return zl_set_error(ZL_EFORMAT, "%s: '%s' = %lld is out of range", path, key, (long long)x);
    *out = (int)x;
    return ZL_OK;
}

static int parse_config(const char *path, zl_clip_config *cfg) {
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) return zl_set_error(ZL_EFORMAT, "%s: %s (line %d)", path, err.text, err.line);
    int rc = ZL_OK;
    memset(cfg, 0, sizeof *cfg);
    if (!json_is_object(root)) { rc = zl_set_error(ZL_EFORMAT, "%s: not a JSON object", path); goto out; }
    if ((rc = json_int(root, "hidden_size", &cfg->hidden, path)) || (rc = json_int(root, "intermediate_size", &cfg->intermediate, path)) ||
        (rc = json_int(root, "num_attention_heads", &cfg->heads, path)) || (rc = json_int(root, "num_hidden_layers", &cfg->layers, path)))
        goto out;
    cfg->max_pos = 77;
    cfg->vocab = ZL_CLIP_VOCAB;
    if (json_object_get(root, "max_position_embeddings") && (rc = json_int(root, "max_position_embeddings", &cfg->max_pos, path))) goto out;
    if (json_object_get(root, "vocab_size") && (rc = json_int(root, "vocab_size", &cfg->vocab, path))) goto out;
    cfg->projection_dim = cfg->hidden;
    if (json_object_get(root, "projection_dim") && (rc = json_int(root, "projection_dim", &cfg->projection_dim, path))) goto out;
    const char *act = json_string_value(json_object_get(root, "hidden_act"));
    if (!act) act = "quick_gelu"; /* transformers' CLIPTextConfig default */
    if (!strcmp(act, "quick_gelu")) cfg->quick_gelu = 1;
    else if (!strcmp(act, "gelu")) cfg->quick_gelu = 0;
    else { rc = zl_set_error(ZL_EUNSUPPORTED, "%s: hidden_act '%s' is not supported (quick_gelu, gelu)", path, act); goto out; }
    json_t *eps = json_object_get(root, "layer_norm_eps");
    cfg->eps = json_is_number(eps) ? (float)json_number_value(eps) : 1e-5f;
    json_t *arch = json_array_get(json_object_get(root, "architectures"), 0);
    cfg->has_projection = json_is_string(arch) && strstr(json_string_value(arch), "WithProjection") != NULL;
out:
    json_decref(root);
    return rc;
}

void zl_clip_free(zl_clip *c) {
    if (!c) return;
    if (c->layers) {
        for (int i = 0; i < c->cfg.layers; i++) {
            zl_weight *w = (zl_weight *)&c->layers[i];
            for (size_t k = 0; k < sizeof(clip_layer) / sizeof(zl_weight); k++) zl_weight_free(&w[k]);
        }
    }
    free(c->layers);
    zl_weight_free(&c->tok);
    zl_weight_free(&c->pos);
    zl_weight_free(&c->lnf_w);
    zl_weight_free(&c->lnf_b);
    zl_weight_free(&c->proj);
    zl_st_close(c->f);
    free(c);
}

const zl_clip_config *zl_clip_get_config(const zl_clip *c) { return &c->cfg; }

int zl_clip_load(const char *weights, zl_part part, const zl_clip_load_opts *opts, zl_clip **out) {
    *out = NULL;
    if (part != ZL_PART_TE1 && part != ZL_PART_TE2)
        return zl_set_error(ZL_EINVAL, "zl_clip_load: part must be a text encoder");
    zl_clip *c = calloc(1, sizeof *c);
    if (!c) return zl_set_error(ZL_ENOMEM, "out of memory loading a text encoder");
    c->part = part;
    int rc = zl_st_open(weights, &c->f);
    if (rc) { free(c); return rc; }
    /* Which layout: the first prefix under which the token embedding exists. */
    static const struct { const char *prefix; int openclip; zl_part part; } layouts[] = {
        {"text_model.", 0, ZL_PART_TE1},
        {"text_model.", 0, ZL_PART_TE2},
        {"conditioner.embedders.0.transformer.text_model.", 0, ZL_PART_TE1},
        {"cond_stage_model.transformer.text_model.", 0, ZL_PART_TE1},
        {"cond_stage_model.transformer.", 0, ZL_PART_TE1},
        {"conditioner.embedders.1.model.", 1, ZL_PART_TE2},
    };
    const zl_st_tensor *tok = NULL;
    for (size_t k = 0; k < sizeof layouts / sizeof layouts[0] && !tok; k++) {
        if (layouts[k].part != part) continue;
        snprintf(c->prefix, sizeof c->prefix, "%s", layouts[k].prefix);
        c->openclip = layouts[k].openclip;
        tok = find_t(c, c->openclip ? "token_embedding.weight" : "embeddings.token_embedding.weight", 0);
    }
    if (!tok) {
        rc = zl_set_error(ZL_ENOTFOUND, "%s: no %s text encoder in this file (no token embedding under any known prefix)",
                          weights, part == ZL_PART_TE1 ? "first (CLIP-L)" : "second (OpenCLIP bigG)");
        goto fail;
    }
    const zl_st_tensor *pos = find_t(c, c->openclip ? "positional_embedding" : "embeddings.position_embedding.weight", 0);
    const char *lnf = c->openclip ? "ln_final.%s" : "final_layer_norm.%s";
    const zl_st_tensor *proj = c->openclip ? find_t(c, "text_projection", 0) : zl_st_find(c->f, "text_projection.weight");
    int proj_hf = !c->openclip;
    if (c->openclip && !proj && (proj = find_t(c, "text_projection.weight", 0))) /* diffusers <= 0.21 scripts: HF layout */
        proj_hf = 1;
    if (tok->ndim != 2 || !pos || pos->ndim != 2) {
        rc = zl_set_error(ZL_ESHAPE, "%s: token/position embeddings of the text encoder are missing or not 2-D", weights);
        goto fail;
    }
    /* Config: config.json, checked against the shapes; else inferred from them. */
    zl_clip_config *cfg = &c->cfg;
    int64_t C = tok->shape[1];
    int n_layers = 0;
    while (find_t(c, c->openclip ? "transformer.resblocks.%d.ln_1.weight" : "encoder.layers.%d.layer_norm1.weight", n_layers))
        n_layers++;
    const zl_st_tensor *fc1 = find_t(c, c->openclip ? "transformer.resblocks.%d.mlp.c_fc.weight" : "encoder.layers.%d.mlp.fc1.weight", 0);
    if (opts && opts->config_json) {
        if ((rc = parse_config(opts->config_json, cfg))) goto fail;
        if (cfg->hidden != C || cfg->vocab != tok->shape[0] || cfg->max_pos != pos->shape[0] || cfg->layers > n_layers) {
            rc = zl_set_error(ZL_ESHAPE,
                              "%s: does not match %s (hidden %d, vocab %d, positions %d, %d layers; the weights have "
                              "%lld, %lld, %lld, %d)",
                              opts->config_json, weights, cfg->hidden, cfg->vocab, cfg->max_pos, cfg->layers,
                              (long long)C, (long long)tok->shape[0], (long long)pos->shape[0], n_layers);
            goto fail;
        }
        if (proj && !cfg->has_projection && part == ZL_PART_TE2) cfg->has_projection = 1;
    } else {
        memset(cfg, 0, sizeof *cfg);
        cfg->hidden = (int)C;
        cfg->vocab = (int)tok->shape[0];
        cfg->max_pos = (int)pos->shape[0];
        cfg->layers = n_layers;
        cfg->intermediate = fc1 && fc1->ndim == 2 ? (int)fc1->shape[0] : 0;
        /* Every released CLIP text model uses 64-wide heads (CLIP-L 12, bigG 20, OpenCLIP-H 16). */
        if (C % 64) {
            rc = zl_set_error(ZL_EINVAL,
                              "%s: cannot infer the text encoder's head count (hidden size %lld is not a multiple of "
                              "64); give its config.json",
                              weights, (long long)C);
            goto fail;
        }
        cfg->heads = (int)(C / 64);
        cfg->quick_gelu = part == ZL_PART_TE1; /* OpenAI CLIP-L: quick_gelu; OpenCLIP bigG: gelu */
        cfg->has_projection = proj != NULL;
        cfg->projection_dim = proj ? (int)(proj_hf ? proj->shape[0] : proj->shape[proj->ndim - 1]) : cfg->hidden;
        cfg->eps = 1e-5f;
    }
    if (cfg->layers < 1 || cfg->intermediate < 1 || cfg->heads < 1 || cfg->hidden % cfg->heads) {
        rc = zl_set_error(ZL_EFORMAT, "%s: invalid text encoder shape (%d layers, hidden %d, %d heads, intermediate %d)",
                          weights, cfg->layers, cfg->hidden, cfg->heads, cfg->intermediate);
        goto fail;
    }
    if (cfg->max_pos > 100000 || cfg->vocab > 10000000) {
        rc = zl_set_error(ZL_EFORMAT, "%s: implausible text encoder size", weights);
        goto fail;
    }
    if ((rc = view(c, &c->tok, tok, "token embedding", cfg->vocab, C, 0, 0))) goto fail;
    if ((rc = view(c, &c->pos, pos, "position embedding", cfg->max_pos, C, 0, 0))) goto fail;
    char nb[64];
    snprintf(nb, sizeof nb, lnf, "weight");
    if ((rc = view(c, &c->lnf_w, find_t(c, nb, 0), nb, C, 0, 0, 0))) goto fail;
    snprintf(nb, sizeof nb, lnf, "bias");
    if ((rc = view(c, &c->lnf_b, find_t(c, nb, 0), nb, C, 0, 0, 0))) goto fail;
    if (cfg->has_projection) {
        int64_t P = cfg->projection_dim;
        if (!proj) {
            rc = zl_set_error(ZL_ENOTFOUND, "%s: the text encoder has a projection but the file has no text_projection", weights);
            goto fail;
        }
        if (proj_hf) {
            if ((rc = view(c, &c->proj, proj, "text_projection.weight", P, C, 0, 0))) goto fail;
        } else {
            /* [C, P] used as x @ P: store its transpose, HF's [P, C] */
            if (proj->ndim != 2 || proj->shape[0] != C || proj->shape[1] != P) {
                rc = zl_set_error(ZL_ESHAPE, "%s: '%s' has the wrong shape (expected [%lld, %lld])", weights, proj->name,
                                  (long long)C, (long long)P);
                goto fail;
            }
            float *src = malloc((size_t)(C * P) * sizeof *src), *dst = malloc((size_t)(C * P) * sizeof *dst);
            if (!src || !dst) { free(src); free(dst); rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto fail; }
            zl_st_read_f32(proj, src);
            for (int64_t i = 0; i < C; i++)
                for (int64_t j = 0; j < P; j++) dst[j * C + i] = src[i * P + j];
            free(src);
            zl_weight_set_f32(&c->proj, dst, 2, (int64_t[]){P, C});
        }
    }
    c->layers = calloc((size_t)cfg->layers, sizeof *c->layers);
    if (!c->layers) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto fail; }
    for (int i = 0; i < cfg->layers; i++)
        if ((rc = load_layer(c, i))) goto fail;
    *out = c;
    return ZL_OK;
fail:
    zl_clip_free(c);
    return rc;
}

/* ---- LoRA ------------------------------------------------------------------------ */

/* The weight a LoRA module name refers to (HF names), or NULL. */
static zl_weight *lora_target(zl_clip *c, const char *module) {
    const char *p = module;
    if (!strncmp(p, "text_model.", 11)) p += 11;
    if (strncmp(p, "encoder.layers.", 15)) return NULL;
    p += 15;
    char *end;
    long i = strtol(p, &end, 10);
    if (end == p || *end != '.' || i < 0 || i >= c->cfg.layers) return NULL;
    clip_layer *L = &c->layers[i];
    end++;
    if (!strcmp(end, "self_attn.q_proj")) return &L->q_w;
    if (!strcmp(end, "self_attn.k_proj")) return &L->k_w;
    if (!strcmp(end, "self_attn.v_proj")) return &L->v_w;
    if (!strcmp(end, "self_attn.out_proj")) return &L->o_w;
    if (!strcmp(end, "mlp.fc1")) return &L->fc1_w;
    if (!strcmp(end, "mlp.fc2")) return &L->fc2_w;
    return NULL;
}

int zl_clip_apply_lora(zl_clip *c, const zl_lora *lora, float weight) {
    /* Check everything first so a bad layer changes nothing. */
    for (int k = 0; k < lora->n; k++) {
        const zl_lora_layer *l = &lora->layers[k];
        if (l->part != c->part) continue;
        zl_weight *w = lora_target(c, l->module);
        if (!w)
            return zl_set_error(ZL_ENOTFOUND, "%s: module '%s' is not a linear layer of the %s text encoder", lora->path,
                                l->module, c->part == ZL_PART_TE1 ? "first" : "second");
        if (l->kind != ZL_LORA_LINEAR || l->kh != 1 || l->kw != 1 || l->in_features != w->shape[1] ||
            l->out_features != w->shape[0] || l->rank < 1)
            return zl_set_error(ZL_ESHAPE, "%s: LoRA for '%s' is [%d -> %d], the layer is [%lld -> %lld]", lora->path,
                                l->module, l->in_features, l->out_features, (long long)w->shape[1], (long long)w->shape[0]);
    }
    for (int k = 0; k < lora->n; k++) {
        const zl_lora_layer *l = &lora->layers[k];
        if (l->part != c->part) continue;
        zl_weight *w = lora_target(c, l->module);
        int rc = zl_weight_make_resident(w);
        if (rc) return rc;
        /* W [out, in] += weight * scale * up [out, r] @ down [r, in] (or its DoRA form) */
        if ((rc = zl_lora_fold(l, weight, w->f32))) return zl_error_prefix(rc, "%s", lora->path);
    }
    return ZL_OK;
}

int zl_clip_module_weight(const zl_clip *c, const char *module, float *dst, size_t n) {
    const zl_weight *w = lora_target((zl_clip *)c, module);
    if (!w)
        return zl_set_error(ZL_ENOTFOUND, "'%s' is not a linear layer of the %s text encoder", module,
                            c->part == ZL_PART_TE1 ? "first" : "second");
    const size_t want = (size_t)w->numel;
    if (n != want) return zl_set_error(ZL_ESHAPE, "module '%s' has %zu weights, not %zu", module, want, n);
    const float *p = zl_weight_f32(w, dst);
    if (p != dst) memcpy(dst, p, n * sizeof(float));
    return ZL_OK;
}

/* ---- forward --------------------------------------------------------------------- */

static void embed_row(const zl_weight *w, int64_t row, float *dst, int64_t C) {
    if (w->f32) {
        memcpy(dst, w->f32 + row * C, (size_t)C * sizeof *dst);
        return;
    }
    size_t es = (size_t)zl_dtype_bits(w->dtype) / 8;
    zl_convert_to_f32(w->dtype, (const uint8_t *)w->data + (size_t)(row * C) * es, dst, (size_t)C);
}

int zl_clip_forward(const zl_clip *c, const int32_t *ids, int B, int T, const zl_clip_out *o) {
    return zl_clip_forward_rows(c, ids, NULL, B, T, o);
}

int zl_clip_forward_rows(const zl_clip *c, const int32_t *ids, const float *const *rows, int B, int T,
                         const zl_clip_out *o) {
    const zl_clip_config *cfg = &c->cfg;
    const int C = cfg->hidden, I = cfg->intermediate, H = cfg->heads, d = C / H;
    if (B < 1 || T < 1 || T > cfg->max_pos)
        return zl_set_error(ZL_EINVAL, "text encoder: %d x %d tokens (at most %d per prompt)", B, T, cfg->max_pos);
    for (int64_t i = 0; i < (int64_t)B * T; i++)
        if (ids[i] < 0 || ids[i] >= cfg->vocab)
            return zl_set_error(ZL_EINVAL, "text encoder: token id %d at [%lld, %lld] is outside the vocabulary (%d)", ids[i],
                                (long long)(i / T), (long long)(i % T), cfg->vocab);
    if (o->projected && !cfg->has_projection)
        return zl_set_error(ZL_EINVAL, "text encoder: this model has no text projection");
    if (o->hidden && (o->hidden_layer < 1 || o->hidden_layer > cfg->layers))
        return zl_set_error(ZL_EINVAL, "text encoder: hidden state %d asked of a %d-layer encoder", o->hidden_layer,
                            cfg->layers);
    const size_t N = (size_t)B * T;
    int need_last = o->last_hidden || o->pooled || o->projected;
    size_t wmax = (size_t)C * (size_t)(I > C ? I : C);
    if (cfg->has_projection && (size_t)cfg->projection_dim * C > wmax) wmax = (size_t)cfg->projection_dim * C;
    float *x = malloc(N * C * sizeof *x), *h = malloc(N * C * sizeof *h), *q = malloc(N * C * sizeof *q),
          *k = malloc(N * C * sizeof *k), *v = malloc(N * C * sizeof *v), *ff = malloc(N * I * sizeof *ff),
          *sw = malloc(wmax * sizeof *sw), *sb = malloc((size_t)(I > C ? I : C) * sizeof *sb),
          *sg = malloc((size_t)C * sizeof *sg), *pe = malloc((size_t)C * sizeof *pe);
    float *last = NULL;
    int rc = ZL_OK;
    if (!x || !h || !q || !k || !v || !ff || !sw || !sb || !sg || !pe) {
        rc = zl_set_error(ZL_ENOMEM, "text encoder: out of memory for %d x %d tokens", B, T);
        goto out;
    }
    /* x [N, C] = token embedding + position embedding */
    for (int t = 0; t < T; t++) {
        embed_row(&c->pos, t, pe, C);
        for (int b = 0; b < B; b++) {
            float *xr = x + ((size_t)b * T + t) * C;
            const float *row = rows ? rows[(size_t)b * T + t] : NULL;
            if (row) memcpy(xr, row, (size_t)C * sizeof *xr);
            else embed_row(&c->tok, ids[(size_t)b * T + t], xr, C);
            for (int j = 0; j < C; j++) xr[j] += pe[j];
        }
    }
#define WF(w, s) zl_weight_f32(&(w), (s))
    int n_run = need_last ? cfg->layers : cfg->layers - 1; /* the last layer only feeds last_hidden/pooled */
    if (o->hidden && o->hidden_layer > n_run) n_run = o->hidden_layer;
    for (int l = 0; l < n_run; l++) {
        const clip_layer *L = &c->layers[l];
        if (l == cfg->layers - 1 && o->penultimate) memcpy(o->penultimate, x, N * C * sizeof *x);
        /* attention block: x += out_proj(attn(LN1 x)) with a causal mask */
        const float *g = WF(L->ln1_w, sg), *bb = WF(L->ln1_b, sb);
        zl_layernorm_fwd(h, NULL, NULL, x, g, bb, (int)N, C, cfg->eps);
        zl_linear_fwd(q, h, WF(L->q_w, sw), WF(L->q_b, sb), (int)N, C, C);
        zl_linear_fwd(k, h, WF(L->k_w, sw), WF(L->k_b, sb), (int)N, C, C);
        zl_linear_fwd(v, h, WF(L->v_w, sw), WF(L->v_b, sb), (int)N, C, C);
        zl_attention_fwd(h, NULL, q, C, k, C, v, C, B, T, T, H, d, 1);
        zl_linear_fwd(q, h, WF(L->o_w, sw), WF(L->o_b, sb), (int)N, C, C);
        zl_acc(x, q, N * C);
        /* MLP block: x += fc2(act(fc1(LN2 x))) */
        g = WF(L->ln2_w, sg);
        bb = WF(L->ln2_b, sb);
        zl_layernorm_fwd(h, NULL, NULL, x, g, bb, (int)N, C, cfg->eps);
        zl_linear_fwd(ff, h, WF(L->fc1_w, sw), WF(L->fc1_b, sb), (int)N, C, I);
        if (cfg->quick_gelu) zl_quickgelu_fwd(ff, ff, N * I);
        else zl_gelu_fwd(ff, ff, N * I);
        zl_linear_fwd(h, ff, WF(L->fc2_w, sw), WF(L->fc2_b, sb), (int)N, I, C);
        zl_acc(x, h, N * C);
        if (o->hidden && l + 1 == o->hidden_layer) {
            if (o->hidden_final_ln)
                zl_layernorm_fwd(o->hidden, NULL, NULL, x, WF(c->lnf_w, sg), WF(c->lnf_b, sb), (int)N, C, cfg->eps);
            else
                memcpy(o->hidden, x, N * C * sizeof *x);
        }
    }
    if (o->penultimate && n_run == cfg->layers - 1) /* the loop stopped before the last layer */
        memcpy(o->penultimate, x, N * C * sizeof *x);
    if (need_last) {
        last = o->last_hidden ? o->last_hidden : h; /* h is free now */
        const float *g = WF(c->lnf_w, sg), *bb = WF(c->lnf_b, sb);
        zl_layernorm_fwd(last, NULL, NULL, x, g, bb, (int)N, C, cfg->eps);
        float *pooled = o->pooled ? o->pooled : q; /* q is free now */
        for (int b = 0; b < B; b++) {
            /* the first end token: argmax of the ids (first occurrence of the largest) */
            int e = 0;
            for (int t = 1; t < T; t++)
                if (ids[(size_t)b * T + t] > ids[(size_t)b * T + e]) e = t;
            memcpy(pooled + (size_t)b * C, last + ((size_t)b * T + e) * C, (size_t)C * sizeof *pooled);
        }
        if (o->projected) zl_linear_fwd(o->projected, pooled, WF(c->proj, sw), NULL, B, C, cfg->projection_dim);
    }
#undef WF
out:
    free(x); free(h); free(q); free(k); free(v); free(ff); free(sw); free(sb); free(sg); free(pe);
    return rc;
}
