/*
 * fuzz_state.c -- libFuzzer target for the training-state reader (model.h: dn_state_read). The
 * input is the whole "<checkpoint>.state" file, read against the parameter table of
 * fz_state_config() (fuzz.h). On success the position and step are non-negative and the note is
 * a NUL-terminated string; on failure err holds a message. The Adam buffers have guard floats on
 * both sides that must come back untouched.
 */
#include "fuzz.h"

static DNParamTable g_table;
static float *g_buf; /* [guard][m: total][guard][v: total][guard] */
#define GUARD 16
#define GUARD_VALUE 12345.0f

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    DNConfig c;
    char err[DN_ERR_LEN];
    fz_state_config(&c);
    if (dn_config_validate(&c, err, sizeof err) || dn_build_param_table(&g_table, &c, err, sizeof err)) {
        fprintf(stderr, "fuzz_state: %s\n", err);
        exit(1);
    }
    g_buf = (float *)malloc((2 * g_table.total + 3 * GUARD) * sizeof(float));
    if (!g_buf) exit(1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[600], err[DN_ERR_LEN];
    fz_write(path, sizeof path, "model.safetensors.state", data, size);
    size_t T = g_table.total, n = 2 * T + 3 * GUARD;
    for (size_t i = 0; i < n; i++) g_buf[i] = GUARD_VALUE;
    float *m = g_buf + GUARD, *v = m + T + GUARD;
    DNTrainState st;
    err[0] = 0;
    if (dn_state_read(path, &g_table, m, v, &st, err, sizeof err) == 0) {
        if (st.step < 0 || st.data_shard < 0 || st.data_pos < 0)
            fz_fail("accepted step %ld, data position (%ld, %ld)", st.step, st.data_shard, st.data_pos);
        if (!memchr(st.note, 0, sizeof st.note)) fz_fail("note is not NUL-terminated");
    } else if (!err[0]) {
        fz_fail("dn_state_read failed with an empty message");
    }
    for (size_t i = 0; i < GUARD; i++)
        if (g_buf[i] != GUARD_VALUE || m[T + i] != GUARD_VALUE || v[T + i] != GUARD_VALUE)
            fz_fail("dn_state_read wrote outside the Adam buffers (guard %zu)", i);
    return 0;
}
