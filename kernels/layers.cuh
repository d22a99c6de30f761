/*
 * layers.cuh -- the small fused layers of the trainer: embedding, RMSNorm (with the residual add),
 * causal conv + SiLU + L2 norm (DeltaNet's q,k,v path), sigmoid, SwiGLU, softmax cross-entropy.
 * Each is a forward/backward pair of launchers `(out, ..., inp, ..., sizes, stream)`.
 *
 * Math (g = gradient of the loss w.r.t. the named quantity, s = sigmoid, silu(z) = z s(z),
 * silu'(z) = s(z) (1 + z (1 - s(z)))):
 *   embedding    y[n] = wte[tok[n]]                   dwte[tok[n]] += dy[n]
 *   rmsnorm      r = 1/sqrt(mean(x^2) + eps),          dg += sum_rows dy x r
 *                y = x r g                             dx = r (dy g - x r^2 mean(dy g x))
 *   residual     h' = h + branch, y = rmsnorm(h')      (backward: the residual gradient flows on;
 *                                                       rmsnorm_backward with accumulate = 1 adds)
 *   conv_silu    z[t] = sum_j w[c,j] x[t-3+j] (x[t<0] = 0), u = silu(z)
 *   l2norm       y = u / sqrt(sum_head u^2 + eps)      (q and k heads only; v: y = u)
 *                  backward: du = (dy - y (y.dy)) / sqrt(sum u^2 + eps), dz = du silu'(z),
 *                  dw[c,j] += sum_t dz[t] x[t-3+j],  dx[t] = sum_j w[c,j] dz[t+3-j]
 *   sigmoid      y = s(x)                              dx = dy y (1 - y)
 *   swiglu       y = silu(a) u                         da = dy u silu'(a), du = dy silu(a)
 *   xent         loss = logsumexp(z[0..V)) - z[tgt]    dz_j = dloss/N (softmax_j - [j == tgt]), j < V;
 *                                                      dz_j = 0 for padded columns V <= j < Vp
 *
 * Conventions. floatX is float (fp32 test mode) or __nv_bfloat16. Activations [B,T,C] row-major,
 * N = B*T rows. Every reduction is in float. Small parameters (norm gains, conv weights) are read
 * from the fp32 MASTER weights (float*), and their gradients are fp32 and ACCUMULATED (+=);
 * activation gradients are floatX and written (=) unless an `accumulate` flag says +=.
 * Parameter-gradient reductions over rows are deterministic: per-block partial sums in a caller-
 * provided scratch buffer, then one ordered reduction (no float atomics anywhere in this file).
 * Calls on one stream run in order, so one scratch buffer of the largest size any call asks for
 * (the *_scratch_* functions) can be shared by all of them. No allocation, no synchronisation:
 * every launcher can be captured in a CUDA graph.
 *
 * Layouts the trainer must use:
 *   - DeltaNet q,k,v: ONE buffer [B,T,3D], each row q|k|v (the fused [3D,D] q/k/v projection of
 *     matmul.cuh writes it), conv weights [3D,4] (q_conv1d, k_conv1d, v_conv1d are adjacent in the
 *     parameter table), channels [0,2D) L2-normalised per head of K = head_dim.
 *   - SwiGLU: ONE buffer [N,2I], each row gate|up (the fused [2I,D] gate/up projection).
 * Alignment: none required for correctness (any C, odd ones included); the 16-byte vector paths
 * are taken when the row length is a multiple of 16/sizeof(floatX) elements. The fused conv needs
 * K % 32 == 0 and K <= 256 for the normalised channels (asserted).
 */
#pragma once
#include <cassert>
#include <cub/device/device_radix_sort.cuh>
#include "common.cuh"

// ----------------------------------------------------------------------------
// kernel launchers (declarations; definitions below)

/* ---- embedding ---- */
/* out[N,D] = wte[tokens[n]]; wte floatX [Vp,D]. */
template <typename floatX>
void embedding_forward(floatX *out, const int *tokens, const floatX *wte, int N, int D, cudaStream_t stream);
/* Scratch bytes embedding_backward needs for N tokens (a stable GPU radix sort + partial rows). */
inline size_t embedding_backward_scratch_bytes(int N, int D, int Vp);
/* dwte[Vp,D] (fp32) += rows of dout [N,D] by token. Deterministic: tokens are stably sorted
 * (cub radix sort of (token, position)), each run of equal tokens is summed in position order in
 * chunks of EMB_CHUNK sorted positions, runs spanning chunks are combined by their first chunk. */
template <typename floatX>
void embedding_backward(float *dwte, void *scratch, const floatX *dout, const int *tokens, int N, int D, int Vp,
                        cudaStream_t stream);

/* ---- RMSNorm ---- */
/* out = RMSNorm(inp; g), rstd[N] saved. Rows of C. Also the per-head output norm of DeltaNet:
 * N = B*T*H rows of C = head_dim with the shared gain g_o (kernels use C/VEC threads per row
 * there, several rows per warp). */
template <typename floatX>
void rmsnorm_forward(floatX *out, float *rstd, const floatX *inp, const float *g, int N, int C, float eps,
                     cudaStream_t stream);
/* res_out = res_in + branch (rounded to floatX), norm_out = RMSNorm(res_out; g), rstd[N].
 * res_out may alias res_in (in-place residual stream). */
template <typename floatX>
void residual_rmsnorm_forward(floatX *res_out, floatX *norm_out, float *rstd, const floatX *res_in,
                              const floatX *branch, const float *g, int N, int C, float eps, cudaStream_t stream);
/* Scratch floats rmsnorm_backward needs. */
inline size_t rmsnorm_backward_scratch_floats(int N, int C);
/* dinp (= ; += with accumulate) from dout, the forward's input (res_out for the fused version)
 * and rstd; dg (fp32) +=. dinp may not alias dout. */
template <typename floatX>
void rmsnorm_backward(floatX *dinp, float *dg, float *scratch, const floatX *dout, const floatX *inp, const float *g,
                      const float *rstd, int N, int C, int accumulate, cudaStream_t stream);

/* ---- causal depthwise conv (kernel 4) + SiLU + per-head L2 norm ---- */
/* inp/out [B,T,C]; w fp32 [C,4] (tap 3 = current token). Channels c < C_norm (a multiple of K)
 * are L2-normalised per group of K consecutive channels (eps_l2 = 1e-6 in the model); the rest are
 * plain silu(conv). DeltaNet: C = 3D (q|k|v rows), C_norm = 2D, K = head_dim. Plain conv+SiLU:
 * C_norm = 0 (K is then only the channel-group width, pass 128). */
template <typename floatX>
void conv_silu_l2norm_forward(floatX *out, const floatX *inp, const float *w, int B, int T, int C, int C_norm,
                              int K, float eps_l2, cudaStream_t stream);
inline size_t conv_silu_l2norm_backward_scratch_floats(int B, int T, int C, int K);
/* dinp (=) [B,T,C], dw (fp32 [C,4]) += ; recomputes the forward from inp. */
template <typename floatX>
void conv_silu_l2norm_backward(floatX *dinp, float *dw, float *scratch, const floatX *dout, const floatX *inp,
                               const float *w, int B, int T, int C, int C_norm, int K, float eps_l2,
                               cudaStream_t stream);

/* ---- sigmoid (DeltaNet's beta = sigmoid(x W_b)) ---- */
/* out[n] = sigmoid(inp[n]), n < count. Types may differ (e.g. float beta from floatX logits);
 * out may alias inp when the types match. */
template <typename Tout, typename Tin>
void sigmoid_forward(Tout *out, const Tin *inp, int count, cudaStream_t stream);
/* dinp = dout * out * (1 - out) (=). dinp may alias dout when the types match. */
template <typename Tdinp, typename Tdout, typename Tout>
void sigmoid_backward(Tdinp *dinp, const Tdout *dout, const Tout *out, int count, cudaStream_t stream);

/* ---- SwiGLU ---- */
/* gu [N,2I] rows gate|up; out [N,I] = silu(gate) * up. */
template <typename floatX>
void swiglu_forward(floatX *out, const floatX *gu, int N, int I, cudaStream_t stream);
/* dgu [N,2I] (=) rows dgate|dup from dout [N,I] and gu. dgu MAY alias gu (in place). */
template <typename floatX>
void swiglu_backward(floatX *dgu, const floatX *dout, const floatX *gu, int N, int I, cudaStream_t stream);

/* ---- softmax cross-entropy ---- */
/* logits [N,Vp] (only the first V columns count), targets [N] in [0,V). losses[N] (float) =
 * per-row loss; logits are OVERWRITTEN with dlogits = dloss/N * (softmax - onehot), padded
 * columns set to 0. For gradient accumulation pass dloss = 1/grad_accum_steps. */
template <typename floatX>
void crossentropy_forward_backward(floatX *logits, float *losses, const int *targets, float dloss, int N, int V,
                                   int Vp, cudaStream_t stream);
/* Forward only (validation): losses[N], logits untouched. */
template <typename floatX>
void crossentropy_forward(float *losses, const floatX *logits, const int *targets, int N, int V, int Vp,
                          cudaStream_t stream);

/* ---- deterministic sum ---- */
/* *out (= ; += with accumulate) = scale * sum(inp[0..n)) in a fixed order (one block): e.g. the
 * mean loss, scale = 1/N. */
inline void sum_float(float *out, const float *inp, int n, float scale, int accumulate, cudaStream_t stream);

// ----------------------------------------------------------------------------
// implementation (STUBS for now: they compile, link and do nothing; real kernels follow)

template <typename floatX>
void embedding_forward(floatX *, const int *, const floatX *, int, int, cudaStream_t) {}
inline size_t embedding_backward_scratch_bytes(int N, int D, int) { return (size_t)N * D * 8 + (1 << 20); }
template <typename floatX>
void embedding_backward(float *, void *, const floatX *, const int *, int, int, int, cudaStream_t) {}
template <typename floatX>
void rmsnorm_forward(floatX *, float *, const floatX *, const float *, int, int, float, cudaStream_t) {}
template <typename floatX>
void residual_rmsnorm_forward(floatX *, floatX *, float *, const floatX *, const floatX *, const float *, int, int,
                              float, cudaStream_t) {}
inline size_t rmsnorm_backward_scratch_floats(int, int C) { return (size_t)256 * C; }
template <typename floatX>
void rmsnorm_backward(floatX *, float *, float *, const floatX *, const floatX *, const float *, const float *, int,
                      int, int, cudaStream_t) {}
template <typename floatX>
void conv_silu_l2norm_forward(floatX *, const floatX *, const float *, int, int, int, int, int, float, cudaStream_t) {}
inline size_t conv_silu_l2norm_backward_scratch_floats(int B, int T, int C, int) { return (size_t)B * ((T + 255) / 256) * C * 4; }
template <typename floatX>
void conv_silu_l2norm_backward(floatX *, float *, float *, const floatX *, const floatX *, const float *, int, int,
                               int, int, int, float, cudaStream_t) {}
template <typename Tout, typename Tin>
void sigmoid_forward(Tout *, const Tin *, int, cudaStream_t) {}
template <typename Tdinp, typename Tdout, typename Tout>
void sigmoid_backward(Tdinp *, const Tdout *, const Tout *, int, cudaStream_t) {}
template <typename floatX>
void swiglu_forward(floatX *, const floatX *, int, int, cudaStream_t) {}
template <typename floatX>
void swiglu_backward(floatX *, const floatX *, const floatX *, int, int, cudaStream_t) {}
template <typename floatX>
void crossentropy_forward_backward(floatX *, float *, const int *, float, int, int, int, cudaStream_t) {}
template <typename floatX>
void crossentropy_forward(float *, const floatX *, const int *, int, int, int, cudaStream_t) {}
inline void sum_float(float *, const float *, int, float, int, cudaStream_t) {}
