/*
 * httpd.h - the libmicrohttpd plumbing that tollgate-server's two daemons,
 * the admin API (admin-api/http.c) and the developer portal
 * (portal/http.c), share: one store connection per worker thread, bounded
 * request bodies, extra response headers, and starting a daemon with the
 * server's limits and stopping it gracefully.
 *
 * Built as its own library (tghttpd, core/meson.build) so that only
 * tollgate-server links libmicrohttpd; the rest of core knows nothing of
 * HTTP.
 *
 * Threads: a daemon's worker threads each open their store connection on
 * first use (tg_httpd_thread_store) and keep it; the daemon's list of them
 * is closed at tg_httpd_stop, after the threads ended. A worker thread
 * belongs to one daemon, so one thread-local slot serves both.
 */
#ifndef TG_HTTPD_H
#define TG_HTTPD_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/store.h"

#define TG_HTTPD_MAX_STORES  512 /* one per worker thread */
#define TG_HTTPD_MAX_HEADERS 8   /* extra response headers of one response */

typedef struct tg_httpd {
  struct MHD_Daemon *daemon;
  atomic_int inflight; /* requests between their first callback and completion */
  bool tls;
  tg_store_options_t store_opt;
  pthread_mutex_t stores_lock;
  tg_store_t *stores[TG_HTTPD_MAX_STORES];
  int nstores;
} tg_httpd_t;

/* Prepare h (no daemon yet); store_opt is copied. */
void tg_httpd_init(tg_httpd_t *h, const tg_store_options_t *store_opt);

typedef struct tg_httpd_config {
  const struct sockaddr *addr; /* where to listen, unless lfd >= 0 */
  int lfd;                     /* a listening socket to take over, or -1 */
  const char *tls_key_pem;     /* NULL: plain HTTP */
  const char *tls_cert_pem;
  unsigned threads, timeout_s, max_connections, per_ip_connections;
  const char *listen_key; /* the setting named in errors ("admin_listen") */
  const char *what;       /* "admin API", for errors and logs */
  MHD_AccessHandlerCallback on_request;
  MHD_RequestCompletedCallback on_completed;
  void *cls;
} tg_httpd_config_t;

/*
 * Start the daemon: a pool of c->threads worker threads, each polling
 * (poll(), not epoll: libmicrohttpd 0.9.75's MHD_quiesce_daemon races its
 * own epoll workers over removing the listen socket and aborts, about 1
 * stop in 200), strict HTTP for clients, 64 KiB of memory per connection.
 * *port (may be NULL) gets the port bound. TG_EIO naming c->listen_key.
 */
int tg_httpd_start(tg_httpd_t *h, const tg_httpd_config_t *c, int *port, tg_problem_t *p);

/* Stop accepting, let in-flight requests finish for up to drain_ms, stop
 * the daemon, close the threads' store connections. No-op without one. */
void tg_httpd_stop(tg_httpd_t *h, int64_t drain_ms);

/* This worker thread's store connection (opened on first use). */
tg_store_t *tg_httpd_thread_store(tg_httpd_t *h, tg_problem_t *p);

/* ---- request bodies ------------------------------------------------------------ */

typedef struct tg_httpd_body {
  char *data; /* NUL-terminated after len; NULL until the first byte */
  size_t len, cap, max;
  bool too_big;     /* over max: answer 413 */
  size_t discarded; /* bytes dropped once too_big */
} tg_httpd_body_t;

/* Start a body of at most max bytes; a declared Content-Length over it
 * (or unreadable) sets too_big before a byte is read. */
void tg_httpd_body_begin(tg_httpd_body_t *b, struct MHD_Connection *conn, size_t max);

/*
 * Take an upload chunk (MHD's upload_data/upload_size; *size is set to 0).
 * Past max the body is dropped and too_big set; the rest is read and
 * counted, and past 4x max the connection is cut. Returns MHD_YES, or
 * MHD_NO to close the connection (also when out of memory).
 */
enum MHD_Result tg_httpd_body_add(tg_httpd_body_t *b, const char *data, size_t *size);

/* Free the body; wipe: zero it first (passwords in forms). */
void tg_httpd_body_free(tg_httpd_body_t *b, bool wipe);

/* ---- extra response headers ------------------------------------------------------ */

typedef struct tg_httpd_headers {
  struct {
    const char *name; /* static */
    char *value;      /* malloc'd */
  } h[TG_HTTPD_MAX_HEADERS];
  int n;
} tg_httpd_headers_t;

/* Add a header (value formatted and copied; dropped beyond the maximum). */
void tg_httpd_header_vadd(tg_httpd_headers_t *hs, const char *name, const char *fmt, va_list ap);
/* Add them all to a response. */
void tg_httpd_headers_apply(const tg_httpd_headers_t *hs, struct MHD_Response *resp);
void tg_httpd_headers_free(tg_httpd_headers_t *hs);

#endif
