/*
 * deltarule.cuh -- the chunkwise delta rule on the GPU, forward and backward: the math, the host side
 * (workspace, configuration by shape) and the launchers. The kernels live in one file per stage:
 * deltarule_prep.cuh, deltarule_states.cuh, deltarule_chunk.cuh, on deltarule_tiles.cuh.
 *
 * Per batch element and head, state S (K x V, fp32), chunks of C = 64 rows (the last may be
 * shorter: its missing rows are zero-padded, which adds nothing). For chunk n with incoming state
 * S_n, rows Q, K, V, beta, with A = strictly_lower(diag(beta) K K^T), Tm = (I + A)^-1 and
 * M = tril(Q K^T) (docs/MODEL.md's WY form, regrouped so W = Tm diag(beta) K is never formed):
 *
 *     X  = V - K S_n                       U' = Tm diag(beta) X      (= U - W S_n)
 *     O  = scale (Q S_n + M U')            S_{n+1} = S_n + K^T U'
 *
 * Backward, dS = dL/dS_{n+1} (0 after the last chunk), over chunks in reverse:
 *
 *     dU' = scale M^T dO + K dS            dV = diag(beta) Tm^T dU'  (= diag(beta) dVb)
 *     dS_n = dS + scale Q^T dO - K^T dV    (W^T dU' = K^T dV)
 *
 * and then, for every chunk independently (dW = -dU' S_n^T, dM = tril(scale dO U'^T)):
 *
 *     dQ = dM K + scale dO S_n^T           dK = dM^T Q + U' dS^T + diag(beta) Tm^T dW + D K + D^T K
 *     dTm = (dW K^T + dU' V^T) diag(beta)  dA = strictly_lower(-Tm^T dTm Tm^T),  D = diag(beta) dA
 *     dbeta = rowsum((Tm^T dW) o K) + rowsum((Tm^T dU') o V) + rowsum(dA o K K^T)
 *
 * Kernels (256 threads each; "chunk-parallel" = one block per (chunk, b*H+h)):
 *   prep        chunk-parallel (deltarule_prep.cuh): Tm (K K^T on tensor cores, then a blocked
 *               16x16 forward substitution in fp32), to floatX.
 *   fwd         one block per (V tile of BV columns, b*H+h), sequential over chunks
 *               (deltarule_states.cuh); the state tile (K x BV) lives in registers (fp32) with a
 *               floatX copy in shared memory; M is formed per chunk. cp.async double-buffers the
 *               next chunk's tiles. Writes O.
 *   bwd_states  one launch, two roles side by side (deltarule_states.cuh): role 0 reruns the
 *               forward state pass and saves S_n (floatX, [BH][NC][K][V]) and U' ([BH][NC*64][V]);
 *               role 1 is the reverse pass above: saves dS_{n+1} per chunk and dU', and writes dV.
 *               V columns of S and dS evolve independently, so both roles split V into tiles.
 *   bwd_chunk   chunk-parallel (deltarule_chunk.cuh): everything else (dQ, dK, dbeta), all V
 *               columns in one block.
 *
 * What the forward saves: nothing by default (the backward recomputes Tm and the states from q, k,
 * v, beta); or, given a `saved` buffer (deltarule_saved_size: B*H*ceil(T/64)*64*64 floatX, half
 * of q's size at K = 128), Tm, which spares the backward its prep kernel.
 * Workspace (deltarule_workspace_size), scratch between calls, reusable by every layer: Tm
 * (BH*NC*64*64 floatX) for both passes; the backward adds S_n and dS_{n+1} (2*BH*NC*K*V floatX)
 * and U', dU' (2*BH*NC*64*V floatX). Nothing is T x T. d12 training (B=32, T=1024, H=6,
 * K=V=128, bf16): 327 MB of workspace; saved Tm 25 MB per layer.
 *
 * Numerics: floatX = float is true fp32 everywhere (FMA, no tf32; the test mode). floatX = bf16
 * uses mma.sync m16n8k16 (bf16 operands from shared memory via ldmatrix, fp32 accumulators);
 * matrix operands that are intermediate results (state copy, X, U', dM, dW, ...) are rounded to
 * bf16 before they feed a product, the state and every accumulator stay fp32.
 *
 * Supported: K = V in {64, 128}, any B >= 1, T >= 1, initial state zero, no final state.
 * Gradients dq, dk, dv, dbeta are WRITTEN (not accumulated).
 *
 * ---- The gated delta rule (Gated DeltaNet; gated_deltarule_forward / _backward) -----------------------
 *     S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T,   a_t = exp(g_t), g_t <= 0 (fp32)
 * The same kernels with GATED = true (g == nullptr and GATED = false is the DeltaNet code above).
 * In chunk n, G_i = sum_{j<=i} g_j (rows past the end read g = 0), gam_i = exp(G_i),
 * dec_i = exp(G_63 - G_i), Gamma_ij = exp(G_i - G_j) for j <= i (always formed as one exp of a
 * difference <= 0: exact under strong decay, where gam_i alone underflows). Unrolling the recurrence
 * inside the chunk, S_i = gam_i S_n + sum_{j<=i} Gamma_ij k_j u_j^T with
 * u_i = beta_i (v_i - gam_i S_n^T k_i - sum_{j<i} Gamma_ij (k_i.k_j) u_j), i.e. (I + A) U' = diag(beta) X:
 *
 *     A  = strictly_lower(diag(beta) (K K^T o Gamma))      Tm = (I + A)^-1
 *     X  = V - diag(gam) K S_n                             U' = Tm diag(beta) X
 *     O  = scale (diag(gam) Q S_n + (M o Gamma) U')        S_{n+1} = gam_63 S_n + K^T diag(dec) U'
 *
 * Backward, reverse pass (dS = dL/dS_{n+1}):
 *     dU' = scale (M o Gamma)^T dO + diag(dec) K dS        dV = diag(beta) Tm^T dU'
 *     dS_n = gam_63 dS + scale Q^T diag(gam) dO - K^T diag(gam) dV
 * and per chunk (dW = -dU' S_n^T, dM = tril(scale dO U'^T) o Gamma, D = diag(beta) (dA o Gamma)):
 *     dQ = dM K + scale diag(gam) dO S_n^T
 *     dK = dM^T Q + diag(dec) U' dS^T + diag(beta gam) Tm^T dW + D K + D^T K
 *     dTm = (dW K^T diag(gam) + dU' V^T) diag(beta)        dA = strictly_lower(-Tm^T dTm Tm^T)
 *     dbeta = gam o rowsum((Tm^T dW) o K) + rowsum((Tm^T dU') o V) + rowsum(dA o Gamma o K K^T)
 * The decay: every G_i scales row i of one operand by exp(+G_i) or column i of another by exp(-G_i),
 * so dL/dG_i = (row-role input . its gradient)_i - (column-role input . its gradient)_i, term by term:
 *     dG_i = q_i . dQ_i                                    (the Q S_n and M o Gamma terms)
 *          - k_i . (dM^T Q + diag(dec) U' dS^T)_i          (Gamma's and dec's columns)
 *          + gam_i beta_i rowsum((Tm^T dW) o K)_i          (X = V - diag(gam) K S_n)
 *          + rowsum(E)_i - colsum(E)_i,  E = dA o A        (Gamma inside A)
 *          + [i = 63] <dS, S_{n+1}>                        (S_{n+1} = exp(G_63) (...))
 * with <dS, S_{n+1}> = gam_63 <dS, S_n> + sum_i k_i . (diag(dec) U' dS^T)_i; then
 * dg_j = sum_{i >= j} dG_i within the chunk (the between-chunk decay is the [i = 63] term, which
 * reaches every row). Checked in double against the token recurrence and finite differences
 * (tests/gpu/test_gated_deltarule.cu carries the recurrence).
 * V = 2K (expand_v 2): the state passes split V into tiles anyway; the chunk kernel runs per slice
 * of K columns of V and adds the slices' fp32 partial gradients (combine_kernel). Supported gated:
 * K in {64, 128}, V in {K, 2K}. dg is WRITTEN (fp32).
 */
#pragma once
#include <stdint.h>
#include <algorithm>
#include "common.cuh"
#include "deltarule_tiles.cuh"  /* Mat, cp_tile, warp products, chunk geometry, the gate */
#include "deltarule_prep.cuh"   /* stage 1: Tm per chunk */
#include "deltarule_states.cuh" /* stage 2: the forward and reverse state passes */
#include "deltarule_chunk.cuh"  /* stage 3: the chunk-parallel backward */

namespace dr {

/* ---- host side ------------------------------------------------------------------------------------ */
struct Workspace {
    void *Tm, *h, *u, *dh, *du;
    float *part; /* DV = 2D only: the chunk kernel's per-slice partial dq, dk, dbeta, dg */
};
template <typename TX> inline size_t tm_bytes(int B, int T, int H) {
    return round_up((size_t)B * H * ceil_div(T, CH) * TM_ELEMS * sizeof(TX), 256);
}
/* fp32 partials of DV / D slices: dq, dk [NS][N * D], dbeta, dg [NS][N]; none when DV = D */
inline size_t part_bytes(int B, int T, int H, int D, int DV) {
    const size_t N = (size_t)B * T * H, NS = DV / D;
    return NS > 1 ? round_up(NS * (2 * N * D + 2 * N) * sizeof(float), 256) : 0;
}
template <typename TX> inline size_t workspace_bytes(int B, int T, int H, int D, int DV) {
    const size_t NC = (size_t)ceil_div(T, CH), BH = (size_t)B * H;
    return tm_bytes<TX>(B, T, H) + 2 * round_up(BH * NC * D * DV * sizeof(TX), 256) +
           2 * round_up(BH * NC * 64 * DV * sizeof(TX), 256) + part_bytes(B, T, H, D, DV);
}
template <typename TX> inline Workspace carve_workspace(void *ws, int B, int T, int H, int D, int DV) {
    const size_t NC = (size_t)ceil_div(T, CH), BH = (size_t)B * H;
    const size_t st = round_up(BH * NC * D * DV * sizeof(TX), 256), u = round_up(BH * NC * 64 * DV * sizeof(TX), 256);
    char *p = (char *)ws;
    Workspace w;
    w.Tm = p; p += tm_bytes<TX>(B, T, H);
    w.h = p;  p += st;
    w.dh = p; p += st;
    w.u = p;  p += u;
    w.du = p; p += u;
    w.part = (float *)p;
    return w;
}


/* Template defaults of the launchers below (fwd_auto / bwd_states_auto pick by shape). fp32 always
 * runs one stage. */
template <int D> struct Cfg {
    static constexpr int BV = 64;
    static constexpr int FWD_NST = 2, BWD_NST0 = 2, BWD_NST1 = 1;
};

/* The launchers: D = K (q, k rows), DV = V (v, o rows); GATED reads g (fp32 [B,T,H]), else g = nullptr. */
template <typename TX, int D, bool GATED>
void prep(TX *Tm, const TX *k, const TX *beta, const float *g, int B, int T, int H, cudaStream_t st) {
    const int NC = ceil_div(T, CH);
    const size_t sm = prep_smem<TX, D, GATED>();
    static bool init = false;
    if (!init) { set_smem(prep_kernel<TX, D, GATED>, sm); init = true; }
    prep_kernel<TX, D, GATED><<<dim3(NC, B * H), NTHREADS, sm, st>>>(Tm, k, beta, g, T, H, NC);
    cudaCheckLaunch();
}

template <typename TX, int D, int DV, bool GATED, int BV = Cfg<D>::BV, int NST_ = Cfg<D>::FWD_NST>
void fwd(const TX *Tm, TX *o, const TX *q, const TX *k, const TX *v, const TX *beta, const float *g, float scale,
         int B, int T, int H, cudaStream_t st) {
    constexpr int NST = sizeof(TX) == 2 ? NST_ : 1;
    const int NC = ceil_div(T, CH);
    const size_t sm = StageLayout<TX, D, BV, true, GATED>::smem(NST);
    static bool init = false;
    if (!init) { set_smem(fwd_kernel<TX, D, DV, GATED, BV, NST>, sm); init = true; }
    fwd_kernel<TX, D, DV, GATED, BV, NST><<<dim3(DV / BV, B * H), NTHREADS, sm, st>>>(o, q, k, v, beta, g, Tm, scale,
                                                                                   T, H, NC);
    cudaCheckLaunch();
}

template <typename TX, int D, int DV, bool GATED, int BV = Cfg<D>::BV, int NST0_ = Cfg<D>::BWD_NST0,
          int NST1_ = Cfg<D>::BWD_NST1>
void bwd_states(Workspace w, const TX *Tm, TX *dv, const TX *dout, const TX *q, const TX *k, const TX *v,
                const TX *beta, const float *g, float scale, int B, int T, int H, cudaStream_t st) {
    constexpr int NST0 = sizeof(TX) == 2 ? NST0_ : 1, NST1 = sizeof(TX) == 2 ? NST1_ : 1;
    typedef StatesCfg<TX, D, GATED, BV, NST0, NST1> SC;
    const int NC = ceil_div(T, CH);
    static bool init = false;
    if (!init) { set_smem(bwd_states_kernel<TX, D, DV, GATED, BV, NST0, NST1>, SC::SMEM); init = true; }
    bwd_states_kernel<TX, D, DV, GATED, BV, NST0, NST1><<<dim3(2 * (DV / BV), B * H), NTHREADS, SC::SMEM, st>>>(
        (TX *)w.h, (TX *)w.u, (TX *)w.dh, (TX *)w.du, dv, dout, q, k, v, beta, g, Tm, scale, T, H, NC);
    cudaCheckLaunch();
}

template <typename TX, int D, int DV, bool GATED>
void bwd_chunk(Workspace w, const TX *Tm, TX *dq, TX *dk, TX *dbeta, float *dg, const TX *dout, const TX *q,
               const TX *k, const TX *v, const TX *beta, const float *g, float scale, int B, int T, int H,
               cudaStream_t st) {
    constexpr int NS = DV / D;
    const int NC = ceil_div(T, CH);
    const size_t sm = ChunkLayout<TX, D, GATED>::BYTES;
    const dim3 grid(NC, B * H, NS);
    const TX *h = (const TX *)w.h, *u = (const TX *)w.u, *dh = (const TX *)w.dh, *du = (const TX *)w.du;
    static bool init = false;
    if constexpr (NS == 1) {
        if (!init) { set_smem(bwd_chunk_kernel<TX, D, DV, GATED, TX>, sm); init = true; }
        bwd_chunk_kernel<TX, D, DV, GATED, TX><<<grid, NTHREADS, sm, st>>>(dq, dk, dbeta, dg, dout, q, k, v, beta, g,
                                                                           Tm, h, u, dh, du, scale, T, H, NC);
        cudaCheckLaunch();
    } else {
        const size_t N = (size_t)B * T * H, NK = N * D;
        float *pq = w.part, *pk = pq + NS * NK, *pb = pk + NS * NK, *pg = pb + NS * N;
        if (!init) { set_smem(bwd_chunk_kernel<TX, D, DV, GATED, float>, sm); init = true; }
        bwd_chunk_kernel<TX, D, DV, GATED, float><<<grid, NTHREADS, sm, st>>>(pq, pk, pb, pg, dout, q, k, v, beta, g,
                                                                              Tm, h, u, dh, du, scale, T, H, NC);
        cudaCheckLaunch();
        combine_kernel<TX, NS><<<(unsigned)std::min<size_t>(ceil_div(NK, NTHREADS), 4096), NTHREADS, 0, st>>>(
            dq, dk, dbeta, dg, pq, pk, pb, pg, NK, N);
        cudaCheckLaunch();
    }
}

inline void check_dims(int K, int V) {
    if (K != V || (K != 64 && K != 128)) {
        fprintf(stderr, "deltarule: need K == V in {64, 128}, got K=%d V=%d\n", K, V);
        exit(EXIT_FAILURE);
    }
}
inline void check_gated_dims(int K, int V) {
    if ((K != 64 && K != 128) || (V != K && V != 2 * K)) {
        fprintf(stderr, "gated_deltarule: need K in {64, 128} and V in {K, 2K}, got K=%d V=%d\n", K, V);
        exit(EXIT_FAILURE);
    }
}

/* Configuration by shape (measured on H100, NOTES-deltarule.md): the widest V tile (64, else 32)
 * that still gives about one block per SM; the reverse pass double-buffers when its blocks do not
 * need to share SMs. force_bv() (tests) overrides the V tile: 0 = by shape. */
inline int &force_bv() {
    static int bv = 0;
    return bv;
}
struct AutoCfg {
    int fwd_bv, st_bv, st_nst1;
};
/* "About one block per SM": the V tile 64 is taken when its blocks would keep at least
 * WAVE_FILL_NUM / WAVE_FILL_DEN = 9/10 of the SMs busy; below that, tile 32 doubles the blocks and
 * the busy SMs (the state passes are latency bound, so an idle SM costs more than a narrower tile).
 * DV: the width of V (the state passes' blocks split it). */
constexpr long WAVE_FILL_NUM = 9, WAVE_FILL_DEN = 10;
inline AutoCfg auto_cfg(int B, int H, int DV) {
    /* blocks with a V tile of 64: f64 for the forward, s64 for the state passes */
    const long f64 = (long)B * H * (DV / 64), s64 = 2 * f64, enough = WAVE_FILL_NUM * num_sms();
    AutoCfg c;
    c.fwd_bv = force_bv() ? force_bv() : (f64 * WAVE_FILL_DEN >= enough ? 64 : 32);
    c.st_bv = force_bv() ? force_bv() : (s64 * WAVE_FILL_DEN >= enough ? 64 : 32);
    c.st_nst1 = c.st_bv == 64 && s64 > num_sms() ? 1 : 2;
    return c;
}
template <typename TX, int D, int DV, bool GATED>
void fwd_auto(const TX *Tm, TX *o, const TX *q, const TX *k, const TX *v, const TX *beta, const float *g, float scale,
              int B, int T, int H, cudaStream_t st) {
    if (auto_cfg(B, H, DV).fwd_bv == 64) fwd<TX, D, DV, GATED, 64, 2>(Tm, o, q, k, v, beta, g, scale, B, T, H, st);
    else fwd<TX, D, DV, GATED, 32, 2>(Tm, o, q, k, v, beta, g, scale, B, T, H, st);
}
template <typename TX, int D, int DV, bool GATED>
void bwd_states_auto(Workspace w, const TX *Tm, TX *dv, const TX *dout, const TX *q, const TX *k, const TX *v,
                     const TX *beta, const float *g, float scale, int B, int T, int H, cudaStream_t st) {
    const AutoCfg c = auto_cfg(B, H, DV);
    if (c.st_bv == 64 && c.st_nst1 == 1)
        bwd_states<TX, D, DV, GATED, 64, 2, 1>(w, Tm, dv, dout, q, k, v, beta, g, scale, B, T, H, st);
    else if (c.st_bv == 64) bwd_states<TX, D, DV, GATED, 64, 2, 2>(w, Tm, dv, dout, q, k, v, beta, g, scale, B, T, H, st);
    else bwd_states<TX, D, DV, GATED, 32, 2, 2>(w, Tm, dv, dout, q, k, v, beta, g, scale, B, T, H, st);
}

template <typename TX, int D, int DV, bool GATED>
void forward(TX *o, TX *saved, const TX *q, const TX *k, const TX *v, const TX *beta, const float *g, float scale,
             void *ws, int B, int T, int H, cudaStream_t st) {
    TX *Tm = saved ? saved : (TX *)carve_workspace<TX>(ws, B, T, H, D, DV).Tm;
    prep<TX, D, GATED>(Tm, k, beta, g, B, T, H, st);
    fwd_auto<TX, D, DV, GATED>(Tm, o, q, k, v, beta, g, scale, B, T, H, st);
}

template <typename TX, int D, int DV, bool GATED>
void backward(TX *dq, TX *dk, TX *dv, TX *dbeta, float *dg, const TX *dout, const TX *saved, const TX *q,
              const TX *k, const TX *v, const TX *beta, const float *g, float scale, void *ws, int B, int T, int H,
              cudaStream_t st) {
    Workspace w = carve_workspace<TX>(ws, B, T, H, D, DV);
    const TX *Tm = saved;
    if (!Tm) {
        prep<TX, D, GATED>((TX *)w.Tm, k, beta, g, B, T, H, st);
        Tm = (const TX *)w.Tm;
    }
    bwd_states_auto<TX, D, DV, GATED>(w, Tm, dv, dout, q, k, v, beta, g, scale, B, T, H, st);
    bwd_chunk<TX, D, DV, GATED>(w, Tm, dq, dk, dbeta, dg, dout, q, k, v, beta, g, scale, B, T, H, st);
}
} // namespace dr

/* ---- kernel launchers -------------------------------------------------------------------------------- */

/* Bytes of scratch workspace for deltarule_forward and deltarule_backward (the backward's; the
 * forward uses only the first BH * NC * 64 * 64 floatX, and none of it when given `saved`). */
template <typename floatX_> size_t deltarule_workspace_size(int B, int T, int H, int K, int V) {
    (void)V;
    return dr::workspace_bytes<floatX_>(B, T, H, K, K);
}
/* Bytes of the optional per-layer `saved` buffer: Tm of every chunk, B * H * ceil(T/64) * 64 * 64
 * floatX (T * B * H * 64 rounded up: half the size of q at K = 128). */
template <typename floatX_> size_t deltarule_saved_size(int B, int T, int H) { return dr::tm_bytes<floatX_>(B, T, H); }

/* o [B,T,H,V] = the delta rule over q, k [B,T,H,K] (L2-normalised rows), v [B,T,H,V], beta [B,T,H],
 * zero initial state. saved: NULL (the backward will recompute everything), or a buffer of
 * deltarule_saved_size bytes that receives Tm for this layer's backward (saves one kernel there). */
template <typename floatX_>
void deltarule_forward(floatX_ *o, floatX_ *saved, const floatX_ *q, const floatX_ *k, const floatX_ *v,
                       const floatX_ *beta, float scale, void *workspace, int B, int T, int H, int K, int V,
                       cudaStream_t stream) {
    dr::check_dims(K, V);
    if (K == 128) dr::forward<floatX_, 128, 128, false>(o, saved, q, k, v, beta, nullptr, scale, workspace, B, T, H, stream);
    else dr::forward<floatX_, 64, 64, false>(o, saved, q, k, v, beta, nullptr, scale, workspace, B, T, H, stream);
}

/* Gradients of sum(o * dout) w.r.t. q, k, v, beta, WRITTEN (not accumulated) to dq, dk, dv, dbeta.
 * Needs the forward's inputs, the same scale, and `saved` as the forward filled it (or NULL:
 * Tm is recomputed). Recomputes the states. */
template <typename floatX_>
void deltarule_backward(floatX_ *dq, floatX_ *dk, floatX_ *dv, floatX_ *dbeta, const floatX_ *dout,
                        const floatX_ *saved, const floatX_ *q, const floatX_ *k, const floatX_ *v,
                        const floatX_ *beta, float scale, void *workspace, int B, int T, int H, int K, int V,
                        cudaStream_t stream) {
    dr::check_dims(K, V);
    if (K == 128)
        dr::backward<floatX_, 128, 128, false>(dq, dk, dv, dbeta, nullptr, dout, saved, q, k, v, beta, nullptr, scale,
                                               workspace, B, T, H, stream);
    else
        dr::backward<floatX_, 64, 64, false>(dq, dk, dv, dbeta, nullptr, dout, saved, q, k, v, beta, nullptr, scale,
                                             workspace, B, T, H, stream);
}

/* ---- the gated delta rule (Gated DeltaNet), same contracts plus g [B,T,H] fp32 (log decay, <= 0) and
 * its gradient dg (fp32, WRITTEN); K in {64, 128}, V in {K, 2K} (the workspace grows with V). */
template <typename floatX_> size_t gated_deltarule_workspace_size(int B, int T, int H, int K, int V) {
    dr::check_gated_dims(K, V);
    return dr::workspace_bytes<floatX_>(B, T, H, K, V);
}
template <typename floatX_> size_t gated_deltarule_saved_size(int B, int T, int H) { return dr::tm_bytes<floatX_>(B, T, H); }

template <typename floatX_>
void gated_deltarule_forward(floatX_ *o, floatX_ *saved, const floatX_ *q, const floatX_ *k, const floatX_ *v,
                             const floatX_ *beta, const float *g, float scale, void *ws, int B, int T, int H, int K,
                             int V, cudaStream_t st) {
    dr::check_gated_dims(K, V);
    if (K == 128 && V == 128) dr::forward<floatX_, 128, 128, true>(o, saved, q, k, v, beta, g, scale, ws, B, T, H, st);
    else if (K == 128) dr::forward<floatX_, 128, 256, true>(o, saved, q, k, v, beta, g, scale, ws, B, T, H, st);
    else if (V == 64) dr::forward<floatX_, 64, 64, true>(o, saved, q, k, v, beta, g, scale, ws, B, T, H, st);
    else dr::forward<floatX_, 64, 128, true>(o, saved, q, k, v, beta, g, scale, ws, B, T, H, st);
}

template <typename floatX_>
void gated_deltarule_backward(floatX_ *dq, floatX_ *dk, floatX_ *dv, floatX_ *dbeta, float *dg, const floatX_ *dout,
                              const floatX_ *saved, const floatX_ *q, const floatX_ *k, const floatX_ *v,
                              const floatX_ *beta, const float *g, float scale, void *ws, int B, int T, int H, int K,
                              int V, cudaStream_t st) {
    dr::check_gated_dims(K, V);
    if (K == 128 && V == 128)
        dr::backward<floatX_, 128, 128, true>(dq, dk, dv, dbeta, dg, dout, saved, q, k, v, beta, g, scale, ws, B, T, H, st);
    else if (K == 128)
        dr::backward<floatX_, 128, 256, true>(dq, dk, dv, dbeta, dg, dout, saved, q, k, v, beta, g, scale, ws, B, T, H, st);
    else if (V == 64)
        dr::backward<floatX_, 64, 64, true>(dq, dk, dv, dbeta, dg, dout, saved, q, k, v, beta, g, scale, ws, B, T, H, st);
    else
        dr::backward<floatX_, 64, 128, true>(dq, dk, dv, dbeta, dg, dout, saved, q, k, v, beta, g, scale, ws, B, T, H, st);
}
