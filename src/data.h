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

/* ----------------------------------------------------------------------------------------------
 * Shards read on demand, the shuffled training loader, the validation windows.
 *
 * A ShardSet is the sorted list of shards a glob matches, taken as one stream of tokens (shard 0,
 * then shard 1, ...); tokens are read where they are (pread), a few shards open at a time, so the
 * shards' total size does not matter. Every token read is checked against the vocabulary.
 *
 * Training windows (ShuffleLoader). A shard of n tokens holds the non-overlapping windows
 * w = 0, 1, ... with w*T + T + 1 <= n: window w is its tokens [w*T, w*T + T], T + 1 of them, the
 * first T the inputs and the last T the targets (neighbours share one token; the tail of fewer
 * than T tokens after the last window's inputs is never an input). Windows never cross a shard's
 * end. Numbered over all shards in order (shard 0's windows first), they are the W windows of an
 * epoch. Each row of a batch is its own window: rows come from the epoch's order, a Fisher-Yates
 * permutation of 0..W-1 drawn from a DNRng seeded by (seed, epoch), B consecutive entries per
 * batch; a batch that runs past the end of the order continues with the next epoch's. So every
 * window is visited exactly once per epoch, in an order that depends only on the seed and the
 * epoch. A shard smaller than one window (fewer than T + 1 tokens) is refused, naming it.
 *
 * Resume: the position is (epoch, next): the epoch of the next window and its index in that
 * epoch's order. The trainer stores them in DNTrainState's data_shard (= epoch) and data_pos
 * (= next); sl_seek recomputes the order from the seed, so nothing else is saved, and the same
 * --seed, -i, -b and -t give the same batches after --resume as a straight run.
 *
 * Validation windows (ValWindows). The validation shards are one stream of N tokens (sorted
 * order; a window may cross a shard boundary). n windows of T + 1 tokens start at
 *   start_i = i * floor((N - T - 1) / n),   i = 0 .. n-1,
 * spread evenly over the whole split, the same windows every evaluation. n = 0 takes every
 * non-overlapping window instead: start_i = i * T, i = 0 .. floor((N - 1) / T) - 1, exactly the
 * blocks that `./infer --eval SHARD -b T` scores. The loss of an evaluation is the mean over the
 * windows of each window's mean over its T predictions.
 *
 * Loss masks (src/mask.h). When a mask file lies beside a shard of the set, every shard must have
 * one; they are read whole (one byte per token) and checked when the set is opened. The loaders
 * then also give a target mask per row: tmask[b*T + t] = mask[first token of the window + t + 1],
 * 1 where target t is scored. A mask's period P (the example length) must equal T, so that every
 * window is one example (window w = tokens [wT, wT + T] = example w and the first token of
 * example w + 1, never scored). Masked validation data must be one shard, and its windows are
 * always every non-overlapping window (n = 0 above), so that they are the examples too.
 */

#define SHARDSET_OPEN 16  /* shards kept open at once (direct-mapped by index): bounded fds for any count */

typedef struct {
    int vocab_size;      /* every token read is checked against it */
    size_t nfiles;       /* shards matched by the pattern, sorted */
    char **files;
    size_t *file_ntok;   /* token count of each shard */
    size_t *start;       /* nfiles + 1: stream offset of each shard's first token; start[nfiles] = N */
    uint8_t **mask;      /* nfiles loss masks (src/mask.h), or NULL when the shards have none */
    int period;          /* the masks' period (0: none) */
    int fd[SHARDSET_OPEN];         /* open shards (-1: none): shard i in slot i % SHARDSET_OPEN */
    size_t fd_shard[SHARDSET_OPEN]; /* the shard in each slot */
} ShardSet;

/* Open the shards matching pattern (POSIX glob, sorted), checking every header; a shard with
 * fewer than min_tokens tokens is refused naming it (what = why that many are needed). Loads and
 * checks the loss masks beside the shards if there are any (all or none). */
int ss_open(ShardSet *s, const char *pattern, int vocab_size, size_t min_tokens, const char *what,
            char *err, size_t errlen);
/* Read n tokens of the stream from offset off (crossing shard ends if need be), each checked
 * against the vocabulary. Returns 0, or -1 with err naming the shard. */
int ss_read(ShardSet *s, size_t off, size_t n, uint16_t *out, char *err, size_t errlen);
/* The mask bytes of n tokens of the stream from offset off (only with masks). */
int ss_read_mask(const ShardSet *s, size_t off, size_t n, uint8_t *out, char *err, size_t errlen);
void ss_close(ShardSet *s);

typedef struct {
    int B, T;
    uint64_t seed;       /* --seed: the orders of all epochs follow from it */
    ShardSet set;
    size_t *first;       /* nfiles + 1: id of each shard's first window; first[nfiles] = nwindows */
    size_t nwindows;     /* W: windows per epoch */
    uint32_t *order;     /* this epoch's permutation of 0..W-1 */
    long epoch;          /* the epoch of order and of the next window */
    size_t next;         /* index in order of the next window */
    size_t *rows;        /* B: the window id of each row of the current batch */
    uint16_t *buf;       /* T + 1 tokens */
    int *inputs;         /* B*T: the current batch's inputs  [B, T] */
    int *targets;        /* B*T: the current batch's targets [B, T] */
    uint8_t *tmask;      /* B*T: 1 where a target is scored; NULL when the shards have no masks */
    int rank, world;     /* data parallelism: sl_set_rank (0 and 1 from sl_init) */
    int random;          /* sl_set_random: windows drawn at random instead of the epochs' order */
    size_t *rstart;      /* random: nfiles + 1 prefix sums of each shard's window starts (n - T) */
} ShuffleLoader;

/* Open the training shards matching pattern; starts at (epoch 0, window 0). Fails if nothing
 * matches, a shard is invalid or smaller than one window (T + 1 tokens). */
int sl_init(ShuffleLoader *sl, const char *pattern, int B, int T, int vocab_size, uint64_t seed,
            char *err, size_t errlen);
/* Fill inputs and targets with the next B windows of the order (moving to the next epoch's order
 * at its end); rows[b] says which window row b is. With world ranks (sl_set_rank) each call takes
 * the next world * B entries of the order, rank r's B rows being entries r*B .. r*B + B - 1 of
 * them: the ranks' rows together are the batch of world * B rows one loader would give, and every
 * rank's position moves alike, so (epoch, next) is the same on all of them. */
int sl_next(ShuffleLoader *sl, char *err, size_t errlen);
/* Random windows instead (the PyTorch reference's sampling): row g of training (counted over all
 * ranks, g = epoch * W + next) starts anywhere a window of T + 1 tokens fits inside one shard,
 * uniformly, drawn with replacement from a generator seeded by (seed, g); rows[b] is then the
 * window's stream offset. The position keeps its form (epoch, next) = (g / W, g % W), so sl_seek
 * and resume work alike. Refused for shards with loss masks (a row must be one example). */
int sl_set_random(ShuffleLoader *sl, char *err, size_t errlen);
/* This loader is rank `rank` of `world` (0 <= rank < world); fails otherwise. */
int sl_set_rank(ShuffleLoader *sl, int rank, int world, char *err, size_t errlen);
/* Read / restore the position (epoch, index of the next window in that epoch's order). sl_seek
 * fails for a negative epoch or an index beyond the epoch's W windows. */
void sl_position(const ShuffleLoader *sl, long *epoch, long *next);
int sl_seek(ShuffleLoader *sl, long epoch, long next, char *err, size_t errlen);
/* Where window id is: its shard and the offset of its first token in that shard. */
void sl_window(const ShuffleLoader *sl, size_t id, size_t *shard, size_t *pos);
void sl_free(ShuffleLoader *sl);

typedef struct {
    int T;
    ShardSet set;
    size_t ntok;         /* N: tokens of the whole split */
    size_t n;            /* windows */
    size_t stride;       /* window i starts at i * stride */
    uint16_t *buf;       /* T + 1 tokens */
} ValWindows;

/* The validation windows of the shards matching pattern: n spread windows, or every
 * non-overlapping one for n = 0. Fails if the split holds fewer than T + 1 tokens, or if n > 1
 * windows cannot start at distinct positions (n > N - T - 1). */
int vw_init(ValWindows *v, const char *pattern, int T, long n, int vocab_size, char *err, size_t errlen);
/* Window i (< v->n): T inputs and T targets. */
int vw_read(ValWindows *v, size_t i, int *inputs, int *targets, char *err, size_t errlen);
/* Window i's target mask (T bytes; only when v->set.mask is set). */
int vw_read_mask(const ValWindows *v, size_t i, uint8_t *tmask, char *err, size_t errlen);
void vw_free(ValWindows *v);

#ifdef __cplusplus
}
#endif
#endif /* DELTANET_DATA_H */
