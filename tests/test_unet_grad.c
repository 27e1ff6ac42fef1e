/* The UNet backward against central finite differences of the full tiny UNets
 * (tiny-sdxl: linear projections and SDXL added conditioning; tiny-sd15: conv
 * 1x1 projections), with the fixture's content and style LoRAs as runtime
 * branches at random mergers, plus a test LoRA on the modules the fixture
 * LoRAs leave out (conv_in, conv_out, samplers, a conv shortcut, time_emb_proj,
 * the time and added embeddings). Checked: the taped forward equals
 * zl_unet_forward; both memory modes give bitwise equal gradients; dL/d(sample)
 * and dL/dm for sampled merger entries and along random directions; 1 vs 2
 * threads; errors.
 *
 * The loss is L = sum(out * r) with a fixed random r, summed in double, so
 * dL/d(out) = r exactly. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/unet_internal.h"
#include "nn/conv_tiles.h"
#include "testlib.h"
#include "ziplora/unet.h"

/* A small deterministic generator (tests must not depend on libc rand). */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double urand(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

typedef struct {
    const char *fixture;
    zl_unet *u;
    zl_lora *content, *style, *extra;
    zl_unet_input in;
    float *sample, *ctx, *text_embeds, *time_ids, timestep;
    float *r; // [n_out] the loss weights
    size_t n_in, n_out;
} rig;

static float *load_t(zl_st_file *f, const char *name) {
    const zl_st_tensor *t = zl_st_find(f, name);
    if (!t) return NULL;
    float *p = malloc((size_t)t->numel * sizeof(float));
    zl_st_read_f32(t, p);
    return p;
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

/* A LoRA on modules the fixture LoRAs do not touch, with random factors, so
 * every kind of branch site gets a finite-difference check. */
static zl_lora *extra_lora(zl_unet *u) {
    const char *names[] = {"conv_in", "conv_out", "down_blocks.0.downsamplers.0.conv", "up_blocks.0.upsamplers.0.conv",
                           "down_blocks.1.resnets.0.conv_shortcut", "down_blocks.2.resnets.0.conv_shortcut",
                           "down_blocks.1.resnets.0.time_emb_proj",
                           "time_embedding.linear_1", "time_embedding.linear_2", "add_embedding.linear_2"};
    int nn = (int)(sizeof names / sizeof *names);
    zl_lora *l = calloc(1, sizeof *l);
    l->layers = calloc((size_t)nn, sizeof *l->layers);
    for (int i = 0; i < nn; i++) {
        zl_unet_mod *m = zl_unet_find_mod(u, names[i]);
        if (!m) continue;
        zl_lora_layer *y = &l->layers[l->n++];
        y->module = strdup(names[i]);
        y->part = ZL_PART_UNET;
        y->kind = m->kind == ZL_MOD_CONV ? ZL_LORA_CONV : ZL_LORA_LINEAR;
        y->rank = 2;
        y->in_features = m->in;
        y->out_features = m->out;
        y->kh = m->kh;
        y->kw = m->kw;
        y->alpha = 1.0f;
        size_t nd = (size_t)2 * m->in * m->kh * m->kw, nu = (size_t)m->out * 2;
        y->down = malloc(nd * sizeof(float));
        y->up = malloc(nu * sizeof(float));
        float sd = 1.0f / sqrtf((float)(m->in * m->kh * m->kw));
        for (size_t j = 0; j < nd; j++) y->down[j] = (float)(2 * urand() - 1) * sd;
        for (size_t j = 0; j < nu; j++) y->up[j] = (float)(2 * urand() - 1) * 0.3f;
        y->dtype = ZL_DT_F32;
    }
    return l;
}

static void free_extra(zl_lora *l) {
    if (!l) return;
    for (int i = 0; i < l->n; i++) {
        free(l->layers[i].module);
        free(l->layers[i].down);
        free(l->layers[i].up);
    }
    free(l->layers);
    free(l);
}

/* Random mergers in [0.5, 1.5] on every branch of every slot. */
static void random_mergers(zl_unet *u) {
    for (int i = 0; i < u->n_mods; i++) {
        zl_unet_mod *m = u->mods[i];
        for (int k = 0; k < m->n_br; k++) {
            float *v = malloc((size_t)m->in * sizeof(float));
            for (int j = 0; j < m->in; j++) v[j] = (float)(0.5 + urand());
            CHECK_OK(zl_unet_set_merger(u, m->br[k].slot, m->name, v, m->in));
            free(v);
        }
    }
}

static int rig_open(rig *g, const char *fixture) {
    memset(g, 0, sizeof *g);
    g->fixture = fixture;
    char w[256], c[256], cp[1024], zio[256];
    snprintf(c, sizeof c, "%s/unet/config.json", fixture);
    snprintf(cp, sizeof cp, "%s", zt_data(c));
    snprintf(w, sizeof w, "%s/unet/diffusion_pytorch_model.safetensors", fixture);
    zl_unet_load_opts o = {.config_path = cp};
    if (zl_unet_load(zt_data(w), &o, &g->u)) { CHECKM(0, "load %s: %s", fixture, zl_errmsg()); return -1; }
    g->content = load_lora(g->u, fixture, "content");
    g->style = load_lora(g->u, fixture, "style");
    g->extra = extra_lora(g->u);
    if (!g->content || !g->style) return -1;
    CHECK_OK(zl_unet_add_lora(g->u, g->content, 1.0f, ZL_UNET_LORA_RUNTIME, NULL));
    CHECK_OK(zl_unet_add_lora(g->u, g->style, 0.8f, ZL_UNET_LORA_RUNTIME, NULL));
    CHECK_OK(zl_unet_add_lora(g->u, g->extra, 1.0f, ZL_UNET_LORA_RUNTIME, NULL));
    random_mergers(g->u);
    /* Inputs: the content side of zip_io (batch 1), a realistic noisy latent. */
    snprintf(zio, sizeof zio, "%s/zip_io.safetensors", fixture);
    zl_st_file *f = NULL;
    if (zl_st_open(zt_data(zio), &f)) { CHECKM(0, "open %s: %s", zio, zl_errmsg()); return -1; }
    const zl_st_tensor *s = zl_st_find(f, "noisy_content"), *pe = zl_st_find(f, "prompt_embeds_content");
    g->in.B = (int)s->shape[0];
    g->in.H = (int)s->shape[2];
    g->in.W = (int)s->shape[3];
    g->in.T = (int)pe->shape[1];
    g->sample = load_t(f, "noisy_content");
    g->ctx = load_t(f, "prompt_embeds_content");
    g->text_embeds = load_t(f, "text_embeds_content");
    g->time_ids = load_t(f, "time_ids");
    float *ts = load_t(f, "timestep");
    g->timestep = ts[0];
    free(ts);
    g->n_in = (size_t)s->numel;
    zl_st_close(f);
    g->in.sample = g->sample;
    g->in.timestep = &g->timestep;
    g->in.context = g->ctx;
    g->in.text_embeds = g->text_embeds;
    g->in.time_ids = g->time_ids;
    g->n_out = (size_t)g->in.B * zl_unet_get_config(g->u)->out_channels * g->in.H * g->in.W;
    g->r = malloc(g->n_out * sizeof(float));
    for (size_t i = 0; i < g->n_out; i++) g->r[i] = (float)(2 * urand() - 1);
    return 0;
}

static void rig_close(rig *g) {
    zl_unet_free(g->u);
    zl_lora_free(g->content);
    zl_lora_free(g->style);
    free_extra(g->extra);
    free(g->sample); free(g->ctx); free(g->text_embeds); free(g->time_ids); free(g->r);
}

/* L = sum(out * r) in double. */
static double loss(rig *g) {
    float *out = malloc(g->n_out * sizeof(float));
    int rc = zl_unet_forward(g->u, &g->in, out);
    CHECKM(rc == ZL_OK, "forward: %s", zl_errmsg());
    double L = 0;
    for (size_t i = 0; i < g->n_out; i++) L += (double)out[i] * g->r[i];
    free(out);
    return L;
}

typedef struct {
    float *dsample;
    int n;         // total merger entries
    float *dm;     // all merger gradients, module build order, branches in order
} grads;

static void grads_free(grads *q) { free(q->dsample); free(q->dm); }

static int n_merger_entries(const zl_unet *u) {
    int n = 0;
    for (int i = 0; i < u->n_mods; i++) n += u->mods[i]->n_br * u->mods[i]->in;
    return n;
}

static grads backward(rig *g, zl_unet_grad_mode mode, float *out_fwd) {
    grads q = {0};
    zl_unet_tape *t = NULL;
    float *out = malloc(g->n_out * sizeof(float));
    CHECK_OK(zl_unet_zero_merger_grads(g->u));
    CHECK_OK(zl_unet_forward_tape(g->u, &g->in, mode, out, &t));
    if (out_fwd) memcpy(out_fwd, out, g->n_out * sizeof(float));
    q.dsample = calloc(g->n_in, sizeof(float));
    CHECK_OK(zl_unet_backward(g->u, t, g->r, q.dsample));
    CHECK_ERR(zl_unet_backward(g->u, t, g->r, q.dsample)); /* a tape is used once */
    zl_unet_tape_free(t);
    free(out);
    q.n = n_merger_entries(g->u);
    q.dm = malloc((size_t)(q.n ? q.n : 1) * sizeof(float));
    int o = 0;
    for (int i = 0; i < g->u->n_mods; i++) {
        zl_unet_mod *m = g->u->mods[i];
        for (int k = 0; k < m->n_br; k++) {
            int n = 0;
            const float *gr = zl_unet_merger_grad(g->u, m->br[k].slot, m->name, &n);
            CHECK(gr != NULL && n == m->in);
            if (gr) memcpy(q.dm + o, gr, (size_t)m->in * sizeof(float));
            o += m->in;
        }
    }
    return q;
}

/* Finite differences. The forward is float32, so L (|L| ~ 10) carries rounding
 * noise of ~1e-5 absolute. A central difference D(h) = (L(h) - L(-h)) / 2h has
 * truncation error c h^2 and noise ~1e-5 / h. Richardson's (4 D(h/2) - D(h)) / 3
 * cancels the h^2 term, leaving O(h^4).
 *  - Along a random direction of all entries at once, L is curved (measured:
 *    D(1e-2) is off by ~1e-2 relative), so h = 1e-2; the extrapolated value then
 *    agrees to ~1e-5 relative, and noise is ~1e-3 absolute against |dL/dt| of
 *    5..20: tolerance 2e-3 absolute + 1e-4 relative.
 *  - One entry barely bends L, so h = 0.1 keeps the noise near 2e-4; entries
 *    (|dL/dp| ~ 1e-3 .. 1) get 5e-4 absolute + 1e-2 relative. */
#define EPS_DIR 1e-2
#define EPS_ENTRY 1e-1
#define ENTRY_ABS 5e-4
#define ENTRY_REL 1e-2
#define DIR_ABS 2e-3
#define DIR_REL 1e-4

/* Parameters p[i] = p0[i] + t v[i] (pointers into the input or the mergers). */
typedef struct {
    rig *g;
    float **p;
    float *p0, *v;
    size_t n;
    double h;
} pert;

static double eval_at(pert *q, double t) {
    for (size_t i = 0; i < q->n; i++) *q->p[i] = q->p0[i] + (float)t * q->v[i];
    return loss(q->g);
}

static double fd(pert *q) {
    double h = q->h, d1 = (eval_at(q, h) - eval_at(q, -h)) / (2 * h);
    double d2 = (eval_at(q, h / 2) - eval_at(q, -h / 2)) / h;
    for (size_t i = 0; i < q->n; i++) *q->p[i] = q->p0[i];
    return (4 * d2 - d1) / 3;
}

static double fd1(rig *g, float *p) {
    float p0 = *p, v = 1.0f;
    pert q = {g, &p, &p0, &v, 1, EPS_ENTRY};
    return fd(&q);
}

static void check_entry(const char *what, double f, double an) {
    int ok = fabs(f - an) <= ENTRY_ABS + ENTRY_REL * fabs(f);
    CHECKM(ok, "%s: finite difference %.6g vs backward %.6g", what, f, an);
}

/* Along a random +-1 direction over every entry of pp. */
static void check_dir(rig *g, const char *what, float **pp, const float *grad, size_t n) {
    pert q = {g, pp, malloc(n * sizeof(float)), malloc(n * sizeof(float)), n, EPS_DIR};
    double an = 0;
    for (size_t i = 0; i < n; i++) {
        q.p0[i] = *pp[i];
        q.v[i] = urand() < 0.5 ? -1.0f : 1.0f;
        an += (double)q.v[i] * grad[i];
    }
    double f = fd(&q);
    CHECKM(fabs(f - an) <= DIR_ABS + DIR_REL * fabs(f), "%s along a random direction over %zu entries: fd %.8g vs backward %.8g",
           what, n, f, an);
    free(q.p0);
    free(q.v);
}

static void test_fd(const char *fixture) {
    rig g;
    if (rig_open(&g, fixture)) { rig_close(&g); return; }
    zl_unet *u = g.u;
    size_t nout = g.n_out;
    float *o_keep = malloc(nout * sizeof(float)), *o_rec = malloc(nout * sizeof(float)), *o_ref = malloc(nout * sizeof(float));
    CHECK_OK(zl_unet_forward(u, &g.in, o_ref));
    grads a = backward(&g, ZL_UNET_GRAD_KEEP, o_keep);
    grads b = backward(&g, ZL_UNET_GRAD_RECOMPUTE, o_rec);
    char what[300];
    snprintf(what, sizeof what, "%s taped forward (keep) vs zl_unet_forward", fixture);
    zt_close(what, o_keep, o_ref, (int64_t)nout, 1e-6);
    CHECKM(!memcmp(o_keep, o_rec, nout * sizeof(float)), "%s: keep and recompute forwards are identical", fixture);
    CHECKM(!memcmp(a.dsample, b.dsample, g.n_in * sizeof(float)), "%s: dsample keep == recompute", fixture);
    CHECKM(a.n == b.n && !memcmp(a.dm, b.dm, (size_t)a.n * sizeof(float)), "%s: merger grads keep == recompute", fixture);

    /* Input latent: a few single entries, then a random direction. */
    for (int t = 0; t < 4; t++) {
        size_t i = (size_t)(urand() * g.n_in);
        snprintf(what, sizeof what, "%s dL/dsample[%zu]", fixture, i);
        check_entry(what, fd1(&g, &g.sample[i]), a.dsample[i]);
    }
    float **pp = malloc((g.n_in > (size_t)a.n ? g.n_in : (size_t)a.n) * sizeof(float *));
    for (size_t i = 0; i < g.n_in; i++) pp[i] = &g.sample[i];
    snprintf(what, sizeof what, "%s dL/dsample", fixture);
    check_dir(&g, what, pp, a.dsample, g.n_in);

    /* Mergers: two entries at every kind of branch site, then all together. */
    const char *sites[] = {"attn1.to_q", "attn1.to_v", "attn2.to_k", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2",
                           "proj_in", "proj_out", "conv1", "conv2", "conv_in", "conv_out", "downsamplers.0.conv",
                           "upsamplers.0.conv", "conv_shortcut", "time_emb_proj", "time_embedding.linear_1",
                           "time_embedding.linear_2", "add_embedding.linear_2"};
    int nsites = (int)(sizeof sites / sizeof *sites), found = 0;
    for (int s = 0; s < nsites; s++) {
        int o = 0, done = 0;
        for (int i = 0; i < u->n_mods && !done; i++) {
            zl_unet_mod *m = u->mods[i];
            size_t ln = strlen(m->name), sl = strlen(sites[s]);
            if (m->n_br && ln >= sl && !strcmp(m->name + ln - sl, sites[s])) {
                int k = m->n_br - 1; /* the last slot on it (style, or the test LoRA) */
                for (int rep = 0; rep < 2; rep++) {
                    int j = (int)(urand() * m->in);
                    snprintf(what, sizeof what, "%s dL/dm %s slot %d [%d]", fixture, m->name, m->br[k].slot, j);
                    check_entry(what, fd1(&g, &m->br[k].merger[j]), a.dm[o + k * m->in + j]);
                }
                done = 1;
                found++;
            }
            o += m->n_br * m->in;
        }
    }
    /* tiny-sdxl lacks a level-2 shortcut name, tiny-sd15 the added embedding and a level-1 shortcut */
    CHECKM(found >= nsites - 2, "%s: %d of %d branch sites found", fixture, found, nsites);
    size_t o = 0;
    for (int i = 0; i < u->n_mods; i++)
        for (int k = 0; k < u->mods[i]->n_br; k++)
            for (int j = 0; j < u->mods[i]->in; j++) pp[o++] = &u->mods[i]->br[k].merger[j];
    snprintf(what, sizeof what, "%s dL/dm", fixture);
    check_dir(&g, what, pp, a.dm, o);
    free(pp);
    grads_free(&a);
    grads_free(&b);
    free(o_keep); free(o_rec); free(o_ref);
    rig_close(&g);
}

/* At a 32x32 latent the first level's 3x3 convolutions have 64 tiles and run
 * by Winograd, forward and input gradient, with the weights transformed
 * straight from their stored F16 (the fixture latents are too small for it).
 * The same UNet with Winograd turned off (im2col + sgemm everywhere) is the
 * reference: outputs within FIXTURES.md's forward tolerance, gradients within
 * its gradient tolerance. */
static void test_winograd_unet(const char *fixture) {
    rig g;
    if (rig_open(&g, fixture)) { rig_close(&g); return; }
    const int S = 32, cin = zl_unet_get_config(g.u)->in_channels;
    free(g.sample);
    free(g.r);
    g.in.H = g.in.W = S;
    g.n_in = (size_t)g.in.B * cin * S * S;
    g.n_out = (size_t)g.in.B * zl_unet_get_config(g.u)->out_channels * S * S;
    g.sample = malloc(g.n_in * sizeof(float));
    g.r = malloc(g.n_out * sizeof(float));
    for (size_t i = 0; i < g.n_in; i++) g.sample[i] = (float)(2 * urand() - 1);
    for (size_t i = 0; i < g.n_out; i++) g.r[i] = (float)(2 * urand() - 1);
    g.in.sample = g.sample;
    float *o1 = malloc(g.n_out * sizeof(float)), *o2 = malloc(g.n_out * sizeof(float));
    const long calls0 = zl_conv2d_winograd_calls();
    grads a = backward(&g, ZL_UNET_GRAD_KEEP, o1);
    const long calls = zl_conv2d_winograd_calls() - calls0;
    zl_conv2d_winograd_disable(1);
    grads b = backward(&g, ZL_UNET_GRAD_KEEP, o2);
    CHECKM(zl_conv2d_winograd_calls() - calls0 == calls, "%s: no Winograd call while turned off", fixture);
    zl_conv2d_winograd_disable(0);
    char what[200];
    CHECKM(calls >= 4, "%s at 32x32: %ld Winograd convolutions ran (forward and input gradient)", fixture, calls);
    snprintf(what, sizeof what, "%s 32x32 forward, Winograd vs im2col", fixture);
    zt_close(what, o1, o2, (int64_t)g.n_out, 1e-4);
    double e = zt_relerr(a.dsample, b.dsample, (int64_t)g.n_in);
    CHECKM(e <= 1e-3, "%s 32x32 dL/dsample, Winograd vs im2col: relative error %.3g", fixture, e);
    CHECKM(a.n == b.n, "%s: same merger count", fixture);
    e = zt_relerr(a.dm, b.dm, a.n);
    CHECKM(e <= 1e-3, "%s 32x32 dL/dm, Winograd vs im2col: relative error %.3g", fixture, e);
    grads_free(&a);
    grads_free(&b);
    free(o1), free(o2);
    rig_close(&g);
}

/* 1 vs 2 threads: same gradients to float reassociation. */
static void test_threads(void) {
    rig g;
    if (rig_open(&g, "tiny-sdxl")) { rig_close(&g); return; }
    int saved = zl_get_threads();
    zl_set_threads(1);
    grads a = backward(&g, ZL_UNET_GRAD_RECOMPUTE, NULL);
    zl_set_threads(2);
    grads b = backward(&g, ZL_UNET_GRAD_RECOMPUTE, NULL);
    zl_set_threads(saved);
    double e1 = zt_relerr(b.dsample, a.dsample, (int64_t)g.n_in), e2 = zt_relerr(b.dm, a.dm, a.n);
    printf("1 vs 2 threads: dsample %.3g, mergers %.3g relative\n", e1, e2);
    CHECKM(e1 <= 1e-6 && e2 <= 1e-6, "1 vs 2 threads: dsample %.3g, mergers %.3g (<= 1e-6)", e1, e2);
    grads_free(&a);
    grads_free(&b);
    rig_close(&g);
}

static void test_errors(void) {
    rig g;
    if (rig_open(&g, "tiny-sdxl")) { rig_close(&g); return; }
    float *out = malloc(g.n_out * sizeof(float));
    zl_unet_tape *t = NULL;
    zl_unet_input bad = g.in;
    bad.text_embeds = NULL;
    CHECK_ERR(zl_unet_forward_tape(g.u, &bad, ZL_UNET_GRAD_KEEP, out, &t));
    CHECK_ERR(zl_unet_forward_tape(g.u, &g.in, (zl_unet_grad_mode)7, out, &t));
    CHECK_ERR(zl_unet_backward(g.u, NULL, g.r, NULL));
    int n = -1;
    CHECK(zl_unet_merger_grad(g.u, 0, "no.such.module", &n) == NULL && n == 0);
    CHECK(zl_unet_merger_grad(g.u, 5, "conv_in", &n) == NULL);
    /* a forward-only tape may be freed without a backward */
    CHECK_OK(zl_unet_forward_tape(g.u, &g.in, ZL_UNET_GRAD_KEEP, out, &t));
    zl_unet_tape_free(t);
    free(out);
    rig_close(&g);
}

int main(void) {
    zl_set_threads(1);
    test_fd("tiny-sdxl");
    test_fd("tiny-sd15");
    test_winograd_unet("tiny-sdxl");
    test_winograd_unet("tiny-sd15");
    test_threads();
    test_errors();
    return zt_done();
}
