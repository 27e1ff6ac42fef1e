/* Baking DoRA LoRAs into plain ones against a model's weights (convert --model, zip,
 * eval-merge). A DoRA update depends on the base weights, so only a model's weights turn
 * it into a fixed low-rank update; see zl_lora_bake_dora for one layer. */
#ifndef ZIPLORA_DORA_H
#define ZIPLORA_DORA_H

#include "ziplora/lora.h"
#include "ziplora/model.h"
#include "ziplora/text.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int n;              /* DoRA layers baked */
    int *layer;         /* [n] their indices in the LoRA's layers */
    int *rank_before;   /* [n] each layer's rank before (its rank now is in the layer) */
    double *rel_err;    /* [n] ||D - up down||_F / ||D||_F, D = W' - W */
    double *norm;       /* [n] ||D||_F */
    double overall;     /* the relative Frobenius error over all of them */
} zl_dora_bake_report;

/* Every DoRA layer of l becomes a plain layer: the best rank-k approximation (k = rank, else
 * each layer's own; see zl_lora_bake_dora) of the change it makes at weight 1 to the weight of
 * the model's module. The UNet and the text encoders are loaded (mapped, stored dtype) only
 * when some DoRA layer is theirs; to may be NULL. Layers are baked in parallel with a progress
 * bar, and the overall error is said (zl_info). rep may be NULL; free it with
 * zl_dora_bake_report_free. On error some layers may be
 * baked already and l->n_dora is unchanged: free l. */
int zl_lora_bake_dora_model(zl_lora *l, const zl_model_paths *mp, const zl_text_load_opts *to, int rank,
                            zl_dora_bake_report *rep);
void zl_dora_bake_report_free(zl_dora_bake_report *rep);

#ifdef __cplusplus
}
#endif

#endif
