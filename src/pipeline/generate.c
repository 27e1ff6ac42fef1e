/* The txt2img pipeline (include/ziplora/pipeline.h): owns a model's three
 * parts (text encoders, UNet, VAE), the LoRAs applied to them, and the loop
 * that turns a prompt into latents and pixels. Parts are reloaded on demand
 * after a release, with every recorded LoRA folded in again, so callers can
 * keep only one large part resident at a time. */
#include "ziplora/pipeline.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ziplora/progress.h"

typedef struct {
    zl_lora *lora; /* owned when `owned` */
    float weight;
    int owned;
} lora_rec;

struct zl_pipeline {
    zl_model_paths paths;
    char *unet_config, *vae_config, *te1_config, *te2_config; /* copies of the options */
    zl_unet_weight_mode weights;
    zl_vae_tile_mode vae_tile;
    int vae_tile_size, vae_tile_overlap;
    int clip_skip;
    zl_unet_config ucfg; /* kept across releases: LoRAs are checked against it */
    int vae_scale;
    zl_unet *unet;
    zl_vae *vae;
    zl_text *text;
    lora_rec *loras;
    int n_loras, cap_loras;
    char **emb_path, **emb_trigger; /* textual-inversion embeddings, loaded with the text encoders */
    int n_emb;
};

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* ------------------------------------------------------------------ parts */

/* Whether `l` has layers of the UNet (unet = 1) or of the text encoders (0);
 * parts without any are skipped, so a text-only LoRA adds nothing to the UNet. */
static int has_part(const zl_lora *l, int unet) {
    for (int i = 0; i < l->n; i++)
        if ((l->layers[i].part == ZL_PART_UNET) == unet) return 1;
    return 0;
}

static int load_unet(zl_pipeline *p) {
    if (p->unet) return ZL_OK;
    zl_unet_load_opts o = {.config_path = p->unet_config, .weights = p->weights};
    int rc = zl_unet_load_model(&p->paths, &o, &p->unet);
    if (rc) return rc;
    p->ucfg = *zl_unet_get_config(p->unet);
    for (int i = 0; i < p->n_loras; i++) {
        if (!has_part(p->loras[i].lora, 1)) continue;
        rc = zl_unet_add_lora(p->unet, p->loras[i].lora, p->loras[i].weight, ZL_UNET_LORA_FOLD, NULL);
        if (rc) {
            zl_unet_free(p->unet);
            p->unet = NULL;
            return rc;
        }
    }
    return ZL_OK;
}

static int load_vae(zl_pipeline *p) {
    if (p->vae) return ZL_OK;
    if (!p->paths.vae_weights)
        return zl_set_error(ZL_ENOTFOUND, "%s: the model has no VAE (no vae/ folder or first_stage_model.* tensors)",
                            p->paths.root);
    zl_vae_load_opts o = {.config_path = p->vae_config, .family = p->paths.family};
    int rc = zl_vae_load_model(&p->paths, &o, &p->vae);
    if (rc) return rc;
    if (p->vae_tile != ZL_VAE_TILE_AUTO || p->vae_tile_size || p->vae_tile_overlap) {
        rc = zl_vae_set_tiling(p->vae, p->vae_tile, p->vae_tile_size ? p->vae_tile_size : 80,
                               p->vae_tile_overlap ? p->vae_tile_overlap : 16);
        if (rc) {
            zl_vae_free(p->vae);
            p->vae = NULL;
            return rc;
        }
    }
    p->vae_scale = zl_vae_scale(p->vae);
    return ZL_OK;
}

static int load_text(zl_pipeline *p) {
    if (p->text) return ZL_OK;
    if (!p->paths.te1_weights)
        return zl_set_error(ZL_ENOTFOUND, "%s: the model has no text encoder", p->paths.root);
    zl_text_load_opts o = {.te1_config = p->te1_config, .te2_config = p->te2_config};
    int rc = zl_text_load(&p->paths, &o, &p->text);
    if (rc) return rc;
    if (p->clip_skip > 1 && (rc = zl_text_set_clip_skip(p->text, p->clip_skip))) {
        zl_text_free(p->text);
        p->text = NULL;
        return rc;
    }
    for (int i = 0; i < p->n_loras; i++) {
        if (!has_part(p->loras[i].lora, 0)) continue;
        rc = zl_text_apply_lora(p->text, p->loras[i].lora, p->loras[i].weight);
        if (rc) {
            zl_text_free(p->text);
            p->text = NULL;
            return rc;
        }
    }
    for (int i = 0; i < p->n_emb; i++)
        if ((rc = zl_text_load_embedding(p->text, p->emb_path[i], p->emb_trigger[i], NULL))) {
            zl_text_free(p->text);
            p->text = NULL;
            return rc;
        }
    return ZL_OK;
}

int zl_pipeline_add_embedding(zl_pipeline *p, const char *path, const char *trigger, int *n_vectors) {
    int rc = load_text(p);
    if (rc) return rc;
    char **np = realloc(p->emb_path, sizeof *np * (size_t)(p->n_emb + 1));
    if (np) p->emb_path = np;
    char **nt = np ? realloc(p->emb_trigger, sizeof *nt * (size_t)(p->n_emb + 1)) : NULL;
    if (nt) p->emb_trigger = nt;
    char *a = nt ? strdup(path) : NULL, *b = a ? strdup(trigger) : NULL;
    if (!b) {
        free(a);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    if ((rc = zl_text_load_embedding(p->text, path, trigger, n_vectors))) {
        free(a);
        free(b);
        return rc;
    }
    p->emb_path[p->n_emb] = a;
    p->emb_trigger[p->n_emb++] = b;
    return ZL_OK;
}

zl_unet *zl_pipeline_unet(zl_pipeline *p) { return load_unet(p) ? NULL : p->unet; }
zl_vae *zl_pipeline_vae(zl_pipeline *p) { return load_vae(p) ? NULL : p->vae; }
zl_text *zl_pipeline_text(zl_pipeline *p) { return load_text(p) ? NULL : p->text; }

void zl_pipeline_release(zl_pipeline *p, unsigned mask) {
    if (!p) return;
    if (mask & ZL_PIPE_TEXT) { zl_text_free(p->text); p->text = NULL; }
    if (mask & ZL_PIPE_UNET) { zl_unet_free(p->unet); p->unet = NULL; }
    if (mask & ZL_PIPE_VAE) { zl_vae_free(p->vae); p->vae = NULL; }
}

void zl_pipeline_free(zl_pipeline *p) {
    if (!p) return;
    zl_pipeline_release(p, ZL_PIPE_TEXT | ZL_PIPE_UNET | ZL_PIPE_VAE);
    for (int i = 0; i < p->n_loras; i++)
        if (p->loras[i].owned) zl_lora_free(p->loras[i].lora);
    free(p->loras);
    for (int i = 0; i < p->n_emb; i++) {
        free(p->emb_path[i]);
        free(p->emb_trigger[i]);
    }
    free(p->emb_path);
    free(p->emb_trigger);
    zl_model_paths_free(&p->paths);
    free(p->unet_config); free(p->vae_config); free(p->te1_config); free(p->te2_config);
    free(p);
}

int zl_pipeline_open(const char *model, const zl_pipeline_opts *opts, zl_pipeline **out) {
    *out = NULL;
    if (!model) return zl_set_error(ZL_EINVAL, "no model given");
    zl_pipeline_opts o = {0};
    if (opts) o = *opts;
    zl_pipeline *p = calloc(1, sizeof *p);
    if (!p) return zl_set_error(ZL_ENOMEM, "out of memory");
    int rc = zl_model_paths_resolve(model, &p->paths);
    if (rc) { free(p); return rc; }
    if ((o.vae && (rc = zl_model_paths_set_vae(&p->paths, o.vae))) ||
        (rc = zl_sched_override_apply(&p->paths.sched, &o.sched))) {
        zl_model_paths_free(&p->paths);
        free(p);
        return rc;
    }
    p->unet_config = dup_or_null(o.unet_config);
    p->vae_config = dup_or_null(o.vae_config);
    p->te1_config = dup_or_null(o.te1_config);
    p->te2_config = dup_or_null(o.te2_config);
    p->weights = o.weights;
    p->vae_tile = o.vae_tile;
    p->vae_tile_size = o.vae_tile_size;
    p->vae_tile_overlap = o.vae_tile_overlap;
    p->clip_skip = o.clip_skip;
    /* Everything is mapped now so that a broken part is reported before any
     * compute; mapping costs little memory until pages are touched. */
    if ((rc = load_unet(p)) || (rc = load_vae(p)) || (rc = load_text(p))) {
        zl_pipeline_free(p);
        return rc;
    }
    if (zl_vae_get_config(p->vae)->latent_channels != p->ucfg.in_channels) {
        rc = zl_set_error(ZL_ESHAPE, "%s: the VAE's latents have %d channels but the UNet takes %d", p->paths.vae_weights,
                          zl_vae_get_config(p->vae)->latent_channels, p->ucfg.in_channels);
        zl_pipeline_free(p);
        return rc;
    }
    if (zl_text_context_dim(p->text) != p->ucfg.cross_attention_dim) {
        rc = zl_set_error(ZL_ESHAPE, "%s: the text encoders give a context of width %d but the UNet takes %d", model,
                          zl_text_context_dim(p->text), p->ucfg.cross_attention_dim);
        zl_pipeline_free(p);
        return rc;
    }
    if (p->ucfg.has_text_time && zl_text_pooled_dim(p->text) != zl_unet_pooled_dim(p->unet)) {
        rc = zl_set_error(ZL_ESHAPE, "%s: the text encoders give a pooled vector of width %d but the UNet takes %d",
                          model, zl_text_pooled_dim(p->text), zl_unet_pooled_dim(p->unet));
        zl_pipeline_free(p);
        return rc;
    }
    *out = p;
    return ZL_OK;
}

const zl_sched_config *zl_pipeline_sched(const zl_pipeline *p) { return &p->paths.sched; }

zl_family zl_pipeline_family(const zl_pipeline *p) { return p->ucfg.family; }
const zl_model_paths *zl_pipeline_paths(const zl_pipeline *p) { return &p->paths; }
const zl_unet_config *zl_pipeline_unet_config(const zl_pipeline *p) { return &p->ucfg; }
int zl_pipeline_vae_scale(const zl_pipeline *p) { return p->vae_scale; }

void zl_pipeline_native_size(const zl_pipeline *p, int *width, int *height) {
    int s = p->ucfg.sample_size > 0 ? p->ucfg.sample_size : 64;
    *width = *height = s * p->vae_scale;
}


int zl_pipeline_check_size(const zl_pipeline *p, int width, int height) {
    if (width <= 0 || height <= 0 || width > ZL_IMAGE_MAX_SIDE || height > ZL_IMAGE_MAX_SIDE)
        return zl_set_error(ZL_EINVAL, "image size %dx%d: each side must be between %d and %d", width, height,
                            p->vae_scale, ZL_IMAGE_MAX_SIDE);
    if (width % p->vae_scale || height % p->vae_scale)
        return zl_set_error(ZL_EINVAL, "image size %dx%d is not a multiple of %d (the VAE's pixels per latent cell)",
                            width, height, p->vae_scale);
    /* Any multiple of the VAE scale: the UNet resizes odd levels as diffusers does. */
    return ZL_OK;
}

/* ------------------------------------------------------------------ LoRAs */

/* Room for one more record, so that recording never fails after a fold. */
static int reserve_lora(zl_pipeline *p) {
    if (p->n_loras < p->cap_loras) return ZL_OK;
    int cap = p->cap_loras ? 2 * p->cap_loras : 4;
    lora_rec *r = realloc(p->loras, sizeof *r * (size_t)cap);
    if (!r) return zl_set_error(ZL_ENOMEM, "out of memory");
    p->loras = r;
    p->cap_loras = cap;
    return ZL_OK;
}

/* Fold `l` into the loaded parts; on failure the parts are as before. */
static int apply_lora(zl_pipeline *p, const zl_lora *l, float w) {
    const char *name = l->path ? l->path : "LoRA";
    if (l->family != ZL_FAMILY_UNKNOWN && l->family != p->ucfg.family)
        return zl_set_error(ZL_EUNSUPPORTED, "%s: a LoRA for %s, but the model %s is %s", name,
                            zl_family_name(l->family), p->paths.root, zl_family_name(p->ucfg.family));
    int rc;
    const int unet = has_part(l, 1), text = has_part(l, 0);
    if (p->unet && unet && (rc = zl_unet_add_lora(p->unet, l, w, ZL_UNET_LORA_FOLD, NULL)))
        return strstr(zl_errmsg(), name) ? rc : zl_error_prefix(rc, "%s", name);
    if (p->text && text && (rc = zl_text_apply_lora(p->text, l, w))) {
        /* Undo the UNet fold: clear and fold back the LoRAs recorded so far. */
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", zl_errmsg());
        if (p->unet && unet && !zl_unet_clear_loras(p->unet))
            for (int i = 0; i < p->n_loras; i++)
                if (has_part(p->loras[i].lora, 1))
                    zl_unet_add_lora(p->unet, p->loras[i].lora, p->loras[i].weight, ZL_UNET_LORA_FOLD, NULL);
        return strstr(msg, name) ? zl_set_error(rc, "%s", msg) : zl_set_error(rc, "%s: %s", name, msg);
    }
    return ZL_OK;
}

int zl_pipeline_add_lora(zl_pipeline *p, const zl_lora *lora, float weight) {
    if (!isfinite(weight)) return zl_set_error(ZL_EINVAL, "LoRA weight %g is not a number", (double)weight);
    int rc = reserve_lora(p);
    if (rc || (rc = apply_lora(p, lora, weight))) return rc;
    /* the record holds a non-const pointer but never frees a borrowed LoRA */
    p->loras[p->n_loras++] = (lora_rec){.lora = (zl_lora *)(uintptr_t)lora, .weight = weight, .owned = 0};
    return ZL_OK;
}

int zl_pipeline_load_lora(zl_pipeline *p, const char *path, float weight, const char *adapter_config) {
    if (!isfinite(weight)) return zl_set_error(ZL_EINVAL, "%s: LoRA weight %g is not a number", path, (double)weight);
    zl_lora_load_opts o = {.adapter_config = adapter_config, .unet_config = &p->ucfg, .expect_family = p->ucfg.family,
                           .allow_dora = 1}; /* folded below: DoRA applies */
    if (p->text) {
        const zl_clip *c1 = zl_text_encoder(p->text, ZL_PART_TE1), *c2 = zl_text_encoder(p->text, ZL_PART_TE2);
        o.te1_config = c1 ? zl_clip_get_config(c1) : NULL;
        o.te2_config = c2 ? zl_clip_get_config(c2) : NULL;
    }
    zl_lora *l = NULL;
    int rc = reserve_lora(p);
    if (rc) return rc;
    rc = zl_lora_load(path, &o, &l);
    if (rc) {
        if (!strstr(zl_errmsg(), path)) zl_error_prefix(rc, "%s", path);
        return rc;
    }
    if ((rc = apply_lora(p, l, weight))) {
        zl_lora_free(l);
        return rc;
    }
    p->loras[p->n_loras++] = (lora_rec){.lora = l, .weight = weight, .owned = 1};
    return ZL_OK;
}

/* ------------------------------------------------------------------ conditioning */

void zl_cond_free(zl_cond *c) {
    if (!c) return;
    free(c->embeds);
    free(c->pooled);
    memset(c, 0, sizeof *c);
}

/* A1111/ComfyUI emphasis "(text:1.2)": the first such span, or NULL. */
static const char *weighted_span(const char *s, int *len) {
    for (const char *o = s ? strchr(s, '(') : NULL; o; o = strchr(o + 1, '(')) {
        const char *c = strchr(o, ')');
        if (!c) return NULL;
        const char *colon = NULL;
        for (const char *q = o + 1; q < c; q++)
            if (*q == ':') colon = q;
        if (!colon || colon == o + 1) continue;
        char *end;
        double w = strtod(colon + 1, &end);
        while (*end == ' ') end++;
        if (end == c && end > colon + 1 && w >= 0 && w <= 10) {
            *len = (int)(c - o + 1);
            return o;
        }
    }
    return NULL;
}

/* A1111's extra-network tag "<lora:name:w>" (or <lyco:...>, <hypernet:...>): the first, or NULL. */
static const char *network_tag(const char *s, int *len) {
    static const char *const kinds[3] = {"<lora:", "<lyco:", "<hypernet:"};
    const char *best = NULL;
    for (int i = 0; i < 3 && s; i++) {
        const char *o = strstr(s, kinds[i]);
        if (o && (!best || o < best)) best = o;
    }
    const char *c = best ? strchr(best, '>') : NULL;
    if (!c) return NULL;
    *len = (int)(c - best + 1);
    return best;
}

static int encode_long(zl_pipeline *p, const char *prompt, const char *negative, int emphasis, zl_cond *out);

/* A1111's prompt editing "[from:to:when]" / "[to:when]" or alternation "[a|b]": the first, or NULL
 * (a bracket holding two ':' or one ':' before a number, or a '|'). */
static const char *editing_span(const char *s, int *len) {
    for (const char *o = s ? strchr(s, '[') : NULL; o; o = strchr(o + 1, '[')) {
        const char *c = strchr(o, ']');
        if (!c) return NULL;
        int colons = 0, bar = 0;
        const char *last = NULL;
        for (const char *q = o + 1; q < c; q++) {
            if (*q == '[') break;
            if (*q == ':') colons++, last = q;
            if (*q == '|') bar = 1;
        }
        char *end = NULL;
        if (last) strtod(last + 1, &end);
        if (bar || colons == 2 || (colons == 1 && end && end > last + 1 && end == c)) {
            *len = (int)(c - o + 1);
            return o;
        }
    }
    return NULL;
}

static void warn_emphasis(const char *prompt, const char *negative, int emphasis) {
    for (int k = 0; k < 2; k++) {
        int n = 0;
        const char *e = editing_span(k ? negative : prompt, &n);
        if (e)
            zl_warn("%s: '%.*s' is A1111's prompt editing / alternation syntax, which changes the prompt during "
                    "sampling; it is not run here: the text is encoded as %s",
                    k ? "negative prompt" : "prompt", n > 60 ? 60 : n, e,
                    emphasis ? "bracketed text (weight 1/1.1)" : "written");
        const char *w = emphasis ? NULL : weighted_span(k ? negative : prompt, &n);
        if (w)
            zl_warn("%s: '%.*s' is A1111/ComfyUI emphasis syntax; prompts are encoded as written (as diffusers "
                    "does), weights and parentheses included (--long-prompt applies A1111's emphasis)",
                    k ? "negative prompt" : "prompt", n > 60 ? 60 : n, w);
        if ((w = network_tag(k ? negative : prompt, &n)))
            zl_warn("%s: '%.*s' is an A1111 LoRA tag; it is %s and loads nothing: give the file with "
                    "--lora FILE[:WEIGHT]",
                    k ? "negative prompt" : "prompt", n > 80 ? 80 : n, w,
                    emphasis ? "removed from the prompt (as A1111 does)" : "encoded as text");
    }
}

/* A1111's extra-network tags <name:args> (its re_extra_net <(\w+):([^>]+)>) removed; malloc'd. */
static char *strip_network_tags(const char *s) {
    char *o = malloc(strlen(s) + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (const char *c = s; *c;) {
        if (*c == '<') {
            const char *q = c + 1;
            while (isalnum((unsigned char)*q) || *q == '_') q++;
            const char *gt = q > c + 1 && *q == ':' && q[1] && q[1] != '>' ? strchr(q + 1, '>') : NULL;
            if (gt) {
                c = gt + 1;
                continue;
            }
        }
        o[k++] = *c++;
    }
    o[k] = 0;
    return o;
}

int zl_pipeline_encode_long(zl_pipeline *p, const char *prompt, const char *negative, int emphasis, zl_cond *out) {
    memset(out, 0, sizeof *out);
    warn_emphasis(prompt, negative, emphasis);
    if (emphasis) { /* A1111's prompt handling: its extra-network tags are not text */
        char *sp = prompt ? strip_network_tags(prompt) : NULL, *sn = negative ? strip_network_tags(negative) : NULL;
        int rc = (prompt && !sp) || (negative && !sn) ? zl_set_error(ZL_ENOMEM, "out of memory")
                                                       : encode_long(p, sp, sn, emphasis, out);
        free(sp);
        free(sn);
        return rc;
    }
    return encode_long(p, prompt, negative, emphasis, out);
}

static int encode_long(zl_pipeline *p, const char *prompt, const char *negative, int emphasis, zl_cond *out) {
    int rc = load_text(p);
    if (rc) return rc;
    int D = zl_text_context_dim(p->text), P = zl_text_pooled_dim(p->text);
    int kp = 0, kn = 0;
    if ((rc = zl_text_count_chunks(p->text, prompt, emphasis, &kp))) return zl_error_prefix(rc, "prompt");
    if ((rc = zl_text_count_chunks(p->text, negative, emphasis, &kn))) return zl_error_prefix(rc, "negative prompt");
    const int k = kp > kn ? kp : kn;
    float *e[2] = {NULL, NULL};
    out->D = D;
    out->P = P;
    out->pooled = P ? malloc(2 * (size_t)P * sizeof(float)) : NULL;
    if (P && !out->pooled) return zl_set_error(ZL_ENOMEM, "out of memory for the prompt embeddings");
    int zeros = !negative && p->ucfg.family == ZL_FAMILY_SDXL, got[2] = {0, 0};
    rc = zl_text_encode_prompt_long(p->text, negative ? negative : "", emphasis, k, zeros, &e[0], out->pooled, &got[0]);
    if (rc) zl_error_prefix(rc, "negative prompt");
    if (!rc && (rc = zl_text_encode_prompt_long(p->text, prompt ? prompt : "", emphasis, k, 0, &e[1],
                                                out->pooled ? out->pooled + P : NULL, &got[1])))
        zl_error_prefix(rc, "prompt");
    const size_t TD = (size_t)k * ZL_CLIP_CTX * D;
    if (!rc && (got[0] != k || got[1] != k))
        rc = zl_set_error(ZL_EINVAL, "prompt chunks: %d and %d, expected %d", got[0], got[1], k);
    if (!rc && !(out->embeds = malloc(2 * TD * sizeof(float))))
        rc = zl_set_error(ZL_ENOMEM, "out of memory for the prompt embeddings");
    if (!rc) {
        memcpy(out->embeds, e[0], TD * sizeof(float));
        memcpy(out->embeds + TD, e[1], TD * sizeof(float));
        out->T = k * ZL_CLIP_CTX;
    }
    free(e[0]);
    free(e[1]);
    if (rc) zl_cond_free(out);
    return rc;
}

int zl_pipeline_encode(zl_pipeline *p, const char *prompt, const char *negative, zl_cond *out) {
    memset(out, 0, sizeof *out);
    warn_emphasis(prompt, negative, 0);
    int rc = load_text(p);
    if (rc) return rc;
    int D = zl_text_context_dim(p->text), P = zl_text_pooled_dim(p->text);
    const size_t TD = (size_t)ZL_CLIP_CTX * D;
    out->D = D;
    out->P = P;
    out->embeds = malloc(2 * TD * sizeof(float)); // [2, 77, D]
    out->T = ZL_CLIP_CTX;
    out->pooled = P ? malloc(2 * (size_t)P * sizeof(float)) : NULL; // [2, P]
    if (!out->embeds || (P && !out->pooled)) {
        zl_cond_free(out);
        return zl_set_error(ZL_ENOMEM, "out of memory for the prompt embeddings");
    }
    /* diffusers: SDXL zeroes the negative only when none was given at all */
    int zeros = !negative && p->ucfg.family == ZL_FAMILY_SDXL;
    rc = zl_text_encode_prompt(p->text, negative ? negative : "", zeros, out->embeds, out->pooled);
    if (rc) zl_error_prefix(rc, "negative prompt");
    if (!rc && (rc = zl_text_encode_prompt(p->text, prompt ? prompt : "", 0, out->embeds + TD,
                                           out->pooled ? out->pooled + P : NULL)))
        zl_error_prefix(rc, "prompt");
    if (rc) zl_cond_free(out);
    return rc;
}

/* ------------------------------------------------------------------ sampling */

/* diffusers' rescale_noise_cfg: the guided output's std brought to the
 * conditional output's, mixed by phi (std over all values of the sample; the
 * unbiased correction cancels in the ratio). */
static void rescale_cfg(float *out, const float *cond, size_t n, float phi) {
    double s[2] = {0, 0}, q[2] = {0, 0};
    for (size_t i = 0; i < n; i++) {
        s[0] += out[i];
        q[0] += (double)out[i] * out[i];
        s[1] += cond[i];
        q[1] += (double)cond[i] * cond[i];
    }
    double var[2];
    for (int k = 0; k < 2; k++) {
        double m = s[k] / (double)n;
        var[k] = q[k] / (double)n - m * m;
    }
    if (!(var[0] > 0)) return; /* a constant output: nothing to rescale */
    const float f = (float)(phi * sqrt((var[1] > 0 ? var[1] : 0) / var[0]) + (1.0 - phi));
    for (size_t i = 0; i < n; i++) out[i] *= f;
}

int zl_txt2img_sample(zl_unet *unet, int scale, const zl_cond *c, const zl_gen_params *g, float *latent) {
    const zl_unet_config *cfg = zl_unet_get_config(unet);
    if (scale < 1) return zl_set_error(ZL_EINVAL, "VAE scale %d", scale);
    if (g->width <= 0 || g->height <= 0 || g->width % scale || g->height % scale)
        return zl_set_error(ZL_EINVAL, "image size %dx%d is not a multiple of %d", g->width, g->height, scale);
    if (g->steps < 1) return zl_set_error(ZL_EINVAL, "--steps must be at least 1 (got %d)", g->steps);
    if (!isfinite(g->cfg)) return zl_set_error(ZL_EINVAL, "guidance scale is not a number");
    if (c->D != cfg->cross_attention_dim)
        return zl_set_error(ZL_ESHAPE, "prompt embeddings of width %d, but the UNet takes %d", c->D,
                            cfg->cross_attention_dim);
    int P = zl_unet_pooled_dim(unet);
    if (cfg->has_text_time && (c->P != P || !c->pooled))
        return zl_set_error(ZL_ESHAPE, "pooled embeddings of width %d, but the UNet takes %d", c->P, P);
    const int h = g->height / scale, w = g->width / scale, C = cfg->in_channels, T = c->T > 0 ? c->T : ZL_CLIP_CTX;
    const size_t n = (size_t)C * h * w;
    const int guided = g->cfg > 1.0f; /* diffusers: do_classifier_free_guidance = g > 1 */
    const int B = guided ? 2 : 1;

    int k0 = 0; /* img2img: the first step run */
    if (g->init_latent) {
        if (!(g->strength > 0 && g->strength <= 1))
            return zl_set_error(ZL_EINVAL, "--strength %g is outside (0, 1]", g->strength);
        int run = (int)(g->steps * g->strength); /* diffusers: min(int(steps * strength), steps) */
        if (run > g->steps) run = g->steps;
        if (run < 1)
            return zl_set_error(ZL_EINVAL, "--strength %g of %d steps runs no step (int(%d x %g) = 0); raise --steps or "
                                           "--strength", g->strength, g->steps, g->steps, g->strength);
        k0 = g->steps - run;
    }
    if (!isfinite(g->cfg_rescale) || g->cfg_rescale < 0 || g->cfg_rescale > 1)
        return zl_set_error(ZL_EINVAL, "guidance rescale %g outside [0, 1]", (double)g->cfg_rescale);
    zl_schedule sch;
    int rc = zl_schedule_from_config(&sch, g->sched);
    if (rc) return rc;
    zl_sampler smp;
    if ((rc = zl_sampler_init_ex(&smp, &sch, g->sampler, g->sigmas, g->steps, g->seed))) return rc;
    float *in = malloc(sizeof(float) * B * n);  // [B, C, h, w]
    float *eps = malloc(sizeof(float) * B * n); // [B, C, h, w]
    float ts[2], tid[12];                       // [B], [B, 6]
    if (!in || !eps) {
        rc = zl_set_error(ZL_ENOMEM, "out of memory for %dx%d latents", w, h);
        goto done;
    }
    if (g->initial_noise) {
        memcpy(latent, g->initial_noise, n * sizeof(float));
    } else {
        zl_rng r;
        zl_rng_init(&r, g->seed, 0);
        zl_rng_normal(&r, 0, latent, n);
    }
    if (g->init_latent) {
        /* the scheduler's add_noise at the first step run: x0 + noise * sigma (in Euler's sigma
         * space; the same point as DPM-Solver's alpha x0 + sigma_vp noise) */
        const float sg = smp.sigmas[k0];
        for (size_t i = 0; i < n; i++) latent[i] = g->init_latent[i] + latent[i] * sg;
    } else {
        for (size_t i = 0; i < n; i++) latent[i] *= smp.init_noise_sigma;
    }
    for (int b = 0; b < B; b++) {
        float *t = tid + 6 * b;
        t[0] = (float)g->height; t[1] = (float)g->width; t[2] = 0; t[3] = 0;
        t[4] = (float)g->height; t[5] = (float)g->width;
    }
    /* Unguided runs feed only the prompt half of the conditioning. */
    const size_t off_ctx = guided ? 0 : (size_t)T * c->D, off_pool = guided ? 0 : (size_t)c->P;
    zl_unet_input ui = {.B = B, .H = h, .W = w, .T = T, .sample = in, .timestep = ts, .context = c->embeds + off_ctx,
                        .text_embeds = cfg->has_text_time ? c->pooled + off_pool : NULL,
                        .time_ids = cfg->has_text_time ? tid : NULL};
    zl_progress pr;
    if (g->progress) zl_progress_begin(&pr, g->progress_label ? g->progress_label : "sampling", g->steps - k0);
    for (int k = k0; k < g->steps; k++) {
        float s = zl_sampler_input_scale(&smp, k);
        for (int b = 0; b < B; b++) {
            float *dst = in + (size_t)b * n;
            for (size_t i = 0; i < n; i++) dst[i] = latent[i] * s;
            ts[b] = smp.timesteps[k];
        }
        if ((rc = zl_unet_forward(unet, &ui, eps))) {
            zl_error_prefix(rc, "step %d of %d", k + 1, g->steps);
            break;
        }
        if (guided) {
            const float gs = g->cfg;
            float *eu = eps, *ec = eps + n;
            for (size_t i = 0; i < n; i++) eu[i] = eu[i] + gs * (ec[i] - eu[i]);
            if (g->cfg_rescale > 0) rescale_cfg(eu, ec, n, g->cfg_rescale);
        }
        if (sch.prediction == ZL_PRED_V) zl_v_to_eps(smp.sigmas[k], latent, eps, eps, n);
        if ((rc = zl_sampler_step(&smp, k, latent, eps, n))) break;
        for (size_t i = 0; i < n; i++)
            if (!isfinite(latent[i])) {
                rc = zl_set_error(ZL_ENUMERIC, "step %d of %d: the latent is no longer finite", k + 1, g->steps);
                break;
            }
        if (rc) break;
        if (g->progress) zl_progress_update(&pr, k + 1 - k0, NULL);
    }
    if (g->progress) {
        if (rc) pr.active = 0; /* no "elapsed" line for a failed run */
        else zl_progress_end(&pr, NULL);
    }
done:
    zl_sampler_free(&smp);
    free(in);
    free(eps);
    return rc;
}

int zl_pipeline_sample(zl_pipeline *p, const zl_cond *c, const zl_gen_params *g, float *latent) {
    zl_gen_params gg = *g;
    if (!gg.width || !gg.height) {
        int nw, nh;
        zl_pipeline_native_size(p, &nw, &nh);
        if (!gg.width) gg.width = nw;
        if (!gg.height) gg.height = nh;
    }
    if (!gg.sched) gg.sched = &p->paths.sched;
    int rc = zl_pipeline_check_size(p, gg.width, gg.height);
    if (rc) return rc;
    if ((rc = load_unet(p))) return rc;
    return zl_txt2img_sample(p->unet, p->vae_scale, c, &gg, latent);
}

/* One axis of the bilinear resize: for each output index, the two source indices and the
 * weight of the second. */
static void bilinear_axis(int n, int n2, int *i0, int *i1, float *t) {
    const double sc = (double)n / n2;
    for (int i = 0; i < n2; i++) {
        double src = (i + 0.5) * sc - 0.5;
        if (src < 0) src = 0;
        int a = (int)src;
        if (a > n - 1) a = n - 1;
        i0[i] = a;
        i1[i] = a + 1 < n ? a + 1 : n - 1;
        t[i] = (float)(src - a);
    }
}

int zl_latent_resize_bilinear(const float *x, int C, int h, int w, float *y, int h2, int w2) {
    if (C < 1 || h < 1 || w < 1 || h2 < 1 || w2 < 1)
        return zl_set_error(ZL_EINVAL, "resize of a %d x %d x %d latent to %d x %d", C, h, w, h2, w2);
    int *r0 = malloc(sizeof(int) * (size_t)(h2 + w2) * 2);
    float *rt = malloc(sizeof(float) * (size_t)(h2 + w2));
    if (!r0 || !rt) {
        free(r0), free(rt);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    int *ri0 = r0, *ri1 = r0 + h2, *ci0 = r0 + 2 * h2, *ci1 = r0 + 2 * h2 + w2;
    float *rtt = rt, *ctt = rt + h2;
    bilinear_axis(h, h2, ri0, ri1, rtt);
    bilinear_axis(w, w2, ci0, ci1, ctt);
    for (int c = 0; c < C; c++) {
        const float *xc = x + (size_t)c * h * w;
        for (int i = 0; i < h2; i++) {
            const float *ra = xc + (size_t)ri0[i] * w, *rb = xc + (size_t)ri1[i] * w;
            float *yr = y + ((size_t)c * h2 + i) * w2;
            for (int j = 0; j < w2; j++) {
                const float top = ra[ci0[j]] + ctt[j] * (ra[ci1[j]] - ra[ci0[j]]);
                const float bot = rb[ci0[j]] + ctt[j] * (rb[ci1[j]] - rb[ci0[j]]);
                yr[j] = top + rtt[i] * (bot - top);
            }
        }
    }
    free(r0), free(rt);
    return ZL_OK;
}

int zl_pipeline_encode_image(zl_pipeline *p, const zl_image *image, int width, int height, float *latent) {
    int rc = zl_pipeline_check_size(p, width, height);
    if (rc) return rc;
    if ((rc = load_vae(p))) return rc;
    if (zl_vae_get_config(p->vae)->latent_channels != p->ucfg.in_channels)
        return zl_set_error(ZL_EUNSUPPORTED, "the VAE's latents have %d channels but the UNet takes %d",
                            zl_vae_get_config(p->vae)->latent_channels, p->ucfg.in_channels);
    zl_image fit = {0};
    rc = zl_image_fit(image, width, height, ZL_RESIZE_AREA, &fit);
    if (!rc) rc = zl_vae_encode_image(p->vae, &fit, latent);
    zl_image_free(&fit);
    return rc;
}

/* ------------------------------------------------------------------ decoding */

int zl_pipeline_decode(zl_pipeline *p, const float *latent, int h, int w, float *image, zl_image *img) {
    if (img) memset(img, 0, sizeof *img);
    int rc = load_vae(p);
    if (rc) return rc;
    const zl_vae_config *vc = zl_vae_get_config(p->vae);
    const int s = p->vae_scale, C = vc->latent_channels, Co = vc->out_channels;
    const size_t nz = (size_t)C * h * w, npx = (size_t)Co * h * s * w * s;
    float *z = malloc(sizeof(float) * nz);                       // [C, h, w]
    float *x = image ? image : malloc(sizeof(float) * npx);      // [Co, h*s, w*s]
    if (!z || !x) {
        rc = zl_set_error(ZL_ENOMEM, "out of memory decoding a %dx%d latent", w, h);
        goto done;
    }
    /* diffusers divides (not multiplies by the reciprocal); keep the same rounding */
    for (size_t i = 0; i < nz; i++) z[i] = latent[i] / vc->scaling_factor;
    if ((rc = zl_vae_decode(p->vae, z, 1, h, w, x))) goto done;
    if (img) {
        if (Co != 3) {
            rc = zl_set_error(ZL_EUNSUPPORTED, "the VAE gives %d channels; only RGB images can be written", Co);
            goto done;
        }
        rc = zl_image_from_tensor(x, h * s, w * s, img);
    }
done:
    free(z);
    if (x != image) free(x);
    return rc;
}

int zl_pipeline_generate(zl_pipeline *p, const char *prompt, const char *negative, const zl_gen_params *g,
                         float *latent, zl_image *img) {
    if (img) memset(img, 0, sizeof *img);
    zl_gen_params gg = *g;
    int nw, nh;
    zl_pipeline_native_size(p, &nw, &nh);
    if (!gg.width) gg.width = nw;
    if (!gg.height) gg.height = nh;
    int rc = zl_pipeline_check_size(p, gg.width, gg.height);
    if (rc) return rc;
    zl_cond c;
    if ((rc = zl_pipeline_encode(p, prompt, negative, &c))) return rc;
    const int s = p->vae_scale, h = gg.height / s, w = gg.width / s;
    const size_t n = (size_t)p->ucfg.in_channels * h * w;
    float *lat = latent ? latent : malloc(n * sizeof(float)); // [C, h, w]
    if (!lat) {
        zl_cond_free(&c);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    rc = zl_pipeline_sample(p, &c, &gg, lat);
    zl_cond_free(&c);
    if (!rc) rc = zl_pipeline_decode(p, lat, h, w, NULL, img);
    if (lat != latent) free(lat);
    return rc;
}
