#!/usr/bin/env python3
"""Integration tests for the `tollgate` CLI.

Usage: python3 tests/integration/test_cli.py /path/to/build/cli/tollgate

Each test runs in a fresh temporary directory (the working directory of
the test and of every tollgate process it starts), with its own database,
secret file and empty config file, and an environment stripped of every
TOLLGATE_* variable so that the developer's settings cannot leak in.
Standard library only.
"""
import os
import re
import sqlite3
import stat
import subprocess
import sys
import tempfile
import traceback

TIMEOUT = 30
TOKEN_RE = re.compile(r"^tg_adm_[0-9A-Za-z]{49}$")
TOKEN_IN_TEXT_RE = re.compile(r"tg_adm_[0-9A-Za-z]{49}")

BINARY = None  # set in main()


def clean_env(**extra):
    """os.environ without TOLLGATE_*, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(extra)
    return env


class Result:
    def __init__(self, args, proc):
        self.args = args
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def __repr__(self):
        return "command %r\n  exit %d\n  stdout %r\n  stderr %r" % (
            self.args, self.rc, self.out, self.err)


class Ctx:
    """One test's directory and the paths in it."""

    def __init__(self, tmp):
        self.dir = tmp
        self.db = os.path.join(tmp, "tollgate.db")
        self.secret = os.path.join(tmp, "tollgate.secret")
        self.config = os.path.join(tmp, "empty.conf")
        with open(self.config, "w"):
            pass

    def run(self, *args, env=None, settings=True, config=True, db=None, secret=None):
        """Run tollgate. With settings, --db-path and --secret-file come
        first (db/secret override them); with config, --config EMPTY."""
        argv = [BINARY]
        if config:
            argv += ["--config", self.config]
        if settings:
            argv += ["--db-path", db or self.db, "--secret-file", secret or self.secret]
        argv += list(args)
        proc = subprocess.run(argv, cwd=self.dir, env=env if env is not None else clean_env(),
                              capture_output=True, text=True, timeout=TIMEOUT)
        return Result(argv, proc)

    def ok(self, *args, **kw):
        r = self.run(*args, **kw)
        check(r.rc == 0, "expected exit 0", r)
        return r

    def migrate(self, **kw):
        return self.ok("migrate", **kw)

    def create_token(self, name, scopes="read,write", **kw):
        r = self.ok("admin-token", "create", "--name", name, "--scopes", scopes, **kw)
        tok = r.out.strip()
        check(TOKEN_RE.match(tok), "created token has the wrong shape: %r" % tok, r)
        return tok

    def list_rows(self, **kw):
        """admin-token list as {name: [columns...]}."""
        r = self.ok("admin-token", "list", **kw)
        lines = r.out.splitlines()
        check(lines and lines[0].split()[:2] == ["ID", "NAME"], "list has no header", r)
        rows = {}
        for line in lines[1:]:
            cols = line.split()
            rows[cols[1]] = cols
        return rows, r


# ---- assertion helpers ------------------------------------------------------

class Failure(AssertionError):
    pass


def check(cond, msg, result=None):
    if not cond:
        raise Failure(msg + ("\n  " + repr(result) if result is not None else ""))


def eq(actual, expected, what, result=None):
    check(actual == expected, "%s: expected %r, got %r" % (what, expected, actual), result)


def exit_is(r, code, what):
    check(r.rc == code, "%s: expected exit %d, got %d" % (what, code, r.rc), r)


def exit_fails(r, what):
    check(r.rc != 0, "%s: expected a non-zero exit, got %d" % (what, r.rc), r)


def has(text, needle, what, result=None):
    check(needle in text, "%s: expected %r in %r" % (what, needle, text), result)


def has_re(text, pattern, what, result=None, flags=0):
    check(re.search(pattern, text, flags) is not None,
          "%s: expected a match for /%s/ in %r" % (what, pattern, text), result)


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def latest_schema():
    """The newest schema version this binary knows, from `--version`."""
    out = subprocess.run([BINARY, "--version"], capture_output=True, text=True,
                         timeout=30).stdout
    m = re.search(r"\(schema (\d+)\)", out)
    assert m, "tollgate --version names no schema: %r" % out
    return int(m.group(1))


def user_version(path):
    con = sqlite3.connect(path)
    try:
        return con.execute("PRAGMA user_version").fetchone()[0]
    finally:
        con.close()


# ---- tests ------------------------------------------------------------------

def test_migrate_fresh(c):
    check(not os.path.exists(c.db), "db exists before migrate")
    r = c.migrate()
    check(os.path.isfile(c.db), "migrate did not create the db file %s" % c.db, r)
    check(os.path.isfile(c.secret), "migrate did not create the secret file %s" % c.secret, r)
    eq(oct(mode_of(c.secret)), oct(0o600), "secret file mode", r)
    eq(oct(mode_of(c.db)), oct(0o600), "db file mode", r)
    latest = latest_schema()
    has_re(r.err, r"schema\b.*\b%d\b" % latest, "migrate stderr names the latest schema", r)
    secret = read_bytes(c.secret)
    check(re.fullmatch(rb"[0-9a-fA-F]{64}\n?", secret) is not None,
          "secret file should be 64 hex chars (+ newline), got %d bytes" % len(secret))
    eq(user_version(c.db), latest, "PRAGMA user_version after migrate")

    r2 = c.run("migrate")
    exit_is(r2, 0, "second migrate")
    has(r2.err, "up to date", "second migrate stderr", r2)
    eq(read_bytes(c.secret), secret, "secret file content after second migrate")
    eq(oct(mode_of(c.secret)), oct(0o600), "secret file mode after second migrate")
    eq(user_version(c.db), latest, "PRAGMA user_version after second migrate")


def test_status_after_migrate(c):
    c.migrate()
    r = c.ok("status")
    n = latest_schema()
    has_re(r.out, r"^schema\s+%d \(latest %d\)$" % (n, n), "status schema line", r, re.M)
    has(r.out, "schema         %d (latest %d)" % (n, n), "status schema line (exact)", r)
    has_re(r.out, r"^database\s+" + re.escape(c.db) + r"$", "status database line", r, re.M)
    for label in ("apis", "targets", "plans", "developers", "apps", "subscriptions", "keys",
                  "admin_tokens", "sessions", "audit_log", "mail_outbox"):
        has_re(r.out, r"^%s\s+0$" % label, "status count of %s" % label, r, re.M)
    eq(r.err, "", "status stderr")
    # counts follow the data
    c.create_token("one")
    r = c.ok("status")
    has_re(r.out, r"^admin_tokens\s+1$", "status admin_tokens after one create", r, re.M)


def test_status_missing_db(c):
    r = c.run("status")
    exit_fails(r, "status on a missing db")
    check(r.err.strip() != "", "status on a missing db printed no message", r)
    has(r.err, c.db, "status on a missing db names the file", r)
    check(not os.path.exists(c.db), "status created the missing db file %s" % c.db, r)
    for suffix in ("-wal", "-shm", "-journal"):
        check(not os.path.exists(c.db + suffix), "status created %s" % (c.db + suffix), r)
    check(not os.path.exists(c.secret), "status created the secret file", r)
    # list is read-only too
    r = c.run("admin-token", "list")
    exit_fails(r, "admin-token list on a missing db")
    check(not os.path.exists(c.db), "admin-token list created the missing db file", r)


def test_admin_token_create_and_list(c):
    c.migrate()
    r = c.ok("admin-token", "create", "--name", "ci", "--scopes", "read,write")
    check(r.out.endswith("\n"), "token output should end with a newline", r)
    lines = r.out.split("\n")
    eq(len(lines), 2, "stdout lines (token + empty after final newline)", r)
    tok = lines[0]
    check(TOKEN_RE.match(tok), "token %r does not match %s" % (tok, TOKEN_RE.pattern), r)
    has(r.err, "shown only once", "create stderr", r)
    check(tok not in r.err and tok[7:] not in r.err, "token leaked into stderr", r)

    rows, lr = c.list_rows()
    check("ci" in rows, "list does not show token ci", lr)
    cols = rows["ci"]
    eq(cols[2], tok[:15], "listed prefix (first 15 chars of the token)", lr)
    eq(cols[3], "active", "listed status", lr)
    has(lr.out, '["read","write"]', "listed scopes", lr)
    check(tok not in lr.out and tok[7:] not in lr.out and tok[7:50] not in lr.out,
          "list shows the full token", lr)
    check(TOKEN_IN_TEXT_RE.search(lr.out + lr.err) is None, "list output contains a token", lr)
    has_re(cols[0], r"^tok_[0-9A-Z]{26}$", "listed id", lr)

    # expiry accepted within range and shown
    r = c.ok("admin-token", "create", "--name", "exp", "--scopes", "admin",
             "--expires-in-days", "30")
    check(TOKEN_RE.match(r.out.strip()), "token with expiry has the wrong shape", r)
    rows, lr = c.list_rows()
    has_re(lr.out, r"^\S+\s+exp\s+tg_adm_\S{8}\s+active\s+\d{4}-\d\d-\d\d", "exp row created", lr,
           re.M)
    # the EXPIRES column is not "-" for exp, and is "-" for ci
    exp_line = [l for l in lr.out.splitlines() if re.search(r"\sexp\s", l)][0]
    ci_line = [l for l in lr.out.splitlines() if re.search(r"\sci\s", l)][0]
    check(len(re.findall(r"\d{4}-\d\d-\d\d", exp_line)) >= 2,
          "exp row should show created and expires times: %r" % exp_line, lr)
    eq(len(re.findall(r"\d{4}-\d\d-\d\d", ci_line)), 1,
       "ci row should show only a created time (no expiry, never used): %r" % ci_line, lr)

    # duplicate name
    r = c.run("admin-token", "create", "--name", "ci", "--scopes", "read")
    exit_is(r, 1, "duplicate name")
    has(r.err, "already exists", "duplicate name message", r)
    has(r.err, "ci", "duplicate name message names it", r)
    eq(r.out, "", "duplicate name prints no token on stdout", r)

    # unknown scope
    r = c.run("admin-token", "create", "--name", "bad", "--scopes", "read,bogus")
    exit_is(r, 1, "unknown scope")
    check("bogus" in r.err or ("read" in r.err and "admin" in r.err),
          "unknown scope message should name 'bogus' or list the valid scopes", r)
    eq(r.out, "", "unknown scope prints no token on stdout", r)

    # names the schema refuses (it allows [A-Za-z0-9_.@-] only) fail cleanly
    for bad_name, what in (("a b", "name with a space"), ("", "empty name"),
                           ("n" * 101, "101-byte name")):
        r = c.run("admin-token", "create", "--name", bad_name, "--scopes", "read")
        exit_is(r, 1, what)
        eq(r.out, "", "%s: stdout" % what, r)
        has(r.err, "name", "%s: message" % what, r)

    # none of the failures above created a token
    rows, lr = c.list_rows()
    eq(sorted(rows), ["ci", "exp"], "tokens after the failing creates", lr)


def test_admin_token_create_usage_errors(c):
    """Malformed command lines are usage errors (exit 2), whatever the
    state of the database, and create nothing."""
    c.migrate()
    usage_cases = [
        (["--scopes", "read"], "missing --name"),
        (["--name", "x"], "missing --scopes"),
        (["--name", "x", "--scopes", ""], "empty --scopes"),
        (["--name", "x", "--scopes=", ], "empty --scopes="),
        (["--name", "x", "--scopes", "read,"], "trailing comma in --scopes"),
        (["--name", "x", "--scopes", ",read"], "leading comma in --scopes"),
        (["--name", "x", "--scopes", "read,,write"], "empty scope in --scopes"),
        (["--name", "x", "--scopes", "read", "--frob"], "unknown argument"),
        (["--name", "x", "--scopes", "read", "extra"], "stray positional"),
        (["--name", "x", "--scopes", "read", "--expires-in-days", "0"], "--expires-in-days 0"),
        (["--name", "x", "--scopes", "read", "--expires-in-days", "-1"], "--expires-in-days -1"),
        (["--name", "x", "--scopes", "read", "--expires-in-days", "3651"],
         "--expires-in-days 3651"),
        (["--name", "x", "--scopes", "read", "--expires-in-days", "7d"], "--expires-in-days 7d"),
        (["--name", "x", "--scopes", "read", "--expires-in-days"], "--expires-in-days no value"),
        (["--name"], "--name without value"),
    ]
    problems = []  # every case is run, so one report shows all that fail
    for extra, what in usage_cases:
        r = c.run("admin-token", "create", *extra)
        if r.rc != 2 or not r.err.strip() or r.out != "":
            problems.append("%s: expected exit 2, a message on stderr and nothing on stdout\n"
                            "  %r" % (what, r))
    for extra, what in ((["admin-token"], "admin-token without subcommand"),
                        (["admin-token", "frobnicate"], "admin-token unknown subcommand")):
        r = c.run(*extra)
        if r.rc != 2 or extra[-1] not in r.err:
            problems.append("%s: expected exit 2 and a message naming %r\n  %r"
                            % (what, extra[-1], r))
    rows, lr = c.list_rows()
    if rows:
        problems.append("tokens were created by failing commands: %r" % sorted(rows))
    check(not problems, "\n".join(problems))


def test_plaintext_never_stored(c):
    c.migrate()
    tokens = [c.create_token("t%d" % i, "read") for i in range(3)]
    eq(len(set(tokens)), 3, "three distinct tokens")
    files = [p for p in (c.db, c.db + "-wal", c.db + "-shm") if os.path.exists(p)]
    for path in files:
        data = read_bytes(path)
        for tok in tokens:
            for needle in (tok, tok[7:], tok[7:50]):
                check(needle.encode() not in data,
                      "%r (from token %s...) found in %s" % (needle[:12], tok[:15], path))
    con = sqlite3.connect(c.db)
    try:
        rows = con.execute("SELECT name, typeof(digest), length(digest), prefix, digest "
                           "FROM admin_tokens ORDER BY name").fetchall()
    finally:
        con.close()
    eq([r[0] for r in rows], ["t0", "t1", "t2"], "admin_tokens names")
    for (name, typ, length, prefix, digest), tok in zip(rows, tokens):
        eq(typ, "blob", "typeof(digest) for %s" % name)
        eq(length, 32, "length(digest) for %s" % name)
        eq(prefix, tok[:15], "stored prefix for %s" % name)
        check(tok.encode() not in digest, "digest holds the token")
    eq(len({r[4] for r in rows}), 3, "distinct digests")


def test_admin_token_revoke(c):
    c.migrate()
    tok = c.create_token("ci")
    c.create_token("other")
    r = c.ok("admin-token", "revoke", "ci")
    has(r.err, "ci", "revoke message", r)
    rows, lr = c.list_rows()
    eq(rows["ci"][3], "revoked", "status of ci after revoke", lr)
    eq(rows["other"][3], "active", "status of other after revoking ci", lr)
    check(tok not in lr.out, "list shows the token", lr)

    # revoke by id
    other_id = rows["other"][0]
    c.ok("admin-token", "revoke", other_id)
    rows, lr = c.list_rows()
    eq(rows["other"][3], "revoked", "status of other after revoke by id", lr)

    r = c.run("admin-token", "revoke", "nosuchtoken")
    exit_is(r, 1, "revoke unknown name")
    has(r.err, "nosuchtoken", "revoke unknown name message", r)
    r = c.run("admin-token", "revoke")
    exit_is(r, 2, "revoke without a name")
    r = c.run("admin-token", "revoke", "a", "b")
    exit_is(r, 2, "revoke with two names")


def test_backup(c):
    c.migrate()
    for n in ("alpha", "beta"):
        c.create_token(n)
    c.ok("admin-token", "revoke", "beta")
    dest = os.path.join(c.dir, "backup.db")
    r = c.ok("backup", dest)
    check(os.path.isfile(dest), "backup file missing", r)
    eq(oct(mode_of(dest)), oct(0o600), "backup file mode", r)

    def rows(path):
        con = sqlite3.connect(path)
        try:
            return (con.execute("SELECT id, name, prefix, status, digest FROM admin_tokens "
                                "ORDER BY name").fetchall(),
                    con.execute("PRAGMA user_version").fetchone()[0],
                    con.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            con.close()

    src_rows, _, _ = rows(c.db)
    b_rows, b_version, b_integrity = rows(dest)
    eq([r[1] for r in b_rows], ["alpha", "beta"], "backup admin_tokens names")
    eq(b_rows, src_rows, "backup admin_tokens rows equal the source's")
    eq(b_version, latest_schema(), "backup PRAGMA user_version")
    eq(b_integrity, "ok", "backup PRAGMA integrity_check")
    # the CLI can read the backup as a database
    r = c.ok("status", db=dest)
    has_re(r.out, r"^admin_tokens\s+2$", "status of the backup", r, re.M)

    # never overwrite
    existing = os.path.join(c.dir, "existing.db")
    with open(existing, "wb") as f:
        f.write(b"precious data\n")
    r = c.run("backup", existing)
    exit_fails(r, "backup onto an existing file")
    eq(read_bytes(existing), b"precious data\n", "existing file content after refused backup", r)
    has(r.err, existing, "refused backup names the file", r)
    # nor over an earlier backup
    before = read_bytes(dest)
    r = c.run("backup", dest)
    exit_fails(r, "backup onto an earlier backup")
    eq(read_bytes(dest) == before, True, "earlier backup unchanged", r)

    r = c.run("backup")
    exit_is(r, 2, "backup without FILE")


def test_secret_safety(c):
    c.migrate()
    c.create_token("first")
    original = read_bytes(c.secret)
    hexval = original.decode().strip()
    check(re.fullmatch(r"[0-9a-fA-F]{64}", hexval) is not None, "secret is not 64 hex chars")

    # a different, well-formed secret
    other = ("0123456789abcdef" * 4) if hexval.lower() != "0123456789abcdef" * 4 else "f" * 64
    os.unlink(c.secret)
    fd = os.open(c.secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (other + "\n").encode())
    os.close(fd)
    os.chmod(c.secret, 0o600)
    r = c.run("admin-token", "create", "--name", "x1", "--scopes", "read")
    exit_is(r, 1, "create with the wrong secret")
    has(r.err, "not the one", "wrong secret message", r)
    has(r.err, c.secret, "wrong secret message names the file", r)
    eq(r.out, "", "create with the wrong secret: stdout", r)
    r = c.run("migrate")
    exit_fails(r, "migrate with the wrong secret")
    has(r.err, "not the one", "migrate with the wrong secret message", r)
    eq(read_bytes(c.secret), (other + "\n").encode(), "wrong secret file left as it was")

    # the right secret, but readable by others
    os.unlink(c.secret)
    with open(c.secret, "wb") as f:
        f.write(original)
    os.chmod(c.secret, 0o644)
    r = c.run("admin-token", "create", "--name", "x2", "--scopes", "read")
    exit_is(r, 1, "create with a 0644 secret file")
    has(r.err, c.secret, "0644 secret message names the file", r)
    has_re(r.err, r"0644|mode|group or others", "0644 secret message names the mode", r)
    eq(oct(mode_of(c.secret)), oct(0o644), "tollgate must not chmod the secret file itself")

    # the right secret again: works
    os.chmod(c.secret, 0o600)
    c.create_token("second")

    # missing secret file
    os.unlink(c.secret)
    r = c.run("admin-token", "create", "--name", "x3", "--scopes", "read")
    exit_is(r, 1, "create without the secret file")
    has(r.err, c.secret, "missing secret message names the file", r)
    eq(r.out, "", "create without the secret file: stdout", r)
    check(not os.path.exists(c.secret), "create recreated the secret file", r)
    r = c.run("migrate")
    exit_fails(r, "migrate without the secret file (database already has digests)")
    has(r.err, c.secret, "migrate without the secret file names it", r)
    check(not os.path.exists(c.secret), "migrate silently recreated the secret file", r)

    # TOLLGATE_SECRET with the right value works without the file
    r = c.ok("admin-token", "create", "--name", "fromenv", "--scopes", "read",
             env=clean_env(TOLLGATE_SECRET=hexval))
    check(TOKEN_RE.match(r.out.strip()), "token from env secret has the wrong shape", r)
    check(not os.path.exists(c.secret), "create with TOLLGATE_SECRET wrote a secret file", r)
    r = c.ok("migrate", env=clean_env(TOLLGATE_SECRET=hexval))
    check(not os.path.exists(c.secret), "migrate with TOLLGATE_SECRET wrote a secret file", r)
    # ... and a wrong one does not
    r = c.run("admin-token", "create", "--name", "x4", "--scopes", "read",
              env=clean_env(TOLLGATE_SECRET=other))
    exit_is(r, 1, "create with a wrong TOLLGATE_SECRET")
    has(r.err, "TOLLGATE_SECRET", "wrong TOLLGATE_SECRET message", r)
    check(hexval not in r.err and other not in r.err, "secret value echoed in a message", r)
    r = c.run("admin-token", "create", "--name", "x5", "--scopes", "read",
              env=clean_env(TOLLGATE_SECRET="abc"))
    exit_is(r, 1, "create with a malformed TOLLGATE_SECRET")
    has(r.err, "TOLLGATE_SECRET", "malformed TOLLGATE_SECRET message", r)

    rows, lr = c.list_rows()
    eq(sorted(rows), ["first", "fromenv", "second"], "tokens after the secret checks", lr)

    # a tampered fingerprint in the database is refused, not replaced
    with open(c.secret, "wb") as f:
        f.write(original)
    os.chmod(c.secret, 0o600)
    c.create_token("third")
    con = sqlite3.connect(c.db)
    con.execute("UPDATE meta SET value = 'x' WHERE key = 'secret_fingerprint'")
    eq(con.total_changes, 1, "meta rows with the secret fingerprint")
    con.commit()
    con.close()
    r = c.run("admin-token", "create", "--name", "x6", "--scopes", "read")
    exit_is(r, 1, "create with a tampered fingerprint")
    has(r.err, "not the one", "tampered fingerprint message", r)
    eq(read_bytes(c.secret), original, "secret file after the tampered-fingerprint check")


def test_migrate_with_env_secret(c):
    hexval = "00112233445566778899aabbccddeeff" * 2
    env = clean_env(TOLLGATE_SECRET=hexval)
    c.migrate(env=env)
    check(not os.path.exists(c.secret), "migrate with TOLLGATE_SECRET created a secret file")
    c.create_token("ci", env=env)
    r = c.run("admin-token", "create", "--name", "x", "--scopes", "read")
    exit_is(r, 1, "create with neither TOLLGATE_SECRET nor a secret file")
    has(r.err, c.secret, "message names the missing secret file", r)
    r = c.run("migrate")
    exit_fails(r, "migrate without the env secret once the database is bound to it")
    check(not os.path.exists(c.secret), "migrate created a new secret for a bound database", r)
    r = c.run("admin-token", "create", "--name", "x", "--scopes", "read",
              env=clean_env(TOLLGATE_SECRET="ff" * 32))
    exit_is(r, 1, "create with another TOLLGATE_SECRET")
    has(r.err, "not the one", "another TOLLGATE_SECRET message", r)


def test_newer_schema_refused(c):
    c.migrate()
    c.create_token("ci")
    con = sqlite3.connect(c.db)
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    eq(user_version(c.db), 99, "user_version set by the test")
    for cmd in (["status"], ["migrate"], ["admin-token", "list"],
                ["admin-token", "create", "--name", "x", "--scopes", "read"]):
        r = c.run(*cmd)
        exit_fails(r, "%s on a schema-99 database" % " ".join(cmd))
        has(r.err, "newer", "%s message" % " ".join(cmd), r)
        eq(user_version(c.db), 99, "user_version after %s" % " ".join(cmd))


def test_config_errors(c):
    c.migrate()
    # unknown key in the config file
    bad = os.path.join(c.dir, "bad.conf")
    with open(bad, "w") as f:
        f.write("# comment\ndb_path = %s\nbogus_key = 1\n" % c.db)
    r = c.run("--config", bad, "status", config=False, settings=False)
    exit_is(r, 2, "unknown key in config file")
    has(r.err, "bogus_key", "unknown key message names the key", r)
    has(r.err, "%s:3" % bad, "unknown key message names file:line", r)
    eq(r.out, "", "unknown key: stdout", r)

    # a missing explicit config file
    r = c.run("--config", os.path.join(c.dir, "nope.conf"), "status", config=False)
    exit_fails(r, "missing --config file")
    has(r.err, "nope.conf", "missing config message names the file", r)

    # a config file that works
    good = os.path.join(c.dir, "good.conf")
    with open(good, "w") as f:
        f.write("db_path = %s\nsecret_file = %s\n" % (c.db, c.secret))
    r = c.ok("--config", good, "status", config=False, settings=False)
    has_re(r.out, r"^database\s+%s$" % re.escape(c.db), "status via config file", r, re.M)

    # unknown flag
    r = c.run("--no-such-flag", "status")
    exit_is(r, 2, "unknown flag")
    has(r.err, "--no-such-flag", "unknown flag message", r)
    r = c.run("--db-path")
    exit_is(r, 2, "--db-path without a value")

    # env is honoured
    other = os.path.join(c.dir, "other.db")
    c.migrate(db=other)
    c.create_token("onlyother", db=other)
    r = c.ok("status", settings=False, env=clean_env(TOLLGATE_DB_PATH=other,
                                                     TOLLGATE_SECRET_FILE=c.secret))
    has_re(r.out, r"^database\s+%s$" % re.escape(other), "status reads TOLLGATE_DB_PATH", r, re.M)
    has_re(r.out, r"^admin_tokens\s+1$", "status counts from the env db", r, re.M)
    # flag wins over env
    r = c.ok("--db-path", c.db, "status", settings=False,
             env=clean_env(TOLLGATE_DB_PATH=other))
    has_re(r.out, r"^database\s+%s$" % re.escape(c.db), "--db-path wins over env", r, re.M)
    has_re(r.out, r"^admin_tokens\s+0$", "counts from the flag's db", r, re.M)
    # env wins over the file
    r = c.ok("--config", good, "status", config=False, settings=False,
             env=clean_env(TOLLGATE_DB_PATH=other))
    has_re(r.out, r"^database\s+%s$" % re.escape(other), "env wins over config file", r, re.M)
    # unknown TOLLGATE_ env variable
    r = c.run("status", env=clean_env(TOLLGATE_NO_SUCH_KEY="1"))
    exit_is(r, 2, "unknown TOLLGATE_ variable")
    has(r.err, "TOLLGATE_NO_SUCH_KEY", "unknown env variable message", r)
    # a bad value
    r = c.run("--store-busy-timeout", "forever", "status")
    exit_is(r, 2, "bad duration value")
    has(r.err, "store_busy_timeout", "bad value message names the key", r)

    # --check-config
    r = c.ok("--check-config", env=clean_env(TOLLGATE_LOG_LEVEL="debug"))
    has_re(r.out, r"^db_path = %s\b" % re.escape(c.db), "--check-config db_path line", r, re.M)
    has_re(r.out, r"^secret_file = %s\b" % re.escape(c.secret), "--check-config secret_file", r,
           re.M)
    has_re(r.out, r"^log_level = debug\s+#\s*env TOLLGATE_LOG_LEVEL", "--check-config env source",
           r, re.M)
    has_re(r.out, r"^db_path = .*#\s*flag --db-path", "--check-config flag source", r, re.M)

    # --help
    r = c.run("--help", settings=False)
    exit_is(r, 0, "--help")
    for word in ("migrate", "status", "admin-token create", "admin-token list",
                 "admin-token revoke", "backup", "db_path", "secret_file", "log_level",
                 "store_busy_timeout"):
        has(r.out, word, "--help output", r)
    # --help works even when the config is broken
    r = c.run("--config", bad, "--help", config=False, settings=False)
    exit_is(r, 0, "--help with a broken config file")

    # --version
    r = c.run("--version", settings=False)
    exit_is(r, 0, "--version")
    has_re(r.out, r"^tollgate 0\.1\.0\b", "--version output", r)


def test_command_line_errors(c):
    r = c.run("frobnicate")
    exit_is(r, 2, "unknown command")
    has(r.err, "frobnicate", "unknown command message", r)
    eq(r.out, "", "unknown command: stdout", r)
    check(not os.path.exists(c.db), "unknown command created the db", r)

    r = c.run()
    exit_is(r, 2, "no command")
    has(r.err, "usage:", "no command prints usage on stderr", r)
    eq(r.out, "", "no command: stdout", r)

    r = c.run("status", "extra")
    exit_is(r, 2, "status with an argument")
    r = c.run("migrate", "extra")
    exit_is(r, 2, "migrate with an argument")
    check(not os.path.exists(c.db), "migrate with a bad argument created the db", r)
    r = c.run("admin-token", "list", "extra")
    exit_is(r, 2, "admin-token list with an argument")


def test_not_a_database(c):
    with open(c.db, "wb") as f:
        f.write(b"hello")
    r = c.run("status")
    exit_fails(r, "status on a non-database file")
    has(r.err, "not a Tollgate database", "status on a non-database message", r)
    eq(read_bytes(c.db), b"hello", "non-database file content after status", r)

    r = c.run("migrate")
    exit_fails(r, "migrate on a non-database file")
    has(r.err, "not a Tollgate database", "migrate on a non-database message", r)
    eq(read_bytes(c.db), b"hello", "non-database file content after migrate", r)
    check(not os.path.exists(c.secret), "migrate on a non-database created a secret", r)

    # a larger file of junk (more than one page) is refused as well
    junk = bytes(range(256)) * 32
    with open(c.db, "wb") as f:
        f.write(junk)
    r = c.run("status")
    exit_fails(r, "status on a junk file")
    has(r.err, "not a Tollgate database", "status on a junk file message", r)
    eq(read_bytes(c.db) == junk, True, "junk file unchanged", r)


TESTS = [
    test_migrate_fresh,
    test_status_after_migrate,
    test_status_missing_db,
    test_admin_token_create_and_list,
    test_admin_token_create_usage_errors,
    test_plaintext_never_stored,
    test_admin_token_revoke,
    test_backup,
    test_secret_safety,
    test_migrate_with_env_secret,
    test_newer_schema_refused,
    test_config_errors,
    test_command_line_errors,
    test_not_a_database,
]


def main(argv):
    global BINARY
    if len(argv) != 2:
        print("usage: %s /path/to/tollgate" % argv[0], file=sys.stderr)
        return 2
    BINARY = os.path.abspath(argv[1])
    if not os.access(BINARY, os.X_OK):
        print("%s: not an executable" % BINARY, file=sys.stderr)
        return 2
    # A permissive umask, so that file modes the binary does not set
    # explicitly would show up as 0644 rather than pass by accident.
    os.umask(0o022)
    cwd = os.getcwd()
    passed = failed = 0
    for test in TESTS:
        name = test.__name__
        with tempfile.TemporaryDirectory(prefix="tg-cli-") as tmp:
            tmp = os.path.realpath(tmp)
            os.chdir(tmp)
            try:
                test(Ctx(tmp))
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
                os.chdir(cwd)
            sys.stdout.flush()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
