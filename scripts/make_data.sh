#!/usr/bin/env bash
# make_data.sh -- build the TinyShakespeare token shards (run from the repo root; `make data`).
#   data/tinyshakespeare/input.txt -> tinyshakespeare_val.bin (first 32768 tokens)
#                                     tinyshakespeare_train.bin (the other 305258)
# The whole text is one document: <|endoftext|> then its 338025 tokens. Does nothing when both
# shards exist and are newer than the input and ./tokenize.
set -euo pipefail
dir=data/tinyshakespeare
in=$dir/input.txt
val=$dir/tinyshakespeare_val.bin
train=$dir/tinyshakespeare_train.bin
[ -f "$in" ] || { echo "make_data.sh: $in not found (run from the repo root)" >&2; exit 1; }
[ -x ./tokenize ] || { echo "make_data.sh: ./tokenize not found (run make tokenize)" >&2; exit 1; }
if [ "$val" -nt "$in" ] && [ "$train" -nt "$in" ] && [ "$val" -nt ./tokenize ] && [ "$train" -nt ./tokenize ]; then
    echo "make_data.sh: $val and $train are up to date"
    exit 0
fi
./tokenize -o "$dir/tinyshakespeare" "$in"
