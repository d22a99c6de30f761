/*
 * test.h -- the tiny test harness shared by every tests/test_*.c: counters, CHECK macros,
 * relative errors and random fills. Each test program ends with test_summary(), which prints
 * "N passed, N failed" for that program; tests/run_tests.sh adds them up.
 */
#ifndef DELTANET_TEST_H
#define DELTANET_TEST_H
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../model.h"

static int t_passed, t_failed;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (cond) {                                                             \
            t_passed++;                                                         \
        } else {                                                                \
            t_failed++;                                                         \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                         \
            printf(__VA_ARGS__);                                                \
            printf("\n");                                                       \
        }                                                                       \
    } while (0)

/* Check that a relative error is finite and at most tol, printing the value either way. */
#define CHECK_REL(err, tol, ...)                                                \
    do {                                                                        \
        double e_ = (err), tol_ = (tol);                                        \
        int ok_ = isfinite(e_) && e_ <= tol_;                                   \
        printf("%s ", ok_ ? "  ok " : "FAIL");                                  \
        printf(__VA_ARGS__);                                                    \
        printf(": rel err %.3e (tol %.0e)\n", e_, tol_);                        \
        if (ok_) t_passed++; else t_failed++;                                   \
    } while (0)

static inline double rel_err_f(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) { double d = (double)a[i] - ref[i]; num += d * d; den += (double)ref[i] * ref[i]; }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
static inline double rel_err_d(const double *a, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) { double d = a[i] - ref[i]; num += d * d; den += ref[i] * ref[i]; }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static inline void fill_randn_f(float *x, size_t n, DNRng *r, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * dn_rng_normal(r);
}
static inline void fill_randn_d(double *x, size_t n, DNRng *r, double scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * dn_rng_normal(r);
}
static inline void fill_uniform_d(double *x, size_t n, DNRng *r, double lo, double hi) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * dn_rng_uniform(r);
}

static inline void *xcalloc(size_t n, size_t sz) {
    void *p = calloc(n ? n : 1, sz);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    return p;
}

/* Parameters in double for the model-level gradient checks: the table's init (std 0.02 is too flat
 * for a sharp check) rescaled to std 0.3 so every path carries signal, norm gains (init std 0)
 * randomised around 1. */
static inline double *test_random_params(const DNParamTable *t, DNRng *r) {
    double *p = (double *)xcalloc(t->total, sizeof(double));
    for (int i = 0; i < t->n_params; i++) {
        const DNParam *q = &t->params[i];
        for (size_t j = 0; j < q->numel; j++)
            p[q->offset + j] = q->init_std == 0.0f ? 1.0 + 0.2 * dn_rng_normal(r) : 0.3 * dn_rng_normal(r);
    }
    return p;
}

/* The small models of the tests (CPU and GPU): every DNConfig field set from the arguments (head_dim:
 * K = V of a DeltaNet head; attention: attn_heads query heads sharing attn_kv_heads key/value heads,
 * `window` keys for 'S' layers), the rest the same everywhere (conv 4, eps 1e-6, RoPE base 10000,
 * the presets' gated DeltaNet geometry: n_head heads of key size head_dim / 2, expand_v 2; a test
 * sets its own after this), and the layer string parsed (exits on a bad one). */
static inline void test_config(DNConfig *c, const char *layers, int d_model, int n_head, int head_dim, int hidden,
                               int vocab, int padded_vocab, int attn_heads, int attn_kv_heads, int window,
                               int tied) {
    memset(c, 0, sizeof *c);
    c->vocab_size = vocab; c->padded_vocab = padded_vocab; c->d_model = d_model; c->hidden_size = hidden;
    c->n_head = n_head; c->head_dim = head_dim; c->conv_size = 4; c->tie_embeddings = tied;
    c->norm_eps = 1e-6f; c->l2_eps = DN_DEFAULT_L2_EPS; c->rope_base = 10000.0f;
    c->attn_heads = attn_heads; c->attn_kv_heads = attn_kv_heads; c->window = window;
    dn_config_default_gdn(c);
    char err[256];
    if (dn_config_set_layers(c, layers, err, sizeof err)) { printf("bad layers: %s\n", err); exit(2); }
}

/* A watchdog for the tests of readers that must refuse a FIFO at once instead of blocking on it:
 * test_watchdog(prog, s) arms alarm(s), and a read still blocked then ends the program with one
 * FAIL line (exit 3): a regression fails, never hangs. test_watchdog_off() disarms it. */
static char t_watchdog_msg[160];
static size_t t_watchdog_len;
static inline void t_watchdog_fire(int sig) {
    (void)sig;
    if (write(1, t_watchdog_msg, t_watchdog_len) < 0) _exit(3); /* write and _exit only: async-signal-safe */
    _exit(3);
}
static inline void test_watchdog(const char *prog, unsigned seconds) {
    int n = snprintf(t_watchdog_msg, sizeof t_watchdog_msg, "FAIL %s: timed out after %u s: a read blocked (a FIFO opened as a file?)\n", prog, seconds);
    t_watchdog_len = n < 0 ? 0 : (size_t)n < sizeof t_watchdog_msg ? (size_t)n : sizeof t_watchdog_msg - 1;
    signal(SIGALRM, t_watchdog_fire);
    alarm(seconds);
}
static inline void test_watchdog_off(void) {
    alarm(0);
    signal(SIGALRM, SIG_DFL);
}

static inline int test_summary(const char *prog) {
    printf("[%s] %d passed, %d failed\n", prog, t_passed, t_failed);
    return t_failed ? 1 : 0;
}
#endif
