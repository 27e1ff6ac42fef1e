/* The text side of Stable Diffusion: the CLIP BPE tokenizer, the CLIP text
 * encoders (OpenAI CLIP-L and OpenCLIP bigG, from a diffusers folder or a
 * single checkpoint, with text-encoder LoRAs folded in), and the conditioning
 * the UNet expects (SDXL: concatenated penultimate states + pooled projection;
 * SD 1.x: CLIP-L's last hidden state). */
#ifndef ZIPLORA_TEXT_H
#define ZIPLORA_TEXT_H

#include "ziplora/core.h"
#include "ziplora/lora.h"
#include "ziplora/model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ZL_CLIP_CTX 77        /* tokens per prompt, start and end included */
#define ZL_CLIP_MAX_TOKENS 75 /* prompt tokens kept */
#define ZL_CLIP_BOS 49406     /* <|startoftext|> */
#define ZL_CLIP_EOS 49407     /* <|endoftext|> */
#define ZL_CLIP_VOCAB 49408
#define ZL_CLIP_PAD_L 49407   /* CLIP-L pads with the end token */
#define ZL_CLIP_PAD_BIGG 0    /* OpenCLIP bigG pads with 0 */

/* ---- Tokenizer ------------------------------------------------------------
 * The vocabulary is embedded in the library (decompressed when the tokenizer
 * is created), so no data files are needed at run time. A tokenizer is
 * immutable once made and may be shared between threads. */
typedef struct zl_tokenizer zl_tokenizer;

int zl_tokenizer_new(zl_tokenizer **out);
void zl_tokenizer_free(zl_tokenizer *t);
/* A textual-inversion embedding of `rows` vectors (the exception to
 * immutability: add embeddings before sharing the tokenizer). Wherever the
 * trigger's tokens appear in a span of a prompt (as A1111 finds them),
 * zl_tokenize_clip and zl_tokenize_chunks[_weighted] put the placeholder ids
 * *first_id .. *first_id + rows - 1 (all >= ZL_CLIP_VOCAB) in their place, and
 * a chunk does not split them. zl_tokenize itself is unchanged. */
int zl_tokenizer_add_embedding(zl_tokenizer *t, const char *trigger, int rows, int32_t *first_id);

/* The clean-up CLIP applies before splitting (html-unescape twice, strip,
 * collapse whitespace, lowercase). `text` must be UTF-8 (ZL_EINVAL if not);
 * *out is malloc'd UTF-8. */
int zl_clip_clean_text(const char *text, char **out);

/* BPE ids of `text` (no start/end tokens). *ids is malloc'd (may be NULL when *n == 0). */
int zl_tokenize(const zl_tokenizer *t, const char *text, int32_t **ids, int *n);

/* Text of ids as CLIP decodes it (word ends become spaces, trailing space
 * removed). *out is malloc'd. */
int zl_tokenizer_decode(const zl_tokenizer *t, const int32_t *ids, int n, char **out);

/* Encoder input: [BOS] + ids[:75] + [EOS], padded to 77 with pad_id.
 * *n_dropped (may be NULL) receives how many prompt tokens were cut; when
 * `warn` is set and tokens were cut, a warning quotes the dropped text. */
int zl_tokenize_clip(const zl_tokenizer *t, const char *text, int32_t pad_id, int warn, int32_t ids[ZL_CLIP_CTX],
                     int *n_dropped);

/* Long prompts, as AUTOMATIC1111 cuts them: the BPE ids in chunks of at most
 * 75; when a chunk is full and a comma lies within its last 20 tokens, the chunk
 * ends after that comma and the tokens after it open the next chunk (A1111's
 * comma_padding_backtrack 20). bounds receives n_chunks + 1 offsets into the ids
 * (chunk c is ids[bounds[c], bounds[c + 1])); an empty prompt is one empty
 * chunk. The word BREAK (upper case, on its own) ends the current chunk, even
 * an empty one, and is not encoded (A1111's keyword). *bounds and *ids are
 * malloc'd. */
#define ZL_CLIP_COMMA_BACKTRACK 20
int zl_tokenize_chunks(const zl_tokenizer *t, const char *text, int32_t **ids, int **bounds, int *n_chunks);
/* The same with A1111's attention syntax when `emphasis` is set: the text is
 * cut by zl_prompt_parse_attention, each span tokenized alone, and *weights
 * (malloc'd, one per id) receives each token's multiplier; ("BREAK", -1) spans
 * end a chunk. Without emphasis the weights are all 1. */
int zl_tokenize_chunks_weighted(const zl_tokenizer *t, const char *text, int emphasis, int32_t **ids, float **weights,
                                int **bounds, int *n_chunks);

/* AUTOMATIC1111's attention syntax (modules/prompt_parser.py
 * parse_prompt_attention), spans of text with a weight: "(x)" multiplies by
 * 1.1, "[x]" by 1/1.1, "(x:1.3)" by 1.3 (nesting multiplies), "\(" "\)"
 * "\[" "\]" "\\" are the literal characters; unbalanced brackets apply to the
 * end; the word BREAK becomes a ("BREAK", -1) span; runs of equal weight are
 * merged; an empty text is one empty span. Weights are computed in double, in
 * A1111's order. */
typedef struct {
    char *text;
    double weight;
} zl_prompt_span;
int zl_prompt_parse_attention(const char *text, zl_prompt_span **spans, int *n);
void zl_prompt_spans_free(zl_prompt_span *spans, int n);

/* ---- One CLIP text encoder -------------------------------------------------- */
typedef struct zl_clip zl_clip;

typedef struct {
    /* config.json of the encoder. NULL: read nothing, infer from the weights'
     * shapes (heads = hidden / 64, as in every released CLIP). For a single
     * checkpoint this is how a non-standard head count is given. */
    const char *config_json;
} zl_clip_load_opts;

/* Load `part` (ZL_PART_TE1: CLIP-L; ZL_PART_TE2: OpenCLIP bigG) from a
 * safetensors file: a diffusers text_encoder[_2]/model.safetensors (HF names),
 * an SDXL checkpoint (conditioner.embedders.0.transformer.text_model.* and
 * conditioner.embedders.1.model.* with OpenCLIP names) or an SD 1.x checkpoint
 * (cond_stage_model.transformer[.text_model].*). Weights stay mapped in their
 * stored dtype. opts may be NULL. */
int zl_clip_load(const char *weights, zl_part part, const zl_clip_load_opts *opts, zl_clip **out);
void zl_clip_free(zl_clip *c);
const zl_clip_config *zl_clip_get_config(const zl_clip *c);

/* Fold every layer of `lora` that belongs to this encoder's part into its
 * weights: W += weight * (alpha / rank) * up @ down. Module names are HF's
 * (text_model.encoder.layers.N.self_attn.q_proj, ..., mlp.fc1/fc2); for
 * OpenCLIP checkpoints q/k/v land on the right row block of in_proj. Layers
 * of other parts are ignored; an unknown module or a shape mismatch is an
 * error (nothing is changed then). */
int zl_clip_apply_lora(zl_clip *c, const zl_lora *lora, float weight);
/* The weight of a LoRA-able linear (HF module name, as zl_clip_apply_lora takes it) as it
 * stands, widened to f32 into dst [out * in] (n must be that size). */
int zl_clip_module_weight(const zl_clip *c, const char *module, float *dst, size_t n);

/* Outputs of a forward pass; every pointer may be NULL (not computed). */
typedef struct {
    float *penultimate; /* [B, T, C] hidden state before the last layer, no final LayerNorm */
    float *last_hidden; /* [B, T, C] after the last layer and the final LayerNorm */
    float *pooled;      /* [B, C] last_hidden at the first end token (the argmax id) */
    float *projected;   /* [B, P] pooled @ text_projection (encoders with a projection) */
    float *hidden;      /* [B, T, C] hidden_states[hidden_layer]: the output of the first hidden_layer
                           layers (1..layers), through the final LayerNorm when hidden_final_ln */
    int hidden_layer, hidden_final_ln;
} zl_clip_out;

/* ids [B, T] (T <= max_position_embeddings; ids < vocab). */
int zl_clip_forward(const zl_clip *c, const int32_t *ids, int B, int T, const zl_clip_out *out);
/* The same where rows[b * T + t], when not NULL, is the token embedding used at
 * that position instead of ids' row (textual inversion; the id there still
 * decides the pooled position, as the first largest id). rows may be NULL. */
int zl_clip_forward_rows(const zl_clip *c, const int32_t *ids, const float *const *rows, int B, int T,
                         const zl_clip_out *out);

/* ---- Conditioning for a model ------------------------------------------------ */
typedef struct zl_text zl_text;

typedef struct {
    const char *te1_config; /* overrides for single checkpoints (see zl_clip_load_opts) */
    const char *te2_config;
} zl_text_load_opts;

/* Both encoders of an SDXL model, or CLIP-L of an SD 1.x model, plus the tokenizer. */
int zl_text_load(const zl_model_paths *paths, const zl_text_load_opts *opts, zl_text **out);
void zl_text_free(zl_text *t);
zl_family zl_text_family(const zl_text *t);
zl_clip *zl_text_encoder(zl_text *t, zl_part part); /* NULL if absent */
const zl_tokenizer *zl_text_tokenizer(const zl_text *t);
/* Fold a LoRA's text-encoder layers into the encoders (see zl_clip_apply_lora). */
int zl_text_apply_lora(zl_text *t, const zl_lora *lora, float weight);
/* Width of prompt_embeds (SDXL: C_L + C_G; SD1: C_L) and of the pooled vector (SDXL: P; SD1: 0). */
int zl_text_context_dim(const zl_text *t);
/* A1111's "Clip skip" n (1 = default): SD 1.x conditions on the output of layer L - n + 1
 * through the final LayerNorm (diffusers' clip_skip = n - 1); SDXL, which takes the
 * penultimate layers already, is unchanged for n <= 2 and goes to layer L - n + 1 of each
 * encoder beyond (ComfyUI's CLIPSetLastLayer -n). The pooled vector never changes. */
int zl_text_set_clip_skip(zl_text *t, int n);
int zl_text_clip_skip(const zl_text *t);
int zl_text_pooled_dim(const zl_text *t);

/* Everything `ziplora run text` writes; NULL pointers are skipped. */
typedef struct {
    float *prompt_embeds;   /* [B, 77, context_dim] */
    float *pooled;          /* [B, P] (SDXL) */
    zl_clip_out te1, te2;   /* per-encoder outputs (te2: SDXL) */
} zl_text_cond;

/* ids_l [B, 77] CLIP-L ids (pads 49407); ids_g [B, 77] bigG ids (pads 0; SDXL only). */
int zl_text_encode_ids(const zl_text *t, const int32_t *ids_l, const int32_t *ids_g, int B, const zl_text_cond *out);

/* A textual-inversion embedding from a file (safetensors or a PyTorch
 * checkpoint): SDXL's 'clip_l' [n, 768] and 'clip_g' [n, 1280]; SD 1.x's
 * 'emb_params' (A1111 .safetensors), 'string_to_param.*' (A1111 .pt) or a file
 * of one [n, 768] or [768] tensor (diffusers' learned_embeds). Wherever the
 * trigger's tokens appear in a prompt (A1111 uses the file name) its n vectors
 * replace them (zl_tokenizer_add_embedding), in every encoding entry point.
 * *n_vectors (may be NULL) receives n. */
int zl_text_load_embedding(zl_text *t, const char *path, const char *trigger, int *n_vectors);

/* Tokenize + encode one prompt: prompt_embeds [77, context_dim], pooled [P]
 * (SDXL; may be NULL). With zero_if_empty (SDXL's force_zeros_for_empty_prompt,
 * for the negative prompt) an empty prompt gives zeros without running the
 * encoders. A prompt longer than 75 tokens is cut with a warning. */
int zl_text_encode_prompt(const zl_text *t, const char *prompt, int zero_if_empty, float *prompt_embeds,
                          float *pooled);

/* A long prompt (zl_tokenize_chunks), every chunk [BOS] + ids + [EOS] padded to
 * 77 as a short prompt is, encoded alone; prompt_embeds [k, 77, D] is the
 * chunks one after another along the tokens, k = max(chunks of the prompt,
 * min_chunks) (the extra chunks are empty prompts: a negative prompt is padded
 * so to the prompt's length, as A1111 does); pooled (SDXL) is the first
 * chunk's. A prompt of up to 75 tokens with min_chunks 1 gives exactly
 * zl_text_encode_prompt's result. *prompt_embeds is malloc'd; *k receives the
 * chunk count. With zero_if_empty an empty prompt gives zeros. At most
 * ZL_CLIP_MAX_CHUNKS chunks. */
#define ZL_CLIP_MAX_CHUNKS 32
/* With `emphasis`, A1111's attention syntax (zl_tokenize_chunks_weighted) and
 * its "Original" emphasis: each chunk's output is multiplied per token by its
 * weight, then scaled back to the mean it had, separately for each encoder's
 * part of the context (CLIP-L's and bigG's features); the pooled vector is not
 * weighted. */
int zl_text_count_chunks(const zl_text *t, const char *prompt, int emphasis, int *k);
int zl_text_encode_prompt_long(const zl_text *t, const char *prompt, int emphasis, int min_chunks, int zero_if_empty,
                               float **prompt_embeds, float *pooled, int *k);

#ifdef __cplusplus
}
#endif
#endif
