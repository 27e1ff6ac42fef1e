/* Name tables: the complete module list of a UNet (derived from its
 * zl_unet_config exactly as diffusers' UNet2DConditionModel builds it) and of a
 * CLIP text encoder, each module under its diffusers name and its ldm/SGM name
 * (spec/formats.md §4), with kind and weight shape. Every translation of
 * on-disk names (single-file checkpoints, kohya/PEFT LoRA keys) is an exact
 * lookup in one of these tables; nothing inverts the dots-to-underscores
 * mapping. Lookups go through one open-addressing hash over four name forms
 * (diffusers, ldm, and both with dots replaced by underscores). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/names.h"

enum { FORM_DIFF = 0, FORM_LDM = 1, FORM_FLAT_DIFF = 2, FORM_FLAT_LDM = 3 };

typedef struct {
    char *key;  /* owned */
    int form;
    int idx;    /* module index; -1 = empty slot */
} slot;

struct zl_name_table {
    int n, cap;
    zl_module_info *mods;  /* strings owned */
    slot *slots;
    size_t nslots;         /* power of two */
    int oom;               /* an allocation failed while building */
};

/* ---------------------------------------------------------------- building */

static char *xstrdup(zl_name_table *t, const char *s) {
    char *p = strdup(s);
    if (!p) t->oom = 1;
    return p;
}

static void add(zl_name_table *t, const char *diff, const char *ldm, zl_module_kind kind, int in, int out, int kh,
                int kw, int bias) {
    if (t->oom) return;
    if (t->n == t->cap) {
        int nc = t->cap ? 2 * t->cap : 256;
        zl_module_info *m = realloc(t->mods, (size_t)nc * sizeof *m);
        if (!m) { t->oom = 1; return; }
        t->mods = m;
        t->cap = nc;
    }
    zl_module_info *m = &t->mods[t->n];
    m->diffusers = xstrdup(t, diff);
    m->ldm = xstrdup(t, ldm);
    m->kind = kind;
    m->in = in;
    m->out = out;
    m->kh = kh;
    m->kw = kw;
    m->has_bias = bias;
    t->n++;
}

/* printf into a fixed scratch buffer; module names are short (< 100 chars). */
#define NAME_MAX_LEN 192
static void FMT(char *buf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void FMT(char *buf, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, NAME_MAX_LEN, fmt, ap);
    va_end(ap);
}

static void add2(zl_name_table *t, const char *dp, const char *lp, const char *dsuf, const char *lsuf,
                 zl_module_kind kind, int in, int out, int kh, int kw, int bias) {
    char d[NAME_MAX_LEN], l[NAME_MAX_LEN];
    FMT(d, "%s.%s", dp, dsuf);
    FMT(l, "%s.%s", lp, lsuf);
    add(t, d, l, kind, in, out, kh, kw, bias);
}

static void norm(zl_name_table *t, const char *dp, const char *lp, const char *dsuf, const char *lsuf, int c) {
    add2(t, dp, lp, dsuf, lsuf, ZL_MOD_NORM, c, c, 1, 1, 1);
}

/* ResnetBlock2D: diffusers norm1/conv1/time_emb_proj/norm2/conv2/conv_shortcut =
 * ldm in_layers.0/in_layers.2/emb_layers.1/out_layers.0/out_layers.3/skip_connection. */
static void resnet(zl_name_table *t, const char *dp, const char *lp, int cin, int cout, int temb) {
    norm(t, dp, lp, "norm1", "in_layers.0", cin);
    add2(t, dp, lp, "conv1", "in_layers.2", ZL_MOD_CONV, cin, cout, 3, 3, 1);
    add2(t, dp, lp, "time_emb_proj", "emb_layers.1", ZL_MOD_LINEAR, temb, cout, 1, 1, 1);
    norm(t, dp, lp, "norm2", "out_layers.0", cout);
    add2(t, dp, lp, "conv2", "out_layers.3", ZL_MOD_CONV, cout, cout, 3, 3, 1);
    if (cin != cout) add2(t, dp, lp, "conv_shortcut", "skip_connection", ZL_MOD_CONV, cin, cout, 1, 1, 1);
}

/* Transformer2DModel with `depth` BasicTransformerBlocks; the same names in both
 * schemes. inner dim = heads * (C / heads) = C for every supported config. */
static void transformer(zl_name_table *t, const char *dp, const char *lp, int c, int depth, int ctx, int linear) {
    norm(t, dp, lp, "norm", "norm", c);
    zl_module_kind pk = linear ? ZL_MOD_LINEAR : ZL_MOD_CONV;
    add2(t, dp, lp, "proj_in", "proj_in", pk, c, c, 1, 1, 1);
    for (int k = 0; k < depth; k++) {
        char d[NAME_MAX_LEN], l[NAME_MAX_LEN];
        FMT(d, "%s.transformer_blocks.%d", dp, k);
        FMT(l, "%s.transformer_blocks.%d", lp, k);
        norm(t, d, l, "norm1", "norm1", c);
        add2(t, d, l, "attn1.to_q", "attn1.to_q", ZL_MOD_LINEAR, c, c, 1, 1, 0);
        add2(t, d, l, "attn1.to_k", "attn1.to_k", ZL_MOD_LINEAR, c, c, 1, 1, 0);
        add2(t, d, l, "attn1.to_v", "attn1.to_v", ZL_MOD_LINEAR, c, c, 1, 1, 0);
        add2(t, d, l, "attn1.to_out.0", "attn1.to_out.0", ZL_MOD_LINEAR, c, c, 1, 1, 1);
        norm(t, d, l, "norm2", "norm2", c);
        add2(t, d, l, "attn2.to_q", "attn2.to_q", ZL_MOD_LINEAR, c, c, 1, 1, 0);
        add2(t, d, l, "attn2.to_k", "attn2.to_k", ZL_MOD_LINEAR, ctx, c, 1, 1, 0);
        add2(t, d, l, "attn2.to_v", "attn2.to_v", ZL_MOD_LINEAR, ctx, c, 1, 1, 0);
        add2(t, d, l, "attn2.to_out.0", "attn2.to_out.0", ZL_MOD_LINEAR, c, c, 1, 1, 1);
        norm(t, d, l, "norm3", "norm3", c);
        /* GEGLU: one projection to 2 * 4C (value half, gate half) */
        add2(t, d, l, "ff.net.0.proj", "ff.net.0.proj", ZL_MOD_LINEAR, c, 8 * c, 1, 1, 1);
        add2(t, d, l, "ff.net.2", "ff.net.2", ZL_MOD_LINEAR, 4 * c, c, 1, 1, 1);
    }
    add2(t, dp, lp, "proj_out", "proj_out", pk, c, c, 1, 1, 1);
}

/* ---------------------------------------------------------------- hashing */

static uint64_t hash_str(const char *s, int form) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)form;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static int insert(zl_name_table *t, const char *key, int form, int idx) {
    char *k = strdup(key);
    if (!k) return ZL_ENOMEM;
    size_t mask = t->nslots - 1, i = (size_t)hash_str(k, form) & mask;
    while (t->slots[i].idx >= 0) {
        if (t->slots[i].form == form && !strcmp(t->slots[i].key, k)) {
            /* Two modules under one name would make lookups ambiguous: a table bug. */
            int dup = t->slots[i].idx;
            free(k);
            return zl_set_error(ZL_EINVAL, "name table: '%s' names both module %d and %d", key, dup, idx);
        }
        i = (i + 1) & mask;
    }
    t->slots[i].key = k;
    t->slots[i].form = form;
    t->slots[i].idx = idx;
    return ZL_OK;
}

static const zl_module_info *lookup(const zl_name_table *t, const char *key, int form) {
    if (!t || !key || !t->nslots) return NULL;
    size_t mask = t->nslots - 1, i = (size_t)hash_str(key, form) & mask;
    while (t->slots[i].idx >= 0) {
        if (t->slots[i].form == form && !strcmp(t->slots[i].key, key)) return &t->mods[t->slots[i].idx];
        i = (i + 1) & mask;
    }
    return NULL;
}

static void flatten(char *dst, const char *src) {
    for (; *src; src++) *dst++ = *src == '.' ? '_' : *src;
    *dst = 0;
}

static int build_index(zl_name_table *t) {
    if (t->oom) return zl_set_error(ZL_ENOMEM, "name table: out of memory");
    size_t need = (size_t)t->n * 4 * 2 + 16, ns = 16;
    while (ns < need) ns *= 2;
    t->slots = malloc(ns * sizeof *t->slots);
    if (!t->slots) return zl_set_error(ZL_ENOMEM, "name table: out of memory");
    t->nslots = ns;
    for (size_t i = 0; i < ns; i++) t->slots[i].idx = -1, t->slots[i].key = NULL;
    char flat[NAME_MAX_LEN];
    for (int i = 0; i < t->n; i++) {
        const zl_module_info *m = &t->mods[i];
        int rc;
        if ((rc = insert(t, m->diffusers, FORM_DIFF, i))) return rc;
        flatten(flat, m->diffusers);
        if ((rc = insert(t, flat, FORM_FLAT_DIFF, i))) return rc;
        if ((rc = insert(t, m->ldm, FORM_LDM, i))) return rc;
        flatten(flat, m->ldm);
        if ((rc = insert(t, flat, FORM_FLAT_LDM, i))) return rc;
    }
    return ZL_OK;
}

static zl_name_table *table_new(void) { return calloc(1, sizeof(zl_name_table)); }

void zl_name_table_free(zl_name_table *t) {
    if (!t) return;
    for (int i = 0; i < t->n; i++) {
        free((char *)t->mods[i].diffusers);
        free((char *)t->mods[i].ldm);
    }
    free(t->mods);
    for (size_t i = 0; i < t->nslots; i++) free(t->slots[i].key);
    free(t->slots);
    free(t);
}

static int finish(zl_name_table *t, zl_name_table **out) {
    int rc = build_index(t);
    if (rc) { zl_name_table_free(t); return rc; }
    *out = t;
    return ZL_OK;
}

/* ---------------------------------------------------------------- UNet */

int zl_name_table_unet(const zl_unet_config *c, zl_name_table **out) {
    *out = NULL;
    int n = c->n_levels, lpb = c->layers_per_block;
    if (n < 1 || n > ZL_MAX_LEVELS || lpb < 1 || lpb > 16)
        return zl_set_error(ZL_EINVAL, "name table: invalid UNet config (%d levels, %d layers per block)", n, lpb);
    zl_name_table *t = table_new();
    if (!t) return zl_set_error(ZL_ENOMEM, "name table: out of memory");
    const int *boc = c->block_out_channels;
    int temb = c->time_embed_dim, ctx = c->cross_attention_dim, lin = c->use_linear_projection;
    char d[NAME_MAX_LEN], l[NAME_MAX_LEN];

    add(t, "conv_in", "input_blocks.0.0", ZL_MOD_CONV, c->in_channels, boc[0], 3, 3, 1);
    add(t, "time_embedding.linear_1", "time_embed.0", ZL_MOD_LINEAR, boc[0], temb, 1, 1, 1);
    add(t, "time_embedding.linear_2", "time_embed.2", ZL_MOD_LINEAR, temb, temb, 1, 1, 1);
    if (c->has_text_time) {
        add(t, "add_embedding.linear_1", "label_emb.0.0", ZL_MOD_LINEAR, c->projection_class_embeddings_input_dim,
            temb, 1, 1, 1);
        add(t, "add_embedding.linear_2", "label_emb.0.2", ZL_MOD_LINEAR, temb, temb, 1, 1, 1);
    }

    /* Down: ldm input_blocks are numbered 1.. with lpb resnets (+ attentions)
     * and then one downsampler per level. */
    for (int i = 0; i < n; i++) {
        int cin = i ? boc[i - 1] : boc[0], cout = boc[i];
        for (int j = 0; j < lpb; j++) {
            int ib = 1 + i * (lpb + 1) + j;
            FMT(d, "down_blocks.%d.resnets.%d", i, j);
            FMT(l, "input_blocks.%d.0", ib);
            resnet(t, d, l, j ? cout : cin, cout, temb);
            if (c->down_types[i] == ZL_BLOCK_CROSSATTN) {
                FMT(d, "down_blocks.%d.attentions.%d", i, j);
                FMT(l, "input_blocks.%d.1", ib);
                transformer(t, d, l, cout, c->transformer_depth[i], ctx, lin);
            }
        }
        if (i < n - 1) {
            FMT(d, "down_blocks.%d.downsamplers.0.conv", i);
            FMT(l, "input_blocks.%d.0.op", (i + 1) * (lpb + 1));
            add(t, d, l, ZL_MOD_CONV, cout, cout, 3, 3, 1);
        }
    }

    /* Up: up_blocks[0] is the deepest; each has lpb + 1 resnets whose inputs
     * concatenate the skip connection of the matching down stage. */
    for (int i = 0; i < n; i++) {
        int cout = boc[n - 1 - i];
        int prev = i ? boc[n - i] : boc[n - 1];
        int skip_in = boc[n - 1 - (i + 1 < n ? i + 1 : n - 1)];
        int depth = c->transformer_depth[n - 1 - i];
        int attn = c->up_types[i] == ZL_BLOCK_CROSSATTN;
        for (int j = 0; j <= lpb; j++) {
            int ob = i * (lpb + 1) + j;
            int skip = j == lpb ? skip_in : cout, rin = j ? cout : prev;
            FMT(d, "up_blocks.%d.resnets.%d", i, j);
            FMT(l, "output_blocks.%d.0", ob);
            resnet(t, d, l, rin + skip, cout, temb);
            if (attn) {
                FMT(d, "up_blocks.%d.attentions.%d", i, j);
                FMT(l, "output_blocks.%d.1", ob);
                transformer(t, d, l, cout, depth, ctx, lin);
            }
        }
        if (i < n - 1) {
            /* The upsampler follows the last resnet (and its attention, if any). */
            FMT(d, "up_blocks.%d.upsamplers.0.conv", i);
            FMT(l, "output_blocks.%d.%d.conv", i * (lpb + 1) + lpb, attn ? 2 : 1);
            add(t, d, l, ZL_MOD_CONV, cout, cout, 3, 3, 1);
        }
    }

    int cm = boc[n - 1];
    resnet(t, "mid_block.resnets.0", "middle_block.0", cm, cm, temb);
    transformer(t, "mid_block.attentions.0", "middle_block.1", cm, c->transformer_depth_mid, ctx, lin);
    resnet(t, "mid_block.resnets.1", "middle_block.2", cm, cm, temb);

    add(t, "conv_norm_out", "out.0", ZL_MOD_NORM, boc[0], boc[0], 1, 1, 1);
    add(t, "conv_out", "out.2", ZL_MOD_CONV, boc[0], c->out_channels, 3, 3, 1);
    return finish(t, out);
}

/* ---------------------------------------------------------------- CLIP */

void zl_names_clip_l_config(zl_clip_config *c) {
    memset(c, 0, sizeof *c);
    c->hidden = 768; c->intermediate = 3072; c->heads = 12; c->layers = 12;
    c->max_pos = 77; c->vocab = 49408; c->projection_dim = 768;
    c->quick_gelu = 1; c->has_projection = 0; c->eps = 1e-5f;
}

void zl_names_clip_bigg_config(zl_clip_config *c) {
    memset(c, 0, sizeof *c);
    c->hidden = 1280; c->intermediate = 5120; c->heads = 20; c->layers = 32;
    c->max_pos = 77; c->vocab = 49408; c->projection_dim = 1280;
    c->quick_gelu = 0; c->has_projection = 1; c->eps = 1e-5f;
}

int zl_name_table_clip(const zl_clip_config *c, zl_name_table **out) {
    *out = NULL;
    if (c->hidden < 1 || c->intermediate < 1 || c->layers < 1 || c->layers > 1000 || c->vocab < 1 || c->max_pos < 1)
        return zl_set_error(ZL_EINVAL, "name table: invalid CLIP config");
    zl_name_table *t = table_new();
    if (!t) return zl_set_error(ZL_ENOMEM, "name table: out of memory");
    int h = c->hidden;
    add(t, "text_model.embeddings.token_embedding", "text_model.embeddings.token_embedding", ZL_MOD_EMBED, c->vocab,
        h, 1, 1, 0);
    add(t, "text_model.embeddings.position_embedding", "text_model.embeddings.position_embedding", ZL_MOD_EMBED,
        c->max_pos, h, 1, 1, 0);
    char p[NAME_MAX_LEN];
    for (int i = 0; i < c->layers; i++) {
        FMT(p, "text_model.encoder.layers.%d", i);
        static const char *const proj[4] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                            "self_attn.out_proj"};
        for (int k = 0; k < 4; k++) add2(t, p, p, proj[k], proj[k], ZL_MOD_LINEAR, h, h, 1, 1, 1);
        add2(t, p, p, "layer_norm1", "layer_norm1", ZL_MOD_NORM, h, h, 1, 1, 1);
        add2(t, p, p, "mlp.fc1", "mlp.fc1", ZL_MOD_LINEAR, h, c->intermediate, 1, 1, 1);
        add2(t, p, p, "mlp.fc2", "mlp.fc2", ZL_MOD_LINEAR, c->intermediate, h, 1, 1, 1);
        add2(t, p, p, "layer_norm2", "layer_norm2", ZL_MOD_NORM, h, h, 1, 1, 1);
    }
    add(t, "text_model.final_layer_norm", "text_model.final_layer_norm", ZL_MOD_NORM, h, h, 1, 1, 1);
    if (c->has_projection)
        add(t, "text_projection", "text_projection", ZL_MOD_LINEAR, h, c->projection_dim, 1, 1, 0);
    return finish(t, out);
}

/* ---------------------------------------------------------------- queries */

int zl_name_table_count(const zl_name_table *t) { return t ? t->n : 0; }

const zl_module_info *zl_name_table_at(const zl_name_table *t, int i) {
    return t && i >= 0 && i < t->n ? &t->mods[i] : NULL;
}

const zl_module_info *zl_name_find_diffusers(const zl_name_table *t, const char *name) {
    return lookup(t, name, FORM_DIFF);
}

const zl_module_info *zl_name_find_ldm(const zl_name_table *t, const char *name) { return lookup(t, name, FORM_LDM); }

const zl_module_info *zl_name_find_kohya(const zl_name_table *t, const char *flat, int *is_ldm) {
    const zl_module_info *m = lookup(t, flat, FORM_FLAT_DIFF);
    int ldm = 0;
    if (!m) {
        m = lookup(t, flat, FORM_FLAT_LDM);
        ldm = m != NULL;
    }
    if (is_ldm) *is_ldm = ldm;
    return m;
}
