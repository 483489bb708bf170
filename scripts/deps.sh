#!/usr/bin/env bash
# Install every Debian package Tollgate needs to build and test, skipping
# those already installed. Idempotent; needs root (or sudo) only when
# something is missing.
set -euo pipefail

packages=(
  # toolchain and build
  gcc libc6-dev pkg-config meson ninja-build python3 git
  # libraries (found with pkg-config)
  libmicrohttpd-dev libsqlite3-dev libsodium-dev libssl-dev libjansson-dev
  # llhttp C sources compiled into the gateway
  node-llhttp
  # the sanitizer build (clang + its ASan/UBSan runtimes) and the format check
  clang libclang-rt-14-dev clang-format
  # operations
  sqlite3
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#packages[@]} Debian packages present"
  exit 0
fi

echo "deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps: run as root or install sudo" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
