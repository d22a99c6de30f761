/*
 * test_dist.c -- src/dist.c on the CPU: the rank and group read from each launcher's environment and
 * every malformed one refused with one line; NCCL's id (here 128 random bytes) handed from rank 0 to
 * three other processes over TCP, also when rank 0 starts listening late; a rank that counts another
 * group size, a rank that never comes and a rank 0 that is not there each end with one line within
 * the timeout; ZeRO-1's shards cover the buffer exactly once.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "../src/dist.h"
#include "../model.h"
#include "test.h"

static const char *VARS[] = {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                             "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID",
                             "MPI_LOCALNRANKS", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                             "MASTER_ADDR", "MASTER_PORT"};

/* Clear every variable dist_from_env reads, then set "NAME=value" pairs (NULL-terminated). */
static void env_set(const char *const *kv) {
    for (size_t i = 0; i < sizeof VARS / sizeof *VARS; i++) unsetenv(VARS[i]);
    for (; kv && *kv; kv++) {
        char buf[128];
        snprintf(buf, sizeof buf, "%s", *kv);
        char *eq = strchr(buf, '=');
        *eq = 0;
        setenv(buf, eq + 1, 1);
    }
}

static void test_env(void) {
    DistEnv d;
    char err[DN_ERR_LEN] = "";
    env_set(NULL);
    CHECK(dist_from_env(&d, err, sizeof err) == 0 && d.rank == 0 && d.world == 1 && !strcmp(d.launcher, "single process"),
          "no launcher: rank 0 of 1 (%s)", err);
    const char *envrun[] = {"RANK=2", "WORLD_SIZE=4", NULL};
    env_set(envrun);
    CHECK(dist_from_env(&d, err, sizeof err) == 0 && d.rank == 2 && d.world == 4 && d.local_rank == 2 &&
              d.local_world == 4 && !strcmp(d.launcher, "environment") && d.master_port == DIST_DEFAULT_PORT &&
              !strcmp(d.master_addr, DIST_DEFAULT_ADDR),
          "RANK=2 WORLD_SIZE=4: rank %d of %d, local %d of %d, %s:%d", d.rank, d.world, d.local_rank, d.local_world,
          d.master_addr, d.master_port);
    const char *ompi[] = {"OMPI_COMM_WORLD_RANK=5", "OMPI_COMM_WORLD_SIZE=8", "OMPI_COMM_WORLD_LOCAL_RANK=1",
                          "OMPI_COMM_WORLD_LOCAL_SIZE=4", "MASTER_ADDR=node0", "MASTER_PORT=1234", "RANK=0",
                          "WORLD_SIZE=1", NULL};
    env_set(ompi);
    CHECK(dist_from_env(&d, err, sizeof err) == 0 && d.rank == 5 && d.world == 8 && d.local_rank == 1 &&
              d.local_world == 4 && !strcmp(d.launcher, "mpirun (Open MPI)") && !strcmp(d.master_addr, "node0") &&
              d.master_port == 1234,
          "Open MPI's variables first: rank %d of %d, local %d of %d (%s)", d.rank, d.world, d.local_rank,
          d.local_world, err);
    const char *pmi[] = {"PMI_RANK=1", "PMI_SIZE=2", NULL};
    env_set(pmi);
    CHECK(dist_from_env(&d, err, sizeof err) == 0 && d.rank == 1 && d.world == 2 && !strcmp(d.launcher, "mpirun (MPICH)"),
          "MPICH's PMI_RANK / PMI_SIZE");
    const char *slurm[] = {"SLURM_PROCID=0", "SLURM_NTASKS=4", NULL};
    env_set(slurm);
    CHECK(dist_from_env(&d, err, sizeof err) == 0 && d.world == 1,
          "a Slurm batch script's variables alone: one process (not a group of 4 waiting for 3 ranks)");
    unsetenv("SLURM_PROCID");
    unsetenv("SLURM_NTASKS");
    struct { const char *kv[5]; const char *want; } bad[] = {
        {{"RANK=1", NULL}, "RANK is set but WORLD_SIZE is not"},
        {{"WORLD_SIZE=2", NULL}, "WORLD_SIZE is set but RANK is not"},
        {{"RANK=4", "WORLD_SIZE=4", NULL}, "RANK=4 is not below WORLD_SIZE=4"},
        {{"RANK=x", "WORLD_SIZE=4", NULL}, "RANK='x' is not an integer"},
        {{"RANK=0", "WORLD_SIZE=0", NULL}, "WORLD_SIZE='0' is not an integer in [1,"},
        {{"RANK=1", "WORLD_SIZE=4", "LOCAL_RANK=3", "LOCAL_WORLD_SIZE=2", NULL}, "local rank 3 is not below the 2 ranks"},
        {{"RANK=1", "WORLD_SIZE=8", "LOCAL_WORLD_SIZE=4", NULL}, "set MASTER_ADDR"},
        {{"RANK=1", "WORLD_SIZE=2", "MASTER_PORT=70000", NULL}, "MASTER_PORT='70000' is not an integer in [1, 65535]"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        env_set(bad[i].kv);
        err[0] = 0;
        CHECK(dist_from_env(&d, err, sizeof err) == -1 && strstr(err, bad[i].want) && !strchr(err, '\n'),
              "refused with one line: '%s' (want '%s')", err, bad[i].want);
    }
    const char *multi[] = {"RANK=1", "WORLD_SIZE=8", "LOCAL_WORLD_SIZE=4", "LOCAL_RANK=1", "MASTER_ADDR=10.0.0.1", NULL};
    env_set(multi);
    CHECK(dist_from_env(&d, err, sizeof err) == 0 && d.master_addr_set && d.local_rank == 1,
          "two hosts with MASTER_ADDR: accepted (%s)", err);
    env_set(NULL);
}

/* A TCP port nobody listens on now. */
static int free_port(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t n = sizeof a;
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(s, (struct sockaddr *)&a, &n) != 0) {
        if (s >= 0) close(s);
        return 29555;
    }
    int port = ntohs(a.sin_port);
    close(s);
    return port;
}

static DistEnv group(int rank, int world, int port) {
    DistEnv d;
    memset(&d, 0, sizeof d);
    d.rank = rank;
    d.world = world;
    d.local_rank = rank;
    d.local_world = world;
    d.launcher = "test";
    snprintf(d.master_addr, sizeof d.master_addr, "127.0.0.1");
    d.master_port = port;
    return d;
}

/* Fork a rank that fetches the id and exits 0 if it equals want, 1 if not, 2 if the fetch failed
 * with the expected message part `fail_want` (NULL: the fetch must succeed), 3 otherwise. */
static pid_t spawn_client(int rank, int world, int port, const unsigned char *want, int timeout_s, const char *fail_want) {
    pid_t p = fork();
    if (p != 0) return p;
    DistEnv d = group(rank, world, port);
    unsigned char id[128];
    char err[DN_ERR_LEN] = "";
    memset(id, 0, sizeof id);
    int rc = dist_share_id(&d, id, sizeof id, timeout_s, err, sizeof err);
    if (fail_want) _exit(rc != 0 && strstr(err, fail_want) && !strchr(err, '\n') ? 2 : 3);
    _exit(rc == 0 ? (memcmp(id, want, sizeof id) == 0 ? 0 : 1) : 3);
}

static int exit_code(pid_t p) {
    int st = 0;
    if (waitpid(p, &st, 0) != p || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

static void test_share(void) {
    unsigned char id[128];
    DNRng r;
    dn_rng_seed(&r, 77);
    for (size_t i = 0; i < sizeof id; i++) id[i] = (unsigned char)dn_rng_u64(&r);
    char err[DN_ERR_LEN] = "";

    /* four ranks; rank 0 starts listening 0.3 s after the others first try */
    int port = free_port();
    pid_t kids[3];
    for (int k = 0; k < 3; k++) kids[k] = spawn_client(k + 1, 4, port, id, 10, NULL);
    struct timespec late = {0, 300 * 1000000L};
    nanosleep(&late, NULL);
    DistEnv d0 = group(0, 4, port);
    int rc = dist_share_id(&d0, id, sizeof id, 10, err, sizeof err);
    int good = 0;
    for (int k = 0; k < 3; k++) good += exit_code(kids[k]) == 0;
    CHECK(rc == 0 && good == 3, "rank 0 gave its 128 bytes to ranks 1-3, which connected before it listened: %d of 3 (%s)",
          good, err);

    /* a rank launched with another group size: both sides say so */
    port = free_port();
    pid_t odd = spawn_client(1, 2, port, id, 5, "counts a group of");
    d0 = group(0, 3, port);
    err[0] = 0;
    rc = dist_share_id(&d0, id, sizeof id, 5, err, sizeof err);
    int orc = exit_code(odd);
    CHECK(rc == -1 && strstr(err, "rank 1 counts a group of 2 ranks, this one 3") && orc == 2,
          "mismatched group size: rank 0 '%s', rank 1 exit %d", err, orc);

    /* a rank that never comes: rank 0 gives up after the timeout naming it */
    port = free_port();
    pid_t one = spawn_client(1, 3, port, id, 3, NULL);
    d0 = group(0, 3, port);
    err[0] = 0;
    rc = dist_share_id(&d0, id, sizeof id, 1, err, sizeof err);
    exit_code(one);
    CHECK(rc == -1 && strstr(err, "1 of the 2 other ranks connected within 1 s (missing: 2)"), "a missing rank: %s", err);

    /* no rank 0 */
    DistEnv d2 = group(2, 3, free_port());
    err[0] = 0;
    rc = dist_share_id(&d2, id, sizeof id, 1, err, sizeof err);
    CHECK(rc == -1 && strstr(err, "rank 2: no answer from rank 0 at 127.0.0.1:") && !strchr(err, '\n'),
          "no rank 0: %s", err);

    /* one rank: nothing to exchange */
    DistEnv solo = group(0, 1, 1);
    CHECK(dist_share_id(&solo, id, sizeof id, 1, err, sizeof err) == 0, "a group of one needs no exchange");
}

static void test_shards(void) {
    const size_t totals[] = {1000, 10, 123456789, 64};
    const int worlds[] = {3, 4, 8, 1};
    const size_t aligns[] = {64, 8, 256, 16};
    for (int c = 0; c < 4; c++) {
        const size_t s = dist_shard_size(totals[c], worlds[c], aligns[c]);
        size_t covered = 0, expect = 0;
        int ok = s % aligns[c] == 0 && s * (size_t)worlds[c] >= totals[c] && s * (size_t)(worlds[c] - 1) < totals[c] + aligns[c] * (size_t)worlds[c];
        for (int rk = 0; rk < worlds[c]; rk++) {
            size_t off, len;
            dist_shard(totals[c], worlds[c], rk, aligns[c], &off, &len);
            ok &= off == (size_t)rk * s && off % aligns[c] == 0 && (len == 0 || off == expect);
            covered += len;
            expect = off + len;
        }
        CHECK(ok && covered == totals[c], "%zu elements on %d ranks (align %zu): shards of %zu, covered %zu once",
              totals[c], worlds[c], aligns[c], s, covered);
    }
    size_t off, len;
    dist_shard(10, 4, 1, 8, &off, &len);
    CHECK(off == 8 && len == 2, "10 elements, shards of 8: rank 1 holds [8, 10)");
    dist_shard(10, 4, 3, 8, &off, &len);
    CHECK(len == 0, "rank 3 holds nothing");
}

int main(void) {
    test_env();
    test_share();
    test_shards();
    return test_summary("test_dist");
}
