#include "ref_math.h"
/*
 * embedding.c -- the CPU reference of the token embedding lookup (kernels/embedding.cuh is the
 * GPU one).
 * Compiled twice like every ref/ file: float (ref_*) and, with -DREF_F64, double (ref_*_f64);
 * reductions accumulate in a double local in both, and every backward ACCUMULATES (+=) into its
 * gradient outputs.
 *
 *   y[n] = wte[tok[n]]                    dwte[tok[n]] += dy[n]
 */
void RF(ref_embedding_forward)(real *out, const int *tokens, const real *wte, int N, int D) {
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * D, wte + (size_t)tokens[n] * D, (size_t)D * sizeof(real));
}

void RF(ref_embedding_backward)(real *dwte, const real *dout, const int *tokens, int N, int D) {
    /* serial: rows of repeated tokens add into the same dwte row */
    for (int n = 0; n < N; n++) {
        real *dw = dwte + (size_t)tokens[n] * D;
        const real *dy = dout + (size_t)n * D;
        for (int i = 0; i < D; i++) dw[i] += dy[i];
    }
}
