/* Baking a DoRA LoRA's layers against a model's weights (include/ziplora/dora.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ziplora/dora.h"
#include "ziplora/progress.h"
#include "ziplora/unet.h"

void zl_dora_bake_report_free(zl_dora_bake_report *rep) {
    if (!rep) return;
    free(rep->layer), free(rep->rank_before), free(rep->rel_err), free(rep->norm);
    *rep = (zl_dora_bake_report){0};
}

/* One layer's base weight (f32, malloc'd) from the UNet or its text encoder. */
static int base_weight(const zl_lora_layer *y, const zl_unet *u, zl_text *t, const char *model, float **out) {
    const size_t n = (size_t)y->out_features * y->in_features * y->kh * y->kw;
    float *W = malloc(n * sizeof(float));
    if (!W) return zl_set_error(ZL_ENOMEM, "out of memory");
    int rc;
    if (y->part == ZL_PART_UNET) rc = zl_unet_module_weight(u, y->module, W, n);
    else {
        const zl_clip *c = zl_text_encoder(t, y->part);
        rc = c ? zl_clip_module_weight(c, y->module, W, n)
               : zl_set_error(ZL_ENOTFOUND, "the model %s has no second text encoder", model);
    }
    if (rc) {
        free(W);
        return rc;
    }
    *out = W;
    return ZL_OK;
}

int zl_lora_bake_dora_model(zl_lora *l, const zl_model_paths *mp, const zl_text_load_opts *to, int rank,
                            zl_dora_bake_report *rep) {
    zl_dora_bake_report r = {0};
    int need_unet = 0, need_te = 0;
    for (int i = 0; i < l->n; i++)
        if (l->layers[i].dora) l->layers[i].part == ZL_PART_UNET ? need_unet++ : need_te++;
    const int nd = need_unet + need_te;
    const char *model = mp->root ? mp->root : "(model)";
    const char *path = l->path ? l->path : "LoRA";
    if (!nd) {
        if (rep) *rep = r;
        return ZL_OK;
    }
    zl_unet *u = NULL;
    zl_text *t = NULL;
    int rc = ZL_OK;
    if (need_unet && (rc = zl_unet_load_model(mp, NULL, &u))) rc = zl_error_prefix(rc, "%s", model);
    if (!rc && need_te && (rc = zl_text_load(mp, to, &t))) rc = zl_error_prefix(rc, "%s", model);
    const zl_family mf = u ? zl_unet_get_config(u)->family : t ? zl_text_family(t) : ZL_FAMILY_UNKNOWN;
    if (!rc && l->family != ZL_FAMILY_UNKNOWN && mf != ZL_FAMILY_UNKNOWN && l->family != mf)
        rc = zl_set_error(ZL_EINVAL, "%s: this LoRA is for %s but the model %s is %s", path, zl_family_name(l->family),
                          model, zl_family_name(mf));
    r.n = nd;
    r.layer = malloc(sizeof(int) * (size_t)nd), r.rank_before = malloc(sizeof(int) * (size_t)nd);
    r.rel_err = calloc((size_t)nd, sizeof(double)), r.norm = calloc((size_t)nd, sizeof(double));
    if (!rc && (!r.layer || !r.rank_before || !r.rel_err || !r.norm)) rc = zl_set_error(ZL_ENOMEM, "out of memory");
    for (int i = 0, j = 0; !rc && i < l->n; i++)
        if (l->layers[i].dora) r.layer[j++] = i;
    zl_progress pb;
    const int began = !rc;
    if (began) {
        zl_info("%s: baking %d DoRA layer%s with the weights of %s", path, nd, nd == 1 ? "" : "s", model);
        zl_progress_begin(&pb, "bake DoRA", nd);
    }
    /* One layer per thread (each factorisation runs single-threaded). Errors are per thread:
     * the first failing layer's message is kept. */
    int done = 0, failed = rc, first_bad = nd;
    char msg[2048] = "";
    #pragma omp parallel for schedule(dynamic, 1) if (!rc)
    for (int j = 0; j < nd; j++) {
        int stop;
        #pragma omp atomic read
        stop = failed;
        if (stop) continue;
        zl_lora_layer *y = &l->layers[r.layer[j]];
        r.rank_before[j] = y->rank;
        float *W = NULL;
        int lrc = base_weight(y, u, t, model, &W);
        if (lrc) lrc = zl_error_prefix(lrc, "%s: DoRA layer '%s' against %s", path, y->module, model);
        else lrc = zl_lora_bake_dora(y, W, rank, &r.rel_err[j], &r.norm[j]);
        free(W);
        #pragma omp critical(zl_dora_bake)
        {
            if (lrc && j < first_bad) {
                first_bad = j;
                snprintf(msg, sizeof msg, "%s", zl_errmsg());
                failed = lrc;
            }
            if (!lrc) zl_progress_update(&pb, ++done, NULL);
        }
    }
    if (began) zl_progress_end(&pb, NULL);
    if (!rc && failed) rc = zl_set_error(failed, "%s", msg);
    zl_unet_free(u);
    zl_text_free(t);
    if (rc) {
        zl_dora_bake_report_free(&r);
        return rc;
    }
    double dropped = 0, total = 0;
    for (int j = 0; j < nd; j++) {
        dropped += r.rel_err[j] * r.rel_err[j] * r.norm[j] * r.norm[j];
        total += r.norm[j] * r.norm[j];
    }
    r.overall = total > 0 ? sqrt(dropped / total) : 0.0;
    l->n_dora = 0;
    zl_info("%s: %d DoRA layer%s baked into plain ones (rank %s), relative error %.3g overall", path, nd,
            nd == 1 ? "" : "s", rank > 0 ? "as asked" : "each its own", r.overall);
    if (rep) *rep = r;
    else zl_dora_bake_report_free(&r);
    return ZL_OK;
}
