/*
 * test_gateddelta.c -- the gated delta rule (ref/gateddelta.c) and the gated DeltaNet layer's gates
 * (ref/gate.c), forward and backward.
 *   1. a hand-computed single step with decay
 *   2. finite differences (double) of the recurrent and the chunkwise backward: q, k, v, beta, g and
 *      S0, with a loss that reads both o and S_final
 *   3. recurrent == chunkwise (double): o, S_final and every gradient, T in {1,7,63,64,65,200},
 *      C in {16,64}, with and without S0 / dS_final
 *   4. g == 0 (alpha == 1) is the delta rule (ref/deltarule.c): recurrent bit for bit, chunkwise
 *      to rounding, forward and backward
 *   5. strong decay (g down to -1e4, alpha underflowing to 0) stays finite, and recurrent ==
 *      chunkwise there; at alpha == 0 each step forgets everything before it
 *   6. float vs double; backwards accumulate (+=); one token at a time in place == full sequence
 *   7. the decay gate and the gated output norm: finite differences of every input and parameter
 * Inputs are random and nonzero: q, k L2-normalised rows, beta in (0.1, 0.9), g in (-1.5, -0.01).
 */
#include "../ref/reference.h"
#include "delta_problem.h"

/* Random problem with L2-normalised q, k rows and g uniform in (glo, ghi). */
static Problem make_problem(int B, int T, int H, int K, int V, double glo, double ghi, uint64_t seed) {
    return delta_problem(B, T, H, K, V, 1, 1.0, 1e-6, 1, glo, ghi, seed);
}

static void run_f64(const Problem *p, Result *r, int C, int with_state) {
    const double scale = 1.0 / sqrt((double)p->K);
    const double *S0 = with_state ? p->S0 : NULL, *dSf = with_state ? p->dSf : NULL;
    double *dS0 = with_state ? r->dS0 : NULL;
    if (C <= 0) {
        ref_gated_delta_rule_recurrent_forward_f64(r->o, r->Sf, p->q, p->k, p->v, p->beta, p->g, S0,
                                                   p->B, p->T, p->H, p->K, p->V, scale);
        ref_gated_delta_rule_recurrent_backward_f64(r->dq, r->dk, r->dv, r->dbeta, r->dg, dS0, p->dout, dSf,
                                                    p->q, p->k, p->v, p->beta, p->g, S0, p->B, p->T, p->H,
                                                    p->K, p->V, scale);
    } else {
        ref_gated_delta_rule_chunk_forward_f64(r->o, r->Sf, p->q, p->k, p->v, p->beta, p->g, S0,
                                               p->B, p->T, p->H, p->K, p->V, scale, C);
        ref_gated_delta_rule_chunk_backward_f64(r->dq, r->dk, r->dv, r->dbeta, r->dg, dS0, p->dout, dSf,
                                                p->q, p->k, p->v, p->beta, p->g, S0, p->B, p->T, p->H,
                                                p->K, p->V, scale, C);
    }
}

static double compare_results(const Result *a, const Result *ref, const Problem *p, int with_dS0,
                              char *msg, size_t len) {
    double e[8] = {rel_err_d(a->o, ref->o, nv(p)), rel_err_d(a->Sf, ref->Sf, ns(p)),
                   rel_err_d(a->dq, ref->dq, nqk(p)), rel_err_d(a->dk, ref->dk, nqk(p)),
                   rel_err_d(a->dv, ref->dv, nv(p)), rel_err_d(a->dbeta, ref->dbeta, nb(p)),
                   rel_err_d(a->dg, ref->dg, nb(p)), with_dS0 ? rel_err_d(a->dS0, ref->dS0, ns(p)) : 0.0};
    double worst = 0;
    for (int i = 0; i < 8; i++) worst = e[i] > worst || isnan(e[i]) ? e[i] : worst;
    snprintf(msg, len, "o %.0e S %.0e dq %.0e dk %.0e dv %.0e dbeta %.0e dg %.0e dS0 %.0e, max", e[0], e[1],
             e[2], e[3], e[4], e[5], e[6], e[7]);
    return worst;
}

static int all_finite(const double *x, size_t n) {
    for (size_t i = 0; i < n; i++) if (!isfinite(x[i])) return 0;
    return 1;
}

/* ---- 1. one step by hand ------------------------------------------------------------------------ */

static void test_single_step(void) {
    Problem p = make_problem(1, 1, 1, 4, 3, -1.0, -0.1, 11);
    const double scale = 0.5, alpha = exp(p.g[0]);
    double o[3], Sf[12], u[3], S1[12], o_ref[3];
    /* u = v - (alpha S0)^T k, S1 = alpha S0 + beta k u^T, o = scale S1^T q */
    for (int c = 0; c < 3; c++) {
        u[c] = p.v[c];
        for (int a = 0; a < 4; a++) u[c] -= alpha * p.S0[a * 3 + c] * p.k[a];
    }
    for (int a = 0; a < 4; a++)
        for (int c = 0; c < 3; c++) S1[a * 3 + c] = alpha * p.S0[a * 3 + c] + p.beta[0] * p.k[a] * u[c];
    for (int c = 0; c < 3; c++) {
        o_ref[c] = 0;
        for (int a = 0; a < 4; a++) o_ref[c] += scale * S1[a * 3 + c] * p.q[a];
    }
    ref_gated_delta_rule_recurrent_forward_f64(o, Sf, p.q, p.k, p.v, p.beta, p.g, p.S0, 1, 1, 1, 4, 3, scale);
    CHECK_REL(fmax(rel_err_d(o, o_ref, 3), rel_err_d(Sf, S1, 12)), 1e-15, "gated: one step by hand, recurrent: o, S");
    ref_gated_delta_rule_chunk_forward_f64(o, Sf, p.q, p.k, p.v, p.beta, p.g, p.S0, 1, 1, 1, 4, 3, scale, 16);
    CHECK_REL(fmax(rel_err_d(o, o_ref, 3), rel_err_d(Sf, S1, 12)), 1e-15, "gated: one step by hand, chunkwise: o, S");
    free_problem(&p);
}

/* ---- 2. finite differences ------------------------------------------------------------------------ */

/* loss = <o, dout> + <S_final, dSf> */
static double loss_of(const Problem *p, int C) {
    Result r = alloc_result(p);
    const double scale = 1.0 / sqrt((double)p->K);
    if (C <= 0)
        ref_gated_delta_rule_recurrent_forward_f64(r.o, r.Sf, p->q, p->k, p->v, p->beta, p->g, p->S0,
                                                   p->B, p->T, p->H, p->K, p->V, scale);
    else
        ref_gated_delta_rule_chunk_forward_f64(r.o, r.Sf, p->q, p->k, p->v, p->beta, p->g, p->S0,
                                               p->B, p->T, p->H, p->K, p->V, scale, C);
    double l = 0;
    for (size_t i = 0; i < nv(p); i++) l += r.o[i] * p->dout[i];
    for (size_t i = 0; i < ns(p); i++) l += r.Sf[i] * p->dSf[i];
    free_result(&r);
    return l;
}

static double fd_rel(Problem *p, double *x, const double *an, size_t n, int C) {
    const double h = 1e-6;
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double save = x[i];
        x[i] = save + h;
        double lp = loss_of(p, C);
        x[i] = save - h;
        double lm = loss_of(p, C);
        x[i] = save;
        double fd = (lp - lm) / (2 * h);
        num += (fd - an[i]) * (fd - an[i]);
        den += fd * fd;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void test_fd(int C) {
    /* T = 11 with C = 4: three chunks, the last one short */
    Problem p = make_problem(2, 11, 2, 5, 3, -1.5, -0.01, 21 + (uint64_t)C);
    Result r = alloc_result(&p);
    run_f64(&p, &r, C, 1);
    const char *form = C <= 0 ? "recurrent" : "chunk 4";
    struct { const char *name; double *x, *g; size_t n; } in[6] = {
        {"q", p.q, r.dq, nqk(&p)}, {"k", p.k, r.dk, nqk(&p)}, {"v", p.v, r.dv, nv(&p)},
        {"beta", p.beta, r.dbeta, nb(&p)}, {"g", p.g, r.dg, nb(&p)}, {"S0", p.S0, r.dS0, ns(&p)}};
    for (int i = 0; i < 6; i++)
        CHECK_REL(fd_rel(&p, in[i].x, in[i].g, in[i].n, C), 1e-7, "gated FD %s: d%s", form, in[i].name);
    free_result(&r);
    free_problem(&p);
}

/* ---- 3. recurrent == chunkwise --------------------------------------------------------------------- */

static void test_chunk_vs_recurrent(void) {
    const int Ts[6] = {1, 7, 63, 64, 65, 200};
    for (int ti = 0; ti < 6; ti++) {
        for (int ws = 0; ws < 2; ws++) {
            int T = Ts[ti];
            Problem p = make_problem(2, T, 2, 8, 6, -1.5, -0.01, 100 + (uint64_t)ti * 2 + (uint64_t)ws);
            Result a = alloc_result(&p), b = alloc_result(&p), c = alloc_result(&p);
            run_f64(&p, &a, 0, ws);
            run_f64(&p, &b, 64, ws);
            run_f64(&p, &c, 16, ws);
            char m1[200], m2[200];
            double e1 = compare_results(&b, &a, &p, ws, m1, sizeof m1);
            double e2 = compare_results(&c, &a, &p, ws, m2, sizeof m2);
            CHECK_REL(e1, 1e-12, "gated chunk 64 vs recurrent, T=%d %s: %s", T, ws ? "S0+dSf" : "no state", m1);
            CHECK_REL(e2, 1e-12, "gated chunk 16 vs recurrent, T=%d %s: %s", T, ws ? "S0+dSf" : "no state", m2);
            free_result(&a); free_result(&b); free_result(&c);
            free_problem(&p);
        }
    }
}

/* ---- 4. g == 0 is the delta rule ------------------------------------------------------------------- */

static void test_no_decay(void) {
    Problem p = make_problem(2, 70, 2, 8, 6, -1.0, -0.1, 7);
    memset(p.g, 0, nb(&p) * sizeof(double));
    const double scale = 1.0 / sqrt((double)p.K);
    for (int form = 0; form < 2; form++) {
        Result a = alloc_result(&p), d = alloc_result(&p);
        const int C = form ? 16 : 0;
        run_f64(&p, &a, C, 1);
        if (!form) {
            ref_delta_rule_recurrent_forward_f64(d.o, d.Sf, p.q, p.k, p.v, p.beta, p.S0, p.B, p.T, p.H, p.K, p.V, scale);
            ref_delta_rule_recurrent_backward_f64(d.dq, d.dk, d.dv, d.dbeta, d.dS0, p.dout, p.dSf, p.q, p.k, p.v,
                                                  p.beta, p.S0, p.B, p.T, p.H, p.K, p.V, scale);
        } else {
            ref_delta_rule_chunk_forward_f64(d.o, d.Sf, p.q, p.k, p.v, p.beta, p.S0, p.B, p.T, p.H, p.K, p.V, scale, C);
            ref_delta_rule_chunk_backward_f64(d.dq, d.dk, d.dv, d.dbeta, d.dS0, p.dout, p.dSf, p.q, p.k, p.v,
                                              p.beta, p.S0, p.B, p.T, p.H, p.K, p.V, scale, C);
        }
        /* the delta rule has no dg: compare it with itself */
        memcpy(d.dg, a.dg, nb(&p) * sizeof(double));
        char m[200];
        double e = compare_results(&a, &d, &p, 1, m, sizeof m);
        if (!form) {
            int same = !memcmp(a.o, d.o, nv(&p) * sizeof(double)) && !memcmp(a.Sf, d.Sf, ns(&p) * sizeof(double)) &&
                       !memcmp(a.dq, d.dq, nqk(&p) * sizeof(double)) && !memcmp(a.dk, d.dk, nqk(&p) * sizeof(double)) &&
                       !memcmp(a.dv, d.dv, nv(&p) * sizeof(double)) && !memcmp(a.dbeta, d.dbeta, nb(&p) * sizeof(double)) &&
                       !memcmp(a.dS0, d.dS0, ns(&p) * sizeof(double));
            CHECK(same, "g = 0 recurrent is not bit for bit the delta rule (%s %.1e)", m, e);
            if (same) printf("  ok  g = 0: recurrent gated rule == delta rule bit for bit (o, S, every gradient)\n");
        } else {
            CHECK_REL(e, 1e-14, "g = 0: chunkwise gated rule vs the delta rule's chunkwise form: %s", m);
        }
        free_result(&a); free_result(&d);
    }
    free_problem(&p);
}

/* ---- 5. strong decay --------------------------------------------------------------------------------- */

static void test_strong_decay(void) {
    const double lo[3] = {-60.0, -1e3, -1e4};
    for (int i = 0; i < 3; i++) {
        Problem p = make_problem(1, 130, 2, 8, 6, lo[i], lo[i] / 2, 31 + (uint64_t)i);
        Result a = alloc_result(&p), b = alloc_result(&p);
        run_f64(&p, &a, 0, 1);
        run_f64(&p, &b, 64, 1);
        int fin = all_finite(b.o, nv(&p)) && all_finite(b.Sf, ns(&p)) && all_finite(b.dq, nqk(&p)) &&
                  all_finite(b.dk, nqk(&p)) && all_finite(b.dv, nv(&p)) && all_finite(b.dbeta, nb(&p)) &&
                  all_finite(b.dg, nb(&p)) && all_finite(b.dS0, ns(&p));
        CHECK(fin, "g in [%g, %g]: the chunkwise form is not finite", lo[i], lo[i] / 2);
        char m[200];
        double e = compare_results(&b, &a, &p, 1, m, sizeof m);
        CHECK_REL(e, 1e-12, "strong decay g in [%g, %g], finite, chunk 64 vs recurrent: %s", lo[i], lo[i] / 2, m);
        /* alpha == 0 (exp(-500) underflows): S_t = beta_t k_t v_t^T, o_t = scale beta_t (q_t . k_t) v_t */
        if (i == 0) goto next;
        double num = 0, den = 0;
        for (int h = 0; h < p.H; h++)
            for (int t = 0; t < p.T; t++) {
                const size_t row = (size_t)t * p.H + h;
                double qk = 0;
                for (int a2 = 0; a2 < p.K; a2++) qk += p.q[row * p.K + a2] * p.k[row * p.K + a2];
                for (int c = 0; c < p.V; c++) {
                    double want = p.beta[row] * qk * p.v[row * p.V + c] / sqrt((double)p.K), d = b.o[row * p.V + c] - want;
                    num += d * d;
                    den += want * want;
                }
            }
        CHECK_REL(sqrt(num / den), 1e-14, "strong decay g in [%g, %g]: every step forgets the past", lo[i], lo[i] / 2);
    next:
        free_result(&a); free_result(&b);
        free_problem(&p);
    }
}

/* ---- 6. float, accumulation, in-place decode --------------------------------------------------------- */

static void test_float_and_decode(void) {
    Problem p = make_problem(1, 200, 2, 32, 32, -1.0, -0.01, 55);
    Result d = alloc_result(&p);
    run_f64(&p, &d, 64, 1);
    const size_t a = nqk(&p), b = nv(&p), c = nb(&p), s = ns(&p);
    float *q = to_f32(p.q, a), *k = to_f32(p.k, a), *v = to_f32(p.v, b), *be = to_f32(p.beta, c), *g = to_f32(p.g, c);
    float *S0 = to_f32(p.S0, s), *dout = to_f32(p.dout, b), *dSf = to_f32(p.dSf, s);
    float *o = xcalloc(b, sizeof(float)), *Sf = xcalloc(s, sizeof(float));
    float *dq = xcalloc(a, sizeof(float)), *dk = xcalloc(a, sizeof(float)), *dv = xcalloc(b, sizeof(float));
    float *db = xcalloc(c, sizeof(float)), *dg = xcalloc(c, sizeof(float)), *dS0 = xcalloc(s, sizeof(float));
    const float scale = 1.0f / sqrtf(32.0f);
    ref_gated_delta_rule_chunk_forward(o, Sf, q, k, v, be, g, S0, 1, 200, 2, 32, 32, scale, 64);
    ref_gated_delta_rule_chunk_backward(dq, dk, dv, db, dg, dS0, dout, dSf, q, k, v, be, g, S0, 1, 200, 2, 32, 32, scale, 64);
    double *tmp = xcalloc(a > b ? (a > s ? a : s) : (b > s ? b : s), sizeof(double));
#define VS_DOUBLE(x, ref, n, what)                                                           \
    do {                                                                                     \
        for (size_t i_ = 0; i_ < (n); i_++) tmp[i_] = (x)[i_];                               \
        CHECK_REL(rel_err_d(tmp, ref, n), 1e-4, "gated float chunkwise vs double: %s", what); \
    } while (0)
    VS_DOUBLE(o, d.o, b, "o");
    VS_DOUBLE(Sf, d.Sf, s, "S_final");
    VS_DOUBLE(dq, d.dq, a, "dq");
    VS_DOUBLE(dk, d.dk, a, "dk");
    VS_DOUBLE(dv, d.dv, b, "dv");
    VS_DOUBLE(db, d.dbeta, c, "dbeta");
    VS_DOUBLE(dg, d.dg, c, "dg");
    VS_DOUBLE(dS0, d.dS0, s, "dS0");
    /* accumulation: a second backward doubles every gradient */
    float *dg1 = to_f32(d.dg, c);
    for (size_t i = 0; i < c; i++) dg1[i] = dg[i];
    ref_gated_delta_rule_chunk_backward(dq, dk, dv, db, dg, dS0, dout, dSf, q, k, v, be, g, S0, 1, 200, 2, 32, 32, scale, 64);
    double acc = 0;
    for (size_t i = 0; i < c; i++) acc = fmax(acc, fabs(dg[i] - 2 * dg1[i]) / (fabs(dg1[i]) + 1e-6));
    CHECK(acc < 1e-5, "gated chunk backward does not accumulate dg (+=): %.3e", acc);
    /* decode: one token per call, S0 == S_final in place, equals the full sequence */
    float *S = xcalloc(s, sizeof(float)), *o1 = xcalloc(b, sizeof(float)), *Sfull = xcalloc(s, sizeof(float));
    float *ofull = xcalloc(b, sizeof(float));
    memcpy(S, S0, s * sizeof(float));
    ref_gated_delta_rule_recurrent_forward(ofull, Sfull, q, k, v, be, g, S0, 1, 200, 2, 32, 32, scale);
    for (int t = 0; t < 200; t++) {
        const size_t r0 = (size_t)t * 2;
        ref_gated_delta_rule_recurrent_forward(o1 + r0 * 32, S, q + r0 * 32, k + r0 * 32, v + r0 * 32, be + r0,
                                               g + r0, S, 1, 1, 2, 32, 32, scale);
    }
    CHECK(!memcmp(o1, ofull, b * sizeof(float)) && !memcmp(S, Sfull, s * sizeof(float)),
          "gated decode one token at a time in place != full sequence");
    printf("  ok  gated f32 decode, one token per call in place == full sequence (bit for bit)\n");
    free(q); free(k); free(v); free(be); free(g); free(S0); free(dout); free(dSf); free(o); free(Sf);
    free(dq); free(dk); free(dv); free(db); free(dg); free(dS0); free(tmp); free(dg1); free(S); free(o1);
    free(Sfull); free(ofull);
    free_result(&d);
    free_problem(&p);
}

/* ---- 7. the gates ------------------------------------------------------------------------------------- */

static double gate_loss(const double *y, const double *w, size_t n) {
    double l = 0;
    for (size_t i = 0; i < n; i++) l += y[i] * w[i];
    return l;
}

static void test_decay_gate(void) {
    enum { N = 13, H = 3 };
    DNRng r;
    dn_rng_seed(&r, 71);
    double a[N * H], A_log[H], dtb[H], dg[N * H], g[N * H];
    fill_randn_d(a, N * H, &r, 2.0);
    fill_uniform_d(A_log, H, &r, -2.0, 2.7);
    fill_uniform_d(dtb, H, &r, -5.0, -2.0);
    fill_randn_d(dg, N * H, &r, 1.0);
    a[0] = 25.0 - dtb[0]; /* one input above softplus's threshold 20 */
    double da[N * H] = {0}, dA[H] = {0}, ddt[H] = {0};
    ref_gdn_decay_forward_f64(g, a, A_log, dtb, N, H);
    ref_gdn_decay_backward_f64(da, dA, ddt, dg, a, A_log, dtb, N, H);
    int neg = 1;
    for (int i = 0; i < N * H; i++) neg &= g[i] < 0;
    CHECK(neg, "the log decay g must be negative");
    /* by hand for one element */
    double want = -exp(A_log[1]) * log1p(exp(a[4] + dtb[1]));
    CHECK(fabs(g[4] - want) <= 1e-15 * fabs(want), "decay g by hand: %.17g vs %.17g", g[4], want);
    struct { const char *name; double *x, *an; int n; } in[3] = {{"a", a, da, N * H}, {"A_log", A_log, dA, H}, {"dt_bias", dtb, ddt, H}};
    for (int k = 0; k < 3; k++) {
        double num = 0, den = 0, h = 1e-6;
        for (int i = 0; i < in[k].n; i++) {
            double save = in[k].x[i], gp[N * H], gm[N * H];
            in[k].x[i] = save + h;
            ref_gdn_decay_forward_f64(gp, a, A_log, dtb, N, H);
            in[k].x[i] = save - h;
            ref_gdn_decay_forward_f64(gm, a, A_log, dtb, N, H);
            in[k].x[i] = save;
            double fd = (gate_loss(gp, dg, N * H) - gate_loss(gm, dg, N * H)) / (2 * h);
            num += (fd - in[k].an[i]) * (fd - in[k].an[i]);
            den += fd * fd;
        }
        CHECK_REL(sqrt(num / den), 1e-8, "decay gate FD: d%s", in[k].name);
    }
}

static void test_gated_norm(void) {
    enum { N = 7, C = 5 };
    DNRng r;
    dn_rng_seed(&r, 72);
    double x[N * C], z[N * C], w[C], dy[N * C], y[N * C], rstd[N];
    fill_randn_d(x, N * C, &r, 1.0);
    fill_randn_d(z, N * C, &r, 1.5);
    fill_uniform_d(w, C, &r, 0.5, 1.5);
    fill_randn_d(dy, N * C, &r, 1.0);
    double dx[N * C] = {0}, dz[N * C] = {0}, dw[C] = {0};
    const double eps = 1e-6;
    ref_gated_rmsnorm_forward_f64(y, rstd, x, z, w, N, C, eps);
    ref_gated_rmsnorm_backward_f64(dx, dz, dw, dy, x, z, w, rstd, N, C);
    /* by hand for row 2, column 3 */
    double ss = 0;
    for (int c = 0; c < C; c++) ss += x[2 * C + c] * x[2 * C + c];
    double zz = z[2 * C + 3], want = x[2 * C + 3] / sqrt(ss / C + eps) * w[3] * zz / (1 + exp(-zz));
    CHECK(fabs(y[2 * C + 3] - want) <= 1e-14 * fabs(want), "gated norm by hand: %.17g vs %.17g", y[2 * C + 3], want);
    struct { const char *name; double *x, *an; int n; } in[3] = {{"inp", x, dx, N * C}, {"gate", z, dz, N * C}, {"w", w, dw, C}};
    for (int k = 0; k < 3; k++) {
        double num = 0, den = 0, h = 1e-6;
        for (int i = 0; i < in[k].n; i++) {
            double save = in[k].x[i], yp[N * C], ym[N * C], rs[N];
            in[k].x[i] = save + h;
            ref_gated_rmsnorm_forward_f64(yp, rs, x, z, w, N, C, eps);
            in[k].x[i] = save - h;
            ref_gated_rmsnorm_forward_f64(ym, rs, x, z, w, N, C, eps);
            in[k].x[i] = save;
            double fd = (gate_loss(yp, dy, N * C) - gate_loss(ym, dy, N * C)) / (2 * h);
            num += (fd - in[k].an[i]) * (fd - in[k].an[i]);
            den += fd * fd;
        }
        CHECK_REL(sqrt(num / den), 1e-8, "gated output norm FD: d%s", in[k].name);
    }
}

int main(void) {
    test_single_step();
    test_fd(0);
    test_fd(4);
    test_chunk_vs_recurrent();
    test_no_decay();
    test_strong_decay();
    test_float_and_decode();
    test_decay_gate();
    test_gated_norm();
    return test_summary("test_gateddelta");
}
