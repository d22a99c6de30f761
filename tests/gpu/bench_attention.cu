/*
 * bench_attention.cu -- speed of kernels/attention.cuh on the headline shape: B=8, T=2048,
 * Hq=Hkv=8, d=128, bf16, global causal and sliding window 512; forward, backward and
 * forward+backward. Median of event-timed runs after warm-up, random inputs (never zeros).
 * FLOPs: forward 4*B*H*d*(visible (query, key) pairs) -- T^2/2 pairs for global causal, i.e. half
 * of 4*B*H*T*T*d --, backward 2.5x that. The README compares with cuDNN (PyTorch SDPA, timed by
 * scripts/bench_fla_deltarule.py). Also times the other tile variants of the kernels and checks
 * they agree with the default. The lines that start with "| " are rows of the README's results
 * table (scripts/bench_table.sh collects them).
 *
 *   build/tests/gpu/bench_attention [reps]
 */
#include <algorithm>
#include <vector>
#include <cstring>
#include "../../kernels/attention.cuh"
#include "gpu_util.cuh"

using attn::forward_launch;
using attn::backward_launch;

static const int B = 8, T = 2048, H = 8, D = 128;

__global__ void fill_kernel(bf16 *x, long n, uint32_t seed) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
        float u = ((h >> 8) + 0.5f) / 16777216.0f; /* (0,1) */
        x[i] = __float2bfloat16(3.4f * (u - 0.5f));    /* uniform(-1.7, 1.7), variance ~1, never 0 */
    }
}

static void row(const char *what, int window, float ms, double flops) {
    printf("  %-50s w=%-5d %8.3f ms  %6.1f TFLOP/s\n", what, window, ms, flops / (ms * 1e-3) / 1e12);
}

int main(int argc, char **argv) {
    const int reps = argc > 1 ? atoi(argv[1]) : 20;
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("bench_attention on %s (%d SMs): B=%d T=%d Hq=Hkv=%d d=%d bf16, median of %d\n", prop.name,
           prop.multiProcessorCount, B, T, H, D, reps);
    const size_t n = (size_t)B * T * H * D;
    bf16 *q, *k, *v, *dout, *out, *out2, *dq, *dk, *dv, *dq2, *dk2, *dv2;
    float *lse, *lse2;
    void *scratch;
    bf16 **bufs[] = {&q, &k, &v, &dout, &out, &out2, &dq, &dk, &dv, &dq2, &dk2, &dv2};
    for (bf16 **p : bufs) cudaCheck(cudaMalloc(p, n * sizeof(bf16)));
    cudaCheck(cudaMalloc(&lse, (size_t)B * H * T * sizeof(float)));
    cudaCheck(cudaMalloc(&lse2, (size_t)B * H * T * sizeof(float)));
    cudaCheck(cudaMalloc(&scratch, attention_backward_scratch_bytes(B, T, H, D)));
    fill_kernel<<<1024, 256>>>(q, n, 1u);
    fill_kernel<<<1024, 256>>>(k, n, 2u);
    fill_kernel<<<1024, 256>>>(v, n, 3u);
    fill_kernel<<<1024, 256>>>(dout, n, 4u);
    cudaCheckLaunch();
    cudaCheck(cudaDeviceSynchronize());

    const int windows[2] = {0, 512};
    float readme_ms[2][2]; /* [window][fwd, fwd+bwd] of the defaults */
    for (int wi = 0; wi < 2; wi++) {
        const int window = windows[wi];
        double pairs = 0;
        if (window <= 0) pairs = 0.5 * T * T;
        else for (int t = 0; t < T; t++) pairs += std::min(t + 1, window);
        const double ffwd = 4.0 * B * H * D * pairs, fbwd = 2.5 * ffwd;
        printf("\nwindow %s: forward %.1f GFLOP, backward %.1f GFLOP\n", window ? "512" : "global (causal)", ffwd / 1e9,
               fbwd / 1e9);

        /* defaults, then variants (each checked against the default's result) */
        auto fwd = [&] { attention_forward(out, lse, q, k, v, B, T, H, H, D, window, 0); };
        auto bwd = [&] { attention_backward(dq, dk, dv, scratch, dout, q, k, v, out, lse, B, T, H, H, D, window, 0); };
        float t_f = median_ms(fwd, reps);
        float t_b = median_ms(bwd, reps);
        float t_fb = median_ms([&] { fwd(); bwd(); }, reps);
        row("forward (default)", window, t_f, ffwd);
        row("backward (default)", window, t_b, fbwd);
        row("forward+backward (default)", window, t_fb, ffwd + fbwd);
        readme_ms[wi][0] = t_f;
        readme_ms[wi][1] = t_fb;

#define FWD_VARIANT(NW, MT, BK, MINB, QR)                                                                   \
    do {                                                                                                    \
        auto f = [&] { forward_launch<bf16, D, NW, MT, BK, true, MINB, QR>(out2, lse2, q, k, v, B, T, H, H, window, 0); }; \
        float ms = median_ms(f, reps);                                                                      \
        char name[80];                                                                                      \
        snprintf(name, sizeof name, "fwd NW=%d MT=%d BK=%d minB=%d Qreg=%d (err %.1e)", NW, MT, BK, MINB, (int)(QR && MT == 1), \
                 rel_err_dev(out2, out, n));                                                                \
        row(name, window, ms, ffwd);                                                                        \
    } while (0)
        FWD_VARIANT(4, 1, 64, 1, true);
        FWD_VARIANT(4, 1, 64, 3, false);
        FWD_VARIANT(4, 1, 64, 2, false);
        FWD_VARIANT(4, 2, 64, 1, true);
        FWD_VARIANT(4, 2, 32, 1, true);
        FWD_VARIANT(8, 1, 64, 1, true);
#define BWD_VARIANT(NW)                                                                                     \
    do {                                                                                                    \
        auto f = [&] { backward_launch<bf16, D, NW, true>(dq2, dk2, dv2, (float *)scratch, dout, q, k, v, out, lse, \
                                                          B, T, H, H, window, 0); };                       \
        float ms = median_ms(f, reps);                                                                      \
        char name[80];                                                                                      \
        snprintf(name, sizeof name, "bwd NW=%d (err dq %.1e dk %.1e)", NW, rel_err_dev(dq2, dq, n), rel_err_dev(dk2, dk, n)); \
        row(name, window, ms, fbwd);                                                                        \
    } while (0)
        BWD_VARIANT(4);
        BWD_VARIANT(8);
    }
    printf("| causal attention B=%d T=%d H=%d d=%d bf16, fwd / fwd+bwd | %.3f / %.3f ms |\n", B, T, H, D,
           readme_ms[0][0], readme_ms[0][1]);
    printf("| sliding-window attention (512), same shape, fwd / fwd+bwd | %.3f / %.3f ms |\n", readme_ms[1][0],
           readme_ms[1][1]);
    for (bf16 **p : bufs) cudaCheck(cudaFree(*p));
    cudaCheck(cudaFree(lse));
    cudaCheck(cudaFree(lse2));
    cudaCheck(cudaFree(scratch));
    return 0;
}
