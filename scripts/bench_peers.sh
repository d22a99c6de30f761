#!/usr/bin/env bash
# bench_peers.sh -- the peers' rows of README's speed table, on this machine's GPU, to run in the
# same call as `make bench-gpu` (scripts/bench_table.sh): flash-linear-attention 0.6.0's delta rule
# and gated delta rule kernels and PyTorch SDPA attention (scripts/bench_fla_deltarule.py), and
# fla's DeltaNetForCausalLM training d12 at B=32 T=1024 (scripts/fla_train.py, amp, the mean rate of
# steps 26-75 after fla's Triton autotuning). fla is not part of the project: install its wheels
# first (pip install --target DIR flash_linear_attention-0.6.0 fla_core-0.6.0; PYTHONPATH=DIR).
# Logs under $OUT (default results/peers-DATE-GPU/); the rows are printed as markdown at the end.
# usage: bash scripts/bench_peers.sh [--data DIR]    DIR: corpus shards for the training rate
#        (default data/corpus, from scripts/make_corpus.sh; data/tinyshakespeare when it is absent)
set -uo pipefail
cd "$(dirname "$0")/.."
die() { echo "bench_peers.sh: $*" >&2; exit 1; }
data=data/corpus
case "${1-}" in
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --data) [ $# -ge 2 ] || die "--data needs a folder"; data=$2 ;;
    "") ;;
    *) die "unknown option '$1' (-h for help)" ;;
esac
command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this needs a CUDA GPU"
python3 -c 'import torch, fla' 2>/dev/null || die "python3 cannot import torch and fla (install fla's wheels, set PYTHONPATH)"
if ! ls "$data"/corpus_train*.bin >/dev/null 2>&1; then
    [ -f data/tinyshakespeare/tinyshakespeare_train.bin ] || die "no shards in $data (scripts/make_corpus.sh) nor data/tinyshakespeare (make data)"
    data=$(mktemp -d /tmp/peers_data.XXXXXX)
    trap 'rm -rf "$data"' EXIT
    ln -s "$PWD/data/tinyshakespeare/tinyshakespeare_train.bin" "$data/corpus_train.bin"
    ln -s "$PWD/data/tinyshakespeare/tinyshakespeare_val.bin" "$data/corpus_val.bin"
fi
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
OUT=${OUT:-results/peers-$(date +%Y-%m-%d)-$(echo "$GPU" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//' | tr 'A-Z' 'a-z')}
mkdir -p "$OUT" || die "cannot create $OUT"
echo "bench_peers: $GPU, logs in $OUT"
python3 scripts/bench_fla_deltarule.py 30 main d12 sdpa gated 2>&1 | tee "$OUT/fla_kernels.log"
python3 scripts/fla_train.py --data "$data" --steps 500 --stop-after 75 --val-every 1000000 --tag peers \
    >"$OUT/fla_d12.log" 2>&1 || echo "bench_peers: fla_train.py failed: $(tail -1 "$OUT/fla_d12.log")"
rate=$(grep -E '^step (50|75) ' "$OUT/fla_d12.log" | sed -nE 's/.* ([0-9]+)k tok\/s.*/\1/p' | awk '{ s += $1; n++ } END { if (n) printf "%.0fk", s / n }')
echo
echo "| work | peer | ms | tok/s | command |"
echo "|---|---|---:|---:|---|"
python3 - "$OUT/fla_kernels.log" <<'PY'
import re, sys
shape = ""
for line in open(sys.argv[1]):
    m = re.match(r"^(.{28}) (.+?)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9]+)$", line.rstrip("\n"))
    if not m:
        continue
    shape = m.group(1).strip() or shape
    print(f"| {shape} | {m.group(2)} | {m.group(3)} | | scripts/bench_fla_deltarule.py |")
PY
echo "| d12 B=32 T=1024 training (amp) | fla DeltaNetForCausalLM | | ${rate:-?} | scripts/fla_train.py --stop-after 75 |"
