#include "ref_math.h"
/*
 * sigmoid.c -- the CPU reference of the sigmoid (DeltaNet's beta; kernels/sigmoid.cuh).
 * Compiled twice like every ref/ file: float (ref_*) and, with -DREF_F64, double (ref_*_f64);
 * reductions accumulate in a double local in both, and every backward ACCUMULATES (+=) into its
 * gradient outputs.
 *
 *   y = s(x) = 1/(1+e^-x)                 dx += dy y (1 - y)
 */
void RF(ref_sigmoid_forward)(real *out, const real *inp, int N) {
    for (int i = 0; i < N; i++) out[i] = (real)sigmoid_d(inp[i]);
}

void RF(ref_sigmoid_backward)(real *dinp, const real *dout, const real *out, int N) {
    for (int i = 0; i < N; i++) dinp[i] += (real)((double)dout[i] * out[i] * (1.0 - out[i]));
}
