/* Internal to src/nn: the bfloat16 tile product's pieces (src/nn/gemm_bf16.c)
 * for ops that arrange their own products (attention).
 *
 * A operands are packed as [16-row group][32-wide K block][16][32] bfloat16,
 * B operands as [16-column group][K block][16 K pairs][16][2] ("VNNI"); both
 * zero-padded to 32 rows/columns and to a multiple of 32 in K. Under bf16x3
 * each K block holds zl_bf16_parts() = 2 tiles (high parts, then low parts),
 * so group strides and buffer sizes double. */
#ifndef ZL_NN_BF16_TILES_H
#define ZL_NN_BF16_TILES_H

#include <stddef.h>
#include <stdint.h>

/* A tiles of src [m, K] (row stride ld), each value times mul first (0: as is). */
void zl_bf16_pack_a_f32(uint16_t *dst, const float *src, int ld, int m, int K, float mul);
/* B tiles of op(B) [K, n]: nt, op(B) = src^T with src [n, K]; else src [K, n]. */
void zl_bf16_pack_b_f32(uint16_t *dst, const float *src, int ld, int nt, int n, int K);
/* C [m, n] (ldc) += A B over K, from packed tiles with group strides gsa and
 * gsb (in elements). A must hold ceil(m, 32) rows, B ceil(n, 32) columns. */
void zl_bf16_tiles(const uint16_t *Ap, size_t gsa, const uint16_t *Bp, size_t gsb, int m, int n, int K, float *C,
                   int ldc);

#endif
