#!/usr/bin/env python3
"""
test_gateway_keys.py - the gateway as an API management gateway (issue 5):
API keys, subscriptions, rate limits, quotas and exact usage metering,
against the real tollgate-gateway, tollgate-server and test upstream on
loopback ports.

    test_gateway_keys.py GATEWAY SERVER CLI UPSTREAM [GROUP-or-TEST...]

It reuses test_gateway.py's runner, World (processes, admin API) and raw
HTTP client. Every count is exact: the usage ledger is read straight from
the SQLite file after the gateway stopped, and compared with what this
suite sent and what the upstream saw.
"""
import json
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_gateway as base  # noqa: E402
from test_gateway import (Conn, Failure, build, call, check, eq, problem,  # noqa: E402
                          until)

B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PROPAGATE_WITHIN = 1.0  # the issue: a key revoked or issued works/stops within 1 s


def with_checksum(prefix_body):
    """A well-formed key text: type + body + base62 CRC-32 (as core/keys.c)."""
    crc = zlib.crc32(prefix_body.encode())
    out = ""
    for _ in range(6):
        out = B62[crc % 62] + out
        crc //= 62
    return prefix_body + out


def unknown_key():
    return with_checksum("tg_live_" + "Q" * 43)


class SrcConn(Conn):
    """A client connection from a chosen loopback source address."""

    def __init__(self, src, port, timeout=base.GW_TIMEOUT):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(src, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False
        self.reset = False


def within(fn, secs, what):
    """Poll fn until it is true; fail after secs."""
    v, took = until(fn, secs)
    check(v, "%s: not within %.1fs" % (what, secs))
    return took


def src_call(src, port, method, path, headers=(), body=None):
    """One request from loopback address src (e.g. 127.0.0.7): failed-key
    limits are per client address, so tests keep out of each other's way."""
    c = SrcConn(src, port)
    try:
        c.send(build(method, path, list(headers) + [("Connection", "close")], body))
        return c.read_response(method)
    finally:
        c.close()


class Policy:
    """Developers, apps, subscriptions and keys made through the admin API."""

    def __init__(self, w):
        self.w = w

    def plan(self, api_slug, slug, **limits):
        api_id = self.w.apis[api_slug]["api"]["id"]
        body = {"api_id": api_id, "slug": slug, "name": slug}
        body.update(limits)
        return self.w.admin("POST", "/plans", body)[1]

    def developer(self, email, approve=True):
        _, d = self.w.admin("POST", "/developers", {"email": email, "name": email})
        if approve and d["status"] != "active":
            _, d = self.w.admin("POST", "/developers/%s/approve" % d["id"])
        return d

    def app(self, dev, name):
        return self.w.admin("POST", "/apps", {"developer_id": dev["id"], "name": name})[1]

    def subscribe(self, app, api_slug, plan):
        api_id = self.w.apis[api_slug]["api"]["id"]
        return self.w.admin("POST", "/subscriptions", {"app_id": app["id"], "api_id": api_id,
                                                       "plan_id": plan["id"]})[1]

    def key(self, app):
        return self.w.admin("POST", "/keys", {"app_id": app["id"]})[1]

    def client(self, email, api_slug, plan):
        """A developer with one app subscribed to api_slug on plan, and a key."""
        d = self.developer(email)
        a = self.app(d, email.split("@")[0])
        s = self.subscribe(a, api_slug, plan)
        k = self.key(a)
        return {"dev": d, "app": a, "sub": s, "key": k, "text": k["key"]}


def get(w, path, key=None, how="header", extra=(), src=None):
    hdrs = list(extra)
    if key and how == "header":
        hdrs.append(("X-API-Key", key))
    elif key and how == "bearer":
        hdrs.append(("Authorization", "Bearer " + key))
    if src:
        return src_call(src, w.port, "GET", path, hdrs)
    return call(w.port, "GET", path, hdrs)


def ledger(w, where="1=1", args=()):
    """Usage rows as dicts (read-only connection to the gateway's store)."""
    db = sqlite3.connect("file:%s?mode=ro" % w.db, uri=True, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM usage_rollups WHERE " + where, args)]
    finally:
        db.close()


def calls(rows, **match):
    return sum(r["calls"] for r in rows if all(r[k] == v for k, v in match.items()))


# =================================================================================
# Group "keys": authentication, authorisation, limits, headers, metering
# =================================================================================

def setup_keys(w):
    w.boot_admin()
    u1 = w.upstream("u1")
    w.add_api("pets", "/pets", [(u1.url, 100)], auth_mode="key", key_query_param="api_key")
    w.add_api("birds", "/birds", [(u1.url + "/b", 100)], auth_mode="key")
    w.add_api("open", "/open", [(u1.url + "/o", 100)])
    pol = w.pol = Policy(w)
    free = pol.plan("pets", "free")
    w.plans = {
        "free": free,
        "tiny": pol.plan("pets", "tiny", rate_per_minute=5),
        "daily": pol.plan("pets", "daily", quota_per_day=3),
        "hourly": pol.plan("pets", "hourly", rate_per_hour=50),
        "gated": pol.plan("pets", "gated", requires_approval=True),
        "birdfree": pol.plan("birds", "birdfree"),
    }
    w.c = {
        "free": pol.client("free@example.com", "pets", free),
        "tiny": pol.client("tiny@example.com", "pets", w.plans["tiny"]),
        "daily": pol.client("daily@example.com", "pets", w.plans["daily"]),
        "hourly": pol.client("hourly@example.com", "pets", w.plans["hourly"]),
        "birds": pol.client("birds@example.com", "birds", w.plans["birdfree"]),
        "gated": pol.client("gated@example.com", "pets", w.plans["gated"]),
        "susp": pol.client("susp@example.com", "pets", free),
        "devsusp": pol.client("devsusp@example.com", "pets", free),
        "rev": pol.client("rev@example.com", "pets", free),
    }
    # what this group sends, to compare with the ledger at the end
    w.sent = {"ok_free": 0}
    # folds every 500 ms: the group's ledger fills while it runs (the
    # clock group runs on the default 60 s, so its calls stay journaled)
    w.start_gateway("--gateway-workers", "2", "--metering-interval", "200ms",
                    "--metering-fold-interval", "500ms", "--gateway-auth-failures", "5")


def test_missing_key_401(w):
    n0 = w.ups["u1"].count()
    r = get(w, "/pets/echo")
    problem(r, 401, "no key", "missing-api-key")
    check((r.header("WWW-Authenticate") or "").startswith("Bearer realm=\"tollgate\""),
          "WWW-Authenticate on a 401: %r" % r.header("WWW-Authenticate"), r)
    r = get(w, "/pets/echo", extra=[("Authorization", "Basic dXNlcjpwYXNz")])
    problem(r, 401, "Basic credentials are not a key", "missing-api-key")
    time.sleep(0.05)
    eq(w.ups["u1"].count() - n0, 0, "requests the upstream saw")


def test_invalid_keys_401(w):
    k = w.c["free"]["text"]
    bad_sum = k[:-1] + ("A" if k[-1] != "A" else "B")
    cases = [("wrong checksum", bad_sum), ("unknown key", unknown_key()),
             ("admin token", w.token), ("truncated", k[:20]), ("garbage", "x" * 300)]
    n0 = w.ups["u1"].count()
    for i, (what, key) in enumerate(cases):
        r = get(w, "/pets/echo", key=key, src="127.0.0.%d" % (20 + i))
        problem(r, 401, what, "invalid-api-key")
        check('error="invalid_token"' in (r.header("WWW-Authenticate") or ""),
              "%s: WWW-Authenticate %r" % (what, r.header("WWW-Authenticate")), r)
        check(key not in r.body.decode("latin-1"), "%s: the key is echoed back" % what, r)
    time.sleep(0.05)
    eq(w.ups["u1"].count() - n0, 0, "requests the upstream saw")


def test_key_sources_and_identity_headers(w):
    c = w.c["free"]
    for how in ("header", "bearer", "query"):
        path = "/pets/echo?a=1&api_key=%s&b=2" % c["text"] if how == "query" else "/pets/echo?a=1"
        r = get(w, path, key=c["text"] if how != "query" else None, how=how,
                extra=[("X-Tollgate-App-Id", "app_FORGED"), ("x-tollgate-plan", "gold")])
        eq(r.status, 200, "key in the %s" % how, r)
        w.sent["ok_free"] += 1
        rec = r.json
        hdrs = {}
        for name, value in rec["headers"]:
            hdrs.setdefault(name.lower(), []).append(value)
        eq(hdrs.get("x-tollgate-app-id"), [c["app"]["id"]], "%s: app id upstream" % how, r)
        eq(hdrs.get("x-tollgate-developer-id"), [c["dev"]["id"]], "%s: developer id" % how, r)
        eq(hdrs.get("x-tollgate-plan"), ["free"], "%s: plan" % how, r)
        eq(hdrs.get("x-tollgate-key-prefix"), [c["key"]["prefix"]], "%s: key prefix" % how, r)
        check("x-api-key" not in hdrs, "%s: X-API-Key forwarded" % how, r)
        check("authorization" not in hdrs, "%s: Authorization forwarded" % how, r)
        check(c["text"] not in json.dumps(rec), "%s: the key reached the upstream" % how, r)
        target = rec["target"]
        eq(target, "/pets/echo?a=1&b=2" if how == "query" else "/pets/echo?a=1",
           "%s: request target upstream" % how, r)
    # every copy of the key where keys are read is stripped, not only the
    # one used; an Authorization that is not a Tollgate key is the
    # upstream's own and goes through
    r = get(w, "/pets/echo?api_key=%s&a=1" % c["text"], key=c["text"], extra=[
        ("X-Api-Key", c["text"]), ("Authorization", "Bearer  " + c["text"])])
    eq(r.status, 200, "key in every place at once", r)
    w.sent["ok_free"] += 1
    names = [n.lower() for n, _ in r.json["headers"]]
    check("x-api-key" not in names and "authorization" not in names,
          "a copy of the key reached the upstream: %r" % names, r)
    check(c["text"] not in json.dumps(r.json), "the key reached the upstream", r)
    eq(r.json["target"], "/pets/echo?a=1", "the key parameter is stripped too", r)
    r = get(w, "/pets/echo", key=c["text"], extra=[("Authorization", "Bearer upstream-token-1")])
    eq(r.status, 200, "key and an upstream bearer token", r)
    w.sent["ok_free"] += 1
    auth = [v for n, v in r.json["headers"] if n.lower() == "authorization"]
    eq(auth, ["Bearer upstream-token-1"], "the upstream's own bearer token is forwarded", r)
    # forged identity is removed on an API without keys too
    r = get(w, "/open/echo", extra=[("X-Tollgate-App-Id", "app_FORGED")])
    eq(r.status, 200, "open API", r)
    names = [n.lower() for n, _ in r.json["headers"]]
    check("x-tollgate-app-id" not in names, "forged X-Tollgate-App-Id reached the upstream", r)


def test_query_key_only_where_allowed(w):
    k = w.c["birds"]["text"]
    r = get(w, "/birds/echo?api_key=%s" % k)
    problem(r, 401, "birds takes no key in the query", "missing-api-key")
    r = get(w, "/birds/echo", key=k)
    eq(r.status, 200, "birds with the key in the header", r)


def test_not_subscribed_403(w):
    r = get(w, "/pets/echo", key=w.c["birds"]["text"])
    problem(r, 403, "a key of an app subscribed to another API", "not-subscribed")
    r = get(w, "/birds/echo", key=w.c["free"]["text"])
    problem(r, 403, "the other way round", "not-subscribed")
    r = get(w, "/pets/echo", key=w.c["gated"]["text"])
    problem(r, 403, "subscription awaiting approval", "not-subscribed")
    check("approval" in r.json.get("detail", ""), "detail names the approval", r)
    w.admin("POST", "/subscriptions/%s/approve" % w.c["gated"]["sub"]["id"])
    within(lambda: get(w, "/pets/echo", key=w.c["gated"]["text"]).status == 200,
           PROPAGATE_WITHIN + 0.5, "an approved subscription works")


def test_suspensions_403(w):
    c = w.c["susp"]
    eq(get(w, "/pets/echo", key=c["text"]).status, 200, "before suspending")
    w.admin("POST", "/subscriptions/%s/suspend" % c["sub"]["id"])
    within(lambda: get(w, "/pets/echo", key=c["text"]).status == 403, PROPAGATE_WITHIN + 0.5, "change applied")
    problem(get(w, "/pets/echo", key=c["text"]), 403, "suspended subscription",
            "subscription-suspended")
    w.admin("POST", "/subscriptions/%s/resume" % c["sub"]["id"])
    within(lambda: get(w, "/pets/echo", key=c["text"]).status == 200, PROPAGATE_WITHIN + 0.5, "change applied")
    d = w.c["devsusp"]
    w.admin("POST", "/developers/%s/suspend" % d["dev"]["id"])
    within(lambda: get(w, "/pets/echo", key=d["text"]).status == 403, PROPAGATE_WITHIN + 0.5, "change applied")
    problem(get(w, "/pets/echo", key=d["text"]), 403, "suspended developer", "access-suspended")
    w.sent["ok_free"] += 0  # (free-plan traffic of other apps is counted by key below)


def test_revoke_and_issue_within_1s(w):
    c = w.c["rev"]
    eq(get(w, "/pets/echo", key=c["text"]).status, 200, "before revoking")
    t0 = time.monotonic()
    w.admin("POST", "/keys/%s/revoke" % c["key"]["id"])
    while get(w, "/pets/echo", key=c["text"], src="127.0.0.40").status != 401:
        check(time.monotonic() - t0 < PROPAGATE_WITHIN,
              "a revoked key still works %.2fs after the admin API answered"
              % (time.monotonic() - t0))
        time.sleep(0.02)
    t0 = time.monotonic()
    k2 = w.pol.key(c["app"])
    while get(w, "/pets/echo", key=k2["key"], src="127.0.0.41").status != 200:
        check(time.monotonic() - t0 < PROPAGATE_WITHIN,
              "a new key does not work %.2fs after it was issued" % (time.monotonic() - t0))
        time.sleep(0.02)
    # rotation: the old key keeps working through the grace period
    _, k3 = w.admin("POST", "/keys/%s/rotate" % k2["id"], {"grace_seconds": 3600})
    within(lambda: get(w, "/pets/echo", key=k3["key"]).status == 200, PROPAGATE_WITHIN + 0.5, "change applied")
    eq(get(w, "/pets/echo", key=k2["key"]).status, 200, "the rotated key within its grace")
    _, k4 = w.admin("POST", "/keys/%s/rotate" % k3["id"], {"grace_seconds": 0})
    within(lambda: get(w, "/pets/echo", key=k3["key"], src="127.0.0.42").status == 401, PROPAGATE_WITHIN + 0.5, "change applied")
    eq(get(w, "/pets/echo", key=k4["key"]).status, 200, "the successor works")


def parse_sf_list(value):
    """'"minute";q=5;w=60, "day";q=3;w=86400' -> [("minute", {"q": 5, "w": 60}), ...]"""
    out = []
    for item in value.split(","):
        parts = item.strip().split(";")
        name = parts[0].strip()
        check(name.startswith('"') and name.endswith('"'), "policy name %r is not quoted" % name)
        params = {}
        for p in parts[1:]:
            k, _, v = p.partition("=")
            params[k.strip()] = int(v)
        out.append((name.strip('"'), params))
    return out


def test_rate_limit_exact_with_headers(w):
    c = w.c["tiny"]  # 5 per minute
    n0 = len(w.ups["u1"].with_target("/pets/echo?tiny"))
    for i in range(5):
        r = get(w, "/pets/echo?tiny", key=c["text"])
        eq(r.status, 200, "request %d of 5" % (i + 1), r)
        eq(parse_sf_list(r.header("RateLimit-Policy")), [("minute", {"q": 5, "w": 60})],
           "RateLimit-Policy", r)
        (name, p), = parse_sf_list(r.header("RateLimit"))
        eq((name, p["r"]), ("minute", 4 - i), "RateLimit remaining after request %d" % (i + 1), r)
        check(1 <= p["t"] <= 60, "RateLimit t=%r" % p["t"], r)
        eq(r.header("X-RateLimit-Limit"), "5", "X-RateLimit-Limit", r)
        eq(r.header("X-RateLimit-Remaining"), str(4 - i), "X-RateLimit-Remaining", r)
    for i in range(3):
        r = get(w, "/pets/echo?tiny", key=c["text"])
        problem(r, 429, "request %d over the limit" % (i + 6), "rate-limited")
        ra = int(r.header("Retry-After"))
        check(12 <= ra <= 14, "Retry-After %r: one emission interval is 12 s (+10%% jitter)" % ra,
              r)
        eq(r.json.get("violated-policies"), ["minute"], "violated-policies", r)
        (name, p), = parse_sf_list(r.header("RateLimit"))
        eq(p["r"], 0, "RateLimit r on a 429", r)
    time.sleep(0.05)
    eq(len(w.ups["u1"].with_target("/pets/echo?tiny")) - n0, 5, "requests the upstream saw")


def test_quota_exact(w):
    c = w.c["daily"]  # 3 per UTC day
    for i in range(3):
        r = get(w, "/pets/echo?daily", key=c["text"])
        eq(r.status, 200, "call %d of 3" % (i + 1), r)
        eq(r.header("X-RateLimit-Remaining"), str(2 - i), "quota remaining", r)
    r = get(w, "/pets/echo?daily", key=c["text"])
    problem(r, 429, "over the day's quota", "quota-exceeded")
    eq(r.json.get("violated-policies"), ["day"], "violated-policies", r)
    now = time.time()
    to_midnight = 86400 - int(now) % 86400
    ra = int(r.header("Retry-After"))
    check(to_midnight - 2 <= ra <= to_midnight * 1.1 + 2,
          "Retry-After %d s, midnight UTC is %d s away" % (ra, to_midnight), r)


def test_concurrent_clients_never_exceed_the_limit(w):
    c = w.c["hourly"]  # 50 per hour: a burst of 50, then one every 72 s
    results = []
    lock = threading.Lock()

    def client(n):
        conn = Conn(w.port)
        mine = []
        try:
            for _ in range(n):
                conn.send(build("GET", "/pets/echo?hourly", [("X-API-Key", c["text"])]))
                mine.append(conn.read_response().status)
        finally:
            conn.close()
        with lock:
            results.extend(mine)

    n0 = len(w.ups["u1"].with_target("/pets/echo?hourly"))
    threads = [threading.Thread(target=client, args=(20,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    eq(len(results), 160, "answers")
    eq(results.count(200), 50, "admitted out of 160 concurrent requests (limit 50)")
    eq(results.count(429), 110, "refused")
    time.sleep(0.05)
    eq(len(w.ups["u1"].with_target("/pets/echo?hourly")) - n0, 50, "requests the upstream saw")


def test_failed_keys_limited_per_address(w):
    src = "127.0.0.60"
    for i in range(5):
        problem(get(w, "/pets/echo", key=unknown_key(), src=src), 401, "bad key %d" % i,
                "invalid-api-key")
    r = get(w, "/pets/echo", key=unknown_key(), src=src)
    problem(r, 429, "sixth bad key in a minute from one address", "too-many-failed-keys")
    check(1 <= int(r.header("Retry-After")) <= 60, "Retry-After %r" % r.header("Retry-After"), r)
    # even a good key: the address is held until the minute ends
    problem(get(w, "/pets/echo", key=w.c["free"]["text"], src=src), 429, "good key, same address",
            "too-many-failed-keys")
    eq(get(w, "/pets/echo", key=w.c["free"]["text"], src="127.0.0.61").status, 200,
       "another address is not affected")
    w.sent["ok_free"] += 1


def test_access_log_names_the_caller_never_the_key(w):
    c = w.c["free"]
    r = get(w, "/pets/echo?api_key=%s&x=1" % c["text"], extra=[("X-Request-Id", "keys-log-1")])
    eq(r.status, 200, "query key", r)
    w.sent["ok_free"] += 1
    lines = w.access_for("keys-log-1")
    eq(len(lines), 1, "access log lines for the request")
    ln = lines[0]
    eq((ln.get("api"), ln.get("app"), ln.get("key_prefix"), ln.get("plan")),
       ("pets", c["app"]["id"], c["key"]["prefix"], "free"), "caller in the access log")
    check("[redacted]" in ln.get("path", ""), "the query key is redacted: %r" % ln.get("path"))
    for f in ("latency_ms", "upstream_latency_ms", "gateway_latency_ms", "bytes_in", "bytes_out"):
        check(isinstance(ln.get(f), int) and ln[f] >= 0, "access log %s: %r" % (f, ln.get(f)))
    eq(ln.get("target"), w.apis["pets"]["targets"][0]["id"], "access log target id")
    with open(w.access_log, "rb") as f:
        data = f.read()
    for k in w.c.values():
        check(k["text"].encode() not in data, "a key's plaintext is in the access log")


def test_metrics_count_refusals(w):
    m = w.metrics()
    for reason in ("missing_key", "invalid_key", "not_subscribed", "rate_limited",
                   "quota_exceeded", "auth_throttled", "suspended"):
        check(m.get('tollgate_rejected_requests_total{reason="%s"}' % reason, 0) >= 1,
              "tollgate_rejected_requests_total for %s" % reason)
    check(m.get("tollgate_api_keys", 0) >= len(w.c), "tollgate_api_keys %r" % m.get(
        "tollgate_api_keys"))
    within(lambda: w.metrics().get("tollgate_usage_flushes_total", 0) >= 1, 3.0, "a usage flush")
    # the gateway's own folds: the ledger fills without a reader's help
    within(lambda: w.metrics().get("tollgate_usage_folded_rows_total", 0) >= 1, 3.0,
           "a usage journal fold")
    within(lambda: calls(ledger(w), key_id=w.c["tiny"]["key"]["id"], reason="rate_limited") == 3,
           3.0, "the tiny client's refusals in usage_rollups while the gateway runs")
    eq(w.metrics().get("tollgate_usage_fold_failures_total"), 0.0, "failed folds")


def teardown_keys(w):
    """SIGTERM, then the ledger must hold exactly what was served."""
    served = w.ups["u1"].count()
    w.stop_gateway()
    rows = ledger(w)
    fwd = [r for r in rows if r["status_class"] > 0]
    eq(sum(r["calls"] for r in fwd), served,
       "forwarded calls in the ledger = requests the upstream received")
    # per key: the free client's successful calls
    eq(calls(rows, key_id=w.c["free"]["key"]["id"], status_class=2), w.sent["ok_free"],
       "free client's 2xx calls")
    eq(calls(rows, key_id=w.c["tiny"]["key"]["id"], status_class=2), 5, "tiny 2xx")
    eq(calls(rows, key_id=w.c["tiny"]["key"]["id"], reason="rate_limited"), 3, "tiny 429s")
    eq(calls(rows, key_id=w.c["daily"]["key"]["id"], reason="quota_exceeded"), 1, "daily 429s")
    eq(calls(rows, key_id=w.c["hourly"]["key"]["id"], status_class=2), 50, "hourly 2xx")
    eq(calls(rows, key_id=w.c["hourly"]["key"]["id"], reason="rate_limited"), 110, "hourly 429s")
    eq(calls(rows, reason="missing_key"), 3, "missing-key refusals (2 + 1 query-less birds)")
    for r in rows:
        if r["status_class"] == 0:
            check(r["reason"] != "", "a refused row without a reason: %r" % r)
        if r["key_id"] == w.c["tiny"]["key"]["id"]:
            eq((r["app_id"], r["developer_id"], r["plan_id"], r["subscription_id"]),
               (w.c["tiny"]["app"]["id"], w.c["tiny"]["dev"]["id"], w.plans["tiny"]["id"],
                w.c["tiny"]["sub"]["id"]), "dimensions of a tiny row")
        check(r["granularity"] == 60 and r["period_start"] % 60 == 0, "minute rows: %r" % r)
        check(sum(r["h%02d" % i] for i in range(15)) == r["calls"], "histogram sums: %r" % r)
    db = sqlite3.connect(w.db)
    try:
        day, = db.execute("SELECT last_used_day FROM keys WHERE id = ?",
                          (w.c["free"]["key"]["id"],)).fetchone()
    finally:
        db.close()
    eq(day, int(time.time()) // 86400 * 86400, "the key's last_used_day")


KEYS_TESTS = [test_missing_key_401, test_invalid_keys_401, test_key_sources_and_identity_headers,
              test_query_key_only_where_allowed, test_not_subscribed_403, test_suspensions_403,
              test_revoke_and_issue_within_1s, test_rate_limit_exact_with_headers,
              test_quota_exact, test_concurrent_clients_never_exceed_the_limit,
              test_failed_keys_limited_per_address, test_access_log_names_the_caller_never_the_key,
              test_metrics_count_refusals]

# =================================================================================
# Group "clock": UTC day and month rollover (moved clock), restarts keep
# quotas, SIGKILL loses at most one flush interval, a locked store
# =================================================================================

def utc_ms(y, mo, d, h, mi, sec):
    import calendar
    return calendar.timegm((y, mo, d, h, mi, sec, 0, 0, 0)) * 1000


CLOCK_START = utc_ms(2026, 11, 30, 23, 59, 56)  # 4 s before a new day and a new month


def start_clocked(w, fake_ms):
    w.t_launch = time.monotonic()
    w.start_gateway("--gateway-workers", "2", "--metering-interval", "100ms",
                    env={"TOLLGATE_TEST_NOW": str(fake_ms)})
    w.t_ready = time.monotonic()


def setup_clock(w):
    w.boot_admin()
    u1 = w.upstream("u1")
    w.add_api("q", "/q", [(u1.url, 100)], auth_mode="key")
    pol = w.pol = Policy(w)
    w.c = {
        "day": pol.client("day@example.com", "q", pol.plan("q", "day3", quota_per_day=3)),
        "month": pol.client("month@example.com", "q",
                            pol.plan("q", "month4", quota_per_day=100, quota_per_month=4)),
        "free": pol.client("free@example.com", "q", pol.plan("q", "free")),
    }
    start_clocked(w, CLOCK_START)


def statuses(w, client, n, path="/q/echo"):
    return [get(w, path, key=w.c[client]["text"]).status for _ in range(n)]


def test_quota_rolls_over_at_utc_midnight_and_month_end(w):
    eq(statuses(w, "day", 4), [200, 200, 200, 429], "day quota 3, before midnight")
    eq(statuses(w, "month", 5), [200, 200, 200, 200, 429], "month quota 4, on the 30th")
    r = get(w, "/q/echo", key=w.c["month"]["text"])
    eq(r.json.get("violated-policies"), ["month"], "the month's quota refused", r)
    check(time.monotonic() - w.t_launch < 3.5,
          "the calls before midnight took too long to be sure they were before it")
    # the gateway's clock is at least CLOCK_START + (now - t_ready)
    time.sleep(max(0, w.t_ready + 4.3 - time.monotonic()))
    eq(statuses(w, "day", 4), [200, 200, 200, 429], "day quota 3, after midnight")
    eq(statuses(w, "month", 1), [200], "a new month")
    w.sent_month_dec = 1


def test_restart_keeps_quotas(w):
    w.stop_gateway()
    start_clocked(w, utc_ms(2026, 12, 1, 0, 1, 30))
    eq(statuses(w, "day", 2), [429, 429], "the day's quota used before the restart")
    eq(statuses(w, "month", 4), [200, 200, 200, 429], "3 left of December's 4 after a restart")


def journal_entries(w):
    """Usage journal entries not yet folded into usage_rollups."""
    db = sqlite3.connect("file:%s?mode=ro" % w.db, uri=True, timeout=10)
    try:
        return db.execute("SELECT count(*) FROM usage_journal").fetchone()[0]
    finally:
        db.close()


def reported_calls(w, key_id):
    """The key's forwarded calls in Nov-Dec 2026, as GET /usage reports them
    (the report folds the usage journal first)."""
    _, j = w.admin("GET", "/usage?from=2026-11-01&to=2027-01-01&granularity=month&key_id=%s"
                   "&status_class=2" % key_id)
    return sum(r["calls"] for r in j["rows"])


def test_sigkill_loses_at_most_one_interval(w):
    """The clock group runs on the default metering_fold_interval (60 s): the
    calls sit in the usage journal when the gateway is killed, and the next
    reader folds them."""
    key = w.c["free"]["key"]["id"]
    before = calls(ledger(w), key_id=key, status_class=2)
    eq(statuses(w, "free", 10), [200] * 10, "10 calls")
    time.sleep(0.6)  # several metering intervals (100 ms)
    w.gw.proc.send_signal(signal.SIGKILL)
    w.gw.wait(10)
    eq(calls(ledger(w), key_id=key, status_class=2) - before, 0,
       "calls in usage_rollups after SIGKILL (journaled, not folded yet)")
    check(journal_entries(w) >= 1, "usage journal entries after SIGKILL")
    start_clocked(w, utc_ms(2026, 12, 1, 0, 3, 0))  # seeds quotas: folds the journal
    eq(journal_entries(w), 0, "usage journal entries after a restart")
    eq(calls(ledger(w), key_id=key, status_class=2) - before, 10,
       "calls in the ledger after SIGKILL and a restart (flushed before the kill)")


def test_store_locked_keeps_serving(w):
    key = w.c["free"]["key"]["id"]
    before = reported_calls(w, key)
    f0 = w.metrics().get("tollgate_usage_flush_failures_total", 0)
    db = sqlite3.connect(w.db, timeout=10, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")  # the write lock: metering cannot write
        t0 = time.monotonic()
        got = statuses(w, "free", 20)
        eq(got, [200] * 20, "calls while the store is locked")
        within(lambda: w.metrics().get("tollgate_usage_flush_failures_total", 0) > f0, 3.0,
               "a failed flush while locked")
        check(time.monotonic() - t0 < 10, "calls were held up by the lock")
    finally:
        db.execute("ROLLBACK")
        db.close()
    # the gauge is set after the flush's commit (and its last_used_day
    # write), so wait for it, then read through a report: it folds the
    # journal the kept counters went to
    within(lambda: w.metrics().get("tollgate_usage_pending_rows") == 0.0, 3.0,
           "no pending rows after recovery")
    eq(reported_calls(w, key) - before, 20, "the kept counters, reported once the lock is gone")
    eq(calls(ledger(w), key_id=key, status_class=2), before + 20,
       "the key's calls in usage_rollups after the report folded the journal")


def teardown_clock(w):
    served = w.ups["u1"].count()
    w.stop_gateway()
    rows = ledger(w)
    eq(sum(r["calls"] for r in rows if r["status_class"] > 0), served,
       "forwarded calls in the ledger = requests the upstream received")
    day = w.c["day"]["key"]["id"]
    nov30 = utc_ms(2026, 11, 30, 0, 0, 0) // 1000
    dec1 = nov30 + 86400
    eq(calls(rows, key_id=day, status_class=2), 6, "day client's calls")
    eq(sum(r["calls"] for r in rows if r["key_id"] == day and r["status_class"] == 2
           and nov30 <= r["period_start"] < dec1), 3, "day client's calls on Nov 30")
    eq(calls(rows, key_id=day, reason="quota_exceeded"), 4, "day client's refusals")


CLOCK_TESTS = [test_quota_rolls_over_at_utc_midnight_and_month_end, test_restart_keeps_quotas,
               test_sigkill_loses_at_most_one_interval, test_store_locked_keeps_serving]

GROUPS = [
    ("keys", setup_keys, KEYS_TESTS, teardown_keys),
    ("clock", setup_clock, CLOCK_TESTS, teardown_clock),
]

if __name__ == "__main__":
    sys.exit(base.main(sys.argv, GROUPS))
