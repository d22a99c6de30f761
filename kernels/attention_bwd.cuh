/*
 * attention_bwd.cuh -- the attention backward (contract and design in attention.cuh).
 *
 * With P_j = e^{s_j - lse} the forward's probabilities (recomputed from the saved lse, never stored):
 *   D    = rowsum(dout o out)                 (a pre-pass, one warp per row)
 *   dP_j = dout.v_j,  dS_j = P_j (dP_j - D)   (softmax backward)
 *   dq   = scale sum_j dS_j k_j,  dk_j = scale sum_{t, h in group} dS_j q_t,  dv_j = sum_{t, h in group} P_j dout_t
 * One block owns a KV tile and loops over the query heads of its group and the query tiles that see
 * it, so dk/dv stay in registers (deterministic); dq goes to an fp32 buffer through atomics and a
 * post-pass scales and converts it.
 */
#pragma once
#include "attention_tiles.cuh"

namespace attn {

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
                mma_b2(s, np, a, bb);
                ld_B2<LDM>(bd, dOs, ST, np * 16, ks * 16);
                mma_b2(dp, np, c, bd);
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
                mma_b2(dVa, dq2, pa, bb);
                ld_Bt2<LDM>(bb, Qs, ST, kk * 16, dq2 * 16);
                mma_b2(dKa, dq2, sa, bb);
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
                    mma_b2(acc, np, a, bb);
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
// launcher with an explicit tile choice (NW warps, BK = 16 NW keys per block), and the default one

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

template <typename T, int D, bool LDM>
void backward_dispatch(T *dq, T *dk, T *dv, float *scratch, const T *dout, const T *q, const T *k, const T *v,
                       const T *out, const float *lse, int B, int T_, int Hq, int Hkv, int window, cudaStream_t stream) {
    /* NW = 4 (64 keys per block) for bf16 and fp32 alike */
    backward_launch<T, D, 4, LDM>(dq, dk, dv, scratch, dout, q, k, v, out, lse, B, T_, Hq, Hkv, window, stream);
}

} // namespace attn
