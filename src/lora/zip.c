/* The ZipLoRA objective, its gradient and Adam (include/ziplora/zip.h): owns the
 * per-layer mergers and optimizer state, pushes the mergers into the UNet's
 * runtime branches, runs the taped forward and backward per side, adds the
 * similarity term, and steps Adam. Mergers files are read by zl_mergers_load
 * (merge.c) and written here in the same format. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/ops.h"
#include "ziplora/zip.h"

#define SLOT_C 0
#define SLOT_S 1

struct zl_zip {
    zl_unet *u;
    const zl_lora *lora[2];
    zl_zip_opts o;
    int n;
    zl_zip_layer *layers; /* sorted by module name */
    int steps;
    int have_grad;
};

void zl_zip_opts_default(zl_zip_opts *o) {
    o->lambda = 0.01;
    o->lr = 0.01;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->grad_mode = ZL_UNET_GRAD_RECOMPUTE;
}

static void layer_free(zl_zip_layer *l) {
    free(l->module);
    for (int s = 0; s < 2; s++) {
        free(l->m[s]);
        free(l->grad[s]);
        free(l->adam_m[s]);
        free(l->adam_v[s]);
    }
}

void zl_zip_free(zl_zip *z) {
    if (!z) return;
    if (z->u) zl_unet_clear_loras(z->u);
    for (int i = 0; i < z->n; i++) layer_free(&z->layers[i]);
    free(z->layers);
    free(z);
}

static int cmp_layer(const void *a, const void *b) {
    return strcmp(((const zl_zip_layer *)a)->module, ((const zl_zip_layer *)b)->module);
}

const zl_zip_layer *zl_zip_find(const zl_zip *z, const char *module) {
    zl_zip_layer key = {.module = (char *)module};
    return bsearch(&key, z->layers, (size_t)z->n, sizeof *z->layers, cmp_layer);
}

int zl_zip_n_layers(const zl_zip *z) { return z->n; }
const zl_zip_layer *zl_zip_layer_at(const zl_zip *z, int i) { return i >= 0 && i < z->n ? &z->layers[i] : NULL; }
int zl_zip_steps(const zl_zip *z) { return z->steps; }

/* Attach both LoRAs as runtime branches (slots 0 and 1). */
static int attach(zl_zip *z) {
    int rc, slot;
    zl_unet_clear_loras(z->u);
    for (int s = 0; s < 2; s++) {
        if ((rc = zl_unet_add_lora(z->u, z->lora[s], 1.0f, ZL_UNET_LORA_RUNTIME, &slot))) return rc;
        if (slot != s) return zl_set_error(ZL_EINVAL, "zip: unexpected LoRA slot %d", slot);
    }
    return ZL_OK;
}

static int alloc_side(zl_zip_layer *l, int s) {
    l->m[s] = malloc((size_t)l->n * sizeof(float));
    l->grad[s] = calloc((size_t)l->n, sizeof(float));
    l->adam_m[s] = calloc((size_t)l->n, sizeof(double));
    l->adam_v[s] = calloc((size_t)l->n, sizeof(double));
    if (!l->m[s] || !l->grad[s] || !l->adam_m[s] || !l->adam_v[s]) return zl_set_error(ZL_ENOMEM, "out of memory");
    for (int j = 0; j < l->n; j++) l->m[s][j] = 1.0f;
    return ZL_OK;
}

int zl_zip_create(zl_unet *u, const zl_lora *content, const zl_lora *style, const zl_zip_opts *opts, zl_zip **out) {
    *out = NULL;
    if (!u || !content || !style) return zl_set_error(ZL_EINVAL, "zip: a UNet and two LoRAs are required");
    zl_zip *z = calloc(1, sizeof *z);
    if (!z) return zl_set_error(ZL_ENOMEM, "out of memory");
    if (opts) z->o = *opts;
    else zl_zip_opts_default(&z->o);
    z->lora[0] = content;
    z->lora[1] = style;
    int cap = content->n + style->n, rc = ZL_OK;
    z->layers = calloc((size_t)(cap ? cap : 1), sizeof *z->layers);
    if (!z->layers) { free(z); return zl_set_error(ZL_ENOMEM, "out of memory"); }
    for (int s = 0; s < 2 && !rc; s++) {
        const zl_lora *l = z->lora[s];
        for (int i = 0; i < l->n && !rc; i++) {
            const zl_lora_layer *y = &l->layers[i];
            if (y->part != ZL_PART_UNET) continue;
            zl_zip_layer *zl = NULL;
            for (int k = 0; k < z->n && !zl; k++)
                if (!strcmp(z->layers[k].module, y->module)) zl = &z->layers[k];
            if (!zl) {
                zl = &z->layers[z->n++];
                zl->n = y->in_features;
                if (!(zl->module = strdup(y->module))) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); break; }
            } else if (zl->n != y->in_features) {
                rc = zl_set_error(ZL_ESHAPE, "zip: layer '%s' has %d input features in the content LoRA but %d in the style LoRA",
                                  y->module, zl->n, y->in_features);
                break;
            }
            if (zl->m[s]) { rc = zl_set_error(ZL_EFORMAT, "zip: layer '%s' appears twice in one LoRA", y->module); break; }
            rc = alloc_side(zl, s);
        }
    }
    if (!rc && !z->n) rc = zl_set_error(ZL_EINVAL, "zip: the LoRAs hold no UNet layers");
    if (rc) {
        for (int i = 0; i < z->n; i++) layer_free(&z->layers[i]);
        free(z->layers);
        free(z);
        return rc;
    }
    qsort(z->layers, (size_t)z->n, sizeof *z->layers, cmp_layer);
    z->u = u;
    if ((rc = attach(z))) {
        zl_zip_free(z);
        return rc;
    }
    *out = z;
    return ZL_OK;
}

int zl_zip_set_merger(zl_zip *z, const char *module, int side, const float *v, int n) {
    zl_zip_layer *l = (zl_zip_layer *)zl_zip_find(z, module);
    if (!l || side < 0 || side > 1 || !l->m[side])
        return zl_set_error(ZL_ENOTFOUND, "zip: no %s merger for layer '%s'", side ? "style" : "content", module);
    if (n != l->n)
        return zl_set_error(ZL_ESHAPE, "zip: merger for '%s' has %d values but the layer has %d input features", module,
                            n, l->n);
    for (int j = 0; j < n; j++)
        if (!isfinite(v[j])) return zl_set_error(ZL_ENUMERIC, "zip: merger for '%s' holds a non-finite value", module);
    memcpy(l->m[side], v, (size_t)n * sizeof(float));
    return ZL_OK;
}

int zl_zip_set_mergers(zl_zip *z, const zl_mergers *mg) {
    /* Validate everything first so that a bad file changes nothing. */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < z->n; i++) {
            zl_zip_layer *l = &z->layers[i];
            for (int s = 0; s < 2; s++) {
                int n = 0;
                const float *v = zl_mergers_find(mg, ZL_PART_UNET, l->module, s, &n);
                if (!v) continue;
                if (!l->m[s])
                    return zl_set_error(ZL_ENOTFOUND, "zip: the mergers file has a %s merger for '%s', which that LoRA lacks",
                                        s ? "style" : "content", l->module);
                if (n != l->n)
                    return zl_set_error(ZL_ESHAPE, "zip: merger for '%s' has %d values but the layer has %d input features",
                                        l->module, n, l->n);
                if (pass) memcpy(l->m[s], v, (size_t)n * sizeof(float));
            }
        }
    return ZL_OK;
}

int zl_zip_save_mergers(const zl_zip *z, const char *path) {
    int cnt = 0;
    for (int i = 0; i < z->n; i++) cnt += !!z->layers[i].m[0] + !!z->layers[i].m[1];
    zl_st_entry *e = calloc((size_t)cnt, sizeof *e);
    char **names = calloc((size_t)cnt, sizeof *names);
    int rc = ZL_OK, k = 0;
    if (!e || !names) rc = zl_set_error(ZL_ENOMEM, "out of memory");
    for (int i = 0; i < z->n && !rc; i++)
        for (int s = 0; s < 2 && !rc; s++) {
            const zl_zip_layer *l = &z->layers[i];
            if (!l->m[s]) continue;
            size_t len = strlen(l->module) + 16;
            if (!(names[k] = malloc(len))) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); break; }
            snprintf(names[k], len, "%s.merger_%s", l->module, s ? "style" : "content");
            e[k].name = names[k];
            e[k].dtype = ZL_DT_F32;
            e[k].ndim = 1;
            e[k].shape[0] = l->n;
            e[k].data = l->m[s];
            k++;
        }
    if (!rc) {
        zl_st_meta_kv meta[1] = {{"format", "ziplora-mergers"}};
        rc = zl_st_write(path, e, k, meta, 1, NULL, 0);
    }
    for (int i = 0; names && i < cnt; i++) free(names[i]);
    free(names);
    free(e);
    return rc;
}

/* Copy the zip's mergers into the UNet's branches. */
static int push(zl_zip *z) {
    for (int i = 0; i < z->n; i++) {
        zl_zip_layer *l = &z->layers[i];
        for (int s = 0; s < 2; s++) {
            if (!l->m[s]) continue;
            int rc = zl_unet_set_merger(z->u, s, l->module, l->m[s], l->n);
            if (rc) return rc;
        }
    }
    return ZL_OK;
}

static size_t out_numel(const zl_zip *z, const zl_unet_input *in) {
    return (size_t)in->B * zl_unet_get_config(z->u)->out_channels * in->H * in->W;
}

int zl_zip_targets(zl_zip *z, const zl_unet_input *xc, const zl_unet_input *xs, float *target_c, float *target_s) {
    int rc = ZL_OK;
    const zl_unet_input *in[2] = {xc, xs};
    float *tg[2] = {target_c, target_s};
    for (int s = 0; s < 2 && !rc; s++) {
        zl_unet_clear_loras(z->u);
        if ((rc = zl_unet_add_lora(z->u, z->lora[s], 1.0f, ZL_UNET_LORA_RUNTIME, NULL))) break;
        rc = zl_unet_forward(z->u, in[s], tg[s]);
    }
    int rc2 = attach(z); /* back to the merged model (mergers are pushed before every use) */
    return rc ? rc : rc2;
}

/* mse(f_m(x), target) and, with grad, the UNet backward of it. */
static int side_eval(zl_zip *z, const zl_unet_input *in, const float *target, int want_grad, double *loss) {
    size_t n = out_numel(z, in);
    float *out = malloc(n * sizeof(float)), *dout = want_grad ? calloc(n, sizeof(float)) : NULL;
    int rc = ZL_OK;
    if (!out || (want_grad && !dout)) {
        rc = zl_set_error(ZL_ENOMEM, "out of memory");
    } else if (!want_grad) {
        if (!(rc = zl_unet_forward(z->u, in, out))) *loss = zl_mse(out, target, n, NULL, 1.0f);
    } else {
        zl_unet_tape *t = NULL;
        if (!(rc = zl_unet_forward_tape(z->u, in, z->o.grad_mode, out, &t))) {
            *loss = zl_mse(out, target, n, dout, 1.0f);
            rc = zl_unet_backward(z->u, t, dout, NULL);
        }
        zl_unet_tape_free(t);
    }
    free(out);
    free(dout);
    return rc;
}

int zl_zip_eval(zl_zip *z, const zl_unet_input *xc, const float *target_c, const zl_unet_input *xs,
                const float *target_s, int want_grad, zl_zip_loss *loss) {
    if (!xc || !xs || !target_c || !target_s || !loss) return zl_set_error(ZL_EINVAL, "zip: missing input or target");
    int rc = push(z);
    if (!rc && want_grad) rc = zl_unet_zero_merger_grads(z->u);
    if (!rc) rc = side_eval(z, xc, target_c, want_grad, &loss->loss_content);
    if (!rc) rc = side_eval(z, xs, target_s, want_grad, &loss->loss_style);
    if (rc) {
        z->have_grad = 0;
        return rc;
    }
    double lam = z->o.lambda, sim = 0;
    for (int i = 0; i < z->n; i++) {
        zl_zip_layer *l = &z->layers[i];
        int both = l->m[0] && l->m[1];
        if (both) {
            double acc = 0;
            for (int j = 0; j < l->n; j++) acc += fabs((double)l->m[0][j] * l->m[1][j]);
            sim += acc / l->n;
        }
        if (!want_grad) continue;
        for (int s = 0; s < 2; s++) {
            if (!l->m[s]) continue;
            int n = 0;
            const float *g = zl_unet_merger_grad(z->u, s, l->module, &n);
            if (!g || n != l->n) return zl_set_error(ZL_EINVAL, "zip: no gradient for layer '%s'", l->module);
            for (int j = 0; j < l->n; j++) {
                double gj = g[j];
                if (both) {
                    double p = (double)l->m[0][j] * l->m[1][j], other = l->m[1 - s][j];
                    gj += lam * (p > 0 ? 1 : p < 0 ? -1 : 0) * other / l->n;
                }
                l->grad[s][j] = (float)gj;
            }
        }
    }
    loss->similarity = sim;
    loss->total = loss->loss_content + loss->loss_style + lam * sim;
    z->have_grad = want_grad;
    return ZL_OK;
}

int zl_zip_adam_step(zl_zip *z) {
    if (!z->have_grad) return zl_set_error(ZL_EINVAL, "zip: Adam step without a gradient (call zl_zip_eval with want_grad)");
    z->steps++;
    double b1 = z->o.beta1, b2 = z->o.beta2;
    double bc1 = 1 - pow(b1, z->steps), bc2 = 1 - pow(b2, z->steps);
    double step = z->o.lr / bc1, sbc2 = sqrt(bc2);
    for (int i = 0; i < z->n; i++) {
        zl_zip_layer *l = &z->layers[i];
        for (int s = 0; s < 2; s++) {
            if (!l->m[s]) continue;
            for (int j = 0; j < l->n; j++) {
                double g = l->grad[s][j];
                double m = l->adam_m[s][j] = b1 * l->adam_m[s][j] + (1 - b1) * g;
                double v = l->adam_v[s][j] = b2 * l->adam_v[s][j] + (1 - b2) * g * g;
                /* torch.optim.Adam: p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps) */
                l->m[s][j] = (float)((double)l->m[s][j] - step * m / (sqrt(v) / sbc2 + z->o.eps));
            }
        }
    }
    z->have_grad = 0;
    return ZL_OK;
}
