/* Nearest-neighbour resize to an arbitrary size, as torch's
 * F.interpolate(size=..., mode="nearest"): source index floor(i * in / out).
 * The UNet needs it when a latent side is not a multiple of 2^(levels-1):
 * diffusers then upsamples each level to the size of the skip it meets. */
#include "nn/ops.h"

void zl_upsample_nearest_fwd(float *y, const float *x, int B, int C, int H, int W, int Ho, int Wo) {
    int wi[Wo > 0 ? Wo : 1];
    for (int j = 0; j < Wo; j++) wi[j] = (int)((long)j * W / Wo);
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)B * C; p++) {
        const float *xs = x + (size_t)p * H * W;
        float *ys = y + (size_t)p * Ho * Wo;
        for (int i = 0; i < Ho; i++) {
            const float *xr = xs + (size_t)((long)i * H / Ho) * W;
            for (int j = 0; j < Wo; j++) ys[(size_t)i * Wo + j] = xr[wi[j]];
        }
    }
}

void zl_upsample_nearest_bwd(float *dx, const float *dy, int B, int C, int H, int W, int Ho, int Wo) {
    int wi[Wo > 0 ? Wo : 1];
    for (int j = 0; j < Wo; j++) wi[j] = (int)((long)j * W / Wo);
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)B * C; p++) {
        float *xs = dx + (size_t)p * H * W;
        const float *ys = dy + (size_t)p * Ho * Wo;
        for (int i = 0; i < Ho; i++) {
            float *xr = xs + (size_t)((long)i * H / Ho) * W;
            for (int j = 0; j < Wo; j++) xr[wi[j]] += ys[(size_t)i * Wo + j];
        }
    }
}
