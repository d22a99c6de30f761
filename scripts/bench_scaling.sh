#!/usr/bin/env bash
# bench_scaling.sh -- data-parallel scaling on this machine's GPUs: the trainer's tokens/s for each
# model on 1, 2, 4, 8 GPUs (as many as the machine has), each rank with the one-GPU batch (weak
# scaling: N GPUs, N times the tokens a step), printed as a markdown table with the efficiency
# tok/s(N) / (N x tok/s(1)) and the NCCL settings. One GPU runs the plain trainer; N > 1 runs
# `mpirun -np N` (NCCL_NVLS_ENABLE=0: NVLink multicast stays off). Each number is the mean of steps
# 10-14 (past the CUDA graph's capture), read from rank 0's log; every log is kept under --out.
# usage: scripts/bench_scaling.sh [options]     (-h for them)
set -uo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<EOF
usage: scripts/bench_scaling.sh [options]
Tokens/s of data-parallel training on 1..N GPUs of this machine, as a markdown table.
  --models LIST     presets, each with its one-GPU batch: d12 (B=32 T=1024), 340M (B=16 T=2048),
                    or any preset name as PRESET:B:T [d12,340M]
  --gpus LIST       GPU counts to run, each at most the machine's [1,2,4,8 up to the count]
  --steps N         steps a run; the mean of steps 10..N is reported (N >= 10) [14]
  --data DIR        shards (corpus_train*.bin / corpus_val*.bin) [data/corpus, else TinyShakespeare]
  --trainer PATH    the trainer [./train_deltanet]
  --out DIR         logs and table.md [results/scaling-DATE-GPU]
  -h, --help        this text
EOF
}
die() { echo "bench_scaling.sh: $*" >&2; exit 1; }

models=d12,340M gpus="" steps=14 data="" trainer=./train_deltanet out=""
source scripts/lib.sh
parse_opts "--models=models --gpus=gpus --steps=steps --data=data --trainer=trainer --out=out" "$@"

is_count "$steps" && [ "$steps" -ge 10 ] || die "--steps '$steps' must be an integer >= 10"
IFS=, read -r -a M <<<"$models"
spec_of() { # preset[:B:T] -> "preset B T"
    case "$1" in
        d12) echo "d12 32 1024" ;;
        340M) echo "340M 16 2048" ;;
        *:*:*) local p=${1%%:*} r=${1#*:}; local b=${r%%:*} t=${r#*:}
               is_count "$b" && is_count "$t" || return 1; echo "$p $b $t" ;;
        *) return 1 ;;
    esac
}
for m in "${M[@]}"; do spec_of "$m" >/dev/null || die "--models: '$m' is not d12, 340M or PRESET:B:T"; done
command -v nvidia-smi >/dev/null 2>&1 || die "no GPU: nvidia-smi not found"
list=$(nvidia-smi -L 2>&1) || die "no GPU: nvidia-smi failed: $(printf '%s' "$list" | head -1)"
ngpu=$(printf '%s\n' "$list" | grep -c '^GPU [0-9]')
[ "$ngpu" -ge 1 ] || die "no GPU: nvidia-smi lists none"
if [ -z "$gpus" ]; then
    gpus=1
    for n in 2 4 8; do [ "$n" -le "$ngpu" ] && gpus="$gpus,$n"; done
fi
IFS=, read -r -a G <<<"$gpus"
for n in "${G[@]}"; do
    is_count "$n" || die "--gpus: '$n' is not a positive integer"
    [ "$n" -le "$ngpu" ] || die "--gpus: $n GPUs asked for, this machine has $ngpu"
done
[ -x "$trainer" ] || die "--trainer $trainer: not an executable (make train_deltanet builds it)"
need_mpi=0
for n in "${G[@]}"; do [ "$n" -gt 1 ] && need_mpi=1; done
mpi=()
if [ "$need_mpi" -eq 1 ]; then
    command -v mpirun >/dev/null 2>&1 || die "mpirun not found: runs on more than one GPU need MPI (Open MPI or MPICH)"
    mpi=(mpirun)
    # Open MPI refuses root unless told; pass the NCCL settings to every rank
    if mpirun --version 2>&1 | grep -q "Open MPI"; then
        [ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
        mpi+=(-x NCCL_NVLS_ENABLE -x NCCL_DEBUG)
    fi
fi
if [ -z "$data" ]; then
    if ls data/corpus/corpus_train*.bin >/dev/null 2>&1; then data=data/corpus
    else data=data/tinyshakespeare; fi
fi
train=$(ls "$data"/*_train*.bin 2>/dev/null | head -1)
val=$(ls "$data"/*_val*.bin 2>/dev/null | head -1)
[ -n "$train" ] && [ -n "$val" ] || die "--data $data: no *_train*.bin / *_val*.bin shards (make data, or scripts/make_corpus.sh)"
trainpat="${train%_train*}_train*.bin"
valpat="${val%_val*}_val*.bin"

name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
[ -n "$out" ] || out="results/scaling-$(date +%Y-%m-%d)-$(printf '%s' "${name:-gpu}" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//' | tr 'A-Z' 'a-z')"
mkdir -p "$out" 2>/dev/null && [ -d "$out" ] || die "--out $out: cannot create the folder"
( : >"$out/.w.$$" ) 2>/dev/null || die "--out $out: the folder is not writable"
rm -f "$out/.w.$$"

export NCCL_NVLS_ENABLE=0
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
echo "bench_scaling: $ngpu x ${name:-GPU}; GPU counts ${gpus}; data $data; logs in $out"
rows="$out/table.md"
{
    echo "| model | GPUs | tokens a step | tok/s | tok/s a GPU | efficiency | GPU memory a rank | command |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|"
} >"$rows"
# mean tok/s of steps 10..steps in a log (rank 0 prints the group's rate)
rate_of() { grep -E '^step +[0-9]+/' "$1" | awk -v lo=10 '{ split($2, s, "/"); if (s[1] + 0 >= lo) for (i = 1; i < NF; i++) if ($(i + 1) == "tok/s") { t += $i; n++ } }
                                                            END { if (n) printf "%.0f", t / n }'; }
fail=0
for m in "${M[@]}"; do
    read -r preset b t <<<"$(spec_of "$m")"
    base=""
    for n in "${G[@]}"; do
        total=$((n * b * t))
        log="$out/${preset}_${n}gpu.log"
        args=(-m "$preset" -b "$b" -t "$t" -d "$total" -x "$steps" -i "$trainpat" -j "$valpat" --val-every 0
              --sample-every 0 -o "$out/ckpt_${preset}_${n}")
        if [ "$n" -eq 1 ]; then cmd=("$trainer" "${args[@]}"); else cmd=("${mpi[@]}" -np "$n" "$trainer" "${args[@]}"); fi
        echo "bench_scaling: $preset on $n GPU(s): ${cmd[*]}"
        if ! "${cmd[@]}" >"$log" 2>&1; then
            echo "bench_scaling.sh: $preset on $n GPU(s) failed: $(tail -1 "$log") (log: $log)" >&2
            fail=1
            continue
        fi
        rm -rf "$out/ckpt_${preset}_${n}"
        r=$(rate_of "$log")
        [ -n "$r" ] || { echo "bench_scaling.sh: no step lines in $log" >&2; fail=1; continue; }
        [ "$n" -eq 1 ] && base=$r
        eff="-"
        [ -n "$base" ] && eff=$(awk -v r="$r" -v b="$base" -v n="$n" 'BEGIN { printf "%.1f%%", 100 * r / (n * b) }')
        mem=$(sed -nE 's/^GPU memory:.* in use on the device ([0-9.]+) of .*/\1 GiB/p' "$log" | head -1)
        printf '| %s | %d | %d | %s | %s | %s | %s | `%s` |\n' "$preset" "$n" "$total" "$r" "$((r / n))" "$eff" "${mem:--}" \
            "${cmd[*]}" >>"$rows"
        echo "bench_scaling: $preset on $n GPU(s): $r tok/s${base:+ (efficiency $eff)}"
    done
done
{
    echo
    echo "NCCL: NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE, NCCL_DEBUG=$NCCL_DEBUG$(env | grep -E '^NCCL_' | grep -vE '^NCCL_(NVLS_ENABLE|DEBUG)=' | sed 's/^/, /' | tr -d '\n'); $(grep -h -m1 -oE 'NCCL [0-9]+\.[0-9]+\.[0-9]+' "$out"/*.log 2>/dev/null | head -1)"
    echo "GPUs: $ngpu x ${name:-?}; steps $steps a run, the mean of steps 10-$steps; data $data"
} >>"$rows"
nvidia-smi topo -m >"$out/topology.txt" 2>&1 || rm -f "$out/topology.txt"
echo
cat "$rows"
exit $fail
