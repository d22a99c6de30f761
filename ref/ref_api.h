/*
 * ref_api.h -- declarations of the CPU reference, included twice by reference.h: once with
 * REAL = float (names ref_*) and once with REAL = double (names ref_*_f64). No include guard on
 * purpose. See reference.h for the conventions.
 */

/* ---- elementwise / small layers --------------------------------------------------------------- */

/* Embedding. out[N,D] = wte[tokens[n]] (wte rows of length D). */
void RF(ref_embedding_forward)(REAL *out, const int *tokens, const REAL *wte, int N, int D);
void RF(ref_embedding_backward)(REAL *dwte, const REAL *dout, const int *tokens, int N, int D);

/* Linear, PyTorch layout w [OC, C]: out[N,OC] = inp[N,C] w^T.
 * backward: dinp[N,C] += dout w (skipped if dinp NULL); dw[OC,C] += dout^T inp (skipped if NULL). */
void RF(ref_linear_forward)(REAL *out, const REAL *inp, const REAL *w, int N, int C, int OC);
void RF(ref_linear_backward)(REAL *dinp, REAL *dw, const REAL *dout, const REAL *inp, const REAL *w,
                             int N, int C, int OC);

/* RMSNorm over rows of C: out = inp * rstd * g, rstd[N] = 1/sqrt(mean(inp^2) + eps) saved for the
 * backward. Used for the block norms (N = B*T, C = D) and for DeltaNet's per-head output norm
 * (N = B*T*H, C = V, one gain shared by all heads). */
void RF(ref_rmsnorm_forward)(REAL *out, REAL *rstd, const REAL *inp, const REAL *g, int N, int C, REAL eps);
void RF(ref_rmsnorm_backward)(REAL *dinp, REAL *dg, const REAL *dout, const REAL *inp, const REAL *g,
                              const REAL *rstd, int N, int C);

/* Causal depthwise conv + SiLU over time. inp/out [B,T,C], w [C,KS] (tap KS-1 = current token):
 * out[b,t,c] = silu(sum_j w[c,j] * inp[b, t-KS+1+j, c]), inp[t<0] = 0. Backward recomputes. */
void RF(ref_conv_silu_forward)(REAL *out, const REAL *inp, const REAL *w, int B, int T, int C, int KS);
void RF(ref_conv_silu_backward)(REAL *dinp, REAL *dw, const REAL *dout, const REAL *inp, const REAL *w,
                                int B, int T, int C, int KS);

/* L2 normalisation of rows of K: out = inp / sqrt(sum(inp^2) + eps). Backward recomputes. */
void RF(ref_l2norm_forward)(REAL *out, const REAL *inp, int N, int K, REAL eps);
void RF(ref_l2norm_backward)(REAL *dinp, const REAL *dout, const REAL *inp, int N, int K, REAL eps);

/* out = sigmoid(inp); backward from the saved output. */
void RF(ref_sigmoid_forward)(REAL *out, const REAL *inp, int N);
void RF(ref_sigmoid_backward)(REAL *dinp, const REAL *dout, const REAL *out, int N);

/* SwiGLU: out[n] = silu(gate[n]) * up[n] over N elements. */
void RF(ref_swiglu_forward)(REAL *out, const REAL *gate, const REAL *up, int N);
void RF(ref_swiglu_backward)(REAL *dgate, REAL *dup, const REAL *dout, const REAL *gate, const REAL *up, int N);

/* RoPE, non-interleaved, in place on x [B,T,H,d]: for i < d/2, angle = (pos0 + t) * base^(-2i/d),
 * (x[i], x[i+d/2]) <- (x[i] cos - x[i+d/2] sin, x[i+d/2] cos + x[i] sin).
 * The backward applies the inverse rotation to the gradient IN PLACE (it overwrites dx rather than
 * accumulating, unlike every other backward: the rotation is linear and invertible). */
void RF(ref_rope_forward)(REAL *x, int B, int T, int H, int d, REAL base, int pos0);
void RF(ref_rope_backward)(REAL *dx, int B, int T, int H, int d, REAL base, int pos0);

/* Causal softmax attention with grouped KV heads. q/out [B,T,Hq,d], k/v [B,T,Hkv,d]; query head h
 * uses KV head h / (Hq/Hkv); scale 1/sqrt(d). window > 0: position t sees keys t-window+1..t;
 * window <= 0: global (all keys <= t). lse [B,Hq,T] (log-sum-exp of the scaled scores) is saved
 * for the backward, which recomputes the probabilities. */
void RF(ref_attention_forward)(REAL *out, REAL *lse, const REAL *q, const REAL *k, const REAL *v,
                               int B, int T, int Hq, int Hkv, int d, int window);
void RF(ref_attention_backward)(REAL *dq, REAL *dk, REAL *dv, const REAL *dout, const REAL *q,
                                const REAL *k, const REAL *v, const REAL *out, const REAL *lse,
                                int B, int T, int Hq, int Hkv, int d, int window);

/* Softmax cross-entropy over the first V columns of logits rows of stride ld (ld >= V).
 * losses[N] per position (may be NULL); returns the mean over N. targets in [0, V).
 * backward: dlogits[n, j] += dloss / N * (softmax_j - [j == target]) for j < V. */
REAL RF(ref_crossentropy_forward)(REAL *losses, const REAL *logits, const int *targets, int N, int V, int ld);
void RF(ref_crossentropy_backward)(REAL *dlogits, const REAL *logits, const int *targets, int N, int V,
                                   int ld, REAL dloss);
/* The same backward with a weight per row (a loss mask): dlogits[n, j] += w[n] * (softmax_j -
 * [j == target]); w[n] = mask[n] / (number of masked rows) makes it the gradient of the mean loss
 * over the masked rows, and rows of weight 0 contribute nothing. */
void RF(ref_crossentropy_weighted_backward)(REAL *dlogits, const REAL *logits, const int *targets, const REAL *w,
                                            int N, int V, int ld);

/* ---- the delta rule ------------------------------------------------------------------------------
 * q, k [B,T,H,K], v [B,T,H,V], beta [B,T,H], o [B,T,H,V]; states [B,H,K,V] (S[a][b]: key index a,
 * value index b). S0 (initial state) and S_final may be NULL (zero / not wanted) and may alias
 * (S0 == S_final updates a state in place: one decode step is T = 1).
 *   S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T,  o_t = scale * S_t^T q_t
 * Backward: given do (and dS_final, may be NULL = 0) accumulate (+=) dq, dk, dv, dbeta, and dS0
 * (may be NULL). */
void RF(ref_delta_rule_recurrent_forward)(REAL *o, REAL *S_final, const REAL *q, const REAL *k,
                                          const REAL *v, const REAL *beta, const REAL *S0,
                                          int B, int T, int H, int K, int V, REAL scale);
void RF(ref_delta_rule_recurrent_backward)(REAL *dq, REAL *dk, REAL *dv, REAL *dbeta, REAL *dS0,
                                           const REAL *dout, const REAL *dS_final, const REAL *q,
                                           const REAL *k, const REAL *v, const REAL *beta, const REAL *S0,
                                           int B, int T, int H, int K, int V, REAL scale);
/* The same function computed chunkwise (WY form, chunk size C; T need not be a multiple of C). */
void RF(ref_delta_rule_chunk_forward)(REAL *o, REAL *S_final, const REAL *q, const REAL *k,
                                      const REAL *v, const REAL *beta, const REAL *S0,
                                      int B, int T, int H, int K, int V, REAL scale, int C);
void RF(ref_delta_rule_chunk_backward)(REAL *dq, REAL *dk, REAL *dv, REAL *dbeta, REAL *dS0,
                                       const REAL *dout, const REAL *dS_final, const REAL *q,
                                       const REAL *k, const REAL *v, const REAL *beta, const REAL *S0,
                                       int B, int T, int H, int K, int V, REAL scale, int C);

/* ---- the gated delta rule (ref/gateddelta.c) --------------------------------------------------
 * The delta rule with a per-token, per-head decay alpha_t = exp(g_t): g [B,T,H] is the LOG decay
 * (g <= 0 in the model; any finite value works here), the rest as above:
 *   S_t = alpha_t S_{t-1} + beta_t k_t (v_t - alpha_t S_{t-1}^T k_t)^T,  o_t = scale * S_t^T q_t
 * g == 0 is the delta rule, and so is g == NULL (exactly; dg may then be NULL too). Backward: also
 * dg (+=). */
void RF(ref_gated_delta_rule_recurrent_forward)(REAL *o, REAL *S_final, const REAL *q, const REAL *k,
                                                const REAL *v, const REAL *beta, const REAL *g,
                                                const REAL *S0, int B, int T, int H, int K, int V, REAL scale);
void RF(ref_gated_delta_rule_recurrent_backward)(REAL *dq, REAL *dk, REAL *dv, REAL *dbeta, REAL *dg,
                                                 REAL *dS0, const REAL *dout, const REAL *dS_final,
                                                 const REAL *q, const REAL *k, const REAL *v,
                                                 const REAL *beta, const REAL *g, const REAL *S0,
                                                 int B, int T, int H, int K, int V, REAL scale);
/* The same function computed chunkwise (the gated WY form, chunk size C). */
void RF(ref_gated_delta_rule_chunk_forward)(REAL *o, REAL *S_final, const REAL *q, const REAL *k,
                                            const REAL *v, const REAL *beta, const REAL *g,
                                            const REAL *S0, int B, int T, int H, int K, int V,
                                            REAL scale, int C);
void RF(ref_gated_delta_rule_chunk_backward)(REAL *dq, REAL *dk, REAL *dv, REAL *dbeta, REAL *dg,
                                             REAL *dS0, const REAL *dout, const REAL *dS_final,
                                             const REAL *q, const REAL *k, const REAL *v,
                                             const REAL *beta, const REAL *g, const REAL *S0,
                                             int B, int T, int H, int K, int V, REAL scale, int C);

/* ---- the gated DeltaNet layer's gates (ref/gate.c) --------------------------------------------
 * Decay: g[n,h] = -exp(A_log[h]) * softplus(a[n,h] + dt_bias[h]) over N rows of H heads
 * (softplus(x) = log(1 + e^x), = x above 20 like PyTorch's). Backward: da, dA_log, ddt_bias (+=). */
void RF(ref_gdn_decay_forward)(REAL *g, const REAL *a, const REAL *A_log, const REAL *dt_bias, int N, int H);
void RF(ref_gdn_decay_backward)(REAL *da, REAL *dA_log, REAL *ddt_bias, const REAL *dg, const REAL *a,
                                const REAL *A_log, const REAL *dt_bias, int N, int H);
/* Gated output norm over rows of C: out = RMSNorm(inp; w) * silu(gate) (fla's FusedRMSNormGated,
 * swish), rstd[N] saved. N = B*T*H rows of one head's V values, one gain w [C] for all heads.
 * Backward: dinp, dgate, dw (+=). */
void RF(ref_gated_rmsnorm_forward)(REAL *out, REAL *rstd, const REAL *inp, const REAL *gate, const REAL *w,
                                   int N, int C, REAL eps);
void RF(ref_gated_rmsnorm_backward)(REAL *dinp, REAL *dgate, REAL *dw, const REAL *dout, const REAL *inp,
                                    const REAL *gate, const REAL *w, const REAL *rstd, int N, int C);

/* ---- linear attention ('L' layers, ref/linattn.c) -------------------------------------------------
 * The delta rule's shapes without beta: S_t = S_{t-1} + k_t v_t^T, o_t = scale * S_t^T q_t.
 * q, k [B,T,H,K], v, o [B,T,H,V], states [B,H,K,V]; S0 / S_final may be NULL and may alias. The
 * backward accumulates (+=) dq, dk, dv and dS0 (may be NULL) given do and dS_final (may be NULL). */
void RF(ref_linear_attn_recurrent_forward)(REAL *o, REAL *S_final, const REAL *q, const REAL *k,
                                           const REAL *v, const REAL *S0, int B, int T, int H, int K,
                                           int V, REAL scale);
void RF(ref_linear_attn_recurrent_backward)(REAL *dq, REAL *dk, REAL *dv, REAL *dS0, const REAL *dout,
                                            const REAL *dS_final, const REAL *q, const REAL *k,
                                            const REAL *v, const REAL *S0, int B, int T, int H, int K,
                                            int V, REAL scale);
/* The same function chunkwise (chunk size C; T need not be a multiple of C). */
void RF(ref_linear_attn_chunk_forward)(REAL *o, REAL *S_final, const REAL *q, const REAL *k, const REAL *v,
                                       const REAL *S0, int B, int T, int H, int K, int V, REAL scale, int C);
void RF(ref_linear_attn_chunk_backward)(REAL *dq, REAL *dk, REAL *dv, REAL *dS0, const REAL *dout,
                                        const REAL *dS_final, const REAL *q, const REAL *k, const REAL *v,
                                        const REAL *S0, int B, int T, int H, int K, int V, REAL scale, int C);
