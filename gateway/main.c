/*
 * main.c - tollgate-gateway: configuration, the config thread that keeps
 * the routing snapshot current (and hands the health thread its targets),
 * the workers, the status endpoint, active health checks, and a graceful
 * stop.
 *
 *   tollgate-gateway [--config FILE] [--KEY VALUE ...]
 *   tollgate-gateway --help | --version | --check-config
 *
 * SIGTERM/SIGINT: stop accepting, let in-flight requests finish (up to
 * drain_timeout), then exit. SIGHUP: reopen the access log file.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sodium.h>
#include <unistd.h>

#include "core/keys.h"
#include "core/log.h"
#include "core/store.h"
#include "core/tokens.h"
#include "core/util.h"
#include "gateway/gw.h"
#include "gateway/tls.h"

extern char **environ;

static gw_server_t srv;
static tg_store_t *store;
static pthread_t config_thread;
static atomic_bool config_stop;
static int poll_ms;

/* Snapshots replaced but perhaps still held by a worker. */
#define RETIRED_MAX 64
static gw_snapshot_t *retired[RETIRED_MAX];
static int nretired;

static void retire_done(void) {
  uint64_t min = gw_workers_min_gen(&srv);
  int kept = 0;
  for (int i = 0; i < nretired; i++) {
    if (retired[i]->gen < min)
      gw_snapshot_free(retired[i]);
    else
      retired[kept++] = retired[i];
  }
  nretired = kept;
}

static int reload(uint64_t gen) {
  char err[256];
  gw_snapshot_t *snap = NULL;
  if (gw_snapshot_load(store, srv.policy, gen, &snap, err, sizeof(err)) != 0) {
    tg_log(TG_LOG_ERROR, "config reload failed", "error", err, NULL);
    return -1;
  }
  gw_snapshot_t *old = atomic_exchange(&srv.current, snap);
  if (old) {
    if (nretired == RETIRED_MAX) {
      /* workers stuck for 64 reloads cannot happen while they run their
       * loops; wait for them rather than free under them */
      while (gw_workers_min_gen(&srv) <= retired[0]->gen && !atomic_load(&config_stop)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
      }
      retire_done();
    }
    retired[nretired++] = old;
  }
  /* the health thread gets its copy now, while snap is surely alive */
  if (gw_health_publish(snap) != 0)
    tg_log(TG_LOG_ERROR, "health checks keep their previous targets", "error", "out of memory",
           NULL);
  char g[24], n[16];
  snprintf(g, sizeof(g), "%llu", (unsigned long long)gen);
  snprintf(n, sizeof(n), "%d", snap->nroutes);
  tg_log(TG_LOG_INFO, "config loaded", "generation", g, "routes", n, NULL);
  return 0;
}

/* One batch of the change log: whether routing changed, and which
 * policy rows to re-read (applied after the scan, outside its statement). */
typedef struct change_scan {
  bool routing;
  struct {
    char entity[16];
    char id[40];
  } * rows;
  size_t n, cap;
  bool lost; /* out of memory: a change could not be remembered */
} change_scan_t;

static int scan_change(const tg_change_t *c, void *ctx) {
  change_scan_t *s = ctx;
  if (strcmp(c->entity, "api") == 0 || strcmp(c->entity, "target") == 0) {
    s->routing = true;
    return 0;
  }
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    void *r = realloc(s->rows, cap * sizeof(*s->rows));
    if (!r) {
      s->lost = true;
      return 0;
    }
    s->rows = r;
    s->cap = cap;
  }
  snprintf(s->rows[s->n].entity, sizeof(s->rows[s->n].entity), "%s", c->entity);
  snprintf(s->rows[s->n].id, sizeof(s->rows[s->n].id), "%s", c->entity_id);
  s->n++;
  return 0;
}

/* Re-read each changed row once (a row changed twice in a batch is read
 * once, in its latest state). */
static void apply_policy_changes(change_scan_t *s) {
  for (size_t i = 0; i < s->n; i++) {
    bool later = false;
    for (size_t j = i + 1; j < s->n && !later && s->n - i < 4096; j++)
      later = strcmp(s->rows[i].id, s->rows[j].id) == 0;
    if (later)
      continue;
    char err[256];
    if (gw_policy_refresh(srv.policy, store, s->rows[i].entity, s->rows[i].id, err, sizeof(err)) !=
        0)
      tg_log(TG_LOG_ERROR, "policy change not applied", "error", err, NULL);
  }
  s->n = 0;
}

static int skip_change(const tg_change_t *c, void *ctx) {
  (void)c;
  (void)ctx;
  return 0;
}

/* Where the change log ends now (read before the first load, so that a
 * change committed during the load is applied again, never missed). */
static int64_t start_seq;

static void *config_main(void *arg) {
  (void)arg;
  gw_thread_role("tg-config", true);
  int64_t version = -1, last_seq = start_seq;
  uint64_t gen = atomic_load(&srv.current) ? atomic_load(&srv.current)->gen : 1;
  while (!atomic_load(&config_stop)) {
    struct timespec ts = {poll_ms / 1000, (long)(poll_ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
    retire_done();
    gw_policy_collect(srv.policy);
    int64_t v = 0;
    if (tg_store_data_version(store, &v) != TG_OK || v == version)
      continue; /* nobody committed: the cheap check is enough */
    version = v;
    change_scan_t s = {0};
    int64_t seq = last_seq;
    for (;;) {
      int64_t before = seq;
      int rc = tg_store_changes(store, seq, 10000, scan_change, &s, &seq, NULL);
      /* routing first: a new API's number exists before its subscriptions */
      if (s.routing) {
        reload(++gen);
        s.routing = false;
      }
      apply_policy_changes(&s);
      if (rc != TG_OK || seq == before)
        break;
    }
    if (s.lost)
      tg_log(TG_LOG_ERROR,
             "out of memory: some key or plan changes were not applied; restart the "
             "gateway",
             NULL);
    free(s.rows);
    last_seq = seq;
  }
  return NULL;
}

static int open_access_log(const char *where) {
  if (strcmp(where, "off") == 0)
    return -1;
  if (strcmp(where, "stdout") == 0)
    return STDOUT_FILENO;
  return open(where, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
}

static int fail(const char *key, const char *msg) {
  fprintf(stderr, "tollgate-gateway: %s%s%s\n", key ? key : "", key ? ": " : "", msg);
  return EXIT_FAILURE;
}

/* A header name from the config (RFC 9110 token), kept as given and in
 * lower case. Empty is allowed where `may_be_empty`. */
static int header_name(const tg_config_t *cfg, const char *key, bool may_be_empty, char *given,
                       char *lower, size_t cap) {
  const char *v = tg_config_str(cfg, key);
  size_t n = strlen(v);
  if (n == 0 && may_be_empty) {
    given[0] = lower[0] = '\0';
    return 0;
  }
  if (n == 0 || n >= cap ||
      strspn(v, "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != n)
    return fail(key, "not a header name (letters, digits and !#$%&'*+-.^_`|~)");
  for (size_t i = 0; i <= n; i++) {
    given[i] = v[i];
    lower[i] = (char)(v[i] >= 'A' && v[i] <= 'Z' ? v[i] + 32 : v[i]);
  }
  return 0;
}

static int header_names(const tg_config_t *cfg) {
  char given[128];
  gw_ident_headers_t *l = &srv.ident, *g = &srv.ident_names;
  if (header_name(cfg, "gateway_key_header", false, given, srv.key_header, sizeof(given)) ||
      header_name(cfg, "gateway_header_app", true, g->app, l->app, sizeof(g->app)) ||
      header_name(cfg, "gateway_header_developer", true, g->developer, l->developer,
                  sizeof(g->developer)) ||
      header_name(cfg, "gateway_header_plan", true, g->plan, l->plan, sizeof(g->plan)) ||
      header_name(cfg, "gateway_header_key_prefix", true, g->key_prefix, l->key_prefix,
                  sizeof(g->key_prefix)))
    return -1;
  srv.strip_key = tg_config_bool(cfg, "gateway_strip_key");
  const char *rl = tg_config_str(cfg, "gateway_ratelimit_headers");
  srv.ratelimit_headers = strcmp(rl, "draft") == 0    ? GW_RLH_DRAFT
                          : strcmp(rl, "legacy") == 0 ? GW_RLH_LEGACY
                          : strcmp(rl, "off") == 0    ? GW_RLH_OFF
                                                      : GW_RLH_BOTH;
  srv.auth_failures = tg_config_int(cfg, "gateway_auth_failures");
  srv.metering = tg_config_bool(cfg, "metering");
  srv.io_uring = tg_config_bool(cfg, "gateway_io_uring");
  return 0;
}

int main(int argc, char **argv) {
  tg_config_t *cfg = NULL;
  tg_problem_t p = {0};
  tg_cli_t cli = {0};
  int rc = EXIT_FAILURE;
  char err[256];
  struct sockaddr_storage status_addr;
  unsigned len = 0, slen = 0;

  if (tg_keys_init() || tg_config_new(&cfg))
    return fail(NULL, "cannot initialise");
  if (tg_config_load(cfg, argc, argv, environ, false, &cli, &p)) {
    fail(p.field, p.detail);
    rc = 2;
    goto out;
  }
  if ((rc = tg_config_meta("tollgate-gateway", TOLLGATE_VERSION, tg_store_schema_latest(),
                           "usage: tollgate-gateway [--config FILE] [--KEY VALUE ...]\n"
                           "       tollgate-gateway --help | --version | --check-config\n\n"
                           "The data plane: routes API calls to upstreams (default :8000),\n"
                           "status on 127.0.0.1:8100 (/health, /metrics).\n",
                           &cli, argc, argv, false)) >= 0)
    goto out;
  rc = EXIT_FAILURE;
  if (tg_addr_resolve(tg_config_str(cfg, "gateway_listen"), "gateway_listen", &srv.listen_addr,
                      &len, &p) ||
      tg_addr_resolve(tg_config_str(cfg, "status_listen"), "status_listen", &status_addr, &slen,
                      &p)) {
    fail(p.field, p.detail);
    goto out;
  }
  srv.listen_addrlen = len;
  const char *certs = tg_config_str(cfg, "gateway_tls_certs");
  if (*certs) {
    unsigned tl = 0;
    if (tg_addr_resolve(tg_config_str(cfg, "gateway_tls_listen"), "gateway_tls_listen",
                        &srv.tls_addr, &tl, &p)) {
      fail(p.field, p.detail);
      goto out;
    }
    srv.tls_addrlen = tl;
    if (!(srv.tls_server = gw_tls_server_ctx(certs, err, sizeof(err)))) {
      fail("gateway_tls_certs", err);
      goto out;
    }
  }
  if (cli.check_config) {
    tg_config_dump(cfg, stdout);
    rc = EXIT_SUCCESS;
    goto out;
  }
  tg_log_setup(tg_config_str(cfg, "log_level"), tg_config_str(cfg, "log_format"),
               "tollgate-gateway");
  srv.cfg = cfg;
  srv.limits.max_line = (size_t)tg_config_int(cfg, "gateway_max_line");
  srv.limits.max_head = (size_t)tg_config_int(cfg, "gateway_max_head");
  srv.limits.max_headers = (unsigned)tg_config_int(cfg, "gateway_max_headers");
  srv.header_timeout_ms = (int)tg_config_int(cfg, "gateway_header_timeout");
  srv.body_timeout_ms = (int)tg_config_int(cfg, "gateway_body_timeout");
  srv.idle_timeout_ms = (int)tg_config_int(cfg, "gateway_idle_timeout");
  srv.max_connections = (int)tg_config_int(cfg, "gateway_max_connections");
  srv.pool_size = (int)tg_config_int(cfg, "gateway_pool_size");
  srv.trust_forwarded = tg_config_bool(cfg, "gateway_trust_forwarded");
  if (header_names(cfg) != 0)
    goto out;
  randombytes_buf(&srv.authfail_seed, sizeof(srv.authfail_seed));
  poll_ms = (int)tg_config_int(cfg, "config_poll_interval");
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  srv.nworkers = (int)tg_config_int(cfg, "gateway_workers");
  if (srv.nworkers == 0)
    srv.nworkers = ncpu > 0 ? (int)(ncpu > GW_MAX_WORKERS ? GW_MAX_WORKERS : ncpu) : 1;
  /* https:// upstreams are verified against the system CA store */
  srv.tls_client = gw_tls_client_ctx(tg_config_str(cfg, "gateway_upstream_ca"), err, sizeof(err));
  if (!srv.tls_client && *tg_config_str(cfg, "gateway_upstream_ca")) {
    fail("gateway_upstream_ca", err);
    goto out;
  }
  if (!srv.tls_client)
    tg_log(TG_LOG_WARN, "https upstreams disabled", "error", err, NULL);
  srv.access_log_fd = open_access_log(tg_config_str(cfg, "access_log"));
  if (srv.access_log_fd == -1 && strcmp(tg_config_str(cfg, "access_log"), "off") != 0) {
    fail("access_log", strerror(errno));
    goto out;
  }
  tg_store_options_t opt = {.path = tg_config_str(cfg, "db_path"),
                            .busy_timeout_ms = (int)tg_config_int(cfg, "store_busy_timeout"),
                            .mode = TG_STORE_OPEN_CURRENT};
  if (tg_store_open(&opt, &store, NULL, NULL, &p)) {
    fail(p.field, p.detail);
    goto out;
  }
  for (;;) {
    int64_t before = start_seq;
    if (tg_store_changes(store, start_seq, 10000, skip_change, NULL, &start_seq, NULL) != TG_OK ||
        start_seq == before)
      break;
  }
  if (tg_server_secret(store, getenv("TOLLGATE_SECRET"), tg_config_str(cfg, "secret_file"), true,
                       &srv.secret, &p)) {
    fail(p.field, p.detail);
    goto out;
  }
  const char *test_now = getenv("TOLLGATE_TEST_NOW");
  if (test_now && *test_now) {
    char *end;
    long long ms = strtoll(test_now, &end, 10);
    if (*end || ms <= 0) {
      fail("TOLLGATE_TEST_NOW", "must be unix time in milliseconds");
      goto out;
    }
    srv.clock_offset_ms = ms - gw_wall_ms(&srv);
    tg_log(TG_LOG_WARN, "wall clock moved for tests (TOLLGATE_TEST_NOW)", "now", test_now, NULL);
  }
  if (!(srv.policy = gw_policy_new(gw_workers_min_epoch, &srv))) {
    fail(NULL, "out of memory");
    goto out;
  }
  int64_t t0 = tg_now_ms();
  if (gw_policy_load(srv.policy, store, gw_wall_ms(&srv) / 1000, err, sizeof(err)) != 0) {
    fail(NULL, err);
    goto out;
  }
  char nk[24], took[24];
  snprintf(nk, sizeof(nk), "%zu", gw_policy_nkeys(srv.policy));
  snprintf(took, sizeof(took), "%lld", (long long)(tg_now_ms() - t0));
  tg_log(TG_LOG_INFO, "keys loaded", "keys", nk, "ms", took, NULL);
  if (reload(1) != 0) {
    fail(NULL, "cannot load the configuration from the store");
    goto out;
  }
  atomic_store(&srv.ready, true);

  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);

  if (gw_workers_start(&srv, err, sizeof(err)) != 0) {
    fail("gateway_listen", err);
    goto out;
  }
  if (srv.metering && gw_meter_start(&srv, err, sizeof(err)) != 0) {
    fail(NULL, err);
    goto out;
  }
  if (gw_status_start(&srv, (struct sockaddr *)&status_addr, slen, err, sizeof(err)) != 0) {
    fail("status_listen", err);
    goto out;
  }
  if (gw_health_start(&srv, err, sizeof(err)) != 0) {
    fail(NULL, err);
    goto out;
  }
  if (pthread_create(&config_thread, NULL, config_main, NULL) != 0) {
    fail(NULL, "cannot start the config thread");
    goto out;
  }
  char port[16], sport[16], workers[16], tport[16];
  snprintf(port, sizeof(port), "%u", srv.port);
  snprintf(tport, sizeof(tport), "%u", srv.tls_port);
  snprintf(sport, sizeof(sport), "%d", gw_status_port());
  snprintf(workers, sizeof(workers), "%d", srv.nworkers);
  tg_log(TG_LOG_INFO, "gateway listening", "port", port, "status_port", sport, "workers", workers,
         "tls_port", srv.tls_server ? tport : "", NULL);

  for (;;) {
    int sig = 0;
    if (sigwait(&sigs, &sig) != 0)
      continue;
    if (sig == SIGHUP) {
      const char *where = tg_config_str(cfg, "access_log");
      if (srv.access_log_fd > STDERR_FILENO) {
        int fd = open_access_log(where);
        if (fd >= 0) {
          /* swap in place: workers keep writing to the same descriptor number */
          dup2(fd, srv.access_log_fd);
          close(fd);
        }
      }
      tg_log(TG_LOG_INFO, "access log reopened", NULL);
      continue;
    }
    tg_log(TG_LOG_INFO, "stopping", NULL);
    break;
  }
  gw_workers_stop(&srv, tg_config_int(cfg, "drain_timeout"));
  gw_meter_stop(&srv); /* after the workers: everything they counted is written */
  atomic_store(&config_stop, true);
  pthread_join(config_thread, NULL);
  gw_health_stop();
  gw_status_stop();
  tg_log(TG_LOG_INFO, "stopped", NULL);
  rc = EXIT_SUCCESS;
out:
  tg_store_close(store);
  tg_config_free(cfg);
  return rc;
}
