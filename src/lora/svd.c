/* Exact low-rank truncation of one LoRA layer. up @ down has rank <= r, so its
 * SVD comes from the SVD of a small core: up = Q1 R1, down^T = Q2 R2 (thin QR),
 * up @ down = Q1 (R1 R2^T) Q2^T, and SVD(R1 R2^T) = Uc S Vc^T gives
 * up @ down = (Q1 Uc) S (Q2 Vc)^T without forming the dense matrix. Everything
 * runs in double through LAPACK (inside OpenBLAS), so the truncation error is
 * the optimal one up to float rounding of the inputs and outputs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ziplora/lora.h"

/* LAPACK (Fortran) prototypes: OpenBLAS exports them; no lapacke header needed. */
extern void dgeqrf_(const int *m, const int *n, double *a, const int *lda, double *tau, double *work,
                    const int *lwork, int *info);
extern void dorgqr_(const int *m, const int *n, const int *k, double *a, const int *lda, const double *tau,
                    double *work, const int *lwork, int *info);
extern void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s, double *u,
                    const int *ldu, double *vt, const int *ldvt, double *work, const int *lwork, int *iwork,
                    int *info);

/* Thin QR of a column-major m x r matrix `a` (overwritten by Q, m x k, k = min(m, r));
 * R (k x r, column-major) goes to `rr`. */
static int thin_qr(double *a, int m, int r, double *rr) {
    int k = m < r ? m : r, info = 0, lwork = -1;
    double wq, *tau = malloc(sizeof(double) * (size_t)k);
    if (!tau) return zl_set_error(ZL_ENOMEM, "out of memory (QR)");
    dgeqrf_(&m, &r, a, &m, tau, &wq, &lwork, &info);
    lwork = (int)wq + 1;
    double *work = malloc(sizeof(double) * (size_t)lwork);
    if (!work) { free(tau); return zl_set_error(ZL_ENOMEM, "out of memory (QR)"); }
    dgeqrf_(&m, &r, a, &m, tau, work, &lwork, &info);
    if (info) { free(tau); free(work); return zl_set_error(ZL_ENUMERIC, "dgeqrf failed (info %d)", info); }
    for (int j = 0; j < r; j++)
        for (int i = 0; i < k; i++) rr[i + (size_t)k * j] = i <= j ? a[i + (size_t)m * j] : 0.0;
    int lw2 = -1;
    dorgqr_(&m, &k, &k, a, &m, tau, &wq, &lw2, &info);
    if ((int)wq + 1 > lwork) {
        lwork = (int)wq + 1;
        double *w2 = realloc(work, sizeof(double) * (size_t)lwork);
        if (!w2) { free(tau); free(work); return zl_set_error(ZL_ENOMEM, "out of memory (QR)"); }
        work = w2;
    }
    dorgqr_(&m, &k, &k, a, &m, tau, work, &lwork, &info);
    free(tau);
    free(work);
    if (info) return zl_set_error(ZL_ENUMERIC, "dorgqr failed (info %d)", info);
    return ZL_OK;
}

int zl_lowrank_truncate(const float *up, const float *down, int out, int r, int n, int k, float *new_up,
                        float *new_down, double *rel_err, double *norm) {
    if (out <= 0 || r <= 0 || n <= 0 || k <= 0)
        return zl_set_error(ZL_EINVAL, "low-rank truncation: invalid sizes out %d, rank %d, in %d, k %d", out, r, n, k);
    int k1 = out < r ? out : r, k2 = n < r ? n : r, m = k1 < k2 ? k1 : k2;
    int rc = ZL_OK;
    double *q1 = malloc(sizeof(double) * (size_t)out * r);  /* [out, r] col-major -> Q1 [out, k1] */
    double *q2 = malloc(sizeof(double) * (size_t)n * r);    /* [n, r] col-major -> Q2 [n, k2] */
    double *r1 = malloc(sizeof(double) * (size_t)k1 * r);   /* [k1, r] */
    double *r2 = malloc(sizeof(double) * (size_t)k2 * r);   /* [k2, r] */
    double *c = malloc(sizeof(double) * (size_t)k1 * k2);   /* [k1, k2] col-major */
    double *s = malloc(sizeof(double) * (size_t)m);
    double *uc = malloc(sizeof(double) * (size_t)k1 * m);   /* [k1, m] */
    double *vt = malloc(sizeof(double) * (size_t)m * k2);   /* [m, k2] */
    int *iwork = malloc(sizeof(int) * 8 * (size_t)m);
    double *work = NULL;
    if (!q1 || !q2 || !r1 || !r2 || !c || !s || !uc || !vt || !iwork) {
        rc = zl_set_error(ZL_ENOMEM, "out of memory (low-rank truncation)");
        goto done;
    }
    for (int o = 0; o < out; o++)
        for (int j = 0; j < r; j++) q1[o + (size_t)out * j] = up[(size_t)o * r + j];
    /* down row-major [r, n] is down^T column-major [n, r] */
    for (size_t i = 0; i < (size_t)n * r; i++) q2[i] = down[i];
    if ((rc = thin_qr(q1, out, r, r1)) || (rc = thin_qr(q2, n, r, r2))) goto done;
    for (int b = 0; b < k2; b++)
        for (int a = 0; a < k1; a++) {
            double acc = 0;
            for (int j = 0; j < r; j++) acc += r1[a + (size_t)k1 * j] * r2[b + (size_t)k2 * j];
            c[a + (size_t)k1 * b] = acc;
        }
    {
        int info = 0, lwork = -1;
        double wq;
        dgesdd_("S", &k1, &k2, c, &k1, s, uc, &k1, vt, &m, &wq, &lwork, iwork, &info);
        lwork = (int)wq + 1;
        work = malloc(sizeof(double) * (size_t)lwork);
        if (!work) { rc = zl_set_error(ZL_ENOMEM, "out of memory (SVD)"); goto done; }
        dgesdd_("S", &k1, &k2, c, &k1, s, uc, &k1, vt, &m, work, &lwork, iwork, &info);
        if (info) { rc = zl_set_error(ZL_ENUMERIC, "dgesdd failed (info %d)", info); goto done; }
    }
    {
        int kk = k < m ? k : m;
        double total = 0, dropped = 0;
        for (int t = 0; t < m; t++) {
            total += s[t] * s[t];
            if (t >= kk) dropped += s[t] * s[t];
        }
        if (rel_err) *rel_err = total > 0 ? sqrt(dropped / total) : 0.0;
        if (norm) *norm = sqrt(total);
        /* new_up [out, k] = Q1 Uc S (columns past kk are zero) */
        for (int o = 0; o < out; o++)
            for (int t = 0; t < k; t++) {
                double acc = 0;
                if (t < kk)
                    for (int a = 0; a < k1; a++) acc += q1[o + (size_t)out * a] * uc[a + (size_t)k1 * t];
                new_up[(size_t)o * k + t] = (float)(acc * (t < kk ? s[t] : 0.0));
            }
        /* new_down [k, n] = Vc^T Q2^T */
        for (int t = 0; t < k; t++)
            for (int col = 0; col < n; col++) {
                double acc = 0;
                if (t < kk)
                    for (int b = 0; b < k2; b++) acc += vt[t + (size_t)m * b] * q2[col + (size_t)n * b];
                new_down[(size_t)t * n + col] = (float)acc;
            }
    }
done:
    free(q1);
    free(q2);
    free(r1);
    free(r2);
    free(c);
    free(s);
    free(uc);
    free(vt);
    free(iwork);
    free(work);
    return rc;
}

/* Best rank-k factors of a dense D [out, n] (row-major), through dgesdd in double:
 * new_up [out, k] = U S, new_down [k, n] = V^T (columns past the rank are zero). */
static int dense_truncate(const float *D, int out, int n, int k, float *new_up, float *new_down, double *rel_err,
                          double *norm) {
    const int m = out < n ? out : n;
    int rc = ZL_OK, info = 0, lwork = -1;
    double *a = malloc(sizeof(double) * (size_t)out * n), *s = malloc(sizeof(double) * (size_t)m);
    double *u = malloc(sizeof(double) * (size_t)out * m), *vt = malloc(sizeof(double) * (size_t)m * n);
    int *iwork = malloc(sizeof(int) * 8 * (size_t)m);
    double *work = NULL, wq;
    if (!a || !s || !u || !vt || !iwork) {
        rc = zl_set_error(ZL_ENOMEM, "out of memory (SVD of a %d x %d update)", out, n);
        goto done;
    }
    for (int o = 0; o < out; o++) /* column-major copy */
        for (int c = 0; c < n; c++) a[o + (size_t)out * c] = D[(size_t)o * n + c];
    dgesdd_("S", &out, &n, a, &out, s, u, &out, vt, &m, &wq, &lwork, iwork, &info);
    lwork = (int)wq + 1;
    if (!(work = malloc(sizeof(double) * (size_t)lwork))) {
        rc = zl_set_error(ZL_ENOMEM, "out of memory (SVD of a %d x %d update)", out, n);
        goto done;
    }
    dgesdd_("S", &out, &n, a, &out, s, u, &out, vt, &m, work, &lwork, iwork, &info);
    if (info) {
        rc = zl_set_error(ZL_ENUMERIC, "dgesdd failed (info %d)", info);
        goto done;
    }
    const int kk = k < m ? k : m;
    double total = 0, dropped = 0;
    for (int t = 0; t < m; t++) {
        total += s[t] * s[t];
        if (t >= kk) dropped += s[t] * s[t];
    }
    if (rel_err) *rel_err = total > 0 ? sqrt(dropped / total) : 0.0;
    if (norm) *norm = sqrt(total);
    for (int o = 0; o < out; o++)
        for (int t = 0; t < k; t++) new_up[(size_t)o * k + t] = t < kk ? (float)(u[o + (size_t)out * t] * s[t]) : 0.0f;
    for (int t = 0; t < k; t++)
        for (int c = 0; c < n; c++) new_down[(size_t)t * n + c] = t < kk ? (float)vt[t + (size_t)m * c] : 0.0f;
done:
    free(a), free(s), free(u), free(vt), free(iwork), free(work);
    return rc;
}

int zl_lora_bake_dora(zl_lora_layer *y, const float *W, int k, double *rel_err, double *norm) {
    if (!y->dora) return zl_set_error(ZL_EINVAL, "layer '%s' has no DoRA magnitude to bake", y->module);
    const int out = y->out_features, n = y->in_features * y->kh * y->kw;
    if (k <= 0) k = y->rank;
    const size_t nw = (size_t)out * n;
    float *d = malloc(sizeof(float) * nw), *nu = malloc(sizeof(float) * (size_t)out * k),
          *nd = malloc(sizeof(float) * (size_t)k * n);
    int rc = d && nu && nd ? ZL_OK : zl_set_error(ZL_ENOMEM, "out of memory baking DoRA layer '%s'", y->module);
    if (!rc) {
        /* D = W' - W, W' the weight with the DoRA layer folded in at weight 1 */
        memcpy(d, W, sizeof(float) * nw);
        rc = zl_lora_fold(y, 1.0f, d);
    }
    if (!rc) {
        for (size_t i = 0; i < nw; i++) d[i] -= W[i];
        rc = dense_truncate(d, out, n, k, nu, nd, rel_err, norm);
    }
    free(d);
    if (rc) {
        free(nu), free(nd);
        return zl_error_prefix(rc, "DoRA layer '%s'", y->module);
    }
    free(y->up), free(y->down), free(y->dora);
    y->up = nu, y->down = nd, y->dora = NULL, y->dora_out = 0;
    y->rank = k;
    y->alpha = (float)k; /* scale 1: up @ down is the update itself */
    return ZL_OK;
}
