/*
 * test_sigmoid.cu -- kernels/sigmoid.cuh against the CPU reference; the checks, tolerances and flags
 * (--small, --fp32, --bf16) are those of kernel_test.cuh.
 */
#include "../../kernels/sigmoid.cuh"
#include "kernel_test.cuh"

/* ---- sigmoid ---------------------------------------------------------------------------------- */

template <typename T>
static void test_sigmoid(int n, DNRng *r) {
    const char *tn = tname((T *)0);
    Vec x = rand_vec<T>(n, r, 2.0f), ry(n), dy = rand_vec<float>(n, r, 1.0f);
    ref_sigmoid_forward(ry.data(), x.data(), n);
    T *d_x = upload<T>(x);
    float *d_y = alloc_poisoned<float>(n); /* float beta from floatX logits, as the trainer may use */
    sigmoid_forward(d_y, d_x, n, 0);
    Vec y = download(d_y, n);
    CHECK_REL(rel(y, ry), 1e-5, "%s sigmoid fwd n=%d", tn, n);
    Vec rdx(n, 0.0f);
    ref_sigmoid_backward(rdx.data(), dy.data(), y.data(), n);
    float *d_dy = upload<float>(dy);
    T *d_dx = alloc_poisoned<T>(n);
    sigmoid_backward(d_dx, d_dy, d_y, n, 0);
    CHECK_REL(rel(download(d_dx, n), rdx), tol<T>(), "%s sigmoid bwd n=%d", tn, n);
    /* same-type, in place */
    T *d_z = upload<T>(x);
    sigmoid_forward(d_z, d_z, n, 0);
    Vec rz = ry;
    CHECK_REL(rel(download(d_z, n), rz), tol<T>(), "%s sigmoid fwd in place n=%d", tn, n);
    cudaFree(d_x); cudaFree(d_y); cudaFree(d_dy); cudaFree(d_dx); cudaFree(d_z);
}

template <typename T>
static void run(DNRng *r) {
    printf("---- %s\n", tname((T *)0));
    test_sigmoid<T>(1, r);
    test_sigmoid<T>(7 * 33 * 6, r);
}

int main(int argc, char **argv) {
    int rc = kernel_test_main(argc, argv, "test_sigmoid_gpu", run<float>, run<bf16>);
    return rc;
}
