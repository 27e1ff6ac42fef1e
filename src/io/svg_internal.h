/* The SVG writer's display list, shared by svg.c (which records it) and
 * svg_raster.c (which draws it). Owner: src/io/svg.c. */
#ifndef ZL_IO_SVG_INTERNAL_H
#define ZL_IO_SVG_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "io/svg.h"
#include "ziplora/image.h"

/* Pixels per SVG unit in a PNG plot. */
#define ZL_SVG_PNG_SCALE 2

typedef enum { ZL_SVG_RECT, ZL_SVG_LINE, ZL_SVG_POLYLINE, ZL_SVG_CIRCLE, ZL_SVG_TEXT } zl_svg_kind;

typedef struct {
    zl_svg_kind kind;
    double x, y, w, h;        /* rect; circle: centre and w = radius; text: anchor point, h = font size */
    double opacity;           /* rect fill */
    double width;             /* stroke width */
    double dash_on, dash_off; /* line dash (0: solid) */
    double rotate;            /* text, degrees */
    double *pts;              /* line / polyline: x0 y0 x1 y1 ... */
    int n_pts;
    int has_fill, has_stroke, bold, anchor; /* anchor 0 start, 1 middle, 2 end */
    uint8_t fill[3], stroke[3];
    char *text;
} zl_svg_item;

struct zl_svg {
    char *buf;
    size_t len, cap;
    int failed;
    double w, h;
    zl_svg_item *items;
    int n_items, cap_items;
};

/* Draw the document at `scale` pixels per unit into a new RGB image (white ground). */
int zl_svg_render(const zl_svg *s, double scale, zl_image *out);

#endif
