/*
 * deltarule.cuh -- the chunkwise delta rule on the GPU, forward and backward.
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
 *   prep        chunk-parallel: Tm (K K^T on tensor cores, then a blocked 16x16 forward
 *               substitution in fp32), to floatX.
 *   fwd         one block per (V tile of BV columns, b*H+h), sequential over chunks; the state tile
 *               (K x BV) lives in registers (fp32) with a floatX copy in shared memory; M is formed
 *               per chunk. cp.async double-buffers the next chunk's tiles. Writes O.
 *   bwd_states  one launch, two roles side by side: role 0 reruns the forward state pass and
 *               saves S_n (floatX, [BH][NC][K][V]) and U' ([BH][NC*64][V]); role 1 is the reverse
 *               pass above: saves dS_{n+1} per chunk and dU', and writes dV. V columns of S and dS
 *               evolve independently, so both roles split V into tiles.
 *   bwd_chunk   chunk-parallel: everything else (dQ, dK, dbeta), all V columns in one block.
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
 */
#pragma once
#include <stdint.h>
#include "common.cuh"

namespace dr {

constexpr int CH = 64;         /* chunk length */
constexpr int TM_ELEMS = CH * CH; /* elements of one chunk's saved (I+A)^-1 tile in Tm */
constexpr int NTHREADS = 256;  /* every kernel: 8 warps */

/* A matrix operand: element (r, c) of the stored row-major matrix is p[r * ld + c]. rows: stored
 * rows that may be read (the fp32 path returns 0 beyond; the bf16 path reads shared memory that
 * was zero-padded to full tiles and ignores it). */
template <typename TX> struct Mat {
    const TX *p;
    int ld, rows;
};

/* ---- cp.async (the primitives are in common.cuh) ---------------------------------------------- */
/* R x COLS tile from global (row stride sld) to shared (row stride dld); rows >= valid are
 * zero-filled. COLS * sizeof(TX) must be a multiple of 16. */
template <typename TX, int R, int COLS>
__device__ __forceinline__ void cp_tile(TX *dst, int dld, const TX *src, size_t sld, int valid) {
    constexpr int VEC = 16 / sizeof(TX), CPR = COLS / VEC;
    for (int i = threadIdx.x; i < R * CPR; i += NTHREADS) {
        const int r = i / CPR, c = (i % CPR) * VEC;
        const bool ok = r < valid;
        cp_async16(dst + r * dld + c, ok ? src + (size_t)r * sld + c : src, ok ? 16 : 0);
    }
}

/* ---- warp-level matrix products ------------------------------------------------------------------
 * acc[mt][nt] (MT x NT tiles of 16 x 8, the mma.sync C layout: lane (g = lane/4, t = lane%4) holds
 * rows g and g+8, columns 2t and 2t+1) += op(A)[m0 + 16 mt .., 0..KD) * op(B)[0..KD, n0 + 8 nt ..).
 * op(A) is [m][k]: TA = false reads A stored [m][k], TA = true reads it stored [k][m].
 * op(B) is [k][n]: TB = false reads B stored [k][n], TB = true reads it stored [n][k]. */
/* bf16: tensor cores; A and B in shared memory (16-byte aligned rows). NT even. */
template <int MT, int NT, bool TA, bool TB, int KD>
__device__ __forceinline__ void warp_mma(float (&acc)[MT][NT][4], Mat<bf16> A, int m0, Mat<bf16> B, int n0) {
    static_assert(NT % 2 == 0 && KD % 16 == 0, "warp_mma tile");
    const int lane = threadIdx.x & 31, lr = lane & 7, l8 = (lane >> 3) & 1, l16 = lane >> 4;
#pragma unroll
    for (int k = 0; k < KD; k += 16) {
        uint32_t a[MT][4], b[NT][2];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            const int m = m0 + 16 * mt;
            if (!TA) ldsm_x4(a[mt], A.p + (m + lr + 8 * l8) * A.ld + k + 8 * l16);
            else ldsm_x4_t(a[mt], A.p + (k + lr + 8 * l16) * A.ld + m + 8 * l8);
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt += 2) {
            const int n = n0 + 8 * nt;
            uint32_t r[4];
            if (TB) ldsm_x4(r, B.p + (n + lr + 8 * l16) * B.ld + k + 8 * l8);
            else ldsm_x4_t(r, B.p + (k + lr + 8 * l8) * B.ld + n + 8 * l16);
            b[nt][0] = r[0]; b[nt][1] = r[1]; b[nt + 1][0] = r[2]; b[nt + 1][1] = r[3];
        }
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++) mma_bf16(acc[mt][nt], a[mt], b[nt][0], b[nt][1]);
    }
}

__device__ __forceinline__ float mat_at(const Mat<float> &M, int r, int c) {
    return r < M.rows ? M.p[(size_t)r * M.ld + c] : 0.0f;
}
/* fp32: plain FMA in the same fragment layout; A and B anywhere (shared or global). */
template <int MT, int NT, bool TA, bool TB, int KD>
__device__ __forceinline__ void warp_mma(float (&acc)[MT][NT][4], Mat<float> A, int m0, Mat<float> B, int n0) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll 2
    for (int k = 0; k < KD; k++) {
        float a[MT][2], b[NT][2];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const int m = m0 + 16 * mt + g + 8 * hh;
                a[mt][hh] = TA ? mat_at(A, k, m) : mat_at(A, m, k);
            }
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const int n = n0 + 8 * nt + 2 * t + j;
                b[nt][j] = TB ? mat_at(B, n, k) : mat_at(B, k, n);
            }
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                acc[mt][nt][0] = fmaf(a[mt][0], b[nt][0], acc[mt][nt][0]);
                acc[mt][nt][1] = fmaf(a[mt][0], b[nt][1], acc[mt][nt][1]);
                acc[mt][nt][2] = fmaf(a[mt][1], b[nt][0], acc[mt][nt][2]);
                acc[mt][nt][3] = fmaf(a[mt][1], b[nt][1], acc[mt][nt][3]);
            }
    }
}

template <int MT, int NT> __device__ __forceinline__ void zero_acc(float (&acc)[MT][NT][4]) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mt][nt][e] = 0.0f;
}

/* f(r, c, x0, x1) for each pair of adjacent accumulator elements: row r, columns c and c+1. */
template <int MT, int NT, typename F>
__device__ __forceinline__ void for_each_pair(float (&acc)[MT][NT][4], int m0, int n0, F f) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++)
                f(m0 + 16 * mt + g + 8 * hh, n0 + 8 * nt + 2 * t, acc[mt][nt][2 * hh], acc[mt][nt][2 * hh + 1]);
}

__device__ __forceinline__ void st2(float *p, float a, float b) { *reinterpret_cast<float2 *>(p) = make_float2(a, b); }
__device__ __forceinline__ void st2(bf16 *p, float a, float b) {
    *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(a, b);
}
__device__ __forceinline__ float2 ld2(const float *p) { return *reinterpret_cast<const float2 *>(p); }
__device__ __forceinline__ float2 ld2(const bf16 *p) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(p));
}
template <typename TX> __device__ __forceinline__ float2 mat_ld2(const Mat<TX> &M, int r, int c) {
    return r < M.rows ? ld2(M.p + (size_t)r * M.ld + c) : make_float2(0.0f, 0.0f);
}

/* Sum over the 4 lanes that share a row in the accumulator layout. */
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

/* 16-byte-aligned carving of dynamic shared memory. */
template <typename TX> __device__ __forceinline__ TX *carve(unsigned char *&p, size_t elems) {
    TX *r = reinterpret_cast<TX *>(p);
    p += (elems * sizeof(TX) + 15) & ~(size_t)15;
    return r;
}


/* Where chunk n of (b, h) starts: row index into [B,T,H] and its number of valid rows. */
struct Chunk {
    size_t row0;
    int L;
};
__device__ __forceinline__ Chunk chunk_at(int b, int h, int n, int T, int H) {
    const int t0 = n * CH;
    return Chunk{((size_t)b * T + t0) * H + h, min(CH, T - t0)};
}

/* M = tril(Q K^T) (diagonal kept) into shared Ms [64][ldm] as floatX: warp tile 16 x 32; tiles
 * entirely above the diagonal are written as zeros without a product. */
template <typename TX, int D>
__device__ __forceinline__ void chunk_qk_tril(TX *Ms, int ldm, const Mat<TX> &Qm, const Mat<TX> &Km) {
    const int w = threadIdx.x >> 5, m0 = 16 * (w & 3), n0 = 32 * (w >> 2);
    float acc[1][4][4];
    zero_acc(acc);
    if (n0 <= m0 + 15) warp_mma<1, 4, false, true, D>(acc, Qm, m0, Km, n0);
    for_each_pair(acc, m0, n0, [&](int r, int c, float &x0, float &x1) {
        st2(Ms + r * ldm + c, c <= r ? x0 : 0.0f, c + 1 <= r ? x1 : 0.0f);
    });
}

/* The forward pass's first products, sharing fragments: accX += K S, accO += Q S (S loaded once),
 * and M = tril(Q K^T) into Ms (Q loaded once). Rows m0.. of the chunk, state columns n0.., M
 * columns mn0... fp32: the plain products. */
template <int NT, int D>
__device__ __forceinline__ void fwd_first(float (&accX)[1][NT][4], float (&accO)[1][NT][4], const Mat<bf16> &Km,
                                          const Mat<bf16> &Qm, const Mat<bf16> &Sm, bf16 *Ms, int ldm, int m0, int n0,
                                          int mn0) {
    const int lane = threadIdx.x & 31, lr = lane & 7, l8 = (lane >> 3) & 1, l16 = lane >> 4;
    const bool withM = mn0 <= m0 + 15;
    float accM[1][4][4];
    zero_acc(accM);
#pragma unroll
    for (int k = 0; k < D; k += 16) {
        uint32_t aK[4], aQ[4];
        ldsm_x4(aK, Km.p + (m0 + lr + 8 * l8) * Km.ld + k + 8 * l16);
        ldsm_x4(aQ, Qm.p + (m0 + lr + 8 * l8) * Qm.ld + k + 8 * l16);
#pragma unroll
        for (int nt = 0; nt < NT; nt += 2) {
            uint32_t r[4];
            ldsm_x4_t(r, Sm.p + (k + lr + 8 * l8) * Sm.ld + n0 + 8 * nt + 8 * l16);
            mma_bf16(accX[0][nt], aK, r[0], r[1]);
            mma_bf16(accX[0][nt + 1], aK, r[2], r[3]);
            mma_bf16(accO[0][nt], aQ, r[0], r[1]);
            mma_bf16(accO[0][nt + 1], aQ, r[2], r[3]);
        }
        if (withM) {
#pragma unroll
            for (int nt = 0; nt < 4; nt += 2) {
                uint32_t r[4];
                ldsm_x4(r, Km.p + (mn0 + 8 * nt + lr + 8 * l16) * Km.ld + k + 8 * l8);
                mma_bf16(accM[0][nt], aQ, r[0], r[1]);
                mma_bf16(accM[0][nt + 1], aQ, r[2], r[3]);
            }
        }
    }
    for_each_pair(accM, m0, mn0, [&](int r, int c, float &x0, float &x1) {
        st2(Ms + r * ldm + c, c <= r ? x0 : 0.0f, c + 1 <= r ? x1 : 0.0f);
    });
}
template <int NT, int D>
__device__ __forceinline__ void fwd_first(float (&accX)[1][NT][4], float (&accO)[1][NT][4], const Mat<float> &Km,
                                          const Mat<float> &Qm, const Mat<float> &Sm, float *Ms, int ldm, int m0,
                                          int n0, int mn0) {
    (void)mn0;
    warp_mma<1, NT, false, false, D>(accX, Km, m0, Sm, n0);
    warp_mma<1, NT, false, false, D>(accO, Qm, m0, Sm, n0);
    chunk_qk_tril<float, D>(Ms, ldm, Qm, Km);
}

/* ---- prep: Tm = (I + strictly_lower(diag(beta) K K^T))^-1 per chunk --------------------------- */
constexpr int LDF = 68; /* fp32 64x64 work matrices: rows 16-byte aligned, 4-bank row offset */
constexpr int LDR = 20; /* fp32 16x16 products */
template <typename TX, int D> constexpr size_t prep_smem() {
    return round_up(2 * 64 * LDF * 4, 16) + 64 * 4 + round_up(3 * 16 * LDR * 4, 16) +
           (sizeof(TX) == 2 ? (size_t)64 * padded<TX>(D) * sizeof(TX) : 0);
}

/* s[u] (rows u = 0..3, 4 columns) += sum_{l<16} a[u * lda + l] * b[l * ldb + 0..3]: a 4 x 16 slab
 * times a 16 x 4 slab, float4 loads (rows of a and b 16-byte aligned). */
__device__ __forceinline__ void block4x4(float4 (&s)[4], const float *a, int lda, const float *b, int ldb) {
#pragma unroll
    for (int l = 0; l < 16; l += 4) {
        float av[4][4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const float4 t = *reinterpret_cast<const float4 *>(a + u * lda + l);
            av[u][0] = t.x; av[u][1] = t.y; av[u][2] = t.z; av[u][3] = t.w;
        }
#pragma unroll
        for (int ll = 0; ll < 4; ll++) {
            const float4 bv = *reinterpret_cast<const float4 *>(b + (l + ll) * ldb);
#pragma unroll
            for (int u = 0; u < 4; u++) {
                s[u].x = fmaf(av[u][ll], bv.x, s[u].x);
                s[u].y = fmaf(av[u][ll], bv.y, s[u].y);
                s[u].z = fmaf(av[u][ll], bv.z, s[u].z);
                s[u].w = fmaf(av[u][ll], bv.w, s[u].w);
            }
        }
    }
}

template <typename TX, int D>
__global__ void __launch_bounds__(NTHREADS) prep_kernel(TX *Tm_out, const TX *k, const TX *beta, int T, int H,
                                                         int NC) {
    constexpr bool STG = sizeof(TX) == 2;
    constexpr int LDD = padded<TX>(D);
    extern __shared__ __align__(16) unsigned char smem[];
    unsigned char *sp = smem;
    float *Af = carve<float>(sp, 2 * 64 * LDF); /* Af [64][LDF], then Tf [64][LDF] */
    float *Tf = Af + 64 * LDF;
    float *bs = carve<float>(sp, 64);
    float *Rf = carve<float>(sp, 3 * 16 * LDR);
    TX *Ks = STG ? carve<TX>(sp, 64 * LDD) : nullptr;

    const int n = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, tid = threadIdx.x, w = tid >> 5;
    const Chunk ck = chunk_at(b, h, n, T, H);
    const size_t ldg = (size_t)H * D;
    if (STG) {
        cp_tile<TX, 64, D>(Ks, LDD, k + ck.row0 * D, ldg, ck.L);
        cp_async_commit();
    }
    if (tid < 64) bs[tid] = tid < ck.L ? to_f(beta[ck.row0 + (size_t)tid * H]) : 0.0f;
    cp_async_wait<0>();
    __syncthreads();

    const Mat<TX> Km = STG ? Mat<TX>{Ks, LDD, 64} : Mat<TX>{k + ck.row0 * D, (int)ldg, ck.L};
    {
        const int m0 = 16 * (w & 3), n0 = 32 * (w >> 2);
        float accA[1][4][4];
        zero_acc(accA);
        if (n0 <= m0 + 15) warp_mma<1, 4, false, true, D>(accA, Km, m0, Km, n0); /* upper tiles stay zero */
        for_each_pair(accA, m0, n0, [&](int r, int c, float &x0, float &x1) {
            st2(Af + r * LDF + c, c < r ? bs[r] * x0 : 0.0f, c + 1 < r ? bs[r] * x1 : 0.0f);
        });
    }
    __syncthreads();

    /* (I + A)^-1, A strictly lower, in 16 x 16 blocks. Diagonal blocks: one thread per column,
     * forward substitution x_i = delta_ic - sum_{j<i} A_ij x_j. Other threads zero the blocks
     * above the diagonal. */
    if (tid < 64) {
        const int o = 16 * (tid >> 4), c = tid & 15;
        float x[16];
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float s = 0.0f;
#pragma unroll
            for (int j = 0; j < i; j++) s = fmaf(Af[(o + i) * LDF + o + j], x[j], s);
            x[i] = i == c ? 1.0f : (i < c ? 0.0f : -s);
        }
#pragma unroll
        for (int i = 0; i < 16; i++) Tf[(o + i) * LDF + o + c] = x[i];
    } else {
        for (int e = tid - 64; e < 6 * 64; e += NTHREADS - 64) {
            const int p = e >> 6, r = (e >> 2) & 15, c = 4 * (e & 3);
            const int bi = p < 3 ? 0 : (p < 5 ? 1 : 2), bj = p < 3 ? p + 1 : (p < 5 ? p - 1 : 3);
            *reinterpret_cast<float4 *>(Tf + (16 * bi + r) * LDF + 16 * bj + c) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    }
    __syncthreads();
    /* Off-diagonal blocks by distance d from the diagonal, block (i, j = i - d):
     * Tm_ij = -Tm_ii sum_{kb=j}^{i-1} A_{i,kb} Tm_{kb,j}. One thread per 4 x 4 piece of a block
     * (few threads, few shared loads: this part was bound by the shared-memory pipe). */
    for (int d = 1; d < 4; d++) {
        const int nb = 4 - d, j = tid >> 4, rq = (tid >> 2) & 3, cq = tid & 3, i = j + d;
        if (tid < nb * 16) {
            float4 s4[4];
#pragma unroll
            for (int u = 0; u < 4; u++) s4[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            for (int kb = j; kb < i; kb++)
                block4x4(s4, Af + (16 * i + 4 * rq) * LDF + 16 * kb, LDF, Tf + 16 * kb * LDF + 16 * j + 4 * cq, LDF);
#pragma unroll
            for (int u = 0; u < 4; u++) *reinterpret_cast<float4 *>(Rf + (j * 16 + 4 * rq + u) * LDR + 4 * cq) = s4[u];
        }
        __syncthreads();
        if (tid < nb * 16) {
            float4 s4[4];
#pragma unroll
            for (int u = 0; u < 4; u++) s4[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            block4x4(s4, Tf + (16 * i + 4 * rq) * LDF + 16 * i, LDF, Rf + j * 16 * LDR + 4 * cq, LDR);
#pragma unroll
            for (int u = 0; u < 4; u++)
                *reinterpret_cast<float4 *>(Tf + (16 * i + 4 * rq + u) * LDF + 16 * j + 4 * cq) =
                    make_float4(-s4[u].x, -s4[u].y, -s4[u].z, -s4[u].w);
        }
        __syncthreads();
    }
    TX *Tg = Tm_out + ((size_t)bh * NC + n) * 64 * 64;
    for (int e = tid; e < 64 * 32; e += NTHREADS) {
        const int r = e >> 5, c = 2 * (e & 31);
        const float2 t = *reinterpret_cast<const float2 *>(Tf + r * LDF + c);
        st2(Tg + r * 64 + c, t.x, t.y);
    }
}

/* ---- the state passes ------------------------------------------------------------------------------
 * One block per (V tile, b*H+h), sequential over chunks. Per chunk a "stage" in shared memory holds
 * beta and (bf16 only: fp32 reads global memory directly) the K tile, a V-wide tile (V or dO), Tm,
 * and when HAS_Q the Q tile. NST = 2 double-buffers the stages with cp.async. */
template <typename TX, int D, int BV, bool HAS_Q> struct StageLayout {
    static constexpr bool STG = sizeof(TX) == 2;
    static constexpr int LDD = padded<TX>(D), LDV = padded<TX>(BV), LDC = padded<TX>(64);
    static constexpr size_t O_K = 64 * 4;
    static constexpr size_t O_V = O_K + (STG ? 64 * LDD * sizeof(TX) : 0);
    static constexpr size_t O_TM = O_V + (STG ? 64 * LDV * sizeof(TX) : 0);
    static constexpr size_t O_Q = O_TM + (STG ? 64 * LDC * sizeof(TX) : 0);
    static constexpr size_t BYTES = O_Q + (STG && HAS_Q ? 64 * LDD * sizeof(TX) : 0);
    /* after NST stages: the state copy [D][LDV], two [64][LDV] scratch tiles, M [64][LDC] */
    static constexpr size_t SCRATCH = (size_t)(D + 128) * LDV * sizeof(TX) + (HAS_Q ? 64 * LDC * sizeof(TX) : 0);
    static constexpr size_t smem(int nst) { return nst * BYTES + SCRATCH; }
};

template <typename TX> struct StagePtrs {
    float *beta;
    TX *K, *V, *Tm, *Q;
};
template <typename TX, int D, int BV, bool HAS_Q>
__device__ __forceinline__ StagePtrs<TX> stage_ptrs(unsigned char *smem, int s) {
    typedef StageLayout<TX, D, BV, HAS_Q> SL;
    unsigned char *p = smem + s * SL::BYTES;
    return StagePtrs<TX>{(float *)p, (TX *)(p + SL::O_K), (TX *)(p + SL::O_V), (TX *)(p + SL::O_TM),
                         (TX *)(p + SL::O_Q)};
}

/* Forward state pass. OUT: write o (needs Q; M is formed here). !OUT: save S_n (hsave) and U'
 * (usave). */
template <typename TX, int D, int BV, bool OUT, int NST>
__device__ __forceinline__ void state_forward(unsigned char *smem, TX *o, TX *hsave, TX *usave, const TX *q,
                                              const TX *k, const TX *v, const TX *beta, const TX *Tm, float scale,
                                              int T, int H, int NC, int bh, int vt) {
    typedef StageLayout<TX, D, BV, OUT> SL;
    constexpr bool STG = SL::STG;
    constexpr int LDD = SL::LDD, LDV = SL::LDV, LDC = SL::LDC, NT = BV / 16, MTS = D / 64;
    const int b = bh / H, h = bh % H, v0 = vt * BV, tid = threadIdx.x, w = tid >> 5, wr = w & 3, wc = w >> 2;
    const size_t ldg = (size_t)H * D;
    TX *Sb = (TX *)(smem + NST * SL::BYTES); /* [D][LDV]: S_n as floatX, the B operand */
    TX *Xs = Sb + D * LDV;                   /* [64][LDV]: diag(beta) X */
    TX *Us = Xs + 64 * LDV;                  /* [64][LDV]: U' */
    TX *Ms = Us + 64 * LDV;                  /* [64][LDC]: M (OUT only) */
    const int cm0 = 16 * wr, cn0 = wc * (BV / 2), sm0 = wr * (D / 4);

    auto load = [&](int n, int s) {
        const StagePtrs<TX> st = stage_ptrs<TX, D, BV, OUT>(smem, s);
        const Chunk ck = chunk_at(b, h, n, T, H);
        if (tid < 64) st.beta[tid] = tid < ck.L ? to_f(beta[ck.row0 + (size_t)tid * H]) : 0.0f;
        if (STG) {
            cp_tile<TX, 64, D>(st.K, LDD, k + ck.row0 * D, ldg, ck.L);
            cp_tile<TX, 64, BV>(st.V, LDV, v + ck.row0 * D + v0, ldg, ck.L);
            cp_tile<TX, 64, 64>(st.Tm, LDC, Tm + ((size_t)bh * NC + n) * TM_ELEMS, 64, 64);
            if (OUT) cp_tile<TX, 64, D>(st.Q, LDD, q + ck.row0 * D, ldg, ck.L);
            cp_async_commit();
        }
    };

    for (int i = tid; i < D * LDV; i += NTHREADS) Sb[i] = from_f<TX>(0.0f);
    float accS[MTS][NT][4];
    zero_acc(accS);
    if (NST == 2) load(0, 0);
    for (int n = 0; n < NC; n++) {
        const int s = NST == 2 ? (n & 1) : 0;
        if (NST == 2) {
            if (n + 1 < NC) { load(n + 1, s ^ 1); cp_async_wait<1>(); }
            else cp_async_wait<0>();
        } else {
            load(n, 0);
            cp_async_wait<0>();
        }
        __syncthreads();
        const StagePtrs<TX> st = stage_ptrs<TX, D, BV, OUT>(smem, s);
        const Chunk ck = chunk_at(b, h, n, T, H);
        const Mat<TX> Km = STG ? Mat<TX>{st.K, LDD, 64} : Mat<TX>{k + ck.row0 * D, (int)ldg, ck.L};
        const Mat<TX> Vm = STG ? Mat<TX>{st.V, LDV, 64} : Mat<TX>{v + ck.row0 * D + v0, (int)ldg, ck.L};
        const Mat<TX> Tmm = STG ? Mat<TX>{st.Tm, LDC, 64} : Mat<TX>{Tm + ((size_t)bh * NC + n) * TM_ELEMS, 64, 64};
        const Mat<TX> Qm = STG ? Mat<TX>{st.Q, LDD, 64} : Mat<TX>{q + ck.row0 * D, (int)ldg, ck.L};
        const Mat<TX> Sm{Sb, LDV, D}, Xm{Xs, LDV, 64}, Um{Us, LDV, 64}, Mmm{Ms, LDC, 64};
        if (!OUT) { /* save S_n (this tile's columns) */
            constexpr int VEC = 16 / sizeof(TX), CPR = BV / VEC;
            TX *hg = hsave + ((size_t)bh * NC + n) * D * D + v0;
            for (int i = tid; i < D * CPR; i += NTHREADS) {
                const int r = i / CPR, c = (i % CPR) * VEC;
                *reinterpret_cast<uint4 *>(hg + (size_t)r * D + c) = *reinterpret_cast<const uint4 *>(Sb + r * LDV + c);
            }
        }
        /* X = V - K S_n, stored scaled by beta (rows); O1 = Q S_n; M = tril(Q K^T) */
        float accX[1][NT][4], accO[1][NT][4];
        zero_acc(accX);
        zero_acc(accO);
        if (OUT) fwd_first<NT, D>(accX, accO, Km, Qm, Sm, Ms, LDC, cm0, cn0, 32 * wc);
        else warp_mma<1, NT, false, false, D>(accX, Km, cm0, Sm, cn0);
        for_each_pair(accX, cm0, cn0, [&](int r, int c, float &x0, float &x1) {
            const float2 vv = mat_ld2(Vm, r, c);
            const float bb = st.beta[r];
            st2(Xs + r * LDV + c, (vv.x - x0) * bb, (vv.y - x1) * bb);
        });
        __syncthreads();
        /* U' = Tm diag(beta) X */
        float accU[1][NT][4];
        zero_acc(accU);
        warp_mma<1, NT, false, false, 64>(accU, Tmm, cm0, Xm, cn0);
        for_each_pair(accU, cm0, cn0, [&](int r, int c, float &x0, float &x1) {
            st2(Us + r * LDV + c, x0, x1);
            if (!OUT) st2(usave + ((size_t)bh * NC * 64 + n * 64 + r) * D + v0 + c, x0, x1);
        });
        __syncthreads();
        if (OUT) { /* O = scale (Q S_n + M U') */
            warp_mma<1, NT, false, false, 64>(accO, Mmm, cm0, Um, cn0);
            for_each_pair(accO, cm0, cn0, [&](int r, int c, float &x0, float &x1) {
                if (r < ck.L) st2(o + (ck.row0 + (size_t)r * H) * D + v0 + c, scale * x0, scale * x1);
            });
        }
        /* S_{n+1} = S_n + K^T U' */
        warp_mma<MTS, NT, true, false, 64>(accS, Km, sm0, Um, cn0);
        for_each_pair(accS, sm0, cn0, [&](int r, int c, float &x0, float &x1) { st2(Sb + r * LDV + c, x0, x1); });
        __syncthreads();
    }
}

/* Reverse state pass: dS (this tile's columns) from the last chunk to the first; saves dS_{n+1}
 * (dhsave) and dU' (dusave), writes dv. Stage V slot holds the dO tile. */
template <typename TX, int D, int BV, int NST>
__device__ __forceinline__ void state_backward(unsigned char *smem, TX *dv, TX *dhsave, TX *dusave, const TX *dout,
                                               const TX *q, const TX *k, const TX *beta, const TX *Tm, float scale,
                                               int T, int H, int NC, int bh, int vt) {
    typedef StageLayout<TX, D, BV, true> SL;
    constexpr bool STG = SL::STG;
    constexpr int LDD = SL::LDD, LDV = SL::LDV, LDC = SL::LDC, NT = BV / 16, MTS = D / 64;
    const int b = bh / H, h = bh % H, v0 = vt * BV, tid = threadIdx.x, w = tid >> 5, wr = w & 3, wc = w >> 2;
    const size_t ldg = (size_t)H * D;
    TX *dSb = (TX *)(smem + NST * SL::BYTES); /* [D][LDV]: dS_{n+1} as floatX */
    TX *dUs = dSb + D * LDV;                  /* [64][LDV]: dU' */
    TX *dVs = dUs + 64 * LDV;                 /* [64][LDV]: -dV */
    TX *Ms = dVs + 64 * LDV;                  /* [64][LDC]: M */
    const int cm0 = 16 * wr, cn0 = wc * (BV / 2), sm0 = wr * (D / 4);

    auto load = [&](int n, int s) {
        const StagePtrs<TX> st = stage_ptrs<TX, D, BV, true>(smem, s);
        const Chunk ck = chunk_at(b, h, n, T, H);
        if (tid < 64) st.beta[tid] = tid < ck.L ? to_f(beta[ck.row0 + (size_t)tid * H]) : 0.0f;
        if (STG) {
            cp_tile<TX, 64, D>(st.K, LDD, k + ck.row0 * D, ldg, ck.L);
            cp_tile<TX, 64, BV>(st.V, LDV, dout + ck.row0 * D + v0, ldg, ck.L);
            cp_tile<TX, 64, 64>(st.Tm, LDC, Tm + ((size_t)bh * NC + n) * TM_ELEMS, 64, 64);
            cp_tile<TX, 64, D>(st.Q, LDD, q + ck.row0 * D, ldg, ck.L);
            cp_async_commit();
        }
    };

    for (int i = tid; i < D * LDV; i += NTHREADS) dSb[i] = from_f<TX>(0.0f);
    float accD[MTS][NT][4];
    zero_acc(accD);
    if (NST == 2) load(NC - 1, (NC - 1) & 1);
    for (int n = NC - 1; n >= 0; n--) {
        const int s = NST == 2 ? (n & 1) : 0;
        if (NST == 2) {
            if (n > 0) { load(n - 1, s ^ 1); cp_async_wait<1>(); }
            else cp_async_wait<0>();
        } else {
            load(n, 0);
            cp_async_wait<0>();
        }
        __syncthreads();
        const StagePtrs<TX> st = stage_ptrs<TX, D, BV, true>(smem, s);
        const Chunk ck = chunk_at(b, h, n, T, H);
        const Mat<TX> Km = STG ? Mat<TX>{st.K, LDD, 64} : Mat<TX>{k + ck.row0 * D, (int)ldg, ck.L};
        const Mat<TX> dOm = STG ? Mat<TX>{st.V, LDV, 64} : Mat<TX>{dout + ck.row0 * D + v0, (int)ldg, ck.L};
        const Mat<TX> Tmm = STG ? Mat<TX>{st.Tm, LDC, 64} : Mat<TX>{Tm + ((size_t)bh * NC + n) * TM_ELEMS, 64, 64};
        const Mat<TX> Qm = STG ? Mat<TX>{st.Q, LDD, 64} : Mat<TX>{q + ck.row0 * D, (int)ldg, ck.L};
        const Mat<TX> dSm{dSb, LDV, D}, dUm{dUs, LDV, 64}, dVm{dVs, LDV, 64}, Mmm{Ms, LDC, 64};
        { /* save dS_{n+1} */
            constexpr int VEC = 16 / sizeof(TX), CPR = BV / VEC;
            TX *hg = dhsave + ((size_t)bh * NC + n) * D * D + v0;
            for (int i = tid; i < D * CPR; i += NTHREADS) {
                const int r = i / CPR, c = (i % CPR) * VEC;
                *reinterpret_cast<uint4 *>(hg + (size_t)r * D + c) = *reinterpret_cast<const uint4 *>(dSb + r * LDV + c);
            }
        }
        /* M = tril(Q K^T); K dS */
        float acc1[1][NT][4], acc2[1][NT][4];
        zero_acc(acc1);
        zero_acc(acc2);
        chunk_qk_tril<TX, D>(Ms, LDC, Qm, Km);
        warp_mma<1, NT, false, false, D>(acc2, Km, cm0, dSm, cn0);
        __syncthreads();
        /* dU' = scale M^T dO + K dS */
        warp_mma<1, NT, true, false, 64>(acc1, Mmm, cm0, dOm, cn0);
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc1[0][nt][e] = fmaf(scale, acc1[0][nt][e], acc2[0][nt][e]);
        for_each_pair(acc1, cm0, cn0, [&](int r, int c, float &x0, float &x1) {
            st2(dUs + r * LDV + c, x0, x1);
            st2(dusave + ((size_t)bh * NC * 64 + n * 64 + r) * D + v0 + c, x0, x1);
        });
        __syncthreads();
        /* dV = diag(beta) Tm^T dU' */
        zero_acc(acc2);
        warp_mma<1, NT, true, false, 64>(acc2, Tmm, cm0, dUm, cn0);
        for_each_pair(acc2, cm0, cn0, [&](int r, int c, float &x0, float &x1) {
            const float bb = st.beta[r], d0 = bb * x0, d1 = bb * x1;
            if (r < ck.L) st2(dv + (ck.row0 + (size_t)r * H) * D + v0 + c, d0, d1);
            st2(dVs + r * LDV + c, -d0, -d1);
        });
        __syncthreads();
        /* dS_n = dS + scale Q^T dO - K^T dV */
        float accT[MTS][NT][4];
        zero_acc(accT);
        warp_mma<MTS, NT, true, false, 64>(accT, Qm, sm0, dOm, cn0);
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

template <typename TX, int D, int BV, int NST>
__global__ void __launch_bounds__(NTHREADS, 1)
    fwd_kernel(TX *o, const TX *q, const TX *k, const TX *v, const TX *beta, const TX *Tm, float scale, int T,
               int H, int NC) {
    extern __shared__ __align__(16) unsigned char smem[];
    state_forward<TX, D, BV, true, NST>(smem, o, nullptr, nullptr, q, k, v, beta, Tm, scale, T, H, NC, blockIdx.y,
                                        blockIdx.x);
}

/* Both state passes of the backward in one launch: blockIdx.x = 2 * vtile + role (role 0: the
 * forward states again, NST0 stages; role 1: the reverse pass, NST1 stages). */
template <typename TX, int D, int BV, int NST0, int NST1> struct StatesCfg {
    static constexpr size_t S0 = StageLayout<TX, D, BV, false>::smem(NST0), S1 = StageLayout<TX, D, BV, true>::smem(NST1);
    static constexpr size_t SMEM = S0 > S1 ? S0 : S1;
    static constexpr int MINB = blocks_per_sm(SMEM);
};
template <typename TX, int D, int BV, int NST0, int NST1>
__global__ void __launch_bounds__(NTHREADS, (StatesCfg<TX, D, BV, NST0, NST1>::MINB))
    bwd_states_kernel(TX *h_ws, TX *u_ws, TX *dh_ws, TX *du_ws, TX *dv, const TX *dout, const TX *q,
                      const TX *k, const TX *v, const TX *beta, const TX *Tm, float scale, int T, int H, int NC) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int vt = blockIdx.x >> 1;
    if ((blockIdx.x & 1) == 0)
        state_forward<TX, D, BV, false, NST0>(smem, nullptr, h_ws, u_ws, q, k, v, beta, Tm, scale, T, H, NC,
                                              blockIdx.y, vt);
    else
        state_backward<TX, D, BV, NST1>(smem, dv, dh_ws, du_ws, dout, q, k, beta, Tm, scale, T, H, NC, blockIdx.y,
                                        vt);
}

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

/* ---- host side ------------------------------------------------------------------------------------ */
struct Workspace {
    void *Tm, *h, *u, *dh, *du;
};
template <typename TX> inline size_t tm_bytes(int B, int T, int H) {
    return round_up((size_t)B * H * ceil_div(T, CH) * TM_ELEMS * sizeof(TX), 256);
}
template <typename TX> inline Workspace carve_workspace(void *ws, int B, int T, int H, int D) {
    const size_t NC = (size_t)ceil_div(T, CH), BH = (size_t)B * H;
    const size_t st = round_up(BH * NC * D * D * sizeof(TX), 256), u = round_up(BH * NC * 64 * D * sizeof(TX), 256);
    char *p = (char *)ws;
    Workspace w;
    w.Tm = p; p += tm_bytes<TX>(B, T, H);
    w.h = p;  p += st;
    w.dh = p; p += st;
    w.u = p;  p += u;
    w.du = p;
    return w;
}

template <typename K> inline void set_smem(K kernel, size_t bytes) {
    cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

/* Template defaults of the launchers below (fwd_auto / bwd_states_auto pick by shape). fp32 always
 * runs one stage. */
template <int D> struct Cfg {
    static constexpr int BV = 64;
    static constexpr int FWD_NST = 2, BWD_NST0 = 2, BWD_NST1 = 1;
};

template <typename TX, int D>
void prep(TX *Tm, const TX *k, const TX *beta, int B, int T, int H, cudaStream_t st) {
    const int NC = ceil_div(T, CH);
    const size_t sm = prep_smem<TX, D>();
    static bool init = false;
    if (!init) { set_smem(prep_kernel<TX, D>, sm); init = true; }
    prep_kernel<TX, D><<<dim3(NC, B * H), NTHREADS, sm, st>>>(Tm, k, beta, T, H, NC);
    cudaCheckLaunch();
}

template <typename TX, int D, int BV = Cfg<D>::BV, int NST_ = Cfg<D>::FWD_NST>
void fwd(const TX *Tm, TX *o, const TX *q, const TX *k, const TX *v, const TX *beta, float scale, int B, int T,
         int H, cudaStream_t st) {
    constexpr int NST = sizeof(TX) == 2 ? NST_ : 1;
    const int NC = ceil_div(T, CH);
    const size_t sm = StageLayout<TX, D, BV, true>::smem(NST);
    static bool init = false;
    if (!init) { set_smem(fwd_kernel<TX, D, BV, NST>, sm); init = true; }
    fwd_kernel<TX, D, BV, NST><<<dim3(D / BV, B * H), NTHREADS, sm, st>>>(o, q, k, v, beta, Tm, scale, T, H, NC);
    cudaCheckLaunch();
}

template <typename TX, int D, int BV = Cfg<D>::BV, int NST0_ = Cfg<D>::BWD_NST0, int NST1_ = Cfg<D>::BWD_NST1>
void bwd_states(Workspace w, const TX *Tm, TX *dv, const TX *dout, const TX *q, const TX *k, const TX *v,
                const TX *beta, float scale, int B, int T, int H, cudaStream_t st) {
    constexpr int NST0 = sizeof(TX) == 2 ? NST0_ : 1, NST1 = sizeof(TX) == 2 ? NST1_ : 1;
    typedef StatesCfg<TX, D, BV, NST0, NST1> SC;
    const int NC = ceil_div(T, CH);
    static bool init = false;
    if (!init) { set_smem(bwd_states_kernel<TX, D, BV, NST0, NST1>, SC::SMEM); init = true; }
    bwd_states_kernel<TX, D, BV, NST0, NST1><<<dim3(2 * (D / BV), B * H), NTHREADS, SC::SMEM, st>>>(
        (TX *)w.h, (TX *)w.u, (TX *)w.dh, (TX *)w.du, dv, dout, q, k, v, beta, Tm, scale, T, H, NC);
    cudaCheckLaunch();
}

template <typename TX, int D>
void bwd_chunk(Workspace w, const TX *Tm, TX *dq, TX *dk, TX *dbeta, const TX *dout, const TX *q, const TX *k,
               const TX *v, const TX *beta, float scale, int B, int T, int H, cudaStream_t st) {
    const int NC = ceil_div(T, CH);
    const size_t sm = ChunkLayout<TX, D>::BYTES;
    static bool init = false;
    if (!init) { set_smem(bwd_chunk_kernel<TX, D>, sm); init = true; }
    bwd_chunk_kernel<TX, D><<<dim3(NC, B * H), NTHREADS, sm, st>>>(dq, dk, dbeta, dout, q, k, v, beta, Tm,
                                                                 (const TX *)w.h, (const TX *)w.u,
                                                                 (const TX *)w.dh, (const TX *)w.du, scale, T, H, NC);
    cudaCheckLaunch();
}

inline void check_dims(int K, int V) {
    if (K != V || (K != 64 && K != 128)) {
        fprintf(stderr, "deltarule: need K == V in {64, 128}, got K=%d V=%d\n", K, V);
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
 * the busy SMs (the state passes are latency bound, so an idle SM costs more than a narrower tile). */
constexpr long WAVE_FILL_NUM = 9, WAVE_FILL_DEN = 10;
inline AutoCfg auto_cfg(int B, int H, int D) {
    /* blocks with a V tile of 64: f64 for the forward, s64 for the state passes */
    const long f64 = (long)B * H * (D / 64), s64 = 2 * f64, enough = WAVE_FILL_NUM * num_sms();
    AutoCfg c;
    c.fwd_bv = force_bv() ? force_bv() : (f64 * WAVE_FILL_DEN >= enough ? 64 : 32);
    c.st_bv = force_bv() ? force_bv() : (s64 * WAVE_FILL_DEN >= enough ? 64 : 32);
    c.st_nst1 = c.st_bv == 64 && s64 > num_sms() ? 1 : 2;
    return c;
}
template <typename TX, int D>
void fwd_auto(const TX *Tm, TX *o, const TX *q, const TX *k, const TX *v, const TX *beta, float scale, int B, int T,
              int H, cudaStream_t st) {
    if (auto_cfg(B, H, D).fwd_bv == 64) fwd<TX, D, 64, 2>(Tm, o, q, k, v, beta, scale, B, T, H, st);
    else fwd<TX, D, 32, 2>(Tm, o, q, k, v, beta, scale, B, T, H, st);
}
template <typename TX, int D>
void bwd_states_auto(Workspace w, const TX *Tm, TX *dv, const TX *dout, const TX *q, const TX *k, const TX *v,
                     const TX *beta, float scale, int B, int T, int H, cudaStream_t st) {
    const AutoCfg c = auto_cfg(B, H, D);
    if (c.st_bv == 64 && c.st_nst1 == 1) bwd_states<TX, D, 64, 2, 1>(w, Tm, dv, dout, q, k, v, beta, scale, B, T, H, st);
    else if (c.st_bv == 64) bwd_states<TX, D, 64, 2, 2>(w, Tm, dv, dout, q, k, v, beta, scale, B, T, H, st);
    else bwd_states<TX, D, 32, 2, 2>(w, Tm, dv, dout, q, k, v, beta, scale, B, T, H, st);
}

template <typename TX, int D>
void forward(TX *o, TX *saved, const TX *q, const TX *k, const TX *v, const TX *beta, float scale, void *ws, int B,
             int T, int H, cudaStream_t st) {
    TX *Tm = saved ? saved : (TX *)carve_workspace<TX>(ws, B, T, H, D).Tm;
    prep<TX, D>(Tm, k, beta, B, T, H, st);
    fwd_auto<TX, D>(Tm, o, q, k, v, beta, scale, B, T, H, st);
}

template <typename TX, int D>
void backward(TX *dq, TX *dk, TX *dv, TX *dbeta, const TX *dout, const TX *saved, const TX *q, const TX *k,
              const TX *v, const TX *beta, float scale, void *ws, int B, int T, int H, cudaStream_t st) {
    Workspace w = carve_workspace<TX>(ws, B, T, H, D);
    const TX *Tm = saved;
    if (!Tm) {
        prep<TX, D>((TX *)w.Tm, k, beta, B, T, H, st);
        Tm = (const TX *)w.Tm;
    }
    bwd_states_auto<TX, D>(w, Tm, dv, dout, q, k, v, beta, scale, B, T, H, st);
    bwd_chunk<TX, D>(w, Tm, dq, dk, dbeta, dout, q, k, v, beta, scale, B, T, H, st);
}
} // namespace dr

/* ---- kernel launchers -------------------------------------------------------------------------------- */

/* Bytes of scratch workspace for deltarule_forward and deltarule_backward (the backward's; the
 * forward uses only the first BH * NC * 64 * 64 floatX, and none of it when given `saved`). */
template <typename floatX_> size_t deltarule_workspace_size(int B, int T, int H, int K, int V) {
    (void)V;
    const size_t NC = (size_t)ceil_div(T, dr::CH), BH = (size_t)B * H;
    return dr::tm_bytes<floatX_>(B, T, H) + 2 * round_up(BH * NC * K * K * sizeof(floatX_), 256) +
           2 * round_up(BH * NC * 64 * K * sizeof(floatX_), 256);
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
    if (K == 128) dr::forward<floatX_, 128>(o, saved, q, k, v, beta, scale, workspace, B, T, H, stream);
    else dr::forward<floatX_, 64>(o, saved, q, k, v, beta, scale, workspace, B, T, H, stream);
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
    if (K == 128) dr::backward<floatX_, 128>(dq, dk, dv, dbeta, dout, saved, q, k, v, beta, scale, workspace, B, T, H, stream);
    else dr::backward<floatX_, 64>(dq, dk, dv, dbeta, dout, saved, q, k, v, beta, scale, workspace, B, T, H, stream);
}
