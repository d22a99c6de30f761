#include "ref_math.h"
/*
 * swiglu.c -- the CPU reference of the SwiGLU of the MLP (kernels/swiglu.cuh).
 * Compiled twice like every ref/ file: float (ref_*) and, with -DREF_F64, double (ref_*_f64);
 * reductions accumulate in a double local in both, and every backward ACCUMULATES (+=) into its
 * gradient outputs.
 *
 *   y = silu(a) u                         da += dy u silu'(a), du += dy silu(a)
 */
void RF(ref_swiglu_forward)(real *out, const real *gate, const real *up, int N) {
    for (int i = 0; i < N; i++) out[i] = (real)(silu_d(gate[i]) * up[i]);
}

void RF(ref_swiglu_backward)(real *dgate, real *dup, const real *dout, const real *gate, const real *up, int N) {
    for (int i = 0; i < N; i++) {
        dgate[i] += (real)((double)dout[i] * up[i] * dsilu_d(gate[i]));
        dup[i] += (real)((double)dout[i] * silu_d(gate[i]));
    }
}
