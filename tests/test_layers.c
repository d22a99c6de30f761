/*
 * test_layers.c -- checks of the CPU reference layers (ref/embedding.c, matmul.c, rmsnorm.c, conv.c,
 * sigmoid.c, swiglu.c, rope.c, attention.c, crossentropy.c), everything but the delta rules.
 *
 * For every layer: the analytic backward against central finite differences in double (the
 * _f64 functions) of L = sum(r * out) for a random projection r, over every element of every input
 * and weight, on small odd shapes. Central differences with eps = 1e-6 on O(1) values carry about
 * 1e-16 * |L| / eps + eps^2 ~ 1e-10 of error, so we ask for a relative error below 1e-7 and see
 * ~1e-10. Then exact properties: sliding-window attention with window >= T is global attention,
 * window 1 returns v, RoPE's backward is its transpose, keeps pair norms and honours pos0; the
 * outputs against independent formulas written here; the float build against the double one.
 */
#include "../ref/reference.h"
#include "test.h"

#define FD_EPS 1e-6
#define FD_TOL 1e-7
#define F32_TOL 1e-5

static DNRng rng;

static double *dvec(size_t n, double scale) {
    double *x = xcalloc(n, sizeof(double));
    fill_randn_d(x, n, &rng, scale);
    return x;
}
static double *dzeros(size_t n) { return xcalloc(n, sizeof(double)); }
static double *dcopy(const double *x, size_t n) {
    double *y = xcalloc(n, sizeof(double));
    memcpy(y, x, n * sizeof(double));
    return y;
}
static float *tof(const double *x, size_t n) {
    float *y = xcalloc(n, sizeof(float));
    for (size_t i = 0; i < n; i++) y[i] = (float)x[i];
    return y;
}
static float *fzeros(size_t n) { return xcalloc(n, sizeof(float)); }
/* relative error of a float result against a double one (computed from the same float inputs) */
static double rel_fd(const float *a, const double *ref, size_t n) {
    double *ad = xcalloc(n, sizeof(double));
    for (size_t i = 0; i < n; i++) ad[i] = a[i];
    double e = rel_err_d(ad, ref, n);
    free(ad);
    return e;
}
/* the double version of a float array (so both precisions start from identical inputs) */
static double *tod(const float *x, size_t n) {
    double *y = xcalloc(n, sizeof(double));
    for (size_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}
/* An input of a float-vs-double check: n random values (std scale) rounded to float, returned, and
 * the same values as doubles in *d. */
static float *twin(size_t n, double scale, double **d) {
    double *x = dvec(n, scale);
    float *f = tof(x, n);
    free(x);
    *d = tod(f, n);
    return f;
}
static double dotd(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Central differences of f (which reads x through ctx) over all n elements of x, compared with the
 * analytic gradient ana: returns the relative error. */
typedef double (*LossFn)(void *ctx);
static double fd_check(LossFn f, void *ctx, double *x, size_t n, const double *ana) {
    double *num = dzeros(n);
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + FD_EPS; double lp = f(ctx);
        x[i] = x0 - FD_EPS; double lm = f(ctx);
        x[i] = x0;
        num[i] = (lp - lm) / (2 * FD_EPS);
    }
    double e = rel_err_d(ana, num, n);
    free(num);
    return e;
}

/* ---- embedding ------------------------------------------------------------------------------- */

typedef struct { int N, D; const int *tok; double *wte, *r, *out; } EmbCtx;
static double emb_loss(void *p) {
    EmbCtx *c = p;
    ref_embedding_forward_f64(c->out, c->tok, c->wte, c->N, c->D);
    return dotd(c->r, c->out, (size_t)c->N * c->D);
}

static void test_embedding(void) {
    int N = 9, D = 5, Vocab = 6;
    int tok[9] = {3, 0, 5, 3, 1, 3, 4, 0, 2};
    EmbCtx c = {N, D, tok, dvec((size_t)Vocab * D, 1), dvec((size_t)N * D, 1), dzeros((size_t)N * D)};
    emb_loss(&c);
    int rows_ok = 1;
    for (int n = 0; n < N; n++)
        for (int i = 0; i < D; i++) rows_ok &= c.out[n * D + i] == c.wte[tok[n] * D + i];
    CHECK(rows_ok, "embedding forward copies wte rows");
    double *dwte = dzeros((size_t)Vocab * D);
    ref_embedding_backward_f64(dwte, c.r, tok, N, D);
    CHECK_REL(fd_check(emb_loss, &c, c.wte, (size_t)Vocab * D, dwte), FD_TOL, "embedding fd dwte");

    float *wf = tof(c.wte, (size_t)Vocab * D), *rf = tof(c.r, (size_t)N * D);
    float *of = fzeros((size_t)N * D), *dwf = fzeros((size_t)Vocab * D);
    double *wd = tod(wf, (size_t)Vocab * D), *rd = tod(rf, (size_t)N * D);
    double *od = dzeros((size_t)N * D), *dwd = dzeros((size_t)Vocab * D);
    ref_embedding_forward(of, tok, wf, N, D);
    ref_embedding_backward(dwf, rf, tok, N, D);
    ref_embedding_forward_f64(od, tok, wd, N, D);
    ref_embedding_backward_f64(dwd, rd, tok, N, D);
    CHECK_REL(fmax(rel_fd(of, od, (size_t)N * D), rel_fd(dwf, dwd, (size_t)Vocab * D)), F32_TOL,
              "embedding float vs double");
    free(c.wte); free(c.r); free(c.out); free(dwte);
    free(wf); free(rf); free(of); free(dwf); free(wd); free(rd); free(od); free(dwd);
}

/* ---- linear ---------------------------------------------------------------------------------- */

typedef struct { int N, C, OC; double *x, *w, *r, *out; } LinCtx;
static double lin_loss(void *p) {
    LinCtx *c = p;
    ref_linear_forward_f64(c->out, c->x, c->w, c->N, c->C, c->OC);
    return dotd(c->r, c->out, (size_t)c->N * c->OC);
}

static void test_linear_shape(int N, int C, int OC) {
    size_t nx = (size_t)N * C, nw = (size_t)OC * C, no = (size_t)N * OC;
    LinCtx c = {N, C, OC, dvec(nx, 1), dvec(nw, 1), dvec(no, 1), dzeros(no)};
    lin_loss(&c);
    /* forward against the textbook triple loop */
    double *ref = dzeros(no);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++)
            for (int i = 0; i < C; i++) ref[n * OC + o] += c.x[n * C + i] * c.w[o * C + i];
    CHECK_REL(rel_err_d(c.out, ref, no), 1e-14, "linear N=%d C=%d OC=%d forward vs triple loop", N, C, OC);

    double *dx = dzeros(nx), *dw = dzeros(nw);
    ref_linear_backward_f64(dx, dw, c.r, c.x, c.w, N, C, OC);
    CHECK_REL(fd_check(lin_loss, &c, c.x, nx, dx), FD_TOL, "linear N=%d C=%d OC=%d fd dinp", N, C, OC);
    CHECK_REL(fd_check(lin_loss, &c, c.w, nw, dw), FD_TOL, "linear N=%d C=%d OC=%d fd dw", N, C, OC);

    /* NULL outputs are skipped, and gradients accumulate: two calls give exactly twice */
    double *dx2 = dcopy(dx, nx), *dw2 = dcopy(dw, nw);
    ref_linear_backward_f64(dx2, NULL, c.r, c.x, c.w, N, C, OC);
    ref_linear_backward_f64(NULL, dw2, c.r, c.x, c.w, N, C, OC);
    double e = 0;
    for (size_t i = 0; i < nx; i++) e = fmax(e, fabs(dx2[i] - 2 * dx[i]));
    for (size_t i = 0; i < nw; i++) e = fmax(e, fabs(dw2[i] - 2 * dw[i]));
    CHECK(e == 0, "linear backward accumulates, NULL skipped (max dev %g)", e);
    free(c.x); free(c.w); free(c.r); free(c.out); free(ref); free(dx); free(dw); free(dx2); free(dw2);
}

static void test_linear_f32(void) {
    int N = 13, C = 37, OC = 21;
    size_t nx = (size_t)N * C, nw = (size_t)OC * C, no = (size_t)N * OC;
    double *xd, *wd, *rd;
    float *xf = twin(nx, 1, &xd), *wf = twin(nw, 0.2, &wd), *rf = twin(no, 1, &rd);
    float *of = fzeros(no), *dxf = fzeros(nx), *dwf = fzeros(nw);
    double *od = dzeros(no), *dxd = dzeros(nx), *dwd = dzeros(nw);
    ref_linear_forward(of, xf, wf, N, C, OC);
    ref_linear_backward(dxf, dwf, rf, xf, wf, N, C, OC);
    ref_linear_forward_f64(od, xd, wd, N, C, OC);
    ref_linear_backward_f64(dxd, dwd, rd, xd, wd, N, C, OC);
    double e = fmax(rel_fd(of, od, no), fmax(rel_fd(dxf, dxd, nx), rel_fd(dwf, dwd, nw)));
    CHECK_REL(e, F32_TOL, "linear float vs double");
    free(xf); free(wf); free(rf); free(xd); free(wd); free(rd);
    free(of); free(dxf); free(dwf); free(od); free(dxd); free(dwd);
}

/* ---- rmsnorm --------------------------------------------------------------------------------- */

typedef struct { int N, C; double eps, *x, *g, *r, *out, *rstd; } RmsCtx;
static double rms_loss(void *p) {
    RmsCtx *c = p;
    ref_rmsnorm_forward_f64(c->out, c->rstd, c->x, c->g, c->N, c->C, c->eps);
    return dotd(c->r, c->out, (size_t)c->N * c->C);
}

static void test_rmsnorm(void) {
    int N = 7, C = 5;
    size_t n = (size_t)N * C;
    RmsCtx c = {N, C, 1e-6, dvec(n, 1), dvec(C, 0.3), dvec(n, 1), dzeros(n), dzeros(N)};
    for (int i = 0; i < C; i++) c.g[i] += 1;
    rms_loss(&c);
    /* independent: out / g has mean square ms / (ms + eps) per row */
    double e = 0;
    for (int r = 0; r < N; r++) {
        double ms = 0, my = 0;
        for (int i = 0; i < C; i++) {
            ms += c.x[r * C + i] * c.x[r * C + i] / C;
            double y = c.out[r * C + i] / c.g[i];
            my += y * y / C;
        }
        e = fmax(e, fabs(my - ms / (ms + c.eps)));
        e = fmax(e, fabs(c.rstd[r] - 1 / sqrt(ms + c.eps)) * sqrt(ms));
    }
    CHECK_REL(e, 1e-14, "rmsnorm forward: unit mean square, rstd");
    double *dx = dzeros(n), *dg = dzeros(C);
    ref_rmsnorm_backward_f64(dx, dg, c.r, c.x, c.g, c.rstd, N, C);
    CHECK_REL(fd_check(rms_loss, &c, c.x, n, dx), FD_TOL, "rmsnorm fd dinp");
    CHECK_REL(fd_check(rms_loss, &c, c.g, C, dg), FD_TOL, "rmsnorm fd dg");

    int N2 = 11, C2 = 24;
    size_t n2 = (size_t)N2 * C2;
    double *xd, *gd, *rd;
    float *xf = twin(n2, 1, &xd), *gf = twin(C2, 1, &gd), *rf = twin(n2, 1, &rd);
    float *of = fzeros(n2), *sf = fzeros(N2), *dxf = fzeros(n2), *dgf = fzeros(C2);
    double *od = dzeros(n2), *sd = dzeros(N2), *dxd = dzeros(n2), *dgd = dzeros(C2);
    ref_rmsnorm_forward(of, sf, xf, gf, N2, C2, 1e-6f);
    ref_rmsnorm_backward(dxf, dgf, rf, xf, gf, sf, N2, C2);
    ref_rmsnorm_forward_f64(od, sd, xd, gd, N2, C2, 1e-6);
    ref_rmsnorm_backward_f64(dxd, dgd, rd, xd, gd, sd, N2, C2);
    e = fmax(fmax(rel_fd(of, od, n2), rel_fd(sf, sd, N2)), fmax(rel_fd(dxf, dxd, n2), rel_fd(dgf, dgd, C2)));
    CHECK_REL(e, F32_TOL, "rmsnorm float vs double");
    free(c.x); free(c.g); free(c.r); free(c.out); free(c.rstd); free(dx); free(dg);
    free(xf); free(gf); free(rf); free(xd); free(gd); free(rd);
    free(of); free(sf); free(dxf); free(dgf); free(od); free(sd); free(dxd); free(dgd);
}

/* ---- conv + silu ----------------------------------------------------------------------------- */

typedef struct { int B, T, C, KS; double *x, *w, *r, *out; } ConvCtx;
static double conv_loss(void *p) {
    ConvCtx *c = p;
    ref_conv_silu_forward_f64(c->out, c->x, c->w, c->B, c->T, c->C, c->KS);
    return dotd(c->r, c->out, (size_t)c->B * c->T * c->C);
}

static double silu_ref(double z) { return z / (1 + exp(-z)); }

static void test_conv_shape(int B, int T, int C, int KS) {
    size_t n = (size_t)B * T * C, nw = (size_t)C * KS;
    ConvCtx c = {B, T, C, KS, dvec(n, 1), dvec(nw, 0.7), dvec(n, 1), dzeros(n)};
    double *dx = dzeros(n), *dw = dzeros(nw);
    ref_conv_silu_backward_f64(dx, dw, c.r, c.x, c.w, B, T, C, KS);
    CHECK_REL(fd_check(conv_loss, &c, c.x, n, dx), FD_TOL, "conv_silu B=%d T=%d C=%d KS=%d fd dinp", B, T, C, KS);
    CHECK_REL(fd_check(conv_loss, &c, c.w, nw, dw), FD_TOL, "conv_silu B=%d T=%d C=%d KS=%d fd dw", B, T, C, KS);
    free(c.x); free(c.w); free(c.r); free(c.out); free(dx); free(dw);
}

static void test_conv(void) {
    test_conv_shape(2, 7, 5, 4);
    test_conv_shape(1, 3, 3, 4); /* T < KS */
    /* impulse response: x = 1 at (b=1, t0, c) only, so out[t0 + m] = silu(w[c, KS-1-m]) for m < KS,
     * silu(0) = 0 elsewhere; the last tap multiplies the current token */
    int B = 2, T = 9, C = 3, KS = 4, t0 = 2;
    size_t n = (size_t)B * T * C;
    double *x = dzeros(n), *w = dvec((size_t)C * KS, 1), *out = dzeros(n);
    for (int ch = 0; ch < C; ch++) x[((size_t)1 * T + t0) * C + ch] = 1;
    ref_conv_silu_forward_f64(out, x, w, B, T, C, KS);
    double e = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int ch = 0; ch < C; ch++) {
                int m = t - t0;
                double want = (b == 1 && m >= 0 && m < KS) ? silu_ref(w[ch * KS + KS - 1 - m]) : 0;
                e = fmax(e, fabs(out[((size_t)b * T + t) * C + ch] - want));
            }
    CHECK(e < 1e-14, "conv_silu impulse response (max dev %g)", e);

    int B2 = 2, T2 = 19, C2 = 13;
    size_t n2 = (size_t)B2 * T2 * C2, nw2 = (size_t)C2 * KS;
    double *xd, *wd, *rd;
    float *xf = twin(n2, 1, &xd), *wf = twin(nw2, 0.5, &wd), *rf = twin(n2, 1, &rd);
    float *of = fzeros(n2), *dxf = fzeros(n2), *dwf = fzeros(nw2);
    double *od = dzeros(n2), *dxd = dzeros(n2), *dwd = dzeros(nw2);
    ref_conv_silu_forward(of, xf, wf, B2, T2, C2, KS);
    ref_conv_silu_backward(dxf, dwf, rf, xf, wf, B2, T2, C2, KS);
    ref_conv_silu_forward_f64(od, xd, wd, B2, T2, C2, KS);
    ref_conv_silu_backward_f64(dxd, dwd, rd, xd, wd, B2, T2, C2, KS);
    e = fmax(rel_fd(of, od, n2), fmax(rel_fd(dxf, dxd, n2), rel_fd(dwf, dwd, nw2)));
    CHECK_REL(e, F32_TOL, "conv_silu float vs double");
    free(x); free(w); free(out);
    free(xf); free(wf); free(rf); free(xd); free(wd); free(rd);
    free(of); free(dxf); free(dwf); free(od); free(dxd); free(dwd);
}

/* ---- l2norm, sigmoid, swiglu ----------------------------------------------------------------- */

typedef struct { int N, K; double eps, *x, *r, *out; } L2Ctx;
static double l2_loss(void *p) {
    L2Ctx *c = p;
    ref_l2norm_forward_f64(c->out, c->x, c->N, c->K, c->eps);
    return dotd(c->r, c->out, (size_t)c->N * c->K);
}

typedef struct { int N; double *x, *r, *out; } SigCtx;
static double sig_loss(void *p) {
    SigCtx *c = p;
    ref_sigmoid_forward_f64(c->out, c->x, c->N);
    return dotd(c->r, c->out, c->N);
}

typedef struct { int N; double *a, *u, *r, *out; } SwiCtx;
static double swi_loss(void *p) {
    SwiCtx *c = p;
    ref_swiglu_forward_f64(c->out, c->a, c->u, c->N);
    return dotd(c->r, c->out, c->N);
}

static void test_elementwise(void) {
    /* l2norm */
    int N = 7, K = 6;
    size_t n = (size_t)N * K;
    L2Ctx l = {N, K, DN_DEFAULT_L2_EPS, dvec(n, 1), dvec(n, 1), dzeros(n)};
    l2_loss(&l);
    double e = 0;
    for (int r = 0; r < N; r++) {
        double ss = dotd(l.x + r * K, l.x + r * K, K), so = dotd(l.out + r * K, l.out + r * K, K);
        e = fmax(e, fabs(so - ss / (ss + l.eps)));
    }
    CHECK_REL(e, 1e-14, "l2norm forward: squared norm ss/(ss+eps)");
    double *dx = dzeros(n);
    ref_l2norm_backward_f64(dx, l.r, l.x, N, K, l.eps);
    CHECK_REL(fd_check(l2_loss, &l, l.x, n, dx), FD_TOL, "l2norm fd dinp");

    /* sigmoid (backward from the saved output) */
    int M = 11;
    SigCtx s = {M, dvec(M, 2), dvec(M, 1), dzeros(M)};
    sig_loss(&s);
    e = 0;
    for (int i = 0; i < M; i++) e = fmax(e, fabs(s.out[i] - 0.5 * (1 + tanh(s.x[i] / 2))));
    CHECK(e < 1e-14, "sigmoid forward = (1 + tanh(x/2))/2 (max dev %g)", e);
    double *dsx = dzeros(M);
    ref_sigmoid_backward_f64(dsx, s.r, s.out, M);
    CHECK_REL(fd_check(sig_loss, &s, s.x, M, dsx), FD_TOL, "sigmoid fd dinp");

    /* swiglu */
    SwiCtx w = {M, dvec(M, 2), dvec(M, 1), dvec(M, 1), dzeros(M)};
    swi_loss(&w);
    e = 0;
    for (int i = 0; i < M; i++) e = fmax(e, fabs(w.out[i] - silu_ref(w.a[i]) * w.u[i]));
    CHECK(e < 1e-14, "swiglu forward = silu(gate) * up (max dev %g)", e);
    double *da = dzeros(M), *du = dzeros(M);
    ref_swiglu_backward_f64(da, du, w.r, w.a, w.u, M);
    CHECK_REL(fd_check(swi_loss, &w, w.a, M, da), FD_TOL, "swiglu fd dgate");
    CHECK_REL(fd_check(swi_loss, &w, w.u, M, du), FD_TOL, "swiglu fd dup");

    /* float vs double, all three */
    int N2 = 17, K2 = 16;
    size_t n2 = (size_t)N2 * K2;
    double *xd, *ud, *rd;
    float *xf = twin(n2, 2, &xd), *uf = twin(n2, 1, &ud), *rf = twin(n2, 1, &rd);
    float *of = fzeros(n2), *g1f = fzeros(n2), *g2f = fzeros(n2);
    double *od = dzeros(n2), *g1d = dzeros(n2), *g2d = dzeros(n2);
    ref_l2norm_forward(of, xf, N2, K2, DN_DEFAULT_L2_EPS);
    ref_l2norm_backward(g1f, rf, xf, N2, K2, DN_DEFAULT_L2_EPS);
    ref_l2norm_forward_f64(od, xd, N2, K2, DN_DEFAULT_L2_EPS);
    ref_l2norm_backward_f64(g1d, rd, xd, N2, K2, DN_DEFAULT_L2_EPS);
    CHECK_REL(fmax(rel_fd(of, od, n2), rel_fd(g1f, g1d, n2)), F32_TOL, "l2norm float vs double");
    memset(g1f, 0, n2 * sizeof(float)); memset(g1d, 0, n2 * sizeof(double));
    ref_sigmoid_forward(of, xf, (int)n2);
    ref_sigmoid_backward(g1f, rf, of, (int)n2);
    ref_sigmoid_forward_f64(od, xd, (int)n2);
    ref_sigmoid_backward_f64(g1d, rd, od, (int)n2);
    CHECK_REL(fmax(rel_fd(of, od, n2), rel_fd(g1f, g1d, n2)), F32_TOL, "sigmoid float vs double");
    memset(g1f, 0, n2 * sizeof(float)); memset(g1d, 0, n2 * sizeof(double));
    ref_swiglu_forward(of, xf, uf, (int)n2);
    ref_swiglu_backward(g1f, g2f, rf, xf, uf, (int)n2);
    ref_swiglu_forward_f64(od, xd, ud, (int)n2);
    ref_swiglu_backward_f64(g1d, g2d, rd, xd, ud, (int)n2);
    CHECK_REL(fmax(rel_fd(of, od, n2), fmax(rel_fd(g1f, g1d, n2), rel_fd(g2f, g2d, n2))), F32_TOL,
              "swiglu float vs double");
    free(l.x); free(l.r); free(l.out); free(dx); free(s.x); free(s.r); free(s.out); free(dsx);
    free(w.a); free(w.u); free(w.r); free(w.out); free(da); free(du);
    free(xf); free(uf); free(rf); free(xd); free(ud); free(rd);
    free(of); free(g1f); free(g2f); free(od); free(g1d); free(g2d);
}

/* ---- rope ------------------------------------------------------------------------------------ */

typedef struct { int B, T, H, d, pos0; double base, *x, *r, *out; } RopeCtx;
static double rope_loss(void *p) {
    RopeCtx *c = p;
    size_t n = (size_t)c->B * c->T * c->H * c->d;
    memcpy(c->out, c->x, n * sizeof(double));
    ref_rope_forward_f64(c->out, c->B, c->T, c->H, c->d, c->base, c->pos0);
    return dotd(c->r, c->out, n);
}

static void test_rope(void) {
    int B = 2, T = 7, H = 3, d = 6, pos0 = 5, half = d / 2;
    double base = 10000;
    size_t n = (size_t)B * T * H * d;
    RopeCtx c = {B, T, H, d, pos0, base, dvec(n, 1), dvec(n, 1), dzeros(n)};
    /* gradient: L = <r, rope(x)>, so dL/dx = rope_backward(r) */
    double *dx = dcopy(c.r, n);
    ref_rope_backward_f64(dx, B, T, H, d, base, pos0);
    CHECK_REL(fd_check(rope_loss, &c, c.x, n, dx), FD_TOL, "rope fd dx");

    /* transpose: <rope(x), y> = <x, rope_backward(y)> */
    double *x = dvec(n, 1), *y = dvec(n, 1), *rx = dcopy(x, n), *by = dcopy(y, n);
    ref_rope_forward_f64(rx, B, T, H, d, base, pos0);
    ref_rope_backward_f64(by, B, T, H, d, base, pos0);
    double lhs = dotd(rx, y, n), rhs = dotd(x, by, n);
    CHECK_REL(fabs(lhs - rhs) / fabs(lhs), 1e-13, "rope <rope(x), y> = <x, rope_backward(y)>");
    /* per-pair norm kept, and backward undoes forward */
    double e = 0;
    for (size_t row = 0; row < n / d; row++)
        for (int i = 0; i < half; i++) {
            const double *a = x + row * d, *b2 = rx + row * d;
            double na = a[i] * a[i] + a[i + half] * a[i + half], nb = b2[i] * b2[i] + b2[i + half] * b2[i + half];
            e = fmax(e, fabs(na - nb) / na);
        }
    CHECK_REL(e, 1e-14, "rope keeps every pair's norm");
    ref_rope_backward_f64(rx, B, T, H, d, base, pos0);
    CHECK_REL(rel_err_d(rx, x, n), 1e-14, "rope_backward(rope(x)) = x");

    /* pos0 offset = slicing a longer sequence: rope the rows [p, p+T) of a T2 sequence from 0 */
    int T2 = 12, p = 4;
    size_t n2 = (size_t)B * T2 * H * d, row = (size_t)H * d;
    double *xl = dvec(n2, 1), *rl = dcopy(xl, n2), *xs = dzeros(n), *rs = dzeros(n);
    ref_rope_forward_f64(rl, B, T2, H, d, base, 0);
    for (int b = 0; b < B; b++) memcpy(xs + (size_t)b * T * row, xl + ((size_t)b * T2 + p) * row, T * row * sizeof(double));
    ref_rope_forward_f64(xs, B, T, H, d, base, p);
    for (int b = 0; b < B; b++) memcpy(rs + (size_t)b * T * row, rl + ((size_t)b * T2 + p) * row, T * row * sizeof(double));
    CHECK_REL(rel_err_d(xs, rs, n), 1e-15, "rope with pos0=%d = rows %d.. of a longer sequence", p, p);

    /* explicit values: d = 4, x = (1, 0, 0, 0) and (0, 1, 0, 0) at position 3, base 10000:
     * pair 0 turns by 3 rad, pair 1 by 3 * 10000^(-1/2) = 0.03 rad */
    double v[8] = {1, 0, 0, 0, 0, 1, 0, 0};
    ref_rope_forward_f64(v, 1, 2, 1, 4, 10000, 2); /* row 0 at position 2, row 1 at position 3 */
    double want[8] = {cos(2.0), 0, sin(2.0), 0, 0, cos(0.03), 0, sin(0.03)};
    CHECK_REL(rel_err_d(v, want, 8), 1e-14, "rope explicit angles (pos*base^(-2i/d), halves paired)");

    float *xf = tof(x, n);
    double *xd = tod(xf, n);
    ref_rope_forward(xf, B, T, H, d, 10000.f, pos0);
    ref_rope_forward_f64(xd, B, T, H, d, 10000., pos0);
    double ef = rel_fd(xf, xd, n);
    ref_rope_backward(xf, B, T, H, d, 500.f, 3);
    ref_rope_backward_f64(xd, B, T, H, d, 500., 3);
    CHECK_REL(fmax(ef, rel_fd(xf, xd, n)), F32_TOL, "rope float vs double");
    free(c.x); free(c.r); free(c.out); free(dx); free(x); free(y); free(rx); free(by);
    free(xl); free(rl); free(xs); free(rs); free(xf); free(xd);
}

/* ---- attention ------------------------------------------------------------------------------- */

typedef struct { int B, T, Hq, Hkv, d, window; double *q, *k, *v, *r, *out, *lse; } AttCtx;
static double att_loss(void *p) {
    AttCtx *c = p;
    ref_attention_forward_f64(c->out, c->lse, c->q, c->k, c->v, c->B, c->T, c->Hq, c->Hkv, c->d, c->window);
    return dotd(c->r, c->out, (size_t)c->B * c->T * c->Hq * c->d);
}

static AttCtx att_make(int B, int T, int Hq, int Hkv, int d, int window) {
    size_t nq = (size_t)B * T * Hq * d, nk = (size_t)B * T * Hkv * d;
    AttCtx c = {B, T, Hq, Hkv, d, window, dvec(nq, 1), dvec(nk, 1), dvec(nk, 1), dvec(nq, 1),
                dzeros(nq), dzeros((size_t)B * Hq * T)};
    return c;
}
static void att_free(AttCtx *c) { free(c->q); free(c->k); free(c->v); free(c->r); free(c->out); free(c->lse); }

/* forward against a dense masked softmax written out here */
static double att_dense_err(const AttCtx *c) {
    int T = c->T, d = c->d, g = c->Hq / c->Hkv;
    double *s = dzeros(T), err = 0, den = 0;
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < c->Hq; h++)
            for (int t = 0; t < T; t++) {
                const double *qt = c->q + (((size_t)b * T + t) * c->Hq + h) * d;
                double m = -INFINITY, z = 0;
                for (int j = 0; j < T; j++) {
                    int visible = j <= t && (c->window <= 0 || j > t - c->window);
                    s[j] = visible ? dotd(qt, c->k + (((size_t)b * T + j) * c->Hkv + h / g) * d, d) / sqrt(d) : -INFINITY;
                    m = fmax(m, s[j]);
                }
                for (int j = 0; j < T; j++) z += exp(s[j] - m);
                for (int i = 0; i < d; i++) {
                    double o = 0;
                    for (int j = 0; j < T; j++) o += exp(s[j] - m) / z * c->v[(((size_t)b * T + j) * c->Hkv + h / g) * d + i];
                    double got = c->out[(((size_t)b * T + t) * c->Hq + h) * d + i];
                    err += (got - o) * (got - o);
                    den += o * o;
                }
                double lse = c->lse[((size_t)b * c->Hq + h) * T + t];
                err += (lse - (m + log(z))) * (lse - (m + log(z)));
                den += lse * lse;
            }
    free(s);
    return sqrt(err / den);
}

static void test_attention_fd(int B, int T, int Hq, int Hkv, int d, int window) {
    AttCtx c = att_make(B, T, Hq, Hkv, d, window);
    size_t nq = (size_t)B * T * Hq * d, nk = (size_t)B * T * Hkv * d;
    att_loss(&c);
    CHECK_REL(att_dense_err(&c), 1e-14, "attention Hq=%d Hkv=%d d=%d window=%d forward vs dense masked softmax",
              Hq, Hkv, d, window);
    double *dq = dzeros(nq), *dk = dzeros(nk), *dv = dzeros(nk);
    ref_attention_backward_f64(dq, dk, dv, c.r, c.q, c.k, c.v, c.out, c.lse, B, T, Hq, Hkv, d, window);
    double eq = fd_check(att_loss, &c, c.q, nq, dq);
    double ek = fd_check(att_loss, &c, c.k, nk, dk);
    double ev = fd_check(att_loss, &c, c.v, nk, dv);
    CHECK_REL(eq, FD_TOL, "attention B=%d T=%d Hq=%d Hkv=%d d=%d window=%d fd dq", B, T, Hq, Hkv, d, window);
    CHECK_REL(ek, FD_TOL, "attention B=%d T=%d Hq=%d Hkv=%d d=%d window=%d fd dk", B, T, Hq, Hkv, d, window);
    CHECK_REL(ev, FD_TOL, "attention B=%d T=%d Hq=%d Hkv=%d d=%d window=%d fd dv", B, T, Hq, Hkv, d, window);
    free(dq); free(dk); free(dv);
    att_free(&c);
}

/* forward out/lse and backward dq/dk/dv for one window, on c's inputs */
static void att_run(AttCtx *c, int window, double *out, double *lse, double *dq, double *dk, double *dv) {
    ref_attention_forward_f64(out, lse, c->q, c->k, c->v, c->B, c->T, c->Hq, c->Hkv, c->d, window);
    ref_attention_backward_f64(dq, dk, dv, c->r, c->q, c->k, c->v, out, lse, c->B, c->T, c->Hq, c->Hkv, c->d, window);
}

static void test_attention_props(int Hq, int Hkv) {
    int B = 2, T = 7, d = 6;
    AttCtx c = att_make(B, T, Hq, Hkv, d, 0);
    size_t nq = (size_t)B * T * Hq * d, nk = (size_t)B * T * Hkv * d, nl = (size_t)B * Hq * T;
    double *o0 = dzeros(nq), *l0 = dzeros(nl), *q0 = dzeros(nq), *k0 = dzeros(nk), *v0 = dzeros(nk);
    att_run(&c, 0, o0, l0, q0, k0, v0);
    int windows[2] = {T, T + 5};
    for (int wi = 0; wi < 2; wi++) {
        double *o1 = dzeros(nq), *l1 = dzeros(nl), *q1 = dzeros(nq), *k1 = dzeros(nk), *v1 = dzeros(nk);
        att_run(&c, windows[wi], o1, l1, q1, k1, v1);
        double e = fmax(fmax(rel_err_d(o1, o0, nq), rel_err_d(l1, l0, nl)),
                        fmax(rel_err_d(q1, q0, nq), fmax(rel_err_d(k1, k0, nk), rel_err_d(v1, v0, nk))));
        CHECK_REL(e, 1e-12, "attention Hq=%d Hkv=%d window=%d (>= T) = global, out/lse/dq/dk/dv", Hq, Hkv, windows[wi]);
        free(o1); free(l1); free(q1); free(k1); free(v1);
    }
    /* window 1: every position attends only to itself, so out = its own v and lse = q.k/sqrt(d) */
    ref_attention_forward_f64(o0, l0, c.q, c.k, c.v, B, T, Hq, Hkv, d, 1);
    double e = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < Hq; h++) {
                const double *kv = c.v + (((size_t)b * T + t) * Hkv + h / (Hq / Hkv)) * d;
                const double *o = o0 + (((size_t)b * T + t) * Hq + h) * d;
                for (int i = 0; i < d; i++) e = fmax(e, fabs(o[i] - kv[i]));
            }
    CHECK(e < 1e-15, "attention Hq=%d Hkv=%d window=1: out = v of the same position (max dev %g)", Hq, Hkv, e);
    free(o0); free(l0); free(q0); free(k0); free(v0);
    att_free(&c);
}

static void test_attention_f32(void) {
    int B = 2, T = 23, Hq = 4, Hkv = 2, d = 8, window = 5;
    for (int pass = 0; pass < 2; pass++) {
        int w = pass ? window : 0;
        size_t nq = (size_t)B * T * Hq * d, nk = (size_t)B * T * Hkv * d, nl = (size_t)B * Hq * T;
        double *qd, *kd, *vd, *rd;
        float *qf = twin(nq, 1, &qd), *kf = twin(nk, 1, &kd), *vf = twin(nk, 1, &vd), *rf = twin(nq, 1, &rd);
        float *of = fzeros(nq), *lf = fzeros(nl), *dqf = fzeros(nq), *dkf = fzeros(nk), *dvf = fzeros(nk);
        double *od = dzeros(nq), *ld = dzeros(nl), *dqd = dzeros(nq), *dkd = dzeros(nk), *dvd = dzeros(nk);
        ref_attention_forward(of, lf, qf, kf, vf, B, T, Hq, Hkv, d, w);
        ref_attention_backward(dqf, dkf, dvf, rf, qf, kf, vf, of, lf, B, T, Hq, Hkv, d, w);
        ref_attention_forward_f64(od, ld, qd, kd, vd, B, T, Hq, Hkv, d, w);
        ref_attention_backward_f64(dqd, dkd, dvd, rd, qd, kd, vd, od, ld, B, T, Hq, Hkv, d, w);
        double e = fmax(fmax(rel_fd(of, od, nq), rel_fd(lf, ld, nl)),
                        fmax(rel_fd(dqf, dqd, nq), fmax(rel_fd(dkf, dkd, nk), rel_fd(dvf, dvd, nk))));
        CHECK_REL(e, F32_TOL, "attention window=%d float vs double", w);
        free(qf); free(kf); free(vf); free(rf);
        free(qd); free(kd); free(vd); free(rd); free(of); free(lf); free(dqf); free(dkf); free(dvf);
        free(od); free(ld); free(dqd); free(dkd); free(dvd);
    }
}

static void test_attention(void) {
    int B = 2, T = 7, d = 6;
    int kv[3][2] = {{3, 3}, {3, 1}, {4, 2}};
    int windows[4] = {0, 1, 3, T};
    for (int s = 0; s < 3; s++)
        for (int w = 0; w < 4; w++) test_attention_fd(B, T, kv[s][0], kv[s][1], d, windows[w]);
    for (int s = 0; s < 3; s++) test_attention_props(kv[s][0], kv[s][1]);
    test_attention_f32();
}

/* ---- cross-entropy --------------------------------------------------------------------------- */

typedef struct { int N, V, ld; double dloss, *z; const int *tgt; } XentCtx;
static double xent_loss(void *p) {
    XentCtx *c = p;
    return c->dloss * ref_crossentropy_forward_f64(NULL, c->z, c->tgt, c->N, c->V, c->ld);
}

static void test_crossentropy(void) {
    int N = 5, V = 7, ld = 9;
    int tgt[5] = {0, 6, 3, 3, 5};
    size_t n = (size_t)N * ld;
    XentCtx c = {N, V, ld, 0.7, dvec(n, 2), tgt};
    for (int r = 0; r < N; r++)
        for (int j = V; j < ld; j++) c.z[r * ld + j] = 30 + j; /* padding: large, must be ignored */
    /* forward: per-row losses against log-softmax written out, mean returned */
    double losses[5], want_mean = 0, e = 0;
    double mean = ref_crossentropy_forward_f64(losses, c.z, tgt, N, V, ld);
    for (int r = 0; r < N; r++) {
        double z = 0;
        for (int j = 0; j < V; j++) z += exp(c.z[r * ld + j]);
        double want = log(z) - c.z[r * ld + tgt[r]];
        e = fmax(e, fabs(losses[r] - want) / want);
        want_mean += want / N;
    }
    e = fmax(e, fabs(mean - want_mean) / want_mean);
    CHECK_REL(e, 1e-14, "crossentropy forward: losses and mean vs log-softmax (padding ignored)");
    double *dz = dzeros(n);
    ref_crossentropy_backward_f64(dz, c.z, tgt, N, V, ld, c.dloss);
    int pad_zero = 1;
    for (int r = 0; r < N; r++)
        for (int j = V; j < ld; j++) pad_zero &= dz[r * ld + j] == 0;
    CHECK(pad_zero, "crossentropy: padded columns get exactly zero gradient");
    double rowsum = 0; /* each row's gradient sums to zero */
    for (int r = 0; r < N; r++) {
        double s = 0;
        for (int j = 0; j < V; j++) s += dz[r * ld + j];
        rowsum = fmax(rowsum, fabs(s));
    }
    CHECK(rowsum < 1e-14, "crossentropy: gradient rows sum to zero (max %g)", rowsum);
    CHECK_REL(fd_check(xent_loss, &c, c.z, n, dz), FD_TOL, "crossentropy N=%d V=%d ld=%d fd dlogits", N, V, ld);

    /* stability: shifting all logits by +-1000 changes nothing (and stays finite in float) */
    double *zs = dcopy(c.z, n), *dzs = dzeros(n);
    for (size_t i = 0; i < n; i++) zs[i] += 1000;
    double ms = ref_crossentropy_forward_f64(NULL, zs, tgt, N, V, ld);
    ref_crossentropy_backward_f64(dzs, zs, tgt, N, V, ld, c.dloss);
    CHECK_REL(fmax(fabs(ms - mean) / mean, rel_err_d(dzs, dz, n)), 1e-11, "crossentropy logits + 1000 (double)");
    float *zf = tof(c.z, n), *dzf = fzeros(n);
    for (size_t i = 0; i < n; i++) zf[i] -= 1000;
    float mf = ref_crossentropy_forward(NULL, zf, tgt, N, V, ld);
    ref_crossentropy_backward(dzf, zf, tgt, N, V, ld, 0.7f);
    CHECK_REL(fmax(fabs(mf - mean) / mean, rel_fd(dzf, dz, n)), 1e-3, "crossentropy logits - 1000 (float, finite)");
    /* uniform logits: loss = log V */
    double *zu = dzeros(n);
    double mu = ref_crossentropy_forward_f64(NULL, zu, tgt, N, V, ld);
    CHECK_REL(fabs(mu - log(V)) / log(V), 1e-14, "crossentropy uniform logits = log V");

    int N2 = 6, V2 = 300, ld2 = 384;
    int tgt2[6] = {0, 299, 17, 150, 150, 2};
    size_t n2 = (size_t)N2 * ld2;
    double *z0 = dvec(n2, 3);
    float *zf2 = tof(z0, n2), *lf = fzeros(N2), *dzf2 = fzeros(n2);
    double *zd2 = tod(zf2, n2), *ld_ = dzeros(N2), *dzd2 = dzeros(n2);
    float mf2 = ref_crossentropy_forward(lf, zf2, tgt2, N2, V2, ld2);
    double md2 = ref_crossentropy_forward_f64(ld_, zd2, tgt2, N2, V2, ld2);
    ref_crossentropy_backward(dzf2, zf2, tgt2, N2, V2, ld2, 1.3f);
    ref_crossentropy_backward_f64(dzd2, zd2, tgt2, N2, V2, ld2, 1.3);
    e = fmax(fabs(mf2 - md2) / md2, fmax(rel_fd(lf, ld_, N2), rel_fd(dzf2, dzd2, n2)));
    CHECK_REL(e, F32_TOL, "crossentropy float vs double");
    free(c.z); free(dz); free(zs); free(dzs); free(zf); free(dzf); free(zu);
    free(z0); free(zf2); free(lf); free(dzf2); free(zd2); free(ld_); free(dzd2);
}

int main(void) {
    dn_rng_seed(&rng, 42);
    test_embedding();
    test_linear_shape(7, 5, 6);  /* one block of four output columns and a tail of two */
    test_linear_shape(3, 9, 3);  /* tail only */
    test_linear_shape(4, 1, 8);  /* C = 1, blocks only */
    test_linear_f32();
    test_rmsnorm();
    test_conv();
    test_elementwise();
    test_rope();
    test_attention();
    test_crossentropy();
    return test_summary("test_layers");
}
