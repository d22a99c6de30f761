/*
 * model_gpu.cuh -- the whole model on the GPU: parameters, activations, forward, backward and the
 * optimizer step, wired from the kernels of this folder. It computes exactly what the CPU reference
 * (ref/model.c) computes; train_deltanet.cu (the trainer) and tests/gpu/test_model_gpu.cu include it.
 *
 * Forward (pre-norm residual; N = B*T rows, D = d_model, I = MLP hidden size):
 *   h_0 = wte[inputs];  x = RMSNorm(h_0; g_attn_0)
 *   layer l:  mid = h_l + Mixer(x),       x = RMSNorm(mid; g_mlp)          (one fused kernel)
 *             h_{l+1} = mid + MLP(x),     x = RMSNorm(h_{l+1}; g_next)     (g_attn_{l+1} or g_final)
 *   head: logits = x W_lm^T (padded_vocab columns, the padding rows of W_lm are zero), CE over the
 *         first vocab_size columns.
 *   DeltaNet mixer: q|k|v = x W_qkv^T (one [3D,D] matmul, W_q, W_k, W_v adjacent in the table), then
 *     silu(conv4(.)) (L2-normalised per head for q, k) in one fused kernel that writes the rows
 *     q|k|v out as three planes [3][N][D] (the delta-rule kernels take q, k, v as separate [B,T,H,K]),
 *     beta = sigmoid(x W_b^T), o = delta rule (chunkwise), on = RMSNorm_head(o; g_o), out = on W_o^T.
 *   Gated DeltaNet mixer ('N'): q, k, v = x W^T (three matmuls into three planes: their widths
 *     differ), silu(conv4(.)) per plane (L2 per head for q, k), beta = sigmoid(x W_b^T), the log decay
 *     g = -exp(A_log) softplus(x W_a^T + dt_bias) (gate.cuh, fp32), o = gated delta rule
 *     (chunkwise), on = RMSNorm_head(o; g_o) * silu(x W_g^T) (gate.cuh), out = on W_o^T. It keeps
 *     the pre-conv q, k, v, x W_a^T, g, x W_g^T, beta, o and the rstd's; the backward recomputes the
 *     rest.
 *   Linear-attention mixer ('L'): DeltaNet's without beta, the delta rule replaced by linear
 *     attention (linattn.cuh).
 *   Attention mixer: q, k, v = x W^T, RoPE(q), RoPE(k), flash attention (window for 'S'), W_o.
 *   No MLP (cfg.no_mlp): h_{l+1} = mid, so the fused kernel after the mixer writes h_{l+1} and the
 *     next sublayer's normed input at once.
 *   MLP: gu = x W_gu^T (one [2I,D] matmul, gate_proj|up_proj adjacent), act = silu(g) u, act W_down^T.
 *
 * Memory. Parameters: one fp32 master buffer laid out by the DNParamTable (padding vocab rows
 * zero), its floatX copy for the matmuls (the same buffer in fp32 mode), fp32 gradients, AdamW m
 * and v: one allocation each. Activations: one allocation carved by gpu_act_table(), the single
 * place where every buffer's size is computed. Per layer the backward keeps only
 *   h_l (the layer input), mid, the normed inputs of both sublayers (xn_attn, xn_mlp, which the
 *   weight gradients read), the MLP's gate|up, and for DeltaNet layers the pre-conv q|k|v, o, beta,
 *   the rstd's and the chunks' (I+A)^-1 that the delta-rule forward hands to its backward; for
 *   attention layers q, k, v (after RoPE), out and lse;
 * everything else (the conv/L2 outputs, the per-head normed o, silu(g) u) is recomputed in the
 * backward from those, which costs a few memory-bound kernels per layer. The LM
 * head runs in row chunks (head_rows rows at a time): logits of a chunk, the fused cross-entropy
 * turns them into dlogits in place, and the chunk's backward matmuls run at once, so the logits
 * never exist for all N rows (GPT-2's vocab would take N x 50304 x 2 bytes = 3.1 GiB at N = 32768).
 *
 * One optimizer step (gpu_train_step): copy the micro-batches' tokens and the AdamW hyperparameters
 * from pinned host memory, zero the gradients, forward + head + backward per micro-batch (gradient
 * accumulation), gradient norm (+ clip scale), fused AdamW that also writes the floatX copy, copy
 * the loss and the norm back. After the first step has run eagerly (which caches every cuBLASLt
 * plan), the whole step is captured once as a CUDA graph and replayed: one launch per step and
 * one host sync, to read the loss.
 *
 * Speed and memory: the trainer prints tok/s, MFU and the device memory in use; the README holds the
 * measured table. The CUDA graph removes the per-kernel launch overhead of eager launches.
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
#include "sigmoid.cuh"
#include "swiglu.cuh"
#include "crossentropy.cuh"
#include "reduce.cuh"
#include "attention.cuh"
#include "rope.cuh"
#include "deltarule.cuh"
#include "linattn.cuh"
#include "adamw.cuh"
#include "../model.h"
#include "model_gpu_state.cuh" /* parameters, activations, allocation, host transfers */

// ----------------------------------------------------------------------------
// forward

/* The layer input h_l. */
template <typename floatX>
static inline floatX *gpu_layer_input(GPUModel<floatX> *m, int l) { return l ? m->L[l - 1].out : m->S.emb; }

/* Mixer of layer l: L[l].xn_attn -> S.branch (the branch output). */
template <typename floatX>
static void mixer_forward(GPUModel<floatX> *m, int l, int B, int T) {
    const DNConfig *c = &m->cfg;
    const size_t *P = m->t.layer[l].p;
    GPULayerActs<floatX> *a = &m->L[l];
    GPUScratch<floatX> *s = &m->S;
    const int N = B * T, D = c->d_model;
    cudaStream_t st = m->stream;
    if (dn_kind_has_conv(c->layers[l])) {
        const int H = c->n_head, K = c->head_dim;
        const size_t ND = (size_t)N * D;
        /* q|k|v: one projection with the adjacent [3D, D] weights into rows q|k|v, then one conv + silu
         * (+ L2 norm on q, k) over the 3D channels, written as the three [N, D] planes the delta rule reads */
        matmul_forward(m->mm, a->qkv_pre, a->xn_attn, m->wx + P[DN_P_Q], N, D, 3 * D, 0, st);
        prof_mark(m->prof, "fwd matmuls", st);
        conv_silu_l2norm_forward(s->qkv, a->qkv_pre, m->params + P[DN_P_Q_CONV], B, T, 3 * D, 2 * D, K, c->l2_eps, st, D);
        prof_mark(m->prof, "fwd conv+silu+l2", st);
        if (c->layers[l] == 'L') {
            linattn_forward(a->o, s->qkv, s->qkv + ND, s->qkv + 2 * ND, 1.0f / sqrtf((float)K), B, T, H, K, K, st);
            prof_mark(m->prof, "fwd linear attention", st);
        } else {
            matmul_forward(m->mm, s->bpre, a->xn_attn, m->wx + P[DN_P_B], N, D, H, 0, st);
            sigmoid_forward(a->beta, s->bpre, N * H, st);
            prof_mark(m->prof, "fwd beta", st);
            deltarule_forward(a->o, a->dr_saved, s->qkv, s->qkv + ND, s->qkv + 2 * ND, a->beta, 1.0f / sqrtf((float)K),
                              s->kscratch, B, T, H, K, K, st);
            prof_mark(m->prof, "fwd delta rule", st);
        }
        rmsnorm_forward(s->dx, a->rstd_o, a->o, m->params + P[DN_P_O_NORM], N * H, K, c->norm_eps, st);
        prof_mark(m->prof, "fwd norms", st);
        matmul_forward(m->mm, s->branch, s->dx, m->wx + P[DN_P_O], N, D, D, 0, st);
        prof_mark(m->prof, "fwd matmuls", st);
    } else if (c->layers[l] == 'N') {
        const int H = c->gdn_heads, K = c->gdn_head_dim, Vg = dn_gdn_value_dim(c);
        const int HK = dn_gdn_key_width(c), HV = dn_gdn_value_width(c);
        const size_t NK = (size_t)N * HK;
        floatX *qp = a->qkv_pre, *kp = qp + NK, *vp = kp + NK; /* pre-conv planes */
        floatX *q = s->qkv, *k = q + NK, *v = k + NK;          /* after conv + silu (+ L2) */
        matmul_forward(m->mm, qp, a->xn_attn, m->wx + P[DN_P_Q], N, D, HK, 0, st);
        matmul_forward(m->mm, kp, a->xn_attn, m->wx + P[DN_P_K], N, D, HK, 0, st);
        matmul_forward(m->mm, vp, a->xn_attn, m->wx + P[DN_P_V], N, D, HV, 0, st);
        matmul_forward(m->mm, a->gpre, a->xn_attn, m->wx + P[DN_P_G], N, D, HV, 0, st);
        matmul_forward(m->mm, a->apre, a->xn_attn, m->wx + P[DN_P_A], N, D, H, 0, st);
        matmul_forward(m->mm, s->bpre, a->xn_attn, m->wx + P[DN_P_B], N, D, H, 0, st);
        prof_mark(m->prof, "fwd matmuls", st);
        conv_silu_l2norm_forward(q, qp, m->params + P[DN_P_Q_CONV], B, T, HK, HK, K, c->l2_eps, st);
        conv_silu_l2norm_forward(k, kp, m->params + P[DN_P_K_CONV], B, T, HK, HK, K, c->l2_eps, st);
        conv_silu_l2norm_forward(v, vp, m->params + P[DN_P_V_CONV], B, T, HV, 0, 128, c->l2_eps, st);
        prof_mark(m->prof, "fwd conv+silu+l2", st);
        sigmoid_forward(a->beta, s->bpre, N * H, st);
        gdn_decay_forward(a->gdec, a->apre, m->params + P[DN_P_A_LOG], m->params + P[DN_P_DT_BIAS], N, H, st);
        prof_mark(m->prof, "fwd beta, decay", st);
        gated_deltarule_forward(a->o, a->gdr_saved, q, k, v, a->beta, a->gdec, 1.0f / sqrtf((float)K), s->kscratch,
                                B, T, H, K, Vg, st);
        prof_mark(m->prof, "fwd gated delta rule", st);
        gated_rmsnorm_forward(s->gw1, a->rstd_o, a->o, a->gpre, m->params + P[DN_P_O_NORM], N * H, Vg, c->norm_eps, st);
        prof_mark(m->prof, "fwd norms", st);
        matmul_forward(m->mm, s->branch, s->gw1, m->wx + P[DN_P_O], N, HV, D, 0, st);
        prof_mark(m->prof, "fwd matmuls", st);
    } else {
        const int Hq = c->attn_heads, Hkv = c->attn_kv_heads, dh = D / Hq, kvd = Hkv * dh;
        const int window = c->layers[l] == 'S' ? c->window : 0;
        matmul_forward(m->mm, a->q, a->xn_attn, m->wx + P[DN_P_Q], N, D, D, 0, st);
        matmul_forward(m->mm, a->k, a->xn_attn, m->wx + P[DN_P_K], N, D, kvd, 0, st);
        matmul_forward(m->mm, a->v, a->xn_attn, m->wx + P[DN_P_V], N, D, kvd, 0, st);
        prof_mark(m->prof, "fwd matmuls", st);
        rope_forward(a->q, s->rope, B, T, Hq, dh, 0, st);
        rope_forward(a->k, s->rope, B, T, Hkv, dh, 0, st);
        prof_mark(m->prof, "fwd rope", st);
        attention_forward(a->att, a->lse, a->q, a->k, a->v, B, T, Hq, Hkv, dh, window, st);
        prof_mark(m->prof, "fwd attention", st);
        matmul_forward(m->mm, s->branch, a->att, m->wx + P[DN_P_O], N, D, D, 0, st);
        prof_mark(m->prof, "fwd matmuls", st);
    }
}

/* Everything up to the head: tokens [B,T] (device) -> S.xn = RMSNorm(h_L; g_final). */
template <typename floatX>
static void gpu_forward(GPUModel<floatX> *m, const int *d_inputs, int B, int T) {
    const DNConfig *c = &m->cfg;
    const DNParamTable *t = &m->t;
    GPUScratch<floatX> *s = &m->S;
    const int N = B * T, D = c->d_model, I = c->hidden_size;
    const float eps = c->norm_eps;
    cudaStream_t st = m->stream;
    embedding_forward(s->emb, d_inputs, m->wx + t->embed, N, D, st);
    rmsnorm_forward(m->L[0].xn_attn, m->L[0].rstd_attn, s->emb, m->params + t->layer[0].p[DN_P_ATTN_NORM], N, D, eps, st);
    prof_mark(m->prof, "fwd embedding", st);
    for (int l = 0; l < c->n_layer; l++) {
        const size_t *P = t->layer[l].p;
        GPULayerActs<floatX> *a = &m->L[l];
        mixer_forward(m, l, B, T);
        const int last = l + 1 == c->n_layer;
        const float *g_next = m->params + (last ? t->norm : t->layer[l + 1].p[DN_P_ATTN_NORM]);
        float *rstd_next = last ? s->rstd_final : m->L[l + 1].rstd_attn;
        floatX *xn_next = last ? s->xn : m->L[l + 1].xn_attn;
        if (c->no_mlp) { /* h_{l+1} = h_l + mixer */
            residual_rmsnorm_forward(a->out, xn_next, rstd_next, gpu_layer_input(m, l), s->branch, g_next, N, D, eps, st);
            prof_mark(m->prof, "fwd norms", st);
            continue;
        }
        residual_rmsnorm_forward(a->mid, a->xn_mlp, a->rstd_mlp, gpu_layer_input(m, l), s->branch,
                                 m->params + P[DN_P_MLP_NORM], N, D, eps, st);
        prof_mark(m->prof, "fwd norms", st);
        matmul_forward(m->mm, a->gu, a->xn_mlp, m->wx + P[DN_P_GATE], N, D, 2 * I, 0, st);
        prof_mark(m->prof, "fwd matmuls", st);
        swiglu_forward(s->qkv, a->gu, N, I, st);
        prof_mark(m->prof, "fwd swiglu", st);
        matmul_forward(m->mm, s->branch, s->qkv, m->wx + P[DN_P_DOWN], N, I, D, 0, st);
        prof_mark(m->prof, "fwd matmuls", st);
        residual_rmsnorm_forward(a->out, xn_next, rstd_next, a->mid, s->branch, g_next, N, D, eps, st);
        prof_mark(m->prof, "fwd norms", st);
    }
}

// ----------------------------------------------------------------------------
// the LM head: logits in row chunks, cross-entropy, and (training) its backward right away

/* After gpu_forward: losses of the N rows (targets device [N]); *d_loss += loss_scale * sum(losses).
 * train: also dlogits with weight dloss_scale / N per row (1/accum for gradient accumulation),
 * dW_lm += ..., and S.dres = d loss / d h_L (through the final norm). d_wts [N]: loss-mask row
 * weights (crossentropy.cuh; NULL: none). d_hits (validation): *d_hits = the number of rows whose
 * argmax is the target (among those of weight > 0). */
template <typename floatX>
static void gpu_head(GPUModel<floatX> *m, const int *d_targets, int N, int train, float dloss_scale,
                     float *d_loss, float loss_scale, const float *d_wts = NULL, float *d_hits = NULL) {
    const DNConfig *c = &m->cfg;
    const DNParamTable *t = &m->t;
    GPUScratch<floatX> *s = &m->S;
    const int D = c->d_model, V = c->vocab_size, Vp = c->padded_vocab;
    cudaStream_t st = m->stream;
    const floatX *W = m->wx + t->lm_head;
    for (int r0 = 0; r0 < N; r0 += m->head_rows) {
        const int rows = N - r0 < m->head_rows ? N - r0 : m->head_rows;
        matmul_forward(m->mm, s->logits, s->xn + (size_t)r0 * D, W, rows, D, Vp, 0, st);
        prof_mark(m->prof, "head matmuls", st);
        if (train) {
            crossentropy_forward_backward(s->logits, s->losses + r0, d_targets + r0, dloss_scale * rows / N, rows, V, Vp, st,
                                          d_wts ? d_wts + r0 : NULL);
            prof_mark(m->prof, "head cross-entropy", st);
            matmul_backward_data(m->mm, s->dx + (size_t)r0 * D, s->logits, W, rows, D, Vp, 0, st);
            matmul_backward_weight(m->mm, m->grads + t->lm_head, s->logits, s->xn + (size_t)r0 * D, rows, D, Vp, st);
            prof_mark(m->prof, "head matmuls", st);
        } else {
            crossentropy_forward(s->losses + r0, s->logits, d_targets + r0, rows, V, Vp, st, d_wts ? d_wts + r0 : NULL);
            if (d_hits) argmax_hits(s->hits + r0, s->logits, d_targets + r0, d_wts ? d_wts + r0 : NULL, rows, V, Vp, st);
            prof_mark(m->prof, "head cross-entropy", st);
        }
    }
    if (d_loss) sum_float(d_loss, s->losses, N, loss_scale / N, 1, st);
    if (d_hits && !train) sum_float(d_hits, s->hits, N, 1.0f, 0, st);
    if (train)
        rmsnorm_backward(s->dres, m->grads + t->norm, (float *)s->kscratch, s->dx, m->L[c->n_layer - 1].out,
                         m->params + t->norm, s->rstd_final, N, D, 0, st);
    prof_mark(m->prof, "head cross-entropy", st);
}

// ----------------------------------------------------------------------------
// backward

/* Mixer of layer l: S.dres (gradient of its output) -> S.dx = gradient of its input x (=), weight
 * gradients (+=); x = L[l].xn_attn, kept by the forward. */
template <typename floatX>
static void mixer_backward(GPUModel<floatX> *m, int l, int B, int T) {
    const DNConfig *c = &m->cfg;
    const size_t *P = m->t.layer[l].p;
    GPULayerActs<floatX> *a = &m->L[l];
    GPUScratch<floatX> *s = &m->S;
    float *G = m->grads;
    const int N = B * T, D = c->d_model;
    cudaStream_t st = m->stream;
    if (dn_kind_has_conv(c->layers[l])) {
        const int H = c->n_head, K = c->head_dim, delta = c->layers[l] == 'D';
        /* out = on W_o^T */
        rmsnorm_forward(s->branch, a->rstd_o, a->o, m->params + P[DN_P_O_NORM], N * H, K, c->norm_eps, st); /* on */
        prof_mark(m->prof, "bwd norms", st);
        matmul_backward_weight(m->mm, G + P[DN_P_O], s->dres, s->branch, N, D, D, st);
        matmul_backward_data(m->mm, s->branch, s->dres, m->wx + P[DN_P_O], N, D, D, 0, st);                 /* don */
        prof_mark(m->prof, "bwd matmuls", st);
        rmsnorm_backward(s->dx, G + P[DN_P_O_NORM], (float *)s->kscratch, s->branch, a->o, m->params + P[DN_P_O_NORM],
                         a->rstd_o, N * H, K, 0, st);                                                   /* do */
        prof_mark(m->prof, "bwd norms", st);
        /* the delta rule, from the recomputed q, k, v */
        const size_t ND = (size_t)N * D;
        conv_silu_l2norm_forward(s->qkv, a->qkv_pre, m->params + P[DN_P_Q_CONV], B, T, 3 * D, 2 * D, K, c->l2_eps, st, D);
        prof_mark(m->prof, "bwd conv+silu+l2", st);
        if (delta) {
            deltarule_backward(s->dqkv, s->dqkv + ND, s->dqkv + 2 * ND, s->dbeta, s->dx, a->dr_saved, s->qkv, s->qkv + ND,
                               s->qkv + 2 * ND, a->beta, 1.0f / sqrtf((float)K), s->kscratch, B, T, H, K, K, st);
            prof_mark(m->prof, "bwd delta rule", st);
            /* beta's sigmoid and projection (the first write of S.dx) */
            sigmoid_backward(s->bpre, s->dbeta, a->beta, N * H, st);
            matmul_backward_weight(m->mm, G + P[DN_P_B], s->bpre, a->xn_attn, N, D, H, st);
            matmul_backward_data(m->mm, s->dx, s->bpre, m->wx + P[DN_P_B], N, D, H, 0, st);
            prof_mark(m->prof, "bwd beta", st);
        } else {
            linattn_backward(s->dqkv, s->dqkv + ND, s->dqkv + 2 * ND, s->dx, s->qkv, s->qkv + ND, s->qkv + 2 * ND,
                             1.0f / sqrtf((float)K), B, T, H, K, K, st);
            prof_mark(m->prof, "bwd linear attention", st);
        }
        /* q|k|v: conv + silu (+ L2 norm) from the planes dq, dk, dv into rows dq|dk|dv, then the fused projection */
        conv_silu_l2norm_backward(s->qkv, G + P[DN_P_Q_CONV], (float *)s->kscratch, s->dqkv, a->qkv_pre,
                                  m->params + P[DN_P_Q_CONV], B, T, 3 * D, 2 * D, K, c->l2_eps, st, D);
        prof_mark(m->prof, "bwd conv+silu+l2", st);
        matmul_backward_weight(m->mm, G + P[DN_P_Q], s->qkv, a->xn_attn, N, D, 3 * D, st);
        matmul_backward_data(m->mm, s->dx, s->qkv, m->wx + P[DN_P_Q], N, D, 3 * D, delta, st); /* 'L': the first write */
        prof_mark(m->prof, "bwd matmuls", st);
    } else if (c->layers[l] == 'N') {
        const int H = c->gdn_heads, K = c->gdn_head_dim, Vg = dn_gdn_value_dim(c);
        const int HK = dn_gdn_key_width(c), HV = dn_gdn_value_width(c);
        const size_t NK = (size_t)N * HK;
        floatX *qp = a->qkv_pre, *kp = qp + NK, *vp = kp + NK;
        floatX *q = s->qkv, *k = q + NK, *v = k + NK;
        floatX *dq = s->dqkv, *dk = dq + NK, *dv = dk + NK;
        const float *w_on = m->params + P[DN_P_O_NORM];
        /* out = on W_o^T, on = RMSNorm(o) * silu(gpre) (recomputed into gw1) */
        gated_rmsnorm_forward(s->gw1, a->rstd_o, a->o, a->gpre, w_on, N * H, Vg, c->norm_eps, st);
        prof_mark(m->prof, "bwd norms", st);
        matmul_backward_weight(m->mm, G + P[DN_P_O], s->dres, s->gw1, N, HV, D, st);
        matmul_backward_data(m->mm, s->gw2, s->dres, m->wx + P[DN_P_O], N, HV, D, 0, st);            /* don */
        prof_mark(m->prof, "bwd matmuls", st);
        gated_rmsnorm_backward(s->gw1, s->gw3, G + P[DN_P_O_NORM], (float *)s->kscratch, s->gw2, a->o, a->gpre, w_on,
                               a->rstd_o, N * H, Vg, st);                                             /* do, dgate */
        prof_mark(m->prof, "bwd norms", st);
        matmul_backward_weight(m->mm, G + P[DN_P_G], s->gw3, a->xn_attn, N, D, HV, st);
        matmul_backward_data(m->mm, s->dx, s->gw3, m->wx + P[DN_P_G], N, D, HV, 0, st);              /* dx = */
        prof_mark(m->prof, "bwd matmuls", st);
        /* the gated delta rule, from the recomputed q, k, v */
        conv_silu_l2norm_forward(q, qp, m->params + P[DN_P_Q_CONV], B, T, HK, HK, K, c->l2_eps, st);
        conv_silu_l2norm_forward(k, kp, m->params + P[DN_P_K_CONV], B, T, HK, HK, K, c->l2_eps, st);
        conv_silu_l2norm_forward(v, vp, m->params + P[DN_P_V_CONV], B, T, HV, 0, 128, c->l2_eps, st);
        prof_mark(m->prof, "bwd conv+silu+l2", st);
        gated_deltarule_backward(dq, dk, dv, s->dbeta, s->dgdec, s->gw1, a->gdr_saved, q, k, v, a->beta, a->gdec,
                                 1.0f / sqrtf((float)K), s->kscratch, B, T, H, K, Vg, st);
        prof_mark(m->prof, "bwd gated delta rule", st);
        /* the decay (its input's gradient in bpre), then beta's sigmoid (bpre again) */
        gdn_decay_backward(s->bpre, G + P[DN_P_A_LOG], G + P[DN_P_DT_BIAS], (float *)s->kscratch, s->dgdec, a->apre,
                           m->params + P[DN_P_A_LOG], m->params + P[DN_P_DT_BIAS], N, H, st);
        matmul_backward_weight(m->mm, G + P[DN_P_A], s->bpre, a->xn_attn, N, D, H, st);
        matmul_backward_data(m->mm, s->dx, s->bpre, m->wx + P[DN_P_A], N, D, H, 1, st);
        sigmoid_backward(s->bpre, s->dbeta, a->beta, N * H, st);
        matmul_backward_weight(m->mm, G + P[DN_P_B], s->bpre, a->xn_attn, N, D, H, st);
        matmul_backward_data(m->mm, s->dx, s->bpre, m->wx + P[DN_P_B], N, D, H, 1, st);
        prof_mark(m->prof, "bwd beta, decay", st);
        /* q, k, v: conv + silu (+ L2 norm) into gw2 ([N, HK] or [N, HV] rows), then each projection */
        const int Ck[3] = {HK, HK, HV}, Cn[3] = {HK, HK, 0}, Kk[3] = {K, K, 128};
        const int kc[3] = {DN_P_Q_CONV, DN_P_K_CONV, DN_P_V_CONV}, kw[3] = {DN_P_Q, DN_P_K, DN_P_V};
        const floatX *dplane[3] = {dq, dk, dv}, *pre[3] = {qp, kp, vp};
        for (int j = 0; j < 3; j++) {
            conv_silu_l2norm_backward(s->gw2, G + P[kc[j]], (float *)s->kscratch, dplane[j], pre[j], m->params + P[kc[j]],
                                      B, T, Ck[j], Cn[j], Kk[j], c->l2_eps, st);
            prof_mark(m->prof, "bwd conv+silu+l2", st);
            matmul_backward_weight(m->mm, G + P[kw[j]], s->gw2, a->xn_attn, N, D, Ck[j], st);
            matmul_backward_data(m->mm, s->dx, s->gw2, m->wx + P[kw[j]], N, D, Ck[j], 1, st);
            prof_mark(m->prof, "bwd matmuls", st);
        }
    } else {
        const int Hq = c->attn_heads, Hkv = c->attn_kv_heads, dh = D / Hq, kvd = Hkv * dh;
        const int window = c->layers[l] == 'S' ? c->window : 0;
        floatX *dq = s->dqkv;
        floatX *dk = dq + round_up((size_t)N * D, 16);
        floatX *dv = dk + round_up((size_t)N * kvd, 16);
        matmul_backward_weight(m->mm, G + P[DN_P_O], s->dres, a->att, N, D, D, st);
        matmul_backward_data(m->mm, s->branch, s->dres, m->wx + P[DN_P_O], N, D, D, 0, st);
        prof_mark(m->prof, "bwd matmuls", st);
        attention_backward(dq, dk, dv, s->kscratch, s->branch, a->q, a->k, a->v, a->att, a->lse, B, T, Hq, Hkv, dh, window, st);
        prof_mark(m->prof, "bwd attention", st);
        rope_backward(dq, s->rope, B, T, Hq, dh, 0, st);
        rope_backward(dk, s->rope, B, T, Hkv, dh, 0, st);
        prof_mark(m->prof, "bwd rope", st);
        matmul_backward_weight(m->mm, G + P[DN_P_Q], dq, a->xn_attn, N, D, D, st);
        matmul_backward_weight(m->mm, G + P[DN_P_K], dk, a->xn_attn, N, D, kvd, st);
        matmul_backward_weight(m->mm, G + P[DN_P_V], dv, a->xn_attn, N, D, kvd, st);
        matmul_backward_data(m->mm, s->dx, dq, m->wx + P[DN_P_Q], N, D, D, 0, st);
        matmul_backward_data(m->mm, s->dx, dk, m->wx + P[DN_P_K], N, D, kvd, 1, st);
        matmul_backward_data(m->mm, s->dx, dv, m->wx + P[DN_P_V], N, D, kvd, 1, st);
        prof_mark(m->prof, "bwd matmuls", st);
    }
}

/* MLP of layer l: S.dres = d out -> d mid (=), weight gradients (+=). */
template <typename floatX>
static void mlp_backward(GPUModel<floatX> *m, int l, int B, int T) {
    const size_t *P = m->t.layer[l].p;
    GPULayerActs<floatX> *a = &m->L[l];
    GPUScratch<floatX> *s = &m->S;
    float *G = m->grads;
    const int N = B * T, D = m->cfg.d_model, I = m->cfg.hidden_size;
    cudaStream_t st = m->stream;
    matmul_backward_data(m->mm, s->qkv, s->dres, m->wx + P[DN_P_DOWN], N, I, D, 0, st);
    prof_mark(m->prof, "bwd matmuls", st);
    /* in place: gu now holds dgate|dup, qkv the forward's silu(gate) up (was its gradient) */
    swiglu_backward(a->gu, s->qkv, a->gu, N, I, st, s->qkv);
    prof_mark(m->prof, "bwd swiglu", st);
    matmul_backward_weight(m->mm, G + P[DN_P_DOWN], s->dres, s->qkv, N, I, D, st);
    matmul_backward_weight(m->mm, G + P[DN_P_GATE], a->gu, a->xn_mlp, N, D, 2 * I, st);
    matmul_backward_data(m->mm, s->dx, a->gu, m->wx + P[DN_P_GATE], N, D, 2 * I, 0, st);
    prof_mark(m->prof, "bwd matmuls", st);
    rmsnorm_backward(s->dres, G + P[DN_P_MLP_NORM], (float *)s->kscratch, s->dx, a->mid, m->params + P[DN_P_MLP_NORM],
                     a->rstd_mlp, N, D, 1, st);
}

/* After gpu_head(train): every parameter gradient (+=). d_inputs: the forward's tokens. */
template <typename floatX>
static void gpu_backward(GPUModel<floatX> *m, const int *d_inputs, int B, int T) {
    const DNConfig *c = &m->cfg;
    const DNParamTable *t = &m->t;
    GPUScratch<floatX> *s = &m->S;
    float *G = m->grads;
    float *ks = (float *)s->kscratch;
    const int N = B * T, D = c->d_model;
    cudaStream_t st = m->stream;
    for (int l = c->n_layer - 1; l >= 0; l--) {
        const size_t *P = t->layer[l].p;
        GPULayerActs<floatX> *a = &m->L[l];
        if (!c->no_mlp) mlp_backward(m, l, B, T); /* with no MLP, S.dres = d out is d mid already */
        /* mixer: S.dres = d mid -> d h_l */
        const floatX *h = gpu_layer_input(m, l);
        mixer_backward(m, l, B, T);
        rmsnorm_backward(s->dres, G + P[DN_P_ATTN_NORM], ks, s->dx, h, m->params + P[DN_P_ATTN_NORM],
                         a->rstd_attn, N, D, 1, st);
        prof_mark(m->prof, "bwd norms", st);
    }
    embedding_backward(G + t->embed, s->kscratch, s->dres, d_inputs, N, D, c->padded_vocab, st);
    prof_mark(m->prof, "bwd embedding", st);
}

// ----------------------------------------------------------------------------
// the optimizer step

/* Enqueue one whole step on m->stream (what the graph captures): inputs of micro-batch i are
 * h_tokens[(2i) N ..], its targets h_tokens[(2i+1) N ..]; hyperparameters from *h_hp. */
template <typename floatX>
static void gpu_step_enqueue(GPUModel<floatX> *m) {
    const size_t N = (size_t)m->B * m->T, P = m->t.total;
    cudaStream_t st = m->stream;
    cudaCheck(cudaMemcpyAsync(m->d_hp, m->h_hp, sizeof(AdamWHParams), cudaMemcpyHostToDevice, st));
    cudaCheck(cudaMemcpyAsync(m->d_tokens, m->h_tokens, (size_t)m->accum * 2 * N * sizeof(int), cudaMemcpyHostToDevice, st));
    if (m->d_wts) cudaCheck(cudaMemcpyAsync(m->d_wts, m->h_wts, (size_t)m->accum * N * sizeof(float), cudaMemcpyHostToDevice, st));
    cudaCheck(cudaMemsetAsync(m->grads, 0, P * sizeof(float), st));
    cudaCheck(cudaMemsetAsync(m->d_loss, 0, sizeof(float), st));
    prof_mark(m->prof, "start", st);
    for (int i = 0; i < m->accum; i++) {
        const int *inp = m->d_tokens + (size_t)2 * i * N, *tgt = inp + N;
        gpu_forward(m, inp, m->B, m->T);
        gpu_head(m, tgt, (int)N, 1, 1.0f / m->accum, m->d_loss, 1.0f / m->accum, m->d_wts ? m->d_wts + (size_t)i * N : NULL);
        gpu_backward(m, inp, m->B, m->T);
    }
    if (m->reduce) m->reduce(m->dist_ctx, m->grads, P, m->d_loss, st); /* several ranks: the group's mean */
    grad_norm(m->d_gn, m->norm_scratch, m->grads, P, m->d_hp, st);
    floatX *copy = (void *)m->wx == (void *)m->params ? (floatX *)NULL : m->wx;
    adamw_update(m->params, copy, m->adam_m, m->adam_v, m->grads, P, &m->seg, m->d_hp, m->d_gn, st);
    prof_mark(m->prof, "grad norm + AdamW", st);
    cudaCheck(cudaMemcpyAsync(m->h_out, m->d_loss, sizeof(float), cudaMemcpyDeviceToHost, st));
    cudaCheck(cudaMemcpyAsync(m->h_out + 1, &m->d_gn->norm, sizeof(float), cudaMemcpyDeviceToHost, st));
}

typedef struct {
    float lr, beta1, beta2, eps, weight_decay, grad_clip;
} GPUOptim;

/* One optimizer step over the micro-batches already in m->h_tokens; step counts from 1.
 * Returns the mean loss; *norm gets the gradient norm (before clipping). */
template <typename floatX>
static float gpu_train_step(GPUModel<floatX> *m, const GPUOptim *o, long step, float *norm) {
    AdamWHParams *hp = m->h_hp;
    hp->lr = o->lr; hp->beta1 = o->beta1; hp->beta2 = o->beta2; hp->eps = o->eps;
    hp->weight_decay = o->weight_decay; hp->grad_clip = o->grad_clip; hp->step = (int)step;
    const int profiling = m->prof && m->prof->on;
    if (m->use_graph && !profiling && m->steps_run >= 1 && !m->have_graph) {
        /* every matmul plan is cached by now: capture the whole step once */
        cudaGraph_t g;
        cudaCheck(cudaStreamBeginCapture(m->stream, cudaStreamCaptureModeThreadLocal));
        gpu_step_enqueue(m);
        cudaCheck(cudaStreamEndCapture(m->stream, &g));
        cudaCheck(cudaGraphInstantiate(&m->graph, g, 0));
        cudaCheck(cudaGraphDestroy(g));
        m->have_graph = 1;
    }
    if (m->have_graph && !profiling) cudaCheck(cudaGraphLaunch(m->graph, m->stream));
    else gpu_step_enqueue(m);
    if (m->wait) m->wait(m->dist_ctx, m->stream);
    else cudaCheck(cudaStreamSynchronize(m->stream));
    prof_collect(m->prof);
    m->steps_run++;
    if (norm) *norm = m->h_out[1];
    return m->h_out[0];
}

// ----------------------------------------------------------------------------
// evaluation, logits, gradients (validation, sampling, tests)

/* Mean loss of one batch of B <= m->B rows of m->T tokens (inputs, targets host [B*T]); no
 * parameter change. */
template <typename floatX>
static float gpu_eval_loss(GPUModel<floatX> *m, const int *inputs, const int *targets, int B) {
    const size_t N = (size_t)B * m->T;
    cudaStream_t st = m->stream;
    GPUProf *prof = m->prof; /* only training steps are profiled */
    m->prof = NULL;
    cudaCheck(cudaMemcpyAsync(m->d_tokens, inputs, N * sizeof(int), cudaMemcpyHostToDevice, st));
    cudaCheck(cudaMemcpyAsync(m->d_tokens + N, targets, N * sizeof(int), cudaMemcpyHostToDevice, st));
    cudaCheck(cudaMemsetAsync(m->d_loss, 0, sizeof(float), st));
    gpu_forward(m, m->d_tokens, B, m->T);
    gpu_head(m, m->d_tokens + N, (int)N, 0, 0.0f, m->d_loss, 1.0f);
    float loss = 0.0f;
    cudaCheck(cudaMemcpyAsync(&loss, m->d_loss, sizeof(float), cudaMemcpyDeviceToHost, st));
    cudaCheck(cudaStreamSynchronize(st));
    m->prof = prof;
    return loss;
}

/* Loss-mask row weights of one batch (host mask [N] of 0/1): N mask / count (crossentropy.cuh), so
 * that the mean over the rows is the mean over the masked ones; all 0 when nothing is masked. */
static inline void loss_mask_weights(float *wts, const unsigned char *mask, size_t N) {
    size_t count = 0;
    for (size_t i = 0; i < N; i++) count += mask[i] != 0;
    for (size_t i = 0; i < N; i++) wts[i] = mask[i] && count ? (float)N / (float)count : 0.0f;
}

/* Validation with a loss mask: the mean loss over the masked positions of one batch of B <= m->B
 * rows (inputs, targets, mask host [B*T]), and *hits = how many of them the argmax gets right. */
template <typename floatX>
static float gpu_eval_masked(GPUModel<floatX> *m, const int *inputs, const int *targets, const unsigned char *mask,
                             int B, long *hits) {
    const size_t N = (size_t)B * m->T;
    cudaStream_t st = m->stream;
    GPUProf *prof = m->prof;
    m->prof = NULL;
    float *wts = (float *)malloc(N * sizeof(float));
    if (!wts || !m->d_wts) { fprintf(stderr, "gpu_eval_masked: no memory or no loss mask enabled\n"); exit(EXIT_FAILURE); }
    loss_mask_weights(wts, mask, N);
    cudaCheck(cudaMemcpyAsync(m->d_tokens, inputs, N * sizeof(int), cudaMemcpyHostToDevice, st));
    cudaCheck(cudaMemcpyAsync(m->d_tokens + N, targets, N * sizeof(int), cudaMemcpyHostToDevice, st));
    cudaCheck(cudaMemcpyAsync(m->d_wts, wts, N * sizeof(float), cudaMemcpyHostToDevice, st));
    cudaCheck(cudaMemsetAsync(m->d_loss, 0, sizeof(float), st));
    gpu_forward(m, m->d_tokens, B, m->T);
    gpu_head(m, m->d_tokens + N, (int)N, 0, 0.0f, m->d_loss, 1.0f, m->d_wts, m->d_hits);
    float out[2] = {0.0f, 0.0f};
    cudaCheck(cudaMemcpyAsync(&out[0], m->d_loss, sizeof(float), cudaMemcpyDeviceToHost, st));
    cudaCheck(cudaMemcpyAsync(&out[1], m->d_hits, sizeof(float), cudaMemcpyDeviceToHost, st));
    cudaCheck(cudaStreamSynchronize(st));
    free(wts);
    m->prof = prof;
    *hits = lrintf(out[1]);
    return out[0];
}

/* Loss and gradients of one batch without an update (tests): grads = d loss / d params. With a
 * loss mask enabled (gpu_model_enable_loss_mask), the row weights are the first N of h_wts. */
template <typename floatX>
static float gpu_loss_and_grads(GPUModel<floatX> *m, const int *inputs, const int *targets) {
    const size_t N = (size_t)m->B * m->T;
    cudaStream_t st = m->stream;
    cudaCheck(cudaMemcpyAsync(m->d_tokens, inputs, N * sizeof(int), cudaMemcpyHostToDevice, st));
    cudaCheck(cudaMemcpyAsync(m->d_tokens + N, targets, N * sizeof(int), cudaMemcpyHostToDevice, st));
    if (m->d_wts) cudaCheck(cudaMemcpyAsync(m->d_wts, m->h_wts, N * sizeof(float), cudaMemcpyHostToDevice, st));
    cudaCheck(cudaMemsetAsync(m->d_loss, 0, sizeof(float), st));
    cudaCheck(cudaMemsetAsync(m->grads, 0, m->t.total * sizeof(float), st));
    gpu_forward(m, m->d_tokens, m->B, m->T);
    gpu_head(m, m->d_tokens + N, (int)N, 1, 1.0f, m->d_loss, 1.0f, m->d_wts);
    gpu_backward(m, m->d_tokens, m->B, m->T);
    float loss = 0.0f;
    cudaCheck(cudaMemcpyAsync(&loss, m->d_loss, sizeof(float), cudaMemcpyDeviceToHost, st));
    cudaCheck(cudaStreamSynchronize(st));
    return loss;
}

/* Logits of rows [row0, row0 + nrows) of the last forward (B*T rows), vocab_size columns each,
 * into host out (float). */
template <typename floatX>
static void gpu_logits_rows(GPUModel<floatX> *m, int row0, int nrows, float *out) {
    const DNConfig *c = &m->cfg;
    const int D = c->d_model, V = c->vocab_size, Vp = c->padded_vocab;
    floatX *tmp = (floatX *)malloc((size_t)m->head_rows * V * sizeof(floatX));
    if (!tmp) { fprintf(stderr, "out of host memory\n"); exit(EXIT_FAILURE); }
    for (int r = 0; r < nrows; r += m->head_rows) {
        const int rows = nrows - r < m->head_rows ? nrows - r : m->head_rows;
        matmul_forward(m->mm, m->S.logits, m->S.xn + (size_t)(row0 + r) * D, m->wx + m->t.lm_head, rows, D, Vp, 0, m->stream);
        cudaCheck(cudaMemcpy2DAsync(tmp, (size_t)V * sizeof(floatX), m->S.logits, (size_t)Vp * sizeof(floatX),
                                    (size_t)V * sizeof(floatX), rows, cudaMemcpyDeviceToHost, m->stream));
        cudaCheck(cudaStreamSynchronize(m->stream));
        for (size_t i = 0; i < (size_t)rows * V; i++) out[(size_t)r * V + i] = to_f<floatX>(tmp[i]);
    }
    free(tmp);
}

/* Forward of host tokens [B*T] (B <= m->B, T <= m->T; the graph is not used) then, if out is
 * given, the logits of every row into out [B*T, vocab_size]. */
template <typename floatX>
static void gpu_forward_logits(GPUModel<floatX> *m, const int *inputs, int B, int T, float *out) {
    cudaCheck(cudaMemcpyAsync(m->d_tokens, inputs, (size_t)B * T * sizeof(int), cudaMemcpyHostToDevice, m->stream));
    GPUProf *prof = m->prof;
    m->prof = NULL;
    gpu_forward(m, m->d_tokens, B, T);
    m->prof = prof;
    if (out) gpu_logits_rows(m, 0, B * T, out);
}
