#!/usr/bin/env bash
# Downloads (does not install) the Debian packages a GPU machine without cJSON / PCRE2 needs
# into .deps/ (git-ignored), to be carried there and unpacked by scripts/gpu_deps.sh.
set -e
cd "$(dirname "$0")/.."
mkdir -p .deps && cd .deps
apt-get download libcjson-dev libcjson1 libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
