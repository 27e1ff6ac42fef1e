/* FLOP counts: zl_unet_flops (which walks the config block by block) against
 * two independent counts -- one summed over the UNet name table's modules
 * (each module's shape times the positions it runs at, read from its name),
 * one written out by hand for a one-level UNet -- and the spec's ballpark for
 * SDXL base (sdxl.md: ~1.6 TFLOP at 64x64, ~6.8 TFLOP at 128x128). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/names.h"
#include "testlib.h"
#include "ziplora/flops.h"

/* Level a module runs at, and how many positions: from the diffusers name only. */
static double module_positions(const zl_unet_config *c, const char *name, int B, int H, int W, int T, int *level) {
    int n = c->n_levels, i = 0;
    *level = 0;
    if (strstr(name, "time_embedding.") || strstr(name, "add_embedding.") || strstr(name, "time_emb_proj")) return B;
    if (strstr(name, "attn2.to_k") || strstr(name, "attn2.to_v")) return (double)B * T;
    if (!strncmp(name, "down_blocks.", 12)) {
        i = atoi(name + 12);
        *level = strstr(name, "downsamplers") ? i + 1 : i;
    } else if (!strncmp(name, "up_blocks.", 10)) {
        i = atoi(name + 10);
        *level = strstr(name, "upsamplers") ? n - 2 - i : n - 1 - i;
    } else if (!strncmp(name, "mid_block.", 10)) {
        *level = n - 1;
    }
    return (double)B * (H >> *level) * (W >> *level);
}

static double table_count(const zl_unet_config *c, int B, int H, int W, int T) {
    zl_name_table *t = NULL;
    if (zl_name_table_unet(c, &t)) return -1;
    double total = 0;
    for (int i = 0; i < zl_name_table_count(t); i++) {
        const zl_module_info *m = zl_name_table_at(t, i);
        int level;
        double pos = module_positions(c, m->diffusers, B, H, W, T, &level);
        if (m->kind == ZL_MOD_LINEAR || m->kind == ZL_MOD_CONV) total += 2.0 * pos * m->in * m->out * m->kh * m->kw;
        double hw = (double)(H >> level) * (W >> level);
        const char *a1 = strstr(m->diffusers, "attn1.to_q"), *a2 = strstr(m->diffusers, "attn2.to_q");
        if (a1 && !a1[10]) total += 4.0 * B * hw * hw * m->out;
        if (a2 && !a2[10]) total += 4.0 * B * hw * T * m->out;
    }
    zl_name_table_free(t);
    return total;
}

static void check_against_table(const char *what, const zl_unet_config *c, int B, int H, int W, int T) {
    zl_flops f;
    CHECK_OK(zl_unet_flops(c, B, H, W, T, &f));
    double ref = table_count(c, B, H, W, T);
    CHECKM(fabs(f.total - ref) <= 1e-12 * ref, "%s B%d %dx%d: %.6e vs name-table count %.6e", what, B, H, W, f.total,
           ref);
    CHECK(fabs(f.conv + f.linear + f.attention - f.total) <= 1e-12 * f.total);
}

/* One level, one resnet per down block, so every term can be written out. */
static void hand_count(void) {
    zl_unet_config c;
    memset(&c, 0, sizeof c);
    c.family = ZL_FAMILY_SD1;
    c.in_channels = 4;
    c.out_channels = 3;
    c.n_levels = 1;
    c.block_out_channels[0] = 32;
    c.layers_per_block = 1;
    c.down_types[0] = ZL_BLOCK_PLAIN;
    c.up_types[0] = ZL_BLOCK_PLAIN;
    c.transformer_depth[0] = 1;
    c.transformer_depth_mid = 2;
    c.heads[0] = 2;
    c.cross_attention_dim = 16;
    c.norm_num_groups = 8;
    c.use_linear_projection = 1;
    c.time_embed_dim = 128;
    const double B = 2, HW = 8 * 8, T = 5, C = 32, N = B * HW, te = 128, ctx = 16;
    double conv3 = 2 * B * HW * 9; /* times Cin * Cout */
    double want = 2 * B * 32 * te + 2 * B * te * te        /* time embedding */
                  + conv3 * 4 * C                          /* conv_in */
                  + 2 * (conv3 * C * C) + 2 * B * te * C;  /* down resnet 32 -> 32 */
    double resnet_same = 2 * (conv3 * C * C) + 2 * B * te * C;
    double tblock = 4 * 2 * N * C * C + 4 * B * HW * HW * C                            /* self attention */
                    + 2 * 2 * N * C * C + 2 * 2 * B * T * ctx * C + 4 * B * HW * T * C /* cross attention */
                    + 2 * N * C * 8 * C + 2 * N * 4 * C * C;                           /* GEGLU feed-forward */
    want += resnet_same + (2 * 2 * N * C * C + 2 * tblock) + resnet_same;               /* mid, depth 2 */
    /* up: two resnets on [32 + skip 32] -> 32 with a 1x1 shortcut */
    double up_res = conv3 * 64 * C + 2 * B * te * C + conv3 * C * C + 2 * B * HW * 64 * C;
    want += 2 * up_res;
    want += conv3 * C * 3; /* conv_out */
    zl_flops f;
    CHECK_OK(zl_unet_flops(&c, 2, 8, 8, 5, &f));
    CHECKM(fabs(f.total - want) <= 1e-12 * want, "one-level UNet: %.6e vs hand count %.6e", f.total, want);
    CHECKM(f.attention == 2 * (4 * B * HW * HW * C + 4 * B * HW * T * C), "attention term %.6e", f.attention);
    check_against_table("one-level", &c, 2, 8, 8, 5);
    c.use_linear_projection = 0; /* conv 1x1 projections count the same */
    zl_flops g;
    CHECK_OK(zl_unet_flops(&c, 2, 8, 8, 5, &g));
    CHECK(fabs(g.total - f.total) <= 1e-12 * f.total && g.conv > f.conv);
}

int main(void) {
    hand_count();
    zl_unet_config xl, sd;
    zl_unet_config_sdxl_base(&xl);
    zl_unet_config_sd15(&sd);
    check_against_table("SDXL", &xl, 1, 64, 64, 77);
    check_against_table("SDXL", &xl, 2, 128, 128, 77);
    check_against_table("SDXL", &xl, 1, 96, 64, 77);
    check_against_table("SD1.5", &sd, 1, 64, 64, 77);
    check_against_table("SD1.5", &sd, 2, 96, 128, 77);
    zl_unet_config tiny;
    CHECK_OK(zl_unet_config_load(zt_data("tiny-sdxl/unet/config.json"), &tiny));
    check_against_table("tiny-sdxl", &tiny, 2, 16, 16, 77);

    zl_flops a, b, b2;
    CHECK_OK(zl_unet_flops(&xl, 1, 64, 64, 77, &a));
    CHECK_OK(zl_unet_flops(&xl, 1, 128, 128, 77, &b));
    CHECK_OK(zl_unet_flops(&xl, 2, 128, 128, 77, &b2));
    printf("SDXL base forward: 64x64 %.3f TFLOP (conv %.3f, linear %.3f, attention %.3f); 128x128 %.3f TFLOP "
           "(conv %.3f, linear %.3f, attention %.3f)\n",
           a.total / 1e12, a.conv / 1e12, a.linear / 1e12, a.attention / 1e12, b.total / 1e12, b.conv / 1e12,
           b.linear / 1e12, b.attention / 1e12);
    /* sdxl.md's ballpark figures, to 10 %. */
    CHECKM(fabs(a.total / 1.6e12 - 1) < 0.1, "64x64: %.3f TFLOP", a.total / 1e12);
    CHECKM(fabs(b.total / 6.8e12 - 1) < 0.1, "128x128: %.3f TFLOP", b.total / 1e12);
    /* Batch 2 is exactly twice batch 1 (every term is per batch item). */
    CHECK(fabs(b2.total - 2 * b.total) <= 1e-12 * b2.total);
    CHECK_ERR(zl_unet_flops(&xl, 1, 62, 64, 77, &a)); /* not divisible by 4 */
    CHECK_ERR(zl_unet_flops(&xl, 0, 64, 64, 77, &a));
    return zt_done();
}
