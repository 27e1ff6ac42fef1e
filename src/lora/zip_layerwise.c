/* The layerwise ZipLoRA mode (include/ziplora/zip_layerwise.h): owns the
 * capture of every LoRA layer's input second moments during the driver's
 * target forwards (through the UNet's module hook), the per-layer quadratic
 * objectives built from them, their calibration against a full-model gradient,
 * the per-layer Adam solves (parallel over layers), and the optional full-mode
 * steps that follow. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ziplora/fileio.h"
#include "models/unet_internal.h"
#include "nn/ops.h"
#include "ziplora/progress.h"
#include "ziplora/zip_layerwise.h"

void zl_layerwise_opts_default(zl_layerwise_opts *o) {
    memset(o, 0, sizeof *o);
    o->draws = 4;
    o->max_tokens = 4096;
    o->capture_mb = 4096;
    o->weighting = ZL_LW_WEIGHT_RAW;
    o->cal_draws = 1;
    o->lambda_scale = 1;
    o->steps = 0;
    o->lr = 0;
    o->full_steps = 0;
}

/* ------------------------------------------------------------------ one layer */

/* The lower triangle of a symmetric M [K, K] from its upper one, by tiles
 * (each thread writes whole rows of its tiles and reads only the upper part). */
#define MIRROR_LOWER(name, T)                                                                                          \
    static void name(T *M, int K) {                                                                                    \
        _Pragma("omp parallel for schedule(static) if ((size_t)K * K > 1 << 20)")                                      \
        for (int a0 = 0; a0 < K; a0 += 64)                                                                             \
            for (int b0 = 0; b0 <= a0; b0 += 64)                                                                       \
                for (int a = a0; a < a0 + 64 && a < K; a++)                                                            \
                    for (int b = b0; b < b0 + 64 && b < a; b++) M[(size_t)a * K + b] = M[(size_t)b * K + a];           \
    }
MIRROR_LOWER(mirror_lower_d, double)
MIRROR_LOWER(mirror_lower, float)

/* Q_c, Q_s [nv, nv] (nv = n per present side) of one layer; see the header. */
static int layer_quad(const zl_lora_layer *lc, const zl_lora_layer *ls, const float *Cs[2], const double tok[2],
                      double **Qout, int *nv_out) {
    const zl_lora_layer *ly[2] = {lc, ls};
    const zl_lora_layer *any = lc ? lc : ls;
    const int n = any->in_features, kk = any->kind == ZL_LORA_CONV ? any->kh * any->kw : 1, K = n * kk;
    const int out = any->out_features;
    int ns = 0, R = 0, off[2] = {0, 0}, blk[2] = {0, 0};
    for (int s = 0; s < 2; s++)
        if (ly[s]) {
            off[s] = R;
            blk[s] = ns++;
            R += ly[s]->rank;
        }
    const int nv = ns * n;
    float *P = malloc(sizeof(float) * (size_t)out * R);  // [out, R]
    float *M = malloc(sizeof(float) * (size_t)R * R);    // [R, R] = P^T P
    float *T = malloc(sizeof(float) * (size_t)R * K);    // [r_x, K]
    float *G = malloc(sizeof(float) * (size_t)K * K);    // [K, K] = A_x^T M_xy A_y
    double *Q = calloc((size_t)2 * nv * nv, sizeof(double)); // Q_c then Q_s, [nv, nv] each
    int rc = ZL_OK;
    if (!P || !M || !T || !G || !Q) {
        rc = ZL_ENOMEM;
        goto done;
    }
    for (int s = 0; s < 2; s++) {
        if (!ly[s]) continue;
        const float sc = zl_lora_scale(ly[s]);
        for (int o = 0; o < out; o++)
            for (int i = 0; i < ly[s]->rank; i++) P[(size_t)o * R + off[s] + i] = sc * ly[s]->up[(size_t)o * ly[s]->rank + i];
    }
    zl_sgemm(1, 0, R, R, out, 1.0f, P, R, P, R, 0.0f, M, R);
    for (int x = 0; x < 2; x++)
        for (int y = x; y < 2; y++) {
            if (!ly[x] || !ly[y]) continue;
            const int rx = ly[x]->rank, ry = ly[y]->rank;
            zl_sgemm(0, 0, rx, K, ry, 1.0f, M + (size_t)off[x] * R + off[y], R, ly[y]->down, K, 0.0f, T, K);
            zl_sgemm(1, 0, K, K, rx, 1.0f, ly[x]->down, K, T, K, 0.0f, G, K);
            for (int t = 0; t < 2; t++) {
                if (!(tok[t] > 0) || !Cs[t]) continue;
                const float *C = Cs[t];
                double *Qt = Q + (size_t)t * nv * nv, norm = 1.0 / (tok[t] * out);
                /* channel-level reduction over the kernel offsets of both patches; the
                 * upper triangle only (jj >= j on a diagonal block), mirrored below */
                for (int j = 0; j < n; j++) {
                    double *qrow = Qt + (size_t)(blk[x] * n + j) * nv + (size_t)blk[y] * n;
                    if (kk == 1) {
                        const float *g = G + (size_t)j * K, *c = C + (size_t)j * K;
                        #pragma omp simd
                        for (int jj = x == y ? j : 0; jj < n; jj++) qrow[jj] = (double)g[jj] * c[jj] * norm;
                        continue;
                    }
                    for (int jj = x == y ? j : 0; jj < n; jj++) {
                        double acc = 0;
                        for (int o = 0; o < kk; o++) {
                            const float *g = G + ((size_t)j * kk + o) * K + (size_t)jj * kk;
                            const float *c = C + ((size_t)j * kk + o) * K + (size_t)jj * kk;
                            for (int oo = 0; oo < kk; oo++) acc += (double)g[oo] * c[oo];
                        }
                        qrow[jj] = acc * norm;
                    }
                }
            }
        }
    /* Q_t is symmetric: the lower triangle is the transpose of the upper */
    for (int t = 0; t < 2; t++) mirror_lower_d(Q + (size_t)t * nv * nv, nv);
done:
    free(P);
    free(M);
    free(T);
    free(G);
    if (rc) {
        free(Q);
        return rc;
    }
    *Qout = Q;
    *nv_out = nv;
    return ZL_OK;
}

/* e_t: the target's mergers on side t's inputs (1 on that LoRA's block, if present). */
static void target_vec(const zl_lora_layer *const ly[2], int n, int t, double *e) {
    int b = 0;
    for (int s = 0; s < 2; s++) {
        if (!ly[s]) continue;
        for (int j = 0; j < n; j++) e[b * n + j] = s == t ? 1.0 : 0.0;
        b++;
    }
}

/* x^T Q y */
static double quad_form(const double *Q, const double *x, const double *y, int nv) {
    double acc = 0;
    for (int a = 0; a < nv; a++) {
        double r = 0;
        const double *q = Q + (size_t)a * nv;
        #pragma omp simd reduction(+ : r)
        for (int b = 0; b < nv; b++) r += q[b] * y[b];
        acc += x[a] * r;
    }
    return acc;
}

/* λ mean_j |m_c[j] m_s[j]| of v = (m_c, m_s); with grad, its subgradient (sign 0
 * at 0, as torch's abs) added to grad. */
static double sim_term(const double *v, int n, double lambda, double *grad) {
    double sim = 0;
    for (int j = 0; j < n; j++) {
        double p = v[j] * v[n + j], sg = p > 0 ? 1 : p < 0 ? -1 : 0;
        sim += fabs(p);
        if (grad) {
            grad[j] += lambda * sg * v[n + j] / n;
            grad[n + j] += lambda * sg * v[j] / n;
        }
    }
    return lambda * sim / n;
}

/* The local objective at v in double, from each side's own matrix:
 * Σ_t w_t (v - e_t)^T Q_t (v - e_t) + λ sim (no cancellation: exactly 0 for
 * the quadratic part where a merge reproduces both targets). u [nv] is scratch. */
static double local_value(const double *Qc, const double *Qs, double w_c, double w_s, const double *e_c,
                          const double *e_s, const double *v, int nv, int n, int both, double lambda, double *u) {
    const double *Q[2] = {Qc, Qs}, *e[2] = {e_c, e_s}, w[2] = {w_c, w_s};
    double L = 0;
    for (int t = 0; t < 2; t++) {
        if (w[t] == 0) continue;
        for (int a = 0; a < nv; a++) u[a] = v[a] - e[t][a];
        L += w[t] * quad_form(Q[t], u, u, nv);
    }
    return both ? L + sim_term(v, n, lambda, NULL) : L;
}

/* The gradient of the local objective at v, 2 (Qw v - bw) + the similarity's,
 * and (returned) the objective from the same product, which the loop only
 * checks for being finite. Qw = w_c Q_c + w_s Q_s is symmetric and only its
 * upper triangle (b >= a) is read, stored in float: the Adam loop streams it
 * every step (at SDXL's 2048-wide inputs, nv = 4096: 8.4 M entries in the
 * triangle) and is bound by memory. Products are summed in double. r [nv] is scratch. */
static double local_grad(const float *Qw, const double *bw, double cw, const double *v, int nv, int n, int both,
                         double lambda, double *grad, double *r) {
    double q = 0, lin = 0;
    for (int a = 0; a < nv; a++) r[a] = 0;
    /* Four rows at a time, so each pass over r and v serves four rows. */
    for (int a0 = 0; a0 < nv; a0 += 4) {
        const int na = nv - a0 < 4 ? nv - a0 : 4, b0 = a0 + na;
        for (int a = a0; a < b0; a++) { /* the diagonal block */
            const float *row = Qw + (size_t)a * nv;
            r[a] += (double)row[a] * v[a];
            for (int b = a + 1; b < b0; b++) {
                r[a] += (double)row[b] * v[b];
                r[b] += (double)row[b] * v[a];
            }
        }
        if (na < 4) {
            for (int a = a0; a < b0; a++) {
                const float *row = Qw + (size_t)a * nv;
                for (int b = b0; b < nv; b++) {
                    r[a] += (double)row[b] * v[b];
                    r[b] += (double)row[b] * v[a];
                }
            }
            continue;
        }
        const float *q0 = Qw + (size_t)a0 * nv, *q1 = q0 + nv, *q2 = q1 + nv, *q3 = q2 + nv;
        const double v0 = v[a0], v1 = v[a0 + 1], v2 = v[a0 + 2], v3 = v[a0 + 3];
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        /* vector lanes: a fixed order (the build's, not the thread count's) */
        #pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int b = b0; b < nv; b++) {
            const double x0 = q0[b], x1 = q1[b], x2 = q2[b], x3 = q3[b], vb = v[b];
            s0 += x0 * vb, s1 += x1 * vb, s2 += x2 * vb, s3 += x3 * vb;
            r[b] += x0 * v0 + x1 * v1 + x2 * v2 + x3 * v3;
        }
        r[a0] += s0, r[a0 + 1] += s1, r[a0 + 2] += s2, r[a0 + 3] += s3;
    }
    for (int a = 0; a < nv; a++) {
        q += v[a] * r[a];
        lin += bw[a] * v[a];
        grad[a] = 2 * (r[a] - bw[a]);
    }
    return q - 2 * lin + cw + (both ? sim_term(v, n, lambda, grad) : 0);
}

/* Adam on the local objective from v (torch.optim.Adam, as zl_zip_adam_step).
 * *before / *after: the objective at the start and the end, in double. */
static int layer_adam(const double *Q, int nv, int n, int both, double w_c, double w_s, const double *e_c,
                      const double *e_s, double lambda, int steps, double lr, double *v, double *before, double *after) {
    const size_t nn = (size_t)nv * nv;
    float *Qw = malloc(sizeof(float) * nn);
    double *bw = malloc(sizeof(double) * nv), *g = malloc(sizeof(double) * nv), *r = malloc(sizeof(double) * nv);
    double *am = calloc((size_t)nv, sizeof(double)), *av = calloc((size_t)nv, sizeof(double));
    int rc = ZL_OK;
    if (!Qw || !bw || !g || !r || !am || !av) {
        rc = ZL_ENOMEM;
        goto done;
    }
    const double *Qc = Q, *Qs = Q + nn;
    for (int a = 0; a < nv; a++) /* the upper triangle, all local_grad reads */
        for (int b = a; b < nv; b++) {
            const size_t i = (size_t)a * nv + b;
            Qw[i] = (float)(w_c * Qc[i] + w_s * Qs[i]);
        }
    double cw = w_c * quad_form(Qc, e_c, e_c, nv) + w_s * quad_form(Qs, e_s, e_s, nv);
    for (int a = 0; a < nv; a++) {
        double rc_ = 0, rs = 0;
        #pragma omp simd reduction(+ : rc_, rs)
        for (int b = 0; b < nv; b++) {
            rc_ += Qc[(size_t)a * nv + b] * e_c[b];
            rs += Qs[(size_t)a * nv + b] * e_s[b];
        }
        bw[a] = w_c * rc_ + w_s * rs;
    }
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    if (before) *before = local_value(Qc, Qs, w_c, w_s, e_c, e_s, v, nv, n, both, lambda, r);
    local_grad(Qw, bw, cw, v, nv, n, both, lambda, g, r);
    for (int k = 1; k <= steps; k++) {
        if (both) { /* full mode's stopping rule, per layer: the similarity has reached 0 */
            double sim = 0;
            for (int j = 0; j < n; j++) sim += fabs(v[j] * v[n + j]);
            if (sim <= 1e-9 * n) break;
        }
        double bc1 = 1 - pow(b1, k), bc2 = sqrt(1 - pow(b2, k));
        for (int a = 0; a < nv; a++) {
            am[a] = b1 * am[a] + (1 - b1) * g[a];
            av[a] = b2 * av[a] + (1 - b2) * g[a] * g[a];
            v[a] -= lr / bc1 * am[a] / (sqrt(av[a]) / bc2 + eps);
        }
        if (!isfinite(local_grad(Qw, bw, cw, v, nv, n, both, lambda, g, r))) {
            rc = ZL_ENUMERIC;
            break;
        }
    }
    if (after) *after = local_value(Qc, Qs, w_c, w_s, e_c, e_s, v, nv, n, both, lambda, r);
done:
    free(Qw);
    free(bw);
    free(g);
    free(r);
    free(am);
    free(av);
    return rc;
}

static int check_pair(const zl_lora_layer *lc, const zl_lora_layer *ls) {
    if (!lc && !ls) return zl_set_error(ZL_EINVAL, "layerwise: a layer needs at least one LoRA");
    if (lc && ls &&
        (lc->in_features != ls->in_features || lc->out_features != ls->out_features ||
         (lc->kind == ZL_LORA_CONV ? lc->kh * lc->kw : 1) != (ls->kind == ZL_LORA_CONV ? ls->kh * ls->kw : 1)))
        return zl_set_error(ZL_ESHAPE, "layerwise: layer '%s' has different shapes in the two LoRAs", lc->module);
    return ZL_OK;
}

int zl_lw_layer_solve(const zl_lora_layer *lc, const zl_lora_layer *ls, const float *C_c, const float *C_s,
                      double tok_c, double tok_s, double w_c, double w_s, double lambda, int steps, double lr,
                      float *m_c, float *m_s, double *before, double *after) {
    int rc = check_pair(lc, ls);
    if (rc) return rc;
    if ((lc && !m_c) || (ls && !m_s)) return zl_set_error(ZL_EINVAL, "layerwise: missing merger buffer");
    const zl_lora_layer *ly[2] = {lc, ls};
    const float *Cs[2] = {C_c, C_s};
    const double tok[2] = {tok_c, tok_s};
    double *Q = NULL;
    int nv = 0, n = (lc ? lc : ls)->in_features;
    if ((rc = layer_quad(lc, ls, Cs, tok, &Q, &nv))) return zl_set_error(rc, "layerwise: out of memory");
    double *v = malloc(sizeof(double) * nv * 3), *e_c = v + nv, *e_s = v + 2 * nv;
    if (!v) {
        free(Q);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    int b = 0;
    float *ms[2] = {m_c, m_s};
    for (int s = 0; s < 2; s++)
        if (ly[s]) {
            for (int j = 0; j < n; j++) v[b * n + j] = ms[s][j];
            b++;
        }
    target_vec(ly, n, 0, e_c);
    target_vec(ly, n, 1, e_s);
    rc = layer_adam(Q, nv, n, lc && ls, w_c, w_s, e_c, e_s, lambda, steps, lr, v, before, after);
    if (!rc) {
        b = 0;
        for (int s = 0; s < 2; s++)
            if (ly[s]) {
                for (int j = 0; j < n; j++) ms[s][j] = (float)v[b * n + j];
                b++;
            }
    } else {
        zl_set_error(rc, "layerwise: layer '%s': %s", (lc ? lc : ls)->module,
                     rc == ZL_ENUMERIC ? "the local objective became non-finite" : "out of memory");
    }
    free(v);
    free(Q);
    return rc;
}

/* ------------------------------------------------------------------ capture */

typedef struct {
    char *key;
    const zl_unet_mod *leader; /* the module whose hook call records the group's input */
    int n, kh, kw, K;
    int pass;
    float *C[2]; /* [K, K] per side (content inputs, style inputs); NULL outside its pass */
    double tok[2];
} lw_group;

typedef struct {
    const zl_zip_layer *zl;
    const zl_lora_layer *ly[2];
    zl_unet_mod *mod;
    int group;
    double *gg; /* [nv] summed full-model gradient of the first two terms at the start (calibration) */
    double w, cosv, before, after;
} lw_layer;

typedef struct {
    const zl_unet_mod *m;
    int g;
} lw_key;

struct zl_lw {
    zl_ziprun *r;
    zl_unet *u;
    zl_layerwise_opts o;
    int n_layers, n_groups, n_passes;
    lw_layer *layers;
    lw_group *groups;
    lw_key *keys; /* leaders, sorted by pointer */
    const zl_unet_mod *probe[2];
    const float *probe_down[2];
    int cur_pass, recorded, hook_rc;
    float *tok;
    size_t tok_n;
    int cal_n;
    int have_first;
    double capture_bytes, group_bytes, capture_s, solve_s, full_s;
};

static int cmp_key(const void *a, const void *b) {
    const zl_unet_mod *x = ((const lw_key *)a)->m, *y = ((const lw_key *)b)->m;
    return x < y ? -1 : x > y;
}

/* Layers reading the same input share one group: attn1 q/k/v read the normed
 * hidden states, every attn2 k/v reads the text context. */
static void group_key(const char *module, char *key, size_t cap) {
    size_t L = strlen(module);
    static const char *const qkv[3] = {".attn1.to_q", ".attn1.to_k", ".attn1.to_v"};
    static const char *const kv[2] = {".attn2.to_k", ".attn2.to_v"};
    for (int i = 0; i < 2; i++)
        if (L > 11 && !strcmp(module + L - 11, kv[i])) {
            snprintf(key, cap, "context");
            return;
        }
    for (int i = 0; i < 3; i++)
        if (L > 11 && !strcmp(module + L - 11, qkv[i])) {
            snprintf(key, cap, "%.*s.attn1.qkv", (int)(L - 11), module);
            return;
        }
    snprintf(key, cap, "%s", module);
}

static int current_side(const zl_lw *w) {
    if (w->u->n_slots != 1) return -1;
    for (int s = 0; s < 2; s++) {
        const zl_unet_mod *p = w->probe[s];
        if (p && p->n_br == 1 && p->br[0].down == w->probe_down[s]) return s;
    }
    return -1;
}

/* C [K, K] += X^T X for X [N, K], upper triangle only (tiles on and above the
 * diagonal; half the products of the whole). One single-threaded product per
 * tile, so the result does not depend on the thread count. mirror_lower fills
 * the rest once the capture is done. */
#define GRAM_TILE 256
static void gram_upper(float *C, const float *X, int N, int K) {
    const int nt = (K + GRAM_TILE - 1) / GRAM_TILE, ntiles = nt * (nt + 1) / 2;
    #pragma omp parallel for schedule(dynamic, 1) if (ntiles > 1 && (double)N * K * K > 1e7)
    for (int t = 0; t < ntiles; t++) {
        int i = 0, rem = t; /* tile t -> (i, j), j >= i, row by row */
        while (rem >= nt - i) rem -= nt - i, i++;
        const int j = i + rem, a = i * GRAM_TILE, b = j * GRAM_TILE;
        const int m = K - a < GRAM_TILE ? K - a : GRAM_TILE, n = K - b < GRAM_TILE ? K - b : GRAM_TILE;
        zl_sgemm_serial(1, 0, m, n, N, 1.0f, X + a, K, X + b, K, 1.0f, C + (size_t)a * K + b, K);
    }
}

static void lw_hook(void *ctx, const zl_unet_mod *m, const float *x, int N, int H, int W, int stride) {
    zl_lw *w = ctx;
    if (w->hook_rc) return;
    lw_key key = {m, 0}, *f = bsearch(&key, w->keys, (size_t)w->n_groups, sizeof key, cmp_key);
    if (!f) return;
    lw_group *g = &w->groups[f->g];
    if (g->pass != w->cur_pass || !g->C[0]) return;
    int side = current_side(w);
    if (side < 0) return;
    const int n = g->n, kk = g->kh * g->kw, K = g->K, pad = g->kh / 2;
    const int conv = m->kind == ZL_MOD_CONV;
    const int Ho = conv ? (H + 2 * pad - g->kh) / stride + 1 : 1, Wo = conv ? (W + 2 * pad - g->kw) / stride + 1 : 1;
    const long P = conv ? (long)N * Ho * Wo : N;
    const int Ns = P > w->o.max_tokens ? w->o.max_tokens : (int)P;
    const float *X = x;
    if (conv || Ns < P) {
        size_t need = (size_t)Ns * K;
        if (need > w->tok_n) {
            free(w->tok);
            w->tok = malloc(need * sizeof(float));
            w->tok_n = w->tok ? need : 0;
            if (!w->tok) {
                w->hook_rc = ZL_ENOMEM;
                return;
            }
        }
        float *t = w->tok; // [Ns, K]
        #pragma omp parallel for schedule(static) if ((size_t)Ns * K > 65536)
        for (int i = 0; i < Ns; i++) {
            long p = (long)((2.0 * i + 1) * (double)P / (2.0 * Ns)); /* evenly spaced, centred */
            float *dst = t + (size_t)i * K;
            if (!conv) {
                memcpy(dst, x + (size_t)p * n, sizeof(float) * n);
                continue;
            }
            int b = (int)(p / ((long)Ho * Wo)), rem = (int)(p % ((long)Ho * Wo)), oy = rem / Wo, ox = rem % Wo;
            for (int j = 0; j < n; j++) {
                const float *src = x + ((size_t)b * n + j) * H * W;
                for (int dy = 0; dy < g->kh; dy++)
                    for (int dx = 0; dx < g->kw; dx++) {
                        int iy = oy * stride + dy - pad, ix = ox * stride + dx - pad;
                        dst[j * kk + dy * g->kw + dx] = iy >= 0 && iy < H && ix >= 0 && ix < W ? src[iy * W + ix] : 0.0f;
                    }
            }
        }
        X = t;
    }
    gram_upper(g->C[side], X, Ns, K);
    g->tok[side] += Ns;
    w->recorded++;
}

void zl_lw_release(zl_lw *w, int pass) {
    for (int i = 0; i < w->n_groups; i++) {
        lw_group *g = &w->groups[i];
        if (g->pass != pass) continue;
        for (int s = 0; s < 2; s++) {
            free(g->C[s]);
            g->C[s] = NULL;
            g->tok[s] = 0;
        }
    }
}

void zl_lw_free(zl_lw *w) {
    if (!w) return;
    if (w->u && w->u->mod_hook.ctx == w) w->u->mod_hook.fn = NULL;
    for (int i = 0; i < w->n_groups; i++) {
        free(w->groups[i].key);
        free(w->groups[i].C[0]);
        free(w->groups[i].C[1]);
    }
    for (int i = 0; i < w->n_layers; i++) free(w->layers[i].gg);
    free(w->groups);
    free(w->layers);
    free(w->keys);
    free(w->tok);
    free(w);
}

int zl_lw_passes(const zl_lw *w) { return w->n_passes; }

int zl_lw_begin(zl_ziprun *r, const zl_layerwise_opts *o, zl_lw **out) {
    *out = NULL;
    if (o->draws < 1) return zl_set_error(ZL_EINVAL, "layerwise: at least one capture draw is needed (got %d)", o->draws);
    if (o->max_tokens < 1) return zl_set_error(ZL_EINVAL, "layerwise: max_tokens must be >= 1");
    if (!(o->capture_mb > 0)) return zl_set_error(ZL_EINVAL, "layerwise: the capture budget must be positive");
    if (o->weighting == ZL_LW_WEIGHT_CALIBRATED && (o->cal_draws < 1 || o->cal_draws > o->draws))
        return zl_set_error(ZL_EINVAL, "layerwise: calibration needs 1 to %d draws (got %d)", o->draws, o->cal_draws);
    zl_zip *z = zl_ziprun_zip(r);
    zl_unet *u = zl_ziprun_unet(r);
    if (!z || !u) return zl_set_error(ZL_EINVAL, "layerwise: the run has no zip");
    zl_lw *w = calloc(1, sizeof *w);
    int nl = zl_zip_n_layers(z), rc = ZL_OK;
    if (!w) return zl_set_error(ZL_ENOMEM, "out of memory");
    w->r = r;
    w->u = u;
    w->o = *o;
    w->layers = calloc((size_t)(nl ? nl : 1), sizeof *w->layers);
    w->groups = calloc((size_t)(nl ? nl : 1), sizeof *w->groups);
    w->keys = calloc((size_t)(nl ? nl : 1), sizeof *w->keys);
    if (!w->layers || !w->groups || !w->keys) rc = zl_set_error(ZL_ENOMEM, "out of memory");
    char key[320];
    for (int i = 0; i < nl && !rc; i++) {
        lw_layer *L = &w->layers[w->n_layers++];
        L->zl = zl_zip_layer_at(z, i);
        for (int s = 0; s < 2; s++)
            L->ly[s] = L->zl->m[s] ? zl_lora_find(zl_ziprun_lora(r, s), ZL_PART_UNET, L->zl->module) : NULL;
        L->mod = zl_unet_find_mod(u, L->zl->module);
        if (!L->mod || (!L->ly[0] && !L->ly[1])) {
            rc = zl_set_error(ZL_ENOTFOUND, "layerwise: layer '%s' is not in the UNet or the LoRAs", L->zl->module);
            break;
        }
        if ((rc = check_pair(L->ly[0], L->ly[1]))) break;
        int nv = (!!L->ly[0] + !!L->ly[1]) * L->zl->n;
        if (!(L->gg = calloc((size_t)nv, sizeof(double)))) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); break; }
        for (int s = 0; s < 2; s++)
            if (L->ly[s] && !w->probe[s]) {
                w->probe[s] = L->mod;
                w->probe_down[s] = L->ly[s]->down;
            }
        group_key(L->zl->module, key, sizeof key);
        int g = -1;
        for (int k = 0; k < w->n_groups && g < 0; k++)
            if (!strcmp(w->groups[k].key, key)) g = k;
        if (g < 0) {
            g = w->n_groups++;
            lw_group *G = &w->groups[g];
            if (!(G->key = strdup(key))) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); break; }
            G->leader = L->mod;
            G->n = L->mod->in;
            G->kh = L->mod->kh;
            G->kw = L->mod->kw;
            G->K = G->n * G->kh * G->kw;
        } else if (w->groups[g].n != L->mod->in || w->groups[g].kh != L->mod->kh || w->groups[g].kw != L->mod->kw) {
            rc = zl_set_error(ZL_ESHAPE, "layerwise: layer '%s' does not match the input of its group '%s'",
                              L->zl->module, key);
            break;
        }
        L->group = g;
    }
    /* passes: groups in order, each pass's statistics within the budget (a
     * group larger than the budget alone gets a pass of its own) */
    double budget = o->capture_mb * 1048576.0, used = 0;
    for (int g = 0; g < w->n_groups && !rc; g++) {
        lw_group *G = &w->groups[g];
        double bytes = 2.0 * G->K * (double)G->K * sizeof(float);
        if (bytes > w->group_bytes) w->group_bytes = bytes;
        if (used > 0 && used + bytes > budget) {
            w->n_passes++;
            used = 0;
        }
        G->pass = w->n_passes;
        used += bytes;
        if (used > w->capture_bytes) w->capture_bytes = used;
        w->keys[g].m = G->leader;
        w->keys[g].g = g;
    }
    if (!rc) {
        w->n_passes++;
        qsort(w->keys, (size_t)w->n_groups, sizeof *w->keys, cmp_key);
    }
    if (rc) {
        zl_lw_free(w);
        return rc;
    }
    *out = w;
    return ZL_OK;
}

/* Add the merger gradients of the last zl_zip_eval (the UNet's, without the
 * similarity term) to every layer's calibration sum. */
static int add_grads(zl_lw *w) {
    for (int i = 0; i < w->n_layers; i++) {
        lw_layer *L = &w->layers[i];
        L->zl = zl_zip_layer_at(zl_ziprun_zip(w->r), i);
        int b = 0, n = L->zl->n;
        for (int s = 0; s < 2; s++) {
            if (!L->ly[s]) continue;
            int gn = 0;
            const float *g = zl_unet_merger_grad(w->u, s, L->zl->module, &gn);
            if (!g || gn != n) return zl_set_error(ZL_EINVAL, "layerwise: no gradient for layer '%s'", L->zl->module);
            for (int j = 0; j < n; j++) L->gg[b * n + j] += g[j];
            b++;
        }
    }
    return ZL_OK;
}

int zl_lw_capture(zl_lw *w, int pass) {
    zl_ziprun *r = w->r;
    zl_zip *z = zl_ziprun_zip(r);
    int rc = ZL_OK, any = 0;
    for (int g = 0; g < w->n_groups && !rc; g++) {
        lw_group *G = &w->groups[g];
        if (G->pass != pass) continue;
        any = 1;
        for (int s = 0; s < 2 && !rc; s++) {
            free(G->C[s]);
            G->tok[s] = 0;
            if (!(G->C[s] = calloc((size_t)G->K * G->K, sizeof(float))))
                rc = zl_set_error(ZL_ENOMEM, "layerwise: out of memory for the input statistics of '%s' (%d x %d)",
                                  G->key, G->K, G->K);
        }
    }
    if (rc || !any) return rc;
    double t0 = zl_now();
    float *tmp = NULL;
    w->cur_pass = pass;
    const int cal = pass == 0 && w->o.weighting == ZL_LW_WEIGHT_CALIBRATED;
    /* draws last to first, so draw 0 (the loss curve's) stays the driver's current one */
    for (int k = w->o.draws - 1; k >= 0 && !rc; k--) {
        zl_ziprun_draw_t d;
        w->recorded = 0;
        w->hook_rc = 0;
        w->u->mod_hook.fn = lw_hook;
        w->u->mod_hook.ctx = w;
        rc = zl_ziprun_draw(r, k, &d);
        if (!rc && !w->recorded) {
            /* the driver had this draw's targets already: run the target forwards for the record */
            size_t n = (size_t)d.xc.B * zl_unet_get_config(w->u)->out_channels * d.xc.H * d.xc.W;
            if (!tmp && !(tmp = malloc(2 * n * sizeof(float)))) rc = zl_set_error(ZL_ENOMEM, "out of memory");
            if (!rc) rc = zl_zip_targets(z, &d.tc, &d.ts, tmp, tmp + n);
        }
        w->u->mod_hook.fn = NULL;
        if (!rc && w->hook_rc) rc = zl_set_error(w->hook_rc, "layerwise: out of memory while recording layer inputs");
        if (rc) break;
        if (pass == 0 && (k == 0 || (cal && k < w->o.cal_draws))) {
            zl_zip_loss L;
            int grad = cal && k < w->o.cal_draws;
            if ((rc = zl_zip_eval(z, &d.xc, d.target_c, &d.xs, d.target_s, grad, &L))) break;
            if (grad) {
                if ((rc = add_grads(w))) break;
                w->cal_n++;
            }
            if (k == 0 && !w->have_first) {
                if ((rc = zl_ziprun_step(r, 0, &L, grad, NULL))) break;
                w->have_first = 1;
            }
        }
    }
    free(tmp);
    if (!rc)
        for (int g = 0; g < w->n_groups; g++) {
            lw_group *G = &w->groups[g];
            if (G->pass != pass) continue;
            for (int s = 0; s < 2; s++)
                if (G->C[s]) mirror_lower(G->C[s], G->K);
        }
    w->capture_s += zl_now() - t0;
    return rc;
}

/* The weights of a layer's two terms under o, from its Q (and calibration). */
static void layer_weights(const zl_lw *w, lw_layer *L, const zl_layerwise_opts *o, const double *Q, int nv,
                          const double *e_c, const double *e_s, double *wc, double *ws) {
    const size_t nn = (size_t)nv * nv;
    const double *Qc = Q, *Qs = Q + nn;
    L->cosv = NAN;
    if (o->weighting == ZL_LW_WEIGHT_RAW) {
        *wc = *ws = 1;
    } else if (o->weighting == ZL_LW_WEIGHT_RELATIVE) {
        double Ec = quad_form(Qc, e_c, e_c, nv), Es = quad_form(Qs, e_s, e_s, nv);
        if (!L->ly[0]) Ec = Es; /* a one-LoRA layer: both terms relative to that LoRA's own output */
        if (!L->ly[1]) Es = Ec;
        *wc = Ec > 0 ? 1 / Ec : 0;
        *ws = Es > 0 ? 1 / Es : 0;
    } else {
        /* least-squares fit of the full gradient by w x the local gradient at the start */
        double dot = 0, ll = 0, gg = 0;
        const zl_zip_layer *zl = L->zl;
        int n = zl->n, b = 0;
        double *v = malloc(sizeof(double) * nv);
        if (!v) {
            *wc = *ws = 1;
            return;
        }
        for (int s = 0; s < 2; s++)
            if (L->ly[s]) {
                for (int j = 0; j < n; j++) v[b * n + j] = zl->m[s][j];
                b++;
            }
        for (int a = 0; a < nv; a++) {
            double gc = 0, gs = 0;
            for (int c = 0; c < nv; c++) {
                gc += Qc[(size_t)a * nv + c] * (v[c] - e_c[c]);
                gs += Qs[(size_t)a * nv + c] * (v[c] - e_s[c]);
            }
            double gl = 2 * (gc + gs), gf = w->cal_n ? L->gg[a] / w->cal_n : 0;
            dot += gl * gf;
            ll += gl * gl;
            gg += gf * gf;
        }
        free(v);
        double k = ll > 0 ? dot / ll : 0;
        *wc = *ws = k > 0 ? k : 0;
        if (ll > 0 && gg > 0) L->cosv = dot / sqrt(ll * gg);
    }
}

int zl_lw_solve(zl_lw *w, int pass, const zl_layerwise_opts *o) {
    zl_zip *z = zl_ziprun_zip(w->r);
    const zl_ziprun_params *p = zl_ziprun_get_params(w->r);
    const int steps = o->steps > 0 ? o->steps : p->steps;
    const double lr = o->lr > 0 ? o->lr : p->lr, lambda = p->lambda * o->lambda_scale;
    if (o->weighting == ZL_LW_WEIGHT_CALIBRATED && !w->cal_n)
        return zl_set_error(ZL_EINVAL, "layerwise: calibrated weights need the calibration gradients (capture pass 0 first)");
    double t0 = zl_now();
    int *idx = malloc(sizeof(int) * (size_t)(w->n_layers ? w->n_layers : 1)), cnt = 0;
    float **res = calloc((size_t)(w->n_layers ? w->n_layers : 1), sizeof *res);
    int *lrc = calloc((size_t)(w->n_layers ? w->n_layers : 1), sizeof *lrc);
    if (!idx || !res || !lrc) {
        free(idx); free(res); free(lrc);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    for (int i = 0; i < w->n_layers; i++) {
        w->layers[i].zl = zl_zip_layer_at(z, i); /* the run may have a new zip (same LoRAs, same layers) */
        if (w->groups[w->layers[i].group].pass == pass) idx[cnt++] = i;
    }
    /* layers are independent: one per thread, each solve single-threaded inside */
    #pragma omp parallel for schedule(dynamic, 1)
    for (int t = 0; t < cnt; t++) {
        lw_layer *L = &w->layers[idx[t]];
        const lw_group *G = &w->groups[L->group];
        const float *Cs[2] = {G->C[0], G->C[1]};
        double *Q = NULL;
        int nv = 0, n = L->zl->n;
        int rc = layer_quad(L->ly[0], L->ly[1], Cs, G->tok, &Q, &nv);
        double *v = rc ? NULL : malloc(sizeof(double) * 3 * nv);
        float *out = rc ? NULL : malloc(sizeof(float) * nv);
        if (!rc && (!v || !out)) rc = ZL_ENOMEM;
        if (!rc) {
            double *e_c = v + nv, *e_s = v + 2 * nv, wc, ws;
            int b = 0;
            for (int s = 0; s < 2; s++)
                if (L->ly[s]) {
                    for (int j = 0; j < n; j++) v[b * n + j] = L->zl->m[s][j];
                    b++;
                }
            target_vec(L->ly, n, 0, e_c);
            target_vec(L->ly, n, 1, e_s);
            layer_weights(w, L, o, Q, nv, e_c, e_s, &wc, &ws);
            L->w = wc;
            rc = layer_adam(Q, nv, n, L->ly[0] && L->ly[1], wc, ws, e_c, e_s, lambda, steps, lr, v, &L->before,
                            &L->after);
            for (int a = 0; a < nv && !rc; a++) {
                out[a] = (float)v[a];
                if (!isfinite(out[a])) rc = ZL_ENUMERIC;
            }
        }
        free(Q);
        free(v);
        if (rc) {
            free(out);
            out = NULL;
        }
        res[t] = out;
        lrc[t] = rc;
    }
    int rc = ZL_OK;
    for (int t = 0; t < cnt && !rc; t++) {
        lw_layer *L = &w->layers[idx[t]];
        if (lrc[t]) {
            rc = zl_set_error(lrc[t], "zip: layerwise: layer '%s': %s", L->zl->module,
                              lrc[t] == ZL_ENUMERIC ? "the mergers became non-finite; stopped" : "out of memory");
            break;
        }
        int b = 0;
        for (int s = 0; s < 2 && !rc; s++)
            if (L->ly[s]) {
                rc = zl_zip_set_merger(z, L->zl->module, s, res[t] + (size_t)b * L->zl->n, L->zl->n);
                b++;
            }
    }
    for (int t = 0; t < cnt; t++) free(res[t]);
    free(res);
    free(lrc);
    free(idx);
    w->solve_s += zl_now() - t0;
    return rc;
}

void zl_lw_stats(const zl_lw *w, zl_layerwise_stats *st) {
    memset(st, 0, sizeof *st);
    st->passes = w->n_passes;
    st->groups = w->n_groups;
    st->layers = w->n_layers;
    st->capture_bytes = w->capture_bytes;
    st->group_bytes = w->group_bytes;
    st->capture_s = w->capture_s;
    st->solve_s = w->solve_s;
    st->full_s = w->full_s;
    int nc = 0;
    for (int i = 0; i < w->n_layers; i++) {
        const lw_layer *L = &w->layers[i];
        st->local_before += L->before;
        st->local_after += L->after;
        if (isfinite(L->cosv)) {
            st->mean_cos += L->cosv;
            nc++;
        }
    }
    st->mean_cos = nc ? st->mean_cos / nc : NAN;
}

/* ------------------------------------------------------------------ the mode */

int zl_ziprun_layerwise(zl_ziprun *r, const zl_layerwise_opts *o, zl_layerwise_stats *st) {
    const zl_ziprun_params *p = zl_ziprun_get_params(r);
    zl_lw *w = NULL;
    int rc = zl_lw_begin(r, o, &w);
    int passes_done = 0;
    for (int pass = 0; !rc && pass < w->n_passes; pass++) {
        if (pass && zl_stop_requested()) {
            /* the layers of the passes not run keep their starting mergers */
            zl_ziprun_set_interrupted(r);
            char note[200];
            snprintf(note, sizeof note, "interrupted after %d of %d capture passes: the layers of the other passes "
                                        "keep their starting mergers", passes_done, w->n_passes);
            rc = zl_ziprun_note(r, note);
            break;
        }
        if (!(rc = zl_lw_capture(w, pass))) rc = zl_lw_solve(w, pass, o);
        zl_lw_release(w, pass);
        passes_done++;
    }
    zl_zip *z = zl_ziprun_zip(r);
    zl_ziprun_draw_t d;
    zl_zip_loss L;
    int stop = 0, k;
    double t0 = zl_now();
    /* the hybrid: full-mode steps from the layerwise mergers, on fresh draws */
    for (k = 0; !rc && !zl_ziprun_interrupted(r) && k < o->full_steps; k++) {
        if ((rc = zl_ziprun_draw(r, o->draws + k, &d))) break;
        if ((rc = zl_zip_eval(z, &d.xc, d.target_c, &d.xs, d.target_s, 1, &L))) break;
        if ((rc = zl_ziprun_step(r, k + 1, &L, 1, &stop))) break;
        if (stop) break;
        if ((rc = zl_zip_adam_step(z))) break;
        if (k + 1 < o->full_steps && zl_stop_requested()) zl_ziprun_set_interrupted(r);
    }
    if (w) w->full_s += zl_now() - t0;
    if (!rc && !zl_ziprun_interrupted(r)) {
        /* the objective at the end, on draw 0 (the driver still holds its targets) or the next fresh draw */
        int dk = o->full_steps > 0 ? o->draws + k : 0;
        if (!(rc = zl_ziprun_draw(r, dk, &d)) && !(rc = zl_zip_eval(z, &d.xc, d.target_c, &d.xs, d.target_s, 0, &L)))
            rc = zl_ziprun_step(r, p->steps, &L, 0, NULL);
    }
    if (!rc) {
        zl_layerwise_stats s;
        zl_lw_stats(w, &s);
        char note[640];
        snprintf(note, sizeof note,
                 "layerwise: %d layers in %d input groups recorded on %d draws (at most %d tokens per layer and "
                 "forward), %d capture pass(es), %.1f MB of input statistics; per-layer Adam %d steps at lr %g, "
                 "lambda' %g, %s weights%s; %d full-mode steps after; capture %.1f s, solve %.1f s, full steps %.1f s",
                 s.layers, s.groups, o->draws, o->max_tokens, s.passes, s.capture_bytes / 1048576.0,
                 o->steps > 0 ? o->steps : p->steps, o->lr > 0 ? o->lr : p->lr, p->lambda * o->lambda_scale,
                 o->weighting == ZL_LW_WEIGHT_CALIBRATED ? "calibrated"
                 : o->weighting == ZL_LW_WEIGHT_RELATIVE ? "relative"
                                                          : "unit",
                 o->weighting == ZL_LW_WEIGHT_CALIBRATED ? " (full gradient at the start on the first draws)" : "",
                 o->full_steps, s.capture_s, s.solve_s, s.full_s);
        rc = zl_ziprun_note(r, note);
        if (st) *st = s;
    }
    zl_lw_free(w);
    return rc;
}

int zl_ziprun_mode_layerwise(zl_ziprun *r) {
    zl_layerwise_opts o;
    zl_layerwise_opts_default(&o);
    const zl_ziprun_params *p = zl_ziprun_get_params(r);
    if (p->lw_draws > 0) o.draws = p->lw_draws;
    if (o.cal_draws > o.draws) o.cal_draws = o.draws;
    if (p->lw_capture_mb > 0) o.capture_mb = p->lw_capture_mb;
    if (p->lw_full_steps > 0) o.full_steps = p->lw_full_steps;
    return zl_ziprun_layerwise(r, &o, NULL);
}
