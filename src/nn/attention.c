/* Multi-head softmax attention, forward and backward, flash-attention style:
 * queries are processed in tiles of ZL_ATT_BQ rows against key tiles of
 * ZL_ATT_BK columns with an online softmax, so memory is O(tile) and no
 * Tq x Tk matrix ever exists. The forward saves the row log-sum-exp; the
 * backward recomputes each probability tile from q, k and lse.
 * Tile products go through zl_tile_gemm (BLAS calls cost more than the
 * arithmetic at these sizes). Each (batch, head, tile) task is independent
 * and single-threaded, so results do not depend on the thread count. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn/bf16_tiles.h"
#include "nn/ops.h"
#include "nn/tile_gemm.h"
#include "nn/vexp.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define ZL_ATT_BQ 192
#define ZL_ATT_BK 256
/* (batch, head) pairs from which the backward runs as one sweep per head. */
#define ZL_ATT_FUSED_TASKS 8

/* Keys visible to query row i of a tile starting at key j0, among n keys. */
static inline int visible(int causal, int i, int j0, int n) {
    if (!causal) return n;
    int v = i - j0 + 1;
    return v < 0 ? 0 : v > n ? n : v;
}

static inline float row_max(const float *x, int n, float m) {
    int i = 0;
#if defined(__AVX2__)
    if (n >= 8) {
        __m256 v = _mm256_set1_ps(m);
        for (; i + 8 <= n; i += 8) v = _mm256_max_ps(v, _mm256_loadu_ps(x + i));
        float t[8];
        _mm256_storeu_ps(t, v);
        for (int j = 0; j < 8; j++) m = t[j] > m ? t[j] : m;
    }
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* Per-thread scratch for one tile task. */
typedef struct {
    float *S;   // [BQ, BK] scores / probabilities
    float *T;   // [BQ, BK] dP / dS, or the output accumulator [BQ, d]
    float *m;   // [2, BQ] running max and sum
} att_scratch;

static int scratch_alloc(att_scratch *s, int d) {
    const size_t t = (size_t)ZL_ATT_BQ * ZL_ATT_BK;
    const size_t tacc = (size_t)ZL_ATT_BQ * d > t ? (size_t)ZL_ATT_BQ * d : t;
    s->S = malloc(sizeof(float) * (t + tacc + 2 * ZL_ATT_BQ));
    s->T = s->m = NULL;
    if (!s->S) return 0;
    s->T = s->S + t;
    s->m = s->T + tacc;
    return 1;
}

static inline void scale_row(float *x, float s, int n) {
    #pragma omp simd
    for (int j = 0; j < n; j++) x[j] *= s;
}

/* Softmax of the first nv entries of each row of S [mq, n] in place (the rest
 * zeroed), with the row's log-sum-exp to lse_rows. */
static void softmax_rows(float *S, float *lse_rows, int mq, int n, int causal, int i0) {
    for (int r = 0; r < mq; r++) {
        float *sr = S + (size_t)r * n;
        const int nv = visible(causal, i0 + r, 0, n);
        for (int c = nv; c < n; c++) sr[c] = 0.0f;
        if (nv == 0) {
            if (lse_rows) lse_rows[r] = -INFINITY;
            continue;
        }
        const float mx = row_max(sr, nv, -INFINITY);
        const float l = zl_exp_sub_sum(sr, nv, mx);
        scale_row(sr, 1.0f / l, nv);
        if (lse_rows) lse_rows[r] = mx + logf(l);
    }
}

/* Online softmax, the start of a query tile: running max -inf, sum 0, acc 0. */
static void online_start(float *m, float *l, float *acc, int mq, int d) {
    memset(acc, 0, sizeof(float) * mq * d);
    for (int r = 0; r < mq; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
}

/* One key tile: the scores S [mq, n] become exp(S - running max), masked
 * entries 0; the running max and sum move on and acc is rescaled to match. */
static void online_tile(float *S, float *m, float *l, float *acc, int mq, int n, int d, int causal, int i0, int j0) {
    for (int r = 0; r < mq; r++) {
        float *sr = S + (size_t)r * n;
        const int nv = visible(causal, i0 + r, j0, n);
        if (nv == 0) {
            memset(sr, 0, sizeof(float) * n);
            continue;
        }
        const float mx = row_max(sr, nv, m[r]);
        /* The accumulator is still zero before a row's first visible key. */
        if (m[r] != -INFINITY && mx != m[r]) {
            const float corr = expf(m[r] - mx);
            l[r] *= corr;
            scale_row(acc + (size_t)r * d, corr, d);
        }
        l[r] += zl_exp_sub_sum(sr, nv, mx);
        for (int c = nv; c < n; c++) sr[c] = 0.0f;
        m[r] = mx;
    }
}

/* The end of a query tile: o rows (stride HD) = acc / sum, and the rows' log-sum-exp. */
static void online_finish(float *op, int HD, float *lrow, const float *m, const float *l, const float *acc, int mq,
                          int d) {
    for (int r = 0; r < mq; r++) {
        const float inv = 1.0f / l[r];
        float *orow = op + (size_t)r * HD;
        const float *ar = acc + (size_t)r * d;
        #pragma omp simd
        for (int j = 0; j < d; j++) orow[j] = ar[j] * inv;
        if (lrow) lrow[r] = m[r] + logf(l[r]);
    }
}

static int ceil32(int x) { return (x + 31) / 32 * 32; }

/* The forward with bfloat16 products (zl_bf16_active): the same tiles and
 * online softmax, with q scale k^T and P v on the tile unit (q scale, k, P
 * and v rounded to bfloat16, sums in float32), as PyTorch's bfloat16
 * attention. k and v are packed once per (batch, head) for all query tiles.
 * Returns nonzero (nothing written) when its buffers cannot be had. */
static int attention_fwd_bf16(float *o, float *lse, const float *q, int ldq, const float *k, int ldk, const float *v,
                              int ldv, int B, int Tq, int Tk, int H, int d, int causal) {
    const int HD = H * d, nqt = (Tq + ZL_ATT_BQ - 1) / ZL_ATT_BQ, d32 = ceil32(d), T32 = ceil32(Tk);
    const float scale = 1.0f / sqrtf((float)d);
    /* k: B operand of q k^T (columns = keys, K = d); v: B operand of P v
     * (columns = d, K = keys). One more zero group each: a pair of column
     * groups may reach one past the last. np parts per K block (bf16x3: 2). */
    const size_t np = (size_t)zl_bf16_parts();
    const size_t gsk = (size_t)d32 * 16 * np, kbh = ((size_t)T32 + 16) * d32 * np;
    const size_t gsv = (size_t)T32 * 16 * np, vbh = ((size_t)d32 + 16) * T32 * np;
    const long nbh = (long)B * H, ntask = nbh * nqt;
    uint16_t *Kp = malloc(nbh * kbh * sizeof(uint16_t)), *Vp = malloc(nbh * vbh * sizeof(uint16_t));
    if (!Kp || !Vp) {
        free(Kp), free(Vp);
        return 1;
    }
    #pragma omp parallel for schedule(static)
    for (long bh = 0; bh < nbh; bh++) {
        const int b = (int)(bh / H), h = (int)(bh % H);
        uint16_t *kd = Kp + bh * kbh, *vd = Vp + bh * vbh;
        zl_bf16_pack_b_f32(kd, k + (size_t)b * Tk * ldk + (size_t)h * d, ldk, 1, Tk, d);
        memset(kd + (size_t)T32 * d32 * np, 0, (size_t)16 * d32 * np * sizeof(uint16_t));
        zl_bf16_pack_b_f32(vd, v + (size_t)b * Tk * ldv + (size_t)h * d, ldv, 0, d, Tk);
        memset(vd + (size_t)d32 * T32 * np, 0, (size_t)16 * T32 * np * sizeof(uint16_t));
    }
    int oom = 0;
    #pragma omp parallel
    {
        att_scratch w;
        const size_t qa = (size_t)ceil32(ZL_ATT_BQ) * d32 * np, pa = (size_t)ceil32(ZL_ATT_BQ) * ceil32(ZL_ATT_BK) * np;
        uint16_t *Qa = malloc((qa + pa) * sizeof(uint16_t)), *Pa = Qa ? Qa + qa : NULL;
        const int ok = scratch_alloc(&w, d) && Qa;
        if (!ok) {
            #pragma omp atomic write
            oom = 1;
        }
        float *S = w.S, *acc = w.T, *m = w.m, *l = w.m + ZL_ATT_BQ;
        #pragma omp for schedule(dynamic, 1)
        for (long t = 0; t < ntask; t++) {
            if (!ok) continue;
            const int qt = (int)(t % nqt), h = (int)((t / nqt) % H), b = (int)(t / ((long)nqt * H));
            const long bh = (long)b * H + h;
            const int i0 = qt * ZL_ATT_BQ, mq = Tq - i0 < ZL_ATT_BQ ? Tq - i0 : ZL_ATT_BQ;
            const float *qp = q + ((size_t)b * Tq + i0) * ldq + (size_t)h * d;
            float *op = o + ((size_t)b * Tq + i0) * HD + (size_t)h * d;
            float *lrow = lse ? lse + ((size_t)b * H + h) * Tq + i0 : NULL;
            zl_bf16_pack_a_f32(Qa, qp, ldq, mq, d, scale);
            online_start(m, l, acc, mq, d);
            const int kend = causal ? (i0 + mq < Tk ? i0 + mq : Tk) : Tk;
            for (int j0 = 0; j0 < kend; j0 += ZL_ATT_BK) {
                const int n = kend - j0 < ZL_ATT_BK ? kend - j0 : ZL_ATT_BK;
                memset(S, 0, sizeof(float) * mq * n);
                zl_bf16_tiles(Qa, gsk, Kp + bh * kbh + (size_t)(j0 / 16) * gsk, gsk, mq, n, d, S, n);
                online_tile(S, m, l, acc, mq, n, d, causal, i0, j0);
                zl_bf16_pack_a_f32(Pa, S, n, mq, n, 0.0f);
                zl_bf16_tiles(Pa, (size_t)ceil32(n) * 16 * np, Vp + bh * vbh + (size_t)(j0 / 32) * 512 * np, gsv, mq, d,
                              n, acc, d);
            }
            online_finish(op, HD, lrow, m, l, acc, mq, d);
        }
        free(w.S);
        free(Qa);
    }
    free(Kp), free(Vp);
    if (oom)
        for (size_t i = 0; i < (size_t)B * Tq * HD; i++) o[i] = NAN;
    return 0;
}

void zl_attention_fwd(float *o, float *lse, const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                      int B, int Tq, int Tk, int H, int d, int causal) {
    /* bfloat16 for self-attention over many keys; with one key tile (77 text
     * tokens) float32's direct path is faster (measured: 2x at 4096 queries) */
    if (Tk > ZL_ATT_BK && zl_bf16_active() && !attention_fwd_bf16(o, lse, q, ldq, k, ldk, v, ldv, B, Tq, Tk, H, d, causal))
        return;
    const int HD = H * d, nqt = (Tq + ZL_ATT_BQ - 1) / ZL_ATT_BQ;
    const float scale = 1.0f / sqrtf((float)d);
    const long ntask = (long)B * H * nqt;
    /* All keys fit one tile (cross-attention's 77 text tokens, CLIP's 77):
     * plain softmax, P V straight into o, no running max or accumulator. */
    const int one_tile = Tk <= ZL_ATT_BK;
    int oom = 0;
    #pragma omp parallel
    {
        att_scratch w;
        const int ok = scratch_alloc(&w, d);
        if (!ok) {
            #pragma omp atomic write
            oom = 1;
        }
        float *S = w.S, *acc = w.T, *m = w.m, *l = w.m + ZL_ATT_BQ;
        #pragma omp for schedule(dynamic, 1)
        for (long t = 0; t < ntask; t++) {
            if (!ok) continue;
            const int qt = (int)(t % nqt), h = (int)((t / nqt) % H), b = (int)(t / ((long)nqt * H));
            const int i0 = qt * ZL_ATT_BQ, mq = Tq - i0 < ZL_ATT_BQ ? Tq - i0 : ZL_ATT_BQ;
            const float *qp = q + ((size_t)b * Tq + i0) * ldq + (size_t)h * d;
            float *op = o + ((size_t)b * Tq + i0) * HD + (size_t)h * d;
            float *lrow = lse ? lse + ((size_t)b * H + h) * Tq + i0 : NULL;
            if (one_tile) {
                const float *kp = k + (size_t)b * Tk * ldk + (size_t)h * d;
                const float *vp = v + (size_t)b * Tk * ldv + (size_t)h * d;
                zl_tile_gemm(0, 1, mq, Tk, d, scale, qp, ldq, kp, ldk, 0, S, Tk);
                softmax_rows(S, lrow, mq, Tk, causal, i0);
                zl_tile_gemm(0, 0, mq, d, Tk, 1.0f, S, Tk, vp, ldv, 0, op, HD);
                continue;
            }
            online_start(m, l, acc, mq, d);
            /* Causal: key tiles starting after the tile's last query are fully masked. */
            const int kend = causal ? (i0 + mq < Tk ? i0 + mq : Tk) : Tk;
            for (int j0 = 0; j0 < kend; j0 += ZL_ATT_BK) {
                const int n = kend - j0 < ZL_ATT_BK ? kend - j0 : ZL_ATT_BK;
                const float *kp = k + ((size_t)b * Tk + j0) * ldk + (size_t)h * d;
                const float *vp = v + ((size_t)b * Tk + j0) * ldv + (size_t)h * d;
                zl_tile_gemm(0, 1, mq, n, d, scale, qp, ldq, kp, ldk, 0, S, n);
                online_tile(S, m, l, acc, mq, n, d, causal, i0, j0);
                zl_tile_gemm(0, 0, mq, d, n, 1.0f, S, n, vp, ldv, 1, acc, d);
            }
            online_finish(op, HD, lrow, m, l, acc, mq, d);
        }
        free(w.S);
    }
    if (oom)
        for (size_t i = 0; i < (size_t)B * Tq * HD; i++) o[i] = NAN;
}

/* P [mq, n] = exp(scale q k^T - lse) for one tile, masked entries 0. */
static void probs(float *P, const float *qp, int ldq, const float *kp, int ldk, const float *lse_rows, int mq, int n,
                  int d, float scale, int causal, int i0, int j0) {
    zl_tile_gemm(0, 1, mq, n, d, scale, qp, ldq, kp, ldk, 0, P, n);
    for (int r = 0; r < mq; r++) {
        float *sr = P + (size_t)r * n;
        const int nv = visible(causal, i0 + r, j0, n);
        zl_exp_sub_sum(sr, nv, lse_rows[r]);
        for (int c = nv; c < n; c++) sr[c] = 0.0f;
    }
}

/* dS = P * (dP - D) in place in dP. */
static void dsoftmax(float *dP, const float *P, const float *Drows, int mq, int n) {
    for (int r = 0; r < mq; r++) {
        float *dr = dP + (size_t)r * n;
        const float *pr = P + (size_t)r * n;
        const float Dr = Drows[r];
        #pragma omp simd
        for (int c = 0; c < n; c++) dr[c] = pr[c] * (dr[c] - Dr);
    }
}

void zl_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q, int ldq, const float *k,
                      int ldk, const float *v, int ldv, const float *o, const float *lse, int B, int Tq, int Tk, int H,
                      int d, int causal) {
    const int HD = H * d;
    const float scale = 1.0f / sqrtf((float)d);
    int oom = 0;
    /* D [B, H, Tq] = rowsum(dout * o): the softmax-backward correction per query. */
    float *D = malloc(sizeof(float) * (size_t)B * H * Tq);
    if (!D) {
        oom = 1;
        goto poison;
    }
    #pragma omp parallel for schedule(static) if ((size_t)B * Tq * HD > 65536)
    for (long bt = 0; bt < (long)B * Tq; bt++) {
        const int b = (int)(bt / Tq), i = (int)(bt % Tq);
        const float *dr = dout + (size_t)bt * HD, *orow = o + (size_t)bt * HD;
        for (int h = 0; h < H; h++) {
            float s = 0.0f;
            for (int j = 0; j < d; j++) s += dr[h * d + j] * orow[h * d + j];
            D[((size_t)b * H + h) * Tq + i] = s;
        }
    }
    /* With enough heads, one task per (b, h) does everything in a single sweep:
     * each probability tile is recomputed once and feeds dV, dK and dQ (5 tile
     * products instead of 7). The task owns its head's slices of dq/dk/dv, and
     * every sum runs in the same order as in the two-pass scheme below, so the
     * results are identical either way and for any thread count. Few heads
     * (the VAE's single-head attention) would leave threads idle: two passes. */
    if ((long)B * H >= ZL_ATT_FUSED_TASKS) {
        const int nkt = (Tk + ZL_ATT_BK - 1) / ZL_ATT_BK;
        #pragma omp parallel
        {
            att_scratch w;
            const int ok = scratch_alloc(&w, d);
            if (!ok) {
                #pragma omp atomic write
                oom = 1;
            }
            #pragma omp for schedule(dynamic, 1)
            for (long t = 0; t < (long)B * H; t++) {
                if (!ok) continue;
                const int h = (int)(t % H), b = (int)(t / H);
                for (int kt = 0; kt < nkt; kt++) {
                    const int j0 = kt * ZL_ATT_BK, n = Tk - j0 < ZL_ATT_BK ? Tk - j0 : ZL_ATT_BK;
                    const float *kp = k + ((size_t)b * Tk + j0) * ldk + (size_t)h * d;
                    const float *vp = v + ((size_t)b * Tk + j0) * ldv + (size_t)h * d;
                    const int istart = causal ? (j0 / ZL_ATT_BQ) * ZL_ATT_BQ : 0;
                    for (int i0 = istart; i0 < Tq; i0 += ZL_ATT_BQ) {
                        const int mq = Tq - i0 < ZL_ATT_BQ ? Tq - i0 : ZL_ATT_BQ;
                        const float *qp = q + ((size_t)b * Tq + i0) * ldq + (size_t)h * d;
                        const float *dop = dout + ((size_t)b * Tq + i0) * HD + (size_t)h * d;
                        const size_t row = ((size_t)b * H + h) * Tq + i0;
                        probs(w.S, qp, ldq, kp, ldk, lse + row, mq, n, d, scale, causal, i0, j0);
                        if (dv) /* dV += P^T dO */
                            zl_tile_gemm(1, 0, n, d, mq, 1.0f, w.S, n, dop, HD, 1,
                                         dv + ((size_t)b * Tk + j0) * ldv + (size_t)h * d, ldv);
                        if (!dk && !dq) continue;
                        /* dP = dO V^T; dS = P (dP - D); dK += scale dS^T Q; dQ += scale dS K */
                        zl_tile_gemm(0, 1, mq, n, d, 1.0f, dop, HD, vp, ldv, 0, w.T, n);
                        dsoftmax(w.T, w.S, D + row, mq, n);
                        if (dk)
                            zl_tile_gemm(1, 0, n, d, mq, scale, w.T, n, qp, ldq, 1,
                                         dk + ((size_t)b * Tk + j0) * ldk + (size_t)h * d, ldk);
                        if (dq)
                            zl_tile_gemm(0, 0, mq, d, n, scale, w.T, n, kp, ldk, 1,
                                         dq + ((size_t)b * Tq + i0) * ldq + (size_t)h * d, ldq);
                    }
                }
            }
            free(w.S);
        }
        goto poison;
    }
    /* Pass 1: dK and dV, one task per (b, h, key tile), looping over query tiles. */
    if (dk || dv) {
        const int nkt = (Tk + ZL_ATT_BK - 1) / ZL_ATT_BK;
        const long ntask = (long)B * H * nkt;
        #pragma omp parallel
        {
            att_scratch w;
            const int ok = scratch_alloc(&w, d);
            if (!ok) {
                #pragma omp atomic write
                oom = 1;
            }
            #pragma omp for schedule(dynamic, 1)
            for (long t = 0; t < ntask; t++) {
                if (!ok) continue;
                const int kt = (int)(t % nkt), h = (int)((t / nkt) % H), b = (int)(t / ((long)nkt * H));
                const int j0 = kt * ZL_ATT_BK, n = Tk - j0 < ZL_ATT_BK ? Tk - j0 : ZL_ATT_BK;
                const float *kp = k + ((size_t)b * Tk + j0) * ldk + (size_t)h * d;
                const float *vp = v + ((size_t)b * Tk + j0) * ldv + (size_t)h * d;
                /* Causal: query tiles ending before key j0 see none of these keys. */
                const int istart = causal ? (j0 / ZL_ATT_BQ) * ZL_ATT_BQ : 0;
                for (int i0 = istart; i0 < Tq; i0 += ZL_ATT_BQ) {
                    const int mq = Tq - i0 < ZL_ATT_BQ ? Tq - i0 : ZL_ATT_BQ;
                    const float *qp = q + ((size_t)b * Tq + i0) * ldq + (size_t)h * d;
                    const float *dop = dout + ((size_t)b * Tq + i0) * HD + (size_t)h * d;
                    const size_t row = ((size_t)b * H + h) * Tq + i0;
                    probs(w.S, qp, ldq, kp, ldk, lse + row, mq, n, d, scale, causal, i0, j0);
                    if (dv) /* dV += P^T dO */
                        zl_tile_gemm(1, 0, n, d, mq, 1.0f, w.S, n, dop, HD, 1,
                                     dv + ((size_t)b * Tk + j0) * ldv + (size_t)h * d, ldv);
                    if (dk) { /* dP = dO V^T; dS = P (dP - D); dK += scale dS^T Q */
                        zl_tile_gemm(0, 1, mq, n, d, 1.0f, dop, HD, vp, ldv, 0, w.T, n);
                        dsoftmax(w.T, w.S, D + row, mq, n);
                        zl_tile_gemm(1, 0, n, d, mq, scale, w.T, n, qp, ldq, 1,
                                     dk + ((size_t)b * Tk + j0) * ldk + (size_t)h * d, ldk);
                    }
                }
            }
            free(w.S);
        }
    }
    /* Pass 2: dQ, one task per (b, h, query tile), looping over key tiles. */
    if (dq) {
        const int nqt = (Tq + ZL_ATT_BQ - 1) / ZL_ATT_BQ;
        const long ntask = (long)B * H * nqt;
        #pragma omp parallel
        {
            att_scratch w;
            const int ok = scratch_alloc(&w, d);
            if (!ok) {
                #pragma omp atomic write
                oom = 1;
            }
            #pragma omp for schedule(dynamic, 1)
            for (long t = 0; t < ntask; t++) {
                if (!ok) continue;
                const int qt = (int)(t % nqt), h = (int)((t / nqt) % H), b = (int)(t / ((long)nqt * H));
                const int i0 = qt * ZL_ATT_BQ, mq = Tq - i0 < ZL_ATT_BQ ? Tq - i0 : ZL_ATT_BQ;
                const float *qp = q + ((size_t)b * Tq + i0) * ldq + (size_t)h * d;
                const float *dop = dout + ((size_t)b * Tq + i0) * HD + (size_t)h * d;
                const size_t row = ((size_t)b * H + h) * Tq + i0;
                const int kend = causal ? (i0 + mq < Tk ? i0 + mq : Tk) : Tk;
                for (int j0 = 0; j0 < kend; j0 += ZL_ATT_BK) {
                    const int n = kend - j0 < ZL_ATT_BK ? kend - j0 : ZL_ATT_BK;
                    const float *kp = k + ((size_t)b * Tk + j0) * ldk + (size_t)h * d;
                    const float *vp = v + ((size_t)b * Tk + j0) * ldv + (size_t)h * d;
                    probs(w.S, qp, ldq, kp, ldk, lse + row, mq, n, d, scale, causal, i0, j0);
                    zl_tile_gemm(0, 1, mq, n, d, 1.0f, dop, HD, vp, ldv, 0, w.T, n);
                    dsoftmax(w.T, w.S, D + row, mq, n);
                    zl_tile_gemm(0, 0, mq, d, n, scale, w.T, n, kp, ldk, 1,
                                 dq + ((size_t)b * Tq + i0) * ldq + (size_t)h * d, ldq);
                }
            }
            free(w.S);
        }
    }
poison:
    free(D);
    if (!oom) return;
    /* No status to return: poison the gradients so a finite check catches it. */
    for (size_t bt = 0; bt < (size_t)B * Tq; bt++)
        if (dq) for (int j = 0; j < HD; j++) dq[bt * ldq + j] = NAN;
    for (size_t bt = 0; bt < (size_t)B * Tk; bt++) {
        if (dk) for (int j = 0; j < HD; j++) dk[bt * ldk + j] = NAN;
        if (dv) for (int j = 0; j < HD; j++) dv[bt * ldv + j] = NAN;
    }
}
