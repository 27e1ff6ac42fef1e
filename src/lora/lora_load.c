/* LoRA loading: every common on-disk layout (kohya on ldm or diffusers names,
 * PEFT lora_A/B, diffusers .lora.down/up and the attention-processor form,
 * ComfyUI's generic diffusion_model.<ldm path> / text_encoders.clip_l/clip_g keys,
 * text-encoder parts, LoCon convs) into the canonical zl_lora. A key is first
 * split into (part, name, role) by its syntax alone; the name is then looked
 * up in the name tables of the target model (src/models/names.c), so an
 * underscore-flattened kohya name is only ever matched exactly, never split.
 * Alpha comes from .alpha tensors, PEFT adapter metadata or an
 * adapter_config.json, in that order, else alpha = rank. LyCORIS LoHa and LoKr
 * (kohya names) become exact LoRA factors of a higher rank (see lyco_check),
 * their Tucker-decomposed forms (lora_mid, hada_t1/t2, lokr_t2) too. Variants
 * we cannot load exactly (DoRA, OFT) are refused by name. */
#include <jansson.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif
#include <limits.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora/lora_keys.h"
#include "models/names.h"
#include "ziplora/fileio.h"
#include "ziplora/lora.h"
#include "ziplora/safetensors.h"

typedef enum {
    ROLE_DOWN = 0, ROLE_UP = 1, ROLE_ALPHA = 2,
    /* LyCORIS LoHa: dW = (w1_a w1_b) * (w2_a w2_b) elementwise, times alpha / rank(w1_b) */
    ROLE_H1A, ROLE_H1B, ROLE_H2A, ROLE_H2B,
    /* LyCORIS LoKr: dW = kron(W1, W2), each full or as _a _b factors, times alpha / dim */
    ROLE_K1, ROLE_K1A, ROLE_K1B, ROLE_K2, ROLE_K2A, ROLE_K2B,
    /* Tucker cores (LyCORIS use_tucker): LoCon's lora_mid, LoHa's hada_t1/t2, LoKr's lokr_t2 */
    ROLE_MID, ROLE_HT1, ROLE_HT2, ROLE_KT2,
    /* DoRA magnitude (LyCORIS weight_decompose), with opts.allow_dora only */
    ROLE_DORA,
    N_ROLES
} role_t;

enum { LYCO_NONE = 0, LYCO_LOHA = 1, LYCO_LOKR = 2, LYCO_LOCON_TUCKER = 3 };

/* One tensor of the file, parsed by syntax. */
typedef struct {
    const char *key;
    const zl_st_tensor *t;
    char *name;              /* kohya: flat base without prefix; else the dotted module path */
    int flat;                /* 1 for kohya keys */
    int comfy;               /* 1 for ComfyUI's generic keys: the model's own module paths
                                (diffusion_model.<ldm path>, text_encoders.clip_l/clip_g.transformer.<HF path>) */
    zl_part part;
    role_t role;
    zl_lora_layout layout;   /* PEFT / DIFFUSERS_OLD for dotted keys; 0 for kohya (decided by lookup) */
} entry;

/* All tensors of one module. */
typedef struct {
    entry *e[N_ROLES];       /* by role */
    const zl_module_info *mod;
    int is_ldm;
    int lyco;                /* LYCO_*: a LoHa / LoKr / Tucker LoCon module, turned into exact LoRA factors */
    int tucker;              /* 1: a Tucker core (lora_mid, hada_t1/t2, lokr_t2) is part of it */
    /* LyCORIS geometry (set by lyco_check): dW is [out, in_k], in_k = in * kh * kw */
    int64_t l_out, l_ink;
    int l_kh, l_kw;          /* kernel the factors fix (0: any, taken from the module) */
    int l_rank;              /* rank of the exact LoRA form (Khatri-Rao / Kronecker factors, or full) */
    int l_full;              /* 1: formed as dW itself with an identity on the smaller side */
    int l_s1, l_s2;          /* LoKr: ranks used for W1 and W2 (LoHa: r1, r2) */
    int l_w1_left, l_w2_left;/* LoKr: a full W1 / W2 put on the up side (1) or the down side (0) */
    int64_t l_c, l_d2;       /* LoKr: W2 is [l_c, l_d2] (l_d2 = d * kh * kw) */
    int l_dim;               /* the rank the scale divides alpha by (0: scale 1) */
    float l_scale;           /* LyCORIS scale (set with the alpha), folded into up */
} group;

/* ---------------------------------------------------------------- key syntax */

static int starts(const char *s, const char *p) { return !strncmp(s, p, strlen(p)); }

/* Length of s without suffix `suf`, or -1 if s does not end with it (or would be empty). */
static long base_len(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n > m && !strcmp(s + n - m, suf) ? (long)(n - m) : -1;
}

static char *strndup_(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* LyCORIS and PEFT variants whose math is not LoRA's up @ down: refuse them by
 * name rather than load something else. */
#define DORA_WHY " without a model (a DoRA update depends on the base weights, so it is no fixed low-rank " \
                 "update): generate applies it; zip, eval-merge, and merge or inspect with --model M bake it " \
                 "against the model; convert --model M writes it as a plain LoRA"
static const struct {
    const char *marker;
    const char *what;
} refused[] = {
    /* the first two are read instead with opts.allow_dora (REFUSED_DORA, REFUSED_PEFT_DORA) */
    {".dora_scale", "DoRA (dora_scale)" DORA_WHY},
    {"lora_magnitude_vector", "DoRA (PEFT lora_magnitude_vector)" DORA_WHY},
    {".oft_", "OFT (oft_* tensors)"},
    {".boft_", "BOFT (boft_* tensors)"},
    {"lora_embedding_", "embedding LoRA (lora_embedding_A/B)"},
    {".ia3_", "IA3"},
};
#define N_REFUSED ((int)(sizeof refused / sizeof refused[0]))
#define REFUSED_DORA 0
#define REFUSED_PEFT_DORA 1

static int refused_kind(const char *key) {
    for (int i = 0; i < N_REFUSED; i++)
        if (strstr(key, refused[i].marker)) return i;
    return -1;
}

static const struct {
    const char *prefix;
    zl_part part;
} kohya_prefix[] = {
    {"lora_unet_", ZL_PART_UNET},
    {"lora_te1_", ZL_PART_TE1},
    {"lora_te2_", ZL_PART_TE2},
    {"lora_te_", ZL_PART_TE1}, /* SD 1.x: its only text encoder */
};

/* Parse one key. Returns 0 if understood, 1 if not; ENOMEM on allocation failure.
 * *plain_te is set for SD1's "lora_te_" prefix (family evidence). */
static int parse_key(const char *key, entry *e, int *plain_te) {
    memset(e, 0, sizeof *e);
    e->key = key;
    for (size_t i = 0; i < sizeof kohya_prefix / sizeof kohya_prefix[0]; i++) {
        size_t pl = strlen(kohya_prefix[i].prefix);
        if (strncmp(key, kohya_prefix[i].prefix, pl)) continue;
        /* kohya: the base name never contains a dot, so the first dot ends it */
        const char *dot = strchr(key, '.');
        if (!dot || dot == key + pl) return 1;
        const char *suf = dot + 1;
        static const struct {
            const char *suf;
            role_t role;
        } ks[] = {{"lora_down.weight", ROLE_DOWN}, {"lora_up.weight", ROLE_UP}, {"alpha", ROLE_ALPHA},
                  {"hada_w1_a", ROLE_H1A},         {"hada_w1_b", ROLE_H1B},      {"hada_w2_a", ROLE_H2A},
                  {"hada_w2_b", ROLE_H2B},         {"lokr_w1", ROLE_K1},         {"lokr_w1_a", ROLE_K1A},
                  {"lokr_w1_b", ROLE_K1B},         {"lokr_w2", ROLE_K2},         {"lokr_w2_a", ROLE_K2A},
                  {"lokr_w2_b", ROLE_K2B},         {"lora_mid.weight", ROLE_MID}, {"hada_t1", ROLE_HT1},
                  {"hada_t2", ROLE_HT2},           {"lokr_t2", ROLE_KT2},        {"dora_scale", ROLE_DORA}};
        size_t k = 0;
        while (k < sizeof ks / sizeof ks[0] && strcmp(suf, ks[k].suf)) k++;
        if (k == sizeof ks / sizeof ks[0]) return 1;
        e->role = ks[k].role;
        e->flat = 1;
        e->part = kohya_prefix[i].part;
        if (i == 3) *plain_te = 1;
        e->name = strndup_(key + pl, (size_t)(dot - key - (long)pl));
        return e->name ? 0 : ZL_ENOMEM;
    }

    /* Dotted keys: a component prefix, the module path, a role suffix. */
    const char *r = key;
    int part = -1;
    if (starts(r, "diffusion_model.")) r += 16, part = ZL_PART_UNET, e->comfy = 1;
    else if (starts(r, "text_encoders.clip_l.transformer.")) r += 33, part = ZL_PART_TE1, e->comfy = 1;
    else if (starts(r, "text_encoders.clip_g.transformer.")) r += 33, part = ZL_PART_TE2, e->comfy = 1;
    else if (starts(r, "unet.")) r += 5, part = ZL_PART_UNET;
    else if (starts(r, "text_encoder_2.")) r += 15, part = ZL_PART_TE2;
    else if (starts(r, "text_encoder.")) r += 13, part = ZL_PART_TE1;
    else if (starts(r, "base_model.model.")) r += 17;
    if (part < 0) /* PEFT's own adapter files (or bare keys): the module path says which network */
        part = starts(r, "text_model.") || starts(r, "text_projection.") ? ZL_PART_TE1 : ZL_PART_UNET;
    e->part = (zl_part)part;

    static const struct {
        const char *suf;
        role_t role;
        zl_lora_layout layout;
    } sufs[] = {
        {".lora_A.weight", ROLE_DOWN, ZL_LAYOUT_PEFT},
        {".lora_B.weight", ROLE_UP, ZL_LAYOUT_PEFT},
        {".lora.down.weight", ROLE_DOWN, ZL_LAYOUT_DIFFUSERS_OLD},
        {".lora.up.weight", ROLE_UP, ZL_LAYOUT_DIFFUSERS_OLD},
        {".lora_linear_layer.down.weight", ROLE_DOWN, ZL_LAYOUT_DIFFUSERS_OLD},
        {".lora_linear_layer.up.weight", ROLE_UP, ZL_LAYOUT_DIFFUSERS_OLD},
        {".lora_down.weight", ROLE_DOWN, ZL_LAYOUT_DIFFUSERS_OLD},
        {".lora_up.weight", ROLE_UP, ZL_LAYOUT_DIFFUSERS_OLD},
        {".alpha", ROLE_ALPHA, ZL_LAYOUT_UNKNOWN},
        {".lora_magnitude_vector", ROLE_DORA, ZL_LAYOUT_PEFT},
        {".lora_magnitude_vector.weight", ROLE_DORA, ZL_LAYOUT_PEFT},
    };
    for (size_t i = 0; i < sizeof sufs / sizeof sufs[0]; i++) {
        long n = base_len(r, sufs[i].suf);
        if (n <= 0) continue;
        e->role = sufs[i].role;
        e->layout = e->comfy ? ZL_LAYOUT_COMFY : sufs[i].layout;
        e->name = strndup_(r, (size_t)n);
        return e->name ? 0 : ZL_ENOMEM;
    }
    if (e->comfy) return 1; /* ComfyUI names a module by its path and nothing else */
    /* PEFT with the adapter name kept: <module>.lora_A.<adapter>.weight (and the DoRA
     * magnitude, <module>.lora_magnitude_vector.<adapter>[.weight]) */
    static const struct {
        const char *tag;
        role_t role;
        int bare; /* the key may end at the adapter name */
    } tags[3] = {{".lora_A.", ROLE_DOWN, 0}, {".lora_B.", ROLE_UP, 0}, {".lora_magnitude_vector.", ROLE_DORA, 1}};
    for (int ab = 0; ab < 3; ab++) {
        const char *tag = tags[ab].tag;
        const char *p = NULL, *q = r;
        while ((q = strstr(q, tag))) p = q++;
        if (!p || p == r) continue;
        const char *adapter = p + strlen(tag), *w = strchr(adapter, '.');
        if (w == adapter || !*adapter || (w ? strcmp(w, ".weight") : !tags[ab].bare)) continue;
        e->role = tags[ab].role;
        e->layout = ZL_LAYOUT_PEFT;
        e->name = strndup_(r, (size_t)(p - r));
        return e->name ? 0 : ZL_ENOMEM;
    }
    /* Attention-processor form: <attn>[.processor].to_q_lora.down.weight; to_out_lora is
     * to_out.0 in a UNet. Old diffusers text-encoder files use the same names on self_attn. */
    static const char *const proc[4] = {"to_q", "to_k", "to_v", "to_out"};
    static const char *const unet_mod[4] = {"to_q", "to_k", "to_v", "to_out.0"};
    static const char *const te_mod[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    for (int ud = 0; ud < 2; ud++) {
        long n = base_len(r, ud ? "_lora.up.weight" : "_lora.down.weight");
        if (n <= 0) continue;
        for (int k = 0; k < 4; k++) {
            size_t pl = strlen(proc[k]);
            if ((size_t)n <= pl + 1 || strncmp(r + n - (long)pl, proc[k], pl) || r[n - (long)pl - 1] != '.') continue;
            size_t parent = (size_t)n - pl - 1;
            if (parent > 10 && !strncmp(r + parent - 10, ".processor", 10)) parent -= 10;
            const char *mod = e->part == ZL_PART_UNET ? unet_mod[k] : te_mod[k];
            e->name = malloc(parent + strlen(mod) + 2);
            if (!e->name) return ZL_ENOMEM;
            memcpy(e->name, r, parent);
            e->name[parent] = '.';
            strcpy(e->name + parent + 1, mod);
            e->role = ud ? ROLE_UP : ROLE_DOWN;
            e->layout = ZL_LAYOUT_DIFFUSERS_OLD;
            return 0;
        }
    }
    return 1;
}

static int cmp_entry(const void *a, const void *b) {
    const entry *x = a, *y = b;
    if (x->part != y->part) return x->part < y->part ? -1 : 1;
    if (x->flat != y->flat) return x->flat < y->flat ? -1 : 1;
    if (x->comfy != y->comfy) return x->comfy < y->comfy ? -1 : 1;
    int c = strcmp(x->name, y->name);
    if (c) return c;
    return (int)x->role - (int)y->role;
}

/* ---------------------------------------------------------------- family */

static const char *part_name(zl_part p) {
    return p == ZL_PART_UNET ? "UNet" : p == ZL_PART_TE1 ? "text encoder 1" : "text encoder 2";
}

/* -1: SD 2.x (refused); else a zl_family. */
static int family_from_meta(const zl_st_file *f, char *why, size_t whyn) {
    const char *v = zl_st_meta(f, "ss_base_model_version");
    if (v) {
        snprintf(why, whyn, "metadata ss_base_model_version '%s'", v);
        if (starts(v, "sdxl")) return ZL_FAMILY_SDXL;
        if (starts(v, "sd_v1") || starts(v, "sd_1") || starts(v, "v1")) return ZL_FAMILY_SD1;
        if (starts(v, "sd_v2") || starts(v, "sd_2") || starts(v, "v2")) return -1;
    }
    v = zl_st_meta(f, "modelspec.architecture");
    if (v) {
        snprintf(why, whyn, "metadata modelspec.architecture '%s'", v);
        if (starts(v, "stable-diffusion-xl")) return ZL_FAMILY_SDXL;
        if (starts(v, "stable-diffusion-v1")) return ZL_FAMILY_SD1;
        if (starts(v, "stable-diffusion-v2")) return -1;
    }
    return ZL_FAMILY_UNKNOWN;
}

/* Can this LoRA (by its down tensor) sit on module m? Linear wants [r, in];
 * a conv wants [r, in, kh, kw] with the conv's own kernel ([r, in] for 1x1). */
static int compatible(const zl_module_info *m, const zl_st_tensor *down) {
    if (!down) return 1;
    if (m->kind == ZL_MOD_LINEAR) return down->ndim == 2;
    if (m->kind == ZL_MOD_CONV) {
        if (down->ndim == 4) return down->shape[2] == m->kh && down->shape[3] == m->kw;
        return down->ndim == 2 && m->kh == 1 && m->kw == 1;
    }
    return 0;
}

static const zl_module_info *find_module(const zl_name_table *t, const entry *e, int *is_ldm) {
    *is_ldm = 0;
    if (!t) return NULL;
    if (e->flat) return zl_name_find_kohya(t, e->name, is_ldm);
    if (e->comfy && e->part == ZL_PART_UNET) return *is_ldm = 1, zl_name_find_ldm(t, e->name);
    return zl_name_find_diffusers(t, e->name);
}

static const entry *first_entry(const group *g) {
    for (int r = 0; r < N_ROLES; r++)
        if (g->e[r]) return g->e[r];
    return NULL;
}

/* The tensor a message names for the group (its down, else its first). */
static const char *group_key(const group *g) { return g->e[ROLE_DOWN] ? g->e[ROLE_DOWN]->key : first_entry(g)->key; }

/* A LyCORIS group on module m: a linear wants no kernel from the factors, a
 * conv either none (taken from the module) or its own; the flattened input
 * must hold whole kernels. */
static int lyco_compatible(const zl_module_info *m, const group *g) {
    if (m->kind != ZL_MOD_LINEAR && m->kind != ZL_MOD_CONV) return 0;
    if (g->l_kh && (g->l_kh != m->kh || g->l_kw != m->kw)) return 0;
    return g->l_ink % ((int64_t)m->kh * m->kw) == 0;
}

/* How many UNet groups fit table t (name found and kernel compatible). */
static int count_fit(const zl_name_table *t, const group *g, int ng) {
    int c = 0, ldm;
    for (int i = 0; i < ng; i++) {
        const entry *e = first_entry(&g[i]);
        if (e->part != ZL_PART_UNET) continue;
        const zl_module_info *m = find_module(t, e, &ldm);
        if (m && (g[i].lyco ? lyco_compatible(m, &g[i]) : compatible(m, g[i].e[ROLE_DOWN] ? g[i].e[ROLE_DOWN]->t : NULL)))
            c++;
    }
    return c;
}

static int is_attn2_kv(const entry *e) {
    const char *s[4] = {"attn2_to_k", "attn2_to_v", "attn2.to_k", "attn2.to_v"};
    for (int i = 0; i < 4; i++)
        if (base_len(e->name, s[i]) > 0) return 1;
    return 0;
}

/* ---------------------------------------------------------------- PEFT alpha */

typedef struct {
    int present;
    double lora_alpha;
    int r;                   /* 0 if not given */
    int rslora;
    json_t *alpha_pattern;   /* borrowed from root */
    json_t *rank_pattern;
    json_t *root;            /* owned (a reference) */
    char src[512];           /* for messages */
} peft_cfg;

static void peft_cfg_free(peft_cfg *c) {
    if (c->root) json_decref(c->root);
    memset(c, 0, sizeof *c);
}

static json_t *jget(json_t *o, const char *prefix, const char *name) {
    char k[128];
    snprintf(k, sizeof k, "%s%s", prefix, name);
    return json_object_get(o, k);
}

/* Read a LoraConfig dict (keys optionally prefixed by "unet." etc.). Returns
 * ZL_OK with c->present = 0 when the object holds no LoRA settings. */
static int peft_cfg_read(json_t *o, const char *prefix, const char *src, peft_cfg *c) {
    memset(c, 0, sizeof *c);
    json_t *a = jget(o, prefix, "lora_alpha"), *r = jget(o, prefix, "r"), *pt = jget(o, prefix, "peft_type");
    if (!a && !r) return ZL_OK;
    if (json_is_string(pt) && strcmp(json_string_value(pt), "LORA"))
        return zl_set_error(ZL_EUNSUPPORTED, "%s: peft_type '%s' is not supported (only LORA)", src,
                            json_string_value(pt));
    c->present = 1;
    snprintf(c->src, sizeof c->src, "%s", src);
    c->lora_alpha = 8; /* LoraConfig's default */
    if (a && !json_is_number(a)) return zl_set_error(ZL_EFORMAT, "%s: '%slora_alpha' is not a number", src, prefix);
    if (a) c->lora_alpha = json_number_value(a);
    if (r && !json_is_integer(r)) return zl_set_error(ZL_EFORMAT, "%s: '%sr' is not an integer", src, prefix);
    if (r) c->r = (int)json_integer_value(r);
    c->rslora = json_is_true(jget(o, prefix, "use_rslora"));
    c->alpha_pattern = jget(o, prefix, "alpha_pattern");
    c->rank_pattern = jget(o, prefix, "rank_pattern");
    if (c->alpha_pattern && !json_is_object(c->alpha_pattern)) c->alpha_pattern = NULL;
    if (c->rank_pattern && !json_is_object(c->rank_pattern)) c->rank_pattern = NULL;
    c->root = json_incref(o);
    return ZL_OK;
}

/* PEFT matches a pattern key against the module path as the regex
 * (.*\.)?(KEY)$ from the start. */
static int pattern_match(const char *pat, const char *module) {
    size_t n = strlen(pat) + 16;
    char *re_s = malloc(n);
    if (!re_s) return 0;
    snprintf(re_s, n, "^(.*\\.)?(%s)$", pat);
    regex_t re;
    int ok;
    if (!regcomp(&re, re_s, REG_EXTENDED | REG_NOSUB)) {
        ok = !regexec(&re, module, 0, NULL, 0);
        regfree(&re);
    } else { /* not a POSIX regex: fall back to a literal (.*\.)?KEY match */
        long b = base_len(module, pat);
        ok = !strcmp(module, pat) || (b > 0 && module[b - 1] == '.');
    }
    free(re_s);
    return ok;
}

static json_t *pattern_lookup(json_t *patterns, const char *module) {
    if (!patterns) return NULL;
    const char *k;
    json_t *v;
    json_object_foreach(patterns, k, v) if (pattern_match(k, module)) return v;
    return NULL;
}

/* alpha such that alpha / rank is PEFT's scale for this module. */
static int peft_alpha(const peft_cfg *c, const char *module, int rank, const char *key, float *alpha) {
    double a = c->lora_alpha;
    int r = c->r;
    json_t *v = pattern_lookup(c->alpha_pattern, module);
    if (json_is_number(v)) a = json_number_value(v);
    v = pattern_lookup(c->rank_pattern, module);
    if (json_is_integer(v)) r = (int)json_integer_value(v);
    if (r > 0 && r != rank)
        return zl_set_error(ZL_ESHAPE, "%s says rank %d for module '%s', but tensor '%s' has rank %d", c->src, r,
                            module, key, rank);
    /* rsLoRA scales by alpha / sqrt(r) */
    double eff = c->rslora ? a * sqrt((double)rank) : a;
    if (!isfinite(eff)) return zl_set_error(ZL_EFORMAT, "%s: lora_alpha for '%s' is not finite", c->src, module);
    *alpha = (float)eff;
    return ZL_OK;
}

static int load_json_file(const char *path, json_t **out) {
    char *s;
    int rc = zl_read_file(path, &s, NULL);
    if (rc) return rc;
    json_error_t je;
    *out = json_loads(s, 0, &je);
    free(s);
    if (!*out || !json_is_object(*out)) {
        if (*out) json_decref(*out);
        *out = NULL;
        return zl_set_error(ZL_EFORMAT, "%s: not a JSON object (line %d: %s)", path, je.line, je.text);
    }
    return ZL_OK;
}

/* The adapter_config.json for `path`: opts, else <stem>.adapter_config.json for each
 * stem of the file name (content.peft.safetensors -> content.peft, content), else
 * adapter_config.json in the same folder. */
static int find_adapter_config(const char *path, const char *given, peft_cfg *c) {
    memset(c, 0, sizeof *c);
    json_t *o = NULL;
    int rc;
    if (given) {
        if ((rc = load_json_file(given, &o))) return rc;
        rc = peft_cfg_read(o, "", given, c);
        json_decref(o);
        if (!rc && !c->present)
            rc = zl_set_error(ZL_EFORMAT, "%s: no 'lora_alpha' or 'r' in this adapter config", given);
        return rc;
    }
    size_t n = strlen(path);
    char *buf = malloc(n + 32), *stem = strdup(path);
    if (!buf || !stem) {
        free(buf);
        free(stem);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    const char *slash = strrchr(stem, '/');
    char *fname = slash ? stem + (slash - stem) + 1 : stem;
    rc = ZL_OK;
    for (;;) {
        char *dot = strrchr(fname, '.');
        if (!dot || dot == fname) break;
        *dot = 0;
        snprintf(buf, n + 32, "%s.adapter_config.json", stem);
        if (zl_file_exists(buf) && !zl_is_dir(buf)) goto found;
    }
    snprintf(buf, n + 32, "%.*sadapter_config.json", (int)(fname - stem), stem);
    if (zl_file_exists(buf) && !zl_is_dir(buf)) goto found;
    free(buf);
    free(stem);
    return ZL_OK;
found:
    if (!(rc = load_json_file(buf, &o))) {
        rc = peft_cfg_read(o, "", buf, c);
        json_decref(o);
    }
    free(buf);
    free(stem);
    return rc;
}

/* ---------------------------------------------------------------- loading */

typedef struct {
    const zl_st_file *f;
    const char *path;
    const zl_lora_load_opts *o;
    entry *ent;
    int nent;
    group *g;
    int ng;
    zl_name_table *unet_std[2]; /* standard SDXL, SD1 */
    zl_name_table *unet_cfg;    /* from opts->unet_config */
    zl_name_table *te[3];       /* by part (index 1, 2) */
    int te_strict[3];
    peft_cfg meta_cfg[3], file_cfg;
    int file_cfg_loaded;
    int allow_dora;             /* opts->allow_dora, and not a lazy load */
} loader;

static void loader_free(loader *L) {
    for (int i = 0; i < L->nent; i++) free(L->ent[i].name);
    free(L->ent);
    free(L->g);
    zl_name_table_free(L->unet_std[0]);
    zl_name_table_free(L->unet_std[1]);
    zl_name_table_free(L->unet_cfg);
    for (int i = 0; i < 3; i++) {
        zl_name_table_free(L->te[i]);
        peft_cfg_free(&L->meta_cfg[i]);
    }
    peft_cfg_free(&L->file_cfg);
}

/* Append up to `max` quoted keys to a message buffer. */
static void list_keys(char *buf, size_t n, const char *const *keys, int nk, int max) {
    size_t len = strlen(buf);
    for (int i = 0; i < nk && i < max && len + 8 < n; i++) {
        snprintf(buf + len, n - len, "%s'%s'", i ? ", " : "", keys[i]);
        len = strlen(buf);
    }
    if (nk > max && len + 24 < n) snprintf(buf + len, n - len, ", ... (%d in all)", nk);
}

/* Whether the tensors are a textual-inversion embedding's: A1111's emb_params or
 * string_to_param.*, SDXL's clip_l / clip_g. */
static int is_embedding_file(const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], "emb_params") && strcmp(names[i], "clip_l") && strcmp(names[i], "clip_g") &&
            strncmp(names[i], "string_to_param.", 16))
            return 0;
    return 1;
}

static int parse_all(loader *L, int *plain_te) {
    int n = zl_st_count(L->f);
    L->ent = calloc((size_t)(n ? n : 1), sizeof *L->ent);
    if (!L->ent) return zl_set_error(ZL_ENOMEM, "%s: out of memory", L->path);
    const char **bad = calloc((size_t)(n ? n : 1), sizeof *bad);
    const char **unk = calloc((size_t)(n ? n : 1), sizeof *unk);
    if (!bad || !unk) {
        free(bad);
        free(unk);
        return zl_set_error(ZL_ENOMEM, "%s: out of memory", L->path);
    }
    int nbad = 0, nunk = 0, kind = -1, rc = ZL_OK;
    for (int i = 0; i < n; i++) {
        const zl_st_tensor *t = zl_st_at(L->f, i);
        int k = refused_kind(t->name);
        /* parsed as ROLE_DORA: dora_scale with kohya names (LyCORIS), lora_magnitude_vector with PEFT's */
        if (L->allow_dora && (k == REFUSED_PEFT_DORA || (k == REFUSED_DORA && !strncmp(t->name, "lora_", 5)))) k = -1;
        if (k >= 0) {
            if (kind < 0) kind = k;
            if (k == kind) bad[nbad++] = t->name;
            continue;
        }
        entry *e = &L->ent[L->nent];
        int r = parse_key(t->name, e, plain_te);
        if (r == ZL_ENOMEM) {
            rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", L->path);
            goto done;
        }
        if (r) {
            free(e->name);
            unk[nunk++] = t->name;
            continue;
        }
        e->t = t;
        L->nent++;
    }
    char msg[1024];
    if (nbad) {
        snprintf(msg, sizeof msg, "%s: %s is not supported; refusing tensors ", L->path, refused[kind].what);
        list_keys(msg, sizeof msg, bad, nbad, 3);
        rc = zl_set_error(ZL_EUNSUPPORTED, "%s", msg);
    } else if (nunk && !L->nent && is_embedding_file(unk, nunk)) {
        rc = zl_set_error(ZL_EFORMAT, "%s: a textual-inversion embedding ('%s'), not a LoRA: give it to generate with "
                                      "--embedding FILE", L->path, unk[0]);
    } else if (nunk) {
        snprintf(msg, sizeof msg, "%s: %d tensor%s not LoRA weights of a known layout: ", L->path, nunk,
                 nunk > 1 ? "s are" : " is");
        list_keys(msg, sizeof msg, unk, nunk, 4);
        rc = zl_set_error(ZL_EFORMAT, "%s", msg);
    } else if (!L->nent) {
        rc = zl_set_error(ZL_EFORMAT, "%s: no LoRA tensors in this file", L->path);
    }
done:
    free(bad);
    free(unk);
    return rc;
}

static const char *role_suffix(role_t r) {
    static const char *const n[N_ROLES] = {"down", "up", "alpha", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b",
                                           "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b",
                                           "lora_mid", "hada_t1", "hada_t2", "lokr_t2", "dora_scale"};
    return n[r];
}

/* ---------------------------------------------------------------- LyCORIS */

static int64_t tail_numel(const zl_st_tensor *t) { return t->shape[0] ? t->numel / t->shape[0] : 0; }

/* a * b for sizes (a, b >= 0), or INT_MAX + 1 once the product passes INT_MAX. */
static int64_t mul_cap(int64_t a, int64_t b) { return a > 0 && b > INT_MAX / a ? (int64_t)INT_MAX + 1 : a * b; }

/* Check a LoHa / LoKr group's factors and fix its geometry and the rank of its
 * exact LoRA form:
 *  - LoHa (w1_a [out, r1], w1_b [r1, in_k], same for w2): Khatri-Rao factors,
 *    up[o, s r2 + t] = w1_a[o, s] w2_a[o, t], down[s r2 + t, j] = w1_b[s, j] w2_b[t, j],
 *    rank r1 r2; scale alpha / r1 (1 without alpha), as ComfyUI and A1111 apply it.
 *  - LoKr (W1 [a, b], W2 [c, d] or [c, d, kh, kw], each full or w_a w_b): by the
 *    mixed-product rule kron(U1 V1, U2 V2) = kron(U1, U2) kron(V1, V2), rank s1 s2 with
 *    s = the factor rank, or for a full W the smaller of its sides (identity on the
 *    other); scale alpha / dim with dim the rank of the decomposed factor (W2's if
 *    both), 1 if neither is decomposed or there is no alpha.
 * When that rank would reach min(out, in_k) the layer is dW itself with an identity
 * on the smaller side: exact either way.
 * Tucker forms (LyCORIS use_tucker, on convs) hold a core t [r, r', kh, kw] with
 * w_a [r, out] and w_b [r', in]; the rebuilt weight (LyCORIS rebuild_tucker,
 * ComfyUI's and A1111's einsum "i j k l, j r, i p -> p r k l") is
 * W[o, c, k, l] = sum_ij w_a[i, o] t[i, j, k, l] w_b[j, c] = U V with U = w_a^T
 * [out, r] and V[i, (c, k, l)] = sum_j t[i, j, k, l] w_b[j, c] (tucker_factors):
 * a LoHa side or LoKr's W2 in the plain form above, of rank r. LoCon's lora_mid
 * ([r, r', kh, kw] between down [r', in] and up [out, r]) gives the LoRA
 * up, V exactly; its scale is alpha / rank(down) as for any LoRA. The LoHa and
 * LoKr scales take the rank from w_b's first dimension, as ComfyUI and A1111 do. */
static int lyco_check(loader *L, group *g) {
    const char *P = L->path;
    const entry *fe = first_entry(g);
    for (int r = 0; r < N_ROLES; r++) {
        if (!g->e[r] || r == ROLE_ALPHA || r == ROLE_DORA) continue;
        const zl_st_tensor *t = g->e[r]->t;
        if (t->ndim != 2 && t->ndim != 4)
            return zl_set_error(ZL_ESHAPE, "%s: '%s' must have 2 or 4 dimensions", P, g->e[r]->key);
        for (int i = 0; i < t->ndim; i++)
            if (t->shape[i] < 1 || t->shape[i] > INT_MAX / 16)
                return zl_set_error(ZL_ESHAPE, "%s: '%s' has a dimension of %lld", P, g->e[r]->key, (long long)t->shape[i]);
    }
    if (g->lyco == LYCO_LOCON_TUCKER) {
        const entry *de = g->e[ROLE_DOWN], *me = g->e[ROLE_MID], *ue = g->e[ROLE_UP];
        const zl_st_tensor *d = de->t, *m = me->t, *u = ue->t;
        if (m->ndim != 4 || (d->ndim == 4 && (d->shape[2] != 1 || d->shape[3] != 1)) ||
            (u->ndim == 4 && (u->shape[2] != 1 || u->shape[3] != 1)) || m->shape[1] != d->shape[0] ||
            m->shape[0] != u->shape[1])
            return zl_set_error(ZL_ESHAPE, "%s: Tucker LoCon module '%s': lora_down, lora_mid and lora_up must be "
                                           "[r', in(, 1, 1)], [r, r', kh, kw] and [out, r(, 1, 1)]", P, fe->name);
        g->l_out = u->shape[0];
        g->l_kh = (int)m->shape[2];
        g->l_kw = (int)m->shape[3];
        g->l_ink = mul_cap(mul_cap(d->shape[1], g->l_kh), g->l_kw);
        g->l_dim = (int)d->shape[0];
        if (mul_cap(g->l_out, g->l_ink) > INT_MAX)
            return zl_set_error(ZL_ESHAPE, "%s: module '%s' (%lld x %lld) is too large for one layer", P, fe->name,
                                (long long)g->l_out, (long long)g->l_ink);
        g->l_rank = (int)m->shape[0];
        g->l_full = 0;
        return ZL_OK;
    }
    if (g->lyco == LYCO_LOHA) {
        int64_t o[2], rk[2], ik[2], kh[2], kw[2];
        for (int w = 0; w < 2; w++) {
            const zl_st_tensor *a = g->e[w ? ROLE_H2A : ROLE_H1A]->t, *b = g->e[w ? ROLE_H2B : ROLE_H1B]->t;
            const entry *te = g->e[w ? ROLE_HT2 : ROLE_HT1];
            if (te) {
                const zl_st_tensor *t = te->t;
                if (t->ndim != 4 || a->ndim != 2 || b->ndim != 2 || t->shape[0] != a->shape[0] ||
                    t->shape[1] != b->shape[0])
                    return zl_set_error(ZL_ESHAPE, "%s: Tucker LoHa module '%s': hada_t%d, hada_w%d_a and hada_w%d_b "
                                                   "must be [r, r', kh, kw], [r, out] and [r', in]",
                                        P, fe->name, w + 1, w + 1, w + 1);
                o[w] = a->shape[1], rk[w] = a->shape[0], ik[w] = mul_cap(mul_cap(b->shape[1], t->shape[2]), t->shape[3]);
                kh[w] = t->shape[2], kw[w] = t->shape[3];
            } else {
                if (a->ndim != 2 || a->shape[1] != b->shape[0])
                    return zl_set_error(ZL_ESHAPE, "%s: LoHa module '%s': hada_w%d_a [out, r] and hada_w%d_b [r, in] "
                                                   "do not fit", P, fe->name, w + 1, w + 1);
                o[w] = a->shape[0], rk[w] = a->shape[1], ik[w] = tail_numel(b);
                kh[w] = b->ndim == 4 ? b->shape[2] : 0, kw[w] = b->ndim == 4 ? b->shape[3] : 0;
            }
        }
        if (o[0] != o[1] || ik[0] != ik[1] || kh[0] != kh[1] || kw[0] != kw[1])
            return zl_set_error(ZL_ESHAPE, "%s: LoHa module '%s': the two Hadamard factors have different shapes "
                                           "(%lld x %lld and %lld x %lld)", P, fe->name, (long long)o[0],
                                (long long)ik[0], (long long)o[1], (long long)ik[1]);
        g->l_out = o[0];
        g->l_ink = ik[0];
        g->l_kh = (int)kh[0];
        g->l_kw = (int)kw[0];
        g->l_s1 = (int)rk[0];
        g->l_s2 = (int)rk[1];
        g->l_dim = (int)g->e[ROLE_H1B]->t->shape[0];
    } else {
        const entry *k1 = g->e[ROLE_K1], *k1a = g->e[ROLE_K1A], *k1b = g->e[ROLE_K1B];
        const entry *k2 = g->e[ROLE_K2], *k2a = g->e[ROLE_K2A], *k2b = g->e[ROLE_K2B];
        int64_t a, b, c, D2;
        int dim = 0;
        if (k1) {
            if (k1->t->ndim != 2) return zl_set_error(ZL_ESHAPE, "%s: '%s' must be a matrix", P, k1->key);
            a = k1->t->shape[0], b = k1->t->shape[1];
            g->l_w1_left = b <= a; /* the identity on the smaller side */
            g->l_s1 = (int)(a < b ? a : b);
        } else {
            if (k1a->t->ndim != 2 || k1b->t->ndim != 2 || k1a->t->shape[1] != k1b->t->shape[0])
                return zl_set_error(ZL_ESHAPE, "%s: LoKr module '%s': lokr_w1_a [a, r] and lokr_w1_b [r, b] do not fit",
                                    P, fe->name);
            a = k1a->t->shape[0], b = k1b->t->shape[1];
            g->l_s1 = dim = (int)k1a->t->shape[1];
        }
        const zl_st_tensor *kt = NULL; /* the tensor whose shape carries W2's kernel */
        const entry *t2 = g->e[ROLE_KT2];
        if (t2) {
            if (t2->t->ndim != 4 || k2a->t->ndim != 2 || k2b->t->ndim != 2 || t2->t->shape[0] != k2a->t->shape[0] ||
                t2->t->shape[1] != k2b->t->shape[0])
                return zl_set_error(ZL_ESHAPE, "%s: Tucker LoKr module '%s': lokr_t2, lokr_w2_a and lokr_w2_b must be "
                                               "[r, r', kh, kw], [r, c] and [r', d]", P, fe->name);
            c = k2a->t->shape[1], D2 = mul_cap(mul_cap(k2b->t->shape[1], t2->t->shape[2]), t2->t->shape[3]);
            kt = t2->t;
            g->l_s2 = (int)t2->t->shape[0];
            dim = (int)k2b->t->shape[0];
        } else if (k2) {
            c = k2->t->shape[0], D2 = tail_numel(k2->t);
            kt = k2->t;
            g->l_w2_left = D2 <= c;
            g->l_s2 = (int)(c < D2 ? c : D2);
        } else {
            if (k2a->t->ndim != 2 || k2a->t->shape[1] != k2b->t->shape[0])
                return zl_set_error(ZL_ESHAPE, "%s: LoKr module '%s': lokr_w2_a [c, r] and lokr_w2_b [r, d(, kh, kw)] do "
                                               "not fit", P, fe->name);
            c = k2a->t->shape[0], D2 = tail_numel(k2b->t);
            kt = k2b->t;
            g->l_s2 = dim = (int)k2a->t->shape[1];
        }
        g->l_kh = kt->ndim == 4 ? (int)kt->shape[2] : 0;
        g->l_kw = kt->ndim == 4 ? (int)kt->shape[3] : 0;
        if (a > INT_MAX / c || b > INT_MAX / D2)
            return zl_set_error(ZL_ESHAPE, "%s: LoKr module '%s' is too large", P, fe->name);
        g->l_out = a * c;
        g->l_ink = b * D2;
        g->l_c = c;
        g->l_d2 = D2;
        g->l_dim = dim;
    }
    if (mul_cap(g->l_out, g->l_ink) > INT_MAX)
        return zl_set_error(ZL_ESHAPE, "%s: module '%s' (%lld x %lld) is too large for one layer", P, fe->name,
                            (long long)g->l_out, (long long)g->l_ink);
    int64_t R = (int64_t)g->l_s1 * g->l_s2, mn = g->l_out < g->l_ink ? g->l_out : g->l_ink;
    g->l_full = R >= mn;
    g->l_rank = (int)(g->l_full ? mn : R);
    return ZL_OK;
}

static int read_values(loader *L, const zl_st_tensor *t, float **out);

/* A Tucker core's plain factors (see lyco_check): *U = w_a^T [out, r] (NULL to
 * skip), *V [r, in, kh, kw] with V[i, c, k, l] = sum_j t[i, j, k, l] w_b[j, c],
 * summed in double. t [r, r', kh, kw], w_a [r, out], w_b [r', in]. */
static int tucker_factors(const char *path, const zl_st_tensor *tt, const zl_st_tensor *at, const zl_st_tensor *bt,
                          const float *t, const float *a, const float *b, float **U, float **V) {
    const int64_t r = tt->shape[0], r2 = tt->shape[1], kk = tt->shape[2] * tt->shape[3], in = bt->shape[1];
    float *v = malloc((size_t)(r * in * kk) * sizeof(float)), *u = NULL;
    if (U) u = malloc((size_t)(r * at->shape[1]) * sizeof(float));
    if (!v || (U && !u)) {
        free(v);
        free(u);
        return zl_set_error(ZL_ENOMEM, "%s: out of memory", path);
    }
    for (int64_t i = 0; i < r; i++)
        for (int64_t c = 0; c < in; c++)
            for (int64_t q = 0; q < kk; q++) {
                double acc = 0;
                for (int64_t j = 0; j < r2; j++) acc += (double)t[(i * r2 + j) * kk + q] * b[j * in + c];
                v[(i * in + c) * kk + q] = (float)acc;
            }
    if (U) {
        const int64_t out = at->shape[1];
        for (int64_t o = 0; o < out; o++)
            for (int64_t i = 0; i < r; i++) u[o * r + i] = a[i * out + o];
        *U = u;
    }
    *V = v;
    return ZL_OK;
}

/* The exact LoRA factors of a checked LyCORIS group: up [out, R] (scale folded
 * in), down [R, in_k]. */
static int lyco_values(loader *L, const group *g, float **up_out, float **down_out) {
    *up_out = *down_out = NULL;
    float *f[N_ROLES] = {0};
    int rc = ZL_OK;
    for (int r = 0; r < N_ROLES && !rc; r++)
        if (g->e[r] && r != ROLE_ALPHA && r != ROLE_DORA) rc = read_values(L, g->e[r]->t, &f[r]);
    const int64_t out = g->l_out, ink = g->l_ink, R = g->l_rank;
    const float sc = g->l_scale;
    if (!rc && g->lyco == LYCO_LOCON_TUCKER) {
        /* up (scale folded in) and the core contracted with down */
        float *dn = NULL;
        rc = tucker_factors(L->path, g->e[ROLE_MID]->t, NULL, g->e[ROLE_DOWN]->t, f[ROLE_MID], NULL, f[ROLE_DOWN], NULL,
                            &dn);
        if (!rc) {
            for (int64_t i = 0; i < out * R; i++) f[ROLE_UP][i] *= sc;
            *up_out = f[ROLE_UP];
            *down_out = dn;
            f[ROLE_UP] = NULL;
        }
        for (int r = 0; r < N_ROLES; r++) free(f[r]);
        return rc;
    }
    /* Tucker cores: replace a side's w_a, w_b by its plain factors */
    static const role_t tk[3][3] = {{ROLE_HT1, ROLE_H1A, ROLE_H1B}, {ROLE_HT2, ROLE_H2A, ROLE_H2B}, {ROLE_KT2, ROLE_K2A, ROLE_K2B}};
    for (int k = 0; k < 3 && !rc; k++) {
        if (!g->e[tk[k][0]]) continue;
        float *U = NULL, *V = NULL;
        rc = tucker_factors(L->path, g->e[tk[k][0]]->t, g->e[tk[k][1]]->t, g->e[tk[k][2]]->t, f[tk[k][0]], f[tk[k][1]],
                            f[tk[k][2]], &U, &V);
        if (!rc) {
            free(f[tk[k][1]]);
            free(f[tk[k][2]]);
            f[tk[k][1]] = U;
            f[tk[k][2]] = V;
        }
    }
    float *up = rc ? NULL : malloc((size_t)(out * R) * sizeof(float));
    float *dn = rc ? NULL : malloc((size_t)(R * ink) * sizeof(float));
    if (!rc && (!up || !dn)) rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", L->path);
    if (!rc && g->lyco == LYCO_LOHA && !g->l_full) {
        const int r1 = g->l_s1, r2 = g->l_s2;
        const float *a1 = f[ROLE_H1A], *b1 = f[ROLE_H1B], *a2 = f[ROLE_H2A], *b2 = f[ROLE_H2B];
        for (int64_t o = 0; o < out; o++)
            for (int s = 0; s < r1; s++)
                for (int t = 0; t < r2; t++) up[o * R + s * r2 + t] = sc * a1[o * r1 + s] * a2[o * r2 + t];
        for (int s = 0; s < r1; s++)
            for (int t = 0; t < r2; t++)
                for (int64_t j = 0; j < ink; j++) dn[(s * r2 + t) * ink + j] = b1[s * ink + j] * b2[t * ink + j];
    } else if (!rc && g->lyco == LYCO_LOKR && !g->l_full) {
        /* W1 = U1 V1 ([a, s1] [s1, b]), W2 = U2 V2 ([c, s2] [s2, D2]) */
        const int s1 = g->l_s1, s2 = g->l_s2;
        const int64_t c = g->l_c, a = out / c, D2 = g->l_d2, b = ink / D2;
        float *U1 = malloc((size_t)(a * s1) * sizeof(float)), *V1 = malloc((size_t)(s1 * b) * sizeof(float));
        float *U2 = malloc((size_t)(c * s2) * sizeof(float)), *V2 = malloc((size_t)(s2 * D2) * sizeof(float));
        if (!U1 || !V1 || !U2 || !V2) rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", L->path);
        for (int w = 0; w < 2 && !rc; w++) {
            const float *full = f[w ? ROLE_K2 : ROLE_K1], *fa = f[w ? ROLE_K2A : ROLE_K1A], *fb = f[w ? ROLE_K2B : ROLE_K1B];
            float *U = w ? U2 : U1, *V = w ? V2 : V1;
            const int64_t rows = w ? c : a, cols = w ? D2 : b;
            const int sr = w ? s2 : s1, left = w ? g->l_w2_left : g->l_w1_left;
            if (!full) {
                memcpy(U, fa, (size_t)(rows * sr) * sizeof(float));
                memcpy(V, fb, (size_t)(sr * cols) * sizeof(float));
            } else if (left) { /* U = W [rows, cols], V = I (cols <= rows) */
                memcpy(U, full, (size_t)(rows * cols) * sizeof(float));
                memset(V, 0, (size_t)(cols * cols) * sizeof(float));
                for (int64_t i = 0; i < cols; i++) V[i * cols + i] = 1;
            } else { /* U = I, V = W (rows < cols) */
                memset(U, 0, (size_t)(rows * rows) * sizeof(float));
                for (int64_t i = 0; i < rows; i++) U[i * rows + i] = 1;
                memcpy(V, full, (size_t)(rows * cols) * sizeof(float));
            }
        }
        if (!rc) {
            for (int64_t i1 = 0; i1 < a; i1++)
                for (int64_t i2 = 0; i2 < c; i2++)
                    for (int s = 0; s < s1; s++)
                        for (int t = 0; t < s2; t++)
                            up[(i1 * c + i2) * R + s * s2 + t] = sc * U1[i1 * s1 + s] * U2[i2 * s2 + t];
            for (int s = 0; s < s1; s++)
                for (int t = 0; t < s2; t++)
                    for (int64_t j1 = 0; j1 < b; j1++)
                        for (int64_t j2 = 0; j2 < D2; j2++)
                            dn[(s * s2 + t) * ink + j1 * D2 + j2] = V1[s * b + j1] * V2[t * D2 + j2];
        }
        free(U1); free(V1); free(U2); free(V2);
    } else if (!rc) {
        /* dW itself (in double), with an identity on the smaller side */
        double *dw = malloc((size_t)(out * ink) * sizeof(double));
        if (!dw) rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", L->path);
        if (!rc && g->lyco == LYCO_LOHA) {
            const int r1 = g->l_s1, r2 = g->l_s2;
            const float *a1 = f[ROLE_H1A], *b1 = f[ROLE_H1B], *a2 = f[ROLE_H2A], *b2 = f[ROLE_H2B];
            for (int64_t o = 0; o < out; o++)
                for (int64_t j = 0; j < ink; j++) {
                    double p = 0, q = 0;
                    for (int s = 0; s < r1; s++) p += (double)a1[o * r1 + s] * b1[s * ink + j];
                    for (int t = 0; t < r2; t++) q += (double)a2[o * r2 + t] * b2[t * ink + j];
                    dw[o * ink + j] = p * q;
                }
        } else if (!rc) {
            const int64_t c = g->l_c, a = out / c, D2 = g->l_d2, b = ink / D2;
            double *W1 = malloc((size_t)(a * b) * sizeof(double)), *W2 = malloc((size_t)(c * D2) * sizeof(double));
            if (!W1 || !W2) rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", L->path);
            for (int w = 0; w < 2 && !rc; w++) {
                const float *full = f[w ? ROLE_K2 : ROLE_K1], *fa = f[w ? ROLE_K2A : ROLE_K1A], *fb = f[w ? ROLE_K2B : ROLE_K1B];
                double *W = w ? W2 : W1;
                const int64_t rows = w ? c : a, cols = w ? D2 : b;
                if (full) {
                    for (int64_t i = 0; i < rows * cols; i++) W[i] = full[i];
                } else {
                    const int64_t r = w ? g->l_s2 : g->l_s1; /* the factor rank (decomposed) */
                    for (int64_t i = 0; i < rows; i++)
                        for (int64_t j = 0; j < cols; j++) {
                            double acc = 0;
                            for (int64_t k = 0; k < r; k++) acc += (double)fa[i * r + k] * fb[k * cols + j];
                            W[i * cols + j] = acc;
                        }
                }
            }
            if (!rc)
                for (int64_t i1 = 0; i1 < a; i1++)
                    for (int64_t i2 = 0; i2 < c; i2++)
                        for (int64_t j1 = 0; j1 < b; j1++)
                            for (int64_t j2 = 0; j2 < D2; j2++)
                                dw[(i1 * c + i2) * ink + j1 * D2 + j2] = W1[i1 * b + j1] * W2[i2 * D2 + j2];
            free(W1);
            free(W2);
        }
        if (!rc) {
            if (R == out) { /* up = I, down = scale dW */
                memset(up, 0, (size_t)(out * R) * sizeof(float));
                for (int64_t i = 0; i < out; i++) up[i * R + i] = 1;
                for (int64_t i = 0; i < out * ink; i++) dn[i] = (float)(sc * dw[i]);
            } else { /* up = scale dW, down = I */
                for (int64_t i = 0; i < out * ink; i++) up[i] = (float)(sc * dw[i]);
                memset(dn, 0, (size_t)(R * ink) * sizeof(float));
                for (int64_t i = 0; i < ink; i++) dn[i * ink + i] = 1;
            }
        }
        free(dw);
    }
    for (int r = 0; r < N_ROLES; r++) free(f[r]);
    if (rc) {
        free(up);
        free(dn);
        return rc;
    }
    *up_out = up;
    *down_out = dn;
    return ZL_OK;
}

static int group_all(loader *L) {
    qsort(L->ent, (size_t)L->nent, sizeof *L->ent, cmp_entry);
    L->g = calloc((size_t)L->nent, sizeof *L->g);
    if (!L->g) return zl_set_error(ZL_ENOMEM, "%s: out of memory", L->path);
    for (int i = 0; i < L->nent; i++) {
        entry *e = &L->ent[i];
        group *g = L->ng ? &L->g[L->ng - 1] : NULL;
        const entry *p = g ? first_entry(g) : NULL;
        if (!p || p->part != e->part || p->flat != e->flat || p->comfy != e->comfy || strcmp(p->name, e->name))
            g = &L->g[L->ng++];
        if (g->e[e->role])
            return zl_set_error(ZL_EFORMAT, "%s: tensors '%s' and '%s' are both the %s of module '%s'", L->path,
                                g->e[e->role]->key, e->key, role_suffix(e->role), e->name);
        g->e[e->role] = e;
    }
    for (int i = 0; i < L->ng; i++) {
        group *g = &L->g[i];
        int has_lora = g->e[ROLE_DOWN] || g->e[ROLE_UP] || g->e[ROLE_MID], has_h = 0, has_k = 0;
        for (int r = ROLE_H1A; r <= ROLE_H2B; r++) has_h |= g->e[r] != NULL;
        has_h |= g->e[ROLE_HT1] || g->e[ROLE_HT2];
        for (int r = ROLE_K1; r <= ROLE_K2B; r++) has_k |= g->e[r] != NULL;
        has_k |= g->e[ROLE_KT2] != NULL;
        g->tucker = g->e[ROLE_MID] || g->e[ROLE_HT1] || g->e[ROLE_HT2] || g->e[ROLE_KT2];
        if (has_lora + has_h + has_k > 1)
            return zl_set_error(ZL_EFORMAT, "%s: module '%s' mixes %s tensors", L->path, first_entry(g)->name,
                                has_lora && has_h ? "LoRA and LoHa" : has_lora ? "LoRA and LoKr" : "LoHa and LoKr");
        if (has_h) {
            g->lyco = LYCO_LOHA;
            for (int r = ROLE_H1A; r <= ROLE_H2B; r++)
                if (!g->e[r])
                    return zl_set_error(ZL_EFORMAT, "%s: LoHa module '%s' has no %s tensor", L->path, first_entry(g)->name,
                                        role_suffix((role_t)r));
            continue;
        }
        if (has_k) {
            g->lyco = LYCO_LOKR;
            for (int w = 0; w < 2; w++) {
                int full = g->e[w ? ROLE_K2 : ROLE_K1] != NULL, fa = g->e[w ? ROLE_K2A : ROLE_K1A] != NULL,
                    fb = g->e[w ? ROLE_K2B : ROLE_K1B] != NULL;
                if (full ? (fa || fb) : !(fa && fb))
                    return zl_set_error(ZL_EFORMAT, "%s: LoKr module '%s' needs lokr_w%d or both lokr_w%d_a and lokr_w%d_b",
                                        L->path, first_entry(g)->name, w + 1, w + 1, w + 1);
            }
            if (g->e[ROLE_KT2] && g->e[ROLE_K2])
                return zl_set_error(ZL_EFORMAT, "%s: LoKr module '%s' has lokr_t2 with a full lokr_w2 (a Tucker core "
                                                "needs lokr_w2_a and lokr_w2_b)", L->path, first_entry(g)->name);
            continue;
        }
        if (!g->e[ROLE_DOWN] || !g->e[ROLE_UP]) {
            const entry *e = first_entry(g);
            return zl_set_error(ZL_EFORMAT, "%s: tensor '%s' has no matching %s tensor for module '%s'", L->path,
                                e->key, g->e[ROLE_DOWN] ? "up (lora_up / lora_B)" : "down (lora_down / lora_A)",
                                e->name);
        }
        if (g->e[ROLE_MID]) g->lyco = LYCO_LOCON_TUCKER;
    }
    return ZL_OK;
}

/* Decide the family and the UNet table; see the rule in lora.h. */
static int choose_family(loader *L, int plain_te, zl_family *fam, const zl_name_table **unet_t, int *strict) {
    char why[300] = "";
    int meta = family_from_meta(L->f, why, sizeof why);
    if (meta < 0) return zl_set_error(ZL_EUNSUPPORTED, "%s: a Stable Diffusion 2.x LoRA (%s) is not supported", L->path, why);
    int has_unet = 0, has_te2 = 0, ctx_fam = ZL_FAMILY_UNKNOWN;
    const char *ctx_key = NULL;
    for (int i = 0; i < L->ng; i++) {
        const entry *e = first_entry(&L->g[i]);
        if (e->part == ZL_PART_TE2) has_te2 = 1;
        if (e->part != ZL_PART_UNET) continue;
        has_unet = 1;
        if (!L->g[i].e[ROLE_DOWN]) continue; /* LyCORIS: keys, metadata and structure decide */
        const zl_st_tensor *d = L->g[i].e[ROLE_DOWN]->t;
        if (ctx_fam == ZL_FAMILY_UNKNOWN && is_attn2_kv(e) && d->ndim == 2) {
            if (d->shape[1] == 2048) ctx_fam = ZL_FAMILY_SDXL, ctx_key = L->g[i].e[ROLE_DOWN]->key;
            else if (d->shape[1] == 768) ctx_fam = ZL_FAMILY_SD1, ctx_key = L->g[i].e[ROLE_DOWN]->key;
        }
    }
    int key_fam = has_te2 ? ZL_FAMILY_SDXL : plain_te ? ZL_FAMILY_SD1 : ZL_FAMILY_UNKNOWN;
    if (has_te2 && plain_te)
        return zl_set_error(ZL_EFORMAT, "%s: mixes SD 1.x 'lora_te_' keys with SDXL second-text-encoder keys", L->path);
    if (!meta && key_fam) snprintf(why, sizeof why, "%s keys", has_te2 ? "second text encoder" : "'lora_te_'");
    int evid = meta ? meta : key_fam;

    *strict = 0;
    if (L->o->unet_config) {
        const zl_unet_config *c = L->o->unet_config;
        if (L->o->expect_family && L->o->expect_family != c->family)
            return zl_set_error(ZL_EINVAL, "%s: the UNet config is %s but %s was expected", L->path,
                                zl_family_name(c->family), zl_family_name(L->o->expect_family));
        if (evid && evid != (int)c->family)
            return zl_set_error(ZL_EINVAL, "%s: this is a %s LoRA (%s) but the model is %s", L->path,
                                zl_family_name((zl_family)evid), why, zl_family_name(c->family));
        int rc = zl_name_table_unet(c, &L->unet_cfg);
        if (rc) return zl_error_prefix(rc, "%s", L->path);
        *fam = c->family;
        *unet_t = L->unet_cfg;
        *strict = 1;
        return ZL_OK;
    }
    zl_unet_config sx, s1;
    zl_unet_config_sdxl_base(&sx);
    zl_unet_config_sd15(&s1);
    int rc;
    if ((rc = zl_name_table_unet(&sx, &L->unet_std[0])) || (rc = zl_name_table_unet(&s1, &L->unet_std[1])))
        return zl_error_prefix(rc, "%s", L->path);
    int f = evid;
    if (!f && ctx_fam) {
        f = ctx_fam;
        snprintf(why, sizeof why, "cross-attention width of '%s'", ctx_key);
    }
    int nu = 0;
    for (int i = 0; i < L->ng; i++) nu += first_entry(&L->g[i])->part == ZL_PART_UNET;
    int fit_x = count_fit(L->unet_std[0], L->g, L->ng), fit_1 = count_fit(L->unet_std[1], L->g, L->ng);
    if (!f && has_unet) {
        if (fit_x == nu && fit_1 < nu) f = ZL_FAMILY_SDXL;
        else if (fit_1 == nu && fit_x < nu) f = ZL_FAMILY_SD1;
        if (f) snprintf(why, sizeof why, "its modules exist only in the %s UNet", zl_family_name((zl_family)f));
    }
    zl_family ex = L->o->expect_family;
    if (f && ex && (int)ex != f)
        return zl_set_error(ZL_EINVAL, "%s: this is a %s LoRA (%s) but the model is %s", L->path,
                            zl_family_name((zl_family)f), why, zl_family_name(ex));
    if (!f) f = ex;
    *fam = (zl_family)f;
    if (f == ZL_FAMILY_SDXL) *unet_t = L->unet_std[0];
    else if (f == ZL_FAMILY_SD1) *unet_t = L->unet_std[1];
    else *unet_t = fit_1 > fit_x ? L->unet_std[1] : L->unet_std[0]; /* both fit alike: names agree */
    return ZL_OK;
}

static int make_te_tables(loader *L, zl_family fam) {
    zl_clip_config l, g;
    zl_names_clip_l_config(&l);
    zl_names_clip_bigg_config(&g);
    const zl_clip_config *c1 = L->o->te1_config ? L->o->te1_config : &l;
    const zl_clip_config *c2 = L->o->te2_config ? L->o->te2_config : &g;
    L->te_strict[1] = L->o->te1_config != NULL;
    L->te_strict[2] = L->o->te2_config != NULL;
    int rc = zl_name_table_clip(c1, &L->te[1]);
    if (!rc && fam != ZL_FAMILY_SD1) rc = zl_name_table_clip(c2, &L->te[2]);
    return rc ? zl_error_prefix(rc, "%s", L->path) : ZL_OK;
}

static void shape_str(char *buf, size_t n, const zl_st_tensor *t) {
    size_t len = 0;
    buf[0] = 0;
    len += (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && len < n; i++)
        len += (size_t)snprintf(buf + len, n - len, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (len < n) snprintf(buf + len, n - len, "]");
}

static const char *mod_kind_name(zl_module_kind k) {
    return k == ZL_MOD_LINEAR ? "Linear" : k == ZL_MOD_CONV ? "Conv2d" : k == ZL_MOD_NORM ? "norm" : "embedding";
}

/* The message for a tensor holding a non-finite value (widened values v). */
static int non_finite(const char *path, const zl_st_tensor *t, const float *v) {
    for (int64_t i = 0; i < t->numel; i++)
        if (!isfinite(v[i]))
            return zl_set_error(ZL_ENUMERIC, "%s: tensor '%s' holds %s at element %lld", path, t->name,
                                isnan(v[i]) ? "NaN" : "Inf", (long long)i);
    return ZL_OK;
}

static int read_values(loader *L, const zl_st_tensor *t, float **out) {
    *out = malloc((size_t)t->numel * sizeof(float));
    if (!*out) return zl_set_error(ZL_ENOMEM, "%s: out of memory reading '%s'", L->path, t->name);
    zl_st_read_f32(t, *out);
    return non_finite(L->path, t, *out);
}

/* Whether any of n values has all the bits of m set (m: a float format's
 * exponent field, so: whether any value is Inf or NaN). The data may be at
 * any alignment (safetensors offsets need not be multiples of the size). */
static unsigned any_all_ones16(const unsigned char *p, size_t n, uint16_t m) {
    size_t i = 0;
    unsigned bad = 0;
#ifdef __AVX2__
    const __m256i vm = _mm256_set1_epi16((short)m);
    __m256i acc = _mm256_setzero_si256();
    for (; i + 16 <= n; i += 16) {
        __m256i v = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(p + 2 * i)), vm);
        acc = _mm256_or_si256(acc, _mm256_cmpeq_epi16(v, vm));
    }
    bad = !_mm256_testz_si256(acc, acc);
#endif
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        bad |= (h & m) == m;
    }
    return bad;
}

static unsigned any_all_ones32(const unsigned char *p, size_t n, uint32_t m) {
    size_t i = 0;
    unsigned bad = 0;
#ifdef __AVX2__
    const __m256i vm = _mm256_set1_epi32((int)m);
    __m256i acc = _mm256_setzero_si256();
    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(p + 4 * i)), vm);
        acc = _mm256_or_si256(acc, _mm256_cmpeq_epi32(v, vm));
    }
    bad = !_mm256_testz_si256(acc, acc);
#endif
    for (; i < n; i++) {
        uint32_t u;
        memcpy(&u, p + 4 * i, 4);
        bad |= (u & m) == m;
    }
    return bad;
}

int zl_lora_check_values(const char *path, const zl_st_tensor *t) {
    size_t n = (size_t)t->numel;
    unsigned bad = 0;
    if (t->dtype == ZL_DT_F16 || t->dtype == ZL_DT_BF16)
        bad = any_all_ones16(t->data, n, t->dtype == ZL_DT_F16 ? 0x7c00u : 0x7f80u);
    else if (t->dtype == ZL_DT_F32)
        bad = any_all_ones32(t->data, n, 0x7f800000u);
    else if (zl_dtype_is_float(t->dtype))
        bad = 1; /* other float types (F64 may overflow float32): decide by widening */
    if (!bad) return ZL_OK;
    float *v = malloc((n ? n : 1) * sizeof(float));
    if (!v) return zl_set_error(ZL_ENOMEM, "%s: out of memory reading '%s'", path, t->name);
    zl_st_read_f32(t, v);
    int rc = non_finite(path, t, v);
    free(v);
    return rc;
}

static const char *lyco_name(const group *g) {
    return g->lyco == LYCO_LOCON_TUCKER ? "Tucker LoCon" : g->lyco == LYCO_LOHA ? "LoHa" : "LoKr";
}

/* Check shapes and build one canonical layer (module already resolved). */
static int build_factors(loader *L, group *g, int strict, zl_lora_layer *y) {
    if (g->lyco) {
        const zl_module_info *m = g->mod;
        if (!lyco_compatible(m, g))
            return zl_set_error(ZL_ESHAPE, "%s: %s module '%s' (%lld x %lld%s) does not fit module '%s' (%s %dx%d kernel)",
                                L->path, lyco_name(g), first_entry(g)->name,
                                (long long)g->l_out, (long long)g->l_ink, g->l_kh ? ", with a kernel" : "", m->diffusers,
                                mod_kind_name(m->kind), m->kh, m->kw);
        y->kh = m->kind == ZL_MOD_CONV ? m->kh : 1;
        y->kw = m->kind == ZL_MOD_CONV ? m->kw : 1;
        y->in_features = (int)(g->l_ink / ((int64_t)y->kh * y->kw));
        y->out_features = (int)g->l_out;
        y->rank = g->l_rank;
        y->kind = m->kind == ZL_MOD_CONV ? ZL_LORA_CONV : ZL_LORA_LINEAR;
        if (strict && (y->in_features != m->in || y->out_features != m->out))
            return zl_set_error(ZL_ESHAPE, "%s: %s module '%s' (%d -> %d) does not fit module '%s' (%s %d -> %d)", L->path,
                                lyco_name(g), first_entry(g)->name, y->in_features,
                                y->out_features, m->diffusers, mod_kind_name(m->kind), m->in, m->out);
        const entry *de = g->e[g->lyco == LYCO_LOCON_TUCKER ? ROLE_DOWN
                               : g->lyco == LYCO_LOHA      ? ROLE_H1B
                               : g->e[ROLE_K2]             ? ROLE_K2
                                                           : ROLE_K2B];
        y->dtype = de->t->dtype;
        return ZL_OK;
    }
    const zl_st_tensor *d = g->e[ROLE_DOWN]->t, *u = g->e[ROLE_UP]->t;
    const zl_module_info *m = g->mod;
    const char *dk = g->e[ROLE_DOWN]->key, *uk = g->e[ROLE_UP]->key;
    char ds[96], us[96];
    shape_str(ds, sizeof ds, d);
    shape_str(us, sizeof us, u);
    if (!(d->ndim == 2 || d->ndim == 4) || !(u->ndim == 2 || (u->ndim == 4 && u->shape[2] == 1 && u->shape[3] == 1)))
        return zl_set_error(ZL_ESHAPE, "%s: '%s' %s / '%s' %s: expected down [r, in] or [r, in, kh, kw] and up [out, r] or [out, r, 1, 1]",
                            L->path, dk, ds, uk, us);
    for (int i = 0; i < d->ndim; i++)
        if (d->shape[i] < 1 || d->shape[i] > INT_MAX / 16)
            return zl_set_error(ZL_ESHAPE, "%s: '%s' has shape %s", L->path, dk, ds);
    for (int i = 0; i < u->ndim; i++)
        if (u->shape[i] < 1 || u->shape[i] > INT_MAX / 16)
            return zl_set_error(ZL_ESHAPE, "%s: '%s' has shape %s", L->path, uk, us);
    if (d->numel > INT_MAX || u->numel > INT_MAX)
        return zl_set_error(ZL_ESHAPE, "%s: '%s' %s / '%s' %s are too large for one LoRA layer", L->path, dk, ds, uk, us);
    if (d->shape[0] != u->shape[1])
        return zl_set_error(ZL_ESHAPE, "%s: '%s' has shape %s but its down '%s' has shape %s: rank %lld vs %lld",
                            L->path, uk, us, dk, ds, (long long)u->shape[1], (long long)d->shape[0]);
    if (!compatible(m, d))
        return zl_set_error(ZL_ESHAPE, "%s: '%s' %s does not fit module '%s' (%s %dx%d kernel)", L->path, dk, ds,
                            m->diffusers, mod_kind_name(m->kind), m->kh, m->kw);
    y->rank = (int)d->shape[0];
    y->in_features = (int)d->shape[1];
    y->kh = d->ndim == 4 ? (int)d->shape[2] : 1;
    y->kw = d->ndim == 4 ? (int)d->shape[3] : 1;
    y->out_features = (int)u->shape[0];
    y->kind = m->kind == ZL_MOD_CONV ? ZL_LORA_CONV : ZL_LORA_LINEAR;
    if (strict && (y->in_features != m->in || y->out_features != m->out))
        return zl_set_error(ZL_ESHAPE, "%s: '%s' %s / '%s' %s do not fit module '%s' (%s %d -> %d)", L->path, dk, ds,
                            uk, us, m->diffusers, mod_kind_name(m->kind), m->in, m->out);
    y->dtype = d->dtype;
    return ZL_OK;
}

/* A kohya-named DoRA magnitude (dora_scale) must be LyCORIS's input-axis form,
 * [1, in] or [1, in, 1, 1] (wd_on_out off), the one ComfyUI and A1111 apply. The
 * output-axis form ([out, 1, ...], wd_on_out) is read differently by different
 * tools, so it is refused rather than guessed. A PEFT one (lora_magnitude_vector,
 * dotted names) is per output feature: [out], or [out, 1, 1, 1] for a conv. */
static int dora_check(loader *L, const group *g, zl_lora_layer *y) {
    const zl_st_tensor *t = g->e[ROLE_DORA]->t;
    char ts[96];
    shape_str(ts, sizeof ts, t);
    int trailing_ones = 1;
    for (int i = 2; i < t->ndim; i++) trailing_ones &= t->shape[i] == 1;
    if (!g->e[ROLE_DORA]->flat) {
        int rest_ones = 1;
        for (int i = 1; i < t->ndim; i++) rest_ones &= t->shape[i] == 1;
        if (t->ndim >= 1 && t->shape[0] == y->out_features && rest_ones) {
            y->dora_out = 1;
            return ZL_OK;
        }
        return zl_set_error(ZL_ESHAPE, "%s: DoRA magnitude '%s' has shape %s; module '%s' wants [%d] (one per output "
                                       "feature)", L->path, g->e[ROLE_DORA]->key, ts, y->module, y->out_features);
    }
    if ((t->ndim == 2 || t->ndim == 4) && trailing_ones && t->shape[0] == 1 && t->shape[1] == y->in_features)
        return ZL_OK;
    if ((t->ndim == 2 || t->ndim == 4) && trailing_ones && t->shape[1] == 1 && t->shape[0] == y->out_features)
        return zl_set_error(ZL_EUNSUPPORTED, "%s: '%s' %s is a DoRA magnitude per output feature (LyCORIS wd_on_out); "
                                             "only the per-input-feature form [1, %d] that ComfyUI and A1111 apply is supported",
                            L->path, g->e[ROLE_DORA]->key, ts, y->in_features);
    return zl_set_error(ZL_ESHAPE, "%s: DoRA magnitude '%s' has shape %s; module '%s' wants [1, %d] (one per input feature)",
                        L->path, g->e[ROLE_DORA]->key, ts, y->module, y->in_features);
}

static int build_layer(loader *L, group *g, int strict, zl_lora_layer *y) {
    y->dora_out = 0;
    int rc = build_factors(L, g, strict, y);
    if (!rc && g->e[ROLE_DORA]) rc = dora_check(L, g, y);
    return rc;
}

/* Widen every layer's factors to float32. Layers are independent, so they are
 * read in parallel; a failing layer is re-read on this thread afterwards so its
 * message lands in this thread's error slot. */
static int read_layer(loader *L, int i, zl_lora_layer *y) {
    int rc;
    if (L->g[i].lyco) {
        rc = lyco_values(L, &L->g[i], &y->up, &y->down);
    } else {
        rc = read_values(L, L->g[i].e[ROLE_DOWN]->t, &y->down);
        if (!rc) rc = read_values(L, L->g[i].e[ROLE_UP]->t, &y->up);
    }
    if (!rc && L->g[i].e[ROLE_DORA]) rc = read_values(L, L->g[i].e[ROLE_DORA]->t, &y->dora);
    return rc;
}

/* only_lyco: the lazy loader, which reads LoRA layers from the file on demand
 * but holds LyCORIS layers' computed factors in memory. */
static int read_all_values(loader *L, zl_lora *lo, int only_lyco) {
    int bad = -1;
#pragma omp parallel for schedule(dynamic, 8)
    for (int i = 0; i < L->ng; i++) {
        zl_lora_layer *y = &lo->layers[i];
        if (only_lyco && !L->g[i].lyco) continue;
        int rc = read_layer(L, i, y);
        if (rc) {
#pragma omp critical(zl_lora_load_bad)
            if (bad < 0 || i < bad) bad = i;
        }
    }
    if (bad < 0) return ZL_OK;
    zl_lora_layer *y = &lo->layers[bad];
    free(y->down);
    free(y->up);
    free(y->dora);
    y->down = y->up = y->dora = NULL;
    int rc = read_layer(L, bad, y);
    return rc ? rc : zl_set_error(ZL_ENOMEM, "%s: out of memory", L->path);
}

static int alpha_of(loader *L, group *g, zl_lora_layer *y) {
    const entry *ae = g->e[ROLE_ALPHA];
    if (g->lyco) {
        /* the LyCORIS scale goes into the factors; the layer's own scale is 1 */
        g->l_scale = 1.0f;
        if (ae && g->l_dim) {
            if (ae->t->numel != 1 || ae->t->dtype == ZL_DT_BOOL)
                return zl_set_error(ZL_EFORMAT, "%s: alpha tensor '%s' must hold one number", L->path, ae->key);
            float a;
            zl_st_read_f32(ae->t, &a);
            if (!isfinite(a))
                return zl_set_error(ZL_ENUMERIC, "%s: alpha tensor '%s' is %s", L->path, ae->key, isnan(a) ? "NaN" : "Inf");
            g->l_scale = a / (float)g->l_dim;
        }
        y->alpha = (float)y->rank;
        return ZL_OK;
    }
    if (ae) {
        const zl_st_tensor *t = ae->t;
        if (t->numel != 1 || t->dtype == ZL_DT_BOOL)
            return zl_set_error(ZL_EFORMAT, "%s: alpha tensor '%s' must hold one number", L->path, ae->key);
        float a;
        zl_st_read_f32(t, &a);
        if (!isfinite(a)) return zl_set_error(ZL_ENUMERIC, "%s: alpha tensor '%s' is %s", L->path, ae->key, isnan(a) ? "NaN" : "Inf");
        y->alpha = a;
    } else if (!first_entry(g)->flat && !first_entry(g)->comfy) {
        /* PEFT/diffusers: adapter metadata, else an adapter_config.json, else alpha = r */
        const peft_cfg *c = L->o->adapter_config ? NULL : &L->meta_cfg[y->part];
        if (!c || !c->present) {
            if (!L->file_cfg_loaded) {
                int rc = find_adapter_config(L->path, L->o->adapter_config, &L->file_cfg);
                if (rc) return rc;
                L->file_cfg_loaded = 1;
            }
            c = &L->file_cfg;
        }
        if (c->present) {
            int rc = peft_alpha(c, y->module, y->rank, g->e[ROLE_DOWN]->key, &y->alpha);
            if (rc) return zl_error_prefix(rc, "%s", L->path);
        } else {
            y->alpha = (float)y->rank;
        }
    } else {
        y->alpha = (float)y->rank; /* kohya or ComfyUI without alpha: scale 1 */
    }
    if (y->alpha == 0.0f) y->alpha = (float)y->rank;
    return ZL_OK;
}

static int read_meta_cfg(loader *L) {
    const char *s = zl_st_meta(L->f, "lora_adapter_metadata");
    if (!s) return ZL_OK;
    json_error_t je;
    json_t *o = json_loads(s, 0, &je);
    if (!o || !json_is_object(o)) {
        if (o) json_decref(o);
        return zl_set_error(ZL_EFORMAT, "%s: metadata 'lora_adapter_metadata' is not a JSON object (%s)", L->path, je.text);
    }
    char src[600];
    snprintf(src, sizeof src, "%s: lora_adapter_metadata", L->path);
    int rc = peft_cfg_read(o, "", src, &L->meta_cfg[0]);
    if (!rc && L->meta_cfg[0].present) {
        /* one config for every part */
        rc = peft_cfg_read(o, "", src, &L->meta_cfg[1]);
        if (!rc) rc = peft_cfg_read(o, "", src, &L->meta_cfg[2]);
    } else if (!rc) {
        /* diffusers packs each component's config under "<component>." */
        static const char *const pre[3] = {"unet.", "text_encoder.", "text_encoder_2."};
        for (int p = 0; p < 3 && !rc; p++) rc = peft_cfg_read(o, pre[p], src, &L->meta_cfg[p]);
    }
    json_decref(o);
    return rc;
}

static int cmp_layer(const void *a, const void *b) {
    const zl_lora_layer *x = a, *y = b;
    if (x->part != y->part) return x->part < y->part ? -1 : 1;
    return strcmp(x->module, y->module);
}

/* lz: NULL to widen every value into the zl_lora, else the lazy handle to fill
 * (its file is set by the caller). */
static int load_impl(const zl_st_file *f, const char *path, const zl_lora_load_opts *opts, zl_lora **out,
                     zl_lora_lazy *lz) {
    *out = NULL;
    zl_lora_load_opts none;
    memset(&none, 0, sizeof none);
    loader L;
    memset(&L, 0, sizeof L);
    L.f = f;
    L.path = path ? path : zl_st_path(f);
    L.o = opts ? opts : &none;
    L.allow_dora = L.o->allow_dora && !lz;
    zl_lora *lo = calloc(1, sizeof *lo);
    int rc = lo ? ZL_OK : zl_set_error(ZL_ENOMEM, "out of memory");
    int plain_te = 0, strict = 0;
    const zl_name_table *unet_t = NULL;
    zl_family fam = ZL_FAMILY_UNKNOWN;
    if (rc) goto fail;
    if ((rc = parse_all(&L, &plain_te))) goto fail;
    if ((rc = group_all(&L))) goto fail;
    for (int i = 0; i < L.ng && !rc; i++)
        if (L.g[i].lyco) rc = lyco_check(&L, &L.g[i]);
    if (rc) goto fail;
    if ((rc = choose_family(&L, plain_te, &fam, &unet_t, &strict))) goto fail;
    if ((rc = make_te_tables(&L, fam))) goto fail;
    if ((rc = read_meta_cfg(&L))) goto fail;

    /* Resolve every module; report all that map to nothing at once. */
    const char **unmapped = calloc((size_t)L.ng, sizeof *unmapped);
    if (!unmapped) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto fail; }
    int nun = 0, lay_seen[ZL_LAYOUT_MIXED + 1] = {0}, te_kohya = 0;
    for (int i = 0; i < L.ng; i++) {
        group *g = &L.g[i];
        const entry *e = first_entry(g);
        const zl_name_table *t = e->part == ZL_PART_UNET ? unet_t : L.te[e->part];
        g->mod = find_module(t, e, &g->is_ldm);
        if (!g->mod) {
            unmapped[nun++] = group_key(g);
            continue;
        }
        if (e->flat && e->part != ZL_PART_UNET) te_kohya = 1;
        else if (e->flat) lay_seen[g->is_ldm ? ZL_LAYOUT_KOHYA_LDM : ZL_LAYOUT_KOHYA_DIFFUSERS] = 1;
        else lay_seen[first_entry(g)->layout] = 1;
    }
    if (nun) {
        char msg[1200];
        snprintf(msg, sizeof msg, "%s: %d LoRA module%s map%s to no module of the %s model: ", L.path, nun,
                 nun > 1 ? "s" : "", nun > 1 ? "" : "s", zl_family_name(fam));
        list_keys(msg, sizeof msg, unmapped, nun, 4);
        free(unmapped);
        rc = zl_set_error(ZL_ENOTFOUND, "%s", msg);
        goto fail;
    }
    free(unmapped);

    lo->layers = calloc((size_t)L.ng, sizeof *lo->layers);
    const char **src_key = calloc((size_t)L.ng, sizeof *src_key);
    if (!lo->layers || !src_key) {
        free(src_key);
        rc = zl_set_error(ZL_ENOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < L.ng; i++) {
        group *g = &L.g[i];
        zl_lora_layer *y = &lo->layers[lo->n++];
        zl_part part = first_entry(g)->part;
        y->part = part;
        y->module = strdup(g->mod->diffusers);
        if (!y->module) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); break; }
        int st = part == ZL_PART_UNET ? strict : L.te_strict[part];
        if ((rc = build_layer(&L, g, st, y))) break;
        if ((rc = alpha_of(&L, g, y))) break;
        src_key[i] = group_key(g);
    }
    /* lazy: LoRA values are checked as they are read; LyCORIS factors are formed now */
    if (!rc) rc = read_all_values(&L, lo, lz != NULL);
    if (!rc) {
        /* Sort; a copy of the unsorted order maps each module string back to its key,
         * so a duplicate can name both source tensors (and a lazy layer its tensors). */
        zl_lora_layer *tmp = malloc((size_t)lo->n * sizeof *tmp);
        if (!tmp) rc = zl_set_error(ZL_ENOMEM, "out of memory");
        else {
            memcpy(tmp, lo->layers, (size_t)lo->n * sizeof *tmp);
            qsort(lo->layers, (size_t)lo->n, sizeof *lo->layers, cmp_layer);
            if (lz) {
                lz->n = lo->n;
                lz->down = calloc((size_t)(lo->n ? lo->n : 1), sizeof *lz->down);
                lz->up = calloc((size_t)(lo->n ? lo->n : 1), sizeof *lz->up);
                if (!lz->down || !lz->up) rc = zl_set_error(ZL_ENOMEM, "out of memory");
                for (int i = 0; i < lo->n && !rc; i++)
                    for (int j = 0; j < lo->n; j++)
                        if (tmp[j].module == lo->layers[i].module) {
                            lz->down[i] = L.g[j].lyco ? NULL : L.g[j].e[ROLE_DOWN]->t;
                            lz->up[i] = L.g[j].lyco ? NULL : L.g[j].e[ROLE_UP]->t;
                            break;
                        }
            }
            for (int i = 1; i < lo->n && !rc; i++) {
                if (lo->layers[i].part != lo->layers[i - 1].part || strcmp(lo->layers[i].module, lo->layers[i - 1].module))
                    continue;
                const char *k1 = "?", *k2 = "?";
                for (int j = 0; j < lo->n; j++) {
                    if (tmp[j].module == lo->layers[i - 1].module) k1 = src_key[j];
                    if (tmp[j].module == lo->layers[i].module) k2 = src_key[j];
                }
                rc = zl_set_error(ZL_EFORMAT, "%s: tensors '%s' and '%s' are for the same module '%s' (%s)", L.path,
                                  k1, k2, lo->layers[i].module, part_name(lo->layers[i].part));
            }
            free(tmp);
        }
    }
    free(src_key);
    if (rc) goto fail;

    int nlay = 0;
    lo->layout = ZL_LAYOUT_UNKNOWN;
    for (int k = 1; k < ZL_LAYOUT_MIXED; k++)
        if (lay_seen[k]) nlay++, lo->layout = (zl_lora_layout)k;
    if (nlay > 1) lo->layout = ZL_LAYOUT_MIXED;
    if (!nlay && te_kohya) lo->layout = ZL_LAYOUT_KOHYA_DIFFUSERS; /* text encoders only: HF names */
    lo->family = fam;
    for (int i = 0; i < L.ng; i++) {
        lo->n_loha += L.g[i].lyco == LYCO_LOHA;
        lo->n_lokr += L.g[i].lyco == LYCO_LOKR;
        lo->n_tucker += L.g[i].tucker;
        lo->n_dora += L.g[i].e[ROLE_DORA] != NULL;
    }
    lo->path = strdup(L.path);
    int nm = zl_st_meta_count(f);
    if (nm) {
        lo->meta_k = calloc((size_t)nm, sizeof *lo->meta_k);
        lo->meta_v = calloc((size_t)nm, sizeof *lo->meta_v);
        if (!lo->meta_k || !lo->meta_v) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto fail; }
        for (int i = 0; i < nm; i++) {
            lo->meta_k[i] = strdup(zl_st_meta_key(f, i));
            lo->meta_v[i] = strdup(zl_st_meta_value(f, i));
            lo->n_meta++;
            if (!lo->meta_k[i] || !lo->meta_v[i]) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto fail; }
        }
    }
    if (!lo->path) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto fail; }
    loader_free(&L);
    *out = lo;
    return ZL_OK;
fail:
    loader_free(&L);
    zl_lora_free(lo);
    return rc;
}

int zl_lora_load_st(const zl_st_file *f, const char *path, const zl_lora_load_opts *opts, zl_lora **out) {
    return load_impl(f, path, opts, out, NULL);
}

int zl_lora_load_st_lazy(const zl_st_file *f, const char *path, const zl_lora_load_opts *opts, zl_lora **out,
                         zl_lora_lazy **lazy) {
    *out = NULL;
    *lazy = NULL;
    zl_lora_lazy *z = calloc(1, sizeof *z);
    if (!z) return zl_set_error(ZL_ENOMEM, "out of memory");
    z->mapped = zl_st_is_mapped(f);
    z->path = strdup(path ? path : zl_st_path(f));
    int rc = z->path ? load_impl(f, path, opts, out, z) : zl_set_error(ZL_ENOMEM, "out of memory");
    if (rc) {
        zl_lora_lazy_free(z);
        return rc;
    }
    *lazy = z;
    return ZL_OK;
}

int zl_lora_load_lazy(const char *path, const zl_lora_load_opts *opts, zl_lora **out, zl_lora_lazy **lazy) {
    *out = NULL;
    *lazy = NULL;
    zl_lora_lazy *z = calloc(1, sizeof *z);
    if (!z) return zl_set_error(ZL_ENOMEM, "out of memory");
    int rc = zl_st_open(path, &z->f);
    z->mapped = zl_st_is_mapped(z->f);
    if (!rc && !(z->path = strdup(path))) rc = zl_set_error(ZL_ENOMEM, "out of memory");
    if (!rc) rc = load_impl(z->f, path, opts, out, z);
    if (rc) {
        zl_lora_lazy_free(z);
        return rc;
    }
    *lazy = z;
    return ZL_OK;
}

int zl_lora_load(const char *path, const zl_lora_load_opts *opts, zl_lora **out) {
    *out = NULL;
    zl_st_file *f;
    int rc = zl_st_open(path, &f);
    if (rc) return rc;
    rc = zl_lora_load_st(f, path, opts, out);
    zl_st_close(f);
    return rc;
}
