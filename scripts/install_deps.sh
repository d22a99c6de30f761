#!/usr/bin/env bash
# install_deps.sh -- check for the Debian/Ubuntu packages a build needs and install the missing ones.
#   usage: scripts/install_deps.sh [cc] [c++] [python3] [san] [fuzz]     (default: cc)
#     cc       a C compiler ($CC, else cc) and the cJSON and PCRE2 headers (every build)
#     c++      a C++ compiler ($CXX, else c++): the CPU-only trainer, when nvcc is not found
#     python3  python3 (tests/test_convert.sh)
#     san      clang with AddressSanitizer, UBSan and OpenMP (make test SAN=1)
#     fuzz     clang with libFuzzer (make fuzz)
# Each check compiles a line or two, so the script is cheap when nothing is missing (make runs it
# before every build; DEPS=... or DN_NO_INSTALL=1 skips it). What is missing is installed with
# apt-get when run as root, through `sudo -n` when passwordless sudo works; otherwise the script
# stops with one line giving the command to run.
set -u
want=${*:-cc}
has() { case " $want " in *" $1 "*) return 0;; esac; return 1; }
cc=${CC:-cc}
cxx=${CXX:-c++}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dn_deps_XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

# Compile (and with -o, link) stdin as C with the given compiler and flags.
# ($CC may be a command with words, e.g. "ccache gcc": its first word must be on PATH.)
try_cc() { local c=$1; shift; command -v "${c%% *}" >/dev/null 2>&1 && $c -x c - "$@" >/dev/null 2>&1; }
# The first of the given Debian packages that apt knows (names differ between releases).
pick() { local p; for p in "$@"; do
    if apt-cache show "$p" >/dev/null 2>&1; then echo "$p"; return; fi; done; echo "$1"; }

missing=()
check() {
    missing=()
    if has cc; then
        if ! command -v "${cc%% *}" >/dev/null 2>&1; then
            case "${cc##*/}" in clang*) missing+=(clang);; *) missing+=(build-essential);; esac
        fi
        if command -v "${cc%% *}" >/dev/null 2>&1; then
            echo '#include <cjson/cJSON.h>' | try_cc "$cc" -E || missing+=(libcjson-dev)
            printf '#define PCRE2_CODE_UNIT_WIDTH 8\n#include <pcre2.h>\n' | try_cc "$cc" -E || missing+=(libpcre2-dev)
        else
            [ -f /usr/include/cjson/cJSON.h ] || missing+=(libcjson-dev)
            [ -f /usr/include/pcre2.h ] || missing+=(libpcre2-dev)
        fi
    fi
    if has c++; then command -v "${cxx%% *}" >/dev/null 2>&1 || missing+=(build-essential); fi
    if has python3; then command -v python3 >/dev/null 2>&1 || missing+=(python3); fi
    local src='#include <omp.h>
int main(void) { return omp_get_max_threads() < 1; }'
    local fz='#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }'
    if has san && ! echo "$src" | try_cc clang -fopenmp -fsanitize=address,undefined -o "$tmp/san"; then
        missing+=(clang "$(pick libomp-dev libomp-14-dev)" "$(pick libclang-rt-dev libclang-rt-14-dev clang)")
    fi
    if has fuzz && ! echo "$fz" | try_cc clang -fsanitize=fuzzer,address,undefined -o "$tmp/fuzz"; then
        missing+=(clang "$(pick libclang-rt-dev libclang-rt-14-dev clang)")
    fi
    # one of each, in order
    local u=() p q seen
    for p in ${missing[@]+"${missing[@]}"}; do
        seen=0; for q in ${u[@]+"${u[@]}"}; do [ "$p" = "$q" ] && seen=1; done
        [ $seen = 1 ] || u+=("$p")
    done
    missing=(${u[@]+"${u[@]}"})
}

check
[ ${#missing[@]} -eq 0 ] && exit 0
pkgs="${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_deps.sh: missing $pkgs (Debian/Ubuntu names): install them with this system's package manager, or unpack them under a folder and pass DEPS=that/folder" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo=(sudo -n)
else
    echo "install_deps.sh: missing $pkgs: run  sudo apt-get update && sudo apt-get install -y $pkgs  (then make again)" >&2
    exit 1
fi
echo "install_deps.sh: installing $pkgs (apt-get)"
export DEBIAN_FRONTEND=noninteractive
if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$tmp/apt.log" 2>&1; then
    tail -n 20 "$tmp/apt.log" >&2
    echo "install_deps.sh: apt-get install $pkgs failed (above)" >&2
    exit 1
fi
check
if [ ${#missing[@]} -gt 0 ]; then
    echo "install_deps.sh: still missing after apt-get: ${missing[*]}" >&2
    exit 1
fi
