/* The UNet: builds the module list and block structs from a zl_unet_config,
 * binds every module to its tensor in a diffusers or single-file checkpoint,
 * and runs the forward exactly as diffusers' UNet2DConditionModel does
 * (spec/sdxl.md "UNet forward"). LoRA attachment lives in unet_lora.c. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/unet_internal.h"
#include "nn/ops.h"

#define SF_PREFIX "model.diffusion_model."

/* ------------------------------------------------------------------ build */

static zl_unet_mod *mk(zl_unet *u, zl_module_kind kind, int in, int out, int k, int bias, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static zl_unet_mod *mk(zl_unet *u, zl_module_kind kind, int in, int out, int k, int bias, const char *fmt, ...) {
    if (u->n_mods == u->cap_mods) {
        int cap = u->cap_mods ? 2 * u->cap_mods : 256;
        zl_unet_mod **p = realloc(u->mods, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        u->mods = p;
        u->cap_mods = cap;
    }
    zl_unet_mod *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    m->name = strdup(name);
    if (!m->name) { free(m); return NULL; }
    m->kind = kind;
    m->in = in;
    m->out = out;
    m->kh = m->kw = k;
    m->has_bias = bias;
    u->mods[u->n_mods++] = m;
    return m;
}

#define MK_OR_FAIL(dst, ...) do { if (!((dst) = mk(__VA_ARGS__))) return ZL_ENOMEM; } while (0)

static int build_resnet(zl_unet *u, zl_unet_resnet *r, int cin, int cout, const char *p) {
    int te = u->cfg.time_embed_dim;
    r->cin = cin;
    r->cout = cout;
    MK_OR_FAIL(r->norm1, u, ZL_MOD_NORM, cin, cin, 1, 1, "%s.norm1", p);
    MK_OR_FAIL(r->conv1, u, ZL_MOD_CONV, cin, cout, 3, 1, "%s.conv1", p);
    MK_OR_FAIL(r->temb, u, ZL_MOD_LINEAR, te, cout, 1, 1, "%s.time_emb_proj", p);
    MK_OR_FAIL(r->norm2, u, ZL_MOD_NORM, cout, cout, 1, 1, "%s.norm2", p);
    MK_OR_FAIL(r->conv2, u, ZL_MOD_CONV, cout, cout, 3, 1, "%s.conv2", p);
    r->shortcut = NULL;
    if (cin != cout) MK_OR_FAIL(r->shortcut, u, ZL_MOD_CONV, cin, cout, 1, 1, "%s.conv_shortcut", p);
    return ZL_OK;
}

static int build_transformer(zl_unet *u, zl_unet_transformer *t, int C, int heads, int depth, const char *p) {
    int ctx = u->cfg.cross_attention_dim, lin = u->cfg.use_linear_projection;
    t->C = C;
    t->heads = heads;
    t->depth = depth;
    MK_OR_FAIL(t->norm, u, ZL_MOD_NORM, C, C, 1, 1, "%s.norm", p);
    MK_OR_FAIL(t->proj_in, u, lin ? ZL_MOD_LINEAR : ZL_MOD_CONV, C, C, 1, 1, "%s.proj_in", p);
    t->blocks = calloc((size_t)(depth ? depth : 1), sizeof *t->blocks);
    if (!t->blocks) return ZL_ENOMEM;
    for (int i = 0; i < depth; i++) {
        zl_unet_tblock *b = &t->blocks[i];
        char q[300];
        snprintf(q, sizeof q, "%s.transformer_blocks.%d", p, i);
        MK_OR_FAIL(b->norm1, u, ZL_MOD_NORM, C, C, 1, 1, "%s.norm1", q);
        MK_OR_FAIL(b->q1, u, ZL_MOD_LINEAR, C, C, 1, 0, "%s.attn1.to_q", q);
        MK_OR_FAIL(b->k1, u, ZL_MOD_LINEAR, C, C, 1, 0, "%s.attn1.to_k", q);
        MK_OR_FAIL(b->v1, u, ZL_MOD_LINEAR, C, C, 1, 0, "%s.attn1.to_v", q);
        MK_OR_FAIL(b->o1, u, ZL_MOD_LINEAR, C, C, 1, 1, "%s.attn1.to_out.0", q);
        MK_OR_FAIL(b->norm2, u, ZL_MOD_NORM, C, C, 1, 1, "%s.norm2", q);
        MK_OR_FAIL(b->q2, u, ZL_MOD_LINEAR, C, C, 1, 0, "%s.attn2.to_q", q);
        MK_OR_FAIL(b->k2, u, ZL_MOD_LINEAR, ctx, C, 1, 0, "%s.attn2.to_k", q);
        MK_OR_FAIL(b->v2, u, ZL_MOD_LINEAR, ctx, C, 1, 0, "%s.attn2.to_v", q);
        MK_OR_FAIL(b->o2, u, ZL_MOD_LINEAR, C, C, 1, 1, "%s.attn2.to_out.0", q);
        MK_OR_FAIL(b->norm3, u, ZL_MOD_NORM, C, C, 1, 1, "%s.norm3", q);
        MK_OR_FAIL(b->ff0, u, ZL_MOD_LINEAR, C, 8 * C, 1, 1, "%s.ff.net.0.proj", q);
        MK_OR_FAIL(b->ff2, u, ZL_MOD_LINEAR, 4 * C, C, 1, 1, "%s.ff.net.2", q);
    }
    MK_OR_FAIL(t->proj_out, u, lin ? ZL_MOD_LINEAR : ZL_MOD_CONV, C, C, 1, 1, "%s.proj_out", p);
    return ZL_OK;
}

/* The module list and block structs, in diffusers' order. Channel plumbing as in
 * UNet2DConditionModel.__init__ / get_down_block / get_up_block. */
static int build(zl_unet *u) {
    const zl_unet_config *c = &u->cfg;
    int n = c->n_levels, L = c->layers_per_block, rc;
    const int *boc = c->block_out_channels;
    if (n < 1 || n > ZL_MAX_LEVELS || L < 1 || L + 1 > ZL_UNET_MAX_RES)
        return zl_set_error(ZL_EUNSUPPORTED, "UNet config: %d levels with %d layers per block is not supported", n, L);
    for (int i = 0; i < n; i++)
        if (boc[i] <= 0 || c->heads[i] <= 0 || boc[i] % c->heads[i] || c->norm_num_groups <= 0 ||
            boc[i] % c->norm_num_groups)
            return zl_set_error(ZL_EFORMAT, "UNet config: level %d has %d channels, %d heads, %d groups", i, boc[i],
                                c->heads[i], c->norm_num_groups);
    if (c->in_channels <= 0 || c->out_channels <= 0 || c->time_embed_dim <= 0 || c->cross_attention_dim <= 0 || boc[0] % 2)
        return zl_set_error(ZL_EFORMAT, "UNet config: invalid sizes");
    if (c->has_text_time &&
        (c->addition_time_embed_dim <= 0 || c->addition_time_embed_dim % 2 ||
         c->projection_class_embeddings_input_dim <= 6 * c->addition_time_embed_dim))
        return zl_set_error(ZL_EFORMAT, "UNet config: added embedding %d does not hold 6 time ids of %d",
                            c->projection_class_embeddings_input_dim, c->addition_time_embed_dim);

    MK_OR_FAIL(u->conv_in, u, ZL_MOD_CONV, c->in_channels, boc[0], 3, 1, "conv_in");
    MK_OR_FAIL(u->time1, u, ZL_MOD_LINEAR, boc[0], c->time_embed_dim, 1, 1, "time_embedding.linear_1");
    MK_OR_FAIL(u->time2, u, ZL_MOD_LINEAR, c->time_embed_dim, c->time_embed_dim, 1, 1, "time_embedding.linear_2");
    if (c->has_text_time) {
        MK_OR_FAIL(u->add1, u, ZL_MOD_LINEAR, c->projection_class_embeddings_input_dim, c->time_embed_dim, 1, 1,
                   "add_embedding.linear_1");
        MK_OR_FAIL(u->add2, u, ZL_MOD_LINEAR, c->time_embed_dim, c->time_embed_dim, 1, 1, "add_embedding.linear_2");
    }
    char p[200];
    for (int i = 0; i < n; i++) {
        zl_unet_level *lv = &u->down[i];
        int cin = i ? boc[i - 1] : boc[0], cout = boc[i];
        lv->n_res = L;
        lv->has_attn = c->down_types[i] == ZL_BLOCK_CROSSATTN;
        for (int j = 0; j < L; j++) {
            snprintf(p, sizeof p, "down_blocks.%d.resnets.%d", i, j);
            if ((rc = build_resnet(u, &lv->res[j], j ? cout : cin, cout, p))) return rc;
            if (lv->has_attn) {
                snprintf(p, sizeof p, "down_blocks.%d.attentions.%d", i, j);
                if ((rc = build_transformer(u, &lv->attn[j], cout, c->heads[i], c->transformer_depth[i], p))) return rc;
            }
        }
        if (i < n - 1) MK_OR_FAIL(lv->sampler, u, ZL_MOD_CONV, cout, cout, 3, 1, "down_blocks.%d.downsamplers.0.conv", i);
    }
    if ((rc = build_resnet(u, &u->mid_res[0], boc[n - 1], boc[n - 1], "mid_block.resnets.0"))) return rc;
    if ((rc = build_transformer(u, &u->mid_attn, boc[n - 1], c->heads[n - 1], c->transformer_depth_mid,
                                "mid_block.attentions.0")))
        return rc;
    if ((rc = build_resnet(u, &u->mid_res[1], boc[n - 1], boc[n - 1], "mid_block.resnets.1"))) return rc;
    for (int i = 0; i < n; i++) {
        zl_unet_level *lv = &u->up[i];
        int d = n - 1 - i; /* the down level this up level mirrors */
        int cout = boc[d], prev = boc[i ? d + 1 : d], cinput = boc[d ? d - 1 : 0];
        lv->n_res = L + 1;
        lv->has_attn = c->up_types[i] == ZL_BLOCK_CROSSATTN;
        for (int j = 0; j <= L; j++) {
            int skip = j == L ? cinput : cout, rin = j ? cout : prev;
            snprintf(p, sizeof p, "up_blocks.%d.resnets.%d", i, j);
            if ((rc = build_resnet(u, &lv->res[j], rin + skip, cout, p))) return rc;
            if (lv->has_attn) {
                snprintf(p, sizeof p, "up_blocks.%d.attentions.%d", i, j);
                if ((rc = build_transformer(u, &lv->attn[j], cout, c->heads[d], c->transformer_depth[d], p))) return rc;
            }
        }
        if (i < n - 1) MK_OR_FAIL(lv->sampler, u, ZL_MOD_CONV, cout, cout, 3, 1, "up_blocks.%d.upsamplers.0.conv", i);
    }
    MK_OR_FAIL(u->norm_out, u, ZL_MOD_NORM, boc[0], boc[0], 1, 1, "conv_norm_out");
    MK_OR_FAIL(u->conv_out, u, ZL_MOD_CONV, boc[0], c->out_channels, 3, 1, "conv_out");
    return ZL_OK;
}

static int cmp_mod(const void *a, const void *b) {
    return strcmp((*(zl_unet_mod *const *)a)->name, (*(zl_unet_mod *const *)b)->name);
}

zl_unet_mod *zl_unet_find_mod(const zl_unet *u, const char *name) {
    int lo = 0, hi = u->n_mods - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(u->sorted[mid]->name, name);
        if (!c) return u->sorted[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

/* ------------------------------------------------------------------- load */

static int bind_tensor(zl_unet *u, zl_weight *w, const char *key, const char *mod, const int64_t *shape, int ndim,
                       int resident) {
    const zl_st_tensor *t = zl_st_find(u->file, key);
    if (!t)
        return zl_set_error(ZL_ENOTFOUND, "%s: missing tensor '%s' (UNet module %s)", zl_st_path(u->file), key, mod);
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char want[96] = "", got[96] = "";
        for (int i = 0; i < ndim; i++) snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? "," : "", (long long)shape[i]);
        for (int i = 0; i < t->ndim && i < 6; i++) snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? "," : "", (long long)t->shape[i]);
        return zl_set_error(ZL_ESHAPE, "%s: tensor '%s' has shape [%s], the UNet config expects [%s]",
                            zl_st_path(u->file), key, got, want);
    }
    if (!zl_dtype_is_float(t->dtype) || t->dtype == ZL_DT_BOOL || t->dtype == ZL_DT_U8 || t->dtype == ZL_DT_I8 ||
        t->dtype == ZL_DT_I16 || t->dtype == ZL_DT_U16 || t->dtype == ZL_DT_I32 || t->dtype == ZL_DT_U32 ||
        t->dtype == ZL_DT_I64 || t->dtype == ZL_DT_U64)
        return zl_set_error(ZL_EFORMAT, "%s: tensor '%s' has dtype %s, not a float type", zl_st_path(u->file), key,
                            zl_dtype_name(t->dtype));
    zl_weight_from_st(w, t);
    if (resident) return zl_weight_make_resident(w);
    return ZL_OK;
}

static int bind_all(zl_unet *u) {
    zl_name_table *tab = NULL;
    int rc = ZL_OK;
    if (u->single_file && (rc = zl_name_table_unet(&u->cfg, &tab))) return rc;
    size_t scratch = 0;
    for (int i = 0; i < u->n_mods && !rc; i++) {
        zl_unet_mod *m = u->mods[i];
        const char *base = m->name;
        char key[400];
        const char *pre = "";
        if (u->single_file) {
            const zl_module_info *mi = zl_name_find_diffusers(tab, m->name);
            if (!mi || !mi->ldm) {
                rc = zl_set_error(ZL_ENOTFOUND, "UNet module %s has no single-file (ldm) name", m->name);
                break;
            }
            base = mi->ldm;
            pre = SF_PREFIX;
        }
        int64_t shape[4] = {m->out, m->in, m->kh, m->kw};
        int ndim = m->kind == ZL_MOD_CONV ? 4 : m->kind == ZL_MOD_LINEAR ? 2 : 1;
        int resident = m->kind == ZL_MOD_NORM || u->mode == ZL_UNET_WEIGHTS_F32;
        snprintf(key, sizeof key, "%s%s.weight", pre, base);
        if ((rc = bind_tensor(u, &m->w, key, m->name, shape, ndim, resident))) break;
        if (m->has_bias) {
            snprintf(key, sizeof key, "%s%s.bias", pre, base);
            if ((rc = bind_tensor(u, &m->b, key, m->name, shape, 1, 1))) break;
        }
        if (zl_weight_needs_scratch(&m->w) && (size_t)m->w.numel > scratch) scratch = (size_t)m->w.numel;
    }
    zl_name_table_free(tab);
    if (rc) return rc;
    u->wscratch_n = scratch;
    if (scratch && !(u->wscratch = malloc(scratch * sizeof(float))))
        return zl_set_error(ZL_ENOMEM, "out of memory for a weight scratch of %zu floats", scratch);
    return ZL_OK;
}

static int is_single_file(const zl_st_file *f) {
    for (int i = 0; i < zl_st_count(f); i++)
        if (!strncmp(zl_st_at(f, i)->name, SF_PREFIX, strlen(SF_PREFIX))) return 1;
    return 0;
}

int zl_unet_load(const char *path, const zl_unet_load_opts *opts, zl_unet **out) {
    *out = NULL;
    zl_unet_load_opts o = {0};
    if (opts) o = *opts;
    zl_unet *u = calloc(1, sizeof *u);
    if (!u) return zl_set_error(ZL_ENOMEM, "out of memory");
    u->mode = o.weights;
    int rc = zl_st_open(path, &u->file);
    if (rc) goto fail;
    u->single_file = is_single_file(u->file);
    if (o.config) u->cfg = *o.config;
    else if (o.config_path) rc = zl_unet_config_load(o.config_path, &u->cfg);
    else if (u->single_file) rc = zl_unet_config_infer(u->file, SF_PREFIX, &u->cfg);
    else rc = zl_set_error(ZL_EINVAL, "%s: a diffusers UNet file needs its config.json", path);
    if (rc) goto fail;
    if ((rc = build(u))) {
        if (rc == ZL_ENOMEM) zl_set_error(rc, "out of memory building the UNet");
        goto fail;
    }
    if (!(u->sorted = malloc((size_t)u->n_mods * sizeof *u->sorted))) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto fail; }
    memcpy(u->sorted, u->mods, (size_t)u->n_mods * sizeof *u->sorted);
    qsort(u->sorted, (size_t)u->n_mods, sizeof *u->sorted, cmp_mod);
    if ((rc = bind_all(u))) goto fail;
    *out = u;
    return ZL_OK;
fail:
    zl_unet_free(u);
    return rc;
}

int zl_unet_load_model(const zl_model_paths *p, const zl_unet_load_opts *opts, zl_unet **out) {
    zl_unet_load_opts o = {0};
    if (opts) o = *opts;
    if (!o.config && !o.config_path && !p->single_file) o.config_path = p->unet_config;
    if (!p->unet_weights) return zl_set_error(ZL_ENOTFOUND, "%s: no UNet weights", p->root ? p->root : "model");
    return zl_unet_load(p->unet_weights, &o, out);
}

static void ws_free(zl_unet_ws *ws) {
    free(ws->cur); free(ws->nxt); free(ws->cat);
    for (int i = 0; i < 5; i++) free(ws->t[i]);
    free(ws->ba); free(ws->bd); free(ws->temb); free(ws->tproj);
    memset(ws, 0, sizeof *ws);
}

static void transformer_free(zl_unet_transformer *t) { free(t->blocks); t->blocks = NULL; }

void zl_unet_free(zl_unet *u) {
    if (!u) return;
    zl_conv2d_winograd_release();
    zl_sgemm_release_buffers();
    for (int i = 0; i < u->n_mods; i++) {
        zl_unet_mod *m = u->mods[i];
        for (int k = 0; k < m->n_br; k++) {
            free(m->br[k].merger);
            free(m->br[k].grad);
        }
        free(m->br);
        zl_weight_free(&m->w);
        zl_weight_free(&m->b);
        free(m->name);
        free(m);
    }
    for (int i = 0; i < ZL_MAX_LEVELS; i++)
        for (int j = 0; j < ZL_UNET_MAX_RES; j++) {
            transformer_free(&u->down[i].attn[j]);
            transformer_free(&u->up[i].attn[j]);
        }
    transformer_free(&u->mid_attn);
    free(u->mods);
    free(u->sorted);
    free(u->wscratch);
    ws_free(&u->ws);
    zl_st_close(u->file);
    free(u);
}

const zl_unet_config *zl_unet_get_config(const zl_unet *u) { return &u->cfg; }

int zl_unet_pooled_dim(const zl_unet *u) {
    return u->cfg.has_text_time ? u->cfg.projection_class_embeddings_input_dim - 6 * u->cfg.addition_time_embed_dim : 0;
}

/* ----------------------------------------------------------- module apply */

static const float *bias_of(const zl_unet_mod *m) { return m->has_bias ? m->b.f32 : NULL; }

/* The weight as float32: resident, aligned F32 in the file, or widened into the
 * one scratch buffer -- in parallel chunks, since at SDXL size this runs over
 * 2.6 B values per forward. Chunking is fixed, so the result is exact anyway. */
static const float *weight_f32(zl_unet *u, const zl_weight *w) {
    if (!zl_weight_needs_scratch(w)) return zl_weight_f32(w, NULL);
    const size_t chunk = (size_t)1 << 16, n = (size_t)w->numel, esz = (size_t)zl_dtype_bits(w->dtype) / 8;
    const long nc = (long)((n + chunk - 1) / chunk);
    float *dst = u->wscratch;
    const char *src = w->data;
#pragma omp parallel for schedule(static) if (nc > 1)
    for (long c = 0; c < nc; c++) {
        size_t o = (size_t)c * chunk, len = n - o < chunk ? n - o : chunk;
        zl_convert_to_f32(w->dtype, src + o * esz, dst + o, len);
    }
    return dst;
}

const float *zl_unet_weight_f32(zl_unet *u, const zl_unet_mod *m) { return weight_f32(u, &m->w); }

/* With bfloat16 products: the module's weight packed for the tile unit once,
 * at its second use (fold and unfold drop it). The first use packs slices per
 * product, as a one-off forward should: the packed copy is fresh memory, and
 * first touching SDXL's 5 GB of it costs about as much as 3 forwards' worth
 * of slice packing saves (bench/RESULTS.md). Packed from mapped file data,
 * those pages are then dropped from this process (read again if the float32
 * path ever needs them), so resident memory holds one copy. NULL: pack per
 * product (also when out of memory). Same results either way, bit for bit. */
static const uint16_t *packed_bf16(zl_unet *u, const zl_unet_mod *cm) {
    if (!zl_bf16_active() || zl_bf16_parts() != 1) return NULL; /* bf16x3 packs per product */
    zl_unet_mod *m = (zl_unet_mod *)cm; /* the packing is a cache the module owns */
    if (m->w.bf16) return m->w.bf16;
    if (m->bf16_uses < 2 && ++m->bf16_uses < 2) return NULL;
    const int K = m->in * m->kh * m->kw, conv = m->kind == ZL_MOD_CONV;
    const int from_f32 = m->w.f32 != NULL;
    m->w.bf16 = zl_bf16_pack_weight(from_f32 ? ZL_DT_F32 : m->w.dtype, from_f32 ? (const void *)m->w.f32 : m->w.data,
                                    m->out, K, conv);
    if (m->w.bf16 && !from_f32)
        zl_st_drop_pages(u->file, m->w.data, (size_t)m->w.numel * (size_t)(zl_dtype_bits(m->w.dtype) / 8));
    return m->w.bf16;
}

void zl_unet_linear(zl_unet *u, const zl_unet_mod *m, const float *x, float *y, int N) {
    if (u->mod_hook.fn) u->mod_hook.fn(u->mod_hook.ctx, m, x, N, 1, 1, 1);
    const uint16_t *wp = packed_bf16(u, m);
    /* stored F16/BF16: widened block by block inside the product (in cache);
     * the whole-weight widening is the fallback if that runs out of memory */
    if (!wp || zl_linear_fwd_bf16p(y, x, wp, bias_of(m), N, m->in, m->out) != ZL_OK)
        if (!zl_weight_needs_scratch(&m->w) ||
            zl_linear_fwd_stored(y, x, m->w.dtype, m->w.data, bias_of(m), N, m->in, m->out) != ZL_OK)
            zl_linear_fwd(y, x, weight_f32(u, &m->w), bias_of(m), N, m->in, m->out);
    for (int k = 0; k < m->n_br; k++) {
        const zl_unet_branch *br = &m->br[k];
        const float *down = br->down; // [r, in]
        if (br->merger_set) { /* A (m ⊙ x) = (A diag(m)) x: scale the rank x in matrix, not the N x in input */
            float *d = u->ws.bd;
            for (int o = 0; o < br->rank; o++)
                for (int j = 0; j < m->in; j++) d[(size_t)o * m->in + j] = br->down[(size_t)o * m->in + j] * br->merger[j];
            down = d;
        }
        float *a = u->ws.ba; // [N, r]
        zl_sgemm(0, 1, N, br->rank, m->in, 1.0f, x, m->in, down, m->in, 0.0f, a, br->rank);
        zl_sgemm(0, 1, N, m->out, br->rank, br->w * br->s, a, br->rank, br->up, br->rank, 1.0f, y, m->out);
    }
}

void zl_unet_conv(zl_unet *u, const zl_unet_mod *m, const float *x, float *y, int B, int H, int W, int stride) {
    if (u->mod_hook.fn) u->mod_hook.fn(u->mod_hook.ctx, m, x, B, H, W, stride);
    int pad = m->kh / 2;
    zl_conv_shape s = {B, m->in, H, W, m->out, m->kh, m->kw, stride, pad, pad, pad, pad};
    /* stored F16/BF16: Winograd transforms them directly, im2col widens them block by block in the product;
     * the whole-weight widening is the fallback if that runs out of memory */
    const uint16_t *wp = packed_bf16(u, m);
    if (!wp || zl_conv2d_fwd_bf16p(y, x, wp, bias_of(m), &s) != ZL_OK)
        if (!zl_weight_needs_scratch(&m->w) ||
            zl_conv2d_fwd_stored(y, x, m->w.dtype, m->w.data, bias_of(m), &s) != ZL_OK)
            zl_conv2d_fwd(y, x, weight_f32(u, &m->w), bias_of(m), &s);
    if (!m->n_br) return;
    int Ho = zl_conv_out_h(&s), Wo = zl_conv_out_w(&s), HWo = Ho * Wo;
    for (int k = 0; k < m->n_br; k++) {
        const zl_unet_branch *br = &m->br[k];
        const float *down = br->down; // [r, Cin, kh, kw]
        if (br->merger_set) { /* scale the down kernel's input channels, not the input */
            const size_t kk = (size_t)m->kh * m->kw;
            float *d = u->ws.bd;
            for (int o = 0; o < br->rank; o++)
                for (int c = 0; c < m->in; c++)
                    for (size_t t = 0; t < kk; t++) {
                        const size_t i = ((size_t)o * m->in + c) * kk + t;
                        d[i] = br->down[i] * br->merger[c];
                    }
            down = d;
        }
        zl_conv_shape sd = s;
        sd.Cout = br->rank;
        float *a = u->ws.ba; // [B, r, Ho, Wo]
        zl_conv2d_fwd(a, x, down, NULL, &sd);
        for (int b = 0; b < B; b++) /* up is 1x1: y[b] += w s up [out, r] @ a[b] [r, HWo] */
            zl_sgemm(0, 0, m->out, HWo, br->rank, br->w * br->s, br->up, br->rank, a + (size_t)b * br->rank * HWo, HWo,
                     1.0f, y + (size_t)b * m->out * HWo, HWo);
    }
}

static void groupnorm(const zl_unet_mod *m, float *y, const float *x, int B, int HW, int G, float eps, int silu) {
    if (silu) /* one pass over y instead of two */
        zl_groupnorm_silu_fwd(y, NULL, NULL, x, m->w.f32, m->b.f32, B, m->in, HW, G, eps);
    else
        zl_groupnorm_fwd(y, NULL, NULL, x, m->w.f32, m->b.f32, B, m->in, HW, G, eps);
}

/* ----------------------------------------------------------------- blocks */

/* diffusers ResnetBlock2D: h = conv1(SiLU(GN1 x)) + proj(SiLU temb); h = conv2(SiLU(GN2 h)); out = shortcut(x) + h.
 * Uses ws.t[0], ws.t[1], ws.tproj. */
void zl_unet_resnet_fwd(zl_unet *u, const zl_unet_resnet *r, const float *x, float *out, int B, int H, int W) {
    int HW = H * W, G = u->cfg.norm_num_groups;
    float eps = u->cfg.norm_eps, *t0 = u->ws.t[0], *t1 = u->ws.t[1];
    groupnorm(r->norm1, t0, x, B, HW, G, eps, 1);        // [B, cin, HW]
    zl_unet_conv(u, r->conv1, t0, t1, B, H, W, 1);      // [B, cout, HW]
    zl_unet_linear(u, r->temb, u->ws.temb, u->ws.tproj, B); // [B, cout]
    zl_add_channel_bias(t1, u->ws.tproj, B, r->cout, HW);
    groupnorm(r->norm2, t0, t1, B, HW, G, eps, 1);
    zl_unet_conv(u, r->conv2, t0, out, B, H, W, 1);     // [B, cout, HW]
    if (r->shortcut) {
        zl_unet_conv(u, r->shortcut, x, t1, B, H, W, 1);
        zl_acc(out, t1, (size_t)B * r->cout * HW);
    } else {
        zl_acc(out, x, (size_t)B * r->cout * HW);
    }
}

/* Attention: q from xq [B*Tq, C] via mq; k, v from xkv [B*Tk, ckv]; result projected by mo into y [B*Tq, C]. */
static void attention(zl_unet *u, const zl_unet_mod *mq, const zl_unet_mod *mk_, const zl_unet_mod *mv,
                      const zl_unet_mod *mo, const float *xq, const float *xkv, float *y, int B, int Tq, int Tk,
                      int heads, float *q, float *k, float *v, float *o) {
    int C = mq->out;
    zl_unet_linear(u, mq, xq, q, B * Tq);   // [B, Tq, C]
    zl_unet_linear(u, mk_, xkv, k, B * Tk); // [B, Tk, C]
    zl_unet_linear(u, mv, xkv, v, B * Tk);
    zl_attention_fwd(o, NULL, q, C, k, C, v, C, B, Tq, Tk, heads, C / heads, 0); // [B, Tq, C]
    zl_unet_linear(u, mo, o, y, B * Tq);
}

/* diffusers Transformer2DModel with BasicTransformerBlocks. Uses ws.t[0..4]. */
void zl_unet_transformer_fwd(zl_unet *u, const zl_unet_transformer *t, const float *x, const float *ctx, float *out,
                             int B, int H, int W, int T) {
    int HW = H * W, C = t->C, N = B * HW;
    float **b = u->ws.t;
    float *h = b[2]; // [B, HW, C] the running hidden state
    size_t n = (size_t)N * C;
    zl_groupnorm_fwd(b[0], NULL, NULL, x, t->norm->w.f32, t->norm->b.f32, B, C, HW, u->cfg.norm_num_groups, 1e-6f);
    if (u->cfg.use_linear_projection) {
        zl_transpose_ct(b[1], b[0], B, C, HW);
        zl_unet_linear(u, t->proj_in, b[1], h, N);
    } else {
        zl_unet_conv(u, t->proj_in, b[0], b[1], B, H, W, 1);
        zl_transpose_ct(h, b[1], B, C, HW);
    }
    for (int i = 0; i < t->depth; i++) {
        const zl_unet_tblock *k = &t->blocks[i];
        /* b[0]: normed input, then attention output; b[1] q / projection; b[3], b[4] k, v */
        zl_layernorm_fwd(b[0], NULL, NULL, h, k->norm1->w.f32, k->norm1->b.f32, N, C, 1e-5f);
        attention(u, k->q1, k->k1, k->v1, k->o1, b[0], b[0], b[1], B, HW, HW, t->heads, b[1], b[3], b[4], b[0]);
        zl_acc(h, b[1], n);
        zl_layernorm_fwd(b[0], NULL, NULL, h, k->norm2->w.f32, k->norm2->b.f32, N, C, 1e-5f);
        attention(u, k->q2, k->k2, k->v2, k->o2, b[0], ctx, b[1], B, HW, T, t->heads, b[1], b[3], b[4], b[0]);
        zl_acc(h, b[1], n);
        zl_layernorm_fwd(b[0], NULL, NULL, h, k->norm3->w.f32, k->norm3->b.f32, N, C, 1e-5f);
        zl_unet_linear(u, k->ff0, b[0], b[1], N); // [N, 8C]
        zl_geglu_fwd(b[3], b[1], N, 4 * C);      // [N, 4C]
        zl_unet_linear(u, k->ff2, b[3], b[0], N); // [N, C]
        zl_acc(h, b[0], n);
    }
    if (u->cfg.use_linear_projection) {
        zl_unet_linear(u, t->proj_out, h, b[0], N);
        zl_transpose_ct(out, b[0], B, HW, C);
    } else {
        zl_transpose_ct(b[0], h, B, HW, C);
        zl_unet_conv(u, t->proj_out, b[0], out, B, H, W, 1);
    }
    zl_acc(out, x, n);
}

/* ---------------------------------------------------------------- forward */

static size_t zmax(size_t a, size_t b) { return a > b ? a : b; }

static int ws_ensure(zl_unet *u, int B, int H, int W, int T) {
    const zl_unet_config *c = &u->cfg;
    int max_rank = 0;
    size_t bd_n = 0;
    for (int i = 0; i < u->n_mods; i++)
        for (int k = 0; k < u->mods[i]->n_br; k++) {
            if (u->mods[i]->br[k].rank > max_rank) max_rank = u->mods[i]->br[k].rank;
            const zl_unet_mod *m = u->mods[i];
            const size_t kk = (size_t)(m->kh > 1 ? m->kh : 1) * (m->kw > 1 ? m->kw : 1);
            bd_n = zmax(bd_n, (size_t)m->br[k].rank * m->in * kk);
        }
    zl_unet_ws *ws = &u->ws;
    if (ws->cur && ws->B == B && ws->H == H && ws->W == W && ws->T == T && ws->max_rank >= max_rank &&
        ws->bd_n >= bd_n)
        return ZL_OK;
    ws_free(ws);
    /* Each buffer sized for what it holds (see the block functions): cN a block's
     * [B, C, HW] at any level, catN an up-block concat, ffN the GEGLU projection
     * [N, 8C], ff4N its output, kvN cross-attention keys. */
    int n = c->n_levels, cmax = 0;
    size_t cN = (size_t)B * zmax(c->in_channels, c->out_channels) * H * W, catN = 0, ffN = 0, ff4N = 0, kvN = 0;
    for (int l = 0, hl = H, wl = W; l < n; l++, hl = (hl + 1) / 2, wl = (wl + 1) / 2) {
        size_t hw = (size_t)B * hl * wl; /* level sizes round up (stride-2 convs) */
        int cl = c->block_out_channels[l], cp = c->block_out_channels[l ? l - 1 : 0];
        int cn = c->block_out_channels[l + 1 < n ? l + 1 : l], cm = cl > cp ? cl : cp;
        if (cn > cm) cm = cn;
        if (cm > cmax) cmax = cm;
        cN = zmax(cN, (size_t)cm * hw);
        const zl_unet_level *up = &u->up[n - 1 - l];
        for (int j = 0; j < up->n_res; j++) catN = zmax(catN, (size_t)up->res[j].cin * hw);
        if (c->down_types[l] == ZL_BLOCK_CROSSATTN || c->up_types[n - 1 - l] == ZL_BLOCK_CROSSATTN || l == n - 1) {
            ffN = zmax(ffN, 8 * (size_t)cl * hw);
            ff4N = zmax(ff4N, 4 * (size_t)cl * hw);
            kvN = zmax(kvN, (size_t)B * T * cl);
        }
    }
    catN = zmax(catN, cN);
    size_t sz[5] = {catN, zmax(cN, ffN), cN, zmax(zmax(ff4N, kvN), cN), zmax(cN, kvN)};
    ws->B = B; ws->H = H; ws->W = W; ws->T = T; ws->max_rank = max_rank;
    ws->act_n = cN;
    int ok = (ws->cur = malloc(cN * sizeof(float))) && (ws->nxt = malloc(cN * sizeof(float))) &&
             (ws->cat = malloc(catN * sizeof(float))) && (ws->temb = malloc((size_t)B * c->time_embed_dim * sizeof(float))) &&
             (ws->tproj = malloc((size_t)B * cmax * sizeof(float)));
    for (int i = 0; i < 5 && ok; i++) ok = (ws->t[i] = malloc(sz[i] * sizeof(float))) != NULL;
    if (ok && bd_n) ok = (ws->bd = malloc(bd_n * sizeof(float))) != NULL;
    ws->bd_n = ok ? bd_n : 0;
    if (ok && max_rank) {
        size_t nb = (size_t)B * H * W * max_rank;
        nb = zmax(nb, (size_t)B * T * max_rank);
        ok = (ws->ba = malloc(nb * sizeof(float))) != NULL;
    }
    if (!ok) {
        ws_free(ws);
        return zl_set_error(ZL_ENOMEM, "out of memory for UNet activations (B %d, %dx%d)", B, H, W);
    }
    return ZL_OK;
}

int zl_unet_ws_ensure(zl_unet *u, int B, int H, int W, int T) { return ws_ensure(u, B, H, W, T); }

#define HOOK(kind, blk, x, C) do { if (u->hook.fn) u->hook.fn(u->hook.ctx, kind, blk, x, B, C, h, w); } while (0)
#define SWAP(a, b) do { float *_t = (a); (a) = (b); (b) = _t; } while (0)

/* Timestep embedding (+ SDXL text_time embedding) -> ws.temb = SiLU(emb) [B, time_embed_dim]. */
static int time_embedding(zl_unet *u, const zl_unet_input *in) {
    const zl_unet_config *c = &u->cfg;
    int B = in->B, te = c->time_embed_dim, d0 = c->block_out_channels[0];
    int pooled = zl_unet_pooled_dim(u), atd = c->addition_time_embed_dim;
    size_t need = (size_t)B * (d0 + 2 * te + (c->has_text_time ? c->projection_class_embeddings_input_dim + te : 0));
    float *buf = malloc(need * sizeof(float));
    if (!buf) return zl_set_error(ZL_ENOMEM, "out of memory");
    float *tsin = buf, *h = tsin + (size_t)B * d0, *emb = h + (size_t)B * te;
    zl_timestep_embedding(tsin, in->timestep, B, d0, c->flip_sin_to_cos, c->freq_shift); // [B, d0]
    zl_unet_linear(u, u->time1, tsin, h, B);
    zl_silu_fwd(h, h, (size_t)B * te);
    zl_unet_linear(u, u->time2, h, emb, B); // [B, te]
    if (c->has_text_time) {
        int P = c->projection_class_embeddings_input_dim;
        float *cat = emb + (size_t)B * te, *aug = cat + (size_t)B * P; // [B, P], [B, te]
        for (int b = 0; b < B; b++) {
            memcpy(cat + (size_t)b * P, in->text_embeds + (size_t)b * pooled, (size_t)pooled * sizeof(float));
            /* 6 ids -> [6, atd] rows, flattened after the pooled vector */
            zl_timestep_embedding(cat + (size_t)b * P + pooled, in->time_ids + (size_t)b * 6, 6, atd,
                                  c->flip_sin_to_cos, c->freq_shift);
        }
        zl_unet_linear(u, u->add1, cat, h, B);
        zl_silu_fwd(h, h, (size_t)B * te);
        zl_unet_linear(u, u->add2, h, aug, B);
        zl_acc(emb, aug, (size_t)B * te);
    }
    zl_silu_fwd(u->ws.temb, emb, (size_t)B * te);
    free(buf);
    return ZL_OK;
}

int zl_unet_forward(zl_unet *u, const zl_unet_input *in, float *out) {
    const zl_unet_config *c = &u->cfg;
    int n = c->n_levels, B = in->B, H = in->H, W = in->W, T = in->T;
    if (B < 1 || H < 1 || W < 1 || !in->sample || !in->timestep || !out)
        return zl_set_error(ZL_EINVAL, "UNet forward: missing input or empty batch");
    /* Sides need not be multiples of 2^(levels-1): a stride-2 conv gives ceil(h/2),
     * and each upsampler resizes to the skip it meets, as diffusers does. */
    if (T < 1 || !in->context) return zl_set_error(ZL_EINVAL, "UNet forward: encoder_hidden_states is required");
    if (c->has_text_time && (!in->text_embeds || !in->time_ids))
        return zl_set_error(ZL_EINVAL, "UNet forward: an SDXL UNet needs text_embeds and time_ids");
    int rc = ws_ensure(u, B, H, W, T);
    if (rc) return rc;
    if ((rc = time_embedding(u, in))) return rc;

    zl_unet_ws *ws = &u->ws;
    float *cur = ws->cur, *nxt = ws->nxt;
    int nskip = 0, skip_c[ZL_MAX_LEVELS * (ZL_UNET_MAX_RES + 1) + 1];
    int skip_h[ZL_MAX_LEVELS * (ZL_UNET_MAX_RES + 1) + 1], skip_w[ZL_MAX_LEVELS * (ZL_UNET_MAX_RES + 1) + 1];
    float *skips[ZL_MAX_LEVELS * (ZL_UNET_MAX_RES + 1) + 1];
    int h = H, w = W;

#define PUSH(ch) do { \
        size_t _n = (size_t)B * (ch) * h * w; \
        if (!(skips[nskip] = malloc(_n * sizeof(float)))) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto done; } \
        memcpy(skips[nskip], cur, _n * sizeof(float)); skip_h[nskip] = h; skip_w[nskip] = w; skip_c[nskip++] = (ch); \
    } while (0)

    zl_unet_conv(u, u->conv_in, in->sample, cur, B, h, w, 1); // [B, boc0, H, W]
    PUSH(c->block_out_channels[0]);
    for (int i = 0; i < n; i++) {
        zl_unet_level *lv = &u->down[i];
        for (int j = 0; j < lv->n_res; j++) {
            HOOK(0, &lv->res[j], cur, lv->res[j].cin);
            zl_unet_resnet_fwd(u, &lv->res[j], cur, nxt, B, h, w);
            SWAP(cur, nxt);
            if (lv->has_attn) {
                HOOK(1, &lv->attn[j], cur, lv->attn[j].C);
                zl_unet_transformer_fwd(u, &lv->attn[j], cur, in->context, nxt, B, h, w, T);
                SWAP(cur, nxt);
            }
            PUSH(lv->res[j].cout);
        }
        if (lv->sampler) {
            HOOK(2, lv->sampler, cur, lv->sampler->in);
            zl_unet_conv(u, lv->sampler, cur, nxt, B, h, w, 2);
            SWAP(cur, nxt);
            h = (h + 1) / 2; /* 3x3, stride 2, padding 1 */
            w = (w + 1) / 2;
            PUSH(lv->sampler->out);
        }
    }
    HOOK(0, &u->mid_res[0], cur, u->mid_res[0].cin);
    zl_unet_resnet_fwd(u, &u->mid_res[0], cur, nxt, B, h, w);
    SWAP(cur, nxt);
    HOOK(1, &u->mid_attn, cur, u->mid_attn.C);
    zl_unet_transformer_fwd(u, &u->mid_attn, cur, in->context, nxt, B, h, w, T);
    SWAP(cur, nxt);
    HOOK(0, &u->mid_res[1], cur, u->mid_res[1].cin);
    zl_unet_resnet_fwd(u, &u->mid_res[1], cur, nxt, B, h, w);
    SWAP(cur, nxt);
    int ccur = c->block_out_channels[n - 1];
    for (int i = 0; i < n; i++) {
        zl_unet_level *lv = &u->up[i];
        for (int j = 0; j < lv->n_res; j++) {
            float *s = skips[--nskip];
            int cs = skip_c[nskip];
            if (ccur + cs != lv->res[j].cin) {
                rc = zl_set_error(ZL_ESHAPE, "UNet: up block %d resnet %d expects %d channels, got %d + %d", i, j,
                                  lv->res[j].cin, ccur, cs);
                free(s);
                goto done;
            }
            zl_concat_fwd(ws->cat, cur, s, B, ccur, cs, h * w); // [B, ccur + cs, HW]
            free(s);
            HOOK(0, &lv->res[j], ws->cat, lv->res[j].cin);
            zl_unet_resnet_fwd(u, &lv->res[j], ws->cat, cur, B, h, w);
            ccur = lv->res[j].cout;
            if (lv->has_attn) {
                HOOK(1, &lv->attn[j], cur, lv->attn[j].C);
                zl_unet_transformer_fwd(u, &lv->attn[j], cur, in->context, nxt, B, h, w, T);
                SWAP(cur, nxt);
            }
        }
        if (lv->sampler) {
            /* the size of the skip this level's output meets next (2h x 2w unless a side was odd) */
            int h2 = nskip ? skip_h[nskip - 1] : 2 * h, w2 = nskip ? skip_w[nskip - 1] : 2 * w;
            if (h2 == 2 * h && w2 == 2 * w) zl_upsample2x_fwd(ws->cat, cur, B, ccur, h, w);
            else zl_upsample_nearest_fwd(ws->cat, cur, B, ccur, h, w, h2, w2);
            h = h2;
            w = w2;
            HOOK(2, lv->sampler, ws->cat, ccur);
            zl_unet_conv(u, lv->sampler, ws->cat, cur, B, h, w, 1);
        }
    }
    groupnorm(u->norm_out, nxt, cur, B, h * w, c->norm_num_groups, c->norm_eps, 1);
    zl_unet_conv(u, u->conv_out, nxt, out, B, h, w, 1);
done:
    while (nskip > 0) free(skips[--nskip]);
    return rc;
#undef PUSH
}
