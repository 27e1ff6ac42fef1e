/* Name tables: every module of a UNet (built from its zl_unet_config) and of
 * the CLIP text encoders, under its diffusers name and its ldm/SGM name, with
 * its kind and shape. LoRA keys and single-file checkpoint keys are translated
 * by looking them up here -- never by guessing at underscores.
 * Owner: the LoRA-loading helper (src/models/names.c). */
#ifndef ZL_MODELS_NAMES_H
#define ZL_MODELS_NAMES_H

#include "ziplora/lora.h"
#include "ziplora/model.h"

typedef enum {
    ZL_MOD_LINEAR = 0, /* weight [out, in] (+ bias) */
    ZL_MOD_CONV = 1,   /* weight [out, in, kh, kw] (+ bias) */
    ZL_MOD_NORM = 2,   /* GroupNorm / LayerNorm: weight [C], bias [C] (in = out = C) */
    ZL_MOD_EMBED = 3,  /* nn.Embedding: weight [in (entries), out (dim)], no bias */
} zl_module_kind;

typedef struct {
    const char *diffusers;  /* "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q" */
    const char *ldm;        /* "input_blocks.4.1.transformer_blocks.0.attn1.to_q" (UNet);
                               for text encoders the HF name again: CLIP-L single files keep HF
                               names under a family-specific prefix, and bigG's OpenCLIP layout
                               (fused in_proj) is mapped by the text encoder itself */
    zl_module_kind kind;
    int in, out, kh, kw;
    int has_bias;
} zl_module_info;

typedef struct zl_name_table zl_name_table;

/* Every UNet module with weights, for this config. */
int zl_name_table_unet(const zl_unet_config *cfg, zl_name_table **out);
/* CLIP text encoder modules (HF names: text_model.encoder.layers.N.self_attn.q_proj, ...).
 * text_projection (no bias) is listed when cfg->has_projection. */
int zl_name_table_clip(const zl_clip_config *cfg, zl_name_table **out);
/* Standard text encoder configs: CLIP ViT-L/14 (SD 1.x, SDXL's first) and OpenCLIP
 * ViT-bigG/14 (SDXL's second, with projection). */
void zl_names_clip_l_config(zl_clip_config *cfg);
void zl_names_clip_bigg_config(zl_clip_config *cfg);
void zl_name_table_free(zl_name_table *t);

int zl_name_table_count(const zl_name_table *t);
const zl_module_info *zl_name_table_at(const zl_name_table *t, int i);
const zl_module_info *zl_name_find_diffusers(const zl_name_table *t, const char *diffusers);
const zl_module_info *zl_name_find_ldm(const zl_name_table *t, const char *ldm);
/* A kohya base name with the prefix removed ("input_blocks_4_1_transformer_blocks_0_attn1_to_q" or
 * "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"): exact lookup of the
 * dots-to-underscores form of either name. *is_ldm tells which matched. */
const zl_module_info *zl_name_find_kohya(const zl_name_table *t, const char *flat, int *is_ldm);

#endif
