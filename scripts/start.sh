#!/usr/bin/env bash
# Quick start: install what is missing, build, migrate a fresh tollgate.db
# and start the platform on it.
#
# What exists so far is the store and the `tollgate` CLI: this migrates
# ./tollgate.db (creating ./tollgate.secret on first run), issues an admin
# token for you and shows the store's status. The gateway, the admin API
# and the portal join this script as they land.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
scripts/build.sh

export TOLLGATE_DB_PATH=${TOLLGATE_DB_PATH:-$PWD/tollgate.db}
export TOLLGATE_SECRET_FILE=${TOLLGATE_SECRET_FILE:-$PWD/tollgate.secret}
cli=build/cli/tollgate

$cli migrate
name="quickstart-$(date -u +%Y%m%d%H%M%S)-$$"
token=$($cli admin-token create --name "$name" --scopes read,write,keys,reports,admin)
echo
$cli status
echo
echo "Admin token \"$name\" (shown once, keep it): $token"
echo "Database: $TOLLGATE_DB_PATH   Secret: $TOLLGATE_SECRET_FILE"
echo "More: $cli --help"
