/* The ziplora command-line tool: dispatches to one function per subcommand.
 * Subcommands live in src/cli/cmd_*.c; a subcommand whose file is not part of
 * this build is reported as unavailable (weak symbols). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#define ZL_CMD(name) int name(int argc, char **argv) __attribute__((weak));
ZL_CMD(zl_cmd_inspect)
ZL_CMD(zl_cmd_merge)
ZL_CMD(zl_cmd_convert)
ZL_CMD(zl_cmd_zip)
ZL_CMD(zl_cmd_eval_merge)
ZL_CMD(zl_cmd_generate)
ZL_CMD(zl_cmd_run)

static const struct {
    const char *name;
    const char *help;
} g_cmds[] = {
    {"inspect", "show a LoRA's layers, ranks, norms, sparsity; compare two LoRAs"},
    {"merge", "merge two LoRAs exactly (rank-concatenated), with weights or mergers"},
    {"convert", "rewrite a LoRA in kohya or PEFT layout"},
    {"zip", "learn ZipLoRA mergers for a subject and a style LoRA"},
    {"eval-merge", "measure how well a merged LoRA reproduces each input LoRA"},
    {"generate", "text to image with any LoRAs"},
    {"run", "run one pipeline stage on tensors from a file (unet, text, vae-encode, vae-decode)"},
};

static zl_cmd_fn lookup(const char *name) {
    if (!strcmp(name, "inspect")) return zl_cmd_inspect;
    if (!strcmp(name, "merge")) return zl_cmd_merge;
    if (!strcmp(name, "convert")) return zl_cmd_convert;
    if (!strcmp(name, "zip")) return zl_cmd_zip;
    if (!strcmp(name, "eval-merge")) return zl_cmd_eval_merge;
    if (!strcmp(name, "generate")) return zl_cmd_generate;
    if (!strcmp(name, "run")) return zl_cmd_run;
    return NULL;
}

static void usage(FILE *f) {
    fprintf(f, "ziplora %s: ZipLoRA and LoRA tools for Stable Diffusion XL and SD 1.x, on the CPU.\n\n"
               "usage: ziplora COMMAND [options]   (ziplora COMMAND --help for details)\n\ncommands:\n",
            ZIPLORA_VERSION);
    for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++)
        if (lookup(g_cmds[i].name)) fprintf(f, "  %-11s %s\n", g_cmds[i].name, g_cmds[i].help);
    fprintf(f, "\ncommon options: -q (quiet), -v (verbose), --threads N\n");
}

/* OpenMP's default wait policy spins at every barrier. When another process shares the
 * cores, a spinning thread holds the core its descheduled partner needs, and work can take
 * 1.2-2x as long (bench/RESULTS.md, "contention"); sleeping instead costs 1-4 % on a quiet
 * machine at SDXL sizes. libgomp reads the policy once, before main, so the first
 * start sets OMP_WAIT_POLICY=passive and executes itself again. A policy (or spin count)
 * the user set is kept; if the re-execution fails, the run goes on as it is. */
static void passive_wait_policy(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    if (setenv("OMP_WAIT_POLICY", "passive", 1)) return;
    execv("/proc/self/exe", argv);
}

int main(int argc, char **argv) {
    passive_wait_policy(argv);
    if (argc < 2) {
        usage(stderr);
        return ZL_EXIT_USAGE;
    }
    const char *c = argv[1];
    if (!strcmp(c, "help") && argc > 2) { /* "ziplora help CMD" = "ziplora CMD --help" */
        zl_cmd_fn fn = lookup(argv[2]);
        if (!fn) {
            fprintf(stderr, "ziplora: unknown command '%s'\n\n", argv[2]);
            usage(stderr);
            return ZL_EXIT_USAGE;
        }
        char *hargv[3] = {argv[2], (char *)"--help", NULL};
        return fn(2, hargv);
    }
    if (!strcmp(c, "--help") || !strcmp(c, "-h") || !strcmp(c, "help")) {
        usage(stdout);
        return ZL_EXIT_OK;
    }
    if (!strcmp(c, "--version")) {
        const char *wp = getenv("OMP_WAIT_POLICY"), *sc = getenv("GOMP_SPINCOUNT");
        printf("ziplora %s\nOpenMP wait policy: %s%s%s\n", ZIPLORA_VERSION, wp ? wp : "the runtime's default",
               sc ? ", GOMP_SPINCOUNT=" : "", sc ? sc : "");
        printf("Intel AMX-BF16 tiles: %s\n", zl_bf16_units() ? "yes (--precision auto = bf16x3)"
                                                             : "no (--precision auto = f32; bf16/bf16x3 compute f32)");
        return ZL_EXIT_OK;
    }
    zl_cmd_fn fn = lookup(c);
    if (!fn) {
        fprintf(stderr, "ziplora: unknown command '%s'\n\n", c);
        usage(stderr);
        return ZL_EXIT_USAGE;
    }
    zl_set_threads(0);
    zl_cleanup_on_signals(); /* Ctrl-C leaves no temporary file behind */
    return fn(argc - 1, argv + 1);
}
