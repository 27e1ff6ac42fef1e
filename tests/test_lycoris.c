/* LyCORIS LoHa and LoKr files (kohya names, as LyCORIS and kohya's
 * sd-scripts save them) load as exact LoRA factors. Each case's dense update
 * up @ down * (alpha / rank) is compared with the update ComfyUI and A1111
 * apply, written out here in double:
 *  - LoHa: (w1_a @ w1_b) * (w2_a @ w2_b) elementwise, times alpha / rank(w1_b)
 *    (1 without alpha), reshaped to the module's weight;
 *  - LoKr: kron(W1, W2) with W = w_a @ w_b where decomposed, times alpha / dim
 *    with dim the rank of the decomposed factor (W2's if both are), 1 if
 *    neither is decomposed or there is no alpha; a 4-D W2 gives the kernel.
 *  - Tucker forms (LyCORIS use_tucker): a core t [r, r', kh, kw] rebuilds
 *    W[o, c, k, l] = sum_ij w_a[i, o] t[i, j, k, l] w_b[j, c] (LyCORIS
 *    rebuild_tucker, ComfyUI's and A1111's einsum) for a LoHa side or LoKr's W2;
 *    LoCon's lora_mid gives dW[o, c, k, l] = sum_ab up[o, a] mid[a, b, k, l]
 *    down[b, c] times alpha / rank(down) (A1111's rebuild_cp_decomposition).
 * Also: the lazy loader gives the same values; convert writes a LoRA with the
 * same update; the UNet with a LoHa equals the UNet with that converted LoRA;
 * malformed files and DoRA are refused naming the tensor. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

#define Q "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q" /* tiny-sdxl: Linear 64 -> 64 */
#define CV "down_blocks_0_resnets_0_conv1"                              /* tiny-sdxl: Conv2d 32 -> 32, 3x3 */

typedef struct {
    const char *suffix;
    int ndim;
    int64_t shape[4];
} tdef;

static uint32_t g_rng = 12345;
static float frand(void) {
    g_rng = g_rng * 1664525u + 1013904223u;
    return (float)((g_rng >> 8) & 0xffff) / 32768.0f - 1.0f;
}

typedef struct {
    float *v[8];
    int64_t n[8];
} vals;

/* Write one module's tensors (random values; alpha < 0: none) and return the values. */
static int write_case(const char *path, const char *mod, const tdef *t, int nt, float alpha, vals *out) {
    zl_st_entry e[9];
    char names[9][256];
    memset(e, 0, sizeof e);
    for (int i = 0; i < nt; i++) {
        int64_t n = 1;
        for (int d = 0; d < t[i].ndim; d++) n *= t[i].shape[d];
        out->v[i] = malloc((size_t)n * sizeof(float));
        out->n[i] = n;
        for (int64_t j = 0; j < n; j++) out->v[i][j] = frand();
        snprintf(names[i], sizeof names[i], "lora_unet_%s.%s", mod, t[i].suffix);
        e[i] = (zl_st_entry){.name = names[i], .dtype = ZL_DT_F32, .ndim = t[i].ndim, .data = out->v[i]};
        memcpy(e[i].shape, t[i].shape, sizeof t[i].shape);
    }
    int n = nt;
    static float a;
    a = alpha;
    if (alpha >= 0) {
        snprintf(names[n], sizeof names[n], "lora_unet_%s.alpha", mod);
        e[n] = (zl_st_entry){.name = names[n], .dtype = ZL_DT_F32, .ndim = 0, .data = &a};
        n++;
    }
    zl_st_meta_kv meta = {"ss_base_model_version", "sdxl_base_v1-0"};
    return zl_st_write(path, e, n, &meta, 1, NULL, 0);
}

static void vals_free(vals *v) {
    for (int i = 0; i < 8; i++) free(v->v[i]);
    memset(v, 0, sizeof *v);
}

/* C [m, n] = A [m, k] @ B [k, n] in double. */
static double *matmul(const float *A, const float *B, int64_t m, int64_t k, int64_t n) {
    double *C = calloc((size_t)(m * n), sizeof(double));
    for (int64_t i = 0; i < m; i++)
        for (int64_t p = 0; p < k; p++)
            for (int64_t j = 0; j < n; j++) C[i * n + j] += (double)A[i * k + p] * B[p * n + j];
    return C;
}

/* The loaded layer's dense update up @ down * alpha / rank vs ref [out, in_k]. */
static void check_layer(const char *what, const zl_lora *l, const double *ref, int64_t out, int64_t ink, int want_rank) {
    CHECKM(l && l->n == 1, "%s: one layer", what);
    if (!l || l->n != 1) return;
    const zl_lora_layer *y = &l->layers[0];
    CHECKM(y->out_features == out && (int64_t)y->in_features * y->kh * y->kw == ink,
           "%s: shape %d x %d (%dx%d), want %lld x %lld", what, y->out_features, y->in_features, y->kh, y->kw,
           (long long)out, (long long)ink);
    CHECKM(y->rank == want_rank, "%s: rank %d, want %d", what, y->rank, want_rank);
    if (y->out_features != out || (int64_t)y->in_features * y->kh * y->kw != ink) return;
    double s = zl_lora_scale(y), num = 0, den = 0;
    for (int64_t i = 0; i < out; i++)
        for (int64_t j = 0; j < ink; j++) {
            double acc = 0;
            for (int r = 0; r < y->rank; r++) acc += (double)y->up[i * y->rank + r] * y->down[r * ink + j];
            double d = acc * s - ref[i * ink + j];
            num += d * d;
            den += ref[i * ink + j] * ref[i * ink + j];
        }
    double rel = sqrt(num / den);
    CHECKM(rel < 1e-6, "%s: dense update differs from the LyCORIS formula by %.3g (relative)", what, rel);
}

static const zl_unet_config *tiny_cfg(void) {
    static zl_unet_config cfg;
    static int have;
    if (!have) have = !zl_unet_config_load(zt_data("tiny-sdxl/unet/config.json"), &cfg);
    return &cfg;
}

/* Load path strictly against tiny-sdxl, and again lazily: the same factors. */
static zl_lora *load_both(const char *what, const char *path) {
    zl_lora_load_opts o = {.unet_config = tiny_cfg()};
    zl_lora *l = NULL, *lz = NULL;
    zl_lora_lazy *z = NULL;
    int rc = zl_lora_load(path, &o, &l);
    CHECKM(rc == ZL_OK, "%s: %s", what, zl_errmsg());
    CHECK_OK(zl_lora_load_lazy(path, &o, &lz, &z));
    if (l && lz && l->n == 1 && lz->n == 1) {
        const zl_lora_layer *y = &l->layers[0];
        size_t nd = (size_t)y->rank * y->in_features * y->kh * y->kw, nu = (size_t)y->out_features * y->rank;
        float *d = malloc(nd * sizeof(float)), *u = malloc(nu * sizeof(float));
        CHECK_OK(zl_lora_lazy_read(z, lz, 0, d, u));
        CHECKM(!memcmp(d, y->down, nd * sizeof(float)) && !memcmp(u, y->up, nu * sizeof(float)),
               "%s: the lazy loader's factors equal the eager ones", what);
        free(d);
        free(u);
    }
    zl_lora_free(lz);
    zl_lora_lazy_free(z);
    return l;
}

static void test_loha(void) {
    static const struct {
        const char *what, *mod;
        int64_t out, ink, r1, r2;
        int kernel4d; /* hada_w*_b as [r, in, 3, 3] */
        float alpha;
        int want_rank;
    } cs[] = {
        {"LoHa linear r 4 x 3, alpha 2", Q, 64, 64, 4, 3, 0, 2.0f, 12},
        {"LoHa linear r 8 x 8 (rank 64: dense form)", Q, 64, 64, 8, 8, 0, 8.0f, 64},
        {"LoHa linear, no alpha (scale 1)", Q, 64, 64, 2, 5, 0, -1.0f, 10},
        {"LoHa conv 3x3, w_b flattened", CV, 32, 32 * 9, 2, 3, 0, 1.0f, 6},
        {"LoHa conv 3x3, w_b 4-D", CV, 32, 32 * 9, 3, 3, 1, 6.0f, 9},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        tdef t[4] = {{"hada_w1_a", 2, {cs[c].out, cs[c].r1}},
                     {"hada_w1_b", 2, {cs[c].r1, cs[c].ink}},
                     {"hada_w2_a", 2, {cs[c].out, cs[c].r2}},
                     {"hada_w2_b", 2, {cs[c].r2, cs[c].ink}}};
        if (cs[c].kernel4d) {
            t[1] = (tdef){"hada_w1_b", 4, {cs[c].r1, cs[c].ink / 9, 3, 3}};
            t[3] = (tdef){"hada_w2_b", 4, {cs[c].r2, cs[c].ink / 9, 3, 3}};
        }
        vals v = {0};
        char name[64];
        snprintf(name, sizeof name, "loha%d.safetensors", (int)c);
        const char *path = zt_tmp(name);
        char pbuf[1024];
        snprintf(pbuf, sizeof pbuf, "%s", path);
        CHECK_OK(write_case(pbuf, cs[c].mod, t, 4, cs[c].alpha, &v));
        double *m1 = matmul(v.v[0], v.v[1], cs[c].out, cs[c].r1, cs[c].ink);
        double *m2 = matmul(v.v[2], v.v[3], cs[c].out, cs[c].r2, cs[c].ink);
        double sc = cs[c].alpha >= 0 ? cs[c].alpha / (double)cs[c].r1 : 1.0;
        for (int64_t i = 0; i < cs[c].out * cs[c].ink; i++) m1[i] = m1[i] * m2[i] * sc;
        zl_lora *l = load_both(cs[c].what, pbuf);
        check_layer(cs[c].what, l, m1, cs[c].out, cs[c].ink, cs[c].want_rank);
        if (l && l->n == 1)
            CHECK(l->layers[0].kind == (!strcmp(cs[c].mod, CV) ? ZL_LORA_CONV : ZL_LORA_LINEAR) && l->n_loha == 1 &&
                  l->n_lokr == 0);
        zl_lora_free(l);
        free(m1);
        free(m2);
        vals_free(&v);
    }
}

static void test_lokr(void) {
    /* W1 [a, b] full or (a x r1)(r1 x b); W2 [c, d(, 3, 3)] full or (c x r2)(r2 x d(,3,3)); r = 0: full */
    static const struct {
        const char *what, *mod;
        int64_t a, b, r1, c, d, r2;
        int k; /* 3: W2 carries a 3x3 kernel */
        float alpha;
        int want_rank;
    } cs[] = {
        {"LoKr W1 full, W2 decomposed, alpha 4 / dim 2", Q, 8, 8, 0, 8, 8, 2, 1, 4.0f, 16},
        {"LoKr W1 decomposed, W2 full, alpha 3 / dim 1", Q, 4, 2, 1, 16, 32, 0, 1, 3.0f, 16},
        {"LoKr both full (alpha ignored: scale 1)", Q, 2, 4, 0, 32, 16, 0, 1, 5.0f, 32},
        {"LoKr W1 decomposed, W2 full and tall", Q, 2, 8, 1, 32, 8, 0, 1, 2.0f, 8},
        {"LoKr both decomposed (W2's dim 3 wins)", Q, 8, 8, 2, 8, 8, 3, 1, 6.0f, 6},
        {"LoKr both full, rank 64: dense form", Q, 8, 8, 0, 8, 8, 0, 1, 1.0f, 64},
        {"LoKr conv 3x3, W2 [8, 8, 3, 3] decomposed", CV, 4, 4, 0, 8, 8, 2, 3, 1.0f, 8},
        {"LoKr conv 3x3, W2 full 4-D", CV, 4, 4, 0, 8, 8, 0, 3, -1.0f, 32},
        {"LoKr conv as a flat [c, d*9] W2", CV, 4, 4, 0, 8, 72, 2, 1, 2.0f, 8},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        tdef t[4];
        int nt = 0;
        const int64_t kk = (int64_t)cs[c].k * cs[c].k;
        if (cs[c].r1) {
            t[nt++] = (tdef){"lokr_w1_a", 2, {cs[c].a, cs[c].r1}};
            t[nt++] = (tdef){"lokr_w1_b", 2, {cs[c].r1, cs[c].b}};
        } else {
            t[nt++] = (tdef){"lokr_w1", 2, {cs[c].a, cs[c].b}};
        }
        int w2_at = nt;
        if (cs[c].r2) {
            t[nt++] = (tdef){"lokr_w2_a", 2, {cs[c].c, cs[c].r2}};
            t[nt++] = cs[c].k == 3 ? (tdef){"lokr_w2_b", 4, {cs[c].r2, cs[c].d, 3, 3}}
                                   : (tdef){"lokr_w2_b", 2, {cs[c].r2, cs[c].d}};
        } else {
            t[nt++] = cs[c].k == 3 ? (tdef){"lokr_w2", 4, {cs[c].c, cs[c].d, 3, 3}}
                                   : (tdef){"lokr_w2", 2, {cs[c].c, cs[c].d}};
        }
        vals v = {0};
        char name[64], pbuf[1024];
        snprintf(name, sizeof name, "lokr%d.safetensors", (int)c);
        snprintf(pbuf, sizeof pbuf, "%s", zt_tmp(name));
        CHECK_OK(write_case(pbuf, cs[c].mod, t, nt, cs[c].alpha, &v));
        const int64_t a = cs[c].a, b = cs[c].b, cc = cs[c].c, D2 = cs[c].d * kk;
        double *W1 = cs[c].r1 ? matmul(v.v[0], v.v[1], a, cs[c].r1, b) : NULL;
        double *W2 = cs[c].r2 ? matmul(v.v[w2_at], v.v[w2_at + 1], cc, cs[c].r2, D2) : NULL;
        if (!W1) {
            W1 = malloc((size_t)(a * b) * sizeof(double));
            for (int64_t i = 0; i < a * b; i++) W1[i] = v.v[0][i];
        }
        if (!W2) {
            W2 = malloc((size_t)(cc * D2) * sizeof(double));
            for (int64_t i = 0; i < cc * D2; i++) W2[i] = v.v[w2_at][i];
        }
        int dim = cs[c].r2 ? (int)cs[c].r2 : (int)cs[c].r1;
        double sc = cs[c].alpha >= 0 && dim ? cs[c].alpha / dim : 1.0;
        const int64_t out = a * cc, ink = b * D2;
        /* torch.kron(W1 [a, b(, 1, 1)], W2 [c, d(, kh, kw)]) reshaped to [out, in, kh, kw] */
        double *ref = malloc((size_t)(out * ink) * sizeof(double));
        for (int64_t i1 = 0; i1 < a; i1++)
            for (int64_t i2 = 0; i2 < cc; i2++)
                for (int64_t j1 = 0; j1 < b; j1++)
                    for (int64_t j2 = 0; j2 < cs[c].d; j2++)
                        for (int64_t q = 0; q < kk; q++)
                            ref[(i1 * cc + i2) * ink + (j1 * cs[c].d + j2) * kk + q] =
                                sc * W1[i1 * b + j1] * W2[i2 * D2 + j2 * kk + q];
        zl_lora *l = load_both(cs[c].what, pbuf);
        check_layer(cs[c].what, l, ref, out, ink, cs[c].want_rank);
        CHECK(l && l->n_lokr == 1 && l->n_loha == 0);
        zl_lora_free(l);
        free(W1);
        free(W2);
        free(ref);
        vals_free(&v);
    }
}

/* w[o, c, k, l] = sum_ij a[i, o] t[i, j, k, l] b[j, c] in double: [out, in * kk] */
static double *rebuild_tucker(const float *t, const float *a, const float *b, int64_t r, int64_t r2, int64_t kk,
                              int64_t out, int64_t in) {
    double *w = calloc((size_t)(out * in * kk), sizeof(double));
    for (int64_t o = 0; o < out; o++)
        for (int64_t c = 0; c < in; c++)
            for (int64_t q = 0; q < kk; q++) {
                double acc = 0;
                for (int64_t i = 0; i < r; i++)
                    for (int64_t j = 0; j < r2; j++) acc += (double)a[i * out + o] * t[(i * r2 + j) * kk + q] * b[j * in + c];
                w[(o * in + c) * kk + q] = acc;
            }
    return w;
}

static void test_tucker(void) {
    /* LoCon with lora_mid on the 3x3 conv (32 -> 32): down [r', 32(, 1, 1)], mid [r, r', 3, 3], up [32, r(, 1, 1)] */
    static const struct {
        const char *what;
        int64_t r, r2;
        int dims4;
        float alpha;
    } lc[] = {
        {"Tucker LoCon r 4, alpha 2 (4-D down/up)", 4, 4, 1, 2.0f},
        {"Tucker LoCon r 3 x r' 5, 2-D down/up, no alpha", 3, 5, 0, -1.0f},
        {"Tucker LoCon r 8, alpha 1", 8, 8, 1, 1.0f},
    };
    for (size_t c = 0; c < sizeof lc / sizeof lc[0]; c++) {
        const int64_t r = lc[c].r, r2 = lc[c].r2;
        tdef t[3] = {{"lora_down.weight", 2, {r2, 32}}, {"lora_mid.weight", 4, {r, r2, 3, 3}}, {"lora_up.weight", 2, {32, r}}};
        if (lc[c].dims4) {
            t[0] = (tdef){"lora_down.weight", 4, {r2, 32, 1, 1}};
            t[2] = (tdef){"lora_up.weight", 4, {32, r, 1, 1}};
        }
        vals v = {0};
        char name[64], pbuf[1024];
        snprintf(name, sizeof name, "tlocon%d.safetensors", (int)c);
        snprintf(pbuf, sizeof pbuf, "%s", zt_tmp(name));
        CHECK_OK(write_case(pbuf, CV, t, 3, lc[c].alpha, &v));
        /* up [32, r] is w_a^T in rebuild_tucker's terms */
        float *upT = malloc((size_t)(r * 32) * sizeof(float));
        for (int64_t o = 0; o < 32; o++)
            for (int64_t i = 0; i < r; i++) upT[i * 32 + o] = v.v[2][o * r + i];
        double *ref = rebuild_tucker(v.v[1], upT, v.v[0], r, r2, 9, 32, 32);
        const double sc = lc[c].alpha >= 0 ? lc[c].alpha / (double)r2 : 1.0;
        for (int64_t i = 0; i < 32 * 32 * 9; i++) ref[i] *= sc;
        zl_lora *l = load_both(lc[c].what, pbuf);
        check_layer(lc[c].what, l, ref, 32, 32 * 9, (int)r);
        CHECKM(l && l->n_tucker == 1 && l->n_loha == 0 && l->n_lokr == 0 && l->layers[0].kind == ZL_LORA_CONV &&
                   l->layers[0].kh == 3,
               "%s: counted as one Tucker layer, a 3x3 conv", lc[c].what);
        zl_lora_free(l);
        free(upT);
        free(ref);
        vals_free(&v);
    }

    /* LoHa with hada_t1 / hada_t2 on the 3x3 conv; side 2 may be a plain [r2, 32, 3, 3] factor */
    static const struct {
        const char *what;
        int64_t r1, r2;
        int t2; /* side 2 Tucker too */
        float alpha;
        int want_rank;
    } hc[] = {
        {"Tucker LoHa r 2 x 3, alpha 4", 2, 3, 1, 4.0f, 6},
        {"Tucker LoHa r 6 x 6 (rank 36 > 32: dense form)", 6, 6, 1, 3.0f, 32},
        {"LoHa with hada_t1 only, plain 4-D w2_b", 3, 2, 0, 1.5f, 6},
    };
    for (size_t c = 0; c < sizeof hc / sizeof hc[0]; c++) {
        const int64_t r1 = hc[c].r1, r2 = hc[c].r2;
        tdef t[6] = {{"hada_w1_a", 2, {r1, 32}}, {"hada_w1_b", 2, {r1, 32}}, {"hada_t1", 4, {r1, r1, 3, 3}},
                     {"hada_w2_a", 2, {r2, 32}}, {"hada_w2_b", 2, {r2, 32}}, {"hada_t2", 4, {r2, r2, 3, 3}}};
        int nt = 6;
        if (!hc[c].t2) {
            t[3] = (tdef){"hada_w2_a", 2, {32, r2}};
            t[4] = (tdef){"hada_w2_b", 4, {r2, 32, 3, 3}};
            nt = 5;
        }
        vals v = {0};
        char name[64], pbuf[1024];
        snprintf(name, sizeof name, "tloha%d.safetensors", (int)c);
        snprintf(pbuf, sizeof pbuf, "%s", zt_tmp(name));
        CHECK_OK(write_case(pbuf, CV, t, nt, hc[c].alpha, &v));
        double *m1 = rebuild_tucker(v.v[2], v.v[0], v.v[1], r1, r1, 9, 32, 32);
        double *m2 = hc[c].t2 ? rebuild_tucker(v.v[5], v.v[3], v.v[4], r2, r2, 9, 32, 32)
                              : matmul(v.v[3], v.v[4], 32, r2, 32 * 9);
        const double sc = hc[c].alpha / (double)r1;
        for (int64_t i = 0; i < 32 * 32 * 9; i++) m1[i] = m1[i] * m2[i] * sc;
        zl_lora *l = load_both(hc[c].what, pbuf);
        check_layer(hc[c].what, l, m1, 32, 32 * 9, hc[c].want_rank);
        CHECKM(l && l->n_tucker == 1 && l->n_loha == 1 && l->n_lokr == 0, "%s: counted as a Tucker LoHa", hc[c].what);
        zl_lora_free(l);
        free(m1);
        free(m2);
        vals_free(&v);
    }

    /* LoKr with lokr_t2: W1 [4, 4] (full or 4x1 @ 1x4), W2 = rebuild(t2 [r, r, 3, 3], w2_a [r, 8], w2_b [r, 8]) */
    static const struct {
        const char *what;
        int64_t r;
        int w1_dec;
        float alpha;
        int want_rank;
    } kc[] = {
        {"Tucker LoKr, W1 full, r 2, alpha 4", 2, 0, 4.0f, 8},
        {"Tucker LoKr, W1 decomposed, r 3, alpha 6 (W2's dim wins)", 3, 1, 6.0f, 3},
    };
    for (size_t c = 0; c < sizeof kc / sizeof kc[0]; c++) {
        const int64_t r = kc[c].r;
        tdef t[5];
        int nt = 0;
        if (kc[c].w1_dec) {
            t[nt++] = (tdef){"lokr_w1_a", 2, {4, 1}};
            t[nt++] = (tdef){"lokr_w1_b", 2, {1, 4}};
        } else {
            t[nt++] = (tdef){"lokr_w1", 2, {4, 4}};
        }
        const int w2 = nt;
        t[nt++] = (tdef){"lokr_w2_a", 2, {r, 8}};
        t[nt++] = (tdef){"lokr_w2_b", 2, {r, 8}};
        t[nt++] = (tdef){"lokr_t2", 4, {r, r, 3, 3}};
        vals v = {0};
        char name[64], pbuf[1024];
        snprintf(name, sizeof name, "tlokr%d.safetensors", (int)c);
        snprintf(pbuf, sizeof pbuf, "%s", zt_tmp(name));
        CHECK_OK(write_case(pbuf, CV, t, nt, kc[c].alpha, &v));
        double *W1 = kc[c].w1_dec ? matmul(v.v[0], v.v[1], 4, 1, 4) : NULL;
        if (!W1) {
            W1 = malloc(16 * sizeof(double));
            for (int i = 0; i < 16; i++) W1[i] = v.v[0][i];
        }
        double *W2 = rebuild_tucker(v.v[w2 + 2], v.v[w2], v.v[w2 + 1], r, r, 9, 8, 8); /* [8, 8 * 9] */
        const double sc = kc[c].alpha / (double)r;
        double *ref = malloc((size_t)32 * 32 * 9 * sizeof(double));
        for (int i1 = 0; i1 < 4; i1++)
            for (int i2 = 0; i2 < 8; i2++)
                for (int j1 = 0; j1 < 4; j1++)
                    for (int j2 = 0; j2 < 8; j2++)
                        for (int q = 0; q < 9; q++)
                            ref[(i1 * 8 + i2) * 288 + (j1 * 8 + j2) * 9 + q] = sc * W1[i1 * 4 + j1] * W2[i2 * 72 + j2 * 9 + q];
        zl_lora *l = load_both(kc[c].what, pbuf);
        check_layer(kc[c].what, l, ref, 32, 288, kc[c].want_rank);
        CHECKM(l && l->n_tucker == 1 && l->n_lokr == 1 && l->n_loha == 0, "%s: counted as a Tucker LoKr", kc[c].what);
        zl_lora_free(l);
        free(W1);
        free(W2);
        free(ref);
        vals_free(&v);
    }
}

/* Bad LyCORIS files: refused naming the module or tensor, by the eager and the lazy loader. */
static void test_bad(void) {
    static const struct {
        const char *what;
        tdef t[4];
        int nt, code;
        const char *must;
    } cs[] = {
        {"LoHa without hada_w2_b", {{"hada_w1_a", 2, {64, 2}}, {"hada_w1_b", 2, {2, 64}}, {"hada_w2_a", 2, {64, 2}}}, 3,
         ZL_EFORMAT, "hada_w2_b"},
        {"LoHa ranks that do not chain",
         {{"hada_w1_a", 2, {64, 2}}, {"hada_w1_b", 2, {3, 64}}, {"hada_w2_a", 2, {64, 2}}, {"hada_w2_b", 2, {2, 64}}},
         4, ZL_ESHAPE, "LoHa module"},
        {"LoKr with lokr_w1 and lokr_w1_a", {{"lokr_w1", 2, {8, 8}}, {"lokr_w1_a", 2, {8, 2}}, {"lokr_w2", 2, {8, 8}}}, 3,
         ZL_EFORMAT, "lokr_w1"},
        {"LoKr without W2", {{"lokr_w1", 2, {8, 8}}}, 1, ZL_EFORMAT, "lokr_w2"},
        {"LoKr for the wrong width", {{"lokr_w1", 2, {8, 8}}, {"lokr_w2", 2, {4, 8}}}, 2, ZL_ESHAPE, "LoKr module"},
        {"Tucker LoKr whose core does not chain (w2_a [c, r] as without a core)",
         {{"lokr_w1", 2, {4, 4}}, {"lokr_w2_a", 2, {8, 2}}, {"lokr_w2_b", 2, {2, 8}}, {"lokr_t2", 4, {2, 2, 3, 3}}},
         4, ZL_ESHAPE, "Tucker LoKr module"},
        {"lokr_t2 with a full lokr_w2", {{"lokr_w1", 2, {4, 4}}, {"lokr_w2", 2, {16, 16}}, {"lokr_t2", 4, {2, 2, 3, 3}}},
         3, ZL_EFORMAT, "lokr_t2"},
        {"Tucker LoHa without hada_w1_b", {{"hada_w1_a", 2, {64, 2}}, {"hada_t1", 4, {2, 2, 3, 3}}}, 2, ZL_EFORMAT,
         "hada_w1_b"},
        {"lora_mid whose ranks do not chain",
         {{"lora_down.weight", 2, {2, 64}}, {"lora_mid.weight", 4, {4, 3, 3, 3}}, {"lora_up.weight", 2, {64, 4}}}, 3,
         ZL_ESHAPE, "Tucker LoCon module"},
        {"lora_mid without lora_up", {{"lora_down.weight", 2, {2, 64}}, {"lora_mid.weight", 4, {2, 2, 3, 3}}}, 2,
         ZL_EFORMAT, "lora_down.weight"},
        {"DoRA", {{"lora_down.weight", 2, {2, 64}}, {"lora_up.weight", 2, {64, 2}}, {"dora_scale", 2, {1, 64}}}, 3,
         ZL_EUNSUPPORTED, "dora_scale"},
        {"LoRA and LoHa on one module", {{"lora_down.weight", 2, {2, 64}}, {"lora_up.weight", 2, {64, 2}}, {"hada_w1_a", 2, {64, 2}}},
         3, ZL_EFORMAT, "mixes"},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        vals v = {0};
        char name[64], pbuf[1024];
        snprintf(name, sizeof name, "bad%d.safetensors", (int)c);
        snprintf(pbuf, sizeof pbuf, "%s", zt_tmp(name));
        CHECK_OK(write_case(pbuf, Q, cs[c].t, cs[c].nt, 1.0f, &v));
        vals_free(&v);
        zl_lora_load_opts o = {.unet_config = tiny_cfg()};
        zl_lora *l = NULL;
        int rc = zl_lora_load(pbuf, &o, &l);
        CHECKM(rc == cs[c].code && strstr(zl_errmsg(), cs[c].must) && strstr(zl_errmsg(), pbuf) && !l,
               "%s: %d %s", cs[c].what, rc, zl_errmsg());
        zl_lora_lazy *z = NULL;
        rc = zl_lora_load_lazy(pbuf, &o, &l, &z);
        CHECKM(rc == cs[c].code && strstr(zl_errmsg(), cs[c].must) && !l && !z, "%s (lazy): %d %s", cs[c].what, rc,
               zl_errmsg());
    }
}

/* The user's side: convert keeps the update; generate and merge take LyCORIS files. */
static void test_cli(void) {
    char loha[1024], conv[1024], out[1024], l1[1024], l2[1024], mg[1024];
    snprintf(loha, sizeof loha, "%s", zt_tmp("user_loha.safetensors"));
    snprintf(conv, sizeof conv, "%s", zt_tmp("user_loha_as_lora.safetensors"));
    snprintf(out, sizeof out, "%s", zt_tmp("loha_runtime.safetensors"));
    snprintf(l1, sizeof l1, "%s", zt_tmp("loha_lat.safetensors"));
    snprintf(l2, sizeof l2, "%s", zt_tmp("lora_lat.safetensors"));
    snprintf(mg, sizeof mg, "%s", zt_tmp("merged.safetensors"));
    tdef t[4] = {{"hada_w1_a", 2, {64, 4}}, {"hada_w1_b", 2, {4, 64}}, {"hada_w2_a", 2, {64, 4}}, {"hada_w2_b", 2, {4, 64}}};
    vals v = {0};
    CHECK_OK(write_case(loha, Q, t, 4, 2.0f, &v));
    vals_free(&v);
    int code = zt_cli("inspect --json '%s'", loha);
    CHECKM(code == 0 && strstr(zt_out, "\"lycoris\":{\"loha\":1,\"lokr\":0,\"tucker\":0}"), "inspect --json says LoHa: %s",
           zt_out);
    code = zt_cli("convert '%s' -o '%s' --format kohya -q", loha, conv);
    CHECKM(code == 0, "convert a LoHa: exit %d %s", code, zt_err);
    zl_lora_load_opts o = {.unet_config = tiny_cfg()};
    zl_lora *a = NULL, *b = NULL;
    CHECK_OK(zl_lora_load(loha, &o, &a));
    CHECK_OK(zl_lora_load(conv, &o, &b));
    if (a && b && a->n == 1 && b->n == 1) {
        const zl_lora_layer *x = &a->layers[0], *y = &b->layers[0];
        CHECK(x->rank == 16 && y->rank == 16 && zl_lora_scale(y) == zl_lora_scale(x));
        CHECK(!memcmp(x->up, y->up, 64 * 16 * sizeof(float)) && !memcmp(x->down, y->down, 16 * 64 * sizeof(float)));
    }
    zl_lora_free(a);
    zl_lora_free(b);
    /* the UNet with the LoHa equals the UNet with its converted LoRA, folded and as runtime branches */
    char model[1024], in[1024];
    snprintf(model, sizeof model, "%s", zt_data("tiny-sdxl"));
    snprintf(in, sizeof in, "%s", zt_data("tiny-sdxl/unet_io.safetensors"));
    code = zt_cli("run unet --model '%s' --lora '%s' --in '%s' -o '%s' -q", model, loha, in, l1);
    int code2 = zt_cli("run unet --model '%s' --lora '%s' --in '%s' -o '%s' -q", model, conv, in, l2);
    int code3 = zt_cli("run unet --model '%s' --lora '%s' --runtime --in '%s' -o '%s' -q", model, loha, in, out);
    CHECKM(code == 0 && code2 == 0 && code3 == 0, "run unet with a LoHa / its LoRA: %d %d %d %s", code, code2, code3,
           zt_err);
    zl_st_file *f1 = NULL, *f2 = NULL, *f3 = NULL;
    if (!code && !code2 && !code3 && !zl_st_open(l1, &f1) && !zl_st_open(l2, &f2) && !zl_st_open(out, &f3)) {
        const zl_st_tensor *t1 = zl_st_find(f1, "out"), *t2 = zl_st_find(f2, "out"), *t3 = zl_st_find(f3, "out");
        CHECK(t1 && t2 && t3 && t1->numel == t2->numel && t1->numel == t3->numel);
        if (t1 && t2 && t3 && t1->numel == t2->numel && t1->numel == t3->numel) {
            CHECK(!memcmp(t1->data, t2->data, t1->nbytes));
            float *a3 = malloc((size_t)t1->numel * sizeof(float)), *a1 = malloc((size_t)t1->numel * sizeof(float));
            zl_st_read_f32(t1, a1);
            zl_st_read_f32(t3, a3);
            zt_close("LoHa folded vs as runtime branch", a3, a1, t1->numel, 1e-4);
            free(a1);
            free(a3);
        }
    }
    zl_st_close(f1);
    zl_st_close(f2);
    zl_st_close(f3);
    /* convert --rank k: the layer becomes rank k with its scale kept, and the printed error is
     * the measured ||dW - dW_k|| / ||dW||; --rank <the layer's> changes nothing. On the LoHa
     * (rank 16, scale 1 once folded) and on a plain LoRA of rank 8 with alpha 2 (scale 0.25). */
    char plain[1024];
    snprintf(plain, sizeof plain, "%s", zt_tmp("plain_a2.safetensors"));
    tdef tp[2] = {{"lora_down.weight", 2, {8, 64}}, {"lora_up.weight", 2, {64, 8}}};
    CHECK_OK(write_case(plain, Q, tp, 2, 2.0f, &v));
    vals_free(&v);
    for (int w = 0; w < 2; w++) {
        const char *src = w ? plain : loha;
        const int R0 = w ? 8 : 16, K = w ? 3 : 5;
        char r5[1024], r16[1024];
        snprintf(r5, sizeof r5, "%s", zt_tmp("loha_r5.safetensors"));
        snprintf(r16, sizeof r16, "%s", zt_tmp("loha_r16.safetensors"));
        code = zt_cli("convert '%s' -o '%s' --rank %d --dtype f32", src, r5, K);
        double printed = -1;
        const char *ov = strstr(zt_out, "overall relative Frobenius error");
        if (ov) sscanf(strchr(ov, ':') + 1, "%lf", &printed);
        CHECKM(code == 0 && printed > 0, "convert --rank 5: exit %d %s %s", code, zt_out, zt_err);
        int code16 = zt_cli("convert '%s' -o '%s' --rank %d --dtype f32 -q", src, r16, R0);
        zl_lora *x = NULL, *y5 = NULL, *y16 = NULL;
        CHECK_OK(zl_lora_load(src, &o, &x));
        if (!code) CHECK_OK(zl_lora_load(r5, &o, &y5));
        if (!code16) CHECK_OK(zl_lora_load(r16, &o, &y16));
        if (x && y5 && y16) {
            const zl_lora_layer *a0 = &x->layers[0], *b5 = &y5->layers[0], *b16 = &y16->layers[0];
            CHECK(b5->rank == K && b16->rank == R0 && zl_lora_scale(b16) == zl_lora_scale(a0) &&
                  !memcmp(b16->up, a0->up, 64 * (size_t)R0 * sizeof(float)) &&
                  !memcmp(b16->down, a0->down, (size_t)R0 * 64 * sizeof(float)));
            double num = 0, den = 0;
            for (int i = 0; i < 64; i++)
                for (int j = 0; j < 64; j++) {
                    double da = 0, db = 0;
                    for (int r = 0; r < a0->rank; r++) da += (double)a0->up[i * a0->rank + r] * a0->down[r * 64 + j];
                    for (int r = 0; r < K; r++) db += (double)b5->up[i * K + r] * b5->down[r * 64 + j];
                    da *= zl_lora_scale(a0);
                    db *= zl_lora_scale(b5);
                    num += (da - db) * (da - db);
                    den += da * da;
                }
            double meas = sqrt(num / den);
            CHECKM(fabs(meas - printed) <= 1e-5 * meas + 1e-6, "convert --rank %d: printed error %.6g, measured %.6g", K,
                   printed, meas);
        }
        zl_lora_free(x);
        zl_lora_free(y5);
        zl_lora_free(y16);
    }
    /* zip with a LoHa subject: its layer enters as the rank-16 LoRA form, so the merged layer has
     * rank 16 + the style's */
    {
        char zo[1024], st[1024], io[1024];
        snprintf(zo, sizeof zo, "%s", zt_tmp("zip_loha.safetensors"));
        snprintf(st, sizeof st, "%s", zt_data("tiny-sdxl/loras/style.kohya.safetensors"));
        snprintf(io, sizeof io, "%s", zt_data("tiny-sdxl/zip_io.safetensors"));
        code = zt_cli("zip --model '%s' --content '%s' --style '%s' --fixed-inputs '%s' --steps 2 -o '%s' --dtype f32 -q",
                      model, loha, st, io, zo);
        CHECKM(code == 0, "zip with a LoHa subject: exit %d %s", code, zt_err);
        zl_lora *zl = NULL, *sl = NULL;
        const char *qm = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q";
        if (!code) CHECK_OK(zl_lora_load(zo, &o, &zl));
        CHECK_OK(zl_lora_load(st, &o, &sl));
        const zl_lora_layer *q = zl ? zl_lora_find(zl, ZL_PART_UNET, qm) : NULL, *sq = sl ? zl_lora_find(sl, ZL_PART_UNET, qm) : NULL;
        CHECKM(q && sq && q->rank == 16 + sq->rank, "merged to_q rank %d, want 16 + %d", q ? q->rank : -1, sq ? sq->rank : -1);
        zl_lora_free(zl);
        zl_lora_free(sl);
    }
    code = zt_cli("merge --content '%s' --style '%s' -o '%s' -q", loha, zt_data("tiny-sdxl/loras/style.kohya.safetensors"),
                  mg);
    CHECKM(code == 0, "merge a LoHa with a LoRA: exit %d %s", code, zt_err);
}

int main(void) {
    zl_set_threads(2);
    test_loha();
    test_lokr();
    test_tucker();
    test_bad();
    test_cli();
    return zt_done();
}
