/*
 * test_health.c - gateway/health.c: status-line parsing, the threshold
 * rules, the registry, probe lists built from a snapshot, /metrics lines,
 * and whole probes against loopback sockets driven turn by turn from this
 * thread (no health thread is started). Includes the .c to reach its
 * statics (h2o style).
 */
#include <arpa/inet.h>

#include "../../gateway/health.c"
#include "tg_test.h"

/* ---- status lines ---------------------------------------------------------- */

TG_TEST(parse_status_lines) {
  static const struct {
    const char *in;
    int want;
  } cases[] = {
      {"", 0},
      {"HTTP/1.", 0},
      {"HTTP/1.1 200", 0}, /* the byte after the code decides */
      {"HTTP/1.1 200 OK\r\n", 200},
      {"HTTP/1.1 200\r\n", 200},
      {"HTTP/1.1 204\n", 204},
      {"HTTP/1.0 302 Found\r\n", 302},
      {"HTTP/1.1 503 Service Unavailable\r\n", 503},
      {"HTTP/1.1 599 x", 599},
      {"HTTP/1.1 100 Continue\r\n", 0},
      {"HTTP/1.1 100 Continue\r\n\r\n", 0},
      {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n", 204},
      {"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n", 200},
      {"HTTP/1.1 100 Continue\n\nHTTP/1.1 404 Not Found\n", 404},
      {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n", -1},
      {"HTTP/1.1 101 Switching Protocols\r\n", -1},
      {"HTTP/2 200\r\n", -1},
      {"HTTP/1.x 200 OK\r\n", -1},
      {"http/1.1 200 OK\r\n", -1},
      {"HTTP/1.1  200 OK\r\n", -1},
      {"HTTP/1.1 20 OK\r\n", -1},
      {"HTTP/1.1 2000 OK\r\n", -1},
      {"HTTP/1.1 099 Low\r\n", -1},
      {"HTTP/1.1 600 High\r\n", -1},
      {"HTTP/1.1 2x0 OK\r\n", -1},
      {"SSH-2.0-OpenSSH_9.2\r\n", -1},
      {"\x16\x03\x03\x00\x2a", -1}, /* a TLS record: https spoken to http */
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const char *in = cases[i].in;
    size_t len = strlen(in);
    int got = gw_health_parse_status(in, len);
    if (got != cases[i].want)
      TG_FAIL_("case %zu \"%s\": expected %d, got %d", i, in, cases[i].want, got);
    /* bytes arrive in pieces: a prefix needs more, or already decides */
    for (size_t k = 0; k < len; k++) {
      int part = gw_health_parse_status(in, k);
      if (part != 0 && part != cases[i].want)
        TG_FAIL_("case %zu, first %zu bytes: %d (whole: %d)", i, k, part, cases[i].want);
    }
  }
}

/* ---- thresholds ------------------------------------------------------------ */

TG_TEST(thresholds_take_out_and_bring_back) {
  gw_health_entry_t e = {0};
  /* unhealthy 3, healthy 2 */
  ASSERT_INT_EQ(hc_record(&e, false, 2, 3), 0);
  ASSERT_INT_EQ(hc_record(&e, false, 2, 3), 0);
  ASSERT_INT_EQ(hc_record(&e, true, 2, 3), 0); /* a success breaks the run */
  ASSERT_INT_EQ(hc_record(&e, false, 2, 3), 0);
  ASSERT_INT_EQ(hc_record(&e, false, 2, 3), 0);
  ASSERT(!atomic_load(&e.down));
  ASSERT_INT_EQ(hc_record(&e, false, 2, 3), -1);
  ASSERT(atomic_load(&e.down));
  ASSERT_INT_EQ(hc_record(&e, false, 2, 3), 0); /* stays down, no second change */
  ASSERT_INT_EQ(hc_record(&e, true, 2, 3), 0);
  ASSERT_INT_EQ(hc_record(&e, false, 2, 3), 0); /* a failure breaks the run */
  ASSERT_INT_EQ(hc_record(&e, true, 2, 3), 0);
  ASSERT(atomic_load(&e.down));
  ASSERT_INT_EQ(hc_record(&e, true, 2, 3), 1);
  ASSERT(!atomic_load(&e.down));
  ASSERT_INT_EQ(hc_record(&e, true, 2, 3), 0);
  ASSERT_INT_EQ(atomic_load(&e.probes_ok), 5);
  ASSERT_INT_EQ(atomic_load(&e.probes_failed), 7);
  /* thresholds of 1: every result decides */
  gw_health_entry_t one = {0};
  ASSERT_INT_EQ(hc_record(&one, false, 1, 1), -1);
  ASSERT_INT_EQ(hc_record(&one, true, 1, 1), 1);
}

/* ---- registry and probe lists ---------------------------------------------- */

static gw_target_t target(const char *id, const char *host_header, bool https) {
  gw_target_t t = {0};
  snprintf(t.id, sizeof(t.id), "%s", id);
  snprintf(t.host, sizeof(t.host), "127.0.0.1");
  snprintf(t.host_header, sizeof(t.host_header), "%s", host_header);
  t.https = https;
  t.weight = 1;
  return t;
}

TG_TEST(registry_keys_like_worker_state) {
  gw_target_t a = target("tgt_0000000000000000000000000A", "a.example:8080", false);
  gw_target_t a2 = a, b = a, c = a;
  b.https = true;
  snprintf(c.host_header, sizeof(c.host_header), "b.example");
  gw_health_entry_t *ea = gw_health_entry_for(&a);
  ASSERT(ea != NULL);
  ASSERT_STR_EQ(ea->key, "tgt_0000000000000000000000000A|a.example:8080|0");
  ASSERT(gw_health_entry_for(&a2) == ea);
  ASSERT(gw_health_entry_for(&b) != ea);
  ASSERT(gw_health_entry_for(&c) != ea);
  ASSERT(gw_health_entry_for(&b) == gw_health_entry_for(&b));
}

/* A one-route snapshot over `targets`, health entries filled in when the
 * route has a health check path. */
static gw_snapshot_t one_route(gw_route_t *r, gw_target_t *targets, int n, char *hc_path) {
  *r = (gw_route_t){.prefix = "/",
                    .prefix_len = 1,
                    .hc_path = hc_path,
                    .hc_interval_ms = 3600000,
                    .hc_timeout_ms = 2000,
                    .healthy_threshold = 2,
                    .unhealthy_threshold = 1,
                    .targets = targets,
                    .ntargets = n};
  snprintf(r->slug, sizeof(r->slug), "pets");
  for (int i = 0; i < n; i++)
    targets[i].health = hc_path ? gw_health_entry_for(&targets[i]) : NULL;
  return (gw_snapshot_t){.gen = 1, .routes = r, .nroutes = 1};
}

TG_TEST(lists_from_snapshots_keep_and_reset_state) {
  gw_target_t t[2] = {target("tgt_0000000000000000000000000B", "b.example:8080", false),
                      target("tgt_0000000000000000000000000C", "[::1]:8443", true)};
  snprintf(t[0].base_path, sizeof(t[0].base_path), "/base");
  gw_route_t r;
  char path[] = "/health?deep=1";
  gw_snapshot_t snap = one_route(&r, t, 2, path);
  ASSERT_INT_EQ(gw_health_publish(&snap), 0);
  adopt();
  ASSERT(active != NULL && pending == NULL);
  ASSERT_INT_EQ(active->njobs, 2);
  ASSERT_STR_EQ(active->jobs[0].request,
                "GET /base/health?deep=1 HTTP/1.1\r\nHost: b.example:8080\r\n"
                "User-Agent: tollgate-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n");
  ASSERT_STR_EQ(active->jobs[1].request,
                "GET /health?deep=1 HTTP/1.1\r\nHost: [::1]:8443\r\n"
                "User-Agent: tollgate-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n");
  ASSERT_INT_EQ(active->jobs[0].request_len, strlen(active->jobs[0].request));
  ASSERT_STR_EQ(active->jobs[0].api, "pets");
  ASSERT(active->jobs[1].https);
  gw_health_entry_t *e0 = t[0].health;
  ASSERT(active->jobs[0].entry == e0);
  ASSERT(!atomic_load(&e0->down));

  /* a new snapshot naming the same targets keeps what the probes found */
  atomic_store(&e0->down, true);
  e0->next_due = 12345;
  ASSERT_INT_EQ(gw_health_publish(&snap), 0);
  adopt();
  ASSERT(atomic_load(&e0->down));
  ASSERT_INT_EQ(e0->next_due, 12345);

  /* checks turned off: no jobs; two publications before the thread takes
   * one: the newer wins */
  gw_route_t r2;
  gw_snapshot_t off = one_route(&r2, t, 2, NULL);
  ASSERT_INT_EQ(gw_health_publish(&snap), 0);
  ASSERT_INT_EQ(gw_health_publish(&off), 0);
  adopt();
  ASSERT_INT_EQ(active->njobs, 0);
  ASSERT(t[0].health == NULL);

  /* and on again: the target starts afresh, up and due at once */
  snap = one_route(&r, t, 2, path);
  ASSERT(t[0].health == e0);
  ASSERT_INT_EQ(gw_health_publish(&snap), 0);
  adopt();
  ASSERT(!atomic_load(&e0->down));
  ASSERT_INT_EQ(e0->next_due, 0);
  gw_health_stop(); /* frees the lists */
  ASSERT(active == NULL);
}

TG_TEST(metrics_lines) {
  gw_target_t t[2] = {target("tgt_0000000000000000000000000D", "d.example", false),
                      target("tgt_0000000000000000000000000E", "e.example", false)};
  gw_route_t r;
  char path[] = "/health";
  gw_snapshot_t snap = one_route(&r, t, 2, path);
  ASSERT_INT_EQ(gw_health_publish(&snap), 0);
  adopt();
  atomic_store(&t[1].health->down, true);
  atomic_store(&t[1].health->probes_failed, 3);
  atomic_store(&t[0].health->probes_ok, 7);
  char out[4096];
  size_t n = gw_health_metrics(out, sizeof(out));
  ASSERT(n > 0 && n < sizeof(out));
  out[n] = '\0';
  ASSERT_STR_CONTAINS(out, "# TYPE tollgate_upstream_target_up gauge\n");
  ASSERT_STR_CONTAINS(out, "# TYPE tollgate_upstream_health_checks_total counter\n");
  ASSERT_STR_CONTAINS(
      out,
      "tollgate_upstream_target_up{api=\"pets\",target=\"tgt_0000000000000000000000000D\"} 1\n");
  ASSERT_STR_CONTAINS(
      out,
      "tollgate_upstream_target_up{api=\"pets\",target=\"tgt_0000000000000000000000000E\"} 0\n");
  ASSERT_STR_CONTAINS(out, "tollgate_upstream_health_checks_total{api=\"pets\",target=\"tgt_"
                           "0000000000000000000000000D\",result=\"healthy\"} 7\n");
  ASSERT_STR_CONTAINS(out, "tollgate_upstream_health_checks_total{api=\"pets\",target=\"tgt_"
                           "0000000000000000000000000E\",result=\"unhealthy\"} 3\n");
  /* a small buffer gets whole lines only */
  n = gw_health_metrics(out, 200);
  ASSERT(n > 0 && n < 200 && out[n - 1] == '\n');
  gw_health_stop();
}

/* ---- whole probes, one turn at a time -------------------------------------- */

static gw_server_t fake_srv; /* no TLS client: http targets only */

/* A loopback listener (listening or not) and a target pointing at it. */
static int loopback(bool listening, gw_target_t *t) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof(a);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
      (listening && listen(fd, 8) != 0) || getsockname(fd, (struct sockaddr *)&a, &al) != 0)
    abort();
  memcpy(&t->addr, &a, sizeof(a));
  t->addrlen = sizeof(a);
  t->resolved = true;
  return fd;
}

static hc_probe_t *probe_of(const gw_health_entry_t *e) {
  for (int i = 0; i < nprobes; i++)
    if (probes[i]->entry == e)
      return probes[i];
  return NULL;
}

/* Run turns until e has no probe in flight (bounded). */
static void settle(gw_health_entry_t *e) {
  for (int i = 0; i < 500 && (e->probing || nprobes > 0); i++)
    health_turn();
}

TG_TEST(probes_over_loopback) {
  hc_srv = &fake_srv;
  ASSERT(probes_reserve());
  gw_target_t t[3] = {target("tgt_0000000000000000000000000F", "f.example", false),
                      target("tgt_0000000000000000000000000G", "g.example", false),
                      target("tgt_0000000000000000000000000H", "h.example", false)};
  int ok_fd = loopback(true, &t[0]), refused_fd = loopback(false, &t[1]),
      silent_fd = loopback(true, &t[2]);
  gw_route_t r;
  char path[] = "/hc";
  gw_snapshot_t snap = one_route(&r, t, 3, path);
  ASSERT_INT_EQ(gw_health_publish(&snap), 0);
  adopt();
  health_turn(); /* starts all three (due at once) */
  ASSERT(t[0].health->probing && t[2].health->probing);
  /* turn until the first has sent its request (the kernel accepts for us) */
  for (int i = 0; i < 200 && probe_of(t[0].health) && probe_of(t[0].health)->phase != P_RECV; i++)
    health_turn();
  ASSERT(probe_of(t[0].health) && probe_of(t[0].health)->phase == P_RECV);
  /* it gets a 204 */
  int c = accept(ok_fd, NULL, NULL);
  ASSERT(c >= 0);
  char req[1024];
  size_t got = 0;
  while (got < sizeof(req) - 1 && !memmem(req, got, "\r\n\r\n", 4)) {
    ssize_t k = read(c, req + got, sizeof(req) - 1 - got);
    ASSERT(k > 0);
    got += (size_t)k;
  }
  req[got] = '\0';
  ASSERT_STR_EQ(req, "GET /hc HTTP/1.1\r\nHost: f.example\r\nUser-Agent: tollgate-healthcheck\r\n"
                     "Accept: */*\r\nConnection: close\r\n\r\n");
  static const char answer[] = "HTTP/1.1 204 No Content\r\n\r\n";
  ASSERT_INT_EQ(write(c, answer, sizeof(answer) - 1), sizeof(answer) - 1);
  settle(t[0].health);
  settle(t[2].health); /* never answered: times out */
  ASSERT_INT_EQ(nprobes, 0);
  ASSERT_INT_EQ(atomic_load(&t[0].health->probes_ok), 1);
  ASSERT_INT_EQ(atomic_load(&t[0].health->probes_failed), 0);
  ASSERT(!atomic_load(&t[0].health->down));
  /* unhealthy_threshold 1: one refused connect, one timeout take them out */
  ASSERT_INT_EQ(atomic_load(&t[1].health->probes_failed), 1);
  ASSERT(atomic_load(&t[1].health->down));
  ASSERT_INT_EQ(atomic_load(&t[2].health->probes_failed), 1);
  ASSERT(atomic_load(&t[2].health->down));
  /* the next probes wait for the interval (an hour here) */
  health_turn();
  ASSERT_INT_EQ(nprobes, 0);
  close(c);
  close(ok_fd);
  close(refused_fd);
  close(silent_fd);
  gw_health_stop();
}

TG_TEST_MAIN()
