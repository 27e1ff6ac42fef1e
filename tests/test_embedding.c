/* Textual-inversion embeddings (generate --embedding). The test's embeddings
 * are the text encoders' own token-embedding rows of "cat dog", so a prompt
 * with the trigger must encode exactly as the prompt with "cat dog" written
 * out: same positions, same input vectors, same pooled position (the end
 * token). Checked for SD 1.x (emb_params, and A1111's .pt string_to_param)
 * and SDXL (clip_l + clip_g), short and long prompts, with emphasis; an
 * embedding's vectors are not split between chunks; the CLI writes TI hashes
 * and says when a trigger is in neither prompt; wrong files are refused. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"
#include "ziplora/pipeline.h"

/* Rows `ids` of the token embedding in `file` (tensor `name`), [n, C]. */
static float *rows_of(const char *file, const char *name, const int32_t *ids, int n, int *C) {
    zl_st_file *f = NULL;
    if (zl_st_open(file, &f)) return NULL;
    const zl_st_tensor *t = zl_st_find(f, name);
    float *all = t && t->ndim == 2 ? malloc((size_t)t->numel * sizeof(float)) : NULL, *r = NULL;
    if (all) {
        zl_st_read_f32(t, all);
        *C = (int)t->shape[1];
        r = malloc(sizeof(float) * (size_t)n * *C);
        for (int i = 0; i < n; i++) memcpy(r + (size_t)i * *C, all + (size_t)ids[i] * *C, sizeof(float) * (size_t)*C);
    }
    free(all);
    zl_st_close(f);
    return r;
}

static void same_cond(const char *what, const zl_cond *a, const zl_cond *b) {
    CHECKM(a->T == b->T && a->D == b->D && a->P == b->P, "%s: shapes", what);
    if (a->T != b->T || a->D != b->D) return;
    CHECKM(!memcmp(a->embeds, b->embeds, sizeof(float) * 2 * (size_t)a->T * a->D), "%s: embeddings equal", what);
    CHECKM(!a->P || !memcmp(a->pooled, b->pooled, sizeof(float) * 2 * (size_t)a->P), "%s: pooled equal", what);
}

static void test_fixture(const char *fx, int sdxl) {
    char model[1024], te1[1100], te2[1100], emb[1024];
    snprintf(model, sizeof model, "%s", zt_data(fx));
    snprintf(te1, sizeof te1, "%s/text_encoder/model.safetensors", model);
    snprintf(te2, sizeof te2, "%s/text_encoder_2/model.safetensors", model);
    snprintf(emb, sizeof emb, "%s", zt_tmp(sdxl ? "sdxl-mytoken.safetensors" : "mytoken.safetensors"));
    zl_pipeline *p = NULL;
    CHECK_OK(zl_pipeline_open(model, NULL, &p));
    if (!p) return;
    zl_text *text = zl_pipeline_text(p);
    int32_t *ids = NULL;
    int n = 0;
    CHECK_OK(zl_tokenize(zl_text_tokenizer(text), "cat dog", &ids, &n));
    CHECKM(n == 2, "%s: 'cat dog' is two tokens (%d)", fx, n);
    int C1 = 0, C2 = 0;
    float *r1 = n == 2 ? rows_of(te1, "text_model.embeddings.token_embedding.weight", ids, 2, &C1) : NULL;
    float *r2 = n == 2 && sdxl ? rows_of(te2, "text_model.embeddings.token_embedding.weight", ids, 2, &C2) : NULL;
    CHECK(r1 && (!sdxl || r2));
    if (r1 && (!sdxl || r2)) {
        zl_st_entry e[2] = {{.name = sdxl ? "clip_l" : "emb_params", .dtype = ZL_DT_F32, .ndim = 2, .shape = {2, C1}, .data = r1},
                            {.name = "clip_g", .dtype = ZL_DT_F32, .ndim = 2, .shape = {2, C2}, .data = r2}};
        CHECK_OK(zl_st_write(emb, e, sdxl ? 2 : 1, NULL, 0, NULL, 0));
        int nv = 0;
        CHECK_OK(zl_pipeline_add_embedding(p, emb, sdxl ? "sdxl-mytoken" : "mytoken", &nv));
        CHECK(nv == 2);
        const char *trig = sdxl ? "sdxl-mytoken" : "mytoken";
        char pa[256];
        zl_cond a = {0}, b = {0};
        snprintf(pa, sizeof pa, "a photo of %s, on a table", trig);
        CHECK_OK(zl_pipeline_encode(p, pa, "blurry", &a));
        CHECK_OK(zl_pipeline_encode(p, "a photo of cat dog, on a table", "blurry", &b));
        char what[128];
        snprintf(what, sizeof what, "%s: the trigger = 'cat dog'", fx);
        same_cond(what, &a, &b);
        zl_cond_free(&a);
        zl_cond_free(&b);
        /* long prompts with emphasis: the vectors carry the span's weight */
        snprintf(pa, sizeof pa, "a photo of (%s:1.3), [on] a table", trig);
        CHECK_OK(zl_pipeline_encode_long(p, pa, trig, 1, &a));
        CHECK_OK(zl_pipeline_encode_long(p, "a photo of (cat dog:1.3), [on] a table", "cat dog", 1, &b));
        snprintf(what, sizeof what, "%s: long prompt, emphasis, trigger in the negative", fx);
        same_cond(what, &a, &b);
        zl_cond_free(&a);
        zl_cond_free(&b);
        /* 74 tokens, then the 2 vectors: they open the second chunk together */
        char long_p[1024] = "";
        for (int i = 0; i < 74; i++) strcat(long_p, "x ");
        strcat(long_p, trig);
        int32_t *v = NULL;
        float *w = NULL;
        int *bd = NULL, k = 0;
        CHECK_OK(zl_tokenize_chunks_weighted(zl_text_tokenizer(text), long_p, 1, &v, &w, &bd, &k));
        CHECKM(k == 2 && bd[1] == 74 && bd[2] == 76 && v[74] >= ZL_CLIP_VOCAB && v[75] == v[74] + 1,
               "%s: an embedding is not split between chunks (%d chunks, %d %d)", fx, k, k > 1 ? bd[1] : -1,
               k > 1 ? bd[2] : -1);
        free(v), free(w), free(bd);
        /* the other family's file is refused, naming it */
        const char *other = sdxl ? "mytoken.safetensors" : "sdxl-mytoken.safetensors";
        char op[1024];
        snprintf(op, sizeof op, "%s", zt_tmp("wrong.safetensors"));
        zl_st_entry we = {.name = sdxl ? "emb_params" : "clip_g", .dtype = ZL_DT_F32, .ndim = 2, .shape = {2, sdxl ? C1 : 40},
                          .data = r1};
        float *big = calloc(2 * 40 + 2 * (size_t)C1, sizeof(float));
        we.data = big;
        CHECK_OK(zl_st_write(op, &we, 1, NULL, 0, NULL, 0));
        int rc = zl_pipeline_add_embedding(p, op, "wrong", NULL);
        CHECKM(rc != ZL_OK && strstr(zl_errmsg(), op), "%s: %s is refused: %s", fx, other, zl_errmsg());
        free(big);
    }
    free(ids);
    free(r1);
    free(r2);
    zl_pipeline_free(p);
}

/* An A1111 .pt embedding (string_to_param.*, written by tests/data/ckpt/make_ckpt.py from
 * tiny-sd15's rows of "cat dog") equals the safetensors one; and the CLI. */
static void test_pt_and_cli(void) {
    char model[1024], pt[1024], out[1024];
    snprintf(model, sizeof model, "%s", zt_data("tiny-sd15"));
    snprintf(pt, sizeof pt, "%s", zt_data("ckpt/catdog.pt"));
    snprintf(out, sizeof out, "%s", zt_tmp("ti.png"));
    zl_pipeline *p = NULL;
    CHECK_OK(zl_pipeline_open(model, NULL, &p));
    if (p) {
        int nv = 0;
        CHECK_OK(zl_pipeline_add_embedding(p, pt, "catdog", &nv));
        zl_cond a = {0}, b = {0};
        CHECK_OK(zl_pipeline_encode(p, "a photo of catdog", NULL, &a));
        CHECK_OK(zl_pipeline_encode(p, "a photo of cat dog", NULL, &b));
        CHECK(nv == 2);
        same_cond("A1111 .pt embedding", &a, &b);
        zl_cond_free(&a);
        zl_cond_free(&b);
        zl_pipeline_free(p);
    }
    int code = zt_cli("generate --model '%s' --embedding '%s' -p 'a photo of catdog' --steps 1 -W 64 -H 64 -o '%s'",
                      model, pt, out);
    CHECKM(code == 0 && strstr(zt_err, "2 vectors for 'catdog'"), "generate --embedding: %d %s", code, zt_err);
    zl_png_text *t = NULL;
    int nt = 0;
    const char *params = NULL;
    if (!code && !zl_png_read_text(out, &t, &nt))
        for (int i = 0; i < nt; i++)
            if (!strcmp(t[i].key, "parameters")) params = t[i].value;
    CHECKM(params && strstr(params, "TI hashes: \"catdog: "), "TI hashes in the parameters: %s", params ? params : "");
    zl_png_text_free(t, nt);
    /* --from-png says which embeddings the image used */
    char again[1024];
    snprintf(again, sizeof again, "%s", zt_tmp("ti_again.png"));
    code = zt_cli("generate --model '%s' --from-png '%s' -o '%s'", model, out, again);
    CHECKM(code == 0 && strstr(zt_err, "made with the embeddings catdog: ") && strstr(zt_err, "--embedding FILE"),
           "--from-png names the embeddings: %s", zt_err);
    code = zt_cli("generate --model '%s' --embedding '%s' -p 'a photo of a dog' --steps 1 -W 64 -H 64 -o '%s'", model,
                  pt, out);
    CHECKM(code == 0 && strstr(zt_err, "'catdog' (its file name) is in neither prompt"), "unused trigger said: %s",
           zt_err);
    /* given as a LoRA, it is named for what it is */
    code = zt_cli("inspect '%s'", pt);
    CHECKM(code == 1 && strstr(zt_err, "a textual-inversion embedding") && strstr(zt_err, "--embedding FILE"),
           "an embedding given as a LoRA: %d %s", code, zt_err);
    char missing[1024];
    snprintf(missing, sizeof missing, "%s", zt_tmp("no-such.pt"));
    remove(out);
    code = zt_cli("generate --model '%s' --embedding '%s' -p x --steps 1 -W 64 -H 64 -o '%s'", model, missing, out);
    FILE *f = fopen(out, "rb");
    CHECKM(code == 1 && strstr(zt_err, "no-such.pt") && !f, "a missing embedding: exit %d, %s", code, zt_err);
    if (f) fclose(f);
}

int main(void) {
    zl_set_threads(2);
    test_fixture("tiny-sd15", 0);
    test_fixture("mini-sdxl", 1);
    test_pt_and_cli();
    return zt_done();
}
