/* A minimal test harness: CHECK macros that count failures, fixture paths,
 * tensor comparison with the FIXTURES.md tolerance, and running the CLI.
 * Each test program prints "N passed, N failed" and exits non-zero on failure. */
#ifndef ZL_TESTLIB_H
#define ZL_TESTLIB_H

#include <stdio.h>
#include <stdint.h>

#include "ziplora.h"

extern int zt_pass, zt_fail;

#define CHECK(cond) zt_check(!!(cond), #cond, __FILE__, __LINE__, NULL)
#define CHECKM(cond, ...) zt_checkf(!!(cond), __FILE__, __LINE__, __VA_ARGS__)
#define CHECK_OK(expr) do { int _rc = (expr); zt_checkf(_rc == ZL_OK, __FILE__, __LINE__, "%s -> %d: %s", #expr, _rc, zl_errmsg()); } while (0)
#define CHECK_ERR(expr) do { int _rc = (expr); zt_checkf(_rc != ZL_OK, __FILE__, __LINE__, "%s should fail", #expr); } while (0)

void zt_check(int ok, const char *expr, const char *file, int line, const char *msg);
void zt_checkf(int ok, const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Path under tests/data (static buffer rotation; valid for a few calls). */
const char *zt_data(const char *rel);
/* A fresh temporary folder for this test program (removed at exit). */
const char *zt_tmpdir(void);
/* Path inside the temporary folder. */
const char *zt_tmp(const char *name);

/* FIXTURES.md tolerance: max|a-b| <= tol * max(1, max|ref|). Returns 1 if within;
 * reports the worst element on failure. */
int zt_close(const char *what, const float *got, const float *ref, int64_t n, double tol);
/* Relative error ||a-b|| / ||ref||. */
double zt_relerr(const float *got, const float *ref, int64_t n);

/* The SD/SDXL training schedule in double, written out independently of the
 * library: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2, alphas_cumprod =
 * cumprod(1 - beta); with zero_snr, rescaled to zero terminal SNR (Lin et al.
 * 2023, Algorithm 1) and the last value set to 2^-24 as diffusers does.
 * acp holds 1000 values. */
void zt_sd_alphas_cumprod(double *acp, int zero_snr);

/* Run the CLI with a shell-quoted argument string; returns the exit code.
 * stdout/stderr go to files whose contents are then in zt_out / zt_err. */
int zt_cli(const char *args_fmt, ...) __attribute__((format(printf, 1, 2)));
extern char *zt_out, *zt_err;

/* Split the safetensors file `src` into `n` shards dir/<stem>-0000i-of-0000n.safetensors
 * (tensor i goes to shard i % n) and write dir/<stem>.safetensors.index.json, as
 * save_pretrained does. Returns 0 on success. */
int zt_shard(const char *src, const char *dir, const char *stem, int n);

/* Print the summary line and return the exit status. */
int zt_done(void);

#endif
