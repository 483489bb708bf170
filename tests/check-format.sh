#!/bin/sh
# Fail when a C source differs from what .clang-format makes of it.
# Usage: check-format.sh SOURCE_ROOT CLANG_FORMAT
root=$1
cf=$2
cd "$root" || exit 2
files=$(git ls-files '*.c' '*.h' 2>/dev/null)
[ -n "$files" ] || { echo "no tracked sources"; exit 2; }
"$cf" --dry-run --Werror $files || { echo "run: clang-format -i \$(git ls-files '*.c' '*.h')"; exit 1; }
echo "$(echo "$files" | wc -l) files formatted"
