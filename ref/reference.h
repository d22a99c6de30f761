/*
 * reference.h -- the CPU reference of deltanet.c: every layer's forward and backward in plain C,
 * and the whole model (ref/model.c). It is the ground truth that the GPU kernels, infer.c and the
 * tests are checked against: written to be obviously right, not fast.
 *
 * Conventions (llm.c's): layers are x_forward / x_backward pairs; gradients are d-prefixed and
 * every backward ACCUMULATES (+=) into its gradient outputs, so callers zero them first; activations
 * are row-major with the layout [B,T,...] ([B,T,H,K] for heads). Linear weights are PyTorch's
 * [out, in].
 *
 * Every function exists in two precisions from the same source: float (ref_*) for everything that
 * runs, and double (ref_*_f64) for the finite-difference gradient checks. Reductions accumulate in
 * double in both.
 */
#ifndef DELTANET_REFERENCE_H
#define DELTANET_REFERENCE_H

#include "../model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define REAL float
#define RF(name) name
#include "ref_api.h"
#include "ref_model_api.h"
#undef REAL
#undef RF
#define REAL double
#define RF(name) name##_f64
#include "ref_api.h"
#include "ref_model_api.h"
#undef REAL
#undef RF

#ifdef __cplusplus
}
#endif
#endif
