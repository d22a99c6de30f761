#!/usr/bin/env bash
# test_bench_scaling.sh -- scripts/bench_scaling.sh on the CPU (part of `make test`; no GPU, no MPI):
#   1. one clear line and a non-zero exit for no GPU, more GPUs asked for than there are, a bad
#      --steps or --models, a missing trainer, and several GPUs without mpirun;
#   2. the table end to end with stand-ins (nvidia-smi listing two GPUs, an mpirun that runs its
#      command once with the rank count in the environment, a trainer that prints step lines at a
#      rate set by the rank count): the mean of steps 10-14, tok/s a GPU, the efficiency against
#      one GPU, the memory, the NCCL line; and a run that fails is named with its log.
# Ends with "[test_bench_scaling] N passed, N failed" like the other test programs.
set -u
cd "$(dirname "$0")/.."
source tests/lib.sh
test_tmp dn_scaling
S=scripts/bench_scaling.sh

mkdir -p "$tmp/nogpu" "$tmp/two" "$tmp/mpi" "$tmp/data"
printf '#!/bin/sh\necho "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."\nexit 9\n' >"$tmp/nogpu/nvidia-smi"
cat >"$tmp/two/nvidia-smi" <<'EOF'
#!/bin/sh
case "$*" in
    -L) echo "GPU 0: Stand-in GPU (UUID: GPU-0)"; echo "GPU 1: Stand-in GPU (UUID: GPU-1)" ;;
    *--query-gpu=name*) echo "Stand-in GPU"; echo "Stand-in GPU" ;;
    "topo -m") echo "GPU0 X NV18" ;;
esac
EOF
# mpirun: skips its own options, runs the command once with the rank count in STANDIN_RANKS
cat >"$tmp/mpi/mpirun" <<'EOF'
#!/bin/sh
n=1
while [ $# -gt 0 ]; do
    case "$1" in
        --version) echo "stand-in mpirun"; exit 0 ;;
        -np) n=$2; shift 2 ;;
        -x) shift 2 ;;
        --allow-run-as-root) shift ;;
        *) break ;;
    esac
done
STANDIN_RANKS=$n exec "$@"
EOF
# trainer: 1000 tok/s on one rank, 900 a rank on several (steps 1-9 at 1 tok/s: not averaged);
# STANDIN_FAIL=N fails on N ranks
cat >"$tmp/trainer" <<'EOF'
#!/bin/sh
n=${STANDIN_RANKS:-1} x=0
while [ $# -gt 0 ]; do case "$1" in -x) x=$2; shift 2 ;; *) shift ;; esac; done
[ "${STANDIN_FAIL:-0}" = "$n" ] && { echo "cuda error: out of memory"; exit 1; }
[ "$n" -gt 1 ] && echo "data parallel: $n ranks (stand-in) | NCCL 2.28.3 | NCCL_NVLS_ENABLE=0"
echo "GPU memory: weights 1 GiB | in use on the device 11.75 of 139.80 GiB"
i=1
while [ "$i" -le "$x" ]; do
    r=1; [ "$i" -ge 10 ] && { if [ "$n" -eq 1 ]; then r=$((1000 + i - 12)); else r=$((900 * n)); fi; }
    echo "step $(printf '%5d' "$i")/$x | loss 7.0 | lr 1e-4 | norm 1.0 | 10.0 ms | $r tok/s"
    i=$((i + 1))
done
EOF
chmod +x "$tmp/nogpu/nvidia-smi" "$tmp/two/nvidia-smi" "$tmp/mpi/mpirun" "$tmp/trainer"
: >"$tmp/data/x_train.bin"
: >"$tmp/data/x_val.bin"
P0=$PATH

# 1. one-line failures
one_line() { # expected-pattern name command...
    local pat=$1 name=$2 err rc
    shift 2
    err=$("$@" 2>&1 >/dev/null); rc=$?
    if [ $rc -ne 0 ] && [ "$(printf '%s\n' "$err" | grep -c .)" -eq 1 ] && printf '%s' "$err" | grep -q -- "$pat"; then
        ok "$name: one line: $err"
    else
        bad "$name: rc $rc, stderr '$err' (wanted one line matching '$pat')"
    fi
}
A=(--trainer "$tmp/trainer" --data "$tmp/data" --out "$tmp/o1")
one_line "no GPU" "no GPU" env PATH="$tmp/nogpu:$P0" bash $S "${A[@]}"
one_line "this machine has 2" "4 GPUs on a 2-GPU machine" env PATH="$tmp/two:$P0" bash $S "${A[@]}" --gpus 1,4
one_line "must be an integer >= 10" "--steps 5" env PATH="$tmp/two:$P0" bash $S "${A[@]}" --steps 5
one_line "is not d12, 340M or PRESET:B:T" "--models bad" env PATH="$tmp/two:$P0" bash $S "${A[@]}" --models d12,big
one_line "not an executable" "missing trainer" env PATH="$tmp/two:$P0" bash $S --trainer "$tmp/none" --data "$tmp/data"
if ! command -v mpirun >/dev/null 2>&1; then
    one_line "mpirun not found" "2 GPUs without MPI" env PATH="$tmp/two:$P0" bash $S "${A[@]}" --gpus 1,2
fi
one_line "no \*_train\*.bin" "no shards" env PATH="$tmp/two:$tmp/mpi:$P0" bash $S --trainer "$tmp/trainer" --data "$tmp/nogpu" --gpus 1

# 2. end to end with the stand-ins
if env PATH="$tmp/two:$tmp/mpi:$P0" bash $S "${A[@]}" --models d12,tiny:4:64 --out "$tmp/o2" >"$tmp/o2.log" 2>&1; then
    ok "two stand-in GPUs: the run ends with status 0"
else
    bad "two stand-in GPUs: status non-zero: $(tail -2 "$tmp/o2.log")"
fi
T="$tmp/o2/table.md"
# steps 10-14 on one rank: 998 999 1000 1001 1002 -> 1000; two ranks: 1800 -> 90.0%
row1=$(grep -F '| d12 | 1 | 32768 |' "$T" 2>/dev/null)
row2=$(grep -F '| d12 | 2 | 65536 |' "$T" 2>/dev/null)
case "$row1" in *"| 1000 | 1000 | 100.0% | 11.75 GiB |"*) ok "d12 on 1 GPU: mean of steps 10-14, 100%" ;; *) bad "d12 on 1 GPU: '$row1'" ;; esac
case "$row2" in *"| 1800 | 900 | 90.0% | 11.75 GiB | \`mpirun"*"-np 2"*) ok "d12 on 2 GPUs: 1800 tok/s, 900 a GPU, 90.0%, mpirun -np 2" ;;
    *) bad "d12 on 2 GPUs: '$row2'" ;; esac
grep -qF '| tiny | 2 | 512 | 1800 | 900 | 90.0% |' "$T" && ok "PRESET:B:T model (tiny, B=4 T=64)" || bad "tiny row missing: $(grep tiny "$T")"
grep -q "^NCCL: NCCL_NVLS_ENABLE=0, .*NCCL 2.28.3" "$T" && ok "the NCCL line: multicast off, NCCL's version" || bad "NCCL line: $(grep NCCL "$T")"
[ -s "$tmp/o2/topology.txt" ] && ok "topology kept" || bad "no topology.txt"
ls "$tmp/o2"/ckpt_* >/dev/null 2>&1 && bad "checkpoints left behind" || ok "no checkpoints left behind"

# a run that fails: named with its log, the others still measured, status non-zero
env PATH="$tmp/two:$tmp/mpi:$P0" STANDIN_FAIL=2 bash $S "${A[@]}" --models d12 --out "$tmp/o3" >"$tmp/o3.log" 2>"$tmp/o3.err"
rc=$?
if [ $rc -ne 0 ] && grep -q "d12 on 2 GPU(s) failed: cuda error: out of memory (log: $tmp/o3/d12_2gpu.log)" "$tmp/o3.err" &&
    grep -qF '| d12 | 1 | 32768 | 1000 |' "$tmp/o3/table.md"; then
    ok "a failing run is named with its log; the one-GPU row is still there; status $rc"
else
    bad "failing run: rc $rc, stderr '$(cat "$tmp/o3.err")'"
fi
test_summary test_bench_scaling
