/* State of one `zip` / `eval-merge` run, shared by the driver's files
 * (zip_run.c: inputs, draws, modes; zip_run_out.c: the run, its outputs and
 * eval-merge) and visible to modes through the accessors of ziprun.h only. */
#ifndef ZL_LORA_ZIP_RUN_INTERNAL_H
#define ZL_LORA_ZIP_RUN_INTERNAL_H

#include "ziplora/pipeline.h"
#include "ziplora/progress.h"
#include "ziplora/safetensors.h"
#include "ziplora/ziprun.h"

struct zl_ziprun {
    const zl_ziprun_params *p;
    double t0;
    /* model: a pipeline (full model), or a bare UNet (fixed inputs) */
    zl_pipeline *pipe;
    zl_model_paths paths;
    int have_paths;
    zl_unet *own_unet;
    zl_unet *unet; /* the one the zip works on */
    zl_unet_config ucfg;
    int scale;     /* VAE pixels per latent cell */
    int res;       /* working resolution in pixels */
    float cfg;     /* guidance for references and previews */
    zl_lora *lora[2];
    zl_lora **extra; /* p->extra_loras, loaded for the model */
    int n_extra;
    zl_zip *zip;
    int n_both;    /* layers holding both LoRAs */
    /* prompts and conditioning: [B, T, D] / [B, P] per side, for the targets
     * (each LoRA's own text encoders) and for the merged branch */
    char *prompt[2];
    const char *prompt_src[2];
    int clip_skip;             /* for every prompt encoding (1: the last layer) */
    const char *clip_skip_src; /* "flag", "ss_clip_skip" or "default" */
    int B, C, h, w, T, D, P;
    int te_any;      /* a LoRA has text-encoder layers */
    int cond_shared; /* cond_m aliases cond_t (fixed inputs) */
    float *cond_t[2], *pool_t[2], *cond_m[2], *pool_m[2];
    float time_ids[6];
    float *time_ids_b;  /* [B, 6] */
    /* references [n, C, h, w] (scaled latents) */
    float *ref[2];
    int n_ref[2];
    /* fixed inputs */
    zl_st_file *fx;
    float *fx_noisy[2], *fx_target[2], *fx_t, *fx_time_ids;
    /* the current draw */
    zl_schedule sched;
    float *x[2], *noise, *target[2], *tstep; /* [B, C, h, w] x3, [B] */
    int cur_draw, last_t;
    /* log */
    zl_zip_loss *curve;
    int n_curve, cap_curve;
    char **notes;
    int n_notes;
    zl_progress prog;
    int progress_on;
    int stopped_early;
    int interrupted;       /* a graceful stop (zl_stop_requested) ended the optimisation */
    char mode[32];
    char mode_why[512];
    double gflops, est_flops_step, est_full_s;
};

int zr_prepare(zl_ziprun *r, const zl_ziprun_params *p, int for_eval);
void zr_release(zl_ziprun *r);
int zr_choose_mode(zl_ziprun *r, zl_ziprun_mode_fn *fn);
int zr_check_mergers(zl_ziprun *r, int step);
int zr_noisy(zl_ziprun *r, int k, uint64_t base);
/* [negative, prompt] conditionings for n prompts with `ls` folded into the text encoders. */
int zr_variant_conds(zl_ziprun *r, const zl_lora *const *ls, const float *ws, int nl, const char *const *prompts,
                     int n, zl_cond *cond);

#endif
