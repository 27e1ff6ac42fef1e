/* The VAE against diffusers' AutoencoderKL numbers (vae_io.safetensors) from
 * both layouts, its name tables against real SDXL / SD 1.5 checkpoints' key
 * lists, the tiler, errors for broken files, and the run vae-* stages. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testlib.h"
#include "ziplora/vae.h"

static const char *k_fixtures[] = {"mini-sdxl", "tiny-sd15"};

typedef struct {
    float *image, *mean, *logvar, *z, *decoded;
    int B, H, W, h, w;
} vae_io;

static int load_io(const char *fx, vae_io *io) {
    char rel[256];
    snprintf(rel, sizeof rel, "%s/vae_io.safetensors", fx);
    zl_st_file *f = NULL;
    if (zl_st_open(zt_data(rel), &f)) return 0;
    memset(io, 0, sizeof *io);
    int64_t n;
    io->image = zl_st_load_f32(f, "image", &n);
    io->mean = zl_st_load_f32(f, "latent_mean", &n);
    io->logvar = zl_st_load_f32(f, "latent_logvar", &n);
    io->z = zl_st_load_f32(f, "z", &n);
    io->decoded = zl_st_load_f32(f, "decoded", &n);
    const zl_st_tensor *ti = zl_st_find(f, "image"), *tz = zl_st_find(f, "z");
    io->B = (int)ti->shape[0];
    io->H = (int)ti->shape[2];
    io->W = (int)ti->shape[3];
    io->h = (int)tz->shape[2];
    io->w = (int)tz->shape[3];
    zl_st_close(f);
    return io->image && io->mean && io->logvar && io->z && io->decoded;
}

static void free_io(vae_io *io) {
    free(io->image); free(io->mean); free(io->logvar); free(io->z); free(io->decoded);
}

static void check_against_io(zl_vae *v, const vae_io *io, const char *what) {
    const zl_vae_config *c = zl_vae_get_config(v);
    size_t nl = (size_t)io->B * c->latent_channels * (io->H / 8) * (io->W / 8);
    size_t nd = (size_t)io->B * 3 * io->h * 8 * io->w * 8;
    float *mean = malloc(sizeof(float) * nl), *lv = malloc(sizeof(float) * nl), *dec = malloc(sizeof(float) * nd);
    char lab[128];
    CHECK_OK(zl_vae_encode(v, io->image, io->B, io->H, io->W, mean, lv));
    snprintf(lab, sizeof lab, "%s latent_mean", what);
    zt_close(lab, mean, io->mean, (int64_t)nl, 1e-4);
    snprintf(lab, sizeof lab, "%s latent_logvar", what);
    zt_close(lab, lv, io->logvar, (int64_t)nl, 1e-4);
    CHECK_OK(zl_vae_decode(v, io->z, io->B, io->h, io->w, dec));
    snprintf(lab, sizeof lab, "%s decoded", what);
    zt_close(lab, dec, io->decoded, (int64_t)nd, 1e-4);
    free(mean); free(lv); free(dec);
}

static void test_fixture(const char *fx) {
    vae_io io;
    CHECKM(load_io(fx, &io), "%s: vae_io.safetensors", fx);
    char rel[256];
    /* diffusers folder */
    zl_model_paths mp;
    CHECK_OK(zl_model_paths_resolve(zt_data(fx), &mp));
    zl_vae *v = NULL;
    CHECK_OK(zl_vae_load_model(&mp, NULL, &v));
    if (v) {
        const zl_vae_config *c = zl_vae_get_config(v);
        CHECK(c->latent_channels == 4 && zl_vae_scale(v) == 8);
        CHECK(c->scaling_factor == (!strcmp(fx, "mini-sdxl") ? 0.13025f : 0.18215f));
        char what[128];
        snprintf(what, sizeof what, "%s diffusers", fx);
        check_against_io(v, &io, what);
        zl_vae_free(v);
    }
    zl_model_paths_free(&mp);
    /* single file: the shapes give everything but the group count (4 here, not the real 32),
     * so the inference refuses and names the way out */
    snprintf(rel, sizeof rel, "%s/single_file.safetensors", fx);
    char sf[1024], cfgp[1024];
    snprintf(sf, sizeof sf, "%s", zt_data(rel));
    snprintf(rel, sizeof rel, "%s/vae/config.json", fx);
    snprintf(cfgp, sizeof cfgp, "%s", zt_data(rel));
    v = NULL;
    CHECK(zl_vae_load(sf, NULL, &v) == ZL_EUNSUPPORTED && v == NULL);
    CHECK(strstr(zl_errmsg(), "config.json") != NULL);
    zl_vae_load_opts o = {.config_path = cfgp};
    CHECK_OK(zl_vae_load(sf, &o, &v));
    if (v) {
        char what[128];
        snprintf(what, sizeof what, "%s single file", fx);
        check_against_io(v, &io, what);
        zl_vae_free(v);
    }
    /* the same through zl_model_paths of the single file, with the config given */
    CHECK_OK(zl_model_paths_resolve(sf, &mp));
    v = NULL;
    CHECK_OK(zl_vae_load_model(&mp, &o, &v));
    if (v) {
        /* no scaling_factor in the single file: it comes from the config, which says the family's */
        CHECK(zl_vae_get_config(v)->scaling_factor == (mp.family == ZL_FAMILY_SDXL ? 0.13025f : 0.18215f));
        zl_vae_free(v);
    }
    zl_model_paths_free(&mp);
    free_io(&io);
}

/* ---- name tables vs real checkpoints --------------------------------------- */

typedef struct {
    json_t *tensors; /* name -> {shape} */
    const char *prefix_filter;
    int n, missing, badshape;
    char first_bad[300];
} name_check;

static void name_cb(void *ctx, const char *name, int nd, const int64_t *shape) {
    name_check *nc = ctx;
    nc->n++;
    json_t *e = json_object_get(nc->tensors, name);
    if (!e) {
        if (!nc->missing++) snprintf(nc->first_bad, sizeof nc->first_bad, "missing %s", name);
        return;
    }
    json_t *s = json_object_get(e, "shape");
    int ok = (int)json_array_size(s) == nd;
    /* attention projections are [C,C] in diffusers files, [C,C,1,1] in ldm ones: shape given as expected */
    for (int i = 0; ok && i < nd; i++) ok = json_integer_value(json_array_get(s, i)) == shape[i];
    if (!ok && !nc->badshape++) snprintf(nc->first_bad, sizeof nc->first_bad, "shape of %s", name);
}

static int count_prefixed(json_t *tensors, const char *prefix) {
    const char *k;
    json_t *val;
    int n = 0;
    json_object_foreach(tensors, k, val) {
        (void)val;
        if (!prefix || !strncmp(k, prefix, strlen(prefix))) n++;
    }
    return n;
}

static void test_real_names(void) {
    const struct {
        const char *file, *component;
        int ldm;
        zl_family fam;
    } cases[] = {
        {"real-keys/sdxl_base_1.0.single_file.keys.json", NULL, 1, ZL_FAMILY_SDXL},
        {"real-keys/sdxl_base_1.0.diffusers.keys.json", "vae", 0, ZL_FAMILY_SDXL},
        {"real-keys/sd15.single_file.keys.json", NULL, 1, ZL_FAMILY_SD1},
        {"real-keys/sd15.diffusers.keys.json", "vae", 0, ZL_FAMILY_SD1},
    };
    for (int i = 0; i < 4; i++) {
        json_error_t err;
        json_t *root = json_load_file(zt_data(cases[i].file), 0, &err);
        CHECKM(root != NULL, "%s: %s", cases[i].file, err.text);
        if (!root) continue;
        json_t *t = cases[i].component ? json_object_get(json_object_get(root, cases[i].component), "tensors")
                                       : json_object_get(root, "tensors");
        CHECK(t != NULL);
        zl_vae_config cfg;
        zl_vae_config_standard(&cfg, cases[i].fam);
        name_check nc = {.tensors = t};
        CHECK_OK(zl_vae_list_tensors(&cfg, cases[i].ldm, name_cb, &nc));
        int total = count_prefixed(t, cases[i].ldm ? "first_stage_model." : NULL);
        CHECKM(nc.missing == 0 && nc.badshape == 0, "%s: %d missing, %d bad shapes (%s)", cases[i].file, nc.missing,
               nc.badshape, nc.first_bad);
        /* and nothing of the real VAE is left unused */
        CHECKM(nc.n == total, "%s: loader reads %d tensors, the file has %d", cases[i].file, nc.n, total);
        json_decref(root);
    }
}

/* ---- tiling ----------------------------------------------------------------- */

/* A pointwise "decoder": each latent cell becomes an 8x8 block whose value is a
 * fixed mix of the cell's channels plus a smooth function of the pixel offset
 * within the block. Tiling must reproduce its untiled output. */
static int pointwise_fn(void *ctx, const float *z, int th, int tw, float *out) {
    (void)ctx;
    int Hs = th * 8, Ws = tw * 8;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < Hs; y++)
            for (int x = 0; x < Ws; x++) {
                size_t hw = (size_t)th * tw, cell = (size_t)(y / 8) * tw + x / 8;
                float v = 0;
                for (int k = 0; k < 4; k++) v += (float)(k + 1 + c) * 0.1f * z[k * hw + cell];
                out[((size_t)c * Hs + y) * Ws + x] = tanhf(v) + 0.01f * (y % 8) - 0.02f * (x % 8);
            }
    return ZL_OK;
}

static void test_tiler_exact_on_pointwise(void) {
    const int h = 37, w = 23;
    size_t nz = (size_t)4 * h * w, no = (size_t)3 * h * 8 * w * 8;
    float *z = malloc(sizeof(float) * nz), *a = malloc(sizeof(float) * no), *b = malloc(sizeof(float) * no);
    for (size_t i = 0; i < nz; i++) z[i] = sinf((float)i * 0.37f) * 2.0f;
    CHECK_OK(pointwise_fn(NULL, z, h, w, a));
    /* several tile/overlap combinations, including uneven last tiles and a single tile in x */
    const int tiles[][2] = {{8, 2}, {10, 4}, {16, 3}, {24, 8}, {5, 0}};
    for (int t = 0; t < 5; t++) {
        CHECK_OK(zl_vae_tiled_apply(pointwise_fn, NULL, z, 4, h, w, 3, 8, tiles[t][0], tiles[t][1], b));
        /* weights are normalised in float: allow rounding only */
        char what[64];
        snprintf(what, sizeof what, "tiled pointwise %d/%d", tiles[t][0], tiles[t][1]);
        zt_close(what, b, a, (int64_t)no, 1e-6);
    }
    CHECK(zl_vae_tiled_apply(pointwise_fn, NULL, z, 4, h, w, 3, 8, 8, 8, b) == ZL_EINVAL);
    free(z); free(a); free(b);
}

static void test_tiled_vae(void) {
    zl_model_paths mp;
    CHECK_OK(zl_model_paths_resolve(zt_data("mini-sdxl"), &mp));
    zl_vae *v = NULL;
    CHECK_OK(zl_vae_load_model(&mp, NULL, &v));
    zl_model_paths_free(&mp);
    if (!v) return;
    const int h = 24, w = 20;
    size_t nz = (size_t)4 * h * w, no = (size_t)3 * h * 8 * w * 8;
    float *z = malloc(sizeof(float) * nz), *a = malloc(sizeof(float) * no), *b = malloc(sizeof(float) * no);
    for (size_t i = 0; i < nz; i++) z[i] = sinf((float)i * 1.3f + 0.2f) * cosf((float)i * 0.071f);
    CHECK_OK(zl_vae_set_tiling(v, ZL_VAE_TILE_OFF, 80, 16));
    CHECK_OK(zl_vae_decode(v, z, 1, h, w, a));
    /* a tile as large as the latent is the untiled computation, bit for bit */
    CHECK_OK(zl_vae_set_tiling(v, ZL_VAE_TILE_ON, 24, 8));
    CHECK_OK(zl_vae_decode(v, z, 1, h, w, b));
    CHECK(!memcmp(a, b, sizeof(float) * no));
    /* AUTO with the default 80-cell tile decodes this latent untiled */
    CHECK_OK(zl_vae_set_tiling(v, ZL_VAE_TILE_AUTO, 80, 16));
    CHECK_OK(zl_vae_decode(v, z, 1, h, w, b));
    CHECK(!memcmp(a, b, sizeof(float) * no));
    /* Real tiling: 2x2 tiles of 16 cells with overlap 8. GroupNorm statistics are per tile (as in
     * diffusers' tiled decode), so the result is not the untiled image; instead it must be exactly
     * the documented blend of the tiles decoded on their own. Tile starts, spread evenly with the
     * last one flush with the end: rows {0, 8} of 24, columns {0, 4} of 20. Weights ramp as
     * min(1, (p + 0.5) / R, (len - p - 0.5) / R) on sides facing another tile, R = 8 * overlap. */
    CHECK_OK(zl_vae_set_tiling(v, ZL_VAE_TILE_ON, 16, 8));
    CHECK_OK(zl_vae_decode(v, z, 1, h, w, b));
    const int ys[2] = {0, 8}, xs[2] = {0, 4}, T = 16, R = 64, TP = T * 8;
    double *num = calloc(no, sizeof(double)), *den = calloc(no / 3, sizeof(double));
    float *zt = malloc(sizeof(float) * 4 * T * T), *dt = malloc(sizeof(float) * 3 * TP * TP);
    zl_vae_set_tiling(v, ZL_VAE_TILE_OFF, 80, 16);
    for (int iy = 0; iy < 2; iy++)
        for (int ix = 0; ix < 2; ix++) {
            for (int c = 0; c < 4; c++)
                for (int r = 0; r < T; r++)
                    for (int q = 0; q < T; q++) zt[(c * T + r) * T + q] = z[((size_t)c * h + ys[iy] + r) * w + xs[ix] + q];
            CHECK_OK(zl_vae_decode(v, zt, 1, T, T, dt));
            for (int py = 0; py < TP; py++) {
                double wy = 1;
                if (iy == 1) wy = fmin(wy, (py + 0.5) / R);
                if (iy == 0) wy = fmin(wy, (TP - py - 0.5) / R);
                for (int px = 0; px < TP; px++) {
                    double wx = 1;
                    if (ix == 1) wx = fmin(wx, (px + 0.5) / R);
                    if (ix == 0) wx = fmin(wx, (TP - px - 0.5) / R);
                    size_t o = (size_t)(ys[iy] * 8 + py) * (w * 8) + xs[ix] * 8 + px;
                    den[o] += wy * wx;
                    for (int c = 0; c < 3; c++) num[(size_t)c * (no / 3) + o] += wy * wx * dt[((size_t)c * TP + py) * TP + px];
                }
            }
        }
    float *want = malloc(sizeof(float) * no);
    for (size_t i = 0; i < no; i++) want[i] = (float)(num[i] / den[i % (no / 3)]);
    zt_close("tiled decode = blend of independently decoded tiles", b, want, (int64_t)no, 1e-5);
    fprintf(stderr, "  (for information: tiled 16/8 vs untiled decode of this random-weight VAE differ by %.3f relative L2)\n",
            zt_relerr(b, a, (int64_t)no));
    free(num); free(den); free(zt); free(dt); free(want);
    CHECK(zl_vae_set_tiling(v, ZL_VAE_TILE_ON, 8, 8) == ZL_EINVAL);
    free(z); free(a); free(b);
    zl_vae_free(v);
}

/* ---- errors -------------------------------------------------------------------- */

static void test_errors(void) {
    /* a copy of the diffusers VAE with one tensor dropped, and one with a wrong shape */
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(zt_data("mini-sdxl/vae/diffusion_pytorch_model.safetensors"), &f));
    if (!f) return;
    int n = zl_st_count(f);
    zl_st_entry *e = calloc((size_t)n, sizeof *e);
    int k = 0;
    const char *drop = "decoder.up_blocks.1.resnets.1.conv2.weight";
    for (int i = 0; i < n; i++) {
        const zl_st_tensor *t = zl_st_at(f, i);
        if (!strcmp(t->name, drop)) continue;
        e[k].name = t->name;
        e[k].dtype = t->dtype;
        e[k].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) e[k].shape[d] = t->shape[d];
        e[k].data = t->data;
        k++;
    }
    CHECK(k == n - 1);
    const char *p1 = zt_tmp("dropped.safetensors");
    CHECK_OK(zl_st_write(p1, e, k, NULL, 0, NULL, 0));
    zl_vae_load_opts o = {.config_path = zt_data("mini-sdxl/vae/config.json")};
    zl_vae *v = NULL;
    CHECK(zl_vae_load(p1, &o, &v) == ZL_ENOTFOUND && v == NULL);
    CHECK(strstr(zl_errmsg(), drop) != NULL && strstr(zl_errmsg(), "dropped.safetensors") != NULL);
    /* reinterpret a [16,16,3,3] weight as [16,144] */
    for (int i = 0; i < k; i++)
        if (!strcmp(e[i].name, "encoder.conv_in.weight")) {
            e[i].ndim = 2;
            e[i].shape[1] = e[i].shape[1] * e[i].shape[2] * e[i].shape[3];
        }
    const char *p2 = zt_tmp("badshape.safetensors");
    CHECK_OK(zl_st_write(p2, e, k, NULL, 0, NULL, 0));
    CHECK(zl_vae_load(p2, &o, &v) == ZL_ESHAPE && v == NULL);
    CHECK(strstr(zl_errmsg(), "encoder.conv_in.weight") != NULL);
    free(e);
    zl_st_close(f);
    /* configs */
    zl_vae_config c;
    CHECK(zl_vae_config_parse("{\"block_out_channels\": [8, 12], \"norm_num_groups\": 8}", "cfg", &c) == ZL_EFORMAT);
    CHECK(strstr(zl_errmsg(), "norm_num_groups") != NULL);
    CHECK(zl_vae_config_parse("{\"_class_name\": \"VQModel\", \"block_out_channels\": [32]}", "cfg", &c) == ZL_EUNSUPPORTED);
    CHECK(zl_vae_config_parse("[1,2]", "cfg", &c) == ZL_EFORMAT);
    CHECK_OK(zl_vae_config_load(zt_data("tiny-sd15/vae/config.json"), &c));
    CHECK(c.n_levels == 4 && c.block_out_channels[1] == 16 && c.norm_num_groups == 4 && c.layers_per_block == 1 &&
          c.scaling_factor == 0.18215f);
    /* a model without a VAE / a file that is not one */
    CHECK(zl_vae_load(zt_data("mini-sdxl/unet/diffusion_pytorch_model.safetensors"), NULL, &v) == ZL_ENOTFOUND);
    /* bad sizes */
    zl_model_paths mp;
    CHECK_OK(zl_model_paths_resolve(zt_data("tiny-sd15"), &mp));
    CHECK_OK(zl_vae_load_model(&mp, NULL, &v));
    zl_model_paths_free(&mp);
    if (v) {
        float img[3 * 12 * 16] = {0}, m[64], l[64];
        CHECK(zl_vae_encode(v, img, 1, 12, 16, m, l) == ZL_EINVAL); /* 12 is not a multiple of 8 */
        CHECK(zl_vae_decode(v, img, 0, 2, 2, m) == ZL_EINVAL);
        zl_vae_free(v);
    }
}

/* ---- layout variants ------------------------------------------------------------ */

/* Rewrite a file's tensors: keep those whose name starts with `keep` (minus `strip`
 * characters), rename old-style attention names, optionally flatten [C,C,1,1]
 * attention weights to [C,C]. Returns the number written. */
static int rewrite(const char *src, const char *dst, const char *keep, size_t strip, int old_attn, int flatten_attn) {
    zl_st_file *f = NULL;
    if (zl_st_open(src, &f)) return -1;
    int n = zl_st_count(f), k = 0;
    zl_st_entry *e = calloc((size_t)n, sizeof *e);
    char **names = calloc((size_t)n, sizeof *names);
    for (int i = 0; i < n; i++) {
        const zl_st_tensor *t = zl_st_at(f, i);
        if (strncmp(t->name, keep, strlen(keep))) continue;
        char nm[300];
        snprintf(nm, sizeof nm, "%s", t->name + strip);
        if (old_attn) {
            const char *from[4] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."}, *to[4] = {".query.", ".key.", ".value.", ".proj_attn."};
            for (int m = 0; m < 4; m++) {
                char *p = strstr(nm, from[m]);
                if (p && strstr(nm, "attentions.0")) {
                    char tmp[300];
                    snprintf(tmp, sizeof tmp, "%.*s%s%s", (int)(p - nm), nm, to[m], p + strlen(from[m]));
                    snprintf(nm, sizeof nm, "%s", tmp);
                }
            }
        }
        names[k] = strdup(nm);
        e[k].name = names[k];
        e[k].dtype = t->dtype;
        e[k].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) e[k].shape[d] = t->shape[d];
        if (flatten_attn && strstr(nm, "attn_1.") && t->ndim == 4) e[k].ndim = 2;
        e[k].data = t->data;
        k++;
    }
    int rc = zl_st_write(dst, e, k, NULL, 0, NULL, 0);
    for (int i = 0; i < k; i++) free(names[i]);
    free(names);
    free(e);
    zl_st_close(f);
    return rc ? -1 : k;
}

static void decode_matches(const char *path, const char *cfg, const vae_io *io, const char *what) {
    zl_vae_load_opts o = {.config_path = cfg};
    zl_vae *v = NULL;
    CHECK_OK(zl_vae_load(path, &o, &v));
    if (!v) return;
    size_t nd = (size_t)io->B * 3 * io->h * 8 * io->w * 8;
    float *dec = malloc(sizeof(float) * nd);
    CHECK_OK(zl_vae_decode(v, io->z, io->B, io->h, io->w, dec));
    zt_close(what, dec, io->decoded, (int64_t)nd, 1e-4);
    free(dec);
    zl_vae_free(v);
}

static void test_layout_variants(void) {
    vae_io io;
    if (!load_io("mini-sdxl", &io)) return;
    char cfg[1024], sf[1024], dif[1024];
    snprintf(cfg, sizeof cfg, "%s", zt_data("mini-sdxl/vae/config.json"));
    snprintf(sf, sizeof sf, "%s", zt_data("mini-sdxl/single_file.safetensors"));
    snprintf(dif, sizeof dif, "%s", zt_data("mini-sdxl/vae/diffusion_pytorch_model.safetensors"));
    /* old diffusers attention names (query/key/value/proj_attn) */
    const char *p1 = zt_tmp("old_attn.safetensors");
    CHECK(rewrite(dif, p1, "", 0, 1, 0) > 0);
    decode_matches(p1, cfg, &io, "old diffusers attention names");
    /* a standalone ldm VAE file (no first_stage_model. prefix), attention stored 2-D as older
     * converters wrote it */
    const char *p2 = zt_tmp("ldm_vae.safetensors");
    CHECK(rewrite(sf, p2, "first_stage_model.", strlen("first_stage_model."), 0, 1) > 0);
    decode_matches(p2, cfg, &io, "standalone ldm VAE, 2-D attention");
    /* the CLI takes such a file as --model too */
    char p2c[1024], outp[1024];
    snprintf(p2c, sizeof p2c, "%s", p2);
    snprintf(outp, sizeof outp, "%s", zt_tmp("ldm_dec.safetensors"));
    int code = zt_cli("run vae-decode --model '%s' --vae-config '%s' --in '%s' -o '%s' -q", p2c, cfg,
                      zt_data("mini-sdxl/vae_io.safetensors"), outp);
    CHECKM(code == 0, "vae-decode of a standalone VAE: exit %d: %s", code, zt_err);
    zl_st_file *f = NULL;
    if (!code && !zl_st_open(outp, &f)) {
        int64_t n;
        float *d = zl_st_load_f32(f, "decoded", &n);
        if (d) zt_close("cli standalone decoded", d, io.decoded, n, 1e-4);
        CHECK(d != NULL);
        free(d);
        zl_st_close(f);
    }
    free_io(&io);
}

/* ---- pipeline helpers --------------------------------------------------------------- */

/* decode_images divides by the scaling factor and converts as diffusers' postprocess does;
 * checked against vae_io's decoded (which is decode(z)) converted by the rule written out here. */
static void test_pipeline_helpers(void) {
    vae_io io;
    if (!load_io("tiny-sd15", &io)) return;
    zl_model_paths mp;
    CHECK_OK(zl_model_paths_resolve(zt_data("tiny-sd15"), &mp));
    zl_vae *v = NULL;
    CHECK_OK(zl_vae_load_model(&mp, NULL, &v));
    zl_model_paths_free(&mp);
    if (!v) { free_io(&io); return; }
    float sf = zl_vae_get_config(v)->scaling_factor;
    size_t nz = (size_t)io.B * 4 * io.h * io.w;
    float *lat = malloc(sizeof(float) * nz);
    for (size_t i = 0; i < nz; i++) lat[i] = io.z[i] * sf;
    zl_image ims[2];
    CHECK(io.B == 2);
    CHECK_OK(zl_vae_decode_images(v, lat, 2, io.h, io.w, ims));
    int H = io.h * 8, W = io.w * 8, maxd = 0;
    for (int b = 0; b < 2; b++) {
        CHECK(ims[b].w == W && ims[b].h == H && ims[b].c == 3);
        if (!ims[b].px) continue;
        for (int k = 0; k < 3; k++)
            for (int i = 0; i < H * W; i++) {
                double x = io.decoded[((size_t)b * 3 + k) * H * W + i] / 2.0 + 0.5;
                x = x < 0 ? 0 : x > 1 ? 1 : x;
                int want = (int)nearbyint(x * 255.0);
                int d = abs((int)ims[b].px[(size_t)i * 3 + k] - want);
                if (d > maxd) maxd = d;
            }
        zl_image_free(&ims[b]);
    }
    /* (z * sf) / sf and float decode differences can move a value across a rounding boundary */
    CHECKM(maxd <= 1, "decode_images differs from the reference by %d levels", maxd);
    /* encode_image: a uint8 image -> mean * scaling factor */
    zl_image im;
    CHECK_OK(zl_image_alloc(&im, 48, 32, 3));
    for (int i = 0; i < 48 * 32 * 3; i++) im.px[i] = (uint8_t)((i * 37) & 255);
    float *t = malloc(sizeof(float) * 3 * 48 * 32), *m = malloc(sizeof(float) * 4 * 24), *l = malloc(sizeof(float) * 4 * 24);
    float *got = malloc(sizeof(float) * 4 * 24);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < 48 * 32; i++) t[c * 48 * 32 + i] = 2.0f * (im.px[i * 3 + c] / 255.0f) - 1.0f;
    CHECK_OK(zl_vae_encode(v, t, 1, 32, 48, m, l));
    CHECK_OK(zl_vae_encode_image(v, &im, got));
    for (int i = 0; i < 4 * 24; i++) m[i] *= sf;
    zt_close("encode_image = mean * scaling", got, m, 4 * 24, 1e-6);
    zl_image_free(&im);
    free(t); free(m); free(l); free(got); free(lat);
    zl_vae_free(v);
    free_io(&io);
}

/* ---- CLI ----------------------------------------------------------------------- */

static void test_cli(void) {
    vae_io io;
    if (!load_io("tiny-sd15", &io)) return;
    const char *in = zt_data("tiny-sd15/vae_io.safetensors");
    const char *out = zt_tmp("enc.safetensors");
    char outp[1024];
    snprintf(outp, sizeof outp, "%s", out);
    int code = zt_cli("run vae-encode --model '%s' --in '%s' -o '%s' -q", zt_data("tiny-sd15"), in, outp);
    CHECKM(code == 0, "vae-encode exit %d: %s", code, zt_err);
    zl_st_file *f = NULL;
    if (!code && !zl_st_open(outp, &f)) {
        int64_t n;
        float *m = zl_st_load_f32(f, "latent_mean", &n), *l = zl_st_load_f32(f, "latent_logvar", &n);
        CHECK(m && l && zl_st_find(f, "latent_mean")->ndim == 4);
        if (m && l) {
            zt_close("cli latent_mean", m, io.mean, n, 1e-4);
            zt_close("cli latent_logvar", l, io.logvar, n, 1e-4);
        }
        free(m); free(l);
        zl_st_close(f);
    }
    const char *dout = zt_tmp("dec.safetensors");
    char doutp[1024];
    snprintf(doutp, sizeof doutp, "%s", dout);
    code = zt_cli("run vae-decode --model '%s' --in '%s' -o '%s' -q", zt_data("tiny-sd15"), in, doutp);
    CHECKM(code == 0, "vae-decode exit %d: %s", code, zt_err);
    if (!code && !zl_st_open(doutp, &f)) {
        int64_t n;
        float *d = zl_st_load_f32(f, "decoded", &n);
        CHECK(d != NULL);
        if (d) zt_close("cli decoded", d, io.decoded, n, 1e-4);
        free(d);
        zl_st_close(f);
    }
    /* errors: usage, a missing input tensor (no output left), a missing model */
    CHECK(zt_cli("run vae-decode --in x") == 2);
    const char *bad = zt_tmp("nodec.safetensors");
    char badp[1024];
    snprintf(badp, sizeof badp, "%s", bad);
    code = zt_cli("run vae-decode --model '%s' --in '%s' -o '%s'", zt_data("tiny-sd15"),
                  zt_data("tiny-sd15/sched_io.safetensors"), badp);
    CHECK(code == 1 && strstr(zt_err, "'z'") != NULL);
    struct stat st;
    CHECK(stat(badp, &st) != 0);
    code = zt_cli("run vae-encode --model '%s' --in '%s' -o '%s'", zt_tmp("nope"), in, badp);
    CHECK(code == 1 && strstr(zt_err, "nope") != NULL);
    CHECK(zt_cli("run vae-decode --help") == 0 && strstr(zt_out, "--tile") != NULL);
    free_io(&io);
}

int main(void) {
    for (int i = 0; i < 2; i++) test_fixture(k_fixtures[i]);
    test_real_names();
    test_tiler_exact_on_pointwise();
    test_tiled_vae();
    test_errors();
    test_layout_variants();
    test_pipeline_helpers();
    test_cli();
    return zt_done();
}
