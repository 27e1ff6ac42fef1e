/* The sinusoidal timestep embedding of diffusers' get_timestep_embedding.
 * The frequencies and arguments are rounded to float32 exactly where torch
 * rounds them, so large timesteps (t ~ 1000) give the same angles. */
#include <math.h>

#include "nn/ops.h"

void zl_timestep_embedding(float *emb, const float *t, int N, int dim, int flip_sin_to_cos, float freq_shift) {
    const int half = dim / 2;
    for (int n = 0; n < N; n++) {
        float *e = emb + (size_t)n * dim;
        for (int i = 0; i < half; i++) {
            /* torch: exponent = -ln(max_period) * arange(half) (float32), / (half - shift), exp, * t */
            const float ex = (-(float)log(10000.0) * (float)i) / ((float)half - freq_shift);
            const float f = (float)exp((double)ex);
            const float arg = t[n] * f;
            const float s = (float)sin((double)arg), c = (float)cos((double)arg);
            e[i] = flip_sin_to_cos ? c : s;
            e[half + i] = flip_sin_to_cos ? s : c;
        }
        if (dim % 2) e[dim - 1] = 0.0f;
    }
}
