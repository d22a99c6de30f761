/*
 * ref/model.c -- the whole model on the CPU, forward and backward, wired from the layer
 * references (one file a layer in ref/: embedding.c, rmsnorm.c, matmul.c, conv.c, deltarule.c,
 * gateddelta.c, gate.c, linattn.c, attention.c, rope.c, sigmoid.c, swiglu.c, crossentropy.c;
 * AdamW in adamw.c). Compiled twice like every ref/ file: float
 * (ref_model_*) and double (ref_model_*_f64, for the full-model gradient check).
 *
 * Forward (pre-norm residual, docs/MODEL.md):
 *   h_0 = wte[inputs]
 *   layer l:  x1 = RMSNorm(h_l; g_attn)            mid = h_l + Mixer(x1)
 *             x2 = RMSNorm(mid; g_mlp)             h_{l+1} = mid + W_down (silu(W_gate x2) * (W_up x2))
 *   logits = RMSNorm(h_L; g_final) W_lm^T,  loss = mean CE over the B*T positions (or, with a
 *   loss mask, over the masked positions only: ref_model_forward_masked)
 * With no_mlp the layer is mid alone: h_{l+1} = mid (no mlp_norm, no SwiGLU).
 * DeltaNet mixer: q,k,v = silu(conv(x1 W^T)), q,k L2-normalised per head, beta = sigmoid(x1 W_b^T),
 *   o = delta rule (chunkwise, or sequential when chunk == 0), per-head RMSNorm(o; g_o), W_o.
 * Gated DeltaNet mixer ('N', its own heads Hg of key size Kg, value size Vg): the same q, k, v, beta,
 *   the log decay g = -exp(A_log) softplus(x1 W_a^T + dt_bias) (ref/gate.c), o = gated delta rule
 *   (ref/gateddelta.c), per-head RMSNorm(o; g_o) * silu(x1 W_g^T), W_o.
 * Linear-attention mixer ('L'): the same without beta, o = linear attention (ref/linattn.c).
 * Attention mixer: q,k,v projections, RoPE on q,k, causal softmax attention (window for 'S'
 * layers, none for 'G'), W_o.
 * Every activation the backward needs is kept (this is a reference: memory is not the point);
 * the backward walks the same steps in reverse, accumulating parameter gradients (+=).
 */
#include "ref_real.h"
#include <stdio.h>

#define REF_NDD 9 /* mixer-wide backward buffers */

typedef struct {
    real *h_in, *x1, *rstd1, *mid, *x2, *rstd2, *gate, *up, *act;
    /* DeltaNet (and gated DeltaNet, with its widths) */
    real *qpre, *kpre, *vpre, *qc, *kc, *vc, *qn, *kn, *bpre, *beta, *o, *orstd, *on;
    /* gated DeltaNet: x1 W_a^T, the log decay g, the output gate's pre-activation x1 W_g^T */
    real *apre, *gdec, *gpre;
    /* attention (q, k after RoPE) */
    real *q, *k, *v, *ao, *lse;
} RF(RefLayerActs);

struct RF(RefModel) {
    const DNParamTable *t;
    int B, T, N, chunk;
    RF(RefLayerActs) *L;
    real *h_out, *xf, *rstdf, *logits, *losses;
    real *wts;          /* [N] loss weight of each row: 1/N, or mask/count with a loss mask */
    int *inputs, *targets;
    int have_targets;
    /* backward scratch (dd: mixer-wide, N x max(D, Hg Kg, Hg Vg); dsmall: N x max(H, Hg)) */
    real *dh, *dmid, *dx, *dbig1, *dbig2, *dbig3, *dsmall1, *dsmall2, *dsmall3, *dsmall4, *dd[REF_NDD];
    real *gate_mass;    /* [n_layer][2][Hg]: see ref_model_gate_mass */
};

static real *zalloc(size_t n, int *ok) {
    real *p = (real *)calloc(n ? n : 1, sizeof(real));
    if (!p) *ok = 0;
    return p;
}

RF(RefModel) *RF(ref_model_create)(const DNParamTable *t, int B, int T, int chunk) {
    const DNConfig *c = &t->cfg;
    RF(RefModel) *m = (RF(RefModel) *)calloc(1, sizeof *m);
    if (!m) return NULL;
    int ok = 1;
    size_t N = (size_t)B * T, D = c->d_model, I = c->hidden_size, H = c->n_head;
    size_t kvd = (size_t)c->attn_kv_heads * (c->attn_heads ? D / c->attn_heads : 0);
    size_t Hg = c->gdn_heads, HK = (size_t)dn_gdn_key_width(c), HV = (size_t)dn_gdn_value_width(c);
    size_t wide = D, heads = H > Hg ? H : Hg;
    if (strchr(c->layers, 'N')) wide = HK > wide ? (HV > HK ? HV : HK) : (HV > wide ? HV : wide);
    m->t = t; m->B = B; m->T = T; m->N = (int)N; m->chunk = chunk;
    m->L = (RF(RefLayerActs) *)calloc((size_t)c->n_layer, sizeof(RF(RefLayerActs)));
    if (!m->L) { free(m); return NULL; }
    for (int l = 0; l < c->n_layer; l++) {
        RF(RefLayerActs) *a = &m->L[l];
        a->h_in = zalloc(N * D, &ok); a->x1 = zalloc(N * D, &ok); a->rstd1 = zalloc(N, &ok);
        a->mid = zalloc(N * D, &ok); a->x2 = zalloc(N * D, &ok); a->rstd2 = zalloc(N, &ok);
        if (!c->no_mlp) { a->gate = zalloc(N * I, &ok); a->up = zalloc(N * I, &ok); a->act = zalloc(N * I, &ok); }
        if (dn_kind_has_conv(c->layers[l])) {
            a->qpre = zalloc(N * D, &ok); a->kpre = zalloc(N * D, &ok); a->vpre = zalloc(N * D, &ok);
            a->qc = zalloc(N * D, &ok); a->kc = zalloc(N * D, &ok); a->vc = zalloc(N * D, &ok);
            a->qn = zalloc(N * D, &ok); a->kn = zalloc(N * D, &ok);
            a->bpre = zalloc(N * H, &ok); a->beta = zalloc(N * H, &ok);
            a->o = zalloc(N * D, &ok); a->orstd = zalloc(N * H, &ok); a->on = zalloc(N * D, &ok);
        } else if (c->layers[l] == 'N') {
            a->qpre = zalloc(N * HK, &ok); a->kpre = zalloc(N * HK, &ok); a->vpre = zalloc(N * HV, &ok);
            a->qc = zalloc(N * HK, &ok); a->kc = zalloc(N * HK, &ok); a->vc = zalloc(N * HV, &ok);
            a->qn = zalloc(N * HK, &ok); a->kn = zalloc(N * HK, &ok);
            a->bpre = zalloc(N * Hg, &ok); a->beta = zalloc(N * Hg, &ok);
            a->apre = zalloc(N * Hg, &ok); a->gdec = zalloc(N * Hg, &ok); a->gpre = zalloc(N * HV, &ok);
            a->o = zalloc(N * HV, &ok); a->orstd = zalloc(N * Hg, &ok); a->on = zalloc(N * HV, &ok);
        } else {
            a->q = zalloc(N * D, &ok); a->k = zalloc(N * kvd, &ok); a->v = zalloc(N * kvd, &ok);
            a->ao = zalloc(N * D, &ok); a->lse = zalloc(N * (size_t)c->attn_heads, &ok);
        }
    }
    m->h_out = zalloc(N * D, &ok); m->xf = zalloc(N * D, &ok); m->rstdf = zalloc(N, &ok);
    m->logits = zalloc(N * (size_t)c->vocab_size, &ok); m->losses = zalloc(N, &ok); m->wts = zalloc(N, &ok);
    m->inputs = (int *)calloc(N, sizeof(int)); m->targets = (int *)calloc(N, sizeof(int));
    ok &= m->inputs && m->targets;
    size_t big = N * (I > D ? I : D);
    m->dh = zalloc(N * D, &ok); m->dmid = zalloc(N * D, &ok); m->dx = zalloc(N * D, &ok);
    m->dbig1 = zalloc(big, &ok); m->dbig2 = zalloc(big, &ok); m->dbig3 = zalloc(big, &ok);
    m->dsmall1 = zalloc(N * heads, &ok); m->dsmall2 = zalloc(N * heads, &ok);
    m->dsmall3 = zalloc(N * heads, &ok); m->dsmall4 = zalloc(N * heads, &ok);
    for (int i = 0; i < REF_NDD; i++) m->dd[i] = zalloc(N * wide, &ok);
    m->gate_mass = zalloc((size_t)c->n_layer * 2 * (Hg ? Hg : 1), &ok);
    if (!ok) { RF(ref_model_free)(m); return NULL; }
    return m;
}

void RF(ref_model_free)(RF(RefModel) *m) {
    if (!m) return;
    for (int l = 0; m->L && l < m->t->cfg.n_layer; l++) {
        real **p = (real **)&m->L[l];
        for (size_t i = 0; i < sizeof(RF(RefLayerActs)) / sizeof(real *); i++) free(p[i]);
    }
    free(m->L);
    free(m->h_out); free(m->xf); free(m->rstdf); free(m->logits); free(m->losses); free(m->wts);
    free(m->inputs); free(m->targets);
    free(m->dh); free(m->dmid); free(m->dx); free(m->dbig1); free(m->dbig2); free(m->dbig3);
    free(m->dsmall1); free(m->dsmall2); free(m->dsmall3); free(m->dsmall4);
    for (int i = 0; i < REF_NDD; i++) free(m->dd[i]);
    free(m->gate_mass);
    free(m);
}

const real *RF(ref_model_logits)(const RF(RefModel) *m) { return m->logits; }
const real *RF(ref_model_gate_mass)(const RF(RefModel) *m, int layer) { return m->gate_mass + (size_t)layer * 2 * m->t->cfg.gdn_heads; }

static void vadd(real *out, const real *a, const real *b, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}
static void vzero(real *x, size_t n) { memset(x, 0, n * sizeof(real)); }

/* Mixer forward: x1 [N,D] -> out [N,D]. */
static void mixer_forward(RF(RefModel) *m, int l, const real *params, real *out) {
    const DNConfig *c = &m->t->cfg;
    const size_t *P = m->t->layer[l].p;
    RF(RefLayerActs) *a = &m->L[l];
    int B = m->B, T = m->T, N = m->N, D = c->d_model;
    if (dn_kind_has_conv(c->layers[l])) {
        int H = c->n_head, K = c->head_dim, cs = c->conv_size, delta = c->layers[l] == 'D';
        RF(ref_linear_forward)(a->qpre, a->x1, params + P[DN_P_Q], N, D, D);
        RF(ref_linear_forward)(a->kpre, a->x1, params + P[DN_P_K], N, D, D);
        RF(ref_linear_forward)(a->vpre, a->x1, params + P[DN_P_V], N, D, D);
        if (delta) RF(ref_linear_forward)(a->bpre, a->x1, params + P[DN_P_B], N, D, H);
        RF(ref_conv_silu_forward)(a->qc, a->qpre, params + P[DN_P_Q_CONV], B, T, D, cs);
        RF(ref_conv_silu_forward)(a->kc, a->kpre, params + P[DN_P_K_CONV], B, T, D, cs);
        RF(ref_conv_silu_forward)(a->vc, a->vpre, params + P[DN_P_V_CONV], B, T, D, cs);
        RF(ref_l2norm_forward)(a->qn, a->qc, N * H, K, (real)c->l2_eps);
        RF(ref_l2norm_forward)(a->kn, a->kc, N * H, K, (real)c->l2_eps);
        real scale = (real)(1.0 / sqrt((double)K));
        if (!delta) {
            if (m->chunk > 0)
                RF(ref_linear_attn_chunk_forward)(a->o, NULL, a->qn, a->kn, a->vc, NULL, B, T, H, K, K, scale, m->chunk);
            else
                RF(ref_linear_attn_recurrent_forward)(a->o, NULL, a->qn, a->kn, a->vc, NULL, B, T, H, K, K, scale);
        } else {
            RF(ref_sigmoid_forward)(a->beta, a->bpre, N * H);
            if (m->chunk > 0)
                RF(ref_delta_rule_chunk_forward)(a->o, NULL, a->qn, a->kn, a->vc, a->beta, NULL, B, T, H, K, K, scale, m->chunk);
            else
                RF(ref_delta_rule_recurrent_forward)(a->o, NULL, a->qn, a->kn, a->vc, a->beta, NULL, B, T, H, K, K, scale);
        }
        RF(ref_rmsnorm_forward)(a->on, a->orstd, a->o, params + P[DN_P_O_NORM], N * H, K, (real)c->norm_eps);
        RF(ref_linear_forward)(out, a->on, params + P[DN_P_O], N, D, D);
    } else if (c->layers[l] == 'N') {
        int H = c->gdn_heads, K = c->gdn_head_dim, Vg = dn_gdn_value_dim(c), cs = c->conv_size;
        int HK = dn_gdn_key_width(c), HV = dn_gdn_value_width(c);
        RF(ref_linear_forward)(a->qpre, a->x1, params + P[DN_P_Q], N, D, HK);
        RF(ref_linear_forward)(a->kpre, a->x1, params + P[DN_P_K], N, D, HK);
        RF(ref_linear_forward)(a->vpre, a->x1, params + P[DN_P_V], N, D, HV);
        RF(ref_linear_forward)(a->apre, a->x1, params + P[DN_P_A], N, D, H);
        RF(ref_linear_forward)(a->bpre, a->x1, params + P[DN_P_B], N, D, H);
        RF(ref_linear_forward)(a->gpre, a->x1, params + P[DN_P_G], N, D, HV);
        RF(ref_conv_silu_forward)(a->qc, a->qpre, params + P[DN_P_Q_CONV], B, T, HK, cs);
        RF(ref_conv_silu_forward)(a->kc, a->kpre, params + P[DN_P_K_CONV], B, T, HK, cs);
        RF(ref_conv_silu_forward)(a->vc, a->vpre, params + P[DN_P_V_CONV], B, T, HV, cs);
        RF(ref_l2norm_forward)(a->qn, a->qc, N * H, K, (real)c->l2_eps);
        RF(ref_l2norm_forward)(a->kn, a->kc, N * H, K, (real)c->l2_eps);
        RF(ref_sigmoid_forward)(a->beta, a->bpre, N * H);
        RF(ref_gdn_decay_forward)(a->gdec, a->apre, params + P[DN_P_A_LOG], params + P[DN_P_DT_BIAS], N, H);
        real scale = (real)(1.0 / sqrt((double)K));
        if (m->chunk > 0)
            RF(ref_gated_delta_rule_chunk_forward)(a->o, NULL, a->qn, a->kn, a->vc, a->beta, a->gdec, NULL, B, T, H, K, Vg, scale, m->chunk);
        else
            RF(ref_gated_delta_rule_recurrent_forward)(a->o, NULL, a->qn, a->kn, a->vc, a->beta, a->gdec, NULL, B, T, H, K, Vg, scale);
        RF(ref_gated_rmsnorm_forward)(a->on, a->orstd, a->o, a->gpre, params + P[DN_P_O_NORM], N * H, Vg, (real)c->norm_eps);
        RF(ref_linear_forward)(out, a->on, params + P[DN_P_O], N, HV, D);
    } else {
        int Hq = c->attn_heads, Hkv = c->attn_kv_heads, dh = D / Hq, kvd = Hkv * dh;
        int window = c->layers[l] == 'S' ? c->window : 0;
        RF(ref_linear_forward)(a->q, a->x1, params + P[DN_P_Q], N, D, D);
        RF(ref_linear_forward)(a->k, a->x1, params + P[DN_P_K], N, D, kvd);
        RF(ref_linear_forward)(a->v, a->x1, params + P[DN_P_V], N, D, kvd);
        RF(ref_rope_forward)(a->q, B, T, Hq, dh, (real)c->rope_base, 0);
        RF(ref_rope_forward)(a->k, B, T, Hkv, dh, (real)c->rope_base, 0);
        RF(ref_attention_forward)(a->ao, a->lse, a->q, a->k, a->v, B, T, Hq, Hkv, dh, window);
        RF(ref_linear_forward)(out, a->ao, params + P[DN_P_O], N, D, D);
    }
}

real RF(ref_model_forward)(RF(RefModel) *m, const real *params, const int *inputs, const int *targets) {
    return RF(ref_model_forward_masked)(m, params, inputs, targets, NULL);
}

real RF(ref_model_forward_masked)(RF(RefModel) *m, const real *params, const int *inputs, const int *targets,
                                  const unsigned char *mask) {
    const DNParamTable *t = m->t;
    const DNConfig *c = &t->cfg;
    int N = m->N, D = c->d_model, I = c->hidden_size;
    size_t ND = (size_t)N * D;
    memcpy(m->inputs, inputs, (size_t)N * sizeof(int));
    RF(ref_embedding_forward)(m->L[0].h_in, m->inputs, params + t->embed, N, D);
    real *tmp = m->dd[0];
    for (int l = 0; l < c->n_layer; l++) {
        const size_t *P = t->layer[l].p;
        RF(RefLayerActs) *a = &m->L[l];
        real *h_next = l + 1 < c->n_layer ? m->L[l + 1].h_in : m->h_out;
        RF(ref_rmsnorm_forward)(a->x1, a->rstd1, a->h_in, params + P[DN_P_ATTN_NORM], N, D, (real)c->norm_eps);
        mixer_forward(m, l, params, tmp);
        vadd(a->mid, a->h_in, tmp, ND);
        if (c->no_mlp) { memcpy(h_next, a->mid, ND * sizeof(real)); continue; }
        RF(ref_rmsnorm_forward)(a->x2, a->rstd2, a->mid, params + P[DN_P_MLP_NORM], N, D, (real)c->norm_eps);
        RF(ref_linear_forward)(a->gate, a->x2, params + P[DN_P_GATE], N, D, I);
        RF(ref_linear_forward)(a->up, a->x2, params + P[DN_P_UP], N, D, I);
        RF(ref_swiglu_forward)(a->act, a->gate, a->up, N * I);
        RF(ref_linear_forward)(tmp, a->act, params + P[DN_P_DOWN], N, I, D);
        vadd(h_next, a->mid, tmp, ND);
    }
    RF(ref_rmsnorm_forward)(m->xf, m->rstdf, m->h_out, params + t->norm, N, D, (real)c->norm_eps);
    RF(ref_linear_forward)(m->logits, m->xf, params + t->lm_head, N, D, c->vocab_size);
    m->have_targets = targets != NULL;
    if (!targets) return 0;
    memcpy(m->targets, targets, (size_t)N * sizeof(int));
    const real mean = RF(ref_crossentropy_forward)(m->losses, m->logits, m->targets, N, c->vocab_size, c->vocab_size);
    long count = 0;
    for (int n = 0; n < N; n++) count += mask ? mask[n] != 0 : 1;
    for (int n = 0; n < N; n++) m->wts[n] = (mask ? mask[n] != 0 : 1) && count > 0 ? (real)(1.0 / count) : 0;
    if (!mask) return mean;
    double sum = 0;
    for (int n = 0; n < N; n++) if (mask[n]) sum += m->losses[n];
    return count > 0 ? (real)(sum / count) : 0;
}

/* The q, k, v input branches of a DeltaNet-style mixer, backward: q, k [N,HK] (H heads of K):
 * l2norm <- conv+silu <- projection; v [N,HV]: conv+silu <- projection. dqn, dkn, dvc are the
 * gradients at the mixer's inputs; dqc [N,HK] and dpre [N,max(HK,HV)] are scratch; dx1 (+=). */
static void qkv_backward(RF(RefModel) *m, int l, const real *params, real *grads, real *dx1, const real *dqn,
                         const real *dkn, const real *dvc, real *dqc, real *dpre, int H, int K, int HK, int HV) {
    const DNConfig *c = &m->t->cfg;
    const size_t *P = m->t->layer[l].p;
    RF(RefLayerActs) *a = &m->L[l];
    int B = m->B, T = m->T, N = m->N, D = c->d_model, cs = c->conv_size;
    size_t NK = (size_t)N * HK, NV = (size_t)N * HV;
    const real *dqk[2] = {dqn, dkn}, *xc[2] = {a->qc, a->kc}, *xpre[2] = {a->qpre, a->kpre};
    const int conv[2] = {DN_P_Q_CONV, DN_P_K_CONV}, proj[2] = {DN_P_Q, DN_P_K};
    for (int i = 0; i < 2; i++) {   /* q, then k */
        vzero(dqc, NK); vzero(dpre, NK);
        RF(ref_l2norm_backward)(dqc, dqk[i], xc[i], N * H, K, (real)c->l2_eps);
        RF(ref_conv_silu_backward)(dpre, grads + P[conv[i]], dqc, xpre[i], params + P[conv[i]], B, T, HK, cs);
        RF(ref_linear_backward)(dx1, grads + P[proj[i]], dpre, a->x1, params + P[proj[i]], N, D, HK);
    }
    vzero(dpre, NV);                /* v (no L2 norm) */
    RF(ref_conv_silu_backward)(dpre, grads + P[DN_P_V_CONV], dvc, a->vpre, params + P[DN_P_V_CONV], B, T, HV, cs);
    RF(ref_linear_backward)(dx1, grads + P[DN_P_V], dpre, a->x1, params + P[DN_P_V], N, D, HV);
}

/* Mixer backward: dout [N,D] -> dx1 [N,D] (+=), parameter grads (+=). */
static void mixer_backward(RF(RefModel) *m, int l, const real *params, real *grads, const real *dout, real *dx1) {
    const DNConfig *c = &m->t->cfg;
    const size_t *P = m->t->layer[l].p;
    RF(RefLayerActs) *a = &m->L[l];
    int B = m->B, T = m->T, N = m->N, D = c->d_model;
    size_t ND = (size_t)N * D;
    real **dd = m->dd;
    if (dn_kind_has_conv(c->layers[l])) {
        int H = c->n_head, K = c->head_dim, delta = c->layers[l] == 'D';
        size_t NH = (size_t)N * H;
        real *don = dd[1], *d_o = dd[2], *dqn = dd[3], *dkn = dd[4], *dvc = dd[5], *dqc = dd[6], *dpre = dd[7];
        real *dbeta = m->dsmall1, *dbpre = m->dsmall2;
        vzero(don, ND); vzero(d_o, ND); vzero(dqn, ND); vzero(dkn, ND); vzero(dvc, ND);
        vzero(dbeta, NH); vzero(dbpre, NH);
        RF(ref_linear_backward)(don, grads + P[DN_P_O], dout, a->on, params + P[DN_P_O], N, D, D);
        RF(ref_rmsnorm_backward)(d_o, grads + P[DN_P_O_NORM], don, a->o, params + P[DN_P_O_NORM], a->orstd, N * H, K);
        real scale = (real)(1.0 / sqrt((double)K));
        if (!delta) {
            if (m->chunk > 0)
                RF(ref_linear_attn_chunk_backward)(dqn, dkn, dvc, NULL, d_o, NULL, a->qn, a->kn, a->vc, NULL, B, T, H, K, K, scale, m->chunk);
            else
                RF(ref_linear_attn_recurrent_backward)(dqn, dkn, dvc, NULL, d_o, NULL, a->qn, a->kn, a->vc, NULL, B, T, H, K, K, scale);
        } else {
            if (m->chunk > 0)
                RF(ref_delta_rule_chunk_backward)(dqn, dkn, dvc, dbeta, NULL, d_o, NULL, a->qn, a->kn, a->vc, a->beta, NULL, B, T, H, K, K, scale, m->chunk);
            else
                RF(ref_delta_rule_recurrent_backward)(dqn, dkn, dvc, dbeta, NULL, d_o, NULL, a->qn, a->kn, a->vc, a->beta, NULL, B, T, H, K, K, scale);
            RF(ref_sigmoid_backward)(dbpre, dbeta, a->beta, N * H);
            RF(ref_linear_backward)(dx1, grads + P[DN_P_B], dbpre, a->x1, params + P[DN_P_B], N, D, H);
        }
        qkv_backward(m, l, params, grads, dx1, dqn, dkn, dvc, dqc, dpre, H, K, D, D);
    } else if (c->layers[l] == 'N') {
        int H = c->gdn_heads, K = c->gdn_head_dim, Vg = dn_gdn_value_dim(c);
        int HK = dn_gdn_key_width(c), HV = dn_gdn_value_width(c);
        size_t NH = (size_t)N * H, NK = (size_t)N * HK, NV = (size_t)N * HV;
        real *don = dd[1], *d_o = dd[2], *dqn = dd[3], *dkn = dd[4], *dvc = dd[5], *dqc = dd[6], *dpre = dd[7], *dgpre = dd[8];
        real *dbeta = m->dsmall1, *dbpre = m->dsmall2, *dgdec = m->dsmall3, *dapre = m->dsmall4;
        vzero(don, NV); vzero(d_o, NV); vzero(dqn, NK); vzero(dkn, NK); vzero(dvc, NV); vzero(dgpre, NV);
        vzero(dbeta, NH); vzero(dbpre, NH); vzero(dgdec, NH); vzero(dapre, NH);
        /* out = (RMSNorm(o) * silu(gpre)) W_o^T */
        RF(ref_linear_backward)(don, grads + P[DN_P_O], dout, a->on, params + P[DN_P_O], N, HV, D);
        RF(ref_gated_rmsnorm_backward)(d_o, dgpre, grads + P[DN_P_O_NORM], don, a->o, a->gpre, params + P[DN_P_O_NORM], a->orstd, N * H, Vg);
        RF(ref_linear_backward)(dx1, grads + P[DN_P_G], dgpre, a->x1, params + P[DN_P_G], N, D, HV);
        real scale = (real)(1.0 / sqrt((double)K));
        if (m->chunk > 0)
            RF(ref_gated_delta_rule_chunk_backward)(dqn, dkn, dvc, dbeta, dgdec, NULL, d_o, NULL, a->qn, a->kn, a->vc, a->beta, a->gdec, NULL, B, T, H, K, Vg, scale, m->chunk);
        else
            RF(ref_gated_delta_rule_recurrent_backward)(dqn, dkn, dvc, dbeta, dgdec, NULL, d_o, NULL, a->qn, a->kn, a->vc, a->beta, a->gdec, NULL, B, T, H, K, Vg, scale);
        /* the decay and beta */
        RF(ref_gdn_decay_backward)(dapre, grads + P[DN_P_A_LOG], grads + P[DN_P_DT_BIAS], dgdec, a->apre, params + P[DN_P_A_LOG], params + P[DN_P_DT_BIAS], N, H);
        real *mass = m->gate_mass + (size_t)l * 2 * H; /* sum_n |dg g| (A_log), sum_n |da| (dt_bias) */
        for (int h = 0; h < H; h++) {
            double sa = 0.0, sd = 0.0;
            for (size_t n = 0; n < (size_t)N; n++) { sa += fabs((double)dgdec[n * H + h] * a->gdec[n * H + h]); sd += fabs((double)dapre[n * H + h]); }
            mass[h] = (real)sa; mass[H + h] = (real)sd;
        }
        RF(ref_linear_backward)(dx1, grads + P[DN_P_A], dapre, a->x1, params + P[DN_P_A], N, D, H);
        RF(ref_sigmoid_backward)(dbpre, dbeta, a->beta, N * H);
        RF(ref_linear_backward)(dx1, grads + P[DN_P_B], dbpre, a->x1, params + P[DN_P_B], N, D, H);
        qkv_backward(m, l, params, grads, dx1, dqn, dkn, dvc, dqc, dpre, H, K, HK, HV);
    } else {
        int Hq = c->attn_heads, Hkv = c->attn_kv_heads, dh = D / Hq, kvd = Hkv * dh;
        int window = c->layers[l] == 'S' ? c->window : 0;
        real *dao = dd[1], *dq = dd[2], *dk = dd[3], *dv = dd[4];
        vzero(dao, ND); vzero(dq, ND); vzero(dk, (size_t)N * kvd); vzero(dv, (size_t)N * kvd);
        RF(ref_linear_backward)(dao, grads + P[DN_P_O], dout, a->ao, params + P[DN_P_O], N, D, D);
        RF(ref_attention_backward)(dq, dk, dv, dao, a->q, a->k, a->v, a->ao, a->lse, B, T, Hq, Hkv, dh, window);
        RF(ref_rope_backward)(dq, B, T, Hq, dh, (real)c->rope_base, 0);
        RF(ref_rope_backward)(dk, B, T, Hkv, dh, (real)c->rope_base, 0);
        RF(ref_linear_backward)(dx1, grads + P[DN_P_Q], dq, a->x1, params + P[DN_P_Q], N, D, D);
        RF(ref_linear_backward)(dx1, grads + P[DN_P_K], dk, a->x1, params + P[DN_P_K], N, D, kvd);
        RF(ref_linear_backward)(dx1, grads + P[DN_P_V], dv, a->x1, params + P[DN_P_V], N, D, kvd);
    }
}

/* MLP backward of layer l: h_{l+1} = mid + down(swiglu(gate(x2), up(x2))), x2 = RMSNorm(mid):
 * dh = d h_{l+1} -> dmid (=), weight gradients (+=). */
static void mlp_backward(RF(RefModel) *m, int l, const real *params, real *grads, const real *dh, real *dmid) {
    const size_t *P = m->t->layer[l].p;
    RF(RefLayerActs) *a = &m->L[l];
    int N = m->N, D = m->t->cfg.d_model, I = m->t->cfg.hidden_size;
    size_t ND = (size_t)N * D, NI = (size_t)N * I;
    real *dact = m->dbig1, *dgate = m->dbig2, *dup = m->dbig3, *dx = m->dx;
    vzero(dact, NI); vzero(dgate, NI); vzero(dup, NI);
    RF(ref_linear_backward)(dact, grads + P[DN_P_DOWN], dh, a->act, params + P[DN_P_DOWN], N, I, D);
    RF(ref_swiglu_backward)(dgate, dup, dact, a->gate, a->up, N * I);
    vzero(dx, ND);
    RF(ref_linear_backward)(dx, grads + P[DN_P_GATE], dgate, a->x2, params + P[DN_P_GATE], N, D, I);
    RF(ref_linear_backward)(dx, grads + P[DN_P_UP], dup, a->x2, params + P[DN_P_UP], N, D, I);
    memcpy(dmid, dh, ND * sizeof(real));
    RF(ref_rmsnorm_backward)(dmid, grads + P[DN_P_MLP_NORM], dx, a->mid, params + P[DN_P_MLP_NORM], a->rstd2, N, D);
}

void RF(ref_model_backward)(RF(RefModel) *m, const real *params, real *grads) {
    const DNParamTable *t = m->t;
    const DNConfig *c = &t->cfg;
    int N = m->N, D = c->d_model, Vr = c->vocab_size;
    size_t ND = (size_t)N * D;
    if (!m->have_targets) { fprintf(stderr, "ref_model_backward: the last forward had no targets\n"); abort(); }
    real *dlogits = (real *)calloc((size_t)N * Vr, sizeof(real));
    if (!dlogits) { fprintf(stderr, "ref_model_backward: out of memory\n"); abort(); }
    RF(ref_crossentropy_weighted_backward)(dlogits, m->logits, m->targets, m->wts, N, Vr, Vr);
    real *dh = m->dh, *dmid = m->dmid, *dx = m->dx;
    vzero(dx, ND);
    RF(ref_linear_backward)(dx, grads + t->lm_head, dlogits, m->xf, params + t->lm_head, N, D, Vr);
    free(dlogits);
    vzero(dh, ND);
    RF(ref_rmsnorm_backward)(dh, grads + t->norm, dx, m->h_out, params + t->norm, m->rstdf, N, D);
    for (int l = c->n_layer - 1; l >= 0; l--) {
        const size_t *P = t->layer[l].p;
        RF(RefLayerActs) *a = &m->L[l];
        if (c->no_mlp) memcpy(dmid, dh, ND * sizeof(real)); /* h_{l+1} = mid */
        else mlp_backward(m, l, params, grads, dh, dmid);
        /* mid = h_l + mixer(x1) */
        vzero(dx, ND);
        mixer_backward(m, l, params, grads, dmid, dx);
        memcpy(dh, dmid, ND * sizeof(real));
        RF(ref_rmsnorm_backward)(dh, grads + P[DN_P_ATTN_NORM], dx, a->h_in, params + P[DN_P_ATTN_NORM], a->rstd1, N, D);
    }
    RF(ref_embedding_backward)(grads + t->embed, dh, m->inputs, N, D);
}
