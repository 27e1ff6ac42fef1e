/* libFuzzer harness for the LoRA loader (zl_lora_load_st: layout detection,
 * key -> module mapping, alpha sources, shape checks, family detection).
 *
 * Most inputs are a small text description from which the harness builds a
 * VALID safetensors file, so mutations land in key names, shapes, dtypes,
 * values and metadata instead of dying in the container's offset checks
 * (fuzz_safetensors covers those). One directive per line:
 *   unet NAME      target UNet: none (default) | sdxl | sd15 | tiny-sdxl | mini-sdxl | tiny-sd15
 *   family N       opts.expect_family (0 unknown, 1 SDXL, 2 SD 1.x)
 *   te N           text-encoder configs: 0 none | 1 the fixtures' tiny CLIPs | 2 CLIP-L + bigG
 *   meta KEY VALUE a __metadata__ entry (VALUE is the rest of the line)
 *   cfg JSON       an adapter_config.json given through opts.adapter_config
 *   dora N         opts.allow_dora (DoRA dora_scale read instead of refused)
 *   t NAME DTYPE DIMS [FILL]
 *                  a tensor; DIMS is "-" for a scalar or "4,64"; FILL a number
 *                  (nan/inf allowed) for every element, else a fixed pattern.
 * An input that is itself a safetensors file (8-byte length, then '{') is
 * loaded as is (with allow_dora when its size is odd). Accepted LoRAs are checked for the invariants their users rely
 * on; a broken one aborts and is reported as a crash. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "models/names.h"
#include "ziplora/lora.h"
#include "ziplora/safetensors.h"

/* Where messages say the file is. The folder does not exist, so no
 * adapter_config.json is ever found beside it. */
#define LORA_PATH "/nonexistent-fuzz-dir/fuzz_lora.safetensors"
#define MAX_TENSORS 512
#define MAX_NUMEL (1 << 16)      /* per tensor */
#define MAX_BYTES (4u << 20)     /* whole data buffer */

static const char *const k_configs[][2] = {
    {"tiny-sdxl",
     "{\"act_fn\":\"silu\",\"addition_embed_type\":\"text_time\",\"addition_time_embed_dim\":8,\"attention_head_dim\":[2,4],"
     "\"block_out_channels\":[32,64],\"cross_attention_dim\":64,\"down_block_types\":[\"DownBlock2D\",\"CrossAttnDownBlock2D\"],"
     "\"in_channels\":4,\"layers_per_block\":2,\"norm_num_groups\":32,\"num_attention_heads\":null,\"out_channels\":4,"
     "\"projection_class_embeddings_input_dim\":80,\"sample_size\":32,\"transformer_layers_per_block\":[1,2],"
     "\"up_block_types\":[\"CrossAttnUpBlock2D\",\"UpBlock2D\"],\"use_linear_projection\":true}"},
    {"mini-sdxl",
     "{\"act_fn\":\"silu\",\"addition_embed_type\":\"text_time\",\"addition_time_embed_dim\":8,\"attention_head_dim\":[2,2,4],"
     "\"block_out_channels\":[32,64,64],\"cross_attention_dim\":64,\"down_block_types\":[\"DownBlock2D\",\"CrossAttnDownBlock2D\","
     "\"CrossAttnDownBlock2D\"],\"in_channels\":4,\"layers_per_block\":2,\"norm_num_groups\":16,\"num_attention_heads\":null,"
     "\"out_channels\":4,\"projection_class_embeddings_input_dim\":80,\"sample_size\":32,\"transformer_layers_per_block\":[1,1,2],"
     "\"up_block_types\":[\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\",\"UpBlock2D\"],\"use_linear_projection\":true}"},
    {"tiny-sd15",
     "{\"act_fn\":\"silu\",\"addition_embed_type\":null,\"addition_time_embed_dim\":null,\"attention_head_dim\":8,"
     "\"block_out_channels\":[32,32,64,64],\"cross_attention_dim\":48,\"down_block_types\":[\"CrossAttnDownBlock2D\","
     "\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"DownBlock2D\"],\"in_channels\":4,\"layers_per_block\":2,"
     "\"norm_num_groups\":16,\"num_attention_heads\":null,\"out_channels\":4,\"projection_class_embeddings_input_dim\":null,"
     "\"sample_size\":32,\"transformer_layers_per_block\":1,\"up_block_types\":[\"UpBlock2D\",\"CrossAttnUpBlock2D\","
     "\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\"],\"use_linear_projection\":false}"},
};

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_lora: invariant broken: %s\n", what);
        abort();
    }
}

/* The fixtures' text encoders (text_encoder/config.json of mini-sdxl and tiny-sd15 differ only in width). */
static void tiny_clip(zl_clip_config *c, int hidden, int bigg) {
    memset(c, 0, sizeof *c);
    c->hidden = hidden;
    c->intermediate = 4 * hidden;
    c->heads = 4;
    c->layers = 3;
    c->max_pos = 77;
    c->vocab = 49408;
    c->projection_dim = hidden;
    c->quick_gelu = !bigg;
    c->has_projection = bigg;
    c->eps = 1e-5f;
}

/* Scratch file for `cfg` lines: one per process, rewritten per input. */
static char g_scratch[256];
static void remove_scratch(void) { if (g_scratch[0]) unlink(g_scratch); }

static const char *adapter_config_path(void) {
    char *path = g_scratch;
    if (!path[0]) {
        const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        snprintf(path, sizeof g_scratch, "%s/fuzz_lora_%d.adapter_config.json", dir, (int)getpid());
        atexit(remove_scratch);
    }
    return path;
}

typedef struct {
    json_t *hdr;
    uint8_t *data;
    size_t len;
    int n;
} builder;

/* Encode element i of a tensor of dtype dt holding `fill` (or the pattern). */
static void put_value(uint8_t *dst, zl_dtype dt, int64_t i, int has_fill, double fill) {
    double v = has_fill ? fill : (double)((i * 7919 + 3) % 17 - 8) * 0.125;
    float f = (float)v;
    int64_t iv = isfinite(v) && fabs(v) < 9e18 ? (int64_t)v : 0;
    switch (dt) {
    case ZL_DT_F32: memcpy(dst, &f, 4); break;
    case ZL_DT_F64: memcpy(dst, &v, 8); break;
    case ZL_DT_F16: { uint16_t h = zl_f32_to_f16(f); memcpy(dst, &h, 2); break; }
    case ZL_DT_BF16: { uint16_t h = zl_f32_to_bf16(f); memcpy(dst, &h, 2); break; }
    case ZL_DT_BOOL: dst[0] = v != 0; break;
    default: {
        int bytes = zl_dtype_bits(dt) / 8;
        uint64_t u = (uint64_t)iv;
        for (int b = 0; b < bytes; b++) dst[b] = (uint8_t)(u >> (8 * b)); /* little-endian, two's complement */
    }
    }
}

/* "t NAME DTYPE DIMS [FILL]". Returns 0 to skip the whole input. */
static int add_tensor(builder *b, char *args) {
    char *save = NULL;
    char *name = strtok_r(args, " \t", &save), *dts = strtok_r(NULL, " \t", &save), *dims = strtok_r(NULL, " \t", &save);
    char *fills = strtok_r(NULL, " \t", &save);
    if (!name || !dts || !dims || b->n >= MAX_TENSORS || !strcmp(name, "__metadata__")) return 0;
    zl_dtype dt = zl_dtype_from_name(dts);
    if (dt == ZL_DT_INVALID || zl_dtype_bits(dt) % 8) return 0;
    int64_t shape[ZL_MAX_DIMS];
    int ndim = 0;
    int64_t numel = 1;
    if (strcmp(dims, "-") != 0) {
        for (char *p = dims; *p;) {
            char *end;
            long long d = strtoll(p, &end, 10);
            if (end == p || d < 0 || d > MAX_NUMEL || ndim == ZL_MAX_DIMS) return 0;
            shape[ndim++] = d;
            numel *= d;
            if (numel > MAX_NUMEL) return 0;
            p = end;
            if (*p == ',') p++;
            else if (*p) return 0;
        }
    }
    int has_fill = 0;
    double fill = 0;
    if (fills) {
        char *end;
        fill = strtod(fills, &end);
        has_fill = end != fills;
    }
    size_t nb = (size_t)numel * (size_t)(zl_dtype_bits(dt) / 8);
    if (b->len + nb > MAX_BYTES) return 0;
    if (json_object_get(b->hdr, name)) return 0; /* a JSON object cannot hold the same key twice */
    json_t *js = json_array();
    for (int d = 0; d < ndim; d++) json_array_append_new(js, json_integer(shape[d]));
    json_t *t = json_pack("{s:s, s:o, s:[I, I]}", "dtype", dts, "shape", js, "data_offsets", (json_int_t)b->len,
                          (json_int_t)(b->len + nb));
    if (!t || json_object_set_new(b->hdr, name, t) != 0) return 0; /* e.g. a name that is not UTF-8 */
    uint8_t *nd = realloc(b->data, b->len + nb + 1);
    if (!nd) return 0;
    b->data = nd;
    int eb = zl_dtype_bits(dt) / 8;
    for (int64_t i = 0; i < numel; i++) put_value(b->data + b->len + (size_t)i * (size_t)eb, dt, i, has_fill, fill);
    b->len += nb;
    b->n++;
    return 1;
}

/* Check what zl_lora promises its users, and touch every value. */
static void check_lora(const zl_lora *l) {
    check(l->n >= 0 && (l->n == 0 || l->layers), "layer array");
    check(l->path && strcmp(l->path, LORA_PATH) == 0, "path is not the one given");
    double sum = 0;
    int ndora = 0;
    for (int i = 0; i < l->n; i++) {
        const zl_lora_layer *y = &l->layers[i];
        check(y->module && y->module[0], "layer without a module name");
        check(y->part == ZL_PART_UNET || y->part == ZL_PART_TE1 || y->part == ZL_PART_TE2, "bad part");
        check(y->kind == ZL_LORA_LINEAR || y->kind == ZL_LORA_CONV, "bad kind");
        check(y->rank >= 1 && y->in_features >= 1 && y->out_features >= 1 && y->kh >= 1 && y->kw >= 1, "non-positive size");
        check(y->kind == ZL_LORA_CONV || (y->kh == 1 && y->kw == 1), "linear layer with a kernel");
        check(y->down && y->up, "layer without weights");
        if (i > 0) {
            const zl_lora_layer *p = &l->layers[i - 1];
            check(p->part < y->part || (p->part == y->part && strcmp(p->module, y->module) < 0), "layers not sorted by (part, module)");
        }
        check(zl_lora_find(l, y->part, y->module) == y, "zl_lora_find does not find the layer");
        size_t nd = (size_t)y->rank * (size_t)y->in_features * (size_t)y->kh * (size_t)y->kw;
        size_t nu = (size_t)y->out_features * (size_t)y->rank;
        for (size_t k = 0; k < nd; k++) sum += y->down[k];
        for (size_t k = 0; k < nu; k++) sum += y->up[k];
        (void)zl_lora_scale(y);
        if (y->dora) {
            ndora++;
            const int nm = y->dora_out ? y->out_features : y->in_features;
            for (int c = 0; c < nm; c++) check(isfinite(y->dora[c]), "non-finite DoRA magnitude accepted");
        }
        /* fold small layers into a base weight (DoRA's path reads dora, down and up whole) */
        const size_t nw = (size_t)y->out_features * y->in_features * y->kh * y->kw;
        if (nw <= 4096) {
            float *w = malloc(nw * sizeof *w);
            check(w != NULL, "out of memory");
            for (size_t k = 0; k < nw; k++) w[k] = (float)((int)(k % 7) - 3) * 0.25f;
            check(zl_lora_fold(y, 0.5f, w) == ZL_OK, "fold failed");
            for (size_t k = 0; k < nw; k++) sum += w[k];
            free(w);
        }
    }
    check(ndora == l->n_dora, "n_dora is not the number of DoRA layers");
    check(l->n_meta >= 0, "metadata count");
    for (int i = 0; i < l->n_meta; i++) check(l->meta_k[i] && l->meta_v[i], "NULL metadata entry");
    (void)zl_family_name(l->family);
    volatile double sink = sum;
    (void)sink;
}

/* The lazy loader (merge's) must agree with the eager one: same verdict (a
 * value error shows when the values are read), same layers, and values read
 * back from the file equal to the loaded ones. */
static void check_lazy(const zl_st_file *f, const zl_lora_load_opts *opts, int rc_eager, const zl_lora *e) {
    zl_lora *l = NULL;
    zl_lora_lazy *z = NULL;
    int rc = zl_lora_load_st_lazy(f, LORA_PATH, opts, &l, &z);
    if (rc) {
        check(rc == rc_eager, "lazy and eager loads disagree");
        check(l == NULL && z == NULL, "failed lazy load returned a LoRA");
        return;
    }
    if (rc_eager) {
        check(rc_eager == ZL_ENUMERIC, "lazy load accepted what the eager one refused");
        int bad = 0;
        for (int i = 0; i < l->n && !bad; i++) {
            const zl_lora_layer *a = &l->layers[i];
            float *d = malloc(sizeof(float) * (size_t)a->rank * a->in_features * a->kh * a->kw);
            float *u = malloc(sizeof(float) * (size_t)a->out_features * a->rank);
            check(d && u, "out of memory");
            bad = zl_lora_lazy_read(z, l, i, d, u) == ZL_ENUMERIC;
            free(d);
            free(u);
        }
        check(bad, "lazy reads miss the non-finite value");
        zl_lora_lazy_free(z);
        zl_lora_free(l);
        return;
    }
    check(l->n == e->n && l->family == e->family && l->layout == e->layout, "lazy load: other layers");
    float *d = NULL, *u = NULL;
    for (int i = 0; i < l->n; i++) {
        const zl_lora_layer *a = &l->layers[i], *b = &e->layers[i];
        check(!strcmp(a->module, b->module) && a->part == b->part && a->rank == b->rank && a->alpha == b->alpha &&
                  a->in_features == b->in_features && a->out_features == b->out_features && a->kh == b->kh &&
                  a->kw == b->kw && !a->down == !a->up,
              "lazy load: layer differs");
        /* LoRA layers stay in the file; LyCORIS layers hold their computed factors */
        if (a->down) {
            size_t nd0 = (size_t)a->rank * a->in_features * a->kh * a->kw, nu0 = (size_t)a->out_features * a->rank;
            check(!memcmp(a->down, b->down, nd0 * sizeof(float)) && !memcmp(a->up, b->up, nu0 * sizeof(float)),
                  "lazy load: in-memory factors differ");
        }
        size_t nd = (size_t)a->rank * a->in_features * a->kh * a->kw, nu = (size_t)a->out_features * a->rank;
        d = realloc(d, nd * sizeof *d);
        u = realloc(u, nu * sizeof *u);
        check(d && u, "out of memory");
        check(zl_lora_lazy_read(z, l, i, d, u) == ZL_OK, "lazy read failed");
        check(!memcmp(d, b->down, nd * sizeof *d) && !memcmp(u, b->up, nu * sizeof *u), "lazy values differ");
    }
    free(d);
    free(u);
    zl_lora_lazy_free(z);
    zl_lora_free(l);
}

/* The lazy loaders (merge's) never read DoRA, allow_dora or not: with it set, they
 * must agree with an eager load without it. */
static void lazy_against_eager(const zl_st_file *f, const zl_lora_load_opts *opts, int rc, const zl_lora *l) {
    if (!opts->allow_dora) {
        check_lazy(f, opts, rc, l);
        return;
    }
    zl_lora_load_opts o2 = *opts;
    o2.allow_dora = 0;
    zl_lora *l2 = NULL;
    int rc2 = zl_lora_load_st(f, LORA_PATH, &o2, &l2);
    check(!rc2 == !!l2, "load status and result disagree");
    if (!rc2) check(!l2->n_dora, "DoRA read without allow_dora");
    check_lazy(f, opts, rc2, l2);
    zl_lora_free(l2);
}

static void load_and_check(const zl_st_file *f, const zl_lora_load_opts *opts) {
    zl_lora *l = NULL;
    int rc = zl_lora_load_st(f, LORA_PATH, opts, &l);
    if (rc) {
        check(l == NULL, "failed load returned a LoRA");
        check(strstr(zl_errmsg(), "fuzz_lora") != NULL, "error message does not name the file");
        lazy_against_eager(f, opts, rc, NULL);
        return;
    }
    check(l != NULL, "successful load returned no LoRA");
    check_lora(l);
    if (opts->expect_family != ZL_FAMILY_UNKNOWN) check(l->family == opts->expect_family, "LoRA of another family accepted");
    lazy_against_eager(f, opts, rc, l);
    zl_lora_free(l);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    zl_lora_load_opts opts;
    memset(&opts, 0, sizeof opts);

    /* A raw safetensors file. */
    if (size >= 9 && data[8] == '{') {
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--) n = (n << 8) | data[i];
        if (n <= size - 8) {
            zl_st_file *f;
            if (zl_st_parse(data, size, LORA_PATH, &f) == ZL_OK) {
                opts.allow_dora = (int)(size & 1);
                load_and_check(f, &opts);
                zl_st_close(f);
            }
            return 0;
        }
    }

    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    builder b = {json_object(), NULL, 0, 0};
    json_t *meta = json_object();
    zl_unet_config ucfg;
    zl_clip_config te1, te2;
    int ok = 1;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line && ok; line = strtok_r(NULL, "\n", &save)) {
        char *args = strchr(line, ' ');
        if (args) *args++ = 0;
        else args = line + strlen(line);
        if (!strcmp(line, "t")) {
            ok = add_tensor(&b, args);
        } else if (!strcmp(line, "meta")) {
            char *v = strchr(args, ' ');
            if (v) *v++ = 0;
            else v = args + strlen(args);
            json_t *s = json_string(v);
            ok = s && json_object_set_new(meta, args, s) == 0;
        } else if (!strcmp(line, "cfg")) {
            FILE *fp = fopen(adapter_config_path(), "wb");
            if (!fp) { ok = 0; break; }
            fwrite(args, 1, strlen(args), fp);
            fclose(fp);
            opts.adapter_config = adapter_config_path();
        } else if (!strcmp(line, "dora")) {
            opts.allow_dora = atoi(args) != 0;
        } else if (!strcmp(line, "family")) {
            int fam = atoi(args);
            if (fam >= 0 && fam <= 2) opts.expect_family = (zl_family)fam;
        } else if (!strcmp(line, "te")) {
            int te = atoi(args);
            if (te == 1) {
                int sd1 = opts.unet_config && opts.unet_config->family == ZL_FAMILY_SD1;
                tiny_clip(&te1, sd1 ? 48 : 32, 0);
                tiny_clip(&te2, 32, 1);
                opts.te1_config = &te1;
                opts.te2_config = sd1 ? NULL : &te2;
            } else if (te == 2) {
                zl_names_clip_l_config(&te1);
                zl_names_clip_bigg_config(&te2);
                opts.te1_config = &te1;
                opts.te2_config = &te2;
            }
        } else if (!strcmp(line, "unet")) {
            if (!strcmp(args, "sdxl")) { zl_unet_config_sdxl_base(&ucfg); opts.unet_config = &ucfg; }
            else if (!strcmp(args, "sd15")) { zl_unet_config_sd15(&ucfg); opts.unet_config = &ucfg; }
            for (size_t i = 0; i < sizeof k_configs / sizeof k_configs[0]; i++)
                if (!strcmp(args, k_configs[i][0])) {
                    check(zl_unet_config_parse(k_configs[i][1], k_configs[i][0], &ucfg) == ZL_OK, "embedded fixture config");
                    opts.unet_config = &ucfg;
                }
        }
    }
    free(text);
    if (ok && json_object_size(meta)) json_object_set(b.hdr, "__metadata__", meta);
    char *hdr = ok ? json_dumps(b.hdr, JSON_COMPACT) : NULL;
    if (hdr) {
        size_t hn = strlen(hdr);
        size_t padded = (hn + 7) & ~(size_t)7;
        size_t total = 8 + padded + b.len;
        uint8_t *file = malloc(total);
        check(file != NULL, "malloc");
        for (int i = 0; i < 8; i++) file[i] = (uint8_t)((uint64_t)padded >> (8 * i));
        memcpy(file + 8, hdr, hn);
        memset(file + 8 + hn, ' ', padded - hn);
        if (b.len) memcpy(file + 8 + padded, b.data, b.len);
        zl_st_file *f;
        int rc = zl_st_parse(file, total, LORA_PATH, &f);
        /* The builder only makes valid files; a rejection is a reader or harness bug. */
        if (rc) fprintf(stderr, "fuzz_lora: built file rejected: %s\n", zl_errmsg());
        check(rc == ZL_OK, "the safetensors reader rejected a valid file");
        load_and_check(f, &opts);
        zl_st_close(f);
        free(file);
        free(hdr);
    }
    json_decref(meta);
    json_decref(b.hdr);
    free(b.data);
    return 0;
}
