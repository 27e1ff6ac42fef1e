/* Samplers over the sigma grid of a zl_schedule: Euler (diffusers'
 * EulerDiscreteScheduler), Euler ancestral (EulerAncestralDiscreteScheduler)
 * and DPM++ 2M (DPMSolverMultistepScheduler, dpmsolver++ / midpoint / order 2 /
 * lower_order_final / final_sigmas_type "zero").
 *
 * All three keep the latent in the sigma space of Euler (x = x0 + sigma * eps),
 * so a pipeline drives them the same way. DPM-Solver++ is written in the
 * variance preserving space in diffusers; dividing its update by alpha_t gives
 * exactly the form used here, with lambda = -log(sigma). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ziplora/sample.h"

int zl_sampler_from_name(const char *name) {
    if (!name) return -1;
    /* "<sampler>_karras" / "<sampler> Karras" (A1111's older names): the sampler; the schedule
     * is read by zl_sampler_name_karras */
    size_t n = strlen(name);
    if (n > 7 && (!strcasecmp(name + n - 7, "_karras") || !strcasecmp(name + n - 7, " karras"))) {
        char base[64];
        if (n - 7 >= sizeof base) return -1;
        memcpy(base, name, n - 7);
        base[n - 7] = 0;
        return zl_sampler_from_name(base);
    }
    if (!strcasecmp(name, "euler")) return ZL_SAMPLER_EULER;
    if (!strcasecmp(name, "euler_a") || !strcasecmp(name, "euler a") || !strcasecmp(name, "euler_ancestral"))
        return ZL_SAMPLER_EULER_A;
    if (!strcasecmp(name, "dpmpp_2m") || !strcasecmp(name, "dpm++ 2m") || !strcasecmp(name, "dpm++2m"))
        return ZL_SAMPLER_DPMPP_2M;
    if (!strcasecmp(name, "dpmpp_2m_sde") || !strcasecmp(name, "dpm++ 2m sde") || !strcasecmp(name, "dpm++2m sde"))
        return ZL_SAMPLER_DPMPP_2M_SDE;
    if (!strcasecmp(name, "lcm")) return ZL_SAMPLER_LCM;
    if (!strcasecmp(name, "ddim")) return ZL_SAMPLER_DDIM;
    return -1;
}

int zl_sampler_name_karras(const char *name) {
    size_t n = name ? strlen(name) : 0;
    return n > 7 && (!strcasecmp(name + n - 7, "_karras") || !strcasecmp(name + n - 7, " karras"));
}

const char *zl_sampler_name(zl_sampler_kind k) {
    switch (k) {
    case ZL_SAMPLER_EULER: return "Euler";
    case ZL_SAMPLER_EULER_A: return "Euler a";
    case ZL_SAMPLER_DPMPP_2M: return "DPM++ 2M";
    case ZL_SAMPLER_DPMPP_2M_SDE: return "DPM++ 2M SDE";
    case ZL_SAMPLER_LCM: return "LCM";
    case ZL_SAMPLER_DDIM: return "DDIM";
    }
    return "?";
}

/* np.interp(t, arange(n), sigmas): linear between integer points, clamped at the ends. */
static double interp_sigma(const zl_schedule *sch, double t) {
    if (t <= 0) return sch->train_sigmas[0];
    if (t >= sch->n_train - 1) return sch->train_sigmas[sch->n_train - 1];
    int i = (int)floor(t);
    double f = t - i;
    return (1.0 - f) * sch->train_sigmas[i] + f * sch->train_sigmas[i + 1];
}

void zl_sampler_free(zl_sampler *s) {
    if (!s) return;
    free(s->timesteps);
    free(s->sigmas);
    free(s->prev_x0);
    memset(s, 0, sizeof *s);
}

double zl_sigma_to_t(const zl_schedule *sch, double sigma) {
    const int N = sch->n_train;
    double ls = log(sigma > 1e-10 ? sigma : 1e-10);
    /* the last index whose log sigma is <= ls (0 if none), at most N - 2 */
    int lo = 0;
    for (int i = 0; i < N; i++)
        if ((double)logf(sch->train_sigmas[i]) <= ls) lo = i;
    if (lo > N - 2) lo = N - 2;
    double a = logf(sch->train_sigmas[lo]), b = logf(sch->train_sigmas[lo + 1]);
    double w = (a - ls) / (a - b);
    w = w < 0 ? 0 : w > 1 ? 1 : w;
    return (1 - w) * lo + w * (lo + 1);
}

static int lcm_init(zl_sampler *s, const zl_schedule *sch, int n_steps, uint64_t seed);

/* The sampler's kind, step count and (allocated) timesteps [n] and sigmas [n + 1]. */
static int grid_alloc(zl_sampler *s, zl_sampler_kind kind, int n_steps) {
    s->kind = kind;
    s->n_steps = n_steps;
    s->timesteps = malloc(sizeof(float) * (size_t)n_steps);
    s->sigmas = malloc(sizeof(float) * (size_t)(n_steps + 1));
    if (s->timesteps && s->sigmas) return ZL_OK;
    zl_sampler_free(s);
    return zl_set_error(ZL_ENOMEM, "sampler: out of memory");
}

int zl_sampler_init(zl_sampler *s, const zl_schedule *sch, zl_sampler_kind kind, int n_steps, uint64_t seed) {
    return zl_sampler_init_ex(s, sch, kind, ZL_SIGMAS_DEFAULT, n_steps, seed);
}

int zl_sampler_init_ex(zl_sampler *s, const zl_schedule *sch, zl_sampler_kind kind, zl_sigma_schedule sigmas,
                       int n_steps, uint64_t seed) {
    memset(s, 0, sizeof *s);
    if (sigmas != ZL_SIGMAS_DEFAULT && sigmas != ZL_SIGMAS_KARRAS)
        return zl_set_error(ZL_EINVAL, "sampler: unknown sigma schedule %d", (int)sigmas);
    if (sigmas == ZL_SIGMAS_KARRAS && kind == ZL_SAMPLER_EULER_A)
        return zl_set_error(ZL_EUNSUPPORTED, "sampler: Euler a has no Karras schedule (diffusers' EulerAncestral has none); "
                                             "use euler or dpmpp_2m with it");
    if (sigmas == ZL_SIGMAS_KARRAS && kind == ZL_SAMPLER_LCM)
        return zl_set_error(ZL_EUNSUPPORTED, "sampler: LCM has no Karras schedule (its timesteps are the distillation "
                                             "grid's)");
    if (kind != ZL_SAMPLER_EULER && kind != ZL_SAMPLER_EULER_A && kind != ZL_SAMPLER_DPMPP_2M &&
        kind != ZL_SAMPLER_DPMPP_2M_SDE && kind != ZL_SAMPLER_LCM && kind != ZL_SAMPLER_DDIM)
        return zl_set_error(ZL_EINVAL, "sampler: unknown kind %d", (int)kind);
    if (kind == ZL_SAMPLER_DDIM && (sigmas != ZL_SIGMAS_DEFAULT || sch->spacing != ZL_SPACING_LEADING))
        return zl_set_error(ZL_EUNSUPPORTED, "sampler: DDIM runs with leading timestep spacing and no Karras sigmas only "
                                             "(this model's schedule is %s%s)", zl_spacing_name(sch->spacing),
                            sigmas != ZL_SIGMAS_DEFAULT ? ", Karras" : "");
    if (kind == ZL_SAMPLER_LCM) return lcm_init(s, sch, n_steps, seed);
    if (n_steps < 1 || n_steps > sch->n_train)
        return zl_set_error(ZL_EINVAL, "sampler: --steps %d outside [1, %d]", n_steps, sch->n_train);
    /* "leading" spacing. Euler-family: ratio = N_train // steps, t_k = k*ratio.
     * DPM-Solver: ratio = N_train // (steps + 1) over steps + 1 points, dropping t = 0. */
    const int N = sch->n_train, dpm = kind == ZL_SAMPLER_DPMPP_2M || kind == ZL_SAMPLER_DPMPP_2M_SDE;
    int ratio = dpm ? N / (n_steps + 1) : N / n_steps;
    if (sch->spacing == ZL_SPACING_LEADING && ratio < 1)
        return zl_set_error(ZL_EINVAL, "sampler: --steps %d too large for %d training steps", n_steps, sch->n_train);
    if (sch->spacing != ZL_SPACING_LEADING && sch->spacing != ZL_SPACING_TRAILING && sch->spacing != ZL_SPACING_LINSPACE)
        return zl_set_error(ZL_EINVAL, "sampler: unknown timestep spacing %d", (int)sch->spacing);
    if (grid_alloc(s, kind, n_steps)) return ZL_ENOMEM;
    float smax = 0;
    for (int k = 0; k < n_steps; k++) {
        double t;
        if (sch->spacing == ZL_SPACING_TRAILING) {
            /* round(arange(N, 0, -N / steps)) - 1, for both families */
            double r = (double)N / n_steps;
            t = nearbyint((double)N - k * r) - 1;
        } else if (sch->spacing == ZL_SPACING_LINSPACE) {
            /* Euler: linspace(0, N - 1, steps) reversed, fractional;
             * DPM-Solver: linspace(0, N - 1, steps + 1) rounded, reversed, the last (0) dropped */
            int m = dpm ? n_steps + 1 : n_steps, j = m - 1 - k;
            t = m > 1 ? (double)(N - 1) * j / (m - 1) : 0;
            if (dpm) t = nearbyint(t);
        } else {
            int j = dpm ? n_steps - k : n_steps - 1 - k;
            t = (double)j * ratio + sch->steps_offset;
        }
        s->timesteps[k] = (float)t;
        s->sigmas[k] = (float)interp_sigma(sch, t);
        if (s->sigmas[k] > smax) smax = s->sigmas[k];
    }
    s->sigmas[n_steps] = 0.0f;
    if (sigmas == ZL_SIGMAS_KARRAS) {
        /* ends: Euler's own grid (its first and last sigma); DPM-Solver: the whole training range */
        double hi = dpm ? sch->train_sigmas[sch->n_train - 1] : s->sigmas[0];
        double lo = dpm ? sch->train_sigmas[0] : s->sigmas[n_steps - 1];
        double a = pow(hi, 1.0 / 7), b = pow(lo, 1.0 / 7);
        smax = 0;
        for (int k = 0; k < n_steps; k++) {
            double ramp = n_steps > 1 ? (double)k / (n_steps - 1) : 0;
            double sg = pow(a + ramp * (b - a), 7);
            double t = zl_sigma_to_t(sch, sg);
            s->sigmas[k] = (float)sg;
            s->timesteps[k] = (float)(dpm ? nearbyint(t) : t);
            if (s->sigmas[k] > smax) smax = s->sigmas[k];
        }
    }
    /* DDIM: the step after the last goes to alphas_cumprod[0] (or alpha 1) */
    if (kind == ZL_SAMPLER_DDIM) s->sigmas[n_steps] = sch->alpha_to_one ? 0.0f : sch->train_sigmas[0];
    s->sigma_schedule = sigmas;
    /* diffusers' Euler schedulers: the max sigma itself for linspace/trailing */
    s->init_noise_sigma = !dpm && sch->spacing != ZL_SPACING_LEADING ? smax : sqrtf(smax * smax + 1.0f);
    zl_rng_init(&s->rng, seed, 0);
    return ZL_OK;
}

/* LCMScheduler.set_timesteps with original_inference_steps 50 (strength 1). */
static int lcm_init(zl_sampler *s, const zl_schedule *sch, int n_steps, uint64_t seed) {
    const int orig = 50, kk = sch->n_train / orig;
    if (kk < 1) return zl_set_error(ZL_EINVAL, "sampler: LCM needs at least %d training steps", orig);
    if (n_steps < 1 || n_steps > orig)
        return zl_set_error(ZL_EINVAL, "sampler: LCM takes 1 to %d steps (its distillation grid's), not %d", orig, n_steps);
    if (grid_alloc(s, ZL_SAMPLER_LCM, n_steps)) return ZL_ENOMEM;
    for (int k = 0; k < n_steps; k++) {
        /* reversed grid [orig kk - 1, ..., kk - 1] at floor(k * orig / steps) (numpy linspace, endpoint=False) */
        int idx = (int)floor((double)k * ((double)orig / n_steps)); /* as numpy: arange * (delta / num) */
        int t = (orig - idx) * kk - 1;
        s->timesteps[k] = (float)t;
        s->sigmas[k] = sch->train_sigmas[t];
    }
    s->sigmas[n_steps] = 0.0f;
    s->sigma_schedule = ZL_SIGMAS_DEFAULT;
    s->init_noise_sigma = sqrtf(s->sigmas[0] * s->sigmas[0] + 1.0f);
    zl_rng_init(&s->rng, seed, 0);
    return ZL_OK;
}

/* One LCMScheduler step in sigma space (see sample.h). */
static int lcm_step(zl_sampler *s, int k, float *x, const float *eps, size_t n) {
    const double sg = s->sigmas[k], sn = s->sigmas[k + 1], st = (double)s->timesteps[k] * 10.0; /* timestep_scaling */
    const double c_skip = 0.25 / (st * st + 0.25), c_out = st / sqrt(st * st + 0.25), vp = 1.0 / sqrt(sg * sg + 1.0);
    const int last = k == s->n_steps - 1;
    float *z = NULL;
    if (!last) {
        z = malloc(sizeof(float) * n);
        if (!z) return zl_set_error(ZL_ENOMEM, "sampler: out of memory for %zu noise values", n);
        zl_rng r;
        zl_rng_init(&r, s->rng.seed, 1000 + (uint64_t)k);
        zl_rng_normal(&r, 0, z, n);
    }
    for (size_t i = 0; i < n; i++) {
        double d = c_out * ((double)x[i] - sg * eps[i]) + c_skip * vp * x[i];
        x[i] = (float)(last ? d : d + sn * z[i]);
    }
    free(z);
    return ZL_OK;
}

float zl_sampler_input_scale(const zl_sampler *s, int k) {
    float sg = s->sigmas[k];
    return 1.0f / sqrtf(sg * sg + 1.0f);
}

static void euler(float *x, const float *eps, size_t n, float sigma, float sigma_next) {
    float dt = sigma_next - sigma;
    for (size_t i = 0; i < n; i++) {
        float x0 = x[i] - sigma * eps[i];
        float d = (x[i] - x0) / sigma;
        x[i] = x[i] + d * dt;
    }
}

static int euler_ancestral(zl_sampler *s, int k, float *x, const float *eps, size_t n) {
    float sf = s->sigmas[k], st = s->sigmas[k + 1];
    float up = sqrtf(st * st * (sf * sf - st * st) / (sf * sf));
    float down = sqrtf(st * st - up * up);
    euler(x, eps, n, sf, down);
    if (up > 0) {
        float *z = malloc(sizeof(float) * n);
        if (!z) return zl_set_error(ZL_ENOMEM, "sampler: out of memory for %zu noise values", n);
        zl_rng r;
        zl_rng_init(&r, s->rng.seed, 1000 + (uint64_t)k);
        zl_rng_normal(&r, 0, z, n);
        for (size_t i = 0; i < n; i++) x[i] += z[i] * up;
        free(z);
    }
    return ZL_OK;
}

/* sde: DPMSolverMultistepScheduler's sde-dpmsolver++ (midpoint). In diffusers' variance
 * preserving form x_t = (s_t/s_s) e^-h x_s + a_t (1 - e^-2h) D + s_t sqrt(1 - e^-2h) z; divided
 * by a_t, with e^-h = r = sigma_t / sigma_s in sigma space: x_t = r^2 x_s + (1 - r^2) D +
 * sigma_t sqrt(1 - r^2) z, z from RNG stream 1000 + k (as Euler a). */
static int dpmpp_2m(zl_sampler *s, int k, float *x, const float *eps, size_t n, int sde) {
    if (!s->prev_x0) {
        s->prev_x0 = malloc(sizeof(float) * n);
        if (!s->prev_x0) return zl_set_error(ZL_ENOMEM, "sampler: out of memory for %zu values", n);
        s->n = n;
    } else if (s->n != n) {
        return zl_set_error(ZL_EINVAL, "sampler: step %d has %zu values, earlier steps had %zu", k, n, s->n);
    }
    double ss = s->sigmas[k], st = s->sigmas[k + 1];
    /* first order on the first step (no history) and on the last (sigma -> 0) */
    int second = s->n_lower >= 1 && k != s->n_steps - 1 && st > 0;
    if (st == 0) {
        for (size_t i = 0; i < n; i++) {
            float m0 = x[i] - (float)ss * eps[i];
            s->prev_x0[i] = m0;
            x[i] = m0;
        }
    } else {
        double h = log(ss) - log(st); /* lambda_t - lambda_s with lambda = -log(sigma) */
        double ratio = st / ss, em1 = expm1(-h);
        double r0 = 0;
        if (second) {
            double sp = s->sigmas[k - 1];
            r0 = (log(sp) - log(ss)) / h;
        }
        float *z = NULL;
        if (sde) {
            z = malloc(sizeof(float) * n);
            if (!z) return zl_set_error(ZL_ENOMEM, "sampler: out of memory for %zu noise values", n);
            zl_rng r;
            zl_rng_init(&r, s->rng.seed, 1000 + (uint64_t)k);
            zl_rng_normal(&r, 0, z, n);
        }
        const double r2 = ratio * ratio, nz = st * sqrt(-expm1(-2 * h)); /* 1 - r^2 = -expm1(-2h) */
        for (size_t i = 0; i < n; i++) {
            double m0 = (double)x[i] - ss * eps[i];
            double d = m0;
            if (second) d = m0 + 0.5 * (m0 - s->prev_x0[i]) / r0;
            if (sde) x[i] = (float)(r2 * x[i] - expm1(-2 * h) * d + nz * z[i]);
            else x[i] = (float)(ratio * x[i] - em1 * d);
            s->prev_x0[i] = (float)m0;
        }
        free(z);
    }
    s->n_lower++;
    return ZL_OK;
}

int zl_sampler_step(zl_sampler *s, int k, float *x, const float *eps, size_t n) {
    if (k < 0 || k >= s->n_steps) return zl_set_error(ZL_EINVAL, "sampler: step %d outside [0, %d)", k, s->n_steps);
    switch (s->kind) {
    case ZL_SAMPLER_EULER: euler(x, eps, n, s->sigmas[k], s->sigmas[k + 1]); return ZL_OK;
    case ZL_SAMPLER_EULER_A: return euler_ancestral(s, k, x, eps, n);
    case ZL_SAMPLER_DPMPP_2M: return dpmpp_2m(s, k, x, eps, n, 0);
    case ZL_SAMPLER_DPMPP_2M_SDE: return dpmpp_2m(s, k, x, eps, n, 1);
    case ZL_SAMPLER_LCM: return lcm_step(s, k, x, eps, n);
    case ZL_SAMPLER_DDIM: euler(x, eps, n, s->sigmas[k], s->sigmas[k + 1]); return ZL_OK;
    }
    return zl_set_error(ZL_EINVAL, "sampler: unknown kind");
}
