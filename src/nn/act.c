/* Pointwise activations: SiLU, exact (erf) GELU, QuickGELU, GEGLU. Forwards
 * may run in place; backwards accumulate into dx. */
#include <math.h>

#include "nn/act_vec.h"
#include "nn/ops.h"

#define PAR_N 32768

static inline float gelu1(float x) { return 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2)); }
/* d/dx gelu = Phi(x) + x phi(x) */
static inline float gelu1_grad(float x) {
    return 0.5f * (1.0f + erff(x * (float)M_SQRT1_2)) + x * expf(-0.5f * x * x) * 0.3989422804014327f;
}

/* 2048 floats (8 KiB): the unit of parallel work for the vector loops. */
#define CHUNK 2048

void zl_silu_fwd(float *y, const float *x, size_t n) {
    #pragma omp parallel for schedule(static) if (n > PAR_N)
    for (size_t c = 0; c < n; c += CHUNK) zl_silu_run(y + c, x + c, n - c < CHUNK ? n - c : CHUNK);
}

void zl_silu_bwd(float *dx, const float *dy, const float *x, size_t n) {
    #pragma omp parallel for schedule(static) if (n > PAR_N)
    for (size_t c = 0; c < n; c += CHUNK) {
        const size_t e = n - c < CHUNK ? n : c + CHUNK;
        size_t i = c;
#if ZL_HAVE_VEC8
        for (; i + 8 <= e; i += 8) {
            const __m256 xv = _mm256_loadu_ps(x + i), s = zl_sigmoid8(xv), one = _mm256_set1_ps(1.0f);
            /* dy * s * (1 + x (1 - s)) */
            const __m256 g = _mm256_mul_ps(s, _mm256_fmadd_ps(xv, _mm256_sub_ps(one, s), one));
            _mm256_storeu_ps(dx + i, _mm256_fmadd_ps(_mm256_loadu_ps(dy + i), g, _mm256_loadu_ps(dx + i)));
        }
#endif
        for (; i < e; i++) {
            const float s = sigmoidf(x[i]);
            dx[i] += dy[i] * s * (1.0f + x[i] * (1.0f - s));
        }
    }
}

void zl_gelu_fwd(float *y, const float *x, size_t n) {
    #pragma omp parallel for schedule(static) if (n > PAR_N)
    for (size_t c = 0; c < n; c += CHUNK) {
        const size_t e = n - c < CHUNK ? n : c + CHUNK;
        size_t i = c;
#if ZL_HAVE_VEC8
        for (; i + 8 <= e; i += 8) {
            const __m256 v = _mm256_loadu_ps(x + i);
            _mm256_storeu_ps(y + i, _mm256_mul_ps(v, zl_phi8(v)));
        }
#endif
        for (; i < e; i++) y[i] = gelu1(x[i]);
    }
}

void zl_gelu_bwd(float *dx, const float *dy, const float *x, size_t n) {
    #pragma omp parallel for schedule(static) if (n > PAR_N)
    for (size_t c = 0; c < n; c += CHUNK) {
        const size_t e = n - c < CHUNK ? n : c + CHUNK;
        size_t i = c;
#if ZL_HAVE_VEC8
        for (; i + 8 <= e; i += 8)
            _mm256_storeu_ps(dx + i, _mm256_fmadd_ps(_mm256_loadu_ps(dy + i), zl_gelu_grad8(_mm256_loadu_ps(x + i)),
                                                     _mm256_loadu_ps(dx + i)));
#endif
        for (; i < e; i++) dx[i] += dy[i] * gelu1_grad(x[i]);
    }
}

void zl_quickgelu_fwd(float *y, const float *x, size_t n) {
    #pragma omp parallel for schedule(static) if (n > PAR_N)
    for (size_t c = 0; c < n; c += CHUNK) {
        const size_t e = n - c < CHUNK ? n : c + CHUNK;
        size_t i = c;
#if ZL_HAVE_VEC8
        for (; i + 8 <= e; i += 8) {
            const __m256 v = _mm256_loadu_ps(x + i);
            _mm256_storeu_ps(y + i, _mm256_mul_ps(v, zl_sigmoid8(_mm256_mul_ps(_mm256_set1_ps(1.702f), v))));
        }
#endif
        for (; i < e; i++) y[i] = x[i] * sigmoidf(1.702f * x[i]);
    }
}

void zl_quickgelu_bwd(float *dx, const float *dy, const float *x, size_t n) {
    #pragma omp parallel for schedule(static) if (n > PAR_N)
    for (size_t i = 0; i < n; i++) {
        const float s = sigmoidf(1.702f * x[i]);
        dx[i] += dy[i] * (s + 1.702f * x[i] * s * (1.0f - s));
    }
}

void zl_geglu_fwd(float *y, const float *x, int N, int D) {
    #pragma omp parallel for schedule(static) if ((size_t)N * D > PAR_N)
    for (int n = 0; n < N; n++) {
        const float *v = x + (size_t)n * 2 * D, *gate = v + D;
        float *o = y + (size_t)n * D;
        int j = 0;
#if ZL_HAVE_VEC8
        for (; j + 8 <= D; j += 8) {
            const __m256 gv = _mm256_loadu_ps(gate + j);
            _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_loadu_ps(v + j), _mm256_mul_ps(gv, zl_phi8(gv))));
        }
#endif
        for (; j < D; j++) o[j] = v[j] * gelu1(gate[j]);
    }
}

void zl_geglu_bwd(float *dx, const float *dy, const float *x, int N, int D) {
    #pragma omp parallel for schedule(static) if ((size_t)N * D > PAR_N)
    for (int n = 0; n < N; n++) {
        const float *v = x + (size_t)n * 2 * D, *gate = v + D, *d = dy + (size_t)n * D;
        float *dv = dx + (size_t)n * 2 * D, *dgate = dv + D;
        int j = 0;
#if ZL_HAVE_VEC8
        for (; j + 8 <= D; j += 8) {
            const __m256 gv = _mm256_loadu_ps(gate + j), dd = _mm256_loadu_ps(d + j);
            _mm256_storeu_ps(dv + j, _mm256_fmadd_ps(dd, _mm256_mul_ps(gv, zl_phi8(gv)), _mm256_loadu_ps(dv + j)));
            _mm256_storeu_ps(dgate + j, _mm256_fmadd_ps(_mm256_mul_ps(dd, _mm256_loadu_ps(v + j)), zl_gelu_grad8(gv),
                                                        _mm256_loadu_ps(dgate + j)));
        }
#endif
        for (; j < D; j++) {
            dv[j] += d[j] * gelu1(gate[j]);
            dgate[j] += d[j] * v[j] * gelu1_grad(gate[j]);
        }
    }
}
