/* Draws the SVG writer's display list as pixels, so that a plot asked for as
 * FILE.png is a real PNG: anti-aliased rectangles, lines (solid or dashed),
 * polylines and discs by pixel coverage, and text in the built-in 5x7 font
 * (capitals; rotation in steps of 90 degrees). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/font5x7.h"
#include "io/svg_internal.h"
#include "ziplora/core.h"

typedef struct {
    zl_image *im;
    double k; /* pixels per unit */
} canvas;

static void blend(canvas *c, int x, int y, const uint8_t rgb[3], double a) {
    if (x < 0 || y < 0 || x >= c->im->w || y >= c->im->h || a <= 0) return;
    if (a > 1) a = 1;
    uint8_t *p = c->im->px + ((size_t)y * c->im->w + x) * 3;
    for (int i = 0; i < 3; i++) p[i] = (uint8_t)lround(p[i] + (rgb[i] - p[i]) * a);
}

static double clamp01(double v) { return v < 0 ? 0 : v > 1 ? 1 : v; }

/* Fill [x0, x1) x [y0, y1) (pixels) with coverage of partial pixels. */
static void fill_rect(canvas *c, double x0, double y0, double x1, double y1, const uint8_t rgb[3], double a) {
    if (x1 < x0) { double t = x0; x0 = x1; x1 = t; }
    if (y1 < y0) { double t = y0; y0 = y1; y1 = t; }
    int ix0 = (int)floor(x0), iy0 = (int)floor(y0), ix1 = (int)ceil(x1), iy1 = (int)ceil(y1);
    if (ix0 < 0) ix0 = 0;
    if (iy0 < 0) iy0 = 0;
    if (ix1 > c->im->w) ix1 = c->im->w;
    if (iy1 > c->im->h) iy1 = c->im->h;
    for (int y = iy0; y < iy1; y++) {
        double cy = clamp01(fmin(y + 1, y1) - fmax(y, y0));
        for (int x = ix0; x < ix1; x++) blend(c, x, y, rgb, a * cy * clamp01(fmin(x + 1, x1) - fmax(x, x0)));
    }
}

/* Coverage mask of one stroke (a polyline of n points, pixel coordinates), so that
 * joins are not painted twice; then blended once. dash_on/off in pixels (0: solid). */
static int stroke_path(canvas *c, const double *pts, int n, double width, double dash_on, double dash_off,
                       const uint8_t rgb[3]) {
    if (n < 1) return ZL_OK;
    double hw = width / 2 < 0.5 ? 0.5 : width / 2; /* thinner than a pixel: drawn one pixel wide, as renderers do */
    double minx = pts[0], maxx = pts[0], miny = pts[1], maxy = pts[1];
    for (int i = 1; i < n; i++) {
        minx = fmin(minx, pts[2 * i]), maxx = fmax(maxx, pts[2 * i]);
        miny = fmin(miny, pts[2 * i + 1]), maxy = fmax(maxy, pts[2 * i + 1]);
    }
    int bx0 = (int)floor(minx - hw - 1), by0 = (int)floor(miny - hw - 1), bx1 = (int)ceil(maxx + hw + 1),
        by1 = (int)ceil(maxy + hw + 1);
    if (bx0 < 0) bx0 = 0;
    if (by0 < 0) by0 = 0;
    if (bx1 > c->im->w) bx1 = c->im->w;
    if (by1 > c->im->h) by1 = c->im->h;
    if (bx1 <= bx0 || by1 <= by0) return ZL_OK;
    const int mw = bx1 - bx0, mh = by1 - by0;
    float *mask = calloc((size_t)mw * mh, sizeof *mask);
    if (!mask) return zl_set_error(ZL_ENOMEM, "out of memory drawing a plot");
    double along = 0; /* path length before this segment, for the dash pattern */
    for (int i = 0; i + 1 < n || (n == 1 && i == 0); i++) {
        double ax = pts[2 * i], ay = pts[2 * i + 1];
        double bx = n > 1 ? pts[2 * i + 2] : ax, by = n > 1 ? pts[2 * i + 3] : ay;
        double dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy, len = sqrt(len2);
        int x0 = (int)floor(fmin(ax, bx) - hw - 1) - bx0, x1 = (int)ceil(fmax(ax, bx) + hw + 1) - bx0;
        int y0 = (int)floor(fmin(ay, by) - hw - 1) - by0, y1 = (int)ceil(fmax(ay, by) + hw + 1) - by0;
        if (x0 < 0) x0 = 0;
        if (y0 < 0) y0 = 0;
        if (x1 > mw) x1 = mw;
        if (y1 > mh) y1 = mh;
        for (int y = y0; y < y1; y++)
            for (int x = x0; x < x1; x++) {
                double px = bx0 + x + 0.5, py = by0 + y + 0.5;
                double t = len2 > 0 ? ((px - ax) * dx + (py - ay) * dy) / len2 : 0;
                t = clamp01(t);
                double qx = ax + t * dx - px, qy = ay + t * dy - py;
                double cov = clamp01(hw + 0.5 - sqrt(qx * qx + qy * qy));
                if (cov <= 0) continue;
                if (dash_on > 0 && dash_off > 0 && fmod(along + t * len, dash_on + dash_off) >= dash_on) continue;
                float *m = &mask[(size_t)y * mw + x];
                if (cov > *m) *m = (float)cov;
            }
        along += len;
        if (n == 1) break;
    }
    for (int y = 0; y < mh; y++)
        for (int x = 0; x < mw; x++) blend(c, bx0 + x, by0 + y, rgb, mask[(size_t)y * mw + x]);
    free(mask);
    return ZL_OK;
}

static void disc(canvas *c, double cx, double cy, double r, const uint8_t rgb[3]) {
    int x0 = (int)floor(cx - r - 1), x1 = (int)ceil(cx + r + 1), y0 = (int)floor(cy - r - 1), y1 = (int)ceil(cy + r + 1);
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            double dx = x + 0.5 - cx, dy = y + 0.5 - cy;
            blend(c, x, y, rgb, clamp01(r + 0.5 - sqrt(dx * dx + dy * dy)));
        }
}

/* Text in the 5x7 font, sized like the sans-serif text the SVG asks for: 6 dots per character
 * across 0.5 em (about a sans-serif's mean advance, so layouts made for the SVG fit) and 7 dots of
 * 0.7 em (capital height); the glyph's bottom row sits on the baseline y. Rotation by a
 * multiple of 90 degrees about (x, y). */
static void text(canvas *c, const zl_svg_item *it) {
    const double k = c->k, gw = 0.5 * it->h * k / 6, gh = 0.7 * it->h * k / 7;
    /* one character per UTF-8 sequence (what the font lacks draws as '?') */
    char chars[1024];
    int n = 0;
    for (const unsigned char *q = (const unsigned char *)it->text; *q && n < (int)sizeof chars; q++)
        if ((*q & 0xc0) != 0x80) chars[n++] = *q < 0x80 ? (char)*q : '?';
    const double width = n > 0 ? (6 * n - 1) * gw : 0;
    const double ax = it->x * k, ay = it->y * k;
    double start = it->anchor == 1 ? -width / 2.0 : it->anchor == 2 ? -width : 0;
    int quarter = (int)lround(it->rotate / 90) % 4;
    if (quarter < 0) quarter += 4;
    for (int i = 0; i < n; i++) {
        const uint8_t *gl = zl_font5x7(chars[i]);
        for (int gy = 0; gy < 7; gy++)
            for (int gx = 0; gx < 5; gx++) {
                if (!(gl[gy] >> (4 - gx) & 1)) continue;
                /* bold: each dot widened by half a dot */
                const double du = it->bold ? gw * 1.5 : gw;
                /* the dot's cell in text coordinates: u along the text, v downwards from the baseline */
                double u = start + (6 * i + gx) * gw, v = (gy - 7) * gh;
                double x0, y0, x1, y1;
                switch (quarter) {
                case 0: x0 = ax + u, y0 = ay + v, x1 = x0 + du, y1 = y0 + gh; break;
                case 1: x0 = ax - v - gh, y0 = ay + u, x1 = x0 + gh, y1 = y0 + du; break;    /* 90: clockwise */
                case 2: x0 = ax - u - du, y0 = ay - v - gh, x1 = x0 + du, y1 = y0 + gh; break;
                default: x0 = ax + v, y0 = ay - u - du, x1 = x0 + gh, y1 = y0 + du; break; /* -90: upwards */
                }
                fill_rect(c, x0, y0, x1, y1, it->fill, 1);
            }
    }
}

int zl_svg_render(const zl_svg *s, double scale, zl_image *out) {
    memset(out, 0, sizeof *out);
    if (s->failed) return zl_set_error(ZL_ENOMEM, "out of memory while drawing");
    int W = (int)ceil(s->w * scale), H = (int)ceil(s->h * scale);
    if (W < 1 || H < 1 || W > ZL_IMAGE_MAX_SIDE || H > ZL_IMAGE_MAX_SIDE)
        return zl_set_error(ZL_EINVAL, "plot of %dx%d pixels", W, H);
    int rc = zl_image_alloc(out, W, H, 3);
    if (rc) return rc;
    memset(out->px, 255, (size_t)W * H * 3);
    canvas c = {out, scale};
    for (int i = 0; i < s->n_items && !rc; i++) {
        const zl_svg_item *it = &s->items[i];
        switch (it->kind) {
        case ZL_SVG_RECT:
            if (it->has_fill)
                fill_rect(&c, it->x * scale, it->y * scale, (it->x + it->w) * scale, (it->y + it->h) * scale, it->fill,
                          it->opacity > 0 ? it->opacity : 1);
            if (it->has_stroke) {
                double x0 = it->x * scale, y0 = it->y * scale, x1 = (it->x + it->w) * scale, y1 = (it->y + it->h) * scale;
                double p[10] = {x0, y0, x1, y0, x1, y1, x0, y1, x0, y0};
                rc = stroke_path(&c, p, 5, it->width * scale, 0, 0, it->stroke);
            }
            break;
        case ZL_SVG_LINE:
        case ZL_SVG_POLYLINE: {
            if (!it->has_stroke) break;
            double *p = malloc(2 * (size_t)it->n_pts * sizeof *p);
            if (!p) { rc = zl_set_error(ZL_ENOMEM, "out of memory drawing a plot"); break; }
            for (int j = 0; j < 2 * it->n_pts; j++) p[j] = it->pts[j] * scale;
            rc = stroke_path(&c, p, it->n_pts, it->width * scale, it->dash_on * scale, it->dash_off * scale, it->stroke);
            free(p);
            break;
        }
        case ZL_SVG_CIRCLE:
            if (it->has_fill) disc(&c, it->x * scale, it->y * scale, it->w * scale, it->fill);
            break;
        case ZL_SVG_TEXT:
            if (it->has_fill && it->text) text(&c, it);
            break;
        }
    }
    if (rc) zl_image_free(out);
    return rc;
}
