#!/usr/bin/env python3
"""Checks of the admin API's OpenAPI document (admin-api/openapi.json)
against the linter and against the real server.

Usage: python3 tests/integration/test_openapi.py \
           /path/to/build/admin-api/tollgate-server /path/to/build/cli/tollgate SOURCE_ROOT

  - the document passes `redocly lint` (tools/, installed by scripts/deps.sh);
  - its operations are exactly the server's routes (--print-routes), with
    the same scopes (x-scope; public routes have security: []);
  - the server serves it byte for byte at /openapi.json;
  - live responses validate against the document's schemas (a small
    JSON Schema subset validator below).

Each test runs in a fresh temporary directory with its own database,
secret file and empty config file, and an environment stripped of every
TOLLGATE_* variable. Standard library only.
"""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback

TIMEOUT = 30
LINT_TIMEOUT = 180

SERVER = CLI = SRC = None  # set in main()
DOC_PATH = None


def clean_env(**extra):
    """os.environ without TOLLGATE_*, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env.update(extra)
    return env


# ---- assertion helpers ----------------------------------------------------------

class Failure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def eq(actual, expected, what):
    check(actual == expected, "%s: expected %r, got %r" % (what, expected, actual))


def load_doc():
    with open(DOC_PATH, "rb") as f:
        raw = f.read()
    return raw, json.loads(raw.decode("utf-8"))


# ---- a JSON Schema subset --------------------------------------------------------

# Keywords that only annotate; anything else that is not implemented below
# fails the validation, so the document cannot silently outgrow the checker.
ANNOTATIONS = {"title", "description", "examples", "example", "default", "readOnly",
               "writeOnly", "format", "deprecated", "$comment"}
IMPLEMENTED = {"$ref", "type", "enum", "const", "required", "properties",
               "additionalProperties", "items", "minItems", "maxItems", "uniqueItems",
               "minimum", "maximum", "minLength", "maxLength", "pattern", "multipleOf",
               "allOf", "anyOf", "oneOf"}


def resolve(doc, node):
    """Follow local $refs ("#/components/...") until a non-$ref node."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        check(ref.startswith("#/"), "only local $refs are supported: %r" % ref)
        node = doc
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            check(isinstance(node, dict) and part in node, "unresolvable $ref %r" % ref)
            node = node[part]
        seen += 1
        check(seen < 32, "$ref loop at %r" % ref)
    return node


def json_type_ok(value, t):
    if t == "null":
        return value is None
    if t == "boolean":
        return isinstance(value, bool)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "string":
        return isinstance(value, str)
    if t == "array":
        return isinstance(value, list)
    if t == "object":
        return isinstance(value, dict)
    raise Failure("unknown JSON Schema type %r" % t)


def pattern_re(pattern):
    # ECMA-262 '$' (without the m flag) never matches before a final newline
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + "\\Z"
    return re.compile(pattern)


def validate(doc, schema, value, path="$"):
    """A list of the ways `value` fails `schema` (empty when it is valid)."""
    schema = resolve(doc, schema)
    if schema is True or schema == {}:
        return []
    if schema is False:
        return ["%s: no value is allowed here" % path]
    errors = []
    unknown = set(schema) - ANNOTATIONS - IMPLEMENTED
    if unknown:
        return ["%s: the test's validator does not implement %s" % (path, sorted(unknown))]
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(json_type_ok(value, t) for t in types):
            return ["%s: %r is not of type %s" % (path, value, " or ".join(types))]
    if "enum" in schema and value not in schema["enum"]:
        errors.append("%s: %r is not one of %r" % (path, value, schema["enum"]))
    if "const" in schema and value != schema["const"]:
        errors.append("%s: %r is not %r" % (path, value, schema["const"]))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append("%s: required member %r is missing" % (path, name))
        for name, v in value.items():
            sub = "%s.%s" % (path, name)
            if name in props:
                errors += validate(doc, props[name], v, sub)
            elif schema.get("additionalProperties") is False:
                errors.append("%s: member %r is not in the schema (additionalProperties: "
                              "false)" % (path, name))
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += validate(doc, schema["additionalProperties"], v, sub)
    if isinstance(value, list):
        if "items" in schema:
            for i, v in enumerate(value):
                errors += validate(doc, schema["items"], v, "%s[%d]" % (path, i))
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append("%s: fewer than %d items" % (path, schema["minItems"]))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append("%s: more than %d items" % (path, schema["maxItems"]))
        if schema.get("uniqueItems"):
            canon = [json.dumps(v, sort_keys=True) for v in value]
            if len(set(canon)) != len(canon):
                errors.append("%s: items are not unique" % path)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append("%s: %r < minimum %r" % (path, value, schema["minimum"]))
        if "maximum" in schema and value > schema["maximum"]:
            errors.append("%s: %r > maximum %r" % (path, value, schema["maximum"]))
        if "multipleOf" in schema and value % schema["multipleOf"] != 0:
            errors.append("%s: %r is not a multiple of %r" % (path, value, schema["multipleOf"]))
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append("%s: %r is shorter than %d" % (path, value, schema["minLength"]))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append("%s: %r is longer than %d" % (path, value[:40], schema["maxLength"]))
        if "pattern" in schema and not pattern_re(schema["pattern"]).search(value):
            errors.append("%s: %r does not match /%s/" % (path, value, schema["pattern"]))
    for sub in schema.get("allOf", []):
        errors += validate(doc, sub, value, path)
    if "anyOf" in schema:
        results = [validate(doc, s, value, path) for s in schema["anyOf"]]
        if all(results):
            errors.append("%s: matches none of anyOf: %s" % (path, results))
    if "oneOf" in schema:
        results = [validate(doc, s, value, path) for s in schema["oneOf"]]
        n = sum(1 for r in results if not r)
        if n != 1:
            errors.append("%s: matches %d of oneOf (1 wanted): %s" % (path, n, results))
    return errors


def test_validator_itself(c):
    """The validator rejects what it should (so a pass below means something)."""
    doc = {"components": {"schemas": {"S": {
        "type": "object", "required": ["a"], "additionalProperties": False,
        "properties": {"a": {"type": ["string", "null"], "pattern": "^x+$", "maxLength": 3},
                       "n": {"type": "integer", "minimum": 1, "maximum": 5},
                       "e": {"type": "string", "enum": ["p", "q"]}}}}}}
    s = {"$ref": "#/components/schemas/S"}
    eq(validate(doc, s, {"a": "xx"}), [], "valid object")
    eq(validate(doc, s, {"a": None}), [], "nullable member")
    bad = [{}, {"a": "y"}, {"a": "xxxx"}, {"a": "x\n"}, {"a": "x", "z": 1}, {"a": "x", "n": 0},
           {"a": "x", "n": 6}, {"a": "x", "n": True}, {"a": "x", "e": "r"}, {"a": 1}, []]
    for v in bad:
        check(validate(doc, s, v), "the validator accepted %r" % (v,))
    check(validate(doc, {"not": {}}, 1), "the validator ignored an unimplemented keyword")


# ---- the routes and the document -------------------------------------------------

def server_routes():
    """[(METHOD, pattern, scope)] from tollgate-server --print-routes."""
    proc = subprocess.run([SERVER, "--print-routes"], capture_output=True, text=True,
                          timeout=TIMEOUT, env=clean_env(), cwd=os.getcwd())
    check(proc.returncode == 0, "--print-routes exited %d: %s" % (proc.returncode, proc.stderr))
    routes = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        check(len(parts) == 3, "unexpected --print-routes line %r" % line)
        routes.append(tuple(parts))
    check(len(routes) > 10, "--print-routes printed only %d routes" % len(routes))
    return routes


def shape(path):
    """A path template with its {placeholders} made positional."""
    return re.sub(r"\{[^}/]+\}", "{}", path)


HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def doc_operations(doc):
    """{(METHOD, shape): (path, operation)} of the document."""
    ops = {}
    for path, item in doc["paths"].items():
        for method, o in item.items():
            if method in HTTP_METHODS:
                ops[(method.upper(), shape(path))] = (path, o)
    return ops


def test_redocly_lint(c):
    redocly = os.path.join(SRC, "tools", "node_modules", ".bin", "redocly")
    config = os.path.join(SRC, "tools", "redocly.yaml")
    check(os.path.exists(redocly),
          "%s is missing: run scripts/deps.sh (it installs the npm tooling in tools/ with "
          "`npm ci`)" % redocly)
    check(os.path.isfile(config), "%s is missing" % config)
    env = clean_env(REDOCLY_TELEMETRY="off", REDOCLY_SUPPRESS_UPDATE_NOTICE="true",
                    NO_COLOR="1", SCARF_ANALYTICS="false")
    proc = subprocess.run([redocly, "lint", "--config", config, DOC_PATH], capture_output=True,
                          text=True, timeout=LINT_TIMEOUT, env=env, cwd=c.dir)
    out = proc.stdout + proc.stderr
    check(proc.returncode == 0, "redocly lint exited %d:\n%s" % (proc.returncode, out))
    check("valid" in out, "redocly lint printed no verdict:\n%s" % out)


def test_routes_match_document(c):
    raw, doc = load_doc()
    eq(doc.get("openapi"), "3.1.0", "openapi version")
    routes = {(m, shape(p)): (p, s) for m, p, s in server_routes()}
    ops = doc_operations(doc)
    missing = sorted("%s %s" % (m, routes[(m, sh)][0]) for m, sh in routes if (m, sh) not in ops)
    extra = sorted("%s %s" % (m, ops[(m, sh)][0]) for m, sh in ops if (m, sh) not in routes)
    check(not missing and not extra,
          "routes and document differ:\n  routes the document lacks: %s\n  operations that "
          "are no route: %s" % (missing or "none", extra or "none"))
    problems = []
    ids = {}
    for (m, sh), (path, o) in sorted(ops.items()):
        where = "%s %s" % (m, path)
        if not o.get("operationId"):
            problems.append("%s: no operationId" % where)
        ids.setdefault(o.get("operationId"), []).append(where)
        declared = set(re.findall(r"\{([^}/]+)\}", path))
        params = [resolve(doc, p) for p in o.get("parameters", []) +
                  doc["paths"][path].get("parameters", [])]
        in_path = {p["name"] for p in params if p.get("in") == "path"}
        if declared != in_path:
            problems.append("%s: path parameters %s, template has %s" % (
                where, sorted(in_path), sorted(declared)))
        codes = [k for k in o.get("responses", {}) if k.startswith("2")]
        if not codes:
            problems.append("%s: no 2XX response" % where)
    for opid, where in ids.items():
        if len(where) > 1:
            problems.append("operationId %r used by %s" % (opid, where))
    check(not problems, "\n".join(problems))


def test_scopes_match_document(c):
    _, doc = load_doc()
    ops = doc_operations(doc)
    check(doc.get("security") == [{"bearerAuth": []}],
          "global security should be [{bearerAuth: []}], got %r" % doc.get("security"))
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    eq((scheme.get("type"), scheme.get("scheme")), ("http", "bearer"), "bearerAuth scheme")
    problems = []
    for method, pattern, scope in server_routes():
        if (method, shape(pattern)) not in ops:
            problems.append("%s %s is not in the document" % (method, pattern))
            continue
        path, o = ops[(method, shape(pattern))]
        where = "%s %s" % (method, path)
        if scope == "-":
            if o.get("security") != []:
                problems.append("%s is public but its security is %r" % (where,
                                                                         o.get("security")))
            if "x-scope" in o:
                problems.append("%s is public but has x-scope %r" % (where, o["x-scope"]))
        else:
            if o.get("x-scope") != scope:
                problems.append("%s: x-scope %r, the route needs %r" % (where, o.get("x-scope"),
                                                                        scope))
            if "security" in o and o["security"] != [{"bearerAuth": []}]:
                problems.append("%s: needs a token but its security is %r" % (where,
                                                                               o["security"]))
            if "`%s` scope" % scope not in o.get("description", ""):
                problems.append("%s: the description does not name the `%s` scope" % (where,
                                                                                       scope))
    check(not problems, "\n".join(problems))


# ---- the document against core/model.c -------------------------------------------

# model.c field table -> the document's row schema
ENTITY_SCHEMAS = {"api": "Api", "target": "Target", "plan": "Plan", "developer": "Developer",
                  "app": "App", "subscription": "Subscription", "key": "Key",
                  "admin_token": "AdminToken", "audit": "AuditEntry", "mail": "MailMessage"}
# collections whose list operation filters on the entity's TG_F_FILTER fields
# (less the fields the path fixes)
LIST_PATHS = {"api": "/apis", "target": "/apis/{id}/targets", "plan": "/plans",
              "developer": "/developers", "app": "/apps", "subscription": "/subscriptions",
              "key": "/keys", "admin_token": "/admin-tokens", "audit": "/audit", "mail": "/mail"}
PATH_FIXED = {"target": {"api_id"}}
# entities created by the generic handler: every writable field, TG_F_REQUIRED required
GENERIC_CREATE = {"api": "ApiCreate", "plan": "PlanCreate", "developer": "DeveloperCreate",
                  "app": "AppCreate", "subscription": "SubscriptionCreate",
                  "target": "TargetCreate"}
# handlers that accept an explicit list of members (routes.c `allowed[]`)
ALLOWED_LISTS = {"h_key_create": "KeyCreate", "h_token_create": "AdminTokenCreate",
                 "h_key_rotate": "KeyRotate"}
FIELD_RE = re.compile(r'\{\s*"(\w+)",\s*TG_FT_(\w+),\s*([^,]+),\s*(-?\w+),\s*(-?\w+),\s*'
                      r'([^,]+),\s*([^}]+?)\s*\}')


def model_fields():
    """{entity: [field dict]} parsed from core/model.c."""
    path = os.path.join(SRC, "core", "model.c")
    with open(path, encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    macros = {}
    for name in ("SERVER_FIELDS_HEAD", "SERVER_FIELDS_TAIL"):
        m = re.search(r"#define %s\s+(.*?)\n" % name, text)
        check(m, "cannot find %s in %s" % (name, path))
        macros[name] = m.group(1)
    tables = {}
    for m in re.finditer(r"static const tg_field_t (\w+)_fields\[\] = \{(.*?)\n\};", text, re.S):
        body = m.group(2)
        for name, value in macros.items():
            body = body.replace(name, value)
        fields = []
        for fm in FIELD_RE.finditer(body):
            name, ftype, flags, lo, hi, choices, _ = fm.groups()
            flags = {fl.strip()[len("TG_F_"):] for fl in flags.split("|") if fl.strip() != "0"}

            def num(v):
                v = v.rstrip("LlUu")
                return None if v == "INT64_MAX" else int(v)
            choices = choices.strip()
            fields.append({"name": name, "type": ftype, "flags": flags, "min": num(lo),
                           "max": num(hi), "choices": None if choices == "NULL" else
                           choices.strip('"')})
        tables[m.group(1)] = fields
    check(set(ENTITY_SCHEMAS) <= set(tables),
          "cannot parse the field tables of %s (found %s)" % (path, sorted(tables)))
    return tables


def schema_types(s):
    t = s.get("type")
    return set(t) if isinstance(t, list) else {t}


def compare_field(doc, where, f, s, problems):
    """One model field against its schema in the document."""
    types = schema_types(s)
    if ("NULLABLE" in f["flags"]) != ("null" in types):
        problems.append("%s: nullable in model.c is %s, the document's type is %s" % (
            where, "NULLABLE" in f["flags"], sorted(types)))
    t = f["type"]
    want = {"ID": "string", "REF": "string", "TEXT": "string", "SLUG": "string",
            "INT": "integer", "TIME": "integer", "BOOL": "boolean", "ENUM": "string"}.get(t)
    if want and want not in types:
        problems.append("%s: a TG_FT_%s should be a %s, the document says %s" % (
            where, t, want, sorted(types)))
    if t in ("INT", "TIME"):
        if s.get("minimum") != f["min"]:
            problems.append("%s: minimum %r, model.c %r" % (where, s.get("minimum"), f["min"]))
        if f["max"] is not None and s.get("maximum") != f["max"]:
            problems.append("%s: maximum %r, model.c %r" % (where, s.get("maximum"), f["max"]))
    if t in ("TEXT", "SLUG"):
        if s.get("maxLength") != f["max"]:
            problems.append("%s: maxLength %r, model.c %r" % (where, s.get("maxLength"),
                                                             f["max"]))
        if s.get("minLength", 0) != f["min"]:
            problems.append("%s: minLength %r, model.c %r" % (where, s.get("minLength"),
                                                             f["min"]))
    if t == "ENUM" and f["choices"] and s.get("enum") != f["choices"].split("|"):
        problems.append("%s: enum %r, model.c %r" % (where, s.get("enum"), f["choices"]))
    if t in ("ID", "REF") and not s.get("pattern", "").startswith("^"):
        problems.append("%s: an id without a pattern" % where)


def test_document_matches_model(c):
    """Row, create and update schemas and list filters follow core/model.c."""
    _, doc = load_doc()
    schemas = doc["components"]["schemas"]
    tables = model_fields()
    problems = []
    for ent, name in ENTITY_SCHEMAS.items():
        fields = tables[ent]
        row = schemas.get(name)
        if row is None:
            problems.append("no schema %s" % name)
            continue
        shown = [f for f in fields if "SECRET" not in f["flags"]]
        if list(row["properties"]) != [f["name"] for f in shown]:
            problems.append("%s: members %s, model.c has %s (in this order)" % (
                name, list(row["properties"]), [f["name"] for f in shown]))
        if sorted(row.get("required", [])) != sorted(f["name"] for f in shown):
            problems.append("%s: every member of a row is always present: required %s" % (
                name, row.get("required")))
        if row.get("additionalProperties") is not False:
            problems.append("%s: rows have exactly these members (additionalProperties: false)"
                            % name)
        for f in shown:
            s = row["properties"].get(f["name"])
            if s is None:
                continue
            where = "%s.%s" % (name, f["name"])
            compare_field(doc, where, f, s, problems)
            ro = bool(f["flags"] & {"SERVER", "INTERNAL"})
            if bool(s.get("readOnly")) != ro:
                problems.append("%s: readOnly should be %s" % (where, ro))
        # list filters
        o = doc["paths"].get(LIST_PATHS[ent], {}).get("get")
        if o:
            got = sorted(resolve(doc, p)["name"] for p in o.get("parameters", [])
                         if resolve(doc, p)["in"] == "query" and
                         resolve(doc, p)["name"] not in ("limit", "cursor"))
            want = sorted(f["name"] for f in fields if "FILTER" in f["flags"] and
                          f["name"] not in PATH_FIXED.get(ent, set()))
            if got != want:
                problems.append("GET %s: filters %s, model.c's TG_F_FILTER fields %s" % (
                    LIST_PATHS[ent], got, want))
        # create schema (generic handler)
        if ent in GENERIC_CREATE:
            cs = schemas[GENERIC_CREATE[ent]]
            writable = [f for f in fields if not f["flags"] & {"SERVER", "SECRET", "INTERNAL"} and
                        f["name"] not in PATH_FIXED.get(ent, set())]
            if list(cs["properties"]) != [f["name"] for f in writable]:
                problems.append("%s: members %s, writable fields %s" % (
                    GENERIC_CREATE[ent], list(cs["properties"]), [f["name"] for f in writable]))
            want_req = [f["name"] for f in writable if "REQUIRED" in f["flags"]]
            if cs.get("required", []) != want_req:
                problems.append("%s: required %s, model.c %s" % (GENERIC_CREATE[ent],
                                                                cs.get("required"), want_req))
            for f in writable:
                if f["name"] in cs["properties"]:
                    compare_field(doc, "%s.%s" % (GENERIC_CREATE[ent], f["name"]), f,
                                  cs["properties"][f["name"]], problems)
        # update (merge patch) schema
        us = schemas.get(name + "Update")
        if us is not None:
            # status of these goes through action routes (routes.c status_actions)
            via_actions = name in ("Developer", "App", "Subscription", "Key")
            mutable = [f for f in fields
                       if not f["flags"] & {"SERVER", "SECRET", "INTERNAL", "IMMUTABLE"}
                       and not (via_actions and f["name"] == "status")]
            if list(us["properties"]) != [f["name"] for f in mutable]:
                problems.append("%sUpdate: members %s, mutable fields %s" % (
                    name, list(us["properties"]), [f["name"] for f in mutable]))
            if us.get("required"):
                problems.append("%sUpdate: a merge patch requires nothing" % name)
            for f in mutable:
                if f["name"] in us["properties"]:
                    compare_field(doc, "%sUpdate.%s" % (name, f["name"]), f,
                                  us["properties"][f["name"]], problems)
    # bodies whose members routes.c lists itself
    with open(os.path.join(SRC, "admin-api", "routes.c"), encoding="utf-8") as f:
        routes_c = f.read()
    for handler, schema in ALLOWED_LISTS.items():
        m = re.search(r"static void %s\(.*?allowed\[\] = \{([^}]*)\}" % handler, routes_c, re.S)
        if not m:
            problems.append("cannot find the allowed[] members of %s in routes.c" % handler)
            continue
        allowed = re.findall(r'"(\w+)"', m.group(1))
        if sorted(schemas[schema]["properties"]) != sorted(allowed):
            problems.append("%s: members %s, %s accepts %s" % (
                schema, sorted(schemas[schema]["properties"]), handler, sorted(allowed)))
    check(not problems, "\n".join(problems))


# ---- the live server ---------------------------------------------------------------

class Response:
    def __init__(self, method, path, status, headers, body):
        self.method, self.path, self.status, self.headers, self.body = (method, path, status,
                                                                         headers, body)

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError as e:
            raise Failure("%s %s: the body is not JSON (%s): %r" % (self.method, self.path, e,
                                                                    self.body[:200]))

    def __repr__(self):
        return "%s %s -> %d %r %r" % (self.method, self.path, self.status, self.headers,
                                      self.body[:300])


class Server:
    """A migrated database, an admin token and a running tollgate-server."""

    def __init__(self, tmp):
        self.dir = tmp
        self.config = os.path.join(tmp, "empty.conf")
        with open(self.config, "w"):
            pass
        self.settings = ["--config", self.config, "--db-path", os.path.join(tmp, "tollgate.db"),
                         "--secret-file", os.path.join(tmp, "tollgate.secret")]
        self.proc = None
        self.log = os.path.join(tmp, "server.log")
        self.cli("migrate")
        self.token = self.cli("admin-token", "create", "--name", "oas", "--scopes",
                              "admin").strip()
        check(self.token.startswith("tg_adm_"), "unexpected admin token %r" % self.token)
        self.start()

    def cli(self, *args):
        proc = subprocess.run([CLI] + self.settings + list(args), cwd=self.dir, env=clean_env(),
                              capture_output=True, text=True, timeout=TIMEOUT)
        check(proc.returncode == 0, "tollgate %s exited %d: %s" % (" ".join(args),
                                                                  proc.returncode, proc.stderr))
        return proc.stdout

    def start(self):
        logf = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [SERVER] + self.settings + ["--admin-listen", "127.0.0.1:0", "--portal-listen",
                                         "127.0.0.1:0", "--log-format", "text"],
            cwd=self.dir, env=clean_env(), stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        logf.close()
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            with open(self.log, "rb") as f:
                m = re.search(rb"\bport=(\d+)", f.read())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        with open(self.log, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        self.stop()
        raise Failure("tollgate-server did not report its port:\n%s" % text)

    def stop(self):
        """Stop the server (SIGTERM: a graceful stop); its exit status."""
        rc = None
        if self.proc:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=TIMEOUT)
            rc = self.proc.returncode
        self.proc = None
        return rc

    def stop_checked(self):
        """Stop; fail unless the server stopped cleanly (exit 0, no
        sanitizer report in its log)."""
        rc = self.stop()
        with open(self.log, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        check(rc == 0 and "Sanitizer" not in text and "runtime error:" not in text,
              "tollgate-server did not stop cleanly (exit %r):\n%s" % (rc, text[-4000:]))

    def request(self, method, path, body=None, token=True, headers=None):
        h = dict(headers or {})
        if token:
            h["Authorization"] = "Bearer " + self.token
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
            h.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            resp = Response(method, path, r.status, r.getheaders(), r.read())
        finally:
            conn.close()
        check(resp.header("X-Request-Id"), "no X-Request-Id in %r" % resp)
        return resp


class Ctx:
    def __init__(self, tmp):
        self.dir = tmp
        self.server = None

    def start_server(self):
        self.server = Server(self.dir)
        return self.server

    def finish(self):
        """After a passing test: the server must stop cleanly."""
        if self.server:
            server, self.server = self.server, None
            server.stop_checked()

    def close(self):
        if self.server:
            self.server.stop()


def operation(doc, method, path):
    item = doc["paths"].get(path)
    check(item is not None and method.lower() in item, "the document has no %s %s" % (method,
                                                                                       path))
    return item[method.lower()]


def conforms(doc, resp, template, what):
    """resp is documented for `template` (a document path): its status is
    listed, its media type is the documented one, the body validates and
    the documented headers that the server sends match their schemas."""
    o = operation(doc, resp.method, template)
    responses = o["responses"]
    key = str(resp.status)
    if key not in responses:
        key = key[0] + "XX" if key[0] + "XX" in responses else "default"
    check(key in responses, "%s: status %d is not documented for %s %s (%s)\n  %r" % (
        what, resp.status, resp.method, template, sorted(responses), resp))
    r = resolve(doc, responses[key])
    ctype = (resp.header("Content-Type") or "").split(";")[0].strip()
    content = r.get("content", {})
    if not content:
        eq(resp.body, b"", "%s: body of a response documented without content" % what)
        return None
    check(ctype in content, "%s: Content-Type %r is not documented (%s)" % (
        what, ctype, sorted(content)))
    body = resp.json()
    errors = validate(doc, content[ctype]["schema"], body)
    check(not errors, "%s: the body does not match the document:\n  %s\n  %r" % (
        what, "\n  ".join(errors[:20]), resp))
    for name, h in r.get("headers", {}).items():
        value = resp.header(name)
        h = resolve(doc, h)
        if value is not None and "schema" in h:
            schema = resolve(doc, h["schema"])
            v = int(value) if schema.get("type") == "integer" and value.isdigit() else value
            errs = validate(doc, schema, v)
            check(not errs, "%s: header %s: %s" % (what, name, errs))
    return body


def test_serves_document(c):
    raw, doc = load_doc()
    s = c.start_server()
    r = s.request("GET", "/openapi.json", token=False)
    eq(r.status, 200, "GET /openapi.json status")
    eq(r.header("Content-Type"), "application/openapi+json", "GET /openapi.json Content-Type")
    check(r.body == raw, "GET /openapi.json is not the bytes of %s (%d bytes served, %d in the "
                         "file): rebuild the server?" % (DOC_PATH, len(r.body), len(raw)))
    conforms(doc, r, "/openapi.json", "GET /openapi.json")
    conforms(doc, s.request("GET", "/health", token=False), "/health", "GET /health")
    catalog = conforms(doc, s.request("GET", "/.well-known/api-catalog", token=False),
                       "/.well-known/api-catalog", "GET /.well-known/api-catalog")
    eq(catalog["linkset"][0]["service-desc"][0]["href"], "/openapi.json", "api-catalog href")


def test_live_apis_conform(c):
    _, doc = load_doc()
    s = c.start_server()
    create = doc["components"]["schemas"]["ApiCreate"]
    check(create.get("examples"), "ApiCreate has no examples to create an API from")
    example = create["examples"][0]
    eq(validate(doc, create, example), [], "ApiCreate's example against ApiCreate")

    r = s.request("POST", "/apis", example)
    eq(r.status, 201, "POST /apis with ApiCreate's example (%r)" % r)
    api = conforms(doc, r, "/apis", "POST /apis")
    for k, v in example.items():
        eq(api[k], v, "created API member %s" % k)
    eq(r.header("Location"), "/apis/" + api["id"], "Location of the created API")
    eq(r.header("ETag"), '"v%d"' % api["version"], "ETag of the created API")

    r = s.request("GET", "/apis?limit=1")
    eq(r.status, 200, "GET /apis (%r)" % r)
    page = conforms(doc, r, "/apis", "GET /apis")
    eq([a["id"] for a in page["data"]], [api["id"]], "GET /apis data")
    eq(page["next"], None, "GET /apis next")

    r = s.request("GET", "/apis/" + example["slug"])
    eq(r.status, 200, "GET /apis/{slug} (%r)" % r)
    eq(conforms(doc, r, "/apis/{id}", "GET /apis/{id}"), api, "API read back by slug")

    r = s.request("POST", "/apis", {"slug": "Bad"})
    eq(r.status, 422, "POST /apis {slug: Bad} (%r)" % r)
    problem = conforms(doc, r, "/apis", "POST /apis 422")
    eq(sorted(e["pointer"] for e in problem["errors"]), ["/name", "/slug"],
       "422 problem pointers")
    eq(problem["type"], "https://tollgate.dev/problems/validation-failed", "422 problem type")

    r = s.request("GET", "/apis/no-such-api")
    eq(r.status, 404, "GET /apis/no-such-api (%r)" % r)
    problem = conforms(doc, r, "/apis/{id}", "GET /apis/{id} 404")
    eq(problem["type"], "https://tollgate.dev/problems/not-found", "404 problem type")

    r = s.request("GET", "/apis", token=False)
    eq(r.status, 401, "GET /apis without a token (%r)" % r)
    conforms(doc, r, "/apis", "GET /apis 401")

    r = s.request("PATCH", "/apis/" + api["id"], {"retries": 3},
                  headers={"Content-Type": "application/merge-patch+json", "If-Match": '"v99"'})
    eq(r.status, 412, "PATCH with a stale If-Match (%r)" % r)
    conforms(doc, r, "/apis/{id}", "PATCH /apis/{id} 412")
    r = s.request("PATCH", "/apis/" + api["id"], {"retries": 3},
                  headers={"Content-Type": "application/merge-patch+json",
                           "If-Match": r'"v%d"' % api["version"]})
    eq(r.status, 200, "PATCH with the current If-Match (%r)" % r)
    eq(conforms(doc, r, "/apis/{id}", "PATCH /apis/{id}")["retries"], 3, "patched retries")


def test_live_keys_tokens_config_conform(c):
    """The schemas with secrets shown once, the lifecycle actions and /config."""
    _, doc = load_doc()
    s = c.start_server()

    def ok(method, path, template, status, body=None, **kw):
        r = s.request(method, path, body, **kw)
        eq(r.status, status, "%s %s (%r)" % (method, path, r))
        return conforms(doc, r, template, "%s %s" % (method, template))

    api = ok("POST", "/apis", "/apis", 201, {"slug": "pets", "name": "Pets"})
    plan = ok("POST", "/plans", "/plans", 201,
              {"api_id": api["id"], "slug": "gold", "name": "Gold", "requires_approval": True,
               "rate_per_second": 5})
    ok("POST", "/apis/pets/targets", "/apis/{id}/targets", 201, {"url": "http://127.0.0.1:9"})
    ok("GET", "/apis/pets/targets", "/apis/{id}/targets", 200)
    dev = ok("POST", "/developers", "/developers", 201, {"email": "ada@example.com"})
    app = ok("POST", "/apps", "/apps", 201, {"developer_id": dev["id"], "name": "Mobile"})
    sub = ok("POST", "/subscriptions", "/subscriptions", 201,
             {"app_id": app["id"], "api_id": api["id"], "plan_id": plan["id"]})
    eq(sub["status"], "pending", "a subscription to a plan that requires approval")
    ok("POST", "/subscriptions/%s/approve" % sub["id"], "/subscriptions/{id}/approve", 200)
    r = s.request("POST", "/subscriptions/%s/resume" % sub["id"])
    eq(r.status, 409, "resume an active subscription (%r)" % r)
    conforms(doc, r, "/subscriptions/{id}/resume", "POST /subscriptions/{id}/resume 409")

    key = ok("POST", "/keys", "/keys", 201, {"app_id": app["id"], "name": "prod"})
    check("key" in key, "key creation shows no key")
    rotated = ok("POST", "/keys/%s/rotate" % key["id"], "/keys/{id}/rotate", 201,
                 {"grace_seconds": 60})
    eq(rotated["previous"]["id"], key["id"], "rotation's previous")
    eq(rotated["rotated_from"], key["id"], "rotation's rotated_from")
    ok("GET", "/keys?app_id=" + app["id"], "/keys", 200)
    ok("POST", "/keys/%s/revoke" % key["id"], "/keys/{id}/revoke", 200)

    tok = ok("POST", "/admin-tokens", "/admin-tokens", 201,
             {"name": "reader", "scopes": ["read"]})
    check(tok["token"].startswith("tg_adm_"), "admin token creation shows no token")
    ok("GET", "/admin-tokens/reader", "/admin-tokens/{id}", 200)
    r = s.request("POST", "/apis", {"slug": "x", "name": "X"},
                  headers={"Authorization": "Bearer " + tok["token"]}, token=False)
    eq(r.status, 403, "a read-only token writing (%r)" % r)
    conforms(doc, r, "/apis", "POST /apis 403")
    ok("GET", "/audit?limit=5", "/audit", 200)
    ok("GET", "/developers/ada@example.com", "/developers/{id}", 200)

    config = ok("GET", "/config", "/config", 200)
    diff = ok("POST", "/config?dry_run=true", "/config", 200, config)
    eq(diff["dry_run"], True, "dry run diff")
    eq((diff["created"], diff["updated"], diff["deleted"]), ([], [], []),
       "re-importing an export changes nothing")

    ok("GET", "/usage?from=2026-01-01&to=2026-01-03&group_by=app,api", "/usage", 200)
    ok("GET", "/billing?period=2026-01", "/billing", 200)
    r = s.request("GET", "/usage?from=2026-01-01")
    eq(r.status, 400, "GET /usage without to (%r)" % r)
    conforms(doc, r, "/usage", "GET /usage 400")


TESTS = [
    test_validator_itself,
    test_redocly_lint,
    test_routes_match_document,
    test_scopes_match_document,
    test_document_matches_model,
    test_serves_document,
    test_live_apis_conform,
    test_live_keys_tokens_config_conform,
]


def main(argv):
    global SERVER, CLI, SRC, DOC_PATH
    if len(argv) != 4:
        print("usage: %s /path/to/tollgate-server /path/to/tollgate SOURCE_ROOT" % argv[0],
              file=sys.stderr)
        return 2
    SERVER, CLI, SRC = (os.path.abspath(a) for a in argv[1:4])
    DOC_PATH = os.path.join(SRC, "admin-api", "openapi.json")
    for binary in (SERVER, CLI):
        if not os.access(binary, os.X_OK):
            print("%s: not an executable" % binary, file=sys.stderr)
            return 2
    if not os.path.isfile(DOC_PATH):
        print("%s: no such file" % DOC_PATH, file=sys.stderr)
        return 2
    cwd = os.getcwd()
    passed = failed = 0
    for test in TESTS:
        name = test.__name__
        with tempfile.TemporaryDirectory(prefix="tg-oas-") as tmp:
            tmp = os.path.realpath(tmp)
            os.chdir(tmp)
            c = Ctx(tmp)
            try:
                test(c)
                c.finish()
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
                c.close()
                os.chdir(cwd)
            sys.stdout.flush()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
