/* ref_math.h -- included first by the ref/ layer files: ref_real.h (the precision of this compile)
 * and the double-precision helpers they share. */
#ifndef DELTANET_REF_MATH_H
#define DELTANET_REF_MATH_H
#include <stdio.h>
#include "ref_real.h"

static inline void *ref_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "ref: out of memory (%zu bytes)\n", n); exit(2); }
    return p;
}
static inline double sigmoid_d(double z) { return 1.0 / (1.0 + exp(-z)); }
static inline double silu_d(double z) { return z * sigmoid_d(z); }
static inline double dsilu_d(double z) { double s = sigmoid_d(z); return s * (1.0 + z * (1.0 - s)); }
#endif
