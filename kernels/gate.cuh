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
 * The parameter gradients are reduced deterministically: the decay's per (head, slab of rows) in one
 * block (fixed thread order, then a block tree sum) into the scratch, then per head over the slabs in
 * order; the norm gain's per block into a partial row of the scratch, then colsum_add (rmsnorm.cuh)
 * sums the partial rows in block order. The norm's kernels take rmsnorm.cuh's shape (vectors of 16
 * bytes, several rows a warp when rows are short) and its limits on C.
 * Conventions (floatX, fp32 reductions and parameter gradients, deterministic scratch, alignment,
 * graph capture): see common.cuh.
 */
#pragma once
#include "common.cuh"
#include "rmsnorm.cuh" /* rms_shape, rms_dispatch, rms_block_colsum, colsum_add */

// ----------------------------------------------------------------------------
// kernel launchers (declarations; definitions at the end)

/* g [N, H] fp32 = -exp(A_log) softplus(a + dt_bias); a [N, H] floatX; A_log, dt_bias fp32 [H]. */
template <typename floatX>
void gdn_decay_forward(float *g, const floatX *a, const float *A_log, const float *dt_bias, int N, int H,
                       cudaStream_t stream);
/* Scratch floats gdn_decay_backward needs. */
inline size_t gdn_decay_backward_scratch_floats(int N, int H);
/* da (=) [N, H]; dA_log, ddt_bias (fp32 [H]) +=; dg fp32 [N, H]. */
template <typename floatX>
void gdn_decay_backward(floatX *da, float *dA_log, float *ddt_bias, float *scratch, const float *dg, const floatX *a,
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

#define GATE_THREADS 256                  /* the decay's threads per block */
#define GATE_BWD_BLOCKS 512               /* the norm backward's grid at most: the number of partial dw
                                           * rows that colsum_add then sums */
#define GATE_SOFTPLUS_THRESHOLD 20.0f     /* softplus(z) = z above it (PyTorch's) */
#define GATE_DECAY_ROWS 512               /* the decay backward: rows of one head a block sums at least */
#define GATE_DECAY_SLABS 128              /* and at most this many blocks a head (partial sums) */

__device__ __forceinline__ float softplus_f(float z) { return z > GATE_SOFTPLUS_THRESHOLD ? z : log1pf(expf(z)); }
__device__ __forceinline__ float dsoftplus_f(float z) { return z > GATE_SOFTPLUS_THRESHOLD ? 1.0f : sigmoid_f(z); }

template <typename floatX>
__global__ void gdn_decay_forward_kernel(float *g, const floatX *a, const float *A_log, const float *dt_bias, long n, int H) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const int h = (int)(i % H);
        g[i] = -expf(A_log[h]) * softplus_f(to_f<floatX>(a[i]) + dt_bias[h]);
    }
}

/* Block (h, slab): the da of head h in rows slab, slab + slabs, ... (blocks of GATE_THREADS rows),
 * and the slab's two sums of the head, in a fixed order, into partial[h][slab][2]. */
template <typename floatX>
__global__ void gdn_decay_backward_kernel(floatX *da, float *partial, const float *dg, const floatX *a,
                                          const float *A_log, const float *dt_bias, int N, int H) {
    __shared__ float shm[32];
    const int h = blockIdx.x, slab = blockIdx.y, slabs = gridDim.y;
    const float A = expf(A_log[h]), bias = dt_bias[h];
    float sA = 0.0f, sdt = 0.0f;
    for (long n = (long)slab * blockDim.x + threadIdx.x; n < N; n += (long)slabs * blockDim.x) {
        const size_t i = (size_t)n * H + h;
        const float z = to_f<floatX>(a[i]) + bias, d = dg[i];
        const float dz = -d * A * dsoftplus_f(z);
        da[i] = from_f<floatX>(dz);
        sA += d * (-A * softplus_f(z));
        sdt += dz;
    }
    sA = block_sum(sA, shm);
    sdt = block_sum(sdt, shm);
    if (threadIdx.x == 0) {
        partial[((size_t)h * slabs + slab) * 2] = sA;
        partial[((size_t)h * slabs + slab) * 2 + 1] = sdt;
    }
}

/* Thread h: head h's slab sums in slab order, added into dA_log[h] and ddt_bias[h]. */
__global__ void gdn_decay_sum_kernel(float *dA_log, float *ddt_bias, const float *partial, int slabs, int H) {
    const int h = blockIdx.x * blockDim.x + threadIdx.x;
    if (h >= H) return;
    const float *p = partial + (size_t)h * slabs * 2;
    float sA = 0.0f, sdt = 0.0f;
    for (int i = 0; i < slabs; i++) { sA += p[2 * i]; sdt += p[2 * i + 1]; }
    dA_log[h] += sA;
    ddt_bias[h] += sdt;
}

/* The gated norm in rmsnorm.cuh's shape (rms_shape, rms_dispatch): TPR threads per row of C, NV
 * vectors of VEC elements each, held in registers between the row's sum and its outputs. */
template <typename floatX, int VEC, int TPR, int NV>
__global__ void __launch_bounds__(RMS_THREADS)
gated_rmsnorm_forward_kernel(floatX *out, float *rstd, const floatX *inp, const floatX *gate, const float *w, int N,
                             int C, float eps) {
    const int row = blockIdx.x * (RMS_THREADS / TPR) + threadIdx.x / TPR, l = threadIdx.x % TPR;
    const bool valid = row < N;
    const size_t base = (size_t)row * C;
    float x[NV][VEC];
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < NV; i++) {
        const int c = (i * TPR + l) * VEC;
        if (valid && c < C) {
            load_f<floatX, VEC>(x[i], inp + base + c);
#pragma unroll
            for (int k = 0; k < VEC; k++) ss += x[i][k] * x[i][k];
        }
    }
    ss = group_sum<TPR>(ss);
    const float r = rsqrtf(ss / C + eps);
    if (!valid) return;
    if (l == 0) rstd[row] = r;
#pragma unroll
    for (int i = 0; i < NV; i++) {
        const int c = (i * TPR + l) * VEC;
        if (c < C) {
            float z[VEC], y[VEC];
            load_f<floatX, VEC>(z, gate + base + c);
#pragma unroll
            for (int k = 0; k < VEC; k++) y[k] = x[i][k] * r * __ldg(w + c + k) * silu_f(z[k]);
            store_f<floatX, VEC>(out + base + c, y);
        }
    }
}

/* Row blocks of RMS_THREADS / TPR rows in a grid-stride loop; the gain's gradient per thread, then
 * rms_block_colsum into the block's row of partial. */
template <typename floatX, int VEC, int TPR, int NV>
__global__ void __launch_bounds__(RMS_THREADS)
gated_rmsnorm_backward_kernel(floatX *dinp, floatX *dgate, float *partial, const floatX *dout, const floatX *inp,
                              const floatX *gate, const float *w, const float *rstd, int N, int C) {
    extern __shared__ float sdw[]; /* [C] */
    const int RPB = RMS_THREADS / TPR, grp = threadIdx.x / TPR, l = threadIdx.x % TPR;
    float dw[NV][VEC];
#pragma unroll
    for (int i = 0; i < NV; i++)
#pragma unroll
        for (int k = 0; k < VEC; k++) dw[i][k] = 0.0f;
    const int nrb = ceil_div(N, RPB);
    for (int rb = blockIdx.x; rb < nrb; rb += gridDim.x) { /* uniform trip count within a block */
        const int row = rb * RPB + grp;
        const bool valid = row < N;
        const size_t base = (size_t)row * C;
        const float r = valid ? rstd[row] : 0.0f;
        float x[NV][VEC], dyw[NV][VEC]; /* dyw = dout silu(z) w */
        float dot = 0.0f;               /* sum_c dy w x */
#pragma unroll
        for (int i = 0; i < NV; i++) {
            const int c = (i * TPR + l) * VEC;
            if (valid && c < C) {
                float z[VEC], d[VEC], dz[VEC];
                load_f<floatX, VEC>(x[i], inp + base + c);
                load_f<floatX, VEC>(z, gate + base + c);
                load_f<floatX, VEC>(d, dout + base + c);
#pragma unroll
                for (int k = 0; k < VEC; k++) {
                    const float wc = __ldg(w + c + k), s = sigmoid_f(z[k]), dy = d[k] * z[k] * s;
                    dz[k] = d[k] * x[i][k] * r * wc * dsilu_from(z[k], s);
                    dw[i][k] += dy * x[i][k] * r;
                    dyw[i][k] = dy * wc;
                    dot += dyw[i][k] * x[i][k];
                }
                store_f<floatX, VEC>(dgate + base + c, dz);
            }
        }
        const float m = group_sum<TPR>(dot) / C;
        if (valid) {
#pragma unroll
            for (int i = 0; i < NV; i++) {
                const int c = (i * TPR + l) * VEC;
                if (c < C) {
                    float dx[VEC];
#pragma unroll
                    for (int k = 0; k < VEC; k++) dx[k] = r * (dyw[i][k] - x[i][k] * r * r * m);
                    store_f<floatX, VEC>(dinp + base + c, dx);
                }
            }
        }
    }
    rms_block_colsum<VEC, TPR, NV>(dw, sdw, partial, C);
}

/* launch functors for rms_dispatch */
template <typename floatX> struct GatedFwdLaunch {
    floatX *out; float *rstd; const floatX *inp, *gate; const float *w; int N, C; float eps; int blocks;
    cudaStream_t st;
    template <int VEC, int TPR, int NV> void operator()() {
        gated_rmsnorm_forward_kernel<floatX, VEC, TPR, NV><<<blocks, RMS_THREADS, 0, st>>>(out, rstd, inp, gate, w, N, C, eps);
    }
};
template <typename floatX> struct GatedBwdLaunch {
    floatX *dinp, *dgate; float *partial; const floatX *dout, *inp, *gate; const float *w, *rstd; int N, C, blocks;
    cudaStream_t st;
    template <int VEC, int TPR, int NV> void operator()() {
        gated_rmsnorm_backward_kernel<floatX, VEC, TPR, NV><<<blocks, RMS_THREADS, C * sizeof(float), st>>>(
            dinp, dgate, partial, dout, inp, gate, w, rstd, N, C);
    }
};

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

inline int gdn_decay_slabs(int N) {
    const int s = ceil_div(N, GATE_DECAY_ROWS);
    return s < 1 ? 1 : s > GATE_DECAY_SLABS ? GATE_DECAY_SLABS : s;
}

inline size_t gdn_decay_backward_scratch_floats(int N, int H) { return (size_t)gdn_decay_slabs(N) * H * 2; }

template <typename floatX>
void gdn_decay_backward(floatX *da, float *dA_log, float *ddt_bias, float *scratch, const float *dg, const floatX *a,
                        const float *A_log, const float *dt_bias, int N, int H, cudaStream_t stream) {
    if (N <= 0 || H <= 0) return;
    const int slabs = gdn_decay_slabs(N);
    gdn_decay_backward_kernel<floatX><<<dim3(H, slabs), GATE_THREADS, 0, stream>>>(da, scratch, dg, a, A_log, dt_bias, N, H);
    cudaCheckLaunch();
    gdn_decay_sum_kernel<<<ceil_div(H, 128), 128, 0, stream>>>(dA_log, ddt_bias, scratch, slabs, H);
    cudaCheckLaunch();
}

template <typename floatX>
void gated_rmsnorm_forward(floatX *out, float *rstd, const floatX *inp, const floatX *gate, const float *w,
                           int N, int C, float eps, cudaStream_t stream) {
    if (N <= 0) return;
    const RmsShape s = rms_shape<floatX>(C, al16(out, inp, gate));
    GatedFwdLaunch<floatX> l{out, rstd, inp, gate, w, N, C, eps, ceil_div(N, RMS_THREADS / s.tpr), stream};
    rms_dispatch<floatX>(s, l);
    cudaCheckLaunch();
}

inline size_t gated_rmsnorm_backward_scratch_floats(int N, int C) {
    (void)N;
    return (size_t)GATE_BWD_BLOCKS * C;
}

template <typename floatX>
void gated_rmsnorm_backward(floatX *dinp, floatX *dgate, float *dw, float *scratch, const floatX *dout,
                            const floatX *inp, const floatX *gate, const float *w, const float *rstd, int N,
                            int C, cudaStream_t stream) {
    if (N <= 0) return;
    const RmsShape s = rms_shape<floatX>(C, al16(dinp, dgate, dout, inp) && al16(gate));
    const int blocks = min(ceil_div(N, RMS_THREADS / s.tpr), GATE_BWD_BLOCKS);
    GatedBwdLaunch<floatX> l{dinp, dgate, scratch, dout, inp, gate, w, rstd, N, C, blocks, stream};
    rms_dispatch<floatX>(s, l);
    cudaCheckLaunch();
    colsum_add(dw, scratch, blocks, C, stream);
}
