#!/usr/bin/env bash
# Install what is missing, build, and run the whole test suite twice:
# once on the normal build and once under AddressSanitizer + UBSan.
# Ends with one line "N passed, N failed" (N counts test cases).
set -uo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh || exit 1
scripts/build.sh || exit 1
scripts/build.sh asan || exit 1

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

status=0
meson test -C build --print-errorlogs --num-processes 2 || status=1
# The lint suite checks sources, not binaries: once is enough.
meson test -C build-asan --print-errorlogs --num-processes 2 --no-suite lint || status=1

python3 scripts/test-summary.py build/meson-logs/testlog.json build-asan/meson-logs/testlog.json
summary=$?
[ $status -eq 0 ] && [ $summary -eq 0 ]
