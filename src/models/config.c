/* UNet configs (diffusers config.json and the built-in standard ones) and the
 * resolution of a model path (diffusers folder or single file) into its parts. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ziplora/fileio.h"
#include "ziplora/model.h"
#include "ziplora/safetensors.h"

const char *zl_family_name(zl_family f) {
    switch (f) {
    case ZL_FAMILY_SDXL: return "sdxl";
    case ZL_FAMILY_SD1: return "sd1";
    default: return "unknown";
    }
}

void zl_unet_config_sdxl_base(zl_unet_config *c) {
    memset(c, 0, sizeof *c);
    c->family = ZL_FAMILY_SDXL;
    c->in_channels = c->out_channels = 4;
    c->n_levels = 3;
    const int boc[3] = {320, 640, 1280}, depth[3] = {1, 2, 10}, heads[3] = {5, 10, 20};
    for (int i = 0; i < 3; i++) {
        c->block_out_channels[i] = boc[i];
        c->transformer_depth[i] = depth[i];
        c->heads[i] = heads[i];
    }
    c->down_types[0] = ZL_BLOCK_PLAIN; c->down_types[1] = c->down_types[2] = ZL_BLOCK_CROSSATTN;
    c->up_types[0] = c->up_types[1] = ZL_BLOCK_CROSSATTN; c->up_types[2] = ZL_BLOCK_PLAIN;
    c->layers_per_block = 2;
    c->transformer_depth_mid = 10;
    c->cross_attention_dim = 2048;
    c->norm_num_groups = 32;
    c->norm_eps = 1e-5f;
    c->use_linear_projection = 1;
    c->has_text_time = 1;
    c->addition_time_embed_dim = 256;
    c->projection_class_embeddings_input_dim = 2816;
    c->time_embed_dim = 1280;
    c->flip_sin_to_cos = 1;
    c->freq_shift = 0;
    c->sample_size = 128;
}

void zl_unet_config_sd15(zl_unet_config *c) {
    memset(c, 0, sizeof *c);
    c->family = ZL_FAMILY_SD1;
    c->in_channels = c->out_channels = 4;
    c->n_levels = 4;
    const int boc[4] = {320, 640, 1280, 1280};
    for (int i = 0; i < 4; i++) {
        c->block_out_channels[i] = boc[i];
        c->transformer_depth[i] = 1;
        c->heads[i] = 8;
    }
    c->down_types[0] = c->down_types[1] = c->down_types[2] = ZL_BLOCK_CROSSATTN; c->down_types[3] = ZL_BLOCK_PLAIN;
    c->up_types[0] = ZL_BLOCK_PLAIN; c->up_types[1] = c->up_types[2] = c->up_types[3] = ZL_BLOCK_CROSSATTN;
    c->layers_per_block = 2;
    c->transformer_depth_mid = 1;
    c->cross_attention_dim = 768;
    c->norm_num_groups = 32;
    c->norm_eps = 1e-5f;
    c->use_linear_projection = 0;
    c->time_embed_dim = 1280;
    c->flip_sin_to_cos = 1;
    c->freq_shift = 0;
    c->sample_size = 64;
}

/* Every size in a config must lie in [0, ZL_CFG_MAX]: far above any real
 * model, low enough that products of sizes cannot overflow. */
#define ZL_CFG_MAX (1 << 20)

static int in_range(json_int_t v) { return v >= 0 && v <= ZL_CFG_MAX; }

/* An int, or a list of ints of length n (a scalar is broadcast). */
static int int_or_list(json_t *v, int n, int *out, const char *key, const char *label) {
    if (json_is_integer(v)) {
        if (!in_range(json_integer_value(v)))
            return zl_set_error(ZL_EFORMAT, "%s: '%s' = %lld is out of range [0, %d]", label, key,
                                (long long)json_integer_value(v), ZL_CFG_MAX);
        for (int i = 0; i < n; i++) out[i] = (int)json_integer_value(v);
        return ZL_OK;
    }
    if (json_is_array(v) && (int)json_array_size(v) == n) {
        for (int i = 0; i < n; i++) {
            json_t *e = json_array_get(v, (size_t)i);
            if (!json_is_integer(e)) return zl_set_error(ZL_EFORMAT, "%s: '%s' entry %d is not an integer", label, key, i);
            if (!in_range(json_integer_value(e)))
                return zl_set_error(ZL_EFORMAT, "%s: '%s' entry %d = %lld is out of range [0, %d]", label, key, i,
                                    (long long)json_integer_value(e), ZL_CFG_MAX);
            out[i] = (int)json_integer_value(e);
        }
        return ZL_OK;
    }
    return zl_set_error(ZL_EFORMAT, "%s: '%s' must be an integer or a list of %d integers", label, key, n);
}

static int get_int(json_t *root, const char *key, int def, int *out, const char *label) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) { *out = def; return ZL_OK; }
    if (!json_is_integer(v)) return zl_set_error(ZL_EFORMAT, "%s: '%s' is not an integer", label, key);
    if (!in_range(json_integer_value(v)))
        return zl_set_error(ZL_EFORMAT, "%s: '%s' = %lld is out of range [0, %d]", label, key,
                            (long long)json_integer_value(v), ZL_CFG_MAX);
    *out = (int)json_integer_value(v);
    return ZL_OK;
}

static int is_set(json_t *root, const char *key) {
    json_t *v = json_object_get(root, key);
    return v && !json_is_null(v) && !(json_is_false(v));
}

static const char *get_str(json_t *root, const char *key) {
    json_t *v = json_object_get(root, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int zl_unet_config_parse(const char *json, const char *label, zl_unet_config *c) {
    memset(c, 0, sizeof *c);
    json_error_t jerr;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return zl_set_error(ZL_EFORMAT, "%s: invalid JSON at line %d: %s", label, jerr.line, jerr.text);
    int rc = ZL_OK;
    if (!json_is_object(root)) { rc = zl_set_error(ZL_EFORMAT, "%s: not a JSON object", label); goto done; }

    json_t *boc = json_object_get(root, "block_out_channels");
    if (!json_is_array(boc) || json_array_size(boc) < 1 || json_array_size(boc) > ZL_MAX_LEVELS) {
        rc = zl_set_error(ZL_EFORMAT, "%s: 'block_out_channels' must be a list of 1..%d integers", label, ZL_MAX_LEVELS);
        goto done;
    }
    int n = c->n_levels = (int)json_array_size(boc);
    if ((rc = int_or_list(boc, n, c->block_out_channels, "block_out_channels", label))) goto done;

    json_t *dt = json_object_get(root, "down_block_types"), *ut = json_object_get(root, "up_block_types");
    if (!json_is_array(dt) || (int)json_array_size(dt) != n || !json_is_array(ut) || (int)json_array_size(ut) != n) {
        rc = zl_set_error(ZL_EFORMAT, "%s: down_block_types/up_block_types must list %d blocks", label, n);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const char *d = json_string_value(json_array_get(dt, (size_t)i)), *u = json_string_value(json_array_get(ut, (size_t)i));
        if (d && !strcmp(d, "CrossAttnDownBlock2D")) c->down_types[i] = ZL_BLOCK_CROSSATTN;
        else if (d && !strcmp(d, "DownBlock2D")) c->down_types[i] = ZL_BLOCK_PLAIN;
        else { rc = zl_set_error(ZL_EUNSUPPORTED, "%s: down block type '%s' is not supported", label, d ? d : "?"); goto done; }
        if (u && !strcmp(u, "CrossAttnUpBlock2D")) c->up_types[i] = ZL_BLOCK_CROSSATTN;
        else if (u && !strcmp(u, "UpBlock2D")) c->up_types[i] = ZL_BLOCK_PLAIN;
        else { rc = zl_set_error(ZL_EUNSUPPORTED, "%s: up block type '%s' is not supported", label, u ? u : "?"); goto done; }
    }
    int lpb[ZL_MAX_LEVELS];
    json_t *v = json_object_get(root, "layers_per_block");
    if (!v) { rc = zl_set_error(ZL_EFORMAT, "%s: missing 'layers_per_block'", label); goto done; }
    if ((rc = int_or_list(v, n, lpb, "layers_per_block", label))) goto done;
    for (int i = 1; i < n; i++)
        if (lpb[i] != lpb[0]) { rc = zl_set_error(ZL_EUNSUPPORTED, "%s: per-level layers_per_block is not supported", label); goto done; }
    c->layers_per_block = lpb[0];
    if (c->layers_per_block > 16) { rc = zl_set_error(ZL_EUNSUPPORTED, "%s: layers_per_block %d is not supported (at most 16)", label, c->layers_per_block); goto done; }

    v = json_object_get(root, "transformer_layers_per_block");
    if (!v || json_is_null(v)) for (int i = 0; i < n; i++) c->transformer_depth[i] = 1;
    else if ((rc = int_or_list(v, n, c->transformer_depth, "transformer_layers_per_block", label))) goto done;
    for (int i = 0; i < n; i++)
        if (c->transformer_depth[i] > 64) { rc = zl_set_error(ZL_EUNSUPPORTED, "%s: transformer depth %d is not supported (at most 64)", label, c->transformer_depth[i]); goto done; }
    c->transformer_depth_mid = c->transformer_depth[n - 1];

    /* diffusers: num_attention_heads = num_attention_heads or attention_head_dim (a head COUNT) */
    v = json_object_get(root, "num_attention_heads");
    if (!v || json_is_null(v)) v = json_object_get(root, "attention_head_dim");
    if (!v || json_is_null(v)) { rc = zl_set_error(ZL_EFORMAT, "%s: missing attention_head_dim", label); goto done; }
    if ((rc = int_or_list(v, n, c->heads, "attention_head_dim", label))) goto done;

    if ((rc = get_int(root, "in_channels", 4, &c->in_channels, label))) goto done;
    if ((rc = get_int(root, "out_channels", 4, &c->out_channels, label))) goto done;
    if ((rc = get_int(root, "cross_attention_dim", 768, &c->cross_attention_dim, label))) goto done;
    if ((rc = get_int(root, "norm_num_groups", 32, &c->norm_num_groups, label))) goto done;
    if ((rc = get_int(root, "sample_size", 64, &c->sample_size, label))) goto done;
    if ((rc = get_int(root, "time_embedding_dim", c->block_out_channels[0] > 0 && c->block_out_channels[0] <= 0x1fffffff ? 4 * c->block_out_channels[0] : 0, &c->time_embed_dim, label))) goto done;
    json_t *eps = json_object_get(root, "norm_eps");
    c->norm_eps = json_is_number(eps) ? (float)json_number_value(eps) : 1e-5f;
    json_t *fs = json_object_get(root, "freq_shift");
    c->freq_shift = json_is_number(fs) ? (float)json_number_value(fs) : 0.0f;
    json_t *fl = json_object_get(root, "flip_sin_to_cos");
    c->flip_sin_to_cos = fl ? json_is_true(fl) : 1;
    c->use_linear_projection = json_is_true(json_object_get(root, "use_linear_projection"));

    const char *aet = get_str(root, "addition_embed_type");
    if (aet && !strcmp(aet, "text_time")) {
        c->has_text_time = 1;
        if ((rc = get_int(root, "addition_time_embed_dim", 256, &c->addition_time_embed_dim, label))) goto done;
        if ((rc = get_int(root, "projection_class_embeddings_input_dim", 2816, &c->projection_class_embeddings_input_dim, label))) goto done;
    } else if (aet) {
        rc = zl_set_error(ZL_EUNSUPPORTED, "%s: addition_embed_type '%s' is not supported", label, aet);
        goto done;
    }
    /* Features this engine does not implement: refuse rather than compute something else. */
    const char *unsupported[] = {"class_embed_type", "encoder_hid_dim_type", "time_cond_proj_dim", "num_class_embeds",
                                 "dual_cross_attention", "only_cross_attention", "center_input_sample",
                                 "class_embeddings_concat", "mid_block_only_cross_attention", "timestep_post_act",
                                 "time_embedding_act_fn"};
    for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++)
        if (is_set(root, unsupported[i])) { rc = zl_set_error(ZL_EUNSUPPORTED, "%s: '%s' is not supported", label, unsupported[i]); goto done; }
    const char *s;
    if ((s = get_str(root, "resnet_time_scale_shift")) && strcmp(s, "default")) { rc = zl_set_error(ZL_EUNSUPPORTED, "%s: resnet_time_scale_shift '%s' is not supported", label, s); goto done; }
    if ((s = get_str(root, "attention_type")) && strcmp(s, "default")) { rc = zl_set_error(ZL_EUNSUPPORTED, "%s: attention_type '%s' is not supported", label, s); goto done; }
    if ((s = get_str(root, "time_embedding_type")) && strcmp(s, "positional")) { rc = zl_set_error(ZL_EUNSUPPORTED, "%s: time_embedding_type '%s' is not supported", label, s); goto done; }
    if ((s = get_str(root, "mid_block_type")) && strcmp(s, "UNetMidBlock2DCrossAttn")) { rc = zl_set_error(ZL_EUNSUPPORTED, "%s: mid_block_type '%s' is not supported", label, s); goto done; }
    if ((s = get_str(root, "act_fn")) && strcmp(s, "silu")) { rc = zl_set_error(ZL_EUNSUPPORTED, "%s: act_fn '%s' is not supported", label, s); goto done; }
    int k;
    if ((rc = get_int(root, "conv_in_kernel", 3, &k, label))) goto done;
    if (k != 3) { rc = zl_set_error(ZL_EUNSUPPORTED, "%s: conv_in_kernel %d is not supported", label, k); goto done; }

    for (int i = 0; i < n; i++) {
        if (c->block_out_channels[i] <= 0 || c->heads[i] <= 0 || c->norm_num_groups <= 0 ||
            c->block_out_channels[i] % c->norm_num_groups || c->block_out_channels[i] % c->heads[i] ||
            c->transformer_depth[i] < 0) {
            rc = zl_set_error(ZL_EFORMAT, "%s: inconsistent sizes at level %d (channels %d, heads %d, groups %d)", label, i,
                              c->block_out_channels[i], c->heads[i], c->norm_num_groups);
            goto done;
        }
    }
    if (c->layers_per_block < 1 || c->in_channels < 1 || c->out_channels < 1 || c->cross_attention_dim < 1 || c->time_embed_dim < 1) {
        rc = zl_set_error(ZL_EFORMAT, "%s: invalid sizes", label);
        goto done;
    }
    c->family = c->has_text_time ? ZL_FAMILY_SDXL : ZL_FAMILY_SD1;
done:
    json_decref(root);
    return rc;
}

int zl_unet_config_load(const char *path, zl_unet_config *cfg) {
    char *s;
    int rc = zl_read_file(path, &s, NULL);
    if (rc) return rc;
    rc = zl_unet_config_parse(s, path, cfg);
    free(s);
    return rc;
}

/* ---------------------------------------------------------------- paths */

static char *join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", a, b);
    return p;
}

/* First existing of dir/name candidates, or NULL. */
static char *first_existing(const char *dir, const char *const *names) {
    for (int i = 0; names[i]; i++) {
        char *p = join(dir, names[i]);
        if (p && zl_file_exists(p)) return p;
        free(p);
    }
    return NULL;
}

/* in diffusers' order of preference; .bin is the PyTorch checkpoint older folders hold */
static const char *const diffusers_weight_names[] = {
    "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.fp16.safetensors.index.json",
    "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin", NULL};

int zl_model_paths_set_vae(zl_model_paths *p, const char *vae) {
    struct stat st;
    if (stat(vae, &st) != 0) return zl_set_error(ZL_EIO, "--vae %s: %s", vae, strerror(errno));
    char *w = NULL, *c = NULL;
    if (S_ISDIR(st.st_mode)) {
        w = first_existing(vae, diffusers_weight_names);
        if (!w) return zl_set_error(ZL_ENOTFOUND, "--vae %s: a folder without diffusion_pytorch_model.safetensors", vae);
        c = join(vae, "config.json");
    } else {
        w = strdup(vae);
        /* a diffusers VAE file: its folder's config.json (a standalone file's neighbours say nothing) */
        const char *base = strrchr(vae, '/');
        base = base ? base + 1 : vae;
        if (!strncmp(base, "diffusion_pytorch_model", 23)) {
            size_t dl = (size_t)(base - vae);
            c = malloc(dl + 12);
            if (c) {
                memcpy(c, vae, dl);
                strcpy(c + dl, "config.json");
            }
        }
    }
    if (!w) { free(c); return zl_set_error(ZL_ENOMEM, "out of memory"); }
    if (c && !zl_file_exists(c)) { free(c); c = NULL; }
    free(p->vae_weights);
    free(p->vae_config);
    p->vae_weights = w;
    p->vae_config = c;
    return ZL_OK;
}

/* diffusers' scheduler_config.json: the fields that set the noise schedule.
 * Schedules we would run wrongly are refused, naming the field. */
static int sched_config_load(const char *path, zl_sched_config *c) {
    json_error_t je;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        return zl_set_error(ZL_EFORMAT, "%s: not a JSON object (%s, line %d)", path, j ? "top level" : je.text,
                            j ? 0 : je.line);
    }
    int rc = ZL_OK;
    json_t *v;
    if ((v = json_object_get(j, "prediction_type")) && !json_is_null(v)) {
        const char *pv = json_string_value(v);
        if (pv && !strcmp(pv, "epsilon")) c->prediction = ZL_PRED_EPSILON;
        else if (pv && !strcmp(pv, "v_prediction")) c->prediction = ZL_PRED_V;
        else
            rc = zl_set_error(ZL_EUNSUPPORTED, "%s: prediction_type %s is not supported (epsilon or v_prediction)", path,
                              pv ? pv : "(not a string)");
    }
    /* the sampler the model ships with, when it is one we run (generate uses it by default, as a
     * diffusers pipeline would) */
    const char *cls = json_string_value(json_object_get(j, "_class_name"));
    if (cls && !strcmp(cls, "EulerDiscreteScheduler")) c->sampler = ZL_SAMPLER_EULER;
    else if (cls && !strcmp(cls, "EulerAncestralDiscreteScheduler")) c->sampler = ZL_SAMPLER_EULER_A;
    else if (cls && !strcmp(cls, "DDIMScheduler")) c->sampler = ZL_SAMPLER_DDIM;
    else if (cls && !strcmp(cls, "LCMScheduler")) {
        /* the distillation grid and boundary scaling we run: refuse others by name */
        json_t *os = json_object_get(j, "original_inference_steps"), *ts = json_object_get(j, "timestep_scaling");
        if (!rc && os && !json_is_null(os) && !(json_is_integer(os) && json_integer_value(os) == 50))
            rc = zl_set_error(ZL_EUNSUPPORTED, "%s: LCMScheduler original_inference_steps other than 50 is not supported",
                              path);
        if (!rc && ts && !json_is_null(ts) && !(json_is_number(ts) && json_number_value(ts) == 10.0))
            rc = zl_set_error(ZL_EUNSUPPORTED, "%s: LCMScheduler timestep_scaling other than 10 is not supported", path);
        c->sampler = ZL_SAMPLER_LCM;
    }
    else if (cls && !strcmp(cls, "DPMSolverMultistepScheduler")) {
        const char *alg = json_string_value(json_object_get(j, "algorithm_type"));
        json_t *ord = json_object_get(j, "solver_order");
        if (!ord || json_integer_value(ord) == 2) {
            if (!alg || !strcmp(alg, "dpmsolver++")) c->sampler = ZL_SAMPLER_DPMPP_2M;
            else if (!strcmp(alg, "sde-dpmsolver++")) c->sampler = ZL_SAMPLER_DPMPP_2M_SDE;
        }
    }
    c->karras = json_is_true(json_object_get(j, "use_karras_sigmas")) && c->sampler != ZL_SAMPLER_EULER_A &&
                c->sampler != ZL_SAMPLER_LCM;
    if (!rc && (v = json_object_get(j, "timestep_spacing")) && !json_is_null(v)) {
        int sp = zl_spacing_from_name(json_string_value(v));
        if (sp < 0)
            rc = zl_set_error(ZL_EUNSUPPORTED, "%s: timestep_spacing %s is not supported (leading, trailing or linspace)",
                              path, json_is_string(v) ? json_string_value(v) : "(not a string)");
        else c->spacing = (zl_spacing)sp;
    }
    if (!rc && (v = json_object_get(j, "set_alpha_to_one")) && !json_is_null(v)) {
        if (!json_is_boolean(v)) rc = zl_set_error(ZL_EFORMAT, "%s: set_alpha_to_one is not true or false", path);
        else c->alpha_to_one = json_is_true(v);
    }
    /* a DDIM config on another spacing: not a default we can run (DDIM is leading-only here) */
    if (c->sampler == ZL_SAMPLER_DDIM && c->spacing != ZL_SPACING_LEADING) c->sampler = -1;
    if (!rc && (v = json_object_get(j, "rescale_betas_zero_snr")) && !json_is_null(v)) {
        if (!json_is_boolean(v)) rc = zl_set_error(ZL_EFORMAT, "%s: rescale_betas_zero_snr is not true or false", path);
        else c->zero_snr = json_is_true(v);
    }
    if (!rc && (v = json_object_get(j, "beta_schedule")) && !json_is_null(v) &&
        (!json_is_string(v) || strcmp(json_string_value(v), "scaled_linear")))
        rc = zl_set_error(ZL_EUNSUPPORTED, "%s: beta_schedule %s is not supported (scaled_linear, as SD and SDXL)", path,
                          json_is_string(v) ? json_string_value(v) : "(not a string)");
    if (!rc && (v = json_object_get(j, "trained_betas")) && !json_is_null(v))
        rc = zl_set_error(ZL_EUNSUPPORTED, "%s: trained_betas is not supported", path);
    if (!rc && (v = json_object_get(j, "num_train_timesteps")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 2 || json_integer_value(v) > ZL_MAX_TRAIN_STEPS)
            rc = zl_set_error(ZL_EFORMAT, "%s: num_train_timesteps must be an integer in [2, %d]", path, ZL_MAX_TRAIN_STEPS);
        else c->n_train = (int)json_integer_value(v);
    }
    if (!rc && (v = json_object_get(j, "steps_offset")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1000)
            rc = zl_set_error(ZL_EFORMAT, "%s: steps_offset must be an integer in [0, 1000]", path);
        else c->steps_offset = (int)json_integer_value(v);
    }
    const char *bn[2] = {"beta_start", "beta_end"};
    float *bv[2] = {&c->beta_start, &c->beta_end};
    for (int i = 0; i < 2 && !rc; i++)
        if ((v = json_object_get(j, bn[i])) && !json_is_null(v)) {
            double d = json_number_value(v);
            if (!json_is_number(v) || !(d > 0 && d < 1))
                rc = zl_set_error(ZL_EFORMAT, "%s: %s must be a number in (0, 1)", path, bn[i]);
            else *bv[i] = (float)d;
        }
    json_decref(j);
    return rc;
}

void zl_model_paths_free(zl_model_paths *p) {
    free(p->root); free(p->unet_weights); free(p->unet_config);
    free(p->te1_weights); free(p->te1_config); free(p->te2_weights); free(p->te2_config);
    free(p->vae_weights); free(p->vae_config);
    memset(p, 0, sizeof *p);
}

int zl_model_paths_resolve(const char *model, zl_model_paths *out) {
    memset(out, 0, sizeof *out);
    if (!zl_file_exists(model)) return zl_set_error(ZL_EIO, "%s: no such model file or folder", model);
    out->root = strdup(model);
    if (!zl_is_dir(model)) {
        zl_st_file *f;
        int rc = zl_st_open(model, &f);
        if (rc) { zl_model_paths_free(out); return rc; }
        int unet = 0, sdxl = 0, sd1 = 0, vae = 0, vpred = 0, ztsnr = 0;
        const char *other = NULL; /* a model family we do not run, named from its keys */
        for (int i = 0; i < zl_st_count(f) && !other; i++) {
            const char *k = zl_st_at(f, i)->name;
            if (!strncmp(k, "model.diffusion_model.double_blocks.", 36)) other = "a FLUX checkpoint";
            else if (!strncmp(k, "model.diffusion_model.joint_blocks.", 35)) other = "a Stable Diffusion 3 checkpoint";
            else if (!strncmp(k, "cond_stage_model.model.", 23))
                other = "a Stable Diffusion 2.x checkpoint (OpenCLIP ViT-H text encoder)";
            else if (!strncmp(k, "edm_vpred.", 10))
                other = "an EDM v-prediction model (keys 'edm_vpred.*': continuous sigmas, as CosXL)";
            else if (!strcmp(k, "v_pred")) vpred = 1;
            else if (!strcmp(k, "ztsnr")) ztsnr = 1;
            if (!strncmp(k, "model.diffusion_model.", 22)) unet = 1;
            if (!strncmp(k, "conditioner.embedders.1.", 24) || !strcmp(k, "model.diffusion_model.label_emb.0.0.weight")) sdxl = 1;
            if (!strncmp(k, "cond_stage_model.", 17)) sd1 = 1;
            if (!strncmp(k, "first_stage_model.", 18)) vae = 1;
        }
        int has_te1 = sd1 || zl_st_find(f, "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight");
        if (!other && sdxl && !has_te1 && zl_st_find(f, "conditioner.embedders.0.model.ln_final.weight"))
            other = "an SDXL refiner checkpoint (one OpenCLIP text encoder, aesthetic-score conditioning)";
        if (other) {
            zl_st_close(f);
            zl_model_paths_free(out);
            return zl_set_error(ZL_EUNSUPPORTED, "%s: %s is not supported (SDXL base family and SD 1.x only)", model, other);
        }
        zl_st_close(f);
        if (!unet) {
            zl_model_paths_free(out);
            return zl_set_error(ZL_EFORMAT, "%s: not a Stable Diffusion checkpoint (no model.diffusion_model.* tensors)", model);
        }
        out->single_file = 1;
        out->family = sdxl ? ZL_FAMILY_SDXL : ZL_FAMILY_SD1;
        zl_sched_config_default(&out->sched);
        if (vpred) out->sched.prediction = ZL_PRED_V;
        if (ztsnr) {
            out->sched.zero_snr = 1;
            out->sched.spacing = ZL_SPACING_TRAILING;
        }
        out->unet_weights = strdup(model);
        if (has_te1) out->te1_weights = strdup(model);
        if (sdxl) out->te2_weights = strdup(model);
        if (vae) out->vae_weights = strdup(model);
        return ZL_OK;
    }
    /* one file, or shards listed by an index (save_pretrained shards an F32 SDXL UNet: 10.3 GB) */
    const char *const *unet_names = diffusers_weight_names;
    const char *te_names[] = {"model.safetensors", "model.fp16.safetensors", "model.safetensors.index.json",
                              "model.fp16.safetensors.index.json", "pytorch_model.bin", "pytorch_model.fp16.bin", NULL};
    char *ud = join(model, "unet"), *t1 = join(model, "text_encoder"), *t2 = join(model, "text_encoder_2"), *vd = join(model, "vae");
    out->unet_weights = first_existing(ud, unet_names);
    out->unet_config = join(ud, "config.json");
    out->te1_weights = first_existing(t1, te_names);
    out->te2_weights = first_existing(t2, te_names);
    out->vae_weights = first_existing(vd, unet_names);
    if (out->te1_weights) out->te1_config = join(t1, "config.json");
    if (out->te2_weights) out->te2_config = join(t2, "config.json");
    if (out->vae_weights) out->vae_config = join(vd, "config.json");
    free(ud); free(t1); free(t2); free(vd);
    if (!out->unet_weights || !zl_file_exists(out->unet_config)) {
        zl_model_paths_free(out);
        return zl_set_error(ZL_EFORMAT, "%s: not a diffusers model folder (need unet/config.json and unet/diffusion_pytorch_model.safetensors "
                                       "or .bin)", model);
    }
    /* the noise schedule from the scheduler config (absent: the default) */
    zl_sched_config_default(&out->sched);
    char *sc = join(model, "scheduler/scheduler_config.json");
    if (sc && zl_file_exists(sc)) {
        int rc = sched_config_load(sc, &out->sched);
        if (rc) {
            free(sc);
            zl_model_paths_free(out);
            return rc;
        }
    }
    free(sc);
    zl_unet_config cfg;
    int rc = zl_unet_config_load(out->unet_config, &cfg);
    if (rc) { zl_model_paths_free(out); return rc; }
    out->family = cfg.family;
    return ZL_OK;
}
