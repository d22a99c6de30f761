/*
 * test_deltarule.cu -- the GPU chunkwise delta rule (kernels/deltarule.cuh) against the CPU
 * reference (ref_delta_rule_chunk_forward / _backward, float, zero initial state, no final state).
 *
 * For fp32 (true fp32 arithmetic) and bf16 activations, over odd shapes (T = 1, 63, 64, 65, 200,
 * 1000; B = 1, 2; H = 1, 3; K = V = 64, 128): random q, k (L2-normalised rows), v, beta in (0, 1)
 * and dout; bf16 inputs are rounded before the reference sees them. Outputs and the workspace are
 * poisoned (NaN) before every run, so an unwritten element fails. Errors are ||gpu - ref|| / ||ref||
 * for o, dq, dk, dv, dbeta; bounds 1e-5 (fp32) and 2e-2 (bf16). Each case runs twice: o, dq, dk,
 * dv must repeat bit for bit (a race would show), dbeta to rounding (shared-memory atomics); the
 * second run passes the forward's saved Tm to the backward (the first lets it recompute) and forces
 * the state passes' V tile to 64 columns (the shape rule picks 32 for these small B*H).
 * First, the warp-level matrix product helper is checked alone for every operand orientation.
 *
 * Usage: test_deltarule [--small]    (--small: the small shapes only, e.g. under compute-sanitizer)
 */
#include <string.h>
#include <vector>
#include "../../kernels/deltarule.cuh"
#include "../test.h"
#include "../../ref/reference.h"

/* ---- the warp_mma helper alone: C (64x64) = op(A) op(B), inner dimension 64 ------------------ */
template <typename TX, bool TA, bool TB>
__global__ void mma_probe_kernel(float *C, const TX *A, const TX *B) {
    constexpr int LD = padded<TX>(64);
    __shared__ __align__(16) TX As[64 * LD], Bs[64 * LD];
    for (int i = threadIdx.x; i < 64 * 64; i += blockDim.x) {
        As[(i / 64) * LD + i % 64] = A[i];
        Bs[(i / 64) * LD + i % 64] = B[i];
    }
    __syncthreads();
    const int w = threadIdx.x >> 5, m0 = 16 * (w & 3), n0 = 32 * (w >> 2);
    float acc[1][4][4];
    dr::zero_acc(acc);
    dr::warp_mma<1, 4, TA, TB, 64>(acc, dr::Mat<TX>{As, LD, 64}, m0, dr::Mat<TX>{Bs, LD, 64}, n0);
    dr::for_each_pair(acc, m0, n0, [&](int r, int c, float &x0, float &x1) {
        C[r * 64 + c] = x0;
        C[r * 64 + c + 1] = x1;
    });
}

template <typename TX> static TX to_x(float x);
template <> float to_x<float>(float x) { return x; }
template <> bf16 to_x<bf16>(float x) { return __float2bfloat16(x); }
template <typename TX> static float from_x(TX x);
template <> float from_x<float>(float x) { return x; }
template <> float from_x<bf16>(bf16 x) { return __bfloat162float(x); }

template <typename TX, bool TA, bool TB> static void probe_mma(DNRng *rng, double tol, const char *tname) {
    std::vector<float> A(4096), B(4096), C(4096), R(4096);
    std::vector<TX> Ax(4096), Bx(4096);
    for (int i = 0; i < 4096; i++) {
        Ax[i] = to_x<TX>(dn_rng_normal(rng));
        Bx[i] = to_x<TX>(dn_rng_normal(rng));
        A[i] = from_x(Ax[i]);
        B[i] = from_x(Bx[i]);
    }
    for (int m = 0; m < 64; m++)
        for (int n = 0; n < 64; n++) {
            double s = 0;
            for (int k = 0; k < 64; k++) s += (double)(TA ? A[k * 64 + m] : A[m * 64 + k]) * (TB ? B[n * 64 + k] : B[k * 64 + n]);
            R[m * 64 + n] = (float)s;
        }
    TX *dA, *dB;
    float *dC;
    cudaCheck(cudaMalloc(&dA, 4096 * sizeof(TX)));
    cudaCheck(cudaMalloc(&dB, 4096 * sizeof(TX)));
    cudaCheck(cudaMalloc(&dC, 4096 * sizeof(float)));
    cudaCheck(cudaMemcpy(dA, Ax.data(), 4096 * sizeof(TX), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(dB, Bx.data(), 4096 * sizeof(TX), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemset(dC, 0xFF, 4096 * sizeof(float)));
    mma_probe_kernel<TX, TA, TB><<<1, 256>>>(dC, dA, dB);
    cudaCheckLaunch();
    cudaCheck(cudaMemcpy(C.data(), dC, 4096 * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK_REL(rel_err_f(C.data(), R.data(), 4096), tol, "warp_mma %s TA=%d TB=%d", tname, TA, TB);
    cudaCheck(cudaFree(dA));
    cudaCheck(cudaFree(dB));
    cudaCheck(cudaFree(dC));
}

/* ---- the delta rule ---------------------------------------------------------------------------- */
template <typename TX> struct Dev {
    TX *p = nullptr;
    size_t n = 0;
    explicit Dev(size_t n_) : n(n_) { cudaCheck(cudaMalloc(&p, n * sizeof(TX))); }
    ~Dev() { cudaCheck(cudaFree(p)); }
    void up(const std::vector<float> &h) {
        std::vector<TX> x(n);
        for (size_t i = 0; i < n; i++) x[i] = to_x<TX>(h[i]);
        cudaCheck(cudaMemcpy(p, x.data(), n * sizeof(TX), cudaMemcpyHostToDevice));
    }
    std::vector<float> down() const {
        std::vector<TX> x(n);
        cudaCheck(cudaMemcpy(x.data(), p, n * sizeof(TX), cudaMemcpyDeviceToHost));
        std::vector<float> h(n);
        for (size_t i = 0; i < n; i++) h[i] = from_x(x[i]);
        return h;
    }
    void poison() { cudaCheck(cudaMemset(p, 0xFF, n * sizeof(TX))); } /* NaN in fp32 and bf16 */
};

static void l2norm_rows(std::vector<float> &x, size_t rows, int D) {
    for (size_t r = 0; r < rows; r++) {
        double s = 0;
        for (int i = 0; i < D; i++) s += (double)x[r * D + i] * x[r * D + i];
        const float inv = (float)(1.0 / sqrt(s + 1e-6));
        for (int i = 0; i < D; i++) x[r * D + i] *= inv;
    }
}

template <typename TX> static void round_to(std::vector<float> &x) {
    for (auto &e : x) e = from_x(to_x<TX>(e));
}

static bool bit_equal(const std::vector<float> &a, const std::vector<float> &b) {
    return memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

template <typename TX>
static void run_case(int B, int T, int H, int D, DNRng *rng, double tol, const char *tname) {
    const size_t N = (size_t)B * T * H, nx = N * D;
    const float scale = 1.0f / sqrtf((float)D);
    std::vector<float> q(nx), k(nx), v(nx), beta(N), dout(nx);
    fill_randn_f(q.data(), nx, rng, 1.0f);
    fill_randn_f(k.data(), nx, rng, 1.0f);
    fill_randn_f(v.data(), nx, rng, 1.0f);
    fill_randn_f(dout.data(), nx, rng, 1.0f);
    for (size_t i = 0; i < N; i++) beta[i] = 0.02f + 0.96f * dn_rng_uniform(rng);
    l2norm_rows(q, N, D);
    l2norm_rows(k, N, D);
    round_to<TX>(q); round_to<TX>(k); round_to<TX>(v); round_to<TX>(beta); round_to<TX>(dout);

    std::vector<float> o_ref(nx, 0.0f), dq_ref(nx, 0.0f), dk_ref(nx, 0.0f), dv_ref(nx, 0.0f), db_ref(N, 0.0f);
    ref_delta_rule_chunk_forward(o_ref.data(), NULL, q.data(), k.data(), v.data(), beta.data(), NULL, B, T, H, D, D,
                                 scale, 64);
    ref_delta_rule_chunk_backward(dq_ref.data(), dk_ref.data(), dv_ref.data(), db_ref.data(), NULL, dout.data(), NULL,
                                  q.data(), k.data(), v.data(), beta.data(), NULL, B, T, H, D, D, scale, 64);

    Dev<TX> dq_(nx), dk_(nx), dv_(nx), db_(N), o_(nx), q_(nx), k_(nx), v_(nx), beta_(N), dout_(nx);
    q_.up(q); k_.up(k); v_.up(v); beta_.up(beta); dout_.up(dout);
    const size_t wsb = deltarule_workspace_size<TX>(B, T, H, D, D), svb = deltarule_saved_size<TX>(B, T, H);
    void *ws, *saved;
    cudaCheck(cudaMalloc(&ws, wsb));
    cudaCheck(cudaMalloc(&saved, svb));
    std::vector<float> res[2][5];
    for (int rep = 0; rep < 2; rep++) { /* rep 0: by shape, Tm recomputed; rep 1: V tiles of 64, saved Tm */
        TX *sv = rep ? (TX *)saved : NULL;
        dr::force_bv() = rep ? 64 : 0;
        o_.poison(); dq_.poison(); dk_.poison(); dv_.poison(); db_.poison();
        cudaCheck(cudaMemset(ws, 0xFF, wsb));
        cudaCheck(cudaMemset(saved, 0xFF, svb));
        deltarule_forward<TX>(o_.p, sv, q_.p, k_.p, v_.p, beta_.p, scale, ws, B, T, H, D, D, 0);
        cudaCheck(cudaMemset(ws, 0xFF, wsb));
        deltarule_backward<TX>(dq_.p, dk_.p, dv_.p, db_.p, dout_.p, sv, q_.p, k_.p, v_.p, beta_.p, scale, ws, B, T,
                               H, D, D, 0);
        cudaCheck(cudaDeviceSynchronize());
        res[rep][0] = o_.down(); res[rep][1] = dq_.down(); res[rep][2] = dk_.down();
        res[rep][3] = dv_.down(); res[rep][4] = db_.down();
    }
    dr::force_bv() = 0;
    cudaCheck(cudaFree(ws));
    cudaCheck(cudaFree(saved));
    const char *names[5] = {"o", "dq", "dk", "dv", "dbeta"};
    const std::vector<float> *refs[5] = {&o_ref, &dq_ref, &dk_ref, &dv_ref, &db_ref};
    for (int i = 0; i < 5; i++)
        CHECK_REL(rel_err_f(res[0][i].data(), refs[i]->data(), refs[i]->size()), tol,
                  "%s B=%d T=%4d H=%d K=V=%3d %-5s", tname, B, T, H, D, names[i]);
    for (int i = 0; i < 4; i++)
        CHECK(bit_equal(res[0][i], res[1][i]), "%s B=%d T=%d H=%d D=%d: %s differs between two runs", tname, B, T, H,
              D, names[i]);
    CHECK(rel_err_f(res[1][4].data(), res[0][4].data(), N) < 1e-5, "%s B=%d T=%d H=%d D=%d: dbeta run-to-run", tname,
          B, T, H, D);
}

int main(int argc, char **argv) {
    const bool small = argc > 1 && strcmp(argv[1], "--small") == 0;
    DNRng rng;
    dn_rng_seed(&rng, 42);
    printf("seed 42%s\n", small ? " (small shapes only)" : "");
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s\n", prop.name);

    probe_mma<float, false, false>(&rng, 1e-6, "fp32");
    probe_mma<float, true, true>(&rng, 1e-6, "fp32");
    probe_mma<bf16, false, false>(&rng, 1e-5, "bf16");
    probe_mma<bf16, false, true>(&rng, 1e-5, "bf16");
    probe_mma<bf16, true, false>(&rng, 1e-5, "bf16");
    probe_mma<bf16, true, true>(&rng, 1e-5, "bf16");

    struct Shape { int B, T, H, D, is_small; };
    const Shape shapes[] = {
        {1, 1, 1, 64, 1},    {1, 65, 3, 64, 1},  {2, 63, 1, 128, 1},  {1, 130, 1, 128, 1},
        {2, 64, 3, 128, 0},  {2, 64, 1, 64, 0},  {1, 65, 1, 128, 0},  {2, 1, 3, 128, 0},
        {1, 200, 3, 64, 0},  {2, 200, 1, 128, 0}, {2, 1000, 1, 64, 0}, {1, 1000, 3, 128, 0},
    };
    for (const Shape &s : shapes) {
        if (small && !s.is_small) continue;
        run_case<float>(s.B, s.T, s.H, s.D, &rng, 1e-5, "fp32");
        run_case<bf16>(s.B, s.T, s.H, s.D, &rng, 2e-2, "bf16");
    }
    return test_summary("test_deltarule_gpu");
}
