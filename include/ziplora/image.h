/* 8-bit images: reading (PNG, JPEG and the other formats stb_image knows),
 * PNG writing through libspng with text chunks (the A1111 "parameters" chunk),
 * resizing and cropping, and conversion to and from the [-1, 1] float tensors
 * the VAE works on. Writes are atomic (temporary file + fsync + rename). */
#ifndef ZIPLORA_IMAGE_H
#define ZIPLORA_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "ziplora/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Interleaved pixels, row-major: px[(y * w + x) * c + k]. c is 3 (RGB) for
 * everything read or made by this module. */
typedef struct {
    int w, h, c;
    uint8_t *px; /* [h, w, c] */
} zl_image;

typedef struct {
    char *key;   /* PNG keyword (1-79 Latin-1 characters) */
    char *value; /* UTF-8 text */
} zl_png_text;

/* Largest side accepted when reading or allocating (guards against absurd headers). */
#define ZL_IMAGE_MAX_SIDE 16384

int zl_image_alloc(zl_image *im, int w, int h, int c);
void zl_image_free(zl_image *im);

/* Decode any image stb_image knows into RGB (alpha is dropped, grey is
 * replicated). Errors name the file and say why it could not be decoded. */
int zl_image_read(const char *path, zl_image *out);
int zl_image_read_mem(const void *buf, size_t len, const char *label, zl_image *out);

/* Encode an RGB image as an 8-bit PNG with text chunks: tEXt when the value is
 * plain ASCII, iTXt (UTF-8) otherwise -- what A1111/PIL do. */
int zl_png_encode(const zl_image *im, const zl_png_text *text, int n_text, void **out, size_t *len);
/* Encode and write atomically; refuses to overwrite any of `inputs`. */
int zl_png_write(const char *path, const zl_image *im, const zl_png_text *text, int n_text, const char *const *inputs,
                 int n_inputs);
/* All tEXt, zTXt and iTXt chunks of a PNG file, in file order (values as UTF-8
 * for iTXt; tEXt/zTXt bytes as stored). *out is NULL when there are none. */
int zl_png_read_text(const char *path, zl_png_text **out, int *n);
void zl_png_text_free(zl_png_text *t, int n);

/* Resampling filters.
 * AREA: each output pixel is the mean of the input area it covers, with
 *   fractional weights at the borders (exact box averaging; the right filter
 *   for shrinking; when enlarging it reduces to nearest-neighbour blocks).
 * BILINEAR: pixel-centre aligned (src = (x + 0.5) * in / out - 0.5, edges
 *   clamped), no antialiasing -- OpenCV's INTER_LINEAR, torch's
 *   align_corners=False. Suited to enlarging or mild shrinking.
 * Results are rounded to the nearest integer. */
typedef enum { ZL_RESIZE_AREA = 0, ZL_RESIZE_BILINEAR = 1 } zl_resize_filter;

int zl_image_resize(const zl_image *in, int w, int h, zl_resize_filter f, zl_image *out);
/* The w x h window whose top-left corner is (x, y); it must lie inside. */
int zl_image_crop(const zl_image *in, int x, int y, int w, int h, zl_image *out);
/* The centred w x h window (offsets rounded down). */
int zl_image_center_crop(const zl_image *in, int w, int h, zl_image *out);
/* Scale (keeping the aspect ratio) so the image covers w x h, then centre-crop:
 * how reference images are brought to the training size. */
int zl_image_fit(const zl_image *in, int w, int h, zl_resize_filter f, zl_image *out);

/* RGB image -> tensor [3, h, w] in [-1, 1]: 2 * (p / 255) - 1 (diffusers' VaeImageProcessor). */
void zl_image_to_tensor(const zl_image *im, float *dst);
/* Tensor [3, h, w] in [-1, 1] -> RGB image: round(255 * clamp(x / 2 + 0.5, 0, 1)),
 * ties to even (diffusers' postprocess + numpy round). */
int zl_image_from_tensor(const float *src, int h, int w, zl_image *out);
/* Tile n equally sized images into a grid of `cols` columns (black padding). */
int zl_image_grid(const zl_image *ims, int n, int cols, zl_image *out);
/* `im` with a black band on top holding one white caption centred over each of
 * `cols` equal columns (a built-in 5x7 pixel font: letters, digits, space, '-',
 * '.', '+'; lowercase drawn as capitals, anything else as '?'), scaled to the
 * column width; a caption too long for its column is cut. */
int zl_image_caption_columns(const zl_image *im, int cols, const char *const *captions, zl_image *out);

/* The A1111-style `parameters` text of a PNG, read back (generate --from-png):
 * the prompt lines, an optional "Negative prompt:" part, a last line of
 * "Key: value" pairs. */
#define ZL_PNG_PARAMS_MAX 64

typedef struct {
    char *prompt;   /* the lines before "Negative prompt:" / the settings line */
    char *negative; /* NULL when there is no "Negative prompt:" line */
    int n;
    char *key[ZL_PNG_PARAMS_MAX], *val[ZL_PNG_PARAMS_MAX]; /* the settings line, unquoted */
} zl_png_params;

/* Parse a parameters text; label names it in errors (ZL_EFORMAT without a
 * settings line of at least 3 "Key: value" pairs). */
int zl_png_params_parse(const char *text, const char *label, zl_png_params *out);
/* The same from a PNG file's "parameters" chunk. */
int zl_png_params_read(const char *path, zl_png_params *out);
const char *zl_png_params_get(const zl_png_params *p, const char *key); /* NULL if absent */
void zl_png_params_free(zl_png_params *p);


#ifdef __cplusplus
}
#endif
#endif
