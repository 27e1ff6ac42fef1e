/* The flags `zip` and `eval-merge` share (src/cli/zip_cli.h), and the
 * expansion of --content-images / --style-images: each value is a file, a
 * comma-separated list of files, or a folder (its .png/.jpg/.jpeg files,
 * sorted by name); the flag may be repeated. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "zip_cli.h"

void zl_zip_cli_init(zl_zip_cli *z) {
    memset(z, 0, sizeof *z);
    z->p.infer_precision = ZL_CLI_PREC_AUTO;
    zl_ziprun_params_default(&z->p);
}

static void list_free(zl_strlist *l) {
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

void zl_zip_cli_free(zl_zip_cli *z) {
    list_free(&z->content_images);
    list_free(&z->style_images);
}

static int list_add(zl_strlist *l, const char *s, size_t n) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 8;
        char **v = realloc(l->v, sizeof *v * (size_t)cap);
        if (!v) return -1;
        l->v = v;
        l->cap = cap;
    }
    if (!(l->v[l->n] = strndup(s, n))) return -1;
    l->n++;
    return 0;
}

static int is_image_name(const char *n) {
    const char *d = strrchr(n, '.');
    return d && (!strcasecmp(d, ".png") || !strcasecmp(d, ".jpg") || !strcasecmp(d, ".jpeg"));
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Add the images a flag value names. */
static int add_images(const char *cmd, const char *flag, const char *v, zl_strlist *l) {
    for (const char *s = v; *s;) {
        const char *c = strchr(s, ',');
        size_t n = c ? (size_t)(c - s) : strlen(s);
        char *one = strndup(s, n);
        if (!one) return -1;
        if (n == 0) {
            free(one);
            zl_cli_usage(cmd, "%s: empty file name in '%s'", flag, v);
            return -1;
        }
        if (zl_is_dir(one)) {
            DIR *d = opendir(one);
            if (!d) {
                zl_cli_usage(cmd, "%s: cannot read the folder %s", flag, one);
                free(one);
                return -1;
            }
            int first = l->n;
            struct dirent *e;
            while ((e = readdir(d))) {
                if (e->d_name[0] == '.' || !is_image_name(e->d_name)) continue;
                size_t m = strlen(one) + strlen(e->d_name) + 2;
                char *path = malloc(m);
                if (!path) break;
                snprintf(path, m, "%s/%s", one, e->d_name);
                int rc = list_add(l, path, strlen(path));
                free(path);
                if (rc) break;
            }
            closedir(d);
            if (l->n == first) {
                zl_cli_usage(cmd, "%s: the folder %s holds no .png/.jpg/.jpeg files", flag, one);
                free(one);
                return -1;
            }
            qsort(l->v + first, (size_t)(l->n - first), sizeof *l->v, cmp_str);
        } else if (!zl_file_exists(one)) {
            zl_cli_usage(cmd, "%s: no such file or folder: %s", flag, one);
            free(one);
            return -1;
        } else if (list_add(l, one, n)) {
            free(one);
            return -1;
        }
        free(one);
        s += n;
        if (*s == ',') s++;
    }
    return 0;
}

int zl_zip_cli_flag(const char *cmd, int argc, char **argv, int *i, zl_zip_cli *z) {
    static const char *const with_val[] = {"--model", "--vae", "--content", "--style", "--content-prompt", "--style-prompt",
                                           "--content-images", "--style-images", "--ref-count", "--ref-steps",
                                           "--ref-cfg", "--seed", "--resolution", "--clip-skip", "--fixed-inputs",
                                           "--content-adapter-config", "--style-adapter-config"};
    const char *a = argv[*i];
    int sc = zl_cli_sched_flag(cmd, argc, argv, i, &z->p.sched);
    if (sc) return sc;
    int prec = ZL_CLI_PREC_AUTO;
    if ((sc = zl_cli_precision_flag(cmd, argc, argv, i, &prec))) {
        z->p.infer_precision = prec;
        return sc;
    }
    int known = 0;
    for (size_t k = 0; k < sizeof with_val / sizeof *with_val; k++)
        if (!strcmp(a, with_val[k])) known = 1;
    if (!known) return 0;
    if (*i + 1 >= argc) {
        zl_cli_usage(cmd, "%s needs a value", a);
        return -1;
    }
    const char *v = argv[++*i];
    zl_ziprun_params *p = &z->p;
    long n;
    double d;
    if (!strcmp(a, "--model")) p->model = v;
    else if (!strcmp(a, "--vae")) p->vae = v;
    else if (!strcmp(a, "--content")) p->content = v;
    else if (!strcmp(a, "--style")) p->style = v;
    else if (!strcmp(a, "--content-prompt")) p->content_prompt = v;
    else if (!strcmp(a, "--style-prompt")) p->style_prompt = v;
    else if (!strcmp(a, "--content-adapter-config")) p->content_adapter = v;
    else if (!strcmp(a, "--style-adapter-config")) p->style_adapter = v;
    else if (!strcmp(a, "--fixed-inputs")) p->fixed_inputs = v;
    else if (!strcmp(a, "--content-images")) {
        if (add_images(cmd, a, v, &z->content_images)) return -1;
    } else if (!strcmp(a, "--style-images")) {
        if (add_images(cmd, a, v, &z->style_images)) return -1;
    } else if (!strcmp(a, "--ref-count")) {
        if (zl_cli_int(cmd, a, v, 1, 64, &n)) return -1;
        p->ref_count = (int)n;
    } else if (!strcmp(a, "--ref-steps")) {
        if (zl_cli_int(cmd, a, v, 1, 1000, &n)) return -1;
        p->ref_steps = (int)n;
    } else if (!strcmp(a, "--ref-cfg")) {
        if (zl_cli_float(cmd, a, v, &d)) return -1;
        p->ref_cfg = (float)d;
    } else if (!strcmp(a, "--seed")) {
        char *end;
        errno = 0;
        unsigned long long s = strtoull(v, &end, 10);
        if (!*v || *end || v[0] == '-' || errno) {
            zl_cli_usage(cmd, "--seed expects an integer in [0, %llu], got '%s'", (unsigned long long)UINT64_MAX, v);
            return -1;
        }
        p->seed = s;
    } else if (!strcmp(a, "--clip-skip")) {
        if (zl_cli_int(cmd, a, v, 1, 48, &n)) return -1;
        p->clip_skip = (int)n;
    } else if (!strcmp(a, "--resolution")) {
        if (zl_cli_int(cmd, a, v, 8, 16384, &n)) return -1;
        p->resolution = (int)n;
    }
    return 1;
}

int zl_zip_cli_finish(const char *cmd, zl_zip_cli *z) {
    zl_ziprun_params *p = &z->p;
    if (!p->model) return zl_cli_usage(cmd, "no model given (--model M)"), -1;
    if (!p->content || !p->style) return zl_cli_usage(cmd, "both --content and --style are needed"), -1;
    if (p->fixed_inputs && (z->content_images.n || z->style_images.n))
        return zl_cli_usage(cmd, "--fixed-inputs and --content-images/--style-images exclude each other"), -1;
    if (p->infer_precision > 0 && !zl_bf16_units())
        zl_warn("%s --precision %s: this CPU has no AMX-BF16 tile units; references and previews are float32", cmd,
                zl_cli_precision_name(p->infer_precision));
    p->infer_precision = zl_cli_resolve_precision(p->infer_precision);
    p->content_images = (const char *const *)z->content_images.v;
    p->n_content_images = z->content_images.n;
    p->style_images = (const char *const *)z->style_images.v;
    p->n_style_images = z->style_images.n;
    return 0;
}

void zl_zip_cli_help(FILE *f) {
    fprintf(f,
            "inputs:\n"
            "  --model M                 SDXL or SD 1.x model: diffusers folder or single .safetensors checkpoint\n"
            "  --clip-skip N             text encoder layer from the end for every prompt (A1111's 'Clip skip',\n"
            "                            default: what the LoRAs were trained with (kohya's ss_clip_skip), else 1)\n"
            "  --vae FILE|DIR            encode reference images and decode previews with this VAE instead of\n"
            "                            the model's (standalone VAE file, diffusers vae folder)\n"
            "  --prediction P, --zero-snr, --no-zero-snr, --spacing S\n"
            "                            the model's noise schedule, when its files do not say it (v-prediction\n"
            "                            and zero-terminal-SNR models; see 'ziplora generate --help'); the\n"
            "                            training draws, references and previews follow it\n"
            "  --content C, --style S    the subject LoRA and the style LoRA (kohya, PEFT, diffusers, LyCORIS\n"
            "                            layouts; DoRA ones are baked against the model first)\n"
            "  --content-adapter-config FILE, --style-adapter-config FILE   PEFT adapter_config.json (else found\n"
            "                            next to the file)\n"
            "  --content-prompt TEXT, --style-prompt TEXT\n"
            "                            default: the LoRA's metadata, modelspec.trigger_phrase, else the tag with\n"
            "                            the highest count in kohya's ss_tag_frequency (summed over datasets)\n"
            "  --content-images FILES|DIR, --style-images FILES|DIR\n"
            "                            reference images (PNG/JPEG; comma-separated files or a folder; repeatable),\n"
            "                            scaled to cover and centre-cropped to the working resolution, VAE-encoded.\n"
            "                            Without them, references are generated with each LoRA alone.\n"
            "  --ref-count N             generated references per LoRA (default 2)\n"
            "  --ref-steps N             sampler steps per generated reference (default 20, Euler)\n"
            "  --ref-cfg G               guidance for references and previews (default 5 SDXL, 7.5 SD 1.x)\n"
            "  --precision P             auto (default), f32, bf16x3 or bf16: the products of generated references\n"
            "                            and previews (see 'ziplora generate --help'; auto: bf16x3 where the CPU\n"
            "                            has AMX-BF16, else f32); the optimisation and the measurements stay float32\n"
            "  --seed N                  seed of the noise/timestep draws, references and previews (default 0)\n"
            "  --resolution PX           working resolution (default: native, 1024 SDXL, 512 SD 1.x)\n"
            "  --fixed-inputs FILE       safetensors with noisy_content/noisy_style (zip) or x0_content/x0_style\n"
            "                            (eval-merge), timestep, prompt_embeds_content|style, text_embeds_content|style\n"
            "                            and time_ids (SDXL), and optionally target_content|style: used verbatim\n");
}
