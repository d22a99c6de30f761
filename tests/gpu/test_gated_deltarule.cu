/*
 * test_gated_deltarule.cu -- the GPU chunkwise gated delta rule (gated_deltarule_forward / _backward in
 * kernels/deltarule.cuh) against the CPU reference's token-by-token recurrence (ref/gateddelta.c, in
 * double), and against the DeltaNet kernels at g = 0. The checks, tolerances and flags (--small, --fp32, --bf16) are those of
 * kernel_test.cuh.
 *
 * Odd shapes (T = 1, 63, 64, 65, 130, 200, 1000; B*H = 1 or 3; K = 64, 128; V = K and 2K), random
 * q, k (L2-normalised rows), v, dout, beta in (0.02, 0.98), never zero; the log decay g per token and
 * head from three ranges: mild (-0.3..0), strong (-5..0, where exp(G) of a chunk underflows fp32) and
 * zero. Outputs, gradients and the workspace are poisoned before every run. Each case runs twice, the
 * second time with the forward's saved Tm and V tiles of 64 columns: o, dq, dk, dv must repeat bit for
 * bit, dbeta and dg to rounding (shared-memory atomics; relative to the reference's norm, floored at
 * 1e-2, since at T = 1 dg is zero up to rounding). At g = 0, with K = V, the gated kernels must
 * give the DeltaNet kernels' results.
 * The reference's backward is checked by central differences on a tiny shape first.
 */
#include "../../kernels/deltarule.cuh"
#include "kernel_test.cuh" /* also the CPU reference (ref/reference.h) */
/* ---- the CPU reference (ref/gateddelta.c's token-by-token recurrence, in double) ----------------------
 * Per (b, h): S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T, a_t = exp(g_t), o_t = scale S_t^T q_t,
 * S_0 = 0; the backward is the reference's reverse recurrence. */
struct GRef {
    int B, T, H, K, V;
    float scale;
    const float *q, *k, *v, *beta, *g; /* q, k [B,T,H,K], v [B,T,H,V], beta, g [B,T,H] */
};
struct GRefD { /* the inputs in double */
    std::vector<double> q, k, v, beta, g;
    explicit GRefD(const GRef &R) {
        const size_t N = (size_t)R.B * R.T * R.H;
        q.assign(R.q, R.q + N * R.K); k.assign(R.k, R.k + N * R.K); v.assign(R.v, R.v + N * R.V);
        beta.assign(R.beta, R.beta + N); g.assign(R.g, R.g + N);
    }
};
static void gref_forward(std::vector<double> &o, const GRef &R) {
    GRefD d(R);
    o.assign((size_t)R.B * R.T * R.H * R.V, 0.0);
    ref_gated_delta_rule_recurrent_forward_f64(o.data(), NULL, d.q.data(), d.k.data(), d.v.data(), d.beta.data(), d.g.data(),
                                               NULL, R.B, R.T, R.H, R.K, R.V, (double)R.scale);
}
static void gref_backward(std::vector<double> &dq, std::vector<double> &dk, std::vector<double> &dv,
                          std::vector<double> &db, std::vector<double> &dg, const float *dout, const GRef &R) {
    GRefD d(R);
    const size_t N = (size_t)R.B * R.T * R.H;
    dq.assign(N * R.K, 0.0); dk.assign(N * R.K, 0.0); dv.assign(N * R.V, 0.0); db.assign(N, 0.0); dg.assign(N, 0.0);
    std::vector<double> dd(dout, dout + N * R.V);
    ref_gated_delta_rule_recurrent_backward_f64(dq.data(), dk.data(), dv.data(), db.data(), dg.data(), NULL, dd.data(), NULL,
                                                d.q.data(), d.k.data(), d.v.data(), d.beta.data(), d.g.data(), NULL,
                                                R.B, R.T, R.H, R.K, R.V, (double)R.scale);
}

/* ---- the recurrence's backward against central differences (double loss, float inputs) ----------- */
static void check_gref_fd(DNRng *r) {
    const int B = 1, T = 7, H = 2, K = 3, V = 4;
    const size_t N = (size_t)B * T * H;
    Vec q = rand_vec<float>(N * K, r, 1.0f), k = rand_vec<float>(N * K, r, 0.5f), v = rand_vec<float>(N * V, r, 1.0f);
    Vec dout = rand_vec<float>(N * V, r, 1.0f), beta(N), g(N);
    for (size_t i = 0; i < N; i++) {
        beta[i] = 0.1f + 0.8f * dn_rng_uniform(r);
        g[i] = -1.5f * dn_rng_uniform(r) - 0.01f;
    }
    GRef R{B, T, H, K, V, 0.7f, q.data(), k.data(), v.data(), beta.data(), g.data()};
    std::vector<double> o, dq, dk, dv, db, dg;
    gref_backward(dq, dk, dv, db, dg, dout.data(), R);
    auto loss = [&]() {
        std::vector<double> oo;
        gref_forward(oo, R);
        double s = 0;
        for (size_t i = 0; i < oo.size(); i++) s += oo[i] * dout[i];
        return s;
    };
    auto fd = [&](Vec &x, const std::vector<double> &grad, const char *name) {
        std::vector<double> num(x.size());
        for (size_t i = 0; i < x.size(); i++) {
            const float x0 = x[i], xp = x0 + 1e-3f, xm = x0 - 1e-3f;
            x[i] = xp;
            const double lp = loss();
            x[i] = xm;
            const double lm = loss();
            x[i] = x0;
            num[i] = (lp - lm) / ((double)xp - xm);
        }
        CHECK_REL(rel_err_d(grad.data(), num.data(), num.size()), 1e-3, "recurrence backward vs central differences: d%s", name);
    };
    fd(q, dq, "q"); fd(k, dk, "k"); fd(v, dv, "v"); fd(beta, db, "beta"); fd(g, dg, "g");
}

/* ---- the kernels ----------------------------------------------------------------------------------- */
static Vec to_vec(const std::vector<double> &x) { return Vec(x.begin(), x.end()); }
static void l2norm_rows(Vec &x, size_t rows, int D) {
    for (size_t r = 0; r < rows; r++) {
        double s = 0;
        for (int i = 0; i < D; i++) s += (double)x[r * D + i] * x[r * D + i];
        const float inv = (float)(1.0 / sqrt(s + 1e-6));
        for (int i = 0; i < D; i++) x[r * D + i] *= inv;
    }
}

enum Gate { MILD, STRONG, ZERO };
static const char *gate_name[] = {"mild", "strong", "zero"};

template <typename T> static void test_gated(int B, int T_, int H, int K, int V, Gate gate, DNRng *r) {
    const char *tn = tname((T *)0);
    const size_t N = (size_t)B * T_ * H, nk = N * K, nv = N * V;
    const float scale = 1.0f / sqrtf((float)K);
    Vec q = rand_vec<float>(nk, r, 1.0f), k = rand_vec<float>(nk, r, 1.0f);
    l2norm_rows(q, N, K);
    l2norm_rows(k, N, K);
    for (auto &x : q) x = round_to<T>(x);
    for (auto &x : k) x = round_to<T>(x);
    Vec v = rand_vec<T>(nv, r, 1.0f), dout = rand_vec<T>(nv, r, 1.0f), beta(N), g(N);
    for (size_t i = 0; i < N; i++) {
        beta[i] = round_to<T>(0.02f + 0.96f * dn_rng_uniform(r));
        const float u = dn_rng_uniform(r);
        g[i] = gate == MILD ? -0.3f * u - 1e-4f : gate == STRONG ? -5.0f * u - 1e-4f : 0.0f;
    }
    GRef R{B, T_, H, K, V, scale, q.data(), k.data(), v.data(), beta.data(), g.data()};
    std::vector<double> o_d, dq_d, dk_d, dv_d, db_d, dg_d;
    gref_forward(o_d, R);
    gref_backward(dq_d, dk_d, dv_d, db_d, dg_d, dout.data(), R);
    const Vec refs[6] = {to_vec(o_d), to_vec(dq_d), to_vec(dk_d), to_vec(dv_d), to_vec(db_d), to_vec(dg_d)};

    T *d_q = upload<T>(q), *d_k = upload<T>(k), *d_v = upload<T>(v), *d_b = upload<T>(beta), *d_do = upload<T>(dout);
    float *d_g = upload<float>(g);
    T *d_o = alloc_poisoned<T>(nv), *d_dq = alloc_poisoned<T>(nk), *d_dk = alloc_poisoned<T>(nk),
      *d_dv = alloc_poisoned<T>(nv), *d_db = alloc_poisoned<T>(N);
    float *d_dg = alloc_poisoned<float>(N);
    const size_t wsb = gated_deltarule_workspace_size<T>(B, T_, H, K, V), svb = gated_deltarule_saved_size<T>(B, T_, H);
    void *ws, *saved;
    cudaCheck(cudaMalloc(&ws, wsb));
    cudaCheck(cudaMalloc(&saved, svb));
    Vec res[2][6];
    for (int rep = 0; rep < 2; rep++) { /* rep 0: by shape, Tm recomputed; rep 1: V tiles of 64, saved Tm */
        T *sv = rep ? (T *)saved : nullptr;
        dr::force_bv() = rep ? 64 : 0;
        poison(d_o, nv); poison(d_dq, nk); poison(d_dk, nk); poison(d_dv, nv); poison(d_db, N); poison(d_dg, N);
        cudaCheck(cudaMemset(ws, 0xff, wsb));
        cudaCheck(cudaMemset(saved, 0xff, svb));
        gated_deltarule_forward<T>(d_o, sv, d_q, d_k, d_v, d_b, d_g, scale, ws, B, T_, H, K, V, 0);
        cudaCheck(cudaMemset(ws, 0xff, wsb));
        gated_deltarule_backward<T>(d_dq, d_dk, d_dv, d_db, d_dg, d_do, sv, d_q, d_k, d_v, d_b, d_g, scale, ws, B, T_,
                                    H, K, V, 0);
        res[rep][0] = download(d_o, nv); res[rep][1] = download(d_dq, nk); res[rep][2] = download(d_dk, nk);
        res[rep][3] = download(d_dv, nv); res[rep][4] = download(d_db, N); res[rep][5] = download(d_dg, N);
    }
    dr::force_bv() = 0;
    const char *names[6] = {"o", "dq", "dk", "dv", "dbeta", "dg"};
    for (int i = 0; i < 6; i++)
        CHECK_REL(rel(res[0][i], refs[i]), tol<T>(), "%s gated B=%d T=%4d H=%d K=%3d V=%3d g %-6s %-5s", tn, B, T_, H, K,
                  V, gate_name[gate], names[i]);
    for (int i = 0; i < 4; i++)
        CHECK(same_bits(res[0][i], res[1][i]), "%s gated B=%d T=%d H=%d K=%d V=%d: %s differs between two runs", tn, B,
              T_, H, K, V, names[i]);
    for (int i = 4; i < 6; i++) { /* relative to the reference's size, floored: at T = 1 dg is 0 up to rounding */
        double num = 0, den = 0;
        for (size_t j = 0; j < refs[i].size(); j++) {
            num += ((double)res[1][i][j] - res[0][i][j]) * ((double)res[1][i][j] - res[0][i][j]);
            den += (double)refs[i][j] * refs[i][j];
        }
        const double e = sqrt(num) / std::max(sqrt(den), 1e-2);
        CHECK(e < 1e-5, "%s gated B=%d T=%d H=%d K=%d V=%d: %s run-to-run %.2e", tn, B, T_, H, K, V, names[i], e);
    }
    if (gate == ZERO && K == V) { /* the DeltaNet kernels on the same inputs */
        poison(d_o, nv); poison(d_dq, nk); poison(d_dk, nk); poison(d_dv, nv); poison(d_db, N);
        deltarule_forward<T>(d_o, nullptr, d_q, d_k, d_v, d_b, scale, ws, B, T_, H, K, V, 0);
        deltarule_backward<T>(d_dq, d_dk, d_dv, d_db, d_do, nullptr, d_q, d_k, d_v, d_b, scale, ws, B, T_, H, K, V, 0);
        const Vec dn[5] = {download(d_o, nv), download(d_dq, nk), download(d_dk, nk), download(d_dv, nv), download(d_db, N)};
        for (int i = 0; i < 5; i++)
            CHECK_REL(rel(res[0][i], dn[i]), sizeof(T) == 2 ? 1e-2 : 1e-6, "%s g = 0 vs DeltaNet B=%d T=%4d H=%d K=V=%3d %-5s",
                      tn, B, T_, H, K, names[i]);
    }
    cudaCheck(cudaFree(ws)); cudaCheck(cudaFree(saved));
    cudaFree(d_q); cudaFree(d_k); cudaFree(d_v); cudaFree(d_b); cudaFree(d_do); cudaFree(d_g);
    cudaFree(d_o); cudaFree(d_dq); cudaFree(d_dk); cudaFree(d_dv); cudaFree(d_db); cudaFree(d_dg);
}

template <typename T> static void run(DNRng *r) {
    printf("---- %s\n", tname((T *)0));
    if (sizeof(T) == 4) check_gref_fd(r);
    struct Shape { int B, T_, H, K, V, is_small; };
    const Shape shapes[] = {
        {1, 1, 1, 64, 64, 1},     {1, 65, 3, 64, 128, 1},   {3, 63, 1, 128, 128, 1},  {1, 130, 1, 128, 256, 1},
        {1, 64, 3, 128, 128, 0},  {3, 200, 1, 64, 64, 0},   {1, 200, 3, 128, 256, 0}, {1, 65, 1, 128, 128, 0},
        {3, 1000, 1, 64, 128, 0}, {1, 1000, 3, 128, 128, 0},
    };
    int i = 0;
    for (const Shape &s : shapes) {
        if (g_small && !s.is_small) continue;
        test_gated<T>(s.B, s.T_, s.H, s.K, s.V, STRONG, r);
        test_gated<T>(s.B, s.T_, s.H, s.K, s.V, (i++ & 1) ? MILD : ZERO, r);
    }
}

int main(int argc, char **argv) { return kernel_test_main(argc, argv, "test_gated_deltarule_gpu", run<float>, run<bf16>); }
