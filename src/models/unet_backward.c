/* The UNet backward: a forward that records a tape of nodes (conv_in, resnets,
 * transformers, down/up samplers, skip pushes and concats, the output head),
 * and a backward that walks the tape in reverse, turning dL/d(out) into
 * dL/d(sample) and dL/dm for every runtime LoRA branch's merger. Frozen base
 * weights and LoRA factors get no gradient (no dW is ever formed); a branch
 * y += w s B A (m ⊙ x) contributes dx += m ⊙ g and dm += sum over tokens of x ⊙ g
 * with g = w s A^T (B^T dy) (for convs: the down conv's input gradient of the
 * rank activations' gradient, reduced per input channel).
 *
 * Memory: every node keeps its input. With ZL_UNET_GRAD_KEEP the resnets and
 * transformers also keep their inner activations; with ZL_UNET_GRAD_RECOMPUTE
 * they are dropped after the forward and recomputed, one block at a time, when
 * the block's backward runs. Both modes run the same block forward, so their
 * gradients are identical. Inputs and running gradients are freed as the
 * backward passes them. The forward here mirrors zl_unet_forward (unet.c)
 * block for block; tests compare the two outputs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/unet_internal.h"
#include "nn/ops.h"

/* ------------------------------------------------------------- helpers */

/* A grow-only scratch buffer. */
typedef struct {
    float *p;
    size_t n;
} zbuf;

static float *zb_get(zbuf *b, size_t n) {
    if (n > b->n) {
        free(b->p);
        b->p = malloc((n ? n : 1) * sizeof(float));
        b->n = b->p ? n : 0;
    }
    return b->p;
}

static float *zalloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

static float *dup_f(const float *x, size_t n) {
    if (!x) return NULL;
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (p) memcpy(p, x, n * sizeof(float));
    return p;
}

#define OOM() zl_set_error(ZL_ENOMEM, "out of memory in the UNet backward")

/* Working state shared by the module backwards. */
typedef struct {
    zl_unet *u;
    zbuf da, dxm, act; /* branch rank gradient, branch input gradient, recomputed activations */
} bwctx;

static int ensure_grad(zl_unet_branch *br, int n) {
    if (!br->grad && !(br->grad = calloc((size_t)n, sizeof(float)))) return OOM();
    return ZL_OK;
}

/* Linear module y = x W^T + b + branches; x [N, in], dy [N, out].
 * dx [N, in] += dL/dx (NULL: not needed); every branch's grad += dL/dm. */
static int lin_bwd(bwctx *c, const zl_unet_mod *m, const float *x, const float *dy, float *dx, int N) {
    /* dx [N, in] += dy [N, out] W [out, in]; stored F16 widened per block inside the product. That
     * accumulates block by block, so a failure part-way cannot fall back to another path: it is an error. */
    if (dx && zl_weight_needs_scratch(&m->w)) {
        int rc = zl_sgemm_nn_stored(N, m->in, m->out, dy, m->out, m->w.dtype, m->w.data, 1.0f, dx, m->in);
        if (rc) return rc;
    } else if (dx) {
        zl_linear_bwd(dx, NULL, NULL, dy, x, zl_unet_weight_f32(c->u, m), N, m->in, m->out);
    }
    for (int k = 0; k < m->n_br; k++) {
        zl_unet_branch *br = &m->br[k];
        int in = m->in, r = br->rank;
        if (ensure_grad(br, in)) return ZL_ENOMEM;
        float *da = zb_get(&c->da, (size_t)N * r);   // [N, r]
        float *g = zb_get(&c->dxm, (size_t)N * in);  // [N, in]: dL/d(m ⊙ x)
        if (!da || !g) return OOM();
        zl_sgemm(0, 0, N, r, m->out, br->w * br->s, dy, m->out, br->up, r, 0.0f, da, r);
        zl_sgemm(0, 0, N, in, r, 1.0f, da, r, br->down, in, 0.0f, g, in);
        /* Column blocks: each merger entry is summed over tokens in order by one thread. */
        #pragma omp parallel for schedule(static) if ((size_t)N * in > 65536)
        for (int j0 = 0; j0 < in; j0 += 64) {
            int j1 = j0 + 64 < in ? j0 + 64 : in;
            double acc[64] = {0};
            for (int n = 0; n < N; n++) {
                const float *xr = x + (size_t)n * in, *gr = g + (size_t)n * in;
                for (int j = j0; j < j1; j++) acc[j - j0] += (double)xr[j] * gr[j];
                if (dx) {
                    float *dr = dx + (size_t)n * in;
                    for (int j = j0; j < j1; j++) dr[j] += br->merger[j] * gr[j];
                }
            }
            for (int j = j0; j < j1; j++) br->grad[j] += (float)acc[j - j0];
        }
    }
    return ZL_OK;
}

/* Conv module (padding k/2, as zl_unet_conv); x [B, in, H, W], dy [B, out, Ho, Wo]. */
static int conv_bwd(bwctx *c, const zl_unet_mod *m, const float *x, const float *dy, float *dx, int B, int H, int W,
                    int stride) {
    int pad = m->kh / 2;
    zl_conv_shape s = {B, m->in, H, W, m->out, m->kh, m->kw, stride, pad, pad, pad, pad};
    if (dx && zl_conv2d_winograd_ok(&s)) /* transforms the stored (F16) weights directly */
        zl_conv2d_dx_winograd(dx, dy, m->w.f32 ? ZL_DT_F32 : m->w.dtype, m->w.f32 ? (const void *)m->w.f32 : m->w.data,
                              &s);
    else if (dx)
        zl_conv2d_bwd(dx, NULL, NULL, dy, x, zl_unet_weight_f32(c->u, m), &s);
    int HWo = zl_conv_out_h(&s) * zl_conv_out_w(&s), HW = H * W;
    for (int k = 0; k < m->n_br; k++) {
        zl_unet_branch *br = &m->br[k];
        int r = br->rank;
        if (ensure_grad(br, m->in)) return ZL_ENOMEM;
        float *da = zb_get(&c->da, (size_t)B * r * HWo); // [B, r, Ho, Wo]
        float *g = zb_get(&c->dxm, (size_t)B * m->in * HW); // [B, in, H, W]
        if (!da || !g) return OOM();
        for (int b = 0; b < B; b++) /* up is 1x1: da[b] = w s up^T [r, out] @ dy[b] [out, HWo] */
            zl_sgemm(1, 0, r, HWo, m->out, br->w * br->s, br->up, r, dy + (size_t)b * m->out * HWo, HWo, 0.0f,
                     da + (size_t)b * r * HWo, HWo);
        memset(g, 0, (size_t)B * m->in * HW * sizeof(float));
        zl_conv_shape sd = s;
        sd.Cout = r;
        zl_conv2d_bwd(g, NULL, NULL, da, x, br->down, &sd);
        #pragma omp parallel for schedule(static) if ((size_t)B * m->in * HW > 65536)
        for (int ch = 0; ch < m->in; ch++) {
            double acc = 0;
            float mv = br->merger[ch];
            for (int b = 0; b < B; b++) {
                size_t off = ((size_t)b * m->in + ch) * HW;
                const float *xr = x + off, *gr = g + off;
                for (int i = 0; i < HW; i++) acc += (double)xr[i] * gr[i];
                if (dx) {
                    float *dr = dx + off;
                    for (int i = 0; i < HW; i++) dr[i] += mv * gr[i];
                }
            }
            br->grad[ch] += (float)acc;
        }
    }
    return ZL_OK;
}

/* ------------------------------------------------------------ resnets */

/* What a resnet's backward needs beyond its input. */
typedef struct {
    float *mean1, *rstd1, *mean2, *rstd2; // [B, G]
    float *g1;                            // GN1(x) before SiLU [B, cin, HW]
    float *h1;                            // conv1 + time projection [B, cout, HW]
    float *g2;                            // GN2(h1) before SiLU [B, cout, HW]
} res_tape;

static void res_tape_free(res_tape *t) {
    if (!t) return;
    free(t->mean1); free(t->rstd1); free(t->mean2); free(t->rstd2);
    free(t->g1); free(t->h1); free(t->g2);
    free(t);
}

/* diffusers ResnetBlock2D as zl_unet_resnet_fwd, recording a tape. out [B, cout, HW]. */
static int res_fwd(bwctx *c, const zl_unet_resnet *r, const float *x, const float *temb, float *out, int B, int H,
                   int W, res_tape **tp) {
    zl_unet *u = c->u;
    int HW = H * W, G = u->cfg.norm_num_groups;
    float eps = u->cfg.norm_eps;
    size_t ni = (size_t)B * r->cin * HW, no = (size_t)B * r->cout * HW;
    res_tape *t = calloc(1, sizeof *t);
    if (!t) return OOM();
    t->mean1 = malloc((size_t)B * G * sizeof(float)); t->rstd1 = malloc((size_t)B * G * sizeof(float));
    t->mean2 = malloc((size_t)B * G * sizeof(float)); t->rstd2 = malloc((size_t)B * G * sizeof(float));
    t->g1 = malloc(ni * sizeof(float)); t->h1 = malloc(no * sizeof(float)); t->g2 = malloc(no * sizeof(float));
    float *s = zb_get(&c->act, ni > no ? ni : no);
    float *tp_ = malloc((size_t)B * r->cout * sizeof(float)); // [B, cout]
    if (!t->mean1 || !t->rstd1 || !t->mean2 || !t->rstd2 || !t->g1 || !t->h1 || !t->g2 || !s || !tp_) {
        free(tp_);
        res_tape_free(t);
        return OOM();
    }
    zl_groupnorm_fwd(t->g1, t->mean1, t->rstd1, x, r->norm1->w.f32, r->norm1->b.f32, B, r->cin, HW, G, eps);
    zl_silu_fwd(s, t->g1, ni);
    zl_unet_conv(u, r->conv1, s, t->h1, B, H, W, 1);
    zl_unet_linear(u, r->temb, temb, tp_, B);
    zl_add_channel_bias(t->h1, tp_, B, r->cout, HW);
    free(tp_);
    zl_groupnorm_fwd(t->g2, t->mean2, t->rstd2, t->h1, r->norm2->w.f32, r->norm2->b.f32, B, r->cout, HW, G, eps);
    zl_silu_fwd(s, t->g2, no);
    zl_unet_conv(u, r->conv2, s, out, B, H, W, 1);
    if (r->shortcut) {
        zl_unet_conv(u, r->shortcut, x, s, B, H, W, 1);
        zl_acc(out, s, no);
    } else {
        zl_acc(out, x, no);
    }
    *tp = t;
    return ZL_OK;
}

/* dx [B, cin, HW] += dL/dx; dtemb [B, te] += dL/dtemb. */
static int res_bwd(bwctx *c, const zl_unet_resnet *r, const res_tape *t, const float *x, const float *temb,
                   const float *dout, float *dx, float *dtemb, int B, int H, int W) {
    int HW = H * W, G = c->u->cfg.norm_num_groups, rc = ZL_OK;
    size_t ni = (size_t)B * r->cin * HW, no = (size_t)B * r->cout * HW, nm = ni > no ? ni : no;
    float *a = zalloc(nm), *b = zalloc(nm), *s = zb_get(&c->act, nm), *dtp = zalloc((size_t)B * r->cout);
    if (!a || !b || !s || !dtp) { rc = OOM(); goto done; }
    /* conv2 input SiLU(g2) is recomputed only for its branches' dm */
    if (r->conv2->n_br) zl_silu_fwd(s, t->g2, no);
    if ((rc = conv_bwd(c, r->conv2, s, dout, a, B, H, W, 1))) goto done;
    zl_silu_bwd(b, a, t->g2, no);                      // b = dL/dg2
    memset(a, 0, no * sizeof(float));
    zl_groupnorm_bwd(a, NULL, NULL, b, t->h1, t->mean2, t->rstd2, r->norm2->w.f32, B, r->cout, HW, G); // a = dL/dh1
    zl_add_channel_bias_bwd(dtp, a, B, r->cout, HW);
    if ((rc = lin_bwd(c, r->temb, temb, dtp, dtemb, B))) goto done;
    memset(b, 0, ni * sizeof(float));
    if (r->conv1->n_br) zl_silu_fwd(s, t->g1, ni);
    if ((rc = conv_bwd(c, r->conv1, s, a, b, B, H, W, 1))) goto done; // b = dL/dSiLU(g1)
    memset(a, 0, ni * sizeof(float));
    zl_silu_bwd(a, b, t->g1, ni);
    zl_groupnorm_bwd(dx, NULL, NULL, a, x, t->mean1, t->rstd1, r->norm1->w.f32, B, r->cin, HW, G);
    if (r->shortcut) rc = conv_bwd(c, r->shortcut, x, dout, dx, B, H, W, 1);
    else zl_acc(dx, dout, no);
done:
    free(a); free(b); free(dtp);
    return rc;
}

/* -------------------------------------------------------- transformers */

/* One BasicTransformerBlock: the three LayerNorm inputs are hs[3i], hs[3i+1],
 * hs[3i+2] of the transformer tape; LN outputs and GEGLU are recomputed. */
typedef struct {
    float *st[6];             // LN1..3 mean, rstd [N]
    float *q1, *k1, *v1, *o1; // [N, C]
    float *lse1;              // [B, heads, HW]
    float *q2, *o2;           // [N, C]
    float *k2, *v2;           // [B*T, C]
    float *lse2;              // [B, heads, HW]
    float *f0;                // ff.net.0.proj output [N, 8C]
} tb_tape;

typedef struct {
    int depth;
    float *mean, *rstd; // GroupNorm [B, G]
    float *g0;          // GN(x) [B, C, HW]
    float **hs;         // [3 * depth + 1] hidden states [N, C]: block inputs, after attn1, after attn2; last = final
    tb_tape *tb;        // [depth]
} tr_tape;

static void tr_tape_free(tr_tape *t) {
    if (!t) return;
    free(t->mean); free(t->rstd); free(t->g0);
    if (t->hs)
        for (int i = 0; i < 3 * t->depth + 1; i++) free(t->hs[i]);
    free(t->hs);
    if (t->tb)
        for (int i = 0; i < t->depth; i++) {
            tb_tape *b = &t->tb[i];
            for (int j = 0; j < 6; j++) free(b->st[j]);
            free(b->q1); free(b->k1); free(b->v1); free(b->o1); free(b->lse1);
            free(b->q2); free(b->o2); free(b->k2); free(b->v2); free(b->lse2); free(b->f0);
        }
    free(t->tb);
    free(t);
}

static const float *ln_g(const zl_unet_mod *m) { return m->w.f32; }
static const float *ln_b(const zl_unet_mod *m) { return m->b.f32; }

/* diffusers Transformer2DModel as zl_unet_transformer_fwd, recording a tape. */
static int tr_fwd(bwctx *c, const zl_unet_transformer *t, const float *x, const float *ctx, float *out, int B, int H,
                  int W, int T, tr_tape **tp) {
    zl_unet *u = c->u;
    int HW = H * W, C = t->C, N = B * HW, G = u->cfg.norm_num_groups, nh = t->heads, d = C / nh;
    int lin = u->cfg.use_linear_projection;
    size_t n = (size_t)N * C, nkv = (size_t)B * T * C, nl = (size_t)B * nh * HW;
    tr_tape *tt = calloc(1, sizeof *tt);
    if (!tt) return OOM();
    tt->depth = t->depth;
    tt->mean = malloc((size_t)B * G * sizeof(float));
    tt->rstd = malloc((size_t)B * G * sizeof(float));
    tt->g0 = malloc(n * sizeof(float));
    tt->hs = calloc((size_t)3 * t->depth + 1, sizeof(float *));
    tt->tb = calloc((size_t)(t->depth ? t->depth : 1), sizeof(tb_tape));
    float *s = malloc(n * sizeof(float)), *f1 = malloc(4 * n * sizeof(float)); // [N, C], [N, 4C]
    int ok = tt->mean && tt->rstd && tt->g0 && tt->hs && tt->tb && s && f1;
    for (int i = 0; ok && i < 3 * t->depth + 1; i++) ok = (tt->hs[i] = malloc(n * sizeof(float))) != NULL;
    for (int i = 0; ok && i < t->depth; i++) {
        tb_tape *b = &tt->tb[i];
        for (int j = 0; j < 6; j++) ok = ok && (b->st[j] = malloc((size_t)N * sizeof(float)));
        ok = ok && (b->q1 = malloc(n * sizeof(float))) && (b->k1 = malloc(n * sizeof(float))) &&
             (b->v1 = malloc(n * sizeof(float))) && (b->o1 = malloc(n * sizeof(float))) &&
             (b->lse1 = malloc(nl * sizeof(float))) && (b->q2 = malloc(n * sizeof(float))) &&
             (b->o2 = malloc(n * sizeof(float))) && (b->k2 = malloc(nkv * sizeof(float))) &&
             (b->v2 = malloc(nkv * sizeof(float))) && (b->lse2 = malloc(nl * sizeof(float))) &&
             (b->f0 = malloc(8 * n * sizeof(float)));
    }
    if (!ok) {
        free(s); free(f1);
        tr_tape_free(tt);
        return OOM();
    }
    zl_groupnorm_fwd(tt->g0, tt->mean, tt->rstd, x, t->norm->w.f32, t->norm->b.f32, B, C, HW, G, 1e-6f);
    float *h = tt->hs[0];
    if (lin) {
        zl_transpose_ct(s, tt->g0, B, C, HW);
        zl_unet_linear(u, t->proj_in, s, h, N);
    } else {
        zl_unet_conv(u, t->proj_in, tt->g0, s, B, H, W, 1);
        zl_transpose_ct(h, s, B, C, HW);
    }
    for (int i = 0; i < t->depth; i++) {
        const zl_unet_tblock *k = &t->blocks[i];
        tb_tape *b = &tt->tb[i];
        float *hin = tt->hs[3 * i], *ha = tt->hs[3 * i + 1], *hb = tt->hs[3 * i + 2], *ho = tt->hs[3 * i + 3];
        zl_layernorm_fwd(s, b->st[0], b->st[1], hin, ln_g(k->norm1), ln_b(k->norm1), N, C, 1e-5f);
        zl_unet_linear(u, k->q1, s, b->q1, N);
        zl_unet_linear(u, k->k1, s, b->k1, N);
        zl_unet_linear(u, k->v1, s, b->v1, N);
        zl_attention_fwd(b->o1, b->lse1, b->q1, C, b->k1, C, b->v1, C, B, HW, HW, nh, d, 0);
        zl_unet_linear(u, k->o1, b->o1, ha, N);
        zl_acc(ha, hin, n);
        zl_layernorm_fwd(s, b->st[2], b->st[3], ha, ln_g(k->norm2), ln_b(k->norm2), N, C, 1e-5f);
        zl_unet_linear(u, k->q2, s, b->q2, N);
        zl_unet_linear(u, k->k2, ctx, b->k2, B * T);
        zl_unet_linear(u, k->v2, ctx, b->v2, B * T);
        zl_attention_fwd(b->o2, b->lse2, b->q2, C, b->k2, C, b->v2, C, B, HW, T, nh, d, 0);
        zl_unet_linear(u, k->o2, b->o2, hb, N);
        zl_acc(hb, ha, n);
        zl_layernorm_fwd(s, b->st[4], b->st[5], hb, ln_g(k->norm3), ln_b(k->norm3), N, C, 1e-5f);
        zl_unet_linear(u, k->ff0, s, b->f0, N); // [N, 8C]
        zl_geglu_fwd(f1, b->f0, N, 4 * C);      // [N, 4C]
        zl_unet_linear(u, k->ff2, f1, ho, N);
        zl_acc(ho, hb, n);
    }
    float *hf = tt->hs[3 * t->depth];
    if (lin) {
        zl_unet_linear(u, t->proj_out, hf, s, N);
        zl_transpose_ct(out, s, B, HW, C);
    } else {
        zl_transpose_ct(s, hf, B, HW, C);
        zl_unet_conv(u, t->proj_out, s, out, B, H, W, 1);
    }
    zl_acc(out, x, n);
    free(s);
    free(f1);
    *tp = tt;
    return ZL_OK;
}

/* dx [B, C, HW] += dL/dx. ctx [B, T, ctx_dim] gets no gradient (only its branches' dm). */
static int tr_bwd(bwctx *c, const zl_unet_transformer *t, const tr_tape *tt, const float *x, const float *ctx,
                  const float *dout, float *dx, int B, int H, int W, int T) {
    zl_unet *u = c->u;
    int HW = H * W, C = t->C, N = B * HW, G = u->cfg.norm_num_groups, nh = t->heads, d = C / nh;
    int lin = u->cfg.use_linear_projection, rc = ZL_OK;
    size_t n = (size_t)N * C, nkv = (size_t)B * T * C, nq = n > nkv ? n : nkv;
    float *dh = zalloc(n), *s = zalloc(n), *dn = zalloc(n), *dp = zalloc(n), *dq = zalloc(n);
    float *dk = zalloc(nq), *dv = zalloc(nq), *f1 = zalloc(4 * n), *df1 = zalloc(4 * n), *df0 = zalloc(8 * n);
    if (!dh || !s || !dn || !dp || !dq || !dk || !dv || !f1 || !df1 || !df0) { rc = OOM(); goto done; }
    zl_acc(dx, dout, n); /* the residual */
    const float *hf = tt->hs[3 * t->depth];
    if (lin) {
        zl_transpose_ct(dp, dout, B, C, HW); // [N, C]
        if ((rc = lin_bwd(c, t->proj_out, hf, dp, dh, N))) goto done;
    } else {
        zl_transpose_ct(s, hf, B, HW, C); // proj_out's input [B, C, HW]
        if ((rc = conv_bwd(c, t->proj_out, s, dout, dp, B, H, W, 1))) goto done;
        zl_transpose_ct(dh, dp, B, C, HW);
    }
    for (int i = t->depth - 1; i >= 0; i--) {
        const zl_unet_tblock *k = &t->blocks[i];
        const tb_tape *b = &tt->tb[i];
        const float *hin = tt->hs[3 * i], *ha = tt->hs[3 * i + 1], *hb = tt->hs[3 * i + 2];
        /* feed-forward: dh is dL/d(block output) and, through the residual, part of dL/dhb */
        if (k->ff2->n_br) zl_geglu_fwd(f1, b->f0, N, 4 * C);
        memset(df1, 0, 4 * n * sizeof(float));
        if ((rc = lin_bwd(c, k->ff2, f1, dh, df1, N))) goto done;
        memset(df0, 0, 8 * n * sizeof(float));
        zl_geglu_bwd(df0, df1, b->f0, N, 4 * C);
        zl_layernorm_fwd(s, NULL, NULL, hb, ln_g(k->norm3), ln_b(k->norm3), N, C, 1e-5f);
        memset(dn, 0, n * sizeof(float));
        if ((rc = lin_bwd(c, k->ff0, s, df0, dn, N))) goto done;
        zl_layernorm_bwd(dh, NULL, NULL, dn, hb, b->st[4], b->st[5], ln_g(k->norm3), N, C);
        /* cross-attention */
        memset(dp, 0, n * sizeof(float));
        if ((rc = lin_bwd(c, k->o2, b->o2, dh, dp, N))) goto done;
        memset(dq, 0, n * sizeof(float));
        memset(dk, 0, nkv * sizeof(float));
        memset(dv, 0, nkv * sizeof(float));
        zl_attention_bwd(dq, dk, dv, dp, b->q2, C, b->k2, C, b->v2, C, b->o2, b->lse2, B, HW, T, nh, d, 0);
        zl_layernorm_fwd(s, NULL, NULL, ha, ln_g(k->norm2), ln_b(k->norm2), N, C, 1e-5f);
        memset(dn, 0, n * sizeof(float));
        if ((rc = lin_bwd(c, k->q2, s, dq, dn, N))) goto done;
        if ((rc = lin_bwd(c, k->k2, ctx, dk, NULL, B * T))) goto done;
        if ((rc = lin_bwd(c, k->v2, ctx, dv, NULL, B * T))) goto done;
        zl_layernorm_bwd(dh, NULL, NULL, dn, ha, b->st[2], b->st[3], ln_g(k->norm2), N, C);
        /* self-attention */
        memset(dp, 0, n * sizeof(float));
        if ((rc = lin_bwd(c, k->o1, b->o1, dh, dp, N))) goto done;
        memset(dq, 0, n * sizeof(float));
        memset(dk, 0, n * sizeof(float));
        memset(dv, 0, n * sizeof(float));
        zl_attention_bwd(dq, dk, dv, dp, b->q1, C, b->k1, C, b->v1, C, b->o1, b->lse1, B, HW, HW, nh, d, 0);
        zl_layernorm_fwd(s, NULL, NULL, hin, ln_g(k->norm1), ln_b(k->norm1), N, C, 1e-5f);
        memset(dn, 0, n * sizeof(float));
        if ((rc = lin_bwd(c, k->q1, s, dq, dn, N))) goto done;
        if ((rc = lin_bwd(c, k->k1, s, dk, dn, N))) goto done;
        if ((rc = lin_bwd(c, k->v1, s, dv, dn, N))) goto done;
        zl_layernorm_bwd(dh, NULL, NULL, dn, hin, b->st[0], b->st[1], ln_g(k->norm1), N, C);
    }
    /* proj_in and the GroupNorm; dp becomes dL/dg0 [B, C, HW] */
    memset(dp, 0, n * sizeof(float));
    if (lin) {
        zl_transpose_ct(s, tt->g0, B, C, HW); // proj_in's input [N, C]
        memset(dn, 0, n * sizeof(float));
        if ((rc = lin_bwd(c, t->proj_in, s, dh, dn, N))) goto done;
        zl_transpose_ct(dp, dn, B, HW, C);
    } else {
        zl_transpose_ct(s, dh, B, HW, C);
        if ((rc = conv_bwd(c, t->proj_in, tt->g0, s, dp, B, H, W, 1))) goto done;
    }
    zl_groupnorm_bwd(dx, NULL, NULL, dp, x, tt->mean, tt->rstd, t->norm->w.f32, B, C, HW, G);
done:
    free(dh); free(s); free(dn); free(dp); free(dq); free(dk); free(dv); free(f1); free(df1); free(df0);
    return rc;
}

/* ------------------------------------------------------ time embedding */

/* The timestep (+ SDXL text_time) embedding, keeping its pre-activation values
 * so branches on its four Linear modules get dm too. The timestep itself gets
 * no gradient. */
typedef struct {
    float *tsin;    // [B, d0] sinusoidal embedding
    float *h1;      // linear_1 output before SiLU [B, te]
    float *emb;     // time (+ added) embedding before the final SiLU [B, te]
    float *cat;     // SDXL: [text_embeds, time-id embeddings] [B, P]
    float *a1;      // SDXL: add_embedding.linear_1 output before SiLU [B, te]
    float *temb;    // SiLU(emb) [B, te]: what every resnet's time_emb_proj reads
} time_tape;

static void time_tape_free(time_tape *t) {
    free(t->tsin); free(t->h1); free(t->emb); free(t->cat); free(t->a1); free(t->temb);
    memset(t, 0, sizeof *t);
}

static int time_fwd(bwctx *c, const zl_unet_input *in, time_tape *t) {
    zl_unet *u = c->u;
    const zl_unet_config *cf = &u->cfg;
    int B = in->B, te = cf->time_embed_dim, d0 = cf->block_out_channels[0];
    size_t nt = (size_t)B * te;
    t->tsin = malloc((size_t)B * d0 * sizeof(float));
    t->h1 = malloc(nt * sizeof(float));
    t->emb = malloc(nt * sizeof(float));
    t->temb = malloc(nt * sizeof(float));
    float *s = malloc(nt * sizeof(float));
    int ok = t->tsin && t->h1 && t->emb && t->temb && s;
    if (ok && cf->has_text_time)
        ok = (t->cat = malloc((size_t)B * cf->projection_class_embeddings_input_dim * sizeof(float))) &&
             (t->a1 = malloc(nt * sizeof(float)));
    if (!ok) { free(s); return OOM(); }
    zl_timestep_embedding(t->tsin, in->timestep, B, d0, cf->flip_sin_to_cos, cf->freq_shift);
    zl_unet_linear(u, u->time1, t->tsin, t->h1, B);
    zl_silu_fwd(s, t->h1, nt);
    zl_unet_linear(u, u->time2, s, t->emb, B);
    if (cf->has_text_time) {
        int P = cf->projection_class_embeddings_input_dim, pooled = zl_unet_pooled_dim(u);
        for (int b = 0; b < B; b++) {
            memcpy(t->cat + (size_t)b * P, in->text_embeds + (size_t)b * pooled, (size_t)pooled * sizeof(float));
            zl_timestep_embedding(t->cat + (size_t)b * P + pooled, in->time_ids + (size_t)b * 6, 6,
                                  cf->addition_time_embed_dim, cf->flip_sin_to_cos, cf->freq_shift);
        }
        zl_unet_linear(u, u->add1, t->cat, t->a1, B);
        zl_silu_fwd(s, t->a1, nt);
        float *aug = t->temb; /* borrowed until the final SiLU overwrites it */
        zl_unet_linear(u, u->add2, s, aug, B);
        zl_acc(t->emb, aug, nt);
    }
    zl_silu_fwd(t->temb, t->emb, nt);
    free(s);
    return ZL_OK;
}

static int has_br(const zl_unet_mod *m) { return m && m->n_br > 0; }

/* Only runs when a branch sits on the embedding's Linears (else nothing needs it). */
static int time_bwd(bwctx *c, const time_tape *t, const float *dtemb, int B) {
    zl_unet *u = c->u;
    if (!has_br(u->time1) && !has_br(u->time2) && !has_br(u->add1) && !has_br(u->add2)) return ZL_OK;
    size_t nt = (size_t)B * u->cfg.time_embed_dim;
    float *demb = zalloc(nt), *s = zalloc(nt), *ds = zalloc(nt), *dh = zalloc(nt);
    int rc = ZL_OK;
    if (!demb || !s || !ds || !dh) { rc = OOM(); goto done; }
    zl_silu_bwd(demb, dtemb, t->emb, nt);
    zl_silu_fwd(s, t->h1, nt);
    if ((rc = lin_bwd(c, u->time2, s, demb, ds, B))) goto done;
    zl_silu_bwd(dh, ds, t->h1, nt);
    if ((rc = lin_bwd(c, u->time1, t->tsin, dh, NULL, B))) goto done;
    if (u->cfg.has_text_time) {
        memset(ds, 0, nt * sizeof(float));
        memset(dh, 0, nt * sizeof(float));
        zl_silu_fwd(s, t->a1, nt);
        if ((rc = lin_bwd(c, u->add2, s, demb, ds, B))) goto done;
        zl_silu_bwd(dh, ds, t->a1, nt);
        rc = lin_bwd(c, u->add1, t->cat, dh, NULL, B);
    }
done:
    free(demb); free(s); free(ds); free(dh);
    return rc;
}

/* ----------------------------------------------------------------- tape */

enum { N_CONV_IN, N_PUSH, N_RES, N_ATTN, N_DOWN, N_CAT, N_UP, N_OUT };

typedef struct {
    int kind;
    const void *blk;
    int C, H, W; /* the node's input: channels and size */
    int Ho, Wo;  /* N_UP: the size it resizes to (2H x 2W unless a side was odd) */
    int aux;     /* N_PUSH / N_CAT: skip index; N_CAT: also Cb below */
    int Cb;      /* N_CAT: skip channels */
    float *x;    /* saved input [B, C, H, W] (not for N_PUSH / N_CAT / N_CONV_IN) */
    void *tape;  /* KEEP mode: res_tape / tr_tape */
} node;

struct zl_unet_tape {
    zl_unet_grad_mode mode;
    int B, H, W, T, used;
    float *sample, *timestep, *ctx, *text_embeds, *time_ids; /* copies of the inputs */
    time_tape tm;
    int n, cap;
    node *nodes;
};

static void node_free(node *nd) {
    free(nd->x);
    nd->x = NULL;
    if (nd->kind == N_RES) res_tape_free(nd->tape);
    else if (nd->kind == N_ATTN) tr_tape_free(nd->tape);
    nd->tape = NULL;
}

void zl_unet_tape_free(zl_unet_tape *t) {
    if (!t) return;
    for (int i = 0; i < t->n; i++) node_free(&t->nodes[i]);
    free(t->nodes);
    time_tape_free(&t->tm);
    free(t->sample); free(t->timestep); free(t->ctx); free(t->text_embeds); free(t->time_ids);
    free(t);
}

static node *add_node(zl_unet_tape *t, int kind, const void *blk, float *x, int C, int H, int W) {
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 64;
        node *p = realloc(t->nodes, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        t->nodes = p;
        t->cap = cap;
    }
    node *nd = &t->nodes[t->n++];
    memset(nd, 0, sizeof *nd);
    nd->kind = kind;
    nd->blk = blk;
    nd->x = x;
    nd->C = C;
    nd->H = H;
    nd->W = W;
    return nd;
}

static void bw_free(bwctx *c) {
    free(c->da.p); free(c->dxm.p); free(c->act.p);
}

int zl_unet_forward_tape(zl_unet *u, const zl_unet_input *in, zl_unet_grad_mode mode, float *out,
                         zl_unet_tape **tape) {
    const zl_unet_config *cf = &u->cfg;
    int n = cf->n_levels, B = in->B, H = in->H, W = in->W, T = in->T, rc;
    *tape = NULL;
    if (B < 1 || H < 1 || W < 1 || !in->sample || !in->timestep || !out)
        return zl_set_error(ZL_EINVAL, "UNet forward: missing input or empty batch");
    if (T < 1 || !in->context) return zl_set_error(ZL_EINVAL, "UNet forward: encoder_hidden_states is required");
    if (cf->has_text_time && (!in->text_embeds || !in->time_ids))
        return zl_set_error(ZL_EINVAL, "UNet forward: an SDXL UNet needs text_embeds and time_ids");
    if (mode != ZL_UNET_GRAD_KEEP && mode != ZL_UNET_GRAD_RECOMPUTE)
        return zl_set_error(ZL_EINVAL, "UNet forward: unknown gradient mode %d", (int)mode);
    if ((rc = zl_unet_ws_ensure(u, B, H, W, T))) return rc;
    zl_unet_tape *t = calloc(1, sizeof *t);
    if (!t) return OOM();
    t->mode = mode;
    t->B = B; t->H = H; t->W = W; t->T = T;
    t->sample = dup_f(in->sample, (size_t)B * cf->in_channels * H * W);
    t->timestep = dup_f(in->timestep, (size_t)B);
    t->ctx = dup_f(in->context, (size_t)B * T * cf->cross_attention_dim);
    int ok = t->sample && t->timestep && t->ctx;
    if (cf->has_text_time) {
        t->text_embeds = dup_f(in->text_embeds, (size_t)B * zl_unet_pooled_dim(u));
        t->time_ids = dup_f(in->time_ids, (size_t)B * 6);
        ok = ok && t->text_embeds && t->time_ids;
    }
    bwctx c = {.u = u};
    float *cur = NULL, *nxt = NULL;
    int nskip = 0, skip_c[ZL_MAX_LEVELS * (ZL_UNET_MAX_RES + 1) + 1];
    int skip_h[ZL_MAX_LEVELS * (ZL_UNET_MAX_RES + 1) + 1], skip_w[ZL_MAX_LEVELS * (ZL_UNET_MAX_RES + 1) + 1];
    float *skips[ZL_MAX_LEVELS * (ZL_UNET_MAX_RES + 1) + 1];
    int h = H, w = W, ccur = cf->block_out_channels[0];
    if (!ok) { rc = OOM(); goto fail; }
    if ((rc = time_fwd(&c, in, &t->tm))) goto fail;
    const float *temb = t->tm.temb;

#define NEWBUF(p, ch, hh, ww) do { if (!((p) = malloc((size_t)B * (ch) * (hh) * (ww) * sizeof(float)))) { rc = OOM(); goto fail; } } while (0)
#define NODE(kind, blk, x, C) do { if (!add_node(t, kind, blk, x, C, h, w)) { rc = OOM(); goto fail; } } while (0)
#define PUSH() do { \
        size_t _n = (size_t)B * ccur * h * w; \
        if (!(skips[nskip] = dup_f(cur, _n))) { rc = OOM(); goto fail; } \
        skip_h[nskip] = h; skip_w[nskip] = w; skip_c[nskip++] = ccur; \
        NODE(N_PUSH, NULL, NULL, ccur); t->nodes[t->n - 1].aux = nskip - 1; \
    } while (0)
/* A resnet or transformer node: it takes ownership of cur as its saved input. */
#define RES(r) do { \
        res_tape *_tp; NEWBUF(nxt, (r)->cout, h, w); \
        NODE(N_RES, r, cur, (r)->cin); cur = NULL; \
        if ((rc = res_fwd(&c, r, t->nodes[t->n - 1].x, temb, nxt, B, h, w, &_tp))) goto fail; \
        if (mode == ZL_UNET_GRAD_KEEP) t->nodes[t->n - 1].tape = _tp; else res_tape_free(_tp); \
        cur = nxt; nxt = NULL; ccur = (r)->cout; \
    } while (0)
#define ATTN(a) do { \
        tr_tape *_tp; NEWBUF(nxt, (a)->C, h, w); \
        NODE(N_ATTN, a, cur, (a)->C); cur = NULL; \
        if ((rc = tr_fwd(&c, a, t->nodes[t->n - 1].x, t->ctx, nxt, B, h, w, T, &_tp))) goto fail; \
        if (mode == ZL_UNET_GRAD_KEEP) t->nodes[t->n - 1].tape = _tp; else tr_tape_free(_tp); \
        cur = nxt; nxt = NULL; \
    } while (0)

    NEWBUF(cur, ccur, h, w);
    zl_unet_conv(u, u->conv_in, t->sample, cur, B, h, w, 1); // [B, boc0, H, W]
    NODE(N_CONV_IN, u->conv_in, NULL, cf->in_channels);
    PUSH();
    for (int i = 0; i < n; i++) {
        zl_unet_level *lv = &u->down[i];
        for (int j = 0; j < lv->n_res; j++) {
            RES(&lv->res[j]);
            if (lv->has_attn) ATTN(&lv->attn[j]);
            PUSH();
        }
        if (lv->sampler) {
            NEWBUF(nxt, ccur, (h + 1) / 2, (w + 1) / 2);
            NODE(N_DOWN, lv->sampler, cur, ccur);
            zl_unet_conv(u, lv->sampler, cur, nxt, B, h, w, 2);
            cur = nxt; nxt = NULL;
            h = (h + 1) / 2; w = (w + 1) / 2; /* 3x3, stride 2, padding 1 */
            PUSH();
        }
    }
    RES(&u->mid_res[0]);
    ATTN(&u->mid_attn);
    RES(&u->mid_res[1]);
    for (int i = 0; i < n; i++) {
        zl_unet_level *lv = &u->up[i];
        for (int j = 0; j < lv->n_res; j++) {
            int cs = skip_c[--nskip];
            float *s = skips[nskip];
            if (ccur + cs != lv->res[j].cin) {
                free(s);
                rc = zl_set_error(ZL_ESHAPE, "UNet: up block %d resnet %d expects %d channels, got %d + %d", i, j,
                                  lv->res[j].cin, ccur, cs);
                goto fail;
            }
            if (!(nxt = malloc((size_t)B * (ccur + cs) * h * w * sizeof(float)))) { free(s); rc = OOM(); goto fail; }
            zl_concat_fwd(nxt, cur, s, B, ccur, cs, h * w); // [B, ccur + cs, HW]
            free(s);
            free(cur);
            cur = nxt; nxt = NULL;
            NODE(N_CAT, NULL, NULL, ccur + cs);
            t->nodes[t->n - 1].aux = nskip;
            t->nodes[t->n - 1].Cb = cs;
            ccur += cs;
            RES(&lv->res[j]);
            if (lv->has_attn) ATTN(&lv->attn[j]);
        }
        if (lv->sampler) {
            float *up;
            /* resize to the skip met next (2h x 2w unless a side was odd), as diffusers */
            int h2 = nskip ? skip_h[nskip - 1] : 2 * h, w2 = nskip ? skip_w[nskip - 1] : 2 * w;
            NEWBUF(nxt, ccur, h2, w2);
            NEWBUF(up, ccur, h2, w2);
            zl_upsample_nearest_fwd(up, cur, B, ccur, h, w, h2, w2);
            zl_unet_conv(u, lv->sampler, up, nxt, B, h2, w2, 1);
            free(up);
            NODE(N_UP, lv->sampler, cur, ccur); /* saved before the upsample (4x smaller) */
            t->nodes[t->n - 1].Ho = h2;
            t->nodes[t->n - 1].Wo = w2;
            cur = nxt; nxt = NULL;
            h = h2; w = w2;
        }
    }
    {
        float *g, *mean, *rstd;
        int G = cf->norm_num_groups;
        NEWBUF(g, ccur, h, w);
        mean = malloc((size_t)B * G * sizeof(float));
        rstd = malloc((size_t)B * G * sizeof(float));
        if (!mean || !rstd) { free(g); free(mean); free(rstd); rc = OOM(); goto fail; }
        zl_groupnorm_fwd(g, mean, rstd, cur, u->norm_out->w.f32, u->norm_out->b.f32, B, ccur, h * w, G, cf->norm_eps);
        zl_silu_fwd(g, g, (size_t)B * ccur * h * w);
        zl_unet_conv(u, u->conv_out, g, out, B, h, w, 1);
        free(g); free(mean); free(rstd);
        NODE(N_OUT, NULL, cur, ccur);
        cur = NULL;
    }
    bw_free(&c);
    *tape = t;
    return ZL_OK;
fail:
    while (nskip > 0) free(skips[--nskip]);
    free(cur);
    free(nxt);
    bw_free(&c);
    zl_unet_tape_free(t);
    return rc;
#undef NEWBUF
#undef NODE
#undef PUSH
#undef RES
#undef ATTN
}

/* ------------------------------------------------------------- backward */

/* The gradient wrt one node's input from the gradient wrt its output (d).
 * *dx receives a new buffer, or d itself for a skip push. */
static int node_bwd(bwctx *c, zl_unet_tape *t, node *nd, float *d, float **dx, float **dskip, float *dtemb) {
    zl_unet *u = c->u;
    int B = t->B, C = nd->C, h = nd->H, w = nd->W, HW = h * w, rc = ZL_OK;
    size_t nin = (size_t)B * C * HW;
    *dx = NULL;
    switch (nd->kind) {
    case N_PUSH:
        zl_acc(d, dskip[nd->aux], nin);
        free(dskip[nd->aux]);
        dskip[nd->aux] = NULL;
        *dx = d;
        return ZL_OK;
    case N_CAT: {
        int Cb = nd->Cb, Ca = C - Cb;
        float *da = zalloc((size_t)B * Ca * HW), *db = zalloc((size_t)B * Cb * HW);
        if (!da || !db) { free(da); free(db); return OOM(); }
        zl_concat_bwd(da, db, d, B, Ca, Cb, HW);
        dskip[nd->aux] = db;
        *dx = da;
        return ZL_OK;
    }
    case N_CONV_IN:
        if (!(*dx = zalloc(nin))) return OOM();
        return conv_bwd(c, nd->blk, t->sample, d, *dx, B, h, w, 1);
    case N_DOWN:
        if (!(*dx = zalloc(nin))) return OOM();
        return conv_bwd(c, nd->blk, nd->x, d, *dx, B, h, w, 2);
    case N_UP: {
        size_t nup = (size_t)B * C * nd->Ho * nd->Wo;
        float *up = malloc(nup * sizeof(float)), *dt = zalloc(nup);
        if (!up || !dt || !(*dx = zalloc(nin))) { free(up); free(dt); return OOM(); }
        zl_upsample_nearest_fwd(up, nd->x, B, C, h, w, nd->Ho, nd->Wo);
        rc = conv_bwd(c, nd->blk, up, d, dt, B, nd->Ho, nd->Wo, 1);
        if (!rc) zl_upsample_nearest_bwd(*dx, dt, B, C, h, w, nd->Ho, nd->Wo);
        free(up);
        free(dt);
        return rc;
    }
    case N_OUT: {
        int G = u->cfg.norm_num_groups;
        float *g = malloc(nin * sizeof(float)), *s = malloc(nin * sizeof(float)), *ds = zalloc(nin),
              *dg = zalloc(nin), *mean = malloc((size_t)B * G * sizeof(float)), *rstd = malloc((size_t)B * G * sizeof(float));
        if (!g || !s || !ds || !dg || !mean || !rstd || !(*dx = zalloc(nin))) rc = OOM();
        if (!rc) {
            zl_groupnorm_fwd(g, mean, rstd, nd->x, u->norm_out->w.f32, u->norm_out->b.f32, B, C, HW, G, u->cfg.norm_eps);
            zl_silu_fwd(s, g, nin);
            rc = conv_bwd(c, u->conv_out, s, d, ds, B, h, w, 1);
        }
        if (!rc) {
            zl_silu_bwd(dg, ds, g, nin);
            zl_groupnorm_bwd(*dx, NULL, NULL, dg, nd->x, mean, rstd, u->norm_out->w.f32, B, C, HW, G);
        }
        free(g); free(s); free(ds); free(dg); free(mean); free(rstd);
        return rc;
    }
    case N_RES: {
        const zl_unet_resnet *r = nd->blk;
        res_tape *tp = nd->tape;
        if (!tp) { /* recompute this block's forward */
            float *tmp = malloc((size_t)B * r->cout * HW * sizeof(float));
            if (!tmp) return OOM();
            rc = res_fwd(c, r, nd->x, t->tm.temb, tmp, B, h, w, &tp);
            free(tmp);
            if (rc) return rc;
            nd->tape = tp;
        }
        if (!(*dx = zalloc(nin))) return OOM();
        return res_bwd(c, r, tp, nd->x, t->tm.temb, d, *dx, dtemb, B, h, w);
    }
    case N_ATTN: {
        const zl_unet_transformer *a = nd->blk;
        tr_tape *tp = nd->tape;
        if (!tp) {
            float *tmp = malloc(nin * sizeof(float));
            if (!tmp) return OOM();
            rc = tr_fwd(c, a, nd->x, t->ctx, tmp, B, h, w, t->T, &tp);
            free(tmp);
            if (rc) return rc;
            nd->tape = tp;
        }
        if (!(*dx = zalloc(nin))) return OOM();
        return tr_bwd(c, a, tp, nd->x, t->ctx, d, *dx, B, h, w, t->T);
    }
    }
    return zl_set_error(ZL_EINVAL, "UNet backward: corrupt tape");
}

int zl_unet_backward(zl_unet *u, zl_unet_tape *t, const float *dout, float *dsample) {
    if (!t || !dout) return zl_set_error(ZL_EINVAL, "UNet backward: no tape or no output gradient");
    if (t->used) return zl_set_error(ZL_EINVAL, "UNet backward: this tape was already used by a backward");
    t->used = 1;
    const zl_unet_config *cf = &u->cfg;
    int B = t->B, rc = zl_unet_ws_ensure(u, B, t->H, t->W, t->T);
    if (rc) return rc;
    bwctx c = {.u = u};
    float *dskip[ZL_MAX_LEVELS * (ZL_UNET_MAX_RES + 1) + 1] = {0};
    float *dtemb = zalloc((size_t)B * cf->time_embed_dim); // [B, te]
    float *d = dup_f(dout, (size_t)B * cf->out_channels * t->H * t->W);
    if (!dtemb || !d) rc = OOM();
    for (int i = t->n - 1; i >= 0 && !rc; i--) {
        float *dx = NULL;
        rc = node_bwd(&c, t, &t->nodes[i], d, &dx, dskip, dtemb);
        if (dx != d) free(d);
        d = dx;
        node_free(&t->nodes[i]); /* memory shrinks as the backward passes */
    }
    if (!rc) rc = time_bwd(&c, &t->tm, dtemb, B);
    if (!rc && dsample) memcpy(dsample, d, (size_t)B * cf->in_channels * t->H * t->W * sizeof(float));
    for (size_t i = 0; i < sizeof dskip / sizeof *dskip; i++) free(dskip[i]);
    free(d);
    free(dtemb);
    bw_free(&c);
    return rc;
}

int zl_unet_zero_merger_grads(zl_unet *u) {
    for (int i = 0; i < u->n_mods; i++) {
        zl_unet_mod *m = u->mods[i];
        for (int k = 0; k < m->n_br; k++) {
            if (ensure_grad(&m->br[k], m->in)) return ZL_ENOMEM;
            memset(m->br[k].grad, 0, (size_t)m->in * sizeof(float));
        }
    }
    return ZL_OK;
}

const float *zl_unet_merger_grad(zl_unet *u, int slot, const char *module, int *n) {
    zl_unet_mod *m = zl_unet_find_mod(u, module);
    if (n) *n = 0;
    if (!m) return NULL;
    for (int k = 0; k < m->n_br; k++) {
        zl_unet_branch *br = &m->br[k];
        if (br->slot != slot) continue;
        if (ensure_grad(br, m->in)) return NULL;
        if (n) *n = m->in;
        return br->grad;
    }
    return NULL;
}
