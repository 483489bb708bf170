#!/bin/sh
# Fail when our C sources call a function we ban: unbounded or
# error-swallowing C library calls (STYLE.md "Habits").
# Usage: check-banned.sh SOURCE_ROOT
root=${1:-.}
cd "$root" || exit 2
files=$(git ls-files '*.c' '*.h' 2>/dev/null || find . -name '*.[ch]' -not -path './build*')
[ -n "$files" ] || { echo "no sources found"; exit 2; }
hits=$(grep -nHE '(^|[^A-Za-z0-9_])(atoi|sprintf|strcpy|strcat|strtok|rand|gets)[[:space:]]*\(' $files)
if [ -n "$hits" ]; then
  echo "banned functions used (use strtoll, snprintf, memcpy, randombytes_*, fgets):"
  echo "$hits"
  exit 1
fi
echo "no banned functions in $(echo "$files" | wc -l) files"
