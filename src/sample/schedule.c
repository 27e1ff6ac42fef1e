/* The training noise schedule (diffusers' scaled_linear betas) and DDPM
 * add_noise. Arithmetic follows torch's float32 behaviour where it matters:
 * linspace is evaluated in float32 from both ends, betas are squared in
 * float32, and cumprod accumulates in double (torch's CPU accumulate type)
 * while storing float32. */
#include <math.h>
#include <string.h>

#include "ziplora/sample.h"

int zl_schedule_init(zl_schedule *s, int n_train, float beta_start, float beta_end, int steps_offset) {
    if (n_train < 2 || n_train > ZL_MAX_TRAIN_STEPS)
        return zl_set_error(ZL_EINVAL, "schedule: num_train_timesteps %d outside [2, %d]", n_train, ZL_MAX_TRAIN_STEPS);
    if (!(beta_start > 0 && beta_end > 0 && beta_start < 1 && beta_end < 1))
        return zl_set_error(ZL_EINVAL, "schedule: betas must lie in (0, 1), got %g..%g", beta_start, beta_end);
    memset(s, 0, sizeof *s);
    s->n_train = n_train;
    s->beta_start = beta_start;
    s->beta_end = beta_end;
    s->steps_offset = steps_offset;
    float a = (float)sqrt((double)beta_start), b = (float)sqrt((double)beta_end);
    float step = (b - a) / (float)(n_train - 1);
    int half = n_train / 2;
    double cum = 1.0;
    for (int i = 0; i < n_train; i++) {
        /* torch.linspace: the first half counts up from start, the rest down from end */
        float v = i < half ? a + step * (float)i : b - step * (float)(n_train - 1 - i);
        float beta = v * v;
        float alpha = 1.0f - beta;
        cum *= (double)alpha;
        s->alphas_cumprod[i] = (float)cum;
        float ac = s->alphas_cumprod[i];
        s->train_sigmas[i] = sqrtf((1.0f - ac) / ac);
    }
    return ZL_OK;
}

void zl_schedule_default(zl_schedule *s) {
    zl_schedule_init(s, 1000, 0.00085f, 0.012f, 1);
}

int zl_schedule_add_noise(const zl_schedule *s, int t, const float *x0, const float *noise, float *out, size_t n) {
    if (t < 0 || t >= s->n_train) return zl_set_error(ZL_EINVAL, "add_noise: timestep %d outside [0, %d)", t, s->n_train);
    float ac = s->alphas_cumprod[t];
    float sa = sqrtf(ac), sb = sqrtf(1.0f - ac);
    for (size_t i = 0; i < n; i++) out[i] = sa * x0[i] + sb * noise[i];
    return ZL_OK;
}
