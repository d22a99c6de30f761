/*
 * test_conv.cu -- kernels/conv.cuh (causal conv + SiLU + per-head L2 norm; the planar layout against the
 * re-laid-out reference) against the CPU reference; the checks, tolerances and flags
 * (--small, --fp32, --bf16) are those of kernel_test.cuh.
 */
#include "../../kernels/conv.cuh"
#include "kernel_test.cuh"

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
    const float eps = DN_DEFAULT_L2_EPS;
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

template <typename T>
static void run(DNRng *r) {
    printf("---- %s\n", tname((T *)0));
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
}

int main(int argc, char **argv) {
    int rc = kernel_test_main(argc, argv, "test_conv_gpu", run<float>, run<bf16>);
    return rc;
}
