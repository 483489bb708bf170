#!/usr/bin/env bash
# The policy layer: tollgate-gateway vs nginx configured as an API gateway.
#
#   bench/gateway_keys.sh [WORKERS] [ROUNDS]   (defaults 1 and 3; DUR=10s, CONNS=64)
#
# An nginx upstream returns a ~50-byte body. In front of it, in turn:
#   nginx-gw     nginx as an API gateway the way NGINX's "Deploying NGINX as
#                an API Gateway" documents it: the API keys in a `map` (10,000
#                keys -> client names), 401 for an unknown key, `limit_req`
#                keyed per client (rate high enough to admit the bench), an
#                access log to a file (buffer=64k), keep-alive upstream pool.
#                NGX_AUTH=subrequest checks the key in the blog's
#                `auth_request /_validate_apikey` location instead of `if`.
#   tg-10k       tollgate-gateway, 10,000 keys, a plan with a per-second rate
#                limit and a daily quota, metering on (the default), access
#                log to a file.
#   tg-1m        the same with 1,000,000 keys in the store.
#   tg-10k-nomet tg-10k with --metering false.
#   (upstream)   wrk straight to the upstream: the client's ceiling.
# Every process gets WORKERS workers. wrk sends 1,000 of the keys, picked at
# random per request (a Lua script, the same for all), each key with its own
# developer, app and subscription, so every limiter is per subscription.
# The configurations run in alternation (a balanced order, round_order;
# the servers not under test stopped meanwhile, pause_idle), ROUNDS
# times; the table shows the medians of req/s, p50 and p99, the server's
# CPU time per request (every thread of tollgate, nginx's workers) and the
# ratios. Each run also measures the machine's "other load" (CPU used by
# processes that are not this bench's): a run above NOISE cores (0.2) is
# repeated after 15 s, up to TRIES (3) times, and medians leave out runs
# that stayed noisy. With WORKERS=1 the servers share CPU 0 and wrk has
# CPU 1; with 2 workers on a 2-core box everything shares both cores.
#
# Also measured: seeding time, gateway start-up with 1,000,000 keys (process
# start to /health 200, and the gateway's own "keys loaded ms="), RSS
# (VmRSS) with 10k and 1M keys at idle and after the runs, and revocation
# latency (POST /keys/{id}/revoke on tollgate-server -> first 401 at the
# gateway, default config_poll_interval 250ms), 5 keys, with 10k and 1M keys.
# Loopback only; every wrk run is bounded by DUR; everything is removed at
# the end. ONLY="nginx-gw tg-10k" runs those configurations alone;
# PERF_OUT=DIR records a perf profile of each tollgate run there;
# HOLD=SECONDS starts everything, prints the URLs and waits (to look by
# hand); FIXED=0.5 sets the open-loop rate (below) as a fraction of nginx-gw's;
# UPSTREAM_CPU=1 (1 worker) pins the upstream beside wrk, not the proxy;
# UPSTREAM_SCHED=batch keeps it beside the proxy without wake-up preemption.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${1:-1}
ROUNDS=${2:-3}
DUR=${DUR:-10s}
CONNS=${CONNS:-64}
NGX_AUTH=${NGX_AUTH:-if}
BIG=${BIG:-1000000}
for p in nginx wrk; do
  command -v $p >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    $([ $p = nginx ] && echo nginx-light || echo wrk) >/dev/null
done
for b in gateway/tollgate-gateway admin-api/tollgate-server cli/tollgate bench/loadgen; do
  [ -x build/$b ] || { echo "build/$b missing: run scripts/build.sh" >&2; exit 1; }
done
HELPER=$PWD/bench/gateway_keys.py
# shared with gateway_instr.sh: the upstream, nginx-gw, expect()
. "$PWD/bench/common.sh"

work=$(mktemp -d /tmp/keybench.XXXXXX)
pids=()
cleanup() {
  # a server stopped by pause_idle (below) must run again to exit
  for p in "${pids[@]}" $(for p in "${pids[@]}"; do pgrep -P "$p"; done); do
    kill -CONT "$p" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# copies: a rebuild during the run must not mix schema versions; named so
# that a test run's cleanup of tollgate-gateway processes leaves them alone
cp build/gateway/tollgate-gateway "$work/gw-under-bench"
cp build/admin-api/tollgate-server "$work/srv-under-bench"
cp build/cli/tollgate "$work/cli-under-bench"
cp build/bench/loadgen "$work/loadgen"
GWBIN=$work/gw-under-bench CLI=$work/cli-under-bench SRVBIN=$work/srv-under-bench
cd "$work"
: > empty.conf

# free ports, picked now: a second copy of this bench may be running
read -r UP NGX ADM P1 P2 P3 S1 S2 S3 < <(python3 "$HELPER" ports 9)
declare -A PORT=([tg-10k]=$P1 [tg-1m]=$P2 [tg-10k-nomet]=$P3)
declare -A SPORT=([tg-10k]=$S1 [tg-1m]=$S2 [tg-10k-nomet]=$S3)
# With 1 worker and 2+ cores, the servers share CPU 0 and wrk gets CPU 1.
PIN_SRV=() PIN_WRK=() PIN_UP=()
if [ "$WORKERS" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  PIN_SRV=(taskset -c 0) PIN_WRK=(taskset -c 1)
  # UPSTREAM_CPU=1: the upstream runs beside wrk instead of beside the
  # proxy, as it would on its own machine (a proxy sharing a core with its
  # upstream is preempted by every upstream wake-up)
  PIN_UP=(taskset -c "${UPSTREAM_CPU:-0}")
fi
# UPSTREAM_SCHED=batch runs the upstream as SCHED_BATCH: it keeps its share
# of the CPU but its wake-ups no longer preempt the proxy it shares a core
# with (what a remote upstream's would not do either). perf sched showed
# the proxy preempted 0.65 (nginx-gw) to 0.8 (tollgate) times per request
# by the upstream otherwise, and ~0 with it.
[ "${UPSTREAM_SCHED:-}" = batch ] && PIN_UP=(chrt -b 0 "${PIN_UP[@]}")
ms_now() { echo $(($(date +%s%N) / 1000000)); }
rss() { awk '/VmRSS/ {printf "%.0f MB", $2 / 1024}' "/proc/$1/status"; }

# ---- upstream --------------------------------------------------------------
write_upstream_conf
"${PIN_UP[@]}" nginx -c "$work/upstream.conf" -p "$work" & pids+=($!)
UPPID=$!

# ---- stores: 10k keys, and BIG keys whose first 10k are the same keys -------
mkdir -p k10 kbig
"$CLI" --config empty.conf --db-path k10.db --secret-file secret migrate 2>/dev/null
"$CLI" --config empty.conf --db-path kbig.db --secret-file secret migrate 2>/dev/null
python3 "$HELPER" seed --db k10.db --secret-file secret --keys 10000 \
  --upstream "http://127.0.0.1:$UP" --outdir k10 --map 10000 --revoke 5 2>&1 | sed 's/^/10k store: /'
t0=$(ms_now)
python3 "$HELPER" seed --db kbig.db --secret-file secret --keys "$BIG" \
  --upstream "http://127.0.0.1:$UP" --outdir kbig --revoke 5 2>&1 | sed "s/^/$BIG-key store: /"
echo "$BIG-key store: seeding took $(( $(ms_now) - t0 )) ms (wall), $(du -m kbig.db | cut -f1) MB"
cmp -s k10/wrk_keys.txt kbig/wrk_keys.txt || { echo "the stores' first keys differ" >&2; exit 1; }
cp k10.db knomet.db # its own store: the metering gateway's writes stay apart
declare -A DB=([tg-10k]=k10.db [tg-1m]=kbig.db [tg-10k-nomet]=knomet.db)
KEY=$(head -1 k10/wrk_keys.txt)
BADKEY=tg_live_QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ000000

# wrk: every request carries one of the 1,000 keys, picked at random.
{
  echo 'local keys = {'
  sed 's/.*/"&",/' k10/wrk_keys.txt
  echo '}'
  cat <<'EOF'
local reqs = {}
init = function(args)
  math.randomseed(12345)
  for i, k in ipairs(keys) do
    reqs[i] = wrk.format("GET", "/bench/x", { ["X-API-Key"] = k })
  end
end
request = function()
  return reqs[math.random(#reqs)]
end
EOF
} > keys.lua

# ---- nginx as an API gateway ----------------------------------------------
if [ "$NGX_AUTH" = subrequest ]; then
  auth='auth_request /_validate_apikey;'
  validate='location = /_validate_apikey {
      internal;
      if ($http_x_api_key = "") { return 401; }
      if ($api_client_name = "") { return 403; }
      return 204;
    }'
else
  auth='if ($api_client_name = "") { return 401; }'
  validate=''
fi
write_nginx_gw_conf "worker_processes $WORKERS;" "$auth" "$validate"
"${PIN_SRV[@]}" nginx -c "$work/gw_nginx.conf" -p "$work" & pids+=($!)
NGXPID=$!

# ---- the tollgate gateways ------------------------------------------------
declare -A GWPID
# CPU time (user + system, clock ticks) of the processes serving a config:
# nginx's workers, or the whole tollgate process (every thread: workers,
# metering, config). CPU per request holds up better than req/s when
# something else shares the machine.
cpu_pids() {
  case $1 in
    nginx-gw) pgrep -P "$NGXPID" ;;
    upstream) pgrep -P "$UPPID" ;;
    *) echo "${GWPID[$1]}" ;;
  esac
}
cpu_ticks() {
  local s=0 p
  for p in $(cpu_pids "$1"); do s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo $s
}
HZ=$(getconf CLK_TCK)
# Context switches of the threads that serve requests (nginx's workers,
# tollgate's tg-worker-N threads), as "voluntary preempted": a worker that
# waits for events switches voluntarily; one the scheduler takes the CPU
# from (to run the upstream, say) is preempted.
switches() {
  local t dirs=()
  case $1 in
    nginx-gw) for t in $(pgrep -P "$NGXPID"); do dirs+=("/proc/$t"); done ;;
    upstream) echo 0 0; return 0 ;;
    *) for t in /proc/"${GWPID[$1]}"/task/*; do
         case $(cat "$t/comm" 2>/dev/null) in tg-worker-*) dirs+=("$t") ;; esac
       done ;;
  esac
  cat "${dirs[@]/%//status}" 2>/dev/null |
    awk '/^voluntary_ctxt/ {v += $2} /^nonvoluntary_ctxt/ {n += $2} END {print v + 0, n + 0}'
}
# Per thread of a tollgate process: "name ticks" lines (threads are named
# tg-worker-N, tg-meter, tg-config, tg-health, tg-status).
thread_ticks() {
  local t
  for t in /proc/"$1"/task/*; do
    echo "$(cat "$t/comm" 2>/dev/null) $(awk '{print $14 + $15}' "$t/stat" 2>/dev/null || echo 0)"
  done
}
# Other load: CPU the machine spent during a run beyond this bench's own
# processes (every server here, and wrk: the shell's reaped children), in
# cores. A run with more than NOISE cores of it is run again after a pause,
# up to TRIES times; the last try is kept, marked "noisy", and medians
# leave noisy runs out unless every run of that configuration was noisy.
NOISE=${NOISE:-0.2}
TRIES=${TRIES:-3}
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
own_ticks() {
  local s=0 p
  for p in "$UPPID" $(pgrep -P "$UPPID") "$NGXPID" $(pgrep -P "$NGXPID") "${GWPID[@]}"; do
    [ -r "/proc/$p/stat" ] && s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $((s + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$$/stat")))
}
start_gw() { # name [extra flags...]; prints start-up time and keys-loaded ms
  local name=$1
  shift
  : > "$name.log"
  local t0 b0 o0
  t0=$(ms_now) b0=$(busy_ticks) o0=$(own_ticks)
  "${PIN_SRV[@]}" "$GWBIN" --config empty.conf --db-path "${DB[$name]}" --secret-file secret \
    --gateway-listen "127.0.0.1:${PORT[$name]}" --status-listen "127.0.0.1:${SPORT[$name]}" \
    --gateway-workers "$WORKERS" --access-log "$work/$name.access" --log-format text \
    "$@" 2>"$name.log" &
  GWPID[$name]=$!
  pids+=($!)
  for _ in $(seq 3000); do
    curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:${SPORT[$name]}/health" && break
    kill -0 "${GWPID[$name]}" 2>/dev/null || { cat "$name.log" >&2; exit 1; }
    sleep 0.01
  done
  local up=$(($(ms_now) - t0))
  local other
  other=$(echo "$(($(busy_ticks) - b0 - $(own_ticks) + o0)) $HZ $up" | awk '{o = $1 / $2 / ($3 / 1000); printf "%.2f", o < 0 ? 0 : o}')
  printf '%-13s start-up %5d ms to /health 200 (%s, %s keys); idle RSS %s; other load %s\n' "$name" "$up" \
    "$(grep -o 'keys loaded.*' "$name.log" | grep -o 'ms=[0-9]*' | sed 's/ms=/keys loaded in /;s/$/ ms/')" \
    "$(grep -o 'keys loaded keys=[0-9]*' "$name.log" | cut -d= -f2)" "$(rss "${GWPID[$name]}")" "$other"
}
stop_gw() {
  kill "${GWPID[$1]}"
  wait "${GWPID[$1]}" 2>/dev/null || true
}
# start-up with the big store, three times (the OS page cache is warm: the
# store was just written); the last one stays up
for i in 1 2 3; do
  start_gw tg-1m
  [ $i = 3 ] || stop_gw tg-1m
done
start_gw tg-10k
start_gw tg-10k-nomet --metering=false

sleep 0.5
declare -A URL=([nginx-gw]="http://127.0.0.1:$NGX/bench/x" [upstream]="http://127.0.0.1:$UP/bench/x")
for n in tg-10k tg-1m tg-10k-nomet; do URL[$n]="http://127.0.0.1:${PORT[$n]}/bench/x"; done
for n in nginx-gw tg-10k tg-1m tg-10k-nomet; do
  expect "${URL[$n]}" "$KEY" 200
  expect "${URL[$n]}" "$(sed -n 1000p k10/wrk_keys.txt)" 200
  bad=401
  [ $n = nginx-gw ] && [ "$NGX_AUTH" = subrequest ] && bad=403 # the blog's choice
  expect "${URL[$n]}" "$BADKEY" $bad
  expect "${URL[$n]}" "" 401
done
expect "${URL[tg-1m]}" "$(cut -f2 kbig/revoke.tsv | tail -1)" 200
echo "checked: each gateway admits seeded keys (200) and refuses unknown and missing keys"
if [ -n "${HOLD:-}" ]; then # keep everything up HOLD seconds, to look at by hand
  for n in nginx-gw tg-10k tg-1m tg-10k-nomet upstream; do echo "hold: $n ${URL[$n]} pid ${GWPID[$n]:-}"; done
  echo "hold: keys $work/k10/wrk_keys.txt; loadgen $work/loadgen"
  sleep "$HOLD"
  exit 0
fi

# ---- throughput --------------------------------------------------------------
to_us() { # "1.23ms" -> 1230
  echo "$1" | awk '{v = $1 + 0; if ($1 ~ /us$/) m = 1; else if ($1 ~ /ms$/) m = 1000;
                    else if ($1 ~ /s$/) m = 1000000; printf "%.0f", v * m}'
}
alive() { # every server still up? (a dead one would skew every number after it)
  local n
  for n in "${!GWPID[@]}"; do
    kill -0 "${GWPID[$n]}" 2>/dev/null || { echo "$n exited:" >&2; tail -5 "$n.log" >&2; exit 1; }
  done
  kill -0 "$NGXPID" && kill -0 "$UPPID" || { echo "nginx exited" >&2; tail -5 ngx.err up.err >&2; exit 1; }
}
# While one configuration runs, the other servers are stopped (SIGSTOP):
# an idle tollgate still wakes for its metering beat, its journal fold
# (every 60 s, ~0.7 s of paced work) and its config poll, and those must
# neither land in another configuration's run nor be missing from its own
# (a stopped gateway's overdue timers fire when it resumes, in its run).
server_pids() { # name: every process of that server
  case $1 in
    nginx-gw) echo "$NGXPID" $(pgrep -P "$NGXPID") ;;
    upstream) ;; # never stopped: every configuration needs it
    *) echo "${GWPID[$1]}" ;;
  esac
}
pause_idle() { # name: stop every server but that one (and the upstream)
  local n
  resume_idle
  for n in nginx-gw "${!GWPID[@]}"; do
    [ "$n" = "$1" ] || kill -STOP $(server_pids "$n") 2>/dev/null || true
  done
}
resume_idle() {
  local n
  for n in nginx-gw "${!GWPID[@]}"; do kill -CONT $(server_pids "$n") 2>/dev/null || true; done
}
run() { # name
  alive
  pause_idle "$1" # no pause after: its overdue timers fire in its run
  local name=$1 out rps p50 p99 bad lines c0 c1 cpu b0 b1 o0 o1 t0 t1 other try note sv0 sn0 sv1 sn1
  for try in $(seq "$TRIES"); do
    : > "$work/ngx_access.log"
    for n in tg-10k tg-1m tg-10k-nomet; do : > "$work/$n.access"; done
    c0=$(cpu_ticks "$name") b0=$(busy_ticks) o0=$(own_ticks) t0=$(ms_now)
    [ -n "${GWPID[$name]:-}" ] && thread_ticks "${GWPID[$name]}" > "$work/thr0"
    read -r sv0 sn0 < <(switches "$name")
    if [ -n "${PERF_OUT:-}" ] && [ "$name" != upstream ]; then
      # a profile of the server over the middle of the run, and its
      # scheduling counts (perf's own CPU counts as other load: use it to
      # look, not to measure)
      local pids
      pids=$(cpu_pids "$name" | paste -sd, -)
      (sleep 2; perf record -q -g -p "$pids" -o "$PERF_OUT/perf-$name.data" \
         -- sleep 5 >/dev/null 2>&1) &
      (sleep 2; perf stat -e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter -p "$pids" \
         -o "$PERF_OUT/stat-$name-$try.txt" -- sleep 5 >/dev/null 2>&1) &
    fi
    out=$("${PIN_WRK[@]}" wrk -t1 -c"$CONNS" -d"$DUR" --latency -s keys.lua "${URL[$name]}")
    alive
    c1=$(cpu_ticks "$name") b1=$(busy_ticks) o1=$(own_ticks) t1=$(ms_now)
    [ -n "${GWPID[$name]:-}" ] && thread_ticks "${GWPID[$name]}" > "$work/thr1"
    read -r sv1 sn1 < <(switches "$name")
    other=$(echo "$((b1 - b0 - o1 + o0)) $HZ $((t1 - t0))" | awk '{o = $1 / $2 / ($3 / 1000); printf "%.2f", o < 0 ? 0 : o}')
    note=""
    awk -v o="$other" -v n="$NOISE" 'BEGIN {exit !(o <= n)}' && break
    note="noisy"
    [ "$try" = "$TRIES" ] || { echo "$name: other load $other cores, again in 15 s"; sleep 15; }
  done
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  cpu=$(echo "$out" | awk -v t=$((c1 - c0)) -v hz="$HZ" '/requests in/ {printf "%.1f", t * 1e6 / hz / $1}')
  p50=$(to_us "$(echo "$out" | awk '$1=="50%" {print $2}')")
  p99=$(to_us "$(echo "$out" | awk '$1=="99%" {print $2}')")
  bad=$(echo "$out" | awk '/Non-2xx/ {n += $NF} /Socket errors/ {e = $0} END {printf "%s %s", n ? "non-2xx " n : "", e}')
  sleep 0.3 # let the logs' last buffers reach the files
  case $name in
    nginx-gw) lines=$(wc -l < ngx_access.log) ;;
    upstream) lines=- ;;
    *) lines=$(wc -l < "$name.access") ;;
  esac
  printf '%-13s %10s req/s  p50 %6.2f ms  p99 %6.2f ms  CPU %5s us/req  other %s  log lines %-9s %s\n' \
    "$name" "$rps" "$(echo "$p50" | awk '{print $1 / 1000}')" "$(echo "$p99" | awk '{print $1 / 1000}')" \
    "$cpu" "$other" "$lines" "$note $bad"
  [ "$name" = upstream ] || echo "$out" | awk -v v=$((sv1 - sv0)) -v n=$((sn1 - sn0)) '
    /requests in/ {printf "  worker switches per 1,000 requests: %.0f waiting, %.0f preempted\n",
                   v * 1000 / $1, n * 1000 / $1}'
  if [ -n "${GWPID[$name]:-}" ]; then # where tollgate's CPU went, by thread
    echo "$out" | awk -v hz="$HZ" -v f0="$work/thr0" -v f1="$work/thr1" '
      /requests in/ {n = $1}
      END {
        while ((getline l < f0) > 0) {split(l, a, " "); t0[a[1]] += a[2]}
        while ((getline l < f1) > 0) {split(l, a, " "); t1[a[1]] += a[2]}
        s = "  CPU by thread (us/req):"
        for (k in t1) if (k != "") s = s sprintf(" %s %.2f", k, (t1[k] - t0[k]) * 1e6 / hz / n)
        print s
      }'
  fi
  echo "$rps $p50 $p99 $cpu $([ -n "$note" ] && echo 1 || echo 0)" >> "$work/res-$name"
}
read -r -a CONFIGS <<<"${ONLY:-nginx-gw tg-10k tg-1m tg-10k-nomet upstream}"
# The order of each round: a Williams design (a balanced Latin square), so
# that over a full cycle of rounds every configuration runs right after
# every other one equally often. A plain rotation of 3 puts tg-10k after
# nginx-gw in two rounds of three and metering-off after tg-10k in two of
# three: whatever a run leaves behind (dirty log pages, a warm or cold
# cache, a fold; see pause_idle) then lands on one side of a ratio. The
# cycle is N rounds for N configurations, 2N when N is odd (the square and
# its mirror); a run of fewer rounds is balanced only in part.
round_order() { # round (1-based) -> indexes into CONFIGS, space-separated
  local n=${#CONFIGS[@]} cycle k row j first=() out=()
  cycle=$((n % 2 ? 2 * n : n))
  k=$((($1 - 1) % cycle))
  row=$((k % n))
  for ((j = 0; j < n; j++)); do # 0, 1, n-1, 2, n-2, ...
    if ((j == 0)); then first+=(0)
    elif ((j % 2)); then first+=($(((j + 1) / 2)))
    else first+=($((n - j / 2)))
    fi
  done
  for ((j = 0; j < n; j++)); do out+=($(((first[j] + row) % n))); done
  if ((k >= n)); then
    local rev=()
    for ((j = n - 1; j >= 0; j--)); do rev+=("${out[j]}"); done
    out=("${rev[@]}")
  fi
  echo "${out[*]}"
}
for r in $(seq "$ROUNDS"); do
  echo "-- round $r"
  for i in $(round_order "$r"); do
    run "${CONFIGS[$i]}"
  done
done
resume_idle
for n in tg-10k tg-1m; do echo "$n RSS after the runs: $(rss "${GWPID[$n]}")"; done

median() { # file column: over the quiet runs, or over all if none was quiet
  local rows
  rows=$(awk '$5 != 1' "$1")
  [ -n "$rows" ] || rows=$(cat "$1")
  echo "$rows" | awk -v c="$2" '{print $c}' | sort -n |
    awk '{a[NR] = $1} END {print NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
declare -A RPS P50 P99 CPU NOISY
for n in "${CONFIGS[@]}"; do
  RPS[$n]=$(median "res-$n" 1)
  P50[$n]=$(median "res-$n" 2)
  P99[$n]=$(median "res-$n" 3)
  CPU[$n]=$(median "res-$n" 4)
  NOISY[$n]=$(awk '$5 == 1 {n++} END {print n + 0}' "res-$n")
done
ratio() { echo "$1 $2" | awk '{printf "%.2f", $1 / $2}'; }
have() { local n; for n; do [ -n "${RPS[$n]:-}" ] || return 1; done; }
echo
echo "== $WORKERS worker(s), $ROUNDS rounds of $DUR, $CONNS connections, medians (nginx auth: $NGX_AUTH)"
printf '%-28s %10s %9s %9s %11s %6s  %s\n' configuration req/s "p50 ms" "p99 ms" "CPU us/req" noisy "req/s vs nginx-gw"
label() {
  case $1 in
    nginx-gw) echo "nginx-gw (10k keys)" ;;
    tg-10k) echo "tollgate 10k keys" ;;
    tg-1m) echo "tollgate $BIG keys" ;;
    tg-10k-nomet) echo "tollgate 10k, metering off" ;;
    upstream) echo "(upstream direct)" ;;
  esac
}
for n in "${CONFIGS[@]}"; do
  printf '%-28s %10s %9.2f %9.2f %11s %6s  %s\n' "$(label "$n")" "${RPS[$n]}" \
    "$(echo "${P50[$n]}" | awk '{print $1 / 1000}')" "$(echo "${P99[$n]}" | awk '{print $1 / 1000}')" \
    "${CPU[$n]}" "${NOISY[$n]}/$ROUNDS" "$(have nginx-gw && ratio "${RPS[$n]}" "${RPS[nginx-gw]}")x"
done
have tg-10k nginx-gw &&
  echo "tollgate 10k / nginx-gw:      throughput $(ratio "${RPS[tg-10k]}" "${RPS[nginx-gw]}")x (target >= 1.0, aim 1.2)," \
    "p99 $(ratio "${P99[tg-10k]}" "${P99[nginx-gw]}")x (target <= 1.0)," \
    "CPU/req $(ratio "${CPU[tg-10k]}" "${CPU[nginx-gw]}")x"
# the machine drifts within a run (one config's CPU per request moved by
# 1.5x between rounds): the ratio of two runs of the same round, next to
# each other in time, drifts less than the ratio of the medians
paired() { # a b column: median over rounds of a's value / b's in the same round
  paste "res-$1" "res-$2" | awk -v c="$3" '$5 != 1 && $10 != 1 {print $c / $(c + 5)}' | sort -n |
    awk '{a[NR] = $1} END {if (NR) printf "%.2f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
have tg-10k nginx-gw &&
  echo "  paired by round:            throughput $(paired tg-10k nginx-gw 1)x," \
    "p99 $(paired tg-10k nginx-gw 3)x, CPU/req $(paired tg-10k nginx-gw 4)x" \
    "(median of the rounds' own ratios)"
have tg-1m tg-10k &&
  echo "tollgate 1M / 10k keys:       throughput $(ratio "${RPS[tg-1m]}" "${RPS[tg-10k]}")x (target >= 0.95)"
have tg-10k tg-10k-nomet &&
  echo "tollgate metering on / off:   throughput $(ratio "${RPS[tg-10k]}" "${RPS[tg-10k-nomet]}")x (target >= 0.95)," \
    "paired by round $(paired tg-10k tg-10k-nomet 1)x"

# ---- tail latency at a fixed rate ------------------------------------------
# wrk is a closed loop: at saturation its p99 mostly restates throughput
# (64 connections / req/s), and a server that stalls also stalls wrk. So
# the same configurations run again under bench/loadgen, an open loop
# (wrk2's method): a fixed rate, FIXED (0.5) x nginx-gw's median req/s,
# the same 1,000 random keys, latency counted from each request's
# intended send time. FIXED=0 skips this part. FCONNS (64) connections: a
# burst that finds every connection busy waits, and the wait counts
# ("late"). More connections are not more headroom here: with the
# upstream on the proxy's core, wrk at 256 connections gets half the
# req/s of 64, from nginx-gw and tollgate alike, and an open loop at
# 0.5x then tips into a queue it never drains.
FIXED=${FIXED:-0.5}
FCONNS=${FCONNS:-64}
LOADGEN=$work/loadgen
if have nginx-gw && [ "$FIXED" != 0 ]; then
  RATE=$(echo "${RPS[nginx-gw]} $FIXED" | awk '{printf "%d", $1 * $2}')
  secs=$(echo "$DUR" | sed 's/s$//')
  FCONFIGS=()
  for n in "${CONFIGS[@]}"; do [ "$n" = upstream ] || FCONFIGS+=("$n"); done
  echo
  echo "-- open loop at $RATE req/s ($FIXED x nginx-gw), $FCONNS connections, ${secs}s each"
  for r in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((${#FCONFIGS[@]} - 1))); do
      n=${FCONFIGS[$(((i + r - 1) % ${#FCONFIGS[@]}))]}
      alive
      out=$("${PIN_WRK[@]}" "$LOADGEN" -u "${URL[$n]}" -r "$RATE" -c "$FCONNS" -d "$secs" -w 2 \
              -k k10/wrk_keys.txt)
      echo "$out" | awk -v n="$n" '
        /^loadgen:/ {done = $7}
        /^latency/ {p50 = $4; p99 = $8; p999 = $10; max = $12}
        /^status/ {bad = $5 + $7 + $9 + $11; late = $13}
        END {printf "%-13s %9s done  p50 %6.2f ms  p99 %6.2f ms  p99.9 %6.2f ms  max %6.2f ms  non-2xx+errors %s  late %s\n",
                    n, done, p50 / 1000, p99 / 1000, p999 / 1000, max / 1000, bad, late}'
      echo "$out" | awk '/^latency/ {print $4, $8, $10}' >> "$work/fix-$n"
    done
  done
  echo
  echo "== open loop at $RATE req/s, medians of $ROUNDS rounds"
  printf '%-28s %9s %9s %9s\n' configuration "p50 ms" "p99 ms" "p99.9 ms"
  declare -A F99
  for n in "${FCONFIGS[@]}"; do
    F99[$n]=$(median "fix-$n" 2)
    printf '%-28s %9.2f %9.2f %9.2f\n' "$(label "$n")" "$(median "fix-$n" 1 | awk '{print $1 / 1000}')" \
      "$(echo "${F99[$n]}" | awk '{print $1 / 1000}')" "$(median "fix-$n" 3 | awk '{print $1 / 1000}')"
  done
  [ -n "${F99[tg-10k]:-}" ] &&
    echo "tollgate 10k / nginx-gw:      p99 at a fixed rate $(ratio "${F99[tg-10k]}" "${F99[nginx-gw]}")x (target <= 1.0)"
fi

# ---- revocation ------------------------------------------------------------
revocation() { # gateway-name store key-dir
  local name=$1 db=$2 dir=$3 token spid
  token=$("$CLI" --config empty.conf --db-path "$db" --secret-file secret \
    admin-token create --name "bench-$name" --scopes admin 2>/dev/null)
  "$SRVBIN" --config empty.conf --db-path "$db" --secret-file secret \
    --admin-listen "127.0.0.1:$ADM" --portal-enabled=false --log-format text 2>"adm-$name.log" &
  spid=$!
  pids+=($!)
  for i in $(seq 500); do
    curl -fs -o /dev/null --max-time 1 -H "Authorization: Bearer $token" "http://127.0.0.1:$ADM/apis" && break
    kill -0 "$spid" 2>/dev/null && [ "$i" != 500 ] || { cat "adm-$name.log" >&2; exit 1; }
    sleep 0.01
  done
  echo "revocation with $name (config_poll_interval 250ms, the default):"
  python3 "$HELPER" revoke --admin "http://127.0.0.1:$ADM" --token "$token" \
    --gateway "127.0.0.1:${PORT[$name]}" --tsv "$dir/revoke.tsv" | sed 's/^/  /'
  kill "$spid"
  wait "$spid" 2>/dev/null || true
}
echo
revocation tg-10k k10.db k10
revocation tg-1m kbig.db kbig
echo "command: DUR=$DUR CONNS=$CONNS NGX_AUTH=$NGX_AUTH FIXED=$FIXED${UPSTREAM_CPU:+ UPSTREAM_CPU=$UPSTREAM_CPU}${UPSTREAM_SCHED:+ UPSTREAM_SCHED=$UPSTREAM_SCHED}${ONLY:+ ONLY=\"$ONLY\"} bench/gateway_keys.sh $WORKERS $ROUNDS"
