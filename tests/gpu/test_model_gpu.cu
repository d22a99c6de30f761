/*
 * test_model_gpu.cu -- the whole GPU model (kernels/model_gpu.cuh, what train_deltanet runs)
 * against the CPU reference model (ref/model.c, in double: the ground truth) on small hybrids:
 * layers "DSGD" (DeltaNet, sliding window 5, global, DeltaNet), D = 128, 2 DeltaNet heads of 64,
 * 2 attention heads of 64 sharing 1 KV head, vocab 300 padded to 384, B = 2, T = 67 (not a multiple
 * of the delta rule's 64-row chunks), tied and untied LM head; and the same checks on a gated
 * DeltaNet hybrid "NSGN" (gated DeltaNet, sliding window, global, gated DeltaNet; 2 gated heads of
 * key size 64 and value size 128, expand_v 2). Parameters are random with enough
 * scale that every path carries signal (matrices N(0, 0.1), conv N(0, 0.3), gains 1 + N(0, 0.1));
 * the gated layers' A_log and dt_bias are drawn as their init draws them (decays from ~1e-7 to ~1
 * a token), so that slow heads carry the state across the 64-row chunk boundary (N(0, 0.1) would
 * decay every head by ~0.5 a token, leaving the between-chunk path untested).
 *
 * Checked, errors ||gpu - ref|| / ||ref||, on two parameter sets: "stress" (above) and "init"
 * (dn_init_params: the trainer's N(0, 0.02) init):
 *   - logits of every position, the loss, the validation-path loss (forward-only head), and the
 *     gradient of EVERY parameter tensor; padding vocab rows get exactly zero gradient.
 *     fp32 mode: bound 1e-5 (both sets; measured on an H100: at most 3.6e-6). bf16 mode, against
 *     the reference run on the same parameters rounded to bf16 (the weights the bf16 matmuls
 *     see): the rounding of bf16 activations (residual stream, q/k/v, o, gate|up, logits and their
 *     gradients) compounds through the four layers. Measured on an H100: "init": logits 1.1e-2,
 *     loss 4e-5, every gradient <= 2e-2 but two (mlp_norm of layer 2 at 2.06e-2, b_proj of layer 3
 *     at 2.34e-2): bound 3e-2; "stress": logits 2.0e-2, gradients up to 4.9e-2: bound 1e-1. Both
 *     still catch any wiring or kernel error, which shows up as O(1). A_log and dt_bias are per
 *     head sums over all B*T positions (dA_log = sum_n dg_n g_n, ddt_bias = sum_n da_n) whose
 *     terms cancel (the sum can be 1/50 of its terms' mass): their error is measured against the
 *     terms' mass (ref_model_gate_mass), as any summation's rounding is, with the same bounds;
 *   - gradient accumulation: 2 micro-batches of B = 1 give the gradients of one batch of B = 2;
 *   - 20 AdamW steps on a fixed batch (clip, weight decay, constant lr 1e-3): check_training says
 *     how (the optimizer's update exactly; the trajectory within the spread that gradient errors
 *     at the 1e-5 bound cause, measured in the test by a perturbed double loop).
 */
#include <vector>
#include <algorithm>
#include <cstring>
#include "../../kernels/model_gpu.cuh"
#include "../test.h"
#include "../../ref/reference.h"

static const int TB = 2, TT = 67;

static void small_config(DNConfig *c, const char *layers, int tied) {
    test_config(c, layers, 128, 2, 64, dn_default_hidden(128), 300, dn_pad_vocab(300), 2, 1, 5, tied);
    c->gdn_heads = 2; c->gdn_head_dim = 64; c->gdn_expand_v = 2; /* the GPU's K = 64, V = 128 */
    char err[256];
    if (dn_config_validate(c, err, sizeof err)) { printf("bad config: %s\n", err); exit(2); }
}

static std::vector<float> random_params(const DNParamTable *t, DNRng *r) {
    std::vector<float> p(t->total, 0.0f), init(t->total);
    dn_init_params(t, init.data(), dn_rng_u64(r));
    for (int i = 0; i < t->n_params; i++) {
        const DNParam *q = &t->params[i];
        float s = q->ndim == 3 ? 0.3f : 0.1f;
        const bool gate = q->kind == DN_P_A_LOG || q->kind == DN_P_DT_BIAS;
        for (size_t j = 0; j < q->numel; j++)
            p[q->offset + j] = gate ? init[q->offset + j]
                             : q->init_std == 0.0f ? 1.0f + 0.1f * dn_rng_normal(r) : s * dn_rng_normal(r);
    }
    return p;
}

/* The same parameters rounded to bf16 (what the bf16 model's matmuls see). */
static std::vector<float> round_bf16(const std::vector<float> &p) {
    std::vector<float> r(p.size());
    for (size_t i = 0; i < p.size(); i++) r[i] = dn_bf16_to_f32(dn_f32_to_bf16(p[i]));
    return r;
}

static double rel_err_fd(const float *a, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) { double d = (double)a[i] - ref[i]; num += d * d; den += ref[i] * ref[i]; }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

template <typename floatX> static const char *mode_name() { return sizeof(floatX) == 2 ? "bf16" : "fp32"; }
template <typename floatX> static double tol() { return sizeof(floatX) == 2 ? 2e-2 : 1e-5; }

/* The reference's loss, logits and gradients (double). */
struct RefResult {
    double loss;
    std::vector<double> logits, grads, mass; /* mass: ref_model_gate_mass at A_log / dt_bias, else 0 */
};

/* The gate parameters' gradient masses (ref_model_gate_mass) at their offsets of the table. */
static std::vector<double> gate_masses(const DNParamTable *t, const RefModel_f64 *rm) {
    std::vector<double> mass(t->total, 0.0);
    for (int i = 0; i < t->n_params; i++) {
        const DNParam *p = &t->params[i];
        if (p->kind != DN_P_A_LOG && p->kind != DN_P_DT_BIAS) continue;
        const double *m = ref_model_gate_mass_f64(rm, p->layer) + (p->kind == DN_P_DT_BIAS ? p->numel : 0);
        std::copy(m, m + p->numel, mass.begin() + p->offset);
    }
    return mass;
}

static RefResult ref_run(const DNParamTable *t, const std::vector<float> &params, const int *inp, const int *tgt) {
    RefResult r;
    std::vector<double> pd(params.begin(), params.end());
    RefModel_f64 *rm = ref_model_create_f64(t, TB, TT, 64);
    if (!rm) { printf("ref_model_create failed\n"); exit(2); }
    r.loss = ref_model_forward_f64(rm, pd.data(), inp, tgt);
    const double *lg = ref_model_logits_f64(rm);
    r.logits.assign(lg, lg + (size_t)TB * TT * t->cfg.vocab_size);
    r.grads.assign(t->total, 0.0);
    ref_model_backward_f64(rm, pd.data(), r.grads.data());
    r.mass = gate_masses(t, rm);
    ref_model_free_f64(rm);
    return r;
}

/* Logits, loss and every parameter gradient against the reference. */
template <typename floatX>
static void check_grads(const DNConfig *cfg, const char *set, const std::vector<float> &params, const int *inp,
                        const int *tgt, const RefResult &ref, double tl, cudaStream_t st) {
    char md[64];
    snprintf(md, sizeof md, "%s %s", mode_name<floatX>(), set);
    const char *tie = cfg->tie_embeddings ? "tied" : "untied";
    GPUModel<floatX> m;
    gpu_model_create(&m, cfg, TB, TT, 1, st);
    gpu_model_set_params(&m, params.data());
    const DNParamTable *t = &m.t;
    const int N = TB * TT, V = cfg->vocab_size;

    std::vector<float> logits((size_t)N * V);
    gpu_forward_logits(&m, inp, TB, TT, logits.data());
    CHECK_REL(rel_err_fd(logits.data(), ref.logits.data(), logits.size()), tl, "[%s %s] logits [%d x %d]", md, tie, N, V);

    float eval = gpu_eval_loss(&m, inp, tgt, TB);
    float loss = gpu_loss_and_grads(&m, inp, tgt);
    CHECK_REL(fabs(loss - ref.loss) / fabs(ref.loss), tl, "[%s %s] loss %.7f (ref %.7f)", md, tie, loss, ref.loss);
    CHECK_REL(fabs(eval - ref.loss) / fabs(ref.loss), tl, "[%s %s] forward-only loss %.7f", md, tie, eval);

    std::vector<float> g(t->total);
    gpu_model_get_grads(&m, g.data());
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < t->n_params; i++) {
        const DNParam *p = &t->params[i];
        double e = rel_err_fd(g.data() + p->offset, ref.grads.data() + p->offset, p->numel);
        if (p->kind == DN_P_A_LOG || p->kind == DN_P_DT_BIAS) {
            /* a sum over every position whose terms cancel: its rounding is relative to the terms */
            const double *ms = ref.mass.data() + p->offset;
            double nm = 0, nd = 0, nr = 0;
            for (size_t j = 0; j < p->numel; j++) {
                const double d = g[p->offset + j] - ref.grads[p->offset + j];
                nm += ms[j] * ms[j];
                nd += d * d;
                nr += ref.grads[p->offset + j] * ref.grads[p->offset + j];
            }
            const double ec = nm > 0 ? sqrt(nd / nm) : sqrt(nd);
            CHECK_REL(ec, tl, "[%s %s] grad %s vs its terms' mass (||grad|| / ||mass|| %.2e; rel to ||grad|| %.2e)",
                      md, tie, p->name, nm > 0 ? sqrt(nr / nm) : 0.0, e);
            e = ec;
        } else CHECK_REL(e, tl, "[%s %s] grad %s", md, tie, p->name);
        if (!(e <= worst)) { worst = e; worst_name = p->name; }
        size_t nonzero = 0;
        for (size_t j = p->numel; j < p->mem_numel; j++) nonzero += g[p->offset + j] != 0.0f;
        if (p->mem_numel > p->numel) CHECK(nonzero == 0, "[%s %s] %s: %zu padding-row gradients are not zero", md, tie, p->name, nonzero);
    }
    printf("  [%s %s] worst gradient: %s, rel err %.3e\n", md, tie, worst_name, worst);
    gpu_model_free(&m);
}

/* Two micro-batches of one row each == one batch of two rows (the loss, every gradient). */
template <typename floatX>
static void check_accumulation(const DNConfig *cfg, const std::vector<float> &params, const int *inp, const int *tgt,
                               cudaStream_t st) {
    const char *md = mode_name<floatX>();
    GPUModel<floatX> one, two;
    gpu_model_create(&one, cfg, TB, TT, 1, st);
    gpu_model_create(&two, cfg, 1, TT, TB, st);
    gpu_model_set_params(&one, params.data());
    gpu_model_set_params(&two, params.data());
    memcpy(one.h_tokens, inp, sizeof(int) * TB * TT);
    memcpy(one.h_tokens + TB * TT, tgt, sizeof(int) * TB * TT);
    for (int b = 0; b < TB; b++) {
        memcpy(two.h_tokens + (2 * b) * TT, inp + b * TT, sizeof(int) * TT);
        memcpy(two.h_tokens + (2 * b + 1) * TT, tgt + b * TT, sizeof(int) * TT);
    }
    GPUOptim o = {0.0f, 0.9f, 0.95f, 1e-8f, 0.0f, 0.0f}; /* lr 0: the parameters stay */
    float n1 = 0, n2 = 0;
    float l1 = gpu_train_step(&one, &o, 1, &n1), l2 = gpu_train_step(&two, &o, 1, &n2);
    std::vector<float> g1(one.t.total), g2(one.t.total);
    gpu_model_get_grads(&one, g1.data());
    gpu_model_get_grads(&two, g2.data());
    CHECK_REL(fabs(l1 - l2) / fabs(l1), tol<floatX>(), "[%s] accumulation: loss %.7f (2 x B=1) vs %.7f (B=2)", md, l2, l1);
    CHECK_REL(rel_err_f(g2.data(), g1.data(), g1.size()), tol<floatX>(), "[%s] accumulation: all gradients", md);
    CHECK_REL(fabs(n1 - n2) / n1, tol<floatX>(), "[%s] accumulation: gradient norm %.6f vs %.6f", md, n2, n1);
    gpu_model_free(&one);
    gpu_model_free(&two);
}

/* The relative gradient noise of the sensitivity loop: check_grads' fp32 bound. */
static const double LOOP_NOISE = 1e-5;

/* Per tensor, g += LOOP_NOISE * rms(g) * N(0, 1) elementwise: an error of relative size LOOP_NOISE. */
static void perturb_grads(const DNParamTable *t, double *g, DNRng *r) {
    for (int i = 0; i < t->n_params; i++) {
        const DNParam *p = &t->params[i];
        double ss = 0;
        for (size_t j = 0; j < p->numel; j++) ss += g[p->offset + j] * g[p->offset + j];
        const double sc = LOOP_NOISE * sqrt(ss / (double)p->numel);
        for (size_t j = 0; j < p->numel; j++) g[p->offset + j] += sc * dn_rng_normal(r);
    }
}

/* 20 AdamW steps on a fixed batch through gpu_train_step (the first eager, then the CUDA graph),
 * three ways:
 *   - the optimizer, exactly: each GPU step's parameter update against the CPU's AdamW applied to
 *     the GPU's own parameters and gradients of that step (moments kept from the GPU gradients);
 *   - the trajectory: the GPU's losses and gradient norms against the CPU loop in double;
 *   - its bound: this overfitting run is sensitive (AdamW moves every weight by ~lr whatever its
 *     gradient's size), so the same double loop is run once more with every step's gradients off by
 *     LOOP_NOISE (check_grads' bound) in random directions; the GPU may depart from the exact loop by
 *     3x what that loop does (random vs structured errors), and never needs to beat 1e-4 (loss) /
 *     1e-3 (norm). A wiring error in the step (moments, bias correction, decay, clip, graph replay)
 *     moves the update itself, which the first check bounds at 1e-4. */
static void check_training(const DNConfig *cfg, const std::vector<float> &params, const int *inp, const int *tgt,
                           cudaStream_t st) {
    const char *tie = cfg->tie_embeddings ? "tied" : "untied";
    const int steps = 20;
    const float lr = 1e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, clip = 1.0f;
    GPUModel<float> m;
    gpu_model_create(&m, cfg, TB, TT, 1, st);
    gpu_model_set_params(&m, params.data());
    memcpy(m.h_tokens, inp, sizeof(int) * TB * TT);
    memcpy(m.h_tokens + TB * TT, tgt, sizeof(int) * TB * TT);
    const DNParamTable *t = &m.t;
    const size_t P = t->total;
    std::vector<double> pd(params.begin(), params.end()), gd(P), md(P, 0.0), vd(P, 0.0);
    std::vector<double> pn(pd), gn(P), mn(P, 0.0), vn(P, 0.0);   /* the perturbed loop */
    std::vector<double> mo(P, 0.0), vo(P, 0.0), q(P), gq(P);      /* the optimizer check */
    std::vector<float> prev(params), pg(P), gg(P);
    RefModel_f64 *rm = ref_model_create_f64(t, TB, TT, 64);
    DNRng nr;
    dn_rng_seed(&nr, 2024);
    double worst = 0, worst_norm = 0, sens = 0, sens_norm = 0, worst_upd = 0;
    int clipped = 0;
    for (int s = 1; s <= steps; s++) {
        std::fill(gd.begin(), gd.end(), 0.0);
        double lref = ref_model_forward_f64(rm, pd.data(), inp, tgt);
        ref_model_backward_f64(rm, pd.data(), gd.data());
        double nref = ref_grad_norm_f64(gd.data(), P);
        double scale = nref > clip ? clip / nref : 1.0;
        clipped += scale < 1.0;
        ref_adamw_update_f64(t, pd.data(), gd.data(), md.data(), vd.data(), s, lr, b1, b2, eps, wd, scale);

        std::fill(gn.begin(), gn.end(), 0.0);
        double ln = ref_model_forward_f64(rm, pn.data(), inp, tgt);
        ref_model_backward_f64(rm, pn.data(), gn.data());
        perturb_grads(t, gn.data(), &nr);
        double nn = ref_grad_norm_f64(gn.data(), P);
        ref_adamw_update_f64(t, pn.data(), gn.data(), mn.data(), vn.data(), s, lr, b1, b2, eps, wd, nn > clip ? clip / nn : 1.0);
        sens = std::max(sens, fabs(ln - lref) / fabs(lref));
        sens_norm = std::max(sens_norm, fabs(nn - nref) / nref);

        GPUOptim o = {lr, b1, b2, eps, wd, clip};
        float norm = 0;
        float loss = gpu_train_step(&m, &o, s, &norm);
        gpu_model_get_params(&m, pg.data());
        gpu_model_get_grads(&m, gg.data());
        std::copy(prev.begin(), prev.end(), q.begin());
        std::copy(gg.begin(), gg.end(), gq.begin());
        ref_adamw_update_f64(t, q.data(), gq.data(), mo.data(), vo.data(), s, lr, b1, b2, eps, wd,
                             norm > clip ? clip / norm : 1.0);
        double num = 0, den = 0;
        for (size_t i = 0; i < P; i++) {
            const double d = (double)pg[i] - q[i], u = q[i] - (double)prev[i];
            num += d * d;
            den += u * u;
        }
        worst_upd = std::max(worst_upd, sqrt(num / den));
        prev = pg;

        double e = fabs(loss - lref) / fabs(lref), en = fabs(norm - nref) / nref;
        worst = e > worst ? e : worst;
        worst_norm = en > worst_norm ? en : worst_norm;
        printf("  [fp32 %s] step %2d: loss %.7f  ref %.7f  (rel %.2e)   norm %.5f ref %.5f   perturbed loop: loss rel %.2e\n",
               tie, s, loss, lref, e, norm, nref, fabs(ln - lref) / fabs(lref));
    }
    CHECK_REL(worst_upd, 1e-4, "[fp32 %s] AdamW: every step's update vs the CPU's AdamW on the GPU's parameters and gradients", tie);
    printf("  [fp32 %s] the double loop with gradients off by %.0e departs by: loss %.3e, norm %.3e\n", tie, LOOP_NOISE, sens, sens_norm);
    CHECK_REL(worst, std::max(1e-4, 3 * sens), "[fp32 %s] 20 AdamW steps (graph replay from step 2): worst loss difference", tie);
    CHECK_REL(worst_norm, std::max(1e-3, 3 * sens_norm), "[fp32 %s] 20 AdamW steps: worst gradient-norm difference", tie);
    CHECK(m.have_graph, "[fp32 %s] the step was not captured as a CUDA graph", tie);
    CHECK(clipped > 0, "[fp32 %s] clipping never engaged: the test does not exercise it", tie);
    printf("  [fp32 %s] parameters after %d steps: rel err %.3e vs the CPU loop (not bounded: AdamW normalises away\n"
           "  the gradients' scale, so elements whose gradient is ~0 move by ~lr either way)\n",
           tie, steps, rel_err_fd(pg.data(), pd.data(), P));
    ref_model_free_f64(rm);
    gpu_model_free(&m);
}

/* --small (or DN_SMALL=1): the untied model, the stress parameters in fp32 and bf16 only, no
 * accumulation or training loop -- short enough for compute-sanitizer racecheck. */
/* A loss-masked model with linear-attention layers and no MLPs (the MQAR setting): the masked
 * loss, every gradient, and the validation loss and argmax hits against the reference. */
template <typename floatX>
static void check_masked_linear(double tl, cudaStream_t st) {
    DNConfig cfg;
    test_config(&cfg, "LDG", 128, 2, 64, dn_default_hidden(128), 300, dn_pad_vocab(300), 2, 2, 5, 1);
    cfg.no_mlp = 1;
    DNParamTable t;
    char err[256];
    if (dn_build_param_table(&t, &cfg, err, sizeof err)) { CHECK(0, "%s", err); return; }
    DNRng r;
    dn_rng_seed(&r, 99);
    std::vector<float> params = random_params(&t, &r);
    if (sizeof(floatX) == 2) params = round_bf16(params);
    const int N = TB * TT, V = cfg.vocab_size;
    std::vector<int> inp(N), tgt(N);
    std::vector<unsigned char> mask(N);
    for (int i = 0; i < N; i++) {
        inp[i] = (int)(dn_rng_u64(&r) % (uint64_t)V);
        tgt[i] = (int)(dn_rng_u64(&r) % (uint64_t)V);
        mask[i] = dn_rng_uniform(&r) < 0.2f;
    }
    std::vector<double> pd(params.begin(), params.end()), rg(t.total, 0.0);
    RefModel_f64 *rm = ref_model_create_f64(&t, TB, TT, 64);
    const double rloss = ref_model_forward_masked_f64(rm, pd.data(), inp.data(), tgt.data(), mask.data());
    long rhits = 0;
    for (int n = 0; n < N; n++) {
        if (!mask[n]) continue;
        const double *z = ref_model_logits_f64(rm) + (size_t)n * V;
        int best = 0;
        for (int j = 1; j < V; j++) if (z[j] > z[best]) best = j;
        rhits += best == tgt[n];
    }
    ref_model_backward_f64(rm, pd.data(), rg.data());
    ref_model_free_f64(rm);
    GPUModel<floatX> m;
    gpu_model_create(&m, &cfg, TB, TT, 1, st);
    gpu_model_set_params(&m, params.data());
    gpu_model_enable_loss_mask(&m);
    loss_mask_weights(m.h_wts, mask.data(), (size_t)N);
    const float loss = gpu_loss_and_grads(&m, inp.data(), tgt.data());
    CHECK_REL(fabs(loss - rloss) / rloss, tl, "[%s LDG no MLP] masked loss %.6f (ref %.6f)", mode_name<floatX>(), loss, rloss);
    std::vector<float> g(t.total);
    gpu_model_get_grads(&m, g.data());
    double worst = 0;
    for (int i = 0; i < t.n_params; i++) {
        const DNParam *p = &t.params[i];
        const double e = rel_err_fd(g.data() + p->offset, rg.data() + p->offset, p->numel);
        if (!(e <= worst)) worst = e;
        CHECK_REL(e, tl, "[%s LDG no MLP] masked grad %s", mode_name<floatX>(), p->name);
    }
    long hits = -1;
    const float eloss = gpu_eval_masked(&m, inp.data(), tgt.data(), mask.data(), TB, &hits);
    CHECK_REL(fabs(eloss - rloss) / rloss, tl, "[%s LDG no MLP] masked validation loss", mode_name<floatX>());
    if (sizeof(floatX) == 4) CHECK(hits == rhits, "[fp32] argmax hits %ld, reference %ld", hits, rhits);
    else CHECK(labs(hits - rhits) <= 2, "[bf16] argmax hits %ld, reference %ld (ties may round apart)", hits, rhits);
    gpu_model_free(&m);
    dn_free_param_table(&t);
}

int main(int argc, char **argv) {
    const bool small = (argc > 1 && strcmp(argv[1], "--small") == 0) || getenv("DN_SMALL");
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        printf("no CUDA device: skipped\n");
        return test_summary("test_model_gpu");
    }
    cudaStream_t st;
    cudaCheck(cudaStreamCreate(&st));
    static const char *models[2] = {"DSGD", "NSGN"};
    for (int mi = 0; mi < 2; mi++)
    for (int tied = 0; tied <= (small ? 0 : 1); tied++) {
        DNConfig cfg;
        small_config(&cfg, models[mi], tied);
        DNParamTable t;
        char err[256];
        if (dn_build_param_table(&t, &cfg, err, sizeof err)) { printf("%s\n", err); return 2; }
        DNRng r;
        dn_rng_seed(&r, 42 + tied + 10 * (uint64_t)mi);
        std::vector<float> params = random_params(&t, &r);
        std::vector<int> inp(TB * TT), tgt(TB * TT);
        for (int i = 0; i < TB * TT; i++) {
            inp[i] = (int)(dn_rng_u64(&r) % (uint64_t)cfg.vocab_size);
            tgt[i] = (int)(dn_rng_u64(&r) % (uint64_t)cfg.vocab_size);
        }
        printf("== %s, layers %s, D %d, vocab %d (padded %d), B %d, T %d, %zu parameters\n", tied ? "tied" : "untied",
               cfg.layers, cfg.d_model, cfg.vocab_size, cfg.padded_vocab, TB, TT, t.total_real);
        std::vector<float> init(t.total);
        dn_init_params(&t, init.data(), 1337);
        for (int set = 0; set < (small ? 1 : 2); set++) {
            const std::vector<float> &p = set ? init : params;
            const char *name = set ? "init" : "stress";
            RefResult ref = ref_run(&t, p, inp.data(), tgt.data());
            check_grads<float>(&cfg, name, p, inp.data(), tgt.data(), ref, 1e-5, st);
            std::vector<float> pb = round_bf16(p);
            RefResult refb = ref_run(&t, pb, inp.data(), tgt.data());
            check_grads<bf16>(&cfg, name, pb, inp.data(), tgt.data(), refb, set ? 3e-2 : 1e-1, st);
        }
        if (!small) {
            check_accumulation<float>(&cfg, params, inp.data(), tgt.data(), st);
            check_training(&cfg, params, inp.data(), tgt.data(), st);
        }
        dn_free_param_table(&t);
    }
    check_masked_linear<float>(1e-5, st);
    check_masked_linear<bf16>(1e-1, st);
    cudaCheck(cudaStreamDestroy(st));
    return test_summary("test_model_gpu");
}
