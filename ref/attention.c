#include "ref_math.h"
/*
 * attention.c -- the CPU reference of causal softmax attention, global or sliding-window, with
 * grouped KV heads (kernels/attention.cuh).
 * Compiled twice like every ref/ file: float (ref_*) and, with -DREF_F64, double (ref_*_f64);
 * reductions accumulate in a double local in both, and every backward ACCUMULATES (+=) into its
 * gradient outputs.
 *
 *   s_j = q.k_j / sqrt(d) over the visible keys j, lse = log sum_j e^{s_j},
 *   P_j = e^{s_j - lse}, o = sum_j P_j v_j
 *   dP_j = do.v_j, dS_j = P_j (dP_j - do.o), dq += sum_j dS_j k_j / sqrt(d),
 *   dk_j += dS_j q / sqrt(d), dv_j += P_j do   (summed over the query heads of a KV head)
 */
static inline int attn_first_key(int t, int window) {
    return (window > 0 && t - window + 1 > 0) ? t - window + 1 : 0;
}

void RF(ref_attention_forward)(real *out, real *lse, const real *q, const real *k, const real *v,
                               int B, int T, int Hq, int Hkv, int d, int window) {
    int group = Hq / Hkv;
    double scale = 1.0 / sqrt((double)d);
    #pragma omp parallel
    {
        double *s = ref_xmalloc((size_t)T * sizeof(double));
        double *acc = ref_xmalloc((size_t)d * sizeof(double));
        #pragma omp for schedule(static)
        for (int bh = 0; bh < B * Hq; bh++) {
            int b = bh / Hq, h = bh % Hq, hk = h / group;
            for (int t = 0; t < T; t++) {
                const real *qt = q + (((size_t)b * T + t) * Hq + h) * d;
                int j0 = attn_first_key(t, window);
                double m = -INFINITY;
                for (int j = j0; j <= t; j++) {
                    const real *kj = k + (((size_t)b * T + j) * Hkv + hk) * d;
                    double dot = 0;
                    for (int i = 0; i < d; i++) dot += (double)qt[i] * kj[i];
                    s[j] = dot * scale;
                    if (s[j] > m) m = s[j];
                }
                double sum = 0;
                for (int j = j0; j <= t; j++) sum += exp(s[j] - m);
                double l = m + log(sum);
                for (int i = 0; i < d; i++) acc[i] = 0;
                for (int j = j0; j <= t; j++) {
                    double p = exp(s[j] - l);
                    const real *vj = v + (((size_t)b * T + j) * Hkv + hk) * d;
                    for (int i = 0; i < d; i++) acc[i] += p * vj[i];
                }
                real *ot = out + (((size_t)b * T + t) * Hq + h) * d;
                for (int i = 0; i < d; i++) ot[i] = (real)acc[i];
                lse[((size_t)b * Hq + h) * T + t] = (real)l;
            }
        }
        free(s);
        free(acc);
    }
}

void RF(ref_attention_backward)(real *dq, real *dk, real *dv, const real *dout, const real *q,
                                const real *k, const real *v, const real *out, const real *lse,
                                int B, int T, int Hq, int Hkv, int d, int window) {
    int group = Hq / Hkv;
    double scale = 1.0 / sqrt((double)d);
    /* parallel over (b, KV head): the query heads sharing a KV head run in order inside one task,
     * so dk/dv are summed without races, in a fixed order */
    #pragma omp parallel
    {
        double *dkacc = ref_xmalloc((size_t)T * d * sizeof(double));
        double *dvacc = ref_xmalloc((size_t)T * d * sizeof(double));
        double *dqacc = ref_xmalloc((size_t)d * sizeof(double));
        #pragma omp for schedule(static)
        for (int bk = 0; bk < B * Hkv; bk++) {
            int b = bk / Hkv, hk = bk % Hkv;
            for (size_t i = 0; i < (size_t)T * d; i++) dkacc[i] = dvacc[i] = 0;
            for (int h = hk * group; h < (hk + 1) * group; h++) {
                for (int t = 0; t < T; t++) {
                    size_t qo = (((size_t)b * T + t) * Hq + h) * d;
                    const real *qt = q + qo, *dot_ = dout + qo, *ot = out + qo;
                    double l = lse[((size_t)b * Hq + h) * T + t];
                    double Dt = 0; /* do.o */
                    for (int i = 0; i < d; i++) Dt += (double)dot_[i] * ot[i];
                    for (int i = 0; i < d; i++) dqacc[i] = 0;
                    for (int j = attn_first_key(t, window); j <= t; j++) {
                        size_t ko = (((size_t)b * T + j) * Hkv + hk) * d;
                        const real *kj = k + ko, *vj = v + ko;
                        double sc = 0, dp = 0;
                        for (int i = 0; i < d; i++) { sc += (double)qt[i] * kj[i]; dp += (double)dot_[i] * vj[i]; }
                        double p = exp(sc * scale - l);
                        double ds = p * (dp - Dt);
                        for (int i = 0; i < d; i++) {
                            dqacc[i] += ds * scale * kj[i];
                            dkacc[(size_t)j * d + i] += ds * scale * qt[i];
                            dvacc[(size_t)j * d + i] += p * dot_[i];
                        }
                    }
                    for (int i = 0; i < d; i++) dq[qo + i] += (real)dqacc[i];
                }
            }
            for (int j = 0; j < T; j++) {
                size_t ko = (((size_t)b * T + j) * Hkv + hk) * d;
                for (int i = 0; i < d; i++) {
                    dk[ko + i] += (real)dkacc[(size_t)j * d + i];
                    dv[ko + i] += (real)dvacc[(size_t)j * d + i];
                }
            }
        }
        free(dkacc);
        free(dvacc);
        free(dqacc);
    }
}
