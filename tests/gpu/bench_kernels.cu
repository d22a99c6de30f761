/*
 * bench_kernels.cu -- speed of kernels/matmul.cuh, the layer kernels (embedding, rmsnorm,
 * conv, sigmoid, swiglu, crossentropy, reduce) and adamw.cuh at the d12 sizes
 * (B=32, T=1024: N = 32768 rows, D=768, H=6, K=128, I=2048, Vp=50304), bf16.
 * Small kernels: GB/s over the fewest bytes each must move (every input read once, every output
 * written once), next to a measured device-to-device copy (read + write bytes). Matmuls: TFLOP/s
 * (2*N*C*OC per product) for every d12 projection, forward, backward-data, backward-weight.
 * Median of event-timed runs after warm-up; random inputs (never zeros).
 *
 *   build/tests/gpu/bench_kernels [reps]
 *
 * The printed table is what goes into the README (measured numbers live there, not here).
 */
#include <algorithm>
#include <vector>
#include <cstring>
#include "../../kernels/matmul.cuh"
#include "../../kernels/embedding.cuh"
#include "../../kernels/rmsnorm.cuh"
#include "../../kernels/conv.cuh"
#include "../../kernels/sigmoid.cuh"
#include "../../kernels/swiglu.cuh"
#include "../../kernels/crossentropy.cuh"
#include "../../kernels/reduce.cuh"
#include "../../kernels/adamw.cuh"
#include "../../kernels/linattn.cuh"
#include "gpu_util.cuh"
#include "../../model.h" /* DN_DEFAULT_L2_EPS */

static const int B = 32, T = 1024, N = B * T, D = 768, H = 6, K = 128, I = 2048, V = 50257, Vp = 50304;

template <typename Tp>
__global__ void fill_rand_kernel(Tp *x, long n, uint32_t seed, float scale, float offset) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
        float u = ((h >> 8) + 0.5f) / 16777216.0f; /* (0,1) */
        x[i] = from_f<Tp>(offset + scale * (u - 0.5f));
    }
}
template <typename Tp>
static Tp *rand_buf(size_t n, uint32_t seed, float scale = 3.4f, float offset = 0.0f) {
    Tp *d;
    cudaCheck(cudaMalloc(&d, n * sizeof(Tp) + 16));
    fill_rand_kernel<Tp><<<1024, 256>>>(d, (long)n, seed, scale, offset);
    cudaCheckLaunch();
    return d;
}

static int g_reps = 20;

template <typename F>
static float median_ms(F fn) { return median_ms(fn, g_reps); }

static double g_copy_gbs = 0;
static void row_bw(const char *name, double bytes, float ms) {
    double gbs = bytes / (ms * 1e-3) / 1e9;
    printf("| %-34s | %9.1f | %9.3f | %7.0f | %5.0f%% |\n", name, bytes / 1e6, ms * 1e3 / 1e3, gbs,
           g_copy_gbs > 0 ? 100.0 * gbs / g_copy_gbs : 0.0);
}
static void row_mm(const char *name, int n, int c, int oc, float ms) {
    double fl = 2.0 * n * c * oc;
    printf("| %-34s | %5d x %5d x %5d | %8.3f | %6.0f |\n", name, n, c, oc, ms, fl / (ms * 1e-3) / 1e12);
}

int main(int argc, char **argv) {
    if (argc > 1) g_reps = atoi(argv[1]);
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    cudaStream_t st = 0;

    /* copy ceiling */
    {
        size_t bytes = (size_t)1 << 30;
        char *a, *b;
        cudaCheck(cudaMalloc(&a, bytes));
        cudaCheck(cudaMalloc(&b, bytes));
        cudaCheck(cudaMemset(a, 1, bytes));
        float ms = median_ms([&] { cudaCheck(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, st)); });
        g_copy_gbs = 2.0 * bytes / (ms * 1e-3) / 1e9;
        cudaFree(a);
        cudaFree(b);
    }
    printf("\nsmall kernels, bf16, N=%d D=%d H=%d K=%d I=%d Vp=%d; copy ceiling %.0f GB/s\n", N, D, H, K, I, Vp, g_copy_gbs);
    printf("| %-34s | %9s | %9s | %7s | %6s |\n", "kernel", "MB moved", "ms", "GB/s", "%copy");
    printf("|%s|%s|%s|%s|%s|\n", "------------------------------------", "-----------", "-----------", "---------", "--------");
    row_bw("memcpy D2D (1 GiB)", 2.0 * (1 << 30), (float)(2.0 * (1 << 30) / g_copy_gbs / 1e6));

    const size_t ND = (size_t)N * D;
    bf16 *x = rand_buf<bf16>(ND, 1), *br = rand_buf<bf16>(ND, 2), *y = rand_buf<bf16>(ND, 3), *res = rand_buf<bf16>(ND, 4);
    bf16 *dy = rand_buf<bf16>(ND, 5);
    float *g = rand_buf<float>(D, 6, 0.2f, 1.0f), *dg = rand_buf<float>(D, 7), *rstd = rand_buf<float>((size_t)N * H, 8, 0.1f, 1.0f);
    size_t scr_f = std::max({rmsnorm_backward_scratch_floats(N * H, K), rmsnorm_backward_scratch_floats(N, D),
                             conv_silu_l2norm_backward_scratch_floats(B, T, 3 * D, K),
                             conv_silu_l2norm_backward_scratch_floats(B, T, D, K)});
    float *scr = rand_buf<float>(scr_f, 9);

    /* embedding */
    {
        std::vector<int> tok(N);
        uint64_t s = 12345;
        for (int i = 0; i < N; i++) { s = s * 6364136223846793005ull + 1442695040888963407ull; tok[i] = (int)((s >> 33) % 50257); }
        /* Zipf-like: a third of the positions use 64 frequent tokens, like text */
        for (int i = 0; i < N; i += 3) tok[i] = tok[i] % 64;
        std::vector<int> st_(tok);
        std::sort(st_.begin(), st_.end());
        size_t uniq = std::unique(st_.begin(), st_.end()) - st_.begin();
        int *d_tok;
        cudaCheck(cudaMalloc(&d_tok, N * sizeof(int)));
        cudaCheck(cudaMemcpy(d_tok, tok.data(), N * sizeof(int), cudaMemcpyHostToDevice));
        bf16 *wte = rand_buf<bf16>((size_t)Vp * D, 10);
        float *dwte = rand_buf<float>((size_t)Vp * D, 11);
        size_t sb = embedding_backward_scratch_bytes(N, D, Vp);
        void *esc;
        cudaCheck(cudaMalloc(&esc, sb));
        float ms = median_ms([&] { embedding_forward(y, d_tok, wte, N, D, st); });
        row_bw("embedding fwd", 2.0 * ND * 2 + N * 4, ms);
        ms = median_ms([&] { embedding_backward(dwte, esc, dy, d_tok, N, D, Vp, st); });
        row_bw("embedding bwd (sort+chunks)", ND * 2.0 + uniq * D * 8.0 + N * 4, ms);
        cudaFree(d_tok); cudaFree(wte); cudaFree(dwte); cudaFree(esc);
    }
    /* rmsnorm family */
    {
        float ms = median_ms([&] { rmsnorm_forward(y, rstd, x, g, N, D, 1e-6f, st); });
        row_bw("rmsnorm fwd (C=768)", 2.0 * ND * 2, ms);
        ms = median_ms([&] { residual_rmsnorm_forward(res, y, rstd, x, br, g, N, D, 1e-6f, st); });
        row_bw("residual + rmsnorm fwd (C=768)", 4.0 * ND * 2, ms);
        ms = median_ms([&] { rmsnorm_backward(y, dg, scr, dy, x, g, rstd, N, D, 0, st); });
        row_bw("rmsnorm bwd (C=768, dx =)", 3.0 * ND * 2, ms);
        ms = median_ms([&] { rmsnorm_backward(y, dg, scr, dy, x, g, rstd, N, D, 1, st); });
        row_bw("rmsnorm bwd (C=768, dx +=)", 4.0 * ND * 2, ms);
        ms = median_ms([&] { rmsnorm_forward(y, rstd, x, g, N * H, K, 1e-6f, st); });
        row_bw("head rmsnorm fwd (C=128, N*H rows)", 2.0 * ND * 2, ms);
        ms = median_ms([&] { rmsnorm_backward(y, dg, scr, dy, x, g, rstd, N * H, K, 0, st); });
        row_bw("head rmsnorm bwd (C=128, N*H rows)", 3.0 * ND * 2, ms);
    }
    /* conv + silu + l2norm: per tensor (C = D; q, k normalised, v not), on [N, 3D] q|k|v rows, and
     * on q|k|v rows writing planar q, k, v (the fused projection's layout; backward reads dy planar) */
    {
        size_t n3 = 3 * ND;
        bf16 *a = rand_buf<bf16>(n3, 20), *o = rand_buf<bf16>(n3, 21), *da = rand_buf<bf16>(n3, 22), *dO = rand_buf<bf16>(n3, 23);
        float *w = rand_buf<float>((size_t)3 * D * 4, 24, 1.0f), *dw = rand_buf<float>((size_t)3 * D * 4, 25);
        struct { const char *name; int C, Cn, plane; } cs[] = {
            {"C=D, q/k", D, D, 0}, {"C=D, v", D, 0, 0}, {"C=3D rows", 3 * D, 2 * D, 0}, {"C=3D planar", 3 * D, 2 * D, D}};
        for (auto &c : cs) {
            char nm[64];
            size_t n = (size_t)N * c.C;
            float ms = median_ms([&] { conv_silu_l2norm_forward(o, a, w, B, T, c.C, c.Cn, K, DN_DEFAULT_L2_EPS, st, c.plane); });
            snprintf(nm, sizeof nm, "conv+silu+l2 fwd (%s)", c.name);
            row_bw(nm, 2.0 * n * 2, ms);
            ms = median_ms([&] { conv_silu_l2norm_backward(da, dw, scr, dO, a, w, B, T, c.C, c.Cn, K, DN_DEFAULT_L2_EPS, st, c.plane); });
            snprintf(nm, sizeof nm, "conv+silu+l2 bwd (%s)", c.name);
            row_bw(nm, 3.0 * n * 2, ms);
        }
        cudaFree(a); cudaFree(o); cudaFree(da); cudaFree(dO); cudaFree(w); cudaFree(dw);
    }
    /* sigmoid, swiglu */
    {
        float *beta = rand_buf<float>((size_t)N * H, 30);
        float ms = median_ms([&] { sigmoid_forward(beta, x, N * H, st); });
        row_bw("sigmoid fwd (N*H, bf16 -> f32)", (double)N * H * 6, ms);
        ms = median_ms([&] { sigmoid_backward(y, beta, beta, N * H, st); });
        row_bw("sigmoid bwd (N*H)", (double)N * H * 10, ms);
        size_t nI = (size_t)N * I;
        bf16 *gu = rand_buf<bf16>(2 * nI, 31), *h = rand_buf<bf16>(nI, 32), *dh = rand_buf<bf16>(nI, 33), *dgu = rand_buf<bf16>(2 * nI, 34);
        ms = median_ms([&] { swiglu_forward(h, gu, N, I, st); });
        row_bw("swiglu fwd (I=2048)", 3.0 * nI * 2, ms);
        ms = median_ms([&] { swiglu_backward(dgu, dh, gu, N, I, st); });
        row_bw("swiglu bwd (I=2048)", 5.0 * nI * 2, ms);
        cudaFree(beta); cudaFree(gu); cudaFree(h); cudaFree(dh); cudaFree(dgu);
    }
    /* cross-entropy */
    {
        size_t nl = (size_t)N * Vp;
        bf16 *lg = rand_buf<bf16>(nl, 40, 8.0f), *lg2;
        cudaCheck(cudaMalloc(&lg2, nl * 2));
        float *losses = rand_buf<float>(N, 41), *mean = rand_buf<float>(1, 42);
        std::vector<int> tgt(N);
        for (int i = 0; i < N; i++) tgt[i] = (i * 7919) % V;
        int *d_t;
        cudaCheck(cudaMalloc(&d_t, N * sizeof(int)));
        cudaCheck(cudaMemcpy(d_t, tgt.data(), N * sizeof(int), cudaMemcpyHostToDevice));
        float ms = median_ms([&] { crossentropy_forward(losses, lg, d_t, N, V, Vp, st); });
        row_bw("xent fwd (Vp=50304)", (double)nl * 2, ms);
        /* fwd+bwd overwrites its input: time it on a fresh copy each rep, minus the copy */
        float mc = median_ms([&] { cudaCheck(cudaMemcpyAsync(lg2, lg, nl * 2, cudaMemcpyDeviceToDevice, st)); });
        ms = median_ms([&] {
            cudaCheck(cudaMemcpyAsync(lg2, lg, nl * 2, cudaMemcpyDeviceToDevice, st));
            crossentropy_forward_backward(lg2, losses, d_t, 1.0f, N, V, Vp, st);
        });
        row_bw("xent fwd+bwd in place (Vp=50304)", 2.0 * nl * 2, ms - mc);
        ms = median_ms([&] { sum_float(mean, losses, N, 1.0f / N, 0, st); });
        row_bw("sum_float (mean loss, N floats)", (double)N * 4, ms);
        cudaFree(lg); cudaFree(lg2); cudaFree(losses); cudaFree(mean); cudaFree(d_t);
    }
    /* optimizer over the d12 parameter buffer */
    {
        DNConfig cfg;
        dn_config_preset(&cfg, "d12");
        DNParamTable t;
        char err[256];
        if (dn_build_param_table(&t, &cfg, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
        size_t n = t.total;
        float *w = rand_buf<float>(n, 50, 0.04f), *gr = rand_buf<float>(n, 51, 0.01f);
        float *m = rand_buf<float>(n, 52, 0.01f), *v = rand_buf<float>(n, 53, 1e-4f, 1e-4f);
        bf16 *wc;
        cudaCheck(cudaMalloc(&wc, n * 2));
        AdamWSegments seg;
        adamw_segments_create(&seg, &t);
        AdamWHParams hp = {6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 1, 0}, *d_hp;
        GradNorm *d_gn;
        float *nscr;
        cudaCheck(cudaMalloc(&d_hp, sizeof hp));
        cudaCheck(cudaMalloc(&d_gn, sizeof(GradNorm)));
        cudaCheck(cudaMalloc(&nscr, grad_norm_scratch_floats() * 4));
        cudaCheck(cudaMemcpy(d_hp, &hp, sizeof hp, cudaMemcpyHostToDevice));
        float ms = median_ms([&] { grad_norm(d_gn, nscr, gr, n, d_hp, st); });
        row_bw("grad_norm (d12 params)", (double)n * 4, ms);
        ms = median_ms([&] { adamw_update(w, wc, m, v, gr, n, &seg, d_hp, d_gn, st); });
        row_bw("adamw (d12, writes bf16 copy)", (double)n * 30, ms);
        ms = median_ms([&] { fill_float(gr, 0.0f, n, st); });
        row_bw("fill_float (zero grads)", (double)n * 4, ms);
        ms = median_ms([&] { cudaCheck(cudaMemsetAsync(gr, 0, n * 4, st)); });
        row_bw("cudaMemsetAsync (zero grads)", (double)n * 4, ms);
        ms = median_ms([&] { convert(wc, w, n, st); });
        row_bw("convert f32 -> bf16", (double)n * 6, ms);
        printf("(d12 parameter buffer: %zu floats)\n", n);
        adamw_segments_free(&seg);
        dn_free_param_table(&t);
        cudaFree(w); cudaFree(gr); cudaFree(m); cudaFree(v); cudaFree(wc); cudaFree(d_hp); cudaFree(d_gn); cudaFree(nscr);
    }
    cudaFree(x); cudaFree(br); cudaFree(y); cudaFree(res); cudaFree(dy); cudaFree(g); cudaFree(dg); cudaFree(rstd); cudaFree(scr);

    /* matmuls */
    printf("\nmatmuls (cuBLASLt, bf16 in, fp32 accumulate; dW fp32 +=), N = %d\n", N);
    printf("| %-34s | %-21s | %8s | %6s |\n", "product", "N x C x OC", "ms", "TFLOP/s");
    printf("|------------------------------------|-----------------------|----------|--------|\n");
    MatmulContext *ctx = matmul_create();
    struct Shape { const char *name; int c, oc; } shapes[] = {
        {"q|k|v proj", D, 3 * D}, {"beta proj", D, H}, {"o proj", D, D},
        {"gate|up proj", D, 2 * I}, {"down proj", I, D}, {"lm head", D, Vp}};
    size_t maxe = (size_t)N * Vp;
    bf16 *A = rand_buf<bf16>((size_t)N * I, 60), *Wt = rand_buf<bf16>((size_t)Vp * D, 61, 0.1f);
    bf16 *O = rand_buf<bf16>(maxe, 62), *dO = rand_buf<bf16>(maxe, 63), *dA = rand_buf<bf16>((size_t)N * I, 64);
    float *dW = rand_buf<float>((size_t)Vp * D, 65);
    double tot_ms = 0, tot_fl = 0;
    for (auto &s : shapes) {
        char nm[64];
        float ms = median_ms([&] { matmul_forward(ctx, O, A, Wt, N, s.c, s.oc, 0, st); });
        snprintf(nm, sizeof nm, "%s fwd", s.name); row_mm(nm, N, s.c, s.oc, ms);
        tot_ms += ms; tot_fl += 2.0 * N * s.c * s.oc;
        ms = median_ms([&] { matmul_backward_data(ctx, dA, dO, Wt, N, s.c, s.oc, 0, st); });
        snprintf(nm, sizeof nm, "%s bwd data", s.name); row_mm(nm, N, s.c, s.oc, ms);
        tot_ms += ms; tot_fl += 2.0 * N * s.c * s.oc;
        ms = median_ms([&] { matmul_backward_weight(ctx, dW, dO, A, N, s.c, s.oc, st); });
        snprintf(nm, sizeof nm, "%s bwd weight", s.name); row_mm(nm, N, s.c, s.oc, ms);
        tot_ms += ms; tot_fl += 2.0 * N * s.c * s.oc;
    }
    printf("one layer's + lm head's products: %.3f ms, %.0f TFLOP/s overall\n", tot_ms, tot_fl / (tot_ms * 1e-3) / 1e12);
    {
        /* reference ceiling: a large square product */
        int M = 8192;
        bf16 *a = rand_buf<bf16>((size_t)M * M, 70), *b = rand_buf<bf16>((size_t)M * M, 71), *c = rand_buf<bf16>((size_t)M * M, 72);
        float ms = median_ms([&] { matmul_forward(ctx, c, a, b, M, M, M, 0, st); });
        row_mm("square 8192^3 (ceiling)", M, M, M, ms);
        cudaFree(a); cudaFree(b); cudaFree(c);
    }
    matmul_destroy(ctx);
    cudaFree(A); cudaFree(Wt); cudaFree(O); cudaFree(dO); cudaFree(dA); cudaFree(dW);

    /* linear attention ('L' layers) at MQAR's D=256 layer: the tensor-core kernel against the scalar one
     * (fwd: one pair sum; bwd: three; FLOPs 2 x (P + Q) per kept pair, pairs T(T+1)/2 per head) */
    {
        const int LB = 64, LT = 512, LH = 4, LK = 64;
        const size_t n = (size_t)LB * LT * LH * LK;
        bf16 *q = rand_buf<bf16>(n, 80, 0.25f), *k = rand_buf<bf16>(n, 81, 0.25f), *v = rand_buf<bf16>(n, 82),
             *o = rand_buf<bf16>(n, 83), *dq = rand_buf<bf16>(n, 84), *dk = rand_buf<bf16>(n, 85), *dv = rand_buf<bf16>(n, 86);
        const float sc = 0.125f;
        const double fl = 2.0 * (LK + LK) * (double)LB * LH * LT * (LT + 1) / 2;
        printf("\nlinear attention, bf16, B=%d T=%d H=%d K=V=%d (MQAR's D=256 layer)\n", LB, LT, LH, LK);
        printf("| %-34s | %8s | %6s |\n", "pass", "ms", "TFLOP/s");
        printf("|------------------------------------|----------|--------|\n");
        struct { const char *name; bool tc; } ks[] = {{"tensor cores", true}, {"scalar", false}};
        for (auto &kk : ks) {
            auto pairs = [&](bf16 *out, const bf16 *a, const bf16 *b, const bf16 *c, bool upper) {
                if (kk.tc) {
                    if (upper) linattn_tc<bf16, 64, 64, true>(out, a, b, c, sc, LB, LT, LH, st);
                    else linattn_tc<bf16, 64, 64, false>(out, a, b, c, sc, LB, LT, LH, st);
                } else {
                    if (upper) linattn_pairs_scalar<bf16, true>(out, a, b, c, sc, LB, LT, LH, LK, LK, st);
                    else linattn_pairs_scalar<bf16, false>(out, a, b, c, sc, LB, LT, LH, LK, LK, st);
                }
            };
            char nm[64];
            float ms = median_ms([&] { pairs(o, q, k, v, false); });
            snprintf(nm, sizeof nm, "fwd (%s)", kk.name);
            printf("| %-34s | %8.3f | %6.1f |\n", nm, ms, fl / (ms * 1e-3) / 1e12);
            ms = median_ms([&] { pairs(dq, o, v, k, false); pairs(dk, v, o, q, true); pairs(dv, k, q, o, true); });
            snprintf(nm, sizeof nm, "bwd (%s)", kk.name);
            printf("| %-34s | %8.3f | %6.1f |\n", nm, ms, 3 * fl / (ms * 1e-3) / 1e12);
        }
        cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o); cudaFree(dq); cudaFree(dk); cudaFree(dv);
    }
    return 0;
}
