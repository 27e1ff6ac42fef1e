/* safetensors reader (mmap, fully validated) and atomic writer.
 * Validation follows the Rust reference in order (spec/formats.md §1), adds a
 * duplicate-key check, and names the file and the offending key in every error. */
#include "ziplora/safetensors.h"

#include "ziplora/fileio.h"
#include "io/torch_zip.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct zl_st_file {
    char *path;
    uint8_t *map;       /* whole file: mmap'd or malloc'd */
    size_t size;
    int mapped;
    int n;
    zl_st_tensor *t;    /* sorted by name */
    char **names;
    int n_meta;
    char **meta_k, **meta_v; /* sorted by key */
    int n_shards;       /* a sharded checkpoint (index.json): the open shards; names point into them */
    zl_st_file **shards;
    uint8_t **owned;    /* a PyTorch checkpoint's copied (strided) tensors */
    int n_owned;
};

int64_t zl_st_nbytes(zl_dtype dt, int ndim, const int64_t *shape) {
    int bits = zl_dtype_bits(dt);
    if (bits <= 0) return -1;
    unsigned __int128 n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        n *= (uint64_t)shape[i];
        if (n > ((unsigned __int128)1 << 62)) return -1;
    }
    n *= (unsigned)bits;
    if (n > ((unsigned __int128)1 << 62) * 8) return -1;
    if (n % 8) return -1;
    return (int64_t)(n / 8);
}

void zl_st_close(zl_st_file *f) {
    if (!f) return;
    if (f->map) {
        if (f->mapped) munmap(f->map, f->size);
        else free(f->map);
    }
    if (f->names)
        for (int i = 0; i < f->n; i++) free(f->names[i]);
    for (int i = 0; i < f->n_shards; i++) zl_st_close(f->shards[i]);
    free(f->shards);
    for (int i = 0; i < f->n_owned; i++) free(f->owned[i]);
    free(f->owned);
    for (int i = 0; i < f->n_meta; i++) { free(f->meta_k[i]); free(f->meta_v[i]); }
    free(f->names);
    free(f->t);
    free(f->meta_k);
    free(f->meta_v);
    free(f->path);
    free(f);
}

static int cmp_offsets(const void *a, const void *b) {
    const zl_st_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_names(const void *a, const void *b) {
    const zl_st_tensor *x = a, *y = b;
    return strcmp(x->name, y->name);
}

static int get_u64(json_t *v, uint64_t *out) {
    if (!json_is_integer(v)) return 0;
    json_int_t i = json_integer_value(v);
    if (i < 0) return 0;
    *out = (uint64_t)i;
    return 1;
}

/* What a file that is not safetensors is, from its first bytes (for the message); NULL if unknown. */
static const char *other_format(const uint8_t *m, size_t n) {
    if (n >= 2 && m[0] == 0x80 && m[1] >= 2 && m[1] <= 5)
        return "a pickle file (an old PyTorch .ckpt/.pt/.bin, saved before torch 1.6's zip format)";
    if (n >= 4 && !memcmp(m, "GGUF", 4)) return "a GGUF file (quantized weights for ggml)";
    if (n >= 8 && !memcmp(m, "\x89PNG\r\n\x1a\n", 8)) return "a PNG image";
    if (n >= 1 && m[0] == '{') return "a JSON file";
    return NULL;
}

static int cmp_names(const void *a, const void *b);

/* A PyTorch zip checkpoint (src/io/torch_zip.c): its state dict's tensors,
 * presented as a safetensors file without metadata. */
static int parse_torch(zl_st_file *f) {
    zl_torch_tensor *tt = NULL;
    int n = 0;
    int rc = zl_torch_zip_read(f->map, f->size, f->path, &tt, &n);
    if (rc) return rc;
    f->t = calloc((size_t)n, sizeof *f->t);
    f->names = calloc((size_t)n, sizeof *f->names);
    f->owned = calloc((size_t)n, sizeof *f->owned);
    if (!f->t || !f->names || !f->owned) {
        zl_torch_tensors_free(tt, n);
        return zl_set_error(ZL_ENOMEM, "%s: out of memory", f->path);
    }
    for (int i = 0; i < n; i++) {
        zl_st_tensor *t = &f->t[f->n];
        f->names[f->n] = tt[i].name;
        tt[i].name = NULL;
        t->name = f->names[f->n];
        t->dtype = tt[i].dtype;
        t->ndim = tt[i].ndim;
        memcpy(t->shape, tt[i].shape, sizeof t->shape);
        t->numel = tt[i].numel;
        t->nbytes = tt[i].nbytes;
        t->data = tt[i].data;
        t->begin = tt[i].owned ? 0 : tt[i].file_off;
        t->end = t->begin + t->nbytes;
        if (tt[i].owned) f->owned[f->n_owned++] = tt[i].owned, tt[i].owned = NULL;
        f->n++;
    }
    zl_torch_tensors_free(tt, n);
    qsort(f->t, (size_t)f->n, sizeof *f->t, cmp_names);
    for (int i = 1; i < f->n; i++)
        if (strcmp(f->t[i - 1].name, f->t[i].name) == 0)
            return zl_set_error(ZL_EFORMAT, "%s: duplicate tensor '%s'", f->path, f->t[i].name);
    return ZL_OK;
}

/* Validate f->map[0..size) and fill the tables. */
static int parse_file(zl_st_file *f) {
    const char *P = f->path;
    if (f->size >= 4 && !memcmp(f->map, "PK\x03\x04", 4)) return parse_torch(f);
    if (f->size < 8) return zl_set_error(ZL_EFORMAT, "%s: file is %zu bytes, shorter than the 8-byte header length", P, f->size);
    uint64_t N = 0;
    for (int i = 7; i >= 0; i--) N = (N << 8) | f->map[i];
    if (N > ZL_ST_MAX_HEADER || N > f->size - 8) {
        const char *other = other_format(f->map, f->size);
        if (other)
            return zl_set_error(ZL_EFORMAT,
                                "%s: this is %s, not safetensors; only safetensors files and PyTorch zip checkpoints "
                                "are read; convert it to .safetensors first",
                                P, other);
    }
    if (N > ZL_ST_MAX_HEADER) return zl_set_error(ZL_EFORMAT, "%s: header length %llu exceeds the 100000000-byte limit", P, (unsigned long long)N);
    if (N > f->size - 8) return zl_set_error(ZL_EFORMAT, "%s: header length %llu runs past the end of the %zu-byte file", P, (unsigned long long)N, f->size);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)f->map + 8, (size_t)N, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return zl_set_error(ZL_EFORMAT, "%s: invalid JSON header at byte %d: %s", P, 8 + jerr.position, jerr.text);
    if (!json_is_object(root)) { json_decref(root); return zl_set_error(ZL_EFORMAT, "%s: header is not a JSON object", P); }

    size_t cap = json_object_size(root);
    f->t = calloc(cap ? cap : 1, sizeof *f->t);
    f->names = calloc(cap ? cap : 1, sizeof *f->names);
    if (!f->t || !f->names) { json_decref(root); return zl_set_error(ZL_ENOMEM, "%s: out of memory", P); }

    int rc = ZL_OK;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val)) { rc = zl_set_error(ZL_EFORMAT, "%s: __metadata__ is not an object", P); break; }
            size_t m = json_object_size(val);
            f->meta_k = calloc(m ? m : 1, sizeof(char *));
            f->meta_v = calloc(m ? m : 1, sizeof(char *));
            if (!f->meta_k || !f->meta_v) { rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", P); break; }
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv) {
                if (!json_is_string(mv)) { rc = zl_set_error(ZL_EFORMAT, "%s: __metadata__ value of '%s' is not a string", P, mk); break; }
                f->meta_k[f->n_meta] = strdup(mk);
                f->meta_v[f->n_meta] = strdup(json_string_value(mv));
                f->n_meta++;
                if (!f->meta_k[f->n_meta - 1] || !f->meta_v[f->n_meta - 1]) { rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", P); break; }
            }
            if (rc) break;
            continue;
        }
        zl_st_tensor *t = &f->t[f->n];
        if (!json_is_object(val)) { rc = zl_set_error(ZL_EFORMAT, "%s: tensor '%s': entry is not an object", P, key); break; }
        json_t *jd = json_object_get(val, "dtype"), *js = json_object_get(val, "shape"), *jo = json_object_get(val, "data_offsets");
        if (!json_is_string(jd)) { rc = zl_set_error(ZL_EFORMAT, "%s: tensor '%s': missing dtype", P, key); break; }
        t->dtype = zl_dtype_from_name(json_string_value(jd));
        if (t->dtype == ZL_DT_INVALID) { rc = zl_set_error(ZL_EFORMAT, "%s: tensor '%s': unknown dtype '%s'", P, key, json_string_value(jd)); break; }
        if (!json_is_array(js)) { rc = zl_set_error(ZL_EFORMAT, "%s: tensor '%s': missing shape", P, key); break; }
        if (json_array_size(js) > ZL_MAX_DIMS) { rc = zl_set_error(ZL_EUNSUPPORTED, "%s: tensor '%s': %zu dimensions (at most %d supported)", P, key, json_array_size(js), ZL_MAX_DIMS); break; }
        t->ndim = (int)json_array_size(js);
        for (int d = 0; d < t->ndim; d++) {
            uint64_t v;
            if (!get_u64(json_array_get(js, d), &v) || v > (uint64_t)INT64_MAX) { rc = zl_set_error(ZL_EFORMAT, "%s: tensor '%s': shape entry %d is not an unsigned integer", P, key, d); break; }
            t->shape[d] = (int64_t)v;
        }
        if (rc) break;
        if (!json_is_array(jo) || json_array_size(jo) != 2 || !get_u64(json_array_get(jo, 0), &t->begin) ||
            !get_u64(json_array_get(jo, 1), &t->end)) {
            rc = zl_set_error(ZL_EFORMAT, "%s: tensor '%s': data_offsets must be exactly 2 unsigned integers", P, key);
            break;
        }
        f->names[f->n] = strdup(key);
        if (!f->names[f->n]) { rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", P); break; }
        t->name = f->names[f->n];
        f->n++;
    }
    json_decref(root);
    if (rc) return rc;

    /* Offsets must tile the data buffer from 0 with no gap or overlap. */
    qsort(f->t, (size_t)f->n, sizeof *f->t, cmp_offsets);
    uint64_t pos = 0;
    for (int i = 0; i < f->n; i++) {
        zl_st_tensor *t = &f->t[i];
        if (t->begin != pos || t->end < t->begin)
            return zl_set_error(ZL_EFORMAT, "%s: tensor '%s': invalid data_offsets [%llu, %llu] (expected to start at %llu)", P, t->name,
                                (unsigned long long)t->begin, (unsigned long long)t->end, (unsigned long long)pos);
        pos = t->end;
        int64_t nb = zl_st_nbytes(t->dtype, t->ndim, t->shape);
        if (nb < 0) return zl_set_error(ZL_EFORMAT, "%s: tensor '%s': shape x dtype size overflows or is not a whole number of bytes", P, t->name);
        if ((uint64_t)nb != t->end - t->begin)
            return zl_set_error(ZL_EFORMAT, "%s: tensor '%s': data_offsets span %llu bytes but %s%s needs %lld", P, t->name,
                                (unsigned long long)(t->end - t->begin), zl_dtype_name(t->dtype), t->ndim ? " of this shape" : " scalar",
                                (long long)nb);
        t->nbytes = (size_t)nb;
        t->numel = 1;
        for (int d = 0; d < t->ndim; d++) t->numel *= t->shape[d];
    }
    if (pos + 8 + N != f->size)
        return zl_set_error(ZL_EFORMAT, "%s: data buffer is %llu bytes but the file holds %llu after the header (truncated or trailing bytes)", P,
                            (unsigned long long)pos, (unsigned long long)(f->size - 8 - N));
    const uint8_t *data = f->map + 8 + N;
    for (int i = 0; i < f->n; i++) f->t[i].data = data + f->t[i].begin;

    qsort(f->t, (size_t)f->n, sizeof *f->t, cmp_names);
    for (int i = 1; i < f->n; i++)
        if (strcmp(f->t[i - 1].name, f->t[i].name) == 0) return zl_set_error(ZL_EFORMAT, "%s: duplicate tensor '%s'", P, f->t[i].name);
    /* sort metadata by key (simple insertion sort; metadata is small) */
    for (int i = 1; i < f->n_meta; i++)
        for (int j = i; j > 0 && strcmp(f->meta_k[j - 1], f->meta_k[j]) > 0; j--) {
            char *k = f->meta_k[j]; f->meta_k[j] = f->meta_k[j - 1]; f->meta_k[j - 1] = k;
            char *v = f->meta_v[j]; f->meta_v[j] = f->meta_v[j - 1]; f->meta_v[j - 1] = v;
        }
    return ZL_OK;
}

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

/* A sharded checkpoint: <name>.safetensors.index.json maps every tensor to a
 * shard file in the same folder ({"weight_map": {tensor: file}}), as
 * transformers' and diffusers' save_pretrained write it. The shards are opened
 * (each fully validated) and presented as one file; a tensor must be in the
 * shard the index names, and in no other. */
static int open_sharded(const char *path, zl_st_file **out) {
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) return zl_set_error(ZL_EFORMAT, "%s: not a valid index JSON (line %d: %s)", path, je.line, je.text);
    json_t *wm = json_object_get(root, "weight_map");
    int rc = ZL_OK;
    zl_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto done; }
    if (!json_is_object(wm) || !json_object_size(wm)) {
        rc = zl_set_error(ZL_EFORMAT, "%s: no \"weight_map\" object naming the shards", path);
        goto done;
    }
    const char *slash = strrchr(path, '/');
    size_t dl = slash ? (size_t)(slash - path + 1) : 0;
    const char *key;
    json_t *v;
    /* distinct shard names, in the order met */
    size_t nk = json_object_size(wm);
    const char **shard_name = calloc(nk, sizeof *shard_name);
    f->shards = calloc(nk, sizeof *f->shards);
    if (!shard_name || !f->shards) { free(shard_name); rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto done; }
    json_object_foreach(wm, key, v) {
        const char *sn = json_string_value(v);
        if (!sn || !*sn || strchr(sn, '/') || !strcmp(sn, "..") || !strcmp(sn, ".")) {
            rc = zl_set_error(ZL_EFORMAT, "%s: weight_map entry '%s' is not a shard file name in this folder", path, key);
            break;
        }
        int seen = 0;
        for (int i = 0; i < f->n_shards && !seen; i++) seen = !strcmp(shard_name[i], sn);
        if (seen) continue;
        shard_name[f->n_shards] = sn;
        char *sp = malloc(dl + strlen(sn) + 1);
        if (!sp) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); break; }
        memcpy(sp, path, dl);
        strcpy(sp + dl, sn);
        rc = zl_st_open(sp, &f->shards[f->n_shards]);
        free(sp);
        if (rc) { rc = zl_error_prefix(rc, "%s", path); break; }
        f->n += zl_st_count(f->shards[f->n_shards]);
        f->n_shards++;
    }
    if (!rc) {
        f->t = calloc((size_t)(f->n ? f->n : 1), sizeof *f->t);
        if (!f->t) rc = zl_set_error(ZL_ENOMEM, "out of memory");
        int k = 0;
        f->mapped = 1;
        for (int i = 0; i < f->n_shards && !rc; i++) {
            f->mapped &= f->shards[i]->mapped;
            for (int j = 0; j < f->shards[i]->n; j++) {
                const zl_st_tensor *t = &f->shards[i]->t[j];
                const char *want = json_string_value(json_object_get(wm, t->name));
                if (!want) {
                    rc = zl_set_error(ZL_EFORMAT, "%s: tensor '%s' of shard %s is not in the index's weight_map", path,
                                      t->name, shard_name[i]);
                    break;
                }
                if (strcmp(want, shard_name[i])) {
                    rc = zl_set_error(ZL_EFORMAT, "%s: tensor '%s' is in shard %s but the index puts it in %s", path,
                                      t->name, shard_name[i], want);
                    break;
                }
                f->t[k++] = *t;
            }
        }
        if (!rc) {
            qsort(f->t, (size_t)f->n, sizeof *f->t, cmp_names);
            /* every indexed tensor found, none twice */
            if ((size_t)f->n != nk) {
                json_object_foreach(wm, key, v) {
                    if (zl_st_find(f, key)) continue;
                    rc = zl_set_error(ZL_EFORMAT, "%s: tensor '%s' is not in its shard %s", path, key, json_string_value(v));
                    break;
                }
            }
            for (int i = 1; i < f->n && !rc; i++)
                if (!strcmp(f->t[i - 1].name, f->t[i].name))
                    rc = zl_set_error(ZL_EFORMAT, "%s: tensor '%s' is in two shards", path, f->t[i].name);
        }
    }
    free(shard_name);
done:
    json_decref(root);
    if (rc) {
        zl_st_close(f);
        return rc;
    }
    *out = f;
    return ZL_OK;
}

int zl_st_open(const char *path, zl_st_file **out) {
    *out = NULL;
    if (ends_with(path, ".safetensors.index.json")) return open_sharded(path, out);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return zl_set_error(ZL_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) { int e = errno; close(fd); return zl_set_error(ZL_EIO, "%s: %s", path, strerror(e)); }
    if (!S_ISREG(st.st_mode)) { close(fd); return zl_set_error(ZL_EIO, "%s: not a regular file", path); }
    zl_st_file *f = calloc(1, sizeof *f);
    if (!f) { close(fd); return zl_set_error(ZL_ENOMEM, "out of memory"); }
    f->path = strdup(path);
    f->size = (size_t)st.st_size;
    if (f->size > 0) {
        void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            zl_st_close(f);
            return zl_set_error(ZL_EIO, "%s: mmap: %s", path, strerror(e));
        }
        f->map = m;
        f->mapped = 1;
    }
    close(fd);
    int rc = parse_file(f);
    if (rc) { zl_st_close(f); return rc; }
    *out = f;
    return ZL_OK;
}

int zl_st_parse(const void *buf, size_t len, const char *label, zl_st_file **out) {
    *out = NULL;
    zl_st_file *f = calloc(1, sizeof *f);
    if (!f) return zl_set_error(ZL_ENOMEM, "out of memory");
    f->path = strdup(label ? label : "<buffer>");
    f->size = len;
    if (len) {
        f->map = malloc(len);
        if (!f->map) { zl_st_close(f); return zl_set_error(ZL_ENOMEM, "out of memory"); }
        memcpy(f->map, buf, len);
    }
    int rc = parse_file(f);
    if (rc) { zl_st_close(f); return rc; }
    *out = f;
    return ZL_OK;
}

const char *zl_st_path(const zl_st_file *f) { return f->path; }
int zl_st_count(const zl_st_file *f) { return f->n; }
int zl_st_is_mapped(const zl_st_file *f) { return f && f->mapped; }

int zl_st_drop_pages(const zl_st_file *f, const void *p, size_t n) {
    if (!f || !p || !n) return 0;
    for (int i = 0; i < f->n_shards; i++)
        if (zl_st_drop_pages(f->shards[i], p, n)) return 1;
    const uint8_t *q = p;
    if (!f->mapped || !f->map || q < f->map || n > f->size || q > f->map + (f->size - n)) return 0;
    /* whole pages inside the range only: a partial page may hold a neighbour's bytes */
    const uintptr_t ps = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t a = ((uintptr_t)q + ps - 1) & ~(ps - 1), b = ((uintptr_t)q + n) & ~(ps - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
    return 1;
}
const zl_st_tensor *zl_st_at(const zl_st_file *f, int i) { return (i >= 0 && i < f->n) ? &f->t[i] : NULL; }

const zl_st_tensor *zl_st_find(const zl_st_file *f, const char *name) {
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(f->t[mid].name, name);
        if (c == 0) return &f->t[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return NULL;
}

int zl_st_meta_count(const zl_st_file *f) { return f->n_meta; }
const char *zl_st_meta_key(const zl_st_file *f, int i) { return (i >= 0 && i < f->n_meta) ? f->meta_k[i] : NULL; }
const char *zl_st_meta_value(const zl_st_file *f, int i) { return (i >= 0 && i < f->n_meta) ? f->meta_v[i] : NULL; }

const char *zl_st_meta(const zl_st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_k[i], key) == 0) return f->meta_v[i];
    return NULL;
}

void zl_st_read_f32(const zl_st_tensor *t, float *dst) { zl_convert_to_f32(t->dtype, t->data, dst, (size_t)t->numel); }

float *zl_st_load_f32(const zl_st_file *f, const char *name, int64_t *numel_out) {
    const zl_st_tensor *t = zl_st_find(f, name);
    if (!t) { zl_set_error(ZL_ENOTFOUND, "%s: no tensor '%s'", f->path, name); return NULL; }
    float *p = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    if (!p) { zl_set_error(ZL_ENOMEM, "%s: out of memory reading '%s'", f->path, name); return NULL; }
    zl_st_read_f32(t, p);
    if (numel_out) *numel_out = t->numel;
    return p;
}

/* ------------------------------------------------------------------ writer */

int zl_same_file(const char *a, const char *b) {
    struct stat sa, sb;
    if (stat(a, &sa) != 0 || stat(b, &sb) != 0) return 0;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

typedef struct { const zl_st_entry *e; int align; } sorted_entry;

static int cmp_write(const void *a, const void *b) {
    const sorted_entry *x = a, *y = b;
    if (x->align != y->align) return y->align - x->align;
    return strcmp(x->e->name, y->e->name);
}


int zl_st_write(const char *path, const zl_st_entry *entries, int n, const zl_st_meta_kv *meta, int n_meta,
                const char *const *inputs, int n_inputs) {
    return zl_st_write_fix(path, entries, n, meta, n_meta, inputs, n_inputs, NULL, NULL);
}

int zl_st_write_fix(const char *path, const zl_st_entry *entries, int n, const zl_st_meta_kv *meta, int n_meta,
                    const char *const *inputs, int n_inputs, zl_st_header_fix fix, void *fix_ctx) {
    for (int i = 0; i < n_inputs; i++)
        if (inputs[i] && (strcmp(inputs[i], path) == 0 || zl_same_file(inputs[i], path)))
            return zl_set_error(ZL_EINVAL, "%s: refusing to overwrite an input file", path);

    sorted_entry *se = calloc(n ? (size_t)n : 1, sizeof *se);
    if (!se) return zl_set_error(ZL_ENOMEM, "%s: out of memory", path);
    for (int i = 0; i < n; i++) {
        se[i].e = &entries[i];
        se[i].align = zl_dtype_bits(entries[i].dtype);
    }
    qsort(se, (size_t)n, sizeof *se, cmp_write);

    int rc = ZL_OK;
    json_t *root = json_object();
    if (n_meta > 0 || n == 0) {
        json_t *m = json_object();
        for (int i = 0; i < n_meta; i++) json_object_set_new(m, meta[i].key, json_string(meta[i].value));
        json_object_set_new(root, "__metadata__", m);
    }
    uint64_t off = 0;
    size_t max_bytes = 0;
    for (int i = 0; i < n && !rc; i++) {
        const zl_st_entry *e = se[i].e;
        if (strcmp(e->name, "__metadata__") == 0 || json_object_get(root, e->name)) {
            rc = zl_set_error(ZL_EINVAL, "%s: duplicate tensor name '%s'", path, e->name);
            break;
        }
        int64_t nb = zl_st_nbytes(e->dtype, e->ndim, e->shape);
        if (nb < 0) { rc = zl_set_error(ZL_EINVAL, "%s: tensor '%s': invalid shape", path, e->name); break; }
        json_t *t = json_object(), *sh = json_array(), *of = json_array();
        json_object_set_new(t, "dtype", json_string(zl_dtype_name(e->dtype)));
        for (int d = 0; d < e->ndim; d++) json_array_append_new(sh, json_integer(e->shape[d]));
        json_object_set_new(t, "shape", sh);
        json_array_append_new(of, json_integer((json_int_t)off));
        json_array_append_new(of, json_integer((json_int_t)(off + (uint64_t)nb)));
        json_object_set_new(t, "data_offsets", of);
        json_object_set_new(root, e->name, t);
        off += (uint64_t)nb;
        if ((size_t)nb > max_bytes) max_bytes = (size_t)nb;
    }
    char *hdr = rc ? NULL : json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
    json_decref(root);
    if (rc) { free(se); return rc; }
    if (!hdr) { free(se); return zl_set_error(ZL_ENOMEM, "%s: cannot build header", path); }
    size_t hlen = strlen(hdr), padded = (hlen + 7) & ~(size_t)7;
    if (padded > ZL_ST_MAX_HEADER) { free(hdr); free(se); return zl_set_error(ZL_EINVAL, "%s: header would exceed 100 MB", path); }

    zl_afile af;
    /* large files stream to disk with direct I/O (fileio.h) */
    rc = off >= ((uint64_t)64 << 20) ? zl_afile_open_large(&af, path, inputs, n_inputs)
                                     : zl_afile_open(&af, path, inputs, n_inputs);
    if (rc) { free(hdr); free(se); return rc; }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    static const char spaces[8] = "        ";
    rc = zl_afile_write(&af, len8, 8);
    if (!rc) rc = zl_afile_write(&af, hdr, hlen);
    if (!rc) rc = zl_afile_write(&af, spaces, padded - hlen);
    if (!fix) {
        free(hdr);
        hdr = NULL;
    }
    void *scratch = NULL;
    for (int i = 0; i < n && !rc; i++) {
        const zl_st_entry *e = se[i].e;
        size_t nb = (size_t)zl_st_nbytes(e->dtype, e->ndim, e->shape);
        if (nb == 0) continue;
        if (e->data) {
            rc = zl_afile_write(&af, e->data, nb);
        } else if (e->fill) {
            if (!scratch) scratch = malloc(max_bytes);
            if (!scratch) { rc = zl_set_error(ZL_ENOMEM, "%s: out of memory", path); break; }
            int frc = e->fill(e->fill_ctx, scratch, nb);
            if (frc) { rc = zl_error_prefix(frc, "%s: tensor '%s'", path, e->name); break; }
            rc = zl_afile_write(&af, scratch, nb);
        } else {
            rc = zl_set_error(ZL_EINVAL, "%s: tensor '%s' has no data", path, e->name);
        }
    }
    free(scratch);
    free(se);
    if (!rc && fix) {
        rc = fix(fix_ctx, hdr, hlen);
        if (!rc) rc = zl_afile_patch(&af, 8, hdr, hlen);
    }
    free(hdr);
    if (rc) { zl_afile_abort(&af); return rc; }
    return zl_afile_commit(&af);
}
