#!/usr/bin/env python3
"""
test_reports.py - usage reports and billing exports (issue 6) end to end:
traffic through the real tollgate-gateway, then GET /usage, GET /billing
(tollgate-server) and `tollgate usage export` / `billing export` / `usage
compact` (the CLI) checked against what this suite sent.

    test_reports.py GATEWAY SERVER CLI UPSTREAM [GROUP-or-TEST...]

It reuses test_gateway.py's runner, World (processes, admin API) and raw
HTTP client, as test_gateway_keys.py does.

Group "reports": six developers with apps, keys, subscriptions and plans
(fees, included calls, overage prices, three currencies, a plan that needs
approval, a rate limit) over two APIs. The gateway's clock is moved
(TOLLGATE_TEST_NOW) to 2026-10-14 for a closed month's traffic, to 23:00
the day before yesterday and 00:00 yesterday, to 00:00 today, and runs on
the real clock last; it is stopped with SIGTERM after each run. Every
request's status, bytes in and bytes out are recorded on the client side,
so every number of every report and statement is predicted here, not read
back from the ledger. Rejected calls (missing key, invalid key, rate
limited, not subscribed) are in the mix; so are 2xx, 3xx, 4xx and 5xx
answers of the upstream. Subscriptions are backdated in the database
(created in September; one cancelled in September) so that October is a
month they were billed for: the only write this group makes outside the
admin API, the gateway and the CLI.

tollgate-server's compactor runs once when it starts, on an empty ledger:
its watermarks start at the current hour, so all the past-dated traffic
arrives "late" and the gateway's writes add it to the hour and day rows at
once (store.h). `tollgate usage compact` then finds those periods done;
compaction proper (compact_period) is exercised by the "stream" group.

Group "stream": 200,000 minute rows (100 keys x 2,000 minutes, ids of 64
characters) seeded straight into the ledger before tollgate-server first
starts, so that its compactor really compacts them into hours and days;
then the 200,000-row minute report streamed as CSV and as JSON, with the
server's RSS sampled (it must stay within 32 MB of where it was).
"""
import calendar
import csv
import functools
import hashlib
import http.client
import io
import json
import os
import re
import sqlite3
import struct
import subprocess
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_gateway as base  # noqa: E402
from test_gateway import Conn, Failure, build, check, eq, problem  # noqa: E402

CSV_TYPE = "text/csv; charset=utf-8; header=present"
REASONS = ["missing_key", "invalid_key", "auth_throttled", "not_subscribed", "suspended",
           "rate_limited", "quota_exceeded", "no_route", "bad_request"]
DIMS = [("developer", "developer_id"), ("app", "app_id"), ("key", "key_id"), ("api", "api_id"),
        ("plan", "plan_id"), ("subscription", "subscription_id"),
        ("status_class", "status_class")]
DIM_COL = dict(DIMS)
BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}
PROBLEM_REASON = {"missing-api-key": "missing_key", "invalid-api-key": "invalid_key",
                  "rate-limited": "rate_limited", "not-subscribed": "not_subscribed"}
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def utc(y, mo, d, h=0, mi=0, s=0):
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def month_start(t):
    tm = time.gmtime(t)
    return utc(tm.tm_year, tm.tm_mon, 1)


def month_after(t):
    tm = time.gmtime(t)
    y, m = (tm.tm_year + 1, 1) if tm.tm_mon == 12 else (tm.tm_year, tm.tm_mon + 1)
    return utc(y, m, 1)


def record_id(*parts):
    """core/csv.h tg_record_id: BLAKE2b-256 over u64le(len) || part, first 16 bytes, hex."""
    h = hashlib.blake2b(digest_size=32)
    for p in parts:
        b = p.encode()
        h.update(struct.pack("<Q", len(b)) + b)
    return h.digest()[:16].hex()


def unknown_key():
    """A well-formed API key (checksum right) that no app has."""
    body = "tg_live_" + "Z" * 43
    crc = zlib.crc32(body.encode())
    out = ""
    for _ in range(6):
        out = B62[crc % 62] + out
        crc //= 62
    return body + out


# ---- HTTP to the admin API, raw ---------------------------------------------------

class HResp(base.Headers):
    """What problem() and friends need: status, header(), json, body."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None

    def __repr__(self):
        return "HTTP %d %r\n  %s" % (self.status, self.headers,
                                     self.body[:1500].decode("utf-8", "replace"))


def api_get(w, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", w.admin_port, timeout=60)
    try:
        h = {"Authorization": "Bearer " + w.token}
        h.update(headers or {})
        conn.request("GET", path, headers=h)
        r = conn.getresponse()
        body = r.read()
        return HResp(r.status, r.getheaders(), body)
    finally:
        conn.close()


def api_req(w, method, path, body, headers):
    conn = http.client.HTTPConnection("127.0.0.1", w.admin_port, timeout=60)
    try:
        h = {"Authorization": "Bearer " + w.token}
        h.update(headers)
        conn.request(method, path, body=json.dumps(body).encode(), headers=h)
        r = conn.getresponse()
        return HResp(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


def cli_run(w, *args, settings=()):
    """The CLI with bytes out (CSV's CRLF must survive): (rc, stdout, stderr)."""
    argv = [base.CLI, "--config", w.config, "--db-path", w.db, "--secret-file",
            w.secret] + list(settings) + list(args)
    p = subprocess.run(argv, cwd=w.dir, env=base.clean_env(), capture_output=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def cli_ok(w, *args, settings=()):
    rc, out, err = cli_run(w, *args, settings=settings)
    check(rc == 0, "tollgate %s exited %d: %s" % (" ".join(args), rc, err))
    return out, err


def cli_file(w, name, *args):
    """Run an export with --output FILE; the file's bytes."""
    path = os.path.join(w.dir, name)
    if os.path.exists(path):
        os.unlink(path)
    cli_ok(w, *(list(args) + ["--output", path]))
    with open(path, "rb") as f:
        return f.read()


def ledger(w, sql, args=()):
    db = sqlite3.connect("file:%s?mode=ro" % w.db, uri=True, timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


# ---- tollgate-server crashes: say so, start it again for the next test -----------------

def server_crash_report(w):
    """The server's sanitizer report (or its last lines)."""
    lines = w.server.lines
    for i, ln in enumerate(lines):
        if "ERROR: AddressSanitizer" in ln or "runtime error:" in ln or "LeakSanitizer" in ln:
            return "\n".join(l for l in lines[i:i + 40] if not l.startswith("  0x"))
    return "\n".join(lines[-20:])


def restart_server(w):
    old = w.server
    old.kill()
    w.server = base.Daemon("server", old.argv, w.dir, {"port": re.compile(r"\bport=(\d+)\b")})
    w.daemons.append(w.server)
    w.admin_port = w.server.wait_ports()["port"]
    deadline = time.monotonic() + base.START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if api_get(w, "/health").status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise Failure("tollgate-server did not come back\n  %s" % w.server.log_text())


def server_test(fn):
    """A test that needs tollgate-server: a server that died in an earlier
    test is started again first; one that dies in this test fails it with
    the server's own report."""
    @functools.wraps(fn)
    def t(w):
        if w.server.proc.poll() is not None:
            restart_server(w)
        try:
            fn(w)
        except Exception as e:
            time.sleep(0.2)
            if w.server.proc.poll() is not None:
                raise Failure("tollgate-server died (exit %r) during %s:\n%s\n(the test saw: %s)"
                              % (w.server.proc.returncode, fn.__name__, server_crash_report(w),
                                 str(e).splitlines()[-1] if str(e) else type(e).__name__))
            raise
    return t


# ---- the traffic model -------------------------------------------------------------

class Gw:
    """A keep-alive client of the gateway that measures every request's bytes
    the way the gateway meters them: the request as sent, the response as
    received (head and body)."""

    def __init__(self, w):
        self.w = w
        self.conn = None

    def call(self, path, key=None):
        hdrs = [("X-API-Key", key)] if key else []
        data = build("GET", path, hdrs)
        r = None
        for attempt in range(2):  # a kept-alive connection the gateway closed: once more
            if self.conn is None:
                self.conn = Conn(self.w.port)
            if self.conn.send(data):
                try:
                    r = self.conn.read_response()
                    break
                except Failure:
                    if attempt:
                        raise
            self.conn.close()
            self.conn = None
        check(r is not None, "GET %s: the gateway closed the connection twice" % path)
        check(not r.chunked and not r.interim, "a response this suite cannot measure", r)
        if (r.header("Connection") or "").lower() == "close":
            self.conn.close()
            self.conn = None
        return r, len(data), len(r.raw_head) + len(r.body)

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None


def send(w, gw, minute, who, api, path, key_text, n=1, expect=None):
    """n calls of path with a key; every one recorded as an event of `minute`
    (the gateway clock's minute) with the dimensions the ledger must show."""
    out = []
    for _ in range(n):
        r, bin_, bout = gw.call(path, key_text)
        if expect is not None:
            eq(r.status, expect, "GET %s as %s" % (path, who), r)
        t = minute if minute is not None else int(time.time()) // 60 * 60
        ev = {"t": t, "api_id": w.apis[api]["api"]["id"], "key_id": "", "app_id": "",
              "developer_id": "", "plan_id": "", "subscription_id": "", "bytes_in": bin_,
              "bytes_out": bout, "status": r.status, "reason": ""}
        if r.status in (401, 403, 429) and (r.header("Content-Type") or "").startswith(
                "application/problem+json"):
            slug = r.json["type"].rsplit("/", 1)[-1]
            check(slug in PROBLEM_REASON, "an unexpected refusal %r" % slug, r)
            ev["reason"] = PROBLEM_REASON[slug]
            ev["status_class"] = 0
        else:
            ev["status_class"] = min(r.status // 100, 5)
        c = w.who.get(who)
        if c and ev["reason"] not in ("missing_key", "invalid_key"):
            ev["key_id"], ev["app_id"], ev["developer_id"] = c["key"], c["app"], c["dev"]
            sub = c["subs"].get(api)
            if sub and ev["reason"] != "not_subscribed":
                ev["plan_id"], ev["subscription_id"] = sub["plan_id"], sub["id"]
        w.events.append(ev)
        out.append(r.status)
    return out


def aggregate(events, bucket, dims, filters=None, lo=None, hi=None):
    """The rows a usage report must hold (latency aside), in report order."""
    acc = {}
    for e in events:
        if lo is not None and not lo <= e["t"] < hi:
            continue
        if filters and any(e[k] != v for k, v in filters.items()):
            continue
        b = month_start(e["t"]) if bucket == "month" else e["t"] - e["t"] % BUCKETS[bucket]
        k = (b,) + tuple(e[DIM_COL[d]] for d, _ in DIMS if d in dims)
        a = acc.setdefault(k, {"calls": 0, "billable_calls": 0, "errors_4xx": 0,
                               "errors_5xx": 0, "rejected_calls": 0,
                               "rejected_by_reason": dict.fromkeys(REASONS, 0),
                               "bytes_in": 0, "bytes_out": 0})
        a["calls"] += 1
        sc = e["status_class"]
        a["billable_calls"] += 1 if 1 <= sc <= 4 else 0
        a["errors_4xx"] += 1 if sc == 4 else 0
        a["errors_5xx"] += 1 if sc == 5 else 0
        a["rejected_calls"] += 1 if sc == 0 else 0
        if sc == 0:
            a["rejected_by_reason"][e["reason"]] += 1
        a["bytes_in"] += e["bytes_in"]
        a["bytes_out"] += e["bytes_out"]
    rows = []
    for k in sorted(acc):
        b = k[0]
        end = month_after(b) if bucket == "month" else b + BUCKETS[bucket]
        row = {"period_start": iso(b), "period_end": iso(end)}
        parts = ["usage", bucket, str(b)]
        # a filtered report's rows are other records: its filters are in the id
        for name in ("developer_id", "app_id", "key_id", "api_id", "plan_id", "subscription_id"):
            if filters and name in filters:
                parts += [name, str(filters[name])]
        if filters and "status_class" in filters:
            parts += ["status_class", str(filters["status_class"])]
        i = 1
        for d, col in DIMS:
            if d in dims:
                row[col] = k[i]
                parts += [d, str(k[i])]
                i += 1
        row.update(acc[k])
        row["record_id"] = record_id(*parts)
        rows.append(row)
    return rows


def strip_latency(rows):
    out = []
    for r in rows:
        r = dict(r)
        lat = r.pop("latency_ms", None)
        check(isinstance(lat, dict) and set(lat) == {"avg", "p50", "p95", "p99"},
              "latency_ms of a row: %r" % (lat,))
        for q in ("avg", "p50", "p95", "p99"):
            check(isinstance(lat[q], (int, float)) and 0 <= lat[q] <= 10000,
                  "latency %s %r" % (q, lat[q]))
        check(lat["p50"] <= lat["p95"] <= lat["p99"], "latency quantiles out of order: %r" % lat)
        out.append(r)
    return out


def usage_query(frm, to, gran, group_by=(), **filters):
    q = "from=%s&to=%s&granularity=%s" % (iso(frm), iso(to), gran)
    if group_by:
        q += "&group_by=" + ",".join(group_by)
    for k, v in filters.items():
        q += "&%s=%s" % (k, v)
    return q


def cli_usage_args(frm, to, gran, group_by=(), **filters):
    a = ["usage", "export", "--from", iso(frm), "--to", iso(to), "--granularity", gran]
    if group_by:
        a += ["--group-by", ",".join(group_by)]
    for k, v in filters.items():
        a += ["--" + k.replace("_", "-"), str(v)]
    return a


def get_usage(w, q, fmt="json", headers=None):
    r = api_get(w, "/usage?" + q + ("&format=csv" if fmt == "csv" else ""), headers)
    eq(r.status, 200, "GET /usage?%s (%s)" % (q, fmt), r)
    return r


def parse_csv(body, what):
    """RFC 4180 as sent: CRLF line ends only, a header row; rows as dicts."""
    check(body.endswith(b"\r\n"), "%s: the CSV does not end with CRLF" % what)
    eq(body.count(b"\n"), body.count(b"\r\n"), "%s: bare LF line ends" % what)
    eq(body.count(b"\r"), body.count(b"\r\n"), "%s: bare CR" % what)
    rows = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    check(rows and rows[0][0] == "record_id", "%s: no header row: %r" % (what, rows[:1]))
    hdr = rows[0]
    for r in rows[1:]:
        eq(len(r), len(hdr), "%s: fields in a row" % what)
    return hdr, [dict(zip(hdr, r)) for r in rows[1:]]


def usage_csv_as_json(hdr, rows, dims):
    """A usage CSV's rows in the JSON rows' shape (numbers as ints)."""
    want = ["record_id", "period_start", "period_end"] + \
        [col for d, col in DIMS if d in dims] + \
        ["calls", "billable_calls", "errors_4xx", "errors_5xx", "rejected_calls"] + \
        ["rejected_" + r for r in REASONS] + \
        ["bytes_in", "bytes_out", "latency_avg_ms", "latency_p50_ms", "latency_p95_ms",
         "latency_p99_ms"]
    eq(hdr, want, "CSV header")
    out = []
    for r in rows:
        o = {"record_id": r["record_id"], "period_start": r["period_start"],
             "period_end": r["period_end"]}
        for d, col in DIMS:
            if d in dims:
                o[col] = int(r[col]) if d == "status_class" else r[col]
        for c in ("calls", "billable_calls", "errors_4xx", "errors_5xx", "rejected_calls",
                  "bytes_in", "bytes_out"):
            o[c] = int(r[c])
        o["rejected_by_reason"] = {x: int(r["rejected_" + x]) for x in REASONS}
        o["latency_ms"] = {q: r["latency_%s_ms" % q] for q in ("avg", "p50", "p95", "p99")}
        out.append(o)
    return out


def json_latency_as_text(rows):
    out = []
    for r in rows:
        r = dict(r)
        r["latency_ms"] = {k: "%.3f" % v for k, v in r["latency_ms"].items()}
        out.append(r)
    return out


# =================================================================================
# Group "reports"
# =================================================================================

OCT = utc(2026, 10, 14, 10, 0, 0)  # the closed month's traffic (the gateway's clock)
OCT_PERIOD = "2026-10"
SEPT = utc(2026, 9, 15)            # when the subscriptions were "created"

PLANS = {  # slug: (api, fields)
    "basic": ("pets", {"monthly_fee_minor": 1000, "included_calls": 5,
                       "overage_price_micros": 1500000, "currency": "USD"}),
    "pro": ("pets", {"monthly_fee_minor": 4999, "included_calls": 100,
                     "overage_price_micros": 2000, "currency": "USD"}),
    "tiny": ("pets", {"rate_per_minute": 3, "monthly_fee_minor": 0, "included_calls": 0,
                      "overage_price_micros": 333333, "currency": "USD"}),
    "gated": ("pets", {"requires_approval": True, "monthly_fee_minor": 700,
                       "included_calls": 0, "overage_price_micros": 0, "currency": "USD"}),
    "metered": ("birds", {"monthly_fee_minor": 0, "included_calls": 0,
                          "overage_price_micros": 2500, "currency": "EUR"}),
    "flat": ("birds", {"monthly_fee_minor": 250, "included_calls": 1000,
                       "overage_price_micros": 1000, "currency": "GBP"}),
}


def make_client(w, who, email, app_name, subs, keys=1, dev=None):
    """An app with subscriptions {api: plan slug} and `keys` keys; who -> the
    first key (who2, who3... the others)."""
    pol = w.pol
    d = dev or pol.developer(email)
    a = pol.app(d, app_name)
    sub_rows = {}
    for api, plan in subs.items():
        s = pol.subscribe(a, api, w.plans[plan])
        sub_rows[api] = {"id": s["id"], "plan_id": w.plans[plan]["id"], "plan": plan,
                         "status": s["status"]}
    names = [who] + ["%s%d" % (who, i + 2) for i in range(keys - 1)]
    for n in names:
        k = pol.key(a)
        w.who[n] = {"key": k["id"], "text": k["key"], "app": a["id"], "dev": d["id"],
                    "email": d["email"], "subs": sub_rows}
    return d


def setup_reports(w):
    from test_gateway_keys import Policy
    with open(w.config, "w") as f:
        # one compaction at the server's start, none in the middle of the checks
        f.write("usage_compact_interval = 1h\n")
    w.boot_admin()
    u1 = w.upstream("u1")
    w.add_api("pets", "/pets", [(u1.url, 100)], auth_mode="key", passive_failures=0)
    w.add_api("birds", "/birds", [(u1.url + "/b", 100)], auth_mode="key", passive_failures=0)
    w.pol = Policy(w)
    w.plans = {}
    for slug, (api, fields) in PLANS.items():
        w.plans[slug] = w.pol.plan(api, slug, **fields)
    w.who = {}
    w.events = []
    alice = make_client(w, "alice", "alice@example.com", "alice-web", {"pets": "basic"}, keys=2)
    make_client(w, "alice_b", None, "alice-birds", {"birds": "metered"}, dev=alice)
    bob = make_client(w, "bob", "bob@example.com", "bob-app", {"pets": "pro"})
    make_client(w, "bob_g", None, "bob-gated", {"pets": "gated"}, dev=bob)
    make_client(w, "carol", "carol@example.com", "carol-app", {"pets": "tiny", "birds": "flat"})
    make_client(w, "dave", "dave@example.com", "dave-app", {"pets": "pro"})       # never calls
    make_client(w, "erin", "erin@example.com", "erin-app", {"pets": "basic"})     # cancelled later
    make_client(w, "frank", "frank@example.com", "frank-app", {"pets": "pro"})    # gone in Sept
    eq(w.who["bob_g"]["subs"]["pets"]["status"], "pending", "a gated plan's subscription")
    w.admin("POST", "/subscriptions/%s/cancel" % w.who["frank"]["subs"]["pets"]["id"])
    # Backdate: every subscription existed in September (carol's birds one
    # excepted: it begins now); frank's was cancelled on Sept 20.
    db = sqlite3.connect(w.db, timeout=10)
    try:
        for c in w.who.values():
            for api, s in c["subs"].items():
                if c["app"] == w.who["carol"]["app"] and api == "birds":
                    continue
                db.execute("UPDATE subscriptions SET created_at = ? WHERE id = ?", (SEPT, s["id"]))
        db.execute("UPDATE subscriptions SET updated_at = ? WHERE id = ?",
                   (utc(2026, 9, 20), w.who["frank"]["subs"]["pets"]["id"]))
        db.commit()
        for c in w.who.values():
            for s in c["subs"].values():
                s["created"], = db.execute("SELECT created_at FROM subscriptions WHERE id = ?",
                                           (s["id"],)).fetchone()
    finally:
        db.close()
    now = int(time.time())
    w.today = now - now % 86400
    w.n1 = w.today - 2 * 86400 + 23 * 3600  # 23:00 the day before yesterday
    w.n2 = w.today - 86400                  # 00:00 yesterday
    w.gw_runs = 0


def run_gateway(w, clock, traffic):
    """Start the gateway with its clock at `clock` (a minute start; None: the
    real clock), run the traffic, stop it with SIGTERM (exit 0 checked); all
    inside that minute."""
    w.start_gateway("--gateway-workers", "2", "--metering-interval", "200ms",
                    "--gateway-auth-failures", "0",
                    env={"TOLLGATE_TEST_NOW": str(clock * 1000)} if clock else None)
    t0 = time.monotonic()
    gw = Gw(w)
    try:
        traffic(gw)
    finally:
        gw.close()
    check(time.monotonic() - t0 < 45, "the traffic took too long to stay in one minute")
    w.stop_gateway()
    w.gw = None


def traffic_october(w, gw):
    m = OCT
    # alice's two keys share one subscription (basic: 5 included, 1.5 per extra call)
    s = lambda who, api, path, key, n=1, expect=None: send(w, gw, m, who, api, path, key, n,
                                                          expect)
    s("alice", "pets", "/pets/status/200", w.who["alice"]["text"], 3, 200)
    s("alice", "pets", "/pets/status/201", w.who["alice"]["text"], 1, 201)
    s("alice", "pets", "/pets/status/204", w.who["alice"]["text"], 1, 204)
    s("alice", "pets", "/pets/status/302", w.who["alice"]["text"], 1, 302)
    s("alice", "pets", "/pets/status/404", w.who["alice"]["text"], 1, 404)
    s("alice", "pets", "/pets/status/500", w.who["alice"]["text"], 2, 500)
    s("alice", "pets", "/pets/status/503", w.who["alice"]["text"], 1, 503)
    s("alice2", "pets", "/pets/echo", w.who["alice2"]["text"], 1, 200)
    s("alice2", "pets", "/pets/status/502", w.who["alice2"]["text"], 1, 502)
    # 8 billable for alice-web: overage 3 x 1.5 = 4.5 -> 5 (half up)
    # alice's birds app: 200 calls at 2500 micros = 0.5 -> 1 (half up)
    s("alice_b", "birds", "/birds/status/200", w.who["alice_b"]["text"], 200, 200)
    s("bob", "pets", "/pets/echo", w.who["bob"]["text"], 5, 200)
    s("bob", "birds", "/birds/echo", w.who["bob"]["text"], 1, 403)      # not subscribed
    s("bob_g", "pets", "/pets/echo", w.who["bob_g"]["text"], 2, 403)    # pending
    st = s("carol", "pets", "/pets/status/200", w.who["carol"]["text"], 5)
    eq(st, [200, 200, 200, 429, 429], "tiny plan: 3 a minute")
    s("erin", "pets", "/pets/status/200", w.who["erin"]["text"], 2, 200)
    s(None, "pets", "/pets/echo", None, 2, 401)                          # missing key
    s(None, "birds", "/birds/echo", None, 1, 401)
    s(None, "pets", "/pets/echo", unknown_key(), 2, 401)                 # invalid key
    s(None, "birds", "/birds/echo", unknown_key(), 1, 401)


def traffic_recent(w, gw, minute, variant):
    s = lambda who, api, path, key, n=1, expect=None: send(w, gw, minute, who, api, path, key, n,
                                                          expect)
    s("alice", "pets", "/pets/status/200", w.who["alice"]["text"], 2 + variant, 200)
    s("alice2", "pets", "/pets/status/500", w.who["alice2"]["text"], 1, 500)
    s("alice_b", "birds", "/birds/status/201", w.who["alice_b"]["text"], 3, 201)
    s("bob", "pets", "/pets/status/404", w.who["bob"]["text"], 1 + variant, 404)
    s("bob", "pets", "/pets/status/301", w.who["bob"]["text"], 1, 301)
    s("bob_g", "pets", "/pets/echo", w.who["bob_g"]["text"], 1, 403)
    st = s("carol", "pets", "/pets/echo", w.who["carol"]["text"], 4)
    eq(st, [200, 200, 200, 429], "tiny plan: 3 a minute")
    s("carol", "birds", "/birds/status/418", w.who["carol"]["text"], 2, 418)
    s(None, "pets", "/pets/status/200", None, 1, 401)
    s(None, "birds", "/birds/echo", unknown_key(), 1 + variant, 401)


@server_test
def test_traffic_in_a_closed_month(w):
    u0 = w.ups["u1"].count()
    n0 = len(w.events)
    run_gateway(w, OCT, lambda gw: traffic_october(w, gw))
    sent = w.events[n0:]
    fwd = sum(1 for e in sent if e["status_class"] > 0)
    eq(w.ups["u1"].count() - u0, fwd, "requests the upstream received")
    eq(ledger(w, "SELECT sum(calls) FROM usage_rollups WHERE granularity = 60 AND "
                 "period_start = ?", (OCT,))[0][0], len(sent),
       "calls the gateway wrote for 2026-10-14T10:00 after SIGTERM")


@server_test
def test_traffic_in_the_last_days(w):
    """23:00 the day before yesterday and 00:00 yesterday (two hours, two
    days), then 00:00 today and now on the real clock: today's day bucket is
    served partly by hour rows (the hours the server's compactor passed),
    partly by minute rows (the current hour)."""
    u0 = w.ups["u1"].count()
    n0 = len(w.events)
    run_gateway(w, w.n1, lambda gw: traffic_recent(w, gw, w.n1, 0))
    run_gateway(w, w.n2, lambda gw: traffic_recent(w, gw, w.n2, 1))
    sent = w.events[n0:]
    got = ledger(w, "SELECT sum(calls) FROM usage_rollups WHERE granularity = 60 AND "
                    "period_start IN (?, ?)", (w.n1, w.n2))[0][0]
    eq(got, len(sent), "calls the gateway wrote for the two minutes")
    run_gateway(w, w.today, lambda gw: traffic_recent(w, gw, w.today, 2))
    n3 = len(w.events)
    left = 86400 - time.time() % 86400
    if left < 20:
        time.sleep(left + 1)  # keep the real-clock traffic on one day
    run_gateway(w, None, lambda gw: traffic_recent(w, gw, None, 0))
    days = {e["t"] - e["t"] % 86400 for e in w.events[n3:]}
    eq(len(days), 1, "days the real-clock traffic fell on")
    sent = w.events[n0:]
    eq(w.ups["u1"].count() - u0, sum(1 for e in sent if e["status_class"] > 0),
       "requests the upstream received")
    eq(ledger(w, "SELECT sum(calls) FROM usage_rollups WHERE granularity = 60 AND "
                 "period_start >= ?", (w.n1,))[0][0], len(sent), "minute rows since the 23:00")


# Report shapes checked: (group_by, filters) over the whole range.
def shapes(w):
    return [
        (("app",), {}),
        (("developer",), {}),
        (("api", "status_class"), {}),
        (("key",), {}),
        ((), {}),
        (("app", "status_class"), {"api_id": w.apis["pets"]["api"]["id"]}),
        (("key",), {"app_id": w.who["alice"]["app"]}),
        (("developer", "api"), {"status_class": 0}),
        (("subscription",), {"status_class": 2}),
    ]


def full_range(w):
    last = max(e["t"] for e in w.events)
    return utc(2026, 10, 1), last - last % 86400 + 86400


@server_test
def test_usage_json_is_exact(w):
    frm, to = full_range(w)
    for gran in ("day", "month"):
        for dims, filt in shapes(w):
            if gran == "month" and len(dims) > 1:
                continue
            q = usage_query(frm if gran == "day" else month_start(frm),
                            to if gran == "day" else month_after(to - 1), gran, dims, **filt)
            r = get_usage(w, q)
            eq(r.header("Content-Type"), "application/json", "JSON type", r)
            j = r.json
            check(isinstance(j, dict) and set(j) == {"report", "rows"}, "JSON report shape", r)
            rep = j["report"]
            eq((rep.get("kind"), rep.get("granularity"), rep.get("group_by")),
               ("usage", gran, [d for d, _ in DIMS if d in dims]), "report parameters", r)
            eq(rep.get("filters"), filt, "report filters", r)
            want = aggregate(w.events, gran, dims, filt,
                             frm if gran == "day" else month_start(frm),
                             to if gran == "day" else month_after(to - 1))
            got = strip_latency(j["rows"])
            check(len(want) > 0, "the model predicts no rows for %s" % q)
            if got != want:
                diff = [(a, b) for a, b in zip(got, want) if a != b][:2]
                raise Failure("GET /usage?%s: %d rows, expected %d; first differences "
                              "(got, expected): %s" % (q, len(got), len(want),
                                                        json.dumps(diff, indent=1)))


@server_test
def test_usage_csv_equals_json(w):
    frm, to = full_range(w)
    for dims, filt in shapes(w):
        q = usage_query(frm, to, "day", dims, **filt)
        rj = get_usage(w, q)
        rc = get_usage(w, q, "csv")
        eq(rc.header("Content-Type"), CSV_TYPE, "CSV Content-Type", rc)
        cd = rc.header("Content-Disposition") or ""
        check(cd.startswith("attachment") and ".csv" in cd, "CSV Content-Disposition %r" % cd)
        hdr, rows = parse_csv(rc.body, "GET /usage?" + q)
        got = usage_csv_as_json(hdr, rows, dims)
        want = json_latency_as_text(rj.json["rows"])
        eq(got, want, "CSV rows = JSON rows for %s" % q)
        # Accept: text/csv without format= is the same CSV
        ra = get_usage(w, q, headers={"Accept": "text/csv"})
        eq(ra.header("Content-Type"), CSV_TYPE, "Accept: text/csv", ra)
        eq(ra.body, rc.body, "Accept: text/csv body = format=csv body")
        # a second export: the same record_ids (and here the same bytes)
        eq(get_usage(w, q, "csv").body, rc.body, "a second CSV export of %s" % q)


@server_test
def test_cli_usage_export_equals_api(w):
    frm, to = full_range(w)
    for i, (dims, filt) in enumerate(shapes(w)[:6]):
        q = usage_query(frm, to, "day", dims, **filt)
        args = cli_usage_args(frm, to, "day", dims, **filt)
        api_json = get_usage(w, q).body
        api_csv = get_usage(w, q, "csv").body
        cli_json = cli_file(w, "u%d.json" % i, *args)
        cli_csv = cli_file(w, "u%d.csv" % i, *(args + ["--format", "csv"]))
        eq(cli_json, api_json, "tollgate %s (JSON) = GET /usage" % " ".join(args))
        eq(cli_csv, api_csv, "tollgate %s --format csv = GET /usage&format=csv" % " ".join(args))
        ids_json = [r["record_id"] for r in json.loads(cli_json)["rows"]]
        ids_csv = [r["record_id"] for r in parse_csv(cli_csv, "CLI CSV")[1]]
        eq(ids_csv, ids_json, "record_ids of the CLI's CSV and JSON")
        check(len(set(ids_json)) == len(ids_json), "record_ids repeat in one report")
    # stdout as well as --output
    out, _ = cli_ok(w, *cli_usage_args(frm, to, "day", ("app",), format="csv"))
    eq(out, get_usage(w, usage_query(frm, to, "day", ("app",)), "csv").body,
       "tollgate usage export to stdout")


def totals(rows):
    keys = ("calls", "billable_calls", "errors_4xx", "errors_5xx", "rejected_calls", "bytes_in",
            "bytes_out")
    t = dict.fromkeys(keys, 0)
    t["rejected_by_reason"] = dict.fromkeys(REASONS, 0)
    for r in rows:
        for k in keys:
            t[k] += r[k]
        for k in REASONS:
            t["rejected_by_reason"][k] += r["rejected_by_reason"][k]
    return t


def granularity_ranges(w):
    frm, to = w.today - 2 * 86400, w.today
    return {"minute": (frm, to), "hour": (frm, to), "day": (frm, to),
            "month": (month_start(frm), month_after(to - 1))}


def granularity_totals(w, via_cli=False):
    """{granularity: (totals, per key and class totals, rows)} by key and
    status class over the recent days (the month report: their months)."""
    out = {}
    for gran, (a, b) in granularity_ranges(w).items():
        if via_cli:
            rows = json.loads(cli_ok(w, *cli_usage_args(a, b, gran, ("key", "status_class")))[0])[
                "rows"]
        else:
            rows = get_usage(w, usage_query(a, b, gran, ("key", "status_class"))).json["rows"]
        per = {}
        for r in rows:
            per.setdefault((r["key_id"], r["status_class"]), []).append(r)
        out[gran] = (totals(rows), {k: totals(v) for k, v in per.items()}, len(rows))
    return out


def model_totals(w):
    out = {}
    for gran, (a, b) in granularity_ranges(w).items():
        evs = [e for e in w.events if a <= e["t"] < b]
        per = {}
        for e in evs:
            per.setdefault((e["key_id"], e["status_class"]), []).append(e)
        out[gran] = (totals(aggregate(evs, "minute", ())),
                     {k: totals(aggregate(v, "minute", ())) for k, v in per.items()})
    return out


@server_test
def test_granularities_agree_through_compaction(w):
    """Minute, hour, day and month reports of the same traffic give the same
    totals (all of them, per key and status class too), before and after
    `tollgate usage compact`, from the API and the CLI; the ledger's hour
    and day rows are each the sum of the rows below them."""
    lo = w.today - 2 * 86400
    want = model_totals(w)
    eq(want["minute"], want["day"], "the model: minute = day over the same range")
    before = granularity_totals(w)
    for gran, (tot, per, n) in before.items():
        eq(tot, want[gran][0], "%s report totals before compaction" % gran)
        eq(per, want[gran][1], "%s report per key and class before compaction" % gran)
    eq(before["hour"][2], before["minute"][2], "rows: the traffic is one minute in each hour")
    eq(before["day"][2], before["minute"][2], "rows: the traffic is one hour in each day")
    out, err = cli_ok(w, "usage", "compact")
    check("compacted" in err, "tollgate usage compact says what it did: %r" % err)
    for via_cli in (False, True):
        after = granularity_totals(w, via_cli)
        for gran, (tot, per, n) in after.items():
            eq(tot, want[gran][0], "%s report totals after compaction%s"
               % (gran, " (CLI)" * via_cli))
            eq(per, want[gran][1], "%s report per key and class after compaction" % gran)
    # the ledger: hour and day rows, each the sum of the rows below it
    gs = dict(ledger(w, "SELECT granularity, count(*) FROM usage_rollups GROUP BY granularity"))
    check(gs.get(3600, 0) > 0 and gs.get(86400, 0) > 0,
          "the ledger has hour and day rows after compaction: %r" % gs)
    for g, below in ((3600, 60), (86400, 3600)):
        bad = ledger(w, """
            SELECT u.period_start, u.key_id, u.status_class, u.reason, u.calls, u.bytes_out,
                   (SELECT sum(calls) FROM usage_rollups d WHERE d.granularity = ?2
                      AND d.period_start >= u.period_start AND d.period_start < u.period_start + ?1
                      AND d.key_id = u.key_id AND d.api_id = u.api_id AND d.plan_id = u.plan_id
                      AND d.status_class = u.status_class AND d.reason = u.reason),
                   (SELECT sum(bytes_out) FROM usage_rollups d WHERE d.granularity = ?2
                      AND d.period_start >= u.period_start AND d.period_start < u.period_start + ?1
                      AND d.key_id = u.key_id AND d.api_id = u.api_id AND d.plan_id = u.plan_id
                      AND d.status_class = u.status_class AND d.reason = u.reason)
            FROM usage_rollups u WHERE u.granularity = ?1 AND u.period_start >= ?3""",
                     (g, below, lo))
        bad = [b for b in bad if (b[4], b[5]) != (b[6], b[7])]
        eq(bad, [], "granularity %d rows that are not the sum of the %d rows below" % (g, below))
    n = ledger(w, "SELECT count(*) FROM usage_rollups WHERE granularity = 3600 AND "
                  "period_start IN (?, ?)", (w.n1 - w.n1 % 3600, w.n2 - w.n2 % 3600))[0][0]
    check(n > 0, "hour rows of the recent traffic")
    wm = dict(ledger(w, "SELECT key, value FROM meta WHERE key LIKE 'usage.compacted.%'"))
    check(int(wm.get("usage.compacted.3600", -1)) > w.n2 and
          int(wm.get("usage.compacted.86400", -1)) > w.n2,
          "compaction watermarks past the traffic: %r" % wm)


# ---- billing -------------------------------------------------------------------------

def billing_lines(w, period_start, period_end, plan_over=None):
    """The statement the rules of core/report.h give for the month."""
    plan_over = plan_over or {}
    billable = {}  # (subscription, plan id) -> calls: each plan's calls at its own price
    for e in w.events:
        if period_start <= e["t"] < period_end and 1 <= e["status_class"] <= 4:
            k = (e["subscription_id"], e["plan_id"])
            billable[k] = billable.get(k, 0) + 1
    slug_of = {pl["id"]: slug for slug, pl in w.plans.items()}
    seen = {}
    for c in w.who.values():
        for api, s in c["subs"].items():
            seen[s["id"]] = (c, api, s)
    lines = []
    for sid, (c, api, s) in seen.items():
        created = s["created"]
        status = s["status"]
        cancelled_before = status == "cancelled" and s.get("cancelled_at", 0) < period_start
        charged = status != "pending" and created < period_end and not cancelled_before
        plans = {pid: n for (sub, pid), n in billable.items() if sub == sid}
        if charged:
            plans.setdefault(s["plan_id"], 0)  # the current plan carries the fee
        for pid, n in plans.items():
            slug = slug_of[pid]
            _, fields = PLANS[slug]
            fields = dict(fields, **plan_over.get(slug, {}))
            fee = fields["monthly_fee_minor"] if charged and pid == s["plan_id"] else 0
            over = max(0, n - fields["included_calls"])
            price = fields["overage_price_micros"]
            amount_over = (over * price + 500000) // 1000000
            lines.append({"developer_id": c["dev"], "developer_email": c["email"],
                          "billing_customer_id": "", "app_id": c["app"], "subscription_id": sid,
                          "api": api, "plan_id": pid, "plan": slug,
                          "subscription_status": status, "monthly_fee_minor": fee,
                          "included_calls": fields["included_calls"], "billable_calls": n,
                          "overage_calls": over, "price_per_call_micros": price,
                          "overage_amount_minor": amount_over, "amount_minor": fee + amount_over,
                          "currency": fields["currency"]})
    lines.sort(key=lambda ln: (ln["developer_id"], ln["subscription_id"], ln["plan_id"]))
    return lines


def with_totals(period, lines):
    """Lines in output order: each developer's lines, then a total per currency."""
    out = []
    i = 0
    while i < len(lines):
        dev = lines[i]["developer_id"]
        j = i
        while j < len(lines) and lines[j]["developer_id"] == dev:
            j += 1
        for ln in lines[i:j]:
            o = {"record_id": record_id("billing", period, "subscription", dev,
                                        ln["subscription_id"], ln["plan_id"]),
                 "period": period, "line_type": "subscription"}
            o.update(ln)
            out.append(o)
        currencies = []
        for ln in lines[i:j]:
            if ln["currency"] not in currencies:
                currencies.append(ln["currency"])
        for cur in currencies:
            mine = [ln for ln in lines[i:j] if ln["currency"] == cur]
            t = {"record_id": record_id("billing", period, "total", dev, cur, ""),
                 "period": period, "line_type": "total", "developer_id": dev,
                 "developer_email": lines[i]["developer_email"], "billing_customer_id": ""}
            for f in ("monthly_fee_minor", "billable_calls", "overage_calls",
                      "overage_amount_minor", "amount_minor"):
                t[f] = sum(ln[f] for ln in mine)
            t["currency"] = cur
            out.append(t)
        i = j
    return out


BILL_COLS = ["record_id", "period", "line_type", "developer_id", "developer_email",
             "billing_customer_id", "app_id", "subscription_id", "api", "plan_id", "plan",
             "subscription_status", "monthly_fee_minor", "included_calls", "billable_calls",
             "overage_calls", "price_per_call_micros", "overage_amount_minor", "amount_minor",
             "currency"]
BILL_INTS = {"monthly_fee_minor", "included_calls", "billable_calls", "overage_calls",
             "price_per_call_micros", "overage_amount_minor", "amount_minor"}


def billing_csv_as_json(body, period, what):
    hdr, rows = parse_csv(body, what)
    eq(hdr, BILL_COLS, "%s: billing CSV header" % what)
    out = []
    for r in rows:
        eq(r["period"], period, "%s: period column" % what)
        o = {}
        for c in BILL_COLS:
            if r[c] == "" and r["line_type"] == "total" and c not in ("billing_customer_id",):
                continue
            o[c] = int(r[c]) if c in BILL_INTS else r[c]
        out.append(o)
    return out


def get_billing(w, period, fmt="json"):
    r = api_get(w, "/billing?period=%s%s" % (period, "&format=csv" if fmt == "csv" else ""))
    eq(r.status, 200, "GET /billing?period=%s (%s)" % (period, fmt), r)
    eq(r.header("Content-Type"), CSV_TYPE if fmt == "csv" else "application/json",
       "billing Content-Type", r)
    return r


def check_statement(w, period, start, end, closed, plan_over=None):
    want = with_totals(period, billing_lines(w, start, end, plan_over))
    rj = get_billing(w, period)
    j = rj.json
    eq(j["report"], {"kind": "billing", "period": period, "from": iso(start), "to": iso(end),
                     "closed": closed}, "billing report header", rj)
    if j["lines"] != want:
        diff = [(a, b) for a, b in zip(j["lines"], want) if a != b][:2]
        raise Failure("GET /billing?period=%s: %d lines, expected %d; first differences (got, "
                      "expected): %s" % (period, len(j["lines"]), len(want),
                                         json.dumps(diff, indent=1)))
    rc = get_billing(w, period, "csv")
    eq(billing_csv_as_json(rc.body, period, "billing CSV"), want, "billing CSV = expected lines")
    return rj.body, rc.body


@server_test
def test_billing_closed_month(w):
    # erin cancels now (after October): still billed for October
    sub = w.who["erin"]["subs"]["pets"]
    w.admin("POST", "/subscriptions/%s/cancel" % sub["id"])
    sub["status"] = "cancelled"
    sub["cancelled_at"] = int(time.time())
    fr = w.who["frank"]["subs"]["pets"]
    fr["status"] = "cancelled"
    fr["cancelled_at"] = utc(2026, 9, 20)
    start, end = utc(2026, 10, 1), utc(2026, 11, 1)
    lines = billing_lines(w, start, end)
    by_sub = {ln["subscription_id"]: ln for ln in lines}
    # the figures this suite is about, spelled out
    a = by_sub[w.who["alice"]["subs"]["pets"]["id"]]
    eq((a["billable_calls"], a["overage_calls"], a["overage_amount_minor"], a["amount_minor"]),
       (8, 3, 5, 1005), "alice's basic plan: 3 x 1.5 = 4.5 rounds half up to 5 (the model)")
    b = by_sub[w.who["alice_b"]["subs"]["birds"]["id"]]
    eq((b["overage_calls"], b["overage_amount_minor"]), (200, 1), "200 x 0.0025 = 0.5 -> 1")
    check(w.who["bob_g"]["subs"]["pets"]["id"] not in by_sub, "a pending subscription billed")
    check(w.who["frank"]["subs"]["pets"]["id"] not in by_sub, "cancelled in September, billed")
    check(w.who["carol"]["subs"]["birds"]["id"] not in by_sub, "begun after October, billed")
    eq(by_sub[w.who["dave"]["subs"]["pets"]["id"]]["amount_minor"], 4999,
       "dave's fee without a call")
    w.oct_json, w.oct_csv = check_statement(w, OCT_PERIOD, start, end, True)
    # rejected calls are never billed: carol made 5 calls, 2 were rate limited
    carol = w.who["carol"]["subs"]["pets"]["id"]
    rows = get_usage(w, usage_query(start, end, "month", ("subscription",),
                                    subscription_id=carol)).json["rows"]
    eq([(r["calls"], r["rejected_calls"], r["billable_calls"]) for r in rows], [(5, 2, 3)],
       "carol's October usage")
    eq(by_sub[carol]["billable_calls"], 3, "carol's billable calls (the model)")
    w.oct_cli_json = cli_file(w, "oct.json", "billing", "export", "--period", OCT_PERIOD)
    w.oct_cli_csv = cli_file(w, "oct.csv", "billing", "export", "--period", OCT_PERIOD,
                             "--format", "csv")
    eq(w.oct_cli_json, w.oct_json, "tollgate billing export (JSON) = GET /billing")
    eq(w.oct_cli_csv, w.oct_csv, "tollgate billing export --format csv = GET /billing CSV")
    kept = ledger(w, "SELECT period FROM billing_statements")
    eq(kept, [(OCT_PERIOD,)], "kept statements")


def current_month():
    now = int(time.time())
    return time.strftime("%Y-%m", time.gmtime(now)), month_start(now), month_after(now)


@server_test
def test_billing_open_month_is_live(w):
    period, start, end = current_month()
    j, c = check_statement(w, period, start, end, False)
    eq(ledger(w, "SELECT count(*) FROM billing_statements WHERE period = ?", (period,))[0][0], 0,
       "an open month kept")
    eq(cli_file(w, "cur.json", "billing", "export", "--period", period), j,
       "CLI = API for the open month")


@server_test
def test_closed_month_unchanged_by_price_change(w):
    plan = w.plans["basic"]
    r = api_get(w, "/plans/%s" % plan["id"])
    eq(r.status, 200, "GET the plan", r)
    etag = r.header("ETag")
    check(etag and etag.startswith('"v'), "the plan's ETag %r" % etag)
    change = {"overage_price_micros": 3000000, "monthly_fee_minor": 2000, "included_calls": 1}
    stale = api_req(w, "PATCH", "/plans/%s" % plan["id"], change,
                    {"Content-Type": "application/merge-patch+json", "If-Match": '"v999"'})
    problem(stale, 412, "PATCH with a stale If-Match")
    r = api_req(w, "PATCH", "/plans/%s" % plan["id"], change,
                {"Content-Type": "application/merge-patch+json", "If-Match": etag})
    eq(r.status, 200, "PATCH /plans/{id}", r)
    eq(r.json["overage_price_micros"], 3000000, "the new price")
    # the closed month: byte for byte what was first exported, API and CLI
    eq(get_billing(w, OCT_PERIOD).body, w.oct_json, "October (JSON) after the price change")
    eq(get_billing(w, OCT_PERIOD, "csv").body, w.oct_csv, "October (CSV) after the price change")
    eq(cli_file(w, "oct2.json", "billing", "export", "--period", OCT_PERIOD), w.oct_cli_json,
       "October from the CLI after the price change")
    eq(cli_file(w, "oct2.csv", "billing", "export", "--period", OCT_PERIOD, "--format", "csv"),
       w.oct_cli_csv, "October CSV from the CLI after the price change")
    # the open month follows the new price at once
    period, start, end = current_month()
    check_statement(w, period, start, end, False, {"basic": change})


@server_test
def test_bad_parameters(w):
    cases = [("/usage?from=2026-10-01&to=2026-11-01&granularity=week", "granularity"),
             ("/usage?from=2026-10-01&to=2026-11-01&app_id=app_00000000000000000000000000",
              "app_id"),
             ("/usage?from=2026-10-01&to=2026-11-01&status_class=6", "status_class"),
             ("/usage?from=2026-10-01T00:00:00Z&to=2026-10-01T12:00:00Z&granularity=day", "to"),
             ("/billing?period=2026-1", "period")]
    for path, field in cases:
        j = problem(api_get(w, path), 400, "GET " + path, "invalid-query")
        eq([e.get("pointer") for e in j.get("errors", [])], [field], "GET %s names" % path)
    rc, out, err = cli_run(w, "usage", "export", "--from", "2026-10-01", "--to", "2026-11-01",
                           "--granularity", "week")
    check(rc != 0 and "granularity" in err and out == b"",
          "CLI bad granularity: exit %d, stderr %r" % (rc, err))


@server_test
def test_retention_gives_422(w):
    frm, to = w.today - 2 * 86400, w.today
    q = usage_query(frm, to, "minute")
    eq(get_usage(w, q).status, 200, "minute report before retention")
    want = totals(aggregate([e for e in w.events if frm <= e["t"] < to], "minute", ()))
    _, err = cli_ok(w, "usage", "compact", settings=["--usage-keep-minutes", "1h"])
    check("removed" in err, "compact output: %r" % err)
    left = ledger(w, "SELECT count(*) FROM usage_rollups WHERE granularity = 60 AND "
                     "period_start < ?", (int(time.time()) - 7200,))[0][0]
    eq(left, 0, "minute rows older than the kept hour")
    r = api_get(w, "/usage?" + q)
    j = problem(r, 422, "a minute report over removed minutes", "range-not-available")
    check("retention" in j.get("detail", ""), "the 422 says why: %r" % j.get("detail"), r)
    rc, out, err = cli_run(w, *cli_usage_args(frm, to, "minute"))
    check(rc != 0 and out == b"" and "retention" in err,
          "CLI minute export over removed minutes: exit %d %r" % (rc, err))
    # hours still serve the same range, exactly
    eq(totals(get_usage(w, usage_query(frm, to, "hour")).json["rows"]), want,
       "hour report after the minutes were removed")


def teardown_reports(w):
    pass  # every gateway run was stopped (SIGTERM, exit 0) by its test


REPORT_TESTS = [test_traffic_in_a_closed_month, test_traffic_in_the_last_days,
                test_usage_json_is_exact, test_usage_csv_equals_json,
                test_cli_usage_export_equals_api, test_granularities_agree_through_compaction,
                test_billing_closed_month, test_billing_open_month_is_live,
                test_closed_month_unchanged_by_price_change, test_bad_parameters,
                test_retention_gives_422]

# =================================================================================
# Group "stream": 200,000 minute rows, compacted by the server, streamed as CSV
# =================================================================================

SEED_KEYS = 100
SEED_MINUTES = 2000


def seed_ids(i):
    return tuple("%s_%060d" % (p, i) for p in ("key", "app", "dev", "api", "pln", "sub"))


def setup_stream(w):
    w.cli("migrate")
    now = int(time.time())
    w.seed_from = now - now % 86400 - 2 * 86400
    rows = []
    total = 0
    for m in range(SEED_MINUTES):
        t = w.seed_from + 60 * m
        for k in range(SEED_KEYS):
            calls = 1 + (m + k) % 3
            total += calls
            h = [0] * 15
            h[(m * 7 + k) % 15] = calls
            rows.append((60, t) + seed_ids(k) + (2, "", calls, 100 * calls, 1000 * calls,
                                                 2000 * calls) + tuple(h))
    w.seed_total = total
    db = sqlite3.connect(w.db, timeout=10)
    try:
        db.executemany(
            "INSERT INTO usage_rollups (granularity, period_start, key_id, app_id, developer_id, "
            "api_id, plan_id, subscription_id, status_class, reason, calls, bytes_in, bytes_out, "
            "latency_us_sum, h00, h01, h02, h03, h04, h05, h06, h07, h08, h09, h10, h11, h12, "
            "h13, h14) VALUES (%s)" % ",".join("?" * 29), rows)
        db.commit()
    finally:
        db.close()
    w.boot_admin()
    # the server's compactor starts at once and catches up from the first minute row
    ready = (now - 60) // 60 * 60
    want_h = ready - ready % 3600
    deadline = time.monotonic() + 60
    while True:
        wm = dict(ledger(w, "SELECT key, value FROM meta WHERE key LIKE 'usage.compacted.%'"))
        h = int(wm.get("usage.compacted.3600", -1))
        d = int(wm.get("usage.compacted.86400", -1))
        if h >= want_h and d >= want_h - want_h % 86400:
            break
        check(time.monotonic() < deadline, "the server did not compact the seeded rows: %r" % wm)
        time.sleep(0.1)


@server_test
def test_server_compacted_the_seeded_minutes(w):
    frm, to = w.seed_from, w.seed_from + 2 * 86400
    gs = dict(ledger(w, "SELECT granularity, count(*) FROM usage_rollups GROUP BY granularity"))
    hours = (SEED_MINUTES * 60 + 3599) // 3600
    eq(gs.get(60), SEED_KEYS * SEED_MINUTES, "minute rows")
    eq(gs.get(3600), SEED_KEYS * hours, "hour rows made by compaction")
    wd = int(dict(ledger(w, "SELECT key, value FROM meta"))["usage.compacted.86400"])
    days = sum(1 for d in (frm, frm + 86400) if d + 86400 <= wd)  # (both, unless 00:00-00:01)
    eq(gs.get(86400), SEED_KEYS * days, "day rows made by compaction")
    for gran in ("minute", "hour", "day"):
        rows = get_usage(w, usage_query(frm, to, gran)).json["rows"]
        eq(sum(r["calls"] for r in rows), w.seed_total, "%s report: calls" % gran)
        eq(sum(r["bytes_out"] for r in rows), 1000 * w.seed_total, "%s report: bytes_out" % gran)
        eq(len(rows), {"minute": SEED_MINUTES, "hour": hours, "day": 2}[gran], "%s rows" % gran)
    per_day = get_usage(w, usage_query(frm, to, "day", ("key",))).json["rows"]
    per_hour = get_usage(w, usage_query(frm, to, "hour", ("key",))).json["rows"]
    by_key = {}
    for r in per_hour:
        by_key[r["key_id"]] = by_key.get(r["key_id"], 0) + r["calls"]
    by_key_d = {}
    for r in per_day:
        by_key_d[r["key_id"]] = by_key_d.get(r["key_id"], 0) + r["calls"]
    eq(by_key_d, by_key, "calls per key: day rows = hour rows")
    eq(len(by_key), SEED_KEYS, "keys")


def vmrss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return 0


def stream_large(w, fmt):
    """GET the 200,000-row minute report (four 64-character dimensions) in
    fmt, read as it comes; tollgate-server's RSS is sampled throughout.
    Returns (bytes, rows, calls, MB the RSS grew above its level before)."""
    frm, to = w.seed_from, w.seed_from + 2 * 86400
    dims = ("developer", "app", "key", "api")
    pid = w.server.pid
    # warm up: the connection and statement paths the big report takes
    get_usage(w, usage_query(frm, frm + 3600, "minute", dims), fmt)
    rss0 = vmrss_kb(pid)
    mon = base.RssMonitor(pid)
    conn = http.client.HTTPConnection("127.0.0.1", w.admin_port, timeout=120)
    nbytes = rows = calls = 0
    try:
        conn.request("GET", "/usage?%s&format=%s" % (usage_query(frm, to, "minute", dims), fmt),
                     headers={"Authorization": "Bearer " + w.token})
        r = conn.getresponse()
        eq(r.status, 200, "the large report")
        eq(r.getheader("Transfer-Encoding"), "chunked", "Transfer-Encoding of a large report")
        check(r.getheader("Content-Length") is None, "a Content-Length on a streamed report")
        eq(r.getheader("Content-Type"), CSV_TYPE if fmt == "csv" else "application/json",
           "Content-Type")
        sep = b"\r\n" if fmt == "csv" else b',{"record_id"'
        tail = b""
        ci = None
        start = b""
        while True:
            piece = r.read(1 << 16)
            if not piece:
                break
            nbytes += len(piece)
            if len(start) < 64:
                start += piece[:64]
            data = tail + piece
            cut = data.rfind(sep)
            if cut < 0:
                tail = data
                continue
            block, tail = data[:cut], data[cut:]
            if fmt == "csv":
                tail = tail[2:]
                for ln in block.split(b"\r\n"):
                    if ci is None:
                        ci = ln.decode().split(",").index("calls")
                        continue
                    calls += int(ln.split(b",")[ci])
                    rows += 1
            else:
                rows += block.count(b'"record_id"')
                calls += sum(int(x) for x in re.findall(rb'"calls":(\d+)', block))
        if fmt == "csv":
            eq(tail, b"", "bytes after the last CRLF")
        else:
            check(start.startswith(b'{"report":{"kind":"usage"'), "JSON start %r" % start)
            check(tail.endswith(b"}]}\n"), "JSON end %r" % tail[-40:])
            rows += tail.count(b'"record_id"')
            calls += sum(int(x) for x in re.findall(rb'"calls":(\d+)', tail))
    finally:
        conn.close()
        mon.stop()
    check(mon.samples > 10, "RSS samples while streaming: %d" % mon.samples)
    return nbytes, rows, calls, (mon.max_kb - rss0) / 1024.0


@server_test
def test_large_csv_streams_in_bounded_memory(w):
    nbytes, rows, calls, grew = stream_large(w, "csv")
    eq(rows, SEED_KEYS * SEED_MINUTES, "rows of the large CSV")
    eq(calls, w.seed_total, "calls in the large CSV")
    check(nbytes > 64 << 20, "the report is smaller (%d bytes) than this check assumes" % nbytes)
    check(grew < 32, "tollgate-server's RSS grew by %.1f MB while streaming a %.0f MB CSV report"
          % (grew, nbytes / 1048576.0))


@server_test
def test_large_json_streams_in_bounded_memory(w):
    nbytes, rows, calls, grew = stream_large(w, "json")
    eq(rows, SEED_KEYS * SEED_MINUTES, "rows of the large JSON report")
    eq(calls, w.seed_total, "calls in the large JSON report")
    check(nbytes > 64 << 20, "the report is smaller (%d bytes) than this check assumes" % nbytes)
    check(grew < 32, "tollgate-server's RSS grew by %.1f MB while streaming a %.0f MB JSON report"
          % (grew, nbytes / 1048576.0))


def teardown_stream(w):
    pass


STREAM_TESTS = [test_server_compacted_the_seeded_minutes, test_large_csv_streams_in_bounded_memory,
                test_large_json_streams_in_bounded_memory]

GROUPS = [
    ("reports", setup_reports, REPORT_TESTS, teardown_reports),
    ("stream", setup_stream, STREAM_TESTS, teardown_stream),
]

if __name__ == "__main__":
    sys.exit(base.main(sys.argv, GROUPS))
