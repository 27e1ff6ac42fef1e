/* FLOP counts (include/ziplora/flops.h): the UNet walked block by block in
 * diffusers' UNet2DConditionModel order, from the config alone (no weights). */
#include <string.h>

#include "ziplora/flops.h"

static void conv(zl_flops *f, double B, int cin, int cout, int k, int ho, int wo) {
    f->conv += 2.0 * B * cout * cin * k * k * (double)ho * wo;
}

static void linear(zl_flops *f, double N, int in, int out) { f->linear += 2.0 * N * in * out; }

/* ResnetBlock2D at h x w: conv1, time_emb_proj, conv2, 1x1 shortcut if channels change. */
static void resnet(zl_flops *f, const zl_unet_config *c, int B, int cin, int cout, int h, int w) {
    conv(f, B, cin, cout, 3, h, w);
    linear(f, B, c->time_embed_dim, cout);
    conv(f, B, cout, cout, 3, h, w);
    if (cin != cout) conv(f, B, cin, cout, 1, h, w);
}

/* Transformer2DModel of `depth` BasicTransformerBlocks on C channels at h x w. */
static void transformer(zl_flops *f, const zl_unet_config *c, int B, int C, int depth, int h, int w, int T) {
    double hw = (double)h * w, N = B * hw;
    if (c->use_linear_projection) {
        linear(f, N, C, C);
        linear(f, N, C, C);
    } else {
        conv(f, B, C, C, 1, h, w);
        conv(f, B, C, C, 1, h, w);
    }
    for (int i = 0; i < depth; i++) {
        linear(f, N, C, C); /* attn1 to_q */
        linear(f, N, C, C);               /* to_k */
        linear(f, N, C, C);               /* to_v */
        linear(f, N, C, C);               /* to_out.0 */
        f->attention += 4.0 * B * hw * hw * C;
        linear(f, N, C, C);                             /* attn2 to_q */
        linear(f, (double)B * T, c->cross_attention_dim, C); /* to_k on the context */
        linear(f, (double)B * T, c->cross_attention_dim, C); /* to_v */
        linear(f, N, C, C);                             /* to_out.0 */
        f->attention += 4.0 * B * hw * T * C;
        linear(f, N, C, 8 * C); /* GEGLU projection */
        linear(f, N, 4 * C, C);
    }
}

int zl_unet_flops(const zl_unet_config *c, int B, int H, int W, int T, zl_flops *out) {
    memset(out, 0, sizeof *out);
    int n = c->n_levels, L = c->layers_per_block;
    const int *boc = c->block_out_channels;
    if (n < 1 || n > ZL_MAX_LEVELS || L < 1 || L > 8 || B < 1 || T < 1 || H < 1 || W < 1)
        return zl_set_error(ZL_EINVAL, "FLOP count: invalid config or sizes");
    if (H % (1 << (n - 1)) || W % (1 << (n - 1)))
        return zl_set_error(ZL_ESHAPE, "FLOP count: latent %dx%d is not divisible by %d", H, W, 1 << (n - 1));
    zl_flops *f = out;
    int te = c->time_embed_dim;
    linear(f, B, boc[0], te);
    linear(f, B, te, te);
    if (c->has_text_time) {
        linear(f, B, c->projection_class_embeddings_input_dim, te);
        linear(f, B, te, te);
    }
    conv(f, B, c->in_channels, boc[0], 3, H, W);
    int skip_c[ZL_MAX_LEVELS * 9 + 1], ns = 0; /* L <= 8: (L + 1) per level */
    skip_c[ns++] = boc[0];
    for (int i = 0; i < n; i++) {
        int h = H >> i, w = W >> i, cout = boc[i];
        for (int j = 0; j < L; j++) {
            resnet(f, c, B, j ? cout : (i ? boc[i - 1] : boc[0]), cout, h, w);
            if (c->down_types[i] == ZL_BLOCK_CROSSATTN) transformer(f, c, B, cout, c->transformer_depth[i], h, w, T);
            skip_c[ns++] = cout;
        }
        if (i < n - 1) {
            conv(f, B, cout, cout, 3, h / 2, w / 2); /* stride 2 */
            skip_c[ns++] = cout;
        }
    }
    int hm = H >> (n - 1), wm = W >> (n - 1), cm = boc[n - 1];
    resnet(f, c, B, cm, cm, hm, wm);
    transformer(f, c, B, cm, c->transformer_depth_mid, hm, wm, T);
    resnet(f, c, B, cm, cm, hm, wm);
    int ccur = cm;
    for (int i = 0; i < n; i++) {
        int d = n - 1 - i, h = H >> d, w = W >> d, cout = boc[d];
        for (int j = 0; j <= L; j++) {
            int cs = skip_c[--ns];
            resnet(f, c, B, ccur + cs, cout, h, w);
            ccur = cout;
            if (c->up_types[i] == ZL_BLOCK_CROSSATTN) transformer(f, c, B, cout, c->transformer_depth[d], h, w, T);
        }
        if (i < n - 1) conv(f, B, cout, cout, 3, 2 * h, 2 * w); /* after nearest x2 */
    }
    conv(f, B, boc[0], c->out_channels, 3, H, W);
    f->total = f->conv + f->linear + f->attention;
    return ZL_OK;
}
