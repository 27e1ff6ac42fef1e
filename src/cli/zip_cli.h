/* Flags shared by `zip` and `eval-merge`: the model, the two LoRAs, prompts,
 * reference images (files or folders) or generated references, seed,
 * resolution, fixed inputs. Owner: src/cli/zip_cli.c. */
#ifndef ZL_CLI_ZIP_CLI_H
#define ZL_CLI_ZIP_CLI_H

#include "cli.h"
#include "ziplora/ziprun.h"

typedef struct {
    char **v;
    int n, cap;
} zl_strlist;

typedef struct {
    zl_ziprun_params p;
    zl_strlist content_images, style_images;
} zl_zip_cli;

void zl_zip_cli_init(zl_zip_cli *z);
void zl_zip_cli_free(zl_zip_cli *z);
/* Consume one shared flag at argv[*i]: 1 consumed, 0 not ours, -1 usage error (printed). */
int zl_zip_cli_flag(const char *cmd, int argc, char **argv, int *i, zl_zip_cli *z);
/* After parsing: check the required flags; -1 on a usage error (printed). */
int zl_zip_cli_finish(const char *cmd, zl_zip_cli *z);
/* Help text for the shared flags. */
void zl_zip_cli_help(FILE *f);

#endif
