/*
 * fuzz.h -- what the libFuzzer targets of this folder (fuzz_*.c) and the seed generator
 * (make_corpus.c) share.
 *
 * The readers under test take paths, so each run writes the fuzzer's bytes to a file in a private
 * folder (mkdtemp under $TMPDIR, else /tmp; tests/fuzz/run.sh points TMPDIR into build-fuzz/ and
 * removes it afterwards) and hands the reader that path. A property that does not hold calls
 * fz_fail(), which prints why and aborts, so libFuzzer reports it as a crash and saves the input.
 *
 * fz_state_config() is the one model the training-state target reads states for (a state file
 * only makes sense against a parameter table); make_corpus.c writes its seeds for the same model.
 */
#ifndef DELTANET_FUZZ_H
#define DELTANET_FUZZ_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../model.h"

static inline void fz_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzz property failed: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

/* The private folder, made on first use. */
static inline const char *fz_dir(void) {
    static char dir[512];
    if (!dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/dn_fuzz_XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(dir)) { perror(dir); exit(1); }
    }
    return dir;
}

/* Write n bytes to <private folder>/name; returns the path (in buf). */
static inline const char *fz_write(char *buf, size_t cap, const char *name, const uint8_t *d, size_t n) {
    snprintf(buf, cap, "%s/%s", fz_dir(), name);
    FILE *f = fopen(buf, "wb");
    if (!f || (n && fwrite(d, 1, n, f) != n) || fclose(f) != 0) { perror(buf); exit(1); }
    return buf;
}

/* A two-layer hybrid ('D' then 'S') small enough that its state file is a few KB. */
static inline void fz_state_config(DNConfig *c) {
    memset(c, 0, sizeof *c);
    c->vocab_size = 10;
    c->padded_vocab = 16;
    c->d_model = 4;
    c->n_layer = 2;
    c->n_head = 2;
    c->head_dim = 2;
    c->conv_size = 4;
    c->hidden_size = 8;
    c->norm_eps = 1e-6f;
    c->l2_eps = DN_DEFAULT_L2_EPS;
    c->tie_embeddings = 1;
    c->attn_heads = 2;
    c->attn_kv_heads = 1;
    c->window = 4;
    c->rope_base = 10000.0f;
    dn_config_default_gdn(c);
    strcpy(c->layers, "DS");
}

#endif /* DELTANET_FUZZ_H */
