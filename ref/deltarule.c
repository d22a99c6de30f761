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
 * S0 / dS0 / S_final / dS_final NULL, and any T >= 1. Every backward accumulates (+=). Work is
 * parallel over (b, h) with per-thread scratch; each (b, h) writes only its own slices, so results
 * do not depend on the thread count. Dot products accumulate in double.
 */
#include "ref_real.h"

/* ---- small dense helpers on row-major matrices with leading dimensions ----------------------- */

/* c[m,n] = alpha * op(a) op(b) (+ c if acc). op(a) is [m,p]: ta = 'n' reads a as [m,p], ta = 't'
 * reads a as [p,m] and transposes it; same for b ([p,n]). lda, ldb, ldc are row strides. */
static void mm(real *c, int ldc, const real *a, int lda, char ta, const real *b, int ldb, char tb,
               int m, int n, int p, double alpha, int acc) {
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            double s = 0.0;
            for (int l = 0; l < p; l++) {
                double x = ta == 't' ? a[(size_t)l * lda + i] : a[(size_t)i * lda + l];
                double y = tb == 't' ? b[(size_t)j * ldb + l] : b[(size_t)l * ldb + j];
                s += x * y;
            }
            real *cij = &c[(size_t)i * ldc + j];
            *cij = (real)(acc ? *cij + alpha * s : alpha * s);
        }
    }
}

/* Zero the square n x n matrix x (stride n) above the diagonal (keep_diag) or on and above it. */
static void tril(real *x, int n, int keep_diag) {
    for (int i = 0; i < n; i++)
        for (int j = keep_diag ? i + 1 : i; j < n; j++) x[i * n + j] = 0;
}

/* tm = (I + a)^{-1} for a strictly lower triangular n x n: forward substitution on the columns of
 * the identity, row by row: tm_i = e_i - sum_{j<i} a_ij tm_j. The result is unit lower triangular. */
static void unit_lower_inverse(real *tm, const real *a, int n) {
    for (int i = 0; i < n; i++) {
        for (int c = 0; c < n; c++) {
            double s = (c == i) ? 1.0 : 0.0;
            for (int j = c; j < i; j++) s -= (double)a[i * n + j] * tm[j * n + c];
            tm[i * n + c] = (real)s;
        }
    }
}

/* ---- the recurrence ---------------------------------------------------------------------------- */

/* One token for one head: u = v - S^T k, S += beta k u^T, o = scale S^T q. u [V] is scratch (and
 * holds the correction afterwards). */
static void recurrent_step(real *S, real *u, real *o, const real *q, const real *k, const real *v,
                           real beta, int K, int V, real scale) {
    for (int c = 0; c < V; c++) {
        double s = 0.0;
        for (int a = 0; a < K; a++) s += (double)S[a * V + c] * k[a];
        u[c] = (real)(v[c] - s);
    }
    for (int a = 0; a < K; a++)
        for (int c = 0; c < V; c++) S[a * V + c] += beta * k[a] * u[c];
    for (int c = 0; c < V; c++) {
        double s = 0.0;
        for (int a = 0; a < K; a++) s += (double)S[a * V + c] * q[a];
        o[c] = (real)(scale * s);
    }
}

void RF(ref_delta_rule_recurrent_forward)(real *o, real *S_final, const real *q, const real *k,
                                          const real *v, const real *beta, const real *S0,
                                          int B, int T, int H, int K, int V, real scale) {
    const size_t KV = (size_t)K * V;
#pragma omp parallel
    {
        real *S = malloc(KV * sizeof(real)), *u = malloc((size_t)V * sizeof(real));
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            const int b = bh / H, h = bh % H;
            if (S0) memcpy(S, S0 + bh * KV, KV * sizeof(real));
            else memset(S, 0, KV * sizeof(real));
            for (int t = 0; t < T; t++) {
                const size_t row = (size_t)(b * T + t) * H + h;
                recurrent_step(S, u, o + row * V, q + row * K, k + row * K, v + row * V, beta[row], K, V, scale);
            }
            if (S_final) memcpy(S_final + bh * KV, S, KV * sizeof(real));
        }
        free(S);
        free(u);
    }
}

void RF(ref_delta_rule_recurrent_backward)(real *dq, real *dk, real *dv, real *dbeta, real *dS0,
                                           const real *dout, const real *dS_final, const real *q,
                                           const real *k, const real *v, const real *beta, const real *S0,
                                           int B, int T, int H, int K, int V, real scale) {
    const size_t KV = (size_t)K * V;
#pragma omp parallel
    {
        real *Ss = malloc((size_t)(T + 1) * KV * sizeof(real));   /* S_0 .. S_T */
        real *dS = malloc(KV * sizeof(real));
        real *u = malloc((size_t)V * sizeof(real)), *du = malloc((size_t)V * sizeof(real));
        real *otmp = malloc((size_t)V * sizeof(real));
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            const int b = bh / H, h = bh % H;
            /* forward again, keeping every state */
            if (S0) memcpy(Ss, S0 + bh * KV, KV * sizeof(real));
            else memset(Ss, 0, KV * sizeof(real));
            for (int t = 0; t < T; t++) {
                const size_t row = (size_t)(b * T + t) * H + h;
                memcpy(Ss + (t + 1) * KV, Ss + t * KV, KV * sizeof(real));
                recurrent_step(Ss + (t + 1) * KV, u, otmp, q + row * K, k + row * K, v + row * V,
                               beta[row], K, V, scale);
            }
            if (dS_final) memcpy(dS, dS_final + bh * KV, KV * sizeof(real));
            else memset(dS, 0, KV * sizeof(real));
            for (int t = T - 1; t >= 0; t--) {
                const size_t row = (size_t)(b * T + t) * H + h;
                const real *St = Ss + (t + 1) * KV, *Sp = Ss + t * KV;
                const real *qt = q + row * K, *kt = k + row * K, *vt = v + row * V, *dot = dout + row * V;
                const real bt = beta[row];
                real *dqt = dq + row * K, *dkt = dk + row * K, *dvt = dv + row * V;
                /* o_t = scale S_t^T q_t */
                for (int a = 0; a < K; a++) {
                    double s = 0.0;
                    for (int c = 0; c < V; c++) s += (double)St[a * V + c] * dot[c];
                    dqt[a] += (real)(scale * s);
                }
                for (int a = 0; a < K; a++)
                    for (int c = 0; c < V; c++) dS[a * V + c] += scale * qt[a] * dot[c];
                /* u_t = v_t - S_{t-1}^T k_t, recomputed */
                for (int c = 0; c < V; c++) {
                    double s = 0.0;
                    for (int a = 0; a < K; a++) s += (double)Sp[a * V + c] * kt[a];
                    u[c] = (real)(vt[c] - s);
                }
                /* S_t = S_{t-1} + beta_t k_t u_t^T */
                for (int c = 0; c < V; c++) {
                    double s = 0.0;
                    for (int a = 0; a < K; a++) s += (double)dS[a * V + c] * kt[a];
                    du[c] = (real)(bt * s);
                }
                double db = 0.0;
                for (int a = 0; a < K; a++) {
                    double s = 0.0;
                    for (int c = 0; c < V; c++) s += (double)dS[a * V + c] * u[c];
                    dkt[a] += (real)(bt * s);
                    db += kt[a] * s;
                }
                dbeta[row] += (real)db;
                /* through u_t: to v_t, k_t and S_{t-1} */
                for (int c = 0; c < V; c++) dvt[c] += du[c];
                for (int a = 0; a < K; a++) {
                    double s = 0.0;
                    for (int c = 0; c < V; c++) s += (double)Sp[a * V + c] * du[c];
                    dkt[a] -= (real)s;
                }
                for (int a = 0; a < K; a++)
                    for (int c = 0; c < V; c++) dS[a * V + c] -= kt[a] * du[c];
            }
            if (dS0)
                for (size_t i = 0; i < KV; i++) dS0[bh * KV + i] += dS[i];
        }
        free(Ss);
        free(dS);
        free(u);
        free(du);
        free(otmp);
    }
}

/* ---- the chunkwise WY form ---------------------------------------------------------------------- */

/* Per-thread scratch for one chunk of up to C rows. */
typedef struct {
    real *Kb, *Vb, *A, *Tm, *W, *U, *M;            /* forward: [C,K] [C,V] [C,C] [C,C] [C,K] [C,V] [C,C] */
    real *dU, *dM, *dW, *dTm, *dKb, *dVb, *dA, *G; /* backward: [C,V] [C,C] [C,K] [C,C] [C,K] [C,V] [C,C] [C,C] */
    real *S, *dS, *dSn;                            /* states [K,V] */
} ChunkScratch;

static void scratch_alloc(ChunkScratch *s, int C, int K, int V, int backward) {
    const size_t CC = (size_t)C * C, CK = (size_t)C * K, CV = (size_t)C * V, KV = (size_t)K * V;
    memset(s, 0, sizeof *s);
    s->Kb = malloc(CK * sizeof(real)); s->Vb = malloc(CV * sizeof(real));
    s->A = malloc(CC * sizeof(real));  s->Tm = malloc(CC * sizeof(real));
    s->W = malloc(CK * sizeof(real));  s->U = malloc(CV * sizeof(real));
    s->M = malloc(CC * sizeof(real));  s->S = malloc(KV * sizeof(real));
    if (backward) {
        s->dU = malloc(CV * sizeof(real));  s->dM = malloc(CC * sizeof(real));
        s->dW = malloc(CK * sizeof(real));  s->dTm = malloc(CC * sizeof(real));
        s->dKb = malloc(CK * sizeof(real)); s->dVb = malloc(CV * sizeof(real));
        s->dA = malloc(CC * sizeof(real));  s->G = malloc(CC * sizeof(real));
        s->dS = malloc(KV * sizeof(real));  s->dSn = malloc(KV * sizeof(real));
    }
}

static void scratch_free(ChunkScratch *s) {
    real *p[] = {s->Kb, s->Vb, s->A, s->Tm, s->W, s->U, s->M, s->dU, s->dM, s->dW, s->dTm,
                 s->dKb, s->dVb, s->dA, s->G, s->S, s->dS, s->dSn};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
}

/* One chunk of L rows, given the incoming state s->S: builds Kb, Vb, A, Tm, W, U' (in s->U) and
 * M = tril(Q K^T). kc/qc rows have stride ldk, vc rows ldv, bc stride H. */
static void chunk_factors(ChunkScratch *s, const real *qc, const real *kc, const real *vc, const real *bc,
                          int L, int ldk, int ldv, int H, int K, int V) {
    for (int i = 0; i < L; i++) {
        const real bi = bc[(size_t)i * H];
        for (int a = 0; a < K; a++) s->Kb[i * K + a] = bi * kc[(size_t)i * ldk + a];
        for (int c = 0; c < V; c++) s->Vb[i * V + c] = bi * vc[(size_t)i * ldv + c];
    }
    mm(s->A, L, s->Kb, K, 'n', kc, ldk, 't', L, L, K, 1.0, 0);    /* A = strictly-lower(Kb K^T) */
    tril(s->A, L, 0);
    unit_lower_inverse(s->Tm, s->A, L);                           /* Tm = (I + A)^{-1} */
    mm(s->W, K, s->Tm, L, 'n', s->Kb, K, 'n', L, K, L, 1.0, 0);   /* W = Tm Kb */
    mm(s->U, V, s->Tm, L, 'n', s->Vb, V, 'n', L, V, L, 1.0, 0);   /* U = Tm Vb */
    mm(s->U, V, s->W, K, 'n', s->S, V, 'n', L, V, K, -1.0, 1);    /* U' = U - W S_n */
    mm(s->M, L, qc, ldk, 'n', kc, ldk, 't', L, L, K, 1.0, 0);     /* M = tril(Q K^T) */
    tril(s->M, L, 1);
}

void RF(ref_delta_rule_chunk_forward)(real *o, real *S_final, const real *q, const real *k,
                                      const real *v, const real *beta, const real *S0,
                                      int B, int T, int H, int K, int V, real scale, int C) {
    const size_t KV = (size_t)K * V;
    const int ldk = H * K, ldv = H * V;
#pragma omp parallel
    {
        ChunkScratch s;
        scratch_alloc(&s, C, K, V, 0);
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            const int b = bh / H, h = bh % H;
            if (S0) memcpy(s.S, S0 + bh * KV, KV * sizeof(real));
            else memset(s.S, 0, KV * sizeof(real));
            for (int t0 = 0; t0 < T; t0 += C) {
                const int L = T - t0 < C ? T - t0 : C;
                const size_t row = (size_t)(b * T + t0) * H + h;
                const real *qc = q + row * K, *kc = k + row * K, *vc = v + row * V;
                real *oc = o + row * V;
                chunk_factors(&s, qc, kc, vc, beta + row, L, ldk, ldv, H, K, V);
                mm(oc, ldv, qc, ldk, 'n', s.S, V, 'n', L, V, K, scale, 0);    /* O = scale Q S_n */
                mm(oc, ldv, s.M, L, 'n', s.U, V, 'n', L, V, L, scale, 1);     /*  + scale M U' */
                mm(s.S, V, kc, ldk, 't', s.U, V, 'n', K, V, L, 1.0, 1);       /* S += K^T U' */
            }
            if (S_final) memcpy(S_final + bh * KV, s.S, KV * sizeof(real));
        }
        scratch_free(&s);
    }
}

void RF(ref_delta_rule_chunk_backward)(real *dq, real *dk, real *dv, real *dbeta, real *dS0,
                                       const real *dout, const real *dS_final, const real *q,
                                       const real *k, const real *v, const real *beta, const real *S0,
                                       int B, int T, int H, int K, int V, real scale, int C) {
    const size_t KV = (size_t)K * V;
    const int ldk = H * K, ldv = H * V, NC = (T + C - 1) / C;
#pragma omp parallel
    {
        ChunkScratch s;
        scratch_alloc(&s, C, K, V, 1);
        real *Sn = malloc((size_t)NC * KV * sizeof(real));   /* incoming state of every chunk */
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            const int b = bh / H, h = bh % H;
            /* forward over chunks, keeping only the states S_0 .. S_{NC-1} */
            if (S0) memcpy(s.S, S0 + bh * KV, KV * sizeof(real));
            else memset(s.S, 0, KV * sizeof(real));
            for (int n = 0; n < NC; n++) {
                const int t0 = n * C, L = T - t0 < C ? T - t0 : C;
                const size_t row = (size_t)(b * T + t0) * H + h;
                const real *qc = q + row * K, *kc = k + row * K, *vc = v + row * V;
                memcpy(Sn + n * KV, s.S, KV * sizeof(real));
                chunk_factors(&s, qc, kc, vc, beta + row, L, ldk, ldv, H, K, V);
                mm(s.S, V, kc, ldk, 't', s.U, V, 'n', K, V, L, 1.0, 1);
            }
            /* backward over chunks in reverse, dS = dL/dS_{n+1} */
            if (dS_final) memcpy(s.dS, dS_final + bh * KV, KV * sizeof(real));
            else memset(s.dS, 0, KV * sizeof(real));
            for (int n = NC - 1; n >= 0; n--) {
                const int t0 = n * C, L = T - t0 < C ? T - t0 : C;
                const size_t row = (size_t)(b * T + t0) * H + h;
                const real *qc = q + row * K, *kc = k + row * K, *vc = v + row * V, *bc = beta + row;
                const real *doc = dout + row * V;
                real *dqc = dq + row * K, *dkc = dk + row * K, *dvc = dv + row * V, *dbc = dbeta + row;
                memcpy(s.S, Sn + n * KV, KV * sizeof(real));
                chunk_factors(&s, qc, kc, vc, bc, L, ldk, ldv, H, K, V);
                /* O = scale (Q S_n + M U') and S_{n+1} = S_n + K^T U' */
                mm(s.dU, V, s.M, L, 't', doc, ldv, 'n', L, V, L, scale, 0);      /* dU' = scale M^T dO */
                mm(s.dU, V, kc, ldk, 'n', s.dS, V, 'n', L, V, K, 1.0, 1);        /*     + K dS */
                mm(s.dM, L, doc, ldv, 'n', s.U, V, 't', L, L, V, scale, 0);      /* dM = tril(scale dO U'^T) */
                tril(s.dM, L, 1);
                mm(dqc, ldk, s.dM, L, 'n', kc, ldk, 'n', L, K, L, 1.0, 1);       /* dQ += dM K */
                mm(dqc, ldk, doc, ldv, 'n', s.S, V, 't', L, K, V, scale, 1);     /*     + scale dO S_n^T */
                mm(dkc, ldk, s.dM, L, 't', qc, ldk, 'n', L, K, L, 1.0, 1);       /* dK += dM^T Q */
                mm(dkc, ldk, s.U, V, 'n', s.dS, V, 't', L, K, V, 1.0, 1);        /*     + U' dS^T */
                memcpy(s.dSn, s.dS, KV * sizeof(real));                          /* dS_n = dS */
                mm(s.dSn, V, qc, ldk, 't', doc, ldv, 'n', K, V, L, scale, 1);    /*   + scale Q^T dO */
                mm(s.dSn, V, s.W, K, 't', s.dU, V, 'n', K, V, L, -1.0, 1);       /*   - W^T dU' */
                /* U' = U - W S_n */
                mm(s.dW, K, s.dU, V, 'n', s.S, V, 't', L, K, V, -1.0, 0);        /* dW = -dU' S_n^T */
                /* W = Tm Kb, U = Tm Vb */
                mm(s.dTm, L, s.dW, K, 'n', s.Kb, K, 't', L, L, K, 1.0, 0);       /* dTm = dW Kb^T */
                mm(s.dTm, L, s.dU, V, 'n', s.Vb, V, 't', L, L, V, 1.0, 1);       /*     + dU Vb^T */
                mm(s.dKb, K, s.Tm, L, 't', s.dW, K, 'n', L, K, L, 1.0, 0);       /* dKb = Tm^T dW */
                mm(s.dVb, V, s.Tm, L, 't', s.dU, V, 'n', L, V, L, 1.0, 0);       /* dVb = Tm^T dU */
                /* Kb = diag(beta) K, Vb = diag(beta) V */
                for (int i = 0; i < L; i++) {
                    const real bi = bc[(size_t)i * H];
                    double db = 0.0;
                    for (int a = 0; a < K; a++) {
                        dkc[(size_t)i * ldk + a] += bi * s.dKb[i * K + a];
                        db += (double)s.dKb[i * K + a] * kc[(size_t)i * ldk + a];
                    }
                    for (int c = 0; c < V; c++) {
                        dvc[(size_t)i * ldv + c] += bi * s.dVb[i * V + c];
                        db += (double)s.dVb[i * V + c] * vc[(size_t)i * ldv + c];
                    }
                    dbc[(size_t)i * H] += (real)db;
                }
                /* Tm = (I + A)^{-1}: dA = strictly-lower(-Tm^T dTm Tm^T) */
                mm(s.G, L, s.Tm, L, 't', s.dTm, L, 'n', L, L, L, 1.0, 0);        /* G = Tm^T dTm */
                mm(s.dA, L, s.G, L, 'n', s.Tm, L, 't', L, L, L, -1.0, 0);        /* dA = -G Tm^T */
                tril(s.dA, L, 0);
                /* A = strictly-lower(diag(beta) K K^T) */
                mm(s.G, L, kc, ldk, 'n', kc, ldk, 't', L, L, K, 1.0, 0);         /* G = K K^T */
                for (int i = 0; i < L; i++) {
                    double db = 0.0;
                    for (int j = 0; j < i; j++) db += (double)s.dA[i * L + j] * s.G[i * L + j];
                    dbc[(size_t)i * H] += (real)db;
                    const real bi = bc[(size_t)i * H];
                    for (int j = 0; j < i; j++) s.dA[i * L + j] *= bi;           /* D = diag(beta) dA */
                }
                /* diag(beta) dA K + dA^T Kb = D K + D^T K, since dA^T diag(beta) = D^T */
                mm(dkc, ldk, s.dA, L, 'n', kc, ldk, 'n', L, K, L, 1.0, 1);       /* dK += D K */
                mm(dkc, ldk, s.dA, L, 't', kc, ldk, 'n', L, K, L, 1.0, 1);       /*     + D^T K */
                memcpy(s.dS, s.dSn, KV * sizeof(real));
            }
            if (dS0)
                for (size_t i = 0; i < KV; i++) dS0[bh * KV + i] += s.dS[i];
        }
        free(Sn);
        scratch_free(&s);
    }
}
