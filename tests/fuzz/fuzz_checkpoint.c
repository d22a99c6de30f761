/*
 * fuzz_checkpoint.c -- libFuzzer target for the checkpoint reader (model.h: dn_checkpoint_read,
 * dn_checkpoint_read_meta). The input is the whole safetensors file. Besides "no memory error,
 * no UB", the reader's contract is checked: on success the config validates, its parameter table
 * builds, every real parameter is finite and every padding row is zero; on failure *params is NULL
 * and err holds a message.
 */
#include <math.h>

#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[600], err[DN_ERR_LEN], why[DN_ERR_LEN];
    fz_write(path, sizeof path, "model.safetensors", data, size);
    DNConfig cfg;
    static float sentinel;
    float *w = &sentinel; /* must become NULL on failure */
    err[0] = 0;
    if (dn_checkpoint_read(path, &cfg, &w, err, sizeof err) == 0) {
        if (!w) fz_fail("dn_checkpoint_read returned 0 with no parameters");
        if (dn_config_validate(&cfg, why, sizeof why)) fz_fail("accepted an invalid config: %s", why);
        DNParamTable t;
        if (dn_build_param_table(&t, &cfg, why, sizeof why)) fz_fail("accepted config has no table: %s", why);
        size_t real = 0;
        for (int i = 0; i < t.n_params; i++) {
            const DNParam *p = &t.params[i];
            for (size_t j = 0; j < p->mem_numel; j++) {
                float x = w[p->offset + j];
                if (j < p->numel ? !isfinite(x) : x != 0.0f)
                    fz_fail("tensor %s element %zu is %g", p->name, j, (double)x);
            }
            real += p->numel;
        }
        if (real != t.total_real) fz_fail("table counts %zu real parameters, tensors hold %zu", t.total_real, real);
        dn_free_param_table(&t);
        free(w);
    } else {
        if (w) fz_fail("dn_checkpoint_read failed but left *params non-NULL");
        if (!err[0]) fz_fail("dn_checkpoint_read failed with an empty message");
    }
    char v[64];
    err[0] = 0;
    if (dn_checkpoint_read_meta(path, "format_version", v, sizeof v, err, sizeof err) != 0 && !err[0])
        fz_fail("dn_checkpoint_read_meta failed with an empty message");
    return 0;
}
