#!/usr/bin/env bash
# test_mqar_train.sh -- the CPU trainer on MQAR data with its loss mask (part of `make test`; no GPU
# needed). Run from the repo root after `make test` has built $DN_TRAINER (default
# build/train_deltanet_cpu), ./mqar_data and ./infer.
#   1. a tiny no-MLP model with a linear-attention and a DeltaNet layer trains on masked shards:
#      the summary says the loss is masked, every evaluation prints an accuracy, the loss is finite;
#   2. its checkpoint carries no_mlp and 'L', and ./infer --eval loads it (stepwise == blocks);
#   3. -t other than the examples' length, --no-shuffle with masks, and a shard whose mask is
#      missing or broken are one clear line each, before any step.
# Ends with "[test_mqar_train] N passed, N failed" like the other test programs.
set -u
cd "$(dirname "$0")/.."
TR=${DN_TRAINER:-build/train_deltanet_cpu}
source tests/lib.sh
test_tmp dn_mqar_cpu
test_need test_mqar_train "$TR" ./mqar_data ./infer
./mqar_data -o "$tmp/d" -v 64 -t 32 -p 4 -n 200 -e 20 -s 5 >/dev/null 2>&1 || bad "mqar_data failed"
D=(-i "$tmp/d/mqar_train.bin" -j "$tmp/d/mqar_test.bin")
F=("${D[@]}" -m tiny --vocab 64 --d-model 16 --heads 2 --layers LD --no-mlp -b 4 -t 32 -x 6 -v 3 --warmup 2 --sample-every 0)

out=$(OMP_NUM_THREADS=2 "$TR" --cpu "${F[@]}" -o "$tmp/o" --log "$tmp/log.jsonl" 2>&1); rc=$?
[ $rc -eq 0 ] && ok "trains (exit 0)" || bad "training failed: $(printf '%s' "$out" | tail -3)"
printf '%s\n' "$out" | grep -q "loss mask: the masked targets only" && ok "the summary says the loss is masked" || bad "no mask note in the summary"
printf '%s\n' "$out" | grep -q "MLP none" && ok "the summary says there is no MLP" || bad "no 'MLP none' in the summary"
n=$(printf '%s\n' "$out" | grep -cE "^val loss [0-9.]+ .*\| accuracy [0-9.]+ \(80 masked targets\) at step")
[ "$n" -eq 2 ] && ok "an accuracy at each evaluation over the 80 test answers ($n)" || bad "accuracy lines: $n; $(printf '%s' "$out" | grep '^val' | head -2)"
grep -q '"acc":' "$tmp/log.jsonl" && ok "the log's val rows carry acc" || bad "no acc in the log"
last=$(printf '%s\n' "$out" | grep -E '^step +6/6' | sed -E 's/.*loss ([0-9.a-z-]+).*/\1/')
python3 -c "import math,sys; v=float(sys.argv[1]); sys.exit(0 if math.isfinite(v) and 0 < v < 10 else 1)" "${last:-nan}" \
    && ok "finite loss at the last step ($last)" || bad "last loss '$last'"
ck="$tmp/o/model.safetensors"
python3 - "$ck" <<'PY' && ok "checkpoint metadata: no_mlp 1, layers LD, no fla model" || bad "checkpoint metadata"
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
m = json.loads(b[8:8 + n])["__metadata__"]
sys.exit(0 if m["no_mlp"] == "1" and m["layers"] == "LD" and json.loads(m["fla_config"])["model_type"] is None else 1)
PY
a=$(./infer "$ck" --eval "$tmp/d/mqar_test.bin" -b 32 2>/dev/null | grep -oE 'loss [0-9.]+' | head -1)
b=$(./infer "$ck" --eval "$tmp/d/mqar_test.bin" -b 32 --eval-step 2>/dev/null | grep -oE 'loss [0-9.]+' | head -1)
[ -n "$a" ] && [ "$a" = "$b" ] && ok "infer --eval loads it; blocks == token by token ($a)" || bad "infer eval '$a' vs '$b'"

out=$("$TR" --cpu "${F[@]}" -t 16 -o "$tmp/o2" 2>&1); rc=$?
[ $rc -ne 0 ] && [ "$(printf '%s\n' "$out" | grep -c .)" -le 2 ] && printf '%s' "$out" | grep -q -- "-t 32" && ! printf '%s' "$out" | grep -q '^step' \
    && ok "-t 16 on examples of 32: one line with the fix" || bad "-t mismatch: $out"
out=$("$TR" --cpu "${F[@]}" --no-shuffle -o "$tmp/o3" 2>&1); rc=$?
[ $rc -ne 0 ] && printf '%s' "$out" | grep -q "no-shuffle" && ! printf '%s' "$out" | grep -q '^step' \
    && ok "--no-shuffle with masks refused" || bad "--no-shuffle: $out"
cp "$tmp/d/mqar_train.bin" "$tmp/d/mqar_train2.bin"
out=$("$TR" --cpu "${F[@]}" -i "$tmp/d/mqar_train*.bin" -o "$tmp/o4" 2>&1); rc=$?
[ $rc -ne 0 ] && printf '%s' "$out" | grep -q "all or none" && ! printf '%s' "$out" | grep -q '^step' \
    && ok "a shard without its mask: one line" || bad "missing mask: $out"
rm -f "$tmp/d/mqar_train2.bin"
printf 'junk' >"$tmp/d/mqar_test.mask"
out=$("$TR" --cpu "${F[@]}" -o "$tmp/o5" 2>&1); rc=$?
[ $rc -ne 0 ] && printf '%s' "$out" | grep -q "mqar_test.mask" && ! printf '%s' "$out" | grep -q '^step' \
    && ok "a broken mask: one line naming it" || bad "broken mask: $out"

test_summary test_mqar_train
