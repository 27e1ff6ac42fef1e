/* Unicode helpers for the CLIP tokenizer: strict UTF-8 decoding, the
 * character classes its split regex uses (\p{L}, \p{N}, \s), Python's
 * str.isspace / str.lower, and html.unescape. Coverage is documented in
 * unicode_clip.c. Internal to src/models. */
#ifndef ZL_MODELS_UNICODE_CLIP_H
#define ZL_MODELS_UNICODE_CLIP_H

#include <stddef.h>
#include <stdint.h>

/* Decode UTF-8 strictly (no overlongs, surrogates or values past U+10FFFF).
 * *out is malloc'd; returns 0, or -1 with *bad_at = byte offset of the error. */
int zl_uc_decode_utf8(const char *s, size_t len, uint32_t **out, size_t *n, size_t *bad_at);
/* Encode one code point; returns bytes written (1..4) into buf[4]. */
int zl_uc_encode_utf8(uint32_t c, char *buf);

int zl_uc_is_letter(uint32_t c);   /* \p{L} */
int zl_uc_is_number(uint32_t c);   /* \p{N} */
int zl_uc_is_regex_space(uint32_t c); /* the regex module's \s: White_Space */
int zl_uc_is_py_space(uint32_t c);    /* Python str.isspace (strip) */
/* Python str.lower of one code point: writes 1 or 2 code points, returns the count. */
int zl_uc_lower(uint32_t c, uint32_t out[2]);

/* Python html.unescape on a code point string: writes at most n code points
 * to out (out must hold n; unescaping never grows the text) and returns the count. */
size_t zl_uc_html_unescape(const uint32_t *in, size_t n, uint32_t *out);

#endif
