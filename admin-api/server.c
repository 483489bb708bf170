/*
 * server.c - tollgate-server's main: configuration, the store (migrated on
 * start), the server secret, the admin API and developer portal daemons,
 * the usage compaction thread, and a graceful stop.
 *
 *   tollgate-server [--config FILE] [--KEY VALUE ...]
 *   tollgate-server --help | --version | --check-config | --print-routes |
 *                   --print-portal-routes
 *
 * Signals are blocked in every thread and taken by sigwait in main: SIGTERM
 * or SIGINT stops accepting, lets in-flight requests finish (drain_timeout)
 * and closes the store cleanly. The admin API listens on loopback unless
 * TLS is configured or admin_allow_remote is set: a bearer token over
 * plain HTTP on a network is a leak waiting to happen.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "admin-api/adm.h"
#include "admin-api/jobs.h"
#include "admin-api/mailer.h"
#include "portal/portal.h"
#include "core/log.h"
#include "core/tokens.h"
#include "core/util.h"

#define PEM_MAX (1024 * 1024)

extern char **environ;

/* ---- usage compaction: minute rows into hours and days, then retention ---- */

/* One run: compact what is due, in short transactions, until caught up. */
static void compact_run(adm_job_t *job, adm_server_t *srv, tg_store_t *s) {
  const tg_config_t *cfg = srv->cfg;
  tg_usage_retention_t ret = {tg_config_int(cfg, "usage_keep_minutes") / 1000,
                              tg_config_int(cfg, "usage_keep_hours") / 1000};
  tg_usage_compact_stats_t st;
  /* catching up after a long stop: many short transactions, with the lock
   * free in between so the gateway's metering and admin writes go on */
  for (int round = 0; round < 1000; round++) {
    tg_problem_t p = {0};
    if (tg_store_usage_compact(s, tg_now(), 60, &ret, 24, &st, &p) != TG_OK) {
      tg_log(TG_LOG_WARN, "usage compaction failed; retrying later", "error", p.detail, NULL);
      return;
    }
    if (st.hours || st.days || st.minute_rows_deleted || st.hour_rows_deleted) {
      char h[24], d[24], m[24], hr[24];
      snprintf(h, sizeof(h), "%lld", (long long)st.hours);
      snprintf(d, sizeof(d), "%lld", (long long)st.days);
      snprintf(m, sizeof(m), "%lld", (long long)st.minute_rows_deleted);
      snprintf(hr, sizeof(hr), "%lld", (long long)st.hour_rows_deleted);
      tg_log(TG_LOG_DEBUG, "usage compacted", "hours", h, "days", d, "minute_rows_removed", m,
             "hour_rows_removed", hr, NULL);
    }
    if (!st.more || adm_job_stopping(job))
      return;
  }
}

static adm_job_t compactor = {.name = "usage compaction", .run = compact_run};

/* Read a PEM file (at most PEM_MAX bytes) into a NUL-terminated buffer. */
static char *read_pem(const char *path, const char *key, tg_problem_t *p) {
  char *buf = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    tg_problem_set(p, TG_ECONFIG, key, "cannot open %s: %s", path, strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 || st.st_size > PEM_MAX) {
    tg_problem_set(p, TG_ECONFIG, key, "%s is not a PEM file of at most 1 MiB", path);
    goto out;
  }
  buf = malloc((size_t)st.st_size + 1);
  if (!buf) {
    tg_problem_set(p, TG_ENOMEM, key, NULL);
    goto out;
  }
  size_t got = 0;
  while (got < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
    if (n <= 0) {
      tg_problem_set(p, TG_ECONFIG, key, "cannot read %s", path);
      free(buf);
      buf = NULL;
      goto out;
    }
    got += (size_t)n;
  }
  buf[got] = '\0';
  if (!strstr(buf, "-----BEGIN ")) {
    tg_problem_set(p, TG_ECONFIG, key, "%s holds no PEM block", path);
    sodium_memzero(buf, got);
    free(buf);
    buf = NULL;
  }
out:
  close(fd);
  return buf;
}

/* A listening TCP socket on addr; *port gets the port bound (addr is
 * updated with it). -1 with p filled on failure. */
static int listen_on(struct sockaddr *addr, unsigned addrlen, int *port, tg_problem_t *p) {
  int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0), on = 1;
  socklen_t len = addrlen;
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) ||
      (addr->sa_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on))) ||
      bind(fd, addr, addrlen) || listen(fd, 511) || getsockname(fd, addr, &len)) {
    tg_problem_set(p, TG_EIO, "portal_listen", "cannot listen: %s", strerror(errno));
    if (fd >= 0)
      close(fd);
    return -1;
  }
  *port = ntohs(addr->sa_family == AF_INET ? ((struct sockaddr_in *)addr)->sin_port
                                           : ((struct sockaddr_in6 *)addr)->sin6_port);
  return fd;
}

static int fail(const tg_problem_t *p, int rc) {
  fprintf(stderr, "tollgate-server: %s%s%s\n", p->field[0] ? p->field : "", p->field[0] ? ": " : "",
          p->detail[0] ? p->detail : tg_strerror(rc));
  return EXIT_FAILURE;
}

/* The portal's settings that only make sense together; its TLS files. */
static int portal_prepare(const tg_config_t *cfg, portal_server_t *ps,
                          struct sockaddr_storage *addr, unsigned *addrlen, char **key_pem,
                          char **cert_pem, tg_problem_t *p) {
  const char *cert = tg_config_str(cfg, "portal_tls_cert"),
             *key = tg_config_str(cfg, "portal_tls_key");
  if ((*cert != '\0') != (*key != '\0'))
    return tg_problem_set(p, TG_ECONFIG, *cert ? "portal_tls_key" : "portal_tls_cert",
                          "portal_tls_cert and portal_tls_key go together");
  if (tg_addr_resolve(tg_config_str(cfg, "portal_listen"), "portal_listen", addr, addrlen, p))
    return TG_ECONFIG;
  const char *urls[] = {"portal_public_url", "portal_gateway_url"};
  for (int i = 0; i < 2; i++) {
    const char *u = tg_config_str(cfg, urls[i]);
    size_t n = strlen(u);
    if (n && ((strncmp(u, "http://", 7) && strncmp(u, "https://", 8)) || n > 400 ||
              u[n - 1] == '/' || strpbrk(u, " \"'<>?#")))
      return tg_problem_set(p, TG_ECONFIG, urls[i],
                            "must be an http:// or https:// URL without a trailing slash, query "
                            "or fragment");
  }
  if (tg_signup_mode_parse(tg_config_str(cfg, "portal_signup"), &ps->signup))
    return tg_problem_set(p, TG_ECONFIG, "portal_signup", "must be open, verify or approval");
  if (tg_config_int(cfg, "portal_session_idle") > tg_config_int(cfg, "portal_session_absolute"))
    return tg_problem_set(p, TG_ECONFIG, "portal_session_idle",
                          "must not be longer than portal_session_absolute");
  if (*cert && (!(*cert_pem = read_pem(cert, "portal_tls_cert", p)) ||
                !(*key_pem = read_pem(key, "portal_tls_key", p))))
    return TG_ECONFIG;
  return TG_OK;
}

int main(int argc, char **argv) {
  static adm_server_t srv;
  static portal_server_t portal;
  char *portal_key = NULL, *portal_cert = NULL;
  struct sockaddr_storage portal_addr;
  unsigned portal_addrlen = 0;
  bool portal_on = false;
  tg_config_t *cfg = NULL;
  tg_problem_t p = {0};
  tg_cli_t cli = {0};
  tg_store_t *boot = NULL;
  char *tls_key = NULL, *tls_cert = NULL;
  struct sockaddr_storage addr;
  unsigned addrlen = 0;
  int rc = EXIT_FAILURE, from = 0, to = 0, port = 0;
  bool print_routes = false, print_portal_routes = false;

  /* --print-routes and --print-portal-routes are ours alone; hide them from
   * the config parser */
  for (int i = 1; i < argc; i++) {
    bool admin = strcmp(argv[i], "--print-routes") == 0;
    if (admin || strcmp(argv[i], "--print-portal-routes") == 0) {
      *(admin ? &print_routes : &print_portal_routes) = true;
      memmove(&argv[i], &argv[i + 1], (size_t)(argc - i) * sizeof(argv[0]));
      argc--;
      i--;
    }
  }
  if (tg_keys_init() || tg_config_new(&cfg)) {
    fprintf(stderr, "tollgate-server: cannot initialise\n");
    return EXIT_FAILURE;
  }
  if (tg_config_load(cfg, argc, argv, environ, false, &cli, &p)) {
    rc = fail(&p, TG_ECONFIG) + 1;
    goto out;
  }
  if ((rc = tg_config_meta(
           "tollgate-server", TOLLGATE_VERSION, tg_store_schema_latest(),
           "usage: tollgate-server [--config FILE] [--KEY VALUE ...]\n"
           "       tollgate-server --help | --version | --check-config | "
           "--print-routes | --print-portal-routes\n\n"
           "Runs the admin REST API (default http://127.0.0.1:8001) and the developer\n"
           "portal (default port 8002).\n",
           &cli, argc, argv, false)) >= 0)
    goto out;
  rc = EXIT_FAILURE;
  if (print_routes || print_portal_routes) {
    if (print_routes)
      adm_routes_print(stdout);
    if (print_portal_routes)
      portal_routes_print(stdout);
    rc = EXIT_SUCCESS;
    goto out;
  }
  /* settings that only make sense together */
  const char *cert = tg_config_str(cfg, "admin_tls_cert"),
             *key = tg_config_str(cfg, "admin_tls_key");
  if ((*cert != '\0') != (*key != '\0')) {
    tg_problem_set(&p, TG_ECONFIG, *cert ? "admin_tls_key" : "admin_tls_cert",
                   "admin_tls_cert and admin_tls_key go together");
    rc = fail(&p, TG_ECONFIG);
    goto out;
  }
  if (tg_addr_resolve(tg_config_str(cfg, "admin_listen"), "admin_listen", &addr, &addrlen, &p)) {
    rc = fail(&p, TG_ECONFIG);
    goto out;
  }
  if (!tg_addr_is_loopback((struct sockaddr *)&addr) && !*cert &&
      !tg_config_bool(cfg, "admin_allow_remote")) {
    tg_problem_set(&p, TG_ECONFIG, "admin_listen",
                   "%s is not a loopback address: configure admin_tls_cert/admin_tls_key, or set "
                   "admin_allow_remote=true to expose admin tokens over plain HTTP",
                   tg_config_str(cfg, "admin_listen"));
    rc = fail(&p, TG_ECONFIG);
    goto out;
  }
  portal_on = tg_config_bool(cfg, "portal_enabled");
  if (portal_on &&
      portal_prepare(cfg, &portal, &portal_addr, &portal_addrlen, &portal_key, &portal_cert, &p)) {
    rc = fail(&p, TG_ECONFIG);
    goto out;
  }
  const char *mfrom = tg_config_str(cfg, "mail_from"), *helo = tg_config_str(cfg, "mail_helo");
  if (strlen(mfrom) > 254 || !strchr(mfrom, '@') || strpbrk(mfrom, " <>\"\\,;()") ||
      !tg_utf8_valid(mfrom, strlen(mfrom), false) || strpbrk(mfrom, "\r\n\t")) {
    tg_problem_set(&p, TG_ECONFIG, "mail_from", "must be a plain address like portal@example.com");
    rc = fail(&p, TG_ECONFIG);
    goto out;
  }
  if (!*helo || strlen(helo) > 253 ||
      strspn(helo, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") !=
          strlen(helo)) {
    tg_problem_set(&p, TG_ECONFIG, "mail_helo", "must be a host name");
    rc = fail(&p, TG_ECONFIG);
    goto out;
  }
  if (cli.check_config) {
    tg_config_dump(cfg, stdout);
    rc = EXIT_SUCCESS;
    goto out;
  }
  if (*cert && (!(tls_cert = read_pem(cert, "admin_tls_cert", &p)) ||
                !(tls_key = read_pem(key, "admin_tls_key", &p)))) {
    rc = fail(&p, TG_ECONFIG);
    goto out;
  }
  tg_log_setup(tg_config_str(cfg, "log_level"), tg_config_str(cfg, "log_format"),
               "tollgate-server");
  /* tests move the wall clock (session timeouts, token expiry, months) */
  const char *test_now = getenv("TOLLGATE_TEST_NOW");
  if (test_now && *test_now) {
    char *end;
    long long ms = strtoll(test_now, &end, 10);
    if (*end || ms <= 0) {
      tg_problem_set(&p, TG_ECONFIG, "TOLLGATE_TEST_NOW", "must be unix time in milliseconds");
      rc = fail(&p, TG_ECONFIG);
      goto out;
    }
    tg_clock_offset_ms(ms - tg_now_ms());
    tg_log(TG_LOG_WARN, "wall clock moved for tests (TOLLGATE_TEST_NOW)", "now", test_now, NULL);
  }

  srv.cfg = cfg;
  srv.max_body = (size_t)tg_config_int(cfg, "admin_max_body");
  tg_store_options_t sopt = {.path = tg_config_str(cfg, "db_path"),
                             .busy_timeout_ms = (int)tg_config_int(cfg, "store_busy_timeout"),
                             .mode = TG_STORE_OPEN_MIGRATE};
  pthread_mutex_init(&srv.write_lock, NULL);
  int err = tg_store_open(&sopt, &boot, &from, &to, &p);
  if (!err)
    err = tg_server_secret(boot, getenv("TOLLGATE_SECRET"), tg_config_str(cfg, "secret_file"), true,
                           &srv.secret, &p);
  if (!err)
    tg_store_idem_purge(boot, tg_now(), NULL, NULL);
  tg_store_close(boot);
  if (err) {
    rc = fail(&p, err);
    goto out;
  }
  if (from != to) {
    char f[16], t[16];
    snprintf(f, sizeof(f), "%d", from);
    snprintf(t, sizeof(t), "%d", to);
    tg_log(TG_LOG_INFO, "schema migrated", "from", f, "to", t, NULL);
  }
  sopt.mode = TG_STORE_OPEN_CURRENT; /* workers: the schema is known now */
  tg_httpd_init(&srv.httpd, &sopt);

  /* every thread MHD starts inherits this mask; main takes the signals */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);

  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  unsigned threads = (unsigned)tg_config_int(cfg, "admin_threads");
  if (threads == 0)
    threads = ncpu > 0 ? (unsigned)ncpu : 2;
  char where[64], url[96], ports[16];
  /* the portal first: its public URL (which needs its port) is in the
   * mail both daemons write, and must be known before either serves */
  if (portal_on) {
    int pport = 0;
    portal.cfg = cfg;
    portal.secret = &srv.secret;
    tg_httpd_init(&portal.httpd, &sopt);
    portal.max_body = (size_t)tg_config_int(cfg, "portal_max_body");
    portal.secure_cookies = tg_config_bool(cfg, "portal_secure_cookies");
    portal.session.idle = tg_config_int(cfg, "portal_session_idle") / 1000;
    portal.session.absolute = tg_config_int(cfg, "portal_session_absolute") / 1000;
    snprintf(portal.gateway_url, sizeof(portal.gateway_url), "%s",
             tg_config_str(cfg, "portal_gateway_url"));
    pthread_mutex_init(&portal.write_lock, NULL);
    unsigned pthreads = (unsigned)tg_config_int(cfg, "portal_threads");
    if (pthreads == 0)
      pthreads = ncpu > 0 ? (unsigned)ncpu : 2;
    int lfd = listen_on((struct sockaddr *)&portal_addr, portal_addrlen, &pport, &p);
    if (lfd < 0) {
      rc = fail(&p, TG_EIO);
      goto out;
    }
    tg_addr_format((struct sockaddr *)&portal_addr, where);
    const char *pub = tg_config_str(cfg, "portal_public_url");
    if (*pub) {
      snprintf(portal.public_url, sizeof(portal.public_url), "%s", pub);
    } else {
      /* a wildcard address is reached on loopback from this machine */
      char host[64];
      snprintf(host, sizeof(host), "%s", where);
      if (strncmp(host, "0.0.0.0:", 8) == 0 || strncmp(host, "[::]:", 5) == 0)
        snprintf(host, sizeof(host), "127.0.0.1:%d", pport);
      snprintf(portal.public_url, sizeof(portal.public_url), "%s://%s",
               portal_key ? "https" : "http", host);
    }
    snprintf(srv.portal_url, sizeof(srv.portal_url), "%s", portal.public_url);
    if ((err = portal_start(&portal, lfd, portal_key, portal_cert, pthreads, &p))) {
      close(lfd);
      rc = fail(&p, err);
      goto out;
    }
    snprintf(ports, sizeof(ports), "%d", pport);
    tg_log(TG_LOG_INFO, "portal listening", "portal_url", portal.public_url, "portal_port", ports,
           NULL);
  }
  if ((err = adm_start(&srv, (struct sockaddr *)&addr, tls_key, tls_cert, threads, &port, &p))) {
    if (portal_on)
      portal_stop(&portal, 0);
    rc = fail(&p, err);
    goto out;
  }
  if (addr.ss_family == AF_INET)
    ((struct sockaddr_in *)&addr)->sin_port = htons((uint16_t)port);
  else
    ((struct sockaddr_in6 *)&addr)->sin6_port = htons((uint16_t)port);
  tg_addr_format((struct sockaddr *)&addr, where);
  snprintf(url, sizeof(url), "%s://%s", srv.httpd.tls ? "https" : "http", where);
  snprintf(ports, sizeof(ports), "%d", port);
  tg_log(TG_LOG_INFO, "admin API listening", "url", url, "port", ports, NULL);
  compactor.interval_ms = tg_config_int(cfg, "usage_compact_interval");
  adm_job_start(&compactor, &srv);
  adm_mailer_start(&srv);

  for (;;) {
    int sig = 0;
    if (sigwait(&sigs, &sig) != 0)
      continue;
    if (sig == SIGHUP)
      continue; /* logs go to stderr: nothing to reopen */
    char name[16];
    snprintf(name, sizeof(name), "%d", sig);
    tg_log(TG_LOG_INFO, "stopping", "signal", name, NULL);
    break;
  }
  if (portal_on)
    portal_stop(&portal, tg_config_int(cfg, "drain_timeout"));
  adm_stop(&srv, tg_config_int(cfg, "drain_timeout"));
  adm_mailer_stop();
  adm_job_stop(&compactor);
  tg_log(TG_LOG_INFO, "stopped", NULL);
  rc = EXIT_SUCCESS;
out:
  sodium_memzero(&srv.secret, sizeof(srv.secret));
  if (tls_key) {
    sodium_memzero(tls_key, strlen(tls_key));
    free(tls_key);
  }
  free(tls_cert);
  if (portal_key) {
    sodium_memzero(portal_key, strlen(portal_key));
    free(portal_key);
  }
  free(portal_cert);
  tg_config_free(cfg);
  return rc;
}
