/* Mean squared error with an optional accumulated gradient. The sum runs in
 * double over fixed-size chunks combined in order, so it is exact to double
 * rounding and independent of the thread count. */
#include <stdlib.h>

#include "nn/ops.h"

#define CHUNK 16384

double zl_mse(const float *a, const float *b, size_t n, float *grad, float gscale) {
    if (n == 0) return 0.0;
    const size_t nch = (n + CHUNK - 1) / CHUNK;
    double total = 0;
    double stackpart[64];
    double *part = nch <= 64 ? stackpart : malloc(sizeof(double) * nch);
    const float g = (float)(2.0 / (double)n * gscale);
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t c = 0; c < nch; c++) {
        const size_t i0 = c * CHUNK, i1 = i0 + CHUNK < n ? i0 + CHUNK : n;
        double s = 0;
        for (size_t i = i0; i < i1; i++) {
            const double d = (double)a[i] - (double)b[i];
            s += d * d;
            if (grad) grad[i] += g * (a[i] - b[i]);
        }
        if (part) part[c] = s;
    }
    if (!part) {
        /* Out of memory for the partials: redo the sum serially (same chunk order). */
        for (size_t c = 0; c < nch; c++) {
            const size_t i0 = c * CHUNK, i1 = i0 + CHUNK < n ? i0 + CHUNK : n;
            double s = 0;
            for (size_t i = i0; i < i1; i++) {
                const double d = (double)a[i] - (double)b[i];
                s += d * d;
            }
            total += s;
        }
        return total / (double)n;
    }
    for (size_t c = 0; c < nch; c++) total += part[c];
    if (part != stackpart) free(part);
    return total / (double)n;
}
