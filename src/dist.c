/*
 * dist.c -- see dist.h. The id exchange is one short TCP conversation per rank:
 *   rank r -> rank 0:  "DNDIST01", int32 r, int32 world             (16 bytes)
 *   rank 0 -> rank r:  "DNDIST01", int32 status, int32 world, n bytes of the id when status is 0
 * status 1: the two count different group sizes; 2: rank r connected twice. Integers little-endian
 * as the hosts are (x86-64, aarch64). Every wait is bounded by the caller's deadline (poll).
 */
#include "dist.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "../model.h" /* dn_seterr */

static const char DIST_MAGIC[8] = {'D', 'N', 'D', 'I', 'S', 'T', '0', '1'};

/* ---- the environment --------------------------------------------------------------------------- */

/* getenv(name) as an int in [lo, hi]: 1 if set and valid, 0 if unset, -1 (err set) if invalid */
static int env_int(const char *name, long lo, long hi, int *out, char *err, size_t errlen) {
    const char *s = getenv(name);
    if (!s) return 0;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        dn_seterr(err, errlen, "%s='%.40s' is not an integer in [%ld, %ld]", name, s, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 1;
}

typedef struct {
    const char *launcher, *rank, *world, *local_rank, *local_world;
} Launcher;

static const Launcher LAUNCHERS[] = {
    {"mpirun (Open MPI)", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
     "OMPI_COMM_WORLD_LOCAL_SIZE"},
    {"mpirun (MPICH)", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"},
    {"environment", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
};

int dist_from_env(DistEnv *d, char *err, size_t errlen) {
    memset(d, 0, sizeof *d);
    d->world = d->local_world = 1;
    d->launcher = "single process";
    snprintf(d->master_addr, sizeof d->master_addr, "%s", DIST_DEFAULT_ADDR);
    d->master_port = DIST_DEFAULT_PORT;
    const int NL = (int)(sizeof LAUNCHERS / sizeof *LAUNCHERS);
    for (int i = 0; i < NL; i++) {
        const Launcher *L = &LAUNCHERS[i];
        if (!getenv(L->rank) && !getenv(L->world)) continue;
        if (!getenv(L->rank) || !getenv(L->world)) {
            dn_seterr(err, errlen, "%s is set but %s is not (launcher: %s)", getenv(L->rank) ? L->rank : L->world,
                      getenv(L->rank) ? L->world : L->rank, L->launcher);
            return -1;
        }
        if (env_int(L->world, 1, 1 << 20, &d->world, err, errlen) < 0) return -1;
        if (env_int(L->rank, 0, 1 << 20, &d->rank, err, errlen) < 0) return -1;
        if (d->rank >= d->world) {
            dn_seterr(err, errlen, "%s=%d is not below %s=%d", L->rank, d->rank, L->world, d->world);
            return -1;
        }
        int lr = env_int(L->local_rank, 0, 1 << 20, &d->local_rank, err, errlen);
        int lw = env_int(L->local_world, 1, 1 << 20, &d->local_world, err, errlen);
        if (lr < 0 || lw < 0) return -1;
        if (lr == 0) d->local_rank = d->rank;     /* no local rank given: one host */
        if (lw == 0) d->local_world = d->world;
        if (d->local_rank >= d->local_world) {
            dn_seterr(err, errlen, "local rank %d is not below the %d ranks on this host (%s, %s)", d->local_rank,
                      d->local_world, L->local_rank, L->local_world);
            return -1;
        }
        d->launcher = L->launcher;
        break;
    }
    const char *addr = getenv("MASTER_ADDR");
    if (addr && *addr) {
        if (strlen(addr) >= sizeof d->master_addr) {
            dn_seterr(err, errlen, "MASTER_ADDR is %zu characters long", strlen(addr));
            return -1;
        }
        snprintf(d->master_addr, sizeof d->master_addr, "%s", addr);
        d->master_addr_set = 1;
    }
    if (env_int("MASTER_PORT", 1, 65535, &d->master_port, err, errlen) < 0) return -1;
    if (d->world > d->local_world && !d->master_addr_set) {
        dn_seterr(err, errlen, "%d ranks on more than one host (%d on this one): set MASTER_ADDR to rank 0's host",
                  d->world, d->local_world);
        return -1;
    }
    return 0;
}

/* ---- the id exchange ----------------------------------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Wait until fd is readable (events POLLIN) or writable (POLLOUT), at most until deadline. */
static int wait_fd(int fd, short events, double deadline) {
    for (;;) {
        double left = deadline - now_s();
        if (left <= 0) return -1;
        struct pollfd p = {fd, events, 0};
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r > 0) return 0;
        if (r < 0 && errno != EINTR) return -1;
    }
}

/* All n bytes to / from fd before the deadline; -1 on timeout, error or a closed peer. */
static int io_full(int fd, void *buf, size_t n, int writing, double deadline) {
    char *p = (char *)buf;
    while (n > 0) {
        if (wait_fd(fd, writing ? POLLOUT : POLLIN, deadline) != 0) return -1;
        ssize_t k = writing ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static void put32(unsigned char *p, int32_t v) { memcpy(p, &v, 4); }
static int32_t get32(const unsigned char *p) { int32_t v; memcpy(&v, p, 4); return v; }

static int serve_id(const DistEnv *d, const void *id, size_t n, double deadline, int timeout_s, char *err,
                    size_t errlen) {
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0) { dn_seterr(err, errlen, "rank 0: socket: %s", strerror(errno)); return -1; }
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    a.sin_port = htons((uint16_t)d->master_port);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 64) != 0) {
        dn_seterr(err, errlen, "rank 0: cannot listen on port %d (MASTER_PORT): %s", d->master_port, strerror(errno));
        close(ls);
        return -1;
    }
    unsigned char *seen = (unsigned char *)calloc((size_t)d->world, 1);
    unsigned char *reply = (unsigned char *)malloc(16 + n);
    if (!seen || !reply) { free(seen); free(reply); close(ls); dn_seterr(err, errlen, "rank 0: out of memory"); return -1; }
    int got = 0, rc = 0;
    while (got < d->world - 1) {
        if (wait_fd(ls, POLLIN, deadline) != 0) {
            char miss[160] = "";
            size_t len = 0;
            int shown = 0;
            for (int r = 1; r < d->world && len + 12 < sizeof miss; r++)
                if (!seen[r]) len += (size_t)snprintf(miss + len, sizeof miss - len, "%s%d", shown++ ? ", " : "", r);
            dn_seterr(err, errlen, "rank 0: %d of the %d other ranks connected within %d s (missing: %s%s)", got,
                      d->world - 1, timeout_s, miss, shown < d->world - 1 - got ? ", ..." : "");
            rc = -1;
            break;
        }
        int c = accept(ls, NULL, NULL);
        if (c < 0) continue;
        unsigned char hello[16];
        if (io_full(c, hello, 16, 0, deadline) != 0 || memcmp(hello, DIST_MAGIC, 8) != 0) {
            close(c); /* not one of ours (or too slow): ignore it */
            continue;
        }
        int r = get32(hello + 8), w = get32(hello + 12), status = 0;
        if (w != d->world) status = 1;
        else if (r <= 0 || r >= d->world || seen[r]) status = 2;
        memcpy(reply, DIST_MAGIC, 8);
        put32(reply + 8, status);
        put32(reply + 12, d->world);
        if (status == 0) memcpy(reply + 16, id, n);
        int sent = io_full(c, reply, status == 0 ? 16 + n : 16, 1, deadline);
        close(c);
        if (status == 1) {
            dn_seterr(err, errlen, "rank 0: rank %d counts a group of %d ranks, this one %d: every rank must be "
                      "launched with the same number", r, w, d->world);
            rc = -1;
            break;
        }
        if (status == 2) {
            dn_seterr(err, errlen, "rank 0: a second process claims rank %d of %d", r, w);
            rc = -1;
            break;
        }
        if (sent == 0) { seen[r] = 1; got++; }
    }
    free(seen);
    free(reply);
    close(ls);
    return rc;
}

static int fetch_id(const DistEnv *d, void *id, size_t n, double deadline, int timeout_s, char *err, size_t errlen) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    char port[16];
    snprintf(port, sizeof port, "%d", d->master_port);
    int g = getaddrinfo(d->master_addr, port, &hints, &res);
    if (g != 0 || !res) {
        dn_seterr(err, errlen, "rank %d: cannot resolve MASTER_ADDR '%.100s': %s", d->rank, d->master_addr, gai_strerror(g));
        return -1;
    }
    int rc = -1;
    while (now_s() < deadline) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0) break;
        if (connect(s, res->ai_addr, res->ai_addrlen) != 0) { /* rank 0 not listening yet */
            close(s);
            sleep_ms(100);
            continue;
        }
        unsigned char hello[16], head[16];
        memcpy(hello, DIST_MAGIC, 8);
        put32(hello + 8, d->rank);
        put32(hello + 12, d->world);
        if (io_full(s, hello, 16, 1, deadline) != 0 || io_full(s, head, 16, 0, deadline) != 0 ||
            memcmp(head, DIST_MAGIC, 8) != 0) {
            close(s);
            sleep_ms(100);
            continue;
        }
        int status = get32(head + 8), w0 = get32(head + 12);
        if (status == 1) {
            dn_seterr(err, errlen, "rank %d: rank 0 counts a group of %d ranks, this one %d: every rank must be "
                      "launched with the same number", d->rank, w0, d->world);
            close(s);
            rc = -2;
            break;
        }
        if (status != 0) {
            dn_seterr(err, errlen, "rank %d: rank 0 refused it: another process already has rank %d", d->rank, d->rank);
            close(s);
            rc = -2;
            break;
        }
        rc = io_full(s, id, n, 0, deadline) == 0 ? 0 : -1;
        close(s);
        if (rc == 0) break;
    }
    freeaddrinfo(res);
    if (rc == -1)
        dn_seterr(err, errlen, "rank %d: no answer from rank 0 at %.100s:%d within %d s (is rank 0 running? MASTER_ADDR, "
                  "MASTER_PORT)", d->rank, d->master_addr, d->master_port, timeout_s);
    return rc == 0 ? 0 : -1;
}

int dist_share_id(const DistEnv *d, void *id, size_t n, int timeout_s, char *err, size_t errlen) {
    if (d->world <= 1) return 0;
    const double deadline = now_s() + (timeout_s > 0 ? timeout_s : 1);
    return d->rank == 0 ? serve_id(d, id, n, deadline, timeout_s, err, errlen)
                        : fetch_id(d, id, n, deadline, timeout_s, err, errlen);
}

/* ---- ZeRO-1 shards ------------------------------------------------------------------------------- */

size_t dist_shard_size(size_t total, int world, size_t align) {
    if (world < 1) world = 1;
    if (align < 1) align = 1;
    size_t s = (total + (size_t)world - 1) / (size_t)world;
    return (s + align - 1) / align * align;
}

void dist_shard(size_t total, int world, int rank, size_t align, size_t *off, size_t *len) {
    const size_t s = dist_shard_size(total, world, align);
    *off = (size_t)rank * s;
    *len = *off >= total ? 0 : (total - *off < s ? total - *off : s);
}
