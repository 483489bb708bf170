/*
 * health.c - active health checks of upstream targets, and the registry of
 * target health that the workers read (see gw_health_entry_t in gw.h).
 *
 * One thread, off the request path and away from the store. It never reads
 * a snapshot: whoever publishes one (the config thread) also hands this
 * module a list of probes copied out of it (gw_health_publish), so the
 * health thread neither holds a snapshot nor delays its release
 * (gw_workers_min_gen knows nothing of this thread).
 *
 * A probe: a non-blocking connect, a TLS handshake for https:// targets
 * (the workers' client context: same CA store, same name check), then
 *
 *   GET <target base path><healthcheck_path> HTTP/1.1
 *   Host: <host[:port] as in the target URL>
 *   User-Agent: tollgate-healthcheck
 *   Accept: * / *           (without the spaces)
 *   Connection: close
 *
 * and the status line of the answer (interim 1xx heads skipped), all within
 * healthcheck_timeout_ms. 2xx and 3xx are healthy; anything else fails: no
 * connection, TLS failure, timeout, another status, not HTTP/1.x. Every
 * probe in flight is multiplexed over one poll(); a target has at most one
 * in flight and the next starts healthcheck_interval_ms after the previous
 * one started (at once if that one took longer).
 *
 * Per target: unhealthy_threshold consecutive failures set `down`,
 * healthy_threshold consecutive successes clear it. A target starts up (a
 * new API takes traffic at once) and starts afresh whenever it re-enters
 * the probe list after leaving it (checks turned off and on again).
 *
 * Locking: the registry (reg_mu) is touched only by gw_health_entry_for.
 * The lists `pending` (published, not yet taken) and `active` (being
 * probed) change only under list_mu; the status thread reads `active`
 * under it for /metrics, the health thread without it (it alone replaces
 * `active`). A probe in flight owns copies of what it needs, so a new list
 * neither waits for nor cancels a probe.
 */
#include <errno.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "gateway/gw.h"
#include "gateway/tls.h"

#define HC_BUCKETS     1024
#define HC_RX_MAX      4096 /* status line plus interim heads: more is no answer we take */
#define HC_POLL_MAX_MS 1000

/* ---- the registry ---------------------------------------------------------- */

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static gw_health_entry_t *reg[HC_BUCKETS];

static unsigned key_hash(const char *k) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (; *k; k++)
    h = (h ^ (unsigned char)*k) * 16777619u;
  return h % HC_BUCKETS;
}

gw_health_entry_t *gw_health_entry_for(const gw_target_t *t) {
  char key[GW_TKEY_LEN];
  /* the same key as a worker's target state (worker.c tstate_slow) */
  snprintf(key, sizeof(key), "%s|%s|%d", t->id, t->host_header, t->https);
  unsigned b = key_hash(key);
  gw_health_entry_t *e;
  pthread_mutex_lock(&reg_mu);
  for (e = reg[b]; e; e = e->hnext)
    if (strcmp(e->key, key) == 0)
      goto out;
  if ((e = calloc(1, sizeof(*e)))) {
    memcpy(e->key, key, sizeof(key));
    e->hnext = reg[b];
    reg[b] = e;
  }
out:
  pthread_mutex_unlock(&reg_mu);
  return e;
}

/* ---- probe lists ----------------------------------------------------------- */

typedef struct hc_job {
  gw_health_entry_t *entry;
  char api[64];
  char target[GW_ID_LEN + 1];
  char host[256]; /* TLS server name and certificate check */
  bool https, resolved;
  struct sockaddr_storage addr;
  socklen_t addrlen;
  char *request; /* the whole request */
  size_t request_len;
  int interval_ms, timeout_ms, healthy, unhealthy;
} hc_job_t;

typedef struct hc_list {
  uint64_t gen; /* publication number, from 1 */
  hc_job_t *jobs;
  int njobs;
} hc_list_t;

static pthread_mutex_t list_mu = PTHREAD_MUTEX_INITIALIZER;
static hc_list_t *pending, *active;
static uint64_t list_gen;

static gw_server_t *hc_srv;
static pthread_t hc_thread;
static bool hc_started;
static atomic_bool hc_stop;
static int wake_fd = -1;

static void list_free(hc_list_t *l) {
  if (!l)
    return;
  for (int i = 0; i < l->njobs; i++)
    free(l->jobs[i].request);
  free(l->jobs);
  free(l);
}

static void wake(void) {
  uint64_t one = 1;
  if (wake_fd >= 0) {
    ssize_t w = write(wake_fd, &one, sizeof(one));
    (void)w; /* a full counter already wakes the thread */
  }
}

static int job_from(hc_job_t *j, const gw_route_t *r, const gw_target_t *t) {
  static const char fmt[] = "GET %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tollgate-healthcheck\r\n"
                            "Accept: */*\r\nConnection: close\r\n\r\n";
  j->entry = t->health;
  snprintf(j->api, sizeof(j->api), "%s", r->slug);
  snprintf(j->target, sizeof(j->target), "%s", t->id);
  snprintf(j->host, sizeof(j->host), "%s", t->host);
  j->https = t->https;
  j->resolved = t->resolved;
  j->addr = t->addr;
  j->addrlen = t->addrlen;
  j->interval_ms = r->hc_interval_ms;
  j->timeout_ms = r->hc_timeout_ms;
  j->healthy = r->healthy_threshold;
  j->unhealthy = r->unhealthy_threshold;
  int n = snprintf(NULL, 0, fmt, t->base_path, r->hc_path, t->host_header);
  if (n < 0 || !(j->request = malloc((size_t)n + 1)))
    return -1;
  snprintf(j->request, (size_t)n + 1, fmt, t->base_path, r->hc_path, t->host_header);
  j->request_len = (size_t)n;
  return 0;
}

int gw_health_publish(const gw_snapshot_t *snap) {
  int n = 0;
  for (int i = 0; i < snap->nroutes; i++)
    if (snap->routes[i].hc_path)
      n += snap->routes[i].ntargets;
  hc_list_t *l = calloc(1, sizeof(*l)), *old;
  if (!l || (n > 0 && !(l->jobs = calloc((size_t)n, sizeof(hc_job_t)))))
    goto oom;
  for (int i = 0; i < snap->nroutes; i++) {
    const gw_route_t *r = &snap->routes[i];
    for (int k = 0; r->hc_path && k < r->ntargets; k++) {
      if (!r->targets[k].health)
        continue;
      if (job_from(&l->jobs[l->njobs++], r, &r->targets[k]) != 0)
        goto oom;
    }
  }
  pthread_mutex_lock(&list_mu);
  l->gen = ++list_gen;
  old = pending; /* never taken: nobody else has it */
  pending = l;
  pthread_mutex_unlock(&list_mu);
  list_free(old);
  wake();
  return 0;
oom:
  list_free(l);
  return -1;
}

/* Take the pending list, if any. A target that was not in the previous
 * list starts afresh: up, no counts, probed at once. */
static void adopt(void) {
  pthread_mutex_lock(&list_mu);
  hc_list_t *l = pending, *old = active;
  uint64_t prev = active ? active->gen : 0;
  if (l) {
    active = l;
    pending = NULL;
  }
  pthread_mutex_unlock(&list_mu);
  if (!l)
    return;
  for (int i = 0; i < l->njobs; i++) {
    gw_health_entry_t *e = l->jobs[i].entry;
    if (prev == 0 || e->seen != prev) {
      atomic_store_explicit(&e->down, false, memory_order_relaxed);
      e->successes = e->failures = 0;
      e->next_due = 0;
    }
    e->seen = l->gen;
  }
  list_free(old);
}

/* ---- results --------------------------------------------------------------- */

/* Count one probe result against e's thresholds: 1 when it brought the
 * target back, -1 when it took it out, 0 when its state stays. */
static int hc_record(gw_health_entry_t *e, bool ok, int healthy, int unhealthy) {
  bool down = atomic_load_explicit(&e->down, memory_order_relaxed);
  atomic_fetch_add_explicit(ok ? &e->probes_ok : &e->probes_failed, 1, memory_order_relaxed);
  if (ok) {
    e->failures = 0;
    if (down && ++e->successes >= healthy) {
      e->successes = 0;
      atomic_store_explicit(&e->down, false, memory_order_relaxed);
      return 1;
    }
    return 0;
  }
  e->successes = 0;
  if (!down && ++e->failures >= unhealthy) {
    e->failures = 0;
    atomic_store_explicit(&e->down, true, memory_order_relaxed);
    return -1;
  }
  return 0;
}

static void report(gw_health_entry_t *e, const char *api, const char *target, int healthy,
                   int unhealthy, int status, const char *why) {
  bool ok = status >= 200 && status <= 399;
  int change = hc_record(e, ok, healthy, unhealthy);
  tg_log_level_t level = change < 0 ? TG_LOG_WARN : change > 0 ? TG_LOG_INFO : TG_LOG_DEBUG;
  if ((ok && change == 0) || !tg_log_enabled(level))
    return;
  const char *msg = change < 0   ? "upstream target unhealthy"
                    : change > 0 ? "upstream target healthy"
                                 : "health probe failed";
  char st[16];
  snprintf(st, sizeof(st), "%d", status);
  if (ok)
    tg_log(level, msg, "api", api, "target", target, NULL);
  else if (status)
    tg_log(level, msg, "api", api, "target", target, "reason", why, "status", st, NULL);
  else
    tg_log(level, msg, "api", api, "target", target, "reason", why, NULL);
}

/* ---- status lines ---------------------------------------------------------- */

/* Offset just past the empty line that ends the head at s, or 0 when it is
 * not all here (RFC 9112 2.2: a bare LF may end a line). */
static size_t head_end(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] != '\n')
      continue;
    if (i + 1 < n && s[i + 1] == '\n')
      return i + 2;
    if (i + 2 < n && s[i + 1] == '\r' && s[i + 2] == '\n')
      return i + 3;
  }
  return 0;
}

int gw_health_parse_status(const char *buf, size_t len) {
  static const char version[] = "HTTP/1.";
  size_t at = 0;
  for (;;) {
    const char *s = buf + at;
    size_t n = len - at;
    /* status-line = HTTP-version SP status-code SP [ reason-phrase ]
     * (RFC 9112 4); some servers end it right after the code */
    if (memcmp(s, version, n < 7 ? n : 7) != 0)
      return -1;
    if (n < 13)
      return 0;
    if (s[7] < '0' || s[7] > '9' || s[8] != ' ')
      return -1;
    int code = 0;
    for (int i = 9; i < 12; i++) {
      if (s[i] < '0' || s[i] > '9')
        return -1;
      code = code * 10 + (s[i] - '0');
    }
    if ((s[12] != ' ' && s[12] != '\r' && s[12] != '\n') || code < 100 || code > 599 || code == 101)
      return -1;
    if (code >= 200)
      return code;
    /* an interim response (RFC 9110 15.2): the final one follows its head */
    size_t end = head_end(s, n);
    if (end == 0)
      return 0;
    at += end;
  }
}

/* ---- probes ---------------------------------------------------------------- */

enum { P_CONNECT, P_HANDSHAKE, P_SEND, P_RECV };

typedef struct hc_probe {
  gw_health_entry_t *entry;
  int fd;
  SSL *ssl;
  int phase;
  bool rd, wr; /* readiness, as gw_io_* track it */
  char *request;
  size_t request_len, sent;
  int64_t deadline;
  int healthy, unhealthy;
  char api[64], target[GW_ID_LEN + 1];
  size_t rx_len;
  char rx[HC_RX_MAX];
} hc_probe_t;

static hc_probe_t **probes;
static int nprobes, capprobes;
static struct pollfd *pfds;

static int64_t mono_ms(void) {
  return tg_mono_us() / 1000;
}

static void probe_free(hc_probe_t *p) {
  if (p->ssl)
    SSL_free(p->ssl);
  if (p->fd >= 0)
    close(p->fd);
  free(p->request);
  free(p);
}

/* Record p's outcome (status 0: no answer, `why` says what failed) and free it. */
static void probe_finish(hc_probe_t *p, int status, const char *why) {
  p->entry->probing = false;
  report(p->entry, p->api, p->target, p->healthy, p->unhealthy, status, why);
  probe_free(p);
}

/* Room for one more probe and its pollfd (the wake fd takes pfds[0]). */
static bool probes_reserve(void) {
  if (nprobes < capprobes)
    return true;
  int cap = capprobes ? capprobes * 2 : 16;
  hc_probe_t **np = realloc(probes, sizeof(*np) * (size_t)cap);
  if (!np)
    return false;
  probes = np;
  struct pollfd *nf = realloc(pfds, sizeof(*nf) * ((size_t)cap + 1));
  if (!nf)
    return false;
  pfds = nf;
  capprobes = cap;
  return true;
}

static int probe_step(hc_probe_t *p, const char **why);

static void probe_start(const hc_job_t *j, int64_t now) {
  gw_health_entry_t *e = j->entry;
  e->next_due = now + j->interval_ms;
  if (!j->resolved) {
    report(e, j->api, j->target, j->healthy, j->unhealthy, 0, "host name not resolved");
    return;
  }
  if (j->https && !hc_srv->tls_client) {
    report(e, j->api, j->target, j->healthy, j->unhealthy, 0, "https upstreams disabled");
    return;
  }
  hc_probe_t *p = probes_reserve() ? calloc(1, sizeof(*p)) : NULL;
  if (!p || !(p->request = malloc(j->request_len))) {
    free(p); /* out of memory: try again next interval */
    return;
  }
  memcpy(p->request, j->request, j->request_len);
  p->request_len = j->request_len;
  p->entry = e;
  p->deadline = now + j->timeout_ms;
  p->healthy = j->healthy;
  p->unhealthy = j->unhealthy;
  memcpy(p->api, j->api, sizeof(p->api));
  memcpy(p->target, j->target, sizeof(p->target));
  e->probing = true;
  p->fd = socket(j->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (p->fd < 0) {
    probe_finish(p, 0, "socket");
    return;
  }
  int one = 1;
  setsockopt(p->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (j->https && !(p->ssl = gw_tls_client_new(hc_srv->tls_client, p->fd, j->host))) {
    probe_finish(p, 0, "tls setup");
    return;
  }
  if (connect(p->fd, (const struct sockaddr *)&j->addr, j->addrlen) == 0) {
    /* connected at once (loopback can): go on until something would block */
    const char *why = "";
    p->phase = p->ssl ? P_HANDSHAKE : P_SEND;
    p->rd = p->wr = true;
    int st = probe_step(p, &why);
    if (st != 0) {
      probe_finish(p, st > 0 ? st : 0, why);
      return;
    }
  } else if (errno == EINPROGRESS) {
    p->phase = P_CONNECT;
  } else {
    probe_finish(p, 0, "connect");
    return;
  }
  probes[nprobes++] = p;
}

/* Advance p as far as its readiness allows. Returns 0 while it waits (a
 * readiness flag it needs is false), else the status (> 0) or -1 with
 * *why set. */
static int probe_step(hc_probe_t *p, const char **why) {
  for (;;) {
    switch (p->phase) {
    case P_CONNECT: {
      int err = 0;
      socklen_t el = sizeof(err);
      if (!p->wr)
        return 0;
      if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0) {
        *why = "connect";
        return -1;
      }
      p->phase = p->ssl ? P_HANDSHAKE : P_SEND;
      p->rd = true;
      break;
    }
    case P_HANDSHAKE: {
      int h = gw_io_handshake(p->ssl, &p->rd, &p->wr);
      if (h == 0)
        return 0;
      if (h < 0) {
        *why = "tls handshake";
        return -1;
      }
      p->phase = P_SEND;
      break;
    }
    case P_SEND:
      while (p->sent < p->request_len) {
        ssize_t n = gw_io_write(p->fd, p->ssl, p->request + p->sent, p->request_len - p->sent,
                                &p->rd, &p->wr);
        if (n == GW_IO_AGAIN)
          return 0;
        if (n < 0) {
          *why = "send";
          return -1;
        }
        p->sent += (size_t)n;
      }
      p->phase = P_RECV;
      break;
    case P_RECV: {
      if (p->rx_len == sizeof(p->rx)) {
        *why = "no status line in the first 4 KiB";
        return -1;
      }
      ssize_t n =
          gw_io_read(p->fd, p->ssl, p->rx + p->rx_len, sizeof(p->rx) - p->rx_len, &p->rd, &p->wr);
      if (n == GW_IO_AGAIN)
        return 0;
      if (n < 0) {
        *why = "receive";
        return -1;
      }
      if (n == 0) {
        *why = "closed before a status line";
        return -1;
      }
      p->rx_len += (size_t)n;
      int st = gw_health_parse_status(p->rx, p->rx_len);
      if (st > 0) {
        *why = st <= 399 ? "" : "status";
        return st;
      }
      if (st < 0) {
        *why = "not an HTTP/1.x response";
        return -1;
      }
      break;
    }
    }
  }
}

static short probe_events(const hc_probe_t *p) {
  if (p->phase == P_CONNECT)
    return POLLOUT;
  return (short)((p->rd ? 0 : POLLIN) | (p->wr ? 0 : POLLOUT));
}

/* One turn: start what is due, wait for readiness or the next deadline,
 * advance, expire. */
static void health_turn(void) {
  int64_t now = mono_ms(), wait = HC_POLL_MAX_MS;
  for (int i = 0; active && i < active->njobs; i++) {
    const hc_job_t *j = &active->jobs[i];
    if (!j->entry->probing && j->entry->next_due <= now)
      probe_start(j, now);
    if (!j->entry->probing && j->entry->next_due - now < wait)
      wait = j->entry->next_due - now;
  }
  pfds[0] = (struct pollfd){.fd = wake_fd, .events = POLLIN};
  for (int i = 0; i < nprobes; i++) {
    pfds[i + 1] = (struct pollfd){.fd = probes[i]->fd, .events = probe_events(probes[i])};
    if (probes[i]->deadline - now < wait)
      wait = probes[i]->deadline - now;
  }
  int ready = poll(pfds, (nfds_t)nprobes + 1, wait < 0 ? 0 : (int)wait);
  if (ready > 0 && (pfds[0].revents & POLLIN)) {
    uint64_t v;
    ssize_t r = read(wake_fd, &v, sizeof(v));
    (void)r;
  }
  now = mono_ms();
  int kept = 0;
  for (int i = 0; i < nprobes; i++) {
    hc_probe_t *p = probes[i];
    short re = ready > 0 ? pfds[i + 1].revents : 0;
    if (re & (POLLIN | POLLHUP | POLLERR))
      p->rd = true;
    if (re & (POLLOUT | POLLHUP | POLLERR))
      p->wr = true;
    const char *why = "timeout";
    int st = re ? probe_step(p, &why) : 0;
    if (st == 0 && now >= p->deadline)
      st = -1, why = "timeout";
    if (st != 0)
      probe_finish(p, st > 0 ? st : 0, why);
    else
      probes[kept++] = p;
  }
  nprobes = kept;
}

static void *health_main(void *arg) {
  (void)arg;
  gw_thread_role("tg-health", true);
  while (!atomic_load(&hc_stop)) {
    adopt();
    health_turn();
  }
  for (int i = 0; i < nprobes; i++) {
    probes[i]->entry->probing = false;
    probe_free(probes[i]);
  }
  nprobes = 0;
  return NULL;
}

int gw_health_start(gw_server_t *srv, char *err, size_t errlen) {
  hc_srv = srv;
  if (!probes_reserve()) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  if ((wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
    snprintf(err, errlen, "cannot create the health thread's eventfd: %s", strerror(errno));
    return -1;
  }
  if (pthread_create(&hc_thread, NULL, health_main, NULL) != 0) {
    snprintf(err, errlen, "cannot start the health thread");
    close(wake_fd);
    wake_fd = -1;
    return -1;
  }
  hc_started = true;
  return 0;
}

void gw_health_stop(void) {
  if (hc_started) {
    atomic_store(&hc_stop, true);
    wake();
    pthread_join(hc_thread, NULL);
    hc_started = false;
  }
  if (wake_fd >= 0)
    close(wake_fd);
  wake_fd = -1;
  pthread_mutex_lock(&list_mu);
  list_free(pending);
  list_free(active);
  pending = active = NULL;
  pthread_mutex_unlock(&list_mu);
  free(probes);
  free(pfds);
  probes = NULL;
  pfds = NULL;
  capprobes = 0;
}

/* ---- metrics --------------------------------------------------------------- */

/* Append a formatted line if it fits whole. */
static void put(char *out, size_t cap, size_t *n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void put(char *out, size_t cap, size_t *n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int w = vsnprintf(out + *n, cap - *n, fmt, ap);
  va_end(ap);
  if (w > 0 && (size_t)w < cap - *n)
    *n += (size_t)w;
  else if (*n < cap)
    out[*n] = '\0';
}

size_t gw_health_metrics(char *out, size_t cap) {
  size_t n = 0;
  if (cap == 0)
    return 0;
  pthread_mutex_lock(&list_mu);
  put(out, cap, &n,
      "# HELP tollgate_upstream_target_up Whether active health checks let the target take "
      "requests (1) or hold it out (0); targets of APIs with a healthcheck_path.\n"
      "# TYPE tollgate_upstream_target_up gauge\n");
  for (int i = 0; active && i < active->njobs; i++) {
    const hc_job_t *j = &active->jobs[i];
    put(out, cap, &n, "tollgate_upstream_target_up{api=\"%s\",target=\"%s\"} %d\n", j->api,
        j->target, atomic_load_explicit(&j->entry->down, memory_order_relaxed) ? 0 : 1);
  }
  put(out, cap, &n,
      "# HELP tollgate_upstream_health_checks_total Active health check probes, by result.\n"
      "# TYPE tollgate_upstream_health_checks_total counter\n");
  for (int i = 0; active && i < active->njobs; i++) {
    const hc_job_t *j = &active->jobs[i];
    put(out, cap, &n,
        "tollgate_upstream_health_checks_total{api=\"%s\",target=\"%s\",result=\"healthy\"} "
        "%llu\n"
        "tollgate_upstream_health_checks_total{api=\"%s\",target=\"%s\",result=\"unhealthy\"} "
        "%llu\n",
        j->api, j->target,
        (unsigned long long)atomic_load_explicit(&j->entry->probes_ok, memory_order_relaxed),
        j->api, j->target,
        (unsigned long long)atomic_load_explicit(&j->entry->probes_failed, memory_order_relaxed));
  }
  pthread_mutex_unlock(&list_mu);
  return n;
}
