/* Inside the UNet: its modules (one per weight-bearing diffusers module), the
 * block structs that mirror diffusers' nesting, the runtime LoRA branches, and
 * the forward's work buffers. Shared by unet.c (build, load, forward) and
 * unet_lora.c (attach, fold, mergers); the ZipLoRA backward is meant to build
 * on these same structs: every branch keeps its merger and slot, and the
 * forward is a sequence of block-level functions (zl_unet_resnet_fwd,
 * zl_unet_transformer_fwd) whose inputs are explicit, so a backward can save
 * or recompute them per block. */
#ifndef ZL_MODELS_UNET_INTERNAL_H
#define ZL_MODELS_UNET_INTERNAL_H

#include "models/names.h"
#include "nn/weight.h"
#include "ziplora/unet.h"

#define ZL_UNET_MAX_RES 9 /* layers_per_block + 1 resnets in an up level */

/* One runtime LoRA branch on a module: y += w * s * up @ (down @ (m ⊙ x)). */
typedef struct {
    int slot;          /* which zl_unet_add_lora call attached it */
    float w, s;        /* user weight, alpha/rank */
    int rank;
    const float *down; /* [rank, in * kh * kw] (owned by the zl_lora) */
    const float *up;   /* [out, rank] */
    float *merger;     /* [in] owned; all ones until set */
    int merger_set;    /* 0: merger is all ones and the multiply is skipped */
    float *grad;       /* [in] owned dL/dm, accumulated by zl_unet_backward; NULL until the first one */
} zl_unet_branch;

typedef struct {
    char *name;        /* diffusers module name */
    zl_module_kind kind;
    int in, out, kh, kw; /* norms: in = out = C */
    int has_bias;
    zl_weight w;       /* Linear [out, in], conv [out, in, kh, kw], norm gamma [C] */
    zl_weight b;       /* bias / beta [out] (always resident f32), numel 0 if none */
    int folded;        /* w.f32 holds W + folded LoRA deltas */
    int bf16_uses;     /* forwards with bfloat16 products so far: the second packs w (see packed_bf16) */
    int n_br;
    zl_unet_branch *br;
} zl_unet_mod;

typedef struct {
    int cin, cout;
    zl_unet_mod *norm1, *conv1, *temb, *norm2, *conv2, *shortcut; /* shortcut NULL if cin == cout */
} zl_unet_resnet;

typedef struct {
    zl_unet_mod *norm1, *q1, *k1, *v1, *o1;
    zl_unet_mod *norm2, *q2, *k2, *v2, *o2;
    zl_unet_mod *norm3, *ff0, *ff2;
} zl_unet_tblock;

typedef struct {
    int C, heads, depth;
    zl_unet_mod *norm, *proj_in, *proj_out;
    zl_unet_tblock *blocks; /* [depth] */
} zl_unet_transformer;

typedef struct {
    int n_res;
    zl_unet_resnet res[ZL_UNET_MAX_RES];
    int has_attn;
    zl_unet_transformer attn[ZL_UNET_MAX_RES];
    zl_unet_mod *sampler; /* downsampler (stride 2) or upsampler conv; NULL at the end */
} zl_unet_level;

/* Work buffers of one forward, sized for (B, H, W, T) and reused while they fit. */
typedef struct {
    int B, H, W, T, max_rank;
    size_t act_n;   /* floats in cur / nxt: the largest [B, C, HW] */
    float *cur, *nxt, *cat, *t[5];
    float *ba;      /* branch rank activations, B*H*W*max_rank */
    float *bd;      /* a branch's down weights with the merger folded in: [rank, in (, kh, kw)] */
    size_t bd_n;
    float *temb;    /* [B, time_embed_dim]: SiLU(time embedding), shared by all resnets */
    float *tproj;   /* [B, max channels] */
} zl_unet_ws;

/* Called before every block of the forward with that block's input, so a
 * backward can keep (or checkpoint) block inputs and recompute inside a block.
 * kind: 0 resnet (block is a zl_unet_resnet), 1 transformer (zl_unet_transformer),
 * 2 sampler conv (zl_unet_mod; x before the stride-2 conv, or after the nearest
 * upsample). x is [B, C, H, W] and valid only during the call. */
typedef struct {
    void (*fn)(void *ctx, int kind, const void *block, const float *x, int B, int C, int H, int W);
    void *ctx;
} zl_unet_hook;

/* Called by zl_unet_linear / zl_unet_conv with every Linear or conv module's
 * input before it is applied (runtime branches or not), so the layerwise
 * ZipLoRA mode can record what each LoRA layer sees. Linear: x [N, in]
 * (N = rows, H = W = 1). Conv: x [N = B, in, H, W] with the module's stride
 * (padding kh/2). x is valid only during the call; the hook must not run a
 * forward. */
typedef struct {
    void (*fn)(void *ctx, const zl_unet_mod *m, const float *x, int N, int H, int W, int stride);
    void *ctx;
} zl_unet_mod_hook;

struct zl_unet {
    zl_unet_config cfg;
    zl_st_file *file;
    int single_file;
    zl_unet_weight_mode mode;
    int n_mods, cap_mods;
    zl_unet_mod **mods;   /* build order */
    zl_unet_mod **sorted; /* by name, for lookups */
    zl_unet_mod *conv_in, *time1, *time2, *add1, *add2, *norm_out, *conv_out;
    zl_unet_level down[ZL_MAX_LEVELS], up[ZL_MAX_LEVELS];
    zl_unet_resnet mid_res[2];
    zl_unet_transformer mid_attn;
    float *wscratch; /* one weight widened at a time */
    size_t wscratch_n;
    int n_slots;
    zl_unet_ws ws;
    zl_unet_hook hook; /* fn NULL: none */
    zl_unet_mod_hook mod_hook; /* fn NULL: none */
};

zl_unet_mod *zl_unet_find_mod(const zl_unet *u, const char *name);

/* A module's weight as float32 (resident, or widened into the one scratch buffer,
 * valid until the next module's weight is asked for). */
const float *zl_unet_weight_f32(zl_unet *u, const zl_unet_mod *m);
/* Size the work buffers (branch inputs and rank activations included) for (B, H, W, T). */
int zl_unet_ws_ensure(zl_unet *u, int B, int H, int W, int T);

/* Module applications (base weight + runtime branches). */
void zl_unet_linear(zl_unet *u, const zl_unet_mod *m, const float *x, float *y, int N);
void zl_unet_conv(zl_unet *u, const zl_unet_mod *m, const float *x, float *y, int B, int H, int W, int stride);

/* Block forwards. x and out must not alias; both [B, C, H*W]. */
void zl_unet_resnet_fwd(zl_unet *u, const zl_unet_resnet *r, const float *x, float *out, int B, int H, int W);
void zl_unet_transformer_fwd(zl_unet *u, const zl_unet_transformer *t, const float *x, const float *ctx, float *out,
                             int B, int H, int W, int T);

#endif
