/*
 * test_checkpoint.c -- model.h: presets and parameter counts, config validation, the safetensors
 * checkpoint (bit-exact F32 round trip, BF16 rounding, metadata, atomic write) and every way a file
 * can be corrupt, each refused with a one-line message that names the file, never a crash;
 * and the training-state file beside it.
 */
#include "test.h"
#include <stdint.h>
#include <unistd.h>
#include <cjson/cJSON.h>

static char dir[256];

static void path_in(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", dir, name); }

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = xcalloc((size_t)sz + 1, 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

static void spit(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
}

/* Rebuild a file from a new JSON header and the old data area. */
static void write_with_header(const char *path, const char *json, const unsigned char *data, size_t ndata) {
    uint64_t hl = strlen(json);
    FILE *f = fopen(path, "wb");
    fwrite(&hl, 8, 1, f);
    fwrite(json, 1, hl, f);
    fwrite(data, 1, ndata, f);
    fclose(f);
}

static void hybrid_config(DNConfig *c, int tied) {
    memset(c, 0, sizeof *c);
    c->vocab_size = 300; c->padded_vocab = 384; c->d_model = 32; c->n_head = 2; c->head_dim = 16;
    c->conv_size = 4; c->hidden_size = 96; c->norm_eps = 1e-6f; c->tie_embeddings = tied;
    c->attn_heads = 4; c->attn_kv_heads = 2; c->window = 7; c->rope_base = 10000.0f;
    char err[128];
    dn_config_set_layers(c, "DSDG", err, sizeof err);
}

static void test_presets(void) {
    DNConfig c;
    DNParamTable t;
    char err[DN_ERR_LEN];
    CHECK(dn_config_preset(&c, "d12") == 0, "d12 preset");
    CHECK(dn_build_param_table(&t, &c, err, sizeof err) == 0, "d12 table: %s", err);
    printf("  ok  d12: %zu parameters (%d tensors), padded vocab %d, MLP hidden %d\n", t.total_real, t.n_params, c.padded_vocab, c.hidden_size);
    CHECK(t.total_real > 123000000 && t.total_real < 125000000, "d12 should have ~124M parameters, has %zu", t.total_real);
    CHECK(c.padded_vocab == 50304 && c.hidden_size == 2048 && c.head_dim == 128, "d12 sizes");
    dn_free_param_table(&t);
    CHECK(dn_config_preset(&c, "340M") == 0, "340M preset");
    CHECK(dn_build_param_table(&t, &c, err, sizeof err) == 0, "340M table: %s", err);
    printf("  ok  340M: %zu parameters\n", t.total_real);
    CHECK(fabs((double)t.total_real - 341.6e6) / 341.6e6 < 0.005, "340M should have ~341.6M parameters, has %zu", t.total_real);
    dn_free_param_table(&t);
    CHECK(dn_config_preset(&c, "nope") == -1, "unknown preset refused");
    CHECK(dn_default_hidden(64) == 256 && dn_default_hidden(768) == 2048 && dn_default_hidden(1024) == 2816, "default hidden sizes");
    /* table offsets tile the buffer and names are unique */
    hybrid_config(&c, 0);
    dn_build_param_table(&t, &c, err, sizeof err);
    size_t pos = 0;
    int tiled = 1, unique = 1;
    for (int i = 0; i < t.n_params; i++) {
        tiled &= t.params[i].offset == pos;
        pos += t.params[i].mem_numel;
        for (int j = 0; j < i; j++) unique &= strcmp(t.params[i].name, t.params[j].name) != 0;
    }
    CHECK(tiled && pos == t.total && unique, "parameter table tiles the buffer with unique names");
    CHECK(t.layer[1].p[DN_P_B] == DN_NO_PARAM && t.layer[0].p[DN_P_B] != DN_NO_PARAM, "per-layer offsets follow the layer kind");
    CHECK(t.params[dn_find_param(&t, "model.layers.1.attn.k_proj.weight")].shape[0] == 16, "GQA k_proj rows = kv_heads * head size");
    CHECK(dn_find_param(&t, "lm_head.weight") >= 0, "untied model has lm_head");
    dn_free_param_table(&t);
}

static void expect_bad_config(DNConfig c, const char *what, const char *needle) {
    char err[DN_ERR_LEN] = "";
    int rc = dn_config_validate(&c, err, sizeof err);
    CHECK(rc == -1 && strstr(err, needle), "%s should be refused mentioning '%s' (got rc %d, '%s')", what, needle, rc, err);
}

static void test_config_validation(void) {
    DNConfig c, b;
    hybrid_config(&c, 0);
    char err[DN_ERR_LEN];
    CHECK(dn_config_validate(&c, err, sizeof err) == 0, "good config: %s", err);
    b = c; b.n_head = 3; expect_bad_config(b, "heads*head_dim != d_model", "d_model");
    b = c; b.n_layer = 0; b.layers[0] = 0; expect_bad_config(b, "zero layers", "n_layer");
    b = c; b.attn_kv_heads = 3; expect_bad_config(b, "kv heads not dividing heads", "attn_kv_heads");
    b = c; b.padded_vocab = 10; expect_bad_config(b, "padded vocab below vocab", "padded_vocab");
    b = c; b.layers[2] = 'X'; expect_bad_config(b, "unknown layer kind", "kind");
    b = c; b.window = 0; expect_bad_config(b, "zero window with S layers", "window");
    b = c; b.norm_eps = 0; expect_bad_config(b, "zero eps", "norm_eps");
    CHECK(dn_config_set_layers(&b, "DDQ", err, sizeof err) == -1 && strstr(err, "'Q'"), "layer string with Q refused: %s", err);
}

/* Expect dn_checkpoint_read to refuse path with a message containing needle and the path. */
static void expect_refused(const char *path, const char *what, const char *needle) {
    DNConfig c;
    float *p = (float *)0x1;
    char err[DN_ERR_LEN] = "";
    int rc = dn_checkpoint_read(path, &c, &p, err, sizeof err);
    int ok = rc == -1 && p == NULL && strstr(err, needle) != NULL && strstr(err, path) != NULL && !strchr(err, '\n');
    CHECK(ok, "%s: expected refusal mentioning '%s', got rc=%d err='%s'", what, needle, rc, err);
    if (ok) printf("  ok  refused %-34s -> %s\n", what, err + strlen(path) + 2);
    if (rc == 0) free(p);
}

/* Write the edited header root (then freed) over data to path and expect the reader to refuse it. */
static void expect_refused_json(const char *path, cJSON *root, const unsigned char *data, size_t ndata,
                                const char *what, const char *needle) {
    char *j = cJSON_PrintUnformatted(root);
    write_with_header(path, j, data, ndata);
    expect_refused(path, what, needle);
    free(j);
    cJSON_Delete(root);
}

static void test_roundtrip_and_corruption(void) {
    DNConfig c, c2;
    DNParamTable t;
    char err[DN_ERR_LEN], path[512], bad[512];
    for (int tied = 0; tied <= 1; tied++) {
        hybrid_config(&c, tied);
        dn_build_param_table(&t, &c, err, sizeof err);
        float *w = xcalloc(t.total, sizeof(float));
        dn_init_params(&t, w, 7 + (uint64_t)tied);
        w[t.params[1].offset] = -0.0f; w[t.params[1].offset + 1] = 1e-40f; /* signed zero, subnormal */
        path_in(path, sizeof path, "model.safetensors");
        const char *extra[] = {"step", "123", NULL, NULL};
        CHECK(dn_checkpoint_write(path, &t, w, DN_F32, extra, err, sizeof err) == 0, "write: %s", err);
        float *r = NULL;
        CHECK(dn_checkpoint_read(path, &c2, &r, err, sizeof err) == 0, "read back: %s", err);
        CHECK(r && memcmp(r, w, t.total * sizeof(float)) == 0, "F32 round trip is bit-exact (tied=%d)", tied);
        CHECK(memcmp(&c, &c2, sizeof c) == 0, "config round trip exact (tied=%d)", tied);
        char v[64];
        CHECK(dn_checkpoint_read_meta(path, "step", v, sizeof v, err, sizeof err) == 0 && !strcmp(v, "123"), "extra metadata kept");
        CHECK(dn_checkpoint_read_meta(path, "fla_config", v, sizeof v, err, sizeof err) == 0 && strstr(v, "delta_net"), "fla_config metadata present");
        char tmpname[600];
        snprintf(tmpname, sizeof tmpname, "%s.tmp.%ld", path, (long)getpid());
        CHECK(access(tmpname, F_OK) != 0, "no temporary file left behind");
        free(r);
        /* BF16: every value is the bf16 rounding of the original */
        CHECK(dn_checkpoint_write(path, &t, w, DN_BF16, NULL, err, sizeof err) == 0, "bf16 write: %s", err);
        CHECK(dn_checkpoint_read(path, &c2, &r, err, sizeof err) == 0, "bf16 read: %s", err);
        int same = 1;
        for (size_t i = 0; i < t.total; i++) same &= r[i] == dn_bf16_to_f32(dn_f32_to_bf16(w[i]));
        CHECK(same, "BF16 checkpoint reads back as bf16-rounded weights");
        CHECK_REL(rel_err_f(r, w, t.total), 4e-3, "BF16 checkpoint vs F32 weights (tied=%d)", tied);
        free(r);
        dn_checkpoint_write(path, &t, w, DN_F32, NULL, err, sizeof err);
        free(w);
        if (tied) break; /* the corruption tests below use the tied file and its table */
        dn_free_param_table(&t);
    }

    size_t n = 0;
    unsigned char *good = slurp(path, &n);
    uint64_t hl;
    memcpy(&hl, good, 8);
    char *json = xcalloc(hl + 1, 1);
    memcpy(json, good + 8, hl);
    const unsigned char *data = good + 8 + hl;
    size_t ndata = n - 8 - hl;
    path_in(bad, sizeof bad, "bad.safetensors");

    spit(bad, good, n - 1000);
    expect_refused(bad, "truncated file", "past the end");
    spit(bad, good, 5);
    expect_refused(bad, "5-byte file", "too short");
    {
        unsigned char *b = xcalloc(n, 1);
        memcpy(b, good, n);
        uint64_t big = n * 2;
        memcpy(b, &big, 8);
        spit(bad, b, n);
        expect_refused(bad, "header length past the end", "header length");
        free(b);
    }
    {
        char *j = strdup(json);
        j[hl / 2] = '{';
        j[hl / 2 + 1] = '\0';
        write_with_header(bad, j, data, ndata);
        expect_refused(bad, "broken JSON", "not a valid JSON");
        free(j);
    }
    /* edits made on the JSON text */
    struct { const char *what, *from, *to, *needle; } edits[] = {
        {"unknown format version", "\"format_version\":\"1\"", "\"format_version\":\"7\"", "format version 7"},
        {"not a deltanet.c file", "\"format\":\"deltanet.c\"", "\"format\":\"someone.else\"", "not a deltanet.c file"},
        {"missing tensor", "\"model.norm.weight\"", "\"model.norm.weighz\"", "unexpected tensor"},
        {"wrong dtype", "\"dtype\":\"F32\"", "\"dtype\":\"F16\"", "dtype F16"},
        {"impossible config: heads*dim", "\"n_head\":\"2\"", "\"n_head\":\"3\"", "impossible config"},
        {"impossible config: zero layers", "\"n_layer\":\"4\"", "\"n_layer\":\"0\"", "impossible config"},
        {"bad integer in metadata", "\"d_model\":\"32\"", "\"d_model\":\"3x\"", "not an integer"},
        {"metadata value not a string", "\"window\":\"7\"", "\"window\":7", "not a string"},
    };
    for (size_t e = 0; e < sizeof edits / sizeof edits[0]; e++) {
        char *p = strstr(json, edits[e].from);
        CHECK(p != NULL, "test setup: '%s' not found in header", edits[e].from);
        if (!p) continue;
        size_t pre = (size_t)(p - json);
        char *j = xcalloc(hl + 64, 1);
        memcpy(j, json, pre);
        strcpy(j + pre, edits[e].to);
        strcat(j, p + strlen(edits[e].from));
        write_with_header(bad, j, data, ndata);
        expect_refused(bad, edits[e].what, edits[e].needle);
        free(j);
    }
    /* a missing tensor: drop model.norm.weight from the header (its bytes become orphaned), and
     * an extra tensor: add one that is not in the config */
    {
        cJSON *root = cJSON_Parse(json);
        cJSON_DeleteItemFromObject(root, "model.norm.weight");
        expect_refused_json(bad, root, data, ndata, "tensor removed from header", "the tensors cover");
        /* same, but also cut its bytes off: now it is plainly missing */
        root = cJSON_Parse(json);
        cJSON *nw = cJSON_GetObjectItem(root, "model.norm.weight");
        cJSON *ofs = cJSON_GetObjectItem(nw, "data_offsets");
        double b0 = cJSON_GetArrayItem(ofs, 0)->valuedouble, b1 = cJSON_GetArrayItem(ofs, 1)->valuedouble;
        CHECK(b1 == (double)ndata, "test setup: model.norm.weight is the last tensor of a tied model");
        cJSON_DeleteItemFromObject(root, "model.norm.weight");
        expect_refused_json(bad, root, data, (size_t)b0, "missing tensor", "missing tensor 'model.norm.weight'");
        /* extra tensor */
        root = cJSON_Parse(json);
        cJSON *x = cJSON_AddObjectToObject(root, "model.layers.9.attn.q_proj.weight");
        cJSON_AddStringToObject(x, "dtype", "F32");
        cJSON *sh = cJSON_AddArrayToObject(x, "shape");
        cJSON_AddItemToArray(sh, cJSON_CreateNumber(2));
        cJSON *o = cJSON_AddArrayToObject(x, "data_offsets");
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)ndata));
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)ndata + 8));
        unsigned char *d2 = xcalloc(ndata + 8, 1);
        memcpy(d2, data, ndata);
        expect_refused_json(bad, root, d2, ndata + 8, "extra tensor", "unexpected tensor 'model.layers.9");
        free(d2);
        /* wrong shape (same byte count: [32] -> [2,16]) */
        root = cJSON_Parse(json);
        nw = cJSON_GetObjectItem(root, "model.norm.weight");
        cJSON_ReplaceItemInObject(nw, "shape", cJSON_CreateIntArray((const int[]){2, 16}, 2));
        expect_refused_json(bad, root, data, ndata, "wrong shape", "shape [2,16], the config needs [32]");
        /* overlapping byte ranges: point model.norm.weight at the bytes of the tensor before it */
        root = cJSON_Parse(json);
        nw = cJSON_GetObjectItem(root, "model.norm.weight");
        ofs = cJSON_GetObjectItem(nw, "data_offsets");
        cJSON_ReplaceItemInArray(ofs, 0, cJSON_CreateNumber(b0 - 128));
        cJSON_ReplaceItemInArray(ofs, 1, cJSON_CreateNumber(b1 - 128));
        expect_refused_json(bad, root, data, ndata, "overlapping byte ranges", "overlaps");
        /* byte range past the data */
        root = cJSON_Parse(json);
        nw = cJSON_GetObjectItem(root, "model.norm.weight");
        ofs = cJSON_GetObjectItem(nw, "data_offsets");
        cJSON_ReplaceItemInArray(ofs, 0, cJSON_CreateNumber(b0 + 64));
        cJSON_ReplaceItemInArray(ofs, 1, cJSON_CreateNumber(b1 + 64));
        expect_refused_json(bad, root, data, ndata, "byte range past the data", "past the end of the data");
    }
    /* trailing garbage after the data */
    {
        unsigned char *b = xcalloc(n + 16, 1);
        memcpy(b, good, n);
        spit(bad, b, n + 16);
        expect_refused(bad, "trailing bytes", "cover");
        free(b);
    }
    /* a NaN in the weights */
    {
        unsigned char *b = xcalloc(n, 1);
        memcpy(b, good, n);
        float nan = NAN;
        memcpy(b + 8 + hl + 4 * 10, &nan, 4);
        spit(bad, b, n);
        expect_refused(bad, "NaN weight", "NaN");
        free(b);
    }
    expect_refused("/nonexistent/dir/x.safetensors", "missing file", "cannot open");
    /* random garbage files never crash */
    DNRng r;
    dn_rng_seed(&r, 3);
    int all_refused = 1;
    for (int it = 0; it < 200; it++) {
        size_t m = 1 + dn_rng_u64(&r) % 4096;
        unsigned char *b = xcalloc(m, 1);
        memcpy(b, good, m < n ? m : n);
        for (int k = 0; k < 1 + it % 8; k++) b[dn_rng_u64(&r) % m] = (unsigned char)dn_rng_u64(&r);
        if (m >= 8 && it % 2) { uint64_t l = dn_rng_u64(&r) % (m + 16); memcpy(b, &l, 8); }
        spit(bad, b, m);
        DNConfig c3;
        float *p = NULL;
        all_refused &= dn_checkpoint_read(bad, &c3, &p, err, sizeof err) == -1;
        free(p);
        free(b);
    }
    CHECK(all_refused, "200 fuzzed prefixes of a checkpoint are all refused cleanly");

    /* a failed write leaves the old file intact */
    {
        DNParamTable t2;
        DNConfig c4;
        hybrid_config(&c4, 1);
        dn_build_param_table(&t2, &c4, err, sizeof err);
        float *w = xcalloc(t2.total, sizeof(float));
        int rc = dn_checkpoint_write("/nonexistent/dir/m.safetensors", &t2, w, DN_F32, NULL, err, sizeof err);
        CHECK(rc == -1 && strstr(err, "cannot create"), "write into a missing dir fails with a message: %s", err);
        free(w);
        dn_free_param_table(&t2);
    }
    free(json);
    free(good);
    dn_free_param_table(&t);
}

static void test_state(void) {
    DNConfig c;
    DNParamTable t;
    char err[DN_ERR_LEN], path[512];
    hybrid_config(&c, 0);
    dn_build_param_table(&t, &c, err, sizeof err);
    float *m = xcalloc(t.total, sizeof(float)), *v = xcalloc(t.total, sizeof(float));
    float *m2 = xcalloc(t.total, sizeof(float)), *v2 = xcalloc(t.total, sizeof(float));
    DNRng r;
    dn_rng_seed(&r, 11);
    fill_randn_f(m, t.total, &r, 1e-3f);
    for (size_t i = 0; i < t.total; i++) v[i] = fabsf(dn_rng_normal(&r)) * 1e-6f;
    DNTrainState st = {.step = 4242, .rng_state = 0xfedcba9876543210ull, .data_shard = 3, .data_pos = 123456789};
    snprintf(st.note, sizeof st.note, "unit test");
    path_in(path, sizeof path, "model.safetensors.state");
    CHECK(dn_state_write(path, &t, m, v, &st, err, sizeof err) == 0, "state write: %s", err);
    DNTrainState s2;
    CHECK(dn_state_read(path, &t, m2, v2, &s2, err, sizeof err) == 0, "state read: %s", err);
    CHECK(!memcmp(m, m2, t.total * 4) && !memcmp(v, v2, t.total * 4), "AdamW moments round trip bit-exact");
    CHECK(s2.step == st.step && s2.rng_state == st.rng_state && s2.data_shard == 3 && s2.data_pos == 123456789 && !strcmp(s2.note, "unit test"),
          "step, RNG and data position round trip");
    /* state of another model is refused */
    DNConfig c2 = c;
    dn_config_set_layers(&c2, "DDDG", err, sizeof err);
    DNParamTable t2;
    dn_build_param_table(&t2, &c2, err, sizeof err);
    float *m3 = xcalloc(t2.total, sizeof(float)), *v3 = xcalloc(t2.total, sizeof(float));
    int rc = dn_state_read(path, &t2, m3, v3, &s2, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "another model"), "state of another model refused: %s", err);
    /* a weights file is not a state file */
    char wpath[512];
    path_in(wpath, sizeof wpath, "model.safetensors");
    rc = dn_state_read(wpath, &t, m2, v2, &s2, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "not a deltanet.c-train-state file"), "weights file refused as state: %s", err);
    free(m); free(v); free(m2); free(v2); free(m3); free(v3);
    dn_free_param_table(&t);
    dn_free_param_table(&t2);
}

static void test_bf16(void) {
    CHECK(dn_f32_to_bf16(1.0f) == 0x3f80, "bf16(1)");
    CHECK(dn_bf16_to_f32(dn_f32_to_bf16(3.140625f)) == 3.140625f, "exact bf16 value survives");
    /* round to nearest even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> 1 */
    CHECK(dn_bf16_to_f32(dn_f32_to_bf16(1.0f + 1.0f / 256)) == 1.0f, "ties to even (down)");
    CHECK(dn_bf16_to_f32(dn_f32_to_bf16(1.0f + 3.0f / 256)) == 1.0f + 4.0f / 256, "ties to even (up)");
    CHECK(isnan(dn_bf16_to_f32(dn_f32_to_bf16(NAN))), "NaN stays NaN");
    CHECK(isinf(dn_bf16_to_f32(dn_f32_to_bf16(INFINITY))), "Inf stays Inf");
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/dn_test_ckpt_XXXXXX");
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 2; }
    test_presets();
    test_config_validation();
    test_bf16();
    test_roundtrip_and_corruption();
    test_state();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("warning: could not remove %s\n", dir);
    return test_summary("test_checkpoint");
}
