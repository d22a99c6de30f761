/*
 * test_train.c -- a CPU training loop (AdamW, gradient clipping) on a tiny hybrid model that must
 * overfit one fixed batch of the bundled TinyShakespeare text (byte-level tokens, vocab 256):
 * if any gradient were wired wrong, the loss would not fall by the stated factor. Also checks
 * that AdamW's weight decay touches only the tensors marked for it.
 */
#include "test.h"
#include "../ref/reference.h"

#define STEPS 150
#define FACTOR 100.0 /* the loss must fall at least this many times below its start */

static unsigned char *read_text(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *b = xcalloc(1 << 16, 1);
    *n = fread(b, 1, 1 << 16, f);
    fclose(f);
    return b;
}

static void tiny_config(DNConfig *c) { test_config(c, "DSD", 32, 2, 16, 64, 256, 256, 2, 1, 8, 0); }

static void test_overfit(void) {
    size_t n = 0;
    unsigned char *text = read_text("data/tinyshakespeare/input.txt", &n);
    CHECK(text != NULL && n > 1000, "data/tinyshakespeare/input.txt must be readable (run tests from the repo root)");
    if (!text) return;
    DNConfig c;
    tiny_config(&c);
    DNParamTable t;
    char err[DN_ERR_LEN];
    CHECK(dn_build_param_table(&t, &c, err, sizeof err) == 0, "table: %s", err);
    int B = 4, T = 32, N = B * T;
    int *in = xcalloc((size_t)N, sizeof(int)), *tg = xcalloc((size_t)N, sizeof(int));
    for (int b = 0; b < B; b++)
        for (int i = 0; i < T; i++) {
            in[b * T + i] = text[(size_t)b * 1000 + i];
            tg[b * T + i] = text[(size_t)b * 1000 + i + 1];
        }
    float *p = xcalloc(t.total, sizeof(float)), *g = xcalloc(t.total, sizeof(float));
    float *m = xcalloc(t.total, sizeof(float)), *v = xcalloc(t.total, sizeof(float));
    dn_init_params(&t, p, 1337);
    RefModel *model = ref_model_create(&t, B, T, 16);
    float first = 0, last = 0;
    for (int step = 1; step <= STEPS; step++) {
        memset(g, 0, t.total * sizeof(float));
        float loss = ref_model_forward(model, p, in, tg);
        ref_model_backward(model, p, g);
        float norm = ref_grad_norm(g, t.total);
        float scale = norm > 1.0f ? 1.0f / norm : 1.0f;
        ref_adamw_update(&t, p, g, m, v, step, 3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, scale);
        if (step == 1) first = loss;
        last = loss;
        if (step == 1 || step % 25 == 0) printf("  step %3d  loss %.4f  grad norm %.3f\n", step, loss, norm);
        if (!isfinite(loss)) break;
    }
    CHECK(fabs(first - log(256.0)) < 0.1, "initial loss %.4f should be near ln 256 = %.4f", first, log(256.0));
    CHECK(last * FACTOR < first, "loss fell from %.4f to %.4f: less than %.0fx", first, last, FACTOR);
    printf("  ok  overfit one TinyShakespeare batch: loss %.4f -> %.4f (%.1fx, needed %.0fx) in %d AdamW steps\n",
           first, last, first / last, FACTOR, STEPS);
    ref_model_free(model);
    free(p); free(g); free(m); free(v); free(in); free(tg); free(text);
    dn_free_param_table(&t);
}

/* With zero gradients AdamW only decays: matrices shrink by (1 - lr*wd), gains stay put. */
static void test_decay_mask(void) {
    DNConfig c;
    tiny_config(&c);
    DNParamTable t;
    char err[DN_ERR_LEN];
    dn_build_param_table(&t, &c, err, sizeof err);
    float *p = xcalloc(t.total, sizeof(float)), *p0 = xcalloc(t.total, sizeof(float));
    float *g = xcalloc(t.total, sizeof(float)), *m = xcalloc(t.total, sizeof(float)), *v = xcalloc(t.total, sizeof(float));
    dn_init_params(&t, p, 5);
    memcpy(p0, p, t.total * sizeof(float));
    ref_adamw_update(&t, p, g, m, v, 1, 0.01f, 0.9f, 0.95f, 1e-8f, 0.5f, 1.0f);
    int ok = 1;
    for (int i = 0; i < t.n_params; i++) {
        const DNParam *q = &t.params[i];
        float want = q->decay ? 1.0f - 0.01f * 0.5f : 1.0f;
        for (size_t j = q->offset; j < q->offset + q->numel; j++) ok &= fabsf(p[j] - p0[j] * want) <= 1e-6f * fabsf(p0[j]) + 1e-12f;
        ok &= q->decay == (q->ndim >= 2);
    }
    CHECK(ok, "AdamW decays exactly the matrices (2-D and conv weights), never the norm gains");
    free(p); free(p0); free(g); free(m); free(v);
    dn_free_param_table(&t);
}

int main(void) {
    test_decay_mask();
    test_overfit();
    return test_summary("test_train");
}
