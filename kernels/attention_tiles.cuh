/*
 * attention_tiles.cuh -- the building blocks both attention passes are written in (attention_fwd.cuh,
 * attention_bwd.cuh): fragments of the m16n8k16 tensor-core product, their loads from shared memory,
 * cp.async staging of row tiles, and the causal-window visibility test.
 *
 * The product C (16x8, fp32) += A (16x16) B (16x8) is held by a warp as per-lane fragments (layout
 * below). floatX = __nv_bfloat16 runs it on the tensor cores (mma.sync, operands loaded with
 * ldmatrix); floatX = float (the fp32 test mode) computes the same product exactly with fp32 FMAs on
 * fragments of the same shape, exchanging operands between lanes by shuffles, so both element types
 * run the same tiling, masking and softmax code.
 */
#pragma once
#include <cstdint>
#include "common.cuh"

// ----------------------------------------------------------------------------
// fragments of the m16n8k16 product, for bf16 (tensor cores) and fp32 (exact emulation)
//
// Layout (PTX ISA, mma.m16n8k16, lane = 4 g + t): A (16x16, [m][k]) is 4 pairs:
//   a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..];
// B (16x8, [k][n]) is 2 pairs: b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g];
// C (16x8 fp32) is 4 floats: c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1].
// A pair is two consecutive-k elements: a bf16x2 in a 32-bit register, or a float2.

namespace attn {

constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

template <typename T> struct Pair;
template <> struct Pair<bf16> { typedef uint32_t type; };
template <> struct Pair<float> { typedef float2 type; };

template <typename T> __device__ __forceinline__ typename Pair<T>::type make_pair(float lo, float hi);
template <> __device__ __forceinline__ uint32_t make_pair<bf16>(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (lo) in the low 16 bits */
    return *reinterpret_cast<uint32_t *>(&v);
}
template <> __device__ __forceinline__ float2 make_pair<float>(float lo, float hi) { return make_float2(lo, hi); }

/* (p[0], p[1]) and (p[0], p[stride]) from shared memory, elements kept as they are. */
__device__ __forceinline__ uint32_t ld_pair(const bf16 *p) { return *reinterpret_cast<const uint32_t *>(p); }
__device__ __forceinline__ float2 ld_pair(const float *p) { return make_float2(p[0], p[1]); }
__device__ __forceinline__ uint32_t ld_pair_strided(const bf16 *p, int stride) {
    uint32_t lo = *reinterpret_cast<const uint16_t *>(p), hi = *reinterpret_cast<const uint16_t *>(p + stride);
    return lo | (hi << 16);
}
__device__ __forceinline__ float2 ld_pair_strided(const float *p, int stride) { return make_float2(p[0], p[stride]); }

__device__ __forceinline__ void store_pair(bf16 *p, float x, float y) {
    *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(x, y);
}
__device__ __forceinline__ void store_pair(float *p, float x, float y) { *reinterpret_cast<float2 *>(p) = make_float2(x, y); }

/* c += a b (bf16 tensor cores, mma_bf16 in common.cuh) */
__device__ __forceinline__ void mma(float c[4], const uint32_t a[4], const uint32_t b[2]) { mma_bf16(c, a, b[0], b[1]); }
/* The same product in exact fp32: lane (g, t) needs A rows g, g+8 (held by the 4 lanes 4g..4g+3)
 * and B columns 2t, 2t+1 (held by lanes 8t.. and 8t+4..), fetched by shuffles, 4 k-pairs at a time. */
__device__ __forceinline__ float2 shfl2(float2 v, int src) {
    return make_float2(__shfl_sync(0xffffffffu, v.x, src), __shfl_sync(0xffffffffu, v.y, src));
}
__device__ __forceinline__ void mma(float c[4], const float2 a[4], const float2 b[2]) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll 1 /* (test mode: small code beats speed) */
    for (int s = 0; s < 4; s++) {
        const int la = 4 * g + s, lb0 = 4 * (2 * t) + s, lb1 = 4 * (2 * t + 1) + s;
        float2 A0 = shfl2(a[0], la), A1 = shfl2(a[1], la), A2 = shfl2(a[2], la), A3 = shfl2(a[3], la);
        float2 B00 = shfl2(b[0], lb0), B01 = shfl2(b[1], lb0); /* column 2t:   k = 2s.., 2s+8.. */
        float2 B10 = shfl2(b[0], lb1), B11 = shfl2(b[1], lb1); /* column 2t+1 */
        c[0] = fmaf(A0.x, B00.x, fmaf(A0.y, B00.y, fmaf(A2.x, B01.x, fmaf(A2.y, B01.y, c[0]))));
        c[1] = fmaf(A0.x, B10.x, fmaf(A0.y, B10.y, fmaf(A2.x, B11.x, fmaf(A2.y, B11.y, c[1]))));
        c[2] = fmaf(A1.x, B00.x, fmaf(A1.y, B00.y, fmaf(A3.x, B01.x, fmaf(A3.y, B01.y, c[2]))));
        c[3] = fmaf(A1.x, B10.x, fmaf(A1.y, B10.y, fmaf(A3.x, B11.x, fmaf(A3.y, B11.y, c[3]))));
    }
}

/* Fragment loads from a shared-memory tile s with row stride `st` elements. LDM selects ldmatrix
 * (bf16 only); otherwise plain loads of the same elements (the fp32 path, and a bf16 check).
 *   ld_A  : A[m][k] = s[m0+m][k0+k]                 (row-major A, k contiguous)
 *   ld_At : A[m][k] = s[k0+k][m0+m]                 (A stored k-major)
 *   ld_B2 : B[k][n] = s[n0+n][k0+k], n-tiles n0, n0+8 (B stored n-major, k contiguous)
 *   ld_Bt2: B[k][n] = s[k0+k][n0+n], n-tiles n0, n0+8 (B stored k-major, n contiguous) */
template <bool LDM, typename T, typename P>
__device__ __forceinline__ void ld_A(P a[4], const T *s, int st, int m0, int k0) {
    const int lane = threadIdx.x & 31;
    if constexpr (LDM && sizeof(T) == 2) {
        ldsm_x4(a, s + (m0 + (lane & 15)) * st + k0 + (lane >> 4) * 8);
    } else {
        const int g = lane >> 2, t = lane & 3;
        const T *p = s + (m0 + g) * st + k0 + 2 * t;
        a[0] = ld_pair(p);
        a[1] = ld_pair(p + 8 * st);
        a[2] = ld_pair(p + 8);
        a[3] = ld_pair(p + 8 * st + 8);
    }
}
template <bool LDM, typename T, typename P>
__device__ __forceinline__ void ld_At(P a[4], const T *s, int st, int k0, int m0) {
    const int lane = threadIdx.x & 31;
    if constexpr (LDM && sizeof(T) == 2) {
        const int mi = lane >> 3; /* matrix mi: rows k0 + (mi>>1)*8.., cols m0 + (mi&1)*8.. */
        ldsm_x4_t(a, s + (k0 + (mi >> 1) * 8 + (lane & 7)) * st + m0 + (mi & 1) * 8);
    } else {
        const int g = lane >> 2, t = lane & 3;
        const T *p = s + (k0 + 2 * t) * st + m0 + g;
        a[0] = ld_pair_strided(p, st);
        a[1] = ld_pair_strided(p + 8, st);
        a[2] = ld_pair_strided(p + 8 * st, st);
        a[3] = ld_pair_strided(p + 8 * st + 8, st);
    }
}
template <bool LDM, typename T, typename P>
__device__ __forceinline__ void ld_B2(P b[2][2], const T *s, int st, int n0, int k0) {
    const int lane = threadIdx.x & 31;
    if constexpr (LDM && sizeof(T) == 2) {
        const int mi = lane >> 3; /* matrix mi: rows n0 + (mi>>1)*8.., cols k0 + (mi&1)*8.. */
        uint32_t r[4];
        ldsm_x4(r, s + (n0 + (mi >> 1) * 8 + (lane & 7)) * st + k0 + (mi & 1) * 8);
        b[0][0] = r[0]; b[0][1] = r[1]; b[1][0] = r[2]; b[1][1] = r[3];
    } else {
        const int g = lane >> 2, t = lane & 3;
        const T *p = s + (n0 + g) * st + k0 + 2 * t;
        b[0][0] = ld_pair(p);
        b[0][1] = ld_pair(p + 8);
        b[1][0] = ld_pair(p + 8 * st);
        b[1][1] = ld_pair(p + 8 * st + 8);
    }
}
template <bool LDM, typename T, typename P>
__device__ __forceinline__ void ld_Bt2(P b[2][2], const T *s, int st, int k0, int n0) {
    const int lane = threadIdx.x & 31;
    if constexpr (LDM && sizeof(T) == 2) {
        const int mi = lane >> 3; /* matrix mi: rows k0 + (mi&1)*8.., cols n0 + (mi>>1)*8.. */
        uint32_t r[4];
        ldsm_x4_t(r, s + (k0 + (mi & 1) * 8 + (lane & 7)) * st + n0 + (mi >> 1) * 8);
        b[0][0] = r[0]; b[0][1] = r[1]; b[1][0] = r[2]; b[1][1] = r[3];
    } else {
        const int g = lane >> 2, t = lane & 3;
        const T *p = s + (k0 + 2 * t) * st + n0 + g;
        b[0][0] = ld_pair_strided(p, st);
        b[0][1] = ld_pair_strided(p + 8 * st, st);
        b[1][0] = ld_pair_strided(p + 8, st);
        b[1][1] = ld_pair_strided(p + 8 * st + 8, st);
    }
}
/* The C fragments of n-tiles 2kk, 2kk+1 (16 columns) as the A fragment of k-step kk. */
template <typename T>
__device__ __forceinline__ void c_to_a(typename Pair<T>::type a[4], const float c0[4], const float c1[4]) {
    a[0] = make_pair<T>(c0[0], c0[1]);
    a[1] = make_pair<T>(c0[2], c0[3]);
    a[2] = make_pair<T>(c1[0], c1[1]);
    a[3] = make_pair<T>(c1[2], c1[3]);
}

/* acc[2p] += a b[0], acc[2p+1] += a b[1]: one pair of B fragments (16 columns) for one row tile
 * (the backward's products, one m16 slab per warp). */
template <int NC, typename P>
__device__ __forceinline__ void mma_b2(float (&acc)[NC][4], int p, const P (&a)[4], const P (&b)[2][2]) {
    mma(acc[2 * p], a, b[0]);
    mma(acc[2 * p + 1], a, b[1]);
}
/* acc[mt][2p] += a[mt] b[0] and acc[mt][2p+1] += a[mt] b[1] for every mt: one pair of B fragments
 * (16 columns) feeds the MT row tiles (both forward products, S = Q K^T and O += P V). */
template <int MT, int NC, typename P>
__device__ __forceinline__ void mma_pair(float (&acc)[MT][NC][4], int p, P (&a)[MT][4], P (&b)[2][2]) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++) mma_b2(acc[mt], p, a[mt], b);
}

// ----------------------------------------------------------------------------
// cp.async staging

/* cp.async and the padded row stride (padded<T>(W): W + 16 bytes) are in common.cuh. */

/* ROWS rows of D elements, global rows row0.. of stride gst (rows >= nrows zero-filled), into s. */
template <typename T, int D, int ROWS, int NTHR>
__device__ __forceinline__ void load_rows(T *s, const T *g, long gst, int row0, int nrows) {
    constexpr int EPC = 16 / sizeof(T), CPR = D / EPC, ST = padded<T>(D), TOTAL = ROWS * CPR;
#pragma unroll
    for (int it = 0; it < (TOTAL + NTHR - 1) / NTHR; it++) {
        const int c = it * NTHR + threadIdx.x;
        if (TOTAL % NTHR == 0 || c < TOTAL) {
            const int r = c / CPR, cc = c - r * CPR, row = row0 + r;
            const bool ok = row < nrows;
            cp_async16(s + r * ST + cc * EPC, ok ? g + (long)row * gst + cc * EPC : g, ok ? 16 : 0);
        }
    }
}
/* n floats g[i0 .. i0+n) into s (indices >= nvalid zero-filled); n <= NTHR. */
template <int N, int NTHR>
__device__ __forceinline__ void load_floats(float *s, const float *g, int i0, int nvalid) {
    static_assert(N <= NTHR, "one float per thread");
    const int i = threadIdx.x;
    if (i < N) {
        const bool ok = i0 + i < nvalid;
        cp_async4(s + i, ok ? g + i0 + i : g, ok ? 4 : 0);
    }
}

/* Is key j visible from query i? */
__device__ __forceinline__ bool visible(int i, int j, int window) {
    return j <= i && (window <= 0 || i - j < window);
}

} // namespace attn
