/*
 * test_adamw.cu -- kernels/adamw.cuh (the fused AdamW step, gradient norm and clipping) against the CPU reference; the checks, tolerances and flags
 * (--small, --fp32, --bf16) are those of kernel_test.cuh.
 */
#include "../../kernels/adamw.cuh"
#include "kernel_test.cuh"

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

template <typename T>
static void run(DNRng *r) {
    printf("---- %s\n", tname((T *)0));
    test_adamw<T>(r);
}

int main(int argc, char **argv) {
    int rc = kernel_test_main(argc, argv, "test_adamw_gpu", run<float>, run<bf16>);
    return rc;
}
