/* `ziplora inspect A [B]`: per layer kind, shape, rank, alpha, scale, ||dW||,
 * the paper's sparsity observation, and with two LoRAs the per-layer column
 * cosine similarity (paper Fig. 3). A table on stdout, --json for machines,
 * --plot FILE.svg or FILE.png for people. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora_cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ziplora inspect A.safetensors [B.safetensors] [--json] [--plot FILE.svg|png] [options]\n\n"
            "Per layer: kind, shape, rank, alpha, scale = alpha/rank, ||dW||_F (dW = scale * up @ down), and the\n"
            "relative change ||dW - dW_pruned|| / ||dW|| when the 80 %% / 90 %% smallest-magnitude entries of dW\n"
            "are zeroed. With two LoRAs also the mean |cosine| between matching columns (input features) of\n"
            "dW_A and dW_B per layer, and its mean over the shared layers.\n\n"
            "options:\n"
            "  --json                machine-readable output on stdout\n"
            "  --plot FILE.svg|png   draw per-layer similarity and sparsity (SVG, or a PNG of it)\n"
            "  --model M             name layers with this model's UNet config; a DoRA LoRA is shown as baked\n"
            "                        against its weights (as convert --model writes it)\n"
            "  --adapter-config F    PEFT adapter_config.json for the inputs' alpha\n"
            "  -q, -v, --threads N   quiet, verbose, threads\n");
}

static const char *part_name(zl_part p) { return p == ZL_PART_UNET ? "unet" : p == ZL_PART_TE1 ? "te1" : "te2"; }

static const char *layout_name(zl_lora_layout l) {
    switch (l) {
    case ZL_LAYOUT_KOHYA_LDM: return "kohya (ldm names)";
    case ZL_LAYOUT_KOHYA_DIFFUSERS: return "kohya (diffusers names)";
    case ZL_LAYOUT_PEFT: return "peft";
    case ZL_LAYOUT_DIFFUSERS_OLD: return "diffusers (old)";
    case ZL_LAYOUT_COMFY: return "comfyui (ldm names)";
    case ZL_LAYOUT_MIXED: return "mixed";
    default: return "unknown";
    }
}

static void shape_str(const zl_lora_layer *l, char *b, size_t n) {
    if (l->kind == ZL_LORA_CONV) snprintf(b, n, "%dx%dx%dx%d", l->out_features, l->in_features, l->kh, l->kw);
    else snprintf(b, n, "%dx%d", l->out_features, l->in_features);
}

static void json_num(FILE *fp, double v) {
    if (isfinite(v)) fprintf(fp, "%.17g", v);
    else fprintf(fp, "null");
}

static void json_side(FILE *fp, const zl_lora_layer *l, const zl_layer_stats *s) {
    if (!l) {
        fprintf(fp, "null");
        return;
    }
    fprintf(fp, "{\"rank\":%d,\"alpha\":", l->rank);
    json_num(fp, l->alpha);
    fprintf(fp, ",\"scale\":");
    json_num(fp, zl_lora_scale(l));
    fprintf(fp, ",\"dtype\":\"%s\",\"norm\":", zl_dtype_name(l->dtype));
    json_num(fp, s->norm);
    fprintf(fp, ",\"prune80\":");
    json_num(fp, s->prune80);
    fprintf(fp, ",\"prune90\":");
    json_num(fp, s->prune90);
    fprintf(fp, "}");
}

/* What the file's metadata says about its training (kohya ss_*, modelspec.*); each NULL if absent. */
typedef struct {
    const char *title, *base, *resolution, *clip_skip, *epochs, *steps, *trigger;
    char **tags;
    int n_tags;
} training_info;

static const char *meta_set(const zl_lora *l, const char *k) {
    const char *v = zl_lora_meta(l, k);
    return v && *v && strcmp(v, "None") ? v : NULL;
}

static void training_of(const zl_lora *l, training_info *t) {
    memset(t, 0, sizeof *t);
    t->title = meta_set(l, "modelspec.title") ? meta_set(l, "modelspec.title") : meta_set(l, "ss_output_name");
    t->base = meta_set(l, "ss_sd_model_name") ? meta_set(l, "ss_sd_model_name") : meta_set(l, "ss_base_model_version");
    t->resolution = meta_set(l, "modelspec.resolution") ? meta_set(l, "modelspec.resolution") : meta_set(l, "ss_resolution");
    t->clip_skip = meta_set(l, "ss_clip_skip");
    t->epochs = meta_set(l, "ss_epoch");
    t->steps = meta_set(l, "ss_steps");
    t->trigger = meta_set(l, "modelspec.trigger_phrase");
    if (zl_lora_top_tags(l, 8, &t->tags, &t->n_tags) != ZL_OK) t->n_tags = 0;
}

static void training_free(training_info *t) {
    for (int i = 0; i < t->n_tags; i++) free(t->tags[i]);
    free(t->tags);
}

static void print_json(const zl_lora *a, const zl_lora *b, const zl_inspect_result *r) {
    FILE *fp = stdout;
    fprintf(fp, "{\"files\":[");
    for (int k = 0; k < (b ? 2 : 1); k++) {
        const zl_lora *l = k ? b : a;
        fprintf(fp, "%s{\"path\":", k ? "," : "");
        zl_lora_cli_json_str(fp, l->path ? l->path : "");
        fprintf(fp, ",\"family\":\"%s\",\"layout\":\"%s\",\"layers\":%d", zl_family_name(l->family),
                layout_name(l->layout), l->n);
        fprintf(fp, ",\"lycoris\":{\"loha\":%d,\"lokr\":%d,\"tucker\":%d}", l->n_loha, l->n_lokr, l->n_tucker);
        training_info t;
        training_of(l, &t);
        const char *names[7] = {"title", "base_model", "resolution", "clip_skip", "epochs", "steps", "trigger_phrase"};
        const char *vals[7] = {t.title, t.base, t.resolution, t.clip_skip, t.epochs, t.steps, t.trigger};
        fprintf(fp, ",\"training\":{");
        for (int i = 0; i < 7; i++) {
            fprintf(fp, "%s\"%s\":", i ? "," : "", names[i]);
            if (vals[i]) zl_lora_cli_json_str(fp, vals[i]);
            else fprintf(fp, "null");
        }
        fprintf(fp, ",\"top_tags\":[");
        for (int i = 0; i < t.n_tags; i++) {
            if (i) fprintf(fp, ",");
            zl_lora_cli_json_str(fp, t.tags[i]);
        }
        fprintf(fp, "]}}");
        training_free(&t);
    }
    fprintf(fp, "],\n\"layers\":[\n");
    for (int i = 0; i < r->n; i++) {
        const zl_inspect_row *q = &r->rows[i];
        const zl_lora_layer *l = q->a ? q->a : q->b;
        fprintf(fp, "%s{\"part\":\"%s\",\"module\":", i ? ",\n" : "", part_name(q->part));
        zl_lora_cli_json_str(fp, q->module);
        fprintf(fp, ",\"kind\":\"%s\",\"shape\":", l->kind == ZL_LORA_CONV ? "conv" : "linear");
        if (l->kind == ZL_LORA_CONV) fprintf(fp, "[%d,%d,%d,%d]", l->out_features, l->in_features, l->kh, l->kw);
        else fprintf(fp, "[%d,%d]", l->out_features, l->in_features);
        fprintf(fp, ",\"a\":");
        json_side(fp, q->a, &q->sa);
        if (b) {
            fprintf(fp, ",\"b\":");
            json_side(fp, q->b, &q->sb);
            fprintf(fp, ",\"mean_abs_cos\":");
            json_num(fp, q->cos);
        }
        fprintf(fp, "}");
    }
    fprintf(fp, "\n]");
    if (b) {
        fprintf(fp, ",\n\"n_common\":%d,\"mean_abs_cos\":", r->n_common);
        json_num(fp, r->mean_cos);
    }
    fprintf(fp, "}\n");
}

static void print_side(const zl_lora_layer *l, const zl_layer_stats *s) {
    if (!l) {
        printf(" %5s %7s %6s %10s %6s %6s", "-", "-", "-", "-", "-", "-");
        return;
    }
    printf(" %5d %7.4g %6.3g %10.4g %5.1f%% %5.1f%%", l->rank, (double)l->alpha, (double)zl_lora_scale(l), s->norm,
           100 * s->prune80, 100 * s->prune90);
}

static void print_table(const zl_lora *a, const zl_lora *b, const zl_inspect_result *r) {
    int w = 20;
    for (int i = 0; i < r->n; i++) {
        int n = (int)strlen(r->rows[i].module);
        if (n > w) w = n;
    }
    for (int k = 0; k < (b ? 2 : 1); k++) {
        const zl_lora *l = k ? b : a;
        printf("%s: %s  (family %s, layout %s, %d layers)\n", k ? "B" : "A", l->path ? l->path : "?",
               zl_family_name(l->family), layout_name(l->layout), l->n);
        training_info t;
        training_of(l, &t);
        if (t.title) printf("   title: %s\n", t.title);
        if (l->n_loha || l->n_lokr || l->n_tucker)
            printf("   LyCORIS: %d LoHa and %d LoKr layers; %d layers with a Tucker core (lora_mid, hada_t1/t2, "
                   "lokr_t2); all shown as their exact LoRA form\n",
                   l->n_loha, l->n_lokr, l->n_tucker);
        if (t.base || t.resolution || t.clip_skip || t.epochs || t.steps) {
            printf("   trained:");
            const char *sep = " ";
            if (t.base) printf("%son %s", sep, t.base), sep = ", ";
            if (t.resolution) printf("%sat %s", sep, t.resolution), sep = ", ";
            if (t.clip_skip) printf("%sclip skip %s", sep, t.clip_skip), sep = ", ";
            if (t.epochs) printf("%s%s epochs", sep, t.epochs), sep = ", ";
            if (t.steps) printf("%s%s steps", sep, t.steps);
            printf("\n");
        }
        if (t.trigger) printf("   trigger phrase: %s\n", t.trigger);
        if (t.n_tags) {
            printf("   most frequent training tags:");
            for (int i = 0; i < t.n_tags; i++) printf("%s %s", i ? "," : "", t.tags[i]);
            printf("\n");
        }
        training_free(&t);
    }
    printf("\n%-4s %-*s %-6s %-14s", "part", w, "module", "kind", "shape");
    const char *hdr = " %5s %7s %6s %10s %6s %6s";
    printf(hdr, "rank", "alpha", "scale", "||dW||", "-80%", "-90%");
    if (b) {
        printf(" |");
        printf(hdr, "rank", "alpha", "scale", "||dW||", "-80%", "-90%");
        printf(" | %7s", "|cos|");
    }
    printf("\n");
    for (int i = 0; i < r->n; i++) {
        const zl_inspect_row *q = &r->rows[i];
        const zl_lora_layer *l = q->a ? q->a : q->b;
        char sh[64];
        shape_str(l, sh, sizeof sh);
        printf("%-4s %-*s %-6s %-14s", part_name(q->part), w, q->module, l->kind == ZL_LORA_CONV ? "conv" : "linear", sh);
        print_side(q->a, &q->sa);
        if (b) {
            printf(" |");
            print_side(q->b, &q->sb);
            if (isfinite(q->cos)) printf(" | %7.4f", q->cos);
            else printf(" | %7s", "-");
        }
        printf("\n");
    }
    printf("\n-80%%/-90%%: relative change of dW when its 80%%/90%% smallest-magnitude entries are zeroed.\n");
    if (b) {
        if (r->n_common) printf("mean |cos| between matching columns over %d shared layers: %.6f\n", r->n_common, r->mean_cos);
        else printf("the two LoRAs share no layer\n");
    }
}

static const char *base(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

int zl_cmd_inspect(int argc, char **argv) {
    const char *pa = NULL, *pb = NULL, *plot = NULL;
    int json = 0;
    zl_lora_cli_flags lf;
    memset(&lf, 0, sizeof lf);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int c = zl_cli_common("inspect", argc, argv, &i);
        if (c < 0) return ZL_EXIT_USAGE;
        if (c) continue;
        c = zl_lora_cli_flag("inspect", argc, argv, &i, &lf);
        if (c < 0) return ZL_EXIT_USAGE;
        if (c) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return ZL_EXIT_OK;
        }
        if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--plot")) {
            if (i + 1 >= argc) return zl_cli_usage("inspect", "--plot needs a file name");
            plot = argv[++i];
        } else if (a[0] == '-' && a[1]) return zl_cli_usage("inspect", "unknown option '%s'", a);
        else if (!pa) pa = a;
        else if (!pb) pb = a;
        else return zl_cli_usage("inspect", "at most two LoRAs can be inspected (got '%s')", a);
    }
    if (!pa) return zl_cli_usage("inspect", "no LoRA given");
    const char *inputs[2] = {pa, pb};
    /* the plot's name first: no table on stdout followed by a failure */
    int rc = plot ? zl_output_check(plot, inputs, pb ? 2 : 1) : ZL_OK;
    if (rc) return zl_cli_fail(rc, NULL);
    rc = zl_lora_cli_prepare(&lf);
    if (rc) return zl_cli_fail(rc, NULL);
    lf.bake_dora = 1; /* with --model, a DoRA LoRA is shown as baked against it */
    zl_lora *a = NULL, *b = NULL;
    rc = zl_lora_cli_load(pa, &lf, &a);
    if (!rc && pb) rc = zl_lora_cli_load(pb, &lf, &b);
    zl_inspect_result r;
    memset(&r, 0, sizeof r);
    if (!rc) rc = zl_inspect(a, b, &r);
    if (!rc) {
        if (json) print_json(a, b, &r);
        else print_table(a, b, &r);
        if (plot) {
            rc = zl_inspect_plot(plot, &r, base(pa), pb ? base(pb) : NULL, inputs, pb ? 2 : 1);
            if (!rc) zl_info("wrote %s", plot);
        }
    }
    zl_inspect_result_free(&r);
    zl_lora_free(a);
    zl_lora_free(b);
    return rc ? zl_cli_fail(rc == ZL_EINVAL ? ZL_EFORMAT : rc, NULL) : ZL_EXIT_OK;
}
