/*
 * attention.cuh -- causal softmax attention (global and sliding-window, grouped KV heads) on the
 * GPU, flash-style, forward and backward (RoPE, applied before it, is rope.cuh).
 *
 * Contract (that of ref_attention_forward/backward in ref/ref_api.h):
 *   q, out [B,T,Hq,d]; k, v [B,T,Hkv,d] (RoPE already applied); query head h reads KV head
 *   h / (Hq/Hkv); scale = 1/sqrt(d). Query t sees keys j with j <= t and, when window > 0,
 *   j >= t - window + 1 (window keys in all, itself included). d in {32, 64, 128}; any T >= 1.
 *   forward:   s_j = q.k_j * scale, lse = log sum_j e^{s_j} (saved, [B,Hq,T] float),
 *              P_j = e^{s_j - lse}, out = sum_j P_j v_j
 *   backward:  D = rowsum(dout o out) (a small pre-pass), dP_j = dout.v_j, dS_j = P_j (dP_j - D),
 *              dq = scale sum_j dS_j k_j, dk_j = scale sum_{t, h in group} dS_j q_t,
 *              dv_j = sum_{t, h in group} P_j dout_t.
 *   dq, dk, dv are WRITTEN (=), not accumulated. dk/dv are deterministic (bitwise reproducible):
 *   one block owns a KV tile and loops, in a fixed order, over every query head of its group and
 *   every query tile that sees it (FlashAttention-2's backward order), so no atomics touch dk/dv.
 *   dq is summed over KV tiles with float atomics into an fp32 scratch buffer (zeroed by the
 *   pre-pass, scaled and converted by a post-pass): dq's last bits may differ run to run.
 *
 * Design. No T x T buffer exists anywhere: the forward keeps, per query row, a running max m and a
 * running sum l (online softmax) and rescales its output accumulator when m grows; it walks the key
 * tiles of its query tile from the diagonal down to the first tile the window reaches, so tiles
 * wholly outside the causal window are never touched (and tiles wholly inside skip the mask).
 * Scores are kept in base 2 (s * scale * log2 e) so every exponential is one exp2.
 * Both passes are written once over "fragments" of the m16n8k16 tensor-core product:
 *   - floatX = __nv_bfloat16: mma.sync m16n8k16 bf16 x bf16 -> fp32 accumulators, operands
 *     loaded from shared memory with ldmatrix (.trans where the operand is stored k-major);
 *   - floatX = float (the fp32 test mode): the same fragments hold fp32 pairs and the product is
 *     computed exactly in fp32 FMAs, the operands exchanged between lanes by shuffles. Slow, but it
 *     runs the very same tiling, masking and softmax code as the bf16 path, in exact fp32.
 * Tiles are staged global -> shared with cp.async (16 bytes per copy, rows past T zero-filled),
 * rows padded by 16 bytes so ldmatrix is bank-conflict free.
 *
 * Launchers (floatX = float or __nv_bfloat16; no allocation, no synchronisation):
 *   attention_forward(out, lse, q, k, v, B, T, Hq, Hkv, d, window, stream)
 *   attention_backward_scratch_bytes(B, T, Hq, d)
 *   attention_backward(dq, dk, dv, scratch, dout, q, k, v, out, lse, B, T, Hq, Hkv, d, window, stream)
 * Pointers must be 16-byte aligned (cudaMalloc'd buffers and [B,T,H,d] slices of them are).
 *
 * Speed: tests/gpu/bench_attention.cu times each variant (the README holds the table). The other tile
 * variants (forward_launch / backward_launch template arguments) stay selectable for that bench.
 */
#pragma once
#include <cassert>
#include <cstdint>
#include "common.cuh"
#include "attention_tiles.cuh" /* m16n8k16 fragments (bf16 tensor cores, fp32 emulation), staging */
#include "attention_fwd.cuh"   /* the forward: online softmax over key tiles */
#include "attention_bwd.cuh"   /* the backward: one block per KV tile, dq by atomics */

namespace attn {

inline void check_shapes(int B, int T_, int Hq, int Hkv, int d) {
    if (B < 1 || T_ < 1 || Hq < 1 || Hkv < 1 || Hq % Hkv != 0 || (d != 32 && d != 64 && d != 128)) {
        fprintf(stderr, "attention: unsupported shape B=%d T=%d Hq=%d Hkv=%d d=%d (need Hq %% Hkv == 0, d in {32,64,128})\n",
                B, T_, Hq, Hkv, d);
        exit(EXIT_FAILURE);
    }
}

template <typename T, bool LDM>
void forward_impl(T *out, float *lse, const T *q, const T *k, const T *v, int B, int T_, int Hq, int Hkv, int d,
                  int window, cudaStream_t stream) {
    check_shapes(B, T_, Hq, Hkv, d);
    switch (d) {
    case 32: forward_dispatch<T, 32, LDM>(out, lse, q, k, v, B, T_, Hq, Hkv, window, stream); break;
    case 64: forward_dispatch<T, 64, LDM>(out, lse, q, k, v, B, T_, Hq, Hkv, window, stream); break;
    default: forward_dispatch<T, 128, LDM>(out, lse, q, k, v, B, T_, Hq, Hkv, window, stream); break;
    }
}
template <typename T, bool LDM>
void backward_impl(T *dq, T *dk, T *dv, float *scratch, const T *dout, const T *q, const T *k, const T *v,
                   const T *out, const float *lse, int B, int T_, int Hq, int Hkv, int d, int window,
                   cudaStream_t stream) {
    check_shapes(B, T_, Hq, Hkv, d);
    switch (d) {
    case 32: backward_dispatch<T, 32, LDM>(dq, dk, dv, scratch, dout, q, k, v, out, lse, B, T_, Hq, Hkv, window, stream); break;
    case 64: backward_dispatch<T, 64, LDM>(dq, dk, dv, scratch, dout, q, k, v, out, lse, B, T_, Hq, Hkv, window, stream); break;
    default: backward_dispatch<T, 128, LDM>(dq, dk, dv, scratch, dout, q, k, v, out, lse, B, T_, Hq, Hkv, window, stream); break;
    }
}

} // namespace attn

// ----------------------------------------------------------------------------
// kernel launchers

/* out [B,T,Hq,d] (floatX), lse [B,Hq,T] (float, natural log) from q [B,T,Hq,d], k, v [B,T,Hkv,d].
 * window <= 0: global causal; window > 0: each query sees its last `window` positions. */
template <typename floatX>
void attention_forward(floatX *out, float *lse, const floatX *q, const floatX *k, const floatX *v, int B, int T,
                       int Hq, int Hkv, int d, int window, cudaStream_t stream) {
    attn::forward_impl<floatX, true>(out, lse, q, k, v, B, T, Hq, Hkv, d, window, stream);
}

/* Bytes of the fp32 scratch attention_backward needs: the dq accumulator [B,T,Hq,d] and D [B,Hq,T]. */
inline size_t attention_backward_scratch_bytes(int B, int T, int Hq, int d) {
    return ((size_t)B * T * Hq * d + (size_t)B * Hq * T) * sizeof(float);
}

/* dq [B,T,Hq,d], dk, dv [B,T,Hkv,d] WRITTEN (not accumulated) from dout, the forward's inputs, its
 * out and lse. scratch: attention_backward_scratch_bytes() bytes, 16-byte aligned, no need to
 * clear it. dk/dv bitwise deterministic; dq summed with float atomics (order may vary). */
template <typename floatX>
void attention_backward(floatX *dq, floatX *dk, floatX *dv, void *scratch, const floatX *dout, const floatX *q,
                        const floatX *k, const floatX *v, const floatX *out, const float *lse, int B, int T, int Hq,
                        int Hkv, int d, int window, cudaStream_t stream) {
    attn::backward_impl<floatX, true>(dq, dk, dv, (float *)scratch, dout, q, k, v, out, lse, B, T, Hq, Hkv, d,
                                      window, stream);
}
