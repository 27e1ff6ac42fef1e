/* A progress bar on stderr: "label [=====>    ] 12/100 1.3 s/it ETA 0:42 extra". 
 * Silent when quiet, or when stderr is not a terminal and verbose is off
 * (then only the final line is printed). */
#ifndef ZIPLORA_PROGRESS_H
#define ZIPLORA_PROGRESS_H

#ifdef __cplusplus
extern "C" {
#endif

/* Global verbosity for library messages: -1 quiet, 0 normal, 1 verbose. */
void zl_set_verbosity(int v);
int zl_get_verbosity(void);
/* Informational message to stderr (suppressed when quiet). */
void zl_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Warning to stderr (always printed, prefixed "warning: "). */
void zl_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

typedef struct {
    const char *label;
    long total;
    long done;
    double t0, last_draw;
    int tty;
    int active;
} zl_progress;

void zl_progress_begin(zl_progress *p, const char *label, long total);
/* Advance to `done`; `extra` (may be NULL) is shown after the ETA. */
void zl_progress_update(zl_progress *p, long done, const char *extra);
void zl_progress_end(zl_progress *p, const char *extra);

#ifdef __cplusplus
}
#endif
#endif
