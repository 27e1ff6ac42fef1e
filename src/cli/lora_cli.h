/* Flags shared by the LoRA subcommands (inspect, merge, convert): which model's
 * names to use (--model), a PEFT adapter config (--adapter-config), output
 * dtype and format. Owner: the LoRA-writing helper (src/cli/lora_cli.c). */
#ifndef ZL_CLI_LORA_CLI_H
#define ZL_CLI_LORA_CLI_H

#include "cli.h"

typedef struct {
    const char *model;          /* --model M: a diffusers folder or single file (its UNet config names layers) */
    const char *adapter_config; /* --adapter-config FILE */
    zl_unet_config cfg;
    int have_cfg;
    int allow_dora; /* read DoRA magnitudes (convert bakes them with --model) */
    int bake_dora;  /* with --model: zl_lora_cli_load reads DoRA and bakes it against the model */
} zl_lora_cli_flags;

/* Consume --model / --adapter-config at argv[*i]: 1 consumed, 0 not ours, -1 usage error (printed). */
int zl_lora_cli_flag(const char *cmd, int argc, char **argv, int *i, zl_lora_cli_flags *f);
/* After parsing: read the model's UNet config if --model was given. */
int zl_lora_cli_prepare(zl_lora_cli_flags *f);
int zl_lora_cli_load(const char *path, const zl_lora_cli_flags *f, zl_lora **out);
/* "f32" | "f16" | "bf16" (also "fp16", "float16", ...): 0 ok, -1 usage error printed. */
int zl_lora_cli_dtype(const char *cmd, const char *s, zl_dtype *out);
/* JSON string escaping for --json output. */
void zl_lora_cli_json_str(FILE *fp, const char *s);

#endif
