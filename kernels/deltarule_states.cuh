/*
 * deltarule_states.cuh -- stage 2 of the chunkwise delta rule: the sequential passes over chunks that
 * carry the state. One block per (V tile of BV columns, b*H+h); columns of S evolve independently.
 *
 * Forward pass, chunk n with incoming state S_n (S_0 = 0):
 *     X  = V - K S_n                       U' = Tm diag(beta) X      (= U - W S_n)
 *     O  = scale (Q S_n + M U')            S_{n+1} = S_n + K^T U',   M = tril(Q K^T)
 * Reverse pass, dS = dL/dS_{n+1} (0 after the last chunk), chunks from last to first:
 *     dU' = scale M^T dO + K dS            dV = diag(beta) Tm^T dU'
 *     dS_n = dS + scale Q^T dO - K^T dV
 * fwd_kernel runs the forward pass and writes O. bwd_states_kernel runs both passes side by side
 * (the forward one again, saving S_n and U'; the reverse one saving dS_{n+1} and dU' and writing
 * dV) for the chunk-parallel rest of the backward (deltarule_chunk.cuh). The two passes share their
 * stage handling (stage_load, stage_acquire, stage_enter, save_state). The gated forms (GATED, with the
 * chunk's gate in the stage) are beside each pass; deltarule.cuh derives them.
 */
#pragma once
#include "deltarule_tiles.cuh"

namespace dr {

/* ---- the state passes ------------------------------------------------------------------------------
 * One block per (V tile, b*H+h), sequential over chunks. Per chunk a "stage" in shared memory holds
 * beta, when GATED the chunk's gate (deltarule_tiles.cuh), and (bf16 only: fp32 reads global memory
 * directly) the K tile, a V-wide tile (V or dO), Tm, and when HAS_Q the Q tile. NST = 2
 * double-buffers the stages with cp.async. Rows of q, k are D wide, rows of v, o, dO are DV wide. */
template <typename TX, int D, int BV, bool HAS_Q, bool GATED> struct StageLayout {
    static constexpr bool STG = sizeof(TX) == 2;
    static constexpr int LDD = padded<TX>(D), LDV = padded<TX>(BV), LDC = padded<TX>(64);
    static constexpr size_t O_K = (64 + (GATED ? GATE_FLOATS : 0)) * 4;
    static constexpr size_t O_V = O_K + (STG ? 64 * LDD * sizeof(TX) : 0);
    static constexpr size_t O_TM = O_V + (STG ? 64 * LDV * sizeof(TX) : 0);
    static constexpr size_t O_Q = O_TM + (STG ? 64 * LDC * sizeof(TX) : 0);
    static constexpr size_t BYTES = O_Q + (STG && HAS_Q ? 64 * LDD * sizeof(TX) : 0);
    /* after NST stages: the state copy [D][LDV], two [64][LDV] scratch tiles, M [64][LDC] (HAS_Q),
     * and when GATED && HAS_Q a third [64][LDV] tile (forward: the decayed U'; reverse: gam dO) */
    static constexpr size_t SCRATCH = (size_t)(D + 128 + (GATED && HAS_Q ? 64 : 0)) * LDV * sizeof(TX) +
                                      (HAS_Q ? 64 * LDC * sizeof(TX) : 0);
    static constexpr size_t smem(int nst) { return nst * BYTES + SCRATCH; }
};

template <typename TX> struct StagePtrs {
    float *beta, *gate;
    TX *K, *V, *Tm, *Q;
};
template <typename TX, int D, int BV, bool HAS_Q, bool GATED>
__device__ __forceinline__ StagePtrs<TX> stage_ptrs(unsigned char *smem, int s) {
    typedef StageLayout<TX, D, BV, HAS_Q, GATED> SL;
    unsigned char *p = smem + s * SL::BYTES;
    return StagePtrs<TX>{(float *)p, (float *)p + 64, (TX *)(p + SL::O_K), (TX *)(p + SL::O_V),
                         (TX *)(p + SL::O_TM), (TX *)(p + SL::O_Q)};
}

/* Fill stage s with chunk n: beta (fp32), the gate when GATED, and for bf16 by cp.async (one
 * committed group) the K tile, the V-wide tile of vw at column v0 (V in the forward pass, dO in the
 * reverse pass), Tm and, when HAS_Q, the Q tile. fp32 stages hold beta and the gate only (the
 * products read global memory). */
template <typename TX, int D, int DV, int BV, bool HAS_Q, bool GATED>
__device__ __forceinline__ void stage_load(unsigned char *smem, int s, int n, int b, int h, int bh, int v0,
                                           const TX *q, const TX *k, const TX *vw, const TX *beta, const float *g,
                                           const TX *Tm, int T, int H, int NC) {
    typedef StageLayout<TX, D, BV, HAS_Q, GATED> SL;
    const int tid = threadIdx.x;
    const size_t ldg = (size_t)H * D, ldv = (size_t)H * DV;
    const StagePtrs<TX> st = stage_ptrs<TX, D, BV, HAS_Q, GATED>(smem, s);
    const Chunk ck = chunk_at(b, h, n, T, H);
    if (!GATED) {
        if (tid < 64) st.beta[tid] = tid < ck.L ? to_f(beta[ck.row0 + (size_t)tid * H]) : 0.0f;
    }
    /* gated: beta and g are loaded first and stored after the copies are issued (their latency hides) */
    const float bv = GATED && tid < ck.L ? to_f(beta[ck.row0 + (size_t)tid * H]) : 0.0f;
    const GateIn gi = GATED ? gate_load(g, ck, H) : GateIn{0.0f, 0.0f};
    if (SL::STG) {
        cp_tile<TX, 64, D>(st.K, SL::LDD, k + ck.row0 * D, ldg, ck.L);
        cp_tile<TX, 64, BV>(st.V, SL::LDV, vw + ck.row0 * DV + v0, ldv, ck.L);
        cp_tile<TX, 64, 64>(st.Tm, SL::LDC, Tm + ((size_t)bh * NC + n) * TM_ELEMS, 64, 64);
        if (HAS_Q) cp_tile<TX, 64, D>(st.Q, SL::LDD, q + ck.row0 * D, ldg, ck.L);
        cp_async_commit();
    }
    if (GATED) {
        if (tid < 64) st.beta[tid] = bv;
        gate_finish<TX>(st.gate, gi);
    }
}

/* Make stage s hold chunk n, the double-buffer step of both passes. NST = 2: chunk `next` (the one
 * after n in the pass's direction, when has_next) is prefetched into the other stage first, then
 * only chunk n's group is waited for; NST = 1: chunk n is loaded and waited for. Ends with a barrier. */
template <int NST, typename Load>
__device__ __forceinline__ void stage_acquire(const Load &load, int n, int s, int next, bool has_next) {
    if (NST == 2) {
        if (has_next) { load(next, s ^ 1); cp_async_wait<1>(); }
        else cp_async_wait<0>();
    } else {
        load(n, 0);
        cp_async_wait<0>();
    }
    __syncthreads();
}

/* Chunk n as a pass sees it once its stage is in: the stage, the rows, and the operands (from the
 * stage for bf16, straight from global memory for fp32). */
template <typename TX> struct StageView {
    StagePtrs<TX> st;
    Chunk ck;
    Mat<TX> K, V, Tm, Q;
};
template <typename TX, int D, int DV, int BV, bool HAS_Q, bool GATED, int NST, typename Load>
__device__ __forceinline__ StageView<TX> stage_enter(unsigned char *smem, const Load &load, int n, int next,
                                                     bool has_next, int b, int h, int bh, int v0, const TX *q,
                                                     const TX *k, const TX *vw, const TX *Tm, int T, int H, int NC) {
    typedef StageLayout<TX, D, BV, HAS_Q, GATED> SL;
    constexpr bool STG = SL::STG;
    const int s = NST == 2 ? (n & 1) : 0;
    stage_acquire<NST>(load, n, s, next, has_next);
    StageView<TX> m;
    m.st = stage_ptrs<TX, D, BV, HAS_Q, GATED>(smem, s);
    m.ck = chunk_at(b, h, n, T, H);
    const size_t ldg = (size_t)H * D, ldv = (size_t)H * DV;
    m.K = STG ? Mat<TX>{m.st.K, SL::LDD, 64} : Mat<TX>{k + m.ck.row0 * D, (int)ldg, m.ck.L};
    m.V = STG ? Mat<TX>{m.st.V, SL::LDV, 64} : Mat<TX>{vw + m.ck.row0 * DV + v0, (int)ldv, m.ck.L};
    m.Tm = STG ? Mat<TX>{m.st.Tm, SL::LDC, 64} : Mat<TX>{Tm + ((size_t)bh * NC + n) * TM_ELEMS, 64, 64};
    m.Q = STG ? Mat<TX>{m.st.Q, SL::LDD, 64} : Mat<TX>{q + m.ck.row0 * D, (int)ldg, m.ck.L};
    return m;
}

/* Save the block's state tile: D rows of BV columns from shared (row stride LDV) to global dst (row
 * stride DV), 16 bytes at a time. */
template <typename TX, int D, int DV, int BV, int LDV>
__device__ __forceinline__ void save_state(TX *dst, const TX *src) {
    constexpr int VEC = 16 / sizeof(TX), CPR = BV / VEC;
    for (int i = threadIdx.x; i < D * CPR; i += NTHREADS) {
        const int r = i / CPR, c = (i % CPR) * VEC;
        *reinterpret_cast<uint4 *>(dst + (size_t)r * DV + c) = *reinterpret_cast<const uint4 *>(src + r * LDV + c);
    }
}

/* The start of a pass: the state copy (n elements) zeroed and, when double-buffered, the first
 * chunk's stage (chunk `first`, stage first & 1) requested. */
template <typename TX, int n, int NST, typename Load>
__device__ __forceinline__ void pass_start(TX *Sb, const Load &load, int first) {
    for (int i = threadIdx.x; i < n; i += NTHREADS) Sb[i] = from_f<TX>(0.0f);
    if (NST == 2) load(first, first & 1);
}

/* Multiply every element of an accumulator by x. */
template <int MT, int NT> __device__ __forceinline__ void scale_acc(float (&acc)[MT][NT][4], float x) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mt][nt][e] *= x;
}

/* Forward state pass. OUT: write o (needs Q; M is formed here). !OUT: save S_n (hsave) and U'
 * (usave). Gated (gam, dec, Gamma of the chunk's gate):
 *     X = V - diag(gam) K S_n      O = scale (diag(gam) Q S_n + (M o Gamma) U')
 *     S_{n+1} = gam_63 S_n + K^T diag(dec) U' */
template <typename TX, int D, int DV, int BV, bool OUT, bool GATED, int NST>
__device__ __forceinline__ void state_forward(unsigned char *smem, TX *o, TX *hsave, TX *usave, const TX *q,
                                              const TX *k, const TX *v, const TX *beta, const float *g,
                                              const TX *Tm, float scale, int T, int H, int NC, int bh, int vt) {
    typedef StageLayout<TX, D, BV, OUT, GATED> SL;
    constexpr int LDV = SL::LDV, LDC = SL::LDC, NT = BV / 16, MTS = D / 64;
    constexpr bool UD = GATED && OUT; /* a separate tile for diag(dec) U' (!OUT: Us holds it) */
    const int b = bh / H, h = bh % H, v0 = vt * BV, tid = threadIdx.x, w = tid >> 5, wr = w & 3, wc = w >> 2;
    TX *Sb = (TX *)(smem + NST * SL::BYTES); /* [D][LDV]: S_n as floatX, the B operand */
    TX *Xs = Sb + D * LDV;                   /* [64][LDV]: diag(beta) X */
    TX *Us = Xs + 64 * LDV;                  /* [64][LDV]: U' (gated, !OUT: diag(dec) U') */
    TX *Uds = UD ? Us + 64 * LDV : Us;       /* [64][LDV]: diag(dec) U' (gated, OUT) */
    TX *Ms = Uds + 64 * LDV;                 /* [64][LDC]: M (OUT only) */
    const int cm0 = 16 * wr, cn0 = wc * (BV / 2), sm0 = wr * (D / 4);

    auto load = [&](int n, int s) {
        stage_load<TX, D, DV, BV, OUT, GATED>(smem, s, n, b, h, bh, v0, q, k, v, beta, g, Tm, T, H, NC);
    };

    float accS[MTS][NT][4];
    zero_acc(accS);
    pass_start<TX, D * LDV, NST>(Sb, load, 0);
    for (int n = 0; n < NC; n++) {
        const StageView<TX> sv =
            stage_enter<TX, D, DV, BV, OUT, GATED, NST>(smem, load, n, n + 1, n + 1 < NC, b, h, bh, v0, q, k, v, Tm, T, H, NC);
        const Chunk ck = sv.ck;
        const float *bs = sv.st.beta, *gt = sv.st.gate, *gam = gate_gam(gt), *dec = gate_dec(gt);
        const Mat<TX> Sm{Sb, LDV, D}, Xm{Xs, LDV, 64}, Um{Us, LDV, 64}, Udm{Uds, LDV, 64}, Mmm{Ms, LDC, 64};
        if (!OUT) /* save S_n (this tile's columns) */
            save_state<TX, D, DV, BV, LDV>(hsave + ((size_t)bh * NC + n) * D * DV + v0, Sb);
        /* X = V - K S_n, stored scaled by beta (rows); O1 = Q S_n; M = tril(Q K^T) */
        float accX[1][NT][4], accO[1][NT][4];
        zero_acc(accX);
        zero_acc(accO);
        if (OUT) fwd_first<NT, D, GATED>(accX, accO, sv.K, sv.Q, Sm, Ms, LDC, cm0, cn0, 32 * wc, gt);
        else warp_mma<1, NT, false, false, D>(accX, sv.K, cm0, Sm, cn0);
        if (OUT) scale_rows<GATED>(accO, cm0, cn0, gam);
        for_each_pair(accX, cm0, cn0, [&](int r, int c, float &x0, float &x1) {
            const float2 vv = mat_ld2(sv.V, r, c);
            const float bb = bs[r];
            if (GATED) /* one explicit fma: the same rounding in every instantiation */
                st2(Xs + r * LDV + c, fmaf(-gam[r], x0, vv.x) * bb, fmaf(-gam[r], x1, vv.y) * bb);
            else st2(Xs + r * LDV + c, (vv.x - x0) * bb, (vv.y - x1) * bb);
        });
        __syncthreads();
        /* U' = Tm diag(beta) X */
        float accU[1][NT][4];
        zero_acc(accU);
        warp_mma<1, NT, false, false, 64>(accU, sv.Tm, cm0, Xm, cn0);
        for_each_pair(accU, cm0, cn0, [&](int r, int c, float &x0, float &x1) {
            if (!OUT) st2(usave + ((size_t)bh * NC * 64 + n * 64 + r) * DV + v0 + c, x0, x1);
            if (GATED && !OUT) st2(Us + r * LDV + c, dec[r] * x0, dec[r] * x1);
            else st2(Us + r * LDV + c, x0, x1);
            if (UD) st2(Uds + r * LDV + c, dec[r] * x0, dec[r] * x1);
        });
        __syncthreads();
        if (OUT) { /* O = scale (Q S_n + M U') */
            warp_mma<1, NT, false, false, 64>(accO, Mmm, cm0, Um, cn0);
            for_each_pair(accO, cm0, cn0, [&](int r, int c, float &x0, float &x1) {
                if (r < ck.L) st2(o + (ck.row0 + (size_t)r * H) * DV + v0 + c, scale * x0, scale * x1);
            });
        }
        /* S_{n+1} = S_n + K^T U' */
        if (GATED) scale_acc(accS, gam[63]);
        warp_mma<MTS, NT, true, false, 64>(accS, sv.K, sm0, Udm, cn0);
        for_each_pair(accS, sm0, cn0, [&](int r, int c, float &x0, float &x1) { st2(Sb + r * LDV + c, x0, x1); });
        __syncthreads();
    }
}

/* Reverse state pass: dS (this tile's columns) from the last chunk to the first; saves dS_{n+1}
 * (dhsave) and dU' (dusave), writes dv. Stage V slot holds the dO tile. Gated:
 *     dU' = scale (M o Gamma)^T dO + diag(dec) K dS      dV = diag(beta) Tm^T dU'
 *     dS_n = gam_63 dS + scale Q^T diag(gam) dO - K^T diag(gam) dV */
template <typename TX, int D, int DV, int BV, bool GATED, int NST>
__device__ __forceinline__ void state_backward(unsigned char *smem, TX *dv, TX *dhsave, TX *dusave, const TX *dout,
                                               const TX *q, const TX *k, const TX *beta, const float *g, const TX *Tm,
                                               float scale, int T, int H, int NC, int bh, int vt) {
    typedef StageLayout<TX, D, BV, true, GATED> SL;
    constexpr int LDV = SL::LDV, LDC = SL::LDC, NT = BV / 16, MTS = D / 64;
    const int b = bh / H, h = bh % H, v0 = vt * BV, tid = threadIdx.x, w = tid >> 5, wr = w & 3, wc = w >> 2;
    TX *dSb = (TX *)(smem + NST * SL::BYTES); /* [D][LDV]: dS_{n+1} as floatX */
    TX *dUs = dSb + D * LDV;                  /* [64][LDV]: dU' */
    TX *dVs = dUs + 64 * LDV;                 /* [64][LDV]: -dV (gated: -diag(gam) dV) */
    TX *Ms = dVs + 64 * LDV;                  /* [64][LDC]: M */
    TX *dOg = Ms + 64 * LDC;                  /* [64][LDV]: diag(gam) dO (gated only) */
    const int cm0 = 16 * wr, cn0 = wc * (BV / 2), sm0 = wr * (D / 4);

    auto load = [&](int n, int s) {
        stage_load<TX, D, DV, BV, true, GATED>(smem, s, n, b, h, bh, v0, q, k, dout, beta, g, Tm, T, H, NC);
    };

    float accD[MTS][NT][4];
    zero_acc(accD);
    pass_start<TX, D * LDV, NST>(dSb, load, NC - 1);
    for (int n = NC - 1; n >= 0; n--) {
        const StageView<TX> sv =
            stage_enter<TX, D, DV, BV, true, GATED, NST>(smem, load, n, n - 1, n > 0, b, h, bh, v0, q, k, dout, Tm, T, H, NC);
        const Chunk ck = sv.ck;
        const Mat<TX> Km = sv.K, dOm = sv.V;
        const float *bs = sv.st.beta, *gt = sv.st.gate, *gam = gate_gam(gt), *dec = gate_dec(gt);
        const Mat<TX> dSm{dSb, LDV, D}, dUm{dUs, LDV, 64}, dVm{dVs, LDV, 64}, Mmm{Ms, LDC, 64}, dOgm{dOg, LDV, 64};
        save_state<TX, D, DV, BV, LDV>(dhsave + ((size_t)bh * NC + n) * D * DV + v0, dSb); /* dS_{n+1} */
        /* M = tril(Q K^T); K dS */
        float acc1[1][NT][4], acc2[1][NT][4];
        zero_acc(acc1);
        zero_acc(acc2);
        chunk_qk_tril<TX, D, GATED>(Ms, LDC, sv.Q, Km, gt);
        warp_mma<1, NT, false, false, D>(acc2, Km, cm0, dSm, cn0);
        if (GATED)
            for (int i = tid; i < 64 * BV / 2; i += NTHREADS) {
                const int r = i / (BV / 2), c = 2 * (i % (BV / 2));
                const float2 x = mat_ld2(dOm, r, c);
                st2(dOg + r * LDV + c, gam[r] * x.x, gam[r] * x.y);
            }
        __syncthreads();
        /* dU' = scale M^T dO + K dS */
        warp_mma<1, NT, true, false, 64>(acc1, Mmm, cm0, dOm, cn0);
        scale_rows<GATED>(acc2, cm0, cn0, dec);
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc1[0][nt][e] = fmaf(scale, acc1[0][nt][e], acc2[0][nt][e]);
        for_each_pair(acc1, cm0, cn0, [&](int r, int c, float &x0, float &x1) {
            st2(dUs + r * LDV + c, x0, x1);
            st2(dusave + ((size_t)bh * NC * 64 + n * 64 + r) * DV + v0 + c, x0, x1);
        });
        __syncthreads();
        /* dV = diag(beta) Tm^T dU' */
        zero_acc(acc2);
        warp_mma<1, NT, true, false, 64>(acc2, sv.Tm, cm0, dUm, cn0);
        for_each_pair(acc2, cm0, cn0, [&](int r, int c, float &x0, float &x1) {
            const float bb = bs[r], d0 = bb * x0, d1 = bb * x1;
            if (r < ck.L) st2(dv + (ck.row0 + (size_t)r * H) * DV + v0 + c, d0, d1);
            if (GATED) st2(dVs + r * LDV + c, -gam[r] * d0, -gam[r] * d1);
            else st2(dVs + r * LDV + c, -d0, -d1);
        });
        __syncthreads();
        /* dS_n = dS + scale Q^T dO - K^T dV */
        float accT[MTS][NT][4];
        zero_acc(accT);
        warp_mma<MTS, NT, true, false, 64>(accT, sv.Q, sm0, GATED ? dOgm : dOm, cn0);
        if (GATED) scale_acc(accD, gam[63]);
#pragma unroll
        for (int mt = 0; mt < MTS; mt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) accD[mt][nt][e] = fmaf(scale, accT[mt][nt][e], accD[mt][nt][e]);
        warp_mma<MTS, NT, true, false, 64>(accD, Km, sm0, dVm, cn0);
        for_each_pair(accD, sm0, cn0, [&](int r, int c, float &x0, float &x1) { st2(dSb + r * LDV + c, x0, x1); });
        __syncthreads();
    }
}

/* Shared-memory bytes -> how many blocks of 256 threads should fit on one SM (launch bounds). */
constexpr size_t SMEM_PER_SM = 233472;          /* 228 KiB: shared memory of one sm_90 SM (H100, H200) */
constexpr size_t SMEM_RESERVED_PER_BLOCK = 1024; /* what the driver reserves per resident block */
__host__ __device__ constexpr int blocks_per_sm(size_t smem) {
    return 2 * (smem + SMEM_RESERVED_PER_BLOCK) <= SMEM_PER_SM ? 2 : 1;
}

template <typename TX, int D, int DV, bool GATED, int BV, int NST>
__global__ void __launch_bounds__(NTHREADS, 1)
    fwd_kernel(TX *o, const TX *q, const TX *k, const TX *v, const TX *beta, const float *g, const TX *Tm,
               float scale, int T, int H, int NC) {
    extern __shared__ __align__(16) unsigned char smem[];
    state_forward<TX, D, DV, BV, true, GATED, NST>(smem, o, nullptr, nullptr, q, k, v, beta, g, Tm, scale, T, H, NC,
                                                   blockIdx.y, blockIdx.x);
}

/* Both state passes of the backward in one launch: blockIdx.x = 2 * vtile + role (role 0: the
 * forward states again, NST0 stages; role 1: the reverse pass, NST1 stages). */
template <typename TX, int D, bool GATED, int BV, int NST0, int NST1> struct StatesCfg {
    static constexpr size_t S0 = StageLayout<TX, D, BV, false, GATED>::smem(NST0),
                            S1 = StageLayout<TX, D, BV, true, GATED>::smem(NST1);
    static constexpr size_t SMEM = S0 > S1 ? S0 : S1;
    static constexpr int MINB = blocks_per_sm(SMEM);
};
template <typename TX, int D, int DV, bool GATED, int BV, int NST0, int NST1>
__global__ void __launch_bounds__(NTHREADS, (StatesCfg<TX, D, GATED, BV, NST0, NST1>::MINB))
    bwd_states_kernel(TX *h_ws, TX *u_ws, TX *dh_ws, TX *du_ws, TX *dv, const TX *dout, const TX *q,
                      const TX *k, const TX *v, const TX *beta, const float *g, const TX *Tm, float scale, int T,
                      int H, int NC) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int vt = blockIdx.x >> 1;
    if ((blockIdx.x & 1) == 0)
        state_forward<TX, D, DV, BV, false, GATED, NST0>(smem, nullptr, h_ws, u_ws, q, k, v, beta, g, Tm, scale, T,
                                                         H, NC, blockIdx.y, vt);
    else
        state_backward<TX, D, DV, BV, GATED, NST1>(smem, dv, dh_ws, du_ws, dout, q, k, beta, g, Tm, scale, T, H, NC,
                                                   blockIdx.y, vt);
}

} // namespace dr
