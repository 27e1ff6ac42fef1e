/* UNet config parsing (diffusers config.json), the built-in standard configs,
 * and model path resolution, against the fixture files and hand-written JSON. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testlib.h"

static const char *base_json(char *buf, size_t n, const char *extra) {
    snprintf(buf, n,
             "{\"block_out_channels\":[32,64],\"down_block_types\":[\"DownBlock2D\",\"CrossAttnDownBlock2D\"],"
             "\"up_block_types\":[\"CrossAttnUpBlock2D\",\"UpBlock2D\"],\"layers_per_block\":2,"
             "\"attention_head_dim\":[2,4],\"norm_num_groups\":32%s}",
             extra);
    return buf;
}

int main(void) {
    zl_unet_config c;
    /* mini-sdxl/unet/config.json, values read off the file */
    CHECK_OK(zl_unet_config_load(zt_data("mini-sdxl/unet/config.json"), &c));
    CHECK(c.family == ZL_FAMILY_SDXL && c.n_levels == 3);
    CHECK(c.block_out_channels[0] == 32 && c.block_out_channels[1] == 64 && c.block_out_channels[2] == 64);
    CHECK(c.heads[0] == 2 && c.heads[2] == 4); /* attention_head_dim is the head COUNT */
    CHECK(c.transformer_depth[2] == 2 && c.transformer_depth_mid == 2);
    CHECK(c.down_types[0] == ZL_BLOCK_PLAIN && c.down_types[1] == ZL_BLOCK_CROSSATTN);
    CHECK(c.up_types[0] == ZL_BLOCK_CROSSATTN && c.up_types[2] == ZL_BLOCK_PLAIN);
    CHECK(c.cross_attention_dim == 64 && c.norm_num_groups == 16 && c.use_linear_projection);
    CHECK(c.has_text_time && c.addition_time_embed_dim == 8 && c.projection_class_embeddings_input_dim == 80);
    CHECK(c.time_embed_dim == 128 && c.flip_sin_to_cos && c.freq_shift == 0.0f);
    CHECK_OK(zl_unet_config_load(zt_data("tiny-sd15/unet/config.json"), &c));
    CHECK(c.family == ZL_FAMILY_SD1 && c.n_levels == 4 && !c.use_linear_projection && !c.has_text_time);
    CHECK(c.heads[0] == 8 && c.heads[3] == 8 && c.transformer_depth[0] == 1 && c.cross_attention_dim == 48);

    /* standard configs: SDXL base and SD 1.5 as published */
    zl_unet_config_sdxl_base(&c);
    CHECK(c.block_out_channels[2] == 1280 && c.transformer_depth[2] == 10 && c.heads[1] == 10 &&
          c.cross_attention_dim == 2048 && c.projection_class_embeddings_input_dim == 2816);
    zl_unet_config_sd15(&c);
    CHECK(c.n_levels == 4 && c.heads[0] == 8 && c.cross_attention_dim == 768 && c.family == ZL_FAMILY_SD1);

    /* num_attention_heads, when set, wins over attention_head_dim */
    char j[2048];
    CHECK_OK(zl_unet_config_parse(base_json(j, sizeof j, ",\"num_attention_heads\":[4,8]"), "j", &c));
    CHECK(c.heads[0] == 4 && c.heads[1] == 8);
    /* rejections name the key */
    const struct { const char *extra, *word; } bad[] = {
        {",\"class_embed_type\":\"timestep\"", "class_embed_type"},
        {",\"resnet_time_scale_shift\":\"scale_shift\"", "resnet_time_scale_shift"},
        {",\"addition_embed_type\":\"text\"", "addition_embed_type"},
        {",\"cross_attention_dim\":4294967328", "cross_attention_dim"},
        {",\"transformer_layers_per_block\":[1,1000]", "transformer"},
        {",\"conv_in_kernel\":7", "conv_in_kernel"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECKM(zl_unet_config_parse(base_json(j, sizeof j, bad[i].extra), "cfg.json", &c) != ZL_OK, "%s accepted", bad[i].extra);
        CHECKM(strstr(zl_errmsg(), bad[i].word) && strstr(zl_errmsg(), "cfg.json"), "message '%s' lacks '%s'", zl_errmsg(), bad[i].word);
    }
    CHECK(zl_unet_config_parse("{\"block_out_channels\":[4294967328],\"down_block_types\":[\"DownBlock2D\"],"
                               "\"up_block_types\":[\"UpBlock2D\"],\"layers_per_block\":2,\"attention_head_dim\":8}",
                               "x", &c) == ZL_EFORMAT);
    CHECK(zl_unet_config_parse("{\"block_out_channels\":[32],\"down_block_types\":[\"DownBlock2D\"],"
                               "\"up_block_types\":[\"UpBlock2D\"],\"layers_per_block\":1000000000,\"attention_head_dim\":8}",
                               "x", &c) != ZL_OK);
    CHECK(zl_unet_config_parse("[1]", "x", &c) == ZL_EFORMAT);
    CHECK(zl_unet_config_parse("{", "x", &c) == ZL_EFORMAT);
    /* groups must divide the channels */
    CHECK(zl_unet_config_parse(base_json(j, sizeof j, ",\"norm_num_groups\":24"), "x", &c) != ZL_OK);

    /* model paths: diffusers folder, single file, errors */
    zl_model_paths p;
    CHECK_OK(zl_model_paths_resolve(zt_data("mini-sdxl"), &p));
    CHECK(!p.single_file && p.family == ZL_FAMILY_SDXL && p.te1_weights && p.te2_weights && p.vae_weights);
    zl_model_paths_free(&p);
    CHECK_OK(zl_model_paths_resolve(zt_data("tiny-sd15/single_file.safetensors"), &p));
    CHECK(p.single_file && p.family == ZL_FAMILY_SD1 && p.te1_weights && !p.te2_weights && p.vae_weights);
    zl_model_paths_free(&p);
    CHECK_OK(zl_model_paths_resolve(zt_data("mini-sdxl/single_file.safetensors"), &p));
    CHECK(p.single_file && p.family == ZL_FAMILY_SDXL && p.te2_weights);
    zl_model_paths_free(&p);
    CHECK(zl_model_paths_resolve("/no/such/model", &p) == ZL_EIO && strstr(zl_errmsg(), "/no/such/model"));
    CHECK(zl_model_paths_resolve(zt_data("mini-sdxl/loras/content.peft.safetensors"), &p) == ZL_EFORMAT);
    CHECK(zl_model_paths_resolve(zt_data("mini-sdxl/loras"), &p) == ZL_EFORMAT);

    /* checkpoints of families we do not run are named, not half-loaded (keys as those files have them) */
    static const struct {
        const char *keys[3], *must;
    } other[] = {
        {{"model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "model.diffusion_model.img_in.weight", NULL}, "FLUX"},
        {{"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "model.diffusion_model.x_embedder.proj.weight",
          NULL},
         "Stable Diffusion 3"},
        {{"model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.ln_final.weight", NULL}, "2.x"},
        {{"model.diffusion_model.input_blocks.0.0.weight", "edm_vpred.sigma_max", "edm_vpred.sigma_min"},
         "EDM v-prediction"},
        {{"model.diffusion_model.label_emb.0.0.weight", "conditioner.embedders.0.model.ln_final.weight", NULL}, "refiner"},
    };
    float zero[4] = {0};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++) {
        zl_st_entry e[3];
        int n = 0;
        for (int k = 0; k < 3 && other[i].keys[k]; k++)
            e[n++] = (zl_st_entry){.name = other[i].keys[k], .dtype = ZL_DT_F32, .ndim = 1, .shape = {1}, .data = zero};
        char path[1024];
        snprintf(path, sizeof path, "%s/other%d.safetensors", zt_tmpdir(), (int)i);
        CHECK_OK(zl_st_write(path, e, n, NULL, 0, NULL, 0));
        int rc = zl_model_paths_resolve(path, &p);
        CHECKM(rc == ZL_EUNSUPPORTED && strstr(zl_errmsg(), other[i].must) && strstr(zl_errmsg(), path),
               "%s: %d %s", other[i].must, rc, zl_errmsg());
    }
    /* a single SDXL file with the 'v_pred' / 'ztsnr' markers (NoobAI-XL V-Pred, as ComfyUI
     * reads them): v-prediction, zero terminal SNR and trailing spacing; without: the default */
    {
        static const char *const keys[] = {"model.diffusion_model.input_blocks.0.0.weight",
                                           "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
                                           "conditioner.embedders.1.model.ln_final.weight", "v_pred", "ztsnr"};
        for (int variant = 0; variant < 3; variant++) {
            zl_st_entry e[5];
            int n = 0;
            for (int k = 0; k < 5; k++) {
                if ((variant == 0 && k >= 3) || (variant == 1 && k == 4)) continue;
                e[n++] = (zl_st_entry){.name = keys[k], .dtype = ZL_DT_F32, .ndim = 1, .shape = {1}, .data = zero};
            }
            char path[1024];
            snprintf(path, sizeof path, "%s/vpred%d.safetensors", zt_tmpdir(), variant);
            CHECK_OK(zl_st_write(path, e, n, NULL, 0, NULL, 0));
            CHECK_OK(zl_model_paths_resolve(path, &p));
            CHECKM(p.family == ZL_FAMILY_SDXL && p.sched.prediction == (variant ? ZL_PRED_V : ZL_PRED_EPSILON) &&
                       p.sched.zero_snr == (variant == 2) &&
                       p.sched.spacing == (variant == 2 ? ZL_SPACING_TRAILING : ZL_SPACING_LEADING) &&
                       p.sched.n_train == 1000 && p.sched.steps_offset == 1 && p.sched.beta_start == 0.00085f &&
                       p.sched.beta_end == 0.012f,
                   "variant %d: prediction %d zero_snr %d spacing %d", variant, (int)p.sched.prediction, p.sched.zero_snr,
                   (int)p.sched.spacing);
            zl_model_paths_free(&p);
        }
    }
    /* a diffusers folder: its scheduler config sets the schedule; settings we would run
     * wrongly are refused, naming the file and the setting */
    {
        char d[1024], sub[1100], f[1200];
        snprintf(d, sizeof d, "%s/vpred", zt_tmpdir());
        snprintf(sub, sizeof sub, "%s/unet", d);
        CHECK(mkdir(d, 0755) == 0 && mkdir(sub, 0755) == 0);
        char *cfgtxt = NULL;
        size_t len = 0;
        CHECK_OK(zl_read_file(zt_data("tiny-sdxl/unet/config.json"), &cfgtxt, &len));
        snprintf(f, sizeof f, "%s/config.json", sub);
        CHECK_OK(zl_write_file_atomic(f, cfgtxt, len, NULL, 0));
        free(cfgtxt);
        snprintf(f, sizeof f, "%s/diffusion_pytorch_model.safetensors", sub);
        zl_st_entry e = {.name = "conv_in.weight", .dtype = ZL_DT_F32, .ndim = 1, .shape = {1}, .data = zero};
        CHECK_OK(zl_st_write(f, &e, 1, NULL, 0, NULL, 0));
        CHECK_OK(zl_model_paths_resolve(d, &p)); /* epsilon by default */
        zl_model_paths_free(&p);
        snprintf(sub, sizeof sub, "%s/scheduler", d);
        CHECK(mkdir(sub, 0755) == 0);
        snprintf(f, sizeof f, "%s/scheduler_config.json", sub);
        const char *sj = "{\"_class_name\": \"EulerDiscreteScheduler\", \"prediction_type\": \"v_prediction\", "
                         "\"rescale_betas_zero_snr\": true, \"timestep_spacing\": \"linspace\", \"steps_offset\": 0, "
                         "\"beta_start\": 0.001, \"beta_end\": 0.02, \"num_train_timesteps\": 500, "
                         "\"beta_schedule\": \"scaled_linear\", \"trained_betas\": null}";
        CHECK_OK(zl_write_file_atomic(f, sj, strlen(sj), NULL, 0));
        CHECK_OK(zl_model_paths_resolve(d, &p));
        CHECK(p.sched.sampler == ZL_SAMPLER_EULER && !p.sched.karras);
        CHECKM(p.sched.prediction == ZL_PRED_V && p.sched.zero_snr == 1 && p.sched.spacing == ZL_SPACING_LINSPACE &&
                   p.sched.steps_offset == 0 && p.sched.beta_start == 0.001f && p.sched.beta_end == 0.02f &&
                   p.sched.n_train == 500,
               "scheduler config: prediction %d zero_snr %d spacing %d offset %d betas %g %g n %d", (int)p.sched.prediction,
               p.sched.zero_snr, (int)p.sched.spacing, p.sched.steps_offset, (double)p.sched.beta_start,
               (double)p.sched.beta_end, p.sched.n_train);
        zl_model_paths_free(&p);
        /* the sampler the scheduler class names (generate's default), when it is one we run */
        static const struct {
            const char *json;
            int sampler, karras;
        } cls[] = {
            {"{\"_class_name\": \"DPMSolverMultistepScheduler\", \"use_karras_sigmas\": true}", ZL_SAMPLER_DPMPP_2M, 1},
            {"{\"_class_name\": \"DPMSolverMultistepScheduler\", \"solver_order\": 3}", -1, 0},
            {"{\"_class_name\": \"DPMSolverMultistepScheduler\", \"algorithm_type\": \"sde-dpmsolver++\"}",
             ZL_SAMPLER_DPMPP_2M_SDE, 0},
            {"{\"_class_name\": \"DPMSolverMultistepScheduler\", \"algorithm_type\": \"dpmsolver\"}", -1, 0},
            {"{\"_class_name\": \"EulerAncestralDiscreteScheduler\", \"use_karras_sigmas\": true}", ZL_SAMPLER_EULER_A, 0},
            {"{\"_class_name\": \"EulerDiscreteScheduler\", \"use_karras_sigmas\": true}", ZL_SAMPLER_EULER, 1},
            {"{\"_class_name\": \"LCMScheduler\", \"original_inference_steps\": 50, \"timestep_scaling\": 10.0}",
             ZL_SAMPLER_LCM, 0},
            {"{\"_class_name\": \"DDIMScheduler\", \"set_alpha_to_one\": false}", ZL_SAMPLER_DDIM, 0},
            {"{\"_class_name\": \"DDIMScheduler\", \"timestep_spacing\": \"trailing\"}", -1, 0},
            {"{\"_class_name\": \"PNDMScheduler\"}", -1, 0},
            {"{}", -1, 0},
        };
        for (size_t i = 0; i < sizeof cls / sizeof cls[0]; i++) {
            CHECK_OK(zl_write_file_atomic(f, cls[i].json, strlen(cls[i].json), NULL, 0));
            CHECK_OK(zl_model_paths_resolve(d, &p));
            CHECKM(p.sched.sampler == cls[i].sampler && p.sched.karras == cls[i].karras, "%s: sampler %d karras %d",
                   cls[i].json, p.sched.sampler, p.sched.karras);
            zl_model_paths_free(&p);
        }
        static const struct {
            const char *json, *must;
        } bad[] = {
            {"{\"prediction_type\": \"sample\"}", "prediction_type sample"},
            {"{\"prediction_type\": 3}", "prediction_type"},
            {"{\"beta_schedule\": \"linear\"}", "beta_schedule linear"},
            {"{\"_class_name\": \"LCMScheduler\", \"original_inference_steps\": 4}", "original_inference_steps"},
            {"{\"timestep_spacing\": \"sideways\"}", "timestep_spacing sideways"},
            {"{\"rescale_betas_zero_snr\": \"yes\"}", "rescale_betas_zero_snr"},
            {"{\"num_train_timesteps\": 0}", "num_train_timesteps"},
            {"{\"beta_end\": 1.5}", "beta_end"},
            {"{\"trained_betas\": [0.1, 0.2]}", "trained_betas"},
            {"{\"prediction_type\": \"epsilon\"", "scheduler_config.json"},
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            CHECK_OK(zl_write_file_atomic(f, bad[i].json, strlen(bad[i].json), NULL, 0));
            int rc = zl_model_paths_resolve(d, &p);
            CHECKM(rc != ZL_OK && strstr(zl_errmsg(), bad[i].must) && strstr(zl_errmsg(), "scheduler_config.json"),
                   "%s: %d %s", bad[i].json, rc, zl_errmsg());
            if (rc == ZL_OK) zl_model_paths_free(&p);
        }
    }
    return zt_done();
}
