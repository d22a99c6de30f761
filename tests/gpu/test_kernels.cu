/*
 * test_kernels.cu -- kernels/matmul.cuh, layers.cuh and adamw.cuh against the CPU reference
 * (ref/layers.c, ref/model.c): every forward and backward, in fp32 (bound 1e-5) and bf16 (bound
 * 2e-2, inputs rounded to bf16 before the reference sees them). Errors are ||gpu - ref|| / ||ref||.
 * Inputs are random and never zero; every output is poisoned (NaN bits) before each run, so an
 * unwritten element fails; gradient outputs that accumulate (+=) start from random values.
 * Odd shapes throughout (N = 1, N = 7*33, C not a multiple of 8, T across time tiles, runs of
 * equal tokens across embedding chunks; the conv's planar layout against the re-laid-out reference).
 * Parameter-gradient reductions are also checked to be bitwise reproducible.
 *
 *   build/tests/gpu/test_kernels            all shapes
 *   build/tests/gpu/test_kernels --small    small shapes only (for compute-sanitizer)
 *   build/tests/gpu/test_kernels --fp32     (or --bf16) one precision only
 */
#include <vector>
#include <cstring>
#include "../../kernels/matmul.cuh"
#include "../../kernels/embedding.cuh"
#include "../../kernels/rmsnorm.cuh"
#include "../../kernels/conv.cuh"
#include "../../kernels/sigmoid.cuh"
#include "../../kernels/swiglu.cuh"
#include "../../kernels/crossentropy.cuh"
#include "../../kernels/reduce.cuh"
#include "../../kernels/adamw.cuh"
#include "gpu_util.cuh"
#include "../test.h"
#include "../../ref/reference.h"

typedef std::vector<float> Vec;

static const char *tname(const float *) { return "fp32"; }
static const char *tname(const bf16 *) { return "bf16"; }
template <typename T> static double tol() { return sizeof(T) == 2 ? 2e-2 : 1e-5; }

static float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }
template <typename T> static float round_to(float x) { return sizeof(T) == 2 ? round_bf16(x) : x; }

/* n values ~N(0, scale), never exactly zero, rounded to T's precision. */
template <typename T>
static Vec rand_vec(size_t n, DNRng *r, float scale) {
    Vec x(n);
    for (size_t i = 0; i < n; i++) {
        float v = scale * dn_rng_normal(r);
        if (v == 0.0f) v = 1e-3f;
        x[i] = round_to<T>(v);
    }
    return x;
}
template <typename T>
static void set(T *d, const Vec &h) {
    std::vector<T> t(h.size());
    for (size_t i = 0; i < h.size(); i++) t[i] = from_f<T>(h[i]);
    cudaCheck(cudaMemcpy(d, t.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
}
static double rel(const Vec &a, const Vec &ref) { return rel_err_f(a.data(), ref.data(), ref.size()); }
static bool same_bits(const Vec &a, const Vec &b) { return a.size() == b.size() && !memcmp(a.data(), b.data(), a.size() * 4); }

static int g_small = 0;
static MatmulContext *g_mm;

/* ---- matmul ------------------------------------------------------------------------------------ */

template <typename T>
static void test_matmul(int N, int C, int OC, DNRng *r) {
    const char *tn = tname((T *)0);
    Vec x = rand_vec<T>((size_t)N * C, r, 1.0f), w = rand_vec<T>((size_t)OC * C, r, 0.1f);
    Vec dy = rand_vec<T>((size_t)N * OC, r, 1.0f), y0 = rand_vec<T>((size_t)N * OC, r, 1.0f);
    Vec dx0 = rand_vec<T>((size_t)N * C, r, 1.0f), dw0 = rand_vec<float>((size_t)OC * C, r, 1.0f);
    T *d_x = upload<T>(x), *d_w = upload<T>(w), *d_dy = upload<T>(dy);
    T *d_y = alloc_poisoned<T>((size_t)N * OC), *d_dx = alloc_poisoned<T>((size_t)N * C);
    float *d_dw = upload<float>(dw0);
    /* forward = */
    Vec ref((size_t)N * OC);
    ref_linear_forward(ref.data(), x.data(), w.data(), N, C, OC);
    matmul_forward(g_mm, d_y, d_x, d_w, N, C, OC, 0, 0);
    CHECK_REL(rel(download(d_y, ref.size()), ref), tol<T>(), "%s matmul fwd      N=%d C=%d OC=%d", tn, N, C, OC);
    /* forward += */
    set(d_y, y0);
    matmul_forward(g_mm, d_y, d_x, d_w, N, C, OC, 1, 0);
    for (size_t i = 0; i < ref.size(); i++) ref[i] += y0[i];
    CHECK_REL(rel(download(d_y, ref.size()), ref), tol<T>(), "%s matmul fwd +=   N=%d C=%d OC=%d", tn, N, C, OC);
    /* backward data = and += */
    Vec rdx((size_t)N * C, 0.0f);
    ref_linear_backward(rdx.data(), NULL, dy.data(), x.data(), w.data(), N, C, OC);
    poison(d_dx, rdx.size());
    matmul_backward_data(g_mm, d_dx, d_dy, d_w, N, C, OC, 0, 0);
    CHECK_REL(rel(download(d_dx, rdx.size()), rdx), tol<T>(), "%s matmul bwd dx   N=%d C=%d OC=%d", tn, N, C, OC);
    set(d_dx, dx0);
    matmul_backward_data(g_mm, d_dx, d_dy, d_w, N, C, OC, 1, 0);
    for (size_t i = 0; i < rdx.size(); i++) rdx[i] += dx0[i];
    CHECK_REL(rel(download(d_dx, rdx.size()), rdx), tol<T>(), "%s matmul bwd dx+= N=%d C=%d OC=%d", tn, N, C, OC);
    /* backward weight += (fp32) */
    Vec rdw = dw0;
    ref_linear_backward(NULL, rdw.data(), dy.data(), x.data(), w.data(), N, C, OC);
    matmul_backward_weight(g_mm, d_dw, d_dy, d_x, N, C, OC, 0);
    CHECK_REL(rel(download(d_dw, rdw.size()), rdw), tol<T>(), "%s matmul bwd dw+= N=%d C=%d OC=%d", tn, N, C, OC);
    cudaFree(d_x); cudaFree(d_w); cudaFree(d_dy); cudaFree(d_y); cudaFree(d_dx); cudaFree(d_dw);
}

/* ---- rmsnorm ----------------------------------------------------------------------------------- */

template <typename T>
static void test_rmsnorm(int N, int C, int resid, DNRng *r) {
    const char *tn = tname((T *)0);
    const float eps = 1e-6f;
    Vec h = rand_vec<T>((size_t)N * C, r, 1.0f), br = rand_vec<T>((size_t)N * C, r, 0.5f);
    Vec g = rand_vec<float>(C, r, 0.3f);
    for (auto &v : g) v += 1.0f;
    Vec x = h; /* the normalised input */
    if (resid) for (size_t i = 0; i < x.size(); i++) x[i] = round_to<T>(h[i] + br[i]);
    Vec ry((size_t)N * C), rr(N);
    ref_rmsnorm_forward(ry.data(), rr.data(), x.data(), g.data(), N, C, eps);
    T *d_h = upload<T>(h), *d_br = upload<T>(br), *d_y = alloc_poisoned<T>((size_t)N * C);
    float *d_g = upload<float>(g), *d_r = alloc_poisoned<float>(N);
    const char *what = resid ? "resid+rmsnorm" : "rmsnorm";
    if (resid) {
        T *d_res = alloc_poisoned<T>((size_t)N * C);
        residual_rmsnorm_forward(d_res, d_y, d_r, d_h, d_br, d_g, N, C, eps, 0);
        CHECK_REL(rel(download(d_res, x.size()), x), tol<T>(), "%s %s res N=%d C=%d", tn, what, N, C);
        poison(d_y, ry.size());
        residual_rmsnorm_forward(d_h, d_y, d_r, d_h, d_br, d_g, N, C, eps, 0); /* in place */
        CHECK_REL(rel(download(d_h, x.size()), x), tol<T>(), "%s %s res (in place) N=%d C=%d", tn, what, N, C);
        cudaFree(d_res);
    } else {
        rmsnorm_forward(d_y, d_r, d_h, d_g, N, C, eps, 0);
    }
    CHECK_REL(rel(download(d_y, ry.size()), ry), tol<T>(), "%s %s out N=%d C=%d", tn, what, N, C);
    CHECK_REL(rel(download(d_r, rr.size()), rr), tol<T>(), "%s %s rstd N=%d C=%d", tn, what, N, C);
    /* backward, from the reference's rstd; dinp = and +=, dg += */
    Vec dy = rand_vec<T>((size_t)N * C, r, 1.0f), dx0 = rand_vec<T>((size_t)N * C, r, 1.0f);
    Vec dg0 = rand_vec<float>(C, r, 1.0f);
    Vec rdx((size_t)N * C, 0.0f), rdg = dg0;
    ref_rmsnorm_backward(rdx.data(), rdg.data(), dy.data(), x.data(), g.data(), rr.data(), N, C);
    T *d_x = upload<T>(x), *d_dy = upload<T>(dy), *d_dx = alloc_poisoned<T>((size_t)N * C);
    float *d_rr = upload<float>(rr), *d_dg = upload<float>(dg0);
    float *d_scr = alloc_poisoned<float>(rmsnorm_backward_scratch_floats(N, C));
    rmsnorm_backward(d_dx, d_dg, d_scr, d_dy, d_x, d_g, d_rr, N, C, 0, 0);
    CHECK_REL(rel(download(d_dx, rdx.size()), rdx), tol<T>(), "%s rmsnorm bwd dx   N=%d C=%d", tn, N, C);
    Vec dg1 = download(d_dg, C);
    CHECK_REL(rel(dg1, rdg), tol<T>(), "%s rmsnorm bwd dg+= N=%d C=%d", tn, N, C);
    set(d_dx, dx0);
    set(d_dg, dg0);
    rmsnorm_backward(d_dx, d_dg, d_scr, d_dy, d_x, d_g, d_rr, N, C, 1, 0);
    for (size_t i = 0; i < rdx.size(); i++) rdx[i] += dx0[i];
    CHECK_REL(rel(download(d_dx, rdx.size()), rdx), tol<T>(), "%s rmsnorm bwd dx+= N=%d C=%d", tn, N, C);
    CHECK(same_bits(download(d_dg, C), dg1), "%s rmsnorm dg not bitwise reproducible N=%d C=%d", tn, N, C);
    cudaFree(d_h); cudaFree(d_br); cudaFree(d_y); cudaFree(d_g); cudaFree(d_r); cudaFree(d_x); cudaFree(d_dy);
    cudaFree(d_dx); cudaFree(d_rr); cudaFree(d_dg); cudaFree(d_scr);
}

/* ---- conv + silu + l2norm ---------------------------------------------------------------------- */

/* apply f to each head row (channels [h*K, h*K+K) of the first Cn channels) gathered as [rows, K] */
static void gather_heads(Vec &dst, const Vec &src, int N, int C, int Cn, int K) {
    int H = Cn / K;
    dst.assign((size_t)N * Cn, 0.0f);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < Cn; c++) dst[((size_t)n * H + c / K) * K + c % K] = src[(size_t)n * C + c];
}
static void scatter_heads(Vec &dst, const Vec &src, int N, int C, int Cn, int K) {
    int H = Cn / K;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < Cn; c++) dst[(size_t)n * C + c] = src[((size_t)n * H + c / K) * K + c % K];
}

/* [N, C] rows <-> C/plane planes [N, plane] (plane j = channels [j*plane, (j+1)*plane)) */
static Vec to_planar(const Vec &v, int N, int C, int plane) {
    Vec o(v.size());
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) o[((size_t)(c / plane) * N + n) * plane + c % plane] = v[(size_t)n * C + c];
    return o;
}

/* plane > 0: the delta-rule side (y, dy) planar, x and dx rows */
template <typename T>
static void test_conv(int B, int T_, int C, int Cn, int K, int plane, DNRng *r) {
    const char *tn = tname((T *)0);
    const float eps = 1e-6f;
    int N = B * T_;
    Vec x = rand_vec<T>((size_t)N * C, r, 1.0f), w = rand_vec<float>((size_t)C * 4, r, 0.5f);
    Vec u((size_t)N * C), y;
    ref_conv_silu_forward(u.data(), x.data(), w.data(), B, T_, C, 4);
    y = u;
    Vec uh, yh;
    if (Cn > 0) {
        gather_heads(uh, u, N, C, Cn, K);
        yh.resize(uh.size());
        ref_l2norm_forward(yh.data(), uh.data(), N * (Cn / K), K, eps);
        scatter_heads(y, yh, N, C, Cn, K);
    }
    T *d_x = upload<T>(x), *d_y = alloc_poisoned<T>((size_t)N * C);
    float *d_w = upload<float>(w);
    conv_silu_l2norm_forward(d_y, d_x, d_w, B, T_, C, Cn, K, eps, 0, plane);
    CHECK_REL(rel(download(d_y, y.size()), plane ? to_planar(y, N, C, plane) : y), tol<T>(),
              "%s conv_silu_l2 fwd    B=%d T=%d C=%d Cn=%d K=%d plane=%d", tn, B, T_, C, Cn, K, plane);
    /* backward: du = l2norm_backward(dy) on the normalised channels, then the conv backward */
    Vec dy = rand_vec<T>((size_t)N * C, r, 1.0f), du = dy;
    if (Cn > 0) {
        Vec dyh, duh((size_t)N * Cn, 0.0f);
        gather_heads(dyh, dy, N, C, Cn, K);
        ref_l2norm_backward(duh.data(), dyh.data(), uh.data(), N * (Cn / K), K, eps);
        scatter_heads(du, duh, N, C, Cn, K);
    }
    Vec dw0 = rand_vec<float>((size_t)C * 4, r, 1.0f);
    Vec rdx((size_t)N * C, 0.0f), rdw = dw0;
    ref_conv_silu_backward(rdx.data(), rdw.data(), du.data(), x.data(), w.data(), B, T_, C, 4);
    T *d_dy = upload<T>(plane ? to_planar(dy, N, C, plane) : dy), *d_dx = alloc_poisoned<T>((size_t)N * C);
    float *d_dw = upload<float>(dw0);
    float *d_scr = alloc_poisoned<float>(conv_silu_l2norm_backward_scratch_floats(B, T_, C, K));
    conv_silu_l2norm_backward(d_dx, d_dw, d_scr, d_dy, d_x, d_w, B, T_, C, Cn, K, eps, 0, plane);
    CHECK_REL(rel(download(d_dx, rdx.size()), rdx), tol<T>(),
              "%s conv_silu_l2 bwd dx   B=%d T=%d C=%d Cn=%d K=%d plane=%d", tn, B, T_, C, Cn, K, plane);
    Vec dw1 = download(d_dw, rdw.size());
    CHECK_REL(rel(dw1, rdw), tol<T>(), "%s conv_silu_l2 bwd dw+= B=%d T=%d C=%d Cn=%d K=%d plane=%d", tn, B, T_, C, Cn,
              K, plane);
    set(d_dw, dw0);
    conv_silu_l2norm_backward(d_dx, d_dw, d_scr, d_dy, d_x, d_w, B, T_, C, Cn, K, eps, 0, plane);
    CHECK(same_bits(download(d_dw, rdw.size()), dw1), "%s conv dw not bitwise reproducible", tn);
    cudaFree(d_x); cudaFree(d_y); cudaFree(d_w); cudaFree(d_dy); cudaFree(d_dx); cudaFree(d_dw); cudaFree(d_scr);
}

/* ---- sigmoid, swiglu --------------------------------------------------------------------------- */

template <typename T>
static void test_sigmoid(int n, DNRng *r) {
    const char *tn = tname((T *)0);
    Vec x = rand_vec<T>(n, r, 2.0f), ry(n), dy = rand_vec<float>(n, r, 1.0f);
    ref_sigmoid_forward(ry.data(), x.data(), n);
    T *d_x = upload<T>(x);
    float *d_y = alloc_poisoned<float>(n); /* float beta from floatX logits, as the trainer may use */
    sigmoid_forward(d_y, d_x, n, 0);
    Vec y = download(d_y, n);
    CHECK_REL(rel(y, ry), 1e-5, "%s sigmoid fwd n=%d", tn, n);
    Vec rdx(n, 0.0f);
    ref_sigmoid_backward(rdx.data(), dy.data(), y.data(), n);
    float *d_dy = upload<float>(dy);
    T *d_dx = alloc_poisoned<T>(n);
    sigmoid_backward(d_dx, d_dy, d_y, n, 0);
    CHECK_REL(rel(download(d_dx, n), rdx), tol<T>(), "%s sigmoid bwd n=%d", tn, n);
    /* same-type, in place */
    T *d_z = upload<T>(x);
    sigmoid_forward(d_z, d_z, n, 0);
    Vec rz = ry;
    CHECK_REL(rel(download(d_z, n), rz), tol<T>(), "%s sigmoid fwd in place n=%d", tn, n);
    cudaFree(d_x); cudaFree(d_y); cudaFree(d_dy); cudaFree(d_dx); cudaFree(d_z);
}

template <typename T>
static void test_swiglu(int N, int I, DNRng *r) {
    const char *tn = tname((T *)0);
    Vec gu = rand_vec<T>((size_t)N * 2 * I, r, 1.5f), dy = rand_vec<T>((size_t)N * I, r, 1.0f);
    Vec a((size_t)N * I), u((size_t)N * I);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < I; i++) { a[(size_t)n * I + i] = gu[(size_t)n * 2 * I + i]; u[(size_t)n * I + i] = gu[(size_t)n * 2 * I + I + i]; }
    Vec ry((size_t)N * I), rda((size_t)N * I, 0.0f), rdu((size_t)N * I, 0.0f);
    ref_swiglu_forward(ry.data(), a.data(), u.data(), N * I);
    ref_swiglu_backward(rda.data(), rdu.data(), dy.data(), a.data(), u.data(), N * I);
    Vec rdgu((size_t)N * 2 * I);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < I; i++) { rdgu[(size_t)n * 2 * I + i] = rda[(size_t)n * I + i]; rdgu[(size_t)n * 2 * I + I + i] = rdu[(size_t)n * I + i]; }
    T *d_gu = upload<T>(gu), *d_dy = upload<T>(dy), *d_y = alloc_poisoned<T>((size_t)N * I);
    T *d_dgu = alloc_poisoned<T>((size_t)N * 2 * I);
    swiglu_forward(d_y, d_gu, N, I, 0);
    CHECK_REL(rel(download(d_y, ry.size()), ry), tol<T>(), "%s swiglu fwd N=%d I=%d", tn, N, I);
    swiglu_backward(d_dgu, d_dy, d_gu, N, I, 0);
    CHECK_REL(rel(download(d_dgu, rdgu.size()), rdgu), tol<T>(), "%s swiglu bwd N=%d I=%d", tn, N, I);
    T *d_gu2 = upload<T>(gu), *d_dy2 = upload<T>(dy);
    swiglu_backward(d_gu, d_dy, d_gu, N, I, 0); /* in place */
    CHECK_REL(rel(download(d_gu, rdgu.size()), rdgu), tol<T>(), "%s swiglu bwd in place N=%d I=%d", tn, N, I);
    swiglu_backward(d_gu2, d_dy2, d_gu2, N, I, 0, d_dy2); /* in place, and y over dy (the trainer's call) */
    CHECK_REL(rel(download(d_gu2, rdgu.size()), rdgu), tol<T>(), "%s swiglu bwd in place + y N=%d I=%d", tn, N, I);
    CHECK_REL(rel(download(d_dy2, ry.size()), ry), tol<T>(), "%s swiglu bwd's y over dy N=%d I=%d", tn, N, I);
    cudaFree(d_gu2); cudaFree(d_dy2);
    cudaFree(d_gu); cudaFree(d_dy); cudaFree(d_y); cudaFree(d_dgu);
}

/* ---- embedding --------------------------------------------------------------------------------- */

template <typename T>
static void test_embedding(int N, int D, int V, int Vp, int distinct, DNRng *r) {
    const char *tn = tname((T *)0);
    std::vector<int> tok(N);
    for (int n = 0; n < N; n++) tok[n] = (int)(dn_rng_u64(r) % (uint64_t)distinct) * (V / distinct);
    Vec wte = rand_vec<T>((size_t)Vp * D, r, 0.5f), dy = rand_vec<T>((size_t)N * D, r, 1.0f);
    Vec ry((size_t)N * D);
    ref_embedding_forward(ry.data(), tok.data(), wte.data(), N, D);
    int *d_tok = upload_int(tok);
    T *d_wte = upload<T>(wte), *d_y = alloc_poisoned<T>((size_t)N * D), *d_dy = upload<T>(dy);
    embedding_forward(d_y, d_tok, d_wte, N, D, 0);
    CHECK_REL(rel(download(d_y, ry.size()), ry), 0.0, "%s embedding fwd N=%d D=%d", tn, N, D);
    Vec dw0 = rand_vec<float>((size_t)Vp * D, r, 1.0f), rdw = dw0;
    ref_embedding_backward(rdw.data(), dy.data(), tok.data(), N, D);
    float *d_dw = upload<float>(dw0);
    void *d_scr;
    size_t sb = embedding_backward_scratch_bytes(N, D, Vp);
    cudaCheck(cudaMalloc(&d_scr, sb));
    cudaCheck(cudaMemset(d_scr, 0xff, sb));
    embedding_backward(d_dw, d_scr, d_dy, d_tok, N, D, Vp, 0);
    Vec dw1 = download(d_dw, rdw.size());
    CHECK_REL(rel(dw1, rdw), 1e-6, "%s embedding bwd dwte+= N=%d D=%d Vp=%d distinct=%d", tn, N, D, Vp, distinct);
    set(d_dw, dw0);
    embedding_backward(d_dw, d_scr, d_dy, d_tok, N, D, Vp, 0);
    CHECK(same_bits(download(d_dw, rdw.size()), dw1), "%s embedding dwte not bitwise reproducible", tn);
    cudaFree(d_tok); cudaFree(d_wte); cudaFree(d_y); cudaFree(d_dy); cudaFree(d_dw); cudaFree(d_scr);
}

/* ---- cross-entropy ----------------------------------------------------------------------------- */

template <typename T>
static void test_xent(int N, int V, int Vp, DNRng *r) {
    const char *tn = tname((T *)0);
    Vec z = rand_vec<T>((size_t)N * Vp, r, 2.0f);
    std::vector<int> tgt(N);
    for (int n = 0; n < N; n++) tgt[n] = (int)(dn_rng_u64(r) % (uint64_t)V);
    float dloss = 0.75f;
    Vec rl(N), rdz((size_t)N * Vp, 0.0f);
    ref_crossentropy_forward(rl.data(), z.data(), tgt.data(), N, V, Vp);
    ref_crossentropy_backward(rdz.data(), z.data(), tgt.data(), N, V, Vp, dloss);
    int *d_t = upload_int(tgt);
    T *d_z = upload<T>(z);
    float *d_l = alloc_poisoned<float>(N);
    crossentropy_forward(d_l, d_z, d_t, N, V, Vp, 0);
    CHECK_REL(rel(download(d_l, N), rl), 1e-5, "%s xent fwd losses N=%d V=%d Vp=%d", tn, N, V, Vp);
    CHECK_REL(rel(download(d_z, z.size()), z), 0.0, "%s xent fwd leaves logits N=%d V=%d", tn, N, V);
    poison(d_l, N);
    crossentropy_forward_backward(d_z, d_l, d_t, dloss, N, V, Vp, 0);
    CHECK_REL(rel(download(d_l, N), rl), 1e-5, "%s xent fwd+bwd losses N=%d V=%d Vp=%d", tn, N, V, Vp);
    CHECK_REL(rel(download(d_z, z.size()), rdz), tol<T>(), "%s xent dlogits N=%d V=%d Vp=%d", tn, N, V, Vp);
    /* mean loss via sum_float */
    float *d_m = alloc_poisoned<float>(1);
    sum_float(d_m, d_l, N, 1.0f / N, 0, 0);
    double mean = 0;
    for (int n = 0; n < N; n++) mean += rl[n];
    mean /= N;
    Vec m1 = download(d_m, 1);
    CHECK_REL(fabs(m1[0] - mean) / fabs(mean), 1e-5, "%s sum_float mean loss N=%d", tn, N);
    cudaFree(d_t); cudaFree(d_z); cudaFree(d_l); cudaFree(d_m);
}

/* ---- adamw ------------------------------------------------------------------------------------- */

template <typename T>
static void test_adamw(DNRng *r) {
    const char *tn = tname((T *)0);
    DNConfig cfg;
    dn_config_preset(&cfg, "tiny");
    cfg.vocab_size = 1000;
    cfg.padded_vocab = 1024;
    cfg.tie_embeddings = 0;
    DNParamTable t;
    char err[256];
    if (dn_build_param_table(&t, &cfg, err, sizeof err)) { CHECK(0, "param table: %s", err); return; }
    size_t n = t.total;
    Vec w(n, 0.0f), g(n, 0.0f), m(n, 0.0f), v(n, 0.0f);
    for (int i = 0; i < t.n_params; i++) {
        const DNParam *p = &t.params[i];
        for (size_t j = p->offset; j < p->offset + p->numel; j++) {
            w[j] = 0.05f * dn_rng_normal(r) + (p->init_std == 0.0f ? 1.0f : 0.0f);
            g[j] = 0.01f * dn_rng_normal(r);
            m[j] = 0.01f * dn_rng_normal(r);
            v[j] = 1e-4f * dn_rng_uniform(r) + 1e-6f;
        }
    }
    float *d_w = upload<float>(w), *d_g = upload<float>(g), *d_m = upload<float>(m), *d_v = upload<float>(v);
    T *d_copy = alloc_poisoned<T>(n);
    AdamWSegments seg;
    adamw_segments_create(&seg, &t);
    const float clips[2] = {0.5f, 1e9f}; /* clipping active, then inactive */
    for (int ci = 0; ci < 2; ci++) {
        AdamWHParams hp = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, clips[ci], 3 + ci, 0};
        AdamWHParams *d_hp;
        GradNorm *d_gn;
        cudaCheck(cudaMalloc(&d_hp, sizeof hp));
        cudaCheck(cudaMalloc(&d_gn, sizeof(GradNorm)));
        cudaCheck(cudaMemcpy(d_hp, &hp, sizeof hp, cudaMemcpyHostToDevice));
        float *d_scr = alloc_poisoned<float>(grad_norm_scratch_floats());
        grad_norm(d_gn, d_scr, d_g, n, d_hp, 0);
        GradNorm gn;
        cudaCheck(cudaMemcpy(&gn, d_gn, sizeof gn, cudaMemcpyDeviceToHost));
        float rnorm = ref_grad_norm(g.data(), n);
        float rscale = rnorm > hp.grad_clip ? hp.grad_clip / rnorm : 1.0f;
        CHECK_REL(fabs(gn.norm - rnorm) / rnorm, 1e-5, "%s grad_norm (n=%zu)", tn, n);
        CHECK_REL(fabs(gn.scale - rscale) / rscale, 1e-5, "%s grad clip scale (clip %g)", tn, hp.grad_clip);
        Vec rw = w, rm = m, rv = v;
        ref_adamw_update(&t, rw.data(), g.data(), rm.data(), rv.data(), hp.step, hp.lr, hp.beta1, hp.beta2, hp.eps,
                         hp.weight_decay, rscale);
        adamw_update(d_w, d_copy, d_m, d_v, d_g, n, &seg, d_hp, d_gn, 0);
        Vec gw = download(d_w, n), gm = download(d_m, n), gv = download(d_v, n), gc = download(d_copy, n);
        /* compare the updates (w_new - w_old), which is what AdamW computes */
        Vec dw_ref(n), dw_gpu(n);
        for (size_t j = 0; j < n; j++) { dw_ref[j] = rw[j] - w[j]; dw_gpu[j] = gw[j] - w[j]; }
        CHECK_REL(rel(dw_gpu, dw_ref), 1e-4, "%s adamw update (w_new - w)", tn);
        CHECK_REL(rel(gw, rw), 1e-6, "%s adamw w", tn);
        CHECK_REL(rel(gm, rm), 1e-6, "%s adamw m", tn);
        CHECK_REL(rel(gv, rv), 1e-6, "%s adamw v", tn);
        Vec rc(n);
        for (size_t j = 0; j < n; j++) rc[j] = round_to<T>(gw[j]);
        CHECK_REL(rel(gc, rc), 0.0, "%s adamw floatX copy", tn);
        w = gw; m = gm; v = gv;
        cudaFree(d_hp); cudaFree(d_gn); cudaFree(d_scr);
    }
    /* fill + convert */
    fill_float(d_g, 0.25f, n, 0);
    Vec f = download(d_g, n);
    int fok = 1;
    for (size_t j = 0; j < n; j++) fok &= f[j] == 0.25f;
    CHECK(fok, "fill_float");
    convert(d_copy, d_w, n, 0);
    Vec c1 = download(d_copy, n), rc(n);
    for (size_t j = 0; j < n; j++) rc[j] = round_to<T>(w[j]);
    CHECK_REL(rel(c1, rc), 0.0, "%s convert float -> floatX", tn);
    convert(d_g, d_copy, n, 0);
    CHECK_REL(rel(download(d_g, n), rc), 0.0, "%s convert floatX -> float", tn);
    adamw_segments_free(&seg);
    dn_free_param_table(&t);
    cudaFree(d_w); cudaFree(d_g); cudaFree(d_m); cudaFree(d_v); cudaFree(d_copy);
}

/* ---- all --------------------------------------------------------------------------------------- */

template <typename T>
static void run_all(DNRng *r) {
    printf("---- %s\n", tname((T *)0));
    /* matmul: N = 1, odd N / C / OC, the beta projection (OC = H = 6), a d12-like shape */
    test_matmul<T>(1, 64, 48, r);
    test_matmul<T>(7 * 33, 72, 40, r);
    if (!g_small) test_matmul<T>(512, 768, 2304, r);
    /* rmsnorm: block norm, per-head norm (C = head_dim), odd C, N = 1, large C */
    for (int resid = 0; resid < 2; resid++) {
        test_rmsnorm<T>(1, 768, resid, r);
        test_rmsnorm<T>(7 * 33, 64, resid, r);
        test_rmsnorm<T>(7 * 33, 37, resid, r);
        if (!g_small) {
            test_rmsnorm<T>(7 * 33, 768, resid, r);
            test_rmsnorm<T>(7 * 33 * 6, 128, resid, r);
            test_rmsnorm<T>(1000, 2048, resid, r);
            test_rmsnorm<T>(3, 5, resid, r);
        }
    }
    /* conv + silu + l2norm: T = 1, warps' row ranges across sequence starts (T = 37, 257, 300),
     * K = 32, 64, 128 (heads of 8..32 lanes), 96 and 256 (K/32 channels per lane), plain odd C, a warp
     * whose channels are partly normalised (C = 5*128, Cn = 3*128), the planar layout (plane = K, D) */
    test_conv<T>(1, 1, 96, 64, 32, 0, r);
    test_conv<T>(2, 37, 3 * 64, 128, 64, 0, r);
    test_conv<T>(2, 37, 45, 0, 128, 0, r);
    test_conv<T>(1, 1, 3 * 64, 128, 64, 64, r);
    test_conv<T>(2, 37, 3 * 128, 256, 128, 128, r);
    test_conv<T>(2, 37, 5 * 128, 3 * 128, 128, 0, r);
    if (!g_small) {
        test_conv<T>(2, 300, 3 * 128, 256, 128, 0, r);
        test_conv<T>(1, 600, 3 * 768, 2 * 768, 128, 0, r);
        test_conv<T>(3, 257, 77, 0, 128, 0, r);
        test_conv<T>(2, 300, 768, 768, 128, 0, r);
        test_conv<T>(2, 300, 768, 0, 128, 0, r);
        test_conv<T>(3, 257, 3 * 768, 2 * 768, 128, 768, r);
        test_conv<T>(2, 45, 3 * 96, 2 * 96, 96, 0, r);
        test_conv<T>(2, 45, 3 * 96, 2 * 96, 96, 96, r);
        test_conv<T>(1, 70, 2 * 256 + 64, 2 * 256, 256, 0, r);
    }
    test_sigmoid<T>(1, r);
    test_sigmoid<T>(7 * 33 * 6, r);
    test_swiglu<T>(1, 24, r);
    test_swiglu<T>(7 * 33, 13, r);
    if (!g_small) test_swiglu<T>(7 * 33, 2048, r);
    /* embedding: long runs of one token across chunks, many distinct tokens, odd D */
    test_embedding<T>(7 * 33, 72, 100, 128, 1, r);
    test_embedding<T>(7 * 33, 37, 100, 100, 7, r);
    test_embedding<T>(1, 64, 100, 128, 50, r);
    if (!g_small) test_embedding<T>(4096, 768, 50257, 50304, 3000, r);
    /* cross-entropy: padded vocab, odd vocab, N = 1 */
    test_xent<T>(7 * 33, 1000, 1024, r);
    test_xent<T>(7, 37, 37, r);
    if (!g_small) { test_xent<T>(3, 50257, 50304, r); test_xent<T>(2, 32000, 32000, r); }
    else test_xent<T>(1, 300, 384, r);
    test_adamw<T>(r);
    /* last: odd leading dimensions (rows of 13 or 6 bf16 are not 16-byte multiples) */
    test_matmul<T>(7 * 33, 37, 13, r);
    test_matmul<T>(7 * 33, 768, 6, r);
}

int main(int argc, char **argv) {
    int do_f32 = 1, do_bf16 = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--small")) g_small = 1;
        else if (!strcmp(argv[i], "--fp32")) do_bf16 = 0;
        else if (!strcmp(argv[i], "--bf16")) do_f32 = 0;
    }
    DNRng r;
    dn_rng_seed(&r, 42);
    g_mm = matmul_create();
    if (do_f32) run_all<float>(&r);
    if (do_bf16) run_all<bf16>(&r);
    matmul_destroy(g_mm);
    return test_summary("test_kernels_gpu");
}
