# gpu_lib.sh -- sourced by scripts/gpu_check.sh and scripts/gpu_final.sh: strict mode, the
# repository root as the working folder, logs under $OUT (or out/), S the summary file and
# log "step", a timed line appended to it.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
S="$OUT/summary.txt"
log() { echo "== $* ($(date +%T))" | tee -a "$S"; }
