/* The A1111-style `parameters` text of a PNG, read back (generate --from-png). */
#ifndef ZL_PNG_PARAMS_H
#define ZL_PNG_PARAMS_H

#include "ziplora.h"

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

#endif
