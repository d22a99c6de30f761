#!/usr/bin/env bash
# bench_table.sh -- README's results table, measured on this machine's GPU, printed as markdown:
# the trainer's speed and memory on three models (short runs on TinyShakespeare), then the rows the
# GPU benches print (their lines that start with "| ": the delta rule and attention kernels).
# Every row names the command that measured it; the full output of each command is kept under
# $OUT (default results/bench-DATE-GPU/) for the README's links. `make bench-gpu` runs it after
# building the benches, the trainer and the data.
# usage: scripts/bench_table.sh [BUILD]     BUILD: where the bench programs are (default build);
#        TRAINER=path (default ./train_deltanet)
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
TRAINER=${TRAINER:-./train_deltanet}
command -v nvidia-smi >/dev/null || { echo "bench_table.sh: nvidia-smi not found: this needs a CUDA GPU" >&2; exit 1; }
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
DATE=$(date +%Y-%m-%d)
OUT=${OUT:-results/bench-$DATE-$(echo "$GPU" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//' | tr 'A-Z' 'a-z')}
mkdir -p "$OUT"
ROWS="$OUT/table.md"
: >"$ROWS"
STEPS=14 # the speed is the mean of steps 10-14: past the first steps' warm-up and CUDA-graph capture

# One trainer row: $1 what, then the trainer's arguments. "ours": the mean tok/s of steps 10-14
# and the device memory in use (every buffer is allocated up front, so that is the peak).
train_row() {
    local what=$1 log
    shift
    log="$OUT/train_$(echo "$what" | tr -cs 'A-Za-z0-9' '_' | sed 's/_$//').log"
    local cmd="$TRAINER $* -x $STEPS --val-every 0 --sample-every 0 -o /tmp/bench_table_ckpt"
    if ! $cmd >"$log" 2>&1; then
        echo "bench_table.sh: '$cmd' failed: $(tail -n 1 "$log")" >&2
        return 1
    fi
    local toks mem
    toks=$(grep -E "^step +1[0-4]/" "$log" | awk '{ for (i = 1; i < NF; i++) if ($(i + 1) == "tok/s") { s += $i; n++ } }
                                                 END { if (n) printf "%.0fk tok/s", s / n / 1000 }')
    mem=$(sed -nE 's/^GPU memory:.* in use on the device ([0-9.]+) of .*/\1 GiB/p' "$log")
    echo "| $what | $toks, $mem | \`$cmd\` |" >>"$ROWS"
}

# The "| " rows of one bench program, the command appended (log-only: run it, keep just its log).
bench_rows() {
    local b="$BUILD/tests/gpu/$1" log="$OUT/$1.log"
    [ -x "$b" ] || { echo "bench_table.sh: $b not built (make bench-gpu builds it)" >&2; return 1; }
    if ! "$b" >"$log" 2>&1; then
        echo "bench_table.sh: $b failed: $(tail -n 1 "$log")" >&2
        return 1
    fi
    [ "${2:-}" = log-only ] && return 0
    grep -E '^\| ' "$log" | sed "s#\$# \`$b\` |#" >>"$ROWS" || true
}

rc=0
train_row "d12 (124M), B=32 T=1024, bf16" -m d12 -b 32 -t 1024 || rc=1
train_row "d12, DDSDDSDDSDDS (window 512)" -m d12 -b 32 -t 1024 --layers DDSDDSDDSDDS --window 512 || rc=1
train_row "gdn (gated DeltaNet, d12 size), B=32 T=1024" -m gdn -b 32 -t 1024 || rc=1
train_row "340M, B=16 T=2048" -m 340M -b 16 -t 2048 || rc=1
rm -rf /tmp/bench_table_ckpt
bench_rows bench_deltarule || rc=1
bench_rows bench_attention || rc=1
bench_rows bench_kernels log-only || rc=1 # no README row: its tables stay in its log

{
    echo "Measured on one $GPU, $DATE (\`make bench-gpu\`; the output of every command: \`$OUT/\`):"
    echo
    echo "| what | ours | command |"
    echo "|---|---|---|"
    cat "$ROWS"
} | tee "$OUT/README.md"
exit $rc
