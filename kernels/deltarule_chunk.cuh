/*
 * deltarule_chunk.cuh -- stage 3 of the chunkwise delta rule: everything of the backward that is
 * chunk-parallel, one block per (chunk, b*H+h) with all V columns, from the states S_n, dS_{n+1} and
 * U', dU' that the state passes saved (deltarule_states.cuh). With dW = -dU' S_n^T and
 * dM = tril(scale dO U'^T):
 *
 *     dQ = dM K + scale dO S_n^T           dK = dM^T Q + U' dS^T + diag(beta) Tm^T dW + D K + D^T K
 *     dTm = (dW K^T + dU' V^T) diag(beta)  dA = strictly_lower(-Tm^T dTm Tm^T),  D = diag(beta) dA
 *     dbeta = rowsum((Tm^T dW) o K) + rowsum((Tm^T dU') o V) + rowsum(dA o K K^T)
 *
 * The gated form (GATED) is beside the kernel; deltarule.cuh derives it.
 */
#pragma once
#include "deltarule_tiles.cuh"

namespace dr {

/* ---- bwd_chunk: everything chunk-parallel of the backward ----------------------------------------
 * One block per (chunk, b*H+h, V slice): slices of D columns of V (DV = D: one slice). Every
 * gradient is a sum over V columns of terms that need only that slice's columns of V, dO, U', dU',
 * S_n, dS, so with DV = 2D each slice writes fp32 partial dq, dk, dbeta, dg (TO = float) and
 * combine_kernel adds them; with one slice the block writes the gradients themselves (TO = TX). */
template <typename TX, int D, bool GATED> struct ChunkLayout {
    static constexpr bool STG = sizeof(TX) == 2;
    static constexpr int LDD = padded<TX>(D), LDC = padded<TX>(64);
    static constexpr size_t TILE = 64 * LDD * sizeof(TX), SQ = (size_t)D * LDD * sizeof(TX),
                            SC = 64 * LDC * sizeof(TX);
    /* beta, dbeta (, gate, dG, two scalars) | staged Q K V dO U' dU' Tm | staged S_n dS (later: dTm,
     * Y, D) | dM | dW */
    static constexpr size_t O_IN = (2 * 64 + (GATED ? GATE_FLOATS + 64 + 4 : 0)) * 4;
    static constexpr size_t O_ST = O_IN + (STG ? 6 * TILE + SC : 0);
    static constexpr size_t O_DM = O_ST + (STG && 2 * SQ > 3 * SC ? 2 * SQ : 3 * SC);
    static constexpr size_t O_DW = O_DM + SC;
    static constexpr size_t BYTES = O_DW + TILE;
};

/* sum of A o B over two D x D tiles (this thread's share; 16-byte loads from shared memory for bf16) */
template <int D> __device__ __forceinline__ float tile_dot(const Mat<bf16> &A, const Mat<bf16> &B) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < D * D / 8; i += NTHREADS) {
        const int r = i / (D / 8), c = 8 * (i % (D / 8));
        const uint4 a = *reinterpret_cast<const uint4 *>(A.p + r * A.ld + c),
                    b = *reinterpret_cast<const uint4 *>(B.p + r * B.ld + c);
        const __nv_bfloat162 *a2 = reinterpret_cast<const __nv_bfloat162 *>(&a),
                             *b2 = reinterpret_cast<const __nv_bfloat162 *>(&b);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float2 x = __bfloat1622float2(a2[j]), y = __bfloat1622float2(b2[j]);
            s += x.x * y.x + x.y * y.y;
        }
    }
    return s;
}
template <int D> __device__ __forceinline__ float tile_dot(const Mat<float> &A, const Mat<float> &B) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < D * D / 2; i += NTHREADS) {
        const int r = i / (D / 2), c = 2 * (i % (D / 2));
        const float2 a = mat_ld2(A, r, c), b = mat_ld2(B, r, c);
        s += a.x * b.x + a.y * b.y;
    }
    return s;
}

/* Gated, with gam, dec, Gamma of the chunk's gate (deltarule.cuh derives it):
 *     dM = tril(scale dO U'^T) o Gamma     dQ = dM K + scale diag(gam) dO S_n^T
 *     dK = dM^T Q + diag(dec) U' dS^T + diag(beta gam) Tm^T dW + D K + D^T K
 *     dTm = (dW K^T diag(gam) + dU' V^T) diag(beta)         D = diag(beta) (dA o Gamma)
 *     dbeta = gam o rowsum((Tm^T dW) o K) + rowsum((Tm^T dU') o V) + rowsum(dA o Gamma o K K^T)
 * and dG (the cumulative decay's gradient), then dg = its reverse cumulative sum over the chunk. */
template <typename TX, int D, int DV, bool GATED, typename TO>
__global__ void __launch_bounds__(NTHREADS, 1)
    bwd_chunk_kernel(TO *dq, TO *dk, TO *dbeta, float *dg, const TX *dout, const TX *q, const TX *k, const TX *v,
                     const TX *beta, const float *g, const TX *Tm, const TX *h_ws, const TX *u_ws, const TX *dh_ws,
                     const TX *du_ws, float scale, int T, int H, int NC) {
    typedef ChunkLayout<TX, D, GATED> CL;
    constexpr bool STG = CL::STG;
    constexpr int LDD = CL::LDD, LDC = CL::LDC, NTB = D / 32;
    extern __shared__ __align__(16) unsigned char smem[];
    const int n = blockIdx.x, bh = blockIdx.y, vs = blockIdx.z, b = bh / H, h = bh % H, tid = threadIdx.x, w = tid >> 5;
    const int lane = tid & 31;
    const Chunk ck = chunk_at(b, h, n, T, H);
    const size_t ldg = (size_t)H * D, ldv = (size_t)H * DV;
    float *bs = (float *)smem, *dbs = bs + 64, *gt = dbs + 64, *dGs = gt + GATE_FLOATS, *scal = dGs + 64;
    const float *gam = gate_gam(gt), *dec = gate_dec(gt);
    TX *Qs = (TX *)(smem + CL::O_IN), *Ks = Qs + 64 * LDD, *Vs = Ks + 64 * LDD, *dOs = Vs + 64 * LDD,
       *Us = dOs + 64 * LDD, *dUs = Us + 64 * LDD, *Tms = dUs + 64 * LDD;
    TX *Ss = (TX *)(smem + CL::O_ST), *dSs = Ss + D * LDD;
    TX *dTs = (TX *)(smem + CL::O_ST), *Ys = dTs + 64 * LDC, *Ds = Ys + 64 * LDC; /* alias S_n, dS */
    TX *dMs = (TX *)(smem + CL::O_DM), *dWs = (TX *)(smem + CL::O_DW);
    const size_t cbase = (size_t)bh * NC + n, vo = (size_t)vs * D;
    const TX *Ug = u_ws + cbase * 64 * DV + vo, *dUg = du_ws + cbase * 64 * DV + vo, *Tg = Tm + cbase * TM_ELEMS,
             *Sg = h_ws + cbase * D * DV + vo, *dSg = dh_ws + cbase * D * DV + vo;
    const TX *vg = v + ck.row0 * DV + vo, *dOg = dout + ck.row0 * DV + vo;
    if (DV != D) { /* partial sums of slice vs (deltarule.cuh carves them) */
        const size_t N = (size_t)gridDim.y * T;
        dq += vs * N * D;
        dk += vs * N * D;
        dbeta += vs * N;
        dg += vs * N;
    }

    if (tid < 64) {
        bs[tid] = tid < ck.L ? to_f(beta[ck.row0 + (size_t)tid * H]) : 0.0f;
        dbs[tid] = 0.0f;
        if (GATED) dGs[tid] = 0.0f;
    }
    const GateIn gi = GATED ? gate_load(g, ck, H) : GateIn{0.0f, 0.0f};
    if (GATED && tid < 2) scal[tid] = 0.0f;
    if (STG) { /* three groups in order of first use: S1 | S2 | S3 on */
        cp_tile<TX, 64, D>(dOs, LDD, dOg, ldv, ck.L);
        cp_tile<TX, 64, D>(Us, LDD, Ug, DV, 64);
        cp_tile<TX, 64, D>(Ks, LDD, k + ck.row0 * D, ldg, ck.L);
        cp_async_commit();
        cp_tile<TX, D, D>(Ss, LDD, Sg, DV, D);
        cp_tile<TX, 64, D>(dUs, LDD, dUg, DV, 64);
        cp_tile<TX, 64, D>(Qs, LDD, q + ck.row0 * D, ldg, ck.L);
        cp_tile<TX, D, D>(dSs, LDD, dSg, DV, D);
        cp_async_commit();
        cp_tile<TX, 64, D>(Vs, LDD, vg, ldv, ck.L);
        cp_tile<TX, 64, 64>(Tms, LDC, Tg, 64, 64);
        cp_async_commit();
    }
    if (GATED) gate_finish<TX>(gt, gi);
    if (STG) cp_async_wait<2>();
    __syncthreads();
    const Mat<TX> Qm = STG ? Mat<TX>{Qs, LDD, 64} : Mat<TX>{q + ck.row0 * D, (int)ldg, ck.L};
    const Mat<TX> Km = STG ? Mat<TX>{Ks, LDD, 64} : Mat<TX>{k + ck.row0 * D, (int)ldg, ck.L};
    const Mat<TX> Vm = STG ? Mat<TX>{Vs, LDD, 64} : Mat<TX>{vg, (int)ldv, ck.L};
    const Mat<TX> dOm = STG ? Mat<TX>{dOs, LDD, 64} : Mat<TX>{dOg, (int)ldv, ck.L};
    const Mat<TX> Um = STG ? Mat<TX>{Us, LDD, 64} : Mat<TX>{Ug, DV, 64};
    const Mat<TX> dUm = STG ? Mat<TX>{dUs, LDD, 64} : Mat<TX>{dUg, DV, 64};
    const Mat<TX> Tmm = STG ? Mat<TX>{Tms, LDC, 64} : Mat<TX>{Tg, 64, 64};
    const Mat<TX> Sm = STG ? Mat<TX>{Ss, LDD, D} : Mat<TX>{Sg, DV, D};
    const Mat<TX> dSm = STG ? Mat<TX>{dSs, LDD, D} : Mat<TX>{dSg, DV, D};
    const Mat<TX> dMm{dMs, LDC, 64}, dWm{dWs, LDD, 64}, dTm{dTs, LDC, 64}, Ym{Ys, LDC, 64}, Dm{Ds, LDC, 64};

    /* 64x64 results: warp tile 16 x 32; tiles entirely above the diagonal are skipped (zero). */
    const int am0 = 16 * (w & 3), an0 = 32 * (w >> 2);
    const bool lower = an0 <= am0 + 15;
    /* 64xD results: warp tile 32 x D/4. */
    const int bm0 = 32 * (w & 1), bn0 = (D / 4) * (w >> 1);

    /* S1: dM = tril(scale dO U'^T) (o Gamma); G = K K^T (kept in registers for dbeta) */
    float accG[1][4][4], a64[1][4][4];
    zero_acc(accG);
    zero_acc(a64);
    if (lower) {
        warp_mma<1, 4, false, true, D>(a64, dOm, am0, Um, an0);
        warp_mma<1, 4, false, true, D>(accG, Km, am0, Km, an0);
    }
    for_each_pair(a64, am0, an0, [&](int r, int c, float &x0, float &x1) {
        st2(dMs + r * LDC + c, c <= r ? gmul<GATED, TX>(scale * x0, gt, r, c) : 0.0f,
            c + 1 <= r ? gmul<GATED, TX>(scale * x1, gt, r, c + 1) : 0.0f);
    });
    cp_async_wait<1>();
    __syncthreads();

    /* S2: dQ = dM K + scale dO S_n^T; dW = -dU' S_n^T; dK = dM^T Q + U' dS^T (kept).
     * Gated, dG_i gets q_i . dQ_i - k_i . (dM^T Q + diag(dec) U' dS^T)_i, and the last row
     * <dS, S_{n+1}> = gam_63 <dS, S_n> + sum_i k_i . (diag(dec) U' dS^T)_i (in scal[1], scal[0]). */
    float acc[2][NTB][4], accK[2][NTB][4];
    zero_acc(acc);
    warp_mma<2, NTB, false, true, D>(acc, dOm, bm0, Sm, bn0);
    if (GATED) for_each_pair(acc, bm0, bn0, [&](int r, int c, float &x0, float &x1) { x0 *= scale * gam[r]; x1 *= scale * gam[r]; });
    else
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
    if (GATED) row_dot(acc, bm0, bn0, Qm, [&](int r, float s) { atomicAdd(&dGs[r], s); });
    zero_acc(acc);
    warp_mma<2, NTB, false, true, D>(acc, dUm, bm0, Sm, bn0);
    for_each_pair(acc, bm0, bn0, [&](int r, int c, float &x0, float &x1) { st2(dWs + r * LDD + c, -x0, -x1); });
    zero_acc(accK);
    if (GATED) {
        warp_mma<2, NTB, false, true, D>(accK, Um, bm0, dSm, bn0);
        scale_rows<GATED>(accK, bm0, bn0, dec);
        float sd = 0.0f;
        row_dot(accK, bm0, bn0, Km, [&](int r, float s) { sd += s; });
        if ((lane & 3) == 0) atomicAdd(&scal[0], sd);
        warp_mma<2, NTB, true, false, 64>(accK, dMm, bm0, Qm, bn0);
        row_dot(accK, bm0, bn0, Km, [&](int r, float s) { atomicAdd(&dGs[r], -s); });
        const float ss = warp_sum(tile_dot<D>(Sm, dSm)); /* <dS, S_n> */
        if (lane == 0) atomicAdd(&scal[1], ss);
    } else {
        warp_mma<2, NTB, true, false, 64>(accK, dMm, bm0, Qm, bn0);
        warp_mma<2, NTB, false, true, D>(accK, Um, bm0, dSm, bn0);
    }
    cp_async_wait<0>();
    __syncthreads(); /* dW complete; S_n and dS are dead from here (their space is reused) */

    /* S3: dTm = strictly_lower((dW K^T + dU' V^T) diag(beta)) (the strictly-upper part and the
     * diagonal cannot reach dA); dKb = Tm^T dW, dVb = Tm^T dU' -> dK, dbeta (gated: dG too) */
    zero_acc(a64);
    if (lower) {
        warp_mma<1, 4, false, true, D>(a64, dWm, am0, Km, an0);
        if (GATED) for_each_pair(a64, am0, an0, [&](int r, int c, float &x0, float &x1) { x0 *= gam[c]; x1 *= gam[c + 1]; });
        warp_mma<1, 4, false, true, D>(a64, dUm, am0, Vm, an0);
    }
    for_each_pair(a64, am0, an0, [&](int r, int c, float &x0, float &x1) {
        st2(dTs + r * LDC + c, c < r ? x0 * bs[c] : 0.0f, c + 1 < r ? x1 * bs[c + 1] : 0.0f);
    });
    {
        /* partK: rowsum((Tm^T dW) o K), partV: rowsum((Tm^T dU') o V) (ungated: one sum) */
        float partK[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}}, partV[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
        float (&pV)[2][2] = GATED ? partV : partK;
        zero_acc(acc);
        warp_mma<2, NTB, true, false, 64>(acc, Tmm, bm0, dWm, bn0); /* dKb */
        for_each_pair_at(acc, bm0, bn0, [&](int mt, int nt, int hh, int r, int c, float &x0, float &x1) {
            const float f = GATED ? bs[r] * gam[r] : bs[r];
            accK[mt][nt][2 * hh] = fmaf(f, x0, accK[mt][nt][2 * hh]);
            accK[mt][nt][2 * hh + 1] = fmaf(f, x1, accK[mt][nt][2 * hh + 1]);
            const float2 kk = mat_ld2(Km, r, c);
            partK[mt][hh] += x0 * kk.x + x1 * kk.y;
        });
        zero_acc(acc);
        warp_mma<2, NTB, true, false, 64>(acc, Tmm, bm0, dUm, bn0); /* dVb */
        for_each_pair_at(acc, bm0, bn0, [&](int mt, int nt, int hh, int r, int c, float &x0, float &x1) {
            const float2 vv = mat_ld2(Vm, r, c);
            pV[mt][hh] += x0 * vv.x + x1 * vv.y;
        });
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const int r = bm0 + 16 * mt + (lane >> 2) + 8 * hh;
                const float s = quad_sum(partK[mt][hh]);
                if (GATED) {
                    const float sv = quad_sum(partV[mt][hh]);
                    if ((lane & 3) == 0) {
                        atomicAdd(&dbs[r], gam[r] * s + sv);
                        atomicAdd(&dGs[r], gam[r] * bs[r] * s);
                    }
                } else if ((lane & 3) == 0) atomicAdd(&dbs[r], s);
            }
    }
    __syncthreads();

    /* S4: Y = Tm^T dTm */
    zero_acc(a64);
    warp_mma<1, 4, true, false, 64>(a64, Tmm, am0, dTm, an0);
    for_each_pair(a64, am0, an0, [&](int r, int c, float &x0, float &x1) { st2(Ys + r * LDC + c, x0, x1); });
    __syncthreads();

    /* S5: dA = strictly_lower(-Y Tm^T); dbeta += rowsum(dA o G); D = diag(beta) dA. Gated: dA o Gamma
     * in place of dA, and with E = diag(beta) (dA o Gamma o K K^T) = dA o A, dG += rowsum(E) - colsum(E) */
    zero_acc(a64);
    if (lower) warp_mma<1, 4, false, true, 64>(a64, Ym, am0, Tmm, an0);
    {
        float part[2] = {0.0f, 0.0f}, colp[4][2];
#pragma unroll
        for (int nt = 0; nt < 4; nt++) colp[nt][0] = colp[nt][1] = 0.0f;
        for_each_pair_at(a64, am0, an0, [&](int mt, int nt, int hh, int r, int c, float &x0, float &x1) {
            const float d0 = c < r ? gmul<GATED, TX>(-x0, gt, r, c) : 0.0f, d1 = c + 1 < r ? gmul<GATED, TX>(-x1, gt, r, c + 1) : 0.0f;
            part[hh] += d0 * accG[0][nt][2 * hh] + d1 * accG[0][nt][2 * hh + 1];
            if (GATED) {
                colp[nt][0] += bs[r] * (d0 * accG[0][nt][2 * hh]);
                colp[nt][1] += bs[r] * (d1 * accG[0][nt][2 * hh + 1]);
            }
            st2(Ds + r * LDC + c, bs[r] * d0, bs[r] * d1);
        });
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const int r = am0 + (lane >> 2) + 8 * hh;
            const float s = quad_sum(part[hh]);
            if ((lane & 3) == 0) {
                atomicAdd(&dbs[r], s);
                if (GATED) atomicAdd(&dGs[r], bs[r] * s);
            }
        }
        if (GATED) {
#pragma unroll
            for (int nt = 0; nt < 4; nt++)
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    float x = colp[nt][j];
                    x += __shfl_xor_sync(0xffffffffu, x, 4);
                    x += __shfl_xor_sync(0xffffffffu, x, 8);
                    x += __shfl_xor_sync(0xffffffffu, x, 16);
                    if (lane < 4) atomicAdd(&dGs[an0 + 8 * nt + 2 * lane + j], -x);
                }
        }
    }
    __syncthreads();

    /* S6: dK += D K + D^T K */
    warp_mma<2, NTB, false, false, 64>(accK, Dm, bm0, Km, bn0);
    warp_mma<2, NTB, true, false, 64>(accK, Dm, bm0, Km, bn0);
    for_each_pair(accK, bm0, bn0, [&](int r, int c, float &x0, float &x1) {
        if (r < ck.L) st2(dk + (ck.row0 + (size_t)r * H) * D + c, x0, x1);
    });
    if (tid < ck.L) dbeta[ck.row0 + (size_t)tid * H] = from_f<TO>(dbs[tid]);
    if (GATED && tid < 64) { /* dg_j = sum_{i >= j} dG_i (a suffix scan), the last row with the state's term */
        float x = dGs[tid];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const float y = __shfl_down_sync(0xffffffffu, x, o);
            if (lane + o < 32) x += y;
        }
        const float upper = warp_sum(dGs[32 + lane]); /* rows 32..63, for warp 0 */
        if (tid < 32) x += upper;
        x += gam[63] * scal[1] + scal[0];
        if (tid < ck.L) dg[ck.row0 + (size_t)tid * H] = x;
    }
}

/* DV = 2D: the slices' partial gradients (fp32, [NS][...]) summed into the outputs. */
template <int NS> __device__ __forceinline__ float slice_sum(const float *p, size_t n, size_t i) {
    float a = 0.0f;
#pragma unroll
    for (int s = 0; s < NS; s++) a += p[s * n + i];
    return a;
}
template <typename TX, int NS>
__global__ void combine_kernel(TX *dq, TX *dk, TX *dbeta, float *dg, const float *pq, const float *pk, const float *pb,
                               const float *pg, size_t NK, size_t N) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < NK; i += (size_t)gridDim.x * blockDim.x) {
        dq[i] = from_f<TX>(slice_sum<NS>(pq, NK, i));
        dk[i] = from_f<TX>(slice_sum<NS>(pk, NK, i));
        if (i < N) {
            dbeta[i] = from_f<TX>(slice_sum<NS>(pb, N, i));
            dg[i] = slice_sum<NS>(pg, N, i);
        }
    }
}

} // namespace dr
