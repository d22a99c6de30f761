#include "ref_real.h"
/*
 * layers.c -- the CPU reference of every layer except the delta rule (ref/deltarule.c has that).
 * Compiled twice: float (ref_*) and, with -DREF_F64, double (ref_*_f64). Every reduction (dot
 * product, sum) accumulates in a double local in both. Every backward ACCUMULATES (+=) into its
 * gradient outputs. Rows are contiguous; [B,T,H,d] for heads. The math, forward then backward
 * (g = dL/d of the quantity, ' = derivative, s(z) = 1/(1+e^-z), silu(z) = z s(z),
 * silu'(z) = s(z) (1 + z (1 - s(z)))):
 *
 *   embedding   y[n] = wte[tok[n]]                    dwte[tok[n]] += dy[n]
 *   linear      y = x W^T  (W [OC,C])                 dx += dy W,  dW += dy^T x
 *   rmsnorm     r = 1/sqrt(mean(x^2)+eps), y = x r g  dg += dy x r,
 *                                                     dx += r (dy g - x r^2 mean(dy g x))
 *   conv_silu   z[t] = sum_j w[j] x[t-KS+1+j] (x[<0] = 0), y = silu(z)
 *                                                     dz = dy silu'(z), dw[j] += sum_t dz[t] x[t-KS+1+j],
 *                                                     dx[t] += sum_j w[j] dz[t+KS-1-j]
 *   l2norm      n = sqrt(sum x^2 + eps), y = x / n    dx += (dy - y (y.dy)) / n
 *   sigmoid     y = s(x)                              dx += dy y (1 - y)
 *   swiglu      y = silu(a) u                         da += dy u silu'(a), du += dy silu(a)
 *   rope        per pair (x_i, x_{i+d/2}), angle p = (pos0+t) base^(-2i/d): rotation R(p)
 *                                                     dx = R(-p) dy (a rotation's transpose)
 *   attention   s_j = q.k_j / sqrt(d) over the visible keys j, lse = log sum_j e^{s_j},
 *               P_j = e^{s_j - lse}, o = sum_j P_j v_j
 *               dP_j = do.v_j, dS_j = P_j (dP_j - do.o), dq += sum_j dS_j k_j / sqrt(d),
 *               dk_j += dS_j q / sqrt(d), dv_j += P_j do   (summed over the query heads of a KV head)
 *   xent        m = max_j z_j, loss = log sum_j e^{z_j - m} + m - z_tgt (over the first V columns)
 *                                                     dz_j += dloss/N (softmax_j - [j == tgt])
 */
#include <stdio.h>

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "ref/layers.c: out of memory (%zu bytes)\n", n); exit(2); }
    return p;
}

static inline double sigmoid_d(double z) { return 1.0 / (1.0 + exp(-z)); }
static inline double silu_d(double z) { return z * sigmoid_d(z); }
static inline double dsilu_d(double z) { double s = sigmoid_d(z); return s * (1.0 + z * (1.0 - s)); }

/* ---- embedding ------------------------------------------------------------------------------- */

void RF(ref_embedding_forward)(real *out, const int *tokens, const real *wte, int N, int D) {
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * D, wte + (size_t)tokens[n] * D, (size_t)D * sizeof(real));
}

void RF(ref_embedding_backward)(real *dwte, const real *dout, const int *tokens, int N, int D) {
    /* serial: rows of repeated tokens add into the same dwte row */
    for (int n = 0; n < N; n++) {
        real *dw = dwte + (size_t)tokens[n] * D;
        const real *dy = dout + (size_t)n * D;
        for (int i = 0; i < D; i++) dw[i] += dy[i];
    }
}

/* ---- linear ---------------------------------------------------------------------------------- */

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
        double *acc = xmalloc((size_t)C * sizeof(double));
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

/* ---- rmsnorm --------------------------------------------------------------------------------- */

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
    double *dgacc = xmalloc((size_t)C * sizeof(double));
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

/* ---- causal depthwise conv + SiLU ------------------------------------------------------------ */

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
        double *dz = xmalloc((size_t)T * sizeof(double));
        double *dwacc = xmalloc((size_t)KS * sizeof(double));
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

/* ---- l2norm, sigmoid, swiglu ----------------------------------------------------------------- */

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

void RF(ref_sigmoid_forward)(real *out, const real *inp, int N) {
    for (int i = 0; i < N; i++) out[i] = (real)sigmoid_d(inp[i]);
}

void RF(ref_sigmoid_backward)(real *dinp, const real *dout, const real *out, int N) {
    for (int i = 0; i < N; i++) dinp[i] += (real)((double)dout[i] * out[i] * (1.0 - out[i]));
}

void RF(ref_swiglu_forward)(real *out, const real *gate, const real *up, int N) {
    for (int i = 0; i < N; i++) out[i] = (real)(silu_d(gate[i]) * up[i]);
}

void RF(ref_swiglu_backward)(real *dgate, real *dup, const real *dout, const real *gate, const real *up, int N) {
    for (int i = 0; i < N; i++) {
        dgate[i] += (real)((double)dout[i] * up[i] * dsilu_d(gate[i]));
        dup[i] += (real)((double)dout[i] * silu_d(gate[i]));
    }
}

/* ---- rope ------------------------------------------------------------------------------------ */

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

/* ---- attention ------------------------------------------------------------------------------- */

static inline int attn_first_key(int t, int window) {
    return (window > 0 && t - window + 1 > 0) ? t - window + 1 : 0;
}

void RF(ref_attention_forward)(real *out, real *lse, const real *q, const real *k, const real *v,
                               int B, int T, int Hq, int Hkv, int d, int window) {
    int group = Hq / Hkv;
    double scale = 1.0 / sqrt((double)d);
    #pragma omp parallel
    {
        double *s = xmalloc((size_t)T * sizeof(double));
        double *acc = xmalloc((size_t)d * sizeof(double));
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
        double *dkacc = xmalloc((size_t)T * d * sizeof(double));
        double *dvacc = xmalloc((size_t)T * d * sizeof(double));
        double *dqacc = xmalloc((size_t)d * sizeof(double));
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

/* ---- cross-entropy --------------------------------------------------------------------------- */

/* log sum_j exp(z_j) over the first V columns, max-shifted */
static double logsumexp_row(const real *z, int V) {
    double m = -INFINITY;
    for (int j = 0; j < V; j++) if (z[j] > m) m = z[j];
    double s = 0;
    for (int j = 0; j < V; j++) s += exp((double)z[j] - m);
    return m + log(s);
}

real RF(ref_crossentropy_forward)(real *losses, const real *logits, const int *targets, int N, int V, int ld) {
    double *l = xmalloc((size_t)N * sizeof(double));
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
