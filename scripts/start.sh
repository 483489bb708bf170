#!/usr/bin/env bash
# Quick start: install what is missing, build, migrate ./tollgate.db and
# start the platform on it with a demo API registered.
#
# Running: tollgate-server's admin REST API on http://127.0.0.1:8001
# (TOLLGATE_ADMIN_LISTEN) and developer portal on http://127.0.0.1:8002
# (TOLLGATE_PORTAL_LISTEN; open sign-up for the demo: TOLLGATE_PORTAL_SIGNUP),
# tollgate-gateway on http://127.0.0.1:8000 (TOLLGATE_GATEWAY_LISTEN;
# status on 127.0.0.1:8100) and a demo upstream on 127.0.0.1:8090 behind
# the demo API. Ctrl-C stops everything cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
scripts/build.sh

export TOLLGATE_DB_PATH=${TOLLGATE_DB_PATH:-$PWD/tollgate.db}
export TOLLGATE_SECRET_FILE=${TOLLGATE_SECRET_FILE:-$PWD/tollgate.secret}
export TOLLGATE_ADMIN_LISTEN=${TOLLGATE_ADMIN_LISTEN:-127.0.0.1:8001}
export TOLLGATE_GATEWAY_LISTEN=${TOLLGATE_GATEWAY_LISTEN:-127.0.0.1:8000}
export TOLLGATE_PORTAL_LISTEN=${TOLLGATE_PORTAL_LISTEN:-127.0.0.1:8002}
# the demo signs developers up at once (no email round trip); production
# keeps the default, verify
export TOLLGATE_PORTAL_SIGNUP=${TOLLGATE_PORTAL_SIGNUP:-open}
export TOLLGATE_PORTAL_GATEWAY_URL=${TOLLGATE_PORTAL_GATEWAY_URL:-http://$TOLLGATE_GATEWAY_LISTEN}
DEMO_UPSTREAM=${DEMO_UPSTREAM:-127.0.0.1:8090}
cli=build/cli/tollgate

$cli migrate
name="quickstart-$(date -u +%Y%m%d%H%M%S)-$$"
token=$($cli admin-token create --name "$name" --scopes read,write,keys,reports,admin)

build/admin-api/tollgate-server --log-format text &
server=$!
build/tests/tollgate-test-upstream --listen "$DEMO_UPSTREAM" --name demo >/dev/null &
upstream=$!
gateway=
stop() {
  kill -TERM $gateway "$server" "$upstream" 2>/dev/null || true
  wait 2>/dev/null || true
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
  "description": "An example API registered by scripts/start.sh: it echoes every request back as JSON.",
  "path_prefix": "/demo",
  "strip_prefix": true,
  "openapi": {
    "openapi": "3.1.0",
    "info": {"title": "Demo API", "version": "1.0.0",
             "description": "Echoes the request it receives, as the upstream saw it."},
    "paths": {
      "/echo": {
        "get": {
          "operationId": "echo",
          "summary": "Echo the request",
          "description": "Answers with the request the upstream received: method, target, headers (in order) and a hash of the body.",
          "security": [{"apiKey": []}],
          "responses": {
            "200": {"description": "The request record.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Echo"}}}},
            "401": {"description": "No key, or a key that does not work."},
            "429": {"description": "Over the plan'\''s rate limit or quota."}
          }
        }
      }
    },
    "components": {
      "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
      "schemas": {
        "Echo": {
          "type": "object",
          "properties": {
            "method": {"type": "string", "example": "GET"},
            "target": {"type": "string", "example": "/echo"},
            "headers": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
            "body_len": {"type": "integer"}
          }
        }
      }
    }
  }
}')
api_id=$(printf '%s' "$api" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
# the demo API's upstream: an echo server (tests/integration/upstream.c)
curl -sS -o /dev/null "${auth[@]}" "$admin/apis/demo/targets" -d "{\"url\":\"http://$DEMO_UPSTREAM\"}" || true
for plan in \
  '{"slug":"free","name":"Free","rate_per_second":5,"quota_per_day":1000}' \
  '{"slug":"pro","name":"Pro","rate_per_second":100,"quota_per_month":1000000,"monthly_fee_minor":4900,"included_calls":100000,"overage_price_micros":50000,"currency":"USD","requires_approval":true}'; do
  body=$(printf '%s' "$plan" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["api_id"]=sys.argv[1]; print(json.dumps(d))' "$api_id")
  curl -sS -o /dev/null "${auth[@]}" "$admin/plans" -d "$body" || true
done

# A demo developer with an app subscribed to the free plan, and a new key
# for it (keys are shown once: every start issues one).
demo_key=$(python3 - "$admin" "$token" "$api_id" <<'PY'
import json, sys, urllib.request, urllib.error
admin, token, api_id = sys.argv[1:4]
def call(method, path, body=None):
    req = urllib.request.Request(admin + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer " + token,
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
def find(path, **match):
    _, page = call("GET", path)
    for row in page["data"]:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None
dev = find("/developers?limit=1000", email="demo@example.com")
if not dev:
    _, dev = call("POST", "/developers", {"email": "demo@example.com", "name": "Demo Developer"})
if dev["status"] == "pending":
    call("POST", "/developers/%s/approve" % dev["id"])
app = find("/apps?developer_id=%s" % dev["id"], name="Demo app")
if not app:
    _, app = call("POST", "/apps", {"developer_id": dev["id"], "name": "Demo app"})
plan = find("/plans?api_id=%s" % api_id, slug="free")
call("POST", "/subscriptions", {"app_id": app["id"], "api_id": api_id, "plan_id": plan["id"]})
_, key = call("POST", "/keys", {"app_id": app["id"], "name": "quickstart"})
print(key["key"])
PY
)

build/gateway/tollgate-gateway --log-format text &
gateway=$!
gw=http://$TOLLGATE_GATEWAY_LISTEN
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:8100/health" >/dev/null 2>&1 && break
  sleep 0.1
done

cat <<MSG

Tollgate is running.
  Portal      http://$TOLLGATE_PORTAL_LISTEN   (developers: sign up, create an app, get a key)
  Admin API   $admin   (OpenAPI: $admin/openapi.json)
  Admin token $token
              (shown once; more with: $cli admin-token create --name NAME --scopes read,write)
  Try         curl -H "Authorization: Bearer $token" $admin/apis
  Gateway     $gw   (status: http://127.0.0.1:8100/health, /metrics)
  Call it     curl -H "X-API-Key: $demo_key" $gw/demo/echo
              (the demo developer's key, free plan: 5 calls/s, 1000/day)
  Database    $TOLLGATE_DB_PATH

Press Ctrl-C to stop.
MSG
wait -n "$server" "$gateway" "$upstream" || true
