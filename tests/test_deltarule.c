/*
 * test_deltarule.c -- the CPU delta rule (ref/deltarule.c): the token recurrence and the chunkwise
 * WY form, forward and backward.
 *   1. a hand-computed single step (independent of both implementations)
 *   2. finite differences (double) of the recurrent and the chunkwise backward, every input
 *      including S0, with a loss that reads both o and S_final
 *   3. recurrent == chunkwise (double): o, S_final and every gradient, T in {1,7,63,64,65,200},
 *      C in {16,64}, with and without S0 / dS_final; also unnormalised q, k
 *   4. the same in float (ref_*), T = 200, K = V = 32, plus both against the double result
 *   5. backwards accumulate (+=)
 *   6. in-place decode: one token at a time with S0 == S_final equals the full sequence (and the
 *      chunkwise form in pieces, in place)
 * Inputs are random and nonzero; q, k are L2-normalised rows as in the model unless said otherwise,
 * beta in (0.1, 0.9), S0 and dS_final random.
 */
#include "../ref/reference.h"
#include "delta_problem.h"

/* Random problem; normalise: L2-normalise the rows of q and k (the model's inputs), otherwise
 * Gaussian rows with std qk_std. */
static Problem make_problem(int B, int T, int H, int K, int V, int normalise, double qk_std, uint64_t seed) {
    return delta_problem(B, T, H, K, V, normalise, qk_std, DN_DEFAULT_L2_EPS, 0, 0.0, 0.0, seed);
}

static void run_f64(const Problem *p, Result *r, int C, int with_state) {
    const double scale = 1.0 / sqrt((double)p->K);
    const double *S0 = with_state ? p->S0 : NULL, *dSf = with_state ? p->dSf : NULL;
    double *dS0 = with_state ? r->dS0 : NULL;
    if (C <= 0) {
        ref_delta_rule_recurrent_forward_f64(r->o, r->Sf, p->q, p->k, p->v, p->beta, S0,
                                             p->B, p->T, p->H, p->K, p->V, scale);
        ref_delta_rule_recurrent_backward_f64(r->dq, r->dk, r->dv, r->dbeta, dS0, p->dout, dSf, p->q, p->k,
                                              p->v, p->beta, S0, p->B, p->T, p->H, p->K, p->V, scale);
    } else {
        ref_delta_rule_chunk_forward_f64(r->o, r->Sf, p->q, p->k, p->v, p->beta, S0,
                                         p->B, p->T, p->H, p->K, p->V, scale, C);
        ref_delta_rule_chunk_backward_f64(r->dq, r->dk, r->dv, r->dbeta, dS0, p->dout, dSf, p->q, p->k,
                                          p->v, p->beta, S0, p->B, p->T, p->H, p->K, p->V, scale, C);
    }
}

/* Worst relative error over every output of a against ref; the seven values go into msg. */
static double compare_results(const Result *a, const Result *ref, const Problem *p, int with_dS0,
                              char *msg, size_t len) {
    double e[7] = {rel_err_d(a->o, ref->o, nv(p)), rel_err_d(a->Sf, ref->Sf, ns(p)),
                   rel_err_d(a->dq, ref->dq, nqk(p)), rel_err_d(a->dk, ref->dk, nqk(p)),
                   rel_err_d(a->dv, ref->dv, nv(p)), rel_err_d(a->dbeta, ref->dbeta, nb(p)),
                   with_dS0 ? rel_err_d(a->dS0, ref->dS0, ns(p)) : 0.0};
    double worst = 0;
    for (int i = 0; i < 7; i++) worst = e[i] > worst || isnan(e[i]) ? e[i] : worst;
    snprintf(msg, len, "o %.0e S %.0e dq %.0e dk %.0e dv %.0e dbeta %.0e dS0 %.0e, max", e[0], e[1], e[2],
             e[3], e[4], e[5], e[6]);
    return worst;
}

/* ---- 1. one step by hand ------------------------------------------------------------------------ */

static void test_single_step(void) {
    Problem p = make_problem(1, 1, 1, 4, 3, 1, 1.0, 11);
    const double scale = 0.5;
    double o[3], Sf[12], u[3], S1[12], o_ref[3];
    /* u = v - S0^T k, S1 = S0 + beta k u^T, o = scale S1^T q */
    for (int c = 0; c < 3; c++) {
        u[c] = p.v[c];
        for (int a = 0; a < 4; a++) u[c] -= p.S0[a * 3 + c] * p.k[a];
    }
    for (int a = 0; a < 4; a++)
        for (int c = 0; c < 3; c++) S1[a * 3 + c] = p.S0[a * 3 + c] + p.beta[0] * p.k[a] * u[c];
    for (int c = 0; c < 3; c++) {
        o_ref[c] = 0;
        for (int a = 0; a < 4; a++) o_ref[c] += scale * S1[a * 3 + c] * p.q[a];
    }
    ref_delta_rule_recurrent_forward_f64(o, Sf, p.q, p.k, p.v, p.beta, p.S0, 1, 1, 1, 4, 3, scale);
    CHECK_REL(fmax(rel_err_d(o, o_ref, 3), rel_err_d(Sf, S1, 12)), 1e-15, "one step by hand, recurrent: o, S");
    ref_delta_rule_chunk_forward_f64(o, Sf, p.q, p.k, p.v, p.beta, p.S0, 1, 1, 1, 4, 3, scale, 16);
    CHECK_REL(fmax(rel_err_d(o, o_ref, 3), rel_err_d(Sf, S1, 12)), 1e-15, "one step by hand, chunkwise: o, S");
    /* zero initial state: S1 = beta k v^T, o = scale beta (q . k) v */
    double qk = 0;
    for (int a = 0; a < 4; a++) qk += p.q[a] * p.k[a];
    for (int c = 0; c < 3; c++) o_ref[c] = scale * p.beta[0] * qk * p.v[c];
    for (int a = 0; a < 4; a++)
        for (int c = 0; c < 3; c++) S1[a * 3 + c] = p.beta[0] * p.k[a] * p.v[c];
    ref_delta_rule_recurrent_forward_f64(o, Sf, p.q, p.k, p.v, p.beta, NULL, 1, 1, 1, 4, 3, scale);
    CHECK_REL(fmax(rel_err_d(o, o_ref, 3), rel_err_d(Sf, S1, 12)), 1e-15, "one step by hand, S0 = NULL: o, S");
    free_problem(&p);
}

/* ---- 2. finite differences ------------------------------------------------------------------- */

/* L = sum(dout * o) + sum(dSf * S_final), so dL/do = dout and dL/dS_final = dSf. */
static double loss(const Problem *p, int C, double *o, double *Sf) {
    const double scale = 1.0 / sqrt((double)p->K);
    if (C <= 0)
        ref_delta_rule_recurrent_forward_f64(o, Sf, p->q, p->k, p->v, p->beta, p->S0,
                                             p->B, p->T, p->H, p->K, p->V, scale);
    else
        ref_delta_rule_chunk_forward_f64(o, Sf, p->q, p->k, p->v, p->beta, p->S0,
                                         p->B, p->T, p->H, p->K, p->V, scale, C);
    double L = 0;
    for (size_t i = 0; i < nv(p); i++) L += p->dout[i] * o[i];
    for (size_t i = 0; i < ns(p); i++) L += p->dSf[i] * Sf[i];
    return L;
}

static void fd_check(int C, int normalise, const char *what) {
    Problem p = make_problem(2, 7, 2, 5, 3, normalise, 0.5, 21 + normalise);
    Result r = alloc_result(&p);
    run_f64(&p, &r, C, 1);
    double *o = xcalloc(nv(&p), sizeof(double)), *Sf = xcalloc(ns(&p), sizeof(double));
    struct { const char *name; double *x, *grad; size_t n; } ts[] = {
        {"dq", p.q, r.dq, nqk(&p)}, {"dk", p.k, r.dk, nqk(&p)}, {"dv", p.v, r.dv, nv(&p)},
        {"dbeta", p.beta, r.dbeta, nb(&p)}, {"dS0", p.S0, r.dS0, ns(&p)}};
    const double eps = 1e-6;
    for (int t = 0; t < 5; t++) {
        double *fd = xcalloc(ts[t].n, sizeof(double));
        for (size_t i = 0; i < ts[t].n; i++) {
            double x0 = ts[t].x[i];
            ts[t].x[i] = x0 + eps;
            double Lp = loss(&p, C, o, Sf);
            ts[t].x[i] = x0 - eps;
            double Lm = loss(&p, C, o, Sf);
            ts[t].x[i] = x0;
            fd[i] = (Lp - Lm) / (2 * eps);
        }
        CHECK_REL(rel_err_d(ts[t].grad, fd, ts[t].n), 1e-7, "finite differences, %s: %s", what, ts[t].name);
        free(fd);
    }
    free(o); free(Sf);
    free_result(&r);
    free_problem(&p);
}

/* ---- 3. recurrent == chunkwise, double --------------------------------------------------------- */

static void compare_f64(int T, int C, int K, int V, int with_state, int normalise, double tol) {
    Problem p = make_problem(2, T, 2, K, V, normalise, 0.4, 1000 + T);
    Result rr = alloc_result(&p), rc = alloc_result(&p);
    run_f64(&p, &rr, 0, with_state);
    run_f64(&p, &rc, C, with_state);
    char msg[200];
    double worst = compare_results(&rc, &rr, &p, with_state, msg, sizeof msg);
    CHECK_REL(worst, tol, "chunk == recurrent f64 T=%d C=%d K=%d V=%d %s%s: %s", T, C, K, V,
              with_state ? "S0+dSf" : "NULL state", normalise ? "" : " raw q,k", msg);
    free_result(&rr); free_result(&rc);
    free_problem(&p);
}

/* NULL S0 / dS_final / S_final / dS0 mean exactly zero / not wanted. */
static void test_null_semantics(void) {
    Problem p = make_problem(2, 65, 2, 8, 6, 1, 1.0, 77);
    memset(p.S0, 0, ns(&p) * sizeof(double));
    memset(p.dSf, 0, ns(&p) * sizeof(double));
    for (int C = 0; C <= 16; C += 16) {
        Result rz = alloc_result(&p), rn = alloc_result(&p);
        run_f64(&p, &rz, C, 1);   /* explicit zero state and zero dS_final */
        run_f64(&p, &rn, C, 0);   /* NULLs */
        char msg[200];
        double worst = compare_results(&rn, &rz, &p, 0, msg, sizeof msg);
        CHECK_REL(worst, 0.0, "%s: NULL S0/dS_final == explicit zeros: %s", C ? "chunk" : "recurrent", msg);
        /* S_final = NULL still gives the same o */
        double *o = xcalloc(nv(&p), sizeof(double));
        if (C) ref_delta_rule_chunk_forward_f64(o, NULL, p.q, p.k, p.v, p.beta, NULL, p.B, p.T, p.H, p.K, p.V,
                                                1.0 / sqrt(p.K), C);
        else ref_delta_rule_recurrent_forward_f64(o, NULL, p.q, p.k, p.v, p.beta, NULL, p.B, p.T, p.H, p.K, p.V,
                                                  1.0 / sqrt(p.K));
        CHECK_REL(rel_err_d(o, rz.o, nv(&p)), 0.0, "%s: S_final = NULL, o unchanged", C ? "chunk" : "recurrent");
        free(o);
        free_result(&rz); free_result(&rn);
    }
    free_problem(&p);
}

/* ---- 4. float ------------------------------------------------------------------------------------ */

static double rel_err_fd(const float *a, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) { double d = (double)a[i] - ref[i]; num += d * d; den += ref[i] * ref[i]; }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* chunk (size C) == recurrent in float, both against the double recurrence (the recurrent one
 * only when check_recurrent: it does not depend on C). */
static void test_float(int C, int check_recurrent) {
    const int B = 2, T = 200, H = 2, K = 32, V = 32;
    Problem p = make_problem(B, T, H, K, V, 1, 1.0, 555);
    /* the double recurrence on the float-rounded inputs is the ground truth */
    float *q = to_f32(p.q, nqk(&p)), *k = to_f32(p.k, nqk(&p)), *v = to_f32(p.v, nv(&p));
    float *beta = to_f32(p.beta, nb(&p)), *S0 = to_f32(p.S0, ns(&p));
    float *dout = to_f32(p.dout, nv(&p)), *dSf = to_f32(p.dSf, ns(&p));
    for (size_t i = 0; i < nqk(&p); i++) { p.q[i] = q[i]; p.k[i] = k[i]; }
    for (size_t i = 0; i < nv(&p); i++) { p.v[i] = v[i]; p.dout[i] = dout[i]; }
    for (size_t i = 0; i < nb(&p); i++) p.beta[i] = beta[i];
    for (size_t i = 0; i < ns(&p); i++) { p.S0[i] = S0[i]; p.dSf[i] = dSf[i]; }
    Result truth = alloc_result(&p);
    run_f64(&p, &truth, 0, 1);

    const float scale = 1.0f / sqrtf((float)K);
    float *out[2][7];   /* [recurrent, chunk][o, Sf, dq, dk, dv, dbeta, dS0] */
    const size_t n[7] = {nv(&p), ns(&p), nqk(&p), nqk(&p), nv(&p), nb(&p), ns(&p)};
    for (int m = 0; m < 2; m++) {
        for (int i = 0; i < 7; i++) out[m][i] = xcalloc(n[i], sizeof(float));
        float **r = out[m];
        if (m == 0) {
            ref_delta_rule_recurrent_forward(r[0], r[1], q, k, v, beta, S0, B, T, H, K, V, scale);
            ref_delta_rule_recurrent_backward(r[2], r[3], r[4], r[5], r[6], dout, dSf, q, k, v, beta, S0,
                                              B, T, H, K, V, scale);
        } else {
            ref_delta_rule_chunk_forward(r[0], r[1], q, k, v, beta, S0, B, T, H, K, V, scale, C);
            ref_delta_rule_chunk_backward(r[2], r[3], r[4], r[5], r[6], dout, dSf, q, k, v, beta, S0,
                                          B, T, H, K, V, scale, C);
        }
    }
    const double *tr[7] = {truth.o, truth.Sf, truth.dq, truth.dk, truth.dv, truth.dbeta, truth.dS0};
    double e_rc = 0, e_r = 0, e_c = 0;
    char msg[3][200];
    int len[3] = {0, 0, 0};
    const char *names[7] = {"o", "S", "dq", "dk", "dv", "dbeta", "dS0"};
    for (int i = 0; i < 7; i++) {
        double a = rel_err_f(out[1][i], out[0][i], n[i]);
        double b = rel_err_fd(out[0][i], tr[i], n[i]), c = rel_err_fd(out[1][i], tr[i], n[i]);
        e_rc = fmax(e_rc, a); e_r = fmax(e_r, b); e_c = fmax(e_c, c);
        len[0] += snprintf(msg[0] + len[0], 200 - len[0], "%s %.0e ", names[i], a);
        len[1] += snprintf(msg[1] + len[1], 200 - len[1], "%s %.0e ", names[i], b);
        len[2] += snprintf(msg[2] + len[2], 200 - len[2], "%s %.0e ", names[i], c);
    }
    CHECK_REL(e_rc, 1e-4, "chunk == recurrent f32 T=%d C=%d K=V=%d: %smax", T, C, K, msg[0]);
    if (check_recurrent) CHECK_REL(e_r, 1e-4, "recurrent f32 vs f64 T=%d K=V=%d: %smax", T, K, msg[1]);
    CHECK_REL(e_c, 1e-4, "chunk f32 vs f64 T=%d C=%d K=V=%d: %smax", T, C, K, msg[2]);
    for (int m = 0; m < 2; m++)
        for (int i = 0; i < 7; i++) free(out[m][i]);
    free(q); free(k); free(v); free(beta); free(S0); free(dout); free(dSf);
    free_result(&truth);
    free_problem(&p);
}

/* ---- 5. accumulation ----------------------------------------------------------------------------- */

static void test_accumulate(int C) {
    Problem p = make_problem(2, 37, 2, 6, 5, 1, 1.0, 91);
    Result once = alloc_result(&p), twice = alloc_result(&p);
    run_f64(&p, &once, C, 1);
    run_f64(&p, &twice, C, 1);
    run_f64(&p, &twice, C, 1);   /* backward again into the same buffers: must add */
    double *g1[5] = {once.dq, once.dk, once.dv, once.dbeta, once.dS0};
    double *g2[5] = {twice.dq, twice.dk, twice.dv, twice.dbeta, twice.dS0};
    const size_t n[5] = {nqk(&p), nqk(&p), nv(&p), nb(&p), ns(&p)};
    double worst = 0;
    for (int i = 0; i < 5; i++) {
        for (size_t j = 0; j < n[i]; j++) g1[i][j] *= 2;
        worst = fmax(worst, rel_err_d(g2[i], g1[i], n[i]));
    }
    CHECK_REL(worst, 1e-14, "%s backward accumulates: two calls == 2 x one call (dq dk dv dbeta dS0)",
              C ? "chunk" : "recurrent");
    free_result(&once); free_result(&twice);
    free_problem(&p);
}

/* ---- 6. in-place decode ------------------------------------------------------------------------- */

/* dst[B, len, W] = rows [t0, t0+len) of src[B, T, W], and the reverse. */
static void take_rows(double *dst, const double *src, int B, int T, int t0, int len, int W) {
    for (int b = 0; b < B; b++) memcpy(dst + (size_t)b * len * W, src + ((size_t)b * T + t0) * W, (size_t)len * W * sizeof(double));
}
static void put_rows(double *dst, const double *src, int B, int T, int t0, int len, int W) {
    for (int b = 0; b < B; b++) memcpy(dst + ((size_t)b * T + t0) * W, src + (size_t)b * len * W, (size_t)len * W * sizeof(double));
}

/* Feed the sequence in pieces of `piece` tokens (1 = decode), the state updated in place
 * (S0 == S_final); C <= 0 recurrent, else chunkwise. */
static void test_in_place(int piece, int C) {
    const int B = 2, T = 45, H = 3, K = 8, V = 7;
    Problem p = make_problem(B, T, H, K, V, 1, 1.0, 4242);
    const double scale = 1.0 / sqrt((double)K);
    Result full = alloc_result(&p);
    run_f64(&p, &full, C, 1);
    double *o = xcalloc(nv(&p), sizeof(double)), *S = xcalloc(ns(&p), sizeof(double));
    double *qp = xcalloc(nqk(&p), sizeof(double)), *kp = xcalloc(nqk(&p), sizeof(double));
    double *vp = xcalloc(nv(&p), sizeof(double)), *bp = xcalloc(nb(&p), sizeof(double));
    double *op = xcalloc(nv(&p), sizeof(double));
    memcpy(S, p.S0, ns(&p) * sizeof(double));
    for (int t0 = 0; t0 < T; t0 += piece) {
        const int len = T - t0 < piece ? T - t0 : piece;
        take_rows(qp, p.q, B, T, t0, len, H * K);
        take_rows(kp, p.k, B, T, t0, len, H * K);
        take_rows(vp, p.v, B, T, t0, len, H * V);
        take_rows(bp, p.beta, B, T, t0, len, H);
        if (C <= 0) ref_delta_rule_recurrent_forward_f64(op, S, qp, kp, vp, bp, S, B, len, H, K, V, scale);
        else ref_delta_rule_chunk_forward_f64(op, S, qp, kp, vp, bp, S, B, len, H, K, V, scale, C);
        put_rows(o, op, B, T, t0, len, H * V);
    }
    double e = fmax(rel_err_d(o, full.o, nv(&p)), rel_err_d(S, full.Sf, ns(&p)));
    CHECK_REL(e, C <= 0 ? 0.0 : 1e-13, "in place S0 == S_final, %s, %d token(s) per call: o, S_final",
              C <= 0 ? "recurrent" : "chunk", piece);
    free(o); free(S); free(qp); free(kp); free(vp); free(bp); free(op);
    free_result(&full);
    free_problem(&p);
}

/* The same decode in float, as infer.c will run it. */
static void test_decode_f32(void) {
    const int B = 2, T = 45, H = 2, K = 16, V = 16;
    Problem p = make_problem(B, T, H, K, V, 1, 1.0, 999);
    const float scale = 1.0f / sqrtf((float)K);
    float *q = to_f32(p.q, nqk(&p)), *k = to_f32(p.k, nqk(&p)), *v = to_f32(p.v, nv(&p));
    float *beta = to_f32(p.beta, nb(&p)), *S0 = to_f32(p.S0, ns(&p));
    float *o_full = xcalloc(nv(&p), sizeof(float)), *S_full = xcalloc(ns(&p), sizeof(float));
    float *o = xcalloc(nv(&p), sizeof(float)), *S = to_f32(p.S0, ns(&p));
    float *q1 = xcalloc((size_t)B * H * K, sizeof(float)), *k1 = xcalloc((size_t)B * H * K, sizeof(float));
    float *v1 = xcalloc((size_t)B * H * V, sizeof(float)), *b1 = xcalloc((size_t)B * H, sizeof(float));
    float *o1 = xcalloc((size_t)B * H * V, sizeof(float));
    ref_delta_rule_recurrent_forward(o_full, S_full, q, k, v, beta, S0, B, T, H, K, V, scale);
    for (int t = 0; t < T; t++) {
        for (int b = 0; b < B; b++) {
            const size_t src = (size_t)b * T + t;
            memcpy(q1 + (size_t)b * H * K, q + src * H * K, (size_t)H * K * sizeof(float));
            memcpy(k1 + (size_t)b * H * K, k + src * H * K, (size_t)H * K * sizeof(float));
            memcpy(v1 + (size_t)b * H * V, v + src * H * V, (size_t)H * V * sizeof(float));
            memcpy(b1 + (size_t)b * H, beta + src * H, (size_t)H * sizeof(float));
        }
        ref_delta_rule_recurrent_forward(o1, S, q1, k1, v1, b1, S, B, 1, H, K, V, scale);
        for (int b = 0; b < B; b++)
            memcpy(o + ((size_t)b * T + t) * H * V, o1 + (size_t)b * H * V, (size_t)H * V * sizeof(float));
    }
    double e = fmax(rel_err_f(o, o_full, nv(&p)), rel_err_f(S, S_full, ns(&p)));
    CHECK_REL(e, 0.0, "f32 decode, one token per call in place == full sequence: o, S_final");
    free(q); free(k); free(v); free(beta); free(S0); free(o_full); free(S_full); free(o); free(S);
    free(q1); free(k1); free(v1); free(b1); free(o1);
    free_problem(&p);
}

int main(void) {
    test_single_step();

    fd_check(0, 1, "recurrent");
    fd_check(4, 1, "chunk C=4");
    fd_check(0, 0, "recurrent, raw q,k");
    fd_check(4, 0, "chunk C=4, raw q,k");

    const int Ts[] = {1, 7, 63, 64, 65, 200}, Cs[] = {16, 64};
    for (int s = 1; s >= 0; s--)
        for (int i = 0; i < 6; i++)
            for (int j = 0; j < 2; j++) compare_f64(Ts[i], Cs[j], 12, 10, s, 1, 1e-10);
    compare_f64(65, 16, 8, 8, 1, 0, 1e-10);
    compare_f64(200, 64, 8, 8, 1, 0, 1e-10);
    test_null_semantics();

    test_float(16, 1);
    test_float(64, 0);

    test_accumulate(0);
    test_accumulate(16);

    test_in_place(1, 0);
    test_in_place(10, 0);
    test_in_place(10, 4);
    test_in_place(1, 16);
    test_decode_f32();

    return test_summary("test_deltarule");
}
