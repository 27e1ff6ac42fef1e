/* Vectorised sigmoid and SiLU for the pointwise ops and the fused group norm
 * (internal to src/nn). AVX2+FMA where the compiler targets it, through the
 * softmax's exp (about 2 ulp); scalar libm elsewhere and for ragged tails. */
#ifndef ZL_NN_ACT_VEC_H
#define ZL_NN_ACT_VEC_H

#include <math.h>
#include <stddef.h>

#include "nn/vexp.h"

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

#if defined(__AVX2__) && defined(__FMA__)
#define ZL_HAVE_VEC8 1
/* 1 / (1 + exp(-x)); exp saturates at 88.4, so large |x| gives 0 or 1, never NaN. */
static inline __m256 zl_sigmoid8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, zl_exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}
#else
#define ZL_HAVE_VEC8 0
#endif

#if ZL_HAVE_VEC8
/* erfc(z) for z >= 0 by the Chebyshev fit of Numerical Recipes (erfcc):
 * relative error below 1.2e-7, so exact GELU keeps float accuracy. */
static inline __m256 zl_erfc_pos8(__m256 z) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.5f), z, one));
    __m256 p = _mm256_set1_ps(0.17087277f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.82215223f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.48851587f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.13520398f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.27886807f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.18628806f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.09678418f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.37409196f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.00002368f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.26551223f));
    return _mm256_mul_ps(t, zl_exp8(_mm256_fnmadd_ps(z, z, p)));
}

/* Phi(x) = 0.5 (1 + erf(x / sqrt 2)), from erfc of |x| / sqrt 2 so that the
 * negative tail keeps its relative accuracy. */
static inline __m256 zl_phi8(__m256 x) {
    const __m256 half = _mm256_set1_ps(0.5f);
    const __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    const __m256 e = _mm256_mul_ps(half, zl_erfc_pos8(_mm256_mul_ps(ax, _mm256_set1_ps(0.70710678118654752f))));
    return _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), e), e, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
}

/* d/dx gelu = Phi(x) + x phi(x) */
static inline __m256 zl_gelu_grad8(__m256 x) {
    const __m256 pdf = _mm256_mul_ps(_mm256_set1_ps(0.3989422804014327f),
                                     zl_exp8(_mm256_mul_ps(_mm256_set1_ps(-0.5f), _mm256_mul_ps(x, x))));
    return _mm256_fmadd_ps(x, pdf, zl_phi8(x));
}
#endif

/* y[i] = x[i] * sigmoid(x[i]); y may equal x. */
static inline void zl_silu_run(float *y, const float *x, size_t n) {
    size_t i = 0;
#if ZL_HAVE_VEC8
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(v, zl_sigmoid8(v)));
    }
#endif
    for (; i < n; i++) y[i] = x[i] * sigmoidf(x[i]);
}

#endif
