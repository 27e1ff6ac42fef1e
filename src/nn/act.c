/* Pointwise activations: SiLU, exact (erf) GELU, QuickGELU, GEGLU. Forwards
 * may run in place; backwards accumulate into dx. */
#include <math.h>

#include "nn/ops.h"

#define PAR_N 32768

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline float gelu1(float x) { return 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2)); }
/* d/dx gelu = Phi(x) + x phi(x) */
static inline float gelu1_grad(float x) {
    return 0.5f * (1.0f + erff(x * (float)M_SQRT1_2)) + x * expf(-0.5f * x * x) * 0.3989422804014327f;
}

void zl_silu_fwd(float *y, const float *x, size_t n) {
    #pragma omp parallel for schedule(static) if (n > PAR_N)
    for (size_t i = 0; i < n; i++) y[i] = x[i] * sigmoidf(x[i]);
}

void zl_silu_bwd(float *dx, const float *dy, const float *x, size_t n) {
    #pragma omp parallel for schedule(static) if (n > PAR_N)
    for (size_t i = 0; i < n; i++) {
        const float s = sigmoidf(x[i]);
        dx[i] += dy[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}

void zl_gelu_fwd(float *y, const float *x, size_t n) {
    #pragma omp parallel for schedule(static) if (n > PAR_N)
    for (size_t i = 0; i < n; i++) y[i] = gelu1(x[i]);
}

void zl_gelu_bwd(float *dx, const float *dy, const float *x, size_t n) {
    #pragma omp parallel for schedule(static) if (n > PAR_N)
    for (size_t i = 0; i < n; i++) dx[i] += dy[i] * gelu1_grad(x[i]);
}

void zl_quickgelu_fwd(float *y, const float *x, size_t n) {
    #pragma omp parallel for schedule(static) if (n > PAR_N)
    for (size_t i = 0; i < n; i++) y[i] = x[i] * sigmoidf(1.702f * x[i]);
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
        for (int j = 0; j < D; j++) o[j] = v[j] * gelu1(gate[j]);
    }
}

void zl_geglu_bwd(float *dx, const float *dy, const float *x, int N, int D) {
    #pragma omp parallel for schedule(static) if ((size_t)N * D > PAR_N)
    for (int n = 0; n < N; n++) {
        const float *v = x + (size_t)n * 2 * D, *gate = v + D, *d = dy + (size_t)n * D;
        float *dv = dx + (size_t)n * 2 * D, *dgate = dv + D;
        for (int j = 0; j < D; j++) {
            dv[j] += d[j] * gelu1(gate[j]);
            dgate[j] += d[j] * v[j] * gelu1_grad(gate[j]);
        }
    }
}
