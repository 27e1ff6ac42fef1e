/* inspect tests: every number of `inspect --json` against a naive computation
 * here (dense dW in double, a full sort for the pruning, column cosines from
 * dense columns); --plot writes an SVG; bad input fails cleanly. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testlib.h"

static zl_lora *load(const char *p) {
    zl_lora *l = NULL;
    int rc = zl_lora_load(p, NULL, &l);
    CHECKM(rc == ZL_OK, "load %s: %s", p, zl_errmsg());
    return l;
}

static double *dense(const zl_lora_layer *l, size_t *N, size_t *ncol) {
    size_t n = (size_t)l->in_features * l->kh * l->kw;
    double *d = calloc((size_t)l->out_features * n, sizeof(double));
    for (int o = 0; o < l->out_features; o++)
        for (size_t c = 0; c < n; c++) {
            double a = 0;
            for (int t = 0; t < l->rank; t++) a += (double)l->up[(size_t)o * l->rank + t] * l->down[(size_t)t * n + c];
            d[(size_t)o * n + c] = a * l->alpha / l->rank;
        }
    *N = (size_t)l->out_features * n;
    *ncol = n;
    return d;
}

static int cmp_abs(const void *x, const void *y) {
    double a = fabs(*(const double *)x), b = fabs(*(const double *)y);
    return a < b ? -1 : a > b;
}

/* naive: norm, and the relative change when the floor(p N) smallest |entries| are zeroed */
static void naive_stats(const zl_lora_layer *l, double *norm, double *p80, double *p90) {
    size_t N, n;
    double *d = dense(l, &N, &n);
    qsort(d, N, sizeof(double), cmp_abs);
    double tot = 0, s80 = 0, s90 = 0;
    size_t k80 = (size_t)floor(0.8 * (double)N), k90 = (size_t)floor(0.9 * (double)N);
    for (size_t i = 0; i < N; i++) {
        tot += d[i] * d[i];
        if (i < k80) s80 += d[i] * d[i];
        if (i < k90) s90 += d[i] * d[i];
    }
    *norm = sqrt(tot);
    *p80 = sqrt(s80 / tot);
    *p90 = sqrt(s90 / tot);
    free(d);
}

/* naive mean |cos| over input features; a conv's column j is every weight of input channel j */
static double naive_cos(const zl_lora_layer *a, const zl_lora_layer *b) {
    size_t N, n;
    double *da = dense(a, &N, &n), *db = dense(b, &N, &n);
    size_t blk = (size_t)a->kh * a->kw;
    double sum = 0;
    int used = 0;
    for (int j = 0; j < a->in_features; j++) {
        double dot = 0, na = 0, nb = 0;
        for (int o = 0; o < a->out_features; o++)
            for (size_t q = 0; q < blk; q++) {
                size_t k = (size_t)o * n + (size_t)j * blk + q;
                dot += da[k] * db[k];
                na += da[k] * da[k];
                nb += db[k] * db[k];
            }
        if (na > 0 && nb > 0) {
            sum += fabs(dot) / sqrt(na * nb);
            used++;
        }
    }
    free(da);
    free(db);
    return used ? sum / used : 0;
}

static int near(double got, double ref) { return fabs(got - ref) <= 1e-4 * fmax(1.0, fabs(ref)); }

static void check_side(const char *what, json_t *js, const zl_lora_layer *l, int *bad) {
    if (!l) {
        if (!json_is_null(js)) (*bad)++;
        return;
    }
    double norm, p80, p90;
    naive_stats(l, &norm, &p80, &p90);
    double gn = json_number_value(json_object_get(js, "norm")), g80 = json_number_value(json_object_get(js, "prune80"));
    double g90 = json_number_value(json_object_get(js, "prune90"));
    int ok = json_integer_value(json_object_get(js, "rank")) == l->rank &&
             json_number_value(json_object_get(js, "alpha")) == (double)l->alpha &&
             near(json_number_value(json_object_get(js, "scale")), (double)l->alpha / l->rank) && near(gn, norm) &&
             near(g80, p80) && near(g90, p90);
    /* the relative changes must not be trivially small or equal */
    ok = ok && p80 > 0.01 && p90 > p80;
    if (!ok) {
        (*bad)++;
        fprintf(stderr, "  %s %s: norm %.9g/%.9g p80 %.9g/%.9g p90 %.9g/%.9g\n", what, l->module, gn, norm, g80, p80, g90, p90);
    }
}

static void test_json(const char *fam, const char *fa, const char *fb) {
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/loras/%s", fam, fa);
    snprintf(pb, sizeof pb, "%s/loras/%s", fam, fb);
    const char *A = strdup(zt_data(pa)), *B = strdup(zt_data(pb));
    zl_lora *a = load(A), *b = load(B);
    int code = zt_cli("inspect '%s' '%s' --json", A, B);
    CHECKM(code == 0, "inspect --json: %s", zt_err);
    json_error_t je;
    json_t *j = code == 0 ? json_loads(zt_out, 0, &je) : NULL;
    CHECKM(j != NULL, "inspect --json output parses (%s)", j ? "" : je.text);
    if (j && a && b) {
        json_t *layers = json_object_get(j, "layers");
        int bad = 0, n_common = 0, seen_a = 0, seen_b = 0;
        double csum = 0;
        size_t idx;
        json_t *row;
        json_array_foreach(layers, idx, row) {
            const char *part = json_string_value(json_object_get(row, "part"));
            const char *mod = json_string_value(json_object_get(row, "module"));
            zl_part p = !strcmp(part, "unet") ? ZL_PART_UNET : !strcmp(part, "te1") ? ZL_PART_TE1 : ZL_PART_TE2;
            const zl_lora_layer *la = zl_lora_find(a, p, mod), *lb = zl_lora_find(b, p, mod);
            if (!la && !lb) { bad++; continue; }
            seen_a += la != NULL;
            seen_b += lb != NULL;
            const zl_lora_layer *l = la ? la : lb;
            json_t *sh = json_object_get(row, "shape");
            if (json_integer_value(json_array_get(sh, 0)) != l->out_features ||
                json_integer_value(json_array_get(sh, 1)) != l->in_features)
                bad++;
            check_side("a", json_object_get(row, "a"), la, &bad);
            check_side("b", json_object_get(row, "b"), lb, &bad);
            json_t *cv = json_object_get(row, "mean_abs_cos");
            if (la && lb) {
                double ref = naive_cos(la, lb);
                n_common++;
                csum += ref;
                if (!near(json_number_value(cv), ref)) {
                    bad++;
                    fprintf(stderr, "  cos %s: %.9g vs %.9g\n", mod, json_number_value(cv), ref);
                }
            } else if (!json_is_null(cv)) {
                bad++;
            }
        }
        CHECKM(bad == 0, "%s inspect: %d mismatches", fam, bad);
        CHECK(seen_a == a->n && seen_b == b->n);
        CHECK(json_integer_value(json_object_get(j, "n_common")) == n_common);
        CHECK(n_common > 0);
        CHECKM(near(json_number_value(json_object_get(j, "mean_abs_cos")), csum / n_common), "overall mean |cos| %.9g vs %.9g",
               json_number_value(json_object_get(j, "mean_abs_cos")), csum / n_common);
    }
    json_decref(j);
    zl_lora_free(a);
    zl_lora_free(b);
    free((void *)A);
    free((void *)B);
}

/* A LoRA with itself: every column cosine is exactly 1; the scale does not matter. */
static void test_self(void) {
    const char *A = strdup(zt_data("mini-sdxl/loras/style.kohya_sgm.safetensors"));
    zl_lora *a = load(A);
    if (a) {
        zl_inspect_result r;
        CHECK_OK(zl_inspect(a, a, &r));
        int bad = 0;
        for (int i = 0; i < r.n; i++)
            if (!(fabs(r.rows[i].cos - 1) < 1e-9)) bad++;
        CHECK(bad == 0 && r.n_common == a->n && fabs(r.mean_cos - 1) < 1e-9);
        zl_inspect_result_free(&r);
    }
    zl_lora_free(a);
    free((void *)A);
}

static void test_table_and_plot(void) {
    const char *A = strdup(zt_data("mini-sdxl/loras/content.kohya_sgm.safetensors"));
    const char *B = strdup(zt_data("mini-sdxl/loras/style.kohya_sgm.safetensors"));
    const char *svg = strdup(zt_tmp("plot.svg"));
    int code = zt_cli("inspect '%s' '%s' --plot '%s'", A, B, svg);
    CHECKM(code == 0, "inspect --plot: %s", zt_err);
    CHECK(strstr(zt_out, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q") != NULL);
    CHECK(strstr(zt_out, "mean |cos|") != NULL);
    char *s = NULL;
    size_t len = 0;
    CHECK_OK(zl_read_file(svg, &s, &len));
    if (s) {
        CHECK(!strncmp(s, "<?xml", 5) && strstr(s, "<svg") && strstr(s, "</svg>"));
        CHECK(strstr(s, "cosine") && strstr(s, "80% zeroed") && strstr(s, "down 1") && strstr(s, "up 0"));
        free(s);
        s = NULL;
    }
    /* the same plot as a PNG: the SVG's size at 2 pixels per unit */
    {
        const char *png = strdup(zt_tmp("plot.png"));
        code = zt_cli("inspect '%s' '%s' --plot '%s'", A, B, png);
        CHECKM(code == 0, "inspect --plot x.png: %s", zt_err);
        zl_image im = {0};
        int w = 0, h = 0;
        if (s == NULL && zl_read_file(svg, &s, &len) == ZL_OK) {
            const char *q = strstr(s, "width=\"");
            if (q) sscanf(q, "width=\"%d\" height=\"%d\"", &w, &h);
            free(s);
            s = NULL;
        }
        CHECK_OK(zl_image_read(png, &im));
        CHECKM(im.px && w > 0 && im.w == 2 * w && im.h == 2 * h, "PNG plot %dx%d for an SVG of %dx%d", im.w, im.h, w, h);
        /* drawn: dark text and coloured marks on the white ground */
        int dark = 0, colour = 0;
        for (size_t i = 0; im.px && i < (size_t)im.w * im.h; i++) {
            const uint8_t *p = im.px + 3 * i;
            dark += p[0] < 80 && p[1] < 80 && p[2] < 80;
            colour += abs(p[0] - p[2]) > 100;
        }
        CHECKM(dark > 1000 && colour > 1000, "PNG plot content: %d dark, %d coloured pixels", dark, colour);
        zl_image_free(&im);
        free((void *)png);
    }
    /* one LoRA: no similarity; the JSON has no "b" */
    code = zt_cli("inspect '%s' --json", A);
    CHECK(code == 0 && !strstr(zt_out, "\"b\"") && strstr(zt_out, "\"prune90\""));
    code = zt_cli("inspect '%s' --plot '%s'", A, svg);
    CHECK(code == 0);
    free((void *)A);
    free((void *)B);
    free((void *)svg);
}

static void test_bad(void) {
    struct stat st;
    const char *A = strdup(zt_data("mini-sdxl/loras/content.kohya_sgm.safetensors"));
    CHECK(zt_cli("inspect --help") == 0 && strstr(zt_out, "usage: ziplora inspect"));
    CHECK(zt_cli("inspect") == 2);
    CHECK(zt_cli("inspect '%s' --frobnicate", A) == 2);
    int code = zt_cli("inspect /nonexistent/a.safetensors");
    CHECK(code == 1 && strstr(zt_err, "/nonexistent/a.safetensors"));
    code = zt_cli("inspect '%s' '%s'", A, zt_data("tiny-sd15/loras/style.kohya.safetensors"));
    CHECKM(code == 1 && strstr(zt_err, "famil"), "families: %d %s", code, zt_err);
    const char *svg = zt_tmp("nope.svg");
    code = zt_cli("inspect '%s' /nonexistent/b.safetensors --plot '%s'", A, svg);
    CHECK(code == 1 && stat(svg, &st) != 0);
    /* a plot that cannot be written fails before the table is printed */
    code = zt_cli("inspect '%s' --plot '%s/no-such-dir/p.svg'", A, zt_tmpdir());
    CHECKM(code == 1 && strstr(zt_err, "no-such-dir") && zt_out[0] == 0, "plot in a missing folder: %d %s", code, zt_err);
    code = zt_cli("inspect '%s' --plot '%s'", A, A);
    CHECKM(code == 2 && strstr(zt_err, "input") && zt_out[0] == 0, "plot over the input: %d %s", code, zt_err);
    free((void *)A);
}

/* The training metadata (kohya ss_*, modelspec.*) summed up: title, base, resolution, clip skip,
 * epochs and steps, and the most frequent tags with counts summed over datasets (15 > 12 here). */
static void test_training_meta(void) {
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(zt_data("mini-sdxl/loras/style.kohya.safetensors"), &f));
    if (!f) return;
    int n = zl_st_count(f);
    zl_st_entry *e = calloc((size_t)n, sizeof *e);
    for (int i = 0; i < n; i++) {
        const zl_st_tensor *t = zl_st_at(f, i);
        e[i] = (zl_st_entry){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
        for (int d = 0; d < t->ndim; d++) e[i].shape[d] = t->shape[d];
    }
    zl_st_meta_kv m[] = {{"ss_output_name", "watercolor_v2"},
                         {"ss_sd_model_name", "sd_xl_base_1.0.safetensors"},
                         {"ss_resolution", "(1024, 1024)"},
                         {"ss_clip_skip", "2"},
                         {"ss_epoch", "10"},
                         {"ss_steps", "2000"},
                         {"ss_tag_frequency", "{\"1_zwx\": {\"zwx style\": 40, \"painting\": 12, \" watercolor \": 12, \" \": 99},"
                                              " \"2_x\": {\"painting\": 3}}"}};
    char path[1024];
    snprintf(path, sizeof path, "%s", zt_tmp("meta.safetensors"));
    CHECK_OK(zl_st_write(path, e, n, m, (int)(sizeof m / sizeof m[0]), NULL, 0));
    free(e);
    zl_st_close(f);
    int code = zt_cli("inspect '%s'", path);
    CHECKM(code == 0 && strstr(zt_out, "   title: watercolor_v2\n") &&
               strstr(zt_out, "   trained: on sd_xl_base_1.0.safetensors, at (1024, 1024), clip skip 2, 10 epochs, 2000 steps\n") &&
               strstr(zt_out, "   most frequent training tags: zwx style, painting, watercolor\n"),
           "training summary: %s", zt_out);
    code = zt_cli("inspect '%s' --json", path);
    CHECKM(code == 0 && strstr(zt_out, "\"clip_skip\":\"2\"") && strstr(zt_out, "\"trigger_phrase\":null") &&
               strstr(zt_out, "\"top_tags\":[\"zwx style\",\"painting\",\"watercolor\"]"),
           "training JSON: %.400s", zt_out);
    /* --json stays valid JSON whatever bytes the file name holds (Latin-1 0xE9 here): U+FFFD for them */
    {
        char odd[1024];
        snprintf(odd, sizeof odd, "%s/caf\xe9 \"quoted\".safetensors", zt_tmpdir());
        CHECK(rename(path, odd) == 0);
        code = zt_cli("inspect '%s' --json", odd);
        json_error_t je;
        json_t *j = code == 0 ? json_loads(zt_out, 0, &je) : NULL;
        const char *p = j ? json_string_value(json_object_get(json_array_get(json_object_get(j, "files"), 0), "path")) : NULL;
        CHECKM(p && strstr(p, "caf\xef\xbf\xbd \"quoted\".safetensors"), "JSON with a non-UTF-8 path: %s",
               j ? (p ? p : "(no path)") : je.text);
        json_decref(j);
        CHECK(rename(odd, path) == 0);
    }
    /* a file without any: no summary lines */
    code = zt_cli("inspect '%s'", zt_data("mini-sdxl/loras/content.kohya.safetensors"));
    CHECK(code == 0 && !strstr(zt_out, "trained:") && !strstr(zt_out, "training tags"));
}

/* The top level: usage, version, "help CMD". */
static void test_top_level(void) {
    CHECK(zt_cli("%s", "") == 2 && strstr(zt_err, "usage: ziplora COMMAND"));
    CHECK(zt_cli("--version") == 0 && strstr(zt_out, ZIPLORA_VERSION));
    CHECKM(strstr(zt_out, zl_bf16_units() ? "AMX-BF16 tiles: yes (--precision auto = bf16x3)"
                                          : "AMX-BF16 tiles: no (--precision auto = f32"),
           "--version says what --precision auto is here: %s", zt_out);
    {
        /* The tool runs with OpenMP's passive wait policy unless the caller chose one: as the
         * runtime itself reports it (OMP_DISPLAY_ENV=verbose, at each start), the last start
         * spins 0 times at a barrier; a policy the caller set is kept, with one start. */
        const char *keep_wp = getenv("OMP_WAIT_POLICY"), *keep_sc = getenv("GOMP_SPINCOUNT");
        char *wp = keep_wp ? strdup(keep_wp) : NULL, *sc = keep_sc ? strdup(keep_sc) : NULL;
        unsetenv("OMP_WAIT_POLICY");
        unsetenv("GOMP_SPINCOUNT");
        setenv("OMP_DISPLAY_ENV", "verbose", 1);
        int rc = zt_cli("--version");
        const char *last = NULL;
        for (const char *p = zt_err; (p = strstr(p, "GOMP_SPINCOUNT = '")); p++) last = p;
        CHECKM(rc == 0 && last && !strncmp(last, "GOMP_SPINCOUNT = '0'", 20) && strstr(zt_out, "OpenMP wait policy: passive"),
               "the runtime's last report says no spinning: %s", last ? last : zt_err);
        setenv("OMP_WAIT_POLICY", "active", 1);
        rc = zt_cli("--version");
        int starts = 0;
        last = NULL;
        for (const char *p = zt_err; (p = strstr(p, "GOMP_SPINCOUNT = '")); p++) last = p, starts++;
        CHECKM(rc == 0 && starts == 1 && last && strncmp(last, "GOMP_SPINCOUNT = '0'", 20) &&
                   strstr(zt_out, "OpenMP wait policy: active"),
               "a policy the caller set is kept (%d starts): %s", starts, zt_err);
        unsetenv("OMP_DISPLAY_ENV");
        if (wp) setenv("OMP_WAIT_POLICY", wp, 1);
        else unsetenv("OMP_WAIT_POLICY");
        if (sc) setenv("GOMP_SPINCOUNT", sc, 1);
        free(wp), free(sc);
    }
    CHECK(zt_cli("help") == 0 && strstr(zt_out, "commands:"));
    CHECK(zt_cli("help generate") == 0 && strstr(zt_out, "usage: ziplora generate"));
    CHECK(zt_cli("help no-such-command") == 2 && strstr(zt_err, "no-such-command"));
    CHECK(zt_cli("no-such-command") == 2 && strstr(zt_err, "unknown command"));
}

int main(void) {
    test_top_level();
    test_training_meta();
    test_json("mini-sdxl", "content.kohya_sgm.safetensors", "style.kohya_sgm.safetensors");
    test_json("tiny-sd15", "content.peft.safetensors", "style.kohya.safetensors");
    test_self();
    test_table_and_plot();
    test_bad();
    return zt_done();
}
