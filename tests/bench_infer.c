/*
 * bench_infer.c -- decode speed of infer.c on the d12 model (random weights) against the bound
 * that memory bandwidth sets: a decoded token streams every weight matrix and the LM head once
 * (fp32), so tokens/s <= bandwidth / weight bytes per token. Prints a table; no assertions.
 *
 *   bandwidth: memcpy of a 256 MiB buffer (read + write bytes counted), and a read-only sum over
 *              a 512 MiB array (the access pattern of weight streaming) on 1 and 2 threads;
 *   decode:    forward_step + sampling, 2 warm-up tokens then 12 timed, on 1 and 2 threads;
 *   eval:      --eval's scoring of a shard in blocks of 256: batched (eval_tokens, one forward per
 *              block: matrix products) over 2 blocks, against token by token (eval_tokens_step,
 *              --eval-step: the decode step) over 32 predictions, on 1 and 2 threads.
 * Run with `make bench` (or build/tests/bench_infer); about a minute on 2 cores.
 */
#define INFER_TESTING
#include "../infer.c"

#define BENCH_STEPS 12
#define BENCH_EVAL_BLOCK 256
#define BENCH_EVAL_BLOCKS 2
#define BENCH_EVAL_STEP_PRED 32

static double memcpy_bandwidth(size_t bytes) {
    char *a = malloc(bytes), *b = malloc(bytes);
    if (!a || !b) { fprintf(stderr, "bench_infer: out of memory\n"); exit(1); }
    memset(a, 1, bytes);
    memset(b, 2, bytes);
    double best = 1e30;
    for (int r = 0; r < 5; r++) {
        double t0 = now_s();
        memcpy(b, a, bytes);
        double dt = now_s() - t0;
        if (dt < best) best = dt;
        a[r] = b[bytes - 1 - r];  /* keep the copies observable */
    }
    free(a);
    free(b);
    return 2.0 * bytes / best;
}

/* Read-only streaming, vectorised like matvec's rows: blocks of 4096 floats split over threads. */
static double read_bandwidth(const float *x, size_t n, int nthreads) {
    double best = 1e30, sink = 0;
    long nb = (long)(n / 4096);
    for (int r = 0; r < 4; r++) {
        double t0 = now_s(), s = 0;
        #pragma omp parallel for schedule(static) num_threads(nthreads) reduction(+:s)
        for (long b = 0; b < nb; b++) {
            const float *xb = x + (size_t)b * 4096;
            float acc = 0.0f;
            #pragma omp simd reduction(+:acc)
            for (int i = 0; i < 4096; i++) acc += xb[i];
            s += acc;
        }
        double dt = now_s() - t0;
        sink += s;
        if (dt < best) best = dt;
    }
    if (sink == 12345.678) printf(" ");
    return n * sizeof(float) / best;
}

int main(void) {
    (void)parse_args; (void)generate; (void)evaluate; (void)model_load; (void)rss_kib; (void)read_prompt_file;  /* unused here */
    char err[DN_ERR_LEN];
    Model m;
    memset(&m, 0, sizeof m);
    dn_config_preset(&m.cfg, "d12");
    if (dn_build_param_table(&m.t, &m.cfg, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
    m.w = malloc(m.t.total * sizeof(float));
    if (!m.w) { fprintf(stderr, "bench_infer: out of memory\n"); return 1; }
    dn_init_params(&m.t, m.w, 42);
    size_t bytes = model_bytes_per_token(&m);
    printf("d12: layers %s, d_model %d, %d heads, vocab %d, tied; %zu parameters\n", m.cfg.layers,
           m.cfg.d_model, m.cfg.n_head, m.cfg.vocab_size, m.t.total_real);
    printf("weights read per token (fp32): %.1f MB\n", bytes / 1e6);
    FILE *la = fopen("/proc/loadavg", "r");
    char load[64] = "?";
    if (la) { if (!fgets(load, sizeof load, la)) load[0] = 0; fclose(la); }
    printf("load average at start: %s(threads only help when the cores are otherwise idle: OpenMP joins\n"
           "wait for the slowest thread, and a busy core makes every join wait for a time slice)\n", load);

    double bw_copy = memcpy_bandwidth((size_t)256 << 20);
    size_t nread = ((size_t)512 << 20) / sizeof(float);
    float *big = malloc(nread * sizeof(float));
    if (!big) { fprintf(stderr, "bench_infer: out of memory\n"); return 1; }
    for (size_t i = 0; i < nread; i++) big[i] = (float)(i & 1023);

    printf("memcpy bandwidth (1 thread, read + write): %.2f GB/s -> bound %.1f tok/s\n\n", bw_copy / 1e9, bw_copy / bytes);
    printf("| threads | decode tok/s | ms/token | read bandwidth GB/s | bound tok/s (bw / %.0f MB) | of bound |\n", bytes / 1e6);
    printf("|---------|--------------|----------|---------------------|-----------------------------|----------|\n");
    size_t state = 0;
    for (int nt = 1; nt <= 2; nt++) {
        double bw = read_bandwidth(big, nread, nt);
        omp_set_num_threads(nt);
        RunState s;
        runstate_build(&s, &m.cfg, INFER_DEFAULT_MAX_CONTEXT);
        Sampler sp;
        sampler_build(&sp, m.cfg.vocab_size, 1.0f, 1.0f, 0, 1);  /* the CLI default */
        int tok = TOK_GPT2_EOT;
        double t0 = 0;
        for (int i = 0; i < BENCH_STEPS + 2; i++) {
            if (i == 2) t0 = now_s();
            tok = sampler_next(&sp, forward_step(&m, &s, tok, i, 1));
        }
        double tps = BENCH_STEPS / (now_s() - t0), bound = bw / bytes;
        printf("| %7d | %12.2f | %8.1f | %19.2f | %27.1f | %7.0f%% |\n", nt, tps, 1e3 / tps, bw / 1e9, bound, 100 * tps / bound);
        state = runstate_bytes(&s, &m.cfg);
        sampler_free(&sp);
        runstate_free(&s, &m.cfg);
    }

    /* eval: random tokens (the speed does not depend on them) */
    size_t ntok = (size_t)BENCH_EVAL_BLOCK * BENCH_EVAL_BLOCKS + 1;
    uint16_t *toks = malloc(ntok * sizeof(uint16_t));
    if (!toks) { fprintf(stderr, "bench_infer: out of memory\n"); return 1; }
    DNRng r;
    dn_rng_seed(&r, 5);
    for (size_t i = 0; i < ntok; i++) toks[i] = (uint16_t)(dn_rng_u64(&r) % (uint64_t)m.cfg.vocab_size);
    printf("\n--eval -b %d: batched (one forward per block, %d blocks) vs --eval-step (token by token, %d predictions)\n",
           BENCH_EVAL_BLOCK, BENCH_EVAL_BLOCKS, BENCH_EVAL_STEP_PRED);
    printf("| threads | batched tok/s | --eval-step tok/s | speed-up | batched loss | step loss (first %d) |\n", BENCH_EVAL_STEP_PRED);
    printf("|---------|---------------|-------------------|----------|--------------|----------------------|\n");
    double best = 0;
    for (int nt = 1; nt <= 2; nt++) {
        omp_set_num_threads(nt);
        long np = 0, nps = 0;
        double t0 = now_s();
        double lb = eval_tokens(&m, toks, ntok, BENCH_EVAL_BLOCK, 0, &np);
        double t1 = now_s();
        RunState s;
        runstate_build(&s, &m.cfg, INFER_DEFAULT_MAX_CONTEXT);
        double t2 = now_s();
        double ls = eval_tokens_step(&m, &s, toks, ntok, BENCH_EVAL_BLOCK, BENCH_EVAL_STEP_PRED, &nps);
        double t3 = now_s();
        runstate_free(&s, &m.cfg);
        double tb = np / (t1 - t0), ts = nps / (t3 - t2);
        printf("| %7d | %13.1f | %17.1f | %7.1fx | %12.6f | %20.6f |\n", nt, tb, ts, tb / ts, lb, ls);
        if (tb > best) best = tb;
    }
    printf("(a 32768-token shard at the best batched rate: %.0f s)\n", 32768 / best);
    free(toks);

    printf("\nrecurrent state: %.2f MB (12 DeltaNet layers x 6 heads x 128 x 128 fp32, + conv tails), read and\n"
           "written once per token: %.1f%% of the weight bytes\n", state / 1e6, 100.0 * state / bytes);
    free(big);
    model_free(&m);
    return 0;
}
