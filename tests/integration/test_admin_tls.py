#!/usr/bin/env python3
"""The admin API and the developer portal over HTTPS (libmicrohttpd's TLS)
and the admin API's loopback rule.

Usage: test_admin_tls.py TOLLGATE_SERVER TOLLGATE_CLI
Prints "name: ok|FAIL" per test and "N passed, M failed"; exits 1 on failure.
"""
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tgrun import clean_env as env, run_module_tests  # noqa: E402

SERVER, CLI = sys.argv[1], sys.argv[2]


class Box:
    """A temp dir with a migrated database, an admin token and a cert."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix='tg-tls-')
        self.conf = os.path.join(self.dir, 'empty.conf')
        open(self.conf, 'w').close()
        self.common = ['--config', self.conf, '--db-path', os.path.join(self.dir, 't.db'),
                       '--secret-file', os.path.join(self.dir, 'secret')]
        subprocess.run([CLI] + self.common + ['migrate'], check=True, env=env(), timeout=30,
                       capture_output=True)
        out = subprocess.run([CLI] + self.common + ['admin-token', 'create', '--name', 't',
                                                    '--scopes', 'read'],
                             check=True, env=env(), timeout=30, capture_output=True, text=True)
        self.token = out.stdout.strip()
        self.cert = os.path.join(self.dir, 'cert.pem')
        self.key = os.path.join(self.dir, 'key.pem')
        subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
                        'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj',
                        '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
                        '-keyout', self.key, '-out', self.cert],
                       check=True, timeout=30, capture_output=True)
        self.proc = None

    def start(self, *args, which=r'\bport=(\d+)'):
        """Start the server; the port of the log line `which` matches."""
        self.log = open(os.path.join(self.dir, 'server.log'), 'w+')
        argv = [SERVER] + self.common + ['--log-format', 'text'] + list(args)
        if '--portal-listen' not in args:
            argv += ['--portal-listen', '127.0.0.1:0']
        self.proc = subprocess.Popen(argv, stderr=self.log, env=env())
        deadline = time.time() + 10
        while time.time() < deadline:
            self.log.seek(0)
            text = self.log.read()
            m = re.search(which, text)
            if m and re.search(r'admin API listening', text):
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.log.seek(0)
        raise AssertionError('server did not start: ' + self.log.read())

    def run_expect_fail(self, *args):
        p = subprocess.run([SERVER] + self.common + list(args), env=env(), timeout=30,
                           capture_output=True, text=True)
        return p.returncode, p.stderr

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            rc = self.proc.wait(timeout=15)
            assert rc == 0, 'server exit code %r' % rc
        shutil.rmtree(self.dir, ignore_errors=True)


def test_https_serves_and_verifies():
    b = Box()
    try:
        port = b.start('--admin-listen', '127.0.0.1:0', '--admin-tls-cert', b.cert,
                       '--admin-tls-key', b.key)
        ctx = ssl.create_default_context(cafile=b.cert)
        c = http.client.HTTPSConnection('127.0.0.1', port, context=ctx, timeout=10)
        c.request('GET', '/apis', headers={'Authorization': 'Bearer ' + b.token})
        r = c.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body)
        assert c.sock.version() in ('TLSv1.2', 'TLSv1.3'), c.sock.version()
        c.close()
        # plain HTTP to the TLS port gets no HTTP answer
        s = socket.create_connection(('127.0.0.1', port), timeout=5)
        s.sendall(b'GET /health HTTP/1.1\r\nHost: x\r\n\r\n')
        try:
            data = s.recv(100)
        except (ConnectionResetError, socket.timeout):
            data = b''
        s.close()
        assert not data.startswith(b'HTTP/1.1 200'), data
    finally:
        b.close()


def test_portal_over_https():
    """portal_tls_cert/key: the portal speaks TLS 1.2+, its cookies are
    Secure, it sends Strict-Transport-Security, and its links in mail use
    https."""
    b = Box()
    try:
        port = b.start('--admin-listen', '127.0.0.1:0', '--portal-listen', '127.0.0.1:0',
                       '--portal-tls-cert', b.cert, '--portal-tls-key', b.key,
                       which=r'portal_port=(\d+)')
        b.log.seek(0)
        assert re.search(r'portal_url=https://127\.0\.0\.1:%d\b' % port, b.log.read())
        ctx = ssl.create_default_context(cafile=b.cert)
        c = http.client.HTTPSConnection('127.0.0.1', port, context=ctx, timeout=10)
        c.request('GET', '/signup')
        r = c.getresponse()
        body = r.read()
        assert r.status == 200 and b'Create an account' in body, (r.status, body[:200])
        assert c.sock.version() in ('TLSv1.2', 'TLSv1.3'), c.sock.version()
        assert r.getheader('Strict-Transport-Security', '').startswith('max-age='), r.getheaders()
        cookie = r.getheader('Set-Cookie', '')
        assert cookie.startswith('tg_visitor=') and '; Secure' in cookie and 'HttpOnly' in cookie, \
            cookie
        c.close()
    finally:
        b.close()


def test_portal_tls_settings_must_pair():
    b = Box()
    try:
        rc, err = b.run_expect_fail('--portal-tls-cert', b.cert)
        assert rc != 0 and 'portal_tls_key' in err, (rc, err)
        rc, err = b.run_expect_fail('--portal-tls-cert', b.cert, '--portal-tls-key',
                                    os.path.join(b.dir, 'missing.pem'))
        assert rc != 0 and 'portal_tls_key' in err, (rc, err)
    finally:
        b.close()


def test_non_loopback_needs_tls_or_explicit_flag():
    b = Box()
    try:
        rc, err = b.run_expect_fail('--admin-listen', '0.0.0.0:0')
        assert rc != 0 and 'admin_listen' in err and 'loopback' in err, (rc, err)
        port = b.start('--admin-listen', '0.0.0.0:0', '--admin-tls-cert', b.cert,
                       '--admin-tls-key', b.key)
        assert port > 0
    finally:
        b.close()


def test_tls_settings_must_pair_and_exist():
    b = Box()
    try:
        rc, err = b.run_expect_fail('--admin-tls-cert', b.cert)
        assert rc != 0 and 'admin_tls_key' in err, (rc, err)
        rc, err = b.run_expect_fail('--admin-tls-cert', b.cert, '--admin-tls-key',
                                    os.path.join(b.dir, 'missing.pem'))
        assert rc != 0 and 'missing.pem' in err, (rc, err)
        junk = os.path.join(b.dir, 'junk.pem')
        with open(junk, 'w') as f:
            f.write('not pem\n')
        rc, err = b.run_expect_fail('--admin-tls-cert', junk, '--admin-tls-key', b.key)
        assert rc != 0 and 'PEM' in err, (rc, err)
    finally:
        b.close()


if __name__ == '__main__':
    run_module_tests(globals())
