/*
 * mask.h -- loss masks: which tokens of a token shard the loss scores (MQAR's answers, ...).
 *
 * A mask file lies beside its shard: the shard's path with its ".bin" suffix replaced by ".mask"
 * (".mask" appended when the name has no ".bin"): data/mqar/mqar_train.bin -> mqar_train.mask.
 * Like a shard it is a header of 256 int32 in the machine's byte order (little-endian on x86 and
 * ARM) followed by the data:
 *   [0] magic 20250601   [1] version 1   [2] N, the token count (the shard's)
 *   [3] period P: every example of the shard spans P tokens starting at a multiple of P (0: no
 *       such structure); the trainer then requires -t P, so that each row is one example
 *   [4] the number of ones in the data (a check on the bytes)   [5..255] zero
 * then N uint8, one per token of the shard: 1 where token i is scored when it is predicted (it is
 * the target of position i - 1), 0 elsewhere; any other byte value is refused. The file is exactly
 * 1024 + N bytes. Writers are atomic (dn_atomic_*); the reader checks the magic, the version, the
 * size, the count against the shard's, the reserved ints, every byte and the number of ones, and
 * refuses anything else with one line naming the file.
 */
#ifndef DELTANET_MASK_H
#define DELTANET_MASK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MASK_MAGIC 20250601
#define MASK_VERSION 1
#define MASK_HEADER_INTS 256
#define MASK_HEADER_BYTES (MASK_HEADER_INTS * 4)

/* The mask path of a shard (see above) into out (cap bytes). Returns 0, or -1 with err. */
int mask_path(char *out, size_t cap, const char *shard, char *err, size_t errlen);
/* Does a mask file exist beside this shard (whatever it holds)? 1 or 0. */
int mask_exists(const char *shard);
/* Write n mask bytes (each 0 or 1) with the given period, atomically. Returns 0, or -1 with err. */
int mask_write(const char *path, const uint8_t *mask, size_t n, int period, char *err, size_t errlen);
/* Read and validate a mask file of a shard of ntok tokens: *mask gets a malloc'd array of ntok
 * bytes, *period the header's period (may be NULL). Returns 0, or -1 with err (nothing to free). */
int mask_read(const char *path, size_t ntok, uint8_t **mask, int *period, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif /* DELTANET_MASK_H */
