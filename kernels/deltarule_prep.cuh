/*
 * deltarule_prep.cuh -- stage 1 of the chunkwise delta rule: per chunk (chunk-parallel, one block per
 * (chunk, b*H+h)) the matrix that turns the chunk's rows into its WY form,
 *
 *     A = strictly_lower(diag(beta) K K^T),     Tm = (I + A)^-1
 *
 * (gated: A = strictly_lower(diag(beta) (K K^T o Gamma)), Gamma_ij = exp(G_i - G_j), deltarule.cuh)
 * K K^T on tensor cores (bf16) or in fp32, then the unit lower-triangular inverse by a blocked
 * forward substitution over 16 x 16 blocks, all in fp32, and Tm rounded to floatX. The forward's
 * state pass and the backward read Tm; the forward can save it for the backward (deltarule.cuh).
 */
#pragma once
#include "deltarule_tiles.cuh"

namespace dr {

/* ---- prep: Tm = (I + strictly_lower(diag(beta) K K^T))^-1 per chunk --------------------------- */
constexpr int LDF = 68; /* fp32 64x64 work matrices: rows 16-byte aligned, 4-bank row offset */
constexpr int LDR = 20; /* fp32 16x16 products */
template <typename TX, int D, bool GATED> constexpr size_t prep_smem() {
    return round_up(2 * 64 * LDF * 4, 16) + 64 * 4 + (GATED ? GATE_FLOATS * 4 : 0) + round_up(3 * 16 * LDR * 4, 16) +
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

template <typename TX, int D, bool GATED>
__global__ void __launch_bounds__(NTHREADS) prep_kernel(TX *Tm_out, const TX *k, const TX *beta, const float *g, int T,
                                                         int H, int NC) {
    constexpr bool STG = sizeof(TX) == 2;
    constexpr int LDD = padded<TX>(D);
    extern __shared__ __align__(16) unsigned char smem[];
    unsigned char *sp = smem;
    float *Af = carve<float>(sp, 2 * 64 * LDF); /* Af [64][LDF], then Tf [64][LDF] */
    float *Tf = Af + 64 * LDF;
    float *bs = carve<float>(sp, 64);
    float *gt = GATED ? carve<float>(sp, GATE_FLOATS) : nullptr;
    float *Rf = carve<float>(sp, 3 * 16 * LDR);
    TX *Ks = STG ? carve<TX>(sp, 64 * LDD) : nullptr;

    const int n = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, tid = threadIdx.x, w = tid >> 5;
    const Chunk ck = chunk_at(b, h, n, T, H);
    const size_t ldg = (size_t)H * D;
    const GateIn gi = GATED ? gate_load(g, ck, H) : GateIn{0.0f, 0.0f};
    if (STG) {
        cp_tile<TX, 64, D>(Ks, LDD, k + ck.row0 * D, ldg, ck.L);
        cp_async_commit();
    }
    if (tid < 64) bs[tid] = tid < ck.L ? to_f(beta[ck.row0 + (size_t)tid * H]) : 0.0f;
    if (GATED) gate_finish<TX>(gt, gi);
    cp_async_wait<0>();
    __syncthreads();

    const Mat<TX> Km = STG ? Mat<TX>{Ks, LDD, 64} : Mat<TX>{k + ck.row0 * D, (int)ldg, ck.L};
    {
        const int m0 = 16 * (w & 3), n0 = 32 * (w >> 2);
        float accA[1][4][4];
        zero_acc(accA);
        if (n0 <= m0 + 15) warp_mma<1, 4, false, true, D>(accA, Km, m0, Km, n0); /* upper tiles stay zero */
        for_each_pair(accA, m0, n0, [&](int r, int c, float &x0, float &x1) {
            st2(Af + r * LDF + c, c < r ? bs[r] * gmul<GATED, TX>(x0, gt, r, c) : 0.0f,
                c + 1 < r ? bs[r] * gmul<GATED, TX>(x1, gt, r, c + 1) : 0.0f);
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

} // namespace dr
