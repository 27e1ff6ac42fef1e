/* libFuzzer harness for the UNet config parser (diffusers unet/config.json).
 * The input is the JSON text. A config the parser accepts must describe a UNet
 * the name tables and the engine can be built from, so its sizes are checked
 * here; a broken invariant aborts and shows up as a crash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ziplora/model.h"

#define LABEL "fuzz/unet/config.json"

static void check(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "fuzz_unet_config: invariant broken: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* The parser takes a NUL-terminated string; an embedded NUL just ends it. */
    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = 0;
    zl_unet_config c;
    int rc = zl_unet_config_parse(s, LABEL, &c);
    free(s);
    if (rc) {
        check(strncmp(zl_errmsg(), LABEL ": ", strlen(LABEL) + 2) == 0, "error message does not start with the file label");
        return 0;
    }
    check(c.family == ZL_FAMILY_SDXL || c.family == ZL_FAMILY_SD1, "accepted config has no family");
    check(c.n_levels >= 1 && c.n_levels <= ZL_MAX_LEVELS, "n_levels out of range");
    check(c.layers_per_block >= 1, "layers_per_block < 1");
    check(c.in_channels >= 1 && c.out_channels >= 1 && c.cross_attention_dim >= 1 && c.time_embed_dim >= 1, "non-positive sizes");
    check(c.norm_num_groups >= 1, "norm_num_groups < 1");
    for (int i = 0; i < c.n_levels; i++) {
        check(c.block_out_channels[i] >= 1, "block_out_channels < 1");
        check(c.heads[i] >= 1 && c.block_out_channels[i] % c.heads[i] == 0, "heads do not divide the channels");
        check(c.block_out_channels[i] % c.norm_num_groups == 0, "groups do not divide the channels");
        check(c.transformer_depth[i] >= 0, "negative transformer depth");
        check(c.down_types[i] == ZL_BLOCK_PLAIN || c.down_types[i] == ZL_BLOCK_CROSSATTN, "bad down block type");
        check(c.up_types[i] == ZL_BLOCK_PLAIN || c.up_types[i] == ZL_BLOCK_CROSSATTN, "bad up block type");
    }
    check(c.transformer_depth_mid == c.transformer_depth[c.n_levels - 1], "mid depth is not the last level's");
    check(!c.has_text_time || c.family == ZL_FAMILY_SDXL, "text_time without SDXL family");
    (void)zl_family_name(c.family);
    return 0;
}
