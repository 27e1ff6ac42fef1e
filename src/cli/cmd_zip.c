/* `ziplora zip --model M --content C --style S -o OUT`: learn the ZipLoRA
 * mergers and write the merged standard LoRA, with the mergers, a report, a
 * plot and a preview on request. A thin layer over zl_zip_run (ziprun.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zip_cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ziplora zip --model M --content C.safetensors --style S.safetensors -o OUT.safetensors [options]\n\n"
            "Learns per-layer mergers m_c, m_s (ZipLoRA, Shah et al. 2023) so that ONE merged LoRA\n"
            "  dW = dW_c diag(m_c) + dW_s diag(m_s)\n"
            "reproduces the content LoRA on content inputs and the style LoRA on style inputs, while\n"
            "lambda * sum_layers mean|m_c m_s| pushes their columns apart. Writes a standard LoRA of rank\n"
            "r_c + r_s per shared layer that any LoRA loader reads.\n\n");
    zl_zip_cli_help(f);
    fprintf(f,
            "optimisation (the paper's defaults):\n"
            "  --steps N                 Adam steps (default 100; stops early when the similarity reaches 0)\n"
            "  --lr X                    Adam learning rate (default 0.01)\n"
            "  --lambda X                weight of the similarity term (default 0.01)\n"
            "  --mode auto|full|layerwise  default auto: full mode when its estimated time fits --budget\n"
            "  --budget T                time budget for auto: minutes, or with a suffix s/m/h (default 30m)\n"
            "  --keep-activations        keep every block's activations for the backward (faster, more memory)\n"
            "  --init-mergers FILE       start from these mergers (a --mergers-out file of an earlier run, e.g. one\n"
            "                            stopped with Ctrl-C) instead of 1; layers it does not name start at 1\n"
            "Ctrl-C (or SIGTERM) during the optimisation stops after the current step and writes the outputs\n"
            "from the mergers so far (the report says 'interrupted'; the preview is skipped); a second one\n"
            "aborts without output.\n"
            "layerwise mode (docs/zip.md):\n"
            "  --lw-draws N              draws whose layer inputs are captured (default 4)\n"
            "  --capture-mb MB           memory for the captured input statistics per pass (default 4096);\n"
            "                            more layers than fit are captured in several passes\n"
            "  --lw-full-steps N         full-mode steps after the per-layer solves (hybrid; default 0)\n"
            "outputs (all written together at the end; on failure none is left):\n"
            "  -o, --output FILE         the merged LoRA\n"
            "  --format kohya|peft       its layout (default kohya)\n"
            "  --dtype f32|f16|bf16      its dtype (default: the inputs' common dtype, else f32)\n"
            "  --style-scale W           multiply the style half by W (style strength, paper Fig. 9; default 1)\n"
            "  --mergers-out FILE        the learned mergers (safetensors, docs/formats.md)\n"
            "  --report FILE.json        loss curve, per-layer similarity and column cosine before/after, mode,\n"
            "                            parameters, input sha256, wall time, peak memory\n"
            "  --plot FILE.svg|png       loss curve and per-layer similarity/cosine before and after\n"
            "  --preview N               a PNG grid: rows = N prompts (1 to 8; the subject in the style, then\n"
            "                            recontextualizations), columns = subject alone, style alone, direct merge, ZipLoRA\n"
            "  --preview-out FILE.png    where (default: OUT without .safetensors + .preview.png)\n"
            "  --preview-steps N         sampler steps per preview image (default: --ref-steps)\n"
            "  -q, -v, --threads N       quiet, verbose, threads\n");
}

/* "30", "30m", "90s", "1.5h" -> seconds (plain numbers are minutes). */
static int parse_budget(const char *v, double *out) {
    char *end;
    double x = strtod(v, &end);
    if (end == v || !isfinite(x) || x <= 0) return -1;
    double mul = 60;
    if (!strcmp(end, "s")) mul = 1;
    else if (!strcmp(end, "m") || !*end) mul = 60;
    else if (!strcmp(end, "h")) mul = 3600;
    else return -1;
    *out = x * mul;
    return 0;
}

int zl_cmd_zip(int argc, char **argv) {
    zl_zip_cli z;
    zl_zip_cli_init(&z);
    zl_ziprun_params *p = &z.p;
    int code = ZL_EXIT_OK;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int c = zl_cli_common("zip", argc, argv, &i);
        if (c < 0) { code = ZL_EXIT_USAGE; goto done; }
        if (c) continue;
        c = zl_zip_cli_flag("zip", argc, argv, &i, &z);
        if (c < 0) { code = ZL_EXIT_USAGE; goto done; }
        if (c) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            goto done;
        }
        if (!strcmp(a, "--keep-activations")) {
            p->grad_mode = ZL_UNET_GRAD_KEEP;
            continue;
        }
        static const char *const with_val[] = {"-o", "--output", "--steps", "--lr", "--lambda", "--mode", "--budget",
                                               "--format", "--dtype", "--style-scale", "--mergers-out", "--report",
                                               "--init-mergers",
                                               "--plot", "--preview", "--preview-out", "--preview-steps", "--lw-draws",
                                               "--capture-mb", "--lw-full-steps"};
        int known = 0;
        for (size_t k = 0; k < sizeof with_val / sizeof *with_val; k++)
            if (!strcmp(a, with_val[k])) known = 1;
        if (!known) {
            code = a[0] == '-' ? zl_cli_usage("zip", "unknown option '%s'", a)
                               : zl_cli_usage("zip", "unexpected argument '%s' (use --content and --style)", a);
            goto done;
        }
        if (i + 1 >= argc) { code = zl_cli_usage("zip", "%s needs a value", a); goto done; }
        const char *v = argv[++i];
        long n;
        double d;
        if (!strcmp(a, "-o") || !strcmp(a, "--output")) p->output = v;
        else if (!strcmp(a, "--mergers-out")) p->mergers_out = v;
        else if (!strcmp(a, "--init-mergers")) p->init_mergers = v;
        else if (!strcmp(a, "--report")) p->report = v;
        else if (!strcmp(a, "--plot")) p->plot = v;
        else if (!strcmp(a, "--preview-out")) p->preview_out = v;
        else if (!strcmp(a, "--mode")) {
            if (strcmp(v, "auto") && strcmp(v, "full") && strcmp(v, "layerwise")) {
                code = zl_cli_usage("zip", "--mode expects auto, full or layerwise, got '%s'", v);
                goto done;
            }
            p->mode = v;
        } else if (!strcmp(a, "--budget")) {
            if (parse_budget(v, &p->budget_s)) {
                code = zl_cli_usage("zip", "--budget expects a positive time (minutes, or 90s / 30m / 1.5h), got '%s'", v);
                goto done;
            }
        } else if (!strcmp(a, "--steps")) {
            if (zl_cli_int("zip", a, v, 1, 1000000, &n)) { code = ZL_EXIT_USAGE; goto done; }
            p->steps = (int)n;
        } else if (!strcmp(a, "--lw-draws")) {
            if (zl_cli_int("zip", a, v, 1, 1000, &n)) { code = ZL_EXIT_USAGE; goto done; }
            p->lw_draws = (int)n;
        } else if (!strcmp(a, "--lw-full-steps")) {
            if (zl_cli_int("zip", a, v, 0, 1000000, &n)) { code = ZL_EXIT_USAGE; goto done; }
            p->lw_full_steps = (int)n;
        } else if (!strcmp(a, "--capture-mb")) {
            if (zl_cli_float("zip", a, v, &d)) { code = ZL_EXIT_USAGE; goto done; }
            if (!(d >= 1)) { code = zl_cli_usage("zip", "--capture-mb must be at least 1, got '%s'", v); goto done; }
            p->lw_capture_mb = d;
        } else if (!strcmp(a, "--preview")) {
            if (zl_cli_int("zip", a, v, 0, 8, &n)) { code = ZL_EXIT_USAGE; goto done; }
            p->preview = (int)n;
        } else if (!strcmp(a, "--preview-steps")) {
            if (zl_cli_int("zip", a, v, 1, 1000, &n)) { code = ZL_EXIT_USAGE; goto done; }
            p->preview_steps = (int)n;
        } else if (!strcmp(a, "--lr") || !strcmp(a, "--lambda") || !strcmp(a, "--style-scale")) {
            if (zl_cli_float("zip", a, v, &d)) { code = ZL_EXIT_USAGE; goto done; }
            if (!strcmp(a, "--lr")) {
                if (!(d > 0)) { code = zl_cli_usage("zip", "--lr must be positive, got '%s'", v); goto done; }
                p->lr = d;
            } else if (!strcmp(a, "--lambda")) {
                if (d < 0) { code = zl_cli_usage("zip", "--lambda must be >= 0, got '%s'", v); goto done; }
                p->lambda = d;
            } else {
                p->style_scale = (float)d;
            }
        } else if (!strcmp(a, "--format")) {
            int f = zl_lora_format_parse(v);
            if (f < 0) { code = zl_cli_usage("zip", "--format expects kohya or peft, got '%s'", v); goto done; }
            p->format = (zl_lora_format)f;
        } else if (!strcmp(a, "--dtype")) {
            zl_dtype dt = ZL_DT_INVALID;
            if (!strcmp(v, "f32") || !strcmp(v, "fp32") || !strcmp(v, "float32")) dt = ZL_DT_F32;
            else if (!strcmp(v, "f16") || !strcmp(v, "fp16") || !strcmp(v, "float16")) dt = ZL_DT_F16;
            else if (!strcmp(v, "bf16") || !strcmp(v, "bfloat16")) dt = ZL_DT_BF16;
            else { code = zl_cli_usage("zip", "--dtype expects f32, f16 or bf16, got '%s'", v); goto done; }
            p->dtype = dt;
        }
    }
    if (zl_zip_cli_finish("zip", &z)) { code = ZL_EXIT_USAGE; goto done; }
    if (!p->output) { code = zl_cli_usage("zip", "no output file given (-o OUT)"); goto done; }
    p->progress = zl_get_verbosity() >= 0;
    int rc = zl_zip_run(p);
    if (rc) code = zl_cli_fail(rc, NULL);
done:
    zl_zip_cli_free(&z);
    return code;
}
