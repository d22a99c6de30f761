#!/usr/bin/env bash
# gpu_check.sh -- one lease's build and checks on the GPU machine, logs under $OUT (or out/):
# build everything (cJSON/PCRE2 from .deps, see scripts/fetch_deps.sh), `make test-gpu`, the
# trainer's CPU backend in the GPU build (--cpu), and a d12 speed check (B=32 T=1024, 12 steps).
# usage: bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
S="$OUT/summary.txt"
log() { echo "== $* ($(date +%T))" | tee -a "$S"; }
nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version --format=csv,noheader | tee "$S"
echo "commit $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' + local changes')" | tee -a "$S"
bash scripts/gpu_deps.sh >/dev/null
log "build"
make -j"$(nproc)" DEPS=.deps/root train_deltanet infer tokenize $(ls tests/gpu/*.cu | sed 's|tests/gpu/\(.*\)\.cu|build/tests/gpu/\1|') >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
make DEPS=.deps/root data >>"$OUT/build.log" 2>&1
log "make test-gpu"
make DEPS=.deps/root test-gpu >"$OUT/test_gpu.log" 2>&1
grep -E "^FAIL|passed, " "$OUT/test_gpu.log" | tail -14 | tee -a "$S"
grep -E "^  ok  out of memory|^FAIL out of memory" "$OUT/test_gpu.log" | tee -a "$S"
log "--cpu in the GPU build (2 steps of tiny)"
./train_deltanet --cpu -x 2 -v 0 --sample-every 0 -o "$OUT/cpu" 2>&1 | grep -E "^training|^step|^checkpoint" | tee -a "$S"
log "d12 B=32 T=1024 speed"
timeout 120 ./train_deltanet -m d12 -b 32 -t 1024 -x 12 --val-every 0 --sample-every 0 -o /tmp/d12 >"$OUT/d12_speed.log" 2>&1
grep -E "^GPU memory|^step +1[012]/|^done" "$OUT/d12_speed.log" | tee -a "$S"
log "end"
