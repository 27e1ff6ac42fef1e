/* Exact low-rank truncation of one LoRA layer. up @ down has rank <= r, so its
 * SVD comes from the SVD of a small core: up = Q1 R1, down^T = Q2 R2 (thin QR),
 * up @ down = Q1 (R1 R2^T) Q2^T, and SVD(R1 R2^T) = Uc S Vc^T gives
 * up @ down = (Q1 Uc) S (Q2 Vc)^T without forming the dense matrix. Everything
 * runs in double through LAPACK (inside OpenBLAS), so the truncation error is
 * the optimal one up to float rounding of the inputs and outputs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <omp.h>

#include "ziplora/lora.h"

/* LAPACK (Fortran) prototypes: OpenBLAS exports them; no lapacke header needed. */
extern void dgeqrf_(const int *m, const int *n, double *a, const int *lda, double *tau, double *work,
                    const int *lwork, int *info);
extern void dorgqr_(const int *m, const int *n, const int *k, double *a, const int *lda, const double *tau,
                    double *work, const int *lwork, int *info);
extern void dsyevr_(const char *jobz, const char *range, const char *uplo, const int *n, double *a, const int *lda,
                    const double *vl, const double *vu, const int *il, const int *iu, const double *abstol, int *m,
                    double *w, double *z, const int *ldz, int *isuppz, double *work, const int *lwork, int *iwork,
                    const int *liwork, int *info);
extern void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s, double *u,
                    const int *ldu, double *vt, const int *ldvt, double *work, const int *lwork, int *iwork,
                    int *info);

/* LAPACK runs on one OpenMP thread: OpenBLAS's OpenMP build threads each BLAS call the
 * LAPACK routines make by OpenMP's thread count, thousands of tiny parallel regions in a
 * factorisation (the callers may run layers in parallel instead). Returns the count to
 * give back to lapack_threads_restore. */
static int lapack_one_thread(void) {
    const int n = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (n > 1) omp_set_num_threads(1);
    return n;
}

static void lapack_threads_restore(int n) {
    if (n > 1) omp_set_num_threads(n);
}

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
    const int nthr = lapack_one_thread();
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
    lapack_threads_restore(nthr);
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

/* Best rank-k factors of a dense D [out, n] (row-major), in double, from the eigenvectors of
 * its Gram matrix on the smaller side (G = D^T D or D D^T, s x s, s = min(out, n)): the top k
 * eigenvectors span D's top k singular subspace, and D projected onto it is the best rank-k
 * approximation (Eckart-Young). Only the k wanted eigenpairs are computed (dsyevr), which is
 * several times faster than a full SVD at these shapes (bench/RESULTS.md). Returns
 * new_up [out, k] = U S, new_down [k, n] = V^T (columns past the rank zero). */
static int dense_truncate(const float *D, int out, int n, int k, float *new_up, float *new_down, double *rel_err,
                          double *norm) {
    const int gram_rows = out <= n, s = gram_rows ? out : n, kk = k < s ? k : s;
    const int nthr = lapack_one_thread();
    int rc = ZL_OK, info = 0, m_found = 0, lwork = -1, liwork = -1, iwq = 0;
    double *d = malloc(sizeof(double) * (size_t)out * n), *g = malloc(sizeof(double) * (size_t)s * s);
    double *w = malloc(sizeof(double) * (size_t)s), *z = malloc(sizeof(double) * (size_t)s * kk);
    double *f = malloc(sizeof(double) * (size_t)kk * (gram_rows ? n : out)); /* the other factor */
    int *isuppz = malloc(sizeof(int) * 2 * (size_t)kk);
    double *work = NULL, wq;
    int *iwork = NULL;
    if (!d || !g || !w || !z || !f || !isuppz) {
        rc = zl_set_error(ZL_ENOMEM, "out of memory (SVD of a %d x %d update)", out, n);
        goto done;
    }
    for (size_t i = 0; i < (size_t)out * n; i++) d[i] = D[i];
    /* row-major upper triangle = column-major lower */
    cblas_dsyrk(CblasRowMajor, CblasUpper, gram_rows ? CblasNoTrans : CblasTrans, s, gram_rows ? n : out, 1.0, d, n,
                0.0, g, s);
    double total = 0;
    for (int i = 0; i < s; i++) total += g[(size_t)i * s + i];
    const int il = s - kk + 1, iu = s;
    const double vl = 0, vu = 0, abstol = 0;
    dsyevr_("V", "I", "L", &s, g, &s, &vl, &vu, &il, &iu, &abstol, &m_found, w, z, &s, isuppz, &wq, &lwork, &iwq,
            &liwork, &info);
    lwork = (int)wq + 1, liwork = iwq + 1;
    work = malloc(sizeof(double) * (size_t)lwork), iwork = malloc(sizeof(int) * (size_t)liwork);
    if (!work || !iwork) {
        rc = zl_set_error(ZL_ENOMEM, "out of memory (SVD of a %d x %d update)", out, n);
        goto done;
    }
    dsyevr_("V", "I", "L", &s, g, &s, &vl, &vu, &il, &iu, &abstol, &m_found, w, z, &s, isuppz, work, &lwork, iwork,
            &liwork, &info);
    if (info || m_found != kk) {
        rc = zl_set_error(ZL_ENUMERIC, "dsyevr failed (info %d, %d of %d eigenpairs)", info, m_found, kk);
        goto done;
    }
    double kept = 0;
    for (int t = 0; t < kk; t++) kept += w[t] > 0 ? w[t] : 0;
    const double tail = total - kept > 0 ? total - kept : 0;
    if (rel_err) *rel_err = total > 0 ? sqrt(tail / total) : 0.0;
    if (norm) *norm = sqrt(total);
    /* z [s, kk] column-major: the eigenvectors, ascending. d read column-major is D^T [n, out].
     * The other side's factor f, column-major, column j for eigenpair j:
     * gram_rows: f [n, kk] = D^T Z (rows of Z^T D); else f [out, kk] = D Z. */
    if (gram_rows)
        cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, kk, out, 1.0, d, n, z, s, 0.0, f, n);
    else
        cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, out, kk, n, 1.0, d, n, z, s, 0.0, f, out);
    const int fl = gram_rows ? n : out;
    for (int t = 0; t < k; t++) {
        const int j = kk - 1 - t; /* largest first */
        const double sig = t < kk && w[j] > 0 ? sqrt(w[j]) : 0;
        for (int o = 0; o < out; o++) {
            double v = 0;
            if (t < kk) v = gram_rows ? z[o + (size_t)s * j] * sig : f[o + (size_t)fl * j];
            new_up[(size_t)o * k + t] = (float)v;
        }
        for (int c = 0; c < n; c++) {
            double v = 0;
            if (t < kk) v = gram_rows ? (sig > 0 ? f[c + (size_t)fl * j] / sig : 0) : z[c + (size_t)s * j];
            new_down[(size_t)t * n + c] = (float)v;
        }
    }
done:
    lapack_threads_restore(nthr);
    free(d), free(g), free(w), free(z), free(f), free(isuppz), free(work), free(iwork);
    return rc;
}

int zl_lora_bake_dora(zl_lora_layer *y, const float *W, int k, double *rel_err, double *norm) {
    if (!y->dora) return zl_set_error(ZL_EINVAL, "layer '%s' has no DoRA magnitude to bake", y->module);
    const int out = y->out_features, n = y->in_features * y->kh * y->kw;
    if (k <= 0) k = y->rank;
    if (k > (out < n ? out : n)) k = out < n ? out : n; /* D's rank cannot exceed that */
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
