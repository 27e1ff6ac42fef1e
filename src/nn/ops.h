/* Neural-network ops: forward and backward kernels as plain C functions with
 * explicit shapes (llm.c style). Threaded with OpenMP; matrix products go
 * through OpenBLAS sgemm.
 *
 * Conventions
 * - Row-major. Image activations are [B, C, H, W]; token activations [B, T, C]
 *   (heads interleaved in C as h*d + j, as a Linear projection produces them).
 * - Forward functions overwrite their output (never read it first).
 * - Backward functions ACCUMULATE (+=) into every gradient output; a NULL
 *   gradient pointer means "not needed" and is skipped. Callers zero buffers.
 * - Results do not depend on the thread count beyond float reassociation
 *   inside sgemm (reductions are split the same way for any thread count).
 */
#ifndef ZL_NN_OPS_H
#define ZL_NN_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "ziplora/core.h"

/* ---- GEMM ---------------------------------------------------------------
 * C[M,N] = alpha * op(A) * op(B) + beta * C, row-major; op = transpose if tX.
 * With beta == 0, C is never read (NaNs in C do not propagate). */
void zl_sgemm(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc);

/* The same product as one single-threaded call, whatever the thread count:
 * for callers that parallelise over independent products themselves. */
void zl_sgemm_serial(int tA, int tB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                     int ldb, float beta, float *C, int ldc);

/* The stored-dtype products below keep a per-thread buffer between calls
 * (tens of MB at SDXL shapes); this frees the buffers of the current team. */
void zl_sgemm_release_buffers(void);

/* C[M,N] = A[M,K] * W^T (+ beta C) with W [N,K] in its stored dtype (F16, BF16,
 * F32; any alignment): each block of zl_sgemm's grid widens its own rows of W
 * into a per-thread buffer just before its product, so the float32 copy stays
 * in cache instead of going through memory. The same blocks and calls as
 * zl_sgemm(0, 1, ...) on the widened W: identical results. Returns ZL_ENOMEM
 * (C then incomplete) if a buffer cannot be had. */
int zl_sgemm_nt_stored(int M, int N, int K, const float *A, int lda, zl_dtype wdt, const void *W, float beta, float *C,
                       int ldc);
/* C[M,N] = W[M,K] * B[K,N] (+ beta C), W stored, as zl_sgemm(0, 0, ...) on the
 * widened W: identical results. */
int zl_sgemm_stored_nn(int M, int N, int K, zl_dtype wdt, const void *W, const float *B, int ldb, float beta, float *C,
                       int ldc);
/* C[M,N] = A[M,K] * W[K,N] (+ beta C), W stored (a linear's input gradient
 * dy W): as zl_sgemm(0, 0, ...) on the widened W, identical results. */
int zl_sgemm_nn_stored(int M, int N, int K, const float *A, int lda, zl_dtype wdt, const void *W, float beta, float *C,
                       int ldc);

/* The bfloat16 products (src/nn/gemm_bf16.c). Active when the precision is
 * ZL_MATMUL_BF16 or ZL_MATMUL_BF16X3 and AMX-BF16 is there (or emulated). The stored-weight
 * products above then run through zl_bf16_block, one block of their grid
 * each: mode 0 (nt_stored), C[i.., j..] += F W^T (W [N, K] rows, ldw K);
 * mode 1 (stored_nn), C[i.., j..] += W F (W [M, K] rows, F [K, N]); mode 2
 * (nn_stored, a linear's input gradient), C[i.., j..] += F W (W [K, N], ldw N). */
int zl_bf16_active(void);
/* bfloat16 parts per value in packed operands: 2 under ZL_MATMUL_BF16X3 (each
 * K block's tile of high parts, then its tile of low parts), else 1. */
int zl_bf16_parts(void);
/* Wp: the whole weight packed by zl_bf16_pack_weight (conv = mode), or NULL
 * to pack W's slice here. Fp: mode 3's columns (zl_bf16_pack_cols); in mode 0
 * all of F packed as A tiles (zl_bf16_shared_pack(1, ..)), or NULL. i and j
 * (block offsets) are multiples of 16. */
int zl_bf16_block(int mode, int m, int n, int K, const float *F, int ldf, zl_dtype wdt, const void *W, int ldw,
                  const uint16_t *Wp, const uint16_t *Fp, int i, int j, float *C, int ldc);
/* Mode 3, a convolution's product with its columns packed once for all blocks:
 * C[M,N] = W[M,K] B (+ beta C), W stored (or packed, Wp), B packed by
 * zl_bf16_pack_cols (aligned_alloc'd; free(); NULL when out of memory). */
uint16_t *zl_bf16_pack_cols(const float *B, int ldb, int K, int N);

int zl_sgemm_bf16_cols(int M, int N, int K, zl_dtype wdt, const void *W, const uint16_t *Wp, const uint16_t *Bp,
                       float beta, float *C, int ldc);
/* A weight [rows, K] packed once for the tile unit (aligned_alloc'd; free()):
 * conv = 0 for mode 0 (a linear's W, the B operand), 1 for mode 1 (a conv's
 * W [Cout, Cin kh kw], the A operand). Rows are padded to 32, K to 32, with
 * zeros. The products through it equal those that pack W per call, bit for
 * bit. It holds zl_bf16_parts() parts per value, as when packed: use it only
 * under the precision it was packed in. NULL when out of memory. */
uint16_t *zl_bf16_pack_weight(zl_dtype dt, const void *W, int rows, int K, int conv);
/* The same (W [rows, K], row stride ld) into a buffer kept between products,
 * for an operand that several blocks of a product would each pack: which 0,
 * the weight (passed on as Wp); which 1, mode 0's input rows F as A tiles
 * (conv = 1; passed on as Fp). NULL (pack per block) inside a parallel
 * region, while another product holds that buffer, or out of memory; else
 * call zl_bf16_shared_done(which) after the product. */
const uint16_t *zl_bf16_shared_pack(int which, zl_dtype dt, const void *W, int ld, int rows, int K, int conv);
void zl_bf16_shared_done(int which);
/* Free those buffers (unless a product holds one). */
void zl_bf16_release_shared(void);
/* Products with such a packed weight (bf16 only: call while zl_bf16_active()):
 * C[M,N] = A[M,K] Wp^T (+ beta C), and C[M,N] = Wp B[K,N] (+ beta C). */
int zl_sgemm_nt_bf16p(int M, int N, int K, const float *A, int lda, const uint16_t *Wp, float beta, float *C, int ldc);
int zl_sgemm_bf16p_nn(int M, int N, int K, const uint16_t *Wp, const float *B, int ldb, float beta, float *C, int ldc);
void zl_bf16_release_buffers(void);
/* Tests: run the packing and a scalar model of the tile product instead of
 * the tile unit (so the logic is checked on CPUs without AMX). */
void zl_bf16_emulate(int on);

/* OpenBLAS's own sgemm rate at n x n x n with `threads` threads (its native
 * threading), median of `reps` runs: the baseline benchmarks report against. */
double zl_sgemm_reference_gflops(int n, int reps, int threads);

/* ---- Linear ---------------------------------------------------------------
 * x [N, in], W [out, in], b [out] or NULL -> y [N, out]. */
void zl_linear_fwd(float *y, const float *x, const float *W, const float *b, int N, int in, int out);
/* The same with W [out, in] in its stored dtype (zl_sgemm_nt_stored). */
int zl_linear_fwd_stored(float *y, const float *x, zl_dtype wdt, const void *W, const float *b, int N, int in, int out);
/* The same with W packed by zl_bf16_pack_weight(.., out, in, 0) (bf16 only). */
int zl_linear_fwd_bf16p(float *y, const float *x, const uint16_t *Wp, const float *b, int N, int in, int out);
/* dx [N,in] += dy W ; dW [out,in] += dy^T x ; db [out] += sum_n dy */
void zl_linear_bwd(float *dx, float *dW, float *db, const float *dy, const float *x, const float *W, int N, int in,
                   int out);

/* ---- Conv2d ---------------------------------------------------------------
 * x [B, Cin, H, W], Wt [Cout, Cin, kh, kw], b [Cout] or NULL -> y [B, Cout, Ho, Wo]
 * Ho = (H + pad_t + pad_b - kh) / stride + 1, likewise Wo. Zero padding.
 * (The VAE downsampler pads right/bottom only: pad_t = pad_l = 0, pad_b = pad_r = 1.) */
typedef struct {
    int B, Cin, H, W, Cout, kh, kw, stride;
    int pad_t, pad_l, pad_b, pad_r;
} zl_conv_shape;
/* The bfloat16 column packing (zl_bf16_pack_cols) of the im2col matrix of one
 * image x [Cin, H, W] for output rows [r0, r1) (K = Cin kh kw, N = (r1 - r0)
 * Wo), straight from x: equal to im2col then zl_bf16_pack_cols, without the
 * float32 columns. NULL when out of memory. */
uint16_t *zl_bf16_pack_im2col(const float *x, const zl_conv_shape *s, int Wo, int r0, int r1);
int zl_conv_out_h(const zl_conv_shape *s);
int zl_conv_out_w(const zl_conv_shape *s);
void zl_conv2d_fwd(float *y, const float *x, const float *Wt, const float *b, const zl_conv_shape *s);
void zl_conv2d_bwd(float *dx, float *dW, float *db, const float *dy, const float *x, const float *Wt,
                   const zl_conv_shape *s);
/* 3x3 stride-1 pad-1 convolutions with enough tiles and channels go through
 * Winograd F(4x4, 3x3) (src/nn/winograd.c); zl_conv2d_fwd does that itself.
 * The _winograd entry takes the weights in their stored dtype (F32, F16,
 * BF16; any alignment), so F16-resident weights need no widening pass. */
int zl_conv2d_winograd_ok(const zl_conv_shape *s);
void zl_conv2d_fwd_winograd(float *y, const float *x, zl_dtype wdt, const void *Wt, const float *b,
                            const zl_conv_shape *s);
/* dx [B, Cin, H, W] += the input gradient of that convolution for dy [B, Cout,
 * H, W] (a 3x3 convolution with the kernel rotated and its channels swapped),
 * by Winograd; for shapes zl_conv2d_winograd_ok accepts. zl_conv2d_bwd uses it. */
void zl_conv2d_dx_winograd(float *dx, const float *dy, zl_dtype wdt, const void *Wt, const zl_conv_shape *s);
/* Winograd keeps one workspace (at most about 256 MB) between calls,
 * since fresh pages cost as much as the transforms; this frees it. */
void zl_conv2d_winograd_release(void);
/* zl_conv2d_fwd with the weights in their stored dtype: Winograd where it
 * applies, else the same products as zl_conv2d_fwd on the widened weights
 * (identical results), each block widening its own rows. ZL_ENOMEM if a
 * buffer cannot be had (y then incomplete). */
int zl_conv2d_fwd_stored(float *y, const float *x, zl_dtype wdt, const void *Wt, const float *b, const zl_conv_shape *s);
/* The same with W packed by zl_bf16_pack_weight(.., Cout, Cin kh kw, 1) (bf16 only; direct, never Winograd). */
int zl_conv2d_fwd_bf16p(float *y, const float *x, const uint16_t *Wp, const float *b, const zl_conv_shape *s);

/* ---- Normalisation ----------------------------------------------------------
 * GroupNorm over x [B, C, HW] with G groups (C % G == 0), affine gamma/beta [C].
 * Saves mean/rstd [B, G] for backward (may be NULL in inference). y may equal x. */
void zl_groupnorm_fwd(float *y, float *mean, float *rstd, const float *x, const float *gamma, const float *beta, int B,
                      int C, int HW, int G, float eps);
void zl_groupnorm_bwd(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x, const float *mean,
                      const float *rstd, const float *gamma, int B, int C, int HW, int G);
/* silu(groupnorm(x)) in one pass over the output: the same values as
 * zl_groupnorm_fwd then zl_silu_fwd (mean/rstd as there). y may equal x. */
void zl_groupnorm_silu_fwd(float *y, float *mean, float *rstd, const float *x, const float *gamma, const float *beta,
                           int B, int C, int HW, int G, float eps);
/* LayerNorm over the last dim: x [N, C] -> y; mean/rstd [N] (may be NULL). y may equal x. */
void zl_layernorm_fwd(float *y, float *mean, float *rstd, const float *x, const float *g, const float *b, int N, int C,
                      float eps);
void zl_layernorm_bwd(float *dx, float *dg, float *db, const float *dy, const float *x, const float *mean,
                      const float *rstd, const float *g, int N, int C);

/* ---- Activations (y may equal x in forward) ------------------------------- */
void zl_silu_fwd(float *y, const float *x, size_t n);
void zl_silu_bwd(float *dx, const float *dy, const float *x, size_t n);
void zl_gelu_fwd(float *y, const float *x, size_t n); /* exact: 0.5 x (1 + erf(x / sqrt 2)) */
void zl_gelu_bwd(float *dx, const float *dy, const float *x, size_t n);
void zl_quickgelu_fwd(float *y, const float *x, size_t n); /* x * sigmoid(1.702 x) */
void zl_quickgelu_bwd(float *dx, const float *dy, const float *x, size_t n);
/* GEGLU: x [N, 2D] -> y [N, D] = x[:, :D] * gelu(x[:, D:]) (first half value, second gate). */
void zl_geglu_fwd(float *y, const float *x, int N, int D);
void zl_geglu_bwd(float *dx, const float *dy, const float *x, int N, int D);

/* ---- Attention --------------------------------------------------------------
 * Multi-head softmax(q k^T / sqrt(d)) v, computed in tiles with an online
 * softmax so that no Tq x Tk matrix is ever materialised.
 * q [B, Tq, H*d], k and v [B, Tk, H*d] (row strides given: ldq/ldk/ldv >= H*d,
 * so q/k/v may be slices of one fused [B, T, 3*H*d] buffer) -> o [B, Tq, H*d].
 * lse [B, H, Tq] receives the log-sum-exp of each row for backward (may be NULL).
 * causal: key j is masked for query i when j > i (CLIP). */
void zl_attention_fwd(float *o, float *lse, const float *q, int ldq, const float *k, int ldk, const float *v, int ldv,
                      int B, int Tq, int Tk, int H, int d, int causal);
/* Backward from the saved o and lse. dq/dk/dv use the same strides as q/k/v. */
void zl_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q, int ldq, const float *k,
                      int ldk, const float *v, int ldv, const float *o, const float *lse, int B, int Tq, int Tk, int H,
                      int d, int causal);

/* ---- Shape ops ------------------------------------------------------------ */
/* Nearest x2: x [B, C, H, W] -> y [B, C, 2H, 2W] */
void zl_upsample2x_fwd(float *y, const float *x, int B, int C, int H, int W);
void zl_upsample2x_bwd(float *dx, const float *dy, int B, int C, int H, int W);
/* Nearest resize to any size (torch F.interpolate(size=(Ho, Wo), mode="nearest"):
 * source index floor(i * H / Ho)). x [B, C, H, W] -> y [B, C, Ho, Wo] */
void zl_upsample_nearest_fwd(float *y, const float *x, int B, int C, int H, int W, int Ho, int Wo);
void zl_upsample_nearest_bwd(float *dx, const float *dy, int B, int C, int H, int W, int Ho, int Wo);
/* Channel concat: a [B, Ca, HW], b [B, Cb, HW] -> y [B, Ca+Cb, HW] */
void zl_concat_fwd(float *y, const float *a, const float *b, int B, int Ca, int Cb, int HW);
void zl_concat_bwd(float *da, float *db, const float *dy, int B, int Ca, int Cb, int HW);
/* [B, C, T] <-> [B, T, C] */
void zl_transpose_ct(float *y, const float *x, int B, int C, int T);
/* y = a + b (y may alias a or b); y += a */
void zl_add(float *y, const float *a, const float *b, size_t n);
void zl_acc(float *y, const float *a, size_t n);
void zl_scale(float *y, float s, size_t n);
/* x [B, C, HW] += v [B, C] broadcast over HW (the resnet time-embedding add) */
void zl_add_channel_bias(float *x, const float *v, int B, int C, int HW);
/* dv [B, C] += sum over HW of dx */
void zl_add_channel_bias_bwd(float *dv, const float *dx, int B, int C, int HW);

/* ---- Embeddings ------------------------------------------------------------
 * Sinusoidal timestep embedding (diffusers get_timestep_embedding):
 * half = dim/2; f_i = exp(-ln(10000) * i / (half - freq_shift)); args = t * f;
 * emb = [sin, cos], or [cos, sin] when flip_sin_to_cos. t [N] -> emb [N, dim]. */
void zl_timestep_embedding(float *emb, const float *t, int N, int dim, int flip_sin_to_cos, float freq_shift);

/* ---- Losses ----------------------------------------------------------------- */
/* mean((a - b)^2) in double; if grad, grad += 2 (a - b) / n * gscale */
double zl_mse(const float *a, const float *b, size_t n, float *grad, float gscale);

#endif
