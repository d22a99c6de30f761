/*
 * train_deltanet.cu -- the trainer of deltanet.c (GPU, or the CPU reference): DeltaNet and gated DeltaNet ('N')
 * language models and their hybrids with sliding-window ('S') and global ('G') softmax attention layers, trained on llm.c-format
 * token shards. This file only wires things up: the model (parameters, activations, forward,
 * backward, the AdamW step, the CUDA graph) is kernels/model_gpu.cuh, the kernels are the .cuh files of kernels/,
 * the config / parameter table / checkpoints are model.h (src/model.c), the shards src/data.h, the tokenizer
 * src/tokenizer.h.
 *
 * One step: `accum` micro-batches of B x T tokens (accum = total batch / (B T)), gradients
 * averaged over them, the global gradient norm clipped to --clip, AdamW (betas 0.9, 0.95,
 * decoupled weight decay on matrices, the embedding and the conv weights; none on norm gains, A_log, dt_bias), the
 * learning rate warmed up linearly over --warmup steps then cosine-decayed to the floor --lr-min
 * at --steps:
 *   lr(s) = lr * s / warmup                                                 s <= warmup (s from 1)
 *         = lr_min + (lr - lr_min) (1 + cos(pi (s - warmup) / (steps - warmup))) / 2   after
 * Data (data.h): every row of a batch is its own window of T+1 tokens; each epoch visits all the
 * non-overlapping windows of all training shards once, in an order drawn from --seed and the epoch
 * (--no-shuffle: the shards in file order instead). Validation scores --val-windows windows spread
 * evenly over the whole val split, the same ones every time (0: all of them).
 * Loss masks (src/mask.h, e.g. the MQAR task of mqar_data.c): when the shards have mask files
 * beside them, the loss of a micro-batch and its gradient come only from the masked targets (their
 * mean), and each evaluation also prints the accuracy there (argmax == target) over the val split,
 * whose windows are then its examples.
 * MFU counts the matmul and mixer FLOPs of one token (forward x 3 for training, see
 * flops_per_token) against the H100's dense bf16 peak, 989 TFLOP/s (also in --fp32 mode).
 *
 * Resume: a checkpoint is <out>/model_<step>.safetensors (weights, F32, loads in PyTorch) plus
 * <that>.state (AdamW moments, step, data position, sampling RNG); the last one of a run is also
 * linked as <out>/model.safetensors. --resume restores all of it, so that N steps straight and
 * N/2 + --resume + N/2 (same flags) give the same losses. Both files carry the step; --resume
 * refuses a pair whose steps differ.
 *
 * Two backends behind one set of names (model_create, model_train_step, ...; see "the backends"):
 * the GPU model (kernels/model_gpu.cuh, bf16 or fp32) and the CPU reference (ref/, fp32, OpenMP),
 * which trains where there is no GPU (or with --cpu) with the same command line, log lines and
 * checkpoints. Built without nvcc (-DDN_CPU_ONLY, `make train` does this when the CUDA toolkit is
 * missing) the trainer has only the CPU backend.
 */
#include <cerrno>
#include <cstdarg>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>
#include <omp.h>
#ifndef DN_CPU_ONLY
#include <nccl.h>
#include "kernels/model_gpu.cuh"
#endif
#include "ref/reference.h"
extern "C" {
#include "src/data.h"
#include "src/dist.h"
#include "src/mask.h"
#include "src/tokenizer.h"
#include "src/sample.h"
}

#define H100_BF16_PEAK_FLOPS 989e12

// ----------------------------------------------------------------------------
// command line

typedef struct {
    const char *train_pattern, *val_pattern, *out_dir, *resume, *log_path, *model, *layers, *attn_layers;
    int B, T;                  /* 0: the backend's default (cpu_defaults / gpu_defaults) */
    long total_batch;          /* tokens per optimizer step (0: B*T) */
    int window, attn_heads, kv_heads, tied, vocab; /* -1: the preset's */
    int gdn_heads, gdn_head_dim, gdn_expand_v;     /* -1: the preset's */
    int d_model, heads, no_mlp;                     /* 0: the preset's */
    float lr, lr_min, wd, clip, beta1, beta2, adam_eps;
    int warmup, steps;
    unsigned long long seed;
    int val_every, val_batches, sample_every, sample_len;
    int no_shuffle;            /* --no-shuffle: the shards in file order (data.h's DataLoader) */
    int random_windows;        /* --random-windows: windows drawn with replacement (sl_set_random) */
    long val_windows;          /* --val-windows: spread validation windows, 0 = every window */
    float temperature;
    int ckpt_every, fp32, no_graph, profile, cpu;
    char cmdline[128];
} TrainArgs;

/* Data parallelism: this process's rank and group (src/dist.h; rank 0 of 1 without a launcher). */
static DistEnv g_env;

/* What the backend does not say on the command line: the model and the batch shape. The CPU's are
 * small enough that a step of the reference takes about a second on two cores. */
#define GPU_DEFAULT_MODEL "small"
#define GPU_DEFAULT_B 8
#define GPU_DEFAULT_T 512
#define CPU_DEFAULT_MODEL "tiny"
#define CPU_DEFAULT_B 4
#define CPU_DEFAULT_T 64

static void args_defaults(TrainArgs *a) {
    memset(a, 0, sizeof *a);
    a->train_pattern = "data/tinyshakespeare/tinyshakespeare_train*.bin";
    a->val_pattern = "data/tinyshakespeare/tinyshakespeare_val.bin";
    a->out_dir = "out";
    a->model = NULL;
    a->B = 0; a->T = 0;
    a->window = -1; a->attn_heads = -1; a->kv_heads = -1; a->tied = -1; a->vocab = -1;
    a->gdn_heads = -1; a->gdn_head_dim = -1; a->gdn_expand_v = -1;
    a->lr = 1e-3f; a->lr_min = 1e-4f; a->wd = 0.1f; a->clip = 1.0f;
    a->beta1 = 0.9f; a->beta2 = 0.95f; a->adam_eps = 1e-8f;
    a->warmup = 20; a->steps = 300;
    a->seed = 1337;
    a->val_every = 25; a->val_batches = 0; a->sample_every = 100; a->sample_len = 128;
    a->val_windows = 64;
    a->temperature = 1.0f;
    a->ckpt_every = 0;
}

static void usage(const char *prog, FILE *f) {
    TrainArgs d;
    args_defaults(&d);
    fprintf(f,
        "usage: %s [options]\n"
        "Train a DeltaNet (or hybrid) language model on token shards. Defaults in [].\n"
        "data\n"
        "  -i, --train PATTERN     training shards (glob) [%s]\n"
        "  -j, --val PATTERN       validation shards (glob) [%s]\n"
        "  -b, --batch B           micro-batch rows [GPU %d, CPU %d]\n"
        "  -t, --seq T             sequence length [GPU %d, CPU %d]\n"
        "  -d, --total-batch N     tokens per optimizer step, a multiple of B*T (gradient accumulation) [B*T]\n"
        "      --no-shuffle        read the training shards in file order, B*T+1 consecutive tokens a batch,\n"
        "                          instead of the default: every row its own window of T+1 tokens, each\n"
        "                          epoch all the windows of all shards in a random order drawn from --seed\n"
        "      --random-windows    every row a window starting anywhere in a shard, drawn at random with\n"
        "                          replacement from --seed (the PyTorch reference's sampling)\n"
        "model (ignored with --resume: the checkpoint has the config)\n"
        "  -m, --model NAME        small | d12 | 340M | gdn | tiny [GPU %s, CPU %s]\n"
        "                          small: d12's width (D=768, H=6, K=128, GPT-2 vocab, tied), 6 DeltaNet layers;\n"
        "                          gdn: d12 with 12 gated DeltaNet layers (6 heads, K=64, V=128), d12's size;\n"
        "                          tiny (D=64, 4 layers, K=32) is for the CPU: the GPU delta rule needs K = 64 or 128\n"
        "      --vocab N           vocabulary size (every preset: GPT-2's 50257; 32000 as in the DeltaNet paper)\n"
        "      --d-model D         width (MLP size follows: 256 ceil(8D/3 / 256)) [preset]\n"
        "      --heads H           DeltaNet heads, head size D/H (the GPU kernels: 64 or 128); attention heads\n"
        "                          too unless --attn-heads [preset]\n"
        "      --no-mlp            no MLP sublayers: each layer is h += Mixer(RMSNorm(h)) (Zoology's MQAR models)\n"
        "      --layers STR        layer kinds, one letter per layer: D DeltaNet, N gated DeltaNet, S sliding\n"
        "                          window, G global, L linear attention (DeltaNet without the delta rule)\n"
        "      --attn-layers LIST  comma-separated 0-based layers made global attention (G), e.g. 5,11\n"
        "      --window W          sliding window in keys, itself included [preset: 512]\n"
        "      --attn-heads N      softmax-attention heads [preset: the DeltaNet heads]\n"
        "      --kv-heads N        grouped KV heads of the attention layers [= attention heads]\n"
        "      --gdn-heads N, --gdn-head-dim K, --gdn-expand-v E   gated DeltaNet heads, key size, value size\n"
        "                          K*E [preset: the DeltaNet heads, K = head_dim/2, E = 2; GPU: K 64|128, E 1|2]\n"
        "      --tied, --untied    LM head tied to the embedding or not [preset: tied]\n"
        "optimization\n"
        "  -l, --lr LR             peak learning rate [%g]\n"
        "      --warmup N          linear warmup steps [%d]\n"
        "      --lr-min LR         floor of the cosine decay [%g]\n"
        "      --wd WD             AdamW weight decay (matrices, embedding, conv) [%g]\n"
        "      --clip C            gradient-norm clip, 0 = off [%g]\n"
        "      --beta1 B1, --beta2 B2, --adam-eps E   AdamW [%g, %g, %g]\n"
        "  -x, --steps N           optimizer steps [%d]\n"
        "  -s, --seed S            initialisation and sampling seed [%llu]\n"
        "      --fp32              fp32 activations and matmuls (tests, exact resume) instead of bf16\n"
        "      --cpu               train on the CPU with the reference model (fp32, OpenMP threads:\n"
        "                          OMP_NUM_THREADS), as happens anyway when there is no CUDA device\n"
        "      --no-graph          launch every kernel each step instead of replaying a CUDA graph\n"
        "      --profile           time the phases of each step with CUDA events (no graph) and print a table\n"
        "evaluation and output\n"
        "  -v, --val-every N       validation loss every N steps, 0 = never [%d]\n"
        "      --val-windows N     validation windows of T+1 tokens spread evenly over all the val shards,\n"
        "                          the same each evaluation; 0 = every non-overlapping window [%ld]\n"
        "      --val-batches N     instead: the first N batches of B windows at the head of the split\n"
        "                          (what `./infer --eval SHARD -b T --eval-max N*B*T` scores), 0 = off [%d]\n"
        "      --sample-every N    print a sample every N steps, 0 = never [%d]\n"
        "      --sample-len N      tokens per sample [%d]\n"
        "      --temperature X     sampling temperature, 0 = greedy [%g]\n"
        "  -c, --ckpt-every N      checkpoint every N steps (and always at the end), 0 = at the end only [%d]\n"
        "  -o, --out DIR           checkpoint directory, created with its parents [%s]\n"
        "  -r, --resume PATH       continue from PATH (a model_<step>.safetensors with its .state beside it)\n"
        "      --log FILE          per-step log, JSONL (or CSV if FILE ends in .csv)\n"
        "  -h, --help              this text\n",
        prog, d.train_pattern, d.val_pattern, GPU_DEFAULT_B, CPU_DEFAULT_B, GPU_DEFAULT_T, CPU_DEFAULT_T,
        GPU_DEFAULT_MODEL, CPU_DEFAULT_MODEL, d.lr, d.warmup, d.lr_min, d.wd, d.clip, d.beta1,
        d.beta2, d.adam_eps, d.steps, d.seed, d.val_every, d.val_windows, d.val_batches, d.sample_every, d.sample_len,
        d.temperature, d.ckpt_every, d.out_dir);
}

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...) {
    va_list ap;
    if (g_env.world > 1) fprintf(stderr, "rank %d: ", g_env.rank);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(EXIT_FAILURE);
}

static long parse_long(const char *opt, const char *s, long lo, long hi) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) die("--%s: '%s' is not an integer in [%ld, %ld]", opt, s, lo, hi);
    return v;
}
static float parse_float(const char *opt, const char *s, float lo, float hi) {
    char *end = NULL;
    double v = strtod(s, &end);
    if (end == s || *end || !std::isfinite(v) || v < lo || v > hi) die("--%s: '%s' is not a number in [%g, %g]", opt, s, lo, hi);
    return (float)v;
}

static void parse_args(TrainArgs *a, int argc, char **argv) {
    enum { O_LAYERS = 1000, O_ATTN_LAYERS, O_WINDOW, O_ATTN_HEADS, O_KV_HEADS, O_TIED, O_UNTIED, O_WARMUP, O_LR_MIN,
           O_WD, O_CLIP, O_BETA1, O_BETA2, O_ADAM_EPS, O_FP32, O_NO_GRAPH, O_VAL_BATCHES, O_SAMPLE_EVERY,
           O_SAMPLE_LEN, O_TEMPERATURE, O_LOG, O_PROFILE, O_CPU, O_VOCAB, O_NO_SHUFFLE, O_VAL_WINDOWS,
           O_RANDOM_WINDOWS, O_GDN_HEADS, O_GDN_HEAD_DIM, O_GDN_EXPAND_V,
           O_D_MODEL, O_HEADS, O_NO_MLP };
    static const struct option opts[] = {
        {"train", required_argument, 0, 'i'}, {"val", required_argument, 0, 'j'},
        {"batch", required_argument, 0, 'b'}, {"seq", required_argument, 0, 't'},
        {"total-batch", required_argument, 0, 'd'}, {"model", required_argument, 0, 'm'},
        {"layers", required_argument, 0, O_LAYERS}, {"attn-layers", required_argument, 0, O_ATTN_LAYERS},
        {"window", required_argument, 0, O_WINDOW}, {"attn-heads", required_argument, 0, O_ATTN_HEADS},
        {"kv-heads", required_argument, 0, O_KV_HEADS}, {"tied", no_argument, 0, O_TIED},
        {"untied", no_argument, 0, O_UNTIED}, {"lr", required_argument, 0, 'l'},
        {"warmup", required_argument, 0, O_WARMUP}, {"lr-min", required_argument, 0, O_LR_MIN},
        {"wd", required_argument, 0, O_WD}, {"clip", required_argument, 0, O_CLIP},
        {"beta1", required_argument, 0, O_BETA1}, {"beta2", required_argument, 0, O_BETA2},
        {"adam-eps", required_argument, 0, O_ADAM_EPS}, {"steps", required_argument, 0, 'x'},
        {"seed", required_argument, 0, 's'}, {"fp32", no_argument, 0, O_FP32},
        {"no-graph", no_argument, 0, O_NO_GRAPH}, {"profile", no_argument, 0, O_PROFILE}, {"val-every", required_argument, 0, 'v'},
        {"val-batches", required_argument, 0, O_VAL_BATCHES}, {"sample-every", required_argument, 0, O_SAMPLE_EVERY},
        {"sample-len", required_argument, 0, O_SAMPLE_LEN}, {"temperature", required_argument, 0, O_TEMPERATURE},
        {"ckpt-every", required_argument, 0, 'c'}, {"out", required_argument, 0, 'o'},
        {"resume", required_argument, 0, 'r'}, {"log", required_argument, 0, O_LOG},
        {"cpu", no_argument, 0, O_CPU}, {"vocab", required_argument, 0, O_VOCAB},
        {"no-shuffle", no_argument, 0, O_NO_SHUFFLE}, {"val-windows", required_argument, 0, O_VAL_WINDOWS},
        {"random-windows", no_argument, 0, O_RANDOM_WINDOWS},
        {"gdn-heads", required_argument, 0, O_GDN_HEADS}, {"gdn-head-dim", required_argument, 0, O_GDN_HEAD_DIM},
        {"gdn-expand-v", required_argument, 0, O_GDN_EXPAND_V},
        {"d-model", required_argument, 0, O_D_MODEL}, {"heads", required_argument, 0, O_HEADS},
        {"no-mlp", no_argument, 0, O_NO_MLP},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    args_defaults(a);
    int c, idx = 0;
    while ((c = getopt_long(argc, argv, "i:j:b:t:d:m:l:x:s:v:c:o:r:h", opts, &idx)) != -1) {
        const char *name = NULL;
        for (int k = 0; opts[k].name; k++) if (opts[k].val == c) name = opts[k].name;
        switch (c) {
        case 'i': a->train_pattern = optarg; break;
        case 'j': a->val_pattern = optarg; break;
        case 'b': a->B = (int)parse_long(name, optarg, 1, 1 << 16); break;
        case 't': a->T = (int)parse_long(name, optarg, 1, 1 << 20); break;
        case 'd': a->total_batch = parse_long(name, optarg, 1, 1L << 40); break;
        case 'm': a->model = optarg; break;
        case O_LAYERS: a->layers = optarg; break;
        case O_ATTN_LAYERS: a->attn_layers = optarg; break;
        case O_WINDOW: a->window = (int)parse_long(name, optarg, 1, 1 << 30); break;
        case O_ATTN_HEADS: a->attn_heads = (int)parse_long(name, optarg, 1, 1 << 16); break;
        case O_KV_HEADS: a->kv_heads = (int)parse_long(name, optarg, 1, 1 << 16); break;
        case O_GDN_HEADS: a->gdn_heads = (int)parse_long(name, optarg, 1, 1 << 16); break;
        case O_GDN_HEAD_DIM: a->gdn_head_dim = (int)parse_long(name, optarg, 1, 1 << 16); break;
        case O_GDN_EXPAND_V: a->gdn_expand_v = (int)parse_long(name, optarg, 1, 64); break;
        case O_TIED: a->tied = 1; break;
        case O_UNTIED: a->tied = 0; break;
        case 'l': a->lr = parse_float(name, optarg, 0.0f, 10.0f); break;
        case O_WARMUP: a->warmup = (int)parse_long(name, optarg, 0, 1 << 30); break;
        case O_LR_MIN: a->lr_min = parse_float(name, optarg, 0.0f, 10.0f); break;
        case O_WD: a->wd = parse_float(name, optarg, 0.0f, 10.0f); break;
        case O_CLIP: a->clip = parse_float(name, optarg, 0.0f, 1e9f); break;
        case O_BETA1: a->beta1 = parse_float(name, optarg, 0.0f, 0.999999f); break;
        case O_BETA2: a->beta2 = parse_float(name, optarg, 0.0f, 0.999999f); break;
        case O_ADAM_EPS: a->adam_eps = parse_float(name, optarg, 0.0f, 1.0f); break;
        case 'x': a->steps = (int)parse_long(name, optarg, 1, 1 << 30); break;
        case 's': a->seed = (unsigned long long)parse_long(name, optarg, 0, 0x7fffffffffffffffL); break;
        case O_FP32: a->fp32 = 1; break;
        case O_NO_GRAPH: a->no_graph = 1; break;
        case O_PROFILE: a->profile = 1; break;
        case O_CPU: a->cpu = 1; break;
        case O_VOCAB: a->vocab = (int)parse_long(name, optarg, DN_MIN_VOCAB, DN_MAX_VOCAB); break;
        case 'v': a->val_every = (int)parse_long(name, optarg, 0, 1 << 30); break;
        case O_VAL_BATCHES: a->val_batches = (int)parse_long(name, optarg, 0, 1 << 30); break;
        case O_VAL_WINDOWS: a->val_windows = parse_long(name, optarg, 0, 1L << 40); break;
        case O_NO_SHUFFLE: a->no_shuffle = 1; break;
        case O_RANDOM_WINDOWS: a->random_windows = 1; break;
        case O_D_MODEL: a->d_model = (int)parse_long(name, optarg, 1, 65536); break;
        case O_HEADS: a->heads = (int)parse_long(name, optarg, 1, 65536); break;
        case O_NO_MLP: a->no_mlp = 1; break;
        case O_SAMPLE_EVERY: a->sample_every = (int)parse_long(name, optarg, 0, 1 << 30); break;
        case O_SAMPLE_LEN: a->sample_len = (int)parse_long(name, optarg, 1, 1 << 20); break;
        case O_TEMPERATURE: a->temperature = parse_float(name, optarg, 0.0f, 100.0f); break;
        case 'c': a->ckpt_every = (int)parse_long(name, optarg, 0, 1 << 30); break;
        case 'o': a->out_dir = optarg; break;
        case 'r': a->resume = optarg; break;
        case O_LOG: a->log_path = optarg; break;
        case 'h': usage(argv[0], stdout); exit(0);
        default: usage(argv[0], stderr); exit(EXIT_FAILURE);
        }
    }
    if (optind < argc) die("unexpected argument '%s' (see -h)", argv[optind]);
    if (a->lr_min > a->lr) die("--lr-min %g is above --lr %g", a->lr_min, a->lr);
    if (a->no_shuffle && a->random_windows) die("--no-shuffle and --random-windows exclude each other");
    /* the command line, for the training-state note */
    for (int i = 0; i < argc; i++) {
        size_t n = strlen(a->cmdline);
        snprintf(a->cmdline + n, sizeof a->cmdline - n, "%s%s", i ? " " : "", argv[i]);
    }
}

/* The backend's defaults for what the command line left open, then the checks that need them. */
static void resolve_defaults(TrainArgs *a, int cpu) {
    if (!a->model) a->model = cpu ? CPU_DEFAULT_MODEL : GPU_DEFAULT_MODEL;
    if (!a->B) a->B = cpu ? CPU_DEFAULT_B : GPU_DEFAULT_B;
    if (!a->T) a->T = cpu ? CPU_DEFAULT_T : GPU_DEFAULT_T;
    const long per = (long)a->B * a->T * g_env.world; /* one micro-batch on every rank */
    if (a->total_batch == 0) a->total_batch = per;
    if (a->total_batch % per) {
        if (g_env.world > 1) die("--total-batch %ld is not a multiple of B*T*ranks = %d*%d*%d", a->total_batch, a->B, a->T, g_env.world);
        die("--total-batch %ld is not a multiple of B*T = %ld", a->total_batch, per);
    }
}

/* The model config from the preset and the flags. */
static DNConfig build_config(const TrainArgs *a) {
    DNConfig c;
    char err[DN_ERR_LEN];
    const int small = !strcmp(a->model, "small");
    if (dn_config_preset(&c, small ? "d12" : a->model))
        die("--model '%s': unknown preset (small, tiny, d12, 340M, gdn)", a->model);
    if (small && dn_config_set_layers(&c, "DDDDDD", err, sizeof err)) die("%s", err);
    if (a->layers && dn_config_set_layers(&c, a->layers, err, sizeof err)) die("--layers: %s", err);
    if (a->attn_layers) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s", a->attn_layers);
        for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
            long l = parse_long("attn-layers", tok, 0, c.n_layer - 1);
            c.layers[l] = 'G';
        }
    }
    if (a->d_model > 0) { c.d_model = a->d_model; c.hidden_size = dn_default_hidden(a->d_model); }
    if (a->heads > 0) { c.n_head = a->heads; c.attn_heads = c.attn_kv_heads = a->heads; }
    if (a->d_model > 0 || a->heads > 0) {
        if (c.d_model % c.n_head) die("--d-model %d is not a multiple of the %d heads (--heads)", c.d_model, c.n_head);
        c.head_dim = c.d_model / c.n_head;
        if (a->heads <= 0 && c.d_model % c.attn_heads) c.attn_heads = c.attn_kv_heads = c.n_head;
        dn_config_default_gdn(&c); /* the gated DeltaNet heads follow the new head geometry */
    }
    if (a->no_mlp) c.no_mlp = 1;
    if (a->window > 0) c.window = a->window;
    if (a->attn_heads > 0) { c.attn_heads = a->attn_heads; c.attn_kv_heads = a->attn_heads; }
    if (a->kv_heads > 0) c.attn_kv_heads = a->kv_heads;
    if (a->gdn_heads > 0) c.gdn_heads = a->gdn_heads;
    if (a->gdn_head_dim > 0) c.gdn_head_dim = a->gdn_head_dim;
    if (a->gdn_expand_v > 0) c.gdn_expand_v = a->gdn_expand_v;
    if (a->tied >= 0) c.tie_embeddings = a->tied;
    if (a->vocab > 0 && dn_config_set_vocab(&c, a->vocab, err, sizeof err)) die("--vocab: %s", err);
    if (dn_config_validate(&c, err, sizeof err)) die("impossible model config: %s", err);
    return c;
}

// ----------------------------------------------------------------------------
// FLOPs and the learning rate

/* Training FLOPs of one token: 3 x the forward's (the backward is twice the forward), counting
 * multiply-adds as 2: every matmul, the delta rule's chunkwise products (chunk C = 64: per token and
 * head, K K^T, Q K^T, the WY solve and products ~ C (4K + 2V) + K^2, and 3 K V for the state
 * reads/writes), and attention's q k^T and p v over the keys actually visible. */
static double flops_per_token(const DNConfig *c, int T) {
    const double D = c->d_model, I = c->hidden_size, Vp = c->padded_vocab, K = c->head_dim;
    double f = 2.0 * D * Vp; /* LM head */
    for (int l = 0; l < c->n_layer; l++) {
        if (!c->no_mlp) f += 2.0 * 3.0 * D * I; /* MLP */
        if (c->layers[l] == 'L') { /* projections; per head the quadratic form of linattn.cuh: T/2 keys x (K + V) */
            f += 2.0 * D * 3.0 * D + 2.0 * D * D + c->n_head * 2.0 * (T / 2.0) * 2.0 * K;
        } else if (c->layers[l] == 'D') {
            /* projections; per head the chunk's K K^T, W, U, Q K^T, tril(Q K^T) U' (C^2 (6K + 4V)),
             * W S, Q S, K^T U' (6 C K V) and the triangular solve (2/3 C^3), per token */
            const double C = T < 64 ? T : 64;
            f += 2.0 * D * (3.0 * D + c->n_head) + 2.0 * D * D;
            f += c->n_head * (C * (6.0 * K + 4.0 * K) + 6.0 * K * K + 2.0 / 3.0 * C * C);
        } else if (c->layers[l] == 'N') {
            /* the same with the gated geometry (q, k, v, a, b, gate, output projections), plus the
             * decay's elementwise work, which is not counted */
            const double C = T < 64 ? T : 64, Kg = c->gdn_head_dim, Vg = dn_gdn_value_dim(c);
            const double HK = dn_gdn_key_width(c), HV = dn_gdn_value_width(c);
            f += 2.0 * D * (2.0 * HK + 2.0 * HV + 2.0 * c->gdn_heads) + 2.0 * HV * D;
            f += c->gdn_heads * (C * (6.0 * Kg + 4.0 * Vg) + 6.0 * Kg * Vg + 2.0 / 3.0 * C * C);
        } else {
            const double dh = D / c->attn_heads, kvd = c->attn_kv_heads * dh;
            double keys = 0; /* mean visible keys per query */
            const int w = c->layers[l] == 'S' ? c->window : 0;
            for (int t = 0; t < T; t++) keys += (w > 0 && t + 1 > w) ? w : t + 1;
            keys /= T;
            f += 2.0 * D * (D + 2.0 * kvd) + 2.0 * D * D + c->attn_heads * 2.0 * 2.0 * dh * keys;
        }
    }
    return 3.0 * f;
}

static float lr_at(const TrainArgs *a, long step) {
    if (a->warmup > 0 && step <= a->warmup) return a->lr * (float)step / (float)a->warmup;
    if (a->steps <= a->warmup) return a->lr;
    double p = (double)(step - a->warmup) / (double)(a->steps - a->warmup);
    p = p > 1.0 ? 1.0 : p;
    return (float)(a->lr_min + (a->lr - a->lr_min) * 0.5 * (1.0 + cos(M_PI * p)));
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

// ----------------------------------------------------------------------------
// the backends: one set of names over the GPU model and the CPU reference, so that the trainer
// below is written once. Each backend holds the parameters, their gradients and the AdamW moments
// (t.total floats each, laid out by the parameter table) and h_tokens, the micro-batches of the
// next step: [accum][inputs | targets][B*T].

typedef struct {
    float lr, beta1, beta2, eps, weight_decay, grad_clip;
} StepOptim;

/* The CPU backend: the reference model (ref/model.c, fp32, OpenMP), its activations sized for the
 * training batch, and a second one for other shapes (a smaller validation batch, a sample's
 * prefix: the model is causal, so a sample runs over the prefix alone). */
struct CPUModel {
    DNParamTable t;
    DNConfig cfg;
    int B, T, accum;
    RefModel *rm, *rm2;
    int rm2_B, rm2_T;
    float *params, *grads, *adam_m, *adam_v;
    int *h_tokens;
    size_t act_bytes;   /* a rough count, for the summary line */
};

#define CPU_CHUNK 64 /* the delta rule's chunk: the GPU's */

static void model_create(CPUModel *m, const DNConfig *cfg, int B, int T, int accum) {
    char err[DN_ERR_LEN];
    memset(m, 0, sizeof *m);
    m->cfg = *cfg; m->B = B; m->T = T; m->accum = accum;
    if (dn_build_param_table(&m->t, cfg, err, sizeof err)) die("%s", err);
    const size_t P = m->t.total, N = (size_t)B * T;
    m->params = (float *)calloc(P, sizeof(float));
    m->grads = (float *)calloc(P, sizeof(float));
    m->adam_m = (float *)calloc(P, sizeof(float));
    m->adam_v = (float *)calloc(P, sizeof(float));
    m->h_tokens = (int *)calloc((size_t)accum * 2 * N, sizeof(int));
    m->rm = ref_model_create(&m->t, B, T, CPU_CHUNK);
    if (!m->params || !m->grads || !m->adam_m || !m->adam_v || !m->h_tokens || !m->rm)
        die("out of host memory for the model at B=%d T=%d (%zu parameters)\n"
            "  HINT: lower the micro-batch -b or the sequence length -t", B, T, P);
    /* what ref/model.c keeps per row: ~20 D-wide and 3 MLP-wide vectors a layer, the logits */
    m->act_bytes = N * sizeof(float) * ((size_t)cfg->n_layer * (20 * (size_t)cfg->d_model + 3 * (size_t)cfg->hidden_size)
                                        + (size_t)cfg->vocab_size);
}

static void model_free(CPUModel *m) {
    ref_model_free(m->rm);
    if (m->rm2) ref_model_free(m->rm2);
    free(m->params); free(m->grads); free(m->adam_m); free(m->adam_v); free(m->h_tokens);
    dn_free_param_table(&m->t);
    memset(m, 0, sizeof *m);
}

/* The reference model for a B x T forward. */
static RefModel *cpu_shape(CPUModel *m, int B, int T) {
    if (B == m->B && T == m->T) return m->rm;
    if (!m->rm2 || m->rm2_B != B || m->rm2_T != T) {
        if (m->rm2) ref_model_free(m->rm2);
        m->rm2 = ref_model_create(&m->t, B, T, CPU_CHUNK);
        if (!m->rm2) die("out of host memory for a %d x %d forward", B, T);
        m->rm2_B = B; m->rm2_T = T;
    }
    return m->rm2;
}

static void model_set_params(CPUModel *m, const float *h) { memcpy(m->params, h, m->t.total * sizeof(float)); }
static void model_get_params(CPUModel *m, float *h) { memcpy(h, m->params, m->t.total * sizeof(float)); }
static void model_set_adam(CPUModel *m, const float *hm, const float *hv) {
    memcpy(m->adam_m, hm, m->t.total * sizeof(float));
    memcpy(m->adam_v, hv, m->t.total * sizeof(float));
}
static void model_get_adam(CPUModel *m, float *hm, float *hv) {
    memcpy(hm, m->adam_m, m->t.total * sizeof(float));
    memcpy(hv, m->adam_v, m->t.total * sizeof(float));
}
static void model_poison(CPUModel *m) { memset(m->params, 0xff, m->t.total * sizeof(float)); }

/* One optimizer step, as gpu_train_step: the mean loss over the micro-batches, the gradients
 * averaged over them, the norm before clipping, AdamW with the clip folded into its scale.
 * mask [accum][B*T] (NULL: none): each micro-batch's loss is the mean over its masked targets. */
static float model_train_step(CPUModel *m, const StepOptim *o, long step, float *norm, const uint8_t *mask) {
    const size_t N = (size_t)m->B * m->T, P = m->t.total;
    memset(m->grads, 0, P * sizeof(float));
    double loss = 0;
    for (int i = 0; i < m->accum; i++) {
        const int *inp = m->h_tokens + 2 * i * N, *tgt = inp + N;
        loss += ref_model_forward_masked(m->rm, m->params, inp, tgt, mask ? mask + i * N : NULL);
        ref_model_backward(m->rm, m->params, m->grads);
    }
    if (m->accum > 1)
        for (size_t j = 0; j < P; j++) m->grads[j] /= (float)m->accum;
    const float n = ref_grad_norm(m->grads, P);
    const float scale = o->grad_clip > 0 && n > o->grad_clip ? o->grad_clip / n : 1.0f;
    ref_adamw_update(&m->t, m->params, m->grads, m->adam_m, m->adam_v, step, o->lr, o->beta1, o->beta2, o->eps,
                     o->weight_decay, scale);
    *norm = n;
    return (float)(loss / m->accum);
}

static float model_eval_loss(CPUModel *m, const int *inputs, const int *targets, int B) {
    return ref_model_forward(cpu_shape(m, B, m->T), m->params, inputs, targets);
}
static void model_enable_mask(CPUModel *) {}
/* The mean loss over the masked targets of B rows, and in *hits how many of them the argmax
 * (the first largest logit) gets right. */
static float model_eval_masked(CPUModel *m, const int *inputs, const int *targets, const uint8_t *mask, int B, long *hits) {
    RefModel *r = cpu_shape(m, B, m->T);
    const float loss = ref_model_forward_masked(r, m->params, inputs, targets, mask);
    const float *lg = ref_model_logits(r);
    const int V = m->cfg.vocab_size;
    *hits = 0;
    for (size_t n = 0; n < (size_t)B * m->T; n++) {
        if (!mask[n]) continue;
        const float *z = lg + n * V;
        int best = 0;
        for (int j = 1; j < V; j++) if (z[j] > z[best]) best = j;
        *hits += best == targets[n];
    }
    return loss;
}

/* Logits (vocab_size floats) after the last of len tokens (len <= T). */
static void model_next_logits(CPUModel *m, const int *seq, int len, float *out) {
    RefModel *r = cpu_shape(m, 1, len);
    ref_model_forward(r, m->params, seq, NULL);
    memcpy(out, ref_model_logits(r) + (size_t)(len - 1) * m->cfg.vocab_size, (size_t)m->cfg.vocab_size * sizeof(float));
}

static void model_describe(const CPUModel *, const TrainArgs *a) {
    printf("device: CPU, %d OpenMP threads | fp32 (the reference model)%s\n", omp_get_max_threads(),
           a->fp32 ? "" : "; --fp32 is implied");
}
static void model_memory_line(const CPUModel *m, const TrainArgs *) {
    printf("host memory: activations ~%.2f GiB, parameters+grads+AdamW %.2f GiB\n", m->act_bytes / 1073741824.0,
           m->t.total * 16.0 / 1073741824.0);
}
static void model_done_line(const CPUModel *, long steps) { printf("done: %ld steps\n", steps); }
static int model_profile_begin(CPUModel *, const TrainArgs *a) {
    if (a->profile) fprintf(stderr, "note: --profile times the GPU's phases; the CPU backend ignores it\n");
    return 0;
}
static void model_profile_warmed(CPUModel *) {}
static void model_profile_end(CPUModel *) {}
static double model_peak_flops(const CPUModel *) { return 0; } /* no MFU on the CPU */

#ifndef DN_CPU_ONLY
/* The GPU backend: kernels/model_gpu.cuh, in bf16 or fp32. */
template <typename floatX>
static void model_create(GPUModel<floatX> *m, const DNConfig *cfg, int B, int T, int accum) {
    char err[DN_ERR_LEN];
    if (gpu_model_supported(cfg, err, sizeof err)) die("this model cannot run on the GPU: %s (--cpu runs it on the CPU)", err);
    cudaStream_t st;
    cudaCheck(cudaStreamCreate(&st));
    gpu_model_create(m, cfg, B, T, accum, st);
}
template <typename floatX>
static void model_free(GPUModel<floatX> *m) {
    cudaStream_t st = m->stream;
    if (m->prof) {
        for (int i = 0; i < GPU_PROF_EVENTS; i++) cudaCheck(cudaEventDestroy(m->prof->ev[i]));
        delete m->prof;
    }
    gpu_model_free(m);
    cudaCheck(cudaStreamDestroy(st));
}
template <typename floatX> static void model_set_params(GPUModel<floatX> *m, const float *h) { gpu_model_set_params(m, h); }
template <typename floatX> static void model_get_params(GPUModel<floatX> *m, float *h) { gpu_model_get_params(m, h); }
template <typename floatX> static void model_set_adam(GPUModel<floatX> *m, const float *hm, const float *hv) { gpu_model_set_adam(m, hm, hv); }
template <typename floatX> static void model_get_adam(GPUModel<floatX> *m, float *hm, float *hv) { gpu_model_get_adam(m, hm, hv); }
template <typename floatX>
static void model_poison(GPUModel<floatX> *m) {
    cudaCheck(cudaMemset(m->params, 0xff, m->t.total * sizeof(float)));
    if ((void *)m->wx != (void *)m->params) cudaCheck(cudaMemset(m->wx, 0xff, m->t.total * sizeof(floatX)));
}
template <typename floatX>
static float model_train_step(GPUModel<floatX> *m, const StepOptim *o, long step, float *norm, const uint8_t *mask) {
    GPUOptim g = {o->lr, o->beta1, o->beta2, o->eps, o->weight_decay, o->grad_clip};
    const size_t N = (size_t)m->B * m->T;
    if (mask)
        for (int i = 0; i < m->accum; i++) loss_mask_weights(m->h_wts + i * N, mask + i * N, N);
    return gpu_train_step(m, &g, step, norm);
}
template <typename floatX>
static float model_eval_loss(GPUModel<floatX> *m, const int *inputs, const int *targets, int B) {
    return gpu_eval_loss(m, inputs, targets, B);
}
template <typename floatX> static void model_enable_mask(GPUModel<floatX> *m) { gpu_model_enable_loss_mask(m); }
template <typename floatX>
static float model_eval_masked(GPUModel<floatX> *m, const int *inputs, const int *targets, const uint8_t *mask, int B, long *hits) {
    return gpu_eval_masked(m, inputs, targets, mask, B, hits);
}
/* The GPU forward runs over T tokens: the prefix padded with end-of-text (causal: the padding
 * after it changes nothing before it). */
template <typename floatX>
static void model_next_logits(GPUModel<floatX> *m, const int *seq, int len, float *out) {
    int *win = (int *)malloc((size_t)m->T * sizeof(int));
    if (!win) die("out of host memory");
    for (int t = 0; t < m->T; t++) win[t] = t < len ? seq[t] : seq[len - 1];
    gpu_forward_logits(m, win, 1, m->T, (float *)NULL);
    gpu_logits_rows(m, len - 1, 1, out);
    free(win);
}
template <typename floatX>
static void model_describe(const GPUModel<floatX> *, const TrainArgs *a) {
    cudaDeviceProp prop;
    int dev = 0;
    cudaCheck(cudaGetDevice(&dev));
    cudaCheck(cudaGetDeviceProperties(&prop, dev));
    printf("device: %s | %s mode%s\n", prop.name, a->fp32 ? "fp32" : "bf16", a->no_graph ? " (no CUDA graph)" : "");
}
template <typename floatX>
static void model_memory_line(const GPUModel<floatX> *m, const TrainArgs *a) {
    size_t fr = 0, tot = 0;
    cudaCheck(cudaMemGetInfo(&fr, &tot));
    printf("GPU memory: activations %.2f GiB, parameters+grads+AdamW %.2f GiB, in use on the device %.2f of %.2f GiB\n",
           m->act_bytes / 1073741824.0, m->t.total * (16.0 + (a->fp32 ? 0 : 2)) / 1073741824.0,
           (tot - fr) / 1073741824.0, tot / 1073741824.0);
}
template <typename floatX>
static void model_done_line(const GPUModel<floatX> *, long steps) {
    size_t fr = 0, tot = 0;
    cudaCheck(cudaMemGetInfo(&fr, &tot));
    printf("done: %ld steps | GPU memory in use at the end %.2f GiB (all buffers are allocated up front: the peak)\n",
           steps, (tot - fr) / 1073741824.0);
}
template <typename floatX>
static int model_profile_begin(GPUModel<floatX> *m, const TrainArgs *a) {
    m->use_graph = !a->no_graph;
    if (!a->profile) return 0;
    GPUProf *p = new GPUProf();
    for (int i = 0; i < GPU_PROF_EVENTS; i++) cudaCheck(cudaEventCreate(&p->ev[i]));
    p->on = 1;
    m->prof = p;
    return 1;
}
template <typename floatX> static void model_profile_warmed(GPUModel<floatX> *m) { if (m->prof) prof_reset(m->prof); }

/* The --profile table: milliseconds per step of each phase (steps after the first). */
template <typename floatX>
static void model_profile_end(GPUModel<floatX> *m) {
    const GPUProf *p = m->prof;
    if (!p || !p->on || p->steps == 0) return;
    double total = 0;
    for (int i = 0; i < p->nlab; i++) total += p->ms[i];
    int order[GPU_PROF_LABELS];
    for (int i = 0; i < p->nlab; i++) order[i] = i;
    for (int i = 0; i < p->nlab; i++)
        for (int j = i + 1; j < p->nlab; j++)
            if (p->ms[order[j]] > p->ms[order[i]]) { int x = order[i]; order[i] = order[j]; order[j] = x; }
    printf("profile over %ld steps (ms per step, eager launches):\n", p->steps);
    for (int i = 0; i < p->nlab; i++)
        printf("  %-22s %8.2f ms  %5.1f%%\n", p->label[order[i]], p->ms[order[i]] / p->steps, 100.0 * p->ms[order[i]] / total);
    printf("  %-22s %8.2f ms\n", "total", total / p->steps);
}
template <typename floatX> static double model_peak_flops(const GPUModel<floatX> *) { return H100_BF16_PEAK_FLOPS; }
#endif

// ----------------------------------------------------------------------------
// the output folder and paths

/* mkdir -p dir, then prove it writable with a probe file, before any model or GPU work: a run
 * must not train for an hour and then fail to save. */
static void prepare_out_dir(const char *dir) {
    char err[DN_ERR_LEN];
    if (dn_mkdir_p(dir, err, sizeof err)) die("--out %s: %s", dir, err);
    /* the longest name a checkpoint write makes: model_<10-digit step>.safetensors.state.tmp.<pid> */
    char probe[DN_PATH_MAX];
    if (dn_path(probe, sizeof probe, err, sizeof err, "%s/model_%010d.safetensors.state.tmp.%ld", dir, INT_MAX, (long)INT_MAX))
        die("--out: the checkpoint paths would be too long: %s", err);
    if (dn_path(probe, sizeof probe, err, sizeof err, "%s/.write_test.%ld", dir, (long)getpid())) die("--out: %s", err);
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0644);
    if (fd < 0) die("--out %s: the folder is not writable: %s", dir, strerror(errno));
    close(fd);
    unlink(probe);
}

/* Temporaries that a killed run left in the output folder (a kill -9 during a checkpoint write):
 * removed at start-up, before anything else is written there. */
static void remove_stale_temps(const char *dir) {
    static const char *names[] = {"model.safetensors", "model.safetensors.state"};
    char p[DN_PATH_MAX];
    int n = 0;
    for (int i = 0; i < 2; i++)
        if (!dn_path(p, sizeof p, NULL, 0, "%s/%s", dir, names[i])) n += dn_remove_stale_temps(p);
    DIR *d = opendir(dir);
    for (struct dirent *de; d && (de = readdir(d)) != NULL;) {
        const char *e = strstr(de->d_name, ".safetensors");
        if (strncmp(de->d_name, "model_", 6) || !e || strstr(de->d_name, ".tmp.") == NULL) continue;
        char base[DN_PATH_MAX];
        const char *t = strstr(de->d_name, ".tmp.");
        snprintf(base, sizeof base, "%.*s", (int)(t - de->d_name), de->d_name);
        if (!dn_path(p, sizeof p, NULL, 0, "%s/%s", dir, base)) n += dn_remove_stale_temps(p);
    }
    if (d) closedir(d);
    if (n) printf("removed %d temporary file%s left by an interrupted run in %s\n", n, n > 1 ? "s" : "", dir);
}

// ----------------------------------------------------------------------------
// data parallelism: one process a GPU, the gradients averaged over the group with NCCL

#ifndef DN_CPU_ONLY
static struct {
    ncclComm_t comm;  /* NULL: one process */
    double timeout_s; /* the longest a step may wait for the group (DN_DIST_TIMEOUT, default 300 s) */
} g_nccl;

static void nccl_check(ncclResult_t r, const char *what) {
    if (r != ncclSuccess) die("NCCL %s: %s", what, ncclGetErrorString(r));
}

/* GPUModel.reduce: after the last micro-batch's backward, the mean over the ranks of the
 * gradients and of the step's loss (the ranks then run the same AdamW on the same numbers). */
static void dist_reduce(void *, float *grads, size_t n, float *loss, cudaStream_t st) {
    nccl_check(ncclGroupStart(), "group start");
    nccl_check(ncclAllReduce(grads, grads, n, ncclFloat, ncclAvg, g_nccl.comm, st), "all-reduce of the gradients");
    nccl_check(ncclAllReduce(loss, loss, 1, ncclFloat, ncclAvg, g_nccl.comm, st), "all-reduce of the loss");
    nccl_check(ncclGroupEnd(), "group end");
}

/* GPUModel.wait: the step's end, watching the group: a rank that failed or left (NCCL's
 * asynchronous error) or a step stuck past the timeout ends this rank with one line, after
 * aborting the communicator so that no collective is left waiting. */
static void dist_wait(void *, cudaStream_t st) {
    const double t0 = now_ms();
    for (;;) {
        const cudaError_t e = cudaStreamQuery(st);
        if (e == cudaSuccess) return;
        if (e != cudaErrorNotReady) cudaCheck(e);
        ncclResult_t ae = ncclSuccess;
        ncclCommGetAsyncError(g_nccl.comm, &ae);
        if (ae != ncclSuccess && ae != ncclInProgress) {
            ncclCommAbort(g_nccl.comm);
            die("NCCL: %s: another rank failed or left: stopping", ncclGetErrorString(ae));
        }
        if (now_ms() - t0 > 1e3 * g_nccl.timeout_s) {
            ncclCommAbort(g_nccl.comm);
            die("a step has waited %.0f s for the other ranks (DN_DIST_TIMEOUT): one of them is gone or stuck: stopping",
                g_nccl.timeout_s);
        }
        const struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
}

/* Before any other CUDA work: this rank's GPU (its local rank), NCCL's id from rank 0, the
 * communicator. NVLink multicast (NVLS) stays off. */
static void dist_setup(int ndev) {
    if (g_env.local_rank >= ndev)
        die("local rank %d, but this host has %d CUDA device%s: one GPU a rank", g_env.local_rank, ndev, ndev == 1 ? "" : "s");
    cudaCheck(cudaSetDevice(g_env.local_rank));
    setenv("NCCL_NVLS_ENABLE", "0", 1);
    const char *to = getenv("DN_DIST_TIMEOUT");
    g_nccl.timeout_s = to && atof(to) > 0 ? atof(to) : 300.0;
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (g_env.rank == 0) nccl_check(ncclGetUniqueId(&id), "unique id");
    char err[DN_ERR_LEN];
    if (dist_share_id(&g_env, &id, sizeof id, (int)g_nccl.timeout_s, err, sizeof err)) die("%s", err);
    nccl_check(ncclCommInitRank(&g_nccl.comm, g_env.world, id, g_env.rank), "communicator");
    int v = 0;
    ncclGetVersion(&v);
    printf("data parallel: %d ranks (%s, %d on this host), rank 0 at %s:%d | NCCL %d.%d.%d | NCCL_NVLS_ENABLE=0",
           g_env.world, g_env.launcher, g_env.local_world, g_env.master_addr, g_env.master_port, v / 10000, (v / 100) % 100,
           v % 100);
    extern char **environ;
    for (char **e = environ; *e; e++)
        if (!strncmp(*e, "NCCL_", 5) && strncmp(*e, "NCCL_NVLS_ENABLE=", 17)) printf(" | %.80s", *e);
    printf("\n");
}

static void dist_finish(void) {
    if (g_nccl.comm) ncclCommDestroy(g_nccl.comm);
    g_nccl.comm = NULL;
}

template <typename floatX> static void model_attach_dist(GPUModel<floatX> *m) {
    if (!g_nccl.comm) return;
    m->reduce = dist_reduce;
    m->wait = dist_wait;
}
#endif
static void model_attach_dist(CPUModel *) {}

// ----------------------------------------------------------------------------
// the trainer

template <typename Model> struct Trainer {
    TrainArgs a;
    DNConfig cfg;
    Model m;
    DataLoader train;        /* --no-shuffle */
    ShuffleLoader shuf;      /* the default: shuffled windows */
    ValWindows val;
    int have_val;
    long val_count;          /* windows scored per evaluation */
    int *val_inputs, *val_targets; /* [B, T] */
    uint8_t *val_mask;       /* [B, T] target mask of the val windows (masked val data only) */
    uint8_t *h_mask;         /* [accum][B*T] target masks of the step's micro-batches (masked training data only) */
    Tokenizer tok;
    int have_tok;
    DNRng rng;               /* sampling */
    long step;               /* optimizer steps done */
    int accum;
    double flops_tok, peak_flops;
    FILE *log;
    int log_csv;
    char last_ckpt[DN_PATH_MAX];
    long nan_step;           /* test hook: env DN_TEST_NAN_STEP=N makes step N's loss NaN (0: off) */
    float *h_params, *h_m, *h_v; /* host staging for checkpoints */
};

/* A token at or above the model's vocabulary: the one flag that fixes it. */
static void vocab_hint(const char *what, const char *err, int vocab) {
    if (strstr(err, "vocabulary"))
        die("%s%s\n  HINT: the model's vocabulary is %d; train with --vocab N, N above every token id (GPT-2's is 50257)",
            what, err, vocab);
}

static void missing_data(const char *pattern, const char *err, int vocab) {
    vocab_hint("", err, vocab);
    die("cannot open the shards '%s': %s\n"
        "  HINT: run `make data` to build the TinyShakespeare shards, or point --train/--val at shards made by\n"
        "  `./tokenize -o PREFIX file.txt` or by llm.c's data scripts (e.g. dev/data/fineweb.py: same format)",
        pattern, err);
}

/* The training loader's position, as the checkpoint stores it in data_shard / data_pos: (shard,
 * token offset) with --no-shuffle, (epoch, index of the next window in its order) when shuffled
 * (data.h). The flags, --no-shuffle, --random-windows and --seed included, must be the same on --resume. */
template <typename Model>
static void train_position(const Trainer<Model> *tr, long *a, long *b) {
    if (tr->a.no_shuffle) dl_position(&tr->train, a, b);
    else sl_position(&tr->shuf, a, b);
}
template <typename Model>
static int train_seek(Trainer<Model> *tr, long a, long b, char *err, size_t errlen) {
    return tr->a.no_shuffle ? dl_seek(&tr->train, a, b, err, errlen) : sl_seek(&tr->shuf, a, b, err, errlen);
}

/* Data loaders, the tokenizer (optional: samples need it), the log file. */
template <typename Model>
static void setup_io(Trainer<Model> *tr) {
    const TrainArgs *a = &tr->a;
    char err[DN_ERR_LEN];
    const int V = tr->cfg.vocab_size;
    if (a->no_shuffle ? dl_init(&tr->train, a->train_pattern, a->B, a->T, V, err, sizeof err)
                      : sl_init(&tr->shuf, a->train_pattern, a->B, a->T, V, a->seed, err, sizeof err)) {
        if (strstr(err, "fewer than one window") || strstr(err, "mask")) die("training data: %s", err); /* there, but unusable */
        missing_data(a->train_pattern, err, V);
    }
    if (a->random_windows && sl_set_random(&tr->shuf, err, sizeof err)) die("training data: %s", err);
    if (g_env.world > 1) {
        if (a->no_shuffle) die("--no-shuffle reads the shards in file order on one process: drop it to train on %d ranks", g_env.world);
        if (sl_set_rank(&tr->shuf, g_env.rank, g_env.world, err, sizeof err)) die("training data: %s", err);
    }
    if (a->no_shuffle)
        for (size_t i = 0; i < tr->train.nfiles; i++)
            if (mask_exists(tr->train.files[i]))
                die("training data: %s has a loss mask beside it, which --no-shuffle does not read: drop --no-shuffle", tr->train.files[i]);
    if (!a->no_shuffle && tr->shuf.tmask) {
        tr->h_mask = (uint8_t *)malloc((size_t)tr->accum * a->B * a->T);
        if (!tr->h_mask) die("out of host memory");
    }
    if (a->val_every > 0) {
        /* --val-windows n spread over the split, or (--val-batches N) the first N*B windows */
        if (vw_init(&tr->val, a->val_pattern, a->T, a->val_batches > 0 ? 0 : a->val_windows, V, err, sizeof err)) {
            /* there, but too small for -t or --val-windows */
            if (strstr(err, "fewer than one window") || strstr(err, "distinct positions") || strstr(err, "mask")) die("validation data: %s", err);
            missing_data(a->val_pattern, err, V);
        }
        tr->val_count = (long)tr->val.n;
        if (a->val_batches > 0 && tr->val_count > (long)a->val_batches * a->B) tr->val_count = (long)a->val_batches * a->B;
        tr->val_inputs = (int *)malloc((size_t)a->B * a->T * sizeof(int));
        tr->val_targets = (int *)malloc((size_t)a->B * a->T * sizeof(int));
        if (!tr->val_inputs || !tr->val_targets) die("out of host memory");
        if (tr->val.set.mask) {
            if (!(tr->val_mask = (uint8_t *)malloc((size_t)a->B * a->T))) die("out of host memory");
        }
        tr->have_val = 1;
    }
    if (a->sample_every > 0 && g_env.rank == 0) {
        tr->have_tok = !tok_load(&tr->tok, NULL, err, sizeof err);
        if (!tr->have_tok) fprintf(stderr, "note: no samples (%s)\n", err);
        else if (tr->tok.vocab_size > V) { tok_free(&tr->tok); tr->have_tok = 0; fprintf(stderr, "note: no samples: the model's vocabulary is smaller than GPT-2's\n"); }
    }
    if (a->log_path && g_env.rank == 0) {
        size_t n = strlen(a->log_path);
        tr->log_csv = n >= 4 && !strcmp(a->log_path + n - 4, ".csv");
        tr->log = fopen(a->log_path, a->resume ? "a" : "w");
        if (!tr->log) die("--log %s: cannot open: %s", a->log_path, strerror(errno));
        if (tr->log_csv && ftell(tr->log) == 0) fprintf(tr->log, "kind,step,loss,lr,norm,ms,tok_s,mfu\n");
    }
}

/* --resume PATH: the weights (into *params, the config into tr->cfg, their step into tr->step)
 * and the path of the training state that belongs to them: the one beside the file PATH names (a
 * link such as out/model.safetensors is followed, so its state is that of the checkpoint it points
 * to, whatever model.safetensors.state says). */
template <typename Model>
static void resume_weights(Trainer<Model> *tr, float **params, char *state_path, size_t cap) {
    const TrainArgs *a = &tr->a;
    char err[DN_ERR_LEN], real[PATH_MAX];
    if (dn_checkpoint_read(a->resume, &tr->cfg, params, err, sizeof err)) die("--resume: %s", err);
    if (!realpath(a->resume, real)) die("--resume %s: %s", a->resume, strerror(errno));
    if (dn_path(state_path, cap, err, sizeof err, "%s.state", real)) die("--resume: %s", err);
    if (dn_checkpoint_step(a->resume, &tr->step, err, sizeof err))
        die("--resume: %s (the weights carry no training step: not a checkpoint of this trainer)", err);
}

/* The model: fresh (init from the seed) or from --resume. */
template <typename Model>
static void setup_model(Trainer<Model> *tr) {
    const TrainArgs *a = &tr->a;
    char err[DN_ERR_LEN];
    float *params = NULL;
    DNTrainState st;
    memset(&st, 0, sizeof st);
    char state_path[DN_PATH_MAX] = "";
    if (a->resume) {
        resume_weights(tr, &params, state_path, sizeof state_path);
    } else {
        tr->cfg = build_config(a);
    }
    tr->accum = (int)(a->total_batch / ((long)a->B * a->T * g_env.world));
    model_create(&tr->m, &tr->cfg, a->B, a->T, tr->accum);
    model_attach_dist(&tr->m);
    model_profile_begin(&tr->m, a);
    const DNParamTable *t = &tr->m.t;
    tr->h_params = (float *)malloc(t->total * sizeof(float));
    tr->h_m = (float *)malloc(t->total * sizeof(float));
    tr->h_v = (float *)malloc(t->total * sizeof(float));
    if (!tr->h_params || !tr->h_m || !tr->h_v) die("out of host memory for %zu parameters", t->total);
    dn_rng_seed(&tr->rng, a->seed ^ 0x5a4d504c45ull);
    if (a->resume) {
        if (dn_state_read(state_path, t, tr->h_m, tr->h_v, &st, err, sizeof err)) die("--resume: %s", err);
        if (st.step != tr->step)
            die("--resume: the weights %s are of step %ld but the training state %s is of step %ld: they do not "
                "belong together (an interrupted save?); resume from another model_<step>.safetensors", a->resume,
                tr->step, state_path, st.step);
        if ((st.data_ranks ? st.data_ranks : 1) != g_env.world)
            die("--resume: %s was written by a run of %ld rank%s and this one has %d: resume with the same number of ranks "
                "(the data order depends on it)", state_path, st.data_ranks ? st.data_ranks : 1, st.data_ranks > 1 ? "s" : "",
                g_env.world);
        model_set_params(&tr->m, params);
        model_set_adam(&tr->m, tr->h_m, tr->h_v);
        tr->rng.s = st.rng_state;
        free(params);
        snprintf(tr->last_ckpt, sizeof tr->last_ckpt, "%s", a->resume);
    } else {
        tr->last_ckpt[0] = 0;
        dn_init_params(t, tr->h_params, a->seed);
        model_set_params(&tr->m, tr->h_params);
    }
    setup_io(tr);
    if (tr->h_mask || tr->val_mask) model_enable_mask(&tr->m);
    if (a->resume && train_seek(tr, st.data_shard, st.data_pos, err, sizeof err)) die("--resume: %s", err);
    tr->flops_tok = flops_per_token(&tr->cfg, a->T);
    tr->peak_flops = model_peak_flops(&tr->m);
}

template <typename Model>
static void print_summary(Trainer<Model> *tr) {
    const TrainArgs *a = &tr->a;
    const DNConfig *c = &tr->cfg;
    model_describe(&tr->m, a);
    char mlp[32];
    if (c->no_mlp) snprintf(mlp, sizeof mlp, "none");
    else snprintf(mlp, sizeof mlp, "%d", c->hidden_size);
    printf("model: layers %s | D %d | heads %d (K %d) | MLP %s | vocab %d (padded %d) | %s", c->layers, c->d_model,
           c->n_head, c->head_dim, mlp, c->vocab_size, c->padded_vocab, c->tie_embeddings ? "tied" : "untied");
    if (strpbrk(c->layers, "SG")) printf(" | attention heads %d, kv %d, window %d", c->attn_heads, c->attn_kv_heads, c->window);
    if (strchr(c->layers, 'N')) printf(" | gated DeltaNet heads %d (K %d, V %d)", c->gdn_heads, c->gdn_head_dim, dn_gdn_value_dim(c));
    printf("\nparameters: %zu (%.1fM) | seed %llu%s%s\n", tr->m.t.total_real, tr->m.t.total_real / 1e6, a->seed,
           a->resume ? " | resumed from " : "", a->resume ? a->resume : "");
    printf("batch: %d x %d tokens x %d micro-batches = %ld tokens/step | steps %d | lr %g (warmup %d, floor %g) | wd %g | clip %g\n",
           a->B, a->T, tr->accum, a->total_batch, a->steps, a->lr, a->warmup, a->lr_min, a->wd, a->clip);
    if (a->no_shuffle) printf("train: %s (%zu shards, in file order)", a->train_pattern, tr->train.nfiles);
    else if (a->random_windows)
        printf("train: %s (%zu shards, random windows of %d tokens, with replacement, from seed %llu)", a->train_pattern,
               tr->shuf.set.nfiles, a->T + 1, a->seed);
    else printf("train: %s (%zu shards, %zu windows of %d tokens an epoch, shuffled from seed %llu)", a->train_pattern,
                tr->shuf.set.nfiles, tr->shuf.nwindows, a->T + 1, a->seed);
    if (tr->h_mask) printf(" | loss mask: the masked targets only");
    if (tr->val_mask)
        printf(" | val: %s (%ld examples, loss and accuracy on the masked targets)", a->val_pattern, tr->val_count);
    else if (tr->have_val && a->val_batches > 0)
        printf(" | val: %s (the first %ld windows)", a->val_pattern, tr->val_count);
    else if (tr->have_val)
        printf(" | val: %s (%ld windows %s %zu tokens)", a->val_pattern, tr->val_count,
               a->val_windows > 0 ? "spread over" : "covering", tr->val.ntok);
    else
        printf(" | val: off");
    printf(" | %.3f GFLOP/token\n", tr->flops_tok / 1e9);
    model_memory_line(&tr->m, a);
    fflush(stdout);
}

/* The validation loss: the mean over the val_count windows (data.h: the same ones every time) of
 * each window's mean loss over its T predictions, scored in batches of up to B rows. With masked
 * val data: the mean loss over all the masked targets, and *acc the fraction of them that the
 * argmax gets right (*acc = -1 without a mask). */
template <typename Model>
static float validate(Trainer<Model> *tr, double *acc, long *scored) {
    char err[DN_ERR_LEN];
    const int B = tr->a.B, T = tr->a.T;
    double sum = 0;
    *acc = -1;
    *scored = 0;
    if (tr->val_mask) {
        long hits = 0, count = 0;
        for (long i0 = 0; i0 < tr->val_count; i0 += B) {
            const int rows = tr->val_count - i0 < B ? (int)(tr->val_count - i0) : B;
            long c = 0, h = 0;
            for (int r = 0; r < rows; r++)
                if (vw_read(&tr->val, (size_t)(i0 + r), tr->val_inputs + (size_t)r * T, tr->val_targets + (size_t)r * T, err, sizeof err) ||
                    vw_read_mask(&tr->val, (size_t)(i0 + r), tr->val_mask + (size_t)r * T, err, sizeof err)) {
                    vocab_hint("validation data: ", err, tr->cfg.vocab_size);
                    die("validation data: %s", err);
                }
            for (size_t n = 0; n < (size_t)rows * T; n++) c += tr->val_mask[n];
            if (c == 0) continue;
            sum += (double)model_eval_masked(&tr->m, tr->val_inputs, tr->val_targets, tr->val_mask, rows, &h) * c;
            hits += h;
            count += c;
        }
        *acc = count > 0 ? (double)hits / count : 0.0;
        *scored = count;
        return (float)(count > 0 ? sum / count : 0.0);
    }
    for (long i0 = 0; i0 < tr->val_count; i0 += B) {
        const int rows = tr->val_count - i0 < B ? (int)(tr->val_count - i0) : B;
        for (int r = 0; r < rows; r++) {
            if (vw_read(&tr->val, (size_t)(i0 + r), tr->val_inputs + (size_t)r * T, tr->val_targets + (size_t)r * T,
                        err, sizeof err)) {
                vocab_hint("validation data: ", err, tr->cfg.vocab_size);
                die("validation data: %s", err);
            }
        }
        sum += (double)model_eval_loss(&tr->m, tr->val_inputs, tr->val_targets, rows) * rows;
    }
    return (float)(sum / (tr->val_count > 0 ? tr->val_count : 1));
}

/* Print a sample of sample_len tokens after <|endoftext|>, each from the model over the last T
 * tokens, drawn by infer's sampler (src/sample.c: plain sampling at --temperature, 0 = greedy) from
 * the trainer's rng stream (saved in the checkpoint), one uniform per draw. */
template <typename Model>
static void sample(Trainer<Model> *tr) {
    const int T = tr->a.T, V = tr->cfg.vocab_size, n = tr->a.sample_len;
    int *seq = (int *)malloc((size_t)(n + 1) * sizeof(int));
    float *logits = (float *)malloc((size_t)V * sizeof(float));
    Sampler sp;
    if (!seq || !logits || sampler_build(&sp, V, tr->a.temperature, 1.0f, 0, 0)) die("out of host memory");
    sp.rng = tr->rng;
    seq[0] = tr->tok.eot;
    printf("---- sample (step %ld, temperature %g)\n", tr->step, tr->a.temperature);
    for (int i = 1; i <= n; i++) {
        const int len = i < T ? i : T, start = i - len;
        model_next_logits(&tr->m, seq + start, len, logits);
        const int next = sampler_next(&sp, logits);
        seq[i] = next;
        size_t bl = 0;
        const char *b = tok_token(&tr->tok, next, &bl);
        if (b) fwrite(b, 1, bl, stdout);
    }
    printf("\n----\n");
    fflush(stdout);
    tr->rng = sp.rng;
    sampler_free(&sp);
    free(seq); free(logits);
}

/* dir/link -> target (a name in dir), replaced atomically. */
static void link_latest(const char *dir, const char *link, const char *target) {
    char lp[DN_PATH_MAX], tmp[DN_PATH_MAX], err[DN_ERR_LEN];
    if (dn_path(lp, sizeof lp, err, sizeof err, "%s/%s", dir, link) ||
        dn_path(tmp, sizeof tmp, err, sizeof err, "%s.tmp.%ld", lp, (long)getpid())) {
        fprintf(stderr, "note: could not link %s: %s\n", link, err);
        return;
    }
    dn_remove_stale_temps(lp);
    unlink(tmp);
    if (symlink(target, tmp) != 0 || rename(tmp, lp) != 0) {
        fprintf(stderr, "note: could not link %s -> %s: %s\n", lp, target, strerror(errno));
        unlink(tmp);
    }
}

/* Weights to <out>/model_<step>.safetensors and the training state to <that>.state, each written
 * atomically and each carrying the step; the final one is also linked as <out>/model.safetensors
 * (+ .state). */
template <typename Model>
static void save_checkpoint(Trainer<Model> *tr, int final) {
    if (g_env.rank != 0) return; /* the ranks hold the same weights and moments: rank 0 writes */
    char path[DN_PATH_MAX], sp[DN_PATH_MAX], err[DN_ERR_LEN], stepbuf[32];
    if (dn_path(path, sizeof path, err, sizeof err, "%s/model_%06ld.safetensors", tr->a.out_dir, tr->step) ||
        dn_path(sp, sizeof sp, err, sizeof err, "%s.state", path))
        die("checkpoint: %s", err);
    snprintf(stepbuf, sizeof stepbuf, "%ld", tr->step);
    const char *meta[] = {"step", stepbuf, NULL, NULL};
    model_get_params(&tr->m, tr->h_params);
    model_get_adam(&tr->m, tr->h_m, tr->h_v);
    DNTrainState st;
    memset(&st, 0, sizeof st);
    st.step = tr->step;
    st.rng_state = tr->rng.s;
    st.data_ranks = g_env.world;
    train_position(tr, &st.data_shard, &st.data_pos);
    snprintf(st.note, sizeof st.note, "%s", tr->a.cmdline);
    /* state first, weights last: a weights file on disk always has its state beside it */
    if (dn_state_write(sp, &tr->m.t, tr->h_m, tr->h_v, &st, err, sizeof err)) die("checkpoint: %s", err);
    if (dn_checkpoint_write(path, &tr->m.t, tr->h_params, DN_F32, meta, err, sizeof err)) die("checkpoint: %s", err);
    snprintf(tr->last_ckpt, sizeof tr->last_ckpt, "%s", path);
    if (final) {
        const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        char bs[DN_PATH_MAX];
        if (dn_path(bs, sizeof bs, err, sizeof err, "%s.state", base)) die("checkpoint: %s", err);
        /* the weights link first: --resume follows it to the state beside its target, and a run
         * killed between the two links leaves model.safetensors whole */
        link_latest(tr->a.out_dir, "model.safetensors", base);
        link_latest(tr->a.out_dir, "model.safetensors.state", bs);
    }
    printf("checkpoint: %s (+ .state)%s\n", path, final ? ", linked as model.safetensors" : "");
    fflush(stdout);
}

template <typename Model>
static void log_row(Trainer<Model> *tr, const char *kind, float loss, float lr, float norm, double ms, double tok_s, double mfu,
                    double acc = -1) {
    if (!tr->log) return;
    if (tr->log_csv) {
        if (!strcmp(kind, "val")) fprintf(tr->log, "val,%ld,%.6f,,,,,\n", tr->step, loss);
        else fprintf(tr->log, "train,%ld,%.6f,%.6e,%.6f,%.3f,%.1f,%.5f\n", tr->step, loss, lr, norm, ms, tok_s, mfu);
    } else {
        if (!strcmp(kind, "val") && acc >= 0)
            fprintf(tr->log, "{\"kind\":\"val\",\"step\":%ld,\"loss\":%.6f,\"acc\":%.6f}\n", tr->step, loss, acc);
        else if (!strcmp(kind, "val")) fprintf(tr->log, "{\"kind\":\"val\",\"step\":%ld,\"loss\":%.6f}\n", tr->step, loss);
        else fprintf(tr->log, "{\"kind\":\"train\",\"step\":%ld,\"loss\":%.6f,\"lr\":%.6e,\"norm\":%.6f,\"ms\":%.3f,\"tok_s\":%.1f,\"mfu\":%.5f}\n",
                     tr->step, loss, lr, norm, ms, tok_s, mfu);
    }
    fflush(tr->log);
}

/* One optimizer step: the next accum batches, the step, the stdout and log lines. */
template <typename Model>
static void train_step(Trainer<Model> *tr) {
    char err[DN_ERR_LEN];
    const size_t N = (size_t)tr->a.B * tr->a.T;
    const double t0 = now_ms();
    for (int i = 0; i < tr->accum; i++) {
        const int no_shuffle = tr->a.no_shuffle;
        if (no_shuffle ? dl_next(&tr->train, err, sizeof err) : sl_next(&tr->shuf, err, sizeof err)) {
            vocab_hint("training data: ", err, tr->cfg.vocab_size);
            die("training data: %s", err);
        }
        memcpy(tr->m.h_tokens + 2 * i * N, no_shuffle ? tr->train.inputs : tr->shuf.inputs, N * sizeof(int));
        memcpy(tr->m.h_tokens + (2 * i + 1) * N, no_shuffle ? tr->train.targets : tr->shuf.targets, N * sizeof(int));
        if (tr->h_mask) memcpy(tr->h_mask + i * N, tr->shuf.tmask, N);
    }
    const long step = tr->step + 1;
    if (step == tr->nan_step) model_poison(&tr->m); /* test hook (DN_TEST_NAN_STEP): this step's loss is NaN */
    StepOptim o = {lr_at(&tr->a, step), tr->a.beta1, tr->a.beta2, tr->a.adam_eps, tr->a.wd, tr->a.clip};
    float norm = 0.0f;
    const float loss = model_train_step(&tr->m, &o, step, &norm, tr->h_mask);
    const double ms = now_ms() - t0;
    tr->step = step;
    if (!std::isfinite(loss)) {
        fprintf(stderr, "step %ld: the loss is %f: stopping. ", step, loss);
        if (tr->last_ckpt[0]) fprintf(stderr, "The last good checkpoint is %s (untouched).\n", tr->last_ckpt);
        else fprintf(stderr, "No checkpoint was written before it.\n");
        exit(EXIT_FAILURE);
    }
    const double tok_s = tr->a.total_batch / (ms / 1e3);
    const double mfu = tr->peak_flops > 0 ? tr->flops_tok * tok_s / (tr->peak_flops * g_env.world) : 0.0;
    char mfus[32] = "";
    if (tr->peak_flops > 0) snprintf(mfus, sizeof mfus, " | MFU %.1f%%", 100.0 * mfu);
    printf("step %5ld/%d | loss %.6f | lr %.3e | norm %.4f | %.1f ms | %.0f tok/s%s\n", step, tr->a.steps,
           loss, o.lr, norm, ms, tok_s, mfus);
    fflush(stdout);
    log_row(tr, "train", loss, o.lr, norm, ms, tok_s, mfu);
}

template <typename Model>
static void finish(Trainer<Model> *tr) {
    model_profile_end(&tr->m);
    model_done_line(&tr->m, tr->step);
    if (tr->log) fclose(tr->log);
    if (tr->have_tok) tok_free(&tr->tok);
    if (tr->a.no_shuffle) dl_free(&tr->train);
    else sl_free(&tr->shuf);
    if (tr->have_val) vw_free(&tr->val);
    free(tr->val_inputs); free(tr->val_targets); free(tr->val_mask); free(tr->h_mask);
    model_free(&tr->m);
    free(tr->h_params); free(tr->h_m); free(tr->h_v);
#ifndef DN_CPU_ONLY
    dist_finish();
#endif
}

template <typename Model>
static int run(const TrainArgs *a) {
    Trainer<Model> *tr = (Trainer<Model> *)calloc(1, sizeof(Trainer<Model>));
    if (!tr) die("out of host memory");
    tr->a = *a;
    const char *ns = getenv("DN_TEST_NAN_STEP");
    tr->nan_step = ns ? atol(ns) : 0;
    setup_model(tr);
    print_summary(tr);
    if (tr->step >= a->steps) printf("the checkpoint is at step %ld >= --steps %d: nothing to do\n", tr->step, a->steps);
    const long first = tr->step;
    while (tr->step < a->steps) {
        train_step(tr);
        if (tr->step == first + 1) model_profile_warmed(&tr->m); /* the first step warms up */
        const int last = tr->step == a->steps;
        if (tr->have_val && (tr->step % a->val_every == 0 || last)) {
            double acc;
            long scored;
            float vl = validate(tr, &acc, &scored);
            if (acc >= 0)
                printf("val loss %.6f (perplexity %.2f) | accuracy %.4f (%ld masked targets) at step %ld\n", vl, exp(vl), acc,
                       scored, tr->step);
            else
                printf("val loss %.6f (perplexity %.2f) at step %ld\n", vl, exp(vl), tr->step);
            log_row(tr, "val", vl, 0, 0, 0, 0, 0, acc);
        }
        if (tr->have_tok && (tr->step % a->sample_every == 0 || last)) sample(tr);
        if ((a->ckpt_every > 0 && tr->step % a->ckpt_every == 0) || last) save_checkpoint(tr, last);
    }
    finish(tr);
    free(tr);
    return 0;
}

#ifndef TESTING
int main(int argc, char **argv) {
    TrainArgs a;
    parse_args(&a, argc, argv);
    const char *why = NULL;
    char whybuf[256];
#ifdef DN_CPU_ONLY
    why = "this trainer was built without CUDA";
#else
    int ndev = 0;
    const cudaError_t e = a.cpu ? cudaSuccess : cudaGetDeviceCount(&ndev);
    if (a.cpu) why = "--cpu";
    else if (e != cudaSuccess || ndev == 0) {
        snprintf(whybuf, sizeof whybuf, "no CUDA device found: %s", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        why = whybuf;
    }
#endif
    (void)whybuf;
    char derr[DN_ERR_LEN];
    if (dist_from_env(&g_env, derr, sizeof derr)) die("%s", derr);
    /* launched as ranks (any launcher's variables, even a group of one): the data-parallel path */
    if (g_env.world > 1 && why) die("%d ranks (%s): data parallelism needs a CUDA GPU for every rank, and %s", g_env.world, g_env.launcher, why);
#ifndef DN_CPU_ONLY
    if (!why && (g_env.world > 1 || strcmp(g_env.launcher, "single process"))) dist_setup(ndev);
#endif
    if (g_env.rank > 0 && !freopen("/dev/null", "w", stdout)) die("cannot silence stdout: %s", strerror(errno));
    if (why) printf("training on the CPU (%s)\n", why);
    resolve_defaults(&a, why != NULL);
    prepare_out_dir(a.out_dir);
    if (g_env.rank == 0) remove_stale_temps(a.out_dir);
    if (why) return run<CPUModel>(&a);
#ifndef DN_CPU_ONLY
    return a.fp32 ? run<GPUModel<float>>(&a) : run<GPUModel<bf16>>(&a);
#endif
}
#endif
