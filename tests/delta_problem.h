/*
 * delta_problem.h -- the random problems of tests/test_deltarule.c and tests/test_gateddelta.c:
 * inputs q, k [B,T,H,K], v [B,T,H,V], beta [B,T,H], the log decay g [B,T,H] (NULL for the plain
 * delta rule), S0 [B,H,K,V], and the upstream gradients dout, dS_final; and the outputs of one
 * forward + backward (dg NULL when g is). Everything in double.
 */
#ifndef DELTANET_DELTA_PROBLEM_H
#define DELTANET_DELTA_PROBLEM_H
#include "test.h"

typedef struct {
    int B, T, H, K, V;
    double *q, *k, *v, *beta, *g, *S0, *dout, *dSf;   /* inputs and upstream gradients */
} Problem;

static size_t nqk(const Problem *p) { return (size_t)p->B * p->T * p->H * p->K; }
static size_t nv(const Problem *p) { return (size_t)p->B * p->T * p->H * p->V; }
static size_t nb(const Problem *p) { return (size_t)p->B * p->T * p->H; }
static size_t ns(const Problem *p) { return (size_t)p->B * p->H * p->K * p->V; }

static void l2norm_rows(double *x, size_t rows, int n, double eps) {
    for (size_t r = 0; r < rows; r++) {
        double s = 0;
        for (int i = 0; i < n; i++) s += x[r * n + i] * x[r * n + i];
        for (int i = 0; i < n; i++) x[r * n + i] /= sqrt(s + eps);
    }
}

/* Random problem, drawn in this order: q, k Gaussian with std qk_std (then L2-normalised rows with
 * eps if normalise), v Gaussian, beta uniform in (0.1, 0.9), g uniform in (glo, ghi) if gated,
 * S0 std 0.5, dout and dS_final Gaussian. */
static Problem delta_problem(int B, int T, int H, int K, int V, int normalise, double qk_std, double eps,
                             int gated, double glo, double ghi, uint64_t seed) {
    Problem p = {B, T, H, K, V, 0, 0, 0, 0, 0, 0, 0, 0};
    DNRng r;
    dn_rng_seed(&r, seed);
    p.q = xcalloc(nqk(&p), sizeof(double)); p.k = xcalloc(nqk(&p), sizeof(double));
    p.v = xcalloc(nv(&p), sizeof(double));  p.dout = xcalloc(nv(&p), sizeof(double));
    p.beta = xcalloc(nb(&p), sizeof(double));
    if (gated) p.g = xcalloc(nb(&p), sizeof(double));
    p.S0 = xcalloc(ns(&p), sizeof(double)); p.dSf = xcalloc(ns(&p), sizeof(double));
    fill_randn_d(p.q, nqk(&p), &r, qk_std);
    fill_randn_d(p.k, nqk(&p), &r, qk_std);
    if (normalise) { l2norm_rows(p.q, nb(&p), K, eps); l2norm_rows(p.k, nb(&p), K, eps); }
    fill_randn_d(p.v, nv(&p), &r, 1.0);
    fill_uniform_d(p.beta, nb(&p), &r, 0.1, 0.9);
    if (gated) fill_uniform_d(p.g, nb(&p), &r, glo, ghi);
    fill_randn_d(p.S0, ns(&p), &r, 0.5);
    fill_randn_d(p.dout, nv(&p), &r, 1.0);
    fill_randn_d(p.dSf, ns(&p), &r, 1.0);
    return p;
}

static void free_problem(Problem *p) {
    free(p->q); free(p->k); free(p->v); free(p->beta); free(p->g); free(p->S0); free(p->dout); free(p->dSf);
}

/* A float copy of x[n] (free it): the float runs of the problem. */
static float *to_f32(const double *x, size_t n) {
    float *y = xcalloc(n, sizeof(float));
    for (size_t i = 0; i < n; i++) y[i] = (float)x[i];
    return y;
}

/* Outputs of one forward + backward. */
typedef struct { double *o, *Sf, *dq, *dk, *dv, *dbeta, *dg, *dS0; } Result;

static Result alloc_result(const Problem *p) {
    Result r;
    r.o = xcalloc(nv(p), sizeof(double));   r.Sf = xcalloc(ns(p), sizeof(double));
    r.dq = xcalloc(nqk(p), sizeof(double)); r.dk = xcalloc(nqk(p), sizeof(double));
    r.dv = xcalloc(nv(p), sizeof(double));  r.dbeta = xcalloc(nb(p), sizeof(double));
    r.dg = p->g ? xcalloc(nb(p), sizeof(double)) : NULL;
    r.dS0 = xcalloc(ns(p), sizeof(double));
    return r;
}
static void free_result(Result *r) {
    free(r->o); free(r->Sf); free(r->dq); free(r->dk); free(r->dv); free(r->dbeta); free(r->dg); free(r->dS0);
}
#endif
