/* The one matrix-product entry point of the ops: a row-major wrapper over
 * OpenBLAS cblas_sgemm. It owns the beta == 0 contract (C is never read, so
 * NaN garbage in a fresh buffer cannot leak into the result). */
#include <string.h>

#include <cblas.h>

#include "nn/ops.h"

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
    cblas_sgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
                B, ldb, beta == 0.0f ? 1.0f : beta, C, ldc);
}
