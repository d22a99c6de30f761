/*
 * test_attention.cu -- kernels/attention.cuh against the CPU reference (ref/attention.c):
 * causal softmax attention (global, sliding-window, grouped KV heads) forward (out, lse) and
 * backward (dq, dk, dv), and RoPE forward/backward, in fp32 (bound 1e-5) and bf16 (bound 2e-2,
 * inputs rounded to bf16 before the reference sees them). Errors are ||gpu - ref|| / ||ref||.
 * Every output is poisoned (NaN) before each run, so an unwritten element fails. The backward of
 * both sides gets the same inputs (the reference's out and lse, rounded like the GPU's inputs).
 * Also checked: dk/dv bitwise reproducible; bf16 also without ldmatrix (plain fragment loads).
 *
 *   build/tests/gpu/test_attention            all shapes (T in {1,63,64,65,200,777}, ...)
 *   build/tests/gpu/test_attention --small    a few small shapes (for compute-sanitizer; or DN_SMALL=1)
 */
#include <vector>
#include <cstring>
#include "../../kernels/attention.cuh"
#include "../../kernels/rope.cuh"
#include "gpu_util.cuh"
#include "../test.h"
#include "../../ref/reference.h"

static const char *tname(const float *) { return "fp32"; }
static const char *tname(const bf16 *) { return "bf16"; }

static float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

/* n values ~N(0, scale), never exactly zero, rounded to T's precision. */
template <typename T>
static std::vector<float> rand_vec(size_t n, DNRng *r, float scale) {
    std::vector<float> x(n);
    for (size_t i = 0; i < n; i++) {
        float v = scale * dn_rng_normal(r);
        if (v == 0.0f) v = 1e-3f;
        x[i] = sizeof(T) == 2 ? round_bf16(v) : v;
    }
    return x;
}

/* Worst error seen per (precision, quantity), printed at the end. */
enum { Q_OUT, Q_LSE, Q_DQ, Q_DK, Q_DV, Q_ROPE_F, Q_ROPE_B, NQ };
static const char *qname[NQ] = {"out", "lse", "dq", "dk", "dv", "rope fwd", "rope bwd"};
static double worst[2][NQ];
static double check(int prec, int qi, const std::vector<float> &gpu, const std::vector<float> &ref, double tol,
                    const char *label) {
    /* Where the exact answer is all zeros (dq, dk when each query sees only itself: T = 1 or
     * window = 1, dS = P (dP - D) = 0), the error is the RMS of the GPU's rounding noise instead. */
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        double d = (double)gpu[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    const bool zero_ref = den == 0.0;
    double e = zero_ref ? sqrt(num / (double)ref.size()) : sqrt(num / den);
    if (num != num) e = NAN;
    worst[prec][qi] = isfinite(e) ? fmax(e, worst[prec][qi]) : INFINITY;
    CHECK_REL(e, tol, "%s %-4s %s%s", prec ? "bf16" : "fp32", qname[qi], label, zero_ref ? " (exact 0: rms)" : "");
    return e;
}

template <typename T>
using FwdFn = void (*)(T *, float *, const T *, const T *, const T *, int, int, int, int, int, int, cudaStream_t);
template <typename T>
using BwdFn = void (*)(T *, T *, T *, float *, const T *, const T *, const T *, const T *, const T *, const float *,
                       int, int, int, int, int, int, cudaStream_t);

/* The other bf16 tile variants (the bench times them), d in {64, 128}. */
template <int NW, int MT, int BK, int MINB = 1, bool QR = true>
static void fwd_variant(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int B, int T_, int Hq,
                        int Hkv, int d, int window, cudaStream_t s) {
    if (d == 64) attn::forward_launch<bf16, 64, NW, MT, BK, true, MINB, QR>(out, lse, q, k, v, B, T_, Hq, Hkv, window, s);
    else attn::forward_launch<bf16, 128, NW, MT, BK, true, MINB, QR>(out, lse, q, k, v, B, T_, Hq, Hkv, window, s);
}
template <int NW>
static void bwd_variant(bf16 *dq, bf16 *dk, bf16 *dv, float *scratch, const bf16 *dout, const bf16 *q, const bf16 *k,
                        const bf16 *v, const bf16 *out, const float *lse, int B, int T_, int Hq, int Hkv, int d,
                        int window, cudaStream_t s) {
    if (d == 64) attn::backward_launch<bf16, 64, NW, true>(dq, dk, dv, scratch, dout, q, k, v, out, lse, B, T_, Hq, Hkv, window, s);
    else attn::backward_launch<bf16, 128, NW, true>(dq, dk, dv, scratch, dout, q, k, v, out, lse, B, T_, Hq, Hkv, window, s);
}

/* One attention case: forward and backward on the GPU vs the reference, through the public
 * launchers' code (attn::*_impl<T, true>) unless other functions and a tag are given (the bf16
 * kernels with plain fragment loads instead of ldmatrix; the other tile variants). */
template <typename T>
static void attention_case(int B, int T_, int Hq, int Hkv, int d, int window, DNRng *rng,
                           FwdFn<T> fwd = attn::forward_impl<T, true>, BwdFn<T> bwd = attn::backward_impl<T, true>,
                           const char *tag = "") {
    const int prec = sizeof(T) == 2;
    const double tol = prec ? 2e-2 : 1e-5;
    const size_t nq = (size_t)B * T_ * Hq * d, nk = (size_t)B * T_ * Hkv * d, nl = (size_t)B * Hq * T_;
    char label[128];
    snprintf(label, sizeof label, "B=%d T=%d Hq=%d Hkv=%d d=%d w=%d%s", B, T_, Hq, Hkv, d, window, tag);

    std::vector<float> q = rand_vec<T>(nq, rng, 1.0f), k = rand_vec<T>(nk, rng, 1.0f), v = rand_vec<T>(nk, rng, 1.0f);
    std::vector<float> dout = rand_vec<T>(nq, rng, 1.0f);
    std::vector<float> out_ref(nq), lse_ref(nl), dq_ref(nq, 0.0f), dk_ref(nk, 0.0f), dv_ref(nk, 0.0f);
    ref_attention_forward(out_ref.data(), lse_ref.data(), q.data(), k.data(), v.data(), B, T_, Hq, Hkv, d, window);
    std::vector<float> out_in(out_ref); /* the backward's `out` input, in T's precision on both sides */
    if (prec) for (auto &x : out_in) x = round_bf16(x);
    ref_attention_backward(dq_ref.data(), dk_ref.data(), dv_ref.data(), dout.data(), q.data(), k.data(), v.data(),
                           out_in.data(), lse_ref.data(), B, T_, Hq, Hkv, d, window);

    T *dq_ = upload<T>(q), *dk_ = upload<T>(k), *dv_ = upload<T>(v), *ddout = upload<T>(dout), *dout_in = upload<T>(out_in);
    float *dlse_in = upload<float>(lse_ref);
    T *dout_ = alloc_poisoned<T>(nq);
    float *dlse = alloc_poisoned<float>(nl);
    fwd(dout_, dlse, dq_, dk_, dv_, B, T_, Hq, Hkv, d, window, 0);
    cudaCheck(cudaDeviceSynchronize());
    check(prec, Q_OUT, download(dout_, nq, false), out_ref, tol, label);
    check(prec, Q_LSE, download(dlse, nl, false), lse_ref, prec ? 2e-2 : 1e-5, label);

    size_t sbytes = attention_backward_scratch_bytes(B, T_, Hq, d);
    float *scratch = alloc_poisoned<float>(sbytes / sizeof(float));
    T *gq = alloc_poisoned<T>(nq), *gk = alloc_poisoned<T>(nk), *gv = alloc_poisoned<T>(nk);
    bwd(gq, gk, gv, scratch, ddout, dq_, dk_, dv_, dout_in, dlse_in, B, T_, Hq, Hkv, d, window, 0);
    cudaCheck(cudaDeviceSynchronize());
    std::vector<float> gk1 = download(gk, nk, false), gv1 = download(gv, nk, false);
    check(prec, Q_DQ, download(gq, nq, false), dq_ref, tol, label);
    check(prec, Q_DK, gk1, dk_ref, tol, label);
    check(prec, Q_DV, gv1, dv_ref, tol, label);

    /* run again over poisoned outputs: dk/dv must be bitwise the same */
    cudaCheck(cudaMemset(gk, 0xff, nk * sizeof(T)));
    cudaCheck(cudaMemset(gv, 0xff, nk * sizeof(T)));
    bwd(gq, gk, gv, scratch, ddout, dq_, dk_, dv_, dout_in, dlse_in, B, T_, Hq, Hkv, d, window, 0);
    cudaCheck(cudaDeviceSynchronize());
    std::vector<float> gk2 = download(gk, nk, false), gv2 = download(gv, nk, false);
    CHECK(memcmp(gk1.data(), gk2.data(), nk * sizeof(float)) == 0 && memcmp(gv1.data(), gv2.data(), nk * sizeof(float)) == 0,
          "%s dk/dv not reproducible: %s", tname((T *)0), label);

    T *bufs[] = {dq_, dk_, dv_, ddout, dout_in, dout_, gq, gk, gv};
    for (T *p : bufs) cudaCheck(cudaFree(p));
    cudaCheck(cudaFree(dlse_in));
    cudaCheck(cudaFree(dlse));
    cudaCheck(cudaFree(scratch));
}

template <typename T>
static void rope_case(int B, int T_, int H, int d, int pos0, DNRng *rng) {
    const int prec = sizeof(T) == 2;
    const double tol = prec ? 2e-2 : 1e-5;
    const size_t n = (size_t)B * T_ * H * d;
    char label[96];
    snprintf(label, sizeof label, "B=%d T=%d H=%d d=%d pos0=%d", B, T_, H, d, pos0);
    const float base = 10000.0f;
    float *cs;
    cudaCheck(cudaMalloc(&cs, (size_t)(pos0 + T_) * d * sizeof(float)));
    rope_table_init(cs, pos0 + T_, d, base, 0);

    /* the forward and the backward are the same in-place pass: a random x through both */
    auto in_place = [&](int q, void (*cpu)(float *, int, int, int, int, float, int),
                        void (*gpu)(T *, const float *, int, int, int, int, int, cudaStream_t)) {
        std::vector<float> x = rand_vec<T>(n, rng, 1.0f), ref(x);
        cpu(ref.data(), B, T_, H, d, base, pos0);
        T *dx = upload<T>(x);
        gpu(dx, cs, B, T_, H, d, pos0, 0);
        cudaCheck(cudaDeviceSynchronize());
        check(prec, q, download(dx, n, false), ref, tol, label);
        cudaCheck(cudaFree(dx));
    };
    in_place(Q_ROPE_F, ref_rope_forward, rope_forward<T>);
    in_place(Q_ROPE_B, ref_rope_backward, rope_backward<T>);
    cudaCheck(cudaFree(cs));
}

struct Shape { int B, T, Hq, Hkv, d, window; };

/* Every T with every window kind, both head sizes; heads and batch cycle through their values. */
static std::vector<Shape> all_shapes() {
    const int Ts[] = {1, 63, 64, 65, 200, 777}, heads[3][2] = {{4, 4}, {4, 2}, {6, 1}};
    std::vector<Shape> v;
    for (int ti = 0; ti < 6; ti++)
        for (int wi = 0; wi < 5; wi++)
            for (int di = 0; di < 2; di++) {
                const int T_ = Ts[ti], c = ti + wi + di, windows[5] = {0, 1, 16, 100, T_ + 3 * wi};
                int B = 1 + c % 2;
                if (T_ == 777 && (wi == 0 || wi == 4)) B = 1; /* the O(T^2) reference dominates */
                v.push_back({B, T_, heads[c % 3][0], heads[c % 3][1], di ? 128 : 64, windows[wi]});
            }
    v.push_back({2, 65, 4, 2, 32, 0}); /* d = 32 */
    v.push_back({1, 200, 6, 1, 32, 16});
    return v;
}
static std::vector<Shape> small_shapes() {
    return {{1, 65, 2, 1, 64, 0}, {1, 130, 2, 2, 128, 16}, {2, 33, 2, 1, 32, 5}};
}

int main(int argc, char **argv) {
    const bool small = (argc > 1 && strcmp(argv[1], "--small") == 0) || getenv("DN_SMALL");
    int dev;
    cudaDeviceProp prop;
    cudaCheck(cudaGetDevice(&dev));
    cudaCheck(cudaGetDeviceProperties(&prop, dev));
    printf("test_attention on %s%s\n", prop.name, small ? " (--small)" : "");
    DNRng rng;
    dn_rng_seed(&rng, 42);

    std::vector<Shape> shapes = small ? small_shapes() : all_shapes();
    for (const Shape &s : shapes) attention_case<float>(s.B, s.T, s.Hq, s.Hkv, s.d, s.window, &rng);
    for (const Shape &s : shapes) attention_case<bf16>(s.B, s.T, s.Hq, s.Hkv, s.d, s.window, &rng);
    /* the bf16 kernels with plain fragment loads: separates ldmatrix addressing from the rest */
    attention_case<bf16>(1, 65, 4, 2, 64, 0, &rng, attn::forward_impl<bf16, false>, attn::backward_impl<bf16, false>,
                         " (no ldmatrix)");
    attention_case<bf16>(1, 200, 4, 1, 128, 16, &rng, attn::forward_impl<bf16, false>, attn::backward_impl<bf16, false>,
                         " (no ldmatrix)");
    if (!small) { /* every tile variant the bench times */
        const Shape vs[2] = {{1, 200, 4, 2, 128, 0}, {2, 777, 6, 1, 64, 100}};
        for (const Shape &s : vs) {
            attention_case<bf16>(s.B, s.T, s.Hq, s.Hkv, s.d, s.window, &rng, fwd_variant<4, 1, 64>, bwd_variant<8>, " [fwd 4,1,64 bwd 8]");
            attention_case<bf16>(s.B, s.T, s.Hq, s.Hkv, s.d, s.window, &rng, fwd_variant<4, 2, 64>, bwd_variant<4>, " [fwd 4,2,64 bwd 4]");
            attention_case<bf16>(s.B, s.T, s.Hq, s.Hkv, s.d, s.window, &rng, fwd_variant<4, 2, 32>, bwd_variant<8>, " [fwd 4,2,32 bwd 8]");
            attention_case<bf16>(s.B, s.T, s.Hq, s.Hkv, s.d, s.window, &rng, fwd_variant<8, 1, 64>, bwd_variant<4>, " [fwd 8,1,64 bwd 4]");
            attention_case<bf16>(s.B, s.T, s.Hq, s.Hkv, s.d, s.window, &rng, fwd_variant<4, 1, 64, 3, false>, bwd_variant<4>,
                                 " [fwd 4,1,64 minB 3 Q-smem]");
        }
    }

    const int rs[][5] = {{2, 65, 4, 64, 0}, {1, 777, 6, 128, 3}, {1, 1, 2, 32, 0}, {1, 40, 2, 64, 2000}};
    for (auto &r : rs) rope_case<float>(r[0], r[1], r[2], r[3], r[4], &rng);
    for (auto &r : rs) rope_case<bf16>(r[0], r[1], r[2], r[3], r[4], &rng);

    printf("\nworst relative error          fp32 (tol 1e-5)   bf16 (tol 2e-2)\n");
    for (int qi = 0; qi < NQ; qi++) printf("  %-26s  %.3e         %.3e\n", qname[qi], worst[0][qi], worst[1][qi]);
    return test_summary("test_attention_gpu");
}
