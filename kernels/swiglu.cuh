/*
 * swiglu.cuh -- the MLP's gated activation.
 *
 * Math (g = gradient of the loss w.r.t. the named quantity, s = sigmoid, silu(z) = z s(z),
 * silu'(z) = s(z) (1 + z (1 - s(z)))):
 *   y = silu(a) u                                     da = dy u silu'(a), du = dy silu(a)
 * Layout: ONE buffer [N,2I], each row gate|up (the fused [2I,D] gate/up projection writes it).
 * Conventions (floatX, fp32 reductions and parameter gradients, deterministic scratch, alignment,
 * graph capture): see common.cuh.
 */
#pragma once
#include "common.cuh"

// ----------------------------------------------------------------------------
// kernel launchers (declarations; definitions at the end)

/* gu [N,2I] rows gate|up; out [N,I] = silu(gate) * up. */
template <typename floatX>
void swiglu_forward(floatX *out, const floatX *gu, int N, int I, cudaStream_t stream);
/* dgu [N,2I] (=) rows dgate|dup from dout [N,I] and gu. dgu MAY alias gu (in place). y (optional,
 * may alias dout): the forward output silu(gate) * up, recomputed on the way. */
template <typename floatX>
void swiglu_backward(floatX *dgu, const floatX *dout, const floatX *gu, int N, int I, cudaStream_t stream,
                     floatX *y = NULL);

// ----------------------------------------------------------------------------
// kernels

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
// kernel launchers

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
