#!/usr/bin/env bash
# Copy the portal's browser dist files, each with its licence, from the pinned
# npm packages in tools/node_modules (scripts/deps.sh installs them) into
# web/static/vendor/<package>/, write web/static/vendor/MANIFEST (package,
# version, file, bytes, sha256) and print the sizes. The copies are committed,
# so building and serving the portal needs no Node; run this again after
# changing a version in tools/package.json, and commit what changed.
#
#   scripts/vendor.sh           copy (idempotent: unchanged files are left alone)
#   scripts/vendor.sh --check   change nothing; exit 1 if web/static/vendor
#                               differs from what a copy would write
#
# axe-core is not copied: only the browser tests use it, straight from
# tools/node_modules.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=copy
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

nm=tools/node_modules
dest=web/static/vendor

# package  files (relative to the package; the first ones are the dist files)
files_of() {
  case "$1" in
    uplot) echo "dist/uPlot.iife.min.js dist/uPlot.min.css LICENSE" ;;
    rapidoc) echo "dist/rapidoc-min.js dist/rapidoc-min.js.LICENSE.txt LICENSE.txt" ;;
  esac
}
pkgs=(uplot rapidoc)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

for p in "${pkgs[@]}"; do
  if [ ! -f "$nm/$p/package.json" ]; then
    echo "vendor: $nm/$p is missing: run scripts/deps.sh" >&2
    exit 1
  fi
  mkdir -p "$stage/$p"
  for f in $(files_of "$p"); do
    cp "$nm/$p/$f" "$stage/$p/$(basename "$f")"
  done
done

# The manifest: one line per file, sorted; versions from the packages.
{
  echo "# web/static/vendor: written by scripts/vendor.sh from tools/node_modules; do not edit"
  echo "# package version file bytes sha256"
  for p in "${pkgs[@]}"; do
    v=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$nm/$p/package.json" | head -n1)
    for f in $(cd "$stage/$p" && ls | LC_ALL=C sort); do
      echo "$p $v $p/$f $(wc -c <"$stage/$p/$f") $(sha256sum "$stage/$p/$f" | cut -d' ' -f1)"
    done
  done
} >"$stage/MANIFEST"

if [ "$mode" = check ]; then
  if diff -r "$stage" "$dest" >/dev/null 2>&1; then
    echo "vendor: $dest matches tools/node_modules"
    exit 0
  fi
  echo "vendor: $dest differs from tools/node_modules: run scripts/vendor.sh and commit" >&2
  diff -rq "$stage" "$dest" >&2 || true
  exit 1
fi

# Copy what changed, drop what is no longer vendored.
mkdir -p "$dest"
(cd "$stage" && find . -type f) | LC_ALL=C sort | while read -r f; do
  if ! cmp -s "$stage/$f" "$dest/$f"; then
    mkdir -p "$(dirname "$dest/$f")"
    cp "$stage/$f" "$dest/$f"
    chmod 0644 "$dest/$f"
    echo "vendor: wrote ${f#./}"
  fi
done
(cd "$dest" && find . -type f) | while read -r f; do
  [ -e "$stage/$f" ] || { rm -f "$dest/$f"; echo "vendor: removed ${f#./}"; }
done
find "$dest" -mindepth 1 -type d -empty -delete

printf '%-40s %10s %10s\n' file bytes gzip
total=0
total_gz=0
for p in "${pkgs[@]}"; do
  for f in $(cd "$dest/$p" && ls | LC_ALL=C sort); do
    b=$(wc -c <"$dest/$p/$f")
    g=$(gzip -9c "$dest/$p/$f" | wc -c)
    printf '%-40s %10d %10d\n' "$p/$f" "$b" "$g"
    total=$((total + b))
    total_gz=$((total_gz + g))
  done
done
printf '%-40s %10d %10d\n' total "$total" "$total_gz"
