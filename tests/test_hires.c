/* The hires fix (generate --hires-scale): AUTOMATIC1111's "Latent" upscaler and the second
 * img2img pass.
 *  - zl_latent_resize_bilinear against torch's F.interpolate(bilinear, align_corners=False)
 *    on a 2x2 input (values known in closed form) and against the exact bilinear image of a
 *    linear ramp at non-integer ratios, up and down (sampled at the clamped source points);
 *  - the CLI's result equals its parts run through the library (sample, upscale, img2img at
 *    the new size with the same seed), on SD 1.x and SDXL (whose time ids follow the size);
 *  - the PNG is the upscaled size, its parameters text says what A1111's does, and
 *    --from-png repeats the run bit for bit;
 *  - bad combinations are usage errors that write nothing. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"
#include "ziplora/image.h"
#include "ziplora/pipeline.h"

#define TOL 1e-4

static void test_resize_known(void) {
    /* torch.nn.functional.interpolate([[1, 2], [3, 4]], size=(4, 4), mode="bilinear",
     * align_corners=False): source coordinates clamp(-0.25, 0.25, 0.75, 1.25) */
    const float x[4] = {1, 2, 3, 4};
    const float want[16] = {1.0f, 1.25f, 1.75f, 2.0f, 1.5f, 1.75f, 2.25f, 2.5f,
                            2.5f, 2.75f, 3.25f, 3.5f, 3.0f, 3.25f, 3.75f, 4.0f};
    float y[16];
    CHECK_OK(zl_latent_resize_bilinear(x, 1, 2, 2, y, 4, 4));
    int same = 1;
    for (int i = 0; i < 16; i++) same &= fabsf(y[i] - want[i]) <= 1e-6f;
    CHECKM(same, "2x2 -> 4x4 as torch's bilinear: %g %g %g %g / %g %g %g %g ...", y[0], y[1], y[2], y[3], y[4], y[5], y[6],
           y[7]);
    float z[4];
    CHECK_OK(zl_latent_resize_bilinear(x, 1, 2, 2, z, 2, 2));
    CHECKM(!memcmp(z, x, sizeof x), "the same size is the identity");
    CHECK(zl_latent_resize_bilinear(x, 1, 2, 2, z, 0, 2) == ZL_EINVAL);
}

/* f(c, r, q) = c + 0.5 r - 0.25 q + 3 c r: bilinear in the two coordinates, so bilinear
 * interpolation reproduces it exactly at any source point inside the grid. */
static double ramp(int c, double r, double q) { return c + 0.5 * r - 0.25 * q + 3.0 * c * r; }

static void test_resize_ramp(void) {
    static const int sizes[][4] = {{5, 7, 8, 11}, {8, 11, 5, 7}, {3, 4, 9, 10}, {6, 6, 13, 6}};
    for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
        const int h = sizes[t][0], w = sizes[t][1], h2 = sizes[t][2], w2 = sizes[t][3], C = 2;
        float *x = malloc(sizeof(float) * C * h * w), *y = malloc(sizeof(float) * C * h2 * w2);
        for (int c = 0; c < C; c++)
            for (int r = 0; r < h; r++)
                for (int q = 0; q < w; q++) x[(c * h + r) * w + q] = (float)ramp(c, r, q);
        CHECK_OK(zl_latent_resize_bilinear(x, C, h, w, y, h2, w2));
        double worst = 0;
        for (int c = 0; c < C; c++)
            for (int i = 0; i < h2; i++)
                for (int j = 0; j < w2; j++) {
                    double sr = (i + 0.5) * h / h2 - 0.5, sq = (j + 0.5) * w / w2 - 0.5;
                    sr = sr < 0 ? 0 : sr > h - 1 ? h - 1 : sr;
                    sq = sq < 0 ? 0 : sq > w - 1 ? w - 1 : sq;
                    const double d = fabs(y[(c * h2 + i) * w2 + j] - ramp(c, sr, sq));
                    if (d > worst) worst = d;
                }
        CHECKM(worst <= 1e-5, "%dx%d -> %dx%d: a bilinear ramp is reproduced at the clamped source points (worst %g)", h,
               w, h2, w2, worst);
        free(x), free(y);
    }
}

static float *load_latent(const char *path, int64_t *n) {
    zl_st_file *f = NULL;
    if (zl_st_open(path, &f)) return NULL;
    float *v = zl_st_load_f32(f, "latent", n);
    zl_st_close(f);
    return v;
}

/* generate --hires-scale on a fixture = sample, upscale, img2img at the new size, via the library. */
static void test_cli_equals_parts(const char *fx, int W, int H, double F, int steps, int hsteps, double strength) {
    char model[1024], png[1024], lat[1024], png2[1024], lat2[1024];
    snprintf(model, sizeof model, "%s", zt_data(fx));
    snprintf(png, sizeof png, "%s", zt_tmp("hires.png"));
    snprintf(lat, sizeof lat, "%s", zt_tmp("hires_latent.safetensors"));
    snprintf(png2, sizeof png2, "%s", zt_tmp("hires_again.png"));
    snprintf(lat2, sizeof lat2, "%s", zt_tmp("hires_again_latent.safetensors"));
    int rc = zt_cli("generate --model %s -p 'a cat' -n blurry --steps %d -W %d -H %d --seed 11 --hires-scale %g "
                    "--hires-steps %d --strength %g --save-latent %s -o %s -q",
                    model, steps, W, H, F, hsteps, strength, lat, png);
    CHECKM(rc == 0, "%s: generate --hires-scale: rc %d, %s", fx, rc, zt_err);
    if (rc) return;
    const int W2 = (int)(W * F) / 8 * 8, H2 = (int)(H * F) / 8 * 8;
    zl_image im = {0};
    CHECK_OK(zl_image_read(png, &im));
    CHECKM(im.w == W2 && im.h == H2, "%s: the PNG is %dx%d (want %dx%d)", fx, im.w, im.h, W2, H2);
    zl_image_free(&im);
    zl_png_params pp = {0};
    CHECK_OK(zl_png_params_read(png, &pp));
    char size[32], hs[32], st[32];
    snprintf(size, sizeof size, "%dx%d", W, H);
    snprintf(hs, sizeof hs, "%g", F);
    snprintf(st, sizeof st, "%d", hsteps);
    static const char *const keys[5] = {"Size", "Hires upscale", "Hires steps", "Hires upscaler", "Denoising strength"};
    char sv[32];
    snprintf(sv, sizeof sv, "%g", strength);
    const char *const want_v[5] = {size, hs, st, "Latent", sv};
    for (int k = 0; k < 5; k++) {
        const char *v = zl_png_params_get(&pp, keys[k]);
        CHECKM(v && !strcmp(v, want_v[k]), "%s: parameters '%s: %s' (want %s; Size is the first pass's)", fx, keys[k],
               v ? v : "-", want_v[k]);
    }
    zl_png_params_free(&pp);

    int64_t nl = 0;
    float *got = load_latent(lat, &nl);
    const int h = H / 8, w = W / 8, h2 = H2 / 8, w2 = W2 / 8;
    const size_t n = 4 * (size_t)h * w, n2 = 4 * (size_t)h2 * w2;
    CHECKM(got && nl == (int64_t)n2, "%s: the saved latent is the upscaled size", fx);

    zl_pipeline *p = NULL;
    CHECK_OK(zl_pipeline_open(model, NULL, &p));
    zl_cond c = {0};
    float *lo = malloc(sizeof(float) * n), *up = malloc(sizeof(float) * n2), *want = malloc(sizeof(float) * n2);
    if (p && got && nl == (int64_t)n2) {
        CHECK_OK(zl_pipeline_encode(p, "a cat", "blurry", &c));
        const float cfg = zl_pipeline_family(p) == ZL_FAMILY_SDXL ? 5.0f : 7.5f;
        zl_gen_params g = {.width = W, .height = H, .steps = steps, .cfg = cfg, .seed = 11};
        CHECK_OK(zl_pipeline_sample(p, &c, &g, lo));
        CHECK_OK(zl_latent_resize_bilinear(lo, 4, h, w, up, h2, w2));
        zl_gen_params g2 = {.width = W2, .height = H2, .steps = hsteps, .cfg = cfg, .seed = 11, .init_latent = up,
                            .strength = strength};
        CHECK_OK(zl_pipeline_sample(p, &c, &g2, want));
        zt_close("generate --hires-scale = sample, upscale, img2img (library)", got, want, (int64_t)n2, TOL);
    }
    zl_cond_free(&c);
    zl_pipeline_free(p);
    free(lo), free(up), free(want);

    /* --from-png takes the hires settings too: the same latent, bit for bit */
    rc = zt_cli("generate --model %s --from-png %s --save-latent %s -o %s -q", model, png, lat2, png2);
    CHECKM(rc == 0, "%s: --from-png of a hires image: rc %d, %s", fx, rc, zt_err);
    int64_t nl2 = 0;
    float *again = rc ? NULL : load_latent(lat2, &nl2);
    CHECKM(again && got && nl2 == nl && !memcmp(again, got, sizeof(float) * (size_t)nl),
           "%s: --from-png repeats the hires run bit for bit", fx);
    free(again);
    free(got);
}

static void test_bad(void) {
    char out[1024], model[1024], img[1024];
    snprintf(out, sizeof out, "%s", zt_tmp("bad_hires.png"));
    snprintf(model, sizeof model, "%s", zt_data("tiny-sd15"));
    static const char *const cases[] = {"--hires-scale 1", "--hires-scale 4.5", "--hires-scale x",
                                        "--hires-steps 3", "--hires-scale 2 --init-image IMG",
                                        "--hires-scale 2 --hires-steps 2 --strength 0.4"};
    /* a start image to combine with --hires-scale */
    zl_image im = {.w = 64, .h = 64, .c = 3, .px = calloc(64 * 64 * 3, 1)};
    snprintf(img, sizeof img, "%s", zt_tmp("start.png"));
    CHECK_OK(zl_png_write(img, &im, NULL, 0, NULL, 0));
    zl_image_free(&im);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char flags[1200];
        snprintf(flags, sizeof flags, "%s", cases[k]);
        char *at = strstr(flags, "IMG");
        if (at) snprintf(at, sizeof flags - (size_t)(at - flags), "%s", img);
        int rc = zt_cli("generate --model %s -p 'a cat' --steps 2 -W 64 -H 64 %s -o %s", model, flags, out);
        CHECKM(rc == 2 && !zl_file_exists(out) && strstr(zt_err, "hires"),
               "'%s' is a usage error naming the hires flag, no output: rc %d, %s", cases[k], rc, zt_err);
    }
}

/* A small black PNG carrying an AUTOMATIC1111 parameters text. */
static void write_a1111_png(const char *path, const char *params) {
    zl_image im = {.w = 8, .h = 8, .c = 3, .px = calloc(8 * 8 * 3, 1)};
    zl_png_text tx = {.key = "parameters", .value = (char *)params};
    CHECK_OK(zl_png_write(path, &im, &tx, 1, NULL, 0));
    zl_image_free(&im);
}

/* An A1111 image made with another upscaler: its hires settings are taken, the upscaler is
 * said to be replaced by Latent, and the image is the upscaled size. */
static void test_from_a1111(void) {
    char src[1024], out[1024];
    snprintf(src, sizeof src, "%s", zt_tmp("a1111_hires.png"));
    snprintf(out, sizeof out, "%s", zt_tmp("a1111_again.png"));
    write_a1111_png(src, "a cat\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x48, Model hash: 0123456789, "
                         "Model: x, Denoising strength: 0.5, Hires upscale: 1.5, Hires steps: 2, Hires upscaler: "
                         "R-ESRGAN 4x+, Version: v1.10.1");
    int rc = zt_cli("generate --model %s --from-png %s -o %s", zt_data("tiny-sd15"), src, out);
    CHECKM(rc == 0 && strstr(zt_err, "R-ESRGAN 4x+") && strstr(zt_err, "Latent"),
           "--from-png of an A1111 hires image with another upscaler: rc %d, %s", rc, zt_err);
    zl_image g = {0};
    if (rc == 0) CHECK_OK(zl_image_read(out, &g));
    CHECKM(g.w == 96 && g.h == 72, "its size is the upscaled one: %dx%d", g.w, g.h);
    zl_image_free(&g);
    zl_png_params pp = {0};
    if (rc == 0) CHECK_OK(zl_png_params_read(out, &pp));
    const char *v = zl_png_params_get(&pp, "Hires steps");
    CHECKM(v && !strcmp(v, "2"), "Hires steps taken from the image: %s", v ? v : "-");
    v = zl_png_params_get(&pp, "Denoising strength");
    CHECKM(v && !strcmp(v, "0.5"), "Denoising strength taken from the image: %s", v ? v : "-");
    zl_png_params_free(&pp);

    /* A1111's other hires form, a target size: said, not silently dropped */
    write_a1111_png(src, "a cat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, Model hash: 0123456789, "
                         "Model: x, Denoising strength: 0.5, Hires resize: 128x96, Hires upscaler: Latent, "
                         "Version: v1.10.1");
    rc = zt_cli("generate --model %s --from-png %s -o %s", zt_data("tiny-sd15"), src, out);
    zl_image g2 = {0};
    if (rc == 0) CHECK_OK(zl_image_read(out, &g2));
    CHECKM(rc == 0 && strstr(zt_err, "resized to 128x96") && g2.w == 64 && g2.h == 64,
           "--from-png of an A1111 'Hires resize' image says its hires pass is not run (%dx%d): rc %d, %s", g2.w, g2.h, rc,
           zt_err);
    zl_image_free(&g2);
}

int main(void) {
    test_resize_known();
    test_resize_ramp();
    test_cli_equals_parts("tiny-sd15", 64, 64, 2.0, 4, 4, 0.5);
    test_cli_equals_parts("mini-sdxl", 64, 64, 1.5, 3, 4, 0.75);
    test_bad();
    test_from_a1111();
    return zt_done();
}
