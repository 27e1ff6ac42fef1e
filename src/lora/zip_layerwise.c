/* The layerwise ZipLoRA mode (issue 5, scope 3): a placeholder until that
 * mode is written. It owns the symbol the driver (zip_run.c) calls for
 * `--mode layerwise`; the library is static, so the real implementation
 * replaces this file rather than overriding a weak symbol. */
#include "ziplora/ziprun.h"

int zl_ziprun_layerwise_available(void) { return 0; }

int zl_ziprun_mode_layerwise(zl_ziprun *r) {
    (void)r;
    return zl_set_error(ZL_EUNSUPPORTED, "zip: --mode layerwise is not implemented yet (use --mode full)");
}
