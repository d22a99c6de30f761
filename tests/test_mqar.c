/*
 * test_mqar.c -- the MQAR generator (mqar_data.c, included here: llm.c's TESTING pattern): every
 * example's pairs are unique, keys and values come from the two disjoint halves, every answer is
 * the value of the key just before it, the mask marks exactly the answers, queries follow the
 * power law; seeds give different data; train and test share no key-value prefix (forced even
 * where collisions are likely); the program's files load through the mask reader and the
 * shuffled loader (each row one example); -h and bad options.
 */
#define TESTING
#include "../mqar_data.c"
#include "test.h"

/* Check one example; returns 1 if it is well formed. */
static int example_ok(const MqarSpec *s, const uint16_t *tok, const uint8_t *mask, char *why, size_t cap) {
    const int P = s->pairs, T = s->T, half = s->vocab / 2;
    static uint8_t seen_k[MQAR_MAX_VOCAB], seen_v[MQAR_MAX_VOCAB], queried[MQAR_MAX_VOCAB];
    memset(seen_k, 0, sizeof seen_k); memset(seen_v, 0, sizeof seen_v); memset(queried, 0, sizeof queried);
    int value_of[MQAR_MAX_VOCAB];
    for (int i = 0; i < P; i++) {
        const int k = tok[2 * i], v = tok[2 * i + 1];
        if (k < 1 || k >= half) { snprintf(why, cap, "key %d outside [1, %d)", k, half); return 0; }
        if (v < half || v >= s->vocab) { snprintf(why, cap, "value %d outside [%d, %d)", v, half, s->vocab); return 0; }
        if (seen_k[k]++ || seen_v[v]++) { snprintf(why, cap, "pair %d repeats a key or a value", i); return 0; }
        value_of[k] = v;
    }
    int answers = 0;
    for (int t = 0; t < T; t++) {
        if (mask[t] > 1) { snprintf(why, cap, "mask byte %d", mask[t]); return 0; }
        if (!mask[t]) continue;
        answers++;
        if (t < 2 * P + 1 || (t - 2 * P) % 2 != 1) { snprintf(why, cap, "answer at %d outside the query slots", t); return 0; }
        const int k = tok[t - 1];
        if (k < 1 || k >= half || !seen_k[k]) { snprintf(why, cap, "answer at %d follows %d, not a key of the example", t, k); return 0; }
        if (tok[t] != value_of[k]) { snprintf(why, cap, "answer at %d is %d, key %d holds %d", t, tok[t], k, value_of[k]); return 0; }
        if (queried[k]++) { snprintf(why, cap, "key %d queried twice", k); return 0; }
    }
    if (answers != P) { snprintf(why, cap, "%d answers, not %d", answers, P); return 0; }
    return 1;
}

static void examples(void) {
    MqarSpec s = {8192, 512, 64, 0.01};
    MqarScratch x;
    if (scratch_build(&x, &s)) { CHECK(0, "scratch"); return; }
    const long n = 200;
    uint16_t *tok = xcalloc((size_t)n * s.T + 1, 2), *tok2 = xcalloc((size_t)n * s.T + 1, 2);
    uint8_t *mask = xcalloc((size_t)n * s.T + 1, 1);
    DNRng r;
    dn_rng_seed(&r, 1);
    mqar_split(&s, n, &r, &x, tok, mask, NULL, NULL);
    char why[128] = "";
    long good = 0, first = 0, last = 0;
    for (long e = 0; e < n; e++) {
        const int ok = example_ok(&s, tok + e * s.T, mask + e * s.T, why, sizeof why);
        if (!ok && good == e) printf("example %ld: %s\n", e, why);
        good += ok;
        /* the power law: answers in the first slots far more often than in the last ones */
        for (int t = 2 * s.pairs; t < s.T; t++) {
            if (!mask[e * s.T + t]) continue;
            const int slot = (t - 2 * s.pairs) / 2;
            first += slot < 16;
            last += slot >= (s.T - 2 * s.pairs) / 2 - 16;
        }
    }
    CHECK(good == n, "all %ld examples well formed (unique pairs, halves, answers, masks): %s", n, why);
    CHECK(mask[(size_t)n * s.T] == 0, "the trailing token is not scored");
    CHECK(first > 2 * last, "power law: %ld answers in the first 16 slots, %ld in the last 16", first, last);
    /* seeds */
    dn_rng_seed(&r, 2);
    mqar_split(&s, n, &r, &x, tok2, mask, NULL, NULL);
    CHECK(memcmp(tok, tok2, (size_t)n * s.T * 2) != 0, "another seed, other data");
    dn_rng_seed(&r, 1);
    mqar_split(&s, n, &r, &x, tok2, mask, NULL, NULL);
    CHECK(memcmp(tok, tok2, ((size_t)n * s.T + 1) * 2) == 0, "the same seed, the same data");
    scratch_free(&x);
    /* disjointness where collisions are certain: vocab 8 (keys 1..3, values 4..7), 1 pair: 12 prefixes */
    MqarSpec t = {8, 4, 1, 0.01};
    scratch_build(&x, &t);
    HashSet seen;
    hs_init(&seen, 6);
    uint16_t a[6 * 4 + 1], b[200 * 4 + 1];
    uint8_t ma[6 * 4 + 1], mb[200 * 4 + 1];
    dn_rng_seed(&r, 5);
    mqar_split(&t, 6, &r, &x, a, ma, &seen, NULL);
    DNRng r2;
    dn_rng_seed(&r2, 6);
    const long redraws = mqar_split(&t, 200, &r2, &x, b, mb, NULL, &seen);
    int shared = 0;
    for (int i = 0; i < 200; i++)
        for (int j = 0; j < 6; j++) shared += b[i * 4] == a[j * 4] && b[i * 4 + 1] == a[j * 4 + 1];
    CHECK(shared == 0 && redraws > 0, "no test example shares a training prefix (%ld redrawn)", redraws);
    free(seen.v);
    scratch_free(&x);
    free(tok); free(tok2); free(mask);
    char err[DN_ERR_LEN];
    MqarSpec bad = {8192, 200, 64, 0.01};
    CHECK(mqar_check(&bad, err, sizeof err) == -1 && strstr(err, "--seq 200"), "T < 4P refused: %s", err);
    bad.T = 512; bad.pairs = 5000;
    CHECK(mqar_check(&bad, err, sizeof err) == -1 && strstr(err, "--pairs"), "too many pairs refused: %s", err);
}

/* Run a command, return its exit status and its output's first line. */
static int run_cmd(const char *cmd, char *line, size_t cap) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    line[0] = 0;
    char buf[1024];
    int lines = 0;
    while (fgets(buf, sizeof buf, p)) if (lines++ == 0) snprintf(line, cap, "%s", buf);
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void program(void) {
    char dir[] = "/tmp/test_mqar_XXXXXX", cmd[1024], line[1024], err[DN_ERR_LEN], p[512], mp[512];
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return; }
    snprintf(cmd, sizeof cmd, "./mqar_data -o %s/d -v 256 -t 64 -p 8 -n 40 -e 10 -s 3 2>&1", dir);
    CHECK(run_cmd(cmd, line, sizeof line) == 0 && strstr(line, "train"), "mqar_data runs: %s", line);
    for (int split = 0; split < 2; split++) {
        snprintf(p, sizeof p, "%s/d/mqar_%s.bin", dir, split ? "test" : "train");
        mask_path(mp, sizeof mp, p, err, sizeof err);
        size_t n = 0;
        uint16_t *tok = NULL;
        uint8_t *mask = NULL;
        int period = 0;
        const long ne = split ? 10 : 40;
        CHECK(shard_read(p, 256, &tok, &n, err, sizeof err) == 0 && n == (size_t)ne * 64 + 1, "%s: %zu tokens: %s", p, n, err);
        CHECK(mask_read(mp, n, &mask, &period, err, sizeof err) == 0 && period == 64, "its mask, period 64: %s", err);
        if (tok && mask) {
            MqarSpec s = {256, 64, 8, 0.01};
            char why[128] = "";
            long good = 0;
            for (long e = 0; e < ne; e++) good += example_ok(&s, tok + e * 64, mask + e * 64, why, sizeof why);
            CHECK(good == ne, "%s: every example well formed: %s", split ? "test" : "train", why);
        }
        free(tok); free(mask);
    }
    /* the shuffled loader: every row is one example, its scored targets the answers */
    ShuffleLoader sl;
    snprintf(p, sizeof p, "%s/d/mqar_train.bin", dir);
    if (sl_init(&sl, p, 4, 64, 256, 9, err, sizeof err) == 0) {
        int ok = sl.tmask != NULL;
        for (int k = 0; k < 5 && ok; k++) {
            sl_next(&sl, err, sizeof err);
            for (int b = 0; b < 4; b++) {
                int answers = 0;
                for (int t = 0; t < 64; t++) {
                    if (!sl.tmask[b * 64 + t]) continue;
                    answers++;
                    const int key = sl.inputs[b * 64 + t];
                    int found = 0;
                    for (int i = 0; i < 8; i++) found |= sl.inputs[b * 64 + 2 * i] == key && sl.inputs[b * 64 + 2 * i + 1] == sl.targets[b * 64 + t];
                    ok &= found;
                }
                ok &= answers == 8;
            }
        }
        CHECK(ok, "loader rows: 8 scored targets each, each the value of the key at its input");
        sl_free(&sl);
    } else {
        CHECK(0, "sl_init: %s", err);
    }
    /* a different seed gives a different training shard */
    snprintf(cmd, sizeof cmd, "./mqar_data -o %s/e -v 256 -t 64 -p 8 -n 40 -e 10 -s 4 >/dev/null 2>&1 && cmp -s %s/d/mqar_train.bin %s/e/mqar_train.bin", dir, dir, dir);
    CHECK(run_cmd(cmd, line, sizeof line) == 1, "seed 4's shard differs from seed 3's");
    CHECK(run_cmd("./mqar_data -h 2>&1", line, sizeof line) == 0 && strstr(line, "usage"), "-h: %s", line);
    CHECK(run_cmd("./mqar_data -t 64 -p 64 2>&1", line, sizeof line) == 1 && strstr(line, "--seq 64"), "bad sizes: one line: %s", line);
    CHECK(run_cmd("./mqar_data --bogus 2>&1 >/dev/null", line, sizeof line) == 1, "unknown option fails");
    snprintf(cmd, sizeof cmd, "./mqar_data -o %s/d/mqar_train.bin/x -n 2 -e 1 2>&1", dir);
    CHECK(run_cmd(cmd, line, sizeof line) == 1 && strstr(line, "not a folder"), "output under a file: %s", line);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", dir);
}

int main(void) {
    (void)mqar_parse; (void)write_split; /* main's, exercised through the program */
    examples();
    program();
    return test_summary("test_mqar");
}
