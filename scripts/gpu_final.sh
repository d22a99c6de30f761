#!/usr/bin/env bash
# gpu_final.sh -- one lease's verification after a merge, logs under $OUT (or out/): build, make
# test-gpu, scripts/bench_table.sh (README's speed table incl. d12 and gdn training), compute-sanitizer
# (memcheck) on the new kernels' tests, then, time allowing, a short MQAR sweep.
# usage: bash scripts/gpu_final.sh     (carry .deps; MQAR_ARGS for the sweep)
source "$(dirname "$0")/gpu_lib.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$S"
bash scripts/gpu_deps.sh >/dev/null
log "build"
make -j"$(nproc)" DEPS=.deps/root train_deltanet infer tokenize mqar_data $(ls tests/gpu/*.cu | sed 's|tests/gpu/\(.*\)\.cu|build/tests/gpu/\1|') >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log" | tee -a "$S"; exit 1; }
make DEPS=.deps/root data >>"$OUT/build.log" 2>&1
log "make test-gpu"
timeout 150 make DEPS=.deps/root test-gpu >"$OUT/test_gpu.log" 2>&1
grep -E "^FAIL|passed, " "$OUT/test_gpu.log" | tail -20 | tee -a "$S"
log "bench table"
OUT="$OUT/bench" timeout 130 bash scripts/bench_table.sh build >"$OUT/bench_table.log" 2>&1
tail -20 "$OUT/bench_table.log" | tee -a "$S"
log "compute-sanitizer (memcheck)"
for t in test_gated_deltarule test_gate test_linattn; do
    timeout 30 compute-sanitizer --tool memcheck --error-exitcode 9 build/tests/gpu/$t --small >"$OUT/memcheck_$t.log" 2>&1
    echo "$t: exit $? $(grep -E 'ERROR SUMMARY|passed, ' "$OUT/memcheck_$t.log" | tail -2 | tr '\n' ' ')" | tee -a "$S"
done
log "mqar (short)"
timeout "${MQAR_SECONDS:-100}" bash scripts/mqar.sh ${MQAR_ARGS:-} >"$OUT/mqar.log" 2>&1
tail -30 "$OUT/mqar.log" | tee -a "$S"
[ -d out/mqar ] && cp -r out/mqar "$OUT/mqar" 2>/dev/null
log "end"
