/* FLOP counts of the models' forward passes, for benchmarks (GFLOP/s) and for
 * estimating run times (zip --mode auto). A multiply-add counts 2. Counted:
 * convolutions 2*Cout*Cin*kh*kw*Ho*Wo, Linear layers 2*N*in*out, attention
 * 4*Tq*Tk*C per batch item (q k^T and the weighted sum of v). Not counted:
 * norms, activations, softmax, residual adds, resampling -- all linear in the
 * activation size and a fraction of a percent of the total. LoRA branches are
 * not included (the base model's count). */
#ifndef ZIPLORA_FLOPS_H
#define ZIPLORA_FLOPS_H

#include "ziplora/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double conv;      /* every conv (3x3, 1x1 shortcuts, SD1 conv proj_in/out) */
    double linear;    /* every Linear: time embeddings, projections, q/k/v/out, feed-forward */
    double attention; /* softmax(q k^T) v products */
    double total;
} zl_flops;

/* One UNet forward: sample [B, in, H, W], context [B, T, ctx]. H and W must be
 * divisible by 2^(levels-1). */
int zl_unet_flops(const zl_unet_config *cfg, int B, int H, int W, int T, zl_flops *out);

#ifdef __cplusplus
}
#endif
#endif
