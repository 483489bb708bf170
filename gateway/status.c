/*
 * status.c - the gateway's status endpoint on status_listen (loopback by
 * default): GET /health and GET /metrics (Prometheus text format 0.0.4).
 * A small blocking server on its own thread: one request per connection,
 * bounded reads with a timeout, never on the request path.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"
#include "gateway/gw.h"

static pthread_t status_thread;
static int status_fd = -1;
static atomic_bool status_stop;
static gw_server_t *status_srv;

static uint64_t ld(_Atomic uint64_t *v) {
  return atomic_load_explicit(v, memory_order_relaxed);
}

static size_t render_metrics(gw_server_t *srv, char *out, size_t cap) {
  static const char *const le[GW_LAT_BUCKETS] = {"0.005", "0.01", "0.025", "0.05", "0.075",
                                                 "0.1",   "0.25", "0.5",   "0.75", "1",
                                                 "2.5",   "5",    "7.5",   "10",   "30"};
  static gw_stats_t sum; /* the status thread is single: one buffer is enough */
  gw_stats_sum(srv, &sum);
  gw_stats_t *st = &sum;
  size_t n = 0;
#define OUT(...)                                                                                   \
  do {                                                                                             \
    int w_ = snprintf(out + n, cap - n, __VA_ARGS__);                                              \
    if (w_ > 0 && (size_t)w_ < cap - n)                                                            \
      n += (size_t)w_;                                                                             \
  } while (0)
  OUT("# HELP tollgate_http_requests_total Requests answered, by status class.\n"
      "# TYPE tollgate_http_requests_total counter\n");
  for (int c = 1; c <= 5; c++)
    OUT("tollgate_http_requests_total{code=\"%dxx\"} %llu\n", c,
        (unsigned long long)ld(&st->requests[c]));
  OUT("# HELP tollgate_http_request_duration_seconds Time from request head to response end.\n"
      "# TYPE tollgate_http_request_duration_seconds histogram\n");
  uint64_t cum = 0;
  for (int b = 0; b < GW_LAT_BUCKETS; b++) {
    cum += ld(&st->latency_bucket[b]);
    OUT("tollgate_http_request_duration_seconds_bucket{le=\"%s\"} %llu\n", le[b],
        (unsigned long long)cum);
  }
  cum += ld(&st->latency_bucket[GW_LAT_BUCKETS]);
  OUT("tollgate_http_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
  OUT("tollgate_http_request_duration_seconds_sum %.6f\n", (double)ld(&st->latency_sum_us) / 1e6);
  OUT("tollgate_http_request_duration_seconds_count %llu\n", (unsigned long long)cum);
  OUT("# HELP tollgate_upstream_errors_total Upstream connect, reset, timeout and protocol "
      "errors.\n# TYPE tollgate_upstream_errors_total counter\n"
      "tollgate_upstream_errors_total %llu\n",
      (unsigned long long)ld(&st->upstream_errors));
  OUT("# HELP tollgate_bandwidth_bytes_total Bytes from clients (in) and to clients (out).\n"
      "# TYPE tollgate_bandwidth_bytes_total counter\n"
      "tollgate_bandwidth_bytes_total{direction=\"in\"} %llu\n"
      "tollgate_bandwidth_bytes_total{direction=\"out\"} %llu\n",
      (unsigned long long)ld(&st->bytes_in), (unsigned long long)ld(&st->bytes_out));
  OUT("# HELP tollgate_connections Client connections open now.\n"
      "# TYPE tollgate_connections gauge\ntollgate_connections %llu\n"
      "# HELP tollgate_connections_total Client connections accepted.\n"
      "# TYPE tollgate_connections_total counter\ntollgate_connections_total %llu\n",
      (unsigned long long)ld(&st->connections_open),
      (unsigned long long)ld(&st->connections_total));
  OUT("# HELP tollgate_io_uring_workers Workers that send upstream requests through io_uring "
      "(gateway_io_uring).\n# TYPE tollgate_io_uring_workers gauge\ntollgate_io_uring_workers %d\n"
      "# HELP tollgate_io_uring_sends_total Upstream sends made through io_uring.\n"
      "# TYPE tollgate_io_uring_sends_total counter\ntollgate_io_uring_sends_total %llu\n"
      "# HELP tollgate_io_uring_calls_total io_uring_enter calls that made them (sends per call: "
      "the batching).\n# TYPE tollgate_io_uring_calls_total counter\n"
      "tollgate_io_uring_calls_total %llu\n",
      atomic_load(&srv->rings), (unsigned long long)ld(&st->ring_sends),
      (unsigned long long)ld(&st->ring_calls));
  gw_snapshot_t *snap = atomic_load(&srv->current);
  OUT("# HELP tollgate_config_generation Configuration snapshot the workers use.\n"
      "# TYPE tollgate_config_generation gauge\ntollgate_config_generation %llu\n"
      "# HELP tollgate_routes APIs routed.\n# TYPE tollgate_routes gauge\ntollgate_routes %d\n",
      (unsigned long long)(snap ? snap->gen : 0), snap ? snap->nroutes : 0);
  OUT("# HELP tollgate_rejected_requests_total Requests the gateway refused itself, by reason "
      "(not billable).\n# TYPE tollgate_rejected_requests_total counter\n");
  for (int r = 1; r < GW_R_N; r++)
    OUT("tollgate_rejected_requests_total{reason=\"%s\"} %llu\n", gw_reason_name((gw_reason_t)r),
        (unsigned long long)atomic_load_explicit(&srv->rejected[r], memory_order_relaxed));
  OUT("# HELP tollgate_api_keys API keys loaded (every status).\n# TYPE tollgate_api_keys gauge\n"
      "tollgate_api_keys %zu\n",
      srv->policy ? gw_policy_nkeys(srv->policy) : (size_t)0);
  gw_meter_stats_t ms;
  gw_meter_stats(&ms);
  double lag = ms.last_flush_ms ? (double)(tg_now_ms() - ms.last_flush_ms) / 1000.0 : 0.0;
  OUT("# HELP tollgate_usage_flushes_total Usage flushes written to the store.\n"
      "# TYPE tollgate_usage_flushes_total counter\ntollgate_usage_flushes_total %llu\n"
      "# HELP tollgate_usage_flush_failures_total Usage flushes that failed (rows kept, retried).\n"
      "# TYPE tollgate_usage_flush_failures_total counter\n"
      "tollgate_usage_flush_failures_total %llu\n"
      "# HELP tollgate_usage_rows_written_total Usage rows written to the usage journal.\n"
      "# TYPE tollgate_usage_rows_written_total counter\ntollgate_usage_rows_written_total %llu\n"
      "# HELP tollgate_usage_rows_dropped_total Usage rows dropped after a long store outage.\n"
      "# TYPE tollgate_usage_rows_dropped_total counter\ntollgate_usage_rows_dropped_total %llu\n"
      "# HELP tollgate_usage_pending_rows Usage rows waiting to be written.\n"
      "# TYPE tollgate_usage_pending_rows gauge\ntollgate_usage_pending_rows %llu\n"
      "# HELP tollgate_usage_flush_lag_seconds Time since the last successful usage flush.\n"
      "# TYPE tollgate_usage_flush_lag_seconds gauge\ntollgate_usage_flush_lag_seconds %.3f\n"
      "# HELP tollgate_usage_folds_total Usage journal folds into the ledger.\n"
      "# TYPE tollgate_usage_folds_total counter\ntollgate_usage_folds_total %llu\n"
      "# HELP tollgate_usage_fold_failures_total Usage journal folds that failed (retried).\n"
      "# TYPE tollgate_usage_fold_failures_total counter\n"
      "tollgate_usage_fold_failures_total %llu\n"
      "# HELP tollgate_usage_folded_rows_total Ledger rows written by usage journal folds.\n"
      "# TYPE tollgate_usage_folded_rows_total counter\ntollgate_usage_folded_rows_total %llu\n",
      (unsigned long long)ms.flushes, (unsigned long long)ms.flush_failures,
      (unsigned long long)ms.rows_written, (unsigned long long)ms.rows_dropped,
      (unsigned long long)ms.pending, lag, (unsigned long long)ms.folds,
      (unsigned long long)ms.fold_failures, (unsigned long long)ms.rows_folded);
#undef OUT
  return n + gw_health_metrics(out + n, cap - n);
}

static void reply(int fd, int status, const char *type, const char *body, size_t len) {
  char head[256];
  int hl = snprintf(head, sizeof(head),
                    "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                    "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                    status, status == 200 ? "OK" : (status == 404 ? "Not Found" : "Unavailable"),
                    type, len);
  ssize_t w = write(fd, head, (size_t)hl);
  if (w == hl && len)
    w = write(fd, body, len);
  (void)w;
}

static void serve_one(int fd) {
  char req[4096];
  size_t got = 0;
  /* at most 2 s for the request head */
  while (got < sizeof(req) - 1 && !memmem(req, got, "\r\n\r\n", 4)) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 2000) <= 0)
      return;
    ssize_t n = read(fd, req + got, sizeof(req) - 1 - got);
    if (n <= 0)
      return;
    got += (size_t)n;
  }
  req[got] = '\0';
  if (strncmp(req, "GET /health ", 12) == 0 || strncmp(req, "HEAD /health ", 13) == 0) {
    char body[256];
    gw_snapshot_t *snap = atomic_load(&status_srv->current);
    bool ready = atomic_load(&status_srv->ready) && !atomic_load(&status_srv->stopping);
    int n = snprintf(body, sizeof(body),
                     "{\"status\":\"%s\",\"workers\":%d,\"routes\":%d,\"config_generation\":%llu}",
                     ready ? "ok" : "unavailable", status_srv->nworkers, snap ? snap->nroutes : 0,
                     (unsigned long long)(snap ? snap->gen : 0));
    reply(fd, ready ? 200 : 503, "application/json", body, (size_t)n);
  } else if (strncmp(req, "GET /metrics ", 13) == 0) {
    static char body[1024 * 1024]; /* per-target health lines included */
    size_t n = render_metrics(status_srv, body, sizeof(body));
    reply(fd, 200, "text/plain; version=0.0.4; charset=utf-8", body, n);
  } else {
    reply(fd, 404, "application/json", "{\"error\":\"try /health or /metrics\"}", 35);
  }
}

static void *status_main(void *arg) {
  (void)arg;
  gw_thread_role("tg-status", true);
  while (!atomic_load(&status_stop)) {
    struct pollfd p = {.fd = status_fd, .events = POLLIN};
    if (poll(&p, 1, 200) <= 0)
      continue;
    int fd = accept4(status_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
      continue;
    serve_one(fd);
    close(fd);
  }
  return NULL;
}

int gw_status_start(gw_server_t *srv, const struct sockaddr *addr, socklen_t len, char *err,
                    size_t errlen) {
  status_srv = srv;
  status_fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (status_fd < 0 || setsockopt(status_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      bind(status_fd, addr, len) != 0 || listen(status_fd, 64) != 0) {
    snprintf(err, errlen, "cannot listen on status_listen: %s", strerror(errno));
    if (status_fd >= 0)
      close(status_fd);
    status_fd = -1;
    return -1;
  }
  if (pthread_create(&status_thread, NULL, status_main, NULL) != 0) {
    snprintf(err, errlen, "cannot start the status thread");
    return -1;
  }
  return 0;
}

int gw_status_port(void) {
  struct sockaddr_storage ss;
  socklen_t sl = sizeof(ss);
  if (status_fd < 0 || getsockname(status_fd, (struct sockaddr *)&ss, &sl) != 0)
    return 0;
  return ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                                 : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

void gw_status_stop(void) {
  if (status_fd < 0)
    return;
  atomic_store(&status_stop, true);
  pthread_join(status_thread, NULL);
  close(status_fd);
  status_fd = -1;
}
