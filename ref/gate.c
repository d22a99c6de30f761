/*
 * gate.c -- the two gates of the gated DeltaNet layer ('N') around its delta rule, forward and
 * backward (fla's GatedDeltaNet: the decay gate of its chunk kernel's use_gate_in_kernel, and its
 * FusedRMSNormGated output norm with the swish gate). Compiled twice like every ref/ file; every
 * backward accumulates (+=). s(z) = 1/(1+e^-z), sp(z) = log(1 + e^z) (= z for z > 20, PyTorch's
 * threshold), sp'(z) = s(z) (1 for z > 20), silu(z) = z s(z), silu'(z) = s(z) (1 + z (1 - s(z))).
 *
 *   decay       x = a + dt_bias[h],  g = -exp(A_log[h]) sp(x)       (the log decay, <= 0)
 *               dA_log[h] += sum_n dg g      (d g / d A_log = g)
 *               dx = -dg exp(A_log[h]) sp'(x):  da += dx,  ddt_bias[h] += sum_n dx
 *   gated norm  r = 1/sqrt(mean(x^2) + eps), y = x r w, out = y silu(z)
 *               dz += dout y silu'(z),  dy = dout silu(z), then RMSNorm's backward with dy:
 *               dw += dy x r,  dx += r (dy w - x r^2 mean(dy w x))
 */
#include "ref_math.h"
#include <stdio.h>

static inline double softplus_g(double z) { return z > 20.0 ? z : log1p(exp(z)); }
static inline double dsoftplus_g(double z) { return z > 20.0 ? 1.0 : sigmoid_d(z); }

void RF(ref_gdn_decay_forward)(real *g, const real *a, const real *A_log, const real *dt_bias, int N, int H) {
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++) {
            const size_t i = (size_t)n * H + h;
            g[i] = (real)(-exp((double)A_log[h]) * softplus_g((double)a[i] + dt_bias[h]));
        }
}

void RF(ref_gdn_decay_backward)(real *da, real *dA_log, real *ddt_bias, const real *dg, const real *a,
                                const real *A_log, const real *dt_bias, int N, int H) {
    for (int h = 0; h < H; h++) {
        const double A = exp((double)A_log[h]);
        double sA = 0.0, sdt = 0.0;
        for (int n = 0; n < N; n++) {
            const size_t i = (size_t)n * H + h;
            const double x = (double)a[i] + dt_bias[h];
            sA += (double)dg[i] * (-A * softplus_g(x));
            const double dx = -(double)dg[i] * A * dsoftplus_g(x);
            da[i] += (real)dx;
            sdt += dx;
        }
        dA_log[h] += (real)sA;
        ddt_bias[h] += (real)sdt;
    }
}

void RF(ref_gated_rmsnorm_forward)(real *out, real *rstd, const real *inp, const real *gate, const real *w,
                                   int N, int C, real eps) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * C, *z = gate + (size_t)n * C;
        real *y = out + (size_t)n * C;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
        const double r = 1.0 / sqrt(ss / C + (double)eps);
        for (int c = 0; c < C; c++) y[c] = (real)(x[c] * r * w[c] * (z[c] * sigmoid_d(z[c])));
        rstd[n] = (real)r;
    }
}

void RF(ref_gated_rmsnorm_backward)(real *dinp, real *dgate, real *dw, const real *dout, const real *inp,
                                    const real *gate, const real *w, const real *rstd, int N, int C) {
    double *dwacc = calloc((size_t)C, sizeof(double));
    if (!dwacc) { fputs("ref/gate.c: out of memory\n", stderr); exit(2); }
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * C, *z = gate + (size_t)n * C, *dout_n = dout + (size_t)n * C;
        real *dx = dinp + (size_t)n * C, *dz = dgate + (size_t)n * C;
        const double r = rstd[n];
        double dot = 0; /* sum_c dy w x */
        for (int c = 0; c < C; c++) {
            const double s = sigmoid_d(z[c]), y = (double)x[c] * r * w[c];
            const double dy = (double)dout_n[c] * z[c] * s;
            dz[c] += (real)((double)dout_n[c] * y * s * (1.0 + z[c] * (1.0 - s)));
            dot += dy * w[c] * x[c];
            dwacc[c] += dy * x[c] * r;
        }
        const double m = dot / C;
        for (int c = 0; c < C; c++) {
            const double dy = (double)dout_n[c] * z[c] * sigmoid_d(z[c]);
            dx[c] += (real)(r * (dy * w[c] - x[c] * r * r * m));
        }
    }
    for (int c = 0; c < C; c++) dw[c] += (real)dwacc[c];
    free(dwacc);
}
