/*
 * layers.cuh -- the small fused layers of the trainer: embedding, RMSNorm (with the residual add),
 * causal conv + SiLU + L2 norm (DeltaNet's q,k,v path), sigmoid, SwiGLU, softmax cross-entropy.
 * Each is a forward/backward pair of launchers `(out, ..., inp, ..., sizes, stream)`.
 *
 * Math (g = gradient of the loss w.r.t. the named quantity, s = sigmoid, silu(z) = z s(z),
 * silu'(z) = s(z) (1 + z (1 - s(z)))):
 *   embedding    y[n] = wte[tok[n]]                   dwte[tok[n]] += dy[n]
 *   rmsnorm      r = 1/sqrt(mean(x^2) + eps),          dg += sum_rows dy x r
 *                y = x r g                             dx = r (dy g - x r^2 mean(dy g x))
 *   residual     h' = h + branch, y = rmsnorm(h')      (backward: the residual gradient flows on;
 *                                                       rmsnorm_backward with accumulate = 1 adds)
 *   conv_silu    z[t] = sum_j w[c,j] x[t-3+j] (x[t<0] = 0), u = silu(z)
 *   l2norm       y = u / sqrt(sum_head u^2 + eps)      (q and k heads only; v: y = u)
 *                  backward: du = (dy - y (y.dy)) / sqrt(sum u^2 + eps), dz = du silu'(z),
 *                  dw[c,j] += sum_t dz[t] x[t-3+j],  dx[t] = sum_j w[c,j] dz[t+3-j]
 *   sigmoid      y = s(x)                              dx = dy y (1 - y)
 *   swiglu       y = silu(a) u                         da = dy u silu'(a), du = dy silu(a)
 *   xent         loss = logsumexp(z[0..V)) - z[tgt]    dz_j = dloss/N (softmax_j - [j == tgt]), j < V;
 *                                                      dz_j = 0 for padded columns V <= j < Vp
 *
 * Conventions. floatX is float (fp32 test mode) or __nv_bfloat16. Activations [B,T,C] row-major,
 * N = B*T rows. Every reduction is in float. Small parameters (norm gains, conv weights) are read
 * from the fp32 MASTER weights (float*), and their gradients are fp32 and ACCUMULATED (+=);
 * activation gradients are floatX and written (=) unless an `accumulate` flag says +=.
 * Parameter-gradient reductions over rows are deterministic: per-block partial sums in a caller-
 * provided scratch buffer, then one ordered reduction (no float atomics anywhere in this file).
 * Calls on one stream run in order, so one scratch buffer of the largest size any call asks for
 * (the *_scratch_* functions) can be shared by all of them. No allocation, no synchronisation:
 * every launcher can be captured in a CUDA graph.
 *
 * Layouts:
 *   - DeltaNet q,k,v: either one launch per tensor on its own [B,T,D] plane (C = D, C_norm = D for
 *     q and k, 0 for v, w = that tensor's [D,4] conv weight), or one launch over an interleaved
 *     [B,T,3D] buffer whose rows are q|k|v (C = 3D, C_norm = 2D, w = the [3D,4] conv weights, which
 *     are adjacent in the parameter table; the fused [3D,D] projection of matmul.cuh writes such rows),
 *     optionally with plane = D: the output (and the backward's dout) then is three planes q, k, v
 *     [B,T,D] one after the other, as the delta rule takes them, while the rows side stays q|k|v.
 *   - SwiGLU: ONE buffer [N,2I], each row gate|up (the fused [2I,D] gate/up projection).
 * Alignment: none required for correctness (any C, odd ones included); the 16-byte vector paths
 * are taken when the row length is a multiple of 16/sizeof(floatX) elements and the pointers are
 * 16-byte aligned (checked at launch). Limits (checked, exit with a message): RMSNorm rows up to
 * C = 16*32*VEC (bf16: 4096; fp32: 2048; odd C: 512); the fused conv needs K % 32 == 0 and
 * K <= 256 for the normalised channels. Embedding tokens must lie in [0, Vp).
 * Speed on H100 at d12 sizes (tests/gpu/bench_kernels.cu): swiglu, adamw, embedding fwd ~95% of
 * the copy bandwidth, rmsnorm fwd 75-85%, rmsnorm bwd 55-70%, conv fwd 83% and bwd 66% on [N,3D]
 * (70% and 58% per [N,D] tensor, where a ~35 us kernel pays its fixed launch and ramp costs),
 * cross-entropy fwd+bwd 79%.
 */
#pragma once
#include <cassert>
#include <cub/device/device_radix_sort.cuh>
#include "common.cuh"

// ----------------------------------------------------------------------------
// kernel launchers (declarations; definitions below)

/* ---- embedding ---- */
/* out[N,D] = wte[tokens[n]]; wte floatX [Vp,D]. */
template <typename floatX>
void embedding_forward(floatX *out, const int *tokens, const floatX *wte, int N, int D, cudaStream_t stream);
/* Scratch bytes embedding_backward needs for N tokens (a stable GPU radix sort + partial rows). */
inline size_t embedding_backward_scratch_bytes(int N, int D, int Vp);
/* dwte[Vp,D] (fp32) += rows of dout [N,D] by token. Deterministic: tokens are stably sorted
 * (cub radix sort of (token, position)), each run of equal tokens is summed in position order in
 * chunks of EMB_CHUNK sorted positions, runs spanning chunks are combined by their first chunk. */
template <typename floatX>
void embedding_backward(float *dwte, void *scratch, const floatX *dout, const int *tokens, int N, int D, int Vp,
                        cudaStream_t stream);

/* ---- RMSNorm ---- */
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

/* ---- causal depthwise conv (kernel 4) + SiLU + per-head L2 norm ---- */
/* inp/out [B,T,C]; w fp32 [C,4] (tap 3 = current token). Channels c < C_norm (a multiple of K)
 * are L2-normalised per group of K consecutive channels (eps_l2 = 1e-6 in the model); the rest are
 * plain silu(conv). DeltaNet: C = 3D (q|k|v rows), C_norm = 2D, K = head_dim. Plain conv+SiLU:
 * C_norm = 0 (K is then unused, pass 128).
 * plane > 0 (a divisor of C, a multiple of K and of 16/sizeof(floatX)): out is stored planar, C/plane
 * planes [B*T, plane] one after the other (plane j = channels [j*plane, (j+1)*plane)) while inp stays
 * [B*T, C] rows: plane = D turns the q|k|v rows of the fused [3D,D] projection into the separate
 * q, k, v tensors [B,T,D] of the delta rule. plane = 0: out is [B*T, C] rows like inp. */
template <typename floatX>
void conv_silu_l2norm_forward(floatX *out, const floatX *inp, const float *w, int B, int T, int C, int C_norm,
                              int K, float eps_l2, cudaStream_t stream, int plane = 0);
inline size_t conv_silu_l2norm_backward_scratch_floats(int B, int T, int C, int K);
/* dinp (=) [B*T, C] rows, dw (fp32 [C,4]) += ; recomputes the forward from inp. dout is planar when
 * plane > 0 (laid out as the forward's out), [B*T, C] rows otherwise. */
template <typename floatX>
void conv_silu_l2norm_backward(floatX *dinp, float *dw, float *scratch, const floatX *dout, const floatX *inp,
                               const float *w, int B, int T, int C, int C_norm, int K, float eps_l2,
                               cudaStream_t stream, int plane = 0);

/* ---- sigmoid (DeltaNet's beta = sigmoid(x W_b)) ---- */
/* out[n] = sigmoid(inp[n]), n < count. Types may differ (e.g. float beta from floatX logits);
 * out may alias inp when the types match. */
template <typename Tout, typename Tin>
void sigmoid_forward(Tout *out, const Tin *inp, int count, cudaStream_t stream);
/* dinp = dout * out * (1 - out) (=). dinp may alias dout when the types match. */
template <typename Tdinp, typename Tdout, typename Tout>
void sigmoid_backward(Tdinp *dinp, const Tdout *dout, const Tout *out, int count, cudaStream_t stream);

/* ---- SwiGLU ---- */
/* gu [N,2I] rows gate|up; out [N,I] = silu(gate) * up. */
template <typename floatX>
void swiglu_forward(floatX *out, const floatX *gu, int N, int I, cudaStream_t stream);
/* dgu [N,2I] (=) rows dgate|dup from dout [N,I] and gu. dgu MAY alias gu (in place). y (optional,
 * may alias dout): the forward output silu(gate) * up, recomputed on the way. */
template <typename floatX>
void swiglu_backward(floatX *dgu, const floatX *dout, const floatX *gu, int N, int I, cudaStream_t stream,
                     floatX *y = NULL);

/* ---- softmax cross-entropy ---- */
/* logits [N,Vp] (only the first V columns count), targets [N] in [0,V). losses[N] (float) =
 * per-row loss; logits are OVERWRITTEN with dlogits = dloss/N * (softmax - onehot), padded
 * columns set to 0. For gradient accumulation pass dloss = 1/grad_accum_steps. */
template <typename floatX>
void crossentropy_forward_backward(floatX *logits, float *losses, const int *targets, float dloss, int N, int V,
                                   int Vp, cudaStream_t stream);
/* Forward only (validation): losses[N], logits untouched. */
template <typename floatX>
void crossentropy_forward(float *losses, const floatX *logits, const int *targets, int N, int V, int Vp,
                          cudaStream_t stream);

/* ---- deterministic sum ---- */
/* *out (= ; += with accumulate) = scale * sum(inp[0..n)) in a fixed order (one block): e.g. the
 * mean loss, scale = 1/N. */
inline void sum_float(float *out, const float *inp, int n, float scale, int accumulate, cudaStream_t stream);

// ----------------------------------------------------------------------------
// shared helpers

/* N elements of T moved as one aligned access (N * sizeof(T) in {2, 4, 8, 16} bytes). */
template <typename T, int N> struct alignas(sizeof(T) * N) Pack { T v[N]; };

template <typename T, int N>
__device__ __forceinline__ void load_f(float (&dst)[N], const T *p) {
    Pack<T, N> pk = *reinterpret_cast<const Pack<T, N> *>(p);
#pragma unroll
    for (int k = 0; k < N; k++) dst[k] = to_f<T>(pk.v[k]);
}
template <typename T, int N>
__device__ __forceinline__ void store_f(T *p, const float (&src)[N]) {
    Pack<T, N> pk;
#pragma unroll
    for (int k = 0; k < N; k++) pk.v[k] = from_f<T>(src[k]);
    *reinterpret_cast<Pack<T, N> *>(p) = pk;
}

/* Sum over the W lanes of an aligned group of W lanes (W a power of two <= 32). */
template <int W> __device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int o = W / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* true when every pointer is 16-byte aligned (the vector paths need it besides the row length) */
inline bool al16(const void *a, const void *b = nullptr, const void *c = nullptr, const void *d = nullptr) {
    return (((uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d) & 15) == 0;
}

/* 16-byte vector width (in elements) of T. */
template <typename T> constexpr int vec16() { return 16 / (int)sizeof(T); }

__device__ __forceinline__ float dsilu_from(float z, float s) { return s * (1.0f + z * (1.0f - s)); }

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
// embedding

template <typename floatX, int VEC>
__global__ void embedding_forward_kernel(floatX *out, const int *tokens, const floatX *wte, int N, int D) {
    int nv = D / VEC;
    long e = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long)N * nv) return;
    int n = (int)(e / nv), j = (int)(e % nv);
    const floatX *src = wte + (size_t)tokens[n] * D + (size_t)j * VEC;
    floatX *dst = out + (size_t)n * D + (size_t)j * VEC;
    *reinterpret_cast<Pack<floatX, VEC> *>(dst) = *reinterpret_cast<const Pack<floatX, VEC> *>(src);
}

#define EMB_CHUNK 32

__global__ void iota_kernel(int *p, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) p[i] = i;
}

/* One block per chunk of EMB_CHUNK sorted positions; threads over D. Each piece (maximal run of
 * equal tokens inside the chunk) is summed in position order; a piece that is a whole run goes
 * straight into dwte (this block is its only writer), the piece that continues a run from the
 * previous chunk goes to head[chunk], the one that continues into the next chunk to tail[chunk]. */
template <typename floatX>
__global__ void embedding_backward_chunk_kernel(float *dwte, float *head, float *tail, const floatX *dout,
                                                const int *keys, const int *idx, int N, int D) {
    __shared__ int skey[EMB_CHUNK], sidx[EMB_CHUNK];
    __shared__ int prev_key, next_key;
    int c = blockIdx.x, i0 = c * EMB_CHUNK, cnt = min(EMB_CHUNK, N - i0);
    if (threadIdx.x < cnt) { skey[threadIdx.x] = keys[i0 + threadIdx.x]; sidx[threadIdx.x] = idx[i0 + threadIdx.x]; }
    if (threadIdx.x == 0) {
        prev_key = i0 > 0 ? keys[i0 - 1] : -1;
        next_key = i0 + cnt < N ? keys[i0 + cnt] : -1;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        int start = 0;
        for (int i = 0; i < cnt; i++) {
            acc += to_f<floatX>(dout[(size_t)sidx[i] * D + d]);
            int k = skey[i];
            if (i == cnt - 1 || skey[i + 1] != k) {
                bool before = start == 0 && prev_key == k;
                bool after = i == cnt - 1 && next_key == k;
                if (before) head[(size_t)c * D + d] = acc;
                else if (after) tail[(size_t)c * D + d] = acc;
                else dwte[(size_t)k * D + d] += acc;
                acc = 0.0f;
                start = i + 1;
            }
        }
    }
}

/* One block per chunk: if this chunk starts a run that continues into later chunks, sum its tail
 * and the following chunks' heads in order and add the total to dwte. */
__global__ void embedding_backward_join_kernel(float *dwte, const float *head, const float *tail, const int *keys,
                                               int N, int D, int nchunks) {
    int c = blockIdx.x, i0 = c * EMB_CHUNK, last = min(i0 + EMB_CHUNK, N) - 1;
    int k = keys[last];
    if (last + 1 >= N || keys[last + 1] != k) return;   /* run does not continue */
    int first = last;                                    /* start of the last piece */
    while (first > i0 && keys[first - 1] == k) first--;
    if (first == i0 && i0 > 0 && keys[i0 - 1] == k) return; /* started earlier: not the owner */
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = tail[(size_t)c * D + d];
        for (int cc = c + 1; cc < nchunks; cc++) {
            int j0 = cc * EMB_CHUNK;
            if (keys[j0] != k) break;
            acc += head[(size_t)cc * D + d];
            int jl = min(j0 + EMB_CHUNK, N) - 1;
            if (keys[jl] != k) break;
        }
        dwte[(size_t)k * D + d] += acc;
    }
}

static inline int emb_key_bits(int Vp) {
    int b = 1;
    while (b < 31 && (1L << b) < (long)Vp) b++;
    return b;
}
static inline size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

inline size_t emb_cub_temp_bytes(int N, int Vp) {
    size_t temp = 0;
    cudaCheck(cub::DeviceRadixSort::SortPairs(nullptr, temp, (const int *)nullptr, (int *)nullptr, (const int *)nullptr,
                                              (int *)nullptr, N, 0, emb_key_bits(Vp)));
    return temp;
}

inline size_t embedding_backward_scratch_bytes(int N, int D, int Vp) {
    size_t nch = (size_t)ceil_div(N, EMB_CHUNK);
    return 3 * align256((size_t)N * sizeof(int)) + 2 * align256(nch * D * sizeof(float)) +
           align256(emb_cub_temp_bytes(N, Vp));
}

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
    /* reduce dg over the rows groups of a warp (shuffles), then over warps in order (shared) */
#pragma unroll
    for (int i = 0; i < NV; i++)
#pragma unroll
        for (int k = 0; k < VEC; k++)
#pragma unroll
            for (int o = TPR; o < 32; o <<= 1) dg[i][k] += __shfl_xor_sync(0xffffffffu, dg[i][k], o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int w = 0; w < RMS_THREADS / 32; w++) {
        if (warp == w && lane < TPR) {
#pragma unroll
            for (int i = 0; i < NV; i++) {
                int c = (i * TPR + l) * VEC;
                if (c < C)
#pragma unroll
                    for (int k = 0; k < VEC; k++) sdg[c + k] = (w == 0 ? 0.0f : sdg[c + k]) + dg[i][k];
            }
        }
        __syncthreads();
    }
    for (int c = threadIdx.x; c < C; c += RMS_THREADS) partial[(size_t)blockIdx.x * C + c] = sdg[c];
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

// ----------------------------------------------------------------------------
// causal conv (kernel 4) + SiLU + per-head L2 norm.
//
// Tiling. A lane owns CPL adjacent channels, read and written as one vector of CONV_*_BYTES (8: bf16
// CPL = 4, fp32 CPL = 2), so a warp covers a group of G = 32*CPL channels and a head of K channels
// is HL = K/CPL adjacent lanes: the L2 norm of a head is a shuffle sum over HL lanes (the backward
// reduces its two sums u.u and u.dy together, group_sum2). Head widths with K/CPL not a power of two
// <= 32 (K = 96, 160, ..., 256) fall back to CPL = K/32, one head per warp. Launches whose lanes all
// take the vector path (aligned, C a multiple of G) use the FULL instantiation, free of per-lane
// masks.
// Grid = (channel groups, nby) blocks of CONV_WARPS warps; nby is chosen from the kernel's occupancy
// so that the whole grid is resident at once (one wave, no tail), and the N = B*T rows are split
// evenly over the nby*CONV_WARPS warps of a group. Each warp walks its contiguous range of rows in
// time order, one row at a time, restarting at each sequence start: it keeps the last 3 input rows
// in registers (the backward: also the last 3 dz), rotating through fixed registers (the loop is
// unrolled by a multiple of 3), and CONV_*_QD rows ahead in flight, a queue of raw loads (bf16 stays
// packed) refilled as each row is consumed. A range that starts inside a sequence re-reads the 3
// rows before it (the conv's halo). The backward also recomputes dz for the 3 rows after its range
// (dx[t] needs dz[t..t+3]) and adds dw over its own rows only; each block sums its warps' dw (in warp
// order) into one partial row of the scratch, and conv_dw_colsum_kernel adds the nby partial rows in
// a fixed order: deterministic.
// Planar layout (plane > 0): the tensor on the delta-rule side (out in the forward, dout in the
// backward) is C/plane planes [B*T, plane], plane j holding channels [j*plane, (j+1)*plane); inp and
// dinp stay [B*T, C] rows. A lane's CPL channels lie in one plane, so each lane simply has its own
// base pointer and row stride on that side.

#define CONV_WARPS 4
#define CONV_MIN_ROWS 32 /* fewest rows per warp worth a warp (small problems) */
/* Bytes per access of a lane's channels (CPL = bytes / sizeof(floatX)), rows each warp has in flight
 * (queue depth) and __launch_bounds__ min blocks per SM (a register cap) for lanes of <= 4 channels;
 * wider lanes (fallback head widths) get 4 forward, 1 backward. Tuned on an H100 at the d12 sizes:
 * 8-byte lanes with more warps beat 16-byte lanes (whose backward needs 200+ registers), and the
 * occupancy matters more than deeper queues. */
#define CONV_FWD_BYTES 8
#define CONV_BWD_BYTES 8
#define CONV_FWD_QD 3
#define CONV_BWD_QD 1
#define CONV_FWD_MINB 6
#define CONV_BWD_MINB 4

/* Elements per vector access for CPL channels of floatX: the widest power of two dividing CPL of
 * 4..16 bytes; 0 when there is none (element by element). */
template <typename floatX, int CPL> __host__ __device__ constexpr int conv_pack() {
    for (int w = 8; w >= 1; w >>= 1)
        if (CPL % w == 0 && w * (int)sizeof(floatX) <= 16 && w * (int)sizeof(floatX) >= 4) return w;
    return 0;
}

/* CPL adjacent channels of one row as raw bits, bf16 packed two per word until used. load():
 * vector accesses when full (row strides and pointers aligned, all CPL channels below C), else
 * element by element, zeros at and past C (nvalid = C - first channel). */
template <typename floatX, int CPL> struct ConvRaw {
    static constexpr int W = conv_pack<floatX, CPL>();
    static constexpr int NW = (CPL * (int)sizeof(floatX) + 3) / 4;
    uint32_t u[NW];
    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int i = 0; i < NW; i++) u[i] = 0u;
    }
    __device__ __forceinline__ void load(const floatX *p, bool full, int nvalid) {
        if constexpr (W > 0) {
            if (full) {
                constexpr int WW = W * (int)sizeof(floatX) / 4; /* words per access */
#pragma unroll
                for (int i = 0; i < NW / WW; i++) {
                    Pack<uint32_t, WW> pk = *reinterpret_cast<const Pack<uint32_t, WW> *>(p + i * W);
#pragma unroll
                    for (int j = 0; j < WW; j++) u[i * WW + j] = pk.v[j];
                }
                return;
            }
        }
        zero();
#pragma unroll
        for (int k = 0; k < CPL; k++) {
            if (k >= nvalid) break;
            if constexpr (sizeof(floatX) == 2) u[k / 2] |= (uint32_t)__bfloat16_as_ushort(p[k]) << (16 * (k % 2));
            else u[k] = __float_as_uint(p[k]);
        }
    }
    __device__ __forceinline__ float get(int k) const {
        if constexpr (sizeof(floatX) == 2) return __uint_as_float(k % 2 ? (u[k / 2] & 0xffff0000u) : (u[k / 2] << 16));
        else return __uint_as_float(u[k]);
    }
};

template <typename floatX, int CPL>
__device__ __forceinline__ void conv_store(floatX *p, const float (&src)[CPL], bool full, int nvalid) {
    constexpr int W = conv_pack<floatX, CPL>();
    if constexpr (W > 0) {
        if (full) {
#pragma unroll
            for (int i = 0; i < CPL / W; i++)
                store_f<floatX, W>(p + i * W, *reinterpret_cast<const float(*)[W]>(&src[i * W]));
            return;
        }
    }
#pragma unroll
    for (int k = 0; k < CPL; k++) if (k < nvalid) p[k] = from_f<floatX>(src[k]);
}

/* (a, b) <- their sums over each aligned group of HL lanes, with log2(HL) + 1 shuffles instead of
 * 2 log2(HL): the first exchange leaves a's pair sums on the upper half of each group and b's on
 * the lower half, the halves reduce one value each, and a last exchange hands each lane the other. */
template <int HL> __device__ __forceinline__ void group_sum2(float &a, float &b) {
    if constexpr (HL > 1) {
        constexpr int H = HL / 2;
        bool hi = threadIdx.x & H;
        float v = (hi ? a : b) + __shfl_xor_sync(0xffffffffu, hi ? b : a, H);
#pragma unroll
        for (int o = H / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        float other = __shfl_xor_sync(0xffffffffu, v, H);
        a = hi ? v : other;
        b = hi ? other : v;
    }
}

/* The lane's base pointer and row stride on the planar side (plane = 0: plain [N, C] rows). */
template <typename T>
__device__ __forceinline__ T *conv_plane_ptr(T *base, int c, int C, int N, int plane, int &stride) {
    if (plane <= 0 || c >= C) { stride = C; return base + (c < C ? c : 0); }
    stride = plane;
    return base + (size_t)(c / plane) * N * plane + c % plane;
}

/* This warp's rows [n0, n1) of the N rows, an even split over the gridDim.y*CONV_WARPS warps. */
__device__ __forceinline__ void conv_warp_rows(int N, int warp, int &n0, int &n1) {
    long nw = (long)gridDim.y * CONV_WARPS, gw = (long)blockIdx.y * CONV_WARPS + warp;
    n0 = (int)(gw * N / nw);
    n1 = (int)((gw + 1) * N / nw);
}

/* Rows the main loops unroll: a multiple of the queue depth (slot = r % QD) and of 3 (the window of
 * the last 3 rows rotates through fixed registers), so both are indexed by compile-time constants. */
template <int QD> __host__ __device__ constexpr int conv_unroll() { return QD % 3 == 0 ? QD : 3 * QD; }

template <typename floatX, int CPL, int HL, bool FULL>
__global__ void __launch_bounds__(CONV_WARPS * 32, CPL <= 4 ? CONV_FWD_MINB : 4)
conv_silu_l2norm_forward_kernel(floatX *out, const floatX *inp, const float *w, int N, int T, int C, int C_norm,
                                int plane, float eps, bool vec) {
    constexpr int QD = CONV_FWD_QD, U = conv_unroll<QD>();
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int g0 = blockIdx.x * 32 * CPL, c = g0 + lane * CPL, nvalid = C - c;
    bool norm = c < C_norm, wnorm = g0 < C_norm; /* wnorm: some lanes of the warp normalise */
    bool full = FULL || (vec && nvalid >= CPL);  /* FULL: every lane of the launch is */
    int n0, n1;
    conv_warp_rows(N, warp, n0, n1);
    float w4[CPL][4];
#pragma unroll
    for (int k = 0; k < CPL; k++)
#pragma unroll
        for (int j = 0; j < 4; j++) w4[k][j] = (FULL || k < nvalid) ? w[(size_t)(c + k) * 4 + j] : 0.0f;
    const floatX *x0 = inp + (c < C ? c : 0); /* row n at x0 + n*C */
    int ys;
    floatX *y0 = conv_plane_ptr(out, c, C, N, plane, ys);
    for (int s0 = n0; s0 < n1;) {
        /* one segment: rows [s0, s1) of one sequence, t0 = s0's time */
        int t0 = s0 % T, s1 = min(n1, s0 - t0 + T);
        ConvRaw<floatX, CPL> h[3], q[QD];
#pragma unroll
        for (int j = 0; j < 3; j++) {
            h[j].zero();
            if (t0 - 3 + j >= 0) h[j].load(x0 + (size_t)(s0 - 3 + j) * C, full, nvalid);
        }
#pragma unroll
        for (int r = 0; r < QD; r++) {
            q[r].zero();
            if (s0 + r < s1) q[r].load(x0 + (size_t)(s0 + r) * C, full, nvalid);
        }
        float xw[3][CPL]; /* at unrolled step r: rows n-3, n-2, n-1 in xw[r%3], xw[(r+1)%3], xw[(r+2)%3] */
#pragma unroll
        for (int j = 0; j < 3; j++)
#pragma unroll
            for (int k = 0; k < CPL; k++) xw[j][k] = h[j].get(k);
        const floatX *xq = x0 + (size_t)(s0 + QD) * C; /* next row to fetch */
        floatX *yr = y0 + (size_t)s0 * ys;
        for (int n0r = s0; n0r < s1; n0r += U) {
#pragma unroll
            for (int r = 0; r < U; r++) {
                int n = n0r + r;
                if (n >= s1) break;
                float *xa = xw[r % 3], *xb = xw[(r + 1) % 3], *xc = xw[(r + 2) % 3];
                float x[CPL], u[CPL], ss = 0.0f;
#pragma unroll
                for (int k = 0; k < CPL; k++) x[k] = q[r % QD].get(k);
                if (n + QD < s1) q[r % QD].load(xq, full, nvalid); /* refill */
                xq += C;
#pragma unroll
                for (int k = 0; k < CPL; k++) {
                    float z = w4[k][0] * xa[k] + w4[k][1] * xb[k] + w4[k][2] * xc[k] + w4[k][3] * x[k];
                    u[k] = silu_f(z);
                    ss += u[k] * u[k];
                }
                if (wnorm) ss = group_sum<HL>(ss);
                if (norm) {
                    float inv = rsqrtf(ss + eps);
#pragma unroll
                    for (int k = 0; k < CPL; k++) u[k] *= inv;
                }
                conv_store<floatX, CPL>(yr, u, full, nvalid);
                yr += ys;
#pragma unroll
                for (int k = 0; k < CPL; k++) xa[k] = x[k]; /* row n replaces row n-3 */
            }
        }
        s0 = s1;
    }
}

template <typename floatX, int CPL, int HL, bool FULL>
__global__ void __launch_bounds__(CONV_WARPS * 32, CPL <= 4 ? CONV_BWD_MINB : 1)
conv_silu_l2norm_backward_kernel(floatX *dinp, float *partial, const floatX *dout, const floatX *inp, const float *w,
                                 int N, int T, int C, int C_norm, int plane, float eps, bool vec) {
    constexpr int QD = CONV_BWD_QD, U = conv_unroll<QD>();
    __shared__ float sdw[CONV_WARPS][CPL * 4][33]; /* [warp][k*4 + j][lane], padded: no bank conflicts */
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int g0 = blockIdx.x * 32 * CPL, c = g0 + lane * CPL, nvalid = C - c;
    bool norm = c < C_norm, wnorm = g0 < C_norm, full = FULL || (vec && nvalid >= CPL);
    int n0, n1;
    conv_warp_rows(N, warp, n0, n1);
    float w4[CPL][4], dw[CPL][4];
#pragma unroll
    for (int k = 0; k < CPL; k++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            w4[k][j] = (FULL || k < nvalid) ? w[(size_t)(c + k) * 4 + j] : 0.0f;
            dw[k][j] = 0.0f;
        }
    const floatX *x0 = inp + (c < C ? c : 0);
    floatX *dx0 = dinp + (c < C ? c : 0);
    int dys;
    const floatX *dy0 = conv_plane_ptr(dout, c, C, N, plane, dys);
    for (int s0 = n0; s0 < n1;) {
        /* one segment: dinp rows [s0, s1) of one sequence; dz needed for rows [s0, s2) */
        int t0 = s0 % T, send = s0 - t0 + T, s1 = min(n1, send), s2 = min(s1 + 3, send);
        ConvRaw<floatX, CPL> h[3], qx[QD], qd[QD];
#pragma unroll
        for (int j = 0; j < 3; j++) {
            h[j].zero();
            if (t0 - 3 + j >= 0) h[j].load(x0 + (size_t)(s0 - 3 + j) * C, full, nvalid);
        }
#pragma unroll
        for (int r = 0; r < QD; r++) {
            qx[r].zero();
            qd[r].zero();
            if (s0 + r < s2) {
                qx[r].load(x0 + (size_t)(s0 + r) * C, full, nvalid);
                qd[r].load(dy0 + (size_t)(s0 + r) * dys, full, nvalid);
            }
        }
        /* x and dz of the 3 rows before m, rotating as xw in the forward */
        float xw[3][CPL], dzw[3][CPL];
#pragma unroll
        for (int j = 0; j < 3; j++)
#pragma unroll
            for (int k = 0; k < CPL; k++) { xw[j][k] = h[j].get(k); dzw[j][k] = 0.0f; }
        const floatX *xq = x0 + (size_t)(s0 + QD) * C, *dq = dy0 + (size_t)(s0 + QD) * dys; /* next fetch */
        floatX *dxr = dx0 + (size_t)s0 * C;                                                   /* next store */
        for (int m0 = s0; m0 < s1 + 3; m0 += U) {
#pragma unroll
            for (int r = 0; r < U; r++) {
                int m = m0 + r; /* the row whose dz is computed; dinp row m - 3 is finished by it */
                if (m >= s1 + 3) break;
                float *xa = xw[r % 3], *xb = xw[(r + 1) % 3], *xc = xw[(r + 2) % 3];
                float *da = dzw[r % 3], *db = dzw[(r + 1) % 3], *dc = dzw[(r + 2) % 3];
                float x[CPL], dz[CPL], u[CPL], s[CPL], ss = 0.0f, uy = 0.0f;
#pragma unroll
                for (int k = 0; k < CPL; k++) { x[k] = qx[r % QD].get(k); dz[k] = qd[r % QD].get(k); /* dy for now */ }
                if (m + QD < s2) { /* refill */
                    qx[r % QD].load(xq, full, nvalid);
                    qd[r % QD].load(dq, full, nvalid);
                }
                xq += C;
                dq += dys;
#pragma unroll
                for (int k = 0; k < CPL; k++) {
                    float z = w4[k][0] * xa[k] + w4[k][1] * xb[k] + w4[k][2] * xc[k] + w4[k][3] * x[k];
                    s[k] = sigmoid_f(z);
                    u[k] = z * s[k];
                    ss += u[k] * u[k];
                    uy += u[k] * dz[k];
                }
                /* y = u inv; du = inv (dy - y (y.dy)) = inv dy - inv^3 u (u.dy); unnormalised: du = dy.
                 * dz = du silu'(z), silu'(z) = s (1 + z (1 - s)) = s + u (1 - s). Rows past the
                 * sequence (m >= s2, which is then its end) have dz = 0. */
                if (wnorm) group_sum2<HL>(ss, uy);
                float a = 1.0f, b = 0.0f;
                if (norm) {
                    a = rsqrtf(ss + eps);
                    b = a * a * a * uy;
                }
                bool live = m < s2;
#pragma unroll
                for (int k = 0; k < CPL; k++)
                    dz[k] = live ? (a * dz[k] - b * u[k]) * (s[k] + u[k] * (1.0f - s[k])) : 0.0f;
                if (m < s1) {
#pragma unroll
                    for (int k = 0; k < CPL; k++) {
                        dw[k][0] += dz[k] * xa[k];
                        dw[k][1] += dz[k] * xb[k];
                        dw[k][2] += dz[k] * xc[k];
                        dw[k][3] += dz[k] * x[k];
                    }
                }
                if (m - 3 >= s0) {
                    /* dx[m-3] = w0 dz[m] + w1 dz[m-1] + w2 dz[m-2] + w3 dz[m-3] */
                    float dx[CPL];
#pragma unroll
                    for (int k = 0; k < CPL; k++)
                        dx[k] = w4[k][0] * dz[k] + w4[k][1] * dc[k] + w4[k][2] * db[k] + w4[k][3] * da[k];
                    conv_store<floatX, CPL>(dxr, dx, full, nvalid);
                    dxr += C;
                }
#pragma unroll
                for (int k = 0; k < CPL; k++) { xa[k] = x[k]; da[k] = dz[k]; } /* row m replaces row m-3 */
            }
        }
        s0 = s1;
    }
    /* the block's partial: its warps' dw summed in warp order */
#pragma unroll
    for (int k = 0; k < CPL; k++)
#pragma unroll
        for (int j = 0; j < 4; j++) sdw[warp][k * 4 + j][lane] = dw[k][j];
    __syncthreads();
    float *dst = partial + (size_t)blockIdx.y * C * 4 + (size_t)g0 * 4;
    for (int e = threadIdx.x; e < 32 * CPL * 4; e += blockDim.x) { /* e = (channel - g0)*4 + tap */
        if (g0 * 4 + e >= C * 4) break;
        int cl = e / 4, kj = (cl % CPL) * 4 + e % 4, l = cl / CPL;
        float sum = 0.0f;
#pragma unroll
        for (int wi = 0; wi < CONV_WARPS; wi++) sum += sdw[wi][kj][l];
        dst[e] = sum;
    }
}

/* dw[m] += sum_{p < P} partial[p*M + m], m < M: 8 warps each sum every 8th partial row in order,
 * then the 8 sums are added in warp order (deterministic). Block = 32 columns. */
__global__ void __launch_bounds__(256) conv_dw_colsum_kernel(float *dw, const float *partial, int P, int M) {
    __shared__ float s[8][32];
    int lane = threadIdx.x % 32, wi = threadIdx.x / 32, m = blockIdx.x * 32 + lane;
    float acc = 0.0f;
    if (m < M) {
#pragma unroll 4
        for (int p = wi; p < P; p += 8) acc += partial[(size_t)p * M + m];
    }
    s[wi][lane] = acc;
    __syncthreads();
    if (wi == 0 && m < M) {
        float t = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) t += s[i][lane];
        dw[m] += t;
    }
}

/* Channels per lane and lanes per head for floatX and an access width of V elements: V channels and
 * K/V lanes per head when that is a power of two <= 32, else K/32 channels per lane and one head per
 * warp. Checks K and the plane. */
struct ConvShape { int cpl, hl; };
inline ConvShape conv_shape(int C, int C_norm, int K, int plane, int V) {
    if (C_norm > 0 && (K % 32 != 0 || K > 256 || K < 32 || C_norm % K != 0)) {
        fprintf(stderr, "conv_silu_l2norm: head_dim K=%d must be a multiple of 32 in [32, 256] dividing C_norm=%d\n",
                K, C_norm);
        exit(EXIT_FAILURE);
    }
    ConvShape s = {V, 32};
    if (C_norm > 0) {
        int hl = K / V;
        if (hl <= 32 && (hl & (hl - 1)) == 0) s.hl = hl;
        else s = {K / 32, 32};
    }
    if (plane > 0 && (C % plane != 0 || plane % s.cpl != 0 || (C_norm > 0 && plane % K != 0))) {
        fprintf(stderr, "conv_silu_l2norm: plane=%d must divide C=%d and be a multiple of K=%d and of %d\n", plane, C,
                K, s.cpl);
        exit(EXIT_FAILURE);
    }
    return s;
}

struct ConvDev { int sms, threads_per_sm; };
inline ConvDev conv_dev() {
    static ConvDev d = {0, 0};
    if (d.sms == 0) {
        int dev;
        cudaCheck(cudaGetDevice(&dev));
        cudaCheck(cudaDeviceGetAttribute(&d.threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, dev));
        cudaCheck(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
    }
    return d;
}
/* Most blocks per channel group any launch uses (sizes the dw scratch): at least CONV_MIN_ROWS rows
 * per warp, at most one wave of the widest groups (G <= 256 channels). */
inline int conv_nby_cap(int N, int C) {
    ConvDev d = conv_dev();
    int wave = d.sms * (d.threads_per_sm / (32 * CONV_WARPS)) / ceil_div(C, 256);
    return max(1, min(ceil_div(N, CONV_WARPS * CONV_MIN_ROWS), wave));
}
/* Blocks per channel group: one resident wave (blocks_per_sm from the kernel's occupancy). */
inline int conv_nby(int N, int C, int ngroups, int blocks_per_sm) {
    return max(1, min(conv_nby_cap(N, C), conv_dev().sms * blocks_per_sm / ngroups));
}
template <typename Kern> inline int conv_occupancy(Kern kernel) {
    int nb = 0;
    cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, kernel, CONV_WARPS * 32, 0));
    return max(nb, 1);
}

/* launchers, instantiated per (CPL, HL, FULL) by conv_dispatch */
template <typename floatX> struct ConvFwdLaunch {
    floatX *out; const floatX *inp; const float *w;
    int N, T, C, C_norm, plane; float eps; bool vec; cudaStream_t stream;
    template <int CPL, int HL, bool FULL> void go() const {
        static int bps = conv_occupancy(conv_silu_l2norm_forward_kernel<floatX, CPL, HL, FULL>);
        int ngroups = ceil_div(C, 32 * CPL);
        dim3 grid(ngroups, conv_nby(N, C, ngroups, bps));
        conv_silu_l2norm_forward_kernel<floatX, CPL, HL, FULL><<<grid, CONV_WARPS * 32, 0, stream>>>(
            out, inp, w, N, T, C, C_norm, plane, eps, vec);
        cudaCheckLaunch();
    }
};
template <typename floatX> struct ConvBwdLaunch {
    floatX *dinp; float *dw, *scratch; const floatX *dout, *inp; const float *w;
    int N, T, C, C_norm, plane; float eps; bool vec; cudaStream_t stream;
    template <int CPL, int HL, bool FULL> void go() const {
        static int bps = conv_occupancy(conv_silu_l2norm_backward_kernel<floatX, CPL, HL, FULL>);
        int ngroups = ceil_div(C, 32 * CPL), nby = conv_nby(N, C, ngroups, bps);
        conv_silu_l2norm_backward_kernel<floatX, CPL, HL, FULL><<<dim3(ngroups, nby), CONV_WARPS * 32, 0, stream>>>(
            dinp, scratch, dout, inp, w, N, T, C, C_norm, plane, eps, vec);
        cudaCheckLaunch();
        conv_dw_colsum_kernel<<<ceil_div(C * 4, 32), 256, 0, stream>>>(dw, scratch, nby, C * 4);
        cudaCheckLaunch();
    }
};
/* V channels per lane (heads of 4..32 lanes, or none), FULL when every lane's channels lie below C
 * and the vector path holds (no per-lane checks in the loops); else K/32 channels per lane. */
template <int V, typename L> inline void conv_dispatch(ConvShape s, bool vec, int C, const L &l) {
    if (s.cpl == V) {
        if (vec && C % (32 * V) == 0) {
            switch (s.hl) {
            case 4: l.template go<V, 4, true>(); break;
            case 8: l.template go<V, 8, true>(); break;
            case 16: l.template go<V, 16, true>(); break;
            default: l.template go<V, 32, true>(); break;
            }
        } else {
            switch (s.hl) {
            case 4: l.template go<V, 4, false>(); break;
            case 8: l.template go<V, 8, false>(); break;
            case 16: l.template go<V, 16, false>(); break;
            default: l.template go<V, 32, false>(); break;
            }
        }
        return;
    }
    switch (s.cpl) {
    case 1: l.template go<1, 32, false>(); break;
    case 2: l.template go<2, 32, false>(); break;
    case 3: l.template go<3, 32, false>(); break;
    case 4: l.template go<4, 32, false>(); break;
    case 5: l.template go<5, 32, false>(); break;
    case 6: l.template go<6, 32, false>(); break;
    case 7: l.template go<7, 32, false>(); break;
    default: l.template go<8, 32, false>(); break;
    }
}
/* the vector paths: 16-byte aligned pointers and rows of a whole number of vectors */
template <typename floatX>
inline bool conv_vec_ok(ConvShape s, int C, const void *a, const void *b, const void *c = nullptr) {
    int pw = 1;
    while (pw * 2 <= s.cpl && s.cpl % (pw * 2) == 0 && pw * 2 * (int)sizeof(floatX) <= 16) pw *= 2;
    return al16(a, b, c) && C % pw == 0;
}

// ----------------------------------------------------------------------------
// elementwise: sigmoid, SwiGLU

template <typename Tout, typename Tin>
__global__ void sigmoid_forward_kernel(Tout *out, const Tin *inp, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f<Tout>(sigmoid_f(to_f<Tin>(inp[i])));
}
template <typename Tdinp, typename Tdout, typename Tout>
__global__ void sigmoid_backward_kernel(Tdinp *dinp, const Tdout *dout, const Tout *out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float y = to_f<Tout>(out[i]);
        dinp[i] = from_f<Tdinp>(to_f<Tdout>(dout[i]) * y * (1.0f - y));
    }
}

template <typename floatX, int VEC>
__global__ void swiglu_forward_kernel(floatX *out, const floatX *gu, int N, int I) {
    int nv = I / VEC;
    long e = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long)N * nv) return;
    int n = (int)(e / nv), j = (int)(e % nv) * VEC;
    float a[VEC], u[VEC], y[VEC];
    load_f<floatX, VEC>(a, gu + (size_t)n * 2 * I + j);
    load_f<floatX, VEC>(u, gu + (size_t)n * 2 * I + I + j);
#pragma unroll
    for (int k = 0; k < VEC; k++) y[k] = silu_f(a[k]) * u[k];
    store_f<floatX, VEC>(out + (size_t)n * I + j, y);
}
/* y (optional, may alias dout): the forward output silu(a) u again, so the backward needs no
 * separate recompute pass for the down projection's weight gradient. */
template <typename floatX, int VEC>
__global__ void swiglu_backward_kernel(floatX *dgu, floatX *y, const floatX *dout, const floatX *gu, int N, int I) {
    int nv = I / VEC;
    long e = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long)N * nv) return;
    int n = (int)(e / nv), j = (int)(e % nv) * VEC;
    float a[VEC], u[VEC], dy[VEC], da[VEC], du[VEC], yy[VEC];
    load_f<floatX, VEC>(a, gu + (size_t)n * 2 * I + j);
    load_f<floatX, VEC>(u, gu + (size_t)n * 2 * I + I + j);
    load_f<floatX, VEC>(dy, dout + (size_t)n * I + j);
#pragma unroll
    for (int k = 0; k < VEC; k++) {
        float s = sigmoid_f(a[k]);
        da[k] = dy[k] * u[k] * dsilu_from(a[k], s);
        du[k] = dy[k] * a[k] * s;
        yy[k] = a[k] * s * u[k];
    }
    store_f<floatX, VEC>(dgu + (size_t)n * 2 * I + j, da);
    store_f<floatX, VEC>(dgu + (size_t)n * 2 * I + I + j, du);
    if (y) store_f<floatX, VEC>(y + (size_t)n * I + j, yy);
}

// ----------------------------------------------------------------------------
// softmax cross-entropy: one block per row, online (max, sum) in one pass, gradient in a second.

#define XENT_THREADS 512

__device__ __forceinline__ void lse_combine(float &m, float &s, float m2, float s2) {
    float mm = fmaxf(m, m2);
    if (mm == -INFINITY) return;
    s = s * __expf(m - mm) + s2 * __expf(m2 - mm);
    m = mm;
}

template <typename floatX, int VEC, bool BACKWARD>
__global__ void __launch_bounds__(XENT_THREADS)
crossentropy_kernel(floatX *logits, float *losses, const int *targets, float gscale, int V, int Vp) {
    __shared__ float sm[32], ss[32];
    int row = blockIdx.x;
    floatX *z = logits + (size_t)row * Vp;
    float m = -INFINITY, s = 0.0f;
    int nv = Vp / VEC;
    for (int j = threadIdx.x; j < nv; j += XENT_THREADS) {
        float x[VEC];
        load_f<floatX, VEC>(x, z + (size_t)j * VEC);
        float lm = -INFINITY;
#pragma unroll
        for (int k = 0; k < VEC; k++) if (j * VEC + k < V) lm = fmaxf(lm, x[k]);
        if (lm == -INFINITY) continue;
        float ls = 0.0f;
#pragma unroll
        for (int k = 0; k < VEC; k++) if (j * VEC + k < V) ls += __expf(x[k] - lm);
        lse_combine(m, s, lm, ls);
    }
    /* block combine of (m, s) */
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_combine(m, s, m2, s2);
    }
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) { sm[warp] = m; ss[warp] = s; }
    __syncthreads();
    m = lane < XENT_THREADS / 32 ? sm[lane] : -INFINITY;
    s = lane < XENT_THREADS / 32 ? ss[lane] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_combine(m, s, m2, s2);
    }
    float lse = m + __logf(s);
    int tgt = targets[row];
    if (threadIdx.x == 0) losses[row] = lse - to_f<floatX>(z[tgt]);
    if constexpr (BACKWARD) {
        __syncthreads(); /* z[tgt] read before anyone overwrites it */
        for (int j = threadIdx.x; j < nv; j += XENT_THREADS) {
            float x[VEC];
            load_f<floatX, VEC>(x, z + (size_t)j * VEC);
#pragma unroll
            for (int k = 0; k < VEC; k++) {
                int col = j * VEC + k;
                x[k] = col < V ? gscale * (__expf(x[k] - lse) - (col == tgt ? 1.0f : 0.0f)) : 0.0f;
            }
            store_f<floatX, VEC>(z + (size_t)j * VEC, x);
        }
    }
}

/* The same with the row held in registers (IT packs of VEC per thread, XENT_RT threads): one read
 * of the logits and one write of the gradient, instead of two reads. */
#define XENT_RT 1024
__device__ __forceinline__ float block_max(float v, float *shm32) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shm32[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? shm32[lane] : -INFINITY;
    return warp_max(v);
}

template <typename floatX, int VEC, int IT, bool BACKWARD>
__global__ void __launch_bounds__(XENT_RT)
crossentropy_reg_kernel(floatX *logits, float *losses, const int *targets, float gscale, int V, int Vp) {
    __shared__ float shm[32];
    int row = blockIdx.x;
    floatX *z = logits + (size_t)row * Vp;
    int nv = Vp / VEC, tgt = targets[row];
    float ztgt = threadIdx.x == 0 ? to_f<floatX>(z[tgt]) : 0.0f;
    Pack<floatX, VEC> pk[IT];
#pragma unroll
    for (int it = 0; it < IT; it++) {
        int j = it * XENT_RT + threadIdx.x;
        if (j < nv) pk[it] = reinterpret_cast<const Pack<floatX, VEC> *>(z)[j];
    }
    float m = -INFINITY;
#pragma unroll
    for (int it = 0; it < IT; it++) {
        int j = it * XENT_RT + threadIdx.x;
        if (j < nv)
#pragma unroll
            for (int k = 0; k < VEC; k++) if (j * VEC + k < V) m = fmaxf(m, to_f<floatX>(pk[it].v[k]));
    }
    m = block_max(m, shm);
    float sum = 0.0f;
#pragma unroll
    for (int it = 0; it < IT; it++) {
        int j = it * XENT_RT + threadIdx.x;
        if (j < nv)
#pragma unroll
            for (int k = 0; k < VEC; k++) if (j * VEC + k < V) sum += __expf(to_f<floatX>(pk[it].v[k]) - m);
    }
    sum = block_sum(sum, shm);
    float lse = m + __logf(sum);
    if (threadIdx.x == 0) losses[row] = lse - ztgt;
    if constexpr (BACKWARD) {
#pragma unroll
        for (int it = 0; it < IT; it++) {
            int j = it * XENT_RT + threadIdx.x;
            if (j < nv) {
                float x[VEC];
#pragma unroll
                for (int k = 0; k < VEC; k++) {
                    int col = j * VEC + k;
                    x[k] = col < V ? gscale * (__expf(to_f<floatX>(pk[it].v[k]) - lse) - (col == tgt ? 1.0f : 0.0f)) : 0.0f;
                }
                store_f<floatX, VEC>(z + (size_t)j * VEC, x);
            }
        }
    }
}

/* Forward + backward: the register-row kernel when the row fits (IT <= 7 packs per thread: Vp <=
 * 57344 in bf16), else the two-pass one. Forward only: the streaming one-pass kernel. */
template <typename floatX, bool BACKWARD>
inline void crossentropy_launch(floatX *logits, float *losses, const int *targets, float gs, int N, int V, int Vp,
                                cudaStream_t stream) {
    const int VEC = vec16<floatX>();
    if (!BACKWARD && Vp % VEC == 0 && al16(logits)) {
        /* forward only: the streaming kernel reads each logit once too, and keeps more loads in
         * flight (measured on H100, d12: 1.09 ms vs 1.35 ms for the register-row kernel) */
        crossentropy_kernel<floatX, VEC, false><<<N, XENT_THREADS, 0, stream>>>(logits, losses, targets, gs, V, Vp);
    } else if (Vp % VEC == 0 && al16(logits)) {
        int need = ceil_div(Vp / VEC, XENT_RT);
        if (need <= 2) crossentropy_reg_kernel<floatX, VEC, 2, BACKWARD><<<N, XENT_RT, 0, stream>>>(logits, losses, targets, gs, V, Vp);
        else if (need <= 4) crossentropy_reg_kernel<floatX, VEC, 4, BACKWARD><<<N, XENT_RT, 0, stream>>>(logits, losses, targets, gs, V, Vp);
        else if (need <= 7) crossentropy_reg_kernel<floatX, VEC, 7, BACKWARD><<<N, XENT_RT, 0, stream>>>(logits, losses, targets, gs, V, Vp);
        else crossentropy_kernel<floatX, VEC, BACKWARD><<<N, XENT_THREADS, 0, stream>>>(logits, losses, targets, gs, V, Vp);
    } else {
        crossentropy_kernel<floatX, 1, BACKWARD><<<N, XENT_THREADS, 0, stream>>>(logits, losses, targets, gs, V, Vp);
    }
    cudaCheckLaunch();
}

__global__ void sum_float_kernel(float *out, const float *inp, int n, float scale, int accumulate) {
    __shared__ float shm[32];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += inp[i];
    acc = block_sum(acc, shm);
    if (threadIdx.x == 0) *out = accumulate ? *out + scale * acc : scale * acc;
}

// ----------------------------------------------------------------------------
// kernel launchers

template <typename floatX>
void embedding_forward(floatX *out, const int *tokens, const floatX *wte, int N, int D, cudaStream_t stream) {
    if (N <= 0) return;
    if (D % vec16<floatX>() == 0 && al16(out, wte)) {
        long n = (long)N * (D / vec16<floatX>());
        embedding_forward_kernel<floatX, vec16<floatX>()><<<ceil_div(n, 256), 256, 0, stream>>>(out, tokens, wte, N, D);
    } else {
        embedding_forward_kernel<floatX, 1><<<ceil_div((long)N * D, 256), 256, 0, stream>>>(out, tokens, wte, N, D);
    }
    cudaCheckLaunch();
}

template <typename floatX>
void embedding_backward(float *dwte, void *scratch, const floatX *dout, const int *tokens, int N, int D, int Vp,
                        cudaStream_t stream) {
    if (N <= 0) return;
    int nch = ceil_div(N, EMB_CHUNK);
    char *p = (char *)scratch;
    int *idx_in = (int *)p;   p += align256((size_t)N * sizeof(int));
    int *keys = (int *)p;     p += align256((size_t)N * sizeof(int));
    int *idx = (int *)p;      p += align256((size_t)N * sizeof(int));
    float *head = (float *)p; p += align256((size_t)nch * D * sizeof(float));
    float *tail = (float *)p; p += align256((size_t)nch * D * sizeof(float));
    size_t temp = emb_cub_temp_bytes(N, Vp);
    iota_kernel<<<ceil_div(N, 256), 256, 0, stream>>>(idx_in, N);
    cudaCheckLaunch();
    cudaCheck(cub::DeviceRadixSort::SortPairs((void *)p, temp, tokens, keys, idx_in, idx, N, 0, emb_key_bits(Vp), stream));
    int threads = D >= 256 ? 256 : 32 * ceil_div(D, 32);
    embedding_backward_chunk_kernel<floatX><<<nch, threads, 0, stream>>>(dwte, head, tail, dout, keys, idx, N, D);
    cudaCheckLaunch();
    embedding_backward_join_kernel<<<nch, threads, 0, stream>>>(dwte, head, tail, keys, N, D, nch);
    cudaCheckLaunch();
}

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

template <typename floatX>
void conv_silu_l2norm_forward(floatX *out, const floatX *inp, const float *w, int B, int T, int C, int C_norm,
                              int K, float eps_l2, cudaStream_t stream, int plane) {
    if (B <= 0 || T <= 0) return;
    assert(C_norm <= C);
    constexpr int V = CONV_FWD_BYTES / sizeof(floatX);
    ConvShape s = conv_shape(C, C_norm, K, plane, V);
    bool vec = conv_vec_ok<floatX>(s, C, out, inp);
    ConvFwdLaunch<floatX> l{out, inp, w, B * T, T, C, C_norm, plane, eps_l2, vec, stream};
    conv_dispatch<V>(s, vec, C, l);
}

inline size_t conv_silu_l2norm_backward_scratch_floats(int B, int T, int C, int K) {
    (void)K;
    return (size_t)conv_nby_cap(B * T, C) * C * 4;
}

template <typename floatX>
void conv_silu_l2norm_backward(floatX *dinp, float *dw, float *scratch, const floatX *dout, const floatX *inp,
                               const float *w, int B, int T, int C, int C_norm, int K, float eps_l2,
                               cudaStream_t stream, int plane) {
    if (B <= 0 || T <= 0) return;
    assert(C_norm <= C);
    constexpr int V = CONV_BWD_BYTES / sizeof(floatX);
    ConvShape s = conv_shape(C, C_norm, K, plane, V);
    bool vec = conv_vec_ok<floatX>(s, C, dinp, dout, inp);
    ConvBwdLaunch<floatX> l{dinp, dw, scratch, dout, inp, w, B * T, T, C, C_norm, plane, eps_l2, vec, stream};
    conv_dispatch<V>(s, vec, C, l);
}

template <typename Tout, typename Tin>
void sigmoid_forward(Tout *out, const Tin *inp, int count, cudaStream_t stream) {
    if (count <= 0) return;
    sigmoid_forward_kernel<Tout, Tin><<<ceil_div(count, 256), 256, 0, stream>>>(out, inp, count);
    cudaCheckLaunch();
}

template <typename Tdinp, typename Tdout, typename Tout>
void sigmoid_backward(Tdinp *dinp, const Tdout *dout, const Tout *out, int count, cudaStream_t stream) {
    if (count <= 0) return;
    sigmoid_backward_kernel<Tdinp, Tdout, Tout><<<ceil_div(count, 256), 256, 0, stream>>>(dinp, dout, out, count);
    cudaCheckLaunch();
}

template <typename floatX>
void swiglu_forward(floatX *out, const floatX *gu, int N, int I, cudaStream_t stream) {
    if (N <= 0) return;
    const int V = vec16<floatX>();
    if (I % V == 0 && al16(out, gu)) swiglu_forward_kernel<floatX, V><<<ceil_div((long)N * (I / V), 256), 256, 0, stream>>>(out, gu, N, I);
    else swiglu_forward_kernel<floatX, 1><<<ceil_div((long)N * I, 256), 256, 0, stream>>>(out, gu, N, I);
    cudaCheckLaunch();
}

template <typename floatX>
void swiglu_backward(floatX *dgu, const floatX *dout, const floatX *gu, int N, int I, cudaStream_t stream, floatX *y) {
    if (N <= 0) return;
    const int V = vec16<floatX>();
    if (I % V == 0 && al16(dgu, dout, gu) && (!y || al16(y)))
        swiglu_backward_kernel<floatX, V><<<ceil_div((long)N * (I / V), 256), 256, 0, stream>>>(dgu, y, dout, gu, N, I);
    else swiglu_backward_kernel<floatX, 1><<<ceil_div((long)N * I, 256), 256, 0, stream>>>(dgu, y, dout, gu, N, I);
    cudaCheckLaunch();
}

template <typename floatX>
void crossentropy_forward_backward(floatX *logits, float *losses, const int *targets, float dloss, int N, int V,
                                   int Vp, cudaStream_t stream) {
    if (N <= 0) return;
    crossentropy_launch<floatX, true>(logits, losses, targets, dloss / (float)N, N, V, Vp, stream);
}

template <typename floatX>
void crossentropy_forward(float *losses, const floatX *logits, const int *targets, int N, int V, int Vp,
                          cudaStream_t stream) {
    if (N <= 0) return;
    /* not written: BACKWARD = false */
    crossentropy_launch<floatX, false>(const_cast<floatX *>(logits), losses, targets, 0.0f, N, V, Vp, stream);
}

inline void sum_float(float *out, const float *inp, int n, float scale, int accumulate, cudaStream_t stream) {
    sum_float_kernel<<<1, 1024, 0, stream>>>(out, inp, n, scale, accumulate);
    cudaCheckLaunch();
}
