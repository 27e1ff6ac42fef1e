/* safetensors reader/writer and dtype conversion tests: the Rust reference's
 * test vectors, every validation rule, fixture files, writer layout, atomicity. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <signal.h>
#include <sys/stat.h>

#include "testlib.h"

/* Build a file image: 8-byte length + header + data. */
static size_t mk(uint8_t *buf, const char *hdr, size_t pad_to, const void *data, size_t dlen) {
    size_t n = strlen(hdr);
    size_t N = pad_to > n ? pad_to : n;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)N >> (8 * i));
    memcpy(buf + 8, hdr, n);
    memset(buf + 8 + n, ' ', N - n);
    if (dlen) memcpy(buf + 8 + N, data, dlen);
    return 8 + N + dlen;
}

static int parse(const uint8_t *buf, size_t len) {
    zl_st_file *f = NULL;
    int rc = zl_st_parse(buf, len, "vec", &f);
    zl_st_close(f);
    return rc;
}

static void test_reference_vectors(void) {
    uint8_t buf[4096], zeros[64] = {0};
    /* valid: N=60 + 16 zero bytes */
    const char *h1 = "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    CHECK(strlen(h1) == 60);
    size_t n = mk(buf, h1, 0, zeros, 16);
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_parse(buf, n, "vec", &f));
    if (f) {
        CHECK(zl_st_count(f) == 1);
        const zl_st_tensor *t = zl_st_find(f, "test");
        CHECK(t && t->dtype == ZL_DT_I32 && t->ndim == 2 && t->numel == 4 && t->nbytes == 16);
        zl_st_close(f);
    }
    /* valid empty file */
    n = mk(buf, "{}", 8, NULL, 0);
    CHECK_OK(parse(buf, n));
    /* 10 tensors all at [0,16]: invalid offsets */
    char h[2048] = "{";
    for (int i = 0; i < 10; i++) {
        char e[128];
        snprintf(e, sizeof e, "%s\"t%d\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]}", i ? "," : "", i);
        strcat(h, e);
    }
    strcat(h, "}");
    n = mk(buf, h, 0, zeros, 16);
    CHECK(parse(buf, n) == ZL_EFORMAT);
    CHECK(strstr(zl_errmsg(), "data_offsets") != NULL);
    /* [0,4] for a 2x2 I32: invalid info */
    n = mk(buf, "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,4]}}", 0, zeros, 4);
    CHECK(parse(buf, n) == ZL_EFORMAT);
    CHECK(strstr(zl_errmsg(), "'test'") != NULL);
}

static void test_rejections(void) {
    uint8_t buf[4096], zeros[64] = {0};
    size_t n;
    /* shorter than 8 */
    CHECK(parse((const uint8_t *)"abc", 3) == ZL_EFORMAT);
    CHECK(strstr(zl_errmsg(), "vec:") == zl_errmsg());
    /* N too large */
    memset(buf, 0, 16);
    buf[3] = 0x10; /* 0x10000000 > 1e8 */
    CHECK(parse(buf, 16) == ZL_EFORMAT);
    CHECK(strstr(zl_errmsg(), "100000000") != NULL);
    /* other formats are named, with what to do */
    const struct {
        const char *bytes;
        size_t n;
        const char *must;
    } other[] = {
        {"\x80\x02\x8a\x0alp\xfc\x9c" "F\xf9 j\xa8P\x19.", 16, "pickle"},
        {"GGUF\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 16, "GGUF"},
        {"{\"weight_map\": {}}", 18, "JSON"},
    };
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
        CHECK(parse((const uint8_t *)other[i].bytes, other[i].n) == ZL_EFORMAT);
        CHECKM(strstr(zl_errmsg(), other[i].must) && strstr(zl_errmsg(), "convert it to .safetensors"), "%s", zl_errmsg());
    }
    /* a zip is read as a PyTorch checkpoint (tests/test_torch_zip.c); a cut one is refused as such */
    CHECK(parse((const uint8_t *)"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl", 26) == ZL_EFORMAT);
    CHECKM(strstr(zl_errmsg(), "PyTorch checkpoint: no zip end-of-directory record"), "%s", zl_errmsg());
    /* N past the end */
    n = mk(buf, "{}", 8, NULL, 0);
    CHECK(parse(buf, n - 1) == ZL_EFORMAT);
    /* invalid JSON, invalid UTF-8 */
    n = mk(buf, "{\"a\":", 0, NULL, 0);
    CHECK(parse(buf, n) == ZL_EFORMAT);
    n = mk(buf, "{\"\xff\xfe\":{}}", 0, NULL, 0);
    CHECK(parse(buf, n) == ZL_EFORMAT);
    /* not an object */
    n = mk(buf, "[1,2]", 0, NULL, 0);
    CHECK(parse(buf, n) == ZL_EFORMAT);
    /* unknown dtype */
    n = mk(buf, "{\"x\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, zeros, 4);
    CHECK(parse(buf, n) == ZL_EFORMAT);
    CHECK(strstr(zl_errmsg(), "F17") != NULL);
    /* offsets: three entries, negative, float */
    n = mk(buf, "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 0, zeros, 4);
    CHECK(parse(buf, n) == ZL_EFORMAT);
    n = mk(buf, "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 0, zeros, 4);
    CHECK(parse(buf, n) == ZL_EFORMAT);
    n = mk(buf, "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0.0,4]}}", 0, zeros, 4);
    CHECK(parse(buf, n) == ZL_EFORMAT);
    /* gap between tensors */
    n = mk(buf, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 0, zeros, 12);
    CHECK(parse(buf, n) == ZL_EFORMAT);
    CHECK(strstr(zl_errmsg(), "'b'") != NULL);
    /* overlap */
    n = mk(buf, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 0, zeros, 8);
    CHECK(parse(buf, n) == ZL_EFORMAT);
    /* shape overflow */
    n = mk(buf, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4611686018427387904],\"data_offsets\":[0,4]}}", 0, zeros, 4);
    CHECK(parse(buf, n) == ZL_EFORMAT);
    /* trailing bytes, and a short data buffer */
    n = mk(buf, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, zeros, 8);
    CHECK(parse(buf, n) == ZL_EFORMAT);
    CHECK(strstr(zl_errmsg(), "trailing") != NULL);
    n = mk(buf, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, zeros, 8);
    CHECK(parse(buf, n - 4) == ZL_EFORMAT);
    /* duplicate keys (the Rust reader does not check; we do) */
    n = mk(buf, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 0, zeros, 8);
    CHECK(parse(buf, n) == ZL_EFORMAT);
    CHECK(strstr(zl_errmsg(), "duplicate") != NULL);
    /* metadata value not a string */
    n = mk(buf, "{\"__metadata__\":{\"k\":1}}", 0, NULL, 0);
    CHECK(parse(buf, n) == ZL_EFORMAT);
    CHECK(strstr(zl_errmsg(), "'k'") != NULL);
}

static void test_scalars_and_dtypes(void) {
    uint8_t buf[4096], data[64];
    /* 0-rank F16 scalar (value 2.0 = 0x4000), zero-size tensor, every integer type */
    memset(data, 0, sizeof data);
    data[0] = 0x00; data[1] = 0x40;                /* F16 2.0 */
    data[2] = 0x80; data[3] = 0x3f;                /* BF16 1.0 */
    int64_t i64 = -7; memcpy(data + 4, &i64, 8);   /* I64 */
    data[12] = 1;                                  /* BOOL */
    data[13] = 200;                                /* U8 */
    data[14] = (uint8_t)-3;                        /* I8 */
    int16_t i16 = -300; memcpy(data + 15, &i16, 2);
    int32_t i32 = 70000; memcpy(data + 17, &i32, 4);
    double f64 = 0.25; memcpy(data + 21, &f64, 8);
    const char *h = "{\"s\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[0,2]},"
                    "\"b\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[2,4]},"
                    "\"z\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
                    "\"l\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[4,12]},"
                    "\"o\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[12,13]},"
                    "\"u\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[13,14]},"
                    "\"i\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[14,15]},"
                    "\"w\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[15,17]},"
                    "\"d\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[17,21]},"
                    "\"e\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[21,29]},"
                    "\"__metadata__\":{\"format\":\"pt\"}}";
    size_t n = mk(buf, h, 0, data, 29);
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_parse(buf, n, "dt", &f));
    if (!f) return;
    const struct { const char *name; float v; } want[] = {
        {"s", 2.0f}, {"b", 1.0f}, {"l", -7.0f}, {"o", 1.0f}, {"u", 200.0f}, {"i", -3.0f}, {"w", -300.0f}, {"d", 70000.0f}, {"e", 0.25f}};
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        const zl_st_tensor *t = zl_st_find(f, want[k].name);
        float v = -1;
        CHECKM(t != NULL, "tensor %s", want[k].name);
        if (t) { zl_st_read_f32(t, &v); CHECKM(v == want[k].v, "%s = %g, want %g", want[k].name, v, want[k].v); }
    }
    const zl_st_tensor *s = zl_st_find(f, "s");
    CHECK(s && s->ndim == 0 && s->numel == 1);
    const zl_st_tensor *z = zl_st_find(f, "z");
    CHECK(z && z->numel == 0 && z->nbytes == 0);
    CHECK(zl_st_meta(f, "format") && !strcmp(zl_st_meta(f, "format"), "pt"));
    zl_st_close(f);
}

/* f16 <-> f32 against the compiler's own _Float16 (an independent implementation). */
static void test_half_conversion(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float a = zl_f16_to_f32((uint16_t)h);
        _Float16 c;
        uint16_t hh = (uint16_t)h;
        memcpy(&c, &hh, 2);
        float b = (float)c;
        if (!(a == b || (isnan(a) && isnan(b)))) bad++;
        if (!isnan(a) && zl_f32_to_f16(a) != hh) bad++; /* exact round trip */
    }
    CHECKM(bad == 0, "f16 exhaustive: %d mismatches", bad);
    /* f32 -> f16 rounding on a pseudo-random sweep over all exponents */
    bad = 0;
    uint32_t x = 12345;
    for (int i = 0; i < 2000000; i++) {
        x = x * 1664525u + 1013904223u;
        float f;
        memcpy(&f, &x, 4);
        if (isnan(f)) continue;
        _Float16 c = (_Float16)f;
        uint16_t want;
        memcpy(&want, &c, 2);
        if (zl_f32_to_f16(f) != want) bad++;
    }
    CHECKM(bad == 0, "f32->f16 rounding: %d mismatches", bad);
    /* bf16: exact widening, round-to-nearest-even narrowing (checked in double) */
    bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float a = zl_bf16_to_f32((uint16_t)h);
        uint32_t u = h << 16;
        float b;
        memcpy(&b, &u, 4);
        if (!(a == b || (isnan(a) && isnan(b)))) bad++;
        if (!isnan(a) && zl_f32_to_bf16(a) != h) bad++;
    }
    x = 777;
    for (int i = 0; i < 2000000; i++) {
        x = x * 1664525u + 1013904223u;
        float f;
        memcpy(&f, &x, 4);
        if (isnan(f) || isinf(f)) continue;
        uint16_t r = zl_f32_to_bf16(f);
        /* the two bf16 neighbours of f, and which is nearer */
        uint32_t lo = x & 0xffff0000u, hi = lo + 0x10000u;
        float flo, fhi;
        memcpy(&flo, &lo, 4);
        memcpy(&fhi, &hi, 4);
        double dlo = fabs((double)f - flo), dhi = isinf(fhi) ? INFINITY : fabs((double)fhi - f);
        if (isinf(fhi)) dhi = fabs(ldexp(1.0, 128) * (f < 0 ? -1 : 1) - (double)f); /* overflow threshold */
        uint16_t want = dlo < dhi ? (uint16_t)(lo >> 16) : dhi < dlo ? (uint16_t)(hi >> 16) : ((lo >> 16) & 1) ? (uint16_t)(hi >> 16) : (uint16_t)(lo >> 16);
        if (r != want) bad++;
    }
    CHECKM(bad == 0, "bf16 conversion: %d mismatches", bad);
    /* the bulk converters (vectorised where the CPU allows) agree with the scalar ones */
    {
        enum { NB = 65536 + 13 };
        uint16_t *hs = malloc(NB * 2), *back = malloc(NB * 2);
        float *fs = malloc(NB * 4), *rnd = malloc(NB * 4);
        for (uint32_t k = 0; k < NB; k++) hs[k] = (uint16_t)(k * 40503u);
        zl_convert_to_f32(ZL_DT_F16, hs, fs, NB);
        int nb = 0;
        for (uint32_t k = 0; k < NB; k++) {
            float w = zl_f16_to_f32(hs[k]);
            if (!(fs[k] == w || (isnan(fs[k]) && isnan(w)))) nb++;
        }
        uint32_t y = 99;
        for (uint32_t k = 0; k < NB; k++) { y = y * 1664525u + 1013904223u; uint32_t u = y & 0x8fffffffu; memcpy(&rnd[k], &u, 4); }
        zl_convert_from_f32(ZL_DT_F16, rnd, back, NB);
        for (uint32_t k = 0; k < NB; k++) if (!isnan(rnd[k]) && back[k] != zl_f32_to_f16(rnd[k])) nb++;
        zl_convert_to_f32(ZL_DT_BF16, hs, fs, NB);
        for (uint32_t k = 0; k < NB; k++) {
            float w = zl_bf16_to_f32(hs[k]);
            if (memcmp(&fs[k], &w, 4) != 0) nb++;
        }
        CHECKM(nb == 0, "bulk conversions: %d mismatches", nb);
        free(hs); free(back); free(fs); free(rnd);
    }
    CHECK(isnan(zl_f16_to_f32(zl_f32_to_f16(NAN))));
    CHECK(isnan(zl_bf16_to_f32(zl_f32_to_bf16(NAN))));
    CHECK(zl_f16_to_f32(zl_f32_to_f16(1e6f)) == INFINITY);
}

static void test_fixture_files(void) {
    const char *files[] = {"mini-sdxl/unet/diffusion_pytorch_model.safetensors", "mini-sdxl/single_file.safetensors",
                           "tiny-sd15/single_file.safetensors", "mini-sdxl/loras/style.kohya_sgm.safetensors",
                           "mini-sdxl/zip_io.safetensors", "tiny-sdxl/loras/content.peft.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        zl_st_file *f = NULL;
        CHECK_OK(zl_st_open(zt_data(files[i]), &f));
        if (f) {
            CHECK(zl_st_count(f) > 0);
            zl_st_close(f);
        }
    }
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(zt_data("mini-sdxl/loras/content.kohya_sgm.safetensors"), &f));
    if (f) {
        CHECK(zl_st_meta(f, "ss_network_dim") && !strcmp(zl_st_meta(f, "ss_network_dim"), "4"));
        const zl_st_tensor *t = zl_st_find(f, "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_k.alpha");
        CHECK(t && t->ndim == 0 && t->dtype == ZL_DT_F16);
        float a = 0;
        if (t) zl_st_read_f32(t, &a);
        CHECK(a == 4.0f);
        zl_st_close(f);
    }
    /* a missing file names the path */
    CHECK(zl_st_open("/nonexistent/x.safetensors", &f) == ZL_EIO);
    CHECK(strstr(zl_errmsg(), "/nonexistent/x.safetensors") != NULL);
}

static void test_writer(void) {
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t h[3] = {zl_f32_to_f16(1.5f), zl_f32_to_f16(-2.0f), zl_f32_to_f16(0.25f)};
    double s = 3.0;
    zl_st_entry e[3] = {
        {.name = "b.half", .dtype = ZL_DT_F16, .ndim = 1, .shape = {3}, .data = h},
        {.name = "a.float", .dtype = ZL_DT_F32, .ndim = 2, .shape = {2, 3}, .data = a},
        {.name = "c.scalar", .dtype = ZL_DT_F64, .ndim = 0, .data = &s},
    };
    zl_st_meta_kv m[2] = {{"ss_network_dim", "4"}, {"quote\"d", "va\"l\n"}};
    const char *path = zt_tmp("w.safetensors");
    CHECK_OK(zl_st_write(path, e, 3, m, 2, NULL, 0));
    char *raw;
    size_t len;
    CHECK_OK(zl_read_file(path, &raw, &len));
    if (!raw) return;
    uint64_t N = 0;
    for (int i = 7; i >= 0; i--) N = (N << 8) | (uint8_t)raw[i];
    CHECK(N % 8 == 0);
    CHECK(raw[8] == '{' && raw[9] == '"');
    /* largest alignment first: the F64 scalar begins the data */
    double first;
    memcpy(&first, raw + 8 + N, 8);
    CHECK(first == 3.0);
    free(raw);
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(path, &f));
    if (f) {
        const zl_st_tensor *t = zl_st_find(f, "a.float");
        float got[6];
        CHECK(t && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3);
        if (t) { zl_st_read_f32(t, got); CHECK(memcmp(got, a, sizeof a) == 0); }
        t = zl_st_find(f, "b.half");
        if (t) { zl_st_read_f32(t, got); CHECK(got[0] == 1.5f && got[1] == -2.0f && got[2] == 0.25f); }
        CHECK(zl_st_meta(f, "quote\"d") && !strcmp(zl_st_meta(f, "quote\"d"), "va\"l\n"));
        zl_st_close(f);
    }
    /* refuse to overwrite an input, even through another name */
    const char *inputs[1] = {path};
    char alias[1100];
    snprintf(alias, sizeof alias, "%s/./w.safetensors", zt_tmpdir());
    CHECK(zl_st_write(alias, e, 3, NULL, 0, inputs, 1) == ZL_EINVAL);
    /* a failing fill callback leaves no file and no temporary */
    zl_st_entry bad = {.name = "x", .dtype = ZL_DT_F32, .ndim = 1, .shape = {2}, .data = NULL, .fill = NULL};
    const char *p2 = zt_tmp("bad.safetensors");
    CHECK(zl_st_write(p2, &bad, 1, NULL, 0, NULL, 0) != ZL_OK);
    CHECK(!zl_file_exists(p2));
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -q ziplora-", zt_tmpdir());
    CHECK(system(cmd) != 0);
    /* a folder that does not exist */
    CHECK(zl_st_write("/nonexistent-dir/o.safetensors", e, 3, NULL, 0, NULL, 0) == ZL_EIO);
    /* duplicate names */
    zl_st_entry dup[2] = {e[1], e[1]};
    CHECK(zl_st_write(zt_tmp("dup.safetensors"), dup, 2, NULL, 0, NULL, 0) == ZL_EINVAL);
}

void zl_sha256_portable(const void *data, size_t len, uint8_t out[32]);

static void test_sha256(void) {
    /* the accelerated compression (SHA-NI where available) equals the portable one */
    {
        size_t n = 100003;
        uint8_t *buf = malloc(n), a[32], b[32];
        uint32_t x = 5;
        for (size_t i = 0; i < n; i++) { x = x * 1664525u + 1013904223u; buf[i] = (uint8_t)(x >> 24); }
        int bad = 0;
        for (size_t len = 0; len < n; len = len * 3 + 1) {
            zl_sha256(buf, len, a);
            zl_sha256_portable(buf, len, b);
            if (memcmp(a, b, 32)) bad++;
        }
        CHECKM(bad == 0, "sha256 accelerated vs portable: %d mismatches", bad);
        free(buf);
    }
    uint8_t d[32];
    zl_sha256("abc", 3, d);
    const uint8_t want[4] = {0xba, 0x78, 0x16, 0xbf};
    CHECK(memcmp(d, want, 4) == 0 && d[31] == 0xad);
    char hex[65];
    const char *p = zt_tmp("sha.txt");
    CHECK_OK(zl_write_file_atomic(p, "abc", 3, NULL, 0));
    CHECK_OK(zl_sha256_file(p, hex));
    CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
}

/* The large-file writer (direct I/O from a thread, padded tail cut back):
 * odd-sized writes across its 8 MB buffers give exactly the bytes written, in
 * the folder given (also where direct I/O is refused, e.g. tmpfs: buffered);
 * an abort leaves nothing. And a safetensors file over 64 MB (written that way)
 * reads back. */
static void large_file_in(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/ziplora-large-test.bin", dir);
    remove(path);
    const size_t n = (size_t)21 * 1000 * 1000 + 4321; /* not a multiple of the alignment */
    uint8_t *buf = malloc(n);
    if (!buf) { CHECK(0); return; }
    uint32_t x = 9;
    for (size_t i = 0; i < n; i++) { x = x * 1664525u + 1013904223u; buf[i] = (uint8_t)(x >> 24); }
    zl_afile af;
    int rc = zl_afile_open_large(&af, path, NULL, 0);
    CHECKM(rc == ZL_OK, "%s: open_large: %s", dir, zl_errmsg());
    if (rc) { free(buf); return; }
    printf("large writer in %s: %s\n", dir, af.dio ? "direct I/O" : "buffered (no direct I/O here)");
    for (size_t o = 0, k = 1; o < n && !rc; o += k, k = k * 7 + 13) {
        if (k > n - o) k = n - o;
        rc = zl_afile_write(&af, buf + o, k);
    }
    CHECK_OK(rc);
    CHECK_OK(zl_afile_commit(&af));
    char *got = NULL;
    size_t len = 0;
    CHECK_OK(zl_read_file(path, &got, &len));
    CHECKM(got && len == n && !memcmp(got, buf, n), "%s: large file reads back (%zu of %zu bytes)", dir, len, n);
    free(got);
    remove(path);
    /* abort: no file, no temporary file */
    CHECK_OK(zl_afile_open_large(&af, path, NULL, 0));
    CHECK_OK(zl_afile_write(&af, buf, 9 << 20));
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", af.tmp);
    zl_afile_abort(&af);
    CHECK(!zl_file_exists(path) && !zl_file_exists(tmp));
    free(buf);
}

static void test_large_writer(void) {
    large_file_in(zt_tmpdir());
    if (zl_is_dir("/dev/shm")) large_file_in("/dev/shm");
    /* a 72 MB safetensors file goes through the large writer */
    const char *p = zt_tmp("large.safetensors");
    const int64_t rows = 4500, cols = 4001; /* F32: 72 MB */
    float *v = malloc(sizeof(float) * (size_t)(rows * cols));
    if (!v) { CHECK(0); return; }
    for (int64_t i = 0; i < rows * cols; i++) v[i] = (float)(i % 1000003) * 0.5f;
    zl_st_entry e[2];
    memset(e, 0, sizeof e);
    e[0].name = "big";
    e[0].dtype = ZL_DT_F32;
    e[0].ndim = 2;
    e[0].shape[0] = rows;
    e[0].shape[1] = cols;
    e[0].data = v;
    e[1].name = "small";
    e[1].dtype = ZL_DT_F32;
    e[1].ndim = 1;
    e[1].shape[0] = 3;
    e[1].data = v + 7;
    CHECK_OK(zl_st_write(p, e, 2, NULL, 0, NULL, 0));
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(p, &f));
    const zl_st_tensor *b = f ? zl_st_find(f, "big") : NULL, *s = f ? zl_st_find(f, "small") : NULL;
    CHECK(b && s && b->nbytes == (size_t)(rows * cols) * 4 && !memcmp(b->data, v, b->nbytes) && !memcmp(s->data, v + 7, 12));
    zl_st_close(f);
    remove(p);
    free(v);
}

/* A sharded checkpoint (index.json + shards, as save_pretrained writes an F32 SDXL UNet) opens
 * as one file holding exactly the original tensors; a broken index or shard set is refused
 * with a message naming the index and the tensor or shard. */
static void write_text(const char *path, const char *text) {
    FILE *o = fopen(path, "w");
    if (o) {
        fputs(text, o);
        fclose(o);
    }
}

static void test_sharded(void) {
    const char *src = zt_data("mini-sdxl/unet/diffusion_pytorch_model.safetensors");
    char srcp[1024], dir[1024], idx[1100];
    snprintf(srcp, sizeof srcp, "%s", src);
    snprintf(dir, sizeof dir, "%s", zt_tmpdir());
    CHECK(zt_shard(srcp, dir, "diffusion_pytorch_model", 3) == 0);
    snprintf(idx, sizeof idx, "%s/diffusion_pytorch_model.safetensors.index.json", dir);
    zl_st_file *a = NULL, *b = NULL;
    CHECK_OK(zl_st_open(srcp, &a));
    CHECK_OK(zl_st_open(idx, &b));
    if (a && b) {
        CHECKM(zl_st_count(a) == zl_st_count(b), "%d vs %d tensors", zl_st_count(a), zl_st_count(b));
        int same = 1;
        for (int i = 0; i < zl_st_count(a); i++) {
            const zl_st_tensor *x = zl_st_at(a, i), *y = zl_st_find(b, x->name);
            same &= y && y->dtype == x->dtype && y->ndim == x->ndim && y->nbytes == x->nbytes &&
                    !memcmp(x->shape, y->shape, sizeof x->shape) && !memcmp(x->data, y->data, x->nbytes);
        }
        CHECKM(same, "every tensor of the sharded file equals the original");
        CHECK(zl_st_is_mapped(b));
        CHECK(!strcmp(zl_st_path(b), idx));
    }
    zl_st_close(a);
    zl_st_close(b);

    /* broken sets: each refused, the message naming the index and what is wrong */
    char p[1200], s1[1200], text[4096];
    snprintf(s1, sizeof s1, "%s/diffusion_pytorch_model-00001-of-00003.safetensors", dir);
    const char *first = NULL;
    CHECK_OK(zl_st_open(s1, &a));
    if (a) first = zl_st_at(a, 0)->name;
    const struct {
        const char *json, *must;
    } bad[] = {
        {"{\"weight_map\": {\"x.weight\": \"diffusion_pytorch_model-00001-of-00003.safetensors\"}}", "not in the index"},
        {"{\"weight_map\": {\"%s\": \"missing-shard.safetensors\"}}", "missing-shard.safetensors"},
        {"{\"weight_map\": {\"%s\": \"../diffusion_pytorch_model-00001-of-00003.safetensors\"}}", "not a shard file name"},
        {"{\"metadata\": {}}", "weight_map"},
        {"{\"weight_map\": {\"a\": \"b\",", "not a valid index JSON"},
        {"{\"weight_map\": {\"a\": \"x.safetensors\", \"a\": \"y.safetensors\"}}", "not a valid index JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0] && first; i++) {
        snprintf(p, sizeof p, "%s/bad%d.safetensors.index.json", dir, (int)i);
        snprintf(text, sizeof text, bad[i].json, first);
        write_text(p, text);
        b = NULL;
        int rc = zl_st_open(p, &b);
        CHECKM(rc != ZL_OK && !b && strstr(zl_errmsg(), p) && strstr(zl_errmsg(), bad[i].must), "bad index %d: rc %d: %s",
               (int)i, rc, zl_errmsg());
        zl_st_close(b);
    }
    /* an index missing a tensor that its shard holds, and one naming a tensor no shard has */
    if (first) {
        snprintf(p, sizeof p, "%s/bad_extra.safetensors.index.json", dir);
        snprintf(text, sizeof text, "{\"weight_map\": {\"%s\": \"diffusion_pytorch_model-00001-of-00003.safetensors\"}}", first);
        write_text(p, text);
        CHECK(zl_st_open(p, &b) != ZL_OK && strstr(zl_errmsg(), "not in the index's weight_map"));
        /* shard 2 complete in the index, plus a tensor of shard 1 said to be in shard 2 */
        char s2[1200];
        zl_st_file *f2 = NULL;
        snprintf(s2, sizeof s2, "%s/diffusion_pytorch_model-00002-of-00003.safetensors", dir);
        CHECK_OK(zl_st_open(s2, &f2));
        if (f2) {
            size_t len = (size_t)snprintf(text, sizeof text, "{\"weight_map\": {\"%s\": \"%s\"", first,
                                          "diffusion_pytorch_model-00002-of-00003.safetensors");
            char *big = malloc(len + 200 * (size_t)zl_st_count(f2) + 8);
            memcpy(big, text, len);
            for (int i = 0; i < zl_st_count(f2); i++)
                len += (size_t)sprintf(big + len, ", \"%s\": \"diffusion_pytorch_model-00002-of-00003.safetensors\"",
                                       zl_st_at(f2, i)->name);
            strcpy(big + len, "}}");
            snprintf(p, sizeof p, "%s/bad_wrong.safetensors.index.json", dir);
            write_text(p, big);
            free(big);
            CHECKM(zl_st_open(p, &b) != ZL_OK && strstr(zl_errmsg(), first) && strstr(zl_errmsg(), "not in its shard"),
                   "misplaced tensor: %s", zl_errmsg());
            zl_st_close(f2);
        }
    }
    zl_st_close(a);
}

/* Interrupted runs: after zl_cleanup_on_signals, SIGINT/SIGTERM remove every tracked temporary
 * (an open zl_afile's, and one tracked by hand) but not an untracked file, and the process still
 * ends by the signal. Each case runs in a child process. */
static void test_signal_cleanup(void) {
    for (int sig = 0; sig < 2; sig++) {
        const int signo = sig ? SIGTERM : SIGINT;
        char fin[1024], mine[1024], kept[1024];
        snprintf(fin, sizeof fin, "%s/interrupted%d.safetensors", zt_tmpdir(), sig);
        snprintf(mine, sizeof mine, "%s/tracked%d.tmp", zt_tmpdir(), sig);
        snprintf(kept, sizeof kept, "%s/untracked%d.tmp", zt_tmpdir(), sig);
        int fds[2];
        CHECK(pipe(fds) == 0);
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            zl_cleanup_on_signals();
            zl_afile af;
            if (zl_afile_open(&af, fin, NULL, 0) || zl_afile_write(&af, "partial", 7)) _exit(3);
            fflush(af.fp);
            FILE *a = fopen(mine, "w"), *b = fopen(kept, "w");
            if (!a || !b) _exit(4);
            fclose(a);
            fclose(b);
            zl_tmp_track(mine);
            zl_tmp_track(kept);
            zl_tmp_untrack(kept);
            if (write(fds[1], af.tmp, strlen(af.tmp) + 1) < 0) _exit(5);
            close(fds[1]);
            raise(signo);
            _exit(6); /* not reached */
        }
        close(fds[1]);
        char tmp[1024] = {0};
        ssize_t n = read(fds[0], tmp, sizeof tmp - 1);
        close(fds[0]);
        int status = 0;
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
        CHECKM(WIFSIGNALED(status) && WTERMSIG(status) == signo, "child ended by signal %d (status %#x)", signo, status);
        CHECKM(n > 0 && strstr(tmp, "/.ziplora-"), "the temporary file's name came back: '%s'", tmp);
        CHECKM(n > 0 && !zl_file_exists(tmp), "%s removed", tmp);
        CHECK(!zl_file_exists(fin) && !zl_file_exists(mine));
        CHECK(zl_file_exists(kept));
        remove(kept);
    }
}

/* Output sets: nothing reaches a destination before the commit (an existing
 * file there is kept when the set is dropped); the commit moves all; a
 * destination that cannot be replaced is named. */
static void test_outset(void) {
    char d1[1024], d2[1024], d3[1024];
    snprintf(d1, sizeof d1, "%s/set_a.bin", zt_tmpdir());
    snprintf(d2, sizeof d2, "%s/set_b.bin", zt_tmpdir());
    snprintf(d3, sizeof d3, "%s/set_dir", zt_tmpdir());
    CHECK_OK(zl_write_file_atomic(d1, "old", 3, NULL, 0));
    for (int round = 0; round < 2; round++) {
        zl_outset o = {0};
        const char *t1 = NULL, *t2 = NULL;
        CHECK_OK(zl_outset_add(&o, d1, &t1));
        CHECK_OK(zl_outset_add(&o, d2, &t2));
        CHECK(t1 && t2 && strcmp(t1, d1) && strcmp(t1, t2));
        CHECK_OK(zl_write_file_atomic(t1, "new1", 4, NULL, 0));
        CHECK_OK(zl_write_file_atomic(t2, "new2", 4, NULL, 0));
        char tmp1[1024], tmp2[1024];
        snprintf(tmp1, sizeof tmp1, "%s", t1);
        snprintf(tmp2, sizeof tmp2, "%s", t2);
        if (round) CHECK_OK(zl_outset_commit(&o));
        zl_outset_free(&o);
        char *c = NULL;
        size_t n = 0;
        CHECK_OK(zl_read_file(d1, &c, &n));
        CHECKM(c && n == (round ? 4u : 3u) && !memcmp(c, round ? "new1" : "old", n), "round %d: destination 1", round);
        free(c);
        CHECK(zl_file_exists(d2) == round);
        CHECK(!zl_file_exists(tmp1) && !zl_file_exists(tmp2));
    }
    /* a folder in the way: the commit fails naming it */
    CHECK(mkdir(d3, 0755) == 0);
    char in[1100];
    snprintf(in, sizeof in, "%s/x", d3);
    CHECK_OK(zl_write_file_atomic(in, "x", 1, NULL, 0));
    zl_outset o = {0};
    const char *t = NULL;
    CHECK_OK(zl_outset_add(&o, d3, &t));
    CHECK_OK(zl_write_file_atomic(t, "y", 1, NULL, 0));
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", t);
    CHECK(zl_outset_commit(&o) == ZL_EIO && strstr(zl_errmsg(), d3));
    zl_outset_free(&o);
    CHECK(!zl_file_exists(tmp) && zl_file_exists(in));
}

/* zl_st_drop_pages: a large mapped tensor's pages go and come back unchanged;
 * a parsed buffer (not a mapping) is left alone; a range outside is refused. */
static void test_drop_pages(void) {
    const size_t n = (size_t)3 << 18; /* 3 MB of F32 */
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = (float)(i % 1000) * 0.5f - 7.0f;
    zl_st_entry e = {"big", ZL_DT_F32, 1, {(int64_t)n}, v, NULL, NULL};
    const char *path = zt_tmp("drop.safetensors");
    char p[1024];
    snprintf(p, sizeof p, "%s", path);
    CHECK_OK(zl_st_write(p, &e, 1, NULL, 0, NULL, 0));
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(p, &f));
    const zl_st_tensor *t = f ? zl_st_find(f, "big") : NULL;
    CHECK(t != NULL);
    if (t) {
        CHECK(memcmp(t->data, v, n * sizeof(float)) == 0);
        CHECK(zl_st_drop_pages(f, t->data, t->nbytes) == 1);
        CHECKM(memcmp(t->data, v, n * sizeof(float)) == 0, "dropped pages read back from the file unchanged");
        CHECK(zl_st_drop_pages(f, v, n) == 0);                       /* not in the mapping */
        CHECK(zl_st_drop_pages(f, t->data, t->nbytes + 4096) == 0); /* runs past it */
    }
    zl_st_close(f);
    size_t len = 0;
    char *buf = NULL;
    CHECK_OK(zl_read_file(p, &buf, &len));
    f = NULL;
    if (buf) CHECK_OK(zl_st_parse(buf, len, "drop (buffer)", &f));
    t = f ? zl_st_find(f, "big") : NULL;
    CHECK(t && zl_st_drop_pages(f, t->data, t->nbytes) == 0 && memcmp(t->data, v, n * sizeof(float)) == 0);
    zl_st_close(f);
    free(buf);
    free(v);
}

int main(void) {
    test_drop_pages();
    test_outset();
    test_signal_cleanup();
    test_sharded();
    test_large_writer();
    test_reference_vectors();
    test_rejections();
    test_scalars_and_dtypes();
    test_half_conversion();
    test_fixture_files();
    test_writer();
    test_sha256();
    return zt_done();
}
