/*
 * kernel_test.cuh -- what the per-layer GPU tests (tests/gpu/test_<layer>.cu) share: each checks
 * one kernels/<layer>.cuh against the CPU reference (the ref/ file of the same name, ref/model.c), every forward and
 * backward, in fp32 (bound 1e-5) and bf16 (bound 2e-2, inputs rounded to bf16 before the reference
 * sees them). Errors are ||gpu - ref|| / ||ref||. Inputs are random and never zero; every output is
 * poisoned (NaN bits) before each run, so an unwritten element fails; gradient outputs that
 * accumulate (+=) start from random values. Odd shapes throughout. Parameter-gradient reductions
 * are also checked to be bitwise reproducible.
 *
 * Every program takes the same flags:
 *   build/tests/gpu/test_<layer>            all shapes
 *   build/tests/gpu/test_<layer> --small    small shapes only (for compute-sanitizer)
 *   build/tests/gpu/test_<layer> --fp32     (or --bf16) one precision only
 */
#pragma once
#include <vector>
#include <cstring>
#include "gpu_util.cuh"
#include "../test.h"
#include "../../ref/reference.h"

typedef std::vector<float> Vec;

static const char *tname(const float *) { return "fp32"; }
static const char *tname(const bf16 *) { return "bf16"; }
template <typename T> static double tol() { return sizeof(T) == 2 ? 2e-2 : 1e-5; }

static float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }
template <typename T> static float round_to(float x) { return sizeof(T) == 2 ? round_bf16(x) : x; }

/* n values ~N(0, scale), never exactly zero, rounded to T's precision. */
template <typename T>
static Vec rand_vec(size_t n, DNRng *r, float scale) {
    Vec x(n);
    for (size_t i = 0; i < n; i++) {
        float v = scale * dn_rng_normal(r);
        if (v == 0.0f) v = 1e-3f;
        x[i] = round_to<T>(v);
    }
    return x;
}
template <typename T>
static void set(T *d, const Vec &h) {
    std::vector<T> t(h.size());
    for (size_t i = 0; i < h.size(); i++) t[i] = from_f<T>(h[i]);
    cudaCheck(cudaMemcpy(d, t.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
}
static double rel(const Vec &a, const Vec &ref) { return rel_err_f(a.data(), ref.data(), ref.size()); }
static bool same_bits(const Vec &a, const Vec &b) { return a.size() == b.size() && !memcmp(a.data(), b.data(), a.size() * 4); }

static int g_small = 0; /* --small */

/* Parse the flags above, seed the RNG (42), run run_f32 then run_bf16, print the summary. */
static int kernel_test_main(int argc, char **argv, const char *name, void (*run_f32)(DNRng *),
                            void (*run_bf16)(DNRng *)) {
    int do_f32 = 1, do_bf16 = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--small")) g_small = 1;
        else if (!strcmp(argv[i], "--fp32")) do_bf16 = 0;
        else if (!strcmp(argv[i], "--bf16")) do_f32 = 0;
    }
    DNRng r;
    dn_rng_seed(&r, 42);
    if (do_f32) run_f32(&r);
    if (do_bf16) run_bf16(&r);
    return test_summary(name);
}
