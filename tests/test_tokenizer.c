/*
 * test_tokenizer.c -- the GPT-2 tokenizer against the reference ids in data/gpt2/cases.jsonl,
 * byte-exact round trips (random bytes, invalid UTF-8 included, and all of TinyShakespeare),
 * chunked encoding at tok_safe_cut points, the eot flag, refusal of broken vocab files (and of
 * FIFOs and directories in their place; quoted text escaped), and the ./tokenize -e / -d command
 * line. Run from the repo root (make test does).
 */
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "test.h"
#include "../src/tokenizer.h"

static char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = xcalloc((size_t)len + 1, 1);
    *n = fread(b, 1, (size_t)len, f);
    fclose(f);
    return b;
}

static void write_file(const char *path, const char *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { fprintf(stderr, "cannot write %s\n", path); exit(2); }
    fwrite(data, 1, n, f);
    fclose(f);
}

/* Encode, failing the test on an error. The caller frees. */
static int *enc(Tokenizer *t, const char *s, size_t n, int flags, size_t *nids) {
    char err[DN_ERR_LEN];
    int *ids = NULL;
    if (tok_encode(t, s, n, flags, &ids, nids, err, sizeof err) != 0) {
        CHECK(0, "tok_encode failed: %s", err);
        *nids = 0;
        return xcalloc(1, sizeof(int));
    }
    return ids;
}

/* decode(encode(s)) == s */
static int round_trips(Tokenizer *t, const char *s, size_t n) {
    size_t nids, outlen;
    int *ids = enc(t, s, n, 0, &nids);
    char *out, err[DN_ERR_LEN];
    int ok = tok_decode(t, ids, nids, &out, &outlen, err, sizeof err) == 0;
    ok = ok && outlen == n && memcmp(out, s, n) == 0;
    if (ok) free(out);
    free(ids);
    return ok;
}

/* Encoding s in pieces cut at tok_safe_cut points (near every `step` bytes) gives the same ids. */
static int chunked_same(Tokenizer *t, const char *s, size_t n, size_t step) {
    size_t nw, nc = 0, ncap = n + 16;
    int *whole = enc(t, s, n, 0, &nw), *cat = xcalloc(ncap, sizeof(int));
    size_t pos = 0;
    while (pos < n) {
        size_t end = pos + step < n ? pos + step : n;
        size_t cut = end < n ? tok_safe_cut(s + pos, end - pos) : end - pos;
        if (cut == 0) cut = n - pos;
        size_t k;
        int *ids = enc(t, s + pos, cut, 0, &k);
        memcpy(cat + nc, ids, k * sizeof(int));
        nc += k;
        free(ids);
        pos += cut;
    }
    int ok = nc == nw && memcmp(cat, whole, nw * sizeof(int)) == 0;
    free(whole);
    free(cat);
    return ok;
}

static void test_cases(Tokenizer *t) {
    FILE *f = fopen("data/gpt2/cases.jsonl", "rb");
    CHECK(f != NULL, "cannot open data/gpt2/cases.jsonl");
    if (!f) return;
    char line[1 << 16];
    int ncases = 0, nround = 0;
    while (fgets(line, sizeof line, f)) {
        cJSON *c = cJSON_Parse(line);
        cJSON *text = cJSON_GetObjectItem(c, "text"), *ids = cJSON_GetObjectItem(c, "ids");
        if (!cJSON_IsString(text) || !cJSON_IsArray(ids)) {
            CHECK(0, "cases.jsonl line %d: not a {text, ids} object", ncases + 1);
            cJSON_Delete(c);
            continue;
        }
        const char *s = text->valuestring;
        size_t n = strlen(s), nids;
        int *got = enc(t, s, n, 0, &nids);
        int want_n = cJSON_GetArraySize(ids), first = -1;
        for (int i = 0; i < want_n && first < 0; i++)
            if ((size_t)i >= nids || got[i] != cJSON_GetArrayItem(ids, i)->valueint) first = i;
        if (first < 0 && nids != (size_t)want_n) first = want_n;
        CHECK(first < 0, "case %d \"%.40s\": %zu ids, want %d; first mismatch at %d: got %d, want %d",
              ncases + 1, s, nids, want_n, first, (size_t)first < nids ? got[first] : -1,
              first < want_n ? cJSON_GetArrayItem(ids, first)->valueint : -1);
        nround += round_trips(t, s, n);
        free(got);
        cJSON_Delete(c);
        ncases++;
    }
    fclose(f);
    CHECK(ncases == 49, "cases.jsonl: %d cases, expected 49", ncases);
    CHECK(nround == ncases, "decode(encode(x)) == x for %d of %d cases", nround, ncases);
    printf("  ok   %d reference cases\n", ncases);
}

static void test_random_bytes(Tokenizer *t) {
    DNRng r;
    dn_rng_seed(&r, 42);
    static const char *frag[] = {"\xe6\x97\xa5", "\xe6\x97", "\xe6", "\xc3\xa9", "\xc3", "\xf0\x9f\x98\x80",
                                 "\xf0\x9f\x98", "\x80", "\xbf", "\xff", "\xfe", "\xed\xa0\x80", "\xc0\xaf",
                                 " ", "  ", "\n", "'s", "'", "a", "Z", "9", ".", "\t", "\0"};
    const int nfrag = (int)(sizeof frag / sizeof *frag);
    char buf[512];
    int ok = 0, chunk_ok = 0, total = 3000;
    for (int k = 0; k < total; k++) {
        size_t n = 0, want = dn_rng_u64(&r) % 200;
        int kind = k % 3;
        while (n < want) {
            if (kind == 0) {                 /* uniform random bytes */
                buf[n++] = (char)(dn_rng_u64(&r) & 0xFF);
            } else if (kind == 1) {          /* fragments of (in)valid UTF-8 and ASCII */
                const char *p = frag[dn_rng_u64(&r) % nfrag];
                size_t l = *p ? strlen(p) : 1;
                memcpy(buf + n, p, l);
                n += l;
            } else {                         /* ASCII text with a few high bytes */
                uint64_t x = dn_rng_u64(&r);
                buf[n++] = (x % 17 == 0) ? (char)(0x80 + x % 128) : (x % 5 == 0) ? ' ' : (char)('a' + x % 26);
            }
        }
        ok += round_trips(t, buf, n);
        chunk_ok += chunked_same(t, buf, n, 1 + dn_rng_u64(&r) % 40);
    }
    CHECK(ok == total, "decode(encode(x)) == x for %d of %d random byte strings", ok, total);
    CHECK(chunk_ok == total, "chunked encoding == whole encoding for %d of %d random byte strings", chunk_ok, total);
    printf("  ok   %d random byte strings round-trip\n", ok);
}

static void test_specific(Tokenizer *t) {
    size_t n, m;
    int *a, *b;
    /* a truncated character gets the tokens of its prefix: 日 = e6 97 a5 -> [33768, 98] */
    a = enc(t, "\xe6\x97\xa5", 3, 0, &n);
    b = enc(t, "\xe6\x97", 2, 0, &m);
    CHECK(n == 2 && a[0] == 33768 && a[1] == 98 && m == 1 && b[0] == 33768,
          "truncated UTF-8: got %zu ids (%d) for the prefix of [33768, 98]", m, m ? b[0] : -1);
    free(a);
    free(b);
    a = enc(t, "", 0, 0, &n);
    CHECK(n == 0, "empty text gives %zu ids", n);
    free(a);
    /* a long piece (heap path, > 128 bytes) and a long run of spaces */
    char big[3000];
    memset(big, 'a', sizeof big);
    CHECK(round_trips(t, big, sizeof big), "3000 x 'a' round-trips");
    memset(big, ' ', sizeof big);
    big[sizeof big - 1] = 'x';
    CHECK(round_trips(t, big, sizeof big), "2999 spaces + x round-trip");

    /* <|endoftext|>: plain text by default, the eot id with TOK_ALLOW_EOT */
    const char *s = "a<|endoftext|>b";
    a = enc(t, s, strlen(s), 0, &n);
    int has = 0;
    for (size_t i = 0; i < n; i++) has |= a[i] == TOK_GPT2_EOT;
    CHECK(!has && n > 3, "without TOK_ALLOW_EOT the text <|endoftext|> is not id 50256");
    free(a);
    a = enc(t, s, strlen(s), TOK_ALLOW_EOT, &n);
    CHECK(n == 3 && a[0] == 64 && a[1] == TOK_GPT2_EOT && a[2] == 65, "TOK_ALLOW_EOT: a<|endoftext|>b -> "
          "%zu ids [%d %d %d], want [64 50256 65]", n, n > 0 ? a[0] : -1, n > 1 ? a[1] : -1, n > 2 ? a[2] : -1);
    free(a);
    a = enc(t, "<|endoftext|><|endoftext|>", 26, TOK_ALLOW_EOT, &n);
    CHECK(n == 2 && a[0] == TOK_GPT2_EOT && a[1] == TOK_GPT2_EOT, "two eot texts -> two eot ids");
    free(a);

    /* decode: eot as its text, out-of-range ids refused */
    int ids[3] = {15496, TOK_GPT2_EOT, 995};
    char *out, err[DN_ERR_LEN] = "";
    size_t outlen;
    int rc = tok_decode(t, ids, 3, &out, &outlen, err, sizeof err);
    CHECK(rc == 0 && outlen == 24 && memcmp(out, "Hello<|endoftext|> world", 24) == 0, "decode with eot");
    if (rc == 0) free(out);
    int badids[2][2] = {{15496, 50257}, {-1, 995}};
    for (int i = 0; i < 2; i++) {
        err[0] = 0;
        rc = tok_decode(t, badids[i], 2, &out, &outlen, err, sizeof err);
        CHECK(rc == -1 && strstr(err, "out of range"), "decode of id %d refused: %s", badids[i][i ? 0 : 1], err);
    }
    size_t len;
    CHECK(tok_token(t, 50257, &len) == NULL && tok_token(t, -1, &len) == NULL, "tok_token out of range is NULL");
    const char *p = tok_token(t, 15496, &len);
    CHECK(p && len == 5 && memcmp(p, "Hello", 5) == 0, "tok_token(15496) is Hello");
}

static void test_tinyshakespeare(Tokenizer *t) {
    size_t n, nids;
    char *text = read_file("data/tinyshakespeare/input.txt", &n);
    CHECK(text != NULL && n == 1115394, "data/tinyshakespeare/input.txt: %zu bytes, want 1115394", n);
    if (!text) return;
    int *ids = enc(t, text, n, 0, &nids);
    CHECK(nids == 338025, "TinyShakespeare: %zu tokens, want 338025", nids);
    CHECK(nids > 3 && ids[0] == 5962 && ids[1] == 22307 && ids[2] == 25, "TinyShakespeare starts "
          "First Citizen: = [5962 22307 25], got [%d %d %d]", ids[0], ids[1], ids[2]);
    char *out, err[DN_ERR_LEN];
    size_t outlen;
    int rc = tok_decode(t, ids, nids, &out, &outlen, err, sizeof err);
    CHECK(rc == 0 && outlen == n && memcmp(out, text, n) == 0, "TinyShakespeare decode(encode(x)) == x");
    if (rc == 0) free(out);
    CHECK(chunked_same(t, text, n, 65536), "TinyShakespeare chunked at safe cuts == whole");
    Tokenizer fresh;  /* a cold cache gives the same ids as a warm one */
    if (tok_load(&fresh, NULL, err, sizeof err) == 0) {
        size_t n2;
        int *ids2 = enc(&fresh, text, n, 0, &n2);
        CHECK(n2 == nids && memcmp(ids, ids2, nids * sizeof(int)) == 0, "cold and warm cache agree");
        free(ids2);
        tok_free(&fresh);
    }
    free(ids);
    free(text);
}

/* Copy the vocab files into dir, with encoder.json cut to `cut` bytes (0: whole) and line
 * `badline` of vocab.bpe replaced by `repl` (NULL: none); returns tok_load's result. */
static int load_broken(const char *dir, size_t cut, int badline, const char *repl, int drop_lines,
                       char *err, size_t errlen) {
    size_t ne, nv;
    char *e = read_file("data/gpt2/encoder.json", &ne), *v = read_file("data/gpt2/vocab.bpe", &nv);
    char path[512];
    snprintf(path, sizeof path, "%s/encoder.json", dir);
    write_file(path, e, cut ? cut : ne);
    snprintf(path, sizeof path, "%s/vocab.bpe", dir);
    FILE *f = fopen(path, "wb");
    int lineno = 1, nlines = 0;
    for (char *p = v, *q; p < v + nv; p = q + 1, lineno++) {
        q = memchr(p, '\n', (size_t)(v + nv - p));
        if (!q) q = v + nv;
        nlines++;
        if (drop_lines && lineno > 50001 - drop_lines) continue;
        if (lineno == badline) fprintf(f, "%s\n", repl);
        else fwrite(p, 1, (size_t)(q - p) + (q < v + nv), f);
    }
    fclose(f);
    free(e);
    free(v);
    Tokenizer t;
    int rc = tok_load(&t, dir, err, errlen);
    if (rc == 0) tok_free(&t);
    return rc;
}

static void test_broken_vocab(void) {
    char dir[] = "/tmp/test_tokenizer_XXXXXX";
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp failed"); return; }
    char err[DN_ERR_LEN];
    int rc;
    err[0] = 0;
    rc = load_broken(dir, 0, 0, NULL, 0, err, sizeof err);
    CHECK(rc == 0, "an intact copy loads: %s", err);
    struct { size_t cut; int line; const char *repl; int drop; const char *file, *what; } bad[] = {
        {500000, 0, NULL, 0, "encoder.json", "encoder.json cut in half"},
        {100, 0, NULL, 0, "encoder.json", "encoder.json cut to 100 bytes"},
        {0, 1234, "Ġt he extra", 0, "vocab.bpe", "vocab.bpe line with three tokens"},
        {0, 1234, "Ġt", 0, "vocab.bpe", "vocab.bpe line with one token"},
        {0, 1234, "Ġqqqqqqzz xyzzy", 0, "vocab.bpe", "vocab.bpe line with unknown tokens"},
        {0, 1234, "", 0, "vocab.bpe", "vocab.bpe blank line"},
        {0, 1, "version: 0.2", 0, "vocab.bpe", "vocab.bpe without the #version header"},
        {0, 0, NULL, 10, "vocab.bpe", "vocab.bpe cut short by 10 lines"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        rc = load_broken(dir, bad[i].cut, bad[i].line, bad[i].repl, bad[i].drop, err, sizeof err);
        CHECK(rc == -1 && strstr(err, bad[i].file) && !strchr(err, '\n'), "%s refused: %s", bad[i].what, err);
        printf("  ok   %s refused: %s\n", bad[i].what, err);
    }
    Tokenizer t;
    err[0] = 0;
    rc = tok_load(&t, "/nonexistent/dir", err, sizeof err);
    CHECK(rc == -1 && strstr(err, "/nonexistent/dir/encoder.json"), "a missing directory refused: %s", err);
    char path[512];
    snprintf(path, sizeof path, "%s/encoder.json", dir);
    remove(path);
    snprintf(path, sizeof path, "%s/vocab.bpe", dir);
    remove(path);
    rmdir(dir);
}

/* Vocabulary files that are FIFOs or directories are refused at once (alarm() turns a hang into a
 * failure); text quoted from the files in a message is escaped, so the message is one line. */
static void test_odd_vocab(void) {
    char dir[] = "/tmp/test_tokenizer_odd_XXXXXX";
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp failed"); return; }
    char enc_path[512], bpe_path[512], err[DN_ERR_LEN];
    snprintf(enc_path, sizeof enc_path, "%s/encoder.json", dir);
    snprintf(bpe_path, sizeof bpe_path, "%s/vocab.bpe", dir);
    size_t ne, nv;
    char *e = read_file("data/gpt2/encoder.json", &ne), *v = read_file("data/gpt2/vocab.bpe", &nv);
    if (!e || !v) { CHECK(0, "cannot read data/gpt2"); free(e); free(v); return; }
    Tokenizer t;
    test_watchdog("test_tokenizer", 20);
    CHECK(mkfifo(enc_path, 0600) == 0, "mkfifo %s", enc_path);
    write_file(bpe_path, v, nv);
    err[0] = 0;
    CHECK(tok_load(&t, dir, err, sizeof err) == -1 && strstr(err, "encoder.json: is a FIFO"), "encoder.json a FIFO: %s", err);
    remove(enc_path);
    write_file(enc_path, e, ne);
    remove(bpe_path);
    CHECK(mkfifo(bpe_path, 0600) == 0, "mkfifo %s", bpe_path);
    err[0] = 0;
    CHECK(tok_load(&t, dir, err, sizeof err) == -1 && strstr(err, "vocab.bpe: is a FIFO"), "vocab.bpe a FIFO: %s", err);
    test_watchdog_off();
    remove(bpe_path);
    mkdir(bpe_path, 0700);
    err[0] = 0;
    CHECK(tok_load(&t, dir, err, sizeof err) == -1 && strstr(err, "vocab.bpe: is a directory"), "vocab.bpe a directory: %s", err);
    rmdir(bpe_path);
    write_file(bpe_path, v, nv);
    /* encoder.json whose first token holds a newline and has a bad id */
    static const char first[] = "{\"!\": 0,";
    CHECK(ne > sizeof first && !memcmp(e, first, sizeof first - 1), "encoder.json starts with %s", first);
    FILE *f = fopen(enc_path, "wb");
    fputs("{\"a\\nb\": -1,", f);
    fwrite(e + sizeof first - 1, 1, ne - (sizeof first - 1), f);
    fclose(f);
    err[0] = 0;
    CHECK(tok_load(&t, dir, err, sizeof err) == -1 && strstr(err, "token \"a\\nb\" has id") && !strchr(err, '\n'),
          "a token with a newline is escaped in the message: %s", err);
    printf("  ok   %s\n", err);
    write_file(enc_path, e, ne);
    /* a merge rule of unknown tokens with a quote and a backslash: quoted escaped */
    f = fopen(bpe_path, "wb");
    char *nl = memchr(v, '\n', nv);
    fwrite(v, 1, (size_t)(nl - v) + 1, f);
    fputs("\"q\\ zz\n", f);
    fwrite(nl + 1, 1, nv - (size_t)(nl + 1 - v), f);
    fclose(f);
    err[0] = 0;
    CHECK(tok_load(&t, dir, err, sizeof err) == -1 && strstr(err, "line 2: \"\\\"q\\\\ zz\"") && !strchr(err, '\n'),
          "a merge line is quoted escaped: %s", err);
    printf("  ok   %s\n", err);
    free(e);
    free(v);
    remove(enc_path);
    remove(bpe_path);
    rmdir(dir);
}

/* Run a shell command; returns its exit status. */
static int sh(const char *cmd) {
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void test_cli(Tokenizer *t) {
    if (access("./tokenize", X_OK) != 0) { CHECK(0, "./tokenize not built (make tokenize)"); return; }
    char dir[] = "/tmp/test_tokenize_cli_XXXXXX";
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp failed"); return; }
    char in[256], cmd[1024];
    snprintf(in, sizeof in, "%s/in.txt", dir);
    const char text[] = "Hello world! caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac\n\tdon't\xff\xfe <|endoftext|>  end\n";
    write_file(in, text, sizeof text - 1);
    /* -e: read back the ids through popen and compare with the library */
    snprintf(cmd, sizeof cmd, "./tokenize -e < %s", in);
    FILE *p = popen(cmd, "r");
    int got[256], ng = 0;
    while (ng < 256 && fscanf(p, "%d", &got[ng]) == 1) ng++;
    int st = pclose(p);
    size_t n;
    int *want = enc(t, text, sizeof text - 1, 0, &n);
    CHECK(st == 0 && (size_t)ng == n && memcmp(got, want, n * sizeof(int)) == 0, "./tokenize -e matches tok_encode");
    free(want);
    /* -e | -d round trip */
    snprintf(cmd, sizeof cmd, "./tokenize -e < %s | ./tokenize -d > %s/out.txt && cmp -s %s %s/out.txt", in, dir, in, dir);
    CHECK(sh(cmd) == 0, "./tokenize -e | ./tokenize -d gives back the bytes");
    snprintf(cmd, sizeof cmd, "./tokenize --allow-eot -e < %s | grep -qw 50256", in);
    CHECK(sh(cmd) == 0, "./tokenize --allow-eot -e makes 50256");
    snprintf(cmd, sizeof cmd, "./tokenize -e < %s | grep -qw 50256", in);
    CHECK(sh(cmd) != 0, "./tokenize -e without --allow-eot does not make 50256");
    /* bad usage and bad input exit non-zero */
    const char *bad[] = {"./tokenize", "./tokenize -x", "./tokenize -e -d", "./tokenize -o", "./tokenize -o x",
                         "./tokenize -e extra_arg", "echo 50257 | ./tokenize -d", "echo -1 | ./tokenize -d",
                         "echo 12 abc | ./tokenize -d", "echo 1.5 | ./tokenize -d", "./tokenize -V /nonexistent -e"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(cmd, sizeof cmd, "%s < /dev/null > /dev/null 2>&1", bad[i]);
        if (strchr(bad[i], '|')) snprintf(cmd, sizeof cmd, "%s > /dev/null 2>&1", bad[i]);
        CHECK(sh(cmd) != 0, "'%s' exits non-zero", bad[i]);
    }
    CHECK(sh("./tokenize -h > /dev/null") == 0, "./tokenize -h exits 0");
    CHECK(sh("printf '12 ab\\001c' | ./tokenize -d 2>&1 | grep -qF \"input item 2 ('ab\\x01c')\"") == 0,
          "./tokenize -d quotes a bad item escaped (a control character as \\x01)");
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    sh(cmd);
}

int main(void) {
    Tokenizer t;
    char err[DN_ERR_LEN];
    if (tok_load(&t, NULL, err, sizeof err) != 0) {
        CHECK(0, "tok_load: %s", err);
        return test_summary("test_tokenizer");
    }
    CHECK(t.vocab_size == 50257 && t.eot == 50256, "vocab %d, eot %d", t.vocab_size, t.eot);
    test_cases(&t);
    test_specific(&t);
    test_random_bytes(&t);
    test_tinyshakespeare(&t);
    test_broken_vocab();
    test_odd_vocab();
    test_cli(&t);
    tok_free(&t);
    return test_summary("test_tokenizer");
}
