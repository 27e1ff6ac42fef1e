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
    float *dora;        /* DoRA magnitude, or NULL. Only loaded with opts.allow_dora; such a layer is
                           applied by zl_lora_fold alone (see there). [in_features]: a LyCORIS
                           `dora_scale` of shape [1, in(, 1, 1)]; [out_features] when dora_out: */
    int dora_out;       /* 1: PEFT's `lora_magnitude_vector` (diffusers' --use_dora), per output row */
    zl_dtype dtype;     /* dtype in the file (for writing back) */
} zl_lora_layer;

typedef enum {
    ZL_LAYOUT_UNKNOWN = 0,
    ZL_LAYOUT_KOHYA_LDM,       /* lora_unet_input_blocks_4_1_... */
    ZL_LAYOUT_KOHYA_DIFFUSERS, /* lora_unet_down_blocks_1_attentions_0_... */
    ZL_LAYOUT_PEFT,            /* unet.<module>.lora_A.weight / base_model.model.<module>... */
    ZL_LAYOUT_DIFFUSERS_OLD,   /* unet.<module>.lora.down.weight / processor.to_q_lora */
    ZL_LAYOUT_COMFY,           /* ComfyUI's generic form: diffusion_model.<ldm module>.lora_up.weight
                                  (its LoRA extraction and training nodes write it) */
    ZL_LAYOUT_MIXED,
} zl_lora_layout; /* from the UNet keys; a kohya file with text encoders only is KOHYA_DIFFUSERS */

typedef struct {
    char *path;
    zl_family family;       /* detected from keys, shapes, metadata */
    zl_lora_layout layout;
    int n;
    zl_lora_layer *layers;  /* sorted: part, then module name */
    int n_meta;
    char **meta_k, **meta_v; /* the file's __metadata__ */
    int n_loha, n_lokr;     /* layers loaded from LyCORIS LoHa / LoKr modules (as exact LoRA factors) */
    int n_tucker;           /* layers loaded from Tucker-decomposed LyCORIS modules (LoCon lora_mid,
                               LoHa hada_t1/t2, LoKr lokr_t2; the LoHa and LoKr ones are
                               also counted in n_loha / n_lokr) */
    int n_dora;             /* layers with a DoRA magnitude (dora != NULL) */
} zl_lora;

static inline float zl_lora_scale(const zl_lora_layer *l) { return l->alpha / (float)l->rank; }

/* Options for loading. All fields may be zero/NULL. */
typedef struct {
    const char *adapter_config;        /* PEFT adapter_config.json (else <file>.adapter_config.json or
                                          adapter_config.json next to the file is looked for) */
    const zl_unet_config *unet_config; /* the target model's UNet (else the family's standard config) */
    zl_family expect_family;           /* if set, a LoRA for another family is an error */
    const zl_clip_config *te1_config;  /* the target's text encoders: when given, text-encoder */
    const zl_clip_config *te2_config;  /* layers must match their shapes (else names only) */
    int allow_dora;                    /* 1: read DoRA magnitudes (LyCORIS `dora_scale`, PEFT
                                          `lora_magnitude_vector`) into the layers' dora instead of
                                          refusing them; for callers that fold LoRAs
                                          into base weights with zl_lora_fold (generate). A DoRA update
                                          depends on the base weight, so it cannot be merged, converted
                                          or zipped; the lazy loaders never read it */
} zl_lora_load_opts;

/* Load any supported layout into canonical form. LyCORIS LoHa and LoKr
 * modules (kohya names) become exact LoRA factors (rank r1 r2 for LoHa; the
 * product of the factor ranks for LoKr; or the dense update with an identity
 * on the smaller side when that rank is lower), their scale folded into up and
 * alpha = rank. Tucker cores (lora_mid, hada_t1/t2, lokr_t2) are contracted into
 * those factors. DoRA magnitudes are read only with opts.allow_dora: LyCORIS
 * dora_scale per input feature, [1, in(, 1, 1)] (its output-axis form is refused),
 * and PEFT lora_magnitude_vector per output feature, [out] or [out, 1, 1, 1].
 * Unsupported kinds (DoRA otherwise, OFT, IA3) and keys that map to no module are
 * refused with a message naming the keys.
 *
 * Names are looked up in the name tables (src/models/names.h) of the model's
 * UNet config when opts->unet_config is given (then shapes must match it
 * exactly), else of the family's standard config (then only the structure is
 * checked: module kind and kernel size, not channel counts, so small test
 * models load too).
 *
 * Base family, first rule that decides: opts->unet_config; metadata
 * (ss_base_model_version "sdxl..."/"sd_v1...", modelspec.architecture
 * "stable-diffusion-xl..."/"stable-diffusion-v1..."); key prefixes (lora_te1_,
 * lora_te2_, text_encoder_2. -> SDXL; lora_te_ -> SD 1.x); cross-attention
 * context width (an attn2.to_k/to_v input of 2048 -> SDXL, 768 -> SD 1.x);
 * structure (every UNet key fits the standard SDXL table but not the SD 1.x one,
 * or the reverse); opts->expect_family; else unknown. */
int zl_lora_load(const char *path, const zl_lora_load_opts *opts, zl_lora **out);
void zl_lora_free(zl_lora *l);
/* Loading a file already open (path is used in messages and to find a PEFT
 * adapter_config.json beside it). */
struct zl_st_file;
int zl_lora_load_st(const struct zl_st_file *f, const char *path, const zl_lora_load_opts *opts, zl_lora **out);
/* Find a layer by part and canonical module name (NULL if absent). */
/* The value of metadata key `key`, or NULL. */
const char *zl_lora_meta(const zl_lora *l, const char *key);
/* The k most frequent training tags of kohya's ss_tag_frequency ({dataset: {tag: count}}, counts
 * summed over the datasets, blank tags skipped, surrounding blanks trimmed; ties in byte order):
 * *tags (free each and the array) and *n (<= k). ZL_ENOTFOUND when the key is absent or holds no
 * tags; ZL_EFORMAT when it is not a JSON object. */
int zl_lora_top_tags(const zl_lora *l, int k, char ***tags, int *n);
const zl_lora_layer *zl_lora_find(const zl_lora *l, zl_part part, const char *module);

/* Fold layer l with user weight w into the base weight W [out_features, in_features * kh * kw]
 * (row-major float32, as the module stores it):
 *  - plain LoRA: W += w * scale * up @ down;
 *  - LyCORIS DoRA (dora per input feature), as ComfyUI's weight_decompose and A1111's
 *    apply_weight_decompose: Wc = W + scale * up @ down; n_c = the norm of Wc's input channel c
 *    (over every output and kernel position); W' = Wc * dora[c] / n_c (0 where n_c = 0);
 *    W += w * (W' - W), W = W' at w = 1;
 *  - PEFT DoRA (dora_out), as PEFT merges it: the weight goes inside, Wc = W + w * scale *
 *    up @ down, and each output row is rescaled to its magnitude: W = Wc * dora[o] / |Wc[o]|.
 * W is the weight as it stands (earlier LoRAs folded in), as ComfyUI applies patches in
 * order. ZL_ENOMEM on allocation failure (W unchanged). */
int zl_lora_fold(const zl_lora_layer *l, float w, float *W);


/* ------------------------------------------------------------------------------------------------
 * Writing, merging, re-ranking and inspecting LoRAs.
 * Owner: the LoRA-writing helper (src/lora/lora_write.c, merge.c, svd.c, inspect.c).
 * ------------------------------------------------------------------------------------------------ */

typedef enum {
    ZL_FORMAT_KOHYA = 0, /* lora_unet_<module>.lora_down/lora_up.weight + .alpha (ldm names for SDXL) */
    ZL_FORMAT_PEFT = 1,  /* unet.<module>.lora_A/lora_B.weight, scale folded into B (alpha = rank) */
} zl_lora_format;

/* Parse "kohya" / "peft"; -1 if neither. */
int zl_lora_format_parse(const char *s);

typedef struct {
    zl_lora_format format;
    zl_dtype dtype;                    /* F32/F16/BF16, or ZL_DT_INVALID: each layer's own dtype */
    const zl_unet_config *unet_config; /* names for kohya SDXL (else the family's standard config) */
    const char *title;                 /* modelspec.title (else the output file's base name) */
    const char *method;                /* ziplora_method (e.g. "convert", "merge"); NULL: none */
    const char *params_json;           /* ziplora_params (a JSON object as text); NULL: none */
    const char *const *inputs;         /* input files: their sha256 go into ziplora_inputs, and */
    int n_inputs;                      /* the output may not replace any of them */
    const char *const *input_sha256;   /* optional precomputed hex digests of `inputs` */
    /* Optional: the digests are still being computed while the file is written.
     * input_sha256 is then read only after sha256_wait(sha256_ctx) returns 0,
     * once the data is written, and the header is filled in last. */
    int (*sha256_wait)(void *ctx);
    void *sha256_ctx;
} zl_lora_write_opts;

/* Where a streamed writer gets a layer's values: fill `dst` with layer i's down
 * ([rank, in*kh*kw], which = 0) or up ([out, rank], which = 1) in float32, as
 * they would be in a zl_lora (unscaled: the layer's alpha still applies). */
typedef struct {
    int (*get)(void *ctx, int i, int which, float *dst);
    void *ctx;
    /* Optional shortcut: write tensor `which` of layer i as `nbytes` of dtype dt,
     * multiplied by `scale` (up only; 1 otherwise), giving exactly the bytes the
     * float path would; set *done = 0 to fall back to get. */
    int (*get_raw)(void *ctx, int i, int which, zl_dtype dt, float scale, void *dst, size_t nbytes, int *done);
} zl_lora_source;

/* Write `l` (every layer's down/up filled) atomically. Never overwrites an input. */
int zl_lora_write(const char *path, const zl_lora *l, const zl_lora_write_opts *opts);
/* Same, but the values come from `src` one tensor at a time; the layers of
 * `layout` need only names, kinds, shapes, ranks, alphas and dtypes (down/up may
 * be NULL). The output is never all in memory at once. */
int zl_lora_write_stream(const char *path, const zl_lora *layout, const zl_lora_source *src,
                         const zl_lora_write_opts *opts);
/* The key stem a layer gets in a format: "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
 * (kohya, before ".lora_down.weight") or "unet.down_blocks.1....to_q" (PEFT, before ".lora_A.weight"). */
int zl_lora_key(const zl_lora_layer *l, zl_family family, zl_lora_format format,
                const zl_unet_config *unet_config, char *buf, size_t n);

/* Merger vectors (one value per input feature) for the layers of a merge.
 * File format (docs/formats.md): safetensors with "<module>.merger_content" and
 * "<module>.merger_style", any float dtype, shape [in_features]; <module> is the
 * canonical diffusers name for the UNet, and "te1.<module>" / "te2.<module>" for
 * the text encoders (HF CLIP names). */
typedef struct zl_mergers zl_mergers;
int zl_mergers_load(const char *path, zl_mergers **out);
void zl_mergers_free(zl_mergers *m);
/* The merger of one side (0 content, 1 style) for a layer, or NULL; *n is its length. */
const float *zl_mergers_find(const zl_mergers *m, zl_part part, const char *module, int style, int *n);

typedef struct {
    float w_content, w_style;  /* weights of each LoRA's dW (1, 1 for the plain sum) */
    const zl_mergers *mergers; /* optional per-input-feature scales */
    int rank;                  /* > 0: re-rank layers above this rank by truncated SVD */
    zl_dtype dtype;            /* output dtype; ZL_DT_INVALID: the inputs' common dtype, else F32 */
    const struct zl_lora_lazy *lazy_content, *lazy_style; /* values of lazily loaded LoRAs (zl_lora_load_lazy) */
} zl_merge_opts;

typedef struct zl_lora_lazy zl_lora_lazy;
void zl_lora_lazy_free(zl_lora_lazy *z);
/* Load a LoRA file's structure (keys, shapes, alphas, as zl_lora_load does)
 * without reading its values: every LoRA layer's down/up is NULL and
 * zl_lora_lazy_read reads them from the mapped file on demand, checking them
 * then (a non-finite value gets zl_lora_load's message). Memory stays near zero
 * whatever the file's size. LyCORIS (LoHa/LoKr) layers are the exception: their
 * LoRA factors are computed at load and held in memory. */
int zl_lora_load_lazy(const char *path, const zl_lora_load_opts *opts, zl_lora **out, zl_lora_lazy **lazy);
/* The same from an open file, which must outlive the handle (the handle does not own it). */
int zl_lora_load_st_lazy(const struct zl_st_file *f, const char *path, const zl_lora_load_opts *opts, zl_lora **out,
                         zl_lora_lazy **lazy);
/* Layer i's down/up (one of them may be NULL) in float32, from memory or the file. */
int zl_lora_lazy_read(const zl_lora_lazy *z, const zl_lora *l, int i, float *down, float *up);

/* What a merge did, per output layer (sorted like the output). */
typedef struct {
    int n;
    zl_part *part;
    char **module;
    int *rank_in;       /* rank of the exact merge */
    int *rank_out;      /* after re-ranking */
    double *rel_err;    /* ||dW - dW_k||_F / ||dW||_F (0 for layers kept exact) */
    double *norm;       /* ||dW||_F of the exact merged layer (only computed with a re-rank) */
    double overall;     /* sqrt(sum over layers of dropped sigma^2 / sum of ||dW||^2) */
    int n_merged, n_content_only, n_style_only;
    int n_raw;          /* tensors written straight from lazily loaded inputs' bytes (no float copy) */
} zl_merge_report;
void zl_merge_report_free(zl_merge_report *r);

/* dW_out = w_c * dW_c * diag(m_c) + w_s * dW_s * diag(m_s) for every layer, as an exact
 * rank-concatenated LoRA (rank r_c + r_s, alpha = rank); one-sided layers pass through
 * (scaled by their weight, keeping rank and alpha). Both LoRAs must be of the same family,
 * with equal shapes for shared modules. `report` may be NULL. */
int zl_lora_merge(const zl_lora *content, const zl_lora *style, const zl_merge_opts *opts,
                  zl_lora **out, zl_merge_report *report);
/* The same, written straight to a file without holding the merged LoRA in memory. */
int zl_lora_merge_write(const char *path, const zl_lora *content, const zl_lora *style,
                        const zl_merge_opts *opts, const zl_lora_write_opts *wopts,
                        zl_merge_report *report);

/* Best rank-k approximation of up [out, r] @ down [r, n] (k <= r), exact: QR of up and of
 * down^T, SVD of the small core, in double. new_up [out, k] = U_k * S_k, new_down [k, n] = V_k^T.
 * *rel_err = ||UD - new_up new_down||_F / ||UD||_F, *norm = ||UD||_F (either may be NULL). */
int zl_lowrank_truncate(const float *up, const float *down, int out, int r, int n, int k,
                        float *new_up, float *new_down, double *rel_err, double *norm);
/* Bake a DoRA layer into a plain LoRA layer: D = W' - W, where W [out, in*kh*kw] is the base
 * weight the layer applies to and W' is W with the layer folded in at weight 1 (zl_lora_fold);
 * the layer becomes the best rank-k approximation of D (dense SVD in double; k <= 0: the layer's
 * own rank; at most min(out, in*kh*kw), where it is D itself), with alpha = k (scale 1) and no
 * magnitude. A DoRA update is not low-rank in
 * general, so *rel_err (||D - new||_F / ||D||_F) says what the rank kept; *norm = ||D||_F. The
 * result holds for weight 1 only: a DoRA layer's effect is not linear in its weight. On error
 * the layer is unchanged. */
int zl_lora_bake_dora(zl_lora_layer *y, const float *W, int k, double *rel_err, double *norm);

/* Numbers `inspect` shows for one layer; dW = scale * up @ down. */
typedef struct {
    double norm;     /* ||dW||_F */
    double prune80;  /* ||dW - dW with its 80 % smallest-|.| entries zeroed||_F / ||dW||_F */
    double prune90;  /* the same for 90 % */
} zl_layer_stats;
/* Builds this one layer's dense dW (and nothing more). */
int zl_layer_stats_compute(const zl_lora_layer *l, zl_layer_stats *out);
/* Mean over input features j of |cos(dW_a[:, j], dW_b[:, j])| (for convs, column j is every
 * weight of input channel j), computed from the factors without a dense dW. Columns where
 * either dW is zero are skipped; *n_used says how many counted. Shapes must match. */
int zl_column_cosine(const zl_lora_layer *a, const zl_lora_layer *b, double *mean_abs_cos, int *n_used);

typedef struct {
    zl_part part;
    const char *module;
    const zl_lora_layer *a, *b; /* either may be NULL (layer only in the other LoRA) */
    zl_layer_stats sa, sb;
    double cos;                 /* mean |cos| (NAN unless both) */
} zl_inspect_row;

typedef struct {
    int n;
    zl_inspect_row *rows;       /* sorted: part, then module */
    int n_common;
    double mean_cos;            /* mean over common layers of the per-layer mean |cos| */
} zl_inspect_result;

/* Inspect one LoRA (b NULL) or compare two. */
int zl_inspect(const zl_lora *a, const zl_lora *b, zl_inspect_result *out);
void zl_inspect_result_free(zl_inspect_result *r);
/* Draw per-layer similarity and sparsity as an SVG (atomic write). */
int zl_inspect_plot(const char *path, const zl_inspect_result *r, const char *label_a,
                    const char *label_b, const char *const *inputs, int n_inputs);

#ifdef __cplusplus
}
#endif
#endif
