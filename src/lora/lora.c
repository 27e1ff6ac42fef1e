/* The canonical in-memory LoRA (include/ziplora/lora.h): its lifetime,
 * lookups and folding into a base weight. Loading lives in lora_load.c,
 * writing elsewhere in src/lora/. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn/ops.h"
#include "ziplora/lora.h"

void zl_lora_free(zl_lora *l) {
    if (!l) return;
    for (int i = 0; i < l->n; i++) {
        free(l->layers[i].module);
        free(l->layers[i].down);
        free(l->layers[i].up);
        free(l->layers[i].dora);
    }
    free(l->layers);
    for (int i = 0; i < l->n_meta; i++) {
        free(l->meta_k[i]);
        free(l->meta_v[i]);
    }
    free(l->meta_k);
    free(l->meta_v);
    free(l->path);
    free(l);
}

/* Layers are sorted by (part, module), so this is a binary search. */
const zl_lora_layer *zl_lora_find(const zl_lora *l, zl_part part, const char *module) {
    if (!l || !module) return NULL;
    int lo = 0, hi = l->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const zl_lora_layer *x = &l->layers[mid];
        int c = x->part != part ? (x->part < part ? -1 : 1) : strcmp(x->module, module);
        if (!c) return x;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

const char *zl_lora_meta(const zl_lora *l, const char *key) {
    for (int i = 0; l && i < l->n_meta; i++)
        if (!strcmp(l->meta_k[i], key)) return l->meta_v[i];
    return NULL;
}

static int is_blank(const char *s) {
    for (; s && *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r') return 0;
    return 1;
}

typedef struct {
    const char *tag;
    double count;
} tag_count;

static int by_count(const void *a, const void *b) {
    const tag_count *x = a, *y = b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return strcmp(x->tag, y->tag);
}

int zl_lora_top_tags(const zl_lora *l, int k, char ***tags, int *n) {
    *tags = NULL;
    *n = 0;
    const char *name = l && l->path ? l->path : "LoRA";
    const char *tf = zl_lora_meta(l, "ss_tag_frequency");
    if (!tf) return zl_set_error(ZL_ENOTFOUND, "%s: no ss_tag_frequency in its metadata", name);
    json_error_t je;
    json_t *root = json_loads(tf, 0, &je);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return zl_set_error(ZL_EFORMAT, "%s: ss_tag_frequency is not a JSON object", name);
    }
    /* each tag's count summed over the datasets (tags are few: hundreds) */
    json_t *sum = json_object();
    const char *ds, *tag;
    json_t *group, *cnt;
    json_object_foreach(root, ds, group) {
        if (!json_is_object(group)) continue;
        json_object_foreach(group, tag, cnt) {
            if (!json_is_number(cnt) || is_blank(tag)) continue;
            json_t *prev = json_object_get(sum, tag);
            json_object_set_new(sum, tag, json_real(json_number_value(cnt) + (prev ? json_real_value(prev) : 0)));
        }
    }
    size_t m = json_object_size(sum), i = 0;
    tag_count *all = calloc(m ? m : 1, sizeof *all);
    int rc = all ? ZL_OK : zl_set_error(ZL_ENOMEM, "out of memory");
    json_object_foreach(sum, tag, cnt) {
        if (all) all[i++] = (tag_count){tag, json_real_value(cnt)};
    }
    if (!rc && !m) rc = zl_set_error(ZL_ENOTFOUND, "%s: ss_tag_frequency holds no tags", name);
    if (!rc) {
        qsort(all, m, sizeof *all, by_count);
        int want = k < (int)m ? k : (int)m;
        *tags = calloc((size_t)(want ? want : 1), sizeof **tags);
        if (!*tags) rc = zl_set_error(ZL_ENOMEM, "out of memory");
        for (int j = 0; j < want && !rc; j++) {
            const char *t = all[j].tag;
            while (*t == ' ') t++;
            size_t len = strlen(t);
            while (len && t[len - 1] == ' ') len--;
            char *c = malloc(len + 1);
            if (!c) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); break; }
            memcpy(c, t, len);
            c[len] = 0;
            (*tags)[(*n)++] = c;
        }
        if (rc) {
            for (int j = 0; j < *n; j++) free((*tags)[j]);
            free(*tags);
            *tags = NULL;
            *n = 0;
        }
    }
    free(all);
    json_decref(sum);
    json_decref(root);
    return rc;
}

/* PEFT's DoRA: Wc = W + w * scale * up @ down, each output row rescaled to its magnitude. */
static int fold_dora_rows(const zl_lora_layer *l, float w, float *W, int out, int K) {
    float *wc = malloc((size_t)out * (size_t)K * sizeof *wc);
    if (!wc) return zl_set_error(ZL_ENOMEM, "out of memory applying the DoRA layer '%s'", l->module);
    memcpy(wc, W, (size_t)out * (size_t)K * sizeof *wc);
    zl_sgemm(0, 0, out, K, l->rank, w * zl_lora_scale(l), l->up, l->rank, l->down, K, 1.0f, wc, K);
    for (int o = 0; o < out; o++) {
        const float *r = wc + (size_t)o * K;
        double s2 = 0;
        for (int j = 0; j < K; j++) s2 += (double)r[j] * r[j];
        const float fo = s2 > 0 ? (float)(l->dora[o] / sqrt(s2)) : 0.0f;
        for (int j = 0; j < K; j++) W[(size_t)o * K + j] = r[j] * fo;
    }
    free(wc);
    return ZL_OK;
}

/* LyCORIS's DoRA (ComfyUI, A1111): Wc = W + scale * up @ down, each input channel rescaled
 * to its magnitude, then W moves w of the way to that. */
static int fold_dora_cols(const zl_lora_layer *l, float w, float *W, int out, int in, int khw) {
    const int K = in * khw;
    const size_t n = (size_t)out * (size_t)K;
    float *wc = malloc(n * sizeof *wc), *f = malloc((size_t)in * sizeof *f);
    double *ss = calloc((size_t)in, sizeof *ss);
    if (!wc || !f || !ss) {
        free(wc), free(f), free(ss);
        return zl_set_error(ZL_ENOMEM, "out of memory applying the DoRA layer '%s'", l->module);
    }
    memcpy(wc, W, n * sizeof *wc);
    zl_sgemm(0, 0, out, K, l->rank, zl_lora_scale(l), l->up, l->rank, l->down, K, 1.0f, wc, K);
    /* squared norm of each input channel: over every output row and kernel position */
    for (int o = 0; o < out; o++) {
        const float *r = wc + (size_t)o * K;
        for (int c = 0; c < in; c++)
            for (int k = 0; k < khw; k++) ss[c] += (double)r[c * khw + k] * r[c * khw + k];
    }
    for (int c = 0; c < in; c++) f[c] = ss[c] > 0 ? (float)(l->dora[c] / sqrt(ss[c])) : 0.0f;
    for (int o = 0; o < out; o++) {
        float *row = W + (size_t)o * K;
        const float *r = wc + (size_t)o * K;
        for (int c = 0; c < in; c++)
            for (int k = 0; k < khw; k++) {
                const int j = c * khw + k;
                const float v = r[j] * f[c];
                row[j] = w == 1.0f ? v : row[j] + w * (v - row[j]);
            }
    }
    free(wc), free(f), free(ss);
    return ZL_OK;
}

int zl_lora_fold(const zl_lora_layer *l, float w, float *W) {
    const int out = l->out_features, in = l->in_features, khw = l->kh * l->kw, K = in * khw;
    if (l->dora) return l->dora_out ? fold_dora_rows(l, w, W, out, K) : fold_dora_cols(l, w, W, out, in, khw);
    zl_sgemm(0, 0, out, K, l->rank, w * zl_lora_scale(l), l->up, l->rank, l->down, K, 1.0f, W, K);
    return ZL_OK;
}
