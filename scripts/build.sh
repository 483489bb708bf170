#!/usr/bin/env bash
# Configure (once) and build Tollgate.
#   scripts/build.sh           release-like build in build/
#   scripts/build.sh asan      clang + AddressSanitizer + UBSan in build-asan/
# Incremental: a second run rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

kind=${1:-default}
case "$kind" in
  default)
    dir=build
    [ -f "$dir/build.ninja" ] || meson setup "$dir" --buildtype=debugoptimized
    ;;
  asan)
    dir=build-asan
    [ -f "$dir/build.ninja" ] || CC=clang meson setup "$dir" --buildtype=debug \
      -Db_sanitize=address,undefined -Db_lundef=false
    ;;
  *)
    echo "usage: $0 [default|asan]" >&2
    exit 2
    ;;
esac
ninja -C "$dir"
