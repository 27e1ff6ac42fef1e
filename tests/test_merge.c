/* merge tests: the written LoRA's dW equals wc*dW_c*diag(m_c) + ws*dW_s*diag(m_s)
 * for every layer (computed here by naive double loops), F32 to 1e-6 relative,
 * F16/BF16 within their rounding; mergers from the fixtures' zip_io (random.*,
 * re-saved without the prefix); text encoders; the SVD re-rank error against an
 * independent dense eigen-decomposition; bad inputs fail cleanly. */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lora/lora_keys.h"
#include "testlib.h"

static const char *CLI_OUT_PREFIX = ".ziplora-";

/* dW = w * scale * up @ down * diag(m) in double, [out, in*kh*kw]; m per input channel (NULL = ones). */
static double *dense(const zl_lora_layer *l, double w, const float *m) {
    size_t blk = (size_t)l->kh * l->kw, n = (size_t)l->in_features * blk;
    double *d = calloc((size_t)l->out_features * n, sizeof(double));
    double s = w * (double)l->alpha / l->rank;
    for (int o = 0; o < l->out_features; o++)
        for (size_t c = 0; c < n; c++) {
            double acc = 0;
            for (int t = 0; t < l->rank; t++) acc += (double)l->up[(size_t)o * l->rank + t] * l->down[(size_t)t * n + c];
            d[(size_t)o * n + c] = s * acc * (m ? m[c / blk] : 1.0);
        }
    return d;
}

/* elementwise bound for a dtype-rounded factorization: sum_t |up||down| * scale */
static double *dense_abs(const zl_lora_layer *l) {
    size_t n = (size_t)l->in_features * l->kh * l->kw;
    double *d = calloc((size_t)l->out_features * n, sizeof(double));
    double s = fabs((double)l->alpha / l->rank);
    for (int o = 0; o < l->out_features; o++)
        for (size_t c = 0; c < n; c++) {
            double acc = 0;
            for (int t = 0; t < l->rank; t++) acc += fabs((double)l->up[(size_t)o * l->rank + t] * l->down[(size_t)t * n + c]);
            d[(size_t)o * n + c] = s * acc;
        }
    return d;
}

static double rel(const double *got, const double *ref, size_t n) {
    double a = 0, b = 0;
    for (size_t i = 0; i < n; i++) {
        a += (got[i] - ref[i]) * (got[i] - ref[i]);
        b += ref[i] * ref[i];
    }
    return b > 0 ? sqrt(a / b) : sqrt(a);
}

static int no_temp_left(void) {
    DIR *d = opendir(zt_tmpdir());
    int ok = 1;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (!strncmp(e->d_name, CLI_OUT_PREFIX, strlen(CLI_OUT_PREFIX))) ok = 0;
    if (d) closedir(d);
    return ok;
}

static zl_lora *load(const char *p) {
    zl_lora *l = NULL;
    int rc = zl_lora_load(p, NULL, &l);
    CHECKM(rc == ZL_OK, "load %s: %s", p, zl_errmsg());
    return l;
}

/* Check every layer of `out` against the two inputs. tol_kind: 0 = F32 (1e-6 relative),
 * 1 = F16, 2 = BF16 (elementwise within the dtype's rounding of up and down). */
static void check_merge(const char *what, const zl_lora *out, const zl_lora *c, const zl_lora *s, double wc, double ws,
                        const zl_mergers *mg, int tol_kind) {
    CHECK(out != NULL);
    if (!out) return;
    int expect_n = 0, bad = 0;
    double worst = 0;
    /* union of modules */
    for (int pass = 0; pass < 2; pass++) {
        const zl_lora *L = pass ? s : c;
        for (int i = 0; i < L->n; i++) {
            const zl_lora_layer *y = &L->layers[i];
            if (pass && zl_lora_find(c, y->part, y->module)) continue;
            expect_n++;
            const zl_lora_layer *lc = zl_lora_find(c, y->part, y->module), *ls = zl_lora_find(s, y->part, y->module);
            const zl_lora_layer *lo = zl_lora_find(out, y->part, y->module);
            if (!lo) { bad++; continue; }
            size_t n = (size_t)y->in_features * y->kh * y->kw, N = (size_t)y->out_features * n;
            double *ref = calloc(N, sizeof(double)), *bound = calloc(N, sizeof(double));
            for (int side = 0; side < 2; side++) {
                const zl_lora_layer *x = side ? ls : lc;
                if (!x) continue;
                const float *m = mg ? zl_mergers_find(mg, x->part, x->module, side, NULL) : NULL;
                double *d = dense(x, side ? ws : wc, m);
                for (size_t k = 0; k < N; k++) ref[k] += d[k];
                free(d);
                double *ab = dense_abs(x);
                double mmax = 1;
                if (m)
                    for (int q = 0; q < x->in_features; q++) mmax = fmax(mmax, fabs(m[q]));
                for (size_t k = 0; k < N; k++) bound[k] += ab[k] * fabs(side ? ws : wc) * mmax;
                free(ab);
            }
            /* expected rank: r_c + r_s when shared, else the input's */
            int er = (lc ? lc->rank : 0) + (ls ? ls->rank : 0);
            if (lo->rank != er) bad++;
            if (lc && ls && lo->alpha != (float)er) bad++;
            double *got = dense(lo, 1.0, NULL);
            if (tol_kind == 0) {
                double e = rel(got, ref, N);
                if (e > worst) worst = e;
                if (!(e <= 1e-6)) {
                    bad++;
                    fprintf(stderr, "  %s: %s rel err %.3g\n", what, y->module, e);
                }
            } else {
                /* each factor entry rounds by <= u relative (and the scale folded into up once more) */
                double u = tol_kind == 1 ? ldexp(1.0, -11) : ldexp(1.0, -8);
                for (size_t k = 0; k < N; k++) {
                    double lim = (3 * u + 1e-6) * bound[k] + 1e-30;
                    if (!(fabs(got[k] - ref[k]) <= lim)) {
                        bad++;
                        fprintf(stderr, "  %s: %s[%zu] got %.9g ref %.9g (limit %.3g)\n", what, y->module, k, got[k], ref[k], lim);
                        break;
                    }
                }
            }
            free(got);
            free(ref);
            free(bound);
        }
    }
    CHECKM(out->n == expect_n, "%s: %d layers, expected %d", what, out->n, expect_n);
    CHECKM(bad == 0, "%s: %d layers differ (worst F32 rel err %.3g)", what, bad, worst);
}

static void test_exact(const char *fam) {
    char cp[512], sp[512], what[256];
    snprintf(cp, sizeof cp, "%s/loras/content.kohya_sgm.safetensors", fam);
    snprintf(sp, sizeof sp, "%s/loras/style.kohya_sgm.safetensors", fam);
    const char *C = strdup(zt_data(cp)), *S = strdup(zt_data(sp));
    zl_lora *c = load(C), *s = load(S);
    if (!c || !s) goto done;
    static const struct { const char *flags; double wc, ws; int kind; const char *fmt; } cases[] = {
        {"--dtype f32", 1, 1, 0, "kohya"},
        {"--dtype f32 --weights 0.8,0.5", 0.8, 0.5, 0, "kohya"},
        {"--dtype f32 --weights 0.8,1 --style-scale 0.5 --format peft", 0.8, 0.5, 0, "peft"},
        {"--weights -1.25,2", -1.25, 2, 0, "kohya"}, /* F16 + BF16 inputs: F32 out by default */
        {"--dtype f16 --weights 0.8,0.5", 0.8, 0.5, 1, "kohya"},
        {"--dtype bf16 --weights 0.8,0.5 --format peft", 0.8, 0.5, 2, "peft"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const char *o = zt_tmp("merged.safetensors");
        remove(o);
        int code = zt_cli("merge --content '%s' --style '%s' -o '%s' -q %s", C, S, o, cases[k].flags);
        CHECKM(code == 0, "%s merge %s: exit %d: %s", fam, cases[k].flags, code, zt_err);
        zl_lora *m = code == 0 ? load(o) : NULL;
        snprintf(what, sizeof what, "%s %s", fam, cases[k].flags);
        check_merge(what, m, c, s, cases[k].wc, cases[k].ws, NULL, cases[k].kind);
        if (m) {
            zl_dtype want = cases[k].kind == 1 ? ZL_DT_F16 : cases[k].kind == 2 ? ZL_DT_BF16 : ZL_DT_F32;
            CHECKM(m->layers[0].dtype == want, "%s: dtype %s", what, zl_dtype_name(m->layers[0].dtype));
            CHECK(m->layout == (!strcmp(cases[k].fmt, "peft") ? ZL_LAYOUT_PEFT
                               : m->family == ZL_FAMILY_SDXL ? ZL_LAYOUT_KOHYA_LDM : ZL_LAYOUT_KOHYA_DIFFUSERS));
            CHECK(m->family == c->family);
        }
        zl_lora_free(m);
    }
done:
    zl_lora_free(c);
    zl_lora_free(s);
    free((void *)C);
    free((void *)S);
}

/* zip_io's random.* mergers, re-saved without the prefix (and without the gradients). */
static const char *resave_mergers(const char *fam, const char *name) {
    char p[512];
    snprintf(p, sizeof p, "%s/zip_io.safetensors", fam);
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(zt_data(p), &f));
    if (!f) return NULL;
    zl_st_entry *e = calloc((size_t)zl_st_count(f), sizeof *e);
    char **names = calloc((size_t)zl_st_count(f), sizeof *names);
    int n = 0;
    for (int i = 0; i < zl_st_count(f); i++) {
        const zl_st_tensor *t = zl_st_at(f, i);
        if (strncmp(t->name, "random.", 7) || !strstr(t->name, ".merger_")) continue;
        names[n] = strdup(t->name + 7);
        e[n].name = names[n];
        e[n].dtype = t->dtype;
        e[n].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) e[n].shape[d] = t->shape[d];
        e[n].data = t->data;
        n++;
    }
    CHECKM(n > 0, "%s: random.* mergers found", fam);
    const char *out = zt_tmp(name);
    CHECK_OK(zl_st_write(out, e, n, NULL, 0, NULL, 0));
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    free(e);
    zl_st_close(f);
    return out;
}

static void test_mergers(const char *fam) {
    char cp[512], sp[512], what[256];
    snprintf(cp, sizeof cp, "%s/loras/content.kohya.safetensors", fam);
    snprintf(sp, sizeof sp, "%s/loras/style.peft.safetensors", fam);
    const char *C = strdup(zt_data(cp)), *S = strdup(zt_data(sp));
    const char *M = resave_mergers(fam, "mergers.safetensors");
    zl_lora *c = load(C), *s = load(S);
    zl_mergers *mg = NULL;
    CHECK_OK(zl_mergers_load(M, &mg));
    if (!c || !s || !mg) goto done;
    /* every merger in the fixture belongs to a layer and has in_features values */
    for (int side = 0; side < 2; side++) {
        const zl_lora *L = side ? s : c;
        int found = 0;
        for (int i = 0; i < L->n; i++) {
            int n = 0;
            if (zl_mergers_find(mg, L->layers[i].part, L->layers[i].module, side, &n)) {
                found++;
                CHECK(n == L->layers[i].in_features);
            }
        }
        CHECKM(found == L->n, "%s: %d of %d %s layers have mergers", fam, found, L->n, side ? "style" : "content");
    }
    const char *o = zt_tmp("zipped.safetensors");
    int code = zt_cli("merge --content '%s' --style '%s' --mergers '%s' -o '%s' -q --dtype f32", C, S, M, o);
    CHECKM(code == 0, "merge with mergers: %s", zt_err);
    zl_lora *m = code == 0 ? load(o) : NULL;
    snprintf(what, sizeof what, "%s mergers", fam);
    check_merge(what, m, c, s, 1, 1, mg, 0);
    if (m) {
        /* provenance: three inputs with their hashes */
        int found = 0;
        for (int i = 0; i < m->n_meta; i++)
            if (!strcmp(m->meta_k[i], "ziplora_method")) found = !strcmp(m->meta_v[i], "ziplora-mergers");
        CHECK(found);
    }
    zl_lora_free(m);
    /* mergers and weights together: style half scaled once more */
    code = zt_cli("merge --content '%s' --style '%s' --mergers '%s' -o '%s' -q --dtype f32 --weights 0.5,0.25", C, S, M, o);
    CHECK(code == 0);
    m = code == 0 ? load(o) : NULL;
    snprintf(what, sizeof what, "%s mergers + weights", fam);
    check_merge(what, m, c, s, 0.5, 0.25, mg, 0);
    zl_lora_free(m);
done:
    zl_mergers_free(mg);
    zl_lora_free(c);
    zl_lora_free(s);
    free((void *)C);
    free((void *)S);
}

/* Text encoders merge the same way, with te1./te2. mergers. */
static void test_text_encoders(void) {
    const char *T = strdup(zt_data("mini-sdxl/loras/text_encoders.kohya.safetensors"));
    zl_lora *t = load(T);
    if (!t) { free((void *)T); return; }
    /* a PEFT copy so the two inputs are different files */
    const char *P = strdup(zt_tmp("te.peft.safetensors"));
    CHECK(zt_cli("convert '%s' -o '%s' --format peft -q", T, P) == 0);
    zl_lora *tp = load(P);
    /* random mergers for every te layer, both sides */
    zl_st_entry *e = calloc((size_t)t->n * 2, sizeof *e);
    char **names = calloc((size_t)t->n * 2, sizeof *names);
    float **vals = calloc((size_t)t->n * 2, sizeof *vals);
    uint32_t seed = 12345;
    int n = 0, n1 = 0, n2 = 0;
    for (int i = 0; i < t->n; i++) {
        const zl_lora_layer *y = &t->layers[i];
        CHECK(y->part == ZL_PART_TE1 || y->part == ZL_PART_TE2);
        if (y->part == ZL_PART_TE1) n1++;
        else n2++;
        for (int side = 0; side < 2; side++) {
            names[n] = malloc(strlen(y->module) + 32);
            sprintf(names[n], "%s.%s.merger_%s", y->part == ZL_PART_TE1 ? "te1" : "te2", y->module, side ? "style" : "content");
            vals[n] = malloc(sizeof(float) * (size_t)y->in_features);
            for (int j = 0; j < y->in_features; j++) {
                seed = seed * 1664525u + 1013904223u;
                vals[n][j] = 0.25f + (float)(seed >> 8) / (float)(1u << 24);
            }
            e[n] = (zl_st_entry){.name = names[n], .dtype = ZL_DT_F32, .ndim = 1, .shape = {y->in_features}, .data = vals[n]};
            n++;
        }
    }
    CHECK(n1 > 0 && n2 > 0);
    const char *M = zt_tmp("te_mergers.safetensors");
    CHECK_OK(zl_st_write(M, e, n, NULL, 0, NULL, 0));
    zl_mergers *mg = NULL;
    CHECK_OK(zl_mergers_load(M, &mg));
    const char *o = zt_tmp("te_merged.safetensors");
    int code = zt_cli("merge --content '%s' --style '%s' --mergers '%s' -o '%s' -q --dtype f32 --weights 1,0.5", T, P, M, o);
    CHECKM(code == 0, "te merge: %s", zt_err);
    zl_lora *m = code == 0 ? load(o) : NULL;
    if (tp && mg) check_merge("text encoders + mergers", m, t, tp, 1, 0.5, mg, 0);
    zl_lora_free(m);
    zl_mergers_free(mg);
    for (int i = 0; i < n; i++) {
        free(names[i]);
        free(vals[i]);
    }
    free(names);
    free(vals);
    free(e);
    zl_lora_free(t);
    zl_lora_free(tp);
    free((void *)T);
    free((void *)P);
}

/* ---- re-rank vs an independent dense eigen-decomposition ---- */

/* Eigenvalues of a symmetric n x n matrix (cyclic Jacobi, double). */
static void jacobi_eig(double *a, int n, double *ev) {
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, diag = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                if (i != j) off += a[i * n + j] * a[i * n + j];
                else diag += a[i * n + j] * a[i * n + j];
            }
        if (off <= 1e-30 * diag) break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double apq = a[p * n + q];
                if (fabs(apq) < 1e-300) continue;
                double th = (a[q * n + q] - a[p * n + p]) / (2 * apq);
                double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1));
                double cs = 1 / sqrt(t * t + 1), sn = t * cs;
                for (int k = 0; k < n; k++) {
                    double akp = a[k * n + p], akq = a[k * n + q];
                    a[k * n + p] = cs * akp - sn * akq;
                    a[k * n + q] = sn * akp + cs * akq;
                }
                for (int k = 0; k < n; k++) {
                    double apk = a[p * n + k], aqk = a[q * n + k];
                    a[p * n + k] = cs * apk - sn * aqk;
                    a[q * n + k] = sn * apk + cs * aqk;
                }
            }
    }
    for (int i = 0; i < n; i++) ev[i] = a[i * n + i];
}

static int cmp_desc(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? 1 : a > b ? -1 : 0;
}

/* Optimal relative error of a rank-k approximation of the dense [rows, cols] matrix d. */
static double optimal_err(const double *d, int rows, int cols, int k) {
    int g = rows < cols ? rows : cols;
    double *G = calloc((size_t)g * g, sizeof(double)), *ev = calloc((size_t)g, sizeof(double));
    for (int i = 0; i < g; i++)
        for (int j = 0; j < g; j++) {
            double acc = 0;
            if (rows <= cols)
                for (int c = 0; c < cols; c++) acc += d[(size_t)i * cols + c] * d[(size_t)j * cols + c];
            else
                for (int r = 0; r < rows; r++) acc += d[(size_t)r * cols + i] * d[(size_t)r * cols + j];
            G[i * g + j] = acc;
        }
    jacobi_eig(G, g, ev);
    qsort(ev, (size_t)g, sizeof(double), cmp_desc);
    double tot = 0, drop = 0;
    for (int i = 0; i < g; i++) {
        double v = ev[i] > 0 ? ev[i] : 0;
        tot += v;
        if (i >= k) drop += v;
    }
    free(G);
    free(ev);
    return tot > 0 ? sqrt(drop / tot) : 0;
}

static void test_rerank(void) {
    const char *C = strdup(zt_data("mini-sdxl/loras/content.kohya_sgm.safetensors"));
    const char *S = strdup(zt_data("mini-sdxl/loras/style.kohya_sgm.safetensors"));
    zl_lora *c = load(C), *s = load(S);
    const int K = 5;
    const char *o = zt_tmp("reranked.safetensors");
    int code = c && s ? zt_cli("merge --content '%s' --style '%s' -o '%s' --rank %d --dtype f32 --weights 0.8,0.5", C, S, o, K) : -1;
    CHECKM(code == 0, "merge --rank: %s", zt_err);
    zl_lora *m = code == 0 ? load(o) : NULL;
    const char *ov = zt_out ? strstr(zt_out, "overall relative Frobenius error: ") : NULL;
    CHECK(ov != NULL);
    double printed_overall = ov ? atof(ov + strlen("overall relative Frobenius error: ")) : -1;
    if (m) {
        int checked = 0, bad = 0;
        double tot2 = 0, drop2 = 0;
        for (int i = 0; i < m->n; i++) {
            const zl_lora_layer *lo = &m->layers[i];
            const zl_lora_layer *lc = zl_lora_find(c, lo->part, lo->module), *ls = zl_lora_find(s, lo->part, lo->module);
            size_t n = (size_t)lo->in_features * lo->kh * lo->kw, N = (size_t)lo->out_features * n;
            double *ref = calloc(N, sizeof(double));
            if (lc) { double *d = dense(lc, 0.8, NULL); for (size_t k = 0; k < N; k++) ref[k] += d[k]; free(d); }
            if (ls) { double *d = dense(ls, 0.5, NULL); for (size_t k = 0; k < N; k++) ref[k] += d[k]; free(d); }
            int r_in = (lc ? lc->rank : 0) + (ls ? ls->rank : 0);
            double *got = dense(lo, 1.0, NULL);
            double actual = rel(got, ref, N);
            double nrm2 = 0;
            for (size_t k = 0; k < N; k++) nrm2 += ref[k] * ref[k];
            tot2 += nrm2;
            drop2 += actual * actual * nrm2;
            if (r_in <= K) {
                if (lo->rank != r_in || actual > 1e-6) bad++;
            } else {
                if (lo->rank != K) bad++;
                /* every 3rd re-ranked layer gets the (slow) independent check */
                if (checked++ % 3 == 0) {
                    double opt = optimal_err(ref, lo->out_features, (int)n, K);
                    if (!(fabs(actual - opt) <= 1e-4 * opt + 1e-7)) {
                        bad++;
                        fprintf(stderr, "  rerank %s: error %.9g, optimal %.9g\n", lo->module, actual, opt);
                    }
                }
            }
            free(ref);
            free(got);
        }
        CHECKM(checked > 10, "re-ranked layers checked: %d", checked);
        CHECKM(bad == 0, "re-rank: %d layers off", bad);
        double overall = sqrt(drop2 / tot2);
        CHECKM(fabs(printed_overall - overall) <= 1e-4 * overall, "printed overall %.9g vs %.9g", printed_overall, overall);
    }
    /* the library's per-layer error equals the independent optimum */
    if (c && s) {
        zl_merge_opts mo = {.w_content = 1, .w_style = 1, .rank = 3};
        zl_lora *mm = NULL;
        zl_merge_report rep;
        CHECK_OK(zl_lora_merge(c, s, &mo, &mm, &rep));
        int bad = 0, seen = 0;
        for (int i = 0; mm && i < rep.n; i += 7) {
            const zl_lora_layer *lc = zl_lora_find(c, rep.part[i], rep.module[i]), *ls = zl_lora_find(s, rep.part[i], rep.module[i]);
            const zl_lora_layer *y = lc ? lc : ls;
            size_t n = (size_t)y->in_features * y->kh * y->kw, N = (size_t)y->out_features * n;
            double *ref = calloc(N, sizeof(double));
            if (lc) { double *d = dense(lc, 1, NULL); for (size_t k = 0; k < N; k++) ref[k] += d[k]; free(d); }
            if (ls) { double *d = dense(ls, 1, NULL); for (size_t k = 0; k < N; k++) ref[k] += d[k]; free(d); }
            double opt = optimal_err(ref, y->out_features, (int)n, 3);
            if (!(fabs(rep.rel_err[i] - opt) <= 1e-4 * opt + 1e-9)) bad++;
            seen++;
            free(ref);
        }
        CHECKM(bad == 0 && seen > 10, "library re-rank errors: %d of %d off", bad, seen);
        zl_merge_report_free(&rep);
        zl_lora_free(mm);
    }
    zl_lora_free(m);
    zl_lora_free(c);
    zl_lora_free(s);
    free((void *)C);
    free((void *)S);
}

/* zl_lowrank_truncate on a random low-rank product with known structure. */
static void test_truncate_unit(void) {
    enum { OUT = 37, R = 9, N = 23 };
    float up[OUT * R], down[R * N], nu[OUT * 4], nd[4 * N];
    uint32_t seed = 7;
    for (int i = 0; i < OUT * R; i++) { seed = seed * 1664525u + 1013904223u; up[i] = (float)((int)(seed >> 9) % 2001 - 1000) / 1000.f; }
    for (int i = 0; i < R * N; i++) { seed = seed * 1664525u + 1013904223u; down[i] = (float)((int)(seed >> 9) % 2001 - 1000) / 1000.f; }
    double d[OUT * N];
    for (int o = 0; o < OUT; o++)
        for (int c = 0; c < N; c++) {
            double a = 0;
            for (int t = 0; t < R; t++) a += (double)up[o * R + t] * down[t * N + c];
            d[o * N + c] = a;
        }
    double err, nrm;
    CHECK_OK(zl_lowrank_truncate(up, down, OUT, R, N, 4, nu, nd, &err, &nrm));
    double opt = optimal_err(d, OUT, N, 4), act = 0, tot = 0;
    for (int o = 0; o < OUT; o++)
        for (int c = 0; c < N; c++) {
            double a = 0;
            for (int t = 0; t < 4; t++) a += (double)nu[o * 4 + t] * nd[t * N + c];
            act += (a - d[o * N + c]) * (a - d[o * N + c]);
            tot += d[o * N + c] * d[o * N + c];
        }
    CHECKM(fabs(err - opt) <= 1e-6 * opt, "truncate: reported %.9g optimal %.9g", err, opt);
    CHECKM(fabs(sqrt(act / tot) - opt) <= 1e-4 * opt, "truncate: actual %.9g optimal %.9g", sqrt(act / tot), opt);
    CHECK(fabs(nrm - sqrt(tot)) <= 1e-6 * sqrt(tot));
    /* k >= rank is exact */
    float nu9[OUT * R], nd9[R * N];
    CHECK_OK(zl_lowrank_truncate(up, down, OUT, R, N, R, nu9, nd9, &err, NULL));
    CHECK(err == 0);
    CHECK_ERR(zl_lowrank_truncate(up, down, OUT, R, N, 0, nu, nd, NULL, NULL));
}

static void test_library_errors(void) {
    /* hand-built LoRAs: same module, different shapes */
    float a1[2 * 4] = {1, 2, 3, 4, 5, 6, 7, 8}, b1[3 * 2] = {1, 0, 0, 1, 1, 1};
    float a2[2 * 5] = {0}, b2[3 * 2] = {0};
    zl_lora_layer l1 = {.module = "down_blocks.1.attentions.0.proj_in", .part = ZL_PART_UNET, .kind = ZL_LORA_LINEAR,
                        .rank = 2, .in_features = 4, .out_features = 3, .kh = 1, .kw = 1, .alpha = 2, .down = a1, .up = b1,
                        .dtype = ZL_DT_F32};
    zl_lora_layer l2 = l1;
    l2.in_features = 5;
    l2.down = a2;
    l2.up = b2;
    zl_lora A = {.path = "a.safetensors", .family = ZL_FAMILY_SDXL, .n = 1, .layers = &l1};
    zl_lora B = {.path = "b.safetensors", .family = ZL_FAMILY_SDXL, .n = 1, .layers = &l2};
    zl_lora *m = NULL;
    CHECK(zl_lora_merge(&A, &B, NULL, &m, NULL) == ZL_ESHAPE);
    CHECK(strstr(zl_errmsg(), "proj_in") && strstr(zl_errmsg(), "b.safetensors"));
    CHECK(m == NULL);
    B.family = ZL_FAMILY_SD1;
    l2 = l1;
    CHECK(zl_lora_merge(&A, &B, NULL, &m, NULL) == ZL_EINVAL);
    CHECK(strstr(zl_errmsg(), "famil") != NULL);
    B.family = ZL_FAMILY_SDXL;
    zl_merge_opts mo = {.w_content = 1, .w_style = NAN};
    CHECK(zl_lora_merge(&A, &B, &mo, &m, NULL) == ZL_EINVAL);
    /* in-memory merge: rank concat, alpha = rank, values as the formula says */
    mo.w_style = 0.5f;
    CHECK_OK(zl_lora_merge(&A, &B, &mo, &m, NULL));
    if (m) {
        CHECK(m->n == 1 && m->layers[0].rank == 4 && m->layers[0].alpha == 4.0f);
        /* up row 0 = [1*1*b1[0], 1*b1[1], 0.5*1*b1[0], 0.5*b1[1]] */
        CHECK(m->layers[0].up[0] == 1 && m->layers[0].up[1] == 0 && m->layers[0].up[2] == 0.5f && m->layers[0].up[3] == 0);
        CHECK(m->layers[0].down[0] == 1 && m->layers[0].down[4 * 2] == 1 && m->layers[0].down[4 * 3 + 3] == 8);
        zl_lora_free(m);
    }
}

/* Lazily loaded inputs (values read from the mapped files) merge to the same bytes. */
static void test_lazy_merge(void) {
    static const char *files[][2] = {
        {"mini-sdxl/loras/content.kohya_sgm.safetensors", "mini-sdxl/loras/style.kohya.safetensors"},
        {"tiny-sd15/loras/content.peft.safetensors", "tiny-sd15/loras/style.kohya_sgm.safetensors"},
    };
    for (int f = 0; f < 2; f++) {
        const char *C = strdup(zt_data(files[f][0])), *S = strdup(zt_data(files[f][1]));
        zl_lora *c = load(C), *s = load(S), *c3 = NULL, *s3 = NULL, *m1 = NULL, *m3 = NULL;
        zl_lora_lazy *lc = NULL, *ls = NULL;
        CHECK_OK(zl_lora_load_lazy(C, NULL, &c3, &lc));
        CHECK_OK(zl_lora_load_lazy(S, NULL, &s3, &ls));
        if (c && s && c3 && s3) {
            /* loaded lazily (no values in memory at all): the same layers, the same merge, bit for bit */
            int held = 0;
            for (int i = 0; i < c3->n; i++) held += c3->layers[i].down != NULL || c3->layers[i].up != NULL;
            for (int i = 0; i < s3->n; i++) held += s3->layers[i].down != NULL || s3->layers[i].up != NULL;
            CHECKM(held == 0 && c3->n == c->n && s3->n == s->n && c3->layout == c->layout, "%s: lazy load", files[f][0]);
            for (int i = 0; i < c3->n && i < c->n; i++)
                CHECK(!strcmp(c3->layers[i].module, c->layers[i].module) && c3->layers[i].alpha == c->layers[i].alpha);
            zl_merge_opts mo = {.w_content = 0.7f, .w_style = 1.5f}, ml = mo;
            ml.lazy_content = lc;
            ml.lazy_style = ls;
            CHECK_OK(zl_lora_merge(c, s, &mo, &m1, NULL));
            CHECK_OK(zl_lora_merge(c3, s3, &ml, &m3, NULL));
            int diff = !m1 || !m3 || m1->n != m3->n;
            for (int i = 0; !diff && i < m1->n; i++) {
                const zl_lora_layer *x = &m1->layers[i], *y = &m3->layers[i];
                diff |= x->rank != y->rank ||
                        memcmp(x->down, y->down, sizeof(float) * (size_t)x->rank * x->in_features * x->kh * x->kw) ||
                        memcmp(x->up, y->up, sizeof(float) * (size_t)x->rank * x->out_features);
            }
            CHECKM(!diff, "%s: lazy merge differs", files[f][0]);
            zl_lora_free(m3);
            m3 = NULL;
            /* without the handles a lazily loaded LoRA cannot merge: an error, not garbage */
            CHECK(zl_lora_merge(c3, s3, &mo, &m3, NULL) != ZL_OK && m3 == NULL);
        }
        zl_lora_free(m1);
        zl_lora_free(m3);
        zl_lora_free(c3);
        zl_lora_free(s3);
        zl_lora_lazy_free(lc);
        zl_lora_lazy_free(ls);
        zl_lora_free(c);
        zl_lora_free(s);
        free((void *)C);
        free((void *)S);
    }
}

static void test_bad_cli(void) {
    const char *C = strdup(zt_data("mini-sdxl/loras/content.kohya_sgm.safetensors"));
    const char *S = strdup(zt_data("mini-sdxl/loras/style.kohya_sgm.safetensors"));
    const char *X = strdup(zt_data("tiny-sd15/loras/style.kohya.safetensors"));
    const char *o = strdup(zt_tmp("bad_out.safetensors"));
    struct stat st;
    CHECK(zt_cli("merge --help") == 0 && strstr(zt_out, "usage: ziplora merge"));
    CHECK(zt_cli("convert --help") == 0 && strstr(zt_out, "usage: ziplora convert"));
    int code = zt_cli("merge --content '%s' --style '%s' -o '%s'", C, "/nonexistent/style.safetensors", o);
    CHECKM(code == 1 && strstr(zt_err, "/nonexistent/style.safetensors"), "missing file: exit %d, %s", code, zt_err);
    CHECK(stat(o, &st) != 0);
    code = zt_cli("merge --content '%s' --style '%s' -o '%s'", C, X, o);
    CHECKM(code == 1 && strstr(zt_err, "famil"), "different families: exit %d, %s", code, zt_err);
    CHECK(stat(o, &st) != 0);
    code = zt_cli("merge --content '%s' --style '%s' -o '%s' --rank 0", C, S, o);
    CHECKM(code == 2 && strstr(zt_err, "--rank"), "--rank 0: exit %d %s", code, zt_err);
    CHECK(stat(o, &st) != 0);
    const char *badw[] = {"1", "a,b", "1,2,3", "1,", ",1", "nan,1"};
    for (size_t k = 0; k < sizeof badw / sizeof *badw; k++) {
        code = zt_cli("merge --content '%s' --style '%s' -o '%s' --weights '%s'", C, S, o, badw[k]);
        CHECKM(code == 2 && strstr(zt_err, "--weights"), "--weights %s: exit %d %s", badw[k], code, zt_err);
        CHECK(stat(o, &st) != 0);
    }
    code = zt_cli("merge --content '%s' --style '%s' -o '%s' --format onnx", C, S, o);
    CHECK(code == 2);
    code = zt_cli("merge --content '%s' -o '%s'", C, o);
    CHECK(code == 2);
    /* output = input: refused, the input is untouched */
    char h0[65], h1[65];
    CHECK_OK(zl_sha256_file(S, h0));
    code = zt_cli("merge --content '%s' --style '%s' -o '%s'", C, S, S);
    CHECKM(code != 0 && strstr(zt_err, "input"), "output = input: exit %d %s", code, zt_err);
    CHECK_OK(zl_sha256_file(S, h1));
    CHECK(!strcmp(h0, h1));
    /* mergers of the wrong length / for unknown modules */
    float v[3] = {1, 1, 1};
    zl_st_entry e = {.name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.merger_content", .dtype = ZL_DT_F32,
                     .ndim = 1, .shape = {3}, .data = v};
    const char *M = zt_tmp("bad_mergers.safetensors");
    CHECK_OK(zl_st_write(M, &e, 1, NULL, 0, NULL, 0));
    code = zt_cli("merge --content '%s' --style '%s' -o '%s' --mergers '%s'", C, S, o, M);
    CHECKM(code == 1 && strstr(zt_err, "merger"), "short merger: exit %d %s", code, zt_err);
    CHECK(stat(o, &st) != 0);
    e.name = "down_blocks.9.nothing.merger_style";
    CHECK_OK(zl_st_write(M, &e, 1, NULL, 0, NULL, 0));
    code = zt_cli("merge --content '%s' --style '%s' -o '%s' --mergers '%s'", C, S, o, M);
    CHECKM(code == 1 && strstr(zt_err, "down_blocks.9.nothing"), "unknown merger: exit %d %s", code, zt_err);
    e.name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.grad_content";
    CHECK_OK(zl_st_write(M, &e, 1, NULL, 0, NULL, 0));
    code = zt_cli("merge --content '%s' --style '%s' -o '%s' --mergers '%s'", C, S, o, M);
    CHECKM(code == 1 && strstr(zt_err, "not a merger"), "non-merger key: exit %d %s", code, zt_err);
    CHECK(stat(o, &st) != 0);
    /* an input with an Inf in one tensor (the F16 content LoRA with one value
     * overwritten): an error naming the file and the tensor, no output */
    {
        zl_st_file *f = NULL;
        CHECK_OK(zl_st_open(C, &f));
        int n = f ? zl_st_count(f) : 0;
        zl_st_entry *es = calloc((size_t)(n ? n : 1), sizeof *es);
        uint8_t *copy = NULL;
        const char *poked = NULL;
        for (int i = 0; i < n && es; i++) {
            const zl_st_tensor *t = zl_st_at(f, i);
            es[i].name = t->name;
            es[i].dtype = t->dtype;
            es[i].ndim = t->ndim;
            memcpy(es[i].shape, t->shape, sizeof t->shape);
            es[i].data = t->data;
            if (!poked && t->dtype == ZL_DT_F16 && strstr(t->name, ".lora_up.weight") && t->numel > 3) {
                copy = malloc(t->nbytes);
                memcpy(copy, t->data, t->nbytes);
                uint16_t inf = 0x7c00;
                memcpy(copy + 2 * 3, &inf, 2);
                es[i].data = copy;
                poked = t->name;
            }
        }
        const char *B = zt_tmp("inf_content.safetensors");
        CHECK(poked != NULL);
        CHECK_OK(zl_st_write(B, es, n, NULL, 0, NULL, 0));
        code = zt_cli("merge --content '%s' --style '%s' -o '%s'", B, S, o);
        CHECKM(code == 1 && strstr(zt_err, "inf_content.safetensors") && poked && strstr(zt_err, poked) &&
                   strstr(zt_err, "Inf at element 3"),
               "Inf in an input: exit %d %s", code, zt_err);
        CHECK(stat(o, &st) != 0);
        free(copy);
        free(es);
        zl_st_close(f);
    }
    CHECK(no_temp_left());
    free((void *)C);
    free((void *)S);
    free((void *)X);
    free((void *)o);
}

/* The raw path (output bytes straight from lazily loaded inputs) writes exactly
 * the tensors the float path writes, for F16 / F32 inputs, scaled and unscaled
 * halves, merged and pass-through layers, kohya and PEFT output. */
static int same_tensors(const char *a, const char *b) {
    zl_st_file *x = NULL, *y = NULL;
    int same = zl_st_open(a, &x) == ZL_OK && zl_st_open(b, &y) == ZL_OK && zl_st_count(x) == zl_st_count(y);
    for (int i = 0; same && i < zl_st_count(x); i++) {
        const zl_st_tensor *p = zl_st_at(x, i), *q = zl_st_at(y, i);
        same = !strcmp(p->name, q->name) && p->dtype == q->dtype && p->nbytes == q->nbytes &&
               !memcmp(p->data, q->data, p->nbytes);
        if (!same) printf("  tensor %s differs\n", p->name);
    }
    zl_st_close(x);
    zl_st_close(y);
    return same;
}

/* Every layer of lazily loaded l reads back (through z) the values eagerly loaded e holds. */
static int lazy_matches(const zl_lora *l, const zl_lora_lazy *z, const zl_lora *e) {
    int ok = l && e && l->n == e->n;
    for (int i = 0; ok && i < l->n; i++) {
        const zl_lora_layer *y = &e->layers[i];
        size_t nd = (size_t)y->rank * y->in_features * y->kh * y->kw, nu = (size_t)y->out_features * y->rank;
        float *d = malloc(nd * sizeof *d), *u = malloc(nu * sizeof *u);
        ok = d && u && zl_lora_lazy_read(z, l, i, d, u) == ZL_OK && !memcmp(d, y->down, nd * sizeof *d) &&
             !memcmp(u, y->up, nu * sizeof *u);
        free(d);
        free(u);
    }
    return ok;
}

/* A lazily loaded LoRA whose file is a copied buffer (zl_st_parse), not a
 * mapping, reads back its values (their pages must not be dropped: that
 * would zero them). Found by fuzz_lora. */
static void test_lazy_copied_buffer(void) {
    const char *path = zt_data("mini-sdxl/loras/content.kohya.safetensors");
    char *buf = NULL;
    size_t len = 0;
    CHECK_OK(zl_read_file(path, &buf, &len));
    zl_st_file *f = NULL;
    if (buf) CHECK_OK(zl_st_parse(buf, len, "copied", &f));
    free(buf);
    zl_lora *e = load(path), *l = NULL;
    zl_lora_lazy *z = NULL;
    if (f) CHECK_OK(zl_lora_load_st_lazy(f, "copied", NULL, &l, &z));
    /* twice: a dropped page would read back as zeros */
    CHECKM(lazy_matches(l, z, e) && lazy_matches(l, z, e), "lazy values from a copied buffer");
    zl_lora_lazy_free(z);
    zl_lora_free(l);
    zl_lora_free(e);
    zl_st_close(f);
}

/* Tensors at odd offsets (safetensors does not align them): the F16 kohya
 * fixture repacked with one 2-byte F16 alpha first and every down/up widened
 * to F32 after it, so the F32 data sit at 2 mod 4. The lazy loader's checks
 * and reads give the eager loader's values (the ASan/UBSan build traps any
 * misaligned access). Found by fuzz_lora. */
static void test_lazy_misaligned(void) {
    const char *path = zt_data("mini-sdxl/loras/content.kohya.safetensors");
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(path, &f));
    if (!f) return;
    int n = zl_st_count(f), first = -1;
    for (int i = 0; i < n && first < 0; i++)
        if (strstr(zl_st_at(f, i)->name, ".alpha") && zl_st_at(f, i)->dtype == ZL_DT_F16) first = i;
    CHECK(first >= 0);
    if (first < 0) { zl_st_close(f); return; }
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        const zl_st_tensor *t = zl_st_at(f, i);
        total += t->dtype == ZL_DT_F16 && !strstr(t->name, ".alpha") ? (size_t)t->numel * 4 : t->nbytes;
    }
    uint8_t *data = calloc(total, 1);
    json_t *h = json_object();
    size_t off = 0;
    for (int pass = 0; pass < 3 && data; pass++) /* the first alpha, the widened factors, the other alphas */
        for (int i = 0; i < n; i++) {
            const zl_st_tensor *t = zl_st_at(f, i);
            int alpha = strstr(t->name, ".alpha") != NULL;
            if ((pass == 0) != (i == first) || (pass == 1) == alpha || (pass == 2 && i == first)) continue;
            int widen = !alpha && t->dtype == ZL_DT_F16;
            size_t nb = widen ? (size_t)t->numel * 4 : t->nbytes;
            json_t *shape = json_array();
            for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
            json_object_set_new(h, t->name,
                                json_pack("{s:s, s:o, s:[I,I]}", "dtype", widen ? "F32" : zl_dtype_name(t->dtype), "shape",
                                          shape, "data_offsets", (json_int_t)off, (json_int_t)(off + nb)));
            if (widen) { /* into an aligned buffer first: data + off is 2 mod 4 */
                float *w = malloc(nb);
                if (w) {
                    zl_st_read_f32(t, w);
                    memcpy(data + off, w, nb);
                }
                free(w);
            } else {
                memcpy(data + off, t->data, nb);
            }
            off += nb;
        }
    char *hs = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    size_t hl = hs ? strlen(hs) : 0, hp = (hl + 7) & ~(size_t)7;
    uint8_t *buf = malloc(8 + hp + total);
    zl_st_file *g = NULL;
    if (buf && hs && data && off == total) {
        for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hp >> (8 * i));
        memset(buf + 8, ' ', hp);
        memcpy(buf + 8, hs, hl);
        memcpy(buf + 8 + hp, data, total);
        CHECK_OK(zl_st_parse(buf, 8 + hp + total, "odd offsets", &g));
    }
    zl_lora *e = NULL, *l = NULL;
    zl_lora_lazy *z = NULL;
    if (g) {
        CHECK_OK(zl_lora_load_st(g, "odd offsets", NULL, &e));
        CHECK_OK(zl_lora_load_st_lazy(g, "odd offsets", NULL, &l, &z));
    }
    int odd = 0;
    for (int i = 0; e && i < e->n; i++) odd += e->layers[i].dtype == ZL_DT_F32;
    CHECKM(lazy_matches(l, z, e) && e && odd == e->n, "lazy values at odd offsets (%d F32 layers)", odd);
    zl_lora_lazy_free(z);
    zl_lora_free(l);
    zl_lora_free(e);
    zl_st_close(g);
    zl_st_close(f);
    free(buf);
    free(hs);
    free(data);
}

/* The in-place value check at any alignment and length (vector body and
 * scalar tail): it finds the first non-finite element and names it. */
static void test_check_values(void) {
    for (int dt = 0; dt < 2; dt++) {
        const int n = dt ? 21 : 11; /* not multiples of the vector width */
        const size_t esz = dt ? 2 : 4;
        uint8_t buf[1 + 4 * 21];
        memset(buf, 0, sizeof buf);
        zl_st_tensor t;
        memset(&t, 0, sizeof t);
        t.name = "odd";
        t.dtype = dt ? ZL_DT_F16 : ZL_DT_F32;
        t.ndim = 1;
        t.shape[0] = t.numel = n;
        t.data = buf + 1; /* misaligned */
        t.nbytes = (size_t)n * esz;
        for (int i = 0; i < n; i++) {
            float v = 0.25f * (float)(i - 5);
            if (dt) {
                uint16_t h = zl_f32_to_f16(v);
                memcpy(buf + 1 + 2 * i, &h, 2);
            } else {
                memcpy(buf + 1 + 4 * i, &v, 4);
            }
        }
        CHECK_OK(zl_lora_check_values("f.safetensors", &t));
        if (dt) {
            uint16_t nan = 0x7e00;
            memcpy(buf + 1 + 2 * (n - 1), &nan, 2);
        } else {
            float inf = INFINITY;
            memcpy(buf + 1 + 4 * (n - 1), &inf, 4);
        }
        char want[96];
        snprintf(want, sizeof want, "f.safetensors: tensor 'odd' holds %s at element %d", dt ? "NaN" : "Inf", n - 1);
        int rc = zl_lora_check_values("f.safetensors", &t);
        CHECKM(rc == ZL_ENUMERIC && strstr(zl_errmsg(), want), "check_values: %d %s", rc, zl_errmsg());
    }
}

static void test_raw_path(void) {
    static const struct {
        const char *c, *s;
        float wc, ws;
        zl_lora_format fmt;
        int min_raw; /* tensors the raw path must have written */
    } cases[] = {
        /* F16 + F16: every layer merged, halves scaled by 0.7 and 1.5 */
        {"mini-sdxl/loras/content.kohya.safetensors", "mini-sdxl/loras/content.kohya_sgm.safetensors", 0.7f, 1.5f,
         ZL_FORMAT_KOHYA, 2},
        /* unit weights: byte copies */
        {"tiny-sd15/loras/content.kohya.safetensors", "tiny-sd15/loras/content.kohya_sgm.safetensors", 1, 1,
         ZL_FORMAT_PEFT, 2},
        /* F16 UNet + F16 text encoders: pass-through layers; PEFT folds each one's scale into up */
        {"mini-sdxl/loras/content.kohya.safetensors", "mini-sdxl/loras/text_encoders.kohya.safetensors", 1, 0.5f,
         ZL_FORMAT_PEFT, 2},
        /* F32 PEFT inputs */
        {"tiny-sd15/loras/content.peft.safetensors", "tiny-sd15/loras/style.peft.safetensors", 0.7f, 1.25f,
         ZL_FORMAT_KOHYA, 2},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        char C[512], S[512], o1[512], o2[512];
        snprintf(C, sizeof C, "%s", zt_data(cases[k].c));
        snprintf(S, sizeof S, "%s", zt_data(cases[k].s));
        snprintf(o1, sizeof o1, "%s", zt_tmp("raw_lazy.safetensors"));
        snprintf(o2, sizeof o2, "%s", zt_tmp("raw_float.safetensors"));
        zl_lora *c = load(C), *s = load(S), *c2 = NULL, *s2 = NULL;
        zl_lora_lazy *zc = NULL, *zs = NULL;
        CHECK_OK(zl_lora_load_lazy(C, NULL, &c2, &zc));
        CHECK_OK(zl_lora_load_lazy(S, NULL, &s2, &zs));
        if (c && s && c2 && s2) {
            zl_merge_opts mo = {.w_content = cases[k].wc, .w_style = cases[k].ws}, ml = mo;
            ml.lazy_content = zc;
            ml.lazy_style = zs;
            zl_lora_write_opts wo = {.format = cases[k].fmt};
            zl_merge_report r1, r2;
            CHECK_OK(zl_lora_merge_write(o1, c2, s2, &ml, &wo, &r1));
            CHECK_OK(zl_lora_merge_write(o2, c, s, &mo, &wo, &r2));
            CHECKM(r1.n_raw >= cases[k].min_raw && r2.n_raw == 0, "case %zu: raw tensors %d (float path %d)", k,
                   r1.n_raw, r2.n_raw);
            CHECKM(same_tensors(o1, o2), "case %zu (%s + %s): raw path == float path", k, cases[k].c, cases[k].s);
            printf("raw path case %zu: %d of %d tensors raw\n", k, r1.n_raw, 2 * r1.n);
            zl_merge_report_free(&r1);
            zl_merge_report_free(&r2);
        }
        zl_lora_free(c);
        zl_lora_free(s);
        zl_lora_free(c2);
        zl_lora_free(s2);
        zl_lora_lazy_free(zc);
        zl_lora_lazy_free(zs);
    }
}

int main(void) {
    test_truncate_unit();
    test_raw_path();
    test_lazy_copied_buffer();
    test_lazy_misaligned();
    test_check_values();
    test_library_errors();
    test_lazy_merge();
    test_exact("mini-sdxl");
    test_exact("tiny-sd15");
    test_mergers("mini-sdxl");
    test_mergers("tiny-sd15");
    test_mergers("tiny-sdxl");
    test_text_encoders();
    test_rerank();
    test_bad_cli();
    return zt_done();
}
