#!/usr/bin/env python3
"""gateway_keys.py - the helpers of bench/gateway_keys.sh.

  gateway_keys.py seed --db DB --secret-file S --keys N --upstream URL ...
  gateway_keys.py revoke --admin URL --token T --gateway URL --tsv FILE
  gateway_keys.py ports N

seed: fill a migrated Tollgate store with N API keys. Issuing a million
keys through the admin API would take hours, so the rows are written with
plain SQL in one transaction, exactly as core/keys.c and the schema would
have them:

  | row           | how many                | status                       |
  |---------------|-------------------------|------------------------------|
  | api, target   | 1 (/bench, prefix strip)| auth_mode 'key'              |
  | plan          | 1 (rate/s, quota/day)   | limits high enough to admit  |
  | developers    | CLIENTS + SHARED        | active                       |
  | apps, subs    | CLIENTS + SHARED        | active (one sub per app)     |
  | keys          | N                       | active                       |

Key i < CLIENTS belongs to app i (its own subscription, so its own rate
limiter); the others hang round-robin on SHARED apps. Key text is
"tg_live_" + 43 base62 chars + 6-char base62 CRC-32 checksum; the stored
digest is BLAKE2b-256 keyed with the server secret over the whole text
(libsodium crypto_generichash); prefix = type + first 8 body chars. Key
bodies come from a seeded generator, so two stores seeded with the same
SEED and secret share their first keys (the 10,000-key store's keys are
the first 10,000 of the 1,000,000-key store). Ids are "<kind>_" + 26
Crockford base32 chars: a 10-char millisecond time then a 16-char
counter, so they are unique and increase in insertion (rowid) order, as
keys issued one after another would.

The change-log triggers stay on: a store whose keys were issued through
the admin API has those rows too, and the gateway skips them at start.

Writes into OUTDIR (only when asked):
  wrk_keys.txt   the first CLIENTS key texts, one a line (what wrk sends)
  nginx_map.conf the first MAP keys as an nginx map body "<key>" client_<i>;
  revoke.tsv     REVOKE key id<TAB>text pairs among the shared-app keys

ports: print N distinct loopback TCP ports that are free right now.

revoke: for each key in the TSV, check that the gateway admits it, POST
/keys/{id}/revoke to the admin API, then call the gateway with the key
every millisecond until it answers 401 (samples start at random moments,
so they fall at random points of the gateway's poll period). Prints, per key, the time from
sending the revoke to the first 401 and the admin call's own time.
"""
import argparse
import hashlib
import http.client
import os
import random
import socket
import sqlite3
import sys
import time
import urllib.request
import zlib

B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def b32(n, width):
    out = []
    for _ in range(width):
        out.append(CROCKFORD[n & 31])
        n >>= 5
    assert n == 0, "id counter overflow"
    return "".join(reversed(out))


class Ids:
    """ULID-shaped ids: fixed 48-bit ms time, then an increasing counter."""

    def __init__(self, ms):
        self.time = b32(ms, 10)
        self.n = 0

    def new(self, kind):
        self.n += 1
        return f"{kind}_{self.time}{b32(self.n, 16)}"


def checksum(text):
    crc = zlib.crc32(text.encode())
    out = []
    for _ in range(6):
        out.append(B62[crc % 62])
        crc //= 62
    return text + "".join(reversed(out))


def seed(argv):
    ap = argparse.ArgumentParser(prog="gateway_keys.py seed")
    ap.add_argument("--db", required=True)
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--keys", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--shared", type=int, default=10)
    ap.add_argument("--upstream", required=True, help="target URL, e.g. http://127.0.0.1:18491")
    ap.add_argument("--rate-per-second", type=int, default=100000)
    ap.add_argument("--quota-per-day", type=int, default=1000000000)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--outdir")
    ap.add_argument("--map", type=int, default=0, help="keys to write to nginx_map.conf")
    ap.add_argument("--revoke", type=int, default=0, help="key ids to write to revoke.tsv")
    a = ap.parse_args(argv)
    if a.keys < a.clients:
        sys.exit("--keys must be >= --clients")

    t0 = time.monotonic()
    secret = bytes.fromhex(open(a.secret_file).read().strip())
    if len(secret) != 32:
        sys.exit(f"{a.secret_file}: expected 64 hex chars")
    rng = random.Random(a.seed)
    now = int(time.time())
    ids = Ids(now * 1000)

    db = sqlite3.connect(a.db, isolation_level=None)
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA synchronous = OFF")
    db.execute("PRAGMA cache_size = -524288")  # the random-order digest index fits
    db.execute("BEGIN IMMEDIATE")

    api, tgt, plan = ids.new("api"), ids.new("tgt"), ids.new("pln")
    db.execute("INSERT INTO apis (id, slug, name, path_prefix, strip_prefix, auth_mode, "
               "created_at, updated_at) VALUES (?, 'bench', 'Bench', '/bench', 1, 'key', ?, ?)",
               (api, now, now))
    db.execute("INSERT INTO targets (id, api_id, url, created_at, updated_at) "
               "VALUES (?, ?, ?, ?, ?)", (tgt, api, a.upstream, now, now))
    db.execute("INSERT INTO plans (id, api_id, slug, name, rate_per_second, quota_per_day, "
               "created_at, updated_at) VALUES (?, ?, 'bench', 'Bench', ?, ?, ?, ?)",
               (plan, api, a.rate_per_second, a.quota_per_day, now, now))

    apps = []
    for i in range(a.clients + a.shared):
        dev, app, sub = ids.new("dev"), ids.new("app"), ids.new("sub")
        db.execute("INSERT INTO developers (id, email, name, status, email_verified, "
                   "created_at, updated_at) VALUES (?, ?, ?, 'active', 1, ?, ?)",
                   (dev, f"client{i}@bench.invalid", f"client {i}", now, now))
        db.execute("INSERT INTO apps (id, developer_id, name, created_at, updated_at) "
                   "VALUES (?, ?, ?, ?, ?)", (app, dev, f"client_{i}", now, now))
        db.execute("INSERT INTO subscriptions (id, app_id, api_id, plan_id, status, "
                   "created_at, updated_at) VALUES (?, ?, ?, ?, 'active', ?, ?)",
                   (sub, app, api, plan, now, now))
        apps.append(app)

    keep = max(a.clients, a.map) if a.outdir else 0
    kept = []  # (id, text) of the first `keep` keys
    shared_ids = []

    def rows():
        for i in range(a.keys):
            body = "".join(rng.choices(B62, k=43))
            text = checksum("tg_live_" + body)
            kid = ids.new("key")
            app = apps[i] if i < a.clients else apps[a.clients + i % a.shared]
            if i < keep:
                kept.append((kid, text))
            if i >= a.clients and len(shared_ids) < a.revoke and i % 997 == 0:
                shared_ids.append((kid, text))
            digest = hashlib.blake2b(text.encode(), digest_size=32, key=secret).digest()
            yield (kid, app, "tg_live_" + body[:8], digest, now, now)

    db.executemany("INSERT INTO keys (id, app_id, prefix, digest, status, created_at, "
                   "updated_at) VALUES (?, ?, ?, ?, 'active', ?, ?)", rows())
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()

    if a.outdir:
        with open(os.path.join(a.outdir, "wrk_keys.txt"), "w") as f:
            for _, text in kept[:a.clients]:
                f.write(text + "\n")
        if a.map:
            with open(os.path.join(a.outdir, "nginx_map.conf"), "w") as f:
                for i, (_, text) in enumerate(kept[:a.map]):
                    f.write(f'"{text}" "client_{i}";\n')
        if a.revoke:
            with open(os.path.join(a.outdir, "revoke.tsv"), "w") as f:
                for kid, text in shared_ids:
                    f.write(f"{kid}\t{text}\n")
    print(f"seeded {a.keys} keys, {a.clients + a.shared} apps in {time.monotonic() - t0:.1f} s",
          file=sys.stderr)


def gateway_status(conn, path, key):
    conn.request("GET", path, headers={"X-API-Key": key})
    r = conn.getresponse()
    r.read()
    return r.status


def revoke(argv):
    ap = argparse.ArgumentParser(prog="gateway_keys.py revoke")
    ap.add_argument("--admin", required=True, help="admin API base URL")
    ap.add_argument("--token", required=True, help="admin token (scope admin or keys)")
    ap.add_argument("--gateway", required=True, help="host:port of the gateway")
    ap.add_argument("--path", default="/bench/x")
    ap.add_argument("--tsv", required=True, help="key id<TAB>key text, one a line")
    ap.add_argument("--deadline", type=float, default=10.0, help="give up after (s)")
    a = ap.parse_args(argv)
    host, port = a.gateway.rsplit(":", 1)
    worst = 0.0
    rng = random.Random()
    for line in open(a.tsv):
        kid, text = line.split()
        # a random phase against the gateway's poll timer: back-to-back
        # samples would all land just after a poll and all measure the worst
        time.sleep(rng.uniform(0, 0.5))
        gw = http.client.HTTPConnection(host, int(port), timeout=5)
        before = gateway_status(gw, a.path, text)
        if before != 200:
            sys.exit(f"{kid}: the gateway answered {before} before the revoke, not 200")
        req = urllib.request.Request(f"{a.admin}/keys/{kid}/revoke", data=b"", method="POST",
                                     headers={"Authorization": f"Bearer {a.token}"})
        t0 = time.monotonic()
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            if r.status != 200:
                sys.exit(f"{kid}: revoke answered {r.status}")
        t_admin = time.monotonic() - t0
        polls = 0
        while True:
            st = gateway_status(gw, a.path, text)
            polls += 1
            if st == 401:
                break
            if st != 200:
                sys.exit(f"{kid}: the gateway answered {st} while polling")
            if time.monotonic() - t0 > a.deadline:
                sys.exit(f"{kid}: still admitted {a.deadline} s after the revoke")
            time.sleep(0.001)
        took = time.monotonic() - t0
        gw.close()
        worst = max(worst, took)
        print(f"revoked {kid}: 401 at the gateway after {took * 1000:.0f} ms "
              f"(admin call {t_admin * 1000:.0f} ms, {polls} polls)")
    print(f"revocation worst: {worst * 1000:.0f} ms")


def ports(argv):
    socks = []
    for _ in range(int(argv[0])):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


if __name__ == "__main__":
    cmds = {"seed": seed, "revoke": revoke, "ports": ports}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](sys.argv[2:])
