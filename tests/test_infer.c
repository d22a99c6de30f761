/*
 * test_infer.c -- tests of infer.c (included here with INFER_TESTING, so its static functions are
 * callable) and of the ./infer program (run through system()).
 *
 *   1. Step-by-step decoding (forward_step, one token at a time, recurrent state) gives the logits
 *      of the reference's full-sequence chunkwise forward (ref_model_forward), fp32, on a "DSGD"
 *      hybrid with grouped KV heads, a window smaller than T (the ring wraps), a global cache that
 *      has to grow, and T = 77 (not a multiple of the chunk size 64). Both are also compared with
 *      the float64 reference, and a reset state decodes the sequence again bit for bit.
 *   2. ./infer --eval equals the reference's chunkwise mean loss over the same blocks (to 1e-4);
 *      its batched form (one forward per block) equals the sequential reference (chunk 0) and
 *      --eval-step (the decode path) to 1e-5, with a partial last block and with --eval-max.
 *   3. Memory per token: a "DSDS" model decodes 100k sampled tokens; the process RSS and the
 *      recurrent-state bytes after 10k and after 100k tokens are the same (small slack for RSS).
 *      Control: a model with a global layer grows by its KV cache, and the same RSS measurement
 *      sees it (so a constant RSS above means something).
 *   4. The sampler: greedy, top-k, top-p, and sampled frequencies against the probabilities; on a
 *      model's logits, tiny temperatures (1e-300 .. 1e-30) pick the argmax, T = 1 follows the
 *      softmax, the largest accepted T (1e6) is uniform; NaN logits are never drawn, and the CDF
 *      walk never falls off its end onto a token of probability 0.
 *   5. The command line: bad inputs each give one clear message and a non-zero exit (a missing
 *      checkpoint, another format version, a shard with a wrong magic / a token count larger than
 *      the file / an id outside the vocabulary, a cut-short encoder.json, a prompt longer than
 *      --max-context, bad flag values); an empty prompt generates; seeds are deterministic;
 *      -t 1e-40 gives -t 0's text.
 *   6. A sliding window of 2^31-1 keys loads and decodes exactly as a global layer, its ring the
 *      size of the positions seen; -f FILE and -f - read prompts over 128 KiB whole; FIFOs (as a
 *      prompt file, shard, checkpoint, encoder.json, vocab.bpe) are refused at once (alarm() and
 *      timeout guard against a hang), directories refused naming what they are.
 * Temporary files live in a mkdtemp folder under /tmp, removed at the end.
 */
#define INFER_TESTING
#include "../infer.c"
#include "test.h"

#include <signal.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>

/* Under AddressSanitizer (make test SAN=1) RSS also holds the quarantine of freed blocks and the
 * shadow memory, so the RSS checks below are skipped there. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

static char g_dir[256];

/* A small config: layers, vocab, d_model, DeltaNet heads, attention heads / KV heads, window. */
static DNConfig small_cfg(const char *layers, int vocab, int D, int H, int Hq, int Hkv, int window, int tied) {
    DNConfig c;
    dn_config_preset(&c, "tiny");
    c.vocab_size = vocab;
    c.padded_vocab = dn_pad_vocab(vocab);
    c.d_model = D;
    c.n_head = H;
    c.head_dim = D / H;
    c.hidden_size = dn_default_hidden(D);
    c.attn_heads = Hq;
    c.attn_kv_heads = Hkv;
    c.window = window;
    c.tie_embeddings = tied;
    char err[DN_ERR_LEN];
    if (dn_config_set_layers(&c, layers, err, sizeof err) || dn_config_validate(&c, err, sizeof err)) {
        fprintf(stderr, "bad test config: %s\n", err);
        exit(1);
    }
    return c;
}

/* Random weights, larger than the N(0, 0.02) init (std ~0.2, norm gains 1 +- 0.2), so that the
 * attention patterns and the delta-rule state matter to the logits. Returns t->total floats. */
static float *random_params(const DNParamTable *t, uint64_t seed) {
    float *w = xcalloc(t->total, sizeof(float));
    dn_init_params(t, w, seed);
    DNRng r;
    dn_rng_seed(&r, seed + 1);
    for (int i = 0; i < t->n_params; i++) {
        const DNParam *p = &t->params[i];
        for (size_t j = 0; j < p->numel; j++) {
            float *x = &w[p->offset + j];
            /* A_log and dt_bias (init_std < 0) keep fla's init: scaled, the decay would be all or nothing */
            if (p->init_std < 0.0f) continue;
            *x = p->init_std == 0.0f ? 1.0f + 0.2f * dn_rng_normal(&r) : *x * 10.0f;
        }
    }
    return w;
}

static void write_ckpt(const char *path, const DNConfig *c, uint64_t seed, DNDtype dt, DNParamTable *t_out, float **w_out) {
    char err[DN_ERR_LEN];
    DNParamTable t;
    if (dn_build_param_table(&t, c, err, sizeof err)) { fprintf(stderr, "%s\n", err); exit(1); }
    float *w = random_params(&t, seed);
    if (dn_checkpoint_write(path, &t, w, dt, NULL, err, sizeof err)) { fprintf(stderr, "%s\n", err); exit(1); }
    if (t_out) *t_out = t; else dn_free_param_table(&t);
    if (w_out) *w_out = w; else free(w);
}

static void path_in(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", g_dir, name); }

/* Run a shell command with stdout and stderr captured; returns the exit status (-1 if killed). */
static int run_cmd(const char *cmd, char *out, size_t outn, char *errbuf, size_t errn) {
    char full[4096], po[300], pe[300];
    path_in(po, sizeof po, "cmd.out");
    path_in(pe, sizeof pe, "cmd.err");
    snprintf(full, sizeof full, "%s >%s 2>%s", cmd, po, pe);
    int st = system(full);
    const char *paths[2] = {po, pe};
    char *bufs[2] = {out, errbuf};
    size_t ns[2] = {outn, errn};
    for (int i = 0; i < 2; i++) {
        bufs[i][0] = 0;
        FILE *f = fopen(paths[i], "rb");
        if (!f) continue;
        size_t k = fread(bufs[i], 1, ns[i] - 1, f);
        bufs[i][k] = 0;
        fclose(f);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The line of a message that starts with "infer:" (else its first line), for printing. */
static const char *first_line(const char *s, char *buf, size_t n) {
    const char *e = strstr(s, "infer:");
    if (e && (e == s || e[-1] == '\n')) s = e;
    size_t k = 0;
    while (k + 1 < n && s[k] && s[k] != '\n') { buf[k] = s[k]; k++; }
    buf[k] = 0;
    return buf;
}

/* ---- 1. step-by-step decoding == full-sequence forward --------------------------------------- */

static void test_step_logits(void) {
    printf("-- step-by-step decoding vs the full-sequence reference forward\n");
    DNConfig c = small_cfg("DSGD", 512, 64, 2, 4, 2, 8, 0);
    char path[300], err[DN_ERR_LEN];
    path_in(path, sizeof path, "dsgd.bin");
    write_ckpt(path, &c, 7, DN_F32, NULL, NULL);
    Model m;
    CHECK(model_load(&m, path, err, sizeof err) == 0, "model_load: %s", err);
    const int T = 77;
    int tokens[77];
    DNRng r;
    dn_rng_seed(&r, 11);
    for (int t = 0; t < T; t++) tokens[t] = (int)(dn_rng_u64(&r) % (uint64_t)c.vocab_size);

    RefModel *rm = ref_model_create(&m.t, 1, T, 64);
    ref_model_forward(rm, m.w, tokens, NULL);
    const float *ref = ref_model_logits(rm);
    double *w64 = xcalloc(m.t.total, sizeof(double));
    for (size_t i = 0; i < m.t.total; i++) w64[i] = m.w[i];
    RefModel_f64 *rm64 = ref_model_create_f64(&m.t, 1, T, 64);
    ref_model_forward_f64(rm64, w64, tokens, NULL);
    const double *ref64 = ref_model_logits_f64(rm64);

    size_t V = (size_t)c.vocab_size;
    float *step = xcalloc((size_t)T * V, sizeof(float)), *again = xcalloc((size_t)T * V, sizeof(float));
    float *ref64f = xcalloc((size_t)T * V, sizeof(float));
    for (size_t i = 0; i < (size_t)T * V; i++) ref64f[i] = (float)ref64[i];
    RunState s;
    runstate_build(&s, &c, 1 << 20);
    for (int t = 0; t < T; t++) memcpy(step + t * V, forward_step(&m, &s, tokens[t], t, 1), V * sizeof(float));
    int grew = s.L[2].rows;
    runstate_reset(&s, &c);
    for (int t = 0; t < T; t++) memcpy(again + t * V, forward_step(&m, &s, tokens[t], t, 1), V * sizeof(float));
    double worst = 0;
    int worst_t = 0;
    for (int t = 0; t < T; t++) {
        double e = rel_err_f(step + t * V, ref + t * V, V);
        if (e > worst) { worst = e; worst_t = t; }
    }
    printf("   model DSGD, D=64, DeltaNet heads 2, attention heads 4 / KV heads 2, window 8, T=%d, vocab %zu\n", T, V);
    CHECK_REL(rel_err_f(step, ref, (size_t)T * V), 1e-5, "step logits vs chunkwise ref_model_forward (all %d positions)", T);
    CHECK_REL(worst, 1e-5, "worst single position (t=%d)", worst_t);
    CHECK_REL(rel_err_f(step, ref64f, (size_t)T * V), 1e-5, "step logits vs the float64 reference");
    CHECK_REL(rel_err_f(ref, ref64f, (size_t)T * V), 1e-5, "(for scale) float chunkwise reference vs float64");
    CHECK(memcmp(step, again, (size_t)T * V * sizeof(float)) == 0, "a reset state decodes the same logits bit for bit");
    CHECK(grew >= T && c.layers[2] == 'G', "the global cache grew from %d to %d rows", INFER_CACHE_ROWS0, grew);
    size_t VD = (size_t)c.vocab_size * c.d_model;
    CHECK(model_bytes_per_token(&m) == 4 * (m.t.total_real - VD + c.d_model), "weight bytes per token, untied: all but the embedding, plus one row");
    CHECK(s.L[1].rows == c.window, "the sliding-window ring stays %d rows (has %d)", c.window, s.L[1].rows);

    /* Pure DeltaNet with tied embeddings, T = 130 (three chunks): one more comparison. */
    DNConfig c2 = small_cfg("DD", 300, 48, 3, 3, 3, 4, 1);
    DNParamTable t2;
    char err2[DN_ERR_LEN];
    dn_build_param_table(&t2, &c2, err2, sizeof err2);
    Model m2 = {.cfg = c2, .t = t2, .w = random_params(&t2, 5)};
    const int T2 = 130;
    int tok2[130];
    for (int t = 0; t < T2; t++) tok2[t] = (int)(dn_rng_u64(&r) % 300);
    RefModel *rm2 = ref_model_create(&m2.t, 1, T2, 64);
    ref_model_forward(rm2, m2.w, tok2, NULL);
    float *step2 = xcalloc((size_t)T2 * 300, sizeof(float));
    RunState s2;
    runstate_build(&s2, &c2, 1 << 20);
    for (int t = 0; t < T2; t++) memcpy(step2 + t * 300, forward_step(&m2, &s2, tok2[t], t, 1), 300 * sizeof(float));
    CHECK_REL(rel_err_f(step2, ref_model_logits(rm2), (size_t)T2 * 300), 1e-5, "pure DeltaNet DD, tied, K=16, T=%d: step vs chunkwise", T2);
    CHECK(model_bytes_per_token(&m2) == 4 * (m2.t.total_real + c2.d_model), "weight bytes per token, tied: every tensor, plus one embedding row");
    runstate_free(&s2, &c2);
    ref_model_free(rm2);
    model_free(&m2);
    free(step2);

    /* Gated DeltaNet hybrid NSGN (untied, its own geometry: 3 heads of K 8, V 16), T = 77: the
     * decode step (decay and gate included) against the chunkwise reference; its checkpoint is
     * test_eval's second model. */
    DNConfig c3 = small_cfg("NSGN", 512, 48, 3, 4, 2, 8, 0);
    c3.gdn_heads = 3; c3.gdn_head_dim = 8; c3.gdn_expand_v = 2;
    char path3[300];
    path_in(path3, sizeof path3, "nsgn.bin");
    write_ckpt(path3, &c3, 9, DN_F32, NULL, NULL);
    Model m3;
    CHECK(model_load(&m3, path3, err, sizeof err) == 0, "model_load NSGN: %s", err);
    RefModel *rm3 = ref_model_create(&m3.t, 1, T, 64);
    ref_model_forward(rm3, m3.w, tokens, NULL);
    float *step3 = xcalloc((size_t)T * V, sizeof(float));
    RunState s3;
    runstate_build(&s3, &c3, 1 << 20);
    for (int t = 0; t < T; t++) memcpy(step3 + t * V, forward_step(&m3, &s3, tokens[t], t, 1), V * sizeof(float));
    CHECK_REL(rel_err_f(step3, ref_model_logits(rm3), (size_t)T * V), 1e-5,
              "gated DeltaNet hybrid NSGN (3 heads, K 8, V 16), T=%d: step logits vs chunkwise reference", T);
    CHECK(runstate_bytes(&s3, &c3) >= 2 * (gdn_state_floats(&c3) + gdn_tail_floats(&c3)) * sizeof(float), "runstate_bytes counts the gated states");
    runstate_free(&s3, &c3);
    ref_model_free(rm3);
    model_free(&m3);
    free(step3);

    runstate_free(&s, &c);
    ref_model_free(rm);
    ref_model_free_f64(rm64);
    free(w64); free(step); free(again); free(ref64f);
    model_free(&m);
}

/* ---- 2. --eval == the reference's chunkwise loss ---------------------------------------------- */

static void test_eval(const char *ckname) {
    printf("-- ./infer --eval vs the chunkwise reference loss (%s)\n", ckname);
    char ck[300], sh[300], cmd[1024], out[8192], errb[8192], err[DN_ERR_LEN];
    path_in(ck, sizeof ck, ckname);   /* written by test_step_logits */
    path_in(sh, sizeof sh, "eval.bin");
    Model m;
    CHECK(model_load(&m, ck, err, sizeof err) == 0, "model_load: %s", err);
    const int block = 100, ntok = 1 + 3 * block + 37;  /* 3 full blocks + one of 37 predictions */
    uint16_t toks[338];
    DNRng r;
    dn_rng_seed(&r, 3);
    for (int i = 0; i < ntok; i++) toks[i] = (uint16_t)(dn_rng_u64(&r) % (uint64_t)m.cfg.vocab_size);
    CHECK(shard_write(sh, toks, (size_t)ntok, err, sizeof err) == 0, "shard_write: %s", err);

    /* reference: each block from a zero state, chunk 64 (so a block of 100 spans two chunks), and
     * the sequential form (chunk 0) that the batched eval follows */
    double sum = 0, sum_seq = 0, last_seq = 0;
    long npred = 0;
    for (int start = 0; start + 1 < ntok; start += block) {
        int len = ntok - 1 - start < block ? ntok - 1 - start : block;
        int in[100], tg[100];
        for (int t = 0; t < len; t++) { in[t] = toks[start + t]; tg[t] = toks[start + t + 1]; }
        RefModel *rm = ref_model_create(&m.t, 1, len, 64), *rs = ref_model_create(&m.t, 1, len, 0);
        sum += (double)ref_model_forward(rm, m.w, in, tg) * len;
        last_seq = ref_model_forward(rs, m.w, in, tg);
        sum_seq += last_seq * len;
        npred += len;
        ref_model_free(rm);
        ref_model_free(rs);
    }
    double ref_loss = sum / npred, seq_loss = sum_seq / npred;

    RunState s;
    runstate_build(&s, &m.cfg, 1 << 20);
    long np2 = 0, np3 = 0;
    double here = eval_tokens_step(&m, &s, toks, (size_t)ntok, block, 0, &np2);
    CHECK(np2 == npred, "eval_tokens_step scored %ld predictions, reference %ld", np2, npred);
    CHECK_REL(fabs(here - ref_loss), 1e-4, "eval_tokens_step loss %.7f vs reference %.7f (abs diff)", here, ref_loss);
    double batched = eval_tokens(&m, toks, (size_t)ntok, block, 0, &np3);
    CHECK(np3 == npred, "eval_tokens (batched) scored %ld predictions, reference %ld", np3, npred);
    CHECK_REL(fabs(batched - ref_loss), 1e-4, "eval_tokens loss %.7f vs chunkwise reference %.7f (abs diff)", batched, ref_loss);
    CHECK_REL(fabs(batched - seq_loss), 1e-5, "eval_tokens loss %.7f vs sequential (chunk 0) reference %.7f (abs diff)", batched, seq_loss);
    CHECK_REL(fabs(batched - here), 1e-5, "batched eval %.7f vs --eval-step %.7f, partial last block of 37 (abs diff)", batched, here);
    /* the last, partial block alone (37 predictions) against the sequential reference */
    BlockState bs;
    blockstate_build(&bs, &m.cfg, block);
    for (int t = 0; t < 37; t++) { bs.inputs[t] = toks[3 * block + t]; bs.targets[t] = toks[3 * block + t + 1]; }
    double part = forward_block(&m, &bs, 37) / 37;
    CHECK_REL(fabs(part - last_seq), 1e-5, "forward_block on the 37-token last block %.7f vs ref_model_forward(T=37, chunk 0) %.7f", part, last_seq);
    blockstate_free(&bs);
    /* --eval-max cutting a block short: the batched eval scores the prefix, like the step one */
    double cut_b = eval_tokens(&m, toks, (size_t)ntok, block, 150, &np3);
    double cut_s = eval_tokens_step(&m, &s, toks, (size_t)ntok, block, 150, &np2);
    CHECK(np2 == 150 && np3 == 150, "eval-max 150: %ld and %ld predictions", np3, np2);
    CHECK_REL(fabs(cut_b - cut_s), 1e-5, "eval-max 150: batched %.7f vs step %.7f", cut_b, cut_s);

    snprintf(cmd, sizeof cmd, "./infer %s --eval %s -b %d", ck, sh, block);
    int rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    double cli = NAN, ppl = NAN;
    long cli_n = 0;
    const char *p = strstr(out, "predictions");
    if (p) sscanf(out, "eval %*s %ld predictions", &cli_n);
    p = strstr(out, "loss ");
    if (p) sscanf(p, "loss %lf perplexity %lf", &cli, &ppl);
    printf("   ./infer: %s", out);
    CHECK(rc == 0, "./infer --eval exit status %d: %s", rc, errb);
    CHECK(cli_n == npred, "./infer --eval scored %ld predictions, expected %ld", cli_n, npred);
    CHECK_REL(fabs(cli - ref_loss), 1e-4, "./infer --eval loss %.6f vs reference %.6f (abs diff)", cli, ref_loss);
    CHECK_REL(fabs(ppl - exp(ref_loss)) / exp(ref_loss), 1e-4, "perplexity %.4f = exp(loss)", ppl);
    CHECK(strstr(errb, "tok/s") != NULL, "tokens/s on stderr");

    snprintf(cmd, sizeof cmd, "./infer %s --eval %s -b %d --eval-step", ck, sh, block);
    rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    double cli_step = NAN;
    p = strstr(out, "loss ");
    if (p) sscanf(p, "loss %lf", &cli_step);
    printf("   ./infer --eval-step: %s", out);
    CHECK(rc == 0 && strstr(out, "337 predictions") != NULL, "./infer --eval-step exit %d: %s", rc, errb);
    CHECK_REL(fabs(cli_step - cli), 2e-6, "./infer --eval-step loss %.6f vs --eval %.6f (printed to 6 decimals)", cli_step, cli);
    CHECK(strstr(errb, "token by token") != NULL, "--eval-step says so on stderr");

    snprintf(cmd, sizeof cmd, "./infer %s --eval %s -b %d --eval-max 150", ck, sh, block);
    rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    CHECK(rc == 0 && strstr(out, " 150 predictions") != NULL, "--eval-max 150 scores 150 predictions: %s", out);

    runstate_free(&s, &m.cfg);
    model_free(&m);
}

/* ---- 3. memory per token ---------------------------------------------------------------------- */

/* Decode from the model's own samples (temperature 1), recording the RSS and the state bytes
 * after marks[k] tokens. */
static void decode_marks(const Model *m, RunState *s, Sampler *sp, const int *marks, int nmarks,
                         long *rss, size_t *state) {
    int tok = 0, k = 0;
    for (int pos = 0; k < nmarks; pos++) {
        const float *logits = forward_step(m, s, tok, pos, 1);
        tok = sampler_next(sp, logits);
        if (pos + 1 == marks[k]) { rss[k] = rss_kib(); state[k] = runstate_bytes(s, &m->cfg); k++; }
    }
}

/* The child process (a fresh exec of this program, so that no heap freed by other tests can
 * absorb a growth): decode with a small model of the given layers, print one line
 * "rss0 rss1 state0 state1 tok/s". One thread: the test is about memory, not speed. */
static int memory_child(const char *layers, int mark0, int mark1) {
    char err[DN_ERR_LEN];
    DNConfig c = small_cfg(layers, 256, 32, 2, 2, 1, 64, 1);
    DNParamTable t;
    if (dn_build_param_table(&t, &c, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
    Model m = {.cfg = c, .t = t, .w = random_params(&t, 21)};
    omp_set_num_threads(1);
    RunState s;
    runstate_build(&s, &c, INFER_DEFAULT_MAX_CONTEXT);
    Sampler sp;
    sampler_build(&sp, c.vocab_size, 1.0f, 1.0f, 0, 99);
    const int marks[2] = {mark0, mark1};
    long rss[2];
    size_t st[2];
    double t0 = now_s();
    decode_marks(&m, &s, &sp, marks, 2, rss, st);
    printf("%ld %ld %zu %zu %.0f\n", rss[0], rss[1], st[0], st[1], mark1 / (now_s() - t0));
    sampler_free(&sp);
    runstate_free(&s, &c);
    model_free(&m);
    return 0;
}

static int run_memory_child(const char *self, const char *layers, int mark0, int mark1, long *rss, size_t *st, double *tps) {
    char cmd[1024], out[512], errb[2048];
    snprintf(cmd, sizeof cmd, "%s --memory-child %s %d %d", self, layers, mark0, mark1);
    int rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    if (rc != 0 || sscanf(out, "%ld %ld %zu %zu %lf", &rss[0], &rss[1], &st[0], &st[1], tps) != 5) {
        CHECK(0, "memory child %s: exit %d, output '%s' '%s'", layers, rc, out, errb);
        return -1;
    }
    return 0;
}

static void test_memory(const char *self) {
    printf("-- memory per token (RSS from /proc/self/status of a fresh process)\n");
    if (rss_kib() < 0) { printf("   no /proc/self/status: skipped\n"); return; }
    if (UNDER_ASAN) { printf("   built with AddressSanitizer: skipped\n"); return; }
    long rss[2];
    size_t st[2];
    double tps;
    const char *models[3] = {"DSDS", "DDDD", "NSND"};
    for (int i = 0; i < 3; i++) {
        if (run_memory_child(self, models[i], 10000, 100000, rss, st, &tps)) continue;
        printf("   %s (D=32%s): RSS %ld KiB after 10k tokens, %ld KiB after 100k; state %zu / %zu bytes; %.0f tok/s\n",
               models[i], strchr(models[i], 'S') ? ", window 64" : "", rss[0], rss[1], st[0], st[1], tps);
        CHECK(st[0] == st[1], "%s: recurrent state bytes constant (%zu after 10k, %zu after 100k)", models[i], st[0], st[1]);
        CHECK(rss[1] - rss[0] <= 64, "%s: RSS after 100k tokens within 64 KiB of RSS after 10k (grew %ld KiB; 1 byte/token would be %d KiB)",
              models[i], rss[1] - rss[0], 90000 / 1024);
    }
    /* Control: the same measurement sees a global-attention cache grow (256 bytes per token). */
    if (run_memory_child(self, "DG", 1000, 6000, rss, st, &tps)) return;
    DNConfig g = small_cfg("DG", 256, 32, 2, 2, 1, 64, 1);  /* the child's config */
    long expect = 5000L * 2 * cfg_kv_dim(&g) * (long)sizeof(float) / 1024;
    printf("   control DG: RSS %ld -> %ld KiB from 1k to 6k tokens (K/V cache rows written meanwhile: %ld KiB); state %zu -> %zu bytes\n",
           rss[0], rss[1], expect, st[0], st[1]);
    CHECK(st[1] > st[0], "control: a global layer's cache grows");
    CHECK(rss[1] - rss[0] >= expect / 2, "control: RSS sees the global cache grow (%ld KiB, expected about %ld)", rss[1] - rss[0], expect);
}

/* ---- 4. the sampler ---------------------------------------------------------------------------- */

static void test_sampler(void) {
    printf("-- sampler\n");
    float logits[5] = {logf(0.1f), logf(0.5f), logf(0.05f), logf(0.3f), logf(0.05f)};
    Sampler sp;
    sampler_build(&sp, 5, 0.0f, 1.0f, 0, 1);
    CHECK(sampler_next(&sp, logits) == 1, "temperature 0 takes the argmax");
    sampler_free(&sp);
    struct { float topp; int topk; double want[5]; const char *what; } cases[] = {
        {1.0f, 0, {0.1, 0.5, 0.05, 0.3, 0.05}, "plain sampling"},
        {1.0f, 2, {0, 0.5 / 0.8, 0, 0.3 / 0.8, 0}, "top-k 2"},
        {0.7f, 0, {0, 0.5 / 0.8, 0, 0.3 / 0.8, 0}, "top-p 0.7 (0.5 < 0.7 <= 0.8)"},
        {0.85f, 0, {0.1 / 0.9, 0.5 / 0.9, 0, 0.3 / 0.9, 0}, "top-p 0.85"},
        {0.5f, 3, {0, 1, 0, 0, 0}, "top-k 3 then top-p 0.5 (0.5/0.9 >= 0.5)"},
        {1.0f, 1, {0, 1, 0, 0, 0}, "top-k 1 is greedy"},
    };
    const int N = 40000;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        sampler_build(&sp, 5, 1.0f, cases[ci].topp, cases[ci].topk, 123 + ci);
        int count[5] = {0};
        for (int i = 0; i < N; i++) count[sampler_next(&sp, logits)]++;
        double worst = 0;
        int zero_ok = 1;
        for (int j = 0; j < 5; j++) {
            double f = (double)count[j] / N, d = fabs(f - cases[ci].want[j]);
            if (d > worst) worst = d;
            if (cases[ci].want[j] == 0 && count[j]) zero_ok = 0;
        }
        CHECK(worst < 0.015 && zero_ok, "%s: frequencies within 0.015 of the target (worst %.4f), excluded tokens never drawn", cases[ci].what, worst);
        sampler_free(&sp);
    }
    /* nucleus_select (quickselect) picks the same set as sorting and taking a prefix, ties included */
    int bad = 0, cases_run = 0;
    DNRng rq;
    dn_rng_seed(&rq, 17);
    for (int rep = 0; rep < 200; rep++) {
        int n = rep % 2 ? 50257 : 1 + (int)(dn_rng_u64(&rq) % 2000);
        SampleCandidate *x = xcalloc((size_t)n, sizeof *x), *y = xcalloc((size_t)n, sizeof *y);
        double total = 0;
        for (int i = 0; i < n; i++) {
            float u = dn_rng_uniform(&rq);
            x[i].p = rep % 3 == 0 ? (float)(int)(u * 8) + 1 : expf(6 * u * u);  /* many ties / heavy head */
            x[i].i = i;
            total += x[i].p;
        }
        memcpy(y, x, (size_t)n * sizeof *x);
        double need = total * (0.05 + 0.9 * dn_rng_uniform(&rq));
        int m = sample_nucleus_select(x, n, need);
        qsort(y, (size_t)n, sizeof *y, sample_cand_desc);
        double cum = 0;
        int m_ref = n;
        for (int j = 0; j < n; j++) { cum += y[j].p; if (cum >= need) { m_ref = j + 1; break; } }
        char *in = xcalloc((size_t)n, 1);
        for (int j = 0; j < m; j++) in[x[j].i] = 1;
        int same = m == m_ref;
        for (int j = 0; same && j < m_ref; j++) same = in[y[j].i];
        bad += !same;
        cases_run++;
        free(in); free(x); free(y);
    }
    CHECK(bad == 0, "nucleus_select equals sort + prefix on %d random cases (%d differ)", cases_run, bad);

    /* A large vocabulary: top-k over 50257 keeps exactly the k best. */
    int V = 50257;
    float *lg = xcalloc((size_t)V, sizeof(float));
    DNRng r;
    dn_rng_seed(&r, 5);
    for (int i = 0; i < V; i++) lg[i] = 3.0f * dn_rng_normal(&r);
    int best[3] = {-1, -1, -1};
    for (int j = 0; j < 3; j++)
        for (int i = 0; i < V; i++)
            if ((j == 0 || lg[i] < lg[best[j - 1]]) && (best[j] < 0 || lg[i] > lg[best[j]])) best[j] = i;
    sampler_build(&sp, V, 1.0f, 1.0f, 3, 9);
    int ok = 1;
    for (int i = 0; i < 3000; i++) {
        int x = sampler_next(&sp, lg);
        ok &= x == best[0] || x == best[1] || x == best[2];
    }
    CHECK(ok, "top-k 3 over 50257 draws only the 3 largest logits");
    sampler_free(&sp);
    free(lg);
}

/* Every accepted temperature samples correctly: the softmax is taken in double on
 * (logit - max) / T, so a tiny T is greedy and the largest accepted one (1e6) uniform; NaN logits
 * are never drawn; and a draw that rounding leaves past the running sum takes the last token of
 * positive weight, not the last id (which would be <|endoftext|> in a GPT-2 vocabulary). */
static void test_temperatures(void) {
    printf("-- sampling at tiny, normal and the largest accepted temperatures\n");
    char ck[300], err[DN_ERR_LEN];
    path_in(ck, sizeof ck, "dsgd.bin");   /* written by test_step_logits */
    Model m;
    if (model_load(&m, ck, err, sizeof err)) { CHECK(0, "model_load: %s", err); return; }
    const int V = m.cfg.vocab_size;
    RunState s;
    runstate_build(&s, &m.cfg, 1 << 20);
    const float *lg = NULL;
    for (int t = 0; t < 6; t++) lg = forward_step(&m, &s, 7 * t + 3, t, 1);
    float *logits = xcalloc((size_t)V, sizeof(float));
    memcpy(logits, lg, (size_t)V * sizeof(float));
    runstate_free(&s, &m.cfg);
    int best = sample_argmax(logits, V), second = best == 0 ? 1 : 0;
    for (int i = 0; i < V; i++) if (i != best && logits[i] > logits[second]) second = i;
    double *p = xcalloc((size_t)V, sizeof(double)), z = 0;
    for (int i = 0; i < V; i++) z += p[i] = exp((double)logits[i] - logits[best]);
    for (int i = 0; i < V; i++) p[i] /= z;
    printf("   model dsgd (vocab %d): argmax %d (logit %.3f), runner-up %.3f, p(argmax) = %.4f at T = 1\n",
           V, best, logits[best], logits[second], p[best]);

    /* tiny temperatures: the argmax every time, through every path (plain, top-k, top-p) */
    const double tiny[] = {1e-300, 1e-45, 1e-40, 1e-30};
    Sampler sp;
    for (size_t k = 0; k < sizeof tiny / sizeof *tiny; k++) {
        int hits = 0;
        const float topp[3] = {1.0f, 1.0f, 0.9f};
        const int topk[3] = {0, 5, 0};
        for (int path = 0; path < 3; path++) {
            sampler_build(&sp, V, tiny[k], topp[path], topk[path], 100 + k);
            for (int i = 0; i < 300; i++) hits += sampler_next(&sp, logits) == best;
            sampler_free(&sp);
        }
        CHECK(hits == 900, "T = %g picks the argmax %d in %d of 900 draws (plain, top-k 5, top-p 0.9)", tiny[k], best, hits);
    }
    /* normal: sampled frequencies follow the softmax */
    const int N = 60000;
    int *count = xcalloc((size_t)V, sizeof(int));
    sampler_build(&sp, V, 1.0, 1.0f, 0, 7);
    for (int i = 0; i < N; i++) count[sampler_next(&sp, logits)]++;
    sampler_free(&sp);
    double worst = 0;
    for (int i = 0; i < V; i++) worst = fmax(worst, fabs((double)count[i] / N - p[i]));
    CHECK(worst < 0.01, "T = 1: %d draws within 0.01 of the softmax for every id (worst %.4f)", N, worst);
    /* the largest accepted temperature: uniform (every weight exp(-spread/1e6) ~ 1) */
    const int per = 200;
    memset(count, 0, (size_t)V * sizeof(int));
    sampler_build(&sp, V, 1e6, 1.0f, 0, 8);
    for (int i = 0; i < per * V; i++) count[sampler_next(&sp, logits)]++;
    sampler_free(&sp);
    int lo = INT_MAX, hi = 0;
    for (int i = 0; i < V; i++) { lo = count[i] < lo ? count[i] : lo; hi = count[i] > hi ? count[i] : hi; }
    CHECK(lo >= per - 75 && hi <= per + 75, "T = 1e6: uniform, every id drawn %d +- 75 times in %d draws (min %d, max %d)",
          per, per * V, lo, hi);
    free(count);
    free(p);
    free(logits);
    model_free(&m);

    /* NaN and infinite logits: a NaN is never drawn and never the argmax; +inf wins outright */
    float odd[5] = {NAN, 1.0f, NAN, 0.5f, -INFINITY};
    CHECK(sample_argmax(odd, 5) == 1, "argmax skips NaN (got %d)", sample_argmax(odd, 5));
    int c5[5] = {0};
    sampler_build(&sp, 5, 1.0, 1.0f, 0, 3);
    for (int i = 0; i < 20000; i++) c5[sampler_next(&sp, odd)]++;
    sampler_free(&sp);
    double want1 = exp(0.5) / (1 + exp(0.5));
    CHECK(c5[0] + c5[2] + c5[4] == 0 && fabs(c5[1] / 20000.0 - want1) < 0.015,
          "NaN / -inf logits never drawn; p(1) = %.4f (want %.4f)", c5[1] / 20000.0, want1);
    sampler_build(&sp, 5, 1e-40, 1.0f, 0, 3);
    CHECK(sampler_next(&sp, odd) == 1, "NaN logits at T = 1e-40: the argmax");
    sampler_free(&sp);
    float inf3[3] = {0.0f, INFINITY, 1.0f};
    sampler_build(&sp, 3, 0.7, 1.0f, 0, 3);
    CHECK(sampler_next(&sp, inf3) == 1, "a +inf logit is drawn outright");
    sampler_free(&sp);

    /* the walk: a target at (or, by rounding, past) the total takes the last positive weight */
    double w[5] = {0.25, 0.75, 0.0, 0.0, 0.0};
    CHECK(sample_pick_weight(w, 5, 0.1) == 0 && sample_pick_weight(w, 5, 0.3) == 1, "pick_weight inside the sum");
    CHECK(sample_pick_weight(w, 5, 1.0) == 1 && sample_pick_weight(w, 5, 1.5) == 1,
          "pick_weight at / past the total: id 1, the last of positive weight (got %d, %d), not id 4",
          sample_pick_weight(w, 5, 1.0), sample_pick_weight(w, 5, 1.5));
    SampleCandidate cd[3] = {{0.5, 7}, {0.5, 3}, {0.0, 9}};
    CHECK(sample_pick_candidate(cd, 3, 1.0) == 3 && sample_pick_candidate(cd, 3, 0.2) == 7,
          "pick_candidate at the total: id 3, not the zero-weight id 9 (got %d)", sample_pick_candidate(cd, 3, 1.0));
}

/* ---- 5. the command line --------------------------------------------------------------------- */

/* Run the command formatted from fmt and expect it to fail with needle on stderr. */
static void expect_fail(const char *what, const char *needle, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void expect_fail(const char *what, const char *needle, const char *fmt, ...) {
    char cmd[2048], out[8192], errb[8192], line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    /* a normal exit with a non-zero status (no crash), and a message that names the problem */
    int ok = rc > 0 && strstr(errb, needle) != NULL;
    printf("   %-38s exit %d: %s\n", what, rc, first_line(errb, line, sizeof line));
    CHECK(ok, "%s: expected a non-zero exit and '%s' on stderr; got exit %d, stderr '%s'", what, needle, rc, errb);
}

static void copy_prefix(const char *from, const char *to, long nbytes) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    if (!a || !b) { fprintf(stderr, "cannot copy %s to %s\n", from, to); exit(1); }
    char buf[65536];
    size_t n;
    long left = nbytes < 0 ? LONG_MAX : nbytes;
    while (left > 0 && (n = fread(buf, 1, left < (long)sizeof buf ? (size_t)left : sizeof buf, a)) > 0) {
        fwrite(buf, 1, n, b);
        left -= (long)n;
    }
    fclose(a);
    fclose(b);
}

/* Replace the first occurrence of `from` by `to` (same length) in a file. */
static int patch_file(const char *path, const char *from, const char *to) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = xcalloc((size_t)n + 1, 1);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    int rc = -1;
    size_t fl = strlen(from);
    char *p = NULL;
    for (size_t i = 0; got == (size_t)n && !p && i + fl <= (size_t)n; i++)
        if (!memcmp(buf + i, from, fl)) p = buf + i;
    if (p && strlen(from) == strlen(to)) {
        memcpy(p, to, strlen(to));
        f = fopen(path, "wb");
        if (f) { rc = fwrite(buf, 1, (size_t)n, f) == (size_t)n ? 0 : -1; fclose(f); }
    }
    free(buf);
    return rc;
}

static void test_cli(void) {
    printf("-- ./infer command line\n");
    if (access("./infer", X_OK) != 0) {
        CHECK(0, "./infer not found: run from the repository root after make infer");
        return;
    }
    char ck[300], ckv[300], ckg[300], ck512[300], sh[300], shm[300], shc[300], shv[300], vdir[300];
    char cmd[2048], out[65536], errb[8192], err[DN_ERR_LEN];
    path_in(ck, sizeof ck, "gpt2tiny.bin");
    path_in(ckv, sizeof ckv, "version9.bin");
    path_in(ckg, sizeof ckg, "global.bin");
    path_in(ck512, sizeof ck512, "dsgd.bin");
    /* GPT-2-vocabulary models: DeltaNet + SWA (BF16, as a trainer may save) and one with a global layer */
    DNConfig c = small_cfg("DSD", 50257, 16, 2, 2, 1, 4, 1);
    write_ckpt(ck, &c, 1, DN_BF16, NULL, NULL);
    DNConfig cg = small_cfg("DG", 50257, 16, 2, 2, 1, 4, 1);
    write_ckpt(ckg, &cg, 2, DN_F32, NULL, NULL);

    /* generation */
    snprintf(cmd, sizeof cmd, "./infer %s '' -n 24", ck);
    int rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    printf("   empty prompt -> %zu bytes of text, stderr:\n%s", strlen(out), errb);
    CHECK(rc == 0 && strlen(out) > 1, "an empty prompt generates from <|endoftext|> (exit %d, %zu bytes)", rc, strlen(out));
    CHECK(strstr(errb, "seed 1337") != NULL && strstr(errb, "tok/s") != NULL, "seed and tokens/s on stderr");
    snprintf(cmd, sizeof cmd, "./infer %s -n 5", ck);
    rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    CHECK(rc == 0 && strlen(out) > 1, "no prompt at all also generates (exit %d)", rc);

    char a[65536], b[65536];
    snprintf(cmd, sizeof cmd, "./infer %s 'The quick brown fox' -n 40 -s 7 -t 0.9 -p 0.9 -k 50 --ignore-eot", ck);
    run_cmd(cmd, a, sizeof a, errb, sizeof errb);
    rc = run_cmd(cmd, b, sizeof b, errb, sizeof errb);
    CHECK(rc == 0 && !strcmp(a, b) && !strncmp(a, "The quick brown fox", 19) && strlen(a) > 20,
          "same seed, same text; the prompt is echoed first");
    snprintf(cmd, sizeof cmd, "./infer %s 'The quick brown fox' -n 40 -s 8 -t 0.9 -p 0.9 -k 50 --ignore-eot", ck);
    run_cmd(cmd, b, sizeof b, errb, sizeof errb);
    CHECK(strcmp(a, b) != 0, "another seed, other text");
    snprintf(cmd, sizeof cmd, "./infer %s 'Hello' -n 16 -t 0 --ignore-eot --stats", ckg);
    rc = run_cmd(cmd, a, sizeof a, errb, sizeof errb);
    run_cmd(cmd, b, sizeof b, errb, sizeof errb);
    CHECK(rc == 0 && !strcmp(a, b) && strstr(errb, "stats: recurrent state") != NULL, "greedy (-t 0) is deterministic; --stats reports");
    /* tiny temperatures are greedy (not NaN probabilities falling through to <|endoftext|>); the
     * largest accepted one samples */
    for (int ignore = 0; ignore < 2; ignore++) {
        snprintf(cmd, sizeof cmd, "./infer %s 'x' -n 12 -t 0%s", ck, ignore ? " --ignore-eot" : "");
        run_cmd(cmd, a, sizeof a, errb, sizeof errb);
        const char *temps[2] = {"1e-40", "1e-30"};
        for (int k = 0; k < 2; k++) {
            snprintf(cmd, sizeof cmd, "./infer %s 'x' -n 12 -t %s%s", ck, temps[k], ignore ? " --ignore-eot" : "");
            rc = run_cmd(cmd, b, sizeof b, errb, sizeof errb);
            CHECK(rc == 0 && !strcmp(a, b) && strlen(b) > 2, "-t %s%s gives -t 0's text (%zu bytes, exit %d): '%.60s'",
                  temps[k], ignore ? " --ignore-eot" : "", strlen(b), rc, b);
        }
    }
    snprintf(cmd, sizeof cmd, "./infer %s 'x' -n 30 -t 1e6 --ignore-eot", ck);
    rc = run_cmd(cmd, a, sizeof a, errb, sizeof errb);
    CHECK(rc == 0 && strstr(errb, "decode: 30 tokens") && strlen(a) > 30, "-t 1e6 (the largest accepted) samples 30 tokens (exit %d)", rc);
    expect_fail("temperature above 1e6", "temperature", "./infer %s 'x' -t 1e7", ck);
    snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 ./infer %s 'Hello' -n 3000 --ignore-eot --stats", ck);
    rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    long r0 = -1, r1 = -2;
    size_t stb = 0;
    const char *sl = strstr(errb, "stats:");
    if (sl) sscanf(sl, "stats: recurrent state %zu bytes; RSS %ld KiB after the prefill, %ld KiB", &stb, &r0, &r1);
    printf("   ./infer DSD model -n 3000 --stats: state %zu bytes, RSS %ld KiB after the prefill, %ld KiB at the end\n", stb, r0, r1);
    if (UNDER_ASAN) printf("   built with AddressSanitizer: RSS constancy not checked\n");
    CHECK(rc == 0 && r0 > 0 && (UNDER_ASAN || r1 - r0 <= 64), "./infer --stats: RSS constant over a 3000-token generation (%ld -> %ld KiB)", r0, r1);
    snprintf(cmd, sizeof cmd, "./infer -h");
    rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    CHECK(rc == 0 && strstr(out, "usage:") && strstr(out, "--eval") && strstr(out, "--eval-step"), "-h prints the usage");

    /* bad inputs: one clear message each, non-zero exit */
    expect_fail("missing checkpoint", "no_such.bin", "./infer %s/no_such.bin 'hi'", g_dir);
    write_ckpt(ckv, &c, 1, DN_F32, NULL, NULL);
    CHECK(patch_file(ckv, "\"format_version\":\"1\"", "\"format_version\":\"9\"") == 0, "patched the format version");
    expect_fail("checkpoint of format version 9", "format version 9", "./infer %s 'hi'", ckv);

    uint16_t toks[200];
    for (int i = 0; i < 200; i++) toks[i] = (uint16_t)(i * 37 % 500);
    path_in(sh, sizeof sh, "good.bin");
    path_in(shm, sizeof shm, "badmagic.bin");
    path_in(shc, sizeof shc, "badcount.bin");
    path_in(shv, sizeof shv, "badvocab.bin");
    shard_write(sh, toks, 200, err, sizeof err);
    copy_prefix(sh, shm, -1);
    copy_prefix(sh, shc, -1);
    FILE *f = fopen(shm, "r+b");
    int32_t bad = 20240521;
    fwrite(&bad, 4, 1, f);
    fclose(f);
    f = fopen(shc, "r+b");
    int32_t big = 201;
    fseek(f, 8, SEEK_SET);
    fwrite(&big, 4, 1, f);
    fclose(f);
    toks[17] = 600;  /* the dsgd model's vocabulary is 512 */
    shard_write(shv, toks, 200, err, sizeof err);
    snprintf(cmd, sizeof cmd, "./infer %s --eval %s", ck512, sh);
    rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    CHECK(rc == 0 && strstr(out, "199 predictions"), "a good shard evaluates (exit %d): %s", rc, out);
    expect_fail("shard with a wrong magic", "magic", "./infer %s --eval %s", ck512, shm);
    expect_fail("shard token count > file", "201 tokens", "./infer %s --eval %s", ck512, shc);
    expect_fail("shard token id >= vocab", "vocabulary size 512", "./infer %s --eval %s", ck512, shv);
    expect_fail("missing shard", "none.bin", "./infer %s --eval %s/none.bin", ck512, g_dir);

    path_in(vdir, sizeof vdir, "vocab");
    mkdir(vdir, 0700);
    char src[512], dst[512];
    snprintf(src, sizeof src, "%s/vocab.bpe", TOK_DEFAULT_DIR);
    snprintf(dst, sizeof dst, "%s/vocab.bpe", vdir);
    copy_prefix(src, dst, -1);
    snprintf(src, sizeof src, "%s/encoder.json", TOK_DEFAULT_DIR);
    snprintf(dst, sizeof dst, "%s/encoder.json", vdir);
    copy_prefix(src, dst, 500000);
    expect_fail("encoder.json cut short", "encoder.json", "./infer %s 'hi' -V %s", ck, vdir);
    expect_fail("vocab dir missing", "nowhere", "./infer %s 'hi' -V %s/nowhere", ck, g_dir);

    expect_fail("prompt longer than --max-context", "--max-context 8", "./infer %s 'one two three four five six seven eight nine ten' --max-context 8", ckg);
    snprintf(cmd, sizeof cmd, "./infer %s 'one two three' --max-context 8 -n 100 --ignore-eot", ckg);
    rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    CHECK(rc == 0 && strstr(errb, "generating 5 tokens, not 100"), "prompt + -n over --max-context: generation clamped with a note (exit %d): %s", rc, errb);
    snprintf(cmd, sizeof cmd, "./infer %s 'hi' --max-context 8 -n 20 --ignore-eot", ck);
    rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    CHECK(rc == 0 && !strstr(errb, "generating"), "--max-context does not limit a DeltaNet + SWA model");
    expect_fail("negative temperature", "temperature", "./infer %s 'hi' -t -1", ck);
    expect_fail("top-p above 1", "top-p", "./infer %s 'hi' -p 1.5", ck);
    expect_fail("non-numeric -n", "-n", "./infer %s 'hi' -n ten", ck);
    expect_fail("prompt and --eval together", "not both", "./infer %s 'hi' --eval %s", ck, sh);
    expect_fail("no arguments", "missing CHECKPOINT", "./infer");
    snprintf(cmd, sizeof cmd, "./infer %s --eval %s", ck, sh);
    /* ids of good.bin are < 500 < 50257: a GPT-2-vocabulary model scores it fine */
    rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    CHECK(rc == 0, "a BF16 checkpoint evaluates (exit %d)", rc);
}

/* ---- 6. a window longer than any context, prompts from files, files that are not regular ------- */

/* A checkpoint whose sliding window is 2^31-1 (longer than any context, so the layer attends to
 * everything: a global layer) loads and decodes; its ring holds the positions seen, not 2^31-1. */
static void test_long_window(void) {
    printf("-- a sliding window of 2^31-1 keys\n");
    char path[300], err[DN_ERR_LEN];
    DNConfig c = small_cfg("DSD", 512, 64, 2, 4, 2, INT_MAX, 0);
    path_in(path, sizeof path, "window_max.bin");
    write_ckpt(path, &c, 13, DN_F32, NULL, NULL);
    Model m;
    if (model_load(&m, path, err, sizeof err)) { CHECK(0, "a checkpoint with window %d loads: %s", INT_MAX, err); return; }
    CHECK(m.cfg.window == INT_MAX, "window read back: %d", m.cfg.window);
    const int T = 45;
    int tokens[45];
    DNRng r;
    dn_rng_seed(&r, 19);
    for (int t = 0; t < T; t++) tokens[t] = (int)(dn_rng_u64(&r) % 512);
    RefModel *rm = ref_model_create(&m.t, 1, T, 64);
    ref_model_forward(rm, m.w, tokens, NULL);
    /* the same weights as a global layer ("DGD": the same parameter table) */
    DNConfig cg = c;
    snprintf(cg.layers, sizeof cg.layers, "DGD");
    DNParamTable tg;
    CHECK(dn_build_param_table(&tg, &cg, err, sizeof err) == 0 && tg.total == m.t.total, "DGD has DSD's parameter table");
    Model mg = {.cfg = cg, .t = tg, .w = m.w};
    const size_t V = 512;
    float *step = xcalloc((size_t)T * V, sizeof(float)), *glob = xcalloc((size_t)T * V, sizeof(float));
    RunState s, sg;
    runstate_build(&s, &c, INFER_DEFAULT_MAX_CONTEXT);
    runstate_build(&sg, &cg, INFER_DEFAULT_MAX_CONTEXT);
    for (int t = 0; t < T; t++) {
        memcpy(step + t * V, forward_step(&m, &s, tokens[t], t, 1), V * sizeof(float));
        memcpy(glob + t * V, forward_step(&mg, &sg, tokens[t], t, 1), V * sizeof(float));
    }
    CHECK_REL(rel_err_f(step, ref_model_logits(rm), (size_t)T * V), 1e-5, "window 2^31-1, T=%d: step logits vs ref_model_forward", T);
    CHECK(memcmp(step, glob, (size_t)T * V * sizeof(float)) == 0, "window 2^31-1 decodes exactly as a global layer");
    CHECK(s.L[1].rows >= T && s.L[1].rows <= 64, "the ring holds %d rows after %d positions (at most 64)", s.L[1].rows, T);
    CHECK(runstate_bytes(&s, &c) < (1u << 20), "recurrent state %zu bytes", runstate_bytes(&s, &c));
    runstate_free(&s, &c);
    runstate_free(&sg, &cg);
    dn_free_param_table(&tg);
    ref_model_free(rm);
    free(step);
    free(glob);
    model_free(&m);

    /* ./infer: generation, --eval-step (the decode path) == --eval, and --max-context caps the ring */
    char ckw[300], sh[300], cmd[2048], out[65536], errb[8192];
    path_in(ckw, sizeof ckw, "window_max_gpt2.bin");
    path_in(sh, sizeof sh, "eval.bin");  /* written by test_eval: ids < 512 */
    DNConfig cw = small_cfg("DSD", 50257, 16, 2, 2, 1, INT_MAX, 1);
    write_ckpt(ckw, &cw, 4, DN_F32, NULL, NULL);
    snprintf(cmd, sizeof cmd, "./infer %s 'Hello there' -n 20 --ignore-eot", ckw);
    int rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    CHECK(rc == 0 && strstr(errb, "decode: 20 tokens"), "./infer generates with window 2^31-1 (exit %d): %s", rc, errb);
    double l1 = NAN, l2 = NAN;
    const char *q;
    snprintf(cmd, sizeof cmd, "./infer %s --eval %s -b 100", path, sh);
    rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    if ((q = strstr(out, "loss "))) sscanf(q, "loss %lf", &l1);
    snprintf(cmd, sizeof cmd, "./infer %s --eval %s -b 100 --eval-step", path, sh);
    int rc2 = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    if ((q = strstr(out, "loss "))) sscanf(q, "loss %lf", &l2);
    CHECK(rc == 0 && rc2 == 0 && fabs(l1 - l2) <= 2e-6, "window 2^31-1: --eval %.6f == --eval-step %.6f (exit %d, %d)", l1, l2, rc, rc2);
    expect_fail("window > --max-context < -b", "--max-context 50", "./infer %s --eval %s -b 100 --eval-step --max-context 50", path, sh);
    snprintf(cmd, sizeof cmd, "./infer %s 'one two three' --max-context 8 -n 100 --ignore-eot", ckw);
    rc = run_cmd(cmd, out, sizeof out, errb, sizeof errb);
    CHECK(rc == 0 && strstr(errb, "generating 5 tokens, not 100"), "window 2^31-1 > --max-context 8: generation clamped (exit %d): %s", rc, errb);
}

/* -f FILE / -f -: prompts of any size (the kernel limits one argument to 128 KiB), every byte. */
static void test_prompt_file(void) {
    printf("-- prompts from a file (-f FILE, -f -)\n");
    char ck[300], pf[300], small[300], fifo[300], cmd[2048], err[DN_ERR_LEN], errb[8192];
    path_in(ck, sizeof ck, "gpt2tiny.bin");  /* written by test_cli */
    path_in(pf, sizeof pf, "prompt.txt");
    path_in(small, sizeof small, "small.txt");
    path_in(fifo, sizeof fifo, "prompt.fifo");

    /* read_prompt_file: the bytes, NULs included; a FIFO and a directory refused at once */
    static const char nul[] = "one\0two";
    FILE *f = fopen(small, "wb");
    fwrite(nul, 1, sizeof nul - 1, f);
    fclose(f);
    char *text = NULL;
    size_t len = 0;
    CHECK(read_prompt_file(small, &text, &len, err, sizeof err) == 0 && len == 7 && !memcmp(text, nul, 7) && text[7] == 0,
          "read_prompt_file: all 7 bytes, NUL included (%zu): %s", len, err);
    free(text);
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo %s", fifo);
    test_watchdog("test_infer", 20);
    text = NULL;
    err[0] = 0;
    CHECK(read_prompt_file(fifo, &text, &len, err, sizeof err) == -1 && strstr(err, "FIFO") && !text,
          "a FIFO as -f is refused without blocking: %s", err);
    CHECK(read_prompt_file(g_dir, &text, &len, err, sizeof err) == -1 && strstr(err, "directory"),
          "a directory as -f is refused: %s", err);
    test_watchdog_off();

    /* a prompt over 128 KiB: through -f and through stdin, echoed whole, every token prefilled */
    size_t big = 150000;
    char *prompt = xcalloc(big + 64, 1);
    size_t n = 0;
    for (int i = 0; n < big; i++) n += (size_t)snprintf(prompt + n, 64, "%s%d", i % 7 ? " w" : ". Then ", i);
    f = fopen(pf, "wb");
    fwrite(prompt, 1, n, f);
    fclose(f);
    Tokenizer tok;
    size_t nids = 0;
    int *ids = NULL;
    if (tok_load(&tok, NULL, err, sizeof err) || tok_encode(&tok, prompt, n, 0, &ids, &nids, err, sizeof err)) {
        CHECK(0, "tokenizer: %s", err);
        free(prompt);
        return;
    }
    free(ids);
    tok_free(&tok);
    size_t cap = n + (1 << 16);
    char *out1 = xcalloc(cap, 1), *out2 = xcalloc(cap, 1);
    char want[64];
    snprintf(want, sizeof want, "prefill: %zu tokens", nids + 1);
    snprintf(cmd, sizeof cmd, "./infer %s -f %s -n 6 -s 3 --ignore-eot", ck, pf);
    int rc = run_cmd(cmd, out1, cap, errb, sizeof errb);
    CHECK(rc == 0 && !memcmp(out1, prompt, n) && strlen(out1) > n && strstr(errb, want),
          "-f with a %zu-byte prompt: exit %d, echoed whole, '%s' (stderr: %.200s)", n, rc, want, errb);
    snprintf(cmd, sizeof cmd, "./infer %s -f - -n 6 -s 3 --ignore-eot < %s", ck, pf);
    rc = run_cmd(cmd, out2, cap, errb, sizeof errb);
    CHECK(rc == 0 && !strcmp(out1, out2) && strstr(errb, want), "-f - (stdin) with the same prompt: the same text (exit %d)", rc);
    snprintf(cmd, sizeof cmd, "cat %s | ./infer %s --file - -n 6 -s 3 --ignore-eot", pf, ck);
    rc = run_cmd(cmd, out2, cap, errb, sizeof errb);
    CHECK(rc == 0 && !strcmp(out1, out2), "--file - from a pipe: the same text (exit %d)", rc);
    /* a short prompt: -f FILE == the PROMPT argument */
    f = fopen(small, "wb");
    fputs("The quick brown fox", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "./infer %s -f %s -n 20 -s 5", ck, small);
    run_cmd(cmd, out1, cap, errb, sizeof errb);
    snprintf(cmd, sizeof cmd, "./infer %s 'The quick brown fox' -n 20 -s 5", ck);
    rc = run_cmd(cmd, out2, cap, errb, sizeof errb);
    CHECK(rc == 0 && !strcmp(out1, out2) && !strncmp(out1, "The quick brown fox", 19), "-f FILE gives what the PROMPT argument gives");
    free(out1);
    free(out2);
    free(prompt);

    expect_fail("-f FIFO", "FIFO", "timeout 20 ./infer %s -f %s", ck, fifo);
    expect_fail("-f directory", "directory", "./infer %s -f %s", ck, g_dir);
    expect_fail("-f missing file", "none.txt", "./infer %s -f %s/none.txt", ck, g_dir);
    expect_fail("-f and a PROMPT", "not both", "./infer %s 'hi' -f %s", ck, small);
    expect_fail("-f and --eval", "not both", "./infer %s -f %s --eval %s", ck, small, small);
    char out[8192];
    rc = run_cmd("./infer -h", out, sizeof out, errb, sizeof errb);
    CHECK(rc == 0 && strstr(out, "-f, --file FILE") && strstr(out, "stdin"), "-h documents -f FILE and '-f -'");
}

/* Shards and vocabulary files that are not regular files are refused at once, naming what they are. */
static void test_not_regular(void) {
    printf("-- FIFOs and directories where files belong\n");
    char ck[300], ck512[300], fifo[300], vdir[300], sh0[300], src[600], dst[600], err[DN_ERR_LEN];
    path_in(ck, sizeof ck, "gpt2tiny.bin");
    path_in(ck512, sizeof ck512, "dsgd.bin");
    path_in(fifo, sizeof fifo, "shard.fifo");
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo %s", fifo);
    expect_fail("--eval FIFO", "FIFO", "timeout 20 ./infer %s --eval %s", ck512, fifo);
    expect_fail("--eval directory", "directory", "./infer %s --eval %s", ck512, g_dir);
    expect_fail("checkpoint FIFO", "FIFO", "timeout 20 ./infer %s 'hi'", fifo);
    path_in(sh0, sizeof sh0, "empty_shard.bin");
    CHECK(shard_write(sh0, NULL, 0, err, sizeof err) == 0, "a 0-token shard: %s", err);
    expect_fail("--eval of a 0-token shard", "0 tokens, need at least 2", "./infer %s --eval %s", ck512, sh0);
    /* vocabulary files: encoder.json a FIFO; vocab.bpe a FIFO; encoder.json a directory */
    path_in(vdir, sizeof vdir, "vocab_fifo");
    mkdir(vdir, 0700);
    snprintf(dst, sizeof dst, "%s/encoder.json", vdir);
    CHECK(mkfifo(dst, 0600) == 0, "mkfifo %s", dst);
    expect_fail("encoder.json a FIFO", "FIFO", "timeout 20 ./infer %s 'hi' -V %s", ck, vdir);
    remove(dst);
    snprintf(src, sizeof src, "%s/encoder.json", TOK_DEFAULT_DIR);
    copy_prefix(src, dst, -1);
    snprintf(dst, sizeof dst, "%s/vocab.bpe", vdir);
    CHECK(mkfifo(dst, 0600) == 0, "mkfifo %s", dst);
    expect_fail("vocab.bpe a FIFO", "vocab.bpe: is a FIFO", "timeout 20 ./infer %s 'hi' -V %s", ck, vdir);
    remove(dst);
    mkdir(dst, 0700);
    expect_fail("vocab.bpe a directory", "vocab.bpe: is a directory", "./infer %s 'hi' -V %s", ck, vdir);
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "--memory-child")) return memory_child(argv[2], atoi(argv[3]), atoi(argv[4]));
    (void)parse_args; (void)generate; (void)evaluate;  /* main()'s helpers: tested through ./infer */
    char self[1024];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl > 0) self[sl] = 0; else snprintf(self, sizeof self, "%s", argv[0]);
    snprintf(g_dir, sizeof g_dir, "/tmp/test_infer.XXXXXX");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    double t0 = now_s(), t1;
    test_step_logits();
    test_eval("dsgd.bin");
    test_eval("nsgn.bin");
    printf("   (%.1f s)\n", (t1 = now_s()) - t0);
    test_sampler();
    test_temperatures();
    printf("   (%.1f s)\n", now_s() - t1);
    t1 = now_s();
    test_cli();
    test_long_window();
    test_prompt_file();
    test_not_regular();
    printf("   (%.1f s)\n", now_s() - t1);
    t1 = now_s();
    test_memory(self);
    printf("   (%.1f s)\n", now_s() - t1);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    printf("   (test_infer took %.1f s)\n", now_s() - t0);
    return test_summary("test_infer");
}
