/*
 * linattn.c -- linear attention ('L' layers) on the CPU, two ways like the delta rule
 * (ref/deltarule.c): the token recurrence (what infer.c runs) and the chunkwise form (what the
 * trainer's reference model runs), forward and backward. tests/test_linattn.c checks one against
 * the other and both against finite differences.
 *
 * Per batch element b and head h (row vectors; the state S is K x V, S[a][c]: key a, value c):
 *
 *     S_t = S_{t-1} + k_t v_t^T,        o_t = scale S_t^T q_t
 *
 * i.e. the delta rule with the correction v_t - S_{t-1}^T k_t replaced by v_t and no beta: the
 * memory only ever adds, it never overwrites what a key already holds. Unrolled,
 * o_t = scale (S_0^T q_t + sum_{s<=t} (q_t . k_s) v_s), causal attention without the softmax.
 *
 * RECURRENT BACKWARD. dq_t needs S_t, the rest only dS = dL/dS_t, so two passes and no stored states:
 *     forward:  S_t = S_{t-1} + k_t v_t^T,   dq_t += scale S_t do_t
 *     reverse (dS = dS_final or 0):   dS += scale q_t do_t^T,   dk_t += dS v_t,   dv_t += dS^T k_t
 * and dS0 += dS at the end (S_{t-1} = S_t - k_t v_t^T: dS passes through unchanged).
 *
 * CHUNKWISE. Chunks of C rows (the last may be shorter), S_n the state entering chunk n, M =
 * tril(Q K^T) with the diagonal (o_i sees its own k_i v_i^T):
 *     O = scale (Q S_n + M V),   S_{n+1} = S_n + K^T V
 * Backward: the forward pass again (S_n per chunk) gives dQ = scale (dO S_n^T + tril(dO V^T) K);
 * then over chunks in reverse with dS = dL/dS_{n+1}:
 *     dK += scale tril(dO V^T)^T Q + V dS^T,   dV += scale M^T dO + K dS,   dS <- dS + scale Q^T dO
 * and dS0 += dS after chunk 0.
 *
 * Both forms accept S0 == S_final, S0 / dS0 / S_final / dS_final NULL, and any T >= 1; backwards
 * accumulate (+=). Parallel over (b, h); each (b, h) writes only its own slices. Dot products
 * accumulate in double.
 */
#include "ref_real.h"

/* Offset of row t, head h of batch element b in a [B,T,H,X] tensor. */
static size_t at(int b, int t, int h, int T, int H, int X) { return (((size_t)b * T + t) * H + h) * X; }

/* A fresh K x V state: S0's slice at offset so, or zero without S0. */
static real *state_new(const real *S0, size_t so, size_t sz) {
    real *S = (real *)calloc(sz, sizeof(real));
    if (!S) abort();
    if (S0) memcpy(S, S0 + so, sz * sizeof(real));
    return S;
}

/* The state read from either side, in double: out [K] = alpha S y (y [V]), or with transpose
 * out [V] = alpha S^T x (x [K]); acc adds the result (rounded first) to out instead. */
static void state_mv(real *out, double alpha, const real *S, const real *x, int K, int V, int transpose, int acc) {
    const int n = transpose ? V : K, m = transpose ? K : V;
    for (int i = 0; i < n; i++) {
        double s = 0.0;
        for (int j = 0; j < m; j++) s += (double)S[transpose ? j * V + i : i * V + j] * x[j];
        out[i] = acc ? out[i] + (real)(alpha * s) : (real)(alpha * s);
    }
}

/* S += alpha x y^T (x [K], y [V]). */
static void outer_add(real *S, real alpha, const real *x, const real *y, int K, int V) {
    for (int a = 0; a < K; a++)
        for (int c = 0; c < V; c++) S[a * V + c] += alpha * x[a] * y[c];
}

void RF(ref_linear_attn_recurrent_forward)(real *o, real *S_final, const real *q, const real *k,
                                           const real *v, const real *S0, int B, int T, int H, int K,
                                           int V, real scale) {
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            const size_t sz = (size_t)K * V, so = ((size_t)b * H + h) * sz;
            real *S = state_new(S0, so, sz);
            for (int t = 0; t < T; t++) {
                const real *qt = q + at(b, t, h, T, H, K);
                outer_add(S, 1, k + at(b, t, h, T, H, K), v + at(b, t, h, T, H, V), K, V);
                state_mv(o + at(b, t, h, T, H, V), scale, S, qt, K, V, 1, 0);     /* o_t = scale S_t^T q_t */
            }
            if (S_final) memcpy(S_final + so, S, sz * sizeof(real));
            free(S);
        }
    }
}

void RF(ref_linear_attn_recurrent_backward)(real *dq, real *dk, real *dv, real *dS0, const real *dout,
                                            const real *dS_final, const real *q, const real *k,
                                            const real *v, const real *S0, int B, int T, int H, int K,
                                            int V, real scale) {
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            const size_t sz = (size_t)K * V, so = ((size_t)b * H + h) * sz;
            real *S = state_new(S0, so, sz);   /* forward: dq_t = scale S_t do_t */
            for (int t = 0; t < T; t++) {
                const real *dot = dout + at(b, t, h, T, H, V);
                outer_add(S, 1, k + at(b, t, h, T, H, K), v + at(b, t, h, T, H, V), K, V);
                state_mv(dq + at(b, t, h, T, H, K), scale, S, dot, K, V, 0, 1);
            }
            /* reverse: S now holds dS */
            if (dS_final) memcpy(S, dS_final + so, sz * sizeof(real));
            else memset(S, 0, sz * sizeof(real));
            for (int t = T - 1; t >= 0; t--) {
                const real *qt = q + at(b, t, h, T, H, K), *kt = k + at(b, t, h, T, H, K), *vt = v + at(b, t, h, T, H, V);
                const real *dot = dout + at(b, t, h, T, H, V);
                outer_add(S, scale, qt, dot, K, V);
                state_mv(dk + at(b, t, h, T, H, K), 1.0, S, vt, K, V, 0, 1);      /* dk_t += dS v_t */
                state_mv(dv + at(b, t, h, T, H, V), 1.0, S, kt, K, V, 1, 1);      /* dv_t += dS^T k_t */
            }
            if (dS0)
                for (size_t i = 0; i < sz; i++) dS0[so + i] += S[i];
            free(S);
        }
    }
}

/* ---- the chunkwise form ----------------------------------------------------------------------- */

/* Per (b, h): the incoming state of every chunk, Sn [nc + 1][K][V] (Sn[nc] = the final state),
 * allocated here (free it). */
static real *chunk_states(const real *k, const real *v, const real *S0, int b, int h, int T, int H,
                          int K, int V, int C, int nc) {
    const size_t sz = (size_t)K * V;
    real *Sn = (real *)malloc((size_t)(nc + 1) * sz * sizeof(real));
    if (!Sn) abort();
    if (S0) memcpy(Sn, S0 + ((size_t)b * H + h) * sz, sz * sizeof(real));
    else memset(Sn, 0, sz * sizeof(real));
    for (int n = 0; n < nc; n++) {
        real *cur = Sn + (size_t)n * sz, *next = cur + sz;
        const int t0 = n * C, t1 = t0 + C < T ? t0 + C : T;
        for (int a = 0; a < K; a++)
            for (int c = 0; c < V; c++) {
                double s = cur[a * V + c];
                for (int t = t0; t < t1; t++) s += (double)k[at(b, t, h, T, H, K) + a] * v[at(b, t, h, T, H, V) + c];
                next[a * V + c] = (real)s;
            }
    }
    return Sn;
}

static double dotp(const real *x, const real *y, int n) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += (double)x[i] * y[i];
    return s;
}

void RF(ref_linear_attn_chunk_forward)(real *o, real *S_final, const real *q, const real *k, const real *v,
                                       const real *S0, int B, int T, int H, int K, int V, real scale, int C) {
    const int nc = (T + C - 1) / C;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            const size_t sz = (size_t)K * V;
            real *Sn = chunk_states(k, v, S0, b, h, T, H, K, V, C, nc);
            for (int n = 0; n < nc; n++) {
                const real *S = Sn + (size_t)n * sz;
                const int t0 = n * C, t1 = t0 + C < T ? t0 + C : T;
                for (int i = t0; i < t1; i++) {
                    const real *qi = q + at(b, i, h, T, H, K);
                    real *oi = o + at(b, i, h, T, H, V);
                    for (int c = 0; c < V; c++) {  /* Q S_n */
                        double s = 0.0;
                        for (int a = 0; a < K; a++) s += (double)qi[a] * S[a * V + c];
                        oi[c] = (real)s;
                    }
                    for (int j = t0; j <= i; j++) { /* + tril(Q K^T) V */
                        const double m = dotp(qi, k + at(b, j, h, T, H, K), K);
                        const real *vj = v + at(b, j, h, T, H, V);
                        for (int c = 0; c < V; c++) oi[c] = (real)(oi[c] + m * vj[c]);
                    }
                    for (int c = 0; c < V; c++) oi[c] *= scale;
                }
            }
            /* the states were read into Sn first: S_final may alias S0 */
            if (S_final) memcpy(S_final + ((size_t)b * H + h) * sz, Sn + (size_t)nc * sz, sz * sizeof(real));
            free(Sn);
        }
    }
}

void RF(ref_linear_attn_chunk_backward)(real *dq, real *dk, real *dv, real *dS0, const real *dout,
                                        const real *dS_final, const real *q, const real *k, const real *v,
                                        const real *S0, int B, int T, int H, int K, int V, real scale, int C) {
    const int nc = (T + C - 1) / C;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            const size_t sz = (size_t)K * V;
            real *Sn = chunk_states(k, v, S0, b, h, T, H, K, V, C, nc);
            real *dS = state_new(dS_final, ((size_t)b * H + h) * sz, sz);
            for (int n = nc - 1; n >= 0; n--) {
                const real *S = Sn + (size_t)n * sz;
                const int t0 = n * C, t1 = t0 + C < T ? t0 + C : T;
                /* dQ = scale (dO S_n^T + tril(dO V^T) K) */
                for (int i = t0; i < t1; i++) {
                    const real *doi = dout + at(b, i, h, T, H, V);
                    real *dqi = dq + at(b, i, h, T, H, K);
                    for (int a = 0; a < K; a++) {
                        double s = dotp(doi, S + (size_t)a * V, V);
                        for (int j = t0; j <= i; j++) s += dotp(doi, v + at(b, j, h, T, H, V), V) * k[at(b, j, h, T, H, K) + a];
                        dqi[a] += (real)(scale * s);
                    }
                }
                /* dK_j = scale sum_{i>=j} (do_i . v_j) q_i + dS v_j;  dV_j = scale sum_{i>=j} (q_i . k_j) do_i + dS^T k_j */
                for (int j = t0; j < t1; j++) {
                    const real *kj = k + at(b, j, h, T, H, K), *vj = v + at(b, j, h, T, H, V);
                    real *dkj = dk + at(b, j, h, T, H, K), *dvj = dv + at(b, j, h, T, H, V);
                    for (int a = 0; a < K; a++) {
                        double s = dotp(dS + (size_t)a * V, vj, V);
                        for (int i = j; i < t1; i++) s += scale * dotp(dout + at(b, i, h, T, H, V), vj, V) * q[at(b, i, h, T, H, K) + a];
                        dkj[a] += (real)s;
                    }
                    for (int c = 0; c < V; c++) {
                        double s = 0.0;
                        for (int a = 0; a < K; a++) s += (double)dS[a * V + c] * kj[a];
                        for (int i = j; i < t1; i++) s += scale * dotp(q + at(b, i, h, T, H, K), kj, K) * dout[at(b, i, h, T, H, V) + c];
                        dvj[c] += (real)s;
                    }
                }
                /* dS_n = dS_{n+1} + scale Q^T dO */
                for (int a = 0; a < K; a++)
                    for (int c = 0; c < V; c++) {
                        double s = dS[a * V + c];
                        for (int i = t0; i < t1; i++) s += scale * (double)q[at(b, i, h, T, H, K) + a] * dout[at(b, i, h, T, H, V) + c];
                        dS[a * V + c] = (real)s;
                    }
            }
            if (dS0)
                for (size_t i = 0; i < sz; i++) dS0[((size_t)b * H + h) * sz + i] += dS[i];
            free(Sn);
            free(dS);
        }
    }
}
