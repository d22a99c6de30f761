#include "ref_math.h"
/*
 * adamw.c -- the CPU reference of the optimizer step (kernels/adamw.cuh): the gradients' global
 * norm, and PyTorch's AdamW over every tensor of a parameter table. Compiled twice like every ref/
 * file: float (ref_*) and, with -DREF_F64, double (ref_*_f64).
 *
 *   norm = sqrt(sum_i g_i^2)  (accumulated in double)
 *   g = grad_scale grad (clipping: grad_scale = min(1, clip / norm)), t = the step from 1:
 *   m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
 *   p -= lr (wd p + (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps))
 *   (wd only on the tensors marked to decay: matrices, embedding, conv weights)
 */
real RF(ref_grad_norm)(const real *grads, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)grads[i] * grads[i];
    return (real)sqrt(s);
}

void RF(ref_adamw_update)(const DNParamTable *t, real *params, const real *grads, real *m, real *v,
                          long step, real lr, real beta1, real beta2, real eps, real weight_decay,
                          real grad_scale) {
    double bc1 = 1.0 - pow((double)beta1, (double)step), bc2 = 1.0 - pow((double)beta2, (double)step);
    for (int i = 0; i < t->n_params; i++) {
        const DNParam *p = &t->params[i];
        real wd = p->decay ? weight_decay : (real)0;
        for (size_t j = p->offset; j < p->offset + p->numel; j++) {
            real g = grads[j] * grad_scale;
            m[j] = beta1 * m[j] + (1 - beta1) * g;
            v[j] = beta2 * v[j] + (1 - beta2) * g * g;
            double mhat = m[j] / bc1, vhat = v[j] / bc2;
            params[j] -= lr * (wd * params[j] + (real)(mhat / (sqrt(vhat) + eps)));
        }
    }
}
