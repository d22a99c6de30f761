/*
 * conv.cuh -- DeltaNet's q, k, v path after the projection: causal depthwise conv (kernel 4), SiLU,
 * and the per-head L2 norm of q and k, fused into one kernel each way.
 *
 * Math (g = gradient of the loss w.r.t. the named quantity, s = sigmoid, silu(z) = z s(z),
 * silu'(z) = s(z) (1 + z (1 - s(z)))):
 *   conv_silu    z[t] = sum_j w[c,j] x[t-3+j] (x[t<0] = 0), u = silu(z)
 *   l2norm       y = u / sqrt(sum_head u^2 + eps)      (q and k heads only; v: y = u)
 *                  backward: du = (dy - y (y.dy)) / sqrt(sum u^2 + eps), dz = du silu'(z),
 *                  dw[c,j] += sum_t dz[t] x[t-3+j],  dx[t] = sum_j w[c,j] dz[t+3-j]
 *
 * Layouts: either one launch per tensor on its own [B,T,D] plane (C = D, C_norm = D for q and k, 0
 * for v, w = that tensor's [D,4] conv weight), or one launch over an interleaved [B,T,3D] buffer
 * whose rows are q|k|v (C = 3D, C_norm = 2D, w = the [3D,4] conv weights, which are adjacent in the
 * parameter table; the fused [3D,D] projection of matmul.cuh writes such rows), optionally with
 * plane = D: the output (and the backward's dout) then is three planes q, k, v [B,T,D] one after
 * the other, as the delta rule takes them, while the rows side stays q|k|v.
 * Limits (checked): the fused conv needs K % 32 == 0 and K <= 256 for the normalised channels.
 * Conventions (floatX, fp32 reductions and parameter gradients, deterministic scratch, alignment,
 * graph capture): see common.cuh.
 */
#pragma once
#include <cassert>
#include "common.cuh"

// ----------------------------------------------------------------------------
// kernel launchers (declarations; definitions at the end)

/* inp/out [B,T,C]; w fp32 [C,4] (tap 3 = current token). Channels c < C_norm (a multiple of K)
 * are L2-normalised per group of K consecutive channels (eps_l2 = the config's l2_eps in the model); the rest are
 * plain silu(conv). DeltaNet: C = 3D (q|k|v rows), C_norm = 2D, K = head_dim. Plain conv+SiLU:
 * C_norm = 0 (K is then unused, pass 128).
 * plane > 0 (a divisor of C, a multiple of K and of 16/sizeof(floatX)): out is stored planar, C/plane
 * planes [B*T, plane] one after the other (plane j = channels [j*plane, (j+1)*plane)) while inp stays
 * [B*T, C] rows: plane = D turns the q|k|v rows of the fused [3D,D] projection into the separate
 * q, k, v tensors [B,T,D] of the delta rule. plane = 0: out is [B*T, C] rows like inp. */
template <typename floatX>
void conv_silu_l2norm_forward(floatX *out, const floatX *inp, const float *w, int B, int T, int C, int C_norm,
                              int K, float eps_l2, cudaStream_t stream, int plane = 0);
inline size_t conv_silu_l2norm_backward_scratch_floats(int B, int T, int C, int K);
/* dinp (=) [B*T, C] rows, dw (fp32 [C,4]) += ; recomputes the forward from inp. dout is planar when
 * plane > 0 (laid out as the forward's out), [B*T, C] rows otherwise. */
template <typename floatX>
void conv_silu_l2norm_backward(floatX *dinp, float *dw, float *scratch, const floatX *dout, const floatX *inp,
                               const float *w, int B, int T, int C, int C_norm, int K, float eps_l2,
                               cudaStream_t stream, int plane = 0);

// ----------------------------------------------------------------------------
// causal conv (kernel 4) + SiLU + per-head L2 norm.
//
// Tiling. A lane owns CPL adjacent channels, read and written as one vector of CONV_*_BYTES (8: bf16
// CPL = 4, fp32 CPL = 2), so a warp covers a group of G = 32*CPL channels and a head of K channels
// is HL = K/CPL adjacent lanes: the L2 norm of a head is a shuffle sum over HL lanes (the backward
// reduces its two sums u.u and u.dy together, group_sum2). Head widths with K/CPL not a power of two
// <= 32 (K = 96, 160, ..., 256) fall back to CPL = K/32, one head per warp. Launches whose lanes all
// take the vector path (aligned, C a multiple of G) use the FULL instantiation, free of per-lane
// masks.
// Grid = (channel groups, nby) blocks of CONV_WARPS warps; nby is chosen from the kernel's occupancy
// so that the whole grid is resident at once (one wave, no tail), and the N = B*T rows are split
// evenly over the nby*CONV_WARPS warps of a group. Each warp walks its contiguous range of rows in
// time order, one row at a time, restarting at each sequence start: it keeps the last 3 input rows
// in registers (the backward: also the last 3 dz), rotating through fixed registers (the loop is
// unrolled by a multiple of 3), and CONV_*_QD rows ahead in flight, a queue of raw loads (bf16 stays
// packed) refilled as each row is consumed. A range that starts inside a sequence re-reads the 3
// rows before it (the conv's halo). The backward also recomputes dz for the 3 rows after its range
// (dx[t] needs dz[t..t+3]) and adds dw over its own rows only; each block sums its warps' dw (in warp
// order) into one partial row of the scratch, and conv_dw_colsum_kernel adds the nby partial rows in
// a fixed order: deterministic.
// Planar layout (plane > 0): the tensor on the delta-rule side (out in the forward, dout in the
// backward) is C/plane planes [B*T, plane], plane j holding channels [j*plane, (j+1)*plane); inp and
// dinp stay [B*T, C] rows. A lane's CPL channels lie in one plane, so each lane simply has its own
// base pointer and row stride on that side.

#define CONV_WARPS 4
#define CONV_MIN_ROWS 32 /* fewest rows per warp worth a warp (small problems) */
/* Bytes per access of a lane's channels (CPL = bytes / sizeof(floatX)), rows each warp has in flight
 * (queue depth) and __launch_bounds__ min blocks per SM (a register cap) for lanes of <= 4 channels;
 * wider lanes (fallback head widths) get 4 forward, 1 backward. Tuned on an H100 at the d12 sizes:
 * 8-byte lanes with more warps beat 16-byte lanes (whose backward needs 200+ registers), and the
 * occupancy matters more than deeper queues. */
#define CONV_FWD_BYTES 8
#define CONV_BWD_BYTES 8
#define CONV_FWD_QD 3
#define CONV_BWD_QD 1
#define CONV_FWD_MINB 6
#define CONV_BWD_MINB 4

/* Elements per vector access for CPL channels of floatX: the widest power of two dividing CPL of
 * 4..16 bytes; 0 when there is none (element by element). */
template <typename floatX, int CPL> __host__ __device__ constexpr int conv_pack() {
    for (int w = 8; w >= 1; w >>= 1)
        if (CPL % w == 0 && w * (int)sizeof(floatX) <= 16 && w * (int)sizeof(floatX) >= 4) return w;
    return 0;
}

/* CPL adjacent channels of one row as raw bits, bf16 packed two per word until used. load():
 * vector accesses when full (row strides and pointers aligned, all CPL channels below C), else
 * element by element, zeros at and past C (nvalid = C - first channel). */
template <typename floatX, int CPL> struct ConvRaw {
    static constexpr int W = conv_pack<floatX, CPL>();
    static constexpr int NW = (CPL * (int)sizeof(floatX) + 3) / 4;
    uint32_t u[NW];
    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int i = 0; i < NW; i++) u[i] = 0u;
    }
    __device__ __forceinline__ void load(const floatX *p, bool full, int nvalid) {
        if constexpr (W > 0) {
            if (full) {
                constexpr int WW = W * (int)sizeof(floatX) / 4; /* words per access */
#pragma unroll
                for (int i = 0; i < NW / WW; i++) {
                    Pack<uint32_t, WW> pk = *reinterpret_cast<const Pack<uint32_t, WW> *>(p + i * W);
#pragma unroll
                    for (int j = 0; j < WW; j++) u[i * WW + j] = pk.v[j];
                }
                return;
            }
        }
        zero();
#pragma unroll
        for (int k = 0; k < CPL; k++) {
            if (k >= nvalid) break;
            if constexpr (sizeof(floatX) == 2) u[k / 2] |= (uint32_t)__bfloat16_as_ushort(p[k]) << (16 * (k % 2));
            else u[k] = __float_as_uint(p[k]);
        }
    }
    __device__ __forceinline__ float get(int k) const {
        if constexpr (sizeof(floatX) == 2) return __uint_as_float(k % 2 ? (u[k / 2] & 0xffff0000u) : (u[k / 2] << 16));
        else return __uint_as_float(u[k]);
    }
};

template <typename floatX, int CPL>
__device__ __forceinline__ void conv_store(floatX *p, const float (&src)[CPL], bool full, int nvalid) {
    constexpr int W = conv_pack<floatX, CPL>();
    if constexpr (W > 0) {
        if (full) {
#pragma unroll
            for (int i = 0; i < CPL / W; i++)
                store_f<floatX, W>(p + i * W, *reinterpret_cast<const float(*)[W]>(&src[i * W]));
            return;
        }
    }
#pragma unroll
    for (int k = 0; k < CPL; k++) if (k < nvalid) p[k] = from_f<floatX>(src[k]);
}

/* (a, b) <- their sums over each aligned group of HL lanes, with log2(HL) + 1 shuffles instead of
 * 2 log2(HL): the first exchange leaves a's pair sums on the upper half of each group and b's on
 * the lower half, the halves reduce one value each, and a last exchange hands each lane the other. */
template <int HL> __device__ __forceinline__ void group_sum2(float &a, float &b) {
    if constexpr (HL > 1) {
        constexpr int H = HL / 2;
        bool hi = threadIdx.x & H;
        float v = (hi ? a : b) + __shfl_xor_sync(0xffffffffu, hi ? b : a, H);
#pragma unroll
        for (int o = H / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        float other = __shfl_xor_sync(0xffffffffu, v, H);
        a = hi ? v : other;
        b = hi ? other : v;
    }
}

/* The lane's base pointer and row stride on the planar side (plane = 0: plain [N, C] rows). */
template <typename T>
__device__ __forceinline__ T *conv_plane_ptr(T *base, int c, int C, int N, int plane, int &stride) {
    if (plane <= 0 || c >= C) { stride = C; return base + (c < C ? c : 0); }
    stride = plane;
    return base + (size_t)(c / plane) * N * plane + c % plane;
}

/* This warp's rows [n0, n1) of the N rows, an even split over the gridDim.y*CONV_WARPS warps. */
__device__ __forceinline__ void conv_warp_rows(int N, int warp, int &n0, int &n1) {
    long nw = (long)gridDim.y * CONV_WARPS, gw = (long)blockIdx.y * CONV_WARPS + warp;
    n0 = (int)(gw * N / nw);
    n1 = (int)((gw + 1) * N / nw);
}

/* Rows the main loops unroll: a multiple of the queue depth (slot = r % QD) and of 3 (the window of
 * the last 3 rows rotates through fixed registers), so both are indexed by compile-time constants. */
template <int QD> __host__ __device__ constexpr int conv_unroll() { return QD % 3 == 0 ? QD : 3 * QD; }

/* The lane's 4 conv taps of each of its CPL channels (zeros past C). */
template <int CPL, bool FULL>
__device__ __forceinline__ void conv_load_weights(float (&w4)[CPL][4], const float *w, int c, int nvalid) {
#pragma unroll
    for (int k = 0; k < CPL; k++)
#pragma unroll
        for (int j = 0; j < 4; j++) w4[k][j] = (FULL || k < nvalid) ? w[(size_t)(c + k) * 4 + j] : 0.0f;
}
/* The conv's halo of a segment starting at row s0 (time t0): the 3 input rows before it, zeros
 * before the sequence start. */
template <typename floatX, int CPL>
__device__ __forceinline__ void conv_load_halo(ConvRaw<floatX, CPL> (&h)[3], const floatX *x0, int s0, int t0, int C,
                                               bool full, int nvalid) {
#pragma unroll
    for (int j = 0; j < 3; j++) {
        h[j].zero();
        if (t0 - 3 + j >= 0) h[j].load(x0 + (size_t)(s0 - 3 + j) * C, full, nvalid);
    }
}

template <typename floatX, int CPL, int HL, bool FULL>
__global__ void __launch_bounds__(CONV_WARPS * 32, CPL <= 4 ? CONV_FWD_MINB : 4)
conv_silu_l2norm_forward_kernel(floatX *out, const floatX *inp, const float *w, int N, int T, int C, int C_norm,
                                int plane, float eps, bool vec) {
    constexpr int QD = CONV_FWD_QD, U = conv_unroll<QD>();
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int g0 = blockIdx.x * 32 * CPL, c = g0 + lane * CPL, nvalid = C - c;
    bool norm = c < C_norm, wnorm = g0 < C_norm; /* wnorm: some lanes of the warp normalise */
    bool full = FULL || (vec && nvalid >= CPL);  /* FULL: every lane of the launch is */
    int n0, n1;
    conv_warp_rows(N, warp, n0, n1);
    float w4[CPL][4];
    conv_load_weights<CPL, FULL>(w4, w, c, nvalid);
    const floatX *x0 = inp + (c < C ? c : 0); /* row n at x0 + n*C */
    int ys;
    floatX *y0 = conv_plane_ptr(out, c, C, N, plane, ys);
    for (int s0 = n0; s0 < n1;) {
        /* one segment: rows [s0, s1) of one sequence, t0 = s0's time */
        int t0 = s0 % T, s1 = min(n1, s0 - t0 + T);
        ConvRaw<floatX, CPL> h[3], q[QD];
        conv_load_halo<floatX, CPL>(h, x0, s0, t0, C, full, nvalid);
#pragma unroll
        for (int r = 0; r < QD; r++) {
            q[r].zero();
            if (s0 + r < s1) q[r].load(x0 + (size_t)(s0 + r) * C, full, nvalid);
        }
        float xw[3][CPL]; /* at unrolled step r: rows n-3, n-2, n-1 in xw[r%3], xw[(r+1)%3], xw[(r+2)%3] */
#pragma unroll
        for (int j = 0; j < 3; j++)
#pragma unroll
            for (int k = 0; k < CPL; k++) xw[j][k] = h[j].get(k);
        const floatX *xq = x0 + (size_t)(s0 + QD) * C; /* next row to fetch */
        floatX *yr = y0 + (size_t)s0 * ys;
        for (int n0r = s0; n0r < s1; n0r += U) {
#pragma unroll
            for (int r = 0; r < U; r++) {
                int n = n0r + r;
                if (n >= s1) break;
                float *xa = xw[r % 3], *xb = xw[(r + 1) % 3], *xc = xw[(r + 2) % 3];
                float x[CPL], u[CPL], ss = 0.0f;
#pragma unroll
                for (int k = 0; k < CPL; k++) x[k] = q[r % QD].get(k);
                if (n + QD < s1) q[r % QD].load(xq, full, nvalid); /* refill */
                xq += C;
#pragma unroll
                for (int k = 0; k < CPL; k++) {
                    float z = w4[k][0] * xa[k] + w4[k][1] * xb[k] + w4[k][2] * xc[k] + w4[k][3] * x[k];
                    u[k] = silu_f(z);
                    ss += u[k] * u[k];
                }
                if (wnorm) ss = group_sum<HL>(ss);
                if (norm) {
                    float inv = rsqrtf(ss + eps);
#pragma unroll
                    for (int k = 0; k < CPL; k++) u[k] *= inv;
                }
                conv_store<floatX, CPL>(yr, u, full, nvalid);
                yr += ys;
#pragma unroll
                for (int k = 0; k < CPL; k++) xa[k] = x[k]; /* row n replaces row n-3 */
            }
        }
        s0 = s1;
    }
}

template <typename floatX, int CPL, int HL, bool FULL>
__global__ void __launch_bounds__(CONV_WARPS * 32, CPL <= 4 ? CONV_BWD_MINB : 1)
conv_silu_l2norm_backward_kernel(floatX *dinp, float *partial, const floatX *dout, const floatX *inp, const float *w,
                                 int N, int T, int C, int C_norm, int plane, float eps, bool vec) {
    constexpr int QD = CONV_BWD_QD, U = conv_unroll<QD>();
    __shared__ float sdw[CONV_WARPS][CPL * 4][33]; /* [warp][k*4 + j][lane], padded: no bank conflicts */
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int g0 = blockIdx.x * 32 * CPL, c = g0 + lane * CPL, nvalid = C - c;
    bool norm = c < C_norm, wnorm = g0 < C_norm, full = FULL || (vec && nvalid >= CPL);
    int n0, n1;
    conv_warp_rows(N, warp, n0, n1);
    float w4[CPL][4], dw[CPL][4];
    conv_load_weights<CPL, FULL>(w4, w, c, nvalid);
#pragma unroll
    for (int k = 0; k < CPL; k++)
#pragma unroll
        for (int j = 0; j < 4; j++) dw[k][j] = 0.0f;
    const floatX *x0 = inp + (c < C ? c : 0);
    floatX *dx0 = dinp + (c < C ? c : 0);
    int dys;
    const floatX *dy0 = conv_plane_ptr(dout, c, C, N, plane, dys);
    for (int s0 = n0; s0 < n1;) {
        /* one segment: dinp rows [s0, s1) of one sequence; dz needed for rows [s0, s2) */
        int t0 = s0 % T, send = s0 - t0 + T, s1 = min(n1, send), s2 = min(s1 + 3, send);
        ConvRaw<floatX, CPL> h[3], qx[QD], qd[QD];
        conv_load_halo<floatX, CPL>(h, x0, s0, t0, C, full, nvalid);
#pragma unroll
        for (int r = 0; r < QD; r++) {
            qx[r].zero();
            qd[r].zero();
            if (s0 + r < s2) {
                qx[r].load(x0 + (size_t)(s0 + r) * C, full, nvalid);
                qd[r].load(dy0 + (size_t)(s0 + r) * dys, full, nvalid);
            }
        }
        /* x and dz of the 3 rows before m, rotating as xw in the forward */
        float xw[3][CPL], dzw[3][CPL];
#pragma unroll
        for (int j = 0; j < 3; j++)
#pragma unroll
            for (int k = 0; k < CPL; k++) { xw[j][k] = h[j].get(k); dzw[j][k] = 0.0f; }
        const floatX *xq = x0 + (size_t)(s0 + QD) * C, *dq = dy0 + (size_t)(s0 + QD) * dys; /* next fetch */
        floatX *dxr = dx0 + (size_t)s0 * C;                                                   /* next store */
        for (int m0 = s0; m0 < s1 + 3; m0 += U) {
#pragma unroll
            for (int r = 0; r < U; r++) {
                int m = m0 + r; /* the row whose dz is computed; dinp row m - 3 is finished by it */
                if (m >= s1 + 3) break;
                float *xa = xw[r % 3], *xb = xw[(r + 1) % 3], *xc = xw[(r + 2) % 3];
                float *da = dzw[r % 3], *db = dzw[(r + 1) % 3], *dc = dzw[(r + 2) % 3];
                float x[CPL], dz[CPL], u[CPL], s[CPL], ss = 0.0f, uy = 0.0f;
#pragma unroll
                for (int k = 0; k < CPL; k++) { x[k] = qx[r % QD].get(k); dz[k] = qd[r % QD].get(k); /* dy for now */ }
                if (m + QD < s2) { /* refill */
                    qx[r % QD].load(xq, full, nvalid);
                    qd[r % QD].load(dq, full, nvalid);
                }
                xq += C;
                dq += dys;
#pragma unroll
                for (int k = 0; k < CPL; k++) {
                    float z = w4[k][0] * xa[k] + w4[k][1] * xb[k] + w4[k][2] * xc[k] + w4[k][3] * x[k];
                    s[k] = sigmoid_f(z);
                    u[k] = z * s[k];
                    ss += u[k] * u[k];
                    uy += u[k] * dz[k];
                }
                /* y = u inv; du = inv (dy - y (y.dy)) = inv dy - inv^3 u (u.dy); unnormalised: du = dy.
                 * dz = du silu'(z), silu'(z) = s (1 + z (1 - s)) = s + u (1 - s). Rows past the
                 * sequence (m >= s2, which is then its end) have dz = 0. */
                if (wnorm) group_sum2<HL>(ss, uy);
                float a = 1.0f, b = 0.0f;
                if (norm) {
                    a = rsqrtf(ss + eps);
                    b = a * a * a * uy;
                }
                bool live = m < s2;
#pragma unroll
                for (int k = 0; k < CPL; k++)
                    dz[k] = live ? (a * dz[k] - b * u[k]) * (s[k] + u[k] * (1.0f - s[k])) : 0.0f;
                if (m < s1) {
#pragma unroll
                    for (int k = 0; k < CPL; k++) {
                        dw[k][0] += dz[k] * xa[k];
                        dw[k][1] += dz[k] * xb[k];
                        dw[k][2] += dz[k] * xc[k];
                        dw[k][3] += dz[k] * x[k];
                    }
                }
                if (m - 3 >= s0) {
                    /* dx[m-3] = w0 dz[m] + w1 dz[m-1] + w2 dz[m-2] + w3 dz[m-3] */
                    float dx[CPL];
#pragma unroll
                    for (int k = 0; k < CPL; k++)
                        dx[k] = w4[k][0] * dz[k] + w4[k][1] * dc[k] + w4[k][2] * db[k] + w4[k][3] * da[k];
                    conv_store<floatX, CPL>(dxr, dx, full, nvalid);
                    dxr += C;
                }
#pragma unroll
                for (int k = 0; k < CPL; k++) { xa[k] = x[k]; da[k] = dz[k]; } /* row m replaces row m-3 */
            }
        }
        s0 = s1;
    }
    /* the block's partial: its warps' dw summed in warp order */
#pragma unroll
    for (int k = 0; k < CPL; k++)
#pragma unroll
        for (int j = 0; j < 4; j++) sdw[warp][k * 4 + j][lane] = dw[k][j];
    __syncthreads();
    float *dst = partial + (size_t)blockIdx.y * C * 4 + (size_t)g0 * 4;
    for (int e = threadIdx.x; e < 32 * CPL * 4; e += blockDim.x) { /* e = (channel - g0)*4 + tap */
        if (g0 * 4 + e >= C * 4) break;
        int cl = e / 4, kj = (cl % CPL) * 4 + e % 4, l = cl / CPL;
        float sum = 0.0f;
#pragma unroll
        for (int wi = 0; wi < CONV_WARPS; wi++) sum += sdw[wi][kj][l];
        dst[e] = sum;
    }
}

/* dw[m] += sum_{p < P} partial[p*M + m], m < M: 8 warps each sum every 8th partial row in order,
 * then the 8 sums are added in warp order (deterministic). Block = 32 columns. */
__global__ void __launch_bounds__(256) conv_dw_colsum_kernel(float *dw, const float *partial, int P, int M) {
    __shared__ float s[8][32];
    int lane = threadIdx.x % 32, wi = threadIdx.x / 32, m = blockIdx.x * 32 + lane;
    float acc = 0.0f;
    if (m < M) {
#pragma unroll 4
        for (int p = wi; p < P; p += 8) acc += partial[(size_t)p * M + m];
    }
    s[wi][lane] = acc;
    __syncthreads();
    if (wi == 0 && m < M) {
        float t = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) t += s[i][lane];
        dw[m] += t;
    }
}

/* Channels per lane and lanes per head for floatX and an access width of V elements: V channels and
 * K/V lanes per head when that is a power of two <= 32, else K/32 channels per lane and one head per
 * warp. Checks K and the plane. */
struct ConvShape { int cpl, hl; };
inline ConvShape conv_shape(int C, int C_norm, int K, int plane, int V) {
    if (C_norm > 0 && (K % 32 != 0 || K > 256 || K < 32 || C_norm % K != 0)) {
        fprintf(stderr, "conv_silu_l2norm: head_dim K=%d must be a multiple of 32 in [32, 256] dividing C_norm=%d\n",
                K, C_norm);
        exit(EXIT_FAILURE);
    }
    ConvShape s = {V, 32};
    if (C_norm > 0) {
        int hl = K / V;
        if (hl <= 32 && (hl & (hl - 1)) == 0) s.hl = hl;
        else s = {K / 32, 32};
    }
    if (plane > 0 && (C % plane != 0 || plane % s.cpl != 0 || (C_norm > 0 && plane % K != 0))) {
        fprintf(stderr, "conv_silu_l2norm: plane=%d must divide C=%d and be a multiple of K=%d and of %d\n", plane, C,
                K, s.cpl);
        exit(EXIT_FAILURE);
    }
    return s;
}

struct ConvDev { int sms, threads_per_sm; };
inline ConvDev conv_dev() { return ConvDev{num_sms(), max_threads_per_sm()}; }
/* Most blocks per channel group any launch uses (sizes the dw scratch): at least CONV_MIN_ROWS rows
 * per warp, at most one wave of the widest groups (G <= 256 channels). */
inline int conv_nby_cap(int N, int C) {
    ConvDev d = conv_dev();
    int wave = d.sms * (d.threads_per_sm / (32 * CONV_WARPS)) / ceil_div(C, 256);
    return max(1, min(ceil_div(N, CONV_WARPS * CONV_MIN_ROWS), wave));
}
/* Blocks per channel group: one resident wave (blocks_per_sm from the kernel's occupancy). */
inline int conv_nby(int N, int C, int ngroups, int blocks_per_sm) {
    return max(1, min(conv_nby_cap(N, C), conv_dev().sms * blocks_per_sm / ngroups));
}
template <typename Kern> inline int conv_occupancy(Kern kernel) {
    int nb = 0;
    cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, kernel, CONV_WARPS * 32, 0));
    return max(nb, 1);
}

/* launchers, instantiated per (CPL, HL, FULL) by conv_dispatch */
template <typename floatX> struct ConvFwdLaunch {
    floatX *out; const floatX *inp; const float *w;
    int N, T, C, C_norm, plane; float eps; bool vec; cudaStream_t stream;
    template <int CPL, int HL, bool FULL> void go() const {
        static int bps = conv_occupancy(conv_silu_l2norm_forward_kernel<floatX, CPL, HL, FULL>);
        int ngroups = ceil_div(C, 32 * CPL);
        dim3 grid(ngroups, conv_nby(N, C, ngroups, bps));
        conv_silu_l2norm_forward_kernel<floatX, CPL, HL, FULL><<<grid, CONV_WARPS * 32, 0, stream>>>(
            out, inp, w, N, T, C, C_norm, plane, eps, vec);
        cudaCheckLaunch();
    }
};
template <typename floatX> struct ConvBwdLaunch {
    floatX *dinp; float *dw, *scratch; const floatX *dout, *inp; const float *w;
    int N, T, C, C_norm, plane; float eps; bool vec; cudaStream_t stream;
    template <int CPL, int HL, bool FULL> void go() const {
        static int bps = conv_occupancy(conv_silu_l2norm_backward_kernel<floatX, CPL, HL, FULL>);
        int ngroups = ceil_div(C, 32 * CPL), nby = conv_nby(N, C, ngroups, bps);
        conv_silu_l2norm_backward_kernel<floatX, CPL, HL, FULL><<<dim3(ngroups, nby), CONV_WARPS * 32, 0, stream>>>(
            dinp, scratch, dout, inp, w, N, T, C, C_norm, plane, eps, vec);
        cudaCheckLaunch();
        conv_dw_colsum_kernel<<<ceil_div(C * 4, 32), 256, 0, stream>>>(dw, scratch, nby, C * 4);
        cudaCheckLaunch();
    }
};
/* V channels per lane (heads of 4..32 lanes, or none), FULL when every lane's channels lie below C
 * and the vector path holds (no per-lane checks in the loops); else K/32 channels per lane. */
template <int V, typename L> inline void conv_dispatch(ConvShape s, bool vec, int C, const L &l) {
    if (s.cpl == V) {
        if (vec && C % (32 * V) == 0) {
            switch (s.hl) {
            case 4: l.template go<V, 4, true>(); break;
            case 8: l.template go<V, 8, true>(); break;
            case 16: l.template go<V, 16, true>(); break;
            default: l.template go<V, 32, true>(); break;
            }
        } else {
            switch (s.hl) {
            case 4: l.template go<V, 4, false>(); break;
            case 8: l.template go<V, 8, false>(); break;
            case 16: l.template go<V, 16, false>(); break;
            default: l.template go<V, 32, false>(); break;
            }
        }
        return;
    }
    switch (s.cpl) {
    case 1: l.template go<1, 32, false>(); break;
    case 2: l.template go<2, 32, false>(); break;
    case 3: l.template go<3, 32, false>(); break;
    case 4: l.template go<4, 32, false>(); break;
    case 5: l.template go<5, 32, false>(); break;
    case 6: l.template go<6, 32, false>(); break;
    case 7: l.template go<7, 32, false>(); break;
    default: l.template go<8, 32, false>(); break;
    }
}
/* the vector paths: 16-byte aligned pointers and rows of a whole number of vectors */
template <typename floatX>
inline bool conv_vec_ok(ConvShape s, int C, const void *a, const void *b, const void *c = nullptr) {
    int pw = 1;
    while (pw * 2 <= s.cpl && s.cpl % (pw * 2) == 0 && pw * 2 * (int)sizeof(floatX) <= 16) pw *= 2;
    return al16(a, b, c) && C % pw == 0;
}

// ----------------------------------------------------------------------------
// kernel launchers

template <typename floatX>
void conv_silu_l2norm_forward(floatX *out, const floatX *inp, const float *w, int B, int T, int C, int C_norm,
                              int K, float eps_l2, cudaStream_t stream, int plane) {
    if (B <= 0 || T <= 0) return;
    assert(C_norm <= C);
    constexpr int V = CONV_FWD_BYTES / sizeof(floatX);
    ConvShape s = conv_shape(C, C_norm, K, plane, V);
    bool vec = conv_vec_ok<floatX>(s, C, out, inp);
    ConvFwdLaunch<floatX> l{out, inp, w, B * T, T, C, C_norm, plane, eps_l2, vec, stream};
    conv_dispatch<V>(s, vec, C, l);
}

inline size_t conv_silu_l2norm_backward_scratch_floats(int B, int T, int C, int K) {
    (void)K;
    return (size_t)conv_nby_cap(B * T, C) * C * 4;
}

template <typename floatX>
void conv_silu_l2norm_backward(floatX *dinp, float *dw, float *scratch, const floatX *dout, const floatX *inp,
                               const float *w, int B, int T, int C, int C_norm, int K, float eps_l2,
                               cudaStream_t stream, int plane) {
    if (B <= 0 || T <= 0) return;
    assert(C_norm <= C);
    constexpr int V = CONV_BWD_BYTES / sizeof(floatX);
    ConvShape s = conv_shape(C, C_norm, K, plane, V);
    bool vec = conv_vec_ok<floatX>(s, C, dinp, dout, inp);
    ConvBwdLaunch<floatX> l{dinp, dw, scratch, dout, inp, w, B * T, T, C, C_norm, plane, eps_l2, vec, stream};
    conv_dispatch<V>(s, vec, C, l);
}
