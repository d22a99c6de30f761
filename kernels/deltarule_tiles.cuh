/*
 * deltarule_tiles.cuh -- the building blocks that every delta-rule kernel (deltarule.cuh) uses: the
 * chunk geometry, matrix operands (Mat), cp.async staging of tiles, and the warp-level products.
 *
 * A warp product accumulates acc += op(A) op(B) on 16 x 8 output tiles. For floatX = bf16 it runs on
 * tensor cores (mma.sync m16n8k16: bf16 operands read from shared memory by ldmatrix, fp32
 * accumulators); for float it is the same product in exact fp32 FMAs with the same register layout
 * (the test mode), so every kernel is written once for both. Chunk n of (b, h) covers rows
 * [64n, 64n + L) of the [B,T,H,K] tensors (L < 64 only for the last chunk; missing rows read as 0).
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

/* Dynamic shared memory above 48 KB for a kernel (its launcher calls this once). */
template <typename K> inline void set_smem(K kernel, size_t bytes) {
    cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

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

/* f(mt, nt, hh, r, c, x0, x1) for each pair of adjacent accumulator elements: row r, columns c and
 * c+1, at fragment position (mt, nt, hh). */
template <int MT, int NT, typename F>
__device__ __forceinline__ void for_each_pair_at(float (&acc)[MT][NT][4], int m0, int n0, F f) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++)
                f(mt, nt, hh, m0 + 16 * mt + g + 8 * hh, n0 + 8 * nt + 2 * t, acc[mt][nt][2 * hh], acc[mt][nt][2 * hh + 1]);
}
/* The same walk as f(r, c, x0, x1). */
template <int MT, int NT, typename F>
__device__ __forceinline__ void for_each_pair(float (&acc)[MT][NT][4], int m0, int n0, F f) {
    for_each_pair_at(acc, m0, n0, [&](int, int, int, int r, int c, float &x0, float &x1) { f(r, c, x0, x1); });
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

/* ---- the gate (gated delta rule; GATED = false compiles all of this away) ------------------------
 * Per chunk, 4 x 64 floats in shared memory: G_i = sum_{j<=i} g_j (the cumulative log decay, rows >= L
 * read g = 0), gam_i = exp(G_i), dec_i = exp(G_63 - G_i), and for fp32 the low part of G (G - (float)G,
 * the scan runs in double there: G_i - G_j of two large fp32 sums would lose the digits that matter
 * under strong decay). Gamma_ij = exp(G_i - G_j) (j <= i) is formed where it is used, never as
 * gam_i / gam_j (which underflows under strong decay). */
constexpr int GATE_FLOATS = 4 * CH;
__device__ __forceinline__ const float *gate_gam(const float *gt) { return gt + CH; }
__device__ __forceinline__ const float *gate_dec(const float *gt) { return gt + 2 * CH; }

/* Threads 0..63 (warps 0 and 1): this lane's g in both halves of chunk ck (0 past the end), loaded
 * early so that the latency hides behind the tile copies; gate_finish (no barrier) makes the gate. */
struct GateIn {
    float a, b;
};
__device__ __forceinline__ GateIn gate_load(const float *g, const Chunk &ck, int H) {
    const int tid = threadIdx.x, lane = tid & 31;
    GateIn r{0.0f, 0.0f};
    if (tid < 64) {
        if (lane < ck.L) r.a = g[ck.row0 + (size_t)lane * H];
        if (lane + 32 < ck.L) r.b = g[ck.row0 + (size_t)(lane + 32) * H];
    }
    return r;
}
/* Both warps scan both halves, so that G_63 is the same number in every element. */
template <typename X> __device__ __forceinline__ void gate_scan(X &a, X &b, X &G, X &Glast) {
    const int tid = threadIdx.x, lane = tid & 31;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const X ua = __shfl_up_sync(0xffffffffu, a, o), ub = __shfl_up_sync(0xffffffffu, b, o);
        if (lane >= o) { a += ua; b += ub; }
    }
    const X ta = __shfl_sync(0xffffffffu, a, 31), tb = __shfl_sync(0xffffffffu, b, 31);
    G = tid < 32 ? a : ta + b;
    Glast = ta + tb;
}
template <typename TX> __device__ __forceinline__ void gate_finish(float *gt, GateIn in) {
    const int tid = threadIdx.x;
    if (tid >= 64) return;
    if constexpr (sizeof(TX) == 4) { /* fp32 (the test mode): double scan and exp */
        double a = in.a, b = in.b, G, Glast;
        gate_scan(a, b, G, Glast);
        const float hi = (float)G;
        gt[tid] = hi;
        gt[CH + tid] = (float)exp(G);
        gt[2 * CH + tid] = (float)exp(Glast - G);
        gt[3 * CH + tid] = (float)(G - hi);
    } else {
        float a = in.a, b = in.b, G, Glast;
        gate_scan(a, b, G, Glast);
        gt[tid] = G;
        gt[CH + tid] = __expf(G);
        gt[2 * CH + tid] = __expf(Glast - G);
        gt[3 * CH + tid] = 0.0f;
    }
}

/* f(r, s) once per accumulator row r (on the lane with t = 0), s = sum_c acc[r][c] X[r][c] over the
 * columns the warp holds: a row's dot product with the same row of X. */
template <int MT, int NT, typename TX, typename F>
__device__ __forceinline__ void row_dot(float (&acc)[MT][NT][4], int m0, int n0, const Mat<TX> &X, F f) {
    float part[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) part[mt][0] = part[mt][1] = 0.0f;
    for_each_pair_at(acc, m0, n0, [&](int mt, int nt, int hh, int r, int c, float &x0, float &x1) {
        const float2 xx = mat_ld2(X, r, c);
        part[mt][hh] += x0 * xx.x + x1 * xx.y;
    });
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const float s = quad_sum(part[mt][hh]);
            if ((lane & 3) == 0) f(m0 + 16 * mt + (lane >> 2) + 8 * hh, s);
        }
}

/* x Gamma_rc (c <= r) when gated, x otherwise; G = the gate (fp32: G's two parts, exp in double). */
template <bool GATED, typename TX> __device__ __forceinline__ float gmul(float x, const float *G, int r, int c) {
    if constexpr (!GATED) return x;
    else if constexpr (sizeof(TX) == 4)
        return x * (float)exp(((double)G[r] - G[c]) + ((double)G[3 * CH + r] - G[3 * CH + c]));
    else return x * __expf(G[r] - G[c]);
}
/* Rows of an accumulator times the per-row factor f[r] (gated only). */
template <bool GATED, int MT, int NT>
__device__ __forceinline__ void scale_rows(float (&acc)[MT][NT][4], int m0, int n0, const float *f) {
    if constexpr (GATED)
        for_each_pair(acc, m0, n0, [&](int r, int c, float &x0, float &x1) { x0 *= f[r]; x1 *= f[r]; });
}

/* M = tril(Q K^T) (diagonal kept), gated: M o Gamma, into shared Ms [64][ldm] as floatX: warp tile
 * 16 x 32; tiles entirely above the diagonal are written as zeros without a product. */
template <typename TX, int D, bool GATED = false>
__device__ __forceinline__ void chunk_qk_tril(TX *Ms, int ldm, const Mat<TX> &Qm, const Mat<TX> &Km,
                                              const float *G = nullptr) {
    const int w = threadIdx.x >> 5, m0 = 16 * (w & 3), n0 = 32 * (w >> 2);
    float acc[1][4][4];
    zero_acc(acc);
    if (n0 <= m0 + 15) warp_mma<1, 4, false, true, D>(acc, Qm, m0, Km, n0);
    for_each_pair(acc, m0, n0, [&](int r, int c, float &x0, float &x1) {
        st2(Ms + r * ldm + c, c <= r ? gmul<GATED, TX>(x0, G, r, c) : 0.0f, c + 1 <= r ? gmul<GATED, TX>(x1, G, r, c + 1) : 0.0f);
    });
}

/* The forward pass's first products, sharing fragments: accX += K S, accO += Q S (S loaded once),
 * and M = tril(Q K^T) (gated: M o Gamma) into Ms (Q loaded once). Rows m0.. of the chunk, state
 * columns n0.., M columns mn0... fp32: the plain products. */
template <int NT, int D, bool GATED>
__device__ __forceinline__ void fwd_first(float (&accX)[1][NT][4], float (&accO)[1][NT][4], const Mat<bf16> &Km,
                                          const Mat<bf16> &Qm, const Mat<bf16> &Sm, bf16 *Ms, int ldm, int m0, int n0,
                                          int mn0, const float *G) {
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
        st2(Ms + r * ldm + c, c <= r ? gmul<GATED, bf16>(x0, G, r, c) : 0.0f, c + 1 <= r ? gmul<GATED, bf16>(x1, G, r, c + 1) : 0.0f);
    });
}
template <int NT, int D, bool GATED>
__device__ __forceinline__ void fwd_first(float (&accX)[1][NT][4], float (&accO)[1][NT][4], const Mat<float> &Km,
                                          const Mat<float> &Qm, const Mat<float> &Sm, float *Ms, int ldm, int m0,
                                          int n0, int mn0, const float *G) {
    (void)mn0;
    warp_mma<1, NT, false, false, D>(accX, Km, m0, Sm, n0);
    warp_mma<1, NT, false, false, D>(accO, Qm, m0, Sm, n0);
    chunk_qk_tril<float, D, GATED>(Ms, ldm, Qm, Km, G);
}


} // namespace dr
