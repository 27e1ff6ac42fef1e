/* Data-movement ops: nearest x2 upsample, channel concat, [B,C,T]<->[B,T,C]
 * transpose, elementwise add/accumulate/scale and the per-channel bias add
 * of the resnet time embedding. */
#include <string.h>

#include "nn/ops.h"

#define PAR_N 65536

void zl_upsample2x_fwd(float *y, const float *x, int B, int C, int H, int W) {
    const int W2 = 2 * W;
    #pragma omp parallel for schedule(static) if ((size_t)B * C * H * W > PAR_N)
    for (long bc = 0; bc < (long)B * C; bc++) {
        const float *xc = x + (size_t)bc * H * W;
        float *yc = y + (size_t)bc * 4 * H * W;
        for (int i = 0; i < H; i++) {
            float *r = yc + (size_t)2 * i * W2;
            for (int j = 0; j < W; j++) r[2 * j] = r[2 * j + 1] = xc[(size_t)i * W + j];
            memcpy(r + W2, r, sizeof(float) * W2);
        }
    }
}

void zl_upsample2x_bwd(float *dx, const float *dy, int B, int C, int H, int W) {
    const int W2 = 2 * W;
    #pragma omp parallel for schedule(static) if ((size_t)B * C * H * W > PAR_N)
    for (long bc = 0; bc < (long)B * C; bc++) {
        const float *yc = dy + (size_t)bc * 4 * H * W;
        float *xc = dx + (size_t)bc * H * W;
        for (int i = 0; i < H; i++) {
            const float *r0 = yc + (size_t)2 * i * W2, *r1 = r0 + W2;
            for (int j = 0; j < W; j++) xc[(size_t)i * W + j] += (r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1]);
        }
    }
}

void zl_concat_fwd(float *y, const float *a, const float *b, int B, int Ca, int Cb, int HW) {
    const size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
    for (int n = 0; n < B; n++) {
        memcpy(y + n * (na + nb), a + n * na, sizeof(float) * na);
        memcpy(y + n * (na + nb) + na, b + n * nb, sizeof(float) * nb);
    }
}

void zl_concat_bwd(float *da, float *db, const float *dy, int B, int Ca, int Cb, int HW) {
    const size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
    for (int n = 0; n < B; n++) {
        if (da) zl_acc(da + n * na, dy + n * (na + nb), na);
        if (db) zl_acc(db + n * nb, dy + n * (na + nb) + na, nb);
    }
}

void zl_transpose_ct(float *y, const float *x, int B, int C, int T) {
    /* Blocked so both the reads and the writes stay in cache lines. */
    enum { BLK = 32 };
    const int nc = (C + BLK - 1) / BLK, nt = (T + BLK - 1) / BLK;
    #pragma omp parallel for schedule(static) if ((size_t)B * C * T > PAR_N)
    for (long blk = 0; blk < (long)B * nc * nt; blk++) {
        const int b = (int)(blk / ((long)nc * nt)), c0 = (int)(blk / nt % nc) * BLK, t0 = (int)(blk % nt) * BLK;
        const int c1 = c0 + BLK < C ? c0 + BLK : C, t1 = t0 + BLK < T ? t0 + BLK : T;
        const float *xb = x + (size_t)b * C * T;
        float *yb = y + (size_t)b * C * T;
        for (int c = c0; c < c1; c++)
            for (int t = t0; t < t1; t++) yb[(size_t)t * C + c] = xb[(size_t)c * T + t];
    }
}

void zl_add(float *y, const float *a, const float *b, size_t n) {
    #pragma omp parallel for schedule(static) if (n > PAR_N)
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

void zl_acc(float *y, const float *a, size_t n) {
    #pragma omp parallel for schedule(static) if (n > PAR_N)
    for (size_t i = 0; i < n; i++) y[i] += a[i];
}

void zl_scale(float *y, float s, size_t n) {
    #pragma omp parallel for schedule(static) if (n > PAR_N)
    for (size_t i = 0; i < n; i++) y[i] *= s;
}

void zl_add_channel_bias(float *x, const float *v, int B, int C, int HW) {
    #pragma omp parallel for schedule(static) if ((size_t)B * C * HW > PAR_N)
    for (long bc = 0; bc < (long)B * C; bc++) {
        float *r = x + (size_t)bc * HW;
        const float a = v[bc];
        for (int i = 0; i < HW; i++) r[i] += a;
    }
}

void zl_add_channel_bias_bwd(float *dv, const float *dx, int B, int C, int HW) {
    #pragma omp parallel for schedule(static) if ((size_t)B * C * HW > PAR_N)
    for (long bc = 0; bc < (long)B * C; bc++) {
        const float *r = dx + (size_t)bc * HW;
        double s = 0;
        for (int i = 0; i < HW; i++) s += r[i];
        dv[bc] += (float)s;
    }
}
