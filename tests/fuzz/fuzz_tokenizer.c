/*
 * fuzz_tokenizer.c -- libFuzzer target for the GPT-2 tokenizer (tokenizer.h). The input is any
 * bytes. Properties (abort on the first that fails):
 *   1. tok_encode succeeds (it fails only when out of memory or when PCRE2 reports an error, and
 *      a PCRE2 error on some input is a bug), with ids in [0, vocab) and, without TOK_ALLOW_EOT,
 *      never the eot id;
 *   2. decoding the ids gives back the input bytes exactly, with and without TOK_ALLOW_EOT;
 *   3. cutting at tok_safe_cut() and encoding the two parts gives the ids of the whole.
 * The vocabulary loads once from data/gpt2 (run from the repository root) or $DN_TOK_DIR.
 */
#include "fuzz.h"
#include "../../src/tokenizer.h"

static Tokenizer g_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    char err[DN_ERR_LEN];
    if (tok_load(&g_tok, getenv("DN_TOK_DIR"), err, sizeof err)) {
        fprintf(stderr, "fuzz_tokenizer: %s (run from the repository root)\n", err);
        exit(1);
    }
    return 0;
}

static int *encode(const uint8_t *d, size_t n, int flags, size_t *nids) {
    char err[DN_ERR_LEN];
    int *ids = NULL;
    if (tok_encode(&g_tok, (const char *)d, n, flags, &ids, nids, err, sizeof err))
        fz_fail("tok_encode of %zu bytes (flags %d) failed: %s", n, flags, err);
    for (size_t i = 0; i < *nids; i++) {
        if (ids[i] < 0 || ids[i] >= g_tok.vocab_size) fz_fail("id %d out of range", ids[i]);
        if (!(flags & TOK_ALLOW_EOT) && ids[i] == g_tok.eot) fz_fail("eot made from text without TOK_ALLOW_EOT");
    }
    return ids;
}

static void round_trip(const uint8_t *d, size_t n, int flags) {
    char err[DN_ERR_LEN];
    size_t nids = 0, len = 0;
    int *ids = encode(d, n, flags, &nids);
    char *out = NULL;
    if (tok_decode(&g_tok, ids, nids, &out, &len, err, sizeof err)) fz_fail("tok_decode failed: %s", err);
    if (len != n || memcmp(out, d, n) != 0) {
        size_t i = 0;
        while (i < n && i < len && (uint8_t)out[i] == d[i]) i++;
        fz_fail("round trip (flags %d): %zu bytes in, %zu out, first difference at byte %zu", flags, n, len, i);
    }
    free(out);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    round_trip(data, size, 0);
    round_trip(data, size, TOK_ALLOW_EOT);
    size_t cut = tok_safe_cut((const char *)data, size);
    if (cut) {
        if (cut >= size) fz_fail("tok_safe_cut returned %zu for %zu bytes", cut, size);
        size_t n = 0, na = 0, nb = 0;
        int *all = encode(data, size, 0, &n);
        int *a = encode(data, cut, 0, &na);
        int *b = encode(data + cut, size - cut, 0, &nb);
        if (na + nb != n || memcmp(a, all, na * sizeof(int)) || memcmp(b, all + na, nb * sizeof(int)))
            fz_fail("encoding cut at %zu gives %zu + %zu ids, the whole %zu (or other ids)", cut, na, nb, n);
        free(all);
        free(a);
        free(b);
    }
    return 0;
}
