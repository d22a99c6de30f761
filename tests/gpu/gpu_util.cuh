/*
 * gpu_util.cuh -- host-side helpers shared by the GPU tests and benches (tests/gpu/*.cu), C++17:
 *   median_ms(fn, reps, warmup = 3)  run fn() warmup times, then time each of reps runs with a pair
 *                                    of CUDA events (synchronised per run); the median in ms
 *   upload<T>(host floats)           a new device buffer (+16 bytes) holding them converted to T
 *   upload_int(host ints)            a new device buffer (+16 bytes) holding them
 *   alloc_poisoned<T>(n)             a new device buffer of n T's (+16 bytes), all bits set
 *   poison(d, n)                     set all bits of n T's (NaN in fp32 and bf16)
 *   download(d, n, sync_first=true)  n T's from the device as floats (sync_first: a device-wide
 *                                    synchronise before the copy)
 *   rel_err_dev(a, ref, n)           ||a - ref|| / ||ref|| of two device bf16 buffers, in double
 */
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>
#include "../../kernels/common.cuh"

template <typename F>
static float median_ms(F fn, int reps, int warmup = 3) {
    cudaEvent_t a, b;
    cudaCheck(cudaEventCreate(&a));
    cudaCheck(cudaEventCreate(&b));
    for (int i = 0; i < warmup; i++) fn();
    std::vector<float> t;
    for (int i = 0; i < reps; i++) {
        cudaCheck(cudaEventRecord(a));
        fn();
        cudaCheck(cudaEventRecord(b));
        cudaCheck(cudaEventSynchronize(b));
        float ms;
        cudaCheck(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms);
    }
    std::sort(t.begin(), t.end());
    cudaCheck(cudaEventDestroy(a));
    cudaCheck(cudaEventDestroy(b));
    return t[t.size() / 2];
}

template <typename T>
static T *upload(const std::vector<float> &h) {
    std::vector<T> t(h.size());
    for (size_t i = 0; i < h.size(); i++) t[i] = from_f<T>(h[i]);
    T *d;
    cudaCheck(cudaMalloc(&d, h.size() * sizeof(T) + 16));
    cudaCheck(cudaMemcpy(d, t.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
static inline int *upload_int(const std::vector<int> &h) {
    int *d;
    cudaCheck(cudaMalloc(&d, h.size() * sizeof(int) + 16));
    cudaCheck(cudaMemcpy(d, h.data(), h.size() * sizeof(int), cudaMemcpyHostToDevice));
    return d;
}
template <typename T>
static T *alloc_poisoned(size_t n) {
    T *d;
    cudaCheck(cudaMalloc(&d, n * sizeof(T) + 16));
    cudaCheck(cudaMemset(d, 0xff, n * sizeof(T))); /* all-ones bits: NaN in float and bf16 */
    return d;
}
template <typename T>
static void poison(T *d, size_t n) { cudaCheck(cudaMemset(d, 0xff, n * sizeof(T))); }
template <typename T>
static std::vector<float> download(const T *d, size_t n, bool sync_first = true) {
    if (sync_first) cudaCheck(cudaDeviceSynchronize());
    std::vector<T> t(n);
    cudaCheck(cudaMemcpy(t.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    std::vector<float> h(n);
    for (size_t i = 0; i < n; i++) h[i] = to_f(t[i]);
    return h;
}

static inline double rel_err_dev(const bf16 *a, const bf16 *ref, size_t n) {
    std::vector<bf16> x(n), y(n);
    cudaCheck(cudaMemcpy(x.data(), a, n * sizeof(bf16), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(y.data(), ref, n * sizeof(bf16), cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)__bfloat162float(x[i]) - __bfloat162float(y[i]);
        num += d * d;
        den += (double)__bfloat162float(y[i]) * __bfloat162float(y[i]);
    }
    return sqrt(num / den);
}
