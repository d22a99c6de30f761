/*
 * linattn.cuh -- linear attention ('L' layers) on the GPU, forward and backward: the delta rule's
 * shapes with S_t = S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t (ref/linattn.c is the reference).
 *
 * Unrolled from a zero state, every output and every gradient is one "causal pair sum":
 *     o_i  = scale sum_{j <= i} (q_i . k_j) v_j
 *     dq_i = scale sum_{j <= i} (do_i . v_j) k_j
 *     dk_j = scale sum_{i >= j} (v_j . do_i) q_i
 *     dv_j = scale sum_{i >= j} (k_j . q_i) do_i
 * so one kernel computes out_i = scale sum_{j in R(i)} (a_i . b_j) c_j with R(i) = {j <= i} (LOWER)
 * or {j >= i} (UPPER), over tiles of LA_TILE rows: a block holds one tile of a's rows, walks the
 * tiles of (b, c) rows that R allows, forms the LA_TILE x LA_TILE products in shared memory and
 * accumulates them times c in registers (fp32). This is the quadratic form, O(T^2 (K + V)) per head;
 * the chunkwise state-passing form of ref/linattn.c is the way to make it linear in T. Layout
 * [B,T,H,X] for every tensor (X = K for q, k and V for v, o); outputs are written (=), not
 * accumulated. Head sizes up to LA_MAX_DIM.
 *
 * Two kernels compute it. Head sizes 64 and 128 (the model's) take linattn_tc_kernel: tiles of 64
 * rows, the 64 x 64 products (a_i . b_j) by the delta rule's warp products (deltarule_tiles.cuh:
 * tensor cores for bf16, whose products are rounded to bf16 before they multiply c, as attention
 * kernels do; exact fp32 FMAs for float), masked on the diagonal tile, then times the c tile. Any
 * other size takes linattn_pairs_kernel: 16-row tiles, one scalar product per thread, fp32 (16.6x
 * slower at MQAR's D=256 layer on an H200: bench_kernels).
 */
#pragma once
#include "common.cuh"
#include "deltarule_tiles.cuh" /* Mat, cp_tile, warp_mma, for_each_pair, set_smem: the tensor-core tile products */

// ----------------------------------------------------------------------------
// kernel launchers (declarations; definitions at the end)

/* o [B,T,H,V] = linear attention of q, k [B,T,H,K] and v [B,T,H,V] from a zero state. */
template <typename floatX>
void linattn_forward(floatX *o, const floatX *q, const floatX *k, const floatX *v, float scale, int B, int T, int H,
                     int K, int V, cudaStream_t stream);
/* dq, dk [B,T,H,K], dv [B,T,H,V] (=) from dout [B,T,H,V]; no state gradient (zero initial state). */
template <typename floatX>
void linattn_backward(floatX *dq, floatX *dk, floatX *dv, const floatX *dout, const floatX *q, const floatX *k,
                      const floatX *v, float scale, int B, int T, int H, int K, int V, cudaStream_t stream);

// ----------------------------------------------------------------------------
// kernels

#define LA_TILE 16      /* rows of a tile: LA_TILE^2 = 256 products, one per thread */
#define LA_THREADS 256
#define LA_MAX_DIM 128  /* largest head size the shared tiles hold */
#define LA_OUT_PER_THREAD (LA_TILE * LA_MAX_DIM / LA_THREADS)

/* out_i = scale sum_{j in R(i)} (a_i . b_j) c_j for the LA_TILE rows i of blockIdx.x, head
 * blockIdx.y = b H + h. a, b: [B,T,H,P]; c, out: [B,T,H,Q]. */
template <typename floatX, bool UPPER>
__global__ void __launch_bounds__(LA_THREADS)
linattn_pairs_kernel(floatX *out, const floatX *a, const floatX *b, const floatX *c, float scale, int T, int H, int P,
                     int Q) {
    __shared__ float sa[LA_TILE][LA_MAX_DIM], sb[LA_TILE][LA_MAX_DIM + 1], sc[LA_TILE][LA_MAX_DIM];
    __shared__ float sp[LA_TILE][LA_TILE];
    const int bh = blockIdx.y, bb = bh / H, h = bh % H, i0 = blockIdx.x * LA_TILE, tid = threadIdx.x;
    const size_t ldp = (size_t)H * P, ldq = (size_t)H * Q;
    const floatX *a0 = a + (size_t)bb * T * ldp + (size_t)h * P;
    const floatX *b0 = b + (size_t)bb * T * ldp + (size_t)h * P;
    const floatX *c0 = c + (size_t)bb * T * ldq + (size_t)h * Q;
    for (int e = tid; e < LA_TILE * P; e += LA_THREADS) {
        const int r = e / P, d = e % P;
        sa[r][d] = i0 + r < T ? to_f<floatX>(a0[(size_t)(i0 + r) * ldp + d]) : 0.0f;
    }
    float acc[LA_OUT_PER_THREAD];
#pragma unroll
    for (int u = 0; u < LA_OUT_PER_THREAD; u++) acc[u] = 0.0f;
    const int ntiles = (T + LA_TILE - 1) / LA_TILE;
    const int jt0 = UPPER ? blockIdx.x : 0, jt1 = UPPER ? ntiles - 1 : blockIdx.x;
    for (int jt = jt0; jt <= jt1; jt++) {
        const int j0 = jt * LA_TILE;
        __syncthreads(); /* the previous tile's sb, sc, sp are read */
        for (int e = tid; e < LA_TILE * P; e += LA_THREADS) {
            const int r = e / P, d = e % P;
            sb[r][d] = j0 + r < T ? to_f<floatX>(b0[(size_t)(j0 + r) * ldp + d]) : 0.0f;
        }
        for (int e = tid; e < LA_TILE * Q; e += LA_THREADS) {
            const int r = e / Q, d = e % Q;
            sc[r][d] = j0 + r < T ? to_f<floatX>(c0[(size_t)(j0 + r) * ldq + d]) : 0.0f;
        }
        __syncthreads();
        {   /* one product per thread: row r of the a tile with row jj of the b tile */
            const int r = tid / LA_TILE, jj = tid % LA_TILE, i = i0 + r, j = j0 + jj;
            float s = 0.0f;
            for (int d = 0; d < P; d++) s += sa[r][d] * sb[jj][d];
            const bool keep = i < T && j < T && (UPPER ? j >= i : j <= i);
            sp[r][jj] = keep ? s : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int u = 0; u < LA_OUT_PER_THREAD; u++) {
            const int o = tid + u * LA_THREADS, r = o / Q, d = o % Q;
            if (r < LA_TILE) {
                float s = 0.0f;
#pragma unroll
                for (int jj = 0; jj < LA_TILE; jj++) s += sp[r][jj] * sc[jj][d];
                acc[u] += s;
            }
        }
    }
    floatX *o0 = out + (size_t)bb * T * ldq + (size_t)h * Q;
#pragma unroll
    for (int u = 0; u < LA_OUT_PER_THREAD; u++) {
        const int o = tid + u * LA_THREADS, r = o / Q, d = o % Q;
        if (r < LA_TILE && i0 + r < T) o0[(size_t)(i0 + r) * ldq + d] = from_f<floatX>(scale * acc[u]);
    }
}

/* The same sum on tiles of 64 rows, head sizes P, Q in {64, 128}: block (row tile blockIdx.x, head
 * blockIdx.y = b H + h) stages its a tile, then for each (b, c) tile that R allows forms
 * S = a b^T (64 x 64, warp tiles of 16 x 32, those wholly outside R on the diagonal tile skipped),
 * zeroes S outside R on the diagonal tile, and accumulates S c (warp tiles 32 x Q/4, fp32). Rows
 * past T are staged as zeros and never written. */
template <typename TX, int P, int Q> struct LaTcLayout {
    static constexpr int LDP = padded<TX>(P), LDQ = padded<TX>(Q), LDS = padded<TX>(64);
    static constexpr size_t O_B = (size_t)64 * LDP * sizeof(TX), O_C = 2 * O_B, O_S = O_C + (size_t)64 * LDQ * sizeof(TX),
                            BYTES = O_S + (size_t)64 * LDS * sizeof(TX);
};
template <typename TX, int P, int Q, bool UPPER>
__global__ void __launch_bounds__(dr::NTHREADS)
    linattn_tc_kernel(TX *out, const TX *a, const TX *b, const TX *c, float scale, int T, int H) {
    using namespace dr;
    typedef LaTcLayout<TX, P, Q> L;
    constexpr int NTO = Q / 32;
    extern __shared__ __align__(16) unsigned char smem[];
    TX *As = (TX *)smem, *Bs = (TX *)(smem + L::O_B), *Cs = (TX *)(smem + L::O_C), *Ss = (TX *)(smem + L::O_S);
    const int it = blockIdx.x, bh = blockIdx.y, bb = bh / H, h = bh % H, w = threadIdx.x >> 5;
    const size_t ldp = (size_t)H * P, ldq = (size_t)H * Q;
    const TX *a0 = a + (size_t)bb * T * ldp + (size_t)h * P, *b0 = b + (size_t)bb * T * ldp + (size_t)h * P,
             *c0 = c + (size_t)bb * T * ldq + (size_t)h * Q;
    const int i0 = it * 64, ntile = (T + 63) / 64;
    cp_tile<TX, 64, P>(As, L::LDP, a0 + (size_t)i0 * ldp, ldp, min(64, T - i0));
    const Mat<TX> Am{As, L::LDP, 64}, Bm{Bs, L::LDP, 64}, Cm{Cs, L::LDQ, 64}, Sm{Ss, L::LDS, 64};
    const int am0 = 16 * (w & 3), an0 = 32 * (w >> 2), bm0 = 32 * (w & 1), bn0 = (Q / 4) * (w >> 1);
    float acc[2][NTO][4];
    zero_acc(acc);
    const int jt0 = UPPER ? it : 0, jt1 = UPPER ? ntile - 1 : it;
    for (int jt = jt0; jt <= jt1; jt++) {
        const int j0 = jt * 64;
        __syncthreads(); /* the previous tile's B, C, S are read */
        cp_tile<TX, 64, P>(Bs, L::LDP, b0 + (size_t)j0 * ldp, ldp, min(64, T - j0));
        cp_tile<TX, 64, Q>(Cs, L::LDQ, c0 + (size_t)j0 * ldq, ldq, min(64, T - j0));
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
        const bool diag = jt == it;
        float s[1][4][4];
        zero_acc(s);
        if (!diag || (UPPER ? an0 + 31 >= am0 : an0 <= am0 + 15)) warp_mma<1, 4, false, true, P>(s, Am, am0, Bm, an0);
        for_each_pair(s, am0, an0, [&](int r, int cc, float &x0, float &x1) {
            const bool k0 = !diag || (UPPER ? cc >= r : cc <= r), k1 = !diag || (UPPER ? cc + 1 >= r : cc + 1 <= r);
            st2(Ss + r * L::LDS + cc, k0 ? x0 : 0.0f, k1 ? x1 : 0.0f);
        });
        __syncthreads();
        warp_mma<2, NTO, false, false, 64>(acc, Sm, bm0, Cm, bn0);
    }
    TX *o0 = out + (size_t)bb * T * ldq + (size_t)h * Q;
    for_each_pair(acc, bm0, bn0, [&](int r, int cc, float &x0, float &x1) {
        if (i0 + r < T) st2(o0 + (size_t)(i0 + r) * ldq + cc, scale * x0, scale * x1);
    });
}
template <typename floatX, int P, int Q, bool UPPER>
inline void linattn_tc(floatX *out, const floatX *a, const floatX *b, const floatX *c, float scale, int B, int T, int H,
                       cudaStream_t stream) {
    const size_t sm = LaTcLayout<floatX, P, Q>::BYTES;
    static bool init = false;
    if (!init) { dr::set_smem(linattn_tc_kernel<floatX, P, Q, UPPER>, sm); init = true; }
    linattn_tc_kernel<floatX, P, Q, UPPER><<<dim3((T + 63) / 64, B * H), dr::NTHREADS, sm, stream>>>(out, a, b, c, scale, T, H);
    cudaCheckLaunch();
}

/* The scalar kernel for any head sizes in [1, LA_MAX_DIM] (linattn_pairs checks them). */
template <typename floatX, bool UPPER>
inline void linattn_pairs_scalar(floatX *out, const floatX *a, const floatX *b, const floatX *c, float scale, int B,
                                 int T, int H, int P, int Q, cudaStream_t stream) {
    dim3 grid((T + LA_TILE - 1) / LA_TILE, B * H);
    linattn_pairs_kernel<floatX, UPPER><<<grid, LA_THREADS, 0, stream>>>(out, a, b, c, scale, T, H, P, Q);
    cudaCheckLaunch();
}
template <typename floatX, bool UPPER>
inline void linattn_pairs(floatX *out, const floatX *a, const floatX *b, const floatX *c, float scale, int B, int T,
                          int H, int P, int Q, cudaStream_t stream) {
    if (P < 1 || Q < 1 || P > LA_MAX_DIM || Q > LA_MAX_DIM) {
        fprintf(stderr, "linattn: head sizes %d, %d out of range [1, %d]\n", P, Q, LA_MAX_DIM);
        exit(EXIT_FAILURE);
    }
    if (B <= 0 || T <= 0 || H <= 0) return;
    if ((P == 64 || P == 128) && (Q == 64 || Q == 128)) {
        if (P == 64 && Q == 64) linattn_tc<floatX, 64, 64, UPPER>(out, a, b, c, scale, B, T, H, stream);
        else if (P == 64) linattn_tc<floatX, 64, 128, UPPER>(out, a, b, c, scale, B, T, H, stream);
        else if (Q == 64) linattn_tc<floatX, 128, 64, UPPER>(out, a, b, c, scale, B, T, H, stream);
        else linattn_tc<floatX, 128, 128, UPPER>(out, a, b, c, scale, B, T, H, stream);
        return;
    }
    linattn_pairs_scalar<floatX, UPPER>(out, a, b, c, scale, B, T, H, P, Q, stream);
}

// ----------------------------------------------------------------------------
// kernel launchers

template <typename floatX>
void linattn_forward(floatX *o, const floatX *q, const floatX *k, const floatX *v, float scale, int B, int T, int H,
                     int K, int V, cudaStream_t stream) {
    linattn_pairs<floatX, false>(o, q, k, v, scale, B, T, H, K, V, stream);
}

template <typename floatX>
void linattn_backward(floatX *dq, floatX *dk, floatX *dv, const floatX *dout, const floatX *q, const floatX *k,
                      const floatX *v, float scale, int B, int T, int H, int K, int V, cudaStream_t stream) {
    linattn_pairs<floatX, false>(dq, dout, v, k, scale, B, T, H, V, K, stream); /* dq_i = sum_{j<=i} (do_i.v_j) k_j */
    linattn_pairs<floatX, true>(dk, v, dout, q, scale, B, T, H, V, K, stream);  /* dk_j = sum_{i>=j} (v_j.do_i) q_i */
    linattn_pairs<floatX, true>(dv, k, q, dout, scale, B, T, H, K, V, stream);  /* dv_j = sum_{i>=j} (k_j.q_i) do_i */
}
