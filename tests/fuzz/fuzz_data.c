/*
 * fuzz_data.c -- libFuzzer target for the token-shard reader and the data loader (data.h). The
 * input is one shard file; it is written twice (s0.bin, s1.bin) so that the loader also moves
 * between shards and wraps around. The batch shape follows from the input's size (B in 1..3,
 * T in 1..8), so a mutated shard is read with several shapes. Checked besides memory errors:
 * the header-only and the full reader agree on the count; every token read is below the vocab;
 * dl_init checks headers only, so a shard that shard_read refuses (an id out of range) must make
 * the first dl_next fail, and a valid one must never; every batch satisfies
 * targets[b][t] == inputs[b][t+1]; the position read back seeks.
 */
#include "fuzz.h"
#include "../../src/data.h"

#define VOCAB 50257

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char p0[600], p1[600], pattern[600], err[DN_ERR_LEN];
    fz_write(p0, sizeof p0, "s0.bin", data, size);
    fz_write(p1, sizeof p1, "s1.bin", data, size);
    snprintf(pattern, sizeof pattern, "%s/s*.bin", fz_dir());

    size_t nh = 0, n = 0;
    uint16_t *tok = NULL;
    int rh = shard_read_header(p0, &nh, err, sizeof err);
    int rr = shard_read(p0, VOCAB, &tok, &n, err, sizeof err);
    if (rr == 0) {
        if (rh != 0 || nh != n) fz_fail("shard_read read %zu tokens, shard_read_header said %d/%zu", n, rh, nh);
        if (SHARD_HEADER_BYTES + 2 * n != size) fz_fail("shard of %zu bytes read as %zu tokens", size, n);
        for (size_t i = 0; i < n; i++)
            if (tok[i] >= VOCAB) fz_fail("token %zu is %d >= vocab", i, tok[i]);
        free(tok);
    }

    int B = 1 + (int)(size % 3), T = 1 + (int)(size / 3 % 8);
    DataLoader dl;
    if (dl_init(&dl, pattern, B, T, VOCAB, err, sizeof err) != 0) return 0;
    if (rr != 0) {
        if (dl_next(&dl, err, sizeof err) == 0) fz_fail("dl_next gave a batch from a shard that shard_read refuses");
        dl_free(&dl);
        return 0;
    }
    long epoch = dl_epoch_batches(&dl);
    long steps = 2 * epoch + 1 < 64 ? 2 * epoch + 1 : 64;
    for (long s = 0; s < steps; s++) {
        if (dl_next(&dl, err, sizeof err)) fz_fail("dl_next failed on valid shards: %s", err);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                int x = dl.inputs[b * T + t], y = dl.targets[b * T + t];
                if (x < 0 || x >= VOCAB || y < 0 || y >= VOCAB) fz_fail("batch token out of range");
                if (t + 1 < T && y != dl.inputs[b * T + t + 1]) fz_fail("targets are not the shifted inputs");
            }
    }
    long sh, pos;
    dl_position(&dl, &sh, &pos);
    if (dl_seek(&dl, sh, pos, err, sizeof err)) fz_fail("cannot seek to its own position (%ld, %ld): %s", sh, pos, err);
    if (dl_seek(&dl, 2, 0, err, sizeof err) == 0) fz_fail("seek to shard 2 of 2 succeeded");
    if (dl_seek(&dl, 0, (long)n + 1, err, sizeof err) == 0) fz_fail("seek past the end of a shard succeeded");
    dl_reset(&dl);
    if (dl_next(&dl, err, sizeof err)) fz_fail("dl_next after dl_reset failed: %s", err);
    dl_free(&dl);
    return 0;
}
