/*
 * src/model.c -- the implementation of model.h: the file helpers (escape, regular-file open,
 * checked paths, atomic writes), the config and its presets, the parameter table and its
 * initialisation, the random numbers, bf16 conversion, and the safetensors checkpoint and
 * training-state files (a generic writer and a validating reader under both). Written in C11;
 * it also compiles as C++.
 */
#include "../model.h"
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <cjson/cJSON.h>

void dn_seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- files ----------------------------------------------------------------------------------- */

/* The escaped form of byte c into e (at most 4 bytes); returns its length. */
static size_t dn_escape_byte(unsigned char c, char e[4]) {
    static const char hex[] = "0123456789abcdef";
    e[0] = '\\';
    if (c == '\n') { e[1] = 'n'; return 2; }
    if (c == '\t') { e[1] = 't'; return 2; }
    if (c == '\r') { e[1] = 'r'; return 2; }
    if (c == '"' || c == '\\') { e[1] = (char)c; return 2; }
    if (c < 0x20 || c >= 0x7f) { e[1] = 'x'; e[2] = hex[c >> 4]; e[3] = hex[c & 15]; return 4; }
    e[0] = (char)c;
    return 1;
}

const char *dn_escape(char *buf, size_t cap, const char *s, size_t len) {
    if (!buf || cap == 0) return buf;
    if (!s) s = "(null)";
    if (len == (size_t)-1) len = strlen(s);
    char e[4];
    /* does the whole escaped string fit? if not, keep room for "..." (when there is any) and never
     * cut an escape sequence in two */
    size_t full = 0;
    for (size_t i = 0; i < len && full < cap; i++) full += dn_escape_byte((unsigned char)s[i], e);
    const int cut = full + 1 > cap;
    const size_t room = cut && cap >= 4 ? cap - 4 : cap - 1;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        const size_t n = dn_escape_byte((unsigned char)s[i], e);
        if (o + n > room) break;
        memcpy(buf + o, e, n);
        o += n;
    }
    if (cut && cap >= 4) { memcpy(buf + o, "...", 3); o += 3; }
    buf[o] = 0;
    return buf;
}

/* dn_escape of a NUL-terminated string into a DN_ESC_LEN buffer, for messages. */
static const char *dn_esc(char buf[DN_ESC_LEN], const char *s) { return dn_escape(buf, DN_ESC_LEN, s, (size_t)-1); }

static const char *dn_file_kind(mode_t m) {
    return S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO" : S_ISCHR(m) ? "a character device"
         : S_ISBLK(m) ? "a block device" : S_ISSOCK(m) ? "a socket" : "not a regular file";
}

FILE *dn_open_regular(const char *path, char *err, size_t errlen) {
    /* O_NONBLOCK: opening a FIFO with no writer would otherwise block before fstat can refuse it;
     * O_NOCTTY: a terminal given as a path must not become our controlling terminal */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) { dn_seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    struct stat sb;
    if (fstat(fd, &sb) != 0) { dn_seterr(err, errlen, "%s: cannot stat: %s", path, strerror(errno)); close(fd); return NULL; }
    if (!S_ISREG(sb.st_mode)) { dn_seterr(err, errlen, "%s: is %s, not a regular file", path, dn_file_kind(sb.st_mode)); close(fd); return NULL; }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) { dn_seterr(err, errlen, "%s: %s", path, strerror(errno)); close(fd); return NULL; }
    FILE *f = fdopen(fd, "rb");
    if (!f) { dn_seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno)); close(fd); }
    return f;
}

int dn_path(char *buf, size_t cap, char *err, size_t errlen, const char *fmt, ...) {
    if (!buf || cap == 0) { dn_seterr(err, errlen, "path too long (no room for it)"); return -1; }
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap) {
        char e[DN_ESC_LEN];
        /* buf holds the cut path: show its start, escaped */
        if (n < 0) dn_seterr(err, errlen, "path cannot be formatted: %s", strerror(errno));
        else dn_seterr(err, errlen, "path too long (%d bytes, at most %zu): %s", n, cap - 1, dn_esc(e, buf));
        buf[0] = 0;
        return -1;
    }
    return 0;
}

int dn_mkdir_p(const char *dir, char *err, size_t errlen) {
    char p[DN_PATH_MAX], e[DN_ESC_LEN];
    if (dn_path(p, sizeof p, err, errlen, "%s", dir)) return -1;
    if (!p[0]) { dn_seterr(err, errlen, "empty folder name"); return -1; }
    for (char *s = p + 1;; s++) {
        const char c = *s;
        if (c != '/' && c != 0) continue;
        *s = 0;
        struct stat sb;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            dn_seterr(err, errlen, "cannot create the folder %s: %s", dn_esc(e, p), strerror(errno));
            return -1;
        }
        if (stat(p, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            dn_seterr(err, errlen, "%s exists and is not a folder", dn_esc(e, p));
            return -1;
        }
        *s = c;
        if (!c) return 0;
    }
}

/* Split path into its directory (or ".") and base name. */
static int dn_split_path(const char *path, char *dir, size_t dcap, const char **base) {
    const char *sl = strrchr(path, '/');
    *base = sl ? sl + 1 : path;
    if (!sl) return dn_path(dir, dcap, NULL, 0, ".");
    if (sl == path) return dn_path(dir, dcap, NULL, 0, "/");
    if (sl - path > INT_MAX) return -1;
    return dn_path(dir, dcap, NULL, 0, "%.*s", (int)(sl - path), path);
}

int dn_remove_stale_temps(const char *path) {
    char dir[DN_PATH_MAX];
    const char *base;
    if (dn_split_path(path, dir, sizeof dir, &base)) return 0;
    const size_t bl = strlen(base);
    DIR *d = opendir(dir);
    if (!d) return 0;
    int removed = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        const char *n = de->d_name;
        if (strncmp(n, base, bl) || strncmp(n + bl, ".tmp.", 5)) continue;
        /* only names dn_atomic_begin makes: digits of a pid (no sign, no space, fits a pid_t) */
        const char *pid = n + bl + 5;
        size_t nd = 0;
        while (pid[nd] >= '0' && pid[nd] <= '9') nd++;
        if (nd == 0 || nd > 9 || pid[nd] || pid[0] == '0') continue;
        const long p = strtol(pid, NULL, 10);
        if (p != (long)getpid()) {
            errno = 0;
            if (kill((pid_t)p, 0) == 0 || errno != ESRCH) continue; /* its writer may still run */
        }
        char full[DN_PATH_MAX];
        if (dn_path(full, sizeof full, NULL, 0, "%s/%s", dir, n)) continue;
        struct stat sb;
        if (lstat(full, &sb) == 0 && (S_ISREG(sb.st_mode) || S_ISLNK(sb.st_mode)) && unlink(full) == 0) removed++;
    }
    closedir(d);
    return removed;
}

int dn_atomic_begin(DNAtomic *a, const char *path, char *err, size_t errlen) {
    memset(a, 0, sizeof *a);
    if (dn_path(a->path, sizeof a->path, err, errlen, "%s", path)) return -1;
    if (dn_path(a->tmp, sizeof a->tmp, err, errlen, "%s.tmp.%ld", path, (long)getpid())) return -1;
    const char *sl = strrchr(path, '/');
    if (!path[0] || (sl && !sl[1])) { dn_seterr(err, errlen, "%s: not a file name (ends in '/')", path); a->tmp[0] = 0; return -1; }
    dn_remove_stale_temps(path);
    int fd = open(a->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) { dn_seterr(err, errlen, "%s: cannot create: %s", a->tmp, strerror(errno)); a->tmp[0] = 0; return -1; }
    a->f = fdopen(fd, "wb");
    if (!a->f) { dn_seterr(err, errlen, "%s: %s", a->tmp, strerror(errno)); close(fd); unlink(a->tmp); a->tmp[0] = 0; return -1; }
    return 0;
}

void dn_atomic_abort(DNAtomic *a) {
    if (a->f) fclose(a->f);
    a->f = NULL;
    if (a->tmp[0]) unlink(a->tmp);
    a->tmp[0] = 0;
}

int dn_atomic_commit(DNAtomic *a, char *err, size_t errlen) {
    int e = 0; /* the first error's errno */
    if (!a->f) e = EBADF;
    else if (fflush(a->f) != 0) e = errno ? errno : EIO;
    /* test hook: DN_TEST_WRITE_PAUSE=TEXT holds a finished temporary whose path contains TEXT for
     * a minute before it is committed, so that a test can kill -9 a writer mid-save
     * (tests/test_trainer.sh) */
    const char *pause = getenv("DN_TEST_WRITE_PAUSE");
    if (!e && pause && *pause && strstr(a->path, pause)) {
        fprintf(stderr, "test hook: holding %s\n", a->tmp);
        sleep(60);
    }
    if (!e && fsync(fileno(a->f)) != 0) e = errno ? errno : EIO;
    if (a->f && fclose(a->f) != 0 && !e) e = errno ? errno : EIO;
    a->f = NULL;
    if (e) { dn_seterr(err, errlen, "%s: write failed: %s", a->tmp[0] ? a->tmp : a->path, strerror(e)); dn_atomic_abort(a); return -1; }
    if (rename(a->tmp, a->path) != 0) {
        dn_seterr(err, errlen, "%s: cannot rename into place: %s", a->path, strerror(errno));
        dn_atomic_abort(a);
        return -1;
    }
    a->tmp[0] = 0;
    /* the rename itself reaches the disk only when the directory does */
    char dir[DN_PATH_MAX];
    const char *base;
    if (dn_split_path(a->path, dir, sizeof dir, &base) == 0) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) { fsync(dfd); close(dfd); }
    }
    return 0;
}

/* ---- config ---------------------------------------------------------------------------------- */

int dn_default_hidden(int d_model) {
    int h = (int)((double)d_model * 4.0 * 2.0 / 3.0);
    return 256 * ((h + 255) / 256);
}

int dn_pad_vocab(int vocab_size) {
    if (vocab_size > INT_MAX - 127) return -1; /* no int holds it; dn_config_validate refuses */
    return ((vocab_size + 127) / 128) * 128;
}

int dn_config_set_vocab(DNConfig *c, int vocab_size, char *err, size_t errlen) {
    if (vocab_size < DN_MIN_VOCAB || vocab_size > DN_MAX_VOCAB) {
        dn_seterr(err, errlen, "vocab_size %d out of range [%d, %d]", vocab_size, DN_MIN_VOCAB, DN_MAX_VOCAB);
        return -1;
    }
    c->vocab_size = vocab_size;
    c->padded_vocab = dn_pad_vocab(vocab_size);
    return 0;
}

static void dn_config_fill(DNConfig *c, int vocab, int d, int nl, int nh, int tied) {
    memset(c, 0, sizeof *c);
    c->vocab_size = vocab;
    c->padded_vocab = dn_pad_vocab(vocab);
    c->d_model = d;
    c->n_layer = nl;
    c->n_head = nh;
    c->head_dim = d / nh;
    c->conv_size = 4;
    c->hidden_size = dn_default_hidden(d);
    c->norm_eps = 1e-6f;
    c->l2_eps = DN_DEFAULT_L2_EPS;
    c->tie_embeddings = tied;
    c->attn_heads = nh;
    c->attn_kv_heads = nh;
    c->window = 512;
    c->rope_base = 10000.0f;
    dn_config_default_gdn(c);
    for (int l = 0; l < nl && l < DN_MAX_LAYERS; l++) c->layers[l] = 'D';
}

void dn_config_default_gdn(DNConfig *c) {
    c->gdn_heads = c->n_head;
    c->gdn_head_dim = c->head_dim / 2 > 1 ? c->head_dim / 2 : 1;
    c->gdn_expand_v = 2;
}

int dn_config_preset(DNConfig *cfg, const char *name) {
    if (!strcmp(name, "tiny")) dn_config_fill(cfg, 50257, 64, 4, 2, 1);
    else if (!strcmp(name, "d12")) dn_config_fill(cfg, 50257, 768, 12, 6, 1);
    else if (!strcmp(name, "340M")) dn_config_fill(cfg, 50257, 1024, 24, 8, 1);
    else if (!strcmp(name, "gdn")) {
        /* d12 with gated DeltaNet layers: 6 heads of K = 64, V = 128 (expand_v 2): 123,737,232
         * parameters, d12 has 123,718,656 (docs/MODEL.md) */
        dn_config_fill(cfg, 50257, 768, 12, 6, 1);
        for (int l = 0; l < 12; l++) cfg->layers[l] = 'N';
    } else return -1;
    return 0;
}

int dn_config_set_layers(DNConfig *cfg, const char *kinds, char *err, size_t errlen) {
    size_t n = strlen(kinds);
    if (n == 0 || n > DN_MAX_LAYERS) {
        dn_seterr(err, errlen, "layer string must have 1..%d letters, got %zu", DN_MAX_LAYERS, n);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = kinds[i];
        if (ch != 'D' && ch != 'S' && ch != 'G' && ch != 'N' && ch != 'L') {
            char e[DN_ESC_LEN];
            dn_seterr(err, errlen, "layer %zu has kind '%s'; use D (DeltaNet), N (gated DeltaNet), S (sliding window), G (global) or L (linear attention)", i, dn_escape(e, sizeof e, &kinds[i], 1));
            return -1;
        }
    }
    memset(cfg->layers, 0, sizeof cfg->layers);
    memcpy(cfg->layers, kinds, n);
    cfg->n_layer = (int)n;
    return 0;
}

int dn_config_validate(const DNConfig *c, char *err, size_t errlen) {
#define DN_REQ(cond, ...) do { if (!(cond)) { dn_seterr(err, errlen, __VA_ARGS__); return -1; } } while (0)
    DN_REQ(c->vocab_size >= DN_MIN_VOCAB && c->vocab_size <= DN_MAX_VOCAB, "vocab_size %d out of range [%d, %d]", c->vocab_size, DN_MIN_VOCAB, DN_MAX_VOCAB);
    /* at most vocab_size rounded up to 128: more padding rows would only cost memory (and a file
     * could claim 2^24 of them) */
    DN_REQ(c->padded_vocab >= c->vocab_size && c->padded_vocab <= dn_pad_vocab(c->vocab_size),
           "padded_vocab %d must be in [vocab_size %d, %d]", c->padded_vocab, c->vocab_size, dn_pad_vocab(c->vocab_size));
    DN_REQ(c->d_model >= 1 && c->d_model <= 65536, "d_model %d out of range [1, 65536]", c->d_model);
    DN_REQ(c->n_layer >= 1 && c->n_layer <= DN_MAX_LAYERS, "n_layer %d out of range [1, %d]", c->n_layer, DN_MAX_LAYERS);
    DN_REQ(memchr(c->layers, 0, sizeof c->layers) != NULL && (int)strlen(c->layers) == c->n_layer,
           "layer string has %d letters but n_layer is %d", (int)strnlen(c->layers, sizeof c->layers), c->n_layer);
    int n_attn = 0;
    for (int l = 0; l < c->n_layer; l++) {
        char k = c->layers[l], e[DN_ESC_LEN];
        DN_REQ(k == 'D' || k == 'S' || k == 'G' || k == 'N' || k == 'L', "layer %d has unknown kind '%s'", l, dn_escape(e, sizeof e, &c->layers[l], 1));
        n_attn += k == 'S' || k == 'G';
    }
    DN_REQ(c->n_head >= 1 && c->head_dim >= 1, "n_head %d and head_dim %d must be positive", c->n_head, c->head_dim);
    DN_REQ((long)c->n_head * c->head_dim == c->d_model, "n_head * head_dim = %d * %d != d_model %d", c->n_head, c->head_dim, c->d_model);
    DN_REQ(c->conv_size >= 1 && c->conv_size <= 16, "conv_size %d out of range [1, 16]", c->conv_size);
    DN_REQ(c->hidden_size >= 1 && c->hidden_size <= (1 << 20), "hidden_size %d out of range", c->hidden_size);
    DN_REQ(isfinite(c->norm_eps) && c->norm_eps > 0.0f && c->norm_eps < 1.0f, "norm_eps %g must be in (0, 1)", (double)c->norm_eps);
    DN_REQ(isfinite(c->l2_eps) && c->l2_eps > 0.0f && c->l2_eps < 1.0f, "l2_eps %g must be in (0, 1)", (double)c->l2_eps);
    DN_REQ(c->tie_embeddings == 0 || c->tie_embeddings == 1, "tie_embeddings must be 0 or 1");
    DN_REQ(c->no_mlp == 0 || c->no_mlp == 1, "no_mlp must be 0 or 1");
    /* the attention fields are checked on every model, so that no file carries nonsense in them
     * (a pure DeltaNet model keeps its preset's values) */
    DN_REQ(isfinite(c->rope_base) && c->rope_base > 1.0f, "rope_base %g must be a finite number > 1", (double)c->rope_base);
    /* any window >= 1 is valid, INT_MAX included: a window longer than the context is global */
    DN_REQ(c->window >= 1, "window %d must be >= 1", c->window);
    DN_REQ(c->attn_heads >= 1 && c->attn_kv_heads >= 1, "attn_heads %d and attn_kv_heads %d must be positive", c->attn_heads, c->attn_kv_heads);
    /* the gated DeltaNet geometry too; the widths stay within an int (a shape dimension) */
    DN_REQ(c->gdn_heads >= 1 && c->gdn_heads <= 65536, "gdn_heads %d out of range [1, 65536]", c->gdn_heads);
    DN_REQ(c->gdn_head_dim >= 1 && c->gdn_head_dim <= 65536, "gdn_head_dim %d out of range [1, 65536]", c->gdn_head_dim);
    DN_REQ(c->gdn_expand_v >= 1 && c->gdn_expand_v <= 64, "gdn_expand_v %d out of range [1, 64]", c->gdn_expand_v);
    DN_REQ((long)c->gdn_heads * c->gdn_head_dim * c->gdn_expand_v <= (1L << 20),
           "gated DeltaNet value width gdn_heads * gdn_head_dim * gdn_expand_v = %ld is more than %ld",
           (long)c->gdn_heads * c->gdn_head_dim * c->gdn_expand_v, 1L << 20);
    if (n_attn > 0) {
        DN_REQ(c->d_model % c->attn_heads == 0, "attn_heads %d must divide d_model %d", c->attn_heads, c->d_model);
        DN_REQ((c->d_model / c->attn_heads) % 2 == 0, "attention head size %d must be even (RoPE)", c->d_model / c->attn_heads);
        DN_REQ(c->attn_heads % c->attn_kv_heads == 0, "attn_kv_heads %d must divide attn_heads %d", c->attn_kv_heads, c->attn_heads);
    }
#undef DN_REQ
    return 0;
}

/* ---- parameter table ------------------------------------------------------------------------- */

/* Tensors that one kernel reads as one with the tensor before them, so they must follow it with no
 * gap: k_proj and v_proj after q_proj and their convs after q_conv1d in the DeltaNet and linear
 * attention layers (one [3D, D] matmul, one conv over 3D channels), up_proj after gate_proj. */
static int dn_joins_previous(const DNConfig *c, int kind, int layer) {
    if (kind == DN_P_UP) return 1;
    return layer >= 0 && dn_kind_has_conv(c->layers[layer]) &&
           (kind == DN_P_K || kind == DN_P_V || kind == DN_P_K_CONV || kind == DN_P_V_CONV);
}

static void dn_add_param(DNParamTable *t, int cap, int kind, int layer, const char *name, int ndim,
                         int s0, int s1, int s2, size_t mem_numel, int decay, float std) {
    if (t->n_params >= cap) return; /* cannot happen: cap is counted below */
    /* every other tensor starts at a multiple of DN_PARAM_ALIGN elements, whatever the sizes before it
     * (a gated layer's A_log and dt_bias are 6 floats each): cuBLASLt picks its fast kernels only for
     * 16-byte aligned operands, and a misaligned bf16 copy of the weights made every later matmul of
     * the gdn preset about twice as slow. The gap is zero and stays zero (no gradient reaches it). */
    if (!dn_joins_previous(&t->cfg, kind, layer)) t->total = (t->total + DN_PARAM_ALIGN - 1) / DN_PARAM_ALIGN * DN_PARAM_ALIGN;
    DNParam *p = &t->params[t->n_params++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->kind = kind;
    p->layer = layer;
    p->ndim = ndim;
    p->shape[0] = s0; p->shape[1] = s1; p->shape[2] = s2;
    p->numel = (size_t)s0 * (ndim > 1 ? (size_t)s1 : 1) * (ndim > 2 ? (size_t)s2 : 1);
    p->mem_numel = mem_numel ? mem_numel : p->numel;
    p->offset = t->total;
    p->decay = decay;
    p->init_std = std;
    t->total += p->mem_numel;
    t->total_real += p->numel;
    if (layer >= 0) t->layer[layer].p[kind] = p->offset;
}

int dn_build_param_table(DNParamTable *t, const DNConfig *c, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    if (dn_config_validate(c, err, errlen)) return -1;
    t->cfg = *c;
    int D = c->d_model, I = c->hidden_size, Vp = c->padded_vocab, Vr = c->vocab_size;
    int cap = 3 + 18 * c->n_layer;
    t->params = (DNParam *)calloc((size_t)cap, sizeof(DNParam));
    t->layer = (DNLayerOffsets *)calloc((size_t)c->n_layer, sizeof(DNLayerOffsets));
    if (!t->params || !t->layer) { dn_seterr(err, errlen, "out of memory"); dn_free_param_table(t); return -1; }
    const float std = 0.02f;
    char nm[DN_NAME_LEN];
    dn_add_param(t, cap, DN_P_EMBED, -1, "model.embeddings.weight", 2, Vr, D, 0, (size_t)Vp * D, 1, std);
    t->embed = t->params[0].offset;
    for (int l = 0; l < c->n_layer; l++) {
        for (int k = 0; k < DN_P_NKINDS; k++) t->layer[l].p[k] = DN_NO_PARAM;
#define DN_NAME(suffix) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix), nm)
        dn_add_param(t, cap, DN_P_ATTN_NORM, l, DN_NAME("attn_norm.weight"), 1, D, 0, 0, 0, 0, 0.0f);
        if (dn_kind_has_conv(c->layers[l])) {
            int H = c->n_head, K = c->head_dim, cs = c->conv_size;
            dn_add_param(t, cap, DN_P_Q, l, DN_NAME("attn.q_proj.weight"), 2, D, D, 0, 0, 1, std);
            dn_add_param(t, cap, DN_P_K, l, DN_NAME("attn.k_proj.weight"), 2, D, D, 0, 0, 1, std);
            dn_add_param(t, cap, DN_P_V, l, DN_NAME("attn.v_proj.weight"), 2, D, D, 0, 0, 1, std);
            /* linear attention ('L') has no beta */
            if (c->layers[l] == 'D') dn_add_param(t, cap, DN_P_B, l, DN_NAME("attn.b_proj.weight"), 2, H, D, 0, 0, 1, std);
            dn_add_param(t, cap, DN_P_Q_CONV, l, DN_NAME("attn.q_conv1d.weight"), 3, D, 1, cs, 0, 1, std);
            dn_add_param(t, cap, DN_P_K_CONV, l, DN_NAME("attn.k_conv1d.weight"), 3, D, 1, cs, 0, 1, std);
            dn_add_param(t, cap, DN_P_V_CONV, l, DN_NAME("attn.v_conv1d.weight"), 3, D, 1, cs, 0, 1, std);
            dn_add_param(t, cap, DN_P_O_NORM, l, DN_NAME("attn.o_norm.weight"), 1, K, 0, 0, 0, 0, 0.0f);
            dn_add_param(t, cap, DN_P_O, l, DN_NAME("attn.o_proj.weight"), 2, D, D, 0, 0, 1, std);
        } else if (c->layers[l] == 'N') {
            /* fla's GatedDeltaNet, in its order; A_log and dt_bias have their own init (< 0)
             * and no weight decay */
            int H = c->gdn_heads, Vg = dn_gdn_value_dim(c), HK = dn_gdn_key_width(c), HV = dn_gdn_value_width(c);
            int cs = c->conv_size;
            dn_add_param(t, cap, DN_P_Q, l, DN_NAME("attn.q_proj.weight"), 2, HK, D, 0, 0, 1, std);
            dn_add_param(t, cap, DN_P_K, l, DN_NAME("attn.k_proj.weight"), 2, HK, D, 0, 0, 1, std);
            dn_add_param(t, cap, DN_P_V, l, DN_NAME("attn.v_proj.weight"), 2, HV, D, 0, 0, 1, std);
            dn_add_param(t, cap, DN_P_A, l, DN_NAME("attn.a_proj.weight"), 2, H, D, 0, 0, 1, std);
            dn_add_param(t, cap, DN_P_B, l, DN_NAME("attn.b_proj.weight"), 2, H, D, 0, 0, 1, std);
            dn_add_param(t, cap, DN_P_A_LOG, l, DN_NAME("attn.A_log"), 1, H, 0, 0, 0, 0, -1.0f);
            dn_add_param(t, cap, DN_P_DT_BIAS, l, DN_NAME("attn.dt_bias"), 1, H, 0, 0, 0, 0, -1.0f);
            dn_add_param(t, cap, DN_P_Q_CONV, l, DN_NAME("attn.q_conv1d.weight"), 3, HK, 1, cs, 0, 1, std);
            dn_add_param(t, cap, DN_P_K_CONV, l, DN_NAME("attn.k_conv1d.weight"), 3, HK, 1, cs, 0, 1, std);
            dn_add_param(t, cap, DN_P_V_CONV, l, DN_NAME("attn.v_conv1d.weight"), 3, HV, 1, cs, 0, 1, std);
            dn_add_param(t, cap, DN_P_G, l, DN_NAME("attn.g_proj.weight"), 2, HV, D, 0, 0, 1, std);
            dn_add_param(t, cap, DN_P_O_NORM, l, DN_NAME("attn.o_norm.weight"), 1, Vg, 0, 0, 0, 0, 0.0f);
            dn_add_param(t, cap, DN_P_O, l, DN_NAME("attn.o_proj.weight"), 2, D, HV, 0, 0, 1, std);
        } else {
            int kvd = c->attn_kv_heads * dn_attn_head_dim(c);
            dn_add_param(t, cap, DN_P_Q, l, DN_NAME("attn.q_proj.weight"), 2, D, D, 0, 0, 1, std);
            dn_add_param(t, cap, DN_P_K, l, DN_NAME("attn.k_proj.weight"), 2, kvd, D, 0, 0, 1, std);
            dn_add_param(t, cap, DN_P_V, l, DN_NAME("attn.v_proj.weight"), 2, kvd, D, 0, 0, 1, std);
            dn_add_param(t, cap, DN_P_O, l, DN_NAME("attn.o_proj.weight"), 2, D, D, 0, 0, 1, std);
        }
        if (!c->no_mlp) {
            dn_add_param(t, cap, DN_P_MLP_NORM, l, DN_NAME("mlp_norm.weight"), 1, D, 0, 0, 0, 0, 0.0f);
            dn_add_param(t, cap, DN_P_GATE, l, DN_NAME("mlp.gate_proj.weight"), 2, I, D, 0, 0, 1, std);
            dn_add_param(t, cap, DN_P_UP, l, DN_NAME("mlp.up_proj.weight"), 2, I, D, 0, 0, 1, std);
            dn_add_param(t, cap, DN_P_DOWN, l, DN_NAME("mlp.down_proj.weight"), 2, D, I, 0, 0, 1, std);
        }
#undef DN_NAME
    }
    dn_add_param(t, cap, DN_P_NORM, -1, "model.norm.weight", 1, D, 0, 0, 0, 0, 0.0f);
    t->norm = t->params[t->n_params - 1].offset;
    if (c->tie_embeddings) {
        t->lm_head = t->embed;
    } else {
        dn_add_param(t, cap, DN_P_LM_HEAD, -1, "lm_head.weight", 2, Vr, D, 0, (size_t)Vp * D, 1, std);
        t->lm_head = t->params[t->n_params - 1].offset;
    }
    return 0;
}

void dn_free_param_table(DNParamTable *t) {
    free(t->params);
    free(t->layer);
    t->params = NULL;
    t->layer = NULL;
    t->n_params = 0;
}

int dn_find_param(const DNParamTable *t, const char *name) {
    for (int i = 0; i < t->n_params; i++)
        if (!strcmp(t->params[i].name, name)) return i;
    return -1;
}

/* ---- RNG ------------------------------------------------------------------------------------- */

void dn_rng_seed(DNRng *r, uint64_t seed) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    r->s = z ? z : 0x853C49E6748FEA9Bull;
}

uint64_t dn_rng_u64(DNRng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1Dull;
}

float dn_rng_uniform(DNRng *r) { return (float)(dn_rng_u64(r) >> 40) / 16777216.0f; }

float dn_rng_normal(DNRng *r) {
    double u1 = ((double)(dn_rng_u64(r) >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
    double u2 = (double)(dn_rng_u64(r) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void dn_init_params(const DNParamTable *t, float *params, uint64_t seed) {
    DNRng r;
    dn_rng_seed(&r, seed);
    memset(params, 0, t->total * sizeof(float));
    for (int i = 0; i < t->n_params; i++) {
        const DNParam *p = &t->params[i];
        float *w = params + p->offset;
        for (size_t j = 0; j < p->numel; j++) {
            if (p->kind == DN_P_A_LOG) {
                /* A ~ U(0, 16), A_log = log A (A = 0 would be log 0: the uniform draw is never
                 * below 2^-24, so A >= 16 * 2^-24) */
                double u = dn_rng_uniform(&r);
                w[j] = (float)log(16.0 * (u > 0.0 ? u : 1.0 / 16777216.0));
            } else if (p->kind == DN_P_DT_BIAS) {
                /* dt = exp(U(log 1e-3, log 0.1)) floored at 1e-4; dt_bias = softplus^-1(dt) =
                 * dt + log(-expm1(-dt)) */
                double dt = exp(log(1e-3) + dn_rng_uniform(&r) * (log(0.1) - log(1e-3)));
                dt = dt < 1e-4 ? 1e-4 : dt;
                w[j] = (float)(dt + log(-expm1(-dt)));
            } else {
                w[j] = p->init_std == 0.0f ? 1.0f : p->init_std * dn_rng_normal(&r);
            }
        }
    }
}

uint16_t dn_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float dn_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- safetensors: generic writer and validating reader ---------------------------------------- */

typedef struct {
    const char *name;
    DNDtype dtype;
    int ndim;
    int64_t shape[DN_MAX_NDIM];
    const float *data; /* numel floats, converted to dtype on write */
    size_t numel;
} DNStWrite;

static int dn_is_little_endian(void) { uint16_t x = 1; return *(uint8_t *)&x == 1; }

static size_t dn_dtype_size(DNDtype d) { return d == DN_BF16 ? 2 : 4; }

/* Write tensors + metadata to path atomically. meta: NULL-terminated key/value pairs. */
static int dn_st_write(const char *path, const DNStWrite *ts, int n, const char *const *meta,
                       const char *const *meta2, char *err, size_t errlen) {
    if (!dn_is_little_endian()) { dn_seterr(err, errlen, "%s: big-endian hosts are not supported", path); return -1; }
    cJSON *root = cJSON_CreateObject();
    cJSON *md = cJSON_AddObjectToObject(root, "__metadata__");
    for (int pass = 0; pass < 2; pass++) {
        const char *const *m = pass ? meta2 : meta;
        for (; m && m[0] && m[1]; m += 2) {
            if (cJSON_GetObjectItemCaseSensitive(md, m[0])) { /* the reader refuses duplicate keys */
                char e[DN_ESC_LEN];
                dn_seterr(err, errlen, "%s: metadata key '%s' given twice", path, dn_esc(e, m[0]));
                cJSON_Delete(root);
                return -1;
            }
            cJSON_AddStringToObject(md, m[0], m[1]);
        }
    }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        cJSON *o = cJSON_AddObjectToObject(root, ts[i].name);
        cJSON_AddStringToObject(o, "dtype", ts[i].dtype == DN_BF16 ? "BF16" : "F32");
        cJSON *sh = cJSON_AddArrayToObject(o, "shape");
        for (int d = 0; d < ts[i].ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)ts[i].shape[d]));
        size_t bytes = ts[i].numel * dn_dtype_size(ts[i].dtype);
        cJSON *ofs = cJSON_AddArrayToObject(o, "data_offsets");
        cJSON_AddItemToArray(ofs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(ofs, cJSON_CreateNumber((double)(off + bytes)));
        off += bytes;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) { dn_seterr(err, errlen, "%s: out of memory building the header", path); return -1; }
    size_t jlen = strlen(json), padded = (jlen + 7) / 8 * 8;

    DNAtomic a;
    if (dn_atomic_begin(&a, path, err, errlen)) { free(json); return -1; }
    FILE *f = a.f;
    int ok = 1;
    uint64_t hl = padded;
    ok &= fwrite(&hl, 8, 1, f) == 1;
    ok &= fwrite(json, 1, jlen, f) == jlen;
    for (size_t i = jlen; i < padded; i++) ok &= fputc(' ', f) != EOF;
    free(json);
    const size_t CH = (size_t)1 << 16;
    uint16_t *buf = (uint16_t *)malloc(CH * sizeof(uint16_t));
    for (int i = 0; i < n && ok && buf; i++) {
        if (ts[i].dtype == DN_F32) {
            ok &= fwrite(ts[i].data, 4, ts[i].numel, f) == ts[i].numel;
        } else {
            for (size_t j = 0; j < ts[i].numel && ok; j += CH) {
                size_t m = ts[i].numel - j < CH ? ts[i].numel - j : CH;
                for (size_t e = 0; e < m; e++) buf[e] = dn_f32_to_bf16(ts[i].data[j + e]);
                ok &= fwrite(buf, 2, m, f) == m;
            }
        }
    }
    ok &= buf != NULL;
    free(buf);
    if (!ok) { dn_seterr(err, errlen, "%s: write failed: %s", a.tmp, strerror(errno)); dn_atomic_abort(&a); return -1; }
    if (dn_atomic_commit(&a, err, errlen)) return -1;
    return 0;
}

typedef struct {
    char name[DN_NAME_LEN * 2];
    DNDtype dtype;
    int ndim;
    int64_t shape[DN_MAX_NDIM];
    uint64_t begin, end; /* byte range inside the data area */
} DNStEntry;

typedef struct {
    FILE *f;
    uint64_t data_start, data_size;
    cJSON *root;      /* parsed header */
    cJSON *meta;      /* __metadata__ object or NULL */
    DNStEntry *e;
    int n;
} DNStFile;

static void dn_st_close(DNStFile *s) {
    if (s->f) fclose(s->f);
    cJSON_Delete(s->root);
    free(s->e);
    memset(s, 0, sizeof *s);
}

static int dn_cmp_entry(const void *a, const void *b) {
    const DNStEntry *x = (const DNStEntry *)a, *y = (const DNStEntry *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

/* A NUL byte or a \u0000 escape anywhere in the raw header: cJSON would decode either into a
 * string with an embedded NUL, which C string functions then cut short ("F32\u0000junk" would
 * read as "F32"). No valid name, dtype or metadata string holds one. Returns its offset, or -1. */
static long dn_header_nul(const char *h, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (h[i] == 0) return (long)i;
        if (h[i] == '\\' && i + 1 < n) {
            if (h[i + 1] == 'u' && i + 5 < n && !memcmp(h + i + 2, "0000", 4)) return (long)i;
            i++; /* skip the escaped character: "\\u0000" is a backslash, then text */
        }
    }
    return -1;
}

static int dn_cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* The first key that occurs twice in one object anywhere in the tree, or NULL (*oom set when
 * memory ran out). cJSON keeps both copies and its lookups return the first, while Python's json
 * keeps the last: a file with a duplicate means different things to different readers. */
static const char *dn_json_dup_key(const cJSON *node, int *oom) {
    if (cJSON_IsObject(node)) {
        size_t n = 0;
        for (const cJSON *c = node->child; c; c = c->next) n++;
        if (n > 1) {
            const char **k = (const char **)malloc(n * sizeof *k);
            if (!k) { *oom = 1; return NULL; }
            size_t i = 0;
            for (const cJSON *c = node->child; c; c = c->next) k[i++] = c->string ? c->string : "";
            qsort(k, n, sizeof *k, dn_cmp_str);
            const char *dup = NULL;
            for (i = 1; i < n && !dup; i++)
                if (!strcmp(k[i - 1], k[i])) dup = k[i];
            free(k);
            if (dup) return dup;
        }
    }
    for (const cJSON *c = node->child; c; c = c->next) {
        if (!cJSON_IsObject(c) && !cJSON_IsArray(c)) continue;
        const char *dup = dn_json_dup_key(c, oom);
        if (dup || *oom) return dup;
    }
    return NULL;
}

/* Largest element count of one tensor: 2^40 (4 TiB of F32) */
#define DN_ST_MAX_NUMEL ((uint64_t)1 << 40)

/* Parse the raw header (its n bytes) into s->root: one JSON object, then only the space padding
 * safetensors writers add; no NULs, no duplicate keys. */
static int dn_st_parse_header(DNStFile *s, const char *hdr, size_t n, const char *path, char *err, size_t errlen) {
    char e[DN_ESC_LEN];
    const long nul = dn_header_nul(hdr, n);
    if (nul >= 0) { dn_seterr(err, errlen, "%s: the header holds a NUL character (byte %ld); no name, dtype or metadata may", path, nul); return -1; }
    const char *end = NULL;
    s->root = cJSON_ParseWithLengthOpts(hdr, n, &end, 0);
    if (!s->root || !cJSON_IsObject(s->root)) { dn_seterr(err, errlen, "%s: header is not a valid JSON object", path); return -1; }
    for (const char *q = end; q < hdr + n; q++)
        if (*q != ' ') {
            dn_seterr(err, errlen, "%s: text after the header's JSON object at byte %ld: '%s' (only space padding may follow it)",
                      path, (long)(q - hdr), dn_escape(e, sizeof e, q, (size_t)(hdr + n - q)));
            return -1;
        }
    int oom = 0;
    const char *dup = dn_json_dup_key(s->root, &oom);
    if (oom) { dn_seterr(err, errlen, "%s: out of memory checking the header", path); return -1; }
    if (dup) { dn_seterr(err, errlen, "%s: the header has the key '%s' twice", path, dn_esc(e, dup)); return -1; }
    return 0;
}

/* Open and validate the container: header length, JSON, each entry's dtype/shape/range, and that
 * the ranges tile the data area exactly. Every string from the file is escaped in messages. */
static int dn_st_open(DNStFile *s, const char *path, char *err, size_t errlen) {
    struct stat sb;
    uint64_t fsize = 0, hl = 0;
    unsigned char b8[8];
    int cnt = 0;
    char e1[DN_ESC_LEN], e2[DN_ESC_LEN];
    memset(s, 0, sizeof *s);
    s->f = dn_open_regular(path, err, errlen);
    if (!s->f) return -1;
    if (fstat(fileno(s->f), &sb) != 0) { dn_seterr(err, errlen, "%s: cannot stat: %s", path, strerror(errno)); goto fail; }
    fsize = (uint64_t)sb.st_size;
    if (fsize < 8 || fread(b8, 1, 8, s->f) != 8) { dn_seterr(err, errlen, "%s: file too short (%llu bytes) to be a safetensors file", path, (unsigned long long)fsize); goto fail; }
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | b8[i];
    if (hl < 2 || hl > fsize - 8) { dn_seterr(err, errlen, "%s: header length %llu runs past the end of the file (%llu bytes): truncated or not safetensors", path, (unsigned long long)hl, (unsigned long long)fsize); goto fail; }
    if (hl > (100u << 20)) { dn_seterr(err, errlen, "%s: header length %llu is over the 100 MiB limit", path, (unsigned long long)hl); goto fail; }
    {
        char *hdr = (char *)malloc(hl + 1);
        if (!hdr || fread(hdr, 1, hl, s->f) != hl) { free(hdr); dn_seterr(err, errlen, "%s: cannot read the header", path); goto fail; }
        hdr[hl] = 0;
        const int rc = dn_st_parse_header(s, hdr, hl, path, err, errlen);
        free(hdr);
        if (rc) goto fail;
    }
    s->data_start = 8 + hl;
    s->data_size = fsize - 8 - hl;
    cnt = cJSON_GetArraySize(s->root);
    s->e = (DNStEntry *)calloc((size_t)cnt + 1, sizeof(DNStEntry));
    if (!s->e) { dn_seterr(err, errlen, "%s: out of memory", path); goto fail; }
    for (cJSON *it = s->root->child; it; it = it->next) {
        if (!strcmp(it->string, "__metadata__")) {
            if (!cJSON_IsObject(it)) { dn_seterr(err, errlen, "%s: __metadata__ is not an object", path); goto fail; }
            for (cJSON *m = it->child; m; m = m->next)
                if (!cJSON_IsString(m)) { dn_seterr(err, errlen, "%s: __metadata__ value '%s' is not a string", path, dn_esc(e1, m->string)); goto fail; }
            s->meta = it;
            continue;
        }
        DNStEntry *e = &s->e[s->n];
        if (strlen(it->string) >= sizeof e->name) { dn_seterr(err, errlen, "%s: tensor name too long (%zu bytes): '%s'", path, strlen(it->string), dn_esc(e1, it->string)); goto fail; }
        strcpy(e->name, it->string);
        const char *nm = dn_esc(e1, e->name);
        cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
        cJSON *of = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        if (!cJSON_IsObject(it) || !cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2) {
            dn_seterr(err, errlen, "%s: tensor '%s' lacks a dtype, shape or data_offsets", path, nm); goto fail;
        }
        if (!strcmp(dt->valuestring, "F32")) e->dtype = DN_F32;
        else if (!strcmp(dt->valuestring, "BF16")) e->dtype = DN_BF16;
        else { dn_seterr(err, errlen, "%s: tensor '%s' has dtype %s; only F32 and BF16 are read", path, nm, dn_esc(e2, dt->valuestring)); goto fail; }
        e->ndim = cJSON_GetArraySize(sh);
        if (e->ndim > DN_MAX_NDIM) { dn_seterr(err, errlen, "%s: tensor '%s' has %d dimensions (at most %d)", path, nm, e->ndim, DN_MAX_NDIM); goto fail; }
        uint64_t numel = 1;
        for (int d = 0; d < e->ndim; d++) {
            /* range-check the double before converting it: a cast of 1e300 is undefined */
            cJSON *x = cJSON_GetArrayItem(sh, d);
            const double v = cJSON_IsNumber(x) ? x->valuedouble : -1.0;
            if (!(v >= 0.0 && v <= (double)DN_ST_MAX_NUMEL && v == floor(v))) {
                dn_seterr(err, errlen, "%s: tensor '%s' has a bad shape (dimension %d is not an integer in [0, 2^40])", path, nm, d); goto fail;
            }
            e->shape[d] = (int64_t)v;
            const uint64_t dim = (uint64_t)e->shape[d];
            if (dim && numel > DN_ST_MAX_NUMEL / dim) { dn_seterr(err, errlen, "%s: tensor '%s' is impossibly large (over 2^40 elements)", path, nm); goto fail; }
            numel *= dim;
        }
        cJSON *b0 = cJSON_GetArrayItem(of, 0), *b1 = cJSON_GetArrayItem(of, 1);
        const double d0 = cJSON_IsNumber(b0) ? b0->valuedouble : -1.0, d1 = cJSON_IsNumber(b1) ? b1->valuedouble : -1.0;
        if (!(d0 >= 0.0 && d1 >= d0 && d0 == floor(d0) && d1 == floor(d1))) {
            dn_seterr(err, errlen, "%s: tensor '%s' has bad data_offsets", path, nm); goto fail;
        }
        if (d1 > (double)s->data_size) {
            dn_seterr(err, errlen, "%s: tensor '%s' bytes [%.16g, %.16g) lie past the end of the data (%llu bytes): truncated file", path, nm, d0, d1, (unsigned long long)s->data_size);
            goto fail;
        }
        e->begin = (uint64_t)d0;
        e->end = (uint64_t)d1;
        if (e->end > s->data_size) { dn_seterr(err, errlen, "%s: tensor '%s' bytes [%llu, %llu) lie past the end of the data (%llu bytes): truncated file", path, nm, (unsigned long long)e->begin, (unsigned long long)e->end, (unsigned long long)s->data_size); goto fail; }
        if (e->end - e->begin != numel * dn_dtype_size(e->dtype)) { dn_seterr(err, errlen, "%s: tensor '%s' has %llu bytes but its shape and dtype need %llu", path, nm, (unsigned long long)(e->end - e->begin), (unsigned long long)(numel * dn_dtype_size(e->dtype))); goto fail; }
        s->n++;
    }
    {
        DNStEntry *sorted = (DNStEntry *)malloc(((size_t)s->n + 1) * sizeof(DNStEntry));
        if (!sorted) { dn_seterr(err, errlen, "%s: out of memory", path); goto fail; }
        memcpy(sorted, s->e, (size_t)s->n * sizeof(DNStEntry));
        qsort(sorted, (size_t)s->n, sizeof(DNStEntry), dn_cmp_entry);
        uint64_t pos = 0;
        for (int i = 0; i < s->n; i++) {
            if (sorted[i].begin < pos) { dn_seterr(err, errlen, "%s: tensor '%s' overlaps the bytes of another tensor", path, dn_esc(e1, sorted[i].name)); free(sorted); goto fail; }
            if (sorted[i].begin > pos) { dn_seterr(err, errlen, "%s: %llu bytes before tensor '%s' belong to no tensor", path, (unsigned long long)(sorted[i].begin - pos), dn_esc(e1, sorted[i].name)); free(sorted); goto fail; }
            pos = sorted[i].end;
        }
        free(sorted);
        if (pos != s->data_size) { dn_seterr(err, errlen, "%s: the tensors cover %llu of %llu data bytes (trailing garbage?)", path, (unsigned long long)pos, (unsigned long long)s->data_size); goto fail; }
    }
    return 0;
fail:
    dn_st_close(s);
    return -1;
}

static const char *dn_st_meta(const DNStFile *s, const char *key) {
    cJSON *v = s->meta ? cJSON_GetObjectItemCaseSensitive(s->meta, key) : NULL;
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const DNStEntry *dn_st_find(const DNStFile *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->e[i].name, name)) return &s->e[i];
    return NULL;
}

/* Read entry e (numel values) as float into out. */
static int dn_st_read_f32(DNStFile *s, const DNStEntry *e, float *out, size_t numel) {
    if (fseeko(s->f, (off_t)(s->data_start + e->begin), SEEK_SET) != 0) return -1;
    if (e->dtype == DN_F32) return fread(out, 4, numel, s->f) == numel ? 0 : -1;
    uint16_t *buf = (uint16_t *)malloc(numel * 2 + 2);
    if (!buf) return -1;
    int rc = fread(buf, 2, numel, s->f) == numel ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < numel; i++) out[i] = dn_bf16_to_f32(buf[i]);
    free(buf);
    return rc;
}

/* Parse a decimal integer strictly: an optional '-' (when lo < 0), then digits only (no space, no
 * '+', nothing after), in [lo, hi]. */
static int dn_parse_long(const char *v, long lo, long hi, long *out) {
    const char *d = v[0] == '-' && lo < 0 ? v + 1 : v;
    if (*d < '0' || *d > '9') return -1;
    char *end = NULL;
    errno = 0;
    const long x = strtol(v, &end, 10);
    if (errno || *end || x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

static int dn_meta_long(const DNStFile *s, const char *key, long lo, long hi, long *out,
                        const char *path, char *err, size_t errlen) {
    const char *v = dn_st_meta(s, key);
    char e[DN_ESC_LEN];
    if (!v) { dn_seterr(err, errlen, "%s: __metadata__ lacks '%s'", path, key); return -1; }
    if (dn_parse_long(v, lo, hi, out)) { dn_seterr(err, errlen, "%s: __metadata__ '%s' = '%s' is not an integer in [%ld, %ld]", path, key, dn_esc(e, v), lo, hi); return -1; }
    return 0;
}

/* A metadata number that must be a finite float: the double is range-checked before the
 * conversion (1e39 would become inf, and converting it is undefined). */
static int dn_meta_float(const DNStFile *s, const char *key, float *out, const char *path, char *err, size_t errlen) {
    const char *v = dn_st_meta(s, key);
    char e[DN_ESC_LEN];
    if (!v) { dn_seterr(err, errlen, "%s: __metadata__ lacks '%s'", path, key); return -1; }
    char *end = NULL;
    const double x = strtod(v, &end);
    if (end == v || *end || v[0] == ' ' || (v[0] >= '\t' && v[0] <= '\r') || !isfinite(x) || fabs(x) > (double)FLT_MAX) {
        dn_seterr(err, errlen, "%s: __metadata__ '%s' = '%s' is not a finite float", path, key, dn_esc(e, v));
        return -1;
    }
    *out = (float)x;
    return 0;
}

static int dn_check_format(const DNStFile *s, const char *want, const char *path, char *err, size_t errlen) {
    const char *fmt = dn_st_meta(s, "format");
    char e[DN_ESC_LEN];
    if (!fmt || strcmp(fmt, want)) {
        dn_seterr(err, errlen, "%s: not a %s file (__metadata__ format is '%s')", path, want, fmt ? dn_esc(e, fmt) : "absent");
        return -1;
    }
    long ver = 0;
    if (dn_meta_long(s, "format_version", 0, LONG_MAX, &ver, path, err, errlen)) return -1;
    if (ver != DN_FORMAT_VERSION) {
        dn_seterr(err, errlen, "%s: format version %ld, but this build reads version %d (HINT: re-export it with a matching deltanet.c)", path, ver, DN_FORMAT_VERSION);
        return -1;
    }
    return 0;
}

/* ---- model checkpoints ----------------------------------------------------------------------- */

/* The reference's config (flash-linear-attention DeltaNetConfig, or GatedDeltaNetConfig for a model
 * with gated DeltaNet layers), as a JSON string, so that a PyTorch script can build the matching
 * model from the checkpoint alone. A model with both 'D' and 'N' layers has no fla counterpart:
 * NULL (the writer stores "{}").
 * fla has no layer for 'L' (DeltaNet without the delta rule) and its blocks always have an MLP:
 * such models get {"model_type": null, "unsupported": why} instead, and load only in deltanet.c. */
static char *dn_fla_config_json(const DNConfig *c) {
    const int gated = strchr(c->layers, 'N') != NULL;
    if (gated && strchr(c->layers, 'D')) return NULL;
    cJSON *o = cJSON_CreateObject();
    if (strchr(c->layers, 'L') || c->no_mlp) {
        cJSON_AddNullToObject(o, "model_type");
        cJSON_AddStringToObject(o, "unsupported", strchr(c->layers, 'L')
            ? "linear-attention layers ('L': DeltaNet with S_t = S_{t-1} + k_t v_t^T) have no flash-linear-attention equivalent"
            : "flash-linear-attention's blocks always have an MLP; this model has none (no_mlp)");
        char *s = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        return s;
    }
    cJSON_AddStringToObject(o, "model_type", gated ? "gated_deltanet" : "delta_net");
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "hidden_size", c->d_model);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->n_layer);
    if (gated) {
        cJSON_AddStringToObject(o, "attn_mode", "chunk");
        cJSON_AddNumberToObject(o, "num_heads", c->gdn_heads);
        cJSON_AddNullToObject(o, "num_v_heads");
        cJSON_AddNumberToObject(o, "head_dim", c->gdn_head_dim);
        cJSON_AddNumberToObject(o, "expand_v", c->gdn_expand_v);
        cJSON_AddBoolToObject(o, "use_gate", 1);
        cJSON_AddBoolToObject(o, "use_short_conv", 1);
        cJSON_AddBoolToObject(o, "allow_neg_eigval", 0);
        cJSON_AddNumberToObject(o, "conv_size", c->conv_size);
        cJSON_AddStringToObject(o, "output_gate_activation", "swish");
    } else {
        cJSON_AddNumberToObject(o, "num_heads", c->n_head);
        cJSON_AddNumberToObject(o, "expand_k", 1);
        cJSON_AddNumberToObject(o, "expand_v", 1);
        cJSON_AddBoolToObject(o, "use_short_conv", 1);
        cJSON_AddNumberToObject(o, "conv_size", c->conv_size);
        cJSON_AddBoolToObject(o, "use_beta", 1);
        cJSON_AddBoolToObject(o, "use_gate", 0);
        cJSON_AddBoolToObject(o, "use_output_norm", 1);
        cJSON_AddStringToObject(o, "qk_norm", "l2");
        cJSON_AddStringToObject(o, "qk_activation", "silu");
    }
    cJSON_AddNumberToObject(o, "norm_eps", c->norm_eps);
    cJSON_AddNumberToObject(o, "hidden_ratio", 4);
    cJSON_AddNumberToObject(o, "intermediate_size", c->hidden_size);
    cJSON_AddStringToObject(o, "hidden_act", "swish");
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_embeddings);
    cJSON_AddNumberToObject(o, "initializer_range", 0.02);
    /* one attention spec per kind present: sliding-window layers get window_size, global
     * layers none (a list of specs when a model has both) */
    cJSON *specs = cJSON_CreateArray();
    for (int kind = 0; kind < 2; kind++) {
        char want = kind ? 'G' : 'S';
        cJSON *ls = cJSON_CreateArray();
        for (int l = 0; l < c->n_layer; l++)
            if (c->layers[l] == want) cJSON_AddItemToArray(ls, cJSON_CreateNumber(l));
        if (cJSON_GetArraySize(ls) == 0) { cJSON_Delete(ls); continue; }
        cJSON *a = cJSON_CreateObject();
        cJSON_AddItemToObject(a, "layers", ls);
        cJSON_AddNumberToObject(a, "num_heads", c->attn_heads);
        cJSON_AddNumberToObject(a, "num_kv_heads", c->attn_kv_heads);
        cJSON_AddBoolToObject(a, "qkv_bias", 0);
        if (want == 'S') cJSON_AddNumberToObject(a, "window_size", c->window);
        else cJSON_AddNullToObject(a, "window_size");
        cJSON_AddNumberToObject(a, "rope_theta", c->rope_base);
        cJSON_AddItemToArray(specs, a);
    }
    int n_specs = cJSON_GetArraySize(specs);
    if (n_specs == 0) {
        cJSON_Delete(specs);
        cJSON_AddNullToObject(o, "attn");
    } else if (n_specs == 1) {
        cJSON_AddItemToObject(o, "attn", cJSON_DetachItemFromArray(specs, 0));
        cJSON_Delete(specs);
    } else {
        cJSON_AddItemToObject(o, "attn", specs);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

int dn_checkpoint_write(const char *path, const DNParamTable *t, const float *params, DNDtype dtype,
                        const char *const *extra_meta, char *err, size_t errlen) {
    const DNConfig *c = &t->cfg;
    char v[20][48];
    snprintf(v[0], 48, "%d", DN_FORMAT_VERSION);
    snprintf(v[1], 48, "%d", c->vocab_size);
    snprintf(v[2], 48, "%d", c->padded_vocab);
    snprintf(v[3], 48, "%d", c->d_model);
    snprintf(v[4], 48, "%d", c->n_layer);
    snprintf(v[5], 48, "%d", c->n_head);
    snprintf(v[6], 48, "%d", c->head_dim);
    snprintf(v[7], 48, "%d", c->conv_size);
    snprintf(v[8], 48, "%d", c->hidden_size);
    snprintf(v[9], 48, "%.9g", (double)c->norm_eps);
    snprintf(v[10], 48, "%d", c->tie_embeddings);
    snprintf(v[11], 48, "%d", c->attn_heads);
    snprintf(v[12], 48, "%d", c->attn_kv_heads);
    snprintf(v[13], 48, "%d", c->window);
    snprintf(v[14], 48, "%.9g", (double)c->rope_base);
    snprintf(v[15], 48, "%d", c->gdn_heads);
    snprintf(v[16], 48, "%d", c->gdn_head_dim);
    snprintf(v[17], 48, "%d", c->gdn_expand_v);
    snprintf(v[18], 48, "%.9g", (double)c->l2_eps);
    snprintf(v[19], 48, "%d", c->no_mlp);
    char *fla = dn_fla_config_json(c);
    const char *meta[] = {"format", DN_FORMAT_NAME, "format_version", v[0], "vocab_size", v[1],
                          "padded_vocab", v[2], "d_model", v[3], "n_layer", v[4], "n_head", v[5],
                          "head_dim", v[6], "conv_size", v[7], "hidden_size", v[8], "norm_eps", v[9],
                          "tie_embeddings", v[10], "attn_heads", v[11], "attn_kv_heads", v[12],
                          "window", v[13], "rope_base", v[14], "gdn_heads", v[15],
                          "gdn_head_dim", v[16], "gdn_expand_v", v[17], "layers", c->layers,
                          "l2_eps", v[18], /* ours: fla's config has no such key */
                          "no_mlp", v[19],
                          "fla_config", fla ? fla : "{}", NULL, NULL};
    DNStWrite *ts = (DNStWrite *)calloc((size_t)t->n_params, sizeof(DNStWrite));
    if (!ts) { free(fla); dn_seterr(err, errlen, "%s: out of memory", path); return -1; }
    for (int i = 0; i < t->n_params; i++) {
        const DNParam *p = &t->params[i];
        ts[i].name = p->name;
        ts[i].dtype = dtype;
        ts[i].ndim = p->ndim;
        for (int d = 0; d < p->ndim; d++) ts[i].shape[d] = p->shape[d];
        ts[i].data = params + p->offset; /* padding rows sit after the real ones: not written */
        ts[i].numel = p->numel;
    }
    int rc = dn_st_write(path, ts, t->n_params, meta, extra_meta, err, errlen);
    free(ts);
    free(fla);
    return rc;
}

static int dn_config_from_meta(const DNStFile *s, DNConfig *c, const char *path, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    long x[12];
    static const char *keys[12] = {"vocab_size", "padded_vocab", "d_model", "n_layer", "n_head", "head_dim",
                                   "conv_size", "hidden_size", "tie_embeddings", "attn_heads", "attn_kv_heads", "window"};
    for (int i = 0; i < 12; i++)
        if (dn_meta_long(s, keys[i], INT_MIN, INT_MAX, &x[i], path, err, errlen)) return -1;
    c->vocab_size = (int)x[0]; c->padded_vocab = (int)x[1]; c->d_model = (int)x[2]; c->n_layer = (int)x[3];
    c->n_head = (int)x[4]; c->head_dim = (int)x[5]; c->conv_size = (int)x[6]; c->hidden_size = (int)x[7];
    c->tie_embeddings = (int)x[8]; c->attn_heads = (int)x[9]; c->attn_kv_heads = (int)x[10]; c->window = (int)x[11];
    if (dn_meta_float(s, "norm_eps", &c->norm_eps, path, err, errlen)) return -1;
    if (dn_meta_float(s, "rope_base", &c->rope_base, path, err, errlen)) return -1;
    c->l2_eps = DN_DEFAULT_L2_EPS; /* optional: files converted from fla (or written before it) lack it */
    if (dn_st_meta(s, "l2_eps") && dn_meta_float(s, "l2_eps", &c->l2_eps, path, err, errlen)) return -1;
    /* no_mlp came later: a file without it has the MLPs */
    long no_mlp = 0;
    if (dn_st_meta(s, "no_mlp") && dn_meta_long(s, "no_mlp", 0, 1, &no_mlp, path, err, errlen)) return -1;
    c->no_mlp = (int)no_mlp;
    const char *layers = dn_st_meta(s, "layers");
    if (!layers) { dn_seterr(err, errlen, "%s: __metadata__ lacks 'layers'", path); return -1; }
    if (strlen(layers) > DN_MAX_LAYERS) { dn_seterr(err, errlen, "%s: more than %d layers", path, DN_MAX_LAYERS); return -1; }
    strcpy(c->layers, layers);
    /* the gated DeltaNet geometry: files written before 'N' layers existed lack it, and they have
     * no 'N' layer; such a file gets the presets' rule, a file with 'N' layers must carry it */
    static const char *gkeys[3] = {"gdn_heads", "gdn_head_dim", "gdn_expand_v"};
    const int have = (dn_st_meta(s, gkeys[0]) != NULL) + (dn_st_meta(s, gkeys[1]) != NULL) + (dn_st_meta(s, gkeys[2]) != NULL);
    if (have == 0 && !strchr(c->layers, 'N')) {
        dn_config_default_gdn(c);
    } else {
        long g[3];
        for (int i = 0; i < 3; i++)
            if (dn_meta_long(s, gkeys[i], INT_MIN, INT_MAX, &g[i], path, err, errlen)) return -1;
        c->gdn_heads = (int)g[0]; c->gdn_head_dim = (int)g[1]; c->gdn_expand_v = (int)g[2];
    }
    char why[DN_ERR_LEN];
    if (dn_config_validate(c, why, sizeof why)) { dn_seterr(err, errlen, "%s: impossible config: %s", path, why); return -1; }
    return 0;
}

int dn_checkpoint_read(const char *path, DNConfig *cfg, float **params, char *err, size_t errlen) {
    *params = NULL;
    DNStFile s;
    if (dn_st_open(&s, path, err, errlen)) return -1;
    DNParamTable t;
    memset(&t, 0, sizeof t);
    float *w = NULL;
    uint64_t need = 0;
    char esc[DN_ESC_LEN];
    if (dn_check_format(&s, DN_FORMAT_NAME, path, err, errlen)) goto fail;
    if (dn_config_from_meta(&s, cfg, path, err, errlen)) goto fail;
    if (dn_build_param_table(&t, cfg, err, errlen)) goto fail;
    for (int i = 0; i < s.n; i++)
        if (dn_find_param(&t, s.e[i].name) < 0) { dn_seterr(err, errlen, "%s: unexpected tensor '%s' for this config", path, dn_esc(esc, s.e[i].name)); goto fail; }
    /* every tensor against the table before the buffer is allocated: metadata that claims a huge
     * model over small tensors is a shape mismatch, not "out of memory" */
    for (int i = 0; i < t.n_params; i++) {
        const DNParam *p = &t.params[i];
        const DNStEntry *e = dn_st_find(&s, p->name);
        if (!e) { dn_seterr(err, errlen, "%s: missing tensor '%s'", path, p->name); goto fail; }
        int same = e->ndim == p->ndim;
        for (int d = 0; same && d < p->ndim; d++) same = e->shape[d] == p->shape[d];
        if (!same) {
            char a[80] = "", b[80] = "";
            for (int d = 0; d < e->ndim; d++) snprintf(a + strlen(a), sizeof a - strlen(a), "%s%lld", d ? "," : "", (long long)e->shape[d]);
            for (int d = 0; d < p->ndim; d++) snprintf(b + strlen(b), sizeof b - strlen(b), "%s%d", d ? "," : "", p->shape[d]);
            dn_seterr(err, errlen, "%s: tensor '%s' has shape [%s], the config needs [%s]", path, p->name, a, b);
            goto fail;
        }
        need += (uint64_t)p->numel * dn_dtype_size(e->dtype);
    }
    /* the data must be exactly what the config needs (the tiling check and the two loops above
     * imply it; this keeps the allocation below bounded by the file size even if they change) */
    if (need != s.data_size) {
        dn_seterr(err, errlen, "%s: the config needs %llu data bytes, the file holds %llu", path, (unsigned long long)need, (unsigned long long)s.data_size);
        goto fail;
    }
    w = (float *)calloc(t.total ? t.total : 1, sizeof(float));
    if (!w) { dn_seterr(err, errlen, "%s: out of memory for %zu parameters", path, t.total); goto fail; }
    for (int i = 0; i < t.n_params; i++) {
        const DNParam *p = &t.params[i];
        const DNStEntry *e = dn_st_find(&s, p->name);
        if (dn_st_read_f32(&s, e, w + p->offset, p->numel)) { dn_seterr(err, errlen, "%s: read error in tensor '%s'", path, p->name); goto fail; }
        for (size_t j = 0; j < p->numel; j++)
            if (!isfinite(w[p->offset + j])) { dn_seterr(err, errlen, "%s: tensor '%s' holds a NaN or Inf at element %zu", path, p->name, j); goto fail; }
    }
    dn_free_param_table(&t);
    dn_st_close(&s);
    *params = w;
    return 0;
fail:
    free(w);
    dn_free_param_table(&t);
    dn_st_close(&s);
    return -1;
}

int dn_checkpoint_read_meta(const char *path, const char *key, char *out, size_t outlen, char *err, size_t errlen) {
    DNStFile s;
    if (dn_st_open(&s, path, err, errlen)) return -1;
    const char *v = dn_st_meta(&s, key);
    char e[DN_ESC_LEN];
    int rc = -1;
    if (!v) dn_seterr(err, errlen, "%s: __metadata__ lacks '%s'", path, dn_esc(e, key));
    else if (!out || strlen(v) >= outlen) dn_seterr(err, errlen, "%s: __metadata__ '%s' is %zu bytes long, more than the %zu this caller takes", path, dn_esc(e, key), strlen(v), outlen ? outlen - 1 : 0);
    else { memcpy(out, v, strlen(v) + 1); rc = 0; }
    dn_st_close(&s);
    return rc;
}

int dn_checkpoint_step(const char *path, long *step, char *err, size_t errlen) {
    DNStFile s;
    if (dn_st_open(&s, path, err, errlen)) return -1;
    long x = 0;
    int rc = -1;
    if (!dn_check_format(&s, DN_FORMAT_NAME, path, err, errlen) && !dn_meta_long(&s, "step", 0, LONG_MAX, &x, path, err, errlen)) {
        *step = x;
        rc = 0;
    }
    dn_st_close(&s);
    return rc;
}

/* ---- training state -------------------------------------------------------------------------- */

#define DN_STATE_FORMAT "deltanet.c-train-state"

int dn_state_write(const char *path, const DNParamTable *t, const float *m, const float *v,
                   const DNTrainState *st, char *err, size_t errlen) {
    char ver[24], step[24], rng[24], shard[24], pos[24], total[24], ranks[24];
    snprintf(ver, sizeof ver, "%d", DN_FORMAT_VERSION);
    snprintf(step, sizeof step, "%ld", st->step);
    snprintf(rng, sizeof rng, "%llu", (unsigned long long)st->rng_state);
    snprintf(shard, sizeof shard, "%ld", st->data_shard);
    snprintf(pos, sizeof pos, "%ld", st->data_pos);
    snprintf(total, sizeof total, "%zu", t->total);
    snprintf(ranks, sizeof ranks, "%ld", st->data_ranks > 1 ? st->data_ranks : 1L);
    const char *meta[] = {"format", DN_STATE_FORMAT, "format_version", ver, "step", step, "rng_state", rng,
                          "data_shard", shard, "data_pos", pos, "data_ranks", ranks, "n_params_mem", total, "layers", t->cfg.layers,
                          "note", st->note, NULL, NULL};
    DNStWrite ts[2];
    memset(ts, 0, sizeof ts);
    ts[0].name = "adam.m"; ts[1].name = "adam.v";
    ts[0].data = m; ts[1].data = v;
    for (int i = 0; i < 2; i++) { ts[i].dtype = DN_F32; ts[i].ndim = 1; ts[i].shape[0] = (int64_t)t->total; ts[i].numel = t->total; }
    return dn_st_write(path, ts, 2, meta, NULL, err, errlen);
}

/* The buffer length of the table's tensors packed with no gaps: the layout of states written before
 * tensors were aligned (DN_PARAM_ALIGN; 2026-12-03). Differs from t->total only where a tensor's
 * size is not a multiple of the alignment (a gated layer's A_log, dt_bias). */
static size_t dn_packed_total(const DNParamTable *t) {
    size_t n = 0;
    for (int i = 0; i < t->n_params; i++) n += t->params[i].mem_numel;
    return n;
}

/* x [t->total] holds a packed buffer in its first dn_packed_total(t) elements: move every tensor to
 * its offset (last first: each moves up), zero the gaps. */
static void dn_unpack(const DNParamTable *t, float *x) {
    size_t at = dn_packed_total(t);
    for (int i = t->n_params - 1; i >= 0; i--) {
        const DNParam *p = &t->params[i];
        at -= p->mem_numel;
        memmove(x + p->offset, x + at, p->mem_numel * sizeof(float));
    }
    size_t end = 0;
    for (int i = 0; i < t->n_params; i++) {
        const DNParam *p = &t->params[i];
        memset(x + end, 0, (p->offset - end) * sizeof(float));
        end = p->offset + p->mem_numel;
    }
    memset(x + end, 0, (t->total - end) * sizeof(float));
}

int dn_state_read(const char *path, const DNParamTable *t, float *m, float *v, DNTrainState *st,
                  char *err, size_t errlen) {
    DNStFile s;
    if (dn_st_open(&s, path, err, errlen)) return -1;
    int rc = -1;
    long total = 0;
    size_t len = t->total; /* the file's buffer length: ours, or the packed layout of older states */
    const char *layers = NULL, *rng = NULL, *note = NULL;
    char *end = NULL;
    char e1[DN_ESC_LEN];
    memset(st, 0, sizeof *st);
    if (dn_check_format(&s, DN_STATE_FORMAT, path, err, errlen)) goto done;
    if (dn_meta_long(&s, "n_params_mem", 0, LONG_MAX, &total, path, err, errlen)) goto done;
    layers = dn_st_meta(&s, "layers");
    if ((size_t)total == dn_packed_total(t) && (size_t)total < t->total) len = (size_t)total; /* read, then unpack */
    if ((size_t)total != len || !layers || strcmp(layers, t->cfg.layers)) {
        dn_seterr(err, errlen, "%s: optimizer state is for another model (%ld parameters, layers '%s'; this model has %zu, '%s')",
                  path, total, layers ? dn_esc(e1, layers) : "?", t->total, t->cfg.layers);
        goto done;
    }
    if (dn_meta_long(&s, "step", 0, LONG_MAX, &st->step, path, err, errlen)) goto done;
    if (dn_meta_long(&s, "data_shard", 0, LONG_MAX, &st->data_shard, path, err, errlen)) goto done;
    if (dn_meta_long(&s, "data_pos", 0, LONG_MAX, &st->data_pos, path, err, errlen)) goto done;
    st->data_ranks = 1; /* states written before data parallelism: one rank */
    if (dn_st_meta(&s, "data_ranks") && dn_meta_long(&s, "data_ranks", 1, 1L << 20, &st->data_ranks, path, err, errlen)) goto done;
    /* digits only: strtoull would take "-1" (and wrap it) or " 5"; and never 0, the state
     * xorshift cannot leave */
    rng = dn_st_meta(&s, "rng_state");
    if (!rng) { dn_seterr(err, errlen, "%s: __metadata__ lacks 'rng_state'", path); goto done; }
    errno = 0;
    if (rng[0] >= '0' && rng[0] <= '9') st->rng_state = strtoull(rng, &end, 10);
    if (rng[0] < '0' || rng[0] > '9' || errno || *end || st->rng_state == 0) {
        dn_seterr(err, errlen, "%s: __metadata__ 'rng_state' = '%s' is not a non-zero decimal uint64", path, dn_esc(e1, rng));
        goto done;
    }
    note = dn_st_meta(&s, "note");
    snprintf(st->note, sizeof st->note, "%s", note ? note : "");
    if (s.n != 2) { dn_seterr(err, errlen, "%s: a training-state file holds adam.m and adam.v only, this one %d tensors", path, s.n); goto done; }
    for (int i = 0; i < 2; i++) {
        const char *nm = i ? "adam.v" : "adam.m";
        float *x = i ? v : m;
        const DNStEntry *e = dn_st_find(&s, nm);
        if (!e || e->dtype != DN_F32 || e->ndim != 1 || e->shape[0] != (int64_t)len) {
            dn_seterr(err, errlen, "%s: tensor '%s' missing or not F32 [%zu]", path, nm, len); goto done;
        }
        if (dn_st_read_f32(&s, e, x, len)) { dn_seterr(err, errlen, "%s: read error in '%s'", path, nm); goto done; }
        /* AdamW divides by sqrt(v): a NaN, an Inf or a negative v would poison every later step */
        for (size_t j = 0; j < len; j++)
            if (!isfinite(x[j]) || (i && x[j] < 0.0f)) {
                dn_seterr(err, errlen, "%s: '%s' element %zu is %g; moments must be finite%s", path, nm, j, (double)x[j], i ? " and second moments >= 0" : "");
                goto done;
            }
        if (len != t->total) dn_unpack(t, x);
    }
    rc = 0;
done:
    dn_st_close(&s);
    return rc;
}

