/*
 * test_matmul.cu -- kernels/matmul.cuh (cuBLASLt forward, backward data and weight) against the CPU reference; the checks, tolerances and flags
 * (--small, --fp32, --bf16) are those of kernel_test.cuh.
 */
#include "../../kernels/matmul.cuh"
#include "kernel_test.cuh"

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
    /* an output written (=, on a poisoned buffer), then accumulated (+=) onto init: launch(accumulate) */
    auto assign_then_add = [&](const char *what, T *d_out, Vec ref, const Vec &init, auto launch) {
        poison(d_out, ref.size());
        launch(0);
        CHECK_REL(rel(download(d_out, ref.size()), ref), tol<T>(), "%s matmul %s   N=%d C=%d OC=%d", tn, what, N, C, OC);
        set(d_out, init);
        launch(1);
        for (size_t i = 0; i < ref.size(); i++) ref[i] += init[i];
        CHECK_REL(rel(download(d_out, ref.size()), ref), tol<T>(), "%s matmul %s+= N=%d C=%d OC=%d", tn, what, N, C, OC);
    };
    Vec ref((size_t)N * OC);
    ref_linear_forward(ref.data(), x.data(), w.data(), N, C, OC);
    assign_then_add("fwd   ", d_y, ref, y0, [&](int acc) { matmul_forward(g_mm, d_y, d_x, d_w, N, C, OC, acc, 0); });
    Vec rdx((size_t)N * C, 0.0f);
    ref_linear_backward(rdx.data(), NULL, dy.data(), x.data(), w.data(), N, C, OC);
    assign_then_add("bwd dx", d_dx, rdx, dx0, [&](int acc) { matmul_backward_data(g_mm, d_dx, d_dy, d_w, N, C, OC, acc, 0); });
    /* backward weight += (fp32) */
    Vec rdw = dw0;
    ref_linear_backward(NULL, rdw.data(), dy.data(), x.data(), w.data(), N, C, OC);
    matmul_backward_weight(g_mm, d_dw, d_dy, d_x, N, C, OC, 0);
    CHECK_REL(rel(download(d_dw, rdw.size()), rdw), tol<T>(), "%s matmul bwd dw+= N=%d C=%d OC=%d", tn, N, C, OC);
    cudaFree(d_x); cudaFree(d_w); cudaFree(d_dy); cudaFree(d_y); cudaFree(d_dx); cudaFree(d_dw);
}

template <typename T>
static void run(DNRng *r) {
    printf("---- %s\n", tname((T *)0));
    /* N = 1, odd N / C / OC, the beta projection (OC = H = 6), a d12-like shape */
    test_matmul<T>(1, 64, 48, r);
    test_matmul<T>(7 * 33, 72, 40, r);
    if (!g_small) test_matmul<T>(512, 768, 2304, r);
    /* odd leading dimensions (rows of 13 or 6 bf16 are not 16-byte multiples) */
    test_matmul<T>(7 * 33, 37, 13, r);
    test_matmul<T>(7 * 33, 768, 6, r);
}

int main(int argc, char **argv) {
    g_mm = matmul_create();
    int rc = kernel_test_main(argc, argv, "test_matmul_gpu", run<float>, run<bf16>);
    matmul_destroy(g_mm);
    return rc;
}
