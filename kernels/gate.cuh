/*
 * gate.cuh -- the two gates of the gated DeltaNet layer ('N') around its delta rule (ref/gate.c is
 * the CPU reference): the decay computed from x W_a^T, A_log and dt_bias, and the gated output norm.
 *
 * Math (g = gradient of the loss w.r.t. the named quantity, s = sigmoid, sp = softplus,
 * sp(z) = log(1 + e^z), = z for z > 20 like PyTorch's, sp'(z) = s(z) (1 above 20)):
 *   decay       z = a + dt_bias[h], g = -exp(A_log[h]) sp(z)        (fp32 log decay [N, H])
 *               da = -dg exp(A_log[h]) sp'(z) (=),  dA_log[h] += sum_n dg g,  ddt_bias[h] += sum_n da
 *   gated norm  r = 1/sqrt(mean(x^2) + eps), y = x r w, out = y silu(z)     (rows of C = V_g)
 *               dz = dout y silu'(z) (=), dy = dout silu(z), dw += sum_rows dy x r,
 *               dx = r (dy w - x r^2 mean(dy w x)) (=)
 * The parameter gradients are reduced deterministically: the decay's per head in one block (fixed
 * thread order, then a block tree sum); the norm gain's per block into a partial row of the scratch,
 * then colsum_add (rmsnorm.cuh) sums the partial rows in block order.
 * Conventions (floatX, fp32 reductions and parameter gradients, deterministic scratch, alignment,
 * graph capture): see common.cuh.
 */
#pragma once
#include "common.cuh"
#include "rmsnorm.cuh" /* colsum_add */

// ----------------------------------------------------------------------------
// kernel launchers (declarations; definitions at the end)

/* g [N, H] fp32 = -exp(A_log) softplus(a + dt_bias); a [N, H] floatX; A_log, dt_bias fp32 [H]. */
template <typename floatX>
void gdn_decay_forward(float *g, const floatX *a, const float *A_log, const float *dt_bias, int N, int H,
                       cudaStream_t stream);
/* da (=) [N, H]; dA_log, ddt_bias (fp32 [H]) +=; dg fp32 [N, H]. */
template <typename floatX>
void gdn_decay_backward(floatX *da, float *dA_log, float *ddt_bias, const float *dg, const floatX *a,
                        const float *A_log, const float *dt_bias, int N, int H, cudaStream_t stream);
/* out = RMSNorm(inp; w) * silu(gate) over N rows of C (N = B*T*H heads of V_g values, one gain w [C]
 * for all heads); rstd [N] saved. out may not alias inp or gate. */
template <typename floatX>
void gated_rmsnorm_forward(floatX *out, float *rstd, const floatX *inp, const floatX *gate, const float *w,
                           int N, int C, float eps, cudaStream_t stream);
/* Scratch floats gated_rmsnorm_backward needs. */
inline size_t gated_rmsnorm_backward_scratch_floats(int N, int C);
/* dinp, dgate (=), dw (fp32 [C]) +=, from dout, the forward's inp, gate and rstd. dinp and dgate
 * may not alias dout, inp or gate. */
template <typename floatX>
void gated_rmsnorm_backward(floatX *dinp, floatX *dgate, float *dw, float *scratch, const floatX *dout,
                            const floatX *inp, const floatX *gate, const float *w, const float *rstd, int N,
                            int C, cudaStream_t stream);

// ----------------------------------------------------------------------------
// kernels

#define GATE_THREADS 256                  /* the decay's threads per block, and the norm's */
#define GATE_ROWS_PER_BLOCK (GATE_THREADS / 32) /* the norm: one warp per row */
#define GATE_BWD_BLOCKS 264               /* the norm backward's grid (2 x 132 H100 SMs): the number
                                           * of partial dw rows that colsum_add then sums */
#define GATE_SOFTPLUS_THRESHOLD 20.0f     /* softplus(z) = z above it (PyTorch's) */

__device__ __forceinline__ float softplus_f(float z) { return z > GATE_SOFTPLUS_THRESHOLD ? z : log1pf(expf(z)); }
__device__ __forceinline__ float dsoftplus_f(float z) { return z > GATE_SOFTPLUS_THRESHOLD ? 1.0f : sigmoid_f(z); }

template <typename floatX>
__global__ void gdn_decay_forward_kernel(float *g, const floatX *a, const float *A_log, const float *dt_bias, long n, int H) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const int h = (int)(i % H);
        g[i] = -expf(A_log[h]) * softplus_f(to_f<floatX>(a[i]) + dt_bias[h]);
    }
}

/* One block per head h: every row's da, and the head's two sums in a fixed order. */
template <typename floatX>
__global__ void gdn_decay_backward_kernel(floatX *da, float *dA_log, float *ddt_bias, const float *dg, const floatX *a,
                                          const float *A_log, const float *dt_bias, int N, int H) {
    __shared__ float shm[32];
    const int h = blockIdx.x;
    const float A = expf(A_log[h]), bias = dt_bias[h];
    float sA = 0.0f, sdt = 0.0f;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        const size_t i = (size_t)n * H + h;
        const float z = to_f<floatX>(a[i]) + bias, d = dg[i];
        const float dz = -d * A * dsoftplus_f(z);
        da[i] = from_f<floatX>(dz);
        sA += d * (-A * softplus_f(z));
        sdt += dz;
    }
    sA = block_sum(sA, shm);
    sdt = block_sum(sdt, shm);
    if (threadIdx.x == 0) { dA_log[h] += sA; ddt_bias[h] += sdt; }
}

template <typename floatX>
__global__ void gated_rmsnorm_forward_kernel(floatX *out, float *rstd, const floatX *inp, const floatX *gate,
                                             const float *w, int N, int C, float eps) {
    const int lane = threadIdx.x & 31;
    const long row = (long)blockIdx.x * GATE_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= N) return;
    const floatX *x = inp + row * C, *z = gate + row * C;
    float ss = 0.0f;
    for (int c = lane; c < C; c += 32) { const float v = to_f<floatX>(x[c]); ss += v * v; }
    ss = warp_sum(ss);
    const float r = rsqrtf(ss / C + eps);
    floatX *y = out + row * C;
    for (int c = lane; c < C; c += 32) {
        const float zc = to_f<floatX>(z[c]);
        y[c] = from_f<floatX>(to_f<floatX>(x[c]) * r * w[c] * silu_f(zc));
    }
    if (lane == 0) rstd[row] = r;
}

/* A grid-stride loop of warps over rows; each warp adds its rows' dw terms into its own row of
 * shared memory [GATE_ROWS_PER_BLOCK][C] (lane c owns columns c, c + 32, ...), and the block sums
 * those rows in warp order into its partial row partial[blockIdx.x][C]. */
template <typename floatX>
__global__ void gated_rmsnorm_backward_kernel(floatX *dinp, floatX *dgate, float *partial, const floatX *dout,
                                              const floatX *inp, const floatX *gate, const float *w,
                                              const float *rstd, int N, int C) {
    extern __shared__ float dw_rows[]; /* [GATE_ROWS_PER_BLOCK][C] */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float *acc = dw_rows + (size_t)warp * C;
    for (int c = lane; c < C; c += 32) acc[c] = 0.0f;
    for (long row = (long)blockIdx.x * GATE_ROWS_PER_BLOCK + warp; row < N; row += (long)gridDim.x * GATE_ROWS_PER_BLOCK) {
        const floatX *x = inp + row * C, *z = gate + row * C, *dy_ = dout + row * C;
        floatX *dx = dinp + row * C, *dz = dgate + row * C;
        const float r = rstd[row];
        float dot = 0.0f; /* sum_c dy w x, dy = dout silu(z) */
        for (int c = lane; c < C; c += 32) {
            const float xc = to_f<floatX>(x[c]), zc = to_f<floatX>(z[c]), d = to_f<floatX>(dy_[c]);
            const float s = sigmoid_f(zc), dy = d * zc * s;
            dz[c] = from_f<floatX>(d * xc * r * w[c] * dsilu_from(zc, s));
            dot += dy * w[c] * xc;
            acc[c] += dy * xc * r;
        }
        const float m = warp_sum(dot) / C;
        for (int c = lane; c < C; c += 32) {
            const float xc = to_f<floatX>(x[c]), zc = to_f<floatX>(z[c]);
            const float dy = to_f<floatX>(dy_[c]) * silu_f(zc);
            dx[c] = from_f<floatX>(r * (dy * w[c] - xc * r * r * m));
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float s = 0.0f;
        for (int k = 0; k < GATE_ROWS_PER_BLOCK; k++) s += dw_rows[(size_t)k * C + c];
        partial[(size_t)blockIdx.x * C + c] = s;
    }
}

// ----------------------------------------------------------------------------
// kernel launchers

template <typename floatX>
void gdn_decay_forward(float *g, const floatX *a, const float *A_log, const float *dt_bias, int N, int H,
                       cudaStream_t stream) {
    const long n = (long)N * H;
    if (n <= 0) return;
    gdn_decay_forward_kernel<floatX><<<grid_for(n, GATE_THREADS), GATE_THREADS, 0, stream>>>(g, a, A_log, dt_bias, n, H);
    cudaCheckLaunch();
}

template <typename floatX>
void gdn_decay_backward(floatX *da, float *dA_log, float *ddt_bias, const float *dg, const floatX *a,
                        const float *A_log, const float *dt_bias, int N, int H, cudaStream_t stream) {
    if (N <= 0 || H <= 0) return;
    gdn_decay_backward_kernel<floatX><<<H, GATE_THREADS, 0, stream>>>(da, dA_log, ddt_bias, dg, a, A_log, dt_bias, N, H);
    cudaCheckLaunch();
}

template <typename floatX>
void gated_rmsnorm_forward(floatX *out, float *rstd, const floatX *inp, const floatX *gate, const float *w,
                           int N, int C, float eps, cudaStream_t stream) {
    if (N <= 0) return;
    gated_rmsnorm_forward_kernel<floatX><<<ceil_div(N, GATE_ROWS_PER_BLOCK), GATE_THREADS, 0, stream>>>(
        out, rstd, inp, gate, w, N, C, eps);
    cudaCheckLaunch();
}

inline int gated_rmsnorm_backward_blocks(int N) {
    const int b = ceil_div(N, GATE_ROWS_PER_BLOCK);
    return b < GATE_BWD_BLOCKS ? (b > 0 ? b : 1) : GATE_BWD_BLOCKS;
}

inline size_t gated_rmsnorm_backward_scratch_floats(int N, int C) {
    return (size_t)gated_rmsnorm_backward_blocks(N) * C;
}

template <typename floatX>
void gated_rmsnorm_backward(floatX *dinp, floatX *dgate, float *dw, float *scratch, const floatX *dout,
                            const floatX *inp, const floatX *gate, const float *w, const float *rstd, int N,
                            int C, cudaStream_t stream) {
    if (N <= 0) return;
    const int blocks = gated_rmsnorm_backward_blocks(N);
    const size_t shm = (size_t)GATE_ROWS_PER_BLOCK * C * sizeof(float);
    if (shm > 48 * 1024) {
        fprintf(stderr, "gated_rmsnorm_backward: rows of %d values need %zu bytes of shared memory, more than 48 KiB\n", C, shm);
        exit(EXIT_FAILURE);
    }
    gated_rmsnorm_backward_kernel<floatX><<<blocks, GATE_THREADS, shm, stream>>>(dinp, dgate, scratch, dout, inp, gate,
                                                                               w, rstd, N, C);
    cudaCheckLaunch();
    colsum_add(dw, scratch, blocks, C, stream);
}
