/*
 * data.c -- token shards and the data loader (see data.h for the format and the batch layout).
 *
 * Messages name shards escaped (dn_escape): the loader's names come from a glob, and a file name
 * may hold any byte but '/' and NUL, a newline included; every message stays one line.
 */
#include "data.h"
#include "model.h"

#include <errno.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

int dl_init(DataLoader *dl, const char *pattern, int B, int T, int vocab_size,
            char *err, size_t errlen) {
    memset(dl, 0, sizeof *dl);
    char e[NAME_ESC_LEN];
    if (B <= 0 || T <= 0) { dn_seterr(err, errlen, "data loader: B=%d, T=%d must be positive", B, T); return -1; }
    glob_t g;
    int grc = glob(pattern, 0, NULL, &g);
    if (grc != 0) {
        dn_seterr(err, errlen, "%s: %s", ESC(e, pattern), grc == GLOB_NOMATCH ? "no file matches" : "glob failed");
        if (grc != GLOB_NOMATCH) globfree(&g);
        return -1;
    }
    dl->B = B;
    dl->T = T;
    dl->vocab_size = vocab_size;
    dl->nfiles = g.gl_pathc;
    dl->loaded = dl->nfiles;
    dl->files = calloc(dl->nfiles, sizeof *dl->files);
    dl->file_ntok = calloc(dl->nfiles, sizeof *dl->file_ntok);
    dl->inputs = malloc((size_t)B * T * sizeof *dl->inputs);
    dl->targets = malloc((size_t)B * T * sizeof *dl->targets);
    int rc = -1;
    if (!dl->files || !dl->file_ntok || !dl->inputs || !dl->targets) {
        dn_seterr(err, errlen, "%s: out of memory", ESC(e, pattern));
        goto done;
    }
    for (size_t i = 0; i < dl->nfiles; i++) {
        dl->files[i] = strdup(g.gl_pathv[i]);
        if (!dl->files[i]) { dn_seterr(err, errlen, "%s: out of memory", ESC(e, pattern)); goto done; }
        if (shard_read_header(dl->files[i], &dl->file_ntok[i], err, errlen) != 0) goto done;
        if (dl->file_ntok[i] < (size_t)B * T + 1) {
            dn_seterr(err, errlen, "%s: %zu tokens, fewer than one batch needs (B*T+1 = %zu)", ESC(e, dl->files[i]),
                   dl->file_ntok[i], (size_t)B * T + 1);
            goto done;
        }
    }
    rc = 0;
done:
    globfree(&g);
    if (rc != 0) dl_free(dl);
    return rc;
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
