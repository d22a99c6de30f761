/*
 * test_gate.cu -- kernels/gate.cuh (the gated DeltaNet layer's decay and gated output norm)
 * against the CPU reference ref/gate.c; the checks, tolerances and flags (--small, --fp32, --bf16)
 * are those of kernel_test.cuh. The decay's a and the norm's inputs are floatX (rounded before the
 * reference sees them); the decay g and its gradient dg are fp32, like the trainer's.
 */
#include "../../kernels/gate.cuh"
#include "kernel_test.cuh"

/* ---- decay ------------------------------------------------------------------------------------ */

template <typename T>
static void test_decay(int N, int H, DNRng *r) {
    const char *tn = tname((T *)0);
    const size_t n = (size_t)N * H;
    Vec a = rand_vec<T>(n, r, 2.0f), A_log(H), dt(H), dg = rand_vec<float>(n, r, 1.0f);
    for (int h = 0; h < H; h++) { A_log[h] = -2.0f + 4.7f * dn_rng_uniform(r); dt[h] = -5.0f + 3.0f * dn_rng_uniform(r); }
    a[0] = round_to<T>(24.0f - dt[0]); /* one input past softplus's threshold 20 */
    Vec rg(n), rda(n, 0.0f), rdA(H), rddt(H);
    Vec dA0 = rand_vec<float>(H, r, 1.0f), ddt0 = rand_vec<float>(H, r, 1.0f); /* += from random values */
    rdA = dA0; rddt = ddt0;
    ref_gdn_decay_forward(rg.data(), a.data(), A_log.data(), dt.data(), N, H);
    ref_gdn_decay_backward(rda.data(), rdA.data(), rddt.data(), dg.data(), a.data(), A_log.data(), dt.data(), N, H);
    T *d_a = upload<T>(a);
    float *d_A = upload<float>(A_log), *d_dt = upload<float>(dt), *d_dg = upload<float>(dg);
    float *d_g = alloc_poisoned<float>(n);
    gdn_decay_forward(d_g, d_a, d_A, d_dt, N, H, 0);
    CHECK_REL(rel(download(d_g, n), rg), 1e-5, "%s decay fwd N=%d H=%d", tn, N, H);
    T *d_da = alloc_poisoned<T>(n);
    float *d_dA = upload<float>(dA0), *d_ddt = upload<float>(ddt0);
    float *d_scr = alloc_poisoned<float>(gdn_decay_backward_scratch_floats(N, H));
    gdn_decay_backward(d_da, d_dA, d_ddt, d_scr, d_dg, d_a, d_A, d_dt, N, H, 0);
    Vec dA1 = download(d_dA, H), ddt1 = download(d_ddt, H);
    CHECK_REL(rel(download(d_da, n), rda), tol<T>(), "%s decay bwd da N=%d H=%d", tn, N, H);
    CHECK_REL(rel(dA1, rdA), 1e-5, "%s decay bwd dA_log (+=) N=%d H=%d", tn, N, H);
    CHECK_REL(rel(ddt1, rddt), 1e-5, "%s decay bwd ddt_bias (+=) N=%d H=%d", tn, N, H);
    /* the per-head sums are bitwise reproducible */
    set<float>(d_dA, dA0); set<float>(d_ddt, ddt0);
    gdn_decay_backward(d_da, d_dA, d_ddt, d_scr, d_dg, d_a, d_A, d_dt, N, H, 0);
    CHECK(same_bits(download(d_dA, H), dA1) && same_bits(download(d_ddt, H), ddt1), "%s decay bwd: dA_log, ddt_bias reproducible", tn);
    cudaFree(d_a); cudaFree(d_A); cudaFree(d_dt); cudaFree(d_dg); cudaFree(d_g); cudaFree(d_da); cudaFree(d_dA); cudaFree(d_ddt);
    cudaFree(d_scr);
}

/* ---- gated output norm ---------------------------------------------------------------------------- */

template <typename T>
static void test_gated_norm(int N, int C, DNRng *r) {
    const char *tn = tname((T *)0);
    const size_t n = (size_t)N * C;
    const float eps = 1e-6f;
    Vec x = rand_vec<T>(n, r, 1.0f), z = rand_vec<T>(n, r, 1.5f), w(C), dy = rand_vec<T>(n, r, 1.0f);
    for (int c = 0; c < C; c++) w[c] = 0.5f + dn_rng_uniform(r);
    Vec ry(n), rrstd(N), rdx(n, 0.0f), rdz(n, 0.0f);
    Vec dw0 = rand_vec<float>(C, r, 1.0f), rdw = dw0;
    ref_gated_rmsnorm_forward(ry.data(), rrstd.data(), x.data(), z.data(), w.data(), N, C, eps);
    ref_gated_rmsnorm_backward(rdx.data(), rdz.data(), rdw.data(), dy.data(), x.data(), z.data(), w.data(), rrstd.data(), N, C);
    T *d_x = upload<T>(x), *d_z = upload<T>(z), *d_dy = upload<T>(dy);
    float *d_w = upload<float>(w);
    T *d_y = alloc_poisoned<T>(n);
    float *d_rstd = alloc_poisoned<float>(N);
    gated_rmsnorm_forward(d_y, d_rstd, d_x, d_z, d_w, N, C, eps, 0);
    CHECK_REL(rel(download(d_y, n), ry), tol<T>(), "%s gated norm fwd N=%d C=%d", tn, N, C);
    CHECK_REL(rel(download(d_rstd, N), rrstd), 1e-5, "%s gated norm fwd rstd N=%d C=%d", tn, N, C);
    T *d_dx = alloc_poisoned<T>(n), *d_dz = alloc_poisoned<T>(n);
    float *d_dw = upload<float>(dw0);
    float *d_s = alloc_poisoned<float>(gated_rmsnorm_backward_scratch_floats(N, C));
    gated_rmsnorm_backward(d_dx, d_dz, d_dw, d_s, d_dy, d_x, d_z, d_w, d_rstd, N, C, 0);
    Vec dw1 = download(d_dw, C);
    CHECK_REL(rel(download(d_dx, n), rdx), tol<T>(), "%s gated norm bwd dinp N=%d C=%d", tn, N, C);
    CHECK_REL(rel(download(d_dz, n), rdz), tol<T>(), "%s gated norm bwd dgate N=%d C=%d", tn, N, C);
    CHECK_REL(rel(dw1, rdw), 1e-5, "%s gated norm bwd dw (+=) N=%d C=%d", tn, N, C);
    set<float>(d_dw, dw0);
    gated_rmsnorm_backward(d_dx, d_dz, d_dw, d_s, d_dy, d_x, d_z, d_w, d_rstd, N, C, 0);
    CHECK(same_bits(download(d_dw, C), dw1), "%s gated norm bwd: dw reproducible", tn);
    cudaFree(d_x); cudaFree(d_z); cudaFree(d_dy); cudaFree(d_w); cudaFree(d_y); cudaFree(d_rstd);
    cudaFree(d_dx); cudaFree(d_dz); cudaFree(d_dw); cudaFree(d_s);
}

template <typename T>
static void run(DNRng *r) {
    printf("---- %s\n", tname((T *)0));
    test_decay<T>(1, 1, r);
    test_decay<T>(67, 3, r);
    if (!g_small) test_decay<T>(2 * 2049, 6, r);
    if (!g_small) test_decay<T>(128 * 512 + 77, 5, r); /* more rows than the slabs' rows: a grid-stride loop */
    test_gated_norm<T>(1, 7, r);
    test_gated_norm<T>(3 * 67, 128, r);  /* B*T*H rows of V = 128 */
    test_gated_norm<T>(2 * 67 * 3, 100, r);
    if (!g_small) test_gated_norm<T>(2 * 1025 * 6, 256, r);
}

int main(int argc, char **argv) {
    return kernel_test_main(argc, argv, "test_gate_gpu", run<float>, run<bf16>);
}
