/* The text-to-image pipeline (diffusers' StableDiffusionXLPipeline and
 * StableDiffusionPipeline, txt2img): prompt -> text conditioning -> sampler
 * loop with classifier-free guidance over the UNet -> VAE decode -> 8-bit RGB.
 * `ziplora generate` is a thin layer over it, and other commands (zip's
 * reference images and previews) reuse it.
 *
 * What it computes, step by step (matches pipeline_io.safetensors):
 *  - conditioning: zl_text_encode_prompt for the prompt and the negative
 *    prompt. As diffusers does: SDXL with NO negative prompt (NULL) gets zero
 *    embeddings and a zero pooled vector (force_zeros_for_empty_prompt), while
 *    a given "" is encoded; SD 1.x encodes "" for NULL. SDXL time ids are
 *    (H, W, 0, 0, H, W) in pixels.
 *  - latents: noise * init_noise_sigma, the noise either given or drawn from
 *    the Philox RNG (zl_rng stream 0 of the seed), [4, H/8, W/8].
 *  - each step: ONE UNet forward of batch 2 [uncond, cond] on x * input_scale
 *    at the step's timestep; eps = eps_u + g (eps_c - eps_u); sampler step.
 *    (v-prediction models: the guided output is v, turned into the epsilon
 *    the samplers take by zl_v_to_eps; guidance_rescale, if asked, acts on
 *    the guided output before that, as diffusers does.)
 *    As diffusers, guidance runs only when g > 1; otherwise a batch-1 forward
 *    on the prompt alone.
 *  - image: decode(latent / scaling_factor) in float32 (tiled for latents
 *    larger than one VAE tile), clamp(x/2 + 0.5, 0, 1), round(255 x).
 *
 * Memory. Weights stay memory-mapped in their stored dtype. Each part (text
 * encoders, UNet, VAE) can be released once its work is done
 * (zl_pipeline_release) and is reloaded on next use, with the pipeline's LoRAs
 * applied again, so a one-shot generation holds at most one large part at a
 * time: encode, release the text encoders, sample, release the UNet, decode.
 *
 * LoRAs: every layout zl_lora_load reads. UNet layers are folded into the
 * weights (fast inference); text-encoder layers are folded into the encoders.
 * A LoRA for another family, or one naming modules the model lacks, is an
 * error that leaves the pipeline unchanged.
 *
 * Thread safety: one call at a time per pipeline. */
#ifndef ZIPLORA_PIPELINE_H
#define ZIPLORA_PIPELINE_H

#include <stdint.h>

#include "ziplora/core.h"
#include "ziplora/image.h"
#include "ziplora/lora.h"
#include "ziplora/model.h"
#include "ziplora/sample.h"
#include "ziplora/text.h"
#include "ziplora/unet.h"
#include "ziplora/vae.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zl_pipeline zl_pipeline;

typedef struct {
    /* Configs for single checkpoints whose sizes the shapes cannot tell
     * (non-standard head or group counts); NULL for released models. */
    const char *unet_config, *vae_config, *te1_config, *te2_config;
    const char *vae;             /* a separate VAE (zl_model_paths_set_vae), or NULL: the model's */
    int clip_skip;               /* A1111's "Clip skip" (zl_text_set_clip_skip); 0 or 1: default */
    zl_unet_weight_mode weights; /* default: stored dtype, widened per layer */
    zl_vae_tile_mode vae_tile;   /* default AUTO: tile latents over one tile */
    int vae_tile_size, vae_tile_overlap; /* latent cells; 0: the VAE's defaults (80, 16) */
    zl_sched_override sched;     /* changes to the model's noise schedule (zero: none) */
} zl_pipeline_opts;

/* Open the model at `model` (a diffusers folder or a single checkpoint; the
 * family is detected). Loads (maps) the UNet, the VAE and the text encoders,
 * so a missing or broken part is reported here, before any compute. opts may
 * be NULL. */
int zl_pipeline_open(const char *model, const zl_pipeline_opts *opts, zl_pipeline **out);
void zl_pipeline_free(zl_pipeline *p);

zl_family zl_pipeline_family(const zl_pipeline *p);
/* The noise schedule sampling uses: the model's (zl_model_paths.sched) with the
 * opts' changes. */
const zl_sched_config *zl_pipeline_sched(const zl_pipeline *p);
const zl_model_paths *zl_pipeline_paths(const zl_pipeline *p);
const zl_unet_config *zl_pipeline_unet_config(const zl_pipeline *p);
/* Pixels per latent cell (8 for SD). */
int zl_pipeline_vae_scale(const zl_pipeline *p);
/* The model's native image size: UNet sample_size * VAE scale (1024 SDXL, 512 SD 1.5). */
void zl_pipeline_native_size(const zl_pipeline *p, int *width, int *height);
/* Check that width x height is a size this model can generate: positive,
 * a multiple of the VAE scale (8) and of the UNet's downsampling. ZL_EINVAL
 * with a message saying which multiple is needed. */
int zl_pipeline_check_size(const zl_pipeline *p, int width, int height);

/* The parts, loaded on demand (NULL with the error set if loading fails).
 * Callers may attach runtime LoRA branches to the UNet (zip previews); those
 * are not re-applied after a release. */
zl_unet *zl_pipeline_unet(zl_pipeline *p);
zl_vae *zl_pipeline_vae(zl_pipeline *p);
zl_text *zl_pipeline_text(zl_pipeline *p);

/* Load a LoRA file (any layout; adapter_config for PEFT may be NULL) for this
 * model and add it with `weight`. The pipeline owns the loaded LoRA. The error
 * names the file. */
int zl_pipeline_load_lora(zl_pipeline *p, const char *path, float weight, const char *adapter_config);
/* Add an in-memory LoRA (borrowed: it must outlive the pipeline, since it is
 * re-applied whenever a released part is reloaded). */
int zl_pipeline_add_lora(zl_pipeline *p, const zl_lora *lora, float weight);
/* A textual-inversion embedding (zl_text_load_embedding): `trigger` in a prompt
 * stands for its vectors. The text encoders are loaded now, so a bad file fails
 * here; the embedding stays with the pipeline across releases of the text part. */
int zl_pipeline_add_embedding(zl_pipeline *p, const char *path, const char *trigger, int *n_vectors);

typedef enum {
    ZL_PIPE_TEXT = 1,
    ZL_PIPE_UNET = 2,
    ZL_PIPE_VAE = 4,
} zl_pipeline_part;
/* Free the parts in `mask`; they are reloaded when next needed. */
void zl_pipeline_release(zl_pipeline *p, unsigned mask);

/* Conditioning for classifier-free guidance. */
typedef struct {
    int D, P;        /* context width, pooled width (0 for SD 1.x) */
    float *embeds;   /* [2, T, D]: [negative, prompt] */
    float *pooled;   /* [2, P] (SDXL), else NULL */
    int T;           /* tokens per half: 77, or 77 k for long prompts (0 counts as 77) */
} zl_cond;

/* Encode `prompt` and `negative` (NULL: none given; see the header comment
 * for SDXL's zeros). Text must be UTF-8. */
int zl_pipeline_encode(zl_pipeline *p, const char *prompt, const char *negative, zl_cond *out);
/* The same without the 75-token limit: both prompts in A1111's chunks of 75
 * tokens (zl_text_encode_prompt_long), the shorter padded with empty chunks to
 * the longer's count k, so out->T = 77 k. Prompts of up to 75 tokens give
 * exactly zl_pipeline_encode's result. */
int zl_pipeline_encode_long(zl_pipeline *p, const char *prompt, const char *negative, int emphasis, zl_cond *out);
void zl_cond_free(zl_cond *c);

typedef struct {
    int width, height;          /* pixels (0: the model's native size) */
    int steps;                  /* >= 1 */
    float cfg;                  /* guidance scale g; g <= 1 runs the prompt alone */
    zl_sampler_kind sampler;
    zl_sigma_schedule sigmas;   /* default or Karras */
    uint64_t seed;              /* initial noise (unless given) and Euler-a noise */
    const float *initial_noise; /* [4, h, w] standard normal noise, or NULL: Philox(seed, stream 0) */
    int progress;               /* show a progress bar on stderr */
    const char *progress_label; /* NULL: "sampling" */
    const zl_sched_config *sched; /* the model's noise schedule and prediction type; NULL: the SD/SDXL
                                     default (epsilon) for zl_txt2img_sample, the pipeline's for
                                     zl_pipeline_sample / zl_pipeline_generate */
    const float *init_latent;   /* img2img: the start image's latent [4, h, w] (zl_pipeline_encode_image),
                                   or NULL: txt2img */
    double strength;            /* img2img: the share of the schedule that is run, in (0, 1]; as
                                   diffusers' img2img: the last int(steps * strength) steps, from
                                   init_latent + noise * sigma of the first of them */
    float cfg_rescale;          /* diffusers' guidance_rescale phi (Lin et al. 2023, Sec. 3.4): after
                                   guidance, out = phi out std(cond)/std(out) + (1 - phi) out, std
                                   over each sample; 0: none */
} zl_gen_params;

/* img2img's start: `image` scaled to cover width x height and centre-cropped
 * (zl_image_fit, area filter), VAE-encoded, latent mean * scaling factor ->
 * latent [4, height / s, width / s]. */
int zl_pipeline_encode_image(zl_pipeline *p, const zl_image *image, int width, int height, float *latent);

/* Run the sampler loop with `unet` (any zl_unet: the pipeline's or one with
 * runtime branches) from noise to the final latent [4, h, w], h = height / s.
 * `scale` is the VAE scale s (pixels per latent cell). */
int zl_txt2img_sample(zl_unet *unet, int scale, const zl_cond *c, const zl_gen_params *g, float *latent);
/* The same with the pipeline's UNet (width/height 0 = native). */
int zl_pipeline_sample(zl_pipeline *p, const zl_cond *c, const zl_gen_params *g, float *latent);

/* Hires fix's "Latent" upscaler (AUTOMATIC1111): x [C, h, w] -> y [C, h2, w2] by bilinear
 * interpolation as torch's F.interpolate(mode="bilinear", align_corners=False, no antialias)
 * with an output size: source coordinate (i + 0.5) h / h2 - 0.5, clamped to the edges. */
int zl_latent_resize_bilinear(const float *x, int C, int h, int w, float *y, int h2, int w2);

/* latent [4, h, w] (as sampled, before 1/scaling_factor) -> image [3, h*s, w*s]
 * in [-1, 1] (may be NULL) and/or an 8-bit RGB image (may be NULL; free with
 * zl_image_free). */
int zl_pipeline_decode(zl_pipeline *p, const float *latent, int h, int w, float *image, zl_image *img);

/* Everything at once for one image: encode, sample, decode. latent (may be
 * NULL) receives the final latent [4, h, w]. Parts stay loaded. */
int zl_pipeline_generate(zl_pipeline *p, const char *prompt, const char *negative, const zl_gen_params *g,
                         float *latent, zl_image *img);

#ifdef __cplusplus
}
#endif
#endif
