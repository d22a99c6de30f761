/*
 * test_crossentropy.cu -- kernels/crossentropy.cuh (and the loss sum of kernels/reduce.cuh) against the CPU reference; the checks, tolerances and flags
 * (--small, --fp32, --bf16) are those of kernel_test.cuh. Also the loss mask (row weights N mask /
 * count: the mean over the masked rows, no gradient elsewhere) and the argmax accuracy.
 */
#include "../../kernels/crossentropy.cuh"
#include "../../kernels/reduce.cuh"
#include "kernel_test.cuh"

/* model_gpu.cuh's loss_mask_weights, restated so this test needs no model: N mask / count. */
static void loss_mask_weights_test(float *w, const unsigned char *mask, int N) {
    int count = 0;
    for (int n = 0; n < N; n++) count += mask[n] != 0;
    for (int n = 0; n < N; n++) w[n] = mask[n] && count ? (float)N / count : 0.0f;
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

/* Row weights from a mask: the losses and dlogits of ref_crossentropy_weighted_backward, rows out
 * of the mask exactly zero; argmax hits against a CPU argmax. */
template <typename T>
static void test_xent_masked(int N, int V, int Vp, DNRng *r) {
    const char *tn = tname((T *)0);
    Vec z = rand_vec<T>((size_t)N * Vp, r, 2.0f);
    std::vector<int> tgt(N);
    std::vector<unsigned char> mask(N);
    int count = 0;
    for (int n = 0; n < N; n++) {
        mask[n] = dn_rng_uniform(r) < 0.3f;
        count += mask[n];
        tgt[n] = (int)(dn_rng_u64(r) % (uint64_t)V);
        if (n % 3 == 0) { /* make some rows right: the target is the argmax */
            int best = 0;
            for (int j = 1; j < V; j++) if (z[(size_t)n * Vp + j] > z[(size_t)n * Vp + best]) best = j;
            tgt[n] = best;
        }
    }
    Vec w(N), rl(N), rw(N), rdz((size_t)N * Vp, 0.0f);
    loss_mask_weights_test(w.data(), mask.data(), N);
    for (int n = 0; n < N; n++) rw[n] = mask[n] && count ? 1.0f / count : 0.0f;
    ref_crossentropy_forward(rl.data(), z.data(), tgt.data(), N, V, Vp);
    ref_crossentropy_weighted_backward(rdz.data(), z.data(), tgt.data(), rw.data(), N, V, Vp);
    double mean = 0, hits_ref = 0;
    for (int n = 0; n < N; n++) {
        if (!mask[n]) continue;
        mean += rl[n] / count;
        int best = 0;
        for (int j = 1; j < V; j++) if (z[(size_t)n * Vp + j] > z[(size_t)n * Vp + best]) best = j;
        hits_ref += best == tgt[n];
    }
    int *d_t = upload_int(tgt);
    T *d_z = upload<T>(z);
    float *d_w = upload<float>(w), *d_l = alloc_poisoned<float>(N), *d_m = alloc_poisoned<float>(1), *d_h = alloc_poisoned<float>(N);
    float *d_hs = alloc_poisoned<float>(1);
    argmax_hits(d_h, d_z, d_t, d_w, N, V, Vp, 0);
    sum_float(d_hs, d_h, N, 1.0f, 0, 0);
    CHECK(download(d_hs, 1)[0] == (float)hits_ref, "%s argmax hits %g, CPU %g (N=%d V=%d)", tn, download(d_hs, 1)[0], hits_ref, N, V);
    crossentropy_forward_backward(d_z, d_l, d_t, 1.0f, N, V, Vp, 0, d_w);
    sum_float(d_m, d_l, N, 1.0f / N, 0, 0);
    CHECK_REL(fabs(download(d_m, 1)[0] - mean) / mean, 1e-5, "%s masked mean loss N=%d V=%d (%d masked)", tn, N, V, count);
    Vec dz = download(d_z, z.size());
    CHECK_REL(rel(dz, rdz), tol<T>(), "%s masked dlogits N=%d V=%d", tn, N, V);
    double off = 0;
    for (int n = 0; n < N; n++) if (!mask[n]) for (int j = 0; j < Vp; j++) off += fabs(dz[(size_t)n * Vp + j]);
    CHECK(off == 0.0, "%s rows outside the mask get no gradient (sum |dz| = %g)", tn, off);
    cudaFree(d_t); cudaFree(d_z); cudaFree(d_w); cudaFree(d_l); cudaFree(d_m); cudaFree(d_h); cudaFree(d_hs);
}

template <typename T>
static void run(DNRng *r) {
    printf("---- %s\n", tname((T *)0));
    /* padded vocab, odd vocab, N = 1 */
    test_xent<T>(7 * 33, 1000, 1024, r);
    test_xent<T>(7, 37, 37, r);
    if (!g_small) { test_xent<T>(3, 50257, 50304, r); test_xent<T>(2, 32000, 32000, r); }
    else test_xent<T>(1, 300, 384, r);
    test_xent_masked<T>(7 * 33, 1000, 1024, r);
    test_xent_masked<T>(40, 8192, 8192, r);
}

int main(int argc, char **argv) {
    int rc = kernel_test_main(argc, argv, "test_crossentropy_gpu", run<float>, run<bf16>);
    return rc;
}
