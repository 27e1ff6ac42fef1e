/* PyTorch zip checkpoints (torch.save since 1.6), read without running the
 * pickle; see torch_zip.c. The safetensors reader uses it for files that start
 * with a zip header, so every loader takes .ckpt/.pt/.pth/.bin files too. */
#ifndef ZL_IO_TORCH_ZIP_H
#define ZL_IO_TORCH_ZIP_H

#include <stddef.h>
#include <stdint.h>

#include "ziplora/safetensors.h"

typedef struct {
    char *name;
    zl_dtype dtype;
    int ndim;
    int64_t shape[ZL_MAX_DIMS];
    int64_t numel;
    size_t nbytes;
    const uint8_t *data;  /* into the file's bytes, or `owned` */
    uint64_t file_off;    /* offset of data in the file when not owned */
    uint8_t *owned;       /* a copy of a strided view, or NULL */
} zl_torch_tensor;

/* The tensors of the checkpoint's state dict (in pickle order). Errors name path. */
int zl_torch_zip_read(const uint8_t *map, size_t size, const char *path, zl_torch_tensor **out, int *n);
void zl_torch_tensors_free(zl_torch_tensor *t, int n);

#endif
