#include "ref_math.h"
/*
 * rmsnorm.c -- the CPU reference of RMSNorm with a gain (kernels/rmsnorm.cuh).
 * Compiled twice like every ref/ file: float (ref_*) and, with -DREF_F64, double (ref_*_f64);
 * reductions accumulate in a double local in both, and every backward ACCUMULATES (+=) into its
 * gradient outputs.
 *
 *   r = 1/sqrt(mean(x^2)+eps), y = x r g  dg += dy x r,
 *                                         dx += r (dy g - x r^2 mean(dy g x))
 */
void RF(ref_rmsnorm_forward)(real *out, real *rstd, const real *inp, const real *g, int N, int C, real eps) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * C;
        real *y = out + (size_t)n * C;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
        double r = 1.0 / sqrt(ss / C + (double)eps);
        for (int c = 0; c < C; c++) y[c] = (real)(x[c] * r * g[c]);
        rstd[n] = (real)r;
    }
}

void RF(ref_rmsnorm_backward)(real *dinp, real *dg, const real *dout, const real *inp, const real *g,
                              const real *rstd, int N, int C) {
    double *dgacc = ref_xmalloc((size_t)C * sizeof(double));
    for (int c = 0; c < C; c++) dgacc[c] = 0;
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        real *dx = dinp + (size_t)n * C;
        double r = rstd[n];
        double dot = 0; /* sum_c dy g x */
        for (int c = 0; c < C; c++) {
            dot += (double)dy[c] * g[c] * x[c];
            dgacc[c] += (double)dy[c] * x[c] * r;
        }
        double m = dot / C;
        for (int c = 0; c < C; c++) dx[c] += (real)(r * ((double)dy[c] * g[c] - x[c] * r * r * m));
    }
    for (int c = 0; c < C; c++) dg[c] += (real)dgacc[c];
    free(dgacc);
}
