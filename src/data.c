/*
 * data.c -- token shards and the data loader (see data.h for the format and the batch layout).
 *
 * Messages name shards escaped (dn_escape): the loader's names come from a glob, and a file name
 * may hold any byte but '/' and NUL, a newline included; every message stays one line.
 */
#include "data.h"
#include "mask.h"
#include "../model.h"

#include <errno.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <fcntl.h>

/* Room for a shard's name in a message; longer names are cut with "..." (DN_ERR_LEN is 512). */
#define NAME_ESC_LEN 256
#define ESC(buf, s) dn_escape(buf, sizeof buf, s, (size_t)-1)

/* ----------------------------------------------------------------------------------------------
 * Shards */

int shard_write(const char *path, const uint16_t *tokens, size_t n, char *err, size_t errlen) {
    char e[NAME_ESC_LEN];
    if (n > (size_t)SHARD_MAX_TOKENS) {
        dn_seterr(err, errlen, "%s: %zu tokens, more than a shard holds (%ld)", ESC(e, path), n, SHARD_MAX_TOKENS);
        return -1;
    }
    DNAtomic a;
    if (dn_atomic_begin(&a, path, err, errlen)) return -1;
    int32_t header[SHARD_HEADER_INTS] = {0};
    header[0] = SHARD_MAGIC;
    header[1] = SHARD_VERSION;
    header[2] = (int32_t)n;
    if (fwrite(header, sizeof header, 1, a.f) != 1 || (n > 0 && fwrite(tokens, sizeof *tokens, n, a.f) != n)) {
        dn_seterr(err, errlen, "%s: write failed: %s", ESC(e, path), strerror(errno));
        dn_atomic_abort(&a);
        return -1;
    }
    return dn_atomic_commit(&a, err, errlen);
}

/* Open path and check its header against its size; the stream is left after the header. Only a
 * regular file is opened (a FIFO would block, a directory reads as garbage). */
static FILE *open_shard(const char *path, size_t *ntok, char *err, size_t errlen) {
    char e[NAME_ESC_LEN], why[DN_ERR_LEN];
    FILE *f = dn_open_regular(path, why, sizeof why);
    if (!f) {  /* its message names the path as it is: escape the whole line */
        char line[DN_ERR_LEN];
        dn_seterr(err, errlen, "%s", dn_escape(line, sizeof line, why, (size_t)-1));
        return NULL;
    }
    struct stat st;
    int32_t h[SHARD_HEADER_INTS];
    if (fstat(fileno(f), &st) != 0) {
        dn_seterr(err, errlen, "%s: cannot stat: %s", ESC(e, path), strerror(errno));
    } else if ((size_t)st.st_size < SHARD_HEADER_BYTES || fread(h, sizeof h, 1, f) != 1) {
        dn_seterr(err, errlen, "%s: %lld bytes, too small for the %d-byte shard header", ESC(e, path),
               (long long)st.st_size, SHARD_HEADER_BYTES);
    } else if (h[0] == MASK_MAGIC) {
        dn_seterr(err, errlen, "%s: a loss mask, not a token shard: make the pattern match only the shards (end it in .bin)", ESC(e, path));
    } else if (h[0] != SHARD_MAGIC) {
        dn_seterr(err, errlen, "%s: not a token shard (magic %d, expected %d)", ESC(e, path), h[0], SHARD_MAGIC);
    } else if (h[1] != SHARD_VERSION) {
        dn_seterr(err, errlen, "%s: shard version %d, this code reads version %d (re-run tokenize)", ESC(e, path),
               h[1], SHARD_VERSION);
    } else if (h[2] < 0 || (long long)st.st_size != SHARD_HEADER_BYTES + 2LL * h[2]) {
        dn_seterr(err, errlen, "%s: the header says %d tokens (%lld bytes) but the file has %lld bytes",
               ESC(e, path), h[2], SHARD_HEADER_BYTES + 2LL * h[2], (long long)st.st_size);
    } else {
        *ntok = (size_t)h[2];
        return f;
    }
    fclose(f);
    return NULL;
}

int shard_read_header(const char *path, size_t *ntok, char *err, size_t errlen) {
    FILE *f = open_shard(path, ntok, err, errlen);
    if (!f) return -1;
    fclose(f);
    return 0;
}

int shard_read(const char *path, int vocab_size, uint16_t **tokens, size_t *ntok,
               char *err, size_t errlen) {
    char e[NAME_ESC_LEN];
    size_t n;
    FILE *f = open_shard(path, &n, err, errlen);
    if (!f) return -1;
    uint16_t *t = malloc(n ? n * sizeof *t : 1);
    if (!t) {
        dn_seterr(err, errlen, "%s: out of memory for %zu tokens", ESC(e, path), n);
        fclose(f);
        return -1;
    }
    size_t got = fread(t, sizeof *t, n, f);
    if (got != n) {  /* the size was checked: cut short since, or an I/O error */
        dn_seterr(err, errlen, "%s: %s after %zu of %zu tokens", ESC(e, path),
                  ferror(f) ? "read error" : "cut short while reading", got, n);
        fclose(f);
        free(t);
        return -1;
    }
    fclose(f);
    for (size_t i = 0; i < n; i++) {
        if (t[i] >= vocab_size) {
            dn_seterr(err, errlen, "%s: token %u at position %zu is not below the vocabulary size %d",
                   ESC(e, path), t[i], i, vocab_size);
            free(t);
            return -1;
        }
    }
    *tokens = t;
    *ntok = n;
    return 0;
}

/* ----------------------------------------------------------------------------------------------
 * Data loader */

/* The shards matching pattern, in glob's (sorted) order, into files[nfiles] (allocated here) with
 * each one's token count from its header in ntok[]; each must hold at least min_tokens ("fewer than
 * <what>" otherwise). Shared by the loader and the shard set. On failure the arrays stay set, for
 * the caller's free function. */
static int shard_list(const char *pattern, size_t min_tokens, const char *what, char ***files, size_t **ntok,
                      size_t *nfiles, char *err, size_t errlen) {
    char e[NAME_ESC_LEN];
    glob_t g;
    int grc = glob(pattern, 0, NULL, &g);
    if (grc != 0) {
        dn_seterr(err, errlen, "%s: %s", ESC(e, pattern), grc == GLOB_NOMATCH ? "no file matches" : "glob failed");
        if (grc != GLOB_NOMATCH) globfree(&g);
        return -1;
    }
    *nfiles = g.gl_pathc;
    *files = calloc(*nfiles, sizeof **files);
    *ntok = calloc(*nfiles, sizeof **ntok);
    int rc = -1;
    if (!*files || !*ntok) {
        dn_seterr(err, errlen, "%s: out of memory", ESC(e, pattern));
        goto done;
    }
    for (size_t i = 0; i < *nfiles; i++) {
        (*files)[i] = strdup(g.gl_pathv[i]);
        if (!(*files)[i]) { dn_seterr(err, errlen, "%s: out of memory", ESC(e, pattern)); goto done; }
        if (shard_read_header((*files)[i], &(*ntok)[i], err, errlen) != 0) goto done;
        if ((*ntok)[i] < min_tokens) {
            dn_seterr(err, errlen, "%s: %zu tokens, fewer than %s", ESC(e, (*files)[i]), (*ntok)[i], what);
            goto done;
        }
    }
    rc = 0;
done:
    globfree(&g);
    return rc;
}

int dl_init(DataLoader *dl, const char *pattern, int B, int T, int vocab_size,
            char *err, size_t errlen) {
    memset(dl, 0, sizeof *dl);
    char e[NAME_ESC_LEN], what[64];
    if (B <= 0 || T <= 0) { dn_seterr(err, errlen, "data loader: B=%d, T=%d must be positive", B, T); return -1; }
    dl->B = B;
    dl->T = T;
    dl->vocab_size = vocab_size;
    const size_t need = (size_t)B * T + 1;
    snprintf(what, sizeof what, "one batch needs (B*T+1 = %zu)", need);
    if (shard_list(pattern, need, what, &dl->files, &dl->file_ntok, &dl->nfiles, err, errlen) != 0) {
        dl_free(dl);
        return -1;
    }
    dl->loaded = dl->nfiles;
    dl->inputs = malloc((size_t)B * T * sizeof *dl->inputs);
    dl->targets = malloc((size_t)B * T * sizeof *dl->targets);
    if (!dl->inputs || !dl->targets) {
        dn_seterr(err, errlen, "%s: out of memory", ESC(e, pattern));
        dl_free(dl);
        return -1;
    }
    return 0;
}

static int load_shard(DataLoader *dl, size_t i, char *err, size_t errlen) {
    if (dl->loaded == i) return 0;
    char e[NAME_ESC_LEN];
    free(dl->tokens);
    dl->tokens = NULL;
    dl->loaded = dl->nfiles;
    size_t n;
    if (shard_read(dl->files[i], dl->vocab_size, &dl->tokens, &n, err, errlen) != 0) return -1;
    if (n != dl->file_ntok[i]) {  /* rewritten since dl_init */
        dn_seterr(err, errlen, "%s: changed while in use (%zu tokens, was %zu)", ESC(e, dl->files[i]), n, dl->file_ntok[i]);
        return -1;
    }
    dl->loaded = i;
    return 0;
}

int dl_next(DataLoader *dl, char *err, size_t errlen) {
    size_t bt = (size_t)dl->B * dl->T;
    if (dl->pos + bt + 1 > dl->file_ntok[dl->shard]) {
        dl->shard = (dl->shard + 1) % dl->nfiles;
        dl->pos = 0;
    }
    if (load_shard(dl, dl->shard, err, errlen) != 0) return -1;
    const uint16_t *w = dl->tokens + dl->pos;
    for (size_t i = 0; i < bt; i++) {
        dl->inputs[i] = w[i];
        dl->targets[i] = w[i + 1];
    }
    dl->pos += bt;
    return 0;
}

void dl_position(const DataLoader *dl, long *shard, long *pos) {
    *shard = (long)dl->shard;
    *pos = (long)dl->pos;
}

int dl_seek(DataLoader *dl, long shard, long pos, char *err, size_t errlen) {
    if (shard < 0 || (size_t)shard >= dl->nfiles) {
        dn_seterr(err, errlen, "data loader: shard %ld out of range (%zu shards)", shard, dl->nfiles);
        return -1;
    }
    if (pos < 0 || (size_t)pos > dl->file_ntok[shard]) {
        char e[NAME_ESC_LEN];
        dn_seterr(err, errlen, "%s: position %ld beyond its %zu tokens", ESC(e, dl->files[shard]), pos,
               dl->file_ntok[shard]);
        return -1;
    }
    dl->shard = (size_t)shard;
    dl->pos = (size_t)pos;
    return 0;
}

void dl_reset(DataLoader *dl) {
    dl->shard = 0;
    dl->pos = 0;
}

long dl_epoch_batches(const DataLoader *dl) {
    size_t bt = (size_t)dl->B * dl->T, n = 0;
    for (size_t i = 0; i < dl->nfiles; i++) n += (dl->file_ntok[i] - 1) / bt;
    return (long)n;
}

void dl_free(DataLoader *dl) {
    if (dl->files)
        for (size_t i = 0; i < dl->nfiles; i++) free(dl->files[i]);
    free(dl->files);
    free(dl->file_ntok);
    free(dl->tokens);
    free(dl->inputs);
    free(dl->targets);
    memset(dl, 0, sizeof *dl);
}

/* ----------------------------------------------------------------------------------------------
 * Shards read on demand (ShardSet), the shuffled loader, the validation windows */

/* The loss masks beside the shards: none, or one per shard, each checked against its shard, all
 * of one period. */
static int ss_load_masks(ShardSet *s, char *err, size_t errlen) {
    char e[NAME_ESC_LEN], mp[DN_PATH_MAX];
    size_t with = 0;
    for (size_t i = 0; i < s->nfiles; i++) with += (size_t)mask_exists(s->files[i]);
    if (with == 0) return 0;
    if (with != s->nfiles) {
        for (size_t i = 0; i < s->nfiles; i++)
            if (!mask_exists(s->files[i])) {
                dn_seterr(err, errlen, "%s: no loss mask beside it, but %zu of the %zu shards have one (all or none)",
                          ESC(e, s->files[i]), with, s->nfiles);
                break;
            }
        return -1;
    }
    s->mask = calloc(s->nfiles, sizeof *s->mask);
    if (!s->mask) { dn_seterr(err, errlen, "out of memory for the loss masks"); return -1; }
    for (size_t i = 0; i < s->nfiles; i++) {
        int period = 0;
        if (mask_path(mp, sizeof mp, s->files[i], err, errlen) != 0) return -1;
        if (mask_read(mp, s->file_ntok[i], &s->mask[i], &period, err, errlen) != 0) return -1;
        if (i > 0 && period != s->period) {
            dn_seterr(err, errlen, "%s: period %d, but the masks before it have %d", ESC(e, mp), period, s->period);
            return -1;
        }
        s->period = period;
    }
    return 0;
}

int ss_read_mask(const ShardSet *s, size_t off, size_t n, uint8_t *out, char *err, size_t errlen) {
    if (!s->mask || off + n > s->start[s->nfiles] || off + n < off) {
        dn_seterr(err, errlen, "shards: no mask for tokens [%zu, %zu)", off, off + n);
        return -1;
    }
    size_t i = 0;
    while (i + 1 < s->nfiles && s->start[i + 1] <= off) i++;
    for (size_t done = 0; done < n; i++) {
        const size_t pos = off + done - s->start[i];
        if (pos >= s->file_ntok[i]) continue;
        size_t take = s->file_ntok[i] - pos;
        take = take < n - done ? take : n - done;
        memcpy(out + done, s->mask[i] + pos, take);
        done += take;
    }
    return 0;
}

int ss_open(ShardSet *s, const char *pattern, int vocab_size, size_t min_tokens, const char *what,
            char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < SHARDSET_OPEN; i++) s->fd[i] = -1;
    char e[NAME_ESC_LEN];
    s->vocab_size = vocab_size;
    if (shard_list(pattern, min_tokens, what, &s->files, &s->file_ntok, &s->nfiles, err, errlen) != 0) {
        ss_close(s);
        return -1;
    }
    s->start = calloc(s->nfiles + 1, sizeof *s->start);
    if (!s->start) {
        dn_seterr(err, errlen, "%s: out of memory", ESC(e, pattern));
        ss_close(s);
        return -1;
    }
    for (size_t i = 0; i < s->nfiles; i++) s->start[i + 1] = s->start[i] + s->file_ntok[i];
    if (ss_load_masks(s, err, errlen) != 0) {
        ss_close(s);
        return -1;
    }
    return 0;
}

/* The descriptor of shard i, opened (header and size checked again) if it is not. */
static int ss_fd(ShardSet *s, size_t i, char *err, size_t errlen) {
    const int slot = (int)(i % SHARDSET_OPEN);
    if (s->fd[slot] >= 0 && s->fd_shard[slot] == i) return s->fd[slot];
    if (s->fd[slot] >= 0) close(s->fd[slot]);
    s->fd[slot] = -1;
    size_t n;
    FILE *f = open_shard(s->files[i], &n, err, errlen);
    if (!f) return -1;
    const int fd = dup(fileno(f));
    const int e = errno;
    fclose(f);
    if (fd < 0) { dn_seterr(err, errlen, "%s: cannot open: %s", s->files[i], strerror(e)); return -1; }
    if (n != s->file_ntok[i]) { /* rewritten since ss_open */
        dn_seterr(err, errlen, "%s: changed while in use (%zu tokens, was %zu)", s->files[i], n, s->file_ntok[i]);
        close(fd);
        return -1;
    }
    s->fd[slot] = fd;
    s->fd_shard[slot] = i;
    return fd;
}

int ss_read(ShardSet *s, size_t off, size_t n, uint16_t *out, char *err, size_t errlen) {
    if (off + n > s->start[s->nfiles] || off + n < off) {
        dn_seterr(err, errlen, "shards: tokens [%zu, %zu) beyond the %zu there are", off, off + n, s->start[s->nfiles]);
        return -1;
    }
    size_t lo = 0, hi = s->nfiles; /* the shard holding off: start[lo] <= off < start[lo + 1] */
    while (hi - lo > 1) {
        const size_t mid = (lo + hi) / 2;
        if (s->start[mid] <= off) lo = mid; else hi = mid;
    }
    for (size_t i = lo, done = 0; done < n; i++) {
        if (i >= s->nfiles) { dn_seterr(err, errlen, "shards: read past the last shard"); return -1; }
        const size_t pos = off + done - s->start[i];
        if (pos >= s->file_ntok[i]) continue; /* an empty shard */
        size_t take = s->file_ntok[i] - pos;
        take = take < n - done ? take : n - done;
        const int fd = ss_fd(s, i, err, errlen);
        if (fd < 0) return -1;
        char *dst = (char *)(out + done);
        const off_t at = (off_t)(SHARD_HEADER_BYTES + pos * sizeof *out);
        for (size_t got = 0, bytes = take * sizeof *out; got < bytes;) {
            const ssize_t r = pread(fd, dst + got, bytes - got, at + (off_t)got);
            if (r <= 0 && !(r < 0 && errno == EINTR)) {
                dn_seterr(err, errlen, "%s: read error at token %zu: %s", s->files[i], pos,
                          r < 0 ? strerror(errno) : "the file ends early");
                return -1;
            }
            if (r > 0) got += (size_t)r;
        }
        for (size_t k = 0; k < take; k++) {
            if (out[done + k] >= s->vocab_size) {
                dn_seterr(err, errlen, "%s: token %u at position %zu is not below the vocabulary size %d",
                          s->files[i], out[done + k], pos + k, s->vocab_size);
                return -1;
            }
        }
        done += take;
    }
    return 0;
}

void ss_close(ShardSet *s) {
    if (s->files) /* only an opened set has descriptors (a zeroed one would name fd 0) */
        for (int i = 0; i < SHARDSET_OPEN; i++)
            if (s->fd[i] >= 0) close(s->fd[i]);
    if (s->files)
        for (size_t i = 0; i < s->nfiles; i++) free(s->files[i]);
    if (s->mask)
        for (size_t i = 0; i < s->nfiles; i++) free(s->mask[i]);
    free(s->mask);
    free(s->files);
    free(s->file_ntok);
    free(s->start);
    memset(s, 0, sizeof *s);
    for (int i = 0; i < SHARDSET_OPEN; i++) s->fd[i] = -1;
}

/* ---- the shuffled loader -------------------------------------------------------------------- */

#define SL_SEED_SALT 0x73687566666c65ull /* "shuffle": the data order's stream, apart from init and sampling */

/* Uniform in [0, n), n > 0: draws in the top partial range of 2^64 are rejected (no modulo bias). */
static uint64_t rng_below(DNRng *r, uint64_t n) {
    const uint64_t lim = UINT64_MAX - UINT64_MAX % n; /* a multiple of n */
    uint64_t x;
    do x = dn_rng_u64(r); while (x >= lim);
    return x % n;
}

/* sl->order = the permutation of epoch e: Fisher-Yates from a DNRng seeded by (seed, e). */
static void sl_shuffle(ShuffleLoader *sl, long e) {
    DNRng k, r;
    dn_rng_seed(&k, sl->seed ^ SL_SEED_SALT);
    dn_rng_seed(&r, dn_rng_u64(&k) + (uint64_t)e);
    for (size_t i = 0; i < sl->nwindows; i++) sl->order[i] = (uint32_t)i;
    for (size_t i = sl->nwindows; i > 1; i--) {
        const size_t j = (size_t)rng_below(&r, i);
        const uint32_t t = sl->order[i - 1];
        sl->order[i - 1] = sl->order[j];
        sl->order[j] = t;
    }
    sl->epoch = e;
}

int sl_init(ShuffleLoader *sl, const char *pattern, int B, int T, int vocab_size, uint64_t seed,
            char *err, size_t errlen) {
    memset(sl, 0, sizeof *sl);
    if (B <= 0 || T <= 0) { dn_seterr(err, errlen, "data loader: B=%d, T=%d must be positive", B, T); return -1; }
    char what[64];
    snprintf(what, sizeof what, "one window needs (T+1 = %ld)", (long)T + 1);
    if (ss_open(&sl->set, pattern, vocab_size, (size_t)T + 1, what, err, errlen) != 0) return -1;
    sl->B = B;
    sl->T = T;
    sl->seed = seed;
    if (sl->set.mask && sl->set.period != 0 && sl->set.period != T) {
        dn_seterr(err, errlen, "%s: the loss masks are of examples of %d tokens, but T is %d: pass -t %d so that each row is one example",
                  pattern, sl->set.period, T, sl->set.period);
        sl_free(sl);
        return -1;
    }
    const size_t nf = sl->set.nfiles;
    sl->first = calloc(nf + 1, sizeof *sl->first);
    if (!sl->first) goto oom;
    for (size_t i = 0; i < nf; i++) sl->first[i + 1] = sl->first[i] + (sl->set.file_ntok[i] - 1) / (size_t)T;
    sl->nwindows = sl->first[nf];
    if (sl->nwindows > UINT32_MAX) {
        dn_seterr(err, errlen, "%s: %zu windows of %d tokens, more than the loader numbers (2^32 - 1): use a larger -t",
                  pattern, sl->nwindows, T + 1);
        sl_free(sl);
        return -1;
    }
    sl->order = malloc(sl->nwindows * sizeof *sl->order);
    sl->rows = calloc((size_t)B, sizeof *sl->rows);
    sl->buf = malloc(((size_t)T + 1) * sizeof *sl->buf);
    sl->inputs = malloc((size_t)B * T * sizeof *sl->inputs);
    sl->targets = malloc((size_t)B * T * sizeof *sl->targets);
    if (!sl->order || !sl->rows || !sl->buf || !sl->inputs || !sl->targets) goto oom;
    if (sl->set.mask && !(sl->tmask = malloc((size_t)B * T))) goto oom;
    sl_shuffle(sl, 0);
    sl->next = 0;
    sl->rank = 0;
    sl->world = 1;
    return 0;
oom:
    dn_seterr(err, errlen, "%s: out of memory", pattern);
    sl_free(sl);
    return -1;
}

void sl_window(const ShuffleLoader *sl, size_t id, size_t *shard, size_t *pos) {
    size_t lo = 0, hi = sl->set.nfiles; /* first[lo] <= id < first[lo + 1] */
    while (hi - lo > 1) {
        const size_t mid = (lo + hi) / 2;
        if (sl->first[mid] <= id) lo = mid; else hi = mid;
    }
    *shard = lo;
    *pos = (id - sl->first[lo]) * (size_t)sl->T;
}

/* At the end of an epoch, the next one's start (its order drawn now, when its first entry is
 * needed; random windows have no order). */
static void sl_wrap(ShuffleLoader *sl) {
    if (sl->next < sl->nwindows) return;
    if (!sl->random) sl_shuffle(sl, sl->epoch + 1);
    else sl->epoch++;
    sl->next = 0;
}

/* Move k entries on in the order, into the next epochs as needed (an epoch's order is drawn when
 * its first entry is needed, so a position at the very end of an epoch stays there). */
static void sl_advance(ShuffleLoader *sl, size_t k) {
    while (k > 0) {
        sl_wrap(sl);
        const size_t step = k < sl->nwindows - sl->next ? k : sl->nwindows - sl->next;
        sl->next += step;
        k -= step;
    }
}

#define SL_RANDOM_SALT 0x72616e646f6d77ull /* "randomw": the random windows' stream */

int sl_set_random(ShuffleLoader *sl, char *err, size_t errlen) {
    if (sl->set.mask) {
        dn_seterr(err, errlen, "data loader: random windows would cut the masked examples (a row must be one example): "
                  "drop the random sampling");
        return -1;
    }
    const size_t nf = sl->set.nfiles;
    free(sl->rstart);
    sl->rstart = calloc(nf + 1, sizeof *sl->rstart);
    if (!sl->rstart) { dn_seterr(err, errlen, "data loader: out of memory"); return -1; }
    for (size_t i = 0; i < nf; i++) sl->rstart[i + 1] = sl->rstart[i] + (sl->set.file_ntok[i] - (size_t)sl->T);
    sl->random = 1;
    return 0;
}

/* Random mode: the stream offset of the window of row g (rows counted from the start of training):
 * uniform over every start of T + 1 tokens inside one shard, from a generator seeded by (seed, g). */
static size_t sl_random_start(const ShuffleLoader *sl, uint64_t g) {
    DNRng r;
    dn_rng_seed(&r, (sl->seed ^ SL_RANDOM_SALT) + g * 0x9E3779B97F4A7C15ull);
    const size_t u = (size_t)rng_below(&r, sl->rstart[sl->set.nfiles]);
    size_t lo = 0, hi = sl->set.nfiles; /* rstart[lo] <= u < rstart[lo + 1] */
    while (hi - lo > 1) {
        const size_t mid = (lo + hi) / 2;
        if (sl->rstart[mid] <= u) lo = mid; else hi = mid;
    }
    return sl->set.start[lo] + (u - sl->rstart[lo]);
}

int sl_set_rank(ShuffleLoader *sl, int rank, int world, char *err, size_t errlen) {
    if (world < 1 || rank < 0 || rank >= world) {
        dn_seterr(err, errlen, "data loader: rank %d of %d is not a rank of the group", rank, world);
        return -1;
    }
    sl->rank = rank;
    sl->world = world;
    return 0;
}

int sl_next(ShuffleLoader *sl, char *err, size_t errlen) {
    const size_t T = (size_t)sl->T, B = (size_t)sl->B;
    const size_t world = sl->world > 0 ? (size_t)sl->world : 1, rank = sl->world > 0 ? (size_t)sl->rank : 0;
    sl_advance(sl, rank * B); /* the rows of the lower ranks */
    for (size_t b = 0; b < B; b++) {
        sl_wrap(sl);
        size_t id, off;
        if (sl->random) {
            off = sl_random_start(sl, (uint64_t)sl->epoch * sl->nwindows + sl->next);
            id = off;
        } else {
            size_t shard, pos;
            id = sl->order[sl->next];
            sl_window(sl, id, &shard, &pos);
            off = sl->set.start[shard] + pos;
        }
        if (ss_read(&sl->set, off, T + 1, sl->buf, err, errlen) != 0) return -1;
        for (size_t t = 0; t < T; t++) {
            sl->inputs[b * T + t] = sl->buf[t];
            sl->targets[b * T + t] = sl->buf[t + 1];
        }
        if (sl->tmask && ss_read_mask(&sl->set, off + 1, T, sl->tmask + b * T, err, errlen) != 0) return -1;
        sl->rows[b] = id;
        sl->next++;
    }
    sl_advance(sl, (world - 1 - rank) * B); /* the rows of the higher ranks */
    return 0;
}

void sl_position(const ShuffleLoader *sl, long *epoch, long *next) {
    *epoch = sl->epoch;
    *next = (long)sl->next;
}

int sl_seek(ShuffleLoader *sl, long epoch, long next, char *err, size_t errlen) {
    if (epoch < 0 || next < 0 || (size_t)next > sl->nwindows) {
        dn_seterr(err, errlen, "data loader: position (epoch %ld, window %ld) out of range (%zu windows an epoch)",
                  epoch, next, sl->nwindows);
        return -1;
    }
    if (sl->random) sl->epoch = epoch;
    else if (epoch != sl->epoch) sl_shuffle(sl, epoch);
    sl->next = (size_t)next;
    return 0;
}

void sl_free(ShuffleLoader *sl) {
    ss_close(&sl->set);
    free(sl->first);
    free(sl->rstart);
    free(sl->order);
    free(sl->rows);
    free(sl->buf);
    free(sl->inputs);
    free(sl->targets);
    free(sl->tmask);
    memset(sl, 0, sizeof *sl);
}

/* ---- the validation windows ----------------------------------------------------------------- */

int vw_init(ValWindows *v, const char *pattern, int T, long n, int vocab_size, char *err, size_t errlen) {
    memset(v, 0, sizeof *v);
    if (T <= 0 || n < 0) { dn_seterr(err, errlen, "validation: T=%d must be positive, %ld windows not negative", T, n); return -1; }
    if (ss_open(&v->set, pattern, vocab_size, 0, "", err, errlen) != 0) return -1;
    v->T = T;
    v->ntok = v->set.start[v->set.nfiles];
    if (v->set.mask) { /* the windows must be the examples: one shard, every window, period T */
        const char *why = v->set.nfiles != 1 ? "must be one shard" : v->set.period != 0 && v->set.period != T ? "has another period" : NULL;
        if (why) {
            dn_seterr(err, errlen, "%s: masked validation data %s (%zu shards, examples of %d tokens, T = %d)", pattern, why,
                      v->set.nfiles, v->set.period, T);
            vw_free(v);
            return -1;
        }
        n = 0;
    }
    const size_t need = (size_t)T + 1;
    if (v->ntok < need) {
        dn_seterr(err, errlen, "%s: %zu tokens in all, fewer than one window needs (T+1 = %zu)", pattern, v->ntok, need);
        vw_free(v);
        return -1;
    }
    if (n == 0) {
        v->n = (v->ntok - 1) / (size_t)T;
        v->stride = (size_t)T;
    } else {
        if (n > 1 && (size_t)n > v->ntok - need) {
            dn_seterr(err, errlen, "%s: %ld windows of %zu tokens cannot start at distinct positions in %zu tokens "
                      "(at most %zu; 0 takes every non-overlapping window)", pattern, n, need, v->ntok, v->ntok - need);
            vw_free(v);
            return -1;
        }
        v->n = (size_t)n;
        v->stride = (v->ntok - need) / (size_t)n;
    }
    v->buf = malloc(need * sizeof *v->buf);
    if (!v->buf) { dn_seterr(err, errlen, "%s: out of memory", pattern); vw_free(v); return -1; }
    return 0;
}

int vw_read(ValWindows *v, size_t i, int *inputs, int *targets, char *err, size_t errlen) {
    if (i >= v->n) { dn_seterr(err, errlen, "validation: window %zu of %zu", i, v->n); return -1; }
    const size_t T = (size_t)v->T;
    if (ss_read(&v->set, i * v->stride, T + 1, v->buf, err, errlen) != 0) return -1;
    for (size_t t = 0; t < T; t++) {
        inputs[t] = v->buf[t];
        targets[t] = v->buf[t + 1];
    }
    return 0;
}

int vw_read_mask(const ValWindows *v, size_t i, uint8_t *tmask, char *err, size_t errlen) {
    if (i >= v->n) { dn_seterr(err, errlen, "validation: window %zu of %zu", i, v->n); return -1; }
    return ss_read_mask(&v->set, i * v->stride + 1, (size_t)v->T, tmask, err, errlen);
}

void vw_free(ValWindows *v) {
    ss_close(&v->set);
    free(v->buf);
    memset(v, 0, sizeof *v);
}
