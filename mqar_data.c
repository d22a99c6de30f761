/*
 * mqar_data.c -- the multi-query associative recall (MQAR) task of the Zoology suite, written as
 * llm.c-format token shards with a loss mask beside each (src/mask.h), for train_deltanet.
 *
 *   ./mqar_data -o data/mqar                      (vocab 8192, T 512, 64 pairs, 100000 + 3000 examples)
 *   ./train_deltanet -i data/mqar/mqar_train.bin -j data/mqar/mqar_test.bin -t 512 ...
 *
 * One example is T tokens (positions 0 .. T-1):
 *   0 .. 2P-1     P key-value pairs k_1 v_1 k_2 v_2 ... k_P v_P: P distinct keys drawn from the
 *                 lower half of the vocabulary without 0 ([1, V/2)), P distinct values from the
 *                 upper half ([V/2, V)), the two halves disjoint;
 *   2P .. T-1     the query region of R = T - 2P tokens, seen as R/2 slots of two tokens. Each key
 *                 is queried once: key i goes to slot g_i (position 2P + 2 g_i) and its value right
 *                 after it (2P + 2 g_i + 1). The P distinct slots are drawn without replacement with
 *                 probability proportional to (g + 1)^(alpha - 1), g = 0 .. R/2 - 1 (the power law
 *                 of Zoology's gaps, alpha = 0.01: most queries come soon after the pairs, some much
 *                 later); every other token of the region is uniform over the whole vocabulary.
 * The loss is scored only where the model predicts a queried key's value: the mask marks the value
 * tokens of the query region (P per example). Zoology keeps the answers only in its labels and puts
 * a random token after each query; a token shard has no separate labels, so here the value follows
 * its key in the input too. That changes nothing the model can use: every key is queried once, so
 * an answer it has just been shown never helps a later query.
 *
 * A split of n examples is one shard of n T + 1 tokens: example e at [e T, e T + T), then one
 * random token (never scored), so that the trainer's window w = tokens [w T, w T + T] (T + 1 tokens:
 * T inputs, T targets) is exactly example w; its last target is the first token of example w + 1,
 * which is never scored (no query sits at T - 1: the last slot starts at T - 2). The mask's period is
 * T, and the trainer checks that -t matches it.
 *
 * Seeds and disjointness: the train and test splits are drawn from two separate streams, both
 * derived from --seed (dn_rng seeded with the seed xor a per-split constant). Every training
 * example's key-value prefix (its first 2P tokens) goes into a hash set; a test example whose
 * prefix is in it is drawn again, so no test example shares even its pairs with a training one
 * (with 64 pairs out of 4095 keys this never happens in practice; the check makes it certain).
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "model.h"
#include "src/data.h"
#include "src/mask.h"

#define MQAR_SALT_TRAIN 0x6d71617254524e00ull /* "mqarTRN": the training stream */
#define MQAR_SALT_TEST 0x6d71617254535400ull  /* "mqarTST": the test stream */
#define MQAR_MAX_VOCAB 65536                 /* token ids are uint16 */

typedef struct {
    int vocab;     /* V: keys from [1, V/2), values from [V/2, V) */
    int T;         /* tokens per example */
    int pairs;     /* P key-value pairs */
    double alpha;  /* power-law exponent of the query slots */
} MqarSpec;

/* 0 if an example of this spec can be drawn, else -1 with the reason. */
static int mqar_check(const MqarSpec *s, char *err, size_t errlen) {
    if (s->vocab < 4 || s->vocab > MQAR_MAX_VOCAB) { dn_seterr(err, errlen, "--vocab %d out of range [4, %d]", s->vocab, MQAR_MAX_VOCAB); return -1; }
    if (s->pairs < 1 || s->pairs > s->vocab / 2 - 1) {
        dn_seterr(err, errlen, "--pairs %d out of range [1, %d]: the keys are distinct ids in [1, vocab/2)", s->pairs, s->vocab / 2 - 1);
        return -1;
    }
    if (s->T < 4 * s->pairs || s->T > (1 << 20)) {
        dn_seterr(err, errlen, "--seq %d: needs at least 4 x pairs = %d tokens (the pairs, then a query slot of two tokens per key) and at most %d",
                  s->T, 4 * s->pairs, 1 << 20);
        return -1;
    }
    if (!(s->alpha > 0.0 && s->alpha <= 1.0)) { dn_seterr(err, errlen, "--alpha %g must be in (0, 1]", s->alpha); return -1; }
    return 0;
}

/* Uniform in [0, n), n > 0, without modulo bias. */
static uint32_t below(DNRng *r, uint32_t n) {
    const uint64_t lim = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = dn_rng_u64(r); while (x >= lim);
    return (uint32_t)(x % n);
}

/* Scratch for mqar_example: the candidate keys / values and the slot weights. */
typedef struct {
    uint16_t *pool;  /* [V/2] */
    double *w;       /* [R/2] */
    int *slot;       /* [P] */
    uint16_t *keys, *vals; /* [P] */
} MqarScratch;

static int scratch_build(MqarScratch *x, const MqarSpec *s) {
    x->pool = (uint16_t *)malloc((size_t)s->vocab / 2 * sizeof *x->pool);
    x->w = (double *)malloc((size_t)(s->T - 2 * s->pairs) / 2 * sizeof *x->w);
    x->slot = (int *)malloc((size_t)s->pairs * sizeof *x->slot);
    x->keys = (uint16_t *)malloc((size_t)s->pairs * sizeof *x->keys);
    x->vals = (uint16_t *)malloc((size_t)s->pairs * sizeof *x->vals);
    return x->pool && x->w && x->slot && x->keys && x->vals ? 0 : -1;
}
static void scratch_free(MqarScratch *x) { free(x->pool); free(x->w); free(x->slot); free(x->keys); free(x->vals); }

/* P distinct ids from [lo, lo + n) into out: a partial Fisher-Yates over the pool. */
static void draw_distinct(uint16_t *out, int P, int lo, int n, uint16_t *pool, DNRng *r) {
    for (int i = 0; i < n; i++) pool[i] = (uint16_t)(lo + i);
    for (int i = 0; i < P; i++) {
        const int j = i + (int)below(r, (uint32_t)(n - i));
        const uint16_t t = pool[i];
        pool[i] = pool[j];
        pool[j] = t;
        out[i] = pool[i];
    }
}

/* One example: tok[T] and mask[T] (1 at the answers: the value after each queried key). */
static void mqar_example(const MqarSpec *s, DNRng *r, MqarScratch *x, uint16_t *tok, uint8_t *mask) {
    const int P = s->pairs, T = s->T, half = s->vocab / 2, nslots = (T - 2 * P) / 2;
    /* the pairs: keys from [1, V/2), values from [V/2, V), each set distinct */
    draw_distinct(x->keys, P, 1, half - 1, x->pool, r);
    draw_distinct(x->vals, P, half, s->vocab - half, x->pool, r);
    for (int i = 0; i < P; i++) {
        tok[2 * i] = x->keys[i];
        tok[2 * i + 1] = x->vals[i];
    }
    /* filler everywhere after the pairs, then the queries over it */
    for (int t = 2 * P; t < T; t++) tok[t] = (uint16_t)below(r, (uint32_t)s->vocab);
    memset(mask, 0, (size_t)T);
    /* P distinct slots, each drawn with probability proportional to its weight among those left */
    double total = 0;
    for (int g = 0; g < nslots; g++) total += x->w[g] = pow((double)(g + 1), s->alpha - 1.0);
    for (int i = 0; i < P; i++) {
        double u = dn_rng_uniform(r) * total, acc = 0;
        int g = -1, last = -1;
        for (int j = 0; j < nslots && g < 0; j++) {
            if (x->w[j] <= 0) continue;
            last = j;
            acc += x->w[j];
            if (acc > u) g = j;
        }
        if (g < 0) g = last; /* rounding left u at the end of the sum */
        total -= x->w[g];
        x->w[g] = 0;
        x->slot[i] = g;
    }
    for (int i = 0; i < P; i++) {
        const int p = 2 * P + 2 * x->slot[i];
        tok[p] = tok[2 * i];          /* the key ... */
        tok[p + 1] = tok[2 * i + 1];  /* ... and its answer, the scored token */
        mask[p + 1] = 1;
    }
}

/* ---- a set of 64-bit hashes (open addressing; 0 stands for empty, so hashes are forced odd) --- */

typedef struct { uint64_t *v; size_t cap; } HashSet;

static uint64_t hash_tokens(const uint16_t *t, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= t[i];
        h *= 1099511628211ull;
    }
    return h | 1;
}
static int hs_init(HashSet *h, size_t n) {
    h->cap = 16;
    while (h->cap < 2 * n) h->cap *= 2;
    h->v = (uint64_t *)calloc(h->cap, sizeof *h->v);
    return h->v ? 0 : -1;
}
static int hs_has(const HashSet *h, uint64_t k) {
    for (size_t i = k & (h->cap - 1);; i = (i + 1) & (h->cap - 1)) {
        if (h->v[i] == k) return 1;
        if (h->v[i] == 0) return 0;
    }
}
static void hs_add(HashSet *h, uint64_t k) {
    size_t i = k & (h->cap - 1);
    while (h->v[i] != 0 && h->v[i] != k) i = (i + 1) & (h->cap - 1);
    h->v[i] = k;
}

/* ---- a split --------------------------------------------------------------------------------- */

/* Draw n examples from rng into tok [n T + 1] and mask [n T + 1]. seen: add every prefix to it
 * (train), or avoid: redraw any example whose prefix is in it (test; may be NULL). Returns the
 * number of redraws. */
static long mqar_split(const MqarSpec *s, long n, DNRng *rng, MqarScratch *x, uint16_t *tok, uint8_t *mask,
                       HashSet *seen, const HashSet *avoid) {
    const size_t T = (size_t)s->T, pre = 2 * (size_t)s->pairs;
    long redraws = 0;
    for (long e = 0; e < n; e++) {
        uint16_t *te = tok + (size_t)e * T;
        mqar_example(s, rng, x, te, mask + (size_t)e * T);
        const uint64_t h = hash_tokens(te, pre);
        if (avoid && hs_has(avoid, h)) { redraws++; e--; continue; }
        if (seen) hs_add(seen, h);
    }
    tok[(size_t)n * T] = (uint16_t)below(rng, (uint32_t)s->vocab); /* the last window's last target */
    mask[(size_t)n * T] = 0;
    return redraws;
}

/* Write a split as <dir>/<name>.bin and <dir>/<name>.mask: the old shard removed first, then the
 * mask, then the shard, so that a shard on disk always has its own mask beside it. */
static int write_split(const char *dir, const char *name, const uint16_t *tok, const uint8_t *mask, size_t ntok,
                       int period, char *shard, size_t cap, char *err, size_t errlen) {
    char mp[DN_PATH_MAX];
    if (dn_path(shard, cap, err, errlen, "%s/%s.bin", dir, name) || mask_path(mp, sizeof mp, shard, err, errlen)) return -1;
    if (unlink(shard) != 0 && errno != ENOENT) { dn_seterr(err, errlen, "%s: cannot remove the old shard: %s", shard, strerror(errno)); return -1; }
    if (mask_write(mp, mask, ntok, period, err, errlen)) return -1;
    return shard_write(shard, tok, ntok, err, errlen);
}

/* ---- the command line -------------------------------------------------------------------------- */

typedef struct {
    MqarSpec spec;
    long ntrain, ntest;
    unsigned long long seed;
    const char *out;
} MqarArgs;

static void mqar_defaults(MqarArgs *a) {
    a->spec.vocab = 8192;
    a->spec.T = 512;
    a->spec.pairs = 64;
    a->spec.alpha = 0.01;
    a->ntrain = 100000;
    a->ntest = 3000;
    a->seed = 1234;
    a->out = "data/mqar";
}

static void usage(FILE *f, const char *prog) {
    MqarArgs d;
    mqar_defaults(&d);
    fprintf(f,
        "usage: %s [options]\n"
        "Write the MQAR task (Zoology's multi-query associative recall) as token shards with loss masks:\n"
        "OUT/mqar_train.bin + .mask and OUT/mqar_test.bin + .mask. Defaults in [].\n"
        "  -o, --out DIR       output folder, created if missing [%s]\n"
        "  -v, --vocab V       vocabulary: keys from [1, V/2), values from [V/2, V) [%d]\n"
        "  -t, --seq T         tokens per example (train with -t T) [%d]\n"
        "  -p, --pairs P       key-value pairs per example, each queried once [%d]\n"
        "  -n, --train N       training examples [%ld]\n"
        "  -e, --test N        test examples (none shares its pairs with a training example) [%ld]\n"
        "  -a, --alpha A       power law of the query positions, weight (g+1)^(A-1) for slot g [%g]\n"
        "  -s, --seed S        seed of both streams (train and test are drawn apart from it) [%llu]\n"
        "  -h, --help          this text\n",
        prog, d.out, d.spec.vocab, d.spec.T, d.spec.pairs, d.ntrain, d.ntest, d.spec.alpha, d.seed);
}

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("mqar: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static long num(const char *opt, const char *s, long lo, long hi) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) die("--%s: '%s' is not an integer in [%ld, %ld]", opt, s, lo, hi);
    return v;
}

static void mqar_parse(MqarArgs *a, int argc, char **argv) {
    static const struct option opts[] = {
        {"out", required_argument, 0, 'o'}, {"vocab", required_argument, 0, 'v'}, {"seq", required_argument, 0, 't'},
        {"pairs", required_argument, 0, 'p'}, {"train", required_argument, 0, 'n'}, {"test", required_argument, 0, 'e'},
        {"alpha", required_argument, 0, 'a'}, {"seed", required_argument, 0, 's'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    mqar_defaults(a);
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "o:v:t:p:n:e:a:s:h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': a->out = optarg; break;
        case 'v': a->spec.vocab = (int)num("vocab", optarg, 4, MQAR_MAX_VOCAB); break;
        case 't': a->spec.T = (int)num("seq", optarg, 4, 1 << 20); break;
        case 'p': a->spec.pairs = (int)num("pairs", optarg, 1, MQAR_MAX_VOCAB); break;
        case 'n': a->ntrain = num("train", optarg, 1, 1L << 40); break;
        case 'e': a->ntest = num("test", optarg, 1, 1L << 40); break;
        case 'a':
            a->spec.alpha = strtod(optarg, &end);
            if (end == optarg || *end) die("--alpha: '%s' is not a number", optarg);
            break;
        case 's': a->seed = (unsigned long long)num("seed", optarg, 0, 0x7fffffffffffffffL); break;
        case 'h': usage(stdout, argv[0]); exit(0);
        default: usage(stderr, argv[0]); exit(1);
        }
    }
    if (optind < argc) die("unexpected argument '%s' (see -h)", argv[optind]);
    char err[DN_ERR_LEN];
    if (mqar_check(&a->spec, err, sizeof err)) die("%s", err);
    for (int i = 0; i < 2; i++) {
        const long n = i ? a->ntest : a->ntrain;
        if ((double)n * a->spec.T + 1 > (double)SHARD_MAX_TOKENS)
            die("--%s %ld x --seq %d tokens do not fit one shard (at most %ld tokens)", i ? "test" : "train", n, a->spec.T, SHARD_MAX_TOKENS);
    }
}


#ifndef TESTING
int main(int argc, char **argv) {
    MqarArgs a;
    mqar_parse(&a, argc, argv);
    char merr[DN_ERR_LEN];
    if (dn_mkdir_p(a.out, merr, sizeof merr)) die("--out %s: %s", a.out, merr);
    const MqarSpec *s = &a.spec;
    MqarScratch x;
    HashSet seen;
    if (scratch_build(&x, s) || hs_init(&seen, (size_t)a.ntrain)) die("out of memory");
    char err[DN_ERR_LEN], path[DN_PATH_MAX];
    for (int split = 0; split < 2; split++) {
        const long n = split ? a.ntest : a.ntrain;
        const size_t ntok = (size_t)n * s->T + 1;
        uint16_t *tok = (uint16_t *)malloc(ntok * sizeof *tok);
        uint8_t *mask = (uint8_t *)malloc(ntok);
        if (!tok || !mask) die("out of memory for %zu tokens", ntok);
        DNRng rng;
        dn_rng_seed(&rng, a.seed ^ (split ? MQAR_SALT_TEST : MQAR_SALT_TRAIN));
        const long redraws = mqar_split(s, n, &rng, &x, tok, mask, split ? NULL : &seen, split ? &seen : NULL);
        if (write_split(a.out, split ? "mqar_test" : "mqar_train", tok, mask, ntok, s->T, path, sizeof path, err, sizeof err))
            die("%s", err);
        printf("%-5s %ld examples, %zu tokens, %ld scored -> %s (+ .mask)%s\n", split ? "test" : "train", n, ntok,
               (long)n * s->pairs, path, redraws ? " (test examples redrawn for sharing pairs with training ones)" : "");
        free(tok);
        free(mask);
    }
    printf("MQAR: vocab %d, %d tokens an example, %d pairs, alpha %g, seed %llu (train with -t %d)\n", s->vocab, s->T,
           s->pairs, s->alpha, a.seed, s->T);
    scratch_free(&x);
    free(seen.v);
    return 0;
}
#endif
