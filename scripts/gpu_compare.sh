#!/usr/bin/env bash
# gpu_compare.sh -- d12 training speed of this tree against another copy of the sources (BEFORE,
# default .before/: e.g. `git archive OLD Makefile train_deltanet.cu model.h kernels src ref scripts
# data/gpt2 | tar -x -C .before`), in one call on the GPU machine, after building both and
# `make test-gpu` on this tree. Logs under $OUT.
# usage: BEFORE=.before bash scripts/gpu_compare.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
BEFORE=${BEFORE:-.before}
mkdir -p "$OUT"
bash scripts/gpu_deps.sh >/dev/null
( cd "$BEFORE" && make -j8 DEPS="$(cd .. && pwd)/.deps/root" DN_NO_INSTALL=1 train_deltanet >"$OUT/build_before.log" 2>&1 ) &
bp=$!
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/summary.txt"
make -j"$(nproc)" DEPS=.deps/root train_deltanet infer tokenize $(ls tests/gpu/*.cu | sed 's|tests/gpu/\(.*\)\.cu|build/tests/gpu/\1|') >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
make DEPS=.deps/root data >>"$OUT/build.log" 2>&1
echo "== make test-gpu ($(date +%T))" | tee -a "$OUT/summary.txt"
make DEPS=.deps/root test-gpu >"$OUT/test_gpu.log" 2>&1
grep -E "^FAIL|passed, " "$OUT/test_gpu.log" | tail -20 | tee -a "$OUT/summary.txt"
wait $bp || { echo "the BEFORE build failed: $(tail -3 "$OUT/build_before.log")"; exit 1; }
speed() { # $1 trainer, $2 label
    timeout 120 "$1" -m d12 -b 32 -t 1024 -x 14 --val-every 0 --sample-every 0 -o /tmp/cmp_$2 >"$OUT/d12_$2.log" 2>&1
    printf '%-7s %s | %s\n' "$2" "$(grep -E '^step +1[0-4]/' "$OUT/d12_$2.log" | awk '{ s += $(NF-4); n++ } END { printf "%.0f tok/s mean of steps 10-14", s / n }')" \
        "$(grep -E '^GPU memory' "$OUT/d12_$2.log" | sed 's/.*in use on the device/in use/')" | tee -a "$OUT/summary.txt"
}
echo "== d12 B=32 T=1024, before / after / before / after" | tee -a "$OUT/summary.txt"
speed "$BEFORE/train_deltanet" before; speed ./train_deltanet after
speed "$BEFORE/train_deltanet" before2; speed ./train_deltanet after2
