#include "ref_math.h"
/*
 * conv.c -- the CPU reference of the causal depthwise short convolution with SiLU, and the per-
 * head L2 norm that follows it for q and k (kernels/conv.cuh fuses the three).
 * Compiled twice like every ref/ file: float (ref_*) and, with -DREF_F64, double (ref_*_f64);
 * reductions accumulate in a double local in both, and every backward ACCUMULATES (+=) into its
 * gradient outputs.
 *
 *   (g = gradient, s(z) = 1/(1+e^-z), silu(z) = z s(z), silu'(z) = s(z) (1 + z (1 - s(z))))
 *   conv_silu   z[t] = sum_j w[j] x[t-KS+1+j] (x[<0] = 0), y = silu(z)
 *               dz = dy silu'(z), dw[j] += sum_t dz[t] x[t-KS+1+j], dx[t] += sum_j w[j] dz[t+KS-1-j]
 *   l2norm      n = sqrt(sum x^2 + eps), y = x / n        dx += (dy - y (y.dy)) / n
 */
/* pre-activation z[b,t,c] */
static double conv_pre(const real *inp, const real *w, int b, int t, int c, int T, int C, int KS) {
    double z = 0;
    for (int j = 0; j < KS; j++) {
        int ts = t - KS + 1 + j;
        if (ts >= 0) z += (double)w[(size_t)c * KS + j] * inp[((size_t)b * T + ts) * C + c];
    }
    return z;
}

void RF(ref_conv_silu_forward)(real *out, const real *inp, const real *w, int B, int T, int C, int KS) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++)
                out[((size_t)b * T + t) * C + c] = (real)silu_d(conv_pre(inp, w, b, t, c, T, C, KS));
}

void RF(ref_conv_silu_backward)(real *dinp, real *dw, const real *dout, const real *inp, const real *w,
                                int B, int T, int C, int KS) {
    /* channels are independent: parallel over c, dz of one (b, c) time series in a buffer */
    #pragma omp parallel
    {
        double *dz = ref_xmalloc((size_t)T * sizeof(double));
        double *dwacc = ref_xmalloc((size_t)KS * sizeof(double));
        #pragma omp for schedule(static)
        for (int c = 0; c < C; c++) {
            const real *wc = w + (size_t)c * KS;
            for (int j = 0; j < KS; j++) dwacc[j] = 0;
            for (int b = 0; b < B; b++) {
                size_t base = (size_t)b * T * C + c; /* element (b, 0, c); time stride C */
                for (int t = 0; t < T; t++)
                    dz[t] = (double)dout[base + (size_t)t * C] * dsilu_d(conv_pre(inp, w, b, t, c, T, C, KS));
                for (int j = 0; j < KS; j++) {
                    double s = 0;
                    for (int t = 0; t < T; t++) {
                        int ts = t - KS + 1 + j;
                        if (ts >= 0) s += dz[t] * inp[base + (size_t)ts * C];
                    }
                    dwacc[j] += s;
                }
                for (int ts = 0; ts < T; ts++) {
                    double s = 0;
                    for (int j = 0; j < KS; j++) {
                        int t = ts + KS - 1 - j;
                        if (t < T) s += (double)wc[j] * dz[t];
                    }
                    dinp[base + (size_t)ts * C] += (real)s;
                }
            }
            for (int j = 0; j < KS; j++) dw[(size_t)c * KS + j] += (real)dwacc[j];
        }
        free(dz);
        free(dwacc);
    }
}

void RF(ref_l2norm_forward)(real *out, const real *inp, int N, int K, real eps) {
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * K;
        double ss = 0;
        for (int i = 0; i < K; i++) ss += (double)x[i] * x[i];
        double inv = 1.0 / sqrt(ss + (double)eps);
        for (int i = 0; i < K; i++) out[(size_t)n * K + i] = (real)(x[i] * inv);
    }
}

void RF(ref_l2norm_backward)(real *dinp, const real *dout, const real *inp, int N, int K, real eps) {
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * K, *dy = dout + (size_t)n * K;
        double ss = 0, xdy = 0;
        for (int i = 0; i < K; i++) { ss += (double)x[i] * x[i]; xdy += (double)x[i] * dy[i]; }
        double inv = 1.0 / sqrt(ss + (double)eps);
        /* y.dy = inv x.dy;  dx = inv (dy - y (y.dy)) = inv dy - inv^3 x (x.dy) */
        for (int i = 0; i < K; i++)
            dinp[(size_t)n * K + i] += (real)(inv * dy[i] - inv * inv * inv * x[i] * xdy);
    }
}
