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

void zl_sched_config_default(zl_sched_config *c) {
    memset(c, 0, sizeof *c);
    c->n_train = 1000;
    c->beta_start = 0.00085f;
    c->beta_end = 0.012f;
    c->steps_offset = 1;
    c->spacing = ZL_SPACING_LEADING;
    c->prediction = ZL_PRED_EPSILON;
    c->sampler = -1;
}

int zl_prediction_from_name(const char *name) {
    if (!name) return -1;
    if (!strcmp(name, "epsilon") || !strcmp(name, "eps")) return ZL_PRED_EPSILON;
    if (!strcmp(name, "v_prediction") || !strcmp(name, "v") || !strcmp(name, "v-prediction") || !strcmp(name, "v_pred"))
        return ZL_PRED_V;
    return -1;
}

const char *zl_prediction_name(zl_prediction p) { return p == ZL_PRED_V ? "v_prediction" : "epsilon"; }

int zl_spacing_from_name(const char *name) {
    if (!name) return -1;
    if (!strcmp(name, "leading")) return ZL_SPACING_LEADING;
    if (!strcmp(name, "trailing")) return ZL_SPACING_TRAILING;
    if (!strcmp(name, "linspace")) return ZL_SPACING_LINSPACE;
    return -1;
}

const char *zl_spacing_name(zl_spacing s) {
    return s == ZL_SPACING_TRAILING ? "trailing" : s == ZL_SPACING_LINSPACE ? "linspace" : "leading";
}

int zl_sched_override_apply(zl_sched_config *c, const zl_sched_override *o) {
    if (!o) return ZL_OK;
    if (o->prediction) {
        int v = zl_prediction_from_name(o->prediction);
        if (v < 0) return zl_set_error(ZL_EINVAL, "--prediction '%s': expected epsilon or v_prediction", o->prediction);
        c->prediction = (zl_prediction)v;
    }
    if (o->zero_snr) {
        c->zero_snr = o->zero_snr > 0;
        if (c->zero_snr && !o->spacing) c->spacing = ZL_SPACING_TRAILING;
    }
    if (o->spacing) {
        int v = zl_spacing_from_name(o->spacing);
        if (v < 0) return zl_set_error(ZL_EINVAL, "--spacing '%s': expected leading, trailing or linspace", o->spacing);
        c->spacing = (zl_spacing)v;
    }
    return ZL_OK;
}

int zl_schedule_from_config(zl_schedule *s, const zl_sched_config *c) {
    zl_sched_config d;
    if (!c) {
        zl_sched_config_default(&d);
        c = &d;
    }
    if (c->spacing != ZL_SPACING_LEADING && c->spacing != ZL_SPACING_TRAILING && c->spacing != ZL_SPACING_LINSPACE)
        return zl_set_error(ZL_EINVAL, "schedule: unknown timestep spacing %d", (int)c->spacing);
    if (c->prediction != ZL_PRED_EPSILON && c->prediction != ZL_PRED_V)
        return zl_set_error(ZL_EINVAL, "schedule: unknown prediction type %d", (int)c->prediction);
    int rc = zl_schedule_init(s, c->n_train, c->beta_start, c->beta_end, c->steps_offset);
    if (rc) return rc;
    s->spacing = c->spacing;
    s->prediction = c->prediction;
    s->alpha_to_one = c->alpha_to_one;
    if (!c->zero_snr) return ZL_OK;
    /* rescale_zero_terminal_snr on the float32 betas, then the scheduler's own
     * cumprod of 1 - beta over them (float32 values, accumulated in double as
     * in zl_schedule_init), then alphas_cumprod[-1] = 2^-24 */
    const int N = s->n_train;
    float sq[ZL_MAX_TRAIN_STEPS], beta[ZL_MAX_TRAIN_STEPS];
    for (int i = 0; i < N; i++) sq[i] = sqrtf(s->alphas_cumprod[i]);
    const float a0 = sq[0], aT = sq[N - 1];
    for (int i = 0; i < N; i++) {
        sq[i] -= aT;
        sq[i] *= a0 / (a0 - aT);
        sq[i] = sq[i] * sq[i]; /* alphas_bar */
    }
    beta[0] = 1.0f - sq[0];
    for (int i = 1; i < N; i++) beta[i] = 1.0f - sq[i] / sq[i - 1];
    double cum = 1.0;
    for (int i = 0; i < N; i++) {
        cum *= (double)(1.0f - beta[i]);
        s->alphas_cumprod[i] = (float)cum;
    }
    s->alphas_cumprod[N - 1] = 0x1p-24f;
    for (int i = 0; i < N; i++) {
        float ac = s->alphas_cumprod[i];
        s->train_sigmas[i] = sqrtf((1.0f - ac) / ac);
    }
    s->zero_snr = 1;
    return ZL_OK;
}

void zl_v_to_eps(float sigma, const float *x, const float *v, float *out, size_t n) {
    const double s2 = (double)sigma * sigma + 1.0;
    const float a = (float)(sigma / s2), b = (float)(1.0 / sqrt(s2));
    for (size_t i = 0; i < n; i++) out[i] = a * x[i] + b * v[i];
}

int zl_schedule_add_noise(const zl_schedule *s, int t, const float *x0, const float *noise, float *out, size_t n) {
    if (t < 0 || t >= s->n_train) return zl_set_error(ZL_EINVAL, "add_noise: timestep %d outside [0, %d)", t, s->n_train);
    float ac = s->alphas_cumprod[t];
    float sa = sqrtf(ac), sb = sqrtf(1.0f - ac);
    for (size_t i = 0; i < n; i++) out[i] = sa * x0[i] + sb * noise[i];
    return ZL_OK;
}
