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

/* N random input tokens and N random targets (free with batch_free). */
typedef struct { int *in, *tg; } Batch;
static Batch random_batch(int N, int vocab, DNRng *r) {
    Batch b = {xcalloc((size_t)N, sizeof(int)), xcalloc((size_t)N, sizeof(int))};
    random_tokens(b.in, N, vocab, r);
    random_tokens(b.tg, N, vocab, r);
    return b;
}
static void batch_free(Batch *b) { free(b->in); free(b->tg); }

/* The loss of model m on batch b, its gradients added into grads. */
static double loss_and_grads(RefModel_f64 *m, const double *params, const Batch *b, double *grads) {
    double loss = ref_model_forward_f64(m, params, b->in, b->tg);
    ref_model_backward_f64(m, params, grads);
    return loss;
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
    double *params = test_random_params(&t, &r);
    double *grads = xcalloc(t.total, sizeof(double));
    Batch bt = random_batch(N, c.vocab_size, &r);
    RefModel_f64 *m = ref_model_create_f64(&t, B, T, chunk);
    double loss = loss_and_grads(m, params, &bt, grads);
    CHECK(isfinite(loss) && loss > 0, "loss %g", loss);
    const double h = 1e-6;
    double worst = 0;
    for (int i = 0; i < t.n_params; i++) {
        const DNParam *p = &t.params[i];
        double num = 0, den = 0;
        for (size_t j = 0; j < p->numel; j++) {
            double *w = &params[p->offset + j], save = *w;
            *w = save + h;
            double lp = ref_model_forward_f64(m, params, bt.in, bt.tg);
            *w = save - h;
            double lm = ref_model_forward_f64(m, params, bt.in, bt.tg);
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
    /* the gate parameters' summand masses (ref_model_gate_mass): positive, and at least |gradient|
     * (triangle inequality) for every head of every gated layer */
    for (int i = 0; i < t.n_params; i++) {
        const DNParam *p = &t.params[i];
        if (p->kind != DN_P_A_LOG && p->kind != DN_P_DT_BIAS) continue;
        const double *ms = ref_model_gate_mass_f64(m, p->layer) + (p->kind == DN_P_DT_BIAS ? p->numel : 0);
        int bad = 0;
        for (size_t j = 0; j < p->numel; j++) bad += !(ms[j] > 0 && ms[j] >= fabs(grads[p->offset + j]) * (1 - 1e-12));
        CHECK(bad == 0, "layers=%s: %s: %d heads whose summand mass is not positive or is below |gradient|", layers, p->name, bad);
    }
    /* padding rows of the vocab tensors get no gradient */
    double pad = 0;
    for (size_t j = (size_t)c.vocab_size * c.d_model; j < (size_t)c.padded_vocab * c.d_model; j++) pad += fabs(grads[t.embed + j]) + fabs(grads[t.lm_head + j]);
    CHECK(pad == 0, "padding rows received gradient %g", pad);
    printf("  ok  full-model FD, layers %s, %s, chunk %d%s: %d tensors, %zu elements, worst tensor rel err %.3e (tol 1e-6)\n",
           layers, tied ? "tied" : "untied", chunk, gdn ? ", GDN heads 3 x K 2 x expand_v 3" : "", t.n_params, t.total_real, worst);
    ref_model_free_f64(m);
    free(params); free(grads); batch_free(&bt);
    dn_free_param_table(&t);
}

/* Two double models (tables ta and tb of the same size, chunk sizes ca and cb) run on the same
 * random parameters and batch, drawn from seed: their losses and gradients. */
typedef struct { double *params, *ga, *gb, la, lb; Batch bt; RefModel_f64 *a, *b; } TwoRuns;
static TwoRuns two_runs(const DNParamTable *ta, int ca, const DNParamTable *tb, int cb, int B, int T, uint64_t seed) {
    TwoRuns x;
    DNRng r;
    dn_rng_seed(&r, seed);
    x.params = test_random_params(ta, &r);
    x.ga = xcalloc(ta->total, sizeof(double));
    x.gb = xcalloc(tb->total, sizeof(double));
    x.bt = random_batch(B * T, ta->cfg.vocab_size, &r);
    x.a = ref_model_create_f64(ta, B, T, ca);
    x.b = ref_model_create_f64(tb, B, T, cb);
    x.la = loss_and_grads(x.a, x.params, &x.bt, x.ga);
    x.lb = loss_and_grads(x.b, x.params, &x.bt, x.gb);
    return x;
}
static void two_runs_free(TwoRuns *x) {
    ref_model_free_f64(x->a); ref_model_free_f64(x->b);
    free(x->params); free(x->ga); free(x->gb); batch_free(&x->bt);
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
    TwoRuns x = two_runs(&t, 8, &t, 0, B, T, 5);
    CHECK_REL(fabs(x.la - x.lb) / fabs(x.lb), 1e-13, "model %s loss, chunk 8 vs sequential (T=37)", layers);
    CHECK_REL(rel_err_d(ref_model_logits_f64(x.a), ref_model_logits_f64(x.b), (size_t)N * c.vocab_size), 1e-13, "model %s logits, chunk 8 vs sequential", layers);
    CHECK_REL(rel_err_d(x.ga, x.gb, t.total), 1e-12, "model %s gradients, chunk 8 vs sequential", layers);
    two_runs_free(&x);
    dn_free_param_table(&t);
}

/* A sliding-window layer whose window covers the sequence is exactly a global layer (same
 * tensors, same names), so the whole model agrees. */
static void swa_equals_global(void) {
    DNConfig cs, cg;
    small_config(&cs, "DSD", 1);
    small_config(&cg, "DGD", 1);
    int B = 2, T = 11;
    cs.window = T;
    DNParamTable ts, tg_;
    char err[256];
    dn_build_param_table(&ts, &cs, err, sizeof err);
    dn_build_param_table(&tg_, &cg, err, sizeof err);
    CHECK(ts.total == tg_.total, "S and G tables differ in size");
    TwoRuns x = two_runs(&ts, 4, &tg_, 4, B, T, 9);
    CHECK(x.la == x.lb, "window >= T loss %.17g != global %.17g", x.la, x.lb);
    CHECK_REL(rel_err_d(x.ga, x.gb, ts.total), 1e-15, "model with window >= T vs global: gradients");
    /* and a window smaller than T really changes the result */
    cs.window = 3;
    DNParamTable t3;
    dn_build_param_table(&t3, &cs, err, sizeof err);
    RefModel_f64 *a3 = ref_model_create_f64(&t3, B, T, 4);
    double l3 = ref_model_forward_f64(a3, x.params, x.bt.in, x.bt.tg);
    CHECK(fabs(l3 - x.lb) > 1e-9, "window 3 should differ from global (loss %.17g vs %.17g)", l3, x.lb);
    ref_model_free_f64(a3);
    dn_free_param_table(&t3);
    two_runs_free(&x);
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
    Batch bt = random_batch(N, c.vocab_size, &r);
    RefModel *mf = ref_model_create(&t, B, T, 64);
    RefModel_f64 *md = ref_model_create_f64(&t, B, T, 64);
    float lf = ref_model_forward(mf, pf, bt.in, bt.tg);
    ref_model_backward(mf, pf, gf);
    double ld = loss_and_grads(md, pd, &bt, gd);
    CHECK_REL(fabs(lf - ld) / ld, 1e-6, "float vs double model loss (%.6f)", ld);
    CHECK(fabs(ld - log(c.vocab_size)) < 0.05, "initial loss %.4f should be near ln(V) = %.4f", ld, log(c.vocab_size));
    double num = 0, den = 0;
    for (size_t i = 0; i < t.total; i++) { double d = gf[i] - gd[i]; num += d * d; den += gd[i] * gd[i]; }
    CHECK_REL(sqrt(num / den), 1e-4, "float vs double model gradients");
    ref_model_free(mf); ref_model_free_f64(md);
    free(pf); free(gf); free(pd); free(gd); batch_free(&bt);
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
