/*
 * bench_deltarule.cu -- times the GPU chunkwise delta rule (kernels/deltarule.cuh), bf16, on the
 * shapes that matter: B=8 T=2048 H=8 K=V=128 (the speed bar; fla: 0.467 ms fwd, 2.689 ms fwd+bwd
 * on one H100), B=32 T=1024 H=6 K=128 (d12 training) and a few more.
 *
 * Method: inputs are random (q, k L2-normalised rows, beta in (0, 1)); several input sets are
 * rotated so that the inputs touched by consecutive runs exceed the 50 MB L2; after warm-up, each
 * run is timed with its own pair of CUDA events and the median is printed. FLOPs are the dense
 * matrix products the chunkwise algorithm performs (2 m n k each, triangular ones counted full, the
 * 64x64 inverse as 2 C^3 / 3); bytes are the minimum (every input read once, every output written
 * once). Ceilings measured on these H100s: ~800 TFLOP/s bf16 dense, ~3.0 TB/s copy.
 * scripts/bench_fla_deltarule.py prints the same table for fla and SDPA.
 *
 * Usage: bench_deltarule [iters]
 */
#include <algorithm>
#include <vector>
#include "../../kernels/deltarule.cuh"

__global__ void fill_kernel(bf16 *x, size_t n, uint64_t seed, float lo, float hi, int normal) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const float u1 = ((z >> 40) + 1) / 16777217.0f, u2 = ((z & 0xFFFFFF) + 0.5f) / 16777216.0f;
        const float val = normal ? sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2) : lo + (hi - lo) * u2;
        x[i] = __float2bfloat16(val);
    }
}
__global__ void l2norm_rows_kernel(bf16 *x, size_t rows, int D) {
    const size_t r = blockIdx.x * (size_t)(blockDim.x / 32) + threadIdx.x / 32;
    if (r >= rows) return;
    bf16 *p = x + r * D;
    float s = 0;
    for (int i = threadIdx.x % 32; i < D; i += 32) s += __bfloat162float(p[i]) * __bfloat162float(p[i]);
    s = rsqrtf(warp_sum(s) + 1e-6f);
    for (int i = threadIdx.x % 32; i < D; i += 32) p[i] = __float2bfloat16(__bfloat162float(p[i]) * s);
}

struct Inputs {
    bf16 *q, *k, *v, *beta, *dout;
};

template <typename F> static float median_ms(F run, int iters) {
    for (int i = 0; i < 3; i++) run(i);
    std::vector<cudaEvent_t> ev(2 * iters);
    for (auto &e : ev) cudaCheck(cudaEventCreate(&e));
    for (int i = 0; i < iters; i++) {
        cudaCheck(cudaEventRecord(ev[2 * i]));
        run(i);
        cudaCheck(cudaEventRecord(ev[2 * i + 1]));
    }
    cudaCheck(cudaDeviceSynchronize());
    std::vector<float> ms(iters);
    for (int i = 0; i < iters; i++) cudaCheck(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
    for (auto &e : ev) cudaCheck(cudaEventDestroy(e));
    std::sort(ms.begin(), ms.end());
    return ms[iters / 2];
}

static void row(const char *shape, const char *pass, float ms, double flop, double bytes) {
    printf("%-22s %-12s %9.3f %9.1f %8.0f\n", shape, pass, ms, flop / (ms * 1e-3) / 1e12, bytes / (ms * 1e-3) / 1e9);
}

static void bench_shape(int B, int T, int H, int D, int iters) {
    const size_t N = (size_t)B * T * H, nx = N * D;
    const double C = 64, Dd = D, nch = (double)B * H * ceil_div(T, 64);
    const double CCD = 2 * C * C * Dd, CDD = 2 * C * Dd * Dd, CCC = 2 * C * C * C;
    const double f_prep = nch * (2 * CCD + CCC / 3);
    const double f_fwd = nch * (3 * CDD + 2 * CCD);
    const double f_states = nch * ((2 * CDD + CCD) + (CCD + CDD + CCD + 2 * CDD));
    const double f_chunk = nch * (CCD + CCD + (CDD + CCD) + CDD + (CCD + CDD) + 2 * CCD + CCD + CCD + 2 * CCC + 2 * CCD);
    const double F_fwd = f_prep + f_fwd, F_bwd = f_prep + f_states + f_chunk;
    const double by_fwd = 2.0 * (4 * nx + N), by_bwd = 2.0 * (7 * nx + 2 * N);

    const size_t set_bytes = (4 * nx + N) * sizeof(bf16);
    const int nsets = std::max<int>(2, (int)ceil_div(200 << 20, (long)set_bytes));
    std::vector<Inputs> sets(nsets);
    uint64_t seed = 1;
    auto alloc_fill = [&](size_t n, float lo, float hi, int normal) {
        bf16 *p;
        cudaCheck(cudaMalloc(&p, n * sizeof(bf16)));
        fill_kernel<<<1024, 256>>>(p, n, seed++ * 0x12345ull, lo, hi, normal);
        cudaCheckLaunch();
        return p;
    };
    for (auto &s : sets) {
        s.q = alloc_fill(nx, 0, 0, 1);
        s.k = alloc_fill(nx, 0, 0, 1);
        s.v = alloc_fill(nx, 0, 0, 1);
        s.dout = alloc_fill(nx, 0, 0, 1);
        s.beta = alloc_fill(N, 0.02f, 0.98f, 0);
        l2norm_rows_kernel<<<ceil_div(N, 8), 256>>>(s.q, N, D);
        l2norm_rows_kernel<<<ceil_div(N, 8), 256>>>(s.k, N, D);
        cudaCheckLaunch();
    }
    bf16 *o, *dq, *dk, *dv, *db;
    cudaCheck(cudaMalloc(&o, nx * sizeof(bf16)));
    cudaCheck(cudaMalloc(&dq, nx * sizeof(bf16)));
    cudaCheck(cudaMalloc(&dk, nx * sizeof(bf16)));
    cudaCheck(cudaMalloc(&dv, nx * sizeof(bf16)));
    cudaCheck(cudaMalloc(&db, N * sizeof(bf16)));
    const size_t wsb = deltarule_workspace_size<bf16>(B, T, H, D, D);
    void *ws;
    cudaCheck(cudaMalloc(&ws, wsb));
    const float scale = 1.0f / sqrtf((float)D);
    cudaCheck(cudaDeviceSynchronize());

    auto fwd = [&](int i) {
        const Inputs &s = sets[i % nsets];
        deltarule_forward<bf16>(o, s.q, s.k, s.v, s.beta, scale, ws, B, T, H, D, D, 0);
    };
    auto bwd = [&](int i) {
        const Inputs &s = sets[i % nsets];
        deltarule_backward<bf16>(dq, dk, dv, db, s.dout, s.q, s.k, s.v, s.beta, scale, ws, B, T, H, D, D, 0);
    };
    const float t_fwd = median_ms(fwd, iters), t_bwd = median_ms(bwd, iters);
    const float t_all = median_ms([&](int i) { fwd(i); bwd(i); }, iters);

    /* each kernel alone (its inputs prepared by the runs above) */
    dr::Workspace w = dr::carve_workspace<bf16>(ws, B, T, H, D);
    float t_prep, t_fs, t_bs, t_bc;
    if (D == 128) {
        t_prep = median_ms([&](int i) { const Inputs &s = sets[i % nsets]; dr::prep<bf16, 128>(w, s.q, s.k, s.beta, B, T, H, 0); }, iters);
        t_fs = median_ms([&](int i) { const Inputs &s = sets[i % nsets]; dr::fwd<bf16, 128>(w, o, s.q, s.k, s.v, s.beta, scale, B, T, H, 0); }, iters);
        t_bs = median_ms([&](int i) { const Inputs &s = sets[i % nsets]; dr::bwd_states<bf16, 128>(w, dv, s.dout, s.q, s.k, s.v, s.beta, scale, B, T, H, 0); }, iters);
        t_bc = median_ms([&](int i) { const Inputs &s = sets[i % nsets]; dr::bwd_chunk<bf16, 128>(w, dq, dk, db, s.dout, s.q, s.k, s.v, s.beta, scale, B, T, H, 0); }, iters);
    } else {
        t_prep = median_ms([&](int i) { const Inputs &s = sets[i % nsets]; dr::prep<bf16, 64>(w, s.q, s.k, s.beta, B, T, H, 0); }, iters);
        t_fs = median_ms([&](int i) { const Inputs &s = sets[i % nsets]; dr::fwd<bf16, 64>(w, o, s.q, s.k, s.v, s.beta, scale, B, T, H, 0); }, iters);
        t_bs = median_ms([&](int i) { const Inputs &s = sets[i % nsets]; dr::bwd_states<bf16, 64>(w, dv, s.dout, s.q, s.k, s.v, s.beta, scale, B, T, H, 0); }, iters);
        t_bc = median_ms([&](int i) { const Inputs &s = sets[i % nsets]; dr::bwd_chunk<bf16, 64>(w, dq, dk, db, s.dout, s.q, s.k, s.v, s.beta, scale, B, T, H, 0); }, iters);
    }

    char sh[64];
    snprintf(sh, sizeof sh, "B=%d T=%d H=%d K=%d", B, T, H, D);
    row(sh, "fwd", t_fwd, F_fwd, by_fwd);
    row("", "bwd", t_bwd, F_bwd, by_bwd);
    row("", "fwd+bwd", t_all, F_fwd + F_bwd, by_fwd + by_bwd);
    row("", " prep", t_prep, f_prep, 2.0 * (2 * nx + N) + 2.0 * 2 * nch * 4096);
    row("", " fwd_state", t_fs, f_fwd, 2.0 * (4 * nx + N) + 2.0 * 2 * nch * 4096);
    row("", " bwd_states", t_bs, f_states, 2.0 * (5 * nx + N) + 2.0 * nch * (2 * Dd * Dd + 2 * 64 * Dd + 2 * 4096));
    row("", " bwd_chunk", t_bc, f_chunk, 2.0 * (6 * nx + 2 * N) + 2.0 * nch * (2 * Dd * Dd + 2 * 64 * Dd + 4096));
    printf("%-22s workspace %.1f MB, %d rotating input sets of %.1f MB\n", "", wsb / 1e6, nsets, set_bytes / 1e6);

    for (auto &s : sets) {
        cudaCheck(cudaFree(s.q)); cudaCheck(cudaFree(s.k)); cudaCheck(cudaFree(s.v));
        cudaCheck(cudaFree(s.dout)); cudaCheck(cudaFree(s.beta));
    }
    cudaCheck(cudaFree(o)); cudaCheck(cudaFree(dq)); cudaCheck(cudaFree(dk)); cudaCheck(cudaFree(dv));
    cudaCheck(cudaFree(db)); cudaCheck(cudaFree(ws));
}

int main(int argc, char **argv) {
    const int iters = argc > 1 ? atoi(argv[1]) : 30;
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    /* the copy ceiling, measured: 1 GiB device-to-device, bytes read + written */
    {
        const size_t n = (size_t)1 << 30;
        void *a, *b;
        cudaCheck(cudaMalloc(&a, n));
        cudaCheck(cudaMalloc(&b, n));
        cudaCheck(cudaMemset(a, 1, n));
        const float ms = median_ms([&](int) { cudaCheck(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice)); }, 10);
        printf("device: %s, %d SMs, L2 %d MB; copy %.0f GB/s (read+write); bf16 dense ceiling ~800 TFLOP/s\n",
               prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, 2.0 * n / (ms * 1e-3) / 1e9);
        cudaCheck(cudaFree(a));
        cudaCheck(cudaFree(b));
    }
    printf("%-22s %-12s %9s %9s %8s\n", "shape (bf16)", "pass", "ms", "TFLOP/s", "GB/s");
    bench_shape(8, 2048, 8, 128, iters);
    bench_shape(32, 1024, 6, 128, iters);
    bench_shape(4, 4096, 8, 128, iters);
    bench_shape(8, 2048, 16, 64, iters);
    bench_shape(1, 2048, 8, 128, iters);
    return 0;
}
