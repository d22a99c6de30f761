/*
 * model_gpu_state.cuh -- the state of the GPU model (model_gpu.cuh): the structs of its parameters,
 * activations and scratch buffers, gpu_act_table (the one place that sizes every activation
 * buffer), allocation with a clear out-of-memory message, the per-phase profiler, and create /
 * destroy / host transfers. Memory layout: see model_gpu.cuh's opening paragraph.
 */
#pragma once
#include <cmath>
#include <cstring>
#include <type_traits>
#include "common.cuh"
#include "matmul.cuh"
#include "embedding.cuh"
#include "rmsnorm.cuh"
#include "conv.cuh"
#include "crossentropy.cuh"
#include "attention.cuh"
#include "deltarule.cuh"
#include "gate.cuh"
#include "linattn.cuh"
#include "adamw.cuh"
#include "../model.h"

#define GPU_HEAD_LOGITS_BYTES ((size_t)512 << 20) /* logits of one LM-head row chunk, at most */
#define GPU_ALIGN 256                             /* every carved buffer starts on this */

// ----------------------------------------------------------------------------
// allocation with a clear out-of-memory message


/* cudaMalloc that, on failure, prints one line naming what was being allocated and how much, with
 * the free and total device memory, and exits (no CUDA error dump). */
static inline void *gpu_malloc_or_die(size_t bytes, const char *what) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky-free error so the query below works */
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        fprintf(stderr, "out of GPU memory: allocating %s needs %.2f GiB, %.2f GiB free of %.2f GiB (%s)\n"
                        "  HINT: lower the micro-batch -b or the sequence length -t (keep --total-batch: more "
                        "gradient accumulation), or use a smaller model\n",
                what, bytes / 1073741824.0, fr / 1073741824.0, tot / 1073741824.0, cudaGetErrorString(e));
        exit(EXIT_FAILURE);
    }
    return p;
}

static inline void *gpu_host_alloc_or_die(size_t bytes, const char *what) {
    void *p = NULL;
    if (cudaMallocHost(&p, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError();
        fprintf(stderr, "out of pinned host memory: allocating %s needs %.1f MiB\n", what, bytes / 1048576.0);
        exit(EXIT_FAILURE);
    }
    return p;
}

// ----------------------------------------------------------------------------
// optional per-phase timing (train_deltanet --profile): CUDA events between the phases of a step,
// summed per label. Off by default; a profiled step runs eagerly (no graph).

#define GPU_PROF_EVENTS 2048
#define GPU_PROF_LABELS 64

typedef struct {
    int on, n, nlab;
    cudaEvent_t ev[GPU_PROF_EVENTS];
    const char *ev_label[GPU_PROF_EVENTS]; /* the phase that ends at event i */
    const char *label[GPU_PROF_LABELS];
    double ms[GPU_PROF_LABELS];
    long steps;
} GPUProf;

static inline void prof_mark(GPUProf *p, const char *label, cudaStream_t st) {
    if (!p || !p->on || p->n >= GPU_PROF_EVENTS) return;
    p->ev_label[p->n] = label;
    cudaCheck(cudaEventRecord(p->ev[p->n++], st));
}

/* After the stream is synchronised: add the time between consecutive events to their labels. */
static inline void prof_collect(GPUProf *p) {
    if (!p || !p->on) return;
    for (int i = 1; i < p->n; i++) {
        float ms = 0;
        cudaCheck(cudaEventElapsedTime(&ms, p->ev[i - 1], p->ev[i]));
        int j = 0;
        while (j < p->nlab && strcmp(p->label[j], p->ev_label[i])) j++;
        if (j == p->nlab && p->nlab < GPU_PROF_LABELS) { p->label[p->nlab] = p->ev_label[i]; p->ms[p->nlab++] = 0; }
        if (j < GPU_PROF_LABELS) p->ms[j] += ms;
    }
    p->n = 0;
    p->steps++;
}

static inline void prof_reset(GPUProf *p) { p->nlab = 0; p->steps = 0; p->n = 0; }

// ----------------------------------------------------------------------------
// the model's state

/* The activations one layer keeps for its backward (NULL where the layer kind has none). */
template <typename floatX> struct GPULayerActs {
    floatX *mid;        /* [N,D]   residual stream after the mixer */
    floatX *out;        /* [N,D]   residual stream after the MLP: the next layer's input */
    float *rstd_attn;   /* [N]     1/rms of the layer input (attn_norm) */
    float *rstd_mlp;    /* [N]     1/rms of mid (mlp_norm) */
    floatX *xn_attn;    /* [N,D]   the mixer's input attn_norm(h_l) (kept: the backward needs no recompute) */
    floatX *xn_mlp;     /* [N,D]   the MLP's input mlp_norm(mid) (kept too) */
    floatX *gu;         /* [N,2I]  gate|up projections (the backward overwrites them with their gradient) */
                        /* (mid, rstd_mlp, xn_mlp, gu: none with no_mlp) */
    /* DeltaNet and linear attention ('D', 'L') */
    floatX *qkv_pre;    /* [N,3D] rows q|k|v: the fused projection, before the conv */
    floatX *beta;       /* [N,H]   sigmoid(x W_b^T)                                        'D' only */
    floatX *o;          /* [N,D]   delta-rule (linear-attention) output [B,T,H,V] */
    float *rstd_o;      /* [N*H]   1/rms of each head of o */
    floatX *dr_saved;   /* what the delta-rule forward saves for its backward (the chunks' (I+A)^-1); 'D' only */
    /* gated DeltaNet ('N', Hg heads, HK = Hg Kg, HV = Hg Vg): qkv_pre holds the three pre-conv planes
     * q [N,HK], k [N,HK], v [N,HV] one after the other; beta [N,Hg]; o [N,HV]; rstd_o [N*Hg] */
    floatX *apre;       /* [N,Hg]  x W_a^T, the decay's input */
    float *gdec;        /* [N,Hg]  the log decay g (fp32) */
    floatX *gpre;       /* [N,HV]  x W_g^T, the output gate's input */
    floatX *gdr_saved;  /* what the gated delta-rule forward saves for its backward */
    /* attention */
    floatX *q, *k, *v;  /* [N,D], [N,kvd], [N,kvd] (q, k after RoPE) */
    floatX *att;        /* [N,D]   attention output */
    float *lse;         /* [B,Hq,T] */
};

/* Buffers shared by all layers (their contents live for one layer's forward or backward). */
template <typename floatX> struct GPUScratch {
    floatX *emb;        /* [N,D]   h_0, the embedding (layer 0's input; kept for its backward) */
    float *rstd_final;  /* [N] */
    floatX *xn;         /* [N,D]   the normed input of the current sublayer (last: the head's input) */
    floatX *dx;         /* [N,D]   gradient of the current sublayer's input x (forward: DeltaNet's normed o) */
    floatX *branch;     /* [N,D]   the sublayer's output before the residual add (backward: the gradient
                         *         of the mixer's output before W_o) */
    floatX *dres;       /* [N,D]   gradient of the residual stream */
    floatX *qkv;        /* [N*max(3D,I)]         q, k, v after the conv ([3][N,D]), then the gradient of
                         *                       the pre-conv q|k|v; MLP: silu(g)*u and its gradient */
    floatX *dqkv;       /* [N*max(3D,D+2 kvd)]   dq, dk, dv */
    floatX *bpre;       /* [N,max(H,Hg)] x W_b^T, then its gradient ('N': also the gradient of x W_a^T) */
    floatX *dbeta;      /* [N,max(H,Hg)] */
    /* gated DeltaNet ('N') only, NULL otherwise */
    floatX *gw1, *gw2, *gw3; /* [N,HV] the gated norm's output (forward), then do; dnormed; dgate */
    float *dgdec;       /* [N,Hg]  gradient of the log decay */
    floatX *logits;     /* [head_rows,Vp] */
    float *losses;      /* [N] */
    float *hits;        /* [N]     argmax == target per row (validation accuracy) */
    float *rope;        /* [T,dh/2,2] RoPE cos/sin table (attention layers only) */
    void *kscratch;     /* kernel scratch, the largest any kernel asks for */
    size_t kscratch_bytes;
};

template <typename floatX> struct GPUModel {
    DNParamTable t;
    DNConfig cfg;
    int B, T;           /* micro-batch shape the activations are sized for */
    int accum;          /* micro-batches per optimizer step */
    int head_rows;      /* LM-head row chunk */
    cudaStream_t stream;
    MatmulContext *mm;
    /* parameters (one allocation each) */
    float *params;      /* fp32 master weights [t.total] */
    floatX *wx;         /* floatX copy used by the matmuls (== params in fp32 mode) */
    float *grads;       /* [t.total] */
    float *adam_m, *adam_v;
    AdamWSegments seg;
    /* activations */
    void *act_mem;
    size_t act_bytes;
    GPULayerActs<floatX> *L;
    GPUScratch<floatX> S;
    /* step I/O: device and pinned host mirrors */
    int *d_tokens;      /* [accum][2][N] inputs | targets of each micro-batch */
    int *h_tokens;      /* pinned mirror */
    AdamWHParams *d_hp, *h_hp;
    GradNorm *d_gn;
    float *d_loss;      /* mean loss of the step (accumulated over micro-batches) */
    float *d_wts, *h_wts; /* [accum][N] loss-mask row weights (crossentropy.cuh), NULL without a mask */
    float *d_hits;      /* validation: the number of rows whose argmax is the target */
    float *h_out;       /* pinned: [0] loss, [1] grad norm */
    float *norm_scratch;
    GPUProf *prof;      /* NULL unless profiling */
    /* data parallelism (set by train_deltanet for several ranks; NULL for one process):
     * reduce(ctx, grads, n, loss, stream) makes the gradients and the step's loss the group's
     * mean after the last micro-batch's backward (enqueued, so the CUDA graph captures it);
     * wait(ctx, stream) replaces the host's wait for the step (it can watch the group). */
    void (*reduce)(void *ctx, float *grads, size_t n, float *loss, cudaStream_t stream);
    void (*wait)(void *ctx, cudaStream_t stream);
    void *dist_ctx;
    /* the captured step */
    int steps_run;
    int use_graph;
    cudaGraphExec_t graph;
    int have_graph;
};

// ----------------------------------------------------------------------------
// sizes: the one place that computes every activation buffer

/* One activation buffer: a name (for messages), its size, where its pointer goes. */
typedef struct { const char *name; size_t bytes; void **ptr; } GPUActBuf;

template <typename floatX>
static int gpu_act_table(GPUModel<floatX> *m, GPUActBuf *tab, int cap) {
    const DNConfig *c = &m->cfg;
    const size_t N = (size_t)m->B * m->T, D = c->d_model, I = c->hidden_size, H = c->n_head;
    const size_t Hq = c->attn_heads, dh = D / Hq, kvd = (size_t)c->attn_kv_heads * dh, Vp = c->padded_vocab;
    const size_t X = sizeof(floatX), F = sizeof(float);
    const size_t Hg = c->gdn_heads, Kg = c->gdn_head_dim, Vg = dn_gdn_value_dim(c);
    const size_t HK = Hg * Kg, HV = Hg * Vg, Hmax = H > Hg ? H : Hg;
    int n = 0, has_d = 0, has_c = 0, has_a = 0, has_n = 0;
#define GPU_ACT(nm, bytes_, p) do { if (n < cap) { tab[n].name = nm; tab[n].bytes = (bytes_); tab[n].ptr = (void **)(p); } n++; } while (0)
    for (int l = 0; l < c->n_layer; l++) {
        GPULayerActs<floatX> *a = &m->L[l];
        GPU_ACT("out", N * D * X, &a->out);
        GPU_ACT("rstd_attn", N * F, &a->rstd_attn);
        GPU_ACT("xn_attn", N * D * X, &a->xn_attn);
        if (!c->no_mlp) {
            GPU_ACT("mid", N * D * X, &a->mid);
            GPU_ACT("rstd_mlp", N * F, &a->rstd_mlp);
            GPU_ACT("xn_mlp", N * D * X, &a->xn_mlp);
            GPU_ACT("gate|up", N * 2 * I * X, &a->gu);
        }
        if (dn_kind_has_conv(c->layers[l])) {
            has_c = 1;
            GPU_ACT("qkv_pre", N * 3 * D * X, &a->qkv_pre);
            GPU_ACT("o", N * D * X, &a->o);
            GPU_ACT("rstd_o", N * H * F, &a->rstd_o);
            if (c->layers[l] == 'D') {
                has_d = 1;
                GPU_ACT("beta", N * H * X, &a->beta);
                GPU_ACT("delta rule saved", deltarule_saved_size<floatX>(m->B, m->T, c->n_head), &a->dr_saved);
            }
        } else if (c->layers[l] == 'N') {
            has_n = 1;
            GPU_ACT("gdn q|k|v pre", N * (2 * HK + HV) * X, &a->qkv_pre);
            GPU_ACT("beta", N * Hg * X, &a->beta);
            GPU_ACT("gdn a", N * Hg * X, &a->apre);
            GPU_ACT("gdn decay", N * Hg * F, &a->gdec);
            GPU_ACT("gdn gate", N * HV * X, &a->gpre);
            GPU_ACT("o", N * HV * X, &a->o);
            GPU_ACT("rstd_o", N * Hg * F, &a->rstd_o);
            GPU_ACT("gated delta rule saved", gated_deltarule_saved_size<floatX>(m->B, m->T, c->gdn_heads), &a->gdr_saved);
        } else {
            has_a = 1;
            GPU_ACT("q", N * D * X, &a->q);
            GPU_ACT("k", N * kvd * X, &a->k);
            GPU_ACT("v", N * kvd * X, &a->v);
            GPU_ACT("att", N * D * X, &a->att);
            GPU_ACT("lse", N * Hq * F, &a->lse);
        }
    }
    GPUScratch<floatX> *s = &m->S;
    size_t qkv_w = I, dqkv_w = 1; /* row widths of qkv and dqkv */
    if (has_c) { qkv_w = qkv_w > 3 * D ? qkv_w : 3 * D; dqkv_w = 3 * D; }
    if (has_a) { size_t w = D + 2 * kvd + 2 * 16; dqkv_w = dqkv_w > w ? dqkv_w : w; } /* + alignment slack */
    if (has_n) { qkv_w = qkv_w > 2 * HK + HV ? qkv_w : 2 * HK + HV; dqkv_w = dqkv_w > 2 * HK + HV ? dqkv_w : 2 * HK + HV; }
    GPU_ACT("emb", N * D * X, &s->emb);
    GPU_ACT("rstd_final", N * F, &s->rstd_final);
    GPU_ACT("xn", N * D * X, &s->xn);
    GPU_ACT("dx", N * D * X, &s->dx);
    GPU_ACT("branch", N * D * X, &s->branch);
    GPU_ACT("dres", N * D * X, &s->dres);
    GPU_ACT("qkv", N * qkv_w * X, &s->qkv);
    GPU_ACT("dqkv", N * dqkv_w * X, &s->dqkv);
    GPU_ACT("bpre", N * (has_n ? Hmax : H) * X, &s->bpre);
    GPU_ACT("dbeta", N * (has_n ? Hmax : H) * X, &s->dbeta);
    if (has_n) {
        GPU_ACT("gdn wide 1", N * HV * X, &s->gw1);
        GPU_ACT("gdn wide 2", N * HV * X, &s->gw2);
        GPU_ACT("gdn wide 3", N * HV * X, &s->gw3);
        GPU_ACT("gdn ddecay", N * Hg * F, &s->dgdec);
    }
    GPU_ACT("logits", (size_t)m->head_rows * Vp * X, &s->logits);
    GPU_ACT("losses", N * F, &s->losses);
    GPU_ACT("hits", N * F, &s->hits);
    if (has_a) GPU_ACT("rope", (size_t)m->T * dh * F, &s->rope);
    /* kernel scratch: the largest request of any kernel the step runs */
    size_t ks = 0;
#define GPU_KS(bytes_) do { size_t b_ = (bytes_); ks = ks > b_ ? ks : b_; } while (0)
    GPU_KS(rmsnorm_backward_scratch_floats((int)N, (int)D) * F);
    GPU_KS(embedding_backward_scratch_bytes((int)N, (int)D, (int)Vp));
    GPU_KS(grad_norm_scratch_floats() * F);
    if (has_c) {
        GPU_KS(rmsnorm_backward_scratch_floats((int)(N * H), c->head_dim) * F);
        GPU_KS(conv_silu_l2norm_backward_scratch_floats(m->B, m->T, 3 * (int)D, c->head_dim) * F);
    }
    if (has_n) {
        GPU_KS(gated_rmsnorm_backward_scratch_floats((int)(N * Hg), (int)Vg) * F);
        GPU_KS(gdn_decay_backward_scratch_floats((int)N, (int)Hg) * F);
        GPU_KS(conv_silu_l2norm_backward_scratch_floats(m->B, m->T, (int)HK, (int)Kg) * F);
        GPU_KS(conv_silu_l2norm_backward_scratch_floats(m->B, m->T, (int)HV, 128) * F);
        GPU_KS(gated_deltarule_workspace_size<floatX>(m->B, m->T, (int)Hg, (int)Kg, (int)Vg));
    }
    if (has_d) GPU_KS(deltarule_workspace_size<floatX>(m->B, m->T, c->n_head, c->head_dim, c->head_dim));
    if (has_a) GPU_KS(attention_backward_scratch_bytes(m->B, m->T, (int)Hq, (int)dh));
#undef GPU_KS
    s->kscratch_bytes = ks;
    GPU_ACT("kernel scratch", ks, &s->kscratch);
#undef GPU_ACT
    return n;
}

// ----------------------------------------------------------------------------
// what the kernels support

/* 0 if the GPU kernels can run this config, else -1 with a one-line reason in err. */
static inline int gpu_model_supported(const DNConfig *c, char *err, size_t errlen) {
    /* the conv + L2 kernels of 'D' and 'L' layers are built for the delta rule's head sizes */
    int has_d = strpbrk(c->layers, "DL") != NULL, has_a = strpbrk(c->layers, "SG") != NULL, has_n = strchr(c->layers, 'N') != NULL;
    if (has_n && ((c->gdn_head_dim != 64 && c->gdn_head_dim != 128) || (c->gdn_expand_v != 1 && c->gdn_expand_v != 2))) {
        snprintf(err, errlen, "the GPU gated delta-rule kernels need gdn_head_dim 64 or 128 and gdn_expand_v 1 or 2; this model has %d and %d",
                 c->gdn_head_dim, c->gdn_expand_v);
        return -1;
    }
    if (has_n && c->conv_size != 4) {
        snprintf(err, errlen, "the GPU conv kernels need conv_size 4; this model has %d", c->conv_size);
        return -1;
    }
    if (has_d && c->head_dim != 64 && c->head_dim != 128) {
        snprintf(err, errlen, "the GPU delta-rule and linear-attention kernels need head_dim 64 or 128; this model has d_model %d / %d heads = %d",
                 c->d_model, c->n_head, c->head_dim);
        return -1;
    }
    if (has_d && c->conv_size != 4) {
        snprintf(err, errlen, "the GPU conv kernels need conv_size 4; this model has %d", c->conv_size);
        return -1;
    }
    int dh = has_a ? c->d_model / c->attn_heads : 64;
    if (dh != 32 && dh != 64 && dh != 128) {
        snprintf(err, errlen, "the GPU attention kernels need a head size of 32, 64 or 128; this model has d_model %d / %d attention heads = %d",
                 c->d_model, c->attn_heads, dh);
        return -1;
    }
    return 0;
}

// ----------------------------------------------------------------------------
// create / destroy / host transfers

/* Build the model for micro-batches of B x T, `accum` micro-batches per step, on `stream`. The
 * parameters are zero until gpu_model_set_params. Exits with a clear message when out of memory. */
template <typename floatX>
static void gpu_model_create(GPUModel<floatX> *m, const DNConfig *cfg, int B, int T, int accum, cudaStream_t stream) {
    memset(m, 0, sizeof *m);
    char err[DN_ERR_LEN];
    if (dn_build_param_table(&m->t, cfg, err, sizeof err) || gpu_model_supported(cfg, err, sizeof err)) {
        fprintf(stderr, "model config: %s\n", err);
        exit(EXIT_FAILURE);
    }
    for (int l = 0; l < cfg->n_layer; l++) { /* the fused q|k|v products need their tensors adjacent */
        const size_t *q = m->t.layer[l].p, DD = (size_t)cfg->d_model * cfg->d_model, D4 = (size_t)cfg->d_model * cfg->conv_size;
        if (dn_kind_has_conv(cfg->layers[l]) && (q[DN_P_K] != q[DN_P_Q] + DD || q[DN_P_V] != q[DN_P_K] + DD ||
                                      q[DN_P_K_CONV] != q[DN_P_Q_CONV] + D4 || q[DN_P_V_CONV] != q[DN_P_K_CONV] + D4)) {
            fprintf(stderr, "internal error: layer %d's q, k, v tensors are not adjacent in the parameter table\n", l);
            exit(EXIT_FAILURE);
        }
    }
    m->cfg = *cfg;
    m->B = B; m->T = T; m->accum = accum; m->stream = stream;
    const size_t N = (size_t)B * T, Vp = cfg->padded_vocab;
    size_t hr = GPU_HEAD_LOGITS_BYTES / (Vp * sizeof(floatX));
    hr = hr >= 64 ? hr / 64 * 64 : (hr < 1 ? 1 : hr); /* row chunks keep 16-byte alignment */
    m->head_rows = (int)(hr < N ? hr : N);
    m->mm = matmul_create();
    const size_t P = m->t.total;
    char what[160];
    snprintf(what, sizeof what, "the fp32 parameters (%zu)", P);
    m->params = (float *)gpu_malloc_or_die(P * sizeof(float), what);
    if (std::is_same<floatX, float>::value) m->wx = (floatX *)m->params;
    else m->wx = (floatX *)gpu_malloc_or_die(P * sizeof(floatX), "the bf16 weight copy");
    m->grads = (float *)gpu_malloc_or_die(P * sizeof(float), "the fp32 gradients");
    m->adam_m = (float *)gpu_malloc_or_die(P * sizeof(float), "AdamW's first moments");
    m->adam_v = (float *)gpu_malloc_or_die(P * sizeof(float), "AdamW's second moments");
    cudaCheck(cudaMemsetAsync(m->params, 0, P * sizeof(float), stream));
    cudaCheck(cudaMemsetAsync(m->grads, 0, P * sizeof(float), stream));
    cudaCheck(cudaMemsetAsync(m->adam_m, 0, P * sizeof(float), stream));
    cudaCheck(cudaMemsetAsync(m->adam_v, 0, P * sizeof(float), stream));
    adamw_segments_create(&m->seg, &m->t);

    m->L = (GPULayerActs<floatX> *)calloc((size_t)cfg->n_layer, sizeof(GPULayerActs<floatX>));
    if (!m->L) { fprintf(stderr, "out of host memory\n"); exit(EXIT_FAILURE); }
    int n = gpu_act_table(m, (GPUActBuf *)NULL, 0);
    GPUActBuf *tab = (GPUActBuf *)calloc((size_t)n, sizeof(GPUActBuf));
    if (!tab) { fprintf(stderr, "out of host memory\n"); exit(EXIT_FAILURE); }
    gpu_act_table(m, tab, n);
    size_t total = 0;
    for (int i = 0; i < n; i++) total += round_up(tab[i].bytes, GPU_ALIGN);
    snprintf(what, sizeof what, "the activations for micro-batch B=%d x T=%d (%d layers)", B, T, cfg->n_layer);
    m->act_mem = gpu_malloc_or_die(total, what);
    m->act_bytes = total;
    char *p = (char *)m->act_mem;
    for (int i = 0; i < n; i++) { *tab[i].ptr = p; p += round_up(tab[i].bytes, GPU_ALIGN); }
    free(tab);
    if (m->S.rope) rope_table_init(m->S.rope, T, cfg->d_model / cfg->attn_heads, cfg->rope_base, stream);

    m->d_tokens = (int *)gpu_malloc_or_die((size_t)accum * 2 * N * sizeof(int), "the token buffer");
    m->h_tokens = (int *)gpu_host_alloc_or_die((size_t)accum * 2 * N * sizeof(int), "the token buffer");
    m->d_hp = (AdamWHParams *)gpu_malloc_or_die(sizeof(AdamWHParams), "AdamW hyperparameters");
    m->h_hp = (AdamWHParams *)gpu_host_alloc_or_die(sizeof(AdamWHParams), "AdamW hyperparameters");
    memset(m->h_hp, 0, sizeof *m->h_hp);
    m->d_gn = (GradNorm *)gpu_malloc_or_die(sizeof(GradNorm), "the gradient norm");
    m->d_loss = (float *)gpu_malloc_or_die(sizeof(float), "the loss");
    m->d_hits = (float *)gpu_malloc_or_die(sizeof(float), "the accuracy");
    m->h_out = (float *)gpu_host_alloc_or_die(4 * sizeof(float), "the step results");
    m->norm_scratch = (float *)m->S.kscratch; /* grad_norm runs after the backward: shares it */
    m->use_graph = 1;
    cudaCheck(cudaStreamSynchronize(stream));
}

/* Train with a loss mask: row weights for every micro-batch of a step (h_wts, filled by the caller
 * before each gpu_train_step), uploaded with the tokens. Call before the first step (the captured
 * graph reads the buffers it saw). */
template <typename floatX>
static void gpu_model_enable_loss_mask(GPUModel<floatX> *m) {
    if (m->d_wts) return;
    const size_t n = (size_t)m->accum * m->B * m->T;
    m->d_wts = (float *)gpu_malloc_or_die(n * sizeof(float), "the loss-mask weights");
    m->h_wts = (float *)gpu_host_alloc_or_die(n * sizeof(float), "the loss-mask weights");
    for (size_t i = 0; i < n; i++) m->h_wts[i] = 1.0f;
}

template <typename floatX>
static void gpu_model_free(GPUModel<floatX> *m) {
    if (m->have_graph) cudaCheck(cudaGraphExecDestroy(m->graph));
    matmul_destroy(m->mm);
    if ((void *)m->wx != (void *)m->params) cudaCheck(cudaFree(m->wx));
    cudaCheck(cudaFree(m->params));
    cudaCheck(cudaFree(m->grads));
    cudaCheck(cudaFree(m->adam_m));
    cudaCheck(cudaFree(m->adam_v));
    adamw_segments_free(&m->seg);
    cudaCheck(cudaFree(m->act_mem));
    cudaCheck(cudaFree(m->d_tokens));
    cudaCheck(cudaFreeHost(m->h_tokens));
    cudaCheck(cudaFree(m->d_hp));
    cudaCheck(cudaFreeHost(m->h_hp));
    cudaCheck(cudaFree(m->d_gn));
    cudaCheck(cudaFree(m->d_loss));
    cudaCheck(cudaFree(m->d_hits));
    if (m->d_wts) cudaCheck(cudaFree(m->d_wts));
    if (m->h_wts) cudaCheck(cudaFreeHost(m->h_wts));
    cudaCheck(cudaFreeHost(m->h_out));
    free(m->L);
    dn_free_param_table(&m->t);
    memset(m, 0, sizeof *m);
}

/* Parameters (t.total floats, table layout) host -> device, and the floatX copy. */
template <typename floatX>
static void gpu_model_set_params(GPUModel<floatX> *m, const float *host) {
    cudaCheck(cudaMemcpy(m->params, host, m->t.total * sizeof(float), cudaMemcpyHostToDevice));
    if ((void *)m->wx != (void *)m->params) convert(m->wx, m->params, m->t.total, m->stream);
    cudaCheck(cudaStreamSynchronize(m->stream));
}
template <typename floatX>
static void gpu_model_get_params(const GPUModel<floatX> *m, float *host) {
    cudaCheck(cudaStreamSynchronize(m->stream));
    cudaCheck(cudaMemcpy(host, m->params, m->t.total * sizeof(float), cudaMemcpyDeviceToHost));
}
template <typename floatX>
static void gpu_model_get_grads(const GPUModel<floatX> *m, float *host) {
    cudaCheck(cudaStreamSynchronize(m->stream));
    cudaCheck(cudaMemcpy(host, m->grads, m->t.total * sizeof(float), cudaMemcpyDeviceToHost));
}
/* AdamW moments host <-> device (checkpoints). */
template <typename floatX>
static void gpu_model_get_adam(const GPUModel<floatX> *m, float *hm, float *hv) {
    cudaCheck(cudaStreamSynchronize(m->stream));
    cudaCheck(cudaMemcpy(hm, m->adam_m, m->t.total * sizeof(float), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(hv, m->adam_v, m->t.total * sizeof(float), cudaMemcpyDeviceToHost));
}
template <typename floatX>
static void gpu_model_set_adam(GPUModel<floatX> *m, const float *hm, const float *hv) {
    cudaCheck(cudaMemcpy(m->adam_m, hm, m->t.total * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(m->adam_v, hv, m->t.total * sizeof(float), cudaMemcpyHostToDevice));
}
