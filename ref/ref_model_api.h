/*
 * ref_model_api.h -- the whole model on the CPU (ref/model.c), included twice by reference.h
 * like ref_api.h (REAL = float: ref_*, REAL = double: ref_*_f64). No include guard on purpose.
 *
 * A RefModel holds the activations of one (B, T) shape; parameters and gradients are flat
 * buffers laid out by the DNParamTable (t->total elements; padding vocab rows stay zero).
 */

typedef struct RF(RefModel) RF(RefModel);

/* chunk: delta-rule chunk size for the chunkwise form (default 64); 0 selects the sequential
 * recurrence. Returns NULL on allocation failure. */
RF(RefModel) *RF(ref_model_create)(const DNParamTable *t, int B, int T, int chunk);
void RF(ref_model_free)(RF(RefModel) *m);
/* Forward over inputs [B,T]; if targets [B,T] is given, returns the mean cross-entropy (else 0).
 * Logits [B*T, vocab_size] stay readable through ref_model_logits until the next forward. */
REAL RF(ref_model_forward)(RF(RefModel) *m, const REAL *params, const int *inputs, const int *targets);
const REAL *RF(ref_model_logits)(const RF(RefModel) *m);
/* The forward with a loss mask: mask [B*T] of 0/1 (NULL: every position). The loss is the mean
 * over the masked positions only (0 when there are none), and ref_model_backward then gives the
 * gradient of that mean: unmasked positions contribute nothing. */
REAL RF(ref_model_forward_masked)(RF(RefModel) *m, const REAL *params, const int *inputs, const int *targets,
                                  const unsigned char *mask);
/* Backward of the mean loss of the last forward (which must have had targets):
 * grads (t->total elements) += d loss / d params. */
void RF(ref_model_backward)(RF(RefModel) *m, const REAL *params, REAL *grads);

/* After ref_model_backward, for a gated DeltaNet layer l ('N'): 2 x gdn_heads numbers, per head
 * sum_n |dg_n g_n| then sum_n |da_n| over the B*T positions -- the summands' mass of the A_log and
 * dt_bias gradients (dA_log[h] = sum_n dg_n g_n, ddt_bias[h] = sum_n da_n). Their sums cancel, so a
 * computation's rounding scales with this mass, not with the gradient. Zeros for other layers. */
const REAL *RF(ref_model_gate_mass)(const RF(RefModel) *m, int layer);

/* L2 norm of a gradient buffer. */
REAL RF(ref_grad_norm)(const REAL *grads, size_t n);
/* One AdamW step (PyTorch's AdamW: decoupled weight decay, bias-corrected moments) over every
 * tensor of the table; weight decay only where DNParam.decay is set. step counts from 1.
 * grad_scale multiplies the gradients first (for clipping: min(1, clip / norm)). */
void RF(ref_adamw_update)(const DNParamTable *t, REAL *params, const REAL *grads, REAL *m, REAL *v,
                          long step, REAL lr, REAL beta1, REAL beta2, REAL eps, REAL weight_decay,
                          REAL grad_scale);
