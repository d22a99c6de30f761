/*
 * matmul.cuh -- every linear layer of the trainer, through cuBLASLt.
 *
 * Layouts (row-major, PyTorch weight layout [out, in]):
 *   forward          out[N,OC]  (= or +=)  inp[N,C] W^T             W floatX [OC,C]
 *   backward data    dinp[N,C]  (= or +=)  dout[N,OC] W
 *   backward weight  dW[OC,C]   +=         dout^T inp               dW float (fp32 gradient buffer)
 * In cuBLAS's column-major terms a row-major [R,C] matrix is a column-major [C,R] one, so the three
 * products are "TN" (m=OC, n=N, k=C), "NN" (m=C, n=N, k=OC) and "NT" (m=C, n=OC, k=N).
 *
 * Precision: floatX = __nv_bfloat16: bf16 operands, fp32 accumulation (CUBLAS_COMPUTE_32F), bf16
 * output for forward / backward data, fp32 output (C = D = CUDA_R_32F) for the weight gradient.
 * floatX = float (test mode): everything fp32 with CUBLAS_COMPUTE_32F, which never uses tf32
 * (that would need CUBLAS_COMPUTE_32F_FAST_TF32): results agree with a float CPU loop to ~1e-6.
 *
 * Fused epilogues: cuBLASLt fuses only bias / ReLU / GELU (and their gradients), none of which this
 * model has; the residual add is the `accumulate` flag (beta = 1), the sigmoid of beta and SwiGLU are
 * separate elementwise kernels (sigmoid.cuh, swiglu.cuh).
 *
 * Fused weights: the parameter table keeps q_proj, k_proj, v_proj adjacent ([3D, D] from
 * layer.p[DN_P_Q]) and gate_proj, up_proj adjacent ([2I, D] from layer.p[DN_P_GATE]), in the fp32
 * master buffer, the floatX copy and the gradient buffer alike, so one matmul with OC = 3D (resp. 2I)
 * produces rows q|k|v (resp. gate|up), the layouts that conv_silu_l2norm_* and swiglu_* expect.
 *
 * Sizes: any N, C, OC >= 1; no alignment requirement beyond cudaMalloc'd base pointers (pointer
 * alignment is part of the cached key, so slices at odd offsets work too, on slower kernels).
 * Fastest when C, OC are multiples of 8 (16-byte rows in bf16).
 *
 * Descriptors and the heuristic's algorithm are cached per (kind, type, shape, leading dimensions,
 * pointer alignment) in the context: the first call of a shape creates them (host work only), every
 * later call just launches cublasLtMatmul on the given stream with the context's workspace, so a
 * CUDA graph can capture the calls. Run one step before capturing so that every shape is cached.
 * Results are deterministic run to run (cuBLASLt's split-K reduces in the workspace, no atomics).
 */
#pragma once
#include <cstring>
#include <cublasLt.h>
#include "common.cuh"

inline void cublas_check_(cublasStatus_t st, const char *file, int line) {
    if (st != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cuBLAS error at %s:%d: status %d\n", file, line, (int)st);
        exit(EXIT_FAILURE);
    }
}
#define cublasCheck(st) cublas_check_((st), __FILE__, __LINE__)

#define MATMUL_CACHE_SIZE 256
#define MATMUL_WORKSPACE_BYTES (32u << 20)

typedef struct {
    int transa, transb, m, n, k, lda, ldb, ldc;
    int ab_type, cd_type;           /* cudaDataType of A/B and of C/D */
    int align_a, align_b, align_c;  /* min(16, pointer alignment in bytes) */
} MatmulKey;

typedef struct {
    MatmulKey key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} MatmulPlan;

/* One per process (or per device): the cuBLASLt handle, the workspace, the plan cache. */
typedef struct {
    cublasLtHandle_t handle;
    void *workspace;
    size_t workspace_size;
    int n_plans;
    MatmulPlan plans[MATMUL_CACHE_SIZE];
} MatmulContext;

/* Heap-allocate and initialise a context (the struct is large; keep it off the stack). */
inline MatmulContext *matmul_create(void) {
    MatmulContext *ctx = (MatmulContext *)calloc(1, sizeof(MatmulContext));
    if (!ctx) { fprintf(stderr, "matmul_create: out of memory\n"); exit(EXIT_FAILURE); }
    cublasCheck(cublasLtCreate(&ctx->handle));
    ctx->workspace_size = MATMUL_WORKSPACE_BYTES;
    cudaCheck(cudaMalloc(&ctx->workspace, ctx->workspace_size));
    return ctx;
}

inline void matmul_destroy(MatmulContext *ctx) {
    if (!ctx) return;
    for (int i = 0; i < ctx->n_plans; i++) {
        MatmulPlan *p = &ctx->plans[i];
        cublasLtMatrixLayoutDestroy(p->la);
        cublasLtMatrixLayoutDestroy(p->lb);
        cublasLtMatrixLayoutDestroy(p->lc);
        cublasLtMatmulDescDestroy(p->desc);
    }
    cudaCheck(cudaFree(ctx->workspace));
    cublasLtDestroy(ctx->handle);
    free(ctx);
}

template <typename T> inline cudaDataType_t cuda_dtype();
template <> inline cudaDataType_t cuda_dtype<float>() { return CUDA_R_32F; }
template <> inline cudaDataType_t cuda_dtype<bf16>() { return CUDA_R_16BF; }

inline int ptr_align(const void *p) {
    uintptr_t a = (uintptr_t)p;
    int al = 16;
    while (al > 1 && (a % al)) al >>= 1;
    return al;
}

/* Find or build the plan of one product. */
inline const MatmulPlan *matmul_plan(MatmulContext *ctx, const MatmulKey *key) {
    for (int i = 0; i < ctx->n_plans; i++)
        if (!memcmp(&ctx->plans[i].key, key, sizeof(MatmulKey))) return &ctx->plans[i];
    if (ctx->n_plans == MATMUL_CACHE_SIZE) {
        fprintf(stderr, "matmul: more than %d distinct matmul shapes; raise MATMUL_CACHE_SIZE\n", MATMUL_CACHE_SIZE);
        exit(EXIT_FAILURE);
    }
    MatmulPlan *p = &ctx->plans[ctx->n_plans];
    memset(p, 0, sizeof *p);
    p->key = *key;
    cublasOperation_t ta = key->transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = key->transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    cudaDataType_t abt = (cudaDataType_t)key->ab_type, cdt = (cudaDataType_t)key->cd_type;
    /* stored (column-major) shapes: A is m x k (or k x m if transposed), B is k x n (or n x k) */
    cublasCheck(cublasLtMatrixLayoutCreate(&p->la, abt, key->transa ? key->k : key->m, key->transa ? key->m : key->k, key->lda));
    cublasCheck(cublasLtMatrixLayoutCreate(&p->lb, abt, key->transb ? key->n : key->k, key->transb ? key->k : key->n, key->ldb));
    cublasCheck(cublasLtMatrixLayoutCreate(&p->lc, cdt, key->m, key->n, key->ldc));
    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = ctx->workspace_size;
    uint32_t aa = key->align_a, ab = key->align_b, ac = key->align_c;
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof aa));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof ab));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof ac));
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof ac));
    cublasLtMatmulHeuristicResult_t res;
    int n_res = 0;
    cublasCheck(cublasLtMatmulAlgoGetHeuristic(ctx->handle, p->desc, p->la, p->lb, p->lc, p->lc, pref, 1, &res, &n_res));
    cublasLtMatmulPreferenceDestroy(pref);
    if (n_res == 0) {
        fprintf(stderr, "matmul: no cuBLASLt algorithm for m=%d n=%d k=%d trans=%d%d types=%d/%d\n",
                key->m, key->n, key->k, key->transa, key->transb, key->ab_type, key->cd_type);
        exit(EXIT_FAILURE);
    }
    p->algo = res.algo;
    ctx->n_plans++;
    return p;
}

/* D = alpha op(A) op(B) + beta D, column-major (the general entry point behind the three below). */
template <typename Tab, typename Tcd>
inline void matmul_lt(MatmulContext *ctx, Tcd *d, const Tab *a, const Tab *b, int transa, int transb,
                      int m, int n, int k, int lda, int ldb, int ldc, float alpha, float beta, cudaStream_t stream) {
    MatmulKey key;
    memset(&key, 0, sizeof key);
    key.transa = transa; key.transb = transb; key.m = m; key.n = n; key.k = k;
    key.lda = lda; key.ldb = ldb; key.ldc = ldc;
    key.ab_type = (int)cuda_dtype<Tab>(); key.cd_type = (int)cuda_dtype<Tcd>();
    key.align_a = ptr_align(a); key.align_b = ptr_align(b); key.align_c = ptr_align(d);
    const MatmulPlan *p = matmul_plan(ctx, &key);
    cublasCheck(cublasLtMatmul(ctx->handle, p->desc, &alpha, a, p->la, b, p->lb, &beta, d, p->lc, d, p->lc,
                               &p->algo, ctx->workspace, ctx->workspace_size, stream));
}

// ----------------------------------------------------------------------------
// kernel launchers

/* out[N,OC] = inp[N,C] w^T (accumulate = 1: out += ...). w floatX [OC,C]. */
template <typename floatX>
void matmul_forward(MatmulContext *ctx, floatX *out, const floatX *inp, const floatX *w,
                    int N, int C, int OC, int accumulate, cudaStream_t stream) {
    matmul_lt<floatX, floatX>(ctx, out, w, inp, 1, 0, OC, N, C, C, C, OC, 1.0f, accumulate ? 1.0f : 0.0f, stream);
}

/* dinp[N,C] = dout[N,OC] w (accumulate = 1: dinp += ..., for inputs feeding several branches). */
template <typename floatX>
void matmul_backward_data(MatmulContext *ctx, floatX *dinp, const floatX *dout, const floatX *w,
                          int N, int C, int OC, int accumulate, cudaStream_t stream) {
    matmul_lt<floatX, floatX>(ctx, dinp, w, dout, 0, 0, C, N, OC, C, OC, C, 1.0f, accumulate ? 1.0f : 0.0f, stream);
}

/* dw[OC,C] += dout[N,OC]^T inp[N,C]; dw is an fp32 gradient buffer (always accumulated: zero it
 * at the start of a step). */
template <typename floatX>
void matmul_backward_weight(MatmulContext *ctx, float *dw, const floatX *dout, const floatX *inp,
                            int N, int C, int OC, cudaStream_t stream) {
    matmul_lt<floatX, float>(ctx, dw, inp, dout, 0, 1, C, OC, N, C, OC, C, 1.0f, 1.0f, stream);
}
