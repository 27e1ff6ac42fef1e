/* Schedulers, samplers and the RNG: diffusers' EulerDiscreteScheduler numbers
 * from scheduler_cases.json / sched_io.safetensors; Euler ancestral and DPM++ 2M
 * against formulas re-derived here (DPM++ in diffusers' variance preserving
 * form) and against the closed-form answer for Gaussian data; Philox known
 * answers and thread-count independence of the noise. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"
#include "ziplora/sample.h"

static const char *k_families[] = {"mini-sdxl", "tiny-sd15"};

static void test_scheduler_cases(const char *fam) {
    char rel[256];
    snprintf(rel, sizeof rel, "%s/scheduler_cases.json", fam);
    json_error_t jerr;
    json_t *root = json_load_file(zt_data(rel), 0, &jerr);
    CHECKM(root != NULL, "%s: %s", rel, jerr.text);
    if (!root) return;
    json_t *cfg = json_object_get(root, "config");
    zl_schedule sch;
    CHECK_OK(zl_schedule_init(&sch, (int)json_integer_value(json_object_get(cfg, "num_train_timesteps")),
                              (float)json_real_value(json_object_get(cfg, "beta_start")),
                              (float)json_real_value(json_object_get(cfg, "beta_end")),
                              (int)json_integer_value(json_object_get(cfg, "steps_offset"))));
    CHECK(!strcmp(json_string_value(json_object_get(cfg, "timestep_spacing")), "leading"));
    CHECK(!strcmp(json_string_value(json_object_get(cfg, "beta_schedule")), "scaled_linear"));
    json_t *runs = json_object_get(root, "runs");
    CHECK(json_array_size(runs) == 5);
    size_t i;
    json_t *run;
    json_array_foreach(runs, i, run) {
        int n = (int)json_integer_value(json_object_get(run, "num_inference_steps"));
        zl_sampler s;
        CHECK_OK(zl_sampler_init(&s, &sch, ZL_SAMPLER_EULER, n, 0));
        json_t *ts = json_object_get(run, "timesteps"), *sg = json_object_get(run, "sigmas");
        CHECK((int)json_array_size(ts) == n && (int)json_array_size(sg) == n + 1);
        float *ref_t = malloc(sizeof(float) * n), *ref_s = malloc(sizeof(float) * (n + 1));
        for (int k = 0; k < n; k++) ref_t[k] = (float)json_number_value(json_array_get(ts, k));
        for (int k = 0; k <= n; k++) ref_s[k] = (float)json_number_value(json_array_get(sg, k));
        int same_t = 1;
        for (int k = 0; k < n; k++) same_t &= s.timesteps[k] == ref_t[k];
        CHECKM(same_t, "%s: timesteps for %d steps", fam, n);
        char what[64];
        snprintf(what, sizeof what, "%s sigmas(%d)", fam, n);
        zt_close(what, s.sigmas, ref_s, n + 1, 1e-4);
        CHECK(s.sigmas[n] == 0.0f);
        float ins = (float)json_number_value(json_object_get(run, "init_noise_sigma"));
        CHECKM(fabsf(s.init_noise_sigma - ins) <= 1e-4f * fmaxf(1, ins), "%s init_noise_sigma(%d): %g vs %g", fam, n,
               s.init_noise_sigma, ins);
        free(ref_t);
        free(ref_s);
        zl_sampler_free(&s);
    }
    json_t *loop = json_object_get(root, "euler_loop");
    CHECK(json_integer_value(json_object_get(loop, "num_inference_steps")) == 8);
    /* the stand-in model this test implements below */
    CHECK(!strcmp(json_string_value(json_object_get(loop, "model")), "eps = 0.1 * scale_model_input(x, t) + 0.001 * t"));
    json_decref(root);
}

static void test_sched_io(const char *fam) {
    char rel[256];
    snprintf(rel, sizeof rel, "%s/sched_io.safetensors", fam);
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(zt_data(rel), &f));
    if (!f) return;
    zl_schedule sch;
    zl_schedule_default(&sch);
    int64_t n;
    float *ac = zl_st_load_f32(f, "alphas_cumprod", &n);
    CHECK(ac && n == 1000);
    if (ac) zt_close("alphas_cumprod", sch.alphas_cumprod, ac, 1000, 1e-4);
    free(ac);

    /* add_noise: three samples, each at its own timestep */
    int64_t nx, nn, nt, no;
    float *x0 = zl_st_load_f32(f, "add_noise_x0", &nx), *noise = zl_st_load_f32(f, "add_noise_noise", &nn);
    float *t = zl_st_load_f32(f, "add_noise_t", &nt), *ref = zl_st_load_f32(f, "add_noise_out", &no);
    CHECK(x0 && noise && t && ref && nt == 3 && nx == nn && nx == no);
    if (x0 && noise && t && ref) {
        float *out = malloc(sizeof(float) * nx);
        int64_t per = nx / nt;
        for (int b = 0; b < nt; b++)
            CHECK_OK(zl_schedule_add_noise(&sch, (int)t[b], x0 + b * per, noise + b * per, out + b * per, (size_t)per));
        zt_close("add_noise", out, ref, nx, 1e-4);
        CHECK_ERR(zl_schedule_add_noise(&sch, 1000, x0, noise, out, 1));
        free(out);
    }
    free(x0); free(noise); free(t); free(ref);

    /* the 8-step Euler loop with eps = 0.1 * scale_model_input(x, t) + 0.001 * t */
    int64_t ntr;
    float *traj = zl_st_load_f32(f, "euler_traj", &ntr);
    const zl_st_tensor *tt = zl_st_find(f, "euler_traj");
    CHECK(traj && tt && tt->shape[0] == 9);
    if (traj) {
        int64_t per = ntr / 9;
        zl_sampler s;
        CHECK_OK(zl_sampler_init(&s, &sch, ZL_SAMPLER_EULER, 8, 0));
        float *x = malloc(sizeof(float) * per), *eps = malloc(sizeof(float) * per);
        memcpy(x, traj, sizeof(float) * per);
        for (int k = 0; k < 8; k++) {
            float sc = zl_sampler_input_scale(&s, k);
            for (int64_t i = 0; i < per; i++) eps[i] = 0.1f * (x[i] * sc) + 0.001f * s.timesteps[k];
            CHECK_OK(zl_sampler_step(&s, k, x, eps, (size_t)per));
            char what[64];
            snprintf(what, sizeof what, "%s euler_traj[%d]", fam, k + 1);
            zt_close(what, x, traj + (k + 1) * per, per, 1e-4);
        }
        free(x); free(eps);
        zl_sampler_free(&s);
    }
    free(traj);
    zl_st_close(f);
}

static void test_philox_kat(void) {
    /* Random123 kat_vectors, philox4x32 10 */
    const uint32_t ctr[3][4] = {{0, 0, 0, 0}, {~0u, ~0u, ~0u, ~0u}, {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}};
    const uint32_t key[3][2] = {{0, 0}, {~0u, ~0u}, {0xa4093822, 0x299f31d0}};
    const uint32_t want[3][4] = {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
                                 {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
                                 {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}};
    for (int c = 0; c < 3; c++) {
        uint32_t out[4];
        zl_philox4x32(ctr[c], key[c], out);
        CHECKM(!memcmp(out, want[c], sizeof out), "philox KAT %d: %08x %08x %08x %08x", c, out[0], out[1], out[2], out[3]);
    }
}

static void test_rng(void) {
    const size_t n = 300001; /* above the threading threshold, odd on purpose */
    float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n), *c = malloc(sizeof(float) * n);
    zl_rng r;
    zl_rng_init(&r, 42, 0);
    int saved = zl_get_threads();
    zl_set_threads(1);
    zl_rng_normal(&r, 0, a, n);
    zl_set_threads(2);
    zl_rng_normal(&r, 0, b, n);
    zl_set_threads(saved);
    CHECK(!memcmp(a, b, sizeof(float) * n));
    /* any split of the index range gives the same values */
    zl_rng_normal(&r, 0, c, 1001);
    zl_rng_normal(&r, 1001, c + 1001, n - 1001);
    CHECK(!memcmp(a, c, sizeof(float) * n));
    /* moments of N(0,1): standard errors are 1/sqrt(n) = 0.0018 for the mean, sqrt(2/n) = 0.0026
     * for the variance; allow 5 of them */
    double m = 0, v = 0, m3 = 0;
    for (size_t i = 0; i < n; i++) m += a[i];
    m /= n;
    for (size_t i = 0; i < n; i++) { double d = a[i] - m; v += d * d; m3 += d * d * d; }
    v /= n;
    m3 /= n;
    CHECKM(fabs(m) < 5 * 0.0018, "normal mean %g", m);
    CHECKM(fabs(v - 1) < 5 * 0.0026, "normal variance %g", v);
    CHECKM(fabs(m3) < 5 * sqrt(15.0 / n), "normal third moment %g", m3);
    int finite = 1;
    for (size_t i = 0; i < n; i++) finite &= isfinite(a[i]);
    CHECK(finite);
    /* different seeds and streams differ */
    zl_rng r2;
    zl_rng_init(&r2, 43, 0);
    zl_rng_normal(&r2, 0, b, 64);
    CHECK(memcmp(a, b, sizeof(float) * 64) != 0);
    zl_rng_init(&r2, 42, 1);
    zl_rng_normal(&r2, 0, b, 64);
    CHECK(memcmp(a, b, sizeof(float) * 64) != 0);
    /* uniforms in [0, 1) with mean 1/2 */
    zl_rng_uniform(&r, 0, c, n);
    double um = 0;
    int inrange = 1;
    for (size_t i = 0; i < n; i++) { um += c[i]; inrange &= c[i] >= 0 && c[i] < 1; }
    CHECK(inrange);
    CHECKM(fabs(um / n - 0.5) < 5 * sqrt(1.0 / 12 / n), "uniform mean %g", um / n);
    free(a); free(b); free(c);
}

/* Gaussian data x0 ~ N(mu, s^2): the exact denoiser's epsilon at noise level sigma. */
static double gauss_eps(double x, double sigma, double mu, double s) { return sigma * (x - mu) / (s * s + sigma * sigma); }

/* DPM-Solver++(2M) exactly as diffusers writes it, in the variance preserving
 * space: alpha_t = 1/sqrt(sigma^2+1), sigma_t = sigma * alpha_t,
 * lambda = log alpha_t - log sigma_t; x0 = (x - sigma_t eps) / alpha_t;
 * first order x_t = (sigma_t/sigma_s) x - alpha_t (e^-h - 1) m0;
 * second order adds D1 = (m0 - m1) / r0 with weight -0.5 alpha_t (e^-h - 1).
 * The leading grid is re-derived here: ratio = 1000 // (N+1). */
static void test_dpmpp_vs_vp_formula(void) {
    zl_schedule sch;
    zl_schedule_default(&sch);
    const int N = 20;
    const size_t n = 64;
    zl_sampler s;
    CHECK_OK(zl_sampler_init(&s, &sch, ZL_SAMPLER_DPMPP_2M, N, 0));
    int ratio = 1000 / (N + 1);
    int grid_ok = 1;
    for (int k = 0; k < N; k++) grid_ok &= s.timesteps[k] == (float)((N - k) * ratio + 1);
    CHECK(grid_ok);
    float *noise = malloc(sizeof(float) * n), *x = malloc(sizeof(float) * n), *eps = malloc(sizeof(float) * n);
    double *xv = malloc(sizeof(double) * n), *m_prev = malloc(sizeof(double) * n);
    zl_rng r;
    zl_rng_init(&r, 7, 0);
    zl_rng_normal(&r, 0, noise, n);
    const double mu = 0.3, sd = 0.7;
    for (size_t i = 0; i < n; i++) { x[i] = noise[i] * s.init_noise_sigma; xv[i] = noise[i]; }
    for (int k = 0; k < N; k++) {
        double sg = sch.train_sigmas[(N - k) * ratio + 1];
        double sn = k + 1 < N ? sch.train_sigmas[(N - k - 1) * ratio + 1] : 0.0;
        /* ours, in sigma space */
        float sc = zl_sampler_input_scale(&s, k);
        for (size_t i = 0; i < n; i++) eps[i] = (float)gauss_eps(x[i], s.sigmas[k], mu, sd);
        (void)sc;
        CHECK_OK(zl_sampler_step(&s, k, x, eps, n));
        /* reference, VP space */
        double as = 1 / sqrt(sg * sg + 1), ss = sg * as;
        double at = 1 / sqrt(sn * sn + 1), st = sn * at;
        double ls = log(as) - log(ss);
        for (size_t i = 0; i < n; i++) {
            double e = gauss_eps(xv[i] / as, sg, mu, sd); /* the model sees x_vp = x_ve * alpha */
            double m0 = (xv[i] - ss * e) / as;
            if (sn == 0) {
                xv[i] = m0; /* first order with sigma_t = 0, alpha_t = 1 */
            } else {
                double lt = log(at) - log(st), h = lt - ls;
                double v = (st / ss) * xv[i] - at * (exp(-h) - 1) * m0;
                if (k > 0) {
                    double sp = sch.train_sigmas[(N - k + 1) * ratio + 1];
                    double ap = 1 / sqrt(sp * sp + 1), lp = log(ap) - log(sp * ap);
                    double r0 = (ls - lp) / h;
                    v -= 0.5 * at * (exp(-h) - 1) * (m0 - m_prev[i]) / r0;
                }
                xv[i] = v;
            }
            m_prev[i] = m0;
        }
        /* compare in VP units: x_vp = x_ve * alpha at the new level */
        double maxd = 0, maxr = 0;
        for (size_t i = 0; i < n; i++) {
            double ours = x[i] * at;
            maxd = fmax(maxd, fabs(ours - xv[i]));
            maxr = fmax(maxr, fabs(xv[i]));
        }
        CHECKM(maxd <= 1e-4 * fmax(1, maxr), "dpm++ 2m step %d: max diff %g", k, maxd);
    }
    free(noise); free(x); free(eps); free(xv); free(m_prev);
    zl_sampler_free(&s);
}

/* DPM++ 2M SDE against diffusers' sde-dpmsolver++ midpoint update written in
 * its variance preserving form, x_t = (s_t/s_s) e^-h x_s + a_t (1 - e^-2h)
 * (D0 + D1/2) + s_t sqrt(1 - e^-2h) z, with z from RNG stream 1000 + k. */
static void test_dpmpp_sde_vs_vp_formula(void) {
    zl_schedule sch;
    zl_schedule_default(&sch);
    const int N = 12;
    const size_t n = 64;
    const uint64_t seed = 31;
    zl_sampler s;
    CHECK_OK(zl_sampler_init(&s, &sch, ZL_SAMPLER_DPMPP_2M_SDE, N, seed));
    float *x = malloc(sizeof(float) * n), *eps = malloc(sizeof(float) * n), *z = malloc(sizeof(float) * n);
    double *xv = malloc(sizeof(double) * n), *m_prev = malloc(sizeof(double) * n);
    zl_rng r;
    zl_rng_init(&r, 3, 0);
    zl_rng_normal(&r, 0, z, n);
    const double mu = -0.2, sd = 0.9;
    for (size_t i = 0; i < n; i++) { x[i] = z[i] * s.init_noise_sigma; xv[i] = z[i]; }
    for (int k = 0; k < N; k++) {
        double sg = s.sigmas[k], sn = s.sigmas[k + 1];
        for (size_t i = 0; i < n; i++) eps[i] = (float)gauss_eps(x[i], sg, mu, sd);
        CHECK_OK(zl_sampler_step(&s, k, x, eps, n));
        zl_rng rz;
        zl_rng_init(&rz, seed, 1000 + (uint64_t)k);
        zl_rng_normal(&rz, 0, z, n);
        double as = 1 / sqrt(sg * sg + 1), ss = sg * as;
        double at = 1 / sqrt(sn * sn + 1), st = sn * at;
        for (size_t i = 0; i < n; i++) {
            double e = gauss_eps(xv[i] / as, sg, mu, sd);
            double m0 = (xv[i] - ss * e) / as;
            if (sn == 0) {
                xv[i] = m0;
            } else {
                double h = (log(at) - log(st)) - (log(as) - log(ss));
                double D = m0;
                if (k > 0 && k < N - 1) {
                    double sp = s.sigmas[k - 1], ap = 1 / sqrt(sp * sp + 1);
                    double r0 = ((log(as) - log(ss)) - (log(ap) - log(sp * ap))) / h;
                    D = m0 + 0.5 * (m0 - m_prev[i]) / r0;
                }
                xv[i] = (st / ss) * exp(-h) * xv[i] + at * (1 - exp(-2 * h)) * D + st * sqrt(1 - exp(-2 * h)) * z[i];
            }
            m_prev[i] = m0;
        }
        double maxd = 0, maxr = 0;
        for (size_t i = 0; i < n; i++) {
            maxd = fmax(maxd, fabs(x[i] * at - xv[i]));
            maxr = fmax(maxr, fabs(xv[i]));
        }
        CHECKM(maxd <= 1e-4 * fmax(1, maxr), "dpm++ 2m sde step %d: max diff %g", k, maxd);
    }
    free(x); free(eps); free(z); free(xv); free(m_prev);
    zl_sampler_free(&s);
}

/* Euler ancestral against its formula written out here (diffusers'
 * EulerAncestralDiscreteScheduler.step), with the noise taken from the
 * documented RNG stream 1000 + k. */
static void test_euler_a_formula(void) {
    zl_schedule sch;
    zl_schedule_default(&sch);
    const int N = 10;
    const size_t n = 256;
    zl_sampler s;
    CHECK_OK(zl_sampler_init(&s, &sch, ZL_SAMPLER_EULER_A, N, 1234));
    float *x = malloc(sizeof(float) * n), *eps = malloc(sizeof(float) * n), *z = malloc(sizeof(float) * n);
    double *xr = malloc(sizeof(double) * n);
    zl_rng r;
    zl_rng_init(&r, 1234, 0);
    zl_rng_normal(&r, 0, x, n);
    for (size_t i = 0; i < n; i++) { x[i] *= s.init_noise_sigma; xr[i] = x[i]; }
    int ok = 1;
    for (int k = 0; k < N; k++) {
        double sf = s.sigmas[k], st = s.sigmas[k + 1];
        for (size_t i = 0; i < n; i++) eps[i] = (float)gauss_eps(x[i], sf, 0.0, 1.0);
        CHECK_OK(zl_sampler_step(&s, k, x, eps, n));
        double up = sqrt(st * st * (sf * sf - st * st) / (sf * sf));
        double down = sqrt(st * st - up * up);
        zl_rng rk;
        zl_rng_init(&rk, 1234, 1000 + (uint64_t)k);
        zl_rng_normal(&rk, 0, z, n);
        double maxd = 0, maxr = 0;
        for (size_t i = 0; i < n; i++) {
            double e = gauss_eps(xr[i], sf, 0.0, 1.0);
            double x0 = xr[i] - sf * e;
            xr[i] = xr[i] + (xr[i] - x0) / sf * (down - sf) + z[i] * up;
            maxd = fmax(maxd, fabs(xr[i] - x[i]));
            maxr = fmax(maxr, fabs(xr[i]));
        }
        ok &= maxd <= 1e-4 * fmax(1, maxr);
    }
    CHECK(ok);
    free(x); free(eps); free(z); free(xr);
    zl_sampler_free(&s);
}

/* With the exact denoiser of Gaussian data N(mu, s^2), the probability-flow ODE
 * dx/dsigma = sigma (x - mu) / (s^2 + sigma^2) has the solution
 * x - mu ~ sqrt(s^2 + sigma^2), so from x_T at sigma_max the deterministic
 * samplers must land at mu + (x_T - mu) s / sqrt(s^2 + sigma_max^2); the ancestral
 * sampler must produce samples distributed as N(mu, s^2). Returns the relative
 * error of the final scaling (deterministic) or of the final std (ancestral). */
static double gaussian_run(zl_sampler_kind kind, int steps, double *mean_out) {
    zl_schedule sch;
    zl_schedule_default(&sch);
    const double mu = 0.5, sd = 0.8;
    const size_t n = 20000;
    float *x = malloc(sizeof(float) * n), *eps = malloc(sizeof(float) * n), *noise = malloc(sizeof(float) * n);
    zl_rng r;
    zl_rng_init(&r, 99, 0);
    zl_rng_normal(&r, 0, noise, n);
    zl_sampler s;
    CHECK_OK(zl_sampler_init(&s, &sch, kind, steps, 5));
    double smax = s.sigmas[0], err = 0;
    for (size_t i = 0; i < n; i++) x[i] = (float)(mu + noise[i] * s.init_noise_sigma);
    for (int k = 0; k < s.n_steps; k++) {
        for (size_t i = 0; i < n; i++) eps[i] = (float)gauss_eps(x[i], s.sigmas[k], mu, sd);
        CHECK_OK(zl_sampler_step(&s, k, x, eps, n));
    }
    double m = 0, v = 0;
    for (size_t i = 0; i < n; i++) m += x[i];
    m /= n;
    for (size_t i = 0; i < n; i++) v += (x[i] - m) * (x[i] - m);
    *mean_out = m;
    if (kind == ZL_SAMPLER_EULER_A || kind == ZL_SAMPLER_DPMPP_2M_SDE) {
        err = sqrt(v / n) / sd - 1;
    } else {
        /* every element is scaled by the same factor; measure it on the largest */
        size_t imax = 0;
        for (size_t i = 0; i < n; i++) if (fabsf(noise[i]) > fabsf(noise[imax])) imax = i;
        double want = noise[imax] * s.init_noise_sigma * sd / sqrt(sd * sd + smax * smax);
        err = (x[imax] - mu) / want - 1;
    }
    zl_sampler_free(&s);
    free(x); free(eps); free(noise);
    return err;
}

static void test_gaussian_closed_form(void) {
    double m, e25, e200;
    /* Euler is first order: 8x the steps should cut the error by about 8 */
    e25 = gaussian_run(ZL_SAMPLER_EULER, 25, &m);
    e200 = gaussian_run(ZL_SAMPLER_EULER, 200, &m);
    CHECKM(fabs(e200) < 0.015 && fabs(e25) / fabs(e200) > 4, "euler: error %g at 25 steps, %g at 200", e25, e200);
    CHECKM(fabs(m - 0.5) < 1e-2, "euler: mean %g", m);
    /* DPM++ 2M is second order inside, but its last step is a first-order jump from the last
     * grid sigma s_l to 0, which scales x - mu by s^2/(s^2+s_l^2) instead of s/sqrt(s^2+s_l^2):
     * a relative error of about -s_l^2 / (2 s^2). That term must dominate. */
    zl_schedule sch;
    zl_schedule_default(&sch);
    for (int steps = 25; steps <= 200; steps *= 2) {
        zl_sampler s;
        CHECK_OK(zl_sampler_init(&s, &sch, ZL_SAMPLER_DPMPP_2M, steps, 0));
        double sl = s.sigmas[steps - 1], lead = -sl * sl / (2 * 0.8 * 0.8);
        zl_sampler_free(&s);
        double e = gaussian_run(ZL_SAMPLER_DPMPP_2M, steps, &m);
        CHECKM(fabs(e - lead) < 0.25 * fabs(lead), "dpm++ 2m %d steps: error %g, last-step term %g", steps, e, lead);
    }
    /* Euler ancestral: the std of the samples converges to s (first order in the step) */
    double a50 = gaussian_run(ZL_SAMPLER_EULER_A, 50, &m);
    double a400 = gaussian_run(ZL_SAMPLER_EULER_A, 400, &m);
    /* sampling error of the std is 1/sqrt(2n) = 0.5%, of the mean 0.8/sqrt(n) = 0.006 */
    CHECKM(fabs(a400) < 0.025 && fabs(a400) < fabs(a50), "euler a: std error %g at 50 steps, %g at 400", a50, a400);
    CHECKM(fabs(m - 0.5) < 0.03, "euler a: mean %g", m);
    /* DPM++ 2M SDE: the same, for the SDE sampler */
    double d25 = gaussian_run(ZL_SAMPLER_DPMPP_2M_SDE, 25, &m);
    CHECKM(fabs(d25) < 0.025, "dpm++ 2m sde: std error %g at 25 steps", d25);
    CHECKM(fabs(m - 0.5) < 0.03, "dpm++ 2m sde: mean %g", m);
}

static void test_errors_and_names(void) {
    zl_schedule sch;
    zl_schedule_default(&sch);
    zl_sampler s;
    CHECK(zl_sampler_init(&s, &sch, ZL_SAMPLER_EULER, 0, 0) == ZL_EINVAL);
    CHECK(zl_sampler_init(&s, &sch, ZL_SAMPLER_EULER, 1001, 0) == ZL_EINVAL);
    CHECK(strstr(zl_errmsg(), "steps") != NULL);
    CHECK(zl_sampler_init(&s, &sch, ZL_SAMPLER_DPMPP_2M, 1000, 0) == ZL_EINVAL);
    CHECK(zl_schedule_init(&sch, 1, 0.1f, 0.2f, 0) == ZL_EINVAL);
    CHECK(zl_sampler_from_name("euler") == ZL_SAMPLER_EULER);
    CHECK(zl_sampler_from_name("Euler a") == ZL_SAMPLER_EULER_A);
    CHECK(zl_sampler_from_name("dpmpp_2m") == ZL_SAMPLER_DPMPP_2M);
    CHECK(zl_sampler_from_name("unipc") == -1); /* (ddim, once the example here, is a sampler now) */
    CHECK(!strcmp(zl_sampler_name(ZL_SAMPLER_DPMPP_2M), "DPM++ 2M"));
}

/* Karras sigmas (diffusers' use_karras_sigmas), from the formula written out here:
 * sigma_i = (hi^(1/7) + i/(n-1) (lo^(1/7) - hi^(1/7)))^7, with hi, lo the ends of Euler's own
 * leading grid, or of the whole training range for DPM-Solver; each timestep is the t at which
 * the training sigmas, interpolated linearly in log sigma, equal sigma_i (rounded for DPM). */
static double log_interp_sigma(const zl_schedule *sch, double t) {
    int i = (int)floor(t);
    if (i >= sch->n_train - 1) i = sch->n_train - 2;
    double f = t - i;
    return exp((1 - f) * log(sch->train_sigmas[i]) + f * log(sch->train_sigmas[i + 1]));
}

static void test_karras(void) {
    zl_schedule sch;
    zl_schedule_default(&sch);
    for (int kind = 0; kind < 2; kind++) {
        const int N = 20;
        zl_sampler s;
        CHECK_OK(zl_sampler_init_ex(&s, &sch, kind ? ZL_SAMPLER_DPMPP_2M : ZL_SAMPLER_EULER, ZL_SIGMAS_KARRAS, N, 0));
        CHECK(s.sigma_schedule == ZL_SIGMAS_KARRAS && s.sigmas[N] == 0.0f);
        double hi, lo;
        if (kind) {
            hi = sch.train_sigmas[999], lo = sch.train_sigmas[0];
        } else {
            int ratio = 1000 / N; /* Euler's leading grid: t = (N - 1 - k) ratio + 1, integers */
            hi = sch.train_sigmas[(N - 1) * ratio + 1], lo = sch.train_sigmas[1];
        }
        double worst_s = 0, worst_t = 0;
        int integral = 1, decreasing = 1;
        for (int k = 0; k < N; k++) {
            double r = (double)k / (N - 1), want = pow(pow(hi, 1.0 / 7) + r * (pow(lo, 1.0 / 7) - pow(hi, 1.0 / 7)), 7);
            worst_s = fmax(worst_s, fabs(s.sigmas[k] - want) / want);
            double t = s.timesteps[k];
            if (kind) {
                integral &= t == floor(t) && t >= 0 && t <= 999;
            } else {
                worst_t = fmax(worst_t, fabs(log_interp_sigma(&sch, t) - want) / want);
            }
            if (k) decreasing &= s.timesteps[k] <= s.timesteps[k - 1];
        }
        CHECKM(worst_s < 2e-6, "karras %s: sigma relative error %g", kind ? "dpm" : "euler", worst_s);
        CHECK(decreasing);
        if (kind) {
            CHECKM(integral && s.timesteps[0] == 999.0f && s.timesteps[N - 1] == 0.0f, "dpm karras: timesteps %g .. %g",
                   s.timesteps[0], s.timesteps[N - 1]);
            /* each rounded timestep is the nearest integer to the exact inverse */
            double worst_r = 0;
            for (int k = 0; k < N; k++) {
                double lo_t = 0, hi_t = 999; /* bisection of log_interp_sigma(t) = sigma_k (increasing in t) */
                for (int it = 0; it < 60; it++) {
                    double mid = 0.5 * (lo_t + hi_t);
                    if (log_interp_sigma(&sch, mid) < s.sigmas[k]) lo_t = mid;
                    else hi_t = mid;
                }
                worst_r = fmax(worst_r, fabs(s.timesteps[k] - 0.5 * (lo_t + hi_t)));
            }
            CHECKM(worst_r <= 0.5 + 1e-6, "dpm karras: rounded timesteps off by up to %g", worst_r);
        } else {
            CHECKM(worst_t < 1e-5, "euler karras: sigma at the fractional timestep, relative error %g", worst_t);
            CHECKM(fabs(s.init_noise_sigma - sqrt(hi * hi + 1)) < 1e-4 * s.init_noise_sigma, "init_noise_sigma %g",
                   s.init_noise_sigma);
        }
        zl_sampler_free(&s);
    }
    /* the inverse at the training sigmas themselves, and clamped outside */
    CHECK(fabs(zl_sigma_to_t(&sch, sch.train_sigmas[500]) - 500) < 1e-3);
    CHECK(fabs(zl_sigma_to_t(&sch, sch.train_sigmas[0] * 0.5)) < 1e-9);
    CHECK(fabs(zl_sigma_to_t(&sch, sch.train_sigmas[999] * 2) - 999) < 1e-9);
    zl_sampler s;
    CHECK(zl_sampler_init_ex(&s, &sch, ZL_SAMPLER_EULER_A, ZL_SIGMAS_KARRAS, 10, 0) == ZL_EUNSUPPORTED);
    CHECK(zl_sampler_from_name("dpmpp_2m_karras") == ZL_SAMPLER_DPMPP_2M && zl_sampler_name_karras("DPM++ 2M Karras"));
    CHECK(zl_sampler_from_name("Euler Karras") == ZL_SAMPLER_EULER && !zl_sampler_name_karras("euler"));
    CHECK(zl_sampler_from_name("DPM++ 2M SDE Karras") == ZL_SAMPLER_DPMPP_2M_SDE && zl_sampler_name_karras("DPM++ 2M SDE Karras"));
    CHECK(zl_sampler_from_name("dpmpp_2m_sde") == ZL_SAMPLER_DPMPP_2M_SDE &&
          !strcmp(zl_sampler_name(ZL_SAMPLER_DPMPP_2M_SDE), "DPM++ 2M SDE"));
    /* its grid is DPM-Solver's: Karras over the whole training range, timesteps rounded */
    zl_sampler a, b2;
    CHECK_OK(zl_sampler_init_ex(&a, &sch, ZL_SAMPLER_DPMPP_2M_SDE, ZL_SIGMAS_KARRAS, 10, 0));
    CHECK_OK(zl_sampler_init_ex(&b2, &sch, ZL_SAMPLER_DPMPP_2M, ZL_SIGMAS_KARRAS, 10, 0));
    CHECK(!memcmp(a.sigmas, b2.sigmas, 11 * sizeof(float)) && !memcmp(a.timesteps, b2.timesteps, 10 * sizeof(float)) &&
          a.init_noise_sigma == b2.init_noise_sigma);
    zl_sampler_free(&a);
    zl_sampler_free(&b2);
}

/* Zero terminal SNR (rescale_zero_terminal_snr, Lin et al. 2023 Algorithm 1)
 * against the algorithm in double: sqrt(alphas_cumprod) shifted to end at 0 and
 * scaled to keep its first value; the last value then 2^-24 as diffusers sets
 * it. Float32 rounding meets the shift's cancellation near the end (sqrt values
 * of ~0.07 minus 0.068), hence the looser bound there. */
static void test_zero_snr(void) {
    zl_sched_config c;
    zl_sched_config_default(&c);
    c.zero_snr = 1;
    zl_schedule z, d;
    CHECK_OK(zl_schedule_from_config(&z, &c));
    zl_schedule_default(&d);
    CHECK(z.zero_snr == 1 && d.zero_snr == 0);
    enum { N = 1000 };
    double acp[N];
    zt_sd_alphas_cumprod(acp, 1);
    double worst_head = 0, worst_tail = 0;
    for (int i = 0; i < N - 1; i++) {
        double ref = acp[i];
        double e = fabs(z.alphas_cumprod[i] - ref) / ref;
        if (i < 900) worst_head = fmax(worst_head, e);
        else worst_tail = fmax(worst_tail, e);
        /* the rescaled schedule has less signal than the original at every step but the first */
        if (i > 0) CHECKM(z.alphas_cumprod[i] < d.alphas_cumprod[i], "zero SNR at %d: %g >= %g", i, z.alphas_cumprod[i], d.alphas_cumprod[i]);
    }
    printf("zero SNR alphas_cumprod vs double: max rel. error %.2e (t < 900), %.2e (900 <= t < 999)\n", worst_head,
           worst_tail);
    CHECKM(worst_head < 1e-5 && worst_tail < 1e-4, "zero SNR alphas_cumprod vs double: head %g, tail %g", worst_head,
           worst_tail);
    CHECK(fabsf(z.alphas_cumprod[0] - d.alphas_cumprod[0]) <= 1e-6f * d.alphas_cumprod[0]);
    CHECK(z.alphas_cumprod[N - 1] == 0x1p-24f);
    CHECK(fabs(z.train_sigmas[N - 1] - sqrt((1 - pow(2, -24)) / pow(2, -24))) < 1e-3); /* ~4096 */
    for (int i = 1; i < N; i++) CHECK(z.train_sigmas[i] > z.train_sigmas[i - 1]);
    /* add_noise at the last step is (almost) pure noise */
    float x0 = 1.0f, e = 0.5f, o;
    CHECK_OK(zl_schedule_add_noise(&z, N - 1, &x0, &e, &o, 1));
    CHECK(fabsf(o - (0x1p-12f * 1.0f + sqrtf(1 - 0x1p-24f) * 0.5f)) < 1e-6f);
}

/* Trailing and linspace spacing, as diffusers places them (exact timesteps),
 * and the start noise scale each family's scheduler uses. */
static void test_spacing(void) {
    zl_schedule sch;
    zl_schedule_default(&sch);
    zl_sampler s;
    sch.spacing = ZL_SPACING_TRAILING;
    static const struct {
        zl_sampler_kind kind;
        int steps;
        float t[8];
    } tr[] = {
        {ZL_SAMPLER_EULER, 8, {999, 874, 749, 624, 499, 374, 249, 124}},
        {ZL_SAMPLER_EULER, 3, {999, 666, 332}},
        {ZL_SAMPLER_DPMPP_2M, 4, {999, 749, 499, 249}},
        {ZL_SAMPLER_EULER_A, 1, {999}},
    };
    for (size_t c = 0; c < sizeof tr / sizeof tr[0]; c++) {
        CHECK_OK(zl_sampler_init(&s, &sch, tr[c].kind, tr[c].steps, 0));
        for (int k = 0; k < tr[c].steps; k++) {
            CHECKM(s.timesteps[k] == tr[c].t[k], "trailing %d steps, kind %d: t[%d] = %g, want %g", tr[c].steps,
                   (int)tr[c].kind, k, s.timesteps[k], tr[c].t[k]);
            CHECK(s.sigmas[k] == sch.train_sigmas[(int)tr[c].t[k]]);
        }
        CHECK(s.sigmas[tr[c].steps] == 0.0f);
        float smax = sch.train_sigmas[999];
        float want = tr[c].kind == ZL_SAMPLER_DPMPP_2M ? sqrtf(smax * smax + 1) : smax;
        CHECKM(s.init_noise_sigma == want, "trailing init_noise_sigma %g, want %g", s.init_noise_sigma, want);
        zl_sampler_free(&s);
    }
    sch.spacing = ZL_SPACING_LINSPACE;
    /* Euler: linspace(0, 999, 4) reversed, fractional where it falls so */
    CHECK_OK(zl_sampler_init(&s, &sch, ZL_SAMPLER_EULER, 4, 0));
    CHECK(s.timesteps[0] == 999 && s.timesteps[1] == 666 && s.timesteps[2] == 333 && s.timesteps[3] == 0);
    CHECK(s.sigmas[3] == sch.train_sigmas[0] && s.init_noise_sigma == sch.train_sigmas[999]);
    zl_sampler_free(&s);
    CHECK_OK(zl_sampler_init(&s, &sch, ZL_SAMPLER_EULER, 5, 0));
    CHECK(s.timesteps[1] == 749.25f && s.timesteps[2] == 499.5f && s.timesteps[3] == 249.75f);
    CHECK(fabsf(s.sigmas[1] - (0.75f * sch.train_sigmas[749] + 0.25f * sch.train_sigmas[750])) < 1e-6f * s.sigmas[1]);
    zl_sampler_free(&s);
    /* DPM-Solver: linspace(0, 999, 5) = 0, 249.75, 499.5, 749.25, 999 rounded half to even, 0 dropped */
    CHECK_OK(zl_sampler_init(&s, &sch, ZL_SAMPLER_DPMPP_2M, 4, 0));
    CHECKM(s.timesteps[0] == 999 && s.timesteps[1] == 749 && s.timesteps[2] == 500 && s.timesteps[3] == 250,
           "dpm linspace %g %g %g %g", s.timesteps[0], s.timesteps[1], s.timesteps[2], s.timesteps[3]);
    zl_sampler_free(&s);
    /* leading is unchanged: Euler 4 steps = 751, 501, 251, 1 */
    sch.spacing = ZL_SPACING_LEADING;
    CHECK_OK(zl_sampler_init(&s, &sch, ZL_SAMPLER_EULER, 4, 0));
    CHECK(s.timesteps[0] == 751 && s.timesteps[3] == 1);
    CHECK(s.init_noise_sigma == sqrtf(s.sigmas[0] * s.sigmas[0] + 1));
    zl_sampler_free(&s);
}

/* v -> epsilon against diffusers' x0 for v-prediction, at sigmas from the
 * smallest training sigma to the zero-SNR one. */
static void test_v_to_eps(void) {
    const float sig[] = {0.0292f, 1.0f, 14.6146f, 4096.0f};
    float x[5] = {1.5f, -0.25f, 3000.0f, 0.0f, -7.0f}, v[5] = {0.3f, -1.2f, 0.9f, 2.0f, -0.05f}, e[5];
    for (size_t k = 0; k < sizeof sig / sizeof *sig; k++) {
        zl_v_to_eps(sig[k], x, v, e, 5);
        for (int i = 0; i < 5; i++) {
            double s = sig[k];
            double x0 = v[i] * (-s / sqrt(s * s + 1)) + x[i] / (s * s + 1);
            double ref = (x[i] - x0) / s;
            CHECKM(fabs(e[i] - ref) <= 1e-6 * fmax(1, fabs(ref)), "v->eps at sigma %g: %g vs %g", s, e[i], ref);
        }
    }
    /* in place */
    float vv[5];
    memcpy(vv, v, sizeof v);
    zl_v_to_eps(2.0f, x, vv, vv, 5);
    zl_v_to_eps(2.0f, x, v, e, 5);
    CHECK(!memcmp(vv, e, sizeof e));
}

/* Names and user overrides of a model's schedule. */
static void test_sched_override(void) {
    zl_sched_config c;
    zl_sched_config_default(&c);
    CHECK(c.n_train == 1000 && c.steps_offset == 1 && c.prediction == ZL_PRED_EPSILON && c.spacing == ZL_SPACING_LEADING &&
          !c.zero_snr);
    zl_sched_override o = {.zero_snr = 1};
    CHECK_OK(zl_sched_override_apply(&c, &o));
    CHECK(c.zero_snr && c.spacing == ZL_SPACING_TRAILING); /* zero SNR brings trailing spacing */
    zl_sched_override o2 = {.zero_snr = 1, .spacing = "leading", .prediction = "v"};
    CHECK_OK(zl_sched_override_apply(&c, &o2));
    CHECK(c.zero_snr && c.spacing == ZL_SPACING_LEADING && c.prediction == ZL_PRED_V);
    zl_sched_override o3 = {.zero_snr = -1, .prediction = "epsilon"};
    CHECK_OK(zl_sched_override_apply(&c, &o3));
    CHECK(!c.zero_snr && c.prediction == ZL_PRED_EPSILON && c.spacing == ZL_SPACING_LEADING);
    zl_sched_override bad = {.prediction = "sample"};
    CHECK(zl_sched_override_apply(&c, &bad) == ZL_EINVAL && strstr(zl_errmsg(), "--prediction 'sample'"));
    zl_sched_override bad2 = {.spacing = "karras"};
    CHECK(zl_sched_override_apply(&c, &bad2) == ZL_EINVAL && strstr(zl_errmsg(), "--spacing 'karras'"));
    CHECK_OK(zl_sched_override_apply(&c, NULL));
    CHECK(zl_prediction_from_name("v_prediction") == ZL_PRED_V && zl_prediction_from_name("eps") == ZL_PRED_EPSILON &&
          zl_prediction_from_name("x0") == -1 && !strcmp(zl_prediction_name(ZL_PRED_V), "v_prediction"));
    CHECK(zl_spacing_from_name("trailing") == ZL_SPACING_TRAILING && zl_spacing_from_name("Trailing") == -1 &&
          !strcmp(zl_spacing_name(ZL_SPACING_LINSPACE), "linspace"));
}

/* LCM (diffusers' LCMScheduler) against its set_timesteps and step written out
 * here in its own variance preserving space, in double: x0 = (x - sqrt(1-a) eps)
 * / sqrt(a), D = c_out x0 + c_skip x with c_skip = 0.25 / ((10 t)^2 + 0.25),
 * c_out = 10 t / sqrt((10 t)^2 + 0.25); x' = sqrt(a') D + sqrt(1-a') z, the last
 * step D alone. The sampler works in sigma space (x_vp = x / sqrt(sigma^2 + 1)). */
static void test_lcm(void) {
    zl_schedule sch;
    zl_schedule_default(&sch);
    /* timesteps: the reversed grid 20 j - 1 at floor(linspace(0, 50, N, endpoint=False)) */
    static const int four[4] = {999, 759, 499, 259};
    for (int N = 1; N <= 50; N++) {
        zl_sampler s;
        CHECK_OK(zl_sampler_init(&s, &sch, ZL_SAMPLER_LCM, N, 1));
        int ok = s.n_steps == N && s.sigmas[N] == 0.0f;
        for (int k = 0; ok && k < N; k++) {
            int idx = (int)floor(k * (50.0 / N));
            ok = s.timesteps[k] == (float)(999 - 20 * idx) && s.sigmas[k] == sch.train_sigmas[999 - 20 * idx];
            if (N == 4) ok = ok && s.timesteps[k] == (float)four[k];
        }
        CHECKM(ok, "LCM %d steps: timesteps", N);
        zl_sampler_free(&s);
    }
    zl_sampler s;
    CHECK(zl_sampler_init(&s, &sch, ZL_SAMPLER_LCM, 51, 1) == ZL_EINVAL);
    CHECK(zl_sampler_init_ex(&s, &sch, ZL_SAMPLER_LCM, ZL_SIGMAS_KARRAS, 4, 1) == ZL_EUNSUPPORTED);
    CHECK(zl_sampler_from_name("LCM") == ZL_SAMPLER_LCM && !strcmp(zl_sampler_name(ZL_SAMPLER_LCM), "LCM"));
    /* four steps on a Gaussian-data model's epsilon */
    const int N = 4;
    const size_t n = 256;
    CHECK_OK(zl_sampler_init(&s, &sch, ZL_SAMPLER_LCM, N, 77));
    float *x = malloc(sizeof(float) * n), *eps = malloc(sizeof(float) * n), *z = malloc(sizeof(float) * n);
    double *xv = malloc(sizeof(double) * n);
    zl_rng r;
    zl_rng_init(&r, 77, 0);
    zl_rng_normal(&r, 0, x, n);
    for (size_t i = 0; i < n; i++) {
        xv[i] = x[i]; /* diffusers: latents = randn * init_noise_sigma (1) */
        x[i] *= s.init_noise_sigma;
    }
    for (int k = 0; k < N; k++) {
        const int t = (int)s.timesteps[k], tp = k + 1 < N ? (int)s.timesteps[k + 1] : t;
        const double a = sch.alphas_cumprod[t], ap = sch.alphas_cumprod[tp], sg = s.sigmas[k];
        const float in_scale = zl_sampler_input_scale(&s, k);
        for (size_t i = 0; i < n; i++) eps[i] = (float)gauss_eps(x[i] * in_scale * sqrt(sg * sg + 1), sg, 0.3, 0.8);
        CHECK_OK(zl_sampler_step(&s, k, x, eps, n));
        const double st = 10.0 * t, c_skip = 0.25 / (st * st + 0.25), c_out = st / sqrt(st * st + 0.25);
        if (k + 1 < N) {
            zl_rng_init(&r, 77, 1000 + (uint64_t)k);
            zl_rng_normal(&r, 0, z, n);
        }
        double maxd = 0, maxr = 0;
        for (size_t i = 0; i < n; i++) {
            double x0 = (xv[i] - sqrt(1 - a) * eps[i]) / sqrt(a), d = c_out * x0 + c_skip * xv[i];
            xv[i] = k + 1 < N ? sqrt(ap) * d + sqrt(1 - ap) * z[i] : d;
            /* the sampler's x in sigma space is x_vp / sqrt(a') (at the end sigma 0: the same) */
            double want = k + 1 < N ? xv[i] / sqrt(ap) : xv[i];
            maxd = fmax(maxd, fabs(x[i] - want));
            maxr = fmax(maxr, fabs(want));
        }
        CHECKM(maxd <= 1e-4 * fmax(1, maxr), "LCM step %d: max diff %g", k, maxd);
    }
    free(x); free(eps); free(z); free(xv);
    zl_sampler_free(&s);
}

/* DDIM (eta 0) against diffusers' DDIMScheduler.step written out in its variance
 * preserving space, in double: x0 = (x - sqrt(1-a) eps) / sqrt(a), x_prev =
 * sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, a_prev = alphas_cumprod[t - 1000 // N]
 * or, past the start, alphas_cumprod[0] (set_alpha_to_one false) or 1. Its
 * timesteps are Euler's leading ones; other spacings are refused. */
static void test_ddim(void) {
    for (int one = 0; one < 2; one++) {
        zl_schedule sch;
        zl_schedule_default(&sch);
        sch.alpha_to_one = one;
        const int N = 5, ratio = 1000 / N;
        const size_t n = 128;
        zl_sampler s, e;
        CHECK_OK(zl_sampler_init(&s, &sch, ZL_SAMPLER_DDIM, N, 3));
        CHECK_OK(zl_sampler_init(&e, &sch, ZL_SAMPLER_EULER, N, 3));
        int same = 1;
        for (int k = 0; k < N; k++) same = same && s.timesteps[k] == e.timesteps[k] && s.sigmas[k] == e.sigmas[k];
        CHECKM(same && s.init_noise_sigma == e.init_noise_sigma, "DDIM: Euler's leading timesteps");
        zl_sampler_free(&e);
        float *x = malloc(sizeof(float) * n), *eps = malloc(sizeof(float) * n);
        double *xv = malloc(sizeof(double) * n);
        zl_rng r;
        zl_rng_init(&r, 3, 0);
        zl_rng_normal(&r, 0, x, n);
        for (size_t i = 0; i < n; i++) {
            xv[i] = x[i];
            x[i] *= s.init_noise_sigma;
        }
        for (int k = 0; k < N; k++) {
            const int t = (int)s.timesteps[k], tp = t - ratio;
            const double a = sch.alphas_cumprod[t], ap = tp >= 0 ? sch.alphas_cumprod[tp] : one ? 1.0 : sch.alphas_cumprod[0];
            for (size_t i = 0; i < n; i++) eps[i] = (float)gauss_eps(x[i], s.sigmas[k], -0.2, 1.1);
            CHECK_OK(zl_sampler_step(&s, k, x, eps, n));
            double maxd = 0, maxr = 0;
            for (size_t i = 0; i < n; i++) {
                double x0 = (xv[i] - sqrt(1 - a) * eps[i]) / sqrt(a);
                xv[i] = sqrt(ap) * x0 + sqrt(1 - ap) * eps[i];
                double want = xv[i] / sqrt(ap); /* sigma space */
                maxd = fmax(maxd, fabs(x[i] - want));
                maxr = fmax(maxr, fabs(want));
            }
            CHECKM(maxd <= 1e-4 * fmax(1, maxr), "DDIM (set_alpha_to_one %d) step %d: max diff %g", one, k, maxd);
        }
        CHECK(one ? s.sigmas[N] == 0.0f : s.sigmas[N] == sch.train_sigmas[0]);
        free(x), free(eps), free(xv);
        zl_sampler_free(&s);
    }
    zl_schedule sch;
    zl_schedule_default(&sch);
    sch.spacing = ZL_SPACING_TRAILING;
    zl_sampler s;
    CHECK(zl_sampler_init(&s, &sch, ZL_SAMPLER_DDIM, 4, 1) == ZL_EUNSUPPORTED);
    CHECK(zl_sampler_from_name("DDIM") == ZL_SAMPLER_DDIM && !strcmp(zl_sampler_name(ZL_SAMPLER_DDIM), "DDIM"));
}

int main(void) {
    test_zero_snr();
    test_spacing();
    test_v_to_eps();
    test_sched_override();
    for (int i = 0; i < 2; i++) {
        test_scheduler_cases(k_families[i]);
        test_sched_io(k_families[i]);
    }
    test_philox_kat();
    test_rng();
    test_dpmpp_vs_vp_formula();
    test_euler_a_formula();
    test_dpmpp_sde_vs_vp_formula();
    test_gaussian_closed_form();
    test_errors_and_names();
    test_karras();
    test_lcm();
    test_ddim();
    return zt_done();
}
