# gpu_lib.sh -- sourced by scripts/gpu_check.sh and scripts/gpu_final.sh: strict mode, the
# repository root as the working folder, logs under $OUT, S the summary file and log "step", a
# timed line appended to it.
# On the device machine (the device tool sets OUT to the folder that comes back, and returns at
# most a few files of it): the logs are written to /tmp/gpu_logs (GPU_LOGS) instead, and every
# log line and the exit pack them into one OUT/logs.tgz, so that a call cut by its time limit
# still returns everything up to its last step. Without OUT: logs under out/, no archive.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BACK=${OUT:-}
OUT=${GPU_LOGS:-${BACK:+/tmp/gpu_logs}}
OUT=${OUT:-out}
mkdir -p "$OUT"
S="$OUT/summary.txt"
snap() {
    [ -n "$BACK" ] || return 0
    tar czf "$BACK/logs.tgz.tmp" -C "$OUT" . 2>/dev/null && mv -f "$BACK/logs.tgz.tmp" "$BACK/logs.tgz"
}
log() { echo "== $* ($(date +%T))" | tee -a "$S"; snap; }
trap snap EXIT
