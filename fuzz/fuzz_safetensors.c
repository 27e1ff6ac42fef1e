/* libFuzzer harness for the safetensors reader, and through it the PyTorch zip
 * checkpoint reader (src/io/torch_zip.c: zip directory, the pickle machine,
 * tensor views) for inputs that start with a zip header. Each input is a whole file:
 * zl_st_parse validates it, then every tensor is read as float32 and looked up
 * by name, and every metadata entry is read back. Invariants the rest of the
 * library relies on (sorted names, offsets tiling the data buffer, byte counts
 * matching shape x dtype, errors naming the file) abort when broken, so the
 * fuzzer reports them as crashes just as it does ASan/UBSan findings. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ziplora/safetensors.h"

#define LABEL "fuzz.safetensors"

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_safetensors: invariant broken: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    zl_st_file *f = NULL;
    int rc = zl_st_parse(data, size, LABEL, &f);
    if (rc) {
        check(f == NULL, "failed parse returned a file");
        check(strncmp(zl_errmsg(), LABEL ": ", strlen(LABEL) + 2) == 0, "error message does not start with the file label");
        return 0;
    }
    check(f != NULL, "successful parse returned no file");
    check(strcmp(zl_st_path(f), LABEL) == 0, "path is not the label");

    int n = zl_st_count(f);
    check(n >= 0, "negative tensor count");
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        const zl_st_tensor *t = zl_st_at(f, i);
        check(t != NULL && t->name != NULL, "zl_st_at returned NULL inside the range");
        if (i > 0) check(strcmp(zl_st_at(f, i - 1)->name, t->name) < 0, "tensor names not strictly sorted");
        check(zl_st_find(f, t->name) == t, "zl_st_find does not return the tensor by its own name");
        check(t->ndim >= 0 && t->ndim <= ZL_MAX_DIMS, "ndim out of range");
        check(t->end >= t->begin && t->end - t->begin == t->nbytes, "nbytes disagrees with data_offsets");
        check((int64_t)t->nbytes == zl_st_nbytes(t->dtype, t->ndim, t->shape), "nbytes disagrees with shape x dtype");
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
        check(numel == t->numel, "numel is not the product of the shape");
        total += t->nbytes;

        /* The data never exceeds the input, so widening to f32 stays small. */
        check((uint64_t)t->numel <= size * 8, "more elements than input bits");
        float *buf = malloc(((size_t)t->numel + 1) * sizeof(float));
        check(buf != NULL, "malloc");
        zl_st_read_f32(t, buf);
        free(buf);

        int64_t got = -1;
        float *ld = zl_st_load_f32(f, t->name, &got);
        if (ld) check(got == t->numel, "zl_st_load_f32 element count");
        free(ld);
    }
    /* (a PyTorch checkpoint's tensors may share a storage, so only safetensors tile the file) */
    if (size < 4 || memcmp(data, "PK\x03\x04", 4)) check(total <= size, "tensor bytes exceed the file");
    check(zl_st_at(f, -1) == NULL && zl_st_at(f, n) == NULL, "zl_st_at outside the range");
    check(zl_st_find(f, "\x01not a tensor") == NULL, "zl_st_find invented a tensor");
    float *none = zl_st_load_f32(f, "\x01not a tensor", NULL);
    check(none == NULL, "zl_st_load_f32 of a missing tensor");

    int m = zl_st_meta_count(f);
    for (int i = 0; i < m; i++) {
        const char *k = zl_st_meta_key(f, i), *v = zl_st_meta_value(f, i);
        check(k != NULL && v != NULL, "metadata entry is NULL");
        if (i > 0) check(strcmp(zl_st_meta_key(f, i - 1), k) < 0, "metadata keys not strictly sorted");
        const char *look = zl_st_meta(f, k);
        check(look != NULL && strcmp(look, v) == 0, "zl_st_meta does not find the entry's value");
        (void)strlen(v);
    }
    check(zl_st_meta_key(f, m) == NULL && zl_st_meta_value(f, -1) == NULL, "metadata outside the range");
    zl_st_close(f);
    return 0;
}
