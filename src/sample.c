/*
 * sample.c -- the sampler of sample.h: temperature, top-k, top-p.
 *
 * Top-k keeps the k best weights with a min-heap in one pass; top-p (alone) first drops the tokens
 * below (1-p)/n of the mass, then a quickselect finds the smallest top-ranked set with mass >= p:
 * sorting the ~50k candidates of a flat distribution would cost milliseconds per token. The set
 * decides the draw, not the order its members sit in.
 */
#include "sample.h"
#include <math.h>
#include <stdlib.h>

int sampler_build(Sampler *sp, int vocab, double temperature, float topp, int topk, uint64_t seed) {
    sp->vocab = vocab;
    sp->temperature = temperature;
    sp->topp = topp;
    sp->topk = topk >= vocab ? 0 : topk;
    dn_rng_seed(&sp->rng, seed);
    sp->w = (double *)calloc((size_t)vocab, sizeof(double));
    sp->cand = (SampleCandidate *)calloc((size_t)vocab, sizeof(SampleCandidate));
    if (!sp->w || !sp->cand) {
        sampler_free(sp);
        return -1;
    }
    return 0;
}

void sampler_free(Sampler *sp) {
    free(sp->w);
    free(sp->cand);
    sp->w = NULL, sp->cand = NULL;
}

int sample_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best] || (isnan(x[best]) && !isnan(x[i]))) best = i;
    return best;
}

int sample_cand_desc(const void *a, const void *b) {
    const SampleCandidate *x = (const SampleCandidate *)a, *y = (const SampleCandidate *)b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->i - y->i;
}

/* Is a ranked below b (smaller weight, or equal and a larger id)? */
static int cand_below(SampleCandidate a, SampleCandidate b) { return a.p < b.p || (a.p == b.p && a.i > b.i); }

/* Keep the k best of w[0..n) in h[0..k): a min-heap (h[0] the worst kept) over one pass. */
static void top_k_select(SampleCandidate *h, const double *w, int n, int k) {
    for (int i = 0; i < n; i++) {
        SampleCandidate c = {w[i], i};
        int len = i < k ? i : k;
        if (i < k) {                            /* grow: sift the new one up */
            int j = len;
            while (j > 0 && cand_below(c, h[(j - 1) / 2])) { h[j] = h[(j - 1) / 2]; j = (j - 1) / 2; }
            h[j] = c;
        } else if (cand_below(h[0], c)) {       /* replace the worst: sift c down from the root */
            int j = 0;
            for (;;) {
                int a = 2 * j + 1, b = a + 1, m = j;
                SampleCandidate low = c;
                if (a < k && cand_below(h[a], low)) { m = a; low = h[a]; }
                if (b < k && cand_below(h[b], low)) m = b;
                if (m == j) break;
                h[j] = h[m];
                j = m;
            }
            h[j] = c;
        }
    }
}

/* Reorder cd[0..n) so that cd[0..m) holds the m best candidates (cand_below's order), m the
 * smallest count whose mass reaches need, and return m. Quickselect on the mass, O(n) expected:
 * sorting the ~50k candidates of a flat distribution would cost milliseconds per token. */
int sample_nucleus_select(SampleCandidate *cd, int n, double need) {
    int lo = 0, hi = n;        /* cd[0..lo) are in (mass acc); the boundary lies in [lo, hi) */
    double acc = 0.0;
    while (hi - lo > 32) {
        SampleCandidate piv = cd[lo + (hi - lo) / 2], t;
        int g = lo;
        double above = 0.0;
        for (int j = lo; j < hi; j++)  /* candidates ranked above the pivot to the front */
            if (cand_below(piv, cd[j])) { t = cd[g]; cd[g] = cd[j]; cd[j] = t; above += cd[g].p; g++; }
        for (int j = g; j < hi; j++)   /* then the pivot itself, at g */
            if (cd[j].i == piv.i) { t = cd[g]; cd[g] = cd[j]; cd[j] = t; break; }
        if (acc + above >= need) { hi = g; continue; }
        if (acc + above + piv.p >= need) return g + 1;
        acc += above + piv.p;
        lo = g + 1;
    }
    qsort(cd + lo, (size_t)(hi - lo), sizeof *cd, sample_cand_desc);
    for (int j = lo; j < hi; j++) { acc += cd[j].p; if (acc >= need) return j + 1; }
    return hi;
}

/* Walk the running sum of the weights: the first index whose sum passes target. If rounding
 * leaves target at or past the total, the last index of positive weight (-1: none). */
int sample_pick_weight(const double *w, int n, double target) {
    double cum = 0.0;
    int last = -1;
    for (int i = 0; i < n; i++) {
        if (!(w[i] > 0.0)) continue;
        cum += w[i];
        last = i;
        if (target < cum) return i;
    }
    return last;
}
int sample_pick_candidate(const SampleCandidate *cd, int n, double target) {
    double cum = 0.0;
    int last = -1;
    for (int j = 0; j < n; j++) {
        if (!(cd[j].p > 0.0)) continue;
        cum += cd[j].p;
        last = cd[j].i;
        if (target < cum) return cd[j].i;
    }
    return last;
}

int sampler_next(Sampler *sp, const float *logits) {
    int n = sp->vocab, best = sample_argmax(logits, n);
    /* greedy; and where the largest logit is not finite (+inf wins outright; all NaN or -inf
     * leave nothing to weigh) */
    if (sp->temperature == 0.0 || !isfinite(logits[best])) return best;
    double *w = sp->w, mx = logits[best], sum = 0.0;
    for (int i = 0; i < n; i++) {
        double z = ((double)logits[i] - mx) / sp->temperature;  /* <= 0, or NaN for a NaN logit */
        w[i] = z <= 0.0 ? exp(z) : 0.0;
        sum += w[i];
    }
    double r = dn_rng_uniform(&sp->rng);
    int got;
    if (sp->topk == 0 && sp->topp >= 1.0f) {                 /* plain sampling: walk the CDF */
        got = sample_pick_weight(w, n, r * sum);
        return got >= 0 ? got : best;
    }
    int nc = 0;
    SampleCandidate *cd = sp->cand;
    if (sp->topk > 0) {
        top_k_select(cd, w, n, sp->topk);
        nc = sp->topk;
    } else {
        /* Nucleus only. The tokens below (1-p)/n of the mass hold less than 1-p of it in all, so
         * the tokens at or above it hold more than p: a top-ranked set that contains the nucleus. */
        double cut = (1.0 - sp->topp) / n * sum;
        for (int i = 0; i < n; i++) if (w[i] >= cut && w[i] > 0.0) { cd[nc].p = w[i]; cd[nc].i = i; nc++; }
    }
    double mass = 0.0;
    for (int j = 0; j < nc; j++) mass += cd[j].p;
    if (sp->topp < 1.0f) {                 /* the smallest top-ranked set with mass >= p (of it) */
        nc = sample_nucleus_select(cd, nc, sp->topp * mass);
        mass = 0.0;
        for (int j = 0; j < nc; j++) mass += cd[j].p;
    }
    /* sample among cd[0..nc) in the order they are in: the set decides, not the order */
    got = sample_pick_candidate(cd, nc, r * mass);
    return got >= 0 ? got : best;
}
