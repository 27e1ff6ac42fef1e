/* Element types and exact conversions between F16/BF16/F32 and the rest.
 * Bit-level code so results never depend on the compiler's _Float16 support. */
#include "ziplora/core.h"

#include <math.h>
#include <string.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

static const struct { const char *name; int bits; } g_dt[ZL_DT_COUNT] = {
    [ZL_DT_INVALID] = {"INVALID", 0},
    [ZL_DT_BOOL] = {"BOOL", 8},       [ZL_DT_U8] = {"U8", 8},
    [ZL_DT_I8] = {"I8", 8},           [ZL_DT_F8_E5M2] = {"F8_E5M2", 8},
    [ZL_DT_F8_E4M3] = {"F8_E4M3", 8}, [ZL_DT_I16] = {"I16", 16},
    [ZL_DT_U16] = {"U16", 16},        [ZL_DT_F16] = {"F16", 16},
    [ZL_DT_BF16] = {"BF16", 16},      [ZL_DT_I32] = {"I32", 32},
    [ZL_DT_U32] = {"U32", 32},        [ZL_DT_F32] = {"F32", 32},
    [ZL_DT_F64] = {"F64", 64},        [ZL_DT_I64] = {"I64", 64},
    [ZL_DT_U64] = {"U64", 64},
};

const char *zl_dtype_name(zl_dtype dt) {
    return (dt > 0 && dt < ZL_DT_COUNT) ? g_dt[dt].name : "INVALID";
}

zl_dtype zl_dtype_from_name(const char *s) {
    for (int i = 1; i < ZL_DT_COUNT; i++)
        if (strcmp(s, g_dt[i].name) == 0) return (zl_dtype)i;
    return ZL_DT_INVALID;
}

int zl_dtype_bits(zl_dtype dt) { return (dt > 0 && dt < ZL_DT_COUNT) ? g_dt[dt].bits : 0; }

int zl_dtype_is_float(zl_dtype dt) {
    return dt == ZL_DT_F16 || dt == ZL_DT_BF16 || dt == ZL_DT_F32 || dt == ZL_DT_F64 ||
           dt == ZL_DT_F8_E4M3 || dt == ZL_DT_F8_E5M2;
}

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float zl_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {
        if (man == 0) return u2f(sign);
        /* subnormal: man * 2^-24, exact in f32 */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31) return u2f(sign | 0x7f800000u | (man << 13));
    return u2f(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t zl_f32_to_f16(float f) {
    uint32_t u = f2u(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf or nan */
        return sign | 0x7c00 | (a > 0x7f800000u ? (uint16_t)(0x200 | ((a >> 13) & 0x3ff)) : 0);
    if (a >= 0x477ff000u) return sign | 0x7c00; /* rounds to >= 65520: inf */
    if (a < 0x38800000u) {                      /* below the smallest normal 2^-14 */
        /* subnormal or zero: value / 2^-24 rounded to nearest even */
        float v = u2f(a) * 0x1p24f;            /* exact: scaling by power of two */
        float r = nearbyintf(v);               /* default rounding mode: nearest even */
        return sign | (uint16_t)r;
    }
    uint32_t exp = (a >> 23) - 112, man = a & 0x7fffff;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++; /* carries into exponent correctly */
    return sign | (uint16_t)h;
}

float zl_bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t zl_f32_to_bf16(float f) {
    uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    uint32_t lsb = (u >> 16) & 1;
    u += 0x7fffu + lsb;
    return (uint16_t)(u >> 16);
}

static float f8_to_f32(uint8_t v, int e5m2) {
    int sign = v >> 7;
    float r;
    if (e5m2) {
        return zl_f16_to_f32((uint16_t)v << 8);
    }
    int exp = (v >> 3) & 0xf, man = v & 7;
    if (exp == 15 && man == 7) return NAN;
    if (exp == 0) r = (float)man * 0x1p-9f;
    else r = ldexpf(1.0f + (float)man / 8.0f, exp - 7);
    return sign ? -r : r;
}

void zl_convert_to_f32(zl_dtype dt, const void *src, float *dst, size_t n) {
    const uint8_t *p = (const uint8_t *)src;
    size_t i;
    switch (dt) {
    case ZL_DT_F32: memcpy(dst, src, n * 4); break;
    case ZL_DT_F16:
        i = 0;
#ifdef __F16C__
        /* hardware conversion: exact, like the scalar path (tested against it) */
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i))));
#endif
        for (; i < n; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = zl_f16_to_f32(h); }
        break;
    case ZL_DT_BF16:
        for (i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            uint32_t u = (uint32_t)h << 16;
            memcpy(dst + i, &u, 4);
        }
        break;
    case ZL_DT_F64:
        for (i = 0; i < n; i++) { double d; memcpy(&d, p + 8 * i, 8); dst[i] = (float)d; }
        break;
    case ZL_DT_BOOL: case ZL_DT_U8: for (i = 0; i < n; i++) dst[i] = (float)p[i]; break;
    case ZL_DT_I8: for (i = 0; i < n; i++) dst[i] = (float)(int8_t)p[i]; break;
    case ZL_DT_F8_E5M2: for (i = 0; i < n; i++) dst[i] = f8_to_f32(p[i], 1); break;
    case ZL_DT_F8_E4M3: for (i = 0; i < n; i++) dst[i] = f8_to_f32(p[i], 0); break;
    case ZL_DT_I16:
        for (i = 0; i < n; i++) { int16_t v; memcpy(&v, p + 2 * i, 2); dst[i] = (float)v; }
        break;
    case ZL_DT_U16:
        for (i = 0; i < n; i++) { uint16_t v; memcpy(&v, p + 2 * i, 2); dst[i] = (float)v; }
        break;
    case ZL_DT_I32:
        for (i = 0; i < n; i++) { int32_t v; memcpy(&v, p + 4 * i, 4); dst[i] = (float)v; }
        break;
    case ZL_DT_U32:
        for (i = 0; i < n; i++) { uint32_t v; memcpy(&v, p + 4 * i, 4); dst[i] = (float)v; }
        break;
    case ZL_DT_I64:
        for (i = 0; i < n; i++) { int64_t v; memcpy(&v, p + 8 * i, 8); dst[i] = (float)v; }
        break;
    case ZL_DT_U64:
        for (i = 0; i < n; i++) { uint64_t v; memcpy(&v, p + 8 * i, 8); dst[i] = (float)v; }
        break;
    default: memset(dst, 0, n * 4); break;
    }
}

int zl_convert_from_f32(zl_dtype dt, const float *src, void *dst, size_t n) {
    uint8_t *p = (uint8_t *)dst;
    size_t i;
    switch (dt) {
    case ZL_DT_F32: memcpy(dst, src, n * 4); return ZL_OK;
    case ZL_DT_F16:
        i = 0;
#ifdef __F16C__
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128((__m128i *)(p + 2 * i),
                             _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
        for (; i < n; i++) { uint16_t h = zl_f32_to_f16(src[i]); memcpy(p + 2 * i, &h, 2); }
        return ZL_OK;
    case ZL_DT_BF16:
        for (i = 0; i < n; i++) { uint16_t h = zl_f32_to_bf16(src[i]); memcpy(p + 2 * i, &h, 2); }
        return ZL_OK;
    case ZL_DT_F64:
        for (i = 0; i < n; i++) { double d = src[i]; memcpy(p + 8 * i, &d, 8); }
        return ZL_OK;
    default:
        return zl_set_error(ZL_EINVAL, "cannot write dtype %s from float32", zl_dtype_name(dt));
    }
}
