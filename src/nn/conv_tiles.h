/* Internal to src/nn and its tests: conv2d with an explicit number of output
 * rows per im2col tile (rows <= 0: chosen from the column-buffer budget, as
 * zl_conv2d_fwd/bwd do). Lets tests cover multi-tile paths on tiny shapes. */
#ifndef ZL_NN_CONV_TILES_H
#define ZL_NN_CONV_TILES_H

#include "nn/ops.h"

void zl_conv2d_fwd_rows(float *y, const float *x, const float *Wt, const float *b, const zl_conv_shape *s, int rows);
void zl_conv2d_bwd_rows(float *dx, float *dW, float *db, const float *dy, const float *x, const float *Wt,
                        const zl_conv_shape *s, int rows);

/* Winograd with explicit chunks: kc output channels per weight transform, pc
 * tiles per input transform (<= 0: chosen from the byte budgets). */
void zl_conv2d_fwd_winograd_chunks(float *y, const float *x, zl_dtype wdt, const void *Wt, const float *b,
                                   const zl_conv_shape *s, int kc, int pc);

#endif
