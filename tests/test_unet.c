/* UNet forward against the diffusers reference outputs of the three fixtures
 * (unet_io.safetensors): the base model, each LoRA, and both direct merges, with
 * LoRAs in every fixture format, folded and as runtime branches, the model as a
 * diffusers folder and as a single file; mergers against an independently
 * rescaled folded LoRA; 1 vs 2 threads; config inference; the CLI stage. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "models/unet_internal.h"
#include "testlib.h"
#include "ziplora/unet.h"

#define TOL 1e-4

typedef struct {
    const char *name;
    zl_st_file *f;
    int B, C, H, W, T;
    float *sample, *timestep, *ctx, *text_embeds, *time_ids;
    size_t n_out;
} io_t;

static float *load(zl_st_file *f, const char *name) {
    const zl_st_tensor *t = zl_st_find(f, name);
    if (!t) return NULL;
    float *p = malloc((size_t)t->numel * sizeof(float));
    zl_st_read_f32(t, p);
    return p;
}

static int io_open(io_t *io, const char *fixture) {
    memset(io, 0, sizeof *io);
    io->name = fixture;
    char rel[256];
    snprintf(rel, sizeof rel, "%s/unet_io.safetensors", fixture);
    if (zl_st_open(zt_data(rel), &io->f)) return -1;
    const zl_st_tensor *s = zl_st_find(io->f, "sample"), *c = zl_st_find(io->f, "encoder_hidden_states");
    io->B = (int)s->shape[0]; io->C = (int)s->shape[1]; io->H = (int)s->shape[2]; io->W = (int)s->shape[3];
    io->T = (int)c->shape[1];
    io->sample = load(io->f, "sample");
    io->timestep = load(io->f, "timestep");
    io->ctx = load(io->f, "encoder_hidden_states");
    io->text_embeds = load(io->f, "text_embeds");
    io->time_ids = load(io->f, "time_ids");
    io->n_out = (size_t)s->numel;
    return 0;
}

static void io_close(io_t *io) {
    free(io->sample); free(io->timestep); free(io->ctx); free(io->text_embeds); free(io->time_ids);
    zl_st_close(io->f);
}

static float *forward(zl_unet *u, const io_t *io) {
    zl_unet_input in = {io->B, io->H, io->W, io->T, io->sample, io->timestep, io->ctx, io->text_embeds, io->time_ids};
    float *out = malloc(io->n_out * sizeof(float));
    int rc = zl_unet_forward(u, &in, out);
    CHECKM(rc == ZL_OK, "%s forward: %s", io->name, zl_errmsg());
    return out;
}

/* Forward and compare with reference tensor `ref`. */
static void expect(zl_unet *u, const io_t *io, const char *ref, const char *label) {
    float *want = load(io->f, ref);
    CHECKM(want != NULL, "%s: reference %s", io->name, ref);
    if (!want) return;
    float *got = forward(u, io);
    char what[300];
    snprintf(what, sizeof what, "%s %s (%s)", io->name, ref, label);
    zt_close(what, got, want, (int64_t)io->n_out, TOL);
    free(got);
    free(want);
}

static zl_unet *load_unet(const char *fixture, int single, zl_unet_weight_mode mode) {
    char w[256], c[256];
    snprintf(c, sizeof c, "%s/unet/config.json", fixture);
    if (single) snprintf(w, sizeof w, "%s/single_file.safetensors", fixture);
    else snprintf(w, sizeof w, "%s/unet/diffusion_pytorch_model.safetensors", fixture);
    char cpath[1024];
    snprintf(cpath, sizeof cpath, "%s", zt_data(c));
    zl_unet_load_opts o = {.config_path = cpath, .weights = mode};
    zl_unet *u = NULL;
    int rc = zl_unet_load(zt_data(w), &o, &u);
    CHECKM(rc == ZL_OK, "load %s (%s): %s", fixture, single ? "single file" : "folder", zl_errmsg());
    return u;
}

static zl_lora *load_lora(const zl_unet *u, const char *fixture, const char *which, const char *fmt) {
    char rel[256], ac[256], acp[1024];
    snprintf(rel, sizeof rel, "%s/loras/%s.%s.safetensors", fixture, which, fmt);
    snprintf(ac, sizeof ac, "%s/loras/%s.adapter_config.json", fixture, which);
    snprintf(acp, sizeof acp, "%s", zt_data(ac));
    zl_lora_load_opts o = {.unet_config = zl_unet_get_config(u), .expect_family = zl_unet_get_config(u)->family};
    if (!strcmp(fmt, "peft")) o.adapter_config = acp;
    zl_lora *l = NULL;
    int rc = zl_lora_load(zt_data(rel), &o, &l);
    CHECKM(rc == ZL_OK, "load %s: %s", rel, zl_errmsg());
    return l;
}

static int has_file(const char *fixture, const char *which, const char *fmt) {
    char rel[256];
    snprintf(rel, sizeof rel, "%s/loras/%s.%s.safetensors", fixture, which, fmt);
    return zl_file_exists(zt_data(rel));
}

/* The four LoRA outputs in one mode. */
static void lora_cases(zl_unet *u, const io_t *io, zl_lora *c, zl_lora *s, zl_unet_lora_mode mode, const char *fmt) {
    char label[128];
    snprintf(label, sizeof label, "%s, %s", fmt, mode == ZL_UNET_LORA_FOLD ? "folded" : "runtime");
    CHECK_OK(zl_unet_add_lora(u, c, 1.0f, mode, NULL));
    expect(u, io, "out_content", label);
    CHECK_OK(zl_unet_clear_loras(u));
    CHECK_OK(zl_unet_add_lora(u, s, 1.0f, mode, NULL));
    expect(u, io, "out_style", label);
    CHECK_OK(zl_unet_clear_loras(u));
    CHECK_OK(zl_unet_add_lora(u, c, 1.0f, mode, NULL));
    CHECK_OK(zl_unet_add_lora(u, s, 1.0f, mode, NULL));
    expect(u, io, "out_direct_1_1", label);
    CHECK_OK(zl_unet_clear_loras(u));
    CHECK_OK(zl_unet_add_lora(u, c, 0.8f, mode, NULL));
    CHECK_OK(zl_unet_add_lora(u, s, 0.5f, mode, NULL));
    expect(u, io, "out_direct_08_05", label);
    CHECK_OK(zl_unet_clear_loras(u));
}

static void test_fixture(const char *fixture) {
    io_t io;
    if (io_open(&io, fixture)) { CHECKM(0, "open %s unet_io: %s", fixture, zl_errmsg()); return; }
    zl_unet *u = load_unet(fixture, 0, ZL_UNET_WEIGHTS_STORED);
    if (u) {
        expect(u, &io, "out_base", "folder");
        const char *fmts[] = {"peft", "kohya", "kohya_sgm"};
        for (int i = 0; i < 3; i++) {
            if (!has_file(fixture, "content", fmts[i])) continue;
            zl_lora *c = load_lora(u, fixture, "content", fmts[i]), *s = load_lora(u, fixture, "style", fmts[i]);
            if (c && s) {
                lora_cases(u, &io, c, s, ZL_UNET_LORA_FOLD, fmts[i]);
                lora_cases(u, &io, c, s, ZL_UNET_LORA_RUNTIME, fmts[i]);
            }
            zl_lora_free(c);
            zl_lora_free(s);
        }
        /* After clearing, the base weights are back. */
        expect(u, &io, "out_base", "folder, after clearing LoRAs");
        zl_unet_free(u);
    }
    /* Resident float32 weights: base and a folded merge. */
    if ((u = load_unet(fixture, 0, ZL_UNET_WEIGHTS_F32))) {
        expect(u, &io, "out_base", "f32 weights");
        zl_lora *c = load_lora(u, fixture, "content", "kohya"), *s = load_lora(u, fixture, "style", "kohya");
        if (c && s) {
            CHECK_OK(zl_unet_add_lora(u, c, 0.8f, ZL_UNET_LORA_FOLD, NULL));
            CHECK_OK(zl_unet_add_lora(u, s, 0.5f, ZL_UNET_LORA_RUNTIME, NULL));
            expect(u, &io, "out_direct_08_05", "f32 weights, content folded + style runtime");
            CHECK_OK(zl_unet_clear_loras(u));
            expect(u, &io, "out_base", "f32 weights, after clearing");
        }
        zl_lora_free(c);
        zl_lora_free(s);
        zl_unet_free(u);
    }
    io_close(&io);
}

static void test_single_file(const char *fixture) {
    io_t io;
    if (io_open(&io, fixture)) { CHECKM(0, "open %s unet_io", fixture); return; }
    zl_unet *u = load_unet(fixture, 1, ZL_UNET_WEIGHTS_STORED);
    if (u) {
        expect(u, &io, "out_base", "single file");
        const char *fmt = has_file(fixture, "content", "kohya_sgm") ? "kohya_sgm" : "kohya";
        zl_lora *c = load_lora(u, fixture, "content", fmt), *s = load_lora(u, fixture, "style", fmt);
        if (c && s) {
            lora_cases(u, &io, c, s, ZL_UNET_LORA_FOLD, "single file");
            lora_cases(u, &io, c, s, ZL_UNET_LORA_RUNTIME, "single file");
        }
        zl_lora_free(c);
        zl_lora_free(s);
        zl_unet_free(u);
    }
    /* Config inference: everything shapes can tell matches the diffusers config. */
    char rel[256], crel[256];
    snprintf(rel, sizeof rel, "%s/single_file.safetensors", fixture);
    snprintf(crel, sizeof crel, "%s/unet/config.json", fixture);
    zl_st_file *f = NULL;
    zl_unet_config inf, ref;
    CHECK_OK(zl_st_open(zt_data(rel), &f));
    CHECK_OK(zl_unet_config_load(zt_data(crel), &ref));
    if (f && zl_unet_config_infer(f, "model.diffusion_model.", &inf) == ZL_OK) {
        int same = inf.family == ref.family && inf.n_levels == ref.n_levels &&
                   inf.layers_per_block == ref.layers_per_block && inf.in_channels == ref.in_channels &&
                   inf.out_channels == ref.out_channels && inf.cross_attention_dim == ref.cross_attention_dim &&
                   inf.use_linear_projection == ref.use_linear_projection && inf.has_text_time == ref.has_text_time &&
                   inf.time_embed_dim == ref.time_embed_dim &&
                   inf.transformer_depth_mid == ref.transformer_depth_mid &&
                   inf.projection_class_embeddings_input_dim == ref.projection_class_embeddings_input_dim;
        for (int i = 0; i < ref.n_levels && same; i++)
            same = inf.block_out_channels[i] == ref.block_out_channels[i] && inf.down_types[i] == ref.down_types[i] &&
                   inf.up_types[i] == ref.up_types[i] &&
                   (ref.down_types[i] == ZL_BLOCK_PLAIN || inf.transformer_depth[i] == ref.transformer_depth[i]);
        CHECKM(same, "%s: inferred config matches config.json in every shape-derived field", fixture);
    } else {
        CHECKM(0, "%s: config inference: %s", fixture, zl_errmsg());
    }
    zl_st_close(f);
    io_close(&io);
}

/* A runtime merger m scales input feature j of the LoRA's down; folding a LoRA
 * whose down columns were multiplied by m by hand must give the same output. */
static void test_mergers(const char *fixture) {
    io_t io;
    if (io_open(&io, fixture)) return;
    zl_unet *u = load_unet(fixture, 0, ZL_UNET_WEIGHTS_STORED);
    zl_lora *s = u ? load_lora(u, fixture, "style", "kohya") : NULL;
    zl_lora *s2 = u ? load_lora(u, fixture, "style", "kohya") : NULL;
    if (u && s && s2) {
        int slot = -1;
        CHECK_OK(zl_unet_add_lora(u, s, 0.7f, ZL_UNET_LORA_RUNTIME, &slot));
        uint32_t seed = 12345;
        for (int i = 0; i < s->n; i++) {
            zl_lora_layer *a = &s->layers[i], *b = &s2->layers[i];
            if (a->part != ZL_PART_UNET) continue;
            float *m = malloc((size_t)a->in_features * sizeof(float));
            for (int j = 0; j < a->in_features; j++) {
                seed = seed * 1664525u + 1013904223u;
                m[j] = 0.25f + 1.5f * (float)(seed >> 8) / 16777216.0f;
            }
            CHECK_OK(zl_unet_set_merger(u, slot, a->module, m, a->in_features));
            int kk = a->kind == ZL_LORA_CONV ? a->kh * a->kw : 1;
            for (int r = 0; r < b->rank; r++)
                for (int j = 0; j < b->in_features; j++)
                    for (int q = 0; q < kk; q++) b->down[((size_t)r * b->in_features + j) * kk + q] *= m[j];
            free(m);
        }
        float *rt = forward(u, &io);
        CHECK_OK(zl_unet_clear_loras(u));
        CHECK_OK(zl_unet_add_lora(u, s2, 0.7f, ZL_UNET_LORA_FOLD, NULL));
        float *fo = forward(u, &io);
        char what[128];
        snprintf(what, sizeof what, "%s runtime mergers vs folded rescaled LoRA", fixture);
        zt_close(what, rt, fo, (int64_t)io.n_out, TOL);
        free(rt);
        free(fo);
        /* errors: wrong length, unknown module, a slot with no branch */
        float one[1] = {1};
        CHECK(zl_unet_set_merger(u, slot, s->layers[0].module, one, 1) != ZL_OK);
        CHECK(zl_unet_set_merger(u, 0, "no_such.module", one, 1) == ZL_ENOTFOUND);
    }
    zl_lora_free(s);
    zl_lora_free(s2);
    zl_unet_free(u);
    io_close(&io);
}

static void test_threads(const char *fixture) {
    io_t io;
    if (io_open(&io, fixture)) return;
    zl_unet *u = load_unet(fixture, 0, ZL_UNET_WEIGHTS_STORED);
    zl_lora *s = u ? load_lora(u, fixture, "style", "kohya") : NULL;
    if (u && s) {
        CHECK_OK(zl_unet_add_lora(u, s, 1.0f, ZL_UNET_LORA_RUNTIME, NULL));
        int saved = zl_get_threads();
        zl_set_threads(1);
        float *a = forward(u, &io);
        zl_set_threads(2);
        float *b = forward(u, &io);
        zl_set_threads(saved);
        double e = zt_relerr(b, a, (int64_t)io.n_out);
        CHECKM(e <= 1e-6, "%s: 1 vs 2 threads relative difference %.3g <= 1e-6", fixture, e);
        free(a);
        free(b);
    }
    zl_lora_free(s);
    zl_unet_free(u);
    io_close(&io);
}

/* FP8 checkpoints (F8_E4M3, "fp8 e4m3fn" files): every weight of the mini-sdxl UNet rounded to
 * e4m3fn here (nearest, ties to even, |x| <= 448); the UNet loaded from that file must give what
 * it gives from an F32 file holding the same rounded values (decoded here too). */
static double e4m3_value(int c) {
    int e = (c >> 3) & 15, m = c & 7;
    double v = e ? (1 + m / 8.0) * ldexp(1, e - 7) : m / 8.0 * ldexp(1, -6);
    return c & 0x80 ? -v : v;
}

static uint8_t e4m3_encode(float x) {
    double a = fabs(x);
    int lo = 0, hi = 0x7e; /* positive finite codes 0x00..0x7e increase with the code */
    if (a >= e4m3_value(hi)) lo = hi;
    else
        while (hi - lo > 1) {
            int mid = (lo + hi) / 2;
            if (e4m3_value(mid) <= a) lo = mid;
            else hi = mid;
        }
    int c = lo;
    if (lo < 0x7e) {
        double dl = a - e4m3_value(lo), dh = e4m3_value(lo + 1) - a;
        if (dh < dl || (dh == dl && (lo & 1))) c = lo + 1;
    }
    return (uint8_t)(c | (x < 0 ? 0x80 : 0));
}

static void test_fp8(const char *fixture) {
    io_t io;
    if (io_open(&io, fixture)) return;
    char rel[256];
    snprintf(rel, sizeof rel, "%s/unet/diffusion_pytorch_model.safetensors", fixture);
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(zt_data(rel), &f));
    int n = f ? zl_st_count(f) : 0, n8 = 0;
    zl_st_entry *e8 = calloc((size_t)n + 1, sizeof *e8), *e32 = calloc((size_t)n + 1, sizeof *e32);
    void **bufs = calloc(2 * (size_t)n + 1, sizeof *bufs);
    for (int i = 0; i < n; i++) {
        const zl_st_tensor *t = zl_st_at(f, i);
        zl_st_entry b = {.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        for (int d = 0; d < t->ndim; d++) b.shape[d] = t->shape[d];
        e8[i] = e32[i] = b;
        if (t->ndim < 2) continue; /* norms and biases stay as they are, as in fp8 files */
        float *v = malloc((size_t)t->numel * sizeof *v), *dq = malloc((size_t)t->numel * sizeof *dq);
        uint8_t *q = malloc((size_t)t->numel);
        zl_st_read_f32(t, v);
        for (int64_t k = 0; k < t->numel; k++) {
            q[k] = e4m3_encode(v[k]);
            dq[k] = (float)e4m3_value(q[k]);
        }
        free(v);
        e8[i].dtype = ZL_DT_F8_E4M3, e8[i].data = q;
        e32[i].dtype = ZL_DT_F32, e32[i].data = dq;
        bufs[2 * i] = q, bufs[2 * i + 1] = dq;
        n8++;
    }
    char p8[1024], p32[1024], cfg[1024];
    snprintf(p8, sizeof p8, "%s", zt_tmp("unet_fp8.safetensors"));
    snprintf(p32, sizeof p32, "%s", zt_tmp("unet_fp8_as_f32.safetensors"));
    snprintf(rel, sizeof rel, "%s/unet/config.json", fixture);
    snprintf(cfg, sizeof cfg, "%s", zt_data(rel));
    CHECK(n8 > 0);
    CHECK_OK(zl_st_write(p8, e8, n, NULL, 0, NULL, 0));
    CHECK_OK(zl_st_write(p32, e32, n, NULL, 0, NULL, 0));
    for (int i = 0; i < 2 * n; i++) free(bufs[i]);
    free(bufs);
    free(e8);
    free(e32);
    zl_st_close(f);
    zl_unet_load_opts o = {.config_path = cfg, .weights = ZL_UNET_WEIGHTS_STORED};
    zl_unet *a = NULL, *b = NULL;
    CHECK_OK(zl_unet_load(p8, &o, &a));
    CHECK_OK(zl_unet_load(p32, &o, &b));
    if (a && b) {
        float *ya = forward(a, &io), *yb = forward(b, &io), *ref = load(io.f, "out_base");
        char what[128];
        snprintf(what, sizeof what, "%s: UNet from F8_E4M3 weights vs the same values in F32", fixture);
        zt_close(what, ya, yb, (int64_t)io.n_out, 1e-6);
        /* and the rounding did reach the weights: the output moved off the F32 reference */
        CHECK(ref && zt_relerr(ya, ref, (int64_t)io.n_out) > 1e-4);
        free(ya);
        free(yb);
        free(ref);
    }
    zl_unet_free(a);
    zl_unet_free(b);
    io_close(&io);
}

/* The per-block hook sees every block once, with its input's shape. */
typedef struct { int n[3], first_up_cin, bad; } hook_count;
static void count_hook(void *ctx, int kind, const void *blk, const float *x, int B, int C, int H, int W) {
    hook_count *h = ctx;
    (void)blk;
    if (kind < 0 || kind > 2 || !x || B != 2 || H < 1 || W < 1) h->bad++;
    else h->n[kind]++;
    if (kind == 0 && h->n[0] == 7) h->first_up_cin = C; /* 4 down + 2 mid resnets come first */
}

static void test_hook(void) {
    io_t io;
    if (io_open(&io, "tiny-sdxl")) return;
    zl_unet *u = load_unet("tiny-sdxl", 0, ZL_UNET_WEIGHTS_STORED);
    if (u) {
        hook_count hc = {{0, 0, 0}, 0, 0};
        u->hook.fn = count_hook;
        u->hook.ctx = &hc;
        free(forward(u, &io));
        /* tiny-sdxl: 2 levels x 2 resnets down, 2 mid, 2 x 3 up; transformers: 2 down (level 1),
         * 1 mid, 3 up (up block 0); samplers: 1 down + 1 up. First up resnet: 64 + 64 channels. */
        CHECKM(hc.n[0] == 12 && hc.n[1] == 6 && hc.n[2] == 2 && !hc.bad, "hook counts %d %d %d", hc.n[0], hc.n[1],
               hc.n[2]);
        CHECK(hc.first_up_cin == 128);
        zl_unet_free(u);
    }
    io_close(&io);
}

static void test_errors(void) {
    io_t io;
    if (io_open(&io, "tiny-sdxl")) return;
    zl_unet *u = load_unet("tiny-sdxl", 0, ZL_UNET_WEIGHTS_STORED);
    if (u) {
        /* 5 is not divisible by 2^(levels-1): diffusers then resizes each upsampled
         * level to its skip's size. The taped forward (a separate code path in
         * unet_backward.c) must agree with the plain one there too. */
        zl_unet_input in = {io.B, 5, 5, io.T, io.sample, io.timestep, io.ctx, io.text_embeds, io.time_ids};
        float out[2 * 4 * 25], out2[2 * 4 * 25];
        CHECK_OK(zl_unet_forward(u, &in, out));
        zl_unet_tape *tp = NULL;
        CHECK_OK(zl_unet_forward_tape(u, &in, ZL_UNET_GRAD_KEEP, out2, &tp));
        zl_unet_tape_free(tp);
        int finite = 1;
        for (int i = 0; i < 2 * 4 * 25; i++) finite &= isfinite(out[i]) != 0;
        CHECK(finite);
        zt_close("odd-size forward vs taped forward", out2, out, 2 * 4 * 25, 1e-6);
        in.H = in.W = 16;
        in.text_embeds = NULL;
        CHECK(zl_unet_forward(u, &in, NULL) != ZL_OK);
        /* A LoRA for SD 1.x on an SDXL UNet. */
        zl_lora *l = NULL;
        zl_lora_load_opts o = {0};
        if (zl_lora_load(zt_data("tiny-sd15/loras/content.kohya.safetensors"), &o, &l) == ZL_OK) {
            CHECK(zl_unet_add_lora(u, l, 1.0f, ZL_UNET_LORA_FOLD, NULL) != ZL_OK);
            expect(u, &io, "out_base", "after a refused LoRA");
        }
        zl_lora_free(l);
        zl_unet_free(u);
    }
    /* Missing tensors and a config that does not fit the file. */
    zl_unet_load_opts o = {.config_path = zt_data("tiny-sd15/unet/config.json")};
    u = NULL;
    CHECK(zl_unet_load(zt_data("tiny-sdxl/unet/diffusion_pytorch_model.safetensors"), &o, &u) != ZL_OK);
    CHECK(u == NULL);
    CHECK(zl_unet_load(zt_data("tiny-sdxl/unet/diffusion_pytorch_model.safetensors"), NULL, &u) != ZL_OK);
    io_close(&io);
}

static void test_cli(void) {
    const char *m = zt_data("tiny-sdxl");
    CHECK(zt_cli("run unet --help") == 0 && strstr(zt_out, "--lora"));
    CHECK(zt_cli("run unet --model '%s'", m) == 2);
    char mdl[1024], io[1024], c[1024], s[1024];
    snprintf(mdl, sizeof mdl, "%s", m);
    snprintf(io, sizeof io, "%s", zt_data("tiny-sdxl/unet_io.safetensors"));
    snprintf(c, sizeof c, "%s", zt_data("tiny-sdxl/loras/content.kohya.safetensors"));
    snprintf(s, sizeof s, "%s", zt_data("tiny-sdxl/loras/style.kohya.safetensors"));
    const char *outp = zt_tmp("run_unet_out.safetensors");
    char op[1024];
    snprintf(op, sizeof op, "%s", outp);
    /* a weight that is not a finite number is a usage error, and no output is written */
    int brc = zt_cli("run unet -q --threads 1 --model '%s' --lora '%s:nan' --in '%s' -o '%s'", mdl, c, io, op);
    CHECKM(brc == 2 && strstr(zt_err, "not a number") && !zl_file_exists(op), "--lora FILE:nan: exit %d: %s", brc, zt_err);
    int rc = zt_cli("run unet -q --threads 1 --model '%s' --lora '%s:0.8' --lora '%s:0.5' --runtime --in '%s' -o '%s'", mdl, c, s, io,
                    op);
    CHECKM(rc == 0, "run unet exit %d: %s", rc, zt_err);
    zl_st_file *f = NULL, *ref = NULL;
    if (rc == 0 && zl_st_open(op, &f) == ZL_OK && zl_st_open(io, &ref) == ZL_OK) {
        const zl_st_tensor *t = zl_st_find(f, "out");
        CHECK(t && t->dtype == ZL_DT_F32 && t->ndim == 4 && t->shape[0] == 2 && t->shape[1] == 4);
        float *got = load(f, "out"), *want = load(ref, "out_direct_08_05");
        if (got && want) zt_close("CLI run unet out_direct_08_05", got, want, t->numel, TOL);
        free(got);
        free(want);
    }
    zl_st_close(f);
    zl_st_close(ref);
    /* A diffusers folder whose UNet is sharded (index.json + shards, as save_pretrained writes
     * SDXL's 10 GB F32 UNet) gives the same output as the one-file folder. */
    char sh[1024], shu[1100], cfgp[1200];
    snprintf(sh, sizeof sh, "%s/sharded", zt_tmpdir());
    snprintf(shu, sizeof shu, "%s/unet", sh);
    snprintf(cfgp, sizeof cfgp, "%s/config.json", shu);
    CHECK(mkdir(sh, 0755) == 0 && mkdir(shu, 0755) == 0);
    FILE *ci = fopen(zt_data("tiny-sdxl/unet/config.json"), "rb"), *co = fopen(cfgp, "wb");
    if (ci && co) {
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, ci)) > 0) fwrite(buf, 1, n, co);
    }
    if (ci) fclose(ci);
    if (co) fclose(co);
    CHECK(zt_shard(zt_data("tiny-sdxl/unet/diffusion_pytorch_model.safetensors"), shu, "diffusion_pytorch_model", 2) == 0);
    rc = zt_cli("run unet -q --threads 1 --model '%s' --lora '%s:0.8' --lora '%s:0.5' --in '%s' -o '%s'", sh, c, s, io, op);
    CHECKM(rc == 0, "run unet on a sharded folder: exit %d: %s", rc, zt_err);
    if (rc == 0 && zl_st_open(op, &f) == ZL_OK && zl_st_open(io, &ref) == ZL_OK) {
        float *got = load(f, "out"), *want = load(ref, "out_direct_08_05");
        if (got && want) zt_close("CLI run unet, sharded folder, out_direct_08_05", got, want, 2 * 4 * 16 * 16, TOL);
        free(got);
        free(want);
        zl_st_close(f);
        zl_st_close(ref);
    }
    /* The SD1 single file through the CLI, with its config. */
    char sf[1024], sio[1024], scfg[1024];
    snprintf(sf, sizeof sf, "%s", zt_data("tiny-sd15/single_file.safetensors"));
    snprintf(sio, sizeof sio, "%s", zt_data("tiny-sd15/unet_io.safetensors"));
    snprintf(scfg, sizeof scfg, "%s", zt_data("tiny-sd15/unet/config.json"));
    rc = zt_cli("run unet -q --threads 1 --model '%s' --unet-config '%s' --in '%s' -o '%s'", sf, scfg, sio, op);
    CHECKM(rc == 0, "run unet single file exit %d: %s", rc, zt_err);
    if (rc == 0 && zl_st_open(op, &f) == ZL_OK && zl_st_open(sio, &ref) == ZL_OK) {
        float *got = load(f, "out"), *want = load(ref, "out_base");
        if (got && want) zt_close("CLI run unet tiny-sd15 single file out_base", got, want, 2 * 4 * 16 * 16, TOL);
        free(got);
        free(want);
        zl_st_close(f);
        zl_st_close(ref);
    }
    /* An SDXL input lacking text_embeds and time_ids: the error names the tensor and the file; no output is written. */
    io_t x;
    if (io_open(&x, "tiny-sdxl") == 0) {
        zl_st_entry e[3] = {
            {.name = "sample", .dtype = ZL_DT_F32, .ndim = 4, .shape = {2, 4, 16, 16}, .data = x.sample},
            {.name = "timestep", .dtype = ZL_DT_F32, .ndim = 1, .shape = {2}, .data = x.timestep},
            {.name = "encoder_hidden_states", .dtype = ZL_DT_F32, .ndim = 3, .shape = {2, 77, 64}, .data = x.ctx},
        };
        char bad[1024], o2[1024];
        snprintf(bad, sizeof bad, "%s", zt_tmp("no_added_cond.safetensors"));
        snprintf(o2, sizeof o2, "%s", zt_tmp("never.safetensors"));
        CHECK_OK(zl_st_write(bad, e, 3, NULL, 0, NULL, 0));
        rc = zt_cli("run unet --model '%s' --in '%s' -o '%s'", mdl, bad, o2);
        CHECK(rc == 1);
        CHECKM(strstr(zt_err, "text_embeds") && strstr(zt_err, "no_added_cond.safetensors"), "error names tensor and file: %s", zt_err);
        CHECK(!zl_file_exists(o2));
        /* A LoRA for the wrong family. */
        char wl[1024];
        snprintf(wl, sizeof wl, "%s", zt_data("tiny-sd15/loras/content.kohya.safetensors"));
        rc = zt_cli("run unet --model '%s' --lora '%s' --in '%s' -o '%s'", mdl, wl, io, o2);
        CHECKM(rc != 0, "wrong-family LoRA refused (exit %d)", rc);
        CHECK(!zl_file_exists(o2));
        io_close(&x);
    }
}

int main(void) {
    /* One thread keeps this fast on a shared machine; test_threads covers two. */
    zl_set_threads(1);
    const char *fx[] = {"tiny-sdxl", "mini-sdxl", "tiny-sd15"};
    for (int i = 0; i < 3; i++) test_fixture(fx[i]);
    test_single_file("mini-sdxl");
    test_single_file("tiny-sd15");
    test_mergers("tiny-sdxl");
    test_mergers("tiny-sd15");
    test_threads("mini-sdxl");
    test_fp8("mini-sdxl");
    test_hook();
    test_errors();
    test_cli();
    return zt_done();
}
