/* `ziplora run STAGE`: run one pipeline stage on tensors from a file, so any
 * model can be checked against another implementation. Each stage lives in
 * its own file (cmd_run_*.c). */
#include <stdio.h>
#include <string.h>

#include "cli.h"

int zl_run_unet(int argc, char **argv) __attribute__((weak));
int zl_run_text(int argc, char **argv) __attribute__((weak));
int zl_run_vae_encode(int argc, char **argv) __attribute__((weak));
int zl_run_vae_decode(int argc, char **argv) __attribute__((weak));

static void usage(FILE *f) {
    fprintf(f,
            "usage: ziplora run STAGE --model M --in IN.safetensors -o OUT.safetensors [options]\n\n"
            "stages:\n"
            "  unet        reads sample, timestep, encoder_hidden_states (+ text_embeds, time_ids for SDXL); writes out\n"
            "  text        reads ids_clip_l (+ ids_bigg for SDXL); writes prompt_embeds, pooled_prompt_embeds, te1_*, te2_*\n"
            "  vae-encode  reads image [B,3,H,W] in [-1,1]; writes latent_mean, latent_logvar\n"
            "  vae-decode  reads z [B,4,h,w]; writes decoded\n\n"
            "ziplora run STAGE --help for the options of a stage.\n");
}

int zl_cmd_run(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? ZL_EXIT_USAGE : ZL_EXIT_OK;
    }
    const char *s = argv[1];
    int (*fn)(int, char **) = NULL;
    if (!strcmp(s, "unet")) fn = zl_run_unet;
    else if (!strcmp(s, "text")) fn = zl_run_text;
    else if (!strcmp(s, "vae-encode")) fn = zl_run_vae_encode;
    else if (!strcmp(s, "vae-decode")) fn = zl_run_vae_decode;
    else return zl_cli_usage("run", "unknown stage '%s' (unet, text, vae-encode, vae-decode)", s);
    if (!fn) {
        fprintf(stderr, "ziplora run: stage '%s' is not available in this build\n", s);
        return ZL_EXIT_FAIL;
    }
    return fn(argc - 1, argv + 1);
}
