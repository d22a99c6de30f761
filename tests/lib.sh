# lib.sh -- sourced by the shell tests (tests/test_*.sh): the pass/fail counters with ok and bad
# (one line each), test_tmp PREFIX (a fresh folder $tmp under /tmp, removed at exit; a test that
# needs more at exit sets its own trap after), test_need NAME PROG... (a missing program is one
# FAIL line and the summary, then exit 1) and test_summary NAME (the last line, like the test
# programs': "[NAME] N passed, N failed", and the status).
pass=0; fail=0
ok()  { echo "  ok  $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }
test_tmp() {
    tmp=$(mktemp -d "/tmp/$1_XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
}
test_need() {
    local name=$1 p list="" i=0 missing=0
    shift
    for p in "$@"; do [ -x "$p" ] || missing=1; done
    [ "$missing" -eq 0 ] && return 0
    for p in "$@"; do
        i=$((i + 1))
        if [ "$i" -eq 1 ]; then list=$p; elif [ "$i" -eq $# ]; then list="$list or $p"; else list="$list, $p"; fi
    done
    echo "FAIL $list is missing (run make test)"
    echo "[$name] 0 passed, 1 failed"; exit 1
}
test_summary() {
    echo "[$1] $pass passed, $fail failed"
    [ "$fail" -eq 0 ]
}
