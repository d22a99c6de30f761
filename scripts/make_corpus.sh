#!/usr/bin/env bash
# make_corpus.sh -- token shards of the shared English corpus with its fixed validation split.
#   usage: scripts/make_corpus.sh [CORPUS_DIR (default ../shared/data/corpus)] [OUT_DIR (default data/corpus)]
# For every file listed in CORPUS_DIR/split.txt: decompress NAME.txt.xz, cut it at the listed byte
# offset (train = [0, cut), valid = [cut, N)), check both parts against the listed sha256, then
# GPT-2-encode the train parts (one document each, in split.txt order) into OUT_DIR/corpus_train.bin
# and the valid parts into OUT_DIR/corpus_val.bin. Run from the repo root after `make tokenize`.
set -euo pipefail
src=${1:-../shared/data/corpus}
out=${2:-data/corpus}
[ -f "$src/split.txt" ] || { echo "make_corpus.sh: $src/split.txt not found (pass the corpus folder)" >&2; exit 1; }
[ -x ./tokenize ] || { echo "make_corpus.sh: ./tokenize not found (run make tokenize)" >&2; exit 1; }
tmp=$(mktemp -d /tmp/dn_corpus_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/train" "$tmp/val" "$out"
i=0
while read -r name n cut _ _ _ sha_train sha_val; do
    case "$name" in ''|'#'*) continue ;; esac
    i=$((i + 1))
    tag=$(printf '%02d_%s' "$i" "$name")
    xz -dc "$src/$name.xz" >"$tmp/full"
    size=$(stat -c %s "$tmp/full")
    [ "$size" = "$n" ] || { echo "make_corpus.sh: $name has $size bytes, split.txt says $n" >&2; exit 1; }
    head -c "$cut" "$tmp/full" >"$tmp/train/$tag"
    tail -c +"$((cut + 1))" "$tmp/full" >"$tmp/val/$tag"
    [ "$(sha256sum <"$tmp/train/$tag" | cut -d' ' -f1)" = "$sha_train" ] || { echo "make_corpus.sh: $name: train part does not match split.txt's sha256" >&2; exit 1; }
    [ "$(sha256sum <"$tmp/val/$tag" | cut -d' ' -f1)" = "$sha_val" ] || { echo "make_corpus.sh: $name: validation part does not match split.txt's sha256" >&2; exit 1; }
    echo "make_corpus.sh: $name: $cut train + $((n - cut)) validation bytes" >&2
done <"$src/split.txt"
./tokenize -o "$out/corpus" --val-tokens 0 "$tmp"/train/*
./tokenize -o "$tmp/v" --val-tokens 0 "$tmp"/val/*
mv "$tmp/v_train.bin" "$out/corpus_val.bin"
echo "make_corpus.sh: wrote $out/corpus_train*.bin and $out/corpus_val.bin"
