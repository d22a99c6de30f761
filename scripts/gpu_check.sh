#!/usr/bin/env bash
# gpu_check.sh -- one lease's build and checks on the GPU machine, logs under $OUT (or out/):
# build everything (cJSON/PCRE2 from .deps, see scripts/fetch_deps.sh), `make test-gpu`, the
# trainer's CPU backend in the GPU build (--cpu), the default run (README's quick start) and,
# with SEEDS="1 2" and the corpus carried in .corpus/, the deltanet curve of make curves again
# with other seeds (how far seeds alone move the curve).
# usage: [SEEDS="1 2"] bash scripts/gpu_check.sh
source "$(dirname "$0")/gpu_lib.sh"
nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version --format=csv,noheader | tee "$S"
bash scripts/gpu_deps.sh >/dev/null
log "build"
make -j"$(nproc)" DEPS=.deps/root train_deltanet infer tokenize $(ls tests/gpu/*.cu | sed 's|tests/gpu/\(.*\)\.cu|build/tests/gpu/\1|') >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
make DEPS=.deps/root data >>"$OUT/build.log" 2>&1
log "make test-gpu"
make DEPS=.deps/root test-gpu >"$OUT/test_gpu.log" 2>&1
grep -E "^FAIL|passed, " "$OUT/test_gpu.log" | tail -14 | tee -a "$S"
grep -E "^  ok  out of memory|^FAIL out of memory" "$OUT/test_gpu.log" | tee -a "$S"
log "--cpu in the GPU build (2 steps of tiny)"
./train_deltanet --cpu -x 2 -v 0 --sample-every 0 -o /tmp/cpu 2>&1 | grep -E "^training|^step|^checkpoint" | tee -a "$S"
log "the default run (README's quick start)"
./train_deltanet >"$OUT/default_run.log" 2>&1
grep -E "^model|^step +[123]/|^step +300/|^val loss|^checkpoint|^done" "$OUT/default_run.log" | tail -12 | tee -a "$S"
for seed in ${SEEDS:-}; do
    log "deltanet recipe, seed $seed"
    [ -f data/corpus/corpus_val.bin ] || scripts/make_corpus.sh .corpus data/corpus >"$OUT/make_corpus.log" 2>&1
    ./train_deltanet -m d12 -b 32 -t 1024 -x 500 --lr 6e-4 --warmup 100 --lr-min 6e-5 --wd 0.1 --clip 1.0 -s "$seed" \
        --val-every 100 --val-windows 64 --sample-every 0 -i 'data/corpus/corpus_train*.bin' -j data/corpus/corpus_val.bin \
        -o /tmp/seed$seed --log "$OUT/deltanet_seed$seed.jsonl" >/tmp/seed$seed.log 2>&1
    grep "^val loss" /tmp/seed$seed.log | tee -a "$S"
done
log "end"
