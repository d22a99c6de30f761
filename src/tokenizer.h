/*
 * tokenizer.h -- GPT-2's byte-level BPE tokenizer: load, encode, decode.
 *
 * The algorithm. GPT-2 works on bytes, never on characters, so any byte string has an encoding.
 *   1. Pre-tokenise: GPT-2's regular expression
 *        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *      cuts the text into pieces (a word with its leading space, a number, a run of punctuation,
 *      a run of whitespace). PCRE2 runs it, JIT-compiled, in UTF + UCP mode; \s is spelt
 *      \p{White_Space}, Unicode's whitespace, which is what OpenAI's encoder.py (Python `regex`)
 *      and tiktoken use (PCRE2's own \s would also take U+180E). Bytes that are not valid UTF-8
 *      are never part of a match (PCRE2_MATCH_INVALID_UTF): each maximal run of them becomes a
 *      piece of its own, so a truncated character still gets the tokens of its prefix.
 *   2. Byte-pair merge each piece independently: start from one token per byte, then repeatedly
 *      merge the adjacent pair with the lowest rank in vocab.bpe (leftmost on ties) until no pair
 *      has a rank. A min-heap over a linked list makes this O(n log n) in the piece length; a
 *      cache from piece bytes to ids skips it for pieces seen before (most of them, in text).
 *   3. Concatenate the ids of the pieces.
 * Decoding concatenates the bytes of each token. encoder.json spells token bytes with GPT-2's
 * byte-to-printable-character map (byte b is the character b itself for the printable Latin-1
 * bytes, else U+0100 + n for the n-th other byte, e.g. ' ' -> 'Ġ'); the loader undoes it, so
 * tokens are held as raw bytes.
 *
 * The special token <|endoftext|> (id 50256, tok->eot) decodes to its text. Encoding never makes
 * it from text unless TOK_ALLOW_EOT is passed: by default the 13 bytes "<|endoftext|>" encode as
 * ordinary text (like tiktoken's encode_ordinary); with the flag each occurrence becomes 50256.
 * Callers that build documents (tokenize -o) insert eot themselves.
 *
 * Errors: functions return 0, or -1 with a one-line message in err that names the file and the
 * problem. A Tokenizer is read-only after tok_load except for tok_encode's piece cache, so use one
 * Tokenizer per thread for encoding; decoding takes a const Tokenizer and is thread-safe.
 */
#ifndef DELTANET_TOKENIZER_H
#define DELTANET_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TOK_DEFAULT_DIR "data/gpt2"  /* holds encoder.json and vocab.bpe */
#define TOK_GPT2_VOCAB 50257         /* tokens in encoder.json */
#define TOK_GPT2_MERGES 50000        /* merge rules in vocab.bpe */
#define TOK_GPT2_EOT 50256           /* <|endoftext|> */

#define TOK_ALLOW_EOT 1  /* tok_encode flag: the text "<|endoftext|>" becomes the eot token */

struct TokMap;      /* byte string -> value hash table (tokenizer.c) */
struct TokPairMap;  /* (left id, right id) -> (rank, merged id) hash table (tokenizer.c) */

typedef struct {
    int vocab_size;            /* 50257 */
    int eot;                   /* id of <|endoftext|>: 50256 */
    /* internals */
    char *bytes;               /* all token bytes; token i is bytes[off[i] .. off[i+1]) */
    uint32_t *off;             /* vocab_size + 1 offsets */
    int byte_token[256];       /* the single-byte token of each byte */
    struct TokPairMap *merges; /* merge rules */
    struct TokMap *cache;      /* piece bytes -> ids, filled by tok_encode */
    int *cache_ids;            /* the ids the cache points into */
    size_t cache_nids, cache_cap;
    void *re;                  /* compiled pre-tokeniser (pcre2_code *) */
    void *match;               /* its match data (pcre2_match_data *) */
} Tokenizer;

/* Load encoder.json and vocab.bpe from dir (NULL: TOK_DEFAULT_DIR) and compile the pattern.
 * Everything is checked: 50257 tokens with unique ids 0..50256, every single byte a token,
 * <|endoftext|> = 50256, a "#version" header and 50000 "left right" merge lines whose two tokens
 * and their concatenation are all in the vocabulary. On error *t holds nothing to free. */
int tok_load(Tokenizer *t, const char *dir, char *err, size_t errlen);
void tok_free(Tokenizer *t);

/* Encode n bytes (any bytes: NUL and invalid UTF-8 included). On success *ids is a malloc'd array
 * of *nids ids (free it; non-NULL even when *nids is 0). flags: 0 or TOK_ALLOW_EOT.
 * Fails only when out of memory or when PCRE2 reports an error. */
int tok_encode(Tokenizer *t, const char *bytes, size_t n, int flags, int **ids, size_t *nids,
               char *err, size_t errlen);

/* Decode ids to bytes. On success *out is a malloc'd buffer of *outlen bytes plus a terminating
 * NUL (the bytes may contain NULs themselves). An id outside [0, vocab_size) is an error. */
int tok_decode(const Tokenizer *t, const int *ids, size_t nids, char **out, size_t *outlen,
               char *err, size_t errlen);

/* The bytes of one token (not NUL-terminated), for streaming output; *len gets their count.
 * NULL for an id out of range. A token can end in the middle of a UTF-8 character: print the
 * bytes as they come and the terminal sees the character once its last byte is out. */
const char *tok_token(const Tokenizer *t, int id, size_t *len);

/* Where a long text can be cut so that encoding the two parts separately gives exactly the ids
 * of encoding it whole: the largest i in [1, n) such that s[i-1] is a printable non-space ASCII
 * character and s[i] is ASCII whitespace (no pre-token piece spans such a boundary and no piece
 * before it looks past it). Returns 0 if there is none. tokenize -o uses it to encode big files
 * in chunks. */
size_t tok_safe_cut(const char *s, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* DELTANET_TOKENIZER_H */
