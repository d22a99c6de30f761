/*
 * deltarule_chunk.cuh -- stage 3 of the chunkwise delta rule: everything of the backward that is
 * chunk-parallel, one block per (chunk, b*H+h) with all V columns, from the states S_n, dS_{n+1} and
 * U', dU' that the state passes saved (deltarule_states.cuh). With dW = -dU' S_n^T and
 * dM = tril(scale dO U'^T):
 *
 *     dQ = dM K + scale dO S_n^T           dK = dM^T Q + U' dS^T + diag(beta) Tm^T dW + D K + D^T K
 *     dTm = (dW K^T + dU' V^T) diag(beta)  dA = strictly_lower(-Tm^T dTm Tm^T),  D = diag(beta) dA
 *     dbeta = rowsum((Tm^T dW) o K) + rowsum((Tm^T dU') o V) + rowsum(dA o K K^T)
 */
#pragma once
#include "deltarule_tiles.cuh"

namespace dr {

/* ---- bwd_chunk: everything chunk-parallel of the backward ---------------------------------------- */
template <typename TX, int D> struct ChunkLayout {
    static constexpr bool STG = sizeof(TX) == 2;
    static constexpr int LDD = padded<TX>(D), LDC = padded<TX>(64);
    static constexpr size_t TILE = 64 * LDD * sizeof(TX), SQ = (size_t)D * LDD * sizeof(TX),
                            SC = 64 * LDC * sizeof(TX);
    /* beta, dbeta | staged Q K V dO U' dU' Tm | staged S_n dS (later: dTm, Y, D) | dM | dW */
    static constexpr size_t O_IN = 2 * 64 * 4;
    static constexpr size_t O_ST = O_IN + (STG ? 6 * TILE + SC : 0);
    static constexpr size_t O_DM = O_ST + (STG && 2 * SQ > 3 * SC ? 2 * SQ : 3 * SC);
    static constexpr size_t O_DW = O_DM + SC;
    static constexpr size_t BYTES = O_DW + TILE;
};

template <typename TX, int D>
__global__ void __launch_bounds__(NTHREADS, 1)
    bwd_chunk_kernel(TX *dq, TX *dk, TX *dbeta, const TX *dout, const TX *q, const TX *k, const TX *v,
                     const TX *beta, const TX *Tm, const TX *h_ws, const TX *u_ws, const TX *dh_ws, const TX *du_ws,
                     float scale, int T, int H, int NC) {
    typedef ChunkLayout<TX, D> CL;
    constexpr bool STG = CL::STG;
    constexpr int LDD = CL::LDD, LDC = CL::LDC, NTB = D / 32;
    extern __shared__ __align__(16) unsigned char smem[];
    const int n = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, tid = threadIdx.x, w = tid >> 5;
    const int lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const Chunk ck = chunk_at(b, h, n, T, H);
    const size_t ldg = (size_t)H * D;
    float *bs = (float *)smem, *dbs = bs + 64;
    TX *Qs = (TX *)(smem + CL::O_IN), *Ks = Qs + 64 * LDD, *Vs = Ks + 64 * LDD, *dOs = Vs + 64 * LDD,
       *Us = dOs + 64 * LDD, *dUs = Us + 64 * LDD, *Tms = dUs + 64 * LDD;
    TX *Ss = (TX *)(smem + CL::O_ST), *dSs = Ss + D * LDD;
    TX *dTs = (TX *)(smem + CL::O_ST), *Ys = dTs + 64 * LDC, *Ds = Ys + 64 * LDC; /* alias S_n, dS */
    TX *dMs = (TX *)(smem + CL::O_DM), *dWs = (TX *)(smem + CL::O_DW);
    const size_t cbase = (size_t)bh * NC + n;
    const TX *Ug = u_ws + cbase * 64 * D, *dUg = du_ws + cbase * 64 * D, *Tg = Tm + cbase * TM_ELEMS,
             *Sg = h_ws + cbase * D * D, *dSg = dh_ws + cbase * D * D;

    if (tid < 64) {
        bs[tid] = tid < ck.L ? to_f(beta[ck.row0 + (size_t)tid * H]) : 0.0f;
        dbs[tid] = 0.0f;
    }
    if (STG) { /* three groups in order of first use: S1 | S2 | S3 on */
        cp_tile<TX, 64, D>(dOs, LDD, dout + ck.row0 * D, ldg, ck.L);
        cp_tile<TX, 64, D>(Us, LDD, Ug, D, 64);
        cp_tile<TX, 64, D>(Ks, LDD, k + ck.row0 * D, ldg, ck.L);
        cp_async_commit();
        cp_tile<TX, D, D>(Ss, LDD, Sg, D, D);
        cp_tile<TX, 64, D>(dUs, LDD, dUg, D, 64);
        cp_tile<TX, 64, D>(Qs, LDD, q + ck.row0 * D, ldg, ck.L);
        cp_tile<TX, D, D>(dSs, LDD, dSg, D, D);
        cp_async_commit();
        cp_tile<TX, 64, D>(Vs, LDD, v + ck.row0 * D, ldg, ck.L);
        cp_tile<TX, 64, 64>(Tms, LDC, Tg, 64, 64);
        cp_async_commit();
        cp_async_wait<2>();
    }
    __syncthreads();
    const Mat<TX> Qm = STG ? Mat<TX>{Qs, LDD, 64} : Mat<TX>{q + ck.row0 * D, (int)ldg, ck.L};
    const Mat<TX> Km = STG ? Mat<TX>{Ks, LDD, 64} : Mat<TX>{k + ck.row0 * D, (int)ldg, ck.L};
    const Mat<TX> Vm = STG ? Mat<TX>{Vs, LDD, 64} : Mat<TX>{v + ck.row0 * D, (int)ldg, ck.L};
    const Mat<TX> dOm = STG ? Mat<TX>{dOs, LDD, 64} : Mat<TX>{dout + ck.row0 * D, (int)ldg, ck.L};
    const Mat<TX> Um = STG ? Mat<TX>{Us, LDD, 64} : Mat<TX>{Ug, D, 64};
    const Mat<TX> dUm = STG ? Mat<TX>{dUs, LDD, 64} : Mat<TX>{dUg, D, 64};
    const Mat<TX> Tmm = STG ? Mat<TX>{Tms, LDC, 64} : Mat<TX>{Tg, 64, 64};
    const Mat<TX> Sm = STG ? Mat<TX>{Ss, LDD, D} : Mat<TX>{Sg, D, D};
    const Mat<TX> dSm = STG ? Mat<TX>{dSs, LDD, D} : Mat<TX>{dSg, D, D};
    const Mat<TX> dMm{dMs, LDC, 64}, dWm{dWs, LDD, 64}, dTm{dTs, LDC, 64}, Ym{Ys, LDC, 64}, Dm{Ds, LDC, 64};

    /* 64x64 results: warp tile 16 x 32; tiles entirely above the diagonal are skipped (zero). */
    const int am0 = 16 * (w & 3), an0 = 32 * (w >> 2);
    const bool lower = an0 <= am0 + 15;
    /* 64xD results: warp tile 32 x D/4. */
    const int bm0 = 32 * (w & 1), bn0 = (D / 4) * (w >> 1);

    /* S1: dM = tril(scale dO U'^T); G = K K^T (kept in registers for dbeta) */
    float accG[1][4][4], a64[1][4][4];
    zero_acc(accG);
    zero_acc(a64);
    if (lower) {
        warp_mma<1, 4, false, true, D>(a64, dOm, am0, Um, an0);
        warp_mma<1, 4, false, true, D>(accG, Km, am0, Km, an0);
    }
    for_each_pair(a64, am0, an0, [&](int r, int c, float &x0, float &x1) {
        st2(dMs + r * LDC + c, c <= r ? scale * x0 : 0.0f, c + 1 <= r ? scale * x1 : 0.0f);
    });
    cp_async_wait<1>();
    __syncthreads();

    /* S2: dQ = dM K + scale dO S_n^T; dW = -dU' S_n^T; dK = dM^T Q + U' dS^T (kept) */
    float acc[2][NTB][4], accK[2][NTB][4];
    zero_acc(acc);
    warp_mma<2, NTB, false, true, D>(acc, dOm, bm0, Sm, bn0);
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int nt = 0; nt < NTB; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mt][nt][e] *= scale;
    warp_mma<2, NTB, false, false, 64>(acc, dMm, bm0, Km, bn0);
    for_each_pair(acc, bm0, bn0, [&](int r, int c, float &x0, float &x1) {
        if (r < ck.L) st2(dq + (ck.row0 + (size_t)r * H) * D + c, x0, x1);
    });
    zero_acc(acc);
    warp_mma<2, NTB, false, true, D>(acc, dUm, bm0, Sm, bn0);
    for_each_pair(acc, bm0, bn0, [&](int r, int c, float &x0, float &x1) { st2(dWs + r * LDD + c, -x0, -x1); });
    zero_acc(accK);
    warp_mma<2, NTB, true, false, 64>(accK, dMm, bm0, Qm, bn0);
    warp_mma<2, NTB, false, true, D>(accK, Um, bm0, dSm, bn0);
    cp_async_wait<0>();
    __syncthreads(); /* dW complete; S_n and dS are dead from here (their space is reused) */

    /* S3: dTm = strictly_lower((dW K^T + dU' V^T) diag(beta)) (the strictly-upper part and the
     * diagonal cannot reach dA); dKb = Tm^T dW, dVb = Tm^T dU' -> dK, dbeta */
    zero_acc(a64);
    if (lower) {
        warp_mma<1, 4, false, true, D>(a64, dWm, am0, Km, an0);
        warp_mma<1, 4, false, true, D>(a64, dUm, am0, Vm, an0);
    }
    for_each_pair(a64, am0, an0, [&](int r, int c, float &x0, float &x1) {
        st2(dTs + r * LDC + c, c < r ? x0 * bs[c] : 0.0f, c + 1 < r ? x1 * bs[c + 1] : 0.0f);
    });
    {
        float part[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
        zero_acc(acc);
        warp_mma<2, NTB, true, false, 64>(acc, Tmm, bm0, dWm, bn0); /* dKb */
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int nt = 0; nt < NTB; nt++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int r = bm0 + 16 * mt + g + 8 * hh, c = bn0 + 8 * nt + 2 * t4;
                    const float x0 = acc[mt][nt][2 * hh], x1 = acc[mt][nt][2 * hh + 1];
                    accK[mt][nt][2 * hh] = fmaf(bs[r], x0, accK[mt][nt][2 * hh]);
                    accK[mt][nt][2 * hh + 1] = fmaf(bs[r], x1, accK[mt][nt][2 * hh + 1]);
                    const float2 kk = mat_ld2(Km, r, c);
                    part[mt][hh] += x0 * kk.x + x1 * kk.y;
                }
        zero_acc(acc);
        warp_mma<2, NTB, true, false, 64>(acc, Tmm, bm0, dUm, bn0); /* dVb */
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int nt = 0; nt < NTB; nt++)
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int r = bm0 + 16 * mt + g + 8 * hh, c = bn0 + 8 * nt + 2 * t4;
                    const float2 vv = mat_ld2(Vm, r, c);
                    part[mt][hh] += acc[mt][nt][2 * hh] * vv.x + acc[mt][nt][2 * hh + 1] * vv.y;
                }
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const float s = quad_sum(part[mt][hh]);
                if (t4 == 0) atomicAdd(&dbs[bm0 + 16 * mt + g + 8 * hh], s);
            }
    }
    __syncthreads();

    /* S4: Y = Tm^T dTm */
    zero_acc(a64);
    warp_mma<1, 4, true, false, 64>(a64, Tmm, am0, dTm, an0);
    for_each_pair(a64, am0, an0, [&](int r, int c, float &x0, float &x1) { st2(Ys + r * LDC + c, x0, x1); });
    __syncthreads();

    /* S5: dA = strictly_lower(-Y Tm^T); dbeta += rowsum(dA o G); D = diag(beta) dA */
    zero_acc(a64);
    if (lower) warp_mma<1, 4, false, true, 64>(a64, Ym, am0, Tmm, an0);
    {
        float part[2] = {0.0f, 0.0f};
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const int r = am0 + g + 8 * hh, c = an0 + 8 * nt + 2 * t4;
                const float d0 = c < r ? -a64[0][nt][2 * hh] : 0.0f, d1 = c + 1 < r ? -a64[0][nt][2 * hh + 1] : 0.0f;
                part[hh] += d0 * accG[0][nt][2 * hh] + d1 * accG[0][nt][2 * hh + 1];
                st2(Ds + r * LDC + c, bs[r] * d0, bs[r] * d1);
            }
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const float s = quad_sum(part[hh]);
            if (t4 == 0) atomicAdd(&dbs[am0 + g + 8 * hh], s);
        }
    }
    __syncthreads();

    /* S6: dK += D K + D^T K */
    warp_mma<2, NTB, false, false, 64>(accK, Dm, bm0, Km, bn0);
    warp_mma<2, NTB, true, false, 64>(accK, Dm, bm0, Km, bn0);
    for_each_pair(accK, bm0, bn0, [&](int r, int c, float &x0, float &x1) {
        if (r < ck.L) st2(dk + (ck.row0 + (size_t)r * H) * D + c, x0, x1);
    });
    if (tid < ck.L) dbeta[ck.row0 + (size_t)tid * H] = from_f<TX>(dbs[tid]);
}

} // namespace dr
