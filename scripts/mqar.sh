#!/usr/bin/env bash
# mqar.sh -- multi-query associative recall (MQAR, Zoology) across widths and layer kinds, in one
# command: the DeltaNet paper's synthetic-recall comparison at a small, fixed budget.
#
# Steps: (1) check the options, the output folder, the GPU, the trainer and Python before anything
# slow; (2) write the task with ./mqar_data (vocabulary 8192, --seq tokens an example, --pairs
# key-value pairs, --train + --test examples, --seed) unless data/mqar already holds the same
# (data/mqar/STAMP); (3) for every layer kind and width: 2 layers of that kind, no MLP, head size 64
# (D/64 heads), tied embeddings, trained --steps steps of --batch examples at each learning rate of
# --lrs (warm-up over the first tenth, cosine to lr/10, bf16), the test-set accuracy at the masked
# answers after the last step; one progress line per run; (4) scripts/mqar_table.py keeps the best
# learning rate of each (kind, width) and writes OUT/table.md, OUT/results.jsonl (every run) and
# OUT/mqar.png (accuracy against width).
#
# Layer kinds: D DeltaNet, L linear attention (DeltaNet without the delta rule), G global softmax
# attention, N Gated DeltaNet when the trainer has it (probed). The defaults (8000 steps of 64
# examples, lr 1e-3, 3e-3 and 1e-2, six runs at once) come from single runs on an H200: at 8000 steps
# DeltaNet reached 99.4-100% at every width, attention needed lr 1e-2 (99.5-99.99% at 6000), linear
# attention at D=64 stayed at 72-95%; six runs of 8000 steps at once took ~2 minutes, so the 36 runs
# take ~12 (results/gpu-2026-12-03-h200-session3/).
# Every failure before or during the runs ends with one line on stderr saying what and where.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<EOF
usage: scripts/mqar.sh [options]     (or: make mqar MQAR_ARGS="options")
Train 2-layer models of each layer kind and width on MQAR and tabulate their test accuracy.
  --kinds LIST      layer kinds, from D (DeltaNet), L (linear attention), G (global attention),
                    N (Gated DeltaNet, if the trainer has it) [D,L,G and N when available]
  --widths LIST     model widths D, multiples of 64 [64,128,256]
  --lrs LIST        learning rates tried per model; the best is kept [1e-3,3e-3,1e-2]
  --steps N         optimizer steps per run [8000]
  --batch B         examples per step [64]
  --seq T           tokens per example [512]
  --pairs P         key-value pairs per example [64]
  --train N         training examples [100000]
  --test N          test examples [1000]
  --seed S          data seed (the model seed is 0) [1234]
  --jobs J          runs trained at once on the GPU (small models leave most of it idle) [6]
  --resume          keep OUT/results.jsonl and train only the runs it lacks (a sweep cut short,
                    e.g. by a time limit, continued with the same options)
  --out DIR         logs, results, table, plot [out/mqar]
  --data DIR        where the task is written [data/mqar]
  --trainer PATH    the trainer [./train_deltanet]
  --no-plot         no mqar.png (no matplotlib needed)
  --check           only the checks of step 1 (make mqar runs them before building)
  -h, --help        this text
Writes OUT/table.md, OUT/results.jsonl, OUT/mqar.png; per run OUT/<kind>_d<D>_lr<lr>.log.
EOF
}

die() { echo "mqar.sh: $*" >&2; exit 1; }

kinds="" widths=64,128,256 lrs=1e-3,3e-3,1e-2 steps=8000 batch=64 seq=512 pairs=64 ntrain=100000 ntest=1000
jobs=6 resume=0 seed=1234 out=out/mqar data=data/mqar trainer=./train_deltanet plot=1 check_only=0
source scripts/lib.sh
parse_opts "--kinds=kinds --widths=widths --lrs=lrs --steps=steps --batch=batch --seq=seq --pairs=pairs
            --train=ntrain --test=ntest --seed=seed --jobs=jobs --resume:resume=1 --out=out --data=data --trainer=trainer
            --no-plot:plot=0 --check:check_only=1" "$@"

# ---- 1. checks -------------------------------------------------------------------------------
for v in steps batch seq pairs ntrain ntest jobs; do is_count "${!v}" || die "--$v '${!v}' is not a positive integer"; done
case "$seed" in ''|*[!0-9]*) die "--seed '$seed' is not a non-negative integer" ;; esac
IFS=, read -r -a W <<<"$widths"
[ ${#W[@]} -gt 0 ] || die "--widths is empty"
for d in "${W[@]}"; do is_count "$d" && [ $((d % 64)) -eq 0 ] || die "--widths: '$d' is not a positive multiple of 64 (head size 64)"; done
IFS=, read -r -a LR <<<"$lrs"
[ ${#LR[@]} -gt 0 ] || die "--lrs is empty"
for l in "${LR[@]}"; do python3 -c 'import sys; v=float(sys.argv[1]); sys.exit(0 if 0 < v < 1 else 1)' "$l" 2>/dev/null || die "--lrs: '$l' is not a number in (0, 1)"; done
command -v python3 >/dev/null 2>&1 || die "python3 is needed for the table"
if [ "$plot" -eq 1 ] && ! python3 -c 'import matplotlib' >/dev/null 2>&1; then
    # the table is the result; the plot can be made later from results.jsonl where matplotlib is
    echo "mqar.sh: note: no matplotlib here: mqar.png is skipped (scripts/mqar_table.py OUT/results.jsonl ... makes it later)" >&2
    plot=0
fi
mkdir -p "$out" 2>/dev/null && [ -d "$out" ] || die "--out $out: cannot create the folder"
probe="$out/.write_test.$$"
( : >"$probe" ) 2>/dev/null || die "--out $out: the folder is not writable"
rm -f "$probe"
mkdir -p "$data" 2>/dev/null && [ -d "$data" ] || die "--data $data: cannot create the folder"
( : >"$data/.write_test.$$" ) 2>/dev/null || die "--data $data: the folder is not writable"
rm -f "$data/.write_test.$$"
command -v nvidia-smi >/dev/null 2>&1 || die "no GPU: nvidia-smi not found; MQAR trains $(( ${#W[@]} * 3 * ${#LR[@]} )) models and needs a CUDA GPU"
gpus=$(nvidia-smi -L 2>&1) || die "no GPU: nvidia-smi failed: $(printf '%s' "$gpus" | head -1)"
printf '%s\n' "$gpus" | grep -q '^GPU [0-9]' || die "no GPU: nvidia-smi lists none: $(printf '%s' "$gpus" | head -1)"
[ "$check_only" -eq 1 ] && exit 0
[ -x "$trainer" ] || die "--trainer $trainer: not an executable (make train_deltanet builds it)"
[ -x ./mqar_data ] || die "./mqar_data is missing (make mqar_data builds it)"

# Gated DeltaNet ('N') when the trainer knows the letter: its config check runs before the data.
has_n=0
nout=$("$trainer" --layers NN -m tiny --vocab 8192 --d-model 64 --heads 1 -i "$out/.none*.bin" -o "$out/.probe" -x 1 2>&1 | head -3)
printf '%s' "$nout" | grep -q -- "--layers" || has_n=1
rm -rf "$out/.probe"
if [ -z "$kinds" ]; then kinds=D,L,G; [ $has_n -eq 1 ] && kinds=D,L,G,N; fi
IFS=, read -r -a K <<<"$kinds"
for k in "${K[@]}"; do
    case "$k" in D|L|G) ;; N) [ $has_n -eq 1 ] || die "--kinds N: this trainer has no Gated DeltaNet layers" ;;
        *) die "--kinds: '$k' is not one of D, L, G, N" ;; esac
done

# ---- 2. the task ---------------------------------------------------------------------------
stamp="vocab 8192 seq $seq pairs $pairs train $ntrain test $ntest seed $seed $(cksum <mqar_data.c | cut -d' ' -f1)"
if [ -f "$data/STAMP" ] && [ "$(cat "$data/STAMP")" = "$stamp" ] && [ -f "$data/mqar_train.bin" ] && [ -f "$data/mqar_test.mask" ]; then
    echo "mqar: task up to date in $data ($stamp)"
else
    rm -f "$data/STAMP"
    ./mqar_data -o "$data" -v 8192 -t "$seq" -p "$pairs" -n "$ntrain" -e "$ntest" -s "$seed" || die "./mqar_data failed"
    echo "$stamp" >"$data/STAMP"
fi

# ---- 3. the runs ---------------------------------------------------------------------------
# One run: train, read the accuracy, append a row to results.jsonl and print a progress line. A
# failure writes OUT/NAME.err (one line) for the check after all the runs.
warmup=$(( steps / 10 ))
res="$out/results.jsonl"
[ "$resume" -eq 1 ] && [ -f "$res" ] || : >"$res"
nrun=$(( ${#K[@]} * ${#W[@]} * ${#LR[@]} )) i=0 t_all=$(date +%s)
run_one() { # kind width lr index
    local k=$1 d=$2 lr=$3 i=$4 name="$1_d$2_lr$3" lrmin t0 rc secs first line acc loss extra=()
    fail() { echo "$*" >"$out/$name.err"; exit 1; }
    lrmin=$(python3 -c 'import sys; print("%g" % (float(sys.argv[1]) / 10))' "$lr")
    t0=$(date +%s.%N)
    # gated DeltaNet: heads of 64 (the GPU kernels' size), values as wide as keys
    [ "$k" = N ] && extra=(--gdn-head-dim 64 --gdn-expand-v 1)
    "$trainer" "${extra[@]}" -i "$data/mqar_train.bin" -j "$data/mqar_test.bin" -m tiny --vocab 8192 --d-model "$d" \
        --heads $((d / 64)) --layers "$k$k" --no-mlp --tied -b "$batch" -t "$seq" -x "$steps" --warmup "$warmup" \
        --lr "$lr" --lr-min "$lrmin" -v "$steps" --sample-every 0 -s 0 -o "$out/ckpt/$name" \
        --log "$out/$name.jsonl" >"$out/$name.log" 2>&1
    rc=$?
    secs=$(python3 -c 'import sys,time; print("%.1f" % (time.time() - float(sys.argv[1])))' "$t0")
    first=$(head -1 "$out/$name.log")
    case "$first" in *"training on the CPU"*) fail "$name: the trainer fell back to the CPU ('$first'); MQAR needs a CUDA GPU" ;; esac
    [ $rc -eq 0 ] || fail "$name: the trainer failed (exit $rc): $(tail -1 "$out/$name.log") (log: $out/$name.log)"
    line=$(grep -E '^val loss .*accuracy' "$out/$name.log" | tail -1)
    acc=$(printf '%s' "$line" | sed -nE 's/.*accuracy ([0-9.]+).*/\1/p')
    loss=$(printf '%s' "$line" | sed -nE 's/^val loss ([0-9.a-z-]+).*/\1/p')
    [ -n "$acc" ] || fail "$name: no accuracy line in $out/$name.log"
    printf '{"kind":"%s","d_model":%d,"lr":%s,"steps":%d,"batch":%d,"acc":%s,"loss":%s,"seconds":%s}\n' \
        "$k" "$d" "$lr" "$steps" "$batch" "$acc" "${loss:-null}" "$secs" >>"$res"
    printf 'mqar [%d/%d] %-2s D=%-4d lr %-6s test accuracy %.4f  loss %s  (%s s)\n' "$i" "$nrun" "$k" "$d" "$lr" "$acc" "${loss:-?}" "$secs"
    rm -rf "$out/ckpt/$name" # the weights are not kept: the table is the result
}
rm -f "$out"/*.err
running=0
for k in "${K[@]}"; do
    for d in "${W[@]}"; do
        for lr in "${LR[@]}"; do
            i=$((i + 1))
            if grep -qF "{\"kind\":\"$k\",\"d_model\":$d,\"lr\":$lr,\"steps\":$steps,\"batch\":$batch," "$res"; then
                printf 'mqar [%d/%d] %-2s D=%-4d lr %-6s kept from %s\n' "$i" "$nrun" "$k" "$d" "$lr" "$res"
                continue
            fi
            if [ "$jobs" -le 1 ]; then
                ( run_one "$k" "$d" "$lr" "$i" )
            else
                [ "$running" -ge "$jobs" ] && { wait -n; running=$((running - 1)); }
                ( run_one "$k" "$d" "$lr" "$i" ) &
                running=$((running + 1))
            fi
            errs=$(cat "$out"/*.err 2>/dev/null | head -1)
            [ -z "$errs" ] || { wait; die "$errs"; }
        done
    done
done
wait
errs=$(cat "$out"/*.err 2>/dev/null | head -1)
[ -z "$errs" ] || die "$errs"
echo "mqar: $nrun runs in $(( $(date +%s) - t_all )) s ($jobs at a time)"

# ---- 4. the table and the plot -------------------------------------------------------------
popt=()
[ "$plot" -eq 1 ] || popt=(--no-plot)
python3 scripts/mqar_table.py "$res" --out "$out" --seq "$seq" --pairs "$pairs" --steps "$steps" --batch "$batch" \
    --seed "$seed" "${popt[@]}" || die "scripts/mqar_table.py failed"
