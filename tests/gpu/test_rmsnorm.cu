/*
 * test_rmsnorm.cu -- kernels/rmsnorm.cuh (RMSNorm and the fused residual add + RMSNorm) against the CPU reference; the checks, tolerances and flags
 * (--small, --fp32, --bf16) are those of kernel_test.cuh.
 */
#include "../../kernels/rmsnorm.cuh"
#include "kernel_test.cuh"

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

template <typename T>
static void run(DNRng *r) {
    printf("---- %s\n", tname((T *)0));
    /* block norm, per-head norm (C = head_dim), odd C, N = 1, large C */
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
}

int main(int argc, char **argv) {
    int rc = kernel_test_main(argc, argv, "test_rmsnorm_gpu", run<float>, run<bf16>);
    return rc;
}
