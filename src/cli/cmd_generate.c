/* `ziplora generate`: text to image with any LoRAs, over the library pipeline
 * (include/ziplora/pipeline.h). It checks every flag before loading anything,
 * runs encode -> sample -> decode while keeping one large part resident at a
 * time, and writes PNGs whose `parameters` text chunk follows AUTOMATIC1111's
 * infotext, so the seed and settings travel with the image. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "ziplora/image.h"
#include "ziplora/pipeline.h"

#define CMD "generate"
#define MAX_LORAS 16
#define MAX_EMBEDDINGS 16
#define MAX_BATCH 64
#define PREC_UNSET (-2) /* --precision not given (--from-png may set it) */

static void usage(FILE *f) {
    fprintf(f,
            "usage: ziplora generate --model M -p PROMPT -o OUT.png [options]\n\n"
            "Text to image (txt2img), or image to image with --init-image, with a Stable Diffusion XL\n"
            "or SD 1.x model (epsilon or v-prediction) and any LoRAs.\n"
            "The PNG carries an AUTOMATIC1111-style 'parameters' text chunk (prompt, negative\n"
            "prompt, steps, sampler, CFG scale, seed, size, model and LoRA hashes).\n\n"
            "options:\n"
            "  --model M              diffusers model folder or single-file checkpoint (family detected)\n"
            "  --lora FILE[:W]        apply a LoRA (any layout, text-encoder parts included; LyCORIS LoHa,\n"
            "                         LoKr and DoRA too) with weight W (default 1); repeatable\n"
            "  --embedding FILE       a textual-inversion embedding (A1111 .safetensors/.pt, SDXL clip_l +\n"
            "                         clip_g, diffusers learned_embeds); its file name (without extension)\n"
            "                         in a prompt stands for its vectors, as in A1111; repeatable\n"
            "  -p, --prompt TEXT      the prompt\n"
            "  --prompt-file F        read the prompt from a UTF-8 text file instead\n"
            "  -n, --negative TEXT    negative prompt. Without -n, SDXL uses zero embeddings for the\n"
            "                         unconditional half and SD 1.x encodes \"\" (as diffusers does)\n"
            "  --steps N              sampler steps (default 50, diffusers' default; 20-30 is usually\n"
            "                         enough with euler)\n"
            "  --cfg G                guidance scale (default 5.0 for SDXL, 7.5 for SD 1.x; G <= 1 runs\n"
            "                         without guidance)\n"
            "  --sampler S            euler (default, as diffusers' SDXL, unless a diffusers folder's\n"
            "                         scheduler config names another of these), euler_a, dpmpp_2m,\n"
            "                         dpmpp_2m_sde (A1111's DPM++ 2M SDE; noise each step); with\n"
            "                         _karras (euler_karras, dpmpp_2m_karras = A1111's DPM++ 2M Karras)\n"
            "                         the Karras sigma schedule, as diffusers' use_karras_sigmas; ddim\n"
            "                         (DDIMScheduler, eta 0); lcm\n"
            "                         (LCMScheduler) for latent consistency models and LCM-LoRAs: 2-8\n"
            "                         steps with --cfg 1 (no guidance: one UNet pass a step)\n"
            "  --seed S               seed of the initial noise (default: random, printed and saved);\n"
            "                         image i of a batch uses S + i\n"
            "  -W, --width W          image width in pixels (default: the model's native size,\n"
            "  -H, --height H         1024 for SDXL, 512 for SD 1.5); multiples of 8\n"
            "  --batch N              write N images: OUT.png, OUT-1.png, ..., OUT-(N-1).png\n"
            "  --grid                 also write OUT-grid.png with the batch side by side\n"
            "  --initial-noise FILE:NAME  start from the noise tensor NAME ([4,h,w] or [N,4,h,w],\n"
            "                         N = --batch) in a safetensors file instead of the seed's noise;\n"
            "                         latents = noise * init_noise_sigma. Sets the size if -W/-H are absent\n"
            "  --save-latent FILE     also write the final latents [N,4,h,w] (F32, before the VAE's\n"
            "                         scaling) as 'latent' to a safetensors file\n"
            "  --long-prompt          prompts of any length, as AUTOMATIC1111 encodes them: chunks of 75\n"
            "                         tokens (ending after a comma in the last 20 when one is there, or at\n"
            "                         the word BREAK), each encoded alone and concatenated; the negative\n"
            "                         prompt is padded with empty chunks to the same count; SDXL's pooled\n"
            "                         vector from the first chunk; and A1111's emphasis: (text) x1.1,\n"
            "                         [text] /1.1, (text:1.3), \\( \\) literal brackets. Without it, as\n"
            "                         diffusers: tokens past 75 are dropped (with a warning), brackets are text\n"
            "  --no-emphasis          with --long-prompt, brackets are text (A1111's Emphasis: None)\n"
            "  --clip-skip N          condition on the text encoder's N-th layer from the end (A1111's\n"
            "                         'Clip skip'; default 1 = the last; SD 1.x anime models often want 2;\n"
            "                         SDXL uses the penultimate layers already, so 2 changes nothing there)\n"
            "  --vae FILE|DIR         decode with this VAE instead of the model's (a standalone VAE file,\n"
            "                         a diffusers vae folder, or another checkpoint's VAE)\n"
            ZL_CLI_SCHED_HELP
            "  --init-image FILE      img2img: start from this image (PNG/JPEG), scaled to cover the size and\n"
            "                         centre-cropped; the size defaults to the image's, rounded down to 8\n"
            "  --strength S           img2img: how much of the schedule runs, in (0, 1] (default 0.75, A1111's\n"
            "                         denoising strength): the last int(steps x S) steps, as diffusers; with\n"
            "                         --hires-scale, the second pass's (default 0.7, A1111's)\n"
            "  --hires-scale F        A1111's hires fix: sample at the size, upscale the latents F times\n"
            "                         (in (1, 4]; A1111's 'Latent' upscaler: bilinear), then run img2img on them\n"
            "                         at int(size x F) rounded down to 8 with --strength (its noise drawn from\n"
            "                         the seed at that size, also with --initial-noise), and decode that\n"
            "  --hires-steps N        steps of that second pass (default: --steps; it runs int(N x strength))\n"
            "  --cfg-rescale PHI      guidance rescale in [0, 1] (diffusers' guidance_rescale; 0.7 is the\n"
            "                         usual value for zero-terminal-SNR models; default 0: none)\n"
            "  --unet-config JSON     diffusers config.json of the UNet, VAE or text encoders, for a\n"
            "  --vae-config JSON      single-file checkpoint whose sizes its shapes cannot tell\n"
            "  --te1-config JSON\n"
            "  --te2-config JSON\n"
            ZL_CLI_PRECISION_HELP
            "  --f32-weights          widen the UNet weights to float32 once (faster steps, more memory)\n"
            "  --no-tile              decode without VAE tiles (exact at large sizes, more memory)\n"
            "  --from-png FILE        take every setting the PNG's parameters text holds (prompt, negative,\n"
            "                         steps, sampler, CFG, seed, size, clip skip, noise schedule, ...) that\n"
            "                         the command line does not give; LoRAs are named there, not found:\n"
            "                         give them with --lora\n"
            "  -o, --out OUT.png      output image\n"
            "  -q, -v, --threads N    quiet, verbose, thread count\n");
}

/* Offset of the first byte that is not part of valid UTF-8, or -1. Overlong
 * forms, surrogates and code points above U+10FFFF are invalid. */
static long utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        int len;
        unsigned cp, min;
        if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
        else return (long)i;
        if (i + (size_t)len > n) return (long)i;
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return (long)i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return (long)i;
        i += (size_t)len;
    }
    return -1;
}

static int check_utf8(const char *what, const char *s, size_t n) {
    long at = utf8_invalid_at((const unsigned char *)s, n);
    if (at >= 0)
        return zl_set_error(ZL_EFORMAT, "%s is not UTF-8: invalid byte 0x%02x at byte %ld", what,
                            (unsigned char)s[at], at);
    if (strlen(s) != n) return zl_set_error(ZL_EFORMAT, "%s holds a NUL byte at byte %zu", what, strlen(s));
    return ZL_OK;
}

/* The whole file as the prompt, trailing whitespace dropped. */
static int read_prompt_file(const char *path, char **out) {
    size_t n;
    char *s;
    int rc = zl_read_file(path, &s, &n);
    if (rc) return rc;
    char what[1200];
    snprintf(what, sizeof what, "prompt file %s", path);
    if ((rc = check_utf8(what, s, n))) { free(s); return rc; }
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = 0;
    *out = s;
    return ZL_OK;
}

/* OUT.png -> OUT-<tag>.png (tag appended when there is no extension). */
static char *derived_path(const char *out, const char *tag) {
    const char *slash = strrchr(out, '/');
    const char *dot = strrchr(out, '.');
    if (!dot || (slash && dot < slash) || dot == (slash ? slash + 1 : out)) dot = out + strlen(out);
    size_t n = strlen(out) + strlen(tag) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%.*s-%s%s", (int)(dot - out), out, tag, dot);
    return p;
}

/* File name without folders and extension, with A1111's forbidden ':' and ',' removed. */
static void short_name(const char *path, char *buf, size_t n) {
    const char *b = path;
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') len--; /* a folder given as "dir/" */
    for (size_t i = 0; i + 1 < len; i++)
        if (path[i] == '/') b = path + i + 1;
    size_t bl = (size_t)(path + len - b);
    const char *dot = NULL;
    for (size_t i = 0; i < bl; i++)
        if (b[i] == '.') dot = b + i;
    if (dot && dot != b) bl = (size_t)(dot - b);
    size_t j = 0;
    for (size_t i = 0; i < bl && j + 1 < n; i++)
        if (b[i] != ':' && b[i] != ',') buf[j++] = b[i];
    buf[j] = 0;
}

typedef struct {
    char *s;
    size_t len, cap;
} sbuf;

static int sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sb_printf(sbuf *b, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (k < 0) return zl_set_error(ZL_EINVAL, "format error");
        if (b->s && b->len + (size_t)k < b->cap) {
            b->len += (size_t)k;
            return ZL_OK;
        }
        size_t cap = (b->cap ? b->cap : 256);
        while (cap <= b->len + (size_t)k) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) return zl_set_error(ZL_ENOMEM, "out of memory");
        b->s = p;
        b->cap = cap;
    }
}

/* A1111 quotes a value holding ',', ':' or a newline as a JSON string. */
static int sb_quoted(sbuf *b, const char *v) {
    if (!strpbrk(v, ",:\n\"")) return sb_printf(b, "%s", v);
    int rc = sb_printf(b, "\"");
    for (const char *c = v; !rc && *c; c++) {
        if (*c == '"' || *c == '\\') rc = sb_printf(b, "\\%c", *c);
        else if (*c == '\n') rc = sb_printf(b, "\\n");
        else rc = sb_printf(b, "%c", *c);
    }
    return rc ? rc : sb_printf(b, "\"");
}

typedef struct {
    const char *prompt, *negative;
    int steps;
    float cfg;
    zl_sampler_kind sampler;
    int karras;
    int width, height;
    const char *model_name;
    char model_hash[11];
    const char *vae_name; /* --vae: its file name and hash; NULL: the model's */
    int clip_skip;
    char vae_hash[11];
    int n_loras;
    char lora_names[MAX_LORAS][256];
    char lora_hashes[MAX_LORAS][13];
    float lora_w[MAX_LORAS];
    int n_emb;
    char emb_names[MAX_EMBEDDINGS][256];
    char emb_hashes[MAX_EMBEDDINGS][13];
    const char *noise_spec;
    zl_sched_config sched;
    float cfg_rescale;
    double strength; /* img2img's or the hires pass's; 0: txt2img */
    double hires_scale; /* 0: no hires fix */
    int hires_steps;    /* given for the hires pass; 0: --steps */
    const char *precision; /* "bf16" or "bf16x3" when the products ran on AMX tiles; NULL: float32 */
    int chunks;      /* --long-prompt: chunks per prompt; 0: not asked */
    int no_emphasis; /* --long-prompt --no-emphasis */
} infotext;

/* The `parameters` text of one image, as AUTOMATIC1111 writes it. */
static int make_parameters(const infotext *it, uint64_t seed, long noise_index, char **out) {
    sbuf b = {0};
    int rc = sb_printf(&b, "%s\n", it->prompt);
    if (!rc && it->negative && it->negative[0]) rc = sb_printf(&b, "Negative prompt: %s\n", it->negative);
    if (!rc)
        rc = sb_printf(&b, "Steps: %d, Sampler: %s, %sCFG scale: %g, Seed: %llu, Size: %dx%d, Model hash: %s, Model: ",
                       it->steps, zl_sampler_name(it->sampler), it->karras ? "Schedule type: Karras, " : "",
                       (double)it->cfg, (unsigned long long)seed, it->width, it->height, it->model_hash);
    if (!rc) rc = sb_quoted(&b, it->model_name);
    if (!rc && it->clip_skip > 1) rc = sb_printf(&b, ", Clip skip: %d", it->clip_skip);
    /* the noise schedule, where it is not SD/SDXL's default */
    if (!rc && it->sched.prediction == ZL_PRED_V) rc = sb_printf(&b, ", Prediction: v_prediction");
    if (!rc && it->sched.zero_snr) rc = sb_printf(&b, ", Zero terminal SNR: True");
    if (!rc && it->sched.spacing != ZL_SPACING_LEADING)
        rc = sb_printf(&b, ", Timestep spacing: %s", zl_spacing_name(it->sched.spacing));
    if (!rc && it->cfg_rescale > 0) rc = sb_printf(&b, ", CFG rescale: %g", (double)it->cfg_rescale);
    if (!rc && it->strength > 0) rc = sb_printf(&b, ", Denoising strength: %g", it->strength);
    if (!rc && it->hires_scale > 0) rc = sb_printf(&b, ", Hires upscale: %g", it->hires_scale);
    if (!rc && it->hires_scale > 0 && it->hires_steps) rc = sb_printf(&b, ", Hires steps: %d", it->hires_steps);
    if (!rc && it->hires_scale > 0) rc = sb_printf(&b, ", Hires upscaler: Latent");
    if (!rc && it->chunks) rc = sb_printf(&b, ", Prompt chunks: %d", it->chunks);
    if (!rc && it->chunks && it->no_emphasis) rc = sb_printf(&b, ", Emphasis: None");
    if (!rc && it->precision) rc = sb_printf(&b, ", Precision: %s", it->precision);
    if (!rc && it->vae_name) rc = sb_printf(&b, ", VAE hash: %s, VAE: ", it->vae_hash);
    if (!rc && it->vae_name) rc = sb_quoted(&b, it->vae_name);
    if (!rc && it->n_loras) {
        sbuf h = {0}, w = {0};
        for (int i = 0; !rc && i < it->n_loras; i++) {
            rc = sb_printf(&h, "%s%s: %s", i ? ", " : "", it->lora_names[i], it->lora_hashes[i]);
            if (!rc) rc = sb_printf(&w, "%s%s: %g", i ? ", " : "", it->lora_names[i], (double)it->lora_w[i]);
        }
        if (!rc) rc = sb_printf(&b, ", Lora hashes: ");
        if (!rc) rc = sb_quoted(&b, h.s);
        if (!rc) rc = sb_printf(&b, ", Lora weights: ");
        if (!rc) rc = sb_quoted(&b, w.s);
        free(h.s);
        free(w.s);
    }
    if (!rc && it->n_emb) {
        sbuf h = {0};
        for (int i = 0; !rc && i < it->n_emb; i++)
            rc = sb_printf(&h, "%s%s: %s", i ? ", " : "", it->emb_names[i], it->emb_hashes[i]);
        if (!rc) rc = sb_printf(&b, ", TI hashes: ");
        if (!rc) rc = sb_quoted(&b, h.s);
        free(h.s);
    }
    if (!rc && it->noise_spec) {
        char v[1200];
        snprintf(v, sizeof v, "%s[%ld]", it->noise_spec, noise_index);
        rc = sb_printf(&b, ", Initial noise: ");
        if (!rc) rc = sb_quoted(&b, v);
    }
    if (!rc) rc = sb_printf(&b, ", Version: ziplora %s", ZIPLORA_VERSION);
    if (rc) { free(b.s); return rc; }
    *out = b.s;
    return ZL_OK;
}

/* The first `n` hex digits of a file's sha256 (A1111: 10 for models, 12 for LoRAs). */
static int short_hash(const char *path, int n, char *out) {
    char hex[65];
    int rc = zl_sha256_file(path, hex);
    if (rc) return rc;
    memcpy(out, hex, (size_t)n);
    out[n] = 0;
    return ZL_OK;
}

static uint64_t random_seed(void) {
    uint64_t s = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&s, sizeof s, 1, f) != 1) s = (uint64_t)time(NULL) * 6364136223846793005ULL ^ (uint64_t)getpid();
    if (f) fclose(f);
    return s & 0xFFFFFFFFULL; /* 32 bits, as A1111 seeds, so it is easy to type back */
}

/* Noise [N, 4, h, w] from --initial-noise FILE:NAME. */
static int load_noise(const char *spec, int batch, int C, float **out, int *h, int *w, char **file_out) {
    char *file = strdup(spec);
    if (!file) return zl_set_error(ZL_ENOMEM, "out of memory");
    char *colon = strrchr(file, ':');
    if (!colon || !colon[1] || colon == file) {
        free(file);
        return zl_set_error(ZL_EINVAL, "--initial-noise '%s': expected FILE.safetensors:NAME", spec);
    }
    *colon = 0;
    const char *name = colon + 1;
    zl_st_file *f = NULL;
    int rc = zl_st_open(file, &f);
    if (rc) { free(file); return rc; }
    const zl_st_tensor *t = zl_st_find(f, name);
    if (!t) {
        rc = zl_set_error(ZL_ENOTFOUND, "--initial-noise: %s has no tensor '%s'", file, name);
    } else if (!zl_dtype_is_float(t->dtype) || t->dtype == ZL_DT_BOOL) {
        rc = zl_set_error(ZL_EFORMAT, "--initial-noise: %s: '%s' has dtype %s, expected a float type", file, name,
                          zl_dtype_name(t->dtype));
    } else {
        int nb = t->ndim == 4 ? (int)t->shape[0] : 1;
        int c0 = t->ndim == 4 ? 1 : 0;
        if ((t->ndim != 3 && t->ndim != 4) || t->shape[c0] != C || t->shape[c0 + 1] < 1 || t->shape[c0 + 2] < 1)
            rc = zl_set_error(ZL_ESHAPE, "--initial-noise: %s: '%s' must be [%d, h, w] or [N, %d, h, w]", file, name, C, C);
        else if (nb != batch)
            rc = zl_set_error(ZL_ESHAPE, "--initial-noise: %s: '%s' holds %d noise tensors for --batch %d", file, name, nb,
                              batch);
        else if (!(*out = malloc(sizeof(float) * (size_t)t->numel)))
            rc = zl_set_error(ZL_ENOMEM, "out of memory");
        else {
            zl_st_read_f32(t, *out);
            *h = (int)t->shape[c0 + 1];
            *w = (int)t->shape[c0 + 2];
            for (int64_t i = 0; i < t->numel && !rc; i++)
                if (!isfinite((*out)[i]))
                    rc = zl_set_error(ZL_ENUMERIC, "--initial-noise: %s: '%s' holds a non-finite value", file, name);
            if (rc) { free(*out); *out = NULL; }
        }
    }
    zl_st_close(f);
    if (rc) { free(file); return rc; }
    *file_out = file;
    return ZL_OK;
}


/* Everything the command line sets (and --from-png fills in). */
typedef struct {
    const char *model, *out_path, *prompt_arg, *negative, *prompt_file, *sampler_name, *noise_spec, *latent_path;
    const char *unet_cfg, *vae_cfg, *te1_cfg, *te2_cfg, *vae, *init_path, *from_png;
    const char *lora_args[MAX_LORAS];
    const char *emb_args[MAX_EMBEDDINGS];
    int n_emb;
    int n_lora, grid, f32, no_tile, have_seed, long_prompt, no_emphasis, have_sampler;
    int steps_given, clip_given, rescale_given; /* given on the command line (they win over --from-png) */
    long steps, width, height, batch, clip_skip;
    double cfg, cfg_rescale, strength;
    double hires_scale; /* NAN: no hires fix */
    long hires_steps;   /* 0: --steps */
    int precision;      /* zl_matmul_precision or ZL_CLI_PREC_AUTO; PREC_UNSET: not given */
    uint64_t seed;
    zl_sched_override sched;
    char sampler_buf[80]; /* --from-png's sampler name */
} gen_args;

/* --from-png: every setting the image's parameters text holds and the command line does not give.
 * Returns a usage error (2) for a value we cannot take, else 0. */
static int apply_png(const char *path, const zl_png_params *pp, gen_args *c) {
    const char *v;
    char what[1100];
    if (!c->prompt_arg && !c->prompt_file) c->prompt_arg = pp->prompt;
    if (!c->negative) c->negative = pp->negative;
    if (!c->steps_given && (v = zl_png_params_get(pp, "Steps"))) {
        snprintf(what, sizeof what, "--from-png %s: Steps", path);
        if (zl_cli_int(CMD, what, v, 1, 1000, &c->steps)) return ZL_EXIT_USAGE;
    }
    if (isnan(c->cfg) && (v = zl_png_params_get(pp, "CFG scale"))) {
        snprintf(what, sizeof what, "--from-png %s: CFG scale", path);
        if (zl_cli_float(CMD, what, v, &c->cfg)) return ZL_EXIT_USAGE;
    }
    if (!c->have_seed && (v = zl_png_params_get(pp, "Seed"))) {
        char *end;
        errno = 0;
        unsigned long long s = strtoull(v, &end, 10);
        if (!*v || *end || *v == '-' || errno) return zl_cli_usage(CMD, "--from-png %s: Seed '%s' is not a seed", path, v);
        c->seed = s;
        c->have_seed = 1;
    }
    if (!c->width && !c->height && (v = zl_png_params_get(pp, "Size"))) {
        long w = 0, h = 0;
        char tail;
        if (sscanf(v, "%ldx%ld%c", &w, &h, &tail) != 2 || w < 8 || h < 8 || w > ZL_IMAGE_MAX_SIDE || h > ZL_IMAGE_MAX_SIDE ||
            w % 8 || h % 8)
            return zl_cli_usage(CMD, "--from-png %s: Size '%s' is not WxH in multiples of 8", path, v);
        c->width = w;
        c->height = h;
    }
    if (!c->have_sampler && (v = zl_png_params_get(pp, "Sampler"))) {
        const char *st = zl_png_params_get(pp, "Schedule type");
        snprintf(c->sampler_buf, sizeof c->sampler_buf, "%s%s", v, st && !strcmp(st, "Karras") ? " Karras" : "");
        if (zl_sampler_from_name(c->sampler_buf) < 0)
            return zl_cli_usage(CMD, "--from-png %s: sampler '%s' is not one this tool runs (give --sampler)", path, v);
        c->sampler_name = c->sampler_buf;
        c->have_sampler = 1;
    }
    if (!c->clip_given && (v = zl_png_params_get(pp, "Clip skip"))) {
        snprintf(what, sizeof what, "--from-png %s: Clip skip", path);
        if (zl_cli_int(CMD, what, v, 1, 48, &c->clip_skip)) return ZL_EXIT_USAGE;
    }
    if (!c->rescale_given && (v = zl_png_params_get(pp, "CFG rescale"))) {
        snprintf(what, sizeof what, "--from-png %s: CFG rescale", path);
        if (zl_cli_float(CMD, what, v, &c->cfg_rescale)) return ZL_EXIT_USAGE;
    }
    if (zl_png_params_get(pp, "Prompt chunks")) c->long_prompt = 1;
    /* an A1111/Forge image: its prompts were encoded A1111's way (chunks, emphasis, tags removed) */
    if ((v = zl_png_params_get(pp, "Version")) && strncmp(v, "ziplora", 7)) {
        if (!c->long_prompt) zl_info("%s: an A1111/Forge image (Version %s): prompts as A1111 encodes them", path, v);
        c->long_prompt = 1;
    }
    if ((v = zl_png_params_get(pp, "Emphasis")) && !strcmp(v, "None")) c->no_emphasis = 1;
    if (!c->sched.prediction && (v = zl_png_params_get(pp, "Prediction"))) c->sched.prediction = v;
    if (!c->sched.zero_snr && (v = zl_png_params_get(pp, "Zero terminal SNR")) && !strcmp(v, "True"))
        c->sched.zero_snr = 1;
    if (!c->sched.spacing && (v = zl_png_params_get(pp, "Timestep spacing"))) c->sched.spacing = v;
    if (c->sched.prediction && zl_prediction_from_name(c->sched.prediction) < 0)
        return zl_cli_usage(CMD, "--from-png %s: Prediction '%s' is not epsilon or v_prediction", path, c->sched.prediction);
    if (c->sched.spacing && zl_spacing_from_name(c->sched.spacing) < 0)
        return zl_cli_usage(CMD, "--from-png %s: Timestep spacing '%s' is not leading, trailing or linspace", path,
                            c->sched.spacing);
    if (!c->init_path && isnan(c->hires_scale) && (v = zl_png_params_get(pp, "Hires upscale"))) {
        snprintf(what, sizeof what, "--from-png %s: Hires upscale", path);
        if (zl_cli_float(CMD, what, v, &c->hires_scale)) return ZL_EXIT_USAGE;
        if (!(c->hires_scale > 1 && c->hires_scale <= 4))
            return zl_cli_usage(CMD, "--from-png %s: Hires upscale %s is outside (1, 4]", path, v);
        const char *u = zl_png_params_get(pp, "Hires upscaler");
        if (u && strcmp(u, "Latent"))
            zl_warn("%s: its hires fix used the upscaler '%s'; this tool has only 'Latent' (bilinear), used instead",
                    path, u);
    }
    if (!c->init_path && isnan(c->hires_scale) && (v = zl_png_params_get(pp, "Hires resize")))
        zl_warn("%s: its hires fix resized to %s, which this tool does not do (only --hires-scale F): this run has "
                "no hires pass", path, v);
    if (!c->hires_steps && !isnan(c->hires_scale) && (v = zl_png_params_get(pp, "Hires steps"))) {
        snprintf(what, sizeof what, "--from-png %s: Hires steps", path);
        if (zl_cli_int(CMD, what, v, 1, 1000, &c->hires_steps)) return ZL_EXIT_USAGE;
    }
    if ((c->init_path || !isnan(c->hires_scale)) && isnan(c->strength) &&
        (v = zl_png_params_get(pp, "Denoising strength"))) {
        snprintf(what, sizeof what, "--from-png %s: Denoising strength", path);
        if (zl_cli_float(CMD, what, v, &c->strength)) return ZL_EXIT_USAGE;
    }
    /* ours name the weights; A1111's only the hashes (the weights are <lora:...> tags in the prompt) */
    if (!c->n_lora && ((v = zl_png_params_get(pp, "Lora weights")) || (v = zl_png_params_get(pp, "Lora hashes"))))
        zl_warn("%s was made with the LoRAs %s: the file names are not in the image; give them with --lora FILE:W", path,
                v);
    /* the precision it was made with; none given: float32 if it is ours (else
     * the default) */
    if (c->precision == PREC_UNSET && (v = zl_png_params_get(pp, "Precision"))) {
        if (!strcmp(v, "bf16"))
            c->precision = ZL_MATMUL_BF16;
        else if (!strcmp(v, "bf16x3"))
            c->precision = ZL_MATMUL_BF16X3;
        else if (!strcmp(v, "f32"))
            c->precision = ZL_MATMUL_F32;
        else
            zl_warn("%s: Precision '%s' is not one of this tool's (f32, bf16x3, bf16); using the default", path, v);
    } else if (c->precision == PREC_UNSET && (v = zl_png_params_get(pp, "Version")) && !strncmp(v, "ziplora", 7)) {
        c->precision = ZL_MATMUL_F32;
    }
    if (!c->n_emb && (v = zl_png_params_get(pp, "TI hashes")))
        zl_warn("%s was made with the embeddings %s: give their files with --embedding FILE", path, v);
    if ((v = zl_png_params_get(pp, "Model"))) zl_info("%s was made with the model '%s'", path, v);
    return 0;
}

static int generate_run(gen_args *A) {
    const char *model = A->model, *out_path = A->out_path, *prompt_arg = A->prompt_arg, *negative = A->negative;
    const char *prompt_file = A->prompt_file, *sampler_name = A->sampler_name, *noise_spec = A->noise_spec;
    const char *latent_path = A->latent_path, *unet_cfg = A->unet_cfg, *vae_cfg = A->vae_cfg, *te1_cfg = A->te1_cfg;
    const char *te2_cfg = A->te2_cfg, *vae = A->vae, *init_path = A->init_path, *from_png = A->from_png;
    const char *const *lora_args = A->lora_args;
    const int n_lora = A->n_lora, grid = A->grid, f32 = A->f32, no_tile = A->no_tile, have_seed = A->have_seed,
              long_prompt = A->long_prompt, no_emphasis = A->no_emphasis, have_sampler = A->have_sampler;
    long steps = A->steps, width = A->width, height = A->height, batch = A->batch, clip_skip = A->clip_skip;
    double cfg = A->cfg, cfg_rescale = A->cfg_rescale, strength = A->strength;
    uint64_t seed = A->seed;
    const zl_sched_override sched = A->sched;
    if (!model) return zl_cli_usage(CMD, "--model is required");
    if (!out_path) return zl_cli_usage(CMD, "-o is required");
    if (!prompt_arg && !prompt_file) return zl_cli_usage(CMD, "a prompt is required (-p TEXT or --prompt-file F)");
    if (prompt_arg && prompt_file) return zl_cli_usage(CMD, "give either -p or --prompt-file, not both");
    int skind = zl_sampler_from_name(sampler_name);
    if (skind < 0)
        return zl_cli_usage(CMD,
                            "unknown sampler '%s' (euler, euler_a, dpmpp_2m, dpmpp_2m_sde, euler_karras, dpmpp_2m_karras, "
                            "dpmpp_2m_sde_karras, ddim, lcm)",
                            sampler_name);
    int karras = zl_sampler_name_karras(sampler_name);
    if (karras && skind == ZL_SAMPLER_EULER_A)
        return zl_cli_usage(CMD, "--sampler %s: Euler a has no Karras schedule (diffusers has none); use euler_karras or "
                                 "dpmpp_2m_karras", sampler_name);
    if (karras && (skind == ZL_SAMPLER_LCM || skind == ZL_SAMPLER_DDIM))
        return zl_cli_usage(CMD, "--sampler %s: %s has no Karras schedule here", sampler_name,
                            zl_sampler_name((zl_sampler_kind)skind));
    if (skind == ZL_SAMPLER_LCM && steps > 50)
        return zl_cli_usage(CMD, "--steps %ld: LCM takes at most 50 steps (its distillation grid; 2-8 are usual)", steps);
    if (prompt_arg && check_utf8("-p", prompt_arg, strlen(prompt_arg))) return zl_cli_usage(CMD, "%s", zl_errmsg());
    if (negative && check_utf8("-n", negative, strlen(negative))) return zl_cli_usage(CMD, "%s", zl_errmsg());
    if (!have_seed) seed = random_seed();
    const int hires = !isnan(A->hires_scale);
    const double hires_scale = A->hires_scale;
    const long hires_steps = A->hires_steps ? A->hires_steps : steps;
    if (hires && init_path) return zl_cli_usage(CMD, "--hires-scale is for txt2img, not with --init-image");
    if (A->hires_steps && !hires) return zl_cli_usage(CMD, "--hires-steps needs --hires-scale");
    if (!isnan(strength) && !init_path && !hires)
        return zl_cli_usage(CMD, "--strength is for img2img (--init-image FILE) or the hires fix (--hires-scale F)");
    if (isnan(strength)) strength = hires ? 0.7 : 0.75;
    if (init_path && (long)(steps * strength) < 1)
        return zl_cli_usage(CMD, "--strength %g of %ld steps runs no step (int(%ld x %g) = 0); raise --steps or --strength",
                            strength, steps, steps, strength);
    if (hires && (long)(hires_steps * strength) < 1)
        return zl_cli_usage(CMD, "--strength %g of %ld hires steps runs no step (int(%ld x %g) = 0); raise --hires-steps "
                                 "or --strength", strength, hires_steps, hires_steps, strength);

    int rc = ZL_OK;
    zl_pipeline *p = NULL;
    char *prompt_buf = NULL, *noise_file = NULL;
    float *noise = NULL, *latents = NULL, *lo = NULL;
    char *lpaths[MAX_LORAS] = {0};
    zl_image *imgs = NULL;
    zl_image init_img = {0};
    float *init_lat = NULL;
    char **out_paths = NULL;
    char *grid_path = NULL;
    zl_cond cond = {0};
    infotext it = {0};
    const char *inputs[MAX_LORAS + MAX_EMBEDDINGS + 10];
    int n_inputs = 0, nh = 0, nw = 0;
    zl_outset outs = {0}; /* every output appears at the end, together, or none does */

    if (prompt_file) {
        if ((rc = read_prompt_file(prompt_file, &prompt_buf))) goto done;
        inputs[n_inputs++] = prompt_file;
    }
    if (from_png) inputs[n_inputs++] = from_png; /* -o the same PNG would lose its parameters' source */
    const char *prompt = prompt_file ? prompt_buf : prompt_arg;
    if (noise_spec) {
        if ((rc = load_noise(noise_spec, (int)batch, 4, &noise, &nh, &nw, &noise_file))) goto done;
        inputs[n_inputs++] = noise_file;
    }
    if (init_path) {
        /* read (and so check) the start image before any model is loaded */
        if ((rc = zl_image_read(init_path, &init_img))) {
            if (!strstr(zl_errmsg(), init_path)) zl_error_prefix(rc, "--init-image %s", init_path);
            goto done;
        }
        inputs[n_inputs++] = init_path;
        if (init_img.w < 8 || init_img.h < 8) {
            rc = zl_set_error(ZL_EFORMAT, "--init-image %s is %dx%d pixels; at least 8x8 is needed", init_path, init_img.w,
                              init_img.h);
            goto done;
        }
    }
    /* output names first: a clash with an input is a usage error found before any compute */
    out_paths = calloc((size_t)batch, sizeof *out_paths);
    if (!out_paths) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto done; }
    for (long b = 0; b < batch; b++) {
        char tag[32];
        snprintf(tag, sizeof tag, "%ld", b);
        out_paths[b] = b ? derived_path(out_path, tag) : strdup(out_path);
        if (!out_paths[b]) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto done; }
    }
    if (grid && !(grid_path = derived_path(out_path, "grid"))) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto done; }

    zl_pipeline_opts po = {.unet_config = unet_cfg, .vae_config = vae_cfg, .te1_config = te1_cfg, .te2_config = te2_cfg, .vae = vae,
                           .clip_skip = (int)clip_skip,
                           .weights = f32 ? ZL_UNET_WEIGHTS_F32 : ZL_UNET_WEIGHTS_STORED,
                           .vae_tile = no_tile ? ZL_VAE_TILE_OFF : ZL_VAE_TILE_AUTO, .sched = sched};
    double t0 = zl_now();
    if ((rc = zl_pipeline_open(model, &po, &p))) goto done;
    const zl_model_paths *mp = zl_pipeline_paths(p);
    const int s = zl_pipeline_vae_scale(p);
    if (noise) {
        if (!width) width = (long)nw * s;
        if (!height) height = (long)nh * s;
        if (width != (long)nw * s || height != (long)nh * s) {
            rc = zl_set_error(ZL_ESHAPE, "--initial-noise %s is %dx%d latent cells, i.e. %dx%d pixels, but the size is %ldx%ld",
                              noise_spec, nw, nh, nw * s, nh * s, width, height);
            goto done;
        }
    }
    if (init_path) {
        /* img2img: the image's size, rounded down to whole latent cells */
        if (!width) width = init_img.w - init_img.w % s;
        if (!height) height = init_img.h - init_img.h % s;
    }
    if (!width || !height) {
        int dw, dh;
        zl_pipeline_native_size(p, &dw, &dh);
        if (!width) width = dw;
        if (!height) height = dh;
    }
    if ((rc = zl_pipeline_check_size(p, (int)width, (int)height))) goto done;
    /* the hires pass's size: int(size x F) in whole latent cells, as A1111's latent upscale */
    long width2 = width, height2 = height;
    if (hires) {
        width2 = (long)(width * hires_scale) / s * s;
        height2 = (long)(height * hires_scale) / s * s;
        if (width2 > ZL_IMAGE_MAX_SIDE || height2 > ZL_IMAGE_MAX_SIDE) {
            rc = zl_set_error(ZL_EINVAL, "--hires-scale %g makes %ldx%ld pixels, over the %d-pixel limit", hires_scale,
                              width2, height2, ZL_IMAGE_MAX_SIDE);
            goto done;
        }
        if ((rc = zl_pipeline_check_size(p, (int)width2, (int)height2))) {
            zl_error_prefix(rc, "--hires-scale %g (%ldx%ld)", hires_scale, width2, height2);
            goto done;
        }
    }
    if (isnan(cfg)) cfg = zl_pipeline_family(p) == ZL_FAMILY_SDXL ? 5.0 : 7.5;
    if (mp->unet_weights) inputs[n_inputs++] = mp->unet_weights;
    if (mp->te1_weights) inputs[n_inputs++] = mp->te1_weights;
    if (mp->te2_weights) inputs[n_inputs++] = mp->te2_weights;
    if (mp->vae_weights) inputs[n_inputs++] = mp->vae_weights;
    for (int k = 0; k < n_lora; k++) {
        float w;
        if ((rc = zl_cli_lora_arg(lora_args[k], &lpaths[k], &w))) goto done;
        if ((rc = zl_pipeline_load_lora(p, lpaths[k], w, NULL))) goto done;
        inputs[n_inputs++] = lpaths[k];
        short_name(lpaths[k], it.lora_names[k], sizeof it.lora_names[k]);
        it.lora_w[k] = w;
    }
    for (int k = 0; k < A->n_emb; k++) {
        /* A1111: the file name is the trigger */
        char *trig = it.emb_names[k];
        short_name(A->emb_args[k], trig, sizeof it.emb_names[k]);
        int nv = 0;
        if ((rc = zl_pipeline_add_embedding(p, A->emb_args[k], trig, &nv))) goto done;
        if ((rc = short_hash(A->emb_args[k], 12, it.emb_hashes[k]))) goto done;
        inputs[n_inputs++] = A->emb_args[k];
        it.n_emb = k + 1;
        int found = 0;
        for (int q = 0; q < 2 && !found; q++) {
            const char *txt = q ? negative : prompt;
            for (const char *c = txt; c && *c && !found; c++) found = !strncasecmp(c, trig, strlen(trig));
        }
        zl_info("embedding %s: %d vector%s for '%s'", A->emb_args[k], nv, nv == 1 ? "" : "s", trig);
        if (!found) zl_warn("embedding %s: '%s' (its file name) is in neither prompt, so it is not used", A->emb_args[k], trig);
    }
    /* every output, before any compute: not an input, not a folder, in a folder we can write
     * in, and no two the same (--save-latent a.png -o a.png would keep only the image) */
    {
        const char *outs[MAX_BATCH + 2];
        int n_outs = 0;
        for (long b = 0; b < batch; b++) outs[n_outs++] = out_paths[b];
        if (grid_path) outs[n_outs++] = grid_path;
        if (latent_path) outs[n_outs++] = latent_path;
        for (int k = 0; k < n_outs && !rc; k++) {
            rc = zl_output_check(outs[k], inputs, n_inputs);
            for (int j = 0; j < k && !rc; j++)
                if (!strcmp(outs[k], outs[j]) || zl_same_file(outs[k], outs[j]))
                    rc = zl_set_error(ZL_EINVAL, "output %s is given twice (-o, --batch, --grid, --save-latent)", outs[k]);
        }
        if (rc) goto done;
    }
    const zl_sched_config *sc = zl_pipeline_sched(p);
    const int model_sampler = !have_sampler && sc->sampler >= 0;
    if (model_sampler) {
        /* a diffusers folder names its scheduler: run that one, as its pipeline would */
        skind = sc->sampler;
        karras = sc->karras;
    }
    zl_info("%s model %s%s%s, %ldx%ld, %ld step%s (%s%s%s, %s spacing), CFG %g, seed %llu%s",
            zl_family_name(zl_pipeline_family(p)), model, sc->prediction == ZL_PRED_V ? ", v-prediction" : "",
            sc->zero_snr ? ", zero terminal SNR" : "", width, height, steps, steps == 1 ? "" : "s",
            zl_sampler_name((zl_sampler_kind)skind), karras ? " Karras" : "",
            model_sampler ? ", the model's scheduler" : "", zl_spacing_name(sc->spacing), cfg,
            (unsigned long long)seed, noise ? " (noise from file)" : "");

    /* 1. text: encode once for the whole batch, then drop the encoders */
    double t_text = zl_now();
    if ((rc = long_prompt ? zl_pipeline_encode_long(p, prompt, negative, !no_emphasis, &cond)
                          : zl_pipeline_encode(p, prompt, negative, &cond)))
        goto done;
    if (long_prompt && cond.T > ZL_CLIP_CTX) zl_info("long prompt: %d chunks of 77 tokens", cond.T / ZL_CLIP_CTX);
    zl_pipeline_release(p, ZL_PIPE_TEXT);
    t_text = zl_now() - t_text;
    zl_info("text encoding: %.2f s", t_text);

    /* 2. sampling (img2img: from the start image's latent) */
    const int h = (int)height / s, w = (int)width / s, C = zl_pipeline_unet_config(p)->in_channels;
    const size_t n = (size_t)C * h * w;
    if (init_path) {
        double t_enc = zl_now();
        if (!(init_lat = malloc(sizeof(float) * n))) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto done; }
        if ((rc = zl_pipeline_encode_image(p, &init_img, (int)width, (int)height, init_lat))) {
            zl_error_prefix(rc, "--init-image %s", init_path);
            goto done;
        }
        zl_info("start image %s (%dx%d) encoded at %ldx%ld: %.2f s; strength %g runs %d of %ld steps", init_path,
                init_img.w, init_img.h, width, height, zl_now() - t_enc, strength, (int)(steps * strength), steps);
    }
    if (C != 4 && noise) { rc = zl_set_error(ZL_ESHAPE, "the UNet takes %d latent channels, --initial-noise has 4", C); goto done; }
    const int h2 = (int)height2 / s, w2 = (int)width2 / s;
    const size_t n2 = (size_t)C * h2 * w2;
    latents = malloc(sizeof(float) * n2 * (size_t)batch); // [batch, C, h2, w2]: the final latents
    if (!latents || (hires && !(lo = malloc(sizeof(float) * n)))) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto done; }
    if (hires)
        zl_info("hires fix: %ldx%ld -> %ldx%ld (Latent, bilinear), %ld steps at strength %g (runs %d)", width, height,
                width2, height2, hires_steps, strength, (int)(hires_steps * strength));
    for (long b = 0; b < batch; b++) {
        char label[64];
        if (batch > 1) snprintf(label, sizeof label, "image %ld/%ld", b + 1, batch);
        else snprintf(label, sizeof label, "sampling");
        zl_gen_params g = {.width = (int)width, .height = (int)height, .steps = (int)steps, .cfg = (float)cfg,
                           .sampler = (zl_sampler_kind)skind, .seed = seed + (uint64_t)b,
                           .sigmas = karras ? ZL_SIGMAS_KARRAS : ZL_SIGMAS_DEFAULT,
                           .initial_noise = noise ? noise + (size_t)b * n : NULL, .progress = 1, .progress_label = label,
                           .cfg_rescale = (float)cfg_rescale, .init_latent = init_lat, .strength = strength};
        float *dst = latents + (size_t)b * n2;
        if ((rc = zl_pipeline_sample(p, &cond, &g, hires ? lo : dst))) goto done;
        if (hires) {
            /* A1111's hires fix: the latents upscaled, then img2img on them at the new size (its noise
             * from the same seed, drawn at that size) */
            if ((rc = zl_latent_resize_bilinear(lo, C, h, w, dst, h2, w2))) goto done;
            float *up = malloc(sizeof(float) * n2);
            if (!up) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto done; }
            memcpy(up, dst, sizeof(float) * n2);
            char hl[80];
            snprintf(hl, sizeof hl, "%s hires", label);
            g.width = (int)width2, g.height = (int)height2, g.steps = (int)hires_steps, g.initial_noise = NULL;
            g.init_latent = up, g.strength = strength, g.progress_label = hl;
            rc = zl_pipeline_sample(p, &cond, &g, dst);
            free(up);
            if (rc) goto done;
        }
    }
    zl_pipeline_release(p, ZL_PIPE_UNET);

    /* 3. decode every image before writing any, so a failure leaves no partial batch */
    imgs = calloc((size_t)batch, sizeof *imgs);
    if (!imgs) { rc = zl_set_error(ZL_ENOMEM, "out of memory"); goto done; }
    double t_dec = zl_now();
    for (long b = 0; b < batch; b++)
        if ((rc = zl_pipeline_decode(p, latents + (size_t)b * n2, h2, w2, NULL, &imgs[b]))) goto done;
    zl_info("VAE decode: %.2f s", zl_now() - t_dec);

    /* 4. hashes and the parameters chunk */
    it.prompt = prompt;
    it.negative = negative;
    it.steps = (int)steps;
    it.clip_skip = (int)clip_skip;
    it.cfg = (float)cfg;
    it.sampler = (zl_sampler_kind)skind;
    it.karras = karras;
    it.width = (int)width;
    it.height = (int)height;
    char model_name[256];
    short_name(model, model_name, sizeof model_name);
    it.model_name = model_name;
    /* A1111 hashes the checkpoint file; a diffusers folder is named by its UNet weights */
    if ((rc = short_hash(mp->unet_weights, 10, it.model_hash))) goto done;
    char vae_name[256];
    if (vae) {
        /* A1111 writes the VAE file's base name, extension kept */
        size_t vl = strlen(vae);
        while (vl > 1 && vae[vl - 1] == '/') vl--;
        size_t vb = vl;
        while (vb > 0 && vae[vb - 1] != '/') vb--;
        snprintf(vae_name, sizeof vae_name, "%.*s", (int)(vl - vb), vae + vb);
        it.vae_name = vae_name;
        if ((rc = short_hash(mp->vae_weights, 10, it.vae_hash))) goto done;
    }
    it.n_loras = n_lora;
    for (int k = 0; k < n_lora; k++)
        if ((rc = short_hash(lpaths[k], 12, it.lora_hashes[k]))) goto done;
    it.noise_spec = noise_spec;
    it.sched = *zl_pipeline_sched(p);
    it.cfg_rescale = (float)cfg_rescale;
    it.strength = init_path || hires ? strength : 0;
    it.hires_scale = hires ? hires_scale : 0;
    it.hires_steps = (int)A->hires_steps;
    it.precision = zl_get_matmul_precision() != ZL_MATMUL_F32 && zl_bf16_units()
                       ? zl_cli_precision_name(zl_get_matmul_precision())
                       : NULL;
    it.chunks = long_prompt ? (cond.T > 0 ? cond.T : ZL_CLIP_CTX) / ZL_CLIP_CTX : 0;
    it.no_emphasis = no_emphasis;

    const char *tmp;
    if (latent_path) {
        zl_st_entry e = {.name = "latent", .dtype = ZL_DT_F32, .ndim = 4, .shape = {batch, C, h2, w2}, .data = latents};
        if ((rc = zl_outset_add(&outs, latent_path, &tmp)) || (rc = zl_st_write(tmp, &e, 1, NULL, 0, inputs, n_inputs)))
            goto done;
    }
    for (long b = 0; b < batch; b++) {
        char *params = NULL;
        if ((rc = make_parameters(&it, seed + (uint64_t)b, b, &params))) goto done;
        zl_png_text tx = {.key = "parameters", .value = params};
        rc = zl_outset_add(&outs, out_paths[b], &tmp);
        if (!rc && (rc = zl_png_write(tmp, &imgs[b], &tx, 1, inputs, n_inputs))) zl_error_prefix(rc, "%s", out_paths[b]);
        free(params);
        if (rc) goto done;
    }
    if (grid) {
        zl_image gi = {0};
        int cols = (int)ceil(sqrt((double)batch));
        char *params = NULL;
        if (!(rc = zl_image_grid(imgs, (int)batch, cols, &gi)) && !(rc = make_parameters(&it, seed, 0, &params)) &&
            !(rc = zl_outset_add(&outs, grid_path, &tmp))) {
            zl_png_text tx = {.key = "parameters", .value = params};
            if ((rc = zl_png_write(tmp, &gi, &tx, 1, inputs, n_inputs))) zl_error_prefix(rc, "%s", grid_path);
        }
        free(params);
        zl_image_free(&gi);
        if (rc) goto done;
    }
    if ((rc = zl_outset_commit(&outs))) goto done;
    for (long b = 0; b < batch; b++) printf("%s\n", out_paths[b]);
    if (grid_path) printf("%s\n", grid_path);
    zl_info("done in %.1f s (peak RSS %.2f GB)", zl_now() - t0, (double)zl_peak_rss() / 1e9);

done:
    if (rc) zl_cli_fail(rc, NULL);
    zl_outset_free(&outs); /* on failure: the temporaries go, the destinations stay as they were */
    zl_cond_free(&cond);
    zl_pipeline_free(p);
    for (int k = 0; k < n_lora; k++) free(lpaths[k]);
    if (imgs)
        for (long b = 0; b < batch; b++) zl_image_free(&imgs[b]);
    free(imgs);
    if (out_paths)
        for (long b = 0; b < batch; b++) free(out_paths[b]);
    free(out_paths);
    free(grid_path);
    free(prompt_buf);
    free(noise_file);
    free(noise);
    free(latents);
    free(lo);
    free(init_lat);
    zl_image_free(&init_img);
    if (!rc) return ZL_EXIT_OK;
    return rc == ZL_EINVAL ? ZL_EXIT_USAGE : ZL_EXIT_FAIL;
}

int zl_cmd_generate(int argc, char **argv) {
    gen_args A = {.sampler_name = "euler", .steps = 50, .batch = 1, .clip_skip = 1, .cfg = NAN, .strength = NAN,
                  .hires_scale = NAN, .precision = PREC_UNSET};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int c = zl_cli_common(CMD, argc, argv, &i);
        if (!c) c = zl_cli_sched_flag(CMD, argc, argv, &i, &A.sched);
        if (!c) c = zl_cli_precision_flag(CMD, argc, argv, &i, &A.precision);
        if (c < 0) return ZL_EXIT_USAGE;
        if (c) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return ZL_EXIT_OK; }
        if (!strcmp(a, "--grid")) { A.grid = 1; continue; }
        if (!strcmp(a, "--f32-weights")) { A.f32 = 1; continue; }
        if (!strcmp(a, "--no-tile")) { A.no_tile = 1; continue; }
        if (!strcmp(a, "--long-prompt")) { A.long_prompt = 1; continue; }
        if (!strcmp(a, "--no-emphasis")) { A.no_emphasis = 1; continue; }
        const char **dst = !strcmp(a, "--model") ? &A.model
                           : (!strcmp(a, "-o") || !strcmp(a, "--out")) ? &A.out_path
                           : (!strcmp(a, "-p") || !strcmp(a, "--prompt")) ? &A.prompt_arg
                           : (!strcmp(a, "-n") || !strcmp(a, "--negative") || !strcmp(a, "--negative-prompt")) ? &A.negative
                           : !strcmp(a, "--prompt-file") ? &A.prompt_file
                           : !strcmp(a, "--sampler") ? &A.sampler_name
                           : !strcmp(a, "--initial-noise") ? &A.noise_spec
                           : !strcmp(a, "--save-latent") ? &A.latent_path
                           : !strcmp(a, "--unet-config") ? &A.unet_cfg
                           : !strcmp(a, "--vae-config") ? &A.vae_cfg
                           : !strcmp(a, "--vae") ? &A.vae
                           : !strcmp(a, "--te1-config") ? &A.te1_cfg
                           : !strcmp(a, "--te2-config") ? &A.te2_cfg
                           : (!strcmp(a, "--init-image") || !strcmp(a, "-i")) ? &A.init_path
                           : !strcmp(a, "--from-png") ? &A.from_png
                           : NULL;
        long *num = !strcmp(a, "--steps") ? &A.steps
                    : !strcmp(a, "--clip-skip") ? &A.clip_skip
                    : (!strcmp(a, "-W") || !strcmp(a, "--width")) ? &A.width
                    : (!strcmp(a, "-H") || !strcmp(a, "--height")) ? &A.height
                    : !strcmp(a, "--batch") ? &A.batch
                    : !strcmp(a, "--hires-steps") ? &A.hires_steps
                    : NULL;
        int is_lora = !strcmp(a, "--lora"), is_emb = !strcmp(a, "--embedding"),
            is_cfg = !strcmp(a, "--cfg") || !strcmp(a, "--cfg-scale"),
            is_seed = !strcmp(a, "--seed"), is_resc = !strcmp(a, "--cfg-rescale") || !strcmp(a, "--guidance-rescale"),
            is_str = !strcmp(a, "--strength") || !strcmp(a, "--denoising-strength"), is_hs = !strcmp(a, "--hires-scale");
        if (!dst && !num && !is_lora && !is_emb && !is_cfg && !is_seed && !is_resc && !is_str && !is_hs)
            return zl_cli_usage(CMD, "unknown option '%s'", a);
        if (i + 1 >= argc) return zl_cli_usage(CMD, "%s needs a value", a);
        const char *v = argv[++i];
        if (dst) {
            *dst = v;
            if (dst == &A.sampler_name) A.have_sampler = 1;
        } else if (is_lora) {
            if (A.n_lora == MAX_LORAS) return zl_cli_usage(CMD, "at most %d --lora", MAX_LORAS);
            A.lora_args[A.n_lora++] = v;
        } else if (is_emb) {
            if (A.n_emb == MAX_EMBEDDINGS) return zl_cli_usage(CMD, "at most %d --embedding", MAX_EMBEDDINGS);
            A.emb_args[A.n_emb++] = v;
        } else if (is_cfg) {
            if (zl_cli_float(CMD, a, v, &A.cfg)) return ZL_EXIT_USAGE;
        } else if (is_str) {
            if (zl_cli_float(CMD, a, v, &A.strength)) return ZL_EXIT_USAGE;
            if (!(A.strength > 0 && A.strength <= 1)) return zl_cli_usage(CMD, "%s %s is outside (0, 1]", a, v);
        } else if (is_hs) {
            if (zl_cli_float(CMD, a, v, &A.hires_scale)) return ZL_EXIT_USAGE;
            if (!(A.hires_scale > 1 && A.hires_scale <= 4)) return zl_cli_usage(CMD, "%s %s is outside (1, 4]", a, v);
        } else if (is_resc) {
            if (zl_cli_float(CMD, a, v, &A.cfg_rescale)) return ZL_EXIT_USAGE;
            A.rescale_given = 1;
            if (A.cfg_rescale < 0 || A.cfg_rescale > 1) return zl_cli_usage(CMD, "%s %s is outside [0, 1]", a, v);
        } else if (is_seed) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 10);
            if (!*v || *end || *v == '-' || errno)
                return zl_cli_usage(CMD, "--seed expects an integer in [0, %llu], got '%s'", (unsigned long long)UINT64_MAX, v);
            A.seed = s;
            A.have_seed = 1;
        } else if (num == &A.steps) {
            if (zl_cli_int(CMD, a, v, 1, 1000, num)) return ZL_EXIT_USAGE;
            A.steps_given = 1;
        } else if (num == &A.hires_steps) {
            if (zl_cli_int(CMD, a, v, 1, 1000, num)) return ZL_EXIT_USAGE;
        } else if (num == &A.batch) {
            if (zl_cli_int(CMD, a, v, 1, MAX_BATCH, num)) return ZL_EXIT_USAGE;
        } else if (num == &A.clip_skip) {
            if (zl_cli_int(CMD, a, v, 1, 48, num)) return ZL_EXIT_USAGE;
            A.clip_given = 1;
        } else {
            if (zl_cli_int(CMD, a, v, 1, ZL_IMAGE_MAX_SIDE, num)) return ZL_EXIT_USAGE;
            if (*num % 8)
                return zl_cli_usage(CMD, "%s %ld is not a multiple of 8 (the VAE works on 8x8 pixel cells)", a, *num);
        }
    }
    zl_png_params pp = {0};
    if (A.from_png) {
        /* the image's settings, where the command line gives none */
        int rc = zl_png_params_read(A.from_png, &pp);
        if (rc) return zl_cli_fail(rc == ZL_EINVAL ? ZL_EFORMAT : rc, NULL);
        int code = apply_png(A.from_png, &pp, &A);
        if (code) {
            zl_png_params_free(&pp);
            return code;
        }
    }
    zl_cli_set_precision(CMD, A.precision == PREC_UNSET ? ZL_CLI_PREC_AUTO : A.precision);
    int code = generate_run(&A); /* its strings may point into pp */
    zl_png_params_free(&pp);
    return code;
}
