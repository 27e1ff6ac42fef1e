/* `ziplora eval-merge`: the ZipLoRA objective's first two terms (mse of the
 * merged model against the content LoRA on content inputs, and against the
 * style LoRA on style inputs) on held-out seeded draws, for any merged LoRAs
 * and the direct merge, on the same draws. A thin layer over
 * zl_zip_eval_merge (ziprun.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora_cli.h"
#include "zip_cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ziplora eval-merge --model M --content C --style S --merged OUT.safetensors [options]\n\n"
            "Measures how well merged LoRAs reproduce each input LoRA: on K held-out draws (one shared noise and\n"
            "timestep per draw, references round-robin, the same draws for every candidate),\n"
            "  content = mean mse(merged(x_c, p_c), content LoRA(x_c, p_c))\n"
            "  style   = mean mse(merged(x_s, p_s), style LoRA(x_s, p_s))\n"
            "Each merged LoRA is loaded as any tool loads it (folded, its text-encoder part included).\n"
            "Use the same --seed, --ref-count, --ref-steps, --resolution and prompts as the zip run to\n"
            "evaluate on the same references (the held-out draws never repeat the training draws).\n\n");
    zl_zip_cli_help(f);
    fprintf(f,
            "evaluation:\n"
            "  --merged FILE             a merged LoRA to evaluate (repeatable)\n"
            "  --direct                  also the direct merge (both LoRAs at weight 1)\n"
            "  --samples K               held-out draws (default 8)\n"
            "  --json                    print JSON instead of a table\n"
            "  -q, -v, --threads N       quiet, verbose, threads\n");
}

int zl_cmd_eval_merge(int argc, char **argv) {
    zl_zip_cli z;
    zl_zip_cli_init(&z);
    int code = ZL_EXIT_OK, direct = 0, json = 0, n_merged = 0;
    long samples = 8;
    const char **merged = calloc((size_t)argc, sizeof *merged);
    if (!merged) return zl_cli_fail(ZL_ENOMEM, "out of memory");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int c = zl_cli_common("eval-merge", argc, argv, &i);
        if (c < 0) { code = ZL_EXIT_USAGE; goto done; }
        if (c) continue;
        c = zl_zip_cli_flag("eval-merge", argc, argv, &i, &z);
        if (c < 0) { code = ZL_EXIT_USAGE; goto done; }
        if (c) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); goto done; }
        if (!strcmp(a, "--direct")) { direct = 1; continue; }
        if (!strcmp(a, "--json")) { json = 1; continue; }
        if (!strcmp(a, "--merged") || !strcmp(a, "--samples")) {
            if (i + 1 >= argc) { code = zl_cli_usage("eval-merge", "%s needs a value", a); goto done; }
            const char *v = argv[++i];
            if (!strcmp(a, "--merged")) merged[n_merged++] = v;
            else if (zl_cli_int("eval-merge", a, v, 1, 100000, &samples)) { code = ZL_EXIT_USAGE; goto done; }
            continue;
        }
        code = a[0] == '-' ? zl_cli_usage("eval-merge", "unknown option '%s'", a)
                           : zl_cli_usage("eval-merge", "unexpected argument '%s'", a);
        goto done;
    }
    if (zl_zip_cli_finish("eval-merge", &z)) { code = ZL_EXIT_USAGE; goto done; }
    if (!n_merged && !direct) { code = zl_cli_usage("eval-merge", "nothing to evaluate: give --merged FILE and/or --direct"); goto done; }
    z.p.progress = zl_get_verbosity() >= 0;
    zl_eval_row *rows = NULL;
    int nr = 0;
    int rc = zl_zip_eval_merge(&z.p, merged, n_merged, direct, (int)samples, &rows, &nr);
    if (rc) { code = zl_cli_fail(rc, NULL); goto done; }
    if (json) {
        printf("{\"samples\":%ld,\"seed\":%llu,\"rows\":[", samples, (unsigned long long)z.p.seed);
        for (int i = 0; i < nr; i++) {
            printf("%s{\"label\":", i ? "," : "");
            zl_lora_cli_json_str(stdout, rows[i].label);
            printf(",\"loss_content\":%.9g,\"loss_style\":%.9g,\"total\":%.9g,\"seconds\":%.3f}",
                   rows[i].loss_content, rows[i].loss_style, rows[i].total, rows[i].seconds);
        }
        printf("]}\n");
    } else {
        printf("held-out objective on %ld draws (seed %llu): mse vs each LoRA alone\n", samples,
               (unsigned long long)z.p.seed);
        printf("%-48s %14s %14s %14s\n", "merged LoRA", "content", "style", "total");
        for (int i = 0; i < nr; i++)
            printf("%-48s %14.6e %14.6e %14.6e\n", rows[i].label, rows[i].loss_content, rows[i].loss_style,
                   rows[i].total);
    }
    zl_eval_rows_free(rows, nr);
done:
    free(merged);
    zl_zip_cli_free(&z);
    return code;
}
