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
  # operations, the quick start and the tests (TLS certificates, HTTP calls)
  sqlite3 curl openssl ca-certificates
  # the browser tests (tests/browser): Debian's Chromium, driven by the npm
  # playwright-core from tools/ (which never downloads a browser of its own),
  # and a font so that pages and screenshots render text
  chromium fonts-dejavu-core
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# apt-get install the named packages, as root or through sudo.
apt_install() {
  local sudo=""
  echo "deps: installing $*"
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "deps: run as root or install sudo" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "$@"
}

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#packages[@]} Debian packages present"
else
  apt_install "${missing[@]}"
fi

# ---- npm tooling in tools/ ----------------------------------------------------
# redocly (the lint of admin-api/openapi.json), playwright-core + axe-core (the
# browser tests), uplot + rapidoc (portal dist files, copied into
# web/static/vendor by scripts/vendor.sh). Node comes from Debian (18 on
# bookworm) unless some node is installed already (the machine image has 20);
# redocly runs on node >= 18.17, playwright-core 1.65 needs node >= 20.
# `npm ci` runs only when tools/node_modules is missing or older than
# tools/package-lock.json, so a second run does nothing. --ignore-scripts and
# PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: nothing downloads a browser, ever.
if ! command -v node >/dev/null; then
  apt_install nodejs npm
fi
command -v npm >/dev/null || { echo "deps: node is installed but npm is not: install npm" >&2; exit 1; }
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "deps: warning: node $(node --version) is older than 20: the browser tests (playwright-core) will fail" >&2
fi

tools="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tools"
if [ ! -d "$tools/node_modules" ] || [ ! -f "$tools/node_modules/.package-lock.json" ] ||
  [ "$tools/package-lock.json" -nt "$tools/node_modules/.package-lock.json" ]; then
  echo "deps: npm ci in $tools"
  (cd "$tools" && SCARF_ANALYTICS=false PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 \
    npm_config_update_notifier=false npm ci --ignore-scripts --no-audit --no-fund)
else
  echo "deps: npm tooling in tools/node_modules up to date"
fi
