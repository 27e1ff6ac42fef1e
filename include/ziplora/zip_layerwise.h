/* The layerwise ZipLoRA mode (`ziplora zip --mode layerwise`): forward passes
 * only, then every layer's mergers optimised on its own.
 *
 * Capture. The draws of ziprun.h (shared noise and timestep per draw) are run
 * through the content-only and the style-only model (the target forwards the
 * driver computes anyway), and a hook records what every LoRA layer sees. A
 * layer's branch output is linear in its mergers, so a layer's whole local
 * objective is a quadratic form in (m_c, m_s) built from the second moments
 * C = sum_tokens x x^T of its inputs (im2col patches for convs; Linear rows or
 * conv output positions are sub-sampled evenly to at most max_tokens per
 * forward). Layers that read the same input share one C (attn1 q/k/v; every
 * attn2 k/v reads the text context). The C of one capture pass must fit in
 * capture_mb; more layers than that are captured in several passes (each pass
 * runs the draws again).
 *
 * Local objective of a layer, with P = [s_c B_c, s_s B_s], A = diag(A_c, A_s):
 *   L_t(m) = (m - e_t)^T Q_t (m - e_t),  Q_t = reduce((A^T P^T P A) ⊙ C_t) / (tokens_t * out)
 * the mean squared difference between the merged layer's LoRA output and the
 * target LoRA's on the inputs of side t (e_c = (1, 0), e_s = (0, 1); the base
 * W x cancels). The mergers minimise w_c L_c + w_s L_s + λ' mean_j |m_c m_s|
 * by Adam from m = 1 (lr and steps as the run's; per layer, full mode's
 * stopping rule: the layer's similarity has reached 0). Weights:
 *  - unit (default): w = 1, the local mean squares as they are;
 *  - calibrated: per layer, a full-model gradient of the first two terms at
 *    the start (cal_draws draws) fitted by w x the local gradient (least
 *    squares, w >= 0);
 *  - relative: each term divided by its target's mean square.
 * Chosen by measurement (bench/RESULTS.md, "zip"): on mini-sdxl and tiny-sd15
 * unit weights recover ~100 % of full mode's held-out gain over the direct
 * merge, calibrated ones 96 % / 77 % (they match full mode's similarity term
 * instead; the full and local gradients correlate weakly, cos ~0.04).
 * Optionally a few full-mode steps follow (the hybrid). */
#ifndef ZIPLORA_ZIP_LAYERWISE_H
#define ZIPLORA_ZIP_LAYERWISE_H

#include "ziplora/ziprun.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ZL_LW_WEIGHT_CALIBRATED = 0, /* w from a full gradient at m = 1 */
    ZL_LW_WEIGHT_RELATIVE = 1,   /* each term divided by its target's mean square */
    ZL_LW_WEIGHT_RAW = 2,        /* w = 1 (default) */
} zl_lw_weighting;

typedef struct {
    int draws;             /* capture draws (default 4) */
    int max_tokens;        /* rows / output positions recorded per layer and forward (default 4096) */
    double capture_mb;     /* input statistics of one capture pass (default 4096 MB) */
    zl_lw_weighting weighting;
    int cal_draws;         /* calibrated: draws with a full gradient at m = 1 (default 1, <= draws) */
    double lambda_scale;   /* local λ' = params λ x this (default 1) */
    int steps;             /* local Adam steps per layer (0: the run's --steps) */
    double lr;             /* local Adam lr (0: the run's --lr) */
    int full_steps;        /* hybrid: full-mode steps after the layerwise start (default 0) */
} zl_layerwise_opts;

void zl_layerwise_opts_default(zl_layerwise_opts *o);

typedef struct {
    int passes, groups, layers;
    double capture_bytes;  /* the largest pass's input statistics */
    double group_bytes;    /* the largest single group's (a pass holds at least one group) */
    double capture_s, solve_s, full_s;
    double mean_cos;       /* mean over layers of cos(full gradient, local gradient) at m = 1 (calibrated) */
    double local_before, local_after; /* sum over layers of the local objective (weighted, λ' term included) */
} zl_layerwise_stats;

/* The mode with explicit options (zl_ziprun_mode_layerwise uses the defaults).
 * st may be NULL. */
int zl_ziprun_layerwise(zl_ziprun *r, const zl_layerwise_opts *o, zl_layerwise_stats *st);

/* ---- Pieces, for benchmarks that reuse one capture ------------------------- */
typedef struct zl_lw zl_lw;
/* Plan the capture of the zip of r (groups, passes) under o. */
int zl_lw_begin(zl_ziprun *r, const zl_layerwise_opts *o, zl_lw **out);
int zl_lw_passes(const zl_lw *w);
/* Run the draws of one pass, recording its layers' inputs (pass 0 also takes
 * the calibration gradients, at the mergers the zip holds: set them to 1). */
int zl_lw_capture(zl_lw *w, int pass);
/* Optimise the mergers of the layers of `pass` from its recorded statistics
 * under o (weighting, λ scale, steps, lr; the capture fields are ignored) and
 * store them in the zip of r. The statistics are kept: solve can run again. */
int zl_lw_solve(zl_lw *w, int pass, const zl_layerwise_opts *o);
void zl_lw_release(zl_lw *w, int pass);
void zl_lw_stats(const zl_lw *w, zl_layerwise_stats *st);
void zl_lw_free(zl_lw *w);

/* ---- One layer (exposed for tests) ------------------------------------------ */
/* The local problem of one layer: content and style LoRA layers (either may be
 * NULL, not both; same module shape), the input second moments C_c, C_s
 * [K, K] (K = in * kh * kw, im2col order channel-major) over tok_c, tok_s
 * tokens, a weight w per term (w_c, w_s) and λ'. m_c / m_s [in] hold the
 * starting mergers and receive the result (NULL for an absent side). Adam for
 * `steps` steps at `lr`, stopping early when the layer's similarity reaches 0.
 * *before / *after (may be NULL) receive the local objective. */
int zl_lw_layer_solve(const zl_lora_layer *lc, const zl_lora_layer *ls, const float *C_c, const float *C_s,
                      double tok_c, double tok_s, double w_c, double w_s, double lambda, int steps, double lr,
                      float *m_c, float *m_s, double *before, double *after);

#ifdef __cplusplus
}
#endif
#endif
