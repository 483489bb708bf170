/*
 * httpd.c - libmicrohttpd plumbing shared by the admin API and the portal
 * (httpd.h).
 */
#include "core/httpd.h"

#include <errno.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"

static _Thread_local tg_store_t *thread_store;

void tg_httpd_init(tg_httpd_t *h, const tg_store_options_t *store_opt) {
  memset(h, 0, sizeof(*h));
  h->store_opt = *store_opt;
  atomic_init(&h->inflight, 0);
  pthread_mutex_init(&h->stores_lock, NULL);
}

tg_store_t *tg_httpd_thread_store(tg_httpd_t *h, tg_problem_t *p) {
  if (thread_store)
    return thread_store;
  tg_store_t *s = NULL;
  if (tg_store_open(&h->store_opt, &s, NULL, NULL, p))
    return NULL;
  pthread_mutex_lock(&h->stores_lock);
  if (h->nstores == TG_HTTPD_MAX_STORES) {
    pthread_mutex_unlock(&h->stores_lock);
    tg_store_close(s);
    tg_problem_set(p, TG_ESTORE, "", "too many store connections");
    return NULL;
  }
  h->stores[h->nstores++] = s;
  pthread_mutex_unlock(&h->stores_lock);
  thread_store = s;
  return s;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
  const char *what = cls;
  char msg[512];
  vsnprintf(msg, sizeof(msg), fmt, ap);
  size_t n = strlen(msg);
  while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
    msg[--n] = '\0';
  tg_log(TG_LOG_WARN, "libmicrohttpd", "daemon", what, "detail", msg, NULL);
}

int tg_httpd_start(tg_httpd_t *h, const tg_httpd_config_t *c, int *port, tg_problem_t *p) {
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG | MHD_USE_ITC;
  int family = AF_INET;
  if (c->lfd >= 0) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(c->lfd, (struct sockaddr *)&ss, &len) == 0)
      family = ss.ss_family;
  } else {
    family = c->addr->sa_family;
  }
  if (family == AF_INET6)
    flags |= MHD_USE_IPv6;
  if (c->tls_key_pem)
    flags |= MHD_USE_TLS;
  struct MHD_OptionItem where[] = {
      c->lfd >= 0 ? (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, c->lfd, NULL}
                  : (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, (void *)c->addr},
      {MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)c->tls_key_pem},
      {MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)c->tls_cert_pem},
      {MHD_OPTION_END, 0, NULL},
  };
  if (!c->tls_key_pem)
    where[1] = where[3];
  h->tls = c->tls_key_pem != NULL; /* before the first request: cookies depend on it */
  h->daemon = MHD_start_daemon(
      flags, 0, NULL, NULL, c->on_request, c->cls, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log,
      (void *)c->what, MHD_OPTION_THREAD_POOL_SIZE, c->threads, MHD_OPTION_CONNECTION_TIMEOUT,
      c->timeout_s, MHD_OPTION_CONNECTION_LIMIT, c->max_connections,
      MHD_OPTION_PER_IP_CONNECTION_LIMIT, c->per_ip_connections, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
      (size_t)64 * 1024, MHD_OPTION_STRICT_FOR_CLIENT, 1, MHD_OPTION_NOTIFY_COMPLETED,
      c->on_completed, c->cls, MHD_OPTION_ARRAY, where, MHD_OPTION_END);
  if (!h->daemon)
    return tg_problem_set(p, TG_EIO, c->listen_key,
                          "cannot start the %s (address in use, or bad TLS files?)", c->what);
  if (port) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    *port = info ? info->port : 0;
  }
  return TG_OK;
}

void tg_httpd_stop(tg_httpd_t *h, int64_t drain_ms) {
  if (!h->daemon)
    return;
  /* the listen socket is ours after quiescing, but worker threads may
   * still hold it in their poll sets: close it only after they stop */
  MHD_socket lfd = MHD_quiesce_daemon(h->daemon);
  if (lfd != MHD_INVALID_SOCKET)
    shutdown(lfd, SHUT_RDWR); /* refuse new connections now; fd stays valid */
  int64_t deadline = tg_now_ms() + drain_ms;
  while (atomic_load(&h->inflight) > 0 && tg_now_ms() < deadline) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  MHD_stop_daemon(h->daemon);
  h->daemon = NULL;
  if (lfd != MHD_INVALID_SOCKET)
    close(lfd);
  pthread_mutex_lock(&h->stores_lock);
  for (int i = 0; i < h->nstores; i++)
    tg_store_close(h->stores[i]);
  h->nstores = 0;
  pthread_mutex_unlock(&h->stores_lock);
}

/* ---- request bodies ------------------------------------------------------------ */

void tg_httpd_body_begin(tg_httpd_body_t *b, struct MHD_Connection *conn, size_t max) {
  memset(b, 0, sizeof(*b));
  b->max = max;
  const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
  if (cl) {
    char *end;
    errno = 0;
    unsigned long long n = strtoull(cl, &end, 10);
    if (errno || *end || n > max)
      b->too_big = true;
  }
}

enum MHD_Result tg_httpd_body_add(tg_httpd_body_t *b, const char *data, size_t *size) {
  size_t n = *size;
  *size = 0;
  if (!b->too_big && n > b->max - b->len) {
    /* a chunked body that outgrew the limit: MHD cannot answer before the
     * upload ends, so the rest is read and dropped, and 413 follows */
    b->too_big = true;
    tg_httpd_body_free(b, true);
  }
  if (b->too_big) {
    b->discarded += n;
    return b->discarded > 4 * b->max ? MHD_NO : MHD_YES;
  }
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n)
      cap *= 2;
    if (cap > b->max)
      cap = b->max;
    char *nb = realloc(b->data, cap + 1);
    if (!nb)
      return MHD_NO;
    b->data = nb;
    b->cap = cap;
  }
  memcpy(b->data + b->len, data, n);
  b->len += n;
  b->data[b->len] = '\0';
  return MHD_YES;
}

void tg_httpd_body_free(tg_httpd_body_t *b, bool wipe) {
  if (b->data && wipe)
    sodium_memzero(b->data, b->len);
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* ---- extra response headers ------------------------------------------------------ */

void tg_httpd_header_vadd(tg_httpd_headers_t *hs, const char *name, const char *fmt, va_list ap) {
  char value[2048];
  if (hs->n == TG_HTTPD_MAX_HEADERS)
    return;
  vsnprintf(value, sizeof(value), fmt, ap);
  char *copy = strdup(value);
  if (!copy)
    return;
  hs->h[hs->n].name = name;
  hs->h[hs->n].value = copy;
  hs->n++;
}

void tg_httpd_headers_apply(const tg_httpd_headers_t *hs, struct MHD_Response *resp) {
  for (int i = 0; i < hs->n; i++)
    MHD_add_response_header(resp, hs->h[i].name, hs->h[i].value);
}

void tg_httpd_headers_free(tg_httpd_headers_t *hs) {
  for (int i = 0; i < hs->n; i++)
    free(hs->h[i].value);
  hs->n = 0;
}
