/*
 * data.h -- token shards (llm.c's format) and the training data loader.
 *
 * A shard is a header of 256 int32 -- [0] magic 20240520, [1] version 1, [2] the token count N,
 * the rest zero -- followed by N uint16 token ids, all in the machine's byte order (little-endian
 * on x86 and ARM, as llm.c writes them); the file is exactly
 * 1024 + 2 N bytes. Writers are atomic (model.h's dn_atomic_*: temporary file, fsync, rename),
 * so a shard is either complete or absent. Readers open only regular files (a FIFO or a directory
 * is refused at once, never read), check the magic, the version, the size against N and every id
 * against the vocabulary, and refuse anything else with one line naming the file (escaped: a name
 * from a glob may hold control characters).
 *
 * The loader walks a list of shards (a glob pattern, sorted) as llm.c does. A batch is B rows of
 * T + 1 consecutive tokens taken from one contiguous window of B*T + 1 tokens starting at the
 * position (shard, pos): row b is window[b*T .. b*T + T], its first T tokens are the inputs and
 * its last T the targets (inputs[b][t] = window[b*T + t], targets[b][t] = window[b*T + t + 1]).
 * The position then advances by B*T. When fewer than B*T + 1 tokens are left in the shard the
 * loader moves to the start of the next shard, and after the last shard back to the first, so
 * the tail of each shard (< B*T + 1 tokens) is skipped. The position can be read and set, which
 * makes resume exact: restoring (shard, pos) gives the same batches as before.
 *
 * Validation: open the val shard(s) in a second loader; before each evaluation call dl_reset()
 * and take n = dl_epoch_batches() (or fewer) batches with dl_next(): the same batches each time.
 */
#ifndef DELTANET_DATA_H
#define DELTANET_DATA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHARD_MAGIC 20240520
#define SHARD_VERSION 1
#define SHARD_HEADER_INTS 256
#define SHARD_HEADER_BYTES (SHARD_HEADER_INTS * 4)
#define SHARD_MAX_TOKENS 2147483647L  /* the count is an int32 */

/* Write n tokens to path atomically. Returns 0, or -1 with err. */
int shard_write(const char *path, const uint16_t *tokens, size_t n, char *err, size_t errlen);

/* Check a shard's header and size without reading the tokens; *ntok gets the token count. */
int shard_read_header(const char *path, size_t *ntok, char *err, size_t errlen);

/* Read a whole shard: *tokens is a malloc'd array of *ntok ids, every one < vocab_size.
 * Returns 0, or -1 with err (nothing to free). */
int shard_read(const char *path, int vocab_size, uint16_t **tokens, size_t *ntok,
               char *err, size_t errlen);

typedef struct {
    int B, T;            /* batch rows, sequence length */
    int vocab_size;      /* every token is checked against it */
    size_t nfiles;       /* shards matched by the pattern, sorted */
    char **files;
    size_t *file_ntok;   /* token count of each shard */
    size_t shard, pos;   /* where the next batch starts: shard index, token offset */
    uint16_t *tokens;    /* the loaded shard's tokens */
    size_t loaded;       /* index of the loaded shard (nfiles: none) */
    int *inputs;         /* B*T: the current batch's inputs  [B, T] */
    int *targets;        /* B*T: the current batch's targets [B, T] */
} DataLoader;

/* Open the shards matching pattern (POSIX glob, sorted). Fails if nothing matches, or a shard is
 * invalid or holds fewer than B*T + 1 tokens. Starts at (0, 0). */
int dl_init(DataLoader *dl, const char *pattern, int B, int T, int vocab_size,
            char *err, size_t errlen);
/* Fill dl->inputs and dl->targets with the next batch (loading the next shard if needed). */
int dl_next(DataLoader *dl, char *err, size_t errlen);
/* Read / restore the position of the next batch (store both in checkpoints). dl_seek fails for a
 * shard index out of range or a position beyond the end of that shard. */
void dl_position(const DataLoader *dl, long *shard, long *pos);
int dl_seek(DataLoader *dl, long shard, long pos, char *err, size_t errlen);
/* Back to the first batch of the first shard. */
void dl_reset(DataLoader *dl);
/* Distinct batches in one pass over all shards: sum of (N_shard - 1) / (B*T). */
long dl_epoch_batches(const DataLoader *dl);
void dl_free(DataLoader *dl);

#ifdef __cplusplus
}
#endif
#endif /* DELTANET_DATA_H */
