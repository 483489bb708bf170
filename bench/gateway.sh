#!/usr/bin/env bash
# tollgate-gateway vs nginx as a reverse proxy, same machine, same workers.
#
#   bench/gateway.sh [WORKERS] [ROUNDS]      (defaults: 1 and 3; DUR=10s)
#
# An nginx upstream returns a ~50-byte body. In front of it, in turn:
#   - nginx as a plain reverse proxy (keep-alive upstream pool), and
#   - tollgate-gateway (one API routed to the same upstream),
# each with WORKERS workers. wrk drives each in alternation, ROUNDS times,
# for keep-alive traffic and for a new connection per request, and the
# script prints requests/s, p50 and p99 per run and the tollgate/nginx
# throughput ratio of the medians. Also prints the gateway's idle RSS.
# Loopback only; every run is bounded by DUR.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh # the upstream, shared with the keys benches
WORKERS=${1:-1}
ROUNDS=${2:-3}
DUR=${DUR:-10s}
CONNS=${CONNS:-64}
for p in nginx wrk; do
  command -v $p >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    $([ $p = nginx ] && echo nginx-light || echo wrk) >/dev/null
done
[ -x build/gateway/tollgate-gateway ] || scripts/build.sh >/dev/null

work=$(mktemp -d /tmp/tollgate-gwbench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

UP=18491 NGX=18492
# With 1 worker and 2+ cores, the servers share CPU 0 and wrk gets CPU 1,
# so the proxies are compared on one core of their own (less noise).
PIN_SRV=() PIN_WRK=()
if [ "$WORKERS" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  PIN_SRV=(taskset -c 0) PIN_WRK=(taskset -c 1)
fi
write_upstream_conf
cat > "$work/proxy.conf" <<EOF
worker_processes $WORKERS;
daemon off;
pid $work/px.pid;
error_log $work/px.err;
events { worker_connections 8192; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$NGX reuseport backlog=4096;
    keepalive_requests 1000000;
    location /bench/ {
      proxy_pass http://backend/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
"${PIN_SRV[@]}" nginx -c "$work/upstream.conf" -p "$work" & pids+=($!)
"${PIN_SRV[@]}" nginx -c "$work/proxy.conf" -p "$work" & pids+=($!)

# tollgate: one API on /bench (prefix stripped) -> the nginx upstream
export TOLLGATE_DB_PATH=$work/t.db TOLLGATE_SECRET_FILE=$work/secret
: > "$work/empty.conf"
build/cli/tollgate --config "$work/empty.conf" migrate 2>/dev/null
sqlite3 "$TOLLGATE_DB_PATH" <<SQL
INSERT INTO apis (id, slug, name, path_prefix, strip_prefix, auth_mode, created_at, updated_at)
  VALUES ('api_01BENCH0000000000000000000', 'bench', 'Bench', '/bench', 1, 'none', 1, 1);
INSERT INTO targets (id, api_id, url, created_at, updated_at)
  VALUES ('tgt_01BENCH0000000000000000000', 'api_01BENCH0000000000000000000',
          'http://127.0.0.1:$UP', 1, 1);
SQL
"${PIN_SRV[@]}" build/gateway/tollgate-gateway --config "$work/empty.conf" --gateway-listen 127.0.0.1:0 \
  --status-listen 127.0.0.1:0 --gateway-workers "$WORKERS" --access-log off \
  --log-format text 2>"$work/gw.log" & pids+=($!)
gwpid=$!
for _ in $(seq 50); do grep -q 'gateway listening' "$work/gw.log" 2>/dev/null && break; sleep 0.1; done
GW=$(grep -o ' port=[0-9]*' "$work/gw.log" | cut -d= -f2)
sleep 0.5
curl -fsS "http://127.0.0.1:$NGX/bench/x" >/dev/null
curl -fsS "http://127.0.0.1:$GW/bench/x" >/dev/null
echo "gateway idle RSS: $(grep VmRSS /proc/$gwpid/status | awk '{print $2, $3}')"

run() { # name url extra-args...
  local name=$1 url=$2
  shift 2
  local out
  out=$("${PIN_WRK[@]}" wrk -t1 -c"$CONNS" -d"$DUR" --latency "$@" "$url")
  local rps p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  local errs
  errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {printf "%s ", $0}')
  printf '%-9s %-11s %10s req/s  p50 %-8s p99 %-8s %s\n' "$name" "$MODE" "$rps" "$p50" "$p99" "$errs"
  echo "$rps" >> "$work/$name-$MODE"
}

for MODE in keepalive newconn; do
  extra=()
  [ $MODE = newconn ] && extra=(-H "Connection: close")
  for r in $(seq "$ROUNDS"); do
    run nginx "http://127.0.0.1:$NGX/bench/x" "${extra[@]}"
    run tollgate "http://127.0.0.1:$GW/bench/x" "${extra[@]}"
  done
  n=$(sort -n "$work/nginx-$MODE" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  t=$(sort -n "$work/tollgate-$MODE" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '== %s, %s worker(s): median nginx %s, tollgate %s req/s, ratio tollgate/nginx %.2f\n' \
    "$MODE" "$WORKERS" "$n" "$t" "$(echo "$t $n" | awk '{print $1 / $2}')"
done
echo "command: DUR=$DUR CONNS=$CONNS bench/gateway.sh $WORKERS $ROUNDS"
