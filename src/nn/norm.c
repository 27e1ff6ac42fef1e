/* GroupNorm and LayerNorm, forward and backward. Statistics are two-pass in
 * double (mean, then centred variance), so large HW does not lose precision.
 * Every reduction is done by one thread in a fixed order, so results do not
 * depend on the thread count. */
#include <math.h>
#include <stdlib.h>

#include "nn/act_vec.h"
#include "nn/ops.h"

/* Sum of n floats (or of their squared deviations from m) in double with
 * eight independent accumulators: a single chain is bound by add latency.
 * The AVX2 path keeps the same eight lanes (two vectors of four doubles) in
 * the same order; it only fuses the square-and-add of the variance. */
static double sum8(const float *x, size_t n, int centred, double m) {
    double a[8] = {0};
    size_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
    const __m256d mv = _mm256_set1_pd(m);
    if (centred)
        for (; i + 8 <= n; i += 8) {
            const __m256 v = _mm256_loadu_ps(x + i);
            const __m256d dl = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), mv);
            const __m256d dh = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), mv);
            lo = _mm256_fmadd_pd(dl, dl, lo);
            hi = _mm256_fmadd_pd(dh, dh, hi);
        }
    else
        for (; i + 8 <= n; i += 8) {
            const __m256 v = _mm256_loadu_ps(x + i);
            lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
            hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
        }
    _mm256_storeu_pd(a, lo);
    _mm256_storeu_pd(a + 4, hi);
#else
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            const double d = centred ? x[i + j] - m : x[i + j];
            a[j] += centred ? d * d : d;
        }
#endif
    for (; i < n; i++) {
        const double d = centred ? x[i] - m : x[i];
        a[0] += centred ? d * d : d;
    }
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/* mean and 1/sqrt(var + eps) of n contiguous values, two-pass in double. */
static void stats(const float *x, size_t n, float eps, double *mean, double *rstd) {
    const double m = sum8(x, n, 0, 0.0) / (double)n;
    *mean = m;
    *rstd = 1.0 / sqrt(sum8(x, n, 1, m) / (double)n + eps);
}

/* Group norm, optionally followed by SiLU on the same pass over the output
 * (the resnet's norm -> SiLU pair reads and writes the activation once). */
static void groupnorm(float *y, float *mean, float *rstd, const float *x, const float *gamma, const float *beta, int B,
                      int C, int HW, int G, float eps, int silu) {
    const int cpg = C / G;
    #pragma omp parallel for schedule(dynamic, 1) if ((size_t)B * C * HW > 65536)
    for (int bg = 0; bg < B * G; bg++) {
        const int b = bg / G, g = bg % G;
        const size_t off = ((size_t)b * C + (size_t)g * cpg) * HW;
        double m, r;
        stats(x + off, (size_t)cpg * HW, eps, &m, &r);
        if (mean) mean[bg] = (float)m;
        if (rstd) rstd[bg] = (float)r;
        for (int cc = 0; cc < cpg; cc++) {
            const int c = g * cpg + cc;
            /* y = x * sc + sh with sc = rstd*gamma, sh = beta - mean*sc */
            const float sc = (float)(r * (gamma ? gamma[c] : 1.0f));
            const float sh = (float)((beta ? beta[c] : 0.0f) - m * r * (gamma ? gamma[c] : 1.0f));
            const float *xr = x + off + (size_t)cc * HW;
            float *yr = y + off + (size_t)cc * HW;
            #pragma omp simd
            for (int i = 0; i < HW; i++) yr[i] = xr[i] * sc + sh;
            if (silu) zl_silu_run(yr, yr, (size_t)HW);
        }
    }
}

void zl_groupnorm_fwd(float *y, float *mean, float *rstd, const float *x, const float *gamma, const float *beta, int B,
                      int C, int HW, int G, float eps) {
    groupnorm(y, mean, rstd, x, gamma, beta, B, C, HW, G, eps, 0);
}

void zl_groupnorm_silu_fwd(float *y, float *mean, float *rstd, const float *x, const float *gamma, const float *beta,
                           int B, int C, int HW, int G, float eps) {
    groupnorm(y, mean, rstd, x, gamma, beta, B, C, HW, G, eps, 1);
}

void zl_groupnorm_bwd(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x, const float *mean,
                      const float *rstd, const float *gamma, int B, int C, int HW, int G) {
    const int cpg = C / G;
    /* Per (b, c): sum dy and sum dy*xhat, reduced over b afterwards in order. */
    double *part = malloc((size_t)2 * B * C * sizeof(double)); // [2, B, C]
    if (!part) {
        if (dx) for (size_t i = 0; i < (size_t)B * C * HW; i++) dx[i] = NAN;
        return;
    }
    double *s1 = part, *s2 = part + (size_t)B * C;
    #pragma omp parallel for schedule(dynamic, 1) if ((size_t)B * C * HW > 65536)
    for (int bg = 0; bg < B * G; bg++) {
        const int b = bg / G, g = bg % G;
        const size_t off = ((size_t)b * C + (size_t)g * cpg) * HW;
        const float m = mean[bg], r = rstd[bg];
        double a = 0, bb = 0;
        for (int cc = 0; cc < cpg; cc++) {
            const int c = g * cpg + cc;
            const float *xr = x + off + (size_t)cc * HW, *dr = dy + off + (size_t)cc * HW;
            double t1 = 0, t2 = 0;
            for (int i = 0; i < HW; i++) {
                t1 += dr[i];
                t2 += (double)dr[i] * ((xr[i] - m) * r);
            }
            s1[(size_t)b * C + c] = t1;
            s2[(size_t)b * C + c] = t2;
            const double gm = gamma ? gamma[c] : 1.0;
            a += gm * t1;
            bb += gm * t2;
        }
        if (!dx) continue;
        const double n = (double)cpg * HW;
        a /= n;
        bb /= n;
        for (int cc = 0; cc < cpg; cc++) {
            const int c = g * cpg + cc;
            const float gm = gamma ? gamma[c] : 1.0f;
            const float *xr = x + off + (size_t)cc * HW, *dr = dy + off + (size_t)cc * HW;
            float *o = dx + off + (size_t)cc * HW;
            const float fa = (float)a, fb = (float)bb;
            for (int i = 0; i < HW; i++) {
                const float xh = (xr[i] - m) * r;
                o[i] += r * (dr[i] * gm - fa - xh * fb);
            }
        }
    }
    for (int c = 0; c < C; c++) {
        double t1 = 0, t2 = 0;
        for (int b = 0; b < B; b++) {
            t1 += s1[(size_t)b * C + c];
            t2 += s2[(size_t)b * C + c];
        }
        if (dbeta) dbeta[c] += (float)t1;
        if (dgamma) dgamma[c] += (float)t2;
    }
    free(part);
}

void zl_layernorm_fwd(float *y, float *mean, float *rstd, const float *x, const float *g, const float *b, int N, int C,
                      float eps) {
    #pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;
        float *yr = y + (size_t)n * C;
        double m, r;
        stats(xr, (size_t)C, eps, &m, &r);
        if (mean) mean[n] = (float)m;
        if (rstd) rstd[n] = (float)r;
        const float fm = (float)m, fr = (float)r;
        #pragma omp simd
        for (int c = 0; c < C; c++) yr[c] = (xr[c] - fm) * fr * (g ? g[c] : 1.0f) + (b ? b[c] : 0.0f);
    }
}

void zl_layernorm_bwd(float *dx, float *dg, float *db, const float *dy, const float *x, const float *mean,
                      const float *rstd, const float *g, int N, int C) {
    if (dx) {
        #pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
        for (int n = 0; n < N; n++) {
            const float *xr = x + (size_t)n * C, *dr = dy + (size_t)n * C;
            const float m = mean[n], r = rstd[n];
            double a = 0, bb = 0;
            for (int c = 0; c < C; c++) {
                const double d = (double)dr[c] * (g ? g[c] : 1.0f);
                a += d;
                bb += d * ((xr[c] - m) * r);
            }
            const float fa = (float)(a / C), fb = (float)(bb / C);
            float *o = dx + (size_t)n * C;
            for (int c = 0; c < C; c++) {
                const float xh = (xr[c] - m) * r;
                o[c] += r * (dr[c] * (g ? g[c] : 1.0f) - fa - xh * fb);
            }
        }
    }
    if (dg || db) {
        /* Column sums: each block of columns is reduced over rows by one thread. */
        #pragma omp parallel for schedule(static) if ((size_t)N * C > 65536)
        for (int c0 = 0; c0 < C; c0 += 64) {
            const int c1 = c0 + 64 < C ? c0 + 64 : C;
            double ag[64] = {0}, ab[64] = {0};
            for (int n = 0; n < N; n++) {
                const float *xr = x + (size_t)n * C, *dr = dy + (size_t)n * C;
                const float m = mean[n], r = rstd[n];
                for (int c = c0; c < c1; c++) {
                    ab[c - c0] += dr[c];
                    ag[c - c0] += (double)dr[c] * ((xr[c] - m) * r);
                }
            }
            for (int c = c0; c < c1; c++) {
                if (dg) dg[c] += (float)ag[c - c0];
                if (db) db[c] += (float)ab[c - c0];
            }
        }
    }
}
