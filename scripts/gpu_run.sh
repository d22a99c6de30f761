#!/usr/bin/env bash
# gpu_run.sh -- everything worth doing in one lease of the GPU machine, logs under $OUT (or out/):
# build, GPU tests, compute-sanitizer, short training runs (fp32 and bf16), ./infer --eval against
# the trainer's printed val loss, the PyTorch reference (fla) scoring the same checkpoint, a d12
# profile, and the benchmarks.
# usage: bash scripts/gpu_run.sh [quick|bench]     (carry .deps, and .whl for the fla check)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
S="$OUT/summary.txt"
log() { echo "== $*" | tee -a "$S"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$S"
bash scripts/gpu_deps.sh >/dev/null
J=$(nproc)
log "build"
make -j"$J" DEPS=.deps/root train_deltanet infer tokenize $(ls tests/gpu/*.cu | sed 's|tests/gpu/\(.*\)\.cu|build/tests/gpu/\1|') >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
make DEPS=.deps/root data >>"$OUT/build.log" 2>&1
log "make test-gpu"
make DEPS=.deps/root test-gpu >"$OUT/test_gpu.log" 2>&1
grep -E "^FAIL|passed, " "$OUT/test_gpu.log" | tail -12 | tee -a "$S"
[ "${1:-}" = quick ] && exit 0
log "fp32 hybrid (DSDG) training run, then ./infer --eval on its checkpoint (same 8 x 512 val tokens)"
./train_deltanet --fp32 --layers DSDG --window 64 --kv-heads 2 -x 60 --val-every 60 --val-batches 1 --sample-every 0 -o "$OUT/fp32" --log "$OUT/fp32.jsonl" >"$OUT/train_fp32.log" 2>&1
grep -E "val loss" "$OUT/train_fp32.log" | tail -1 | tee -a "$S"
./infer "$OUT/fp32/model.safetensors" --eval data/tinyshakespeare/tinyshakespeare_val.bin -b 512 --eval-max 4096 2>&1 | tail -1 | tee -a "$S"
log "default (bf16) training run"
./train_deltanet -o "$OUT/run" --val-batches 1 --log "$OUT/train.jsonl" >"$OUT/train.log" 2>&1
tail -4 "$OUT/train.log" | tee -a "$S"
grep -E "val loss" "$OUT/train.log" | tail -1 | tee -a "$S"
ck="$OUT/run/model.safetensors"
./infer "$ck" --eval data/tinyshakespeare/tinyshakespeare_val.bin -b 512 --eval-max 4096 2>&1 | tail -1 | tee -a "$S"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    log "fla reference on the same checkpoint"
    for c in "$ck" "$OUT/fp32/model.safetensors"; do
        python3 scripts/fla_check.py "$c" data/tinyshakespeare/tinyshakespeare_val.bin -b 512 -n 8 >>"$OUT/fla.log" 2>&1
        tail -2 "$OUT/fla.log" | tee -a "$S"
    done
fi
timeout 60 ./infer "$ck" "ROMEO:" -n 48 -t 0.8 -s 1 2>/dev/null | tee -a "$S"; echo | tee -a "$S"
log "compute-sanitizer (small shapes)"
for tt in "memcheck test_model_gpu" "racecheck test_model_gpu" "racecheck test_kernels" "memcheck test_deltarule" "memcheck test_attention"; do
    set -- $tt
    r=$(timeout 100 compute-sanitizer --tool $1 --error-exitcode 9 build/tests/gpu/$2 --small 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed, " | tr '\n' ' ')
    echo "$1 $2: $r" | tee -a "$S"
done
log "d12 B=32 T=1024 profile"
timeout 90 ./train_deltanet -m d12 -b 32 -t 1024 -x 8 --val-every 0 --sample-every 0 --profile -o "$OUT/d12" >"$OUT/d12_profile.log" 2>&1
tail -30 "$OUT/d12_profile.log" | tee -a "$S"
if [ "${1:-}" = bench ]; then
    log "benchmarks"
    for b in build/tests/gpu/bench_*; do timeout 120 "$b"; done >"$OUT/bench.log" 2>&1
fi
tail -40 "$S"
