/* Reading back an AUTOMATIC1111-style `parameters` PNG text (what generate
 * writes, and A1111/Forge write): the prompt lines, an optional "Negative
 * prompt:" part, and a last line of "Key: value" pairs separated by commas,
 * values in double quotes when they hold a comma, colon, quote or newline
 * (backslash escapes inside). */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ziplora/image.h"

void zl_png_params_free(zl_png_params *p) {
    free(p->prompt);
    free(p->negative);
    for (int i = 0; i < p->n; i++) {
        free(p->key[i]);
        free(p->val[i]);
    }
    memset(p, 0, sizeof *p);
}

const char *zl_png_params_get(const zl_png_params *p, const char *key) {
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->key[i], key)) return p->val[i];
    return NULL;
}

/* The "Key: value, Key: value" line; 0 if it is not one (fewer than 3 pairs). */
static int parse_pairs(const char *line, zl_png_params *p) {
    const char *c = line;
    while (*c && p->n < ZL_PNG_PARAMS_MAX) {
        while (*c == ' ') c++;
        if (!*c) break;
        const char *k = c;
        if (!(isalnum((unsigned char)*c) || *c == '_')) return 0;
        while (*c && *c != ':' && (isalnum((unsigned char)*c) || strchr("_ -/", *c))) c++;
        if (*c != ':') return 0;
        size_t kl = (size_t)(c - k);
        while (kl && k[kl - 1] == ' ') kl--;
        c++;
        while (*c == ' ') c++;
        char *v;
        if (*c == '"') {
            c++;
            size_t cap = strlen(c) + 1, n = 0;
            v = malloc(cap);
            if (!v) return -1;
            while (*c && *c != '"') {
                if (*c == '\\' && c[1]) {
                    c++;
                    v[n++] = *c == 'n' ? '\n' : *c;
                } else {
                    v[n++] = *c;
                }
                c++;
            }
            v[n] = 0;
            if (*c != '"') {
                free(v);
                return 0;
            }
            c++;
            while (*c == ' ') c++;
            if (*c && *c != ',') {
                free(v);
                return 0;
            }
        } else {
            const char *e = strchr(c, ',');
            size_t vl = e ? (size_t)(e - c) : strlen(c);
            while (vl && c[vl - 1] == ' ') vl--;
            v = strndup(c, vl);
            c = e ? e : c + strlen(c);
        }
        char *kk = strndup(k, kl);
        if (!v || !kk) {
            free(v);
            free(kk);
            return -1;
        }
        p->key[p->n] = kk;
        p->val[p->n++] = v;
        if (*c == ',') c++;
    }
    return p->n >= 3;
}

int zl_png_params_parse(const char *text, const char *label, zl_png_params *out) {
    memset(out, 0, sizeof *out);
    size_t len = strlen(text);
    while (len && (text[len - 1] == '\n' || text[len - 1] == ' ')) len--;
    const char *last = text + len;
    while (last > text && last[-1] != '\n') last--;
    char *line = strndup(last, (size_t)(text + len - last));
    if (!line) return zl_set_error(ZL_ENOMEM, "out of memory");
    int r = parse_pairs(line, out);
    free(line);
    if (r < 0) {
        zl_png_params_free(out);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    if (r == 0) {
        zl_png_params_free(out);
        return zl_set_error(ZL_EFORMAT, "%s: its parameters text has no 'Steps: ..., Sampler: ...' line", label);
    }
    /* the lines before: the prompt, then from a "Negative prompt:" line on, the negative */
    size_t head = (size_t)(last - text);
    while (head && text[head - 1] == '\n') head--;
    const char *neg = NULL;
    for (const char *l = text; l < text + head; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : text + head)
        if (!strncmp(l, "Negative prompt:", 16)) {
            neg = l;
            break;
        }
    size_t pl = neg ? (size_t)(neg - text) : head;
    while (pl && text[pl - 1] == '\n') pl--;
    out->prompt = strndup(text, pl);
    if (neg) {
        const char *v = neg + 16;
        while (*v == ' ') v++;
        out->negative = strndup(v, (size_t)(text + head - v));
    }
    if (!out->prompt || (neg && !out->negative)) {
        zl_png_params_free(out);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    return ZL_OK;
}

int zl_png_params_read(const char *path, zl_png_params *out) {
    memset(out, 0, sizeof *out);
    zl_png_text *t = NULL;
    int n = 0;
    int rc = zl_png_read_text(path, &t, &n);
    if (rc) return rc;
    const char *v = NULL;
    for (int i = 0; i < n && !v; i++)
        if (!strcmp(t[i].key, "parameters")) v = t[i].value;
    if (!v) rc = zl_set_error(ZL_EFORMAT, "%s: no 'parameters' text chunk (not an image written by ziplora generate, "
                                          "A1111 or Forge)", path);
    else rc = zl_png_params_parse(v, path, out);
    zl_png_text_free(t, n);
    return rc;
}
