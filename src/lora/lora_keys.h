/* Internal: LoRA key naming with a name table built once (lora_write.c), shared
 * with merge.c's lazy readers. */
#ifndef ZL_LORA_KEYS_H
#define ZL_LORA_KEYS_H

#include "models/names.h"
#include "ziplora/lora.h"
#include "ziplora/safetensors.h"

typedef struct {
    zl_family family;
    zl_lora_format format;
    zl_name_table *unet; /* only for kohya + SDXL */
} zl_key_ctx;

int zl_key_ctx_init(zl_key_ctx *k, zl_family family, zl_lora_format format, const zl_unet_config *cfg);
void zl_key_ctx_free(zl_key_ctx *k);
/* names (kohya UNet keys): 0 as kohya writes them for the family (ldm for SDXL,
 * diffusers for SD 1.x), 1 diffusers names, 2 ldm names. */
int zl_key_of(const zl_key_ctx *k, const zl_lora_layer *l, int names, char *buf, size_t n);

/* Values of a LoRA left in its mapped file (merge.c reads them, lora_load.c and
 * the lazy loader builds them). */
struct zl_lora_lazy {
    zl_st_file *f;
    int n;
    const zl_st_tensor **down, **up; /* per layer of the LoRA; NULL: values stay in memory */
    int mapped;                      /* the tensors live in a file mapping (zl_st_is_mapped) */
    char *path;                      /* the file, for messages */
};
/* Every value of t finite? Else ZL_ENUMERIC naming the file, the tensor, the
 * element and NaN/Inf (the eager loader's message). No copy for F16/BF16/F32. */
int zl_lora_check_values(const char *path, const zl_st_tensor *t);
/* Drop a tensor's pages from this process when they lie in the file's mapping
 * (zl_st_drop_pages: they stay in the page cache and are read again on use); a
 * copied buffer (a PyTorch file's strided tensor) keeps its pages. */
void zl_lora_drop_pages(const zl_lora_lazy *z, const zl_st_tensor *t);

#endif
