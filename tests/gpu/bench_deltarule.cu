/*
 * bench_deltarule.cu -- times the GPU chunkwise delta rule (kernels/deltarule.cuh), bf16, on the
 * shapes that matter: B=8 T=2048 H=8 K=V=128 (the speed bar, where the README compares with fla),
 * B=32 T=1024 H=6 K=128 (d12 training) and a few more.
 *
 * Method: inputs are random (q, k L2-normalised rows, beta in (0, 1)); several input sets are
 * rotated so that the inputs touched by consecutive runs exceed the 50 MB L2; after warm-up, each
 * run is timed with its own pair of CUDA events and the median is printed. FLOPs are the dense
 * matrix products the chunkwise algorithm performs (2 m n k each, triangular ones counted full, the
 * 64x64 inverse as 2 C^3 / 3); bytes are the minimum (every input read once, every output written
 * once); the copy bandwidth is measured first, as the memory ceiling to read GB/s against.
 * scripts/bench_fla_deltarule.py prints the same table for fla and SDPA. The lines that start with
 * "| " are rows of the README's results table (scripts/bench_table.sh collects them).
 * The gated delta rule (gated_deltarule_*, g uniform in (-0.3, 0)) is timed beside: the same four
 * rows and its kernels alone at the speed-bar shape, with V = K and V = 2K (FLOPs and bytes as the
 * ungated rows of that K; the gate adds no products).
 *
 * Usage: bench_deltarule [iters] [quick]    (quick: the speed-bar shape and its gated rows only)
 */
#include <algorithm>
#include <vector>
#include "../../kernels/deltarule.cuh"
#include "gpu_util.cuh"

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

__global__ void fill_gate_kernel(float *g, size_t n, uint64_t seed, float lo) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
        z = (z ^ (z >> 31)) * 0xBF58476D1CE4E5B9ull;
        z ^= z >> 29;
        g[i] = lo * (((z >> 40) + 0.5f) / 16777216.0f);
    }
}

/* One input set: q, k [B,T,H,K] (L2-normalised rows), v, dout [B,T,H,V], beta in (0.02, 0.98), and
 * for the gated rule g in (-0.3, 0). */
struct Inputs {
    bf16 *q, *k, *v, *beta, *dout;
    float *g;
};
/* Enough sets (at least 2) that the inputs of consecutive runs exceed the L2. */
static std::vector<Inputs> make_sets(int B, int T, int H, int K, int V, bool gated, uint64_t seed) {
    const size_t N = (size_t)B * T * H, nk = N * K, nv = N * V;
    const size_t set_bytes = (2 * nk + 2 * nv + N) * sizeof(bf16) + (gated ? N * sizeof(float) : 0);
    const int nsets = std::max<int>(2, (int)ceil_div(200 << 20, (long)set_bytes));
    std::vector<Inputs> sets(nsets);
    auto alloc_fill = [&](size_t n, float lo, float hi, int normal) {
        bf16 *p;
        cudaCheck(cudaMalloc(&p, n * sizeof(bf16)));
        fill_kernel<<<1024, 256>>>(p, n, seed++ * 0x12345ull, lo, hi, normal);
        cudaCheckLaunch();
        return p;
    };
    for (auto &s : sets) {
        s.q = alloc_fill(nk, 0, 0, 1);
        s.k = alloc_fill(nk, 0, 0, 1);
        s.v = alloc_fill(nv, 0, 0, 1);
        s.dout = alloc_fill(nv, 0, 0, 1);
        s.beta = alloc_fill(N, 0.02f, 0.98f, 0);
        s.g = nullptr;
        if (gated) {
            cudaCheck(cudaMalloc(&s.g, N * sizeof(float)));
            fill_gate_kernel<<<1024, 256>>>(s.g, N, seed++ * 0x777ull, -0.3f);
        }
        l2norm_rows_kernel<<<ceil_div(N, 8), 256>>>(s.q, N, K);
        l2norm_rows_kernel<<<ceil_div(N, 8), 256>>>(s.k, N, K);
        cudaCheckLaunch();
    }
    return sets;
}
static void free_sets(std::vector<Inputs> &sets) {
    for (auto &s : sets) {
        cudaCheck(cudaFree(s.q)); cudaCheck(cudaFree(s.k)); cudaCheck(cudaFree(s.v));
        cudaCheck(cudaFree(s.dout)); cudaCheck(cudaFree(s.beta));
        if (s.g) cudaCheck(cudaFree(s.g));
    }
}

/* run(i) for i = 0.. (the index picks the input set); all events recorded before one synchronise
 * (unlike gpu_util.cuh's median_ms, which synchronises after every run) */
template <typename F> static float median_ms_pipelined(F run, int iters) {
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

/* The outputs of one shape: o, dv [N*V], dq, dk [N*K], dbeta, dg (fp32) [N], the workspace (wsb bytes)
 * and the saved Tm (svb bytes). */
struct Outputs {
    bf16 *o, *dq, *dk, *dv, *db, *saved;
    float *dg;
    void *ws;
};
static Outputs alloc_outputs(size_t N, int K, int V, size_t wsb, size_t svb) {
    Outputs x;
    cudaCheck(cudaMalloc(&x.o, N * V * sizeof(bf16)));
    cudaCheck(cudaMalloc(&x.dq, N * K * sizeof(bf16)));
    cudaCheck(cudaMalloc(&x.dk, N * K * sizeof(bf16)));
    cudaCheck(cudaMalloc(&x.dv, N * V * sizeof(bf16)));
    cudaCheck(cudaMalloc(&x.db, N * sizeof(bf16)));
    cudaCheck(cudaMalloc(&x.dg, N * sizeof(float)));
    cudaCheck(cudaMalloc(&x.ws, wsb));
    cudaCheck(cudaMalloc(&x.saved, svb));
    return x;
}
static void free_outputs(Outputs &x) {
    cudaCheck(cudaFree(x.o)); cudaCheck(cudaFree(x.dq)); cudaCheck(cudaFree(x.dk)); cudaCheck(cudaFree(x.dv));
    cudaCheck(cudaFree(x.db)); cudaCheck(cudaFree(x.dg)); cudaCheck(cudaFree(x.ws)); cudaCheck(cudaFree(x.saved));
}

/* fwd, bwd, fwd+bwd recomputing Tm, and fwd+bwd with the saved Tm; fwd(i, saved), bwd(i, saved) */
struct Four {
    float fwd, bwd, all, all_sv;
};
template <typename F, typename G> static Four time_four(F fwd, G bwd, bf16 *saved, int iters) {
    Four t;
    t.fwd = median_ms_pipelined([&](int i) { fwd(i, nullptr); }, iters);
    t.bwd = median_ms_pipelined([&](int i) { bwd(i, nullptr); }, iters);
    t.all = median_ms_pipelined([&](int i) { fwd(i, nullptr); bwd(i, nullptr); }, iters);
    t.all_sv = median_ms_pipelined([&](int i) { fwd(i, saved); bwd(i, saved); }, iters);
    return t;
}

static void row(const char *shape, const char *pass, float ms, double flop, double bytes) {
    printf("%-22s %-12s %9.3f %9.1f %8.0f\n", shape, pass, ms, flop / (ms * 1e-3) / 1e12, bytes / (ms * 1e-3) / 1e9);
}

/* a configuration of the state passes: V tile, stages of role 0 (or fwd), stages of role 1 */
template <int BV_, int N0_, int N1_> struct Var {
    static constexpr int BV = BV_, N0 = N0_, N1 = N1_;
};

template <int D>
static void kernel_table(const std::vector<Inputs> &sets, int nsets, bf16 *o, bf16 *dq, bf16 *dk, bf16 *dv, bf16 *db,
                         void *ws, bf16 *Tm, float scale, int B, int T, int H, int iters, double f_prep, double f_fwd,
                         double f_states, double f_chunk) {
    const size_t N = (size_t)B * T * H, nx = N * D;
    const double nch = (double)B * H * ceil_div(T, 64), Dd = D;
    dr::Workspace w = dr::carve_workspace<bf16>(ws, B, T, H, D, D);
    const Inputs &s0 = sets[0];
    bf16 *ref;
    cudaCheck(cudaMalloc(&ref, 2 * nx * sizeof(bf16)));
    auto snap = [&](bf16 *dst, const bf16 *src) { cudaCheck(cudaMemcpy(dst, src, nx * sizeof(bf16), cudaMemcpyDeviceToDevice)); };
    auto prep = [&](int i) { const Inputs &s = sets[i % nsets]; dr::prep<bf16, D, false>(Tm, s.k, s.beta, nullptr, B, T, H, 0); };
    const double tm = 64.0 * 64; /* elements of a chunk's Tm (64 x 64, bf16), written by prep, read after */
    row("", " prep", median_ms_pipelined(prep, iters), f_prep, 2.0 * (nx + N) + 2.0 * nch * tm);
    const double by_f = 2.0 * (4 * nx + N) + 2.0 * nch * tm;
    const double by_s = 2.0 * (5 * nx + N) + 2.0 * nch * (2 * Dd * Dd + 2 * 64 * Dd + tm);
    const double by_c = 2.0 * (6 * nx + 2 * N) + 2.0 * nch * (2 * Dd * Dd + 2 * 64 * Dd + tm);
    /* forward state pass: default first (its output is the reference for the variants) */
    auto fwd_v = [&](auto tag, const char *name, bool is_ref) {
        constexpr int BV = decltype(tag)::BV, NST = decltype(tag)::N0;
        prep(0);
        dr::fwd<bf16, D, D, false, BV, NST>(Tm, o, s0.q, s0.k, s0.v, s0.beta, nullptr, scale, B, T, H, 0);
        cudaCheck(cudaDeviceSynchronize());
        if (is_ref) snap(ref, o);
        const double err = is_ref ? 0.0 : rel_err_dev(o, ref, nx);
        const float ms = median_ms_pipelined([&](int i) { const Inputs &s = sets[i % nsets];
            dr::fwd<bf16, D, D, false, BV, NST>(Tm, o, s.q, s.k, s.v, s.beta, nullptr, scale, B, T, H, 0); }, iters);
        char nm[64];
        snprintf(nm, sizeof nm, " %s", name);
        row("", nm, ms, f_fwd, by_f);
        if (!is_ref) printf("%-22s   (o vs default: rel %.1e)\n", "", err);
    };
    auto states_v = [&](auto tag, const char *name, bool is_ref) {
        constexpr int BV = decltype(tag)::BV, N0 = decltype(tag)::N0, N1 = decltype(tag)::N1;
        prep(0);
        dr::bwd_states<bf16, D, D, false, BV, N0, N1>(w, Tm, dv, s0.dout, s0.q, s0.k, s0.v, s0.beta, nullptr, scale, B, T, H, 0);
        dr::bwd_chunk<bf16, D, D, false>(w, Tm, dq, dk, db, nullptr, s0.dout, s0.q, s0.k, s0.v, s0.beta, nullptr, scale, B, T, H, 0);
        cudaCheck(cudaDeviceSynchronize());
        if (is_ref) { snap(ref, dv); snap(ref + nx, dq); }
        const double e1 = is_ref ? 0.0 : rel_err_dev(dv, ref, nx), e2 = is_ref ? 0.0 : rel_err_dev(dq, ref + nx, nx);
        const float ms = median_ms_pipelined([&](int i) { const Inputs &s = sets[i % nsets];
            dr::bwd_states<bf16, D, D, false, BV, N0, N1>(w, Tm, dv, s.dout, s.q, s.k, s.v, s.beta, nullptr, scale, B, T, H, 0); }, iters);
        char nm[64];
        snprintf(nm, sizeof nm, " %s", name);
        row("", nm, ms, f_states, by_s);
        if (!is_ref) printf("%-22s   (dv, dq vs default: rel %.1e %.1e)\n", "", e1, e2);
    };
    const dr::AutoCfg ac = dr::auto_cfg(B, H, D);
    printf("%-22s   by shape: fwd BV=%d; states BV=%d, stages %d/%d\n", "", ac.fwd_bv, ac.st_bv, 2, ac.st_nst1);
    fwd_v(Var<64, 2, 0>{}, "fwd BV64", true);
    fwd_v(Var<32, 2, 0>{}, "fwd BV32", false);
    states_v(Var<64, 2, 1>{}, "st BV64 2/1", true);
    states_v(Var<64, 2, 2>{}, "st BV64 2/2", false);
    states_v(Var<32, 2, 2>{}, "st BV32 2/2", false);
    prep(0);
    dr::bwd_states<bf16, D, D, false>(w, Tm, dv, s0.dout, s0.q, s0.k, s0.v, s0.beta, nullptr, scale, B, T, H, 0);
    const float t_bc = median_ms_pipelined([&](int i) { const Inputs &s = sets[i % nsets];
        dr::bwd_chunk<bf16, D, D, false>(w, Tm, dq, dk, db, nullptr, s.dout, s.q, s.k, s.v, s.beta, nullptr, scale, B, T, H, 0); }, iters);
    row("", " bwd_chunk", t_bc, f_chunk, by_c);
    cudaCheck(cudaFree(ref));
}

/* Times one shape (and prints its rows); returns the fwd and fwd+bwd ms. */
struct FwdBwd { float fwd, all; };
static FwdBwd bench_shape(int B, int T, int H, int D, int iters) {
    const size_t N = (size_t)B * T * H, nx = N * D;
    const double C = 64, Dd = D, nch = (double)B * H * ceil_div(T, 64);
    const double CCD = 2 * C * C * Dd, CDD = 2 * C * Dd * Dd, CCC = 2 * C * C * C;
    const double f_prep = nch * (CCD + CCC / 3);
    const double f_fwd = nch * (3 * CDD + 3 * CCD);
    const double f_states = nch * ((2 * CDD + CCD) + (CCD + CCD + CDD + CCD + 2 * CDD));
    const double f_chunk = nch * (CCD + CCD + (CDD + CCD) + CDD + (CCD + CDD) + 2 * CCD + CCD + CCD + 2 * CCC + 2 * CCD);
    const double F_fwd = f_prep + f_fwd, F_bwd = f_prep + f_states + f_chunk;
    const double by_fwd = 2.0 * (4 * nx + N), by_bwd = 2.0 * (7 * nx + 2 * N);

    std::vector<Inputs> sets = make_sets(B, T, H, D, D, false, 1);
    const int nsets = (int)sets.size();
    const size_t set_bytes = (4 * nx + N) * sizeof(bf16);
    const size_t wsb = deltarule_workspace_size<bf16>(B, T, H, D, D), svb = deltarule_saved_size<bf16>(B, T, H);
    Outputs out = alloc_outputs(N, D, D, wsb, svb);
    bf16 *o = out.o, *dq = out.dq, *dk = out.dk, *dv = out.dv, *db = out.db, *saved = out.saved;
    void *ws = out.ws;
    const float scale = 1.0f / sqrtf((float)D);
    cudaCheck(cudaDeviceSynchronize());

    auto fwd = [&](int i, bf16 *sv) {
        const Inputs &s = sets[i % nsets];
        deltarule_forward<bf16>(o, sv, s.q, s.k, s.v, s.beta, scale, ws, B, T, H, D, D, 0);
    };
    auto bwd = [&](int i, const bf16 *sv) {
        const Inputs &s = sets[i % nsets];
        deltarule_backward<bf16>(dq, dk, dv, db, s.dout, sv, s.q, s.k, s.v, s.beta, scale, ws, B, T, H, D, D, 0);
    };
    const Four t = time_four(fwd, bwd, saved, iters);
    char sh[64];
    snprintf(sh, sizeof sh, "B=%d T=%d H=%d K=%d", B, T, H, D);
    row(sh, "fwd", t.fwd, F_fwd, by_fwd);
    row("", "bwd", t.bwd, F_bwd, by_bwd);
    row("", "fwd+bwd", t.all, F_fwd + F_bwd, by_fwd + by_bwd);
    row("", "fwd+bwd sv", t.all_sv, F_fwd + F_bwd - f_prep, by_fwd + by_bwd);
    /* each kernel alone, and the variants of the state passes, each checked against the default */
    if (D == 128) kernel_table<128>(sets, nsets, o, dq, dk, dv, db, ws, saved, scale, B, T, H, iters, f_prep, f_fwd, f_states, f_chunk);
    else kernel_table<64>(sets, nsets, o, dq, dk, dv, db, ws, saved, scale, B, T, H, iters, f_prep, f_fwd, f_states, f_chunk);
    printf("%-22s workspace %.1f MB, saved Tm %.1f MB, %d rotating input sets of %.1f MB\n", "", wsb / 1e6, svb / 1e6,
           nsets, set_bytes / 1e6);

    free_sets(sets);
    free_outputs(out);
    return FwdBwd{t.fwd, t.all};
}

/* The gated delta rule at (B, T, H, K = D, V = DV): the same four rows, then (kernels = true) each
 * kernel alone with the configuration by shape. */
template <int D, int DV> static FwdBwd bench_gated(int B, int T, int H, int iters, bool kernels) {
    const size_t N = (size_t)B * T * H;
    std::vector<Inputs> sets = make_sets(B, T, H, D, DV, true, 7);
    const int nsets = (int)sets.size();
    Outputs out = alloc_outputs(N, D, DV, gated_deltarule_workspace_size<bf16>(B, T, H, D, DV),
                                gated_deltarule_saved_size<bf16>(B, T, H));
    bf16 *o = out.o, *dq = out.dq, *dk = out.dk, *dv = out.dv, *db = out.db, *saved = out.saved;
    float *dg = out.dg;
    void *ws = out.ws;
    const float scale = 1.0f / sqrtf((float)D);
    cudaCheck(cudaDeviceSynchronize());
    auto fwd = [&](int i, bf16 *sv) {
        const Inputs &s = sets[i % nsets];
        gated_deltarule_forward<bf16>(o, sv, s.q, s.k, s.v, s.beta, s.g, scale, ws, B, T, H, D, DV, 0);
    };
    auto bwd = [&](int i, const bf16 *sv) {
        const Inputs &s = sets[i % nsets];
        gated_deltarule_backward<bf16>(dq, dk, dv, db, dg, s.dout, sv, s.q, s.k, s.v, s.beta, s.g, scale, ws, B, T, H,
                                       D, DV, 0);
    };
    const Four t = time_four(fwd, bwd, saved, iters);
    char sh[64], sh2[64];
    snprintf(sh, sizeof sh, "gated B=%d T=%d H=%d", B, T, H);
    snprintf(sh2, sizeof sh2, "  K=%d V=%d", D, DV);
    printf("%-22s %-12s %9.3f\n%-22s %-12s %9.3f\n", sh, "fwd", t.fwd, sh2, "bwd", t.bwd);
    printf("%-22s %-12s %9.3f\n%-22s %-12s %9.3f\n", "", "fwd+bwd", t.all, "", "fwd+bwd sv", t.all_sv);
    if (kernels) {
        dr::Workspace w = dr::carve_workspace<bf16>(ws, B, T, H, D, DV);
        const Inputs &s0 = sets[0];
        auto one = [&](const char *name, auto f) {
            printf("%-22s %-12s %9.3f\n", "", name, median_ms_pipelined([&](int i) { f(sets[i % nsets]); }, iters));
        };
        one(" prep", [&](const Inputs &s) { dr::prep<bf16, D, true>(saved, s.k, s.beta, s.g, B, T, H, 0); });
        one(" fwd (auto)", [&](const Inputs &s) {
            dr::fwd_auto<bf16, D, DV, true>(saved, o, s.q, s.k, s.v, s.beta, s.g, scale, B, T, H, 0); });
        dr::prep<bf16, D, true>(saved, s0.k, s0.beta, s0.g, B, T, H, 0);
        one(" states", [&](const Inputs &s) {
            dr::bwd_states_auto<bf16, D, DV, true>(w, saved, dv, s.dout, s.q, s.k, s.v, s.beta, s.g, scale, B, T, H, 0); });
        dr::bwd_states_auto<bf16, D, DV, true>(w, saved, dv, s0.dout, s0.q, s0.k, s0.v, s0.beta, s0.g, scale, B, T, H, 0);
        one(" bwd_chunk", [&](const Inputs &s) {
            dr::bwd_chunk<bf16, D, DV, true>(w, saved, dq, dk, db, dg, s.dout, s.q, s.k, s.v, s.beta, s.g, scale, B, T, H, 0); });
    }
    free_sets(sets);
    free_outputs(out);
    return FwdBwd{t.fwd, t.all};
}

int main(int argc, char **argv) {
    const int iters = argc > 1 ? atoi(argv[1]) : 30;
    const bool quick = argc > 2 && strcmp(argv[2], "quick") == 0;
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    /* the copy ceiling, measured: 1 GiB device-to-device, bytes read + written */
    {
        const size_t n = (size_t)1 << 30;
        void *a, *b;
        cudaCheck(cudaMalloc(&a, n));
        cudaCheck(cudaMalloc(&b, n));
        cudaCheck(cudaMemset(a, 1, n));
        const float ms = median_ms_pipelined([&](int) { cudaCheck(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice)); }, 10);
        printf("device: %s, %d SMs, L2 %d MB; copy %.0f GB/s (read+write)\n",
               prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, 2.0 * n / (ms * 1e-3) / 1e9);
        cudaCheck(cudaFree(a));
        cudaCheck(cudaFree(b));
    }
    printf("%-22s %-12s %9s %9s %8s\n", "shape (bf16)", "pass", "ms", "TFLOP/s", "GB/s");
    const FwdBwd bar = bench_shape(8, 2048, 8, 128, iters);
    const FwdBwd gbar = bench_gated<128, 128>(8, 2048, 8, iters, true);
    bench_gated<128, 256>(8, 2048, 8, iters, false);
    if (quick) return 0;
    const FwdBwd d12 = bench_shape(32, 1024, 6, 128, iters);
    bench_gated<128, 128>(32, 1024, 6, iters, false);
    bench_gated<64, 128>(32, 1024, 6, iters, true); /* the gdn preset's layer (d12 training) */
    bench_shape(4, 4096, 8, 128, iters);
    bench_shape(8, 2048, 16, 64, iters);
    bench_shape(1, 2048, 8, 128, iters);
    printf("| delta rule B=8 T=2048 H=8 K=V=128 bf16, fwd / fwd+bwd | %.3f / %.3f ms |\n", bar.fwd, bar.all);
    printf("| delta rule B=32 T=1024 H=6 K=V=128 (d12) bf16, fwd / fwd+bwd | %.3f / %.3f ms |\n", d12.fwd, d12.all);
    printf("| gated delta rule B=8 T=2048 H=8 K=V=128 bf16, fwd / fwd+bwd | %.3f / %.3f ms |\n", gbar.fwd, gbar.all);
    return 0;
}
