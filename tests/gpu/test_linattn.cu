/*
 * test_linattn.cu -- kernels/linattn.cuh (linear attention, 'L' layers) against the CPU reference
 * (ref/linattn.c's recurrence from a zero state): the output and dq, dk, dv; the checks, tolerances
 * and flags (--small, --fp32, --bf16) are those of kernel_test.cuh. Odd shapes: T not a multiple of
 * the tile, K != V, several heads and batch rows; head sizes 64/128 (the tensor-core kernel) and others
 * (the scalar kernel).
 */
#include "../../kernels/linattn.cuh"
#include "kernel_test.cuh"

template <typename T>
static void test_linattn(int B, int Tn, int H, int K, int V, DNRng *r) {
    const char *tn = tname((T *)0);
    const size_t nq = (size_t)B * Tn * H * K, nv = (size_t)B * Tn * H * V;
    const float scale = 1.0f / sqrtf((float)K);
    /* q, k L2-normalised per head as the model feeds them (unit rows keep the sums O(T)) */
    Vec q = rand_vec<T>(nq, r, 1.0f), k = rand_vec<T>(nq, r, 1.0f), v = rand_vec<T>(nv, r, 1.0f), dout = rand_vec<T>(nv, r, 1.0f);
    Vec qn(nq), kn(nq);
    ref_l2norm_forward(qn.data(), q.data(), B * Tn * H, K, 1e-6f);
    ref_l2norm_forward(kn.data(), k.data(), B * Tn * H, K, 1e-6f);
    for (size_t i = 0; i < nq; i++) { qn[i] = round_to<T>(qn[i]); kn[i] = round_to<T>(kn[i]); }
    Vec ro(nv), rdq(nq, 0.0f), rdk(nq, 0.0f), rdv(nv, 0.0f);
    ref_linear_attn_recurrent_forward(ro.data(), NULL, qn.data(), kn.data(), v.data(), NULL, B, Tn, H, K, V, scale);
    ref_linear_attn_recurrent_backward(rdq.data(), rdk.data(), rdv.data(), NULL, dout.data(), NULL, qn.data(), kn.data(), v.data(),
                                       NULL, B, Tn, H, K, V, scale);
    T *d_q = upload<T>(qn), *d_k = upload<T>(kn), *d_v = upload<T>(v), *d_do = upload<T>(dout);
    T *d_o = alloc_poisoned<T>(nv), *d_dq = alloc_poisoned<T>(nq), *d_dk = alloc_poisoned<T>(nq), *d_dv = alloc_poisoned<T>(nv);
    linattn_forward(d_o, d_q, d_k, d_v, scale, B, Tn, H, K, V, 0);
    CHECK_REL(rel(download(d_o, nv), ro), tol<T>(), "%s linear attention fwd B=%d T=%d H=%d K=%d V=%d", tn, B, Tn, H, K, V);
    linattn_backward(d_dq, d_dk, d_dv, d_do, d_q, d_k, d_v, scale, B, Tn, H, K, V, 0);
    CHECK_REL(rel(download(d_dq, nq), rdq), tol<T>(), "%s linear attention dq B=%d T=%d H=%d K=%d V=%d", tn, B, Tn, H, K, V);
    CHECK_REL(rel(download(d_dk, nq), rdk), tol<T>(), "%s linear attention dk", tn);
    CHECK_REL(rel(download(d_dv, nv), rdv), tol<T>(), "%s linear attention dv", tn);
    cudaFree(d_q); cudaFree(d_k); cudaFree(d_v); cudaFree(d_do); cudaFree(d_o); cudaFree(d_dq); cudaFree(d_dk); cudaFree(d_dv);
}

template <typename T>
static void run(DNRng *r) {
    printf("---- %s\n", tname((T *)0));
    test_linattn<T>(1, 1, 1, 64, 64, r);
    test_linattn<T>(2, 37, 3, 5, 7, r);
    test_linattn<T>(1, 17, 2, 128, 33, r);
    if (!g_small) {
        test_linattn<T>(3, 200, 2, 64, 64, r);
        test_linattn<T>(2, 513, 1, 128, 128, r);
        test_linattn<T>(2, 130, 3, 64, 128, r); /* the tensor-core kernel with K != V (both orders) */
        test_linattn<T>(1, 65, 2, 128, 64, r);
        test_linattn<T>(64, 512, 4, 64, 64, r); /* MQAR's D=256 layer */
    }
    test_linattn<T>(1, 3, 1, 64, 128, r);
}

int main(int argc, char **argv) {
    int rc = kernel_test_main(argc, argv, "test_linattn_gpu", run<float>, run<bf16>);
    return rc;
}
