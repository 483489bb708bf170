#!/usr/bin/env bash
# Admin API throughput: key issuance (POST /keys) and key list pages
# (GET /keys?limit=100, following cursors) over a store of N keys.
#
#   bench/admin_api.sh [KEYS]      (default 1000000 keys seeded)
#
# Prints requests/s and latency for each, and the page time at the start
# and at the far end of the key table: keyset pagination must cost the same
# (O(page)) wherever the page is. Needs a build (scripts/build.sh); installs
# wrk (Debian) if missing. Loopback only; each run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${1:-1000000}
DUR=${DUR:-10s}
command -v wrk >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
command -v sqlite3 >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sqlite3 >/dev/null; }

B=build
work=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
trap 'kill $srv 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
export TOLLGATE_DB_PATH=$work/t.db TOLLGATE_SECRET_FILE=$work/secret
: > "$work/empty.conf"
cli="$B/cli/tollgate --config $work/empty.conf"
$cli migrate 2>/dev/null
token=$($cli admin-token create --name bench --scopes admin 2>/dev/null)

# Seed: one developer and app, then KEYS keys with random digests (the
# digests need not verify: listing never reads them).
app=app_01BENCHAPP0000000000000000
sqlite3 "$TOLLGATE_DB_PATH" <<SQL
PRAGMA journal_mode=WAL;
INSERT INTO developers (id, email, status, created_at, updated_at)
  VALUES ('dev_01BENCHDEV0000000000000000', 'bench@example.com', 'active', 1, 1);
INSERT INTO apps (id, developer_id, name, created_at, updated_at)
  VALUES ('$app', 'dev_01BENCHDEV0000000000000000', 'bench', 1, 1);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $KEYS)
INSERT INTO keys (id, app_id, prefix, digest, created_at, updated_at)
  SELECT printf('key_00%024d', i), '$app', 'tg_live_bench000', randomblob(32), 1, 1 FROM n;
SQL

build/admin-api/tollgate-server --config "$work/empty.conf" --admin-listen 127.0.0.1:0 --portal-enabled=false \
  --log-level info --log-format text 2>"$work/srv.log" &
srv=$!
for _ in $(seq 50); do
  port=$(grep -o 'port=[0-9]*' "$work/srv.log" 2>/dev/null | cut -d= -f2 || true)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "${port:-}" ] || { echo "server did not start"; cat "$work/srv.log"; exit 1; }
url=http://127.0.0.1:$port

cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"app_id":"$app","name":"bench"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
LUA
cat > "$work/get.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $token"
LUA

echo "== key issuance: POST /keys ($DUR, 2 threads, 8 connections; $KEYS keys in store)"
echo "\$ wrk -t2 -c8 -d$DUR -s post.lua $url/keys"
wrk -t2 -c8 -d"$DUR" --latency -s "$work/post.lua" "$url/keys" | grep -E "Requests/sec|Latency|50%|99%|Non-2xx"

echo "== list: GET /keys?app_id=...&limit=100 (first page)"
echo "\$ wrk -t2 -c8 -d$DUR -s get.lua '$url/keys?app_id=$app&limit=100'"
wrk -t2 -c8 -d"$DUR" --latency -s "$work/get.lua" "$url/keys?app_id=$app&limit=100" | grep -E "Requests/sec|Latency|50%|99%|Non-2xx"

# a cursor near the end of the table: same cost as the first page if O(page)
last=$(printf 'key_00%024d' $((KEYS - 150)))
cursor=$(printf 'c1:%s' "$last" | base64 -w0 | tr '+/' '-_' | tr -d '=')
echo "== list: GET /keys?app_id=...&limit=100&cursor=<row $((KEYS - 150))>"
wrk -t2 -c8 -d"$DUR" --latency -s "$work/get.lua" "$url/keys?app_id=$app&limit=100&cursor=$cursor" | grep -E "Requests/sec|Latency|50%|99%|Non-2xx"
