/* A small SVG writer (see svg.h): the document grows in a string buffer, one
 * element per call, and goes to disk through the atomic file writer. Numbers
 * are printed with two decimals so files are small and reproducible. */
#include "io/svg.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ziplora/core.h"
#include "ziplora/fileio.h"

struct zl_svg {
    char *buf;
    size_t len, cap;
    int failed;
    double w, h;
};

static void add(zl_svg *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(zl_svg *s, const char *fmt, ...) {
    if (s->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(s->buf + s->len, s->cap - s->len, fmt, ap);
        va_end(ap);
        if (n < 0) { s->failed = 1; return; }
        if ((size_t)n < s->cap - s->len) { s->len += (size_t)n; return; }
        size_t nc = s->cap * 2 + (size_t)n + 1;
        char *nb = realloc(s->buf, nc);
        if (!nb) { s->failed = 1; return; }
        s->buf = nb;
        s->cap = nc;
    }
}

static void add_escaped(zl_svg *s, const char *t) {
    for (; *t; t++) {
        switch (*t) {
        case '<': add(s, "&lt;"); break;
        case '>': add(s, "&gt;"); break;
        case '&': add(s, "&amp;"); break;
        case '"': add(s, "&quot;"); break;
        default: add(s, "%c", *t);
        }
    }
}

zl_svg *zl_svg_new(double w, double h) {
    zl_svg *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->cap = 1 << 16;
    s->buf = malloc(s->cap);
    if (!s->buf) { free(s); return NULL; }
    s->buf[0] = 0;
    s->w = w;
    s->h = h;
    add(s, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
           "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
           "font-family=\"Helvetica, Arial, sans-serif\">\n",
        w, h, w, h);
    add(s, "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"white\"/>\n", w, h);
    return s;
}

void zl_svg_free(zl_svg *s) {
    if (!s) return;
    free(s->buf);
    free(s);
}

int zl_svg_failed(const zl_svg *s) { return s->failed; }

void zl_svg_rect(zl_svg *s, double x, double y, double w, double h, const char *fill, const char *stroke,
                 double opacity) {
    add(s, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\" stroke=\"%s\"", x, y, w, h, fill,
        stroke ? stroke : "none");
    if (opacity < 1) add(s, " fill-opacity=\"%.2f\"", opacity);
    add(s, "/>\n");
}

void zl_svg_line(zl_svg *s, double x1, double y1, double x2, double y2, const char *stroke, double width,
                 const char *dash) {
    add(s, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"%s\" stroke-width=\"%.2f\"", x1, y1, x2, y2,
        stroke, width);
    if (dash) add(s, " stroke-dasharray=\"%s\"", dash);
    add(s, "/>\n");
}

void zl_svg_polyline(zl_svg *s, const double *xs, const double *ys, int n, const char *stroke, double width) {
    add(s, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%.2f\" stroke-linejoin=\"round\" points=\"", stroke,
        width);
    for (int i = 0; i < n; i++) add(s, "%s%.2f,%.2f", i ? " " : "", xs[i], ys[i]);
    add(s, "\"/>\n");
}

void zl_svg_circle(zl_svg *s, double cx, double cy, double r, const char *fill, const char *title) {
    add(s, "<circle cx=\"%.2f\" cy=\"%.2f\" r=\"%.2f\" fill=\"%s\"", cx, cy, r, fill);
    if (title) {
        add(s, "><title>");
        add_escaped(s, title);
        add(s, "</title></circle>\n");
    } else {
        add(s, "/>\n");
    }
}

void zl_svg_text(zl_svg *s, double x, double y, double size, const char *anchor, double rotate, const char *fill,
                 int bold, const char *fmt, ...) {
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    add(s, "<text x=\"%.2f\" y=\"%.2f\" font-size=\"%.1f\" text-anchor=\"%s\" fill=\"%s\"", x, y, size, anchor, fill);
    if (bold) add(s, " font-weight=\"bold\"");
    if (rotate != 0) add(s, " transform=\"rotate(%.1f %.2f %.2f)\"", rotate, x, y);
    add(s, ">");
    add_escaped(s, tmp);
    add(s, "</text>\n");
}

int zl_svg_save(zl_svg *s, const char *path, const char *const *inputs, int n_inputs) {
    if (s->failed) return zl_set_error(ZL_ENOMEM, "%s: out of memory while drawing", path);
    size_t keep = s->len;
    add(s, "</svg>\n");
    if (s->failed) return zl_set_error(ZL_ENOMEM, "%s: out of memory while drawing", path);
    int rc = zl_write_file_atomic(path, s->buf, s->len, inputs, n_inputs);
    s->len = keep; /* the document stays open for more drawing */
    s->buf[keep] = 0;
    return rc;
}
