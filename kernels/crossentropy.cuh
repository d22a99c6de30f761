/*
 * crossentropy.cuh -- softmax cross-entropy over the vocabulary, fused with its gradient.
 *
 * Math (z = one row of logits, N rows, V real columns of Vp):
 *   loss = logsumexp(z[0..V)) - z[tgt]               dz_j = dloss/N (softmax_j - [j == tgt]), j < V;
 *                                                     dz_j = 0 for padded columns V <= j < Vp
 * With row weights w (a loss mask; NULL = all 1): the row's loss is w * loss and its gradient
 * w dloss/N (...). w = N mask / (number of masked rows) makes the mean over the N rows the mean over
 * the masked rows, and gives rows outside the mask a zero gradient.
 * Accuracy (argmax_hits): hits[row] = 1 where the first largest logit of the row is the target
 * (and w[row] > 0), else 0.
 * Conventions (floatX, fp32 reductions and parameter gradients, deterministic scratch, alignment,
 * graph capture): see common.cuh.
 */
#pragma once
#include "common.cuh"

// ----------------------------------------------------------------------------
// kernel launchers (declarations; definitions at the end)

/* logits [N,Vp] (only the first V columns count), targets [N] in [0,V). losses[N] (float) =
 * per-row loss; logits are OVERWRITTEN with dlogits = dloss/N * (softmax - onehot), padded
 * columns set to 0. For gradient accumulation pass dloss = 1/grad_accum_steps. wts [N]: optional
 * row weights (above). */
template <typename floatX>
void crossentropy_forward_backward(floatX *logits, float *losses, const int *targets, float dloss, int N, int V,
                                   int Vp, cudaStream_t stream, const float *wts = NULL);
/* Forward only (validation): losses[N], logits untouched. */
template <typename floatX>
void crossentropy_forward(float *losses, const floatX *logits, const int *targets, int N, int V, int Vp,
                          cudaStream_t stream, const float *wts = NULL);
/* hits[N] = 1 where argmax(logits[row, 0..V)) == targets[row] (and wts[row] > 0 if wts), else 0. */
template <typename floatX>
void argmax_hits(float *hits, const floatX *logits, const int *targets, const float *wts, int N, int V, int Vp,
                 cudaStream_t stream);

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
crossentropy_kernel(floatX *logits, float *losses, const int *targets, float gscale, int V, int Vp, const float *wts) {
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
    const float w = wts ? wts[row] : 1.0f;
    gscale *= w;
    if (threadIdx.x == 0) losses[row] = w * (lse - to_f<floatX>(z[tgt]));
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
crossentropy_reg_kernel(floatX *logits, float *losses, const int *targets, float gscale, int V, int Vp, const float *wts) {
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
    const float w = wts ? wts[row] : 1.0f;
    gscale *= w;
    if (threadIdx.x == 0) losses[row] = w * (lse - ztgt);
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

/* Accuracy: one block per row finds the first largest of the V real logits (ties go to the lower
 * column, as the CPU's argmax) and compares it with the target. */
#define ARGMAX_THREADS 256
template <typename floatX>
__global__ void __launch_bounds__(ARGMAX_THREADS)
argmax_hits_kernel(float *hits, const floatX *logits, const int *targets, const float *wts, int V, int Vp) {
    __shared__ float sv[ARGMAX_THREADS];
    __shared__ int si[ARGMAX_THREADS];
    const int row = blockIdx.x;
    const floatX *z = logits + (size_t)row * Vp;
    float best = -INFINITY;
    int bi = V; /* none yet: loses every tie */
    for (int j = threadIdx.x; j < V; j += ARGMAX_THREADS) {
        const float x = to_f<floatX>(z[j]);
        if (x > best) { best = x; bi = j; } /* j grows: the first largest of this thread */
    }
    sv[threadIdx.x] = best;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int o = ARGMAX_THREADS / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) {
            const float v2 = sv[threadIdx.x + o];
            const int i2 = si[threadIdx.x + o];
            if (v2 > sv[threadIdx.x] || (v2 == sv[threadIdx.x] && i2 < si[threadIdx.x])) { sv[threadIdx.x] = v2; si[threadIdx.x] = i2; }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) hits[row] = (!wts || wts[row] > 0.0f) && si[0] == targets[row] ? 1.0f : 0.0f;
}

/* Forward + backward: the register-row kernel when the row fits (IT <= 7 packs per thread: Vp <=
 * 57344 in bf16), else the two-pass one. Forward only: the streaming one-pass kernel. */
template <typename floatX, bool BACKWARD>
inline void crossentropy_launch(floatX *logits, float *losses, const int *targets, float gs, int N, int V, int Vp,
                                cudaStream_t stream, const float *wts) {
    const int VEC = vec16<floatX>();
    if (!BACKWARD && Vp % VEC == 0 && al16(logits)) {
        /* forward only: the streaming kernel reads each logit once too, and keeps more loads in
         * flight (faster than the register-row kernel at the d12 sizes) */
        crossentropy_kernel<floatX, VEC, false><<<N, XENT_THREADS, 0, stream>>>(logits, losses, targets, gs, V, Vp, wts);
    } else if (Vp % VEC == 0 && al16(logits)) {
        int need = ceil_div(Vp / VEC, XENT_RT);
        if (need <= 2) crossentropy_reg_kernel<floatX, VEC, 2, BACKWARD><<<N, XENT_RT, 0, stream>>>(logits, losses, targets, gs, V, Vp, wts);
        else if (need <= 4) crossentropy_reg_kernel<floatX, VEC, 4, BACKWARD><<<N, XENT_RT, 0, stream>>>(logits, losses, targets, gs, V, Vp, wts);
        else if (need <= 7) crossentropy_reg_kernel<floatX, VEC, 7, BACKWARD><<<N, XENT_RT, 0, stream>>>(logits, losses, targets, gs, V, Vp, wts);
        else crossentropy_kernel<floatX, VEC, BACKWARD><<<N, XENT_THREADS, 0, stream>>>(logits, losses, targets, gs, V, Vp, wts);
    } else {
        crossentropy_kernel<floatX, 1, BACKWARD><<<N, XENT_THREADS, 0, stream>>>(logits, losses, targets, gs, V, Vp, wts);
    }
    cudaCheckLaunch();
}

// ----------------------------------------------------------------------------
// kernel launchers

template <typename floatX>
void crossentropy_forward_backward(floatX *logits, float *losses, const int *targets, float dloss, int N, int V,
                                   int Vp, cudaStream_t stream, const float *wts) {
    if (N <= 0) return;
    crossentropy_launch<floatX, true>(logits, losses, targets, dloss / (float)N, N, V, Vp, stream, wts);
}

template <typename floatX>
void crossentropy_forward(float *losses, const floatX *logits, const int *targets, int N, int V, int Vp,
                          cudaStream_t stream, const float *wts) {
    if (N <= 0) return;
    /* not written: BACKWARD = false */
    crossentropy_launch<floatX, false>(const_cast<floatX *>(logits), losses, targets, 0.0f, N, V, Vp, stream, wts);
}

template <typename floatX>
void argmax_hits(float *hits, const floatX *logits, const int *targets, const float *wts, int N, int V, int Vp,
                 cudaStream_t stream) {
    if (N <= 0) return;
    argmax_hits_kernel<floatX><<<N, ARGMAX_THREADS, 0, stream>>>(hits, logits, targets, wts, V, Vp);
    cudaCheckLaunch();
}
