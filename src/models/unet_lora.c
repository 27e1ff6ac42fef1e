/* LoRAs in the UNet: attaching a canonical zl_lora to the modules it names,
 * either folded into resident float32 weights or as runtime branches with
 * per-input-feature mergers; setting mergers; removing every LoRA. Validation
 * happens before any change, so a failed attach leaves the UNet as it was. */
#include <stdlib.h>
#include <string.h>

#include "models/unet_internal.h"
#include "nn/ops.h"
#include "ziplora/progress.h"

/* The shape check of one LoRA layer against its module. A Linear-kind LoRA on a
 * 1x1 conv (SD1 proj_in/out) and a 1x1 conv LoRA on a Linear are the same matrix. */
static int check_layer(const zl_unet *u, const zl_lora *l, const zl_lora_layer *ly, zl_unet_mod **out) {
    const char *path = l->path ? l->path : "LoRA";
    zl_unet_mod *m = zl_unet_find_mod(u, ly->module);
    if (!m || m->kind == ZL_MOD_NORM)
        return zl_set_error(ZL_ENOTFOUND, "%s: layer '%s' names no Linear or conv module of this UNet", path, ly->module);
    int kh = ly->kind == ZL_LORA_CONV ? ly->kh : 1, kw = ly->kind == ZL_LORA_CONV ? ly->kw : 1;
    if (ly->rank < 1 || !ly->down || !ly->up || ly->in_features != m->in || ly->out_features != m->out ||
        kh != m->kh || kw != m->kw)
        return zl_set_error(ZL_ESHAPE, "%s: layer '%s' is %dx%d (kernel %dx%d, rank %d) but the module is %dx%d (kernel %dx%d)",
                            path, ly->module, ly->out_features, ly->in_features, kh, kw, ly->rank, m->out, m->in, m->kh,
                            m->kw);
    *out = m;
    return ZL_OK;
}

int zl_unet_add_lora(zl_unet *u, const zl_lora *l, float w, zl_unet_lora_mode mode, int *slot) {
    const char *path = l->path ? l->path : "LoRA";
    if (l->family != ZL_FAMILY_UNKNOWN && l->family != u->cfg.family)
        return zl_set_error(ZL_EINVAL, "%s: this LoRA is for %s but the model is %s", path, zl_family_name(l->family),
                            zl_family_name(u->cfg.family));
    if (mode != ZL_UNET_LORA_FOLD && mode != ZL_UNET_LORA_RUNTIME)
        return zl_set_error(ZL_EINVAL, "unknown LoRA mode %d", (int)mode);
    int rc, n_unet = 0;
    for (int i = 0; i < l->n; i++) {
        if (l->layers[i].part != ZL_PART_UNET) continue;
        zl_unet_mod *m;
        if ((rc = check_layer(u, l, &l->layers[i], &m))) return rc;
        if (l->layers[i].dora && mode != ZL_UNET_LORA_FOLD)
            return zl_set_error(ZL_EUNSUPPORTED, "%s: layer '%s' is DoRA, which can only be folded into the weights "
                                                 "(its update depends on them), not run as a branch with mergers",
                                path, l->layers[i].module);
        n_unet++;
    }
    if (!n_unet) zl_warn("%s: no UNet layers", path);
    int k = u->n_slots;
    for (int i = 0; i < l->n; i++) {
        const zl_lora_layer *ly = &l->layers[i];
        if (ly->part != ZL_PART_UNET) continue;
        zl_unet_mod *m = zl_unet_find_mod(u, ly->module);
        if (mode == ZL_UNET_LORA_FOLD) {
            /* The first fold of a stored-dtype weight makes a private f32 copy; the mapping is never written. */
            if ((rc = zl_weight_make_resident(&m->w))) return rc;
            zl_weight_drop_packed(&m->w);
            if ((rc = zl_lora_fold(ly, w, m->w.f32))) return zl_error_prefix(rc, "%s", path);
            m->folded = 1;
        } else {
            zl_unet_branch *nb = realloc(m->br, (size_t)(m->n_br + 1) * sizeof *nb);
            if (!nb) return zl_set_error(ZL_ENOMEM, "out of memory");
            m->br = nb;
            zl_unet_branch *br = &m->br[m->n_br];
            memset(br, 0, sizeof *br);
            if (!(br->merger = malloc((size_t)m->in * sizeof(float)))) return zl_set_error(ZL_ENOMEM, "out of memory");
            for (int j = 0; j < m->in; j++) br->merger[j] = 1.0f;
            br->slot = k;
            br->w = w;
            br->s = zl_lora_scale(ly);
            br->rank = ly->rank;
            br->down = ly->down;
            br->up = ly->up;
            m->n_br++;
        }
    }
    u->n_slots++;
    if (slot) *slot = k;
    return ZL_OK;
}

int zl_unet_set_merger(zl_unet *u, int slot, const char *module, const float *mv, int n) {
    zl_unet_mod *m = zl_unet_find_mod(u, module);
    if (!m) return zl_set_error(ZL_ENOTFOUND, "set merger: no UNet module '%s'", module);
    for (int k = 0; k < m->n_br; k++) {
        zl_unet_branch *br = &m->br[k];
        if (br->slot != slot) continue;
        if (n != m->in)
            return zl_set_error(ZL_ESHAPE, "set merger: '%s' has %d input features, got %d values", module, m->in, n);
        memcpy(br->merger, mv, (size_t)n * sizeof(float));
        br->merger_set = 0;
        for (int j = 0; j < n; j++) br->merger_set |= mv[j] != 1.0f;
        return ZL_OK;
    }
    return zl_set_error(ZL_ENOTFOUND, "set merger: module '%s' has no runtime LoRA branch in slot %d", module, slot);
}

void zl_unet_release_packed(zl_unet *u) {
    if (!u) return;
    for (int i = 0; i < u->n_mods; i++) {
        zl_weight_drop_packed(&u->mods[i]->w);
        u->mods[i]->bf16_uses = 0;
    }
}

int zl_unet_clear_loras(zl_unet *u) {
    for (int i = 0; i < u->n_mods; i++) {
        zl_unet_mod *m = u->mods[i];
        for (int k = 0; k < m->n_br; k++) {
            free(m->br[k].merger);
            free(m->br[k].grad);
        }
        free(m->br);
        m->br = NULL;
        m->n_br = 0;
        if (!m->folded) continue;
        zl_weight_drop_packed(&m->w);
        if (u->mode == ZL_UNET_WEIGHTS_F32) {
            zl_convert_to_f32(m->w.dtype, m->w.data, m->w.f32, (size_t)m->w.numel);
        } else {
            free(m->w.f32);
            m->w.f32 = NULL;
        }
        m->folded = 0;
    }
    u->n_slots = 0;
    return ZL_OK;
}

int zl_unet_module_weight(const zl_unet *u, const char *module, float *dst, size_t n) {
    const zl_unet_mod *m = zl_unet_find_mod(u, module);
    if (!m || m->kind == ZL_MOD_NORM)
        return zl_set_error(ZL_ENOTFOUND, "'%s' names no Linear or conv module of this UNet", module);
    const size_t want = (size_t)m->out * m->in * m->kh * m->kw;
    if (n != want)
        return zl_set_error(ZL_ESHAPE, "module '%s' has %zu weights, not %zu", module, want, n);
    const float *w = zl_weight_f32(&m->w, dst);
    if (w != dst) memcpy(dst, w, n * sizeof(float));
    return ZL_OK;
}
