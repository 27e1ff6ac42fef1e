/* Model families, UNet configs, and where a model's parts live on disk.
 * A UNet config comes from a diffusers unet/config.json, from a single
 * file's key shapes, or from the built-in standard configs (SDXL base,
 * SD 1.5). Everything downstream (name tables, the UNet) is built from it. */
#ifndef ZIPLORA_MODEL_H
#define ZIPLORA_MODEL_H

#include "ziplora/core.h"
#include "ziplora/sample.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { ZL_FAMILY_UNKNOWN = 0, ZL_FAMILY_SDXL = 1, ZL_FAMILY_SD1 = 2 } zl_family;
const char *zl_family_name(zl_family f); /* "sdxl", "sd1", "unknown" */

#define ZL_MAX_LEVELS 8

typedef enum { ZL_BLOCK_PLAIN = 0, ZL_BLOCK_CROSSATTN = 1 } zl_block_type;

typedef struct {
    zl_family family;
    int in_channels, out_channels;
    int n_levels;
    int block_out_channels[ZL_MAX_LEVELS];
    int layers_per_block;                      /* resnets per down level; up levels have +1 */
    zl_block_type down_types[ZL_MAX_LEVELS];   /* down_blocks[i] */
    zl_block_type up_types[ZL_MAX_LEVELS];     /* up_blocks[i] (up_blocks[0] is the deepest) */
    int transformer_depth[ZL_MAX_LEVELS];      /* per down level; up level i uses reversed */
    int transformer_depth_mid;
    int heads[ZL_MAX_LEVELS];                  /* head COUNT per down level */
    int cross_attention_dim;
    int norm_num_groups;
    float norm_eps;                            /* resnets: 1e-5 */
    int use_linear_projection;                 /* SDXL: linear proj_in/out; SD1: conv 1x1 */
    int has_text_time;                         /* SDXL addition_embed_type "text_time" */
    int addition_time_embed_dim;               /* 256 for SDXL */
    int projection_class_embeddings_input_dim; /* 2816 for SDXL */
    int time_embed_dim;                        /* 4 * block_out_channels[0] */
    int flip_sin_to_cos;
    float freq_shift;
    int sample_size;                           /* latent size (128 SDXL, 64 SD1) */
} zl_unet_config;

/* Parse a diffusers unet/config.json (file path). */
int zl_unet_config_load(const char *json_path, zl_unet_config *cfg);
/* Parse from a JSON string (label names it in errors). */
int zl_unet_config_parse(const char *json, const char *label, zl_unet_config *cfg);
/* Built-in standard configs. */
void zl_unet_config_sdxl_base(zl_unet_config *cfg);
void zl_unet_config_sd15(zl_unet_config *cfg);

/* Text encoder config (CLIP). */
typedef struct {
    int hidden, intermediate, heads, layers, max_pos, vocab, projection_dim;
    int quick_gelu;        /* 1: x*sigmoid(1.702x) (CLIP-L); 0: exact GELU (bigG) */
    int has_projection;    /* CLIPTextModelWithProjection */
    float eps;
} zl_clip_config;

/* Locations of a model's parts. M is a diffusers folder (model_index.json,
 * unet/, vae/, text_encoder, text_encoder_2) or a single .safetensors checkpoint. */
typedef struct {
    int single_file;
    char *root;              /* the path given */
    char *unet_weights;      /* diffusers: unet/diffusion_pytorch_model[.fp16].safetensors; single: root */
    char *unet_config;       /* diffusers: unet/config.json; single: NULL (inferred) */
    char *te1_weights, *te1_config;  /* CLIP-L (NULL if absent) */
    char *te2_weights, *te2_config;  /* bigG (SDXL only) */
    char *vae_weights, *vae_config;
    zl_family family;
    /* The noise schedule: diffusers' scheduler/scheduler_config.json
     * (num_train_timesteps, beta_start/end, steps_offset, prediction_type,
     * rescale_betas_zero_snr, timestep_spacing); single checkpoints: the
     * default, with v-prediction for a 'v_pred' key and zero terminal SNR
     * (with trailing spacing, which it needs) for a 'ztsnr' key, as ComfyUI and
     * reForge read those markers. */
    zl_sched_config sched;
} zl_model_paths;

int zl_model_paths_resolve(const char *model, zl_model_paths *out);
/* Use a separate VAE instead of the model's: a diffusers vae folder (weights and
 * config.json), a diffusers VAE weights file (its folder's config.json is used), a
 * standalone VAE file (ldm or diffusers names) or another checkpoint's
 * first_stage_model. */
int zl_model_paths_set_vae(zl_model_paths *p, const char *vae);
void zl_model_paths_free(zl_model_paths *p);

#ifdef __cplusplus
}
#endif
#endif
