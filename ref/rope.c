#include "ref_math.h"
/*
 * rope.c -- the CPU reference of rotary position embeddings of the attention layers
 * (kernels/rope.cuh).
 * Compiled twice like every ref/ file: float (ref_*) and, with -DREF_F64, double (ref_*_f64);
 * reductions accumulate in a double local in both, and every backward ACCUMULATES (+=) into its
 * gradient outputs.
 *
 *   per pair (x_i, x_{i+d/2}), angle p = (pos0+t) base^(-2i/d): y = R(p) x
 *                                         dx = R(-p) dy (a rotation's transpose)
 */
/* Rotate every pair (x[i], x[i+d/2]) by sign * angle. sign = -1 is the inverse (= transpose). */
static void rope_apply(real *x, int B, int T, int H, int d, double base, int pos0, double sign) {
    int half = d / 2;
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < half; i++) {
            double ang = (double)(pos0 + t) * pow(base, -2.0 * i / d);
            double cs = cos(ang), sn = sign * sin(ang);
            for (int b = 0; b < B; b++)
                for (int h = 0; h < H; h++) {
                    real *p = x + (((size_t)b * T + t) * H + h) * d;
                    double a = p[i], c = p[i + half];
                    p[i] = (real)(a * cs - c * sn);
                    p[i + half] = (real)(c * cs + a * sn);
                }
        }
    }
}

void RF(ref_rope_forward)(real *x, int B, int T, int H, int d, real base, int pos0) {
    rope_apply(x, B, T, H, d, base, pos0, 1.0);
}

void RF(ref_rope_backward)(real *dx, int B, int T, int H, int d, real base, int pos0) {
    rope_apply(dx, B, T, H, d, base, pos0, -1.0);
}
