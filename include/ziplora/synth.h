/* Synthetic models: random weights at the real shapes, written exactly as a
 * diffusers pipeline folder is laid out (model_index.json, unet/, vae/,
 * text_encoder/, text_encoder_2/ with their config.json files), plus random
 * LoRAs in the canonical in-memory form. They exist so that benchmarks and
 * users can run the whole pipeline at SDXL / SD 1.5 size without downloading
 * anything; their outputs are noise, but every shape, byte count and FLOP is
 * the real model's.
 *
 * Values: Linear/conv weights N(0, 1/fan_in) (fan_in = in * kh * kw), so each
 * layer keeps unit-scale activations; norm weights 1, biases 0; token
 * embeddings N(0, 0.02^2), position embeddings N(0, 0.01^2) (CLIP's init);
 * position_ids the I64 arange real transformers 4.26 files carry. Tensor i of
 * a part draws from Philox stream (part << 32 | i) of the seed, so a file's
 * bytes depend only on (config, dtype, seed), never on the thread count.
 *
 * Files are written streaming (one tensor in memory at a time) and atomically;
 * a part whose files are already complete (every tensor with its shape and
 * dtype, the same seed in the metadata, the same config.json) is kept, so a
 * benchmark can call zl_synth_model every time it starts. */
#ifndef ZIPLORA_SYNTH_H
#define ZIPLORA_SYNTH_H

#include "ziplora/core.h"
#include "ziplora/lora.h"
#include "ziplora/model.h"
#include "ziplora/vae.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ZL_SYNTH_UNET = 1,
    ZL_SYNTH_TE1 = 2,  /* CLIP-L: text_encoder/ */
    ZL_SYNTH_TE2 = 4,  /* OpenCLIP bigG: text_encoder_2/ (SDXL only) */
    ZL_SYNTH_VAE = 8,
    ZL_SYNTH_ALL = 15, /* every part the family has */
} zl_synth_part;

typedef struct {
    zl_family family;            /* ZL_FAMILY_SDXL (base 1.0) or ZL_FAMILY_SD1 (1.5): the standard configs */
    unsigned parts;              /* ZL_SYNTH_* mask; 0 = ZL_SYNTH_ALL. TE2 is ignored for SD1 */
    zl_dtype dtype;              /* F16 (also when ZL_DT_INVALID), BF16 or F32 */
    uint64_t seed;
    /* Optional overrides of the family's standard configs (small test models). */
    const zl_unet_config *unet;
    const zl_clip_config *te1, *te2;
    const zl_vae_config *vae;
} zl_synth_opts;

/* Write (or reuse) a synthetic diffusers folder at `dir` (created if needed).
 * Checks free space first and refuses with a message giving the bytes needed.
 * *written (may be NULL) receives the mask of parts actually (re)written. */
int zl_synth_model(const char *dir, const zl_synth_opts *opts, unsigned *written);

/* Every tensor one part's weights file holds (exactly one bit of `part`), in
 * file order: diffusers / transformers names, shapes and dtypes (opts->dtype for
 * weights, I64 for position_ids). */
typedef void (*zl_synth_list_fn)(void *ctx, const char *name, zl_dtype dtype, int ndim, const int64_t *shape);
int zl_synth_list(const zl_synth_opts *opts, unsigned part, zl_synth_list_fn cb, void *ctx);

/* The config.json text a part is written with (malloc'd, NUL-terminated). For
 * the standard configs these carry the same values as the released models'. */
int zl_synth_config_json(const zl_synth_opts *opts, unsigned part, char **out);

/* Bytes the weights file of `part` holds (tensor data only). */
int64_t zl_synth_part_bytes(const zl_synth_opts *opts, unsigned part);

/* Which UNet layers a synthetic LoRA covers. */
typedef enum {
    ZL_SYNTH_LORA_ATTN = 1,    /* attn1/attn2 to_q, to_k, to_v, to_out.0 (the usual DreamBooth LoRA) */
    ZL_SYNTH_LORA_FF_PROJ = 2, /* ff.net.0.proj, ff.net.2, proj_in, proj_out */
    ZL_SYNTH_LORA_CONV = 4,    /* resnet conv1 / conv2 as 3x3 LoCon */
} zl_synth_lora_target;

typedef struct {
    unsigned targets; /* ZL_SYNTH_LORA_* mask (0: ATTN) */
    int rank;         /* 0: 16 */
    float alpha;      /* 0: rank (scale 1) */
    float up_std;     /* output scale of the delta relative to the layer's: up ~ N(0, (up_std^2)/rank); 0: 0.3 */
    uint64_t seed;
} zl_synth_lora_opts;

/* A random UNet LoRA for `cfg` (down N(0, 1/fan_in), up as above), canonical
 * form, layers sorted; free with zl_lora_free. */
int zl_synth_lora(const zl_unet_config *cfg, const zl_synth_lora_opts *opts, zl_lora **out);

#ifdef __cplusplus
}
#endif
#endif
