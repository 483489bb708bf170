#!/usr/bin/env python3
"""tollgate-gateway over TLS: SNI, protocol floor, ALPN, and HTTPS upstreams.

Usage: test_gateway_tls.py TOLLGATE_GATEWAY TOLLGATE_CLI
Prints "name: ok|FAIL" per test and "N passed, M failed"; exits 1 on failure.
The APIs are written straight into the migrated store (the admin API has
its own tests); the upstream is a Python HTTPS server on loopback.
"""
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tgrun import clean_env as env, run_module_tests  # noqa: E402

GATEWAY, CLI = sys.argv[1], sys.argv[2]


def make_cert(d, name, san):
    crt, key = os.path.join(d, name + '.crt'), os.path.join(d, name + '.key')
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
                    'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj',
                    '/CN=' + name, '-addext', 'subjectAltName=' + san, '-keyout', key,
                    '-out', crt], check=True, timeout=30, capture_output=True)
    return crt, key


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    seen = []  # (path, headers) of every request, health probes included

    def do_GET(self):
        Echo.seen.append((self.path, dict(self.headers)))
        body = json.dumps({'path': self.path, 'headers': dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


class Box:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix='tg-gwtls-')
        self.conf = os.path.join(self.dir, 'empty.conf')
        open(self.conf, 'w').close()
        self.db = os.path.join(self.dir, 't.db')
        self.common = ['--config', self.conf, '--db-path', self.db,
                       '--secret-file', os.path.join(self.dir, 'secret')]
        subprocess.run([CLI] + self.common + ['migrate'], check=True, env=env(), timeout=30,
                       capture_output=True)
        self.a = make_cert(self.dir, 'a.test', 'DNS:a.test')
        self.b = make_cert(self.dir, 'b.test', 'DNS:b.test')
        self.up = make_cert(self.dir, 'upstream', 'IP:127.0.0.1')
        # an HTTPS upstream with the 'upstream' certificate
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Echo)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*self.up)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.up_port = self.httpd.server_address[1]
        con = sqlite3.connect(self.db)
        for slug, url in (('sec', 'https://127.0.0.1:%d/base' % self.up_port),):
            aid = 'api_01TTEST' + '0' * 19
            tid = 'tgt_01TTEST' + '0' * 19
            con.execute("INSERT INTO apis (id, slug, name, path_prefix, strip_prefix, "
                        "auth_mode, created_at, updated_at) "
                        "VALUES (?, ?, ?, '/sec', 1, 'none', 1, 1)",
                        (aid, slug, slug))
            con.execute("INSERT INTO targets (id, api_id, url, created_at, updated_at) "
                        "VALUES (?, ?, ?, 1, 1)", (tid, aid, url))
        con.commit()
        con.close()
        self.proc = None

    def start(self, *extra):
        self.log = open(os.path.join(self.dir, 'gw.log'), 'w+')
        certs = '%s:%s,%s:%s' % (self.a[0], self.a[1], self.b[0], self.b[1])
        self.proc = subprocess.Popen(
            [GATEWAY] + self.common + ['--gateway-listen', '127.0.0.1:0', '--status-listen',
                                       '127.0.0.1:0', '--gateway-tls-listen', '127.0.0.1:0',
                                       '--gateway-tls-certs', certs, '--access-log', 'off',
                                       '--log-format', 'text'] + list(extra),
            stderr=self.log, env=env())
        deadline = time.time() + 10
        while time.time() < deadline:
            self.log.seek(0)
            text = self.log.read()
            m = re.search(r' port=(\d+).*tls_port=(\d+)', text)
            if m:
                self.port, self.tls_port = int(m.group(1)), int(m.group(2))
                self.status_port = int(re.search(r'status_port=(\d+)', text).group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.log.seek(0)
        raise AssertionError('gateway did not start: ' + self.log.read())

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            rc = self.proc.wait(timeout=15)
            assert rc == 0, 'gateway exit code %r' % rc
        self.httpd.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)

    def get(self, port, path='/sec/x'):
        """A plain HTTP GET to 127.0.0.1:port: (response, body)."""
        c = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
        try:
            c.request('GET', path)
            r = c.getresponse()
            return r, r.read()
        finally:
            c.close()

    def tls_get(self, sni, cafile, path='/sec/x', **ctxopts):
        ctx = ssl.create_default_context(cafile=cafile)
        for k, v in ctxopts.items():
            setattr(ctx, k, v)
        ctx.set_alpn_protocols(['h2', 'http/1.1'])
        s = socket.create_connection(('127.0.0.1', self.tls_port), timeout=10)
        ts = ctx.wrap_socket(s, server_hostname=sni)
        c = http.client.HTTPConnection('127.0.0.1', self.tls_port, timeout=10)
        c.sock = ts
        c.request('GET', path, headers={'Host': sni})
        r = c.getresponse()
        body = r.read()
        alpn = ts.selected_alpn_protocol()
        c.close()
        return r.status, body, alpn


def test_sni_picks_the_matching_certificate():
    b = Box()
    try:
        b.start('--gateway-upstream-ca', b.up[0])
        for name, cert in (('a.test', b.a[0]), ('b.test', b.b[0])):
            status, body, alpn = b.tls_get(name, cert)
            assert status == 200, (name, status, body)
            assert alpn == 'http/1.1', alpn
        # b.test presented with a's CA only: the gateway served b's certificate
        try:
            b.tls_get('b.test', b.a[0])
            raise AssertionError('b.test verified against a.test\'s certificate')
        except ssl.SSLCertVerificationError:
            pass
    finally:
        b.close()


def test_forwarded_proto_and_https_upstream():
    b = Box()
    try:
        b.start('--gateway-upstream-ca', b.up[0])
        status, body, _ = b.tls_get('a.test', b.a[0], '/sec/hello?q=1')
        assert status == 200, (status, body)
        echo = json.loads(body)
        assert echo['path'] == '/base/hello?q=1', echo
        assert echo['headers'].get('X-Forwarded-Proto') == 'https', echo['headers']
        # plain HTTP listener still works, and says http
        r, body = b.get(b.port)
        echo = json.loads(body)
        assert r.status == 200 and echo['headers']['X-Forwarded-Proto'] == 'http', echo
    finally:
        b.close()


def test_untrusted_upstream_certificate_is_502():
    b = Box()
    try:
        b.start()  # system CA store: the self-signed upstream is not trusted
        r, body = b.get(b.port)
        assert r.status == 502, (r.status, body)
        assert r.getheader('Content-Type') == 'application/problem+json', r.getheaders()
        assert b'TLS' in body, body
    finally:
        b.close()


TARGET_UP = 'tollgate_upstream_target_up{api="sec",target="tgt_01TTEST%s"}' % ('0' * 19)


def health_checked_box():
    """A Box whose API probes its HTTPS target every 100 ms, one result deciding."""
    b = Box()
    con = sqlite3.connect(b.db)
    con.execute("UPDATE apis SET healthcheck_path = '/hc', healthcheck_interval_ms = 100, "
                "healthy_threshold = 1, unhealthy_threshold = 1")
    con.commit()
    con.close()
    return b


def wait_for_metric(b, line, within=10.0):
    deadline = time.time() + within
    text = ''
    while time.time() < deadline:
        text = b.get(b.status_port, '/metrics')[1].decode()
        if line + '\n' in text:
            return
        time.sleep(0.05)
    raise AssertionError('no line %r in /metrics within %.0fs:\n%s' % (line, within, text[-1500:]))


def test_https_health_checks_verify_the_upstream():
    b = health_checked_box()
    try:
        b.start('--gateway-upstream-ca', b.up[0])
        wait_for_metric(b, 'tollgate_upstream_health_checks_total{api="sec",target="tgt_01TTEST%s"'
                        ',result="healthy"} 1' % ('0' * 19))
        wait_for_metric(b, TARGET_UP + ' 1')
        probes = [h for p, h in Echo.seen if p == '/base/hc']
        assert probes, Echo.seen[-3:]
        assert probes[0].get('User-Agent') == 'tollgate-healthcheck', probes[0]
        assert probes[0].get('Host') == '127.0.0.1:%d' % b.up_port, probes[0]
    finally:
        b.close()
    # without the upstream's CA the probes fail verification, as requests would
    b = health_checked_box()
    try:
        b.start()
        wait_for_metric(b, TARGET_UP + ' 0')
        r, body = b.get(b.port)
        assert r.status == 503, (r.status, body)
        assert r.getheader('Content-Type') == 'application/problem+json', r.getheaders()
    finally:
        b.close()


def handshake(port, lo, hi):
    """Try a handshake limited to TLS versions lo..hi; return the version or raise."""
    import warnings
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers('ALL:@SECLEVEL=0')  # let this client offer old versions at all
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        ctx.minimum_version = lo
        ctx.maximum_version = hi
    s = socket.create_connection(('127.0.0.1', port), timeout=10)
    try:
        ts = ctx.wrap_socket(s, server_hostname='a.test')
        v = ts.version()
        ts.close()
        return v
    finally:
        s.close()


def test_tls_1_2_and_1_3_only():
    b = Box()
    try:
        b.start('--gateway-upstream-ca', b.up[0])
        assert handshake(b.tls_port, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2) == 'TLSv1.2'
        assert handshake(b.tls_port, ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3) == 'TLSv1.3'
        try:
            v = handshake(b.tls_port, ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
            raise AssertionError('the gateway accepted %s' % v)
        except (ssl.SSLError, ConnectionResetError):
            pass
    finally:
        b.close()


def test_bad_certificate_settings_fail_at_start():
    b = Box()
    try:
        p = subprocess.run([GATEWAY] + b.common + ['--gateway-tls-certs', b.a[0] + ':' + b.b[1],
                                                   '--gateway-listen', '127.0.0.1:0',
                                                   '--status-listen', '127.0.0.1:0'],
                           env=env(), timeout=30, capture_output=True, text=True)
        assert p.returncode != 0 and 'gateway_tls_certs' in p.stderr, (p.returncode, p.stderr)
        p = subprocess.run([GATEWAY] + b.common + ['--gateway-tls-certs', 'nocolon.pem',
                                                   '--gateway-listen', '127.0.0.1:0',
                                                   '--status-listen', '127.0.0.1:0'],
                           env=env(), timeout=30, capture_output=True, text=True)
        assert p.returncode != 0 and 'CERT.pem:KEY.pem' in p.stderr, (p.returncode, p.stderr)
    finally:
        b.close()


if __name__ == '__main__':
    run_module_tests(globals())
