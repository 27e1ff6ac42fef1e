/* Atomic output files and small whole-file helpers. */
#include "ziplora/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ziplora/safetensors.h"

/* ---- temporaries removed on SIGINT / SIGTERM / SIGHUP ----
 * The handler only reads the table (a slot's path is complete before its flag is set) and
 * calls unlink, write and raise, which are async-signal-safe. */
#define TMP_SLOTS 64
#define TMP_PATH 4096
static char g_tmp_path[TMP_SLOTS][TMP_PATH];
static volatile sig_atomic_t g_tmp_used[TMP_SLOTS];
static pthread_mutex_t g_tmp_mu = PTHREAD_MUTEX_INITIALIZER;

void zl_tmp_track(const char *path) {
    if (!path || strlen(path) >= TMP_PATH) return;
    pthread_mutex_lock(&g_tmp_mu);
    for (int i = 0; i < TMP_SLOTS; i++)
        if (!g_tmp_used[i]) {
            memcpy(g_tmp_path[i], path, strlen(path) + 1);
            __atomic_signal_fence(__ATOMIC_SEQ_CST);
            g_tmp_used[i] = 1;
            break;
        }
    pthread_mutex_unlock(&g_tmp_mu);
}

void zl_tmp_untrack(const char *path) {
    if (!path) return;
    pthread_mutex_lock(&g_tmp_mu);
    for (int i = 0; i < TMP_SLOTS; i++)
        if (g_tmp_used[i] && !strcmp(g_tmp_path[i], path)) {
            g_tmp_used[i] = 0;
            break;
        }
    pthread_mutex_unlock(&g_tmp_mu);
}

static volatile sig_atomic_t g_graceful, g_stop;

void zl_graceful_stop(int enable) {
    g_stop = 0;
    g_graceful = enable ? 1 : 0;
}

int zl_stop_requested(void) { return g_stop != 0; }

static void on_signal(int sig) {
    if (g_graceful && !g_stop) {
        g_stop = 1;
        static const char msg[] = "\nziplora: stopping after the current step and writing the result so far "
                                  "(interrupt again to abort without output)\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        return;
    }
    int n = 0;
    for (int i = 0; i < TMP_SLOTS; i++)
        if (g_tmp_used[i] && unlink(g_tmp_path[i]) == 0) n++;
    static const char msg[] = "\nziplora: interrupted; temporary files removed, no output written\n";
    static const char msg0[] = "\nziplora: interrupted\n";
    ssize_t w = n ? write(2, msg, sizeof msg - 1) : write(2, msg0, sizeof msg0 - 1);
    (void)w;
    signal(sig, SIG_DFL);
    raise(sig);
}

void zl_cleanup_on_signals(void) {
    static const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) {
        struct sigaction sa, old;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sa.sa_flags = SA_RESTART; /* a graceful stop returns: let interrupted reads and writes go on */
        sigemptyset(&sa.sa_mask);
        /* a signal ignored at start (nohup, a background job) stays ignored */
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
        sigaction(sigs[i], &sa, NULL);
    }
}

int zl_output_check(const char *path, const char *const *inputs, int n_inputs) {
    for (int i = 0; i < n_inputs; i++)
        if (inputs[i] && (strcmp(inputs[i], path) == 0 || zl_same_file(inputs[i], path)))
            return zl_set_error(ZL_EINVAL, "%s: refusing to overwrite an input file", path);
    if (zl_is_dir(path)) return zl_set_error(ZL_EINVAL, "%s: is a folder, not a file name", path);
    char *dup = strdup(path);
    if (!dup) return zl_set_error(ZL_ENOMEM, "out of memory");
    const char *dir = dirname(dup);
    int rc = ZL_OK;
    if (!zl_is_dir(dir)) rc = zl_set_error(ZL_EIO, "%s: the folder %s does not exist", path, dir);
    else if (access(dir, W_OK) != 0) rc = zl_set_error(ZL_EIO, "%s: cannot write in the folder %s: %s", path, dir, strerror(errno));
    free(dup);
    return rc;
}

int zl_afile_open(zl_afile *af, const char *path, const char *const *inputs, int n_inputs) {
    memset(af, 0, sizeof *af);
    int rc = zl_output_check(path, inputs, n_inputs);
    if (rc) return rc;
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
    zl_tmp_track(af->tmp);
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

/* ---- direct-I/O writer ----
 * A pool of aligned buffers: the caller fills one while writer threads write
 * full ones with O_DIRECT at their offsets (two writes in flight keep the disk
 * busy between requests). The tail is written padded to the alignment and the
 * file then truncated to its length. Any EINVAL from a direct write (a
 * filesystem that accepted O_DIRECT at open but not these writes) turns
 * O_DIRECT off for the rest of the file, which is then written buffered. */
#define DIO_ALIGN 4096
#define DIO_BUF ((size_t)8 << 20)
#define DIO_NBUF 4
#define DIO_THREADS 2

enum { DIO_FREE = 0, DIO_FILLING, DIO_FULL, DIO_WRITING };

typedef struct zl_afile_dio {
    int fd;
    unsigned char *buf[DIO_NBUF];
    int state[DIO_NBUF];
    size_t len[DIO_NBUF];
    long long off[DIO_NBUF];
    int cur;         /* the buffer the caller fills */
    size_t fill;     /* bytes in buf[cur] */
    long long size;  /* bytes handed over so far (the file's length at the end) */
    pthread_t th[DIO_THREADS];
    int nth;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int quit, err;
} zl_afile_dio;

/* Write all of p at off; clears O_DIRECT once on EINVAL. Returns 0 or errno. */
static int pwrite_all(int fd, const unsigned char *p, size_t n, long long off) {
    while (n) {
        ssize_t k = pwrite(fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 && errno == EINVAL) {
            int fl = fcntl(fd, F_GETFL);
            if (fl >= 0 && (fl & O_DIRECT) && fcntl(fd, F_SETFL, fl & ~O_DIRECT) == 0) continue;
        }
        if (k < 0) return errno;
        if (k == 0) return EIO;
        p += k;
        n -= (size_t)k;
        off += k;
    }
    return 0;
}

static int dio_find(const zl_afile_dio *d, int state) {
    for (int b = 0; b < DIO_NBUF; b++)
        if (d->state[b] == state) return b;
    return -1;
}

static void *dio_writer(void *arg) {
    zl_afile_dio *d = arg;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        int b;
        while ((b = dio_find(d, DIO_FULL)) < 0 && !d->quit) pthread_cond_wait(&d->cv, &d->mu);
        if (b < 0) break;
        d->state[b] = DIO_WRITING;
        pthread_mutex_unlock(&d->mu);
        int e = pwrite_all(d->fd, d->buf[b], d->len[b], d->off[b]);
        pthread_mutex_lock(&d->mu);
        if (e && !d->err) d->err = e;
        d->state[b] = DIO_FREE;
        pthread_cond_broadcast(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

/* Wait until no buffer is queued or being written; the first error, if any. */
static int dio_wait(zl_afile_dio *d) {
    pthread_mutex_lock(&d->mu);
    while (dio_find(d, DIO_FULL) >= 0 || dio_find(d, DIO_WRITING) >= 0) pthread_cond_wait(&d->cv, &d->mu);
    int e = d->err;
    pthread_mutex_unlock(&d->mu);
    return e;
}

/* Queue the full current buffer and take a free one. */
static int dio_submit(zl_afile_dio *d) {
    pthread_mutex_lock(&d->mu);
    d->len[d->cur] = d->fill;
    d->off[d->cur] = d->size - (long long)d->fill;
    d->state[d->cur] = DIO_FULL;
    pthread_cond_broadcast(&d->cv);
    int b;
    while ((b = dio_find(d, DIO_FREE)) < 0 && !d->err) pthread_cond_wait(&d->cv, &d->mu);
    int e = d->err;
    if (b >= 0) {
        d->state[b] = DIO_FILLING;
        d->cur = b;
        d->fill = 0;
    }
    pthread_mutex_unlock(&d->mu);
    return e;
}

static void dio_stop(zl_afile_dio *d) {
    pthread_mutex_lock(&d->mu);
    d->quit = 1;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
    for (int t = 0; t < d->nth; t++) pthread_join(d->th[t], NULL);
    if (d->nth) {
        pthread_mutex_destroy(&d->mu);
        pthread_cond_destroy(&d->cv);
    }
    for (int b = 0; b < DIO_NBUF; b++) free(d->buf[b]);
    free(d);
}

int zl_afile_open_large(zl_afile *af, const char *path, const char *const *inputs, int n_inputs) {
    int rc = zl_afile_open(af, path, inputs, n_inputs);
    if (rc) return rc;
    int fd = fileno(af->fp), fl = fcntl(fd, F_GETFL);
    zl_afile_dio *d = calloc(1, sizeof *d);
    int ok = d && fl >= 0;
    for (int b = 0; b < DIO_NBUF && ok; b++) ok = !posix_memalign((void **)&d->buf[b], DIO_ALIGN, DIO_BUF);
    if (ok && fcntl(fd, F_SETFL, fl | O_DIRECT) == 0) {
        d->fd = fd;
        d->state[0] = DIO_FILLING;
        pthread_mutex_init(&d->mu, NULL);
        pthread_cond_init(&d->cv, NULL);
        while (d->nth < DIO_THREADS && pthread_create(&d->th[d->nth], NULL, dio_writer, d) == 0) d->nth++;
        if (d->nth) {
            af->dio = d;
            return ZL_OK;
        }
        pthread_mutex_destroy(&d->mu);
        pthread_cond_destroy(&d->cv);
    }
    /* no direct I/O here (tmpfs on older kernels, say): the buffered file as it is */
    if (fl >= 0) fcntl(fd, F_SETFL, fl);
    if (d) {
        for (int b = 0; b < DIO_NBUF; b++) free(d->buf[b]);
        free(d);
    }
    return ZL_OK;
}

int zl_afile_write(zl_afile *af, const void *data, size_t n) {
    zl_afile_dio *d = af->dio;
    if (!d) {
        if (n && fwrite(data, 1, n, af->fp) != n) return zl_set_error(ZL_EIO, "%s: write failed: %s", af->path, strerror(errno));
        return ZL_OK;
    }
    const unsigned char *p = data;
    while (n) {
        size_t k = DIO_BUF - d->fill < n ? DIO_BUF - d->fill : n;
        memcpy(d->buf[d->cur] + d->fill, p, k);
        d->fill += k;
        d->size += (long long)k;
        p += k;
        n -= k;
        if (d->fill == DIO_BUF) {
            int e = dio_submit(d);
            if (e) return zl_set_error(ZL_EIO, "%s: write failed: %s", af->path, strerror(e));
        }
    }
    return ZL_OK;
}

/* Write the tail (padded to the alignment), cut the file to its length. */
static int dio_finish(zl_afile *af) {
    zl_afile_dio *d = af->dio;
    int e = dio_wait(d);
    if (!e && d->fill) {
        size_t padded = (d->fill + DIO_ALIGN - 1) & ~(size_t)(DIO_ALIGN - 1);
        memset(d->buf[d->cur] + d->fill, 0, padded - d->fill);
        e = pwrite_all(d->fd, d->buf[d->cur], padded, d->size - (long long)d->fill);
    }
    if (!e && ftruncate(d->fd, (off_t)d->size) != 0) e = errno;
    dio_stop(d);
    af->dio = NULL;
    return e ? zl_set_error(ZL_EIO, "%s: write failed: %s", af->path, strerror(e)) : ZL_OK;
}

int zl_afile_patch(zl_afile *af, long long off, const void *data, size_t n) {
    if (!af->fp) return zl_set_error(ZL_EINVAL, "patch of a file that is not open");
    int rc = af->dio ? dio_finish(af) : ZL_OK;
    if (rc) return rc;
    int fd = fileno(af->fp), fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_DIRECT)) fcntl(fd, F_SETFL, fl & ~O_DIRECT);
    if (fflush(af->fp) != 0) return zl_set_error(ZL_EIO, "%s: write failed: %s", af->path, strerror(errno));
    int e = pwrite_all(fd, data, n, off);
    return e ? zl_set_error(ZL_EIO, "%s: write failed: %s", af->path, strerror(e)) : ZL_OK;
}

void zl_afile_abort(zl_afile *af) {
    if (af->dio) {
        dio_wait(af->dio);
        dio_stop(af->dio);
        af->dio = NULL;
    }
    if (af->fp) fclose(af->fp);
    if (af->tmp) {
        unlink(af->tmp);
        zl_tmp_untrack(af->tmp);
    }
    free(af->tmp);
    free(af->path);
    memset(af, 0, sizeof *af);
}

int zl_afile_commit(zl_afile *af) {
    int rc = ZL_OK;
    if (!af->fp) return zl_set_error(ZL_EINVAL, "commit of a file that is not open");
    if (af->dio && (rc = dio_finish(af))) {
        zl_afile_abort(af);
        return rc;
    }
    if (fflush(af->fp) != 0 || ferror(af->fp))
        rc = zl_set_error(ZL_EIO, "%s: write failed: %s", af->path, strerror(errno));
    else if (fsync(fileno(af->fp)) != 0)
        rc = zl_set_error(ZL_EIO, "%s: fsync failed: %s", af->path, strerror(errno));
    if (fclose(af->fp) != 0 && !rc) rc = zl_set_error(ZL_EIO, "%s: close failed: %s", af->path, strerror(errno));
    af->fp = NULL;
    if (!rc && rename(af->tmp, af->path) != 0) rc = zl_set_error(ZL_EIO, "%s: %s", af->path, strerror(errno));
    if (!rc) {
        zl_tmp_untrack(af->tmp);
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
    if (zl_is_dir(path)) return zl_set_error(ZL_EIO, "%s: is a folder, not a file", path);
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

/* ---- output sets ---------------------------------------------------------- */

int zl_outset_add(zl_outset *o, const char *final, const char **tmp) {
    *tmp = NULL;
    if (o->n == o->cap) {
        int cap = o->cap ? 2 * o->cap : 4;
        char **f = realloc(o->final, sizeof *f * (size_t)cap);
        if (f) o->final = f;
        char **t = f ? realloc(o->tmp, sizeof *t * (size_t)cap) : NULL;
        if (t) o->tmp = t;
        if (!f || !t) return zl_set_error(ZL_ENOMEM, "out of memory");
        o->cap = cap;
    }
    char *a = strdup(final), *b = strdup(final);
    char *t = NULL;
    if (a && b) {
        const char *dir = dirname(a), *base = basename(b);
        size_t n = strlen(dir) + strlen(base) + 64;
        if ((t = malloc(n))) snprintf(t, n, "%s/.%s.out-%ld-%d.tmp", dir, base, (long)getpid(), o->n);
    }
    free(a);
    free(b);
    char *f = t ? strdup(final) : NULL;
    if (!t || !f) {
        free(t);
        free(f);
        return zl_set_error(ZL_ENOMEM, "out of memory");
    }
    o->final[o->n] = f;
    o->tmp[o->n++] = t;
    zl_tmp_track(t);
    *tmp = t;
    return ZL_OK;
}

void zl_outset_drop(zl_outset *o, int i) {
    if (i < 0 || i >= o->n) return;
    if (o->tmp[i]) {
        unlink(o->tmp[i]);
        zl_tmp_untrack(o->tmp[i]);
        free(o->tmp[i]);
    }
    free(o->final[i]);
    for (int j = i + 1; j < o->n; j++) {
        o->tmp[j - 1] = o->tmp[j];
        o->final[j - 1] = o->final[j];
    }
    o->n--;
}

int zl_outset_commit(zl_outset *o) {
    for (int i = 0; i < o->n; i++) {
        if (!o->tmp[i]) continue;
        if (rename(o->tmp[i], o->final[i]))
            return zl_set_error(ZL_EIO, "%s: cannot move the output into place: %s", o->final[i], strerror(errno));
        zl_tmp_untrack(o->tmp[i]);
        free(o->tmp[i]);
        o->tmp[i] = NULL;
    }
    return ZL_OK;
}

void zl_outset_free(zl_outset *o) {
    for (int i = 0; i < o->n; i++) {
        if (o->tmp[i]) {
            unlink(o->tmp[i]);
            zl_tmp_untrack(o->tmp[i]);
            free(o->tmp[i]);
        }
        free(o->final[i]);
    }
    free(o->final);
    free(o->tmp);
    memset(o, 0, sizeof *o);
}
