/* `ziplora zip` and `ziplora eval-merge` end to end, through the CLI:
 *  - with --fixed-inputs on zip_io of tiny-sdxl, mini-sdxl and tiny-sd15 the
 *    report's loss curve is the fixture's Adam trajectory and --mergers-out
 *    holds its final mergers (torch, float64; 1e-3 relative);
 *  - the written LoRA, loaded back by `run unet`, gives the output of the
 *    runtime-branch merged model with the learned mergers (library), and
 *    `inspect` shows rank r_c + r_s;
 *  - bad inputs fail with a clear message, the right exit code and no output;
 *  - a short run on mini-sdxl with generated references (prompts from LoRA
 *    metadata, a text-encoder part) writes every output with the right
 *    structure;
 *  - eval-merge's numbers equal an independent computation of the documented
 *    held-out draws. */
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "testlib.h"
#include "ziplora/ziprun.h"

#define TOL_OUT 1e-4 /* FIXTURES.md outputs */
#define TOL_ADAM 1e-3 /* FIXTURES.md gradients and Adam runs (relative) */

static float *read_t(zl_st_file *f, const char *name, int64_t *numel) {
    const zl_st_tensor *t = zl_st_find(f, name);
    if (!t) return NULL;
    float *p = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    zl_st_read_f32(t, p);
    if (numel) *numel = t->numel;
    return p;
}

/* No file in the temporary folder whose name contains `part` (leftover temporaries). */
static int no_file_with(const char *part) {
    DIR *d = opendir(zt_tmpdir());
    int found = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, part)) found = 1;
    if (d) closedir(d);
    return !found;
}

static json_t *load_json(const char *path) {
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    CHECKM(j != NULL, "%s parses as JSON: %s", path, j ? "" : je.text);
    return j;
}

/* ---------------------------------------------------------------- fixed inputs */

static void test_fixed(const char *fx, const char *format) {
    char dir[256], lc[512], ls[512], io[512], out[512], mg[512], rep[512];
    snprintf(dir, sizeof dir, "%s", zt_data(fx));
    snprintf(lc, sizeof lc, "%s/loras/content.peft.safetensors", dir);
    snprintf(ls, sizeof ls, "%s/loras/style.peft.safetensors", dir);
    snprintf(io, sizeof io, "%s/zip_io.safetensors", dir);
    snprintf(out, sizeof out, "%s", zt_tmp("merged.safetensors"));
    snprintf(mg, sizeof mg, "%s", zt_tmp("mergers.safetensors"));
    snprintf(rep, sizeof rep, "%s", zt_tmp("report.json"));
    remove(out);
    remove(mg);
    remove(rep);
    char plot[512];
    snprintf(plot, sizeof plot, "%s", zt_tmp("plot.png"));
    remove(plot);
    int rc = zt_cli("zip --model '%s' --content '%s' --style '%s' --fixed-inputs '%s' --steps 10 --lr 0.01 "
                    "--format %s -o '%s' --mergers-out '%s' --report '%s' --plot '%s' -q",
                    dir, lc, ls, io, format, out, mg, rep, plot);
    CHECKM(rc == 0, "%s: zip exits 0 (got %d): %s", fx, rc, zt_err);
    if (rc) return;
    /* --plot FILE.png: a PNG (the drawing of the SVG plot), written through the temporary file */
    zl_image pim = {0};
    CHECK_OK(zl_image_read(plot, &pim));
    CHECKM(pim.px && pim.w >= 1000 && pim.h >= 1000, "%s: PNG plot %dx%d", fx, pim.w, pim.h);
    zl_image_free(&pim);
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(io, &f));
    if (!f) return;

    /* the loss curve is adam.trajectory: rows before each step, one after */
    json_t *j = load_json(rep);
    int64_t nt = 0;
    float *traj = read_t(f, "adam.trajectory", &nt);
    CHECK(traj != NULL && nt == 44);
    json_t *curve = j ? json_object_get(j, "loss_curve") : NULL;
    CHECKM(json_array_size(curve) == 11, "%s: 11 rows in the loss curve (got %zu)", fx, json_array_size(curve));
    if (traj && json_array_size(curve) == 11) {
        float got[44];
        double worst = 0;
        for (int r = 0; r < 11; r++)
            for (int c = 0; c < 4; c++) {
                got[r * 4 + c] = (float)json_real_value(json_array_get(json_array_get(curve, (size_t)r), (size_t)c));
                double e = fabs(got[r * 4 + c] - traj[r * 4 + c]) / fabs(traj[r * 4 + c]);
                if (e > worst) worst = e;
            }
        CHECKM(worst <= TOL_ADAM, "%s: trajectory, worst relative error %.3g", fx, worst);
        double e = zt_relerr(got, traj, 44);
        CHECKM(e <= TOL_ADAM, "%s: trajectory relative error %.3g", fx, e);
        printf("%s: trajectory worst element relative error %.3g\n", fx, worst);
    }
    CHECK(j && !strcmp(json_string_value(json_object_get(j, "mode")), "full"));
    CHECK(j && json_is_string(json_object_get(j, "mode_reason")));
    json_decref(j);
    free(traj);

    /* --mergers-out holds adam.<module>.merger_* (and nothing else) */
    zl_st_file *m = NULL;
    CHECK_OK(zl_st_open(mg, &m));
    int n_ref = 0;
    for (int i = 0; i < zl_st_count(f); i++) {
        const char *nm = zl_st_at(f, i)->name;
        if (!strncmp(nm, "adam.", 5) && strstr(nm, ".merger_")) n_ref++;
    }
    double worst = 0;
    for (int i = 0; m && i < zl_st_count(m); i++) {
        const zl_st_tensor *t = zl_st_at(m, i);
        char key[600];
        snprintf(key, sizeof key, "adam.%s", t->name);
        int64_t nr = 0;
        float *ref = read_t(f, key, &nr), *got = read_t(m, t->name, NULL);
        CHECKM(ref && nr == t->numel, "%s: %s in the fixture with %lld values", fx, key, (long long)t->numel);
        if (ref && nr == t->numel) {
            double e = zt_relerr(got, ref, nr);
            if (e > worst) worst = e;
            CHECKM(e <= TOL_ADAM, "%s %s: relative error %.3g", fx, t->name, e);
        }
        free(ref);
        free(got);
    }
    CHECKM(m && zl_st_count(m) == n_ref, "%s: %d mergers written, %d in the fixture", fx, m ? zl_st_count(m) : -1, n_ref);
    printf("%s: %d final mergers, worst relative error %.3g\n", fx, n_ref, worst);

    /* the written LoRA through `run unet` = runtime branches with the learned mergers */
    char uio[512], uout[512], ucfg[512], uw[512];
    snprintf(uio, sizeof uio, "%s/unet_io.safetensors", dir);
    snprintf(uout, sizeof uout, "%s", zt_tmp("unet_out.safetensors"));
    rc = zt_cli("run unet --model '%s' --lora '%s' --in '%s' -o '%s' -q", dir, out, uio, uout);
    CHECKM(rc == 0, "%s: run unet with the merged LoRA exits 0: %s", fx, zt_err);
    snprintf(ucfg, sizeof ucfg, "%s/unet/config.json", dir);
    snprintf(uw, sizeof uw, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    zl_unet *u = NULL;
    zl_unet_load_opts uo = {.config_path = ucfg};
    CHECK_OK(zl_unet_load(uw, &uo, &u));
    zl_lora *L[2] = {0};
    const char *paths[2] = {lc, ls};
    for (int s = 0; u && s < 2; s++) {
        zl_lora_load_opts lo = {.unet_config = zl_unet_get_config(u)};
        CHECK_OK(zl_lora_load(paths[s], &lo, &L[s]));
        int slot = -1;
        if (L[s]) CHECK_OK(zl_unet_add_lora(u, L[s], 1.0f, ZL_UNET_LORA_RUNTIME, &slot));
        CHECK(slot == s);
    }
    for (int i = 0; u && m && i < zl_st_count(m); i++) {
        const zl_st_tensor *t = zl_st_at(m, i);
        char mod[512];
        snprintf(mod, sizeof mod, "%s", t->name);
        int style = strstr(mod, ".merger_style") != NULL;
        *strstr(mod, style ? ".merger_style" : ".merger_content") = 0;
        float *v = read_t(m, t->name, NULL);
        CHECK_OK(zl_unet_set_merger(u, style, mod, v, (int)t->numel));
        free(v);
    }
    zl_st_file *in = NULL, *uo_f = NULL;
    CHECK_OK(zl_st_open(uio, &in));
    if (u && in && !zl_st_open(uout, &uo_f)) {
        int64_t ns = 0;
        float *sample = read_t(in, "sample", &ns), *ts = read_t(in, "timestep", NULL),
              *ehs = read_t(in, "encoder_hidden_states", NULL), *te = read_t(in, "text_embeds", NULL),
              *ti = read_t(in, "time_ids", NULL);
        const zl_st_tensor *st = zl_st_find(in, "sample"), *et = zl_st_find(in, "encoder_hidden_states");
        zl_unet_input x = {(int)st->shape[0], (int)st->shape[2], (int)st->shape[3], (int)et->shape[1], sample, ts, ehs,
                           te, ti};
        float *ref = malloc((size_t)ns * sizeof(float));
        int64_t ng = 0;
        float *got = read_t(uo_f, "out", &ng);
        CHECK_OK(zl_unet_forward(u, &x, ref));
        CHECK(got && ng == ns);
        char what[128];
        snprintf(what, sizeof what, "%s merged LoRA (%s) via run unet vs runtime branches", fx, format);
        if (got && ng == ns) zt_close(what, got, ref, ns, TOL_OUT);
        free(sample); free(ts); free(ehs); free(te); free(ti); free(ref); free(got);
    }
    zl_st_close(in);
    zl_st_close(uo_f);

    /* rank r_c + r_s on every shared layer, in the file and as inspect shows it */
    zl_lora *w = NULL;
    zl_lora_load_opts lo = {.unet_config = u ? zl_unet_get_config(u) : NULL};
    CHECK_OK(zl_lora_load(out, &lo, &w));
    int shared = 0, ok = 1;
    for (int i = 0; w && L[0] && L[1] && i < w->n; i++) {
        const zl_lora_layer *a = zl_lora_find(L[0], ZL_PART_UNET, w->layers[i].module),
                            *b = zl_lora_find(L[1], ZL_PART_UNET, w->layers[i].module);
        int want = (a ? a->rank : 0) + (b ? b->rank : 0);
        if (a && b) shared++;
        if (w->layers[i].rank != want) ok = 0;
    }
    CHECKM(ok && shared > 0, "%s: every written layer has rank r_c + r_s (%d shared layers)", fx, shared);
    rc = zt_cli("inspect '%s' --json", out);
    CHECK(rc == 0);
    json_error_t je;
    json_t *ij = json_loads(zt_out, 0, &je);
    CHECKM(ij != NULL, "inspect --json parses: %s", ij ? "" : je.text);
    if (ij && L[0] && L[1]) {
        /* the first layer both LoRAs hold */
        const zl_lora_layer *a = NULL;
        for (int i = 0; i < L[0]->n && !a; i++)
            if (zl_lora_find(L[1], ZL_PART_UNET, L[0]->layers[i].module)) a = &L[0]->layers[i];
        const zl_lora_layer *b = a ? zl_lora_find(L[1], ZL_PART_UNET, a->module) : NULL;
        char *dump = json_dumps(ij, JSON_COMPACT);
        char needle[600];
        snprintf(needle, sizeof needle, "\"%s\"", a ? a->module : "?");
        const char *at = dump ? strstr(dump, needle) : NULL;
        char rk[32];
        snprintf(rk, sizeof rk, "\"rank\":%d", a && b ? a->rank + b->rank : -1);
        const char *r = at ? strstr(at, "\"rank\":") : NULL;
        CHECKM(r && !strncmp(r, rk, strlen(rk)), "%s: inspect shows %s for %s", fx, rk, a ? a->module : "?");
        free(dump);
    }
    json_decref(ij);
    zl_lora_free(w);
    zl_lora_free(L[0]);
    zl_lora_free(L[1]);
    zl_unet_free(u);
    zl_st_close(m);
    zl_st_close(f);
    CHECK(no_file_with(".out-"));
}

/* ---------------------------------------------------------------- bad inputs */

/* A copy of zip_io's inputs with one NaN in noisy_content (and no targets). */
static void write_nan_inputs(const char *src, const char *dst) {
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(src, &f));
    if (!f) return;
    static const char *const names[] = {"noisy_content", "noisy_style", "timestep", "prompt_embeds_content",
                                        "prompt_embeds_style", "text_embeds_content", "text_embeds_style", "time_ids"};
    zl_st_entry e[8];
    float *bufs[8] = {0};
    int n = 0;
    for (int i = 0; i < 8; i++) {
        const zl_st_tensor *t = zl_st_find(f, names[i]);
        if (!t) continue;
        bufs[n] = read_t(f, names[i], NULL);
        if (i == 0) bufs[n][5] = NAN;
        memset(&e[n], 0, sizeof e[n]);
        e[n].name = names[i];
        e[n].dtype = ZL_DT_F32;
        e[n].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) e[n].shape[d] = t->shape[d];
        e[n].data = bufs[n];
        n++;
    }
    CHECK_OK(zl_st_write(dst, e, n, NULL, 0, NULL, 0));
    for (int i = 0; i < n; i++) free(bufs[i]);
    zl_st_close(f);
}

/* content.kohya plus a LoRA pair on a module the UNet does not have */
static void write_unsupported(const char *src, const char *dst) {
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(src, &f));
    if (!f) return;
    int n = zl_st_count(f);
    zl_st_entry *e = calloc((size_t)n + 2, sizeof *e);
    float **bufs = calloc((size_t)n + 2, sizeof *bufs);
    for (int i = 0; i < n; i++) {
        const zl_st_tensor *t = zl_st_at(f, i);
        bufs[i] = read_t(f, t->name, NULL);
        e[i].name = t->name;
        e[i].dtype = ZL_DT_F32;
        e[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) e[i].shape[d] = t->shape[d];
        e[i].data = bufs[i];
    }
    static float down[4 * 32], up[32 * 4];
    e[n] = (zl_st_entry){.name = "lora_unet_down_blocks_7_nonexistent_to_q.lora_down.weight", .dtype = ZL_DT_F32,
                         .ndim = 2, .shape = {4, 32}, .data = down};
    e[n + 1] = (zl_st_entry){.name = "lora_unet_down_blocks_7_nonexistent_to_q.lora_up.weight", .dtype = ZL_DT_F32,
                             .ndim = 2, .shape = {32, 4}, .data = up};
    CHECK_OK(zl_st_write(dst, e, n + 2, NULL, 0, NULL, 0));
    for (int i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    free(e);
    zl_st_close(f);
}

static void expect_fail(const char *what, int rc, int want_code, const char *must_say, const char *out) {
    CHECKM(rc == want_code, "%s: exit code %d (want %d); stderr: %s", what, rc, want_code, zt_err);
    CHECKM(strstr(zt_err, must_say) != NULL, "%s: the error mentions '%s': %s", what, must_say, zt_err);
    CHECKM(!zl_file_exists(out), "%s: no output file left", what);
    CHECKM(no_file_with(".out-"), "%s: no temporary file left", what);
    printf("%s -> %d: %s", what, rc, zt_err);
}

static void test_bad_inputs(void) {
    char tx[256], t15[256], mini[256], out[512], rep[512], args[2048];
    snprintf(tx, sizeof tx, "%s", zt_data("tiny-sdxl"));
    snprintf(t15, sizeof t15, "%s", zt_data("tiny-sd15"));
    snprintf(mini, sizeof mini, "%s", zt_data("mini-sdxl"));
    snprintf(out, sizeof out, "%s", zt_tmp("bad_out.safetensors"));
    snprintf(rep, sizeof rep, "%s", zt_tmp("bad_report.json"));
    remove(out);
    snprintf(args, sizeof args, "--model '%s' --content '%s/loras/content.peft.safetensors' -o '%s' --report '%s' -q",
             tx, tx, out, rep);

    /* a LoRA for another family than the model (and the other LoRA) */
    int rc = zt_cli("zip %s --style '%s/loras/style.peft.safetensors' --fixed-inputs '%s/zip_io.safetensors'", args,
                    t15, tx);
    expect_fail("SD1 style LoRA with an SDXL model", rc, 1, "is for sd1, but the model", out);
    CHECK(!zl_file_exists(rep));

    /* unsupported keys */
    char unsup[512];
    snprintf(unsup, sizeof unsup, "%s", zt_tmp("unsupported.safetensors"));
    char ck[512];
    snprintf(ck, sizeof ck, "%s/loras/content.kohya.safetensors", tx);
    write_unsupported(ck, unsup);
    rc = zt_cli("zip --model '%s' --content '%s' --style '%s/loras/style.peft.safetensors' --fixed-inputs "
                "'%s/zip_io.safetensors' -o '%s' -q",
                tx, unsup, tx, tx, out);
    expect_fail("LoRA with unsupported keys", rc, 1, "nonexistent", out);

    /* --steps 0 */
    rc = zt_cli("zip %s --style '%s/loras/style.peft.safetensors' --fixed-inputs '%s/zip_io.safetensors' --steps 0",
                args, tx, tx);
    expect_fail("--steps 0", rc, 2, "--steps", out);

    /* a NaN during the optimisation: stopped, with the step and a layer named */
    char nan_in[512];
    snprintf(nan_in, sizeof nan_in, "%s", zt_tmp("nan_inputs.safetensors"));
    char io[512];
    snprintf(io, sizeof io, "%s/zip_io.safetensors", tx);
    write_nan_inputs(io, nan_in);
    rc = zt_cli("zip %s --style '%s/loras/style.peft.safetensors' --fixed-inputs '%s'", args, tx, nan_in);
    expect_fail("NaN in the inputs", rc, 1, "step 1", out);
    CHECKM(strstr(zt_err, "layer") != NULL, "the NaN error names a layer: %s", zt_err);

    /* an image that cannot be decoded (mini-sdxl has a VAE) */
    char bad[512];
    snprintf(bad, sizeof bad, "%s", zt_tmp("broken.png"));
    CHECK_OK(zl_write_file_atomic(bad, "\x89PNG\r\n\x1a\nnot really a png", 24, NULL, 0));
    rc = zt_cli("zip --model '%s' --content '%s/loras/content.peft.safetensors' --style "
                "'%s/loras/style.peft.safetensors' --content-prompt 'a sks dog' --style-prompt 'zwx style' "
                "--content-images '%s' --resolution 64 -o '%s' -q",
                mini, mini, mini, bad, out);
    expect_fail("undecodable image", rc, 1, "broken.png", out);

    /* eval-merge: a candidate for the other family fails before the references
     * are generated (no progress line for them, which the run prints without -q) */
    rc = zt_cli("eval-merge --model '%s' --content '%s/loras/content.peft.safetensors' --style "
                "'%s/loras/style.peft.safetensors' --content-prompt 'a sks dog' --style-prompt 'zwx style' "
                "--resolution 64 --merged '%s/loras/content.peft.safetensors'",
                mini, mini, mini, t15);
    CHECKM(rc == 1 && strstr(zt_err, "merged LoRA") && strstr(zt_err, "is for sd1, but the model") &&
               !strstr(zt_err, "reference"),
           "eval-merge with an SD1 candidate: exit %d, %s", rc, zt_err);

    /* no prompt anywhere: a usage error asking for the flag */
    rc = zt_cli("zip --model '%s' --content '%s/loras/content.peft.safetensors' --style "
                "'%s/loras/style.peft.safetensors' --style-prompt 'zwx style' --resolution 64 -o '%s' -q",
                mini, mini, mini, out);
    expect_fail("no content prompt", rc, 2, "--content-prompt", out);

    /* an unknown mode is a usage error naming the flag (layerwise itself: test_zip_layerwise) */
    rc = zt_cli("zip %s --style '%s/loras/style.peft.safetensors' --fixed-inputs '%s/zip_io.safetensors' --mode fast",
                args, tx, tx);
    expect_fail("--mode fast", rc, 2, "--mode", out);
    CHECK(!zl_file_exists(rep));

    /* an output in a missing folder is refused before the run, naming that output (not a temporary) */
    rc = zt_cli("zip --model '%s' --content '%s/loras/content.peft.safetensors' --style '%s/loras/style.peft.safetensors' "
                "--fixed-inputs '%s/zip_io.safetensors' -o '%s' --report '%s/no-such-dir/r.json' -q",
                tx, tx, tx, tx, out, zt_tmpdir());
    expect_fail("--report in a missing folder", rc, 1, "no-such-dir/r.json: the folder", out);
    CHECKM(!strstr(zt_err, ".tmp"), "the message names the output, not a temporary: %s", zt_err);

    /* a seed past 64 bits is a usage error, not silently 2^64 - 1 */
    rc = zt_cli("zip %s --style '%s/loras/style.peft.safetensors' --fixed-inputs '%s/zip_io.safetensors' "
                "--seed 18446744073709551616",
                args, tx, tx);
    expect_fail("--seed past 64 bits", rc, 2, "--seed", out);
}

/* ---------------------------------------------------------------- metadata prompts */

static void test_default_prompt(void) {
    zl_lora l;
    memset(&l, 0, sizeof l);
    char *k[2] = {"ss_tag_frequency", "modelspec.trigger_phrase"};
    char *v[2] = {"{\"10_sks\": {\"sks dog\": 12, \"grass\": 3}, \"5_more\": {\"grass\": 10, \"sks dog\": 0}}", " "};
    l.meta_k = k;
    l.meta_v = v;
    l.n_meta = 2;
    char *p = NULL;
    /* a blank trigger phrase is ignored; "grass" 13 beats "sks dog" 12 over the datasets */
    CHECK_OK(zl_ziprun_default_prompt(&l, &p));
    CHECKM(p && !strcmp(p, "grass"), "most frequent tag: got '%s'", p ? p : "(null)");
    free(p);
    v[1] = "a photo of sks dog";
    CHECK_OK(zl_ziprun_default_prompt(&l, &p));
    CHECK(p && !strcmp(p, "a photo of sks dog"));
    free(p);
    l.n_meta = 0;
    p = NULL;
    CHECK(zl_ziprun_default_prompt(&l, &p) == ZL_ENOTFOUND && !p);
}

/* ---------------------------------------------------------------- end to end, generated references */

/* content: mini-sdxl's content LoRA plus the text-encoder LoRA in one kohya
 * file with a trigger phrase; style: the style LoRA with ss_tag_frequency. */
static void write_with_meta(const char *const *srcs, int n_src, const char *mk, const char *mv, const char *dst) {
    enum { CAP = 2048 };
    zl_st_entry *e = calloc(CAP, sizeof *e);
    float **bufs = calloc(CAP, sizeof *bufs);
    char **names = calloc(CAP, sizeof *names);
    int n = 0;
    zl_st_file *f[4] = {0};
    for (int s = 0; s < n_src; s++) {
        CHECK_OK(zl_st_open(srcs[s], &f[s]));
        for (int i = 0; f[s] && i < zl_st_count(f[s]) && n < CAP; i++) {
            const zl_st_tensor *t = zl_st_at(f[s], i);
            bufs[n] = read_t(f[s], t->name, NULL);
            names[n] = strdup(t->name);
            e[n].name = names[n];
            e[n].dtype = ZL_DT_F32;
            e[n].ndim = t->ndim;
            for (int d = 0; d < t->ndim; d++) e[n].shape[d] = t->shape[d];
            e[n].data = bufs[n];
            n++;
        }
    }
    zl_st_meta_kv meta[1] = {{mk, mv}};
    CHECK_OK(zl_st_write(dst, e, n, meta, 1, NULL, 0));
    for (int i = 0; i < n; i++) {
        free(bufs[i]);
        free(names[i]);
    }
    free(e);
    free(bufs);
    free(names);
    for (int s = 0; s < n_src; s++) zl_st_close(f[s]);
}

/* Two safetensors files hold the same tensors, byte for byte. */
static int same_tensors(const char *a, const char *b) {
    zl_st_file *fa = NULL, *fb = NULL;
    int same = zl_st_open(a, &fa) == ZL_OK && zl_st_open(b, &fb) == ZL_OK && zl_st_count(fa) == zl_st_count(fb);
    for (int i = 0; same && i < zl_st_count(fa); i++) {
        const zl_st_tensor *x = zl_st_at(fa, i), *y = zl_st_at(fb, i);
        same = !strcmp(x->name, y->name) && x->nbytes == y->nbytes && !memcmp(x->data, y->data, x->nbytes);
    }
    zl_st_close(fa);
    zl_st_close(fb);
    return same;
}

static void test_end_to_end(void) {
    char mini[256], c[512], s[512], te[512], cs[512], ss[512];
    snprintf(mini, sizeof mini, "%s", zt_data("mini-sdxl"));
    snprintf(c, sizeof c, "%s/loras/content.kohya.safetensors", mini);
    snprintf(te, sizeof te, "%s/loras/text_encoders.kohya.safetensors", mini);
    snprintf(s, sizeof s, "%s/loras/style.kohya.safetensors", mini);
    snprintf(cs, sizeof cs, "%s", zt_tmp("content_te.safetensors"));
    snprintf(ss, sizeof ss, "%s", zt_tmp("style_tags.safetensors"));
    const char *csrc[2] = {c, te}, *ssrc[1] = {s};
    write_with_meta(csrc, 2, "modelspec.trigger_phrase", "a sks dog", cs);
    write_with_meta(ssrc, 1, "ss_tag_frequency", "{\"1_zwx\": {\"zwx style\": 4, \"painting\": 2}}", ss);

    char out[512], mg[512], rep[512], plot[512], prev[512];
    snprintf(out, sizeof out, "%s", zt_tmp("e2e.safetensors"));
    snprintf(mg, sizeof mg, "%s", zt_tmp("e2e_mergers.safetensors"));
    snprintf(rep, sizeof rep, "%s", zt_tmp("e2e.json"));
    snprintf(plot, sizeof plot, "%s", zt_tmp("e2e.svg"));
    snprintf(prev, sizeof prev, "%s", zt_tmp("e2e.preview.png"));
    const int res = 64;
    int rc = zt_cli("zip --model '%s' --content '%s' --style '%s' --steps 2 --ref-count 2 --ref-steps 2 "
                    "--resolution %d --seed 7 --preview 2 --preview-steps 2 --format peft -o '%s' --mergers-out '%s' "
                    "--report '%s' --plot '%s' -q",
                    mini, cs, ss, res, out, mg, rep, plot);
    CHECKM(rc == 0, "end-to-end zip exits 0 (got %d): %s", rc, zt_err);
    if (rc) return;
    CHECK(zl_file_exists(out) && zl_file_exists(mg) && zl_file_exists(rep) && zl_file_exists(plot) &&
          zl_file_exists(prev));
    CHECK(no_file_with(".out-"));

    /* report */
    json_t *j = load_json(rep);
    if (j) {
        json_t *par = json_object_get(j, "parameters");
        CHECKM(!strcmp(json_string_value(json_object_get(par, "content_prompt")), "a sks dog"),
               "content prompt from modelspec.trigger_phrase");
        CHECKM(!strcmp(json_string_value(json_object_get(par, "style_prompt")), "zwx style"),
               "style prompt from ss_tag_frequency");
        CHECK(json_integer_value(json_object_get(par, "resolution")) == res);
        CHECK(json_integer_value(json_object_get(par, "seed")) == 7);
        CHECK(json_real_value(json_object_get(par, "lr")) == 0.01);
        json_t *ns = json_object_get(par, "noise_schedule");
        CHECKM(ns && !strcmp(json_string_value(json_object_get(ns, "prediction")), "epsilon") &&
                   json_is_false(json_object_get(ns, "zero_snr")) &&
                   !strcmp(json_string_value(json_object_get(ns, "spacing")), "leading") &&
                   json_integer_value(json_object_get(ns, "num_train_timesteps")) == 1000,
               "report: the model's noise schedule");
        CHECK(json_array_size(json_object_get(j, "loss_curve")) == 3);
        json_t *row = json_array_get(json_object_get(j, "loss_curve"), 0);
        double lc = json_real_value(json_array_get(row, 0)), lsv = json_real_value(json_array_get(row, 1)),
               sim = json_real_value(json_array_get(row, 2)), tot = json_real_value(json_array_get(row, 3));
        CHECKM(lc > 0 && lsv > 0 && fabs(tot - (lc + lsv + 0.01 * sim)) <= 1e-9 * tot, "total = terms + lambda sim");
        json_t *layers = json_object_get(j, "layers");
        json_t *sum = json_object_get(j, "summary");
        int nb = 0;
        for (size_t i = 0; i < json_array_size(layers); i++) {
            json_t *l = json_array_get(layers, i);
            if (json_is_true(json_object_get(l, "both"))) {
                nb++;
                /* before: all mergers 1 */
                CHECK(json_real_value(json_object_get(l, "similarity_before")) == 1.0);
                CHECK(json_is_real(json_object_get(l, "cosine_after")));
            }
        }
        CHECKM(nb > 0 && nb == json_integer_value(json_object_get(sum, "layers_with_both")), "%d layers with both, summary %lld", nb, (long long)json_integer_value(json_object_get(sum, "layers_with_both")));
        /* the similarity the curve starts from is the number of shared layers */
        CHECK(fabs(sim - nb) < 1e-9);
        const char *note = json_string_value(json_object_get(j, "text_encoders"));
        CHECKM(note && strstr(note, "own text-encoder part") && strstr(note, "merged text encoders"),
               "text-encoder note: %s", note ? note : "(none)");
        json_t *ins = json_object_get(j, "inputs");
        CHECK(json_array_size(ins) >= 3);
        char hex[65];
        CHECK_OK(zl_sha256_file(cs, hex));
        int found = 0;
        for (size_t i = 0; i < json_array_size(ins); i++)
            if (!strcmp(json_string_value(json_object_get(json_array_get(ins, i), "sha256")), hex)) found = 1;
        CHECKM(found, "the content LoRA's sha256 is in the report");
        CHECK(json_real_value(json_object_get(j, "wall_time_s")) > 0);
        CHECK(json_integer_value(json_object_get(j, "peak_rss_bytes")) > 0);
        CHECK(json_is_string(json_object_get(j, "mode")) && json_is_string(json_object_get(j, "mode_reason")));
        json_decref(j);
    }
    /* the LoRA: PEFT layout, UNet rank r_c + r_s on shared layers, the text-encoder part passed through */
    zl_lora *w = NULL, *lc = NULL, *ls = NULL;
    CHECK_OK(zl_lora_load(out, NULL, &w));
    CHECK_OK(zl_lora_load(cs, NULL, &lc));
    CHECK_OK(zl_lora_load(ss, NULL, &ls));
    if (w && lc && ls) {
        CHECK(w->layout == ZL_LAYOUT_PEFT);
        int te_layers = 0, bad = 0;
        for (int i = 0; i < w->n; i++) {
            const zl_lora_layer *y = &w->layers[i];
            const zl_lora_layer *a = zl_lora_find(lc, y->part, y->module), *b = zl_lora_find(ls, y->part, y->module);
            if (y->rank != (a ? a->rank : 0) + (b ? b->rank : 0)) bad++;
            te_layers += y->part != ZL_PART_UNET;
        }
        CHECK(bad == 0);
        CHECKM(te_layers > 0, "the text-encoder layers are in the output (%d)", te_layers);
    }
    zl_lora_free(w);
    zl_lora_free(lc);
    zl_lora_free(ls);
    /* plot */
    char *svg = NULL;
    size_t len = 0;
    CHECK_OK(zl_read_file(plot, &svg, &len));
    CHECK(svg && strstr(svg, "<svg") && strstr(svg, "</svg>") && strstr(svg, "Loss per step") &&
          strstr(svg, "similarity"));
    free(svg);
    /* preview: 2 rows x 4 columns of res x res under a band of column captions
     * (scale: "subject alone", 13 characters of 6 font cells, in res - 4 pixels) */
    zl_image im = {0};
    CHECK_OK(zl_image_read(prev, &im));
    int cs_ = (res - 4) / (6 * 13), band = 11 * (cs_ < 1 ? 1 : cs_ > 4 ? 4 : cs_);
    CHECKM(im.w == 4 * res && im.h == 2 * res + band, "preview is %dx%d", im.w, im.h);
    int lit = 0, other = 0;
    for (size_t i = 0; im.px && i < (size_t)band * im.w * im.c; i++) {
        lit += im.px[i] == 255;
        other += im.px[i] != 255 && im.px[i] != 0;
    }
    CHECKM(lit > 0 && other == 0, "caption band: %d lit, %d neither black nor white", lit, other);
    zl_image_free(&im);

    /* the model's own VAE given separately (--vae): the same mergers and preview as without it
     * (cheap runs: 1 step, 1 reference, a 1-row preview) */
    {
        char o[2][512], pv[2][512], rp[2][512], vae[512];
        snprintf(vae, sizeof vae, "%s/vae", mini);
        for (int k = 0; k < 2; k++) {
            char nm[64];
            snprintf(nm, sizeof nm, "e2e_vae%d.safetensors", k);
            snprintf(o[k], sizeof o[k], "%s", zt_tmp(nm));
            snprintf(nm, sizeof nm, "e2e_vae%d.preview.png", k);
            snprintf(pv[k], sizeof pv[k], "%s", zt_tmp(nm));
            snprintf(nm, sizeof nm, "e2e_vae%d.json", k);
            snprintf(rp[k], sizeof rp[k], "%s", zt_tmp(nm));
            char vflag[600] = "";
            if (k) snprintf(vflag, sizeof vflag, "--vae '%s'", vae);
            rc = zt_cli("zip --model '%s' %s --content '%s' --style '%s' --steps 1 --ref-count 1 --ref-steps 1 "
                        "--resolution %d --seed 7 --preview 1 --preview-steps 1 -o '%s' --report '%s' -q",
                        mini, vflag, cs, ss, res, o[k], rp[k]);
            CHECKM(rc == 0, "zip %s: %s", k ? "--vae" : "(its own VAE)", zt_err);
        }
        CHECKM(!rc && same_tensors(o[0], o[1]), "the merged LoRA with --vae <the model's vae> equals the one without");
        zl_image pa = {0}, pb = {0};
        if (!rc && zl_image_read(pv[0], &pa) == ZL_OK && zl_image_read(pv[1], &pb) == ZL_OK)
            CHECKM(pa.w == pb.w && pa.h == pb.h && pa.c == pb.c && !memcmp(pa.px, pb.px, (size_t)pa.w * pa.h * pa.c),
                   "the preview with --vae equals the one without");
        else
            CHECKM(0, "previews: %s", zl_errmsg());
        zl_image_free(&pa);
        zl_image_free(&pb);
        json_t *j3 = rc ? NULL : load_json(rp[1]);
        if (j3) CHECK(!strcmp(json_string_value(json_object_get(json_object_get(j3, "parameters"), "vae")), vae));
        json_decref(j3);
        /* a v-prediction, zero-SNR schedule reaches the references, draws and previews:
         * another merged LoRA from the same run, and the report says which schedule */
        char ov[512], rv[512];
        snprintf(ov, sizeof ov, "%s", zt_tmp("e2e_vpred.safetensors"));
        snprintf(rv, sizeof rv, "%s", zt_tmp("e2e_vpred.json"));
        rc = zt_cli("zip --model '%s' --content '%s' --style '%s' --steps 1 --ref-count 1 --ref-steps 1 "
                    "--resolution %d --seed 7 --preview 1 --preview-steps 1 -o '%s' --report '%s' -q "
                    "--prediction v_prediction --zero-snr",
                    mini, cs, ss, res, ov, rv);
        CHECKM(rc == 0, "zip --prediction v_prediction --zero-snr: %s", zt_err);
        CHECKM(!rc && !same_tensors(o[0], ov), "the v-prediction schedule changes the merged LoRA");
        json_t *jv = rc ? NULL : load_json(rv);
        json_t *nv = json_object_get(json_object_get(jv, "parameters"), "noise_schedule");
        CHECKM(nv && !strcmp(json_string_value(json_object_get(nv, "prediction")), "v_prediction") &&
                   json_is_true(json_object_get(nv, "zero_snr")) &&
                   !strcmp(json_string_value(json_object_get(nv, "spacing")), "trailing"),
               "report: v_prediction, zero SNR, trailing");
        json_decref(jv);
        rc = zt_cli("zip --model '%s' --content '%s' --style '%s' -o '%s' --spacing sideways", mini, cs, ss, ov);
        CHECKM(rc == 2 && strstr(zt_err, "--spacing"), "zip --spacing sideways: exit %d %s", rc, zt_err);
        rc = 0;
    }

    /* reference images: a folder for the content side, a file for the style side */
    char out2[512], rep2[512];
    snprintf(out2, sizeof out2, "%s", zt_tmp("e2e_img.safetensors"));
    snprintf(rep2, sizeof rep2, "%s", zt_tmp("e2e_img.json"));
    rc = zt_cli("zip --model '%s' --content '%s' --style '%s' --steps 1 --resolution %d --content-images '%s' "
                "--style-images '%s' -o '%s' --report '%s' -q",
                mini, cs, ss, res, zt_data("images"), zt_data("images/pattern16.jpg"), out2, rep2);
    CHECKM(rc == 0, "zip with reference images exits 0: %s", zt_err);
    j = rc ? NULL : load_json(rep2);
    if (j) {
        json_t *refs = json_object_get(json_object_get(j, "parameters"), "references");
        CHECK(!strcmp(json_string_value(json_object_get(refs, "content_source")), "images"));
        CHECK(json_integer_value(json_object_get(refs, "content")) == 1 &&
              json_integer_value(json_object_get(refs, "style")) == 1);
        CHECK(json_array_size(json_object_get(j, "loss_curve")) == 2);
        json_decref(j);
    }
}

/* ---------------------------------------------------------------- clip skip */


/* SD 1.x LoRAs trained with clip skip 2 (kohya's ss_clip_skip): zip conditions every prompt on
 * the penultimate layer as if --clip-skip 2 were given; without either the result differs. */
static void test_clip_skip(void) {
    char sd[256], c[512], s[512], c2[512], s2[512], o[3][512], rep[3][512];
    snprintf(sd, sizeof sd, "%s", zt_data("tiny-sd15"));
    snprintf(c, sizeof c, "%s/loras/content.kohya.safetensors", sd);
    snprintf(s, sizeof s, "%s/loras/style.kohya.safetensors", sd);
    snprintf(c2, sizeof c2, "%s", zt_tmp("content_cs2.safetensors"));
    snprintf(s2, sizeof s2, "%s", zt_tmp("style_cs2.safetensors"));
    const char *cs[1] = {c}, *ss[1] = {s};
    write_with_meta(cs, 1, "ss_clip_skip", "2", c2);
    write_with_meta(ss, 1, "ss_clip_skip", "2", s2);
    const char *ins[3][2] = {{c2, s2}, {c, s}, {c, s}}, *extra[3] = {"", "--clip-skip 2", ""};
    for (int k = 0; k < 3; k++) {
        char name[64];
        snprintf(name, sizeof name, "cs%d.safetensors", k);
        snprintf(o[k], sizeof o[k], "%s", zt_tmp(name));
        snprintf(name, sizeof name, "cs%d.json", k);
        snprintf(rep[k], sizeof rep[k], "%s", zt_tmp(name));
        int rc = zt_cli("zip --model '%s' --content '%s' --style '%s' --content-prompt 'a sks dog' --style-prompt 'zwx "
                        "style' --steps 2 --ref-count 1 --ref-steps 2 --resolution 64 --seed 3 %s -o '%s' --report '%s' -q",
                        sd, ins[k][0], ins[k][1], extra[k], o[k], rep[k]);
        CHECKM(rc == 0, "zip, clip skip case %d: %s", k, zt_err);
    }
    static const char *const src[3] = {"ss_clip_skip", "flag", "default"};
    for (int k = 0; k < 3; k++) {
        json_t *j = load_json(rep[k]);
        json_t *par = j ? json_object_get(j, "parameters") : NULL;
        CHECKM(par && json_integer_value(json_object_get(par, "clip_skip")) == (k < 2 ? 2 : 1) &&
                   !strcmp(json_string_value(json_object_get(par, "clip_skip_source")), src[k]),
               "report %d: clip skip and its source", k);
        json_decref(j);
    }
    CHECKM(same_tensors(o[0], o[1]), "ss_clip_skip 2 gives what --clip-skip 2 gives");
    CHECKM(!same_tensors(o[0], o[2]), "clip skip 2 changes the learned mergers");
}

/* ---------------------------------------------------------------- eval-merge */

/* The held-out objective recomputed here from the documented draw rule; with
 * zero_snr, the draws follow the zero-terminal-SNR schedule (--zero-snr), and
 * the losses must then differ from the default schedule's. */
static double g_eval_loss[2][2]; /* [zero_snr][direct, merged] content loss */
static void test_eval_merge(int zero_snr) {
    char tx[256], lc[512], ls[512], io[512], out[512];
    snprintf(tx, sizeof tx, "%s", zt_data("tiny-sdxl"));
    snprintf(lc, sizeof lc, "%s/loras/content.peft.safetensors", tx);
    snprintf(ls, sizeof ls, "%s/loras/style.peft.safetensors", tx);
    snprintf(io, sizeof io, "%s/zip_io.safetensors", tx);
    snprintf(out, sizeof out, "%s", zt_tmp("merged.safetensors")); /* from test_fixed on tiny-sdxl */
    const int K = 2;
    const unsigned seed = 3;
    int rc = zt_cli("eval-merge --model '%s' --content '%s' --style '%s' --fixed-inputs '%s' --merged '%s' --direct "
                    "--samples %d --seed %u --json -q%s",
                    tx, lc, ls, io, out, K, seed, zero_snr ? " --zero-snr" : "");
    CHECKM(rc == 0, "eval-merge exits 0: %s", zt_err);
    json_error_t je;
    json_t *j = rc ? NULL : json_loads(zt_out, 0, &je);
    CHECKM(rc || j, "eval-merge --json parses: %s", zt_out);
    json_t *rows = json_object_get(j, "rows");
    CHECK(json_array_size(rows) == 2);

    char ucfg[512], uw[512];
    snprintf(ucfg, sizeof ucfg, "%s/unet/config.json", tx);
    snprintf(uw, sizeof uw, "%s/unet/diffusion_pytorch_model.safetensors", tx);
    zl_unet *u = NULL;
    zl_unet_load_opts uo = {.config_path = ucfg};
    CHECK_OK(zl_unet_load(uw, &uo, &u));
    zl_st_file *f = NULL;
    CHECK_OK(zl_st_open(io, &f));
    zl_lora *L[3] = {0};
    const char *paths[3] = {lc, ls, out};
    for (int i = 0; u && i < 3; i++) {
        zl_lora_load_opts lo = {.unet_config = zl_unet_get_config(u)};
        CHECK_OK(zl_lora_load(paths[i], &lo, &L[i]));
    }
    if (!u || !f || !L[0] || !L[1] || !L[2] || !rows) goto end;
    {
        int64_t n = 0;
        float *x0[2] = {read_t(f, "x0_content", &n), read_t(f, "x0_style", NULL)};
        float *pe[2] = {read_t(f, "prompt_embeds_content", NULL), read_t(f, "prompt_embeds_style", NULL)};
        float *te[2] = {read_t(f, "text_embeds_content", NULL), read_t(f, "text_embeds_style", NULL)};
        float *ti = read_t(f, "time_ids", NULL);
        const zl_st_tensor *st = zl_st_find(f, "x0_content"), *pt = zl_st_find(f, "prompt_embeds_content");
        zl_schedule sch;
        zl_sched_config scfg;
        zl_sched_config_default(&scfg);
        scfg.zero_snr = zero_snr;
        CHECK_OK(zl_schedule_from_config(&sch, &scfg)); /* itself checked against double in test_sched */
        float *noise = malloc(n * sizeof(float)), *x[2][2], *tg[2][2], *o = malloc(n * sizeof(float));
        float tsv[2];
        for (int k = 0; k < K; k++) {
            zl_rng rn, rt;
            zl_rng_init(&rn, seed, ZL_ZIPRUN_STREAM_NOISE + ZL_ZIPRUN_HELDOUT + k);
            zl_rng_init(&rt, seed, ZL_ZIPRUN_STREAM_T + ZL_ZIPRUN_HELDOUT + k);
            zl_rng_normal(&rn, 0, noise, (size_t)n);
            float uu;
            zl_rng_uniform(&rt, 0, &uu, 1);
            int t = (int)floorf(uu * 1000);
            tsv[k] = (float)t;
            for (int s = 0; s < 2; s++) {
                x[k][s] = malloc(n * sizeof(float));
                tg[k][s] = malloc(n * sizeof(float));
                /* DDPM add_noise, written out */
                float a = sch.alphas_cumprod[t];
                for (int64_t i = 0; i < n; i++) x[k][s][i] = sqrtf(a) * x0[s][i] + sqrtf(1 - a) * noise[i];
            }
        }
        zl_unet_input in = {1, (int)st->shape[2], (int)st->shape[3], (int)pt->shape[1], NULL, NULL, NULL, NULL, ti};
        for (int s = 0; s < 2; s++) {
            zl_unet_clear_loras(u);
            CHECK_OK(zl_unet_add_lora(u, L[s], 1.0f, ZL_UNET_LORA_FOLD, NULL));
            for (int k = 0; k < K; k++) {
                in.sample = x[k][s]; in.timestep = &tsv[k]; in.context = pe[s]; in.text_embeds = te[s];
                CHECK_OK(zl_unet_forward(u, &in, tg[k][s]));
            }
        }
        for (int cand = 0; cand < 2; cand++) {
            zl_unet_clear_loras(u);
            if (cand == 0) {
                CHECK_OK(zl_unet_add_lora(u, L[0], 1.0f, ZL_UNET_LORA_FOLD, NULL));
                CHECK_OK(zl_unet_add_lora(u, L[1], 1.0f, ZL_UNET_LORA_FOLD, NULL));
            } else {
                CHECK_OK(zl_unet_add_lora(u, L[2], 1.0f, ZL_UNET_LORA_FOLD, NULL));
            }
            double acc[2] = {0, 0};
            for (int k = 0; k < K; k++)
                for (int s = 0; s < 2; s++) {
                    in.sample = x[k][s]; in.timestep = &tsv[k]; in.context = pe[s]; in.text_embeds = te[s];
                    CHECK_OK(zl_unet_forward(u, &in, o));
                    double e = 0;
                    for (int64_t i = 0; i < n; i++) e += ((double)o[i] - tg[k][s][i]) * ((double)o[i] - tg[k][s][i]);
                    acc[s] += e / n;
                }
            json_t *r = json_array_get(rows, (size_t)cand);
            const char *label = json_string_value(json_object_get(r, "label"));
            CHECK(label && !strcmp(label, cand ? out : "direct"));
            double gc = json_real_value(json_object_get(r, "loss_content")),
                   gs = json_real_value(json_object_get(r, "loss_style"));
            double rc_ = acc[0] / K, rs = acc[1] / K;
            CHECKM(fabs(gc - rc_) <= 1e-4 * rc_ && fabs(gs - rs) <= 1e-4 * rs,
                   "eval-merge %s: content %.6g vs %.6g, style %.6g vs %.6g", label ? label : "?", gc, rc_, gs, rs);
            printf("eval-merge%s %s: content %.6g style %.6g (independent: %.6g %.6g)\n", zero_snr ? " (zero SNR)" : "",
                   label ? label : "?", gc, gs, rc_, rs);
            g_eval_loss[zero_snr][cand] = gc;
            if (zero_snr)
                CHECKM(fabs(gc - g_eval_loss[0][cand]) > 1e-3 * fabs(g_eval_loss[0][cand]),
                       "--zero-snr changes the draws: %.6g vs %.6g", gc, g_eval_loss[0][cand]);
        }
        for (int k = 0; k < K; k++)
            for (int s = 0; s < 2; s++) {
                free(x[k][s]);
                free(tg[k][s]);
            }
        for (int s = 0; s < 2; s++) {
            free(x0[s]); free(pe[s]); free(te[s]);
        }
        free(ti); free(noise); free(o);
    }
end:
    for (int i = 0; i < 3; i++) zl_lora_free(L[i]);
    zl_unet_free(u);
    zl_st_close(f);
    json_decref(j);
}

/* Ctrl-C during the optimisation: the run stops after the current step and
 * writes the outputs from the mergers so far. They equal an uninterrupted run
 * of as many steps (same inputs, same Adam), and --init-mergers continues from
 * them: its first evaluation is that run's closing one. */
static void test_interrupt_and_resume(void) {
    char tx[256], lc[512], ls[512], io[512];
    snprintf(tx, sizeof tx, "%s", zt_data("tiny-sdxl"));
    snprintf(lc, sizeof lc, "%s/loras/content.peft.safetensors", tx);
    snprintf(ls, sizeof ls, "%s/loras/style.peft.safetensors", tx);
    snprintf(io, sizeof io, "%s/zip_io.safetensors", tx);
    char out[512], mg[512], rep[512], err[512];
    snprintf(out, sizeof out, "%s", zt_tmp("int.safetensors"));
    snprintf(mg, sizeof mg, "%s", zt_tmp("int_mergers.safetensors"));
    snprintf(rep, sizeof rep, "%s", zt_tmp("int.json"));
    snprintf(err, sizeof err, "%s", zt_tmp("int.err"));
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int nul = open("/dev/null", O_RDWR);
        if (fd < 0 || nul < 0 || dup2(fd, 2) < 0 || dup2(nul, 1) < 0 || dup2(nul, 0) < 0) _exit(97);
        execl(ZL_CLI, ZL_CLI, "zip", "--model", tx, "--content", lc, "--style", ls, "--fixed-inputs", io, "--mode", "full",
              "--steps", "1000000", "-o", out, "--mergers-out", mg, "--report", rep, "--threads", "2", "-v", (char *)NULL);
        _exit(98);
    }
    CHECK(pid > 0);
    if (pid <= 0) return;
    /* wait until the log shows the optimisation running (a line per step with -v), then interrupt */
    int seen = 0;
    for (int t = 0; t < 1200 && seen < 3; t++) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        char *txt = NULL;
        size_t len = 0;
        seen = 0;
        if (!zl_read_file(err, &txt, &len))
            for (const char *q = txt; (q = strstr(q, "/1000000 ")); q++) seen++;
        free(txt);
    }
    CHECKM(seen >= 3, "the zip run reached its steps (%d progress lines)", seen);
    kill(pid, SIGINT);
    /* it must end on its own within a minute (the stop is after the current step); else it is killed */
    int status = 0, ended = 0;
    for (int t = 0; t < 600 && !ended; t++) {
        ended = waitpid(pid, &status, WNOHANG) == pid;
        if (!ended) {
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (!ended) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    CHECKM(ended, "the interrupted zip ended by itself");
    char *log = NULL;
    size_t ll = 0;
    zl_read_file(err, &log, &ll);
    CHECKM(WIFEXITED(status) && WEXITSTATUS(status) == 0, "interrupted zip exits 0 (status %#x): %s", status,
           log ? log : "");
    CHECKM(log && strstr(log, "stopping after the current step") && strstr(log, "interrupted after"),
           "the interruption is said: %s", log ? log : "");
    free(log);
    CHECK(zl_file_exists(out) && zl_file_exists(mg) && zl_file_exists(rep));
    json_t *j = load_json(rep);
    json_int_t N = j ? json_integer_value(json_object_get(j, "steps_run")) : 0;
    CHECKM(j && json_is_true(json_object_get(j, "interrupted")) && N >= 2 && N < 1000000, "report: interrupted after %lld steps",
           (long long)N);
    CHECK(j && (json_int_t)json_array_size(json_object_get(j, "loss_curve")) == N);
    json_decref(j);
    /* the stop comes within a step or two of the signal (the log had 3 steps when it was sent) */
    CHECKM(N <= 200, "the run stopped %lld steps in, long after the signal", (long long)N);
    if (N < 2 || N > 200) return;

    /* the same number of steps, uninterrupted: the same mergers and LoRA */
    char out2[512], mg2[512], rep2[512];
    snprintf(out2, sizeof out2, "%s", zt_tmp("int_ref.safetensors"));
    snprintf(mg2, sizeof mg2, "%s", zt_tmp("int_ref_mergers.safetensors"));
    snprintf(rep2, sizeof rep2, "%s", zt_tmp("int_ref.json"));
    int rc = zt_cli("zip --model '%s' --content '%s' --style '%s' --fixed-inputs '%s' --mode full --steps %lld -o '%s' "
                    "--mergers-out '%s' --report '%s' --threads 2 -q",
                    tx, lc, ls, io, (long long)N, out2, mg2, rep2);
    CHECKM(rc == 0, "reference zip: %s", zt_err);
    CHECKM(same_tensors(mg, mg2), "the interrupted run's mergers equal %lld uninterrupted steps'", (long long)N);
    CHECKM(same_tensors(out, out2), "and so does the merged LoRA");
    json_t *j2 = load_json(rep2);
    json_t *curve2 = json_object_get(j2, "loss_curve");
    double closing = json_real_value(json_array_get(json_array_get(curve2, (size_t)N), 3));
    CHECK(j2 && json_is_false(json_object_get(j2, "interrupted")) && (json_int_t)json_array_size(curve2) == N + 1);

    /* resume: the first evaluation from the saved mergers is the reference run's closing one */
    char out3[512], rep3[512];
    snprintf(out3, sizeof out3, "%s", zt_tmp("int_resumed.safetensors"));
    snprintf(rep3, sizeof rep3, "%s", zt_tmp("int_resumed.json"));
    rc = zt_cli("zip --model '%s' --content '%s' --style '%s' --fixed-inputs '%s' --mode full --steps 1 -o '%s' "
                "--report '%s' --init-mergers '%s' --threads 2 -q",
                tx, lc, ls, io, out3, rep3, mg);
    CHECKM(rc == 0, "zip --init-mergers: %s", zt_err);
    json_t *j3 = rc ? NULL : load_json(rep3);
    double first = json_real_value(json_array_get(json_array_get(json_object_get(j3, "loss_curve"), 0), 3));
    CHECKM(j3 && first == closing, "resumed run starts at the saved mergers' loss: %.9g vs %.9g", first, closing);
    json_decref(j2);
    json_decref(j3);
    /* a mergers file for other layers is refused naming the flag */
    rc = zt_cli("zip --model '%s' --content '%s' --style '%s' --fixed-inputs '%s' --steps 1 -o '%s' --init-mergers '%s' -q",
                tx, lc, ls, io, out3, lc);
    CHECKM(rc != 0 && strstr(zt_err, lc), "--init-mergers with a LoRA file: exit %d %s", rc, zt_err);
}

int main(void) {
    zl_set_threads(2);
    test_default_prompt();
    test_fixed("mini-sdxl", "kohya");
    test_fixed("tiny-sd15", "kohya");
    test_fixed("tiny-sdxl", "peft"); /* last: test_eval_merge uses its merged LoRA */
    test_eval_merge(0);
    test_eval_merge(1);
    test_bad_inputs();
    test_end_to_end();
    test_clip_skip();
    test_interrupt_and_resume();
    return zt_done();
}
