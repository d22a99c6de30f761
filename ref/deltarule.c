/*
 * deltarule.c -- the delta rule on the CPU, two ways: the token recurrence (what infer.c runs, one
 * token at a time) and the chunkwise-parallel WY form (what the GPU trainer runs), forward and
 * backward. They compute the same function; tests/test_deltarule.c checks one against the other
 * and both against finite differences.
 *
 * Per batch element b and head h (row vectors, state S is K x V, S[a][c]: key a, value c):
 *
 *     u_t = v_t - S_{t-1}^T k_t                 (what the memory predicts for k_t, corrected)
 *     S_t = S_{t-1} + beta_t k_t u_t^T
 *     o_t = scale S_t^T q_t
 *
 * RECURRENT BACKWARD. Walk t = T-1 .. 0 carrying dS = dL/dS_t (dS_final, or 0, at the start):
 *     dq_t += scale S_t do_t          dS += scale q_t do_t^T            (the output)
 *     du    = beta_t dS^T k_t         dk_t += beta_t dS u_t    dbeta_t += k_t^T dS u_t
 *     dv_t += du                      dk_t -= S_{t-1} du       dS -= k_t du^T
 * and dS0 += dS at the end. The recurrence stores every S_t of the sequence ((T+1) K V per head):
 * simple, and fine at reference sizes.
 *
 * CHUNKWISE FORWARD. Cut time into chunks of C rows (the last may be shorter), Q, K, V, beta the
 * chunk's rows, S_n the state entering chunk n. Unrolling the recurrence inside the chunk, the
 * beta-weighted corrections u'_i = beta_i u_i satisfy
 *     u'_i = beta_i (v_i - S_n^T k_i) - sum_{j<i} beta_i (k_i . k_j) u'_j,
 * i.e. (I + A) U' = diag(beta) V - diag(beta) K S_n with A = strictly-lower(diag(beta) K K^T).
 * I + A is unit lower triangular, so it is always invertible and Tm = (I + A)^{-1} comes from plain
 * forward substitution (no pivoting, no division). That gives the WY factors, which do not depend
 * on the state:
 *     W = Tm diag(beta) K,   U = Tm diag(beta) V,   U' = U - W S_n
 * and then, with M = tril(Q K^T) (diagonal kept: o_i sees its own update),
 *     O       = scale (Q S_n + M U')
 *     S_{n+1} = S_n + K^T U'.
 * Everything inside a chunk is a small dense matmul; only the state crosses chunks.
 *
 * CHUNKWISE BACKWARD. A forward pass first recomputes and stores the incoming state S_n of every
 * chunk (ceil(T/C) K V per head: the only thing kept across chunks; every C x C matrix is
 * rebuilt per chunk from Q, K, V, beta, and nothing is ever T x T). Then over chunks in reverse,
 * dS = dL/dS_{n+1} (dS_final or 0 for the last chunk), dO the chunk's rows of do:
 *     dU'  = scale M^T dO + K dS                    (U' feeds O and S_{n+1})
 *     dM   = tril(scale dO U'^T)                    (diagonal kept, like M)
 *     dQ  += dM K + scale dO S_n^T
 *     dK  += dM^T Q + U' dS^T
 *     dS_n = dS + scale Q^T dO - W^T dU'            (S_n feeds O, S_{n+1} and U')
 *     dW   = -dU' S_n^T,   dU = dU'
 * through the WY factors, with Kb = diag(beta) K, Vb = diag(beta) V (W = Tm Kb, U = Tm Vb):
 *     dTm  = dW Kb^T + dU Vb^T,   dKb = Tm^T dW,   dVb = Tm^T dU
 *     dK  += diag(beta) dKb,      dV += diag(beta) dVb,
 *     dbeta_i += dKb_i . k_i + dVb_i . v_i
 * through the inverse (d(X^-1) = -X^-1 dX X^-1, so dL/dA = -Tm^T dTm Tm^T), kept on A's support:
 *     dA   = strictly-lower(-Tm^T dTm Tm^T)
 * (Tm^T is upper triangular, so the strictly-lower part of that product only reads the
 * strictly-lower part of dTm: dTm needs no masking.) Finally A_ij = beta_i (k_i . k_j), j < i:
 *     dbeta_i += sum_j dA_ij (k_i . k_j),   dK += diag(beta) dA K + dA^T Kb
 * (both dK terms are D K and D^T K with D = diag(beta) dA, which is how the code does it)
 * and dS <- dS_n for the previous chunk; dS0 += dS after chunk 0.
 *
 * Both forms accept S0 == S_final (the state is read into a work buffer before it is written),
 * S0 / dS0 / S_final / dS_final NULL, and any T >= 1. Every backward accumulates (+=).
 *
 * The code is ref/gateddelta.c's, called with g == NULL: no decay, alpha_t = 1 exactly. The
 * recurrence then runs the steps above operation for operation (S is never scaled); the chunkwise
 * form builds A as beta_i (k_i . k_j) E_ij with E = 1 rather than (beta_i k_i) . k_j, which moves
 * its results by rounding only.
 */
#include "ref_real.h"

void RF(ref_delta_rule_recurrent_forward)(real *o, real *S_final, const real *q, const real *k,
                                          const real *v, const real *beta, const real *S0,
                                          int B, int T, int H, int K, int V, real scale) {
    RF(ref_gated_delta_rule_recurrent_forward)(o, S_final, q, k, v, beta, NULL, S0, B, T, H, K, V, scale);
}

void RF(ref_delta_rule_recurrent_backward)(real *dq, real *dk, real *dv, real *dbeta, real *dS0,
                                           const real *dout, const real *dS_final, const real *q,
                                           const real *k, const real *v, const real *beta, const real *S0,
                                           int B, int T, int H, int K, int V, real scale) {
    RF(ref_gated_delta_rule_recurrent_backward)(dq, dk, dv, dbeta, NULL, dS0, dout, dS_final, q, k, v, beta,
                                                NULL, S0, B, T, H, K, V, scale);
}

void RF(ref_delta_rule_chunk_forward)(real *o, real *S_final, const real *q, const real *k,
                                      const real *v, const real *beta, const real *S0,
                                      int B, int T, int H, int K, int V, real scale, int C) {
    RF(ref_gated_delta_rule_chunk_forward)(o, S_final, q, k, v, beta, NULL, S0, B, T, H, K, V, scale, C);
}

void RF(ref_delta_rule_chunk_backward)(real *dq, real *dk, real *dv, real *dbeta, real *dS0,
                                       const real *dout, const real *dS_final, const real *q,
                                       const real *k, const real *v, const real *beta, const real *S0,
                                       int B, int T, int H, int K, int V, real scale, int C) {
    RF(ref_gated_delta_rule_chunk_backward)(dq, dk, dv, dbeta, NULL, dS0, dout, dS_final, q, k, v, beta,
                                            NULL, S0, B, T, H, K, V, scale, C);
}
