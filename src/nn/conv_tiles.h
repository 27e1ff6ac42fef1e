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
/* The input gradient the same way: kc input channels per weight transform. */
void zl_conv2d_dx_winograd_chunks(float *dx, const float *dy, zl_dtype wdt, const void *Wt, const zl_conv_shape *s,
                                  int kc, int pc);

/* For tests: turn Winograd off (zl_conv2d_winograd_ok then says no), so that
 * a model can be compared with itself on im2col; and how many Winograd
 * convolutions (forward or input gradient) have run in this process. */
void zl_conv2d_winograd_disable(int off);
long zl_conv2d_winograd_calls(void);

#endif
