/* safetensors: a validating, mmap-backed reader and an atomic writer.
 * The reader applies every check of the Rust reference (see spec/formats.md §1)
 * and also rejects duplicate keys. */
#ifndef ZIPLORA_SAFETENSORS_H
#define ZIPLORA_SAFETENSORS_H

#include "ziplora/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ZL_MAX_DIMS 8
#define ZL_ST_MAX_HEADER 100000000ull

typedef struct {
    const char *name;
    zl_dtype dtype;
    int ndim;                     /* 0 for a scalar */
    int64_t shape[ZL_MAX_DIMS];
    int64_t numel;                /* product of shape (1 for a scalar) */
    uint64_t begin, end;          /* offsets within the data buffer */
    const uint8_t *data;          /* points into the mapping */
    size_t nbytes;
} zl_st_tensor;

typedef struct zl_st_file zl_st_file;

/* Open and validate a file (mmap). On failure *out is NULL and the error
 * message starts with the path. A path ending in ".safetensors.index.json" is
 * a sharded checkpoint: its shards (named by the index's weight_map, in the
 * same folder) are opened and presented as one file. */
int zl_st_open(const char *path, zl_st_file **out);
/* Validate an in-memory buffer (copied). `label` names it in messages. */
int zl_st_parse(const void *buf, size_t len, const char *label, zl_st_file **out);
void zl_st_close(zl_st_file *f);
/* 1 when the tensors' data is a mapping of the file (zl_st_open): its pages can
 * be dropped and are read again from the file; 0 for a copied buffer. */
int zl_st_is_mapped(const zl_st_file *f);
/* Drop the pages of [p, p + n) from this process when the range lies in a
 * mapping of f's file (they stay in the page cache and are read again on the
 * next access); only whole pages inside the range. A range elsewhere (a
 * PyTorch checkpoint's copied strided tensor, a parsed buffer) is left alone:
 * dropping anonymous memory would zero it. Returns 1 if it was a mapping. */
int zl_st_drop_pages(const zl_st_file *f, const void *p, size_t n);

const char *zl_st_path(const zl_st_file *f);
/* Tensors sorted by name. */
int zl_st_count(const zl_st_file *f);
const zl_st_tensor *zl_st_at(const zl_st_file *f, int i);
const zl_st_tensor *zl_st_find(const zl_st_file *f, const char *name);
/* __metadata__ entries, sorted by key. */
int zl_st_meta_count(const zl_st_file *f);
const char *zl_st_meta_key(const zl_st_file *f, int i);
const char *zl_st_meta_value(const zl_st_file *f, int i);
const char *zl_st_meta(const zl_st_file *f, const char *key); /* NULL if absent */

/* Read a tensor as float32 into dst (numel floats). Any numeric dtype. */
void zl_st_read_f32(const zl_st_tensor *t, float *dst);
/* Allocate and read; NULL with an error set on failure. */
float *zl_st_load_f32(const zl_st_file *f, const char *name, int64_t *numel_out);

/* Writer. `data` may be NULL, in which case `fill` is called to produce the
 * bytes into a scratch buffer of `nbytes`, so large outputs need not sit in
 * memory all at once. */
typedef struct {
    const char *name;
    zl_dtype dtype;
    int ndim;
    int64_t shape[ZL_MAX_DIMS];
    const void *data;
    int (*fill)(void *ctx, void *dst, size_t nbytes);
    void *fill_ctx;
} zl_st_entry;

typedef struct {
    const char *key;
    const char *value;
} zl_st_meta_kv;

/* Write atomically: a temporary file in the target folder, fsync, rename.
 * Refuses to replace any path in `inputs` (the same file under any name).
 * On failure no file is left at `path`. */
int zl_st_write(const char *path, const zl_st_entry *entries, int n, const zl_st_meta_kv *meta,
                int n_meta, const char *const *inputs, int n_inputs);
/* The same, where some metadata is only known once the data is written (e.g.
 * hashes computed meanwhile): after the last tensor, fix(ctx, header, len) may
 * rewrite the header text in place (same length; it holds the placeholders the
 * caller put into `meta`), and the file's header is patched before commit.
 * A non-zero return aborts the write. */
typedef int (*zl_st_header_fix)(void *ctx, char *header, size_t len);
int zl_st_write_fix(const char *path, const zl_st_entry *entries, int n, const zl_st_meta_kv *meta, int n_meta,
                    const char *const *inputs, int n_inputs, zl_st_header_fix fix, void *fix_ctx);

/* Bytes a tensor of this dtype/shape occupies (0 on overflow or fractional bytes -> returns -1). */
int64_t zl_st_nbytes(zl_dtype dt, int ndim, const int64_t *shape);

/* True if a and b name the same existing file. */
int zl_same_file(const char *a, const char *b);

#ifdef __cplusplus
}
#endif
#endif
