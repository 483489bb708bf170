#!/usr/bin/env python3
"""Integration tests for tollgate-server's admin REST API, over real HTTP.

Usage:
  python3 tests/integration/test_admin_api.py /path/to/tollgate-server /path/to/tollgate

Each test runs in a fresh temporary directory (the working directory of
the test and of every process it starts) with its own database, secret
file and empty config file, and an environment stripped of every
TOLLGATE_* variable. A test migrates the database with the CLI, creates
admin tokens with the CLI, starts the real server on 127.0.0.1:0 (the
bound port is read from its log), talks HTTP to it and stops it with
SIGTERM, asserting a clean exit. Standard library only.

Output: one "name: ok" or "name: FAIL" line per test (failures followed by
an indented reason), then "N passed, M failed"; exit 1 if any failed.
"""
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse


TIMEOUT = 30          # any one CLI run or HTTP exchange
START_TIMEOUT = 10    # the server's "port=" log line
STOP_TIMEOUT = 15     # SIGTERM -> exit
KEY_RE = re.compile(r"^tg_live_[0-9A-Za-z]{49}$")
KEY_IN_TEXT_RE = re.compile(r"tg_live_[0-9A-Za-z]{49}")
TOKEN_RE = re.compile(r"^tg_adm_[0-9A-Za-z]{49}$")
TOKEN_IN_TEXT_RE = re.compile(r"tg_adm_[0-9A-Za-z]{49}")
HEX32_RE = re.compile(r"^[0-9a-f]{32}$")
ID_RE = {p: re.compile(r"^%s_[0-9A-Z]{26}$" % p)
         for p in ("api", "tgt", "pln", "dev", "app", "sub", "key", "tok", "aud")}

SERVER = None  # set in main()
CLI = None

OPENAPI_DOC = {"openapi": "3.1.0", "info": {"title": "Pets", "version": "1.0.0"},
               "paths": {"/pets": {"get": {"responses": {"200": {"description": "ok"}}}}}}


def clean_env(**extra):
    """os.environ without TOLLGATE_*, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(extra)
    return env


# ---- assertion helpers ------------------------------------------------------

class Failure(AssertionError):
    pass


def check(cond, msg, result=None):
    if not cond:
        raise Failure(msg + ("\n  " + repr(result).replace("\n", "\n  ")
                             if result is not None else ""))


def eq(actual, expected, what, result=None):
    check(actual == expected, "%s: expected %r, got %r" % (what, expected, actual), result)


def has(text, needle, what, result=None):
    check(needle in text, "%s: expected %r in %r" % (what, needle, text), result)


def status_is(r, code, what):
    check(r.status == code, "%s: expected HTTP %d, got %d" % (what, code, r.status), r)
    return r.json


def problem(r, code, slug, what):
    """r is an RFC 9457 problem document with this status and type slug."""
    status_is(r, code, what)
    ct = (r.header("Content-Type") or "").split(";")[0].strip().lower()
    eq(ct, "application/problem+json", "%s: Content-Type" % what, r)
    j = r.json
    check(isinstance(j, dict), "%s: problem body is not a JSON object" % what, r)
    check(str(j.get("type", "")).endswith("/" + slug),
          "%s: problem type should end with /%s" % (what, slug), r)
    eq(j.get("status"), code, "%s: problem status member" % what, r)
    check(isinstance(j.get("title"), str) and j["title"], "%s: problem has no title" % what, r)
    check(isinstance(j.get("detail"), str), "%s: problem has no detail" % what, r)
    eq(j.get("request_id"), r.header("X-Request-Id"),
       "%s: problem request_id equals the X-Request-Id header" % what, r)
    return j


def pointers(r):
    errs = (r.json or {}).get("errors") if isinstance(r.json, dict) else None
    if not isinstance(errs, list):
        return set()
    return {e.get("pointer") for e in errs if isinstance(e, dict)}


def invalid(r, ptrs, what, code=422):
    """A validation problem naming (at least) these JSON pointers."""
    problem(r, code, "validation-failed", what)
    got = pointers(r)
    missing = set(ptrs) - got
    check(not missing, "%s: errors should name %s, named %s" % (what, sorted(missing),
                                                                sorted(p for p in got if p)), r)
    return r.json


def near(actual, expected, tolerance, what, result=None):
    check(isinstance(actual, int) and abs(actual - expected) <= tolerance,
          "%s: expected %r +- %d, got %r" % (what, expected, tolerance, actual), result)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


# ---- HTTP client -------------------------------------------------------------

class Resp:
    def __init__(self, method, path, status, headers, body):
        self.method = method
        self.path = path
        self.status = status
        self.headers = headers  # http.client.HTTPMessage (case-blind get)
        self.body = body
        self.text = body.decode("utf-8", "replace")
        self.json = None
        if body:
            try:
                self.json = json.loads(self.text)
            except ValueError:
                pass

    def header(self, name):
        return self.headers.get(name)

    def header_all(self, name):
        return self.headers.get_all(name) or []

    def __repr__(self):
        hdrs = "".join("\n    %s: %s" % (k, v) for k, v in self.headers.items())
        body = self.text if len(self.text) <= 1500 else self.text[:1500] + "...(%d bytes)" % len(
            self.text)
        return "%s %s -> %d%s\n  body %s" % (self.method, self.path, self.status, hdrs, body)


DEFAULT = object()


class Client:
    """A tiny admin API client: a fresh connection per call, unless it was
    made with keepalive=True."""

    def __init__(self, port, token=None, keepalive=False):
        self.port = port
        self.token = token
        self.keepalive = keepalive
        self.conn = None
        self.log = []  # every response, for the header checks

    def with_token(self, token):
        return Client(self.port, token)

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None

    def req(self, method, path, body=None, headers=None, token=DEFAULT, ctype=DEFAULT):
        hdrs = {}
        tok = self.token if token is DEFAULT else token
        if tok is not None:
            hdrs["Authorization"] = "Bearer " + tok
        data = None
        if body is not None:
            if isinstance(body, (dict, list)):
                data = json.dumps(body).encode()
            elif isinstance(body, str):
                data = body.encode()
            else:
                data = body
            if ctype is DEFAULT:
                hdrs["Content-Type"] = "application/json"
        if ctype is not DEFAULT and ctype is not None:
            hdrs["Content-Type"] = ctype
        if headers:
            hdrs.update(headers)
        conn = self.conn if self.keepalive and self.conn else \
            http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            r = Resp(method, path, resp.status, resp.headers, payload)
        except Exception:
            conn.close()
            self.conn = None
            raise
        if self.keepalive:
            self.conn = conn
        else:
            conn.close()
        self.log.append(r)
        return r

    def get(self, path, **kw):
        return self.req("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.req("POST", path, body, **kw)

    def put(self, path, body=None, **kw):
        return self.req("PUT", path, body, **kw)

    def patch(self, path, body=None, **kw):
        return self.req("PATCH", path, body, **kw)

    def delete(self, path, **kw):
        return self.req("DELETE", path, **kw)


def raw_exchange(port, data_parts, pause=0.0, read_timeout=10):
    """Send raw bytes (list of chunks, with `pause` seconds between them)
    on one connection and return everything read until the server closes or
    a full response (by Content-Length) has arrived."""
    s = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    try:
        for i, part in enumerate(data_parts):
            if i and pause:
                time.sleep(pause)
            try:
                s.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        return read_response(s)
    finally:
        s.close()


def read_response(s):
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        buf += chunk
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
            if m and len(rest) >= int(m.group(1)):
                break
    return buf


def raw_status(data):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else None


# ---- processes ---------------------------------------------------------------

class Server:
    def __init__(self, ctx, extra, listen):
        self.ctx = ctx
        self.argv = [SERVER, "--config", ctx.config, "--db-path", ctx.db, "--secret-file",
                     ctx.secret, "--admin-listen", listen, "--portal-listen", "127.0.0.1:0",
                     "--log-format", "text"] + list(extra)
        self.lines = []
        self.port = None
        self.port_seen = threading.Event()
        self.out = open(os.path.join(ctx.dir, "server-%d.out" % len(ctx.servers)), "wb")
        self.proc = subprocess.Popen(self.argv, cwd=ctx.dir, env=clean_env(),
                                     stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.PIPE)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            m = re.search(r"\bport=(\d+)\b", line)
            if m and self.port is None:
                self.port = int(m.group(1))
                self.port_seen.set()
        self.port_seen.set()

    def stderr(self):
        return "\n".join(self.lines)

    def wait_ready(self):
        self.port_seen.wait(START_TIMEOUT)
        check(self.port is not None,
              "server printed no port= line within %ds (exit %r)\n  argv %r\n  stderr %s"
              % (START_TIMEOUT, self.proc.poll(), self.argv, self.stderr()))
        deadline = time.time() + START_TIMEOUT
        last = None
        while time.time() < deadline:
            try:
                r = Client(self.port).get("/health")
                if r.status == 200:
                    return
                last = r
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise Failure("GET /health never answered 200: %r\n  stderr %s" % (last, self.stderr()))

    def client(self, token=None, keepalive=False):
        return Client(self.port, token, keepalive)

    def stop(self, what="server"):
        """SIGTERM; the server must exit 0 within STOP_TIMEOUT."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise Failure("%s did not exit within %ds of SIGTERM\n  stderr %s"
                          % (what, STOP_TIMEOUT, self.stderr()[-3000:]))
        self.reader.join(5)
        self.out.close()
        check(rc == 0, "%s: expected exit 0 after SIGTERM, got %r\n  stderr %s"
              % (what, rc, self.stderr()[-3000:]))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:
            self.out.close()
        except OSError:
            pass


class CliResult:
    def __init__(self, args, proc):
        self.args = args
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def __repr__(self):
        return "command %r\n  exit %d\n  stdout %r\n  stderr %r" % (
            self.args, self.rc, self.out, self.err)


class Ctx:
    """One test's directory, its files and its processes."""

    def __init__(self, tmp, name="main"):
        self.dir = tmp
        self.db = os.path.join(tmp, "%s.db" % name)
        self.secret = os.path.join(tmp, "%s.secret" % name)
        self.config = os.path.join(tmp, "empty.conf")
        if not os.path.exists(self.config):
            with open(self.config, "w"):
                pass
        self.servers = []
        self.others = []

    def sibling(self, name):
        """Another installation (db + secret) in the same directory."""
        c = Ctx(self.dir, name)
        c.servers = self.servers  # shared cleanup
        self.others.append(c)
        return c

    def cli(self, *args):
        argv = [CLI, "--config", self.config, "--db-path", self.db, "--secret-file",
                self.secret] + list(args)
        proc = subprocess.run(argv, cwd=self.dir, env=clean_env(), capture_output=True,
                              text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        return CliResult(argv, proc)

    def cli_ok(self, *args):
        r = self.cli(*args)
        check(r.rc == 0, "expected exit 0", r)
        return r

    def migrate(self):
        return self.cli_ok("migrate")

    def token(self, name, scopes="admin", *extra):
        r = self.cli_ok("admin-token", "create", "--name", name, "--scopes", scopes, *extra)
        tok = r.out.strip()
        check(TOKEN_RE.match(tok), "created token has the wrong shape: %r" % tok, r)
        return tok

    def counts(self):
        """`tollgate status` entity counts as a dict."""
        r = self.cli_ok("status")
        out = {}
        for line in r.out.splitlines():
            m = re.match(r"^(\w+)\s+(\d+)$", line)
            if m:
                out[m.group(1)] = int(m.group(2))
        check("apis" in out and "audit_log" in out, "status shows no counts", r)
        return out

    def start(self, *extra, listen="127.0.0.1:0", wait=True):
        s = Server(self, extra, listen)
        self.servers.append(s)
        if wait:
            s.wait_ready()
        return s

    def boot(self, *extra):
        """migrate, an admin token "root", a running server: (server, client)."""
        self.migrate()
        tok = self.token("root", "admin")
        srv = self.start(*extra)
        return srv, srv.client(tok)

    def cleanup(self):
        for s in self.servers:
            s.kill()


# ---- fixtures -----------------------------------------------------------------

def created(r, what, prefix=None):
    status_is(r, 201, what)
    j = r.json
    check(isinstance(j, dict) and isinstance(j.get("id"), str), "%s: no id in the body" % what, r)
    if prefix:
        check(ID_RE[prefix].match(j["id"]), "%s: id %r is not a %s id" % (what, j["id"], prefix),
              r)
    return j


def mk_api(api, slug="pets", **kw):
    body = {"slug": slug, "name": slug.capitalize()}
    body.update(kw)
    return created(api.post("/apis", body), "create api %s" % slug, "api")


def mk_plan(api, api_id, slug="free", **kw):
    body = {"api_id": api_id, "slug": slug, "name": slug.capitalize()}
    body.update(kw)
    return created(api.post("/plans", body), "create plan %s" % slug, "pln")


def mk_dev(api, email, **kw):
    body = {"email": email, "name": email.split("@")[0]}
    body.update(kw)
    return created(api.post("/developers", body), "create developer %s" % email, "dev")


def mk_app(api, dev_id, name="app", **kw):
    body = {"developer_id": dev_id, "name": name}
    body.update(kw)
    return created(api.post("/apps", body), "create app %s" % name, "app")


def mk_sub(api, app_id, api_id, plan_id, **kw):
    body = {"app_id": app_id, "api_id": api_id, "plan_id": plan_id}
    body.update(kw)
    return created(api.post("/subscriptions", body), "create subscription", "sub")


def mk_key(api, app_id, **kw):
    body = {"app_id": app_id}
    body.update(kw)
    j = created(api.post("/keys", body), "create key", "key")
    check(isinstance(j.get("key"), str) and KEY_RE.match(j["key"]),
          "new key plaintext %r does not match %s" % (j.get("key"), KEY_RE.pattern), j)
    return j


def world(api):
    """An API with a plan, a developer with an app, a subscription, a key."""
    a = mk_api(api, "pets")
    p = mk_plan(api, a["id"], "free")
    d = mk_dev(api, "ann@example.com")
    app = mk_app(api, d["id"], "ann-app")
    s = mk_sub(api, app["id"], a["id"], p["id"])
    k = mk_key(api, app["id"], name="main")
    return {"api": a, "plan": p, "dev": d, "app": app, "sub": s, "key": k}


def walk(api, path, what):
    """All rows of a list, following `next`; checks Link against next."""
    rows, pages = [], 0
    while path:
        r = api.get(path)
        status_is(r, 200, "%s: GET %s" % (what, path))
        j = r.json
        check(isinstance(j, dict) and isinstance(j.get("data"), list),
              "%s: list body has no data array" % what, r)
        rows.extend(j["data"])
        nxt = j.get("next")
        link = r.header("Link")
        if nxt is None:
            check(link is None, "%s: Link header on the last page" % what, r)
        else:
            check(isinstance(nxt, str), "%s: next is not a string" % what, r)
            eq(link, '<%s>; rel="next"' % nxt, "%s: Link header" % what, r)
        path = nxt
        pages += 1
        check(pages < 1000, "%s: more than 1000 pages" % what)
    return rows


def no_secrets(text, secrets, what):
    for s in secrets:
        check(s not in text and s[8:] not in text,
              "%s: a secret (%s...) appears in %r" % (what, s[:14], text[:3000]))
    check('"digest"' not in text, "%s: a digest member appears in %r" % (what, text[:3000]))


def plaintext_not_on_disk(c, secrets, when):
    """No secret (nor its body without the type prefix) in the database
    files: the db, its WAL and shared memory."""
    for path in (c.db, c.db + "-wal", c.db + "-shm"):
        if os.path.exists(path):
            data = read_bytes(path)
            for s in secrets:
                check(s.encode() not in data and s[8:].encode() not in data,
                      "%s: the plaintext %s... is in %s" % (when, s[:14], path))


# ---- discovery and auth ------------------------------------------------------------

def test_public_endpoints(c):
    srv, api = c.boot()
    anon = srv.client()
    for tok in (None, "not-a-token"):
        r = anon.get("/health", token=tok)
        j = status_is(r, 200, "GET /health (token %r)" % tok)
        eq(j.get("status"), "ok", "health status", r)
        r = anon.get("/openapi.json", token=tok)
        status_is(r, 200, "GET /openapi.json (token %r)" % tok)
        eq((r.header("Content-Type") or "").split(";")[0], "application/openapi+json",
           "openapi.json Content-Type", r)
        check(isinstance(r.json, dict) and str(r.json.get("openapi", "")).startswith("3."),
              "openapi.json is not an OpenAPI 3.x document", r)
        r = anon.get("/.well-known/api-catalog", token=tok)
        status_is(r, 200, "GET /.well-known/api-catalog (token %r)" % tok)
        eq((r.header("Content-Type") or "").split(";")[0], "application/linkset+json",
           "api-catalog Content-Type", r)
        links = r.json.get("linkset") if isinstance(r.json, dict) else None
        check(isinstance(links, list) and links, "api-catalog has no linkset", r)
        descs = [d for l in links for d in l.get("service-desc", [])]
        check(any(d.get("href") == "/openapi.json" for d in descs),
              "api-catalog does not link /openapi.json as service-desc", r)
    srv.stop()


def test_openapi_documents_every_route(c):
    """Every route the server has (--print-routes) is in /openapi.json."""
    r = subprocess.run([SERVER, "--print-routes"], capture_output=True, text=True,
                       timeout=TIMEOUT, env=clean_env(), cwd=c.dir)
    check(r.returncode == 0 and r.stdout.strip(), "--print-routes failed: %r" % r)
    routes = [l.split()[:2] for l in r.stdout.splitlines() if l.strip()]
    srv, api = c.boot()
    doc = api.get("/openapi.json").json or {}
    paths = {re.sub(r"\{[^}]*\}", "{}", p): v for p, v in (doc.get("paths") or {}).items()}
    missing = []
    for method, pattern in routes:
        ops = paths.get(re.sub(r"\{[^}]*\}", "{}", pattern)) or {}
        if method.lower() not in ops:
            missing.append("%s %s" % (method, pattern))
    srv.stop()
    check(not missing, "/openapi.json lacks %d of %d routes, e.g. %s"
          % (len(missing), len(routes), ", ".join(missing[:8])))


def test_auth_missing_and_bad_tokens(c):
    srv, api = c.boot()
    anon = srv.client()
    r = anon.get("/apis")
    problem(r, 401, "unauthorized", "no Authorization header")
    www = r.header("WWW-Authenticate") or ""
    check(www.startswith("Bearer"), "401 WWW-Authenticate should be a Bearer challenge", r)
    check(HEX32_RE.match(r.json.get("request_id", "")), "401 request_id is not 32 hex", r)

    other = c.sibling("other")
    other.migrate()
    foreign = other.token("foreign", "admin")  # well-formed, unknown to this server
    k = mk_key(api, mk_app(api, mk_dev(api, "k@example.com")["id"])["id"])["key"]
    bad = [
        ("Basic cm9vdDpyb290", "Basic scheme"),
        ("Bearer", "Bearer without a token"),
        ("Bearer ", "Bearer with an empty token"),
        ("Bearer garbage", "garbage token"),
        ("Bearer " + api.token[:-1] + ("A" if api.token[-1] != "A" else "B"), "mistyped token"),
        ("Bearer " + api.token + "x", "token with a trailing char"),
        ("Bearer " + foreign, "token of another installation"),
        ("Bearer " + k, "an API key instead of an admin token"),
    ]
    for header, what in bad:
        r = anon.get("/apis", headers={"Authorization": header})
        problem(r, 401, "unauthorized", what)
        check((r.header("WWW-Authenticate") or "").startswith("Bearer"),
              "%s: WWW-Authenticate Bearer" % what, r)
    # the scheme is case-insensitive (RFC 9110 11.1)
    r = anon.get("/apis", headers={"Authorization": "bearer " + api.token})
    status_is(r, 200, "lower-case bearer scheme")

    # revoked with the CLI
    tok = c.token("doomed", "read")
    status_is(api.with_token(tok).get("/apis"), 200, "fresh read token")
    c.cli_ok("admin-token", "revoke", "doomed")
    problem(api.with_token(tok).get("/apis"), 401, "unauthorized", "revoked token")

    # expired: a token whose expiry has passed
    tok = c.token("shortlived", "read", "--expires-in-days", "1")
    status_is(api.with_token(tok).get("/apis"), 200, "token before expiry")
    con = sqlite3.connect(c.db, timeout=10)
    con.execute("UPDATE admin_tokens SET expires_at = ? WHERE name = 'shortlived'",
                (int(time.time()) - 60,))
    con.commit()
    con.close()
    problem(api.with_token(tok).get("/apis"), 401, "unauthorized", "expired token")
    # the server still works for good tokens
    status_is(api.get("/apis"), 200, "root token after the failures")
    srv.stop()


def test_scopes(c):
    srv, root = c.boot()
    read = root.with_token(c.token("reader", "read"))
    write = root.with_token(c.token("writer", "read,write"))
    keys = root.with_token(c.token("keymaster", "keys"))
    reports = root.with_token(c.token("reporter", "reports"))
    w = world(root)

    status_is(read.get("/apis"), 200, "read token GET /apis")
    status_is(read.get("/keys"), 200, "read token GET /keys")
    r = read.post("/apis", {"slug": "nope", "name": "Nope"})
    j = problem(r, 403, "forbidden", "read token POST /apis")
    has(j["detail"], '"write"', "403 detail names the write scope", r)
    j = problem(read.get("/admin-tokens"), 403, "forbidden", "read token GET /admin-tokens")
    has(j["detail"], '"admin"', "403 detail names the admin scope")
    problem(read.get("/audit"), 403, "forbidden", "read token GET /audit")
    j = problem(read.get("/usage"), 403, "forbidden", "read token GET /usage")
    has(j["detail"], '"reports"', "403 detail names the reports scope")
    problem(read.post("/keys", {"app_id": w["app"]["id"]}), 403, "forbidden",
            "read token POST /keys")

    # keys: issue keys, nothing else
    k = mk_key(keys, w["app"]["id"])
    status_is(keys.post("/keys/%s/rotate" % k["id"], {"grace_seconds": 0}), 201,
              "keys token rotates a key")
    j = problem(keys.post("/apis", {"slug": "nope", "name": "Nope"}), 403, "forbidden",
                "keys token POST /apis")
    has(j["detail"], '"write"', "403 detail for the keys token names write")
    problem(keys.get("/apis"), 403, "forbidden", "keys token GET /apis")

    # write: not keys
    j = problem(write.delete("/keys/%s" % k["id"]), 403, "forbidden", "write token DELETE /keys")
    has(j["detail"], '"keys"', "403 detail names the keys scope")
    created(write.post("/apis", {"slug": "w", "name": "W"}), "write token POST /apis")

    # reports
    status_is(reports.get("/usage?from=2026-01-01&to=2026-01-02"), 200, "reports token GET /usage")
    problem(reports.get("/apis"), 403, "forbidden", "reports token GET /apis")

    # admin implies every scope
    created(root.post("/apis", {"slug": "r", "name": "R"}), "admin POST /apis")
    mk_key(root, w["app"]["id"])
    status_is(root.get("/admin-tokens"), 200, "admin GET /admin-tokens")
    status_is(root.get("/audit"), 200, "admin GET /audit")
    status_is(root.get("/billing?period=2026-01"), 200, "admin GET /billing")
    # a 403 changes nothing
    eq(root.get("/apis/nope").status, 404, "the refused api does not exist")
    srv.stop()


# ---- resources -------------------------------------------------------------------

def test_apis_crud(c):
    srv, api = c.boot()
    r = api.post("/apis", {"slug": "pets", "name": "Pets", "hosts": ["pets.example.com"],
                           "path_prefix": "/v1", "methods": ["GET", "POST"], "retries": 3})
    a = created(r, "POST /apis", "api")
    eq(r.header("Location"), "/apis/%s" % a["id"], "Location", r)
    eq(r.header("ETag"), '"v1"', "ETag of a new api", r)
    eq((a["slug"], a["name"], a["hosts"], a["path_prefix"], a["methods"], a["retries"]),
       ("pets", "Pets", ["pets.example.com"], "/v1", ["GET", "POST"], 3), "stored members", r)
    eq((a["auth_mode"], a["key_query_param"], a["strip_prefix"], a["openapi"], a["version"]),
       ("key", None, False, None, 1), "defaults", r)
    check(isinstance(a["created_at"], int) and abs(a["created_at"] - time.time()) < 60,
          "created_at is not now", r)

    for ident in (a["id"], "pets"):
        r = api.get("/apis/%s" % ident)
        status_is(r, 200, "GET /apis/%s" % ident)
        eq(r.json, a, "GET /apis/%s body" % ident, r)
        eq(r.header("ETag"), '"v1"', "GET ETag", r)
    lst = api.get("/apis").json
    eq([x["id"] for x in lst["data"]], [a["id"]], "GET /apis ids")
    eq(lst.get("next"), None, "GET /apis next")

    r = api.post("/apis", {"slug": "pets", "name": "Again"})
    problem(r, 409, "conflict", "duplicate slug")

    r = api.delete("/apis/pets")
    status_is(r, 204, "DELETE /apis/pets")
    eq(r.body, b"", "204 body", r)
    problem(api.get("/apis/pets"), 404, "not-found", "GET after DELETE (slug)")
    problem(api.get("/apis/%s" % a["id"]), 404, "not-found", "GET after DELETE (id)")
    problem(api.delete("/apis/%s" % a["id"]), 404, "not-found", "second DELETE")
    problem(api.patch("/apis/%s" % a["id"], {"name": "x"}), 404, "not-found", "PATCH deleted")
    # the slug is free again
    mk_api(api, "pets")
    srv.stop()


def test_apis_patch_merge(c):
    srv, api = c.boot()
    a = mk_api(api, "pets", key_query_param="apikey", openapi=OPENAPI_DOC, retries=2)
    eq(a["key_query_param"], "apikey", "key_query_param at create")

    r = api.patch("/apis/pets", {"name": "Pet Store", "retries": 4})
    j = status_is(r, 200, "PATCH name+retries")
    eq((j["name"], j["retries"], j["key_query_param"], j["slug"]),
       ("Pet Store", 4, "apikey", "pets"), "PATCH changes only the given members", r)
    eq(r.header("ETag"), '"v2"', "ETag after PATCH", r)
    eq(j["version"], 2, "version after PATCH", r)
    eq(j["openapi"], OPENAPI_DOC, "untouched openapi after PATCH", r)

    # null clears a nullable column
    r = api.patch("/apis/pets", {"key_query_param": None})
    j = status_is(r, 200, "PATCH key_query_param null")
    eq(j["key_query_param"], None, "key_query_param after null", r)
    eq(api.get("/apis/pets").json["key_query_param"], None, "key_query_param re-read")

    # an object merges into the JSON document column (RFC 7396)
    r = api.patch("/apis/pets", {"openapi": {"info": {"title": "Pets v2", "version": None},
                                              "servers": [{"url": "https://x.example"}]}},
                  ctype="application/merge-patch+json")
    j = status_is(r, 200, "PATCH merging into openapi")
    want = json.loads(json.dumps(OPENAPI_DOC))
    want["info"] = {"title": "Pets v2"}
    want["servers"] = [{"url": "https://x.example"}]
    eq(j["openapi"], want, "merged openapi document", r)
    eq(api.get("/apis/pets/openapi").json, want, "GET /apis/pets/openapi after the merge")

    # a non-nullable member cannot be nulled; a bad patch changes nothing
    before = api.get("/apis/pets").json
    r = api.patch("/apis/pets", {"name": None, "retries": 99})
    invalid(r, ["/name", "/retries"], "PATCH name null + retries 99")
    eq(api.get("/apis/pets").json, before, "api after a refused PATCH")
    # server fields are read-only
    invalid(api.patch("/apis/pets", {"id": "api_01ARZ3NDEKTSV4RRFFQ69G5FAV"}), ["/id"],
            "PATCH id")
    invalid(api.patch("/apis/pets", {"version": 7}), ["/version"], "PATCH version")
    # a merge patch must be an object
    problem(api.patch("/apis/pets", "[]"), 400, "malformed-json", "PATCH with an array")
    # renaming the slug moves the natural key
    status_is(api.patch("/apis/pets", {"slug": "animals"}), 200, "PATCH slug")
    eq(api.get("/apis/animals").json["id"], a["id"], "GET by the new slug")
    problem(api.get("/apis/pets"), 404, "not-found", "GET by the old slug")
    srv.stop()


def test_apis_put(c):
    srv, api = c.boot()
    body = {"name": "Pets", "description": "all the pets", "retries": 5, "hosts": ["a.example"],
            "key_query_param": "k", "openapi": OPENAPI_DOC, "portal_visible": False,
            "healthcheck_path": "/hc", "healthy_threshold": 7, "passive_failures": 0}
    r = api.put("/apis/pets", body)
    a = created(r, "PUT /apis/pets (create)", "api")
    eq(r.header("Location"), "/apis/%s" % a["id"], "PUT create Location", r)
    eq(r.header("ETag"), '"v1"', "PUT create ETag", r)
    eq((a["slug"], a["description"], a["retries"], a["key_query_param"], a["portal_visible"]),
       ("pets", "all the pets", 5, "k", False), "PUT-created members", r)

    r = api.put("/apis/pets", {"name": "Pets 2", "path_prefix": "/p"})
    j = status_is(r, 200, "PUT /apis/pets (replace)")
    eq(j["id"], a["id"], "replace keeps the id", r)
    eq(r.header("ETag"), '"v2"', "ETag after replace", r)
    eq((j["name"], j["path_prefix"]), ("Pets 2", "/p"), "replaced members", r)
    defaults = {"description": "", "hosts": [], "methods": [], "strip_prefix": False,
                "connect_timeout_ms": 5000, "read_timeout_ms": 60000, "write_timeout_ms": 60000,
                "retries": 1, "auth_mode": "key", "key_query_param": None,
                "max_body_bytes": 10485760, "portal_visible": True, "openapi": None,
                "healthcheck_path": None, "healthcheck_interval_ms": 5000,
                "healthcheck_timeout_ms": 2000, "healthy_threshold": 2, "unhealthy_threshold": 3,
                "passive_failures": 3, "passive_cooldown_ms": 10000}
    for k, v in defaults.items():
        eq(j.get(k), v, "PUT replace resets omitted %s to its default" % k, r)
    # routes.c's defaults are the store's: a new API has the same members
    fresh = mk_api(api, "fresh")
    for k in fresh:
        if k not in ("id", "slug", "name", "path_prefix", "version", "created_at", "updated_at"):
            eq(j.get(k), fresh[k], "PUT replace default of %s equals a new API's" % k, r)
    eq(api.get("/apis/pets").json, j, "GET after replace")

    # body slug must match the path
    invalid(api.put("/apis/pets", {"slug": "other", "name": "X"}), ["/slug"], "PUT slug mismatch")
    status_is(api.put("/apis/pets", {"slug": "pets", "name": "Same"}), 200, "PUT same slug")
    # If-Match on PUT
    problem(api.put("/apis/pets", {"name": "Y"}, headers={"If-Match": '"v1"'}), 412,
            "precondition-failed", "PUT with a stale If-Match")
    status_is(api.put("/apis/pets", {"name": "Y"}, headers={"If-Match": '"v3"'}), 200,
              "PUT with the current If-Match")
    # an invalid replacement changes nothing
    before = api.get("/apis/pets").json
    invalid(api.put("/apis/pets", {"name": "Z", "retries": -1}), ["/retries"], "PUT retries -1")
    invalid(api.put("/apis/Bad_Slug", {"name": "Z"}), ["/slug"], "PUT with a bad slug in the path")
    eq(api.get("/apis/pets").json, before, "api after a refused PUT")
    # If-Match on a resource that does not exist is false (RFC 9110 13.1.1)
    r = api.put("/apis/ghost", {"name": "Ghost"}, headers={"If-Match": '"v1"'})
    problem(r, 412, "precondition-failed", "PUT create with If-Match \"v1\"")
    r = api.put("/apis/ghost", {"name": "Ghost"}, headers={"If-Match": "*"})
    problem(r, 412, "precondition-failed", "PUT create with If-Match *")
    problem(api.get("/apis/ghost"), 404, "not-found", "api created despite If-Match")
    srv.stop()


def test_api_delete_with_plans_conflicts(c):
    srv, api = c.boot()
    a = mk_api(api, "pets")
    p = mk_plan(api, a["id"])
    problem(api.delete("/apis/pets"), 409, "conflict", "DELETE an api with a plan")
    status_is(api.get("/apis/pets"), 200, "api still there after the 409")
    status_is(api.get("/plans/%s" % p["id"]), 200, "plan still there after the 409")
    status_is(api.delete("/plans/%s" % p["id"]), 204, "DELETE the plan")
    status_is(api.delete("/apis/pets"), 204, "DELETE the api once its plan is gone")
    srv.stop()


def test_targets(c):
    srv, api = c.boot()
    a = mk_api(api, "pets")
    b = mk_api(api, "birds")
    r = api.post("/apis/pets/targets", {"url": "http://backend.internal:8080/v1", "weight": 10})
    t = created(r, "POST /apis/pets/targets", "tgt")
    eq(r.header("Location"), "/apis/%s/targets/%s" % (a["id"], t["id"]), "target Location", r)
    eq(r.header("ETag"), '"v1"', "target ETag", r)
    eq((t["api_id"], t["url"], t["weight"]), (a["id"], "http://backend.internal:8080/v1", 10),
       "target members", r)
    t2 = created(api.post("/apis/%s/targets" % a["id"], {"url": "https://b.internal"}),
                 "POST target by api id")
    created(api.post("/apis/birds/targets", {"url": "https://birds.internal"}), "birds target")

    lst = api.get("/apis/pets/targets").json
    eq(sorted(x["id"] for x in lst["data"]), sorted([t["id"], t2["id"]]), "pets targets")
    r = api.get("/apis/pets/targets/%s" % t["id"])
    status_is(r, 200, "GET one target")
    eq(r.json, t, "GET target body", r)

    r = api.patch("/apis/pets/targets/%s" % t["id"], {"weight": 50})
    j = status_is(r, 200, "PATCH target weight")
    eq((j["weight"], j["version"], r.header("ETag")), (50, 2, '"v2"'), "patched target", r)
    invalid(api.patch("/apis/pets/targets/%s" % t["id"], {"weight": 5000}), ["/weight"],
            "PATCH weight 5000")
    invalid(api.patch("/apis/pets/targets/%s" % t["id"], {"api_id": b["id"]}), ["/api_id"],
            "PATCH target api_id")

    # a target of another api is not found under this one
    problem(api.get("/apis/birds/targets/%s" % t["id"]), 404, "not-found",
            "GET a pets target under birds")
    problem(api.patch("/apis/birds/targets/%s" % t["id"], {"weight": 1}), 404, "not-found",
            "PATCH a pets target under birds")
    problem(api.delete("/apis/birds/targets/%s" % t["id"]), 404, "not-found",
            "DELETE a pets target under birds")
    problem(api.get("/apis/nosuch/targets"), 404, "not-found", "targets of an unknown api")
    # api_id comes from the path
    invalid(api.post("/apis/pets/targets", {"url": "http://x.internal", "api_id": b["id"]}),
            ["/api_id"], "POST target with api_id")
    invalid(api.post("/apis/pets/targets", {"url": "ftp://x.internal", "weight": -1}),
            ["/url", "/weight"], "POST target with a bad url and weight")
    problem(api.post("/apis/pets/targets", {"url": "http://backend.internal:8080/v1"}), 409,
            "conflict", "duplicate target url")
    # the path fixes api_id: filtering on it again is refused
    problem(api.get("/apis/pets/targets?api_id=%s" % b["id"]), 400, "invalid-query",
            "targets list with an api_id query")

    status_is(api.delete("/apis/pets/targets/%s" % t["id"]), 204, "DELETE target")
    problem(api.get("/apis/pets/targets/%s" % t["id"]), 404, "not-found", "GET deleted target")
    eq([x["id"] for x in api.get("/apis/pets/targets").json["data"]], [t2["id"]],
       "targets after delete")
    srv.stop()


def test_api_openapi_document(c):
    srv, api = c.boot()
    mk_api(api, "pets")
    problem(api.get("/apis/pets/openapi"), 404, "not-found", "GET openapi of an api without one")
    r = api.put("/apis/pets/openapi", OPENAPI_DOC)
    j = status_is(r, 200, "PUT /apis/pets/openapi")
    eq(j.get("openapi"), OPENAPI_DOC, "api row after PUT openapi", r)
    eq(r.header("ETag"), '"v2"', "ETag after PUT openapi", r)
    r = api.get("/apis/pets/openapi")
    status_is(r, 200, "GET /apis/pets/openapi")
    eq(r.json, OPENAPI_DOC, "GET openapi returns the document", r)
    invalid(api.put("/apis/pets/openapi", {"info": {"title": "no version member"}}), ["/openapi"],
            "PUT a document without \"openapi\"")
    invalid(api.put("/apis/pets/openapi", {"openapi": "2.0"}), ["/openapi"],
            "PUT a swagger 2.0 document")
    eq(api.get("/apis/pets/openapi").json, OPENAPI_DOC, "document after refused PUTs")
    problem(api.put("/apis/nosuch/openapi", OPENAPI_DOC), 404, "not-found",
            "PUT openapi of an unknown api")
    problem(api.put("/apis/pets/openapi", "[1]"), 400, "malformed-json", "PUT openapi array")
    srv.stop()


def test_plans(c):
    srv, api = c.boot()
    a = mk_api(api, "pets")
    b = mk_api(api, "birds")
    body = {"api_id": a["id"], "slug": "gold", "name": "Gold", "rate_per_second": 10,
            "rate_per_minute": 300, "rate_per_hour": 10000, "quota_per_day": 100000,
            "quota_per_month": 2000000, "monthly_fee_minor": 4999, "included_calls": 1000000,
            "overage_price_micros": 250, "currency": "EUR", "requires_approval": True,
            "public": False}
    r = api.post("/plans", body)
    p = created(r, "POST /plans", "pln")
    eq(r.header("Location"), "/plans/%s" % p["id"], "plan Location", r)
    for k, v in body.items():
        eq(p.get(k), v, "plan member %s" % k, r)
        if isinstance(v, int) and not isinstance(v, bool):
            check(type(p[k]) is int, "plan member %s should be a JSON integer" % k, r)
    status_is(api.get("/plans/%s" % p["id"]), 200, "GET plan")
    # the same slug on another api is fine, on the same api a conflict
    mk_plan(api, b["id"], "gold")
    problem(api.post("/plans", {"api_id": a["id"], "slug": "gold", "name": "G2"}), 409,
            "conflict", "duplicate plan slug in one api")
    lst = api.get("/plans?api_id=%s" % a["id"]).json["data"]
    eq([x["id"] for x in lst], [p["id"]], "plans filtered by api_id")

    base = {"api_id": a["id"], "slug": "x", "name": "X"}
    invalid(api.post("/plans", dict(base, monthly_fee_minor=19.99)), ["/monthly_fee_minor"],
            "float money")
    invalid(api.post("/plans", dict(base, overage_price_micros=0.5)), ["/overage_price_micros"],
            "float overage price")
    invalid(api.post("/plans", dict(base, currency="usd")), ["/currency"], "currency usd")
    invalid(api.post("/plans", dict(base, currency="US")), ["/currency"], "currency US")
    invalid(api.post("/plans", dict(base, rate_per_second=0)), ["/rate_per_second"], "rate 0")
    invalid(api.post("/plans", dict(base, monthly_fee_minor=-1)), ["/monthly_fee_minor"],
            "negative fee")
    invalid(api.post("/plans", dict(base, api_id="api_01ARZ3NDEKTSV4RRFFQ69G5FAV")), ["/api_id"],
            "plan of an unknown api")
    invalid(api.post("/plans", {"slug": "x", "name": "X"}), ["/api_id"], "plan without api_id")
    # patch: rates nullable, api_id immutable
    r = api.patch("/plans/%s" % p["id"], {"rate_per_second": None, "monthly_fee_minor": 5999})
    j = status_is(r, 200, "PATCH plan")
    eq((j["rate_per_second"], j["monthly_fee_minor"]), (None, 5999), "patched plan", r)
    invalid(api.patch("/plans/%s" % p["id"], {"api_id": b["id"]}), ["/api_id"], "PATCH plan api_id")
    invalid(api.patch("/plans/%s" % p["id"], {"monthly_fee_minor": 1.5}), ["/monthly_fee_minor"],
            "PATCH float fee")
    status_is(api.delete("/plans/%s" % p["id"]), 204, "DELETE unused plan")
    problem(api.get("/plans/%s" % p["id"]), 404, "not-found", "GET deleted plan")
    srv.stop()


def test_developers_lifecycle(c):
    srv, api = c.boot()
    r = api.post("/developers", {"email": "ann@example.com", "name": "Ann"})
    d = created(r, "POST /developers", "dev")
    eq(r.header("Location"), "/developers/%s" % d["id"], "developer Location", r)
    eq(d["status"], "active", "a developer the publisher creates is active", r)
    check("password_hash" not in d, "developer row exposes password_hash", r)
    r = api.get("/developers/ann@example.com")
    status_is(r, 200, "GET developer by email")
    eq(r.json["id"], d["id"], "developer by email", r)
    problem(api.post("/developers", {"email": "ann@example.com"}), 409, "conflict",
            "duplicate email")
    problem(api.post("/developers", {"email": "ANN@Example.COM"}), 409, "conflict",
            "duplicate email in another case")
    eq(api.get("/developers/Ann@Example.com").json.get("id"), d["id"],
       "GET developer by email in another case")
    invalid(api.post("/developers", {"email": "not-an-email"}), ["/email"], "bad email")
    invalid(api.post("/developers", {"email": "x@example.com", "password_hash": "abc"}),
            ["/password_hash"], "password_hash is not writable")

    p = mk_dev(api, "pat@example.com", status="pending")
    eq(p["status"], "pending", "explicit pending status")
    url = "/developers/%s" % p["id"]
    r = api.post(url + "/approve")
    j = status_is(r, 200, "approve pending")
    eq(j["status"], "active", "approved", r)
    eq(r.header("ETag"), '"v%d"' % j["version"], "action ETag", r)
    problem(api.post(url + "/approve"), 409, "conflict", "approve an active developer")
    problem(api.post(url + "/unsuspend"), 409, "conflict", "unsuspend an active developer")
    eq(status_is(api.post(url + "/suspend"), 200, "suspend")["status"], "suspended", "suspended")
    problem(api.post(url + "/suspend"), 409, "conflict", "suspend a suspended developer")
    problem(api.post(url + "/approve"), 409, "conflict", "approve a suspended developer")
    eq(status_is(api.post(url + "/unsuspend"), 200, "unsuspend")["status"], "active", "unsuspended")
    q = mk_dev(api, "quinn@example.com", status="pending")
    eq(status_is(api.post("/developers/%s/suspend" % q["id"]), 200, "suspend pending")["status"],
       "suspended", "pending -> suspended")
    problem(api.post("/developers/dev_01ARZ3NDEKTSV4RRFFQ69G5FAV/approve"), 404, "not-found",
            "approve an unknown developer")
    # list filter by status
    susp = api.get("/developers?status=suspended").json["data"]
    eq([x["id"] for x in susp], [q["id"]], "developers?status=suspended")
    invalid(api.post("/developers", {"email": "s@example.com", "status": "banned"}), ["/status"],
            "unknown status")
    # PATCH name
    eq(status_is(api.patch(url, {"name": "Pat P."}), 200, "PATCH developer")["name"], "Pat P.",
       "patched name")
    srv.stop()


def test_developer_delete_cascades(c):
    srv, api = c.boot()
    w = world(api)
    d, app = w["dev"], w["app"]
    app2 = mk_app(api, d["id"], "second")
    a2 = mk_api(api, "birds")
    p2 = mk_plan(api, a2["id"], "bird-plan", requires_approval=True)
    s2 = mk_sub(api, app2["id"], a2["id"], p2["id"])
    eq(s2["status"], "pending", "subscription to an approval plan")
    k2 = mk_key(api, app2["id"])
    other = mk_dev(api, "bob@example.com")
    other_app = mk_app(api, other["id"], "bob-app")
    other_key = mk_key(api, other_app["id"])

    r = api.delete("/developers/%s" % d["id"])
    status_is(r, 204, "DELETE developer")
    r = api.get("/developers/%s" % d["id"])
    check(r.status == 404 or (r.status == 200 and r.json.get("status") == "deleted"),
          "a deleted developer reads as 404 or status deleted", r)
    for a in (app, app2):
        eq(api.get("/apps/%s" % a["id"]).json.get("status"), "deleted", "app %s after cascade"
           % a["name"])
    for s in (w["sub"], s2):
        eq(api.get("/subscriptions/%s" % s["id"]).json.get("status"), "cancelled",
           "subscription after cascade")
    for k in (w["key"], k2):
        eq(api.get("/keys/%s" % k["id"]).json.get("status"), "revoked", "key after cascade")
    # the other developer is untouched
    eq(api.get("/apps/%s" % other_app["id"]).json["status"], "active", "other app")
    eq(api.get("/keys/%s" % other_key["id"]).json["status"], "active", "other key")
    # a deleted developer takes no transitions, apps or keys
    problem(api.post("/developers/%s/approve" % d["id"]), 409, "conflict",
            "approve a deleted developer")
    problem(api.post("/developers/%s/unsuspend" % d["id"]), 409, "conflict",
            "unsuspend a deleted developer")
    problem(api.post("/apps", {"developer_id": d["id"], "name": "late"}), 409, "conflict",
            "app for a deleted developer")
    problem(api.post("/keys", {"app_id": app["id"]}), 409, "conflict", "key for a deleted app")
    problem(api.post("/subscriptions", {"app_id": app["id"], "api_id": a2["id"],
                                        "plan_id": p2["id"]}), 409, "conflict",
            "subscription for a deleted app")
    # the email can be used again, and then names the new developer
    d2 = mk_dev(api, "ann@example.com")
    check(d2["id"] != d["id"], "a new developer id for the reused email")
    eq(api.get("/developers/ann@example.com").json["id"], d2["id"], "email names the new one")
    srv.stop()


def test_status_only_through_transitions(c):
    """Statuses with rules (final cancellation, revocation, deletion with
    cascades, approval) cannot be side-stepped with a PATCH."""
    srv, api = c.boot()
    w = world(api)
    bad = []

    def attempt(path, status, before, what):
        r = api.patch(path, {"status": status})
        now = api.get(path).json.get("status")
        if not (400 <= r.status < 500) or now != before:
            bad.append("%s: PATCH %s {\"status\": \"%s\"} -> %d, status now %r (expected a 4xx "
                       "and %r)" % (what, path, status, r.status, now, before))

    status_is(api.post("/subscriptions/%s/cancel" % w["sub"]["id"]), 200, "cancel")
    attempt("/subscriptions/%s" % w["sub"]["id"], "active", "cancelled",
            "a cancelled subscription back to active")
    status_is(api.post("/keys/%s/revoke" % w["key"]["id"]), 200, "revoke")
    attempt("/keys/%s" % w["key"]["id"], "active", "revoked", "a revoked key back to active")
    k = mk_key(api, w["app"]["id"])
    r = api.patch("/developers/%s" % w["dev"]["id"], {"status": "deleted"})
    key_status = api.get("/keys/%s" % k["id"]).json["status"]
    if r.status < 300 and key_status != "revoked":
        bad.append("PATCH developer {\"status\": \"deleted\"} -> %d without the cascade of "
                   "DELETE: the developer's key is still %r" % (r.status, key_status))
    check(not bad, "\n".join(bad))
    srv.stop()


def test_apps(c):
    srv, api = c.boot()
    d = mk_dev(api, "ann@example.com")
    r = api.post("/apps", {"developer_id": d["id"], "name": "Ann's app", "description": "d"})
    a = created(r, "POST /apps", "app")
    eq(r.header("Location"), "/apps/%s" % a["id"], "app Location", r)
    eq((a["status"], a["developer_id"]), ("active", d["id"]), "app members", r)
    invalid(api.post("/apps", {"developer_id": "dev_01ARZ3NDEKTSV4RRFFQ69G5FAV", "name": "x"}),
            ["/developer_id"], "app of an unknown developer")
    invalid(api.post("/apps", {"name": "x"}), ["/developer_id"], "app without developer")
    j = status_is(api.patch("/apps/%s" % a["id"], {"name": "Renamed"}), 200, "PATCH app")
    eq(j["name"], "Renamed", "renamed app")
    d2 = mk_dev(api, "bob@example.com")
    invalid(api.patch("/apps/%s" % a["id"], {"developer_id": d2["id"]}), ["/developer_id"],
            "PATCH app developer_id")
    mk_app(api, d2["id"], "bob-app")
    eq([x["id"] for x in api.get("/apps?developer_id=%s" % d["id"]).json["data"]], [a["id"]],
       "apps filtered by developer")
    k = mk_key(api, a["id"])
    status_is(api.delete("/apps/%s" % a["id"]), 204, "DELETE app")
    eq(api.get("/apps/%s" % a["id"]).json.get("status"), "deleted", "deleted app status")
    eq(api.get("/keys/%s" % k["id"]).json["status"], "revoked", "key of a deleted app")
    problem(api.delete("/apps/%s" % a["id"]), 409, "conflict", "DELETE a deleted app")
    srv.stop()


def test_subscriptions(c):
    srv, api = c.boot()
    a = mk_api(api, "pets")
    b = mk_api(api, "birds")
    free = mk_plan(api, a["id"], "free")
    gold = mk_plan(api, a["id"], "gold", requires_approval=True)
    bird = mk_plan(api, b["id"], "bird")
    d = mk_dev(api, "ann@example.com")
    app = mk_app(api, d["id"], "one")
    app2 = mk_app(api, d["id"], "two")

    r = api.post("/subscriptions", {"app_id": app["id"], "api_id": a["id"], "plan_id": gold["id"]})
    s = created(r, "POST /subscriptions", "sub")
    eq(r.header("Location"), "/subscriptions/%s" % s["id"], "subscription Location", r)
    eq(s["status"], "pending", "status with a requires_approval plan", r)
    s2 = mk_sub(api, app2["id"], a["id"], free["id"])
    eq(s2["status"], "active", "status with an open plan")

    url = "/subscriptions/%s" % s["id"]
    problem(api.post(url + "/suspend"), 409, "conflict", "suspend a pending subscription")
    problem(api.post(url + "/resume"), 409, "conflict", "resume a pending subscription")
    eq(status_is(api.post(url + "/approve"), 200, "approve")["status"], "active", "approved")
    problem(api.post(url + "/approve"), 409, "conflict", "approve an active subscription")
    eq(status_is(api.post(url + "/suspend"), 200, "suspend")["status"], "suspended", "suspended")
    eq(status_is(api.post(url + "/resume"), 200, "resume")["status"], "active", "resumed")

    # second live subscription of the same app to the same api
    problem(api.post("/subscriptions", {"app_id": app["id"], "api_id": a["id"],
                                        "plan_id": free["id"]}), 409, "conflict",
            "second live subscription")
    # a plan of another api
    app3 = mk_app(api, d["id"], "three")
    invalid(api.post("/subscriptions", {"app_id": app3["id"], "api_id": a["id"],
                                        "plan_id": bird["id"]}), ["/plan_id"],
            "subscription with a plan of another api")
    invalid(api.post("/subscriptions", {"app_id": "app_01ARZ3NDEKTSV4RRFFQ69G5FAV",
                                        "api_id": a["id"], "plan_id": free["id"]}), ["/app_id"],
            "subscription of an unknown app")
    invalid(api.post("/subscriptions", {"app_id": 1, "api_id": "x"}),
            ["/app_id", "/api_id", "/plan_id"], "subscription with every field wrong")
    # change plan
    r = api.patch(url, {"plan_id": free["id"]})
    j = status_is(r, 200, "PATCH plan_id")
    eq(j["plan_id"], free["id"], "changed plan", r)
    invalid(api.patch(url, {"plan_id": bird["id"]}), ["/plan_id"], "PATCH plan of another api")
    invalid(api.patch(url, {"api_id": b["id"]}), ["/api_id"], "PATCH api_id")
    eq(api.get(url).json["plan_id"], free["id"], "plan after refused PATCHes")
    # filters
    eq(sorted(x["id"] for x in api.get("/subscriptions?api_id=%s" % a["id"]).json["data"]),
       sorted([s["id"], s2["id"]]), "subscriptions filtered by api")
    eq([x["id"] for x in api.get("/subscriptions?app_id=%s&status=active" % app2["id"])
        .json["data"]], [s2["id"]], "subscriptions filtered by app and status")
    # cancel is final; then a new subscription is allowed
    eq(status_is(api.post(url + "/cancel"), 200, "cancel")["status"], "cancelled", "cancelled")
    for act in ("approve", "suspend", "resume", "cancel"):
        problem(api.post(url + "/" + act), 409, "conflict", "%s a cancelled subscription" % act)
    s3 = mk_sub(api, app["id"], a["id"], free["id"])
    eq(s3["status"], "active", "new subscription after cancel")
    # DELETE cancels
    status_is(api.delete("/subscriptions/%s" % s3["id"]), 204, "DELETE subscription")
    eq(api.get("/subscriptions/%s" % s3["id"]).json.get("status"), "cancelled",
       "deleted subscription is cancelled")
    # a plan in use cannot be deleted
    problem(api.delete("/plans/%s" % free["id"]), 409, "conflict", "DELETE a plan in use")
    srv.stop()


def test_keys_issue_and_secrecy(c):
    srv, api = c.boot()
    d = mk_dev(api, "ann@example.com")
    app = mk_app(api, d["id"], "one")
    app2 = mk_app(api, d["id"], "two")
    exp = int(time.time()) + 7 * 86400
    r = api.post("/keys", {"app_id": app["id"], "name": "ci", "expires_at": exp})
    k = created(r, "POST /keys", "key")
    plain = k.get("key")
    check(isinstance(plain, str) and KEY_RE.match(plain),
          "key %r does not match %s" % (plain, KEY_RE.pattern), r)
    eq(len(KEY_IN_TEXT_RE.findall(r.text)), 1, "the plaintext appears exactly once in the 201", r)
    eq(r.header("Location"), "/keys/%s" % k["id"], "key Location", r)
    eq((k["app_id"], k["name"], k["status"], k["expires_at"]), (app["id"], "ci", "active", exp),
       "key members", r)
    check(plain.startswith(k["prefix"]) and len(k["prefix"]) < len(plain),
          "the key's prefix is a proper prefix of the plaintext", r)
    check("digest" not in k, "201 has a digest", r)
    k2 = mk_key(api, app["id"])
    k3 = mk_key(api, app2["id"])
    eq(len({plain, k2["key"], k3["key"]}), 3, "distinct keys")
    secrets = [plain, k2["key"], k3["key"]]

    r = api.get("/keys/%s" % k["id"])
    status_is(r, 200, "GET /keys/{id}")
    check("key" not in r.json and "digest" not in r.json, "GET key shows key or digest", r)
    expected = dict(k)
    del expected["key"]
    eq(r.json, expected, "GET key equals the created row less the plaintext", r)
    for path in ("/keys", "/keys?app_id=%s" % app["id"], "/keys?status=active",
                 "/keys/%s" % k2["id"], "/audit", "/config"):
        r = api.get(path)
        check(r.status in (200,), "GET %s" % path, r)
        no_secrets(r.text, secrets, "GET %s" % path)
        if path.startswith("/keys?") or path == "/keys":
            for row in r.json["data"]:
                check("key" not in row and "digest" not in row, "list row has key/digest", r)
    eq(sorted(x["id"] for x in api.get("/keys?app_id=%s" % app["id"]).json["data"]),
       sorted([k["id"], k2["id"]]), "keys filtered by app_id")
    status_is(api.post("/keys/%s/revoke" % k2["id"]), 200, "revoke k2")
    eq([x["id"] for x in api.get("/keys?status=revoked").json["data"]], [k2["id"]],
       "keys filtered by status=revoked")
    eq([x["id"] for x in api.get("/keys?app_id=%s&status=active" % app["id"]).json["data"]],
       [k["id"]], "keys filtered by app_id and status")

    invalid(api.post("/keys", {"app_id": app["id"], "expires_at": int(time.time()) - 10}),
            ["/expires_at"], "key expiring in the past")
    invalid(api.post("/keys", {"app_id": "nope"}), ["/app_id"], "key with a bad app_id")
    invalid(api.post("/keys", {}), ["/app_id"], "key without app_id")
    invalid(api.post("/keys", {"app_id": app["id"], "digest": "00" * 32}), ["/digest"],
            "key with a digest member")
    invalid(api.post("/keys", {"app_id": app["id"], "key": "tg_live_x"}), ["/key"],
            "key with a chosen plaintext")
    invalid(api.post("/keys", {"app_id": "app_01ARZ3NDEKTSV4RRFFQ69G5FAV"}), ["/app_id"],
            "key of an unknown app")
    # the plaintext is not on disk, neither while the server runs (WAL) nor after
    plaintext_not_on_disk(c, secrets, "while the server runs")
    srv.stop()
    plaintext_not_on_disk(c, secrets, "after the server stopped")
    srv = c.start()
    api = srv.client(api.token)
    status_is(api.get("/keys/%s" % k["id"]), 200, "key survives a restart")
    srv.stop()


def test_keys_rotate_and_revoke(c):
    srv, api = c.boot()
    w = world(api)
    old = w["key"]
    t0 = int(time.time())
    r = api.post("/keys/%s/rotate" % old["id"], {"grace_seconds": 3600})
    new = created(r, "rotate with grace 3600", "key")
    t1 = int(time.time())
    check(KEY_RE.match(new.get("key", "")), "rotated key plaintext", r)
    check(new["key"] != old["key"] and new["id"] != old["id"], "rotation gives a new key", r)
    eq(r.header("Location"), "/keys/%s" % new["id"], "rotate Location", r)
    eq((new["app_id"], new["name"], new["rotated_from"], new["status"]),
       (old["app_id"], old["name"], old["id"], "active"), "new key members", r)
    prev = new.get("previous")
    check(isinstance(prev, dict), "rotate response has no previous", r)
    eq((prev.get("id"), prev.get("status")), (old["id"], "active"), "previous key", r)
    check(t0 + 3600 - 2 <= (prev.get("expires_at") or 0) <= t1 + 3600 + 2,
          "previous.expires_at should be now+3600, got %r (now %d)" % (prev.get("expires_at"), t1),
          r)
    check("key" not in prev and "digest" not in prev, "previous shows key/digest", r)
    eq(api.get("/keys/%s" % old["id"]).json["expires_at"], prev["expires_at"], "old key re-read")

    r = api.post("/keys/%s/rotate" % new["id"], {"grace_seconds": 0})
    newer = created(r, "rotate with grace 0", "key")
    eq(newer["previous"]["status"], "revoked", "grace 0 revokes the previous key", r)
    eq(api.get("/keys/%s" % new["id"]).json["status"], "revoked", "re-read revoked key")
    problem(api.post("/keys/%s/rotate" % new["id"]), 409, "conflict", "rotate a revoked key")
    # default grace: one day
    t0 = int(time.time())
    r = api.post("/keys/%s/rotate" % newer["id"])
    j = created(r, "rotate without a body", "key")
    near(j["previous"]["expires_at"], t0 + 86400, 5, "default grace", r)
    invalid(api.post("/keys/%s/rotate" % j["id"], {"grace_seconds": 31 * 86400}),
            ["/grace_seconds"], "grace over 30 days")
    invalid(api.post("/keys/%s/rotate" % j["id"], {"grace_seconds": "soon"}),
            ["/grace_seconds"], "grace not an integer")
    invalid(api.post("/keys/%s/rotate" % j["id"], {"grace": 5}), ["/grace"],
            "unknown rotate member")

    # revoke: 200, idempotent
    r = api.post("/keys/%s/revoke" % j["id"])
    eq(status_is(r, 200, "revoke")["status"], "revoked", "revoked key", r)
    check("key" not in r.json, "revoke response shows the key", r)
    eq(status_is(api.post("/keys/%s/revoke" % j["id"]), 200, "revoke again")["status"],
       "revoked", "revoke is idempotent")
    # DELETE revokes
    k = mk_key(api, w["app"]["id"])
    status_is(api.delete("/keys/%s" % k["id"]), 204, "DELETE key")
    eq(api.get("/keys/%s" % k["id"]).json.get("status"), "revoked", "DELETEd key is revoked")
    problem(api.post("/keys/key_01ARZ3NDEKTSV4RRFFQ69G5FAV/revoke"), 404, "not-found",
            "revoke an unknown key")
    # PATCH a key's name
    k = mk_key(api, w["app"]["id"], name="a")
    eq(status_is(api.patch("/keys/%s" % k["id"], {"name": "b"}), 200, "PATCH key name")["name"],
       "b", "renamed key")
    invalid(api.patch("/keys/%s" % k["id"], {"app_id": w["app"]["id"]}), ["/app_id"],
            "PATCH key app_id")
    # keys of a deleted app
    status_is(api.delete("/apps/%s" % w["app"]["id"]), 204, "DELETE app")
    problem(api.post("/keys", {"app_id": w["app"]["id"]}), 409, "conflict", "key for a deleted app")
    srv.stop()


def test_admin_tokens_api(c):
    srv, api = c.boot()
    writer = api.with_token(c.token("writer", "read,write,keys,reports"))
    problem(writer.get("/admin-tokens"), 403, "forbidden", "non-admin lists tokens")
    problem(writer.post("/admin-tokens", {"name": "x", "scopes": ["read"]}), 403, "forbidden",
            "non-admin creates a token")

    r = api.post("/admin-tokens", {"name": "ci-bot", "scopes": ["read"]})
    t = created(r, "POST /admin-tokens", "tok")
    tok = t.get("token")
    check(isinstance(tok, str) and TOKEN_RE.match(tok), "token %r has the wrong shape" % tok, r)
    eq(len(TOKEN_IN_TEXT_RE.findall(r.text)), 1, "the token appears once in the 201", r)
    eq(r.header("Location"), "/admin-tokens/%s" % t["id"], "token Location", r)
    eq((t["name"], t["scopes"], t["status"]), ("ci-bot", ["read"], "active"), "token members", r)
    check("digest" not in t, "201 shows the digest", r)
    bot = api.with_token(tok)
    status_is(bot.get("/apis"), 200, "new token reads")
    problem(bot.post("/apis", {"slug": "x", "name": "X"}), 403, "forbidden", "new read token writes")

    for path in ("/admin-tokens", "/admin-tokens/%s" % t["id"], "/admin-tokens/ci-bot"):
        r = api.get(path)
        status_is(r, 200, "GET %s" % path)
        no_secrets(r.text, [tok, api.token], "GET %s" % path)
        check("token" not in (r.json if "data" not in r.json else r.json["data"][0]),
              "%s shows a token member" % path, r)
    names = sorted(x["name"] for x in api.get("/admin-tokens").json["data"])
    eq(names, ["ci-bot", "root", "writer"], "token names")

    problem(api.post("/admin-tokens", {"name": "ci-bot", "scopes": ["read"]}), 409, "conflict",
            "duplicate token name")
    invalid(api.post("/admin-tokens", {"name": "bad name", "scopes": ["read", "sudo"]}),
            ["/name", "/scopes/1"], "bad name and scope")
    invalid(api.post("/admin-tokens", {"scopes": ["read"]}), ["/name"], "token without a name")
    invalid(api.post("/admin-tokens", {"name": "e", "scopes": []}), ["/scopes"], "no scopes")
    invalid(api.post("/admin-tokens", {"name": "e", "scopes": ["read"],
                                       "expires_at": int(time.time()) - 5}), ["/expires_at"],
            "token expiring in the past")
    invalid(api.post("/admin-tokens", {"name": "e", "scopes": ["read"], "digest": "00"}),
            ["/digest"], "token with a digest member")

    r = api.delete("/admin-tokens/%s" % t["id"])
    status_is(r, 204, "DELETE admin token")
    problem(bot.get("/apis"), 401, "unauthorized", "deleted token")
    eq(api.get("/admin-tokens/%s" % t["id"]).json.get("status"), "revoked", "deleted token status")
    # revoking yourself ends your own access
    r = api.post("/admin-tokens", {"name": "self", "scopes": ["admin"]})
    me = api.with_token(created(r, "create self")["token"])
    status_is(me.delete("/admin-tokens/self"), 204, "token deletes itself")
    problem(me.get("/apis"), 401, "unauthorized", "self-deleted token")
    srv.stop()


def test_audit_log(c):
    srv, root = c.boot()
    ops = c.token("ops", "read,write,keys")
    api = root.with_token(ops)
    n = [0]
    expected = []  # (request id, actor, action, entity, entity_id or None)
    secrets = []

    def do(client, method, path, body=None, action=None, entity=None, eid=None, actor="ops"):
        n[0] += 1
        rid = "audit-test-%03d" % n[0]
        r = client.req(method, path, body, headers={"X-Request-Id": rid})
        check(r.status < 300, "%s %s for the audit test" % (method, path), r)
        eq(r.header("X-Request-Id"), rid, "X-Request-Id echoed", r)
        ent_id = eid(r) if callable(eid) else eid
        expected.append((rid, actor, action, entity, ent_id))
        if isinstance(r.json, dict):
            for k in ("key", "token"):
                if isinstance(r.json.get(k), str):
                    secrets.append(r.json[k])
        return r.json

    rid_of = lambda r: r.json["id"]
    a = do(api, "POST", "/apis", {"slug": "pets", "name": "Pets"}, "create", "api", rid_of)
    do(api, "PATCH", "/apis/pets", {"retries": 2}, "update", "api", a["id"])
    do(api, "PUT", "/apis/birds", {"name": "Birds"}, "create", "api", rid_of)
    do(api, "PUT", "/apis/birds", {"name": "Birds 2"}, "update", "api",
       lambda r: r.json["id"])
    do(api, "PUT", "/apis/pets/openapi", OPENAPI_DOC, "update", "api", a["id"])
    t = do(api, "POST", "/apis/pets/targets", {"url": "http://b.internal"}, "create", "target",
           rid_of)
    do(api, "PATCH", "/apis/pets/targets/%s" % t["id"], {"weight": 3}, "update", "target", t["id"])
    do(api, "DELETE", "/apis/pets/targets/%s" % t["id"], None, "delete", "target", t["id"])
    p = do(api, "POST", "/plans", {"api_id": a["id"], "slug": "gold", "name": "Gold",
                                   "requires_approval": True}, "create", "plan", rid_of)
    do(api, "PATCH", "/plans/%s" % p["id"], {"monthly_fee_minor": 100}, "update", "plan", p["id"])
    d = do(api, "POST", "/developers", {"email": "ann@example.com", "status": "pending"},
           "create", "developer", rid_of)
    do(api, "POST", "/developers/%s/approve" % d["id"], None, "approve", "developer", d["id"])
    do(api, "POST", "/developers/%s/suspend" % d["id"], None, "suspend", "developer", d["id"])
    do(api, "POST", "/developers/%s/unsuspend" % d["id"], None, "unsuspend", "developer", d["id"])
    do(api, "PATCH", "/developers/%s" % d["id"], {"name": "Ann"}, "update", "developer", d["id"])
    app = do(api, "POST", "/apps", {"developer_id": d["id"], "name": "a"}, "create", "app", rid_of)
    do(api, "PATCH", "/apps/%s" % app["id"], {"name": "b"}, "update", "app", app["id"])
    s = do(api, "POST", "/subscriptions", {"app_id": app["id"], "api_id": a["id"],
                                           "plan_id": p["id"]}, "create", "subscription", rid_of)
    for act in ("approve", "suspend", "resume", "cancel"):
        do(api, "POST", "/subscriptions/%s/%s" % (s["id"], act), None, act, "subscription",
           s["id"])
    k = do(api, "POST", "/keys", {"app_id": app["id"], "name": "k"}, "create", "key", rid_of)
    do(api, "PATCH", "/keys/%s" % k["id"], {"name": "k2"}, "update", "key", k["id"])
    do(api, "POST", "/keys/%s/rotate" % k["id"], {"grace_seconds": 60}, "rotate", "key", k["id"])
    k2 = do(api, "POST", "/keys", {"app_id": app["id"]}, "create", "key", rid_of)
    do(api, "POST", "/keys/%s/revoke" % k2["id"], None, "revoke", "key", k2["id"])
    k3 = do(api, "POST", "/keys", {"app_id": app["id"]}, "create", "key", rid_of)
    do(api, "DELETE", "/keys/%s" % k3["id"], None, "delete", "key", k3["id"])
    tk = do(root, "POST", "/admin-tokens", {"name": "temp", "scopes": ["read"]}, "create",
            "admin_token", rid_of, actor="root")
    do(root, "DELETE", "/admin-tokens/%s" % tk["id"], None, "delete", "admin_token", tk["id"],
       actor="root")
    do(api, "DELETE", "/apps/%s" % app["id"], None, "delete", "app", app["id"])
    do(api, "DELETE", "/developers/%s" % d["id"], None, "delete", "developer", d["id"])
    do(api, "DELETE", "/apis/birds", None, "delete", "api", None)
    # failures leave no audit row
    r = api.post("/apis", {"slug": "BAD", "name": "x"}, headers={"X-Request-Id": "audit-fail-1"})
    status_is(r, 422, "failing create")
    r = api.delete("/apis/pets", headers={"X-Request-Id": "audit-fail-2"})
    status_is(r, 409, "failing delete")

    rows = walk(root, "/audit?limit=7", "audit")
    by_rid = {}
    for row in rows:
        by_rid.setdefault(row.get("request_id"), []).append(row)
        check(ID_RE["aud"].match(row.get("id", "")), "audit row id", row)
        check(isinstance(row.get("at"), int) and abs(row["at"] - time.time()) < 300,
              "audit row time", row)
    check("audit-fail-1" not in by_rid and "audit-fail-2" not in by_rid,
          "a failed request left an audit row: %r" % (by_rid.get("audit-fail-1") or
                                                    by_rid.get("audit-fail-2")))
    problems = []
    for rid, actor, action, entity, eid in expected:
        got = by_rid.get(rid, [])
        want = [r for r in got if r.get("action") == action and r.get("entity") == entity]
        if len(want) != 1:
            problems.append("%s: expected one audit row %s %s, got %r"
                            % (rid, action, entity, [(r.get("action"), r.get("entity"))
                                                     for r in got]))
            continue
        row = want[0]
        if row.get("actor") != actor:
            problems.append("%s: actor %r, expected %r" % (rid, row.get("actor"), actor))
        if eid is not None and row.get("entity_id") != eid:
            problems.append("%s: entity_id %r, expected %r" % (rid, row.get("entity_id"), eid))
    check(not problems, "audit rows:\n  " + "\n  ".join(problems))
    text = json.dumps(rows)
    no_secrets(text, secrets + [root.token, ops], "audit rows")
    check(KEY_IN_TEXT_RE.search(text) is None and TOKEN_IN_TEXT_RE.search(text) is None,
          "an audit row holds a key or token plaintext")
    # filters
    for q, pred in (("actor=root", lambda r: r["actor"] == "root"),
                    ("action=rotate", lambda r: r["action"] == "rotate"),
                    ("entity=key&entity_id=%s" % k["id"],
                     lambda r: r["entity"] == "key" and r["entity_id"] == k["id"])):
        got = walk(root, "/audit?" + q, "audit?" + q)
        check(got and all(pred(r) for r in got), "audit?%s returned wrong rows: %r" % (q, got))
        eq(len(got), len([r for r in rows if pred(r)]), "audit?%s count" % q)
    srv.stop()


# ---- declarative config -------------------------------------------------------------

def build_config_world(api):
    a = mk_api(api, "pets", hosts=["pets.example.com"], openapi=OPENAPI_DOC, retries=2)
    b = mk_api(api, "birds", auth_mode="none")
    for url, wgt in (("https://b.internal", 5), ("http://a.internal:8080", 1)):
        created(api.post("/apis/pets/targets", {"url": url, "weight": wgt}), "target")
    free = mk_plan(api, a["id"], "free", rate_per_second=5)
    gold = mk_plan(api, a["id"], "gold", monthly_fee_minor=999, currency="EUR",
                   requires_approval=True)
    bp = mk_plan(api, b["id"], "basic")
    zed = mk_dev(api, "zed@example.com", name="Zed")
    ann = mk_dev(api, "ann@example.com", name="Ann", billing_customer_id="cus_1")
    gone = mk_dev(api, "gone@example.com")
    z1 = mk_app(api, zed["id"], "zeta")
    a2 = mk_app(api, ann["id"], "beta")
    a1 = mk_app(api, ann["id"], "alpha", description="first")
    mk_sub(api, a1["id"], a["id"], gold["id"])
    mk_sub(api, a1["id"], b["id"], bp["id"])
    s = mk_sub(api, a2["id"], a["id"], free["id"])
    status_is(api.post("/subscriptions/%s/cancel" % s["id"]), 200, "cancel")
    mk_sub(api, z1["id"], a["id"], free["id"])
    mk_key(api, a1["id"])
    mk_app(api, gone["id"], "gone-app")
    status_is(api.delete("/developers/%s" % gone["id"]), 204, "delete developer")


def find_ids(v, path=""):
    """JSON pointers of members named id / *_id in a document."""
    out = []
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "id" or k.endswith("_id") and k != "billing_customer_id":
                out.append(path + "/" + k)
            out.extend(find_ids(x, path + "/" + k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out.extend(find_ids(x, "%s/%d" % (path, i)))
    return out


def member_names(v):
    """Every member name in a document, except inside OpenAPI documents."""
    out = set()
    if isinstance(v, dict):
        for k, x in v.items():
            out.add(k)
            if k != "openapi":
                out |= member_names(x)
    elif isinstance(v, list):
        for x in v:
            out |= member_names(x)
    return out


def test_config_export_deterministic(c):
    srv, api = c.boot()
    build_config_world(api)
    r1 = api.get("/config")
    status_is(r1, 200, "GET /config")
    r2 = api.get("/config")
    status_is(r2, 200, "GET /config again")
    check(r1.body == r2.body, "two exports differ:\n%s\n---\n%s" % (r1.text[:2000], r2.text[:2000]))
    doc = r1.json
    check(isinstance(doc, dict), "export is not a JSON object", r1)
    eq(doc.get("_format_version"), "1.0", "_format_version", r1)
    eq([x["slug"] for x in doc["apis"]], ["birds", "pets"], "apis sorted by slug", r1)
    pets = doc["apis"][1]
    eq([t["url"] for t in pets["targets"]], ["http://a.internal:8080", "https://b.internal"],
       "targets sorted by url", r1)
    eq([p["slug"] for p in pets["plans"]], ["free", "gold"], "plans sorted by slug", r1)
    eq(pets.get("openapi"), OPENAPI_DOC, "openapi exported", r1)
    eq([d["email"] for d in doc["developers"]], ["ann@example.com", "zed@example.com"],
       "developers sorted by email, deleted ones left out", r1)
    ann = doc["developers"][0]
    eq([a["name"] for a in ann["apps"]], ["alpha", "beta"], "apps sorted by name", r1)
    eq([(s["api"], s["plan"]) for s in ann["apps"][0]["subscriptions"]],
       [("birds", "basic"), ("pets", "gold")], "subscriptions sorted by api, plan", r1)
    eq(ann["apps"][1]["subscriptions"], [], "cancelled subscriptions left out", r1)
    eq(find_ids(doc), [], "ids in the export", r1)
    server_made = {"version", "created_at", "updated_at", "password_hash", "digest", "prefix",
                   "key", "token", "last_used_day", "rotated_from"}
    eq(sorted(server_made & member_names(doc)), [], "server-made members in the export", r1)
    check(KEY_IN_TEXT_RE.search(r1.text) is None, "export holds a key", r1)
    # a change shows; undoing it gives the same bytes again
    status_is(api.patch("/apis/pets", {"retries": 3}), 200, "PATCH")
    check(api.get("/config").body != r1.body, "export did not change after a PATCH")
    status_is(api.patch("/apis/pets", {"retries": 2}), 200, "PATCH back")
    check(api.get("/config").body == r1.body, "export after undoing a change differs")
    srv.stop()


def test_config_dry_run(c):
    srv, api = c.boot()
    build_config_world(api)
    before = api.get("/config")
    status_is(before, 200, "GET /config")
    audit_before = len(walk(api, "/audit?limit=1000", "audit"))
    counts_before = c.counts()
    doc = json.loads(before.text)
    doc["apis"].append({"slug": "cats", "name": "Cats", "targets": [], "plans": []})
    doc["apis"][1]["retries"] = 7
    doc["developers"].append({"email": "new@example.com", "name": "New", "apps": []})
    r = api.post("/config?dry_run=true", doc)
    j = status_is(r, 200, "POST /config?dry_run=true")
    eq(j.get("dry_run"), True, "dry_run member", r)
    created_ = j.get("created") or []
    check({"entity": "api", "key": "cats"} in created_,
          "diff.created lacks the api cats: %r" % created_, r)
    check(any(x.get("entity") == "developer" and x.get("key") == "new@example.com"
              for x in created_), "diff.created lacks the developer", r)
    upd = [x for x in j.get("updated") or [] if x.get("entity") == "api" and x.get("key") == "pets"]
    check(upd and "retries" in upd[0].get("fields", []), "diff.updated lacks pets.retries", r)
    check(isinstance(j.get("unchanged"), int) and j["unchanged"] > 0, "diff.unchanged", r)
    eq(j.get("deleted"), [], "diff.deleted without prune", r)
    # nothing changed
    problem(api.get("/apis/cats"), 404, "not-found", "api of a dry run")
    eq(api.get("/apis/pets").json["retries"], 2, "retries after a dry run")
    check(api.get("/config").body == before.body, "export changed after a dry run")
    eq(len(walk(api, "/audit?limit=1000", "audit")), audit_before, "audit rows after a dry run")
    eq(c.counts(), counts_before, "tollgate status counts after a dry run")
    # prune: a dry run lists the deletion, the real one does it
    pruned = json.loads(before.text)
    gone = pruned["apis"][1]["targets"].pop(0)["url"]
    r = api.post("/config?dry_run=true&prune=true", pruned)
    j = status_is(r, 200, "dry run with prune")
    dels = j.get("deleted") or []
    check(len(dels) == 1 and dels[0].get("entity") == "target" and gone in dels[0].get("key", ""),
          "dry run with prune should list the one target it deletes", r)
    eq(len(api.get("/apis/pets/targets").json["data"]), 2, "targets after a pruning dry run")
    status_is(api.post("/config?prune=true", pruned), 200, "import with prune")
    eq([t["url"] for t in api.get("/apis/pets/targets").json["data"] if t["url"] == gone], [],
       "pruned target")
    before = api.get("/config")
    check(json.loads(before.text) == pruned, "export after a prune equals the document")
    # a mistyped parameter must not turn a dry run into a real import
    r = api.post("/config?dryrun=true", doc)
    problem(r, 400, "invalid-query", "POST /config?dryrun=true (unknown parameter)")
    problem(api.get("/apis/cats"), 404, "not-found", "api after POST /config?dryrun=true")
    # dry_run=false applies (and a bad dry_run value is refused)
    problem(api.post("/config?dry_run=maybe", doc), 400, "invalid-query", "dry_run=maybe")
    j = status_is(api.post("/config?dry_run=false", doc), 200, "POST /config?dry_run=false")
    eq(j.get("dry_run"), False, "dry_run member of a real import", r)
    status_is(api.get("/apis/cats"), 200, "api of the real import")
    eq(api.get("/apis/pets").json["retries"], 7, "retries after the real import")
    srv.stop()


def test_config_import_roundtrip(c):
    srv, api = c.boot()
    build_config_world(api)
    exp = api.get("/config")
    status_is(exp, 200, "GET /config (A)")
    srv.stop()

    b = c.sibling("second")
    srv2, api2 = b.boot()
    r = api2.post("/config", exp.body)
    j = status_is(r, 200, "POST /config into an empty installation")
    eq(j.get("dry_run"), False, "dry_run member", r)
    kinds = sorted({x.get("entity") for x in j.get("created", [])})
    for k in ("api", "app", "developer", "plan", "subscription", "target"):
        check(k in kinds, "diff.created names no %s: %r" % (k, kinds), r)
    exp2 = api2.get("/config")
    status_is(exp2, 200, "GET /config (B)")
    check(exp2.body == exp.body, "the import does not reproduce the export:\n%s\n---\n%s"
          % (exp.text[:3000], exp2.text[:3000]))
    # importing the same document again changes nothing
    audit_n = len(walk(api2, "/audit?limit=1000", "audit"))
    j = status_is(api2.post("/config", exp.body), 200, "second import")
    eq((j.get("created"), j.get("updated"), j.get("deleted")), ([], [], []),
       "diff of a repeated import", r)
    check(api2.get("/config").body == exp.body, "export after a repeated import")
    # the import is in the audit log, by the importing token
    rows = walk(api2, "/audit?action=import", "audit?action=import")
    check(len(rows) >= 1 and all(x["actor"] == "root" for x in rows), "import audit rows", rows)
    check(len(walk(api2, "/audit?limit=1000", "audit")) >= audit_n, "audit rows")
    # the imported entities work through the API
    pets = api2.get("/apis/pets")
    status_is(pets, 200, "imported api")
    eq(len(api2.get("/plans?api_id=%s" % pets.json["id"]).json["data"]), 2, "imported plans")
    srv2.stop()


def test_config_import_invalid(c):
    srv, api = c.boot()
    build_config_world(api)
    before = api.get("/config")
    counts = c.counts()
    doc = {"_format_version": "1.0",
           "apis": [{"slug": "good", "name": "Good", "targets": [], "plans": []},
                    {"slug": "Bad Slug", "name": "X", "retries": "many",
                     "targets": [{"url": "ftp://nope"}], "plans": []}],
           "developers": [{"name": "no email", "apps": []},
                          {"email": "ok@example.com", "bogus": 1, "apps": []}]}
    r = api.post("/config", doc)
    invalid(r, ["/apis/1/slug", "/apis/1/retries", "/apis/1/targets/0/url",
                "/developers/0/email", "/developers/1/bogus"], "invalid document")
    check(len(r.json.get("errors", [])) >= 5, "every bad member is listed", r)
    r = api.post("/config?dry_run=true", doc)
    invalid(r, ["/apis/1/slug"], "invalid document, dry run")
    # the last entity alone is bad: still nothing is written
    doc = json.loads(before.text)
    doc["apis"].insert(0, {"slug": "aaa", "name": "First", "targets": [], "plans": []})
    doc["developers"].append({"email": "last@example.com", "apps": [
        {"name": "x", "subscriptions": [{"api": "pets", "plan": "nosuchplan"}]}]})
    r = api.post("/config", doc)
    invalid(r, ["/developers/%d/apps/0/subscriptions/0/plan" % (len(doc["developers"]) - 1)],
            "an import whose last entity is bad")
    problem(api.get("/apis/aaa"), 404, "not-found", "the first api of a failed import")
    problem(api.post("/config", []), 400, "malformed-json", "import of an array")
    invalid(api.post("/config", {"_format_version": "9.9", "apis": []}), ["/_format_version"],
            "import of an unknown format version")
    invalid(api.post("/config", {"apis": []}), ["/_format_version"],
            "import without a format version")
    invalid(api.post("/config", {"_format_version": "1.0", "apis": {}}), ["/apis"],
            "import with apis not an array")
    # prune that would delete a plan in use: refused, nothing deleted
    doc = json.loads(before.text)
    doc["apis"] = [x for x in doc["apis"] if x["slug"] != "birds"]
    for d in doc["developers"]:
        for a in d["apps"]:
            a["subscriptions"] = [x for x in a["subscriptions"] if x["api"] != "birds"]
    problem(api.post("/config?prune=true", doc), 409, "conflict", "prune of an api in use")
    check(api.get("/config").body == before.body, "export after the failed imports")
    eq(c.counts(), counts, "tollgate status counts after the failed imports")
    srv.stop()


def test_usage_and_billing_parameters(c):
    """Every bad report parameter is a 400 problem naming it; a range the
    ledger cannot serve any more is a 422."""
    srv, api = c.boot()
    cases = [("/usage", ["from", "to"]),
             ("/usage?from=2026-01-01", ["to"]),
             ("/usage?from=yesterday&to=2026-01-02", ["from"]),
             ("/usage?from=2026-01-01T00:00:30Z&to=2026-01-02", ["from"]),
             ("/usage?from=2026-01-02&to=2026-01-01", ["to"]),
             ("/usage?from=2026-01-01&to=2026-01-02&granularity=week", ["granularity"]),
             ("/usage?from=2026-01-01&to=2026-01-02&group_by=app,colour", ["group_by"]),
             ("/usage?from=2026-01-01&to=2026-01-02&app_id=app_NOPE", ["app_id"]),
             ("/usage?from=2026-01-01&to=2026-01-02&status_class=9", ["status_class"]),
             ("/usage?from=2026-01-01&to=2026-01-02&format=xml", ["format"]),
             ("/usage?from=2026-01-01&to=2026-01-02&frm=x", ["frm"]),
             ("/usage?from=2026-01-01T01:00:00Z&to=2026-02-01&granularity=month", ["from"]),
             ("/billing", ["period"]),
             ("/billing?period=2026-13", ["period"]),
             ("/billing?period=2026-01&format=pdf", ["format"])]
    for path, fields in cases:
        r = api.get(path)
        j = problem(r, 400, "invalid-query", "GET " + path)
        got = sorted({e.get("pointer") for e in j.get("errors", [])} or {""})
        eq(got, sorted(fields), "GET %s: parameters named" % path, r)
    problem(api.get("/billing?period=2999-01"), 422, "period-not-available",
            "a month that has not begun")
    r = api.get("/usage?from=2026-01-01&to=2026-01-02&format=csv")
    status_is(r, 200, "an empty CSV report")
    eq(r.header("Content-Type"), "text/csv; charset=utf-8; header=present", "CSV type", r)
    check(r.body.startswith(b"record_id,period_start,period_end,calls,"), "CSV header row", r)
    check(r.body.endswith(b"\r\n") and r.body.count(b"\r\n") == 1, "only the header", r)
    srv.stop()


# ---- conventions -----------------------------------------------------------------

def test_not_found_and_method_not_allowed(c):
    srv, api = c.boot()
    mk_api(api, "pets")
    for path in ("/nope", "/apis/pets/nope", "/apis/pets/targets/x/y", "/", "/apis/"):
        problem(api.get(path), 404, "not-found", "GET %s" % path)
    problem(srv.client().get("/nope"), 404, "not-found", "unknown path without a token")
    problem(api.get("/apis/api_01ARZ3NDEKTSV4RRFFQ69G5FAV"), 404, "not-found", "unknown api id")
    problem(api.get("/developers/nobody@example.com"), 404, "not-found", "unknown email")

    cases = [("DELETE", "/apis", {"GET", "POST"}),
             ("PUT", "/apis", {"GET", "POST"}),
             ("POST", "/apis/pets", {"GET", "PATCH", "DELETE", "PUT"}),
             ("GET", "/developers/x/approve", {"POST"}),
             ("DELETE", "/config", {"GET", "POST"}),
             ("POST", "/health", {"GET"}),
             ("PUT", "/keys/x", {"GET", "PATCH", "DELETE"})]
    for method, path, allowed in cases:
        r = api.req(method, path)
        problem(r, 405, "method-not-allowed", "%s %s" % (method, path))
        allow = {m.strip() for m in (r.header("Allow") or "").split(",") if m.strip()}
        check(allowed <= allow, "%s %s: Allow %r should list %s" % (method, path, r.header("Allow"),
                                                                     sorted(allowed)), r)
        check(method not in allow, "%s %s: Allow lists the refused method" % (method, path), r)
    # 405 comes before authentication
    problem(srv.client().delete("/apis"), 405, "method-not-allowed", "DELETE /apis without token")
    # HEAD is GET without a body
    r = api.req("HEAD", "/apis/pets")
    status_is(r, 200, "HEAD /apis/pets")
    eq(r.body, b"", "HEAD body", r)
    eq(r.header("ETag"), '"v1"', "HEAD ETag", r)
    srv.stop()


def test_unsupported_media_type(c):
    srv, api = c.boot()
    mk_api(api, "pets")
    body = json.dumps({"slug": "x", "name": "X"})
    for ct in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx",
               "application/merge-patch+json"):
        problem(api.post("/apis", body, ctype=ct), 415, "unsupported-media-type",
                "POST with Content-Type %s" % ct)
    problem(api.post("/apis", body, ctype=None), 415, "unsupported-media-type",
            "POST without Content-Type")
    problem(api.patch("/apis/pets", '{"name":"Y"}', ctype="text/plain"), 415,
            "unsupported-media-type", "PATCH text/plain")
    for ct in ("application/json; charset=utf-8", "Application/JSON"):
        created(api.post("/apis", {"slug": "ct%d" % len(ct), "name": "C"}, ctype=ct),
                "POST with Content-Type %s" % ct)
    eq(len(api.get("/apis").json["data"]), 3, "apis after the 415s")
    srv.stop()


def test_malformed_bodies(c):
    srv, api = c.boot()
    cases = [('{"slug": "x",\n  "name": }', "a syntax error"),
             ('[{"slug": "x", "name": "X"}]', "an array"),
             ('"just a string"', "a string"),
             ('{"slug": "x", "name": "X"} trailing', "trailing garbage"),
             ('{"slug": "x", "name": "X"}{}', "two values"),
             ('{"slug": "x", "slug": "y", "name": "X"}', "duplicate keys"),
             ('{"slug": "x", "name": "X", "openapi": {"openapi": "3.0.0", "openapi": "3.1.0"}}',
              "duplicate keys in a nested object"),
             ("", "an empty body"),
             ('{"slug": "x", "name": "\xff"}'.encode("latin-1"), "invalid UTF-8"),
             ('{"slug": "x", "name": "X"', "a truncated object")]
    for body, what in cases:
        r = api.post("/apis", body)
        j = problem(r, 400, "malformed-json", "POST /apis with %s" % what)
        if what == "a syntax error":
            check(re.search(r"line \d+", j["detail"]) and re.search(r"column \d+", j["detail"]),
                  "malformed JSON detail names line and column", r)
            has(j["detail"], "line 2", "the error is on line 2", r)
    # whitespace after the value is fine
    created(api.post("/apis", '{"slug": "ok", "name": "OK"}\r\n\t '), "body with trailing space")
    eq([x["slug"] for x in api.get("/apis").json["data"]], ["ok"], "apis after the 400s")
    srv.stop()


def test_validation_lists_every_error(c):
    srv, api = c.boot()
    r = api.post("/apis", {"slug": "Not A Slug", "name": "", "retries": 99, "auth_mode": "magic",
                           "hosts": ["UPPER.example"], "unknown_member": 1})
    j = invalid(r, ["/slug", "/name", "/retries", "/auth_mode", "/hosts/0", "/unknown_member"],
                "POST /apis with six bad members")
    for e in j["errors"]:
        check(isinstance(e.get("detail"), str) and e["detail"], "error item without detail", r)
    invalid(api.post("/apis", {}), ["/slug", "/name"], "POST /apis with nothing")
    a = mk_api(api, "pets")
    r = api.post("/plans", {"api_id": a["id"], "slug": "-bad", "name": "P",
                            "monthly_fee_minor": 1.5, "currency": "usd", "public": "yes"})
    invalid(r, ["/slug", "/monthly_fee_minor", "/currency", "/public"],
            "POST /plans with four bad members")
    r = api.patch("/apis/pets", {"retries": -1, "read_timeout_ms": 0, "strip_prefix": "no"})
    invalid(r, ["/retries", "/read_timeout_ms", "/strip_prefix"], "PATCH with three bad members")
    eq(api.get("/apis/pets").json["version"], 1, "api version after the refused PATCH")
    srv.stop()


def test_body_too_large(c):
    srv, api = c.boot("--admin-max-body", "2K")
    # under the limit works
    created(api.post("/apis", {"slug": "small", "name": "S", "description": "d" * 1800}),
            "a 1.9 KiB body")
    big = json.dumps({"slug": "big", "name": "B", "description": "d" * 4096})
    r = api.post("/apis", big)
    problem(r, 413, "payload-too-large", "a 4 KiB body")
    # a declared length over the limit is refused before the body is sent
    head = ("POST /apis HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n" % api.token)
    t0 = time.time()
    data = raw_exchange(srv.port, [head.encode(), b'{"slug": "huge", "name": "'])
    eq(raw_status(data), 413, "declared Content-Length 100000000 (response %r)" % data[:300])
    check(time.time() - t0 < 5, "the 413 for a declared length took %.1fs" % (time.time() - t0))
    # chunked, no length: stops at the limit
    head = ("POST /apis HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            % api.token).encode()
    parts = [b'{"slug": "chunky", "name": "C", "description": "', b"d" * 3000, b"d" * 3000,
             b'"}']
    chunked = [head] + [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]
    data = raw_exchange(srv.port, chunked, pause=0.05)
    eq(raw_status(data), 413, "a 6 KiB chunked body (response %r)" % data[:300])
    # nothing was created, and the server still serves
    eq(sorted(x["slug"] for x in api.get("/apis").json["data"]), ["small"], "apis after the 413s")
    srv.stop()


def test_query_validation(c):
    srv, api = c.boot()
    a = mk_api(api, "pets")
    mk_api(api, "birds", portal_visible=False)
    for q in ("foo=1", "limit=0", "limit=1001", "limit=abc", "limit=-5", "limit=", "limit=1.5",
              "limit=10x", "cursor=garbage", "cursor=", "cursor=%s" % ("A" * 200),
              "cursor=YzE6", "slug=pets&foo=bar", "name=Pets", "version=1", "id=%s" % a["id"]):
        problem(api.get("/apis?" + q), 400, "invalid-query", "GET /apis?%s" % q)
    j = status_is(api.get("/apis?limit=1000"), 200, "limit=1000")
    eq(len(j["data"]), 2, "limit=1000 rows")
    j = status_is(api.get("/apis?limit=1"), 200, "limit=1")
    eq(len(j["data"]), 1, "limit=1 rows")
    check(isinstance(j["next"], str), "limit=1 of 2 has a next", j)
    eq([x["slug"] for x in api.get("/apis?slug=pets").json["data"]], ["pets"], "slug filter")
    eq([x["slug"] for x in api.get("/apis?portal_visible=false").json["data"]], ["birds"],
       "boolean filter")
    eq(api.get("/apis?slug=nope").json["data"], [], "filter matching nothing")
    # a cursor from one list is not a cursor for another list shape, but is well formed
    problem(api.get("/apis?portal_visible=maybe"), 400, "invalid-query",
            "boolean filter with a bad value")
    srv.stop()


def test_if_match_and_etags(c):
    srv, api = c.boot()
    mk_api(api, "pets")
    r = api.patch("/apis/pets", {"retries": 2}, headers={"If-Match": '"v7"'})
    problem(r, 412, "precondition-failed", "PATCH with a stale If-Match")
    eq(api.get("/apis/pets").json["retries"], 1, "retries after a 412")
    problem(api.patch("/apis/pets", {"retries": 2}, headers={"If-Match": "v1"}), 412,
            "precondition-failed", "PATCH with an unquoted If-Match")
    problem(api.patch("/apis/pets", {"retries": 2}, headers={"If-Match": 'W/"v1"'}), 412,
            "precondition-failed", "PATCH with a weak If-Match")
    r = api.patch("/apis/pets", {"retries": 2}, headers={"If-Match": '"v1"'})
    status_is(r, 200, "PATCH with the current If-Match")
    eq(r.header("ETag"), '"v2"', "ETag after the PATCH", r)
    r = api.patch("/apis/pets", {"retries": 3}, headers={"If-Match": "*"})
    status_is(r, 200, "PATCH with If-Match *")
    eq(r.header("ETag"), '"v3"', "ETag after If-Match *", r)
    r = api.patch("/apis/pets", {"retries": 4}, headers={"If-Match": '"v1", "v3"'})
    status_is(r, 200, "PATCH with a list holding the current tag")
    eq(api.get("/apis/pets").header("ETag"), '"v4"', "GET ETag")
    # DELETE
    problem(api.delete("/apis/pets", headers={"If-Match": '"v3"'}), 412, "precondition-failed",
            "DELETE with a stale If-Match")
    status_is(api.get("/apis/pets"), 200, "api after the refused DELETE")
    status_is(api.delete("/apis/pets", headers={"If-Match": '"v4"'}), 204,
              "DELETE with the current If-Match")
    mk_api(api, "birds")
    status_is(api.delete("/apis/birds", headers={"If-Match": "*"}), 204, "DELETE with If-Match *")
    # actions and nested resources honour it too
    d = mk_dev(api, "ann@example.com")
    problem(api.post("/developers/%s/suspend" % d["id"], headers={"If-Match": '"v9"'}), 412,
            "precondition-failed", "action with a stale If-Match")
    eq(api.get("/developers/%s" % d["id"]).json["status"], "active", "status after a 412")
    a = mk_api(api, "pets")
    t = created(api.post("/apis/pets/targets", {"url": "http://x.internal"}), "target")
    problem(api.patch("/apis/pets/targets/%s" % t["id"], {"weight": 2},
                      headers={"If-Match": '"v2"'}), 412, "precondition-failed",
            "target PATCH with a stale If-Match")
    # every write bumps the version and the ETag
    tags = [api.get("/apis/pets").header("ETag")]
    for i in range(3):
        tags.append(api.patch("/apis/pets", {"retries": i}).header("ETag"))
    eq(tags, ['"v1"', '"v2"', '"v3"', '"v4"'], "ETags over three PATCHes")
    eq(a["version"], 1, "first version")
    srv.stop()


def test_request_id(c):
    srv, api = c.boot()
    for path in ("/health", "/apis", "/nope"):
        r = api.get(path, headers={"X-Request-Id": "client-req.42_x"})
        eq(r.header("X-Request-Id"), "client-req.42_x", "echoed X-Request-Id on %s" % path, r)
        r = api.get(path)
        check(HEX32_RE.match(r.header("X-Request-Id") or ""),
              "generated X-Request-Id on %s should be 32 hex" % path, r)
    ids = {api.get("/health").header("X-Request-Id") for _ in range(5)}
    eq(len(ids), 5, "generated request ids are distinct")
    r = api.post("/apis", {"slug": "BAD"}, headers={"X-Request-Id": "err-1"})
    eq(problem(r, 422, "validation-failed", "bad POST")["request_id"], "err-1",
       "problem request_id", r)
    r = srv.client().get("/apis", headers={"X-Request-Id": "anon-1"})
    eq(problem(r, 401, "unauthorized", "no token")["request_id"], "anon-1", "401 request_id", r)
    # unsafe ids are replaced, not echoed
    for bad in ("has space", "x" * 65, "semi;colon", "new\tline"):
        r = api.get("/health", headers={"X-Request-Id": bad})
        check(HEX32_RE.match(r.header("X-Request-Id") or ""),
              "unsafe X-Request-Id %r should be replaced by 32 hex" % bad, r)
    r = api.get("/health", headers={"X-Request-Id": "y" * 64})
    eq(r.header("X-Request-Id"), "y" * 64, "64-char X-Request-Id echoed", r)
    srv.stop()


def test_cache_control_everywhere(c):
    srv, api = c.boot("--admin-max-body", "2K")
    w = world(api)
    anon = srv.client()
    rs = [anon.get("/health"), anon.get("/openapi.json"), anon.get("/.well-known/api-catalog"),
          anon.get("/apis"), anon.get("/nope"), anon.delete("/apis"),
          api.get("/apis"), api.get("/apis/pets"), api.get("/apis/pets/openapi"),
          api.post("/apis", {"slug": "x", "name": "X"}),
          api.post("/apis", "{", ctype="application/json"),
          api.post("/apis", "{}", ctype="text/plain"),
          api.post("/apis", {"slug": "Bad"}),
          api.patch("/apis/x", {"retries": 2}, headers={"If-Match": '"v9"'}),
          api.post("/keys", {"app_id": w["app"]["id"]}),
          api.post("/keys/%s/rotate" % w["key"]["id"]),
          api.delete("/apis/x"),
          api.get("/config"), api.get("/usage?from=2026-01-01&to=2026-01-02"),
          api.get("/usage"), api.get("/audit"),
          api.get("/apis?limit=0"),
          api.post("/apis", {"slug": "big", "name": "B", "description": "d" * 4000}),
          api.post("/admin-tokens", {"name": "t", "scopes": ["read"]}),
          api.with_token(c.token("reader", "read")).post("/apis", {"slug": "y", "name": "Y"}),
          api.post("/apis", {"slug": "pets", "name": "Dup"})]
    seen = set()
    for r in rs:
        seen.add(r.status)
        cc = [v.strip() for v in ",".join(r.header_all("Cache-Control")).split(",")]
        check("no-store" in cc, "%s %s -> %d lacks Cache-Control: no-store"
              % (r.method, r.path, r.status), r)
        check(r.header("X-Request-Id"), "%s %s lacks X-Request-Id" % (r.method, r.path), r)
    for code in (200, 201, 204, 400, 401, 403, 404, 405, 409, 412, 413, 415, 422):
        check(code in seen, "the Cache-Control check covered no %d (saw %s)" % (code,
                                                                                sorted(seen)))
    srv.stop()


# ---- pagination ------------------------------------------------------------------------

N_DEVS = 10500


def test_pagination_10500_developers(c):
    srv, api = c.boot()
    devs = [{"email": "dev%05d@example.com" % i, "name": "Dev %d" % i,
             "status": "suspended" if i % 7 == 3 else "active", "apps": []}
            for i in range(N_DEVS)]
    n_susp = sum(1 for d in devs if d["status"] == "suspended")
    doc = {"_format_version": "1.0", "apis": [], "developers": devs}
    t0 = time.time()
    r = api.post("/config", doc)
    how = "POST /config"
    if r.status != 200:
        print("  note: /config import answered %d; creating %d developers with POST /developers"
              % (r.status, N_DEVS))
        keep = srv.client(api.token, keepalive=True)
        for d in devs:
            body = {k: v for k, v in d.items() if k != "apps"}
            rr = keep.post("/developers", body)
            if rr.status != 201:
                status_is(rr, 201, "POST /developers %s" % d["email"])
        keep.close()
        how = "POST /developers x %d" % N_DEVS
    made = time.time() - t0
    check(made < 60, "creating %d developers through %s took %.1fs" % (N_DEVS, how, made))

    t0 = time.time()
    rows = walk(api, "/developers?limit=1000", "developers?limit=1000")
    ids = [x["id"] for x in rows]
    eq(len(rows), N_DEVS, "developers walked with limit=1000")
    eq(len(set(ids)), N_DEVS, "distinct developer ids (no repeats)")
    check(ids == sorted(ids), "developers are not in id order")
    eq(sorted(x["email"] for x in rows), sorted(d["email"] for d in devs),
       "every developer exactly once")

    # limit=100: the first pages are the same rows; the cursor keeps the limit
    r = api.get("/developers?limit=100")
    page, nxt = r.json["data"], r.json["next"]
    first = list(page)
    for i in range(3):
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(nxt).query)
        eq(q.get("limit"), ["100"], "limit kept in next", r)
        eq(urllib.parse.urlsplit(nxt).path, "/developers", "next path", r)
        r = api.get(nxt)
        status_is(r, 200, "page %d with limit=100" % (i + 2))
        eq(r.header("Link"), '<%s>; rel="next"' % r.json["next"], "Link on a middle page", r)
        first.extend(r.json["data"])
        nxt = r.json["next"]
    eq([x["id"] for x in first], ids[:400], "four pages of 100 equal the first 400")
    # default page size
    r = api.get("/developers")
    eq(len(r.json["data"]), 100, "default limit", r)

    # filters are kept in next
    rows = []
    path = "/developers?status=suspended&limit=1000"
    pages = 0
    while path:
        r = api.get(path)
        status_is(r, 200, "GET %s" % path)
        rows.extend(r.json["data"])
        path = r.json["next"]
        pages += 1
        if path:
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
            eq(q.get("status"), ["suspended"], "status filter kept in next", r)
            eq(q.get("limit"), ["1000"], "limit kept in next (filtered)", r)
    eq(len(rows), n_susp, "suspended developers")
    eq(pages, (n_susp + 999) // 1000, "pages of suspended developers")
    check(all(x["status"] == "suspended" for x in rows), "a filtered page holds other statuses")
    sids = [x["id"] for x in rows]
    check(sids == sorted(sids) and len(set(sids)) == len(sids), "filtered walk order/repeats")
    # an email filter with characters that need encoding
    r = api.get("/developers?email=" + urllib.parse.quote("dev00003@example.com"))
    eq([x["email"] for x in r.json["data"]], ["dev00003@example.com"], "email filter", r)
    walked = time.time() - t0
    check(walked < 30, "walking the developers took %.1fs" % walked)
    srv.stop()


def test_pagination_nested_and_filtered(c):
    srv, api = c.boot()
    a = mk_api(api, "pets")
    mk_api(api, "birds")
    made = [created(api.post("/apis/pets/targets", {"url": "http://t%d.internal" % i}),
                    "target %d" % i)["id"] for i in range(5)]
    created(api.post("/apis/birds/targets", {"url": "http://b.internal"}), "birds target")
    rows = walk(api, "/apis/pets/targets?limit=2", "nested targets")
    eq([x["id"] for x in rows], sorted(made), "nested walk")
    r = api.get("/apis/pets/targets?limit=2")
    nxt = r.json["next"]
    check(nxt.startswith("/apis/%s/targets?" % a["id"]), "nested next path: %r" % nxt, r)
    # a cursor is opaque but tied to nothing secret: tampering is a 400
    cur = urllib.parse.parse_qs(urllib.parse.urlsplit(nxt).query)["cursor"][0]
    problem(api.get("/apis/pets/targets?limit=2&cursor=" + cur[:-3] + "***"), 400,
            "invalid-query", "a tampered cursor")
    srv.stop()


# ---- idempotency ---------------------------------------------------------------------------

def test_idempotency_key(c):
    srv, api = c.boot()
    w = world(api)
    app = w["app"]["id"]
    other = api.with_token(c.token("other", "keys,read"))
    body = {"app_id": app, "name": "idem"}
    h = {"Idempotency-Key": "order-7f3a-0001"}
    r1 = api.post("/keys", body, headers=h)
    k = created(r1, "first POST /keys with an Idempotency-Key", "key")
    check(r1.header("Idempotent-Replayed") is None, "first response marked as replayed", r1)
    r2 = api.post("/keys", body, headers=h)
    status_is(r2, 201, "replayed POST /keys")
    eq(r2.header("Idempotent-Replayed"), "true", "Idempotent-Replayed header", r2)
    eq(r2.json, r1.json, "replayed body (same id, same plaintext key)", r2)
    eq(r2.header("Location"), r1.header("Location"), "replayed Location", r2)
    eq(r2.header("ETag"), r1.header("ETag"), "replayed ETag", r2)
    keys = [x for x in api.get("/keys?app_id=%s" % app).json["data"] if x.get("name") == "idem"]
    eq(len(keys), 1, "keys created by two identical requests")
    # same key, different body
    r = api.post("/keys", {"app_id": app, "name": "other"}, headers=h)
    problem(r, 422, "idempotency-key-reused", "same Idempotency-Key, different body")
    # same key, different path
    r = api.post("/apis", {"slug": "x", "name": "X"}, headers=h)
    problem(r, 422, "idempotency-key-reused", "same Idempotency-Key, different path")
    # another token with the same key does its own request
    r3 = other.post("/keys", body, headers=h)
    k3 = created(r3, "another token, same Idempotency-Key")
    check(r3.header("Idempotent-Replayed") is None, "another token's request was replayed", r3)
    check(k3["id"] != k["id"] and k3["key"] != k["key"], "tokens' idempotency keys collided", r3)
    keys = [x for x in api.get("/keys?app_id=%s" % app).json["data"] if x.get("name") == "idem"]
    eq(len(keys), 2, "keys after the second token's request")
    # limits on the key itself
    problem(api.post("/keys", body, headers={"Idempotency-Key": "k" * 256}), 400, "invalid-header",
            "Idempotency-Key of 256 chars")
    created(api.post("/keys", body, headers={"Idempotency-Key": "k" * 255}),
            "Idempotency-Key of 255 chars")
    problem(api.post("/keys", body, headers={"Idempotency-Key": "has space"}), 400,
            "invalid-header", "Idempotency-Key with a space")
    # a failed request is not remembered: fixing the body with the same key works
    h2 = {"Idempotency-Key": "retry-after-422"}
    status_is(api.post("/keys", {"app_id": app, "expires_at": 5}, headers=h2), 422, "bad key body")
    r = api.post("/keys", {"app_id": app, "name": "fixed"}, headers=h2)
    created(r, "same Idempotency-Key after a 422")
    check(r.header("Idempotent-Replayed") is None, "a retry after a 422 was replayed", r)
    # other POST routes honour it too
    ha = {"Idempotency-Key": "api-create-1"}
    ra = api.post("/apis", {"slug": "idem-api", "name": "I"}, headers=ha)
    created(ra, "POST /apis with an Idempotency-Key")
    rb = api.post("/apis", {"slug": "idem-api", "name": "I"}, headers=ha)
    status_is(rb, 201, "replayed POST /apis (not a 409)")
    eq((rb.header("Idempotent-Replayed"), rb.json), ("true", ra.json), "replayed api", rb)
    secrets = [k["key"], k3["key"]]
    plaintext_not_on_disk(c, secrets, "while the server runs")
    srv.stop()
    plaintext_not_on_disk(c, secrets, "after the server stopped")
    # the replay survives a restart
    srv = c.start()
    api = srv.client(api.token)
    r4 = api.post("/keys", body, headers=h)
    eq((r4.status, r4.header("Idempotent-Replayed"), r4.json), (201, "true", r1.json),
       "replay after a restart", r4)
    srv.stop()


def test_concurrent_requests(c):
    """Parallel clients: an Idempotency-Key retried concurrently runs once;
    parallel writes all succeed; keep-alive connections survive errors."""
    srv, api = c.boot()
    w = world(api)
    body = {"app_id": w["app"]["id"], "name": "race"}
    results, errors = [], []

    def idem_post():
        try:
            results.append(api.post("/keys", body, headers={"Idempotency-Key": "race-1"}))
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=idem_post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    check(not errors, "concurrent Idempotency-Key requests raised: %r" % errors)
    eq(sorted(r.status for r in results), [201] * 8, "statuses of 8 concurrent retries")
    eq(len({r.text for r in results}), 1, "8 concurrent retries got one response body")
    eq(sum(1 for r in results if r.header("Idempotent-Replayed") is None), 1,
       "exactly one of 8 concurrent retries did the work")
    keys = [x for x in api.get("/keys?app_id=%s" % w["app"]["id"]).json["data"]
            if x.get("name") == "race"]
    eq(len(keys), 1, "keys made by 8 concurrent retries")

    statuses = []

    def writer(n):
        cl = srv.client(api.token, keepalive=True)
        try:
            for i in range(25):
                r = cl.post("/developers", {"email": "w%d-%d@example.com" % (n, i)})
                statuses.append(r.status)
                if r.status != 201:
                    errors.append(repr(r))
        except Exception as e:
            errors.append(repr(e))
        finally:
            cl.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
    check(not errors, "parallel writers: %s" % "\n".join(errors[:3]))
    eq(len(statuses), 100, "parallel writes done")
    devs = walk(api, "/developers?limit=1000", "developers")
    eq(len([d for d in devs if d["email"].startswith("w")]), 100, "developers from parallel writers")

    # one keep-alive connection carries successes and errors alike
    cl = srv.client(api.token, keepalive=True)
    seq = [cl.get("/apis"), cl.get("/nope"), cl.post("/apis", {"slug": "Bad"}),
           cl.post("/apis", "{", ctype="application/json"), cl.delete("/apis"),
           cl.post("/apis", {"slug": "kept", "name": "K"}), cl.get("/apis/kept")]
    eq([r.status for r in seq], [200, 404, 422, 400, 405, 201, 200],
       "statuses over one keep-alive connection")
    cl.close()
    srv.stop()


# ---- atomicity, stop, listen -------------------------------------------------------------------

def test_failed_requests_change_nothing(c):
    srv, api = c.boot()
    w = world(api)
    status_is(api.delete("/developers/%s" % w["dev"]["id"]), 204, "delete developer")
    d2 = mk_dev(api, "bob@example.com")
    app2 = mk_app(api, d2["id"], "bob")
    mk_sub(api, app2["id"], w["api"]["id"], w["plan"]["id"])
    before = c.counts()
    export = api.get("/config").body
    failing = [
        ("POST", "/apis", {"slug": "x", "name": "X", "retries": 99}, 422),
        ("POST", "/apis", {"slug": "pets", "name": "Dup"}, 409),
        ("DELETE", "/apis/pets", None, 409),
        ("DELETE", "/plans/%s" % w["plan"]["id"], None, 409),
        ("POST", "/keys", {"app_id": w["app"]["id"]}, 409),
        ("POST", "/subscriptions", {"app_id": app2["id"], "api_id": w["api"]["id"],
                                    "plan_id": w["plan"]["id"]}, 409),
        ("POST", "/developers/%s/approve" % d2["id"], None, 409),
        ("PATCH", "/apis/pets", {"name": "New", "retries": -1}, 422),
        ("PUT", "/apis/pets", {"name": "New", "auth_mode": "x"}, 422),
        ("POST", "/config", {"_format_version": "1.0",
                             "apis": [{"slug": "first-ok", "name": "F"}],
                             "developers": [{"email": "fine@example.com"},
                                            {"email": "bad", "status": "nope"}]}, 422),
        ("POST", "/admin-tokens", {"name": "a b", "scopes": ["read"]}, 422),
        ("POST", "/apps", {"developer_id": w["dev"]["id"], "name": "late"}, 409),
    ]
    for method, path, body, code in failing:
        r = api.req(method, path, body)
        check(r.status == code, "%s %s: expected %d" % (method, path, code), r)
    eq(c.counts(), before, "tollgate status counts after failing requests")
    check(api.get("/config").body == export, "export after failing requests")
    problem(api.get("/apis/first-ok"), 404, "not-found", "first api of a failed import")
    srv.stop()


def test_graceful_stop(c):
    srv, api = c.boot()
    mk_api(api, "pets")
    # a request in flight when SIGTERM arrives still completes
    body = json.dumps({"slug": "late", "name": "Late"}).encode()
    head = ("POST /apis HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (api.token, len(body))).encode()
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
    try:
        s.sendall(head + body[:10])
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        refused = False
        try:
            socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
        except OSError:
            refused = True
        s.sendall(body[10:])
        data = read_response(s)
    finally:
        s.close()
    eq(raw_status(data), 201, "the in-flight request's status after SIGTERM (got %r)" % data[:300])
    srv.stop("server stopping with a request in flight")
    check(refused, "a new connection was accepted after SIGTERM")
    con = sqlite3.connect(c.db)
    try:
        eq(con.execute("PRAGMA integrity_check").fetchone()[0], "ok", "PRAGMA integrity_check")
        eq(sorted(r[0] for r in con.execute("SELECT slug FROM apis")), ["late", "pets"],
           "apis on disk after the stop")
    finally:
        con.close()
    # and it starts again on the same database
    srv = c.start()
    eq(len(srv.client(api.token).get("/apis").json["data"]), 2, "apis after a restart")
    srv.stop()


def test_sigterm_exit_is_reliable(c):
    """SIGTERM right after start, idle or after a request, exits 0 every
    time (a race in the stop path would show as a crash now and then)."""
    c.migrate()
    tok = c.token("root", "read")
    bad = []
    for i in range(400):
        s = c.start("--admin-threads", str(1 + i % 4), wait=False)
        s.port_seen.wait(START_TIMEOUT)
        if s.port is None:
            bad.append("cycle %d: no port line: %s" % (i, s.stderr()[-500:]))
            s.kill()
            continue
        if i % 2:
            try:
                s.client(tok).get("/apis")
            except OSError as e:
                bad.append("cycle %d: GET /apis: %r" % (i, e))
        try:
            s.stop("cycle %d (admin_threads %d)" % (i, 1 + i % 4))
        except Failure as e:
            bad.append(str(e))
        c.servers.remove(s)
        if len(bad) >= 3:
            break
    check(not bad, "\n".join(bad))
    con = sqlite3.connect(c.db)
    try:
        eq(con.execute("PRAGMA integrity_check").fetchone()[0], "ok", "PRAGMA integrity_check")
    finally:
        con.close()


def test_listen_address_rules(c):
    c.migrate()
    s = c.start(listen="0.0.0.0:0", wait=False)
    try:
        rc = s.proc.wait(15)
    except subprocess.TimeoutExpired:
        s.kill()
        raise Failure("the server started on 0.0.0.0 without TLS or admin_allow_remote")
    s.reader.join(5)
    check(rc != 0, "0.0.0.0 without TLS: expected a non-zero exit, got %r" % rc)
    has(s.stderr(), "admin_listen", "the refusal names admin_listen")
    check(s.port is None, "the refused server printed a port")
    s = c.start("--admin-allow-remote", listen="0.0.0.0:0")
    status_is(s.client().get("/health"), 200, "health of a server on 0.0.0.0")
    s.stop("server on 0.0.0.0 with --admin-allow-remote")
    # IPv6 loopback is loopback
    s = c.start(listen="[::1]:0", wait=False)
    s.port_seen.wait(START_TIMEOUT)
    if s.port is not None:
        conn = http.client.HTTPConnection("::1", s.port, timeout=TIMEOUT)
        conn.request("GET", "/health")
        eq(conn.getresponse().status, 200, "health on [::1]")
        conn.close()
        s.stop("server on [::1]")
    else:  # no IPv6 on this machine is not the server's fault, but it must say why
        s.proc.wait(15)
        check("::1" in s.stderr() or "admin_listen" in s.stderr(),
              "[::1] failed without naming it: %s" % s.stderr())


TESTS = [
    test_public_endpoints,
    test_openapi_documents_every_route,
    test_auth_missing_and_bad_tokens,
    test_scopes,
    test_apis_crud,
    test_apis_patch_merge,
    test_apis_put,
    test_api_delete_with_plans_conflicts,
    test_targets,
    test_api_openapi_document,
    test_plans,
    test_developers_lifecycle,
    test_developer_delete_cascades,
    test_status_only_through_transitions,
    test_apps,
    test_subscriptions,
    test_keys_issue_and_secrecy,
    test_keys_rotate_and_revoke,
    test_admin_tokens_api,
    test_audit_log,
    test_config_export_deterministic,
    test_config_dry_run,
    test_config_import_roundtrip,
    test_config_import_invalid,
    test_usage_and_billing_parameters,
    test_not_found_and_method_not_allowed,
    test_unsupported_media_type,
    test_malformed_bodies,
    test_validation_lists_every_error,
    test_body_too_large,
    test_query_validation,
    test_if_match_and_etags,
    test_request_id,
    test_cache_control_everywhere,
    test_pagination_10500_developers,
    test_pagination_nested_and_filtered,
    test_idempotency_key,
    test_concurrent_requests,
    test_failed_requests_change_nothing,
    test_graceful_stop,
    test_sigterm_exit_is_reliable,
    test_listen_address_rules,
]


def main(argv):
    global SERVER, CLI
    if len(argv) < 3:
        print("usage: %s /path/to/tollgate-server /path/to/tollgate [TEST...]" % argv[0],
              file=sys.stderr)
        return 2
    SERVER = os.path.abspath(argv[1])
    CLI = os.path.abspath(argv[2])
    for b in (SERVER, CLI):
        if not os.access(b, os.X_OK):
            print("%s: not an executable" % b, file=sys.stderr)
            return 2
    only = set(argv[3:])
    tests = [t for t in TESTS if not only or t.__name__ in only]
    os.umask(0o022)
    cwd = os.getcwd()
    passed = failed = 0
    for test in tests:
        name = test.__name__
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix="tg-adm-") as tmp:
            tmp = os.path.realpath(tmp)
            os.chdir(tmp)
            ctx = Ctx(tmp)
            try:
                test(ctx)
            except Failure as e:
                failed += 1
                print("%s: FAIL\n  %s" % (name, str(e).replace("\n", "\n  ")))
            except Exception:  # a crash of the test itself, or a timeout
                failed += 1
                print("%s: FAIL\n  %s" % (name, traceback.format_exc().replace("\n", "\n  ")))
            else:
                passed += 1
                print("%s: ok" % name)
            finally:
                ctx.cleanup()
                os.chdir(cwd)
            if os.environ.get("TG_TEST_TIMES"):
                print("  (%.2fs)" % (time.time() - t0))
            sys.stdout.flush()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
