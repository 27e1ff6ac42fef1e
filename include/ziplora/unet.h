/* The Stable Diffusion UNet (diffusers UNet2DConditionModel, SDXL and SD 1.x
 * families) on the CPU, with LoRAs applied either folded into the weights or
 * as runtime branches carrying per-input-feature mergers.
 *
 * Weights. A UNet is loaded from a diffusers unet/ safetensors file (module
 * names as diffusers writes them) or from a single-file checkpoint
 * (model.diffusion_model.* with ldm names, translated through the name tables
 * of src/models/names.h). Weights stay views into the mapped file in their
 * stored dtype (F16/BF16/F32) and are widened per layer into one reusable
 * scratch buffer (ZL_UNET_WEIGHTS_STORED, the default), or are all widened to
 * resident float32 copies once at load (ZL_UNET_WEIGHTS_F32: more memory, no
 * per-forward conversion). Norm parameters and biases are always resident.
 *
 * Config. From a diffusers config.json when one is given (always preferred),
 * else inferred from a single file's key shapes (zl_unet_config_infer):
 * levels, channels, layers per block, block types, transformer depths, the
 * context width, linear vs conv projections and the added embedding come from
 * shapes. Head counts and the GroupNorm group count cannot be read from shapes:
 * the rule is SDXL family -> head_dim 64 (heads = C/64), SD1 family -> 8 heads,
 * groups 32. SDXL's addition_time_embed_dim is (added input - pooled) / 6 with
 * the pooled width from bigG's text_projection in the same file (else 256). A file whose shapes equal
 * the standard SDXL base or SD 1.5 UNet gets exactly the built-in config. For a
 * non-standard single file, pass the diffusers config of the same model.
 *
 * LoRAs. zl_unet_add_lora attaches one LoRA (a "slot" k) with a user weight w_k:
 *  - ZL_UNET_LORA_FOLD: W' = W + w_k * s_k * up_k @ down_k (convs reshaped to
 *    [out, in*kh*kw]) written into resident float32 copies of only the touched
 *    weights. Fast for inference; mergers cannot change afterwards.
 *  - ZL_UNET_LORA_RUNTIME: y = W x + sum_k w_k s_k B_k (A_k (m_k ⊙ x)), with a
 *    merger m_k per input feature (Linear in_features; for a conv the input
 *    channels, scaling x's channels before the down conv, which keeps the
 *    layer's stride and padding; up is 1x1). Mergers start at 1 and are set with
 *    zl_unet_set_merger. Each branch is per-layer state (src/models/unet_internal.h)
 *    so that the ZipLoRA backward can read its saved inputs and accumulate dL/dm.
 *    The forward is a sequence of block functions with explicit inputs, and a
 *    per-block hook (zl_unet_hook, internal) hands each block's input to a
 *    backward that keeps or checkpoints them.
 * s_k = alpha/rank of each layer. A runtime-mode zl_lora must outlive the UNet
 * (branches point at its A/B); a folded one may be freed after adding.
 *
 * Thread safety: one forward at a time per zl_unet (it owns its scratch). */
#ifndef ZIPLORA_UNET_H
#define ZIPLORA_UNET_H

#include "ziplora/core.h"
#include "ziplora/lora.h"
#include "ziplora/model.h"
#include "ziplora/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zl_unet zl_unet;

typedef enum {
    ZL_UNET_WEIGHTS_STORED = 0, /* mmap views, widened per layer into a scratch */
    ZL_UNET_WEIGHTS_F32 = 1,    /* every weight widened once to resident float32 */
} zl_unet_weight_mode;

typedef struct {
    const zl_unet_config *config; /* use this config (else config_path, else inferred) */
    const char *config_path;      /* a diffusers unet/config.json */
    zl_unet_weight_mode weights;
} zl_unet_load_opts;

/* Load from a weights file: a diffusers unet safetensors or a single-file
 * checkpoint (detected by its model.diffusion_model.* keys). Every expected
 * tensor must be present with the shape the config implies. opts may be NULL. */
int zl_unet_load(const char *weights_path, const zl_unet_load_opts *opts, zl_unet **out);
/* Load the UNet of a resolved model (zl_model_paths_resolve): its unet/config.json
 * for a folder, unless opts gives a config. */
int zl_unet_load_model(const zl_model_paths *paths, const zl_unet_load_opts *opts, zl_unet **out);
void zl_unet_free(zl_unet *u);
const zl_unet_config *zl_unet_get_config(const zl_unet *u);
/* Width of text_embeds the SDXL added embedding expects (0 for SD1). */
int zl_unet_pooled_dim(const zl_unet *u);

/* Infer a UNet config from the key shapes of a checkpoint. `prefix` is prepended
 * to ldm names ("model.diffusion_model."). The rule for what shapes cannot say
 * is in the comment at the top of this header. */
int zl_unet_config_infer(const zl_st_file *f, const char *prefix, zl_unet_config *cfg);

typedef enum {
    ZL_UNET_LORA_FOLD = 0,
    ZL_UNET_LORA_RUNTIME = 1,
} zl_unet_lora_mode;

/* Attach the UNet layers of `lora` with weight w. A LoRA of another family, or
 * a layer naming a module this UNet lacks or with mismatched shapes, is an
 * error and leaves the UNet unchanged. *slot (may be NULL) receives the slot
 * index k used by zl_unet_set_merger. Text-encoder layers are ignored. */
int zl_unet_add_lora(zl_unet *u, const zl_lora *lora, float w, zl_unet_lora_mode mode, int *slot);
/* Set the merger m_k [n] of a runtime branch (n = the layer's input features). */
int zl_unet_set_merger(zl_unet *u, int slot, const char *module, const float *m, int n);
/* Remove every LoRA (folded weights are restored from the stored ones). */
int zl_unet_clear_loras(zl_unet *u);
/* Free the weights packed for bfloat16 products (ZL_MATMUL_BF16 packs them at
 * their second use); a later bfloat16 forward packs again. */
void zl_unet_release_packed(zl_unet *u);
/* The weight of a Linear or conv module (diffusers name) as it stands, widened to f32 into
 * dst [out * in * kh * kw] (n must be that size). */
int zl_unet_module_weight(const zl_unet *u, const char *module, float *dst, size_t n);

/* Inputs of one forward. Shapes: sample [B, in_channels, H, W]; timestep [B];
 * context [B, T, cross_attention_dim]; SDXL: text_embeds [B, pooled_dim],
 * time_ids [B, 6]. H and W must be divisible by 2^(levels-1). */
typedef struct {
    int B, H, W, T;
    const float *sample;
    const float *timestep;
    const float *context;
    const float *text_embeds;
    const float *time_ids;
} zl_unet_input;

/* out [B, out_channels, H, W]. */
int zl_unet_forward(zl_unet *u, const zl_unet_input *in, float *out);

/* ---- Gradients (src/models/unet_backward.c) ------------------------------
 * A forward that records what its backward needs (a "tape"), and the backward
 * that turns dL/d(out) into dL/d(sample) and dL/dm for every runtime branch's
 * merger. Base weights and LoRA factors are frozen: no dW is computed.
 *  - ZL_UNET_GRAD_KEEP: every block keeps its activations (fastest, most memory).
 *  - ZL_UNET_GRAD_RECOMPUTE: only block inputs are kept; each block's forward is
 *    recomputed when its backward runs (checkpointing; memory of one block's
 *    activations plus all block inputs). Both give identical gradients.
 * The tape copies the inputs. Between the forward and the backward the UNet's
 * LoRAs and mergers must not change (the recompute reads them). */
typedef enum {
    ZL_UNET_GRAD_KEEP = 0,
    ZL_UNET_GRAD_RECOMPUTE = 1,
} zl_unet_grad_mode;

typedef struct zl_unet_tape zl_unet_tape;

/* Same output as zl_unet_forward; *tape receives the record (free it with zl_unet_tape_free). */
int zl_unet_forward_tape(zl_unet *u, const zl_unet_input *in, zl_unet_grad_mode mode, float *out,
                         zl_unet_tape **tape);
/* dout [B, out_channels, H, W] = dL/d(out). dsample [B, in_channels, H, W] (may be NULL)
 * is overwritten with dL/d(sample); merger gradients ACCUMULATE into each branch
 * (zl_unet_zero_merger_grads, zl_unet_merger_grad). A tape is used up by its backward.
 * On failure (out of memory) the merger gradients are partial: zero them again. */
int zl_unet_backward(zl_unet *u, zl_unet_tape *tape, const float *dout, float *dsample);
void zl_unet_tape_free(zl_unet_tape *t);
/* Zero the merger gradient of every runtime branch. */
int zl_unet_zero_merger_grads(zl_unet *u);
/* The accumulated dL/dm [n] of the branch of `slot` on `module` (NULL if none;
 * all zeros if no backward ran since the last zeroing). */
const float *zl_unet_merger_grad(zl_unet *u, int slot, const char *module, int *n);

#ifdef __cplusplus
}
#endif
#endif
