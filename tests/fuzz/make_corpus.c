/*
 * make_corpus.c -- writes the fuzz targets' seed files (`make fuzz-corpus`; the output is
 * committed under tests/fuzz/corpus/<target>/). Valid files come from the project's own writers
 * (dn_checkpoint_write, dn_state_write, shard_write), so they stay valid when a format changes and
 * the corpus is regenerated; each is then broken in the ways a reader must refuse: truncated at
 * every boundary, a bad header length, broken or hostile JSON, impossible metadata, NaN data,
 * bad shard headers, out-of-range ids. The tokenizer gets odd text: UTF-8 of several scripts,
 * invalid and truncated UTF-8, NULs, whitespace runs, contractions, "<|endoftext|>".
 * usage: make_corpus OUTDIR   (run from the repository root: it reads data/tinyshakespeare)
 */
#include <errno.h>
#include <math.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "fuzz.h"
#include "../../src/data.h"

static const char *g_root;

static void put(const char *target, const char *name, const void *d, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", g_root, target);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) { perror(path); exit(1); }
    snprintf(path, sizeof path, "%s/%s/%s", g_root, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(d, 1, n, f) != n) || fclose(f) != 0) { perror(path); exit(1); }
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n + 1);
    if (!b || fread(b, 1, *n, f) != *n) { perror(path); exit(1); }
    fclose(f);
    return b;
}

static void die(const char *what, const char *err) { fprintf(stderr, "make_corpus: %s: %s\n", what, err); exit(1); }

/* ---- safetensors surgery: header JSON + data area ------------------------------------------- */

typedef struct { uint8_t *buf; size_t n; uint64_t hl; } St;

static cJSON *st_header(const St *s) {
    cJSON *j = cJSON_ParseWithLength((const char *)s->buf + 8, s->hl);
    if (!j) die("st_header", "cannot parse our own header");
    return j;
}
/* A file with header text json (length field = its length) and the data area of s. */
static void st_put(const char *target, const char *name, const St *s, const char *json) {
    size_t jl = strlen(json), dn = s->n - 8 - s->hl, n = 8 + jl + dn;
    uint8_t *b = malloc(n);
    uint64_t hl = jl;
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(hl >> (8 * i));
    memcpy(b + 8, json, jl);
    memcpy(b + 8 + jl, s->buf + 8 + s->hl, dn);
    put(target, name, b, n);
    free(b);
}
static void st_put_json(const char *target, const char *name, const St *s, cJSON *j) {
    char *t = cJSON_PrintUnformatted(j);
    st_put(target, name, s, t);
    free(t);
    cJSON_Delete(j);
}
static void st_set_meta(const char *target, const char *name, const St *s, const char *key, const char *val) {
    cJSON *j = st_header(s), *m = cJSON_GetObjectItemCaseSensitive(j, "__metadata__");
    cJSON_DeleteItemFromObjectCaseSensitive(m, key);
    if (val) cJSON_AddStringToObject(m, key, val);
    st_put_json(target, name, s, j);
}
/* One file per edit: metadata key set to value (NULL: removed). */
typedef struct { const char *name, *key, *val; } MetaEdit;
static void st_set_metas(const char *target, const St *s, const MetaEdit *e, size_t n) {
    for (size_t i = 0; i < n; i++) st_set_meta(target, e[i].name, s, e[i].key, e[i].val);
}
/* The first tensor entry (not __metadata__) of a header. */
static cJSON *st_first_tensor(cJSON *j) {
    for (cJSON *it = j->child; it; it = it->next)
        if (strcmp(it->string, "__metadata__")) return it;
    return NULL;
}
static void st_set_field(const char *target, const char *name, const St *s, const char *field, const char *json_value) {
    cJSON *j = st_header(s), *t = st_first_tensor(j);
    cJSON_ReplaceItemInObjectCaseSensitive(t, field, cJSON_Parse(json_value));
    st_put_json(target, name, s, j);
}

/* Truncations and header-length lies, shared by checkpoints and states. */
static void st_breakages(const char *target, const char *stem, const St *s) {
    char name[128];
    size_t cuts[] = {0, 7, 8, 8 + s->hl / 2, 8 + s->hl, 8 + s->hl + (s->n - 8 - s->hl) / 2, s->n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        snprintf(name, sizeof name, "%s_cut%zu", stem, cuts[i]);
        put(target, name, s->buf, cuts[i]);
    }
    uint64_t lies[] = {0, 1, s->hl - 1, s->hl + 8, (uint64_t)s->n, 0x7fffffffffffffffull};
    uint8_t *b = malloc(s->n);
    for (size_t i = 0; i < sizeof lies / sizeof *lies; i++) {
        memcpy(b, s->buf, s->n);
        for (int k = 0; k < 8; k++) b[k] = (uint8_t)(lies[i] >> (8 * k));
        snprintf(name, sizeof name, "%s_hlen%zu", stem, i);
        put(target, name, b, s->n);
    }
    free(b);
    St t = *s;
    st_put(target, "json_empty", &t, "");
    st_put(target, "json_open_brace", &t, "{");
    st_put(target, "json_array", &t, "[1,2,3]");
    st_put(target, "json_null", &t, "null");
    st_put(target, "json_meta_not_object", &t, "{\"__metadata__\": 5}");
    st_put(target, "json_meta_number", &t, "{\"__metadata__\": {\"format\": 1}}");
    st_put(target, "json_no_meta", &t, "{\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}");
    st_set_field(target, "tensor_dtype_f16", s, "dtype", "\"F16\"");
    st_set_field(target, "tensor_dtype_number", s, "dtype", "7");
    st_set_field(target, "tensor_shape_negative", s, "shape", "[-1]");
    st_set_field(target, "tensor_shape_huge", s, "shape", "[1e30, 1e30]");
    st_set_field(target, "tensor_shape_4d", s, "shape", "[1, 1, 1, 1]");
    st_set_field(target, "tensor_shape_fraction", s, "shape", "[0.5]");
    st_set_field(target, "tensor_offsets_reversed", s, "data_offsets", "[8, 0]");
    st_set_field(target, "tensor_offsets_huge", s, "data_offsets", "[0, 1e30]");
    st_set_field(target, "tensor_offsets_one", s, "data_offsets", "[0]");
    st_set_field(target, "tensor_offsets_strings", s, "data_offsets", "[\"0\", \"4\"]");
    {
        cJSON *j = st_header(s);
        cJSON *t0 = st_first_tensor(j);
        char longname[300];
        memset(longname, 'w', sizeof longname - 1);
        longname[sizeof longname - 1] = 0;
        cJSON_AddItemToObject(j, longname, cJSON_Duplicate(t0, 1));
        st_put_json(target, "tensor_name_long", s, j);
    }
    {
        cJSON *j = st_header(s);
        cJSON_DeleteItemFromObjectCaseSensitive(j, st_first_tensor(j)->string);
        st_put_json(target, "tensor_missing", s, j);
    }
}

/* ---- checkpoints ----------------------------------------------------------------------------- */

static St write_checkpoint(const DNConfig *c, DNDtype dt, uint64_t seed) {
    char err[DN_ERR_LEN], path[600];
    DNParamTable t;
    if (dn_config_validate(c, err, sizeof err) || dn_build_param_table(&t, c, err, sizeof err)) die("config", err);
    float *w = malloc(t.total * sizeof(float));
    dn_init_params(&t, w, seed);
    snprintf(path, sizeof path, "%s/ck.safetensors", fz_dir());
    if (dn_checkpoint_write(path, &t, w, dt, NULL, err, sizeof err)) die("dn_checkpoint_write", err);
    St s;
    s.buf = slurp(path, &s.n);
    s.hl = 0;
    for (int i = 7; i >= 0; i--) s.hl = (s.hl << 8) | s.buf[i];
    remove(path);
    free(w);
    dn_free_param_table(&t);
    return s;
}

static void checkpoints(void) {
    const char *T = "checkpoint";
    DNConfig c;
    memset(&c, 0, sizeof c);
    c.vocab_size = 12; c.padded_vocab = 16; c.d_model = 4; c.n_layer = 3; c.n_head = 2; c.head_dim = 2;
    c.conv_size = 4; c.hidden_size = 6; c.norm_eps = 1e-6f; c.l2_eps = DN_DEFAULT_L2_EPS; c.tie_embeddings = 1; c.attn_heads = 2;
    c.attn_kv_heads = 1; c.window = 3; c.rope_base = 10000.0f;
    dn_config_default_gdn(&c);
    strcpy(c.layers, "DSG");
    St a = write_checkpoint(&c, DN_F32, 1);
    put(T, "valid_dsg_tied_f32", a.buf, a.n);

    DNConfig d = c;
    d.vocab_size = 10; d.padded_vocab = 10; d.n_layer = 1; d.hidden_size = 4;
    d.tie_embeddings = 0;
    strcpy(d.layers, "D");
    St b = write_checkpoint(&d, DN_BF16, 2);
    put(T, "valid_d_untied_bf16", b.buf, b.n);

    st_breakages(T, "dsg", &a);
    {
        static const MetaEdit e[] = {
            {"meta_format_other", "format", "safetensors"},
            {"meta_format_missing", "format", NULL},
            {"meta_version_2", "format_version", "2"},
            {"meta_layers_missing", "layers", NULL},
            {"meta_layers_bad_kind", "layers", "DSX"},
            {"meta_layers_too_many", "layers", "DDDD"},
            {"meta_n_layer_text", "n_layer", "abc"},
            {"meta_n_layer_zero", "n_layer", "0"},
            {"meta_d_model_float", "d_model", "8.5"},
            {"meta_vocab_overflow", "vocab_size", "99999999999"},
            {"meta_norm_eps_nan", "norm_eps", "nan"},
            {"meta_tie_2", "tie_embeddings", "2"},
            {"meta_rope_missing", "rope_base", NULL},
            {"meta_head_dim_wrong", "head_dim", "3"},
        };
        st_set_metas(T, &a, e, sizeof e / sizeof e[0]);
    }
    {
        char name[200];
        memset(name, 'D', sizeof name - 1);
        name[sizeof name - 1] = 0;
        st_set_meta(T, "meta_layers_long", &a, "layers", name);
    }
    {
        cJSON *j = st_header(&a);
        cJSON *z = cJSON_Parse("{\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [0, 0]}");
        cJSON_AddItemToObject(j, "model.extra.weight", z);
        st_put_json(T, "tensor_unexpected", &a, j);
    }
    {
        uint8_t *x = malloc(a.n);
        float nan = NAN, inf = INFINITY;
        memcpy(x, a.buf, a.n);
        memcpy(x + 8 + a.hl, &nan, 4);
        put(T, "data_nan", x, a.n);
        memcpy(x + a.n - 4, &inf, 4);
        put(T, "data_inf", x, a.n);
        free(x);
    }
    free(a.buf);
    free(b.buf);
}

/* ---- training states ------------------------------------------------------------------------- */

static void states(void) {
    const char *T = "state";
    char err[DN_ERR_LEN], path[600];
    DNConfig c;
    DNParamTable t;
    fz_state_config(&c);
    if (dn_build_param_table(&t, &c, err, sizeof err)) die("fz_state_config", err);
    float *m = malloc(t.total * sizeof(float)), *v = malloc(t.total * sizeof(float));
    dn_init_params(&t, m, 3);
    for (size_t i = 0; i < t.total; i++) v[i] = m[i] * m[i];
    DNTrainState st = {7, 123456789ull, 1, 5, "fuzz seed: -x 10"};
    snprintf(path, sizeof path, "%s/ck.safetensors.state", fz_dir());
    if (dn_state_write(path, &t, m, v, &st, err, sizeof err)) die("dn_state_write", err);
    St s;
    s.buf = slurp(path, &s.n);
    s.hl = 0;
    for (int i = 7; i >= 0; i--) s.hl = (s.hl << 8) | s.buf[i];
    remove(path);
    put(T, "valid_state", s.buf, s.n);
    st_breakages(T, "state", &s);
    {
        static const MetaEdit e[] = {
            {"meta_format_checkpoint", "format", DN_FORMAT_NAME},
            {"meta_n_params_wrong", "n_params_mem", "3"},
            {"meta_n_params_negative", "n_params_mem", "-1"},
            {"meta_layers_other", "layers", "DD"},
            {"meta_step_negative", "step", "-1"},
            {"meta_step_missing", "step", NULL},
            {"meta_rng_text", "rng_state", "abc"},
            {"meta_rng_overflow", "rng_state", "18446744073709551616"},
            {"meta_rng_negative", "rng_state", "-5"},
            {"meta_note_missing", "note", NULL},
        };
        st_set_metas(T, &s, e, sizeof e / sizeof e[0]);
    }
    {
        char note[400];
        memset(note, 'n', sizeof note - 1);
        note[sizeof note - 1] = 0;
        st_set_meta(T, "meta_note_long", &s, "note", note);
    }
    st_set_meta(T, "meta_data_pos_huge", &s, "data_pos", "9223372036854775808");
    {
        cJSON *j = st_header(&s);
        cJSON *z = cJSON_Parse("{\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [0, 0]}");
        cJSON_AddItemToObject(j, "adam.extra", z);
        st_put_json(T, "tensor_extra", &s, j);
    }
    free(s.buf);
    free(m);
    free(v);
    dn_free_param_table(&t);
}

/* ---- token shards ---------------------------------------------------------------------------- */

static void shard_put(const char *name, int32_t magic, int32_t version, int32_t count,
                      const uint16_t *tok, size_t n, size_t cut) {
    size_t bytes = SHARD_HEADER_BYTES + 2 * n;
    uint8_t *b = calloc(1, bytes);
    int32_t h[3] = {magic, version, count};
    memcpy(b, h, sizeof h);
    memcpy(b + SHARD_HEADER_BYTES, tok, 2 * n);
    put("data", name, b, cut ? cut : bytes);
    free(b);
}

static void shards(void) {
    char err[DN_ERR_LEN], path[600];
    uint16_t tok[80];
    DNRng r;
    dn_rng_seed(&r, 4);
    for (int i = 0; i < 80; i++) tok[i] = (uint16_t)(dn_rng_u64(&r) % 50257);
    snprintf(path, sizeof path, "%s/shard.bin", fz_dir());
    if (shard_write(path, tok, 40, err, sizeof err)) die("shard_write", err);
    size_t n;
    uint8_t *b = slurp(path, &n);
    put("data", "valid_40", b, n);
    free(b);
    remove(path);
    shard_put("valid_80", SHARD_MAGIC, SHARD_VERSION, 80, tok, 80, 0);
    shard_put("valid_1", SHARD_MAGIC, SHARD_VERSION, 1, tok, 1, 0);
    shard_put("valid_0", SHARD_MAGIC, SHARD_VERSION, 0, tok, 0, 0);
    uint16_t edge[5] = {0, 50256, 50255, 1, 50256};
    shard_put("valid_edge_ids", SHARD_MAGIC, SHARD_VERSION, 5, edge, 5, 0);
    uint16_t bad[5] = {1, 2, 50257, 3, 65535};
    shard_put("id_out_of_range", SHARD_MAGIC, SHARD_VERSION, 5, bad, 5, 0);
    shard_put("bad_magic", 20240326, SHARD_VERSION, 40, tok, 40, 0);
    shard_put("bad_version", SHARD_MAGIC, 2, 40, tok, 40, 0);
    shard_put("count_negative", SHARD_MAGIC, SHARD_VERSION, -1, tok, 40, 0);
    shard_put("count_too_big", SHARD_MAGIC, SHARD_VERSION, 41, tok, 40, 0);
    shard_put("count_too_small", SHARD_MAGIC, SHARD_VERSION, 39, tok, 40, 0);
    shard_put("count_max", SHARD_MAGIC, SHARD_VERSION, 2147483647, tok, 40, 0);
    shard_put("truncated_header", SHARD_MAGIC, SHARD_VERSION, 40, tok, 40, 100);
    shard_put("truncated_tokens", SHARD_MAGIC, SHARD_VERSION, 40, tok, 40, SHARD_HEADER_BYTES + 41);
    put("data", "empty", "", 0);
}

/* ---- tokenizer text -------------------------------------------------------------------------- */

static void texts(void) {
    static const struct { const char *name; const char *s; size_t n; } t[] = {
#define S(name, lit) {name, lit, sizeof lit - 1}
        S("empty", ""),
        S("english", "Hello world! It's a test: they're, we've, I'm, you'll, he'd. 12345 + 67.89 = ?\n"),
        S("whitespace", "  leading\t\ttabs\r\nCRLF   three spaces\n\n\n    \n trailing   "),
        S("eot", "<|endoftext|>The end.<|endoftext|><|endoftext|><|endof"),
        S("utf8_scripts", "na\xc3\xafve caf\xc3\xa9 \xce\xb1\xce\xb2\xce\xb3 \xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 "
                          "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xed\x95\x9c\xea\xb5\xad\xec\x96\xb4 \xd8\xb9\xd8\xb1\xd8\xa8\xd9\x8a"),
        S("emoji", "\xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7 \xe2\x9d\xa4\xef\xb8\x8f"),
        S("combining", "e\xcc\x81 a\xcc\x8a n\xcc\x83 \xe0\xa4\xa8\xe0\xa4\xae\xe0\xa4\xb8\xe0\xa5\x8d\xe0\xa4\xa4\xe0\xa5\x87"),
        S("odd_spaces", "a\xc2\xa0" "b\xe2\x80\x83" "c\xe1\xa0\x8e" "d\xe3\x80\x80" "e\xe2\x80\xa8" "f\x0b" "g\x0c" "h\xc2\x85" "i"),
        S("invalid_utf8", "ok \xff\xfe bad \xc0\xaf overlong \xed\xa0\x80 surrogate \xf4\x90\x80\x80 too big \x80\x80 cont"),
        S("truncated_utf8", "cut \xe6\x97 and \xf0\x9f\x98 and \xc3"),
        S("nul_bytes", "a\0b\0\0c \0 \0\0"),
        S("digits_punct", "3.14159265358979 1,000,000 -42 0x1F ... !!! ??? --- ((())) {[]} @#$%^&*"),
        S("code", "int main(void) {\n\treturn 0; // comment\n}\n#define X(a) ((a) * 2)\n"),
        S("bytes_low", "\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x10\x11\x1f\x7f"),
        S("bytes_high", "\x80\x81\x9f\xa0\xbf\xc1\xf5\xf8\xfc\xfe\xff"),
#undef S
    };
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) put("tokenizer", t[i].name, t[i].s, t[i].n);
    size_t n;
    uint8_t *b = slurp("data/tinyshakespeare/input.txt", &n);
    put("tokenizer", "shakespeare", b, n < 2000 ? n : 2000);
    free(b);
    char rep[600];
    for (int i = 0; i < 600; i++) rep[i] = " a'\n"[i % 4 == 3 ? 0 : i % 3];
    put("tokenizer", "repeats", rep, sizeof rep);
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s OUTDIR (from the repository root)\n", argv[0]); return 2; }
    g_root = argv[1];
    if (mkdir(g_root, 0755) != 0 && errno != EEXIST) { perror(g_root); return 1; }
    checkpoints();
    states();
    shards();
    texts();
    rmdir(fz_dir());
    printf("make_corpus: seeds written under %s/{checkpoint,state,data,tokenizer}\n", g_root);
    return 0;
}
