/* A small SVG writer: shapes and text appended to an in-memory document, saved
 * atomically. Used for inspect's plots. Owner: src/io/svg.c. */
#ifndef ZL_IO_SVG_H
#define ZL_IO_SVG_H

typedef struct zl_svg zl_svg;

zl_svg *zl_svg_new(double width, double height);
void zl_svg_free(zl_svg *s);
/* Colors are CSS strings ("#1f77b4", "none"). dash may be NULL ("4,3" for dashed). */
void zl_svg_rect(zl_svg *s, double x, double y, double w, double h, const char *fill, const char *stroke,
                 double opacity);
void zl_svg_line(zl_svg *s, double x1, double y1, double x2, double y2, const char *stroke, double width,
                 const char *dash);
void zl_svg_polyline(zl_svg *s, const double *xs, const double *ys, int n, const char *stroke, double width);
void zl_svg_circle(zl_svg *s, double cx, double cy, double r, const char *fill, const char *title);
/* anchor: "start", "middle", "end"; rotate in degrees about (x, y). Text is XML-escaped. */
void zl_svg_text(zl_svg *s, double x, double y, double size, const char *anchor, double rotate, const char *fill,
                 int bold, const char *fmt, ...) __attribute__((format(printf, 9, 10)));
/* Write the document atomically (never replacing one of `inputs`): SVG, or a PNG drawing of it
 * when the path ends in ".png". */
int zl_svg_save(zl_svg *s, const char *path, const char *const *inputs, int n_inputs);
/* The same, the format given (png 1: PNG, 0: SVG) whatever the name (for temporary files). */
int zl_svg_save_as(zl_svg *s, const char *path, int png, const char *const *inputs, int n_inputs);
/* 1 if `path` names a PNG plot (ends in .png, any case). */
int zl_svg_path_is_png(const char *path);
/* 1 if something failed while building (out of memory). */
int zl_svg_failed(const zl_svg *s);

#endif
