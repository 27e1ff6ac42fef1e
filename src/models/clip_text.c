/* The conditioning a Stable Diffusion UNet expects, built from the text
 * encoders: SDXL concatenates CLIP-L's and bigG's penultimate hidden states
 * (no final LayerNorm) on features and pools with bigG's projection; SD 1.x
 * uses CLIP-L's last hidden state (with the final LayerNorm). Also the
 * prompt-string entry point used by `generate` and `zip`. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ziplora/safetensors.h"
#include "ziplora/text.h"

struct zl_text {
    zl_family family;
    zl_clip *te1, *te2;
    zl_tokenizer *tok;
    int clip_skip; /* A1111's "Clip skip" (0 or 1: the family's default layer) */
    /* textual-inversion vectors, row r for placeholder id ZL_CLIP_VOCAB + r: CLIP-L's, bigG's (SDXL) */
    float *emb_l, *emb_g;
    int emb_rows;
};

int zl_text_set_clip_skip(zl_text *t, int n) {
    int L = zl_clip_get_config(t->te1)->layers;
    if (t->te2 && zl_clip_get_config(t->te2)->layers < L) L = zl_clip_get_config(t->te2)->layers;
    if (n < 1 || n > L)
        return zl_set_error(ZL_EINVAL, "clip skip %d: must be 1 (the last layer) to %d (the encoder's layer count)", n, L);
    t->clip_skip = n;
    return ZL_OK;
}

int zl_text_clip_skip(const zl_text *t) { return t->clip_skip > 1 ? t->clip_skip : 1; }

void zl_text_free(zl_text *t) {
    if (!t) return;
    zl_clip_free(t->te1);
    zl_clip_free(t->te2);
    zl_tokenizer_free(t->tok);
    free(t->emb_l);
    free(t->emb_g);
    free(t);
}

int zl_text_load(const zl_model_paths *p, const zl_text_load_opts *opts, zl_text **out) {
    *out = NULL;
    if (p->family != ZL_FAMILY_SDXL && p->family != ZL_FAMILY_SD1)
        return zl_set_error(ZL_EUNSUPPORTED, "%s: unknown model family; cannot pick its text encoders", p->root);
    if (!p->te1_weights) return zl_set_error(ZL_ENOTFOUND, "%s: the model has no (first) text encoder", p->root);
    if (p->family == ZL_FAMILY_SDXL && !p->te2_weights)
        return zl_set_error(ZL_ENOTFOUND, "%s: an SDXL model needs text_encoder_2 (OpenCLIP bigG)", p->root);
    zl_text *t = calloc(1, sizeof *t);
    if (!t) return zl_set_error(ZL_ENOMEM, "out of memory");
    t->family = p->family;
    zl_clip_load_opts o1 = {.config_json = opts && opts->te1_config ? opts->te1_config : p->te1_config};
    zl_clip_load_opts o2 = {.config_json = opts && opts->te2_config ? opts->te2_config : p->te2_config};
    int rc = zl_clip_load(p->te1_weights, ZL_PART_TE1, &o1, &t->te1);
    if (!rc && p->family == ZL_FAMILY_SDXL) rc = zl_clip_load(p->te2_weights, ZL_PART_TE2, &o2, &t->te2);
    if (!rc && t->te2 && !zl_clip_get_config(t->te2)->has_projection)
        rc = zl_set_error(ZL_EFORMAT, "%s: the second text encoder has no text_projection (SDXL pools with it)", p->te2_weights);
    if (!rc) rc = zl_tokenizer_new(&t->tok);
    if (rc) {
        zl_text_free(t);
        return rc;
    }
    *out = t;
    return ZL_OK;
}

zl_family zl_text_family(const zl_text *t) { return t->family; }
zl_clip *zl_text_encoder(zl_text *t, zl_part part) {
    return part == ZL_PART_TE1 ? t->te1 : part == ZL_PART_TE2 ? t->te2 : NULL;
}
const zl_tokenizer *zl_text_tokenizer(const zl_text *t) { return t->tok; }

/* The [n, C] vectors of tensor x (n = 1 for a [C] vector), widened into *out. */
static int emb_vectors(const char *path, const zl_st_tensor *x, int C, int *n, float **out) {
    *out = NULL;
    if (!(x->ndim == 1 || x->ndim == 2) || x->shape[x->ndim - 1] != C)
        return zl_set_error(ZL_ESHAPE, "%s: embedding tensor '%s' must be [n, %d] for this model's text encoder", path,
                            x->name, C);
    *n = x->ndim == 2 ? (int)x->shape[0] : 1;
    if (x->ndim == 2 && (x->shape[0] < 1 || x->shape[0] > ZL_CLIP_MAX_TOKENS))
        return zl_set_error(ZL_ESHAPE, "%s: embedding tensor '%s' holds %lld vectors (1 to %d fit a prompt)", path,
                            x->name, (long long)x->shape[0], ZL_CLIP_MAX_TOKENS);
    float *v = malloc((size_t)x->numel * sizeof *v);
    if (!v) return zl_set_error(ZL_ENOMEM, "out of memory");
    zl_st_read_f32(x, v);
    for (int64_t i = 0; i < x->numel; i++)
        if (!isfinite(v[i])) {
            free(v);
            return zl_set_error(ZL_ENUMERIC, "%s: embedding tensor '%s' holds NaN or Inf", path, x->name);
        }
    *out = v;
    return ZL_OK;
}

/* Append rows to *dst ([*have, C] -> [*have + n, C]). */
static int emb_append(float **dst, int have, const float *v, int n, int C) {
    float *d = realloc(*dst, sizeof *d * (size_t)(have + n) * C);
    if (!d) return zl_set_error(ZL_ENOMEM, "out of memory");
    memcpy(d + (size_t)have * C, v, sizeof *d * (size_t)n * C);
    *dst = d;
    return ZL_OK;
}

int zl_text_load_embedding(zl_text *t, const char *path, const char *trigger, int *n_vectors) {
    zl_st_file *f = NULL;
    int rc = zl_st_open(path, &f);
    if (rc) return rc;
    const int C1 = zl_clip_get_config(t->te1)->hidden, C2 = t->te2 ? zl_clip_get_config(t->te2)->hidden : 0;
    const zl_st_tensor *xl = zl_st_find(f, "clip_l"), *xg = zl_st_find(f, "clip_g");
    float *vl = NULL, *vg = NULL;
    int nl = 0, ng = 0;
    if (t->te2) {
        if (!xl || !xg)
            rc = zl_set_error(ZL_EFORMAT, "%s: not an SDXL embedding (an SDXL one holds 'clip_l' and 'clip_g' tensors)",
                              path);
        if (!rc) rc = emb_vectors(path, xl, C1, &nl, &vl);
        if (!rc) rc = emb_vectors(path, xg, C2, &ng, &vg);
        if (!rc && nl != ng)
            rc = zl_set_error(ZL_ESHAPE, "%s: 'clip_l' holds %d vectors and 'clip_g' %d", path, nl, ng);
    } else {
        /* A1111's emb_params (.safetensors) or string_to_param.* (.pt), or a file of one tensor (diffusers'
         * learned_embeds: {"<token>": [C]}) */
        const zl_st_tensor *x = zl_st_find(f, "emb_params");
        for (int i = 0; !x && i < zl_st_count(f); i++)
            if (!strncmp(zl_st_at(f, i)->name, "string_to_param.", 16)) x = zl_st_at(f, i);
        if (!x && zl_st_count(f) == 1) x = zl_st_at(f, 0);
        if (xg)
            rc = zl_set_error(ZL_EFORMAT, "%s: an SDXL embedding (clip_l, clip_g); this model is SD 1.x", path);
        else if (!x)
            rc = zl_set_error(ZL_EFORMAT, "%s: no embedding tensor found (emb_params, string_to_param.*, or a file of "
                                          "one tensor)", path);
        if (!rc) rc = emb_vectors(path, x, C1, &nl, &vl);
    }
    int32_t first = 0;
    if (!rc && (rc = zl_tokenizer_add_embedding(t->tok, trigger, nl, &first))) zl_error_prefix(rc, "%s", path);
    if (!rc && first != ZL_CLIP_VOCAB + t->emb_rows)
        rc = zl_set_error(ZL_EINVAL, "%s: embedding rows out of step with the tokenizer", path);
    if (!rc) rc = emb_append(&t->emb_l, t->emb_rows, vl, nl, C1);
    if (!rc && t->te2) rc = emb_append(&t->emb_g, t->emb_rows, vg, nl, C2);
    if (!rc) {
        t->emb_rows += nl;
        if (n_vectors) *n_vectors = nl;
    }
    free(vl);
    free(vg);
    zl_st_close(f);
    return rc;
}

int zl_text_apply_lora(zl_text *t, const zl_lora *lora, float weight) {
    for (int k = 0; k < lora->n; k++)
        if (lora->layers[k].part == ZL_PART_TE2 && !t->te2)
            return zl_set_error(ZL_EINVAL, "%s: has layers for a second text encoder, which this %s model lacks", lora->path,
                                zl_family_name(t->family));
    int rc = zl_clip_apply_lora(t->te1, lora, weight);
    if (!rc && t->te2) rc = zl_clip_apply_lora(t->te2, lora, weight);
    return rc;
}

int zl_text_context_dim(const zl_text *t) {
    return zl_clip_get_config(t->te1)->hidden + (t->te2 ? zl_clip_get_config(t->te2)->hidden : 0);
}

int zl_text_pooled_dim(const zl_text *t) { return t->te2 ? zl_clip_get_config(t->te2)->projection_dim : 0; }

/* One encoder's forward; placeholder ids (>= ZL_CLIP_VOCAB) take their
 * embedding's vector, with id 0 in their place (as A1111 does: the pooled
 * position stays the end token's). */
static int fwd(const zl_text *t, const zl_clip *c, const float *emb, const int32_t *ids, int B, int T,
               const zl_clip_out *o) {
    const size_t N = (size_t)B * T;
    size_t i = 0;
    while (i < N && ids[i] < ZL_CLIP_VOCAB) i++;
    if (i == N) return zl_clip_forward(c, ids, B, T, o);
    const int C = zl_clip_get_config(c)->hidden;
    int32_t *id2 = malloc(N * sizeof *id2);
    const float **rows = calloc(N, sizeof *rows);
    int rc = ZL_OK;
    if (!id2 || !rows) rc = zl_set_error(ZL_ENOMEM, "out of memory");
    for (i = 0; !rc && i < N; i++) {
        id2[i] = ids[i];
        if (ids[i] < ZL_CLIP_VOCAB) continue;
        if (!emb || ids[i] - ZL_CLIP_VOCAB >= t->emb_rows) {
            rc = zl_set_error(ZL_EINVAL, "text encoder: token id %d is no embedding's", ids[i]);
            break;
        }
        id2[i] = 0;
        rows[i] = emb + (size_t)(ids[i] - ZL_CLIP_VOCAB) * C;
    }
    if (!rc) rc = zl_clip_forward_rows(c, id2, rows, B, T, o);
    free(id2);
    free(rows);
    return rc;
}

int zl_text_encode_ids(const zl_text *t, const int32_t *ids_l, const int32_t *ids_g, int B, const zl_text_cond *out) {
    const int T = ZL_CLIP_CTX;
    int C1 = zl_clip_get_config(t->te1)->hidden;
    size_t N = (size_t)B * T;
    int rc;
    if (t->family == ZL_FAMILY_SD1 && t->clip_skip > 1) {
        /* A1111's clip skip n: the output of layer L - n + 1 through the final LayerNorm
         * (diffusers' clip_skip = n - 1) */
        zl_clip_out o = out->te1;
        float *e = out->prompt_embeds;
        if (e) {
            o.hidden = e;
            o.hidden_layer = zl_clip_get_config(t->te1)->layers - t->clip_skip + 1;
            o.hidden_final_ln = 1;
        }
        return fwd(t, t->te1, t->emb_l, ids_l, B, T, &o);
    }
    if (t->family == ZL_FAMILY_SD1) {
        zl_clip_out o = out->te1;
        float *tmp = NULL;
        if (out->prompt_embeds && !o.last_hidden) o.last_hidden = out->prompt_embeds;
        else if (out->prompt_embeds) tmp = o.last_hidden;
        if ((rc = fwd(t, t->te1, t->emb_l, ids_l, B, T, &o))) return rc;
        if (tmp) memcpy(out->prompt_embeds, tmp, N * C1 * sizeof(float));
        return ZL_OK;
    }
    if (!ids_g) return zl_set_error(ZL_EINVAL, "SDXL text encoding needs the bigG token ids");
    int C2 = zl_clip_get_config(t->te2)->hidden;
    zl_clip_out o1 = out->te1, o2 = out->te2;
    float *p1 = NULL, *p2 = NULL;
    /* SDXL takes the penultimate layers already; a clip skip n > 2 goes deeper, to layer
     * L - n + 1 of each encoder, still without the final LayerNorm (ComfyUI's CLIPSetLastLayer -n) */
    const int deeper = t->clip_skip > 2;
    if (out->prompt_embeds && deeper) {
        o1.hidden = p1 = malloc(N * C1 * sizeof(float));
        o2.hidden = p2 = malloc(N * C2 * sizeof(float));
        o1.hidden_layer = zl_clip_get_config(t->te1)->layers - t->clip_skip + 1;
        o2.hidden_layer = zl_clip_get_config(t->te2)->layers - t->clip_skip + 1;
        o1.hidden_final_ln = o2.hidden_final_ln = 0;
        if (!p1 || !p2) {
            free(p1);
            free(p2);
            return zl_set_error(ZL_ENOMEM, "out of memory encoding %d prompts", B);
        }
    } else if (out->prompt_embeds) {
        if (!o1.penultimate) o1.penultimate = p1 = malloc(N * C1 * sizeof(float));
        if (!o2.penultimate) o2.penultimate = p2 = malloc(N * C2 * sizeof(float));
        if (!o1.penultimate || !o2.penultimate) {
            free(p1);
            free(p2);
            return zl_set_error(ZL_ENOMEM, "out of memory encoding %d prompts", B);
        }
    }
    float *pool = NULL;
    if (out->pooled && !o2.projected) o2.projected = out->pooled;
    else if (out->pooled) pool = o2.projected;
    rc = fwd(t, t->te1, t->emb_l, ids_l, B, T, &o1);
    if (!rc) rc = fwd(t, t->te2, t->emb_g, ids_g, B, T, &o2);
    if (!rc && out->prompt_embeds) {
        for (size_t n = 0; n < N; n++) {
            float *dst = out->prompt_embeds + n * (size_t)(C1 + C2);
            memcpy(dst, (deeper ? o1.hidden : o1.penultimate) + n * C1, (size_t)C1 * sizeof(float));
            memcpy(dst + C1, (deeper ? o2.hidden : o2.penultimate) + n * C2, (size_t)C2 * sizeof(float));
        }
    }
    if (!rc && pool) memcpy(out->pooled, pool, (size_t)B * zl_text_pooled_dim(t) * sizeof(float));
    free(p1);
    free(p2);
    return rc;
}

int zl_text_encode_prompt(const zl_text *t, const char *prompt, int zero_if_empty, float *prompt_embeds,
                          float *pooled) {
    int D = zl_text_context_dim(t), P = zl_text_pooled_dim(t);
    if (zero_if_empty && (!prompt || !prompt[0])) {
        memset(prompt_embeds, 0, (size_t)ZL_CLIP_CTX * D * sizeof(float));
        if (pooled && P) memset(pooled, 0, (size_t)P * sizeof(float));
        return ZL_OK;
    }
    if (!prompt) prompt = "";
    int32_t il[ZL_CLIP_CTX], ig[ZL_CLIP_CTX];
    int rc = zl_tokenize_clip(t->tok, prompt, ZL_CLIP_PAD_L, 1, il, NULL);
    if (!rc && t->te2) rc = zl_tokenize_clip(t->tok, prompt, ZL_CLIP_PAD_BIGG, 0, ig, NULL);
    if (rc) return rc;
    zl_text_cond c = {.prompt_embeds = prompt_embeds, .pooled = t->te2 ? pooled : NULL};
    return zl_text_encode_ids(t, il, t->te2 ? ig : NULL, 1, &c);
}

int zl_text_count_chunks(const zl_text *t, const char *prompt, int emphasis, int *k) {
    int32_t *v = NULL;
    float *w = NULL;
    int *b = NULL;
    int rc = zl_tokenize_chunks_weighted(t->tok, prompt ? prompt : "", emphasis, &v, &w, &b, k);
    free(v);
    free(w);
    free(b);
    return rc;
}

/* A1111's "Original" emphasis on one chunk's output z [77, D] of an encoder
 * whose features are columns [c0, c1): z *= the token's multiplier, then z is
 * scaled back to its mean before that (the mean over the chunk's whole tensor
 * for this encoder). Computed in double. */
static void emphasis_chunk(float *z, int D, int c0, int c1, const float *mult) {
    double before = 0, after = 0;
    for (int i = 0; i < ZL_CLIP_CTX; i++)
        for (int j = c0; j < c1; j++) {
            double x = z[(size_t)i * D + j];
            before += x;
            after += x * mult[i];
        }
    const double ratio = after != 0 ? before / after : 1.0;
    for (int i = 0; i < ZL_CLIP_CTX; i++)
        for (int j = c0; j < c1; j++) z[(size_t)i * D + j] = (float)((double)z[(size_t)i * D + j] * mult[i] * ratio);
}

int zl_text_encode_prompt_long(const zl_text *t, const char *prompt, int emphasis, int min_chunks, int zero_if_empty,
                               float **prompt_embeds, float *pooled, int *k_out) {
    *prompt_embeds = NULL;
    *k_out = 0;
    const int D = zl_text_context_dim(t), P = zl_text_pooled_dim(t);
    if (!prompt) prompt = "";
    int32_t *v = NULL;
    float *wt = NULL;
    int *b = NULL, nc = 0;
    int rc = zl_tokenize_chunks_weighted(t->tok, prompt, emphasis, &v, &wt, &b, &nc);
    if (rc) return rc;
    const int k = nc > min_chunks ? nc : min_chunks;
    if (k > ZL_CLIP_MAX_CHUNKS) {
        free(v);
        free(b);
        return zl_set_error(ZL_EINVAL, "the prompt needs %d chunks of 75 tokens; at most %d are taken", k,
                            ZL_CLIP_MAX_CHUNKS);
    }
    const size_t TD = (size_t)ZL_CLIP_CTX * D;
    float *e = malloc((size_t)k * TD * sizeof(float));
    int32_t *il = malloc(sizeof(int32_t) * (size_t)k * ZL_CLIP_CTX), *ig = malloc(sizeof(int32_t) * (size_t)k * ZL_CLIP_CTX);
    float *pl = P ? malloc(sizeof(float) * (size_t)k * P) : NULL;
    if (!e || !il || !ig || (P && !pl)) rc = zl_set_error(ZL_ENOMEM, "out of memory encoding %d prompt chunks", k);
    if (!rc && zero_if_empty && !prompt[0]) {
        memset(e, 0, (size_t)k * TD * sizeof(float));
        if (pooled && P) memset(pooled, 0, (size_t)P * sizeof(float));
    } else if (!rc) {
        /* each chunk as a short prompt: [BOS] ids [EOS], padded per encoder; chunks past the
         * prompt's own are empty prompts */
        for (int c = 0; c < k; c++) {
            int lo = c < nc ? b[c] : 0, n = c < nc ? b[c + 1] - b[c] : 0;
            int32_t *a = il + (size_t)c * ZL_CLIP_CTX, *g = ig + (size_t)c * ZL_CLIP_CTX;
            a[0] = g[0] = ZL_CLIP_BOS;
            for (int i = 0; i < n; i++) a[1 + i] = g[1 + i] = v[lo + i];
            a[n + 1] = g[n + 1] = ZL_CLIP_EOS;
            for (int i = n + 2; i < ZL_CLIP_CTX; i++) {
                a[i] = ZL_CLIP_PAD_L;
                g[i] = ZL_CLIP_PAD_BIGG;
            }
        }
        zl_text_cond cd = {.prompt_embeds = e, .pooled = P ? pl : NULL};
        rc = zl_text_encode_ids(t, il, t->te2 ? ig : NULL, k, &cd);
        if (!rc && pooled && P) memcpy(pooled, pl, (size_t)P * sizeof(float));
        /* emphasis, per chunk and per encoder (the pooled vector is not weighted) */
        const int C1 = zl_clip_get_config(t->te1)->hidden;
        for (int c = 0; !rc && c < nc; c++) {
            float mult[ZL_CLIP_CTX];
            int any = 0;
            for (int i = 0; i < ZL_CLIP_CTX; i++) mult[i] = 1.0f;
            for (int i = 0; i < b[c + 1] - b[c]; i++) {
                mult[1 + i] = wt[b[c] + i];
                any |= mult[1 + i] != 1.0f;
            }
            if (!any) continue;
            float *z = e + (size_t)c * TD;
            emphasis_chunk(z, D, 0, C1, mult);
            if (t->te2) emphasis_chunk(z, D, C1, D, mult);
        }
    }
    free(v);
    free(wt);
    free(b);
    free(il);
    free(ig);
    free(pl);
    if (rc) {
        free(e);
        return rc;
    }
    *prompt_embeds = e;
    *k_out = k;
    return ZL_OK;
}
