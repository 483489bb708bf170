#!/usr/bin/env python3
"""The portal's mail: the outbox (admin API GET /mail) and delivery over
SMTP (admin-api/mailer.c) to a relay, here a small SMTP sink on loopback
that can refuse on demand.

  python3 tests/integration/test_mail.py /path/to/tollgate-server /path/to/tollgate

Mail is made the way the portal makes it (a sign-up in verify mode through
the real portal, with its CSRF token) and, for the edge cases, written into
the outbox table directly (a body line starting with a dot, an address
that must never reach the wire).
"""
import http.client
import json
import os
import re
import socket
import socketserver
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tgrun import clean_env, run_module_tests  # noqa: E402

SERVER = CLI = None


class Sink(socketserver.ThreadingTCPServer):
    """An SMTP relay that records what it accepts. `refuse` maps an address
    to the reply its RCPT TO gets (e.g. '550 no such user'); `tempfail`
    maps an address to how many of its RCPT TOs get 451 before one is
    accepted."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), SinkHandler)
        self.messages = []
        self.refuse = {}
        self.tempfail = {}
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self):
        return self.server_address[1]


class SinkHandler(socketserver.StreamRequestHandler):
    def reply(self, line):
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self):
        srv = self.server
        self.reply("220 sink ESMTP")
        mail_from, rcpt, data = None, [], None
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.decode("ascii", "replace").rstrip("\r\n")
            up = cmd.upper()
            if up.startswith("EHLO"):
                self.wfile.write(b"250-sink\r\n250 8BITMIME\r\n")
            elif up.startswith("MAIL FROM:"):
                mail_from = cmd[10:]
                self.reply("250 ok")
            elif up.startswith("RCPT TO:"):
                addr = cmd[8:].strip("<>")
                with srv.lock:
                    if srv.tempfail.get(addr, 0) > 0:
                        srv.tempfail[addr] -= 1
                        self.reply("451 try again later")
                        continue
                    refusal = srv.refuse.get(addr)
                if refusal:
                    self.reply(refusal)
                else:
                    rcpt.append(addr)
                    self.reply("250 ok")
            elif up == "DATA":
                self.reply("354 go on")
                lines = []
                while True:
                    l = self.rfile.readline()
                    if not l or l == b".\r\n":
                        break
                    lines.append(l)
                data = b"".join(lines)
                with srv.lock:
                    srv.messages.append({"from": mail_from, "rcpt": rcpt, "data": data})
                self.reply("250 queued")
            elif up == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 what")


class Platform:
    """A migrated store, an admin token and tollgate-server with its portal
    in verify mode, delivering to `sink`."""

    def __init__(self, sink_port, *extra):
        """sink_port None: no relay configured."""
        self.dir = tempfile.mkdtemp(prefix="tg_mail_")
        self.db = os.path.join(self.dir, "t.db")
        self.conf = os.path.join(self.dir, "empty.conf")
        open(self.conf, "w").close()
        common = ["--config", self.conf, "--db-path", self.db, "--secret-file",
                  os.path.join(self.dir, "secret")]
        subprocess.run([CLI] + common + ["migrate"], check=True, env=clean_env(),
                       capture_output=True, timeout=30)
        self.token = subprocess.run([CLI] + common + ["admin-token", "create", "--name", "t",
                                                      "--scopes", "admin"],
                                    check=True, env=clean_env(), capture_output=True, text=True,
                                    timeout=30).stdout.strip()
        self.log = open(os.path.join(self.dir, "server.log"), "w+")
        self.proc = subprocess.Popen(
            [SERVER] + common + ["--admin-listen", "127.0.0.1:0", "--portal-listen", "127.0.0.1:0",
                                 "--portal-signup", "verify", "--mail-interval", "100ms",
                                 "--mail-timeout", "2s", "--log-format", "text"] +
            (["--mail-smtp-host", "127.0.0.1", "--mail-smtp-port", str(sink_port)]
             if sink_port else []) + list(extra),
            stderr=self.log, env=clean_env())
        self.admin = self.portal = None
        deadline = time.time() + 10
        while time.time() < deadline and not (self.admin and self.portal):
            self.log.seek(0)
            text = self.log.read()
            m = re.search(r"admin API listening .*\bport=(\d+)", text)
            n = re.search(r"portal_port=(\d+)", text)
            self.admin = int(m.group(1)) if m else None
            self.portal = int(n.group(1)) if n else None
            if self.proc.poll() is not None:
                raise AssertionError("tollgate-server exited:\n" + text)
            time.sleep(0.05)
        assert self.admin and self.portal, "tollgate-server did not start"

    def stop(self):
        self.proc.terminate()
        rc = self.proc.wait(timeout=15)
        assert rc == 0, "tollgate-server exit %r" % rc

    def admin_get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=10)
        c.request("GET", path, headers={"Authorization": "Bearer " + self.token})
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, json.loads(body) if body else None

    def mail(self):
        status, page = self.admin_get("/mail?limit=1000")
        assert status == 200, status
        return page["data"]

    def wait_mail(self, pred, what, seconds=10):
        deadline = time.time() + seconds
        while time.time() < deadline:
            rows = [m for m in self.mail() if pred(m)]
            if rows:
                return rows
            time.sleep(0.05)
        raise AssertionError("no mail %s; outbox: %r" % (what, self.mail()))

    def signup(self, email, want=200):
        """Sign up through the portal, as a browser would."""
        c = http.client.HTTPConnection("127.0.0.1", self.portal, timeout=10)
        c.request("GET", "/signup")
        r = c.getresponse()
        page = r.read().decode()
        cookie = r.getheader("Set-Cookie").split(";")[0]
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        body = urllib.parse.urlencode({"csrf": csrf, "email": email, "name": "M",
                                       "password": "a long enough passphrase"})
        c.request("POST", "/signup", body=body,
                  headers={"Content-Type": "application/x-www-form-urlencoded",
                           "Cookie": cookie})
        r = c.getresponse()
        text = r.read().decode()
        c.close()
        assert r.status == want, (r.status, text[:500])
        if want == 200:
            assert "Check your email" in text, text[:500]
        return r

    def insert(self, to, body, kind="notice"):
        """A message written straight into the outbox."""
        db = sqlite3.connect(self.db, timeout=10)
        now = int(time.time())
        n = int(time.time() * 1000) % (32 ** 10)
        alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
        tail = "".join(alphabet[(n >> (5 * i)) % 32] for i in range(26))
        mid = "mai_" + tail
        db.execute("INSERT INTO mail_outbox (id, to_addr, kind, subject, body, created_at, "
                   "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (mid, to, kind, "Test", body, now, now))
        db.commit()
        db.close()
        return mid


def start(sink, *extra):
    return Platform(sink.port, *extra)


def test_signup_mail_is_delivered_over_smtp():
    sink = Sink()
    p = start(sink)
    try:
        p.signup("mia@example.com")
        sent = p.wait_mail(lambda m: m["to_addr"] == "mia@example.com" and m["status"] == "sent",
                           "sent to mia")
        assert sent[0]["kind"] == "verify" and sent[0]["attempts"] == 1, sent
        assert sent[0]["sent_at"] and sent[0]["last_error"] is None, sent
        msg = [m for m in sink.messages if m["rcpt"] == ["mia@example.com"]]
        assert len(msg) == 1, sink.messages
        data = msg[0]["data"].decode()
        assert msg[0]["from"] == "<portal@localhost>", msg[0]
        head, _, body = data.partition("\r\n\r\n")
        for h in ("From: portal@localhost", "To: mia@example.com",
                  "Subject: Confirm your email address", "Content-Type: text/plain; charset=utf-8",
                  "Message-ID: <mai_"):
            assert h in head, (h, head)
        assert re.search(r"/verify\?token=tg_act_\w+", body), body
        assert "\n" not in body.replace("\r\n", ""), "bare LF in the message"
        # the outbox row and what went out carry the same link
        assert re.search(r"token=(tg_act_\w+)", body).group(1) in sent[0]["body"]
    finally:
        p.stop()
        sink.shutdown()


def test_dot_stuffing_and_bad_addresses():
    sink = Sink()
    p = start(sink)
    try:
        good = p.insert("dot@example.com", "first line\n.starts with a dot\n..two dots\nlast")
        time.sleep(0.002)
        bad = p.insert("evil@example.com\r\nRCPT TO:<x@example.com>", "body")
        p.wait_mail(lambda m: m["id"] == good and m["status"] == "sent", "dot sent")
        rows = p.wait_mail(lambda m: m["id"] == bad and m["status"] == "failed", "bad failed")
        assert "cannot be used" in rows[0]["last_error"], rows
        msg = [m for m in sink.messages if m["rcpt"] == ["dot@example.com"]][0]
        body = msg["data"].decode().partition("\r\n\r\n")[2]
        assert body == "first line\r\n..starts with a dot\r\n...two dots\r\nlast\r\n", repr(body)
        assert not any("x@example.com" in r for m in sink.messages for r in m["rcpt"])
    finally:
        p.stop()
        sink.shutdown()


def test_temporary_and_permanent_refusals():
    sink = Sink()
    sink.tempfail["later@example.com"] = 2
    sink.refuse["gone@example.com"] = "550 no such user"
    p = start(sink, "--mail-max-attempts", "5")
    try:
        later = p.insert("later@example.com", "retry me")
        time.sleep(0.002)
        gone = p.insert("gone@example.com", "never")
        rows = p.wait_mail(lambda m: m["id"] == later and m["status"] == "sent", "retried")
        assert rows[0]["attempts"] == 3, rows  # 451 twice, then accepted
        rows = p.wait_mail(lambda m: m["id"] == gone and m["status"] == "failed", "refused")
        assert rows[0]["attempts"] == 1 and "550" in rows[0]["last_error"], rows
    finally:
        p.stop()
        sink.shutdown()


def test_relay_down_keeps_mail_queued_then_fails():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    p = Platform(port, "--mail-max-attempts", "3")
    try:
        mid = p.insert("nobody@example.com", "x")
        rows = p.wait_mail(lambda m: m["id"] == mid and m["attempts"] >= 1, "an attempt")
        assert rows[0]["status"] in ("queued", "failed"), rows
        rows = p.wait_mail(lambda m: m["id"] == mid and m["status"] == "failed", "given up")
        assert rows[0]["attempts"] == 3 and "connect" in rows[0]["last_error"], rows
    finally:
        p.stop()


def test_without_smtp_mail_stays_in_the_outbox():
    p = Platform(None)
    try:
        p.signup("queued@example.com")
        time.sleep(0.5)  # several mail intervals: nothing may try to send it
        rows = [m for m in p.mail() if m["to_addr"] == "queued@example.com"]
        assert len(rows) == 1 and rows[0]["status"] == "queued" and rows[0]["attempts"] == 0, rows
        status, one = p.admin_get("/mail/" + rows[0]["id"])
        assert status == 200 and one["body"] == rows[0]["body"], (status, one)
        status, _ = p.admin_get("/mail/mai_00000000000000000000000000")
        assert status == 404, status
        status, page = p.admin_get("/mail?kind=verify&status=queued")
        assert status == 200 and [m["id"] for m in page["data"]] == [rows[0]["id"]], page
    finally:
        p.stop()


def test_mail_per_address_is_limited():
    """Sign-ups send mail: an address gets portal_mail_per_addr of them per
    hour, then 429 with Retry-After, and nothing more is queued."""
    p = Platform(None, "--portal-mail-per-addr", "2")
    try:
        p.signup("one@example.com")
        p.signup("two@example.com")
        r = p.signup("three@example.com", want=429)
        wait = int(r.getheader("Retry-After"))
        assert 3500 <= wait <= 3600, wait
        assert [m["to_addr"] for m in p.mail()] == ["one@example.com", "two@example.com"], p.mail()
    finally:
        p.stop()


def test_bad_mail_settings_are_refused():
    for args, key in ((["--mail-from", "no at sign"], "mail_from"),
                      (["--mail-from", "a@b.c\r\nBcc: x@y.z"], "mail_from"),
                      (["--mail-helo", "bad host!"], "mail_helo"),
                      (["--mail-smtp-port", "70000"], "mail_smtp_port")):
        conf = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
        conf.close()
        r = subprocess.run([SERVER, "--config", conf.name, "--check-config"] + args,
                           capture_output=True, text=True, env=clean_env(), timeout=30)
        os.unlink(conf.name)
        assert r.returncode != 0 and key in r.stderr, (args, r.returncode, r.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: %s /path/to/tollgate-server /path/to/tollgate" % sys.argv[0],
              file=sys.stderr)
        sys.exit(2)
    SERVER, CLI = (os.path.abspath(a) for a in sys.argv[1:3])
    run_module_tests(globals())
