/* Helpers shared by the subcommands: error reporting and strict number parsing. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int zl_cli_fail(int rc, const char *context) {
    const char *m = zl_errmsg();
    if (context && m[0]) fprintf(stderr, "ziplora: %s: %s\n", context, m);
    else if (context) fprintf(stderr, "ziplora: %s\n", context);
    else fprintf(stderr, "ziplora: %s\n", m[0] ? m : zl_status_name(rc));
    return rc == ZL_EINVAL ? ZL_EXIT_USAGE : ZL_EXIT_FAIL;
}

int zl_cli_usage(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ziplora %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'ziplora %s --help'.\n", cmd);
    return ZL_EXIT_USAGE;
}

int zl_cli_int(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || !*s || *end || errno || v < lo || v > hi) {
        zl_cli_usage(cmd, "%s expects an integer in [%ld, %ld], got '%s'", flag, lo, hi, s ? s : "");
        return -1;
    }
    *out = v;
    return 0;
}

int zl_cli_float(const char *cmd, const char *flag, const char *s, double *out) {
    char *end;
    errno = 0;
    double v = s ? strtod(s, &end) : 0;
    /* the library computes in float: a value beyond its range would become Inf */
    if (!s || !*s || *end || errno || !isfinite(v) || fabs(v) > FLT_MAX) {
        zl_cli_usage(cmd, "%s expects a number, got '%s'", flag, s ? s : "");
        return -1;
    }
    *out = v;
    return 0;
}

int zl_cli_sched_flag(const char *cmd, int argc, char **argv, int *i, zl_sched_override *o) {
    const char *a = argv[*i];
    if (!strcmp(a, "--zero-snr")) { o->zero_snr = 1; return 1; }
    if (!strcmp(a, "--no-zero-snr")) { o->zero_snr = -1; return 1; }
    int pred = !strcmp(a, "--prediction") || !strcmp(a, "--prediction-type");
    if (!pred && strcmp(a, "--spacing") && strcmp(a, "--timestep-spacing")) return 0;
    if (*i + 1 >= argc) {
        zl_cli_usage(cmd, "%s needs a value", a);
        return -1;
    }
    const char *v = argv[++*i];
    if (pred) {
        if (zl_prediction_from_name(v) < 0) {
            zl_cli_usage(cmd, "%s '%s': expected epsilon or v_prediction", a, v);
            return -1;
        }
        o->prediction = v;
    } else {
        if (zl_spacing_from_name(v) < 0) {
            zl_cli_usage(cmd, "%s '%s': expected leading, trailing or linspace", a, v);
            return -1;
        }
        o->spacing = v;
    }
    return 1;
}

int zl_cli_common(const char *cmd, int argc, char **argv, int *i) {
    const char *a = argv[*i];
    if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) { zl_set_verbosity(-1); return 1; }
    if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) { zl_set_verbosity(1); return 1; }
    if (!strcmp(a, "--threads")) {
        long n;
        if (*i + 1 >= argc) { zl_cli_usage(cmd, "--threads needs a value"); return -1; }
        if (zl_cli_int(cmd, "--threads", argv[++*i], 0, 1024, &n)) return -1;
        zl_set_threads((int)n);
        return 1;
    }
    return 0;
}

int zl_cli_precision_flag(const char *cmd, int argc, char **argv, int *i, int *prec) {
    if (strcmp(argv[*i], "--precision")) return 0;
    if (*i + 1 >= argc) {
        zl_cli_usage(cmd, "--precision needs a value: auto, f32, bf16x3 or bf16");
        return -1;
    }
    const char *v = argv[++*i];
    if (!strcmp(v, "f32") || !strcmp(v, "fp32") || !strcmp(v, "float32"))
        *prec = ZL_MATMUL_F32;
    else if (!strcmp(v, "bf16") || !strcmp(v, "bfloat16"))
        *prec = ZL_MATMUL_BF16;
    else if (!strcmp(v, "bf16x3"))
        *prec = ZL_MATMUL_BF16X3;
    else if (!strcmp(v, "auto"))
        *prec = ZL_CLI_PREC_AUTO;
    else {
        zl_cli_usage(cmd, "--precision '%s': expected auto, f32, bf16x3 or bf16", v);
        return -1;
    }
    return 1;
}

int zl_cli_resolve_precision(int prec) {
    if (prec == ZL_CLI_PREC_AUTO) return zl_bf16_units() ? ZL_MATMUL_BF16X3 : ZL_MATMUL_F32;
    return prec == ZL_MATMUL_BF16 || prec == ZL_MATMUL_BF16X3 ? prec : ZL_MATMUL_F32;
}

const char *zl_cli_precision_name(int prec) {
    return prec == ZL_MATMUL_BF16 ? "bf16" : prec == ZL_MATMUL_BF16X3 ? "bf16x3" : "f32";
}

void zl_cli_set_precision(const char *cmd, int prec) {
    const int p = zl_cli_resolve_precision(prec);
    zl_set_matmul_precision((zl_matmul_precision)p);
    if (p != ZL_MATMUL_F32 && !zl_bf16_units())
        zl_warn("%s --precision %s: this CPU has no AMX-BF16 tile units; the products are float32", cmd,
                zl_cli_precision_name(p));
}

/* "FILE:W" -> FILE (allocated), W. A trailing ":<number>" is a weight; a path
 * with ':' elsewhere stays whole. The caller frees *path, also on error. */
int zl_cli_lora_arg(const char *arg, char **path, float *w) {
    *w = 1.0f;
    *path = strdup(arg);
    if (!*path) return zl_set_error(ZL_ENOMEM, "out of memory");
    char *c = strrchr(*path, ':');
    if (c && c[1]) {
        char *end;
        double v = strtod(c + 1, &end);
        if (!*end) {
            if (!isfinite(v)) return zl_set_error(ZL_EINVAL, "--lora %s: the weight is not a number", arg);
            *w = (float)v;
            *c = 0;
        }
    }
    return ZL_OK;
}
