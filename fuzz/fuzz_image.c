/* libFuzzer harness for the image loader (src/io/image.c): decoding any format
 * through zl_image_read_mem, PNG text-chunk reading, the A1111 `parameters` text
 * parser (generate --from-png) on the input as text and on any parameters chunk,
 * and on what decodes, the
 * operations that follow in the program -- a lossless PNG round trip through
 * zl_png_encode, area and bilinear resizing, crops, and the [-1, 1] tensor
 * conversions, which must give back the same bytes. A broken invariant aborts
 * and is reported as a crash.
 * The decoder (stb_image, from Debian's libstb) is not instrumented, so
 * coverage guides through our wrapper and ASan sees its heap use only at the
 * interceptors. Images over 4 M pixels are skipped before decoding: a few
 * bytes may legally declare up to 16384 x 16384, which only tests memory. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <stb/stb_image.h>

#include "ziplora/image.h"

#define LABEL "fuzz_image.png"
#define MAX_PIXELS (1 << 22)
#define MAX_ROUNDTRIP_PIXELS (1 << 16)

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_image: invariant broken: %s\n", what);
        abort();
    }
}

/* zl_png_read_text takes a path; one scratch file per process. */
static char g_scratch[256];
static void remove_scratch(void) { if (g_scratch[0]) unlink(g_scratch); }

static const char *scratch_path(void) {
    char *path = g_scratch;
    if (!path[0]) {
        const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        snprintf(path, sizeof g_scratch, "%s/fuzz_image_%d.png", dir, (int)getpid());
        atexit(remove_scratch);
    }
    return path;
}

/* The parameters-text parser: on success at least 3 settings, each a non-empty
 * key without ':' and a value, found again by name; on failure nothing kept
 * and a message naming the label. */
static void check_params_text(const char *text) {
    zl_png_params p;
    int rc = zl_png_params_parse(text, LABEL, &p);
    if (rc) {
        check(p.prompt == NULL && p.negative == NULL && p.n == 0, "failed parameters parse kept fields");
        check(rc == ZL_ENOMEM || strncmp(zl_errmsg(), LABEL ": ", strlen(LABEL) + 2) == 0,
              "parameters error does not name the label");
        return;
    }
    check(p.prompt != NULL && p.n >= 3 && p.n <= ZL_PNG_PARAMS_MAX, "parsed parameters without prompt or settings");
    check(strlen(p.prompt) <= strlen(text), "prompt longer than the text");
    for (int i = 0; i < p.n; i++) {
        check(p.key[i] && p.val[i] && p.key[i][0] && !strchr(p.key[i], ':'), "bad settings key");
        const char *v = zl_png_params_get(&p, p.key[i]);
        check(v != NULL, "a parsed key is not found");
    }
    zl_png_params_free(&p);
    check(p.prompt == NULL && p.n == 0, "free left fields");
}

static void check_params(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return;
    memcpy(text, data, size);
    text[size] = 0;
    check_params_text(text);
    free(text);
}

static void check_text(const uint8_t *data, size_t size) {
    FILE *fp = fopen(scratch_path(), "wb");
    if (!fp) return;
    size_t wr = fwrite(data, 1, size, fp);
    fclose(fp);
    if (wr != size) return;
    zl_png_text *t = NULL;
    int n = -1;
    int rc = zl_png_read_text(scratch_path(), &t, &n);
    if (rc) {
        check(t == NULL && n == 0, "failed text read returned entries");
        check(strncmp(zl_errmsg(), scratch_path(), strlen(scratch_path())) == 0, "text error does not name the file");
        return;
    }
    check(n >= 0 && (n == 0) == (t == NULL), "text count and array disagree");
    for (int i = 0; i < n; i++) {
        check(t[i].key && t[i].value, "NULL text entry");
        (void)strlen(t[i].key);
        if (!strcmp(t[i].key, "parameters")) check_params_text(t[i].value);
    }
    zl_png_text_free(t, n);
}

static void same_image(const zl_image *a, const zl_image *b, const char *what) {
    check(a->w == b->w && a->h == b->h && a->c == b->c, what);
    check(memcmp(a->px, b->px, (size_t)a->w * a->h * a->c) == 0, what);
}

static void check_ops(const zl_image *im) {
    size_t n = (size_t)im->w * im->h;
    if (n > MAX_ROUNDTRIP_PIXELS) return;

    /* PNG is lossless, text and all. */
    zl_png_text text[2] = {{(char *)"parameters", (char *)"a photo, Steps: 20"}, {(char *)"Title", (char *)"caf\xc3\xa9"}};
    void *png = NULL;
    size_t len = 0;
    check(zl_png_encode(im, text, 2, &png, &len) == ZL_OK, "cannot encode a decoded image");
    zl_image back;
    check(zl_image_read_mem(png, len, "roundtrip.png", &back) == ZL_OK, "cannot decode our own PNG");
    same_image(im, &back, "PNG round trip changed the pixels");
    zl_image_free(&back);
    free(png);

    /* [-1, 1] tensor and back is exact for 8-bit values. */
    float *t = malloc(n * 3 * sizeof(float)); // [3, h, w]
    check(t != NULL, "malloc");
    zl_image_to_tensor(im, t);
    for (size_t i = 0; i < n * 3; i++) check(t[i] >= -1.0f && t[i] <= 1.0f, "tensor value outside [-1, 1]");
    check(zl_image_from_tensor(t, im->h, im->w, &back) == ZL_OK, "from_tensor failed");
    same_image(im, &back, "tensor round trip changed the pixels");
    zl_image_free(&back);
    free(t);

    /* Resampling to a size derived from the image, in both directions. */
    int w2 = 1 + (im->w * 3 + 1) % 37, h2 = 1 + (im->h * 5 + 2) % 29;
    zl_image r;
    int rc;
    check(zl_image_resize(im, w2, h2, ZL_RESIZE_AREA, &r) == ZL_OK && r.w == w2 && r.h == h2, "area resize");
    zl_image_free(&r);
    check(zl_image_resize(im, w2, h2, ZL_RESIZE_BILINEAR, &r) == ZL_OK && r.w == w2 && r.h == h2, "bilinear resize");
    zl_image_free(&r);
    /* Resizing to the same size is the identity for both filters. */
    check(zl_image_resize(im, im->w, im->h, ZL_RESIZE_AREA, &r) == ZL_OK, "identity area resize");
    same_image(im, &r, "area resize to the same size changed the pixels");
    zl_image_free(&r);
    /* fit scales until the image covers w2 x h2; a very thin image may need an
     * intermediate beyond ZL_IMAGE_MAX_SIDE, which is refused with an error. */
    double s = fmax((double)w2 / im->w, (double)h2 / im->h);
    int fits = im->w * s <= ZL_IMAGE_MAX_SIDE - 1 && im->h * s <= ZL_IMAGE_MAX_SIDE - 1;
    rc = zl_image_fit(im, w2, h2, ZL_RESIZE_BILINEAR, &r);
    if (fits) check(rc == ZL_OK && r.w == w2 && r.h == h2, "fit failed within the size limit");
    else check(rc == ZL_OK || (r.px == NULL && zl_errmsg()[0]), "fit failed without a message");
    zl_image_free(&r);
    int cw = 1 + im->w / 2, ch = 1 + im->h / 3;
    check(zl_image_center_crop(im, cw, ch, &r) == ZL_OK && r.w == cw && r.h == ch, "centre crop");
    zl_image_free(&r);
    check(zl_image_crop(im, im->w - 1, im->h - 1, 1, 1, &r) == ZL_OK, "corner crop");
    check(memcmp(r.px, im->px + ((size_t)(im->h - 1) * im->w + im->w - 1) * 3, 3) == 0, "corner crop pixel");
    zl_image_free(&r);
    check(zl_image_crop(im, im->w, 0, 1, 1, &r) != ZL_OK, "crop outside the image accepted");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_text(data, size);
    check_params(data, size);
    int w, h, comp;
    if (size < 0x7fffffff && stbi_info_from_memory(data, (int)size, &w, &h, &comp) && (int64_t)w * h > MAX_PIXELS) return 0;
    zl_image im;
    int rc = zl_image_read_mem(data, size, LABEL, &im);
    if (rc) {
        check(im.px == NULL, "failed decode left pixels");
        check(strncmp(zl_errmsg(), LABEL ": ", strlen(LABEL) + 2) == 0, "error message does not start with the file label");
        return 0;
    }
    check(im.px != NULL && im.c == 3, "decoded image is not RGB");
    check(im.w >= 1 && im.h >= 1 && im.w <= ZL_IMAGE_MAX_SIDE && im.h <= ZL_IMAGE_MAX_SIDE, "size out of range");
    unsigned sum = 0;
    for (size_t i = 0; i < (size_t)im.w * im.h * 3; i++) sum += im.px[i];
    volatile unsigned sink = sum;
    (void)sink;
    check_ops(&im);
    zl_image_free(&im);
    return 0;
}
