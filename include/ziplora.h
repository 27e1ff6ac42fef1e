/* ziplora public API: the umbrella header. Each part lives in include/ziplora/. */
#ifndef ZIPLORA_H
#define ZIPLORA_H

#define ZIPLORA_VERSION "0.1.0"

#include "ziplora/core.h"
#include "ziplora/dora.h"
#include "ziplora/fileio.h"
#include "ziplora/flops.h"
#include "ziplora/image.h"
#include "ziplora/lora.h"
#include "ziplora/model.h"
#include "ziplora/pipeline.h"
#include "ziplora/progress.h"
#include "ziplora/sample.h"
#include "ziplora/safetensors.h"
#include "ziplora/synth.h"
#include "ziplora/text.h"
#include "ziplora/unet.h"
#include "ziplora/vae.h"
#include "ziplora/zip.h"
#include "ziplora/ziprun.h"

#endif
