#!/usr/bin/env python3
"""Integration tests for tollgate-gateway, the HTTP/1.1 reverse proxy, over
real sockets.

Usage:
  python3 tests/integration/test_gateway.py GATEWAY SERVER CLI UPSTREAM [TEST...]

  GATEWAY   tollgate-gateway
  SERVER    tollgate-server (the admin API the configuration goes through)
  CLI       tollgate (migrate, admin tokens)
  UPSTREAM  tollgate-test-upstream (tests/integration/upstream.c)

Tests run in groups. A group gets a fresh temporary directory (the working
directory of everything it starts) with its own database, secret file and
empty config file, and an environment stripped of every TOLLGATE_*
variable. It migrates the database, creates an admin token with the CLI,
starts tollgate-server and one to three test upstreams on 127.0.0.1:0,
registers APIs and targets through the admin API, then starts the gateway
on 127.0.0.1:0 (ports are read from the logs) and waits for its /health.
At the end of the group everything gets SIGTERM and the gateway must exit
0 (reported as the test "<group>_stop_exit_0").

The upstream writes one JSON line per request it received (--log), so a
test can prove a request did or did not reach it. A small scripted origin
written here (RawOrigin) covers what the C upstream cannot send: hop-by-hop
response headers and connections closed without an answer.

Output: one "name: ok" or "name: FAIL" line per test (failures followed by
an indented reason), then "N passed, M failed"; exit 1 if any failed. Name
tests (or groups) on the command line to run only those. Standard library
only; loopback addresses only; every wait is bounded.
"""
import base64
import hashlib
import http.client
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

GATEWAY = SERVER = CLI = UPSTREAM = None  # set in main()

TIMEOUT = 15          # any one CLI run or admin call
GW_TIMEOUT = 5        # the longest silence tolerated from the gateway (loopback)
START_TIMEOUT = 10    # a daemon's port line, the gateway's /health
STOP_TIMEOUT = 15     # SIGTERM -> exit
RELOAD_WITHIN = 1.0   # a configuration change is routable within this (s)
MIB = 1024 * 1024
BIG = 1024 * MIB  # the issue's bar: a 1 GiB body each way in bounded memory

HEX32_RE = re.compile(r"^[0-9a-f]{32}$")
TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
ALPHABET = b"abcdefghijklmnopqrstuvwxyz"


def clean_env(**extra):
    """os.environ without TOLLGATE_*, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(extra)
    return env


# ---- assertions ---------------------------------------------------------------

class Failure(AssertionError):
    pass


def check(cond, msg, result=None):
    if not cond:
        raise Failure(msg + ("\n  " + repr(result).replace("\n", "\n  ")
                             if result is not None else ""))


def eq(actual, expected, what, result=None):
    check(actual == expected, "%s: expected %r, got %r" % (what, expected, actual), result)


def status_is(r, code, what):
    check(r.status == code, "%s: expected HTTP %d, got %d" % (what, code, r.status), r)


def problem(r, code, what, slug=None):
    """r is an application/problem+json answer with this status and a request_id
    equal to its X-Request-Id header (a generated 32-hex id)."""
    status_is(r, code, what)
    ct = (r.header("Content-Type") or "").split(";")[0].strip().lower()
    eq(ct, "application/problem+json", "%s: Content-Type" % what, r)
    j = r.json
    check(isinstance(j, dict), "%s: problem body is not a JSON object" % what, r)
    eq(j.get("status"), code, "%s: problem status member" % what, r)
    check(isinstance(j.get("title"), str) and j["title"], "%s: problem has no title" % what, r)
    check(isinstance(j.get("type"), str), "%s: problem has no type" % what, r)
    if slug:
        check(j["type"].endswith("/" + slug), "%s: problem type should end in /%s" % (what, slug),
              r)
    rid = r.header("X-Request-Id")
    check(rid is not None, "%s: no X-Request-Id header" % what, r)
    eq(j.get("request_id"), rid, "%s: problem request_id equals X-Request-Id" % what, r)
    return j


def pattern_ok(data, offset=0):
    """data is the upstream's /large pattern (byte i = 'a' + i % 26) from offset."""
    n = len(data)
    reps = (n + 52) // 26 + 1
    exp = (ALPHABET * reps)[offset % 26: offset % 26 + n]
    return bytes(data) == exp


# ---- a raw HTTP/1.1 client ------------------------------------------------------

class Headers:
    """Header lookup for response objects whose `headers` is [(name, value)]
    in received order (also used by the portal and reports suites)."""

    def header(self, name):
        n = name.lower()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return None

    def header_all(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]


class Resp(Headers):
    def __init__(self, version, status, reason, headers, body, interim, trailers, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # [(name, value)] in received order
        self.body = body
        self.interim = interim  # 1xx responses before this one: [(status, headers)]
        self.trailers = trailers
        self.raw_head = raw_head
        self.chunked = False
        self._json = Ellipsis

    def names(self):
        return {k.lower() for k, _ in self.headers}

    @property
    def json(self):
        if self._json is Ellipsis:
            try:
                self._json = json.loads(self.body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                self._json = None
        return self._json

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        body = self.text if len(self.body) <= 1500 else self.text[:1500] + "...(%d bytes)" % len(
            self.body)
        return "%s\n  body %s" % (self.raw_head.decode("latin-1").rstrip(), body)


class Conn:
    """One client connection to the gateway: raw bytes out, parsed responses in."""

    def __init__(self, port, timeout=GW_TIMEOUT):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def send(self, data):
        """sendall; False when the peer already closed or reset."""
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False
        except socket.timeout:
            raise Failure("the gateway stopped reading: a send stalled for %.1fs" % self.timeout)

    def _more(self, timeout=None):
        if self.eof:
            return False
        self.sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            d = self.sock.recv(262144)
        except socket.timeout:
            raise Failure("timed out after %.1fs waiting for the gateway; have %r"
                          % (timeout or self.timeout, bytes(self.buf[:600])))
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def _take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _line(self):
        for _ in range(100000):
            i = self.buf.find(b"\r\n")
            if i >= 0:
                return self._take(i + 2)[:-2]
            check(len(self.buf) < 65536,
                  "line too long from the gateway: %r" % bytes(self.buf[:200]))
            if not self._more():
                raise Failure("connection closed in the middle of a line: %r" % bytes(self.buf))
        raise Failure("no line")

    def _exact(self, n, sink=None):
        left = n
        while left > 0:
            if not self.buf and not self._more():
                raise Failure("connection closed with %d of %d body bytes missing" % (left, n))
            k = min(left, len(self.buf))
            piece = self._take(k)
            left -= k
            if sink:
                sink(piece)
            else:
                yield piece

    def read_head(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n\r\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure("no response head within %.1fs; have %r" % (
                    timeout or self.timeout, bytes(self.buf[:600])))
            if not self._more(left):
                raise Failure("connection closed before a complete response head; got %r%s"
                              % (bytes(self.buf[:600]), " (reset)" if self.reset else ""))
        i = self.buf.find(b"\r\n\r\n")
        raw = self._take(i + 4)
        lines = raw[:-4].split(b"\r\n")
        m = re.match(rb"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        check(m is not None, "bad status line %r" % lines[0])
        headers = []
        for ln in lines[1:]:
            k, sep, v = ln.partition(b":")
            check(sep and k and k == k.strip(), "bad response header line %r" % ln)
            headers.append((k.decode("latin-1"), v.strip().decode("latin-1")))
        return m.group(1).decode(), int(m.group(2)), (m.group(3) or b"").decode("latin-1"), \
            headers, raw

    def read_response(self, method="GET", sink=None, timeout=None):
        """The next final response (1xx are collected in .interim)."""
        interim = []
        for _ in range(20):
            version, status, reason, headers, raw = self.read_head(timeout)
            if 100 <= status < 200:
                interim.append((status, headers))
                continue
            break
        else:
            raise Failure("more than 20 interim responses")
        r = Resp(version, status, reason, headers, b"", interim, [], raw)
        parts = []
        te = (r.header("Transfer-Encoding") or "").lower()
        cl = r.header("Content-Length")
        if method == "HEAD" or status in (204, 304):
            pass
        elif te:
            check(te.split(",")[-1].strip() == "chunked", "unknown transfer coding %r" % te, r)
            check(cl is None, "response has both Content-Length and Transfer-Encoding", r)
            r.chunked = True
            for _ in range(10 ** 7):
                line = self._line()
                size_s = line.split(b";")[0].strip()
                check(re.match(rb"^[0-9a-fA-F]+$", size_s) is not None,
                      "bad chunk size line %r" % line, r)
                size = int(size_s, 16)
                if size == 0:
                    for _ in range(1000):
                        t = self._line()
                        if not t:
                            break
                        r.trailers.append(t)
                    break
                for p in self._exact(size, sink):
                    parts.append(p)
                eq(self._line(), b"", "CRLF after chunk data", r)
        elif cl is not None:
            check(re.match(r"^\d+$", cl) is not None, "bad Content-Length %r" % cl, r)
            for p in self._exact(int(cl), sink):
                parts.append(p)
        else:  # close-delimited
            for _ in range(10 ** 7):
                if self.buf:
                    piece = self._take(len(self.buf))
                    if sink:
                        sink(piece)
                    else:
                        parts.append(piece)
                if not self._more():
                    break
        r.body = b"".join(parts)
        return r

    def closed_within(self, seconds):
        """True when the gateway closes (EOF or reset) within `seconds`, with
        no further bytes; False when it stays open. Extra bytes are a failure."""
        if self.eof:
            return True
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionResetError:
                self.eof = self.reset = True
                return True
            if not d:
                self.eof = True
                return True
            raise Failure("unexpected bytes after the response: %r" % d[:300])

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def build(method, path, headers=(), body=None, host="gw.test", version="HTTP/1.1"):
    """A request's bytes. Content-Length is added for a body unless the
    headers already frame it."""
    lines = ["%s %s %s" % (method, path, version)]
    if host is not None:
        lines.append("Host: " + host)
    names = set()
    for k, v in headers:
        lines.append("%s: %s" % (k, v))
        names.add(k.lower())
    if body is not None and not names & {"content-length", "transfer-encoding"}:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def call(port, method, path, headers=(), body=None, host="gw.test", version="HTTP/1.1",
         timeout=GW_TIMEOUT):
    """One request on a fresh connection (Connection: close)."""
    c = Conn(port, timeout)
    try:
        c.send(build(method, path, list(headers) + [("Connection", "close")], body, host,
                     version))
        return c.read_response(method)
    finally:
        c.close()


def chunk_encode(data, sizes, ext=False):
    out = []
    i = 0
    n = 0
    while i < len(data):
        s = sizes[n % len(sizes)]
        piece = data[i:i + s]
        e = ""
        if ext and n % 3 == 1:
            e = ";name=value"
        elif ext and n % 3 == 2:
            e = ';q="a \\"quoted\\" ext" ; flag'
        out.append(b"%x%s\r\n" % (len(piece), e.encode()) + piece + b"\r\n")
        i += s
        n += 1
    return out


# ---- processes -----------------------------------------------------------------

class Daemon:
    """A child process; a thread collects the lines of one of its streams and
    picks ports out of them with regexes."""

    def __init__(self, name, argv, cwd, patterns, stream="stderr", env=None):
        self.name = name
        self.argv = argv
        self.patterns = patterns  # key -> compiled regex with one group
        self.found = {}
        self.lines = []
        self.done = threading.Event()
        self.out = open(os.path.join(cwd, "%s.out" % name), "wb")
        kw = dict(cwd=cwd, env=env or clean_env(), stdin=subprocess.DEVNULL)
        if stream == "stderr":
            kw.update(stdout=self.out, stderr=subprocess.PIPE)
        else:
            kw.update(stdout=subprocess.PIPE, stderr=self.out)
        self.proc = subprocess.Popen(argv, **kw)
        self.pipe = self.proc.stderr if stream == "stderr" else self.proc.stdout
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.rc = None

    def _read(self):
        for raw in self.pipe:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            for k, rx in self.patterns.items():
                m = rx.search(line)
                if m and k not in self.found:
                    self.found[k] = int(m.group(1))
            if len(self.found) == len(self.patterns):
                self.done.set()
        self.done.set()

    @property
    def pid(self):
        return self.proc.pid

    def log_text(self, n=4000):
        return "\n".join(self.lines)[-n:]

    def wait_ports(self):
        self.done.wait(START_TIMEOUT)
        check(len(self.found) == len(self.patterns),
              "%s printed no %s within %ds (exit %r)\n  argv %r\n  output %s"
              % (self.name, sorted(set(self.patterns) - set(self.found)), START_TIMEOUT,
                 self.proc.poll(), self.argv, self.log_text()))
        return self.found

    def signal(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout):
        try:
            self.rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.reader.join(5)
        return self.rc

    def stop(self):
        """SIGTERM, then the exit code (None: had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.wait(STOP_TIMEOUT)
        if rc is None:
            self.kill()
        self.close_out()
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.close_out()

    def close_out(self):
        try:
            self.out.close()
        except OSError:
            pass


class Upstream(Daemon):
    def __init__(self, cwd, name, port=0):
        self.log = os.path.join(cwd, "%s.log" % name)
        super().__init__(name, [UPSTREAM, "--listen", "127.0.0.1:%d" % port, "--log", self.log,
                                "--name", name], cwd,
                         {"port": re.compile(r"^listening on 127\.0\.0\.1:(\d+)$")},
                         stream="stdout")
        self.port = self.wait_ports()["port"]
        self.url = "http://127.0.0.1:%d" % self.port

    def records(self):
        try:
            with open(self.log, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        out = []
        for ln in data.split(b"\n"):
            if ln.strip():
                try:
                    out.append(json.loads(ln.decode("utf-8")))
                except ValueError:
                    out.append({"unparsable": ln.decode("latin-1")})
        return out

    def count(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().count(b"\n")
        except FileNotFoundError:
            return 0

    def with_target(self, needle):
        return [r for r in self.records() if needle in str(r.get("target", ""))]


class RawOrigin:
    """A scripted origin server (a thread): reads a request head, answers with
    the bytes scripted for the first path segment found in `script` (None:
    close at once without an answer), then closes."""

    def __init__(self, script):
        self.script = script
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.accepts = 0
        self.targets = []
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepts += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            c.settimeout(5)
            buf = b""
            while b"\r\n\r\n" not in buf and len(buf) < 65536:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            line = buf.split(b"\r\n", 1)[0].decode("latin-1")
            target = line.split(" ")[1] if line.count(" ") >= 2 else ""
            self.targets.append(target)
            segs = target.split("?")[0].split("/")
            answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            for s in segs:
                if s in self.script:
                    answer = self.script[s]
                    break
            if answer is not None:
                c.sendall(answer)
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def stop(self):
        self.stopping = True
        self.thread.join(2)
        self.sock.close()


class RssMonitor:
    """Samples a process's VmRSS every 10 ms; .max_kb is the peak seen."""

    def __init__(self, pid):
        self.pid = pid
        self.max_kb = 0
        self.samples = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping:
            try:
                with open("/proc/%d/status" % self.pid) as f:
                    for ln in f:
                        if ln.startswith("VmRSS:"):
                            self.max_kb = max(self.max_kb, int(ln.split()[1]))
                            self.samples += 1
            except (OSError, ValueError):
                return
            time.sleep(0.01)

    def stop(self):
        self.stopping = True
        self.thread.join(2)


class World:
    """One group's directory, admin server, upstreams and gateway."""

    def __init__(self, tmp):
        self.dir = tmp
        self.db = os.path.join(tmp, "tollgate.db")
        self.secret = os.path.join(tmp, "tollgate.secret")
        self.config = os.path.join(tmp, "empty.conf")
        with open(self.config, "w"):
            pass
        self.daemons = []
        self.origins = []
        self.server = None
        self.gw = None
        self.token = None
        self.ups = {}
        self.apis = {}

    # -- CLI and admin API
    def cli(self, *args):
        argv = [CLI, "--config", self.config, "--db-path", self.db, "--secret-file",
                self.secret] + list(args)
        p = subprocess.run(argv, cwd=self.dir, env=clean_env(), capture_output=True, text=True,
                           timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        check(p.returncode == 0, "%r exited %d\n  stdout %r\n  stderr %r"
              % (argv, p.returncode, p.stdout, p.stderr))
        return p.stdout

    def boot_admin(self):
        self.cli("migrate")
        self.token = self.cli("admin-token", "create", "--name", "root", "--scopes",
                              "admin").strip()
        check(self.token.startswith("tg_adm_"), "unexpected admin token %r" % self.token)
        self.server = Daemon("server", [SERVER, "--config", self.config, "--db-path", self.db,
                                        "--secret-file", self.secret, "--admin-listen",
                                        "127.0.0.1:0", "--portal-listen", "127.0.0.1:0",
                                        "--log-format", "text"], self.dir,
                             {"port": re.compile(r"\bport=(\d+)\b")})
        self.daemons.append(self.server)
        self.admin_port = self.server.wait_ports()["port"]
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if self.admin("GET", "/health", expect=None)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise Failure("admin /health never answered 200\n  %s" % self.server.log_text())

    def admin(self, method, path, body=None, expect=(200, 201, 204), ctype="application/json"):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=TIMEOUT)
        try:
            hdrs = {"Authorization": "Bearer " + self.token}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                hdrs["Content-Type"] = ctype
            conn.request(method, path, body=data, headers=hdrs)
            r = conn.getresponse()
            payload = r.read()
            self.admin_ctype = r.getheader("Content-Type")
        finally:
            conn.close()
        j = None
        if payload:
            try:
                j = json.loads(payload)
            except ValueError:
                pass
        if expect is not None:
            check(r.status in expect, "admin %s %s: HTTP %d %s" % (method, path, r.status,
                                                                   payload[:800]))
        return r.status, j

    def add_api(self, slug, prefix, targets, **fields):
        """An API (auth_mode none) with targets [(url, weight)]: {"api":..., "targets":[...]}."""
        body = {"slug": slug, "name": slug, "path_prefix": prefix, "auth_mode": "none"}
        body.update(fields)
        _, api = self.admin("POST", "/apis", body)
        tg = []
        for url, weight in targets:
            _, t = self.admin("POST", "/apis/%s/targets" % slug, {"url": url, "weight": weight})
            tg.append(t)
        self.apis[slug] = {"api": api, "targets": tg}
        return self.apis[slug]

    # -- processes
    def upstream(self, name, port=0):
        """A test upstream; port 0: any free port (a stopped one restarts on its old port)."""
        u = Upstream(self.dir, name, port)
        self.daemons.append(u)
        self.ups[name] = u
        return u

    def origin(self, script):
        o = RawOrigin(script)
        self.origins.append(o)
        return o

    def start_gateway(self, *extra, env=None):
        self.access_log = os.path.join(self.dir, "access.log")
        argv = [GATEWAY, "--config", self.config, "--db-path", self.db, "--secret-file",
                self.secret, "--gateway-listen", "127.0.0.1:0", "--status-listen",
                "127.0.0.1:0", "--config-poll-interval", "50ms", "--access-log",
                self.access_log, "--log-format", "text"] + list(extra)
        # glibc fills freed memory with 0xa5, so a use after free shows up as garbage
        env = clean_env(GLIBC_TUNABLES="glibc.malloc.perturb=165", **(env or {}))
        self.gw = Daemon("gateway", argv, self.dir, {"port": re.compile(r"\bport=(\d+)\b"),
                                                     "status": re.compile(r"\bstatus_port=(\d+)")},
                         env=env)
        self.daemons.append(self.gw)
        ports = self.gw.wait_ports()
        self.port = ports["port"]
        self.status_port = ports["status"]
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            try:
                st, _, body = self.status_get("/health")
                if st == 200:
                    return
                last = (st, body)
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise Failure("gateway /health never answered 200: %r\n  %s" % (last, self.gw.log_text()))

    def status_get(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.status_port, timeout=TIMEOUT)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.getheader("Content-Type"), r.read()
        finally:
            conn.close()

    def health(self):
        st, _, body = self.status_get("/health")
        return st, json.loads(body)

    def metrics(self):
        st, ctype, body = self.status_get("/metrics")
        check(st == 200, "GET /metrics: HTTP %d" % st)
        out = {}
        for ln in body.decode().splitlines():
            if not ln or ln.startswith("#"):
                continue
            name, _, value = ln.rpartition(" ")
            out[name] = float(value)
        return out

    def generation(self):
        return self.health()[1].get("config_generation")

    def wait_generation_above(self, gen, within=2.0):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            g = self.generation()
            if g is not None and g > gen:
                return g
            time.sleep(0.02)
        raise Failure("config_generation did not grow past %r within %.1fs" % (gen, within))

    def access_lines(self):
        try:
            with open(self.access_log, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        out = []
        for ln in data.split(b"\n"):
            if ln.strip():
                try:
                    out.append(json.loads(ln.decode("utf-8")))
                except ValueError:
                    out.append({"unparsable": ln.decode("latin-1")})
        return out

    def access_for(self, rid, within=2.0):
        deadline = time.monotonic() + within
        while True:
            got = [x for x in self.access_lines() if x.get("request_id") == rid]
            if got or time.monotonic() > deadline:
                return got
            time.sleep(0.02)

    def stop_gateway(self):
        """SIGTERM the gateway; it must exit 0."""
        if not self.gw:
            raise Failure("no gateway was started")
        rc = self.gw.stop()
        check(rc == 0, "gateway: expected exit 0 after SIGTERM, got %r\n  %s"
              % (rc, self.gw.log_text()))

    def cleanup(self):
        for o in self.origins:
            o.stop()
        for d in reversed(self.daemons):
            if d.proc.poll() is None:
                d.stop()
            d.kill()


def dead_port():
    """A loopback port that refuses connections: bound, never listening (kept
    bound so nobody else takes it)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def rec_headers(rec, name):
    """Values of a header in an upstream request record."""
    n = name.lower()
    return [v for k, v in rec.get("headers", []) if k.lower() == n]


def echo(r, what):
    status_is(r, 200, what)
    j = r.json
    check(isinstance(j, dict) and "target" in j, "%s: not an upstream echo record" % what, r)
    return j


def until(fn, within, step=0.02):
    """Call fn until it returns a truthy value or `within` seconds pass;
    returns (value, elapsed)."""
    t0 = time.monotonic()
    v = None
    for _ in range(100000):
        v = fn()
        if v or time.monotonic() - t0 > within:
            break
        time.sleep(step)
    return v, time.monotonic() - t0


# =================================================================================
# Group "proxy": proxying, bodies, keep-alive, routing, config, status, access log
# =================================================================================

def setup_proxy(w, *extra):
    w.boot_admin()
    u1, u2, u3 = w.upstream("u1"), w.upstream("u2"), w.upstream("u3")
    raw = w.origin({
        "hop": b"HTTP/1.1 200 OK\r\nConnection: X-Hop-B, close\r\nX-Hop-B: secret\r\n"
               b"Keep-Alive: timeout=5, max=100\r\nProxy-Connection: keep-alive\r\n"
               b"Upgrade: h2c\r\nTrailer: X-Trailer\r\nVia: 1.1 origin\r\n"
               b"X-Request-Id: from-origin\r\nX-End: yes\r\nContent-Length: 2\r\n\r\nok",
    })
    w.raw = raw
    w.add_api("shop", "/shop", [(u1.url + "/base/v2", 100)], strip_prefix=True)
    w.add_api("pets", "/pets", [(u1.url, 100)])
    w.add_api("v1", "/v1", [(u2.url, 100)])
    w.add_api("v1-pets", "/v1/pets", [(u3.url, 100)])
    w.add_api("hosted", "/h", [(u2.url, 100)], hosts=["api.example.com"])
    w.add_api("wild", "/h", [(u3.url, 100)], hosts=["*.example.org"])
    w.add_api("h-any", "/h", [(u1.url, 100)])
    w.add_api("ro", "/ro", [(u1.url, 100)], methods=["GET"])
    w.add_api("big", "/big", [(u2.url, 100)], max_body_bytes=BIG + MIB)
    w.add_api("raw", "/raw", [(raw.url, 100)])
    w.add_api("moving", "/moving", [(u1.url + "/mv", 100)])
    w.start_gateway("--gateway-workers", "2", *extra)


# ---- 1. proxying ----

def test_proxy_methods_rewrite(w):
    u1 = w.ups["u1"]
    for method in ("GET", "POST", "PUT", "DELETE"):
        body = ("body of %s" % method).encode() if method in ("POST", "PUT") else None
        r = call(w.port, method, "/shop/items/echo?x=1&y=a%20b", body=body)
        j = echo(r, method)
        eq(j["method"], method, "%s: method upstream" % method, r)
        eq(j["target"], "/base/v2/items/echo?x=1&y=a%20b",
           "%s: path prefix stripped, base path prepended, query kept" % method, r)
        eq(j["version"], "HTTP/1.1", "%s: version upstream" % method, r)
        eq(r.header("X-Upstream-Name"), "u1", "%s: upstream" % method, r)
        if body:
            eq(j["body_len"], len(body), "%s: body length upstream" % method, r)
            eq(base64.b64decode(j["body_b64"]), body, "%s: body upstream" % method, r)
        else:
            eq(j["body_len"], 0, "%s: no body upstream" % method, r)
    recs = u1.with_target("/base/v2/items/echo")
    eq(sorted(x["method"] for x in recs), ["DELETE", "GET", "POST", "PUT"],
       "upstream --log shows the four rewritten requests")


def test_proxy_forwarded_headers(w):
    u1 = w.ups["u1"]
    r = call(w.port, "GET", "/shop/echo", host="client.example:8080", headers=[
        ("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "https"), ("Forwarded", "for=6.6.6.6;proto=https")])
    j = echo(r, "forwarded")
    eq(rec_headers(j, "Host"), ["127.0.0.1:%d" % u1.port], "Host upstream = the target's", r)
    eq(rec_headers(j, "X-Forwarded-For"), ["127.0.0.1"],
       "X-Forwarded-For replaced by the client address (not trusted)", r)
    eq(rec_headers(j, "X-Forwarded-Proto"), ["http"], "X-Forwarded-Proto", r)
    eq(rec_headers(j, "X-Forwarded-Host"), ["client.example:8080"],
       "X-Forwarded-Host = the client's Host", r)
    eq(rec_headers(j, "Forwarded"), [], "the client's Forwarded header is dropped", r)
    eq(rec_headers(j, "Via"), ["1.1 tollgate"], "Via upstream", r)
    check("tollgate" in (r.header("Via") or ""), "response carries Via", r)
    check(r.header("X-Request-Id"), "response carries X-Request-Id", r)


def test_proxy_via_appended(w):
    r = call(w.port, "GET", "/shop/echo", headers=[("Via", "1.0 fred")])
    j = echo(r, "via")
    eq(rec_headers(j, "Via"), ["1.0 fred, 1.1 tollgate"], "the client's Via is extended", r)
    r = call(w.port, "GET", "/raw/hop")
    eq(r.header_all("Via"), ["1.1 origin, 1.1 tollgate"], "the origin's Via is extended", r)


def test_proxy_request_id(w):
    r = call(w.port, "GET", "/shop/echo")
    j = echo(r, "no X-Request-Id")
    rid = r.header("X-Request-Id") or ""
    check(HEX32_RE.match(rid), "generated X-Request-Id is 32 lowercase hex: %r" % rid, r)
    eq(rec_headers(j, "X-Request-Id"), [rid], "upstream gets the generated id", r)
    r2 = call(w.port, "GET", "/shop/echo")
    check(r2.header("X-Request-Id") != rid, "two requests get two ids", r2)
    r = call(w.port, "GET", "/shop/echo", headers=[("X-Request-Id", "client-Req_1.a")])
    j = echo(r, "client X-Request-Id")
    eq(r.header("X-Request-Id"), "client-Req_1.a", "the client's id is echoed", r)
    eq(rec_headers(j, "X-Request-Id"), ["client-Req_1.a"], "upstream gets the client's id", r)
    r = call(w.port, "GET", "/shop/echo", headers=[("X-Request-Id", 'bad"id<script>')])
    j = echo(r, "insane X-Request-Id")
    rid = r.header("X-Request-Id") or ""
    check(HEX32_RE.match(rid), "an insane client id is replaced by a generated one: %r" % rid, r)
    eq(rec_headers(j, "X-Request-Id"), [rid], "upstream gets the replacement only", r)
    r = call(w.port, "GET", "/raw/hop", headers=[("X-Request-Id", "mine-1")])
    eq(r.header_all("X-Request-Id"), ["mine-1"],
       "the origin's own X-Request-Id does not replace or duplicate ours", r)


def test_proxy_traceparent(w):
    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    tp = "00-%s-%s-01" % (trace, parent)
    parents = set()
    for i in range(2):
        r = call(w.port, "GET", "/shop/echo", headers=[("traceparent", tp)])
        j = echo(r, "traceparent")
        got = rec_headers(j, "traceparent")
        eq(len(got), 1, "exactly one traceparent upstream", r)
        m = TRACEPARENT_RE.match(got[0])
        check(m is not None, "upstream traceparent is well formed: %r" % got[0], r)
        eq(m.group(1), trace, "trace id kept", r)
        check(m.group(2) != parent and m.group(2) != "0" * 16,
              "a new parent id (this hop), not the client's: %r" % got[0], r)
        eq(m.group(3), "01", "trace flags kept", r)
        parents.add(m.group(2))
    eq(len(parents), 2, "each request gets its own parent id")
    r = call(w.port, "GET", "/shop/echo")
    j = echo(r, "no traceparent")
    got = rec_headers(j, "traceparent")
    eq(len(got), 1, "a traceparent is started when the client sent none", r)
    m = TRACEPARENT_RE.match(got[0])
    check(m is not None, "started traceparent is well formed: %r" % got[0], r)
    eq(m.group(1), r.header("X-Request-Id"), "new trace id = the generated request id", r)
    r = call(w.port, "GET", "/shop/echo", headers=[("traceparent", "garbage-" + trace)])
    j = echo(r, "garbage traceparent")
    got = rec_headers(j, "traceparent")
    check(len(got) == 1 and TRACEPARENT_RE.match(got[0]),
          "an invalid traceparent is replaced by one valid traceparent: %r" % got, r)


def test_proxy_hop_by_hop_request(w):
    r = call(w.port, "GET", "/shop/echo", headers=[
        ("Connection", "keep-alive, X-Hop-A"), ("X-Hop-A", "1"), ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"), ("Upgrade", "websocket"), ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic c2VjcmV0"), ("Trailer", "X-T"),
        ("X-End-To-End", "yes")])
    j = echo(r, "hop-by-hop")
    names = [k.lower() for k, _ in j["headers"]]
    for h in ("x-hop-a", "keep-alive", "te", "upgrade", "proxy-connection",
              "proxy-authorization", "trailer"):
        check(h not in names, "hop-by-hop request header %s reached the upstream" % h, j)
    for v in rec_headers(j, "Connection"):
        check("x-hop-a" not in v.lower(), "the client's Connection options reached the upstream",
              j)
    eq(rec_headers(j, "X-End-To-End"), ["yes"], "end-to-end header forwarded", j)
    eq(r.header("Connection"), "close", "Connection: close answered", r)


def test_proxy_hop_by_hop_response(w):
    r = call(w.port, "GET", "/raw/hop")
    status_is(r, 200, "hop response")
    eq(r.body, b"ok", "body", r)
    names = r.names()
    for h in ("keep-alive", "proxy-connection", "upgrade", "trailer", "x-hop-b"):
        check(h not in names, "hop-by-hop response header %s reached the client" % h, r)
    for v in r.header_all("Connection"):
        check("x-hop-b" not in v.lower(), "the origin's Connection options reached the client", r)
    eq(r.header("X-End"), "yes", "end-to-end response header kept", r)
    check(r.header("X-Request-Id") and r.header("Via"), "response has X-Request-Id and Via", r)


# ---- 2. bodies ----

def test_body_content_length(w):
    body = os.urandom(200 * 1024)
    r = call(w.port, "POST", "/shop/echo", body=body)
    j = echo(r, "CL body")
    eq(j["body_len"], len(body), "body length upstream", r)
    eq(j["body_sha256"], hashlib.sha256(body).hexdigest(), "body sha256 upstream", r)
    eq(j["chunked"], False, "forwarded with Content-Length", r)
    eq(rec_headers(j, "Content-Length"), [str(len(body))], "one Content-Length upstream", r)
    r = call(w.port, "POST", "/shop/echo", body=b"")
    j = echo(r, "empty CL body")
    eq(j["body_len"], 0, "empty body upstream", r)


def test_body_chunked_small_pieces(w):
    rnd = random.Random(7)
    body = bytes(rnd.getrandbits(8) for _ in range(40000))
    sizes = [rnd.randint(1, 700) for _ in range(50)]
    chunks = chunk_encode(body, sizes, ext=True)
    rid = "chunked-many-1"
    head = build("POST", "/shop/echo", [("Transfer-Encoding", "chunked"), ("X-Request-Id", rid),
                                        ("Connection", "close")])
    c = Conn(w.port)
    try:
        c.send(head)
        wire = b"".join(chunks) + b"0\r\nContent-Length: 999\r\nX-Trailer: t\r\n\r\n"
        # many small writes, some splitting size lines and CRLFs
        pos, n = 0, 0
        while pos < len(wire) and n < 5000:
            step = rnd.choice([1, 2, 3, 7, 50, 300, 1500])
            c.send(wire[pos:pos + step])
            pos += step
            n += 1
            if n % 40 == 0:
                time.sleep(0.002)
        check(pos >= len(wire), "test error: not all sent")
        r = c.read_response()
    finally:
        c.close()
    j = echo(r, "chunked body")
    eq(j["body_len"], len(body), "decoded length upstream (%d chunks)" % len(chunks), r)
    eq(j["body_sha256"], hashlib.sha256(body).hexdigest(), "body sha256 upstream", r)
    eq(j["trailers"], 0, "trailer fields are not forwarded", r)
    eq(rec_headers(j, "Content-Length"), [], "the trailer's Content-Length never reaches the "
                                              "upstream", r)
    eq(rec_headers(j, "X-Trailer"), [], "trailer not turned into a header", r)


def test_body_upload_1gib(w):
    total = BIG
    block = bytearray(os.urandom(MIB))
    sha = hashlib.sha256()
    mon = RssMonitor(w.gw.pid)
    c = Conn(w.port)
    t0 = time.monotonic()
    try:
        ok = c.send(build("POST", "/big/sink", [("Content-Length", str(total)),
                                                ("Connection", "close")]))
        for i in range(total // MIB):
            block[:8] = i.to_bytes(8, "big")
            sha.update(block)
            if not c.send(block):
                ok = False
                break
        r = c.read_response()
    finally:
        c.close()
        mon.stop()
    elapsed = time.monotonic() - t0
    status_is(r, 200, "1 GiB upload through /sink (sent all: %s)" % ok)
    j = r.json
    eq(j.get("body_len"), total, "upstream received every byte", r)
    eq(j.get("body_sha256"), sha.hexdigest(), "upload sha256", r)
    check(mon.samples > 3, "RSS was sampled (%d samples)" % mon.samples)
    check(mon.max_kb < 64 * 1024, "gateway RSS peaked at %d KiB (> 64 MiB) during a %.1fs upload"
          % (mon.max_kb, elapsed))


def test_body_download_1gib(w):
    total = BIG
    mon = RssMonitor(w.gw.pid)
    state = {"off": 0, "bad": None}

    def sink(piece):
        if state["bad"] is None and not pattern_ok(piece, state["off"]):
            state["bad"] = state["off"]
        state["off"] += len(piece)

    c = Conn(w.port)
    t0 = time.monotonic()
    try:
        c.send(build("GET", "/big/large/%d" % total, [("Connection", "close")]))
        try:
            r = c.read_response(sink=sink)
        except Failure as e:
            raise Failure("download stalled after %d of %d bytes (%.1fs): %s"
                          % (state["off"], total, time.monotonic() - t0, e))
    finally:
        c.close()
        mon.stop()
    status_is(r, 200, "1 GiB download")
    eq(r.header("Content-Length"), str(total), "Content-Length passed through", r)
    eq(state["off"], total, "bytes received", r)
    check(state["bad"] is None, "pattern mismatch at offset %r" % state["bad"])
    check(mon.samples > 3, "RSS was sampled (%d samples)" % mon.samples)
    check(mon.max_kb < 64 * 1024, "gateway RSS peaked at %d KiB (> 64 MiB) during a %.1fs "
          "download" % (mon.max_kb, time.monotonic() - t0))


def test_body_stream_chunked(w):
    c = Conn(w.port)
    try:
        t0 = time.monotonic()
        c.send(build("GET", "/shop/stream/4/300", [("Connection", "close")]))
        _, status, _, headers, raw = c.read_head()
        first = time.monotonic() - t0
        r0 = Resp("", status, "", headers, b"", [], [], raw)
        status_is(r0, 200, "stream head")
        eq((r0.header("Transfer-Encoding") or "").lower(), "chunked", "chunked to the client", r0)
        # the first chunk is sent at once by the upstream: it must not be held back
        for _ in range(1000):
            if b"chunk 0\n" in c.buf or not c._more(2.0):
                break
        got_first = time.monotonic() - t0
        check(b"chunk 0\n" in c.buf, "first chunk did not arrive", r0)
        check(got_first < 0.25, "first chunk arrived after %.2fs: the stream is buffered"
              % got_first)
        check(first < 0.25, "head arrived after %.2fs" % first)
        # the rest, through the normal reader
        c.buf[:0] = raw
        r = c.read_response()
    finally:
        c.close()
    eq(r.body, b"".join(b"chunk %d\n" % i for i in range(4)), "streamed body", r)
    check(time.monotonic() - t0 >= 0.8, "stream took the upstream's time")


def test_body_large_chunked(w):
    n = 1000003
    r = call(w.port, "GET", "/shop/large-chunked/%d" % n)
    status_is(r, 200, "large-chunked")
    check(r.chunked, "chunked to the client", r)
    eq(len(r.body), n, "length", r)
    check(pattern_ok(r.body), "pattern intact")


def test_body_no_length_http11_chunked(w):
    c = Conn(w.port)
    try:
        for i, n in enumerate((None, 100000, 7, 40000, 1, 65536, 300000, None, 5000, 123457,
                               16384, 250000)):
            path = "/shop/no-length" + ("/%d" % n if n is not None else "")
            c.send(build("GET", path))
            try:
                r = c.read_response()
            except Failure as e:
                raise Failure("GET %s (request %d on the connection): the re-chunked body did not "
                              "end with a last-chunk: %s" % (path, i + 1, e))
            status_is(r, 200, "%s to HTTP/1.1 (request %d on the connection)" % (path, i + 1))
            eq((r.header("Transfer-Encoding") or "").lower(), "chunked",
               "close-delimited upstream body re-framed as chunked", r)
            eq(r.header("Content-Length"), None, "no Content-Length", r)
            if n is None:
                eq(r.body, b"no length body\n", "body", r)
            else:
                eq(len(r.body), n, "length", r)
                check(pattern_ok(r.body), "pattern intact")
        # the client connection stays usable
        c.send(build("GET", "/shop/echo", [("Connection", "close")]))
        echo(c.read_response(), "request after re-framed bodies")
    finally:
        c.close()


def test_body_no_length_http10_close(w):
    c = Conn(w.port)
    try:
        c.send(build("GET", "/shop/no-length/50000", version="HTTP/1.0"))
        r = c.read_response()
        status_is(r, 200, "no-length to HTTP/1.0")
        eq(r.header("Transfer-Encoding"), None, "no chunked for HTTP/1.0", r)
        eq(r.header("Content-Length"), None, "no Content-Length (close-delimited)", r)
        eq(len(r.body), 50000, "length (read to EOF)", r)
        check(pattern_ok(r.body), "pattern intact")
        check(c.eof, "connection closed to end the body")
    finally:
        c.close()


def test_body_head_204_304_keepalive(w):
    c = Conn(w.port)
    try:
        c.send(build("HEAD", "/shop/large/5000"))
        r = c.read_response("HEAD")
        status_is(r, 200, "HEAD")
        eq(r.header("Content-Length"), "5000", "HEAD keeps the Content-Length", r)
        for code in (204, 304):
            c.send(build("GET", "/shop/status/%d" % code))
            r = c.read_response()
            status_is(r, code, "status %d" % code)
            eq(r.body, b"", "%d has no body" % code, r)
        c.send(build("GET", "/shop/status/103"))
        r = c.read_response()
        status_is(r, 200, "final response after a 103")
        eq(r.json, {"status": 200, "interim": 103}, "final body after an interim", r)
        c.send(build("GET", "/shop/echo", [("Connection", "close")]))
        echo(c.read_response(), "GET after HEAD/204/304/103 on the same connection")
    finally:
        c.close()


def test_body_smuggled_request_stays_body(w):
    """A complete request inside a Content-Length body is body bytes, and
    bytes after a chunked body's end are the next request, not more body."""
    u3 = w.ups["u3"]
    inner = build("GET", "/v1/pets/echo", [("X-Request-Id", "smuggled-1")])
    r = call(w.port, "POST", "/shop/echo", body=inner)
    j = echo(r, "request with a request in its body")
    eq(base64.b64decode(j["body_b64"]), inner, "the body is forwarded as body", r)
    c = Conn(w.port)
    try:
        c.send(build("POST", "/shop/echo", [("Transfer-Encoding", "chunked"),
                                            ("X-Request-Id", "outer-2")],
                     body=b"3\r\nabc\r\n0\r\n\r\n") +
               build("GET", "/v1/pets/echo", [("X-Request-Id", "next-3"), ("Connection", "close")]))
        r1 = c.read_response()
        eq(base64.b64decode(echo(r1, "chunked request")["body_b64"]), b"abc", "chunked body", r1)
        r2 = c.read_response()
        eq((r2.status, r2.header("X-Request-Id"), r2.header("X-Upstream-Name")),
           (200, "next-3", "u3"), "the request after the chunked body is its own request", r2)
    finally:
        c.close()
    time.sleep(0.05)
    smuggled = [x for x in u3.records() if rec_headers(x, "X-Request-Id") == ["smuggled-1"]]
    eq(smuggled, [], "the request inside the body never reached an upstream as a request")


# ---- 3. keep-alive, pipelining, Expect ----

def test_pipelining_three(w):
    c = Conn(w.port)
    try:
        data = b"".join(build("GET", "/shop/echo?n=%d" % i, [("X-Request-Id", "pipe-%d" % i)])
                        for i in (1, 2, 3))
        c.send(data)
        for i in (1, 2, 3):
            r = c.read_response()
            j = echo(r, "pipelined response %d" % i)
            eq(r.header("X-Request-Id"), "pipe-%d" % i, "response %d in order" % i, r)
            eq(j["target"], "/base/v2/echo?n=%d" % i, "response %d target" % i, r)
        check(not c.closed_within(0.2), "keep-alive connection stays open after pipelining")
    finally:
        c.close()


def test_pipelining_with_bodies(w):
    c = Conn(w.port)
    try:
        data = (build("POST", "/shop/echo", [("X-Request-Id", "pb-1")], body=b"alpha") +
                build("PUT", "/shop/echo", [("X-Request-Id", "pb-2"),
                                            ("Transfer-Encoding", "chunked")],
                      body=b"3\r\nbet\r\n1\r\na\r\n0\r\n\r\n") +
                build("GET", "/shop/echo", [("X-Request-Id", "pb-3"), ("Connection", "close")]))
        c.send(data)
        for i, (m, b) in enumerate([("POST", b"alpha"), ("PUT", b"beta"), ("GET", b"")], 1):
            r = c.read_response()
            j = echo(r, "pipelined %s" % m)
            eq(r.header("X-Request-Id"), "pb-%d" % i, "order", r)
            eq(j["method"], m, "method", r)
            eq(base64.b64decode(j["body_b64"]), b, "body of %s" % m, r)
        check(c.closed_within(2), "closed after Connection: close")
    finally:
        c.close()


def test_keepalive_after_error_response(w):
    """A 404 or 405 that the gateway answers itself must consume that request:
    the next request on the connection gets its own answer."""
    c = Conn(w.port)
    try:
        c.send(build("GET", "/nothing/here", [("X-Request-Id", "ka-404")]))
        r = c.read_response()
        problem(r, 404, "unknown path on a keep-alive connection", "no-route")
        c.send(build("GET", "/shop/echo", [("X-Request-Id", "ka-next")]))
        r = c.read_response(timeout=3)
        eq((r.status, r.header("X-Request-Id")), (200, "ka-next"),
           "the request after a 404 on the same connection", r)
        c.send(build("POST", "/ro/echo", [("X-Request-Id", "ka-405")], body=b""))
        r = c.read_response(timeout=3)
        problem(r, 405, "405 on a keep-alive connection")
        c.send(build("GET", "/shop/echo", [("X-Request-Id", "ka-next2"), ("Connection", "close")]))
        r = c.read_response(timeout=3)
        eq((r.status, r.header("X-Request-Id")), (200, "ka-next2"),
           "the request after a 405 on the same connection", r)
    finally:
        c.close()


def test_pipelined_after_404(w):
    c = Conn(w.port)
    try:
        c.send(build("GET", "/nothing", [("X-Request-Id", "p404-1")]) +
               build("GET", "/shop/echo", [("X-Request-Id", "p404-2"), ("Connection", "close")]))
        r1 = c.read_response(timeout=3)
        eq((r1.status, r1.header("X-Request-Id")), (404, "p404-1"), "first pipelined answer", r1)
        r2 = c.read_response(timeout=3)
        eq((r2.status, r2.header("X-Request-Id")), (200, "p404-2"), "second pipelined answer",
           r2)
    finally:
        c.close()


def test_http10_connection_close(w):
    c = Conn(w.port)
    try:
        c.send(build("GET", "/shop/echo", version="HTTP/1.0"))
        r = c.read_response()
        echo(r, "HTTP/1.0 request")
        eq((r.header("Connection") or "").lower(), "close", "HTTP/1.0 gets Connection: close", r)
        check(c.closed_within(2), "HTTP/1.0 connection closed after the response")
    finally:
        c.close()
    c = Conn(w.port)
    try:
        c.send(build("GET", "/shop/echo", [("Connection", "keep-alive")], version="HTTP/1.0"))
        r = c.read_response()
        echo(r, "HTTP/1.0 keep-alive request")
        eq((r.header("Connection") or "").lower(), "keep-alive",
           "HTTP/1.0 keep-alive is acknowledged", r)
        c.send(build("GET", "/shop/echo", version="HTTP/1.0"))
        echo(c.read_response(), "second HTTP/1.0 request on the kept connection")
    finally:
        c.close()


def test_expect_100_continue(w):
    body = b"the body after 100"
    c = Conn(w.port)
    try:
        c.send(build("POST", "/shop/echo", [("Expect", "100-continue"),
                                            ("Content-Length", str(len(body))),
                                            ("Connection", "close")]))
        _, status, _, headers, raw = c.read_head(timeout=3)
        eq(status, 100, "interim 100 Continue before the body is sent (%r)" % raw)
        c.send(body)
        r = c.read_response()
        j = echo(r, "final response after 100-continue")
        eq(base64.b64decode(j["body_b64"]), body, "body", r)
    finally:
        c.close()


def test_keepalive_upstream_pool(w):
    c = Conn(w.port)
    try:
        conns, seqs = set(), []
        for i in range(4):
            c.send(build("GET", "/shop/echo"))
            r = c.read_response()
            echo(r, "request %d" % i)
            conns.add(r.header("X-Upstream-Conn"))
            seqs.append(int(r.header("X-Upstream-Seq") or 0))
        eq(len(conns), 1, "sequential requests reuse one upstream connection (%r)" % conns)
        eq(seqs, sorted(seqs), "upstream request numbers increase")
        check(seqs[-1] - seqs[0] == 3, "upstream sequence numbers %r" % seqs)
    finally:
        c.close()


# ---- 5. routing ----

def test_routing_longest_prefix(w):
    cases = [("/v1/pets/echo", "u3", "/v1/pets/echo"), ("/v1/other/echo", "u2", "/v1/other/echo"),
             ("/v1/petshop/echo", "u2", "/v1/petshop/echo"), ("/v1/pets", "u3", "/v1/pets"),
             ("/v1", "u2", "/v1")]
    for path, up, target in cases:
        r = call(w.port, "GET", path)
        eq(r.header("X-Upstream-Name"), up, "%s routed to" % path, r)
        if r.status == 200:
            eq(r.json["target"], target, "%s target upstream" % path, r)


def test_routing_segment_boundary(w):
    r = call(w.port, "GET", "/petshop/echo")
    problem(r, 404, "/petshop does not match prefix /pets", "no-route")
    eq(r.header("X-Upstream-Name"), None, "nothing reached an upstream", r)
    for path in ("/pets", "/pets/", "/pets/x/echo"):
        r = call(w.port, "GET", path)
        eq(r.header("X-Upstream-Name"), "u1", "%s routes to pets" % path, r)


def test_routing_hosts(w):
    cases = [("api.example.com", "u2"), ("API.Example.COM:8080", "u2"), ("a.example.org", "u3"),
             ("b.c.example.org:81", "u3"), ("example.org", "u1"), ("other.test", "u1"),
             ("127.0.0.1", "u1")]
    for host, up in cases:
        r = call(w.port, "GET", "/h/echo", host=host)
        j = echo(r, "Host %s" % host)
        eq(r.header("X-Upstream-Name"), up, "Host %s routed to" % host, r)
        eq(rec_headers(j, "X-Forwarded-Host"), [host], "X-Forwarded-Host for %s" % host, r)


def test_routing_methods_405(w):
    r = call(w.port, "GET", "/ro/echo")
    echo(r, "GET on a GET-only API")
    for m in ("POST", "DELETE"):
        r = call(w.port, m, "/ro/echo", body=b"" if m == "POST" else None)
        problem(r, 405, "%s on a GET-only API" % m, "method-not-allowed")


def test_routing_dot_segments(w):
    for path in ("/a/../pets/echo", "/a/%2e%2e/pets/echo", "/a/%2E%2E/pets/echo",
                 "/pets/./echo", "/pets/x/../echo", "/pets/x/%2e%2e/echo", "/%70ets/echo"):
        r = call(w.port, "GET", path)
        j = echo(r, path)
        eq(r.header("X-Upstream-Name"), "u1", "%s routes as /pets/echo" % path, r)
        eq(j["target"], "/pets/echo", "%s reaches the upstream normalised" % path, r)


def test_routing_encoded_slash_stays_inside(w):
    for path in ("/pets/%2F..%2F/admin/echo", "/pets/..%2F..%2Fadmin/echo",
                 "/pets/%2f..%2f..%2fadmin/echo"):
        r = call(w.port, "GET", path)
        j = echo(r, path)
        eq(r.header("X-Upstream-Name"), "u1", "%s stays in the pets API" % path, r)
        t = j["target"]
        check(t.startswith("/pets/"), "%s: the upstream sees it inside /pets: %r" % (path, t), r)
        segs = t.split("?")[0].split("/")
        check("." not in segs and ".." not in segs,
              "%s: a dot segment was created: %r" % (path, t), r)
        check("%2F" in t.upper(), "%s: the encoded slash stays encoded: %r" % (path, t), r)


def test_routing_escape_root(w):
    for path in ("/../pets/echo", "/%2e%2e/pets/echo", "/pets/../../pets/echo", "/a/../../x"):
        r = call(w.port, "GET", path)
        problem(r, 400, "%s climbs above the root" % path)


def test_routing_unknown_404(w):
    before = sum(u.count() for u in w.ups.values())
    r = call(w.port, "GET", "/nothing/here?x=1")
    problem(r, 404, "unknown path", "no-route")
    r = call(w.port, "POST", "/nothing/here", body=b"xyz")
    problem(r, 404, "unknown path with a body", "no-route")
    time.sleep(0.05)
    eq(sum(u.count() for u in w.ups.values()), before, "no upstream saw the 404 requests")


# ---- 8. configuration propagation ----

def test_config_add_api(w):
    u2 = w.ups["u2"]
    r = call(w.port, "GET", "/fresh/echo")
    problem(r, 404, "before the API exists", "no-route")
    w.add_api("fresh", "/fresh", [(u2.url, 100)])
    r, took = until(lambda: (lambda x: x if x.status == 200 else None)(
        call(w.port, "GET", "/fresh/echo")), 3.0)
    check(r is not None, "a new API never became routable (3s)")
    eq(r.header("X-Upstream-Name"), "u2", "new API's upstream", r)
    check(took <= RELOAD_WITHIN, "new API routable after %.2fs (> %.1fs)" % (took, RELOAD_WITHIN))


def test_config_delete_api(w):
    if "fresh" not in w.apis:
        w.add_api("fresh", "/fresh", [(w.ups["u2"].url, 100)])
        until(lambda: call(w.port, "GET", "/fresh/echo").status == 200, 3.0)
    w.admin("DELETE", "/apis/fresh")
    r, took = until(lambda: (lambda x: x if x.status == 404 else None)(
        call(w.port, "GET", "/fresh/echo")), 3.0)
    check(r is not None, "a deleted API is still routed after 3s")
    problem(r, 404, "deleted API", "no-route")
    check(took <= RELOAD_WITHIN, "deleted API gone after %.2fs (> %.1fs)" % (took, RELOAD_WITHIN))
    w.apis.pop("fresh", None)


def test_config_change_target_url(w):
    u2 = w.ups["u2"]
    for i in range(5):
        r = call(w.port, "GET", "/moving/echo")
        eq(r.header("X-Upstream-Name"), "u1", "before the change", r)
    tid = w.apis["moving"]["targets"][0]["id"]
    w.admin("PATCH", "/apis/moving/targets/%s" % tid, {"url": u2.url + "/mv"},
            ctype="application/merge-patch+json")
    seen = []

    def moved():
        x = call(w.port, "GET", "/moving/echo")
        seen.append(x.header("X-Upstream-Name"))
        return x if x.header("X-Upstream-Name") == "u2" else None

    r, took = until(moved, 3.0)
    check(r is not None, "traffic never moved to the new target URL within 3s; upstreams seen "
          "after the change: %s" % seen[-10:])
    check(took <= RELOAD_WITHIN, "traffic moved after %.2fs (> %.1fs)" % (took, RELOAD_WITHIN))
    for i in range(6):
        r = call(w.port, "GET", "/moving/echo")
        eq(r.header("X-Upstream-Name"), "u2", "every request after the change goes to the new "
                                                "URL (request %d)" % i, r)


def test_config_reload_keeps_keepalive(w):
    c = Conn(w.port)
    try:
        c.send(build("GET", "/shop/echo"))
        echo(c.read_response(), "before the reload")
        gen = w.generation()
        w.add_api("reload-a", "/reload-a", [(w.ups["u3"].url, 100)])
        n = 0
        deadline = time.monotonic() + 2.0
        while w.generation() == gen and time.monotonic() < deadline:
            c.send(build("GET", "/shop/echo"))
            echo(c.read_response(), "during the reload")
            n += 1
        check(w.generation() > gen, "no reload happened")
        for i in range(3):
            c.send(build("GET", "/shop/echo"))
            echo(c.read_response(), "after the reload (%d)" % i)
        c.send(build("GET", "/reload-a/echo", [("Connection", "close")]))
        r = c.read_response()
        eq(r.header("X-Upstream-Name"), "u3", "the new API on the old connection", r)
    finally:
        c.close()


def test_config_reload_inflight_request(w):
    """A request in flight across two reloads still completes with its own
    route and target. Other requests meanwhile make every worker take loop
    turns (and so publish the new generation), so the config thread may
    retire the snapshot the in-flight request was routed with."""
    c = Conn(w.port)
    try:
        c.send(build("GET", "/shop/delay/1500", [("X-Request-Id", "inflight-reload"),
                                                 ("Connection", "close")]))
        time.sleep(0.1)
        g0 = w.generation()
        w.add_api("reload-b", "/reload-b", [(w.ups["u3"].url, 100)])
        g1 = w.wait_generation_above(g0)
        w.admin("DELETE", "/apis/reload-b")
        w.apis.pop("reload-b", None)
        w.wait_generation_above(g1)
        for i in range(8):
            echo(call(w.port, "GET", "/pets/echo"), "traffic during the in-flight request")
        time.sleep(0.3)  # several config polls: old snapshots get retired
        for i in range(8):
            echo(call(w.port, "GET", "/pets/echo"), "traffic during the in-flight request")
        r = c.read_response()
    finally:
        c.close()
    status_is(r, 200, "in-flight request across reloads")
    eq(r.body, b"ok", "body", r)
    eq(r.header("X-Upstream-Name"), "u1", "upstream", r)
    lines = w.access_for("inflight-reload")
    eq(len(lines), 1, "one access log line for the in-flight request (last lines: %r)"
       % [str(x)[:300] for x in w.access_lines()[-2:]], lines)
    eq((lines[0].get("api"), lines[0].get("upstream"), lines[0].get("status")),
       ("shop", "127.0.0.1:%d" % w.ups["u1"].port, 200),
       "access log of the in-flight request (route and target of a retired snapshot?)", lines[0])
    check(w.gw.proc.poll() is None, "gateway died: %s" % w.gw.log_text())


# ---- 9. status ----

def test_status_health(w):
    st, ctype, body = w.status_get("/health")
    eq(st, 200, "GET /health")
    check((ctype or "").startswith("application/json"), "health Content-Type %r" % ctype)
    j = json.loads(body)
    eq(j.get("status"), "ok", "health status", j)
    check(isinstance(j.get("workers"), int) and j["workers"] >= 1, "workers", j)
    eq(j.get("routes"), len(w.apis), "routes = APIs registered", j)
    check(isinstance(j.get("config_generation"), int) and j["config_generation"] >= 1,
          "config_generation", j)


def test_threads_named_and_background_ones_batch(w):
    """Every thread has a name (top -H, perf); the ones that are not
    workers run SCHED_BATCH so that their wake-ups never preempt a worker
    (Linux: /proc/PID/task/TID/stat, field 41 is the policy; 3 = batch)."""
    policies = {}
    for tid in os.listdir("/proc/%d/task" % w.gw.pid):
        with open("/proc/%d/task/%s/comm" % (w.gw.pid, tid)) as f:
            name = f.read().strip()
        with open("/proc/%d/task/%s/stat" % (w.gw.pid, tid)) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        policies[name] = int(fields[41 - 3])  # fields after "(comm)" start at field 3
    for name in ("tg-config", "tg-health", "tg-status", "tg-meter"):
        eq(policies.get(name), 3, "%s runs SCHED_BATCH" % name, policies)
    workers = [n for n in policies if n.startswith("tg-worker-")]
    check(workers, "named worker threads: %r" % policies)
    for n in workers:
        eq(policies[n], 0, "%s runs SCHED_OTHER" % n, policies)


def test_status_metrics(w):
    st, ctype, body = w.status_get("/metrics")
    eq(st, 200, "GET /metrics")
    check((ctype or "").startswith("text/plain") and "0.0.4" in ctype,
          "Prometheus text format Content-Type: %r" % ctype)
    text = body.decode()
    for name, kind in (("tollgate_http_requests_total", "counter"),
                       ("tollgate_http_request_duration_seconds", "histogram"),
                       ("tollgate_upstream_errors_total", "counter")):
        check("# TYPE %s %s" % (name, kind) in text, "# TYPE line for %s" % name, text[:3000])
        check("# HELP %s " % name in text, "# HELP line for %s" % name)
    k2, k4 = 'tollgate_http_requests_total{code="2xx"}', 'tollgate_http_requests_total{code="4xx"}'
    kc = "tollgate_http_request_duration_seconds_count"
    m0 = w.metrics()
    for i in range(5):
        echo(call(w.port, "GET", "/shop/echo"), "metrics traffic")
    for i in range(3):
        status_is(call(w.port, "GET", "/no/such/api"), 404, "metrics traffic")

    def settled():
        m = w.metrics()
        return m if m.get(k2, 0) - m0.get(k2, 0) >= 5 and m.get(k4, 0) - m0.get(k4, 0) >= 3 \
            and m.get(kc, 0) - m0.get(kc, 0) >= 8 else None

    until(settled, 2.0)
    time.sleep(0.1)
    m1 = w.metrics()
    eq(m1.get(k2, 0) - m0.get(k2, 0), 5, "2xx counter grew by the requests sent")
    eq(m1.get(k4, 0) - m0.get(k4, 0), 3, "4xx counter grew by the 404s sent")
    eq(m1.get(kc, 0) - m0.get(kc, 0), 8, "histogram _count grew by the requests sent")
    buckets = []
    for key, v in m1.items():
        m = re.match(r'^tollgate_http_request_duration_seconds_bucket\{le="([^"]+)"\}$', key)
        if m:
            buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), v))
    check(len(buckets) >= 2, "histogram has buckets", m1)
    buckets.sort()
    vals = [v for _, v in buckets]
    check(all(a <= b for a, b in zip(vals, vals[1:])), "buckets are cumulative: %r" % buckets)
    eq(buckets[-1][0], float("inf"), "last bucket is +Inf")
    eq(buckets[-1][1], m1[kc], "+Inf bucket == _count")
    total = sum(v for k, v in m1.items() if k.startswith("tollgate_http_requests_total{"))
    eq(total, m1[kc], "requests_total over all classes == histogram _count")
    check("tollgate_http_request_duration_seconds_sum" in m1, "histogram _sum")


# ---- 10. access log ----

def test_access_log(w):
    secret = "sekrit-token-4711"
    n0 = len(w.access_lines())
    reqs = [("GET", "/shop/echo?q=1", "al-1", 200, "shop", [("Authorization", "Bearer " + secret)]),
            ("POST", "/pets/echo", "al-2", 200, "pets", [("Authorization", "Basic " + secret)]),
            ("DELETE", "/nothing/x", "al-3", 404, "", [])]
    for m, p, rid, st, _, hdrs in reqs:
        r = call(w.port, m, p, headers=hdrs + [("X-Request-Id", rid)],
                 body=b"x" if m == "POST" else None)
        status_is(r, st, "%s %s" % (m, p))
    for m, p, rid, st, api, _ in reqs:
        lines = w.access_for(rid)
        eq(len(lines), 1, "exactly one access log line for %s" % rid, w.access_lines()[-5:])
        ln = lines[0]
        eq(ln.get("method"), m, "method logged", ln)
        eq(ln.get("path"), p, "path logged", ln)
        eq(ln.get("status"), st, "status logged", ln)
        eq(ln.get("api"), api, "api slug logged", ln)
        if st == 200:
            eq(ln.get("upstream"), "127.0.0.1:%d" % w.ups["u1"].port, "upstream logged", ln)
    with open(w.access_log, "rb") as f:
        data = f.read()
    check(secret.encode() not in data, "the Authorization value appears in the access log")
    for ln in w.access_lines()[n0:]:
        check("unparsable" not in ln, "access log line is not JSON: %r" % ln)


def test_access_log_rejected_request(w):
    c = Conn(w.port)
    try:
        c.send(b"TRACE /shop/echo HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        r = c.read_response()
    finally:
        c.close()
    problem(r, 501, "TRACE")
    lines = w.access_for(r.header("X-Request-Id"))
    eq(len(lines), 1, "one access log line for a rejected request", w.access_lines()[-3:])
    eq(lines[0].get("status"), 501, "status logged", lines[0])
    check(lines[0].get("method") in ("-", "TRACE"),
          "a rejected TRACE is logged as method %r (must be \"-\" or \"TRACE\", never another "
          "method)" % lines[0].get("method"), lines[0])


# ---- 12. upstream sends through io_uring ----

def ring_counts(w):
    m = w.metrics()
    return (m.get("tollgate_io_uring_workers"), m.get("tollgate_io_uring_sends_total", 0),
            m.get("tollgate_io_uring_calls_total", 0))


def test_io_uring_sends(w):
    """Each worker sends its event batch's upstream requests through its own
    io_uring (gateway/ring.h), on by default: the gauge counts the workers
    that run one, each request forwarded is one send in it, and a call
    carries one send or more (never none)."""
    workers, s0, c0 = ring_counts(w)
    eq(workers, 2, "workers running a ring (gateway_io_uring is on by default)")
    n = 12
    for i in range(n):
        j = echo(call(w.port, "GET", "/shop/echo?ring=%d" % i), "request %d" % i)
        eq(j["target"], "/base/v2/echo?ring=%d" % i, "request %d reached the upstream" % i)
    _, s1, c1 = ring_counts(w)
    eq(s1 - s0, n, "one ring send per forwarded request")
    check(0 < c1 - c0 <= s1 - s0, "calls (%d) between 1 and the sends (%d)" % (c1 - c0, s1 - s0))
    # many connections at once: each gets its own answer, whatever batches
    # their sends shared
    conns = [Conn(w.port) for _ in range(32)]
    try:
        for i, c in enumerate(conns):
            c.send(build("GET", "/shop/echo?many=%d" % i, [("X-Request-Id", "many-%d" % i)]))
        for i, c in enumerate(conns):
            r = c.read_response()
            j = echo(r, "concurrent request %d" % i)
            eq(j["target"], "/base/v2/echo?many=%d" % i, "concurrent request %d's answer" % i, r)
            eq(r.header("X-Request-Id"), "many-%d" % i, "concurrent request %d's id" % i, r)
    finally:
        for c in conns:
            c.close()
    _, s2, c2 = ring_counts(w)
    eq(s2 - s1, 32, "one ring send per concurrent request")
    check(0 < c2 - c1 <= 32, "calls for 32 concurrent sends: %d" % (c2 - c1))


def test_io_uring_off(w):
    """gateway_io_uring = false: no worker runs a ring, nothing is sent
    through one, and requests still reach the upstream (send() each)."""
    workers, s0, c0 = ring_counts(w)
    eq(workers, 0, "workers running a ring with gateway_io_uring = false")
    for i in range(5):
        j = echo(call(w.port, "GET", "/shop/echo?plain=%d" % i), "request %d" % i)
        eq(j["target"], "/base/v2/echo?plain=%d" % i, "request %d reached the upstream" % i)
    _, s1, c1 = ring_counts(w)
    eq((s0, c0, s1, c1), (0, 0, 0, 0), "ring sends and calls, before and after")


PROXY_TESTS = [
    test_proxy_methods_rewrite, test_proxy_forwarded_headers, test_proxy_via_appended,
    test_proxy_request_id, test_proxy_traceparent, test_proxy_hop_by_hop_request,
    test_proxy_hop_by_hop_response,
    test_body_content_length, test_body_chunked_small_pieces, test_body_upload_1gib,
    test_body_download_1gib, test_body_stream_chunked, test_body_large_chunked,
    test_body_no_length_http11_chunked, test_body_no_length_http10_close,
    test_body_head_204_304_keepalive, test_body_smuggled_request_stays_body,
    test_pipelining_three, test_pipelining_with_bodies, test_keepalive_after_error_response,
    test_pipelined_after_404, test_http10_connection_close, test_expect_100_continue,
    test_keepalive_upstream_pool,
    test_routing_longest_prefix, test_routing_segment_boundary, test_routing_hosts,
    test_routing_methods_405, test_routing_dot_segments, test_routing_encoded_slash_stays_inside,
    test_routing_escape_root, test_routing_unknown_404,
    test_config_add_api, test_config_delete_api, test_config_change_target_url,
    test_config_reload_keeps_keepalive, test_config_reload_inflight_request,
    test_access_log, test_access_log_rejected_request,
    test_status_health, test_threads_named_and_background_ones_batch, test_status_metrics,
    test_io_uring_sends,
]

# The same world with one send() per request (gateway_io_uring = false):
# the way every request took before the ring, and the one a kernel
# without io_uring takes.
PLAIN_SEND_TESTS = [
    test_io_uring_off, test_proxy_methods_rewrite, test_body_content_length,
    test_body_chunked_small_pieces, test_body_stream_chunked, test_body_large_chunked,
    test_pipelining_three, test_pipelining_with_bodies, test_expect_100_continue,
    test_keepalive_upstream_pool,
]


def setup_plain_send(w):
    setup_proxy(w, "--gateway-io-uring=false")


# =================================================================================
# Group "strict": the malformed / smuggling table, limits, client timeouts
# =================================================================================

MAX_LINE, MAX_HEAD, MAX_HEADERS, MAX_BODY = 1024, 4096, 20, 100


def setup_strict(w):
    w.boot_admin()
    u1 = w.upstream("u1")
    w.add_api("t", "/t", [(u1.url, 100)], max_body_bytes=MAX_BODY)
    w.start_gateway("--gateway-max-line", str(MAX_LINE), "--gateway-max-head", str(MAX_HEAD),
                    "--gateway-max-headers", str(MAX_HEADERS), "--gateway-header-timeout",
                    "500ms", "--gateway-idle-timeout", "1s", "--gateway-body-timeout", "500ms")


def _req(first, *headers, body=b"", host=True):
    lines = [first] + (["Host: gw.test"] if host else []) + list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _malformed_cases():
    G = "GET /t/echo HTTP/1.1"
    P = "POST /t/echo HTTP/1.1"
    H = b"Host: gw.test\r\n"
    TE = "Transfer-Encoding: chunked"
    long_line = "GET /t/echo?p=" + "a" * (MAX_LINE) + " HTTP/1.1"
    big_head = [G] + ["Host: gw.test"] + ["X-Pad-%d: %s" % (i, "b" * 1500) for i in range(3)]
    many = [G, "Host: gw.test"] + ["X-N-%d: %d" % (i, i) for i in range(MAX_HEADERS + 5)]
    over_chunks = b"".join(b"a\r\n" + b"x" * 10 + b"\r\n" for i in range(16)) + b"0\r\n\r\n"
    return [
        # request smuggling: framing conflicts
        ("cl-te", _req(P, "Content-Length: 5", TE, body=b"0\r\n\r\nG"), 400),
        ("te-cl", _req(P, TE, "Content-Length: 5", body=b"0\r\n\r\nG"), 400),
        ("te-chunked-identity", _req(P, "Transfer-Encoding: chunked, identity",
                                     body=b"0\r\n\r\n"), 501),
        ("te-identity", _req(P, "Transfer-Encoding: identity", body=b"hello"), 501),
        ("te-gzip-chunked", _req(P, "Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501),
        ("te-xchunked", _req(P, "Transfer-Encoding: xchunked", body=b"0\r\n\r\n"), 501),
        ("te-twice", _req(P, TE, TE, body=b"0\r\n\r\n"), 400),
        ("te-empty", _req(P, "Transfer-Encoding: ", "Content-Length: 0"), 400),
        ("te-http10", _req("POST /t/echo HTTP/1.0", TE, body=b"0\r\n\r\n"), 400),
        ("cl-duplicate", _req(P, "Content-Length: 5", "Content-Length: 5", body=b"hello"), 400),
        ("cl-list", _req(P, "Content-Length: 1,1", body=b"x"), 400),
        ("cl-negative", _req(P, "Content-Length: -1"), 400),
        ("cl-hex", _req(P, "Content-Length: 0x5", body=b"hello"), 400),
        ("cl-plus", _req(P, "Content-Length: +5", body=b"hello"), 400),
        ("cl-empty", _req(P, "Content-Length: "), 400),
        ("cl-huge", _req(P, "Content-Length: 99999999999999999999999"), 400),
        ("cl-space-inside", _req(P, "Content-Length: 1 0", body=b"0123456789"), 400),
        # head syntax
        ("obs-fold", _req(G, "X-A: 1", " 2"), 400),
        ("obs-fold-tab", _req(G, "X-A: 1", "\t2"), 400),
        ("obs-fold-te", _req(P, "Transfer-Encoding:", " chunked", body=b"0\r\n\r\n"), 400),
        ("obs-fold-te-value", _req(P, "Transfer-Encoding: chunked", " , identity",
                                   body=b"0\r\n\r\n"), 400),
        ("space-before-colon", _req(G, "X-A : 1"), 400),
        ("space-before-colon-te", _req(P, "Transfer-Encoding : chunked", "Content-Length: 5",
                                       body=b"hello"), 400),
        ("empty-header-name", _req(G, ": x"), 400),
        ("header-name-not-token", _req(G, "X(A): 1"), 400),
        ("header-no-colon", _req(G, "X-A 1"), 400),
        ("bare-lf", b"GET /t/echo HTTP/1.1\nHost: gw.test\n\n", 400),
        ("bare-lf-header", b"GET /t/echo HTTP/1.1\r\nHost: gw.test\nX-A: 1\r\n\r\n", 400),
        ("bare-lf-end", b"GET /t/echo HTTP/1.1\r\nHost: gw.test\r\n\n", 400),
        ("bare-cr-request-line", b"GET /t/echo HTTP/1.1\rHost: gw.test\r\n\r\n", 400),
        ("bare-cr-header", b"GET /t/echo HTTP/1.1\r\nHost: gw.test\r\nX-A: a\rb\r\n\r\n", 400),
        ("nul-in-value", b"GET /t/echo HTTP/1.1\r\nHost: gw.test\r\nX-A: a\x00b\r\n\r\n", 400),
        ("nul-in-target", b"GET /t/ec\x00ho HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
        ("ctl-in-value", b"GET /t/echo HTTP/1.1\r\nHost: gw.test\r\nX-A: a\x01b\r\n\r\n", 400),
        ("del-in-value", b"GET /t/echo HTTP/1.1\r\nHost: gw.test\r\nX-A: a\x7fb\r\n\r\n", 400),
        ("connection-not-token", _req(G, "Connection: close, @@"), 400),
        # Host
        ("missing-host", _req(G, host=False), 400),
        ("duplicate-host", _req(G, "Host: other.test"), 400),
        ("host-userinfo", _req(G, "Host: user@gw.test", host=False), 400),
        ("host-bad-port", _req(G, "Host: gw.test:99999", host=False), 400),
        ("host-empty", _req(G, "Host: ", host=False), 400),
        ("host-space", _req(G, "Host: gw test", host=False), 400),
        # request line
        ("http09", b"GET /t/echo\r\n\r\n", 400),
        ("http2", _req("GET /t/echo HTTP/2.0"), 505),
        ("http12", _req("GET /t/echo HTTP/1.2"), 505),
        ("http3", _req("GET /t/echo HTTP/3.0"), 505),
        ("version-lowercase", _req("GET /t/echo http/1.1"), 400),
        ("version-garbage", _req("GET /t/echo HTTX/1.1"), 400),
        ("version-extra", _req("GET /t/echo HTTP/1.1 x"), 400),
        ("lowercase-method", _req("get /t/echo HTTP/1.1"), 501),
        ("connect", b"CONNECT gw.test:443 HTTP/1.1\r\nHost: gw.test:443\r\n\r\n", 501),
        ("trace", _req("TRACE /t/echo HTTP/1.1"), 501),
        ("unknown-method", _req("BREW /t/echo HTTP/1.1"), 501),
        ("method-not-token", _req("G@T /t/echo HTTP/1.1"), 400),
        ("absolute-form", _req("GET http://gw.test/t/echo HTTP/1.1"), 400),
        ("asterisk-form", _req("OPTIONS * HTTP/1.1"), 400),
        ("fragment", _req("GET /t/echo#frag HTTP/1.1"), 400),
        ("space-in-target", _req("GET /t/ec ho HTTP/1.1"), 400),
        ("double-space", _req("GET  /t/echo HTTP/1.1"), 400),
        ("leading-space", _req(" GET /t/echo HTTP/1.1"), 400),
        ("two-leading-crlf", b"\r\n\r\n" + _req(G), 400),
        ("non-ascii-target", _req("GET /t/\xe9cho HTTP/1.1"), 400),
        ("bad-escape", _req("GET /t/%zz/echo HTTP/1.1"), 400),
        ("short-escape", _req("GET /t/echo%4 HTTP/1.1"), 400),
        ("encoded-nul", _req("GET /t/%00/echo HTTP/1.1"), 400),
        ("dotdot-above-root", _req("GET /../t/echo HTTP/1.1"), 400),
        ("encoded-dotdot-above-root", _req("GET /%2e%2e/t/echo HTTP/1.1"), 400),
        # limits
        ("line-too-long", _req(long_line), 414),
        ("head-too-big", _req(*big_head, host=False), 431),
        ("too-many-headers", _req(*many, host=False), 431),
        # lengths and expectations
        ("post-no-length", _req(P), 411),
        ("put-no-length", _req("PUT /t/echo HTTP/1.1"), 411),
        ("patch-no-length", _req("PATCH /t/echo HTTP/1.1"), 411),
        ("expect-other", _req(P, "Expect: something-else", "Content-Length: 5", body=b"hello"),
         417),
        # chunked body framing
        ("chunk-size-invalid", _req(P, TE, body=b"zz\r\nhello\r\n0\r\n\r\n"), 400),
        ("chunk-size-overflow", _req(P, TE, body=b"1000000000000005\r\nhello\r\n0\r\n\r\n"), 400),
        ("chunk-size-negative", _req(P, TE, body=b"-5\r\nhello\r\n0\r\n\r\n"), 400),
        ("chunk-size-space", _req(P, TE, body=b"5 \r\nhello\r\n0\r\n\r\n"), 400),
        ("chunk-size-0x", _req(P, TE, body=b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
        ("chunk-no-crlf", _req(P, TE, body=b"5\r\nhelloXX0\r\n\r\n"), 400),
        ("chunk-bare-lf", _req(P, TE, body=b"5\nhello\n0\n\n"), 400),
        ("chunk-ext-ctl", _req(P, TE, body=b"5;a\x01b\r\nhello\r\n0\r\n\r\n"), 400),
        ("chunk-trailer-fold", _req(P, TE, body=b"5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n"),
         400),
        # the API's max_body_bytes
        ("body-over-max-cl", _req(P, "Content-Length: %d" % (MAX_BODY + 1),
                                  body=b"y" * (MAX_BODY + 1)), 413),
        ("body-over-max-chunked", _req(P, TE, body=over_chunks), 413),
        ("body-over-max-smuggle", _req(P, "Content-Length: %d" % (MAX_BODY + 60),
                                       body=_req(G, "X-Smuggled: 1").ljust(MAX_BODY + 60, b"s")),
         413),
        ("body-over-max-expect", _req(P, "Expect: 100-continue",
                                      "Content-Length: %d" % (MAX_BODY * 5)), 413),
    ]


def make_malformed_test(name, raw, code):
    def t(w):
        u1 = w.ups["u1"]
        before = u1.count()
        c = Conn(w.port, timeout=5)
        try:
            c.send(raw)
            r = c.read_response(timeout=5)
            problem(r, code, "%s %r" % (name, raw[:120]))
            eq(r.interim, [], "no interim response before a %d" % code, r)
            check(HEX32_RE.match(r.header("X-Request-Id") or ""),
                  "generated request id for a rejected request", r)
            eq((r.header("Connection") or "").lower(), "close",
               "Connection: close on a rejected request", r)
            check(c.closed_within(2), "the gateway closed the connection after %d" % code, r)
        finally:
            c.close()
        time.sleep(0.02)
        after = u1.count()
        check(after == before, "the upstream received the rejected request: %s"
              % u1.records()[before:after])
    t.__name__ = "malformed[%s]" % name
    return t


def test_malformed_never_reached_upstream(w):
    """After the whole table: the upstream's log has no line at all, and a
    valid request on a new connection still works."""
    u1 = w.ups["u1"]
    time.sleep(0.2)
    eq(u1.count(), 0, "upstream log lines after the malformed table", u1.records()[:5])
    r = call(w.port, "GET", "/t/echo")
    echo(r, "valid request after the malformed table")
    eq(u1.count(), 1, "the valid request reached the upstream")


def test_limits_boundaries(w):
    # request line of exactly max_line bytes (CRLF included) passes, one more is 414
    base = len("GET /t/echo?p= HTTP/1.1\r\n")
    line = "GET /t/echo?p=" + "a" * (MAX_LINE - base) + " HTTP/1.1"
    eq(len(line) + 2, MAX_LINE, "test error: line length")
    echo(call_raw(w, _req(line, "Connection: close")), "request line of exactly max_line")
    line = "GET /t/echo?p=" + "a" * (MAX_LINE - base + 1) + " HTTP/1.1"
    problem(call_raw(w, _req(line, "Connection: close")), 414, "request line of max_line + 1")
    # head of exactly max_head bytes passes, one more is 431
    def head_of(size):
        fixed = _req("GET /t/echo HTTP/1.1", "Connection: close", "X-Pad: ")
        return _req("GET /t/echo HTTP/1.1", "Connection: close", "X-Pad: " + "p" * (size - len(
            fixed)))
    h = head_of(MAX_HEAD)
    eq(len(h), MAX_HEAD, "test error: head size")
    echo(call_raw(w, h), "head of exactly max_head")
    problem(call_raw(w, head_of(MAX_HEAD + 1)), 431, "head of max_head + 1")
    # max_headers fields pass (Host included), one more is 431
    hs = ["Connection: close"] + ["X-N-%d: v" % i for i in range(MAX_HEADERS - 2)]
    echo(call_raw(w, _req("GET /t/echo HTTP/1.1", *hs)), "exactly max_headers fields")
    hs.append("X-One-More: v")
    problem(call_raw(w, _req("GET /t/echo HTTP/1.1", *hs)), 431, "max_headers + 1 fields")
    # a body of exactly max_body_bytes passes, CL and chunked
    r = call_raw(w, _req("POST /t/echo HTTP/1.1", "Connection: close",
                         "Content-Length: %d" % MAX_BODY, body=b"z" * MAX_BODY))
    eq(echo(r, "body of exactly max_body")["body_len"], MAX_BODY, "body length", r)
    r = call_raw(w, _req("POST /t/echo HTTP/1.1", "Connection: close",
                         "Transfer-Encoding: chunked",
                         body=b"".join(chunk_encode(b"z" * MAX_BODY, [7])) + b"0\r\n\r\n"))
    eq(echo(r, "chunked body of exactly max_body")["body_len"], MAX_BODY, "body length", r)


def call_raw(w, raw, timeout=5):
    c = Conn(w.port, timeout=timeout)
    try:
        c.send(raw)
        return c.read_response(timeout=timeout)
    finally:
        c.close()


def test_timeout_slowloris(w):
    before = w.ups["u1"].count()
    c = Conn(w.port, timeout=5)
    try:
        t0 = time.monotonic()
        c.send(b"GET /t/echo HTTP/1.1\r\nHost: gw.test\r\n")
        r = c.read_response(timeout=3)
        took = time.monotonic() - t0
        problem(r, 408, "partial head, then silence", "request-timeout")
        check(0.4 <= took <= 1.5, "408 after %.2fs (header timeout 500ms)" % took)
        check(c.closed_within(1), "connection closed after the 408")
    finally:
        c.close()
    eq(w.ups["u1"].count(), before, "nothing reached the upstream")


def test_timeout_slowloris_drip(w):
    """Trickling one byte every 100 ms does not extend the header deadline."""
    c = Conn(w.port, timeout=5)
    try:
        t0 = time.monotonic()
        c.send(b"GET /t/echo HTTP/1.1\r\nHost: gw.test\r\nX-Slow: ")
        got = False
        for _ in range(40):
            if not c.send(b"a"):
                break
            rl, _, _ = select.select([c.sock], [], [], 0.1)
            if rl:
                got = True
                break
        took = time.monotonic() - t0
        check(got, "no answer while dripping a header for %.1fs" % took)
        r = c.read_response(timeout=2)
        problem(r, 408, "dripped head", "request-timeout")
        check(took <= 1.5, "408 after %.2fs of dripping (header timeout 500ms)" % took)
    finally:
        c.close()


def test_timeout_idle_keepalive(w):
    c = Conn(w.port, timeout=5)
    try:
        c.send(build("GET", "/t/echo"))
        echo(c.read_response(), "keep-alive request")
        t0 = time.monotonic()
        check(not c.closed_within(0.6), "idle connection closed before the idle timeout (1s)")
        check(c.closed_within(1.5), "idle keep-alive connection still open after %.1fs "
              "(idle timeout 1s)" % (time.monotonic() - t0))
        took = time.monotonic() - t0
        check(0.8 <= took <= 1.8, "idle connection closed after %.2fs (idle timeout 1s)" % took)
    finally:
        c.close()


def test_timeout_idle_fresh_connection(w):
    """A connection that never sends a byte is closed (silently) after the
    header timeout."""
    c = Conn(w.port, timeout=5)
    try:
        t0 = time.monotonic()
        check(c.closed_within(2.0), "a silent connection was not closed within 2s")
        took = time.monotonic() - t0
        check(took <= 1.5, "silent connection closed after %.2fs" % took)
    finally:
        c.close()


def test_timeout_body(w):
    """A body that stops arriving gets 408 after --gateway-body-timeout (500ms)."""
    c = Conn(w.port, timeout=5)
    try:
        t0 = time.monotonic()
        c.send(_req("POST /t/echo HTTP/1.1", "Content-Length: 50", body=b"0123456789"))
        rl, _, _ = select.select([c.sock], [], [], 3.0)
        took = time.monotonic() - t0
        check(rl, "no answer %.1fs after the body stalled (body timeout 500ms)" % took)
        r = c.read_response(timeout=2)
        problem(r, 408, "stalled body", "request-timeout")
        check(took <= 1.5, "408 after %.2fs (body timeout 500ms)" % took)
    finally:
        c.close()


# =================================================================================
# Group "upstream": failures, retries, passive health, weights (one worker)
# =================================================================================

def setup_upstream(w):
    w.boot_admin()
    u1, u2 = w.upstream("u1"), w.upstream("u2")
    w.dead_sock, w.dead = dead_port()
    w.dead_sock2, w.dead2 = dead_port()
    w.slam = w.origin({"slam": None})
    dead_url = "http://127.0.0.1:%d" % w.dead
    w.add_api("down", "/down", [(dead_url, 100)], retries=0, connect_timeout_ms=1000)
    w.add_api("slow", "/slow", [(u1.url + "/slow", 100)], read_timeout_ms=300)
    w.add_api("streamy", "/streamy", [(u1.url + "/streamy", 100)], read_timeout_ms=600)
    w.add_api("reset", "/reset-api", [(u1.url + "/rs", 100)], retries=0)
    w.add_api("close-early", "/close-early-api", [(u1.url + "/ce", 100)], retries=0)
    for kind in ("cl-te", "double-cl", "obs-fold", "bare-lf", "garbage", "short-body",
                 "bad-chunk"):
        w.add_api("bad-" + kind, "/bad-" + kind, [(u1.url + "/k-" + kind, 100)], retries=0,
                  strip_prefix=True)
    w.add_api("retry", "/retry", [("http://127.0.0.1:%d/r" % w.dead2, 100), (u1.url + "/r", 100)],
              retries=1)
    w.add_api("flaky", "/flaky", [(w.slam.url + "/slam", 100), (u2.url + "/fl", 100)], retries=1)
    w.add_api("weights", "/weights", [(u1.url + "/w", 1), (u2.url + "/w", 3)])
    for i in range(7):  # one API per case of test_retry_rules: failures add up per target
        w.add_api("again-%d" % i, "/again-%d" % i, [(u1.url + "/ag", 100)], retries=1)
    w.dead_sock3, w.dead3 = dead_port()
    w.add_api("retry-body", "/retry-body",
              [("http://127.0.0.1:%d/rb" % w.dead3, 100), (u2.url + "/rb", 100)], retries=1)
    w.start_gateway("--gateway-workers", "1")


def errors_total(w):
    return w.metrics().get("tollgate_upstream_errors_total", 0)


def test_upstream_down_502(w):
    e0 = errors_total(w)
    t0 = time.monotonic()
    r = call(w.port, "GET", "/down/echo")
    took = time.monotonic() - t0
    problem(r, 502, "target with nothing listening", "bad-gateway")
    check(took < 1.0, "502 after %.2fs (connect timeout 1s)" % took)
    time.sleep(0.05)
    eq(errors_total(w) - e0, 1, "tollgate_upstream_errors_total growth for one refused connect")


def test_upstream_read_timeout_504(w):
    t0 = time.monotonic()
    r = call(w.port, "GET", "/slow/delay/5000")
    took = time.monotonic() - t0
    problem(r, 504, "/delay/5000 with read_timeout_ms=300", "upstream-timeout")
    check(0.25 <= took <= 1.0, "504 after %.2fs (read timeout 300ms)" % took)


def test_upstream_read_timeout_is_per_read(w):
    """A streamed response whose pieces each arrive well within
    read_timeout_ms (600) is not cut, however long it takes in total."""
    t0 = time.monotonic()
    r = call(w.port, "GET", "/streamy/stream/6/250")
    status_is(r, 200, "slow stream")
    eq(r.body, b"".join(b"chunk %d\n" % i for i in range(6)),
       "whole stream (gaps 250ms, read timeout 600ms, %.2fs in total)"
       % (time.monotonic() - t0), r)


def test_upstream_reset_502(w):
    r = call(w.port, "GET", "/reset-api/reset")
    problem(r, 502, "upstream reset", "bad-gateway")
    r = call(w.port, "GET", "/close-early-api/close-early")
    problem(r, 502, "upstream closed mid-head", "bad-gateway")


def make_bad_response_test(kind):
    def t(w):
        r = call(w.port, "GET", "/bad-%s/bad-response/%s" % (kind, kind), timeout=2)
        problem(r, 502, "upstream response %s" % kind, "bad-gateway")
        eq(r.header("X-Upstream-Name"), None, "nothing of the bad response reached the client",
           r)
    t.__name__ = "upstream_bad_response[%s]" % kind
    return t


def _cut_response(w, path):
    """(head status or None, bytes after the head, closed) for a request whose
    upstream response breaks after its head."""
    c = Conn(w.port)
    try:
        c.send(build("GET", path))
        for _ in range(1000):
            if c.eof or (b"\r\n\r\n" in c.buf and not c._more(3)):
                break
            if not c.buf and not c._more(3):
                break
        data = bytes(c.buf)
        closed = c.eof or c.closed_within(1)
    finally:
        c.close()
    m = re.match(rb"^HTTP/1\.1 (\d{3}) ", data)
    head, _, rest = data.partition(b"\r\n\r\n")
    return (int(m.group(1)) if m else None), head, rest, closed


def test_upstream_cut_body(w):
    """An upstream that breaks its body after a valid head (short Content-Length
    body, malformed chunk): the client gets either a 502, or the started
    response cut short and the connection closed; never an empty reply, a hang
    or a body that looks complete."""
    for kind in ("short-body", "bad-chunk"):
        path = "/bad-%s/bad-response/%s" % (kind, kind)
        status, head, rest, closed = _cut_response(w, path)
        check(status is not None, "%s: the client got no response at all (empty reply): %r"
              % (kind, head + rest))
        check(closed, "%s: connection left open after a broken upstream body" % kind)
        if status == 502:
            continue
        eq(status, 200, "%s: status of the started response" % kind)
        if kind == "short-body":
            check(b"Content-Length: 100" in head, "short-body: Content-Length passed: %r" % head)
            check(len(rest) < 100, "short-body: fewer bytes than announced: %r" % rest)
        else:
            check(not rest.endswith(b"0\r\n\r\n"), "bad-chunk: a malformed upstream body must "
                  "not be completed with a last-chunk: %r" % rest)


def test_retry_dead_target(w):
    """retries=1, targets [dead, live]: every GET succeeds; after 3 connect
    failures the dead target is skipped (passive health)."""
    e0 = errors_total(w)
    for i in range(30):
        r = call(w.port, "GET", "/retry/echo")
        eq((r.status, r.header("X-Upstream-Name")), (200, "u1"), "GET %d with one dead target"
           % i, r)
    time.sleep(0.05)
    e1 = errors_total(w)
    for i in range(30):
        r = call(w.port, "GET", "/retry/echo")
        eq((r.status, r.header("X-Upstream-Name")), (200, "u1"), "GET %d after the target was "
           "marked down" % i, r)
    time.sleep(0.05)
    e2 = errors_total(w)
    eq(e2 - e1, 0, "upstream errors after the dead target was marked down")
    eq(e1 - e0, 3, "upstream errors until the dead target was skipped (3 failures, 1 worker)")


def test_passive_health_exact(w):
    """A target that accepts and closes at once fails 3 times, then gets no
    more connections (for the 10 s cool-down)."""
    a0 = w.slam.accepts
    for i in range(24):
        r = call(w.port, "GET", "/flaky/echo")
        eq((r.status, r.header("X-Upstream-Name")), (200, "u2"), "GET %d (retried on u2)" % i, r)
    time.sleep(0.05)
    eq(w.slam.accepts - a0, 3, "connections to the failing target before it was skipped")


def test_retry_rules(w):
    """A request is sent again only when it can be sent whole and cannot be
    applied twice: never reached the upstream, or idempotent (RFC 9110
    9.2.2) with its body still at hand (kept up to 64 KiB)."""
    u1 = w.ups["u1"]
    cases = [("GET", None, 2, "GET without a body"),
             ("PUT", b"payload", 2, "PUT with a small body (kept for the retry)"),
             ("DELETE", None, 2, "DELETE"),
             ("POST", b"", 1, "POST with an empty body (not idempotent)"),
             ("POST", b"payload", 1, "POST with a body"),
             ("PATCH", b"{}", 1, "PATCH"),
             ("PUT", b"x" * (64 * 1024 + 1), 1, "PUT with a body over 64 KiB (streamed once)")]
    for i, (method, body, times, what) in enumerate(cases):
        r = call(w.port, method, "/again-%d/reset" % i, body=body)
        problem(r, 502, "%s to /reset with retries=1" % what)
        time.sleep(0.05)
        eq(len(u1.with_target("/ag/again-%d/reset" % i)), times,
           "%s: times the upstream received it" % what)
    # nothing reached the refused target: even a POST with a body is safe to
    # send on, and arrives whole
    for i, method in enumerate(("POST", "PUT", "POST", "PATCH")):
        body = ("%s body %d " % (method, i)).encode() * 300
        r = call(w.port, method, "/retry-body/echo", body=body)
        eq((r.status, r.header("X-Upstream-Name")), (200, "u2"),
           "%s %d with a refused first target" % (method, i), r)
        eq(base64.b64decode(json.loads(r.body)["body_b64"]), body,
           "%s %d: the body reached the second target whole" % (method, i), r)


def test_weights(w):
    counts = {}
    c = Conn(w.port)
    try:
        for i in range(400):
            c.send(build("GET", "/weights/echo"))
            r = c.read_response()
            status_is(r, 200, "weighted request %d" % i)
            n = r.header("X-Upstream-Name")
            counts[n] = counts.get(n, 0) + 1
    finally:
        c.close()
    check(set(counts) <= {"u1", "u2"}, "unexpected upstreams %r" % counts)
    u1 = counts.get("u1", 0)
    check(60 <= u1 <= 140, "weights 1:3 over 400 requests gave %r (u1 expected 100 +- 40)"
          % counts)


# =================================================================================
# Group "health": active health checks, per-API passive health, the settings
# =================================================================================

# probes every 100 ms, two results decide: a change takes about 0.2 s; every
# wait for one is bounded by HEALTH_WITHIN, and nothing asserts on speed
HC_FAST = {"healthcheck_path": "/status/200", "healthcheck_interval_ms": 100,
           "healthcheck_timeout_ms": 1000, "healthy_threshold": 2, "unhealthy_threshold": 2}
HEALTH_WITHIN = 10.0
ANSWER_500 = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
              b"Connection: close\r\n\r\n")


def setup_health(w):
    w.boot_admin()
    ha, hb, hc = w.upstream("ha"), w.upstream("hb"), w.upstream("hc")
    # answers 500 to the health path (/status/...) and 200 to /echo
    w.sick = w.origin({"status": ANSWER_500,
                       "echo": b"HTTP/1.1 200 OK\r\nX-Upstream-Name: sick\r\n"
                               b"Content-Length: 2\r\nConnection: close\r\n\r\nok"})
    w.dead_sock, w.dead = dead_port()
    dead_url = "http://127.0.0.1:%d" % w.dead
    # passive health off and no retries: only the active checks take ha out
    w.add_api("active", "/active", [(ha.url + "/base", 100), (hb.url + "/base", 100)],
              passive_failures=0, retries=0, **HC_FAST)
    w.add_api("sick", "/sick", [(w.sick.url, 100), (hc.url, 100)], **HC_FAST)
    w.add_api("alldown", "/alldown", [(w.sick.url + "/x", 100), (w.sick.url + "/y", 100)],
              **HC_FAST)
    w.add_api("nopassive", "/nopassive", [(dead_url, 100), (hc.url, 100)], retries=1,
              passive_failures=0)
    w.add_api("onefail", "/onefail", [(dead_url, 100), (hc.url, 100)], retries=1,
              passive_failures=1, passive_cooldown_ms=3600000)
    w.start_gateway("--gateway-workers", "2")


def target_id(w, slug, i):
    return w.apis[slug]["targets"][i]["id"]


def target_up(w, slug, i):
    """tollgate_upstream_target_up of the i-th target of slug (None: no series)."""
    return w.metrics().get('tollgate_upstream_target_up{api="%s",target="%s"}'
                           % (slug, target_id(w, slug, i)))


def wait_target_up(w, slug, i, want, what):
    got, took = until(lambda: target_up(w, slug, i) == want, HEALTH_WITHIN, step=0.05)
    check(got, "%s: tollgate_upstream_target_up of %s target %d is %r after %.1fs, expected %r"
          "\n  %s" % (what, slug, i, target_up(w, slug, i), took, want, w.gw.log_text(1500)))


def names_of(w, path, n):
    """(status, X-Upstream-Name) of n requests, each on a new connection."""
    out = []
    for _ in range(n):
        r = call(w.port, "GET", path)
        out.append((r.status, r.header("X-Upstream-Name")))
    return out


def test_health_probe_request(w):
    """The probe: GET <base path><healthcheck_path> with the target's Host, our
    User-Agent and Connection: close."""
    ha = w.ups["ha"]
    recs, _ = until(lambda: ha.with_target("/base/status/200"), HEALTH_WITHIN)
    check(recs, "no health probe reached ha within %.0fs: %r" % (HEALTH_WITHIN, ha.records()[-3:]))
    rec = recs[0]
    eq((rec.get("method"), rec.get("target"), rec.get("version")),
       ("GET", "/base/status/200", "HTTP/1.1"), "probe request line", rec)
    eq(rec_headers(rec, "Host"), ["127.0.0.1:%d" % ha.port], "probe Host", rec)
    eq(rec_headers(rec, "User-Agent"), ["tollgate-healthcheck"], "probe User-Agent", rec)
    eq(rec_headers(rec, "Connection"), ["close"], "probe Connection", rec)
    eq(rec.get("body_len"), 0, "probe has no body", rec)


def test_health_metrics(w):
    st, _, body = w.status_get("/metrics")
    text = body.decode()
    for name, kind in (("tollgate_upstream_target_up", "gauge"),
                       ("tollgate_upstream_health_checks_total", "counter")):
        check("# TYPE %s %s" % (name, kind) in text, "# TYPE line for %s" % name, text[-3000:])
        check("# HELP %s " % name in text, "# HELP line for %s" % name)
    wait_target_up(w, "active", 0, 1, "ha at start")
    wait_target_up(w, "active", 1, 1, "hb at start")
    key = ('tollgate_upstream_health_checks_total{api="active",target="%s",result="healthy"}'
           % target_id(w, "active", 0))
    got, _ = until(lambda: w.metrics().get(key, 0) >= 2, HEALTH_WITHIN)
    check(got, "healthy probes of ha are not counted: %r" % w.metrics().get(key))
    eq(target_up(w, "nopassive", 1), None, "no series for a target without active checks")


def test_health_stopped_target_taken_out(w):
    """Both targets serve; ha stops; active checks take it out and every
    request goes to hb (passive health is off for this API)."""
    wait_target_up(w, "active", 0, 1, "ha before the stop")
    got = names_of(w, "/active/echo", 10)
    eq(sorted(set(got)), [(200, "ha"), (200, "hb")], "both targets serve while healthy")
    w.ha_port = w.ups["ha"].port
    w.ups["ha"].stop()
    wait_target_up(w, "active", 0, 0, "ha after it stopped")
    wait_target_up(w, "active", 1, 1, "hb while ha is stopped")
    got = names_of(w, "/active/echo", 20)
    eq(got, [(200, "hb")] * 20, "every request goes to hb once ha is out")


def test_health_restarted_target_back(w):
    """ha restarts on its port: healthy_threshold good probes bring it back."""
    check(getattr(w, "ha_port", None), "test_health_stopped_target_taken_out did not run")
    w.upstream("ha", port=w.ha_port)
    wait_target_up(w, "active", 0, 1, "ha after it restarted")
    got = names_of(w, "/active/echo", 20)
    eq(sorted(set(got)), [(200, "ha"), (200, "hb")], "both targets serve again")


def test_health_500_taken_out(w):
    """A target answering 500 on the health path is taken out, though it
    accepts connections and would serve /echo."""
    wait_target_up(w, "sick", 0, 0, "the target answering 500")
    wait_target_up(w, "sick", 1, 1, "the healthy target")
    check("/status/200" in w.sick.targets, "the sick origin got no probe: %r" % w.sick.targets[:5])
    key = ('tollgate_upstream_health_checks_total{api="sick",target="%s",result="unhealthy"}'
           % target_id(w, "sick", 0))
    check(w.metrics().get(key, 0) >= 2, "unhealthy probes counted: %r" % w.metrics().get(key))
    got = names_of(w, "/sick/echo", 20)
    eq(got, [(200, "hc")] * 20, "every request goes to the healthy target")


def test_health_all_down_503(w):
    wait_target_up(w, "alldown", 0, 0, "first target of alldown")
    wait_target_up(w, "alldown", 1, 0, "second target of alldown")
    n0 = len(w.sick.targets)
    r = call(w.port, "GET", "/alldown/echo")
    problem(r, 503, "every target held out by active checks", "no-healthy-upstream")
    reached = [t for t in w.sick.targets[n0:] if "/alldown/" in t]
    eq(reached, [], "requests that reached a target held out")


def test_passive_failures_0_is_off(w):
    """passive_failures 0: the dead target is never taken out, so about every
    other request fails over to the live one (with the default of 3 at most 3
    connects per worker would fail)."""
    e0 = errors_total(w)
    got = names_of(w, "/nopassive/echo", 30)
    eq(got, [(200, "hc")] * 30, "every request is served (retried on the live target)")
    time.sleep(0.05)
    errors = errors_total(w) - e0
    check(errors >= 10, "only %d failed connects to the dead target in 30 requests: passive "
          "health took it out though passive_failures is 0" % errors)


def test_passive_failures_per_api(w):
    """passive_failures 1, a one-hour cool-down: one failure per worker takes
    the dead target out."""
    e0 = errors_total(w)
    got = names_of(w, "/onefail/echo", 30)
    eq(got, [(200, "hc")] * 30, "every request is served")
    time.sleep(0.05)
    errors = errors_total(w) - e0
    check(1 <= errors <= 2, "%d failed connects in 30 requests (expected one per worker, 2 "
          "workers)" % errors)


def test_health_settings_validate(w):
    bad = {"healthcheck_path": "health", "healthcheck_interval_ms": 0,
           "healthcheck_timeout_ms": 5, "healthy_threshold": 0, "unhealthy_threshold": 101,
           "passive_failures": -1, "passive_cooldown_ms": 99}
    st, j = w.admin("POST", "/apis", dict({"slug": "badhc", "name": "x"}, **bad), expect=(422,))
    eq(w.admin_ctype.split(";")[0], "application/problem+json", "422 Content-Type")
    got = {e.get("pointer") for e in (j or {}).get("errors", [])}
    eq(sorted(got), sorted("/" + k for k in bad), "every bad health field is named", j)
    for field, value in (("healthcheck_path", "/a b"), ("healthcheck_path", "/a#frag"),
                         ("healthcheck_path", ""), ("healthcheck_interval_ms", "100"),
                         ("healthcheck_interval_ms", 3600001), ("passive_failures", 1.5)):
        st, j = w.admin("POST", "/apis", {"slug": "badhc", "name": "x", field: value},
                        expect=(422,))
        eq([e.get("pointer") for e in j.get("errors", [])], ["/" + field],
           "POST with %s=%r" % (field, value), j)
    # a bad PATCH changes nothing
    _, before = w.admin("GET", "/apis/active")
    st, j = w.admin("PATCH", "/apis/active", {"healthcheck_interval_ms": 0,
                                               "healthcheck_path": "no-slash"}, expect=(422,))
    eq(sorted(e.get("pointer") for e in j.get("errors", [])),
       ["/healthcheck_interval_ms", "/healthcheck_path"], "PATCH errors", j)
    eq(w.admin("GET", "/apis/active")[1], before, "api after a refused PATCH")
    eq(w.admin("GET", "/apis/badhc", expect=(404,))[0], 404, "no API was created")


def test_health_settings_roundtrip(w):
    """PATCH sets the fields, GET and the /config export show them, an import
    changes them, and null turns active checks off again."""
    w.add_api("rt", "/rt", [])
    want = {"healthcheck_path": "/ping?deep=1", "healthcheck_interval_ms": 250,
            "healthcheck_timeout_ms": 50, "healthy_threshold": 4, "unhealthy_threshold": 5,
            "passive_failures": 0, "passive_cooldown_ms": 2500}
    _, j = w.admin("PATCH", "/apis/rt", want)
    eq({k: j.get(k) for k in want}, want, "PATCH response")
    eq({k: w.admin("GET", "/apis/rt")[1].get(k) for k in want}, want, "GET after PATCH")
    _, doc = w.admin("GET", "/config")
    rt = [a for a in doc["apis"] if a["slug"] == "rt"]
    eq(len(rt), 1, "rt in the export")
    eq({k: rt[0].get(k) for k in want}, want, "exported health fields")
    rt[0]["healthcheck_path"] = "/other"
    rt[0]["passive_failures"] = 9
    _, diff = w.admin("POST", "/config", doc)
    eq([(x.get("entity"), x.get("key"), x.get("fields")) for x in diff.get("updated", [])],
       [("api", "rt", ["healthcheck_path", "passive_failures"])], "import diff", diff)
    got = w.admin("GET", "/apis/rt")[1]
    eq((got["healthcheck_path"], got["passive_failures"], got["healthy_threshold"]),
       ("/other", 9, 4), "GET after the import")
    _, doc2 = w.admin("GET", "/config")
    eq(doc2, doc, "export after the import equals the imported document")
    _, j = w.admin("PATCH", "/apis/rt", {"healthcheck_path": None})
    eq(j.get("healthcheck_path"), None, "PATCH healthcheck_path null")


# =================================================================================
# Group "stop": graceful stop
# =================================================================================

def setup_stop(w):
    w.boot_admin()
    u1 = w.upstream("u1")
    w.add_api("s", "/s", [(u1.url, 100)])
    w.start_gateway("--drain-timeout", "4s")
    w.stop_result = None


def run_graceful_stop(w):
    if w.stop_result is not None:
        return w.stop_result
    res = w.stop_result = {}
    idle = Conn(w.port, timeout=8)
    idle.send(build("GET", "/s/echo"))
    echo(idle.read_response(), "request on the idle keep-alive connection")
    busy = Conn(w.port, timeout=8)
    busy.send(build("GET", "/s/delay/1500", [("X-Request-Id", "drain-1")]))
    time.sleep(0.3)
    t_sig = time.monotonic()
    w.gw.signal(signal.SIGTERM)
    # new connections are refused shortly after
    refused_at = None
    for _ in range(200):
        try:
            s = socket.create_connection(("127.0.0.1", w.port), timeout=1)
            s.close()
        except ConnectionRefusedError:
            refused_at = time.monotonic() - t_sig
            break
        except OSError:
            pass
        if time.monotonic() - t_sig > 1.0:
            break
        time.sleep(0.02)
    res["refused_at"] = refused_at
    try:
        st, body = w.health()
        res["health"] = (st, body)
    except OSError as e:
        res["health"] = e
    res["idle_closed"] = idle.closed_within(max(0.05, 1.0 - (time.monotonic() - t_sig)))
    res["idle_closed_at"] = time.monotonic() - t_sig
    try:
        res["resp"] = busy.read_response(timeout=5)
        res["resp_at"] = time.monotonic() - t_sig
    except Failure as e:
        res["resp"] = e
    idle.close()
    busy.close()
    rc = w.gw.wait(8)
    res["exit_at"] = time.monotonic() - t_sig
    res["rc"] = rc
    if rc is None:
        w.gw.kill()
    return res


def test_graceful_inflight_completes(w):
    res = run_graceful_stop(w)
    r = res["resp"]
    check(isinstance(r, Resp), "the in-flight request got no response: %r" % r)
    status_is(r, 200, "in-flight /delay/1500 across SIGTERM")
    eq(r.body, b"ok", "body", r)


def test_graceful_inflight_announces_close(w):
    res = run_graceful_stop(w)
    r = res["resp"]
    check(isinstance(r, Resp), "the in-flight request got no response: %r" % r)
    eq((r.header("Connection") or "").lower(), "close",
       "a response finished while draining announces Connection: close", r)


def test_graceful_new_connections_refused(w):
    res = run_graceful_stop(w)
    check(res["refused_at"] is not None and res["refused_at"] <= 0.5,
          "new connections refused %r s after SIGTERM (expected within 0.5s)" % res["refused_at"])


def test_graceful_health_unavailable(w):
    res = run_graceful_stop(w)
    h = res["health"]
    check(isinstance(h, tuple) and h[0] == 503 and h[1].get("status") == "unavailable",
          "/health while draining: %r" % (h,))


def test_graceful_idle_keepalive_closed(w):
    res = run_graceful_stop(w)
    check(res["idle_closed"], "an idle keep-alive connection was still open %.2fs after SIGTERM"
          % res["idle_closed_at"])


def test_graceful_exit(w):
    res = run_graceful_stop(w)
    eq(res["rc"], 0, "gateway exit code after SIGTERM (%s)" % w.gw.log_text(1500))
    r_at = res.get("resp_at") or 1.2
    check(res["exit_at"] <= r_at + 1.0,
          "gateway exited %.2fs after SIGTERM, %.2fs after its last request finished "
          "(drain timeout 4s)" % (res["exit_at"], res["exit_at"] - r_at))


def teardown_stop(w):
    run_graceful_stop(w)
    check(w.stop_result.get("rc") == 0, "gateway exit code %r" % w.stop_result.get("rc"))


# =================================================================================
# runner
# =================================================================================

STRICT_TESTS = ([make_malformed_test(n, raw, code) for n, raw, code in _malformed_cases()] +
                [test_malformed_never_reached_upstream, test_limits_boundaries,
                 test_timeout_slowloris, test_timeout_slowloris_drip, test_timeout_idle_keepalive,
                 test_timeout_idle_fresh_connection, test_timeout_body])

UPSTREAM_TESTS = ([test_upstream_down_502, test_upstream_read_timeout_504,
                   test_upstream_read_timeout_is_per_read, test_upstream_reset_502] +
                  [make_bad_response_test(k) for k in ("cl-te", "double-cl", "obs-fold",
                                                       "bare-lf", "garbage")] +
                  [test_upstream_cut_body, test_retry_dead_target, test_passive_health_exact,
                   test_retry_rules, test_weights])

HEALTH_TESTS = [test_health_probe_request, test_health_metrics,
                test_health_stopped_target_taken_out, test_health_restarted_target_back,
                test_health_500_taken_out, test_health_all_down_503, test_passive_failures_0_is_off,
                test_passive_failures_per_api, test_health_settings_validate,
                test_health_settings_roundtrip]

STOP_TESTS = [test_graceful_inflight_completes, test_graceful_inflight_announces_close,
              test_graceful_new_connections_refused, test_graceful_health_unavailable,
              test_graceful_idle_keepalive_closed, test_graceful_exit]

GROUPS = [
    ("proxy", setup_proxy, PROXY_TESTS, None),
    ("plain-send", setup_plain_send, PLAIN_SEND_TESTS, None),
    ("strict", setup_strict, STRICT_TESTS, None),
    ("upstream", setup_upstream, UPSTREAM_TESTS, None),
    ("health", setup_health, HEALTH_TESTS, None),
    ("stop", setup_stop, STOP_TESTS, teardown_stop),
]


def main(argv, groups=None):
    """Run the groups (default: this file's GROUPS); other suites reuse
    this runner and World with their own groups."""
    global GATEWAY, SERVER, CLI, UPSTREAM
    if len(argv) < 5:
        print("usage: %s GATEWAY SERVER CLI UPSTREAM [TEST...]" % argv[0], file=sys.stderr)
        return 2
    GATEWAY, SERVER, CLI, UPSTREAM = (os.path.abspath(a) for a in argv[1:5])
    for b in (GATEWAY, SERVER, CLI, UPSTREAM):
        if not os.access(b, os.X_OK):
            print("%s: not an executable" % b, file=sys.stderr)
            return 2
    only = set(argv[5:])
    os.umask(0o022)
    cwd = os.getcwd()
    passed = failed = 0
    times = os.environ.get("TG_TEST_TIMES")

    def report(name, err):
        nonlocal passed, failed
        if err is None:
            passed += 1
            print("%s: ok" % name)
        else:
            failed += 1
            print("%s: FAIL\n  %s" % (name, err.replace("\n", "\n  ")))
        sys.stdout.flush()

    for gname, setup, tests, teardown in groups or GROUPS:
        sel = [t for t in tests if not only or gname in only or t.__name__ in only]
        if not sel:
            continue
        g0 = time.time()
        with tempfile.TemporaryDirectory(prefix="tg-gw-") as tmp:
            tmp = os.path.realpath(tmp)
            os.chdir(tmp)
            w = World(tmp)
            try:
                try:
                    setup(w)
                except Exception:
                    err = traceback.format_exc()
                    for t in sel:
                        report(t.__name__, "group %s setup failed:\n%s" % (gname, err))
                    report("%s_stop_exit_0" % gname, "group setup failed")
                    continue
                for t in sel:
                    t0 = time.time()
                    try:
                        t(w)
                    except Failure as e:
                        report(t.__name__, str(e))
                    except Exception:
                        report(t.__name__, traceback.format_exc())
                    else:
                        report(t.__name__, None)
                    if times:
                        print("  (%.2fs)" % (time.time() - t0))
                    if w.gw and w.gw.proc.poll() is not None and gname != "stop":
                        report("%s_gateway_alive_after_%s" % (gname, t.__name__),
                               "gateway exited with %r\n%s" % (w.gw.proc.returncode,
                                                               w.gw.log_text()))
                        break
                try:
                    if teardown:
                        teardown(w)
                    else:
                        w.stop_gateway()
                except Failure as e:
                    report("%s_stop_exit_0" % gname, str(e))
                except Exception:
                    report("%s_stop_exit_0" % gname, traceback.format_exc())
                else:
                    report("%s_stop_exit_0" % gname, None)
            finally:
                w.cleanup()
                os.chdir(cwd)
        if times:
            print("  group %s: %.2fs" % (gname, time.time() - g0))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
