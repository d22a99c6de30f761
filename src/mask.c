/*
 * mask.c -- loss-mask files beside token shards (the format is in mask.h). Messages name files
 * escaped, as data.c does: a name from a glob may hold any byte.
 */
#include "mask.h"
#include "../model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define NAME_ESC_LEN 256
#define ESC(buf, s) dn_escape(buf, sizeof buf, s, (size_t)-1)

int mask_path(char *out, size_t cap, const char *shard, char *err, size_t errlen) {
    const size_t n = strlen(shard);
    const int bin = n >= 4 && !strcmp(shard + n - 4, ".bin");
    if (n > (size_t)1 << 30) { dn_seterr(err, errlen, "shard path too long"); return -1; }
    return dn_path(out, cap, err, errlen, "%.*s.mask", (int)(bin ? n - 4 : n), shard);
}

int mask_exists(const char *shard) {
    char p[DN_PATH_MAX];
    struct stat sb;
    return mask_path(p, sizeof p, shard, NULL, 0) == 0 && stat(p, &sb) == 0;
}

int mask_write(const char *path, const uint8_t *mask, size_t n, int period, char *err, size_t errlen) {
    char e[NAME_ESC_LEN];
    if (n > 2147483647u || period < 0) {
        dn_seterr(err, errlen, "%s: %zu tokens or period %d out of range", ESC(e, path), n, period);
        return -1;
    }
    int32_t h[MASK_HEADER_INTS] = {0};
    long ones = 0;
    for (size_t i = 0; i < n; i++) {
        if (mask[i] > 1) { dn_seterr(err, errlen, "%s: mask byte %zu is %u, not 0 or 1", ESC(e, path), i, mask[i]); return -1; }
        ones += mask[i];
    }
    h[0] = MASK_MAGIC;
    h[1] = MASK_VERSION;
    h[2] = (int32_t)n;
    h[3] = period;
    h[4] = (int32_t)ones;
    DNAtomic a;
    if (dn_atomic_begin(&a, path, err, errlen)) return -1;
    if (fwrite(h, sizeof h, 1, a.f) != 1 || (n > 0 && fwrite(mask, 1, n, a.f) != n)) {
        dn_seterr(err, errlen, "%s: write failed: %s", ESC(e, path), strerror(errno));
        dn_atomic_abort(&a);
        return -1;
    }
    return dn_atomic_commit(&a, err, errlen);
}

int mask_read(const char *path, size_t ntok, uint8_t **mask, int *period, char *err, size_t errlen) {
    char e[NAME_ESC_LEN], why[DN_ERR_LEN];
    *mask = NULL;
    FILE *f = dn_open_regular(path, why, sizeof why);
    if (!f) {
        char line[DN_ERR_LEN];
        dn_seterr(err, errlen, "%s", dn_escape(line, sizeof line, why, (size_t)-1));
        return -1;
    }
    struct stat st;
    int32_t h[MASK_HEADER_INTS];
    uint8_t *m = NULL;
    int ok = 0;
    if (fstat(fileno(f), &st) != 0) {
        dn_seterr(err, errlen, "%s: cannot stat: %s", ESC(e, path), strerror(errno));
    } else if ((size_t)st.st_size < MASK_HEADER_BYTES || fread(h, sizeof h, 1, f) != 1) {
        dn_seterr(err, errlen, "%s: %lld bytes, too small for the %d-byte mask header", ESC(e, path),
                  (long long)st.st_size, MASK_HEADER_BYTES);
    } else if (h[0] != MASK_MAGIC) {
        dn_seterr(err, errlen, "%s: not a mask file (magic %d, expected %d)", ESC(e, path), h[0], MASK_MAGIC);
    } else if (h[1] != MASK_VERSION) {
        dn_seterr(err, errlen, "%s: mask version %d, this code reads version %d (regenerate it)", ESC(e, path), h[1], MASK_VERSION);
    } else if (h[2] < 0 || (long long)st.st_size != MASK_HEADER_BYTES + (long long)h[2]) {
        dn_seterr(err, errlen, "%s: the header says %d tokens (%lld bytes) but the file has %lld bytes", ESC(e, path),
                  h[2], MASK_HEADER_BYTES + (long long)h[2], (long long)st.st_size);
    } else if ((size_t)h[2] != ntok) {
        dn_seterr(err, errlen, "%s: a mask of %d tokens, but its shard has %zu (they do not belong together)",
                  ESC(e, path), h[2], ntok);
    } else if (h[3] < 0 || h[4] < 0 || h[4] > h[2]) {
        dn_seterr(err, errlen, "%s: invalid header (period %d, %d ones of %d)", ESC(e, path), h[3], h[4], h[2]);
    } else {
        int reserved = 0;
        for (int i = 5; i < MASK_HEADER_INTS; i++) reserved |= h[i] != 0;
        if (reserved) {
            dn_seterr(err, errlen, "%s: header ints 5..255 must be zero", ESC(e, path));
        } else if (!(m = (uint8_t *)malloc(ntok ? ntok : 1))) {
            dn_seterr(err, errlen, "%s: out of memory for %zu mask bytes", ESC(e, path), ntok);
        } else if (ntok > 0 && fread(m, 1, ntok, f) != ntok) {
            dn_seterr(err, errlen, "%s: %s", ESC(e, path), ferror(f) ? "read error" : "cut short while reading");
        } else {
            long ones = 0;
            size_t bad = ntok;
            for (size_t i = 0; i < ntok && bad == ntok; i++) {
                if (m[i] > 1) bad = i;
                ones += m[i];
            }
            if (bad < ntok) dn_seterr(err, errlen, "%s: byte %zu of the mask is %u, not 0 or 1", ESC(e, path), bad, m[bad]);
            else if (ones != h[4]) dn_seterr(err, errlen, "%s: the header counts %d scored tokens but the data has %ld", ESC(e, path), h[4], ones);
            else ok = 1;
        }
    }
    fclose(f);
    if (!ok) { free(m); return -1; }
    *mask = m;
    if (period) *period = h[3];
    return 0;
}
