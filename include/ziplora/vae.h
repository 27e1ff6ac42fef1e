/* The Stable Diffusion VAE (diffusers AutoencoderKL) on the CPU, float32.
 *
 * Weights come from a diffusers vae/ safetensors file (current names, or the
 * old attention names query/key/value/proj_attn), from a single-file
 * checkpoint (first_stage_model.* with ldm names: encoder.down.N.block.M,
 * mid.attn_1.{norm,q,k,v,proj_out} as 1x1 convs or 2-D, decoder.up.N in the
 * reverse order of diffusers' up_blocks, nin_shortcut), or from a standalone
 * ldm VAE file (the same names without the prefix). Weights stay in their
 * stored dtype and are widened per layer; norms and biases are resident.
 *
 * Config: from vae/config.json when given; a single file's shapes give every
 * size except the GroupNorm group count, which follows the real models (32);
 * widths that are not multiples of 32 need the config. scaling_factor: from
 * the config, else by family (0.13025 SDXL, 0.18215 SD1).
 *
 * Encode and decode take no scaling factor (as vae_io.safetensors): callers
 * multiply latents by scaling_factor after encoding and divide before decoding.
 *
 * Tiled decode: a large latent is decoded in overlapping tiles, blended with
 * linear ramps across the overlaps, so that a 1024 px decode needs a fraction
 * of the memory. GroupNorm statistics are then per tile, so a tiled decode is
 * close to, not equal to, the untiled one (diffusers' enable_vae_tiling has the
 * same property). By default (ZL_VAE_TILE_AUTO) latents whose sides both fit
 * in one tile are decoded exactly, untiled. */
#ifndef ZIPLORA_VAE_H
#define ZIPLORA_VAE_H

#include "ziplora/core.h"
#include "ziplora/image.h"
#include "ziplora/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int in_channels, out_channels, latent_channels;
    int n_levels;
    int block_out_channels[ZL_MAX_LEVELS];
    int layers_per_block;  /* encoder resnets per level; the decoder has one more */
    int norm_num_groups;
    float scaling_factor;
    int sample_size;       /* pixels, informational */
} zl_vae_config;

/* Parse a diffusers vae/config.json (AutoencoderKL). */
int zl_vae_config_load(const char *json_path, zl_vae_config *cfg);
int zl_vae_config_parse(const char *json, const char *label, zl_vae_config *cfg);
/* The SD/SDXL VAE: [128, 256, 512, 512], 2 layers, 32 groups, latent 4; scaling by family. */
void zl_vae_config_standard(zl_vae_config *cfg, zl_family family);

typedef struct zl_vae zl_vae;

typedef struct {
    const zl_vae_config *config; /* use this config (else config_path, else inferred) */
    const char *config_path;     /* a diffusers vae/config.json */
    zl_family family;            /* for scaling_factor when no config says it (0: SDXL if unknown) */
} zl_vae_load_opts;

/* Load from a weights file (diffusers vae safetensors, single-file checkpoint,
 * or standalone ldm VAE). Every tensor must be present with the right shape. */
int zl_vae_load(const char *weights_path, const zl_vae_load_opts *opts, zl_vae **out);
/* Load the VAE of a resolved model: its vae/config.json for a folder. */
int zl_vae_load_model(const zl_model_paths *paths, const zl_vae_load_opts *opts, zl_vae **out);
void zl_vae_free(zl_vae *v);
const zl_vae_config *zl_vae_get_config(const zl_vae *v);
/* Pixels per latent cell: 2^(n_levels - 1) (8 for SD). */
int zl_vae_scale(const zl_vae *v);

/* image [B, in_channels, H, W] in [-1, 1] -> mean, logvar [B, latent, H/s, W/s]
 * (logvar clamped to [-30, 20]). H and W must be multiples of s = zl_vae_scale.
 * Encode and decode compute in float32 under ZL_MATMUL_BF16X3 (faster here
 * than three tile products); ZL_MATMUL_BF16 applies. */
int zl_vae_encode(zl_vae *v, const float *image, int B, int H, int W, float *mean, float *logvar);

/* Pipeline helpers around the scaling factor (sdxl.md "Images"):
 * decode_images: images[b] = round(255 * clamp(decode(latents[b] / scaling) / 2 + 0.5, 0, 1)),
 *   latents [B, latent, h, w]; the caller frees each image (zl_image_free).
 * encode_image: latent [latent, H/s, W/s] = mean(encode(image)) * scaling. */
int zl_vae_decode_images(zl_vae *v, const float *latents, int B, int h, int w, zl_image *images);
int zl_vae_encode_image(zl_vae *v, const zl_image *image, float *latent);

typedef enum {
    ZL_VAE_TILE_AUTO = 0, /* tile only latents larger than one tile */
    ZL_VAE_TILE_OFF = 1,  /* always exact */
    ZL_VAE_TILE_ON = 2,   /* always tile (a latent within one tile is still one exact tile) */
} zl_vae_tile_mode;

/* Tile size and overlap in latent cells (defaults 80 and 16: a 1024 px SDXL
 * decode is 4 tiles of 640 px). overlap < tile. */
int zl_vae_set_tiling(zl_vae *v, zl_vae_tile_mode mode, int tile, int overlap);

/* z [B, latent, h, w] -> image [B, out_channels, h*s, w*s] (not clamped). */
int zl_vae_decode(zl_vae *v, const float *z, int B, int h, int w, float *image);

/* Every tensor the loader expects for `cfg`, in load order, as the file names
 * it: ldm_layout 0 = diffusers names (attention projections [C, C]); 1 = the
 * single-file names under first_stage_model. (attention as [C, C, 1, 1]).
 * Used to check the name tables against real checkpoints' key lists. */
int zl_vae_list_tensors(const zl_vae_config *cfg, int ldm_layout,
                        void (*cb)(void *ctx, const char *name, int ndim, const int64_t *shape), void *ctx);

/* The tiler on its own: `fn` maps a latent tile [C, th, tw] to [Cout, th*s, tw*s].
 * Tiles of `tile` cells overlapping by at least `overlap` cover z [C, h, w];
 * the outputs are blended into out [Cout, h*s, w*s] with weights that ramp
 * linearly across each interior overlap (s*overlap pixels) and are normalised
 * to sum to one. A pointwise fn therefore gives exactly its untiled result. */
typedef int (*zl_vae_tile_fn)(void *ctx, const float *z_tile, int th, int tw, float *out_tile);
int zl_vae_tiled_apply(zl_vae_tile_fn fn, void *ctx, const float *z, int C, int h, int w, int Cout, int s, int tile,
                       int overlap, float *out);

#ifdef __cplusplus
}
#endif
#endif
