/* DoRA LoRAs (LyCORIS `dora_scale`, the per-input-feature magnitude that ComfyUI's
 * weight_decompose and A1111's apply_weight_decompose apply) in `generate`.
 *
 * The DoRA files here are the fixtures' kohya LoRAs with a `dora_scale` added to every
 * module, [1, in] (linear) or [1, in, 1, 1] (conv), in F32:
 *  - "exact": dora_scale = the column norms of W + scale * up @ down, so DoRA changes
 *    nothing and the model must reproduce the fixtures' own LoRA references (diffusers'
 *    out_style, and text_io's lora.* tensors);
 *  - "scaled": those norms times 1.25 / 0.8 on alternate input features; the folded weights
 *    must then equal the formula computed here in double from the file's tensors and the
 *    base weights (and the output must differ from the plain LoRA's).
 * The UNet file is the style LoRA: linears, 1x1 conv projections and 3x3 LoCon convs.
 * Loading is checked too: refused unless the caller folds (allow_dora), the output-axis
 * form and misshapen magnitudes refused by name, a DoRA layer refused as a runtime
 * branch, and the CLI (generate applies it; merge refuses it and writes nothing). */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/unet_internal.h"
#include "testlib.h"

#define TOL 1e-4

/* W + s * up @ down for a layer, in double: [out, in * kh * kw]. */
static double *merged(const zl_lora_layer *y, const float *W) {
    const int out = y->out_features, K = y->in_features * y->kh * y->kw;
    double *m = malloc(sizeof(double) * (size_t)out * K);
    const double s = (double)y->alpha / y->rank;
    for (int o = 0; o < out; o++)
        for (int j = 0; j < K; j++) {
            double v = 0;
            for (int r = 0; r < y->rank; r++) v += (double)y->up[(size_t)o * y->rank + r] * y->down[(size_t)r * K + j];
            m[(size_t)o * K + j] = W[(size_t)o * K + j] + s * v;
        }
    return m;
}

/* Row norms of the merged weight (one per output). */
static double *row_norms(const zl_lora_layer *y, const double *m) {
    const int K = y->in_features * y->kh * y->kw;
    double *n = calloc((size_t)y->out_features, sizeof(double));
    for (int o = 0; o < y->out_features; o++) {
        for (int j = 0; j < K; j++) n[o] += m[(size_t)o * K + j] * m[(size_t)o * K + j];
        n[o] = sqrt(n[o]);
    }
    return n;
}

/* Column norms of the merged weight per input channel (over outputs and kernel positions). */
static double *col_norms(const zl_lora_layer *y, const double *m) {
    const int in = y->in_features, khw = y->kh * y->kw, K = in * khw;
    double *n = calloc((size_t)in, sizeof(double));
    for (int o = 0; o < y->out_features; o++)
        for (int c = 0; c < in; c++)
            for (int k = 0; k < khw; k++) n[c] += m[(size_t)o * K + c * khw + k] * m[(size_t)o * K + c * khw + k];
    for (int c = 0; c < in; c++) n[c] = sqrt(n[c]);
    return n;
}

/* The base weight a layer applies to, from the model's own safetensors (diffusers names). */
static float *base_weight(zl_st_file *model, const char *prefix, const zl_lora_layer *y) {
    char key[512];
    snprintf(key, sizeof key, "%s%s.weight", prefix, y->module);
    int64_t n = 0;
    float *w = zl_st_load_f32(model, key, &n);
    CHECKM(w && n == (int64_t)y->out_features * y->in_features * y->kh * y->kw, "base weight '%s'", key);
    return w;
}

/* kohya key of a layer's module: prefix + module with dots as underscores (SD 1.x kohya
 * files use diffusers names; the fixture's own keys are built the same way). */
static void kohya_key(char *buf, size_t n, const char *prefix, const char *module, const char *suffix) {
    snprintf(buf, n, "%s%s", prefix, module);
    for (char *p = buf + strlen(prefix); *p; p++)
        if (*p == '.') *p = '_';
    strncat(buf, suffix, n - strlen(buf) - 1);
}

typedef struct {
    int n;
    char **names;
    float **vals;
    int *ndim;
    int64_t (*shape)[4];
} dora_set;

/* Write src's tensors plus one magnitude per layer of l (factor: 1 = exact norms, else
 * alternating 1.25 / 0.8): kohya's dora_scale [1, in] per input channel, or with peft,
 * PEFT's <prefix><module>.lora_magnitude_vector [out] per output row. Also returns the
 * values written (for the checks). */
static int write_dora2(const char *src, const char *dst, const zl_lora *l, zl_st_file *unet_w, zl_st_file *te_w,
                       zl_st_file *te2_w, int sdxl, int scaled, int peft, dora_set *ds) {
    zl_st_file *f = NULL;
    if (zl_st_open(src, &f)) return -1;
    const int ns = zl_st_count(f);
    zl_st_entry *e = calloc((size_t)(ns + l->n), sizeof *e);
    memset(ds, 0, sizeof *ds);
    ds->n = l->n;
    ds->names = calloc((size_t)l->n, sizeof *ds->names);
    ds->vals = calloc((size_t)l->n, sizeof *ds->vals);
    ds->ndim = calloc((size_t)l->n, sizeof *ds->ndim);
    ds->shape = calloc((size_t)l->n, sizeof *ds->shape);
    for (int i = 0; i < ns; i++) {
        const zl_st_tensor *t = zl_st_at(f, i);
        e[i].name = t->name;
        e[i].dtype = t->dtype;
        e[i].ndim = t->ndim;
        memcpy(e[i].shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        e[i].data = t->data;
    }
    for (int k = 0; k < l->n; k++) {
        const zl_lora_layer *y = &l->layers[k];
        const int unet = y->part == ZL_PART_UNET;
        float *W = base_weight(unet ? unet_w : y->part == ZL_PART_TE1 ? te_w : te2_w, "", y);
        if (!W) return -1;
        double *m = merged(y, W), *nrm = peft ? row_norms(y, m) : col_norms(y, m);
        const int nv = peft ? y->out_features : y->in_features;
        ds->vals[k] = malloc(sizeof(float) * (size_t)nv);
        for (int c = 0; c < nv; c++) ds->vals[k][c] = (float)(nrm[c] * (scaled ? (c % 2 ? 0.8 : 1.25) : 1.0));
        char key[512];
        if (peft)
            snprintf(key, sizeof key, "%s%s.lora_magnitude_vector",
                     unet ? "unet." : y->part == ZL_PART_TE1 ? "text_encoder." : "text_encoder_2.", y->module);
        else
            kohya_key(key, sizeof key,
                      unet ? "lora_unet_" : y->part == ZL_PART_TE2 ? "lora_te2_" : sdxl ? "lora_te1_" : "lora_te_",
                      y->module, ".dora_scale");
        ds->names[k] = strdup(key);
        ds->ndim[k] = peft ? 1 : y->kind == ZL_LORA_CONV ? 4 : 2;
        int64_t sh[4] = {1, y->in_features, 1, 1};
        if (peft) sh[0] = y->out_features;
        memcpy(ds->shape[k], sh, sizeof sh);
        zl_st_entry *d = &e[ns + k];
        d->name = ds->names[k];
        d->dtype = ZL_DT_F32;
        d->ndim = ds->ndim[k];
        memcpy(d->shape, sh, sizeof sh);
        d->data = ds->vals[k];
        free(W), free(m), free(nrm);
    }
    int rc = zl_st_write(dst, e, ns + l->n, NULL, 0, NULL, 0);
    free(e);
    zl_st_close(f);
    return rc;
}

/* write_dora2 for SD 1.x (text encoder 1 only). */
static int write_dora(const char *src, const char *dst, const zl_lora *l, zl_st_file *unet_w, zl_st_file *te_w,
                      int scaled, int peft, dora_set *ds) {
    return write_dora2(src, dst, l, unet_w, te_w, NULL, 0, scaled, peft, ds);
}

/* src's tensors under PEFT's names with the adapter name kept (as model.state_dict()
 * saves them): .lora_A.weight -> .lora_A.<ad>.weight, likewise lora_B, and
 * .lora_magnitude_vector -> .lora_magnitude_vector.<ad>.weight. */
static int write_adapter_named(const char *src, const char *dst, const char *ad) {
    zl_st_file *f = NULL;
    if (zl_st_open(src, &f)) return -1;
    const int ns = zl_st_count(f);
    zl_st_entry *e = calloc((size_t)ns, sizeof *e);
    char **names = calloc((size_t)ns, sizeof *names);
    for (int i = 0; i < ns; i++) {
        const zl_st_tensor *t = zl_st_at(f, i);
        const size_t L = strlen(t->name);
        names[i] = malloc(L + strlen(ad) + 16);
        static const char *const sufs[3] = {".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"};
        strcpy(names[i], t->name);
        for (int k = 0; k < 3; k++) {
            const size_t sl = strlen(sufs[k]);
            if (L <= sl || strcmp(t->name + L - sl, sufs[k])) continue;
            const size_t stem = k < 2 ? L - 7 : L; /* up to ".lora_A" or the whole key */
            sprintf(names[i] + stem, ".%s.weight", ad);
        }
        e[i].name = names[i];
        e[i].dtype = t->dtype;
        e[i].ndim = t->ndim;
        memcpy(e[i].shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        e[i].data = t->data;
    }
    int rc = zl_st_write(dst, e, ns, NULL, 0, NULL, 0);
    for (int i = 0; i < ns; i++) free(names[i]);
    free(names), free(e);
    zl_st_close(f);
    return rc;
}

static void dora_set_free(dora_set *ds) {
    for (int k = 0; k < ds->n; k++) free(ds->names[k]), free(ds->vals[k]);
    free(ds->names), free(ds->vals), free(ds->ndim), free(ds->shape);
}

static zl_st_file *g_unet_w, *g_te_w;
static char g_exact[1024], g_scaled[1024], g_te_exact[1024];
static zl_lora *g_plain, *g_te_plain;
static dora_set g_sc;

static void setup(void) {
    CHECK_OK(zl_st_open(zt_data("tiny-sd15/unet/diffusion_pytorch_model.safetensors"), &g_unet_w));
    CHECK_OK(zl_st_open(zt_data("tiny-sd15/text_encoder/model.safetensors"), &g_te_w));
    CHECK_OK(zl_lora_load(zt_data("tiny-sd15/loras/style.kohya.safetensors"), NULL, &g_plain));
    CHECK_OK(zl_lora_load(zt_data("tiny-sd15/loras/text_encoders.kohya.safetensors"), NULL, &g_te_plain));
    snprintf(g_exact, sizeof g_exact, "%s", zt_tmp("style_dora_exact.safetensors"));
    snprintf(g_scaled, sizeof g_scaled, "%s", zt_tmp("style_dora.safetensors"));
    snprintf(g_te_exact, sizeof g_te_exact, "%s", zt_tmp("te_dora_exact.safetensors"));
    dora_set a, b;
    CHECK(write_dora(zt_data("tiny-sd15/loras/style.kohya.safetensors"), g_exact, g_plain, g_unet_w, g_te_w, 0, 0, &a) == 0);
    CHECK(write_dora(zt_data("tiny-sd15/loras/style.kohya.safetensors"), g_scaled, g_plain, g_unet_w, g_te_w, 1, 0, &g_sc) ==
          0);
    CHECK(write_dora(zt_data("tiny-sd15/loras/text_encoders.kohya.safetensors"), g_te_exact, g_te_plain, g_unet_w, g_te_w,
                     0, 0, &b) == 0);
    dora_set_free(&a);
    dora_set_free(&b);
}

/* Loading: the magnitudes are read exactly with allow_dora, refused without it. */
static void test_load(void) {
    zl_lora_load_opts o = {.allow_dora = 1};
    zl_lora *l = NULL;
    CHECK_OK(zl_lora_load(g_scaled, &o, &l));
    if (!l) return;
    CHECKM(l->n == g_plain->n && l->n_dora == l->n, "every layer has its magnitude (%d of %d)", l->n_dora, l->n);
    int same = 1, factors = 1;
    for (int k = 0; k < l->n; k++) {
        const zl_lora_layer *y = &l->layers[k], *p = zl_lora_find(g_plain, y->part, y->module);
        CHECK(p != NULL);
        if (!p) continue;
        factors &= y->rank == p->rank && y->alpha == p->alpha &&
                   !memcmp(y->down, p->down, sizeof(float) * (size_t)y->rank * y->in_features * y->kh * y->kw) &&
                   !memcmp(y->up, p->up, sizeof(float) * (size_t)y->out_features * y->rank);
        /* the written values, found by the layer's own module (layers are sorted alike) */
        same &= y->dora && !memcmp(y->dora, g_sc.vals[k], sizeof(float) * (size_t)y->in_features);
    }
    CHECK(factors);
    CHECKM(same, "dora_scale values read back exactly");
    zl_lora_free(l);
    /* without allow_dora (merge, convert, inspect, zip): refused, naming DoRA and generate */
    l = NULL;
    int rc = zl_lora_load(g_scaled, NULL, &l);
    CHECKM(rc == ZL_EUNSUPPORTED && strstr(zl_errmsg(), "DoRA") && strstr(zl_errmsg(), "generate") &&
               strstr(zl_errmsg(), ".dora_scale"),
           "refused without allow_dora: %d %s", rc, zl_errmsg());
    CHECK(l == NULL);
    /* the lazy loader never reads it, even when asked */
    zl_lora_lazy *z = NULL;
    rc = zl_lora_load_lazy(g_scaled, &o, &l, &z);
    CHECKM(rc == ZL_EUNSUPPORTED && l == NULL && z == NULL, "lazy load refuses DoRA: %d %s", rc, zl_errmsg());
}

/* Malformed DoRA files: output-axis, wrong length, a magnitude without its LoRA. */
static void test_refusals(void) {
    const zl_lora_layer *y = &g_plain->layers[0];
    for (int k = 0; k < g_plain->n; k++)
        if (g_plain->layers[k].kind == ZL_LORA_LINEAR && g_plain->layers[k].in_features != 1) {
            y = &g_plain->layers[k];
            break;
        }
    char dk[512], uk[512], sk[512];
    kohya_key(dk, sizeof dk, "lora_unet_", y->module, ".lora_down.weight");
    kohya_key(uk, sizeof uk, "lora_unet_", y->module, ".lora_up.weight");
    kohya_key(sk, sizeof sk, "lora_unet_", y->module, ".dora_scale");
    const int in = y->in_features, out = y->out_features, r = y->rank;
    float *mag = calloc((size_t)(in > out ? in : out) + 1, sizeof(float));
    for (int c = 0; c <= (in > out ? in : out); c++) mag[c] = 1.0f;
    struct {
        const char *name;
        int ndim;
        int64_t shape[2];
        int with_lora, code;
        const char *must;
    } cases[] = {
        {"out_axis", 2, {out, 1}, 1, ZL_EUNSUPPORTED, "per output feature"},
        {"short", 2, {1, in - 1}, 1, ZL_ESHAPE, "wants [1,"},
        {"flat", 1, {in, 0}, 1, ZL_ESHAPE, "wants [1,"},
        {"alone", 2, {1, in}, 0, ZL_EFORMAT, "no matching"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        zl_st_entry e[3] = {0};
        int n = 0;
        if (cases[i].with_lora) {
            e[n] = (zl_st_entry){.name = dk, .dtype = ZL_DT_F32, .ndim = 2, .shape = {r, in}, .data = y->down};
            n++;
            e[n] = (zl_st_entry){.name = uk, .dtype = ZL_DT_F32, .ndim = 2, .shape = {out, r}, .data = y->up};
            n++;
        }
        e[n] = (zl_st_entry){.name = sk, .dtype = ZL_DT_F32, .ndim = cases[i].ndim, .data = mag};
        memcpy(e[n].shape, cases[i].shape, sizeof cases[i].shape);
        n++;
        char fn[64];
        snprintf(fn, sizeof fn, "dora_%s.safetensors", cases[i].name);
        const char *path = zt_tmp(fn);
        CHECK_OK(zl_st_write(path, e, n, NULL, 0, NULL, 0));
        zl_lora_load_opts o = {.expect_family = ZL_FAMILY_SD1, .allow_dora = 1};
        zl_lora *l = NULL;
        int rc = zl_lora_load(path, &o, &l);
        CHECKM(rc == cases[i].code && strstr(zl_errmsg(), cases[i].must) && strstr(zl_errmsg(), "dora_scale"),
               "%s: %d (want %d) %s", cases[i].name, rc, cases[i].code, zl_errmsg());
        CHECK(l == NULL);
        zl_lora_free(l);
    }
    /* PEFT's magnitude must have one value per output row */
    char pa[512], pb[512], pm[512];
    snprintf(pa, sizeof pa, "unet.%s.lora_A.weight", y->module);
    snprintf(pb, sizeof pb, "unet.%s.lora_B.weight", y->module);
    snprintf(pm, sizeof pm, "unet.%s.lora_magnitude_vector", y->module);
    zl_st_entry pe[3] = {{.name = pa, .dtype = ZL_DT_F32, .ndim = 2, .shape = {r, in}, .data = y->down},
                         {.name = pb, .dtype = ZL_DT_F32, .ndim = 2, .shape = {out, r}, .data = y->up},
                         {.name = pm, .dtype = ZL_DT_F32, .ndim = 1, .shape = {out - 1}, .data = mag}};
    const char *path = zt_tmp("peft_dora_short.safetensors");
    CHECK_OK(zl_st_write(path, pe, 3, NULL, 0, NULL, 0));
    zl_lora_load_opts o = {.expect_family = ZL_FAMILY_SD1, .allow_dora = 1};
    zl_lora *l = NULL;
    int rc = zl_lora_load(path, &o, &l);
    CHECKM(rc == ZL_ESHAPE && strstr(zl_errmsg(), "lora_magnitude_vector") && strstr(zl_errmsg(), "per output"),
           "PEFT magnitude of the wrong length: %d %s", rc, zl_errmsg());
    zl_lora_free(l);
    /* dora_scale under other than kohya names (no tool writes those): still refused as DoRA */
    snprintf(pm, sizeof pm, "unet.%s.dora_scale", y->module);
    pe[2] = (zl_st_entry){.name = pm, .dtype = ZL_DT_F32, .ndim = 2, .shape = {1, in}, .data = mag};
    path = zt_tmp("dotted_dora_scale.safetensors");
    CHECK_OK(zl_st_write(path, pe, 3, NULL, 0, NULL, 0));
    l = NULL;
    rc = zl_lora_load(path, &o, &l);
    CHECKM(rc == ZL_EUNSUPPORTED && strstr(zl_errmsg(), "DoRA") && strstr(zl_errmsg(), ".dora_scale"),
           "a dotted dora_scale: %d %s", rc, zl_errmsg());
    zl_lora_free(l);
    /* a LyCORIS LoHa module with a dora_scale: its magnitude is read the same way */
    {
        char h[4][512], hs[512];
        const char *suf[4] = {".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b"};
        float *fa = malloc(sizeof(float) * (size_t)out * 2), *fb = malloc(sizeof(float) * (size_t)2 * in);
        for (int i = 0; i < out * 2; i++) fa[i] = 0.01f * (float)(i % 7 - 3);
        for (int i = 0; i < 2 * in; i++) fb[i] = 0.02f * (float)(i % 5 - 2);
        for (int c = 0; c < in; c++) mag[c] = 0.5f + 0.01f * (float)c;
        zl_st_entry he[5];
        for (int i = 0; i < 4; i++) {
            kohya_key(h[i], sizeof h[i], "lora_unet_", y->module, suf[i]);
            he[i] = (zl_st_entry){.name = h[i], .dtype = ZL_DT_F32, .ndim = 2, .shape = {i % 2 ? 2 : out, i % 2 ? in : 2},
                                  .data = i % 2 ? (const void *)fb : (const void *)fa};
        }
        kohya_key(hs, sizeof hs, "lora_unet_", y->module, ".dora_scale");
        he[4] = (zl_st_entry){.name = hs, .dtype = ZL_DT_F32, .ndim = 2, .shape = {1, in}, .data = mag};
        path = zt_tmp("loha_dora.safetensors");
        CHECK_OK(zl_st_write(path, he, 5, NULL, 0, NULL, 0));
        l = NULL;
        CHECK_OK(zl_lora_load(path, &o, &l));
        CHECKM(l && l->n == 1 && l->n_loha == 1 && l->n_dora == 1 && l->layers[0].dora && !l->layers[0].dora_out &&
                   !memcmp(l->layers[0].dora, mag, sizeof(float) * (size_t)in),
               "a LoHa module's dora_scale is read: %s", l ? "" : zl_errmsg());
        zl_lora_free(l);
        free(fa), free(fb);
    }
    free(mag);
}

/* zl_lora_fold against the formula in double, on every layer of the scaled file, with
 * weight 1 and 0.6 (A1111/ComfyUI: W + w (W' - W)), and a zero column (no NaN). */
static void test_fold_formula(void) {
    zl_lora_load_opts o = {.allow_dora = 1};
    zl_lora *l = NULL;
    CHECK_OK(zl_lora_load(g_scaled, &o, &l));
    if (!l) return;
    int bad = 0;
    for (int k = 0; k < l->n; k++) {
        const zl_lora_layer *y = &l->layers[k];
        const int K = y->in_features * y->kh * y->kw, khw = y->kh * y->kw;
        const size_t n = (size_t)y->out_features * K;
        float *W = base_weight(g_unet_w, "", y);
        if (!W) continue;
        double *m = merged(y, W), *nrm = col_norms(y, m);
        for (int wi = 0; wi < 2; wi++) {
            const float w = wi ? 0.6f : 1.0f;
            float *got = malloc(sizeof(float) * n);
            memcpy(got, W, sizeof(float) * n);
            CHECK_OK(zl_lora_fold(y, w, got));
            double md = 0, mx = 0;
            for (int o2 = 0; o2 < y->out_features; o2++)
                for (int c = 0; c < y->in_features; c++)
                    for (int q = 0; q < khw; q++) {
                        const size_t i = (size_t)o2 * K + c * khw + q;
                        const double wp = nrm[c] > 0 ? m[i] * y->dora[c] / nrm[c] : 0.0;
                        const double ref = W[i] + w * (wp - W[i]);
                        if (!(fabs(got[i] - ref) <= md)) md = fabs(got[i] - ref);
                        if (fabs(ref) > mx) mx = fabs(ref);
                    }
            if (!(md <= 1e-5 * fmax(1, mx))) {
                bad++;
                fprintf(stderr, "fold %s w=%g: max diff %g (max |W'| %g)\n", y->module, (double)w, md, mx);
            }
            free(got);
        }
        free(W), free(m), free(nrm);
    }
    CHECKM(bad == 0, "DoRA fold equals the formula on every layer (%d off)", bad);
    zl_lora_free(l);
    /* an input channel whose merged column is zero (W and down both zero there) stays zero, no NaN */
    float down[2 * 4] = {0, 0.5f, -1, 2, 0, 1, 0.25f, -0.5f}, up[3 * 2] = {1, -1, 0.5f, 2, -0.25f, 1};
    float dora[4] = {3, 0.5f, 2, 1}, W[3 * 4] = {0, 1, 2, -1, 0, -2, 0.5f, 1, 0, 0.25f, -1, 3};
    char mod[] = "synthetic";
    zl_lora_layer y = {.module = mod, .kind = ZL_LORA_LINEAR, .rank = 2, .in_features = 4, .out_features = 3, .kh = 1,
                       .kw = 1, .alpha = 1, .down = down, .up = up, .dora = dora};
    float got[12];
    memcpy(got, W, sizeof W);
    CHECK_OK(zl_lora_fold(&y, 1.0f, got));
    double *m = merged(&y, W), *nrm = col_norms(&y, m);
    int ok = 1;
    for (int i = 0; i < 12; i++) {
        const int c = i % 4;
        const double ref = c == 0 ? 0.0 : m[i] * dora[c] / nrm[c];
        ok &= isfinite(got[i]) && fabs(got[i] - ref) <= 1e-6 * fmax(1, fabs(ref));
    }
    CHECKM(ok && nrm[0] == 0, "a zero column folds to zero (norm %g), the others to the formula", nrm[0]);
    free(m), free(nrm);
}

static float *io_load(zl_st_file *f, const char *name) {
    int64_t n = 0;
    return zl_st_load_f32(f, name, &n);
}

/* tiny-sd15's UNet (stored weights) and its unet_io inputs. */
typedef struct {
    zl_model_paths mp;
    zl_unet *u;
    zl_st_file *io;
    float *sample, *ts, *ctx, *te, *tid;
    zl_unet_input in;
    size_t n;
} unet_fx;

static void fx_close(unet_fx *x) {
    free(x->sample), free(x->ts), free(x->ctx), free(x->te), free(x->tid);
    zl_st_close(x->io);
    zl_unet_free(x->u);
    zl_model_paths_free(&x->mp);
}

/* A fixture's UNet (stored weights) and its unet_io inputs (SDXL's added ones too). */
static int fx_open_at(unet_fx *x, const char *fixture) {
    char path[512];
    memset(x, 0, sizeof *x);
    CHECK_OK(zl_model_paths_resolve(zt_data(fixture), &x->mp));
    zl_unet_load_opts uo = {.weights = ZL_UNET_WEIGHTS_STORED};
    CHECK_OK(zl_unet_load_model(&x->mp, &uo, &x->u));
    snprintf(path, sizeof path, "%s/unet_io.safetensors", fixture);
    CHECK_OK(zl_st_open(zt_data(path), &x->io));
    if (!x->u || !x->io) {
        fx_close(x);
        return 0;
    }
    const zl_st_tensor *s = zl_st_find(x->io, "sample"), *c = zl_st_find(x->io, "encoder_hidden_states");
    x->sample = io_load(x->io, "sample"), x->ts = io_load(x->io, "timestep");
    x->ctx = io_load(x->io, "encoder_hidden_states");
    if (zl_st_find(x->io, "text_embeds")) x->te = io_load(x->io, "text_embeds"), x->tid = io_load(x->io, "time_ids");
    x->in = (zl_unet_input){(int)s->shape[0], (int)s->shape[2], (int)s->shape[3], (int)c->shape[1], x->sample, x->ts,
                            x->ctx, x->te, x->tid};
    x->n = (size_t)s->numel;
    return 1;
}

static int fx_open(unet_fx *x) { return fx_open_at(x, "tiny-sd15"); }

/* The UNet: exact magnitudes reproduce diffusers' out_style; scaled ones fold to the
 * formula in every module (checked in the module weights) and change the output;
 * a DoRA layer is refused as a runtime branch. */
static void test_unet(void) {
    unet_fx x;
    if (!fx_open(&x)) return;
    zl_unet *u = x.u;
    zl_st_file *io = x.io;
    const zl_unet_input in = x.in;
    const size_t n = x.n;
    float *want = io_load(io, "out_style");
    float *got = malloc(sizeof(float) * n), *plain = malloc(sizeof(float) * n);
    zl_lora_load_opts o = {.unet_config = zl_unet_get_config(u), .expect_family = ZL_FAMILY_SD1, .allow_dora = 1};

    zl_lora *ex = NULL, *sc = NULL;
    CHECK_OK(zl_lora_load(g_exact, &o, &ex));
    CHECK_OK(zl_lora_load(g_scaled, &o, &sc));
    if (ex && sc) {
        CHECK_OK(zl_unet_add_lora(u, ex, 1.0f, ZL_UNET_LORA_FOLD, NULL));
        CHECK_OK(zl_unet_forward(u, &in, got));
        zt_close("DoRA with exact magnitudes = diffusers' out_style", got, want, (int64_t)n, TOL);
        CHECK_OK(zl_unet_clear_loras(u));

        CHECK_OK(zl_unet_add_lora(u, g_plain, 1.0f, ZL_UNET_LORA_FOLD, NULL));
        CHECK_OK(zl_unet_forward(u, &in, plain));
        CHECK_OK(zl_unet_clear_loras(u));

        CHECK_OK(zl_unet_add_lora(u, sc, 1.0f, ZL_UNET_LORA_FOLD, NULL));
        int bad = 0;
        for (int k = 0; k < sc->n; k++) {
            const zl_lora_layer *y = &sc->layers[k];
            zl_unet_mod *m = zl_unet_find_mod(u, y->module);
            float *W = base_weight(g_unet_w, "", y);
            if (!m || !m->w.f32 || !W) {
                bad++;
                continue;
            }
            const int K = y->in_features * y->kh * y->kw, khw = y->kh * y->kw;
            double *mm = merged(y, W), *nrm = col_norms(y, mm), md = 0, mx = 0;
            for (size_t i = 0; i < (size_t)y->out_features * K; i++) {
                const int ch = (int)(i % (size_t)K) / khw;
                const double ref = mm[i] * y->dora[ch] / nrm[ch];
                if (!(fabs(m->w.f32[i] - ref) <= md)) md = fabs(m->w.f32[i] - ref);
                if (fabs(ref) > mx) mx = fabs(ref);
            }
            bad += !(md <= 1e-5 * fmax(1, mx));
            free(W), free(mm), free(nrm);
        }
        CHECKM(bad == 0, "folded DoRA weights equal the formula in every module (%d off)", bad);
        CHECK_OK(zl_unet_forward(u, &in, got));
        const double d = zt_relerr(got, plain, (int64_t)n);
        CHECKM(d > 1e-3, "scaled magnitudes change the output (relative difference to the plain LoRA %g)", d);
        CHECK_OK(zl_unet_clear_loras(u));

        int rc = zl_unet_add_lora(u, sc, 1.0f, ZL_UNET_LORA_RUNTIME, NULL);
        CHECKM(rc == ZL_EUNSUPPORTED && strstr(zl_errmsg(), "DoRA"), "runtime branch refused: %d %s", rc, zl_errmsg());
        CHECK_OK(zl_unet_forward(u, &in, got)); /* nothing was attached */
        float *base = io_load(io, "out_base");
        zt_close("after a refused DoRA branch the UNet is the base", got, base, (int64_t)n, TOL);
        free(base);
    }
    zl_lora_free(ex), zl_lora_free(sc);
    free(want), free(got), free(plain);
    fx_close(&x);
}

/* The text encoder: exact magnitudes reproduce text_io's LoRA references. */
static void test_text(void) {
    zl_model_paths mp;
    CHECK_OK(zl_model_paths_resolve(zt_data("tiny-sd15"), &mp));
    zl_text *tx = NULL;
    CHECK_OK(zl_text_load(&mp, NULL, &tx));
    zl_st_file *io = NULL;
    CHECK_OK(zl_st_open(zt_data("tiny-sd15/text_io.safetensors"), &io));
    zl_lora_load_opts o = {.expect_family = ZL_FAMILY_SD1, .allow_dora = 1};
    zl_lora *l = NULL;
    CHECK_OK(zl_lora_load(g_te_exact, &o, &l));
    if (!tx || !io || !l) goto done;
    CHECK(l->n_dora == l->n && l->n > 0);
    CHECK_OK(zl_text_apply_lora(tx, l, 1.0f));
    const zl_st_tensor *t = zl_st_find(io, "ids_clip_l");
    CHECK(t && t->dtype == ZL_DT_I64 && t->ndim == 2);
    if (!t) goto done;
    const int B = (int)t->shape[0];
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)t->numel);
    for (int64_t i = 0; i < t->numel; i++) {
        int64_t v;
        memcpy(&v, t->data + 8 * i, 8);
        ids[i] = (int32_t)v;
    }
    const int D = zl_text_context_dim(tx);
    zl_text_cond c = {.prompt_embeds = malloc(sizeof(float) * (size_t)B * ZL_CLIP_CTX * D)};
    CHECK_OK(zl_text_encode_ids(tx, ids, NULL, B, &c));
    float *want = io_load(io, "lora.prompt_embeds");
    CHECK(want != NULL);
    if (want) zt_close("text encoder DoRA with exact magnitudes = lora.prompt_embeds", c.prompt_embeds, want,
                       (int64_t)B * ZL_CLIP_CTX * D, TOL);
    free(want), free(ids), free(c.prompt_embeds);
done:
    zl_lora_free(l);
    zl_st_close(io);
    zl_text_free(tx);
    zl_model_paths_free(&mp);
}

/* PEFT's form (diffusers' --use_dora): lora_magnitude_vector per output row, the user
 * weight inside. Exact magnitudes reproduce diffusers' out_content; scaled ones, folded
 * at weight 1 into the UNet and at 0.5 by zl_lora_fold, equal the formula in double. */
static void test_peft(void) {
    char ac[1024], ex_path[1024], sc_path[1024];
    snprintf(ac, sizeof ac, "%s", zt_data("tiny-sd15/loras/content.adapter_config.json"));
    snprintf(ex_path, sizeof ex_path, "%s", zt_tmp("content_peft_dora_exact.safetensors"));
    snprintf(sc_path, sizeof sc_path, "%s", zt_tmp("content_peft_dora.safetensors"));
    unet_fx x;
    if (!fx_open(&x)) return;
    zl_unet *u = x.u;
    zl_st_file *io = x.io;
    zl_lora_load_opts o = {.adapter_config = ac, .expect_family = ZL_FAMILY_SD1};
    zl_lora *plain = NULL, *ex = NULL, *sc = NULL;
    CHECK_OK(zl_lora_load(zt_data("tiny-sd15/loras/content.peft.safetensors"), &o, &plain));
    dora_set a = {0}, b = {0};
    if (!plain) goto done;
    CHECK(write_dora(zt_data("tiny-sd15/loras/content.peft.safetensors"), ex_path, plain, g_unet_w, g_te_w, 0, 1, &a) == 0);
    CHECK(write_dora(zt_data("tiny-sd15/loras/content.peft.safetensors"), sc_path, plain, g_unet_w, g_te_w, 1, 1, &b) == 0);
    int rc = zl_lora_load(sc_path, &o, &sc);
    CHECKM(rc == ZL_EUNSUPPORTED && strstr(zl_errmsg(), "lora_magnitude_vector") && strstr(zl_errmsg(), "generate"),
           "PEFT DoRA refused without allow_dora: %d %s", rc, zl_errmsg());
    o.allow_dora = 1;
    CHECK_OK(zl_lora_load(ex_path, &o, &ex));
    CHECK_OK(zl_lora_load(sc_path, &o, &sc));
    if (!ex || !sc) goto done;
    int all_out = ex->n_dora == ex->n && sc->n_dora == sc->n && ex->n == plain->n;
    for (int k = 0; k < sc->n; k++)
        all_out &= sc->layers[k].dora_out && !memcmp(sc->layers[k].dora, b.vals[k], sizeof(float) * (size_t)sc->layers[k].out_features);
    CHECKM(all_out, "every PEFT magnitude read per output row, values exact");
    {
        /* the same file with the adapter name kept in every key reads the same */
        char an_path[1024];
        snprintf(an_path, sizeof an_path, "%s", zt_tmp("content_peft_dora_named.safetensors"));
        CHECK(write_adapter_named(sc_path, an_path, "default") == 0);
        zl_lora *an = NULL;
        CHECK_OK(zl_lora_load(an_path, &o, &an));
        int same = an && an->n == sc->n && an->n_dora == sc->n_dora;
        for (int k = 0; same && k < sc->n; k++) {
            const zl_lora_layer *p = &sc->layers[k], *q = &an->layers[k];
            same = !strcmp(p->module, q->module) && q->dora_out && p->rank == q->rank && p->alpha == q->alpha &&
                   !memcmp(p->dora, q->dora, sizeof(float) * (size_t)p->out_features) &&
                   !memcmp(p->up, q->up, sizeof(float) * (size_t)p->out_features * p->rank);
        }
        CHECKM(same, "PEFT DoRA with the adapter name in its keys (.lora_magnitude_vector.default.weight) reads "
                     "as without: %s", an ? "" : zl_errmsg());
        zl_lora_free(an);
        zl_lora_load_opts no = o;
        no.allow_dora = 0;
        rc = zl_lora_load(an_path, &no, &an);
        CHECKM(rc == ZL_EUNSUPPORTED && strstr(zl_errmsg(), "lora_magnitude_vector"),
               "adapter-named DoRA refused without allow_dora: %d %s", rc, zl_errmsg());
    }

    float *want = io_load(io, "out_content");
    const zl_unet_input in = x.in;
    const size_t n = x.n;
    float *got = malloc(sizeof(float) * n);
    CHECK_OK(zl_unet_add_lora(u, ex, 1.0f, ZL_UNET_LORA_FOLD, NULL));
    CHECK_OK(zl_unet_forward(u, &in, got));
    zt_close("PEFT DoRA with exact magnitudes = diffusers' out_content", got, want, (int64_t)n, TOL);
    CHECK_OK(zl_unet_clear_loras(u));
    CHECK_OK(zl_unet_add_lora(u, sc, 1.0f, ZL_UNET_LORA_FOLD, NULL));
    int bad = 0;
    for (int k = 0; k < sc->n; k++) {
        const zl_lora_layer *y = &sc->layers[k];
        const int K = y->in_features * y->kh * y->kw;
        float *W = base_weight(g_unet_w, "", y);
        zl_unet_mod *m = zl_unet_find_mod(u, y->module);
        if (!W || !m || !m->w.f32) {
            bad++;
            free(W);
            continue;
        }
        for (int wi = 0; wi < 2; wi++) {
            /* wi 0: the UNet's folded weight (w = 1); wi 1: zl_lora_fold at w = 0.5 (inside the norm) */
            const float w = wi ? 0.5f : 1.0f;
            zl_lora_layer yw = *y;
            yw.alpha = y->alpha * w; /* W + w s up down, in double, through merged() */
            double *mm = merged(&yw, W), *nrm = row_norms(&yw, mm), md = 0, mx = 0;
            float *got_w = m->w.f32;
            float *tmp = NULL;
            if (wi) {
                tmp = malloc(sizeof(float) * (size_t)y->out_features * K);
                memcpy(tmp, W, sizeof(float) * (size_t)y->out_features * K);
                CHECK_OK(zl_lora_fold(y, w, tmp));
                got_w = tmp;
            }
            for (size_t i = 0; i < (size_t)y->out_features * K; i++) {
                const int row = (int)(i / (size_t)K);
                const double ref = mm[i] * y->dora[row] / nrm[row];
                if (!(fabs(got_w[i] - ref) <= md)) md = fabs(got_w[i] - ref);
                if (fabs(ref) > mx) mx = fabs(ref);
            }
            bad += !(md <= 1e-5 * fmax(1, mx));
            free(mm), free(nrm), free(tmp);
        }
        free(W);
    }
    CHECKM(bad == 0, "PEFT DoRA folds equal the formula (%d off)", bad);
    CHECK_OK(zl_unet_clear_loras(u));
    free(want), free(got);
done:
    dora_set_free(&a);
    dora_set_free(&b);
    zl_lora_free(plain), zl_lora_free(ex), zl_lora_free(sc);
    fx_close(&x);
}

/* ||up @ down - D||_F / ||D||_F in double, D [out, K] given in double. */
static double factor_err(const zl_lora_layer *y, const double *D) {
    const int out = y->out_features, K = y->in_features * y->kh * y->kw;
    const double s = (double)y->alpha / y->rank;
    double e = 0, t = 0;
    for (int o = 0; o < out; o++)
        for (int j = 0; j < K; j++) {
            double v = 0;
            for (int r = 0; r < y->rank; r++) v += (double)y->up[(size_t)o * y->rank + r] * y->down[(size_t)r * K + j];
            const double d = D[(size_t)o * K + j];
            e += (s * v - d) * (s * v - d);
            t += d * d;
        }
    return t > 0 ? sqrt(e / t) : sqrt(e);
}

/* The fixture's out_style from its UNet with `b` as a runtime branch at weight 1. */
static void style_out_check(unet_fx *x, const zl_lora *b, const char *what) {
    float *want = io_load(x->io, "out_style"), *got = malloc(sizeof(float) * x->n);
    CHECK_OK(zl_unet_add_lora(x->u, b, 1.0f, ZL_UNET_LORA_RUNTIME, NULL));
    CHECK_OK(zl_unet_forward(x->u, &x->in, got));
    zt_close(what, got, want, (int64_t)x->n, TOL);
    CHECK_OK(zl_unet_clear_loras(x->u));
    free(want), free(got);
}

/* Layers of `baked` (a DoRA LoRA with exact magnitudes, baked) that are not their plain
 * layer's update s * up @ down within 1e-5 (relative, in double); base weights from the
 * model files of each part. */
static int bake_mismatches(const zl_lora *plain, const zl_lora *baked, zl_st_file *uw, zl_st_file *t1, zl_st_file *t2) {
    int bad = baked->n != plain->n ? plain->n : 0;
    for (int k = 0; !bad && k < baked->n; k++) {
        const zl_lora_layer *p = &plain->layers[k];
        float *W = base_weight(p->part == ZL_PART_UNET ? uw : p->part == ZL_PART_TE1 ? t1 : t2, "", p);
        if (!W) {
            bad++;
            continue;
        }
        double *mm = merged(p, W);
        const size_t nn = (size_t)p->out_features * p->in_features * p->kh * p->kw;
        for (size_t i = 0; i < nn; i++) mm[i] -= W[i];
        const double e = factor_err(&baked->layers[k], mm);
        bad += strcmp(p->module, baked->layers[k].module) || p->part != baked->layers[k].part || !(e <= 1e-5);
        free(W), free(mm);
    }
    return bad;
}

/* Baking DoRA into a plain LoRA (zl_lora_bake_dora, convert --model). The change D = W' - W
 * is computed here in double from the DoRA formula (LyCORIS form, per input channel):
 *  - at full rank the factors reproduce D;
 *  - at the layer's rank the reported error is that of the factors, and no worse than the
 *    layer's own up @ down as a rank-r candidate (the truncated SVD is the best one);
 *  - with exact magnitudes D is the LoRA's own update (error ~0), so the baked file,
 *    written by convert, reproduces diffusers' out_style as a plain LoRA;
 *  - the text encoder's layers are baked from its weights the same way. */
static void test_bake(void) {
    zl_lora_load_opts o = {.expect_family = ZL_FAMILY_SD1, .allow_dora = 1};
    zl_lora *sc = NULL, *full = NULL;
    CHECK_OK(zl_lora_load(g_scaled, &o, &sc));
    CHECK_OK(zl_lora_load(g_scaled, &o, &full));
    if (!sc || !full) goto done;
    int bad_full = 0, bad_err = 0, bad_opt = 0, n_lossy = 0;
    for (int k = 0; k < sc->n; k++) {
        zl_lora_layer *y = &sc->layers[k], *yf = &full->layers[k];
        const int out = y->out_features, K = y->in_features * y->kh * y->kw, khw = y->kh * y->kw;
        float *W = base_weight(g_unet_w, "", y);
        if (!W) continue;
        double *mm = merged(y, W), *nrm = col_norms(y, mm);
        double *D = malloc(sizeof(double) * (size_t)out * K), *L = malloc(sizeof(double) * (size_t)out * K);
        for (size_t i = 0; i < (size_t)out * K; i++) {
            const int ch = (int)(i % (size_t)K) / khw;
            D[i] = mm[i] * y->dora[ch] / nrm[ch] - W[i];
            L[i] = mm[i] - W[i]; /* the layer's own update, a rank-r candidate */
        }
        double err = -1, norm = -1, ferr = -1;
        const int r = y->rank;
        CHECK_OK(zl_lora_bake_dora(yf, W, out < K ? out : K, &ferr, NULL));
        bad_full += !(factor_err(yf, D) <= 1e-5 && ferr <= 1e-5 && !yf->dora);
        CHECK_OK(zl_lora_bake_dora(y, W, 0, &err, &norm));
        const double got = factor_err(y, D);
        double cand = 0, dn = 0;
        for (size_t i = 0; i < (size_t)out * K; i++) cand += (L[i] - D[i]) * (L[i] - D[i]), dn += D[i] * D[i];
        cand = sqrt(cand / dn);
        bad_err += !(y->rank == r && !y->dora && fabs(got - err) <= 1e-5 + 1e-3 * err && fabs(norm - sqrt(dn)) <= 1e-5 * sqrt(dn));
        bad_opt += !(got <= cand + 1e-6);
        n_lossy += err > 1e-3;
        free(W), free(mm), free(nrm), free(D), free(L);
    }
    CHECKM(bad_full == 0, "baked at full rank, every layer's factors reproduce W' - W (%d off)", bad_full);
    CHECKM(bad_err == 0, "baked at the layer's rank: reported error and norm are the factors' (%d off)", bad_err);
    CHECKM(bad_opt == 0, "baked at the layer's rank: no worse than the layer's own update (%d worse)", bad_opt);
    CHECKM(n_lossy > 0, "scaled magnitudes make some layers lossy at their rank (%d)", n_lossy);

    /* The CLI on exact magnitudes: the baked file is a plain LoRA reproducing out_style. */
    char baked[1024];
    snprintf(baked, sizeof baked, "%s", zt_tmp("style_baked.safetensors"));
    int rc = zt_cli("convert %s -o %s", g_exact, baked);
    CHECKM(rc != 0 && strstr(zt_err, "DoRA") && strstr(zt_err, "--model") && !zl_file_exists(baked),
           "convert without --model refuses DoRA and names --model: rc %d, %s", rc, zt_err);
    /* F32 out: the fixture is BF16, whose rounding of the new factors (2.5e-3 relative) is
     * above what the comparison with out_style allows */
    rc = zt_cli("convert %s --model %s --dtype f32 -o %s", g_exact, zt_data("tiny-sd15"), baked);
    CHECKM(rc == 0 && strstr(zt_out, "overall relative Frobenius error"), "convert --model bakes: rc %d, %s", rc, zt_err);
    unet_fx x;
    zl_lora *b = NULL;
    if (rc == 0 && fx_open(&x)) {
        zl_lora_load_opts po = {.unet_config = zl_unet_get_config(x.u), .expect_family = ZL_FAMILY_SD1};
        CHECK_OK(zl_lora_load(baked, &po, &b)); /* no allow_dora: nothing DoRA is left */
        if (b) {
            CHECK(b->n == g_plain->n && b->n_dora == 0);
            style_out_check(&x, b, "baked exact-magnitude DoRA (runtime branch) = diffusers' out_style");
        }
        fx_close(&x);
    }
    char wrong[1024];
    snprintf(wrong, sizeof wrong, "%s", zt_tmp("wrong_family.safetensors"));
    rc = zt_cli("convert %s --model %s -o %s", g_exact, zt_data("mini-sdxl"), wrong);
    CHECKM(rc != 0 && !zl_file_exists(wrong), "an SD 1.x DoRA against an SDXL --model is refused: rc %d, %s", rc, zt_err);
    char merged_out[1024];
    snprintf(merged_out, sizeof merged_out, "%s", zt_tmp("baked_merged.safetensors"));
    rc = zt_cli("merge --content %s --style %s -o %s", zt_data("tiny-sd15/loras/content.kohya.safetensors"), baked,
                merged_out);
    CHECKM(rc == 0 && zl_file_exists(merged_out), "merge takes the baked LoRA: rc %d, %s", rc, zt_err);

    /* Text encoder: exact magnitudes, so each baked layer is the plain layer's update. */
    char te_baked[1024];
    snprintf(te_baked, sizeof te_baked, "%s", zt_tmp("te_baked.safetensors"));
    rc = zt_cli("convert %s --model %s --format peft --dtype f32 -o %s", g_te_exact, zt_data("tiny-sd15"), te_baked);
    CHECKM(rc == 0, "convert --model bakes text-encoder DoRA: rc %d, %s", rc, zt_err);
    zl_lora *tb = NULL;
    zl_lora_load_opts to = {.expect_family = ZL_FAMILY_SD1};
    if (rc == 0) CHECK_OK(zl_lora_load(te_baked, &to, &tb));
    if (tb) CHECKM(bake_mismatches(g_te_plain, tb, NULL, g_te_w, NULL) == 0, "baked text-encoder layers equal the plain LoRA's updates");
    zl_lora_free(b), zl_lora_free(tb);
done:
    zl_lora_free(sc), zl_lora_free(full);
}

/* Baking on SDXL (mini-sdxl), exact magnitudes: the kohya style LoRA against the diffusers
 * folder's UNet reproduces out_style; both text encoders' layers, against the folder and
 * against the single file (bigG's fused in_proj), are the plain layers' updates. */
static void test_bake_sdxl(void) {
    zl_st_file *uw = NULL, *t1 = NULL, *t2 = NULL;
    zl_lora *style = NULL, *te = NULL, *b = NULL;
    CHECK_OK(zl_st_open(zt_data("mini-sdxl/unet/diffusion_pytorch_model.safetensors"), &uw));
    CHECK_OK(zl_st_open(zt_data("mini-sdxl/text_encoder/model.safetensors"), &t1));
    CHECK_OK(zl_st_open(zt_data("mini-sdxl/text_encoder_2/model.safetensors"), &t2));
    zl_lora_load_opts o = {.expect_family = ZL_FAMILY_SDXL};
    CHECK_OK(zl_lora_load(zt_data("mini-sdxl/loras/style.kohya.safetensors"), &o, &style));
    CHECK_OK(zl_lora_load(zt_data("mini-sdxl/loras/text_encoders.kohya.safetensors"), &o, &te));
    if (!uw || !t1 || !t2 || !style || !te) goto done;
    int n_te2 = 0;
    for (int k = 0; k < te->n; k++) n_te2 += te->layers[k].part == ZL_PART_TE2;
    CHECK(n_te2 > 0 && n_te2 < te->n);
    char sx[1024], tx[1024];
    snprintf(sx, sizeof sx, "%s", zt_tmp("sdxl_style_dora.safetensors"));
    snprintf(tx, sizeof tx, "%s", zt_tmp("sdxl_te_dora.safetensors"));
    dora_set a = {0}, c = {0};
    CHECK(write_dora2(zt_data("mini-sdxl/loras/style.kohya.safetensors"), sx, style, uw, t1, t2, 1, 0, 0, &a) == 0);
    CHECK(write_dora2(zt_data("mini-sdxl/loras/text_encoders.kohya.safetensors"), tx, te, uw, t1, t2, 1, 0, 0, &c) == 0);
    dora_set_free(&a), dora_set_free(&c);

    char baked[1024];
    snprintf(baked, sizeof baked, "%s", zt_tmp("sdxl_style_baked.safetensors"));
    int rc = zt_cli("convert %s --model %s --dtype f32 -o %s", sx, zt_data("mini-sdxl"), baked);
    CHECKM(rc == 0, "convert --model bakes an SDXL DoRA: rc %d, %s", rc, zt_err);
    if (rc == 0) CHECK_OK(zl_lora_load(baked, &o, &b));
    if (b) {
        CHECKM(bake_mismatches(style, b, uw, t1, t2) == 0, "baked SDXL UNet layers equal the plain LoRA's updates");
        unet_fx x;
        if (fx_open_at(&x, "mini-sdxl")) {
            style_out_check(&x, b, "baked SDXL DoRA (exact magnitudes) = diffusers' out_style");
            fx_close(&x);
        }
    }
    {
        /* text encoders only, against an SD 1.x model: refused by family, nothing written */
        char wrong[1024];
        snprintf(wrong, sizeof wrong, "%s", zt_tmp("sdxl_te_on_sd15.safetensors"));
        rc = zt_cli("convert %s --model %s -o %s", tx, zt_data("tiny-sd15"), wrong);
        CHECKM(rc != 0 && strstr(zt_err, "sdxl LoRA") && strstr(zt_err, "is sd1") && !zl_file_exists(wrong),
               "SDXL text-encoder DoRA against an SD 1.x --model refused: rc %d, %s", rc, zt_err);
    }
    static const char *const models[2] = {"mini-sdxl", "mini-sdxl/single_file.safetensors"};
    for (int m = 0; m < 2; m++) {
        char tb_path[1024];
        snprintf(tb_path, sizeof tb_path, "%s", zt_tmp("sdxl_te_baked.safetensors"));
        char cfgs[2048] = "";
        if (m) /* the fixture's widths are too small for a single file's head counts to be inferred */
            snprintf(cfgs, sizeof cfgs, "--te1-config %s --te2-config %s", zt_data("mini-sdxl/text_encoder/config.json"),
                     zt_data("mini-sdxl/text_encoder_2/config.json"));
        rc = zt_cli("convert %s --model %s %s --dtype f32 -o %s", tx, zt_data(models[m]), cfgs, tb_path);
        CHECKM(rc == 0, "convert --model %s bakes SDXL text-encoder DoRA: rc %d, %s", models[m], rc, zt_err);
        zl_lora *tb = NULL;
        if (rc == 0) CHECK_OK(zl_lora_load(tb_path, &o, &tb));
        if (tb)
            CHECKM(bake_mismatches(te, tb, uw, t1, t2) == 0,
                   "baked against %s, both text encoders' layers equal the plain LoRA's updates", models[m]);
        zl_lora_free(tb);
    }
done:
    zl_lora_free(style), zl_lora_free(te), zl_lora_free(b);
    zl_st_close(uw), zl_st_close(t1), zl_st_close(t2);
}

/* zip takes a DoRA LoRA: baked against the model first. With exact magnitudes the PEFT DoRA
 * content LoRA is the plain one, so the 10-step run on zip_io's fixed inputs follows the
 * fixture's Adam trajectory (torch autograd) within FIXTURES.md's 1e-3. */
static void test_zip(void) {
    char ac[1024], sac[1024], dora[1024], out[1024], rep[1024];
    snprintf(ac, sizeof ac, "%s", zt_data("tiny-sd15/loras/content.adapter_config.json"));
    snprintf(sac, sizeof sac, "%s", zt_data("tiny-sd15/loras/style.adapter_config.json"));
    snprintf(dora, sizeof dora, "%s", zt_tmp("content_zip_dora.safetensors"));
    snprintf(out, sizeof out, "%s", zt_tmp("zip_dora_out.safetensors"));
    snprintf(rep, sizeof rep, "%s", zt_tmp("zip_dora_report.json"));
    zl_lora_load_opts o = {.adapter_config = ac, .expect_family = ZL_FAMILY_SD1};
    zl_lora *plain = NULL;
    CHECK_OK(zl_lora_load(zt_data("tiny-sd15/loras/content.peft.safetensors"), &o, &plain));
    if (!plain) return;
    dora_set a = {0};
    CHECK(write_dora(zt_data("tiny-sd15/loras/content.peft.safetensors"), dora, plain, g_unet_w, g_te_w, 0, 1, &a) == 0);
    dora_set_free(&a);
    zl_lora_free(plain);
    int rc = zt_cli("zip --model %s --content %s --content-adapter-config %s --style %s --style-adapter-config %s "
                    "--fixed-inputs %s --steps 10 --lr 0.01 -o %s --report %s",
                    zt_data("tiny-sd15"), dora, ac, zt_data("tiny-sd15/loras/style.peft.safetensors"), sac,
                    zt_data("tiny-sd15/zip_io.safetensors"), out, rep);
    CHECKM(rc == 0 && strstr(zt_err, "DoRA layers baked"), "zip with a DoRA content LoRA: rc %d, %s", rc, zt_err);
    if (rc) return;
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(zt_data("tiny-sd15/zip_io.safetensors"), &f));
    int64_t nt = 0;
    float *traj = f ? zl_st_load_f32(f, "adam.trajectory", &nt) : NULL;
    json_error_t je;
    json_t *j = json_load_file(rep, 0, &je);
    json_t *curve = j ? json_object_get(j, "loss_curve") : NULL;
    CHECK(traj && nt == 44 && json_array_size(curve) == 11);
    if (traj && nt == 44 && json_array_size(curve) == 11) {
        float got[44];
        for (int r = 0; r < 11; r++)
            for (int c = 0; c < 4; c++)
                got[r * 4 + c] = (float)json_real_value(json_array_get(json_array_get(curve, (size_t)r), (size_t)c));
        const double e = zt_relerr(got, traj, 44);
        CHECKM(e <= 1e-3, "zip on the baked DoRA follows the fixture's Adam trajectory (relative error %.3g)", e);
    }
    json_decref(j);
    free(traj);
    zl_st_close(f);

    /* eval-merge bakes its DoRA content LoRA too: with exact magnitudes it measures the merged
     * LoRA as it does against the plain content LoRA (x0 draws from zip_io, 2 samples) */
    {
        double loss[2][2] = {{0}};
        char plain_c[1024];
        snprintf(plain_c, sizeof plain_c, "%s", zt_data("tiny-sd15/loras/content.peft.safetensors"));
        for (int v = 0; v < 2; v++) {
            rc = zt_cli("eval-merge --model %s --content %s --content-adapter-config %s --style %s "
                        "--style-adapter-config %s --fixed-inputs %s --merged %s --samples 2 --seed 3 --json",
                        zt_data("tiny-sd15"), v ? plain_c : dora, ac, zt_data("tiny-sd15/loras/style.peft.safetensors"),
                        sac, zt_data("tiny-sd15/zip_io.safetensors"), out);
            json_t *jj = rc ? NULL : json_loads(zt_out, 0, &je);
            json_t *row = jj ? json_array_get(json_object_get(jj, "rows"), 0) : NULL;
            CHECKM(row != NULL && (v || strstr(zt_err, "DoRA layers baked")), "eval-merge with the %s content LoRA: rc %d, %s",
                   v ? "plain" : "DoRA", rc, zt_err);
            loss[v][0] = json_number_value(json_object_get(row, "loss_content"));
            loss[v][1] = json_number_value(json_object_get(row, "loss_style"));
            json_decref(jj);
        }
        CHECKM(loss[1][0] > 0 && fabs(loss[0][0] - loss[1][0]) <= 1e-4 * loss[1][0] &&
                   fabs(loss[0][1] - loss[1][1]) <= 1e-4 * loss[1][1],
               "eval-merge: the baked DoRA content LoRA measures as the plain one (%.9g %.9g vs %.9g %.9g)", loss[0][0],
               loss[0][1], loss[1][0], loss[1][1]);
    }

    /* Scaled magnitudes: zip bakes as convert --model does (same loss curve as zip on the file
     * convert wrote), and the magnitudes matter (the curve moves away from the plain LoRA's). */
    char sc[1024], baked[1024];
    snprintf(sc, sizeof sc, "%s", zt_tmp("content_zip_dora_scaled.safetensors"));
    snprintf(baked, sizeof baked, "%s", zt_tmp("content_zip_dora_baked.safetensors"));
    CHECK_OK(zl_lora_load(zt_data("tiny-sd15/loras/content.peft.safetensors"), &o, &plain));
    if (!plain) return;
    CHECK(write_dora(zt_data("tiny-sd15/loras/content.peft.safetensors"), sc, plain, g_unet_w, g_te_w, 1, 1, &a) == 0);
    dora_set_free(&a);
    zl_lora_free(plain);
    rc = zt_cli("convert %s --model %s --adapter-config %s --dtype f32 -o %s", sc, zt_data("tiny-sd15"), ac, baked);
    CHECKM(rc == 0, "convert --model on the scaled PEFT DoRA: rc %d, %s", rc, zt_err);
    char plain_path[1024];
    snprintf(plain_path, sizeof plain_path, "%s", zt_data("tiny-sd15/loras/content.peft.safetensors"));
    const char *const contents[3] = {sc, baked, plain_path};
    float curves[3][44];
    int ok = rc == 0;
    for (int v = 0; v < 3 && ok; v++) {
        /* the baked file is F32 with alpha = rank: no adapter config; the others are PEFT's */
        char acf[1100] = "";
        if (v != 1) snprintf(acf, sizeof acf, "--content-adapter-config %s", ac);
        rc = zt_cli("zip --model %s --content %s %s --style %s --style-adapter-config %s --fixed-inputs %s --steps 10 "
                    "--lr 0.01 -o %s --report %s -q",
                    zt_data("tiny-sd15"), contents[v], acf, zt_data("tiny-sd15/loras/style.peft.safetensors"), sac,
                    zt_data("tiny-sd15/zip_io.safetensors"), out, rep);
        json_t *jj = rc == 0 ? json_load_file(rep, 0, &je) : NULL;
        json_t *cv = jj ? json_object_get(jj, "loss_curve") : NULL;
        ok = rc == 0 && json_array_size(cv) == 11;
        CHECKM(ok, "zip run %d: rc %d, %s", v, rc, zt_err);
        for (int r = 0; ok && r < 11; r++)
            for (int c = 0; c < 4; c++)
                curves[v][r * 4 + c] = (float)json_real_value(json_array_get(json_array_get(cv, (size_t)r), (size_t)c));
        json_decref(jj);
    }
    if (ok) {
        /* columns: loss, content loss, style loss, similarity (which dominates the others' size) */
        float lc[3][11];
        for (int v = 0; v < 3; v++)
            for (int r = 0; r < 11; r++) lc[v][r] = curves[v][r * 4 + 1];
        const double same = zt_relerr(curves[0], curves[1], 44), moved = zt_relerr(lc[0], lc[2], 11);
        CHECKM(same <= 1e-6, "zip on a DoRA LoRA = zip on it baked by convert (relative difference %.3g)", same);
        CHECKM(moved > 1e-2, "the magnitudes change zip's content loss (relative difference to the plain LoRA's %.3g)",
               moved);
    }
}

/* merge --model bakes a DoRA input first: with exact magnitudes the merged LoRA's update in
 * every layer is the merge of the plain LoRAs' (1e-5 relative, in double); without --model
 * the DoRA file is refused and nothing is written. */
static void test_merge(void) {
    char a[1024], b[1024], none[1024], model[1024], content[1024];
    snprintf(a, sizeof a, "%s", zt_tmp("merge_dora.safetensors"));
    snprintf(b, sizeof b, "%s", zt_tmp("merge_plain.safetensors"));
    snprintf(none, sizeof none, "%s", zt_tmp("merge_none.safetensors"));
    snprintf(model, sizeof model, "%s", zt_data("tiny-sd15"));
    snprintf(content, sizeof content, "%s", zt_data("tiny-sd15/loras/content.kohya.safetensors"));
    int rc = zt_cli("merge --content %s --style %s -o %s", content, g_exact, none);
    CHECKM(rc != 0 && strstr(zt_err, "DoRA") && !zl_file_exists(none), "merge without --model refuses DoRA: rc %d, %s",
           rc, zt_err);
    rc = zt_cli("merge --model %s --content %s --style %s --dtype f32 -o %s", model, content, g_exact, a);
    CHECKM(rc == 0 && strstr(zt_err, "DoRA layers baked"), "merge --model with a DoRA style: rc %d, %s", rc, zt_err);
    int rc2 = zt_cli("merge --model %s --content %s --style %s --dtype f32 -o %s -q", model, content,
                     zt_data("tiny-sd15/loras/style.kohya.safetensors"), b);
    CHECKM(rc2 == 0, "merge of the plain LoRAs: rc %d, %s", rc2, zt_err);
    zl_lora *la = NULL, *lb = NULL;
    zl_lora_load_opts o = {.expect_family = ZL_FAMILY_SD1};
    if (!rc && !rc2) {
        CHECK_OK(zl_lora_load(a, &o, &la));
        CHECK_OK(zl_lora_load(b, &o, &lb));
    }
    if (la && lb) {
        int bad = la->n != lb->n;
        for (int k = 0; !bad && k < la->n; k++) {
            const zl_lora_layer *x = &lb->layers[k];
            const int K = x->in_features * x->kh * x->kw;
            double *d = calloc((size_t)x->out_features * K, sizeof(double));
            const double sx = (double)x->alpha / x->rank;
            for (int o2 = 0; o2 < x->out_features; o2++)
                for (int j = 0; j < K; j++) {
                    double v = 0;
                    for (int r = 0; r < x->rank; r++) v += (double)x->up[(size_t)o2 * x->rank + r] * x->down[(size_t)r * K + j];
                    d[(size_t)o2 * K + j] = sx * v;
                }
            bad += strcmp(x->module, la->layers[k].module) || !(factor_err(&la->layers[k], d) <= 1e-5);
            free(d);
        }
        CHECKM(bad == 0, "merge --model of a DoRA (exact magnitudes) = merge of the plain LoRA, every layer (%d off)", bad);
    }
    zl_lora_free(la), zl_lora_free(lb);
    la = lb = NULL;

    /* scaled magnitudes: merge --model = merge of the file convert --model bakes (the same factors) */
    char baked[1024];
    snprintf(baked, sizeof baked, "%s", zt_tmp("merge_scaled_baked.safetensors"));
    rc = zt_cli("convert %s --model %s --dtype f32 -o %s -q", g_scaled, model, baked);
    if (!rc) rc = zt_cli("merge --model %s --content %s --style %s --dtype f32 -o %s -q", model, content, g_scaled, a);
    if (!rc) rc = zt_cli("merge --model %s --content %s --style %s --dtype f32 -o %s -q", model, content, baked, b);
    CHECKM(rc == 0, "scaled DoRA: convert and both merges: rc %d, %s", rc, zt_err);
    if (!rc) {
        CHECK_OK(zl_lora_load(a, &o, &la));
        CHECK_OK(zl_lora_load(b, &o, &lb));
    }
    if (la && lb) {
        int same = la->n == lb->n;
        for (int k = 0; same && k < la->n; k++) {
            const zl_lora_layer *x = &la->layers[k], *y = &lb->layers[k];
            const int K = x->in_features * x->kh * x->kw;
            same = x->rank == y->rank && x->alpha == y->alpha && !strcmp(x->module, y->module) &&
                   !memcmp(x->up, y->up, sizeof(float) * (size_t)x->out_features * x->rank) &&
                   !memcmp(x->down, y->down, sizeof(float) * (size_t)x->rank * K);
        }
        CHECKM(same, "merge --model of a scaled DoRA = merge of its convert --model bake, bit for bit");
    }
    zl_lora_free(la), zl_lora_free(lb);

    /* inspect --model shows a DoRA LoRA as baked: the layers' numbers of the convert-baked file */
    {
        json_t *j[2] = {NULL, NULL};
        for (int v = 0; v < 2; v++) {
            rc = zt_cli("inspect %s --model %s --json", v ? baked : g_scaled, model);
            json_error_t je;
            j[v] = rc ? NULL : json_loads(zt_out, 0, &je);
            CHECKM(j[v] != NULL, "inspect --model --json of the %s file: rc %d, %s", v ? "baked" : "DoRA", rc, zt_err);
        }
        json_t *la2 = j[0] ? json_object_get(j[0], "layers") : NULL, *lb2 = j[1] ? json_object_get(j[1], "layers") : NULL;
        size_t nl = json_array_size(la2);
        int same = nl > 0 && nl == json_array_size(lb2);
        for (size_t k = 0; same && k < nl; k++) {
            json_t *x = json_object_get(json_array_get(la2, k), "a"), *y = json_object_get(json_array_get(lb2, k), "a");
            static const char *const keys[4] = {"rank", "scale", "norm", "prune80"};
            for (int q = 0; q < 4 && same; q++)
                same = json_number_value(json_object_get(x, keys[q])) == json_number_value(json_object_get(y, keys[q])) &&
                       json_object_get(x, keys[q]);
        }
        CHECKM(same, "inspect --model of a DoRA LoRA = inspect of its bake (%zu layers)", nl);
        json_decref(j[0]), json_decref(j[1]);
    }

    /* the library refuses an unbaked DoRA LoRA where its magnitudes would be lost */
    zl_lora_load_opts ao = {.expect_family = ZL_FAMILY_SD1, .allow_dora = 1};
    zl_lora *d = NULL, *m = NULL;
    CHECK_OK(zl_lora_load(g_scaled, &ao, &d));
    if (d) {
        char w[1024];
        snprintf(w, sizeof w, "%s", zt_tmp("unbaked.safetensors"));
        rc = zl_lora_write(w, d, NULL);
        CHECKM(rc == ZL_EUNSUPPORTED && strstr(zl_errmsg(), "DoRA") && !zl_file_exists(w),
               "zl_lora_write refuses DoRA layers: %d %s", rc, zl_errmsg());
        rc = zl_lora_merge(g_plain, d, NULL, &m, NULL);
        CHECKM(rc == ZL_EUNSUPPORTED && strstr(zl_errmsg(), "DoRA") && !m, "zl_lora_merge refuses DoRA layers: %d %s",
               rc, zl_errmsg());
        zl_lora_free(m);
    }
    zl_lora_free(d);
}

/* The CLI: generate applies a DoRA LoRA and names it in the PNG; merge refuses it. */
static void test_cli(void) {
    const char *png = zt_tmp("dora.png");
    int rc = zt_cli("generate --model %s --lora %s:0.8 -p 'a cat' --steps 2 -W 64 -H 64 --seed 3 -o %s -q",
                    zt_data("tiny-sd15"), g_scaled, png);
    CHECKM(rc == 0 && zl_file_exists(png), "generate with a DoRA LoRA: rc %d, %s", rc, zt_err);
    {
        /* generate with the DoRA file (scaled magnitudes, weight 1) and with it baked at full rank
         * (--rank above every layer's size: D itself) in F32: the same final latents */
        char full[1024], lat[2][1024], img[1024];
        snprintf(full, sizeof full, "%s", zt_tmp("style_dora_full.safetensors"));
        snprintf(img, sizeof img, "%s", zt_tmp("dora_cmp.png"));
        rc = zt_cli("convert %s --model %s --rank 4096 --dtype f32 -o %s", g_scaled, zt_data("tiny-sd15"), full);
        CHECKM(rc == 0, "full-rank bake: rc %d, %s", rc, zt_err);
        float *l2[2] = {NULL, NULL};
        int64_t nl[2] = {0, 0};
        for (int v = 0; v < 2 && rc == 0; v++) {
            snprintf(lat[v], sizeof lat[v], "%s", zt_tmp(v ? "lat_baked.safetensors" : "lat_dora.safetensors"));
            rc = zt_cli("generate --model %s --lora %s -p 'a cat' --steps 3 -W 64 -H 64 --seed 5 --save-latent %s -o %s -q",
                        zt_data("tiny-sd15"), v ? full : g_scaled, lat[v], img);
            CHECKM(rc == 0, "generate (%s): rc %d, %s", v ? "baked" : "DoRA", rc, zt_err);
            zl_st_file *f = NULL;
            if (rc == 0 && zl_st_open(lat[v], &f) == 0) {
                l2[v] = zl_st_load_f32(f, "latent", &nl[v]);
                zl_st_close(f);
            }
        }
        CHECK(l2[0] && l2[1] && nl[0] == nl[1] && nl[0] > 0);
        if (l2[0] && l2[1] && nl[0] == nl[1])
            zt_close("generate: DoRA LoRA = the same baked at full rank (final latents)", l2[1], l2[0], nl[0], TOL);
        free(l2[0]), free(l2[1]);
    }
    const char *merged_out = zt_tmp("merged.safetensors");
    rc = zt_cli("merge --content %s --style %s -o %s", g_scaled, zt_data("tiny-sd15/loras/content.kohya.safetensors"), merged_out);
    CHECKM(rc != 0 && strstr(zt_err, "DoRA") && !zl_file_exists(merged_out), "merge refuses DoRA: rc %d, %s", rc,
           zt_err);
}

int main(void) {
    setup();
    test_load();
    test_refusals();
    test_fold_formula();
    test_unet();
    test_text();
    test_peft();
    test_bake();
    test_bake_sdxl();
    test_zip();
    test_merge();
    test_cli();
    zl_lora_free(g_plain);
    zl_lora_free(g_te_plain);
    dora_set_free(&g_sc);
    zl_st_close(g_unet_w);
    zl_st_close(g_te_w);
    return zt_done();
}
