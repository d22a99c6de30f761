/*
 * gateddelta.c -- the gated delta rule (Gated DeltaNet's mixer, the 'N' layer) on the CPU, two
 * ways like ref/deltarule.c: the token recurrence (what infer.c runs) and the chunkwise-parallel
 * gated WY form (what the GPU trainer runs), forward and backward. tests/test_gateddelta.c checks
 * them against each other, against the plain delta rule at g = 0, and against finite differences.
 *
 * Per batch element b and head h (row vectors, state S is K x V, S[a][c]: key a, value c), with a
 * log decay g_t <= 0 and alpha_t = exp(g_t):
 *
 *     Sbar_t = alpha_t S_{t-1}                  (the memory decays first)
 *     u_t    = v_t - Sbar_t^T k_t               (then the delta rule corrects it)
 *     S_t    = Sbar_t + beta_t k_t u_t^T
 *     o_t    = scale S_t^T q_t
 *
 * RECURRENT BACKWARD. Walk t = T-1 .. 0 carrying dS = dL/dS_t; the delta rule's steps (see
 * ref/deltarule.c) with Sbar_t in place of S_{t-1} leave dS = dL/dSbar_t; then
 *     dg_t += <Sbar_t, dS>    (d Sbar / d g = alpha S_{t-1} = Sbar)
 *     dS   <- alpha_t dS      (= dL/dS_{t-1})
 *
 * CHUNKWISE FORWARD (the gated WY form). Cut time into chunks of C rows; inside a chunk (rows
 * i = 0..L-1) let G_i = g_0 + .. + g_i be the cumulative log decay from the chunk's start,
 * gam_i = exp(G_i), and E_ij = exp(G_i - G_j) for j <= i (the decay from row j to row i; always
 * <= 1 when g <= 0, so nothing overflows however strong the decay: only differences of G are ever
 * exponentiated, and gam_i itself is such a difference). With S_n the state entering the chunk,
 * unrolling the recurrence gives the state after row i as
 *     S_i = gam_i S_n + sum_{j<=i} E_ij k_j u'_j^T,        u'_j = beta_j u_j,
 * so the corrections satisfy
 *     u'_i = beta_i (v_i - gam_i S_n^T k_i - sum_{j<i} E_ij (k_i . k_j) u'_j),
 * i.e. (I + A) U' = diag(beta) V - diag(beta gam) K S_n with the decay-weighted
 *     A = strictly-lower(diag(beta) (K K^T o E))            (o: elementwise product).
 * I + A is unit lower triangular: Tm = (I + A)^{-1} by forward substitution, and the WY factors
 *     W = Tm diag(beta gam) K,   U = Tm diag(beta) V,   U' = U - W S_n
 * do not depend on the state. Then, with M = tril(Q K^T o E) (diagonal kept),
 *     O       = scale (diag(gam) Q S_n + M U')
 *     S_{n+1} = gam_{L-1} S_n + Kd^T U',    Kd_j = exp(G_{L-1} - G_j) k_j
 * (the state decays by the whole chunk's gam_{L-1} between chunks). At g = 0 every E, gam is 1 and
 * this is ref/deltarule.c's WY form.
 *
 * CHUNKWISE BACKWARD. As in ref/deltarule.c a forward pass first stores the incoming state S_n of
 * every chunk; then over chunks in reverse, dS = dL/dS_{n+1}, dO the chunk's rows of do, and with
 * Qg = diag(gam) Q, Kbg = diag(beta gam) K, Vb = diag(beta) V:
 *     dU'  = scale M^T dO + Kd dS
 *     dM   = tril(scale dO U'^T)
 *     dQg  = scale dO S_n^T            -> dQ_i += gam_i dQg_i,   dgam_i += q_i . dQg_i
 *     dS_n = gam_{L-1} dS + scale Qg^T dO - W^T dU'
 *     dgam_{L-1} += <S_n, dS>
 *     dKd  = U' dS^T                   -> dK_j += e_j dKd_j, with e_j = exp(G_{L-1} - G_j) and
 *                                         r_j = e_j (k_j . dKd_j): dG_{L-1} += r_j, dG_j -= r_j
 *     dW   = -dU' S_n^T,   dU = dU'
 *     dTm  = dW Kbg^T + dU Vb^T,   dKbg = Tm^T dW,   dVb = Tm^T dU
 *     dK_i += beta_i gam_i dKbg_i,  dbeta_i += gam_i (dKbg_i . k_i),  dgam_i += beta_i (dKbg_i . k_i)
 *     dV_i += beta_i dVb_i,         dbeta_i += dVb_i . v_i
 *     dA   = strictly-lower(-Tm^T dTm Tm^T)
 * through A_ij = beta_i (k_i . k_j) E_ij (j < i), with Da = diag(beta) (dA o E):
 *     dbeta_i += sum_j dA_ij (k_i . k_j) E_ij,   dK += Da K + Da^T K,
 *     dG_i += sum_j dA_ij A_ij,   dG_j -= sum_i dA_ij A_ij          (d E_ij = E_ij (dG_i - dG_j))
 * through M_ij = (q_i . k_j) E_ij (j <= i), with Dm = dM o E:
 *     dQ += Dm K,   dK += Dm^T Q,   dG_i += sum_j dM_ij M_ij,   dG_j -= sum_i dM_ij M_ij
 * (the diagonal terms, j = i, and r_{L-1} add and subtract the same number from one dG_i: the code
 * skips them, since (a + x) - x loses a when a is a strongly decayed, tiny gradient)
 * and finally gam_i = exp(G_i): dG_i += gam_i dgam_i, and G_i = sum_{j<=i} g_j: dg_j += sum_{i>=j} dG_i
 * (a reverse cumulative sum inside the chunk). dS <- dS_n for the previous chunk; dS0 += dS after
 * chunk 0.
 *
 * Conventions as ref/deltarule.c: S0 == S_final allowed (the state is read into a work buffer
 * first), S0 / dS0 / S_final / dS_final may be NULL, any T >= 1, every backward accumulates (+=),
 * parallel over (b, h) with per-thread scratch (each (b, h) writes only its own slices, so results
 * do not depend on the thread count), dot products in double. g == NULL means no decay at all
 * (alpha_t = 1 exactly, dg untouched and may be NULL): ref/deltarule.c's functions are these.
 */
#include "ref_real.h"

/* ---- small dense helpers on row-major matrices with leading dimensions ----------------------- */

/* c[m,n] = alpha * op(a) op(b) (+ c if acc); op(x) = x ('n') or x^T ('t'), op(a) [m,p], op(b) [p,n]. */
static void gmm(real *c, int ldc, const real *a, int lda, char ta, const real *b, int ldb, char tb,
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

/* tm = (I + a)^{-1} for a strictly lower triangular n x n (forward substitution, row by row). */
static void unit_lower_inv(real *tm, const real *a, int n) {
    for (int i = 0; i < n; i++) {
        for (int c = 0; c < n; c++) {
            double s = (c == i) ? 1.0 : 0.0;
            for (int j = c; j < i; j++) s -= (double)a[i * n + j] * tm[j * n + c];
            tm[i * n + c] = (real)s;
        }
    }
}

/* dst = the state of (b, h) = bh in src [B,H,K,V], or zero without src. */
static void state_load(real *dst, const real *src, int bh, size_t KV) {
    if (src) memcpy(dst, src + bh * KV, KV * sizeof(real));
    else memset(dst, 0, KV * sizeof(real));
}

/* ---- the recurrence ---------------------------------------------------------------------------- */

/* One token for one head: S *= alpha, u = v - S^T k, S += beta k u^T, o = scale S^T q.
 * u [V] is scratch. At alpha == 1 (g == NULL: the plain delta rule) S is left alone. */
static void gated_step(real *S, real *u, real *o, const real *q, const real *k, const real *v,
                       real beta, real alpha, int K, int V, real scale) {
    if (alpha != 1)
        for (int i = 0; i < K * V; i++) S[i] *= alpha;
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

void RF(ref_gated_delta_rule_recurrent_forward)(real *o, real *S_final, const real *q, const real *k,
                                                const real *v, const real *beta, const real *g,
                                                const real *S0, int B, int T, int H, int K, int V, real scale) {
    const size_t KV = (size_t)K * V;
#pragma omp parallel
    {
        real *S = malloc(KV * sizeof(real)), *u = malloc((size_t)V * sizeof(real));
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            const int b = bh / H, h = bh % H;
            state_load(S, S0, bh, KV);
            for (int t = 0; t < T; t++) {
                const size_t row = (size_t)(b * T + t) * H + h;
                gated_step(S, u, o + row * V, q + row * K, k + row * K, v + row * V, beta[row],
                           g ? (real)exp((double)g[row]) : 1, K, V, scale);
            }
            if (S_final) memcpy(S_final + bh * KV, S, KV * sizeof(real));
        }
        free(S);
        free(u);
    }
}

void RF(ref_gated_delta_rule_recurrent_backward)(real *dq, real *dk, real *dv, real *dbeta, real *dg,
                                                 real *dS0, const real *dout, const real *dS_final,
                                                 const real *q, const real *k, const real *v,
                                                 const real *beta, const real *g, const real *S0,
                                                 int B, int T, int H, int K, int V, real scale) {
    const size_t KV = (size_t)K * V;
#pragma omp parallel
    {
        real *Ss = malloc((size_t)(T + 1) * KV * sizeof(real));   /* S_0 .. S_T */
        real *Sb = malloc(KV * sizeof(real)), *dS = malloc(KV * sizeof(real));
        real *u = malloc((size_t)V * sizeof(real)), *du = malloc((size_t)V * sizeof(real));
        real *otmp = malloc((size_t)V * sizeof(real));
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            const int b = bh / H, h = bh % H;
            state_load(Ss, S0, bh, KV);
            for (int t = 0; t < T; t++) {
                const size_t row = (size_t)(b * T + t) * H + h;
                memcpy(Ss + (t + 1) * KV, Ss + t * KV, KV * sizeof(real));
                gated_step(Ss + (t + 1) * KV, u, otmp, q + row * K, k + row * K, v + row * V, beta[row],
                           g ? (real)exp((double)g[row]) : 1, K, V, scale);
            }
            state_load(dS, dS_final, bh, KV);
            for (int t = T - 1; t >= 0; t--) {
                const size_t row = (size_t)(b * T + t) * H + h;
                const real *St = Ss + (t + 1) * KV, *Sp = Ss + t * KV;
                const real *qt = q + row * K, *kt = k + row * K, *vt = v + row * V, *dot = dout + row * V;
                const real bt = beta[row], at = g ? (real)exp((double)g[row]) : 1;
                real *dqt = dq + row * K, *dkt = dk + row * K, *dvt = dv + row * V;
                for (size_t i = 0; i < KV; i++) Sb[i] = Sp[i] * at;              /* Sbar_t */
                /* o_t = scale S_t^T q_t */
                for (int a = 0; a < K; a++) {
                    double s = 0.0;
                    for (int c = 0; c < V; c++) s += (double)St[a * V + c] * dot[c];
                    dqt[a] += (real)(scale * s);
                }
                for (int a = 0; a < K; a++)
                    for (int c = 0; c < V; c++) dS[a * V + c] += scale * qt[a] * dot[c];
                /* u_t = v_t - Sbar_t^T k_t */
                for (int c = 0; c < V; c++) {
                    double s = 0.0;
                    for (int a = 0; a < K; a++) s += (double)Sb[a * V + c] * kt[a];
                    u[c] = (real)(vt[c] - s);
                }
                /* S_t = Sbar_t + beta_t k_t u_t^T */
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
                /* through u_t: to v_t, k_t and Sbar_t */
                for (int c = 0; c < V; c++) dvt[c] += du[c];
                for (int a = 0; a < K; a++) {
                    double s = 0.0;
                    for (int c = 0; c < V; c++) s += (double)Sb[a * V + c] * du[c];
                    dkt[a] -= (real)s;
                }
                for (int a = 0; a < K; a++)
                    for (int c = 0; c < V; c++) dS[a * V + c] -= kt[a] * du[c];
                /* Sbar_t = alpha_t S_{t-1}, alpha_t = exp(g_t) (g == NULL: Sbar_t = S_{t-1}) */
                if (g) {
                    double dgt = 0.0;
                    for (size_t i = 0; i < KV; i++) dgt += (double)Sb[i] * dS[i];
                    dg[row] += (real)dgt;
                    for (size_t i = 0; i < KV; i++) dS[i] *= at;
                }
            }
            if (dS0)
                for (size_t i = 0; i < KV; i++) dS0[bh * KV + i] += dS[i];
        }
        free(Ss); free(Sb); free(dS); free(u); free(du); free(otmp);
    }
}

/* ---- the chunkwise gated WY form ---------------------------------------------------------------- */

/* Per-thread scratch for one chunk of up to C rows. */
typedef struct {
    double *G;                                     /* [C] cumulative log decay */
    real *gam, *e;                                 /* [C] exp(G_i), exp(G_{L-1} - G_i) */
    real *KK, *A, *Tm, *M;                         /* [C,C] K K^T, A, (I + A)^{-1}, tril(Q K^T o E) */
    real *Kbg, *Vb, *W, *U, *Qg, *Kd;              /* [C,K] [C,V] [C,K] [C,V] (U') [C,K] [C,K] */
    real *dU, *dM, *dW, *dTm, *dKbg, *dVb, *dA, *X; /* backward: [C,V] [C,C] [C,K] [C,C] [C,K] [C,V] [C,C] [C,C] */
    real *dQg, *dKd;                               /* [C,K] */
    double *dG, *dgam;                             /* [C] */
    real *S, *dS, *dSn;                            /* states [K,V] */
} GChunk;

static void gchunk_alloc(GChunk *s, int C, int K, int V, int backward) {
    const size_t CC = (size_t)C * C, CK = (size_t)C * K, CV = (size_t)C * V, KV = (size_t)K * V;
    memset(s, 0, sizeof *s);
    s->G = malloc((size_t)C * sizeof(double));
    s->gam = malloc((size_t)C * sizeof(real)); s->e = malloc((size_t)C * sizeof(real));
    s->KK = malloc(CC * sizeof(real)); s->A = malloc(CC * sizeof(real));
    s->Tm = malloc(CC * sizeof(real)); s->M = malloc(CC * sizeof(real));
    s->Kbg = malloc(CK * sizeof(real)); s->Vb = malloc(CV * sizeof(real));
    s->W = malloc(CK * sizeof(real)); s->U = malloc(CV * sizeof(real));
    s->Qg = malloc(CK * sizeof(real)); s->Kd = malloc(CK * sizeof(real));
    s->S = malloc(KV * sizeof(real));
    if (backward) {
        s->dU = malloc(CV * sizeof(real)); s->dM = malloc(CC * sizeof(real));
        s->dW = malloc(CK * sizeof(real)); s->dTm = malloc(CC * sizeof(real));
        s->dKbg = malloc(CK * sizeof(real)); s->dVb = malloc(CV * sizeof(real));
        s->dA = malloc(CC * sizeof(real)); s->X = malloc(CC * sizeof(real));
        s->dQg = malloc(CK * sizeof(real)); s->dKd = malloc(CK * sizeof(real));
        s->dG = malloc((size_t)C * sizeof(double)); s->dgam = malloc((size_t)C * sizeof(double));
        s->dS = malloc(KV * sizeof(real)); s->dSn = malloc(KV * sizeof(real));
    }
}

static void gchunk_free(GChunk *s) {
    void *p[] = {s->G, s->gam, s->e, s->KK, s->A, s->Tm, s->M, s->Kbg, s->Vb, s->W, s->U, s->Qg, s->Kd,
                 s->dU, s->dM, s->dW, s->dTm, s->dKbg, s->dVb, s->dA, s->X, s->dQg, s->dKd, s->dG,
                 s->dgam, s->S, s->dS, s->dSn};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
}

/* E_ij = exp(G_i - G_j) (j <= i) */
static inline double decay_between(const GChunk *s, int i, int j) { return exp(s->G[i] - s->G[j]); }

/* One chunk of L rows, given the incoming state s->S: G, gam, e, KK, A, Tm, Kbg, Vb, W, U' (in
 * s->U), M, Qg, Kd. Rows of qc/kc have stride ldk, of vc ldv; bc and gc stride H. */
static void gchunk_factors(GChunk *s, const real *qc, const real *kc, const real *vc, const real *bc,
                           const real *gc, int L, int ldk, int ldv, int H, int K, int V) {
    double acc = 0.0;
    for (int i = 0; i < L; i++) { acc += gc ? gc[(size_t)i * H] : 0.0; s->G[i] = acc; }
    for (int i = 0; i < L; i++) {
        const real bi = bc[(size_t)i * H];
        s->gam[i] = (real)exp(s->G[i]);
        s->e[i] = (real)exp(s->G[L - 1] - s->G[i]);
        for (int a = 0; a < K; a++) {
            const real x = kc[(size_t)i * ldk + a];
            s->Kbg[i * K + a] = bi * s->gam[i] * x;
            s->Qg[i * K + a] = s->gam[i] * qc[(size_t)i * ldk + a];
            s->Kd[i * K + a] = s->e[i] * x;
        }
        for (int c = 0; c < V; c++) s->Vb[i * V + c] = bi * vc[(size_t)i * ldv + c];
    }
    gmm(s->KK, L, kc, ldk, 'n', kc, ldk, 't', L, L, K, 1.0, 0);      /* K K^T */
    gmm(s->M, L, qc, ldk, 'n', kc, ldk, 't', L, L, K, 1.0, 0);       /* Q K^T */
    for (int i = 0; i < L; i++) {
        const real bi = bc[(size_t)i * H];
        for (int j = 0; j < L; j++) {
            const double E = j <= i ? decay_between(s, i, j) : 0.0;
            s->A[i * L + j] = j < i ? (real)(bi * s->KK[i * L + j] * E) : 0;  /* strictly lower */
            s->M[i * L + j] = j <= i ? (real)(s->M[i * L + j] * E) : 0;       /* diagonal kept */
        }
    }
    unit_lower_inv(s->Tm, s->A, L);                                  /* Tm = (I + A)^{-1} */
    gmm(s->W, K, s->Tm, L, 'n', s->Kbg, K, 'n', L, K, L, 1.0, 0);    /* W = Tm Kbg */
    gmm(s->U, V, s->Tm, L, 'n', s->Vb, V, 'n', L, V, L, 1.0, 0);     /* U = Tm Vb */
    gmm(s->U, V, s->W, K, 'n', s->S, V, 'n', L, V, K, -1.0, 1);      /* U' = U - W S_n */
}

void RF(ref_gated_delta_rule_chunk_forward)(real *o, real *S_final, const real *q, const real *k,
                                            const real *v, const real *beta, const real *g,
                                            const real *S0, int B, int T, int H, int K, int V,
                                            real scale, int C) {
    const size_t KV = (size_t)K * V;
    const int ldk = H * K, ldv = H * V;
#pragma omp parallel
    {
        GChunk s;
        gchunk_alloc(&s, C, K, V, 0);
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            const int b = bh / H, h = bh % H;
            state_load(s.S, S0, bh, KV);
            for (int t0 = 0; t0 < T; t0 += C) {
                const int L = T - t0 < C ? T - t0 : C;
                const size_t row = (size_t)(b * T + t0) * H + h;
                const real *qc = q + row * K, *kc = k + row * K, *vc = v + row * V;
                real *oc = o + row * V;
                gchunk_factors(&s, qc, kc, vc, beta + row, g ? g + row : NULL, L, ldk, ldv, H, K, V);
                gmm(oc, ldv, s.Qg, K, 'n', s.S, V, 'n', L, V, K, scale, 0);     /* O = scale Qg S_n */
                gmm(oc, ldv, s.M, L, 'n', s.U, V, 'n', L, V, L, scale, 1);      /*  + scale M U' */
                for (size_t i = 0; i < KV; i++) s.S[i] *= s.gam[L - 1];         /* S = gam_{L-1} S_n */
                gmm(s.S, V, s.Kd, K, 't', s.U, V, 'n', K, V, L, 1.0, 1);        /*   + Kd^T U' */
            }
            if (S_final) memcpy(S_final + bh * KV, s.S, KV * sizeof(real));
        }
        gchunk_free(&s);
    }
}

void RF(ref_gated_delta_rule_chunk_backward)(real *dq, real *dk, real *dv, real *dbeta, real *dg,
                                             real *dS0, const real *dout, const real *dS_final,
                                             const real *q, const real *k, const real *v,
                                             const real *beta, const real *g, const real *S0,
                                             int B, int T, int H, int K, int V, real scale, int C) {
    const size_t KV = (size_t)K * V;
    const int ldk = H * K, ldv = H * V, NC = (T + C - 1) / C;
#pragma omp parallel
    {
        GChunk s;
        gchunk_alloc(&s, C, K, V, 1);
        real *Sn = malloc((size_t)NC * KV * sizeof(real));   /* incoming state of every chunk */
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            const int b = bh / H, h = bh % H;
            /* forward over chunks, keeping only the states S_0 .. S_{NC-1} */
            state_load(s.S, S0, bh, KV);
            for (int n = 0; n < NC; n++) {
                const int t0 = n * C, L = T - t0 < C ? T - t0 : C;
                const size_t row = (size_t)(b * T + t0) * H + h;
                memcpy(Sn + n * KV, s.S, KV * sizeof(real));
                gchunk_factors(&s, q + row * K, k + row * K, v + row * V, beta + row, g ? g + row : NULL, L,
                               ldk, ldv, H, K, V);
                for (size_t i = 0; i < KV; i++) s.S[i] *= s.gam[L - 1];
                gmm(s.S, V, s.Kd, K, 't', s.U, V, 'n', K, V, L, 1.0, 1);
            }
            /* backward over chunks in reverse, dS = dL/dS_{n+1} */
            state_load(s.dS, dS_final, bh, KV);
            for (int n = NC - 1; n >= 0; n--) {
                const int t0 = n * C, L = T - t0 < C ? T - t0 : C;
                const size_t row = (size_t)(b * T + t0) * H + h;
                const real *qc = q + row * K, *kc = k + row * K, *vc = v + row * V, *bc = beta + row;
                const real *doc = dout + row * V;
                real *dqc = dq + row * K, *dkc = dk + row * K, *dvc = dv + row * V, *dbc = dbeta + row;
                memcpy(s.S, Sn + n * KV, KV * sizeof(real));
                gchunk_factors(&s, qc, kc, vc, bc, g ? g + row : NULL, L, ldk, ldv, H, K, V);
                for (int i = 0; i < L; i++) s.dG[i] = s.dgam[i] = 0.0;
                /* O = scale (Qg S_n + M U'),  S_{n+1} = gam_{L-1} S_n + Kd^T U' */
                gmm(s.dU, V, s.M, L, 't', doc, ldv, 'n', L, V, L, scale, 0);      /* dU' = scale M^T dO */
                gmm(s.dU, V, s.Kd, K, 'n', s.dS, V, 'n', L, V, K, 1.0, 1);        /*     + Kd dS */
                gmm(s.dM, L, doc, ldv, 'n', s.U, V, 't', L, L, V, scale, 0);      /* dM = scale dO U'^T */
                gmm(s.dQg, K, doc, ldv, 'n', s.S, V, 't', L, K, V, scale, 0);     /* dQg = scale dO S_n^T */
                gmm(s.dKd, K, s.U, V, 'n', s.dS, V, 't', L, K, V, 1.0, 0);        /* dKd = U' dS^T */
                double sd = 0.0;                                                  /* <S_n, dS> */
                for (size_t i = 0; i < KV; i++) sd += (double)s.S[i] * s.dS[i];
                s.dgam[L - 1] += sd;
                for (size_t i = 0; i < KV; i++) s.dSn[i] = s.gam[L - 1] * s.dS[i]; /* dS_n = gam dS */
                gmm(s.dSn, V, s.Qg, K, 't', doc, ldv, 'n', K, V, L, scale, 1);    /*   + scale Qg^T dO */
                gmm(s.dSn, V, s.W, K, 't', s.dU, V, 'n', K, V, L, -1.0, 1);       /*   - W^T dU' */
                /* U' = U - W S_n;  W = Tm Kbg, U = Tm Vb */
                gmm(s.dW, K, s.dU, V, 'n', s.S, V, 't', L, K, V, -1.0, 0);        /* dW = -dU' S_n^T */
                gmm(s.dTm, L, s.dW, K, 'n', s.Kbg, K, 't', L, L, K, 1.0, 0);      /* dTm = dW Kbg^T */
                gmm(s.dTm, L, s.dU, V, 'n', s.Vb, V, 't', L, L, V, 1.0, 1);       /*     + dU Vb^T */
                gmm(s.dKbg, K, s.Tm, L, 't', s.dW, K, 'n', L, K, L, 1.0, 0);      /* dKbg = Tm^T dW */
                gmm(s.dVb, V, s.Tm, L, 't', s.dU, V, 'n', L, V, L, 1.0, 0);       /* dVb = Tm^T dU */
                /* the row scalings: Qg = diag(gam) Q, Kd = diag(e) K, Kbg = diag(beta gam) K, Vb = diag(beta) V */
                for (int i = 0; i < L; i++) {
                    const real bi = bc[(size_t)i * H], gi = s.gam[i], ei = s.e[i];
                    double tq = 0.0, tkd = 0.0, tkb = 0.0, tv = 0.0;
                    for (int a = 0; a < K; a++) {
                        const size_t ia = (size_t)i * ldk + a;
                        dqc[ia] += gi * s.dQg[i * K + a];
                        dkc[ia] += ei * s.dKd[i * K + a] + bi * gi * s.dKbg[i * K + a];
                        tq += (double)qc[ia] * s.dQg[i * K + a];
                        tkd += (double)kc[ia] * s.dKd[i * K + a];
                        tkb += (double)kc[ia] * s.dKbg[i * K + a];
                    }
                    for (int c = 0; c < V; c++) {
                        dvc[(size_t)i * ldv + c] += bi * s.dVb[i * V + c];
                        tv += (double)vc[(size_t)i * ldv + c] * s.dVb[i * V + c];
                    }
                    s.dgam[i] += tq + bi * tkb;
                    dbc[(size_t)i * H] += (real)(gi * tkb + tv);
                    if (i < L - 1) { s.dG[L - 1] += ei * tkd; s.dG[i] -= ei * tkd; } /* row L-1: +x - x */
                }
                /* Tm = (I + A)^{-1}: dA = strictly-lower(-Tm^T dTm Tm^T) */
                gmm(s.X, L, s.Tm, L, 't', s.dTm, L, 'n', L, L, L, 1.0, 0);         /* X = Tm^T dTm */
                gmm(s.dA, L, s.X, L, 'n', s.Tm, L, 't', L, L, L, -1.0, 0);         /* dA = -X Tm^T */
                /* A_ij = beta_i KK_ij E_ij (j < i): dbeta, dG, and Da = diag(beta) (dA o E) in dA;
                 * M_ij = QK_ij E_ij (j <= i): dG, and Dm = dM o E in dM */
                for (int i = 0; i < L; i++) {
                    const real bi = bc[(size_t)i * H];
                    double db = 0.0;
                    for (int j = 0; j < L; j++) {
                        const double E = j <= i ? decay_between(&s, i, j) : 0.0;
                        if (j < i) {
                            const double da = s.dA[i * L + j], pa = da * s.A[i * L + j];
                            db += da * s.KK[i * L + j] * E;
                            s.dG[i] += pa;
                            s.dG[j] -= pa;
                            s.dA[i * L + j] = (real)(bi * da * E);
                        } else {
                            s.dA[i * L + j] = 0;
                        }
                        if (j <= i) {
                            const double dm = s.dM[i * L + j], pm = dm * s.M[i * L + j];
                            if (j < i) { s.dG[i] += pm; s.dG[j] -= pm; } /* the diagonal's E = 1: +x - x */
                            s.dM[i * L + j] = (real)(dm * E);
                        } else {
                            s.dM[i * L + j] = 0;
                        }
                    }
                    dbc[(size_t)i * H] += (real)db;
                }
                gmm(dkc, ldk, s.dA, L, 'n', kc, ldk, 'n', L, K, L, 1.0, 1);        /* dK += Da K */
                gmm(dkc, ldk, s.dA, L, 't', kc, ldk, 'n', L, K, L, 1.0, 1);        /*    + Da^T K */
                gmm(dqc, ldk, s.dM, L, 'n', kc, ldk, 'n', L, K, L, 1.0, 1);        /* dQ += Dm K */
                gmm(dkc, ldk, s.dM, L, 't', qc, ldk, 'n', L, K, L, 1.0, 1);        /* dK += Dm^T Q */
                /* gam_i = exp(G_i), G_i = g_0 + .. + g_i: dg_j += sum_{i >= j} dG_i */
                double rev = 0.0;                                 /* (g == NULL: no dg) */
                for (int i = L - 1; g && i >= 0; i--) {
                    rev += s.dG[i] + (double)s.gam[i] * s.dgam[i];
                    dg[row + (size_t)i * H] += (real)rev;
                }
                memcpy(s.dS, s.dSn, KV * sizeof(real));
            }
            if (dS0)
                for (size_t i = 0; i < KV; i++) dS0[bh * KV + i] += s.dS[i];
        }
        free(Sn);
        gchunk_free(&s);
    }
}
