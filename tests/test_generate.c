/* Tests of the txt2img pipeline and `ziplora generate`:
 *  - pipeline_io.safetensors (mini-sdxl, tiny-sd15), every case of
 *    pipeline_cases.json run through the CLI with --initial-noise: the final
 *    latent within the FIXTURES.md tolerance, the PNG's pixels within +-1 of
 *    image_u8, and the A1111 parameters chunk; also from single_file.safetensors;
 *  - the library pipeline: prompt conditioning against text_io.safetensors with
 *    the text-encoder LoRA (SDXL's zero negative, SD 1.x's ""), and reloads
 *    after releasing parts giving the same result;
 *  - a first run as a user would do it (seed, LoRAs, batch, grid, samplers);
 *  - bad inputs: exit code, a message naming the culprit, and no output file. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testlib.h"
#include "ziplora/image.h"
#include "ziplora/pipeline.h"

#define TOL 1e-4

static float *load_f32(const char *path, const char *name, int64_t *n) {
    zl_st_file *f = NULL;
    if (zl_st_open(path, &f)) return NULL;
    float *p = zl_st_load_f32(f, name, n);
    zl_st_close(f);
    return p;
}

/* image_u8 [1, 3, H, W] of a case, as bytes. */
static uint8_t *load_u8(const char *path, const char *name, int64_t *n) {
    zl_st_file *f = NULL;
    if (zl_st_open(path, &f)) return NULL;
    const zl_st_tensor *t = zl_st_find(f, name);
    uint8_t *p = NULL;
    if (t && t->dtype == ZL_DT_U8) {
        p = malloc((size_t)t->numel);
        memcpy(p, t->data, (size_t)t->numel);
        *n = t->numel;
    }
    zl_st_close(f);
    return p;
}

/* The value of the `parameters` text chunk of a PNG (malloc'd), or NULL. */
static char *png_parameters(const char *path) {
    zl_png_text *t = NULL;
    int n = 0;
    if (zl_png_read_text(path, &t, &n)) return NULL;
    char *v = NULL;
    for (int i = 0; i < n; i++)
        if (!strcmp(t[i].key, "parameters")) v = strdup(t[i].value);
    zl_png_text_free(t, n);
    return v;
}

/* The PNG decodes to the reference NCHW bytes within +-1. */
static void check_png_pixels(const char *png, const uint8_t *ref, int H, int W, const char *what) {
    zl_image im = {0};
    int rc = zl_image_read(png, &im);
    CHECKM(rc == ZL_OK, "%s: read %s: %s", what, png, zl_errmsg());
    if (rc) return;
    CHECKM(im.w == W && im.h == H && im.c == 3, "%s: PNG is %dx%dx%d, expected %dx%dx3", what, im.w, im.h, im.c, W, H);
    if (im.w == W && im.h == H && im.c == 3) {
        int worst = 0, wi = 0;
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    int d = abs((int)im.px[((size_t)y * W + x) * 3 + c] - (int)ref[((size_t)c * H + y) * W + x]);
                    if (d > worst) { worst = d; wi = (c * H + y) * W + x; }
                }
        CHECKM(worst <= 1, "%s: pixel differs by %d at NCHW index %d", what, worst, wi);
    }
    zl_image_free(&im);
}

static int sha_prefix_in(const char *text, const char *file, int n) {
    char hex[65];
    if (zl_sha256_file(file, hex)) return 0;
    hex[n] = 0;
    return strstr(text, hex) != NULL;
}

/* One pipeline case through the CLI. `extra` adds flags (single-file configs). */
/* vae_weights: the file a --vae in `extra` decodes with (its hash must be in the parameters), or NULL. */
static void run_case(const char *fx, const char *model_rel, const char *extra, json_t *cs, int idx, const char *vae_weights) {
    char io[1024], model[1024], what[256], key[64];
    snprintf(io, sizeof io, "%s/%s/pipeline_io.safetensors", ZL_TEST_DATA, fx);
    snprintf(model, sizeof model, "%s/%s%s%s", ZL_TEST_DATA, fx, model_rel[0] ? "/" : "", model_rel);
    snprintf(what, sizeof what, "%s%s%s case%d", fx, model_rel[0] ? "/" : "", model_rel, idx);
    const char *prompt = json_string_value(json_object_get(cs, "prompt"));
    const char *neg = json_string_value(json_object_get(cs, "negative_prompt"));
    int steps = (int)json_integer_value(json_object_get(cs, "steps"));
    double g = json_number_value(json_object_get(cs, "guidance_scale"));
    int H = (int)json_integer_value(json_object_get(cs, "height")), W = (int)json_integer_value(json_object_get(cs, "width"));
    int zeros = json_is_true(json_object_get(cs, "negative_zeros"));
    /* The fixture's empty negative with zeros is diffusers' negative_prompt=None: give no -n.
     * SD 1.x encodes "" either way; a non-empty negative is passed. */
    char negflag[512] = "";
    if (neg && neg[0]) snprintf(negflag, sizeof negflag, "-n '%s'", neg);
    (void)zeros;
    char png[1024], lat[1024];
    snprintf(png, sizeof png, "%s", zt_tmp("case.png"));
    snprintf(lat, sizeof lat, "%s", zt_tmp("case_latent.safetensors"));
    remove(png);
    remove(lat);
    int code = zt_cli("generate --model '%s' %s --initial-noise '%s:case%d.initial_noise' -p '%s' %s --steps %d --cfg %g "
                      "-W %d -H %d --seed 7 --save-latent '%s' -o '%s' -q",
                      model, extra, io, idx, prompt, negflag, steps, g, W, H, lat, png);
    CHECKM(code == 0, "%s: exit %d: %s", what, code, zt_err);
    if (code) return;
    int64_t n_ref = 0, n_got = 0;
    snprintf(key, sizeof key, "case%d.final_latent", idx);
    float *ref = load_f32(io, key, &n_ref);
    float *got = load_f32(lat, "latent", &n_got);
    CHECKM(ref && got && n_ref == n_got, "%s: latents %lld vs %lld values", what, (long long)n_got, (long long)n_ref);
    if (ref && got && n_ref == n_got) {
        char w2[300];
        snprintf(w2, sizeof w2, "%s final_latent", what);
        zt_close(w2, got, ref, n_ref, TOL);
    }
    free(ref);
    free(got);
    int64_t nu = 0;
    snprintf(key, sizeof key, "case%d.image_u8", idx);
    uint8_t *u8 = load_u8(io, key, &nu);
    CHECKM(u8 && nu == 3LL * H * W, "%s: image_u8", what);
    if (u8 && nu == 3LL * H * W) check_png_pixels(png, u8, H, W, what);
    free(u8);
    /* the parameters chunk says what made the image */
    char *par = png_parameters(png);
    CHECKM(par != NULL, "%s: no parameters chunk", what);
    if (par) {
        char want[2048];
        CHECKM(!strncmp(par, prompt, strlen(prompt)) && par[strlen(prompt)] == '\n', "%s: prompt line: %s", what, par);
        snprintf(want, sizeof want, "Steps: %d, Sampler: Euler, CFG scale: %g, Seed: 7, Size: %dx%d, Model hash: ", steps, g, W, H);
        CHECKM(strstr(par, want) != NULL, "%s: '%s' not in '%s'", what, want, par);
        if (neg && neg[0]) {
            snprintf(want, sizeof want, "\nNegative prompt: %s\n", neg);
            CHECKM(strstr(par, want) != NULL, "%s: negative prompt line missing: %s", what, par);
        } else {
            CHECKM(strstr(par, "Negative prompt:") == NULL, "%s: no negative was given: %s", what, par);
        }
        char uw[2048];
        if (model_rel[0]) snprintf(uw, sizeof uw, "%s", model);
        else snprintf(uw, sizeof uw, "%s/unet/diffusion_pytorch_model.safetensors", model);
        CHECKM(sha_prefix_in(par, uw, 10), "%s: model hash is not sha256[:10] of %s: %s", what, uw, par);
        if (vae_weights) {
            CHECKM(strstr(par, ", VAE hash: ") && sha_prefix_in(par, vae_weights, 10) &&
                       (strstr(par, ", VAE: vae,") || strstr(par, ", VAE: diffusion_pytorch_model.safetensors,")),
                   "%s: VAE hash and name: %s", what, par);
        } else {
            CHECKM(!strstr(par, "VAE"), "%s: no VAE field without --vae: %s", what, par);
        }
        snprintf(want, sizeof want, "Initial noise: \"%s:case%d.initial_noise[0]\"", io, idx);
        CHECKM(strstr(par, want) != NULL, "%s: initial noise field: %s", what, par);
        free(par);
    }
}

static void test_cases(void) {
    static const char *const fxs[] = {"mini-sdxl", "tiny-sd15"};
    for (int f = 0; f < 2; f++) {
        char p[1024];
        snprintf(p, sizeof p, "%s/%s/pipeline_cases.json", ZL_TEST_DATA, fxs[f]);
        json_error_t err;
        json_t *root = json_load_file(p, 0, &err);
        CHECKM(root != NULL, "%s: %s", p, err.text);
        if (!root) continue;
        json_t *cases = json_object_get(root, "cases");
        CHECK(json_array_size(cases) == 2);
        for (size_t i = 0; i < json_array_size(cases); i++) run_case(fxs[f], "", "", json_array_get(cases, i), (int)i, NULL);
        /* the single-file layout; the fixture models' head and group counts need their configs */
        char extra[8192], d[1024];
        snprintf(d, sizeof d, "%s/%s", ZL_TEST_DATA, fxs[f]);
        char vw[1200];
        snprintf(vw, sizeof vw, "%s/vae/diffusion_pytorch_model.safetensors", d);
        if (f == 0) /* SDXL: the VAE given separately, as a diffusers vae folder (its config.json is read) */
            snprintf(extra, sizeof extra,
                     "--unet-config '%s/unet/config.json' --vae '%s/vae' "
                     "--te1-config '%s/text_encoder/config.json' --te2-config '%s/text_encoder_2/config.json'",
                     d, d, d, d);
        else
            snprintf(extra, sizeof extra,
                     "--unet-config '%s/unet/config.json' --vae-config '%s/vae/config.json' "
                     "--te1-config '%s/text_encoder/config.json'",
                     d, d, d);
        run_case(fxs[f], "single_file.safetensors", extra, json_array_get(cases, f == 0 ? 1 : 0), f == 0 ? 1 : 0,
                 f == 0 ? vw : NULL);
        /* a separate VAE given as its weights file: the folder's config.json beside it is used */
        snprintf(extra, sizeof extra, "--vae '%s'", vw);
        run_case(fxs[f], "", extra, json_array_get(cases, 0), 0, vw);
        json_decref(root);
    }
}

/* SDXL: no negative -> zeros; an explicit "" is encoded (diffusers' rule), so the
 * fixture's case0 is reproduced only without -n. */
static void test_sdxl_explicit_empty_negative(void) {
    char io[1024], lat[1024];
    snprintf(io, sizeof io, "%s/mini-sdxl/pipeline_io.safetensors", ZL_TEST_DATA);
    snprintf(lat, sizeof lat, "%s", zt_tmp("empty_neg.safetensors"));
    int code = zt_cli("generate --model '%s/mini-sdxl' --initial-noise '%s:case0.initial_noise' -p 'a photo of sks dog in zwx style' "
                      "-n '' --steps 4 --cfg 5 -W 64 -H 64 --save-latent '%s' -o '%s' -q",
                      ZL_TEST_DATA, io, lat, zt_tmp("empty_neg.png"));
    CHECKM(code == 0, "explicit empty negative: exit %d: %s", code, zt_err);
    int64_t n1 = 0, n2 = 0;
    float *ref = load_f32(io, "case0.final_latent", &n1), *got = load_f32(lat, "latent", &n2);
    if (ref && got && n1 == n2) {
        double md = 0;
        for (int64_t i = 0; i < n1; i++) md = fmax(md, fabs((double)got[i] - ref[i]));
        CHECKM(md > 1e-3, "an encoded \"\" should differ from the zero negative (max diff %g)", md);
    }
    free(ref);
    free(got);
}

/* The library: conditioning with the text-encoder LoRA against text_io, and reloads. */
static void test_library(const char *fx) {
    char model[1024], lora[1024], tio[1024];
    snprintf(model, sizeof model, "%s/%s", ZL_TEST_DATA, fx);
    snprintf(lora, sizeof lora, "%s/%s/loras/text_encoders.kohya.safetensors", ZL_TEST_DATA, fx);
    snprintf(tio, sizeof tio, "%s/%s/text_io.safetensors", ZL_TEST_DATA, fx);
    zl_pipeline *p = NULL;
    CHECK_OK(zl_pipeline_open(model, NULL, &p));
    if (!p) return;
    int sdxl = zl_pipeline_family(p) == ZL_FAMILY_SDXL;
    CHECK(zl_pipeline_family(p) == (!strcmp(fx, "mini-sdxl") ? ZL_FAMILY_SDXL : ZL_FAMILY_SD1));
    int nw = 0, nh = 0;
    zl_pipeline_native_size(p, &nw, &nh);
    CHECK(nw == 256 && nh == 256); /* sample_size 32 x 8 pixels per cell */
    CHECK(zl_pipeline_check_size(p, 60, 64) == ZL_EINVAL && strstr(zl_errmsg(), "multiple of 8"));
    CHECK_OK(zl_pipeline_load_lora(p, lora, 1.0f, NULL));
    int64_t n = 0, np = 0;
    float *pe = load_f32(tio, "lora.prompt_embeds", &n);        // [8, 77, D]
    float *pp = sdxl ? load_f32(tio, "lora.pooled_prompt_embeds", &np) : NULL; // [8, P]
    CHECK(pe != NULL);
    for (int round = 0; round < 2 && pe; round++) {
        /* round 1: after releasing every part, the reloaded encoders get the LoRA again */
        if (round) zl_pipeline_release(p, ZL_PIPE_TEXT | ZL_PIPE_UNET | ZL_PIPE_VAE);
        zl_cond c;
        CHECK_OK(zl_pipeline_encode(p, "a photo of sks dog", NULL, &c)); /* tokenizer case 0 */
        if (!c.embeds) continue;
        const int64_t TD = 77LL * c.D;
        CHECK(n == 8 * TD);
        char w[200];
        snprintf(w, sizeof w, "%s pipeline prompt (+text LoRA, round %d)", fx, round);
        zt_close(w, c.embeds + TD, pe, TD, TOL);
        if (sdxl) {
            int allz = 1;
            for (int64_t i = 0; i < TD; i++) allz &= c.embeds[i] == 0.0f;
            for (int i = 0; i < c.P; i++) allz &= c.pooled[i] == 0.0f;
            CHECKM(allz, "%s: SDXL without a negative prompt gives zeros", fx);
            CHECK(pp && np == 8LL * c.P);
            if (pp) zt_close("pipeline pooled (+text LoRA)", c.pooled + c.P, pp, c.P, TOL);
        } else {
            /* SD 1.x encodes "" (tokenizer case 5) */
            snprintf(w, sizeof w, "%s negative \"\" (+text LoRA)", fx);
            zt_close(w, c.embeds, pe + 5 * TD, TD, TOL);
        }
        zl_cond_free(&c);
    }
    if (sdxl && pe) {
        zl_cond c;
        CHECK_OK(zl_pipeline_encode(p, "a photo of sks dog", "", &c));
        if (c.embeds) {
            const int64_t TD = 77LL * c.D;
            zt_close("SDXL explicit \"\" negative is encoded", c.embeds, pe + 5 * TD, TD, TOL);
            if (pp) zt_close("SDXL explicit \"\" pooled", c.pooled, pp + 5 * c.P, c.P, TOL);
        }
        zl_cond_free(&c);
    }
    free(pe);
    free(pp);

    /* generate twice, with a release in between: identical latents (the LoRAs are folded again) */
    char ul[1024];
    snprintf(ul, sizeof ul, "%s/%s/loras/style.kohya.safetensors", ZL_TEST_DATA, fx);
    CHECK_OK(zl_pipeline_load_lora(p, ul, 0.7f, NULL));
    zl_gen_params g = {.width = 64, .height = 64, .steps = 2, .cfg = 4.0f, .seed = 11};
    size_t nl = 4 * (size_t)(g.height / 8) * (g.width / 8);
    float *l1 = calloc(nl, sizeof(float)), *l2 = calloc(nl, sizeof(float));
    zl_image a = {0}, b = {0};
    CHECK_OK(zl_pipeline_generate(p, "watercolor painting of a cat", "blurry", &g, l1, &a));
    zl_pipeline_release(p, ZL_PIPE_TEXT | ZL_PIPE_UNET | ZL_PIPE_VAE);
    CHECK_OK(zl_pipeline_generate(p, "watercolor painting of a cat", "blurry", &g, l2, &b));
    CHECK(memcmp(l1, l2, nl * sizeof(float)) == 0);
    CHECK(a.px && b.px && a.w == g.width && a.h == g.height && !memcmp(a.px, b.px, (size_t)a.w * a.h * 3));
    /* the decode of that latent agrees with decoding it directly through the VAE */
    if (a.px) {
        zl_vae *v = zl_pipeline_vae(p);
        float *z = malloc(nl * sizeof(float)), *x = malloc(3 * (size_t)g.width * g.height * sizeof(float));
        for (size_t i = 0; i < nl; i++) z[i] = l1[i] / zl_vae_get_config(v)->scaling_factor;
        CHECK_OK(zl_vae_decode(v, z, 1, g.height / 8, g.width / 8, x));
        int worst = 0;
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < g.width * g.height; i++) {
                double t = x[(size_t)c * g.width * g.height + i] / 2 + 0.5;
                t = t < 0 ? 0 : t > 1 ? 1 : t;
                int d = abs((int)a.px[(size_t)i * 3 + c] - (int)lrint(255 * t));
                if (d > worst) worst = d;
            }
        CHECKM(worst == 0, "%s: pipeline image differs from clamp(x/2+0.5)*255 by %d", fx, worst);
        free(z);
        free(x);
    }
    /* a LoRA of the other family is refused and leaves the pipeline as it was */
    char other[1024];
    snprintf(other, sizeof other, "%s/%s/loras/content.kohya.safetensors", ZL_TEST_DATA, sdxl ? "tiny-sd15" : "mini-sdxl");
    CHECK(zl_pipeline_load_lora(p, other, 1.0f, NULL) != ZL_OK && strstr(zl_errmsg(), "content.kohya"));
    float *l3 = calloc(nl, sizeof(float));
    CHECK_OK(zl_pipeline_generate(p, "watercolor painting of a cat", "blurry", &g, l3, NULL));
    CHECK(memcmp(l1, l3, nl * sizeof(float)) == 0);
    /* guidance 1 runs the prompt alone (diffusers: no CFG unless g > 1); it matches g = 1 CFG closely */
    zl_gen_params g1 = g;
    g1.cfg = 1.0f;
    CHECK_OK(zl_pipeline_generate(p, "watercolor painting of a cat", "blurry", &g1, l3, NULL));
    CHECK(memcmp(l1, l3, nl * sizeof(float)) != 0);
    free(l1); free(l2); free(l3);
    zl_image_free(&a);
    zl_image_free(&b);
    zl_pipeline_free(p);
}

/* v-prediction with a zero-terminal-SNR schedule, trailing spacing and guidance
 * rescale (no fixture has them): the pipeline's latent against a sampling loop
 * written here from diffusers' formulas, with the schedule in double:
 * rescale_zero_terminal_snr, alphas_cumprod[-1] = 2^-24, trailing timesteps
 * round(N - k N/steps) - 1, x0 = v (-s / sqrt(s^2+1)) + x / (s^2+1), Euler on x0,
 * rescale_noise_cfg with torch's unbiased std. */
static void test_vpred(const char *fx) {
    char model[1024];
    snprintf(model, sizeof model, "%s/%s", ZL_TEST_DATA, fx);
    zl_pipeline_opts po = {.sched = {.prediction = "v_prediction", .zero_snr = 1}};
    zl_pipeline *p = NULL;
    CHECK_OK(zl_pipeline_open(model, &po, &p));
    if (!p) return;
    const zl_sched_config *sc = zl_pipeline_sched(p);
    CHECK(sc->prediction == ZL_PRED_V && sc->zero_snr && sc->spacing == ZL_SPACING_TRAILING);
    zl_cond c;
    CHECK_OK(zl_pipeline_encode(p, "watercolor painting of a cat", "blurry", &c));
    const int S = 3, H = 64, W = 64, h = H / 8, w = W / 8;
    const float G = 4.0f, PHI = 0.7f;
    const size_t n = 4 * (size_t)h * w;
    zl_gen_params g = {.width = W, .height = H, .steps = S, .cfg = G, .cfg_rescale = PHI, .seed = 5};
    float *lat = calloc(n, sizeof(float));
    CHECK_OK(zl_pipeline_sample(p, &c, &g, lat));

    /* the schedule, in double */
    enum { N = 1000 };
    double acp[N];
    zt_sd_alphas_cumprod(acp, 1);
    double sig[4];
    int ts[3];
    for (int k = 0; k < S; k++) {
        ts[k] = (int)nearbyint(N - k * (double)N / S) - 1;
        sig[k] = sqrt((1 - acp[ts[k]]) / acp[ts[k]]);
    }
    sig[S] = 0;
    CHECK(ts[0] == 999 && ts[1] == 666 && ts[2] == 332);

    float *x = malloc(n * sizeof(float)), *in = malloc(2 * n * sizeof(float)), *out = malloc(2 * n * sizeof(float));
    zl_rng r;
    zl_rng_init(&r, 5, 0);
    zl_rng_normal(&r, 0, x, n);
    for (size_t i = 0; i < n; i++) x[i] = (float)(x[i] * sig[0]); /* trailing: init_noise_sigma = max sigma */
    zl_unet *u = zl_pipeline_unet(p);
    const zl_unet_config *ucfg = zl_unet_get_config(u);
    float tid[12] = {H, W, 0, 0, H, W, H, W, 0, 0, H, W}, tt[2];
    zl_unet_input ui = {.B = 2, .H = h, .W = w, .T = 77, .sample = in, .timestep = tt, .context = c.embeds,
                        .text_embeds = ucfg->has_text_time ? c.pooled : NULL, .time_ids = ucfg->has_text_time ? tid : NULL};
    for (int k = 0; k < S; k++) {
        double s = sig[k], cin = 1 / sqrt(s * s + 1);
        for (size_t i = 0; i < n; i++) in[i] = in[n + i] = (float)(x[i] * cin);
        tt[0] = tt[1] = (float)ts[k];
        CHECK_OK(zl_unet_forward(u, &ui, out));
        double mv[2] = {0, 0}, vv[2] = {0, 0};
        double *v = malloc(n * sizeof(double));
        for (size_t i = 0; i < n; i++) v[i] = out[i] + (double)G * (out[n + i] - out[i]);
        for (size_t i = 0; i < n; i++) {
            mv[0] += v[i];
            mv[1] += out[n + i];
        }
        mv[0] /= n;
        mv[1] /= n;
        for (size_t i = 0; i < n; i++) {
            vv[0] += (v[i] - mv[0]) * (v[i] - mv[0]);
            vv[1] += (out[n + i] - mv[1]) * (out[n + i] - mv[1]);
        }
        double std_cfg = sqrt(vv[0] / (n - 1)), std_text = sqrt(vv[1] / (n - 1));
        for (size_t i = 0; i < n; i++) {
            v[i] = PHI * v[i] * (std_text / std_cfg) + (1 - PHI) * v[i];
            double x0 = v[i] * (-s / sqrt(s * s + 1)) + x[i] / (s * s + 1);
            double d = (x[i] - x0) / s;
            x[i] = (float)(x[i] + d * (sig[k + 1] - s));
        }
        free(v);
    }
    char what[128];
    snprintf(what, sizeof what, "%s v-prediction, zero SNR, trailing, CFG rescale", fx);
    zt_close(what, lat, x, (int64_t)n, TOL);
    /* and it is not what epsilon prediction gives (the setting reaches the loop) */
    zl_sched_config eps = *sc;
    eps.prediction = ZL_PRED_EPSILON;
    g.sched = &eps;
    float *le = calloc(n, sizeof(float));
    CHECK_OK(zl_pipeline_sample(p, &c, &g, le));
    double diff = 0;
    for (size_t i = 0; i < n; i++) diff = fmax(diff, fabs(le[i] - lat[i]));
    CHECKM(diff > 1e-2, "%s: epsilon and v prediction give the same latent (max diff %g)", fx, diff);
    free(le);
    free(x);
    free(in);
    free(out);
    free(lat);
    zl_cond_free(&c);
    zl_pipeline_free(p);
}

/* A1111's "Original" emphasis, recomputed here from the unweighted encoding of
 * the same tokens: per chunk and per encoder (CLIP-L's features, then bigG's),
 * z * multiplier, scaled back to z's mean; the negative prompt and SDXL's
 * pooled vector are untouched. */
static void test_emphasis(zl_pipeline *p, const char *fx) {
    const char *wp = "a (red:1.5) cube, [on] a ((table))", *plain = "a red cube, on a table";
    zl_tokenizer *tok = NULL;
    CHECK_OK(zl_tokenizer_new(&tok));
    int32_t *ia = NULL, *ib = NULL;
    float *wa = NULL, *wb = NULL;
    int *ba = NULL, *bb = NULL, ka = 0, kb = 0;
    CHECK_OK(zl_tokenize_chunks_weighted(tok, wp, 1, &ia, &wa, &ba, &ka));
    CHECK_OK(zl_tokenize_chunks_weighted(tok, plain, 0, &ib, &wb, &bb, &kb));
    int same_ids = ka == 1 && kb == 1 && ba[1] == bb[1] && !memcmp(ia, ib, sizeof *ia * (size_t)ba[1]);
    CHECKM(same_ids, "%s: the weighted prompt's tokens are the plain prompt's", fx);
    zl_cond e0, e1;
    CHECK_OK(zl_pipeline_encode_long(p, plain, "blurry", 0, &e0));
    CHECK_OK(zl_pipeline_encode_long(p, wp, "blurry", 1, &e1));
    /* the encoders' widths: CLIP-L's hidden size, then (SDXL) bigG's */
    char cpath[1024];
    snprintf(cpath, sizeof cpath, "%s/%s/text_encoder/config.json", ZL_TEST_DATA, fx);
    json_t *cj = json_load_file(cpath, 0, NULL);
    const int C1 = cj ? (int)json_integer_value(json_object_get(cj, "hidden_size")) : 0;
    json_decref(cj);
    if (same_ids && e0.T == 77 && e1.T == 77 && C1 > 0 && C1 <= e0.D) {
        const int D = e0.D;
        const size_t TD = (size_t)77 * D;
        CHECKM(!memcmp(e0.embeds, e1.embeds, TD * sizeof(float)), "%s: the negative is not weighted", fx);
        CHECK(!e0.P || !memcmp(e0.pooled, e1.pooled, 2 * (size_t)e0.P * sizeof(float)));
        double mult[77];
        for (int i = 0; i < 77; i++) mult[i] = 1.0;
        for (int i = 0; i < ba[1]; i++) mult[1 + i] = wa[i];
        const float *z = e0.embeds + TD;
        float *ref = malloc(TD * sizeof(float));
        const int parts[3] = {0, C1, D};
        for (int q = 0; q < (C1 < D ? 2 : 1); q++) {
            double m0 = 0, m1 = 0;
            for (int i = 0; i < 77; i++)
                for (int j = parts[q]; j < parts[q + 1]; j++) {
                    m0 += z[(size_t)i * D + j];
                    m1 += z[(size_t)i * D + j] * mult[i];
                }
            for (int i = 0; i < 77; i++)
                for (int j = parts[q]; j < parts[q + 1]; j++)
                    ref[(size_t)i * D + j] = (float)(z[(size_t)i * D + j] * mult[i] * (m0 / m1));
        }
        char what[128];
        snprintf(what, sizeof what, "%s: emphasis = A1111's Original formula", fx);
        zt_close(what, e1.embeds + TD, ref, (int64_t)TD, TOL);
        /* and it did something: the weighted tokens moved */
        double diff = 0;
        for (size_t i = 0; i < TD; i++) diff += fabs((double)e1.embeds[TD + i] - z[i]);
        CHECKM(diff > 1e-3, "%s: emphasis changed the embedding (%g)", fx, diff);
        free(ref);
    } else {
        CHECKM(0, "%s: emphasis encodings: %d / %d tokens, T %d %d, C1 %d", fx, ba ? ba[1] : -1, bb ? bb[1] : -1, e0.T,
               e1.T, C1);
    }
    zl_cond_free(&e0);
    zl_cond_free(&e1);
    /* A1111's extra-network tags are removed from both prompts, not encoded */
    CHECK_OK(zl_pipeline_encode_long(p, "a dog <lora:style_x:0.7>, (red:1.2)", "lowres <hypernet:h:1>", 1, &e0));
    CHECK_OK(zl_pipeline_encode_long(p, "a dog , (red:1.2)", "lowres ", 1, &e1));
    CHECKM(e0.T == e1.T && !memcmp(e0.embeds, e1.embeds, sizeof(float) * 2 * (size_t)e0.T * e0.D) &&
               (!e0.P || !memcmp(e0.pooled, e1.pooled, sizeof(float) * 2 * (size_t)e0.P)),
           "%s: <lora:...> tags removed in A1111 mode", fx);
    zl_cond_free(&e0);
    zl_cond_free(&e1);
    free(ia), free(ib), free(wa), free(wb), free(ba), free(bb);
    zl_tokenizer_free(tok);
}

/* Long prompts (A1111's chunks): a prompt of up to 75 tokens gives exactly the
 * short encoding; 150 tokens of "cat" give two chunks each equal to the short
 * encoding of 75 "cat"s (and the negative two empty ones: SD 1.x's "" or SDXL's
 * zeros); and since attention over a context repeated twice equals attention
 * over it once, sampling with that 154-token context gives the 77-token
 * result. */
static void test_long_prompt(const char *fx) {
    char model[1024];
    snprintf(model, sizeof model, "%s/%s", ZL_TEST_DATA, fx);
    zl_pipeline *p = NULL;
    CHECK_OK(zl_pipeline_open(model, NULL, &p));
    if (!p) return;
    const int sdxl = zl_pipeline_family(p) == ZL_FAMILY_SDXL;
    zl_cond a, b;
    CHECK_OK(zl_pipeline_encode(p, "watercolor painting of a cat", "blurry", &a));
    CHECK_OK(zl_pipeline_encode_long(p, "watercolor painting of a cat", "blurry", 0, &b));
    const size_t TD = (size_t)77 * a.D;
    CHECK(b.T == 77 && a.T == 77 && !memcmp(a.embeds, b.embeds, 2 * TD * sizeof(float)) &&
          (!sdxl || !memcmp(a.pooled, b.pooled, 2 * (size_t)a.P * sizeof(float))));
    zl_cond_free(&a);
    zl_cond_free(&b);
    char c75[1024] = "", c150[1024] = "";
    for (int i = 0; i < 75; i++) strcat(c75, "cat ");
    strcat(c150, c75);
    strcat(c150, c75);
    CHECK_OK(zl_pipeline_encode(p, c75, NULL, &a));
    CHECK_OK(zl_pipeline_encode_long(p, c150, NULL, 0, &b));
    CHECKM(b.T == 154, "%s: 150 tokens make %d context tokens", fx, b.T);
    if (b.T == 154) {
        /* the chunks are encoded as one batch: equal to within float rounding */
        for (int h = 0; h < 2; h++)
            for (int c = 0; c < 2; c++) {
                char what[160];
                snprintf(what, sizeof what, "%s: %s chunk %d = the short encoding", fx, h ? "prompt" : "negative", c);
                zt_close(what, b.embeds + (size_t)h * 2 * TD + c * TD, a.embeds + h * TD, (int64_t)TD, TOL);
            }
        if (sdxl) zt_close("SDXL pooled: the first chunk's", b.pooled, a.pooled, 2 * (int64_t)a.P, TOL);
        zl_gen_params g = {.width = 64, .height = 64, .steps = 2, .cfg = 5.0f, .seed = 4};
        const size_t n = 4 * 8 * 8;
        float *la = calloc(n, sizeof(float)), *lb = calloc(n, sizeof(float));
        CHECK_OK(zl_pipeline_sample(p, &a, &g, la));
        CHECK_OK(zl_pipeline_sample(p, &b, &g, lb));
        char what[128];
        snprintf(what, sizeof what, "%s: sampling with the context twice = once", fx);
        zt_close(what, lb, la, (int64_t)n, TOL);
        free(la);
        free(lb);
    }
    zl_cond_free(&a);
    zl_cond_free(&b);
    /* 80 tokens and a short negative: both halves two chunks, the negative's second empty */
    char c80[1024] = "";
    for (int i = 0; i < 80; i++) strcat(c80, "cat ");
    CHECK_OK(zl_pipeline_encode_long(p, c80, "blurry", 0, &b));
    CHECK_OK(zl_pipeline_encode(p, "", "blurry", &a)); /* a: [blurry, ""] ... */
    if (b.T == 154) {
        zl_cond e;
        CHECK_OK(zl_pipeline_encode(p, "blurry", "", &e)); /* e: ["", blurry] */
        zt_close("negative chunk 0: \"blurry\"", b.embeds, a.embeds, (int64_t)TD, TOL);
        zt_close("negative chunk 1: \"\"", b.embeds + TD, e.embeds, (int64_t)TD, TOL);
        zl_cond_free(&e);
    } else {
        CHECKM(0, "%s: 80 tokens make %d context tokens", fx, b.T);
    }
    zl_cond_free(&a);
    zl_cond_free(&b);
    test_emphasis(p, fx);
    zl_pipeline_free(p);
    /* the CLI: without --long-prompt the cut is said, with it the PNG says how many chunks */
    char out[1024];
    snprintf(out, sizeof out, "%s", zt_tmp("long.png"));
    int code = zt_cli("generate --model '%s' -p '%s' --steps 1 -W 64 -H 64 --seed 1 -o '%s'", model, c80, out);
    CHECKM(code == 0 && strstr(zt_err, "5 tokens were dropped") && strstr(zt_err, "--long-prompt"),
           "%s: the cut is said: %s", fx, zt_err);
    code = zt_cli("generate --model '%s' -p '%s' --long-prompt --steps 1 -W 64 -H 64 --seed 1 -o '%s'", model, c80, out);
    char *pr = code ? NULL : png_parameters(out);
    CHECKM(!code && !strstr(zt_err, "dropped") && pr && strstr(pr, "Prompt chunks: 2"), "%s --long-prompt: %s %s", fx,
           zt_err, pr ? pr : "");
    free(pr);
    /* emphasis: said to be text without --long-prompt, applied with it, "Emphasis: None" with --no-emphasis */
    code = zt_cli("generate --model '%s' -p 'a (red:1.5) cube' --steps 1 -W 64 -H 64 --seed 1 -o '%s'", model, out);
    CHECKM(code == 0 && strstr(zt_err, "emphasis syntax") && strstr(zt_err, "--long-prompt applies"),
           "%s: emphasis is said to be text: %s", fx, zt_err);
    code = zt_cli("generate --model '%s' -p 'a (red:1.5) cube' --long-prompt --steps 1 -W 64 -H 64 --seed 1 -o '%s'",
                  model, out);
    CHECKM(code == 0 && !strstr(zt_err, "emphasis syntax"), "%s --long-prompt: emphasis applied: %s", fx, zt_err);
    code = zt_cli("generate --model '%s' -p 'a [cat:dog:0.5], [red|blue] cube, [small] (x:2)' --long-prompt --steps 1 "
                  "-W 64 -H 64 --seed 1 -o '%s'", model, out);
    CHECKM(code == 0 && strstr(zt_err, "'[cat:dog:0.5]' is A1111's prompt editing") && !strstr(zt_err, "'[small]'"),
           "%s: prompt editing is said not to run: %s", fx, zt_err);
    code = zt_cli("generate --model '%s' -p 'a (red:1.5) cube' --long-prompt --no-emphasis --steps 1 -W 64 -H 64 "
                  "--seed 1 -o '%s'", model, out);
    pr = code ? NULL : png_parameters(out);
    CHECKM(pr && strstr(pr, "Prompt chunks: 1, Emphasis: None"), "%s --no-emphasis: %s", fx, pr ? pr : zt_err);
    free(pr);
}

/* A first run: seed, LoRAs with weights, batch and grid, the other samplers. */
static void test_user_run(void) {
    char d[1024], out[1024];
    snprintf(d, sizeof d, "%s/tiny-sd15", ZL_TEST_DATA);
    snprintf(out, sizeof out, "%s", zt_tmp("user.png"));
    int code = zt_cli("generate --model '%s' -p 'a photo of sks dog' --lora '%s/loras/content.kohya.safetensors:0.8' "
                      "--lora '%s/loras/text_encoders.kohya.safetensors' --steps 2 -W 64 -H 64 --seed 42 --batch 2 --grid -o '%s'",
                      d, d, d, out);
    CHECKM(code == 0, "user run: exit %d: %s", code, zt_err);
    CHECKM(strstr(zt_err, "2/2") != NULL, "progress shows the steps: %s", zt_err);
    const char *o1 = zt_tmp("user-1.png"), *og = zt_tmp("user-grid.png");
    char o1b[1024], ogb[1024];
    snprintf(o1b, sizeof o1b, "%s", o1);
    snprintf(ogb, sizeof ogb, "%s", og);
    CHECK(zl_file_exists(out) && zl_file_exists(o1b) && zl_file_exists(ogb));
    CHECK(strstr(zt_out, "user.png") && strstr(zt_out, "user-1.png") && strstr(zt_out, "user-grid.png"));
    char *p0 = png_parameters(out), *p1 = png_parameters(o1b);
    CHECK(p0 && p1);
    if (p0 && p1) {
        CHECKM(strstr(p0, "Seed: 42,") && strstr(p1, "Seed: 43,"), "batch seeds: %s | %s", p0, p1);
        CHECKM(strstr(p0, "Sampler: Euler, CFG scale: 7.5,") != NULL, "SD1 default CFG 7.5: %s", p0);
        CHECKM(strstr(p0, "Model: tiny-sd15,") != NULL, "model name: %s", p0);
        char lp[2048];
        snprintf(lp, sizeof lp, "%s/loras/content.kohya.safetensors", d);
        char hex[65];
        zl_sha256_file(lp, hex);
        char want[256];
        snprintf(want, sizeof want, "Lora hashes: \"content.kohya: %.12s, text_encoders.kohya: ", hex);
        CHECKM(strstr(p0, want) != NULL, "'%s' not in %s", want, p0);
        CHECKM(strstr(p0, "Lora weights: \"content.kohya: 0.8, text_encoders.kohya: 1\"") != NULL, "weights: %s", p0);
    }
    free(p0);
    free(p1);
    zl_image a = {0}, b = {0}, gi = {0};
    CHECK_OK(zl_image_read(out, &a));
    CHECK_OK(zl_image_read(o1b, &b));
    CHECK_OK(zl_image_read(ogb, &gi));
    CHECK(a.w == 64 && a.h == 64 && gi.w == 128 && gi.h == 64);
    if (a.px && b.px && gi.px && gi.w == 128 && gi.h == 64) {
        CHECK(memcmp(a.px, b.px, 64 * 64 * 3) != 0); /* seeds 42 and 43 */
        int same = 1;
        for (int y = 0; y < 64; y++)
            same &= !memcmp(gi.px + (size_t)y * 128 * 3, a.px + (size_t)y * 64 * 3, 64 * 3) &&
                    !memcmp(gi.px + ((size_t)y * 128 + 64) * 3, b.px + (size_t)y * 64 * 3, 64 * 3);
        CHECK(same);
    }
    /* same seed, same bytes */
    char again[1024];
    snprintf(again, sizeof again, "%s", zt_tmp("again.png"));
    code = zt_cli("generate --model '%s' -p 'a photo of sks dog' --lora '%s/loras/content.kohya.safetensors:0.8' "
                  "--lora '%s/loras/text_encoders.kohya.safetensors' --steps 2 -W 64 -H 64 --seed 42 -o '%s' -q",
                  d, d, d, again);
    zl_image c = {0};
    CHECK(code == 0 && zl_image_read(again, &c) == ZL_OK);
    CHECK(c.px && a.px && !memcmp(a.px, c.px, 64 * 64 * 3));
    zl_image_free(&a); zl_image_free(&b); zl_image_free(&gi); zl_image_free(&c);
    /* the other samplers run on the SDXL fixture and write their names */
    static const char *const sm[][2] = {{"euler_a", "Sampler: Euler a, CFG"},
                                        {"dpmpp_2m", "Sampler: DPM++ 2M, CFG"},
                                        {"'DPM++ 2M Karras'", "Sampler: DPM++ 2M, Schedule type: Karras, CFG"},
                                        {"euler_karras", "Sampler: Euler, Schedule type: Karras, CFG"},
                                        {"dpmpp_2m_sde_karras", "Sampler: DPM++ 2M SDE, Schedule type: Karras, CFG"}};
    for (int i = 0; i < 5; i++) {
        snprintf(again, sizeof again, "%s", zt_tmp("sampler.png"));
        code = zt_cli("generate --model '%s/mini-sdxl' -p cat --steps 3 -W 64 -H 64 --sampler %s --seed 1 -o '%s' -q",
                      ZL_TEST_DATA, sm[i][0], again);
        CHECKM(code == 0, "%s: exit %d: %s", sm[i][0], code, zt_err);
        char *pr = png_parameters(again);
        CHECKM(pr && strstr(pr, sm[i][1]) && strstr(pr, "CFG scale: 5,"), "%s: %s", sm[i][0], pr ? pr : "(none)");
        free(pr);
    }
}

/* v-prediction from the command line: a single file carrying the 'v_pred' and
 * 'ztsnr' markers (as NoobAI-XL V-Pred does) gives the same latent as the plain
 * file with --prediction v_prediction --zero-snr, and the PNG says how it was
 * sampled; the flags' bad values are usage errors. */
static void test_vpred_cli(void) {
    char src[1024], marked[1024], o1[1024], o2[1024], l1[1024], l2[1024];
    snprintf(src, sizeof src, "%s/tiny-sd15/single_file.safetensors", ZL_TEST_DATA);
    snprintf(marked, sizeof marked, "%s", zt_tmp("vpred_model.safetensors"));
    snprintf(o1, sizeof o1, "%s", zt_tmp("vpred1.png"));
    snprintf(o2, sizeof o2, "%s", zt_tmp("vpred2.png"));
    snprintf(l1, sizeof l1, "%s", zt_tmp("vpred1.safetensors"));
    snprintf(l2, sizeof l2, "%s", zt_tmp("vpred2.safetensors"));
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(src, &f));
    if (!f) return;
    int n = zl_st_count(f);
    zl_st_entry *e = calloc((size_t)n + 2, sizeof *e);
    for (int i = 0; i < n; i++) {
        const zl_st_tensor *t = zl_st_at(f, i);
        e[i] = (zl_st_entry){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        memcpy(e[i].shape, t->shape, sizeof t->shape);
    }
    static const float one = 1.0f;
    e[n] = (zl_st_entry){.name = "v_pred", .dtype = ZL_DT_F32, .ndim = 0, .data = &one};
    e[n + 1] = (zl_st_entry){.name = "ztsnr", .dtype = ZL_DT_F32, .ndim = 0, .data = &one};
    CHECK_OK(zl_st_write(marked, e, n + 2, NULL, 0, NULL, 0));
    free(e);
    zl_st_close(f);
    /* the tiny model's sizes need its configs */
    char cf[2048];
    snprintf(cf, sizeof cf,
             "--unet-config '%s/tiny-sd15/unet/config.json' --vae-config '%s/tiny-sd15/vae/config.json' "
             "--te1-config '%s/tiny-sd15/text_encoder/config.json'",
             ZL_TEST_DATA, ZL_TEST_DATA, ZL_TEST_DATA);
    int code = zt_cli("generate --model '%s' %s -p 'a photo of sks dog' --steps 3 -W 64 -H 64 --seed 9 --cfg-rescale 0.7 "
                      "--save-latent '%s' -o '%s' -v",
                      marked, cf, l1, o1);
    CHECKM(code == 0 && strstr(zt_err, "v-prediction, zero terminal SNR") && strstr(zt_err, "trailing spacing"),
           "marked v-pred file: exit %d: %s", code, zt_err);
    code = zt_cli("generate --model '%s' %s -p 'a photo of sks dog' --steps 3 -W 64 -H 64 --seed 9 --cfg-rescale 0.7 "
                  "--prediction v_prediction --zero-snr --save-latent '%s' -o '%s' -q",
                  src, cf, l2, o2);
    CHECKM(code == 0, "--prediction v_prediction --zero-snr: exit %d: %s", code, zt_err);
    float *a = NULL, *b = NULL;
    int64_t na = 0, nb = 0;
    a = load_f32(l1, "latent", &na);
    b = load_f32(l2, "latent", &nb);
    CHECK(a && b && na == nb && na == 4 * 8 * 8 && !memcmp(a, b, (size_t)na * sizeof(float)));
    free(a);
    free(b);
    char *pr = png_parameters(o1);
    CHECKM(pr && strstr(pr, "Prediction: v_prediction, Zero terminal SNR: True, Timestep spacing: trailing, CFG rescale: 0.7,"),
           "v-pred parameters: %s", pr ? pr : "(none)");
    free(pr);
    /* --no-zero-snr on the marked file: trailing is kept only if asked */
    code = zt_cli("generate --model '%s' %s -p cat --steps 2 -W 64 -H 64 --seed 9 --no-zero-snr --spacing leading -o '%s' -q",
                  marked, cf, o2);
    pr = code == 0 ? png_parameters(o2) : NULL;
    CHECKM(pr && strstr(pr, "Prediction: v_prediction") && !strstr(pr, "Zero terminal SNR") && !strstr(pr, "spacing"),
           "--no-zero-snr: exit %d %s", code, pr ? pr : zt_err);
    free(pr);
    remove(o2);
    static const char *const bad[][2] = {{"--prediction sample", "--prediction"},
                                         {"--spacing karras", "--spacing"},
                                         {"--cfg-rescale 1.5", "--cfg-rescale"},
                                         {"--cfg-rescale x", "--cfg-rescale"},
                                         {"--prediction", "--prediction"}};
    for (int i = 0; i < 5; i++) {
        code = zt_cli("generate --model '%s' %s -p cat -W 64 -H 64 -o '%s' %s", src, cf, o2, bad[i][0]);
        CHECKM(code == 2 && strstr(zt_err, bad[i][1]) && !zl_file_exists(o2), "%s: exit %d %s", bad[i][0], code, zt_err);
    }
}

/* img2img. The library: the latent after the last int(steps x strength) Euler
 * steps from init + noise * sigma of the first of them, against that loop
 * written here (diffusers' get_timesteps and EulerDiscrete add_noise / step,
 * the leading grid's sigmas from the schedule in double). The CLI: the same
 * latent through --init-image (the image's size by default), the PNG's
 * "Denoising strength", and its usage errors. */
static void test_img2img(void) {
    char model[1024], png[1024], out[1024], lat[1024];
    snprintf(model, sizeof model, "%s/tiny-sd15", ZL_TEST_DATA);
    snprintf(png, sizeof png, "%s", zt_tmp("i2i_start.png"));
    snprintf(out, sizeof out, "%s", zt_tmp("i2i.png"));
    snprintf(lat, sizeof lat, "%s", zt_tmp("i2i.safetensors"));
    /* a start image: a 64x48 gradient */
    zl_image im = {.w = 64, .h = 48, .c = 3};
    im.px = malloc((size_t)im.w * im.h * 3);
    for (int y = 0; y < im.h; y++)
        for (int x = 0; x < im.w; x++) {
            uint8_t *q = im.px + ((size_t)y * im.w + x) * 3;
            q[0] = (uint8_t)(x * 4);
            q[1] = (uint8_t)(y * 5);
            q[2] = (uint8_t)(255 - x * 2);
        }
    CHECK_OK(zl_png_write(png, &im, NULL, 0, NULL, 0));
    zl_pipeline *p = NULL;
    CHECK_OK(zl_pipeline_open(model, NULL, &p));
    if (!p) { zl_image_free(&im); return; }
    const int W = 64, H = 48, h = H / 8, w = W / 8, S = 4;
    const size_t n = 4 * (size_t)h * w;
    float *init = calloc(n, sizeof(float)), *got = calloc(n, sizeof(float));
    CHECK_OK(zl_pipeline_encode_image(p, &im, W, H, init));
    /* = the VAE's latent mean * scaling factor of the same (already fitting) image */
    {
        float *ref = calloc(n, sizeof(float));
        CHECK_OK(zl_vae_encode_image(zl_pipeline_vae(p), &im, ref));
        CHECK(!memcmp(ref, init, n * sizeof(float)));
        free(ref);
    }
    zl_cond c;
    CHECK_OK(zl_pipeline_encode(p, "watercolor painting of a cat", "blurry", &c));
    const float G = 6.0f;
    zl_gen_params g = {.width = W, .height = H, .steps = S, .cfg = G, .seed = 21, .init_latent = init, .strength = 0.5};
    CHECK_OK(zl_pipeline_sample(p, &c, &g, got));

    /* leading grid: t = 751, 501, 251, 1; strength 0.5 runs int(4 x 0.5) = 2 of them */
    double acp[1000];
    zt_sd_alphas_cumprod(acp, 0);
    const int ts[2] = {251, 1};
    double sig[3] = {sqrt((1 - acp[251]) / acp[251]), sqrt((1 - acp[1]) / acp[1]), 0};
    float *x = malloc(n * sizeof(float)), *in = malloc(2 * n * sizeof(float)), *o = malloc(2 * n * sizeof(float));
    zl_rng r;
    zl_rng_init(&r, 21, 0);
    zl_rng_normal(&r, 0, x, n);
    for (size_t i = 0; i < n; i++) x[i] = (float)(init[i] + x[i] * sig[0]);
    zl_unet *u = zl_pipeline_unet(p);
    float tt[2];
    zl_unet_input ui = {.B = 2, .H = h, .W = w, .T = 77, .sample = in, .timestep = tt, .context = c.embeds};
    for (int k = 0; k < 2; k++) {
        double cin = 1 / sqrt(sig[k] * sig[k] + 1);
        for (size_t i = 0; i < n; i++) in[i] = in[n + i] = (float)(x[i] * cin);
        tt[0] = tt[1] = (float)ts[k];
        CHECK_OK(zl_unet_forward(u, &ui, o));
        for (size_t i = 0; i < n; i++) {
            double e = o[i] + (double)G * (o[n + i] - o[i]);
            double x0 = x[i] - sig[k] * e;
            x[i] = (float)(x[i] + (x[i] - x0) / sig[k] * (sig[k + 1] - sig[k]));
        }
    }
    zt_close("img2img, strength 0.5 of 4 Euler steps", got, x, (int64_t)n, TOL);
    /* int(steps x strength) in double, as Python computes it: 100 x 0.57 = 56.99999999999999 -> 56 steps
     * (in float it would be 57), the same as 100 x 0.56 = 56.00000000000001 -> 56 */
    {
        zl_gen_params g3 = g;
        g3.steps = 100;
        g3.strength = 0.57;
        float *l3 = calloc(n, sizeof(float));
        CHECK_OK(zl_pipeline_sample(p, &c, &g3, l3));
        g3.strength = 0.56; /* the same steps, the same latent */
        float *l4 = calloc(n, sizeof(float));
        CHECK_OK(zl_pipeline_sample(p, &c, &g3, l4));
        CHECK(!memcmp(l3, l4, n * sizeof(float)));
        g3.strength = 0.57000001; /* int(57.000001) = 57: one step more, another latent */
        CHECK_OK(zl_pipeline_sample(p, &c, &g3, l4));
        CHECK(memcmp(l3, l4, n * sizeof(float)) != 0);
        g3.strength = 0.005;
        CHECK(zl_pipeline_sample(p, &c, &g3, got) == ZL_EINVAL && strstr(zl_errmsg(), "strength"));
        g3.strength = 1.5;
        CHECK(zl_pipeline_sample(p, &c, &g3, got) == ZL_EINVAL);
        free(l3);
        free(l4);
    }
    zl_cond_free(&c);
    zl_pipeline_free(p);

    /* the CLI: same latent (negative prompt, seed, size from the image) */
    int code = zt_cli("generate --model '%s' -p 'watercolor painting of a cat' -n blurry --cfg 6 --steps 4 --seed 21 "
                      "--init-image '%s' --strength 0.5 --save-latent '%s' -o '%s' -q",
                      model, png, lat, out);
    CHECKM(code == 0, "generate --init-image: exit %d: %s", code, zt_err);
    int64_t nl = 0;
    float *cl = code ? NULL : load_f32(lat, "latent", &nl);
    CHECK(cl && nl == (int64_t)n);
    if (cl && nl == (int64_t)n) zt_close("CLI img2img latent vs the library's", cl, got, nl, TOL);
    free(cl);
    char *pr = code ? NULL : png_parameters(out);
    CHECKM(pr && strstr(pr, "Size: 64x48,") && strstr(pr, "Denoising strength: 0.5,"), "img2img parameters: %s",
           pr ? pr : "(none)");
    free(pr);
    remove(out);
    static const char *const bad[][3] = {{"--strength 0.5", "--init-image", "2"},
                                         {"--init-image '%s' --strength 0", "--strength", "2"},
                                         {"--init-image '%s' --strength 0.1", "--strength", "2"},
                                         {"--init-image /nonexistent/start.png", "/nonexistent/start.png", "1"}};
    for (int i = 0; i < 4; i++) {
        char extra[1200];
        snprintf(extra, sizeof extra, bad[i][0], png);
        code = zt_cli("generate --model '%s' -p cat --steps 4 %s -o '%s'", model, extra, out);
        CHECKM(code == atoi(bad[i][2]) && strstr(zt_err, bad[i][1]) && !zl_file_exists(out), "%s: exit %d %s", extra,
               code, zt_err);
    }
    free(init);
    free(got);
    free(x);
    free(in);
    free(o);
    zl_image_free(&im);
}

/* A diffusers folder whose scheduler config names DPM-Solver++ with Karras sigmas:
 * generate runs that by default (as its diffusers pipeline would), --sampler wins. */
static void test_model_scheduler(void) {
    char d[1024], sub[1200], link[1300], tgt[1300], out[1024];
    snprintf(d, sizeof d, "%s/sd15_dpm", zt_tmpdir());
    snprintf(out, sizeof out, "%s", zt_tmp("sched.png"));
    CHECK(mkdir(d, 0755) == 0);
    static const char *const parts[4] = {"unet", "vae", "text_encoder", "model_index.json"};
    for (int i = 0; i < 4; i++) {
        snprintf(tgt, sizeof tgt, "%s/tiny-sd15/%s", ZL_TEST_DATA, parts[i]);
        snprintf(link, sizeof link, "%s/%s", d, parts[i]);
        CHECK(symlink(tgt, link) == 0);
    }
    snprintf(sub, sizeof sub, "%s/scheduler", d);
    CHECK(mkdir(sub, 0755) == 0);
    snprintf(link, sizeof link, "%s/scheduler_config.json", sub);
    const char *sj = "{\"_class_name\": \"DPMSolverMultistepScheduler\", \"use_karras_sigmas\": true, "
                     "\"algorithm_type\": \"dpmsolver++\", \"solver_order\": 2}";
    CHECK_OK(zl_write_file_atomic(link, sj, strlen(sj), NULL, 0));
    int code = zt_cli("generate --model '%s' -p cat --steps 2 -W 64 -H 64 --seed 1 -o '%s' -v", d, out);
    char *pr = code ? NULL : png_parameters(out);
    CHECKM(pr && strstr(pr, "Sampler: DPM++ 2M, Schedule type: Karras,") && strstr(zt_err, "the model's scheduler"),
           "the model's scheduler: exit %d %s %s", code, pr ? pr : "", zt_err);
    free(pr);
    code = zt_cli("generate --model '%s' -p cat --steps 2 -W 64 -H 64 --seed 1 --sampler euler -o '%s' -q", d, out);
    pr = code ? NULL : png_parameters(out);
    CHECKM(pr && strstr(pr, "Sampler: Euler, CFG"), "--sampler wins: %s", pr ? pr : zt_err);
    free(pr);
}

/* LCM through the CLI: 4 steps without guidance, "Sampler: LCM" in the PNG, and
 * --from-png reproduces the latent bytes; more than 50 steps or Karras sigmas are usage errors.
 * (Its step formula is checked in test_sched.) */
static void test_lcm_cli(void) {
    char d[1024], p1[1024], p2[1024], l1[1024], l2[1024];
    snprintf(d, sizeof d, "%s/tiny-sd15", ZL_TEST_DATA);
    snprintf(p1, sizeof p1, "%s", zt_tmp("lcm1.png"));
    snprintf(p2, sizeof p2, "%s", zt_tmp("lcm2.png"));
    snprintf(l1, sizeof l1, "%s", zt_tmp("lcm1.safetensors"));
    snprintf(l2, sizeof l2, "%s", zt_tmp("lcm2.safetensors"));
    int code = zt_cli("generate --model '%s' -p 'a cat' --sampler lcm --steps 4 --cfg 1 --seed 5 -W 64 -H 64 "
                      "--save-latent '%s' -o '%s' -q", d, l1, p1);
    char *t = code ? NULL : png_parameters(p1);
    CHECKM(t && strstr(t, "Steps: 4, Sampler: LCM, CFG scale: 1,"), "LCM image: %s %s", t ? t : "", zt_err);
    free(t);
    code = zt_cli("generate --model '%s' --from-png '%s' --save-latent '%s' -o '%s' -q", d, p1, l2, p2);
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    if (!code && !zl_read_file(l1, &a, &na) && !zl_read_file(l2, &b, &nb))
        CHECKM(na == nb && !memcmp(a, b, na), "LCM --from-png: the same latent bytes");
    else
        CHECKM(0, "LCM --from-png: %s", zt_err);
    free(a);
    free(b);
    code = zt_cli("generate --model '%s' -p x --sampler lcm --steps 51 -o '%s'", d, p2);
    CHECKM(code == 2 && strstr(zt_err, "at most 50 steps"), "LCM 51 steps: exit %d %s", code, zt_err);
    code = zt_cli("generate --model '%s' -p x --sampler lcm_karras -o '%s'", d, p2);
    CHECKM(code == 2 && strstr(zt_err, "LCM has no Karras schedule"), "lcm_karras: exit %d %s", code, zt_err);
}

/* --from-png: an image's parameters text reproduces it (the same latent bytes and
 * the same parameters text) given the same LoRA; flags win over it; a PNG without
 * parameters is refused naming it. */
static void test_from_png(void) {
    char d[1024], lora[1200], p1[1024], p2[1024], l1[1024], l2[1024];
    snprintf(d, sizeof d, "%s/tiny-sd15", ZL_TEST_DATA);
    snprintf(lora, sizeof lora, "%s/loras/content.kohya.safetensors", d);
    snprintf(p1, sizeof p1, "%s", zt_tmp("fp1.png"));
    snprintf(p2, sizeof p2, "%s", zt_tmp("fp2.png"));
    snprintf(l1, sizeof l1, "%s", zt_tmp("fp1.safetensors"));
    snprintf(l2, sizeof l2, "%s", zt_tmp("fp2.safetensors"));
    int code = zt_cli("generate --model '%s' -p 'a cat, \"quoted\": yes' -n 'blurry, dark' --steps 3 --sampler dpmpp_2m_karras "
                      "--cfg 4 --seed 7 -W 64 -H 48 --clip-skip 2 --cfg-rescale 0.5 --long-prompt --lora '%s:0.5' "
                      "--save-latent '%s' -o '%s' -q",
                      d, lora, l1, p1);
    CHECKM(code == 0, "first image: %s", zt_err);
    code = zt_cli("generate --model '%s' --from-png '%s' --lora '%s:0.5' --save-latent '%s' -o '%s' -q", d, p1, lora, l2, p2);
    CHECKM(code == 0, "--from-png: %s", zt_err);
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    if (!code) {
        CHECK_OK(zl_read_file(l1, &a, &na));
        CHECK_OK(zl_read_file(l2, &b, &nb));
        CHECKM(a && b && na == nb && !memcmp(a, b, na), "the same latent bytes");
        char *t1 = png_parameters(p1), *t2 = png_parameters(p2);
        CHECKM(t1 && t2 && !strcmp(t1, t2), "the same parameters:\n%s\n%s", t1 ? t1 : "", t2 ? t2 : "");
        free(t1);
        free(t2);
    }
    free(a);
    free(b);
    /* a flag wins; without the LoRA the warning names the image's LoRAs */
    code = zt_cli("generate --model '%s' --from-png '%s' --seed 8 -o '%s'", d, p1, p2);
    char *t = code ? NULL : png_parameters(p2);
    CHECKM(t && strstr(t, "Seed: 8,") && strstr(t, "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4,") &&
               strstr(zt_err, "content.kohya: 0.5") && strstr(zt_err, "--lora"),
           "--from-png --seed 8: %s | %s", t ? t : "", zt_err);
    free(t);
    /* refusals: a PNG without parameters (exit 1), the source as the output (2) */
    char bare[1024];
    snprintf(bare, sizeof bare, "%s", zt_tmp("bare.png"));
    zl_image im = {.w = 8, .h = 8, .c = 3};
    im.px = calloc(8 * 8 * 3, 1);
    CHECK_OK(zl_png_write(bare, &im, NULL, 0, NULL, 0));
    zl_image_free(&im);
    /* an A1111 image: its sampler name, "Lora hashes" (no weights: those are <lora:> tags in its prompt) */
    {
        char a1[1024];
        snprintf(a1, sizeof a1, "%s", zt_tmp("a1111.png"));
        zl_image ai = {.w = 8, .h = 8, .c = 3};
        ai.px = calloc(8 * 8 * 3, 1);
        zl_png_text tx = {.key = "parameters",
                          .value = "a dog <lora:style_x:0.7>\nNegative prompt: lowres\nSteps: 2, Sampler: Euler a, "
                                   "CFG scale: 6, Seed: 99, Size: 64x64, Model hash: abc, Model: ponyXL, "
                                   "Lora hashes: \"style_x: 1234abcd\", Version: v1.10.1"};
        CHECK_OK(zl_png_write(a1, &ai, &tx, 1, NULL, 0));
        zl_image_free(&ai);
        code = zt_cli("generate --model '%s' --from-png '%s' -o '%s'", d, a1, p2);
        t = code ? NULL : png_parameters(p2);
        CHECKM(t && strstr(t, "a dog <lora:style_x:0.7>\nNegative prompt: lowres\nSteps: 2, Sampler: Euler a, CFG scale: 6, "
                              "Seed: 99, Size: 64x64,") &&
                   strstr(zt_err, "made with the LoRAs style_x: 1234abcd") && strstr(zt_err, "ponyXL"),
               "A1111 image: exit %d %s | %s", code, t ? t : "", zt_err);
        /* and its prompts are encoded A1111's way: chunks, emphasis, the LoRA tag removed */
        CHECKM(t && strstr(t, "Prompt chunks: 1") && strstr(zt_err, "removed from the prompt (as A1111 does)"),
               "A1111 image: A1111's prompt handling: %s | %s", t ? t : "", zt_err);
        free(t);
    }
    code = zt_cli("generate --model '%s' --from-png '%s' -o '%s'", d, bare, p2);
    CHECKM(code == 1 && strstr(zt_err, bare) && strstr(zt_err, "parameters"), "bare PNG: exit %d %s", code, zt_err);
    code = zt_cli("generate --model '%s' --from-png '%s' -o '%s'", d, p1, p1);
    CHECKM(code == 2 && strstr(zt_err, "input"), "-o the source PNG: exit %d %s", code, zt_err);
}

/* Each bad input: exit code, the culprit named, no output. */
static void expect_fail(int code, int want, const char *needle, const char *out, const char *what) {
    CHECKM(code == want, "%s: exit %d, expected %d: %s", what, code, want, zt_err);
    CHECKM(strstr(zt_err, needle) != NULL, "%s: message does not name '%s': %s", what, needle, zt_err);
    CHECKM(!zl_file_exists(out), "%s: an output file was left", what);
}

static void test_bad_inputs(void) {
    char d[1024], out[1024], pf[1024];
    snprintf(d, sizeof d, "%s/mini-sdxl", ZL_TEST_DATA);
    snprintf(out, sizeof out, "%s", zt_tmp("bad.png"));
    const char *gen = "generate -q --steps 1 -W 64 -H 64";
    int code = zt_cli("%s --model '%s/no-such-model' -p cat -o '%s'", gen, ZL_TEST_DATA, out);
    expect_fail(code, 1, "no-such-model", out, "missing model");
    code = zt_cli("%s --model '%s' -p cat --lora '%s/tiny-sd15/loras/style.kohya.safetensors' -o '%s'", gen, d,
                  ZL_TEST_DATA, out);
    expect_fail(code, 1, "style.kohya.safetensors", out, "LoRA for the other family");
    code = zt_cli("generate -q --steps 1 --model '%s' -p cat -W 60 -H 64 -o '%s'", d, out);
    expect_fail(code, 2, "multiple of 8", out, "width not a multiple of 8");
    code = zt_cli("generate -q --steps 1 --model '%s' -p cat -W 64 -H 100 -o '%s'", d, out);
    expect_fail(code, 2, "-H 100 is not a multiple of 8", out, "height not a multiple of 8");
    /* 72 px = 9 latent cells, odd: the UNet resizes its levels as diffusers does */
    code = zt_cli("generate -q --steps 1 --model '%s' -p cat -W 72 -H 64 -o '%s'", d, out);
    CHECKM(code == 0 && zl_file_exists(out), "72x64 (odd latent side) runs: exit %d: %s", code, zt_err);
    remove(out);
    snprintf(pf, sizeof pf, "%s", zt_tmp("prompt.txt"));
    FILE *f = fopen(pf, "wb");
    fputs("a cat \xc3\xa9t\xe9 here", f); /* valid e-acute at 6, then a lone 0xE9 at byte 9 */
    fclose(f);
    code = zt_cli("%s --model '%s' --prompt-file '%s' -o '%s'", gen, d, pf, out);
    expect_fail(code, 1, "prompt.txt", out, "prompt file not UTF-8");
    CHECKM(strstr(zt_err, "byte 9") != NULL, "says where: %s", zt_err);
    code = zt_cli("generate -q --steps 0 --model '%s' -p cat -o '%s'", d, out);
    expect_fail(code, 2, "--steps", out, "steps 0");
    code = zt_cli("%s --model '%s' -p cat --sampler heun -o '%s'", gen, d, out);
    expect_fail(code, 2, "heun", out, "unknown sampler");
    code = zt_cli("%s --model '%s' -p cat --sampler euler_a_karras -o '%s'", gen, d, out);
    expect_fail(code, 2, "no Karras schedule", out, "Euler a with Karras sigmas");
    code = zt_cli("%s --model '%s' -p cat --initial-noise '%s/pipeline_io.safetensors:case9.initial_noise' -o '%s'", gen, d,
                  d, out);
    expect_fail(code, 1, "case9.initial_noise", out, "missing noise tensor");
    code = zt_cli("generate -q --steps 1 --model '%s' -p cat -W 64 -H 64 --initial-noise '%s/pipeline_io.safetensors:case1.initial_noise' -o '%s'",
                  d, d, out);
    expect_fail(code, 1, "case1.initial_noise", out, "noise of another size");
    code = zt_cli("%s --model '%s' -o '%s'", gen, d, out);
    expect_fail(code, 2, "prompt", out, "no prompt");
    code = zt_cli("%s --model '%s' -p cat --clip-skip 0 -o '%s'", gen, d, out);
    expect_fail(code, 2, "--clip-skip", out, "clip skip 0");
    code = zt_cli("%s --model '%s' -p cat --clip-skip 40 -o '%s'", gen, d, out);
    expect_fail(code, 2, "clip skip 40", out, "clip skip past the encoder's layers");
    /* clip skip 2 on SD 1.x: recorded as A1111 does, and a different conditioning */
    {
        char sd[1024], o1[1024], o2[1024];
        snprintf(sd, sizeof sd, "%s/tiny-sd15", ZL_TEST_DATA);
        snprintf(o1, sizeof o1, "%s", zt_tmp("skip1.png"));
        snprintf(o2, sizeof o2, "%s", zt_tmp("skip2.png"));
        code = zt_cli("%s --seed 5 --model '%s' -p 'a (red) cat' -o '%s'", gen, sd, o1);
        CHECKM(code == 0 && !strstr(zt_err, "emphasis"), "plain parentheses: no warning: %s", zt_err);
        code = zt_cli("generate --steps 1 -W 64 -H 64 --seed 5 --model '%s' -p 'a (red cat:1.3)' -n '(blurry: 0.5)' -o '%s'",
                      sd, o1);
        CHECKM(code == 0 && strstr(zt_err, "prompt: '(red cat:1.3)' is A1111/ComfyUI emphasis") &&
                   strstr(zt_err, "negative prompt: '(blurry: 0.5)'"),
               "emphasis syntax warned about: %s", zt_err);
        code = zt_cli("%s --seed 5 --model '%s' -p 'a cat <lora:watercolor_v2:0.8>' -o '%s'", gen, sd, o1);
        CHECKM(code == 0 && strstr(zt_err, "'<lora:watercolor_v2:0.8>' is an A1111 LoRA tag") && strstr(zt_err, "--lora"),
               "A1111 LoRA tag warned about: %s", zt_err);
        code = zt_cli("%s --seed 5 --model '%s' -p 'a cat <3' -o '%s'", gen, sd, o1);
        CHECKM(code == 0 && !strstr(zt_err, "LoRA tag"), "no tag, no warning: %s", zt_err);
        code = zt_cli("%s --seed 5 --model '%s' -p cat -o '%s'", gen, sd, o1);
        CHECKM(code == 0, "clip skip 1: %s", zt_err);
        code = zt_cli("%s --seed 5 --model '%s' -p cat --clip-skip 2 -o '%s'", gen, sd, o2);
        CHECKM(code == 0, "clip skip 2: %s", zt_err);
        char *p1 = png_parameters(o1), *p2 = png_parameters(o2);
        CHECKM(p1 && p2 && !strstr(p1, "Clip skip") && strstr(p2, ", Clip skip: 2,"), "parameters: %s | %s",
               p1 ? p1 : "-", p2 ? p2 : "-");
        zl_image a = {0}, b = {0};
        if (zl_image_read(o1, &a) == ZL_OK && zl_image_read(o2, &b) == ZL_OK)
            CHECK(a.w == b.w && a.h == b.h && memcmp(a.px, b.px, (size_t)a.w * a.h * a.c) != 0);
        zl_image_free(&a);
        zl_image_free(&b);
        free(p1);
        free(p2);
    }
    code = zt_cli("%s --model '%s' -p cat --vae '%s/no-such-vae.safetensors' -o '%s'", gen, d, d, out);
    expect_fail(code, 1, "no-such-vae.safetensors", out, "missing VAE");
    code = zt_cli("%s --model '%s' -p cat --vae '%s/unet' -o '%s'", gen, d, d, out);
    expect_fail(code, 1, "no VAE in this file", out, "a UNet given as the VAE");
    /* the output may not replace an input: the prompt file stays as it was */
    f = fopen(pf, "wb");
    fputs("a cat", f);
    fclose(f);
    code = zt_cli("%s --model '%s' --prompt-file '%s' -o '%s'", gen, d, pf, pf);
    CHECKM(code != 0, "output over an input: exit %d", code);
    char *s = NULL;
    size_t len = 0;
    CHECK(zl_read_file(pf, &s, &len) == ZL_OK && len == 5 && !memcmp(s, "a cat", 5));
    free(s);
    /* outputs are checked before any compute: two outputs with one name, a missing
     * folder; a batch whose second image cannot be written leaves no first image */
    char lat[1024], out1[1024], dir1[1024];
    snprintf(lat, sizeof lat, "%s", zt_tmp("bad.safetensors"));
    code = zt_cli("%s --model '%s' -p cat --save-latent '%s' -o '%s'", gen, d, out, out);
    expect_fail(code, 2, "bad.png", out, "--save-latent = -o");
    code = zt_cli("%s --model '%s' -p cat --save-latent '%s' -o '%s/no-such-dir/x.png'", gen, d, lat, zt_tmpdir());
    expect_fail(code, 1, "no-such-dir", lat, "output in a missing folder");
    snprintf(out1, sizeof out1, "%s", zt_tmp("bad-1.png"));
    CHECK(mkdir(out1, 0755) == 0);
    code = zt_cli("%s --model '%s' -p cat --batch 2 --save-latent '%s' -o '%s'", gen, d, lat, out);
    expect_fail(code, 2, "bad-1.png", out, "batch image 2 is a folder");
    CHECKM(!zl_file_exists(lat), "the latent of a failed batch was left");
    rmdir(out1);
    snprintf(dir1, sizeof dir1, "%s", zt_tmp("folder"));
    CHECK(mkdir(dir1, 0755) == 0);
    code = zt_cli("%s --model '%s' --prompt-file '%s' -o '%s'", gen, d, dir1, out);
    expect_fail(code, 1, "is a folder", out, "prompt file is a folder");
    rmdir(dir1);
    /* numbers out of range: the seed past 64 bits, a guidance scale past float */
    code = zt_cli("%s --model '%s' -p cat --seed 18446744073709551616 -o '%s'", gen, d, out);
    expect_fail(code, 2, "--seed", out, "seed past 64 bits");
    code = zt_cli("%s --model '%s' -p cat --cfg 1e300 -o '%s'", gen, d, out);
    expect_fail(code, 2, "--cfg", out, "cfg past float");
}

int main(void) {
    zl_set_threads(1);
    test_cases();
    test_sdxl_explicit_empty_negative();
    test_library("mini-sdxl");
    test_library("tiny-sd15");
    test_vpred("tiny-sd15");
    test_vpred("mini-sdxl");
    test_long_prompt("tiny-sd15");
    test_long_prompt("mini-sdxl");
    test_user_run();
    test_vpred_cli();
    test_model_scheduler();
    test_from_png();
    test_lcm_cli();
    test_img2img();
    test_bad_inputs();
    return zt_done();
}
