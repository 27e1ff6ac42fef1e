/* The one matrix-product entry point of the ops: a row-major wrapper over
 * OpenBLAS cblas_sgemm.
 * - It owns the beta == 0 contract (C is never read, so NaN garbage in a fresh
 *   buffer cannot leak into the result).
 * - It makes results independent of the thread count: OpenBLAS splits work
 *   differently for 1 and 2 threads (its edge kernels round differently), so
 *   OpenBLAS runs single-threaded (zl_set_threads) and we split C into blocks
 *   of a FIXED size, computed in parallel with OpenMP. The partition depends
 *   only on the shapes, never on the thread count. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "nn/ops.h"
#include "ziplora/core.h"

/* Block edge along the split dimension, and the work below which one call is
 * cheaper than a parallel loop. */
#define ZL_GEMM_BLOCK 256
#define ZL_GEMM_PAR_FLOPS (1 << 22)

void openblas_set_num_threads(int num_threads);

/* OpenBLAS must never split a call itself, whoever links us and whether or
 * not zl_set_threads was called. */
__attribute__((constructor)) static void zl_gemm_init(void) { openblas_set_num_threads(1); }

static void gemm1(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                  float beta, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
                B, ldb, beta, C, ldc);
}

void zl_sgemm(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (beta == 0.0f) {
        /* Some OpenBLAS paths compute beta*C even for beta == 0, and 0 * NaN = NaN. */
        if (ldc == N)
            memset(C, 0, (size_t)M * (size_t)N * sizeof(float));
        else
            for (int i = 0; i < M; i++) memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof(float));
    }
    if (K <= 0) {
        if (beta != 0.0f && beta != 1.0f)
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] *= beta;
        return;
    }
    float b = beta == 0.0f ? 1.0f : beta;
    double flops = 2.0 * M * N * K;
    int split_m = M >= N;
    int dim = split_m ? M : N;
    int nblk = (dim + ZL_GEMM_BLOCK - 1) / ZL_GEMM_BLOCK;
    if (nblk <= 1 || flops < ZL_GEMM_PAR_FLOPS || omp_in_parallel()) {
        /* Same partition as the parallel path, run in order. */
        for (int i = 0; i < nblk; i++) {
            int o = i * ZL_GEMM_BLOCK, n = dim - o < ZL_GEMM_BLOCK ? dim - o : ZL_GEMM_BLOCK;
            if (split_m)
                gemm1(tA, tB, n, N, K, alpha, tA ? A + o : A + (size_t)o * lda, lda, B, ldb, b, C + (size_t)o * ldc, ldc);
            else
                gemm1(tA, tB, M, n, K, alpha, A, lda, tB ? B + (size_t)o * ldb : B + o, ldb, b, C + o, ldc);
        }
        return;
    }
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < nblk; i++) {
        int o = i * ZL_GEMM_BLOCK, n = dim - o < ZL_GEMM_BLOCK ? dim - o : ZL_GEMM_BLOCK;
        if (split_m)
            gemm1(tA, tB, n, N, K, alpha, tA ? A + o : A + (size_t)o * lda, lda, B, ldb, b, C + (size_t)o * ldc, ldc);
        else
            gemm1(tA, tB, M, n, K, alpha, A, lda, tB ? B + (size_t)o * ldb : B + o, ldb, b, C + o, ldc);
    }
}

/* The machine's sgemm rate as OpenBLAS itself achieves it (its own threading,
 * `threads` threads), for benchmarks to report ratios against. Median of reps. */
double zl_sgemm_reference_gflops(int n, int reps, int threads) {
    size_t nn = (size_t)n * (size_t)n;
    float *a = malloc(nn * sizeof(float)), *b = malloc(nn * sizeof(float)), *c = malloc(nn * sizeof(float));
    if (!a || !b || !c) { free(a); free(b); free(c); return 0; }
    for (size_t i = 0; i < nn; i++) { a[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f; b[i] = (float)((i * 104729) % 1000) * 1e-3f - 0.5f; }
    openblas_set_num_threads(threads > 0 ? threads : omp_get_max_threads());
    double t[32];
    if (reps > 32) reps = 32;
    if (reps < 1) reps = 1;
    gemm1(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n); /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t0 = zl_now();
        gemm1(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        t[r] = zl_now() - t0;
    }
    openblas_set_num_threads(1);
    for (int i = 1; i < reps; i++)
        for (int j = i; j > 0 && t[j - 1] > t[j]; j--) { double x = t[j]; t[j] = t[j - 1]; t[j - 1] = x; }
    free(a); free(b); free(c);
    return 2.0 * n * (double)n * n / t[reps / 2] / 1e9;
}
