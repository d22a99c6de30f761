/*
 * model.h -- the one source of truth for deltanet.c: the model config, the parameter table and
 * the checkpoint format. The trainer (train_deltanet.cu), the plain-C inference (infer.c), the
 * CPU reference (ref/) and the tests all include this file.
 *
 * The model (docs/MODEL.md is the spec, README.md summarises it): a pre-norm residual stack of
 * layers, each `h += Mixer(RMSNorm(h)); h += SwiGLU(RMSNorm(h))`, where the mixer of each layer is
 * one of
 *   'D'  DeltaNet: q,k,v = silu(causal_conv4(x W)), L2-normalised q,k, beta = sigmoid(x W_b),
 *        delta rule S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T, o_t = K^-1/2 S_t^T q_t,
 *        per-head output RMSNorm, output projection;
 *   'N'  gated DeltaNet (fla's GatedDeltaNet): the same with its own head geometry (gdn_heads
 *        heads of key size gdn_head_dim, value size gdn_head_dim * gdn_expand_v), a decay
 *        alpha_t = exp(g_t), g_t = -exp(A_log) softplus(x W_a + dt_bias) per head,
 *        S_t = alpha_t S_{t-1} + beta_t k_t (v_t - alpha_t S_{t-1}^T k_t)^T, and an output gate:
 *        RMSNorm(o_t) * silu(x W_g) per head before the output projection;
 *   'S'  sliding-window softmax attention (RoPE, grouped KV heads, window w keys incl. itself);
 *   'G'  global causal softmax attention (RoPE, grouped KV heads);
 *   'L'  linear attention, the ablation of 'D' (MQAR, README): DeltaNet's projections, conv, L2
 *        norms, output norm and projection, with the delta rule replaced by S_t = S_{t-1} + k_t v_t^T
 *        (o_t = K^-1/2 S_t^T q_t). It has no beta: its tensors are DeltaNet's minus b_proj, under
 *        the same names (flash-linear-attention has no such model: checkpoints with 'L' layers load
 *        only here).
 * followed by a final RMSNorm and an LM head (tied to the embedding or not). With no_mlp set a
 * layer is only `h += Mixer(RMSNorm(h))` (Zoology's MQAR models): no mlp_norm/gate/up/down tensors,
 * which fla's blocks cannot express either (its fla_config says so).
 *
 * Parameter layout. Every tensor is stored exactly as the PyTorch reference stores it (a linear
 * layer's weight is [out, in], so y = x W^T), in one contiguous float buffer, in the order of the
 * parameter table that dn_build_param_table() computes from the config. The only difference
 * from the checkpoint shapes: the embedding and the untied LM head may have extra zero rows
 * (config.padded_vocab >= config.vocab_size) so that GPU matmuls see a multiple of 128; those rows
 * are never written to a checkpoint and never enter the loss.
 *
 * Checkpoint format: safetensors (8-byte little-endian header length N, N bytes of JSON, raw
 * little-endian data). The JSON maps each tensor name (the PyTorch reference's names) to
 * {"dtype": "F32"|"BF16", "shape": [...], "data_offsets": [begin, end]}, and "__metadata__" holds
 * strings: "format" = "deltanet.c", "format_version", and every config field (see
 * dn_checkpoint_write). The optimizer state for exact resume lives in a second safetensors file
 * beside the weights (see dn_state_*), so the weights file loads on its own, in PyTorch too.
 * The reader refuses whatever another reader could take differently (a key twice, text after the
 * JSON object other than space padding, a NUL inside a string, numbers out of range), checks
 * every tensor against the config before allocating, and escapes every string from the file
 * that it puts in a message.
 *
 * This header is the interface; src/model.c implements it (C11, also compiles as C++ for nvcc).
 */
#ifndef DELTANET_MODEL_H
#define DELTANET_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DN_FORMAT_NAME "deltanet.c"
#define DN_FORMAT_VERSION 1
#define DN_MAX_LAYERS 128
#define DN_MAX_NDIM 3
#define DN_NAME_LEN 64
#define DN_ERR_LEN 512

/* Format a one-line error message into err (errlen bytes; err may be NULL). Every reader and
 * writer of the project reports problems this way: return -1 and leave the reason in err. */
void dn_seterr(char *err, size_t errlen, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ----------------------------------------------------------------------------------------------
 * Files. Every reader and writer of the project goes through these: readers open only regular
 * files (a FIFO would block forever, a directory reads as garbage), strings that came from a file
 * are escaped before they are printed, paths are built with a length check, and files that matter
 * are written atomically. */

#define DN_PATH_MAX 4096  /* the longest path the tools build (Linux's PATH_MAX) */
#define DN_ESC_LEN 80     /* a buffer that holds one escaped, cut string for a message */

/* Copy s (len bytes, or up to its NUL if len == (size_t)-1) into buf (cap bytes) with control
 * characters, quotes, backslashes and bytes >= 0x7f escaped (\n, \t, \", \\, \xNN), cut with
 * "..." when it does not fit. Returns buf, always NUL-terminated. */
const char *dn_escape(char *buf, size_t cap, const char *s, size_t len);
/* Open path for reading if it is a regular file; otherwise NULL with a one-line err naming what it
 * is ("a FIFO", "a directory", ...). Never blocks. The FILE is opened "rb". */
FILE *dn_open_regular(const char *path, char *err, size_t errlen);
/* mkdir -p: create dir and its missing parents (0755). 0, or -1 with a one-line err naming the
 * part that could not be made or exists and is not a folder. */
int dn_mkdir_p(const char *dir, char *err, size_t errlen);
/* snprintf into a path buffer of cap bytes: 0, or -1 with err "path too long" if it does not fit. */
int dn_path(char *buf, size_t cap, char *err, size_t errlen, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;

/* An atomic write: dn_atomic_begin removes stale temporaries of path (<path>.tmp.<pid> left by a
 * process that no longer exists, say one killed with -9), then creates <path>.tmp.<our pid> with
 * O_CREAT|O_EXCL|O_NOFOLLOW (never through a planted link); write to a.f; dn_atomic_commit
 * flushes, fsyncs, closes, renames it over path and fsyncs the directory; dn_atomic_abort closes
 * and removes it. Both return 0 or -1 with err; on any failure nothing is left behind. */
typedef struct {
    FILE *f;
    char path[DN_PATH_MAX];
    char tmp[DN_PATH_MAX];
} DNAtomic;
int dn_atomic_begin(DNAtomic *a, const char *path, char *err, size_t errlen);
int dn_atomic_commit(DNAtomic *a, char *err, size_t errlen);
void dn_atomic_abort(DNAtomic *a);
/* Remove the stale temporaries of path (see dn_atomic_begin). Returns how many were removed. */
int dn_remove_stale_temps(const char *path);

/* ----------------------------------------------------------------------------------------------
 * Config */

typedef enum { DN_LAYER_DELTANET = 'D', DN_LAYER_SWA = 'S', DN_LAYER_GLOBAL = 'G', DN_LAYER_GATED = 'N',
               DN_LAYER_LINEAR = 'L' } DNLayerKind;
/* Does layer kind k have DeltaNet's q/k/v convs and per-head output norm ('D' and 'L')? */
static inline int dn_kind_has_conv(char k) { return k == 'D' || k == 'L'; }

typedef struct {
    int vocab_size;      /* real vocabulary (GPT-2: 50257); the loss covers only these ids */
    int padded_vocab;    /* rows allocated for embedding / LM head, >= vocab_size */
    int d_model;         /* D */
    int n_layer;         /* L */
    int n_head;          /* DeltaNet heads H; head_dim K = V = D / H */
    int head_dim;        /* K = V */
    int conv_size;       /* causal depthwise conv kernel size (4) */
    int hidden_size;     /* SwiGLU hidden size I */
    float norm_eps;      /* RMSNorm eps (1e-6), also the per-head output norm's */
    float l2_eps;        /* q, k L2-norm eps (DN_DEFAULT_L2_EPS, fla's l2norm) */
    int tie_embeddings;  /* 1: LM head = embedding^T (no lm_head.weight tensor) */
    int attn_heads;      /* softmax-attention query heads (head size D / attn_heads) */
    int attn_kv_heads;   /* grouped KV heads (divides attn_heads) */
    int window;          /* sliding window in keys (itself included) for 'S' layers */
    float rope_base;     /* RoPE theta (10000) */
    int gdn_heads;       /* gated DeltaNet ('N') heads Hg */
    int gdn_head_dim;    /* their key size Kg */
    int gdn_expand_v;    /* value size Vg = Kg * gdn_expand_v */
    int no_mlp;          /* 1: no SwiGLU sublayers (h += Mixer(RMSNorm(h)) only); hidden_size unused */
    char layers[DN_MAX_LAYERS + 1]; /* one letter per layer: D, S, G, N or L; NUL-terminated */
} DNConfig;

/* The q, k L2-norm eps: fla's l2norm constant, which its config does not carry. A checkpoint
 * stores it in our own metadata ('l2_eps'); one without that key reads back as this. */
#define DN_DEFAULT_L2_EPS 1e-6f
/* Default SwiGLU hidden size: 256 * ceil(int(D * 4 * 2/3) / 256). */
int dn_default_hidden(int d_model);
/* Round v up to a multiple of 128 (the padded vocab for GPU matmuls); -1 if no int holds that. */
int dn_pad_vocab(int vocab_size);
/* Fill a named preset: "tiny", "d12", "340M", "gdn", all with the GPT-2 vocabulary (50257, padded
 * to 50304). Returns 0, or -1 for an unknown name. Presets are pure DeltaNet but "gdn" (d12 with 12
 * gated DeltaNet layers); set layers (dn_config_set_layers) for a hybrid, another vocabulary with
 * dn_config_set_vocab (the 340M model of the DeltaNet paper uses 32000). Every preset's gated
 * DeltaNet geometry is n_head heads of key size head_dim / 2 and expand_v 2 (fla's default
 * ratio), which gives an 'N' layer the parameter count of a 'D' layer (q, k: D^2/2 each; v, the
 * gate and the output projection: D^2 each). */
int dn_config_preset(DNConfig *cfg, const char *name);
#define DN_MIN_VOCAB 2
#define DN_MAX_VOCAB (1 << 24)
/* Set vocab_size and padded_vocab (dn_pad_vocab). Returns 0, or -1 with err if vocab_size is
 * outside [DN_MIN_VOCAB, DN_MAX_VOCAB] (cfg is then unchanged). */
int dn_config_set_vocab(DNConfig *cfg, int vocab_size, char *err, size_t errlen);
/* Set the gated DeltaNet geometry by the presets' rule from n_head and head_dim: gdn_heads =
 * n_head, gdn_head_dim = max(1, head_dim / 2), gdn_expand_v = 2. */
void dn_config_default_gdn(DNConfig *cfg);
/* Set the layer kinds from a string of D/S/G/N/L letters; n_layer becomes its length. */
int dn_config_set_layers(DNConfig *cfg, const char *kinds, char *err, size_t errlen);
/* Check a config for anything impossible. Returns 0 or -1 with a one-line reason in err. */
int dn_config_validate(const DNConfig *cfg, char *err, size_t errlen);
/* Attention head size D / attn_heads. */
static inline int dn_attn_head_dim(const DNConfig *c) { return c->d_model / c->attn_heads; }
/* Gated DeltaNet widths: keys Hg Kg and values Hg Vg of an 'N' layer, value head size Vg. */
static inline int dn_gdn_value_dim(const DNConfig *c) { return c->gdn_head_dim * c->gdn_expand_v; }
static inline int dn_gdn_key_width(const DNConfig *c) { return c->gdn_heads * c->gdn_head_dim; }
static inline int dn_gdn_value_width(const DNConfig *c) { return c->gdn_heads * dn_gdn_value_dim(c); }

/* ----------------------------------------------------------------------------------------------
 * Parameter table */

typedef enum {
    DN_P_EMBED = 0,   /* model.embeddings.weight            [Vocab, D] (padded_vocab rows in memory) */
    DN_P_ATTN_NORM,   /* model.layers.l.attn_norm.weight     [D] */
    DN_P_Q,           /* attn.q_proj.weight                  [D, D] */
    DN_P_K,           /* attn.k_proj.weight                  [D, D] (attention: [Hkv*dh, D]) */
    DN_P_V,           /* attn.v_proj.weight                  [D, D] (attention: [Hkv*dh, D]) */
    DN_P_B,           /* attn.b_proj.weight                  [H, D]        DeltaNet ('D') only */
    DN_P_Q_CONV,      /* attn.q_conv1d.weight                [D, 1, 4]     'D' and 'L' only */
    DN_P_K_CONV,      /* attn.k_conv1d.weight                [D, 1, 4]     'D' and 'L' only */
    DN_P_V_CONV,      /* attn.v_conv1d.weight                [D, 1, 4]     'D' and 'L' only */
    DN_P_O_NORM,      /* attn.o_norm.weight                  [K]           'D' and 'L' only */
    DN_P_O,           /* attn.o_proj.weight                  [D, D] */
    DN_P_MLP_NORM,    /* model.layers.l.mlp_norm.weight      [D]           none with no_mlp */
    DN_P_GATE,        /* mlp.gate_proj.weight                [I, D]        none with no_mlp */
    DN_P_UP,          /* mlp.up_proj.weight                  [I, D]        none with no_mlp */
    DN_P_DOWN,        /* mlp.down_proj.weight                [D, I]        none with no_mlp */
    DN_P_NORM,        /* model.norm.weight                   [D] */
    DN_P_LM_HEAD,     /* lm_head.weight                      [Vocab, D]    untied only */
    /* gated DeltaNet ('N') only; its q, k, v, b, convs, o_norm and o use the kinds above with
     * their own shapes: q,k [Hg Kg, D], v [Hg Vg, D], b [Hg, D], q,k conv [Hg Kg, 1, 4],
     * v conv [Hg Vg, 1, 4], o_norm [Vg], o [D, Hg Vg] */
    DN_P_A,           /* attn.a_proj.weight                  [Hg, D] */
    DN_P_A_LOG,       /* attn.A_log                          [Hg]          no weight decay */
    DN_P_DT_BIAS,     /* attn.dt_bias                        [Hg]          no weight decay */
    DN_P_G,           /* attn.g_proj.weight                  [Hg Vg, D]    the output gate */
    DN_P_NKINDS
} DNParamKind;

#define DN_NO_PARAM ((size_t)-1)
/* Tensors start at multiples of this many elements in the parameter buffers (64 bytes in fp32, 32 in
 * bf16), but those fused with the tensor before them (src/model.c: dn_joins_previous). */
#define DN_PARAM_ALIGN 16

typedef struct {
    char name[DN_NAME_LEN];  /* the PyTorch reference's name */
    int kind;                /* DNParamKind */
    int layer;               /* layer index, -1 for model-level tensors */
    int ndim;
    int shape[DN_MAX_NDIM];  /* checkpoint (PyTorch) shape */
    size_t numel;            /* product of shape */
    size_t mem_numel;        /* elements in memory (numel, or padded_vocab * D for vocab tensors) */
    size_t offset;           /* element offset in the parameter buffer */
    int decay;               /* 1: AdamW weight decay applies (matrices, embedding, conv) */
    float init_std;          /* > 0: Normal(0, init_std); 0: ones (norm gains); < 0: the kind's own
                              * init (A_log, dt_bias: fla's, see dn_init_params) */
} DNParam;

/* Offsets (in elements) of each tensor of one layer, DN_NO_PARAM where the layer has none. */
typedef struct { size_t p[DN_P_NKINDS]; } DNLayerOffsets;

typedef struct {
    DNConfig cfg;
    int n_params;            /* number of tensors */
    DNParam *params;         /* [n_params] in buffer order */
    size_t total;            /* elements in the parameter buffer (with padding rows and alignment gaps) */
    size_t total_real;       /* parameters that count (checkpoint elements) */
    DNLayerOffsets *layer;   /* [n_layer] */
    size_t embed, norm, lm_head; /* model-level offsets; lm_head == embed when tied */
} DNParamTable;

/* Build the table from a validated config. Returns 0, or -1 with a reason. Free with
 * dn_free_param_table. */
int dn_build_param_table(DNParamTable *t, const DNConfig *cfg, char *err, size_t errlen);
void dn_free_param_table(DNParamTable *t);
/* Index of a tensor by name, or -1. */
int dn_find_param(const DNParamTable *t, const char *name);
/* Initialise a parameter buffer (t->total floats): Normal(0, std) / ones, padding rows zero,
 * deterministic from seed. A gated DeltaNet layer's A_log = log A, A ~ U(0, 16), and dt_bias =
 * softplus^-1(dt), dt log-uniform in [1e-3, 0.1] and at least 1e-4 (fla's init). */
void dn_init_params(const DNParamTable *t, float *params, uint64_t seed);

/* ----------------------------------------------------------------------------------------------
 * Random numbers: splitmix64-seeded xorshift64*, the state is one uint64 (saved in checkpoints). */
typedef struct { uint64_t s; } DNRng;
void dn_rng_seed(DNRng *r, uint64_t seed);
uint64_t dn_rng_u64(DNRng *r);
float dn_rng_uniform(DNRng *r);    /* [0, 1) */
float dn_rng_normal(DNRng *r);     /* N(0, 1), Box-Muller */

/* bf16 <-> f32 (round to nearest even; NaN kept NaN). */
uint16_t dn_f32_to_bf16(float f);
float dn_bf16_to_f32(uint16_t h);

/* ----------------------------------------------------------------------------------------------
 * Checkpoints (safetensors) */

typedef enum { DN_F32 = 0, DN_BF16 = 1 } DNDtype;

/* Write the model weights (t->total floats in table order) to path, atomically (temporary file,
 * fflush + fsync, rename). dtype chooses F32 or BF16 tensors. extra_meta: optional NULL-terminated
 * list of key, value string pairs added to __metadata__. Returns 0 or -1 with err. */
int dn_checkpoint_write(const char *path, const DNParamTable *t, const float *params, DNDtype dtype,
                        const char *const *extra_meta, char *err, size_t errlen);
/* Read a weights file: the config comes from __metadata__, every tensor is checked against the
 * table built from it. On success *cfg is filled, *params is a malloc'd buffer of the table's
 * `total` floats (padding rows zero) and 0 is returned; otherwise -1 and a one-line err that names
 * the file and the problem. */
int dn_checkpoint_read(const char *path, DNConfig *cfg, float **params, char *err, size_t errlen);
/* Read one __metadata__ value of a safetensors file into out (for step counters and the like).
 * Returns 0, or -1 if the file is invalid, the key is absent or the value does not fit in out. */
int dn_checkpoint_read_meta(const char *path, const char *key, char *out, size_t outlen,
                            char *err, size_t errlen);
/* The training step a weights file was saved at: its __metadata__ "step" (the trainer writes it
 * through extra_meta), parsed strictly (digits only, fits a long). Returns 0, or -1 with err if
 * the file is not a deltanet.c weights file or "step" is absent or not a non-negative integer.
 * The trainer compares it with the state file's step, so that it never resumes weights of one step
 * with the optimizer state of another. */
int dn_checkpoint_step(const char *path, long *step, char *err, size_t errlen);

/* Training state beside a checkpoint ("<path>.state" by convention): F32 tensors "adam.m" and
 * "adam.v" (t->total elements each, flat) plus string metadata (step, RNG, data position, ...).
 * Written atomically; read validates sizes against the table, that every moment is finite and
 * every second moment >= 0, and that rng_state is a non-zero decimal uint64 (xorshift's state 0
 * would stay 0 forever). The step is the one of the weights file beside it (dn_checkpoint_step). */
typedef struct {
    long step;
    uint64_t rng_state;
    long data_shard;
    long data_pos;
    long data_ranks; /* data-parallel ranks that trained it (0 read as 1; absent in older states: 1) */
    char note[128];  /* free text, e.g. the run's command line; may be empty */
} DNTrainState;
int dn_state_write(const char *path, const DNParamTable *t, const float *m, const float *v,
                   const DNTrainState *st, char *err, size_t errlen);
/* m, v [t->total]. States written before the tensors were aligned (their buffers packed, which
 * differs only for models with tensors of sizes off the alignment: gated layers) are read into the
 * aligned layout. */
int dn_state_read(const char *path, const DNParamTable *t, float *m, float *v, DNTrainState *st,
                  char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif /* DELTANET_MODEL_H */
