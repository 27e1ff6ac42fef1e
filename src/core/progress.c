/* Verbosity, messages and the progress bar. Progress goes to stderr so
 * stdout stays clean for results. */
#include "ziplora/progress.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ziplora/core.h"

static int g_verbosity = 0;

void zl_set_verbosity(int v) { g_verbosity = v; }
int zl_get_verbosity(void) { return g_verbosity; }

void zl_info(const char *fmt, ...) {
    if (g_verbosity < 0) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void zl_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("warning: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void fmt_time(char *buf, size_t n, double s) {
    if (s < 0 || s > 1e7) { snprintf(buf, n, "?"); return; }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

static void draw(zl_progress *p, const char *extra, int final) {
    double el = zl_now() - p->t0;
    double per = p->done > 0 ? el / (double)p->done : 0;
    char eta[32], elapsed[32];
    fmt_time(eta, sizeof eta, per * (double)(p->total - p->done));
    fmt_time(elapsed, sizeof elapsed, el);
    char bar[31];
    int w = 30, fill = p->total > 0 ? (int)((double)w * (double)p->done / (double)p->total) : 0;
    if (fill > w) fill = w;
    for (int i = 0; i < w; i++) bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
    bar[w] = 0;
    char rate[48];
    if (per >= 1.0 || per == 0) snprintf(rate, sizeof rate, "%.2f s/it", per);
    else snprintf(rate, sizeof rate, "%.2f it/s", 1.0 / per);
    fprintf(stderr, "%s%s [%s] %ld/%ld %s %s %s%s%s", p->tty ? "\r\033[K" : "", p->label, bar, p->done, p->total, rate,
            final ? "elapsed" : "ETA", final ? elapsed : eta, extra ? "  " : "", extra ? extra : "");
    if (!p->tty || final) fputc('\n', stderr);
    fflush(stderr);
}

void zl_progress_begin(zl_progress *p, const char *label, long total) {
    memset(p, 0, sizeof *p);
    p->label = label;
    p->total = total;
    p->t0 = p->last_draw = zl_now();
    p->tty = isatty(2);
    p->active = g_verbosity >= 0;
    if (p->active && p->tty) draw(p, NULL, 0);
}

void zl_progress_update(zl_progress *p, long done, const char *extra) {
    p->done = done;
    if (!p->active) return;
    double now = zl_now();
    /* terminals: redraw at most 10x/s; logs: one line per step only when verbose */
    if (p->tty) {
        if (now - p->last_draw < 0.1 && done < p->total) return;
        draw(p, extra, 0);
    } else if (g_verbosity > 0) {
        draw(p, extra, 0);
    }
    p->last_draw = now;
}

void zl_progress_end(zl_progress *p, const char *extra) {
    if (!p->active) return;
    draw(p, extra, 1);
    p->active = 0;
}
