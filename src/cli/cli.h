/* Shared pieces of the command-line tool: the subcommand signature, exit
 * codes (0 ok, 1 runtime failure, 2 usage error) and option helpers. */
#ifndef ZL_CLI_H
#define ZL_CLI_H

#include "ziplora.h"

#define ZL_EXIT_OK 0
#define ZL_EXIT_FAIL 1
#define ZL_EXIT_USAGE 2

/* Each subcommand: argv[0] is the subcommand name. */
typedef int (*zl_cmd_fn)(int argc, char **argv);

/* Print "ziplora: <msg>" (and the library error, if rc != 0) to stderr and
 * return the exit code for rc: ZL_EINVAL -> 2, others -> 1. */
int zl_cli_fail(int rc, const char *context);
/* Print a usage error "ziplora CMD: msg\nTry 'ziplora CMD --help'." and return 2. */
int zl_cli_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parse numbers strictly; on failure print a usage error naming the flag. */
int zl_cli_int(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out);
int zl_cli_float(const char *cmd, const char *flag, const char *s, double *out);
/* Common flags handled by every subcommand: -q, -v, --threads N. Returns 1 if
 * argv[*i] was consumed (advancing *i over a value), 0 if not, -1 on error. */
int zl_cli_common(const char *cmd, int argc, char **argv, int *i);

/* --precision auto|f32|bf16x3|bf16 (generate, zip, eval-merge and the run
 * stages): the precision of the products with model weights
 * (zl_set_matmul_precision). Same return convention as zl_cli_common; *prec
 * is set to a zl_matmul_precision or ZL_CLI_PREC_AUTO. */
#define ZL_CLI_PREC_AUTO (-1)
int zl_cli_precision_flag(const char *cmd, int argc, char **argv, int *i, int *prec);
/* auto: bf16x3 where this process has AMX-BF16 tiles, else f32. */
int zl_cli_resolve_precision(int prec);
/* Set it (resolved), and say so when bf16/bf16x3 has no tiles to run on here. */
void zl_cli_set_precision(const char *cmd, int prec);
/* Its name: "f32", "bf16x3" or "bf16". */
const char *zl_cli_precision_name(int prec);
#define ZL_CLI_PRECISION_HELP                                                                                           \
    "  --precision P          how products with the model's weights are computed: auto (default: bf16x3\n"       \
    "                         where the CPU has Intel AMX-BF16 tile units, else f32), f32, bf16x3 or bf16.\n"     \
    "                         bf16x3 splits each factor into two bfloat16 parts and sums three tile products\n"  \
    "                         in float32 (about 2^-17 per product; a UNet's output within about 1e-5 of\n"       \
    "                         float32's; SDXL 1.2-1.4x faster). bf16 keeps one part (2-3x faster; the output\n"    \
    "                         moves by about 1 %%, as with PyTorch's bfloat16 autocast). Without AMX-BF16\n"      \
    "                         all are float32\n"

/* The noise-schedule flags of generate, zip and eval-merge: --prediction P,
 * --spacing S, --zero-snr, --no-zero-snr. Same return convention as
 * zl_cli_common; names are checked here (usage error naming the flag). */
int zl_cli_sched_flag(const char *cmd, int argc, char **argv, int *i, zl_sched_override *o);
/* Their --help lines. */
#define ZL_CLI_SCHED_HELP                                                                                              \
    "  --prediction P         what the model predicts: epsilon or v_prediction (default: the model's;\n"            \
    "                         a single file with a 'v_pred' key, or a diffusers scheduler config saying\n"          \
    "                         v_prediction, is run as v-prediction)\n"                                              \
    "  --zero-snr, --no-zero-snr   zero terminal SNR schedule (rescale_betas_zero_snr; default: the\n"             \
    "                         model's: on for a single file with a 'ztsnr' key). On, it also selects\n"            \
    "                         trailing spacing unless --spacing is given\n"                                         \
    "  --spacing S            timestep spacing: leading (SD/SDXL's default), trailing, linspace\n"

/* Split a --lora value "FILE[:WEIGHT]"; the caller frees *path (also on error). */
int zl_cli_lora_arg(const char *arg, char **path, float *w);

#endif
