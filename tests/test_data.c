/*
 * test_data.c -- token shards and the data loader: exact write/read round trips, refusal of
 * corrupt shards (magic, version, size, token ids), shards that are FIFOs or directories (refused
 * at once: alarm() turns a hang into a failure), names with control characters (escaped: every
 * message one line), 0-token shards, the loader's windows checked against the raw token arrays,
 * wrap-around, exact resume, and ./tokenize -o (run from the repo root): empty inputs add no
 * tokens, FIFO and directory inputs are refused.
 */
#include <glob.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "test.h"
#include "../src/data.h"
#include "../src/tokenizer.h"

#define VOCAB 50257

static char dir[] = "/tmp/test_data_XXXXXX";

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { fprintf(stderr, "cannot write %s\n", path); exit(2); }
    fwrite(data, 1, n, f);
    fclose(f);
}

static uint16_t *random_tokens(DNRng *r, size_t n, int vocab) {
    uint16_t *t = xcalloc(n, sizeof *t);
    for (size_t i = 0; i < n; i++) t[i] = (uint16_t)(dn_rng_u64(r) % (uint64_t)vocab);
    if (n > 2) { t[0] = 0; t[1] = (uint16_t)(vocab - 1); }
    return t;
}

static int sh(const char *cmd) {
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Run cmd with its stdout and stderr captured in out; returns its exit status. */
static int sh_out(const char *cmd, char *out, size_t n) {
    char full[2048], path[300];
    snprintf(path, sizeof path, "%s/cmd.out", dir);
    snprintf(full, sizeof full, "%s >%s 2>&1", cmd, path);
    int rc = sh(full);
    out[0] = 0;
    FILE *f = fopen(path, "rb");
    if (f) { size_t k = fread(out, 1, n - 1, f); out[k] = 0; fclose(f); }
    return rc;
}

static void test_round_trip(DNRng *r) {
    char path[256], err[DN_ERR_LEN] = "";
    size_t sizes[] = {12345, 1, 0};
    for (int k = 0; k < 3; k++) {
        size_t n = sizes[k], m = 0;
        uint16_t *t = random_tokens(r, n, VOCAB), *back = NULL;
        snprintf(path, sizeof path, "%s/rt%d.bin", dir, k);
        int rc = shard_write(path, t, n, err, sizeof err);
        CHECK(rc == 0, "shard_write %zu tokens: %s", n, err);
        struct stat st;
        CHECK(stat(path, &st) == 0 && (size_t)st.st_size == 1024 + 2 * n, "%s is 1024 + 2*%zu bytes", path, n);
        rc = shard_read(path, VOCAB, &back, &m, err, sizeof err);
        CHECK(rc == 0 && m == n && (n == 0 || memcmp(back, t, n * 2) == 0), "shard round trip of %zu tokens: %s", n, err);
        size_t hn = 99;
        CHECK(shard_read_header(path, &hn, err, sizeof err) == 0 && hn == n, "shard_read_header: %zu tokens", hn);
        if (rc == 0) free(back);
        free(t);
    }
    char pat[300];
    snprintf(pat, sizeof pat, "%s/*.tmp.*", dir);
    glob_t g;
    CHECK(glob(pat, 0, NULL, &g) == GLOB_NOMATCH, "no temporary files left behind");
    globfree(&g);
    snprintf(path, sizeof path, "%s/no/such/dir/x.bin", dir);
    uint16_t one = 1;
    CHECK(shard_write(path, &one, 1, err, sizeof err) == -1 && strstr(err, "x.bin"), "write to a missing dir refused: %s", err);
}

/* A good shard with one change, written to path; shard_read must refuse it naming the file. */
static void expect_refused(const char *what, const int32_t *hdr, const uint16_t *tok, size_t ntok,
                           size_t truncate, int vocab, const char *needle) {
    char path[256], err[DN_ERR_LEN] = "";
    snprintf(path, sizeof path, "%s/bad.bin", dir);
    size_t n = 1024 + 2 * ntok;
    char *b = xcalloc(n, 1);
    memcpy(b, hdr, 1024);
    memcpy(b + 1024, tok, 2 * ntok);
    write_bytes(path, b, truncate ? truncate : n);
    free(b);
    uint16_t *t = NULL;
    size_t m;
    int rc = shard_read(path, vocab, &t, &m, err, sizeof err);
    CHECK(rc == -1 && strstr(err, path) && strstr(err, needle) && !strchr(err, '\n'), "%s refused: %s", what, err);
    if (rc == 0) free(t);
    printf("  ok   %s refused: %s\n", what, err);
}

static void test_corrupt(DNRng *r) {
    size_t n = 1000;
    uint16_t *tok = random_tokens(r, n, VOCAB);
    int32_t hdr[256] = {SHARD_MAGIC, SHARD_VERSION, (int32_t)n};
    int32_t h[256];
    memcpy(h, hdr, sizeof h);
    h[0] = 20240326;
    expect_refused("wrong magic", h, tok, n, 0, VOCAB, "magic");
    memcpy(h, hdr, sizeof h);
    h[1] = 2;
    expect_refused("wrong version", h, tok, n, 0, VOCAB, "version");
    memcpy(h, hdr, sizeof h);
    h[2] = (int32_t)n + 1;
    expect_refused("token count larger than the file", h, tok, n, 0, VOCAB, "header says");
    h[2] = (int32_t)n - 1;
    expect_refused("token count smaller than the file", h, tok, n, 0, VOCAB, "header says");
    h[2] = -5;
    expect_refused("negative token count", h, tok, n, 0, VOCAB, "header says");
    expect_refused("file shorter than the header", hdr, tok, n, 100, VOCAB, "too small");
    expect_refused("file cut short", hdr, tok, n, 1024 + 2 * n - 1, VOCAB, "header says");
    tok[777] = VOCAB;
    expect_refused("token id >= vocab", hdr, tok, n, 0, VOCAB, "position 777");
    tok[777] = 5;
    expect_refused("token id >= a smaller vocab", hdr, tok, n, 0, 100, "vocabulary size 100");
    char err[DN_ERR_LEN] = "";
    size_t m;
    uint16_t *t;
    CHECK(shard_read("/nonexistent/x.bin", VOCAB, &t, &m, err, sizeof err) == -1 && strstr(err, "/nonexistent/x.bin"),
          "missing shard refused: %s", err);
    free(tok);
}

/* Shard names that are not regular files, or that hold control characters, and ids beyond the
 * vocabulary: one line each, naming the shard (escaped), refused without blocking. */
static void test_odd_files(DNRng *r) {
    char path[300], pattern[300], err[DN_ERR_LEN] = "";
    uint16_t *t = NULL;
    size_t m = 0;
    DataLoader dl;
    /* a FIFO and a directory, read directly and through a glob; alarm() turns a hang into a failure */
    snprintf(path, sizeof path, "%s/odd_fifo_000000.bin", dir);
    CHECK(mkfifo(path, 0600) == 0, "mkfifo %s", path);
    test_watchdog("test_data", 20);
    CHECK(shard_read(path, VOCAB, &t, &m, err, sizeof err) == -1 && strstr(err, "FIFO") && strstr(err, "odd_fifo_000000.bin"),
          "a FIFO as a shard is refused at once: %s", err);
    CHECK(shard_read_header(path, &m, err, sizeof err) == -1 && strstr(err, "FIFO"), "shard_read_header refuses a FIFO: %s", err);
    snprintf(pattern, sizeof pattern, "%s/odd_fifo_*.bin", dir);
    CHECK(dl_init(&dl, pattern, 2, 8, VOCAB, err, sizeof err) == -1 && strstr(err, "FIFO"), "dl_init refuses a FIFO in its glob: %s", err);
    test_watchdog_off();
    remove(path);
    snprintf(path, sizeof path, "%s/odd_dir_000000.bin", dir);
    mkdir(path, 0700);
    CHECK(shard_read(path, VOCAB, &t, &m, err, sizeof err) == -1 && strstr(err, "is a directory") && !strstr(err, "too small"),
          "a directory as a shard is refused as one: %s", err);
    snprintf(pattern, sizeof pattern, "%s/odd_dir_*.bin", dir);
    CHECK(dl_init(&dl, pattern, 2, 8, VOCAB, err, sizeof err) == -1 && strstr(err, "odd_dir_000000.bin: is a directory"),
          "dl_init refuses a directory in its glob: %s", err);
    rmdir(path);

    /* a name with a newline and a tab (any byte but '/' and NUL may be in a file name) */
    snprintf(path, sizeof path, "%s/odd\nname\t_000000.bin", dir);
    write_bytes(path, "not a shard", 11);
    snprintf(pattern, sizeof pattern, "%s/odd*name*_*.bin", dir);
    CHECK(dl_init(&dl, pattern, 2, 8, VOCAB, err, sizeof err) == -1 && strstr(err, "odd\\nname\\t_000000.bin") &&
          !strchr(err, '\n') && !strchr(err, '\t'), "a corrupt shard's control characters are escaped: %s", err);
    /* the same name, now a valid shard with an id beyond the vocabulary: found when loaded */
    uint16_t *tok = random_tokens(r, 100, VOCAB);
    tok[41] = 60000;
    char err2[DN_ERR_LEN] = "";
    CHECK(shard_write(path, tok, 100, err, sizeof err) == 0, "shard_write: %s", err);
    int init = dl_init(&dl, pattern, 2, 8, VOCAB, err, sizeof err);
    CHECK(init == 0, "dl_init checks headers only: %s", err);
    if (init == 0) {
        CHECK(dl_next(&dl, err2, sizeof err2) == -1 && strstr(err2, "odd\\nname\\t_000000.bin") && strstr(err2, "token 60000") &&
              strstr(err2, "position 41") && strstr(err2, "vocabulary size 50257") && !strchr(err2, '\n') && !strchr(err2, '\t'),
              "an id >= the vocabulary: one line naming the shard, the token, its position, the vocabulary size: %s", err2);
        dl_free(&dl);
    }
    printf("  ok   %s\n", err2);
    remove(path);
    free(tok);

    /* a shard of zero tokens: readable, but no batch fits in it */
    snprintf(path, sizeof path, "%s/zero_000000.bin", dir);
    CHECK(shard_write(path, NULL, 0, err, sizeof err) == 0, "shard_write of 0 tokens: %s", err);
    snprintf(pattern, sizeof pattern, "%s/zero_*.bin", dir);
    CHECK(dl_init(&dl, pattern, 1, 1, VOCAB, err, sizeof err) == -1 && strstr(err, "zero_000000.bin: 0 tokens, fewer than one batch"),
          "a 0-token shard refused by the loader: %s", err);
    remove(path);
}

/* The loader's batches against the raw arrays: batch k starts at (s, p), computed here. */
static int batch_matches(const DataLoader *dl, uint16_t *const *raw, size_t s, size_t p) {
    size_t bt = (size_t)dl->B * dl->T;
    for (size_t i = 0; i < bt; i++)
        if (dl->inputs[i] != raw[s][p + i] || dl->targets[i] != raw[s][p + i + 1]) return 0;
    return 1;
}

static void test_loader(DNRng *r) {
    enum { NS = 3, B = 3, T = 17 };
    size_t sizes[NS] = {1000, 777, 1500};
    uint16_t *raw[NS];
    char path[256], pattern[256], err[DN_ERR_LEN] = "";
    for (int s = 0; s < NS; s++) {
        raw[s] = random_tokens(r, sizes[s], VOCAB);
        snprintf(path, sizeof path, "%s/ld_train_%06d.bin", dir, s);
        CHECK(shard_write(path, raw[s], sizes[s], err, sizeof err) == 0, "write %s: %s", path, err);
    }
    snprintf(pattern, sizeof pattern, "%s/ld_train_*.bin", dir);
    DataLoader dl;
    if (dl_init(&dl, pattern, B, T, VOCAB, err, sizeof err) != 0) { CHECK(0, "dl_init: %s", err); return; }
    CHECK(dl.nfiles == NS, "%zu shards matched", dl.nfiles);
    const size_t bt = B * T;
    long epoch = dl_epoch_batches(&dl);
    CHECK(epoch == (long)((999 / bt) + (776 / bt) + (1499 / bt)), "epoch of %ld batches", epoch);
    /* three passes, checking every window and that the walk wraps around to the first shard */
    size_t s = 0, p = 0;
    int ok = 0, total = (int)(3 * epoch + 5), wrapped = 0;
    for (int k = 0; k < total; k++) {
        if (p + bt + 1 > sizes[s]) { s = (s + 1) % NS; p = 0; wrapped += s == 0; }
        if (dl_next(&dl, err, sizeof err) != 0) { CHECK(0, "dl_next: %s", err); break; }
        ok += batch_matches(&dl, raw, s, p);
        p += bt;
    }
    CHECK(ok == total && wrapped == 3, "%d of %d batches are the right windows (%d wraps)", ok, total, wrapped);
    /* resume: remember the position, take 40 batches, restore in a fresh loader, compare */
    long ps, pp;
    dl_position(&dl, &ps, &pp);
    int *saved = xcalloc(40 * 2 * bt, sizeof(int));
    for (int k = 0; k < 40; k++) {
        dl_next(&dl, err, sizeof err);
        memcpy(saved + 2 * k * bt, dl.inputs, bt * sizeof(int));
        memcpy(saved + (2 * k + 1) * bt, dl.targets, bt * sizeof(int));
    }
    DataLoader d2;
    int same = 0;
    if (dl_init(&d2, pattern, B, T, VOCAB, err, sizeof err) == 0 && dl_seek(&d2, ps, pp, err, sizeof err) == 0) {
        for (int k = 0; k < 40; k++) {
            dl_next(&d2, err, sizeof err);
            same += memcmp(saved + 2 * k * bt, d2.inputs, bt * sizeof(int)) == 0 &&
                    memcmp(saved + (2 * k + 1) * bt, d2.targets, bt * sizeof(int)) == 0;
        }
        dl_free(&d2);
    }
    CHECK(same == 40, "resume at (%ld, %ld) in a fresh loader: %d of 40 batches identical", ps, pp, same);
    dl_seek(&dl, ps, pp, err, sizeof err);
    dl_next(&dl, err, sizeof err);
    CHECK(memcmp(saved, dl.inputs, bt * sizeof(int)) == 0, "dl_seek back in the same loader");
    free(saved);
    /* validation use: dl_reset gives the first batches again */
    dl_reset(&dl);
    dl_next(&dl, err, sizeof err);
    CHECK(batch_matches(&dl, raw, 0, 0), "dl_reset restarts at shard 0, token 0");
    err[0] = 0;
    CHECK(dl_seek(&dl, NS, 0, err, sizeof err) == -1 && strstr(err, "out of range"), "seek to a missing shard refused: %s", err);
    CHECK(dl_seek(&dl, 1, 778, err, sizeof err) == -1 && strstr(err, "ld_train_000001.bin"), "seek past a shard's end refused: %s", err);
    dl_free(&dl);

    /* errors: nothing matches; a shard too small for one batch; a corrupt shard */
    snprintf(pattern, sizeof pattern, "%s/nothing_*.bin", dir);
    CHECK(dl_init(&dl, pattern, B, T, VOCAB, err, sizeof err) == -1 && strstr(err, "no file matches"), "no match refused: %s", err);
    snprintf(pattern, sizeof pattern, "%s/ld_train_*.bin", dir);
    CHECK(dl_init(&dl, pattern, 4, 200, VOCAB, err, sizeof err) == -1 && strstr(err, "ld_train_000001.bin") &&
          strstr(err, "fewer than one batch"), "a shard smaller than B*T+1 refused: %s", err);
    CHECK(dl_init(&dl, pattern, 4, 0, VOCAB, err, sizeof err) == -1, "T=0 refused: %s", err);
    snprintf(path, sizeof path, "%s/ld_train_000003.bin", dir);
    write_bytes(path, "not a shard", 11);
    CHECK(dl_init(&dl, pattern, B, T, VOCAB, err, sizeof err) == -1 && strstr(err, "ld_train_000003.bin"),
          "a corrupt shard in the glob refused: %s", err);
    remove(path);
    for (int k = 0; k < NS; k++) free(raw[k]);
}

/* Concatenate the tokens of every file matching pattern (sorted). */
static uint16_t *read_all_shards(const char *pattern, size_t *n, int *nfiles) {
    glob_t g;
    *n = 0;
    *nfiles = 0;
    if (glob(pattern, 0, NULL, &g) != 0) return xcalloc(1, 2);
    uint16_t *all = NULL;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        uint16_t *t;
        size_t m;
        char err[DN_ERR_LEN];
        if (shard_read(g.gl_pathv[i], VOCAB, &t, &m, err, sizeof err) != 0) { CHECK(0, "%s", err); continue; }
        all = realloc(all, (*n + m + 1) * sizeof *all);
        memcpy(all + *n, t, m * 2);
        *n += m;
        free(t);
        (*nfiles)++;
    }
    globfree(&g);
    return all ? all : xcalloc(1, 2);
}

static void test_cli(void) {
    if (access("./tokenize", X_OK) != 0) { CHECK(0, "./tokenize not built (make tokenize)"); return; }
    Tokenizer tok;
    char err[DN_ERR_LEN], f1[256], f2[256], cmd[2048], pat[256];
    if (tok_load(&tok, NULL, err, sizeof err) != 0) { CHECK(0, "tok_load: %s", err); return; }
    const char *d1 = "First document. It has a few sentences, and some more words to make tokens.\n";
    const char *d2 = "Second one: caf\xc3\xa9, \xe6\x97\xa5\xe6\x9c\xac, and <|endoftext|> as plain text\n\n";
    snprintf(f1, sizeof f1, "%s/doc1.txt", dir);
    snprintf(f2, sizeof f2, "%s/doc2.txt", dir);
    write_bytes(f1, d1, strlen(d1));
    write_bytes(f2, d2, strlen(d2));
    /* what the shards must hold: eot doc1 eot doc2 */
    size_t n1, n2;
    int *i1, *i2;
    tok_encode(&tok, d1, strlen(d1), 0, &i1, &n1, err, sizeof err);
    tok_encode(&tok, d2, strlen(d2), 0, &i2, &n2, err, sizeof err);
    size_t nw = n1 + n2 + 2;
    uint16_t *want = xcalloc(nw, sizeof *want);
    want[0] = TOK_GPT2_EOT;
    for (size_t i = 0; i < n1; i++) want[1 + i] = (uint16_t)i1[i];
    want[1 + n1] = TOK_GPT2_EOT;
    for (size_t i = 0; i < n2; i++) want[2 + n1 + i] = (uint16_t)i2[i];
    free(i1);
    free(i2);

    /* small shards: val 7 tokens, train shards of at most 10 */
    snprintf(cmd, sizeof cmd, "./tokenize -o %s/a --val-tokens 7 --shard-size 10 %s %s 2>/dev/null", dir, f1, f2);
    CHECK(sh(cmd) == 0, "%s", cmd);
    size_t nv, nt;
    int fv, ft;
    snprintf(pat, sizeof pat, "%s/a_val.bin", dir);
    uint16_t *val = read_all_shards(pat, &nv, &fv);
    snprintf(pat, sizeof pat, "%s/a_train_*.bin", dir);
    uint16_t *train = read_all_shards(pat, &nt, &ft);
    CHECK(fv == 1 && nv == 7 && memcmp(val, want, 14) == 0, "a_val.bin holds the first 7 tokens (%zu)", nv);
    CHECK(ft == (int)((nw - 7 + 9) / 10) && nt == nw - 7 && memcmp(train, want + 7, 2 * nt) == 0,
          "%d numbered train shards hold the other %zu tokens (%zu)", ft, nw - 7, nt);
    free(val);
    free(train);
    /* one train shard: NAME_train.bin */
    snprintf(cmd, sizeof cmd, "./tokenize -o %s/b --val-tokens 5 %s %s 2>/dev/null", dir, f1, f2);
    CHECK(sh(cmd) == 0, "%s", cmd);
    snprintf(pat, sizeof pat, "%s/b_train.bin", dir);
    train = read_all_shards(pat, &nt, &ft);
    CHECK(ft == 1 && nt == nw - 5 && memcmp(train, want + 5, 2 * nt) == 0, "b_train.bin holds %zu tokens", nt);
    free(train);
    /* an empty file is no document: doc1 empty doc2 gives the tokens of doc1 doc2, no extra eot
     * (it used to double its read buffer until "out of memory") */
    char fe[256], fifo[256], out[8192];
    snprintf(fe, sizeof fe, "%s/empty.txt", dir);
    write_bytes(fe, "", 0);
    snprintf(cmd, sizeof cmd, "timeout 60 ./tokenize -o %s/e --val-tokens 5 %s %s %s", dir, f1, fe, f2);
    int rc = sh_out(cmd, out, sizeof out);
    snprintf(pat, sizeof pat, "%s/e_val.bin", dir);
    val = read_all_shards(pat, &nv, &fv);
    snprintf(pat, sizeof pat, "%s/e_train.bin", dir);
    train = read_all_shards(pat, &nt, &ft);
    CHECK(rc == 0 && strstr(out, "empty.txt is empty") && nv == 5 && nt == nw - 5 && memcmp(val, want, 10) == 0 &&
          memcmp(train, want + 5, 2 * nt) == 0, "an empty input adds no tokens (exit %d, %zu + %zu tokens, want %zu): %s", rc, nv, nt, nw, out);
    free(val);
    free(train);
    free(want);
    snprintf(cmd, sizeof cmd, "timeout 60 ./tokenize -o %s/f %s %s", dir, fe, fe);
    rc = sh_out(cmd, out, sizeof out);
    CHECK(rc != 0 && rc != 124 && strstr(out, "all empty"), "only empty inputs: refused (exit %d): %s", rc, out);
    /* inputs that are not regular files: refused at once, saying what they are */
    snprintf(fifo, sizeof fifo, "%s/in.fifo", dir);
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo %s", fifo);
    snprintf(cmd, sizeof cmd, "timeout 20 ./tokenize -o %s/g %s %s", dir, f1, fifo);
    rc = sh_out(cmd, out, sizeof out);
    CHECK(rc != 0 && rc != 124 && strstr(out, "in.fifo: is a FIFO"), "a FIFO input is refused at once (exit %d): %s", rc, out);
    snprintf(cmd, sizeof cmd, "./tokenize -o %s/g %s %s", dir, f1, dir);
    rc = sh_out(cmd, out, sizeof out);
    CHECK(rc != 0 && strstr(out, "is a directory"), "a directory input is refused as one (exit %d): %s", rc, out);
    rc = sh_out("./tokenize -h", out, sizeof out);
    CHECK(rc == 0 && strstr(out, "empty FILE") && strstr(out, "regular files"), "tokenize -h documents empty and non-regular inputs");
    /* bad usage / bad input exit non-zero */
    const char *bad[] = {"-o %s/c %s/missing.txt", "-o %s/c --val-tokens 100000 %s/doc1.txt",
                         "-o %s/c --shard-size 0 %s/doc1.txt", "-o %s/c --val-tokens abc %s/doc1.txt",
                         "-o %s/no/such/dir/c %s/doc1.txt"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char args[512];
        snprintf(args, sizeof args, bad[i], dir, dir);
        snprintf(cmd, sizeof cmd, "./tokenize %s > /dev/null 2>&1", args);
        CHECK(sh(cmd) != 0, "'./tokenize %s' exits non-zero", args);
    }
    /* TinyShakespeare: one document of 1 + 338025 tokens, val = the first 32768 */
    snprintf(cmd, sizeof cmd, "./tokenize -o %s/ts data/tinyshakespeare/input.txt 2>/dev/null", dir);
    CHECK(sh(cmd) == 0, "%s", cmd);
    snprintf(pat, sizeof pat, "%s/ts_val.bin", dir);
    val = read_all_shards(pat, &nv, &fv);
    snprintf(pat, sizeof pat, "%s/ts_train.bin", dir);
    train = read_all_shards(pat, &nt, &ft);
    CHECK(nv == 32768 && val[0] == TOK_GPT2_EOT && val[1] == 5962, "ts_val.bin: %zu tokens from eot, First", nv);
    CHECK(nt == 338026 - 32768, "ts_train.bin: %zu tokens, want %d", nt, 338026 - 32768);
    free(val);
    free(train);
    DataLoader dl;
    snprintf(pat, sizeof pat, "%s/ts_val.bin", dir);
    CHECK(dl_init(&dl, pat, 4, 1024, VOCAB, err, sizeof err) == 0 && dl_epoch_batches(&dl) == 7,
          "ts_val.bin gives 7 validation batches of 4 x 1024");
    dl_free(&dl);
    tok_free(&tok);
}

/* ---- the shuffled loader and the validation windows ---------------------------------------- */

/* Write shards prefix_000000.bin ... of the given sizes (random tokens, raw[s] keeps them). */
static void write_shards(DNRng *r, const char *prefix, const size_t *sizes, int ns, uint16_t **raw) {
    char path[256], err[DN_ERR_LEN] = "";
    for (int s = 0; s < ns; s++) {
        raw[s] = random_tokens(r, sizes[s], VOCAB);
        snprintf(path, sizeof path, "%s/%s_%06d.bin", dir, prefix, s);
        CHECK(shard_write(path, raw[s], sizes[s], err, sizeof err) == 0, "write %s: %s", path, err);
    }
}

/* Every row of the current batch is the window rows[b] says, token for token. */
static int rows_match(const ShuffleLoader *sl, uint16_t *const *raw) {
    const size_t T = (size_t)sl->T;
    for (int b = 0; b < sl->B; b++) {
        size_t s, p;
        sl_window(sl, sl->rows[b], &s, &p);
        if (p + T + 1 > sl->set.file_ntok[s]) return 0;
        for (size_t t = 0; t < T; t++)
            if (sl->inputs[b * T + t] != raw[s][p + t] || sl->targets[b * T + t] != raw[s][p + t + 1]) return 0;
    }
    return 1;
}

/* The window ids of the next nb batches of sl. */
static size_t *take_rows(ShuffleLoader *sl, int nb) {
    char err[DN_ERR_LEN] = "";
    size_t *ids = xcalloc((size_t)nb * sl->B, sizeof *ids);
    for (int k = 0; k < nb; k++) {
        if (sl_next(sl, err, sizeof err) != 0) { CHECK(0, "sl_next: %s", err); break; }
        memcpy(ids + (size_t)k * sl->B, sl->rows, sl->B * sizeof *ids);
    }
    return ids;
}

static void test_shuffle_epochs(DNRng *r) {
    enum { NS = 5, B = 3, T = 16 };
    /* windows (n-1)/T: 12, 6, 2, 1 (exactly T+1 tokens), 9 = 30 per epoch */
    const size_t sizes[NS] = {200, 97, 33, 17, 150};
    uint16_t *raw[NS];
    char pattern[256], err[DN_ERR_LEN] = "";
    write_shards(r, "sh_train", sizes, NS, raw);
    snprintf(pattern, sizeof pattern, "%s/sh_train_*.bin", dir);
    ShuffleLoader sl;
    if (sl_init(&sl, pattern, B, T, VOCAB, 7, err, sizeof err) != 0) { CHECK(0, "sl_init: %s", err); return; }
    const size_t W = sl.nwindows;
    CHECK(W == 30 && sl.set.nfiles == NS, "%zu windows in %zu shards (want 30 in %d)", W, sl.set.nfiles, NS);
    /* three epochs and a bit (batches cross the epoch ends: 30 is not a multiple of... B = 3 is, so
     * start one row in to make them cross) */
    const int nb = (int)(3 * W / B) + 2;
    int ok = 0;
    size_t *ids = xcalloc((size_t)nb * B, sizeof *ids);
    for (int k = 0; k < nb; k++) {
        if (sl_next(&sl, err, sizeof err) != 0) { CHECK(0, "sl_next: %s", err); break; }
        ok += rows_match(&sl, raw);
        memcpy(ids + (size_t)k * B, sl.rows, B * sizeof *ids);
    }
    CHECK(ok == nb, "%d of %d batches hold the windows their rows name, token for token", ok, nb);
    for (int e = 0; e < 3; e++) {
        int *seen = xcalloc(W, sizeof *seen), once = 0;
        for (size_t i = 0; i < W; i++) seen[ids[e * W + i]]++;
        for (size_t i = 0; i < W; i++) once += seen[i] == 1;
        CHECK(once == (int)W, "epoch %d visits every one of the %zu windows exactly once (%d)", e, W, once);
        free(seen);
    }
    CHECK(memcmp(ids, ids + W, W * sizeof *ids) != 0 && memcmp(ids + W, ids + 2 * W, W * sizeof *ids) != 0,
          "each epoch has its own order");
    int sorted = 1;
    for (size_t i = 1; i < W; i++) sorted &= ids[i] == ids[i - 1] + 1;
    CHECK(!sorted, "epoch 0 is not the file order");
    long pe, pn;
    sl_position(&sl, &pe, &pn);
    CHECK(pe == 3 && pn == (long)(nb * B - 3 * W), "position after %d batches: epoch %ld, window %ld", nb, pe, pn);

    /* the same seed gives the same batches; another seed another order */
    ShuffleLoader s2;
    if (sl_init(&s2, pattern, B, T, VOCAB, 7, err, sizeof err) == 0) {
        size_t *again = take_rows(&s2, nb);
        CHECK(memcmp(ids, again, (size_t)nb * B * sizeof *ids) == 0, "seed 7 twice: the same %d batches", nb);
        free(again);
        sl_free(&s2);
    }
    if (sl_init(&s2, pattern, B, T, VOCAB, 8, err, sizeof err) == 0) {
        size_t *other = take_rows(&s2, (int)(W / B));
        CHECK(memcmp(ids, other, W * sizeof *ids) != 0, "seeds 7 and 8 give different orders");
        free(other);
        sl_free(&s2);
    }

    /* resume mid-epoch: (epoch, next) as the trainer stores them in data_shard / data_pos, restored
     * in a fresh loader, gives the same next batches as the straight run (across an epoch end) */
    int starts[] = {1, 7, 10, 12};
    for (size_t k = 0; k < sizeof starts / sizeof *starts; k++) {
        ShuffleLoader a, b;
        if (sl_init(&a, pattern, B, T, VOCAB, 7, err, sizeof err) || sl_init(&b, pattern, B, T, VOCAB, 7, err, sizeof err)) {
            CHECK(0, "sl_init: %s", err);
            break;
        }
        free(take_rows(&a, starts[k]));
        DNTrainState st;
        memset(&st, 0, sizeof st);
        sl_position(&a, &st.data_shard, &st.data_pos);
        size_t *straight = take_rows(&a, 12);
        int rc = sl_seek(&b, st.data_shard, st.data_pos, err, sizeof err);
        size_t *resumed = take_rows(&b, 12);
        CHECK(rc == 0 && memcmp(straight, resumed, 12 * B * sizeof *ids) == 0 && memcmp(a.inputs, b.inputs, B * T * sizeof(int)) == 0,
              "resume at (epoch %ld, window %ld) after %d batches: the next 12 batches equal the straight run's",
              st.data_shard, st.data_pos, starts[k]);
        free(straight);
        free(resumed);
        sl_free(&a);
        sl_free(&b);
    }
    /* data parallelism: 3 ranks of B rows each take, call by call, the rows that one loader of 3B
     * rows takes (across epoch ends: 30 windows, 9 rows a call), rank r the r-th B of them, token
     * for token, and every rank's position is that loader's */
    {
        enum { WORLD = 3 };
        ShuffleLoader one, rk[WORLD];
        int inited = sl_init(&one, pattern, WORLD * B, T, VOCAB, 7, err, sizeof err) == 0;
        for (int q = 0; q < WORLD; q++)
            inited &= sl_init(&rk[q], pattern, B, T, VOCAB, 7, err, sizeof err) == 0 &&
                      sl_set_rank(&rk[q], q, WORLD, err, sizeof err) == 0;
        CHECK(inited, "loaders for 3 ranks: %s", err);
        const int calls = (int)(2 * W / (WORLD * B)) + 2;
        int same_rows = 0, same_tokens = 0, same_pos = 0;
        for (int k = 0; inited && k < calls; k++) {
            int rows_ok = 1, tok_ok = 1, pos_ok = 1;
            if (sl_next(&one, err, sizeof err) != 0) { CHECK(0, "sl_next: %s", err); break; }
            long e1, n1, e2, n2;
            sl_position(&one, &e1, &n1);
            for (int q = 0; q < WORLD; q++) {
                if (sl_next(&rk[q], err, sizeof err) != 0) { CHECK(0, "sl_next rank %d: %s", q, err); break; }
                rows_ok &= memcmp(rk[q].rows, one.rows + q * B, B * sizeof *one.rows) == 0;
                tok_ok &= memcmp(rk[q].inputs, one.inputs + q * B * T, B * T * sizeof(int)) == 0 &&
                          memcmp(rk[q].targets, one.targets + q * B * T, B * T * sizeof(int)) == 0;
                sl_position(&rk[q], &e2, &n2);
                pos_ok &= e1 == e2 && n1 == n2;
            }
            same_rows += rows_ok;
            same_tokens += tok_ok;
            same_pos += pos_ok;
        }
        CHECK(same_rows == calls && same_tokens == calls && same_pos == calls,
              "3 ranks x %d rows == one loader of %d rows over %d calls (2+ epochs): rows %d, tokens %d, positions %d",
              B, WORLD * B, calls, same_rows, same_tokens, same_pos);
        err[0] = 0;
        CHECK(sl_set_rank(&one, 3, 3, err, sizeof err) == -1 && strstr(err, "rank 3 of 3"), "rank 3 of 3 refused: %s", err);
        CHECK(sl_set_rank(&one, -1, 2, err, sizeof err) == -1 && sl_set_rank(&one, 0, 0, err, sizeof err) == -1,
              "rank -1 and a group of 0 refused");
        sl_free(&one);
        for (int q = 0; q < WORLD; q++) sl_free(&rk[q]);
    }
    /* random windows (the reference's sampling): rows start anywhere inside one shard, drawn from
     * (seed, row); the same seed repeats them, another does not; resume and ranks as above */
    {
        ShuffleLoader ra, rb;
        int inited = sl_init(&ra, pattern, B, T, VOCAB, 7, err, sizeof err) == 0 && sl_set_random(&ra, err, sizeof err) == 0;
        CHECK(inited, "random windows: %s", err);
        const int nbr = 40;
        int tok_ok = 1, unaligned = 0, one_shard = 1;
        size_t *offs = xcalloc((size_t)nbr * B, sizeof *offs);
        for (int k = 0; inited && k < nbr; k++) {
            if (sl_next(&ra, err, sizeof err) != 0) { CHECK(0, "sl_next: %s", err); break; }
            for (int b = 0; b < B; b++) {
                const size_t off = ra.rows[b];
                size_t sh = 0;
                while (sh + 1 < ra.set.nfiles && ra.set.start[sh + 1] <= off) sh++;
                const size_t pos = off - ra.set.start[sh];
                one_shard &= pos + T + 1 <= ra.set.file_ntok[sh];
                unaligned += pos % T != 0;
                for (int t = 0; t < T && pos + T + 1 <= ra.set.file_ntok[sh]; t++)
                    tok_ok &= ra.inputs[b * T + t] == raw[sh][pos + t] && ra.targets[b * T + t] == raw[sh][pos + t + 1];
                offs[(size_t)k * B + b] = off;
            }
        }
        CHECK(one_shard && tok_ok, "every random window lies inside one shard and holds its tokens");
        CHECK(unaligned > nbr * B / 2, "random windows start anywhere: %d of %d rows off the T grid", unaligned, nbr * B);
        long re, rn;
        sl_position(&ra, &re, &rn);
        CHECK(re * (long)W + rn == (long)nbr * B, "position counts the rows drawn: (%ld, %ld) = %d rows", re, rn, nbr * B);
        if (sl_init(&rb, pattern, B, T, VOCAB, 7, err, sizeof err) == 0 && sl_set_random(&rb, err, sizeof err) == 0) {
            size_t *again = take_rows(&rb, nbr);
            CHECK(memcmp(offs, again, (size_t)nbr * B * sizeof *offs) == 0, "seed 7 twice: the same random windows");
            free(again);
            /* resume: a fresh loader sought to the position after 5 batches continues alike */
            ShuffleLoader rc2;
            if (sl_init(&rc2, pattern, B, T, VOCAB, 7, err, sizeof err) == 0 && sl_set_random(&rc2, err, sizeof err) == 0 &&
                sl_seek(&rc2, 0, 5 * B, err, sizeof err) == 0) {
                size_t *resumed = take_rows(&rc2, 10);
                CHECK(memcmp(resumed, offs + 5 * B, 10 * B * sizeof *offs) == 0, "random windows resumed after 5 batches: the same next 10");
                free(resumed);
                sl_free(&rc2);
            }
            sl_free(&rb);
        }
        if (sl_init(&rb, pattern, B, T, VOCAB, 8, err, sizeof err) == 0 && sl_set_random(&rb, err, sizeof err) == 0) {
            size_t *other = take_rows(&rb, nbr);
            CHECK(memcmp(offs, other, (size_t)nbr * B * sizeof *offs) != 0, "seeds 7 and 8: different random windows");
            free(other);
            sl_free(&rb);
        }
        /* two ranks of B rows == one random loader of 2B rows */
        ShuffleLoader one, r0, r1;
        if (sl_init(&one, pattern, 2 * B, T, VOCAB, 7, err, sizeof err) == 0 && sl_set_random(&one, err, sizeof err) == 0 &&
            sl_init(&r0, pattern, B, T, VOCAB, 7, err, sizeof err) == 0 && sl_set_random(&r0, err, sizeof err) == 0 &&
            sl_set_rank(&r0, 0, 2, err, sizeof err) == 0 &&
            sl_init(&r1, pattern, B, T, VOCAB, 7, err, sizeof err) == 0 && sl_set_random(&r1, err, sizeof err) == 0 &&
            sl_set_rank(&r1, 1, 2, err, sizeof err) == 0) {
            int same = 1;
            for (int k = 0; k < 25; k++) {
                sl_next(&one, err, sizeof err);
                sl_next(&r0, err, sizeof err);
                sl_next(&r1, err, sizeof err);
                same &= memcmp(r0.rows, one.rows, B * sizeof *one.rows) == 0 && memcmp(r1.rows, one.rows + B, B * sizeof *one.rows) == 0;
            }
            CHECK(same, "random windows on 2 ranks == one loader of 2B rows (25 calls, past W)");
            sl_free(&one);
            sl_free(&r0);
            sl_free(&r1);
        }
        free(offs);
        sl_free(&ra);
    }
    err[0] = 0;
    CHECK(sl_seek(&sl, 0, (long)W + 1, err, sizeof err) == -1 && strstr(err, "out of range"), "seek past an epoch refused: %s", err);
    CHECK(sl_seek(&sl, -1, 0, err, sizeof err) == -1, "negative epoch refused: %s", err);
    CHECK(sl_seek(&sl, 0, (long)W, err, sizeof err) == 0 && sl_next(&sl, err, sizeof err) == 0 && sl.epoch == 1,
          "seek to the end of epoch 0 continues with epoch 1");
    sl_free(&sl);
    free(ids);

    /* a token beyond the vocabulary: refused when its window is read, naming the shard */
    CHECK(sl_init(&sl, pattern, B, T, 100, 7, err, sizeof err) == 0, "sl_init reads only headers: %s", err);
    CHECK(sl_next(&sl, err, sizeof err) == -1 && strstr(err, "sh_train_") && strstr(err, "vocabulary size 100"),
          "token >= vocab refused: %s", err);
    sl_free(&sl);
    /* a shard smaller than one window, nothing matching, B or T zero */
    const size_t small[1] = {16};
    uint16_t *sraw[1];
    write_shards(r, "sh_train_z", small, 1, sraw); /* sorts after the others */
    CHECK(sl_init(&sl, pattern, B, T, VOCAB, 7, err, sizeof err) == -1 && strstr(err, "sh_train_z_000000.bin") &&
          strstr(err, "16 tokens, fewer than one window needs (T+1 = 17)") && !strchr(err, '\n'),
          "a shard smaller than one window refused: %s", err);
    snprintf(pattern, sizeof pattern, "%s/nothing_*.bin", dir);
    CHECK(sl_init(&sl, pattern, B, T, VOCAB, 7, err, sizeof err) == -1 && strstr(err, "no file matches"), "no match refused: %s", err);
    CHECK(sl_init(&sl, pattern, B, 0, VOCAB, 7, err, sizeof err) == -1, "T=0 refused: %s", err);
    sl_free(&sl); /* a failed init leaves a loader that frees safely */
    free(sraw[0]);
    for (int s = 0; s < NS; s++) free(raw[s]);
}

/* Many shards: more than SHARDSET_OPEN, read in shuffled order (descriptors are reused). */
static void test_shuffle_many_shards(DNRng *r) {
    enum { NS = 3 * SHARDSET_OPEN + 1, B = 4, T = 8 };
    size_t sizes[NS];
    uint16_t *raw[NS];
    for (int s = 0; s < NS; s++) sizes[s] = 9 + (size_t)(dn_rng_u64(r) % 40);
    write_shards(r, "many", sizes, NS, raw);
    char pattern[256], err[DN_ERR_LEN] = "";
    snprintf(pattern, sizeof pattern, "%s/many_*.bin", dir);
    ShuffleLoader sl;
    if (sl_init(&sl, pattern, B, T, VOCAB, 0, err, sizeof err) != 0) { CHECK(0, "sl_init: %s", err); return; }
    size_t W = 0;
    for (int s = 0; s < NS; s++) W += (sizes[s] - 1) / T;
    const int nb = (int)((2 * W + B - 1) / B);
    int ok = 0;
    for (int k = 0; k < nb; k++) ok += sl_next(&sl, err, sizeof err) == 0 && rows_match(&sl, raw);
    CHECK(sl.nwindows == W && ok == nb, "%d shards, %zu windows: %d of %d batches right over two epochs", NS, W, ok, nb);
    sl_free(&sl);
    for (int s = 0; s < NS; s++) free(raw[s]);
}

static void test_val_windows(DNRng *r) {
    enum { NS = 3, T = 16 };
    const size_t sizes[NS] = {300, 40, 133}, N = 473; /* shard 1 is [300, 340) of the stream */
    uint16_t *raw[NS];
    write_shards(r, "vw_val", sizes, NS, raw);
    uint16_t *all = xcalloc(N, sizeof *all);
    memcpy(all, raw[0], 300 * 2);
    memcpy(all + 300, raw[1], 40 * 2);
    memcpy(all + 340, raw[2], 133 * 2);
    char pattern[256], err[DN_ERR_LEN] = "";
    snprintf(pattern, sizeof pattern, "%s/vw_val_*.bin", dir);
    int inp[T], tgt[T], inp2[T], tgt2[T];
    /* n = 7 spread windows: start_i = i * floor((N - T - 1) / n) = 65 i */
    ValWindows v;
    if (vw_init(&v, pattern, T, 7, VOCAB, err, sizeof err) != 0) { CHECK(0, "vw_init: %s", err); return; }
    CHECK(v.ntok == N && v.n == 7 && v.stride == (N - T - 1) / 7 && v.stride == 65, "7 windows over %zu tokens, stride %zu",
          v.ntok, v.stride);
    int ok = 0, same = 0, crosses = 0;
    for (size_t i = 0; i < v.n; i++) {
        const size_t st = i * 65;
        int good = vw_read(&v, i, inp, tgt, err, sizeof err) == 0;
        for (int t = 0; good && t < T; t++) good = inp[t] == all[st + t] && tgt[t] == all[st + t + 1];
        ok += good;
        crosses += (st < 300 && st + T >= 300) || (st < 340 && st + T >= 340);
        vw_read(&v, i, inp2, tgt2, err, sizeof err); /* a second evaluation reads the same window */
        same += memcmp(inp, inp2, sizeof inp) == 0 && memcmp(tgt, tgt2, sizeof tgt) == 0;
    }
    CHECK(ok == 7 && crosses >= 1, "the 7 windows start at 65 i, one crossing a shard boundary (%d ok, %d crossing)", ok, crosses);
    CHECK(same == 7, "a second pass reads the same windows (%d of 7)", same);
    /* n windows over n strides: the last starts one stride (+ the rounding) before the last start possible */
    CHECK(6 * v.stride + T + 1 <= N && N - (6 * v.stride + T + 1) < v.stride + 7, "the last window ends %zu tokens before the end",
          N - (6 * v.stride + T + 1));
    CHECK(vw_read(&v, 7, inp, tgt, err, sizeof err) == -1, "window 7 of 7 refused: %s", err);
    vw_free(&v);
    /* n = 0: every non-overlapping window, the blocks of ./infer --eval -b T */
    if (vw_init(&v, pattern, T, 0, VOCAB, err, sizeof err) == 0) {
        ok = 0;
        for (size_t i = 0; i < v.n; i++) {
            int good = vw_read(&v, i, inp, tgt, err, sizeof err) == 0;
            for (int t = 0; good && t < T; t++) good = inp[t] == all[i * T + t] && tgt[t] == all[i * T + t + 1];
            ok += good;
        }
        CHECK(v.n == (N - 1) / T && ok == (int)v.n, "--val-windows 0: all %zu windows at multiples of T (%d right)", v.n, ok);
        vw_free(&v);
    } else {
        CHECK(0, "vw_init n=0: %s", err);
    }
    /* n = 1; the most windows that start apart (stride 1); one more refused */
    CHECK(vw_init(&v, pattern, T, 1, VOCAB, err, sizeof err) == 0 && v.n == 1 && vw_read(&v, 0, inp, tgt, err, sizeof err) == 0 &&
          inp[0] == all[0], "one window: the head");
    vw_free(&v);
    CHECK(vw_init(&v, pattern, T, (long)(N - T - 1), VOCAB, err, sizeof err) == 0 && v.stride == 1, "%zu windows, stride 1", N - T - 1);
    vw_free(&v);
    CHECK(vw_init(&v, pattern, T, (long)(N - T), VOCAB, err, sizeof err) == -1 && strstr(err, "distinct"),
          "too many windows refused: %s", err);
    /* a split smaller than one window; a token beyond the vocabulary */
    CHECK(vw_init(&v, pattern, 500, 4, VOCAB, err, sizeof err) == -1 && strstr(err, "fewer than one window") && !strchr(err, '\n'),
          "a split smaller than one window refused: %s", err);
    CHECK(vw_init(&v, pattern, T, 4, 100, err, sizeof err) == 0 && vw_read(&v, 0, inp, tgt, err, sizeof err) == -1 &&
          strstr(err, "vw_val_000000.bin") && strstr(err, "vocabulary"), "token >= vocab refused: %s", err);
    vw_free(&v);
    free(all);
    for (int s = 0; s < NS; s++) free(raw[s]);
}

static void test_shuffled_data(DNRng *r) {
    test_shuffle_epochs(r);
    test_shuffle_many_shards(r);
    test_val_windows(r);
}

int main(void) {
    if (!mkdtemp(dir)) { fprintf(stderr, "mkdtemp failed\n"); return 1; }
    DNRng r;
    dn_rng_seed(&r, 1234);
    test_round_trip(&r);
    test_corrupt(&r);
    test_loader(&r);
    test_odd_files(&r);
    test_cli();
    test_shuffled_data(&r);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    sh(cmd);
    return test_summary("test_data");
}
