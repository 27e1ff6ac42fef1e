/* The seedable RNG: Philox4x32-10 (Salmon et al., "Parallel random numbers:
 * as easy as 1, 2, 3", SC'11) used as a counter-based generator, plus
 * Box-Muller normals. Because every value is a pure function of (seed, stream,
 * element index), buffers can be filled by any number of threads in any order
 * and still give identical bits. */
#include <math.h>

#include "ziplora/sample.h"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void zl_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        if (r) { k0 += PHILOX_W0; k1 += PHILOX_W1; }
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

void zl_rng_init(zl_rng *r, uint64_t seed, uint64_t stream) {
    r->seed = seed;
    r->stream = stream;
}

/* The Philox block for one counter value. */
static void block(const zl_rng *r, uint64_t idx, uint32_t out[4]) {
    uint32_t ctr[4] = {(uint32_t)idx, (uint32_t)(idx >> 32), (uint32_t)r->stream, (uint32_t)(r->stream >> 32)};
    uint32_t key[2] = {(uint32_t)r->seed, (uint32_t)(r->seed >> 32)};
    zl_philox4x32(ctr, key, out);
}

/* Two 32-bit words -> one double in (0, 1] (53 bits; never 0, so log() is finite). */
static double u53(uint32_t a, uint32_t b) {
    uint64_t v = ((uint64_t)a << 21) ^ (uint64_t)b; /* 53 significant bits */
    v &= (1ull << 53) - 1;
    return ((double)v + 1.0) * (1.0 / 9007199254740992.0);
}

static float normal_at(const zl_rng *r, uint64_t i) {
    uint32_t w[4];
    block(r, i >> 1, w);
    double u1 = u53(w[0], w[1]), u2 = u53(w[2], w[3]);
    double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
    return (float)((i & 1) ? rad * sin(th) : rad * cos(th));
}

void zl_rng_normal(const zl_rng *r, uint64_t offset, float *out, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t j = 0; j < n; j++) out[j] = normal_at(r, offset + j);
}

void zl_rng_uniform(const zl_rng *r, uint64_t offset, float *out, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t j = 0; j < n; j++) {
        uint64_t i = offset + j;
        uint32_t w[4];
        /* a separate counter half-space from the normals' pair blocks */
        block(r, (i >> 2) | (1ull << 63), w);
        out[j] = (float)(w[i & 3] >> 8) * (1.0f / 16777216.0f);
    }
}
