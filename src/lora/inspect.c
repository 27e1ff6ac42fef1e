/* What `inspect` measures, per layer: ||dW||_F, the paper's sparsity
 * observation (how much dW changes when its 80 % / 90 % smallest-magnitude
 * entries are zeroed), and for two LoRAs the mean |cosine| between matching
 * columns of dW_a and dW_b (the paper's Fig. 3). Only one layer's dense dW is
 * ever built (for the sparsity numbers); the cosines come from the factors.
 * Also draws those numbers as an SVG plot. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/svg.h"
#include "ziplora.h"

/* Partition v[lo..hi) so that v[0..k) holds the k smallest values (any order).
 * Three-way quickselect, so runs of equal values (zeros) cannot make it quadratic. */
static void select_smallest(float *v, size_t n, size_t k) {
    size_t lo = 0, hi = n;
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    while (hi - lo > 1 && k > lo && k < hi) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        float piv = v[lo + (size_t)((seed >> 33) % (hi - lo))];
        size_t lt = lo, i = lo, gt = hi;
        while (i < gt) {
            if (v[i] < piv) { float t = v[lt]; v[lt] = v[i]; v[i] = t; lt++; i++; }
            else if (v[i] > piv) { gt--; float t = v[gt]; v[gt] = v[i]; v[i] = t; }
            else i++;
        }
        /* [lo, lt) < piv, [lt, gt) == piv, [gt, hi) > piv */
        if (k <= lt) hi = lt;
        else if (k >= gt) lo = gt;
        else return;
    }
}

/* Sum of the k smallest values of v[0..n) (all >= 0). Non-negative floats order like
 * their bit patterns, so one histogram pass over the top 16 bits finds the bucket
 * holding the k-th value; only that bucket's entries are then selected exactly. */
static double sum_smallest(const float *v, size_t n, size_t k, const size_t *cnt, const double *bsum) {
    if (k == 0) return 0;
    size_t cum = 0;
    double base = 0;
    uint32_t b = 0;
    for (; b < 65536; b++) {
        if (cum + cnt[b] >= k) break;
        cum += cnt[b];
        base += bsum[b];
    }
    if (b == 65536) return base;
    size_t need = k - cum, m = 0;
    float *tmp = malloc(sizeof(float) * (cnt[b] ? cnt[b] : 1));
    if (!tmp) return NAN;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        if ((u >> 16) == b) tmp[m++] = v[i];
    }
    select_smallest(tmp, m, need);
    double s = base;
    for (size_t i = 0; i < need; i++) s += tmp[i];
    free(tmp);
    return s;
}

int zl_layer_stats_compute(const zl_lora_layer *l, zl_layer_stats *st) {
    memset(st, 0, sizeof *st);
    size_t n = (size_t)l->in_features * l->kh * l->kw, N = (size_t)l->out_features * n;
    if (!l->down || !l->up) return zl_set_error(ZL_EINVAL, "layer '%s' has no values loaded", l->module);
    float *dw = malloc(N * sizeof(float)); /* [out, in*kh*kw] */
    size_t *cnt = calloc(65536, sizeof(size_t));
    double *bsum = calloc(65536, sizeof(double));
    if (!dw || !cnt || !bsum) {
        free(dw);
        free(cnt);
        free(bsum);
        return zl_set_error(ZL_ENOMEM, "layer '%s': out of memory for its dense dW", l->module);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, l->out_features, (int)n, l->rank, zl_lora_scale(l), l->up,
                l->rank, l->down, (int)n, 0.0f, dw, (int)n);
    /* squares keep the magnitude order, so the k smallest |entries| are the k smallest squares */
    double tot = 0;
    for (size_t i = 0; i < N; i++) {
        float q = dw[i] * dw[i];
        dw[i] = q;
        uint32_t u;
        memcpy(&u, &q, 4);
        cnt[u >> 16]++;
        bsum[u >> 16] += q;
        tot += q;
    }
    size_t k90 = (size_t)floor(0.9 * (double)N), k80 = (size_t)floor(0.8 * (double)N);
    double s80 = sum_smallest(dw, N, k80, cnt, bsum);
    double s90 = sum_smallest(dw, N, k90, cnt, bsum);
    free(dw);
    free(cnt);
    free(bsum);
    if (!isfinite(tot) || !isfinite(s80) || !isfinite(s90))
        return zl_set_error(ZL_ENUMERIC, "layer '%s': dW is not finite", l->module);
    st->norm = sqrt(tot);
    st->prune80 = tot > 0 ? sqrt(s80 / tot) : 0;
    st->prune90 = tot > 0 ? sqrt(s90 / tot) : 0;
    return ZL_OK;
}

static double *to_double(const float *x, size_t n) {
    double *d = malloc((n ? n : 1) * sizeof(double));
    if (d)
        for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

int zl_column_cosine(const zl_lora_layer *a, const zl_lora_layer *b, double *mean, int *n_used) {
    *mean = NAN;
    if (n_used) *n_used = 0;
    if (a->kind != b->kind || a->in_features != b->in_features || a->out_features != b->out_features ||
        a->kh != b->kh || a->kw != b->kw)
        return zl_set_error(ZL_ESHAPE, "module '%s': the two LoRAs' shapes differ", a->module);
    if (!a->down || !a->up || !b->down || !b->up)
        return zl_set_error(ZL_EINVAL, "layer '%s' has no values loaded", a->module);
    int ra = a->rank, rb = b->rank, out = a->out_features;
    size_t blk = (size_t)a->kh * a->kw, n = (size_t)a->in_features * blk;
    double *ua = to_double(a->up, (size_t)out * ra), *ub = to_double(b->up, (size_t)out * rb);
    double *da = to_double(a->down, (size_t)ra * n), *db = to_double(b->down, (size_t)rb * n);
    double *gaa = malloc(sizeof(double) * (size_t)ra * ra), *gbb = malloc(sizeof(double) * (size_t)rb * rb);
    double *gab = malloc(sizeof(double) * (size_t)ra * rb);
    double *ta = malloc(sizeof(double) * (size_t)ra * n);  /* Gaa A_a  [ra, n] */
    double *tb = malloc(sizeof(double) * (size_t)rb * n);  /* Gbb A_b  [rb, n] */
    double *tab = malloc(sizeof(double) * (size_t)ra * n); /* Gab A_b  [ra, n] */
    int rc = ZL_OK;
    if (!ua || !ub || !da || !db || !gaa || !gbb || !gab || !ta || !tb || !tab) {
        rc = zl_set_error(ZL_ENOMEM, "out of memory (column cosine of '%s')", a->module);
        goto done;
    }
    /* dW_x[:, c] = B_x A_x[:, c], so <dW_a[:, c], dW_b[:, c]> = A_a[:, c]^T (B_a^T B_b) A_b[:, c] */
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ra, ra, out, 1.0, ua, ra, ua, ra, 0.0, gaa, ra);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rb, rb, out, 1.0, ub, rb, ub, rb, 0.0, gbb, rb);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ra, rb, out, 1.0, ua, ra, ub, rb, 0.0, gab, rb);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ra, (int)n, ra, 1.0, gaa, ra, da, (int)n, 0.0, ta, (int)n);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rb, (int)n, rb, 1.0, gbb, rb, db, (int)n, 0.0, tb, (int)n);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ra, (int)n, rb, 1.0, gab, rb, db, (int)n, 0.0, tab, (int)n);
    {
        double sum = 0;
        int used = 0;
        for (int ci = 0; ci < a->in_features; ci++) {
            double dot = 0, na = 0, nb = 0;
            for (size_t q = 0; q < blk; q++) {
                size_t c = (size_t)ci * blk + q;
                for (int t = 0; t < ra; t++) {
                    na += da[(size_t)t * n + c] * ta[(size_t)t * n + c];
                    dot += da[(size_t)t * n + c] * tab[(size_t)t * n + c];
                }
                for (int t = 0; t < rb; t++) nb += db[(size_t)t * n + c] * tb[(size_t)t * n + c];
            }
            if (na <= 0 || nb <= 0) continue;
            double cs = fabs(dot) / sqrt(na * nb);
            sum += cs > 1 ? 1 : cs;
            used++;
        }
        *mean = used ? sum / used : 0.0;
        if (n_used) *n_used = used;
    }
done:
    free(ua);
    free(ub);
    free(da);
    free(db);
    free(gaa);
    free(gbb);
    free(gab);
    free(ta);
    free(tb);
    free(tab);
    return rc;
}

static int cmp_layer(const zl_lora_layer *a, const zl_lora_layer *b) {
    if (a->part != b->part) return (int)a->part - (int)b->part;
    return strcmp(a->module, b->module);
}

static int cmp_ptr(const void *x, const void *y) {
    return cmp_layer(*(const zl_lora_layer *const *)x, *(const zl_lora_layer *const *)y);
}

void zl_inspect_result_free(zl_inspect_result *r) {
    if (!r) return;
    free(r->rows);
    memset(r, 0, sizeof *r);
}

int zl_inspect(const zl_lora *a, const zl_lora *b, zl_inspect_result *res) {
    memset(res, 0, sizeof *res);
    res->mean_cos = NAN;
    if (!a) return zl_set_error(ZL_EINVAL, "inspect: no LoRA given");
    if (b && a->family != ZL_FAMILY_UNKNOWN && b->family != ZL_FAMILY_UNKNOWN && a->family != b->family)
        return zl_set_error(ZL_EINVAL, "cannot compare LoRAs of different model families: %s is %s, %s is %s",
                            a->path ? a->path : "A", zl_family_name(a->family), b->path ? b->path : "B",
                            zl_family_name(b->family));
    int na = a->n, nb = b ? b->n : 0;
    const zl_lora_layer **pa = malloc(sizeof *pa * (size_t)(na + 1)), **pb = malloc(sizeof *pb * (size_t)(nb + 1));
    res->rows = calloc((size_t)(na + nb + 1), sizeof *res->rows);
    int rc = ZL_OK;
    if (!pa || !pb || !res->rows) { rc = zl_set_error(ZL_ENOMEM, "inspect: out of memory"); goto done; }
    for (int i = 0; i < na; i++) pa[i] = &a->layers[i];
    for (int i = 0; i < nb; i++) pb[i] = &b->layers[i];
    qsort(pa, (size_t)na, sizeof *pa, cmp_ptr);
    qsort(pb, (size_t)nb, sizeof *pb, cmp_ptr);
    double csum = 0;
    int i = 0, j = 0;
    while ((i < na || j < nb) && !rc) {
        zl_inspect_row *r = &res->rows[res->n];
        int d = i >= na ? 1 : j >= nb ? -1 : cmp_layer(pa[i], pb[j]);
        if (d <= 0) r->a = pa[i++];
        if (d >= 0) r->b = pb[j++];
        const zl_lora_layer *l = r->a ? r->a : r->b;
        r->part = l->part;
        r->module = l->module;
        r->cos = NAN;
        if (r->a && (rc = zl_layer_stats_compute(r->a, &r->sa))) break;
        if (r->b && (rc = zl_layer_stats_compute(r->b, &r->sb))) break;
        if (r->a && r->b) {
            if ((rc = zl_column_cosine(r->a, r->b, &r->cos, NULL))) break;
            csum += r->cos;
            res->n_common++;
        }
        res->n++;
    }
    if (res->n_common) res->mean_cos = csum / res->n_common;
done:
    free(pa);
    free(pb);
    if (rc) zl_inspect_result_free(res);
    return rc;
}

/* ---- plot ---- */

/* Layer group for the plot's bands: "down 1", "mid", "up 0", "te1", ... */
static void group_of(const zl_inspect_row *r, char *g, size_t n) {
    if (r->part != ZL_PART_UNET) {
        snprintf(g, n, "%s", r->part == ZL_PART_TE1 ? "text enc. 1" : "text enc. 2");
        return;
    }
    int k;
    if (sscanf(r->module, "down_blocks.%d", &k) == 1) snprintf(g, n, "down %d", k);
    else if (sscanf(r->module, "up_blocks.%d", &k) == 1) snprintf(g, n, "up %d", k);
    else if (!strncmp(r->module, "mid_block", 9)) snprintf(g, n, "mid");
    else snprintf(g, n, "other");
}

static double nice_max(double v) {
    if (!(v > 0) || !isfinite(v)) return 1.0;
    double p = pow(10, floor(log10(v)));
    const double steps[] = {1, 2, 2.5, 5, 10};
    for (int i = 0; i < 5; i++)
        if (steps[i] * p >= v * 1.0001) return steps[i] * p;
    return 10 * p;
}

typedef struct {
    double x0, y0, w, h; /* plot area */
    double ymax;
    int n;
} panel;

static double px(const panel *p, int i) { return p->x0 + (i + 0.5) * p->w / p->n; }
static double py(const panel *p, double v) { return p->y0 + p->h - (v / p->ymax) * p->h; }

static void draw_panel_frame(zl_svg *s, const panel *p, const zl_inspect_result *r, const char *title,
                             const char *ylabel, int pct) {
    /* layer-group bands, labelled on top */
    char g[32], prev[32] = "";
    int start = 0, band = 0;
    for (int i = 0; i <= r->n; i++) {
        if (i < r->n) group_of(&r->rows[i], g, sizeof g);
        if (i == r->n || strcmp(g, prev)) {
            if (i > 0) {
                double xa = p->x0 + start * p->w / p->n, xb = p->x0 + i * p->w / p->n;
                if (band++ % 2 == 0) zl_svg_rect(s, xa, p->y0, xb - xa, p->h, "#eef2f7", NULL, 1);
                if (xb - xa > 24) zl_svg_text(s, (xa + xb) / 2, p->y0 + 13, 10, "middle", 0, "#556", 0, "%s", prev);
            }
            start = i;
            if (i < r->n) snprintf(prev, sizeof prev, "%s", g);
        }
    }
    for (int t = 0; t <= 5; t++) {
        double v = p->ymax * t / 5, y = py(p, v);
        zl_svg_line(s, p->x0, y, p->x0 + p->w, y, "#d0d4da", 0.6, t ? "3,3" : NULL);
        if (pct) zl_svg_text(s, p->x0 - 6, y + 3.5, 10, "end", 0, "#333", 0, "%g%%", 100 * v);
        else zl_svg_text(s, p->x0 - 6, y + 3.5, 10, "end", 0, "#333", 0, "%.3g", v);
    }
    zl_svg_line(s, p->x0, p->y0, p->x0, p->y0 + p->h, "#333", 1, NULL);
    zl_svg_line(s, p->x0, p->y0 + p->h, p->x0 + p->w, p->y0 + p->h, "#333", 1, NULL);
    zl_svg_text(s, p->x0, p->y0 - 10, 14, "start", 0, "#111", 1, "%s", title);
    zl_svg_text(s, p->x0 - 46, p->y0 + p->h / 2, 11, "middle", -90, "#333", 0, "%s", ylabel);
    zl_svg_text(s, p->x0 + p->w / 2, p->y0 + p->h + 18, 11, "middle", 0, "#333", 0,
                "layers (%d, in UNet/text-encoder order, grouped by block)", r->n);
}

/* One legend entry at (*x, *y), laid out after the previous one: its width is estimated from the
 * label (0.6 em a character, a little over a sans-serif's mean), and an entry that would pass
 * x_max starts a new line. */
static void legend_item(zl_svg *s, double *x, double *y, double x0, double x_max, const char *color, int dashed,
                        const char *label) {
    double w = 28 + 0.6 * 11 * (double)strlen(label) + 24;
    if (*x > x0 && *x + w > x_max) {
        *x = x0;
        *y += 18;
    }
    zl_svg_line(s, *x, *y, *x + 22, *y, color, 2.2, dashed ? "5,3" : NULL);
    zl_svg_circle(s, *x + 11, *y, 3, color, NULL);
    zl_svg_text(s, *x + 28, *y + 4, 11, "start", 0, "#222", 0, "%s", label);
    *x += w;
}

int zl_inspect_plot(const char *path, const zl_inspect_result *r, const char *label_a, const char *label_b,
                    const char *const *inputs, int n_inputs) {
    if (!r || r->n <= 0) return zl_set_error(ZL_EINVAL, "%s: nothing to plot", path);
    int two = r->n_common > 0;
    double W = 1200, ml = 80, mr = 30, ph = 260;
    double H = two ? 760 : 420;
    zl_svg *s = zl_svg_new(W, H);
    if (!s) return zl_set_error(ZL_ENOMEM, "%s: out of memory", path);
    const char *ca = "#1f77b4", *cb = "#d62728", *csim = "#6a3d9a";
    zl_svg_text(s, W / 2, 28, 17, "middle", 0, "#111", 1, "%s%s%s", label_a, two ? " vs " : "", two ? label_b : "");
    double y = 70;
    if (two) {
        panel p = {ml, y, W - ml - mr, ph, 0, r->n};
        double mx = 0;
        for (int i = 0; i < r->n; i++)
            if (isfinite(r->rows[i].cos) && r->rows[i].cos > mx) mx = r->rows[i].cos;
        p.ymax = nice_max(mx > 0 ? mx : 0.1);
        draw_panel_frame(s, &p, r, "Mean |cosine| between matching columns of dW (paper Fig. 3)", "mean |cos|", 0);
        double bw = p.w / p.n;
        for (int i = 0; i < r->n; i++) {
            if (!isfinite(r->rows[i].cos)) continue;
            double yy = py(&p, r->rows[i].cos);
            zl_svg_rect(s, px(&p, i) - bw * 0.4, yy, bw * 0.8 > 0.5 ? bw * 0.8 : 0.5, p.y0 + p.h - yy, csim, NULL, 0.85);
        }
        double ym = py(&p, r->mean_cos);
        zl_svg_line(s, p.x0, ym, p.x0 + p.w, ym, "#ff7f0e", 1.6, "6,4");
        zl_svg_text(s, p.x0 + p.w - 4, ym - 5, 11, "end", 0, "#c25e00", 1, "overall mean %.4f (%d shared layers)",
                    r->mean_cos, r->n_common);
        y += ph + 90;
    }
    {
        panel p = {ml, y, W - ml - mr, ph, 0, r->n};
        double mx = 0;
        for (int i = 0; i < r->n; i++) {
            const zl_inspect_row *q = &r->rows[i];
            if (q->a && q->sa.prune80 > mx) mx = q->sa.prune80;
            if (q->a && q->sa.prune90 > mx) mx = q->sa.prune90;
            if (q->b && q->sb.prune80 > mx) mx = q->sb.prune80;
            if (q->b && q->sb.prune90 > mx) mx = q->sb.prune90;
        }
        p.ymax = nice_max(mx > 0 ? mx : 0.1);
        draw_panel_frame(s, &p, r, "Sparsity: relative change of dW when its smallest entries are zeroed (paper Fig. 2)",
                         "||dW - pruned|| / ||dW||", 1);
        for (int side = 0; side < (r->n_common || label_b ? 2 : 1); side++)
            for (int lvl = 0; lvl < 2; lvl++) {
                double *xs = malloc(sizeof(double) * (size_t)r->n), *ys = malloc(sizeof(double) * (size_t)r->n);
                int m = 0;
                for (int i = 0; xs && ys && i < r->n; i++) {
                    const zl_inspect_row *q = &r->rows[i];
                    const zl_layer_stats *st = side ? (q->b ? &q->sb : NULL) : (q->a ? &q->sa : NULL);
                    if (!st) continue;
                    xs[m] = px(&p, i);
                    ys[m] = py(&p, lvl ? st->prune90 : st->prune80);
                    m++;
                }
                const char *col = side ? cb : ca;
                if (m > 1) zl_svg_polyline(s, xs, ys, m, col, lvl ? 1.6 : 1.0);
                if (m <= 400)
                    for (int t = 0; t < m; t++) zl_svg_circle(s, xs[t], ys[t], lvl ? 2.4 : 1.8, col, NULL);
                free(xs);
                free(ys);
            }
        /* legend */
        double lx = p.x0 + 10, ly = p.y0 + p.h + 40, x0 = lx, xm = p.x0 + p.w;
        char buf[300];
        snprintf(buf, sizeof buf, "%s: 80%% zeroed", label_a);
        legend_item(s, &lx, &ly, x0, xm, ca, 0, buf);
        snprintf(buf, sizeof buf, "%s: 90%% zeroed (thicker)", label_a);
        legend_item(s, &lx, &ly, x0, xm, ca, 0, buf);
        if (label_b) {
            snprintf(buf, sizeof buf, "%s: 80%% zeroed", label_b);
            legend_item(s, &lx, &ly, x0, xm, cb, 0, buf);
            snprintf(buf, sizeof buf, "%s: 90%% zeroed (thicker)", label_b);
            legend_item(s, &lx, &ly, x0, xm, cb, 0, buf);
        }
    }
    int rc = zl_svg_save(s, path, inputs, n_inputs);
    zl_svg_free(s);
    return rc;
}
