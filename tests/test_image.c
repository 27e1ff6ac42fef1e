/* Image files: PNG round trip with tEXt/iTXt chunks, JPEG decoding of a file
 * made by libjpeg-turbo's cjpeg from a known pattern, resize/crop on patterns
 * whose answer is known in closed form, tensor conversions, and errors that
 * name the file. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testlib.h"
#include "ziplora/image.h"

static void test_png_round_trip(void) {
    zl_image im;
    CHECK_OK(zl_image_alloc(&im, 37, 21, 3));
    for (int y = 0; y < im.h; y++)
        for (int x = 0; x < im.w; x++)
            for (int k = 0; k < 3; k++) im.px[(y * im.w + x) * 3 + k] = (uint8_t)((x * 7 + y * 13 + k * 101) & 255);
    const char *params = "a photo of a cat\nNegative prompt: blurry\nSteps: 30, Sampler: Euler, CFG scale: 5, Seed: 42, "
                         "Size: 1024x1024";
    zl_png_text txt[2] = {{(char *)"parameters", (char *)params}, {(char *)"Comment", (char *)"caf\xc3\xa9 \xe2\x9c\x93"}};
    const char *path = zt_tmp("rt.png");
    CHECK_OK(zl_png_write(path, &im, txt, 2, NULL, 0));
    zl_image back;
    CHECK_OK(zl_image_read(path, &back));
    CHECK(back.w == 37 && back.h == 21 && back.c == 3);
    CHECK(back.px && !memcmp(back.px, im.px, (size_t)37 * 21 * 3));
    zl_png_text *t = NULL;
    int n = 0;
    CHECK_OK(zl_png_read_text(path, &t, &n));
    CHECK(n == 2);
    if (n == 2) {
        CHECK(!strcmp(t[0].key, "parameters") && !strcmp(t[0].value, params));
        CHECK(!strcmp(t[1].key, "Comment") && !strcmp(t[1].value, "caf\xc3\xa9 \xe2\x9c\x93"));
    }
    zl_png_text_free(t, n);
    /* the ASCII value went into a tEXt chunk, the UTF-8 one into iTXt */
    char *raw;
    size_t len;
    CHECK_OK(zl_read_file(path, &raw, &len));
    CHECK(len > 8 && !memcmp(raw, "\x89PNG\r\n\x1a\n", 8));
    int has_text = 0, has_itxt = 0;
    for (size_t i = 0; i + 14 < len; i++) {
        if (!memcmp(raw + i, "tEXtparameters", 14)) has_text = 1;
        if (!memcmp(raw + i, "iTXtComment", 11)) has_itxt = 1;
    }
    CHECK(has_text && has_itxt);
    free(raw);
    /* refusing to overwrite an input leaves it untouched */
    const char *inputs[] = {path};
    CHECK(zl_png_write(path, &im, NULL, 0, inputs, 1) != ZL_OK);
    zl_image_free(&back);
    CHECK_OK(zl_image_read(path, &back));
    CHECK(back.px && !memcmp(back.px, im.px, (size_t)37 * 21 * 3));
    zl_image_free(&back);
    /* bad keyword: an error and no file */
    zl_png_text bad = {(char *)"", (char *)"x"};
    const char *p2 = zt_tmp("bad.png");
    CHECK(zl_png_write(p2, &im, &bad, 1, NULL, 0) == ZL_EINVAL);
    struct stat st;
    CHECK(stat(p2, &st) != 0);
    zl_image_free(&im);
}

static void test_jpeg(void) {
    zl_image im;
    CHECK_OK(zl_image_read(zt_data("images/pattern16.jpg"), &im));
    CHECK(im.w == 16 && im.h == 16 && im.c == 3);
    if (im.px) {
        int maxd = 0;
        for (int y = 0; y < 16; y++)
            for (int x = 0; x < 16; x++) {
                const int want[2][3] = {{200, 40, 40}, {30, 60, 220}};
                for (int k = 0; k < 3; k++) {
                    int d = abs((int)im.px[(y * 16 + x) * 3 + k] - want[x >= 8][k]);
                    if (d > maxd) maxd = d;
                }
            }
        CHECKM(maxd <= 4, "jpeg pattern max deviation %d", maxd);
    }
    zl_image_free(&im);
}

static void test_bad_files(void) {
    zl_image im;
    const char *p = zt_tmp("garbage.png");
    CHECK_OK(zl_write_file_atomic(p, "not an image at all", 19, NULL, 0));
    CHECK(zl_image_read(p, &im) == ZL_EFORMAT);
    CHECK(strstr(zl_errmsg(), "garbage.png") != NULL);
    CHECK(im.px == NULL);
    /* a PNG cut in half */
    zl_image src;
    CHECK_OK(zl_image_alloc(&src, 64, 64, 3));
    for (int i = 0; i < 64 * 64 * 3; i++) src.px[i] = (uint8_t)(i * 31);
    void *png;
    size_t len;
    CHECK_OK(zl_png_encode(&src, NULL, 0, &png, &len));
    const char *pt = zt_tmp("truncated.png");
    CHECK_OK(zl_write_file_atomic(pt, png, len / 2, NULL, 0));
    CHECK(zl_image_read(pt, &im) == ZL_EFORMAT);
    CHECK(strstr(zl_errmsg(), "truncated.png") != NULL);
    zl_png_text *t;
    int n;
    CHECK(zl_png_read_text(pt, &t, &n) != ZL_OK);
    CHECK(strstr(zl_errmsg(), "truncated.png") != NULL);
    free(png);
    zl_image_free(&src);
    CHECK(zl_image_read(zt_tmp("missing.jpg"), &im) != ZL_OK);
    CHECK(strstr(zl_errmsg(), "missing.jpg") != NULL);
    /* formats stb_image does not read are named (first bytes of real files) */
    const struct {
        const char *bytes;
        size_t n;
        const char *name;
    } other[] = {
        {"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00", 20, "WebP"},
        {"\x00\x00\x00\x1c" "ftypavif\x00\x00\x00\x00", 16, "AVIF"},
        {"\x00\x00\x00\x18" "ftypheic\x00\x00\x00\x00", 16, "HEIF"},
        {"II*\x00\x08\x00\x00\x00", 8, "TIFF"},
    };
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
        CHECK(zl_image_read_mem(other[i].bytes, other[i].n, "photo", &im) == ZL_EUNSUPPORTED);
        CHECKM(strstr(zl_errmsg(), other[i].name) && strstr(zl_errmsg(), "photo"), "%s", zl_errmsg());
    }
}

static void fill(zl_image *im, int (*f)(int x, int y, int k)) {
    for (int y = 0; y < im->h; y++)
        for (int x = 0; x < im->w; x++)
            for (int k = 0; k < 3; k++) im->px[(y * im->w + x) * 3 + k] = (uint8_t)f(x, y, k);
}
static int pat_blocks(int x, int y, int k) { return ((x / 2) * 40 + (y / 2) * 10 + k * 3) & 255; }
static int pat_xramp(int x, int y, int k) { (void)y; (void)k; return 10 + 20 * x; }
static int pat_checker(int x, int y, int k) { (void)k; return ((x + y) & 1) ? 200 : 100; }
static int pat_index(int x, int y, int k) { return (x * 16 + y * 3 + k) & 255; }

static void test_resize_crop(void) {
    zl_image a, b;
    /* area 2x shrink of 2x2-constant blocks returns the blocks exactly */
    CHECK_OK(zl_image_alloc(&a, 8, 6, 3));
    fill(&a, pat_blocks);
    CHECK_OK(zl_image_resize(&a, 4, 3, ZL_RESIZE_AREA, &b));
    int ok = 1;
    for (int y = 0; y < 3; y++)
        for (int x = 0; x < 4; x++)
            for (int k = 0; k < 3; k++) ok &= b.px[(y * 4 + x) * 3 + k] == (uint8_t)pat_blocks(2 * x, 2 * y, k);
    CHECK(ok);
    zl_image_free(&b);
    zl_image_free(&a);
    /* area shrink of a checkerboard of 100/200 by 2 gives the mean 150; by 3 in x (fractional
     * coverage 1.5 pixels each) too */
    CHECK_OK(zl_image_alloc(&a, 12, 12, 3));
    fill(&a, pat_checker);
    CHECK_OK(zl_image_resize(&a, 6, 6, ZL_RESIZE_AREA, &b));
    ok = 1;
    for (int i = 0; i < 6 * 6 * 3; i++) ok &= b.px[i] == 150;
    CHECK(ok);
    zl_image_free(&b);
    /* 12 -> 8 columns: each output covers 1.5 input pixels; rows 12 -> 6 average pairs (=150 per column
     * pair), so every output is 150 again */
    CHECK_OK(zl_image_resize(&a, 8, 6, ZL_RESIZE_AREA, &b));
    ok = 1;
    for (int i = 0; i < 8 * 6 * 3; i++) ok &= b.px[i] == 150;
    CHECK(ok);
    zl_image_free(&b);
    zl_image_free(&a);
    /* area shrink 3 -> 2 of a ramp 10,30,50: outputs cover [0,1.5) and [1.5,3):
     * (10 + 0.5*30)/1.5 = 16.67 -> 17 and (0.5*30 + 50)/1.5 = 43.33 -> 43 */
    CHECK_OK(zl_image_alloc(&a, 3, 1, 3));
    fill(&a, pat_xramp);
    CHECK_OK(zl_image_resize(&a, 2, 1, ZL_RESIZE_AREA, &b));
    CHECK(b.px[0] == 17 && b.px[3] == 43);
    zl_image_free(&b);
    zl_image_free(&a);
    /* bilinear 2x enlargement of a ramp 10,30,50,70 (pixel centres): output x samples
     * src = (x + 0.5)/2 - 0.5 -> -0.25 (clamped to 0), 0.25, 0.75, 1.25, ... */
    CHECK_OK(zl_image_alloc(&a, 4, 2, 3));
    fill(&a, pat_xramp);
    CHECK_OK(zl_image_resize(&a, 8, 4, ZL_RESIZE_BILINEAR, &b));
    const int want[8] = {10, 15, 25, 35, 45, 55, 65, 70};
    ok = 1;
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 8; x++)
            for (int k = 0; k < 3; k++) ok &= b.px[(y * 8 + x) * 3 + k] == want[x];
    CHECK(ok);
    zl_image_free(&b);
    /* same size is a copy, for both filters */
    CHECK_OK(zl_image_resize(&a, 4, 2, ZL_RESIZE_BILINEAR, &b));
    CHECK(!memcmp(a.px, b.px, 4 * 2 * 3));
    zl_image_free(&b);
    zl_image_free(&a);
    /* crops */
    CHECK_OK(zl_image_alloc(&a, 10, 7, 3));
    fill(&a, pat_index);
    CHECK_OK(zl_image_center_crop(&a, 4, 3, &b));
    ok = b.w == 4 && b.h == 3;
    for (int y = 0; y < 3 && ok; y++)
        for (int x = 0; x < 4; x++)
            for (int k = 0; k < 3; k++) ok &= b.px[(y * 4 + x) * 3 + k] == (uint8_t)pat_index(x + 3, y + 2, k);
    CHECK(ok);
    zl_image_free(&b);
    CHECK(zl_image_crop(&a, 8, 0, 4, 3, &b) == ZL_EINVAL);
    CHECK(b.px == NULL);
    CHECK(zl_image_resize(&a, 0, 5, ZL_RESIZE_AREA, &b) == ZL_EINVAL);
    zl_image_free(&a);
    /* fit: a 40x20 image to 10x10 scales by 1/2 (to 20x10) and keeps the middle 10 columns */
    CHECK_OK(zl_image_alloc(&a, 40, 20, 3));
    fill(&a, pat_blocks);
    zl_image half, mid;
    CHECK_OK(zl_image_fit(&a, 10, 10, ZL_RESIZE_AREA, &b));
    CHECK_OK(zl_image_resize(&a, 20, 10, ZL_RESIZE_AREA, &half));
    CHECK_OK(zl_image_crop(&half, 5, 0, 10, 10, &mid));
    CHECK(b.w == 10 && b.h == 10 && !memcmp(b.px, mid.px, 10 * 10 * 3));
    zl_image_free(&a); zl_image_free(&b); zl_image_free(&half); zl_image_free(&mid);
}

static void test_tensor_conversions(void) {
    zl_image a, b;
    CHECK_OK(zl_image_alloc(&a, 16, 16, 3));
    for (int i = 0; i < 16 * 16 * 3; i++) a.px[i] = (uint8_t)i;
    float *t = malloc(sizeof(float) * 3 * 16 * 16);
    zl_image_to_tensor(&a, t);
    /* channel-first layout and 2 p / 255 - 1 */
    CHECK(t[0] == -1.0f);
    CHECK(fabsf(t[1 * 256 + 5] - (2.0f * ((5 * 3 + 1) / 255.0f) - 1.0f)) < 1e-7f);
    CHECK_OK(zl_image_from_tensor(t, 16, 16, &b));
    CHECK(!memcmp(a.px, b.px, 16 * 16 * 3)); /* exact round trip for every byte value */
    zl_image_free(&b);
    /* clamping (NaN -> 0) and rounding: x = 0 maps to 127.5, which numpy rounds to 128 */
    float v[3] = {-3.0f, 5.0f, NAN};
    float vals[3 * 1 * 4];
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < 3; i++) vals[k * 4 + i] = v[i];
        vals[k * 4 + 3] = 0.0f;
    }
    CHECK_OK(zl_image_from_tensor(vals, 1, 4, &b));
    CHECK(b.px[0] == 0 && b.px[3] == 255 && b.px[6] == 0 && b.px[9] == 128);
    zl_image_free(&b);
    /* grid: 3 images in 2 columns -> 2x2 tiles, the last one black */
    zl_image ims[3];
    for (int i = 0; i < 3; i++) {
        CHECK_OK(zl_image_alloc(&ims[i], 2, 2, 3));
        memset(ims[i].px, 50 * (i + 1), 12);
    }
    CHECK_OK(zl_image_grid(ims, 3, 2, &b));
    CHECK(b.w == 4 && b.h == 4);
    CHECK(b.px[0] == 50 && b.px[(0 * 4 + 2) * 3] == 100 && b.px[(2 * 4 + 0) * 3] == 150 && b.px[(3 * 4 + 3) * 3] == 0);
    zl_image_free(&b);
    for (int i = 0; i < 3; i++) zl_image_free(&ims[i]);
    free(t);
    zl_image_free(&a);
}

/* Column captions: the band's size, the picture below untouched, and the
 * glyphs of 'I' and 'L' (the usual 5x7 shapes, written out here) at the
 * expected place and scale. */
static void test_captions(void) {
    zl_image im = {0}, out = {0}, low = {0}, odd = {0};
    CHECK_OK(zl_image_alloc(&im, 200, 50, 3));
    memset(im.px, 77, (size_t)200 * 50 * 3);
    const char *caps[2] = {"IL", ""};
    CHECK_OK(zl_image_caption_columns(&im, 2, caps, &out));
    /* column 100 px, longest caption 2 characters of 6 cells: scale min(4, 96 / 12) = 4, band 11 x 4 */
    const int s = 4, band = 44;
    CHECK(out.w == 200 && out.h == 50 + band && out.c == 3);
    if (out.h == 50 + band) {
        CHECK(!memcmp(out.px + (size_t)band * 200 * 3, im.px, (size_t)200 * 50 * 3));
        static const char *const I[7] = {"01110", "00100", "00100", "00100", "00100", "00100", "01110"};
        static const char *const L[7] = {"10000", "10000", "10000", "10000", "10000", "10000", "11111"};
        int x0 = (100 - 11 * s) / 2, y0 = 2 * s, bad = 0, lit = 0;
        for (int y = 0; y < band; y++)
            for (int x = 0; x < 200; x++) {
                int want = 0, gx = (x - x0) / s, gy = (y - y0) / s;
                if (x >= x0 && y >= y0 && gy < 7 && gx < 11 && gx != 5) {
                    const char *const *g = gx < 5 ? I : L;
                    want = g[gy][gx < 5 ? gx : gx - 6] == '1';
                }
                const uint8_t *p = out.px + ((size_t)y * 200 + x) * 3;
                bad += p[0] != (want ? 255 : 0) || p[1] != p[0] || p[2] != p[0];
                lit += want;
            }
        CHECKM(bad == 0 && lit == (11 + 11) * s * s, "caption pixels: %d wrong, %d lit", bad, lit);
    }
    /* lowercase draws as capitals; an unknown character as '?' */
    const char *lc[2] = {"il", ""}, *q1[2] = {"#", ""}, *q2[2] = {"?", ""};
    CHECK_OK(zl_image_caption_columns(&im, 2, lc, &low));
    CHECK(low.px && out.px && !memcmp(low.px, out.px, (size_t)out.w * out.h * 3));
    zl_image_free(&low);
    CHECK_OK(zl_image_caption_columns(&im, 2, q1, &low));
    CHECK_OK(zl_image_caption_columns(&im, 2, q2, &odd));
    CHECK(low.px && odd.px && low.h == odd.h && !memcmp(low.px, odd.px, (size_t)odd.w * odd.h * 3));
    zl_image_free(&low);
    zl_image_free(&odd);
    /* a caption longer than its column is cut, never drawn outside it */
    const char *longc[2] = {"", "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"};
    CHECK_OK(zl_image_caption_columns(&im, 2, longc, &low));
    int outside = 0;
    for (int y = 0; low.px && y < low.h - 50; y++)
        for (int x = 0; x < 100; x++) outside += low.px[((size_t)y * 200 + x) * 3] != 0;
    CHECK(low.px && outside == 0);
    zl_image_free(&low);
    zl_image_free(&out);
    zl_image_free(&im);
}

/* The parameters-text reader (generate --from-png) on A1111's form, written out by hand. */
static void test_params_text(void) {
    const char *text = "a \"quoted\" photo, sks dog\nsecond line\nNegative prompt: blurry,\nlow quality\n"
                       "Steps: 30, Sampler: DPM++ 2M, CFG scale: 7, Size: 1024x1024, "
                       "Lora hashes: \"dog: 0123, style: 4567\", Prompt: \"a, b\\\"c\\nd\", Version: v1.10.1\n";
    zl_png_params p;
    CHECK_OK(zl_png_params_parse(text, "x.png", &p));
    CHECK(p.prompt && !strcmp(p.prompt, "a \"quoted\" photo, sks dog\nsecond line"));
    CHECK(p.negative && !strcmp(p.negative, "blurry,\nlow quality"));
    CHECK(p.n == 7);
    const char *want[7][2] = {{"Steps", "30"},           {"Sampler", "DPM++ 2M"},
                              {"CFG scale", "7"},        {"Size", "1024x1024"},
                              {"Lora hashes", "dog: 0123, style: 4567"}, {"Prompt", "a, b\"c\nd"},
                              {"Version", "v1.10.1"}};
    for (int i = 0; i < 7 && i < p.n; i++)
        CHECKM(!strcmp(p.key[i], want[i][0]) && !strcmp(p.val[i], want[i][1]), "setting %d: '%s' = '%s'", i, p.key[i],
               p.val[i]);
    CHECK(zl_png_params_get(&p, "CFG scale") && !strcmp(zl_png_params_get(&p, "CFG scale"), "7"));
    CHECK(zl_png_params_get(&p, "Seed") == NULL);
    zl_png_params_free(&p);
    /* no negative; a settings line alone */
    CHECK_OK(zl_png_params_parse("Steps: 20, Sampler: Euler, CFG scale: 5", "x.png", &p));
    CHECK(p.prompt && !p.prompt[0] && !p.negative && p.n == 3);
    zl_png_params_free(&p);
    /* refused, naming the label: two settings only; an unterminated quote */
    const char *bad[2] = {"a prompt\nSteps: 20, Sampler: Euler", "x\nSteps: 20, Sampler: \"Euler, CFG scale: 5"};
    for (int i = 0; i < 2; i++) {
        int rc = zl_png_params_parse(bad[i], "x.png", &p);
        CHECKM(rc == ZL_EFORMAT && strstr(zl_errmsg(), "x.png") && !p.prompt && !p.n, "bad parameters %d: %d %s", i, rc,
               zl_errmsg());
    }
}

int main(void) {
    test_captions();
    test_params_text();
    test_png_round_trip();
    test_jpeg();
    test_bad_files();
    test_resize_crop();
    test_tensor_conversions();
    return zt_done();
}
