/* Image files: decoding through stb_image (any format it knows), PNG encoding
 * with text chunks through libspng, PNG text-chunk reading through libspng,
 * area/bilinear resampling, crops, grids, and the tensor conversions used
 * around the VAE. Outputs are written atomically via zl_afile. */
#include <math.h>
#include <spng.h>
#include <stdlib.h>
#include <string.h>
#include <stb/stb_image.h>

#include "ziplora/fileio.h"
#include "ziplora/image.h"
#include "io/font5x7.h"

int zl_image_alloc(zl_image *im, int w, int h, int c) {
    memset(im, 0, sizeof *im);
    if (w < 1 || h < 1 || c < 1 || c > 4 || w > ZL_IMAGE_MAX_SIDE || h > ZL_IMAGE_MAX_SIDE)
        return zl_set_error(ZL_EINVAL, "image size %dx%dx%d is out of range (1..%d per side)", w, h, c, ZL_IMAGE_MAX_SIDE);
    im->px = malloc((size_t)w * h * c);
    if (!im->px) return zl_set_error(ZL_ENOMEM, "out of memory for a %dx%d image", w, h);
    im->w = w;
    im->h = h;
    im->c = c;
    return ZL_OK;
}

void zl_image_free(zl_image *im) {
    if (!im) return;
    free(im->px);
    memset(im, 0, sizeof *im);
}

/* ---- reading ------------------------------------------------------------ */

/* Formats users have that stb_image does not read, named from their first bytes. */
static const char *unread_format(const unsigned char *b, size_t n) {
    if (n >= 12 && !memcmp(b, "RIFF", 4) && !memcmp(b + 8, "WEBP", 4)) return "WebP";
    if (n >= 12 && !memcmp(b + 4, "ftyp", 4)) {
        if (!memcmp(b + 8, "avif", 4) || !memcmp(b + 8, "avis", 4)) return "AVIF";
        if (!memcmp(b + 8, "heic", 4) || !memcmp(b + 8, "heix", 4) || !memcmp(b + 8, "mif1", 4)) return "HEIF/HEIC";
    }
    if (n >= 4 && (!memcmp(b, "II*\0", 4) || !memcmp(b, "MM\0*", 4))) return "TIFF";
    if (n >= 12 && !memcmp(b, "\0\0\0\x0cjXL \r\n\x87\n", 12)) return "JPEG XL";
    if (n >= 2 && b[0] == 0xff && b[1] == 0x0a) return "JPEG XL";
    return NULL;
}

int zl_image_read_mem(const void *buf, size_t len, const char *label, zl_image *out) {
    memset(out, 0, sizeof *out);
    if (len > (size_t)0x7fffffff) return zl_set_error(ZL_EFORMAT, "%s: image file too large", label);
    const char *other = unread_format(buf, len);
    if (other)
        return zl_set_error(ZL_EUNSUPPORTED, "%s: a %s image; only PNG, JPEG, BMP, TGA, GIF and PNM are read: convert it first",
                            label, other);
    int w, h, comp;
    if (!stbi_info_from_memory(buf, (int)len, &w, &h, &comp))
        return zl_set_error(ZL_EFORMAT, "%s: cannot decode image (%s)", label,
                            stbi_failure_reason() ? stbi_failure_reason() : "unknown format");
    if (w < 1 || h < 1 || w > ZL_IMAGE_MAX_SIDE || h > ZL_IMAGE_MAX_SIDE)
        return zl_set_error(ZL_EFORMAT, "%s: image is %dx%d; sides must be 1..%d", label, w, h, ZL_IMAGE_MAX_SIDE);
    /* stb_image 2.27 (Debian's libstb) reads past its buffer on 16-bit PGM/PPM (CVE-2021-42716, found by fuzz_image). */
    if (stbi_is_16_bit_from_memory(buf, (int)len) && !(len >= 4 && !memcmp(buf, "\x89PNG", 4)))
        return zl_set_error(ZL_EUNSUPPORTED, "%s: 16-bit images other than PNG are not supported", label);
    unsigned char *px = stbi_load_from_memory(buf, (int)len, &w, &h, &comp, 3);
    if (!px)
        return zl_set_error(ZL_EFORMAT, "%s: cannot decode image (%s)", label,
                            stbi_failure_reason() ? stbi_failure_reason() : "corrupt data");
    int rc = zl_image_alloc(out, w, h, 3);
    if (rc == ZL_OK) memcpy(out->px, px, (size_t)w * h * 3);
    stbi_image_free(px);
    return rc;
}

int zl_image_read(const char *path, zl_image *out) {
    memset(out, 0, sizeof *out);
    char *buf;
    size_t len;
    int rc = zl_read_file(path, &buf, &len);
    if (rc) return rc;
    rc = zl_image_read_mem(buf, len, path, out);
    free(buf);
    return rc;
}

/* ---- PNG writing ---------------------------------------------------------- */

static int is_ascii(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80) return 0;
    return 1;
}

int zl_png_encode(const zl_image *im, const zl_png_text *text, int n_text, void **out, size_t *len) {
    *out = NULL;
    *len = 0;
    if (!im || !im->px || im->c != 3) return zl_set_error(ZL_EINVAL, "png: need an RGB image");
    if (n_text < 0) return zl_set_error(ZL_EINVAL, "png: negative text count");
    struct spng_text *st = n_text ? calloc((size_t)n_text, sizeof *st) : NULL;
    if (n_text && !st) return zl_set_error(ZL_ENOMEM, "png: out of memory");
    for (int i = 0; i < n_text; i++) {
        size_t kl = text[i].key ? strlen(text[i].key) : 0;
        if (kl < 1 || kl > 79) {
            free(st);
            return zl_set_error(ZL_EINVAL, "png: text keyword '%s' must be 1-79 characters", text[i].key ? text[i].key : "");
        }
        memcpy(st[i].keyword, text[i].key, kl + 1);
        st[i].text = text[i].value ? text[i].value : (char *)"";
        st[i].length = strlen(st[i].text);
        if (is_ascii(st[i].text)) {
            st[i].type = SPNG_TEXT;
        } else {
            st[i].type = SPNG_ITXT;
            st[i].language_tag = (char *)"";
            st[i].translated_keyword = (char *)"";
        }
    }
    spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    if (!ctx) {
        free(st);
        return zl_set_error(ZL_ENOMEM, "png: cannot create an encoder");
    }
    int err = spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
    struct spng_ihdr ihdr = {0};
    ihdr.width = (uint32_t)im->w;
    ihdr.height = (uint32_t)im->h;
    ihdr.bit_depth = 8;
    ihdr.color_type = SPNG_COLOR_TYPE_TRUECOLOR;
    if (!err) err = spng_set_ihdr(ctx, &ihdr);
    if (!err && n_text) err = spng_set_text(ctx, st, (uint32_t)n_text);
    if (!err) err = spng_encode_image(ctx, im->px, (size_t)im->w * im->h * 3, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE);
    void *png = NULL;
    if (!err) png = spng_get_png_buffer(ctx, len, &err);
    spng_ctx_free(ctx);
    free(st);
    if (err || !png) {
        free(png);
        *len = 0;
        return zl_set_error(ZL_EINVAL, "png: encoding failed: %s", spng_strerror(err));
    }
    *out = png;
    return ZL_OK;
}

int zl_png_write(const char *path, const zl_image *im, const zl_png_text *text, int n_text, const char *const *inputs,
                 int n_inputs) {
    void *png;
    size_t len;
    int rc = zl_png_encode(im, text, n_text, &png, &len);
    if (rc) return zl_error_prefix(rc, "%s", path);
    rc = zl_write_file_atomic(path, png, len, inputs, n_inputs);
    free(png);
    return rc;
}

/* ---- PNG text reading ----------------------------------------------------- */

void zl_png_text_free(zl_png_text *t, int n) {
    if (!t) return;
    for (int i = 0; i < n; i++) {
        free(t[i].key);
        free(t[i].value);
    }
    free(t);
}

int zl_png_read_text(const char *path, zl_png_text **out, int *n) {
    *out = NULL;
    *n = 0;
    char *buf;
    size_t len;
    int rc = zl_read_file(path, &buf, &len);
    if (rc) return rc;
    spng_ctx *ctx = spng_ctx_new(0);
    if (!ctx) {
        free(buf);
        return zl_set_error(ZL_ENOMEM, "%s: cannot create a PNG decoder", path);
    }
    uint8_t *px = NULL;
    struct spng_text *st = NULL;
    uint32_t nt = 0;
    size_t outlen = 0;
    int err = spng_set_png_buffer(ctx, buf, len);
    if (!err) err = spng_set_image_limits(ctx, ZL_IMAGE_MAX_SIDE, ZL_IMAGE_MAX_SIDE);
    if (!err) err = spng_decoded_image_size(ctx, SPNG_FMT_RGBA8, &outlen);
    if (!err) {
        px = malloc(outlen ? outlen : 1);
        if (!px) err = SPNG_EMEM;
    }
    /* decode the whole file so text chunks after IDAT are seen too */
    if (!err) err = spng_decode_image(ctx, px, outlen, SPNG_FMT_RGBA8, 0);
    if (!err) {
        int e = spng_get_text(ctx, NULL, &nt);
        if (e == SPNG_ECHUNKAVAIL) nt = 0;
        else err = e;
    }
    if (!err && nt) {
        st = calloc(nt, sizeof *st);
        if (!st) err = SPNG_EMEM;
        else err = spng_get_text(ctx, st, &nt);
    }
    if (err) {
        rc = zl_set_error(ZL_EFORMAT, "%s: cannot read PNG: %s", path, spng_strerror(err));
    } else if (nt) {
        zl_png_text *t = calloc(nt, sizeof *t);
        if (!t) rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", path);
        for (uint32_t i = 0; t && i < nt; i++) {
            t[i].key = strdup(st[i].keyword);
            t[i].value = malloc(st[i].length + 1);
            if (!t[i].key || !t[i].value) {
                zl_png_text_free(t, (int)nt);
                t = NULL;
                rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", path);
                break;
            }
            memcpy(t[i].value, st[i].text, st[i].length);
            t[i].value[st[i].length] = 0;
        }
        if (t) {
            *out = t;
            *n = (int)nt;
        }
    }
    free(st);
    free(px);
    spng_ctx_free(ctx);
    free(buf);
    return rc;
}

/* ---- resampling ----------------------------------------------------------- */

static uint8_t clamp_u8(double v) {
    v = floor(v + 0.5);
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Area weights along one axis: output i covers input [i*s, (i+1)*s), s = in/out. */
typedef struct {
    int first, count;
    double *wt;
} area_span;

static int area_spans(int in, int out, area_span **res) {
    area_span *sp = calloc((size_t)out, sizeof *sp);
    if (!sp) return zl_set_error(ZL_ENOMEM, "resize: out of memory");
    double s = (double)in / out;
    for (int i = 0; i < out; i++) {
        double a = i * s, b = (i + 1) * s;
        int lo = (int)floor(a), hi = (int)ceil(b);
        if (hi > in) hi = in;
        if (lo >= hi) lo = hi - 1;
        sp[i].first = lo;
        sp[i].count = hi - lo;
        sp[i].wt = malloc(sizeof(double) * (size_t)sp[i].count);
        if (!sp[i].wt) {
            for (int j = 0; j <= i; j++) free(sp[j].wt);
            free(sp);
            return zl_set_error(ZL_ENOMEM, "resize: out of memory");
        }
        for (int k = 0; k < sp[i].count; k++) {
            double p0 = fmax(a, lo + k), p1 = fmin(b, lo + k + 1);
            sp[i].wt[k] = (p1 - p0) / s;
        }
    }
    *res = sp;
    return ZL_OK;
}

static void free_spans(area_span *sp, int n) {
    for (int i = 0; i < n; i++) free(sp[i].wt);
    free(sp);
}

static int resize_area(const zl_image *in, zl_image *out) {
    area_span *sx = NULL, *sy = NULL;
    int rc = area_spans(in->w, out->w, &sx);
    if (!rc) rc = area_spans(in->h, out->h, &sy);
    if (rc) {
        if (sx) free_spans(sx, out->w);
        return rc;
    }
    int c = in->c;
#pragma omp parallel for schedule(static)
    for (int y = 0; y < out->h; y++) {
        for (int x = 0; x < out->w; x++) {
            double acc[4] = {0, 0, 0, 0};
            for (int j = 0; j < sy[y].count; j++) {
                const uint8_t *row = in->px + (size_t)(sy[y].first + j) * in->w * c;
                for (int i = 0; i < sx[x].count; i++) {
                    double wgt = sy[y].wt[j] * sx[x].wt[i];
                    const uint8_t *p = row + (size_t)(sx[x].first + i) * c;
                    for (int k = 0; k < c; k++) acc[k] += wgt * p[k];
                }
            }
            uint8_t *o = out->px + ((size_t)y * out->w + x) * c;
            for (int k = 0; k < c; k++) o[k] = clamp_u8(acc[k]);
        }
    }
    free_spans(sx, out->w);
    free_spans(sy, out->h);
    return ZL_OK;
}

static void resize_bilinear(const zl_image *in, zl_image *out) {
    int c = in->c;
    double rx = (double)in->w / out->w, ry = (double)in->h / out->h;
#pragma omp parallel for schedule(static)
    for (int y = 0; y < out->h; y++) {
        double fy = (y + 0.5) * ry - 0.5;
        if (fy < 0) fy = 0;
        int y0 = (int)floor(fy);
        if (y0 > in->h - 1) y0 = in->h - 1;
        int y1 = y0 + 1 < in->h ? y0 + 1 : in->h - 1;
        double wy = fy - y0;
        if (wy > 1) wy = 1;
        for (int x = 0; x < out->w; x++) {
            double fx = (x + 0.5) * rx - 0.5;
            if (fx < 0) fx = 0;
            int x0 = (int)floor(fx);
            if (x0 > in->w - 1) x0 = in->w - 1;
            int x1 = x0 + 1 < in->w ? x0 + 1 : in->w - 1;
            double wx = fx - x0;
            if (wx > 1) wx = 1;
            const uint8_t *p00 = in->px + ((size_t)y0 * in->w + x0) * c, *p01 = in->px + ((size_t)y0 * in->w + x1) * c;
            const uint8_t *p10 = in->px + ((size_t)y1 * in->w + x0) * c, *p11 = in->px + ((size_t)y1 * in->w + x1) * c;
            uint8_t *o = out->px + ((size_t)y * out->w + x) * c;
            for (int k = 0; k < c; k++) {
                double top = p00[k] + wx * (p01[k] - p00[k]), bot = p10[k] + wx * (p11[k] - p10[k]);
                o[k] = clamp_u8(top + wy * (bot - top));
            }
        }
    }
}

int zl_image_resize(const zl_image *in, int w, int h, zl_resize_filter f, zl_image *out) {
    memset(out, 0, sizeof *out);
    if (!in || !in->px) return zl_set_error(ZL_EINVAL, "resize: empty image");
    if (f != ZL_RESIZE_AREA && f != ZL_RESIZE_BILINEAR) return zl_set_error(ZL_EINVAL, "resize: unknown filter %d", (int)f);
    int rc = zl_image_alloc(out, w, h, in->c);
    if (rc) return rc;
    if (w == in->w && h == in->h) {
        memcpy(out->px, in->px, (size_t)w * h * in->c);
        return ZL_OK;
    }
    if (f == ZL_RESIZE_AREA) {
        rc = resize_area(in, out);
        if (rc) zl_image_free(out);
        return rc;
    }
    resize_bilinear(in, out);
    return ZL_OK;
}

int zl_image_crop(const zl_image *in, int x, int y, int w, int h, zl_image *out) {
    memset(out, 0, sizeof *out);
    if (!in || !in->px) return zl_set_error(ZL_EINVAL, "crop: empty image");
    if (x < 0 || y < 0 || w < 1 || h < 1 || x > in->w - w || y > in->h - h)
        return zl_set_error(ZL_EINVAL, "crop: window %dx%d at (%d,%d) does not fit in a %dx%d image", w, h, x, y, in->w, in->h);
    int rc = zl_image_alloc(out, w, h, in->c);
    if (rc) return rc;
    for (int r = 0; r < h; r++)
        memcpy(out->px + (size_t)r * w * in->c, in->px + ((size_t)(y + r) * in->w + x) * in->c, (size_t)w * in->c);
    return ZL_OK;
}

int zl_image_center_crop(const zl_image *in, int w, int h, zl_image *out) {
    if (!in) return zl_set_error(ZL_EINVAL, "crop: empty image");
    return zl_image_crop(in, (in->w - w) / 2, (in->h - h) / 2, w, h, out);
}

int zl_image_fit(const zl_image *in, int w, int h, zl_resize_filter f, zl_image *out) {
    memset(out, 0, sizeof *out);
    if (!in || !in->px) return zl_set_error(ZL_EINVAL, "fit: empty image");
    if (w < 1 || h < 1) return zl_set_error(ZL_EINVAL, "fit: target %dx%d", w, h);
    /* the smallest scale at which the image covers w x h */
    double s = fmax((double)w / in->w, (double)h / in->h);
    int rw = (int)ceil(in->w * s - 1e-9), rh = (int)ceil(in->h * s - 1e-9);
    if (rw < w) rw = w;
    if (rh < h) rh = h;
    zl_image tmp;
    int rc = zl_image_resize(in, rw, rh, f, &tmp);
    if (rc) return rc;
    rc = zl_image_center_crop(&tmp, w, h, out);
    zl_image_free(&tmp);
    return rc;
}

/* ---- tensors and grids ------------------------------------------------------ */

void zl_image_to_tensor(const zl_image *im, float *dst) {
    size_t hw = (size_t)im->w * im->h;
    for (int k = 0; k < 3; k++) {
        int src_k = im->c >= 3 ? k : 0;
        for (size_t i = 0; i < hw; i++) {
            float v = (float)im->px[i * im->c + src_k] / 255.0f;
            dst[k * hw + i] = 2.0f * v - 1.0f;
        }
    }
}

int zl_image_from_tensor(const float *src, int h, int w, zl_image *out) {
    int rc = zl_image_alloc(out, w, h, 3);
    if (rc) return rc;
    size_t hw = (size_t)w * h;
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < hw; i++) {
            float v = src[k * hw + i] / 2.0f + 0.5f;
            v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v; /* NaN stays NaN -> 0 below */
            float s = rintf(v * 255.0f);
            out->px[i * 3 + k] = s >= 0.0f && s <= 255.0f ? (uint8_t)s : 0;
        }
    return ZL_OK;
}

int zl_image_grid(const zl_image *ims, int n, int cols, zl_image *out) {
    memset(out, 0, sizeof *out);
    if (n < 1 || cols < 1) return zl_set_error(ZL_EINVAL, "grid: %d images in %d columns", n, cols);
    int w = ims[0].w, h = ims[0].h, c = ims[0].c;
    for (int i = 1; i < n; i++)
        if (ims[i].w != w || ims[i].h != h || ims[i].c != c)
            return zl_set_error(ZL_ESHAPE, "grid: image %d is %dx%d, image 0 is %dx%d", i, ims[i].w, ims[i].h, w, h);
    if (cols > n) cols = n;
    int rows = (n + cols - 1) / cols;
    if ((long)w * cols > ZL_IMAGE_MAX_SIDE || (long)h * rows > ZL_IMAGE_MAX_SIDE)
        return zl_set_error(ZL_EINVAL, "grid: %dx%d tiles of %dx%d exceed %d pixels per side", cols, rows, w, h, ZL_IMAGE_MAX_SIDE);
    int rc = zl_image_alloc(out, w * cols, h * rows, c);
    if (rc) return rc;
    memset(out->px, 0, (size_t)out->w * out->h * c);
    for (int i = 0; i < n; i++) {
        int ox = (i % cols) * w, oy = (i / cols) * h;
        for (int r = 0; r < h; r++)
            memcpy(out->px + ((size_t)(oy + r) * out->w + ox) * c, ims[i].px + (size_t)r * w * c, (size_t)w * c);
    }
    return ZL_OK;
}

/* ---- captions: a 5x7 pixel font (rows top to bottom, bit 4 = leftmost) ---- */

static const char g_font_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.+? %():/,_|='<>*[];!";
static const uint8_t g_font[][7] = {
    {0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11}, /* 'A' */
    {0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e}, /* 'B' */
    {0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e}, /* 'C' */
    {0x1e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1e}, /* 'D' */
    {0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f}, /* 'E' */
    {0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10}, /* 'F' */
    {0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f}, /* 'G' */
    {0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11}, /* 'H' */
    {0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e}, /* 'I' */
    {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0c}, /* 'J' */
    {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}, /* 'K' */
    {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f}, /* 'L' */
    {0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11}, /* 'M' */
    {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}, /* 'N' */
    {0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e}, /* 'O' */
    {0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10}, /* 'P' */
    {0x0e, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0d}, /* 'Q' */
    {0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11}, /* 'R' */
    {0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e}, /* 'S' */
    {0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}, /* 'T' */
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e}, /* 'U' */
    {0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04}, /* 'V' */
    {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a}, /* 'W' */
    {0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11}, /* 'X' */
    {0x11, 0x11, 0x0a, 0x04, 0x04, 0x04, 0x04}, /* 'Y' */
    {0x1f, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1f}, /* 'Z' */
    {0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e}, /* '0' */
    {0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e}, /* '1' */
    {0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f}, /* '2' */
    {0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e}, /* '3' */
    {0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02}, /* '4' */
    {0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e}, /* '5' */
    {0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e}, /* '6' */
    {0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}, /* '7' */
    {0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e}, /* '8' */
    {0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c}, /* '9' */
    {0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00}, /* '-' */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c}, /* '.' */
    {0x00, 0x04, 0x04, 0x1f, 0x04, 0x04, 0x00}, /* '+' */
    {0x0e, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04}, /* '?' */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}, /* ' ' */
    {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}, /* '%' */
    {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}, /* '(' */
    {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}, /* ')' */
    {0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00}, /* ':' */
    {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00}, /* '/' */
    {0x00, 0x00, 0x00, 0x00, 0x0c, 0x04, 0x08}, /* ',' */
    {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f}, /* '_' */
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}, /* '|' */
    {0x00, 0x00, 0x1f, 0x00, 0x1f, 0x00, 0x00}, /* '=' */
    {0x0c, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00}, /* '\'' */
    {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02}, /* '<' */
    {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08}, /* '>' */
    {0x00, 0x04, 0x15, 0x0e, 0x15, 0x04, 0x00}, /* '*' */
    {0x0e, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0e}, /* '[' */
    {0x0e, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0e}, /* ']' */
    {0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x04, 0x08}, /* ';' */
    {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04}, /* '!' */
};

const uint8_t *zl_font5x7(char ch) {
    if (ch >= 'a' && ch <= 'z') ch = (char)(ch - 'a' + 'A');
    const char *k = strchr(g_font_chars, ch);
    if (!ch || !k) k = strchr(g_font_chars, '?');
    return g_font[k - g_font_chars];
}

static const uint8_t *glyph(char ch) { return zl_font5x7(ch); }

int zl_image_caption_columns(const zl_image *im, int cols, const char *const *captions, zl_image *out) {
    memset(out, 0, sizeof *out);
    if (cols < 1 || im->w < cols || !im->px) return zl_set_error(ZL_EINVAL, "caption: %d columns over %d pixels", cols, im->w);
    const int cw = im->w / cols;
    size_t longest = 1;
    for (int j = 0; j < cols; j++)
        if (captions[j] && strlen(captions[j]) > longest) longest = strlen(captions[j]);
    /* a character is 6 cells wide (5 + 1 space); scale so the longest fits, 1..4 */
    int s = (int)((size_t)(cw - 4) / (6 * longest));
    s = s < 1 ? 1 : s > 4 ? 4 : s;
    const int band = 11 * s; /* 2s margin, 7s glyph, 2s margin */
    if ((long)im->h + band > ZL_IMAGE_MAX_SIDE) return zl_set_error(ZL_EINVAL, "caption: image too tall");
    int rc = zl_image_alloc(out, im->w, im->h + band, im->c);
    if (rc) return rc;
    const size_t row = (size_t)im->w * im->c;
    memset(out->px, 0, row * band);
    if (im->c == 4) /* an opaque band */
        for (size_t i = 3; i < row * band; i += 4) out->px[i] = 255;
    memcpy(out->px + row * band, im->px, row * im->h);
    for (int j = 0; j < cols; j++) {
        const char *t = captions[j] ? captions[j] : "";
        int n = (int)strlen(t), fit = (cw - 2) / (6 * s);
        if (n > fit) n = fit;
        int x0 = j * cw + (cw - (6 * n - 1) * s) / 2, y0 = 2 * s;
        for (int k = 0; k < n; k++) {
            const uint8_t *g = glyph(t[k]);
            for (int gy = 0; gy < 7; gy++)
                for (int gx = 0; gx < 5; gx++) {
                    if (!(g[gy] >> (4 - gx) & 1)) continue;
                    for (int dy = 0; dy < s; dy++)
                        for (int dx = 0; dx < s; dx++) {
                            int x = x0 + (6 * k + gx) * s + dx, y = y0 + gy * s + dy;
                            memset(out->px + ((size_t)y * im->w + x) * im->c, 255, (size_t)im->c);
                        }
                }
        }
    }
    return ZL_OK;
}
