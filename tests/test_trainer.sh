#!/usr/bin/env bash
# test_trainer.sh -- the trainer end to end on the CPU (part of `make test`; no GPU needed): the
# CPU backend (tests/gpu/test_trainer.sh does the same on a GPU). Run from the repo root after
# `make test` has built $DN_TRAINER (default build/train_deltanet_cpu, the CPU-only build of
# train_deltanet.cu) and ./infer, ./tokenize.
#   1. with no GPU the trainer says so on its first line and trains the tiny model;
#   2. -o creates nested folders before any work; a folder it cannot create is one line, no step;
#   3. exact resume: 8 steps straight == 4 + --resume + 4 (the CPU is fp32: identical losses);
#   4. a NaN loss stops the run naming the step; the last checkpoint survives and evaluates;
#   5. missing shards, and a token >= the vocabulary (naming --vocab), are one clear line;
#   6. kill -9 during training: the last checkpoint evaluates and --resume continues the same
#      losses as the straight run;
#   7. kill -9 during a checkpoint write (held by the test hook DN_TEST_WRITE_PAUSE): the previous
#      checkpoint evaluates, --resume removes the temporary and continues the same losses;
#   8. weights and a training state of different steps are refused;
#   9. a tiny gated DeltaNet hybrid (--layers NSNN, --gdn-* flags) trains: its loss falls, and ./infer scores its
#      checkpoint to the loss the trainer's validation reports.
# Ends with "[test_trainer] N passed, N failed" like the other test programs.
set -u
cd "$(dirname "$0")/.."
TR=${DN_TRAINER:-build/train_deltanet_cpu}
source tests/lib.sh
test_tmp dn_trainer_cpu
pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$tmp"' EXIT
test_need test_trainer "$TR" ./infer ./tokenize

# Small shards of TinyShakespeare (the first ~60k characters), GPT-2 tokens.
head -c 60000 data/tinyshakespeare/input.txt >"$tmp/ts.txt"
./tokenize -o "$tmp/ts" "$tmp/ts.txt" --val-tokens 2048 >/dev/null 2>&1 || { bad "tokenize failed"; }
D=(-i "$tmp/ts_train.bin" -j "$tmp/ts_val.bin")
# tiny hybrid: DeltaNet, sliding window and global attention; 8 steps of 2 x 32 tokens
F=("${D[@]}" --layers DSDG --window 16 --kv-heads 1 -b 2 -t 32 -x 8 -v 0 --sample-every 0 --warmup 2)
# loss of step $2 in JSONL log $1
loss_at() { python3 -c 'import json,sys
for r in map(json.loads, open(sys.argv[1])):
    if r["kind"] == "train" and r["step"] == int(sys.argv[2]): print("%.6f" % r["loss"])' "$1" "$2"; }
# the losses of steps $2..$3 of two logs are identical
same_losses() {
    local a b s
    for s in $(seq "$3" "$4"); do
        a=$(loss_at "$1" "$s"); b=$(loss_at "$2" "$s")
        [ -n "$a" ] && [ "$a" = "$b" ] || { echo "step $s: '$a' vs '$b'"; return 1; }
    done
}
evals() { ./infer "$1" --eval "$tmp/ts_val.bin" -b 32 --eval-max 256 2>&1 | tail -1; }
# wait (at most $2 s) until file $1 exists
wait_for() { local i; for i in $(seq 1 $(($2 * 10))); do [ -e "$1" ] && return 0; sleep 0.1; done; return 1; }

# 1. no GPU: the first line says CPU, the default model is tiny
if "$TR" "${D[@]}" -x 1 -v 0 --sample-every 0 -o "$tmp/d" >"$tmp/d.log" 2>&1; then
    first=$(head -1 "$tmp/d.log")
    if echo "$first" | grep -q "^training on the CPU" && grep -q "layers DDDD | D 64 " "$tmp/d.log" && grep -q "^step     1/1" "$tmp/d.log"; then
        ok "no GPU: '$first', the tiny model"
    else
        bad "no GPU: first line '$first'"
    fi
else
    bad "default CPU run failed: $(tail -2 "$tmp/d.log")"
fi

# 2. nested -o is created; one that cannot be is refused before any work
if "$TR" "${F[@]}" -x 2 -o "$tmp/n1/n2/n3" >"$tmp/n.log" 2>&1 && [ -f "$tmp/n1/n2/n3/model_000002.safetensors" ]; then
    ok "-o created nested folders and holds the checkpoint"
else
    bad "-o nested: $(tail -2 "$tmp/n.log")"
fi
touch "$tmp/afile"
if "$TR" "${F[@]}" -o "$tmp/afile/sub" >"$tmp/n2.log" 2>&1; then
    bad "-o under a regular file was accepted"
elif [ "$(grep -c . "$tmp/n2.log")" -le 2 ] && grep -q "not a folder" "$tmp/n2.log" && ! grep -q "^step" "$tmp/n2.log"; then
    ok "-o under a file: $(grep "not a folder" "$tmp/n2.log")"
else
    bad "-o under a file: $(cat "$tmp/n2.log")"
fi

# 3. exact resume
"$TR" "${F[@]}" -c 4 -o "$tmp/s" --log "$tmp/s.jsonl" >"$tmp/s.log" 2>&1 || bad "straight run failed: $(tail -2 "$tmp/s.log")"
if "$TR" "${F[@]}" -o "$tmp/r" --resume "$tmp/s/model_000004.safetensors" --log "$tmp/r.jsonl" >"$tmp/r.log" 2>&1 &&
   why=$(same_losses "$tmp/s.jsonl" "$tmp/r.jsonl" 5 8); then
    ok "resume: steps 5..8 after --resume equal the straight run exactly (step 8 loss $(loss_at "$tmp/r.jsonl" 8))"
else
    bad "resume: ${why:-$(tail -2 "$tmp/r.log")}"
fi
# resuming through the model.safetensors link works too
if "$TR" "${F[@]}" -x 9 -o "$tmp/r2" --resume "$tmp/s/model.safetensors" >"$tmp/r2.log" 2>&1 && grep -q "^step     9/9" "$tmp/r2.log"; then
    ok "resume through the model.safetensors link"
else
    bad "resume through the link: $(tail -2 "$tmp/r2.log")"
fi

# 4. NaN stop
if DN_TEST_NAN_STEP=5 "$TR" "${F[@]}" -c 2 -o "$tmp/nan" >"$tmp/nan.log" 2>&1; then
    bad "NaN loss: the run exited 0"
else
    msg=$(grep "step 5: the loss is" "$tmp/nan.log")
    il=$(evals "$tmp/nan/model_000004.safetensors")
    if [ -n "$msg" ] && echo "$msg" | grep -q "model_000004" && [ ! -e "$tmp/nan/model_000005.safetensors" ] &&
       echo "$il" | grep -q "loss [0-9]"; then
        ok "NaN loss: '$msg'; model_000004 evaluates: $il"
    else
        bad "NaN loss: '$msg' / eval '$il'"
    fi
fi

# 5. missing shards; a token beyond the vocabulary names --vocab
if "$TR" -i "$tmp/none_*.bin" -x 1 -o "$tmp/m" >"$tmp/m.log" 2>&1; then
    bad "missing shards were accepted"
elif grep -q "none_" "$tmp/m.log" && grep -q HINT "$tmp/m.log"; then
    ok "missing shards: $(grep "none_" "$tmp/m.log" | head -1)"
else
    bad "missing shards: $(cat "$tmp/m.log")"
fi
if "$TR" "${F[@]}" --vocab 1000 -o "$tmp/v" >"$tmp/v.log" 2>&1; then
    bad "--vocab 1000 on GPT-2 tokens was accepted"
elif grep -q -- "--vocab" "$tmp/v.log" && ! grep -q "^step" "$tmp/v.log"; then
    ok "token beyond the vocabulary: $(head -1 "$tmp/v.log")"
else
    bad "token beyond the vocabulary: $(cat "$tmp/v.log")"
fi

# 6. kill -9 during training, after the step-4 checkpoint
"$TR" "${F[@]}" -x 8 -c 4 -o "$tmp/k" >"$tmp/k.log" 2>&1 &
pk=$!; pids+=("$pk")
if wait_for "$tmp/k/model_000004.safetensors" 120; then
    kill -9 "$pk" 2>/dev/null; wait "$pk" 2>/dev/null
    il=$(evals "$tmp/k/model_000004.safetensors")
    if echo "$il" | grep -q "loss [0-9]" &&
       "$TR" "${F[@]}" -o "$tmp/k" --resume "$tmp/k/model_000004.safetensors" --log "$tmp/k2.jsonl" >"$tmp/k2.log" 2>&1 &&
       why=$(same_losses "$tmp/s.jsonl" "$tmp/k2.jsonl" 5 8); then
        ok "kill -9 while training: model_000004 evaluates ($il), --resume continues the straight run's losses"
    else
        bad "kill -9 while training: eval '$il': ${why:-$(tail -2 "$tmp/k2.log")}"
    fi
else
    bad "kill -9 while training: no checkpoint appeared: $(tail -2 "$tmp/k.log")"
fi

# 7. kill -9 during the step-4 checkpoint write (the hook holds its first temporary a minute)
DN_TEST_WRITE_PAUSE=model_000004 "$TR" "${F[@]}" -c 2 -o "$tmp/w" >"$tmp/w.log" 2>&1 &
pw=$!; pids+=("$pw")
held=""
for i in $(seq 1 1200); do held=$(sed -n 's/^test hook: holding //p' "$tmp/w.log"); [ -n "$held" ] && break; sleep 0.1; done
if [ -n "$held" ] && [ -e "$held" ]; then
    kill -9 "$pw" 2>/dev/null; wait "$pw" 2>/dev/null
    left=$(ls "$tmp/w" | grep -c '\.tmp\.')
    il=$(evals "$tmp/w/model_000002.safetensors")
    if [ "$left" -ge 1 ] && [ ! -e "$tmp/w/model_000004.safetensors" ] && echo "$il" | grep -q "loss [0-9]" &&
       "$TR" "${F[@]}" -o "$tmp/w" --resume "$tmp/w/model_000002.safetensors" --log "$tmp/w2.jsonl" >"$tmp/w2.log" 2>&1 &&
       [ "$(ls "$tmp/w" | grep -c '\.tmp\.')" -eq 0 ] && grep -q "^removed 1 temporary file" "$tmp/w2.log" &&
       why=$(same_losses "$tmp/s.jsonl" "$tmp/w2.jsonl" 3 8); then
        ok "kill -9 mid-save: model_000002 evaluates ($il), --resume removed the temporary and continued the same losses"
    else
        bad "kill -9 mid-save: $left temporaries, eval '$il', ${why:-$(tail -3 "$tmp/w2.log")}; now: $(ls "$tmp/w" | tr '\n' ' ')"
    fi
else
    kill -9 "$pw" 2>/dev/null
    bad "kill -9 mid-save: the write was never held: $(tail -2 "$tmp/w.log")"
fi

# 8. weights and state of different steps
mkdir -p "$tmp/x"
cp "$tmp/s/model_000008.safetensors" "$tmp/x/model_000008.safetensors"
cp "$tmp/s/model_000004.safetensors.state" "$tmp/x/model_000008.safetensors.state"
if "$TR" "${F[@]}" -x 12 -o "$tmp/x2" --resume "$tmp/x/model_000008.safetensors" >"$tmp/x.log" 2>&1; then
    bad "weights of step 8 with a state of step 4 were accepted"
elif grep -q "do not belong together" "$tmp/x.log" && ! grep -q "^step" "$tmp/x.log"; then
    ok "mismatched weights and state refused: $(head -c 160 "$tmp/x.log")"
else
    bad "mismatched weights and state: $(cat "$tmp/x.log")"
fi

# 9. gated DeltaNet: 20 steps of a tiny NSNN model at lr 3e-3; the mean loss of the last 5 steps is
# below that of the first 5, and ./infer --eval on the val blocks the trainer scores gives its loss
G=(-i "$tmp/ts_train.bin" -j "$tmp/ts_val.bin" --layers NSNN --window 16 --gdn-heads 4 --gdn-head-dim 8 --gdn-expand-v 3
   -b 2 -t 32 -x 20 --warmup 2 -l 3e-3
   -v 20 --val-batches 2 --sample-every 0)
if "$TR" "${G[@]}" -o "$tmp/gdn" --log "$tmp/gdn.jsonl" >"$tmp/gdn.log" 2>&1; then
    read -r first last < <(python3 -c 'import json,sys
l=[r["loss"] for r in map(json.loads, open(sys.argv[1])) if r["kind"] == "train"]
print("%.4f %.4f" % (sum(l[:5]) / 5, sum(l[-5:]) / 5))' "$tmp/gdn.jsonl")
    val=$(python3 -c 'import json,sys
v=[r["loss"] for r in map(json.loads, open(sys.argv[1])) if r["kind"] == "val"]
print("%.4f" % v[-1])' "$tmp/gdn.jsonl")
    inf=$(./infer "$tmp/gdn/model.safetensors" --eval "$tmp/ts_val.bin" -b 32 --eval-max 128 2>&1 | grep -oE 'loss [0-9.]+' | head -1 | cut -d' ' -f2)
    if grep -q "gated DeltaNet heads 4 (K 8, V 24)" "$tmp/gdn.log" && python3 -c "import sys; f,l=float(sys.argv[1]),float(sys.argv[2]); sys.exit(0 if l < f - 0.5 else 1)" "$first" "$last"; then
        ok "gated DeltaNet hybrid NSNN trains on the CPU: mean loss of steps 1-5 $first, of steps 16-20 $last"
    else
        bad "gated DeltaNet NSNN: losses $first -> $last; $(grep '^model' "$tmp/gdn.log")"
    fi
    if [ -n "$inf" ] && python3 -c "import sys; sys.exit(0 if abs(float(sys.argv[1]) - float(sys.argv[2])) < 2e-4 else 1)" "$val" "$inf"; then
        ok "./infer --eval of the NSNN checkpoint ($inf) == the trainer's validation loss ($val)"
    else
        bad "NSNN: ./infer --eval '$inf' vs the trainer's validation '$val'"
    fi
else
    bad "gated DeltaNet NSNN run failed: $(tail -2 "$tmp/gdn.log")"
fi

test_summary test_trainer
