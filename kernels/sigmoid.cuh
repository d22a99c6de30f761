/*
 * sigmoid.cuh -- the elementwise sigmoid: DeltaNet's write strength beta = sigmoid(x W_b^T).
 *
 * Math (g = gradient of the loss w.r.t. the named quantity, s = sigmoid):
 *   y = s(x)                                          dx = dy y (1 - y)
 * Conventions (floatX, fp32 reductions and parameter gradients, deterministic scratch, alignment,
 * graph capture): see common.cuh.
 */
#pragma once
#include "common.cuh"

// ----------------------------------------------------------------------------
// kernel launchers (declarations; definitions at the end)

/* out[n] = sigmoid(inp[n]), n < count. Types may differ (e.g. float beta from floatX logits);
 * out may alias inp when the types match. */
template <typename Tout, typename Tin>
void sigmoid_forward(Tout *out, const Tin *inp, int count, cudaStream_t stream);
/* dinp = dout * out * (1 - out) (=). dinp may alias dout when the types match. */
template <typename Tdinp, typename Tdout, typename Tout>
void sigmoid_backward(Tdinp *dinp, const Tdout *dout, const Tout *out, int count, cudaStream_t stream);

// ----------------------------------------------------------------------------
// kernels

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

// ----------------------------------------------------------------------------
// kernel launchers

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
