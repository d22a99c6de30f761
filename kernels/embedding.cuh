/*
 * embedding.cuh -- the token embedding: a row gather forward, a deterministic scatter-add backward.
 *
 * Math (g = gradient of the loss w.r.t. the named quantity):
 *   y[n] = wte[tok[n]]                                dwte[tok[n]] += dy[n]
 * The backward adds rows of dy into rows of dwte that many positions share (repeated tokens), so
 * it sorts instead of using float atomics: the result does not depend on the order blocks run in.
 * Tokens must lie in [0, Vp).
 * Conventions (floatX, fp32 reductions and parameter gradients, deterministic scratch, alignment,
 * graph capture): see common.cuh.
 */
#pragma once
#include <cub/device/device_radix_sort.cuh>
#include "common.cuh"

// ----------------------------------------------------------------------------
// kernel launchers (declarations; definitions at the end)

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

// ----------------------------------------------------------------------------
// embedding kernels

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

inline size_t emb_cub_temp_bytes(int N, int Vp) {
    size_t temp = 0;
    cudaCheck(cub::DeviceRadixSort::SortPairs(nullptr, temp, (const int *)nullptr, (int *)nullptr, (const int *)nullptr,
                                              (int *)nullptr, N, 0, emb_key_bits(Vp)));
    return temp;
}

inline size_t embedding_backward_scratch_bytes(int N, int D, int Vp) {
    size_t nch = (size_t)ceil_div(N, EMB_CHUNK);
    return 3 * round_up((size_t)N * sizeof(int), 256) + 2 * round_up(nch * D * sizeof(float), 256) +
           round_up(emb_cub_temp_bytes(N, Vp), 256);
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
    int *idx_in = (int *)p;   p += round_up((size_t)N * sizeof(int), 256);
    int *keys = (int *)p;     p += round_up((size_t)N * sizeof(int), 256);
    int *idx = (int *)p;      p += round_up((size_t)N * sizeof(int), 256);
    float *head = (float *)p; p += round_up((size_t)nch * D * sizeof(float), 256);
    float *tail = (float *)p; p += round_up((size_t)nch * D * sizeof(float), 256);
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
