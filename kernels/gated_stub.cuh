/*
 * gated_stub.cuh -- TEMPORARY: stand-ins for the chunkwise gated delta-rule kernels that
 * kernels/deltarule.cuh will provide (another branch writes them), with exactly their signatures,
 * so that the gated DeltaNet GPU model (model_gpu.cuh) compiles and links before they exist.
 * Each one exits with a message if called. DROP THIS FILE (and its #include in
 * model_gpu_state.cuh) when the real kernels are merged.
 *
 * The contract (as the delta rule's, kernels/deltarule.cuh): q, k [B,T,H,K], v, o [B,T,H,V],
 * beta [B,T,H] floatX, g [B,T,H] fp32 log decay; the state is fp32; saved carries what the forward
 * hands to the backward; dq, dk, dv, dbeta, dg are WRITTEN (=), not accumulated.
 */
#pragma once
#include "common.cuh"

[[noreturn]] inline void gated_deltarule_stub_called(const char *what) {
    fprintf(stderr, "%s: the gated delta-rule GPU kernels are not in this build yet (kernels/gated_stub.cuh)\n", what);
    exit(EXIT_FAILURE);
}

template <typename floatX_> size_t gated_deltarule_workspace_size(int B, int T, int H, int K, int V) {
    (void)B; (void)T; (void)H; (void)K; (void)V;
    return 0;
}
template <typename floatX_> size_t gated_deltarule_saved_size(int B, int T, int H) {
    (void)B; (void)T; (void)H;
    return 0;
}
template <typename floatX_>
void gated_deltarule_forward(floatX_ *o, floatX_ *saved, const floatX_ *q, const floatX_ *k, const floatX_ *v,
                             const floatX_ *beta, const float *g, float scale, void *ws, int B, int T, int H, int K,
                             int V, cudaStream_t st) {
    (void)o; (void)saved; (void)q; (void)k; (void)v; (void)beta; (void)g; (void)scale; (void)ws;
    (void)B; (void)T; (void)H; (void)K; (void)V; (void)st;
    gated_deltarule_stub_called("gated_deltarule_forward");
}
template <typename floatX_>
void gated_deltarule_backward(floatX_ *dq, floatX_ *dk, floatX_ *dv, floatX_ *dbeta, float *dg, const floatX_ *dout,
                              const floatX_ *saved, const floatX_ *q, const floatX_ *k, const floatX_ *v,
                              const floatX_ *beta, const float *g, float scale, void *ws, int B, int T, int H,
                              int K, int V, cudaStream_t st) {
    (void)dq; (void)dk; (void)dv; (void)dbeta; (void)dg; (void)dout; (void)saved; (void)q; (void)k; (void)v;
    (void)beta; (void)g; (void)scale; (void)ws; (void)B; (void)T; (void)H; (void)K; (void)V; (void)st;
    gated_deltarule_stub_called("gated_deltarule_backward");
}
