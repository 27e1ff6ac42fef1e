/* Stored-dtype model weights, widened to float32 on demand. */
#include "nn/weight.h"

#include <stdlib.h>
#include <string.h>

void zl_weight_from_st(zl_weight *w, const zl_st_tensor *t) {
    memset(w, 0, sizeof *w);
    w->dtype = t->dtype;
    w->data = t->data;
    w->ndim = t->ndim > 4 ? 4 : t->ndim;
    for (int i = 0; i < w->ndim; i++) w->shape[i] = t->shape[i];
    w->numel = t->numel;
}

int zl_weight_needs_scratch(const zl_weight *w) {
    if (w->f32) return 0;
    return !(w->dtype == ZL_DT_F32 && ((uintptr_t)w->data % sizeof(float)) == 0);
}

const float *zl_weight_f32(const zl_weight *w, float *scratch) {
    if (w->f32) return w->f32;
    if (!zl_weight_needs_scratch(w)) return (const float *)w->data;
    zl_convert_to_f32(w->dtype, w->data, scratch, (size_t)w->numel);
    return scratch;
}

int zl_weight_make_resident(zl_weight *w) {
    if (w->f32) return ZL_OK;
    float *f = malloc((size_t)(w->numel ? w->numel : 1) * sizeof(float));
    if (!f) return zl_set_error(ZL_ENOMEM, "out of memory widening a weight of %lld values", (long long)w->numel);
    zl_convert_to_f32(w->dtype, w->data, f, (size_t)w->numel);
    w->f32 = f;
    return ZL_OK;
}

void zl_weight_set_f32(zl_weight *w, float *f, int ndim, const int64_t *shape) {
    free(w->f32);
    free(w->bf16);
    memset(w, 0, sizeof *w);
    w->dtype = ZL_DT_F32;
    w->f32 = f;
    w->ndim = ndim;
    w->numel = 1;
    for (int i = 0; i < ndim; i++) {
        w->shape[i] = shape[i];
        w->numel *= shape[i];
    }
}

void zl_weight_drop_packed(zl_weight *w) {
    free(w->bf16);
    w->bf16 = NULL;
}

void zl_weight_free(zl_weight *w) {
    free(w->f32);
    free(w->bf16);
    memset(w, 0, sizeof *w);
}
