/*
 * sample.h -- drawing the next token from a row of logits: temperature, then top-k and/or top-p
 * (nucleus) over the softmax. Shared by infer.c (generation) and the trainer (its periodic samples).
 *
 * The softmax is taken in double on (logit - max) / T, so that every temperature works: the largest
 * logit gets weight exp(0) = 1 and every other a weight in [0, 1], with no overflow. A tiny T
 * (1e-40) sends every weight but the largest to 0 (greedy); a huge one (1e6) sends every weight to
 * about 1 (uniform); T = 0 is greedy (argmax). The weights stay unnormalised: the choices only
 * compare them or draw u * (their sum), and a draw that rounding leaves at or past the end of the
 * running sum takes the last token of positive weight, never one of probability 0. Each draw that
 * is not greedy takes exactly one dn_rng_uniform from the sampler's rng.
 */
#ifndef DELTANET_SAMPLE_H
#define DELTANET_SAMPLE_H

#include "../model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct { double p; int i; } SampleCandidate;

typedef struct {
    int vocab;
    double temperature;     /* 0: greedy (argmax) */
    float topp;             /* 1: off */
    int topk;               /* 0: off (also when >= vocab) */
    DNRng rng;              /* the draws' stream: seeded by sampler_build, or set by the caller */
    double *w;              /* [vocab] softmax weights exp((logit - max) / T), unnormalised */
    SampleCandidate *cand;  /* [vocab] */
} Sampler;

/* Returns 0, or -1 if the buffers cannot be allocated (nothing is then to be freed). */
int sampler_build(Sampler *sp, int vocab, double temperature, float topp, int topk, uint64_t seed);
void sampler_free(Sampler *sp);
/* The next token id in [0, vocab) for logits[vocab]. NaN logits are never drawn; where the largest
 * logit is not finite (+inf, or all NaN / -inf) the argmax is returned. */
int sampler_next(Sampler *sp, const float *logits);

/* The building blocks, exposed for tests/test_infer.c. */
/* The first largest of x[0..n); a NaN never wins (all NaN: 0). */
int sample_argmax(const float *x, int n);
/* qsort order: larger weight first, equal ones by id (deterministic). */
int sample_cand_desc(const void *a, const void *b);
/* Reorder cd[0..n) so that cd[0..m) holds the m best candidates, m the smallest count whose mass
 * reaches need; returns m. */
int sample_nucleus_select(SampleCandidate *cd, int n, double need);
/* The first index whose running sum of w passes target; at or past the total, the last index of
 * positive weight (-1: none). */
int sample_pick_weight(const double *w, int n, double target);
/* The same walk over candidates' weights, returning the id (-1: none of positive weight). */
int sample_pick_candidate(const SampleCandidate *cd, int n, double target);

#ifdef __cplusplus
}
#endif
#endif
