/* LoRA files in every common layout, loaded into one canonical form:
 * diffusers module names, A (down) and B (up) in float32, alpha, kind, shapes.
 * Owner of this header: the LoRA foundation (src/lora/). Other parts (UNet,
 * text encoders, zip) only read zl_lora / zl_lora_layer. */
#ifndef ZIPLORA_LORA_H
#define ZIPLORA_LORA_H

#include "ziplora/core.h"
#include "ziplora/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Which network a layer belongs to. */
typedef enum {
    ZL_PART_UNET = 0,
    ZL_PART_TE1 = 1, /* CLIP-L: SD1's only text encoder, SDXL's first */
    ZL_PART_TE2 = 2, /* OpenCLIP bigG (SDXL) */
} zl_part;

typedef enum {
    ZL_LORA_LINEAR = 0, /* down [r, in], up [out, r] */
    ZL_LORA_CONV = 1,   /* down [r, in, kh, kw], up [out, r, 1, 1] (LoCon) */
} zl_lora_kind;

typedef struct {
    char *module;       /* canonical diffusers module name, e.g.
                           "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q" (UNet) or
                           "text_model.encoder.layers.0.self_attn.q_proj" (text encoders) */
    zl_part part;
    zl_lora_kind kind;
    int rank;
    int in_features;    /* Linear in, or conv input channels */
    int out_features;
    int kh, kw;         /* 1,1 for Linear */
    float alpha;        /* scale = alpha / rank (alpha = rank when the file has none) */
    float *down;        /* [rank, in_features * kh * kw] */
    float *up;          /* [out_features, rank] */
    zl_dtype dtype;     /* dtype in the file (for writing back) */
} zl_lora_layer;

typedef enum {
    ZL_LAYOUT_UNKNOWN = 0,
    ZL_LAYOUT_KOHYA_LDM,       /* lora_unet_input_blocks_4_1_... */
    ZL_LAYOUT_KOHYA_DIFFUSERS, /* lora_unet_down_blocks_1_attentions_0_... */
    ZL_LAYOUT_PEFT,            /* unet.<module>.lora_A.weight / base_model.model.<module>... */
    ZL_LAYOUT_DIFFUSERS_OLD,   /* unet.<module>.lora.down.weight / processor.to_q_lora */
    ZL_LAYOUT_MIXED,
} zl_lora_layout;

typedef struct {
    char *path;
    zl_family family;       /* detected from keys, shapes, metadata */
    zl_lora_layout layout;
    int n;
    zl_lora_layer *layers;  /* sorted: part, then module name */
    int n_meta;
    char **meta_k, **meta_v; /* the file's __metadata__ */
} zl_lora;

static inline float zl_lora_scale(const zl_lora_layer *l) { return l->alpha / (float)l->rank; }

/* Options for loading. All fields may be zero/NULL. */
typedef struct {
    const char *adapter_config;        /* PEFT adapter_config.json (else <file>.adapter_config.json or
                                          adapter_config.json next to the file is looked for) */
    const zl_unet_config *unet_config; /* the target model's UNet (else the family's standard config) */
    zl_family expect_family;           /* if set, a LoRA for another family is an error */
} zl_lora_load_opts;

/* Load any supported layout into canonical form. Unsupported kinds (LoHa, LoKr,
 * Tucker lora_mid, DoRA dora_scale) and keys that map to no module are refused
 * with a message naming the keys. */
int zl_lora_load(const char *path, const zl_lora_load_opts *opts, zl_lora **out);
void zl_lora_free(zl_lora *l);
/* Find a layer by part and canonical module name (NULL if absent). */
const zl_lora_layer *zl_lora_find(const zl_lora *l, zl_part part, const char *module);

#ifdef __cplusplus
}
#endif
#endif
