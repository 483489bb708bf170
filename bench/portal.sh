#!/usr/bin/env bash
# Developer portal pages per second: the public catalog and a signed-in
# developer's dashboard, rendered by tollgate-server (sessions checked,
# queries run, templates rendered, every request), against nginx serving
# the very same HTML bytes as static files on the same cores: the ceiling
# of any page server on this machine, so the ratio says how much of it the
# portal's work costs.
#
#   bench/portal.sh [ROUNDS]        (default 3; DUR=10s per run, CONNS=32)
#
# Store: 10 APIs with 3 public plans each (the catalog), one developer with
# 5 apps, each subscribed to 2 APIs with 2 keys, and a month of hourly
# usage for them (the dashboard sums this month's calls per app). wrk runs
# with 2 threads; tollgate-server with portal_threads=2; nginx with 2
# workers; they alternate, each round. Target (issue 7): >= 2,000 pages/s.
# Needs a build (scripts/build.sh); installs wrk, nginx and sqlite3
# (Debian) if missing. Loopback only; each run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DUR=${DUR:-10s}
CONNS=${CONNS:-32}
for p in wrk nginx sqlite3; do
  command -v $p >/dev/null || command -v /usr/sbin/$p >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $p >/dev/null
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

B=build
work=$(mktemp -d /tmp/tollgate-bench-portal.XXXXXX)
srv=
ngx=
cleanup() {
  [ -n "$srv" ] && kill "$srv" 2>/dev/null || true
  [ -n "$ngx" ] && kill "$ngx" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export TOLLGATE_DB_PATH=$work/t.db TOLLGATE_SECRET_FILE=$work/secret
: >"$work/empty.conf"
cli="$B/cli/tollgate --config $work/empty.conf"
$cli migrate 2>/dev/null
token=$($cli admin-token create --name bench --scopes admin 2>/dev/null)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
admin=$(free_port) portal=$(free_port) static=$(free_port)
# log level warn: a log line per request is not what is measured here
$B/admin-api/tollgate-server --config "$work/empty.conf" --admin-listen 127.0.0.1:$admin \
  --portal-listen 127.0.0.1:$portal --portal-signup open --portal-threads 2 --log-level warn \
  --log-format text 2>"$work/srv.log" &
srv=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$portal/health" -o /dev/null 2>/dev/null && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$portal/health" -o /dev/null || { echo "server did not start"; cat "$work/srv.log"; exit 1; }
A=http://127.0.0.1:$admin
P=http://127.0.0.1:$portal

python3 - "$A" "$token" "$P" "$work" <<'PY'
import http.client, json, re, sys, urllib.parse, urllib.request
A, token, P, work = sys.argv[1:5]
def call(method, path, body=None):
    req = urllib.request.Request(A + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer " + token,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")
apis = []
for i in range(10):
    api = call("PUT", "/apis/api-%d" % i, {"name": "API number %d" % i,
               "description": "A benchmark API with a description of some length, "
                              "as a publisher would write it." * 2,
               "path_prefix": "/a%d" % i})
    plans = [call("POST", "/plans", {"api_id": api["id"], "slug": s, "name": s.title(),
                                     "rate_per_second": 10 * (k + 1), "quota_per_day": 1000 * (k + 1),
                                     "monthly_fee_minor": 900 * k, "included_calls": 10000 * k,
                                     "overage_price_micros": 20000 * k, "currency": "EUR"})
             for k, s in enumerate(("free", "team", "business"))]
    apis.append((api, plans))
# sign up through the portal, as a browser
c = http.client.HTTPConnection(P[7:].split(":")[0], int(P.rsplit(":", 1)[1]))
c.request("GET", "/signup")
r = c.getresponse(); page = r.read().decode()
visitor = r.getheader("Set-Cookie").split(";")[0]
csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
c.request("POST", "/signup", body=urllib.parse.urlencode(
    {"csrf": csrf, "email": "bench@example.com", "name": "Bench",
     "password": "a bench passphrase"}),
    headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": visitor})
r = c.getresponse(); r.read()
session = [h for h in r.getheader("Set-Cookie", "").split(", ") if h.startswith("tg_session=")]
assert r.status == 303 and session, (r.status, r.getheaders())
open(work + "/cookie", "w").write(session[0].split(";")[0])
dev = call("GET", "/developers?email=bench@example.com")["data"][0]
rows = []
for a in range(5):
    app = call("POST", "/apps", {"developer_id": dev["id"], "name": "App %d" % a})
    for k in range(2):
        api, plans = apis[(a + k) % 10]
        sub = call("POST", "/subscriptions", {"app_id": app["id"], "api_id": api["id"],
                                              "plan_id": plans[0]["id"]})
        for n in range(2):
            key = call("POST", "/keys", {"app_id": app["id"], "name": "k%d" % n})
            rows.append((app["id"], api["id"], plans[0]["id"], sub["id"], key["id"]))
open(work + "/usage.tsv", "w").write("\n".join("\t".join(r) for r in rows) + "\n")
print("developer", dev["id"])
PY
dev=$(sqlite3 "$TOLLGATE_DB_PATH" "SELECT id FROM developers WHERE email='bench@example.com'")
# a month of hourly usage for every key (what compaction leaves behind)
now=$(date +%s)
month=$(date -u -d "$(date -u +%Y-%m-01)" +%s)
while IFS=$'\t' read -r app api plan sub key; do
  sqlite3 "$TOLLGATE_DB_PATH" "PRAGMA busy_timeout=5000;
    WITH RECURSIVE h(t) AS (SELECT $month UNION ALL SELECT t + 3600 FROM h WHERE t + 3600 < $now - $now % 3600)
    INSERT INTO usage_rollups (granularity, period_start, key_id, app_id, developer_id, api_id,
                               plan_id, subscription_id, status_class, reason, calls, h03)
    SELECT 3600, t, '$key', '$app', '$dev', '$api', '$plan', '$sub', 2, '', 40, 40 FROM h;" >/dev/null
done <"$work/usage.tsv"
cookie=$(cat "$work/cookie")

# the same pages as static files for nginx (what the portal answered just now)
mkdir -p "$work/www"
curl -fsS "$P/" -o "$work/www/catalog.html"
curl -fsS -H "Cookie: $cookie" "$P/dashboard" -o "$work/www/dashboard.html"
grep -q "App 4" "$work/www/dashboard.html" || { echo "dashboard did not render"; exit 1; }
grep -q "API number 9" "$work/www/catalog.html" || { echo "catalog did not render"; exit 1; }
cat >"$work/nginx.conf" <<NGX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  default_type text/html;
  server {
    listen 127.0.0.1:$static;
    root $work/www;
    location = /catalog { try_files /catalog.html =404; }
    location = /dashboard { try_files /dashboard.html =404; }
  }
}
NGX
"$NGINX" -c "$work/nginx.conf" -g 'daemon off;' &
ngx=$!
sleep 0.5

run() { # URL [COOKIE] -> requests/s and p99
  local url=$1 ck=${2:-}
  if [ -n "$ck" ]; then
    wrk -t2 -c"$CONNS" -d"$DUR" --latency -H "Cookie: $ck" "$url"
  else
    wrk -t2 -c"$CONNS" -d"$DUR" --latency "$url"
  fi | awk '/Requests\/sec/ {r=$2} / 99%/ {p=$2} /Non-2xx/ {bad=$NF} END {printf "%s %s %s\n", r, p, bad+0}'
}

echo "command: DUR=$DUR CONNS=$CONNS bench/portal.sh $ROUNDS"
printf "%-6s %-10s %12s %10s %12s %10s %8s\n" round page tollgate p99 nginx-static p99 ratio
for r in $(seq "$ROUNDS"); do
  for page in catalog dashboard; do
    if [ $page = catalog ]; then
      t=$(run "$P/")
    else
      t=$(run "$P/dashboard" "$cookie")
    fi
    n=$(run "http://127.0.0.1:$static/$page")
    set -- $t
    tr=$1 tp=$2 tbad=$3
    set -- $n
    nr=$1 np=$2
    [ "$tbad" = 0 ] || echo "warning: $tbad non-2xx answers from the portal ($page)"
    printf "%-6s %-10s %12s %10s %12s %10s %8.2f\n" "$r" "$page" "$tr" "$tp" "$nr" "$np" \
      "$(echo "$tr / $nr" | bc -l)"
  done
done
