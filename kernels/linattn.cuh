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
 * accumulates them times c in registers (fp32). This is the quadratic form, O(T^2 (K + V)) per head:
 * simple and exact rather than fast (MQAR's T = 512 costs nothing); the chunkwise state-passing
 * form of ref/linattn.c is the way to make it linear in T. Layout [B,T,H,X] for every tensor
 * (X = K for q, k and V for v, o); outputs are written (=), not accumulated. Head sizes up to
 * LA_MAX_DIM.
 */
#pragma once
#include "common.cuh"

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

template <typename floatX, bool UPPER>
inline void linattn_pairs(floatX *out, const floatX *a, const floatX *b, const floatX *c, float scale, int B, int T,
                          int H, int P, int Q, cudaStream_t stream) {
    if (P < 1 || Q < 1 || P > LA_MAX_DIM || Q > LA_MAX_DIM) {
        fprintf(stderr, "linattn: head sizes %d, %d out of range [1, %d]\n", P, Q, LA_MAX_DIM);
        exit(EXIT_FAILURE);
    }
    if (B <= 0 || T <= 0 || H <= 0) return;
    dim3 grid((T + LA_TILE - 1) / LA_TILE, B * H);
    linattn_pairs_kernel<floatX, UPPER><<<grid, LA_THREADS, 0, stream>>>(out, a, b, c, scale, T, H, P, Q);
    cudaCheckLaunch();
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
