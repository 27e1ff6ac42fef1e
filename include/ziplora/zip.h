/* The ZipLoRA objective (spec/ziplora.md, FIXTURES.md zip_io) as a library
 * function: per-layer mergers m_c, m_s (one value per input feature; input
 * channels for convs), the merged model f_m = base + both LoRAs as runtime
 * branches y = W x + s_c B_c A_c (m_c ⊙ x) + s_s B_s A_s (m_s ⊙ x), and
 *
 *   L = mse(f_m(x_c), f_c(x_c)) + mse(f_m(x_s), f_s(x_s)) + λ Σ_layers mean_j |m_c[j] m_s[j]|
 *
 * where the similarity sum runs over layers that hold both LoRAs; a layer
 * holding one LoRA has one merger (trained too). dL/dm comes from the UNet
 * backward plus the similarity term's subgradient λ sign(m_c m_s) m_s / n
 * (sign 0 at 0, as torch's abs). Adam as torch.optim.Adam (bias-corrected, no
 * weight decay).
 *
 * A zl_zip owns the LoRA state of its UNet while it lives: creating one clears
 * any LoRA the UNet holds and attaches the two as runtime branches (slot 0
 * content, slot 1 style, weight 1); freeing it clears them again. The LoRAs
 * must outlive the zip. */
#ifndef ZIPLORA_ZIP_H
#define ZIPLORA_ZIP_H

#include "ziplora/lora.h"
#include "ziplora/unet.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double lambda;              /* similarity weight (0.01) */
    double lr, beta1, beta2;    /* Adam (0.01, 0.9, 0.999) */
    double eps;                 /* Adam (1e-8) */
    zl_unet_grad_mode grad_mode; /* ZL_UNET_GRAD_RECOMPUTE by default (bounded memory) */
} zl_zip_opts;

void zl_zip_opts_default(zl_zip_opts *o);

/* One layer: side 0 content, 1 style. m/grad of a side are NULL when that LoRA
 * lacks the layer. */
typedef struct {
    char *module;        /* canonical diffusers module name */
    int n;               /* input features (merger length) */
    float *m[2];         /* [n] mergers */
    float *grad[2];      /* [n] dL/dm of the last evaluation with gradients */
    double *adam_m[2];   /* [n] Adam first moments */
    double *adam_v[2];   /* [n] Adam second moments */
} zl_zip_layer;

typedef struct {
    double loss_content, loss_style, similarity, total;
} zl_zip_loss;

typedef struct zl_zip zl_zip;

/* Mergers start at 1 (the direct merge). Only UNet layers take part. */
int zl_zip_create(zl_unet *u, const zl_lora *content, const zl_lora *style, const zl_zip_opts *opts, zl_zip **out);
void zl_zip_free(zl_zip *z);

int zl_zip_n_layers(const zl_zip *z);
const zl_zip_layer *zl_zip_layer_at(const zl_zip *z, int i);
/* The layer of a module, or NULL. */
const zl_zip_layer *zl_zip_find(const zl_zip *z, const char *module);
/* Adam steps taken so far. */
int zl_zip_steps(const zl_zip *z);

/* Set one merger (side 0 content, 1 style) to v [n]. */
int zl_zip_set_merger(zl_zip *z, const char *module, int side, const float *v, int n);
/* Set every merger a mergers file holds (zl_mergers_load); entries naming a
 * layer or side this zip lacks are an error. Text-encoder entries are ignored. */
int zl_zip_set_mergers(zl_zip *z, const zl_mergers *m);
/* Write all mergers as "<module>.merger_content|style" F32 [n] (atomic). */
int zl_zip_save_mergers(const zl_zip *z, const char *path);

/* The targets f_content(x_c) and f_style(x_s): each LoRA alone (weight 1, no
 * mergers) on its own input. Outputs [B, out_channels, H, W]. */
int zl_zip_targets(zl_zip *z, const zl_unet_input *xc, const zl_unet_input *xs, float *target_c, float *target_s);

/* Evaluate L at the current mergers; with want_grad also every layer's grad.
 * xc/xs: the noisy latents with their conditioning; targets as above. */
int zl_zip_eval(zl_zip *z, const zl_unet_input *xc, const float *target_c, const zl_unet_input *xs,
                const float *target_s, int want_grad, zl_zip_loss *loss);
/* One Adam step on every merger from the grads of the last zl_zip_eval with gradients. */
int zl_zip_adam_step(zl_zip *z);

#ifdef __cplusplus
}
#endif
#endif
