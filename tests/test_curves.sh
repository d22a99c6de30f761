#!/usr/bin/env bash
# test_curves.sh -- the shuffled training data and the validation windows through the trainer, and
# scripts/curves.sh end to end, on the CPU (part of `make test`; no GPU needed). Run from the repo
# root after `make test` has built $DN_TRAINER (default build/train_deltanet_cpu), ./infer and
# ./tokenize.
#   1. the default loader is shuffled: its first batch is not --no-shuffle's (the file's head);
#   2. exact resume with shuffling, across an epoch's end; the state holds (epoch, next window);
#      --random-windows draws its own windows and resumes exactly too;
#   3. --val-windows 0 scores every window: the trainer's val loss equals ./infer --eval with -b T;
#      --val-batches N scores the head of the split as before; a shard smaller than one window is
#      refused naming it;
#   4. scripts/curves.sh fails with one line for an unwritable output folder, a missing corpus
#      and no GPU;
#   5. scripts/curves.sh end to end on a small corpus made here, with a stand-in nvidia-smi and the
#      recipe scaled down to the CPU (tiny model, 12 layers, B=2, T=32): shards built once, the
#      six layer layouts, curves.jsonl / csv / table.md (and curves.png where matplotlib is); a
#      trainer that falls back to the CPU is stopped with one last line.
# Ends with "[test_curves] N passed, N failed" like the other test programs.
set -u
cd "$(dirname "$0")/.."
TR=${DN_TRAINER:-build/train_deltanet_cpu}
case "$TR" in /*) ;; *) TR="$PWD/$TR" ;; esac
# one OpenMP thread: as fast at these tiny shapes, and spinning threads are slow on a busy machine
export OMP_NUM_THREADS=1
source tests/lib.sh
test_tmp dn_curves
test_need test_curves "$TR" ./infer ./tokenize

# Shards of TinyShakespeare: train ~5.5k tokens, val 600; and a small one of 7 windows of 33.
head -c 24000 data/tinyshakespeare/input.txt >"$tmp/ts.txt"
./tokenize -o "$tmp/ts" "$tmp/ts.txt" --val-tokens 600 >/dev/null 2>&1 || bad "tokenize failed"
head -c 800 data/tinyshakespeare/input.txt >"$tmp/sm.txt"
./tokenize -o "$tmp/sm" "$tmp/sm.txt" --val-tokens 0 >/dev/null 2>&1 || bad "tokenize (small) failed"
F=(-i "$tmp/ts_train.bin" -j "$tmp/ts_val.bin" --layers DD -b 2 -t 32 --sample-every 0 --warmup 2)
# loss of step $2 in JSONL log $1 (kind $3, default train)
loss_at() { python3 -c 'import json,sys
for r in map(json.loads, open(sys.argv[1])):
    if r["kind"] == sys.argv[3] and r["step"] == int(sys.argv[2]): print("%.6f" % r["loss"])' "$1" "$2" "${3:-train}"; }
# a metadata value of a safetensors file (the JSON header after the 8-byte length)
meta() { python3 -c 'import json,struct,sys
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]
print(json.loads(f.read(n))["__metadata__"][sys.argv[2]])' "$1" "$2"; }

# 1. shuffled by default; --no-shuffle reads the head of the file
"$TR" "${F[@]}" -x 1 -v 1 -o "$tmp/a" --log "$tmp/a.jsonl" >"$tmp/a.log" 2>&1
"$TR" "${F[@]}" -x 1 -v 0 -o "$tmp/b" --log "$tmp/b.jsonl" --no-shuffle >"$tmp/b.log" 2>&1
la=$(loss_at "$tmp/a.jsonl" 1); lb=$(loss_at "$tmp/b.jsonl" 1)
if grep -q "shuffled from seed 1337" "$tmp/a.log" && grep -q "in file order" "$tmp/b.log" && [ -n "$la" ] && [ -n "$lb" ] &&
   [ "$la" != "$lb" ]; then
    ok "shuffled by default (step 1 loss $la) vs --no-shuffle ($lb): $(grep -o 'train: .*shuffled from seed [0-9]*' "$tmp/a.log")"
else
    bad "shuffle vs --no-shuffle: '$la' vs '$lb': $(tail -2 "$tmp/a.log" "$tmp/b.log")"
fi

# 2. exact resume across an epoch's end: 7 windows an epoch, 2 rows a step
S=(-i "$tmp/sm_train.bin" -j "$tmp/ts_val.bin" --layers DD -b 2 -t 32 --sample-every 0 --warmup 2 -v 0 -x 6)
"$TR" "${S[@]}" -c 2 -o "$tmp/s" --log "$tmp/s.jsonl" >"$tmp/s.log" 2>&1 || bad "straight run: $(tail -2 "$tmp/s.log")"
p2="$(meta "$tmp/s/model_000002.safetensors.state" data_shard) $(meta "$tmp/s/model_000002.safetensors.state" data_pos)"
p4="$(meta "$tmp/s/model_000004.safetensors.state" data_shard) $(meta "$tmp/s/model_000004.safetensors.state" data_pos)"
if grep -q "7 windows of 33 tokens an epoch" "$tmp/s.log" && [ "$p2" = "0 4" ] && [ "$p4" = "1 1" ]; then
    ok "the state holds (epoch, next window): ($p2) after 4 windows, ($p4) after 8 of 7 an epoch"
else
    bad "state position: step 2 ($p2), step 4 ($p4): $(grep '^train:' "$tmp/s.log")"
fi
"$TR" "${S[@]}" -o "$tmp/r" --resume "$tmp/s/model_000002.safetensors" --log "$tmp/r.jsonl" >"$tmp/r.log" 2>&1
same=1
for s in 3 4 5 6; do
    a=$(loss_at "$tmp/s.jsonl" $s); b=$(loss_at "$tmp/r.jsonl" $s)
    [ -n "$a" ] && [ "$a" = "$b" ] || { same=0; echo "  step $s: '$a' vs '$b'"; }
done
[ "$same" = 1 ] && ok "resume mid-epoch: steps 3..6 (across the epoch's end) equal the straight run (step 6 loss $(loss_at "$tmp/r.jsonl" 6))" ||
    bad "resume with shuffling: $(tail -2 "$tmp/r.log")"

# 2b. --random-windows (the reference's sampling): windows off the T grid, exact resume too
"$TR" "${S[@]}" --random-windows -c 2 -o "$tmp/rw" --log "$tmp/rw.jsonl" >"$tmp/rw.log" 2>&1 || bad "random windows: $(tail -2 "$tmp/rw.log")"
"$TR" "${S[@]}" --random-windows -o "$tmp/rw2" --resume "$tmp/rw/model_000002.safetensors" --log "$tmp/rw2.jsonl" >"$tmp/rw2.log" 2>&1
same=1
for s in 3 4 5 6; do
    a=$(loss_at "$tmp/rw.jsonl" $s); b=$(loss_at "$tmp/rw2.jsonl" $s); c=$(loss_at "$tmp/s.jsonl" $s)
    [ -n "$a" ] && [ "$a" = "$b" ] && [ "$a" != "$c" ] || { same=0; echo "  step $s: '$a' vs resumed '$b' (shuffled: '$c')"; }
done
if [ "$same" = 1 ] && grep -q "random windows of 33 tokens, with replacement, from seed 1337" "$tmp/rw.log"; then
    ok "--random-windows: its own batches, and resumed at step 2 the steps 3..6 equal the straight run's"
else
    bad "--random-windows: $(grep '^train:' "$tmp/rw.log") $(tail -1 "$tmp/rw2.log")"
fi
out=$("$TR" "${S[@]}" --random-windows --no-shuffle -o "$tmp/rw3" 2>&1); rc=$?
[ $rc -ne 0 ] && [ "$(printf '%s\n' "$out" | grep -c .)" = 1 ] && printf '%s' "$out" | grep -q "exclude each other" &&
    ok "--random-windows with --no-shuffle: one line: $out" || bad "--random-windows --no-shuffle: exit $rc: $out"

# 3. validation: every window == ./infer --eval -b T; --val-batches = the head; a too-small shard
"$TR" "${F[@]}" -x 1 -v 1 --val-windows 0 -o "$tmp/v" >"$tmp/v.log" 2>&1
tl=$(sed -n 's/^val loss \([0-9.]*\) .*/\1/p' "$tmp/v.log")
il=$(./infer "$tmp/v/model.safetensors" --eval "$tmp/ts_val.bin" -b 32 --eval-max $((599 / 32 * 32)) 2>/dev/null | sed -E 's/.*loss ([0-9.]+).*/\1/')
if grep -q "(18 windows covering 600 tokens)" "$tmp/v.log" && [ -n "$tl" ] && [ -n "$il" ] &&
   python3 -c "import sys; sys.exit(abs($tl - $il) > 2e-5)"; then
    ok "--val-windows 0: 18 windows, val loss $tl == ./infer --eval -b 32 $il"
else
    bad "--val-windows 0: trainer '$tl' vs infer '$il': $(grep -E '^train:|rror' "$tmp/v.log")"
fi
"$TR" "${F[@]}" -x 1 -v 1 --val-batches 2 -o "$tmp/w" >"$tmp/w.log" 2>&1
tl=$(sed -n 's/^val loss \([0-9.]*\) .*/\1/p' "$tmp/w.log")
il=$(./infer "$tmp/w/model.safetensors" --eval "$tmp/ts_val.bin" -b 32 --eval-max 128 2>/dev/null | sed -E 's/.*loss ([0-9.]+).*/\1/')
if grep -q "(the first 4 windows)" "$tmp/w.log" && [ -n "$tl" ] && [ -n "$il" ] && python3 -c "import sys; sys.exit(abs($tl - $il) > 2e-5)"; then
    ok "--val-batches 2: the first 4 windows, val loss $tl == ./infer --eval -b 32 --eval-max 128 $il"
else
    bad "--val-batches 2: trainer '$tl' vs infer '$il': $(grep -E '^train:|rror' "$tmp/w.log")"
fi
if grep -q "(64 windows spread over 600 tokens)" "$tmp/a.log"; then ok "default: $(grep -o 'val: .*windows spread over 600 tokens)' "$tmp/a.log")"
else bad "default validation: $(grep '^train:' "$tmp/a.log")"; fi
if "$TR" -i "$tmp/sm_train.bin" -j "$tmp/ts_val.bin" --layers DD -b 2 -t 512 -x 1 -o "$tmp/z" >"$tmp/z.log" 2>&1; then
    bad "a training shard smaller than one window was accepted"
elif grep -q "sm_train.bin: [0-9]* tokens, fewer than one window needs (T+1 = 513)" "$tmp/z.log" && ! grep -q "^step" "$tmp/z.log"; then
    ok "a shard smaller than one window: $(grep -o 'sm_train.bin: .*513)' "$tmp/z.log")"
else
    bad "a too-small shard: $(cat "$tmp/z.log")"
fi

# 4. curves.sh's one-line failures. A stand-in nvidia-smi that fails, and one that lists a GPU.
mkdir -p "$tmp/nogpu" "$tmp/gpu"
printf '#!/bin/sh\necho "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."\nexit 9\n' >"$tmp/nogpu/nvidia-smi"
printf '#!/bin/sh\necho "GPU 0: Stand-in GPU (UUID: GPU-0)"\n' >"$tmp/gpu/nvidia-smi"
chmod +x "$tmp/nogpu/nvidia-smi" "$tmp/gpu/nvidia-smi"
# A small corpus in make_corpus.sh's format: two texts, split.txt with the cut and the sha256s.
mkdir -p "$tmp/corpus"
echo "# file N cut valid_bytes valid_% valid_line sha256(train) sha256(valid)" >"$tmp/corpus/split.txt"
for spec in "one.txt 0" "two.txt 7000"; do
    set -- $spec
    tail -c +$(($2 + 1)) data/tinyshakespeare/input.txt | head -c 7000 >"$tmp/$1"
    n=$(stat -c %s "$tmp/$1")
    cut=$(python3 -c 'import sys; d = open(sys.argv[1], "rb").read(); t = len(d) - len(d) // 10; print(d.rfind(b"\n", 0, t) + 1)' "$tmp/$1")
    st=$(head -c "$cut" "$tmp/$1" | sha256sum | cut -d' ' -f1)
    sv=$(tail -c +$((cut + 1)) "$tmp/$1" | sha256sum | cut -d' ' -f1)
    echo "$1 $n $cut $((n - cut)) 10 0 $st $sv" >>"$tmp/corpus/split.txt"
    xz -c "$tmp/$1" >"$tmp/corpus/$1.xz"
done
# the recipe at the CPU's scale: d12 -> tiny with 12 layers, B 32 -> 2, T 1024 -> 32, 12 attention
# heads -> 2, window 512 -> 16, 64 validation windows -> 4; KEEP_CPU_LINE=1 leaves the trainer's
# "training on the CPU" first line (which curves.sh must refuse), otherwise it is dropped
cat >"$tmp/trainer.sh" <<EOF
#!/usr/bin/env bash
args=()
while [ \$# -gt 0 ]; do
    case "\$1 \${2-}" in
        "-m d12") args+=(-m tiny --layers DDDDDDDDDDDD); shift 2 ;;
        "-b 32") args+=(-b 2); shift 2 ;;
        "-t 1024") args+=(-t 32); shift 2 ;;
        "--attn-heads 12") args+=(--attn-heads 2); shift 2 ;;
        "--window 512") args+=(--window 16); shift 2 ;;
        "--val-windows 64") args+=(--val-windows 4); shift 2 ;;
        *) args+=("\$1"); shift ;;
    esac
done
[ -n "\${KEEP_CPU_LINE-}" ] && exec "$TR" "\${args[@]}"
set -o pipefail
"$TR" "\${args[@]}" 2>&1 | sed '/^training on the CPU/d'
EOF
chmod +x "$tmp/trainer.sh"
plot=--no-plot
python3 -c 'import matplotlib' >/dev/null 2>&1 && plot=""
C=(--corpus "$tmp/corpus" --data "$tmp/shards" --trainer "$tmp/trainer.sh" $plot)
# curves.sh ARGS... must fail with exactly one line containing $want (env: $cpath the PATH prefix)
one_line_failure() {
    local what=$1 want=$2; shift 2
    local out rc
    out=$(PATH="$cpath:$PATH" scripts/curves.sh "$@" 2>&1); rc=$?
    if [ "$rc" -ne 0 ] && [ "$(printf '%s\n' "$out" | grep -c .)" -eq 1 ] && printf '%s' "$out" | grep -q "^curves.sh: .*$want"; then
        ok "$what: $out"
    else
        bad "$what: exit $rc, output: $out"
    fi
}
touch "$tmp/afile"
cpath=$tmp/gpu
one_line_failure "curves.sh, unwritable output folder" "cannot create the output folder" "${C[@]}" --out "$tmp/afile/sub"
one_line_failure "curves.sh, missing corpus" "no corpus at" "${C[@]}" --corpus "$tmp/nocorpus" --out "$tmp/c0"
cpath=$tmp/nogpu
one_line_failure "curves.sh, no GPU" "no GPU: nvidia-smi failed" "${C[@]}" --out "$tmp/c1"

# 5. end to end: the six configurations, 2 steps each, evaluated at both
t0=$(date +%s)
PATH="$tmp/gpu:$PATH" scripts/curves.sh "${C[@]}" --out "$tmp/cv" --steps 2 --val-every 1 >"$tmp/cv.log" 2>&1; rc=$?
secs=$(($(date +%s) - t0))
cv=$tmp/cv
if [ "$rc" -eq 0 ] && [ -f "$tmp/shards/STAMP" ] && [ -f "$tmp/shards/corpus_val.bin" ] &&
   grep -q "building the token shards" "$tmp/cv.log"; then
    ok "curves.sh end to end: exit 0 in $secs s, shards built in $tmp/shards"
else
    bad "curves.sh end to end: exit $rc: $(tail -3 "$tmp/cv.log")"
fi
layouts_ok=1
for want in "deltanet DDDDDDDDDDDD" "hybrid DDDDDGDDDDDG" "swa DSDSDSDSDSDS" "transformer GGGGGGGGGGGG" \
            "gdn NNNNNNNNNNNN" "gdn-swa NSNSNSNSNSNS"; do
    set -- $want
    grep -qE "^curves.sh: \[[1-6]/6\] $1 +val loss [0-9.]+ \(perplexity [0-9.]+\) at step 2 \| layers $2 \| [0-9.]+ min$" "$tmp/cv.log" ||
        { layouts_ok=0; echo "  no progress line for $1 with layers $2"; }
done
[ "$layouts_ok" = 1 ] && ok "one progress line per model, the stated layouts: $(grep -c '^curves.sh: \[' "$tmp/cv.log") lines" ||
    bad "progress lines: $(grep '^curves.sh: \[' "$tmp/cv.log")"
if python3 - "$cv" <<'EOF'
import csv, json, math, sys
d = sys.argv[1]
rows = [json.loads(l) for l in open(d + "/curves.jsonl")]
assert len(rows) == 12, rows
assert {r["config"] for r in rows} == {"deltanet", "hybrid", "swa", "transformer", "gdn", "gdn-swa"}
for r in rows:
    assert set(r) == {"config", "step", "tokens", "val_loss", "ppl"}, r
    assert r["step"] in (1, 2) and r["tokens"] == 32768 * r["step"], r
    assert abs(r["ppl"] - math.exp(r["val_loss"])) < 1e-3 * r["ppl"], r
c = list(csv.DictReader(open(d + "/curves.csv")))
assert len(c) == 12 and abs(float(c[0]["val_loss"]) - rows[0]["val_loss"]) < 1e-9, c[0]
t = open(d + "/table.md").read()
assert "| step | tokens | deltanet | hybrid | swa | transformer | gdn | gdn-swa |" in t and "| 2 | 0.1M |" in t and "the whole command" in t, t
EOF
then
    ok "curves.jsonl (12 rows: config, step, tokens, val_loss, ppl), curves.csv, table.md"
else
    bad "curves.sh outputs: $(ls "$cv")"
fi
if [ -z "$plot" ]; then
    if [ -s "$cv/curves.png" ] && [ "$(head -c 4 "$cv/curves.png" | od -An -c | tr -d ' ')" = "211PNG" ]; then ok "curves.png written"
    else bad "curves.png missing"; fi
fi
# a trainer that falls back to the CPU is stopped at its first line
KEEP_CPU_LINE=1 PATH="$tmp/gpu:$PATH" scripts/curves.sh "${C[@]}" --out "$tmp/c2" --configs deltanet --steps 1 >"$tmp/c2.log" 2>&1; rc=$?
if [ "$rc" -ne 0 ] && tail -1 "$tmp/c2.log" | grep -q "^curves.sh: deltanet: the trainer fell back to the CPU" && ! grep -q "^step" "$tmp/c2.log"; then
    ok "a trainer on the CPU is refused: $(tail -1 "$tmp/c2.log")"
else
    bad "CPU fallback: exit $rc: $(cat "$tmp/c2.log" "$tmp/c2/deltanet.log" 2>/dev/null)"
fi
# again: the shards are up to date, so not rebuilt; --random-windows reaches the trainer
PATH="$tmp/gpu:$PATH" scripts/curves.sh "${C[@]}" --out "$tmp/cv2" --configs deltanet --steps 1 --random-windows >"$tmp/cv2.log" 2>&1; rc=$?
grep -q "random windows of 33 tokens" "$tmp/cv2/deltanet.log" && ok "curves.sh --random-windows: the trainer samples at random" ||
    bad "curves.sh --random-windows: $(grep '^train:' "$tmp/cv2/deltanet.log" 2>/dev/null)"
if [ "$rc" -eq 0 ] && ! grep -q "building the token shards" "$tmp/cv2.log" && grep -q "^curves.sh: \[1/1\] deltanet" "$tmp/cv2.log"; then
    ok "a second run reuses the shards (STAMP up to date)"
else
    bad "second run: exit $rc: $(cat "$tmp/cv2.log")"
fi

test_summary test_curves
