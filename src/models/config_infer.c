/* A UNet config inferred from the ldm key shapes of a single-file checkpoint.
 * Shapes give the levels, channels, layers per block, block types, transformer
 * depths, context width, projection kind and the added embedding. They cannot
 * give head counts or the GroupNorm group count, so those follow the real
 * models: SDXL heads of dim 64, SD1 8 heads, 32 groups. SDXL's time-id embedding
 * width is (added input - pooled) / 6, the pooled width read from bigG's
 * text_projection when the file has it, else the real 256. With that rule the SDXL base and SD 1.5
 * files get exactly their diffusers configs; other files need their config.json
 * (zl_unet_load_opts.config_path), and we warn when a guess was needed. */
#include <stdio.h>
#include <string.h>

#include "ziplora/progress.h"
#include "ziplora/unet.h"

static const zl_st_tensor *find(const zl_st_file *f, const char *prefix, const char *fmt, int a, int b) {
    char name[300], key[400];
    snprintf(name, sizeof name, fmt, a, b);
    snprintf(key, sizeof key, "%s%s", prefix, name);
    return zl_st_find(f, key);
}

static int count_blocks(const zl_st_file *f, const char *prefix, const char *blk) {
    int n = 0;
    char fmt[300];
    snprintf(fmt, sizeof fmt, "%s.transformer_blocks.%%d.norm1.weight", blk);
    while (n < 1000 && find(f, prefix, fmt, n, 0)) n++;
    return n;
}

int zl_unet_config_infer(const zl_st_file *f, const char *prefix, zl_unet_config *c) {
    memset(c, 0, sizeof *c);
    const char *path = zl_st_path(f);
    const zl_st_tensor *t = find(f, prefix, "input_blocks.0.0.weight", 0, 0), *o = find(f, prefix, "out.2.weight", 0, 0);
    const zl_st_tensor *te = find(f, prefix, "time_embed.0.weight", 0, 0);
    if (!t || t->ndim != 4 || !o || o->ndim != 4 || !te || te->ndim != 2)
        return zl_set_error(ZL_EFORMAT, "%s: not a UNet checkpoint (no %sinput_blocks.0.0 / out.2 / time_embed.0 weights)",
                            path, prefix);
    c->in_channels = (int)t->shape[1];
    c->out_channels = (int)o->shape[0];
    c->time_embed_dim = (int)te->shape[0];
    /* input_blocks 1.. are L resnets per level, each level but the last closed by a downsampler (.0.op). */
    int L = -1, n_levels = 1, run = 0, k;
    for (k = 1;; k++) {
        if (find(f, prefix, "input_blocks.%d.0.op.weight", k, 0)) {
            if (L < 0) L = run;
            else if (run != L) break;
            run = 0;
            n_levels++;
        } else if (find(f, prefix, "input_blocks.%d.0.in_layers.2.weight", k, 0)) {
            run++;
        } else {
            break;
        }
    }
    if (L < 0) L = run;
    if (L < 1 || run != L || n_levels > ZL_MAX_LEVELS)
        return zl_set_error(ZL_EFORMAT, "%s: cannot read the UNet's levels from input_blocks (block %d)", path, k);
    c->n_levels = n_levels;
    c->layers_per_block = L;
    for (int l = 0; l < n_levels; l++) {
        int blk = 1 + l * (L + 1);
        const zl_st_tensor *r = find(f, prefix, "input_blocks.%d.0.out_layers.3.weight", blk, 0);
        if (!r || r->ndim != 4) return zl_set_error(ZL_EFORMAT, "%s: input block %d has no resnet conv2", path, blk);
        c->block_out_channels[l] = (int)r->shape[0];
        char b[64];
        snprintf(b, sizeof b, "input_blocks.%d.1", blk);
        int depth = count_blocks(f, prefix, b);
        c->down_types[l] = depth ? ZL_BLOCK_CROSSATTN : ZL_BLOCK_PLAIN;
        c->transformer_depth[l] = depth;
    }
    for (int i = 0; i < n_levels; i++) {
        char b[64];
        snprintf(b, sizeof b, "output_blocks.%d.1", i * (L + 1));
        int depth = count_blocks(f, prefix, b), d = n_levels - 1 - i;
        c->up_types[i] = depth ? ZL_BLOCK_CROSSATTN : ZL_BLOCK_PLAIN;
        if (depth && !c->transformer_depth[d]) c->transformer_depth[d] = depth;
        else if (depth && depth != c->transformer_depth[d])
            return zl_set_error(ZL_EUNSUPPORTED, "%s: up level %d has %d transformer blocks but down level %d has %d", path,
                                i, depth, d, c->transformer_depth[d]);
    }
    for (int l = 0; l < n_levels; l++)
        if (!c->transformer_depth[l]) c->transformer_depth[l] = 1; /* unused by plain levels, as in diffusers */
    c->transformer_depth_mid = count_blocks(f, prefix, "middle_block.1");
    const zl_st_tensor *kt = find(f, prefix, "middle_block.1.transformer_blocks.0.attn2.to_k.weight", 0, 0);
    const zl_st_tensor *pi = find(f, prefix, "middle_block.1.proj_in.weight", 0, 0);
    if (!c->transformer_depth_mid || !kt || kt->ndim != 2 || !pi)
        return zl_set_error(ZL_EFORMAT, "%s: the UNet's middle block has no transformer", path);
    c->cross_attention_dim = (int)kt->shape[1];
    c->use_linear_projection = pi->ndim == 2;
    const zl_st_tensor *le = find(f, prefix, "label_emb.0.0.weight", 0, 0);
    c->has_text_time = le != NULL;
    c->family = c->has_text_time ? ZL_FAMILY_SDXL : ZL_FAMILY_SD1;
    if (le) {
        /* P = pooled + 6 * addition_time_embed_dim. The pooled width is bigG's projection
         * width when the checkpoint carries its text encoder; else SDXL's 256 is assumed. */
        int P = c->projection_class_embeddings_input_dim = le->ndim == 2 ? (int)le->shape[1] : 0;
        const zl_st_tensor *tp = zl_st_find(f, "conditioner.embedders.1.model.text_projection");
        int atd = 256;
        if (tp && tp->ndim == 2 && P > tp->shape[1] && (P - tp->shape[1]) % 6 == 0) atd = (int)(P - tp->shape[1]) / 6;
        c->addition_time_embed_dim = atd;
        if (P <= 6 * atd)
            return zl_set_error(ZL_EUNSUPPORTED,
                                "%s: the added embedding takes %d values, too few for 6 time ids of %d; pass the "
                                "model's unet config.json",
                                path, P, atd);
    }
    int guessed = 0;
    c->norm_num_groups = 32;
    for (int l = 0; l < n_levels; l++) {
        int C = c->block_out_channels[l];
        if (c->family == ZL_FAMILY_SDXL) c->heads[l] = C % 64 == 0 ? C / 64 : (guessed = 1);
        else c->heads[l] = C % 8 == 0 ? 8 : (guessed = 1);
        if (C % c->norm_num_groups) guessed = 2;
    }
    if (guessed == 2)
        return zl_set_error(ZL_EUNSUPPORTED,
                            "%s: channel widths are not multiples of 32 groups; pass the model's unet config.json", path);
    if (guessed) zl_warn("%s: head counts cannot be inferred for these widths; using 1 head (pass a config.json)", path);
    c->norm_eps = 1e-5f;
    c->flip_sin_to_cos = 1;
    c->freq_shift = 0;
    c->sample_size = c->family == ZL_FAMILY_SDXL ? 128 : 64;
    return ZL_OK;
}
