/*
 * test_linattn.c -- linear attention ('L' layers, ref/linattn.c) and models without MLPs:
 * chunkwise == recurrent (output, final state, every gradient, dS0 included) at odd shapes with a
 * non-zero initial state; finite differences (float64, central) of every gradient of the
 * recurrence; S0 == S_final in place (one decode step); the whole model with 'L' layers and with
 * no_mlp checked by finite differences of every parameter, chunkwise == sequential inside it; the
 * parameter table (no b_proj for 'L', no MLP tensors with no_mlp) and a checkpoint round trip.
 */
#include <unistd.h>
#include "test.h"
#include "../ref/reference.h"

/* Loss sum(o * W) + sum(S_final * WS) of the recurrence, for the finite differences. */
static double la_loss(const double *q, const double *k, const double *v, const double *S0, const double *W,
                      const double *WS, int B, int T, int H, int K, int V, double scale) {
    size_t no = (size_t)B * T * H * V, ns = (size_t)B * H * K * V;
    double *o = xcalloc(no, sizeof(double)), *S = xcalloc(ns, sizeof(double));
    ref_linear_attn_recurrent_forward_f64(o, S, q, k, v, S0, B, T, H, K, V, scale);
    double l = 0;
    for (size_t i = 0; i < no; i++) l += o[i] * W[i];
    for (size_t i = 0; i < ns; i++) l += S[i] * WS[i];
    free(o); free(S);
    return l;
}

static void layer_checks(void) {
    const int B = 2, T = 37, H = 3, K = 5, V = 7, C = 8;
    const double scale = 1.0 / sqrt((double)K);
    const size_t nq = (size_t)B * T * H * K, nv = (size_t)B * T * H * V, ns = (size_t)B * H * K * V;
    DNRng r;
    dn_rng_seed(&r, 42);
    double *q = xcalloc(nq, 8), *k = xcalloc(nq, 8), *v = xcalloc(nv, 8), *S0 = xcalloc(ns, 8), *W = xcalloc(nv, 8), *WS = xcalloc(ns, 8);
    fill_randn_d(q, nq, &r, 0.5); fill_randn_d(k, nq, &r, 0.5); fill_randn_d(v, nv, &r, 1.0);
    fill_randn_d(S0, ns, &r, 0.5); fill_randn_d(W, nv, &r, 1.0); fill_randn_d(WS, ns, &r, 1.0);
    /* forward: chunkwise vs recurrent */
    double *o1 = xcalloc(nv, 8), *o2 = xcalloc(nv, 8), *S1 = xcalloc(ns, 8), *S2 = xcalloc(ns, 8);
    ref_linear_attn_recurrent_forward_f64(o1, S1, q, k, v, S0, B, T, H, K, V, scale);
    ref_linear_attn_chunk_forward_f64(o2, S2, q, k, v, S0, B, T, H, K, V, scale, C);
    CHECK_REL(rel_err_d(o2, o1, nv), 1e-13, "linear attention output, chunk %d vs recurrent (T=%d, K=%d, V=%d)", C, T, K, V);
    CHECK_REL(rel_err_d(S2, S1, ns), 1e-13, "linear attention final state, chunk vs recurrent");
    /* in place (S0 == S_final), as infer.c's decode step uses it */
    double *Sp = xcalloc(ns, 8);
    memcpy(Sp, S0, ns * 8);
    ref_linear_attn_chunk_forward_f64(o2, Sp, q, k, v, Sp, B, T, H, K, V, scale, C);
    CHECK_REL(rel_err_d(Sp, S1, ns), 1e-13, "chunkwise with S0 == S_final (in place)");
    memcpy(Sp, S0, ns * 8);
    for (int t = 0; t < T; t++) { /* one token at a time, B = 1 */
        double o[H * V];
        ref_linear_attn_recurrent_forward_f64(o, Sp, q + (size_t)t * H * K, k + (size_t)t * H * K, v + (size_t)t * H * V, Sp, 1, 1, H, K, V, scale);
        if (t == T - 1) CHECK_REL(rel_err_d(o, o1 + (size_t)(T - 1) * H * V, (size_t)H * V), 1e-13, "token-by-token decode, last output");
    }
    /* backward: chunkwise vs recurrent, then finite differences of the recurrence */
    double *g[2][4];
    for (int m = 0; m < 2; m++) {
        g[m][0] = xcalloc(nq, 8); g[m][1] = xcalloc(nq, 8); g[m][2] = xcalloc(nv, 8); g[m][3] = xcalloc(ns, 8);
    }
    ref_linear_attn_recurrent_backward_f64(g[0][0], g[0][1], g[0][2], g[0][3], W, WS, q, k, v, S0, B, T, H, K, V, scale);
    ref_linear_attn_chunk_backward_f64(g[1][0], g[1][1], g[1][2], g[1][3], W, WS, q, k, v, S0, B, T, H, K, V, scale, C);
    const char *names[4] = {"dq", "dk", "dv", "dS0"};
    const size_t sizes[4] = {nq, nq, nv, ns};
    for (int i = 0; i < 4; i++) CHECK_REL(rel_err_d(g[1][i], g[0][i], sizes[i]), 1e-12, "%s, chunk vs recurrent", names[i]);
    double *x[4] = {q, k, v, S0};
    const double h = 1e-6;
    for (int i = 0; i < 4; i++) {
        double num = 0, den = 0;
        for (size_t j = 0; j < sizes[i]; j += 3) { /* every third element: all of them is slow and says nothing more */
            const double save = x[i][j];
            x[i][j] = save + h;
            const double lp = la_loss(q, k, v, S0, W, WS, B, T, H, K, V, scale);
            x[i][j] = save - h;
            const double lm = la_loss(q, k, v, S0, W, WS, B, T, H, K, V, scale);
            x[i][j] = save;
            const double fd = (lp - lm) / (2 * h), d = fd - g[0][i][j];
            num += d * d;
            den += fd * fd;
        }
        CHECK_REL(sqrt(num / den), 1e-7, "%s of the recurrence vs finite differences", names[i]);
    }
    for (int m = 0; m < 2; m++) for (int i = 0; i < 4; i++) free(g[m][i]);
    free(q); free(k); free(v); free(S0); free(W); free(WS); free(o1); free(o2); free(S1); free(S2); free(Sp);
}

/* Every gradient of a small model by finite differences; chunk 0 (sequential) vs chunk 4. */
static void model_fd(const char *layers, int no_mlp) {
    DNConfig c;
    test_config(&c, layers, 12, 2, 6, 20, 37, 40, 2, 1, 3, 0);
    c.no_mlp = no_mlp;
    DNParamTable t;
    char err[256];
    if (dn_build_param_table(&t, &c, err, sizeof err)) { CHECK(0, "param table: %s", err); return; }
    const int B = 2, T = 9, N = B * T;
    DNRng r;
    dn_rng_seed(&r, 7 + (uint64_t)no_mlp);
    double *params = test_random_params(&t, &r), *grads = xcalloc(t.total, 8), *g2 = xcalloc(t.total, 8);
    int *in = xcalloc(N, sizeof(int)), *tg = xcalloc(N, sizeof(int));
    for (int i = 0; i < N; i++) { in[i] = (int)(dn_rng_u64(&r) % 37); tg[i] = (int)(dn_rng_u64(&r) % 37); }
    RefModel_f64 *m = ref_model_create_f64(&t, B, T, 0), *mc = ref_model_create_f64(&t, B, T, 4);
    const double loss = ref_model_forward_f64(m, params, in, tg), lc = ref_model_forward_f64(mc, params, in, tg);
    ref_model_backward_f64(m, params, grads);
    ref_model_backward_f64(mc, params, g2);
    CHECK_REL(fabs(lc - loss) / loss, 1e-13, "model %s%s: loss, chunk 4 vs sequential", layers, no_mlp ? " (no MLP)" : "");
    CHECK_REL(rel_err_d(g2, grads, t.total), 1e-12, "model %s%s: gradients, chunk 4 vs sequential", layers, no_mlp ? " (no MLP)" : "");
    const double h = 1e-6;
    double worst = 0;
    int bad = 0;
    for (int i = 0; i < t.n_params; i++) {
        const DNParam *p = &t.params[i];
        double num = 0, den = 0;
        for (size_t j = 0; j < p->numel; j++) {
            double *w = &params[p->offset + j], save = *w;
            *w = save + h;
            const double lp = ref_model_forward_f64(m, params, in, tg);
            *w = save - h;
            const double lm = ref_model_forward_f64(m, params, in, tg);
            *w = save;
            const double fd = (lp - lm) / (2 * h), d = fd - grads[p->offset + j];
            num += d * d;
            den += fd * fd;
        }
        const double rel = den > 0 ? sqrt(num / den) : 1;
        if (rel > worst) worst = rel;
        if (rel > 1e-6) { bad++; printf("FAIL %s: rel err %.3e\n", p->name, rel); }
    }
    CHECK(bad == 0, "model %s%s: %d tensors off", layers, no_mlp ? " (no MLP)" : "", bad);
    printf("  ok  full-model FD, layers %s%s: %d tensors, worst rel err %.3e (tol 1e-6)\n", layers, no_mlp ? ", no MLP" : "",
           t.n_params, worst);
    ref_model_free_f64(m); ref_model_free_f64(mc);
    free(params); free(grads); free(g2); free(in); free(tg);
    dn_free_param_table(&t);
}

/* The table: 'L' has DeltaNet's tensors without b_proj; no_mlp drops mlp_norm, gate, up, down. A
 * checkpoint keeps both, and says that fla cannot load it. */
static void table_and_checkpoint(void) {
    DNConfig c, back;
    test_config(&c, "LDG", 12, 2, 6, 20, 37, 40, 2, 1, 3, 1);
    c.no_mlp = 1;
    DNParamTable t;
    char err[DN_ERR_LEN];
    CHECK(dn_build_param_table(&t, &c, err, sizeof err) == 0, "table: %s", err);
    CHECK(dn_find_param(&t, "model.layers.0.attn.b_proj.weight") < 0 && dn_find_param(&t, "model.layers.1.attn.b_proj.weight") >= 0,
          "'L' has no b_proj, 'D' has one");
    CHECK(dn_find_param(&t, "model.layers.0.attn.q_conv1d.weight") >= 0 && dn_find_param(&t, "model.layers.0.attn.o_norm.weight") >= 0,
          "'L' keeps DeltaNet's convs and output norm");
    CHECK(dn_find_param(&t, "model.layers.0.mlp_norm.weight") < 0 && dn_find_param(&t, "model.layers.2.mlp.down_proj.weight") < 0,
          "no_mlp: no MLP tensors");
    float *w = xcalloc(t.total, sizeof(float)), *w2 = NULL;
    dn_init_params(&t, w, 3);
    char path[] = "/tmp/test_linattn_XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    CHECK(dn_checkpoint_write(path, &t, w, DN_F32, NULL, err, sizeof err) == 0, "write: %s", err);
    CHECK(dn_checkpoint_read(path, &back, &w2, err, sizeof err) == 0 && back.no_mlp == 1 && !strcmp(back.layers, "LDG") &&
          w2 && memcmp(w, w2, t.total * sizeof(float)) == 0, "checkpoint round trip keeps no_mlp, 'L' and the weights: %s", err);
    char v[512];
    CHECK(dn_checkpoint_read_meta(path, "fla_config", v, sizeof v, err, sizeof err) == 0 && strstr(v, "unsupported"),
          "fla_config says fla cannot load it: %s", v);
    c.no_mlp = 2;
    CHECK(dn_config_validate(&c, err, sizeof err) == -1 && strstr(err, "no_mlp"), "no_mlp 2 refused: %s", err);
    CHECK(dn_config_set_layers(&c, "DLX", err, sizeof err) == -1 && strstr(err, "L (linear attention)"), "unknown kind names L: %s", err);
    unlink(path);
    free(w); free(w2);
    dn_free_param_table(&t);
}

int main(void) {
    layer_checks();
    model_fd("LDG", 0);
    model_fd("LD", 1);
    table_and_checkpoint();
    return test_summary("test_linattn");
}
