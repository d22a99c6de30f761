/*
 * rmsnorm.cuh -- RMSNorm, alone or fused with the residual add before it.
 *
 * Math (g = gradient of the loss w.r.t. the named quantity):
 *   rmsnorm      r = 1/sqrt(mean(x^2) + eps),          dg += sum_rows dy x r
 *                y = x r g                             dx = r (dy g - x r^2 mean(dy g x))
 *   residual     h' = h + branch, y = rmsnorm(h')      (backward: the residual gradient flows on;
 *                                                       rmsnorm_backward with accumulate = 1 adds)
 * The gain gradient is reduced over rows deterministically: per-block partial rows in the scratch,
 * then colsum_add sums them in block order.
 * Limits (checked, exit with a message): rows up to C = 16*32*VEC (bf16: 4096; fp32: 2048; odd C: 512).
 * Conventions (floatX, fp32 reductions and parameter gradients, deterministic scratch, alignment,
 * graph capture): see common.cuh.
 */
#pragma once
#include "common.cuh"

// ----------------------------------------------------------------------------
// kernel launchers (declarations; definitions at the end)

/* out = RMSNorm(inp; g), rstd[N] saved. Rows of C. Also the per-head output norm of DeltaNet:
 * N = B*T*H rows of C = head_dim with the shared gain g_o (kernels use C/VEC threads per row
 * there, several rows per warp). */
template <typename floatX>
void rmsnorm_forward(floatX *out, float *rstd, const floatX *inp, const float *g, int N, int C, float eps,
                     cudaStream_t stream);
/* res_out = res_in + branch (rounded to floatX), norm_out = RMSNorm(res_out; g), rstd[N].
 * res_out may alias res_in (in-place residual stream). */
template <typename floatX>
void residual_rmsnorm_forward(floatX *res_out, floatX *norm_out, float *rstd, const floatX *res_in,
                              const floatX *branch, const float *g, int N, int C, float eps, cudaStream_t stream);
/* Scratch floats rmsnorm_backward needs. */
inline size_t rmsnorm_backward_scratch_floats(int N, int C);
/* dinp (= ; += with accumulate) from dout, the forward's input (res_out for the fused version)
 * and rstd; dg (fp32) +=. dinp may not alias dout. */
template <typename floatX>
void rmsnorm_backward(floatX *dinp, float *dg, float *scratch, const floatX *dout, const floatX *inp, const float *g,
                      const float *rstd, int N, int C, int accumulate, cudaStream_t stream);

// ----------------------------------------------------------------------------
// RMSNorm: TPR threads per row (several rows per warp when C is small), each thread holds NV
// vectors of VEC elements of its row in registers.

#define RMS_THREADS 256
#define RMS_BWD_BLOCKS 512
#define RMS_MAX_NV 16

template <typename floatX, int VEC, int TPR, int NV, bool RESID>
__global__ void __launch_bounds__(RMS_THREADS)
rmsnorm_forward_kernel(floatX *res_out, floatX *out, float *rstd, const floatX *inp, const floatX *branch,
                       const float *g, int N, int C, float eps) {
    int row = blockIdx.x * (RMS_THREADS / TPR) + threadIdx.x / TPR, l = threadIdx.x % TPR;
    bool valid = row < N;
    size_t base = (size_t)row * C;
    float x[NV][VEC];
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < NV; i++) {
        int c = (i * TPR + l) * VEC;
        if (valid && c < C) {
            load_f<floatX, VEC>(x[i], inp + base + c);
            if (RESID) {
                float b[VEC];
                load_f<floatX, VEC>(b, branch + base + c);
#pragma unroll
                for (int k = 0; k < VEC; k++) x[i][k] = to_f<floatX>(from_f<floatX>(x[i][k] + b[k]));
                store_f<floatX, VEC>(res_out + base + c, x[i]);
            }
#pragma unroll
            for (int k = 0; k < VEC; k++) ss += x[i][k] * x[i][k];
        }
    }
    ss = group_sum<TPR>(ss);
    float r = rsqrtf(ss / C + eps);
    if (!valid) return;
    if (l == 0) rstd[row] = r;
#pragma unroll
    for (int i = 0; i < NV; i++) {
        int c = (i * TPR + l) * VEC;
        if (c < C) {
            float y[VEC], gv[VEC];
#pragma unroll
            for (int k = 0; k < VEC; k++) gv[k] = __ldg(g + c + k);
#pragma unroll
            for (int k = 0; k < VEC; k++) y[k] = x[i][k] * r * gv[k];
            store_f<floatX, VEC>(out + base + c, y);
        }
    }
}

/* The end of a backward kernel of this shape: the block's sum of each thread's per-column gain
 * gradients acc (thread l of a row group holds columns (i TPR + l) VEC + k), over the row groups of
 * a warp (shuffles), then over the warps in order (s [C] in shared memory), written to the block's
 * row of partial [gridDim.x, C] (colsum_add then adds the rows in order: deterministic). */
template <int VEC, int TPR, int NV>
__device__ __forceinline__ void rms_block_colsum(float (&acc)[NV][VEC], float *s, float *partial, int C) {
    const int l = threadIdx.x % TPR;
#pragma unroll
    for (int i = 0; i < NV; i++)
#pragma unroll
        for (int k = 0; k < VEC; k++)
#pragma unroll
            for (int o = TPR; o < 32; o <<= 1) acc[i][k] += __shfl_xor_sync(0xffffffffu, acc[i][k], o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int w = 0; w < RMS_THREADS / 32; w++) {
        if (warp == w && lane < TPR) {
#pragma unroll
            for (int i = 0; i < NV; i++) {
                int c = (i * TPR + l) * VEC;
                if (c < C)
#pragma unroll
                    for (int k = 0; k < VEC; k++) s[c + k] = (w == 0 ? 0.0f : s[c + k]) + acc[i][k];
            }
        }
        __syncthreads();
    }
    for (int c = threadIdx.x; c < C; c += RMS_THREADS) partial[(size_t)blockIdx.x * C + c] = s[c];
}

template <typename floatX, int VEC, int TPR, int NV>
__global__ void __launch_bounds__(RMS_THREADS)
rmsnorm_backward_kernel(floatX *dinp, float *partial, const floatX *dout, const floatX *inp, const float *g,
                        const float *rstd, int N, int C, int accumulate) {
    extern __shared__ float sdg[]; /* [C] */
    const int RPB = RMS_THREADS / TPR;
    int grp = threadIdx.x / TPR, l = threadIdx.x % TPR;
    float dg[NV][VEC]; /* g is re-read per row (L1 hits): fewer registers than keeping it */
#pragma unroll
    for (int i = 0; i < NV; i++)
#pragma unroll
        for (int k = 0; k < VEC; k++) dg[i][k] = 0.0f;
    int nrb = ceil_div(N, RPB);
    for (int rb = blockIdx.x; rb < nrb; rb += gridDim.x) { /* uniform trip count within a block */
        int row = rb * RPB + grp;
        bool valid = row < N;
        size_t base = (size_t)row * C;
        float x[NV][VEC], dy[NV][VEC], dx0[NV][VEC];
        float dot = 0.0f;
        float r = valid ? rstd[row] : 0.0f;
#pragma unroll
        for (int i = 0; i < NV; i++) {
            int c = (i * TPR + l) * VEC;
            if (valid && c < C) {
                float gv[VEC];
#pragma unroll
                for (int k = 0; k < VEC; k++) gv[k] = __ldg(g + c + k);
                load_f<floatX, VEC>(x[i], inp + base + c);
                load_f<floatX, VEC>(dy[i], dout + base + c);
                if (accumulate) load_f<floatX, VEC>(dx0[i], dinp + base + c); /* in flight with x, dy */
#pragma unroll
                for (int k = 0; k < VEC; k++) {
                    dg[i][k] += dy[i][k] * x[i][k] * r;
                    dy[i][k] *= gv[k]; /* dy <- dy g from here on */
                    dot += dy[i][k] * x[i][k];
                }
            }
        }
        dot = group_sum<TPR>(dot);
        float mr3 = dot / C * r * r * r;
        if (valid) {
#pragma unroll
            for (int i = 0; i < NV; i++) {
                int c = (i * TPR + l) * VEC;
                if (c < C) {
                    float dx[VEC];
#pragma unroll
                    for (int k = 0; k < VEC; k++) {
                        float v = r * dy[i][k] - x[i][k] * mr3;
                        dx[k] = accumulate ? dx0[i][k] + v : v;
                    }
                    store_f<floatX, VEC>(dinp + base + c, dx);
                }
            }
        }
    }
    rms_block_colsum<VEC, TPR, NV>(dg, sdg, partial, C);
}

/* Kernel shape for a row of C elements: VEC elements per access, TPR threads per row, NV accesses
 * per thread. */
struct RmsShape { int vec, tpr, nv; };
template <typename floatX>
inline RmsShape rms_shape(int C, bool aligned) {
    RmsShape s;
    s.vec = (aligned && C % vec16<floatX>() == 0) ? vec16<floatX>() : 1;
    int nvec = C / s.vec;
    s.tpr = 1;
    while (s.tpr < 32 && s.tpr < nvec) s.tpr <<= 1;
    int need = ceil_div(nvec, s.tpr);
    static const int nvs[] = {1, 2, 3, 4, 6, 8, 12, 16};
    s.nv = 0;
    for (int k = 0; k < 8; k++) if (nvs[k] >= need) { s.nv = nvs[k]; break; }
    if (s.nv == 0) {
        fprintf(stderr, "rmsnorm: row length C=%d too large (max %d, or %d when C %% %d != 0)\n", C,
                32 * RMS_MAX_NV * vec16<floatX>(), 32 * RMS_MAX_NV, vec16<floatX>());
        exit(EXIT_FAILURE);
    }
    return s;
}

/* Calls F.template operator()<VEC, TPR, NV>() for the shape. */
template <typename floatX, typename F>
inline void rms_dispatch(const RmsShape &s, F &&f) {
#define RMS_NV_CASES(VEC, TPR)                                                                       \
    switch (s.nv) {                                                                                  \
    case 1: f.template operator()<VEC, TPR, 1>(); break;                                             \
    case 2: f.template operator()<VEC, TPR, 2>(); break;                                             \
    case 3: f.template operator()<VEC, TPR, 3>(); break;                                             \
    case 4: f.template operator()<VEC, TPR, 4>(); break;                                             \
    case 6: f.template operator()<VEC, TPR, 6>(); break;                                             \
    case 8: f.template operator()<VEC, TPR, 8>(); break;                                             \
    case 12: f.template operator()<VEC, TPR, 12>(); break;                                           \
    default: f.template operator()<VEC, TPR, 16>(); break;                                           \
    }
#define RMS_TPR_CASES(VEC)                                                                           \
    switch (s.tpr) {                                                                                 \
    case 1: f.template operator()<VEC, 1, 1>(); break;                                               \
    case 2: f.template operator()<VEC, 2, 1>(); break;                                               \
    case 4: f.template operator()<VEC, 4, 1>(); break;                                               \
    case 8: f.template operator()<VEC, 8, 1>(); break;                                               \
    case 16: f.template operator()<VEC, 16, 1>(); break;                                             \
    default: RMS_NV_CASES(VEC, 32)                                                                   \
    }
    if (s.vec == 1) { RMS_TPR_CASES(1) } else { RMS_TPR_CASES(vec16<floatX>()) }
#undef RMS_TPR_CASES
#undef RMS_NV_CASES
}

/* dst[i] += sum_{p < P} partial[p * M + i], i < M, summed in p order (deterministic). */
__global__ void colsum_add_kernel(float *dst, const float *partial, int P, int M) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= M) return;
    float s = 0.0f;
#pragma unroll 8
    for (int p = 0; p < P; p++) s += partial[(size_t)p * M + i]; /* unrolled: 8 loads in flight, same order */
    dst[i] += s;
}
inline void colsum_add(float *dst, const float *partial, int P, int M, cudaStream_t stream) {
    colsum_add_kernel<<<ceil_div(M, 256), 256, 0, stream>>>(dst, partial, P, M);
    cudaCheckLaunch();
}

// ----------------------------------------------------------------------------
// kernel launchers

/* launch functors for rms_dispatch (member templates cannot live in local classes) */
template <typename floatX, bool RESID> struct RmsFwdLaunch {
    floatX *res_out, *out; float *rstd; const floatX *inp, *branch; const float *g; int N, C; float eps; int blocks;
    cudaStream_t st;
    template <int VEC, int TPR, int NV> void operator()() {
        rmsnorm_forward_kernel<floatX, VEC, TPR, NV, RESID><<<blocks, RMS_THREADS, 0, st>>>(res_out, out, rstd, inp,
                                                                                         branch, g, N, C, eps);
    }
};
template <typename floatX> struct RmsBwdLaunch {
    floatX *dinp; float *partial; const floatX *dout, *inp; const float *g, *rstd; int N, C, acc, blocks;
    cudaStream_t st;
    template <int VEC, int TPR, int NV> void operator()() {
        rmsnorm_backward_kernel<floatX, VEC, TPR, NV><<<blocks, RMS_THREADS, C * sizeof(float), st>>>(
            dinp, partial, dout, inp, g, rstd, N, C, acc);
    }
};

template <typename floatX>
void rmsnorm_forward(floatX *out, float *rstd, const floatX *inp, const float *g, int N, int C, float eps,
                     cudaStream_t stream) {
    if (N <= 0) return;
    RmsShape s = rms_shape<floatX>(C, al16(out, inp));
    int blocks = ceil_div(N, RMS_THREADS / s.tpr);
    RmsFwdLaunch<floatX, false> l{nullptr, out, rstd, inp, nullptr, g, N, C, eps, blocks, stream};
    rms_dispatch<floatX>(s, l);
    cudaCheckLaunch();
}

template <typename floatX>
void residual_rmsnorm_forward(floatX *res_out, floatX *norm_out, float *rstd, const floatX *res_in,
                              const floatX *branch, const float *g, int N, int C, float eps, cudaStream_t stream) {
    if (N <= 0) return;
    RmsShape s = rms_shape<floatX>(C, al16(res_out, norm_out, res_in, branch));
    int blocks = ceil_div(N, RMS_THREADS / s.tpr);
    RmsFwdLaunch<floatX, true> l{res_out, norm_out, rstd, res_in, branch, g, N, C, eps, blocks, stream};
    rms_dispatch<floatX>(s, l);
    cudaCheckLaunch();
}

inline size_t rmsnorm_backward_scratch_floats(int N, int C) {
    (void)N;
    return (size_t)RMS_BWD_BLOCKS * C;
}

template <typename floatX>
void rmsnorm_backward(floatX *dinp, float *dg, float *scratch, const floatX *dout, const floatX *inp, const float *g,
                      const float *rstd, int N, int C, int accumulate, cudaStream_t stream) {
    if (N <= 0) return;
    RmsShape s = rms_shape<floatX>(C, al16(dinp, dout, inp));
    int blocks = min(ceil_div(N, RMS_THREADS / s.tpr), RMS_BWD_BLOCKS);
    RmsBwdLaunch<floatX> l{dinp, scratch, dout, inp, g, rstd, N, C, accumulate, blocks, stream};
    rms_dispatch<floatX>(s, l);
    cudaCheckLaunch();
    colsum_add(dg, scratch, blocks, C, stream);
}
