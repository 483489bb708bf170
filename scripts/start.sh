#!/usr/bin/env bash
# Quick start: install what is missing, build, migrate ./tollgate.db and
# start the platform on it with a demo API registered.
#
# Running now: tollgate-server's admin REST API on http://127.0.0.1:8001
# (override with TOLLGATE_ADMIN_LISTEN). The gateway and the developer
# portal join this script as they land. Ctrl-C stops everything cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
scripts/build.sh

export TOLLGATE_DB_PATH=${TOLLGATE_DB_PATH:-$PWD/tollgate.db}
export TOLLGATE_SECRET_FILE=${TOLLGATE_SECRET_FILE:-$PWD/tollgate.secret}
export TOLLGATE_ADMIN_LISTEN=${TOLLGATE_ADMIN_LISTEN:-127.0.0.1:8001}
cli=build/cli/tollgate

$cli migrate
name="quickstart-$(date -u +%Y%m%d%H%M%S)-$$"
token=$($cli admin-token create --name "$name" --scopes read,write,keys,reports,admin)

log=$(mktemp /tmp/tollgate-server.XXXXXX.log)
build/admin-api/tollgate-server --log-format text 2> >(tee "$log" >&2) &
server=$!
stop() {
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -f "$log"
}
trap stop EXIT
trap 'exit 0' INT TERM

admin=http://$TOLLGATE_ADMIN_LISTEN
for _ in $(seq 100); do
  curl -fsS "$admin/health" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { echo "tollgate-server did not start" >&2; exit 1; }
  sleep 0.1
done

# The demo API (idempotent: PUT upserts by slug; plans that exist are kept).
auth=(-H "Authorization: Bearer $token" -H "Content-Type: application/json")
api=$(curl -fsS -X PUT "${auth[@]}" "$admin/apis/demo" -d '{
  "name": "Demo API",
  "description": "An example API registered by scripts/start.sh",
  "path_prefix": "/demo",
  "strip_prefix": true
}')
api_id=$(printf '%s' "$api" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for plan in \
  '{"slug":"free","name":"Free","rate_per_second":5,"quota_per_day":1000}' \
  '{"slug":"pro","name":"Pro","rate_per_second":100,"quota_per_month":1000000,"monthly_fee_minor":4900,"included_calls":100000,"overage_price_micros":50000,"currency":"USD","requires_approval":true}'; do
  body=$(printf '%s' "$plan" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["api_id"]=sys.argv[1]; print(json.dumps(d))' "$api_id")
  curl -sS -o /dev/null "${auth[@]}" "$admin/plans" -d "$body" || true
done

cat <<MSG

Tollgate is running.
  Admin API   $admin   (OpenAPI: $admin/openapi.json)
  Admin token $token
              (shown once; more with: $cli admin-token create --name NAME --scopes read,write)
  Try         curl -H "Authorization: Bearer $token" $admin/apis
  Database    $TOLLGATE_DB_PATH

Press Ctrl-C to stop.
MSG
wait "$server"
