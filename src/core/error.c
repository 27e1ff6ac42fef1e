/* The thread-local last-error message and status names. Errors are values:
 * functions return a zl_status and leave a message here for the caller. */
#include "ziplora/core.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char g_err[2048];

const char *zl_errmsg(void) { return g_err; }

void zl_clear_error(void) { g_err[0] = 0; }

int zl_set_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return code;
}

int zl_error_prefix(int code, const char *fmt, ...) {
    char prefix[1024], old[sizeof g_err];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, g_err, sizeof old);
    /* g_err = prefix [+ ": " + old], truncated to fit */
    size_t cap = sizeof g_err - 1, n = strnlen(prefix, cap);
    memcpy(g_err, prefix, n);
    if (old[0] && n + 2 <= cap) {
        memcpy(g_err + n, ": ", 2);
        n += 2;
        size_t m = strnlen(old, cap - n);
        memcpy(g_err + n, old, m);
        n += m;
    }
    g_err[n] = 0;
    return code;
}

const char *zl_status_name(int code) {
    switch (code) {
    case ZL_OK: return "ok";
    case ZL_EINVAL: return "invalid argument";
    case ZL_EIO: return "I/O error";
    case ZL_EFORMAT: return "malformed file";
    case ZL_ENOMEM: return "out of memory";
    case ZL_EUNSUPPORTED: return "unsupported";
    case ZL_ENOTFOUND: return "not found";
    case ZL_ESHAPE: return "shape mismatch";
    case ZL_ENUMERIC: return "numerical failure";
    default: return "unknown error";
    }
}
