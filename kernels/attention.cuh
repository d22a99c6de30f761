/*
 * attention.cuh -- causal softmax attention (global and sliding-window, grouped KV heads) on the
 * GPU, flash-style, forward and backward (RoPE, applied before it, is rope.cuh).
 *
 * Contract (that of ref_attention_forward/backward in ref/ref_api.h):
 *   q, out [B,T,Hq,d]; k, v [B,T,Hkv,d] (RoPE already applied); query head h reads KV head
 *   h / (Hq/Hkv); scale = 1/sqrt(d). Query t sees keys j with j <= t and, when window > 0,
 *   j >= t - window + 1 (window keys in all, itself included). d in {32, 64, 128}; any T >= 1.
 *   forward:   s_j = q.k_j * scale, lse = log sum_j e^{s_j} (saved, [B,Hq,T] float),
 *              P_j = e^{s_j - lse}, out = sum_j P_j v_j
 *   backward:  D = rowsum(dout o out) (a small pre-pass), dP_j = dout.v_j, dS_j = P_j (dP_j - D),
 *              dq = scale sum_j dS_j k_j, dk_j = scale sum_{t, h in group} dS_j q_t,
 *              dv_j = sum_{t, h in group} P_j dout_t.
 *   dq, dk, dv are WRITTEN (=), not accumulated. dk/dv are deterministic (bitwise reproducible):
 *   one block owns a KV tile and loops, in a fixed order, over every query head of its group and
 *   every query tile that sees it (FlashAttention-2's backward order), so no atomics touch dk/dv.
 *   dq is summed over KV tiles with float atomics into an fp32 scratch buffer (zeroed by the
 *   pre-pass, scaled and converted by a post-pass): dq's last bits may differ run to run.
 *
 * Design. No T x T buffer exists anywhere: the forward keeps, per query row, a running max m and a
 * running sum l (online softmax) and rescales its output accumulator when m grows; it walks the key
 * tiles of its query tile from the diagonal down to the first tile the window reaches, so tiles
 * wholly outside the causal window are never touched (and tiles wholly inside skip the mask).
 * Scores are kept in base 2 (s * scale * log2 e) so every exponential is one exp2.
 * Both passes are written once over "fragments" of the m16n8k16 tensor-core product:
 *   - floatX = __nv_bfloat16: mma.sync m16n8k16 bf16 x bf16 -> fp32 accumulators, operands
 *     loaded from shared memory with ldmatrix (.trans where the operand is stored k-major);
 *   - floatX = float (the fp32 test mode): the same fragments hold fp32 pairs and the product is
 *     computed exactly in fp32 FMAs, the operands exchanged between lanes by shuffles. Slow, but it
 *     runs the very same tiling, masking and softmax code as the bf16 path, in exact fp32.
 * Tiles are staged global -> shared with cp.async (16 bytes per copy, rows past T zero-filled),
 * rows padded by 16 bytes so ldmatrix is bank-conflict free.
 *
 * Launchers (floatX = float or __nv_bfloat16; no allocation, no synchronisation):
 *   attention_forward(out, lse, q, k, v, B, T, Hq, Hkv, d, window, stream)
 *   attention_backward_scratch_bytes(B, T, Hq, d)
 *   attention_backward(dq, dk, dv, scratch, dout, q, k, v, out, lse, B, T, Hq, Hkv, d, window, stream)
 * Pointers must be 16-byte aligned (cudaMalloc'd buffers and [B,T,H,d] slices of them are).
 *
 * Speed: tests/gpu/bench_attention.cu times each variant (the README holds the table). The other tile
 * variants (forward_launch / backward_launch template arguments) stay selectable for that bench.
 */
#pragma once
#include <cassert>
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

/* acc[mt][2p] += a[mt] b[0] and acc[mt][2p+1] += a[mt] b[1] for every mt: one pair of B fragments
 * (16 columns) feeds the MT row tiles (both forward products, S = Q K^T and O += P V). */
template <int MT, int NC, typename P>
__device__ __forceinline__ void mma_pair(float (&acc)[MT][NC][4], int p, P (&a)[MT][4], P (&b)[2][2]) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        mma(acc[mt][2 * p], a[mt], b[0]);
        mma(acc[mt][2 * p + 1], a[mt], b[1]);
    }
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

// ----------------------------------------------------------------------------
// forward: one block per (query tile of BQ = NW*16*MT rows, b, query head); warp w owns the
// MT m16 row slabs (w*MT + mt)*16; key tiles of BK walked from the diagonal down.

template <typename T, int D, int NW, int MT, int BK>
__host__ __device__ constexpr size_t fwd_smem_bytes() {
    return (size_t)(NW * 16 * MT + 2 * BK) * padded<T>(D) * sizeof(T);
}

template <typename T, int D, int NW, int MT, int BK, bool LDM, int MINB, bool QR>
__global__ void __launch_bounds__(NW * 32, MINB)
    attention_forward_kernel(T *__restrict__ out, float *__restrict__ lse, const T *__restrict__ q,
                             const T *__restrict__ k, const T *__restrict__ v, int T_, int Hq, int Hkv,
                             int window, float sl2) {
    typedef typename Pair<T>::type P;
    constexpr int NTHR = NW * 32, BQ = NW * 16 * MT, ST = padded<T>(D);
    constexpr int NT = BK / 8, DT = D / 8, KS = D / 16;
    static_assert(D % 16 == 0 && BK % 16 == 0, "tile shapes");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *Qs = reinterpret_cast<T *>(smem_raw), *Ks = Qs + BQ * ST, *Vs = Ks + BK * ST;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int qb = gridDim.x - 1 - blockIdx.x; /* the longest rows (last tiles) first */
    const int h = blockIdx.y % Hq, b = blockIdx.y / Hq, hk = h / (Hq / Hkv);
    const int q0 = qb * BQ;
    const long qst = (long)Hq * D, kst = (long)Hkv * D;
    const T *qg = q + ((long)b * T_ * Hq + h) * D;
    const T *kg = k + ((long)b * T_ * Hkv + hk) * D;
    const T *vg = v + ((long)b * T_ * Hkv + hk) * D;
    const int kb_hi = min(q0 + BQ - 1, T_ - 1) / BK;
    const int kb_lo = window > 0 ? max(0, q0 - window + 1) / BK : 0;

    load_rows<T, D, BQ, NTHR>(Qs, qg, qst, q0, T_);
    load_rows<T, D, BK, NTHR>(Ks, kg, kst, kb_hi * BK, T_);
    cp_async_commit();

    float o[MT][DT][4], m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int dt = 0; dt < DT; dt++) o[mt][dt][0] = o[mt][dt][1] = o[mt][dt][2] = o[mt][dt][3] = 0.0f;
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
    }
    constexpr bool QREG = MT == 1 && QR; /* Q fragments kept in registers across key tiles */
    P qf[QREG ? KS : 1][4];

    for (int kb = kb_hi; kb >= kb_lo; kb--) {
        const int k0 = kb * BK;
        cp_async_wait_all(); /* K(kb) (and Q) landed */
        __syncthreads();     /* ... for every thread; and every warp is done with Vs */
        load_rows<T, D, BK, NTHR>(Vs, vg, kst, k0, T_);
        cp_async_commit();
        if constexpr (QREG) {
            if (kb == kb_hi) {
#pragma unroll
                for (int ks = 0; ks < KS; ks++) ld_A<LDM>(qf[ks], Qs, ST, warp * 16, ks * 16);
            }
        }
        /* S = Q K^T */
        float s[MT][NT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            P a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                if constexpr (QREG) {
#pragma unroll
                    for (int r = 0; r < 4; r++) a[mt][r] = qf[ks][r];
                } else {
                    ld_A<LDM>(a[mt], Qs, ST, (warp * MT + mt) * 16, ks * 16);
                }
            }
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                P bb[2][2];
                ld_B2<LDM>(bb, Ks, ST, np * 16, ks * 16);
                mma_pair(s, np, a, bb);
            }
        }
        cp_async_wait_all(); /* V(kb) landed */
        __syncthreads();     /* ... for every thread; and every warp is done with Ks */
        if (kb > kb_lo) {
            load_rows<T, D, BK, NTHR>(Ks, kg, kst, k0 - BK, T_);
            cp_async_commit();
        }
        /* online softmax, base 2 */
        const bool need_mask = (k0 + BK - 1 > q0) || (window > 0 && q0 + BQ - 1 - k0 >= window);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            const int ib = q0 + (warp * MT + mt) * 16 + g;
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float x = s[mt][nt][e] * sl2;
                    if (need_mask && !visible(ib + (e >> 1) * 8, k0 + nt * 8 + 2 * t4 + (e & 1), window)) x = -INFINITY;
                    s[mt][nt][e] = x;
                }
#pragma unroll
            for (int r = 0; r < 2; r++) {
                float mx = -INFINITY;
#pragma unroll
                for (int nt = 0; nt < NT; nt++) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * r], s[mt][nt][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float m_new = fmaxf(m[mt][r], mx);
                const float m_use = m_new == -INFINITY ? 0.0f : m_new; /* row with nothing visible yet */
                const float alpha = exp2f(m[mt][r] - m_use);
                m[mt][r] = m_new;
                float ls = 0.0f;
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const float p0 = exp2f(s[mt][nt][2 * r] - m_use), p1 = exp2f(s[mt][nt][2 * r + 1] - m_use);
                    s[mt][nt][2 * r] = p0;
                    s[mt][nt][2 * r + 1] = p1;
                    ls += p0 + p1;
                }
                l[mt][r] = l[mt][r] * alpha + ls; /* this thread's columns only; summed over the quad at the end */
#pragma unroll
                for (int dt = 0; dt < DT; dt++) {
                    o[mt][dt][2 * r] *= alpha;
                    o[mt][dt][2 * r + 1] *= alpha;
                }
            }
        }
        /* O += P V */
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            P pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) c_to_a<T>(pa[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
            for (int dp = 0; dp < DT / 2; dp++) {
                P bb[2][2];
                ld_Bt2<LDM>(bb, Vs, ST, kk * 16, dp * 16);
                mma_pair(o, dp, pa, bb);
            }
        }
    }

    /* out = O / l, lse = (m + log2 l) ln 2 */
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float ls = l[mt][r];
            ls += __shfl_xor_sync(0xffffffffu, ls, 1);
            ls += __shfl_xor_sync(0xffffffffu, ls, 2);
            const int i = q0 + (warp * MT + mt) * 16 + g + 8 * r;
            if (i < T_) {
                const float inv = 1.0f / ls;
                T *orow = out + (((long)b * T_ + i) * Hq + h) * D + 2 * t4;
#pragma unroll
                for (int dt = 0; dt < DT; dt++) store_pair(orow + dt * 8, o[mt][dt][2 * r] * inv, o[mt][dt][2 * r + 1] * inv);
                if (t4 == 0) lse[((long)b * Hq + h) * T_ + i] = (m[mt][r] + log2f(ls)) * LN2;
            }
        }
}

// ----------------------------------------------------------------------------
// backward

/* D[b,h,t] = sum_i dout[b,t,h,i] out[b,t,h,i]; dq_acc row (b,t,h) zeroed. One warp per row. */
template <typename T>
__global__ void attention_bwd_pre_kernel(float *__restrict__ Dd, float *__restrict__ dq_acc, const T *__restrict__ dout,
                                         const T *__restrict__ out, int nrows, int T_, int Hq, int d) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= nrows) return;
    const T *a = dout + (long)row * d, *o = out + (long)row * d;
    float acc = 0.0f;
    for (int i = lane; i < d; i += 32) {
        acc += to_f(a[i]) * to_f(o[i]);
        dq_acc[(long)row * d + i] = 0.0f;
    }
    acc = warp_sum(acc);
    if (lane == 0) {
        const int h = row % Hq, bt = row / Hq, t = bt % T_, b = bt / T_;
        Dd[((long)b * Hq + h) * T_ + t] = acc;
    }
}

template <typename T>
__global__ void attention_bwd_post_kernel(T *__restrict__ dq, const float *__restrict__ dq_acc, long n, float scale) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        dq[i] = from_f<T>(dq_acc[i] * scale);
}

/* One block per (KV tile of BK = NW*16 keys, b, KV head); warp w owns keys w*16..w*16+15. It loops
 * over the query heads of its group and the query tiles (BQ = 64) that see its keys. Per query tile:
 *   S^T = K Q^T, P^T = exp2(S^T sl2 - lse log2 e), dP^T = V dO^T, dS^T = P^T o (dP^T - D)
 *   dV += P^T dO, dK += dS^T Q  (registers, per warp), dS^T -> shared,
 *   dQ_tile += dS K  (warp: 16 queries x D/(NW/4) columns) -> float atomics into dq_acc. */
constexpr int BWD_BQ = 64;

template <typename T, int D, int NW>
__host__ __device__ constexpr size_t bwd_smem_bytes() {
    return (size_t)(2 * NW * 16 + 2 * BWD_BQ) * padded<T>(D) * sizeof(T) +
           (size_t)NW * 16 * padded<T>(BWD_BQ) * sizeof(T) + 2 * BWD_BQ * sizeof(float);
}

template <typename T, int D, int NW, bool LDM>
__global__ void __launch_bounds__(NW * 32)
    attention_backward_kernel(T *__restrict__ dk, T *__restrict__ dv, float *__restrict__ dq_acc,
                              const T *__restrict__ dout, const T *__restrict__ q, const T *__restrict__ k,
                              const T *__restrict__ v, const float *__restrict__ lse, const float *__restrict__ Dd,
                              int T_, int Hq, int Hkv, int window, float scale, float sl2) {
    typedef typename Pair<T>::type P;
    constexpr int NTHR = NW * 32, BK = NW * 16, BQ = BWD_BQ, ST = padded<T>(D), SST = padded<T>(BQ);
    constexpr int NT = BQ / 8, DT = D / 8, KS = D / 16;
    constexpr int CW = D / (NW / 4);       /* dQ columns per warp */
    constexpr int CC = CW < 64 ? CW : 64;  /* ... done CC at a time */
    static_assert(NW % 4 == 0 && D % 16 == 0 && CW % 16 == 0, "tile shapes");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T *Ks = reinterpret_cast<T *>(smem_raw), *Vs = Ks + BK * ST, *Qs = Vs + BK * ST, *dOs = Qs + BQ * ST;
    T *dSs = dOs + BQ * ST;
    float *Ls = reinterpret_cast<float *>(dSs + BK * SST), *Dsm = Ls + BQ;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int kb = blockIdx.x; /* the first key tiles have the most queries: they start first */
    const int hk = blockIdx.y % Hkv, b = blockIdx.y / Hkv, group = Hq / Hkv;
    const int k0 = kb * BK;
    const long qst = (long)Hq * D, kst = (long)Hkv * D;
    const T *kg = k + ((long)b * T_ * Hkv + hk) * D;
    const T *vg = v + ((long)b * T_ * Hkv + hk) * D;
    const int qb_lo = k0 / BQ;
    const int q_hi = window > 0 ? min(T_ - 1, k0 + BK - 1 + window - 1) : T_ - 1;
    const int nq = q_hi / BQ - qb_lo + 1, n_it = group * nq;

    auto load_q_tile = [&](int it) {
        const int h = hk * group + it / nq, q0 = (qb_lo + it % nq) * BQ;
        const long off = ((long)b * T_ * Hq + h) * D;
        load_rows<T, D, BQ, NTHR>(Qs, q + off, qst, q0, T_);
        load_rows<T, D, BQ, NTHR>(dOs, dout + off, qst, q0, T_);
        const long loff = ((long)b * Hq + h) * T_;
        load_floats<BQ, NTHR>(Ls, lse + loff, q0, T_);
        if (threadIdx.x >= BQ) { /* the D values by the other threads (NTHR >= 2 BQ) */
            const int i = threadIdx.x - BQ;
            if (i < BQ) {
                const bool ok = q0 + i < T_;
                cp_async4(Dsm + i, ok ? Dd + loff + q0 + i : Dd, ok ? 4 : 0);
            }
        }
    };
    static_assert(NTHR >= 2 * BQ, "lse and D staged by one thread each");

    load_rows<T, D, BK, NTHR>(Ks, kg, kst, k0, T_);
    load_rows<T, D, BK, NTHR>(Vs, vg, kst, k0, T_);
    load_q_tile(0);
    cp_async_commit();

    float dKa[DT][4], dVa[DT][4];
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dKa[dt][e] = dVa[dt][e] = 0.0f;
    const int jb = k0 + warp * 16 + g; /* this thread's key rows: jb, jb + 8 */

    for (int it = 0; it < n_it; it++) {
        const int h = hk * group + it / nq, q0 = (qb_lo + it % nq) * BQ;
        cp_async_wait_all();
        __syncthreads(); /* Q/dO/lse/D of this tile visible; the last dQ phase is done with dSs */

        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            P a[4], c[4];
            ld_A<LDM>(a, Ks, ST, warp * 16, ks * 16);
            ld_A<LDM>(c, Vs, ST, warp * 16, ks * 16);
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                P bb[2][2], bd[2][2];
                ld_B2<LDM>(bb, Qs, ST, np * 16, ks * 16);
                mma(s[2 * np], a, bb[0]);
                mma(s[2 * np + 1], a, bb[1]);
                ld_B2<LDM>(bd, dOs, ST, np * 16, ks * 16);
                mma(dp[2 * np], c, bd[0]);
                mma(dp[2 * np + 1], c, bd[1]);
            }
        }
        const bool need_mask = (k0 + BK - 1 > q0) || (window > 0 && q0 + BQ - 1 - k0 >= window) || (q0 + BQ > T_);
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const int col = nt * 8 + 2 * t4 + c, i = q0 + col;
                const float l2 = Ls[col] * LOG2E, Dc = Dsm[col];
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    const int e = 2 * r + c;
                    float p = exp2f(s[nt][e] * sl2 - l2);
                    if (need_mask && !(i < T_ && visible(i, jb + 8 * r, window))) p = 0.0f;
                    s[nt][e] = p;
                    dp[nt][e] = p * (dp[nt][e] - Dc);
                }
            }
        /* dS^T -> shared (rows = keys, columns = queries) */
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            T *p = dSs + (warp * 16 + g) * SST + nt * 8 + 2 * t4;
            store_pair(p, dp[nt][0], dp[nt][1]);
            store_pair(p + 8 * SST, dp[nt][2], dp[nt][3]);
        }
        /* dV += P^T dO, dK += dS^T Q */
#pragma unroll
        for (int kk = 0; kk < BQ / 16; kk++) {
            P pa[4], sa[4];
            c_to_a<T>(pa, s[2 * kk], s[2 * kk + 1]);
            c_to_a<T>(sa, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
            for (int dq2 = 0; dq2 < DT / 2; dq2++) {
                P bb[2][2];
                ld_Bt2<LDM>(bb, dOs, ST, kk * 16, dq2 * 16);
                mma(dVa[2 * dq2], pa, bb[0]);
                mma(dVa[2 * dq2 + 1], pa, bb[1]);
                ld_Bt2<LDM>(bb, Qs, ST, kk * 16, dq2 * 16);
                mma(dKa[2 * dq2], sa, bb[0]);
                mma(dKa[2 * dq2 + 1], sa, bb[1]);
            }
        }
        __syncthreads(); /* dSs complete; every warp is done with Qs, dOs, Ls, Dsm */
        if (it + 1 < n_it) {
            load_q_tile(it + 1); /* lands while the dQ phase runs */
            cp_async_commit();
        }
        /* dQ[q0 + slab*16 .., c0 ..] += dS K = (dS^T)^T K */
        const int slab = warp & 3, cbase = (warp >> 2) * CW;
        const int i0 = q0 + slab * 16 + g;
        float *dqrow0 = dq_acc + (((long)b * T_ + i0) * Hq + h) * D + 2 * t4;
        float *dqrow1 = dqrow0 + 8 * qst;
#pragma unroll
#pragma unroll
        for (int cc = 0; cc < CW / CC; cc++) {
            const int c0 = cbase + cc * CC;
            float acc[CC / 8][4];
#pragma unroll
            for (int n = 0; n < CC / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++) {
                P a[4];
                ld_At<LDM>(a, dSs, SST, kk * 16, slab * 16);
#pragma unroll
                for (int np = 0; np < CC / 16; np++) {
                    P bb[2][2];
                    ld_Bt2<LDM>(bb, Ks, ST, kk * 16, c0 + np * 16);
                    mma(acc[2 * np], a, bb[0]);
                    mma(acc[2 * np + 1], a, bb[1]);
                }
            }
#pragma unroll
            for (int n = 0; n < CC / 8; n++) {
                if (i0 < T_) atomicAdd(reinterpret_cast<float2 *>(dqrow0 + c0 + n * 8), make_float2(acc[n][0], acc[n][1]));
                if (i0 + 8 < T_) atomicAdd(reinterpret_cast<float2 *>(dqrow1 + c0 + n * 8), make_float2(acc[n][2], acc[n][3]));
            }
        }
    }

    /* dk = scale dK, dv = dV (written) */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int j = jb + 8 * r;
        if (j < T_) {
            const long off = (((long)b * T_ + j) * Hkv + hk) * D + 2 * t4;
#pragma unroll
            for (int dt = 0; dt < DT; dt++) {
                store_pair(dk + off + dt * 8, dKa[dt][2 * r] * scale, dKa[dt][2 * r + 1] * scale);
                store_pair(dv + off + dt * 8, dVa[dt][2 * r], dVa[dt][2 * r + 1]);
            }
        }
    }
}

// ----------------------------------------------------------------------------
// launchers with explicit tile choices (the bench compares them; tests use the defaults below)

/* NW warps, MT m16 row slabs per warp (BQ = 16 NW MT query rows per block), BK keys per tile,
 * LDM: ldmatrix (bf16), MINB: min blocks per SM for the register cap, QR: Q fragments in registers
 * (MT = 1 only) rather than reloaded from shared memory for each key tile. */
template <typename T, int D, int NW, int MT, int BK, bool LDM, int MINB = 1, bool QR = true>
void forward_launch(T *out, float *lse, const T *q, const T *k, const T *v, int B, int T_, int Hq, int Hkv,
                    int window, cudaStream_t stream) {
    constexpr int BQ = NW * 16 * MT;
    constexpr size_t smem = fwd_smem_bytes<T, D, NW, MT, BK>();
    auto kern = attention_forward_kernel<T, D, NW, MT, BK, LDM, MINB, QR>;
    static bool attr_set = false;
    if (!attr_set) {
        cudaCheck(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr_set = true;
    }
    const float sl2 = (float)(1.0 / sqrt((double)D)) * LOG2E;
    dim3 grid(ceil_div(T_, BQ), B * Hq);
    kern<<<grid, NW * 32, smem, stream>>>(out, lse, q, k, v, T_, Hq, Hkv, window, sl2);
    cudaCheckLaunch();
}

template <typename T, int D, int NW, bool LDM>
void backward_launch(T *dq, T *dk, T *dv, float *scratch, const T *dout, const T *q, const T *k, const T *v,
                     const T *out, const float *lse, int B, int T_, int Hq, int Hkv, int window, cudaStream_t stream) {
    float *dq_acc = scratch, *Dd = scratch + (size_t)B * T_ * Hq * D;
    const int nrows = B * T_ * Hq;
    attention_bwd_pre_kernel<T><<<ceil_div(nrows, 8), 256, 0, stream>>>(Dd, dq_acc, dout, out, nrows, T_, Hq, D);
    cudaCheckLaunch();
    constexpr size_t smem = bwd_smem_bytes<T, D, NW>();
    auto kern = attention_backward_kernel<T, D, NW, LDM>;
    static bool attr_set = false;
    if (!attr_set) {
        cudaCheck(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr_set = true;
    }
    const double scale = 1.0 / sqrt((double)D);
    dim3 grid(ceil_div(T_, NW * 16), B * Hkv);
    kern<<<grid, NW * 32, smem, stream>>>(dk, dv, dq_acc, dout, q, k, v, lse, Dd, T_, Hq, Hkv, window, (float)scale,
                                          (float)scale * LOG2E);
    cudaCheckLaunch();
    const long n = (long)nrows * D;
    attention_bwd_post_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(dq, dq_acc, n, (float)scale);
    cudaCheckLaunch();
}

/* Default tile choices per element type and head size. fp32 (test mode) uses the smallest tiles
 * (its shared-memory tiles are twice as large). */
template <typename T, int D, bool LDM>
void forward_dispatch(T *out, float *lse, const T *q, const T *k, const T *v, int B, int T_, int Hq, int Hkv,
                      int window, cudaStream_t stream) {
    if constexpr (sizeof(T) == 2) forward_launch<T, D, 4, (D <= 64 ? 2 : 1), 64, LDM>(out, lse, q, k, v, B, T_, Hq, Hkv, window, stream);
    else forward_launch<T, D, 4, 1, 64, LDM>(out, lse, q, k, v, B, T_, Hq, Hkv, window, stream);
}
template <typename T, int D, bool LDM>
void backward_dispatch(T *dq, T *dk, T *dv, float *scratch, const T *dout, const T *q, const T *k, const T *v,
                       const T *out, const float *lse, int B, int T_, int Hq, int Hkv, int window, cudaStream_t stream) {
    if constexpr (sizeof(T) == 2) backward_launch<T, D, 4, LDM>(dq, dk, dv, scratch, dout, q, k, v, out, lse, B, T_, Hq, Hkv, window, stream);
    else backward_launch<T, D, 4, LDM>(dq, dk, dv, scratch, dout, q, k, v, out, lse, B, T_, Hq, Hkv, window, stream);
}

inline void check_shapes(int B, int T_, int Hq, int Hkv, int d) {
    if (B < 1 || T_ < 1 || Hq < 1 || Hkv < 1 || Hq % Hkv != 0 || (d != 32 && d != 64 && d != 128)) {
        fprintf(stderr, "attention: unsupported shape B=%d T=%d Hq=%d Hkv=%d d=%d (need Hq %% Hkv == 0, d in {32,64,128})\n",
                B, T_, Hq, Hkv, d);
        exit(EXIT_FAILURE);
    }
}

template <typename T, bool LDM>
void forward_impl(T *out, float *lse, const T *q, const T *k, const T *v, int B, int T_, int Hq, int Hkv, int d,
                  int window, cudaStream_t stream) {
    check_shapes(B, T_, Hq, Hkv, d);
    switch (d) {
    case 32: forward_dispatch<T, 32, LDM>(out, lse, q, k, v, B, T_, Hq, Hkv, window, stream); break;
    case 64: forward_dispatch<T, 64, LDM>(out, lse, q, k, v, B, T_, Hq, Hkv, window, stream); break;
    default: forward_dispatch<T, 128, LDM>(out, lse, q, k, v, B, T_, Hq, Hkv, window, stream); break;
    }
}
template <typename T, bool LDM>
void backward_impl(T *dq, T *dk, T *dv, float *scratch, const T *dout, const T *q, const T *k, const T *v,
                   const T *out, const float *lse, int B, int T_, int Hq, int Hkv, int d, int window,
                   cudaStream_t stream) {
    check_shapes(B, T_, Hq, Hkv, d);
    switch (d) {
    case 32: backward_dispatch<T, 32, LDM>(dq, dk, dv, scratch, dout, q, k, v, out, lse, B, T_, Hq, Hkv, window, stream); break;
    case 64: backward_dispatch<T, 64, LDM>(dq, dk, dv, scratch, dout, q, k, v, out, lse, B, T_, Hq, Hkv, window, stream); break;
    default: backward_dispatch<T, 128, LDM>(dq, dk, dv, scratch, dout, q, k, v, out, lse, B, T_, Hq, Hkv, window, stream); break;
    }
}

} // namespace attn

// ----------------------------------------------------------------------------
// kernel launchers

/* out [B,T,Hq,d] (floatX), lse [B,Hq,T] (float, natural log) from q [B,T,Hq,d], k, v [B,T,Hkv,d].
 * window <= 0: global causal; window > 0: each query sees its last `window` positions. */
template <typename floatX>
void attention_forward(floatX *out, float *lse, const floatX *q, const floatX *k, const floatX *v, int B, int T,
                       int Hq, int Hkv, int d, int window, cudaStream_t stream) {
    attn::forward_impl<floatX, true>(out, lse, q, k, v, B, T, Hq, Hkv, d, window, stream);
}

/* Bytes of the fp32 scratch attention_backward needs: the dq accumulator [B,T,Hq,d] and D [B,Hq,T]. */
inline size_t attention_backward_scratch_bytes(int B, int T, int Hq, int d) {
    return ((size_t)B * T * Hq * d + (size_t)B * Hq * T) * sizeof(float);
}

/* dq [B,T,Hq,d], dk, dv [B,T,Hkv,d] WRITTEN (not accumulated) from dout, the forward's inputs, its
 * out and lse. scratch: attention_backward_scratch_bytes() bytes, 16-byte aligned, no need to
 * clear it. dk/dv bitwise deterministic; dq summed with float atomics (order may vary). */
template <typename floatX>
void attention_backward(floatX *dq, floatX *dk, floatX *dv, void *scratch, const floatX *dout, const floatX *q,
                        const floatX *k, const floatX *v, const floatX *out, const float *lse, int B, int T, int Hq,
                        int Hkv, int d, int window, cudaStream_t stream) {
    attn::backward_impl<floatX, true>(dq, dk, dv, (float *)scratch, dout, q, k, v, out, lse, B, T, Hq, Hkv, d,
                                      window, stream);
}
