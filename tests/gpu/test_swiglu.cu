/*
 * test_swiglu.cu -- kernels/swiglu.cuh against the CPU reference; the checks, tolerances and flags
 * (--small, --fp32, --bf16) are those of kernel_test.cuh.
 */
#include "../../kernels/swiglu.cuh"
#include "kernel_test.cuh"

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

template <typename T>
static void run(DNRng *r) {
    printf("---- %s\n", tname((T *)0));
    test_swiglu<T>(1, 24, r);
    test_swiglu<T>(7 * 33, 13, r);
    if (!g_small) test_swiglu<T>(7 * 33, 2048, r);
}

int main(int argc, char **argv) {
    int rc = kernel_test_main(argc, argv, "test_swiglu_gpu", run<float>, run<bf16>);
    return rc;
}
