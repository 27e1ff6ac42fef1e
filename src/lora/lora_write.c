/* LoRA writers: the canonical form back to disk in kohya layout (the default;
 * ldm names for SDXL UNets as kohya writes them, diffusers names for SD 1.x)
 * or PEFT/diffusers layout (lora_A/lora_B with the scale folded into B so that
 * alpha = rank, alpha also recorded in lora_adapter_metadata). Names go through
 * the model's name table, never through underscore guessing. Tensors are
 * produced one at a time by a zl_lora_source, so a merged file is streamed
 * rather than built in memory, and the write is atomic (zl_st_write). */
#include <jansson.h>
#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lora/lora_keys.h"
#include "models/names.h"
#include "ziplora.h"

int zl_lora_format_parse(const char *s) {
    if (!s) return -1;
    if (!strcmp(s, "kohya")) return ZL_FORMAT_KOHYA;
    if (!strcmp(s, "peft") || !strcmp(s, "diffusers")) return ZL_FORMAT_PEFT;
    return -1;
}

/* Naming context: the UNet name table is built once per write. */
typedef zl_key_ctx key_ctx;

int zl_key_ctx_init(key_ctx *k, zl_family family, zl_lora_format format, const zl_unet_config *cfg) {
    memset(k, 0, sizeof *k);
    k->family = family;
    k->format = format;
    if (format == ZL_FORMAT_KOHYA && (family == ZL_FAMILY_SDXL || family == ZL_FAMILY_SD1)) {
        zl_unet_config std;
        if (!cfg) {
            if (family == ZL_FAMILY_SDXL) zl_unet_config_sdxl_base(&std);
            else zl_unet_config_sd15(&std);
            cfg = &std;
        }
        int rc = zl_name_table_unet(cfg, &k->unet);
        if (rc) return zl_error_prefix(rc, "building the UNet name table");
    }
    return ZL_OK;
}

void zl_key_ctx_free(key_ctx *k) {
    if (k->unet) zl_name_table_free(k->unet);
    k->unet = NULL;
}

static int put(char *buf, size_t n, const char *prefix, const char *name, int underscores) {
    size_t lp = strlen(prefix), ln = strlen(name);
    if (lp + ln + 1 > n) return zl_set_error(ZL_EINVAL, "LoRA key for '%s' is too long", name);
    memcpy(buf, prefix, lp);
    for (size_t i = 0; i < ln; i++) buf[lp + i] = (underscores && name[i] == '.') ? '_' : name[i];
    buf[lp + ln] = 0;
    return ZL_OK;
}

int zl_key_of(const key_ctx *k, const zl_lora_layer *l, int names, char *buf, size_t n) {
    if (k->format == ZL_FORMAT_PEFT) {
        const char *pre = l->part == ZL_PART_UNET ? "unet." : l->part == ZL_PART_TE1 ? "text_encoder." : "text_encoder_2.";
        return put(buf, n, pre, l->module, 0);
    }
    if (l->part == ZL_PART_TE2) return put(buf, n, "lora_te2_", l->module, 1);
    if (l->part == ZL_PART_TE1) return put(buf, n, k->family == ZL_FAMILY_SDXL ? "lora_te1_" : "lora_te_", l->module, 1);
    if (names == 0) names = k->family == ZL_FAMILY_SDXL ? 2 : 1;
    if (names == 2) {
        /* kohya's SDXL networks are built on the ldm UNet, so its keys carry ldm names. */
        const zl_module_info *mi = k->unet ? zl_name_find_diffusers(k->unet, l->module) : NULL;
        if (!mi || !mi->ldm)
            return zl_set_error(ZL_ENOTFOUND, "UNet module '%s' is not in the %s name table (no ldm name to write)",
                                l->module, zl_family_name(k->family));
        return put(buf, n, "lora_unet_", mi->ldm, 1);
    }
    /* SD 1.x kohya networks are built on the diffusers UNet: diffusers names. */
    return put(buf, n, "lora_unet_", l->module, 1);
}

int zl_lora_key(const zl_lora_layer *l, zl_family family, zl_lora_format format, const zl_unet_config *unet_config,
                char *buf, size_t n) {
    key_ctx k;
    int rc = zl_key_ctx_init(&k, family, format, unet_config);
    if (!rc) rc = zl_key_of(&k, l, 0, buf, n);
    zl_key_ctx_free(&k);
    return rc;
}

/* ---- streaming state ---- */

typedef struct writer writer;
typedef struct {
    writer *w;
    int layer;
    int which; /* 0 down, 1 up */
} fill_ctx;

struct writer {
    const zl_lora *layout;
    const zl_lora_source *src;
    zl_lora_format format;
    zl_dtype *dtypes;   /* per layer */
    float *scratch;     /* [max layer tensor] */
    const char *path;
};

static size_t down_numel(const zl_lora_layer *l) { return (size_t)l->rank * (size_t)l->in_features * (size_t)l->kh * (size_t)l->kw; }
static size_t up_numel(const zl_lora_layer *l) { return (size_t)l->out_features * (size_t)l->rank; }

/* f32 -> dtype for n values; returns the index of the first value that is not finite
 * or overflows the dtype (the output then holds Inf/NaN there), or -1. One pass, so
 * streaming a large file costs little more than the copy. */
static long convert_checked(zl_dtype dt, const float *src, void *dst, size_t n) {
    if (dt == ZL_DT_F16) {
        uint16_t *h = dst;
        size_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
        /* hardware RNE conversion: the same rounding as zl_f32_to_f16 */
        for (; i + 8 <= n; i += 8) {
            __m128i v = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
            _mm_storeu_si128((__m128i *)(h + i), v);
        }
#endif
        for (; i < n; i++) h[i] = zl_f32_to_f16(src[i]);
        unsigned bad = 0;
        for (i = 0; i < n; i++) bad |= (h[i] & 0x7c00u) == 0x7c00u;
        if (bad)
            for (i = 0; i < n; i++)
                if ((h[i] & 0x7c00u) == 0x7c00u) return (long)i;
        return -1;
    }
    if (dt == ZL_DT_BF16) {
        uint16_t *h = dst;
        unsigned bad = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &src[i], 4);
            bad |= (u & 0x7f800000u) == 0x7f800000u;
            /* round to nearest even; a finite value may round up to Inf, caught below */
            h[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
            bad |= (h[i] & 0x7f80u) == 0x7f80u;
        }
        if (bad)
            for (size_t i = 0; i < n; i++) {
                uint32_t u;
                memcpy(&u, &src[i], 4);
                if ((u & 0x7f800000u) == 0x7f800000u || (h[i] & 0x7f80u) == 0x7f80u) return (long)i;
            }
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (!isfinite(src[i])) return (long)i;
    if (zl_convert_from_f32(dt, src, dst, n)) return 0;
    return -1;
}

static int fill_tensor(void *vctx, void *dst, size_t nbytes) {
    fill_ctx *fc = vctx;
    writer *w = fc->w;
    const zl_lora_layer *l = &w->layout->layers[fc->layer];
    size_t n = fc->which ? up_numel(l) : down_numel(l);
    zl_dtype dt = w->dtypes[fc->layer];
    if ((size_t)zl_dtype_bits(dt) / 8 * n != nbytes) return zl_set_error(ZL_EINVAL, "internal: size mismatch");
    /* PEFT readers take alpha = r unless told otherwise, so the scale lives in B. */
    float s = fc->which && w->format == ZL_FORMAT_PEFT ? zl_lora_scale(l) : 1.0f;
    if (w->src->get_raw) {
        int done = 0;
        int rc = w->src->get_raw(w->src->ctx, fc->layer, fc->which, dt, s, dst, nbytes, &done);
        if (rc || done) return rc;
    }
    int rc = w->src->get(w->src->ctx, fc->layer, fc->which, w->scratch);
    if (rc) return rc;
    if (s != 1.0f)
        for (size_t i = 0; i < n; i++) w->scratch[i] *= s;
    long bad = convert_checked(dt, w->scratch, dst, n);
    if (bad >= 0) {
        float v = w->scratch[bad];
        if (!isfinite(v))
            return zl_set_error(ZL_ENUMERIC, "%s of '%s' holds a non-finite value", fc->which ? "up" : "down", l->module);
        return zl_set_error(ZL_ENUMERIC, "%s of '%s': value %g overflows %s; write F32 (--dtype f32)",
                            fc->which ? "up" : "down", l->module, (double)v, zl_dtype_name(dt));
    }
    return ZL_OK;
}

static zl_dtype out_dtype(zl_dtype want, zl_dtype have) {
    if (want == ZL_DT_F32 || want == ZL_DT_F16 || want == ZL_DT_BF16) return want;
    if (have == ZL_DT_F32 || have == ZL_DT_F16 || have == ZL_DT_BF16 || have == ZL_DT_F64) return have;
    return ZL_DT_F32;
}

/* alpha goes out in the layer's dtype when that holds it exactly (as kohya writes it), else F32. */
static zl_dtype alpha_bytes(float alpha, zl_dtype dt, uint8_t out[8]) {
    if (dt == ZL_DT_F16) {
        uint16_t h = zl_f32_to_f16(alpha);
        if (zl_f16_to_f32(h) == alpha) { memcpy(out, &h, 2); return dt; }
    } else if (dt == ZL_DT_BF16) {
        uint16_t h = zl_f32_to_bf16(alpha);
        if (zl_bf16_to_f32(h) == alpha) { memcpy(out, &h, 2); return dt; }
    } else if (dt == ZL_DT_F64) {
        double d = alpha;
        memcpy(out, &d, 8);
        return dt;
    }
    memcpy(out, &alpha, 4);
    return ZL_DT_F32;
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static void fmt_num(char *buf, size_t n, double v) {
    if (v == floor(v) && fabs(v) < 1e15) snprintf(buf, n, "%.1f", v);
    else snprintf(buf, n, "%.9g", v);
}

/* Date for modelspec.date: SOURCE_DATE_EPOCH when set, so outputs can be byte-reproducible. */
static void iso_date(char out[32]) {
    time_t t = time(NULL);
    const char *sde = getenv("SOURCE_DATE_EPOCH");
    if (sde && *sde) {
        char *end;
        long long v = strtoll(sde, &end, 10);
        if (!*end && v >= 0) t = (time_t)v;
    }
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
}

/* PEFT adapter metadata, one config per component under "unet." / "text_encoder." /
 * "text_encoder_2." as diffusers packs it: r = lora_alpha = the component's largest rank,
 * and layers of other ranks get rank_pattern/alpha_pattern entries. With alpha = rank
 * everywhere the scale is 1 whether a reader uses the patterns or not. */
static char *peft_metadata(const zl_lora *l) {
    static const char *const comp[3] = {"unet", "text_encoder", "text_encoder_2"};
    json_t *root = json_object();
    for (int part = 0; part < 3; part++) {
        int max_rank = 0;
        for (int i = 0; i < l->n; i++)
            if ((int)l->layers[i].part == part && l->layers[i].rank > max_rank) max_rank = l->layers[i].rank;
        if (!max_rank) continue;
        json_t *tm = json_array(), *rp = json_object(), *ap = json_object(), *seen = json_object();
        for (int i = 0; i < l->n; i++) {
            const zl_lora_layer *y = &l->layers[i];
            if ((int)y->part != part) continue;
            /* target names as PEFT matches them: the last component, with its parent when
             * that component is a number ("to_out.0") */
            const char *leaf = strrchr(y->module, '.');
            leaf = leaf ? leaf + 1 : y->module;
            if (leaf > y->module && leaf[0] >= '0' && leaf[0] <= '9') {
                const char *p = leaf - 1;
                while (p > y->module && p[-1] != '.') p--;
                leaf = p;
            }
            if (!json_object_get(seen, leaf)) {
                json_object_set_new(seen, leaf, json_true());
                json_array_append_new(tm, json_string(leaf));
            }
            if (y->rank != max_rank) {
                json_object_set_new(rp, y->module, json_integer(y->rank));
                json_object_set_new(ap, y->module, json_integer(y->rank));
            }
        }
        json_decref(seen);
        char k[64];
#define ZL_SET(name, v) (snprintf(k, sizeof k, "%s.%s", comp[part], name), json_object_set_new(root, k, v))
        ZL_SET("peft_type", json_string("LORA"));
        ZL_SET("r", json_integer(max_rank));
        ZL_SET("lora_alpha", json_integer(max_rank));
        ZL_SET("target_modules", tm);
        ZL_SET("rank_pattern", rp);
        ZL_SET("alpha_pattern", ap);
        ZL_SET("use_rslora", json_false());
#undef ZL_SET
    }
    char *s = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(root);
    return s;
}

/* Input digests computed while writing: 64-character placeholders in the
 * header (lowercase hex never contains 'z'), replaced once they are known. */
static void sha_placeholder(char hex[65], int i) {
    memset(hex, 'z', 64);
    hex[64] = 0;
    char tag[40];
    int n = snprintf(tag, sizeof tag, "ziplora-sha256-pending-%d", i);
    memcpy(hex + 4, tag, (size_t)n);
}

static int sha_fix(void *ctx, char *header, size_t len) {
    const zl_lora_write_opts *o = ctx;
    int rc = o->sha256_wait(o->sha256_ctx);
    if (rc) return rc;
    for (int i = 0; i < o->n_inputs; i++) {
        char ph[65];
        sha_placeholder(ph, i);
        char own[65];
        const char *hex = o->input_sha256 ? o->input_sha256[i] : NULL;
        if (!hex && o->inputs[i]) {
            if ((rc = zl_sha256_file(o->inputs[i], own))) return rc;
            hex = own;
        }
        char *at = memmem(header, len, ph, 64);
        if (!hex || strlen(hex) != 64 || !at) return zl_set_error(ZL_EINVAL, "internal: digest of input %d missing", i);
        memcpy(at, hex, 64);
    }
    return ZL_OK;
}

int zl_lora_write_stream(const char *path, const zl_lora *lay, const zl_lora_source *src, const zl_lora_write_opts *o) {
    if (lay->n_dora) /* the writer has no DoRA form: its magnitudes would be dropped */
        return zl_set_error(ZL_EUNSUPPORTED, "%s: %d DoRA layer%s cannot be written as a LoRA; bake them first "
                                             "(convert --model)", path, lay->n_dora, lay->n_dora == 1 ? "" : "s");
    zl_lora_write_opts def;
    if (!o) {
        memset(&def, 0, sizeof def);
        o = &def;
    }
    if (!path || !lay || !src || !src->get) return zl_set_error(ZL_EINVAL, "zl_lora_write: missing argument");
    if (o->format != ZL_FORMAT_KOHYA && o->format != ZL_FORMAT_PEFT)
        return zl_set_error(ZL_EINVAL, "%s: unknown LoRA format %d", path, (int)o->format);
    if (o->dtype != ZL_DT_INVALID && o->dtype != ZL_DT_F32 && o->dtype != ZL_DT_F16 && o->dtype != ZL_DT_BF16)
        return zl_set_error(ZL_EINVAL, "%s: output dtype must be f32, f16 or bf16 (got %s)", path, zl_dtype_name(o->dtype));
    if (lay->n <= 0) return zl_set_error(ZL_EINVAL, "%s: the LoRA has no layers to write", path);
    for (int i = 0; i < o->n_inputs; i++)
        if (o->inputs[i] && (!strcmp(o->inputs[i], path) || zl_same_file(o->inputs[i], path)))
            return zl_set_error(ZL_EINVAL, "%s: refusing to overwrite an input file", path);

    key_ctx kc;
    int rc = zl_key_ctx_init(&kc, lay->family, o->format, o->unet_config);
    if (rc) return zl_error_prefix(rc, "%s", path);

    int per = o->format == ZL_FORMAT_KOHYA ? 3 : 2;
    int n_ent = lay->n * per;
    zl_st_entry *ent = calloc((size_t)n_ent, sizeof *ent);
    fill_ctx *fcs = calloc((size_t)lay->n * 2, sizeof *fcs);
    char **names = calloc((size_t)n_ent, sizeof *names);
    uint8_t (*alphas)[8] = calloc((size_t)lay->n, sizeof *alphas);
    writer w = {lay, src, o->format, calloc((size_t)lay->n, sizeof(zl_dtype)), NULL, path};
    size_t max_numel = 1;
    int max_rank = 0;
    if (!ent || !fcs || !names || !alphas || !w.dtypes) {
        rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < lay->n && !rc; i++) {
        const zl_lora_layer *l = &lay->layers[i];
        if (l->rank <= 0 || l->in_features <= 0 || l->out_features <= 0 || l->kh <= 0 || l->kw <= 0 ||
            (l->kind == ZL_LORA_LINEAR && (l->kh != 1 || l->kw != 1))) {
            rc = zl_set_error(ZL_ESHAPE, "%s: layer '%s' has an invalid shape", path, l->module);
            break;
        }
        if (!isfinite(l->alpha)) {
            rc = zl_set_error(ZL_ENUMERIC, "%s: layer '%s' has a non-finite alpha", path, l->module);
            break;
        }
        if (l->rank > max_rank) max_rank = l->rank;
        w.dtypes[i] = out_dtype(o->dtype, l->dtype);
        if (down_numel(l) > max_numel) max_numel = down_numel(l);
        if (up_numel(l) > max_numel) max_numel = up_numel(l);
        char stem[512];
        rc = zl_key_of(&kc, l, 0, stem, sizeof stem);
        if (rc) { rc = zl_error_prefix(rc, "%s", path); break; }
        size_t sl = strlen(stem) + 24;
        zl_st_entry *e = &ent[i * per];
        for (int j = 0; j < per; j++) {
            names[i * per + j] = malloc(sl);
            if (!names[i * per + j]) { rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", path); break; }
        }
        if (rc) break;
        const char *sd = o->format == ZL_FORMAT_KOHYA ? ".lora_down.weight" : ".lora_A.weight";
        const char *su = o->format == ZL_FORMAT_KOHYA ? ".lora_up.weight" : ".lora_B.weight";
        snprintf(names[i * per], sl, "%s%s", stem, sd);
        snprintf(names[i * per + 1], sl, "%s%s", stem, su);
        /* down [r, in] or [r, in, kh, kw]; up [out, r] or [out, r, 1, 1] */
        e[0].name = names[i * per];
        e[0].dtype = w.dtypes[i];
        e[0].ndim = l->kind == ZL_LORA_CONV ? 4 : 2;
        e[0].shape[0] = l->rank;
        e[0].shape[1] = l->in_features;
        e[0].shape[2] = l->kh;
        e[0].shape[3] = l->kw;
        e[1].name = names[i * per + 1];
        e[1].dtype = w.dtypes[i];
        e[1].ndim = e[0].ndim;
        e[1].shape[0] = l->out_features;
        e[1].shape[1] = l->rank;
        e[1].shape[2] = 1;
        e[1].shape[3] = 1;
        fcs[2 * i] = (fill_ctx){&w, i, 0};
        fcs[2 * i + 1] = (fill_ctx){&w, i, 1};
        e[0].fill = fill_tensor;
        e[0].fill_ctx = &fcs[2 * i];
        e[1].fill = fill_tensor;
        e[1].fill_ctx = &fcs[2 * i + 1];
        if (per == 3) {
            snprintf(names[i * per + 2], sl, "%s.alpha", stem);
            e[2].name = names[i * per + 2];
            e[2].ndim = 0;
            e[2].dtype = alpha_bytes(l->alpha, w.dtypes[i], alphas[i]);
            e[2].data = alphas[i];
        }
    }
    if (rc) goto done;
    w.scratch = malloc(max_numel * sizeof(float));
    if (!w.scratch) { rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", path); goto done; }

    {
        /* metadata (all values strings, as kohya writes them) */
        zl_st_meta_kv meta[24];
        int nm = 0;
        char dim[32], alpha[64], date[32], title[256];
        snprintf(dim, sizeof dim, "%d", max_rank);
        float a0 = lay->layers[0].alpha;
        int uniform = 1;
        for (int i = 0; i < lay->n; i++)
            if (lay->layers[i].alpha != a0) uniform = 0;
        if (o->format == ZL_FORMAT_PEFT) fmt_num(alpha, sizeof alpha, max_rank);
        else if (uniform) fmt_num(alpha, sizeof alpha, a0);
        else {
            /* per-layer alphas differ (merged layers: alpha = rank): report the widest layer's */
            float am = a0;
            for (int i = 0; i < lay->n; i++)
                if (lay->layers[i].rank == max_rank) { am = lay->layers[i].alpha; break; }
            fmt_num(alpha, sizeof alpha, am);
        }
        iso_date(date);
        snprintf(title, sizeof title, "%s", o->title ? o->title : base_name(path));
        char *dot = o->title ? NULL : strrchr(title, '.');
        if (dot && !strcmp(dot, ".safetensors")) *dot = 0;
        meta[nm++] = (zl_st_meta_kv){"ss_network_module", "networks.lora"};
        meta[nm++] = (zl_st_meta_kv){"ss_network_dim", dim};
        meta[nm++] = (zl_st_meta_kv){"ss_network_alpha", alpha};
        meta[nm++] = (zl_st_meta_kv){"modelspec.sai_model_spec", "1.0.1"};
        if (lay->family == ZL_FAMILY_SDXL) {
            meta[nm++] = (zl_st_meta_kv){"ss_base_model_version", "sdxl_base_v1-0"};
            meta[nm++] = (zl_st_meta_kv){"modelspec.architecture", "stable-diffusion-xl-v1-base/lora"};
            meta[nm++] = (zl_st_meta_kv){"modelspec.resolution", "1024x1024"};
        } else if (lay->family == ZL_FAMILY_SD1) {
            meta[nm++] = (zl_st_meta_kv){"ss_base_model_version", "sd_v1"};
            meta[nm++] = (zl_st_meta_kv){"modelspec.architecture", "stable-diffusion-v1/lora"};
            meta[nm++] = (zl_st_meta_kv){"modelspec.resolution", "512x512"};
        }
        meta[nm++] = (zl_st_meta_kv){"modelspec.title", title};
        meta[nm++] = (zl_st_meta_kv){"modelspec.date", date};
        meta[nm++] = (zl_st_meta_kv){"ziplora_version", ZIPLORA_VERSION};
        if (o->method) meta[nm++] = (zl_st_meta_kv){"ziplora_method", o->method};
        if (o->params_json) meta[nm++] = (zl_st_meta_kv){"ziplora_params", o->params_json};
        char *inputs_json = NULL, *peft = NULL;
        if (o->n_inputs > 0) {
            json_t *arr = json_array();
            for (int i = 0; i < o->n_inputs && !rc; i++) {
                char hex[65];
                if (o->sha256_wait) sha_placeholder(hex, i); /* filled in by sha_fix */
                else if (o->input_sha256 && o->input_sha256[i]) snprintf(hex, sizeof hex, "%s", o->input_sha256[i]);
                else rc = zl_sha256_file(o->inputs[i], hex);
                json_t *it = json_object();
                json_object_set_new(it, "file", json_string(base_name(o->inputs[i])));
                json_object_set_new(it, "sha256", json_string(rc ? "" : hex));
                json_array_append_new(arr, it);
            }
            inputs_json = json_dumps(arr, JSON_COMPACT);
            json_decref(arr);
            if (rc) { free(inputs_json); goto done; }
            meta[nm++] = (zl_st_meta_kv){"ziplora_inputs", inputs_json};
        }
        if (o->format == ZL_FORMAT_PEFT) {
            peft = peft_metadata(lay);
            if (peft) meta[nm++] = (zl_st_meta_kv){"lora_adapter_metadata", peft};
        }
        rc = o->sha256_wait && o->n_inputs > 0
                 ? zl_st_write_fix(path, ent, n_ent, meta, nm, o->inputs, o->n_inputs, sha_fix, (void *)o)
                 : zl_st_write(path, ent, n_ent, meta, nm, o->inputs, o->n_inputs);
        free(inputs_json);
        free(peft);
    }

done:
    if (names)
        for (int i = 0; i < n_ent; i++) free(names[i]);
    free(names);
    free(ent);
    free(fcs);
    free(alphas);
    free(w.dtypes);
    free(w.scratch);
    zl_key_ctx_free(&kc);
    return rc;
}

/* Source that reads a fully loaded zl_lora. */
static int mem_get(void *ctx, int i, int which, float *dst) {
    const zl_lora *l = ctx;
    const zl_lora_layer *y = &l->layers[i];
    const float *p = which ? y->up : y->down;
    if (!p) return zl_set_error(ZL_EINVAL, "layer '%s' has no %s values", y->module, which ? "up" : "down");
    memcpy(dst, p, (which ? up_numel(y) : down_numel(y)) * sizeof(float));
    return ZL_OK;
}

int zl_lora_write(const char *path, const zl_lora *l, const zl_lora_write_opts *opts) {
    zl_lora_source src = {mem_get, (void *)l, NULL};
    return zl_lora_write_stream(path, l, &src, opts);
}
