/*
 * dist.h -- the launch side of data-parallel training (several GPUs, one process each): which rank
 * of how many this process is, read from the launcher's environment; the exchange of NCCL's unique
 * id from rank 0 to the others over one TCP connection each; and how ZeRO-1 cuts the optimizer's
 * flat parameter buffer into one shard per rank. The collectives themselves are NCCL's.
 *
 * Launchers (dist_from_env reads the first that is set):
 *   mpirun (Open MPI)       OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE
 *   mpirun (MPICH, Intel)   PMI_RANK / PMI_SIZE, MPI_LOCALRANKID / MPI_LOCALNRANKS
 *   the environment         RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE (torchrun's names)
 *   none of them            rank 0 of 1
 * (Slurm's own SLURM_PROCID / SLURM_NTASKS are not read: a batch script's single process carries
 * them too; run mpirun inside the allocation, or set RANK / WORLD_SIZE.)
 * Rank 0 is reached at MASTER_ADDR:MASTER_PORT (defaults 127.0.0.1 and 29500, which serve only
 * ranks on one host: a group spread over hosts must set MASTER_ADDR). The GPU of a process is its
 * local rank.
 */
#ifndef DELTANET_DIST_H
#define DELTANET_DIST_H
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif

#define DIST_DEFAULT_PORT 29500
#define DIST_DEFAULT_ADDR "127.0.0.1"

typedef struct {
    int rank, world;             /* this process's rank in the group, and the group's size */
    int local_rank, local_world; /* on this host: the GPU index, and the ranks on it */
    const char *launcher;        /* "mpirun (Open MPI)", "mpirun (MPICH)", "environment", or "single process" */
    char master_addr[256];       /* where rank 0 serves the NCCL id */
    int master_port;
    int master_addr_set;         /* MASTER_ADDR was given (not the default) */
} DistEnv;

/* Fill d from the environment (see above). Fails with one line in err for a value that is not an
 * integer, a rank outside [0, world), a local rank outside [0, local_world), a bad port, or a
 * group spread over hosts (world > local_world) without MASTER_ADDR. */
int dist_from_env(DistEnv *d, char *err, size_t errlen);

/* Give every rank rank 0's n bytes (NCCL's unique id): rank 0 listens on master_port and answers
 * each of the world - 1 others once they connect; the others connect (retrying until rank 0
 * listens) and receive them. Each side checks that the other counts the same group size. Gives up
 * after timeout_s seconds with one line naming what is missing (the ranks that never connected,
 * or rank 0's address). world == 1: nothing to do. */
int dist_share_id(const DistEnv *d, void *id, size_t n, int timeout_s, char *err, size_t errlen);

/* ZeRO-1: the flat buffer of total elements cut into world shards of equal size `shard` (a
 * multiple of align, the buffer padded to world * shard); rank r owns [r * shard, r * shard + len)
 * of the real elements (len may be smaller for the last ranks, and 0 past the end). */
size_t dist_shard_size(size_t total, int world, size_t align);
void dist_shard(size_t total, int world, int rank, size_t align, size_t *off, size_t *len);

#ifdef __cplusplus
}
#endif
#endif /* DELTANET_DIST_H */
