/*
 * tokenize.c -- the command-line GPT-2 tokenizer: text -> ids, ids -> text, text files -> shards.
 *
 *   ./tokenize -e < text.txt            prints the ids as one line of space-separated integers
 *   ./tokenize -d < ids.txt             prints the text of whitespace-separated ids
 *   ./tokenize -o data/ts/ts input.txt  writes data/ts/ts_val.bin and data/ts/ts_train.bin
 *
 * Shards (-o): the input files are documents, each encoded as <|endoftext|> followed by its text,
 * concatenated in the order given. The first --val-tokens tokens (default 32768) go to NAME_val.bin,
 * the rest to NAME_train.bin, or to NAME_train_000000.bin, NAME_train_000001.bin, ... once there
 * are more than --shard-size tokens (default 100M). Files are read in blocks and encoded in chunks
 * cut where the tokenizer says the cut changes nothing (tok_safe_cut), so the ids are exactly those
 * of encoding each file whole, and memory stays bounded by one shard. An empty input file (0 bytes)
 * is no document: it adds no tokens, not even the <|endoftext|>, and a note says so. Inputs must
 * be regular files: a FIFO (which would block) or a directory is refused with one line.
 */
#include <errno.h>
#include <getopt.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "src/data.h"
#include "model.h"
#include "src/tokenizer.h"

#define BLOCK (8u << 20)  /* bytes read at a time with -o */

typedef struct {
    char mode;          /* 'e' encode, 'd' decode, 'o' shards */
    const char *out;    /* -o DIR/NAME */
    const char *vocab;  /* -V DIR */
    long val_tokens, shard_size;
    int allow_eot;
    char **inputs;
    int ninputs;
} Args;

static void usage(FILE *f) {
    fprintf(f,
        "usage: tokenize -e | -d | -o DIR/NAME FILE... [options]\n"
        "GPT-2 byte-level BPE tokenizer.\n"
        "  -e, --encode          read text on stdin, print its ids on one line\n"
        "  -d, --decode          read whitespace-separated ids on stdin, print the text\n"
        "  -o, --output DIR/NAME encode the FILEs (one document each, starting with <|endoftext|> = 50256)\n"
        "                        into DIR/NAME_val.bin and DIR/NAME_train.bin (or _train_000000.bin, ...);\n"
        "                        FILEs must be regular files (not pipes or directories); an empty FILE\n"
        "                        (0 bytes) is skipped with a note: it adds no tokens, not even 50256\n"
        "      --val-tokens N    tokens for NAME_val.bin, taken from the start (default 32768; 0: none)\n"
        "      --shard-size N    most tokens per train shard (default 100000000)\n"
        "      --allow-eot       with -e: the text <|endoftext|> becomes id 50256 (default: plain text)\n"
        "  -V, --vocab DIR       directory with encoder.json and vocab.bpe (default %s)\n"
        "  -h, --help            this help\n"
        "examples:\n"
        "  echo 'Hello world' | ./tokenize -e        # 15496 995 198\n"
        "  echo '15496 995' | ./tokenize -d          # Hello world\n"
        "  ./tokenize -o data/tinyshakespeare/tinyshakespeare data/tinyshakespeare/input.txt\n",
        TOK_DEFAULT_DIR);
}

static int parse_long(const char *s, long lo, long hi, long *v) {
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (errno || end == s || *end || x < lo || x > hi) return -1;
    *v = x;
    return 0;
}

/* 0: run, 1: help shown, -1: bad usage (message printed) */
static int parse_args(int argc, char **argv, Args *a) {
    static const struct option opts[] = {
        {"encode", no_argument, 0, 'e'},      {"decode", no_argument, 0, 'd'},
        {"output", required_argument, 0, 'o'}, {"vocab", required_argument, 0, 'V'},
        {"val-tokens", required_argument, 0, 1}, {"shard-size", required_argument, 0, 2},
        {"allow-eot", no_argument, 0, 3},     {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    *a = (Args){.vocab = TOK_DEFAULT_DIR, .val_tokens = 32768, .shard_size = 100000000};
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":edo:V:h", opts, NULL)) != -1) {
        char m = c == 'e' || c == 'd' || c == 'o' ? (char)c : 0;
        if (m && a->mode && a->mode != m) { fprintf(stderr, "tokenize: choose one of -e, -d, -o\n"); return -1; }
        if (m) a->mode = m;
        if (c == 'o') a->out = optarg;
        else if (c == 'V') a->vocab = optarg;
        else if (c == 3) a->allow_eot = 1;
        else if (c == 'h') { usage(stdout); return 1; }
        else if (c == 1 && parse_long(optarg, 0, SHARD_MAX_TOKENS, &a->val_tokens) != 0) {
            fprintf(stderr, "tokenize: --val-tokens: '%s' is not a count in [0, %ld]\n", optarg, SHARD_MAX_TOKENS);
            return -1;
        } else if (c == 2 && parse_long(optarg, 1, SHARD_MAX_TOKENS, &a->shard_size) != 0) {
            fprintf(stderr, "tokenize: --shard-size: '%s' is not a count in [1, %ld]\n", optarg, SHARD_MAX_TOKENS);
            return -1;
        } else if (c == ':') {
            fprintf(stderr, "tokenize: %s needs an argument\n", argv[optind - 1]);
            return -1;
        } else if (c == '?') {
            fprintf(stderr, "tokenize: unknown option %s\n", argv[optind - 1]);
            return -1;
        }
    }
    a->inputs = argv + optind;
    a->ninputs = argc - optind;
    if (!a->mode) { fprintf(stderr, "tokenize: choose one of -e, -d, -o (see -h)\n"); return -1; }
    if (a->mode == 'o' && a->ninputs == 0) { fprintf(stderr, "tokenize: -o needs input files\n"); return -1; }
    if (a->mode != 'o' && a->ninputs > 0) {
        fprintf(stderr, "tokenize: -%c reads stdin; unexpected argument '%s'\n", a->mode, a->inputs[0]);
        return -1;
    }
    return 0;
}

static char *read_all(FILE *f, size_t *n) {
    size_t cap = 1 << 16, len = 0;
    char *b = malloc(cap + 1);
    while (b) {
        len += fread(b + len, 1, cap - len, f);
        if (len < cap) break;
        char *nb = realloc(b, 2 * cap + 1);
        if (!nb) free(b);
        b = nb;
        cap *= 2;
    }
    if (!b || ferror(f)) { free(b); return NULL; }
    b[len] = 0;
    *n = len;
    return b;
}

/* ----------------------------------------------------------------------------------------------
 * -e and -d */

static int run_encode(Tokenizer *tok, int allow_eot) {
    char err[DN_ERR_LEN];
    size_t n, nids;
    int *ids;
    char *text = read_all(stdin, &n);
    if (!text) { fprintf(stderr, "tokenize: cannot read stdin\n"); return 1; }
    if (tok_encode(tok, text, n, allow_eot ? TOK_ALLOW_EOT : 0, &ids, &nids, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        free(text);
        return 1;
    }
    for (size_t i = 0; i < nids; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    free(text);
    free(ids);
    return fflush(stdout) == 0 ? 0 : 1;
}

static int run_decode(Tokenizer *tok) {
    char err[DN_ERR_LEN];
    size_t n, nids = 0, cap = 1024;
    char *text = read_all(stdin, &n), *p = text;
    int *ids = malloc(cap * sizeof *ids);
    if (!text || !ids) { fprintf(stderr, "tokenize: cannot read stdin\n"); free(text); free(ids); return 1; }
    int rc = 1;
    for (;;) {
        while (*p == ' ' || (*p >= '\t' && *p <= '\r')) p++;
        if (p == text + n) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < -1000000000L || v > 1000000000L ||
            !(*end == 0 || *end == ' ' || (*end >= '\t' && *end <= '\r'))) {
            int len = 0;
            while (len < 20 && p[len] && p[len] != ' ' && !(p[len] >= '\t' && p[len] <= '\r')) len++;
            char e[DN_ESC_LEN];
            fprintf(stderr, "tokenize: input item %zu ('%s') is not an integer id\n", nids + 1, dn_escape(e, sizeof e, p, (size_t)len));
            goto done;
        }
        if (nids == cap) {
            int *a = realloc(ids, 2 * cap * sizeof *a);
            if (!a) { fprintf(stderr, "tokenize: out of memory\n"); goto done; }
            ids = a;
            cap *= 2;
        }
        ids[nids++] = (int)v;
        p = end;
    }
    char *out;
    size_t outlen;
    if (tok_decode(tok, ids, nids, &out, &outlen, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); goto done; }
    rc = (fwrite(out, 1, outlen, stdout) == outlen && fflush(stdout) == 0) ? 0 : 1;
    free(out);
done:
    free(text);
    free(ids);
    return rc;
}

/* ----------------------------------------------------------------------------------------------
 * -o: the shard writer. Tokens go to the val buffer until it holds val_tokens, then to the train
 * buffer, which is written out as a numbered shard whenever it is full and more tokens come. */

typedef struct {
    const Args *a;
    uint16_t *val, *train;
    size_t nval, ntrain;
    int train_written;           /* numbered train shards written so far */
    size_t total_tokens, total_bytes, done_bytes;
    double t0, last_report;
} Shards;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int write_named(const Args *a, const char *suffix, int num, const uint16_t *t, size_t n) {
    char path[DN_PATH_MAX], err[DN_ERR_LEN];
    int bad = num >= 0 ? dn_path(path, sizeof path, err, sizeof err, "%s_%s_%06d.bin", a->out, suffix, num)
                       : dn_path(path, sizeof path, err, sizeof err, "%s_%s.bin", a->out, suffix);
    if (bad || shard_write(path, t, n, err, sizeof err) != 0) { fprintf(stderr, "tokenize: %s\n", err); return -1; }
    fprintf(stderr, "tokenize: wrote %s (%zu tokens)\n", path, n);
    return 0;
}

static int shards_push(Shards *s, const int *ids, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if ((size_t)s->a->val_tokens > s->nval) { s->val[s->nval++] = (uint16_t)ids[i]; continue; }
        if (s->ntrain == (size_t)s->a->shard_size) {
            if (write_named(s->a, "train", s->train_written++, s->train, s->ntrain) != 0) return -1;
            s->ntrain = 0;
        }
        s->train[s->ntrain++] = (uint16_t)ids[i];
    }
    s->total_tokens += n;
    return 0;
}

/* A progress line every 5 s (so only long inputs get them), and one at the end. */
static void report(Shards *s, int last) {
    double t = now();
    if (!last && t - s->last_report < 5.0) return;
    s->last_report = t;
    fprintf(stderr, "tokenize: %s%.1f of %.1f MB, %zu tokens, %.1f MB/s\n", last ? "done: " : "",
            s->done_bytes / 1e6, s->total_bytes / 1e6, s->total_tokens, s->done_bytes / 1e6 / (t - s->t0 + 1e-9));
}

/* Encode one file as a document: eot, then its text, read in blocks and cut at safe points. An
 * empty file adds nothing (not even the eot). */
static int encode_file(Tokenizer *tok, Shards *s, const char *path) {
    char err[DN_ERR_LEN];
    FILE *f = dn_open_regular(path, err, sizeof err);
    if (!f) { fprintf(stderr, "tokenize: %s\n", err); return -1; }
    size_t cap = BLOCK, len = 0;
    char *buf = malloc(cap);
    int eot = tok->eot, rc = -1, started = 0;
    if (!buf) { fprintf(stderr, "tokenize: out of memory\n"); goto done; }
    for (;;) {
        len += fread(buf + len, 1, cap - len, f);
        if (ferror(f)) { fprintf(stderr, "tokenize: %s: read error\n", path); goto done; }
        int eof = len < cap;  /* a regular file: a short read is its end */
        if (!started) {
            if (eof && len == 0) {
                fprintf(stderr, "tokenize: note: %s is empty: no document, no tokens\n", path);
                break;
            }
            if (shards_push(s, &eot, 1) != 0) goto done;
            started = 1;
        }
        if (eof && len == 0) break;
        size_t cut = eof ? len : tok_safe_cut(buf, len);
        if (cut == 0) {  /* no safe cut in the whole buffer: read more */
            char *nb = realloc(buf, 2 * cap);
            if (!nb) { fprintf(stderr, "tokenize: out of memory\n"); goto done; }
            buf = nb;
            cap *= 2;
            continue;
        }
        int *ids;
        size_t nids;
        if (tok_encode(tok, buf, cut, 0, &ids, &nids, err, sizeof err) != 0) {
            fprintf(stderr, "%s: %s\n", path, err);
            goto done;
        }
        int prc = shards_push(s, ids, nids);
        free(ids);
        if (prc != 0) goto done;
        memmove(buf, buf + cut, len - cut);
        len -= cut;
        s->done_bytes += cut;
        report(s, 0);
        if (eof) break;
    }
    rc = 0;
done:
    free(buf);
    fclose(f);
    return rc;
}

/* Warn about NAME_train*.bin files that this run did not write (from an earlier run). */
static void warn_stale(const Args *a, int numbered, int nwritten) {
    char pat[DN_PATH_MAX], mine[DN_PATH_MAX];
    if (dn_path(pat, sizeof pat, NULL, 0, "%s_train*.bin", a->out)) return;
    glob_t g;
    if (glob(pat, 0, NULL, &g) != 0) return;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        int ours = 0;
        for (int k = numbered ? 0 : -1; k < (numbered ? nwritten : 0) && !ours; k++) {
            if (k >= 0) snprintf(mine, sizeof mine, "%s_train_%06d.bin", a->out, k);
            else snprintf(mine, sizeof mine, "%s_train.bin", a->out);
            ours = strcmp(mine, g.gl_pathv[i]) == 0;
        }
        char e[DN_PATH_MAX];  /* a name from the directory: escaped, so the warning is one line */
        if (!ours) fprintf(stderr, "tokenize: warning: %s is from an earlier run; remove it\n", dn_escape(e, sizeof e, g.gl_pathv[i], (size_t)-1));
    }
    globfree(&g);
}

static int run_shards(Tokenizer *tok, const Args *a) {
    Shards s = {.a = a};
    s.val = malloc((a->val_tokens ? (size_t)a->val_tokens : 1) * sizeof *s.val);
    s.train = malloc((size_t)a->shard_size * sizeof *s.train);
    s.t0 = s.last_report = now();
    int rc = 1;
    if (!s.val || !s.train) { fprintf(stderr, "tokenize: out of memory for one shard\n"); goto done; }
    for (int i = 0; i < a->ninputs; i++) {
        struct stat st;
        if (stat(a->inputs[i], &st) == 0) s.total_bytes += (size_t)st.st_size;
    }
    for (int i = 0; i < a->ninputs; i++)
        if (encode_file(tok, &s, a->inputs[i]) != 0) goto done;
    report(&s, 1);
    if (s.total_tokens == 0) {
        fprintf(stderr, "tokenize: the input files are all empty: no tokens to write\n");
        goto done;
    }
    if (s.ntrain == 0) {
        fprintf(stderr, "tokenize: only %zu tokens: nothing left for training after --val-tokens %ld\n",
                s.total_tokens, a->val_tokens);
        goto done;
    }
    if (a->val_tokens > 0 && write_named(a, "val", -1, s.val, s.nval) != 0) goto done;
    int numbered = s.train_written > 0;
    if (write_named(a, "train", numbered ? s.train_written++ : -1, s.train, s.ntrain) != 0) goto done;
    warn_stale(a, numbered, s.train_written);
    rc = 0;
done:
    free(s.val);
    free(s.train);
    return rc;
}

int main(int argc, char **argv) {
    Args a;
    int prc = parse_args(argc, argv, &a);
    if (prc != 0) return prc > 0 ? 0 : 2;
    char err[DN_ERR_LEN];
    Tokenizer tok;
    if (tok_load(&tok, a.vocab, err, sizeof err) != 0) {
        fprintf(stderr, "tokenize: cannot load the GPT-2 vocabulary: %s\n", err);
        return 1;
    }
    int rc = a.mode == 'e' ? run_encode(&tok, a.allow_eot)
           : a.mode == 'd' ? run_decode(&tok)
           : run_shards(&tok, &a);
    tok_free(&tok);
    return rc;
}
