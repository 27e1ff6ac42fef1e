/* Text encoder tests: every tensor of text_io.safetensors (mini-sdxl, tiny-sd15)
 * within the FIXTURES.md tolerance, from the diffusers folder and from
 * single_file.safetensors, with and without loras/text_encoders.kohya.safetensors
 * (the lora.* tensors); prompt-string encoding; errors; one case through the CLI. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"
#include "ziplora/text.h"

#define TOL 1e-4

static int32_t *read_ids(zl_st_file *f, const char *name, int *B) {
    const zl_st_tensor *t = zl_st_find(f, name);
    CHECKM(t && t->ndim == 2 && t->shape[1] == ZL_CLIP_CTX, "%s present as [B, 77]", name);
    if (!t) return NULL;
    *B = (int)t->shape[0];
    int32_t *ids = malloc((size_t)t->numel * sizeof *ids);
    CHECK(t->dtype == ZL_DT_I64);
    for (int64_t i = 0; i < t->numel; i++) {
        int64_t v; /* the mapping need not be 8-byte aligned */
        memcpy(&v, t->data + 8 * i, 8);
        ids[i] = (int32_t)v;
    }
    return ids;
}

static void cmp(zl_st_file *ref, const char *prefix, const char *name, const float *got, const char *label) {
    char full[128];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    const zl_st_tensor *t = zl_st_find(ref, full);
    if (!t) return; /* the fixture does not hold this one (e.g. lora.te1_pooled) */
    float *r = malloc((size_t)t->numel * sizeof *r);
    zl_st_read_f32(t, r);
    char what[256];
    snprintf(what, sizeof what, "%s %s", label, full);
    zt_close(what, got, r, t->numel, TOL);
    free(r);
}

/* Clip skip (A1111 numbering). The hidden-state output of zl_clip_forward against the fixture's
 * penultimate and last states; SD 1.x skip 2 against the fixture's penultimate state put through
 * the final LayerNorm here, in double, with the file's weights; SDXL skip 2 = the default. */
static void clip_skip_case(zl_text *tx, zl_st_file *io, const int32_t *il, const int32_t *ig, int B,
                           const char *fixture, const float *embeds_default) {
    const zl_clip *te1 = zl_text_encoder(tx, ZL_PART_TE1);
    const zl_clip_config *cc = zl_clip_get_config(te1);
    const int C = cc->hidden, L = cc->layers;
    const size_t N = (size_t)B * ZL_CLIP_CTX;
    float *h = malloc(N * C * sizeof(float));
    char what[256];
    for (int ln = 0; ln < 2; ln++) {
        zl_clip_out o = {.hidden = h, .hidden_layer = ln ? L : L - 1, .hidden_final_ln = ln};
        CHECK_OK(zl_clip_forward(te1, il, B, ZL_CLIP_CTX, &o));
        snprintf(what, sizeof what, "%s hidden state %d%s", fixture, o.hidden_layer, ln ? " + final LN" : "");
        cmp(io, "", ln ? "te1_last_hidden" : "te1_penultimate", h, what);
    }
    zl_clip_out bad = {.hidden = h, .hidden_layer = L + 1};
    CHECK(zl_clip_forward(te1, il, B, ZL_CLIP_CTX, &bad) == ZL_EINVAL);
    int D = zl_text_context_dim(tx);
    float *e = malloc(N * D * sizeof(float));
    zl_text_cond c = {.prompt_embeds = e};
    CHECK(zl_text_set_clip_skip(tx, 0) == ZL_EINVAL && zl_text_set_clip_skip(tx, L + 1) == ZL_EINVAL);
    CHECK_OK(zl_text_set_clip_skip(tx, 2));
    CHECK(zl_text_clip_skip(tx) == 2);
    CHECK_OK(zl_text_encode_ids(tx, il, ig, B, &c));
    if (!ig) {
        /* SD 1.x: final_layer_norm(hidden_states[-2]) */
        char rel[256];
        snprintf(rel, sizeof rel, "%s/text_encoder/model.safetensors", fixture);
        zl_st_file *w = NULL;
        CHECK_OK(zl_st_open(zt_data(rel), &w));
        const zl_st_tensor *pt = zl_st_find(io, "te1_penultimate"),
                           *gt = w ? zl_st_find(w, "text_model.final_layer_norm.weight") : NULL,
                           *bt = w ? zl_st_find(w, "text_model.final_layer_norm.bias") : NULL;
        CHECK(pt && gt && bt);
        if (pt && gt && bt) {
            float *pen = malloc(N * C * sizeof(float)), *g = malloc(C * sizeof(float)), *b = malloc(C * sizeof(float)),
                  *want = malloc(N * C * sizeof(float));
            zl_st_read_f32(pt, pen);
            zl_st_read_f32(gt, g);
            zl_st_read_f32(bt, b);
            for (size_t n = 0; n < N; n++) {
                double m = 0, v = 0;
                for (int j = 0; j < C; j++) m += pen[n * C + j];
                m /= C;
                for (int j = 0; j < C; j++) v += (pen[n * C + j] - m) * (pen[n * C + j] - m);
                v /= C;
                for (int j = 0; j < C; j++)
                    want[n * C + j] = (float)((pen[n * C + j] - m) / sqrt(v + cc->eps) * g[j] + b[j]);
            }
            snprintf(what, sizeof what, "%s clip skip 2 = final LN of the penultimate state", fixture);
            zt_close(what, e, want, (int64_t)(N * C), TOL);
            free(pen); free(g); free(b); free(want);
        }
        zl_st_close(w);
    } else {
        CHECKM(!memcmp(e, embeds_default, N * D * sizeof(float)), "%s: SDXL clip skip 2 is the default", fixture);
        if (L >= 3) {
            CHECK_OK(zl_text_set_clip_skip(tx, 3));
            CHECK_OK(zl_text_encode_ids(tx, il, ig, B, &c));
            CHECKM(memcmp(e, embeds_default, N * D * sizeof(float)), "%s: SDXL clip skip 3 differs", fixture);
        }
    }
    CHECK_OK(zl_text_set_clip_skip(tx, 1));
    CHECK_OK(zl_text_encode_ids(tx, il, ig, B, &c));
    CHECKM(!memcmp(e, embeds_default, N * D * sizeof(float)), "%s: clip skip 1 is the default", fixture);
    free(e);
    free(h);
}

/* Encode the fixture's ids with the model at `model` and compare everything. */
static void run_case(const char *fixture, const char *model_rel, int single, int with_lora) {
    char label[256];
    snprintf(label, sizeof label, "%s/%s%s", fixture, model_rel, with_lora ? " +lora" : "");
    char rel[256];
    snprintf(rel, sizeof rel, "%s/text_io.safetensors", fixture);
    zl_st_file *io = NULL;
    CHECK_OK(zl_st_open(zt_data(rel), &io));
    if (!io) return;
    int B = 0, Bg = 0;
    int32_t *il = read_ids(io, "ids_clip_l", &B);
    int32_t *ig = zl_st_find(io, "ids_bigg") ? read_ids(io, "ids_bigg", &Bg) : NULL;
    snprintf(rel, sizeof rel, "%s/%s", fixture, model_rel);
    zl_model_paths mp;
    CHECK_OK(zl_model_paths_resolve(zt_data(rel), &mp));
    char c1[1024], c2[1024];
    snprintf(c1, sizeof c1, "%s", zt_data(fixture));
    strcat(c1, "/text_encoder/config.json");
    snprintf(c2, sizeof c2, "%s", zt_data(fixture));
    strcat(c2, "/text_encoder_2/config.json");
    /* The fixture models have 4 heads of width 8/12, which shapes cannot tell: a single file
     * takes the heads from the diffusers config, as a user would pass it. */
    zl_text_load_opts lo = {.te1_config = single ? c1 : NULL, .te2_config = single && ig ? c2 : NULL};
    zl_text *tx = NULL;
    CHECK_OK(zl_text_load(&mp, &lo, &tx));
    if (!tx) goto done;
    if (with_lora) {
        snprintf(rel, sizeof rel, "%s/loras/text_encoders.kohya.safetensors", fixture);
        zl_lora *l = NULL;
        CHECK_OK(zl_lora_load(zt_data(rel), NULL, &l));
        if (l) {
            int nte = 0;
            for (int k = 0; k < l->n; k++) nte += l->layers[k].part != ZL_PART_UNET;
            CHECK(nte == l->n && nte > 0);
            CHECK_OK(zl_text_apply_lora(tx, l, 1.0f));
        }
        zl_lora_free(l);
    }
    int D = zl_text_context_dim(tx), P = zl_text_pooled_dim(tx);
    int C1 = zl_clip_get_config(zl_text_encoder(tx, ZL_PART_TE1))->hidden;
    int C2 = ig ? zl_clip_get_config(zl_text_encoder(tx, ZL_PART_TE2))->hidden : 0;
    size_t N = (size_t)B * ZL_CLIP_CTX;
    zl_text_cond c = {0};
    c.prompt_embeds = malloc(N * D * sizeof(float));
    c.te1.penultimate = malloc(N * C1 * sizeof(float));
    c.te1.last_hidden = malloc(N * C1 * sizeof(float));
    c.te1.pooled = malloc((size_t)B * C1 * sizeof(float));
    if (ig) {
        c.pooled = malloc((size_t)B * P * sizeof(float));
        c.te2.penultimate = malloc(N * C2 * sizeof(float));
        c.te2.last_hidden = malloc(N * C2 * sizeof(float));
        c.te2.pooled = malloc((size_t)B * C2 * sizeof(float));
        c.te2.projected = malloc((size_t)B * P * sizeof(float));
    }
    CHECK_OK(zl_text_encode_ids(tx, il, ig, B, &c));
    const char *pre = with_lora ? "lora." : "";
    cmp(io, pre, "prompt_embeds", c.prompt_embeds, label);
    cmp(io, pre, "te1_penultimate", c.te1.penultimate, label);
    cmp(io, pre, "te1_last_hidden", c.te1.last_hidden, label);
    cmp(io, pre, "te1_pooled", c.te1.pooled, label);
    if (ig) {
        cmp(io, pre, "pooled_prompt_embeds", c.pooled, label);
        cmp(io, pre, "te2_penultimate", c.te2.penultimate, label);
        cmp(io, pre, "te2_last_hidden", c.te2.last_hidden, label);
        cmp(io, pre, "te2_pooled", c.te2.pooled, label);
        cmp(io, pre, "te2_text_embeds", c.te2.projected, label);
    }
    /* Only the conditioning requested: same values (the last-layer skip must not change them). */
    if (!with_lora) {
        zl_text_cond c2 = {.prompt_embeds = malloc(N * D * sizeof(float)),
                           .pooled = ig ? malloc((size_t)B * P * sizeof(float)) : NULL};
        CHECK_OK(zl_text_encode_ids(tx, il, ig, B, &c2));
        CHECK(!memcmp(c2.prompt_embeds, c.prompt_embeds, N * D * sizeof(float)));
        if (ig) CHECK(!memcmp(c2.pooled, c.pooled, (size_t)B * P * sizeof(float)));
        free(c2.prompt_embeds);
        free(c2.pooled);
        /* The prompt-string path: case 0 of tokenizer_cases.json is "a photo of sks dog". */
        float *pe = malloc((size_t)ZL_CLIP_CTX * D * sizeof(float)), *pp = P ? malloc((size_t)P * sizeof(float)) : NULL;
        CHECK_OK(zl_text_encode_prompt(tx, "a photo of sks dog", 0, pe, pp));
        /* batch 1 vs batch 8 may reassociate inside sgemm: compare with the tolerance */
        zt_close("prompt string -> prompt_embeds[0]", pe, c.prompt_embeds, (int64_t)ZL_CLIP_CTX * D, TOL);
        if (pp) zt_close("prompt string -> pooled[0]", pp, c.pooled, P, TOL);
        /* SDXL's zeroed empty negative prompt */
        if (ig) {
            CHECK_OK(zl_text_encode_prompt(tx, "", 1, pe, pp));
            int zero = 1;
            for (int i = 0; i < ZL_CLIP_CTX * D; i++) zero &= pe[i] == 0.0f;
            for (int i = 0; i < P; i++) zero &= pp[i] == 0.0f;
            CHECK(zero);
        }
        free(pe);
        free(pp);
        clip_skip_case(tx, io, il, ig, B, fixture, c.prompt_embeds);
    }
    free(c.prompt_embeds); free(c.pooled);
    free(c.te1.penultimate); free(c.te1.last_hidden); free(c.te1.pooled);
    free(c.te2.penultimate); free(c.te2.last_hidden); free(c.te2.pooled); free(c.te2.projected);
done:
    zl_text_free(tx);
    zl_model_paths_free(&mp);
    free(il);
    free(ig);
    zl_st_close(io);
}


/* Copy the tensors of `src` whose names start with `from` into a new file, renamed
 * to start with `to`; `fix` may rewrite one entry (name, data). Returns the path. */
typedef void (*fix_fn)(zl_st_entry *e, float *data);
static const char *rewrite(const char *src, const char *from, const char *to, fix_fn fix, const char *name) {
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(src, &f));
    if (!f) return NULL;
    int n = zl_st_count(f), k = 0;
    zl_st_entry *e = calloc((size_t)n, sizeof *e);
    char **names = calloc((size_t)n, sizeof *names);
    float **bufs = calloc((size_t)n, sizeof *bufs);
    size_t lf = strlen(from);
    for (int i = 0; i < n; i++) {
        const zl_st_tensor *t = zl_st_at(f, i);
        if (strncmp(t->name, from, lf) || strstr(t->name, "position_ids")) continue;
        names[k] = malloc(strlen(to) + strlen(t->name) + 16);
        sprintf(names[k], "%s%s", to, t->name + lf);
        bufs[k] = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
        zl_st_read_f32(t, bufs[k]);
        e[k] = (zl_st_entry){.name = names[k], .dtype = ZL_DT_F32, .ndim = t->ndim, .data = bufs[k]};
        for (int d = 0; d < t->ndim; d++) e[k].shape[d] = t->shape[d];
        if (fix) fix(&e[k], bufs[k]);
        k++;
    }
    const char *out = zt_tmp(name);
    CHECK_OK(zl_st_write(out, e, k, NULL, 0, NULL, 0));
    for (int i = 0; i < k; i++) { free(names[i]); free(bufs[i]); }
    free(e); free(names); free(bufs);
    zl_st_close(f);
    return out;
}

/* diffusers <= 0.21 wrote bigG's projection as HF's Linear weight: text_projection.weight = P^T. */
static char g_projname[256];
static void to_hf_projection(zl_st_entry *e, float *data) {
    if (!strstr(e->name, "model.text_projection")) return;
    int64_t C = e->shape[0], P = e->shape[1];
    float *tmp = malloc((size_t)(C * P) * sizeof *tmp);
    for (int64_t i = 0; i < C; i++)
        for (int64_t j = 0; j < P; j++) tmp[j * C + i] = data[i * P + j];
    memcpy(data, tmp, (size_t)(C * P) * sizeof *tmp);
    free(tmp);
    snprintf(g_projname, sizeof g_projname, "%s.weight", e->name);
    e->name = g_projname;
    e->shape[0] = P;
    e->shape[1] = C;
}

/* Other real layouts, built from the fixtures: an old SD1 file without "text_model.",
 * and an SDXL file whose bigG projection is stored the diffusers-0.21 way. */
static void test_other_layouts(void) {
    zl_st_file *io = NULL;
    int B = 0;
    /* old SD1 naming: cond_stage_model.transformer.{embeddings,encoder,final_layer_norm} */
    const char *old = rewrite(zt_data("tiny-sd15/single_file.safetensors"), "cond_stage_model.transformer.text_model.",
                              "cond_stage_model.transformer.", NULL, "old_sd1.safetensors");
    CHECK_OK(zl_st_open(zt_data("tiny-sd15/text_io.safetensors"), &io));
    zl_clip *c = NULL;
    if (old && io)
        CHECK_OK(zl_clip_load(old, ZL_PART_TE1, &(zl_clip_load_opts){.config_json = zt_data("tiny-sd15/text_encoder/config.json")}, &c));
    if (c) {
        int32_t *ids = read_ids(io, "ids_clip_l", &B);
        float *last = malloc((size_t)B * ZL_CLIP_CTX * 48 * sizeof(float));
        CHECK_OK(zl_clip_forward(c, ids, B, ZL_CLIP_CTX, &(zl_clip_out){.last_hidden = last}));
        cmp(io, "", "te1_last_hidden", last, "old SD1 names");
        free(last);
        free(ids);
        zl_clip_free(c);
        c = NULL;
    }
    zl_st_close(io);
    io = NULL;
    const char *hfp = rewrite(zt_data("mini-sdxl/single_file.safetensors"), "conditioner.embedders.1.",
                              "conditioner.embedders.1.", to_hf_projection, "sdxl_hfproj.safetensors");
    CHECK_OK(zl_st_open(zt_data("mini-sdxl/text_io.safetensors"), &io));
    if (hfp && io)
        CHECK_OK(zl_clip_load(hfp, ZL_PART_TE2, &(zl_clip_load_opts){.config_json = zt_data("mini-sdxl/text_encoder_2/config.json")}, &c));
    if (c) {
        int32_t *ids = read_ids(io, "ids_bigg", &B);
        float *proj = malloc((size_t)B * 32 * sizeof(float));
        CHECK_OK(zl_clip_forward(c, ids, B, ZL_CLIP_CTX, &(zl_clip_out){.projected = proj}));
        cmp(io, "", "te2_text_embeds", proj, "bigG text_projection.weight");
        free(proj);
        free(ids);
        zl_clip_free(c);
    }
    zl_st_close(io);
}

static void test_errors(void) {
    /* A single file of the fixture without a config: hidden 32 is not a multiple of 64. */
    zl_clip *c = NULL;
    int rc = zl_clip_load(zt_data("mini-sdxl/single_file.safetensors"), ZL_PART_TE2, NULL, &c);
    CHECK(rc == ZL_EINVAL && strstr(zl_errmsg(), "config.json"));
    /* An SD1 file has no second encoder. */
    rc = zl_clip_load(zt_data("tiny-sd15/single_file.safetensors"), ZL_PART_TE2, NULL, &c);
    CHECK(rc == ZL_ENOTFOUND && strstr(zl_errmsg(), "second"));
    /* A config that does not match the weights. */
    rc = zl_clip_load(zt_data("tiny-sd15/text_encoder/model.safetensors"), ZL_PART_TE1,
                      &(zl_clip_load_opts){.config_json = zt_data("mini-sdxl/text_encoder/config.json")}, &c);
    CHECK(rc == ZL_ESHAPE);
    /* Token ids outside the vocabulary. */
    CHECK_OK(zl_clip_load(zt_data("tiny-sd15/text_encoder/model.safetensors"), ZL_PART_TE1,
                          &(zl_clip_load_opts){.config_json = zt_data("tiny-sd15/text_encoder/config.json")}, &c));
    if (c) {
        int32_t ids[ZL_CLIP_CTX] = {ZL_CLIP_BOS, 49408};
        float pooled[48];
        rc = zl_clip_forward(c, ids, 1, ZL_CLIP_CTX, &(zl_clip_out){.pooled = pooled});
        CHECK(rc == ZL_EINVAL && strstr(zl_errmsg(), "49408"));
        /* An SDXL text LoRA does not fit the SD1 encoder's width: refused, nothing changed. */
        zl_lora *l = NULL;
        CHECK_OK(zl_lora_load(zt_data("mini-sdxl/loras/text_encoders.kohya.safetensors"), NULL, &l));
        if (l) CHECK(zl_clip_apply_lora(c, l, 1.0f) == ZL_ESHAPE);
        zl_lora_free(l);
        zl_clip_free(c);
    }
}

static void test_cli(void) {
    const char *out = zt_tmp("text_out.safetensors");
    int code = zt_cli("run text --model '%s' --lora '%s' --in '%s' -o '%s'", zt_data("mini-sdxl"),
                      zt_data("mini-sdxl/loras/text_encoders.kohya.safetensors"), zt_data("mini-sdxl/text_io.safetensors"),
                      out);
    CHECKM(code == 0, "run text exit %d: %s", code, zt_err);
    zl_st_file *o = NULL, *io = NULL;
    CHECK_OK(zl_st_open(out, &o));
    CHECK_OK(zl_st_open(zt_data("mini-sdxl/text_io.safetensors"), &io));
    if (o && io) {
        static const char *const names[] = {"prompt_embeds", "pooled_prompt_embeds", "te1_penultimate", "te1_last_hidden",
                                            "te2_penultimate", "te2_last_hidden", "te2_text_embeds"};
        for (int i = 0; i < 7; i++) {
            const zl_st_tensor *t = zl_st_find(o, names[i]);
            CHECKM(t != NULL, "output has %s", names[i]);
            if (!t) continue;
            float *g = malloc((size_t)t->numel * sizeof *g);
            zl_st_read_f32(t, g);
            cmp(io, "lora.", names[i], g, "cli");
            free(g);
        }
        CHECK(zl_st_find(o, "te1_pooled") && zl_st_find(o, "te2_pooled"));
    }
    zl_st_close(o);
    zl_st_close(io);
    /* bad input: a missing tensor -> exit 1, no output file */
    const char *bad = zt_tmp("bad_out.safetensors");
    code = zt_cli("run text --model '%s' --in '%s' -o '%s'", zt_data("mini-sdxl"), zt_data("mini-sdxl/vae_io.safetensors"), bad);
    CHECK(code == 1 && strstr(zt_err, "ids_clip_l") && !zl_file_exists(bad));
    code = zt_cli("run text --model '%s' -o '%s'", zt_data("mini-sdxl"), bad);
    CHECK(code == 2);
    /* --clip-skip 2 on SD 1.x: prompt_embeds is the final LayerNorm of the penultimate state, i.e. the
     * last hidden state of a run whose last layer is skipped; the per-encoder tensors stay the fixture's */
    char o2[1024], bad2[1024]; /* zt_tmp's buffers rotate, and zt_cli uses them */
    snprintf(o2, sizeof o2, "%s", zt_tmp("text_skip.safetensors"));
    snprintf(bad2, sizeof bad2, "%s", zt_tmp("bad_skip.safetensors"));
    code = zt_cli("run text --model '%s' --clip-skip 2 --in '%s' -o '%s'", zt_data("tiny-sd15"),
                  zt_data("tiny-sd15/text_io.safetensors"), o2);
    CHECKM(code == 0, "run text --clip-skip 2: %s", zt_err);
    CHECK_OK(zl_st_open(o2, &o));
    CHECK_OK(zl_st_open(zt_data("tiny-sd15/text_io.safetensors"), &io));
    if (o && io) {
        const zl_st_tensor *pe = zl_st_find(o, "prompt_embeds"), *ref = zl_st_find(io, "prompt_embeds");
        float *a = pe ? malloc((size_t)pe->numel * sizeof *a) : NULL, *b = ref ? malloc((size_t)ref->numel * sizeof *b) : NULL;
        if (a && b && pe->numel == ref->numel) {
            zl_st_read_f32(pe, a);
            zl_st_read_f32(ref, b);
            CHECKM(zt_relerr(a, b, pe->numel) > 1e-3, "clip skip 2 changes prompt_embeds");
        }
        free(a);
        free(b);
        const zl_st_tensor *lh = zl_st_find(o, "te1_last_hidden");
        float *g = lh ? malloc((size_t)lh->numel * sizeof *g) : NULL;
        if (g) zl_st_read_f32(lh, g);
        if (g) cmp(io, "", "te1_last_hidden", g, "cli --clip-skip 2");
        free(g);
    }
    zl_st_close(o);
    zl_st_close(io);
    code = zt_cli("run text --model '%s' --clip-skip 0 --in '%s' -o '%s'", zt_data("tiny-sd15"),
                  zt_data("tiny-sd15/text_io.safetensors"), bad2);
    CHECK(code == 2 && !zl_file_exists(bad2));
}

int main(void) {
    static const char *const fixtures[] = {"mini-sdxl", "tiny-sd15"};
    for (int f = 0; f < 2; f++)
        for (int lora = 0; lora < 2; lora++) {
            run_case(fixtures[f], "", 0, lora);
            run_case(fixtures[f], "single_file.safetensors", 1, lora);
        }
    test_other_layouts();
    test_errors();
    test_cli();
    return zt_done();
}
