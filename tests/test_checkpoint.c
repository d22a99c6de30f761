/*
 * test_checkpoint.c -- model.h: presets and parameter counts, config validation, the safetensors
 * checkpoint (bit-exact F32 round trip, BF16 rounding, metadata, atomic write) and every way a file
 * can be corrupt, each refused with a one-line printable message that names the file, never a
 * crash; the training-state file beside it; and the file helpers (escaping, regular files only,
 * checked path lengths, atomic writes through O_EXCL temporaries, stale-temporary removal).
 */
#include "test.h"
#include <dirent.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
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

/* A safetensors file: its bytes (*good, *n of them, freed by the caller), the length of its
 * header (*hl) and the header's text, returned (NUL-terminated, freed by the caller). */
static char *read_header(const char *path, unsigned char **good, size_t *n, uint64_t *hl) {
    *good = slurp(path, n);
    memcpy(hl, *good, 8);
    char *json = xcalloc(*hl + 1, 1);
    memcpy(json, *good + 8, *hl);
    return json;
}

static void spit(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
}

/* Rebuild a file from a new JSON header (hl bytes) and the old data area. */
static void write_with_header_n(const char *path, const char *json, uint64_t hl, const unsigned char *data, size_t ndata) {
    FILE *f = fopen(path, "wb");
    fwrite(&hl, 8, 1, f);
    fwrite(json, 1, hl, f);
    fwrite(data, 1, ndata, f);
    fclose(f);
}
static void write_with_header(const char *path, const char *json, const unsigned char *data, size_t ndata) {
    write_with_header_n(path, json, strlen(json), data, ndata);
}

/* A copy of s with the first `from` replaced by `to`; NULL (and a failed check) if absent. */
static char *replace1(const char *s, const char *from, const char *to) {
    const char *p = strstr(s, from);
    CHECK(p != NULL, "test setup: '%s' not found", from);
    if (!p) return NULL;
    char *r = xcalloc(strlen(s) + strlen(to) + 1, 1);
    memcpy(r, s, (size_t)(p - s));
    strcat(r, to);
    strcat(r, p + strlen(from));
    return r;
}

/* A copy of s with tail appended. */
static char *with_tail(const char *s, const char *tail) {
    char *r = xcalloc(strlen(s) + strlen(tail) + 1, 1);
    strcat(strcpy(r, s), tail);
    return r;
}

/* Every byte of a message is printable ASCII: no newline, no terminal escape. */
static int printable(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f) return 0;
    return 1;
}

static int file_is(const char *path, const char *content) {
    size_t n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char buf[256] = "";
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    return n == strlen(content) && !memcmp(buf, content, n);
}

static void hybrid_config(DNConfig *c, int tied) { test_config(c, "DSDG", 32, 2, 16, 96, 300, 384, 4, 2, 7, tied); }

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
    /* 340M: the GPT-2 vocabulary like every preset; the paper's 32000 through dn_config_set_vocab */
    CHECK(dn_config_preset(&c, "340M") == 0, "340M preset");
    CHECK(c.vocab_size == 50257 && c.padded_vocab == 50304, "340M preset has the GPT-2 vocab (%d, padded %d)", c.vocab_size, c.padded_vocab);
    CHECK(dn_build_param_table(&t, &c, err, sizeof err) == 0, "340M table: %s", err);
    printf("  ok  340M: %zu parameters (GPT-2 vocab)\n", t.total_real);
    CHECK(t.total_real == 341594112u + (size_t)(50257 - 32000) * 1024, "340M with vocab 50257 has %zu parameters", t.total_real);
    dn_free_param_table(&t);
    CHECK(dn_config_set_vocab(&c, 32000, err, sizeof err) == 0 && c.vocab_size == 32000 && c.padded_vocab == 32000, "set_vocab 32000: %s", err);
    CHECK(dn_build_param_table(&t, &c, err, sizeof err) == 0, "340M/32000 table: %s", err);
    printf("  ok  340M with vocab 32000: %zu parameters\n", t.total_real);
    CHECK(t.total_real == 341594112u, "340M with vocab 32000 should have 341594112 parameters, has %zu", t.total_real);
    dn_free_param_table(&t);
    CHECK(dn_config_set_vocab(&c, 1000, err, sizeof err) == 0 && c.padded_vocab == 1024, "set_vocab pads to 128: %d", c.padded_vocab);
    CHECK(dn_config_set_vocab(&c, DN_MAX_VOCAB, err, sizeof err) == 0 && c.padded_vocab == DN_MAX_VOCAB, "set_vocab 2^24");
    CHECK(dn_config_validate(&c, err, sizeof err) == 0, "2^24 vocab validates: %s", err);
    {
        const int bad_vocab[] = {0, -5, 1, DN_MAX_VOCAB + 1, INT_MAX};
        for (int i = 0; i < 5; i++) {
            DNConfig b = c;
            err[0] = 0;
            int rc = dn_config_set_vocab(&b, bad_vocab[i], err, sizeof err);
            CHECK(rc == -1 && strstr(err, "vocab_size") && !memcmp(&b, &c, sizeof b), "set_vocab %d refused, config unchanged: rc %d '%s'", bad_vocab[i], rc, err);
        }
    }
    CHECK(dn_pad_vocab(INT_MAX) == -1 && dn_pad_vocab(50257) == 50304, "dn_pad_vocab never overflows");
    CHECK(dn_config_preset(&c, "nope") == -1, "unknown preset refused");
    CHECK(dn_default_hidden(64) == 256 && dn_default_hidden(768) == 2048 && dn_default_hidden(1024) == 2816, "default hidden sizes");
    /* table offsets tile the buffer in order, each tensor aligned but those fused with the one
     * before (adjacent to it), with gaps shorter than the alignment; names are unique */
    hybrid_config(&c, 0);
    dn_build_param_table(&t, &c, err, sizeof err);
    size_t pos = 0;
    int tiled = 1, unique = 1;
    for (int i = 0; i < t.n_params; i++) {
        const DNParam *p = &t.params[i];
        const int joined = p->kind == DN_P_UP || ((p->kind == DN_P_K || p->kind == DN_P_V || p->kind == DN_P_K_CONV ||
                                                   p->kind == DN_P_V_CONV) && c.layers[p->layer] == 'D');
        tiled &= joined ? p->offset == pos : p->offset % DN_PARAM_ALIGN == 0 && p->offset >= pos && p->offset - pos < DN_PARAM_ALIGN;
        pos = p->offset + p->mem_numel;
        for (int j = 0; j < i; j++) unique &= strcmp(p->name, t.params[j].name) != 0;
    }
    CHECK(tiled && pos == t.total && unique, "parameter table tiles the buffer in order (aligned; fused tensors adjacent) with unique names");
    dn_free_param_table(&t);
    /* a gated layer's 6-float A_log / dt_bias leave every later tensor aligned (gdn preset) */
    DNConfig g;
    dn_config_preset(&g, "gdn");
    dn_build_param_table(&t, &g, err, sizeof err);
    int aligned = 1, gaps = 0;
    for (int i = 0; i < t.n_params; i++) {
        aligned &= t.params[i].offset % DN_PARAM_ALIGN == 0;
        gaps += i && t.params[i].offset != t.params[i - 1].offset + t.params[i - 1].mem_numel;
    }
    CHECK(aligned && gaps == 2 * g.n_layer, "gdn: every tensor aligned to %d elements, two gaps a layer (after A_log and dt_bias): %d gaps", DN_PARAM_ALIGN, gaps);
    dn_free_param_table(&t);
    hybrid_config(&c, 0);
    dn_build_param_table(&t, &c, err, sizeof err);
    CHECK(t.layer[1].p[DN_P_B] == DN_NO_PARAM && t.layer[0].p[DN_P_B] != DN_NO_PARAM, "per-layer offsets follow the layer kind");
    CHECK(t.params[dn_find_param(&t, "model.layers.1.attn.k_proj.weight")].shape[0] == 16, "GQA k_proj rows = kv_heads * head size");
    CHECK(dn_find_param(&t, "lm_head.weight") >= 0, "untied model has lm_head");
    dn_free_param_table(&t);
}

static void expect_bad_config(DNConfig c, const char *what, const char *needle) {
    char err[DN_ERR_LEN] = "";
    int rc = dn_config_validate(&c, err, sizeof err);
    CHECK(rc == -1 && strstr(err, needle) && printable(err), "%s should be refused mentioning '%s' (got rc %d, '%s')", what, needle, rc, err);
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
    /* every float finite and in range, on every model (a pure DeltaNet one too) */
    b = c; b.norm_eps = NAN; expect_bad_config(b, "NaN eps", "norm_eps");
    b = c; b.l2_eps = 0; expect_bad_config(b, "zero l2_eps", "l2_eps");
    b = c; b.l2_eps = NAN; expect_bad_config(b, "NaN l2_eps", "l2_eps");
    b = c; b.l2_eps = 1; expect_bad_config(b, "l2_eps 1", "l2_eps");
    b = c; b.rope_base = INFINITY; expect_bad_config(b, "infinite rope_base", "rope_base");
    b = c; b.rope_base = NAN; expect_bad_config(b, "NaN rope_base", "rope_base");
    dn_config_set_layers(&b, "DD", err, sizeof err);
    b.rope_base = INFINITY; expect_bad_config(b, "infinite rope_base on a pure DeltaNet model", "rope_base");
    b.rope_base = 10000.0f; b.attn_heads = 0; expect_bad_config(b, "zero attn_heads on a pure DeltaNet model", "attn_heads");
    b = c; b.padded_vocab = 385; expect_bad_config(b, "padded_vocab past vocab rounded up to 128", "padded_vocab");
    b = c; b.padded_vocab = 1 << 24; expect_bad_config(b, "padded_vocab 2^24 for a vocab of 300", "padded_vocab");
    b = c; b.padded_vocab = 300;
    CHECK(dn_config_validate(&b, err, sizeof err) == 0, "padded_vocab == vocab_size is valid: %s", err);
    /* a window longer than any context is valid */
    b = c; b.window = INT_MAX;
    CHECK(dn_config_validate(&b, err, sizeof err) == 0, "window 2^31-1 is valid: %s", err);
    /* a layer letter from a file is escaped in the message */
    b = c; b.layers[2] = '\x1b'; expect_bad_config(b, "escape character as a layer kind", "layer 2 has unknown kind '\\x1b'");
    CHECK(dn_config_set_layers(&b, "DD\nD", err, sizeof err) == -1 && strstr(err, "kind '\\n'") && printable(err), "newline in a layer string is escaped: %s", err);
}

/* Expect dn_checkpoint_read to refuse path with a message containing needle and the path. */
static void expect_refused(const char *path, const char *what, const char *needle) {
    DNConfig c;
    float *p = (float *)0x1;
    char err[DN_ERR_LEN] = "";
    int rc = dn_checkpoint_read(path, &c, &p, err, sizeof err);
    int ok = rc == -1 && p == NULL && strstr(err, needle) != NULL && strstr(err, path) != NULL && printable(err);
    CHECK(ok, "%s: expected refusal mentioning '%s', got rc=%d err='%s'", what, needle, rc, err);
    if (ok) printf("  ok  refused %-34s -> %s\n", what, err + strlen(path) + 2);
    if (rc == 0) free(p);
}

/* Expect dn_checkpoint_read to accept path; returns its config. */
static DNConfig expect_accepted(const char *path, const char *what) {
    DNConfig c;
    memset(&c, 0, sizeof c);
    float *p = NULL;
    char err[DN_ERR_LEN] = "";
    int rc = dn_checkpoint_read(path, &c, &p, err, sizeof err);
    CHECK(rc == 0 && p != NULL, "%s: expected the file to be read, got rc=%d err='%s'", what, rc, err);
    free(p);
    return c;
}

/* Write the header text json (freed) over data to path and expect the reader to refuse it. */
static void expect_refused_text(const char *path, char *json, const unsigned char *data, size_t ndata,
                                const char *what, const char *needle) {
    if (!json) return;
    write_with_header(path, json, data, ndata);
    expect_refused(path, what, needle);
    free(json);
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

/* The header json plus a tensor entry `name` (F32, shape [n]) whose bytes follow the data: written
 * over the data and n zero floats, the reader must refuse it with a message containing needle. */
static void expect_refused_extra_tensor(const char *path, const char *json, const char *name, int n,
                                        const unsigned char *data, size_t ndata, const char *what, const char *needle) {
    cJSON *root = cJSON_Parse(json);
    cJSON *x = cJSON_AddObjectToObject(root, name); /* appended: a second copy if the name is taken */
    cJSON_AddStringToObject(x, "dtype", "F32");
    cJSON_AddItemToObject(x, "shape", cJSON_CreateIntArray((const int[]){n}, 1));
    cJSON *o = cJSON_AddArrayToObject(x, "data_offsets");
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)ndata));
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)ndata + 4.0 * n));
    unsigned char *d2 = xcalloc(ndata + 4 * (size_t)n, 1);
    memcpy(d2, data, ndata);
    expect_refused_json(path, root, d2, ndata + 4 * (size_t)n, what, needle);
    free(d2);
}

/* A header edit: the first `from` in the JSON text replaced by `to`; the reader must refuse the
 * result with a message containing needle. */
typedef struct { const char *what, *from, *to, *needle; } HeaderEdit;

static void expect_refused_edits(const char *path, const char *json, const unsigned char *data, size_t ndata,
                                 const HeaderEdit *e, size_t n) {
    for (size_t i = 0; i < n; i++) expect_refused_text(path, replace1(json, e[i].from, e[i].to), data, ndata, e[i].what, e[i].needle);
}

/* The header defects that are one text edit each: the basic ones, then issue 8's (numbered as in
 * test_header_defects). */
static const HeaderEdit header_edits[] = {
    {"unknown format version", "\"format_version\":\"1\"", "\"format_version\":\"7\"", "format version 7"},
    {"not a deltanet.c file", "\"format\":\"deltanet.c\"", "\"format\":\"someone.else\"", "not a deltanet.c file"},
    {"missing tensor", "\"model.norm.weight\"", "\"model.norm.weighz\"", "unexpected tensor"},
    {"wrong dtype", "\"dtype\":\"F32\"", "\"dtype\":\"F16\"", "dtype F16"},
    {"impossible config: heads*dim", "\"n_head\":\"2\"", "\"n_head\":\"3\"", "impossible config"},
    {"impossible config: zero layers", "\"n_layer\":\"4\"", "\"n_layer\":\"0\"", "impossible config"},
    {"bad integer in metadata", "\"d_model\":\"32\"", "\"d_model\":\"3x\"", "not an integer"},
    {"metadata value not a string", "\"window\":\"7\"", "\"window\":7", "not a string"},
    /* 1. a key twice: a metadata key, a key inside a tensor entry */
    {"metadata key twice", "\"d_model\":\"32\"", "\"d_model\":\"32\",\"d_model\":\"64\"", "the key 'd_model' twice"},
    {"dtype twice in one tensor", "\"dtype\":\"F32\"", "\"dtype\":\"F32\",\"dtype\":\"BF16\"", "the key 'dtype' twice"},
    /* 3. an embedded NUL, as the \u0000 escape; an escaped backslash followed by "u0000" is text,
     * not a NUL (refused for another reason) */
    {"dtype F32\\u0000junk", "\"dtype\":\"F32\"", "\"dtype\":\"F32\\u0000junk\"", "NUL character"},
    {"metadata value with \\u0000", "\"format\":\"deltanet.c\"", "\"format\":\"deltanet.c\\u0000\"", "NUL character"},
    {"dtype F32\\\\u0000 (a backslash)", "\"dtype\":\"F32\"", "\"dtype\":\"F32\\\\u0000\"", "has dtype F32\\\\u0000; only F32 and BF16"},
    /* 4. floats that are finite as doubles but not as floats, or out of range */
    {"rope_base 1e39 (inf as a float)", "\"rope_base\":\"10000\"", "\"rope_base\":\"1e39\"", "'rope_base' = '1e39' is not a finite float"},
    {"rope_base -1e39", "\"rope_base\":\"10000\"", "\"rope_base\":\"-1e39\"", "is not a finite float"},
    {"rope_base nan", "\"rope_base\":\"10000\"", "\"rope_base\":\"nan\"", "is not a finite float"},
    {"rope_base with a leading space", "\"rope_base\":\"10000\"", "\"rope_base\":\" 10000\"", "is not a finite float"},
    {"rope_base 0.5", "\"rope_base\":\"10000\"", "\"rope_base\":\"0.5\"", "rope_base 0.5 must be a finite number > 1"},
    {"norm_eps 1e-50 (0 as a float)", "\"norm_eps\":\"9.99999997e-07\"", "\"norm_eps\":\"1e-50\"", "norm_eps 0 must be in (0, 1)"},
    {"norm_eps 1", "\"norm_eps\":\"9.99999997e-07\"", "\"norm_eps\":\"1\"", "norm_eps 1 must be in (0, 1)"},
    {"l2_eps 0", "\"l2_eps\":\"9.99999997e-07\"", "\"l2_eps\":\"0\"", "l2_eps 0 must be in (0, 1)"},
    {"l2_eps 1", "\"l2_eps\":\"9.99999997e-07\"", "\"l2_eps\":\"1\"", "l2_eps 1 must be in (0, 1)"},
    {"l2_eps nan", "\"l2_eps\":\"9.99999997e-07\"", "\"l2_eps\":\"nan\"", "'l2_eps' = 'nan' is not a finite float"},
    /* 6. a padding of 2^24 rows, impossible for the file */
    {"padded_vocab 2^24", "\"padded_vocab\":\"384\"", "\"padded_vocab\":\"16777216\"", "padded_vocab 16777216 must be in [vocab_size 300, 384]"},
    /* 7. 2^31 is not an int, nor are numbers with a sign or a leading space */
    {"window 2^31", "\"window\":\"7\"", "\"window\":\"2147483648\"", "'window' = '2147483648' is not an integer"},
    {"window +7", "\"window\":\"7\"", "\"window\":\"+7\"", "'window' = '+7' is not an integer"},
    {"window with a leading space", "\"window\":\"7\"", "\"window\":\" 7\"", "'window' = ' 7' is not an integer"},
    /* 8. strings from the file are escaped in messages */
    {"dtype with newline", "\"dtype\":\"F32\"", "\"dtype\":\"F\\n16\\u001b\"", "has dtype F\\n16\\x1b; only"},
    {"format with a terminal escape", "\"format\":\"deltanet.c\"", "\"format\":\"deltanet.c\\n\\u001b[2J\"", "format is 'deltanet.c\\n\\x1b[2J'"},
    {"metadata integer with newline", "\"d_model\":\"32\"", "\"d_model\":\"3\\n2\"", "'d_model' = '3\\n2' is not an integer"},
    {"layer letter CR", "\"layers\":\"DSDG\"", "\"layers\":\"DS\\rG\"", "layer 2 has unknown kind '\\r'"},
    {"non-string metadata under an ESC key", "\"window\":\"7\"", "\"window\":\"7\",\"k\\u001b\":7", "value 'k\\x1b' is not a string"},
};

/* Issue 8's header defects, on the header text json of a good tied hybrid checkpoint (data: its
 * ndata data bytes). Each was accepted (or crashed a sanitizer build) before its fix. */
static void test_header_defects(const char *bad, const char *json, const unsigned char *data, size_t ndata) {
    /* 1. a key twice: a tensor (the second copy pointing at extra bytes, so that the byte ranges
     * still tile); a metadata key and a key inside a tensor entry are in header_edits */
    expect_refused_extra_tensor(bad, json, "model.norm.weight", 32, data, ndata, "tensor named twice",
                                "the key 'model.norm.weight' twice");
    /* 2. text after the JSON object; space padding is fine */
    {
        expect_refused_text(bad, with_tail(json, "garbage}"), data, ndata, "text after the header JSON", "text after the header's JSON object");
        expect_refused_text(bad, with_tail(json, "\n"), data, ndata, "newline after the header JSON", "text after the header's JSON object");
        char *j = with_tail(json, "       ");
        write_with_header(bad, j, data, ndata);
        expect_accepted(bad, "a header padded with 7 spaces");
        free(j);
    }
    /* 3. a raw NUL byte (the \u0000 escape is in header_edits) */
    {
        char *j = replace1(json, "\"format\":\"deltanet.c\"", "\"format\":\"deltanet.c@x\"");
        if (j) {
            size_t hl = strlen(j);
            *strchr(j, '@') = 0;
            write_with_header_n(bad, j, hl, data, ndata);
            expect_refused(bad, "raw NUL byte in a metadata value", "NUL character");
            free(j);
        }
    }
    /* 4. l2_eps is ours (fla's config has no such key): a file without it, as from_fla.py writes,
     * reads back with fla's constant */
    {
        cJSON *root = cJSON_Parse(json);
        CHECK(cJSON_GetObjectItem(cJSON_GetObjectItem(root, "__metadata__"), "l2_eps") != NULL, "the writer stores l2_eps");
        cJSON_DeleteItemFromObject(cJSON_GetObjectItem(root, "__metadata__"), "l2_eps");
        char *j = cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        write_with_header(bad, j, data, ndata);
        DNConfig c = expect_accepted(bad, "no l2_eps in the metadata");
        CHECK(c.l2_eps == DN_DEFAULT_L2_EPS, "absent l2_eps reads as %g", (double)c.l2_eps);
        free(j);
    }
    /* 5. data_offsets and shapes far out of range: range-checked before the cast */
    {
        cJSON *root = cJSON_Parse(json);
        cJSON *nw = cJSON_GetObjectItem(root, "model.norm.weight");
        cJSON *ofs = cJSON_GetObjectItem(nw, "data_offsets");
        cJSON_ReplaceItemInArray(ofs, 1, cJSON_CreateNumber(1e300));
        expect_refused_json(bad, root, data, ndata, "data_offsets end 1e300", "bytes [");
        root = cJSON_Parse(json);
        nw = cJSON_GetObjectItem(root, "model.norm.weight");
        ofs = cJSON_GetObjectItem(nw, "data_offsets");
        cJSON_ReplaceItemInArray(ofs, 0, cJSON_CreateNumber(1e300));
        cJSON_ReplaceItemInArray(ofs, 1, cJSON_CreateNumber(1e300));
        expect_refused_json(bad, root, data, ndata, "data_offsets [1e300, 1e300]", "1e+300) lie past the end of the data");
        root = cJSON_Parse(json);
        nw = cJSON_GetObjectItem(root, "model.norm.weight");
        cJSON_ReplaceItemInObject(nw, "shape", cJSON_CreateDoubleArray((const double[]){1e300}, 1));
        expect_refused_json(bad, root, data, ndata, "shape [1e300]", "bad shape");
        root = cJSON_Parse(json);
        nw = cJSON_GetObjectItem(root, "model.norm.weight");
        cJSON_ReplaceItemInObject(nw, "shape", cJSON_CreateDoubleArray((const double[]){1048576, 1048576, 16777216}, 3));
        expect_refused_json(bad, root, data, ndata, "shape of 2^64 elements (wraps to 0)", "impossibly large");
    }
    {
        /* 1e999 parses as inf: mark the spot with a number cJSON prints as is, then edit the text */
        cJSON *root = cJSON_Parse(json);
        cJSON *ofs = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "model.norm.weight"), "data_offsets");
        cJSON_ReplaceItemInArray(ofs, 1, cJSON_CreateNumber(987654321));
        char *j = cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        expect_refused_text(bad, replace1(j, "987654321", "1e999"), data, ndata, "data_offsets end 1e999 (inf)", "inf) lie past the end of the data");
        expect_refused_text(bad, replace1(j, "987654321", "-1e999"), data, ndata, "data_offsets end -1e999", "bad data_offsets");
        free(j);
    }
    /* 6. metadata that claims a huge model over small tensors: the shape mismatch, before any
     * allocation (a padding of 2^24 rows is in header_edits) */
    {
        char *j = replace1(json, "\"d_model\":\"32\"", "\"d_model\":\"65536\"");
        char *j2 = j ? replace1(j, "\"head_dim\":\"16\"", "\"head_dim\":\"32768\"") : NULL;
        free(j);
        expect_refused_text(bad, j2, data, ndata, "metadata d_model 65536 on D=32 tensors",
                            "tensor 'model.embeddings.weight' has shape [300,32], the config needs [300,65536]");
    }
    /* 7. a window longer than any context is valid (2^31, not an int: header_edits) */
    {
        char *j = replace1(json, "\"window\":\"7\"", "\"window\":\"2147483647\"");
        if (j) {
            write_with_header(bad, j, data, ndata);
            DNConfig c = expect_accepted(bad, "window 2^31-1");
            CHECK(c.window == INT_MAX, "window 2^31-1 read as %d", c.window);
            free(j);
        }
    }
    /* 8. strings from the file are escaped (and cut) in messages (more in header_edits) */
    expect_refused_extra_tensor(bad, json, "evil\n\x1b[31mname\xc3\xa9", 2, data, ndata, "tensor name with newline and ESC",
                                "unexpected tensor 'evil\\n\\x1b[31mname\\xc3\\xa9'");
    {
        char name[400];
        memset(name, 'n', 300);
        name[0] = '\n';
        name[300] = 0;
        cJSON *root = cJSON_Parse(json);
        cJSON *x = cJSON_AddObjectToObject(root, name);
        cJSON_AddStringToObject(x, "dtype", "F32");
        cJSON_AddItemToObject(x, "shape", cJSON_CreateIntArray((const int[]){0}, 1));
        cJSON *o = cJSON_AddArrayToObject(x, "data_offsets");
        cJSON_AddItemToArray(o, cJSON_CreateNumber(0));
        cJSON_AddItemToArray(o, cJSON_CreateNumber(0));
        char *j = cJSON_PrintUnformatted(root);
        cJSON_Delete(root);
        write_with_header(bad, j, data, ndata);
        free(j);
        DNConfig c;
        float *p = NULL;
        char err[DN_ERR_LEN] = "";
        int rc = dn_checkpoint_read(bad, &c, &p, err, sizeof err);
        const char *q = strstr(err, "'\\nnnn");
        CHECK(rc == -1 && strstr(err, "tensor name too long (300 bytes)") && q && strstr(q, "...'") && strlen(q) < DN_ESC_LEN + 2 && printable(err),
              "a 300-byte tensor name is escaped and cut: '%s'", err);
        free(p);
    }
}

static void test_roundtrip_and_corruption(void) {
    DNConfig c, c2;
    DNParamTable t;
    char err[DN_ERR_LEN], path[512], bad[512];
    for (int tied = 0; tied <= 1; tied++) {
        hybrid_config(&c, tied);
        if (!tied) c.l2_eps = 1e-5f; /* a value of our own survives the round trip */
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
        char v[2048];
        CHECK(dn_checkpoint_read_meta(path, "step", v, sizeof v, err, sizeof err) == 0 && !strcmp(v, "123"), "extra metadata kept");
        CHECK(dn_checkpoint_read_meta(path, "fla_config", v, sizeof v, err, sizeof err) == 0 && strstr(v, "delta_net"), "fla_config metadata present");
        /* a value that does not fit is an error, never silently cut */
        CHECK(dn_checkpoint_read_meta(path, "step", v, 3, err, sizeof err) == -1 && strstr(err, "3 bytes long"), "read_meta refuses to cut '123' to 2 bytes: %s", err);
        CHECK(dn_checkpoint_read_meta(path, "step", v, 4, err, sizeof err) == 0 && !strcmp(v, "123"), "read_meta with exactly enough room");
        long step = -1;
        CHECK(dn_checkpoint_step(path, &step, err, sizeof err) == 0 && step == 123, "dn_checkpoint_step reads step 123 (got %ld): %s", step, err);
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
    uint64_t hl;
    unsigned char *good;
    char *json = read_header(path, &good, &n, &hl);
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
    /* edits made on the JSON text, the basic ones and issue 8's */
    expect_refused_edits(bad, json, data, ndata, header_edits, sizeof header_edits / sizeof header_edits[0]);
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
        expect_refused_extra_tensor(bad, json, "model.layers.9.attn.q_proj.weight", 2, data, ndata, "extra tensor",
                                    "unexpected tensor 'model.layers.9");
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
    test_header_defects(bad, json, data, ndata);
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
    /* 9. moments that would poison AdamW, and RNG states that wrap or stick */
    {
        char bpath[512];
        path_in(bpath, sizeof bpath, "bad.state");
        struct { size_t at; int in_v; float x; const char *needle; } moments[] = {
            {5, 0, NAN, "'adam.m' element 5 is nan; moments must be finite"},
            {7, 0, INFINITY, "'adam.m' element 7 is inf"},
            {9, 1, -INFINITY, "'adam.v' element 9 is -inf"},
            {11, 1, -1e-9f, "'adam.v' element 11 is -1e-09; moments must be finite and second moments >= 0"},
        };
        for (int i = 0; i < 4; i++) {
            float *mm = xcalloc(t.total, sizeof(float)), *vv = xcalloc(t.total, sizeof(float));
            memcpy(mm, m, t.total * 4);
            memcpy(vv, v, t.total * 4);
            (moments[i].in_v ? vv : mm)[moments[i].at] = moments[i].x;
            CHECK(dn_state_write(bpath, &t, mm, vv, &st, err, sizeof err) == 0, "state write: %s", err);
            err[0] = 0;
            rc = dn_state_read(bpath, &t, m2, v2, &s2, err, sizeof err);
            CHECK(rc == -1 && strstr(err, moments[i].needle) && printable(err), "state with %s refused: %s", moments[i].needle, err);
            free(mm); free(vv);
        }
        /* -0.0 is a valid second moment */
        float keep = v[3];
        v[3] = -0.0f;
        dn_state_write(bpath, &t, m, v, &st, err, sizeof err);
        CHECK(dn_state_read(bpath, &t, m2, v2, &s2, err, sizeof err) == 0, "a second moment of -0.0 is fine: %s", err);
        v[3] = keep;
        size_t n = 0;
        uint64_t hl;
        unsigned char *good;
        char *json = read_header(path, &good, &n, &hl);
        const char *rngs[] = {"-1", "0", "+5", " 5", "18446744073709551616", "5x", "", "0x10"};
        for (int i = 0; i < 8; i++) {
            char to[64];
            snprintf(to, sizeof to, "\"rng_state\":\"%s\"", rngs[i]);
            char *j = replace1(json, "\"rng_state\":\"18364758544493064720\"", to);
            if (!j) continue;
            write_with_header(bpath, j, good + 8 + hl, n - 8 - hl);
            free(j);
            err[0] = 0;
            rc = dn_state_read(bpath, &t, m2, v2, &s2, err, sizeof err);
            CHECK(rc == -1 && strstr(err, "'rng_state'") && strstr(err, "is not a non-zero decimal uint64") && printable(err),
                  "rng_state '%s' refused: %s", rngs[i], err);
        }
        char *j = replace1(json, "\"rng_state\":\"18364758544493064720\"", "\"rng_state\":\"18446744073709551615\"");
        if (j) {
            write_with_header(bpath, j, good + 8 + hl, n - 8 - hl);
            free(j);
            CHECK(dn_state_read(bpath, &t, m2, v2, &s2, err, sizeof err) == 0 && s2.rng_state == UINT64_MAX, "rng_state 2^64-1 is valid: %s", err);
        }
        j = replace1(json, "\"step\":\"4242\"", "\"step\":\"-4\"");
        if (j) {
            write_with_header(bpath, j, good + 8 + hl, n - 8 - hl);
            free(j);
            rc = dn_state_read(bpath, &t, m2, v2, &s2, err, sizeof err);
            CHECK(rc == -1 && strstr(err, "'step' = '-4' is not an integer"), "negative step refused: %s", err);
        }
        free(json);
        free(good);
    }
    free(m); free(v); free(m2); free(v2); free(m3); free(v3);
    dn_free_param_table(&t);
    dn_free_param_table(&t2);
}

/* 9. The weights file carries the step the trainer passes as extra_meta, the state the same step,
 * and dn_checkpoint_step reads it strictly. */
static void test_step(void) {
    DNConfig c;
    DNParamTable t;
    char err[DN_ERR_LEN], wpath[512], spath[600];
    hybrid_config(&c, 1);
    dn_build_param_table(&t, &c, err, sizeof err);
    float *w = xcalloc(t.total, sizeof(float)), *m = xcalloc(t.total, sizeof(float)), *v = xcalloc(t.total, sizeof(float));
    dn_init_params(&t, w, 5);
    path_in(wpath, sizeof wpath, "model_000077.safetensors");
    snprintf(spath, sizeof spath, "%s.state", wpath);
    DNTrainState st = {.step = 77, .rng_state = 99, .data_shard = 0, .data_pos = 0};
    const char *meta[] = {"step", "77", NULL, NULL};
    CHECK(dn_state_write(spath, &t, m, v, &st, err, sizeof err) == 0, "state write: %s", err);
    CHECK(dn_checkpoint_write(wpath, &t, w, DN_BF16, meta, err, sizeof err) == 0, "weights write: %s", err);
    long step = -1;
    DNTrainState s2;
    CHECK(dn_checkpoint_step(wpath, &step, err, sizeof err) == 0 && step == 77, "weights step 77 (got %ld): %s", step, err);
    CHECK(dn_state_read(spath, &t, m, v, &s2, err, sizeof err) == 0 && s2.step == step, "the state's step matches the weights' (%ld)", s2.step);
    /* the state file is not a weights file */
    step = -1;
    CHECK(dn_checkpoint_step(spath, &step, err, sizeof err) == -1 && strstr(err, "not a deltanet.c file") && step == -1, "state file refused by dn_checkpoint_step: %s", err);
    /* a weights file without a step */
    CHECK(dn_checkpoint_write(wpath, &t, w, DN_BF16, NULL, err, sizeof err) == 0, "write without step: %s", err);
    CHECK(dn_checkpoint_step(wpath, &step, err, sizeof err) == -1 && strstr(err, "lacks 'step'") && step == -1, "no step: %s", err);
    const char *bad_steps[] = {"-1", "12x", "+12", " 12", "", "99999999999999999999", "1.5", "0x10"};
    for (int i = 0; i < 8; i++) {
        const char *mb[] = {"step", bad_steps[i], NULL, NULL};
        CHECK(dn_checkpoint_write(wpath, &t, w, DN_BF16, mb, err, sizeof err) == 0, "write: %s", err);
        err[0] = 0;
        int rc = dn_checkpoint_step(wpath, &step, err, sizeof err);
        CHECK(rc == -1 && strstr(err, "'step'") && strstr(err, "is not an integer") && step == -1 && printable(err), "step '%s' refused: %s", bad_steps[i], err);
    }
    const char *m0[] = {"step", "0", NULL, NULL};
    dn_checkpoint_write(wpath, &t, w, DN_BF16, m0, err, sizeof err);
    CHECK(dn_checkpoint_step(wpath, &step, err, sizeof err) == 0 && step == 0, "step 0 is valid: %s", err);
    /* extra metadata may not repeat a key (the reader would refuse the file) */
    const char *dup[] = {"format", "x", NULL, NULL};
    CHECK(dn_checkpoint_write(wpath, &t, w, DN_BF16, dup, err, sizeof err) == -1 && strstr(err, "metadata key 'format' given twice"), "duplicate metadata key refused by the writer: %s", err);
    CHECK(dn_checkpoint_step(wpath, &step, err, sizeof err) == 0 && step == 0, "the refused write left the old file: %s", err);
    free(w); free(m); free(v);
    dn_free_param_table(&t);
}

/* dn_escape: every control, quote, backslash and high byte escaped; cut with "..." without
 * splitting an escape; a string that fits is never cut. dn_path: refuses what does not fit. */
static void test_escape(void) {
    char b[DN_ESC_LEN], e[DN_ERR_LEN];
    CHECK(!strcmp(dn_escape(b, sizeof b, "a\nb\tc\rd", (size_t)-1), "a\\nb\\tc\\rd"), "newline, tab, CR: %s", b);
    CHECK(!strcmp(dn_escape(b, sizeof b, "\x1b[31m", (size_t)-1), "\\x1b[31m"), "ESC: %s", b);
    CHECK(!strcmp(dn_escape(b, sizeof b, "say \"hi\" \\o/", (size_t)-1), "say \\\"hi\\\" \\\\o/"), "quotes and backslashes: %s", b);
    CHECK(!strcmp(dn_escape(b, sizeof b, "caf\xc3\xa9\x7f\x80\xff", (size_t)-1), "caf\\xc3\\xa9\\x7f\\x80\\xff"), "high bytes and DEL: %s", b);
    CHECK(!strcmp(dn_escape(b, sizeof b, "F32\0junk", 8), "F32\\x00junk"), "embedded NUL with an explicit length: %s", b);
    CHECK(!strcmp(dn_escape(b, sizeof b, NULL, (size_t)-1), "(null)"), "NULL: %s", b);
    CHECK(!strcmp(dn_escape(b, sizeof b, "", (size_t)-1), ""), "empty");
    char big[300];
    memset(big, 'a', 299);
    big[299] = 0;
    dn_escape(b, sizeof b, big, (size_t)-1);
    CHECK(strlen(b) == DN_ESC_LEN - 1 && !strcmp(b + DN_ESC_LEN - 4, "..."), "299 bytes cut to %d with '...': %zu bytes", DN_ESC_LEN - 1, strlen(b));
    memset(big, '\n', 299);
    dn_escape(b, 20, big, (size_t)-1);
    CHECK(!strcmp(b, "\\n\\n\\n\\n\\n\\n\\n\\n..."), "cut between escapes, never inside one: %s", b);
    memset(big, '\x1b', 299);
    dn_escape(b, 12, big, (size_t)-1);
    CHECK(!strcmp(b, "\\x1b\\x1b..."), "cut between \\xNN escapes: %s", b);
    CHECK(!strcmp(dn_escape(b, 4, "abc", (size_t)-1), "abc"), "a string that fits exactly is not cut: %s", b);
    CHECK(!strcmp(dn_escape(b, 4, "abcd", (size_t)-1), "..."), "one byte too many: %s", b);
    CHECK(!strcmp(dn_escape(b, 3, "abcd", (size_t)-1), "ab"), "no room for '...': %s", b);
    CHECK(!strcmp(dn_escape(b, 3, "\n\n", (size_t)-1), "\\n"), "room for one escape only: '%s'", b);
    CHECK(!strcmp(dn_escape(b, 3, "\x1b", (size_t)-1), ""), "no room for a whole escape: '%s'", b);
    CHECK(!strcmp(dn_escape(b, 4, "\x1b", (size_t)-1), "..."), "room for '...' only: '%s'", b);
    CHECK(!strcmp(dn_escape(b, 1, "abcd", (size_t)-1), ""), "cap 1");
    char p[8];
    CHECK(dn_path(p, sizeof p, e, sizeof e, "%s/%s", "ab", "cdef") == 0 && !strcmp(p, "ab/cdef"), "7 bytes fit in 8: %s", p);
    e[0] = 0;
    CHECK(dn_path(p, sizeof p, e, sizeof e, "%s/%s", "ab", "cdefg") == -1 && p[0] == 0 && strstr(e, "path too long (8 bytes, at most 7)"), "8 bytes refused: %s", e);
    CHECK(dn_path(p, sizeof p, e, sizeof e, "%s", "a\nbcdefghij") == -1 && strstr(e, "a\\nbcdef") && printable(e), "the cut path is escaped: %s", e);
}

/* Readers refuse FIFOs and directories at once (a regression fails by alarm, never hangs). */
static void test_not_regular(void) {
    char fifo[512], sub[512], err[DN_ERR_LEN];
    path_in(fifo, sizeof fifo, "fifo.safetensors");
    path_in(sub, sizeof sub, "dir.safetensors");
    CHECK(mkfifo(fifo, 0600) == 0 && mkdir(sub, 0700) == 0, "test setup: mkfifo, mkdir");
    test_watchdog("test_checkpoint", 10);
    FILE *f = dn_open_regular(fifo, err, sizeof err);
    CHECK(!f && strstr(err, "is a FIFO, not a regular file"), "dn_open_regular refuses a FIFO: %s", err);
    if (f) fclose(f);
    f = dn_open_regular(sub, err, sizeof err);
    CHECK(!f && strstr(err, "is a directory, not a regular file"), "dn_open_regular refuses a directory: %s", err);
    if (f) fclose(f);
    expect_refused(fifo, "a FIFO as a checkpoint", "a FIFO");
    expect_refused(sub, "a directory as a checkpoint", "a directory");
    DNConfig c;
    DNParamTable t;
    hybrid_config(&c, 1);
    dn_build_param_table(&t, &c, err, sizeof err);
    float *m = xcalloc(t.total, sizeof(float)), *v = xcalloc(t.total, sizeof(float));
    DNTrainState st;
    long step;
    char val[16];
    CHECK(dn_state_read(fifo, &t, m, v, &st, err, sizeof err) == -1 && strstr(err, "a FIFO"), "dn_state_read refuses a FIFO: %s", err);
    CHECK(dn_checkpoint_step(fifo, &step, err, sizeof err) == -1 && strstr(err, "a FIFO"), "dn_checkpoint_step refuses a FIFO: %s", err);
    CHECK(dn_checkpoint_read_meta(sub, "step", val, sizeof val, err, sizeof err) == -1 && strstr(err, "a directory"), "read_meta refuses a directory: %s", err);
    test_watchdog_off();
    free(m); free(v);
    dn_free_param_table(&t);
}

/* Atomic writes: a link planted at the temporary name or at the destination is never written
 * through; stale temporaries of dead writers go, those of live ones and foreign names stay. */
static void test_atomic(void) {
    char path[512], victim[512], tmp[600], err[DN_ERR_LEN];
    DNConfig c, c2;
    DNParamTable t;
    hybrid_config(&c, 1);
    dn_build_param_table(&t, &c, err, sizeof err);
    float *w = xcalloc(t.total, sizeof(float));
    dn_init_params(&t, w, 9);
    path_in(path, sizeof path, "atomic.safetensors");
    path_in(victim, sizeof victim, "victim.txt");
    spit(victim, "precious", 8);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    CHECK(symlink(victim, tmp) == 0, "test setup: symlink");
    int rc = dn_checkpoint_write(path, &t, w, DN_F32, NULL, err, sizeof err);
    struct stat sb;
    CHECK(file_is(victim, "precious"), "a link planted at <path>.tmp.<pid> is not written through");
    CHECK(rc == -1 || (lstat(path, &sb) == 0 && S_ISREG(sb.st_mode)), "the write failed or made a regular file: rc %d %s", rc, err);
    CHECK(lstat(tmp, &sb) != 0, "no temporary (or link) left at <path>.tmp.<pid>");
    float *r = NULL;
    CHECK(rc == 0 && dn_checkpoint_read(path, &c2, &r, err, sizeof err) == 0 && !memcmp(r, w, t.total * 4), "the checkpoint written beside the planted link reads back: %s", err);
    free(r);
    /* a link at the destination is replaced, not followed */
    unlink(path);
    CHECK(symlink(victim, path) == 0, "test setup: symlink at the destination");
    CHECK(dn_checkpoint_write(path, &t, w, DN_F32, NULL, err, sizeof err) == 0, "write over a link: %s", err);
    CHECK(file_is(victim, "precious") && lstat(path, &sb) == 0 && S_ISREG(sb.st_mode), "a link at the destination is replaced, its target untouched");

    /* stale temporaries: a dead pid's goes (a regular file and a link), a live pid's and names
     * dn_atomic_begin never makes stay */
    pid_t child = fork();
    if (child == 0) _exit(0);
    waitpid(child, NULL, 0);
    char dead[600], dead_link[700], live[600], odd[5][600];
    snprintf(dead, sizeof dead, "%s.tmp.%ld", path, (long)child);
    spit(dead, "half a checkpoint", 17);
    path_in(tmp, sizeof tmp, "other.safetensors");
    snprintf(dead_link, sizeof dead_link, "%s.tmp.%ld", tmp, (long)child);
    CHECK(symlink(victim, dead_link) == 0, "test setup: stale link");
    snprintf(live, sizeof live, "%s.tmp.%ld", path, (long)getppid());
    spit(live, "a live writer's", 15);
    const char *odd_tails[5] = {"+5", "0", "012", "12x", "-1"};
    for (int i = 0; i < 5; i++) { snprintf(odd[i], sizeof odd[i], "%s.tmp.%s", path, odd_tails[i]); spit(odd[i], "odd", 3); }
    CHECK(dn_checkpoint_write(path, &t, w, DN_F32, NULL, err, sizeof err) == 0, "write: %s", err);
    CHECK(access(dead, F_OK) != 0, "a stale <path>.tmp.<dead pid> is removed by the next save");
    CHECK(access(live, F_OK) == 0 && file_is(live, "a live writer's"), "a live writer's temporary stays");
    int odd_kept = 1;
    for (int i = 0; i < 5; i++) odd_kept &= file_is(odd[i], "odd");
    CHECK(odd_kept, "names dn_atomic_begin never makes (+5, 0, 012, 12x, -1) stay");
    CHECK(lstat(dead_link, &sb) == 0, "another path's stale temporary is not this save's business");
    CHECK(dn_remove_stale_temps(tmp) == 1 && lstat(dead_link, &sb) != 0 && file_is(victim, "precious"),
          "a stale link is removed, its target untouched");
    CHECK(dn_remove_stale_temps(path) == 0, "nothing stale left");
    char slash[600];
    snprintf(slash, sizeof slash, "%s/", dir);
    CHECK(dn_checkpoint_write(slash, &t, w, DN_F32, NULL, err, sizeof err) == -1 && strstr(err, "not a file name"), "a path ending in '/' is refused: %s", err);
    unlink(live);
    for (int i = 0; i < 5; i++) unlink(odd[i]);
    free(w);
    dn_free_param_table(&t);
}

/* Count the entries of a directory (without . and ..). */
static int count_entries(const char *d) {
    DIR *dd = opendir(d);
    if (!dd) return -1;
    int n = 0;
    for (struct dirent *de; (de = readdir(dd)) != NULL;) n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    closedir(dd);
    return n;
}

/* 10. A path that fits but whose temporary does not: the write fails with a message and touches
 * nothing; a path longer than DN_PATH_MAX likewise. */
static void test_long_paths(void) {
    char err[DN_ERR_LEN];
    const size_t L = DN_PATH_MAX - 4; /* the path fits (with its NUL); "<path>.tmp.<pid>" cannot */
    char *lp = xcalloc(DN_PATH_MAX + 1024, 1), *parent = xcalloc(DN_PATH_MAX + 1024, 1);
    strcpy(lp, dir);
    int made = 1;
    while (L - strlen(lp) - 1 > 250) {
        strcat(lp, "/");
        memset(lp + strlen(lp), 'd', 200);
        made &= mkdir(lp, 0700) == 0;
    }
    strcpy(parent, lp);
    strcat(lp, "/");
    memset(lp + strlen(lp), 'f', L - strlen(lp));
    CHECK(made && strlen(lp) == L, "test setup: a %zu-byte path", strlen(lp));
    spit(lp, "old", 3);
    CHECK(file_is(lp, "old"), "test setup: a file at the %zu-byte path", L);
    DNConfig c;
    DNParamTable t;
    hybrid_config(&c, 1);
    dn_build_param_table(&t, &c, err, sizeof err);
    float *w = xcalloc(t.total, sizeof(float));
    err[0] = 0;
    int rc = dn_checkpoint_write(lp, &t, w, DN_F32, NULL, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "path too long") && printable(err) && strlen(err) < 200, "a path whose temporary would not fit is refused: %s", err);
    CHECK(file_is(lp, "old") && count_entries(parent) == 1, "the existing file is untouched and nothing was added");
    DNTrainState st = {.step = 1, .rng_state = 1};
    err[0] = 0;
    rc = dn_state_write(lp, &t, w, w, &st, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "path too long") && file_is(lp, "old") && count_entries(parent) == 1, "the state writer too: %s", err);
    /* longer than DN_PATH_MAX itself */
    char *huge = xcalloc(DN_PATH_MAX + 200, 1);
    snprintf(huge, DN_PATH_MAX + 200, "%s/", dir);
    memset(huge + strlen(huge), 'h', DN_PATH_MAX + 100 - strlen(huge));
    int before = count_entries(dir);
    err[0] = 0;
    rc = dn_checkpoint_write(huge, &t, w, DN_F32, NULL, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "path too long") && count_entries(dir) == before, "a %zu-byte path is refused: %s", strlen(huge), err);
    DNAtomic a;
    CHECK(dn_atomic_begin(&a, huge, err, sizeof err) == -1 && a.f == NULL && a.tmp[0] == 0, "dn_atomic_begin refuses it and holds nothing");
    free(huge); free(lp); free(parent); free(w);
    dn_free_param_table(&t);
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

/* Gated DeltaNet ('N'): the gdn preset's size beside d12's, its table (fla's names and shapes, no
 * weight decay on A_log and dt_bias, fla's init), the geometry's validation, a GDN hybrid's round
 * trip with its fla_config, files without the geometry keys (written before 'N' existed). */
/* A training state written before the tensors were aligned (the packed layout: no gaps) of a model
 * whose layout changed (gated layers: A_log, dt_bias of 3 floats) is read into the aligned layout. */
static void test_state_packed(void) {
    DNConfig c;
    DNParamTable t;
    char err[DN_ERR_LEN], path[512];
    test_config(&c, "NSNG", 32, 2, 16, 96, 300, 384, 4, 2, 7, 1);
    c.gdn_heads = 3; c.gdn_head_dim = 8; c.gdn_expand_v = 2;
    CHECK(dn_build_param_table(&t, &c, err, sizeof err) == 0, "NSNG table: %s", err);
    DNParamTable packed = t; /* the same tensors, offsets packed */
    packed.params = xcalloc((size_t)t.n_params, sizeof(DNParam));
    memcpy(packed.params, t.params, (size_t)t.n_params * sizeof(DNParam));
    size_t at = 0;
    for (int i = 0; i < t.n_params; i++) { packed.params[i].offset = at; at += t.params[i].mem_numel; }
    packed.total = at;
    CHECK(packed.total < t.total, "the gated test model's aligned layout has gaps (%zu > %zu packed)", t.total, packed.total);
    float *pm = xcalloc(packed.total, sizeof(float)), *pv = xcalloc(packed.total, sizeof(float));
    float *m = xcalloc(t.total, sizeof(float)), *v = xcalloc(t.total, sizeof(float));
    for (size_t i = 0; i < packed.total; i++) { pm[i] = 1.0f + (float)i; pv[i] = 0.5f * (float)i; }
    for (size_t i = 0; i < t.total; i++) m[i] = v[i] = -7.0f; /* overwritten everywhere, gaps with 0 */
    DNTrainState st = {.step = 5, .rng_state = 99, .data_shard = 0, .data_pos = 0}, s2;
    path_in(path, sizeof path, "packed.state");
    CHECK(dn_state_write(path, &packed, pm, pv, &st, err, sizeof err) == 0, "packed state write: %s", err);
    CHECK(dn_state_read(path, &t, m, v, &s2, err, sizeof err) == 0, "packed state read: %s", err);
    int same = 1;
    size_t end = 0, gaps = 0;
    for (int i = 0; i < t.n_params; i++) {
        const DNParam *p = &t.params[i];
        for (size_t j = end; j < p->offset; j++) { same &= m[j] == 0.0f && v[j] == 0.0f; gaps++; }
        same &= !memcmp(m + p->offset, pm + packed.params[i].offset, p->mem_numel * sizeof(float)) &&
                !memcmp(v + p->offset, pv + packed.params[i].offset, p->mem_numel * sizeof(float));
        end = p->offset + p->mem_numel;
    }
    for (size_t j = end; j < t.total; j++) { same &= m[j] == 0.0f && v[j] == 0.0f; gaps++; }
    CHECK(same && gaps == t.total - packed.total && s2.step == 5,
          "a packed (pre-alignment) state of a gated model: every tensor's moments at its aligned offset, %zu gap elements 0", gaps);
    free(pm); free(pv); free(m); free(v); free(packed.params);
    dn_free_param_table(&t);
}

static void test_gdn(void) {
    DNConfig c, c2;
    DNParamTable t, t12;
    char err[DN_ERR_LEN], path[512], v[4096];
    CHECK(dn_config_preset(&c, "gdn") == 0 && !strcmp(c.layers, "NNNNNNNNNNNN"), "gdn preset: 12 'N' layers");
    CHECK(c.d_model == 768 && c.gdn_heads == 6 && c.gdn_head_dim == 64 && c.gdn_expand_v == 2, "gdn preset geometry");
    CHECK(dn_build_param_table(&t, &c, err, sizeof err) == 0, "gdn table: %s", err);
    dn_config_preset(&c2, "d12");
    dn_build_param_table(&t12, &c2, err, sizeof err);
    double ratio = (double)t.total_real / (double)t12.total_real;
    printf("  ok  gdn preset: %zu parameters (%d tensors), %.4f x d12's %zu\n", t.total_real, t.n_params, ratio, t12.total_real);
    CHECK(fabs(ratio - 1.0) < 0.05, "gdn parameters %zu not within 5%% of d12's %zu", t.total_real, t12.total_real);
    struct { const char *name; int ndim, s0, s1, s2, decay; } want[] = {
        {"model.layers.3.attn.q_proj.weight", 2, 384, 768, 0, 1}, {"model.layers.3.attn.k_proj.weight", 2, 384, 768, 0, 1},
        {"model.layers.3.attn.v_proj.weight", 2, 768, 768, 0, 1}, {"model.layers.3.attn.a_proj.weight", 2, 6, 768, 0, 1},
        {"model.layers.3.attn.b_proj.weight", 2, 6, 768, 0, 1}, {"model.layers.3.attn.A_log", 1, 6, 0, 0, 0},
        {"model.layers.3.attn.dt_bias", 1, 6, 0, 0, 0}, {"model.layers.3.attn.q_conv1d.weight", 3, 384, 1, 4, 1},
        {"model.layers.3.attn.k_conv1d.weight", 3, 384, 1, 4, 1}, {"model.layers.3.attn.v_conv1d.weight", 3, 768, 1, 4, 1},
        {"model.layers.3.attn.g_proj.weight", 2, 768, 768, 0, 1}, {"model.layers.3.attn.o_norm.weight", 1, 128, 0, 0, 0},
        {"model.layers.3.attn.o_proj.weight", 2, 768, 768, 0, 1}};
    int layer_tensors = 0;
    for (int i = 0; i < t.n_params; i++) layer_tensors += t.params[i].layer == 3;
    CHECK(layer_tensors == 13 + 5, "an 'N' layer has 13 mixer tensors + 2 norms + 3 MLP, got %d", layer_tensors);
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        int i = dn_find_param(&t, want[k].name);
        const DNParam *p = i >= 0 ? &t.params[i] : NULL;
        int ok = p && p->ndim == want[k].ndim && p->shape[0] == want[k].s0 && (p->ndim < 2 || p->shape[1] == want[k].s1) &&
                 (p->ndim < 3 || p->shape[2] == want[k].s2) && p->decay == want[k].decay;
        CHECK(ok, "gdn tensor %s: shape / decay as fla's", want[k].name);
    }
    CHECK(t.layer[3].p[DN_P_A_LOG] != DN_NO_PARAM && t.layer[3].p[DN_P_G] != DN_NO_PARAM, "per-layer offsets of the 'N' kinds");
    /* fla's init: A = exp(A_log) in (0, 16), dt = softplus(dt_bias) in [1e-4, 0.1] */
    float *w = xcalloc(t.total, sizeof(float));
    dn_init_params(&t, w, 5);
    int init_ok = 1;
    double Amin = 1e9, Amax = 0, dmin = 1e9, dmax = 0;
    for (int l = 0; l < 12; l++)
        for (int h = 0; h < 6; h++) {
            double A = exp(w[t.layer[l].p[DN_P_A_LOG] + h]), dt = log1p(exp(w[t.layer[l].p[DN_P_DT_BIAS] + h]));
            init_ok &= A > 0 && A < 16 && dt >= 1e-4 * 0.999 && dt <= 0.1 * 1.001;
            Amin = fmin(Amin, A); Amax = fmax(Amax, A); dmin = fmin(dmin, dt); dmax = fmax(dmax, dt);
        }
    CHECK(init_ok, "fla's init: A in (0, 16), softplus(dt_bias) in [1e-4, 0.1]");
    printf("  ok  gdn init: exp(A_log) in [%.3f, %.3f], softplus(dt_bias) in [%.5f, %.5f]\n", Amin, Amax, dmin, dmax);
    free(w);
    dn_free_param_table(&t);
    dn_free_param_table(&t12);

    /* the geometry is validated on every model */
    DNConfig b;
    hybrid_config(&c, 0);
    b = c; b.gdn_heads = 0; expect_bad_config(b, "zero gdn_heads", "gdn_heads");
    b = c; b.gdn_head_dim = -3; expect_bad_config(b, "negative gdn_head_dim", "gdn_head_dim");
    b = c; b.gdn_expand_v = 0; expect_bad_config(b, "zero gdn_expand_v", "gdn_expand_v");
    b = c; b.gdn_heads = 65536; b.gdn_head_dim = 65536; expect_bad_config(b, "gated DeltaNet width past 2^20", "value width");

    /* a GDN hybrid with its own geometry: exact round trip, fla GatedDeltaNetConfig metadata */
    test_config(&c, "NSNG", 32, 2, 16, 96, 300, 384, 4, 2, 7, 0);
    c.gdn_heads = 3; c.gdn_head_dim = 8; c.gdn_expand_v = 1;
    CHECK(dn_build_param_table(&t, &c, err, sizeof err) == 0, "NSNG table: %s", err);
    w = xcalloc(t.total, sizeof(float));
    dn_init_params(&t, w, 9);
    path_in(path, sizeof path, "gdn.safetensors");
    CHECK(dn_checkpoint_write(path, &t, w, DN_F32, NULL, err, sizeof err) == 0, "gdn write: %s", err);
    float *r = NULL;
    CHECK(dn_checkpoint_read(path, &c2, &r, err, sizeof err) == 0, "gdn read back: %s", err);
    CHECK(r && !memcmp(r, w, t.total * sizeof(float)) && !memcmp(&c, &c2, sizeof c), "gdn hybrid round trip exact (weights, config)");
    free(r);
    CHECK(dn_checkpoint_read_meta(path, "fla_config", v, sizeof v, err, sizeof err) == 0, "fla_config: %s", err);
    cJSON *fc = cJSON_Parse(v);
    cJSON *mt = cJSON_GetObjectItemCaseSensitive(fc, "model_type"), *hd = cJSON_GetObjectItemCaseSensitive(fc, "head_dim");
    cJSON *nh = cJSON_GetObjectItemCaseSensitive(fc, "num_heads"), *ev = cJSON_GetObjectItemCaseSensitive(fc, "expand_v");
    cJSON *at = cJSON_GetObjectItemCaseSensitive(fc, "attn"), *ug = cJSON_GetObjectItemCaseSensitive(fc, "use_gate");
    CHECK(cJSON_IsString(mt) && !strcmp(mt->valuestring, "gated_deltanet") && cJSON_IsNumber(hd) && hd->valueint == 8 &&
          cJSON_IsNumber(nh) && nh->valueint == 3 && cJSON_IsNumber(ev) && ev->valueint == 1 && cJSON_IsTrue(ug) &&
          cJSON_IsArray(at) && cJSON_GetArraySize(at) == 2, "fla_config of an NSNG model: gated_deltanet, heads 3, head_dim 8, expand_v 1, gate, two attention specs: %s", v);
    cJSON_Delete(fc);
    printf("  ok  NSNG round trip; fla_config %.160s...\n", v);
    free(w);
    dn_free_param_table(&t);
    /* 'D' and 'N' in one model: no fla model has both */
    test_config(&c, "DN", 32, 2, 16, 96, 300, 384, 4, 2, 7, 1);
    dn_build_param_table(&t, &c, err, sizeof err);
    w = xcalloc(t.total, sizeof(float));
    dn_init_params(&t, w, 10);
    CHECK(dn_checkpoint_write(path, &t, w, DN_F32, NULL, err, sizeof err) == 0, "DN write: %s", err);
    CHECK(dn_checkpoint_read_meta(path, "fla_config", v, sizeof v, err, sizeof err) == 0 && !strcmp(v, "{}"), "a D+N model's fla_config is {} (got %s)", v);
    CHECK(dn_checkpoint_read(path, &c2, &r, err, sizeof err) == 0 && !memcmp(&c, &c2, sizeof c), "DN round trip: %s", err);
    free(r);
    /* without the geometry keys: 'N' layers need them, other models get the presets' rule */
    size_t n = 0;
    unsigned char *good = slurp(path, &n);
    uint64_t hl;
    memcpy(&hl, good, 8);
    char *json = xcalloc(hl + 1, 1);
    memcpy(json, good + 8, hl);
    char bad[512];
    path_in(bad, sizeof bad, "gdn_bad.safetensors");
    cJSON *root = cJSON_Parse(json);
    cJSON_DeleteItemFromObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "__metadata__"), "gdn_head_dim");
    expect_refused_json(bad, root, good + 8 + hl, n - 8 - hl, "an 'N' model without gdn_head_dim", "gdn_head_dim");
    root = cJSON_Parse(json);
    cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "__metadata__"), "gdn_expand_v")->valuestring[0] = 'x';
    expect_refused_json(bad, root, good + 8 + hl, n - 8 - hl, "gdn_expand_v not a number", "gdn_expand_v");
    free(json); free(good); free(w);
    dn_free_param_table(&t);
    hybrid_config(&c, 1);
    dn_build_param_table(&t, &c, err, sizeof err);
    w = xcalloc(t.total, sizeof(float));
    dn_init_params(&t, w, 11);
    dn_checkpoint_write(path, &t, w, DN_F32, NULL, err, sizeof err);
    good = slurp(path, &n);
    memcpy(&hl, good, 8);
    json = xcalloc(hl + 1, 1);
    memcpy(json, good + 8, hl);
    root = cJSON_Parse(json);
    cJSON *md = cJSON_GetObjectItemCaseSensitive(root, "__metadata__");
    cJSON_DeleteItemFromObjectCaseSensitive(md, "gdn_heads");
    cJSON_DeleteItemFromObjectCaseSensitive(md, "gdn_head_dim");
    cJSON_DeleteItemFromObjectCaseSensitive(md, "gdn_expand_v");
    char *j = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    write_with_header(bad, j, good + 8 + hl, n - 8 - hl);
    c2 = expect_accepted(bad, "a DSDG file without the gdn keys");
    CHECK(!memcmp(&c, &c2, sizeof c), "a file without the gdn keys reads with the presets' geometry");
    root = cJSON_Parse(json);
    cJSON_DeleteItemFromObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "__metadata__"), "gdn_heads");
    expect_refused_json(bad, root, good + 8 + hl, n - 8 - hl, "a file with only some gdn keys", "gdn_heads");
    free(j); free(json); free(good); free(w);
    dn_free_param_table(&t);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/dn_test_ckpt_XXXXXX");
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 2; }
    test_presets();
    test_config_validation();
    test_bf16();
    test_escape();
    test_roundtrip_and_corruption();
    test_gdn();
    test_state_packed();
    test_state();
    test_step();
    test_not_regular();
    test_atomic();
    test_long_paths();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("warning: could not remove %s\n", dir);
    return test_summary("test_checkpoint");
}
