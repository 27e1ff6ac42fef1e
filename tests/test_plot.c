/* Plots as PNG (src/io/svg_raster.c): the drawing of the SVG writer's shapes checked pixel by
 * pixel where the geometry lands on whole pixels (a filled rectangle, a horizontal line, a
 * dashed line, a disc's centre and outside, text in the 5x7 font upright and rotated, with the
 * glyphs written out here), and a .png name giving a PNG of exactly that drawing. */
#include <stdlib.h>
#include <string.h>

#include "io/svg_internal.h"
#include "testlib.h"

static const uint8_t *px(const zl_image *im, int x, int y) { return im->px + ((size_t)y * im->w + x) * 3; }
static int is(const zl_image *im, int x, int y, int r, int g, int b) {
    const uint8_t *p = px(im, x, y);
    return p[0] == r && p[1] == g && p[2] == b;
}

static void test_shapes(void) {
    zl_svg *s = zl_svg_new(40, 30);
    zl_svg_rect(s, 10, 5, 10, 10, "#ff0000", NULL, 1);
    zl_svg_line(s, 0, 25, 40, 25, "#0000ff", 1, NULL);
    zl_svg_line(s, 0, 20, 40, 20, "#00ff00", 1, "4,3");
    zl_svg_circle(s, 30, 10, 3, "#000", NULL);
    zl_image im = {0};
    CHECK_OK(zl_svg_render(s, 2, &im));
    CHECK(im.w == 80 && im.h == 60 && im.c == 3);
    if (im.px && im.w == 80 && im.h == 60) {
        int bad = 0;
        /* the rectangle covers pixels [20, 40) x [10, 30) exactly */
        for (int y = 0; y < 60; y++)
            for (int x = 0; x < 80; x++) {
                int in = x >= 20 && x < 40 && y >= 10 && y < 30;
                if (in) bad += !is(&im, x, y, 255, 0, 0);
                else if (y < 36 && !(x >= 52 && x < 68 && y >= 12 && y < 28)) bad += !is(&im, x, y, 255, 255, 255);
            }
        CHECKM(bad == 0, "rectangle: %d pixels wrong", bad);
        /* width 1 at y = 25 units = 50 px, 2 px wide: rows 49 and 50 painted, 47 and 52 untouched */
        bad = 0;
        for (int x = 0; x < 80; x++)
            bad += !is(&im, x, 49, 0, 0, 255) + !is(&im, x, 50, 0, 0, 255) + !is(&im, x, 47, 255, 255, 255) +
                   !is(&im, x, 52, 255, 255, 255);
        CHECKM(bad == 0, "line: %d pixels wrong", bad);
        /* dashes of 4 on, 3 off units = 8 px painted, 6 px not, from x = 0 */
        bad = 0;
        for (int x = 0; x < 80; x++) {
            int on = (x % 14) < 8;
            bad += !(on ? is(&im, x, 39, 0, 255, 0) && is(&im, x, 40, 0, 255, 0)
                        : is(&im, x, 39, 255, 255, 255) && is(&im, x, 40, 255, 255, 255));
        }
        CHECKM(bad == 0, "dashed line: %d pixels wrong", bad);
        /* the disc of radius 6 px about (60, 20): solid near the centre, nothing beyond 7 px */
        CHECK(is(&im, 59, 19, 0, 0, 0) && is(&im, 60, 20, 0, 0, 0) && is(&im, 55, 20, 0, 0, 0));
        CHECK(is(&im, 60, 12, 255, 255, 255) && is(&im, 67, 20, 255, 255, 255) && is(&im, 54, 14, 255, 255, 255));
    }
    zl_image_free(&im);
    zl_svg_free(s);
}

/* Text at size 12 drawn 5 px per unit: a font dot is 0.5 * 12 * 5 / 6 = 5 px wide and
 * 0.7 * 12 * 5 / 7 = 6 px tall, so every dot is a whole block of pixels. */
static void test_text(void) {
    static const char *const I[7] = {"01110", "00100", "00100", "00100", "00100", "00100", "01110"};
    static const char *const L[7] = {"10000", "10000", "10000", "10000", "10000", "10000", "11111"};
    for (int rot = 0; rot < 2; rot++) {
        zl_svg *s = zl_svg_new(30, 30);
        /* upright: "IL" from (2, 20); rotated -90 (reading upwards): "L" about (20, 25) */
        if (!rot) zl_svg_text(s, 2, 20, 12, "start", 0, "#000000", 0, "IL");
        else zl_svg_text(s, 20, 25, 12, "start", -90, "#000000", 0, "l");
        zl_image im = {0};
        CHECK_OK(zl_svg_render(s, 5, &im));
        int bad = 0, lit = 0;
        for (int y = 0; im.px && y < im.h; y++)
            for (int x = 0; x < im.w; x++) {
                int want = 0;
                if (!rot) {
                    /* text coordinates: u = x - 10 along, v = y - 100 + 42 down from the glyph top */
                    int u = x - 10, v = y - (100 - 42);
                    if (u >= 0 && v >= 0 && v < 42 && u < 55) {
                        int gx = u / 5, gy = v / 6;
                        if (gx < 5) want = I[gy][gx] == '1';
                        else if (gx >= 6) want = L[gy][gx - 6] == '1';
                    }
                } else {
                    /* rotated -90 about (100, 125): along the text is upwards from y = 125, the glyph's
                     * top edge faces left: dot (gx, gy) covers x in [100 - 42 + 6 gy, +6), y in [125 - 5 (gx + 1), +5) */
                    int v = x - (100 - 42), u = 125 - 1 - y;
                    if (u >= 0 && v >= 0 && v < 42 && u < 25) want = L[v / 6][u / 5] == '1';
                }
                lit += want;
                bad += !is(&im, x, y, want ? 0 : 255, want ? 0 : 255, want ? 0 : 255);
            }
        CHECKM(bad == 0 && lit > 0, "text%s: %d pixels wrong (%d lit)", rot ? " rotated -90" : "", bad, lit);
        zl_image_free(&im);
        zl_svg_free(s);
    }
}

static void test_save_png(void) {
    zl_svg *s = zl_svg_new(50, 20);
    zl_svg_rect(s, 0, 0, 50, 20, "#eef2f7", "#333", 1);
    double xs[4] = {2, 15, 30, 48}, ys[4] = {18, 3, 12, 5};
    zl_svg_polyline(s, xs, ys, 4, "#1f77b4", 1.5);
    zl_svg_text(s, 25, 12, 9, "middle", 0, "#d62728", 1, "loss 0.5%%");
    zl_image want = {0}, got = {0};
    CHECK_OK(zl_svg_render(s, ZL_SVG_PNG_SCALE, &want));
    char p1[1024], p2[1024];
    snprintf(p1, sizeof p1, "%s", zt_tmp("plot.PNG"));
    snprintf(p2, sizeof p2, "%s", zt_tmp("plot.svg"));
    CHECK_OK(zl_svg_save(s, p1, NULL, 0));
    CHECK_OK(zl_svg_save(s, p2, NULL, 0));
    CHECK_OK(zl_image_read(p1, &got));
    CHECK(want.px && got.px && got.w == 100 && got.h == 40 && !memcmp(want.px, got.px, (size_t)100 * 40 * 3));
    char *svg = NULL;
    size_t n = 0;
    CHECK_OK(zl_read_file(p2, &svg, &n));
    CHECK(svg && !strncmp(svg, "<?xml", 5) && strstr(svg, "<polyline"));
    free(svg);
    /* the format can be forced whatever the name (temporary files) */
    char p3[1024];
    snprintf(p3, sizeof p3, "%s", zt_tmp("plot.tmp"));
    CHECK_OK(zl_svg_save_as(s, p3, 1, NULL, 0));
    zl_image t = {0};
    CHECK_OK(zl_image_read(p3, &t));
    CHECK(t.px && !memcmp(t.px, want.px, (size_t)100 * 40 * 3));
    zl_image_free(&t);
    zl_image_free(&want);
    zl_image_free(&got);
    zl_svg_free(s);
}

int main(void) {
    test_shapes();
    test_text();
    test_save_png();
    return zt_done();
}
