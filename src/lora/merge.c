/* Exact merges of two LoRAs into one standard LoRA (spec/ziplora.md, "The result
 * is a standard LoRA, exactly"):
 *   w_c dW_c diag(m_c) + w_s dW_s diag(m_s) = [w_c s_c B_c | w_s s_s B_s] [A_c diag(m_c) ; A_s diag(m_s)]
 * so a merged layer has rank r_c + r_s and alpha = rank (scale 1). Layers held by
 * one LoRA pass through with their own rank and alpha. The merged layers are
 * computed one at a time, on demand, so a merged file is streamed to disk. Also
 * owns the mergers file reader and the optional SVD re-rank. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <sys/mman.h>
#if defined(__F16C__) && defined(__AVX2__)
#include <immintrin.h>
#endif
#include <unistd.h>

#include "lora/lora_keys.h"
#include "ziplora.h"

/* ---- mergers file ---- */

typedef struct {
    zl_part part;
    char *module;
    int style;
    int n;
    float *v; /* [in_features] */
    int used;
} merger_entry;

struct zl_mergers {
    char *path;
    int n;
    merger_entry *e;
};

void zl_mergers_free(zl_mergers *m) {
    if (!m) return;
    for (int i = 0; i < m->n; i++) {
        free(m->e[i].module);
        free(m->e[i].v);
    }
    free(m->e);
    free(m->path);
    free(m);
}

int zl_mergers_load(const char *path, zl_mergers **out) {
    *out = NULL;
    zl_st_file *f = NULL;
    int rc = zl_st_open(path, &f);
    if (rc) return rc;
    zl_mergers *m = calloc(1, sizeof *m);
    int cnt = zl_st_count(f);
    if (m) {
        m->path = strdup(path);
        m->e = calloc(cnt ? (size_t)cnt : 1, sizeof *m->e);
    }
    if (!m || !m->path || !m->e) {
        zl_st_close(f);
        zl_mergers_free(m);
        return zl_set_error(ZL_ENOMEM, "%s: out of memory", path);
    }
    for (int i = 0; i < cnt && !rc; i++) {
        const zl_st_tensor *t = zl_st_at(f, i);
        const char *name = t->name;
        size_t len = strlen(name);
        int style;
        size_t sl;
        if (len > 15 && !strcmp(name + len - 15, ".merger_content")) { style = 0; sl = 15; }
        else if (len > 13 && !strcmp(name + len - 13, ".merger_style")) { style = 1; sl = 13; }
        else {
            rc = zl_set_error(ZL_EFORMAT, "%s: tensor '%s' is not a merger (keys are <module>.merger_content or "
                              "<module>.merger_style)", path, name);
            break;
        }
        zl_part part = ZL_PART_UNET;
        const char *mod = name;
        if (!strncmp(name, "te1.", 4)) { part = ZL_PART_TE1; mod += 4; }
        else if (!strncmp(name, "te2.", 4)) { part = ZL_PART_TE2; mod += 4; }
        size_t ml = (size_t)(name + len - sl - mod);
        if (ml == 0) { rc = zl_set_error(ZL_EFORMAT, "%s: tensor '%s' names no module", path, name); break; }
        if (t->ndim != 1 || !zl_dtype_is_float(t->dtype) || t->dtype == ZL_DT_BOOL || t->numel <= 0) {
            rc = zl_set_error(ZL_EFORMAT, "%s: merger '%s' must be a 1-D float tensor [in_features] (got %s with %d dims)",
                              path, name, zl_dtype_name(t->dtype), t->ndim);
            break;
        }
        merger_entry *e = &m->e[m->n++];
        e->part = part;
        e->style = style;
        e->module = strndup(mod, ml);
        e->n = (int)t->numel;
        e->v = malloc(sizeof(float) * (size_t)t->numel);
        if (!e->module || !e->v) { rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", path); break; }
        zl_st_read_f32(t, e->v);
        for (int j = 0; j < e->n; j++)
            if (!isfinite(e->v[j])) {
                rc = zl_set_error(ZL_ENUMERIC, "%s: merger '%s' holds a non-finite value at %d", path, name, j);
                break;
            }
    }
    zl_st_close(f);
    if (rc) { zl_mergers_free(m); return rc; }
    *out = m;
    return ZL_OK;
}

static merger_entry *mergers_lookup(const zl_mergers *m, zl_part part, const char *module, int style) {
    if (!m) return NULL;
    for (int i = 0; i < m->n; i++)
        if (m->e[i].part == part && m->e[i].style == style && !strcmp(m->e[i].module, module)) return &m->e[i];
    return NULL;
}

const float *zl_mergers_find(const zl_mergers *m, zl_part part, const char *module, int style, int *n) {
    merger_entry *e = mergers_lookup(m, part, module, style);
    if (n) *n = e ? e->n : 0;
    return e ? e->v : NULL;
}

static const char *part_tag(zl_part p) { return p == ZL_PART_UNET ? "unet" : p == ZL_PART_TE1 ? "te1" : "te2"; }

/* ---- merge plan ---- */

typedef struct {
    const zl_lora_layer *c, *s; /* either may be NULL */
    const float *mc, *ms;       /* mergers or NULL (ones) */
} plan_item;

typedef struct {
    int n;
    plan_item *it;
    zl_lora layout; /* output layers: shapes, ranks, alphas, dtypes; no values */
    float wc, ws;
    /* one-layer cache for the streaming writer (down then up of the same layer) */
    int cached;
    float *cdown, *cup;
    /* inputs and their lazily loaded values; scratch for one layer of each */
    const zl_lora *c, *s;
    const zl_lora_lazy *zc, *zs;
    float *sc_down, *sc_up, *ss_down, *ss_up;
    int n_raw; /* tensors the raw path wrote */
} plan;

static int cmp_layer(const zl_lora_layer *a, const zl_lora_layer *b) {
    if (a->part != b->part) return (int)a->part - (int)b->part;
    return strcmp(a->module, b->module);
}

static int cmp_layer_ptr(const void *a, const void *b) {
    return cmp_layer(*(const zl_lora_layer *const *)a, *(const zl_lora_layer *const *)b);
}

static const zl_lora_layer **sorted_layers(const zl_lora *l) {
    const zl_lora_layer **p = malloc(sizeof *p * (size_t)(l->n ? l->n : 1));
    if (!p) return NULL;
    for (int i = 0; i < l->n; i++) p[i] = &l->layers[i];
    qsort(p, (size_t)l->n, sizeof *p, cmp_layer_ptr);
    return p;
}

static size_t dn(const zl_lora_layer *l) { return (size_t)l->rank * (size_t)l->in_features * (size_t)l->kh * (size_t)l->kw; }
static size_t un(const zl_lora_layer *l) { return (size_t)l->out_features * (size_t)l->rank; }

static void plan_free(plan *p) {
    free(p->it);
    free(p->layout.layers); /* module names are borrowed from the inputs */
    free(p->cdown);
    free(p->cup);
    free(p->sc_down);
    free(p->sc_up);
    free(p->ss_down);
    free(p->ss_up);
    memset(p, 0, sizeof *p);
}

static const char *lname(const zl_lora *l) { return l->path ? l->path : "LoRA"; }

static int check_merger(const zl_mergers *m, const zl_lora_layer *y, int style, const float **out) {
    *out = NULL;
    merger_entry *e = mergers_lookup(m, y->part, y->module, style);
    if (!e) return ZL_OK;
    if (e->n != y->in_features)
        return zl_set_error(ZL_ESHAPE, "%s: merger '%s%s%s.merger_%s' has %d values but the layer has %d input features",
                            m->path, y->part == ZL_PART_UNET ? "" : part_tag(y->part), y->part == ZL_PART_UNET ? "" : ".",
                            y->module, style ? "style" : "content", e->n, y->in_features);
    e->used = 1;
    *out = e->v;
    return ZL_OK;
}

static int plan_build(const zl_lora *c, const zl_lora *s, const zl_merge_opts *o, plan *p) {
    memset(p, 0, sizeof *p);
    p->cached = -1;
    if (!c || !s) return zl_set_error(ZL_EINVAL, "merge: two LoRAs are needed");
    if (c->family != ZL_FAMILY_UNKNOWN && s->family != ZL_FAMILY_UNKNOWN && c->family != s->family)
        return zl_set_error(ZL_EINVAL, "cannot merge LoRAs of different model families: %s is %s, %s is %s", lname(c),
                            zl_family_name(c->family), lname(s), zl_family_name(s->family));
    p->wc = o ? o->w_content : 1.0f;
    p->ws = o ? o->w_style : 1.0f;
    if (!isfinite(p->wc) || !isfinite(p->ws)) return zl_set_error(ZL_EINVAL, "merge: weights must be finite");
    const zl_mergers *mg = o ? o->mergers : NULL;
    if (mg)
        for (int i = 0; i < mg->n; i++) mg->e[i].used = 0;

    const zl_lora_layer **a = sorted_layers(c), **b = sorted_layers(s);
    int cap = c->n + s->n;
    p->it = calloc((size_t)(cap ? cap : 1), sizeof *p->it);
    p->layout.layers = calloc((size_t)(cap ? cap : 1), sizeof *p->layout.layers);
    int rc = ZL_OK;
    if (!a || !b || !p->it || !p->layout.layers) { rc = zl_set_error(ZL_ENOMEM, "merge: out of memory"); goto done; }

    /* output dtype: as asked, else the inputs' common dtype, else F32 (lossless) */
    zl_dtype dt = o ? o->dtype : ZL_DT_INVALID;
    if (dt == ZL_DT_INVALID) {
        int first = 1, mixed = 0;
        for (int i = 0; i < c->n + s->n; i++) {
            zl_dtype d = i < c->n ? c->layers[i].dtype : s->layers[i - c->n].dtype;
            if (first) { dt = d; first = 0; }
            else if (d != dt) mixed = 1;
        }
        if (mixed || (dt != ZL_DT_F16 && dt != ZL_DT_BF16 && dt != ZL_DT_F32)) dt = ZL_DT_F32;
    }

    int i = 0, j = 0;
    while ((i < c->n || j < s->n) && !rc) {
        plan_item *it = &p->it[p->n];
        int d = i >= c->n ? 1 : j >= s->n ? -1 : cmp_layer(a[i], b[j]);
        if (d < 0) it->c = a[i++];
        else if (d > 0) it->s = b[j++];
        else { it->c = a[i++]; it->s = b[j++]; }
        if (it->c && it->s) {
            const zl_lora_layer *x = it->c, *y = it->s;
            if (x->kind != y->kind || x->in_features != y->in_features || x->out_features != y->out_features ||
                x->kh != y->kh || x->kw != y->kw) {
                rc = zl_set_error(ZL_ESHAPE, "module %s:%s has shape [%d, %d, %d, %d] in %s but [%d, %d, %d, %d] in %s",
                                  part_tag(x->part), x->module, x->out_features, x->in_features, x->kh, x->kw, lname(c),
                                  y->out_features, y->in_features, y->kh, y->kw, lname(s));
                break;
            }
        }
        if (it->c && (rc = check_merger(mg, it->c, 0, &it->mc))) break;
        if (it->s && (rc = check_merger(mg, it->s, 1, &it->ms))) break;
        const zl_lora_layer *src = it->c ? it->c : it->s;
        zl_lora_layer *L = &p->layout.layers[p->n];
        *L = *src;
        L->down = L->up = NULL;
        L->dtype = dt;
        if (it->c && it->s) {
            L->rank = it->c->rank + it->s->rank;
            L->alpha = (float)L->rank;
        }
        p->n++;
    }
    if (!rc && mg)
        for (int k = 0; k < mg->n; k++)
            if (!mg->e[k].used) {
                rc = zl_set_error(ZL_ENOTFOUND, "%s: merger '%s%s%s.merger_%s' matches no layer of the %s LoRA", mg->path,
                                  mg->e[k].part == ZL_PART_UNET ? "" : part_tag(mg->e[k].part),
                                  mg->e[k].part == ZL_PART_UNET ? "" : ".", mg->e[k].module,
                                  mg->e[k].style ? "style" : "content", mg->e[k].style ? "style" : "content");
                break;
            }
    p->layout.n = p->n;
    p->layout.family = c->family != ZL_FAMILY_UNKNOWN ? c->family : s->family;
    p->layout.layout = ZL_LAYOUT_UNKNOWN;
    p->c = c;
    p->s = s;
    p->zc = o ? o->lazy_content : NULL;
    p->zs = o ? o->lazy_style : NULL;
    if (!rc) {
        size_t m[4] = {1, 1, 1, 1};
        for (int k = 0; k < c->n; k++) {
            if (dn(&c->layers[k]) > m[0]) m[0] = dn(&c->layers[k]);
            if (un(&c->layers[k]) > m[1]) m[1] = un(&c->layers[k]);
        }
        for (int k = 0; k < s->n; k++) {
            if (dn(&s->layers[k]) > m[2]) m[2] = dn(&s->layers[k]);
            if (un(&s->layers[k]) > m[3]) m[3] = un(&s->layers[k]);
        }
        p->sc_down = malloc(m[0] * sizeof(float));
        p->sc_up = malloc(m[1] * sizeof(float));
        p->ss_down = malloc(m[2] * sizeof(float));
        p->ss_up = malloc(m[3] * sizeof(float));
        if (!p->sc_down || !p->sc_up || !p->ss_down || !p->ss_up) rc = zl_set_error(ZL_ENOMEM, "merge: out of memory");
    }
done:
    free(a);
    free(b);
    if (rc) plan_free(p);
    return rc;
}

/* down_out[row0 + t, :] = A[t, :] scaled per input channel by m (kh*kw block each). */
static void put_down(float *dst, int row0, const zl_lora_layer *l, const float *A, const float *m) {
    size_t blk = (size_t)l->kh * (size_t)l->kw, rowlen = (size_t)l->in_features * blk;
    for (int t = 0; t < l->rank; t++) {
        const float *srow = A + (size_t)t * rowlen;
        float *drow = dst + (size_t)(row0 + t) * rowlen;
        if (!m) {
            memcpy(drow, srow, rowlen * sizeof(float));
            continue;
        }
        for (int ci = 0; ci < l->in_features; ci++)
            for (size_t q = 0; q < blk; q++) drow[ci * blk + q] = srow[ci * blk + q] * m[ci];
    }
}

/* up_out[:, col0 .. col0 + r) = f * B */
static void put_up(float *dst, int R, int col0, const zl_lora_layer *l, const float *B, float f) {
    for (int o = 0; o < l->out_features; o++)
        for (int t = 0; t < l->rank; t++) dst[(size_t)o * R + col0 + t] = f * B[(size_t)o * l->rank + t];
}

/* A side's factors: in memory, or read from its mapped file into scratch. */
static int side_values(const plan *p, int side, const zl_lora_layer *l, const float **A, const float **B) {
    if (l->down && l->up) {
        *A = l->down;
        *B = l->up;
        return ZL_OK;
    }
    const zl_lora *L = side ? p->s : p->c;
    float *a = side ? p->ss_down : p->sc_down, *b = side ? p->ss_up : p->sc_up;
    int rc = zl_lora_lazy_read(side ? p->zs : p->zc, L, (int)(l - L->layers), a, b);
    if (rc) return zl_error_prefix(rc, "merge");
    *A = a;
    *B = b;
    return ZL_OK;
}

/* The exact merged layer k: down [R, in*kh*kw], up [out, R]. */
static int merged_layer(const plan *p, int k, float *down, float *up) {
    const plan_item *it = &p->it[k];
    const zl_lora_layer *L = &p->layout.layers[k];
    const float *ca = NULL, *cb = NULL, *sa = NULL, *sb = NULL;
    int rc;
    if (it->c && (rc = side_values(p, 0, it->c, &ca, &cb))) return rc;
    if (it->s && (rc = side_values(p, 1, it->s, &sa, &sb))) return rc;
    if (it->c && it->s) {
        put_down(down, 0, it->c, ca, it->mc);
        put_down(down, it->c->rank, it->s, sa, it->ms);
        put_up(up, L->rank, 0, it->c, cb, p->wc * zl_lora_scale(it->c));
        put_up(up, L->rank, it->c->rank, it->s, sb, p->ws * zl_lora_scale(it->s));
    } else if (it->c) {
        put_down(down, 0, it->c, ca, it->mc);
        put_up(up, L->rank, 0, it->c, cb, p->wc);
    } else {
        put_down(down, 0, it->s, sa, it->ms);
        put_up(up, L->rank, 0, it->s, sb, p->ws);
    }
    return ZL_OK;
}

static int stream_get(void *ctx, int i, int which, float *dst) {
    plan *p = ctx;
    const zl_lora_layer *L = &p->layout.layers[i];
    if (p->cached != i) {
        /* the writer asks for a layer's down and up one after the other: compute both once */
        int rc = merged_layer(p, i, p->cdown, p->cup);
        if (rc) return rc;
        p->cached = i;
    }
    memcpy(dst, which ? p->cup : p->cdown, (which ? un(L) : dn(L)) * sizeof(float));
    return ZL_OK;
}

/* ---- raw path: output bytes straight from mapped inputs ---- */

/* The mapped tensor of a lazily held layer's down (0) or up (1), else NULL. */
static const zl_st_tensor *lazy_tensor(const plan *p, int side, const zl_lora_layer *l, int which) {
    const zl_lora *L = side ? p->s : p->c;
    const zl_lora_lazy *z = side ? p->zs : p->zc;
    long i = l - L->layers;
    if (!z || i < 0 || i >= z->n || (which ? l->up : l->down)) return NULL;
    return which ? z->up[i] : z->down[i];
}

/* Rows [o0, o0 + nr) of src [*, r] scaled by f1 (then f2 when f2 != 1) in float,
 * in dtype dt (F16, BF16 or F32 in and out) with the float path's roundings,
 * into dst rows of stride ld (elements). 0 if a result is not finite in dt
 * (the float path then reports it). */
static int scaled_rows(zl_dtype dt, const void *src, int o0, int nr, size_t r, void *dst, size_t ld, float f1,
                       float f2) {
    const size_t esz = (size_t)zl_dtype_bits(dt) / 8, n = (size_t)nr * r;
    const char *s = (const char *)src + (size_t)o0 * r * esz;
    char *d = (char *)dst + (size_t)o0 * ld * esz;
    if (f1 == 1.0f && f2 == 1.0f) {
        for (int o = 0; o < nr; o++) memcpy(d + (size_t)o * ld * esz, s + (size_t)o * r * esz, r * esz);
        return 1;
    }
    if (dt == ZL_DT_BF16 || n > 4096) return 0; /* rare; the float path handles it */
#if defined(__F16C__) && defined(__AVX2__)
    if (dt == ZL_DT_F16 && n % 8 == 0) {
        /* the float path's operations, 8 at a time: exact widening, the same float
         * products, round-to-nearest-even back */
        uint16_t out[4096];
        const __m256 v1 = _mm256_set1_ps(f1), v2 = _mm256_set1_ps(f2);
        const __m128i exp = _mm_set1_epi16(0x7c00);
        __m128i acc = _mm_setzero_si128();
        for (size_t i = 0; i < n; i += 8) {
            __m256 x = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 2 * i))), v1);
            if (f2 != 1.0f) x = _mm256_mul_ps(x, v2);
            __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            acc = _mm_or_si128(acc, _mm_cmpeq_epi16(_mm_and_si128(h, exp), exp));
            _mm_storeu_si128((__m128i *)(out + i), h);
        }
        if (!_mm_testz_si128(acc, acc)) return 0;
        for (int o = 0; o < nr; o++) memcpy(d + (size_t)o * ld * 2, out + (size_t)o * r, r * 2);
        return 1;
    }
#endif
    float buf[4096];
    uint32_t out[4096];
    zl_convert_to_f32(dt, s, buf, n);
    for (size_t i = 0; i < n; i++) buf[i] *= f1;
    if (f2 != 1.0f)
        for (size_t i = 0; i < n; i++) buf[i] *= f2;
    if (zl_convert_from_f32(dt, buf, out, n)) return 0;
    unsigned bad = 0;
    if (dt == ZL_DT_F16) {
        const uint16_t *h = (const uint16_t *)out;
        for (size_t i = 0; i < n; i++) bad |= (h[i] & 0x7c00u) == 0x7c00u;
    } else {
        for (size_t i = 0; i < n; i++) bad |= !isfinite(buf[i]);
    }
    if (bad) return 0;
    for (int o = 0; o < nr; o++) memcpy(d + (size_t)o * ld * esz, (const char *)out + (size_t)o * r * esz, r * esz);
    return 1;
}

/* zl_lora_source.get_raw of a merge: when the layer's sides are held lazily in
 * the output's dtype and have no mergers, the output is the inputs' bytes
 * (down: rows concatenated) or their rows scaled (up), with no float copy. */
static int stream_raw(void *ctx, int i, int which, zl_dtype dt, float scale, void *dst, size_t nbytes, int *done) {
    plan *p = ctx;
    const plan_item *it = &p->it[i];
    *done = 0;
    if (dt != ZL_DT_F16 && dt != ZL_DT_BF16 && dt != ZL_DT_F32) return ZL_OK;
    const zl_lora_layer *side[2] = {it->c, it->s};
    const zl_st_tensor *t[2] = {NULL, NULL};
    float f[2] = {1, 1};
    for (int k = 0; k < 2; k++) {
        if (!side[k]) continue;
        if ((k ? it->ms : it->mc) || !(t[k] = lazy_tensor(p, k, side[k], which)) || t[k]->dtype != dt) return ZL_OK;
        /* the float path's factors (merged_layer / put_up) */
        float w = k ? p->ws : p->wc;
        f[k] = it->c && it->s ? w * zl_lora_scale(side[k]) : w;
    }
    size_t esz = (size_t)zl_dtype_bits(dt) / 8, tot = 0;
    for (int k = 0; k < 2; k++) tot += t[k] ? (size_t)t[k]->nbytes : 0;
    if (tot != nbytes) return ZL_OK;
    for (int k = 0; k < 2; k++) {
        int rc = t[k] ? zl_lora_check_values((k ? p->zs : p->zc)->path, t[k]) : ZL_OK;
        if (rc) return rc;
    }
    if (!which) {
        /* down [r_c + r_s, in*kh*kw]: the two inputs' rows one after the other */
        char *d = dst;
        for (int k = 0; k < 2; k++)
            if (t[k]) {
                memcpy(d, t[k]->data, t[k]->nbytes);
                d += t[k]->nbytes;
                zl_lora_drop_pages(k ? p->zs : p->zc, t[k]);
            }
        *done = 1;
        p->n_raw++;
        return ZL_OK;
    }
    /* up [out, r_c + r_s]: each output row is the content row then the style row */
    const zl_lora_layer *l0 = side[0] ? side[0] : side[1];
    int out = l0->out_features, R = 0;
    for (int k = 0; k < 2; k++) R += side[k] ? side[k]->rank : 0;
    int ok = 1;
    size_t col = 0;
    for (int k = 0; k < 2 && ok; k++) {
        if (!t[k]) continue;
        size_t r = (size_t)side[k]->rank;
        int nb = r >= 4096 ? 1 : (int)(4096 / r); /* rows per block */
        for (int o = 0; o < out && ok; o += nb)
            ok = scaled_rows(dt, t[k]->data, o, out - o < nb ? out - o : nb, r, (char *)dst + col * esz, (size_t)R, f[k],
                             scale);
        col += r;
    }
    for (int k = 0; k < 2; k++)
        if (t[k]) zl_lora_drop_pages(k ? p->zs : p->zc, t[k]);
    *done = ok;
    p->n_raw += ok;
    return ZL_OK;
}

/* ---- lazily loaded LoRAs: values read from the mapped input on demand ---- */

void zl_lora_lazy_free(zl_lora_lazy *z) {
    if (!z) return;
    free(z->path);
    zl_st_close(z->f);
    free(z->down);
    free(z->up);
    free(z);
}

/* Drop a mapped tensor's pages from this process (they stay in the page cache), so
 * reading two large inputs does not add up in resident memory. */
void zl_lora_drop_pages(const zl_lora_lazy *z, const zl_st_tensor *t) {
    if (z && t && t->nbytes) zl_st_drop_pages(z->f, t->data, t->nbytes);
}

int zl_lora_lazy_read(const zl_lora_lazy *z, const zl_lora *l, int i, float *down, float *up) {
    const zl_lora_layer *y = &l->layers[i];
    for (int w = 0; w < 2; w++) {
        float *dst = w ? up : down;
        const float *mem = w ? y->up : y->down;
        const zl_st_tensor *t = z && i < z->n ? (w ? z->up[i] : z->down[i]) : NULL;
        if (!dst) continue;
        if (mem) {
            memcpy(dst, mem, (w ? un(y) : dn(y)) * sizeof(float));
        } else if (t) {
            int rc = zl_lora_check_values(z->path, t);
            if (!rc) zl_st_read_f32(t, dst);
            zl_lora_drop_pages(z, t);
            if (rc) return rc;
        } else {
            return zl_set_error(ZL_EINVAL, "layer '%s' has no values", y->module);
        }
    }
    return ZL_OK;
}

void zl_merge_report_free(zl_merge_report *r) {
    if (!r) return;
    if (r->module)
        for (int i = 0; i < r->n; i++) free(r->module[i]);
    free(r->module);
    free(r->part);
    free(r->rank_in);
    free(r->rank_out);
    free(r->rel_err);
    free(r->norm);
    memset(r, 0, sizeof *r);
}

static int report_init(zl_merge_report *r, const plan *p) {
    memset(r, 0, sizeof *r);
    r->n = p->n;
    size_t n = (size_t)(p->n ? p->n : 1);
    r->part = calloc(n, sizeof *r->part);
    r->module = calloc(n, sizeof *r->module);
    r->rank_in = calloc(n, sizeof(int));
    r->rank_out = calloc(n, sizeof(int));
    r->rel_err = calloc(n, sizeof(double));
    r->norm = calloc(n, sizeof(double));
    if (!r->part || !r->module || !r->rank_in || !r->rank_out || !r->rel_err || !r->norm) {
        zl_merge_report_free(r);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    for (int i = 0; i < p->n; i++) {
        r->part[i] = p->layout.layers[i].part;
        r->module[i] = strdup(p->layout.layers[i].module);
        if (!r->module[i]) { zl_merge_report_free(r); return zl_set_error(ZL_ENOMEM, "out of memory"); }
        r->rank_in[i] = r->rank_out[i] = p->layout.layers[i].rank;
        if (p->it[i].c && p->it[i].s) r->n_merged++;
        else if (p->it[i].c) r->n_content_only++;
        else r->n_style_only++;
    }
    return ZL_OK;
}

/* ||up @ down||_F^2 through the r x r Gram matrices (no dense dW). */
static double lowrank_norm2(const float *up, const float *down, int out, int r, size_t n) {
    double *gu = calloc((size_t)r * r, sizeof(double)), *gd = calloc((size_t)r * r, sizeof(double));
    if (!gu || !gd) { free(gu); free(gd); return NAN; }
    for (int o = 0; o < out; o++)
        for (int a = 0; a < r; a++)
            for (int b = 0; b < r; b++) gu[a * r + b] += (double)up[(size_t)o * r + a] * up[(size_t)o * r + b];
    for (int a = 0; a < r; a++)
        for (int b = a; b < r; b++) {
            double acc = 0;
            for (size_t x = 0; x < n; x++) acc += (double)down[a * n + x] * down[b * n + x];
            gd[a * r + b] = gd[b * r + a] = acc;
        }
    double s = 0;
    for (int i = 0; i < r * r; i++) s += gu[i] * gd[i];
    free(gu);
    free(gd);
    return s > 0 ? s : 0;
}

static void zl_lora_free_owned(zl_lora *l) {
    if (!l) return;
    for (int i = 0; i < l->n; i++) {
        free(l->layers[i].module);
        free(l->layers[i].down);
        free(l->layers[i].up);
    }
    free(l->layers);
    free(l->path);
    free(l);
}

/* A DoRA layer's update depends on the base weights: it has to be baked before a merge
 * (zl_lora_bake_dora_model); its up @ down alone is not its update. */
static int refuse_dora(const zl_lora *c, const zl_lora *s) {
    for (int k = 0; k < 2; k++) {
        const zl_lora *l = k ? s : c;
        if (l && l->n_dora)
            return zl_set_error(ZL_EUNSUPPORTED, "%s: %d DoRA layer%s: bake them against a model before merging "
                                                 "(convert --model, or merge --model)",
                                l->path ? l->path : "LoRA", l->n_dora, l->n_dora == 1 ? "" : "s");
    }
    return ZL_OK;
}

int zl_lora_merge(const zl_lora *c, const zl_lora *s, const zl_merge_opts *o, zl_lora **out, zl_merge_report *rep) {
    *out = NULL;
    if (rep) memset(rep, 0, sizeof *rep);
    int drc = refuse_dora(c, s);
    if (drc) return drc;
    if (o && o->rank < 0) return zl_set_error(ZL_EINVAL, "merge: rank must be positive (got %d)", o->rank);
    plan p;
    int rc = plan_build(c, s, o, &p);
    if (rc) return rc;
    zl_merge_report r;
    if ((rc = report_init(&r, &p))) { plan_free(&p); return rc; }
    int k = o ? o->rank : 0;
    zl_lora *m = calloc(1, sizeof *m);
    if (m) m->layers = calloc((size_t)(p.n ? p.n : 1), sizeof *m->layers);
    if (!m || !m->layers) { rc = zl_set_error(ZL_ENOMEM, "merge: out of memory"); goto fail; }
    m->family = p.layout.family;
    m->layout = ZL_LAYOUT_UNKNOWN;
    double tot2 = 0, drop2 = 0;
    for (int i = 0; i < p.n && !rc; i++) {
        zl_lora_layer *L = &m->layers[i];
        *L = p.layout.layers[i];
        L->module = strdup(L->module);
        L->down = malloc(dn(L) * sizeof(float));
        L->up = malloc(un(L) * sizeof(float));
        m->n = i + 1;
        if (!L->module || !L->down || !L->up) { rc = zl_set_error(ZL_ENOMEM, "merge: out of memory"); break; }
        if ((rc = merged_layer(&p, i, L->down, L->up))) break;
        if (k > 0 && L->rank > k) {
            /* fold the scale into up so the re-ranked layer has alpha = k */
            float sc = zl_lora_scale(L);
            if (sc != 1.0f)
                for (size_t q = 0; q < un(L); q++) L->up[q] *= sc;
            size_t n = (size_t)L->in_features * L->kh * L->kw;
            float *nu = malloc(sizeof(float) * (size_t)L->out_features * k), *nd = malloc(sizeof(float) * (size_t)k * n);
            if (!nu || !nd) { free(nu); free(nd); rc = zl_set_error(ZL_ENOMEM, "merge: out of memory"); break; }
            double rel, nrm;
            rc = zl_lowrank_truncate(L->up, L->down, L->out_features, L->rank, (int)n, k, nu, nd, &rel, &nrm);
            if (rc) { free(nu); free(nd); rc = zl_error_prefix(rc, "re-ranking %s", L->module); break; }
            free(L->up);
            free(L->down);
            L->up = nu;
            L->down = nd;
            L->rank = k;
            L->alpha = (float)k;
            r.rank_out[i] = k;
            r.rel_err[i] = rel;
            r.norm[i] = nrm;
            tot2 += nrm * nrm;
            drop2 += rel * rel * nrm * nrm;
        } else if (k > 0) {
            double n2 = lowrank_norm2(L->up, L->down, L->out_features, L->rank, (size_t)L->in_features * L->kh * L->kw);
            double sc = zl_lora_scale(L);
            r.norm[i] = sqrt(n2) * fabs(sc);
            tot2 += r.norm[i] * r.norm[i];
        }
    }
    if (rc) goto fail;
    r.overall = tot2 > 0 ? sqrt(drop2 / tot2) : 0.0;
    plan_free(&p);
    *out = m;
    if (rep) *rep = r;
    else zl_merge_report_free(&r);
    return ZL_OK;
fail:
    zl_lora_free_owned(m);
    zl_merge_report_free(&r);
    plan_free(&p);
    return rc;
}

int zl_lora_merge_write(const char *path, const zl_lora *c, const zl_lora *s, const zl_merge_opts *o,
                        const zl_lora_write_opts *wo, zl_merge_report *rep) {
    if (rep) memset(rep, 0, sizeof *rep);
    if (o && o->rank < 0) return zl_set_error(ZL_EINVAL, "merge: rank must be positive (got %d)", o->rank);
    int drc = refuse_dora(c, s);
    if (drc) return drc;
    if (o && o->rank > 0) {
        /* re-ranked layers are no larger than the inputs: build them, then write */
        zl_lora *m = NULL;
        int rc = zl_lora_merge(c, s, o, &m, rep);
        if (rc) return rc;
        rc = zl_lora_write(path, m, wo);
        zl_lora_free_owned(m);
        if (rc && rep) zl_merge_report_free(rep);
        return rc;
    }
    plan p;
    int rc = plan_build(c, s, o, &p);
    if (rc) return rc;
    size_t md = 1, mu = 1;
    for (int i = 0; i < p.n; i++) {
        if (dn(&p.layout.layers[i]) > md) md = dn(&p.layout.layers[i]);
        if (un(&p.layout.layers[i]) > mu) mu = un(&p.layout.layers[i]);
    }
    p.cdown = malloc(md * sizeof(float));
    p.cup = malloc(mu * sizeof(float));
    if (!p.cdown || !p.cup) { plan_free(&p); return zl_set_error(ZL_ENOMEM, "merge: out of memory"); }
    zl_merge_report r;
    if (rep && (rc = report_init(&r, &p))) { plan_free(&p); return rc; }
    zl_lora_source src = {stream_get, &p, stream_raw};
    rc = zl_lora_write_stream(path, &p.layout, &src, wo);
    int n_raw = p.n_raw;
    plan_free(&p);
    if (rep) {
        if (rc) zl_merge_report_free(&r);
        else {
            r.n_raw = n_raw;
            *rep = r;
        }
    }
    return rc;
}
