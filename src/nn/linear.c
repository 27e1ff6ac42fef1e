/* Linear layers y = x W^T + b and their gradients, all through zl_sgemm. */
#include <string.h>

#include "nn/ops.h"

void zl_linear_fwd(float *y, const float *x, const float *W, const float *b, int N, int in, int out) {
    if (N <= 0 || out <= 0) return;
    /* bfloat16 products take the stored-weight route (F32 is a stored dtype). */
    if (zl_bf16_active() && zl_linear_fwd_stored(y, x, ZL_DT_F32, W, b, N, in, out) == ZL_OK) return;
    if (b) {
        /* Seed y with the bias so sgemm adds onto it in one pass. */
        #pragma omp parallel for schedule(static) if ((size_t)N * out > 65536)
        for (int n = 0; n < N; n++) memcpy(y + (size_t)n * out, b, (size_t)out * sizeof(float));
        zl_sgemm(0, 1, N, out, in, 1.0f, x, in, W, in, 1.0f, y, out);
    } else {
        zl_sgemm(0, 1, N, out, in, 1.0f, x, in, W, in, 0.0f, y, out);
    }
}

int zl_linear_fwd_stored(float *y, const float *x, zl_dtype wdt, const void *W, const float *b, int N, int in, int out) {
    if (N <= 0 || out <= 0) return 0;
    if (b) {
        #pragma omp parallel for schedule(static) if ((size_t)N * out > 65536)
        for (int n = 0; n < N; n++) memcpy(y + (size_t)n * out, b, (size_t)out * sizeof(float));
    }
    return zl_sgemm_nt_stored(N, out, in, x, in, wdt, W, b ? 1.0f : 0.0f, y, out);
}

void zl_linear_bwd(float *dx, float *dW, float *db, const float *dy, const float *x, const float *W, int N, int in,
                   int out) {
    if (N <= 0 || out <= 0) return;
    if (dx) zl_sgemm(0, 0, N, in, out, 1.0f, dy, out, W, in, 1.0f, dx, in);   // [N, in]
    if (dW) zl_sgemm(1, 0, out, in, N, 1.0f, dy, out, x, in, 1.0f, dW, in);   // [out, in]
    if (db) {
        /* Each output column is summed in row order by one thread: thread-count independent. */
        #pragma omp parallel for schedule(static) if ((size_t)N * out > 65536)
        for (int o0 = 0; o0 < out; o0 += 64) {
            int o1 = o0 + 64 < out ? o0 + 64 : out;
            double acc[64] = {0};
            for (int n = 0; n < N; n++) {
                const float *r = dy + (size_t)n * out;
                for (int o = o0; o < o1; o++) acc[o - o0] += r[o];
            }
            for (int o = o0; o < o1; o++) db[o] += (float)acc[o - o0];
        }
    }
}

int zl_linear_fwd_bf16p(float *y, const float *x, const uint16_t *Wp, const float *b, int N, int in, int out) {
    if (N <= 0 || out <= 0) return 0;
    if (b) {
        #pragma omp parallel for schedule(static) if ((size_t)N * out > 65536)
        for (int n = 0; n < N; n++) memcpy(y + (size_t)n * out, b, (size_t)out * sizeof(float));
    }
    return zl_sgemm_nt_bf16p(N, out, in, x, in, Wp, b ? 1.0f : 0.0f, y, out);
}
