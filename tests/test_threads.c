/* Thread settings: OpenMP regions get the threads asked for, whatever the
 * library does to OpenBLAS (whose OpenMP build resets OpenMP's thread count
 * inside openblas_set_num_threads). */
#include <omp.h>
#include <stdlib.h>

#include "nn/ops.h"
#include "testlib.h"

static int team_size(void) {
    int n = 0;
#pragma omp parallel
    {
#pragma omp single
        n = omp_get_num_threads();
    }
    return n;
}

int main(void) {
    /* a process that never calls zl_set_threads keeps OpenMP's default */
    if (!getenv("OMP_NUM_THREADS")) CHECKM(team_size() == omp_get_num_procs(), "default team %d, procs %d", team_size(), omp_get_num_procs());
    for (int n = 1; n <= 3; n++) {
        zl_set_threads(n);
        CHECKM(team_size() == n && zl_get_threads() == n, "zl_set_threads(%d): team %d", n, team_size());
        /* a large product (parallel path) and the benchmark reference leave it alone */
        int m = 512;
        float *a = calloc((size_t)m * m, 4), *b = calloc((size_t)m * m, 4), *c = malloc((size_t)m * m * 4);
        zl_sgemm(0, 0, m, m, m, 1.0f, a, m, b, m, 0.0f, c, m);
        CHECK(team_size() == n);
        CHECK(zl_sgemm_reference_gflops(128, 1, 2) > 0);
        CHECKM(team_size() == n, "after the reference sgemm: team %d, want %d", team_size(), n);
        free(a); free(b); free(c);
    }
    return zt_done();
}
