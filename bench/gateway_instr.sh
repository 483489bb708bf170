#!/usr/bin/env bash
# Instructions per proxied request: tollgate-gateway vs nginx as an API
# gateway, counted by callgrind (Ir), so the number does not drift with the
# machine's noise.
#
#   bench/gateway_instr.sh [REQUESTS]    (default 4000; RATE=400, KEYS_USED=1000)
#   KEEP=DIR keeps callgrind's output files there, per thread, for
#   callgrind_annotate (the metering thread's is the one in meter_main).
#
# Why: on the 2-core dev VM wall-clock benches (bench/gateway_keys.sh) drift
# by +-20% between rounds, and the VM has no hardware counters (`perf stat
# -e instructions` says <not supported>). Callgrind counts the instructions
# each thread executes in user space, the same on every run within ~1%.
#
# The setup is bench/gateway_keys.sh's: an nginx upstream (~50-byte body,
# not measured), a store seeded with 10,000 keys by `gateway_keys.py seed`,
# and in front of the upstream, in turn, each run under
# `valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes`:
#   nginx-gw        nginx as an API gateway, gateway_keys.sh's config (a `map`
#                   of the 10,000 keys, 401 for an unknown key, `limit_req`
#                   per client, access log to a file with buffer=64k,
#                   keep-alive upstream pool), except `master_process off;
#                   worker_processes 1;` so one process does all the work
#   tollgate        tollgate-gateway, 10,000 keys, metering on, access log
#                   to a file, --log-format text, --gateway-workers 1
#                   (gateway_keys.sh's tg-10k)
#   tollgate-nomet  the same with --metering=false (its own copy of the store)
# For each: wait until it answers (tollgate: /health on its status
# listener; nginx: 200 on the API URL with a key), check a seeded key gets
# 200 and an unknown one 401, warm up with bench/loadgen for 2 s (RATE
# req/s, 16 connections, KEYS_USED keys picked at random per request), then
# switch callgrind's instrumentation on (callgrind_control -i on), send
# exactly REQUESTS requests at RATE req/s (a new loadgen run: its 16
# connects and closes are in the window), let the server finish, switch
# instrumentation off and dump. Letting it finish: nginx and tollgate-nomet
# 1.2 s; tollgate until its usage ledger (read from the store) counts every
# request, so its metering thread's flushes of exactly the measured
# requests are inside the window (and the warm-up's flushes, waited for the
# same way before the window, are not); see wait_ledger below. The
# metering thread's idle ticks and the other threads' periodic work during
# the window count too. Every request must be a 2xx and loadgen must
# report no errors, else the script fails.
#
# Output: per configuration, Ir per request of the worker thread (the one
# running tollgate's worker_main; nginx's only thread), of tollgate's
# metering thread (meter_main), of the rest (tollgate's config poller,
# health checker, status listener, main thread), of all threads, and the
# ratios tollgate / nginx-gw. VERBOSE=1 also prints the 15 functions with
# the most self Ir of each measured thread (callgrind_annotate).
#
# What it measures: user-space instructions only. Time in the kernel
# (syscalls, TCP on loopback, the scheduler), cache misses, branch
# mispredictions, lock contention and waiting are not counted: an
# instruction count is no CPU time, and a syscall costs one Ir in user space
# whatever it costs in the kernel. Use it to see what a change does to the
# user-space code path, and gateway_keys.sh for throughput and latency.
# Valgrind runs a process's threads one at a time, so this is one worker
# at a low rate (2.5 ms between requests at 400 req/s): few requests share
# an epoll turn, where under load one turn serves many; per-turn costs
# weigh more here, for both servers.
# Fixed per-second costs (tollgate's config poll every 250 ms, the metering
# thread's tick) are spread over only RATE requests a second.
#
# The metering column overstates: at RATE req/s over KEYS_USED keys, nearly
# every request is a ledger row of its own in the second it is flushed (a
# key is seen ~RATE/KEYS_USED times a second), whereas in the throughput
# bench about one row per active key and second is amortised over tens of
# thousands of requests. The worker column is the one to compare. The
# warm-up and the measured run use loadgen's same seed, so the measured
# run's first 2 x RATE requests repeat the warm-up's keys; keys first seen in
# the window cost the metering thread their once-a-day last_used_day write.
#
# Loopback only, free ports picked at start (another bench may be running);
# every wait is bounded; the temporary directory and every process started
# here are removed at exit. With 2+ cores the server runs on CPU 0, the
# upstream and loadgen on CPU 1 (why: at PIN_SRV below). Takes ~50 s with
# the defaults (up to a minute more: see same_minute).
#
# Stability, 5 runs of the same build while another bench ran on the
# machine: tollgate's worker column within 0.1%; nginx-gw's within +-1%
# (glibc malloc's bin searches, _int_malloc and unlink_chunk, vary with the
# heap's layout, which depends on the order events arrive in); metering
# +-1.5% (how many flushes the window holds, 10 or 11, and how many of a
# key's calls merge into one row depend on the ticks' timing); all threads
# +-1%. Compare runs, not single numbers, for differences below ~2%.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${1:-4000}
RATE=${RATE:-400}
KEYS_USED=${KEYS_USED:-1000}
VERBOSE=${VERBOSE:-0}
int_ok() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
int_ok "$REQUESTS" || { echo "REQUESTS must be a positive integer" >&2; exit 2; }
int_ok "$RATE" || { echo "RATE must be a positive integer" >&2; exit 2; }
int_ok "$KEYS_USED" && [ "$KEYS_USED" -le 10000 ] ||
  { echo "KEYS_USED must be 1..10000 (the store has 10,000 keys)" >&2; exit 2; }
for p in valgrind nginx; do
  command -v $p >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    $([ $p = nginx ] && echo nginx-light || echo valgrind) >/dev/null
done
for p in valgrind callgrind_control callgrind_annotate nginx curl python3; do
  command -v $p >/dev/null || { echo "$p missing" >&2; exit 1; }
done
for b in gateway/tollgate-gateway cli/tollgate bench/loadgen; do
  [ -x build/$b ] || { echo "build/$b missing: run scripts/build.sh" >&2; exit 1; }
done
HELPER=$PWD/bench/gateway_keys.py
# shared with gateway_keys.sh: the upstream, nginx-gw, expect()
. "$PWD/bench/common.sh"
T_START=$(date +%s)

work=$(mktemp -d /tmp/instrbench.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do # bounded: valgrind may take a while to exit
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP" && cp "$work"/cg-* "$KEEP"/ 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# copies: a rebuild during the run must not change what is measured; named
# so that a test run's cleanup of tollgate-gateway processes leaves them alone
cp build/gateway/tollgate-gateway "$work/gw-under-bench"
cp build/cli/tollgate "$work/cli-under-bench"
cp build/bench/loadgen "$work/loadgen"
GWBIN=$work/gw-under-bench CLI=$work/cli-under-bench LOADGEN=$work/loadgen
# which build was measured: build/ changes under a running bench
BUILD="tollgate-gateway sha256 $(sha256sum "$GWBIN" | cut -c1-12) built $(date -r build/gateway/tollgate-gateway '+%F %T'), HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- . ':!bench' 2>/dev/null || echo ' +uncommitted changes')"
cd "$work"
: > empty.conf

read -r UP NGX P1 P2 S1 S2 < <(python3 "$HELPER" ports 6)
declare -A PORT=([nginx-gw]=$NGX [tollgate]=$P1 [tollgate-nomet]=$P2)
declare -A SPORT=([tollgate]=$S1 [tollgate-nomet]=$S2)
# The server under callgrind on CPU 0, the upstream and loadgen on CPU 1:
# tollgate's worker tries a read right after a write, and whether the
# answer is already there (or the read returns EAGAIN) is a race. With the
# upstream on a core of its own it has always answered by the time the
# slow (instrumented) worker reads; unpinned or on one core the worker's
# count drifted by 1-1.7% between runs.
PIN_SRV=() PIN_CLI=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  PIN_SRV=(taskset -c 0) PIN_CLI=(taskset -c 1)
fi

# ---- upstream (gateway_keys.sh's) ------------------------------------------
write_upstream_conf
"${PIN_CLI[@]}" nginx -c "$work/upstream.conf" -p "$work" & pids+=($!)
UPPID=$!

# ---- the 10k store (gateway_keys.sh's) ----------------------------------------
mkdir -p k10
"$CLI" --config empty.conf --db-path k10.db --secret-file secret migrate 2>/dev/null
python3 "$HELPER" seed --db k10.db --secret-file secret --keys 10000 \
  --upstream "http://127.0.0.1:$UP" --outdir k10 --map 10000 --revoke 5 2>&1 | sed 's/^/10k store: /'
cp k10.db knomet.db # its own store: the metering gateway's writes stay apart
declare -A DB=([tollgate]=k10.db [tollgate-nomet]=knomet.db)
# the keys loadgen sends: the first KEYS_USED of the store's (the first
# 1,000 are k10/wrk_keys.txt, wrk's keys in gateway_keys.sh; the map has
# all 10,000, in the same order)
awk -F'"' -v n="$KEYS_USED" 'NR <= n {print $2}' k10/nginx_map.conf > keys.txt
cmp -s <(awk 'NR <= 1000' keys.txt) <(awk -v n="$KEYS_USED" 'NR <= n' k10/wrk_keys.txt) ||
  { echo "nginx_map.conf and wrk_keys.txt disagree" >&2; exit 1; }
[ "$(wc -l < keys.txt)" = "$KEYS_USED" ] || { echo "keys.txt: expected $KEYS_USED keys" >&2; exit 1; }
KEY=$(head -1 keys.txt)
BADKEY=tg_live_QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ000000

# ---- nginx as an API gateway: gateway_keys.sh's config (NGX_AUTH=if), one
# process doing everything (master_process off) so callgrind sees it all ---
write_nginx_gw_conf "master_process off;
worker_processes 1;" 'if ($api_client_name = "") { return 401; }' ""

# ---- one configuration under callgrind ----------------------------------------
VG=("${PIN_SRV[@]}" valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes)
DUR=$(awk -v n="$REQUESTS" -v r="$RATE" 'BEGIN {printf "%.9g", n / r}')
SRVPID=
start() { # name: starts it under callgrind, waits until it answers
  local name=$1 i
  local out=$work/cg-$name.out
  case $name in
    nginx-gw)
      "${VG[@]}" --callgrind-out-file="$out" nginx -c "$work/gw_nginx.conf" -p "$work" \
        2>"$name.vg" &
      ;;
    *)
      local extra=()
      [ "$name" = tollgate-nomet ] && extra=(--metering=false)
      "${VG[@]}" --callgrind-out-file="$out" "$GWBIN" --config empty.conf --db-path "${DB[$name]}" \
        --secret-file secret --gateway-listen "127.0.0.1:${PORT[$name]}" \
        --status-listen "127.0.0.1:${SPORT[$name]}" --gateway-workers 1 \
        --access-log "$work/$name.access" --log-format text "${extra[@]}" 2>"$name.vg" &
      ;;
  esac
  SRVPID=$!
  pids+=($!)
  for i in $(seq 1200); do # 120 s: start-up under valgrind is slow
    case $name in
      nginx-gw) [ "$(code "http://127.0.0.1:$NGX/bench/x" "$KEY")" = 200 ] && break ;;
      *) curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:${SPORT[$name]}/health" && break ;;
    esac
    kill -0 "$SRVPID" 2>/dev/null && [ "$i" != 1200 ] ||
      { echo "$name did not come up:" >&2; tail -20 "$name.vg" >&2; exit 1; }
    sleep 0.1
  done
  expect "http://127.0.0.1:${PORT[$name]}/bench/x" "$KEY" 200
  expect "http://127.0.0.1:${PORT[$name]}/bench/x" "$(tail -1 keys.txt)" 200
  expect "http://127.0.0.1:${PORT[$name]}/bench/x" "$BADKEY" 401
}
stop() { # SIGTERM, bounded wait, then SIGKILL
  local i
  kill "$SRVPID" 2>/dev/null || true
  for i in $(seq 600); do kill -0 "$SRVPID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$SRVPID" 2>/dev/null && { echo "pid $SRVPID did not stop in 60 s: killed" >&2; kill -9 "$SRVPID"; }
  wait "$SRVPID" 2>/dev/null || true
}
ctl() { # callgrind_control args..., bounded
  timeout 60 callgrind_control "$@" "$SRVPID" >"$work/ctl.out" 2>&1 ||
    { echo "callgrind_control $* $SRVPID failed:" >&2; cat "$work/ctl.out" >&2; exit 1; }
}
loadgen() { # url seconds
  timeout 120 "${PIN_CLI[@]}" "$LOADGEN" -u "$1" -r "$RATE" -c 16 -d "$2" -w 0 -k "$work/keys.txt"
}
check() { # name loadgen-output expected-2xx
  local got
  got=$(echo "$2" | awk '/^status:/ {print $3, $11}')
  [ "$got" = "$3 0" ] || {
    echo "$1: expected $3 2xx and 0 errors, loadgen said:" >&2
    echo "$2" >&2
    exit 1
  }
}
# Ir of a dump file: callgrind_annotate's PROGRAM TOTALS ("." for a thread
# with no cost: 0)
ir_of() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print ($1 == "." ? 0 : $1); done = 1}'; }
# A thread's role by the functions in its profile.
role_of() { # name file
  if [ "$1" = nginx-gw ]; then
    echo worker
  elif grep -Eq '^c?fn=\([0-9]+\) worker_main$' "$2"; then
    echo worker
  elif grep -Eq '^c?fn=\([0-9]+\) meter_main$' "$2"; then
    echo meter
  else
    echo other
  fi
}
# tollgate's usage ledger: 2xx calls counted so far (read from another
# process; the store is in WAL mode, readers do not block the gateway)
ledger_2xx() {
  python3 -c 'import sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True, timeout=5)
print(db.execute("SELECT coalesce(sum(calls), 0) FROM usage_rollups"
                 " WHERE granularity = 60 AND status_class = 2").fetchone()[0])' "$1"
}
# Wait until the ledger holds N 2xx calls, then 0.5 s more (the flush that
# wrote them ends with the keys' last_used_day transaction). Under
# callgrind a flush of ~400 rows takes long enough that the one-second
# ticks drift: a fixed sleep caught 3,365 to 3,552 of the window's rows,
# and the metering column varied by 5%. Waiting for the count puts the
# flush of exactly the warm-up (before the window) and of exactly the
# measured requests (inside it) where they belong.
wait_ledger() { # name n
  local i got=
  for i in $(seq 600); do
    got=$(ledger_2xx "${DB[$1]}")
    [ "$got" -ge "$2" ] && break
    [ "$i" = 600 ] && { echo "$1: the ledger has $got 2xx calls after 60 s, expected $2" >&2; exit 1; }
    sleep 0.1
  done
  [ "$got" = "$2" ] || { echo "$1: the ledger has $got 2xx calls, expected $2" >&2; exit 1; }
  sleep 0.5
}
# A ledger row is per key and minute: a key's first call in a minute
# inserts it, later ones update it. With metering, the warm-up and the
# window start in the same minute when they fit in one (REQUESTS/RATE up
# to ~45 s), so every run does the same inserts and updates: at worst a
# minute's wait.
NEED=$(awk -v d="$DUR" 'BEGIN {printf "%d", d + 13}')
same_minute() {
  [ "$NEED" -le 58 ] || return 0
  local wait
  wait=$(date +%s.%N | awk -v n="$NEED" '{s = $1 % 60; print (s >= 1 && s + n <= 59) ? 0 : (61 - s) % 60}')
  [ "$wait" = 0 ] && return 0
  echo "tollgate: waiting $(printf '%.0f' "$wait") s for a new minute (warm-up and window in one minute)"
  sleep "$wait"
}
declare -A IR_W IR_M IR_O IR_ALL
measure() { # name
  local name=$1 url out f n role ir roles
  url="http://127.0.0.1:${PORT[$name]}/bench/x"
  start "$name"
  if [ "$name" = tollgate ]; then same_minute; fi
  out=$(loadgen "$url" 2) || { echo "$name: warm-up failed: $out" >&2; exit 1; }
  check "$name (warm-up)" "$out" "$((2 * RATE))"
  # the 2 seeded-key calls of start's checks, and the warm-up
  if [ "$name" = tollgate ]; then wait_ledger "$name" $((2 + 2 * RATE)); fi
  ctl -i on
  out=$(loadgen "$url" "$DUR") || { echo "$name: loadgen failed: $out" >&2; exit 1; }
  # the metering flush of these requests inside the window
  if [ "$name" = tollgate ]; then
    wait_ledger "$name" $((2 + 2 * RATE + REQUESTS))
  else
    sleep 1.2
  fi
  ctl -i off
  ctl -d
  kill -0 "$SRVPID" 2>/dev/null || { echo "$name exited:" >&2; tail -20 "$name.vg" >&2; exit 1; }
  check "$name" "$out" "$REQUESTS"
  for _ in $(seq 100); do compgen -G "$work/cg-$name.out.1-*" >/dev/null && break; sleep 0.1; done
  stop
  n=0 roles=
  IR_W[$name]=0 IR_M[$name]=0 IR_O[$name]=0 IR_ALL[$name]=0
  for f in "$work/cg-$name.out".1-*; do
    [ -e "$f" ] || { echo "$name: no callgrind dump" >&2; exit 1; }
    ir=$(ir_of "$f")
    [ -n "$ir" ] || { echo "$name: cannot read $f" >&2; exit 1; }
    role=$(role_of "$name" "$f")
    roles+=" $role"
    n=$((n + 1))
    case $role in
      worker) IR_W[$name]=$((IR_W[$name] + ir)) ;;
      meter) IR_M[$name]=$((IR_M[$name] + ir)) ;;
      *) IR_O[$name]=$((IR_O[$name] + ir)) ;;
    esac
    IR_ALL[$name]=$((IR_ALL[$name] + ir))
    if [ "$VERBOSE" = 1 ] && [ "$ir" != 0 ]; then
      echo "-- $name, thread ${f##*-} ($role): $ir Ir, top 15 functions by self Ir"
      callgrind_annotate --auto=no "$f" 2>/dev/null |
        awk '/file:function/ {on = 1; getline; next} /^--/ {on = 0} on && NF && k < 15 {print; k++}'
    fi
  done
  # the threads must be the expected ones, or the columns mean nothing
  local want=1
  [ "$name" = tollgate ] && want=2
  [ "$(echo "$roles" | tr ' ' '\n' | grep -cx -e worker -e meter)" = "$want" ] &&
    [ "$(echo "$roles" | tr ' ' '\n' | grep -cx worker)" = 1 ] || {
    echo "$name: unexpected threads (roles:$roles)" >&2
    exit 1
  }
  echo "$name: $n thread dump(s), $(echo "$out" | awk '/^status:/ {print $3}') requests 2xx," \
    "all threads $(awk -v i="${IR_ALL[$name]}" -v n="$REQUESTS" 'BEGIN {printf "%.0f", i / n}') Ir/request"
}

CONFIGS=(nginx-gw tollgate tollgate-nomet)
for name in "${CONFIGS[@]}"; do measure "$name"; done

per() { awk -v i="$1" -v n="$REQUESTS" 'BEGIN {printf "%.0f", i / n}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b ? a / b : 0}'; }
echo
echo "== Ir (user-space instructions, callgrind) per request: $REQUESTS requests at $RATE req/s," \
  "$KEYS_USED keys, 1 worker"
printf '%-16s %12s %12s %12s %12s %14s %14s\n' config worker metering other "all threads" \
  "worker/ngx" "all/ngx"
for name in "${CONFIGS[@]}"; do
  met=$(per "${IR_M[$name]}")
  [ "$name" = tollgate ] || met=-
  printf '%-16s %12s %12s %12s %12s %14s %14s\n' "$name" "$(per "${IR_W[$name]}")" "$met" \
    "$(per "${IR_O[$name]}")" "$(per "${IR_ALL[$name]}")" \
    "$(ratio "${IR_W[$name]}" "${IR_W[nginx-gw]}")x" "$(ratio "${IR_ALL[$name]}" "${IR_ALL[nginx-gw]}")x"
done
echo "note: at $RATE req/s over $KEYS_USED keys nearly every request is a ledger row of its own, so the"
echo "  metering column overstates its cost per request compared with the throughput bench (there"
echo "  ~1 row per active key and second is amortised over tens of thousands of requests): compare"
echo "  the worker column. Kernel time is not counted."
echo "measured: $BUILD; nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), valgrind $(valgrind --version | sed 's/valgrind-//');" \
  "$([ ${#PIN_SRV[@]} -gt 0 ] && echo "server on CPU 0, upstream and loadgen on CPU 1" || echo "not pinned")"
echo "took $(($(date +%s) - T_START)) s"
echo "command: RATE=$RATE KEYS_USED=$KEYS_USED$([ "$VERBOSE" = 1 ] && echo " VERBOSE=1") bench/gateway_instr.sh $REQUESTS"
