/*
 * infer.c -- plain-C inference for deltanet.c checkpoints: prompt in, streamed text out, or the
 * loss of a token shard. C11 + OpenMP (for the matrix-vector products), no other dependency than
 * the project's own model.h, tokenizer and CPU reference.
 *
 *   ./infer model.bin "Once upon a time" -n 200 -t 0.8 -p 0.95
 *   ./infer model.bin -f prompt.txt -n 100       (a prompt of any length; "-f -" reads stdin)
 *   ./infer model.bin --eval data/tinyshakespeare/tiny_shakespeare_val.bin -b 1024
 *
 * Decoding is recurrent: forward_step() takes ONE token at absolute position pos and advances a
 * per-layer state, so the cost of a token does not depend on how many came before (except for
 * global-attention layers). The state of each layer kind (docs/MODEL.md has the math):
 *
 *   'D' DeltaNet  the K x V fp32 state S of each head, and the conv tail: the last conv_size - 1
 *                 pre-conv inputs of q, k and v (the causal depthwise conv needs nothing older).
 *                 One step: q,k,v = silu(conv(tail, x W^T)), L2-normalise q,k per head,
 *                 beta = sigmoid(x W_b^T), then the delta rule in place
 *                     u = v - S^T k,   S <- S + beta k u^T,   o = K^-1/2 S^T q,
 *                 per-head RMSNorm of o, output projection.
 *   'N' gated     the same state and conv tails in the gated layer's own widths (Hg heads, K x V
 *       DeltaNet  state of key size Kg and value size Vg). One step adds the log decay
 *                 g = -exp(A_log) softplus(x W_a^T + dt_bias) and decays the state first:
 *                     S <- exp(g) S,   u = v - S^T k,   S <- S + beta k u^T,   o = Kg^-1/2 S^T q,
 *                 then RMSNorm(o) * silu(x W_g^T) per head, output projection.
 *   'L' linear    DeltaNet's state and conv tail, without beta: one step is S <- S + k v^T,
 *       attention o = K^-1/2 S^T q (ref/linattn.c's recurrence with T = 1).
 *   'S' sliding   a ring of `window` keys (RoPE already applied at their absolute position) and
 *       window    values: position p lives in row p % window, and the query at pos attends to
 *                 positions max(0, pos-window+1) .. pos. The ring grows like a global cache
 *                 (below) until it holds `window` rows, so it never holds more rows than positions
 *                 seen: a window longer than any context (2^31-1) costs what a global layer does,
 *                 and a window longer than --max-context is capped like one. Then fixed memory.
 *   'G' global    a cache of every key and value so far, grown geometrically (realloc x2), capped
 *                 by --max-context. Memory grows with the sequence.
 *
 * So a model of DeltaNet, gated DeltaNet and sliding-window layers decodes forever in constant memory. The layer math
 * reuses the CPU reference (ref/: rmsnorm, l2norm, sigmoid, RoPE with a position offset, the
 * (gated) delta-rule recurrence with T = 1 updating S in place, the decay and the gated norm,
 * SwiGLU, cross-entropy); this file adds only
 * the conv-tail step, the cached-attention step, a matrix-vector product that is parallel over
 * output rows (the reference's linear layer parallelises over tokens, and here there is one); the
 * sampler is src/sample.c. tests/test_infer.c checks that stepping through a sequence gives the logits of the
 * reference's full-sequence (chunkwise) forward, and that --eval gives its loss. --eval scores each
 * block with one full-sequence forward instead (forward_block: matrix products over the block);
 * --eval-step scores it through forward_step, token by token.
 *
 * Weights are held in fp32 (a BF16 checkpoint is widened when loaded), so every decoded token
 * streams all matrices and the LM head from memory once: tokens/s is bounded by memory bandwidth
 * over weight bytes (tests/bench_infer.c measures both).
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "model.h"
#include "ref/reference.h"
#include "src/tokenizer.h"
#include "src/data.h"
#include "src/sample.h"

#define INFER_DEFAULT_SEED 1337
#define INFER_DEFAULT_MAX_CONTEXT 32768
#define INFER_CACHE_ROWS0 16 /* first allocation of a global-attention cache, in positions */

static void *xmalloc_or_die(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) { fprintf(stderr, "infer: out of memory (%zu bytes)\n", n); exit(1); }
    return p;
}
#define ALLOC(type, n) ((type *)xmalloc_or_die((size_t)(n) * sizeof(type)))

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* The reference's layer functions open an OpenMP parallel region per call. For one token they
 * have next to no work to share, and waking the other threads costs more than the work (far more
 * when the cores are busy), so forward_step runs them on one thread and passes its own thread
 * count to the matrix-vector products, the only work worth splitting. */
static int serial_begin(void) {
#ifdef _OPENMP
    int n = omp_get_max_threads();
    omp_set_num_threads(1);
    return n;
#else
    return 1;
#endif
}
static void serial_end(int nthreads) {
#ifdef _OPENMP
    omp_set_num_threads(nthreads);
#else
    (void)nthreads;
#endif
}

/* Resident set size of this process in KiB (Linux /proc/self/status VmRSS), or -1. */
static long rss_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) { kib = strtol(line + 6, NULL, 10); break; }
    fclose(f);
    return kib;
}

/* ----------------------------------------------------------------------------------------------
 * Model: the config and the fp32 weights of a checkpoint, laid out by model.h's parameter table */

typedef struct {
    DNConfig cfg;
    DNParamTable t;
    float *w;  /* t.total floats */
} Model;

static int model_load(Model *m, const char *path, char *err, size_t errlen) {
    memset(m, 0, sizeof *m);
    if (dn_checkpoint_read(path, &m->cfg, &m->w, err, errlen)) return -1;
    if (dn_build_param_table(&m->t, &m->cfg, err, errlen)) { free(m->w); m->w = NULL; return -1; }
    return 0;
}

static void model_free(Model *m) {
    dn_free_param_table(&m->t);
    free(m->w);
    memset(m, 0, sizeof *m);
}

/* Weights whose rows are streamed for one token (every matrix, the LM head, the norm gains; of
 * the embedding only the token's row), in bytes of fp32. */
static size_t model_bytes_per_token(const Model *m) {
    const DNConfig *c = &m->cfg;
    size_t n = 0;
    for (int i = 0; i < m->t.n_params; i++)
        if (m->t.params[i].kind != DN_P_EMBED) n += m->t.params[i].numel;
    n += (size_t)c->d_model;                                                     /* embedding row */
    if (c->tie_embeddings) n += (size_t)c->vocab_size * c->d_model;              /* tied LM head */
    return n * sizeof(float);
}

/* ----------------------------------------------------------------------------------------------
 * RunState: the recurrent state of every layer, plus scratch for one token */

typedef struct {
    float *S;        /* 'D', 'L': [H, K, V] state, S[h][a][c] (key a, value c), fp32;
                      * 'N': [Hg, Kg, Vg] */
    float *tail;     /* 'D', 'L': [3][conv_size-1][D] pre-conv inputs of q, k, v of the previous
                      *      conv_size-1 tokens, oldest first (zeros before the sequence start);
                      * 'N': the same, [conv_size-1][Hg Kg] for q and k, [conv_size-1][Hg Vg] for v */
    float *kcache;   /* 'S', 'G': [rows][Hkv*dh] keys, RoPE applied at their own position */
    float *vcache;   /* 'S', 'G': [rows][Hkv*dh] values */
    int rows;        /* allocated positions; 'S' with rows == window: a ring, row = pos % window */
} LayerState;

typedef struct {
    LayerState *L;          /* [n_layer] */
    int nthreads;           /* OpenMP threads for the matrix-vector products */
    int max_context;        /* cap on the positions of a global-attention cache */
    /* scratch for one token */
    float *h, *x, *mixer;                  /* residual stream, normed input, mixer / MLP output [D] */
    float *q, *k, *v, *qc, *kc, *vc;       /* projections and conv+silu outputs [mixer width] */
    float *qn, *kn, *o, *on;               /* normalised q, k; delta-rule output, normed [mixer width] */
    float *gpre;                           /* 'N': the output gate's pre-activation [Hg Vg] */
    float *bpre, *beta, *rstd;             /* [heads]: beta before / after the sigmoid; RMSNorm rstd */
    float *apre, *gdec;                    /* 'N' [Hg]: x W_a^T, the log decay */
    float *gate, *up;                      /* MLP [I] */
    float *logits;                         /* [vocab_size] */
    double *scores;                        /* attention scores [attn_heads][score_rows] */
    int score_rows;
} RunState;

/* Does decoding need an attention cache that grows with the sequence up to --max-context: a
 * global layer, or a sliding window longer than --max-context? */
static int cfg_context_limited(const DNConfig *c, int max_context) {
    return strchr(c->layers, 'G') != NULL || (strchr(c->layers, 'S') != NULL && c->window > max_context);
}
/* The most rows layer l's attention cache may hold: a sliding window's, or --max-context. */
static int cache_cap(const DNConfig *c, int l, int max_context) {
    return c->layers[l] == 'S' && c->window < max_context ? c->window : max_context;
}
static int cfg_kv_dim(const DNConfig *c) { return c->attn_kv_heads * dn_attn_head_dim(c); }
/* The widest mixer activation (D, or a gated DeltaNet layer's keys or values) and the most heads. */
static int cfg_mixer_width(const DNConfig *c) {
    int w = c->d_model;
    if (strchr(c->layers, 'N')) {
        if (dn_gdn_key_width(c) > w) w = dn_gdn_key_width(c);
        if (dn_gdn_value_width(c) > w) w = dn_gdn_value_width(c);
    }
    return w;
}
static int cfg_max_heads(const DNConfig *c) {
    int h = c->n_head > c->attn_heads ? c->n_head : c->attn_heads;
    return c->gdn_heads > h ? c->gdn_heads : h;
}
/* Floats of an 'N' layer's state and of its conv tails. */
static size_t gdn_state_floats(const DNConfig *c) { return (size_t)c->gdn_heads * c->gdn_head_dim * dn_gdn_value_dim(c); }
static size_t gdn_tail_floats(const DNConfig *c) {
    return (size_t)(c->conv_size - 1) * (2 * (size_t)dn_gdn_key_width(c) + dn_gdn_value_width(c));
}

static void runstate_build(RunState *s, const DNConfig *c, int max_context) {
    memset(s, 0, sizeof *s);
    int D = c->d_model, H = c->n_head, K = c->head_dim, kvd = cfg_kv_dim(c), tailn = c->conv_size - 1;
    s->max_context = max_context;
#ifdef _OPENMP
    s->nthreads = omp_get_max_threads();
#else
    s->nthreads = 1;
#endif
    s->L = ALLOC(LayerState, c->n_layer);
    int score_rows = 1;
    for (int l = 0; l < c->n_layer; l++) {
        LayerState *ls = &s->L[l];
        if (dn_kind_has_conv(c->layers[l])) {
            ls->S = ALLOC(float, (size_t)H * K * K);
            ls->tail = ALLOC(float, (size_t)3 * tailn * D);
        } else if (c->layers[l] == 'N') {
            ls->S = ALLOC(float, gdn_state_floats(c));
            ls->tail = ALLOC(float, gdn_tail_floats(c));
        } else {
            int cap = cache_cap(c, l, max_context);
            ls->rows = cap < INFER_CACHE_ROWS0 ? cap : INFER_CACHE_ROWS0;
            ls->kcache = ALLOC(float, (size_t)ls->rows * kvd);
            ls->vcache = ALLOC(float, (size_t)ls->rows * kvd);
            if (ls->rows > score_rows) score_rows = ls->rows;
        }
    }
    s->score_rows = score_rows;
    s->scores = ALLOC(double, (size_t)c->attn_heads * score_rows);
    float **vecs[] = {&s->h, &s->x, &s->mixer, &s->q, &s->k, &s->v, &s->qc, &s->kc, &s->vc,
                      &s->qn, &s->kn, &s->o, &s->on, &s->gpre};
    for (size_t i = 0; i < sizeof vecs / sizeof vecs[0]; i++) *vecs[i] = ALLOC(float, cfg_mixer_width(c));
    float **small[] = {&s->bpre, &s->beta, &s->rstd, &s->apre, &s->gdec};
    for (size_t i = 0; i < sizeof small / sizeof small[0]; i++) *small[i] = ALLOC(float, cfg_max_heads(c));
    s->gate = ALLOC(float, c->hidden_size);
    s->up = ALLOC(float, c->hidden_size);
    s->logits = ALLOC(float, c->vocab_size);
}

static void runstate_free(RunState *s, const DNConfig *c) {
    for (int l = 0; s->L && l < c->n_layer; l++) {
        free(s->L[l].S); free(s->L[l].tail); free(s->L[l].kcache); free(s->L[l].vcache);
    }
    free(s->L);
    float *vecs[] = {s->h, s->x, s->mixer, s->q, s->k, s->v, s->qc, s->kc, s->vc, s->qn, s->kn,
                     s->o, s->on, s->gpre, s->bpre, s->beta, s->rstd, s->apre, s->gdec, s->gate, s->up,
                     s->logits};
    for (size_t i = 0; i < sizeof vecs / sizeof vecs[0]; i++) free(vecs[i]);
    free(s->scores);
    memset(s, 0, sizeof *s);
}

/* Back to the start of a sequence: zero states and conv tails. Attention caches keep their memory
 * (rows at positions >= the new pos are never read before being written). */
static void runstate_reset(RunState *s, const DNConfig *c) {
    for (int l = 0; l < c->n_layer; l++)
        if (dn_kind_has_conv(c->layers[l])) {
            memset(s->L[l].S, 0, (size_t)c->n_head * c->head_dim * c->head_dim * sizeof(float));
            memset(s->L[l].tail, 0, (size_t)3 * (c->conv_size - 1) * c->d_model * sizeof(float));
        } else if (c->layers[l] == 'N') {
            memset(s->L[l].S, 0, gdn_state_floats(c) * sizeof(float));
            memset(s->L[l].tail, 0, gdn_tail_floats(c) * sizeof(float));
        }
}

/* Bytes of recurrent state held now (DeltaNet states + conv tails + attention caches + scores). */
static size_t runstate_bytes(const RunState *s, const DNConfig *c) {
    size_t n = 0, kvd = (size_t)cfg_kv_dim(c);
    for (int l = 0; l < c->n_layer; l++) {
        if (dn_kind_has_conv(c->layers[l]))
            n += ((size_t)c->n_head * c->head_dim * c->head_dim + 3 * (size_t)(c->conv_size - 1) * c->d_model) * sizeof(float);
        else if (c->layers[l] == 'N')
            n += (gdn_state_floats(c) + gdn_tail_floats(c)) * sizeof(float);
        else
            n += 2 * (size_t)s->L[l].rows * kvd * sizeof(float);
    }
    return n + (size_t)c->attn_heads * s->score_rows * sizeof(double);
}

/* Make an attention cache hold position pos (doubling, up to cap rows), and the score buffer with
 * it. -1 if pos >= cap. */
static int cache_reserve(RunState *s, const DNConfig *c, LayerState *ls, int pos, int cap) {
    if (pos < ls->rows) return 0;
    if (pos >= cap) return -1;
    long rows = ls->rows;
    while (rows <= pos) rows *= 2;
    if (rows > cap) rows = cap;
    size_t bytes = (size_t)rows * cfg_kv_dim(c) * sizeof(float);
    float *k = realloc(ls->kcache, bytes), *v = k ? realloc(ls->vcache, bytes) : NULL;
    if (k) ls->kcache = k;
    if (!v) { fprintf(stderr, "infer: out of memory growing the attention cache to %ld positions\n", rows); exit(1); }
    ls->vcache = v;
    ls->rows = (int)rows;
    if (rows > s->score_rows) {
        free(s->scores);
        s->score_rows = (int)rows;
        s->scores = ALLOC(double, (size_t)c->attn_heads * s->score_rows);
    }
    return 0;
}

/* ----------------------------------------------------------------------------------------------
 * The pieces of one decode step that the reference has no single-token form of */

/* Matrix-vector products that share their input: y_j[rows_j] = W_j[rows_j, cols] x[cols] for
 * each job j (PyTorch [out, in] layout). One parallel region for all the jobs, each split over
 * output rows with no barrier between jobs (fewer thread wake-ups per token); small products run
 * on one thread. Sums are fp32, vectorised; the reference's double sums differ by rounding only
 * (~1e-7 relative). */
typedef struct { float *y; const float *W; int rows; } Matvec;

static void matvecs(const Matvec *jobs, int njobs, const float *x, int cols, int nthreads) {
    long work = 0;
    for (int j = 0; j < njobs; j++) work += (long)jobs[j].rows * cols;
    #pragma omp parallel num_threads(nthreads) if (work >= (1L << 16))
    for (int j = 0; j < njobs; j++) {
        const float *W = jobs[j].W;
        float *y = jobs[j].y;
        #pragma omp for schedule(static) nowait
        for (int r = 0; r < jobs[j].rows; r++) {
            const float *w = W + (size_t)r * cols;
            float s = 0.0f;
            #pragma omp simd reduction(+:s)
            for (int c = 0; c < cols; c++) s += w[c] * x[c];
            y[r] = s;
        }
    }
}

static void matvec(float *y, const float *W, const float *x, int rows, int cols, int nthreads) {
    Matvec job = {y, W, rows};
    matvecs(&job, 1, x, cols, nthreads);
}

/* The causal depthwise conv + SiLU of ONE new token (ref_conv_silu_forward at its last position):
 * out[c] = silu(sum_{j<cs-1} w[c,j] tail[j][c] + w[c,cs-1] u[c]); then the tail shifts by one and
 * u becomes its newest row. tail [cs-1][C], oldest first; w [C, cs]. */
static void conv_step(float *out, float *tail, const float *u, const float *w, int C, int cs) {
    for (int c = 0; c < C; c++) {
        double z = 0.0;
        for (int j = 0; j < cs - 1; j++) z += (double)w[(size_t)c * cs + j] * tail[(size_t)j * C + c];
        z += (double)w[(size_t)c * cs + cs - 1] * u[c];
        out[c] = (float)(z / (1.0 + exp(-z)));
    }
    if (cs > 1) {
        memmove(tail, tail + C, (size_t)(cs - 2) * C * sizeof(float));
        memcpy(tail + (size_t)(cs - 2) * C, u, (size_t)C * sizeof(float));
    }
}

/* Softmax attention of one query position pos against the cache (ref_attention_forward's row pos):
 * q [Hq, dh] and the cache rows [Hkv*dh]; keys first..pos, at row (p % ring) where ring > 0 (a
 * sliding window) or row p (global). Scores and softmax in double, as the reference. */
static void attention_step(float *out, double *scores, const float *q, const float *kcache,
                           const float *vcache, int pos, int first, int ring, int Hq, int Hkv, int dh,
                           int nthreads) {
    int group = Hq / Hkv, kvd = Hkv * dh, n = pos - first + 1;
    double scale = 1.0 / sqrt((double)dh);
    #pragma omp parallel for schedule(static) num_threads(nthreads) if ((long)n * Hq * dh >= (1L << 16))
    for (int h = 0; h < Hq; h++) {
        const float *qh = q + (size_t)h * dh;
        double *s = scores + (size_t)h * n, m = -INFINITY;
        int hk = h / group;
        for (int p = first; p <= pos; p++) {
            const float *kp = kcache + (size_t)(ring ? p % ring : p) * kvd + (size_t)hk * dh;
            double dot = 0.0;
            for (int i = 0; i < dh; i++) dot += (double)qh[i] * kp[i];
            s[p - first] = dot * scale;
            if (s[p - first] > m) m = s[p - first];
        }
        double sum = 0.0;
        for (int j = 0; j < n; j++) sum += exp(s[j] - m);
        double lse = m + log(sum), acc[dh];
        for (int i = 0; i < dh; i++) acc[i] = 0.0;
        for (int p = first; p <= pos; p++) {
            double pr = exp(s[p - first] - lse);
            const float *vp = vcache + (size_t)(ring ? p % ring : p) * kvd + (size_t)hk * dh;
            for (int i = 0; i < dh; i++) acc[i] += pr * vp[i];
        }
        for (int i = 0; i < dh; i++) out[(size_t)h * dh + i] = (float)acc[i];
    }
}

/* ----------------------------------------------------------------------------------------------
 * forward_step: one token at absolute position pos through every layer */

static void deltanet_step(const Model *m, RunState *s, int l) {
    const DNConfig *c = &m->cfg;
    const size_t *P = m->t.layer[l].p;
    const float *w = m->w;
    LayerState *ls = &s->L[l];
    int D = c->d_model, H = c->n_head, K = c->head_dim, cs = c->conv_size;
    size_t tailn = (size_t)(cs - 1) * D;
    const int delta = c->layers[l] == 'D'; /* else 'L': no beta */
    Matvec proj[4] = {{s->q, w + P[DN_P_Q], D}, {s->k, w + P[DN_P_K], D}, {s->v, w + P[DN_P_V], D},
                      {s->bpre, delta ? w + P[DN_P_B] : NULL, H}};
    matvecs(proj, delta ? 4 : 3, s->x, D, s->nthreads);
    conv_step(s->qc, ls->tail, s->q, w + P[DN_P_Q_CONV], D, cs);
    conv_step(s->kc, ls->tail + tailn, s->k, w + P[DN_P_K_CONV], D, cs);
    conv_step(s->vc, ls->tail + 2 * tailn, s->v, w + P[DN_P_V_CONV], D, cs);
    ref_l2norm_forward(s->qn, s->qc, H, K, c->l2_eps);
    ref_l2norm_forward(s->kn, s->kc, H, K, c->l2_eps);
    /* T = 1 with S0 == S_final: one step of the recurrence, state updated in place */
    if (delta) {
        ref_sigmoid_forward(s->beta, s->bpre, H);
        ref_delta_rule_recurrent_forward(s->o, ls->S, s->qn, s->kn, s->vc, s->beta, ls->S,
                                         1, 1, H, K, K, (float)(1.0 / sqrt((double)K)));
    } else {
        ref_linear_attn_recurrent_forward(s->o, ls->S, s->qn, s->kn, s->vc, ls->S, 1, 1, H, K, K, (float)(1.0 / sqrt((double)K)));
    }
    ref_rmsnorm_forward(s->on, s->rstd, s->o, w + P[DN_P_O_NORM], H, K, c->norm_eps);
    matvec(s->mixer, w + P[DN_P_O], s->on, D, D, s->nthreads);
}

/* A gated DeltaNet layer's step: deltanet_step's with the decay and the output gate. */
static void gated_deltanet_step(const Model *m, RunState *s, int l) {
    const DNConfig *c = &m->cfg;
    const size_t *P = m->t.layer[l].p;
    const float *w = m->w;
    LayerState *ls = &s->L[l];
    int D = c->d_model, H = c->gdn_heads, K = c->gdn_head_dim, Vg = dn_gdn_value_dim(c), cs = c->conv_size;
    int HK = dn_gdn_key_width(c), HV = dn_gdn_value_width(c);
    size_t tailk = (size_t)(cs - 1) * HK;
    Matvec proj[6] = {{s->q, w + P[DN_P_Q], HK}, {s->k, w + P[DN_P_K], HK}, {s->v, w + P[DN_P_V], HV},
                      {s->apre, w + P[DN_P_A], H}, {s->bpre, w + P[DN_P_B], H}, {s->gpre, w + P[DN_P_G], HV}};
    matvecs(proj, 6, s->x, D, s->nthreads);
    conv_step(s->qc, ls->tail, s->q, w + P[DN_P_Q_CONV], HK, cs);
    conv_step(s->kc, ls->tail + tailk, s->k, w + P[DN_P_K_CONV], HK, cs);
    conv_step(s->vc, ls->tail + 2 * tailk, s->v, w + P[DN_P_V_CONV], HV, cs);
    ref_l2norm_forward(s->qn, s->qc, H, K, c->l2_eps);
    ref_l2norm_forward(s->kn, s->kc, H, K, c->l2_eps);
    ref_sigmoid_forward(s->beta, s->bpre, H);
    ref_gdn_decay_forward(s->gdec, s->apre, w + P[DN_P_A_LOG], w + P[DN_P_DT_BIAS], 1, H);
    /* T = 1 with S0 == S_final: one step of the gated recurrence, state updated in place */
    ref_gated_delta_rule_recurrent_forward(s->o, ls->S, s->qn, s->kn, s->vc, s->beta, s->gdec, ls->S,
                                           1, 1, H, K, Vg, (float)(1.0 / sqrt((double)K)));
    ref_gated_rmsnorm_forward(s->on, s->rstd, s->o, s->gpre, w + P[DN_P_O_NORM], H, Vg, c->norm_eps);
    matvec(s->mixer, w + P[DN_P_O], s->on, D, HV, s->nthreads);
}

static void attention_layer_step(const Model *m, RunState *s, int l, int pos) {
    const DNConfig *c = &m->cfg;
    const size_t *P = m->t.layer[l].p;
    const float *w = m->w;
    LayerState *ls = &s->L[l];
    int D = c->d_model, Hq = c->attn_heads, Hkv = c->attn_kv_heads, dh = dn_attn_head_dim(c), kvd = Hkv * dh;
    /* a sliding window whose ring is full: position p lives in row p % window; otherwise (a global
     * cache, or a window not yet filled) row p, grown to hold it */
    int ring = c->layers[l] == 'S' && ls->rows == c->window;
    Matvec proj[3] = {{s->q, w + P[DN_P_Q], D}, {s->k, w + P[DN_P_K], kvd}, {s->v, w + P[DN_P_V], kvd}};
    matvecs(proj, 3, s->x, D, s->nthreads);
    ref_rope_forward(s->q, 1, 1, Hq, dh, c->rope_base, pos);
    ref_rope_forward(s->k, 1, 1, Hkv, dh, c->rope_base, pos);
    if (!ring && cache_reserve(s, c, ls, pos, cache_cap(c, l, s->max_context))) {
        fprintf(stderr, "infer: position %d is past --max-context %d (the attention cache limit)\n", pos, s->max_context);
        exit(1);
    }
    int row = ring ? pos % c->window : pos;
    memcpy(ls->kcache + (size_t)row * kvd, s->k, (size_t)kvd * sizeof(float));
    memcpy(ls->vcache + (size_t)row * kvd, s->v, (size_t)kvd * sizeof(float));
    int first = c->layers[l] == 'S' && pos - c->window + 1 > 0 ? pos - c->window + 1 : 0;
    attention_step(s->o, s->scores, s->q, ls->kcache, ls->vcache, pos, first, ring ? c->window : 0, Hq, Hkv, dh, s->nthreads);
    matvec(s->mixer, w + P[DN_P_O], s->o, D, D, s->nthreads);
}

static void mlp_step(const Model *m, RunState *s, int l) {
    const size_t *P = m->t.layer[l].p;
    int D = m->cfg.d_model, I = m->cfg.hidden_size;
    Matvec gate_up[2] = {{s->gate, m->w + P[DN_P_GATE], I}, {s->up, m->w + P[DN_P_UP], I}};
    matvecs(gate_up, 2, s->x, D, s->nthreads);
    ref_swiglu_forward(s->gate, s->gate, s->up, I);
    matvec(s->mixer, m->w + P[DN_P_DOWN], s->gate, D, I, s->nthreads);
}

/* Advance the state by token at position pos (0, 1, 2, ... within a sequence). Returns the logits
 * of the next token [vocab_size], or NULL when want_logits is 0 (prefill skips the LM head). */
static float *forward_step(const Model *m, RunState *s, int token, int pos, int want_logits) {
    const DNConfig *c = &m->cfg;
    int D = c->d_model, nthreads = serial_begin();
    memcpy(s->h, m->w + m->t.embed + (size_t)token * D, (size_t)D * sizeof(float));
    for (int l = 0; l < c->n_layer; l++) {
        const size_t *P = m->t.layer[l].p;
        ref_rmsnorm_forward(s->x, s->rstd, s->h, m->w + P[DN_P_ATTN_NORM], 1, D, c->norm_eps);
        if (dn_kind_has_conv(c->layers[l])) deltanet_step(m, s, l);
        else if (c->layers[l] == 'N') gated_deltanet_step(m, s, l);
        else attention_layer_step(m, s, l, pos);
        for (int i = 0; i < D; i++) s->h[i] += s->mixer[i];
        if (c->no_mlp) continue;
        ref_rmsnorm_forward(s->x, s->rstd, s->h, m->w + P[DN_P_MLP_NORM], 1, D, c->norm_eps);
        mlp_step(m, s, l);
        for (int i = 0; i < D; i++) s->h[i] += s->mixer[i];
    }
    float *logits = NULL;
    if (want_logits) {
        ref_rmsnorm_forward(s->x, s->rstd, s->h, m->w + m->t.norm, 1, D, c->norm_eps);
        matvec(s->logits, m->w + m->t.lm_head, s->x, c->vocab_size, D, s->nthreads);
        logits = s->logits;
    }
    serial_end(nthreads);
    return logits;
}

/* ----------------------------------------------------------------------------------------------
 * Block forward: --eval scores a whole block with one full-sequence pass, in the sequential form
 * of ref_model_forward (chunk = 0: the delta rule's recurrence over the block, causal attention
 * over the block), layer by layer over all its tokens at once. The layer math is the reference's
 * (ref_conv_silu_forward, ref_attention_forward, ref_rmsnorm_forward, ...) except for two hot
 * spots: ref_linear_forward computes each output as a double dot product, one at a time (about one
 * multiply-add per cycle: ref_model_forward itself runs a d12 model at half the decode step's
 * speed), whereas gemm_nt below is an fp32 tiled matrix product that keeps a block of weight rows
 * in cache while it meets every token of the block; and delta_rule_block is the same recurrence as
 * ref_delta_rule_recurrent_forward with S walked row by row. Sums are fp32 (the reference's double
 * sums differ by rounding only, ~1e-6 relative; tests/test_infer.c checks the loss against
 * ref_model_forward and against the decode step). Only one layer's activations are held. */

#define GEMM_WROWS 64   /* weight rows per cache block (64 x 768 fp32: 192 KiB, in L2) */
#define GEMM_TOKS 64    /* tokens per cache block */
#define EVAL_HEAD_TOKS 128  /* tokens per LM-head pass (logits buffer [128, vocab]) */

/* y[i*ldy + j] = x_i . w_j for i < ni <= 4 tokens, j < nj <= 4 weight rows, rows of C floats.
 * The full 4 x 4 tile keeps 16 vector sums in registers (8 loads per 16 multiply-adds). */
static void gemm_tile(float *y, int ldy, const float *x, const float *w, int C, int ni, int nj) {
    if (ni == 4 && nj == 4) {
        const float *x0 = x, *x1 = x0 + C, *x2 = x1 + C, *x3 = x2 + C;
        const float *w0 = w, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;
        float s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
        float s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
        #pragma omp simd reduction(+:s00,s01,s02,s03,s10,s11,s12,s13,s20,s21,s22,s23,s30,s31,s32,s33)
        for (int c = 0; c < C; c++) {
            float a0 = x0[c], a1 = x1[c], a2 = x2[c], a3 = x3[c];
            float b0 = w0[c], b1 = w1[c], b2 = w2[c], b3 = w3[c];
            s00 += a0 * b0; s01 += a0 * b1; s02 += a0 * b2; s03 += a0 * b3;
            s10 += a1 * b0; s11 += a1 * b1; s12 += a1 * b2; s13 += a1 * b3;
            s20 += a2 * b0; s21 += a2 * b1; s22 += a2 * b2; s23 += a2 * b3;
            s30 += a3 * b0; s31 += a3 * b1; s32 += a3 * b2; s33 += a3 * b3;
        }
        float *y0 = y, *y1 = y0 + ldy, *y2 = y1 + ldy, *y3 = y2 + ldy;
        y0[0] = s00; y0[1] = s01; y0[2] = s02; y0[3] = s03;
        y1[0] = s10; y1[1] = s11; y1[2] = s12; y1[3] = s13;
        y2[0] = s20; y2[1] = s21; y2[2] = s22; y2[3] = s23;
        y3[0] = s30; y3[1] = s31; y3[2] = s32; y3[3] = s33;
        return;
    }
    for (int i = 0; i < ni; i++)       /* edges: one dot product at a time */
        for (int j = 0; j < nj; j++) {
            const float *xi = x + (size_t)i * C, *wj = w + (size_t)j * C;
            float s = 0.0f;
            #pragma omp simd reduction(+:s)
            for (int c = 0; c < C; c++) s += xi[c] * wj[c];
            y[(size_t)i * ldy + j] = s;
        }
}

/* out[N, OC] = inp[N, C] W[OC, C]^T: ref_linear_forward's contract (PyTorch layout). Parallel over
 * (weight block, token block) pairs; each pair walks 4 x 4 tiles with both blocks in cache. */
static void gemm_nt(float *out, const float *inp, const float *W, int N, int C, int OC) {
    int nwb = (OC + GEMM_WROWS - 1) / GEMM_WROWS, ntb = (N + GEMM_TOKS - 1) / GEMM_TOKS;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int wb = 0; wb < nwb; wb++)
        for (int tb = 0; tb < ntb; tb++) {
            int o1 = (wb + 1) * GEMM_WROWS < OC ? (wb + 1) * GEMM_WROWS : OC;
            int n1 = (tb + 1) * GEMM_TOKS < N ? (tb + 1) * GEMM_TOKS : N;
            for (int n = tb * GEMM_TOKS; n < n1; n += 4)
                for (int o = wb * GEMM_WROWS; o < o1; o += 4)
                    gemm_tile(out + (size_t)n * OC + o, OC, inp + (size_t)n * C, W + (size_t)o * C, C,
                              n1 - n < 4 ? n1 - n : 4, o1 - o < 4 ? o1 - o : 4);
        }
}

/* The delta rule over a block from a zero state, sequentially (ref_delta_rule_recurrent_forward
 * with B = 1, S0 = NULL): per head and token, u = v - S^T k, S <- S + beta k u^T, o = scale S^T q.
 * q, k, v, o [T, H, K], beta [T, H]. The reference sums down the columns of S in double (strided
 * reads); here S is walked row by row, fp32, vectorised over the value index, and the update of S
 * and the output share one pass. Parallel over heads. */
static void delta_rule_block(float *o, const float *q, const float *k, const float *v, const float *beta,
                             int T, int H, int K, float scale) {
    #pragma omp parallel
    {
        float *S = ALLOC(float, (size_t)K * K), *u = ALLOC(float, K);
        #pragma omp for schedule(static)
        for (int h = 0; h < H; h++) {
            memset(S, 0, (size_t)K * K * sizeof(float));
            for (int t = 0; t < T; t++) {
                size_t row = ((size_t)t * H + h) * K;
                const float *qt = q + row, *kt = k + row, *vt = v + row;
                float *ot = o + row, b = beta[(size_t)t * H + h];
                for (int c = 0; c < K; c++) { u[c] = vt[c]; ot[c] = 0.0f; }
                for (int a = 0; a < K; a++) {
                    const float *Sa = S + (size_t)a * K, ka = kt[a];
                    #pragma omp simd
                    for (int c = 0; c < K; c++) u[c] -= ka * Sa[c];
                }
                for (int a = 0; a < K; a++) {
                    float *Sa = S + (size_t)a * K, bk = b * kt[a], qa = scale * qt[a];
                    #pragma omp simd
                    for (int c = 0; c < K; c++) { Sa[c] += bk * u[c]; ot[c] += qa * Sa[c]; }
                }
            }
        }
        free(S);
        free(u);
    }
}

/* delta_rule_block with the decay (ref_gated_delta_rule_recurrent_forward, B = 1, S0 = NULL):
 * per head and token, u = v - alpha S^T k, S <- alpha S + beta k u^T, o = scale S^T q, alpha =
 * exp(g). q, k [T, H, K], v, o [T, H, V], beta, g [T, H]. */
static void gated_delta_rule_block(float *o, const float *q, const float *k, const float *v, const float *beta,
                                   const float *g, int T, int H, int K, int V, float scale) {
    #pragma omp parallel
    {
        float *S = ALLOC(float, (size_t)K * V), *u = ALLOC(float, V);
        #pragma omp for schedule(static)
        for (int h = 0; h < H; h++) {
            memset(S, 0, (size_t)K * V * sizeof(float));
            for (int t = 0; t < T; t++) {
                const size_t rk = ((size_t)t * H + h) * K, rv = ((size_t)t * H + h) * V;
                const float *qt = q + rk, *kt = k + rk, *vt = v + rv;
                float *ot = o + rv, b = beta[(size_t)t * H + h], alpha = expf(g[(size_t)t * H + h]);
                for (int c = 0; c < V; c++) { u[c] = vt[c]; ot[c] = 0.0f; }
                for (int a = 0; a < K; a++) {
                    float *Sa = S + (size_t)a * V, ka = kt[a];
                    #pragma omp simd
                    for (int c = 0; c < V; c++) { Sa[c] *= alpha; u[c] -= ka * Sa[c]; }
                }
                for (int a = 0; a < K; a++) {
                    float *Sa = S + (size_t)a * V, bk = b * kt[a], qa = scale * qt[a];
                    #pragma omp simd
                    for (int c = 0; c < V; c++) { Sa[c] += bk * u[c]; ot[c] += qa * Sa[c]; }
                }
            }
        }
        free(S);
        free(u);
    }
}

/* Activations of one layer over a block of up to cap tokens, and the LM head's logits. */
typedef struct {
    int cap;
    float *h, *x, *mix;                   /* residual stream, normed input, mixer / MLP output [cap, D] */
    float *q, *k, *v, *qc, *kc, *vc;      /* projections, conv+silu outputs [cap, mixer width] */
    float *qn, *kn, *o, *on, *gpre;       /* normalised q, k; mixer output before / after its norm; 'N' gate */
    float *rstd, *bpre, *beta, *lse;      /* [cap * the most heads of any kind] */
    float *apre, *gdec;                   /* 'N' [cap * Hg]: x W_a^T, the log decay */
    float *gate, *up;                     /* [cap, hidden_size] */
    float *logits, *losses;               /* [EVAL_HEAD_TOKS, vocab_size], [EVAL_HEAD_TOKS] */
    int *inputs, *targets;                /* [cap] */
} BlockState;

static void blockstate_build(BlockState *b, const DNConfig *c, int cap) {
    memset(b, 0, sizeof *b);
    b->cap = cap;
    size_t nd = (size_t)cap * c->d_model, nw = (size_t)cap * cfg_mixer_width(c), heads = cfg_max_heads(c);
    float **stream[] = {&b->h, &b->x, &b->mix};
    for (size_t i = 0; i < sizeof stream / sizeof stream[0]; i++) *stream[i] = ALLOC(float, nd);
    float **vecs[] = {&b->q, &b->k, &b->v, &b->qc, &b->kc, &b->vc, &b->qn, &b->kn, &b->o, &b->on, &b->gpre};
    for (size_t i = 0; i < sizeof vecs / sizeof vecs[0]; i++) *vecs[i] = ALLOC(float, nw);
    float **small[] = {&b->rstd, &b->bpre, &b->beta, &b->lse, &b->apre, &b->gdec};
    for (size_t i = 0; i < sizeof small / sizeof small[0]; i++) *small[i] = ALLOC(float, (size_t)cap * (heads > 0 ? heads : 1));
    b->gate = ALLOC(float, (size_t)cap * c->hidden_size);
    b->up = ALLOC(float, (size_t)cap * c->hidden_size);
    b->logits = ALLOC(float, (size_t)EVAL_HEAD_TOKS * c->vocab_size);
    b->losses = ALLOC(float, EVAL_HEAD_TOKS);
    b->inputs = ALLOC(int, cap);
    b->targets = ALLOC(int, cap);
}

static void blockstate_free(BlockState *b) {
    float *vecs[] = {b->h, b->x, b->mix, b->q, b->k, b->v, b->qc, b->kc, b->vc, b->qn, b->kn, b->o,
                     b->on, b->gpre, b->rstd, b->bpre, b->beta, b->lse, b->apre, b->gdec, b->gate, b->up,
                     b->logits, b->losses};
    for (size_t i = 0; i < sizeof vecs / sizeof vecs[0]; i++) free(vecs[i]);
    free(b->inputs);
    free(b->targets);
    memset(b, 0, sizeof *b);
}

static void vec_add(float *h, const float *x, size_t n) {
    #pragma omp parallel for simd schedule(static) if (n >= (1u << 16))
    for (size_t i = 0; i < n; i++) h[i] += x[i];
}

/* The sum of the next-token losses of b->inputs[0..T) against b->targets[0..T), T <= b->cap,
 * from a zero state: ref_model_forward(model of B = 1, T, chunk = 0) * T, up to rounding. */
static double forward_block(const Model *m, BlockState *b, int T) {
    const DNConfig *c = &m->cfg;
    const float *w = m->w;
    int D = c->d_model, I = c->hidden_size, V = c->vocab_size;
    size_t TD = (size_t)T * D;
    float eps = c->norm_eps;
    ref_embedding_forward(b->h, b->inputs, w + m->t.embed, T, D);
    for (int l = 0; l < c->n_layer; l++) {
        const size_t *P = m->t.layer[l].p;
        ref_rmsnorm_forward(b->x, b->rstd, b->h, w + P[DN_P_ATTN_NORM], T, D, eps);
        if (dn_kind_has_conv(c->layers[l])) {
            int H = c->n_head, K = c->head_dim, cs = c->conv_size, delta = c->layers[l] == 'D';
            gemm_nt(b->q, b->x, w + P[DN_P_Q], T, D, D);
            gemm_nt(b->k, b->x, w + P[DN_P_K], T, D, D);
            gemm_nt(b->v, b->x, w + P[DN_P_V], T, D, D);
            if (delta) gemm_nt(b->bpre, b->x, w + P[DN_P_B], T, D, H);
            ref_conv_silu_forward(b->qc, b->q, w + P[DN_P_Q_CONV], 1, T, D, cs);
            ref_conv_silu_forward(b->kc, b->k, w + P[DN_P_K_CONV], 1, T, D, cs);
            ref_conv_silu_forward(b->vc, b->v, w + P[DN_P_V_CONV], 1, T, D, cs);
            ref_l2norm_forward(b->qn, b->qc, T * H, K, c->l2_eps);
            ref_l2norm_forward(b->kn, b->kc, T * H, K, c->l2_eps);
            if (delta) {
                ref_sigmoid_forward(b->beta, b->bpre, T * H);
                delta_rule_block(b->o, b->qn, b->kn, b->vc, b->beta, T, H, K, (float)(1.0 / sqrt((double)K)));
            } else {
                ref_linear_attn_recurrent_forward(b->o, NULL, b->qn, b->kn, b->vc, NULL, 1, T, H, K, K, (float)(1.0 / sqrt((double)K)));
            }
            ref_rmsnorm_forward(b->on, b->rstd, b->o, w + P[DN_P_O_NORM], T * H, K, eps);
            gemm_nt(b->mix, b->on, w + P[DN_P_O], T, D, D);
        } else if (c->layers[l] == 'N') {
            int H = c->gdn_heads, K = c->gdn_head_dim, Vg = dn_gdn_value_dim(c), cs = c->conv_size;
            int HK = dn_gdn_key_width(c), HV = dn_gdn_value_width(c);
            gemm_nt(b->q, b->x, w + P[DN_P_Q], T, D, HK);
            gemm_nt(b->k, b->x, w + P[DN_P_K], T, D, HK);
            gemm_nt(b->v, b->x, w + P[DN_P_V], T, D, HV);
            gemm_nt(b->apre, b->x, w + P[DN_P_A], T, D, H);
            gemm_nt(b->bpre, b->x, w + P[DN_P_B], T, D, H);
            gemm_nt(b->gpre, b->x, w + P[DN_P_G], T, D, HV);
            ref_conv_silu_forward(b->qc, b->q, w + P[DN_P_Q_CONV], 1, T, HK, cs);
            ref_conv_silu_forward(b->kc, b->k, w + P[DN_P_K_CONV], 1, T, HK, cs);
            ref_conv_silu_forward(b->vc, b->v, w + P[DN_P_V_CONV], 1, T, HV, cs);
            ref_l2norm_forward(b->qn, b->qc, T * H, K, c->l2_eps);
            ref_l2norm_forward(b->kn, b->kc, T * H, K, c->l2_eps);
            ref_sigmoid_forward(b->beta, b->bpre, T * H);
            ref_gdn_decay_forward(b->gdec, b->apre, w + P[DN_P_A_LOG], w + P[DN_P_DT_BIAS], T, H);
            gated_delta_rule_block(b->o, b->qn, b->kn, b->vc, b->beta, b->gdec, T, H, K, Vg, (float)(1.0 / sqrt((double)K)));
            ref_gated_rmsnorm_forward(b->on, b->rstd, b->o, b->gpre, w + P[DN_P_O_NORM], T * H, Vg, eps);
            gemm_nt(b->mix, b->on, w + P[DN_P_O], T, HV, D);
        } else {
            int Hq = c->attn_heads, Hkv = c->attn_kv_heads, dh = dn_attn_head_dim(c), kvd = Hkv * dh;
            gemm_nt(b->q, b->x, w + P[DN_P_Q], T, D, D);
            gemm_nt(b->k, b->x, w + P[DN_P_K], T, D, kvd);
            gemm_nt(b->v, b->x, w + P[DN_P_V], T, D, kvd);
            ref_rope_forward(b->q, 1, T, Hq, dh, c->rope_base, 0);
            ref_rope_forward(b->k, 1, T, Hkv, dh, c->rope_base, 0);
            ref_attention_forward(b->o, b->lse, b->q, b->k, b->v, 1, T, Hq, Hkv, dh,
                                  c->layers[l] == 'S' ? c->window : 0);
            gemm_nt(b->mix, b->o, w + P[DN_P_O], T, D, D);
        }
        vec_add(b->h, b->mix, TD);
        if (c->no_mlp) continue;
        ref_rmsnorm_forward(b->x, b->rstd, b->h, w + P[DN_P_MLP_NORM], T, D, eps);
        gemm_nt(b->gate, b->x, w + P[DN_P_GATE], T, D, I);
        gemm_nt(b->up, b->x, w + P[DN_P_UP], T, D, I);
        ref_swiglu_forward(b->gate, b->gate, b->up, T * I);
        gemm_nt(b->mix, b->gate, w + P[DN_P_DOWN], T, I, D);
        vec_add(b->h, b->mix, TD);
    }
    ref_rmsnorm_forward(b->x, b->rstd, b->h, w + m->t.norm, T, D, eps);
    double sum = 0.0;
    for (int n0 = 0; n0 < T; n0 += EVAL_HEAD_TOKS) {   /* the LM head a slice of tokens at a time */
        int n = T - n0 < EVAL_HEAD_TOKS ? T - n0 : EVAL_HEAD_TOKS;
        gemm_nt(b->logits, b->x + (size_t)n0 * D, w + m->t.lm_head, n, D, V);
        ref_crossentropy_forward(b->losses, b->logits, b->targets + n0, n, V, V);
        for (int i = 0; i < n; i++) sum += b->losses[i];
    }
    return sum;
}

/* ----------------------------------------------------------------------------------------------
 * The two modes: generate text, or score a shard */

typedef struct {
    const char *checkpoint, *eval_path, *vocab_dir;
    const char *prompt;       /* the PROMPT argument, or the text of -f */
    size_t prompt_len;        /* its bytes (a prompt read with -f may hold NULs) */
    const char *prompt_file;  /* -f: read the prompt from this file ("-": stdin) */
    int steps;          /* -n tokens to generate */
    double temperature; /* -t */
    float topp;         /* -p */
    int topk;           /* -k */
    uint64_t seed;      /* -s */
    int block;          /* -b tokens per evaluation block */
    long eval_max;      /* --eval-max: score at most this many predictions (0: all) */
    int max_context;    /* --max-context */
    int ignore_eot;     /* --ignore-eot: keep generating past <|endoftext|> */
    int stats;          /* --stats: state bytes and RSS at the end */
    int eval_step;      /* --eval-step: score through the decode step, token by token */
} Options;

/* Read the prompt of -f: a regular file (a FIFO or a directory is refused without blocking), or
 * stdin for "-" (a pipe or a terminal: read to its end). *text gets the bytes, malloc'd and
 * NUL-terminated after *len of them. Returns 0, or -1 with err. */
static int read_prompt_file(const char *path, char **text, size_t *len, char *err, size_t errlen) {
    int is_stdin = strcmp(path, "-") == 0;
    FILE *f = is_stdin ? stdin : dn_open_regular(path, err, errlen);
    if (!f) return -1;
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap + 1);
    for (size_t k = 1; b && k > 0;) {  /* until fread gives nothing: end of file (or an error) */
        if (n == cap) {
            char *nb = cap <= SIZE_MAX / 4 ? realloc(b, 2 * cap + 1) : NULL;
            if (!nb) { free(b); b = NULL; break; }
            b = nb;
            cap *= 2;
        }
        k = fread(b + n, 1, cap - n, f);
        n += k;
    }
    int bad = ferror(f);
    if (!is_stdin) fclose(f);
    const char *name = is_stdin ? "stdin" : path;
    if (!b) { dn_seterr(err, errlen, "%s: out of memory reading the prompt", name); return -1; }
    if (bad) { dn_seterr(err, errlen, "%s: read error", name); free(b); return -1; }
    b[n] = 0;
    *text = b;
    *len = n;
    return 0;
}

static int encode_prompt(Tokenizer *tok, const char *prompt, size_t len, int **ids, int *n, int vocab) {
    char err[DN_ERR_LEN];
    int *pieces = NULL;
    size_t np = 0;
    if (tok_encode(tok, prompt, len, 0, &pieces, &np, err, sizeof err)) {
        fprintf(stderr, "infer: cannot encode the prompt: %s\n", err);
        return -1;
    }
    if (np >= (size_t)INT_MAX / 2) { fprintf(stderr, "infer: the prompt is too long (%zu tokens)\n", np); free(pieces); return -1; }
    /* every training document starts with <|endoftext|>: so does the prompt (alone if empty) */
    *ids = ALLOC(int, np + 1);
    (*ids)[0] = tok->eot;
    memcpy(*ids + 1, pieces, np * sizeof(int));
    free(pieces);
    *n = (int)np + 1;
    for (int i = 0; i < *n; i++)
        if ((*ids)[i] >= vocab) {
            fprintf(stderr, "infer: prompt token %d is outside this model's vocabulary of %d (is it a GPT-2-vocabulary model?)\n", (*ids)[i], vocab);
            free(*ids);
            return -1;
        }
    return 0;
}

static int generate(const Model *m, RunState *s, Tokenizer *tok, Sampler *sp, const Options *o) {
    int *ids = NULL, n_prompt = 0;
    if (encode_prompt(tok, o->prompt, o->prompt_len, &ids, &n_prompt, m->cfg.vocab_size)) return -1;
    int steps = o->steps;
    if (cfg_context_limited(&m->cfg, o->max_context)) {
        if (n_prompt > o->max_context) {
            fprintf(stderr, "infer: the prompt is %d tokens (with the leading <|endoftext|>), more than --max-context %d, the limit of this model's attention cache; raise --max-context or shorten the prompt\n", n_prompt, o->max_context);
            free(ids);
            return -1;
        }
        if (n_prompt + steps - 1 > o->max_context) {
            steps = o->max_context - n_prompt + 1;
            fprintf(stderr, "infer: generating %d tokens, not %d: --max-context %d limits this model's attention cache\n", steps, o->steps, o->max_context);
        }
    } else if ((long)n_prompt + steps > INT_MAX) {
        fprintf(stderr, "infer: prompt + -n exceeds %d positions\n", INT_MAX);
        free(ids);
        return -1;
    }
    fwrite(o->prompt, 1, o->prompt_len, stdout);
    fflush(stdout);
    double t0 = now_s();
    float *logits = NULL;
    for (int i = 0; i < n_prompt; i++) logits = forward_step(m, s, ids[i], i, i == n_prompt - 1);
    double t1 = now_s();
    long rss0 = o->stats ? rss_kib() : 0;
    int pos = n_prompt, generated = 0;
    for (; generated < steps; generated++) {
        int next = sampler_next(sp, logits);
        if (next == tok->eot && !o->ignore_eot) break;
        size_t len = 0;
        const char *bytes = tok_token(tok, next, &len);
        if (bytes) fwrite(bytes, 1, len, stdout);
        fflush(stdout);
        if (generated + 1 < steps) logits = forward_step(m, s, next, pos++, 1);
    }
    double t2 = now_s();
    printf("\n");
    fprintf(stderr, "prefill: %d tokens in %.3f s (%.1f tok/s)\n", n_prompt, t1 - t0, n_prompt / (t1 - t0));
    if (generated > 0)
        fprintf(stderr, "decode: %d tokens in %.3f s (%.1f tok/s)%s\n", generated, t2 - t1, generated / (t2 - t1),
                generated < steps ? ", stopped at <|endoftext|>" : "");
    if (o->stats)
        fprintf(stderr, "stats: recurrent state %zu bytes; RSS %ld KiB after the prefill, %ld KiB after %d tokens\n",
                runstate_bytes(s, &m->cfg), rss0, rss_kib(), generated);
    free(ids);
    return 0;
}

/* Mean next-token loss over ntok tokens in blocks of block + 1 tokens (the last may be shorter):
 * block i starts at token i*block, its first tokens are the inputs, the next ones the targets, and
 * the state starts from zero at each block. At most max_pred predictions (0: all); the mean is
 * over predictions (token-weighted), so a short last block weighs by its length.
 *
 * eval_tokens scores a block with one forward over all its tokens (forward_block);
 * eval_tokens_step (--eval-step) feeds it token by token through the decode step, forward_step,
 * the path generation takes: much slower, and the proof that decoding gives the same losses. */
static double eval_tokens(const Model *m, const uint16_t *tok, size_t ntok, int block, long max_pred,
                          long *npred) {
    double sum = 0.0;
    long count = 0;
    int tty = isatty(2);
    size_t nblocks = ntok > 1 ? (ntok - 2) / block + 1 : 0;
    BlockState b;
    blockstate_build(&b, &m->cfg, ntok - 1 < (size_t)block ? (int)(ntok - 1) : block);
    for (size_t i = 0; i < nblocks && (max_pred <= 0 || count < max_pred); i++) {
        size_t start = i * block;
        int len = ntok - 1 - start < (size_t)block ? (int)(ntok - 1 - start) : block;
        if (max_pred > 0 && len > max_pred - count) len = (int)(max_pred - count);  /* causal: a prefix */
        for (int t = 0; t < len; t++) { b.inputs[t] = tok[start + t]; b.targets[t] = tok[start + t + 1]; }
        sum += forward_block(m, &b, len);
        count += len;
        if (tty) fprintf(stderr, "\reval: block %zu/%zu, loss %.4f", i + 1, nblocks, sum / count);
    }
    if (tty) fprintf(stderr, "\n");
    blockstate_free(&b);
    *npred = count;
    return count ? sum / count : 0.0;
}

static double eval_tokens_step(const Model *m, RunState *s, const uint16_t *tok, size_t ntok, int block,
                               long max_pred, long *npred) {
    double sum = 0.0;
    long count = 0;
    int V = m->cfg.vocab_size, tty = isatty(2);
    size_t nblocks = ntok > 1 ? (ntok - 2) / block + 1 : 0;
    for (size_t b = 0; b < nblocks && (max_pred <= 0 || count < max_pred); b++) {
        size_t start = b * block;
        int len = ntok - 1 - start < (size_t)block ? (int)(ntok - 1 - start) : block;
        runstate_reset(s, &m->cfg);
        for (int t = 0; t < len && (max_pred <= 0 || count < max_pred); t++) {
            const float *logits = forward_step(m, s, tok[start + t], t, 1);
            int target = tok[start + t + 1], nthreads = serial_begin();
            sum += ref_crossentropy_forward(NULL, logits, &target, 1, V, V);
            serial_end(nthreads);
            count++;
        }
        if (tty) fprintf(stderr, "\reval: block %zu/%zu, loss %.4f", b + 1, nblocks, sum / count);
    }
    if (tty) fprintf(stderr, "\n");
    *npred = count;
    return count ? sum / count : 0.0;
}

static int evaluate(const Model *m, RunState *s, const Options *o) {
    char err[DN_ERR_LEN];
    uint16_t *tok = NULL;
    size_t ntok = 0;
    if (shard_read(o->eval_path, m->cfg.vocab_size, &tok, &ntok, err, sizeof err)) {
        fprintf(stderr, "infer: %s\n", err);
        return -1;
    }
    if (ntok < 2) {
        fprintf(stderr, "infer: %s: %zu tokens, need at least 2 to score one prediction\n", o->eval_path, ntok);
        free(tok);
        return -1;
    }
    if (o->eval_step && cfg_context_limited(&m->cfg, o->max_context) && o->block > o->max_context) {
        fprintf(stderr, "infer: -b %d is more than --max-context %d (the attention cache limit)\n", o->block, o->max_context);
        free(tok);
        return -1;
    }
    long npred = 0;
    double t0 = now_s();
    double loss = o->eval_step ? eval_tokens_step(m, s, tok, ntok, o->block, o->eval_max, &npred)
                               : eval_tokens(m, tok, ntok, o->block, o->eval_max, &npred);
    double t1 = now_s();
    printf("eval %s: %ld predictions in blocks of %d: loss %.6f perplexity %.4f\n", o->eval_path, npred,
           o->block, loss, exp(loss));
    fprintf(stderr, "eval: %ld tokens in %.3f s (%.1f tok/s%s)\n", npred, t1 - t0, npred / (t1 - t0),
            o->eval_step ? ", token by token" : "");
    free(tok);
    return 0;
}

/* ----------------------------------------------------------------------------------------------
 * Command line */

static void usage(FILE *f) {
    fprintf(f,
        "usage: ./infer CHECKPOINT [PROMPT] [options]       generate text after PROMPT\n"
        "       ./infer CHECKPOINT -f FILE [options]         generate text after the prompt in FILE\n"
        "       ./infer CHECKPOINT --eval SHARD [-b N]       mean loss / perplexity of a token shard\n"
        "\n"
        "CHECKPOINT is a deltanet.c safetensors file (F32 or BF16). The prompt is GPT-2-encoded after\n"
        "an <|endoftext|> token (as every training document starts); an empty or absent prompt\n"
        "generates from <|endoftext|> alone. Text streams to stdout, tokens/s to stderr.\n"
        "\n"
        "  -f, --file FILE      read the prompt from FILE, every byte of it ('-f -': from stdin), for\n"
        "                       prompts longer than the command line takes; FILE must be a regular file\n"
        "  -n, --steps N        tokens to generate (default 256); stops early at <|endoftext|>\n"
        "  -t, --temperature T  sampling temperature in [0, 1e6] (default 1.0; 0 = greedy); the softmax\n"
        "                       is exact for any T: a tiny T samples the argmax, a huge one uniformly\n"
        "  -p, --top-p P        nucleus sampling: smallest set of tokens with mass >= P (default 1 = off)\n"
        "  -k, --top-k K        sample among the K most likely tokens (default 0 = off)\n"
        "  -s, --seed S         random seed (default %d; printed to stderr)\n"
        "  -V, --vocab DIR      folder with GPT-2's encoder.json and vocab.bpe (default %s)\n"
        "      --ignore-eot     keep generating past <|endoftext|>\n"
        "      --max-context N  positions an attention cache may hold (default %d): a global ('G')\n"
        "                       layer's, and a sliding window's ('S') longer than N; DeltaNet layers\n"
        "                       and shorter windows keep fixed-size state, no limit\n"
        "      --stats          print the recurrent-state bytes and the process RSS (after the\n"
        "                       prefill and at the end: equal for DeltaNet / sliding-window models)\n"
        "  -e, --eval SHARD     score an llm.c token shard (magic 20240520, a regular file) instead\n"
        "                       of generating\n"
        "  -b, --block N        eval: tokens per block, each block scored from a zero state by one\n"
        "                       full-sequence forward (matrix products over the block; default 1024)\n"
        "      --eval-max N     eval: score at most N predictions (default: the whole shard)\n"
        "      --eval-step      eval: score token by token through the decode step instead (the path\n"
        "                       generation takes; same loss, many times slower)\n"
        "  -h, --help           this help\n"
        "Threads: OMP_NUM_THREADS (decoding splits matrix-vector products over output rows; --eval\n"
        "splits matrix products over blocks of weight rows and tokens).\n",
        INFER_DEFAULT_SEED, TOK_DEFAULT_DIR, INFER_DEFAULT_MAX_CONTEXT);
}

static void die_usage(const char *fmt, const char *arg) {
    fprintf(stderr, "infer: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(./infer -h for help)\n");
    exit(2);
}

static long parse_long(const char *s, long lo, long hi, const char *what) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        char msg[160];
        snprintf(msg, sizeof msg, "%s must be an integer in [%ld, %ld], got '%%s'", what, lo, hi);
        die_usage(msg, s);
    }
    return v;
}

static double parse_double(const char *s, double lo, double hi, const char *what) {
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= lo && v <= hi)) {
        char msg[160];
        snprintf(msg, sizeof msg, "%s must be a number in [%g, %g], got '%%s'", what, lo, hi);
        die_usage(msg, s);
    }
    return v;
}

static void parse_args(Options *o, int argc, char **argv) {
    *o = (Options){.prompt = "", .vocab_dir = TOK_DEFAULT_DIR, .steps = 256, .temperature = 1.0f,
                   .topp = 1.0f, .seed = INFER_DEFAULT_SEED, .block = 1024,
                   .max_context = INFER_DEFAULT_MAX_CONTEXT};
    enum { O_IGNORE_EOT = 1000, O_MAX_CONTEXT, O_STATS, O_EVAL_MAX, O_EVAL_STEP };
    static const struct option longs[] = {
        {"steps", required_argument, 0, 'n'}, {"temperature", required_argument, 0, 't'},
        {"top-p", required_argument, 0, 'p'}, {"top-k", required_argument, 0, 'k'},
        {"seed", required_argument, 0, 's'}, {"vocab", required_argument, 0, 'V'},
        {"eval", required_argument, 0, 'e'}, {"block", required_argument, 0, 'b'},
        {"help", no_argument, 0, 'h'}, {"ignore-eot", no_argument, 0, O_IGNORE_EOT},
        {"max-context", required_argument, 0, O_MAX_CONTEXT}, {"stats", no_argument, 0, O_STATS},
        {"eval-max", required_argument, 0, O_EVAL_MAX}, {"eval-step", no_argument, 0, O_EVAL_STEP},
        {"file", required_argument, 0, 'f'}, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "n:t:p:k:s:V:e:b:f:h", longs, NULL)) != -1) {
        switch (ch) {
        case 'n': o->steps = (int)parse_long(optarg, 0, INT_MAX / 2, "-n (tokens)"); break;
        case 't': o->temperature = parse_double(optarg, 0.0, 1e6, "-t (temperature)"); break;
        case 'p': o->topp = (float)parse_double(optarg, 1e-9, 1.0, "-p (top-p)"); break;
        case 'f': o->prompt_file = optarg; break;
        case 'k': o->topk = (int)parse_long(optarg, 0, INT_MAX, "-k (top-k)"); break;
        case 's': o->seed = (uint64_t)parse_long(optarg, 0, LONG_MAX, "-s (seed)"); break;
        case 'V': o->vocab_dir = optarg; break;
        case 'e': o->eval_path = optarg; break;
        case 'b': o->block = (int)parse_long(optarg, 1, INT_MAX / 2, "-b (block tokens)"); break;
        case 'h': usage(stdout); exit(0);
        case O_IGNORE_EOT: o->ignore_eot = 1; break;
        case O_MAX_CONTEXT: o->max_context = (int)parse_long(optarg, 1, INT_MAX / 2, "--max-context"); break;
        case O_STATS: o->stats = 1; break;
        case O_EVAL_MAX: o->eval_max = parse_long(optarg, 0, LONG_MAX, "--eval-max"); break;
        case O_EVAL_STEP: o->eval_step = 1; break;
        default: die_usage("%s", "unknown option or missing argument");
        }
    }
    int npos = argc - optind;
    if (npos < 1) die_usage("%s", "missing CHECKPOINT");
    if (npos > 2) die_usage("too many arguments, starting at '%s' (quote the prompt)", argv[optind + 2]);
    if (npos == 2 && o->eval_path) die_usage("give a PROMPT or --eval, not both ('%s')", argv[optind + 1]);
    if (npos == 2 && o->prompt_file) die_usage("give a PROMPT or -f, not both ('%s')", argv[optind + 1]);
    if (o->prompt_file && o->eval_path) die_usage("give -f or --eval, not both ('%s')", o->prompt_file);
    o->checkpoint = argv[optind];
    if (npos == 2) o->prompt = argv[optind + 1];
    o->prompt_len = strlen(o->prompt);
}

#ifndef INFER_TESTING
int main(int argc, char **argv) {
    Options o;
    parse_args(&o, argc, argv);
    char err[DN_ERR_LEN], *prompt_text = NULL;
    if (o.prompt_file) {
        if (read_prompt_file(o.prompt_file, &prompt_text, &o.prompt_len, err, sizeof err)) {
            fprintf(stderr, "infer: -f: %s\n", err);
            return 1;
        }
        o.prompt = prompt_text;
    }
    Model m;
    if (model_load(&m, o.checkpoint, err, sizeof err)) { fprintf(stderr, "infer: %s\n", err); free(prompt_text); return 1; }
    fprintf(stderr, "model: %s, layers %s, d_model %d, %zu parameters (%.1f MB of fp32 weights read per token)\n",
            o.checkpoint, m.cfg.layers, m.cfg.d_model, m.t.total_real, model_bytes_per_token(&m) / 1e6);
    RunState s;
    runstate_build(&s, &m.cfg, o.max_context);
    int rc;
    if (o.eval_path) {
        rc = evaluate(&m, &s, &o);
    } else {
        Tokenizer tok;
        if (tok_load(&tok, o.vocab_dir, err, sizeof err)) {
            fprintf(stderr, "infer: cannot load the GPT-2 vocabulary: %s\n", err);
            runstate_free(&s, &m.cfg);
            model_free(&m);
            free(prompt_text);
            return 1;
        }
        fprintf(stderr, "seed %llu, temperature %g, top-p %g, top-k %d\n", (unsigned long long)o.seed,
                o.temperature, o.topp, o.topk);
        Sampler sp;
        if (sampler_build(&sp, m.cfg.vocab_size, o.temperature, o.topp, o.topk, o.seed)) {
            fprintf(stderr, "infer: out of memory (sampler)\n");
            exit(1);
        }
        rc = generate(&m, &s, &tok, &sp, &o);
        sampler_free(&sp);
        tok_free(&tok);
    }
    runstate_free(&s, &m.cfg);
    model_free(&m);
    free(prompt_text);
    return rc ? 1 : 0;
}
#endif
