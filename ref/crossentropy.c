#include "ref_math.h"
/*
 * crossentropy.c -- the CPU reference of the cross-entropy of the logits
 * (kernels/crossentropy.cuh).
 * Compiled twice like every ref/ file: float (ref_*) and, with -DREF_F64, double (ref_*_f64);
 * reductions accumulate in a double local in both, and every backward ACCUMULATES (+=) into its
 * gradient outputs.
 *
 *   m = max_j z_j, loss = log sum_j e^{z_j - m} + m - z_tgt (over the first V columns)
 *                                         dz_j += dloss/N (softmax_j - [j == tgt])
 */
/* log sum_j exp(z_j) over the first V columns, max-shifted */
static double logsumexp_row(const real *z, int V) {
    double m = -INFINITY;
    for (int j = 0; j < V; j++) if (z[j] > m) m = z[j];
    double s = 0;
    for (int j = 0; j < V; j++) s += exp((double)z[j] - m);
    return m + log(s);
}

real RF(ref_crossentropy_forward)(real *losses, const real *logits, const int *targets, int N, int V, int ld) {
    double *l = ref_xmalloc((size_t)N * sizeof(double));
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const real *z = logits + (size_t)n * ld;
        l[n] = logsumexp_row(z, V) - z[targets[n]];
    }
    double sum = 0;
    for (int n = 0; n < N; n++) {
        if (losses) losses[n] = (real)l[n];
        sum += l[n];
    }
    free(l);
    return (real)(sum / N);
}

void RF(ref_crossentropy_backward)(real *dlogits, const real *logits, const int *targets, int N, int V,
                                   int ld, real dloss) {
    double g = (double)dloss / N;
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const real *z = logits + (size_t)n * ld;
        real *dz = dlogits + (size_t)n * ld;
        double lz = logsumexp_row(z, V);
        for (int j = 0; j < V; j++) dz[j] += (real)(g * (exp((double)z[j] - lz) - (j == targets[n])));
    }
}

void RF(ref_crossentropy_weighted_backward)(real *dlogits, const real *logits, const int *targets, const real *w,
                                            int N, int V, int ld) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        if (w[n] == 0) continue; /* a row outside the mask: no gradient at all */
        const real *z = logits + (size_t)n * ld;
        real *dz = dlogits + (size_t)n * ld;
        double lz = logsumexp_row(z, V);
        for (int j = 0; j < V; j++) dz[j] += (real)((double)w[n] * (exp((double)z[j] - lz) - (j == targets[n])));
    }
}
