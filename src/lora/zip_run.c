/* The end-to-end ZipLoRA driver (include/ziplora/ziprun.h): owns a run's
 * state -- the model (through the txt2img pipeline, or a bare UNet for
 * --fixed-inputs), the two LoRAs, the prompts and their conditionings, the
 * reference latents, the draws and their targets, the loss curve -- the
 * built-in full mode, the choice of mode, and eval-merge's held-out
 * measurement. The outputs (merged LoRA, mergers, report, plot, preview) are
 * written by zip_run_out.c from the state kept here. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ziplora/fileio.h"
#include "nn/ops.h"
#include "ziplora/dora.h"
#include "ziplora/flops.h"
#include "ziplora/pipeline.h"
#include "ziplora/progress.h"
#include "zip_run_internal.h"

void zl_ziprun_params_default(zl_ziprun_params *p) {
    memset(p, 0, sizeof *p);
    p->ref_count = 2;
    p->ref_steps = 20;
    p->steps = 100;
    p->lr = 0.01;
    p->lambda = 0.01;
    p->mode = "auto";
    p->budget_s = 1800;
    p->grad_mode = ZL_UNET_GRAD_RECOMPUTE;
    p->format = ZL_FORMAT_KOHYA;
    p->dtype = ZL_DT_INVALID;
    p->style_scale = 1.0f;
    p->progress = 1;
}

/* ------------------------------------------------------------------ prompts */

static int blank(const char *s) {
    for (; s && *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r') return 0;
    return 1;
}

int zl_ziprun_default_prompt(const zl_lora *l, char **out) {
    *out = NULL;
    const char *tp = zl_lora_meta(l, "modelspec.trigger_phrase");
    if (tp && !blank(tp)) {
        *out = strdup(tp);
        return *out ? ZL_OK : zl_set_error(ZL_ENOMEM, "out of memory");
    }
    char **tags = NULL;
    int n = 0;
    int rc = zl_lora_top_tags(l, 1, &tags, &n);
    if (rc == ZL_ENOTFOUND && !zl_lora_meta(l, "ss_tag_frequency"))
        return zl_set_error(ZL_ENOTFOUND,
                            "%s: no prompt in its metadata (neither modelspec.trigger_phrase nor ss_tag_frequency)",
                            l->path ? l->path : "LoRA");
    if (rc == ZL_EFORMAT) rc = ZL_ENOTFOUND; /* the caller asks for the flag either way */
    if (!rc) *out = tags[0];
    else free(tags ? tags[0] : NULL);
    free(tags);
    return rc;
}

/* ------------------------------------------------------------------ small helpers */

static int add_note(zl_ziprun *r, const char *text) {
    char **n = realloc(r->notes, sizeof *n * (size_t)(r->n_notes + 1));
    if (!n) return zl_set_error(ZL_ENOMEM, "out of memory");
    r->notes = n;
    if (!(r->notes[r->n_notes] = strdup(text))) return zl_set_error(ZL_ENOMEM, "out of memory");
    r->n_notes++;
    return ZL_OK;
}

int zl_ziprun_note(zl_ziprun *r, const char *text) { return add_note(r, text); }
void zl_ziprun_set_interrupted(zl_ziprun *r) { r->interrupted = 1; }
int zl_ziprun_interrupted(const zl_ziprun *r) { return r->interrupted; }

static int lora_has_text(const zl_lora *l) {
    for (int i = 0; l && i < l->n; i++)
        if (l->layers[i].part != ZL_PART_UNET) return 1;
    return 0;
}

static float *falloc(size_t n) { return malloc((n ? n : 1) * sizeof(float)); }

/* A float tensor of a fixed-inputs file with exactly `numel` values, or NULL
 * (missing: ok when !required). */
static int fx_read(zl_ziprun *r, const char *name, int64_t numel, int required, float **out) {
    *out = NULL;
    const zl_st_tensor *t = zl_st_find(r->fx, name);
    if (!t) {
        if (!required) return ZL_OK;
        return zl_set_error(ZL_ENOTFOUND, "%s: missing tensor '%s'", r->p->fixed_inputs, name);
    }
    if (!zl_dtype_is_float(t->dtype))
        return zl_set_error(ZL_EFORMAT, "%s: tensor '%s' is not a float tensor", r->p->fixed_inputs, name);
    if (numel >= 0 && t->numel != numel)
        return zl_set_error(ZL_ESHAPE, "%s: tensor '%s' has %lld values, expected %lld", r->p->fixed_inputs, name,
                            (long long)t->numel, (long long)numel);
    float *p = falloc((size_t)t->numel);
    if (!p) return zl_set_error(ZL_ENOMEM, "out of memory");
    zl_st_read_f32(t, p);
    *out = p;
    return ZL_OK;
}

/* ------------------------------------------------------------------ loading */

/* One LoRA for the model; a LoRA for the other family is said plainly (its
 * family learnt by loading it again without the model's names). */
static int load_one(zl_ziprun *r, const char *path, const char *adapter, const char *role, const zl_clip_config *te1,
                    const zl_clip_config *te2, zl_lora **out) {
    zl_lora_load_opts o = {.adapter_config = adapter, .unet_config = &r->ucfg, .expect_family = r->ucfg.family,
                           .te1_config = te1, .te2_config = te2, .allow_dora = 1};
    int rc = zl_lora_load(path, &o, out);
    if (rc && rc != ZL_ENOMEM && rc != ZL_EIO) {
        char why[2048];
        snprintf(why, sizeof why, "%s", zl_errmsg());
        zl_lora *alone = NULL;
        zl_lora_load_opts o2 = {.adapter_config = adapter};
        zl_family fam = zl_lora_load(path, &o2, &alone) ? ZL_FAMILY_UNKNOWN : alone->family;
        zl_lora_free(alone);
        if (fam != ZL_FAMILY_UNKNOWN && fam != r->ucfg.family)
            return zl_set_error(ZL_EUNSUPPORTED, "%s LoRA %s is for %s, but the model %s is %s", role, path,
                                zl_family_name(fam), r->p->model, zl_family_name(r->ucfg.family));
        zl_set_error(rc, "%s", why);
    }
    if (rc) {
        if (!strstr(zl_errmsg(), path)) zl_error_prefix(rc, "%s", path);
        return zl_error_prefix(rc, "%s LoRA", role);
    }
    if ((*out)->family != ZL_FAMILY_UNKNOWN && (*out)->family != r->ucfg.family)
        return zl_set_error(ZL_EUNSUPPORTED, "%s LoRA %s is for %s, but the model %s is %s", role, path,
                            zl_family_name((*out)->family), r->p->model, zl_family_name(r->ucfg.family));
    /* DoRA: baked into a plain LoRA against the model, as `convert --model` does */
    if ((*out)->n_dora &&
        (rc = zl_lora_bake_dora_model(*out, r->have_paths ? &r->paths : zl_pipeline_paths(r->pipe), NULL, 0, NULL)))
        return zl_error_prefix(rc, "%s LoRA", role);
    return ZL_OK;
}

static int load_loras(zl_ziprun *r, const zl_clip_config *te1, const zl_clip_config *te2) {
    const char *path[2] = {r->p->content, r->p->style};
    const char *ac[2] = {r->p->content_adapter, r->p->style_adapter};
    const char *role[2] = {"content", "style"};
    for (int s = 0; s < 2; s++) {
        int rc = load_one(r, path[s], ac[s], role[s], te1, te2, &r->lora[s]);
        if (rc) return rc;
        int unet_layers = 0;
        for (int i = 0; i < r->lora[s]->n; i++) unet_layers += r->lora[s]->layers[i].part == ZL_PART_UNET;
        if (!unet_layers)
            return zl_set_error(ZL_EINVAL, "%s LoRA %s has no UNet layers (nothing to merge)", role[s], path[s]);
    }
    if (r->lora[0]->family != r->lora[1]->family && r->lora[0]->family && r->lora[1]->family)
        return zl_set_error(ZL_EUNSUPPORTED, "the content LoRA is for %s but the style LoRA for %s",
                            zl_family_name(r->lora[0]->family), zl_family_name(r->lora[1]->family));
    /* further LoRAs to check (eval-merge's candidates), before any compute */
    if (r->p->n_extra_loras > 0) {
        r->extra = calloc((size_t)r->p->n_extra_loras, sizeof *r->extra);
        if (!r->extra) return zl_set_error(ZL_ENOMEM, "out of memory");
        r->n_extra = r->p->n_extra_loras;
        for (int i = 0; i < r->n_extra; i++) {
            int rc = load_one(r, r->p->extra_loras[i], NULL, "merged", te1, te2, &r->extra[i]);
            if (rc) return rc;
        }
    }
    return ZL_OK;
}

/* The prompts: flags, else LoRA metadata, else an error asking for the flag. */
static int resolve_prompts(zl_ziprun *r) {
    const char *given[2] = {r->p->content_prompt, r->p->style_prompt};
    const char *flag[2] = {"--content-prompt", "--style-prompt"};
    for (int s = 0; s < 2; s++) {
        if (given[s]) {
            if (!(r->prompt[s] = strdup(given[s]))) return zl_set_error(ZL_ENOMEM, "out of memory");
            r->prompt_src[s] = "flag";
            continue;
        }
        int rc = zl_ziprun_default_prompt(r->lora[s], &r->prompt[s]);
        if (rc == ZL_ENOTFOUND) {
            char why[1024];
            snprintf(why, sizeof why, "%s", zl_errmsg());
            return zl_set_error(ZL_EINVAL, "%s; give the prompt with %s", why, flag[s]);
        }
        if (rc) return rc;
        r->prompt_src[s] = zl_lora_meta(r->lora[s], "modelspec.trigger_phrase") &&
                                   !blank(zl_lora_meta(r->lora[s], "modelspec.trigger_phrase"))
                               ? "modelspec.trigger_phrase"
                               : "ss_tag_frequency";
    }
    return ZL_OK;
}

/* Clip skip: the flag, else what kohya recorded of the LoRAs' training (ss_clip_skip, "None"
 * when not set); two different values fall back to 1 with a warning. */
static int meta_clip_skip(const zl_lora *l) {
    const char *v = zl_lora_meta(l, "ss_clip_skip");
    if (!v) return 0;
    char *end;
    long n = strtol(v, &end, 10);
    return end != v && !*end && n >= 1 && n <= 48 ? (int)n : 0;
}

static void resolve_clip_skip(zl_ziprun *r) {
    r->clip_skip = 1;
    r->clip_skip_src = "default";
    if (r->p->clip_skip > 0) {
        r->clip_skip = r->p->clip_skip;
        r->clip_skip_src = "flag";
        return;
    }
    int c = meta_clip_skip(r->lora[0]), s = meta_clip_skip(r->lora[1]);
    if (c && s && c != s) {
        zl_warn("the content LoRA was trained with clip skip %d and the style LoRA with %d (ss_clip_skip); using 1, "
                "give --clip-skip N to choose",
                c, s);
        return;
    }
    if (c > 1 || s > 1) {
        r->clip_skip = c > s ? c : s;
        r->clip_skip_src = "ss_clip_skip";
        zl_info("clip skip %d, as the LoRA%s trained with (ss_clip_skip)", r->clip_skip, c && s ? "s were" : " was");
    }
}

/* Encode `n` prompts with a fresh copy of the text encoders carrying `ls`
 * (weights ws) folded in: emb[i] [77, D], pool[i] [P] (SDXL). With neg, also
 * the negative prompt as the pipeline makes it (SDXL: zeros; SD1: ""). */
static int encode_with(zl_ziprun *r, const zl_lora *const *ls, const float *ws, int nl, const char *const *prompts,
                       int n, float **emb, float **pool, float *neg_emb, float *neg_pool) {
    zl_text *t = NULL;
    int rc = zl_text_load(zl_pipeline_paths(r->pipe), NULL, &t);
    if (!rc && r->clip_skip > 1) rc = zl_text_set_clip_skip(t, r->clip_skip);
    for (int i = 0; i < nl && !rc; i++)
        if (lora_has_text(ls[i])) rc = zl_text_apply_lora(t, ls[i], ws[i]);
    for (int i = 0; i < n && !rc; i++) {
        rc = zl_text_encode_prompt(t, prompts[i], 0, emb[i], pool ? pool[i] : NULL);
        if (rc) zl_error_prefix(rc, "prompt '%s'", prompts[i]);
    }
    if (!rc && neg_emb) rc = zl_text_encode_prompt(t, "", r->ucfg.family == ZL_FAMILY_SDXL, neg_emb, neg_pool);
    zl_text_free(t);
    return rc;
}

static void cond_free(zl_cond *c) {
    free(c->embeds);
    free(c->pooled);
    memset(c, 0, sizeof *c);
}

static int cond_alloc(zl_ziprun *r, zl_cond *c) {
    memset(c, 0, sizeof *c);
    c->D = r->D;
    c->P = r->P;
    c->embeds = falloc(2 * (size_t)ZL_CLIP_CTX * r->D);
    c->pooled = r->P ? falloc(2 * (size_t)r->P) : NULL;
    if (!c->embeds || (r->P && !c->pooled)) {
        cond_free(c);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    return ZL_OK;
}

/* Conditionings of a variant: the LoRAs ls folded into the text encoders,
 * for both prompts, as [negative, prompt] pairs (cond[0] content, cond[1]
 * style). */
int zr_variant_conds(zl_ziprun *r, const zl_lora *const *ls, const float *ws, int nl, const char *const *prompts,
                     int n, zl_cond *cond) {
    int rc = ZL_OK;
    for (int i = 0; i < n && !rc; i++) rc = cond_alloc(r, &cond[i]);
    if (rc) return rc;
    const size_t TD = (size_t)ZL_CLIP_CTX * r->D;
    float *emb[16], *pool[16];
    for (int i = 0; i < n; i++) {
        emb[i] = cond[i].embeds + TD;
        pool[i] = r->P ? cond[i].pooled + r->P : NULL;
    }
    rc = encode_with(r, ls, ws, nl, prompts, n, emb, r->P ? pool : NULL, cond[0].embeds,
                     r->P ? cond[0].pooled : NULL);
    for (int i = 1; i < n && !rc; i++) {
        memcpy(cond[i].embeds, cond[0].embeds, TD * sizeof(float));
        if (r->P) memcpy(cond[i].pooled, cond[0].pooled, (size_t)r->P * sizeof(float));
    }
    return rc;
}

/* Reference latents of one side from images: fit (scale to cover, centre-crop)
 * to the working size, VAE-encode, mean * scaling_factor. */
static int refs_from_images(zl_ziprun *r, int s, const char *const *paths, int n) {
    const size_t L = (size_t)r->C * r->h * r->w;
    zl_vae *v = zl_pipeline_vae(r->pipe);
    if (!v) return ZL_EIO;
    r->ref[s] = falloc(L * (size_t)n);
    if (!r->ref[s]) return zl_set_error(ZL_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        zl_image im = {0}, fit = {0};
        int rc = zl_image_read(paths[i], &im);
        if (!rc) rc = zl_image_fit(&im, r->w * r->scale, r->h * r->scale, ZL_RESIZE_AREA, &fit);
        if (!rc) rc = zl_vae_encode_image(v, &fit, r->ref[s] + L * i);
        zl_image_free(&im);
        zl_image_free(&fit);
        if (rc) return strstr(zl_errmsg(), paths[i]) ? rc : zl_error_prefix(rc, "%s", paths[i]);
    }
    r->n_ref[s] = n;
    return ZL_OK;
}

/* Reference latents of one side generated with that LoRA alone (UNet and text
 * encoders), seeded: reference i of side s uses seed + 1000 s + i. The final
 * latent of the sampler is used directly: it is the latent the VAE would
 * decode, so encoding its decoded image again would only add the VAE's error. */
static int refs_generated(zl_ziprun *r, int s) {
    const zl_ziprun_params *p = r->p;
    const size_t L = (size_t)r->C * r->h * r->w;
    const zl_lora *l = r->lora[s];
    float one = 1;
    zl_cond c;
    const char *pr = r->prompt[s];
    int rc = zr_variant_conds(r, &l, &one, 1, &pr, 1, &c);
    if (rc) return rc;
    r->ref[s] = falloc(L * (size_t)p->ref_count);
    if (!r->ref[s]) rc = zl_set_error(ZL_ENOMEM, "out of memory");
    zl_unet *u = rc ? NULL : zl_pipeline_unet(r->pipe);
    if (!rc && !u) rc = ZL_EIO;
    if (!rc) rc = zl_unet_add_lora(u, l, 1.0f, ZL_UNET_LORA_FOLD, NULL);
    const zl_matmul_precision prec = zl_get_matmul_precision();
    if (p->infer_precision > 0) zl_set_matmul_precision((zl_matmul_precision)p->infer_precision);
    for (int i = 0; i < p->ref_count && !rc; i++) {
        char label[64];
        snprintf(label, sizeof label, "%s reference %d/%d", s ? "style" : "content", i + 1, p->ref_count);
        zl_gen_params g = {.width = r->w * r->scale, .height = r->h * r->scale, .steps = p->ref_steps,
                           .cfg = r->cfg, .sampler = ZL_SAMPLER_EULER, .seed = p->seed + 1000u * (uint64_t)s + i,
                           .progress = p->progress, .progress_label = label, .sched = zl_pipeline_sched(r->pipe)};
        rc = zl_txt2img_sample(u, r->scale, &c, &g, r->ref[s] + L * i);
    }
    zl_set_matmul_precision(prec);
    if (u) zl_unet_clear_loras(u);
    zl_unet_release_packed(u);
    cond_free(&c);
    if (!rc) r->n_ref[s] = p->ref_count;
    return rc;
}

/* Prepare from a full model: pipeline, LoRAs, prompts, conditionings, references. */
static int prepare_model(zl_ziprun *r, int want_refs) {
    const zl_ziprun_params *p = r->p;
    zl_pipeline_opts po = {.vae = p->vae, .clip_skip = p->clip_skip, .sched = p->sched};
    int rc = zl_pipeline_open(p->model, &po, &r->pipe);
    if (rc) return rc;
    /* the training draws follow the model's noise schedule (zero SNR included) */
    if ((rc = zl_schedule_from_config(&r->sched, zl_pipeline_sched(r->pipe)))) return rc;
    r->ucfg = *zl_pipeline_unet_config(r->pipe);
    r->scale = zl_pipeline_vae_scale(r->pipe);
    zl_text *tx = zl_pipeline_text(r->pipe);
    if (!tx) return ZL_EIO;
    const zl_clip *c1 = zl_text_encoder(tx, ZL_PART_TE1), *c2 = zl_text_encoder(tx, ZL_PART_TE2);
    zl_clip_config t1 = {0}, t2 = {0};
    if (c1) t1 = *zl_clip_get_config(c1);
    if (c2) t2 = *zl_clip_get_config(c2);
    r->D = zl_text_context_dim(tx);
    r->P = zl_text_pooled_dim(tx);
    zl_pipeline_release(r->pipe, ZL_PIPE_TEXT); /* variants load their own copies */
    if ((rc = load_loras(r, c1 ? &t1 : NULL, c2 ? &t2 : NULL))) return rc;
    /* images are decoded before any heavy compute, so a bad one fails fast */
    int res = p->resolution;
    if (!res) {
        int wn, hn;
        zl_pipeline_native_size(r->pipe, &wn, &hn);
        res = wn;
    }
    if ((rc = zl_pipeline_check_size(r->pipe, res, res))) return zl_error_prefix(rc, "--resolution");
    r->res = res;
    r->C = r->ucfg.in_channels;
    r->h = r->w = res / r->scale;
    r->B = 1;
    r->T = ZL_CLIP_CTX;
    const char *const *imgs[2] = {p->content_images, p->style_images};
    int nimg[2] = {p->n_content_images, p->n_style_images};
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < nimg[s]; i++) {
            zl_image im = {0};
            if ((rc = zl_image_read(imgs[s][i], &im)))
                return strstr(zl_errmsg(), imgs[s][i]) ? rc : zl_error_prefix(rc, "%s", imgs[s][i]);
            zl_image_free(&im);
        }
    if ((rc = resolve_prompts(r))) return rc;
    resolve_clip_skip(r);
    r->cfg = p->ref_cfg > 0 ? p->ref_cfg : r->ucfg.family == ZL_FAMILY_SDXL ? 5.0f : 7.5f;

    /* Conditionings: targets with each LoRA's own text-encoder part, the merged
     * branch with both (the rank-concatenated text encoders equal their sum). */
    const size_t TD = (size_t)ZL_CLIP_CTX * r->D;
    for (int s = 0; s < 2; s++) {
        r->cond_t[s] = falloc(TD);
        r->cond_m[s] = falloc(TD);
        r->pool_t[s] = r->P ? falloc((size_t)r->P) : NULL;
        r->pool_m[s] = r->P ? falloc((size_t)r->P) : NULL;
        if (!r->cond_t[s] || !r->cond_m[s] || (r->P && (!r->pool_t[s] || !r->pool_m[s])))
            return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    r->te_any = lora_has_text(r->lora[0]) || lora_has_text(r->lora[1]);
    const char *const pr[2] = {r->prompt[0], r->prompt[1]};
    if (!r->te_any) {
        if ((rc = encode_with(r, NULL, NULL, 0, pr, 2, r->cond_t, r->P ? r->pool_t : NULL, NULL, NULL))) return rc;
        for (int s = 0; s < 2; s++) {
            memcpy(r->cond_m[s], r->cond_t[s], TD * sizeof(float));
            if (r->P) memcpy(r->pool_m[s], r->pool_t[s], (size_t)r->P * sizeof(float));
        }
    } else {
        float ones[2] = {1, 1};
        for (int s = 0; s < 2 && !rc; s++)
            rc = encode_with(r, (const zl_lora *const *)&r->lora[s], ones, 1, &pr[s], 1, &r->cond_t[s],
                             r->P ? &r->pool_t[s] : NULL, NULL, NULL);
        if (!rc)
            rc = encode_with(r, (const zl_lora *const *)r->lora, ones, 2, pr, 2, r->cond_m, r->P ? r->pool_m : NULL,
                             NULL, NULL);
        if (rc) return rc;
    }
    for (int i = 0; i < 6 && r->ucfg.has_text_time; i++) {
        static const int which[6] = {0, 1, -1, -1, 0, 1};
        r->time_ids[i] = which[i] < 0 ? 0.0f : (float)res;
    }

    if (want_refs) {
        for (int s = 0; s < 2 && !rc; s++) {
            if (nimg[s]) rc = refs_from_images(r, s, imgs[s], nimg[s]);
            else {
                if (p->ref_count < 1) return zl_set_error(ZL_EINVAL, "--ref-count must be at least 1");
                if (p->ref_steps < 1) return zl_set_error(ZL_EINVAL, "--ref-steps must be at least 1");
                rc = refs_generated(r, s);
            }
        }
        if (rc) return rc;
    }
    zl_pipeline_release(r->pipe, ZL_PIPE_VAE);
    r->unet = zl_pipeline_unet(r->pipe);
    return r->unet ? ZL_OK : ZL_EIO;
}

/* Prepare from a fixed-inputs file: a bare UNet (the model may have nothing
 * else), inputs and conditioning verbatim. */
static int prepare_fixed(zl_ziprun *r, int for_eval) {
    const zl_ziprun_params *p = r->p;
    int rc = zl_model_paths_resolve(p->model, &r->paths);
    if (rc) return rc;
    r->have_paths = 1;
    if ((rc = zl_sched_override_apply(&r->paths.sched, &p->sched)) ||
        (rc = zl_schedule_from_config(&r->sched, &r->paths.sched)))
        return rc;
    if ((rc = zl_unet_load_model(&r->paths, NULL, &r->own_unet))) return rc;
    r->unet = r->own_unet;
    r->ucfg = *zl_unet_get_config(r->unet);
    if ((rc = load_loras(r, NULL, NULL))) return rc;
    if ((rc = zl_st_open(p->fixed_inputs, &r->fx))) return rc;
    const char *lat = for_eval ? "x0_content" : "noisy_content";
    const zl_st_tensor *s = zl_st_find(r->fx, lat), *pe = zl_st_find(r->fx, "prompt_embeds_content");
    if (!s) return zl_set_error(ZL_ENOTFOUND, "%s: missing tensor '%s'", p->fixed_inputs, lat);
    if (!pe) return zl_set_error(ZL_ENOTFOUND, "%s: missing tensor 'prompt_embeds_content'", p->fixed_inputs);
    if (s->ndim != 4 || s->shape[1] != r->ucfg.in_channels || pe->ndim != 3 || pe->shape[0] != s->shape[0] ||
        pe->shape[2] != r->ucfg.cross_attention_dim)
        return zl_set_error(ZL_ESHAPE, "%s: '%s' [B, %d, H, W] and 'prompt_embeds_content' [B, T, %d] do not fit the model",
                            p->fixed_inputs, lat, r->ucfg.in_channels, r->ucfg.cross_attention_dim);
    r->B = (int)s->shape[0];
    r->C = (int)s->shape[1];
    r->h = (int)s->shape[2];
    r->w = (int)s->shape[3];
    r->T = (int)pe->shape[1];
    r->D = (int)pe->shape[2];
    r->P = r->ucfg.has_text_time ? zl_unet_pooled_dim(r->unet) : 0;
    r->scale = 8;
    r->res = r->h * r->scale;
    const int64_t n = (int64_t)r->B * r->C * r->h * r->w, TD = (int64_t)r->B * r->T * r->D;
    const char *side[2] = {"content", "style"};
    char key[64];
    for (int k = 0; k < 2; k++) {
        if (for_eval) {
            snprintf(key, sizeof key, "x0_%s", side[k]);
            if ((rc = fx_read(r, key, n, 1, &r->ref[k]))) return rc;
            r->n_ref[k] = 1;
        } else {
            snprintf(key, sizeof key, "noisy_%s", side[k]);
            if ((rc = fx_read(r, key, n, 1, &r->fx_noisy[k]))) return rc;
            snprintf(key, sizeof key, "target_%s", side[k]);
            if ((rc = fx_read(r, key, n, 0, &r->fx_target[k]))) return rc;
        }
        snprintf(key, sizeof key, "prompt_embeds_%s", side[k]);
        if ((rc = fx_read(r, key, TD, 1, &r->cond_t[k]))) return rc;
        if (r->P) {
            snprintf(key, sizeof key, "text_embeds_%s", side[k]);
            if ((rc = fx_read(r, key, (int64_t)r->B * r->P, 1, &r->pool_t[k]))) return rc;
        }
    }
    if (r->ucfg.has_text_time) {
        float *ti = NULL;
        if ((rc = fx_read(r, "time_ids", (int64_t)r->B * 6, 1, &ti))) return rc;
        r->fx_time_ids = ti;
    }
    if (!for_eval) {
        float *t = NULL;
        if ((rc = fx_read(r, "timestep", -1, 1, &t))) return rc;
        const zl_st_tensor *tt = zl_st_find(r->fx, "timestep");
        if (tt->numel != 1 && tt->numel != r->B) {
            free(t);
            return zl_set_error(ZL_ESHAPE, "%s: 'timestep' has %lld values for a batch of %d", p->fixed_inputs,
                                (long long)tt->numel, r->B);
        }
        r->fx_t = falloc((size_t)r->B);
        if (!r->fx_t) { free(t); return zl_set_error(ZL_ENOMEM, "out of memory"); }
        for (int b = 0; b < r->B; b++) r->fx_t[b] = t[tt->numel == 1 ? 0 : b];
        free(t);
    }
    /* the conditioning is given: the merged branch gets the same as the targets */
    for (int k = 0; k < 2; k++) {
        r->cond_m[k] = r->cond_t[k];
        r->pool_m[k] = r->pool_t[k];
    }
    r->cond_shared = 1;
    return ZL_OK;
}

static int alloc_draw(zl_ziprun *r) {
    const size_t n = (size_t)r->B * r->C * r->h * r->w;
    for (int s = 0; s < 2; s++) {
        r->x[s] = falloc(n);
        r->target[s] = falloc(n);
        if (!r->x[s] || !r->target[s]) return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    r->noise = falloc(n);
    r->tstep = falloc((size_t)r->B);
    if (!r->noise || !r->tstep) return zl_set_error(ZL_ENOMEM, "out of memory");
    if (!r->fx_time_ids && r->ucfg.has_text_time) {
        r->time_ids_b = falloc((size_t)r->B * 6);
        if (!r->time_ids_b) return zl_set_error(ZL_ENOMEM, "out of memory");
        for (int b = 0; b < r->B; b++) memcpy(r->time_ids_b + 6 * b, r->time_ids, sizeof r->time_ids);
    }
    r->cur_draw = -1;
    return ZL_OK;
}

int zr_prepare(zl_ziprun *r, const zl_ziprun_params *p, int for_eval) {
    memset(r, 0, sizeof *r);
    r->p = p;
    r->t0 = zl_now();
    zl_schedule_default(&r->sched);
    int rc = p->fixed_inputs ? prepare_fixed(r, for_eval) : prepare_model(r, 1);
    if (!rc) rc = alloc_draw(r);
    return rc;
}

void zr_release(zl_ziprun *r) {
    zl_zip_free(r->zip);
    r->zip = NULL;
    for (int s = 0; s < 2; s++) {
        if (!r->cond_shared) {
            free(r->cond_m[s]);
            free(r->pool_m[s]);
        }
        free(r->cond_t[s]);
        free(r->pool_t[s]);
        free(r->ref[s]);
        free(r->fx_noisy[s]);
        free(r->fx_target[s]);
        free(r->x[s]);
        free(r->target[s]);
        free(r->prompt[s]);
        zl_lora_free(r->lora[s]);
    }
    free(r->fx_t);
    free(r->fx_time_ids);
    free(r->time_ids_b);
    free(r->noise);
    free(r->tstep);
    free(r->curve);
    for (int i = 0; i < r->n_extra; i++) zl_lora_free(r->extra[i]);
    free(r->extra);
    for (int i = 0; i < r->n_notes; i++) free(r->notes[i]);
    free(r->notes);
    zl_unet_free(r->own_unet);
    zl_pipeline_free(r->pipe);
    if (r->have_paths) zl_model_paths_free(&r->paths);
    zl_st_close(r->fx);
    memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------------ draws */

static void make_inputs(zl_ziprun *r, zl_ziprun_draw_t *d) {
    const float *ti = r->fx_time_ids ? r->fx_time_ids : r->time_ids_b;
    zl_unet_input base = {r->B, r->h, r->w, r->T, NULL, r->tstep, NULL, NULL, r->ucfg.has_text_time ? ti : NULL};
    zl_unet_input *in[4] = {&d->xc, &d->xs, &d->tc, &d->ts};
    for (int i = 0; i < 4; i++) {
        int s = i & 1, tgt = i >= 2;
        *in[i] = base;
        in[i]->sample = r->x[s];
        in[i]->context = tgt ? r->cond_t[s] : r->cond_m[s];
        in[i]->text_embeds = r->P ? (tgt ? r->pool_t[s] : r->pool_m[s]) : NULL;
    }
}

/* The noisy latents of draw k at stream offset `base` (0 training, HELDOUT
 * eval): shared noise and timestep, references round-robin. */
int zr_noisy(zl_ziprun *r, int k, uint64_t base) {
    const size_t n = (size_t)r->C * r->h * r->w;
    for (int b = 0; b < r->B; b++) {
        zl_rng rn, rt;
        zl_rng_init(&rn, r->p->seed, ZL_ZIPRUN_STREAM_NOISE + base + (uint64_t)k);
        zl_rng_init(&rt, r->p->seed, ZL_ZIPRUN_STREAM_T + base + (uint64_t)k);
        zl_rng_normal(&rn, n * b, r->noise + n * b, n);
        float u;
        zl_rng_uniform(&rt, (uint64_t)b, &u, 1);
        int t = (int)floorf(u * (float)r->sched.n_train);
        if (t >= r->sched.n_train) t = r->sched.n_train - 1;
        r->tstep[b] = (float)t;
        r->last_t = t;
        for (int s = 0; s < 2; s++) {
            const float *x0 = r->ref[s] + n * (size_t)((k * r->B + b) % r->n_ref[s]);
            int rc = zl_schedule_add_noise(&r->sched, t, x0, r->noise + n * b, r->x[s] + n * b, n);
            if (rc) return rc;
        }
    }
    return ZL_OK;
}

int zl_ziprun_draw(zl_ziprun *r, int k, zl_ziprun_draw_t *d) {
    const size_t n = (size_t)r->B * r->C * r->h * r->w;
    memset(d, 0, sizeof *d);
    make_inputs(r, d);
    d->target_c = r->target[0];
    d->target_s = r->target[1];
    if (r->fx_noisy[0]) {
        d->timestep = -1;
        if (r->cur_draw >= 0) return ZL_OK; /* the same inputs every step */
        memcpy(r->tstep, r->fx_t, (size_t)r->B * sizeof(float));
        for (int s = 0; s < 2; s++) memcpy(r->x[s], r->fx_noisy[s], n * sizeof(float));
        int rc = ZL_OK;
        if (r->fx_target[0] && r->fx_target[1]) {
            for (int s = 0; s < 2; s++) memcpy(r->target[s], r->fx_target[s], n * sizeof(float));
        } else {
            rc = zl_zip_targets(r->zip, &d->tc, &d->ts, r->target[0], r->target[1]);
        }
        if (!rc) r->cur_draw = 0;
        return rc;
    }
    if (r->cur_draw == k) {
        d->timestep = r->last_t;
        return ZL_OK;
    }
    int rc = zr_noisy(r, k, 0);
    if (!rc) rc = zl_zip_targets(r->zip, &d->tc, &d->ts, r->target[0], r->target[1]);
    r->cur_draw = rc ? -1 : k;
    d->timestep = r->last_t;
    return rc;
}

/* ------------------------------------------------------------------ steps */

zl_unet *zl_ziprun_unet(zl_ziprun *r) { return r->unet; }
zl_zip *zl_ziprun_zip(zl_ziprun *r) { return r->zip; }
const zl_lora *zl_ziprun_lora(zl_ziprun *r, int side) { return r->lora[side ? 1 : 0]; }
const zl_ziprun_params *zl_ziprun_get_params(const zl_ziprun *r) { return r->p; }

static int all_finite(const float *v, int n) {
    for (int j = 0; j < n; j++)
        if (!isfinite(v[j])) return 0;
    return 1;
}

/* First layer whose mergers (or gradients) hold a non-finite value, or NULL. */
static const char *first_bad(const zl_zip *z, int grads, int *side) {
    for (int i = 0; i < zl_zip_n_layers(z); i++) {
        const zl_zip_layer *l = zl_zip_layer_at(z, i);
        for (int s = 0; s < 2; s++) {
            if (!l->m[s]) continue;
            if (!all_finite(grads ? l->grad[s] : l->m[s], l->n)) {
                *side = s;
                return l->module;
            }
        }
    }
    return NULL;
}

int zr_check_mergers(zl_ziprun *r, int step) {
    int side = 0;
    const char *bad = first_bad(r->zip, 0, &side);
    if (bad)
        return zl_set_error(ZL_ENUMERIC, "zip: the %s merger of layer '%s' became non-finite at step %d; stopped",
                            side ? "style" : "content", bad, step + 1);
    return ZL_OK;
}

int zl_ziprun_step(zl_ziprun *r, int step, const zl_zip_loss *loss, int with_grad, int *stop) {
    if (stop) *stop = 0;
    if (r->n_curve == r->cap_curve) {
        int cap = r->cap_curve ? 2 * r->cap_curve : 128;
        zl_zip_loss *c = realloc(r->curve, sizeof *c * (size_t)cap);
        if (!c) return zl_set_error(ZL_ENOMEM, "out of memory");
        r->curve = c;
        r->cap_curve = cap;
    }
    r->curve[r->n_curve++] = *loss;
    int side = 0;
    const char *bad = with_grad ? first_bad(r->zip, 1, &side) : NULL;
    if (!isfinite(loss->loss_content) || !isfinite(loss->loss_style) || !isfinite(loss->similarity) || bad) {
        if (!bad) bad = first_bad(r->zip, 0, &side);
        return zl_set_error(ZL_ENUMERIC,
                            "zip: non-finite numbers at step %d (loss content %g, style %g, similarity %g); "
                            "first layer with a non-finite %s: %s%s%s; stopped",
                            step + 1, loss->loss_content, loss->loss_style, loss->similarity,
                            with_grad ? "gradient" : "merger", bad ? "'" : "", bad ? bad : "none found", bad ? "'" : "");
    }
    if (r->progress_on) {
        char extra[160];
        snprintf(extra, sizeof extra, "Lc %.4g Ls %.4g sim %.4g L %.4g", loss->loss_content, loss->loss_style,
                 loss->similarity, loss->total);
        zl_progress_update(&r->prog, step < r->p->steps ? step + 1 : r->p->steps, extra);
    }
    /* the similarity term has reached 0: every |m_c m_s| is (numerically) zero */
    if (stop && loss->similarity <= 1e-9 * (r->n_both > 0 ? r->n_both : 1)) *stop = 1;
    return ZL_OK;
}

int zl_ziprun_mode_full(zl_ziprun *r) {
    const zl_ziprun_params *p = r->p;
    zl_ziprun_draw_t d;
    zl_zip_loss L;
    int rc = ZL_OK, k, stop = 0;
    for (k = 0; k < p->steps && !rc; k++) {
        if ((rc = zl_ziprun_draw(r, k, &d))) break;
        if ((rc = zl_zip_eval(r->zip, &d.xc, d.target_c, &d.xs, d.target_s, 1, &L))) break;
        if ((rc = zl_ziprun_step(r, k, &L, 1, &stop))) break;
        if (stop) {
            r->stopped_early = 1;
            break;
        }
        if ((rc = zl_zip_adam_step(r->zip))) break;
        rc = zr_check_mergers(r, k);
        if (!rc && k + 1 < p->steps && zl_stop_requested()) {
            r->interrupted = 1; /* the steps so far are kept; no closing evaluation */
            break;
        }
    }
    if (rc) return rc;
    if (!stop && !r->interrupted) {
        /* the objective after the last step (fixed inputs: the same inputs) */
        if ((rc = zl_ziprun_draw(r, p->steps, &d))) return rc;
        if ((rc = zl_zip_eval(r->zip, &d.xc, d.target_c, &d.xs, d.target_s, 0, &L))) return rc;
        rc = zl_ziprun_step(r, p->steps, &L, 0, NULL);
    }
    return rc;
}

/* ------------------------------------------------------------------ modes */

/* Measured sgemm rate (GFLOP/s) of this machine with the library's threads:
 * a 512^3 product repeated for at least 0.15 s. */
static double measure_gflops(void) {
    const int n = 512;
    float *a = falloc((size_t)n * n), *b = falloc((size_t)n * n), *c = falloc((size_t)n * n);
    if (!a || !b || !c) {
        free(a); free(b); free(c);
        return 0;
    }
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = b[i] = (float)((i % 7) - 3) * 0.1f;
    zl_sgemm(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n); /* warm up */
    double t0 = zl_now(), t;
    int reps = 0;
    do {
        zl_sgemm(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        reps++;
    } while ((t = zl_now() - t0) < 0.15);
    free(a); free(b); free(c);
    return 2.0 * n * n * n * reps / t / 1e9;
}

/* Pick the mode (p->mode) and say why into r->mode / r->mode_why. */
int zr_choose_mode(zl_ziprun *r, zl_ziprun_mode_fn *fn) {
    const char *m = r->p->mode ? r->p->mode : "auto";
    zl_flops f;
    int rc = zl_unet_flops(&r->ucfg, r->B, r->h, r->w, r->T, &f);
    if (rc) return rc;
    /* per step: 2 target forwards + 2 branches x (forward + backward ~ 2 forwards) */
    r->est_flops_step = f.total * (2 + 2 * 3);
    if (!strcmp(m, "full")) {
        *fn = zl_ziprun_mode_full;
        snprintf(r->mode, sizeof r->mode, "full");
        snprintf(r->mode_why, sizeof r->mode_why, "--mode full was asked for");
        return ZL_OK;
    }
    if (!strcmp(m, "layerwise")) {
        *fn = zl_ziprun_mode_layerwise;
        snprintf(r->mode, sizeof r->mode, "layerwise");
        snprintf(r->mode_why, sizeof r->mode_why, "--mode layerwise was asked for");
        return ZL_OK;
    }
    if (strcmp(m, "auto")) return zl_set_error(ZL_EINVAL, "--mode expects auto, full or layerwise, got '%s'", m);
    r->gflops = measure_gflops();
    double est = r->gflops > 0 ? r->est_flops_step * r->p->steps / (r->gflops * 1e9) : INFINITY;
    r->est_full_s = est;
    if (est <= r->p->budget_s) {
        *fn = zl_ziprun_mode_full;
        snprintf(r->mode, sizeof r->mode, "full");
        snprintf(r->mode_why, sizeof r->mode_why,
                 "auto: full mode estimated at %.0f s (%.3g TFLOP per step x %d steps at a measured %.1f GFLOP/s), "
                 "within the budget of %.0f s",
                 est, r->est_flops_step / 1e12, r->p->steps, r->gflops, r->p->budget_s);
    } else {
        *fn = zl_ziprun_mode_layerwise;
        snprintf(r->mode, sizeof r->mode, "layerwise");
        snprintf(r->mode_why, sizeof r->mode_why,
                 "auto: full mode estimated at %.0f s (%.3g TFLOP per step x %d steps at a measured %.1f GFLOP/s), "
                 "over the budget of %.0f s",
                 est, r->est_flops_step / 1e12, r->p->steps, r->gflops, r->p->budget_s);
    }
    return ZL_OK;
}
