/*
 * test_crossentropy.cu -- kernels/crossentropy.cuh (and the loss sum of kernels/reduce.cuh) against the CPU reference; the checks, tolerances and flags
 * (--small, --fp32, --bf16) are those of kernel_test.cuh.
 */
#include "../../kernels/crossentropy.cuh"
#include "../../kernels/reduce.cuh"
#include "kernel_test.cuh"

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

template <typename T>
static void run(DNRng *r) {
    printf("---- %s\n", tname((T *)0));
    /* padded vocab, odd vocab, N = 1 */
    test_xent<T>(7 * 33, 1000, 1024, r);
    test_xent<T>(7, 37, 37, r);
    if (!g_small) { test_xent<T>(3, 50257, 50304, r); test_xent<T>(2, 32000, 32000, r); }
    else test_xent<T>(1, 300, 384, r);
}

int main(int argc, char **argv) {
    int rc = kernel_test_main(argc, argv, "test_crossentropy_gpu", run<float>, run<bf16>);
    return rc;
}
