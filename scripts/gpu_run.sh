#!/usr/bin/env bash
# gpu_run.sh -- everything worth doing in one lease of the GPU machine, logs under $OUT (or out/):
# build, GPU tests, compute-sanitizer, short training runs (fp32 and bf16), ./infer --eval against
# the trainer's printed val loss, the PyTorch reference (fla) scoring the same checkpoint, a d12
# profile, and the benchmarks.
# usage: bash scripts/gpu_run.sh [STAGE...]     (carry .deps, and .whl for the fla check)
#   stages: check (make test-gpu, trainer vs infer vs fla), sanitize (compute-sanitizer on the
#   --small configs), profile (d12 B=32 T=1024 step profile and speed), bench (the README's results
#   table, scripts/bench_table.sh); default: check sanitize profile. The build always runs first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
S="$OUT/summary.txt"
STAGES=${*:-check sanitize profile}
has() { case " $STAGES " in *" $1 "*) return 0;; esac; return 1; }
log() { echo "== $* ($(date +%T))" | tee -a "$S"; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$S"
echo "stages: $STAGES; commit $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' + local changes')" | tee -a "$S"
bash scripts/gpu_deps.sh >/dev/null
J=$(nproc)
log "build"
make -j"$J" DEPS=.deps/root train_deltanet infer tokenize $(ls tests/gpu/*.cu | sed 's|tests/gpu/\(.*\)\.cu|build/tests/gpu/\1|') >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
make DEPS=.deps/root data >>"$OUT/build.log" 2>&1
if has check; then
    log "make test-gpu"
    make DEPS=.deps/root test-gpu >"$OUT/test_gpu.log" 2>&1
    grep -E "^FAIL|passed, " "$OUT/test_gpu.log" | tail -14 | tee -a "$S"
    log "fp32 hybrid (DSDG) training run, then ./infer --eval on its checkpoint (same 8 x 512 val tokens)"
    ./train_deltanet --fp32 --layers DSDG --window 64 --kv-heads 2 -x 60 --val-every 60 --val-batches 1 --sample-every 0 -o "$OUT/fp32" --log "$OUT/fp32.jsonl" >"$OUT/train_fp32.log" 2>&1
    grep -E "val loss" "$OUT/train_fp32.log" | tail -1 | tee -a "$S"
    ./infer "$OUT/fp32/model.safetensors" --eval data/tinyshakespeare/tinyshakespeare_val.bin -b 512 --eval-max 4096 2>&1 | tail -1 | tee -a "$S"
    log "default (bf16) training run"
    ./train_deltanet -o "$OUT/run" --val-batches 1 --log "$OUT/train.jsonl" >"$OUT/train.log" 2>&1
    tail -3 "$OUT/train.log" | tee -a "$S"
    grep -E "val loss" "$OUT/train.log" | tail -1 | tee -a "$S"
    ck="$OUT/run/model.safetensors"
    ./infer "$ck" --eval data/tinyshakespeare/tinyshakespeare_val.bin -b 512 --eval-max 4096 2>&1 | tail -1 | tee -a "$S"
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
        log "fla reference on the same checkpoints"
        for c in "$ck" "$OUT/fp32/model.safetensors"; do
            python3 scripts/fla_check.py "$c" data/tinyshakespeare/tinyshakespeare_val.bin -b 512 -n 8 >>"$OUT/fla.log" 2>&1
            tail -1 "$OUT/fla.log" | tee -a "$S"
        done
    fi
    timeout 60 ./infer "$ck" "ROMEO:" -n 48 -t 0.8 -s 1 2>/dev/null | tee -a "$S"; echo | tee -a "$S"
fi
if has sanitize; then
    log "compute-sanitizer (--small configs)"
    # tool:program:seconds; the per-layer kernel tests (tests/gpu/test_<layer>.cu) each get both tools
    san="memcheck:test_model_gpu:120 racecheck:test_model_gpu:240"
    for p in test_matmul test_rmsnorm test_conv test_sigmoid test_swiglu test_embedding test_crossentropy test_adamw; do
        san="$san memcheck:$p:60 racecheck:$p:60"
    done
    san="$san memcheck:test_deltarule:60 racecheck:test_deltarule:90 memcheck:test_attention:60 racecheck:test_attention:90"
    for tt in $san; do
        set -- ${tt//:/ }
        t0=$(date +%s)
        r=$(timeout "$3" compute-sanitizer --tool $1 --error-exitcode 9 build/tests/gpu/$2 --small 2>&1 | tee "$OUT/san_$1_$2.log" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed, " | tr '\n' ' ')
        echo "$1 $2 ($(( $(date +%s) - t0 )) s): ${r:-TIMED OUT after $3 s}" | tee -a "$S"
    done
fi
if has profile; then
    log "d12 B=32 T=1024: speed (graph), then the per-phase profile (eager)"
    timeout 90 ./train_deltanet -m d12 -b 32 -t 1024 -x 12 --val-every 0 --sample-every 0 -o "$OUT/d12" >"$OUT/d12_speed.log" 2>&1
    grep -E "^GPU memory|^step +1[012]/|^done" "$OUT/d12_speed.log" | tee -a "$S"
    timeout 90 ./train_deltanet -m d12 -b 32 -t 1024 -x 8 --val-every 0 --sample-every 0 --profile -o "$OUT/d12p" >"$OUT/d12_profile.log" 2>&1
    sed -n '/^profile over/,$p' "$OUT/d12_profile.log" | tee -a "$S"
fi
if has bench; then
    log "benchmarks"
    OUT="$OUT/bench" scripts/bench_table.sh build 2>&1 | tee -a "$S" # the README's results table
fi
log "end"
