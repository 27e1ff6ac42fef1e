/* `ziplora zip` and `ziplora eval-merge` as a library: the end-to-end ZipLoRA
 * driver. Given a model, a subject (content) LoRA and a style LoRA it
 * prepares the inputs (prompts from flags or LoRA metadata, reference latents
 * from images or generated with each LoRA alone, or everything verbatim from a
 * --fixed-inputs file), runs an optimisation MODE over the mergers of zip.h,
 * and writes the merged standard LoRA (rank r_c + r_s, through zl_lora_merge),
 * the mergers, a JSON report, an SVG plot and a preview grid. Every output is
 * written to a temporary sibling first and renamed only once all of them
 * exist, so a failure leaves none.
 *
 * Draws. Step k of the optimisation uses draw k: ONE shared noise (Philox
 * stream ZL_ZIPRUN_STREAM_NOISE + k of the seed) and ONE shared integer
 * timestep t = floor(1000 u), u uniform from stream ZL_ZIPRUN_STREAM_T + k,
 * for both branches; reference latent k mod n of each side (round-robin);
 * x = DDPM add_noise(ref, noise, t). The targets are each LoRA alone on its
 * own input with its own text-encoder part (its conditioning); the merged
 * branch gets the merged text encoders' conditioning. eval-merge's held-out
 * draws use the same rule with ZL_ZIPRUN_HELDOUT added to the stream.
 *
 * Modes are pluggable: a mode is a function that drives the zl_zip of a run
 * (zl_ziprun_mode_fn), reading draws with zl_ziprun_draw and reporting every
 * evaluated step with zl_ziprun_step. "full" (the paper's objective through
 * the whole UNet, zl_ziprun_mode_full) is built in; "layerwise" is
 * zl_ziprun_mode_layerwise in src/lora/zip_layerwise.c (zip_layerwise.h), and
 * "auto" chooses between them from a time estimate. */
#ifndef ZIPLORA_ZIPRUN_H
#define ZIPLORA_ZIPRUN_H

#include <stdint.h>

#include "ziplora/lora.h"
#include "ziplora/unet.h"
#include "ziplora/zip.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ZL_ZIPRUN_STREAM_NOISE 0x5A000000ull /* + draw index: shared noise */
#define ZL_ZIPRUN_STREAM_T 0x5B000000ull     /* + draw index: shared timestep */
#define ZL_ZIPRUN_HELDOUT 0x01000000ull      /* added for eval-merge's held-out draws */

/* Everything a run reads. Zero/NULL fields take the documented defaults
 * (zl_ziprun_params_default sets them explicitly). */
typedef struct {
    const char *model;                      /* diffusers folder or single checkpoint */
    const char *vae;                        /* a separate VAE (zl_model_paths_set_vae), or NULL: the model's */
    int clip_skip;                          /* A1111's "Clip skip" for every prompt (0 or 1: default) */
    zl_sched_override sched;                /* changes to the model's noise schedule / prediction type
                                               (zero: the model's); used for the training draws, the
                                               references and the previews */
    const char *content, *style;            /* the two LoRA files */
    const char *content_adapter, *style_adapter; /* PEFT adapter_config.json (optional) */
    const char *content_prompt, *style_prompt;   /* NULL: from LoRA metadata (zl_ziprun_default_prompt) */
    const char *const *extra_loras;         /* further LoRAs loaded for the model with the two (eval-merge's
                                               candidates), so a bad one fails before any compute */
    int n_extra_loras;
    const char *const *content_images;      /* reference images (PNG/JPEG), or none: generated */
    int n_content_images;
    const char *const *style_images;
    int n_style_images;
    int ref_count;                          /* generated references per LoRA (default 2) */
    int ref_steps;                          /* sampler steps per generated reference (default 20) */
    float ref_cfg;                          /* guidance for references and previews (0: 5 SDXL, 7.5 SD1) */
    uint64_t seed;                          /* draws, references, previews */
    int steps;                              /* Adam steps, >= 1 (default 100) */
    double lr, lambda;                      /* 0.01, 0.01 */
    int resolution;                         /* pixels; 0: the model's native size */
    const char *fixed_inputs;               /* zip_io-style safetensors: inputs used verbatim */
    const char *mode;                       /* "auto" (default), "full", "layerwise" */
    double budget_s;                        /* auto: full mode if its estimate fits (default 1800) */
    zl_unet_grad_mode grad_mode;            /* default RECOMPUTE */
    int lw_draws;                           /* layerwise: capture draws (0: default 4) */
    double lw_capture_mb;                   /* layerwise: statistics per capture pass (0: default 4096 MB) */
    int lw_full_steps;                      /* layerwise: full-mode steps after the local solves (default 0) */
    const char *init_mergers;               /* start from these mergers (zl_mergers_load) instead of 1 */
    /* outputs (NULL: not written, except output which is required for zip) */
    const char *output;                     /* merged LoRA */
    zl_lora_format format;                  /* kohya (default) or peft */
    zl_dtype dtype;                         /* ZL_DT_INVALID: the inputs' common dtype */
    const char *mergers_out;
    const char *report;                     /* JSON */
    const char *plot;                       /* SVG */
    float style_scale;                      /* w_s on the style half of the output (default 1) */
    int preview;                            /* rows of the preview grid (0: none) */
    const char *preview_out;                /* PNG (default: OUT without .safetensors + ".preview.png") */
    int preview_steps;                      /* 0: ref_steps */
    int infer_precision;                    /* zl_matmul_precision of the generated references and
                                               previews (0: F32; BF16 and BF16X3 run on AMX where the
                                               CPU has it); the optimisation and every measurement
                                               stay float32 */
    int progress;                           /* progress bars on stderr */
} zl_ziprun_params;

void zl_ziprun_params_default(zl_ziprun_params *p);

/* The prompt a LoRA's metadata suggests: modelspec.trigger_phrase when set,
 * else the tag with the highest total count in kohya's ss_tag_frequency
 * ({dataset: {tag: count}}, counts summed over datasets; ties go to the tag
 * first in byte order), else ZL_ENOTFOUND. *out is malloc'd. */
int zl_ziprun_default_prompt(const zl_lora *l, char **out);

/* Run `ziplora zip`: everything above, outputs included. */
int zl_zip_run(const zl_ziprun_params *p);

/* ---- Modes ------------------------------------------------------------------ */
typedef struct zl_ziprun zl_ziprun;

/* A mode optimises the mergers of zl_ziprun_zip(r) for at most params->steps
 * steps, calling zl_ziprun_step after each evaluation; the driver writes the
 * outputs from the zip's mergers when it returns ZL_OK. */
typedef int (*zl_ziprun_mode_fn)(zl_ziprun *r);

/* One draw: the merged branch's inputs (merged conditioning) and the targets
 * (each LoRA alone on its input with its own conditioning). Valid until the
 * next zl_ziprun_draw. */
typedef struct {
    zl_unet_input xc, xs;           /* merged-branch inputs */
    zl_unet_input tc, ts;           /* the same latents with the target conditioning */
    const float *target_c, *target_s; /* [B, C, H, W] */
    int timestep;                   /* the shared timestep (-1: given by a fixed-inputs file) */
} zl_ziprun_draw_t;

zl_unet *zl_ziprun_unet(zl_ziprun *r);
zl_zip *zl_ziprun_zip(zl_ziprun *r);
const zl_lora *zl_ziprun_lora(zl_ziprun *r, int side); /* 0 content, 1 style */
const zl_ziprun_params *zl_ziprun_get_params(const zl_ziprun *r);
/* Draw k (computes the targets; with fixed inputs every k gives the file's inputs). */
int zl_ziprun_draw(zl_ziprun *r, int k, zl_ziprun_draw_t *d);
/* Record an evaluation made before Adam step `step` (0-based; step == steps
 * done means after the last one): appends to the loss curve, updates the
 * progress bar, and checks the loss, every merger and (with_grad) every
 * gradient for non-finite values, naming the first bad layer (ZL_ENUMERIC).
 * *stop (may be NULL) is set when the similarity term has reached 0. */
int zl_ziprun_step(zl_ziprun *r, int step, const zl_zip_loss *loss, int with_grad, int *stop);
/* Note a line for the report's "mode_notes" (what a mode did, and why). */
int zl_ziprun_note(zl_ziprun *r, const char *text);
/* A mode that honoured a graceful stop (zl_stop_requested, fileio.h) says so:
 * the driver then writes the outputs from the mergers so far and marks the
 * report "interrupted". */
void zl_ziprun_set_interrupted(zl_ziprun *r);
int zl_ziprun_interrupted(const zl_ziprun *r);

/* The built-in full mode: each step, draw k -> zl_zip_eval with gradients ->
 * Adam; stops early when the similarity reaches 0; one last evaluation (draw
 * `steps`) after the final step. */
int zl_ziprun_mode_full(zl_ziprun *r);
/* The layerwise mode (src/lora/zip_layerwise.c, zip_layerwise.h), with the
 * params' lw_* settings over zl_layerwise_opts_default. */
int zl_ziprun_mode_layerwise(zl_ziprun *r);

/* ---- eval-merge ------------------------------------------------------------- */
typedef struct {
    char *label;          /* "direct", or the merged file's path */
    double loss_content;  /* mean over draws of mse(f_m(x_c), f_c(x_c)) */
    double loss_style;    /* mean over draws of mse(f_m(x_s), f_s(x_s)) */
    double total;         /* loss_content + loss_style */
    double seconds;
} zl_eval_row;

/* The first two terms of the objective on `samples` held-out draws, the same
 * draws for every candidate: each merged LoRA (folded, as any tool would load
 * it) and, with direct, the direct merge (both LoRAs folded at weight 1).
 * Inputs (prompts, images or generated references, fixed inputs, seed,
 * resolution) come from p as for zl_zip_run. *rows: malloc'd, *n_rows rows. */
int zl_zip_eval_merge(const zl_ziprun_params *p, const char *const *merged, int n_merged, int direct, int samples,
                   zl_eval_row **rows, int *n_rows);
void zl_eval_rows_free(zl_eval_row *rows, int n);

#ifdef __cplusplus
}
#endif
#endif
