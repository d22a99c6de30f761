/*
 * test_mask.c -- loss masks: the mask file (src/mask.h) round trip and every refusal of its reader
 * (one line naming the file); the shard set and loaders with masks (all or none, the period
 * against T, the target mask of each row, masked validation windows); the masked loss of the
 * reference model: finite differences of its gradient, positions outside the mask contribute
 * nothing, an all-ones mask is the plain mean.
 */
#include <unistd.h>
#include "test.h"
#include "../ref/reference.h"
#include "../src/data.h"
#include "../src/mask.h"

static char dir[] = "/tmp/test_mask_XXXXXX";

static void path_in(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", dir, name); }

/* Write raw bytes (a hand-made, possibly broken file). */
static void write_raw(const char *path, const void *a, size_t na, const void *b, size_t nb) {
    FILE *f = fopen(path, "wb");
    if (!f) { printf("cannot write %s\n", path); exit(2); }
    fwrite(a, 1, na, f);
    if (nb) fwrite(b, 1, nb, f);
    fclose(f);
}

static void file_format(void) {
    char p[512], err[DN_ERR_LEN];
    const size_t n = 50;
    uint8_t m[50], *back = NULL;
    for (size_t i = 0; i < n; i++) m[i] = i % 7 == 3;
    CHECK(mask_path(p, sizeof p, "data/x/train_000.bin", err, sizeof err) == 0 && !strcmp(p, "data/x/train_000.mask"), ".bin -> .mask: %s", p);
    CHECK(mask_path(p, sizeof p, "data/x/shard", err, sizeof err) == 0 && !strcmp(p, "data/x/shard.mask"), "no .bin: appended: %s", p);
    path_in(p, sizeof p, "a.mask");
    int period = -1;
    CHECK(mask_write(p, m, n, 10, err, sizeof err) == 0, "write: %s", err);
    CHECK(mask_read(p, n, &back, &period, err, sizeof err) == 0 && back && !memcmp(back, m, n) && period == 10, "round trip: %s", err);
    free(back);
    back = NULL;
    CHECK(mask_read(p, n + 1, &back, NULL, err, sizeof err) == -1 && strstr(err, "do not belong together") && strstr(err, "a.mask") && !back,
          "count against the shard's: %s", err);
    uint8_t bad2[3] = {0, 2, 1};
    CHECK(mask_write(p, bad2, 3, 0, err, sizeof err) == -1 && strstr(err, "not 0 or 1"), "writer refuses a 2: %s", err);
    /* broken files, each refused with one line naming the file */
    int32_t h[MASK_HEADER_INTS];
    struct { const char *what; int field; int32_t value; size_t nbytes; const char *expect; } cases[] = {
        {"magic", 0, 20240520, n, "not a mask file"},
        {"version", 1, 2, n, "version 2"},
        {"size", 2, 60, n, "file has"},
        {"short data", -1, 0, n - 5, "file has"},
        {"period", 3, -4, n, "invalid header"},
        {"ones", 4, 3, n, "header counts"},
        {"reserved", 9, 1, n, "must be zero"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        memset(h, 0, sizeof h);
        h[0] = MASK_MAGIC; h[1] = MASK_VERSION; h[2] = (int32_t)n; h[3] = 10;
        int ones = 0;
        for (size_t i = 0; i < n; i++) ones += m[i];
        h[4] = ones;
        if (cases[c].field >= 0) h[cases[c].field] = cases[c].value;
        write_raw(p, h, sizeof h, m, cases[c].nbytes);
        back = NULL;
        int rc = mask_read(p, n, &back, NULL, err, sizeof err);
        CHECK(rc == -1 && strstr(err, cases[c].expect) && strstr(err, "a.mask") && !strchr(err, '\n') && !back,
              "broken %s refused: %s", cases[c].what, err);
    }
    memset(h, 0, sizeof h);
    h[0] = MASK_MAGIC; h[1] = MASK_VERSION; h[2] = 3; h[4] = 1;
    write_raw(p, h, sizeof h, bad2, 3);
    CHECK(mask_read(p, 3, &back, NULL, err, sizeof err) == -1 && strstr(err, "byte 1") && strstr(err, "not 0 or 1"), "a byte 2 refused: %s", err);
    CHECK(mask_read(dir, 3, &back, NULL, err, sizeof err) == -1 && strstr(err, "directory"), "a directory refused: %s", err);
}

/* Two shards of examples of T tokens (+1), masks beside them; the loaders give target masks. */
static void loaders(void) {
    const int T = 8, B = 3, V = 50;
    char p0[512], p1[512], m0[512], m1[512], pat[512], err[DN_ERR_LEN];
    path_in(p0, sizeof p0, "s_000.bin"); path_in(p1, sizeof p1, "s_001.bin");
    path_in(pat, sizeof pat, "s_*.bin");
    mask_path(m0, sizeof m0, p0, err, sizeof err); mask_path(m1, sizeof m1, p1, err, sizeof err);
    const size_t n = 5 * (size_t)T + 1;
    uint16_t tok[41];
    uint8_t msk[41];
    for (size_t i = 0; i < n; i++) { tok[i] = (uint16_t)(i % V); msk[i] = (i % T) == 5; }
    shard_write(p0, tok, n, err, sizeof err);
    shard_write(p1, tok, n, err, sizeof err);
    ShuffleLoader sl;
    CHECK(sl_init(&sl, pat, B, T, V, 1, err, sizeof err) == 0 && sl.tmask == NULL, "no masks: no target mask: %s", err);
    sl_free(&sl);
    mask_write(m0, msk, n, T, err, sizeof err);
    CHECK(sl_init(&sl, pat, B, T, V, 1, err, sizeof err) == -1 && strstr(err, "s_001.bin") && strstr(err, "all or none"),
          "one shard without its mask refused: %s", err);
    mask_write(m1, msk, n, T, err, sizeof err);
    CHECK(sl_init(&sl, pat, B, 4, V, 1, err, sizeof err) == -1 && strstr(err, "-t 8"), "T against the period, with the hint: %s", err);
    if (sl_init(&sl, pat, B, T, V, 1, err, sizeof err) != 0) { CHECK(0, "sl_init: %s", err); return; }
    int good = 1;
    for (int step = 0; step < 4; step++) {
        sl_next(&sl, err, sizeof err);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) good &= sl.tmask[b * T + t] == (t + 1 == 5); /* target t is token t + 1 of the example */
    }
    CHECK(good, "each row's target mask is the mask of its targets");
    err[0] = 0;
    CHECK(sl_set_random(&sl, err, sizeof err) == -1 && strstr(err, "masked examples") && !sl.random,
          "random windows refused on masked shards: %s", err);
    sl_free(&sl);
    /* pattern catching the masks too */
    path_in(pat, sizeof pat, "s_*");
    CHECK(sl_init(&sl, pat, B, T, V, 1, err, sizeof err) == -1 && strstr(err, "a loss mask, not a token shard"), "a mask as a shard: %s", err);
    /* validation: one masked shard, the windows are the examples */
    ValWindows v;
    path_in(pat, sizeof pat, "s_*.bin");
    CHECK(vw_init(&v, pat, T, 3, V, err, sizeof err) == -1 && strstr(err, "one shard"), "masked val of two shards refused: %s", err);
    CHECK(vw_init(&v, p0, T, 3, V, err, sizeof err) == 0 && v.n == 5 && v.stride == (size_t)T, "masked val: every example: %s", err);
    uint8_t tm[8];
    CHECK(vw_read_mask(&v, 2, tm, err, sizeof err) == 0 && tm[4] == 1 && tm[3] == 0, "val target mask");
    vw_free(&v);
    /* a mask of another shard (same period, other length) */
    mask_write(m1, msk, n - 1, T, err, sizeof err);
    path_in(pat, sizeof pat, "s_*.bin");
    CHECK(sl_init(&sl, pat, B, T, V, 1, err, sizeof err) == -1 && strstr(err, "do not belong together"), "mismatched mask: %s", err);
    unlink(p0); unlink(p1); unlink(m0); unlink(m1);
}

static void masked_loss(void) {
    DNConfig c;
    test_config(&c, "DG", 12, 2, 6, 20, 37, 40, 2, 1, 3, 0);
    DNParamTable t;
    char err[256];
    if (dn_build_param_table(&t, &c, err, sizeof err)) { CHECK(0, "%s", err); return; }
    const int B = 2, T = 9, N = B * T;
    DNRng r;
    dn_rng_seed(&r, 11);
    double *p = test_random_params(&t, &r), *g = xcalloc(t.total, 8), *g2 = xcalloc(t.total, 8);
    int *in = xcalloc(N, sizeof(int)), *tg = xcalloc(N, sizeof(int)), *tg2 = xcalloc(N, sizeof(int));
    unsigned char mask[18], ones[18];
    int count = 0;
    for (int i = 0; i < N; i++) {
        in[i] = (int)(dn_rng_u64(&r) % 37); tg[i] = (int)(dn_rng_u64(&r) % 37);
        mask[i] = i % 4 == 1; count += mask[i]; ones[i] = 1;
        tg2[i] = mask[i] ? tg[i] : (tg[i] + 5) % 37; /* other targets outside the mask */
    }
    RefModel_f64 *m = ref_model_create_f64(&t, B, T, 4);
    const double loss = ref_model_forward_masked_f64(m, p, in, tg, mask);
    double direct = 0;
    for (int i = 0; i < N; i++) {
        if (!mask[i]) continue;
        const double *z = ref_model_logits_f64(m) + (size_t)i * 37;
        double mx = z[0], s = 0;
        for (int j = 1; j < 37; j++) if (z[j] > mx) mx = z[j];
        for (int j = 0; j < 37; j++) s += exp(z[j] - mx);
        direct += mx + log(s) - z[tg[i]];
    }
    CHECK_REL(fabs(loss - direct / count) / loss, 1e-13, "masked loss = mean CE over the %d masked positions", count);
    ref_model_backward_f64(m, p, g);
    /* finite differences of the masked loss, every element of every tensor */
    const double h = 1e-6;
    double num = 0, den = 0;
    for (size_t j = 0; j < t.total; j++) {
        const double save = p[j];
        p[j] = save + h;
        const double lp = ref_model_forward_masked_f64(m, p, in, tg, mask);
        p[j] = save - h;
        const double lm = ref_model_forward_masked_f64(m, p, in, tg, mask);
        p[j] = save;
        const double fd = (lp - lm) / (2 * h);
        num += (fd - g[j]) * (fd - g[j]);
        den += fd * fd;
    }
    CHECK_REL(sqrt(num / den), 1e-6, "gradient of the masked loss vs finite differences (%zu parameters)", t.total);
    /* targets outside the mask change nothing */
    const double loss2 = ref_model_forward_masked_f64(m, p, in, tg2, mask);
    ref_model_backward_f64(m, p, g2);
    CHECK(loss2 == loss && !memcmp(g, g2, t.total * 8), "other targets outside the mask: same loss, same gradients");
    /* an all-ones mask is the plain mean */
    memset(g, 0, t.total * 8); memset(g2, 0, t.total * 8);
    const double la = ref_model_forward_masked_f64(m, p, in, tg, ones);
    ref_model_backward_f64(m, p, g);
    const double lb = ref_model_forward_f64(m, p, in, tg);
    ref_model_backward_f64(m, p, g2);
    CHECK_REL(fabs(la - lb) / lb, 1e-14, "all-ones mask == unmasked loss");
    CHECK_REL(rel_err_d(g, g2, t.total), 1e-13, "all-ones mask == unmasked gradients");
    /* nothing masked: loss 0, no gradient */
    unsigned char none[18] = {0};
    memset(g, 0, t.total * 8);
    const double l0 = ref_model_forward_masked_f64(m, p, in, tg, none);
    ref_model_backward_f64(m, p, g);
    double gs = 0;
    for (size_t j = 0; j < t.total; j++) gs += fabs(g[j]);
    CHECK(l0 == 0 && gs == 0, "empty mask: loss %g, |grad| %g", l0, gs);
    ref_model_free_f64(m);
    free(p); free(g); free(g2); free(in); free(tg); free(tg2);
    dn_free_param_table(&t);
}

int main(void) {
    if (!mkdtemp(dir)) { printf("mkdtemp failed\n"); return 2; }
    file_format();
    loaders();
    masked_loss();
    rmdir(dir);
    return test_summary("test_mask");
}
