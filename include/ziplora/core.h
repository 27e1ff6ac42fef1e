/* ziplora core: status codes, the thread-local last error, dtypes and exact
 * half-precision conversion, threading, hashing. Everything else builds on it. */
#ifndef ZIPLORA_CORE_H
#define ZIPLORA_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. Every fallible public function returns one; on failure
 * zl_errmsg() says what and where. */
typedef enum {
    ZL_OK = 0,
    ZL_EINVAL = 1,       /* bad argument or flag */
    ZL_EIO = 2,          /* file system error */
    ZL_EFORMAT = 3,      /* malformed input file */
    ZL_ENOMEM = 4,       /* allocation failed */
    ZL_EUNSUPPORTED = 5, /* valid input we refuse (e.g. LoHa) */
    ZL_ENOTFOUND = 6,    /* a named tensor/key/module is missing */
    ZL_ESHAPE = 7,       /* inconsistent shapes */
    ZL_ENUMERIC = 8,     /* NaN/Inf during computation */
} zl_status;

/* The last error message of the calling thread ("" if none). */
const char *zl_errmsg(void);
/* Set the calling thread's error message (printf-style); returns `code`. */
int zl_set_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepend "prefix: " to the current error message; returns `code`. */
int zl_error_prefix(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void zl_clear_error(void);
const char *zl_status_name(int code);

/* Element types, as named by safetensors. */
typedef enum {
    ZL_DT_INVALID = 0,
    ZL_DT_BOOL, ZL_DT_U8, ZL_DT_I8, ZL_DT_F8_E5M2, ZL_DT_F8_E4M3,
    ZL_DT_I16, ZL_DT_U16, ZL_DT_F16, ZL_DT_BF16,
    ZL_DT_I32, ZL_DT_U32, ZL_DT_F32,
    ZL_DT_F64, ZL_DT_I64, ZL_DT_U64,
    ZL_DT_COUNT
} zl_dtype;

const char *zl_dtype_name(zl_dtype dt);
/* Parse a safetensors dtype string; ZL_DT_INVALID if unknown. */
zl_dtype zl_dtype_from_name(const char *s);
int zl_dtype_bits(zl_dtype dt);
/* True for types zl_convert_to_f32 accepts (every type above). */
int zl_dtype_is_float(zl_dtype dt);

/* Exact conversions. f16/bf16 -> f32 is exact; f32 -> f16/bf16 rounds to
 * nearest even, keeps NaN a NaN and saturates to +-Inf as IEEE does. */
float zl_f16_to_f32(uint16_t h);
uint16_t zl_f32_to_f16(float f);
float zl_bf16_to_f32(uint16_t h);
uint16_t zl_f32_to_bf16(float f);
/* Convert n elements of little-endian data in `dt` to f32. */
void zl_convert_to_f32(zl_dtype dt, const void *src, float *dst, size_t n);
/* Convert n f32 values to `dt` (F32, F16, BF16, F64 only); returns ZL_EINVAL otherwise. */
int zl_convert_from_f32(zl_dtype dt, const float *src, void *dst, size_t n);

/* Threads used by OpenMP regions and BLAS. 0 = all cores. */
void zl_set_threads(int n);
int zl_get_threads(void);

/* Precision of the products with model weights (linears and convolutions
 * forward, the linears' input gradients, self-attention's q k^T and P v).
 * F32 (the default) is exact float32. BF16 rounds both factors to bfloat16
 * and sums in float32 on Intel AMX tile units, where the CPU has them (several
 * times faster; relative error about 2^-8 per product, as PyTorch's bfloat16
 * autocast). BF16X3 splits each factor into two bfloat16 parts, x = hi + lo,
 * and sums three tile products, hi hi + hi lo + lo hi: about 2^-17 relative
 * per product, near float32 (a stored F16 weight splits exactly). Elsewhere
 * BF16 and BF16X3 are a permission only and products stay F32. */
typedef enum { ZL_MATMUL_F32 = 0, ZL_MATMUL_BF16 = 1, ZL_MATMUL_BF16X3 = 2 } zl_matmul_precision;
void zl_set_matmul_precision(zl_matmul_precision p);
zl_matmul_precision zl_get_matmul_precision(void);
/* 1 if this CPU and OS give this process AMX-BF16 tiles (ZL_NO_AMX=1 in the
 * environment says no). */
int zl_bf16_units(void);

/* SHA-256 of a file, as 64 lowercase hex chars + NUL. */
int zl_sha256_file(const char *path, char out_hex[65]);
void zl_sha256(const void *data, size_t len, uint8_t out[32]);

/* Peak resident set size of this process, in bytes (0 if unknown). */
size_t zl_peak_rss(void);
/* Monotonic wall clock in seconds. */
double zl_now(void);

#ifdef __cplusplus
}
#endif
#endif
