/*
 * common.cuh -- what every CUDA file of deltanet.c shares: the error-check macros, the element
 * types (float for the fp32 test mode, __nv_bfloat16 for mixed-precision training) with their
 * conversions, small launch helpers, the device queries, the one round-up helper, the PTX
 * primitives of the tensor-core kernels (deltarule.cuh, attention.cuh) and the vector-access
 * helpers of the element-wise layers.
 *
 * Precision model: activations and the weight copies used by matmuls are `floatX` (a template
 * parameter: float or __nv_bfloat16); every reduction and every accumulator is float; master
 * weights, AdamW moments and the DeltaNet state are always float.
 *
 * Conventions of the layer files (embedding, rmsnorm, conv, sigmoid, swiglu, crossentropy, reduce):
 * each is a forward/backward pair of launchers `(out, ..., inp, ..., sizes, stream)`. Activations
 * are [B,T,C] row-major, N = B*T rows. Every reduction is in float. Small parameters (norm gains,
 * conv weights) are read from the fp32 MASTER weights (float*), and their gradients are fp32 and
 * ACCUMULATED (+=); activation gradients are floatX and written (=) unless an `accumulate` flag
 * says +=. Parameter-gradient reductions over rows are deterministic: per-block partial sums in a
 * caller-provided scratch buffer, then one ordered reduction (no float atomics). Calls on one
 * stream run in order, so one scratch buffer of the largest size any call asks for (the *_scratch_*
 * functions) can be shared by all of them. No allocation, no synchronisation: every launcher can
 * be captured in a CUDA graph.
 * Alignment: none required for correctness (any C, odd ones included); the 16-byte vector paths
 * are taken when the row length is a multiple of 16/sizeof(floatX) elements and the pointers are
 * 16-byte aligned (checked at launch, al16).
 */
#pragma once
#include <cstdio>
#include <cstdint>
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
/* silu'(z) from z and s = sigmoid(z): s (1 + z (1 - s)). */
__device__ __forceinline__ float dsilu_from(float z, float s) { return s * (1.0f + z * (1.0f - s)); }

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

// ----------------------------------------------------------------------------
// vector access helpers of the element-wise layers

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


// ----------------------------------------------------------------------------
// sizes and device queries

/* Round x up to a multiple of a (a > 0): buffer carving, shared-memory carving. */
__host__ __device__ constexpr inline size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* Streaming multiprocessors and resident threads per SM of the current device, queried once (the
 * launch heuristics size their grids to one wave). */
inline int device_attr(cudaDeviceAttr attr) {
    int dev, v;
    cudaCheck(cudaGetDevice(&dev));
    cudaCheck(cudaDeviceGetAttribute(&v, attr, dev));
    return v;
}
inline int num_sms() {
    static const int n = device_attr(cudaDevAttrMultiProcessorCount);
    return n;
}
inline int max_threads_per_sm() {
    static const int n = device_attr(cudaDevAttrMaxThreadsPerMultiProcessor);
    return n;
}

/* Blocks for a grid-stride loop over n elements: enough for one element per thread, capped (the
 * loop covers the rest). */
inline int grid_for(long n, int threads) {
    long blocks = (n + threads - 1) / threads;
    return (int)(blocks < 65536L * 16 ? (blocks > 0 ? blocks : 1) : 65536L * 16);
}

// ----------------------------------------------------------------------------
// PTX primitives (sm_80+): shared-memory addresses, cp.async, ldmatrix, mma.sync.
//
// Clobbers, one rule for all: every instruction that reads or writes shared memory, or orders
// accesses to it (cp.async and its commit/wait, ldmatrix), carries the "memory" clobber, so the
// compiler neither caches shared values in registers across it nor moves plain loads/stores of
// shared memory over it. mma.sync touches registers only: no clobber. All are `asm volatile`.

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

/* 16 bytes global -> shared, asynchronously (L2 only); src_bytes < 16 zero-fills the rest (0: all). */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes)
                 : "memory");
}
/* 4 bytes global -> shared, asynchronously (through L1); src_bytes 0 zero-fills. */
__device__ __forceinline__ void cp_async4(void *dst, const void *src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/* Wait until at most N committed groups are still in flight. */
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

/* Four 8x8 b16 matrices from shared memory (lane l gives the row address of matrix l/8), in the
 * mma.sync fragment layout; _t transposes each. */
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p))
                 : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p))
                 : "memory");
}

/* d += a b on one 16x8x16 tile: a the 16x16 bf16 A fragment (4 regs), b0 b1 the 16x8 B fragment,
 * d the fp32 16x8 accumulator (lane (g = lane/4, t = lane%4) holds rows g, g+8, columns 2t, 2t+1). */
__device__ __forceinline__ void mma_bf16(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Row stride (elements) of a shared tile of `cols` elements of T, padded by 16 bytes so the 8 rows
 * an ldmatrix reads land in distinct banks. */
template <typename T> __host__ __device__ constexpr int padded(int cols) { return cols + 16 / (int)sizeof(T); }
