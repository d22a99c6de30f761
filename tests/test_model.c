/*
 * test_model.c -- the whole CPU reference model: finite-difference gradient check (float64,
 * central differences) of the mean loss with respect to EVERY element of EVERY parameter tensor
 * of small hybrid models (DeltaNet + sliding-window + global attention with grouped KV heads,
 * tied and untied LM head, padded vocab rows; gated DeltaNet alone and in hybrids, A_log and
 * dt_bias included, with the default and an odd head geometry); chunkwise == sequential delta
 * rule inside the model (gated too);
 * a sliding-window layer with window >= T equals a global one; float == double.
 */
#include "test.h"
#include "../ref/reference.h"

/* vocab 37 padded to 40: the padding rows must stay out of the loss and the gradients */
static void small_config(DNConfig *c, const char *layers, int tied) {
    test_config(c, layers, 12, 2, 6, 20, 37, 40, 2, 1, 3, tied);
}

static void random_tokens(int *x, int n, int vocab, DNRng *r) {
    for (int i = 0; i < n; i++) x[i] = (int)(dn_rng_u64(r) % (uint64_t)vocab);
}

/* Parameters in double: the table's init (std 0.02 is too flat for a sharp check), rescaled to
 * std 0.3 so every path carries signal, norm gains randomised around 1. */
static double *random_params(const DNParamTable *t, DNRng *r) {
    double *p = xcalloc(t->total, sizeof(double));
    for (int i = 0; i < t->n_params; i++) {
        const DNParam *q = &t->params[i];
        for (size_t j = 0; j < q->numel; j++)
            p[q->offset + j] = q->init_std == 0.0f ? 1.0 + 0.2 * dn_rng_normal(r) : 0.3 * dn_rng_normal(r);
    }
    return p;
}

/* gdn: {heads, key size, expand_v} of the 'N' layers, or NULL for the default geometry */
static void fd_check_model_gdn(const char *layers, int tied, int chunk, const int *gdn) {
    DNConfig c;
    small_config(&c, layers, tied);
    if (gdn) { c.gdn_heads = gdn[0]; c.gdn_head_dim = gdn[1]; c.gdn_expand_v = gdn[2]; }
    DNParamTable t;
    char err[256];
    CHECK(dn_build_param_table(&t, &c, err, sizeof err) == 0, "param table: %s", err);
    int B = 2, T = 9, N = B * T;
    DNRng r;
    dn_rng_seed(&r, 42 + (uint64_t)tied * 7 + (uint64_t)chunk);
    double *params = random_params(&t, &r);
    double *grads = xcalloc(t.total, sizeof(double));
    int *in = xcalloc((size_t)N, sizeof(int)), *tg = xcalloc((size_t)N, sizeof(int));
    random_tokens(in, N, c.vocab_size, &r);
    random_tokens(tg, N, c.vocab_size, &r);
    RefModel_f64 *m = ref_model_create_f64(&t, B, T, chunk);
    double loss = ref_model_forward_f64(m, params, in, tg);
    CHECK(isfinite(loss) && loss > 0, "loss %g", loss);
    ref_model_backward_f64(m, params, grads);
    const double h = 1e-6;
    double worst = 0;
    for (int i = 0; i < t.n_params; i++) {
        const DNParam *p = &t.params[i];
        double num = 0, den = 0;
        for (size_t j = 0; j < p->numel; j++) {
            double *w = &params[p->offset + j], save = *w;
            *w = save + h;
            double lp = ref_model_forward_f64(m, params, in, tg);
            *w = save - h;
            double lm = ref_model_forward_f64(m, params, in, tg);
            *w = save;
            double fd = (lp - lm) / (2 * h), an = grads[p->offset + j];
            num += (fd - an) * (fd - an);
            den += fd * fd;
        }
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        if (rel > worst) worst = rel;
        if (rel > 1e-6 || den == 0)
            CHECK(0, "%s layers=%s tied=%d chunk=%d: grad of %s rel err %.3e (|fd|=%.3e)", "fd", layers, tied, chunk, p->name, rel, sqrt(den));
        else
            t_passed++;
    }
    /* padding rows of the vocab tensors get no gradient */
    double pad = 0;
    for (size_t j = (size_t)c.vocab_size * c.d_model; j < (size_t)c.padded_vocab * c.d_model; j++) pad += fabs(grads[t.embed + j]) + fabs(grads[t.lm_head + j]);
    CHECK(pad == 0, "padding rows received gradient %g", pad);
    printf("  ok  full-model FD, layers %s, %s, chunk %d%s: %d tensors, %zu elements, worst tensor rel err %.3e (tol 1e-6)\n",
           layers, tied ? "tied" : "untied", chunk, gdn ? ", GDN heads 3 x K 2 x expand_v 3" : "", t.n_params, t.total_real, worst);
    ref_model_free_f64(m);
    free(params); free(grads); free(in); free(tg);
    dn_free_param_table(&t);
}

static void fd_check_model(const char *layers, int tied, int chunk) { fd_check_model_gdn(layers, tied, chunk, NULL); }

/* Chunkwise and sequential delta rule give the same loss and gradients inside the model. */
static void chunk_vs_recurrent(const char *layers) {
    DNConfig c;
    small_config(&c, layers, 0);
    DNParamTable t;
    char err[256];
    dn_build_param_table(&t, &c, err, sizeof err);
    int B = 2, T = 37, N = B * T;
    DNRng r;
    dn_rng_seed(&r, 5);
    double *params = random_params(&t, &r);
    double *g1 = xcalloc(t.total, sizeof(double)), *g2 = xcalloc(t.total, sizeof(double));
    int *in = xcalloc((size_t)N, sizeof(int)), *tg = xcalloc((size_t)N, sizeof(int));
    random_tokens(in, N, c.vocab_size, &r);
    random_tokens(tg, N, c.vocab_size, &r);
    RefModel_f64 *a = ref_model_create_f64(&t, B, T, 8), *b = ref_model_create_f64(&t, B, T, 0);
    double la = ref_model_forward_f64(a, params, in, tg), lb = ref_model_forward_f64(b, params, in, tg);
    ref_model_backward_f64(a, params, g1);
    ref_model_backward_f64(b, params, g2);
    CHECK_REL(fabs(la - lb) / fabs(lb), 1e-13, "model %s loss, chunk 8 vs sequential (T=37)", layers);
    CHECK_REL(rel_err_d(ref_model_logits_f64(a), ref_model_logits_f64(b), (size_t)N * c.vocab_size), 1e-13, "model %s logits, chunk 8 vs sequential", layers);
    CHECK_REL(rel_err_d(g1, g2, t.total), 1e-12, "model %s gradients, chunk 8 vs sequential", layers);
    ref_model_free_f64(a); ref_model_free_f64(b);
    free(params); free(g1); free(g2); free(in); free(tg);
    dn_free_param_table(&t);
}

/* A sliding-window layer whose window covers the sequence is exactly a global layer (same
 * tensors, same names), so the whole model agrees. */
static void swa_equals_global(void) {
    DNConfig cs, cg;
    small_config(&cs, "DSD", 1);
    small_config(&cg, "DGD", 1);
    int B = 2, T = 11, N = B * T;
    cs.window = T;
    DNParamTable ts, tg_;
    char err[256];
    dn_build_param_table(&ts, &cs, err, sizeof err);
    dn_build_param_table(&tg_, &cg, err, sizeof err);
    CHECK(ts.total == tg_.total, "S and G tables differ in size");
    DNRng r;
    dn_rng_seed(&r, 9);
    double *params = random_params(&ts, &r);
    double *g1 = xcalloc(ts.total, sizeof(double)), *g2 = xcalloc(ts.total, sizeof(double));
    int *in = xcalloc((size_t)N, sizeof(int)), *tg = xcalloc((size_t)N, sizeof(int));
    random_tokens(in, N, cs.vocab_size, &r);
    random_tokens(tg, N, cs.vocab_size, &r);
    RefModel_f64 *a = ref_model_create_f64(&ts, B, T, 4), *b = ref_model_create_f64(&tg_, B, T, 4);
    double la = ref_model_forward_f64(a, params, in, tg), lb = ref_model_forward_f64(b, params, in, tg);
    ref_model_backward_f64(a, params, g1);
    ref_model_backward_f64(b, params, g2);
    CHECK(la == lb, "window >= T loss %.17g != global %.17g", la, lb);
    CHECK_REL(rel_err_d(g1, g2, ts.total), 1e-15, "model with window >= T vs global: gradients");
    /* and a window smaller than T really changes the result */
    ref_model_free_f64(a);
    cs.window = 3;
    DNParamTable t3;
    dn_build_param_table(&t3, &cs, err, sizeof err);
    a = ref_model_create_f64(&t3, B, T, 4);
    double l3 = ref_model_forward_f64(a, params, in, tg);
    CHECK(fabs(l3 - lb) > 1e-9, "window 3 should differ from global (loss %.17g vs %.17g)", l3, lb);
    ref_model_free_f64(a); ref_model_free_f64(b);
    dn_free_param_table(&t3);
    free(params); free(g1); free(g2); free(in); free(tg);
    dn_free_param_table(&ts); dn_free_param_table(&tg_);
}

/* float and double builds of the same model agree. */
static void float_vs_double(void) {
    DNConfig c;
    small_config(&c, "DSGD", 0);
    c.d_model = 32; c.head_dim = 16; c.hidden_size = 64; c.vocab_size = 100; c.padded_vocab = 128;
    DNParamTable t;
    char err[256];
    dn_build_param_table(&t, &c, err, sizeof err);
    int B = 2, T = 70, N = B * T;
    float *pf = xcalloc(t.total, sizeof(float)), *gf = xcalloc(t.total, sizeof(float));
    double *pd = xcalloc(t.total, sizeof(double)), *gd = xcalloc(t.total, sizeof(double));
    dn_init_params(&t, pf, 1234);
    for (size_t i = 0; i < t.total; i++) pd[i] = pf[i];
    DNRng r;
    dn_rng_seed(&r, 77);
    int *in = xcalloc((size_t)N, sizeof(int)), *tg = xcalloc((size_t)N, sizeof(int));
    random_tokens(in, N, c.vocab_size, &r);
    random_tokens(tg, N, c.vocab_size, &r);
    RefModel *mf = ref_model_create(&t, B, T, 64);
    RefModel_f64 *md = ref_model_create_f64(&t, B, T, 64);
    float lf = ref_model_forward(mf, pf, in, tg);
    double ld = ref_model_forward_f64(md, pd, in, tg);
    ref_model_backward(mf, pf, gf);
    ref_model_backward_f64(md, pd, gd);
    CHECK_REL(fabs(lf - ld) / ld, 1e-6, "float vs double model loss (%.6f)", ld);
    CHECK(fabs(ld - log(c.vocab_size)) < 0.05, "initial loss %.4f should be near ln(V) = %.4f", ld, log(c.vocab_size));
    double num = 0, den = 0;
    for (size_t i = 0; i < t.total; i++) { double d = gf[i] - gd[i]; num += d * d; den += gd[i] * gd[i]; }
    CHECK_REL(sqrt(num / den), 1e-4, "float vs double model gradients");
    ref_model_free(mf); ref_model_free_f64(md);
    free(pf); free(gf); free(pd); free(gd); free(in); free(tg);
    dn_free_param_table(&t);
}

int main(void) {
    fd_check_model("DSGD", 0, 4);
    fd_check_model("DSGD", 1, 4);
    fd_check_model("GDS", 0, 0);
    /* gated DeltaNet: alone, in a hybrid with every other kind, the sequential form, an odd geometry */
    static const int odd_gdn[3] = {3, 2, 3};
    fd_check_model("NN", 0, 4);
    fd_check_model("NSNG", 1, 4);
    fd_check_model("DNG", 0, 0);
    fd_check_model_gdn("NS", 1, 4, odd_gdn);
    chunk_vs_recurrent("DDSG");
    chunk_vs_recurrent("NNSG");
    swa_equals_global();
    float_vs_double();
    return test_summary("test_model");
}
