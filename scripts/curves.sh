#!/usr/bin/env bash
# curves.sh -- the DeltaNet paper's comparison at one GPU's scale, in one command: DeltaNet,
# the two hybrids and Transformer++ trained on the same shuffled corpus with the same recipe,
# their validation loss and perplexity every --val-every steps side by side in one plot and one table.
#
# Steps: (1) check the options, the output folder, the corpus, the GPU and Python before anything
# slow; (2) build the corpus's token shards with scripts/make_corpus.sh (skipped when the shards
# are there and were made from the same split.txt by the same make_corpus.sh: data/corpus/STAMP);
# (3) train each configuration with the recipe below, one progress line per model; (4)
# scripts/curves.py reads the trainers' logs and writes curves.jsonl, curves.csv, curves.png and
# table.md into the output folder.
#
# The recipe (the reference's): d12 (D=768, 12 layers, tied, GPT-2 vocabulary), B=32, T=1024 (32768
# tokens a step), 500 steps = 16.4M tokens, AdamW (0.9, 0.95), peak lr 6e-4 warmed up linearly over
# the first fifth of the steps (100 of 500), cosine to 6e-5 at the last step, weight decay 0.1
# (matrices, embedding, conv), clip 1.0, bf16, seed 0; validation on 64 windows spread over the
# validation split. The configurations:
#   deltanet     12 DeltaNet layers (6 heads of 128)
#   hybrid       global attention in layers 5 and 11 (12 heads of 64), DeltaNet elsewhere
#   swa          sliding-window attention (window 512, 12 heads) in layers 1, 3, 5, 7, 9, 11
#   transformer  Transformer++: 12 global attention layers (12 heads)
#   gdn          12 Gated DeltaNet layers (6 heads, keys 64, values 128: the gdn preset, d12's size)
#   gdn-swa      Gated DeltaNet with sliding-window attention (window 512, 12 heads) in layers 1, 3,
#                ..., 11 (the Gated DeltaNet paper's H1 hybrid)
# --long trains two epochs of the training split instead (the step count from the shards' sizes),
# the same schedule stretched: warm-up over the first fifth, cosine to the end.
#
# Every failure before or during the runs ends with one line on stderr saying what and where.
set -uo pipefail
cd "$(dirname "$0")/.."

ALL_CONFIGS=deltanet,hybrid,swa,transformer,gdn,gdn-swa
B=32
T=1024
usage() {
    cat <<EOF
usage: scripts/curves.sh [options]     (or: make curves CURVES_ARGS="options")
Train the DeltaNet paper's four models with one recipe on the shared corpus and plot their
validation loss and perplexity against tokens (needs a GPU: four d12 models, about an hour).
  --configs LIST    comma-separated, from $ALL_CONFIGS [all six]
  --steps N         optimizer steps of $B x $T tokens per model [500]
  --long            two epochs of the training split (the steps from the shards' sizes)
  --random-windows  rows drawn at random with replacement (the PyTorch reference's sampling)
                    instead of the epochs' shuffled windows
  --val-every N     evaluate every N steps (and at the last) [100]
  --out DIR         where the logs, checkpoints and results go [out/curves]
  --corpus DIR      the corpus (split.txt and NAME.txt.xz) [the first of ../shared/data/corpus,
                    data/corpus-src, .corpus that holds split.txt]
  --data DIR        where its token shards are built [data/corpus]
  --trainer PATH    the trainer [./train_deltanet]
  --no-plot         no curves.png (no matplotlib needed); the other files are written
  --check           only the checks of step 1 (used by make curves before building the trainer)
  -h, --help        this text
Writes OUT/curves.jsonl, curves.csv, curves.png, table.md; per model OUT/NAME.log (the trainer's
output), OUT/NAME.jsonl (its --log) and OUT/NAME/model.safetensors (the final checkpoint).
EOF
}

die() { echo "curves.sh: $*" >&2; exit 1; }

configs=$ALL_CONFIGS steps=500 long=0 random=0 val_every=100 out=out/curves corpus="" data=data/corpus
trainer=./train_deltanet plot=1 check_only=0
source scripts/lib.sh
parse_opts "--configs=configs --steps=steps --long:long=1 --random-windows:random=1 --val-every=val_every --out=out --corpus=corpus
            --data=data --trainer=trainer --no-plot:plot=0 --check:check_only=1" "$@"

# ---- 1. checks -------------------------------------------------------------------------------
is_count "$steps" || die "--steps '$steps' is not a positive integer"
is_count "$val_every" || die "--val-every '$val_every' is not a positive integer"
IFS=, read -r -a cfgs <<<"$configs"
[ "${#cfgs[@]}" -gt 0 ] || die "--configs is empty (choose from $ALL_CONFIGS)"
for c in "${cfgs[@]}"; do
    case ",$ALL_CONFIGS," in *",$c,"*) ;; *) die "--configs: unknown configuration '$c' (choose from $ALL_CONFIGS)" ;; esac
done

mkdir -p -- "$out" 2>/dev/null || die "cannot create the output folder '$out' (--out)"
probe="$out/.write_test.$$"
( : >"$probe" ) 2>/dev/null && rm -f -- "$probe" || die "the output folder '$out' is not writable (--out)"

if [ -z "$corpus" ]; then
    for d in ../shared/data/corpus data/corpus-src .corpus; do
        [ -f "$d/split.txt" ] && { corpus=$d; break; }
    done
fi
stamp_want=""
if [ -n "$corpus" ]; then
    [ -f "$corpus/split.txt" ] || die "no corpus at '$corpus': split.txt not found (--corpus DIR: the folder with split.txt and NAME.txt.xz)"
    while read -r name _; do
        case "$name" in ''|'#'*) continue ;; esac
        [ -f "$corpus/$name.xz" ] || die "corpus '$corpus' is incomplete: $name.xz not found"
    done <"$corpus/split.txt"
    stamp_want="$(sha256sum <"$corpus/split.txt" | cut -d' ' -f1) $(sha256sum <scripts/make_corpus.sh | cut -d' ' -f1)"
elif [ ! -f "$data/STAMP" ]; then
    die "no corpus: none of ../shared/data/corpus, data/corpus-src, .corpus holds split.txt, and '$data' has no shards (--corpus DIR)"
fi

if ! command -v nvidia-smi >/dev/null 2>&1; then
    die "no GPU: nvidia-smi not found; the curves train four d12 models and need a CUDA GPU (the CPU backend would take weeks)"
fi
gpus=$(nvidia-smi -L 2>&1) || die "no GPU: nvidia-smi failed: $(printf '%s' "$gpus" | head -1)"
printf '%s\n' "$gpus" | grep -q '^GPU [0-9]' || die "no GPU: nvidia-smi lists none: $(printf '%s' "$gpus" | head -1)"

if [ "$plot" = 1 ]; then
    python3 -c 'import matplotlib' >/dev/null 2>&1 || die "python3 with matplotlib is needed for curves.png (pip install matplotlib), or pass --no-plot"
else
    command -v python3 >/dev/null 2>&1 || die "python3 is needed for the table and the CSV"
fi
[ "$check_only" = 1 ] && exit 0
[ -x "$trainer" ] || die "the trainer '$trainer' is not there (make train_deltanet, or --trainer PATH)"
[ -x ./tokenize ] || die "./tokenize is not there (make tokenize)"

# ---- 2. the corpus's shards ----------------------------------------------------------------------
t_start=$(date +%s)
if [ -n "$stamp_want" ] && { [ ! -f "$data/STAMP" ] || [ "$(cat "$data/STAMP")" != "$stamp_want" ] ||
                             [ ! -f "$data/corpus_val.bin" ] || ! ls "$data"/corpus_train*.bin >/dev/null 2>&1; }; then
    echo "curves.sh: building the token shards of $corpus in $data (log $out/make_corpus.log)"
    mkdir -p -- "$data" 2>/dev/null || die "cannot create the shard folder '$data' (--data)"
    rm -f -- "$data/STAMP" "$data"/corpus_train*.bin "$data/corpus_val.bin"
    scripts/make_corpus.sh "$corpus" "$data" >"$out/make_corpus.log" 2>&1 ||
        die "building the shards failed: $(tail -1 "$out/make_corpus.log") (log $out/make_corpus.log)"
    echo "$stamp_want" >"$data/STAMP"
fi
[ -z "$stamp_want" ] && echo "curves.sh: no corpus found to check them against: using the shards in $data as they are"
[ -f "$data/corpus_val.bin" ] && ls "$data"/corpus_train*.bin >/dev/null 2>&1 ||
    die "no shards in '$data' (corpus_train*.bin, corpus_val.bin): delete $data/STAMP to rebuild them"

# tokens of a shard: its header's int32 [2]
shard_tokens() { od -An -t d4 -j 8 -N 4 -- "$1" | tr -d ' '; }
windows=0 train_tokens=0
for f in "$data"/corpus_train*.bin; do
    n=$(shard_tokens "$f")
    train_tokens=$((train_tokens + n))
    windows=$((windows + (n - 1) / T))
done
if [ "$long" = 1 ]; then
    steps=$((2 * windows / B))
    [ "$steps" -gt 0 ] || die "--long: the training split holds $windows windows, fewer than one batch"
fi
warmup=$((steps / 5))
mtok() { awk -v n="$1" 'BEGIN { printf "%.1fM", n / 1e6 }'; }
echo "curves.sh: ${#cfgs[@]} models x $steps steps of $B x $T tokens ($(mtok $((steps * B * T))) tokens;" \
     "an epoch is $windows windows, $(mtok "$train_tokens") tokens) | warm-up $warmup | out $out"

# ---- 3. the runs -----------------------------------------------------------------------------
sampling=(); [ "$random" = 1 ] && sampling=(--random-windows)
recipe=(-m d12 -b "$B" -t "$T" -x "$steps" "${sampling[@]}" --lr 6e-4 --warmup "$warmup" --lr-min 6e-5 --wd 0.1 --clip 1.0 -s 0
        --val-every "$val_every" --val-windows 64 --sample-every 0 -i "$data/corpus_train*.bin" -j "$data/corpus_val.bin")
config_flags() {
    case "$1" in
        deltanet) flags=() ;;
        hybrid) flags=(--attn-layers 5,11 --attn-heads 12) ;;
        swa) flags=(--layers DSDSDSDSDSDS --window 512 --attn-heads 12) ;;
        transformer) flags=(--layers GGGGGGGGGGGG --attn-heads 12) ;;
        gdn) flags=(--layers NNNNNNNNNNNN) ;;
        gdn-swa) flags=(--layers NSNSNSNSNSNS --window 512 --attn-heads 12) ;;
    esac
}
# A trainer without a GPU falls back to the CPU and says so on its first line: stop it there.
cpu_fallback() {
    local first
    first=$(head -1 "$log" 2>/dev/null)
    [ "${first#training on the CPU}" = "$first" ] && return 0
    [ -n "$pid" ] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=""; }
    echo
    die "$c: the trainer fell back to the CPU ('$first'); the curves need a CUDA GPU"
}
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null' EXIT
trap 'exit 130' INT TERM
i=0
for c in "${cfgs[@]}"; do
    i=$((i + 1))
    config_flags "$c"
    log="$out/$c.log"
    rm -f -- "$out/$c.jsonl" "$out/$c.time"
    printf 'curves.sh: [%d/%d] %-11s ' "$i" "${#cfgs[@]}" "$c"
    t0=$(date +%s)
    "$trainer" "${recipe[@]}" "${flags[@]}" -o "$out/$c" --log "$out/$c.jsonl" >"$log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null && [ ! -s "$log" ]; do sleep 0.2; done
    cpu_fallback
    wait "$pid"; rc=$?
    pid=""
    secs=$(($(date +%s) - t0))
    if [ "$rc" -ne 0 ]; then
        echo
        die "$c: the trainer failed (exit $rc): $(grep -v '^ *HINT' "$log" | tail -1) (log $log)"
    fi
    echo "$secs" >"$out/$c.time"
    layers=$(sed -n 's/^model: layers \([A-Z]*\) .*/\1/p' "$log" | head -1)
    last=$(grep '^val loss' "$log" | tail -1)
    printf '%s | layers %s | %.1f min\n' "${last:-no val loss}" "$layers" "$(echo "$secs" | awk '{print $1 / 60}')"
done

# ---- 4. the table and the plot ---------------------------------------------------------------
total=$(($(date +%s) - t_start))
py=(python3 scripts/curves.py --out "$out" --configs "$configs" --tokens-per-step $((B * T)) --total-seconds "$total"
    --title "d12, B=$B T=$T, $steps steps, AdamW lr 6e-4 (warm-up $warmup, cosine to 6e-5), wd 0.1, bf16, seed 0$([ "$random" = 1 ] && echo ", random windows")")
[ "$plot" = 1 ] || py+=(--no-plot)
# the reference's deltanet losses are for this recipe only
[ "$long" = 0 ] && [ "$steps" = 500 ] && [ "$val_every" = 100 ] && py+=(--reference)
"${py[@]}" || die "scripts/curves.py failed (the logs are in $out)"
echo "curves.sh: done in $(echo "$total" | awk '{printf "%.1f", $1 / 60}') min: $out/curves.png, table.md, curves.csv, curves.jsonl"
