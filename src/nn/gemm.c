/* The one matrix-product entry point of the ops: a row-major wrapper over
 * OpenBLAS cblas_sgemm.
 * - It owns the beta == 0 contract (C is never read, so NaN garbage in a fresh
 *   buffer cannot leak into the result).
 * - It makes results independent of the thread count: OpenBLAS splits work
 *   differently for 1 and 2 threads (its edge kernels round differently), so
 *   OpenBLAS runs single-threaded (zl_set_threads) and we split C into a grid
 *   of blocks, computed in parallel with OpenMP, with edges that keep every
 *   element's arithmetic the same for any grid (see grid()). */
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "nn/ops.h"
#include "ziplora/core.h"

/* Below this much work one call is cheaper than a parallel loop (a shape-only
 * decision, so it cannot change results either). */
#define ZL_GEMM_PAR_FLOPS (1 << 22)
/* Smallest block edge considered, and the most blocks along one dimension. */
#define ZL_GEMM_MIN_EDGE 64
#define ZL_GEMM_MAX_SPLIT 32

void openblas_set_num_threads(int num_threads);

/* OpenBLAS must never split a call itself, whoever links us and whether or
 * not zl_set_threads was called. */
/* (OpenBLAS's OpenMP build also calls omp_set_num_threads in it: restore ours.) */
__attribute__((constructor)) static void zl_gemm_init(void) {
    int n = omp_get_max_threads();
    openblas_set_num_threads(1);
    omp_set_num_threads(n);
}

/* One single-threaded OpenBLAS call. The OpenMP build of OpenBLAS sizes its
 * own threading from omp_get_max_threads() whenever it is called outside an
 * active parallel region (whatever openblas_set_num_threads said), so there we
 * lower OpenMP's thread count to 1 around the call (an ICV write, cheap). */
static void gemm1(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                  float beta, float *C, int ldc) {
    int restore = 0;
    if (!omp_in_parallel()) {
        restore = omp_get_max_threads();
        if (restore != 1) omp_set_num_threads(1);
    }
    cblas_sgemm(CblasRowMajor, tA ? CblasTrans : CblasNoTrans, tB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
                B, ldb, beta, C, ldc);
    if (restore > 1) omp_set_num_threads(restore);
}

static int ceil_div(int a, int b) { return (a + b - 1) / b; }

/* Block edge for n blocks along a dimension of length dim: a multiple of 16
 * (OpenBLAS's register block) unless there is a single block. */
static int edge(int dim, int n) {
    if (n <= 1) return dim;
    int e = (ceil_div(dim, n) + 15) & ~15;
    return e < dim ? e : dim;
}

/* Time of n equal blocks on p workers, relative to a perfect split. */
static double imbalance(int n, int p) { return (double)ceil_div(n, p) * p / n; }

/* The block grid of C [M, N] for P workers: bm x bn blocks. Each block is one
 * single-threaded OpenBLAS call that packs its slices of op(A) and op(B) again,
 * a cost relative to the block's arithmetic of about 8 (1/bm + 1/bn) (measured
 * on 1024x2048x1280 with 128..1024 edges). Against that stands load balance: 5
 * blocks on 2 cores run as 3 (SDXL's 1280-wide layers under a fixed 256 split
 * lost 17% that way). The cost below weighs both for the P threads that will
 * run it (2 blocks of 640 columns instead of 4 of 320 for SDXL's 256-token
 * linears on 2 threads: 8 % faster forwards, bench/RESULTS.md session 9).
 * The grid may depend on P, but the results cannot: a block edge is the whole
 * dimension or a multiple of 16 (OpenBLAS's register blocks), and each element
 * of C is one kernel's sum over K in OpenBLAS's K blocks, whatever the block
 * around it (test_ops checks 1-8 threads bit for bit). */
static void grid(int M, int N, int P, int *bm, int *bn) {
    double best = 1e30;
    *bm = M, *bn = N;
    const int mm = M / ZL_GEMM_MIN_EDGE > ZL_GEMM_MAX_SPLIT ? ZL_GEMM_MAX_SPLIT : M / ZL_GEMM_MIN_EDGE;
    const int mn = N / ZL_GEMM_MIN_EDGE > ZL_GEMM_MAX_SPLIT ? ZL_GEMM_MAX_SPLIT : N / ZL_GEMM_MIN_EDGE;
    for (int i = 1; i <= (mm > 1 ? mm : 1); i++)
        for (int j = 1; j <= (mn > 1 ? mn : 1); j++) {
            const int em = edge(M, i), en = edge(N, j), n = ceil_div(M, em) * ceil_div(N, en);
            if (n == 1) continue;
            const double c = imbalance(n, P) * (1.0 + 8.0 / em + 8.0 / en);
            if (c < best - 1e-9) best = c, *bm = em, *bn = en;
        }
}

/* The workers a product's blocks are spread over: OpenMP's thread count, or one
 * inside someone else's parallel region (the blocks then run in order). */
static int workers(void) { return omp_in_parallel() ? 1 : omp_get_max_threads(); }

/* What every entry does first: C = 0 when beta == 0 (some OpenBLAS paths
 * compute beta*C even then, and 0 * NaN = NaN), and with K <= 0 the whole
 * product (C = beta C). Returns 1 when nothing is left to do. */
static int beta_first(int M, int N, int K, float beta, float *C, int ldc) {
    if (beta == 0.0f) {
        if (ldc == N)
            memset(C, 0, (size_t)M * (size_t)N * sizeof(float));
        else
            for (int i = 0; i < M; i++) memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof(float));
    }
    if (K > 0) return 0;
    if (beta != 0.0f && beta != 1.0f)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] *= beta;
    return 1;
}

void zl_sgemm(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (beta_first(M, N, K, beta, C, ldc)) return;
    const float b = beta == 0.0f ? 1.0f : beta;
    if (2.0 * M * N * K < ZL_GEMM_PAR_FLOPS) {
        gemm1(tA, tB, M, N, K, alpha, A, lda, B, ldb, b, C, ldc);
        return;
    }
    int bm, bn;
    grid(M, N, workers(), &bm, &bn);
    const int nbm = ceil_div(M, bm), nbn = ceil_div(N, bn), nblk = nbm * nbn;
    /* Inside someone else's parallel region: the same blocks, in order. */
    #pragma omp parallel for schedule(dynamic, 1) if (!omp_in_parallel())
    for (int t = 0; t < nblk; t++) {
        const int i = (t / nbn) * bm, j = (t % nbn) * bn;
        const int m = M - i < bm ? M - i : bm, n = N - j < bn ? N - j : bn;
        gemm1(tA, tB, m, n, K, alpha, tA ? A + i : A + (size_t)i * lda, lda, tB ? B + (size_t)j * ldb : B + j, ldb, b,
              C + (size_t)i * ldc + j, ldc);
    }
}

/* Per-thread buffer for the widened rows of a stored-dtype operand; OpenMP's
 * worker threads persist, and so do these (reused call after call, since
 * fresh pages cost a fault and a zeroing each). A thread that ends (libgomp
 * ends workers when the thread count goes down) frees its own through a
 * pthread key's destructor. */
static _Thread_local float *tl_wide;
static _Thread_local size_t tl_wide_n;
static pthread_key_t wide_key;
static pthread_once_t wide_once = PTHREAD_ONCE_INIT;
static int wide_key_ok;

static void wide_key_init(void) { wide_key_ok = pthread_key_create(&wide_key, free) == 0; }

void zl_sgemm_release_buffers(void) {
    #pragma omp parallel
    {
        free(tl_wide);
        tl_wide = NULL;
        tl_wide_n = 0;
        if (wide_key_ok) pthread_setspecific(wide_key, NULL);
        zl_bf16_release_buffers();
    }
    zl_bf16_release_shared();
}

static float *wide_buf(size_t n) {
    if (tl_wide_n < n) {
        free(tl_wide);
        tl_wide = malloc(n * sizeof(float));
        tl_wide_n = tl_wide ? n : 0;
        pthread_once(&wide_once, wide_key_init);
        if (wide_key_ok) pthread_setspecific(wide_key, tl_wide);
    }
    return tl_wide;
}

/* C = op(A) op(B) with one operand in a stored dtype W: mode 1, W = A [M,K];
 * mode 0, W = B^T [N,K]; mode 2, W = B [K,N]. The grid and calls of zl_sgemm,
 * each block widening its own slice of W first (rows of W in modes 0 and 1,
 * a column range of every row in mode 2). */
static int gemm_stored(int mode, int M, int N, int K, const float *F, int ldf, zl_dtype wdt, const void *W,
                       const uint16_t *Wp, const uint16_t *Fp, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return 0;
    if (beta_first(M, N, K, beta, C, ldc)) return 0;
    const float b = beta == 0.0f ? 1.0f : beta;
    const size_t esz = (size_t)zl_dtype_bits(wdt) / 8;
    int bm = M, bn = N;
    if (2.0 * M * N * K >= ZL_GEMM_PAR_FLOPS) grid(M, N, workers(), &bm, &bn);
    const int nbm = ceil_div(M, bm), nbn = ceil_div(N, bn), nblk = nbm * nbn;
    const int bf16 = Wp || Fp || zl_bf16_active();
    /* bf16: an operand that several blocks would each pack is packed once, for
     * all: the weight (not mode 2's), and mode 0's input rows */
    const int share_w = bf16 && !Wp && mode != 2 && (mode == 0 ? nbm : nbn) > 1;
    const int share_f = bf16 && mode == 0 && nbn > 1;
    if (share_w) Wp = zl_bf16_shared_pack(0, wdt, W, K, mode == 0 ? N : M, K, mode != 0);
    if (share_f) Fp = zl_bf16_shared_pack(1, ZL_DT_F32, F, ldf, M, K, 1);
    int fail = 0;
    #pragma omp parallel for schedule(dynamic, 1) if (!omp_in_parallel() && nblk > 1) reduction(| : fail)
    for (int t = 0; t < nblk; t++) {
        const int i = (t / nbn) * bm, j = (t % nbn) * bn;
        const int m = M - i < bm ? M - i : bm, n = N - j < bn ? N - j : bn;
        if (bf16) {
            if (b != 1.0f)
                for (int r = 0; r < m; r++)
                    for (int c = 0; c < n; c++) C[(size_t)(i + r) * ldc + j + c] *= b;
            if (zl_bf16_block(mode, m, n, K, F, ldf, wdt, W, mode == 2 ? N : K, Wp, Fp, i, j, C, ldc)) fail = 1;
            continue;
        }
        float *w = wide_buf((size_t)(mode == 1 ? m : n) * K);
        if (!w) {
            fail = 1;
            continue;
        }
        if (mode == 2) {
            for (int k = 0; k < K; k++)
                zl_convert_to_f32(wdt, (const char *)W + ((size_t)k * N + j) * esz, w + (size_t)k * n, (size_t)n);
            gemm1(0, 0, m, n, K, 1.0f, F + (size_t)i * ldf, ldf, w, n, b, C + (size_t)i * ldc + j, ldc);
        } else if (mode == 1) {
            zl_convert_to_f32(wdt, (const char *)W + (size_t)i * K * esz, w, (size_t)m * K);
            gemm1(0, 0, m, n, K, 1.0f, w, K, F + j, ldf, b, C + (size_t)i * ldc + j, ldc);
        } else {
            zl_convert_to_f32(wdt, (const char *)W + (size_t)j * K * esz, w, (size_t)n * K);
            gemm1(0, 1, m, n, K, 1.0f, F + (size_t)i * ldf, ldf, w, K, b, C + (size_t)i * ldc + j, ldc);
        }
    }
    if (share_w && Wp) zl_bf16_shared_done(0);
    if (share_f && Fp) zl_bf16_shared_done(1);
    return fail ? zl_set_error(ZL_ENOMEM, "out of memory widening a slice of a %s weight",
                               mode == 1 ? "left" : "right") : 0;
}

int zl_sgemm_nt_stored(int M, int N, int K, const float *A, int lda, zl_dtype wdt, const void *W, float beta, float *C,
                       int ldc) {
    return gemm_stored(0, M, N, K, A, lda, wdt, W, NULL, NULL, beta, C, ldc);
}

int zl_sgemm_stored_nn(int M, int N, int K, zl_dtype wdt, const void *W, const float *B, int ldb, float beta, float *C,
                       int ldc) {
    return gemm_stored(1, M, N, K, B, ldb, wdt, W, NULL, NULL, beta, C, ldc);
}

int zl_sgemm_nn_stored(int M, int N, int K, const float *A, int lda, zl_dtype wdt, const void *W, float beta, float *C,
                       int ldc) {
    return gemm_stored(2, M, N, K, A, lda, wdt, W, NULL, NULL, beta, C, ldc);
}

int zl_sgemm_nt_bf16p(int M, int N, int K, const float *A, int lda, const uint16_t *Wp, float beta, float *C, int ldc) {
    return gemm_stored(0, M, N, K, A, lda, ZL_DT_BF16, NULL, Wp, NULL, beta, C, ldc);
}

int zl_sgemm_bf16p_nn(int M, int N, int K, const uint16_t *Wp, const float *B, int ldb, float beta, float *C, int ldc) {
    return gemm_stored(1, M, N, K, B, ldb, ZL_DT_BF16, NULL, Wp, NULL, beta, C, ldc);
}

int zl_sgemm_bf16_cols(int M, int N, int K, zl_dtype wdt, const void *W, const uint16_t *Wp, const uint16_t *Bp,
                       float beta, float *C, int ldc) {
    return gemm_stored(3, M, N, K, NULL, 0, wdt, W, Wp, Bp, beta, C, ldc);
}

void zl_sgemm_serial(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                     int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (beta_first(M, N, K, beta, C, ldc)) return;
    gemm1(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta == 0.0f ? 1.0f : beta, C, ldc);
}

/* The machine's sgemm rate as OpenBLAS itself achieves it (its own threading,
 * `threads` threads), for benchmarks to report ratios against. Median of reps. */
double zl_sgemm_reference_gflops(int n, int reps, int threads) {
    size_t nn = (size_t)n * (size_t)n;
    float *a = malloc(nn * sizeof(float)), *b = malloc(nn * sizeof(float)), *c = malloc(nn * sizeof(float));
    if (!a || !b || !c) { free(a); free(b); free(c); return 0; }
    for (size_t i = 0; i < nn; i++) { a[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f; b[i] = (float)((i * 104729) % 1000) * 1e-3f - 0.5f; }
    int omp_n = omp_get_max_threads();
    openblas_set_num_threads(threads > 0 ? threads : omp_n);
    double t[32];
    if (reps > 32) reps = 32;
    if (reps < 1) reps = 1;
    int nt = threads > 0 ? threads : omp_n;
    omp_set_num_threads(nt); /* OpenBLAS's OpenMP build threads by this */
#define REF_GEMM() cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n)
    REF_GEMM(); /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t0 = zl_now();
        REF_GEMM();
        t[r] = zl_now() - t0;
    }
#undef REF_GEMM
    openblas_set_num_threads(1);
    omp_set_num_threads(omp_n);
    for (int i = 1; i < reps; i++)
        for (int j = i; j > 0 && t[j - 1] > t[j]; j--) { double x = t[j]; t[j] = t[j - 1]; t[j - 1] = x; }
    free(a); free(b); free(c);
    return 2.0 * n * (double)n * n / t[reps / 2] / 1e9;
}
