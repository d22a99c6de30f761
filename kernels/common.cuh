/*
 * common.cuh -- what every CUDA file of deltanet.c shares: the error-check macros, the element
 * types (float for the fp32 test mode, __nv_bfloat16 for mixed-precision training) with their
 * conversions, and small launch helpers.
 *
 * Precision model: activations and the weight copies used by matmuls are `floatX` (a template
 * parameter: float or __nv_bfloat16); every reduction and every accumulator is float; master
 * weights, AdamW moments and the DeltaNet state are always float.
 */
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>
#include <cuda_bf16.h>

/* cudaCheck(call): abort with file:line and the CUDA error string. */
inline void cuda_check_(cudaError_t err, const char *file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "CUDA error at %s:%d: %s\n", file, line, cudaGetErrorString(err));
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(err) cuda_check_((err), __FILE__, __LINE__)
/* After every kernel launch. */
#define cudaCheckLaunch() cuda_check_(cudaGetLastError(), __FILE__, __LINE__)

typedef __nv_bfloat16 bf16;

template <typename T> __device__ __host__ __forceinline__ float to_f(T x);
template <> __device__ __host__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __host__ __forceinline__ float to_f<bf16>(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __host__ __forceinline__ T from_f(float x);
template <> __device__ __host__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __host__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16(x); }

__host__ __device__ constexpr inline int ceil_div(long a, long b) { return (int)((a + b - 1) / b); }

__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + __expf(-x)); }
__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + __expf(-x)); }

/* Warp-wide sum / max. */
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* Block-wide sum for blockDim.x a multiple of 32 (<= 1024); every thread gets the result.
 * Uses 32 floats of shared memory passed in by the caller. */
__device__ __forceinline__ float block_sum(float v, float *shm32) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) shm32[warp] = v;
    __syncthreads();
    v = lane < nw ? shm32[lane] : 0.0f;
    return warp_sum(v);
}
