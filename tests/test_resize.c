/* Nearest resize to an arbitrary size (the UNet's upsampler when a latent side
 * is odd): forward against torch's rule written out in the test, backward
 * against the adjoint identity <resize(x), g> = <x, resize_bwd(g)>. */
#include <math.h>
#include <stdlib.h>

#include "nn/ops.h"
#include "testlib.h"

int main(void) {
    const int B = 2, C = 3;
    const int sizes[][4] = {{2, 3, 3, 6}, {3, 2, 6, 4}, {2, 2, 4, 4}, {3, 3, 5, 7}, {1, 1, 3, 2}};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int H = sizes[k][0], W = sizes[k][1], Ho = sizes[k][2], Wo = sizes[k][3];
        size_t nx = (size_t)B * C * H * W, ny = (size_t)B * C * Ho * Wo;
        float *x = malloc(nx * 4), *y = malloc(ny * 4), *g = malloc(ny * 4), *dx = calloc(nx, 4);
        for (size_t i = 0; i < nx; i++) x[i] = (float)((i * 37) % 11) - 5.0f;
        for (size_t i = 0; i < ny; i++) g[i] = (float)((i * 13) % 7) - 3.0f;
        zl_upsample_nearest_fwd(y, x, B, C, H, W, Ho, Wo);
        int bad = 0;
        for (int p = 0; p < B * C; p++)
            for (int i = 0; i < Ho; i++)
                for (int j = 0; j < Wo; j++) {
                    /* torch nearest: src = floor(dst * in / out) */
                    int si = (int)floor((double)i * H / Ho), sj = (int)floor((double)j * W / Wo);
                    if (y[((size_t)p * Ho + i) * Wo + j] != x[((size_t)p * H + si) * W + sj]) bad++;
                }
        CHECKM(bad == 0, "resize %dx%d -> %dx%d: %d wrong values", H, W, Ho, Wo, bad);
        /* 2x sizes agree with the dedicated 2x kernel */
        if (Ho == 2 * H && Wo == 2 * W) {
            float *y2 = malloc(ny * 4);
            zl_upsample2x_fwd(y2, x, B, C, H, W);
            int d = 0;
            for (size_t i = 0; i < ny; i++) d += y2[i] != y[i];
            CHECK(d == 0);
            free(y2);
        }
        zl_upsample_nearest_bwd(dx, g, B, C, H, W, Ho, Wo);
        double lhs = 0, rhs = 0;
        for (size_t i = 0; i < ny; i++) lhs += (double)y[i] * g[i];
        for (size_t i = 0; i < nx; i++) rhs += (double)x[i] * dx[i];
        CHECKM(lhs == rhs, "adjoint %dx%d -> %dx%d: %g vs %g", H, W, Ho, Wo, lhs, rhs);
        free(x); free(y); free(g); free(dx);
    }
    return zt_done();
}
