/*
 * reduce.cuh -- a deterministic sum of a float vector (the mean loss of a step).
 *
 * Math: out (= ; +=) scale * sum_i inp[i], summed in one fixed order (one block, a block_sum of
 * strided partial sums), so the loss does not depend on the grid.
 */
#pragma once
#include "common.cuh"

// ----------------------------------------------------------------------------
// kernel launchers (declarations; definitions at the end)

/* *out (= ; += with accumulate) = scale * sum(inp[0..n)) in a fixed order (one block): e.g. the
 * mean loss, scale = 1/N. */
inline void sum_float(float *out, const float *inp, int n, float scale, int accumulate, cudaStream_t stream);

// ----------------------------------------------------------------------------
// kernels

__global__ void sum_float_kernel(float *out, const float *inp, int n, float scale, int accumulate) {
    __shared__ float shm[32];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += inp[i];
    acc = block_sum(acc, shm);
    if (threadIdx.x == 0) *out = accumulate ? *out + scale * acc : scale * acc;
}

// ----------------------------------------------------------------------------
// kernel launchers

inline void sum_float(float *out, const float *inp, int n, float scale, int accumulate, cudaStream_t stream) {
    sum_float_kernel<<<1, 1024, 0, stream>>>(out, inp, n, scale, accumulate);
    cudaCheckLaunch();
}
