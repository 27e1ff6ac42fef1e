/* The canonical in-memory LoRA (include/ziplora/lora.h): its lifetime and
 * lookups. Loading lives in lora_load.c, writing elsewhere in src/lora/. */
#include <stdlib.h>
#include <string.h>

#include "ziplora/lora.h"

void zl_lora_free(zl_lora *l) {
    if (!l) return;
    for (int i = 0; i < l->n; i++) {
        free(l->layers[i].module);
        free(l->layers[i].down);
        free(l->layers[i].up);
    }
    free(l->layers);
    for (int i = 0; i < l->n_meta; i++) {
        free(l->meta_k[i]);
        free(l->meta_v[i]);
    }
    free(l->meta_k);
    free(l->meta_v);
    free(l->path);
    free(l);
}

/* Layers are sorted by (part, module), so this is a binary search. */
const zl_lora_layer *zl_lora_find(const zl_lora *l, zl_part part, const char *module) {
    if (!l || !module) return NULL;
    int lo = 0, hi = l->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const zl_lora_layer *x = &l->layers[mid];
        int c = x->part != part ? (x->part < part ? -1 : 1) : strcmp(x->module, module);
        if (!c) return x;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}
