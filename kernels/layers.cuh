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
 *     are adjacent in the parameter table; the fused [3D,D] projection of matmul.cuh writes such rows).
 *   - SwiGLU: ONE buffer [N,2I], each row gate|up (the fused [2I,D] gate/up projection).
 * Alignment: none required for correctness (any C, odd ones included); the 16-byte vector paths
 * are taken when the row length is a multiple of 16/sizeof(floatX) elements and the pointers are
 * 16-byte aligned (checked at launch). Limits (checked, exit with a message): RMSNorm rows up to
 * C = 16*32*VEC (bf16: 4096; fp32: 2048; odd C: 512); the fused conv needs K % 32 == 0 and
 * K <= 256 for the normalised channels. Embedding tokens must lie in [0, Vp).
 * Speed on H100 at d12 sizes (tests/gpu/bench_kernels.cu): swiglu, adamw, embedding fwd ~95% of
 * the copy bandwidth, rmsnorm fwd 75-85%, rmsnorm bwd 55-70%, conv fwd 63%, conv bwd 29% (the weak
 * spot), cross-entropy fwd+bwd 79%.
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
 * C_norm = 0 (K is then only the channel-group width, pass 128). */
template <typename floatX>
void conv_silu_l2norm_forward(floatX *out, const floatX *inp, const float *w, int B, int T, int C, int C_norm,
                              int K, float eps_l2, cudaStream_t stream);
inline size_t conv_silu_l2norm_backward_scratch_floats(int B, int T, int C, int K);
/* dinp (=) [B,T,C], dw (fp32 [C,4]) += ; recomputes the forward from inp. */
template <typename floatX>
void conv_silu_l2norm_backward(floatX *dinp, float *dw, float *scratch, const floatX *dout, const floatX *inp,
                               const float *w, int B, int T, int C, int C_norm, int K, float eps_l2,
                               cudaStream_t stream);

/* ---- sigmoid (DeltaNet's beta = sigmoid(x W_b)) ---- */
/* out[n] = sigmoid(inp[n]), n < count. Types may differ (e.g. float beta from floatX logits);
 * out may alias inp when the types match. */
template <typename Tout, typename Tin>
void sigmoid_forward(Tout *out, const Tin *inp, int count, cudaStream_t stream);
/* dinp = dout * out * (1 - out) (=). dinp may alias dout when the types match. */
template <typename Tdinp, typename Tdout, typename Tout>
void sigmoid_backward(Tdinp *dinp, const Tdout *dout, const Tout *out, int count, cudaStream_t stream);

/* ---- beta: DeltaNet's sigmoid(x W_b^T) with few heads, projection and sigmoid fused ---- */
/* beta [N,H] = sigmoid(x [N,C] w^T), w floatX [H,C], H <= 16. */
template <typename floatX>
void beta_forward(floatX *beta, const floatX *x, const floatX *w, int N, int C, int H, cudaStream_t stream);
/* Scratch floats beta_backward needs (per-block partial dW). */
inline size_t beta_backward_scratch_floats(int N, int C, int H);
/* From dbeta [N,H] and the forward's beta: g = dbeta beta (1 - beta); dx [N,C] = g w (+= with
 * accumulate), dw (fp32 [H,C]) += g^T x (deterministic). */
template <typename floatX>
void beta_backward(floatX *dx, float *dw, float *scratch, const floatX *dbeta, const floatX *beta, const floatX *x,
                   const floatX *w, int N, int C, int H, int accumulate, cudaStream_t stream);

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
// causal conv (kernel 4) + SiLU + per-head L2 norm. Block = CONV_WARPS warps on one group of
// G = 32*CPL channels (lane owns CPL adjacent channels) and CONV_WARPS consecutive time tiles of
// CONV_TT rows of one sequence; each warp walks its tile in time order, CONV_R rows at a time (their
// loads in flight together, their warp sums interleaved), keeping the last 3 rows in registers;
// the L2 norm of a head is a warp sum. The backward recomputes the forward and walks 3 rows past
// its tile (dx[t] needs dz[t..t+3]).

#define CONV_WARPS 4
#define CONV_TT 32
#define CONV_R 4

/* CPL adjacent channels of one row: one access of CPL*sizeof(floatX) bytes when that is 2..16 bytes,
 * a power of two, and the row is aligned (vec_ok); else element by element, masked at C. */
template <typename floatX, int CPL> struct ConvVec {
    static constexpr bool ok = (CPL == 1 || CPL == 2 || CPL == 4 || CPL == 8) && CPL * sizeof(floatX) <= 16;
    static constexpr int W = ok ? CPL : 1;
};
template <typename floatX, int CPL>
__device__ __forceinline__ void conv_load(float (&dst)[CPL], const floatX *p, int c, int C, bool vec_ok) {
    if (ConvVec<floatX, CPL>::ok && vec_ok && c + CPL <= C) {
        load_f<floatX, ConvVec<floatX, CPL>::W>(*reinterpret_cast<float(*)[ConvVec<floatX, CPL>::W]>(&dst), p);
    } else {
#pragma unroll
        for (int k = 0; k < CPL; k++) dst[k] = (c + k < C) ? to_f<floatX>(p[k]) : 0.0f;
    }
}
template <typename floatX, int CPL>
__device__ __forceinline__ void conv_store(floatX *p, const float (&src)[CPL], int c, int C, bool vec_ok) {
    if (ConvVec<floatX, CPL>::ok && vec_ok && c + CPL <= C) {
        store_f<floatX, ConvVec<floatX, CPL>::W>(p, *reinterpret_cast<const float(*)[ConvVec<floatX, CPL>::W]>(&src));
    } else {
#pragma unroll
        for (int k = 0; k < CPL; k++) if (c + k < C) p[k] = from_f<floatX>(src[k]);
    }
}

template <typename floatX, int CPL>
__global__ void __launch_bounds__(CONV_WARPS * 32)
conv_silu_l2norm_forward_kernel(floatX *out, const floatX *inp, const float *w, int T, int C, int C_norm, float eps,
                                int ntb, bool aligned) {
    const int G = 32 * CPL, R = CONV_R;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int b = blockIdx.y / ntb, tb = blockIdx.y % ntb;
    int t0 = (tb * CONV_WARPS + warp) * CONV_TT;
    if (t0 >= T) return; /* whole warp */
    int g0 = blockIdx.x * G, c = g0 + lane * CPL;
    bool norm = g0 < C_norm;
    bool vec_ok = aligned && (C % CPL) == 0;
    float w4[CPL][4];
#pragma unroll
    for (int k = 0; k < CPL; k++)
#pragma unroll
        for (int j = 0; j < 4; j++) w4[k][j] = (c + k < C) ? w[(size_t)(c + k) * 4 + j] : 0.0f;
    const floatX *x0 = inp + (size_t)b * T * C + c;
    floatX *y0 = out + (size_t)b * T * C + c;
    /* xw[0..2]: inputs of the 3 rows before the batch; xw[3 + r]: batch row r */
    float xw[3 + R][CPL];
#pragma unroll
    for (int j = 0; j < 3; j++) {
#pragma unroll
        for (int k = 0; k < CPL; k++) xw[j][k] = 0.0f;
        if (t0 - 3 + j >= 0) conv_load<floatX, CPL>(xw[j], x0 + (size_t)(t0 - 3 + j) * C, c, C, vec_ok);
    }
    int t1 = min(t0 + CONV_TT, T);
    for (int tb0 = t0; tb0 < t1; tb0 += R) {
#pragma unroll
        for (int r = 0; r < R; r++) {
#pragma unroll
            for (int k = 0; k < CPL; k++) xw[3 + r][k] = 0.0f;
            if (tb0 + r < t1) conv_load<floatX, CPL>(xw[3 + r], x0 + (size_t)(tb0 + r) * C, c, C, vec_ok);
        }
        float u[R][CPL], ss[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            ss[r] = 0.0f;
#pragma unroll
            for (int k = 0; k < CPL; k++) {
                float z = w4[k][0] * xw[r][k] + w4[k][1] * xw[r + 1][k] + w4[k][2] * xw[r + 2][k] + w4[k][3] * xw[r + 3][k];
                u[r][k] = silu_f(z);
                ss[r] += u[r][k] * u[r][k];
            }
        }
        if (norm) {
#pragma unroll
            for (int o = 16; o > 0; o >>= 1)
#pragma unroll
                for (int r = 0; r < R; r++) ss[r] += __shfl_xor_sync(0xffffffffu, ss[r], o);
#pragma unroll
            for (int r = 0; r < R; r++) {
                float inv = rsqrtf(ss[r] + eps);
#pragma unroll
                for (int k = 0; k < CPL; k++) u[r][k] *= inv;
            }
        }
#pragma unroll
        for (int r = 0; r < R; r++)
            if (tb0 + r < t1) conv_store<floatX, CPL>(y0 + (size_t)(tb0 + r) * C, u[r], c, C, vec_ok);
#pragma unroll
        for (int j = 0; j < 3; j++)
#pragma unroll
            for (int k = 0; k < CPL; k++) xw[j][k] = xw[R + j][k];
    }
}

template <typename floatX, int CPL>
__global__ void __launch_bounds__(CONV_WARPS * 32)
conv_silu_l2norm_backward_kernel(floatX *dinp, float *partial, const floatX *dout, const floatX *inp, const float *w,
                                 int T, int C, int C_norm, float eps, int ntb, bool aligned) {
    const int G = 32 * CPL, R = CONV_R;
    __shared__ float sdw[CONV_WARPS][G * 4];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int b = blockIdx.y / ntb, tb = blockIdx.y % ntb;
    int t0 = (tb * CONV_WARPS + warp) * CONV_TT;
    int g0 = blockIdx.x * G, c = g0 + lane * CPL;
    bool norm = g0 < C_norm;
    bool vec_ok = aligned && (C % CPL) == 0;
    float dw[CPL][4];
#pragma unroll
    for (int k = 0; k < CPL; k++)
#pragma unroll
        for (int j = 0; j < 4; j++) dw[k][j] = 0.0f;
    if (t0 < T) {
        float w4[CPL][4];
#pragma unroll
        for (int k = 0; k < CPL; k++)
#pragma unroll
            for (int j = 0; j < 4; j++) w4[k][j] = (c + k < C) ? w[(size_t)(c + k) * 4 + j] : 0.0f;
        const floatX *x0 = inp + (size_t)b * T * C + c;
        const floatX *dy0 = dout + (size_t)b * T * C + c;
        floatX *dx0 = dinp + (size_t)b * T * C + c;
        /* xw / dzw: [0..2] the 3 rows before the batch, [3 + r] batch row r */
        float xw[3 + R][CPL], dzw[3 + R][CPL];
#pragma unroll
        for (int j = 0; j < 3; j++) {
#pragma unroll
            for (int k = 0; k < CPL; k++) { xw[j][k] = 0.0f; dzw[j][k] = 0.0f; }
            if (t0 - 3 + j >= 0) conv_load<floatX, CPL>(xw[j], x0 + (size_t)(t0 - 3 + j) * C, c, C, vec_ok);
        }
        int t1 = min(t0 + CONV_TT, T); /* rows of dinp this warp writes: [t0, t1) */
        int t2 = min(t1 + 3, T);       /* dz needed for rows [t0, t2) */
        for (int tb0 = t0; tb0 < t1 + 3; tb0 += R) {
#pragma unroll
            for (int r = 0; r < R; r++) {
#pragma unroll
                for (int k = 0; k < CPL; k++) { xw[3 + r][k] = 0.0f; dzw[3 + r][k] = 0.0f; }
                if (tb0 + r < t2) {
                    conv_load<floatX, CPL>(xw[3 + r], x0 + (size_t)(tb0 + r) * C, c, C, vec_ok);
                    conv_load<floatX, CPL>(dzw[3 + r], dy0 + (size_t)(tb0 + r) * C, c, C, vec_ok); /* dy for now */
                }
            }
            float z[R][CPL], s[R][CPL], ss[R], uy[R];
#pragma unroll
            for (int r = 0; r < R; r++) {
                ss[r] = 0.0f; uy[r] = 0.0f;
#pragma unroll
                for (int k = 0; k < CPL; k++) {
                    z[r][k] = w4[k][0] * xw[r][k] + w4[k][1] * xw[r + 1][k] + w4[k][2] * xw[r + 2][k] + w4[k][3] * xw[r + 3][k];
                    s[r][k] = sigmoid_f(z[r][k]);
                    float u = z[r][k] * s[r][k];
                    ss[r] += u * u;
                    uy[r] += u * dzw[3 + r][k];
                }
            }
            if (norm) {
                /* y = u inv; du = inv (dy - y (y.dy)) = inv dy - inv^3 u (u.dy) */
#pragma unroll
                for (int o = 16; o > 0; o >>= 1)
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        ss[r] += __shfl_xor_sync(0xffffffffu, ss[r], o);
                        uy[r] += __shfl_xor_sync(0xffffffffu, uy[r], o);
                    }
#pragma unroll
                for (int r = 0; r < R; r++) {
                    float inv = rsqrtf(ss[r] + eps), inv3uy = inv * inv * inv * uy[r];
#pragma unroll
                    for (int k = 0; k < CPL; k++) dzw[3 + r][k] = inv * dzw[3 + r][k] - inv3uy * z[r][k] * s[r][k];
                }
            }
#pragma unroll
            for (int r = 0; r < R; r++) {
                /* rows at or past t2 loaded zeros: dz = 0 there */
#pragma unroll
                for (int k = 0; k < CPL; k++) dzw[3 + r][k] *= dsilu_from(z[r][k], s[r][k]);
                if (tb0 + r < t1) {
#pragma unroll
                    for (int k = 0; k < CPL; k++) {
                        dw[k][0] += dzw[3 + r][k] * xw[r][k];
                        dw[k][1] += dzw[3 + r][k] * xw[r + 1][k];
                        dw[k][2] += dzw[3 + r][k] * xw[r + 2][k];
                        dw[k][3] += dzw[3 + r][k] * xw[r + 3][k];
                    }
                }
                /* dx[s] = w0 dz[s+3] + w1 dz[s+2] + w2 dz[s+1] + w3 dz[s], s = row of batch slot r - 3 */
                int srow = tb0 + r - 3;
                if (srow >= t0 && srow < t1) {
                    float dx[CPL];
#pragma unroll
                    for (int k = 0; k < CPL; k++)
                        dx[k] = w4[k][0] * dzw[r + 3][k] + w4[k][1] * dzw[r + 2][k] + w4[k][2] * dzw[r + 1][k] +
                                w4[k][3] * dzw[r][k];
                    conv_store<floatX, CPL>(dx0 + (size_t)srow * C, dx, c, C, vec_ok);
                }
            }
#pragma unroll
            for (int j = 0; j < 3; j++)
#pragma unroll
                for (int k = 0; k < CPL; k++) { xw[j][k] = xw[R + j][k]; dzw[j][k] = dzw[R + j][k]; }
        }
    }
#pragma unroll
    for (int k = 0; k < CPL; k++)
#pragma unroll
        for (int j = 0; j < 4; j++) sdw[warp][(lane * CPL + k) * 4 + j] = dw[k][j];
    __syncthreads();
    float *dst = partial + (size_t)blockIdx.y * C * 4;
    for (int e = threadIdx.x; e < G * 4; e += blockDim.x) {
        if (g0 * 4 + e >= C * 4) break;
        float sum = 0.0f;
#pragma unroll
        for (int wi = 0; wi < CONV_WARPS; wi++) sum += sdw[wi][e];
        dst[(size_t)g0 * 4 + e] = sum;
    }
}

inline int conv_cpl(int C_norm, int K) {
    if (C_norm == 0) return 4;
    if (K % 32 != 0 || K > 256 || K < 32 || C_norm % K != 0) {
        fprintf(stderr, "conv_silu_l2norm: head_dim K=%d must be a multiple of 32 in [32, 256] dividing C_norm=%d\n",
                K, C_norm);
        exit(EXIT_FAILURE);
    }
    return K / 32;
}
inline int conv_ntb(int T) { return ceil_div(T, CONV_WARPS * CONV_TT); }

#define CONV_CPL_SWITCH(cpl, MACRO)                                                                  \
    switch (cpl) {                                                                                   \
    case 1: MACRO(1); break;                                                                         \
    case 2: MACRO(2); break;                                                                         \
    case 3: MACRO(3); break;                                                                         \
    case 4: MACRO(4); break;                                                                         \
    case 5: MACRO(5); break;                                                                         \
    case 6: MACRO(6); break;                                                                         \
    case 7: MACRO(7); break;                                                                         \
    default: MACRO(8); break;                                                                        \
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
// beta = sigmoid(x W_b^T) with H <= 16 rows in W_b. As a cuBLAS product its 6 output columns keep
// the tensor cores ~1% busy and cost three launches per direction; here it is one pass over x.
// Forward: a warp per row, H warp sums (W_b read through L1). Backward: a block owns
// BETA_ROWS rows and every column (thread t: columns [t VEC, t VEC + VEC)), keeps its slice of
// W_b and of the block's partial dW in registers, and walks the rows: dx = g W_b, dW += g^T x.

#define BETA_ROWS 64
#define BETA_BATCH 4
#define BETA_FWD_WARPS 8

template <typename floatX, int VEC, int HM>
__global__ void __launch_bounds__(BETA_FWD_WARPS * 32)
beta_forward_kernel(floatX *beta, const floatX *x, const floatX *w, int N, int C, int H) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int n = blockIdx.x * BETA_FWD_WARPS + warp;
    if (n >= N) return;
    float acc[HM];
#pragma unroll
    for (int h = 0; h < HM; h++) acc[h] = 0.0f;
    for (int j = lane * VEC; j < C; j += 32 * VEC) {
        float xv[VEC];
        load_f<floatX, VEC>(xv, x + (size_t)n * C + j);
#pragma unroll
        for (int h = 0; h < HM; h++)
            if (h < H) {
                float wv[VEC]; /* W_b is small: L1 hits after the first row */
                load_f<floatX, VEC>(wv, w + (size_t)h * C + j);
#pragma unroll
                for (int k = 0; k < VEC; k++) acc[h] += xv[k] * wv[k];
            }
    }
#pragma unroll
    for (int h = 0; h < HM; h++)
        if (h < H) {
            float v = group_sum<32>(acc[h]);
            if (lane == h) beta[(size_t)n * H + h] = from_f<floatX>(sigmoid_f(v));
        }
}

template <typename floatX, int VEC, int HM>
__global__ void beta_backward_kernel(floatX *dx, float *partial, const floatX *dbeta, const floatX *beta,
                                     const floatX *x, const floatX *w, int N, int C, int H, int accumulate) {
    __shared__ float sg[BETA_ROWS][HM];
    int r0 = blockIdx.x * BETA_ROWS;
    for (int i = threadIdx.x; i < BETA_ROWS * HM; i += blockDim.x) {
        int r = i / HM, h = i % HM;
        float g = 0.0f;
        if (r0 + r < N && h < H) {
            float b = to_f<floatX>(beta[(size_t)(r0 + r) * H + h]);
            g = to_f<floatX>(dbeta[(size_t)(r0 + r) * H + h]) * b * (1.0f - b);
        }
        sg[r][h] = g;
    }
    __syncthreads();
    int j = threadIdx.x * VEC;
    if (j >= C) return;
    float wr[HM][VEC], dw[HM][VEC];
#pragma unroll
    for (int h = 0; h < HM; h++) {
        if (h < H) load_f<floatX, VEC>(wr[h], w + (size_t)h * C + j);
#pragma unroll
        for (int k = 0; k < VEC; k++) { dw[h][k] = 0.0f; if (h >= H) wr[h][k] = 0.0f; }
    }
    int rend = min(BETA_ROWS, N - r0);
    for (int rb = 0; rb < rend; rb += BETA_BATCH) { /* BETA_BATCH rows' loads in flight together */
        float xv[BETA_BATCH][VEC], d[BETA_BATCH][VEC];
#pragma unroll
        for (int b = 0; b < BETA_BATCH; b++) {
            const size_t off = (size_t)(r0 + rb + b) * C + j;
#pragma unroll
            for (int k = 0; k < VEC; k++) { xv[b][k] = 0.0f; d[b][k] = 0.0f; }
            if (rb + b < rend) {
                load_f<floatX, VEC>(xv[b], x + off);
                if (accumulate) load_f<floatX, VEC>(d[b], dx + off);
            }
        }
#pragma unroll
        for (int b = 0; b < BETA_BATCH; b++) {
#pragma unroll
            for (int h = 0; h < HM; h++) {
                float g = sg[rb + b][h]; /* 0 past the end */
#pragma unroll
                for (int k = 0; k < VEC; k++) { d[b][k] += g * wr[h][k]; dw[h][k] += g * xv[b][k]; }
            }
            if (rb + b < rend) store_f<floatX, VEC>(dx + (size_t)(r0 + rb + b) * C + j, d[b]);
        }
    }
    float *dst = partial + (size_t)blockIdx.x * H * C;
#pragma unroll
    for (int h = 0; h < HM; h++)
        if (h < H) {
#pragma unroll
            for (int k = 0; k < VEC; k++) dst[(size_t)h * C + j + k] = dw[h][k];
        }
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
                              int K, float eps_l2, cudaStream_t stream) {
    if (B <= 0 || T <= 0) return;
    assert(C_norm <= C);
    int cpl = conv_cpl(C_norm, K), ntb = conv_ntb(T);
    dim3 grid(ceil_div(C, 32 * cpl), B * ntb);
#define CONV_FWD(CPL) conv_silu_l2norm_forward_kernel<floatX, CPL><<<grid, CONV_WARPS * 32, 0, stream>>>( \
        out, inp, w, T, C, C_norm, eps_l2, ntb, al16(out, inp))
    CONV_CPL_SWITCH(cpl, CONV_FWD)
#undef CONV_FWD
    cudaCheckLaunch();
}

inline size_t conv_silu_l2norm_backward_scratch_floats(int B, int T, int C, int K) {
    (void)K;
    return (size_t)B * conv_ntb(T) * C * 4;
}

template <typename floatX>
void conv_silu_l2norm_backward(floatX *dinp, float *dw, float *scratch, const floatX *dout, const floatX *inp,
                               const float *w, int B, int T, int C, int C_norm, int K, float eps_l2,
                               cudaStream_t stream) {
    if (B <= 0 || T <= 0) return;
    assert(C_norm <= C);
    int cpl = conv_cpl(C_norm, K), ntb = conv_ntb(T);
    dim3 grid(ceil_div(C, 32 * cpl), B * ntb);
#define CONV_BWD(CPL) conv_silu_l2norm_backward_kernel<floatX, CPL><<<grid, CONV_WARPS * 32, 0, stream>>>( \
        dinp, scratch, dout, inp, w, T, C, C_norm, eps_l2, ntb, al16(dinp, dout, inp))
    CONV_CPL_SWITCH(cpl, CONV_BWD)
#undef CONV_BWD
    cudaCheckLaunch();
    colsum_add(dw, scratch, B * ntb, C * 4, stream);
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

/* Calls f.template operator()<VEC, HM>() for the beta kernels: HM (4, 8, 16) the smallest >= H,
 * VEC the widest access the row allows (with 16 heads at most 4, to keep W_b's slice in registers). */
template <typename floatX, typename F>
inline void beta_dispatch(int C, int H, bool aligned, F &&f) {
    if (H < 1 || H > 16) { fprintf(stderr, "beta: H=%d heads, 1..16 supported\n", H); exit(EXIT_FAILURE); }
    constexpr int V = vec16<floatX>(), V4 = V < 4 ? V : 4;
    const bool v = aligned && C % V == 0, v4 = aligned && C % V4 == 0;
    if (H <= 4) { if (v) f.template operator()<V, 4>(); else f.template operator()<1, 4>(); }
    else if (H <= 8) { if (v) f.template operator()<V, 8>(); else f.template operator()<1, 8>(); }
    else { if (v4) f.template operator()<V4, 16>(); else f.template operator()<1, 16>(); }
}
template <typename floatX> struct BetaFwdLaunch {
    floatX *beta; const floatX *x, *w; int N, C, H; cudaStream_t st;
    template <int VEC, int HM> void operator()() const {
        beta_forward_kernel<floatX, VEC, HM><<<ceil_div(N, BETA_FWD_WARPS), BETA_FWD_WARPS * 32, 0, st>>>(beta, x, w, N, C, H);
    }
};
template <typename floatX> struct BetaBwdLaunch {
    floatX *dx; float *partial; const floatX *dbeta, *beta, *x, *w; int N, C, H, accumulate, nb; cudaStream_t st;
    template <int VEC, int HM> void operator()() const {
        const int threads = ceil_div(C, VEC);
        if (threads > 1024) { fprintf(stderr, "beta_backward: C=%d is too wide\n", C); exit(EXIT_FAILURE); }
        beta_backward_kernel<floatX, VEC, HM><<<nb, ceil_div(threads, 32) * 32, 0, st>>>(dx, partial, dbeta, beta, x, w, N, C, H, accumulate);
    }
};

template <typename floatX>
void beta_forward(floatX *beta, const floatX *x, const floatX *w, int N, int C, int H, cudaStream_t stream) {
    if (N <= 0) return;
    beta_dispatch<floatX>(C, H, al16(x, w), BetaFwdLaunch<floatX>{beta, x, w, N, C, H, stream});
    cudaCheckLaunch();
}

inline size_t beta_backward_scratch_floats(int N, int C, int H) { return (size_t)ceil_div(N, BETA_ROWS) * H * C; }

template <typename floatX>
void beta_backward(floatX *dx, float *dw, float *scratch, const floatX *dbeta, const floatX *beta, const floatX *x,
                   const floatX *w, int N, int C, int H, int accumulate, cudaStream_t stream) {
    if (N <= 0) return;
    const int nb = ceil_div(N, BETA_ROWS);
    beta_dispatch<floatX>(C, H, al16(dx, x, w), BetaBwdLaunch<floatX>{dx, scratch, dbeta, beta, x, w, N, C, H, accumulate, nb, stream});
    cudaCheckLaunch();
    colsum_add(dw, scratch, nb, H * C, stream);
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
