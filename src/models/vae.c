/* The VAE (diffusers AutoencoderKL): config, loading from the diffusers or the
 * ldm layout, encoder, decoder and tiled decoding. Blocks mirror diffusers:
 * ResnetBlock2D without time embedding (GroupNorm eps 1e-6), the single-head
 * mid-block attention, the right/bottom-padded stride-2 downsampler, nearest x2
 * + conv upsampler. All compute is float32 (SDXL's VAE overflows in f16). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/ops.h"
#include "nn/weight.h"
#include "ziplora/fileio.h"
#include "ziplora/safetensors.h"
#include "ziplora/vae.h"

#define VAE_EPS 1e-6f
#define VAE_MAX_RES 8 /* resnets per level */

/* ---- config ---------------------------------------------------------------- */

void zl_vae_config_standard(zl_vae_config *c, zl_family family) {
    memset(c, 0, sizeof *c);
    c->in_channels = 3;
    c->out_channels = 3;
    c->latent_channels = 4;
    c->n_levels = 4;
    const int ch[4] = {128, 256, 512, 512};
    for (int i = 0; i < 4; i++) c->block_out_channels[i] = ch[i];
    c->layers_per_block = 2;
    c->norm_num_groups = 32;
    c->scaling_factor = family == ZL_FAMILY_SD1 ? 0.18215f : 0.13025f;
    c->sample_size = family == ZL_FAMILY_SD1 ? 512 : 1024;
}

static int check_config(const zl_vae_config *c, const char *label) {
    if (c->n_levels < 1 || c->n_levels > ZL_MAX_LEVELS)
        return zl_set_error(ZL_EFORMAT, "%s: %d VAE levels (1..%d supported)", label, c->n_levels, ZL_MAX_LEVELS);
    if (c->in_channels < 1 || c->out_channels < 1 || c->latent_channels < 1 || c->in_channels > 64 ||
        c->out_channels > 64 || c->latent_channels > 64)
        return zl_set_error(ZL_EFORMAT, "%s: bad VAE channel counts", label);
    if (c->layers_per_block < 1 || c->layers_per_block + 1 > VAE_MAX_RES)
        return zl_set_error(ZL_EFORMAT, "%s: layers_per_block %d outside [1, %d]", label, c->layers_per_block,
                            VAE_MAX_RES - 1);
    if (c->norm_num_groups < 1) return zl_set_error(ZL_EFORMAT, "%s: norm_num_groups %d", label, c->norm_num_groups);
    for (int i = 0; i < c->n_levels; i++) {
        int C = c->block_out_channels[i];
        if (C < 1 || C > 65536) return zl_set_error(ZL_EFORMAT, "%s: block_out_channels[%d] = %d", label, i, C);
        if (C % c->norm_num_groups)
            return zl_set_error(ZL_EFORMAT, "%s: block_out_channels[%d] = %d is not a multiple of norm_num_groups %d",
                                label, i, C, c->norm_num_groups);
    }
    if (!(c->scaling_factor > 0) || !isfinite(c->scaling_factor))
        return zl_set_error(ZL_EFORMAT, "%s: scaling_factor must be positive", label);
    return ZL_OK;
}

static int json_int(json_t *o, const char *k, int *out, int required, const char *label) {
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v)) {
        if (required) return zl_set_error(ZL_EFORMAT, "%s: missing \"%s\"", label, k);
        return ZL_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1000000)
        return zl_set_error(ZL_EFORMAT, "%s: \"%s\" must be a non-negative integer", label, k);
    *out = (int)json_integer_value(v);
    return ZL_OK;
}

int zl_vae_config_parse(const char *text, const char *label, zl_vae_config *c) {
    json_error_t err;
    json_t *o = json_loads(text, 0, &err);
    if (!o) return zl_set_error(ZL_EFORMAT, "%s: invalid JSON at line %d: %s", label, err.line, err.text);
    int rc = ZL_OK;
    if (!json_is_object(o)) {
        rc = zl_set_error(ZL_EFORMAT, "%s: not a JSON object", label);
        goto done;
    }
    zl_vae_config_standard(c, ZL_FAMILY_SDXL);
    json_t *cls = json_object_get(o, "_class_name");
    if (cls && (!json_is_string(cls) || strcmp(json_string_value(cls), "AutoencoderKL"))) {
        rc = zl_set_error(ZL_EUNSUPPORTED, "%s: _class_name is %s, expected AutoencoderKL", label,
                          json_is_string(cls) ? json_string_value(cls) : "not a string");
        goto done;
    }
    json_t *boc = json_object_get(o, "block_out_channels");
    if (!json_is_array(boc) || json_array_size(boc) < 1 || json_array_size(boc) > ZL_MAX_LEVELS) {
        rc = zl_set_error(ZL_EFORMAT, "%s: \"block_out_channels\" must be a list of 1..%d integers", label, ZL_MAX_LEVELS);
        goto done;
    }
    c->n_levels = (int)json_array_size(boc);
    for (int i = 0; i < c->n_levels; i++) {
        json_t *e = json_array_get(boc, i);
        if (!json_is_integer(e)) {
            rc = zl_set_error(ZL_EFORMAT, "%s: block_out_channels[%d] is not an integer", label, i);
            goto done;
        }
        json_int_t v = json_integer_value(e);
        c->block_out_channels[i] = v < 1 || v > 65536 ? -1 : (int)v;
    }
    const char *lists[] = {"down_block_types", "up_block_types"};
    const char *want[] = {"DownEncoderBlock2D", "UpDecoderBlock2D"};
    for (int l = 0; l < 2; l++) {
        json_t *a = json_object_get(o, lists[l]);
        if (!a) continue;
        size_t i;
        json_t *e;
        if (!json_is_array(a) || (int)json_array_size(a) != c->n_levels) {
            rc = zl_set_error(ZL_EFORMAT, "%s: \"%s\" must list %d blocks", label, lists[l], c->n_levels);
            goto done;
        }
        json_array_foreach(a, i, e) {
            if (!json_is_string(e) || strcmp(json_string_value(e), want[l])) {
                rc = zl_set_error(ZL_EUNSUPPORTED, "%s: %s[%zu] is not %s", label, lists[l], i, want[l]);
                goto done;
            }
        }
    }
    if ((rc = json_int(o, "in_channels", &c->in_channels, 0, label)) ||
        (rc = json_int(o, "out_channels", &c->out_channels, 0, label)) ||
        (rc = json_int(o, "latent_channels", &c->latent_channels, 0, label)) ||
        (rc = json_int(o, "layers_per_block", &c->layers_per_block, 0, label)) ||
        (rc = json_int(o, "norm_num_groups", &c->norm_num_groups, 0, label)) ||
        (rc = json_int(o, "sample_size", &c->sample_size, 0, label)))
        goto done;
    json_t *sf = json_object_get(o, "scaling_factor");
    if (sf) {
        if (!json_is_number(sf)) {
            rc = zl_set_error(ZL_EFORMAT, "%s: \"scaling_factor\" must be a number", label);
            goto done;
        }
        c->scaling_factor = (float)json_number_value(sf);
    }
    json_t *act = json_object_get(o, "act_fn");
    if (act && (!json_is_string(act) || strcmp(json_string_value(act), "silu"))) {
        rc = zl_set_error(ZL_EUNSUPPORTED, "%s: act_fn must be \"silu\"", label);
        goto done;
    }
    rc = check_config(c, label);
done:
    json_decref(o);
    return rc;
}

int zl_vae_config_load(const char *path, zl_vae_config *c) {
    char *text;
    size_t len;
    int rc = zl_read_file(path, &text, &len);
    if (rc) return rc;
    rc = zl_vae_config_parse(text, path, c);
    free(text);
    return rc;
}

/* ---- model ----------------------------------------------------------------- */

typedef struct {
    zl_weight w;  /* [Cout, Cin, k, k], stored dtype */
    float *b;     /* [Cout] resident */
    int cin, cout, k;
} vae_conv;

typedef struct {
    float *g, *b; /* [C] */
    int C;
} vae_norm;

typedef struct {
    int cin, cout, has_sc;
    vae_norm n1, n2;
    vae_conv c1, c2, sc;
} vae_resnet;

typedef struct {
    int C;
    vae_norm gn;
    vae_conv q, k, v, o; /* treated as Linear [C, C] */
} vae_attn;

typedef struct {
    int n_res;
    vae_resnet res[VAE_MAX_RES];
    int has_resample;
    vae_conv resample; /* encoder: downsample conv; decoder: upsample conv */
} vae_level;

struct zl_vae {
    zl_vae_config cfg;
    zl_st_file *f;
    int ldm;             /* ldm names */
    char prefix[32];     /* "first_stage_model." or "" */
    float *scratch;      /* widened weights, max numel */
    size_t scratch_n;
    /* encoder */
    vae_conv enc_in, enc_out, quant;
    vae_level enc[ZL_MAX_LEVELS];
    vae_resnet enc_mid[2];
    vae_attn enc_attn;
    vae_norm enc_norm;
    /* decoder; dec[i] is diffusers up_blocks.i (deepest first) */
    vae_conv post_quant, dec_in, dec_out;
    vae_level dec[ZL_MAX_LEVELS];
    vae_resnet dec_mid[2];
    vae_attn dec_attn;
    vae_norm dec_norm;
    zl_vae_tile_mode tile_mode;
    int tile, overlap;
    /* listing mode (zl_vae_list_tensors): no file; each expected tensor is reported */
    void (*list_cb)(void *ctx, const char *name, int ndim, const int64_t *shape);
    void *list_ctx;
};

/* diffusers name -> ldm name. Only the names this file builds occur. */
static void to_ldm(const zl_vae *v, const char *d, char *out, size_t cap) {
    char buf[256];
    int i, j, n = 0;
    const char *rest = NULL;
    char part[8] = "";
    if (sscanf(d, "%7[a-z].down_blocks.%d.resnets.%d.%n", part, &i, &j, &n) == 3 && n) {
        rest = d + n;
        if (!strncmp(rest, "conv_shortcut", 13)) snprintf(buf, sizeof buf, "%s.down.%d.block.%d.nin_shortcut%s", part, i, j, rest + 13);
        else snprintf(buf, sizeof buf, "%s.down.%d.block.%d.%s", part, i, j, rest);
    } else if (n = 0, sscanf(d, "%7[a-z].down_blocks.%d.downsamplers.0.conv%n", part, &i, &n) == 2 && n) {
        snprintf(buf, sizeof buf, "%s.down.%d.downsample.conv%s", part, i, d + n);
    } else if (n = 0, sscanf(d, "%7[a-z].up_blocks.%d.resnets.%d.%n", part, &i, &j, &n) == 3 && n) {
        rest = d + n;
        int li = v->cfg.n_levels - 1 - i;
        if (!strncmp(rest, "conv_shortcut", 13)) snprintf(buf, sizeof buf, "%s.up.%d.block.%d.nin_shortcut%s", part, li, j, rest + 13);
        else snprintf(buf, sizeof buf, "%s.up.%d.block.%d.%s", part, li, j, rest);
    } else if (n = 0, sscanf(d, "%7[a-z].up_blocks.%d.upsamplers.0.conv%n", part, &i, &n) == 2 && n) {
        snprintf(buf, sizeof buf, "%s.up.%d.upsample.conv%s", part, v->cfg.n_levels - 1 - i, d + n);
    } else if (n = 0, sscanf(d, "%7[a-z].mid_block.resnets.%d.%n", part, &i, &n) == 2 && n) {
        snprintf(buf, sizeof buf, "%s.mid.block_%d.%s", part, i + 1, d + n);
    } else if (n = 0, sscanf(d, "%7[a-z].mid_block.attentions.0.%n", part, &n) == 1 && n) {
        rest = d + n;
        const char *map[][2] = {{"group_norm", "norm"}, {"to_q", "q"}, {"to_k", "k"}, {"to_v", "v"}, {"to_out.0", "proj_out"}};
        const char *dst = rest, *tail = "";
        for (int m = 0; m < 5; m++) {
            size_t l = strlen(map[m][0]);
            if (!strncmp(rest, map[m][0], l) && rest[l] == '.') { dst = map[m][1]; tail = rest + l; break; }
        }
        snprintf(buf, sizeof buf, "%s.mid.attn_1.%s%s", part, dst, tail);
    } else if (n = 0, sscanf(d, "%7[a-z].conv_norm_out%n", part, &n) == 1 && n) {
        snprintf(buf, sizeof buf, "%s.norm_out%s", part, d + n);
    } else {
        snprintf(buf, sizeof buf, "%s", d);
    }
    snprintf(out, cap, "%s%s", v->prefix, buf);
}

/* Old diffusers attention names (query/key/value/proj_attn). */
static int to_old_attn(const char *d, char *out, size_t cap) {
    const char *map[][2] = {{"attentions.0.to_q.", "attentions.0.query."},
                            {"attentions.0.to_k.", "attentions.0.key."},
                            {"attentions.0.to_v.", "attentions.0.value."},
                            {"attentions.0.to_out.0.", "attentions.0.proj_attn."}};
    for (int m = 0; m < 4; m++) {
        const char *p = strstr(d, map[m][0]);
        if (p) {
            snprintf(out, cap, "%.*s%s%s", (int)(p - d), d, map[m][1], p + strlen(map[m][0]));
            return 1;
        }
    }
    return 0;
}

static const zl_st_tensor *find_t(const zl_vae *v, const char *dname, char *used, size_t cap) {
    if (v->ldm) {
        to_ldm(v, dname, used, cap);
        return zl_st_find(v->f, used);
    }
    snprintf(used, cap, "%s", dname);
    const zl_st_tensor *t = zl_st_find(v->f, used);
    if (!t && to_old_attn(dname, used, cap)) t = zl_st_find(v->f, used);
    if (!t) snprintf(used, cap, "%s", dname);
    return t;
}

static void shape_str(char *buf, size_t cap, int nd, const int64_t *s) {
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < nd && o < cap; i++) o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? "," : "", (long long)s[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

/* Fetch a tensor by its diffusers name and check its shape. `alt_2d`: a
 * [a, b, 1, 1] tensor may also be stored as [a, b] (attention projections). */
static int get(zl_vae *v, const char *dname, int nd, const int64_t *shape, int alt_2d, const zl_st_tensor **out) {
    char used[300];
    if (v->list_cb) {
        *out = NULL;
        if (v->ldm) to_ldm(v, dname, used, sizeof used);
        else snprintf(used, sizeof used, "%s", dname);
        /* the ldm layout stores the attention projections as 1x1 convs, diffusers as Linear */
        v->list_cb(v->list_ctx, used, alt_2d && !v->ldm ? 2 : nd, shape);
        return ZL_OK;
    }
    const zl_st_tensor *t = find_t(v, dname, used, sizeof used);
    if (!t) return zl_set_error(ZL_ENOTFOUND, "%s: missing VAE tensor '%s'", zl_st_path(v->f), used);
    if (!zl_dtype_is_float(t->dtype) || t->dtype == ZL_DT_BOOL)
        return zl_set_error(ZL_EFORMAT, "%s: tensor '%s' has dtype %s", zl_st_path(v->f), used, zl_dtype_name(t->dtype));
    int ok = t->ndim == nd;
    for (int i = 0; ok && i < nd; i++) ok = t->shape[i] == shape[i];
    if (!ok && alt_2d) {
        /* attention projections: [C, C] (diffusers) or [C, C, 1, 1] (ldm) */
        ok = (t->ndim == 2 || (t->ndim == 4 && t->shape[2] == 1 && t->shape[3] == 1)) && t->shape[0] == shape[0] &&
             t->shape[1] == shape[1];
    }
    if (!ok) {
        char a[96], b[96];
        shape_str(a, sizeof a, t->ndim, t->shape);
        shape_str(b, sizeof b, nd, shape);
        return zl_set_error(ZL_ESHAPE, "%s: VAE tensor '%s' has shape %s, expected %s", zl_st_path(v->f), used, a, b);
    }
    *out = t;
    return ZL_OK;
}

static int load_vec(zl_vae *v, const char *dname, int C, float **out) {
    const zl_st_tensor *t;
    int64_t s[1] = {C};
    int rc = get(v, dname, 1, s, 0, &t);
    if (rc) return rc;
    if (!t) return ZL_OK; /* listing */
    *out = malloc(sizeof(float) * (size_t)C);
    if (!*out) return zl_set_error(ZL_ENOMEM, "out of memory loading the VAE");
    zl_st_read_f32(t, *out);
    return ZL_OK;
}

static int load_conv(zl_vae *v, vae_conv *c, const char *base, int cout, int cin, int k, int linear) {
    char n[256];
    const zl_st_tensor *t;
    c->cin = cin;
    c->cout = cout;
    c->k = k;
    int64_t s[4] = {cout, cin, k, k};
    snprintf(n, sizeof n, "%s.weight", base);
    int rc = linear ? get(v, n, 4, s, 1, &t) : get(v, n, 4, s, 0, &t);
    if (rc) return rc;
    if (t) zl_weight_from_st(&c->w, t);
    if ((size_t)c->w.numel > v->scratch_n && zl_weight_needs_scratch(&c->w)) v->scratch_n = (size_t)c->w.numel;
    snprintf(n, sizeof n, "%s.bias", base);
    return load_vec(v, n, cout, &c->b);
}

static int load_norm(zl_vae *v, vae_norm *m, const char *base, int C) {
    char n[256];
    m->C = C;
    snprintf(n, sizeof n, "%s.weight", base);
    int rc = load_vec(v, n, C, &m->g);
    if (rc) return rc;
    snprintf(n, sizeof n, "%s.bias", base);
    return load_vec(v, n, C, &m->b);
}

static int load_resnet(zl_vae *v, vae_resnet *r, const char *base, int cin, int cout) {
    char n[256];
    int rc;
    r->cin = cin;
    r->cout = cout;
    r->has_sc = cin != cout;
    snprintf(n, sizeof n, "%s.norm1", base);
    if ((rc = load_norm(v, &r->n1, n, cin))) return rc;
    snprintf(n, sizeof n, "%s.conv1", base);
    if ((rc = load_conv(v, &r->c1, n, cout, cin, 3, 0))) return rc;
    snprintf(n, sizeof n, "%s.norm2", base);
    if ((rc = load_norm(v, &r->n2, n, cout))) return rc;
    snprintf(n, sizeof n, "%s.conv2", base);
    if ((rc = load_conv(v, &r->c2, n, cout, cout, 3, 0))) return rc;
    if (r->has_sc) {
        snprintf(n, sizeof n, "%s.conv_shortcut", base);
        if ((rc = load_conv(v, &r->sc, n, cout, cin, 1, 0))) return rc;
    }
    return ZL_OK;
}

static int load_attn(zl_vae *v, vae_attn *a, const char *base, int C) {
    char n[256];
    int rc;
    a->C = C;
    snprintf(n, sizeof n, "%s.group_norm", base);
    if ((rc = load_norm(v, &a->gn, n, C))) return rc;
    const char *names[4] = {"to_q", "to_k", "to_v", "to_out.0"};
    vae_conv *dst[4] = {&a->q, &a->k, &a->v, &a->o};
    for (int i = 0; i < 4; i++) {
        snprintf(n, sizeof n, "%s.%s", base, names[i]);
        if ((rc = load_conv(v, dst[i], n, C, C, 1, 1))) return rc;
    }
    return ZL_OK;
}

static void free_conv(vae_conv *c) {
    zl_weight_free(&c->w);
    free(c->b);
}
static void free_norm(vae_norm *m) {
    free(m->g);
    free(m->b);
}
static void free_resnet(vae_resnet *r) {
    free_norm(&r->n1);
    free_norm(&r->n2);
    free_conv(&r->c1);
    free_conv(&r->c2);
    free_conv(&r->sc);
}
static void free_attn(vae_attn *a) {
    free_norm(&a->gn);
    free_conv(&a->q);
    free_conv(&a->k);
    free_conv(&a->v);
    free_conv(&a->o);
}

void zl_vae_free(zl_vae *v) {
    if (!v) return;
    zl_conv2d_winograd_release();
    free_conv(&v->enc_in);
    free_conv(&v->enc_out);
    free_conv(&v->quant);
    free_conv(&v->post_quant);
    free_conv(&v->dec_in);
    free_conv(&v->dec_out);
    for (int i = 0; i < ZL_MAX_LEVELS; i++) {
        for (int j = 0; j < VAE_MAX_RES; j++) {
            free_resnet(&v->enc[i].res[j]);
            free_resnet(&v->dec[i].res[j]);
        }
        free_conv(&v->enc[i].resample);
        free_conv(&v->dec[i].resample);
    }
    for (int i = 0; i < 2; i++) {
        free_resnet(&v->enc_mid[i]);
        free_resnet(&v->dec_mid[i]);
    }
    free_attn(&v->enc_attn);
    free_attn(&v->dec_attn);
    free_norm(&v->enc_norm);
    free_norm(&v->dec_norm);
    free(v->scratch);
    zl_st_close(v->f);
    free(v);
}

/* Shapes of a single file's VAE; groups cannot be read from shapes. */
static int infer_config(zl_vae *v, zl_family family, zl_vae_config *c) {
    const char *path = zl_st_path(v->f);
    char n[300];
    zl_vae_config_standard(c, family);
    snprintf(n, sizeof n, "%sencoder.conv_in.weight", v->prefix);
    const zl_st_tensor *t = zl_st_find(v->f, n);
    if (!t || t->ndim != 4) return zl_set_error(ZL_ENOTFOUND, "%s: missing VAE tensor '%s'", path, n);
    c->in_channels = (int)t->shape[1];
    int L = 0;
    for (;; L++) {
        snprintf(n, sizeof n, "%sencoder.down.%d.block.0.conv1.weight", v->prefix, L);
        t = zl_st_find(v->f, n);
        if (!t) break;
        if (L >= ZL_MAX_LEVELS || t->ndim != 4) return zl_set_error(ZL_EUNSUPPORTED, "%s: unsupported VAE layout", path);
        c->block_out_channels[L] = (int)t->shape[0];
    }
    if (L < 1) return zl_set_error(ZL_ENOTFOUND, "%s: no VAE encoder blocks (encoder.down.0.*)", path);
    c->n_levels = L;
    int lpb = 0;
    for (;; lpb++) {
        snprintf(n, sizeof n, "%sencoder.down.0.block.%d.conv1.weight", v->prefix, lpb);
        if (!zl_st_find(v->f, n) || lpb > VAE_MAX_RES) break;
    }
    c->layers_per_block = lpb;
    snprintf(n, sizeof n, "%spost_quant_conv.weight", v->prefix);
    t = zl_st_find(v->f, n);
    if (!t || t->ndim < 1) return zl_set_error(ZL_ENOTFOUND, "%s: missing VAE tensor '%s'", path, n);
    c->latent_channels = (int)t->shape[0];
    snprintf(n, sizeof n, "%sdecoder.conv_out.weight", v->prefix);
    t = zl_st_find(v->f, n);
    if (!t || t->ndim < 1) return zl_set_error(ZL_ENOTFOUND, "%s: missing VAE tensor '%s'", path, n);
    c->out_channels = (int)t->shape[0];
    for (int i = 0; i < L; i++)
        if (c->block_out_channels[i] % 32)
            return zl_set_error(ZL_EUNSUPPORTED,
                                "%s: VAE widths are not multiples of 32 groups, so the GroupNorm group count cannot be "
                                "inferred; pass the model's vae/config.json",
                                path);
    return ZL_OK;
}

static int build(zl_vae *v) {
    const zl_vae_config *c = &v->cfg;
    int L = c->n_levels, rc;
    char n[256];
    const int *ch = c->block_out_channels;
    /* encoder */
    if ((rc = load_conv(v, &v->enc_in, "encoder.conv_in", ch[0], c->in_channels, 3, 0))) return rc;
    int prev = ch[0];
    for (int i = 0; i < L; i++) {
        vae_level *lv = &v->enc[i];
        lv->n_res = c->layers_per_block;
        for (int j = 0; j < lv->n_res; j++) {
            snprintf(n, sizeof n, "encoder.down_blocks.%d.resnets.%d", i, j);
            if ((rc = load_resnet(v, &lv->res[j], n, j ? ch[i] : prev, ch[i]))) return rc;
        }
        prev = ch[i];
        lv->has_resample = i < L - 1;
        if (lv->has_resample) {
            snprintf(n, sizeof n, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            if ((rc = load_conv(v, &lv->resample, n, ch[i], ch[i], 3, 0))) return rc;
        }
    }
    int top = ch[L - 1];
    for (int j = 0; j < 2; j++) {
        snprintf(n, sizeof n, "encoder.mid_block.resnets.%d", j);
        if ((rc = load_resnet(v, &v->enc_mid[j], n, top, top))) return rc;
    }
    if ((rc = load_attn(v, &v->enc_attn, "encoder.mid_block.attentions.0", top))) return rc;
    if ((rc = load_norm(v, &v->enc_norm, "encoder.conv_norm_out", top))) return rc;
    int lc = c->latent_channels;
    if ((rc = load_conv(v, &v->enc_out, "encoder.conv_out", 2 * lc, top, 3, 0))) return rc;
    if ((rc = load_conv(v, &v->quant, "quant_conv", 2 * lc, 2 * lc, 1, 0))) return rc;
    /* decoder */
    if ((rc = load_conv(v, &v->post_quant, "post_quant_conv", lc, lc, 1, 0))) return rc;
    if ((rc = load_conv(v, &v->dec_in, "decoder.conv_in", top, lc, 3, 0))) return rc;
    for (int j = 0; j < 2; j++) {
        snprintf(n, sizeof n, "decoder.mid_block.resnets.%d", j);
        if ((rc = load_resnet(v, &v->dec_mid[j], n, top, top))) return rc;
    }
    if ((rc = load_attn(v, &v->dec_attn, "decoder.mid_block.attentions.0", top))) return rc;
    prev = top;
    for (int i = 0; i < L; i++) {
        int oc = ch[L - 1 - i];
        vae_level *lv = &v->dec[i];
        lv->n_res = c->layers_per_block + 1;
        for (int j = 0; j < lv->n_res; j++) {
            snprintf(n, sizeof n, "decoder.up_blocks.%d.resnets.%d", i, j);
            if ((rc = load_resnet(v, &lv->res[j], n, j ? oc : prev, oc))) return rc;
        }
        prev = oc;
        lv->has_resample = i < L - 1;
        if (lv->has_resample) {
            snprintf(n, sizeof n, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            if ((rc = load_conv(v, &lv->resample, n, oc, oc, 3, 0))) return rc;
        }
    }
    if ((rc = load_norm(v, &v->dec_norm, "decoder.conv_norm_out", ch[0]))) return rc;
    if ((rc = load_conv(v, &v->dec_out, "decoder.conv_out", c->out_channels, ch[0], 3, 0))) return rc;
    if (v->scratch_n && !v->list_cb) {
        v->scratch = malloc(sizeof(float) * v->scratch_n);
        if (!v->scratch) return zl_set_error(ZL_ENOMEM, "out of memory for the VAE weight scratch");
    }
    return ZL_OK;
}

int zl_vae_load(const char *weights_path, const zl_vae_load_opts *opts, zl_vae **out) {
    *out = NULL;
    zl_vae *v = calloc(1, sizeof *v);
    if (!v) return zl_set_error(ZL_ENOMEM, "out of memory");
    v->tile_mode = ZL_VAE_TILE_AUTO;
    v->tile = 80;
    v->overlap = 16;
    int rc = zl_st_open(weights_path, &v->f);
    if (rc) {
        free(v);
        return rc;
    }
    /* layout: ldm names (with or without the checkpoint prefix) or diffusers names */
    if (zl_st_find(v->f, "first_stage_model.encoder.conv_in.weight")) {
        v->ldm = 1;
        snprintf(v->prefix, sizeof v->prefix, "first_stage_model.");
    } else if (zl_st_find(v->f, "encoder.down.0.block.0.conv1.weight")) {
        v->ldm = 1;
    } else if (!zl_st_find(v->f, "encoder.conv_in.weight")) {
        rc = zl_set_error(ZL_ENOTFOUND, "%s: no VAE in this file (neither first_stage_model.* nor encoder.conv_in.weight)",
                          weights_path);
        zl_vae_free(v);
        return rc;
    }
    zl_family fam = opts && opts->family ? opts->family : ZL_FAMILY_SDXL;
    if (opts && opts->config) {
        v->cfg = *opts->config;
        rc = check_config(&v->cfg, "VAE config");
    } else if (opts && opts->config_path) {
        rc = zl_vae_config_load(opts->config_path, &v->cfg);
    } else if (v->ldm) {
        rc = infer_config(v, fam, &v->cfg);
    } else {
        rc = zl_set_error(ZL_EINVAL, "%s: a diffusers VAE needs its config.json", weights_path);
    }
    if (!rc) rc = build(v);
    if (rc) {
        zl_vae_free(v);
        return rc;
    }
    *out = v;
    return ZL_OK;
}

int zl_vae_load_model(const zl_model_paths *p, const zl_vae_load_opts *opts, zl_vae **out) {
    *out = NULL;
    if (!p->vae_weights) return zl_set_error(ZL_ENOTFOUND, "%s: the model has no VAE", p->root ? p->root : "model");
    zl_vae_load_opts o = {0};
    if (opts) o = *opts;
    if (!o.family) o.family = p->family;
    if (!o.config && !o.config_path && p->vae_config) o.config_path = p->vae_config;
    int rc = zl_vae_load(p->vae_weights, &o, out);
    return rc;
}

int zl_vae_list_tensors(const zl_vae_config *cfg, int ldm_layout,
                        void (*cb)(void *ctx, const char *name, int ndim, const int64_t *shape), void *ctx) {
    int rc = check_config(cfg, "VAE config");
    if (rc) return rc;
    zl_vae *v = calloc(1, sizeof *v);
    if (!v) return zl_set_error(ZL_ENOMEM, "out of memory");
    v->cfg = *cfg;
    v->ldm = ldm_layout;
    if (ldm_layout) snprintf(v->prefix, sizeof v->prefix, "first_stage_model.");
    v->list_cb = cb;
    v->list_ctx = ctx;
    rc = build(v);
    zl_vae_free(v);
    return rc;
}

const zl_vae_config *zl_vae_get_config(const zl_vae *v) { return &v->cfg; }

int zl_vae_scale(const zl_vae *v) { return 1 << (v->cfg.n_levels - 1); }

int zl_vae_set_tiling(zl_vae *v, zl_vae_tile_mode mode, int tile, int overlap) {
    if (mode != ZL_VAE_TILE_AUTO && mode != ZL_VAE_TILE_OFF && mode != ZL_VAE_TILE_ON)
        return zl_set_error(ZL_EINVAL, "vae tiling: unknown mode %d", (int)mode);
    if (tile < 2 || overlap < 0 || overlap >= tile)
        return zl_set_error(ZL_EINVAL, "vae tiling: need tile >= 2 and 0 <= overlap < tile, got %d and %d", tile, overlap);
    v->tile_mode = mode;
    v->tile = tile;
    v->overlap = overlap;
    return ZL_OK;
}

/* ---- forward ------------------------------------------------------------------ */

/* y [Cout, H', W'] = conv(x [Cin, H, W]) for one image, with the given padding. */
static void conv_run(zl_vae *v, const vae_conv *c, float *y, const float *x, int H, int W, int stride, int pt, int pl,
                     int pb, int pr) {
    zl_conv_shape s = {1, c->cin, H, W, c->cout, c->k, c->k, stride, pt, pl, pb, pr};
    zl_conv2d_fwd(y, x, zl_weight_f32(&c->w, v->scratch), c->b, &s);
}

static void conv_same(zl_vae *v, const vae_conv *c, float *y, const float *x, int H, int W) {
    int p = c->k / 2;
    conv_run(v, c, y, x, H, W, 1, p, p, p, p);
}

static void gn_silu(const vae_norm *n, float *y, const float *x, int HW, int G, int silu) {
    zl_groupnorm_fwd(y, NULL, NULL, x, n->g, n->b, 1, n->C, HW, G, VAE_EPS);
    if (silu) zl_silu_fwd(y, y, (size_t)n->C * HW);
}

/* out [cout, HW] = resnet(x [cin, HW]); out must not alias x. */
static int resnet_fwd(zl_vae *v, const vae_resnet *r, float *out, const float *x, int H, int W) {
    size_t HW = (size_t)H * W;
    int G = v->cfg.norm_num_groups;
    float *t = malloc(sizeof(float) * HW * r->cin);  // [cin, HW]
    float *h = malloc(sizeof(float) * HW * r->cout);                                         // [cout, HW]
    if (!t || !h) {
        free(t);
        free(h);
        return zl_set_error(ZL_ENOMEM, "VAE: out of memory for a %dx%d activation", H, W);
    }
    gn_silu(&r->n1, t, x, (int)HW, G, 1);
    conv_same(v, &r->c1, h, t, H, W);
    free(t); /* release before conv2 so that at most x, h and out are live */
    t = NULL;
    gn_silu(&r->n2, h, h, (int)HW, G, 1);
    conv_same(v, &r->c2, out, h, H, W);
    if (r->has_sc) {
        conv_run(v, &r->sc, h, x, H, W, 1, 0, 0, 0, 0);
        zl_acc(out, h, HW * r->cout);
    } else {
        zl_acc(out, x, HW * r->cout);
    }
    free(t);
    free(h);
    return ZL_OK;
}

/* x [C, HW] += attention(GN(x)) in place (single head, biases, residual). */
static int attn_fwd(zl_vae *v, const vae_attn *a, float *x, int HW) {
    int C = a->C, G = v->cfg.norm_num_groups;
    size_t n = (size_t)C * HW;
    float *h = malloc(sizeof(float) * n), *tok = malloc(sizeof(float) * n); // [C, HW], [HW, C]
    float *qkv = malloc(sizeof(float) * n * 3);                           // [3][HW, C]
    if (!h || !tok || !qkv) {
        free(h);
        free(tok);
        free(qkv);
        return zl_set_error(ZL_ENOMEM, "VAE: out of memory for attention over %d positions", HW);
    }
    gn_silu(&a->gn, h, x, HW, G, 0);
    zl_transpose_ct(tok, h, 1, C, HW);
    const vae_conv *p[3] = {&a->q, &a->k, &a->v};
    for (int i = 0; i < 3; i++) zl_linear_fwd(qkv + (size_t)i * n, tok, zl_weight_f32(&p[i]->w, v->scratch), p[i]->b, HW, C, C);
    zl_attention_fwd(h, NULL, qkv, C, qkv + n, C, qkv + 2 * n, C, 1, HW, HW, 1, C, 0); /* h: [HW, C] */
    zl_linear_fwd(tok, h, zl_weight_f32(&a->o.w, v->scratch), a->o.b, HW, C, C);
    zl_transpose_ct(h, tok, 1, HW, C); /* back to [C, HW] */
    zl_acc(x, h, n);
    free(h);
    free(tok);
    free(qkv);
    return ZL_OK;
}

/* Run a resnet and swap the result into *x (which is reallocated as needed). */
static int resnet_step(zl_vae *v, const vae_resnet *r, float **x, int H, int W) {
    float *o = malloc(sizeof(float) * (size_t)H * W * r->cout); // [cout, H, W]
    if (!o) return zl_set_error(ZL_ENOMEM, "VAE: out of memory for a %dx%d activation", H, W);
    int rc = resnet_fwd(v, r, o, *x, H, W);
    if (rc) {
        free(o);
        return rc;
    }
    free(*x);
    *x = o;
    return ZL_OK;
}

static int mid_fwd(zl_vae *v, const vae_resnet *mid, const vae_attn *a, float **x, int H, int W) {
    int rc = resnet_step(v, &mid[0], x, H, W);
    if (!rc) rc = attn_fwd(v, a, *x, H * W);
    if (!rc) rc = resnet_step(v, &mid[1], x, H, W);
    return rc;
}

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* One image: img [in_ch, H, W] -> moments [2*latent, H/s, W/s]. */
static int encode_one(zl_vae *v, const float *img, int H, int W, float *moments) {
    const zl_vae_config *c = &v->cfg;
    int rc = ZL_OK;
    float *x = malloc(sizeof(float) * (size_t)H * W * c->block_out_channels[0]); // [C0, H, W]
    if (!x) return zl_set_error(ZL_ENOMEM, "VAE: out of memory for a %dx%d image", W, H);
    conv_same(v, &v->enc_in, x, img, H, W);
    for (int i = 0; i < c->n_levels && !rc; i++) {
        const vae_level *lv = &v->enc[i];
        for (int j = 0; j < lv->n_res && !rc; j++) rc = resnet_step(v, &lv->res[j], &x, H, W);
        if (!rc && lv->has_resample) {
            /* pad right/bottom by one, 3x3 stride 2, no other padding */
            int Ho = H / 2, Wo = W / 2;
            float *y = malloc(sizeof(float) * (size_t)Ho * Wo * lv->resample.cout); // [C, H/2, W/2]
            if (!y) {
                rc = zl_set_error(ZL_ENOMEM, "VAE: out of memory");
                break;
            }
            conv_run(v, &lv->resample, y, x, H, W, 2, 0, 0, 1, 1);
            free(x);
            x = y;
            H = Ho;
            W = Wo;
        }
    }
    if (!rc) rc = mid_fwd(v, v->enc_mid, &v->enc_attn, &x, H, W);
    if (!rc) {
        size_t HW = (size_t)H * W;
        int top = c->block_out_channels[c->n_levels - 1];
        float *t = malloc(sizeof(float) * HW * top);               // [top, HW]
        float *m = malloc(sizeof(float) * HW * 2 * c->latent_channels); // [2L, HW]
        if (!t || !m) {
            rc = zl_set_error(ZL_ENOMEM, "VAE: out of memory");
        } else {
            gn_silu(&v->enc_norm, t, x, (int)HW, c->norm_num_groups, 1);
            conv_same(v, &v->enc_out, m, t, H, W);
            conv_run(v, &v->quant, moments, m, H, W, 1, 0, 0, 0, 0);
        }
        free(t);
        free(m);
    }
    free(x);
    return rc;
}

static int vae_encode(zl_vae *v, const float *image, int B, int H, int W, float *mean, float *logvar) {
    const zl_vae_config *c = &v->cfg;
    int s = zl_vae_scale(v);
    if (B < 1 || H < s || W < s || H % s || W % s)
        return zl_set_error(ZL_EINVAL, "VAE encode: image %dx%d (batch %d) must have sides that are positive multiples of %d",
                            W, H, B, s);
    int h = H / s, w = W / s, L = c->latent_channels;
    size_t hw = (size_t)h * w;
    float *mom = malloc(sizeof(float) * hw * 2 * L); // [2L, h, w]
    if (!mom) return zl_set_error(ZL_ENOMEM, "VAE: out of memory");
    int rc = ZL_OK;
    for (int b = 0; b < B && !rc; b++) {
        rc = encode_one(v, image + (size_t)b * c->in_channels * H * W, H, W, mom);
        if (rc) break;
        if (!all_finite(mom, hw * 2 * L)) {
            rc = zl_set_error(ZL_ENUMERIC, "VAE encode: non-finite values in the latent of image %d", b);
            break;
        }
        memcpy(mean + (size_t)b * L * hw, mom, sizeof(float) * L * hw);
        float *lv = logvar + (size_t)b * L * hw;
        for (size_t i = 0; i < L * hw; i++) {
            float q = mom[L * hw + i];
            lv[i] = q < -30.0f ? -30.0f : q > 20.0f ? 20.0f : q;
        }
    }
    free(mom);
    return rc;
}

/* One latent: z [latent, h, w] -> img [out_ch, h*s, w*s]. */
static int decode_one(zl_vae *v, const float *z, int H, int W, float *img) {
    const zl_vae_config *c = &v->cfg;
    int L = c->latent_channels, top = c->block_out_channels[c->n_levels - 1], rc = ZL_OK;
    size_t HW = (size_t)H * W;
    float *zq = malloc(sizeof(float) * HW * L); // [L, h, w]
    float *x = malloc(sizeof(float) * HW * top); // [top, h, w]
    if (!zq || !x) {
        free(zq);
        free(x);
        return zl_set_error(ZL_ENOMEM, "VAE: out of memory");
    }
    conv_run(v, &v->post_quant, zq, z, H, W, 1, 0, 0, 0, 0);
    conv_same(v, &v->dec_in, x, zq, H, W);
    free(zq);
    rc = mid_fwd(v, v->dec_mid, &v->dec_attn, &x, H, W);
    for (int i = 0; i < c->n_levels && !rc; i++) {
        const vae_level *lv = &v->dec[i];
        for (int j = 0; j < lv->n_res && !rc; j++) rc = resnet_step(v, &lv->res[j], &x, H, W);
        if (!rc && lv->has_resample) {
            int C = lv->resample.cout;
            float *u = malloc(sizeof(float) * HW * 4 * C); // [C, 2H, 2W]
            float *y = u ? malloc(sizeof(float) * HW * 4 * C) : NULL;
            if (!u || !y) {
                free(u);
                rc = zl_set_error(ZL_ENOMEM, "VAE: out of memory for a %dx%d activation", 2 * W, 2 * H);
                break;
            }
            zl_upsample2x_fwd(u, x, 1, C, H, W);
            free(x);
            H *= 2;
            W *= 2;
            HW = (size_t)H * W;
            conv_same(v, &lv->resample, y, u, H, W);
            free(u);
            x = y;
        }
    }
    if (!rc) {
        gn_silu(&v->dec_norm, x, x, (int)HW, c->norm_num_groups, 1);
        conv_same(v, &v->dec_out, img, x, H, W);
    }
    free(x);
    return rc;
}

/* ---- tiling -------------------------------------------------------------------- */

/* Start offsets of tiles of size `tile` covering [0, n) with overlaps of at least `overlap`. */
static int tile_starts(int n, int tile, int overlap, int *starts, int cap) {
    if (n <= tile) {
        starts[0] = 0;
        return 1;
    }
    int stride = tile - overlap;
    int k = (n - overlap + stride - 1) / stride; /* tiles needed */
    if (k < 2) k = 2;
    if (k > cap) return -1;
    for (int i = 0; i < k; i++) starts[i] = (int)((long)i * (n - tile) / (k - 1)); /* evenly spread, last flush */
    return k;
}

/* Blend weight of pixel p (0..len-1) of a tile, along one axis: a linear ramp
 * over `ramp` pixels on sides that border another tile, 1 elsewhere. */
static float ramp_w(int p, int len, int ramp, int has_lo, int has_hi) {
    float w = 1.0f;
    if (ramp > 0) {
        if (has_lo) w = fminf(w, (p + 0.5f) / ramp);
        if (has_hi) w = fminf(w, (len - p - 0.5f) / ramp);
    }
    return w;
}

int zl_vae_tiled_apply(zl_vae_tile_fn fn, void *ctx, const float *z, int C, int h, int w, int Cout, int s, int tile,
                       int overlap, float *out) {
    if (tile < 1 || overlap < 0 || overlap >= tile || s < 1 || C < 1 || Cout < 1 || h < 1 || w < 1)
        return zl_set_error(ZL_EINVAL, "tiled decode: bad sizes (tile %d, overlap %d)", tile, overlap);
    enum { MAXT = 4096 };
    int *ys = malloc(sizeof(int) * MAXT), *xs = malloc(sizeof(int) * MAXT);
    if (!ys || !xs) {
        free(ys);
        free(xs);
        return zl_set_error(ZL_ENOMEM, "tiled decode: out of memory");
    }
    int ny = tile_starts(h, tile, overlap, ys, MAXT), nx = tile_starts(w, tile, overlap, xs, MAXT);
    if (ny < 0 || nx < 0) {
        free(ys);
        free(xs);
        return zl_set_error(ZL_EINVAL, "tiled decode: too many tiles");
    }
    int th = h < tile ? h : tile, tw = w < tile ? w : tile;
    size_t H = (size_t)h * s, W = (size_t)w * s, HW = H * W;
    size_t tsz = (size_t)th * s * tw * s;
    float *wsum = calloc(HW, sizeof(float));                  // [H, W]
    float *zt = malloc(sizeof(float) * (size_t)C * th * tw);   // [C, th, tw]
    float *ot = malloc(sizeof(float) * (size_t)Cout * tsz);    // [Cout, th*s, tw*s]
    float *wy = malloc(sizeof(float) * (size_t)th * s), *wx = malloc(sizeof(float) * (size_t)tw * s);
    int rc = ZL_OK;
    if (!wsum || !zt || !ot || !wy || !wx) rc = zl_set_error(ZL_ENOMEM, "tiled decode: out of memory");
    if (!rc) memset(out, 0, sizeof(float) * (size_t)Cout * HW);
    int ramp = overlap * s;
    for (int iy = 0; iy < ny && !rc; iy++) {
        for (int ix = 0; ix < nx && !rc; ix++) {
            int y0 = ys[iy], x0 = xs[ix];
            for (int c = 0; c < C; c++)
                for (int r = 0; r < th; r++)
                    memcpy(zt + ((size_t)c * th + r) * tw, z + ((size_t)c * h + y0 + r) * w + x0, sizeof(float) * tw);
            rc = fn(ctx, zt, th, tw, ot);
            if (rc) break;
            int Th = th * s, Tw = tw * s;
            for (int p = 0; p < Th; p++) wy[p] = ramp_w(p, Th, ramp, iy > 0, iy < ny - 1);
            for (int p = 0; p < Tw; p++) wx[p] = ramp_w(p, Tw, ramp, ix > 0, ix < nx - 1);
            size_t oy = (size_t)y0 * s, ox = (size_t)x0 * s;
            for (int p = 0; p < Th; p++) {
                float *ws = wsum + (oy + p) * W + ox;
                for (int q = 0; q < Tw; q++) ws[q] += wy[p] * wx[q];
            }
            for (int c = 0; c < Cout; c++)
                for (int p = 0; p < Th; p++) {
                    float *o = out + (size_t)c * HW + (oy + p) * W + ox;
                    const float *t = ot + ((size_t)c * Th + p) * Tw;
                    for (int q = 0; q < Tw; q++) o[q] += wy[p] * wx[q] * t[q];
                }
        }
    }
    if (!rc)
        for (int c = 0; c < Cout; c++)
            for (size_t i = 0; i < HW; i++) out[(size_t)c * HW + i] /= wsum[i];
    free(ys);
    free(xs);
    free(wsum);
    free(zt);
    free(ot);
    free(wy);
    free(wx);
    return rc;
}

static int decode_tile_cb(void *ctx, const float *zt, int th, int tw, float *out) {
    return decode_one((zl_vae *)ctx, zt, th, tw, out);
}

static int vae_decode(zl_vae *v, const float *z, int B, int h, int w, float *image) {
    const zl_vae_config *c = &v->cfg;
    if (B < 1 || h < 1 || w < 1 || h > 65536 / 8 || w > 65536 / 8)
        return zl_set_error(ZL_EINVAL, "VAE decode: bad latent size %dx%d (batch %d)", w, h, B);
    int s = zl_vae_scale(v), L = c->latent_channels, O = c->out_channels;
    size_t zin = (size_t)L * h * w, pout = (size_t)O * h * s * w * s;
    int tiled = v->tile_mode == ZL_VAE_TILE_ON || (v->tile_mode == ZL_VAE_TILE_AUTO && (h > v->tile || w > v->tile));
    for (int b = 0; b < B; b++) {
        int rc = tiled ? zl_vae_tiled_apply(decode_tile_cb, v, z + b * zin, L, h, w, O, s, v->tile, v->overlap,
                                            image + b * pout)
                       : decode_one(v, z + b * zin, h, w, image + b * pout);
        if (rc) return rc;
        if (!all_finite(image + b * pout, pout))
            return zl_set_error(ZL_ENUMERIC, "VAE decode: non-finite values in image %d", b);
    }
    return ZL_OK;
}

/* Under the bf16x3 matmul precision the VAE computes in float32: its wide
 * convolutions at few channels ran slower as three tile products each than
 * as float32 (Winograd) (bench/RESULTS.md, session 11), and the VAE is meant
 * to be float32 anyway (sdxl.md). bf16, when asked for, applies. */
static zl_matmul_precision vae_precision_begin(void) {
    const zl_matmul_precision p = zl_get_matmul_precision();
    if (p == ZL_MATMUL_BF16X3) zl_set_matmul_precision(ZL_MATMUL_F32);
    return p;
}

int zl_vae_encode(zl_vae *v, const float *image, int B, int H, int W, float *mean, float *logvar) {
    const zl_matmul_precision p = vae_precision_begin();
    const int rc = vae_encode(v, image, B, H, W, mean, logvar);
    zl_set_matmul_precision(p);
    return rc;
}

int zl_vae_decode(zl_vae *v, const float *z, int B, int h, int w, float *image) {
    const zl_matmul_precision p = vae_precision_begin();
    const int rc = vae_decode(v, z, B, h, w, image);
    zl_set_matmul_precision(p);
    return rc;
}

/* ---- pipeline helpers ------------------------------------------------------------- */

int zl_vae_decode_images(zl_vae *v, const float *latents, int B, int h, int w, zl_image *images) {
    const zl_vae_config *c = &v->cfg;
    if (c->out_channels != 3) return zl_set_error(ZL_EUNSUPPORTED, "VAE: %d output channels, images need 3", c->out_channels);
    for (int b = 0; b < B; b++) memset(&images[b], 0, sizeof images[b]);
    if (B < 1 || h < 1 || w < 1 || h > 65536 / 8 || w > 65536 / 8)
        return zl_set_error(ZL_EINVAL, "VAE decode: bad latent size %dx%d (batch %d)", w, h, B);
    int s = zl_vae_scale(v);
    size_t nz = (size_t)c->latent_channels * h * w;
    float *z = malloc(sizeof(float) * nz), *img = malloc(sizeof(float) * 3 * (size_t)h * s * w * s);
    int rc = !z || !img ? zl_set_error(ZL_ENOMEM, "VAE: out of memory for a %dx%d image", w * s, h * s) : ZL_OK;
    for (int b = 0; b < B && !rc; b++) {
        for (size_t i = 0; i < nz; i++) z[i] = latents[b * nz + i] / c->scaling_factor;
        rc = zl_vae_decode(v, z, 1, h, w, img);
        if (!rc) rc = zl_image_from_tensor(img, h * s, w * s, &images[b]);
    }
    if (rc)
        for (int b = 0; b < B; b++) zl_image_free(&images[b]);
    free(z);
    free(img);
    return rc;
}

int zl_vae_encode_image(zl_vae *v, const zl_image *image, float *latent) {
    const zl_vae_config *c = &v->cfg;
    if (!image || !image->px || c->in_channels != 3) return zl_set_error(ZL_EINVAL, "VAE encode: need an RGB image");
    int s = zl_vae_scale(v), H = image->h, W = image->w;
    if (H % s || W % s)
        return zl_set_error(ZL_EINVAL, "VAE encode: image is %dx%d; sides must be multiples of %d", W, H, s);
    size_t nl = (size_t)c->latent_channels * (H / s) * (W / s);
    float *t = malloc(sizeof(float) * 3 * (size_t)H * W), *lv = malloc(sizeof(float) * nl);
    int rc = !t || !lv ? zl_set_error(ZL_ENOMEM, "VAE: out of memory for a %dx%d image", W, H) : ZL_OK;
    if (!rc) {
        zl_image_to_tensor(image, t);
        rc = zl_vae_encode(v, t, 1, H, W, latent, lv);
    }
    if (!rc)
        for (size_t i = 0; i < nl; i++) latent[i] *= c->scaling_factor;
    free(t);
    free(lv);
    return rc;
}
