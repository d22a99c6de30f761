/*
 * rope.cuh -- rotary position embedding of the attention layers' q and k, forward and backward.
 *
 * Math (non-interleaved halves): for i < d/2, angle = (pos0 + t) * base^(-2i/d),
 * (x_i, x_{i+d/2}) <- (x_i cos - x_{i+d/2} sin, x_{i+d/2} cos + x_i sin); the backward rotates
 * the gradient by -angle (the rotation is orthogonal). cos/sin come from a table computed once in
 * double (rope_table_init): a float angle at position ~1000 would already be off by ~1e-4 rad.
 *
 * Launchers (floatX = float or __nv_bfloat16; no allocation, no synchronisation):
 *   rope_table_init(cs, maxpos, d, base, stream)        cs: float [maxpos, d/2, 2] (cos, sin)
 *   rope_forward(x, cs, B, T, H, d, pos0, stream)       in place on [B,T,H,d], positions pos0.. < maxpos
 *   rope_backward(dx, cs, B, T, H, d, pos0, stream)     in place
 */
#pragma once
#include "common.cuh"

// ----------------------------------------------------------------------------
// kernels

/* cs[p][i] = (cos, sin)(p * base^(-2i/d)), computed in double. */
__global__ void rope_table_kernel(float2 *cs, int maxpos, int half, int d, double base) {
    const long n = (long)maxpos * half;
    for (long x = (long)blockIdx.x * blockDim.x + threadIdx.x; x < n; x += (long)gridDim.x * blockDim.x) {
        const int p = (int)(x / half), i = (int)(x % half);
        double sn, c;
        sincos((double)p * pow(base, -2.0 * i / d), &sn, &c);
        cs[x] = make_float2((float)c, (float)sn);
    }
}

/* Rotate pairs (x_i, x_{i+d/2}) of x [B,T,H,d] by sign * angle(pos0 + t, i). One thread per pair. */
template <typename T>
__global__ void rope_kernel(T *x, const float2 *__restrict__ cs, long npairs, int T_, int H, int half, int pos0,
                            float sign) {
    for (long e = (long)blockIdx.x * blockDim.x + threadIdx.x; e < npairs; e += (long)gridDim.x * blockDim.x) {
        const long row = e / half;
        const int i = (int)(e - row * half), t = (int)((row / H) % T_);
        const float2 c = cs[(long)(pos0 + t) * half + i];
        const float sn = sign * c.y;
        T *p = x + row * 2 * half + i;
        const float a = to_f(p[0]), z = to_f(p[half]);
        p[0] = from_f<T>(a * c.x - z * sn);
        p[half] = from_f<T>(z * c.x + a * sn);
    }
}

// ----------------------------------------------------------------------------
// kernel launchers

/* cs: float [maxpos, d/2, 2] = (cos, sin) of p * base^(-2i/d), computed in double, once. */
inline void rope_table_init(float *cs, int maxpos, int d, float base, cudaStream_t stream) {
    const long n = (long)maxpos * (d / 2);
    rope_table_kernel<<<grid_for(n, 256), 256, 0, stream>>>((float2 *)cs, maxpos, d / 2, d, (double)base);
    cudaCheckLaunch();
}

/* In place on x [B,T,H,d]: rotate by the angles of positions pos0 .. pos0+T-1 (< the table's maxpos). */
template <typename floatX>
void rope_forward(floatX *x, const float *cs, int B, int T, int H, int d, int pos0, cudaStream_t stream) {
    const long n = (long)B * T * H * (d / 2);
    rope_kernel<floatX><<<grid_for(n, 256), 256, 0, stream>>>(x, (const float2 *)cs, n, T, H, d / 2, pos0, 1.0f);
    cudaCheckLaunch();
}
/* In place on the gradient dx [B,T,H,d]: the inverse rotation. */
template <typename floatX>
void rope_backward(floatX *dx, const float *cs, int B, int T, int H, int d, int pos0, cudaStream_t stream) {
    const long n = (long)B * T * H * (d / 2);
    rope_kernel<floatX><<<grid_for(n, 256), 256, 0, stream>>>(dx, (const float2 *)cs, n, T, H, d / 2, pos0, -1.0f);
    cudaCheckLaunch();
}
