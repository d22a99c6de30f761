#include "ref_math.h"
/*
 * matmul.c -- the CPU reference of the linear layer y = x W^T (kernels/matmul.cuh runs it on
 * cuBLASLt).
 * Compiled twice like every ref/ file: float (ref_*) and, with -DREF_F64, double (ref_*_f64);
 * reductions accumulate in a double local in both, and every backward ACCUMULATES (+=) into its
 * gradient outputs.
 *
 *   y = x W^T  (x [N,C], W [OC,C])          dx += dy W,  dW += dy^T x
 */
void RF(ref_linear_forward)(real *out, const real *inp, const real *w, int N, int C, int OC) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * C;
        real *y = out + (size_t)n * OC;
        int o = 0;
        /* four output columns at a time: four independent sums (the same sums as one at a time) */
        for (; o + 4 <= OC; o += 4) {
            const real *w0 = w + (size_t)o * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;
            double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            for (int c = 0; c < C; c++) {
                double xc = x[c];
                s0 += xc * w0[c]; s1 += xc * w1[c]; s2 += xc * w2[c]; s3 += xc * w3[c];
            }
            y[o] = (real)s0; y[o + 1] = (real)s1; y[o + 2] = (real)s2; y[o + 3] = (real)s3;
        }
        for (; o < OC; o++) {
            const real *wo = w + (size_t)o * C;
            double s = 0;
            for (int c = 0; c < C; c++) s += (double)x[c] * wo[c];
            y[o] = (real)s;
        }
    }
}

/* out[r, :] += sum_i g[r gr + i gc] x[i, :] for r < R, x [n, C]: each output row summed in one double
 * accumulator row per thread (both products of the linear backward). */
static void add_weighted_rows(real *out, const real *g, size_t gr, size_t gc, const real *x, int R, int n, int C) {
    #pragma omp parallel
    {
        double *acc = ref_xmalloc((size_t)C * sizeof(double));
        #pragma omp for schedule(static)
        for (int r = 0; r < R; r++) {
            for (int c = 0; c < C; c++) acc[c] = 0;
            for (int i = 0; i < n; i++) {
                double gi = g[(size_t)r * gr + (size_t)i * gc];
                const real *xi = x + (size_t)i * C;
                #pragma omp simd /* elementwise: vectorising changes no result */
                for (int c = 0; c < C; c++) acc[c] += gi * xi[c];
            }
            real *o = out + (size_t)r * C;
            for (int c = 0; c < C; c++) o[c] += (real)acc[c];
        }
        free(acc);
    }
}

void RF(ref_linear_backward)(real *dinp, real *dw, const real *dout, const real *inp, const real *w,
                             int N, int C, int OC) {
    if (dinp) add_weighted_rows(dinp, dout, (size_t)OC, 1, w, N, OC, C);   /* dinp[n,:] += sum_o dout[n,o] w[o,:] */
    if (dw) add_weighted_rows(dw, dout, 1, (size_t)OC, inp, OC, N, C);     /* dw[o,:] += sum_n dout[n,o] inp[n,:] */
}
