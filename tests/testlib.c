/* Implementation of the test harness in testlib.h. */
#include "testlib.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int zt_pass = 0, zt_fail = 0;
char *zt_out = NULL, *zt_err = NULL;
static char g_tmpdir[256];

void zt_check(int ok, const char *expr, const char *file, int line, const char *msg) {
    if (ok) { zt_pass++; return; }
    zt_fail++;
    fprintf(stderr, "FAIL %s:%d: %s%s%s\n", file, line, expr, msg ? ": " : "", msg ? msg : "");
}

void zt_checkf(int ok, const char *file, int line, const char *fmt, ...) {
    if (ok) { zt_pass++; return; }
    zt_fail++;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

const char *zt_data(const char *rel) {
    static char buf[8][1024];
    static int k = 0;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", ZL_TEST_DATA, rel);
    return buf[k];
}

static void cleanup(void) {
    if (g_tmpdir[0]) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmpdir);
        if (!getenv("ZT_KEEP_TMP") && system(cmd) != 0) { /* ignore */ }
    }
}

const char *zt_tmpdir(void) {
    if (!g_tmpdir[0]) {
        snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/zltest-XXXXXX");
        if (!mkdtemp(g_tmpdir)) { perror("mkdtemp"); exit(1); }
        atexit(cleanup);
    }
    return g_tmpdir;
}

const char *zt_tmp(const char *name) {
    static char buf[8][1024];
    static int k = 0;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", zt_tmpdir(), name);
    return buf[k];
}

int zt_close(const char *what, const float *got, const float *ref, int64_t n, double tol) {
    double maxref = 0, maxdiff = 0;
    int64_t worst = -1;
    for (int64_t i = 0; i < n; i++) {
        if (fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
        double d = fabs((double)got[i] - (double)ref[i]);
        if (!(d <= maxdiff)) { maxdiff = d; worst = i; } /* NaN-aware */
    }
    double lim = tol * (maxref > 1 ? maxref : 1);
    int ok = maxdiff <= lim && worst >= -1;
    for (int64_t i = 0; i < n && ok; i++) if (isnan(got[i]) != isnan(ref[i])) ok = 0;
    if (!ok)
        fprintf(stderr, "  %s: max|diff| %.3g > %.3g (at %lld: got %.8g ref %.8g)\n", what, maxdiff, lim, (long long)worst,
                worst >= 0 ? got[worst] : 0.0, worst >= 0 ? ref[worst] : 0.0);
    zt_checkf(ok, __FILE__, __LINE__, "%s within %g", what, tol);
    return ok;
}

double zt_relerr(const float *got, const float *ref, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)got[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

int zt_cli(const char *fmt, ...) {
    char args[8192], cmd[8192 + 2200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    const char *o = zt_tmp("cli.out"), *e = zt_tmp("cli.err");
    char ob[1024], eb[1024];
    snprintf(ob, sizeof ob, "%s", o);
    snprintf(eb, sizeof eb, "%s", e);
    snprintf(cmd, sizeof cmd, "%s %s </dev/null >'%s' 2>'%s'", ZL_CLI, args, ob, eb);
    int st = system(cmd);
    int code = (st >= 0 && WIFEXITED(st)) ? WEXITSTATUS(st) : 255;
    free(zt_out);
    free(zt_err);
    size_t len;
    if (zl_read_file(ob, &zt_out, &len)) zt_out = strdup("");
    if (zl_read_file(eb, &zt_err, &len)) zt_err = strdup("");
    return code;
}

void zt_sd_alphas_cumprod(double *acp, int zero_snr) {
    const int N = 1000;
    double a = sqrt(0.00085), b = sqrt(0.012), cum = 1;
    for (int i = 0; i < N; i++) {
        double beta = a + (b - a) * i / (N - 1);
        cum *= 1 - beta * beta;
        acp[i] = cum;
    }
    if (!zero_snr) return;
    double s0 = sqrt(acp[0]), sT = sqrt(acp[N - 1]);
    for (int i = 0; i < N; i++) {
        double q = (sqrt(acp[i]) - sT) * s0 / (s0 - sT);
        acp[i] = q * q;
    }
    acp[N - 1] = pow(2, -24);
}

int zt_done(void) {
    printf("%d passed, %d failed\n", zt_pass, zt_fail);
    free(zt_out);
    free(zt_err);
    return zt_fail ? 1 : 0;
}

int zt_shard(const char *src, const char *dir, const char *stem, int n) {
    zl_st_file *f = NULL;
    if (n < 1 || n > 9 || zl_st_open(src, &f)) return -1;
    int nt = zl_st_count(f), rc = 0;
    zl_st_entry *e = calloc((size_t)(nt ? nt : 1), sizeof *e);
    char path[1024], name[256];
    FILE *idx = NULL;
    snprintf(path, sizeof path, "%s/%s.safetensors.index.json", dir, stem);
    if (!e || !(idx = fopen(path, "w"))) rc = -1;
    if (!rc) fprintf(idx, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {");
    for (int s = 0; s < n && !rc; s++) {
        int m = 0;
        snprintf(name, sizeof name, "%s-%05d-of-%05d.safetensors", stem, s + 1, n);
        for (int i = s; i < nt; i += n) {
            const zl_st_tensor *t = zl_st_at(f, i);
            e[m] = (zl_st_entry){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = t->data};
            for (int d = 0; d < t->ndim; d++) e[m].shape[d] = t->shape[d];
            fprintf(idx, "%s\"%s\": \"%s\"", i ? ", " : "", t->name, name);
            m++;
        }
        snprintf(path, sizeof path, "%s/%s", dir, name);
        rc = zl_st_write(path, e, m, NULL, 0, NULL, 0);
    }
    if (idx) {
        fprintf(idx, "}}\n");
        if (fclose(idx)) rc = -1;
    }
    free(e);
    zl_st_close(f);
    return rc;
}
