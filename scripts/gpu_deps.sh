#!/usr/bin/env bash
# Unpacks the Debian -dev packages carried in .deps/ (fetched here with scripts/fetch_deps.sh)
# under .deps/root, never into /, for a machine that lacks the cJSON / PCRE2 headers.
# Then build with: make DEPS=.deps/root ...
set -e
cd "$(dirname "$0")/.."
[ -d .deps/root/usr/include/cjson ] && exit 0
mkdir -p .deps/root
for f in .deps/*.deb; do dpkg -x "$f" .deps/root; done
echo "deps unpacked under .deps/root"
