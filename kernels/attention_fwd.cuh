/*
 * attention_fwd.cuh -- the attention forward (contract and design in attention.cuh).
 *
 * Per query row i (query head h, its KV head hk): s_j = q_i.k_j / sqrt(d) for the visible keys j,
 * lse_i = log sum_j e^{s_j}, out_i = sum_j e^{s_j - lse_i} v_j. The key tiles are walked from the
 * diagonal down with an online softmax: a running max m and sum l per row, the output accumulator
 * O rescaled by e^{m_old - m_new} whenever m grows; at the end out = O / l and lse = m + log l.
 * Scores are kept in base 2 (s * log2 e), so each exponential is one exp2.
 */
#pragma once
#include "attention_tiles.cuh"

namespace attn {

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
// launcher with explicit tile choices (bench_attention.cu compares them), and the default ones

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

/* Default tile choices per element type and head size. fp32 (test mode) uses the smallest tiles
 * (its shared-memory tiles are twice as large). */
template <typename T, int D, bool LDM>
void forward_dispatch(T *out, float *lse, const T *q, const T *k, const T *v, int B, int T_, int Hq, int Hkv,
                      int window, cudaStream_t stream) {
    if constexpr (sizeof(T) == 2) forward_launch<T, D, 4, (D <= 64 ? 2 : 1), 64, LDM>(out, lse, q, k, v, B, T_, Hq, Hkv, window, stream);
    else forward_launch<T, D, 4, 1, 64, LDM>(out, lse, q, k, v, B, T_, Hq, Hkv, window, stream);
}

} // namespace attn
