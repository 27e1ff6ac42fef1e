/* Noise schedules, samplers and the seedable RNG.
 *
 * The training schedule is diffusers' "scaled_linear" one (betas =
 * linspace(sqrt(b0), sqrt(b1), N)^2, alphas_cumprod = cumprod(1 - beta), kept in
 * float32). Samplers work in the "sigma" (variance exploding) space of
 * diffusers' EulerDiscreteScheduler: latents start at noise * init_noise_sigma,
 * the UNet is fed x * zl_sampler_input_scale() together with the timestep,
 * and each step consumes the UNet's epsilon prediction.
 *
 * Samplers (all with "leading" timestep spacing and steps_offset, as SDXL and
 * SD 1.x ship them):
 *  - ZL_SAMPLER_EULER: EulerDiscreteScheduler.
 *  - ZL_SAMPLER_EULER_A: EulerAncestralDiscreteScheduler (noise from zl_rng).
 *  - ZL_SAMPLER_DPMPP_2M: DPMSolverMultistepScheduler (dpmsolver++, order 2,
 *    midpoint, lower_order_final, final_sigmas_type "zero"), which diffusers
 *    runs in the variance preserving space; it is the same update written in
 *    sigma space (x_vp = x / sqrt(sigma^2 + 1)), so it shares the interface.
 *    Its "leading" grid differs from Euler's: step = N_train // (steps + 1).
 *  - ZL_SAMPLER_DPMPP_2M_SDE: the same scheduler with algorithm_type
 *    "sde-dpmsolver++" (the A1111 name "DPM++ 2M SDE"): the same grid and data
 *    predictions, plus noise each step (RNG stream 1000 + k).
 *  - ZL_SAMPLER_DDIM: DDIMScheduler with eta 0 (A1111 "DDIM"), leading spacing
 *    only: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps with a_prev the next
 *    timestep's, and after the last alphas_cumprod[0] (set_alpha_to_one false, as
 *    SD/SDXL ship it and A1111 does) or 1. In sigma space that is Euler's step on
 *    Euler's leading grid whose final sigma is sigma(t = 0) instead of 0: the
 *    result keeps that little noise, as diffusers' does.
 *  - ZL_SAMPLER_LCM: LCMScheduler, for latent consistency models and LCM-LoRAs
 *    (A1111 "LCM"): timesteps floor(linspace(0, 50, steps, endpoint=False)) of
 *    the reversed distillation grid 20 j - 1 (j = 50..1; original_inference_steps
 *    50 of 1000, at most 50 steps), whatever the spacing; each step denoises with
 *    the boundary condition c_skip x_t + c_out x0 (sigma_data 0.5, timestep x 10)
 *    and re-noises to the next timestep (noise from RNG stream 1000 + k), the
 *    last step not. In sigma space: x' = D + sigma' z with D = c_out (x - sigma
 *    eps) + c_skip x / sqrt(sigma^2 + 1). It starts from noise * sqrt(smax^2 + 1)
 *    (unit variance x_T) and takes x / sqrt(sigma^2 + 1) as model input, as all do.
 *
 * Karras sigmas (ZL_SIGMAS_KARRAS, diffusers' use_karras_sigmas; A1111's "Karras"
 * schedule type): sigma_i = (smax^(1/7) + i/(n-1) (smin^(1/7) - smax^(1/7)))^7 and the
 * timestep of each sigma found by interpolating t linearly in log sigma over the
 * training sigmas. Euler takes smax, smin from its leading grid and keeps fractional
 * timesteps; DPM++ 2M takes the whole training range and rounds them.
 */
#ifndef ZIPLORA_SAMPLE_H
#define ZIPLORA_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

#include "ziplora/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ZL_MAX_TRAIN_STEPS 4000

/* What the model predicts: the noise (SD 1.x, SDXL base) or v = alpha eps -
 * sigma x0 (v-prediction fine-tunes such as NoobAI-XL V-Pred). The samplers
 * consume epsilon; zl_v_to_eps converts. */
typedef enum { ZL_PRED_EPSILON = 0, ZL_PRED_V = 1 } zl_prediction;
/* Inference timestep spacing (diffusers' timestep_spacing, Table 2 of
 * Lin et al. 2023): "leading" (SD/SDXL's shipped default), "trailing" (starts
 * at the last training step; what zero-terminal-SNR models need), "linspace". */
typedef enum { ZL_SPACING_LEADING = 0, ZL_SPACING_TRAILING = 1, ZL_SPACING_LINSPACE = 2 } zl_spacing;

/* A model's noise schedule as its scheduler config states it (diffusers'
 * scheduler_config.json; single checkpoints: the 'v_pred' / 'ztsnr' marker keys). */
typedef struct {
    int n_train;                    /* num_train_timesteps: 1000 */
    float beta_start, beta_end;     /* scaled_linear: 0.00085, 0.012 */
    int steps_offset;               /* 1 */
    int zero_snr;                   /* rescale_betas_zero_snr */
    zl_spacing spacing;             /* timestep_spacing */
    zl_prediction prediction;       /* prediction_type */
    int sampler;                    /* the sampler its _class_name runs (zl_sampler_kind), -1: none named */
    int karras;                     /* use_karras_sigmas */
    int alpha_to_one;               /* set_alpha_to_one: DDIM's last step goes to alpha 1 (else alphas_cumprod[0]) */
} zl_sched_config;

/* SD/SDXL: 1000, 0.00085..0.012, offset 1, no zero SNR, leading, epsilon, no sampler named. */
void zl_sched_config_default(zl_sched_config *c);
/* Names, as diffusers spells them ("epsilon", "v_prediction"; "leading", ...);
 * parsing also takes "eps" and "v". -1 if unknown. */
int zl_prediction_from_name(const char *name);
const char *zl_prediction_name(zl_prediction p);
int zl_spacing_from_name(const char *name);
const char *zl_spacing_name(zl_spacing s);

/* What a user changes of a model's schedule (its flags); zero: keep the model's.
 * Turning zero SNR on without naming a spacing also sets trailing spacing (a
 * leading grid never reaches the terminal step that zero SNR is about). */
typedef struct {
    const char *prediction;         /* "epsilon" / "v_prediction" (also "eps", "v"), or NULL */
    const char *spacing;            /* "leading" / "trailing" / "linspace", or NULL */
    int zero_snr;                   /* 1: on, -1: off, 0: the model's */
} zl_sched_override;
/* Apply o (may be NULL) to c; an unknown name is ZL_EINVAL naming the flag. */
int zl_sched_override_apply(zl_sched_config *c, const zl_sched_override *o);

typedef struct {
    int n_train;                    /* 1000 */
    float beta_start, beta_end;     /* 0.00085, 0.012 */
    int steps_offset;               /* 1 */
    int zero_snr;                   /* betas rescaled to zero terminal SNR (alphas_cumprod[-1] = 2^-24) */
    zl_spacing spacing;             /* how zl_sampler_init places the inference timesteps */
    zl_prediction prediction;       /* what the model predicts (used by the pipeline, not the samplers) */
    int alpha_to_one;               /* set_alpha_to_one (DDIM) */
    float alphas_cumprod[ZL_MAX_TRAIN_STEPS]; /* [n_train], float32 as diffusers keeps it */
    float train_sigmas[ZL_MAX_TRAIN_STEPS];   /* sqrt((1 - a) / a), float32 */
} zl_schedule;

/* The SD/SDXL schedule: 1000 steps, scaled_linear 0.00085..0.012, steps_offset 1. */
void zl_schedule_default(zl_schedule *s);
/* Any scaled_linear schedule (leading spacing, epsilon, no zero SNR). */
int zl_schedule_init(zl_schedule *s, int n_train, float beta_start, float beta_end, int steps_offset);
/* The schedule of a config (NULL: the default). With zero_snr, the betas are
 * rescaled as diffusers' rescale_zero_terminal_snr does (Lin et al. 2023,
 * Algorithm 1: sqrt(alphas_cumprod) shifted to end at 0 and scaled to keep its
 * first value), and the last alphas_cumprod is set to 2^-24 so the largest
 * sigma (about 4096) stays finite, as diffusers' Euler and DPM-Solver do. */
int zl_schedule_from_config(zl_schedule *s, const zl_sched_config *c);

/* v-prediction -> the epsilon the samplers take, at sigma (Euler's sigma space,
 * x = x0 + sigma eps, the UNet fed x / sqrt(sigma^2 + 1)):
 * x0 = x / (sigma^2 + 1) - v sigma / sqrt(sigma^2 + 1) (diffusers), so
 * eps = (x - x0) / sigma = sigma x / (sigma^2 + 1) + v / sqrt(sigma^2 + 1).
 * out may alias v. */
void zl_v_to_eps(float sigma, const float *x, const float *v, float *out, size_t n);

/* DDPM forward noising: out = sqrt(a_t) x0 + sqrt(1 - a_t) noise, n values of one
 * sample at integer timestep t (0 <= t < n_train). out may alias x0 or noise. */
int zl_schedule_add_noise(const zl_schedule *s, int t, const float *x0, const float *noise, float *out, size_t n);

/* ---- RNG -------------------------------------------------------------------
 * Counter-based: Philox4x32-10 keyed by the 64-bit seed, with the counter
 * (pair index, stream). Element i of stream s is a standard normal drawn by
 * Box-Muller from the two 32-bit words of its pair's block (even i: cos, odd
 * i: sin branch), so every value depends only on (seed, stream, i) -- never on
 * how a buffer is split among threads, nor on what was drawn before.
 * Streams used by the library: 0 = initial latent noise; 1000 + k = the noise
 * of sampler step k (Euler ancestral). */
typedef struct {
    uint64_t seed;
    uint64_t stream;
} zl_rng;

void zl_rng_init(zl_rng *r, uint64_t seed, uint64_t stream);
/* out[j] = normal(seed, stream, offset + j) for j < n. Threaded, deterministic. */
void zl_rng_normal(const zl_rng *r, uint64_t offset, float *out, size_t n);
/* out[j] = uniform in [0, 1) (24-bit) for element offset + j. */
void zl_rng_uniform(const zl_rng *r, uint64_t offset, float *out, size_t n);
/* The raw generator, for tests: Philox4x32-10 of (counter, key). */
void zl_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* ---- Samplers ------------------------------------------------------------- */
typedef enum {
    ZL_SAMPLER_EULER = 0,
    ZL_SAMPLER_EULER_A = 1,
    ZL_SAMPLER_DPMPP_2M = 2,
    ZL_SAMPLER_DPMPP_2M_SDE = 3, /* DPMSolverMultistepScheduler, algorithm_type sde-dpmsolver++ */
    ZL_SAMPLER_LCM = 4,          /* LCMScheduler (latent consistency models and LCM-LoRAs) */
    ZL_SAMPLER_DDIM = 5          /* DDIMScheduler, eta 0 */
} zl_sampler_kind;

/* "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_sde" (also the A1111 names "Euler",
 * "Euler a", "DPM++ 2M", "DPM++ 2M SDE"); -1 if unknown. */
int zl_sampler_from_name(const char *name);
/* 1 if the name asks for Karras sigmas ("dpmpp_2m_karras", "DPM++ 2M Karras"). */
int zl_sampler_name_karras(const char *name);
const char *zl_sampler_name(zl_sampler_kind k);   /* A1111 spelling, for PNG parameters */

typedef enum { ZL_SIGMAS_DEFAULT = 0, ZL_SIGMAS_KARRAS = 1 } zl_sigma_schedule;

typedef struct {
    zl_sampler_kind kind;
    zl_sigma_schedule sigma_schedule;
    int n_steps;
    float *timesteps;        /* [n_steps], what the UNet gets */
    float *sigmas;           /* [n_steps + 1], final 0 */
    float init_noise_sigma;  /* sqrt(sigma_max^2 + 1) */
    zl_rng rng;              /* Euler ancestral noise */
    /* DPM++ 2M state */
    size_t n;                /* elements per step (set on first step) */
    float *prev_x0;          /* [n] previous data prediction */
    int n_lower;             /* steps taken so far (order warm-up) */
} zl_sampler;

/* Build the timesteps and sigmas of `kind` for n_steps (1..n_train), placed by
 * the schedule's spacing. Euler and Euler a start from noise * max sigma with
 * trailing or linspace spacing, * sqrt(max sigma^2 + 1) with leading (diffusers'
 * init_noise_sigma); DPM++ 2M always from sqrt(max sigma^2 + 1) (unit variance in
 * its variance preserving space). */
int zl_sampler_init(zl_sampler *s, const zl_schedule *sch, zl_sampler_kind kind, int n_steps, uint64_t seed);
/* The same with a sigma schedule (Karras: Euler and DPM++ 2M, as diffusers offers it). */
int zl_sampler_init_ex(zl_sampler *s, const zl_schedule *sch, zl_sampler_kind kind, zl_sigma_schedule sigmas,
                       int n_steps, uint64_t seed);
/* diffusers' _sigma_to_t: the fractional timestep of `sigma`, linear in log sigma between
 * the training sigmas (clamped to [0, n_train - 1]). */
double zl_sigma_to_t(const zl_schedule *sch, double sigma);
void zl_sampler_free(zl_sampler *s);
/* Model input scale at step k: 1 / sqrt(sigma_k^2 + 1). */
float zl_sampler_input_scale(const zl_sampler *s, int k);
/* One step k (0-based, in order): x [n] is updated in place from the model's
 * epsilon prediction eps [n] (made from x * input_scale and timesteps[k]). */
int zl_sampler_step(zl_sampler *s, int k, float *x, const float *eps, size_t n);

#ifdef __cplusplus
}
#endif
#endif
