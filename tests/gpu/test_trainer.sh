#!/usr/bin/env bash
# test_trainer.sh -- end-to-end checks of ./train_deltanet on a GPU (part of `make test-gpu`, run
# from the repo root after `make train infer`):
#   1. the trainer's printed val loss equals `./infer --eval` on its checkpoint over the same
#      tokens (fp32 hybrid DSDG with sliding window and grouped KV heads: within 1e-3);
#   2. exact resume: N steps straight == N/2 + --resume + N/2 (fp32, losses within 1e-5);
#   3. missing shards are one clear message and a non-zero exit;
#   4. a NaN loss stops the run naming the step, and the last checkpoint survives;
#   5. running out of GPU memory is one clear message (the batch sized from the free memory);
#   6. data parallelism's path on one GPU (RANK=0 WORLD_SIZE=1: NCCL's communicator of one, the
#      all-reduce in the captured step, the watched wait) gives the plain run's losses (1e-5), and
#      its state records one rank; a resume with another rank count is refused in one line.
# Ends with "[test_trainer] N passed, N failed" like the other test programs.
set -u
cd "$(dirname "$0")/../.."
pass=0; fail=0
ok()  { echo "  ok  $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }
tmp=$(mktemp -d /tmp/dn_trainer_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
val=data/tinyshakespeare/tinyshakespeare_val.bin
common="--fp32 --layers DSDG --window 64 --kv-heads 2 --sample-every 0"
# The largest relative difference of the training losses of two --log files over the steps both
# have, or nan unless they share exactly N steps; and whether such a number is at most 1e-5.
max_rel_diff() {
    python3 - "$1" "$2" "$3" <<'PY'
import json, sys
a, b = ({r["step"]: r["loss"] for r in map(json.loads, open(p)) if r["kind"] == "train"} for p in sys.argv[1:3])
common = sorted(set(a) & set(b))
print(max(abs(a[s] - b[s]) / abs(a[s]) for s in common) if len(common) == int(sys.argv[3]) else "nan")
PY
}
within_1e5() { awk -v d="$1" 'BEGIN { exit !(d == d + 0 && d <= 1e-5) }'; }

# 1. trainer val loss == infer --eval (8 rows x 512 tokens = the first 4096 predictions)
if ./train_deltanet $common -x 40 -v 40 --val-batches 1 -o "$tmp/a" >"$tmp/a.log" 2>&1; then
    tl=$(grep -E '^val loss' "$tmp/a.log" | tail -1 | awk '{print $3}')
    il=$(./infer "$tmp/a/model.safetensors" --eval "$val" -b 512 --eval-max 4096 2>/dev/null | sed -E 's/.*loss ([0-9.]+).*/\1/')
    if [ -n "$tl" ] && [ -n "$il" ] && awk -v a="$tl" -v b="$il" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-3) }'; then
        ok "trainer val loss $tl == infer --eval $il (within 1e-3)"
    else
        bad "trainer val loss '$tl' vs infer --eval '$il'"
    fi
else
    bad "training run failed: $(tail -3 "$tmp/a.log")"
fi

# 2. resume: 20 steps straight vs 10 + resume + 10
r="$common -b 4 -t 256 -x 20 -v 0"
if ./train_deltanet $r -c 10 -o "$tmp/r1" --log "$tmp/r1.jsonl" >"$tmp/r1.log" 2>&1 &&
   ./train_deltanet $r -o "$tmp/r2" --resume "$tmp/r1/model_000010.safetensors" --log "$tmp/r2.jsonl" >"$tmp/r2.log" 2>&1; then
    d=$(max_rel_diff "$tmp/r1.jsonl" "$tmp/r2.jsonl" 10)
    if within_1e5 "$d"; then
        ok "resume: steps 11..20 after --resume match the straight run (max rel diff $d)"
    else
        bad "resume: max rel loss diff '$d'"
    fi
else
    bad "resume runs failed: $(tail -2 "$tmp/r2.log")"
fi

# 3. missing shards
if ./train_deltanet -i "$tmp/none_*.bin" -x 1 >"$tmp/m.log" 2>&1; then
    bad "missing shards were accepted"
elif grep -q "none_" "$tmp/m.log" && ! grep -qi "cuda error\|segmentation\|core dumped" "$tmp/m.log"; then
    ok "missing shards: $(grep "none_" "$tmp/m.log" | head -1)"
else
    bad "missing shards: unclear message: $(head -3 "$tmp/m.log")"
fi

# 4. a NaN loss stops the run naming the step; the last good checkpoint survives and still loads
#    (DN_TEST_NAN_STEP=8 poisons the weights before step 8: a test hook, see train_deltanet.cu)
n="$common -b 4 -t 256 -x 20 -v 0 -c 5"
if DN_TEST_NAN_STEP=8 ./train_deltanet $n -o "$tmp/n" >"$tmp/n.log" 2>&1; then
    bad "NaN loss: the run exited 0"
else
    msg=$(grep -i "step 8: the loss is" "$tmp/n.log")
    il=$(./infer "$tmp/n/model_000005.safetensors" --eval "$val" -b 256 --eval-max 1024 2>/dev/null | sed -E 's/.*loss ([0-9.]+).*/\1/')
    if [ -n "$msg" ] && echo "$msg" | grep -q "model_000005" && [ ! -e "$tmp/n/model_000008.safetensors" ] &&
       ! grep -q "^step     8" "$tmp/n.log" && awk -v l="$il" 'BEGIN { exit !(l == l + 0 && l > 0 && l < 20) }'; then
        ok "NaN loss: '$msg'; model_000005 evaluates to $il"
    else
        bad "NaN loss: message '$msg', checkpoint 5 eval '$il': $(tail -2 "$tmp/n.log")"
    fi
fi

# 5. out of GPU memory: one clear message. 340M at B=64 T=2048 needs ~100 GiB of activations; the
#    batch is sized from the free device memory so that it needs about twice what is free, on any GPU
free_mib=$(nvidia-smi --query-gpu=memory.free --format=csv,noheader,nounits 2>/dev/null | head -1 | tr -dc 0-9)
free_mib=${free_mib:-81920}
ob=$(( 64 * ( (2 * free_mib / 1024 + 99) / 100 ) ))
if ./train_deltanet -m 340M -b "$ob" -t 2048 -x 1 -v 0 --sample-every 0 -o "$tmp/o" >"$tmp/o.log" 2>&1; then
    bad "out of memory: 340M at B=$ob T=2048 ran with $free_mib MiB free"
elif grep -q "^out of GPU memory" "$tmp/o.log" && ! grep -qi "cuda error\|segmentation\|core dumped\|terminate" "$tmp/o.log"; then
    ok "out of memory (B=$ob, $free_mib MiB free): $(grep "^out of GPU memory" "$tmp/o.log" | head -1)"
else
    bad "out of memory (B=$ob): unclear message: $(tail -3 "$tmp/o.log")"
fi

# 6. one rank through the data-parallel path == the plain run (fp32: within 1e-5 a step, as two plain
#    runs: attention's dq is summed with float atomics, so runs of this model differ in the last bits)
dp="$common -b 4 -t 256 -x 12 -v 0 -c 6"
if ./train_deltanet $dp -o "$tmp/p1" --log "$tmp/p1.jsonl" >"$tmp/p1.log" 2>&1 &&
   RANK=0 WORLD_SIZE=1 MASTER_PORT=29611 ./train_deltanet $dp -o "$tmp/p2" --log "$tmp/p2.jsonl" >"$tmp/p2.log" 2>&1; then
    d=$(max_rel_diff "$tmp/p1.jsonl" "$tmp/p2.jsonl" 12)
    if within_1e5 "$d" && grep -q "^data parallel: 1 ranks (environment" "$tmp/p2.log"; then
        ok "RANK=0 WORLD_SIZE=1 through NCCL: the 12 losses match the plain run's (max rel diff $d); $(grep '^data parallel' "$tmp/p2.log")"
    else
        bad "one rank through NCCL: max rel loss diff '$d'; $(grep -E '^data parallel|rank' "$tmp/p2.log" | head -2)"
    fi
    out=$(RANK=0 WORLD_SIZE=1 MASTER_PORT=29612 ./train_deltanet $dp -x 14 -o "$tmp/p3" --resume "$tmp/p1/model_000006.safetensors" 2>&1 >/dev/null)
    # a state of 1 rank resumes on 1 rank; forge 2 to check the refusal
    python3 - "$tmp/p1/model_000006.safetensors.state" "$tmp/p4.state" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", raw[:8])[0]; h = json.loads(raw[8:8 + n])
h["__metadata__"]["data_ranks"] = "2"
nh = json.dumps(h, separators=(",", ":")).encode(); nh += b" " * ((8 - len(nh) % 8) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(nh)) + nh + raw[8 + n:])
PY
    cp "$tmp/p1/model_000006.safetensors" "$tmp/p4"
    out2=$(./train_deltanet $dp -x 14 -o "$tmp/p5" --resume "$tmp/p4" 2>&1 >/dev/null); rc=$?
    if [ -z "$out" ] && [ $rc -ne 0 ] && [ "$(printf '%s\n' "$out2" | grep -c .)" = 1 ] && printf '%s' "$out2" | grep -q "2 ranks and this one has 1"; then
        ok "resume: 1 rank's state on 1 rank runs; a 2-rank state on 1 rank is refused: $out2"
    else
        bad "resume rank count: '$out' / exit $rc '$out2'"
    fi
else
    bad "data-parallel runs failed: $(tail -2 "$tmp/p1.log" "$tmp/p2.log")"
fi

echo "[test_trainer] $pass passed, $fail failed"
[ "$fail" -eq 0 ]
