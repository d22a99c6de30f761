/*
 * adamw.cuh -- the optimizer step: gradient global norm, clipping, one fused AdamW pass over every
 * parameter, plus the fill / conversion helpers that go with the parameter buffers.
 *
 * AdamW exactly as PyTorch's torch.optim.AdamW (decoupled weight decay, bias-corrected moments),
 * per element with g = grad_scale * grad:
 *   m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
 *   w = w (1 - lr wd_i) - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * where wd_i = weight_decay for tensors whose DNParam.decay is set (matrices, embedding, conv),
 * 0 for the norm gains. grad_scale = min(1, clip / ||grad||_2) (1 when clip <= 0) folds gradient
 * clipping into the same pass. The fp32 master weights are updated in place and, if given, the
 * floatX copy used by the matmuls is written in the same pass.
 *
 * CUDA-graph friendly: the hyperparameters (lr, betas, eps, weight decay, clip, step) are read from
 * a small struct in DEVICE memory (AdamWHParams*), never from kernel arguments, so a captured step
 * replays with new values after the driver updates that struct (e.g. a cudaMemcpyAsync from a
 * pinned host copy placed inside the graph, or before each replay). The global norm and the
 * clip scale stay on the device too (GradNorm). Per-tensor decay: a device table of the tensors'
 * end offsets and decay flags (AdamWSegments, built once from the DNParamTable); each thread finds
 * its tensor by binary search over that table (a few cached loads per 4 elements).
 *
 * Determinism: the norm is a fixed two-pass reduction (GRAD_NORM_BLOCKS per-block partial sums,
 * then one block sums those in a fixed order); no atomics.
 */
#pragma once
#include "common.cuh"
#include "../model.h"

#define GRAD_NORM_BLOCKS 1024
#define GRAD_NORM_THREADS 256

/* Hyperparameters in device memory (one struct, written by the host before each step). */
typedef struct {
    float lr;
    float beta1, beta2, eps;
    float weight_decay;
    float grad_clip;   /* <= 0: no clipping */
    int step;          /* 1-based step count (bias correction) */
    int pad_;
} AdamWHParams;

/* Device table of the tensors of the parameter buffer: end[i] = offset + mem_numel of tensor i
 * (buffer order, increasing), decay[i] = DNParam.decay. */
typedef struct {
    size_t *end;   /* device [n] */
    int *decay;    /* device [n] */
    int n;
} AdamWSegments;

/* Device outputs of the norm pass: norm = ||grads||_2, scale = min(1, clip / norm). */
typedef struct {
    float norm;
    float scale;
} GradNorm;

// ----------------------------------------------------------------------------
// kernels

__global__ void grad_norm_partial_kernel(float *partial, const float *g, size_t n) {
    __shared__ float shm[32];
    float acc = 0.0f;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t n4 = ((uintptr_t)g % 16 == 0) ? n / 4 : 0;
    const float4 *g4 = (const float4 *)g;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
        float4 x = __ldcs(g4 + i);
        acc += x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w;
    }
    for (size_t i = 4 * n4 + (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float x = g[i];
        acc += x * x;
    }
    acc = block_sum(acc, shm);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void grad_norm_final_kernel(GradNorm *out, const float *partial, int np, const AdamWHParams *hp) {
    __shared__ float shm[32];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < np; i += blockDim.x) acc += partial[i];
    acc = block_sum(acc, shm);
    if (threadIdx.x == 0) {
        float norm = sqrtf(acc);
        float clip = hp ? hp->grad_clip : 0.0f;
        out->norm = norm;
        out->scale = (clip > 0.0f && norm > clip) ? clip / norm : 1.0f;
    }
}

__device__ __forceinline__ int adamw_find_segment(const size_t *end, int n, size_t i) {
    int lo = 0, hi = n - 1; /* first s with end[s] > i */
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (__ldg(end + mid) > i) hi = mid; else lo = mid + 1;
    }
    return lo;
}

template <typename floatX>
__global__ void adamw_kernel(float *w, floatX *wcopy, float *m, float *v, const float *g, size_t n,
                             const size_t *seg_end, const int *seg_decay, int n_seg,
                             const AdamWHParams *hp, const GradNorm *gn) {
    size_t i0 = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i0 >= n) return;
    const float lr = hp->lr, b1 = hp->beta1, b2 = hp->beta2, eps = hp->eps, wd = hp->weight_decay;
    const float t = (float)hp->step;
    const float bc1 = 1.0f - powf(b1, t), bc2 = 1.0f - powf(b2, t);
    const float step_size = lr / bc1, inv_sqrt_bc2 = rsqrtf(bc2);
    const float gs = gn ? gn->scale : 1.0f;
    int s = adamw_find_segment(seg_end, n_seg, i0);
    if (i0 + 4 <= n) {
        float4 W = *(float4 *)(w + i0), M = *(float4 *)(m + i0), V = *(float4 *)(v + i0);
        float4 G = __ldcs((const float4 *)(g + i0));
        float wa[4] = {W.x, W.y, W.z, W.w}, ma[4] = {M.x, M.y, M.z, M.w}, va[4] = {V.x, V.y, V.z, V.w};
        float ga[4] = {G.x, G.y, G.z, G.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            while (s < n_seg - 1 && __ldg(seg_end + s) <= i0 + j) s++;
            float decay = __ldg(seg_decay + s) ? wd : 0.0f;
            float gj = ga[j] * gs;
            ma[j] = b1 * ma[j] + (1.0f - b1) * gj;
            va[j] = b2 * va[j] + (1.0f - b2) * gj * gj;
            wa[j] = wa[j] * (1.0f - lr * decay) - step_size * ma[j] / (sqrtf(va[j]) * inv_sqrt_bc2 + eps);
        }
        *(float4 *)(w + i0) = make_float4(wa[0], wa[1], wa[2], wa[3]);
        *(float4 *)(m + i0) = make_float4(ma[0], ma[1], ma[2], ma[3]);
        *(float4 *)(v + i0) = make_float4(va[0], va[1], va[2], va[3]);
        if (wcopy)
#pragma unroll
            for (int j = 0; j < 4; j++) wcopy[i0 + j] = from_f<floatX>(wa[j]);
    } else {
        for (size_t i = i0; i < n; i++) {
            while (s < n_seg - 1 && __ldg(seg_end + s) <= i) s++;
            float decay = __ldg(seg_decay + s) ? wd : 0.0f;
            float gj = g[i] * gs;
            float mj = b1 * m[i] + (1.0f - b1) * gj;
            float vj = b2 * v[i] + (1.0f - b2) * gj * gj;
            float wj = w[i] * (1.0f - lr * decay) - step_size * mj / (sqrtf(vj) * inv_sqrt_bc2 + eps);
            m[i] = mj; v[i] = vj; w[i] = wj;
            if (wcopy) wcopy[i] = from_f<floatX>(wj);
        }
    }
}

__global__ void fill_float_kernel(float *p, float value, size_t n) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) p[i] = value;
}

template <typename Tout, typename Tin>
__global__ void convert_kernel(Tout *out, const Tin *inp, size_t n) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = from_f<Tout>(to_f<Tin>(inp[i]));
}

// ----------------------------------------------------------------------------
// kernel launchers

/* Build the device segment table from the parameter table (host work + cudaMalloc: call once). */
inline void adamw_segments_create(AdamWSegments *seg, const DNParamTable *t) {
    size_t *end = (size_t *)malloc((size_t)t->n_params * sizeof(size_t));
    int *decay = (int *)malloc((size_t)t->n_params * sizeof(int));
    if (!end || !decay) { fprintf(stderr, "adamw_segments_create: out of memory\n"); exit(EXIT_FAILURE); }
    for (int i = 0; i < t->n_params; i++) {
        end[i] = t->params[i].offset + t->params[i].mem_numel;
        decay[i] = t->params[i].decay;
    }
    seg->n = t->n_params;
    cudaCheck(cudaMalloc(&seg->end, (size_t)seg->n * sizeof(size_t)));
    cudaCheck(cudaMalloc(&seg->decay, (size_t)seg->n * sizeof(int)));
    cudaCheck(cudaMemcpy(seg->end, end, (size_t)seg->n * sizeof(size_t), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(seg->decay, decay, (size_t)seg->n * sizeof(int), cudaMemcpyHostToDevice));
    free(end);
    free(decay);
}
inline void adamw_segments_free(AdamWSegments *seg) {
    cudaCheck(cudaFree(seg->end));
    cudaCheck(cudaFree(seg->decay));
    seg->end = NULL; seg->decay = NULL; seg->n = 0;
}

/* Scratch floats grad_norm needs. */
inline size_t grad_norm_scratch_floats(void) { return GRAD_NORM_BLOCKS; }

/* out->norm = ||grads[0..n)||_2, out->scale = min(1, hp->grad_clip / norm) (1 if clip <= 0 or hp
 * NULL). out, scratch, hp: device pointers. Deterministic. */
inline void grad_norm(GradNorm *out, float *scratch, const float *grads, size_t n, const AdamWHParams *hp,
                      cudaStream_t stream) {
    grad_norm_partial_kernel<<<GRAD_NORM_BLOCKS, GRAD_NORM_THREADS, 0, stream>>>(scratch, grads, n);
    cudaCheckLaunch();
    grad_norm_final_kernel<<<1, 1024, 0, stream>>>(out, scratch, GRAD_NORM_BLOCKS, hp);
    cudaCheckLaunch();
}

/* One AdamW step over the whole parameter buffer (n = DNParamTable.total elements): params,
 * m, v (fp32) updated in place from grads (fp32), scaled by gn->scale (gn may be NULL: no
 * clipping); params_copy (floatX, may be NULL) gets the new weights. hp, gn: device pointers.
 * Buffers must be 16-byte aligned (cudaMalloc'd; the parameter buffer's offsets are free). */
template <typename floatX>
void adamw_update(float *params, floatX *params_copy, float *m, float *v, const float *grads, size_t n,
                  const AdamWSegments *seg, const AdamWHParams *hp, const GradNorm *gn, cudaStream_t stream) {
    if (n == 0) return;
    const int threads = 256;
    size_t blocks = (n + 4 * threads - 1) / (4 * threads);
    adamw_kernel<floatX><<<(unsigned)blocks, threads, 0, stream>>>(params, params_copy, m, v, grads, n, seg->end,
                                                                   seg->decay, seg->n, hp, gn);
    cudaCheckLaunch();
}

/* p[0..n) = value (zero the gradients with value 0, or use cudaMemsetAsync). */
inline void fill_float(float *p, float value, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    fill_float_kernel<<<ceil_div((long)(n < ((size_t)1 << 24) ? n : ((size_t)1 << 24)), 256), 256, 0, stream>>>(p, value, n);
    cudaCheckLaunch();
}

/* out[i] = (Tout) inp[i]: float -> bf16 (round to nearest even), bf16 -> float, float -> float. */
template <typename Tout, typename Tin>
void convert(Tout *out, const Tin *inp, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    convert_kernel<Tout, Tin><<<ceil_div((long)(n < ((size_t)1 << 24) ? n : ((size_t)1 << 24)), 256), 256, 0, stream>>>(out, inp, n);
    cudaCheckLaunch();
}
