/* Synthetic models (include/ziplora/synth.h): the tensor lists of each part
 * come from the same tables the loaders bind against (UNet and CLIP name
 * tables, zl_vae_list_tensors), so a synthetic folder loads through the
 * ordinary code paths; values are drawn per tensor from a Philox stream and
 * streamed into zl_st_write one tensor at a time. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <jansson.h>

#include "models/names.h"
#include "ziplora/fileio.h"
#include "ziplora/progress.h"
#include "ziplora/safetensors.h"
#include "ziplora/sample.h"
#include "ziplora/synth.h"

typedef enum { INIT_NORMAL = 0, INIT_ONES, INIT_ZEROS, INIT_ARANGE } init_kind;

typedef struct {
    char *name;
    zl_dtype dtype;
    int ndim;
    int64_t shape[4];
    init_kind init;
    float std;
} spec;

typedef struct {
    spec *s;
    int n, cap;
    int oom;
} spec_list;

/* The resolved configs of one synthesis request. */
typedef struct {
    zl_family family;
    zl_dtype dtype;
    uint64_t seed;
    zl_unet_config unet;
    zl_clip_config te1, te2;
    zl_vae_config vae;
} synth_cfg;

static int resolve(const zl_synth_opts *o, synth_cfg *c) {
    memset(c, 0, sizeof *c);
    if (!o) return zl_set_error(ZL_EINVAL, "synth: no options");
    c->family = o->family;
    if (c->family != ZL_FAMILY_SDXL && c->family != ZL_FAMILY_SD1)
        return zl_set_error(ZL_EINVAL, "synth: family must be sdxl or sd1");
    c->dtype = o->dtype == ZL_DT_INVALID ? ZL_DT_F16 : o->dtype;
    if (c->dtype != ZL_DT_F16 && c->dtype != ZL_DT_BF16 && c->dtype != ZL_DT_F32)
        return zl_set_error(ZL_EINVAL, "synth: dtype %s is not F16, BF16 or F32", zl_dtype_name(c->dtype));
    c->seed = o->seed;
    if (o->unet) c->unet = *o->unet;
    else if (c->family == ZL_FAMILY_SDXL) zl_unet_config_sdxl_base(&c->unet);
    else zl_unet_config_sd15(&c->unet);
    if (o->te1) c->te1 = *o->te1;
    else zl_names_clip_l_config(&c->te1);
    if (o->te2) c->te2 = *o->te2;
    else zl_names_clip_bigg_config(&c->te2);
    if (o->vae) c->vae = *o->vae;
    else zl_vae_config_standard(&c->vae, c->family);
    return ZL_OK;
}

static unsigned family_parts(const synth_cfg *c, unsigned parts) {
    if (!parts) parts = ZL_SYNTH_ALL;
    parts &= ZL_SYNTH_ALL;
    if (c->family != ZL_FAMILY_SDXL) parts &= ~(unsigned)ZL_SYNTH_TE2;
    return parts;
}

static int part_index(unsigned part) {
    switch (part) {
    case ZL_SYNTH_UNET: return 0;
    case ZL_SYNTH_TE1: return 1;
    case ZL_SYNTH_TE2: return 2;
    case ZL_SYNTH_VAE: return 3;
    default: return -1;
    }
}

static const char *part_dir(unsigned part) {
    static const char *const d[4] = {"unet", "text_encoder", "text_encoder_2", "vae"};
    int i = part_index(part);
    return i < 0 ? NULL : d[i];
}

static const char *part_file(unsigned part) {
    return part == ZL_SYNTH_TE1 || part == ZL_SYNTH_TE2 ? "model.safetensors" : "diffusion_pytorch_model.safetensors";
}

/* ------------------------------------------------------------ tensor lists */

static void push(spec_list *l, const char *name, zl_dtype dt, int ndim, const int64_t *shape, init_kind init,
                 float std) {
    if (l->oom) return;
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 512;
        spec *p = realloc(l->s, (size_t)cap * sizeof *p);
        if (!p) { l->oom = 1; return; }
        l->s = p;
        l->cap = cap;
    }
    spec *s = &l->s[l->n];
    memset(s, 0, sizeof *s);
    if (!(s->name = strdup(name))) { l->oom = 1; return; }
    s->dtype = dt;
    s->ndim = ndim;
    for (int i = 0; i < ndim && i < 4; i++) s->shape[i] = shape[i];
    s->init = init;
    s->std = std;
    l->n++;
}

static void list_free(spec_list *l) {
    for (int i = 0; i < l->n; i++) free(l->s[i].name);
    free(l->s);
    memset(l, 0, sizeof *l);
}

static float fan_in_std(int ndim, const int64_t *shape) {
    int64_t fan = 1;
    for (int i = 1; i < ndim; i++) fan *= shape[i];
    return 1.0f / sqrtf((float)(fan > 0 ? fan : 1));
}

/* Modules of a name table (UNet or CLIP) as weight/bias tensors. */
static void push_table(spec_list *l, const zl_name_table *t, zl_dtype dt) {
    char key[512];
    for (int i = 0; i < zl_name_table_count(t); i++) {
        const zl_module_info *m = zl_name_table_at(t, i);
        int64_t shape[4] = {m->out, m->in, m->kh, m->kw};
        snprintf(key, sizeof key, "%s.weight", m->diffusers);
        switch (m->kind) {
        case ZL_MOD_NORM:
            push(l, key, dt, 1, shape, INIT_ONES, 0);
            break;
        case ZL_MOD_EMBED: {
            int64_t es[2] = {m->in, m->out}; /* [entries, dim] */
            push(l, key, dt, 2, es, INIT_NORMAL, strstr(m->diffusers, "position") ? 0.01f : 0.02f);
            break;
        }
        case ZL_MOD_LINEAR:
            push(l, key, dt, 2, shape, INIT_NORMAL, fan_in_std(2, shape));
            break;
        case ZL_MOD_CONV:
            push(l, key, dt, 4, shape, INIT_NORMAL, fan_in_std(4, shape));
            break;
        }
        if (m->has_bias) {
            snprintf(key, sizeof key, "%s.bias", m->diffusers);
            push(l, key, dt, 1, shape, INIT_ZEROS, 0);
        }
    }
}

typedef struct {
    spec_list *l;
    zl_dtype dt;
} vae_ctx;

static void vae_cb(void *ctx, const char *name, int ndim, const int64_t *shape) {
    vae_ctx *v = ctx;
    const char *last = strrchr(name, '.');
    int bias = last && !strcmp(last, ".bias");
    if (bias) push(v->l, name, v->dt, ndim, shape, INIT_ZEROS, 0);
    else if (ndim == 1) push(v->l, name, v->dt, ndim, shape, INIT_ONES, 0); /* norm gamma */
    else push(v->l, name, v->dt, ndim, shape, INIT_NORMAL, fan_in_std(ndim, shape));
}

static int cmp_spec(const void *a, const void *b) { return strcmp(((const spec *)a)->name, ((const spec *)b)->name); }

static int build_list(const synth_cfg *c, unsigned part, spec_list *l) {
    memset(l, 0, sizeof *l);
    int rc = ZL_OK;
    zl_name_table *t = NULL;
    switch (part) {
    case ZL_SYNTH_UNET:
        if ((rc = zl_name_table_unet(&c->unet, &t))) return rc;
        push_table(l, t, c->dtype);
        break;
    case ZL_SYNTH_TE1:
    case ZL_SYNTH_TE2: {
        const zl_clip_config *cc = part == ZL_SYNTH_TE1 ? &c->te1 : &c->te2;
        if ((rc = zl_name_table_clip(cc, &t))) return rc;
        push_table(l, t, c->dtype);
        int64_t ps[2] = {1, cc->max_pos};
        push(l, "text_model.embeddings.position_ids", ZL_DT_I64, 2, ps, INIT_ARANGE, 0);
        break;
    }
    case ZL_SYNTH_VAE: {
        vae_ctx v = {l, c->dtype};
        if ((rc = zl_vae_list_tensors(&c->vae, 0, vae_cb, &v))) return rc;
        break;
    }
    default:
        return zl_set_error(ZL_EINVAL, "synth: part %u is not one part", part);
    }
    zl_name_table_free(t);
    if (l->oom) {
        list_free(l);
        return zl_set_error(ZL_ENOMEM, "synth: out of memory listing tensors");
    }
    /* Sorted by name, the order safetensors writers (and zl_st_open) use. */
    qsort(l->s, (size_t)l->n, sizeof *l->s, cmp_spec);
    return ZL_OK;
}

int zl_synth_list(const zl_synth_opts *opts, unsigned part, zl_synth_list_fn cb, void *ctx) {
    synth_cfg c;
    spec_list l;
    int rc = resolve(opts, &c);
    if (rc || (rc = build_list(&c, part, &l))) return rc;
    for (int i = 0; i < l.n; i++) cb(ctx, l.s[i].name, l.s[i].dtype, l.s[i].ndim, l.s[i].shape);
    list_free(&l);
    return ZL_OK;
}

static int64_t list_bytes(const spec_list *l) {
    int64_t b = 0;
    for (int i = 0; i < l->n; i++) b += zl_st_nbytes(l->s[i].dtype, l->s[i].ndim, l->s[i].shape);
    return b;
}

int64_t zl_synth_part_bytes(const zl_synth_opts *opts, unsigned part) {
    synth_cfg c;
    spec_list l;
    if (resolve(opts, &c) || build_list(&c, part, &l)) return -1;
    int64_t b = list_bytes(&l);
    list_free(&l);
    return b;
}

/* ----------------------------------------------------------------- configs */

static json_t *int_list(const int *v, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_integer(v[i]));
    return a;
}

static json_t *str_list(const char *const *v, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_string(v[i]));
    return a;
}

/* diffusers UNet2DConditionModel config.json. Keys as diffusers 0.21 writes
 * them; attention_head_dim holds the head count (num_attention_heads null), as
 * in the released SDXL and SD 1.5 configs. */
static json_t *unet_json(const zl_unet_config *u) {
    json_t *o = json_object();
    int n = u->n_levels;
    const char *down[ZL_MAX_LEVELS], *up[ZL_MAX_LEVELS];
    for (int i = 0; i < n; i++) {
        down[i] = u->down_types[i] == ZL_BLOCK_CROSSATTN ? "CrossAttnDownBlock2D" : "DownBlock2D";
        up[i] = u->up_types[i] == ZL_BLOCK_CROSSATTN ? "CrossAttnUpBlock2D" : "UpBlock2D";
    }
    json_object_set_new(o, "_class_name", json_string("UNet2DConditionModel"));
    json_object_set_new(o, "_diffusers_version", json_string("0.21.0"));
    json_object_set_new(o, "act_fn", json_string("silu"));
    json_object_set_new(o, "addition_embed_type", u->has_text_time ? json_string("text_time") : json_null());
    json_object_set_new(o, "addition_embed_type_num_heads", json_integer(64));
    json_object_set_new(o, "addition_time_embed_dim", u->has_text_time ? json_integer(u->addition_time_embed_dim) : json_null());
    json_object_set_new(o, "attention_head_dim", int_list(u->heads, n));
    json_object_set_new(o, "block_out_channels", int_list(u->block_out_channels, n));
    json_object_set_new(o, "center_input_sample", json_false());
    json_object_set_new(o, "class_embed_type", json_null());
    json_object_set_new(o, "class_embeddings_concat", json_false());
    json_object_set_new(o, "conv_in_kernel", json_integer(3));
    json_object_set_new(o, "conv_out_kernel", json_integer(3));
    json_object_set_new(o, "cross_attention_dim", json_integer(u->cross_attention_dim));
    json_object_set_new(o, "cross_attention_norm", json_null());
    json_object_set_new(o, "down_block_types", str_list(down, n));
    json_object_set_new(o, "downsample_padding", json_integer(1));
    json_object_set_new(o, "dual_cross_attention", json_false());
    json_object_set_new(o, "encoder_hid_dim", json_null());
    json_object_set_new(o, "encoder_hid_dim_type", json_null());
    json_object_set_new(o, "flip_sin_to_cos", json_boolean(u->flip_sin_to_cos));
    json_object_set_new(o, "freq_shift", json_integer((json_int_t)u->freq_shift));
    json_object_set_new(o, "in_channels", json_integer(u->in_channels));
    json_object_set_new(o, "layers_per_block", json_integer(u->layers_per_block));
    json_object_set_new(o, "mid_block_only_cross_attention", json_null());
    json_object_set_new(o, "mid_block_scale_factor", json_integer(1));
    json_object_set_new(o, "mid_block_type", json_string("UNetMidBlock2DCrossAttn"));
    json_object_set_new(o, "norm_eps", json_real(u->norm_eps));
    json_object_set_new(o, "norm_num_groups", json_integer(u->norm_num_groups));
    json_object_set_new(o, "num_attention_heads", json_null());
    json_object_set_new(o, "num_class_embeds", json_null());
    json_object_set_new(o, "only_cross_attention", json_false());
    json_object_set_new(o, "out_channels", json_integer(u->out_channels));
    json_object_set_new(o, "projection_class_embeddings_input_dim",
                        u->has_text_time ? json_integer(u->projection_class_embeddings_input_dim) : json_null());
    json_object_set_new(o, "resnet_out_scale_factor", json_real(1.0));
    json_object_set_new(o, "resnet_skip_time_act", json_false());
    json_object_set_new(o, "resnet_time_scale_shift", json_string("default"));
    json_object_set_new(o, "sample_size", json_integer(u->sample_size));
    json_object_set_new(o, "time_cond_proj_dim", json_null());
    json_object_set_new(o, "time_embedding_act_fn", json_null());
    json_object_set_new(o, "time_embedding_dim",
                        u->time_embed_dim == 4 * u->block_out_channels[0] ? json_null() : json_integer(u->time_embed_dim));
    json_object_set_new(o, "time_embedding_type", json_string("positional"));
    json_object_set_new(o, "timestep_post_act", json_null());
    json_object_set_new(o, "transformer_layers_per_block", int_list(u->transformer_depth, n));
    json_object_set_new(o, "up_block_types", str_list(up, n));
    json_object_set_new(o, "upcast_attention", json_false());
    json_object_set_new(o, "use_linear_projection", json_boolean(u->use_linear_projection));
    return o;
}

/* transformers CLIPTextConfig (+ architectures, which tells a projection). */
static json_t *clip_json(const zl_clip_config *c) {
    json_t *o = json_object();
    const char *arch = c->has_projection ? "CLIPTextModelWithProjection" : "CLIPTextModel";
    json_object_set_new(o, "architectures", str_list(&arch, 1));
    json_object_set_new(o, "attention_dropout", json_real(0.0));
    json_object_set_new(o, "bos_token_id", json_integer(0));
    json_object_set_new(o, "dropout", json_real(0.0));
    json_object_set_new(o, "eos_token_id", json_integer(2));
    json_object_set_new(o, "hidden_act", json_string(c->quick_gelu ? "quick_gelu" : "gelu"));
    json_object_set_new(o, "hidden_size", json_integer(c->hidden));
    json_object_set_new(o, "initializer_factor", json_real(1.0));
    json_object_set_new(o, "initializer_range", json_real(0.02));
    json_object_set_new(o, "intermediate_size", json_integer(c->intermediate));
    json_object_set_new(o, "layer_norm_eps", json_real(c->eps));
    json_object_set_new(o, "max_position_embeddings", json_integer(c->max_pos));
    json_object_set_new(o, "model_type", json_string("clip_text_model"));
    json_object_set_new(o, "num_attention_heads", json_integer(c->heads));
    json_object_set_new(o, "num_hidden_layers", json_integer(c->layers));
    json_object_set_new(o, "pad_token_id", json_integer(1));
    json_object_set_new(o, "projection_dim", json_integer(c->projection_dim));
    json_object_set_new(o, "torch_dtype", json_string("float16"));
    json_object_set_new(o, "transformers_version", json_string("4.26.0"));
    json_object_set_new(o, "vocab_size", json_integer(c->vocab));
    return o;
}

static json_t *vae_json(const zl_vae_config *v) {
    json_t *o = json_object();
    int n = v->n_levels;
    const char *down[ZL_MAX_LEVELS], *up[ZL_MAX_LEVELS];
    for (int i = 0; i < n; i++) {
        down[i] = "DownEncoderBlock2D";
        up[i] = "UpDecoderBlock2D";
    }
    json_object_set_new(o, "_class_name", json_string("AutoencoderKL"));
    json_object_set_new(o, "_diffusers_version", json_string("0.21.0"));
    json_object_set_new(o, "act_fn", json_string("silu"));
    json_object_set_new(o, "block_out_channels", int_list(v->block_out_channels, n));
    json_object_set_new(o, "down_block_types", str_list(down, n));
    json_object_set_new(o, "force_upcast", json_true());
    json_object_set_new(o, "in_channels", json_integer(v->in_channels));
    json_object_set_new(o, "latent_channels", json_integer(v->latent_channels));
    json_object_set_new(o, "layers_per_block", json_integer(v->layers_per_block));
    json_object_set_new(o, "norm_num_groups", json_integer(v->norm_num_groups));
    json_object_set_new(o, "out_channels", json_integer(v->out_channels));
    json_object_set_new(o, "sample_size", json_integer(v->sample_size));
    json_object_set_new(o, "scaling_factor", json_real(v->scaling_factor));
    json_object_set_new(o, "up_block_types", str_list(up, n));
    return o;
}

static char *dump(json_t *o) {
    if (!o) return NULL;
    /* 7 significant digits: a float's values (1e-05, 0.13025) print as written. */
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(7));
    json_decref(o);
    if (!s) return NULL;
    size_t n = strlen(s);
    char *r = malloc(n + 2);
    if (r) {
        memcpy(r, s, n);
        r[n] = '\n';
        r[n + 1] = 0;
    }
    free(s);
    return r;
}

static char *model_index_json(const synth_cfg *c, unsigned parts) {
    json_t *o = json_object();
    json_object_set_new(o, "_class_name",
                        json_string(c->family == ZL_FAMILY_SDXL ? "StableDiffusionXLPipeline" : "StableDiffusionPipeline"));
    json_object_set_new(o, "_diffusers_version", json_string("0.21.0"));
    json_object_set_new(o, "_ziplora_synthetic", json_string("random weights at real shapes; outputs are noise"));
    const char *sched[2] = {"diffusers", "EulerDiscreteScheduler"};
    json_object_set_new(o, "scheduler", str_list(sched, 2));
    if (parts & ZL_SYNTH_UNET) {
        const char *v[2] = {"diffusers", "UNet2DConditionModel"};
        json_object_set_new(o, "unet", str_list(v, 2));
    }
    if (parts & ZL_SYNTH_VAE) {
        const char *v[2] = {"diffusers", "AutoencoderKL"};
        json_object_set_new(o, "vae", str_list(v, 2));
    }
    if (parts & ZL_SYNTH_TE1) {
        const char *v[2] = {"transformers", "CLIPTextModel"};
        json_object_set_new(o, "text_encoder", str_list(v, 2));
    }
    if (parts & ZL_SYNTH_TE2) {
        const char *v[2] = {"transformers", "CLIPTextModelWithProjection"};
        json_object_set_new(o, "text_encoder_2", str_list(v, 2));
    }
    return dump(o);
}

static int config_text(const synth_cfg *c, unsigned part, char **out) {
    *out = NULL;
    json_t *o = NULL;
    switch (part) {
    case ZL_SYNTH_UNET: o = unet_json(&c->unet); break;
    case ZL_SYNTH_TE1: o = clip_json(&c->te1); break;
    case ZL_SYNTH_TE2: o = clip_json(&c->te2); break;
    case ZL_SYNTH_VAE: o = vae_json(&c->vae); break;
    default: return zl_set_error(ZL_EINVAL, "synth: part %u is not one part", part);
    }
    if (!(*out = dump(o))) return zl_set_error(ZL_ENOMEM, "synth: out of memory writing a config");
    return ZL_OK;
}

int zl_synth_config_json(const zl_synth_opts *opts, unsigned part, char **out) {
    synth_cfg c;
    int rc = resolve(opts, &c);
    if (rc) {
        *out = NULL;
        return rc;
    }
    return config_text(&c, part, out);
}

/* ------------------------------------------------------------------ values */

typedef struct {
    const spec *s;
    uint64_t seed, stream;
} fill_ctx;

#define FILL_CHUNK ((size_t)1 << 20)

static int fill_tensor(void *ctx, void *dst, size_t nbytes) {
    const fill_ctx *f = ctx;
    const spec *s = f->s;
    size_t n = 1;
    for (int i = 0; i < s->ndim; i++) n *= (size_t)s->shape[i];
    if (s->dtype == ZL_DT_I64) {
        if (nbytes != n * 8) return zl_set_error(ZL_EINVAL, "synth: %s: size mismatch", s->name);
        int64_t *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = s->init == INIT_ARANGE ? (int64_t)(i % (size_t)s->shape[s->ndim - 1]) : 0;
        return ZL_OK;
    }
    size_t esz = (size_t)zl_dtype_bits(s->dtype) / 8;
    if (nbytes != n * esz) return zl_set_error(ZL_EINVAL, "synth: %s: size mismatch", s->name);
    float *buf = malloc(FILL_CHUNK * sizeof(float));
    if (!buf) return zl_set_error(ZL_ENOMEM, "synth: out of memory");
    zl_rng r;
    zl_rng_init(&r, f->seed, f->stream);
    int rc = ZL_OK;
    for (size_t o = 0; o < n && !rc; o += FILL_CHUNK) {
        size_t len = n - o < FILL_CHUNK ? n - o : FILL_CHUNK;
        if (s->init == INIT_NORMAL) {
            zl_rng_normal(&r, o, buf, len);
            for (size_t i = 0; i < len; i++) buf[i] *= s->std;
        } else {
            float v = s->init == INIT_ONES ? 1.0f : 0.0f;
            for (size_t i = 0; i < len; i++) buf[i] = v;
        }
        rc = zl_convert_from_f32(s->dtype, buf, (char *)dst + o * esz, len);
    }
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------ folders */

static char *join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s/%s", a, b);
    return s;
}

static int mkdir_p(const char *path) {
    char buf[4096];
    if (strlen(path) >= sizeof buf) return zl_set_error(ZL_EINVAL, "%s: path too long", path);
    strcpy(buf, path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0777) && errno != EEXIST) return zl_set_error(ZL_EIO, "%s: cannot create: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) && errno != EEXIST) return zl_set_error(ZL_EIO, "%s: cannot create: %s", buf, strerror(errno));
    if (!zl_is_dir(buf)) return zl_set_error(ZL_EIO, "%s: exists and is not a folder", buf);
    return ZL_OK;
}

static void seed_text(uint64_t seed, char out[32]) { snprintf(out, 32, "%llu", (unsigned long long)seed); }

/* A part is complete when its weights file holds exactly the listed tensors
 * (names, dtypes, shapes), carries our seed, and its config.json is the one we
 * would write. Anything else is rewritten. */
static int part_complete(const char *wpath, const char *cpath, const char *cfg_text, const spec_list *l,
                         uint64_t seed) {
    if (!zl_file_exists(wpath) || !zl_file_exists(cpath)) return 0;
    char *txt = NULL;
    size_t len = 0;
    if (zl_read_file(cpath, &txt, &len)) { zl_clear_error(); return 0; }
    int ok = !strcmp(txt, cfg_text);
    free(txt);
    if (!ok) return 0;
    zl_st_file *f = NULL;
    if (zl_st_open(wpath, &f)) { zl_clear_error(); return 0; }
    char sd[32];
    seed_text(seed, sd);
    const char *ms = zl_st_meta(f, "ziplora_synth_seed");
    ok = ms && !strcmp(ms, sd) && zl_st_count(f) == l->n;
    for (int i = 0; ok && i < l->n; i++) {
        const zl_st_tensor *t = zl_st_find(f, l->s[i].name);
        ok = t && t->dtype == l->s[i].dtype && t->ndim == l->s[i].ndim;
        for (int d = 0; ok && d < t->ndim; d++) ok = t->shape[d] == l->s[i].shape[d];
    }
    zl_st_close(f);
    return ok;
}

static int write_part(const synth_cfg *c, unsigned part, const char *wpath, const spec_list *l) {
    zl_st_entry *e = calloc((size_t)l->n, sizeof *e);
    fill_ctx *fc = calloc((size_t)l->n, sizeof *fc);
    if (!e || !fc) {
        free(e);
        free(fc);
        return zl_set_error(ZL_ENOMEM, "synth: out of memory");
    }
    for (int i = 0; i < l->n; i++) {
        fc[i].s = &l->s[i];
        fc[i].seed = c->seed;
        fc[i].stream = ((uint64_t)part_index(part) << 32) | (uint64_t)i;
        e[i].name = l->s[i].name;
        e[i].dtype = l->s[i].dtype;
        e[i].ndim = l->s[i].ndim;
        for (int d = 0; d < l->s[i].ndim; d++) e[i].shape[d] = l->s[i].shape[d];
        e[i].fill = fill_tensor;
        e[i].fill_ctx = &fc[i];
    }
    char sd[32];
    seed_text(c->seed, sd);
    zl_st_meta_kv meta[3] = {{"format", "pt"},
                             {"ziplora_synth", "random weights at real shapes (not a trained model)"},
                             {"ziplora_synth_seed", sd}};
    int rc = zl_st_write(wpath, e, l->n, meta, 3, NULL, 0);
    free(e);
    free(fc);
    return rc;
}

int zl_synth_model(const char *dir, const zl_synth_opts *opts, unsigned *written) {
    if (written) *written = 0;
    synth_cfg c;
    int rc = resolve(opts, &c);
    if (rc) return rc;
    if (!dir || !*dir) return zl_set_error(ZL_EINVAL, "synth: no output folder");
    unsigned parts = family_parts(&c, opts->parts);
    static const unsigned order[4] = {ZL_SYNTH_UNET, ZL_SYNTH_TE1, ZL_SYNTH_TE2, ZL_SYNTH_VAE};
    spec_list lists[4] = {{0}};
    char *cfgs[4] = {0}, *wpaths[4] = {0}, *cpaths[4] = {0}, *dirs[4] = {0};
    unsigned todo = 0;
    int64_t need = 0;
    if ((rc = mkdir_p(dir))) return rc;
    for (int k = 0; k < 4 && !rc; k++) {
        unsigned p = order[k];
        if (!(parts & p)) continue;
        if ((rc = build_list(&c, p, &lists[k])) || (rc = config_text(&c, p, &cfgs[k]))) break;
        dirs[k] = join(dir, part_dir(p));
        wpaths[k] = dirs[k] ? join(dirs[k], part_file(p)) : NULL;
        cpaths[k] = dirs[k] ? join(dirs[k], "config.json") : NULL;
        if (!wpaths[k] || !cpaths[k]) { rc = zl_set_error(ZL_ENOMEM, "synth: out of memory"); break; }
        if (!part_complete(wpaths[k], cpaths[k], cfgs[k], &lists[k], c.seed)) {
            todo |= p;
            need += list_bytes(&lists[k]);
        }
    }
    if (!rc && todo) {
        struct statvfs sv;
        if (statvfs(dir, &sv) == 0) {
            /* The old file (if any) stays until the rename, so count the new one in full, plus slack. */
            double avail = (double)sv.f_bavail * (double)sv.f_frsize, want = (double)need + 64.0 * 1024 * 1024;
            if (avail < want)
                rc = zl_set_error(ZL_EIO, "%s: synthesizing the %s model needs %.2f GB free, only %.2f GB available",
                                  dir, zl_family_name(c.family), want / 1e9, avail / 1e9);
        }
    }
    for (int k = 0; k < 4 && !rc; k++) {
        unsigned p = order[k];
        if (!(todo & p)) continue;
        zl_info("synth: writing %s (%d tensors, %.2f GB %s, seed %llu)", wpaths[k], lists[k].n,
                (double)list_bytes(&lists[k]) / 1e9, zl_dtype_name(c.dtype), (unsigned long long)c.seed);
        double t0 = zl_now();
        if ((rc = mkdir_p(dirs[k]))) break;
        if ((rc = write_part(&c, p, wpaths[k], &lists[k]))) break;
        if ((rc = zl_write_file_atomic(cpaths[k], cfgs[k], strlen(cfgs[k]), NULL, 0))) break;
        zl_info("synth: %s done in %.1f s", part_dir(p), zl_now() - t0);
        if (written) *written |= p;
    }
    if (!rc) {
        /* model_index.json names every part present in the folder, written now or before. */
        unsigned present = 0;
        for (int k = 0; k < 4; k++) {
            if (parts & order[k]) { present |= order[k]; continue; }
            char *d = join(dir, part_dir(order[k]));
            char *w = d ? join(d, part_file(order[k])) : NULL;
            if (w && zl_file_exists(w)) present |= order[k];
            free(d);
            free(w);
        }
        char *idx = model_index_json(&c, present), *ip = join(dir, "model_index.json");
        if (!idx || !ip) rc = zl_set_error(ZL_ENOMEM, "synth: out of memory");
        else rc = zl_write_file_atomic(ip, idx, strlen(idx), NULL, 0);
        free(idx);
        free(ip);
    }
    for (int k = 0; k < 4; k++) {
        list_free(&lists[k]);
        free(cfgs[k]);
        free(wpaths[k]);
        free(cpaths[k]);
        free(dirs[k]);
    }
    return rc;
}

/* -------------------------------------------------------------------- LoRA */

static int lora_wants(const zl_module_info *m, unsigned targets) {
    const char *n = m->diffusers;
    if ((targets & ZL_SYNTH_LORA_ATTN) && (strstr(n, ".attn1.to_") || strstr(n, ".attn2.to_"))) return 1;
    if ((targets & ZL_SYNTH_LORA_FF_PROJ) &&
        (strstr(n, ".ff.net.") || strstr(n, ".proj_in") || strstr(n, ".proj_out")))
        return 1;
    if ((targets & ZL_SYNTH_LORA_CONV) && strstr(n, ".resnets.") && m->kind == ZL_MOD_CONV && m->kh == 3) return 1;
    return 0;
}

static int cmp_layer(const void *a, const void *b) {
    return strcmp(((const zl_lora_layer *)a)->module, ((const zl_lora_layer *)b)->module);
}

int zl_synth_lora(const zl_unet_config *cfg, const zl_synth_lora_opts *opts, zl_lora **out) {
    *out = NULL;
    zl_synth_lora_opts o = {0};
    if (opts) o = *opts;
    if (!o.targets) o.targets = ZL_SYNTH_LORA_ATTN;
    if (!o.rank) o.rank = 16;
    if (o.alpha == 0) o.alpha = (float)o.rank;
    if (o.up_std == 0) o.up_std = 0.3f;
    if (o.rank < 1 || o.rank > 4096) return zl_set_error(ZL_EINVAL, "synth LoRA: rank %d out of range", o.rank);
    zl_name_table *t = NULL;
    int rc = zl_name_table_unet(cfg, &t);
    if (rc) return rc;
    zl_lora *l = calloc(1, sizeof *l);
    int n = 0;
    for (int i = 0; i < zl_name_table_count(t); i++) n += lora_wants(zl_name_table_at(t, i), o.targets);
    if (!l || !(l->layers = calloc((size_t)(n ? n : 1), sizeof *l->layers)) || !(l->path = strdup("synthetic"))) {
        zl_name_table_free(t);
        zl_lora_free(l);
        return zl_set_error(ZL_ENOMEM, "synth LoRA: out of memory");
    }
    l->family = cfg->family;
    l->layout = ZL_LAYOUT_KOHYA_DIFFUSERS;
    int r = o.rank;
    for (int i = 0; i < zl_name_table_count(t) && !rc; i++) {
        const zl_module_info *m = zl_name_table_at(t, i);
        if (!lora_wants(m, o.targets)) continue;
        zl_lora_layer *y = &l->layers[l->n++];
        y->module = strdup(m->diffusers);
        y->part = ZL_PART_UNET;
        y->kind = m->kind == ZL_MOD_CONV ? ZL_LORA_CONV : ZL_LORA_LINEAR;
        y->rank = r;
        y->in_features = m->in;
        y->out_features = m->out;
        y->kh = y->kind == ZL_LORA_CONV ? m->kh : 1;
        y->kw = y->kind == ZL_LORA_CONV ? m->kw : 1;
        y->alpha = o.alpha;
        y->dtype = ZL_DT_F16;
        size_t fan = (size_t)m->in * y->kh * y->kw, nd = (size_t)r * fan, nu = (size_t)m->out * r;
        y->down = malloc(nd * sizeof(float));
        y->up = malloc(nu * sizeof(float));
        if (!y->module || !y->down || !y->up) { rc = zl_set_error(ZL_ENOMEM, "synth LoRA: out of memory"); break; }
        zl_rng g;
        zl_rng_init(&g, o.seed, (uint64_t)i);
        zl_rng_normal(&g, 0, y->down, nd);
        zl_rng_normal(&g, nd, y->up, nu);
        float sd = 1.0f / sqrtf((float)fan), su = o.up_std / sqrtf((float)r);
        for (size_t j = 0; j < nd; j++) y->down[j] *= sd;
        for (size_t j = 0; j < nu; j++) y->up[j] *= su;
    }
    zl_name_table_free(t);
    if (rc) {
        zl_lora_free(l);
        return rc;
    }
    qsort(l->layers, (size_t)l->n, sizeof *l->layers, cmp_layer);
    *out = l;
    return ZL_OK;
}
