/*
 * bench_tokenizer.c -- GPT-2 tokenizer speed on TinyShakespeare (1.1 MB, 338025 tokens), one core:
 * encode with a cold piece cache (a freshly loaded tokenizer), encode with a warm cache, decode,
 * and tokenizer loading. Prints a table; best of 5 runs; no assertions. Run from the repo root.
 */
#include <time.h>
#include "test.h"
#include "../src/tokenizer.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

int main(void) {
    const char *path = "data/tinyshakespeare/input.txt";
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "%s: cannot open (run from the repo root)\n", path); return 1; }
    fseek(f, 0, SEEK_END);
    size_t n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = xcalloc(n + 1, 1), err[DN_ERR_LEN];
    n = fread(text, 1, n, f);
    fclose(f);

    enum { RUNS = 5 };
    double best_load = 1e9, best_cold = 1e9, best_warm = 1e9, best_dec = 1e9;
    size_t nids = 0;
    for (int r = 0; r < RUNS; r++) {
        Tokenizer t;
        double t0 = now();
        if (tok_load(&t, NULL, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); return 1; }
        double t1 = now();
        int *ids;
        char *out;
        size_t outlen;
        if (tok_encode(&t, text, n, 0, &ids, &nids, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); return 1; }
        double t2 = now();
        free(ids);
        tok_encode(&t, text, n, 0, &ids, &nids, err, sizeof err);
        double t3 = now();
        tok_decode(&t, ids, nids, &out, &outlen, err, sizeof err);
        double t4 = now();
        free(ids);
        free(out);
        tok_free(&t);
        if (t1 - t0 < best_load) best_load = t1 - t0;
        if (t2 - t1 < best_cold) best_cold = t2 - t1;
        if (t3 - t2 < best_warm) best_warm = t3 - t2;
        if (t4 - t3 < best_dec) best_dec = t4 - t3;
    }
    printf("GPT-2 tokenizer on %s: %zu bytes, %zu tokens, one core, best of %d\n", path, n, nids, RUNS);
    printf("| %-22s | %9s | %8s | %12s |\n", "", "ms", "MB/s", "tokens/s");
    printf("|------------------------|-----------|----------|--------------|\n");
    struct { const char *name; double s; } rows[] = {
        {"encode (cold cache)", best_cold}, {"encode (warm cache)", best_warm}, {"decode", best_dec}};
    for (int i = 0; i < 3; i++)
        printf("| %-22s | %9.2f | %8.1f | %12.3g |\n", rows[i].name, 1e3 * rows[i].s, n / 1e6 / rows[i].s,
               nids / rows[i].s);
    printf("| %-22s | %9.2f | %8s | %12s |\n", "tok_load", 1e3 * best_load, "", "");
    free(text);
    return 0;
}
