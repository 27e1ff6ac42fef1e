/* A model weight as stored: a view into a mapped safetensors file in its own
 * dtype, optionally widened to float32 once (resident) or per use (scratch).
 * This is how the "keep weights in their stored dtype" memory mode works. */
#ifndef ZL_NN_WEIGHT_H
#define ZL_NN_WEIGHT_H

#include <stdint.h>

#include "ziplora/safetensors.h"

typedef struct {
    zl_dtype dtype;
    const void *data;   /* stored bytes (mmap), or NULL if only f32 is set */
    int ndim;
    int64_t shape[4];
    int64_t numel;
    float *f32;         /* owned float32 copy when resident (or when built in memory) */
    uint16_t *bf16;     /* owned, packed for the bfloat16 tile products (zl_bf16_pack_weight), or NULL */
} zl_weight;

/* Point w at a safetensors tensor (no copy). */
void zl_weight_from_st(zl_weight *w, const zl_st_tensor *t);
/* The weight as float32: w->f32 if resident, the stored data if it is aligned
 * F32, else converted into `scratch` (numel floats) and scratch returned. */
const float *zl_weight_f32(const zl_weight *w, float *scratch);
/* Convert once and keep (w->f32 owned). */
int zl_weight_make_resident(zl_weight *w);
/* Replace the contents by an owned float32 buffer (takes ownership of f). */
void zl_weight_set_f32(zl_weight *w, float *f, int ndim, const int64_t *shape);
void zl_weight_free(zl_weight *w);
/* Forget the bfloat16 packing (whenever the weight's values change). */
void zl_weight_drop_packed(zl_weight *w);
/* True if zl_weight_f32 needs a scratch buffer. */
int zl_weight_needs_scratch(const zl_weight *w);

#endif
