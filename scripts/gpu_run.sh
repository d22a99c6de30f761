#!/usr/bin/env bash
# gpu_run.sh -- everything worth doing in one lease of the GPU machine, logs under $OUT (or out/):
# build, GPU tests, compute-sanitizer, a short training run of the default model, ./infer --eval on
# its checkpoint, the PyTorch reference (fla) scoring the same checkpoint, and the benchmarks.
# usage: bash scripts/gpu_run.sh [quick]     (carry .deps and .whl to the machine)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/summary.txt"
bash scripts/gpu_deps.sh >/dev/null
J=$(nproc)
log "build"
make -j"$J" DEPS=.deps/root train_deltanet infer tokenize $(ls tests/gpu/*.cu 2>/dev/null | sed 's|tests/gpu/\(.*\)\.cu|build/tests/gpu/\1|') >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
make DEPS=.deps/root data >>"$OUT/build.log" 2>&1
log "make test-gpu"
make DEPS=.deps/root test-gpu 2>&1 | tee "$OUT/test_gpu.log" | grep -E "FAIL|passed|failed" | tail -20 | tee -a "$OUT/summary.txt"
if [ -x build/tests/gpu/test_deltarule ]; then
    log "compute-sanitizer (small shapes)"
    for t in build/tests/gpu/test_*; do
        for tool in memcheck racecheck; do
            r=$(DN_SMALL=1 timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 "$t" 2>&1 | tail -3 | tr '\n' ' ')
            echo "$tool $(basename "$t"): $r" | tee -a "$OUT/summary.txt"
        done
    done >"$OUT/sanitizer.log" 2>&1
fi
[ "${1:-}" = quick ] && exit 0
log "train the default model"
timeout 300 ./train_deltanet -o "$OUT/run" 2>&1 | tee "$OUT/train.log" | tail -8 | tee -a "$OUT/summary.txt"
ck=$(ls "$OUT"/run/*.safetensors 2>/dev/null | tail -1)
if [ -n "$ck" ]; then
    log "infer --eval on $ck"
    ./infer "$ck" --eval data/tinyshakespeare/tinyshakespeare_val.bin -b 1024 2>&1 | tail -3 | tee -a "$OUT/summary.txt"
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
        log "fla reference on the same checkpoint"
        python3 scripts/fla_check.py "$ck" data/tinyshakespeare/tinyshakespeare_val.bin -b 1024 -n 31 2>&1 | tail -3 | tee -a "$OUT/summary.txt"
    fi
    ./infer "$ck" "ROMEO:" -n 64 -t 0.8 2>&1 | tail -5 | tee -a "$OUT/summary.txt"
fi
log "benchmarks"
make DEPS=.deps/root bench-gpu 2>&1 | tee "$OUT/bench.log" | tail -40 >>"$OUT/summary.txt"
cat "$OUT/summary.txt" | tail -60
