/*
 * test_embedding.cu -- kernels/embedding.cuh (runs of equal tokens across the backward's chunks) against the CPU reference; the checks, tolerances and flags
 * (--small, --fp32, --bf16) are those of kernel_test.cuh.
 */
#include "../../kernels/embedding.cuh"
#include "kernel_test.cuh"

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

template <typename T>
static void run(DNRng *r) {
    printf("---- %s\n", tname((T *)0));
    /* long runs of one token across chunks, many distinct tokens, odd D */
    test_embedding<T>(7 * 33, 72, 100, 128, 1, r);
    test_embedding<T>(7 * 33, 37, 100, 100, 7, r);
    test_embedding<T>(1, 64, 100, 128, 50, r);
    if (!g_small) test_embedding<T>(4096, 768, 50257, 50304, 3000, r);
}

int main(int argc, char **argv) {
    int rc = kernel_test_main(argc, argv, "test_embedding_gpu", run<float>, run<bf16>);
    return rc;
}
