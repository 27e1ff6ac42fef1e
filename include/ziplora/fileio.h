/* Atomic output files: write to a temporary file in the target folder, then
 * fsync + rename on commit. Abort (or a failed commit) leaves nothing behind. */
#ifndef ZIPLORA_FILEIO_H
#define ZIPLORA_FILEIO_H

#include <stdio.h>

#include "ziplora/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char *path;
    char *tmp;
    FILE *fp;
    struct zl_afile_dio *dio; /* direct-I/O writer (zl_afile_open_large), else NULL */
} zl_afile;

/* Check, before any work, that `path` can become an output: not one of `inputs`
 * (ZL_EINVAL), not a folder (ZL_EINVAL), in an existing folder we may write in
 * (ZL_EIO). zl_afile_open checks the same again when it opens. */
int zl_output_check(const char *path, const char *const *inputs, int n_inputs);
/* Open a temporary file next to `path`. Refuses if `path` is one of `inputs`. */
int zl_afile_open(zl_afile *af, const char *path, const char *const *inputs, int n_inputs);
/* The same for one large sequential write: the data goes to disk with direct
 * I/O from a writer thread while the caller produces the next part (no second
 * copy in the page cache, no long fsync at the end), where the filesystem
 * allows it, else buffered. Write with zl_afile_write only. */
int zl_afile_open_large(zl_afile *af, const char *path, const char *const *inputs, int n_inputs);
/* Append n bytes (either kind of zl_afile). */
int zl_afile_write(zl_afile *af, const void *data, size_t n);
/* Overwrite n bytes at offset off of what was written (a header filled in last).
 * Ends direct I/O: write nothing more afterwards. */
int zl_afile_patch(zl_afile *af, long long off, const void *data, size_t n);
/* Flush, fsync, rename onto path. On failure removes the temporary file. */
int zl_afile_commit(zl_afile *af);
/* Remove the temporary file (safe to call after a failed commit, or twice). */
void zl_afile_abort(zl_afile *af);

/* A set of outputs that appear together or not at all: each is written to a
 * temporary sibling (tracked, so an interrupted run leaves none), and only
 * zl_outset_commit renames them all into place, so a failure while they are
 * written leaves the destinations as they were (files they would replace
 * included). */
typedef struct {
    int n, cap;
    char **final, **tmp;
} zl_outset;
/* *tmp: where to write `final`'s content (owned by the set). */
int zl_outset_add(zl_outset *o, const char *final, const char **tmp);
/* Give up output i (in the order added): its temporary goes, the later ones move down one. */
void zl_outset_drop(zl_outset *o, int i);
/* Rename every temporary onto its destination, in the order added. */
int zl_outset_commit(zl_outset *o);
/* Remove the temporaries not committed and free the set. */
void zl_outset_free(zl_outset *o);

/* Whole-file helpers. */
int zl_write_file_atomic(const char *path, const void *data, size_t len, const char *const *inputs, int n_inputs);

/* Temporary files that must not outlive an interrupted run: zl_afile tracks its own; other
 * temporaries (zip's output siblings) are tracked by hand. After zl_cleanup_on_signals (the CLI
 * calls it first), SIGINT, SIGTERM and SIGHUP remove every tracked file, then end the process
 * as the signal would have. At most 64 are tracked at once; more are simply not. */
void zl_tmp_track(const char *path);
void zl_tmp_untrack(const char *path);
void zl_cleanup_on_signals(void);
/* A graceful stop for long optimisations. While enabled (after
 * zl_cleanup_on_signals), the first SIGINT/SIGTERM/SIGHUP only sets a flag and
 * says so on stderr; the loop polls zl_stop_requested() between steps, stops,
 * and writes what it has. A second signal interrupts as above. Disabling clears
 * the flag. */
void zl_graceful_stop(int enable);
int zl_stop_requested(void);
/* Read a whole file; *out is NUL-terminated (len excludes the NUL). */
int zl_read_file(const char *path, char **out, size_t *len);
int zl_file_exists(const char *path);
int zl_is_dir(const char *path);

#ifdef __cplusplus
}
#endif
#endif
