/* Atomic output files and small whole-file helpers. */
#include "ziplora/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ziplora/safetensors.h"

int zl_afile_open(zl_afile *af, const char *path, const char *const *inputs, int n_inputs) {
    memset(af, 0, sizeof *af);
    for (int i = 0; i < n_inputs; i++)
        if (inputs[i] && (strcmp(inputs[i], path) == 0 || zl_same_file(inputs[i], path)))
            return zl_set_error(ZL_EINVAL, "%s: refusing to overwrite an input file", path);
    if (zl_is_dir(path)) return zl_set_error(ZL_EINVAL, "%s: is a folder, not a file name", path);
    char *dup = strdup(path);
    if (!dup) return zl_set_error(ZL_ENOMEM, "out of memory");
    const char *dir = dirname(dup);
    size_t tl = strlen(dir) + 32;
    af->tmp = malloc(tl);
    af->path = strdup(path);
    if (!af->tmp || !af->path) {
        free(dup);
        zl_afile_abort(af);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    snprintf(af->tmp, tl, "%s/.ziplora-XXXXXX", dir);
    free(dup);
    int fd = mkstemp(af->tmp);
    if (fd < 0) {
        int e = errno;
        free(af->tmp);
        af->tmp = NULL;
        zl_afile_abort(af);
        return zl_set_error(ZL_EIO, "%s: cannot create a temporary file in its folder: %s", path, strerror(e));
    }
    /* mkstemp makes 0600; give the final file the usual 0666 & ~umask. */
    mode_t um = umask(0);
    umask(um);
    if (fchmod(fd, 0666 & ~um) != 0) { /* not fatal */ }
    af->fp = fdopen(fd, "wb");
    if (!af->fp) {
        close(fd);
        zl_afile_abort(af);
        return zl_set_error(ZL_EIO, "%s: fdopen failed", path);
    }
    return ZL_OK;
}

void zl_afile_write_behind(zl_afile *af) {
#ifdef SYNC_FILE_RANGE_WRITE
    const long long step = 32ll << 20;
    if (!af->fp) return;
    long long pos = (long long)ftello(af->fp);
    if (pos < af->queued + step || fflush(af->fp) != 0) return;
    /* advisory: a failure here shows up again at fsync */
    if (sync_file_range(fileno(af->fp), af->queued, pos - af->queued, SYNC_FILE_RANGE_WRITE) == 0) af->queued = pos;
#else
    (void)af;
#endif
}

void zl_afile_abort(zl_afile *af) {
    if (af->fp) fclose(af->fp);
    if (af->tmp) unlink(af->tmp);
    free(af->tmp);
    free(af->path);
    memset(af, 0, sizeof *af);
}

int zl_afile_commit(zl_afile *af) {
    int rc = ZL_OK;
    if (!af->fp) return zl_set_error(ZL_EINVAL, "commit of a file that is not open");
    if (fflush(af->fp) != 0 || ferror(af->fp))
        rc = zl_set_error(ZL_EIO, "%s: write failed: %s", af->path, strerror(errno));
    else if (fsync(fileno(af->fp)) != 0)
        rc = zl_set_error(ZL_EIO, "%s: fsync failed: %s", af->path, strerror(errno));
    if (fclose(af->fp) != 0 && !rc) rc = zl_set_error(ZL_EIO, "%s: close failed: %s", af->path, strerror(errno));
    af->fp = NULL;
    if (!rc && rename(af->tmp, af->path) != 0) rc = zl_set_error(ZL_EIO, "%s: %s", af->path, strerror(errno));
    if (!rc) {
        free(af->tmp);
        af->tmp = NULL;
    }
    zl_afile_abort(af);
    return rc;
}

int zl_write_file_atomic(const char *path, const void *data, size_t len, const char *const *inputs, int n_inputs) {
    zl_afile af;
    int rc = zl_afile_open(&af, path, inputs, n_inputs);
    if (rc) return rc;
    if (len && fwrite(data, 1, len, af.fp) != len) {
        rc = zl_set_error(ZL_EIO, "%s: write failed", path);
        zl_afile_abort(&af);
        return rc;
    }
    return zl_afile_commit(&af);
}

int zl_read_file(const char *path, char **out, size_t *len) {
    *out = NULL;
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return zl_set_error(ZL_EIO, "%s: %s", path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (n + 1 < cap) break;
        char *nb = realloc(buf, cap *= 2);
        if (!nb) { free(buf); buf = NULL; }
        else buf = nb;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf) return zl_set_error(ZL_ENOMEM, "%s: out of memory", path);
    if (err) { free(buf); return zl_set_error(ZL_EIO, "%s: read error", path); }
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return ZL_OK;
}

int zl_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int zl_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}
