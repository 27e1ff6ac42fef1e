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
