/* PyTorch zip checkpoints (.ckpt/.pt), read by the safetensors reader without
 * running the pickle. The files in tests/data/ckpt were written by Python's
 * pickle and zipfile modules in torch.save's layout (make_ckpt.py there); the
 * expected values are the ones that script put in. Checked: every view and
 * dtype (a transpose is copied, an offset view points into the storage),
 * pickle protocols 2 and 4, zip64 records; an SD checkpoint's UNet equals the
 * safetensors single file it was made from, tensor by tensor and as a UNet
 * forward; a diffusers folder whose VAE is diffusion_pytorch_model.bin (older
 * folders) decodes as the safetensors one; a kohya LoRA saved as .pt loads as its safetensors file; damaged
 * files are refused naming the file. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testlib.h"

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)len + 1);
    *n = b ? fread(b, 1, (size_t)len, f) : 0;
    fclose(f);
    return b;
}

static void check_f32(const zl_st_file *f, const char *name, int ndim, const int64_t *shape, const float *want, int n) {
    const zl_st_tensor *t = zl_st_find(f, name);
    CHECKM(t != NULL, "%s: tensor '%s' present", zl_st_path(f), name);
    if (!t) return;
    int ok = t->ndim == ndim && t->numel == n;
    for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == shape[d];
    CHECKM(ok, "%s: '%s' has the saved shape", zl_st_path(f), name);
    if (!ok) return;
    float got[16];
    zl_st_read_f32(t, got);
    for (int i = 0; i < n; i++)
        CHECKM(got[i] == want[i], "%s: '%s'[%d] = %g, want %g", zl_st_path(f), name, i, got[i], want[i]);
}

static void check_views(const zl_st_file *f) {
    CHECKM(zl_st_count(f) == 9 && zl_st_meta_count(f) == 0, "%s: the 9 tensors of the dict (ints, nested dicts "
                                                            "skipped), no metadata: %d", zl_st_path(f), zl_st_count(f));
    float v[6];
    for (int i = 0; i < 6; i++) v[i] = i * 0.25f - 1.0f;
    check_f32(f, "f32", 2, (int64_t[]){2, 3}, v, 6);
    float tr[6] = {v[0], v[3], v[1], v[4], v[2], v[5]};
    check_f32(f, "f32_t", 2, (int64_t[]){3, 2}, tr, 6);
    check_f32(f, "f32_off", 1, (int64_t[]){4}, v + 2, 4);
    check_f32(f, "f16", 2, (int64_t[]){2, 2}, (float[]){1.0f, -2.0f, 0.5f, 65504.0f}, 4);
    check_f32(f, "bf16", 1, (int64_t[]){3}, (float[]){1.0f, -1.5f, 3.0f}, 3);
    check_f32(f, "i64", 1, (int64_t[]){2}, (float[]){7.0f, -9.0f}, 2);
    check_f32(f, "param", 1, (int64_t[]){2}, (float[]){3.0f, 4.0f}, 2);
    check_f32(f, "scalar", 0, NULL, (float[]){2.5f}, 1);
    check_f32(f, "sized", 1, (int64_t[]){2}, (float[]){5.0f, 6.0f}, 2);
    const zl_st_tensor *a = zl_st_find(f, "f16"), *b = zl_st_find(f, "bf16"), *c = zl_st_find(f, "i64");
    CHECK(a && b && c && a->dtype == ZL_DT_F16 && b->dtype == ZL_DT_BF16 && c->dtype == ZL_DT_I64 && a->nbytes == 8);
    /* the offset view points into the contiguous one's storage */
    const zl_st_tensor *x = zl_st_find(f, "f32"), *o = zl_st_find(f, "f32_off");
    CHECK(x && o && o->data == x->data + 8);
    CHECK(zl_st_find(f, "step") == NULL && zl_st_find(f, "hparams") == NULL);
}

static void test_views(void) {
    const char *files[3] = {"ckpt/views.pt", "ckpt/views_p4.pt", "ckpt/views_zip64.pt"};
    for (int i = 0; i < 3; i++) {
        zl_st_file *f = NULL;
        int rc = zl_st_open(zt_data(files[i]), &f);
        CHECKM(rc == ZL_OK, "%s: %s", files[i], zl_errmsg());
        if (f) check_views(f);
        CHECK(!f || zl_st_is_mapped(f));
        if (f) {
            /* the transposed view is a heap copy: its pages must never be dropped
             * (that would zero them); the plain one lies in the file's mapping */
            const zl_st_tensor *tt = zl_st_find(f, "f32_t"), *tp = zl_st_find(f, "f32");
            CHECK(tt && zl_st_drop_pages(f, tt->data, tt->nbytes) == 0);
            CHECK(tp && zl_st_drop_pages(f, tp->data, tp->nbytes) == 1);
            check_views(f);
        }
        zl_st_close(f);
        /* the same from a buffer */
        size_t n = 0;
        uint8_t *b = slurp(zt_data(files[i]), &n);
        CHECK(b != NULL);
        rc = b ? zl_st_parse(b, n, files[i], &f) : ZL_EIO;
        CHECKM(rc == ZL_OK, "%s (buffer): %s", files[i], zl_errmsg());
        if (!rc) check_views(f);
        zl_st_close(f);
        free(b);
    }
}

/* The SD checkpoint holds the single file's UNet tensors, byte for byte. */
static void test_sd_checkpoint(void) {
    zl_st_file *c = NULL, *s = NULL;
    CHECK_OK(zl_st_open(zt_data("ckpt/tiny-sd15-unet.ckpt"), &c));
    CHECK_OK(zl_st_open(zt_data("tiny-sd15/single_file.safetensors"), &s));
    if (!c || !s) {
        zl_st_close(c);
        zl_st_close(s);
        return;
    }
    int want = 0, same = 0;
    for (int i = 0; i < zl_st_count(s); i++) {
        const zl_st_tensor *t = zl_st_at(s, i);
        if (strncmp(t->name, "model.diffusion_model.", 22)) continue;
        want++;
        const zl_st_tensor *u = zl_st_find(c, t->name);
        if (u && u->dtype == t->dtype && u->ndim == t->ndim && !memcmp(u->shape, t->shape, sizeof t->shape) &&
            u->nbytes == t->nbytes && !memcmp(u->data, t->data, t->nbytes))
            same++;
        else
            CHECKM(0, "checkpoint tensor '%s' differs from the single file's", t->name);
    }
    /* (and the 3 EMA entries SD's training checkpoints carry, which the UNet loader ignores) */
    CHECKM(want > 100 && same == want && zl_st_count(c) == want + 3 && zl_st_find(c, "model_ema.decay"),
           "%d of %d UNet tensors equal; the checkpoint holds %d", same, want, zl_st_count(c));
    zl_st_close(c);
    zl_st_close(s);
    /* as a model: run unet gives the single file's output exactly */
    char o1[1024], o2[1024];
    snprintf(o1, sizeof o1, "%s", zt_tmp("unet_ckpt.safetensors"));
    snprintf(o2, sizeof o2, "%s", zt_tmp("unet_single.safetensors"));
    const char *io = zt_data("tiny-sd15/unet_io.safetensors");
    char iob[1024];
    snprintf(iob, sizeof iob, "%s", io);
    /* the tiny model's group count (16) and heads are not in its shapes: its config.json, as for any
     * non-standard single file */
    char cfg[1024];
    snprintf(cfg, sizeof cfg, "%s", zt_data("tiny-sd15/unet/config.json"));
    int r1 = zt_cli("run unet --model '%s' --unet-config '%s' --in '%s' -o '%s' -q", zt_data("ckpt/tiny-sd15-unet.ckpt"),
                    cfg, iob, o1);
    CHECKM(r1 == 0, "run unet on the .ckpt: %s", zt_err);
    int r2 = zt_cli("run unet --model '%s' --unet-config '%s' --in '%s' -o '%s' -q",
                    zt_data("tiny-sd15/single_file.safetensors"), cfg, iob, o2);
    CHECKM(r2 == 0, "run unet on the single file: %s", zt_err);
    zl_st_file *a = NULL, *b = NULL, *ref = NULL;
    if (!r1 && !r2 && !zl_st_open(o1, &a) && !zl_st_open(o2, &b) && !zl_st_open(iob, &ref)) {
        const zl_st_tensor *x = zl_st_find(a, "out"), *y = zl_st_find(b, "out"), *w = zl_st_find(ref, "out_base");
        CHECK(x && y && x->nbytes == y->nbytes && !memcmp(x->data, y->data, x->nbytes));
        if (x && w && x->numel == w->numel) { /* and it is diffusers' output (FIXTURES.md tolerance) */
            float *p = malloc((size_t)x->numel * sizeof(float)), *q = malloc((size_t)x->numel * sizeof(float));
            zl_st_read_f32(x, p);
            zl_st_read_f32(w, q);
            zt_close("UNet from the .ckpt vs diffusers out_base", p, q, x->numel, 1e-4);
            free(p);
            free(q);
        }
    }
    zl_st_close(a);
    zl_st_close(b);
    zl_st_close(ref);
}

/* `decoded` of two run outputs: equal bytes, and within the fixture's tolerance of diffusers'. */
static void same_decoded(const char *what, const char *a, const char *b, const char *ref) {
    zl_st_file *fa = NULL, *fb = NULL, *fr = NULL;
    if (zl_st_open(a, &fa) || zl_st_open(b, &fb) || zl_st_open(ref, &fr)) {
        CHECKM(0, "%s: outputs: %s", what, zl_errmsg());
    } else {
        const zl_st_tensor *x = zl_st_find(fa, "decoded"), *y = zl_st_find(fb, "decoded"), *r = zl_st_find(fr, "decoded");
        CHECKM(x && y && x->nbytes == y->nbytes && !memcmp(x->data, y->data, x->nbytes), "%s: same bytes", what);
        if (x && r && x->numel == r->numel) {
            float *p = malloc((size_t)x->numel * sizeof(float)), *q = malloc((size_t)x->numel * sizeof(float));
            zl_st_read_f32(x, p);
            zl_st_read_f32(r, q);
            zt_close(what, p, q, x->numel, 1e-4);
            free(p);
            free(q);
        }
    }
    zl_st_close(fa);
    zl_st_close(fb);
    zl_st_close(fr);
}

/* An older diffusers folder: vae/diffusion_pytorch_model.bin; and the VAE .bin given alone. */
static void test_diffusers_bin(void) {
    char fx[1024], d[1024], p[1200], q[1200], in[1024], o1[1024], o2[1024], o3[1024];
    snprintf(fx, sizeof fx, "%s", zt_data("tiny-sd15"));
    snprintf(d, sizeof d, "%s", zt_tmp("old_diffusers"));
    snprintf(in, sizeof in, "%s", zt_data("tiny-sd15/vae_io.safetensors"));
    snprintf(o1, sizeof o1, "%s", zt_tmp("vae_bin.safetensors"));
    snprintf(o2, sizeof o2, "%s", zt_tmp("vae_st.safetensors"));
    snprintf(o3, sizeof o3, "%s", zt_tmp("vae_bin_alone.safetensors"));
    const char *dirs[4] = {"", "/unet", "/text_encoder", "/vae"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s%s", d, dirs[i]);
        CHECK(mkdir(p, 0755) == 0);
    }
    const char *links[5] = {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                            "text_encoder/config.json", "text_encoder/model.safetensors"};
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s/%s", fx, links[i]);
        snprintf(q, sizeof q, "%s/%s", d, links[i]);
        CHECK(symlink(p, q) == 0);
    }
    snprintf(p, sizeof p, "%s/vae/config.json", fx);
    snprintf(q, sizeof q, "%s/vae/config.json", d);
    CHECK(symlink(p, q) == 0);
    snprintf(p, sizeof p, "%s", zt_data("ckpt/tiny-sd15-vae.bin"));
    snprintf(q, sizeof q, "%s/vae/diffusion_pytorch_model.bin", d);
    CHECK(symlink(p, q) == 0);
    int r1 = zt_cli("run vae-decode --model '%s' --in '%s' -o '%s' -q", d, in, o1);
    CHECKM(r1 == 0, "vae-decode, folder with a .bin VAE: %s", zt_err);
    int r2 = zt_cli("run vae-decode --model '%s' --in '%s' -o '%s' -q", fx, in, o2);
    CHECKM(r2 == 0, "vae-decode, the fixture folder: %s", zt_err);
    snprintf(q, sizeof q, "%s/vae/config.json", fx);
    int r3 = zt_cli("run vae-decode --model '%s' --vae-config '%s' --in '%s' -o '%s' -q", p, q, in, o3);
    CHECKM(r3 == 0, "vae-decode, the .bin alone: %s", zt_err);
    if (!r1 && !r2) same_decoded("VAE from diffusion_pytorch_model.bin", o1, o2, in);
    if (!r3 && !r2) same_decoded("VAE from the .bin alone", o3, o2, in);
}

/* A kohya LoRA saved with torch.save loads as its safetensors file. */
static void test_lora_pt(void) {
    zl_lora *a = NULL, *b = NULL;
    CHECK_OK(zl_lora_load(zt_data("ckpt/content.kohya.pt"), NULL, &a));
    CHECK_OK(zl_lora_load(zt_data("tiny-sd15/loras/content.kohya.safetensors"), NULL, &b));
    if (a && b) {
        CHECK(a->n == b->n && a->n > 0 && a->family == b->family && a->layout == b->layout);
        for (int i = 0; i < a->n && a->n == b->n; i++) {
            const zl_lora_layer *x = &a->layers[i], *y = &b->layers[i];
            int same = !strcmp(x->module, y->module) && x->rank == y->rank && x->alpha == y->alpha &&
                       x->in_features == y->in_features && x->out_features == y->out_features && x->kh == y->kh &&
                       !memcmp(x->up, y->up, sizeof(float) * (size_t)x->out_features * x->rank) &&
                       !memcmp(x->down, y->down, sizeof(float) * (size_t)x->rank * x->in_features * x->kh * x->kw);
            CHECKM(same, "layer %d (%s) equals the safetensors LoRA's", i, x->module);
        }
    }
    zl_lora_free(a);
    zl_lora_free(b);
}

static void expect_bad(const char *what, const uint8_t *b, size_t n, int code, const char *must) {
    zl_st_file *f = NULL;
    int rc = zl_st_parse(b, n, "bad.ckpt", &f);
    CHECKM(rc == code && !f && strstr(zl_errmsg(), "bad.ckpt: ") == zl_errmsg() && strstr(zl_errmsg(), must),
           "%s: %d %s", what, rc, zl_errmsg());
    zl_st_close(f);
}

/* Replace every occurrence of `from` by `to` (same length). */
static void replace_all(uint8_t *b, size_t n, const char *from, const char *to) {
    size_t l = strlen(from);
    for (size_t i = 0; i + l <= n; i++)
        if (!memcmp(b + i, from, l)) memcpy(b + i, to, l);
}

static void test_bad(void) {
    const struct {
        const char *file;
        int code;
        const char *must;
    } gen[] = {
        {"ckpt/bad_past_end.pt", ZL_EFORMAT, "tensor 'w' reaches past the end of its storage"},
        {"ckpt/bad_broadcast.pt", ZL_EUNSUPPORTED, "tensor 'w' has more elements than its storage"},
        {"ckpt/bad_dtype.pt", ZL_EUNSUPPORTED, "storage type 'torch.ComplexFloatStorage'"},
        {"ckpt/bad_huge_empty.pt", ZL_EFORMAT, "tensor 'w': its sizes multiply past 2^40"},
    };
    for (size_t i = 0; i < sizeof gen / sizeof gen[0]; i++) {
        zl_st_file *f = NULL;
        char p[1024];
        snprintf(p, sizeof p, "%s", zt_data(gen[i].file));
        int rc = zl_st_open(p, &f);
        CHECKM(rc == gen[i].code && !f && strstr(zl_errmsg(), p) == zl_errmsg() && strstr(zl_errmsg(), gen[i].must),
               "%s: %d %s", gen[i].file, rc, zl_errmsg());
        zl_st_close(f);
    }
    size_t n = 0;
    uint8_t *orig = slurp(zt_data("ckpt/views.pt"), &n), *b = malloc(n);
    if (!orig || !b) {
        CHECK(0);
        free(orig);
        free(b);
        return;
    }
    expect_bad("truncated", orig, n - 10, ZL_EFORMAT, "no zip end-of-directory record");
    memcpy(b, orig, n);
    replace_all(b, n, "views/data.pkl", "views/data.pkx");
    expect_bad("no data.pkl", b, n, ZL_EFORMAT, "without a data.pkl");
    memcpy(b, orig, n);
    replace_all(b, n, "views/data/3", "views/data/9");
    expect_bad("a storage's member missing", b, n, ZL_EFORMAT, "storage '3' has no member views/data/3");
    /* the pickle (the first member, after its 30 + 14-byte local header) with an opcode we do not read */
    memcpy(b, orig, n);
    CHECK(b[44] == 0x80 && b[45] == 2);
    b[46] = 0xff;
    expect_bad("unknown opcode", b, n, ZL_EUNSUPPORTED, "pickle opcode 0xff at byte 2");
    /* a member marked deflated in the central directory */
    memcpy(b, orig, n);
    for (size_t i = 0; i + 4 <= n; i++)
        if (b[i] == 'P' && b[i + 1] == 'K' && b[i + 2] == 1 && b[i + 3] == 2) {
            b[i + 10] = 8;
            break;
        }
    expect_bad("compressed member", b, n, ZL_EUNSUPPORTED, "is compressed (method 8)");
    memcpy(b, orig, n);
    replace_all(b, n, "little", "bigend");
    expect_bad("big-endian", b, n, ZL_EUNSUPPORTED, "big-endian");
    /* an old (pre-zip) torch file is still refused with what to do */
    expect_bad("legacy pickle", (const uint8_t *)"\x80\x02\x8a\x0alp\xfc\x9c" "F\xf9 j\xa8P\x19.", 16, ZL_EFORMAT,
               "saved before torch 1.6");
    free(orig);
    free(b);
}

int main(void) {
    test_views();
    test_sd_checkpoint();
    test_diffusers_bin();
    test_lora_pt();
    test_bad();
    return zt_done();
}
