#!/usr/bin/env bash
# run.sh -- run libFuzzer targets for FUZZ_SECONDS each (default 60), FUZZ_JOBS at a time (default:
# one per core); `make fuzz` builds them into build-fuzz/ and calls this.
#   usage: tests/fuzz/run.sh build-fuzz/fuzz_NAME...
# Target fuzz_NAME starts from the committed seeds in tests/fuzz/corpus/NAME/ and the reproducers
# of its known findings in tests/fuzz/crashes/NAME/ (both never written; a reproducer fails the
# run until its bug is fixed, then stays as a regression seed), plus what its earlier runs kept
# in build-fuzz/corpus/NAME/ (where new inputs go), with a libFuzzer
# dictionary: safetensors.dict for checkpoint and state, else NAME.dict if there is one. For each target it prints libFuzzer's
# "Done N runs in S second(s)", then "[fuzz] N passed, N failed": a target passes when it found
# nothing. A finding (crash, sanitizer report, leak, timeout, failed property) prints the end of
# the log and leaves the input in build-fuzz/crashes/; rerun it with build-fuzz/fuzz_NAME FILE.
set -u
cd "$(dirname "$0")/../.."
secs=${FUZZ_SECONDS:-60}
njobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
out=$(dirname "${1:-build-fuzz/x}")  # the build folder of the targets
mkdir -p "$out/logs" "$out/crashes"
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

run_one() {
    local bin=$1 name t d dict=() seeds=()
    name=$(basename "$bin"); t=${name#fuzz_}
    mkdir -p "$out/corpus/$t" "$out/tmp/$t"
    case $t in checkpoint|state) d=safetensors;; *) d=$t;; esac
    [ -f "tests/fuzz/$d.dict" ] && dict=(-dict="tests/fuzz/$d.dict")
    seeds=("tests/fuzz/corpus/$t")
    [ -d "tests/fuzz/crashes/$t" ] && seeds+=("tests/fuzz/crashes/$t")
    TMPDIR="$PWD/$out/tmp/$t" "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 ${dict[@]+"${dict[@]}"} -artifact_prefix="$out/crashes/$t-" \
        "$out/corpus/$t" "${seeds[@]}" >"$out/logs/$t.log" 2>&1
    echo $? >"$out/logs/$t.rc"
    rm -rf "$out/tmp/$t"
}

echo "fuzzing $# target(s) for ${secs} s each, $njobs at a time (logs in $out/logs/)"
for b in "$@"; do
    while [ "$(jobs -rp | wc -l)" -ge "$njobs" ]; do wait -n; done
    run_one "$b" &
done
wait

pass=0; fail=0
for b in "$@"; do
    t=$(basename "$b"); t=${t#fuzz_}
    log="$out/logs/$t.log"
    rc=$(cat "$out/logs/$t.rc" 2>/dev/null || echo 1)
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1)
    corpus=$(find "$out/corpus/$t" -type f | wc -l)
    if [ "$rc" -eq 0 ] && [ -n "$done_line" ]; then
        echo "  ok  fuzz_$t: $done_line; corpus $corpus inputs"
        pass=$((pass + 1))
    else
        echo "FAIL fuzz_$t: exit status $rc; ${done_line:-no 'Done' line}"
        grep -E '^(==[0-9]+==ERROR|SUMMARY|fuzz property failed|.*runtime error)' "$log" | head -n 5
        tail -n 40 "$log"
        ls -1 "$out/crashes/$t-"* 2>/dev/null | sed 's/^/     input: /'
        fail=$((fail + 1))
    fi
done
echo "[fuzz] $pass passed, $fail failed"
[ "$fail" -eq 0 ]
