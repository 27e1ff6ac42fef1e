/* The ZipLoRA objective against zip_io.safetensors of the three fixtures
 * (torch autograd in float64): the targets, loss terms and similarity at the
 * initial (all ones) and random mergers, every merger gradient, the 10-step
 * Adam trajectory and the final mergers; mergers files round trip; errors. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"
#include "ziplora/zip.h"

#define TOL_OUT 1e-4  /* FIXTURES.md outputs: max|diff| <= 1e-4 max(1, max|ref|) */
#define TOL_LOSS 1e-4 /* loss terms, relative */
#define TOL_GRAD 1e-3 /* gradients and Adam runs: ||diff|| / ||ref|| */

typedef struct {
    const char *fixture;
    zl_st_file *f;
    zl_unet *u;
    zl_lora *content, *style;
    zl_unet_input xc, xs;
    float *noisy_c, *noisy_s, *pe_c, *pe_s, *te_c, *te_s, *time_ids, *timestep, *target_c, *target_s;
    size_t n_out;
} zfix;

static float *load_t(zl_st_file *f, const char *name) {
    const zl_st_tensor *t = zl_st_find(f, name);
    if (!t) return NULL;
    float *p = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    zl_st_read_f32(t, p);
    return p;
}

static double scalar(zl_st_file *f, const char *name) {
    float *p = load_t(f, name);
    CHECKM(p != NULL, "zip_io: missing %s", name);
    double v = p ? p[0] : NAN;
    free(p);
    return v;
}

static zl_lora *load_lora(const zl_unet *u, const char *fixture, const char *which) {
    char rel[256], ac[256], acp[1024];
    snprintf(rel, sizeof rel, "%s/loras/%s.peft.safetensors", fixture, which);
    snprintf(ac, sizeof ac, "%s/loras/%s.adapter_config.json", fixture, which);
    snprintf(acp, sizeof acp, "%s", zt_data(ac));
    zl_lora_load_opts o = {.adapter_config = acp, .unet_config = zl_unet_get_config(u),
                           .expect_family = zl_unet_get_config(u)->family};
    zl_lora *l = NULL;
    int rc = zl_lora_load(zt_data(rel), &o, &l);
    CHECKM(rc == ZL_OK, "load %s: %s", rel, zl_errmsg());
    return l;
}

static int zfix_open(zfix *z, const char *fixture) {
    memset(z, 0, sizeof *z);
    z->fixture = fixture;
    char rel[256], c[256], cp[1024];
    snprintf(rel, sizeof rel, "%s/zip_io.safetensors", fixture);
    if (zl_st_open(zt_data(rel), &z->f)) { CHECKM(0, "open %s: %s", rel, zl_errmsg()); return -1; }
    snprintf(c, sizeof c, "%s/unet/config.json", fixture);
    snprintf(cp, sizeof cp, "%s", zt_data(c));
    snprintf(rel, sizeof rel, "%s/unet/diffusion_pytorch_model.safetensors", fixture);
    zl_unet_load_opts o = {.config_path = cp};
    if (zl_unet_load(zt_data(rel), &o, &z->u)) { CHECKM(0, "load %s: %s", fixture, zl_errmsg()); return -1; }
    z->content = load_lora(z->u, fixture, "content");
    z->style = load_lora(z->u, fixture, "style");
    if (!z->content || !z->style) return -1;
    z->noisy_c = load_t(z->f, "noisy_content");
    z->noisy_s = load_t(z->f, "noisy_style");
    z->pe_c = load_t(z->f, "prompt_embeds_content");
    z->pe_s = load_t(z->f, "prompt_embeds_style");
    z->te_c = load_t(z->f, "text_embeds_content");
    z->te_s = load_t(z->f, "text_embeds_style");
    z->time_ids = load_t(z->f, "time_ids");
    z->timestep = load_t(z->f, "timestep");
    z->target_c = load_t(z->f, "target_content");
    z->target_s = load_t(z->f, "target_style");
    const zl_st_tensor *s = zl_st_find(z->f, "noisy_content"), *pe = zl_st_find(z->f, "prompt_embeds_content");
    if (!s || !pe || !z->noisy_s || !z->pe_s || !z->timestep || !z->target_c || !z->target_s) {
        CHECKM(0, "%s zip_io: missing inputs", fixture);
        return -1;
    }
    zl_unet_input in = {(int)s->shape[0], (int)s->shape[2], (int)s->shape[3], (int)pe->shape[1], NULL, z->timestep,
                        NULL, NULL, z->time_ids};
    z->xc = z->xs = in;
    z->xc.sample = z->noisy_c; z->xc.context = z->pe_c; z->xc.text_embeds = z->te_c;
    z->xs.sample = z->noisy_s; z->xs.context = z->pe_s; z->xs.text_embeds = z->te_s;
    z->n_out = (size_t)s->numel;
    return 0;
}

static void zfix_close(zfix *z) {
    zl_unet_free(z->u);
    zl_lora_free(z->content);
    zl_lora_free(z->style);
    free(z->noisy_c); free(z->noisy_s); free(z->pe_c); free(z->pe_s); free(z->te_c); free(z->te_s);
    free(z->time_ids); free(z->timestep); free(z->target_c); free(z->target_s);
    zl_st_close(z->f);
}

static void check_rel(const char *fx, const char *what, double got, double ref, double tol) {
    double e = fabs(got - ref) / fmax(fabs(ref), 1e-30);
    CHECKM(e <= tol, "%s %s: %.10g vs reference %.10g (relative %.3g > %.0e)", fx, what, got, ref, e, tol);
}

/* Every layer's gradients against "<prefix>.<module>.grad_content|style"; every
 * reference gradient has a layer. */
static void check_grads(zfix *f, zl_zip *z, const char *prefix) {
    int n_ref = 0, n_got = 0;
    for (int i = 0; i < zl_st_count(f->f); i++) {
        const char *nm = zl_st_at(f->f, i)->name;
        size_t lp = strlen(prefix), ln = strlen(nm);
        if (!strncmp(nm, prefix, lp) && nm[lp] == '.' && ln > 13 &&
            (!strcmp(nm + ln - 13, ".grad_content") || !strcmp(nm + ln - 11, ".grad_style")))
            n_ref++;
    }
    double worst = 0;
    for (int i = 0; i < zl_zip_n_layers(z); i++) {
        const zl_zip_layer *l = zl_zip_layer_at(z, i);
        for (int s = 0; s < 2; s++) {
            if (!l->m[s]) continue;
            n_got++;
            char key[512];
            snprintf(key, sizeof key, "%s.%s.grad_%s", prefix, l->module, s ? "style" : "content");
            float *ref = load_t(f->f, key);
            CHECKM(ref != NULL, "%s: reference %s exists", f->fixture, key);
            if (!ref) continue;
            double e = zt_relerr(l->grad[s], ref, l->n);
            if (e > worst) worst = e;
            CHECKM(e <= TOL_GRAD, "%s %s: relative error %.3g > %.0e", f->fixture, key, e, TOL_GRAD);
            free(ref);
        }
    }
    CHECKM(n_got == n_ref, "%s %s: %d merger gradients vs %d in the reference", f->fixture, prefix, n_got, n_ref);
    printf("%s %s: %d merger gradients, worst relative error %.3g\n", f->fixture, prefix, n_got, worst);
}

/* Set every merger from "<prefix>.<module>.merger_content|style". */
static void set_from(zfix *f, zl_zip *z, const char *prefix) {
    for (int i = 0; i < zl_zip_n_layers(z); i++) {
        const zl_zip_layer *l = zl_zip_layer_at(z, i);
        for (int s = 0; s < 2; s++) {
            if (!l->m[s]) continue;
            char key[512];
            snprintf(key, sizeof key, "%s.%s.merger_%s", prefix, l->module, s ? "style" : "content");
            float *v = load_t(f->f, key);
            CHECKM(v != NULL, "%s: %s exists", f->fixture, key);
            if (v) CHECK_OK(zl_zip_set_merger(z, l->module, s, v, l->n));
            free(v);
        }
    }
}

static void check_losses(zfix *f, const zl_zip_loss *L, const char *prefix) {
    char k[64], w[96];
    snprintf(k, sizeof k, "%s.loss_content", prefix);
    snprintf(w, sizeof w, "%s loss_content", prefix);
    check_rel(f->fixture, w, L->loss_content, scalar(f->f, k), TOL_LOSS);
    snprintf(k, sizeof k, "%s.loss_style", prefix);
    snprintf(w, sizeof w, "%s loss_style", prefix);
    check_rel(f->fixture, w, L->loss_style, scalar(f->f, k), TOL_LOSS);
    snprintf(k, sizeof k, "%s.similarity", prefix);
    snprintf(w, sizeof w, "%s similarity", prefix);
    check_rel(f->fixture, w, L->similarity, scalar(f->f, k), TOL_LOSS);
}

/* mode: the UNet memory mode (both give identical gradients, test_unet_grad). */
static void test_fixture(const char *fixture, zl_unet_grad_mode mode) {
    zfix f;
    if (zfix_open(&f, fixture)) { zfix_close(&f); return; }
    zl_zip_opts opts;
    zl_zip_opts_default(&opts);
    CHECK(opts.lambda == 0.01 && opts.lr == 0.01 && opts.beta1 == 0.9 && opts.beta2 == 0.999 && opts.eps == 1e-8);
    opts.grad_mode = mode;
    zl_zip *z = NULL;
    CHECK_OK(zl_zip_create(f.u, f.content, f.style, &opts, &z));
    if (!z) { zfix_close(&f); return; }

    /* targets computed here agree with the fixture's */
    float *tc = malloc(f.n_out * sizeof(float)), *ts = malloc(f.n_out * sizeof(float));
    CHECK_OK(zl_zip_targets(z, &f.xc, &f.xs, tc, ts));
    char what[256];
    snprintf(what, sizeof what, "%s target_content", fixture);
    zt_close(what, tc, f.target_c, (int64_t)f.n_out, TOL_OUT);
    snprintf(what, sizeof what, "%s target_style", fixture);
    zt_close(what, ts, f.target_s, (int64_t)f.n_out, TOL_OUT);

    /* init: all ones */
    zl_zip_loss L;
    CHECK_OK(zl_zip_eval(z, &f.xc, f.target_c, &f.xs, f.target_s, 1, &L));
    check_losses(&f, &L, "init");
    check_grads(&f, z, "init");
    /* our own targets give the same losses to within their tolerance */
    zl_zip_loss L2;
    CHECK_OK(zl_zip_eval(z, &f.xc, tc, &f.xs, ts, 0, &L2));
    check_rel(fixture, "init loss_content (own targets)", L2.loss_content, L.loss_content, 1e-3);
    check_rel(fixture, "init loss_style (own targets)", L2.loss_style, L.loss_style, 1e-3);
    free(tc);
    free(ts);

    /* random mergers */
    set_from(&f, z, "random");
    CHECK_OK(zl_zip_eval(z, &f.xc, f.target_c, &f.xs, f.target_s, 1, &L));
    check_losses(&f, &L, "random");
    check_grads(&f, z, "random");
    zl_zip_free(z);

    /* 10 Adam steps from all ones */
    z = NULL;
    CHECK_OK(zl_zip_create(f.u, f.content, f.style, &opts, &z));
    const zl_st_tensor *tt = zl_st_find(f.f, "adam.trajectory");
    float *traj = load_t(f.f, "adam.trajectory");
    CHECK(tt && traj && tt->ndim == 2 && tt->shape[1] == 4);
    if (z && tt && traj) {
        int rows = (int)tt->shape[0];
        double worst = 0;
        for (int r = 0; r < rows; r++) {
            CHECK_OK(zl_zip_eval(z, &f.xc, f.target_c, &f.xs, f.target_s, r < rows - 1, &L));
            double got[4] = {L.loss_content, L.loss_style, L.similarity, L.total};
            for (int c = 0; c < 4; c++) {
                double ref = traj[r * 4 + c], e = fabs(got[c] - ref) / fmax(fabs(ref), 1e-30);
                if (e > worst) worst = e;
                CHECKM(e <= TOL_GRAD, "%s adam.trajectory[%d][%d]: %.10g vs %.10g (relative %.3g)", fixture, r, c,
                       got[c], ref, e);
            }
            if (r < rows - 1) CHECK_OK(zl_zip_adam_step(z));
        }
        CHECK(zl_zip_steps(z) == rows - 1);
        double worst_m = 0;
        int nm = 0;
        for (int i = 0; i < zl_zip_n_layers(z); i++) {
            const zl_zip_layer *l = zl_zip_layer_at(z, i);
            for (int s = 0; s < 2; s++) {
                if (!l->m[s]) continue;
                char key[512];
                snprintf(key, sizeof key, "adam.%s.merger_%s", l->module, s ? "style" : "content");
                float *ref = load_t(f.f, key);
                CHECKM(ref != NULL, "%s: %s exists", fixture, key);
                if (!ref) continue;
                double e = zt_relerr(l->m[s], ref, l->n);
                if (e > worst_m) worst_m = e;
                CHECKM(e <= TOL_GRAD, "%s %s: relative error %.3g", fixture, key, e);
                free(ref);
                nm++;
            }
        }
        printf("%s adam: trajectory worst relative error %.3g, %d final mergers worst %.3g\n", fixture, worst, nm,
               worst_m);
        /* a step needs a fresh gradient */
        CHECK_ERR(zl_zip_adam_step(z));
    }
    free(traj);

    /* mergers file round trip through the shared reader (merge.c) */
    if (z) {
        const char *mp = zt_tmp("mergers.safetensors");
        CHECK_OK(zl_zip_save_mergers(z, mp));
        zl_mergers *mg = NULL;
        CHECK_OK(zl_mergers_load(mp, &mg));
        zl_zip *z2 = NULL;
        CHECK_OK(zl_zip_create(f.u, f.content, f.style, NULL, &z2));
        if (mg && z2) {
            CHECK_OK(zl_zip_set_mergers(z2, mg));
            int same = 1;
            for (int i = 0; i < zl_zip_n_layers(z); i++) {
                const zl_zip_layer *a = zl_zip_layer_at(z, i), *b = zl_zip_layer_at(z2, i);
                for (int s = 0; s < 2; s++)
                    if (a->m[s]) same &= b->m[s] && !memcmp(a->m[s], b->m[s], (size_t)a->n * sizeof(float));
            }
            CHECKM(same, "%s: mergers survive a save/load round trip", fixture);
        }
        zl_mergers_free(mg);
        zl_zip_free(z2);
    }
    zl_zip_free(z);
    zfix_close(&f);
}

/* Both UNet memory modes give bitwise equal losses and gradients. */
static void test_modes(const char *fixture) {
    zfix f;
    if (zfix_open(&f, fixture)) { zfix_close(&f); return; }
    float *g[2] = {NULL, NULL};
    double lc[2] = {0, 0};
    size_t total = 0;
    for (int md = 0; md < 2; md++) {
        zl_zip_opts o;
        zl_zip_opts_default(&o);
        o.grad_mode = md ? ZL_UNET_GRAD_RECOMPUTE : ZL_UNET_GRAD_KEEP;
        zl_zip *z = NULL;
        CHECK_OK(zl_zip_create(f.u, f.content, f.style, &o, &z));
        if (!z) break;
        set_from(&f, z, "random");
        zl_zip_loss L;
        CHECK_OK(zl_zip_eval(z, &f.xc, f.target_c, &f.xs, f.target_s, 1, &L));
        lc[md] = L.loss_content;
        total = 0;
        for (int i = 0; i < zl_zip_n_layers(z); i++) total += 2 * (size_t)zl_zip_layer_at(z, i)->n;
        g[md] = calloc(total, sizeof(float));
        size_t o2 = 0;
        for (int i = 0; i < zl_zip_n_layers(z); i++) {
            const zl_zip_layer *l = zl_zip_layer_at(z, i);
            for (int sd = 0; sd < 2; sd++, o2 += (size_t)l->n)
                if (l->grad[sd]) memcpy(g[md] + o2, l->grad[sd], (size_t)l->n * sizeof(float));
        }
        zl_zip_free(z);
    }
    CHECKM(g[0] && g[1] && lc[0] == lc[1] && !memcmp(g[0], g[1], total * sizeof(float)),
           "%s: keep and recompute give identical losses and merger gradients", fixture);
    free(g[0]);
    free(g[1]);
    zfix_close(&f);
}

static void test_errors(void) {
    zfix f;
    if (zfix_open(&f, "tiny-sdxl")) { zfix_close(&f); return; }
    zl_zip *z = NULL;
    CHECK_ERR(zl_zip_create(f.u, NULL, f.style, NULL, &z));
    CHECK(z == NULL);
    CHECK_OK(zl_zip_create(f.u, f.content, f.style, NULL, &z));
    if (z) {
        float v[1] = {1};
        CHECK_ERR(zl_zip_set_merger(z, "no.such.module", 0, v, 1));
        const zl_zip_layer *l = zl_zip_layer_at(z, 0);
        CHECK_ERR(zl_zip_set_merger(z, l->module, 0, v, 1)); /* wrong length */
        float *nanv = malloc((size_t)l->n * sizeof(float));
        for (int j = 0; j < l->n; j++) nanv[j] = NAN;
        int side = l->m[0] ? 0 : 1;
        CHECK_ERR(zl_zip_set_merger(z, l->module, side, nanv, l->n));
        free(nanv);
        CHECK(zl_zip_find(z, l->module) == l);
        CHECK_ERR(zl_zip_adam_step(z)); /* no gradient yet */
        zl_zip_loss L;
        CHECK_ERR(zl_zip_eval(z, &f.xc, NULL, &f.xs, f.target_s, 1, &L));
        zl_unet_input bad = f.xc;
        bad.sample = NULL; /* (odd sizes are valid inputs: the UNet resizes its levels) */
        CHECK_ERR(zl_zip_eval(z, &bad, f.target_c, &f.xs, f.target_s, 1, &L));
        CHECK_ERR(zl_zip_adam_step(z));
        /* a layer only the style LoRA holds has no content merger, in memory or in a file */
        const zl_zip_layer *so = NULL;
        for (int i = 0; i < zl_zip_n_layers(z) && !so; i++)
            if (!zl_zip_layer_at(z, i)->m[0]) so = zl_zip_layer_at(z, i);
        CHECK(so != NULL);
        if (so) {
            float *ones = malloc((size_t)so->n * sizeof(float));
            for (int j = 0; j < so->n; j++) ones[j] = 1.0f;
            CHECK_ERR(zl_zip_set_merger(z, so->module, 0, ones, so->n));
            char key[512];
            snprintf(key, sizeof key, "%s.merger_content", so->module);
            zl_st_entry e = {.name = key, .dtype = ZL_DT_F32, .ndim = 1, .shape = {so->n}, .data = ones};
            const char *mp = zt_tmp("bad_mergers.safetensors");
            CHECK_OK(zl_st_write(mp, &e, 1, NULL, 0, NULL, 0));
            zl_mergers *mg = NULL;
            CHECK_OK(zl_mergers_load(mp, &mg));
            if (mg) CHECK_ERR(zl_zip_set_mergers(z, mg));
            zl_mergers_free(mg);
            free(ones);
        }
        CHECK_ERR(zl_zip_save_mergers(z, zt_tmp("no/such/dir/m.safetensors")));
    }
    zl_zip_free(z);
    zfix_close(&f);
}

int main(void) {
    /* One thread keeps this fast on a shared machine; test_unet_grad covers two. */
    zl_set_threads(1);
    test_fixture("tiny-sdxl", ZL_UNET_GRAD_RECOMPUTE);
    test_fixture("mini-sdxl", ZL_UNET_GRAD_KEEP);
    test_fixture("tiny-sd15", ZL_UNET_GRAD_KEEP);
    test_modes("tiny-sd15");
    test_errors();
    return zt_done();
}
