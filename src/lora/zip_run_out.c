/* `ziplora zip` from start to end (zl_ziprun) and its outputs -- the merged
 * LoRA (through zl_lora_merge with the learned mergers), the mergers file,
 * the JSON report, the SVG plot and the preview grid -- plus eval-merge
 * (zl_ziprun_eval). Outputs go to temporary siblings and are renamed into
 * place together once every one of them is complete. */
#include <libgen.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "ziplora/fileio.h"
#include "io/svg.h"
#include "nn/ops.h"
#include "zip_run_internal.h"
#include "ziplora.h"

#define MAX_OUT 5
#define MAX_PREVIEW 8

/* ------------------------------------------------------------------ hashing */

typedef struct {
    const char **path;
    char (*hex)[65];
    int n, rc;
    char err[512];
} hash_job;

static void *hash_thread(void *v) {
    hash_job *j = v;
    for (int i = 0; i < j->n && !j->rc; i++) {
        j->rc = zl_sha256_file(j->path[i], j->hex[i]);
        if (j->rc) snprintf(j->err, sizeof j->err, "%s", zl_errmsg());
    }
    return NULL;
}

/* ------------------------------------------------------------------ per-layer numbers */

typedef struct {
    char *module; /* owned: the report outlives the zip (the preview frees it) */
    int n, both;
    double sim_before, sim_after; /* mean_j |m_c m_s| */
    double cos_before, cos_after; /* mean |cos| of columns of dW_c diag(m_c), dW_s diag(m_s) (NAN: one LoRA) */
} layer_row;

/* A copy of `l` whose down is scaled per input feature by m (columns j*kh*kw .. of input channel j). */
static int scaled_copy(const zl_lora_layer *l, const float *m, zl_lora_layer *out, float **buf) {
    *out = *l;
    const int k = l->kh * l->kw, cols = l->in_features * k;
    float *d = malloc(sizeof(float) * (size_t)l->rank * cols);
    if (!d) return zl_set_error(ZL_ENOMEM, "out of memory");
    for (int r = 0; r < l->rank; r++)
        for (int j = 0; j < cols; j++) d[(size_t)r * cols + j] = l->down[(size_t)r * cols + j] * m[j / k];
    out->down = d;
    *buf = d;
    return ZL_OK;
}

static int layer_cos(const zl_lora *c, const zl_lora *s, const zl_zip_layer *zl, int with_m, double *cos) {
    *cos = NAN;
    const zl_lora_layer *a = zl_lora_find(c, ZL_PART_UNET, zl->module), *b = zl_lora_find(s, ZL_PART_UNET, zl->module);
    if (!a || !b) return ZL_OK;
    zl_lora_layer sa = *a, sb = *b;
    float *ba = NULL, *bb = NULL;
    int rc = ZL_OK, used = 0;
    if (with_m) {
        rc = scaled_copy(a, zl->m[0], &sa, &ba);
        if (!rc) rc = scaled_copy(b, zl->m[1], &sb, &bb);
    }
    if (!rc) rc = zl_column_cosine(&sa, &sb, cos, &used);
    free(ba);
    free(bb);
    return rc;
}

static int layers_measure(zl_ziprun *r, layer_row *rows, int after) {
    for (int i = 0; i < zl_zip_n_layers(r->zip); i++) {
        const zl_zip_layer *l = zl_zip_layer_at(r->zip, i);
        layer_row *q = &rows[i];
        if (!q->module && !(q->module = strdup(l->module))) return zl_set_error(ZL_ENOMEM, "out of memory");
        q->n = l->n;
        q->both = l->m[0] && l->m[1];
        double sim = NAN;
        if (q->both) {
            double acc = 0;
            for (int j = 0; j < l->n; j++) acc += fabs((double)l->m[0][j] * l->m[1][j]);
            sim = acc / l->n;
        }
        double cos = NAN;
        int rc = q->both ? layer_cos(r->lora[0], r->lora[1], l, after, &cos) : ZL_OK;
        if (rc) return rc;
        if (after) {
            q->sim_after = sim;
            q->cos_after = cos;
        } else {
            q->sim_before = sim;
            q->cos_before = cos;
        }
    }
    return ZL_OK;
}

/* ------------------------------------------------------------------ preview */

/* Row i of the preview: the subject in the style, then recontextualizations. */
static const char *const g_recontext[MAX_PREVIEW] = {
    "%s, %s", "%s sleeping, %s", "%s on a beach, %s", "%s in the snow, %s",
    "%s wearing a hat, %s", "%s in a city street, %s", "%s in a forest, %s", "%s reading a book, %s",
};

static int preview_prompts(zl_ziprun *r, int n, char **out) {
    for (int i = 0; i < n; i++) {
        size_t len = strlen(g_recontext[i]) + strlen(r->prompt[0]) + strlen(r->prompt[1]) + 1;
        if (!(out[i] = malloc(len))) return zl_set_error(ZL_ENOMEM, "out of memory");
        snprintf(out[i], len, g_recontext[i], r->prompt[0], r->prompt[1]);
    }
    return ZL_OK;
}

/* Grid: rows = prompts, columns = subject alone, style alone, direct merge,
 * ZipLoRA; the same seed along a row so that only the LoRAs differ. */
static const char *const g_preview_cols[4] = {"subject alone", "style alone", "direct merge", "ZipLoRA"};

static int write_preview(zl_ziprun *r, const zl_lora *merged, const char *path, const char *final_path) {
    const char *const *col = g_preview_cols;
    const zl_ziprun_params *p = r->p;
    const int N = p->preview, V = 4;
    const size_t L = (size_t)r->C * r->h * r->w;
    char *prompts[MAX_PREVIEW] = {0};
    zl_cond conds[MAX_PREVIEW];
    memset(conds, 0, sizeof conds);
    float *lat = malloc(sizeof(float) * L * (size_t)(N * V));
    zl_image ims[MAX_PREVIEW * 4];
    memset(ims, 0, sizeof ims);
    int rc = lat ? preview_prompts(r, N, prompts) : zl_set_error(ZL_ENOMEM, "out of memory");
    const float ws = p->style_scale;
    const zl_matmul_precision prec = zl_get_matmul_precision();
    if (p->infer_precision > 0) zl_set_matmul_precision((zl_matmul_precision)p->infer_precision);
    for (int v = 0; v < V && !rc; v++) {
        const zl_lora *ls[2];
        float w[2] = {1, 1};
        int nl;
        if (v == 0) { ls[0] = r->lora[0]; nl = 1; }
        else if (v == 1) { ls[0] = r->lora[1]; w[0] = ws; nl = 1; }
        else if (v == 2) { ls[0] = r->lora[0]; ls[1] = r->lora[1]; w[1] = ws; nl = 2; }
        else { ls[0] = merged; nl = 1; }
        if ((rc = zr_variant_conds(r, ls, w, nl, (const char *const *)prompts, N, conds))) break;
        zl_unet *u = zl_pipeline_unet(r->pipe);
        if (!u) rc = ZL_EIO;
        else zl_unet_clear_loras(u);
        for (int k = 0; k < nl && !rc; k++) rc = zl_unet_add_lora(u, ls[k], w[k], ZL_UNET_LORA_FOLD, NULL);
        for (int i = 0; i < N && !rc; i++) {
            char label[96];
            snprintf(label, sizeof label, "preview %s %d/%d", col[v], i + 1, N);
            zl_gen_params g = {.width = r->res, .height = r->res,
                               .steps = p->preview_steps > 0 ? p->preview_steps : p->ref_steps, .cfg = r->cfg,
                               .sampler = ZL_SAMPLER_EULER, .seed = p->seed + 5000u + (uint64_t)i,
                               .progress = p->progress, .progress_label = label,
                               .sched = zl_pipeline_sched(r->pipe)};
            rc = zl_txt2img_sample(u, r->scale, &conds[i], &g, lat + L * (size_t)(i * V + v));
        }
        if (u) zl_unet_clear_loras(u);
        zl_unet_release_packed(u);
        for (int i = 0; i < N; i++) zl_cond_free(&conds[i]);
    }
    if (!rc) zl_pipeline_release(r->pipe, ZL_PIPE_UNET | ZL_PIPE_TEXT);
    for (int i = 0; i < N * V && !rc; i++) rc = zl_pipeline_decode(r->pipe, lat + L * i, r->h, r->w, NULL, &ims[i]);
    zl_set_matmul_precision(prec);
    zl_image tiles = {0}, grid = {0};
    if (!rc) rc = zl_image_grid(ims, N * V, V, &tiles);
    if (!rc) rc = zl_image_caption_columns(&tiles, V, col, &grid);
    zl_image_free(&tiles);
    if (!rc) {
        char desc[2048];
        int o = snprintf(desc, sizeof desc, "ziplora zip preview: columns (captioned) = %s, %s, %s, %s; rows:", col[0],
                         col[1], col[2], col[3]);
        for (int i = 0; i < N && o < (int)sizeof desc; i++)
            o += snprintf(desc + o, sizeof desc - (size_t)o, "%s %d: %s", i ? ";" : "", i + 1, prompts[i]);
        zl_png_text t = {"Description", desc};
        const char *inputs[2] = {p->content, p->style};
        (void)final_path;
        rc = zl_png_write(path, &grid, &t, 1, inputs, 2);
    }
    zl_image_free(&grid);
    for (int i = 0; i < N * V; i++) zl_image_free(&ims[i]);
    for (int i = 0; i < N; i++) free(prompts[i]);
    free(lat);
    return rc;
}

/* ------------------------------------------------------------------ plot */

typedef struct {
    double x0, y0, w, h, ymin, ymax;
    int n;
} panel;

static double pxx(const panel *p, double i) { return p->x0 + (p->n > 1 ? i / (p->n - 1) : 0.5) * p->w; }
static double pyy(const panel *p, double v) {
    double t = (v - p->ymin) / (p->ymax - p->ymin > 0 ? p->ymax - p->ymin : 1);
    return p->y0 + p->h * (1 - (t < 0 ? 0 : t > 1 ? 1 : t));
}

static double nice_up(double v) {
    if (!(v > 0)) return 1;
    double e = pow(10, floor(log10(v))), m = v / e;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * e;
}

static void frame(zl_svg *s, const panel *p, const char *title, const char *ylabel, const char *xlabel) {
    zl_svg_rect(s, p->x0, p->y0, p->w, p->h, "#fbfbfd", "#c8ccd2", 1);
    for (int t = 0; t <= 4; t++) {
        double v = p->ymin + (p->ymax - p->ymin) * t / 4, y = pyy(p, v);
        zl_svg_line(s, p->x0, y, p->x0 + p->w, y, "#dde0e5", 0.6, t ? "3,3" : NULL);
        zl_svg_text(s, p->x0 - 6, y + 3.5, 10, "end", 0, "#333", 0, "%.3g", v);
    }
    zl_svg_text(s, p->x0, p->y0 - 10, 14, "start", 0, "#111", 1, "%s", title);
    zl_svg_text(s, p->x0 - 52, p->y0 + p->h / 2, 11, "middle", -90, "#333", 0, "%s", ylabel);
    zl_svg_text(s, p->x0 + p->w / 2, p->y0 + p->h + 30, 11, "middle", 0, "#333", 0, "%s", xlabel);
}

static void legend(zl_svg *s, double x, double y, const char *color, const char *dash, const char *label) {
    zl_svg_line(s, x, y, x + 24, y, color, 2.2, dash);
    zl_svg_text(s, x + 30, y + 4, 11, "start", 0, "#222", 0, "%s", label);
}

static void series(zl_svg *s, const panel *p, const double *v, int n, const char *color, double width, int dots) {
    double *xs = malloc(sizeof(double) * (size_t)n), *ys = malloc(sizeof(double) * (size_t)n);
    int m = 0;
    for (int i = 0; xs && ys && i < n; i++) {
        if (!isfinite(v[i])) continue;
        xs[m] = pxx(p, i);
        ys[m] = pyy(p, v[i]);
        m++;
    }
    if (m > 1) zl_svg_polyline(s, xs, ys, m, color, width);
    if (dots || m == 1)
        for (int i = 0; i < m; i++) zl_svg_circle(s, xs[i], ys[i], 2.2, color, NULL);
    free(xs);
    free(ys);
}

static int write_plot(zl_ziprun *r, const layer_row *rows, int nl, const char *path, int png) {
    const double W = 1200, ml = 90, mr = 40, ph = 240;
    const double H = 80 + 3 * (ph + 110);
    zl_svg *s = zl_svg_new(W, H);
    if (!s) return zl_set_error(ZL_ENOMEM, "out of memory");
    zl_svg_text(s, W / 2, 30, 17, "middle", 0, "#111", 1, "ZipLoRA (%s mode): %d steps, lr %g, lambda %g", r->mode,
                r->n_curve > 0 ? r->n_curve - 1 : 0, r->p->lr, r->p->lambda);
    int n = r->n_curve, rc = ZL_OK;
    double *v[4];
    for (int k = 0; k < 4; k++) v[k] = malloc(sizeof(double) * (size_t)(n > nl ? n : nl) + 8);
    if (!v[0] || !v[1] || !v[2] || !v[3]) rc = zl_set_error(ZL_ENOMEM, "out of memory");
    double y = 80;
    if (!rc) {
        /* loss curve: the two reconstruction terms, lambda * similarity, the total */
        /* log10 axis: the reconstruction terms are often 10-100x below lambda * similarity */
        double mx = -INFINITY, mn = INFINITY;
        for (int i = 0; i < n; i++) {
            const zl_zip_loss *L = &r->curve[i];
            v[0][i] = L->loss_content;
            v[1][i] = L->loss_style;
            v[2][i] = r->p->lambda * L->similarity;
            v[3][i] = L->total;
            for (int k = 0; k < 4; k++) {
                v[k][i] = v[k][i] > 0 ? log10(v[k][i]) : NAN;
                if (isfinite(v[k][i]) && v[k][i] > mx) mx = v[k][i];
                if (isfinite(v[k][i]) && v[k][i] < mn) mn = v[k][i];
            }
        }
        if (!isfinite(mx)) mx = mn = 0;
        panel p = {ml, y, W - ml - mr, ph, floor(mn), ceil(mx) > floor(mn) ? ceil(mx) : floor(mn) + 1, n};
        zl_svg_rect(s, p.x0, p.y0, p.w, p.h, "#fbfbfd", "#c8ccd2", 1);
        for (double d = p.ymin; d <= p.ymax + 1e-9; d += 1) {
            double yy = pyy(&p, d);
            zl_svg_line(s, p.x0, yy, p.x0 + p.w, yy, "#dde0e5", 0.6, d > p.ymin ? "3,3" : NULL);
            zl_svg_text(s, p.x0 - 6, yy + 3.5, 10, "end", 0, "#333", 0, "1e%+d", (int)d);
        }
        zl_svg_text(s, p.x0, p.y0 - 10, 14, "start", 0, "#111", 1, "%s",
                    "Loss per step, log scale (before each Adam step; last point: after the last step)");
        zl_svg_text(s, p.x0 - 52, p.y0 + p.h / 2, 11, "middle", -90, "#333", 0, "loss (log10)");
        zl_svg_text(s, p.x0 + p.w / 2, p.y0 + p.h + 30, 11, "middle", 0, "#333", 0, "step");
        for (int t = 0; t < n; t += n > 10 ? (n + 9) / 10 : 1)
            zl_svg_text(s, pxx(&p, t), p.y0 + p.h + 14, 10, "middle", 0, "#333", 0, "%d", t);
        series(s, &p, v[3], n, "#111111", 2.2, n <= 60);
        series(s, &p, v[0], n, "#1f77b4", 1.6, n <= 60);
        series(s, &p, v[1], n, "#d62728", 1.6, n <= 60);
        series(s, &p, v[2], n, "#2ca02c", 1.6, n <= 60);
        double ly = p.y0 + p.h + 52;
        legend(s, p.x0, ly, "#111111", NULL, "total");
        legend(s, p.x0 + 160, ly, "#1f77b4", NULL, "mse vs content LoRA (content inputs)");
        legend(s, p.x0 + 460, ly, "#d62728", NULL, "mse vs style LoRA (style inputs)");
        legend(s, p.x0 + 740, ly, "#2ca02c", NULL, "lambda x similarity");
        y += ph + 110;
    }
    for (int which = 0; which < 2 && !rc; which++) {
        /* per layer (sorted by module name): before (all ones / the LoRAs as they are) and after */
        double mx = 0;
        for (int i = 0; i < nl; i++) {
            v[0][i] = rows[i].both ? (which ? rows[i].cos_before : rows[i].sim_before) : NAN;
            v[1][i] = rows[i].both ? (which ? rows[i].cos_after : rows[i].sim_after) : NAN;
            if (isfinite(v[0][i]) && v[0][i] > mx) mx = v[0][i];
            if (isfinite(v[1][i]) && v[1][i] > mx) mx = v[1][i];
        }
        panel p = {ml, y, W - ml - mr, ph, 0, nice_up(mx), nl};
        frame(s, &p,
              which ? "Per layer: mean |cosine| between columns of dW_c diag(m_c) and dW_s diag(m_s)"
                    : "Per layer: similarity mean_j |m_c[j] m_s[j]| (layers holding both LoRAs)",
              which ? "mean |cos|" : "mean |m_c m_s|", "layer (sorted by module name; blocks shaded)");
        /* shade alternating top-level blocks */
        char prev[64] = "";
        int start = 0, band = 0;
        for (int i = 0; i <= nl; i++) {
            char cur[64] = "";
            if (i < nl) {
                const char *m = rows[i].module, *d = strchr(m, '.');
                if (d && !strncmp(m, "mid_block", 9)) snprintf(cur, sizeof cur, "mid");
                else if (d) {
                    const char *d2 = strchr(d + 1, '.');
                    snprintf(cur, sizeof cur, "%.*s", (int)((d2 ? d2 : d + 1) - m), m);
                }
            }
            if (i == nl || strcmp(cur, prev)) {
                if (i > start && prev[0]) {
                    double xa = pxx(&p, start - 0.5), xb = pxx(&p, i - 0.5);
                    if (xa < p.x0) xa = p.x0;
                    if (xb > p.x0 + p.w) xb = p.x0 + p.w;
                    if (band++ % 2 == 0) zl_svg_rect(s, xa, p.y0, xb - xa, p.h, "#eef2f7", NULL, 0.9);
                    if (xb - xa > 60)
                        zl_svg_text(s, (xa + xb) / 2, p.y0 + 13, 10, "middle", 0, "#556", 0, "%s", prev);
                }
                start = i;
                snprintf(prev, sizeof prev, "%s", cur);
            }
        }
        series(s, &p, v[0], nl, "#7f7f7f", 1.4, nl <= 200);
        series(s, &p, v[1], nl, which ? "#6a3d9a" : "#ff7f0e", 1.8, nl <= 200);
        double ly = p.y0 + p.h + 52;
        legend(s, p.x0, ly, "#7f7f7f", NULL, which ? "before (direct merge)" : "before (all mergers 1)");
        legend(s, p.x0 + 260, ly, which ? "#6a3d9a" : "#ff7f0e", NULL, "after ZipLoRA");
        y += ph + 110;
    }
    for (int k = 0; k < 4; k++) free(v[k]);
    if (!rc) rc = zl_svg_failed(s) ? zl_set_error(ZL_ENOMEM, "%s: out of memory", path) : zl_svg_save_as(s, path, png, NULL, 0);
    zl_svg_free(s);
    return rc;
}

/* ------------------------------------------------------------------ report */

static json_t *jnum(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static json_t *params_json(const zl_ziprun *r) {
    const zl_ziprun_params *p = r->p;
    json_t *o = json_object();
    json_object_set_new(o, "model", json_string(p->model));
    json_object_set_new(o, "vae", p->vae ? json_string(p->vae) : json_null());
    json_object_set_new(o, "clip_skip", json_integer(r->clip_skip > 0 ? r->clip_skip : 1));
    json_object_set_new(o, "clip_skip_source", json_string(r->clip_skip_src ? r->clip_skip_src : "default"));
    json_object_set_new(o, "content", json_string(p->content));
    json_object_set_new(o, "style", json_string(p->style));
    json_object_set_new(o, "content_prompt", r->prompt[0] ? json_string(r->prompt[0]) : json_null());
    json_object_set_new(o, "style_prompt", r->prompt[1] ? json_string(r->prompt[1]) : json_null());
    json_object_set_new(o, "content_prompt_source", r->prompt_src[0] ? json_string(r->prompt_src[0]) : json_null());
    json_object_set_new(o, "style_prompt_source", r->prompt_src[1] ? json_string(r->prompt_src[1]) : json_null());
    json_object_set_new(o, "steps", json_integer(p->steps));
    json_object_set_new(o, "lr", json_real(p->lr));
    json_object_set_new(o, "lambda", json_real(p->lambda));
    json_object_set_new(o, "adam", json_pack("{s:f,s:f,s:f,s:f}", "beta1", 0.9, "beta2", 0.999, "eps", 1e-8,
                                             "weight_decay", 0.0));
    json_object_set_new(o, "noise_schedule",
                        json_pack("{s:s,s:b,s:s,s:i,s:i,s:f,s:f}", "prediction", zl_prediction_name(r->sched.prediction),
                                  "zero_snr", r->sched.zero_snr, "spacing", zl_spacing_name(r->sched.spacing),
                                  "num_train_timesteps", r->sched.n_train, "steps_offset", r->sched.steps_offset,
                                  "beta_start", (double)r->sched.beta_start, "beta_end", (double)r->sched.beta_end));
    json_object_set_new(o, "seed", json_integer((json_int_t)p->seed));
    json_object_set_new(o, "resolution", json_integer(r->res));
    json_object_set_new(o, "latent", json_pack("[i,i,i,i]", r->B, r->C, r->h, r->w));
    json_object_set_new(o, "fixed_inputs", p->fixed_inputs ? json_string(p->fixed_inputs) : json_null());
    const char *src_c = p->fixed_inputs ? "fixed-inputs" : p->n_content_images ? "images" : "generated";
    const char *src_s = p->fixed_inputs ? "fixed-inputs" : p->n_style_images ? "images" : "generated";
    json_object_set_new(o, "references", json_pack("{s:s,s:s,s:i,s:i,s:i,s:f}", "content_source", src_c,
                                                   "style_source", src_s, "content", r->n_ref[0], "style", r->n_ref[1],
                                                   "ref_steps", p->ref_steps, "guidance", (double)r->cfg));
    json_object_set_new(o, "mode_requested", json_string(p->mode ? p->mode : "auto"));
    json_object_set_new(o, "budget_s", json_real(p->budget_s));
    json_object_set_new(o, "grad_mode", json_string(p->grad_mode == ZL_UNET_GRAD_KEEP ? "keep" : "recompute"));
    json_object_set_new(o, "format", json_string(p->format == ZL_FORMAT_PEFT ? "peft" : "kohya"));
    json_object_set_new(o, "style_scale", json_real(p->style_scale));
    json_object_set_new(o, "preview", json_integer(p->preview));
    json_object_set_new(o, "threads", json_integer(zl_get_threads()));
    const int ip = p->infer_precision > 0 && zl_bf16_units() ? p->infer_precision : 0;
    json_object_set_new(o, "inference_precision",
                        json_string(ip == ZL_MATMUL_BF16 ? "bf16" : ip == ZL_MATMUL_BF16X3 ? "bf16x3" : "f32"));
    return o;
}

static const char *te_note(const zl_ziprun *r) {
    if (r->p->fixed_inputs)
        return "fixed inputs: the conditioning was taken verbatim from the file for the targets and the merged branch "
               "alike; the text-encoder parts of the LoRAs (if any) are merged directly (rank-concatenated, no "
               "mergers) in the output";
    if (!r->te_any) return "neither LoRA has text-encoder layers; all branches use the base text encoders";
    return "the LoRAs' text-encoder parts are merged directly (rank-concatenated, no mergers) in the output; the "
           "content and style targets encode their prompts with each LoRA's own text-encoder part, while the merged "
           "branch encodes them with the merged text encoders, so the merged branch's conditioning differs from the "
           "targets'";
}

/* Adam steps taken: one evaluation precedes each, and a closing one follows the
 * last unless the run stopped early or was interrupted after its step. */
static int steps_run(const zl_ziprun *r) {
    if (r->n_curve <= 0) return 0;
    return r->interrupted ? r->n_curve : r->n_curve - 1;
}

static int write_report(zl_ziprun *r, const layer_row *rows, int nl, const char *const *inputs, char (*hex)[65],
                        int n_in, const char *const *outputs, const char *const *out_kind, int n_out, double wall,
                        const zl_merge_report *mrep, const char *path) {
    json_t *o = json_object();
    json_object_set_new(o, "ziplora_version", json_string(ZIPLORA_VERSION));
    json_object_set_new(o, "command", json_string("zip"));
    json_object_set_new(o, "mode", json_string(r->mode));
    json_object_set_new(o, "mode_reason", json_string(r->mode_why));
    json_t *est = json_object();
    json_object_set_new(est, "flops_per_step", jnum(r->est_flops_step));
    json_object_set_new(est, "measured_gflops", r->gflops > 0 ? json_real(r->gflops) : json_null());
    json_object_set_new(est, "full_mode_estimate_s", r->est_full_s > 0 ? jnum(r->est_full_s) : json_null());
    json_object_set_new(o, "estimate", est);
    json_t *notes = json_array();
    for (int i = 0; i < r->n_notes; i++) json_array_append_new(notes, json_string(r->notes[i]));
    json_object_set_new(o, "mode_notes", notes);
    json_object_set_new(o, "parameters", params_json(r));
    json_object_set_new(o, "text_encoders", json_string(te_note(r)));
    json_t *in = json_array();
    for (int i = 0; i < n_in; i++)
        json_array_append_new(in, json_pack("{s:s,s:s}", "path", inputs[i], "sha256", hex[i]));
    json_object_set_new(o, "inputs", in);
    json_t *outs = json_object();
    for (int i = 0; i < n_out; i++) json_object_set_new(outs, out_kind[i], json_string(outputs[i]));
    json_object_set_new(o, "outputs", outs);
    json_object_set_new(o, "steps_run", json_integer(steps_run(r)));
    json_object_set_new(o, "stopped_early", json_boolean(r->stopped_early));
    json_object_set_new(o, "interrupted", json_boolean(r->interrupted));
    json_t *cols = json_pack("[s,s,s,s]", "loss_content", "loss_style", "similarity", "total");
    json_object_set_new(o, "loss_columns", cols);
    json_t *curve = json_array();
    for (int i = 0; i < r->n_curve; i++) {
        const zl_zip_loss *L = &r->curve[i];
        json_t *row = json_array();
        json_array_append_new(row, jnum(L->loss_content));
        json_array_append_new(row, jnum(L->loss_style));
        json_array_append_new(row, jnum(L->similarity));
        json_array_append_new(row, jnum(L->total));
        json_array_append_new(curve, row);
    }
    json_object_set_new(o, "loss_curve", curve);
    double sb = 0, sa = 0, cb = 0, ca = 0;
    int nb = 0;
    json_t *ls = json_array();
    for (int i = 0; i < nl; i++) {
        const layer_row *q = &rows[i];
        if (q->both && isfinite(q->cos_before) && isfinite(q->cos_after)) {
            sb += q->sim_before;
            sa += q->sim_after;
            cb += q->cos_before;
            ca += q->cos_after;
            nb++;
        }
        json_array_append_new(ls, json_pack("{s:s,s:i,s:b,s:o,s:o,s:o,s:o}", "module", q->module, "in_features", q->n,
                                            "both", q->both, "similarity_before", jnum(q->sim_before),
                                            "similarity_after", jnum(q->sim_after), "cosine_before",
                                            jnum(q->cos_before), "cosine_after", jnum(q->cos_after)));
    }
    if (json_array_size(ls) != (size_t)nl || json_array_size(curve) != (size_t)r->n_curve) {
        json_decref(ls);
        json_decref(o);
        return zl_set_error(ZL_ENOMEM, "%s: could not build the report", path);
    }
    json_object_set_new(o, "layers", ls);
    json_object_set_new(o, "summary",
                        json_pack("{s:i,s:i,s:o,s:o,s:o,s:o}", "layers", nl, "layers_with_both", nb,
                                  "similarity_sum_before", json_real(sb), "similarity_sum_after", json_real(sa),
                                  "mean_cosine_before", nb ? json_real(cb / nb) : json_null(), "mean_cosine_after",
                                  nb ? json_real(ca / nb) : json_null()));
    if (mrep)
        json_object_set_new(o, "merged_lora", json_pack("{s:i,s:i,s:i,s:i}", "layers", mrep->n, "merged", mrep->n_merged,
                                                        "content_only", mrep->n_content_only, "style_only",
                                                        mrep->n_style_only));
    json_object_set_new(o, "wall_time_s", json_real(wall));
    json_object_set_new(o, "peak_rss_bytes", json_integer((json_int_t)zl_peak_rss()));
    char *txt = json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!txt) return zl_set_error(ZL_ENOMEM, "out of memory");
    size_t len = strlen(txt);
    txt[len] = '\n'; /* json_dumps leaves room for the NUL, which becomes the final newline */
    int rc = zl_write_file_atomic(path, txt, len + 1, NULL, 0);
    free(txt);
    return rc;
}

/* ------------------------------------------------------------------ the run */

/* "<dir>/.<base>.zip-<pid>-<i>.tmp": a sibling of the final path, so the
 * final rename stays within one file system. */
static char *title_of(const char *out) {
    char *b = strdup(out);
    if (!b) return NULL;
    char *base = strdup(basename(b));
    free(b);
    if (base) {
        size_t n = strlen(base);
        if (n > 12 && !strcmp(base + n - 12, ".safetensors")) base[n - 12] = 0;
    }
    return base;
}

static int check_outputs(const zl_ziprun_params *p, const char *const *outs, int n_out, const char *const *ins,
                         int n_in) {
    for (int i = 0; i < n_out; i++) {
        for (int j = 0; j < i; j++)
            if (!strcmp(outs[i], outs[j]) || zl_same_file(outs[i], outs[j]))
                return zl_set_error(ZL_EINVAL, "output %s is given twice", outs[i]);
        for (int j = 0; j < n_in; j++)
            if (!strcmp(outs[i], ins[j]) || zl_same_file(outs[i], ins[j]))
                return zl_set_error(ZL_EINVAL, "output %s would replace the input %s", outs[i], ins[j]);
        if (zl_is_dir(outs[i])) return zl_set_error(ZL_EINVAL, "output %s is a folder", outs[i]);
        /* a missing or read-only folder is found now, not after the run */
        int rc = zl_output_check(outs[i], NULL, 0);
        if (rc) return rc;
    }
    (void)p;
    return ZL_OK;
}

int zl_zip_run(const zl_ziprun_params *p) {
    if (!p || !p->model || !p->content || !p->style)
        return zl_set_error(ZL_EINVAL, "zip: --model, --content and --style are required");
    if (!p->output) return zl_set_error(ZL_EINVAL, "zip: no output file given (-o OUT)");
    if (p->steps < 1) return zl_set_error(ZL_EINVAL, "--steps must be at least 1 (got %d)", p->steps);
    if (!(p->lr > 0) || !isfinite(p->lr)) return zl_set_error(ZL_EINVAL, "--lr must be a positive number");
    if (!(p->lambda >= 0) || !isfinite(p->lambda)) return zl_set_error(ZL_EINVAL, "--lambda must be >= 0");
    if (!isfinite(p->style_scale)) return zl_set_error(ZL_EINVAL, "--style-scale must be a number");
    if (p->preview < 0 || p->preview > MAX_PREVIEW)
        return zl_set_error(ZL_EINVAL, "--preview takes 0 to %d rows (got %d)", MAX_PREVIEW, p->preview);
    if (p->preview && p->fixed_inputs)
        return zl_set_error(ZL_EINVAL, "--preview needs prompts and a full model; it is not available with --fixed-inputs");
    if (p->fixed_inputs && (p->n_content_images || p->n_style_images))
        return zl_set_error(ZL_EINVAL, "--fixed-inputs and reference images exclude each other");

    /* outputs: the LoRA, mergers, report, plot, preview */
    char *preview_default = NULL;
    const char *finals[MAX_OUT], *kinds[MAX_OUT];
    int n_out = 0;
    finals[n_out] = p->output; kinds[n_out++] = "lora";
    if (p->mergers_out) { finals[n_out] = p->mergers_out; kinds[n_out++] = "mergers"; }
    if (p->report) { finals[n_out] = p->report; kinds[n_out++] = "report"; }
    if (p->plot) { finals[n_out] = p->plot; kinds[n_out++] = "plot"; }
    if (p->preview) {
        const char *pv = p->preview_out;
        if (!pv) {
            size_t n = strlen(p->output);
            if (!(preview_default = malloc(n + 16))) return zl_set_error(ZL_ENOMEM, "out of memory");
            memcpy(preview_default, p->output, n + 1);
            if (n > 12 && !strcmp(preview_default + n - 12, ".safetensors")) preview_default[n - 12] = 0;
            strcat(preview_default, ".preview.png");
            pv = preview_default;
        }
        finals[n_out] = pv; kinds[n_out++] = "preview";
    }
    /* inputs (hashed for the report and the LoRA's provenance) */
    int n_in_max = 5 + p->n_content_images + p->n_style_images;
    const char **ins = calloc((size_t)n_in_max, sizeof *ins);
    char(*hex)[65] = calloc((size_t)n_in_max, sizeof *hex);
    if (!ins || !hex) {
        free(ins); free(hex); free(preview_default);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    int n_in = 0;
    ins[n_in++] = p->content;
    ins[n_in++] = p->style;
    if (p->fixed_inputs) ins[n_in++] = p->fixed_inputs;
    if (p->init_mergers) ins[n_in++] = p->init_mergers;
    for (int i = 0; i < p->n_content_images; i++) ins[n_in++] = p->content_images[i];
    for (int i = 0; i < p->n_style_images; i++) ins[n_in++] = p->style_images[i];
    int rc = check_outputs(p, finals, n_out, ins, n_in);
    /* every output goes to a temporary beside it, all renamed into place at the end;
     * `scratch` holds the mergers file the merge reads back (never committed) */
    zl_outset outs = {0}, scratch = {0};
    const char *tmps[MAX_OUT] = {0}, *tmp_mg = NULL;
    for (int i = 0; i < n_out && !rc; i++) rc = zl_outset_add(&outs, finals[i], &tmps[i]);
    if (!rc) rc = zl_outset_add(&scratch, p->output, &tmp_mg);

    zl_ziprun r;
    memset(&r, 0, sizeof r);
    hash_job hj = {0};
    pthread_t th;
    int threaded = 0;
    zl_mergers *mg = NULL;
    zl_lora *merged = NULL;
    zl_merge_report mrep;
    memset(&mrep, 0, sizeof mrep);
    layer_row *rows = NULL;
    int nl = 0;
    if (!rc) rc = zr_prepare(&r, p, 0);
    if (!rc) {
        /* the model's UNet weights are an input too */
        const char *uw = r.pipe ? zl_pipeline_paths(r.pipe)->unet_weights : r.paths.unet_weights;
        if (uw) ins[n_in++] = uw;
        hj.path = ins;
        hj.hex = hex;
        hj.n = n_in;
        threaded = pthread_create(&th, NULL, hash_thread, &hj) == 0;
        if (!threaded) hash_thread(&hj);
    }
    if (!rc) {
        zl_zip_opts zo;
        zl_zip_opts_default(&zo);
        zo.lr = p->lr;
        zo.lambda = p->lambda;
        zo.grad_mode = p->grad_mode;
        rc = zl_zip_create(r.unet, r.lora[0], r.lora[1], &zo, &r.zip);
    }
    if (!rc && p->init_mergers) {
        /* start from an earlier run's mergers */
        zl_mergers *im = NULL;
        rc = zl_mergers_load(p->init_mergers, &im);
        if (!rc && (rc = zl_zip_set_mergers(r.zip, im))) zl_error_prefix(rc, "--init-mergers %s", p->init_mergers);
        zl_mergers_free(im);
        if (!rc) {
            char note[1200];
            snprintf(note, sizeof note, "started from the mergers in %s (--init-mergers), not from 1", p->init_mergers);
            rc = zl_ziprun_note(&r, note);
        }
    }
    if (!rc) {
        nl = zl_zip_n_layers(r.zip);
        for (int i = 0; i < nl; i++) {
            const zl_zip_layer *l = zl_zip_layer_at(r.zip, i);
            r.n_both += l->m[0] && l->m[1];
        }
        rows = calloc((size_t)nl, sizeof *rows);
        rc = rows ? layers_measure(&r, rows, 0) : zl_set_error(ZL_ENOMEM, "out of memory");
    }
    zl_ziprun_mode_fn fn = NULL;
    if (!rc) rc = zr_choose_mode(&r, &fn);
    if (!rc) {
        zl_info("zip: %s mode (%s); %d layers, %d with both LoRAs", r.mode, r.mode_why, nl, r.n_both);
        if (!p->fixed_inputs)
            zl_info("zip: content prompt '%s' (%s), style prompt '%s' (%s)", r.prompt[0], r.prompt_src[0], r.prompt[1],
                    r.prompt_src[1]);
        r.progress_on = p->progress;
        if (r.progress_on) zl_progress_begin(&r.prog, "zip", p->steps);
        zl_graceful_stop(1); /* Ctrl-C: finish the step, write what there is */
        rc = fn(&r);
        zl_graceful_stop(0);
        if (r.progress_on)
            zl_progress_end(&r.prog, rc                  ? "failed"
                                     : r.interrupted     ? "interrupted"
                                     : r.stopped_early   ? "similarity reached 0"
                                                         : NULL);
        if (!rc && r.interrupted && p->preview) {
            zl_warn("zip: interrupted: the preview is not drawn");
            rc = zl_ziprun_note(&r, "interrupted: the preview was not drawn");
            for (int i = n_out - 1; i >= 0; i--)
                if (!strcmp(kinds[i], "preview")) {
                    zl_outset_drop(&outs, i);
                    for (int j = i + 1; j < n_out; j++) {
                        finals[j - 1] = finals[j];
                        kinds[j - 1] = kinds[j];
                        tmps[j - 1] = tmps[j];
                    }
                    n_out--;
                }
        }
    }
    if (!rc) rc = layers_measure(&r, rows, 1);
    /* the merged LoRA, from the learned mergers, through the library's merge */
    if (!rc) rc = zl_zip_save_mergers(r.zip, tmp_mg);
    if (!rc) rc = zl_mergers_load(tmp_mg, &mg);
    if (!rc) {
        zl_merge_opts mo;
        memset(&mo, 0, sizeof mo);
        mo.w_content = 1;
        mo.w_style = p->style_scale;
        mo.mergers = mg;
        mo.dtype = p->dtype;
        rc = zl_lora_merge(r.lora[0], r.lora[1], &mo, &merged, &mrep);
    }
    if (threaded) pthread_join(th, NULL);
    threaded = 0;
    if (!rc && hj.rc) rc = zl_set_error(hj.rc, "%s", hj.err);
    double wall = zl_now() - r.t0;
    if (!rc) {
        json_t *pj = params_json(&r);
        json_object_set_new(pj, "mode", json_string(r.mode));
        json_object_set_new(pj, "steps_run", json_integer(steps_run(&r)));
        char *pjs = json_dumps(pj, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(pj);
        char *title = title_of(p->output);
        const char *hexes[64];
        int nh = n_in < 64 ? n_in : 64;
        for (int i = 0; i < nh; i++) hexes[i] = hex[i];
        zl_lora_write_opts wo = {.format = p->format, .dtype = p->dtype, .unet_config = &r.ucfg, .title = title,
                                 .method = "ziplora", .params_json = pjs, .inputs = ins, .n_inputs = nh,
                                 .input_sha256 = hexes};
        rc = (!pjs || !title) ? zl_set_error(ZL_ENOMEM, "out of memory") : zl_lora_write(tmps[0], merged, &wo);
        free(pjs);
        free(title);
    }
    for (int i = 1; i < n_out && !rc; i++) {
        if (!strcmp(kinds[i], "mergers")) rc = zl_zip_save_mergers(r.zip, tmps[i]);
        else if (!strcmp(kinds[i], "plot")) rc = write_plot(&r, rows, nl, tmps[i], zl_svg_path_is_png(finals[i]));
        else if (!strcmp(kinds[i], "preview")) {
            zl_zip_free(r.zip); /* gives the UNet back (its branches are cleared) */
            r.zip = NULL;
            rc = write_preview(&r, merged, tmps[i], finals[i]);
        }
    }
    /* the report last, so that it holds the total wall time and peak memory */
    for (int i = 1; i < n_out && !rc; i++)
        if (!strcmp(kinds[i], "report"))
            rc = write_report(&r, rows, nl, ins, hex, n_in, finals, kinds, n_out, zl_now() - r.t0, &mrep, tmps[i]);
    (void)wall;
    /* commit: rename every output into place (on failure the temporaries go, and files the
     * outputs would have replaced stay) */
    if (!rc) rc = zl_outset_commit(&outs);
    zl_outset_free(&outs);
    zl_outset_free(&scratch);
    if (!rc) {
        const zl_zip_loss *a = r.n_curve ? &r.curve[0] : NULL, *b = r.n_curve ? &r.curve[r.n_curve - 1] : NULL;
        if (r.interrupted)
            zl_warn("zip: interrupted after %d of %d steps; wrote the result of the steps so far", steps_run(&r), p->steps);
        if (a && b)
            zl_info("zip: loss %.6g -> %.6g (content %.4g -> %.4g, style %.4g -> %.4g, similarity %.4g -> %.4g); "
                    "wrote %s",
                    a->total, b->total, a->loss_content, b->loss_content, a->loss_style, b->loss_style, a->similarity,
                    b->similarity, p->output);
    }
    if (threaded) pthread_join(th, NULL);
    for (int i = 0; rows && i < nl; i++) free(rows[i].module);
    free(rows);
    zl_merge_report_free(&mrep);
    zl_lora_free(merged);
    zl_mergers_free(mg);
    zr_release(&r);
    free(ins);
    free(hex);
    free(preview_default);
    return rc;
}

/* ------------------------------------------------------------------ eval-merge */

void zl_eval_rows_free(zl_eval_row *rows, int n) {
    for (int i = 0; rows && i < n; i++) free(rows[i].label);
    free(rows);
}

/* Fold `ls` into the UNet and run every draw of both sides: mean mse against tg. */
static int eval_candidate(zl_ziprun *r, const zl_lora *const *ls, const float *ws, int nl, int K, float *const *xs,
                          const float *tsteps, float *const *tg, double *lc, double *lsum) {
    const size_t n = (size_t)r->B * r->C * r->h * r->w, TD = (size_t)ZL_CLIP_CTX * r->D;
    float *cond[2] = {r->cond_t[0], r->cond_t[1]}, *pool[2] = {r->pool_t[0], r->pool_t[1]};
    zl_cond cc[2];
    memset(cc, 0, sizeof cc);
    int rc = ZL_OK;
    if (!r->p->fixed_inputs) {
        /* the candidate's own text-encoder part, as any tool loading it would use */
        const char *const pr[2] = {r->prompt[0], r->prompt[1]};
        if ((rc = zr_variant_conds(r, ls, ws, nl, pr, 2, cc))) return rc;
        for (int s = 0; s < 2; s++) {
            cond[s] = cc[s].embeds + TD;
            pool[s] = r->P ? cc[s].pooled + r->P : NULL;
        }
    }
    zl_unet_clear_loras(r->unet);
    for (int k = 0; k < nl && !rc; k++) rc = zl_unet_add_lora(r->unet, ls[k], ws[k], ZL_UNET_LORA_FOLD, NULL);
    float *out = rc ? NULL : malloc(n * sizeof(float));
    if (!rc && !out) rc = zl_set_error(ZL_ENOMEM, "out of memory");
    double acc[2] = {0, 0};
    const float *ti = r->fx_time_ids ? r->fx_time_ids : r->time_ids_b;
    for (int k = 0; k < K && !rc; k++)
        for (int s = 0; s < 2 && !rc; s++) {
            zl_unet_input in = {r->B, r->h, r->w, r->T, xs[s] + n * k, tsteps + (size_t)r->B * k, cond[s],
                                r->P ? pool[s] : NULL, r->ucfg.has_text_time ? ti : NULL};
            if (!(rc = zl_unet_forward(r->unet, &in, out))) acc[s] += zl_mse(out, tg[s] + n * k, n, NULL, 1.0f);
        }
    free(out);
    zl_unet_clear_loras(r->unet);
    for (int s = 0; s < 2; s++) {
        free(cc[s].embeds);
        free(cc[s].pooled);
    }
    *lc = acc[0] / K;
    *lsum = acc[1] / K;
    return rc;
}

int zl_zip_eval_merge(const zl_ziprun_params *p, const char *const *merged, int n_merged, int direct, int samples,
                   zl_eval_row **rows_out, int *n_rows) {
    *rows_out = NULL;
    *n_rows = 0;
    if (!p || !p->model || !p->content || !p->style)
        return zl_set_error(ZL_EINVAL, "eval-merge: --model, --content and --style are required");
    if (samples < 1) return zl_set_error(ZL_EINVAL, "--samples must be at least 1 (got %d)", samples);
    if (!n_merged && !direct) return zl_set_error(ZL_EINVAL, "eval-merge: nothing to evaluate (give --merged or --direct)");
    /* the candidates are loaded with the two LoRAs, before the references are made */
    zl_ziprun_params pc = *p;
    pc.extra_loras = merged;
    pc.n_extra_loras = n_merged;
    zl_ziprun r;
    int rc = zr_prepare(&r, &pc, 1);
    const int K = samples;
    const size_t n = (size_t)r.B * r.C * r.h * r.w;
    float *xs[2] = {0}, *tg[2] = {0}, *ts = NULL;
    zl_eval_row *rows = calloc((size_t)(n_merged + 1), sizeof *rows);
    zl_lora *const *ml = r.extra;
    if (!rc && !rows) rc = zl_set_error(ZL_ENOMEM, "out of memory");
    for (int s = 0; s < 2 && !rc; s++) {
        xs[s] = malloc(n * K * sizeof(float));
        tg[s] = malloc(n * K * sizeof(float));
        if (!xs[s] || !tg[s]) rc = zl_set_error(ZL_ENOMEM, "out of memory");
    }
    if (!rc && !(ts = malloc((size_t)r.B * K * sizeof(float)))) rc = zl_set_error(ZL_ENOMEM, "out of memory");
    /* the held-out draws: the same for every candidate */
    for (int k = 0; k < K && !rc; k++) {
        if ((rc = zr_noisy(&r, k, ZL_ZIPRUN_HELDOUT))) break;
        for (int s = 0; s < 2; s++) memcpy(xs[s] + n * k, r.x[s], n * sizeof(float));
        memcpy(ts + (size_t)r.B * k, r.tstep, (size_t)r.B * sizeof(float));
    }
    /* targets: each LoRA alone with its own conditioning */
    const float *ti = r.fx_time_ids ? r.fx_time_ids : r.time_ids_b;
    for (int s = 0; s < 2 && !rc; s++) {
        zl_unet_clear_loras(r.unet);
        rc = zl_unet_add_lora(r.unet, r.lora[s], 1.0f, ZL_UNET_LORA_FOLD, NULL);
        for (int k = 0; k < K && !rc; k++) {
            zl_unet_input in = {r.B, r.h, r.w, r.T, xs[s] + n * k, ts + (size_t)r.B * k, r.cond_t[s],
                                r.P ? r.pool_t[s] : NULL, r.ucfg.has_text_time ? ti : NULL};
            rc = zl_unet_forward(r.unet, &in, tg[s] + n * k);
        }
        zl_unet_clear_loras(r.unet);
    }
    int nr = 0;
    if (!rc && direct) {
        const zl_lora *ls[2] = {r.lora[0], r.lora[1]};
        float ws[2] = {1, 1};
        double t0 = zl_now();
        rc = eval_candidate(&r, ls, ws, 2, K, xs, ts, tg, &rows[nr].loss_content, &rows[nr].loss_style);
        rows[nr].seconds = zl_now() - t0;
        if (!rc && !(rows[nr].label = strdup("direct"))) rc = zl_set_error(ZL_ENOMEM, "out of memory");
        if (!rc) nr++;
    }
    for (int i = 0; i < n_merged && !rc; i++) {
        const zl_lora *ls[1] = {ml[i]};
        float ws[1] = {1};
        double t0 = zl_now();
        rc = eval_candidate(&r, ls, ws, 1, K, xs, ts, tg, &rows[nr].loss_content, &rows[nr].loss_style);
        rows[nr].seconds = zl_now() - t0;
        if (!rc && !(rows[nr].label = strdup(merged[i]))) rc = zl_set_error(ZL_ENOMEM, "out of memory");
        if (!rc) nr++;
    }
    for (int i = 0; i < nr; i++) rows[i].total = rows[i].loss_content + rows[i].loss_style;
    for (int s = 0; s < 2; s++) {
        free(xs[s]);
        free(tg[s]);
    }
    free(ts);
    zr_release(&r);
    if (rc) {
        zl_eval_rows_free(rows, nr);
        return rc;
    }
    *rows_out = rows;
    *n_rows = nr;
    return ZL_OK;
}
