/* `ziplora merge --content C --style S -o OUT`: the direct merge (Eq. 1) or a
 * merge with learned mergers, written as an exact rank-concatenated standard
 * LoRA; --rank re-ranks by truncated SVD and reports the error per layer. The
 * inputs are hashed (for the provenance metadata) on a second thread while
 * they load. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora_cli.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ziplora merge --content C.safetensors --style S.safetensors -o OUT.safetensors [options]\n\n"
            "Merge a subject (content) LoRA and a style LoRA into ONE standard LoRA, exactly:\n"
            "  dW = wc * dW_c * diag(m_c) + ws * dW_s * diag(m_s)\n"
            "written as up = [wc*s_c*B_c | ws*s_s*B_s], down = [A_c*diag(m_c) ; A_s*diag(m_s)], alpha = rank\n"
            "(rank r_c + r_s per shared layer; layers only one LoRA has pass through, scaled by its weight).\n\n"
            "options:\n"
            "  --content FILE, --style FILE   the two LoRAs (any supported layout; same model family)\n"
            "  -o, --output FILE     output file (never one of the inputs)\n"
            "  --weights WC,WS       weights of the two LoRAs (default 1,1)\n"
            "  --style-scale WS      multiply the style half by WS (style strength, paper Fig. 9)\n"
            "  --mergers FILE        per-input-feature mergers (safetensors: <module>.merger_content /\n"
            "                        <module>.merger_style, te1./te2. prefixes for text encoders; see docs/formats.md)\n"
            "  --rank R              re-rank layers above rank R by truncated SVD (lossy; prints the error)\n"
            "  --format kohya|peft   output layout (default kohya)\n"
            "  --dtype f32|f16|bf16  output dtype (default: the inputs' common dtype, else f32)\n"
            "  --title TEXT          modelspec.title (default: the output file name)\n"
            "  --model M             name layers with this model's UNet config (diffusers folder or single file);\n"
            "                        a DoRA LoRA is baked against its weights first (as convert --model)\n"
            "  -q, -v, --threads N   quiet, verbose, threads\n");
}

typedef struct {
    const char *path[2];
    char hex[2][65];
    int rc;
    char err[512];
    int joined;
} hash_job;

static void *hash_thread(void *p) {
    hash_job *j = p;
    for (int i = 0; i < 2 && !j->rc; i++) {
        j->rc = zl_sha256_file(j->path[i], j->hex[i]);
        if (j->rc) snprintf(j->err, sizeof j->err, "%s", zl_errmsg());
    }
    return NULL;
}

/* Wait for the hashing thread (once). */
static void hash_join(hash_job *j, pthread_t *th, int threaded) {
    if (threaded && !j->joined) pthread_join(*th, NULL);
    j->joined = 1;
}

/* The hashing's error as this thread's error, if any. */
static int hash_error(const hash_job *j) { return j->rc ? zl_set_error(j->rc, "%s", j->err) : ZL_OK; }

typedef struct {
    hash_job *j;
    pthread_t *th;
    int threaded;
} hash_wait_ctx;

/* zl_lora_write_opts.sha256_wait: the output's data is written; the header needs the digests now. */
static int hash_wait(void *ctx) {
    hash_wait_ctx *w = ctx;
    hash_join(w->j, w->th, w->threaded);
    return hash_error(w->j);
}

static int parse_weights(const char *s, float *wc, float *ws) {
    const char *comma = strchr(s, ',');
    if (!comma || strchr(comma + 1, ',')) return -1;
    char a[64], b[64];
    size_t la = (size_t)(comma - s);
    if (la == 0 || la >= sizeof a || strlen(comma + 1) == 0 || strlen(comma + 1) >= sizeof b) return -1;
    memcpy(a, s, la);
    a[la] = 0;
    snprintf(b, sizeof b, "%s", comma + 1);
    double x, y;
    if (zl_cli_float("merge", "--weights", a, &x) || zl_cli_float("merge", "--weights", b, &y)) return -2;
    *wc = (float)x;
    *ws = (float)y;
    return 0;
}

/* Bake the DoRA layers of c and s against --model (zl_lora_bake_dora_model). */
static int bake_both(zl_lora *c, zl_lora *s, const char *model) {
    zl_model_paths mp;
    int rc = zl_model_paths_resolve(model, &mp);
    const int resolved = !rc;
    for (int k = 0; k < 2 && !rc; k++) {
        zl_lora *l = k ? s : c;
        if (!l->n_dora) continue;
        if ((rc = zl_lora_bake_dora_model(l, &mp, NULL, 0, NULL))) break;
    }
    if (resolved) zl_model_paths_free(&mp);
    return rc;
}

int zl_cmd_merge(int argc, char **argv) {
    const char *cpath = NULL, *spath = NULL, *out = NULL, *mpath = NULL, *title = NULL;
    float wc = 1, ws = 1;
    double style_scale = 1;
    long rank = 0;
    zl_lora_write_opts wo;
    memset(&wo, 0, sizeof wo);
    zl_lora_cli_flags lf;
    memset(&lf, 0, sizeof lf);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int c = zl_cli_common("merge", argc, argv, &i);
        if (c < 0) return ZL_EXIT_USAGE;
        if (c) continue;
        c = zl_lora_cli_flag("merge", argc, argv, &i, &lf);
        if (c < 0) return ZL_EXIT_USAGE;
        if (c) continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return ZL_EXIT_OK;
        }
        static const char *const with_val[] = {"--content", "--style", "-o", "--output", "--weights", "--mergers",
                                               "--style-scale", "--rank", "--format", "--dtype", "--title"};
        int known = 0;
        for (size_t k = 0; k < sizeof with_val / sizeof *with_val; k++)
            if (!strcmp(a, with_val[k])) known = 1;
        if (!known) {
            if (a[0] == '-') return zl_cli_usage("merge", "unknown option '%s'", a);
            return zl_cli_usage("merge", "unexpected argument '%s' (use --content and --style)", a);
        }
        if (i + 1 >= argc) return zl_cli_usage("merge", "%s needs a value", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--content")) cpath = v;
        else if (!strcmp(a, "--style")) spath = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = v;
        else if (!strcmp(a, "--mergers")) mpath = v;
        else if (!strcmp(a, "--title")) title = v;
        else if (!strcmp(a, "--weights")) {
            int r = parse_weights(v, &wc, &ws);
            if (r == -1) return zl_cli_usage("merge", "--weights expects two numbers WC,WS, got '%s'", v);
            if (r) return ZL_EXIT_USAGE;
        } else if (!strcmp(a, "--style-scale")) {
            if (zl_cli_float("merge", "--style-scale", v, &style_scale)) return ZL_EXIT_USAGE;
        } else if (!strcmp(a, "--rank")) {
            if (zl_cli_int("merge", "--rank", v, 1, 1 << 20, &rank)) return ZL_EXIT_USAGE;
        } else if (!strcmp(a, "--format")) {
            int f = zl_lora_format_parse(v);
            if (f < 0) return zl_cli_usage("merge", "--format expects kohya or peft, got '%s'", v);
            wo.format = (zl_lora_format)f;
        } else if (!strcmp(a, "--dtype")) {
            if (zl_lora_cli_dtype("merge", v, &wo.dtype)) return ZL_EXIT_USAGE;
        }
    }
    if (!cpath || !spath) return zl_cli_usage("merge", "both --content and --style are needed");
    if (!out) return zl_cli_usage("merge", "no output file given (-o OUT)");
    int rc = zl_lora_cli_prepare(&lf);
    if (rc) return zl_cli_fail(rc, NULL);

    hash_job hj;
    memset(&hj, 0, sizeof hj);
    hj.path[0] = cpath;
    hj.path[1] = spath;
    pthread_t th;
    int threaded = pthread_create(&th, NULL, hash_thread, &hj) == 0;
    if (!threaded) hash_thread(&hj);

    zl_lora *c = NULL, *s = NULL;
    zl_mergers *mg = NULL;
    zl_lora_lazy *zc = NULL, *zs = NULL;
    /* the values stay in the (mapped) input files and are read layer by layer
     * while the output is written, so memory stays near one layer */
    zl_lora_load_opts lo;
    memset(&lo, 0, sizeof lo);
    lo.adapter_config = lf.adapter_config;
    lo.unet_config = lf.have_cfg ? &lf.cfg : NULL;
    rc = zl_lora_load_lazy(cpath, &lo, &c, &zc);
    if (!rc) rc = zl_lora_load_lazy(spath, &lo, &s, &zs);
    if (rc && lf.model && rc != ZL_ENOMEM && rc != ZL_EIO) {
        /* a DoRA LoRA (which the lazy loader does not read) is baked against --model, from an
         * eager load; anything else keeps the first error */
        char why[2048];
        snprintf(why, sizeof why, "%s", zl_errmsg());
        zl_lora_free(c), zl_lora_free(s);
        zl_lora_lazy_free(zc), zl_lora_lazy_free(zs);
        c = s = NULL, zc = zs = NULL;
        lo.allow_dora = 1;
        int erc = zl_lora_load(cpath, &lo, &c);
        if (!erc) erc = zl_lora_load(spath, &lo, &s);
        if (erc || (!c->n_dora && !s->n_dora)) rc = erc ? erc : zl_set_error(rc, "%s", why);
        else rc = bake_both(c, s, lf.model);
    }
    if (!rc && mpath) rc = zl_mergers_load(mpath, &mg);
    /* LoRAs of two families are a problem of the inputs (exit 1, as inspect, zip
     * and generate say it), not of the command line */
    if (!rc && c->family != ZL_FAMILY_UNKNOWN && s->family != ZL_FAMILY_UNKNOWN && c->family != s->family)
        rc = zl_set_error(ZL_EFORMAT, "cannot merge LoRAs of different model families: %s is %s, %s is %s", cpath,
                          zl_family_name(c->family), spath, zl_family_name(s->family));
    if (rc) hash_join(&hj, &th, threaded);
    if (rc) {
        /* an unreadable input is a failure, not a usage error */
        int code = zl_cli_fail(rc == ZL_EINVAL ? ZL_EFORMAT : rc, NULL);
        zl_lora_free(c);
        zl_lora_free(s);
        zl_lora_lazy_free(zc);
        zl_lora_lazy_free(zs);
        zl_mergers_free(mg);
        return code;
    }

    zl_merge_opts mo;
    memset(&mo, 0, sizeof mo);
    mo.w_content = wc;
    mo.w_style = (float)(ws * style_scale);
    mo.mergers = mg;
    mo.rank = (int)rank;
    mo.dtype = wo.dtype;
    mo.lazy_content = zc;
    mo.lazy_style = zs;
    char params[1024], rank_s[32];
    snprintf(rank_s, sizeof rank_s, "%ld", rank);
    snprintf(params, sizeof params,
             "{\"weights\":[%.9g,%.9g],\"style_scale\":%.9g,\"mergers\":%s%s%s,\"rank\":%s,\"format\":\"%s\","
             "\"dtype\":\"%s\"}",
             (double)wc, (double)ws, style_scale, mpath ? "\"" : "", mpath ? "file" : "null", mpath ? "\"" : "",
             rank ? rank_s : "null", wo.format == ZL_FORMAT_PEFT ? "peft" : "kohya",
             wo.dtype == ZL_DT_INVALID ? "auto" : zl_dtype_name(wo.dtype));
    const char *inputs[3] = {cpath, spath, mpath};
    const char *hexes[3] = {hj.hex[0], hj.hex[1], NULL};
    wo.unet_config = lf.have_cfg ? &lf.cfg : NULL;
    wo.title = title;
    wo.method = mpath ? "ziplora-mergers" : "direct-merge";
    wo.params_json = params;
    wo.inputs = inputs;
    wo.n_inputs = mpath ? 3 : 2;
    wo.input_sha256 = hexes;
    /* the inputs are hashed while the output is written; its header is completed last */
    hash_wait_ctx hw = {&hj, &th, threaded};
    wo.sha256_wait = hash_wait;
    wo.sha256_ctx = &hw;
    zl_merge_report rep;
    rc = zl_lora_merge_write(out, c, s, &mo, &wo, &rep);
    hash_join(&hj, &th, threaded); /* the write may have failed before asking */
    if (!rc) rc = hash_error(&hj);
    if (!rc) {
        if (rank) {
            printf("%-5s %-70s %6s %6s %12s\n", "part", "layer", "rank", "->", "rel. error");
            for (int i = 0; i < rep.n; i++)
                printf("%-5s %-70s %6d %6d %12.3e\n",
                       rep.part[i] == ZL_PART_UNET ? "unet" : rep.part[i] == ZL_PART_TE1 ? "te1" : "te2", rep.module[i],
                       rep.rank_in[i], rep.rank_out[i], rep.rel_err[i]);
            printf("overall relative Frobenius error: %.6e\n", rep.overall);
        }
        zl_info("wrote %s: %d layers (%d merged, %d content only, %d style only)", out, rep.n, rep.n_merged,
                rep.n_content_only, rep.n_style_only);
        zl_merge_report_free(&rep);
    }
    zl_lora_free(c);
    zl_lora_free(s);
    zl_lora_lazy_free(zc);
    zl_lora_lazy_free(zs);
    zl_mergers_free(mg);
    return rc ? zl_cli_fail(rc, NULL) : ZL_EXIT_OK;
}
