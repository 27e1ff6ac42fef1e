/* A small SVG writer (see svg.h): the document grows in a string buffer, one
 * element per call, and goes to disk through the atomic file writer. Numbers
 * are printed with two decimals so files are small and reproducible. Every
 * element is also kept in a display list, from which svg_raster.c draws the
 * same picture as a PNG when the file name asks for one. */
#include "io/svg.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/svg_internal.h"
#include "ziplora/core.h"
#include "ziplora/fileio.h"

/* "#rrggbb", "#rgb", "white", "black"; anything else (e.g. "none") paints nothing. */
static int parse_color(const char *c, uint8_t rgb[3]) {
    if (!c) return 0;
    if (!strcmp(c, "white")) { rgb[0] = rgb[1] = rgb[2] = 255; return 1; }
    if (!strcmp(c, "black")) { rgb[0] = rgb[1] = rgb[2] = 0; return 1; }
    size_t n = strlen(c);
    if (c[0] != '#' || (n != 7 && n != 4)) return 0;
    unsigned v[6];
    for (size_t i = 1; i < n; i++) {
        char ch = c[i];
        v[i - 1] = ch >= '0' && ch <= '9' ? (unsigned)(ch - '0')
                   : ch >= 'a' && ch <= 'f' ? (unsigned)(ch - 'a' + 10)
                   : ch >= 'A' && ch <= 'F' ? (unsigned)(ch - 'A' + 10)
                                            : 99u;
        if (v[i - 1] > 15) return 0;
    }
    for (int k = 0; k < 3; k++) rgb[k] = (uint8_t)(n == 7 ? v[2 * k] * 16 + v[2 * k + 1] : v[k] * 17);
    return 1;
}

static zl_svg_item *push(zl_svg *s, zl_svg_kind kind) {
    if (s->failed) return NULL;
    if (s->n_items == s->cap_items) {
        int nc = s->cap_items ? 2 * s->cap_items : 256;
        zl_svg_item *ni = realloc(s->items, (size_t)nc * sizeof *ni);
        if (!ni) { s->failed = 1; return NULL; }
        s->items = ni;
        s->cap_items = nc;
    }
    zl_svg_item *it = &s->items[s->n_items++];
    memset(it, 0, sizeof *it);
    it->kind = kind;
    return it;
}

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
    for (int i = 0; i < s->n_items; i++) {
        free(s->items[i].pts);
        free(s->items[i].text);
    }
    free(s->items);
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
    zl_svg_item *it = push(s, ZL_SVG_RECT);
    if (!it) return;
    it->x = x, it->y = y, it->w = w, it->h = h, it->opacity = opacity;
    it->has_fill = parse_color(fill, it->fill);
    it->has_stroke = parse_color(stroke, it->stroke);
    it->width = 1;
}

void zl_svg_line(zl_svg *s, double x1, double y1, double x2, double y2, const char *stroke, double width,
                 const char *dash) {
    add(s, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"%s\" stroke-width=\"%.2f\"", x1, y1, x2, y2,
        stroke, width);
    if (dash) add(s, " stroke-dasharray=\"%s\"", dash);
    add(s, "/>\n");
    zl_svg_item *it = push(s, ZL_SVG_LINE);
    if (!it) return;
    it->pts = malloc(4 * sizeof *it->pts);
    if (!it->pts) { s->failed = 1; return; }
    it->pts[0] = x1, it->pts[1] = y1, it->pts[2] = x2, it->pts[3] = y2;
    it->n_pts = 2;
    it->has_stroke = parse_color(stroke, it->stroke);
    it->width = width;
    if (dash && sscanf(dash, "%lf,%lf", &it->dash_on, &it->dash_off) != 2) it->dash_on = it->dash_off = 0;
}

void zl_svg_polyline(zl_svg *s, const double *xs, const double *ys, int n, const char *stroke, double width) {
    add(s, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%.2f\" stroke-linejoin=\"round\" points=\"", stroke,
        width);
    for (int i = 0; i < n; i++) add(s, "%s%.2f,%.2f", i ? " " : "", xs[i], ys[i]);
    add(s, "\"/>\n");
    zl_svg_item *it = push(s, ZL_SVG_POLYLINE);
    if (!it || n < 1) return;
    it->pts = malloc(2 * (size_t)n * sizeof *it->pts);
    if (!it->pts) { s->failed = 1; return; }
    for (int i = 0; i < n; i++) it->pts[2 * i] = xs[i], it->pts[2 * i + 1] = ys[i];
    it->n_pts = n;
    it->has_stroke = parse_color(stroke, it->stroke);
    it->width = width;
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
    zl_svg_item *it = push(s, ZL_SVG_CIRCLE);
    if (!it) return;
    it->x = cx, it->y = cy, it->w = r;
    it->has_fill = parse_color(fill, it->fill);
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
    zl_svg_item *it = push(s, ZL_SVG_TEXT);
    if (!it) return;
    it->x = x, it->y = y, it->h = size, it->rotate = rotate, it->bold = bold;
    it->anchor = !strcmp(anchor, "middle") ? 1 : !strcmp(anchor, "end") ? 2 : 0;
    it->has_fill = parse_color(fill, it->fill);
    it->text = strdup(tmp);
    if (!it->text) s->failed = 1;
}

static int ends_with_ci(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    if (n < m) return 0;
    for (size_t i = 0; i < m; i++) {
        char a = s[n - m + i], b = suf[i];
        if (a >= 'A' && a <= 'Z') a = (char)(a - 'A' + 'a');
        if (a != b) return 0;
    }
    return 1;
}

int zl_svg_path_is_png(const char *path) { return ends_with_ci(path, ".png"); }

int zl_svg_save(zl_svg *s, const char *path, const char *const *inputs, int n_inputs) {
    return zl_svg_save_as(s, path, zl_svg_path_is_png(path), inputs, n_inputs);
}

int zl_svg_save_as(zl_svg *s, const char *path, int png, const char *const *inputs, int n_inputs) {
    if (s->failed) return zl_set_error(ZL_ENOMEM, "%s: out of memory while drawing", path);
    if (png) {
        zl_image im;
        int rc = zl_svg_render(s, ZL_SVG_PNG_SCALE, &im);
        if (!rc) rc = zl_png_write(path, &im, NULL, 0, inputs, n_inputs);
        zl_image_free(&im);
        return rc;
    }
    size_t keep = s->len;
    add(s, "</svg>\n");
    if (s->failed) return zl_set_error(ZL_ENOMEM, "%s: out of memory while drawing", path);
    int rc = zl_write_file_atomic(path, s->buf, s->len, inputs, n_inputs);
    s->len = keep; /* the document stays open for more drawing */
    s->buf[keep] = 0;
    return rc;
}
