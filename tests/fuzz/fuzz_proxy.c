/*
 * fuzz_proxy.c - the whole request path up to the bytes sent upstream:
 * parse, normalise, route, pick a target and rewrite the head
 * (build_upstream_head in gateway/worker.c, reached by including the .c,
 * h2o style). Invariant: whatever head the gateway accepts, the head it
 * sends upstream is itself a valid strict HTTP/1.1 request of the same
 * length, with exactly one Host (the target's), one X-Request-Id, one
 * well-formed traceparent, the same body framing, and no hop-by-hop
 * header (Connection, Keep-Alive, TE, Upgrade, Proxy-Connection, Trailer,
 * or any name the client listed in Connection).
 *
 * Keys: /v1 needs an API key (header, Bearer or the api_key query
 * parameter; the seeds carry FUZZ_KEY). A request that passes admit()
 * reaches the upstream without the key anywhere in its head and with
 * the identity headers exactly once, the client's forged copies gone;
 * one that does not pass is answered 401/403/429, never forwarded.
 */
#include "../../gateway/worker.c"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

#include "core/store.h"

static gw_server_t fsrv;
static tg_store_t *fstore;
static char fkey[TG_TOKEN_MAX_LEN + 1];
static char fapp_id[32], fdev_id[32];
static gw_worker_t fw;
static gw_route_t froutes[2];
static gw_target_t ftargets[2];
static gw_snapshot_t fsnap = {.gen = 1, .routes = froutes, .nroutes = 2};

static const char *created(tg_entity_t ent, json_t *fields, bool secret) {
  json_t *row = NULL;
  tg_problem_t p = {0};
  if (tg_store_create(fstore, ent, fields, secret, &row, &p) != TG_OK) {
    fprintf(stderr, "fuzz_proxy setup: %s %s\n", p.field, p.detail);
    abort();
  }
  json_decref(fields);
  static char ids[8][32];
  static int n;
  snprintf(ids[n], sizeof(ids[n]), "%s", json_string_value(json_object_get(row, "id")));
  json_decref(row);
  return ids[n++];
}

/* One API key for an app subscribed to the /v1 API, loaded from a scratch store. */
static void setup_policy(void) {
  tg_keys_init();
  memset(&fsrv.secret, 0x11, sizeof(fsrv.secret));
  /* a scratch store, gone once the policy is loaded from it */
  static char path[64];
  snprintf(path, sizeof(path), "/tmp/tg-fuzz-proxy-%ld.db", (long)getpid());
  tg_store_options_t o = {.path = path, .busy_timeout_ms = 100, .mode = TG_STORE_OPEN_MIGRATE};
  tg_problem_t p = {0};
  if (tg_store_open(&o, &fstore, NULL, NULL, &p) != TG_OK) {
    fprintf(stderr, "fuzz_proxy setup: %s\n", p.detail);
    abort();
  }
  const char *api =
      created(TG_ENT_API,
              json_pack("{s:s,s:s,s:s}", "slug", "v1", "name", "v1", "path_prefix", "/v1"), false);
  const char *plan = created(TG_ENT_PLAN,
                             json_pack("{s:s,s:s,s:s,s:i}", "api_id", api, "slug", "gold", "name",
                                       "Gold", "rate_per_second", 1000000000),
                             false);
  const char *dev =
      created(TG_ENT_DEVELOPER,
              json_pack("{s:s,s:s}", "email", "f@example.com", "status", "active"), false);
  const char *app =
      created(TG_ENT_APP, json_pack("{s:s,s:s}", "developer_id", dev, "name", "a"), false);
  created(TG_ENT_SUBSCRIPTION,
          json_pack("{s:s,s:s,s:s}", "app_id", app, "api_id", api, "plan_id", plan), false);
  char prefix[TG_TOKEN_PREFIX_MAX + 1], hex[TG_DIGEST_HEX_LEN + 1];
  unsigned char digest[TG_DIGEST_BYTES];
  tg_token_compose(TG_TOKEN_API_KEY, "FuzzKeyFuzzKeyFuzzKeyFuzzKeyFuzzKeyFuzzKey0", &fsrv.secret,
                   fkey, prefix, digest);
  sodium_bin2hex(hex, sizeof(hex), digest, sizeof(digest));
  created(TG_ENT_KEY, json_pack("{s:s,s:s,s:s}", "app_id", app, "prefix", prefix, "digest", hex),
          true);
  snprintf(fapp_id, sizeof(fapp_id), "%s", app);
  snprintf(fdev_id, sizeof(fdev_id), "%s", dev);
  char err[256];
  if (!(fsrv.policy = gw_policy_new(NULL, NULL)) ||
      gw_policy_load(fsrv.policy, fstore, 1795694400, err, sizeof(err)) != 0) {
    fprintf(stderr, "fuzz_proxy setup: %s\n", err);
    abort();
  }
  tg_store_close(fstore);
  fstore = NULL;
  char extra[80];
  unlink(path);
  snprintf(extra, sizeof(extra), "%s-wal", path);
  unlink(extra);
  snprintf(extra, sizeof(extra), "%s-shm", path);
  unlink(extra);
  froutes[0].auth_key = true;
  froutes[0].api_no = gw_policy_api_no(fsrv.policy, api);
  snprintf(froutes[0].key_query_param, sizeof(froutes[0].key_query_param), "api_key");
  snprintf(fsrv.key_header, sizeof(fsrv.key_header), "x-api-key");
  fsrv.strip_key = true;
  gw_ident_headers_t id = {"x-tollgate-app-id", "x-tollgate-developer-id", "x-tollgate-plan",
                           "x-tollgate-key-prefix"};
  fsrv.ident = fsrv.ident_names = id;
}

static void setup(void) {
  fsrv.limits = (gw_limits_t){.max_line = 4096, .max_head = 8192, .max_headers = 64};
  fsrv.trust_forwarded = false;
  fw.srv = &fsrv;
  fw.rng = 0x9e3779b97f4a7c15ULL;
  fw.ring.fd = -1; /* no io_uring: nothing is sent */
  snprintf(ftargets[0].id, sizeof(ftargets[0].id), "tgt_00000000000000000000000001");
  snprintf(ftargets[0].host_header, sizeof(ftargets[0].host_header), "127.0.0.1:9000");
  snprintf(ftargets[0].base_path, sizeof(ftargets[0].base_path), "/base");
  ftargets[0].weight = 1;
  ftargets[0].resolved = true;
  ftargets[1] = ftargets[0];
  snprintf(ftargets[1].host_header, sizeof(ftargets[1].host_header), "[::1]:8443");
  ftargets[1].base_path[0] = '\0';
  froutes[0] = (gw_route_t){.prefix = "/v1",
                            .prefix_len = 3,
                            .strip_prefix = true,
                            .targets = &ftargets[0],
                            .ntargets = 1,
                            .total_weight = 1,
                            .max_body = 1 << 20};
  froutes[1] = (gw_route_t){.prefix = "/",
                            .prefix_len = 1,
                            .targets = &ftargets[1],
                            .ntargets = 1,
                            .total_weight = 1,
                            .max_body = 1 << 20};
  setup_policy();
}

static unsigned count(const gw_request_head_t *h, const char *lower) {
  unsigned n = 0;
  for (unsigned i = 0; i < h->nheaders; i++)
    n += gw_header_is(&h->headers[i], lower);
  return n;
}

/* Whether h's name is listed in one of req's Connection headers: the
 * oracle, written apart from the gateway's (which trusts the parser's
 * GW_CONN_NAMES flag and header ids; this looks at the names only). */
static bool listed_in_connection(const gw_request_head_t *req, const gw_header_t *h) {
  for (unsigned i = 0; i < req->nheaders; i++) {
    const gw_header_t *ch = &req->headers[i];
    if (!gw_header_is(ch, "connection"))
      continue;
    const char *v = ch->value;
    for (uint32_t p = 0; p < ch->value_len;) {
      while (p < ch->value_len && (v[p] == ' ' || v[p] == '\t' || v[p] == ','))
        p++;
      uint32_t st = p;
      while (p < ch->value_len && v[p] != ' ' && v[p] != '\t' && v[p] != ',')
        p++;
      if (p > st && p - st == h->name_len && strncasecmp(v + st, h->name, p - st) == 0)
        return true;
    }
  }
  return false;
}

/* The hot path's number formatting against printf. */
static void check_numbers(uint64_t v) {
  char got[24], want[24];
  size_t n = fmt_dec(got, v);
  if ((int)n != snprintf(want, sizeof(want), "%llu", (unsigned long long)v) || memcmp(got, want, n))
    abort();
  hex64(v, got);
  snprintf(want, sizeof(want), "%016llx", (unsigned long long)v);
  if (memcmp(got, want, 16))
    abort();
}

/* The access log's JSON escaping (eight bytes at a time) against the
 * plain byte-by-byte definition. */
static void check_escape(const unsigned char *s, size_t n) {
  static char want[8 * 4096];
  size_t m = 0;
  if (n > 4096)
    n = 4096;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '"' || s[i] == '\\') {
      want[m++] = '\\';
      want[m++] = (char)s[i];
    } else if (s[i] < 0x20 || s[i] >= 0x7f) {
      m += (size_t)snprintf(want + m, 8, "\\u%04x", s[i]);
    } else {
      want[m++] = (char)s[i];
    }
  }
  fw.loglen = 0;
  log_str(&fw, (const char *)s, n);
  if (fw.loglen != m || memcmp(fw.logbuf, want, m))
    abort();
  fw.loglen = 0;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  static int ready;
  if (!ready) {
    setup();
    for (uint64_t p = 1; p <= UINT64_C(1000000000000000000); p *= 10)
      for (uint64_t d = 0; d < 3; d++)
        check_numbers(p - 1 + d);
    check_numbers(UINT64_MAX);
    check_numbers(UINT64_MAX - 1);
    ready = 1;
  }
  check_escape(data, size);
  if (size >= 8) {
    uint64_t v;
    memcpy(&v, data + size - 8, 8);
    check_numbers(v);
    check_numbers(v >> (data[0] & 63));
  }
  gw_conn_t *c = calloc(1, sizeof(*c));
  gw_request_head_t *out = malloc(sizeof(*out));
  char *in = malloc(size ? size : 1), *npath = NULL;
  gw_parse_error_t err;
  if (!c || !out || !in)
    goto done;
  memcpy(in, data, size);
  c->w = &fw;
  c->heap_index = -1;
  snprintf(c->client_ip, sizeof(c->client_ip), "192.0.2.7");
  snprintf(c->request_id, sizeof(c->request_id), "0123456789abcdef0123456789abcdef");
  if (gw_http1_parse_request(in, size, &fsrv.limits, &c->req, &err) != 1)
    goto done;
  npath = malloc((size_t)c->req.path_len + 1);
  if (!npath)
    goto done;
  long nl = gw_path_normalise(c->req.target, c->req.path_len, npath);
  if (nl < 0)
    goto done;
  bool mismatch = false;
  const gw_header_t *host = c->req.host >= 0 ? &c->req.headers[c->req.host] : NULL;
  c->route = gw_route_match(&fsnap, host ? host->value : NULL, host ? host->value_len : 0, npath,
                            (size_t)nl, c->req.method, &mismatch);
  if (!c->route)
    goto done;
  if (!admit(c)) {
    /* refused: answered by the gateway (never forwarded) */
    if (c->state != S_FLUSH || (c->status != 401 && c->status != 403 && c->status != 429) ||
        c->admitted || !c->route->auth_key)
      abort();
    goto done;
  }
  if (c->route->auth_key && (!c->key || strcmp(c->key->prefix, "tg_live_FuzzKeyF") != 0))
    abort(); /* admitted without our key */
  c->target = pick_target(&fw, c->route, NULL);
  if (!c->target || !buf_init(&fw, &c->utx, GW_IO_BUF))
    goto done;
  if (!build_upstream_head(c, npath, (size_t)nl))
    goto done; /* too big for the buffer: the gateway answers 431 */
  gw_limits_t wide = {.max_line = GW_IO_BUF, .max_head = GW_IO_BUF, .max_headers = 128};
  int rc = gw_http1_parse_request(c->utx.data, buf_len(&c->utx), &wide, out, &err);
  if (rc != 1 || out->head_len != buf_len(&c->utx))
    abort(); /* we emitted a head our own strict parser refuses */
  if (count(out, "host") != 1 || count(out, "x-request-id") != 1 || count(out, "traceparent") != 1)
    abort();
  const gw_header_t *h = &out->headers[out->host];
  if (h->value_len != strlen(c->target->host_header) ||
      memcmp(h->value, c->target->host_header, h->value_len) != 0)
    abort();
  static const char *const hop[] = {"connection",       "keep-alive", "te",    "upgrade",
                                    "proxy-connection", "trailer",    "expect"};
  for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
    if (count(out, hop[i]))
      abort();
  /* headers the gateway sets itself may share a name the client listed */
  static const char *const ours[] = {
      "host",         "via",         "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
      "x-request-id", "traceparent", "content-length",  "transfer-encoding"};
  for (unsigned i = 0; i < out->nheaders; i++) {
    bool set_by_us = false;
    for (size_t k = 0; k < sizeof(ours) / sizeof(ours[0]); k++)
      set_by_us = set_by_us || gw_header_is(&out->headers[i], ours[k]);
    if (!set_by_us && listed_in_connection(&c->req, &out->headers[i]))
      abort(); /* a header the client made hop-by-hop went through */
  }
  /* and their values never carry what the client marked hop-by-hop */
  for (unsigned i = 0; i < c->req.nheaders; i++) {
    const gw_header_t *in_h = &c->req.headers[i];
    if (gw_header_is(in_h, "via") && listed_in_connection(&c->req, in_h))
      for (unsigned k = 0; k < out->nheaders; k++)
        if (gw_header_is(&out->headers[k], "via") &&
            (out->headers[k].value_len != 12 ||
             memcmp(out->headers[k].value, "1.1 tollgate", 12) != 0))
          abort();
  }
  if (out->chunked != c->req.chunked || out->content_length != c->req.content_length)
    abort();
  if (out->method != c->req.method)
    abort();
  /* where keys are read, none reaches the upstream of an API that takes
   * keys (every X-Api-Key, a Bearer Tollgate key, the api_key parameter);
   * a key pasted into some other header is the client's business */
  if (c->key) {
    for (unsigned i = 0; i < out->nheaders; i++) {
      const gw_header_t *t = &out->headers[i];
      if (gw_header_is(t, "x-api-key"))
        abort();
      if (gw_header_is(t, "authorization") && t->value_len >= 7 &&
          strncasecmp(t->value, "bearer ", 7) == 0) {
        uint32_t k = 7;
        while (k < t->value_len && (t->value[k] == ' ' || t->value[k] == '\t'))
          k++;
        if (t->value_len - k >= 8 && memcmp(t->value + k, "tg_live_", 8) == 0)
          abort();
      }
    }
    for (const char *p = out->query, *end = p ? p + out->query_len : NULL; p && p < end;) {
      const char *amp = memchr(p, '&', (size_t)(end - p)), *e = amp ? amp : end;
      if (e - p >= 8 && memcmp(p, "api_key=", 8) == 0)
        abort();
      p = e + 1;
    }
  }
  /* who calls is said exactly once */
  static const char *const ident[] = {"x-tollgate-app-id", "x-tollgate-developer-id",
                                      "x-tollgate-plan", "x-tollgate-key-prefix"};
  for (size_t i = 0; i < 4; i++)
    if (count(out, ident[i]) != (c->key ? 1u : 0u))
      abort();
  for (unsigned i = 0; c->key && i < out->nheaders; i++) {
    const gw_header_t *t = &out->headers[i];
    if (gw_header_is(t, "x-tollgate-app-id") &&
        (t->value_len != strlen(fapp_id) || memcmp(t->value, fapp_id, t->value_len) != 0))
      abort();
    if (gw_header_is(t, "x-tollgate-developer-id") &&
        (t->value_len != strlen(fdev_id) || memcmp(t->value, fdev_id, t->value_len) != 0))
      abort();
  }
  for (unsigned i = 0; i < out->nheaders; i++) {
    const gw_header_t *t = &out->headers[i];
    if (gw_header_is(t, "traceparent") &&
        (t->value_len != 55 || memcmp(t->value, "00-", 3) != 0 || !is_hex(t->value + 3, 32)))
      abort();
  }
done:
  if (c) {
    buf_free(&fw, &c->utx);
    buf_free(&fw, &c->tx);
  }
  free(c);
  free(out);
  free(in);
  free(npath);
  return 0;
}
