/* Internal to src/nn: a register-blocked matrix product for the small tiles of
 * attention (a few hundred rows and columns, K = head dim or key-tile size),
 * where a BLAS call's packing and dispatch cost more than the arithmetic. */
#ifndef ZL_NN_TILE_GEMM_H
#define ZL_NN_TILE_GEMM_H

/* C[M,N] = alpha * op(A) op(B) (+ C if acc), row-major with leading dimensions;
 * op(A) [M,K] is A [M,K] or, if tA, A [K,M] transposed; op(B) [K,N] is B [K,N]
 * or, if tB, B [N,K] transposed. Single-threaded (callers parallelise over tiles). */
void zl_tile_gemm(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                  int acc, float *C, int ldc);

#endif
