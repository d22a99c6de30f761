/*
 * tokenizer.c -- GPT-2 byte-level BPE (see tokenizer.h for the algorithm and the API).
 *
 * Layout: hash tables (byte strings -> values, id pairs -> merge), loading and validating
 * encoder.json / vocab.bpe, the byte-pair merge of one piece, the encoder loop, the decoder.
 * The tables are small open-addressing tables written here: the keys are byte strings that may
 * hold NULs, which stb_ds's string maps (NUL-terminated keys) cannot take.
 *
 * The vocabulary files are read only if they are regular files (dn_open_regular: a FIFO would
 * block, a directory reads as garbage), and text quoted from them in a message (a token, a merge
 * line) is escaped and cut (dn_escape), so every message is one line.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"
#include "../model.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include <pcre2.h>

/* GPT-2's pattern, with \s spelt \p{White_Space} (= Python regex's and tiktoken's \s) */
#define WS "\\p{White_Space}"
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|" WS "+(?!\\P{White_Space})|" WS "+";
#undef WS

static const char EOT_TEXT[] = "<|endoftext|>";

/* Pieces longer than this are not cached (they are rare, and would fill the cache). */
#define CACHE_MAX_PIECE 256
/* The cache is emptied when it grows past these. */
#define CACHE_MAX_ENTRIES (1u << 19)
#define CACHE_MAX_IDS (1u << 23)
#define CACHE_MAX_KEY_BYTES (32u << 20)


/* ----------------------------------------------------------------------------------------------
 * Byte-string map: open addressing, linear probing; keys are copied into an arena. */

typedef struct {
    uint64_t h;
    uint32_t koff, klen;  /* koff == UINT32_MAX: empty slot */
    int32_t v0, v1;
} TokSlot;

struct TokMap {
    TokSlot *slot;
    size_t mask, n;       /* capacity - 1 (a power of two minus one), entries */
    char *keys;
    size_t keys_len, keys_cap;
};

static uint64_t hash_bytes(const char *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0xff51afd7ed558ccdull;
    h ^= h >> 29;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 32;
    return h;
}

static int map_alloc_slots(struct TokMap *m, size_t cap) {
    m->slot = malloc(cap * sizeof *m->slot);
    if (!m->slot) return -1;
    for (size_t i = 0; i < cap; i++) m->slot[i].koff = UINT32_MAX;
    m->mask = cap - 1;
    m->n = 0;
    return 0;
}

static struct TokMap *map_new(size_t cap) {
    struct TokMap *m = calloc(1, sizeof *m);
    if (!m || map_alloc_slots(m, cap) != 0) { free(m); return NULL; }
    return m;
}

static void map_free(struct TokMap *m) {
    if (!m) return;
    free(m->slot);
    free(m->keys);
    free(m);
}

static void map_clear(struct TokMap *m) {
    for (size_t i = 0; i <= m->mask; i++) m->slot[i].koff = UINT32_MAX;
    m->n = 0;
    m->keys_len = 0;
}

/* The slot holding key, or NULL. */
static const TokSlot *map_get(const struct TokMap *m, const char *key, size_t len, uint64_t h) {
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        const TokSlot *s = &m->slot[i];
        if (s->koff == UINT32_MAX) return NULL;
        if (s->h == h && s->klen == len && memcmp(m->keys + s->koff, key, len) == 0) return s;
    }
}

/* Insert a key known to be absent. Returns 0, or -1 when out of memory. */
static int map_put(struct TokMap *m, const char *key, size_t len, uint64_t h, int32_t v0, int32_t v1) {
    if ((m->n + 1) * 10 > (m->mask + 1) * 7) {  /* keep the load under 0.7: double and rehash */
        TokSlot *old = m->slot;
        size_t oldcap = m->mask + 1;
        if (map_alloc_slots(m, 2 * oldcap) != 0) { m->slot = old; return -1; }
        for (size_t j = 0; j < oldcap; j++) {
            if (old[j].koff == UINT32_MAX) continue;
            size_t i = old[j].h & m->mask;
            while (m->slot[i].koff != UINT32_MAX) i = (i + 1) & m->mask;
            m->slot[i] = old[j];
            m->n++;
        }
        free(old);
    }
    if (m->keys_len + len > m->keys_cap) {
        size_t cap = m->keys_cap ? m->keys_cap : 4096;
        while (cap < m->keys_len + len) cap *= 2;
        if (cap > UINT32_MAX) return -1;
        char *k = realloc(m->keys, cap);
        if (!k) return -1;
        m->keys = k;
        m->keys_cap = cap;
    }
    size_t i = h & m->mask;
    while (m->slot[i].koff != UINT32_MAX) i = (i + 1) & m->mask;
    TokSlot *s = &m->slot[i];
    s->h = h;
    s->koff = (uint32_t)m->keys_len;
    s->klen = (uint32_t)len;
    s->v0 = v0;
    s->v1 = v1;
    memcpy(m->keys + m->keys_len, key, len);
    m->keys_len += len;
    m->n++;
    return 0;
}

/* ----------------------------------------------------------------------------------------------
 * Merge map: (left id, right id) -> (rank, merged id); fixed size, filled once at load. */

typedef struct {
    uint64_t key;  /* left << 32 | right; UINT64_MAX: empty */
    int32_t rank, merged;
} TokPairSlot;

struct TokPairMap {
    TokPairSlot *slot;
    size_t mask;
};

static inline uint64_t pair_key(int a, int b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }
static inline size_t pair_hash(uint64_t k) { return (size_t)((k * 0x9E3779B97F4A7C15ull) >> 32); }

/* The merge of (a, b), or NULL when the pair has no rank. */
static inline const TokPairSlot *pair_get(const struct TokPairMap *m, int a, int b) {
    uint64_t k = pair_key(a, b);
    for (size_t i = pair_hash(k) & m->mask;; i = (i + 1) & m->mask) {
        if (m->slot[i].key == k) return &m->slot[i];
        if (m->slot[i].key == UINT64_MAX) return NULL;
    }
}

/* Insert; returns 1 if the pair was already there. */
static int pair_put(struct TokPairMap *m, int a, int b, int rank, int merged) {
    uint64_t k = pair_key(a, b);
    size_t i = pair_hash(k) & m->mask;
    for (; m->slot[i].key != UINT64_MAX; i = (i + 1) & m->mask)
        if (m->slot[i].key == k) return 1;
    m->slot[i].key = k;
    m->slot[i].rank = rank;
    m->slot[i].merged = merged;
    return 0;
}

/* ----------------------------------------------------------------------------------------------
 * Loading */

/* GPT-2 spells byte b as a printable character: b itself for '!'..'~', 0xA1..0xAC, 0xAE..0xFF;
 * U+0100 + n for the n-th remaining byte (0x00..0x20, 0x7F..0xA0, 0xAD), in byte order.
 * char_byte[cp] is the byte spelt by code point cp (< 0x144), or -1. */
static void printable_map(int char_byte[0x144]) {
    for (int c = 0; c < 0x144; c++) char_byte[c] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        char_byte[printable ? b : 0x100 + n++] = b;
    }
}

/* Turn a token spelt in the printable alphabet (UTF-8, n bytes) into raw bytes in dst (room for
 * n bytes). Returns the byte count, or -1 if a character is not in the alphabet. */
static long unprintable(const int char_byte[0x144], const char *src, size_t n, char *dst) {
    const unsigned char *s = (const unsigned char *)src;
    long out = 0;
    for (size_t i = 0; i < n;) {
        int cp;
        if (s[i] < 0x80) {
            cp = s[i];
            i += 1;
        } else if ((s[i] & 0xE0) == 0xC0 && i + 1 < n && (s[i + 1] & 0xC0) == 0x80) {
            cp = (s[i] & 0x1F) << 6 | (s[i + 1] & 0x3F);
            i += 2;
        } else {
            return -1;
        }
        if (cp >= 0x144 || char_byte[cp] < 0) return -1;
        dst[out++] = (char)char_byte[cp];
    }
    return out;
}

static int read_whole(const char *path, char **buf, size_t *len, char *err, size_t errlen) {
    FILE *f = dn_open_regular(path, err, errlen);
    if (!f) return -1;
    size_t cap = 1 << 20, n = 0;
    char *b = malloc(cap + 1);
    for (;;) {
        if (!b) { fclose(f); dn_seterr(err, errlen, "%s: out of memory", path); return -1; }
        size_t k = fread(b + n, 1, cap - n, f);
        n += k;
        if (n < cap || k == 0) break;
        cap *= 2;
        char *nb = realloc(b, cap + 1);
        if (!nb) free(b);
        b = nb;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) { free(b); dn_seterr(err, errlen, "%s: read error", path); return -1; }
    b[n] = 0;
    *buf = b;
    *len = n;
    return 0;
}

/* Fill t->bytes, t->off, t->byte_token from encoder.json; *vocab maps token bytes -> id. */
static int load_encoder(Tokenizer *t, const char *path, const int char_byte[0x144],
                        struct TokMap **vocab, char *err, size_t errlen) {
    char *text;
    size_t len;
    if (read_whole(path, &text, &len, err, errlen) != 0) return -1;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        dn_seterr(err, errlen, "%s: not valid JSON (cut short or corrupt?) near byte %zu", path,
               end ? (size_t)(end - text) : (size_t)0);
        free(text);
        return -1;
    }
    free(text);
    int rc = -1, n = cJSON_GetArraySize(root);
    char **tok = calloc(TOK_GPT2_VOCAB, sizeof *tok);   /* raw bytes of each id */
    uint32_t *tlen = calloc(TOK_GPT2_VOCAB, sizeof *tlen);
    struct TokMap *m = map_new(1 << 17);
    if (!tok || !tlen || !m) { dn_seterr(err, errlen, "%s: out of memory", path); goto done; }
    if (!cJSON_IsObject(root) || n != TOK_GPT2_VOCAB) {
        dn_seterr(err, errlen, "%s: expected a JSON object of %d tokens, found %s%d entries", path,
               TOK_GPT2_VOCAB, cJSON_IsObject(root) ? "" : "not an object, ", n);
        goto done;
    }
    size_t total = 0;
    char e[DN_ESC_LEN];
    for (cJSON *it = root->child; it; it = it->next) {
        const char *key = it->string;
        double v = it->valuedouble;
        if (!cJSON_IsNumber(it) || v < 0 || v >= TOK_GPT2_VOCAB || v != (double)(int)v) {
            dn_seterr(err, errlen, "%s: token \"%s\" has id %s, not an integer in [0, %d)", path, dn_escape(e, sizeof e, key, (size_t)-1),
                   cJSON_IsNumber(it) ? "out of range" : "that is not a number", TOK_GPT2_VOCAB);
            goto done;
        }
        int id = (int)v;
        if (tok[id]) { dn_seterr(err, errlen, "%s: id %d appears twice", path, id); goto done; }
        size_t klen = strlen(key);
        tok[id] = malloc(klen + 1);
        if (!tok[id]) { dn_seterr(err, errlen, "%s: out of memory", path); goto done; }
        long bl = unprintable(char_byte, key, klen, tok[id]);
        if (bl <= 0) {
            dn_seterr(err, errlen, "%s: token \"%s\" (id %d) is not in GPT-2's byte alphabet", path, dn_escape(e, sizeof e, key, (size_t)-1), id);
            goto done;
        }
        tlen[id] = (uint32_t)bl;
        total += (size_t)bl;
        uint64_t h = hash_bytes(tok[id], (size_t)bl);
        if (map_get(m, tok[id], (size_t)bl, h)) {
            dn_seterr(err, errlen, "%s: token \"%s\" (id %d) appears twice", path, dn_escape(e, sizeof e, key, (size_t)-1), id);
            goto done;
        }
        if (map_put(m, tok[id], (size_t)bl, h, id, 0) != 0) { dn_seterr(err, errlen, "%s: out of memory", path); goto done; }
    }
    const TokSlot *eot = map_get(m, EOT_TEXT, strlen(EOT_TEXT), hash_bytes(EOT_TEXT, strlen(EOT_TEXT)));
    if (!eot || eot->v0 != TOK_GPT2_EOT) {
        dn_seterr(err, errlen, "%s: %s must be token %d", path, EOT_TEXT, TOK_GPT2_EOT);
        goto done;
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        const TokSlot *s = map_get(m, &c, 1, hash_bytes(&c, 1));
        if (!s) { dn_seterr(err, errlen, "%s: byte 0x%02x has no token", path, b); goto done; }
        t->byte_token[b] = s->v0;
    }
    t->vocab_size = TOK_GPT2_VOCAB;
    t->eot = TOK_GPT2_EOT;
    t->bytes = malloc(total);
    t->off = malloc((TOK_GPT2_VOCAB + 1) * sizeof *t->off);
    if (!t->bytes || !t->off) { dn_seterr(err, errlen, "%s: out of memory", path); goto done; }
    t->off[0] = 0;
    for (int i = 0; i < TOK_GPT2_VOCAB; i++) {
        memcpy(t->bytes + t->off[i], tok[i], tlen[i]);
        t->off[i + 1] = t->off[i] + tlen[i];
    }
    *vocab = m;
    m = NULL;
    rc = 0;
done:
    if (tok) for (int i = 0; i < TOK_GPT2_VOCAB; i++) free(tok[i]);
    free(tok);
    free(tlen);
    map_free(m);
    cJSON_Delete(root);
    return rc;
}

/* Fill t->merges from vocab.bpe: "#version..." then one "left right" rule per line, rank order. */
static int load_merges(Tokenizer *t, const char *path, const int char_byte[0x144],
                       const struct TokMap *vocab, char *err, size_t errlen) {
    char *text;
    size_t len;
    if (read_whole(path, &text, &len, err, errlen) != 0) return -1;
    int rc = -1;
    char *buf = malloc(len + 1);
    t->merges = calloc(1, sizeof *t->merges);
    size_t cap = 1 << 17;
    if (t->merges) t->merges->slot = malloc(cap * sizeof *t->merges->slot);
    if (!buf || !t->merges || !t->merges->slot) { dn_seterr(err, errlen, "%s: out of memory", path); goto done; }
    t->merges->mask = cap - 1;
    for (size_t i = 0; i < cap; i++) t->merges->slot[i].key = UINT64_MAX;
    if (strncmp(text, "#version", 8) != 0) {
        dn_seterr(err, errlen, "%s: line 1: expected a \"#version\" header", path);
        goto done;
    }
    char *line = strchr(text, '\n');
    int rank = 0;
    for (int lineno = 2; line && line[1] != 0; lineno++) {
        line++;
        char *eol = strchr(line, '\n');
        size_t ll = eol ? (size_t)(eol - line) : strlen(line);
        char *sp = memchr(line, ' ', ll);
        if (rank == TOK_GPT2_MERGES) {
            dn_seterr(err, errlen, "%s: line %d: more than %d merge rules", path, lineno, TOK_GPT2_MERGES);
            goto done;
        }
        if (!sp || sp == line || sp == line + ll - 1 || memchr(sp + 1, ' ', ll - (size_t)(sp + 1 - line))) {
            dn_seterr(err, errlen, "%s: line %d: expected two tokens separated by one space", path, lineno);
            goto done;
        }
        long la = unprintable(char_byte, line, (size_t)(sp - line), buf);
        long lb = la < 0 ? -1 : unprintable(char_byte, sp + 1, ll - (size_t)(sp + 1 - line), buf + la);
        if (la < 0 || lb < 0) {
            dn_seterr(err, errlen, "%s: line %d: a character outside GPT-2's byte alphabet", path, lineno);
            goto done;
        }
        const TokSlot *a = map_get(vocab, buf, (size_t)la, hash_bytes(buf, (size_t)la));
        const TokSlot *b = map_get(vocab, buf + la, (size_t)lb, hash_bytes(buf + la, (size_t)lb));
        const TokSlot *ab = map_get(vocab, buf, (size_t)(la + lb), hash_bytes(buf, (size_t)(la + lb)));
        char e[DN_ESC_LEN];
        if (!a || !b || !ab) {
            dn_seterr(err, errlen, "%s: line %d: \"%s\": %s is not in the vocabulary", path, lineno,
                   dn_escape(e, sizeof e, line, ll), !a ? "the left token" : !b ? "the right token" : "their concatenation");
            goto done;
        }
        if (pair_put(t->merges, a->v0, b->v0, rank, ab->v0)) {
            dn_seterr(err, errlen, "%s: line %d: the rule \"%s\" appears twice", path, lineno, dn_escape(e, sizeof e, line, ll));
            goto done;
        }
        rank++;
        line = eol;
    }
    if (rank != TOK_GPT2_MERGES) {
        dn_seterr(err, errlen, "%s: %d merge rules, expected %d (file cut short?)", path, rank, TOK_GPT2_MERGES);
        goto done;
    }
    rc = 0;
done:
    free(text);
    free(buf);
    return rc;
}

static int compile_pattern(Tokenizer *t, char *err, size_t errlen) {
    int code;
    PCRE2_SIZE at;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)GPT2_PATTERN, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code, &at, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        dn_seterr(err, errlen, "tokenizer: PCRE2 cannot compile GPT-2's pattern at offset %zu: %s", (size_t)at, msg);
        return -1;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);  /* if JIT is unavailable pcre2_match interprets */
    t->re = re;
    t->match = pcre2_match_data_create_from_pattern(re, NULL);
    if (!t->match) { dn_seterr(err, errlen, "tokenizer: out of memory"); return -1; }
    return 0;
}

int tok_load(Tokenizer *t, const char *dir, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    if (!dir) dir = TOK_DEFAULT_DIR;
    size_t dl = strlen(dir) + 32;
    char *path = malloc(dl);
    if (!path) { dn_seterr(err, errlen, "%s: out of memory", dir); return -1; }
    int char_byte[0x144];
    printable_map(char_byte);
    struct TokMap *vocab = NULL;
    int rc = -1;
    snprintf(path, dl, "%s/encoder.json", dir);
    if (load_encoder(t, path, char_byte, &vocab, err, errlen) != 0) goto done;
    snprintf(path, dl, "%s/vocab.bpe", dir);
    if (load_merges(t, path, char_byte, vocab, err, errlen) != 0) goto done;
    if (compile_pattern(t, err, errlen) != 0) goto done;
    t->cache = map_new(1 << 12);
    if (!t->cache) { dn_seterr(err, errlen, "tokenizer: out of memory"); goto done; }
    rc = 0;
done:
    free(path);
    map_free(vocab);
    if (rc != 0) tok_free(t);
    return rc;
}

void tok_free(Tokenizer *t) {
    if (!t) return;
    free(t->bytes);
    free(t->off);
    if (t->merges) free(t->merges->slot);
    free(t->merges);
    map_free(t->cache);
    free(t->cache_ids);
    pcre2_match_data_free((pcre2_match_data *)t->match);
    pcre2_code_free((pcre2_code *)t->re);
    memset(t, 0, sizeof *t);
}

/* ----------------------------------------------------------------------------------------------
 * Encoding */

typedef struct {
    int *a;
    size_t n, cap;
} IdVec;

static int ids_reserve(IdVec *v, size_t extra) {
    if (v->n + extra <= v->cap) return 0;
    size_t cap = v->cap ? v->cap : 256;
    while (cap < v->n + extra) cap *= 2;
    int *a = realloc(v->a, cap * sizeof *a);
    if (!a) return -1;
    v->a = a;
    v->cap = cap;
    return 0;
}

/* Byte-pair merge of one piece: nodes in a linked list (node 0 is never removed), candidate pairs
 * in a min-heap keyed by rank << 32 | left node, so the lowest rank wins and the leftmost on ties.
 * A popped pair is stale if its left node was removed or the pair it names has changed. */
static int bpe_piece(const Tokenizer *t, const unsigned char *p, size_t n, IdVec *out) {
    enum { SMALL = 128 };
    int ids_s[SMALL], next_s[SMALL], prev_s[SMALL];
    uint64_t heap_s[3 * SMALL];
    int *ids = ids_s, *next = next_s, *prev = prev_s;
    uint64_t *heap = heap_s;
    if (n > SMALL) {
        if (n > UINT32_MAX / 4) return -1;
        ids = malloc(3 * n * sizeof *ids);
        heap = malloc(3 * n * sizeof *heap);
        if (!ids || !heap) { free(ids); free(heap); return -1; }
        next = ids + n;
        prev = ids + 2 * n;
    }
    size_t hn = 0;
#define HEAP_PUSH(key)                                                              \
    do {                                                                            \
        size_t i_ = hn++;                                                           \
        uint64_t k_ = (key);                                                        \
        while (i_ > 0 && heap[(i_ - 1) / 2] > k_) { heap[i_] = heap[(i_ - 1) / 2]; i_ = (i_ - 1) / 2; } \
        heap[i_] = k_;                                                              \
    } while (0)
    for (size_t i = 0; i < n; i++) {
        ids[i] = t->byte_token[p[i]];
        next[i] = i + 1 < n ? (int)i + 1 : -1;
        prev[i] = (int)i - 1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        const TokPairSlot *s = pair_get(t->merges, ids[i], ids[i + 1]);
        if (s) HEAP_PUSH((uint64_t)s->rank << 32 | i);
    }
    while (hn > 0) {
        uint64_t top = heap[0];
        uint64_t last = heap[--hn];  /* sift the last element down from the root */
        size_t i = 0;
        for (;;) {
            size_t c = 2 * i + 1;
            if (c >= hn) break;
            if (c + 1 < hn && heap[c + 1] < heap[c]) c++;
            if (heap[c] >= last) break;
            heap[i] = heap[c];
            i = c;
        }
        if (hn > 0) heap[i] = last;
        int pos = (int)(uint32_t)top, rank = (int)(top >> 32);
        int q = next[pos];
        if (ids[pos] < 0 || q < 0) continue;               /* removed, or now last */
        const TokPairSlot *s = pair_get(t->merges, ids[pos], ids[q]);
        if (!s || s->rank != rank) continue;                /* the pair changed */
        ids[pos] = s->merged;
        ids[q] = -1;
        next[pos] = next[q];
        if (next[q] >= 0) prev[next[q]] = pos;
        if (prev[pos] >= 0 && (s = pair_get(t->merges, ids[prev[pos]], ids[pos])))
            HEAP_PUSH((uint64_t)s->rank << 32 | (uint32_t)prev[pos]);
        if (next[pos] >= 0 && (s = pair_get(t->merges, ids[pos], ids[next[pos]])))
            HEAP_PUSH((uint64_t)s->rank << 32 | (uint32_t)pos);
    }
#undef HEAP_PUSH
    int rc = ids_reserve(out, n);
    if (rc == 0)
        for (int i = 0; i >= 0; i = next[i]) out->a[out->n++] = ids[i];
    if (ids != ids_s) { free(ids); free(heap); }
    return rc;
}

/* Encode one pre-token piece, through the cache. */
static int encode_piece(Tokenizer *t, const char *p, size_t n, IdVec *out) {
    if (n == 1) {
        if (ids_reserve(out, 1) != 0) return -1;
        out->a[out->n++] = t->byte_token[(unsigned char)p[0]];
        return 0;
    }
    uint64_t h = hash_bytes(p, n);
    const TokSlot *s = map_get(t->cache, p, n, h);
    if (s) {
        if (ids_reserve(out, (size_t)s->v1) != 0) return -1;
        memcpy(out->a + out->n, t->cache_ids + s->v0, (size_t)s->v1 * sizeof *out->a);
        out->n += (size_t)s->v1;
        return 0;
    }
    size_t before = out->n;
    if (bpe_piece(t, (const unsigned char *)p, n, out) != 0) return -1;
    if (n > CACHE_MAX_PIECE) return 0;
    size_t k = out->n - before;
    if (t->cache->n >= CACHE_MAX_ENTRIES || t->cache_nids + k > CACHE_MAX_IDS ||
        t->cache->keys_len + n > CACHE_MAX_KEY_BYTES) {
        map_clear(t->cache);
        t->cache_nids = 0;
    }
    if (t->cache_nids + k > t->cache_cap) {
        size_t cap = t->cache_cap ? 2 * t->cache_cap : 1 << 14;
        int *a = realloc(t->cache_ids, cap * sizeof *a);
        if (!a) return 0;  /* the cache is an optimisation: skip it */
        t->cache_ids = a;
        t->cache_cap = cap;
    }
    if (map_put(t->cache, p, n, h, (int32_t)t->cache_nids, (int32_t)k) != 0) return 0;
    memcpy(t->cache_ids + t->cache_nids, out->a + before, k * sizeof *out->a);
    t->cache_nids += k;
    return 0;
}

/* Pre-tokenise s[0..n) and encode every piece; bytes no match covers (invalid UTF-8) form
 * pieces of their own. */
static int encode_text(Tokenizer *t, const char *s, size_t n, IdVec *out, char *err, size_t errlen) {
    pcre2_code *re = t->re;
    pcre2_match_data *md = t->match;
    const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    size_t off = 0;
    while (off < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, off, 0, md, NULL);
        size_t start = n, end = n;
        if (rc >= 0) {
            start = ov[0];
            end = ov[1];
        } else if (rc != PCRE2_ERROR_NOMATCH) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            dn_seterr(err, errlen, "tokenizer: PCRE2 match failed at byte %zu: %s", off, msg);
            return -1;
        }
        if (end <= start && start < n) end = start + 1;  /* an empty match: cannot happen, but never loop */
        if (start > off && encode_piece(t, s + off, start - off, out) != 0) goto oom;
        if (end > start && encode_piece(t, s + start, end - start, out) != 0) goto oom;
        off = end;
    }
    return 0;
oom:
    dn_seterr(err, errlen, "tokenizer: out of memory");
    return -1;
}

/* The first occurrence of the eot text in s[0..n), or NULL. */
static const char *find_eot(const char *s, size_t n) {
    const size_t k = sizeof EOT_TEXT - 1;
    for (const char *p = s; (size_t)(s + n - p) >= k; p++) {
        p = memchr(p, '<', (size_t)(s + n - p) - k + 1);
        if (!p) return NULL;
        if (memcmp(p, EOT_TEXT, k) == 0) return p;
    }
    return NULL;
}

int tok_encode(Tokenizer *t, const char *bytes, size_t n, int flags, int **ids, size_t *nids,
               char *err, size_t errlen) {
    IdVec out = {0};
    if (ids_reserve(&out, n / 3 + 16) != 0) { dn_seterr(err, errlen, "tokenizer: out of memory"); return -1; }
    const char *p = bytes, *e = bytes + n;
    for (;;) {
        const char *q = (flags & TOK_ALLOW_EOT) ? find_eot(p, (size_t)(e - p)) : NULL;
        const char *stop = q ? q : e;
        if (encode_text(t, p, (size_t)(stop - p), &out, err, errlen) != 0) { free(out.a); return -1; }
        if (!q) break;
        if (ids_reserve(&out, 1) != 0) { free(out.a); dn_seterr(err, errlen, "tokenizer: out of memory"); return -1; }
        out.a[out.n++] = t->eot;
        p = q + sizeof EOT_TEXT - 1;
    }
    *ids = out.a;
    *nids = out.n;
    return 0;
}

size_t tok_safe_cut(const char *s, size_t n) {
    for (size_t i = n > 0 ? n - 1 : 0; i >= 1; i--) {
        unsigned char a = (unsigned char)s[i - 1], b = (unsigned char)s[i];
        if (a >= 0x21 && a <= 0x7E && (b == ' ' || (b >= '\t' && b <= '\r'))) return i;
    }
    return 0;
}

/* ----------------------------------------------------------------------------------------------
 * Decoding */

const char *tok_token(const Tokenizer *t, int id, size_t *len) {
    if (id < 0 || id >= t->vocab_size) return NULL;
    *len = t->off[id + 1] - t->off[id];
    return t->bytes + t->off[id];
}

int tok_decode(const Tokenizer *t, const int *ids, size_t nids, char **out, size_t *outlen,
               char *err, size_t errlen) {
    size_t total = 0;
    for (size_t i = 0; i < nids; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab_size) {
            dn_seterr(err, errlen, "tokenizer: id %d at position %zu is out of range [0, %d)", ids[i], i,
                   t->vocab_size);
            return -1;
        }
        total += t->off[ids[i] + 1] - t->off[ids[i]];
    }
    char *b = malloc(total + 1);
    if (!b) { dn_seterr(err, errlen, "tokenizer: out of memory"); return -1; }
    size_t k = 0;
    for (size_t i = 0; i < nids; i++) {
        size_t l = t->off[ids[i] + 1] - t->off[ids[i]];
        memcpy(b + k, t->bytes + t->off[ids[i]], l);
        k += l;
    }
    b[k] = 0;
    *out = b;
    *outlen = k;
    return 0;
}
