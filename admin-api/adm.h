/*
 * adm.h - the admin REST API of tollgate-server: request and response
 * plumbing shared by the libmicrohttpd glue (http.c), the route table and
 * handlers (routes.c) and main (server.c).
 *
 * A request goes: MHD access callback (http.c) -> body collected up to
 * admin_max_body -> adm_dispatch: route match (404/405), authentication
 * (401), scope (403), write transaction + Idempotency-Key for mutations,
 * handler -> commit or roll back -> response queued. Handlers never talk
 * to MHD and never write SQL: they read the adm_req_t, call core services,
 * and fill the response with adm_json / adm_fail.
 */
#ifndef ADM_H
#define ADM_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "core/config.h"
#include "core/error.h"
#include "core/httpd.h"
#include "core/idempotency.h"
#include "core/keys.h"
#include "core/store.h"

#define ADM_MAX_PARAMS     3 /* {placeholders} in one route */
#define ADM_REQUEST_ID_MAX 64

typedef struct adm_server {
  const tg_config_t *cfg;
  tg_secret_t secret;
  tg_httpd_t httpd; /* daemon, worker store connections, in-flight count */
  size_t max_body;
  pthread_mutex_t write_lock; /* one writer at a time: waiting here is
                                 cheaper than SQLite's busy back-off */
  char portal_url[512];       /* the portal's public URL, for links in mail ("" until it starts) */
} adm_server_t;

typedef struct adm_req {
  adm_server_t *srv;
  struct MHD_Connection *conn;
  const char *method; /* borrowed from MHD for the request's life */
  const char *path;
  char request_id[ADM_REQUEST_ID_MAX + 1];
  int64_t started_ms;
  tg_httpd_body_t in; /* the request body, at most max_body */
  tg_store_t *store;  /* this thread's connection */
  json_t *token;      /* the authenticated admin token's row */
  const char *actor;  /* token name, for the audit log */
  char *params[ADM_MAX_PARAMS];
  /* response */
  int status;
  char *resp_body;
  size_t resp_len;
  const char *resp_type;
  tg_httpd_headers_t hdrs; /* extra response headers */
  bool responded;
  /* a streamed response (adm_stream), with its own store connection */
  struct tg_report *stream;
  tg_store_t *stream_store;
  const char *stream_data;
  size_t stream_len, stream_off;
  bool stream_done;
} adm_req_t;

/* ---- responses (handlers) ------------------------------------------------ */

/* Respond with `body` (new reference, consumed) as application/json. */
void adm_json(adm_req_t *r, int status, json_t *body);

/* Respond with raw bytes (copied). */
void adm_raw(adm_req_t *r, int status, const char *type, const char *data, size_t len);

/* Respond 204 No Content. */
void adm_no_content(adm_req_t *r);

/* Answer with a report streamed in chunks (Transfer-Encoding: chunked).
 * The request takes over `rep` and `store` (a connection of its own,
 * adm_open_store) and closes both when the transfer ends. An error half-way
 * aborts the transfer, so a client never takes a cut report for a whole one. */
void adm_stream(adm_req_t *r, int status, const char *type, struct tg_report *rep,
                tg_store_t *store);

/* A store connection of its own (for a stream that outlives the handler). */
tg_store_t *adm_open_store(adm_server_t *srv, tg_problem_t *p);

/* Add a response header (value formatted; copied). */
void adm_header(adm_req_t *r, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Respond with application/problem+json (RFC 9457): type
 * "https://tollgate.dev/problems/<slug>", title, status, detail, instance
 * (the request path), request_id, and for validation problems an
 * "errors" array of {pointer, detail} from p->items.
 */
void adm_problem(adm_req_t *r, int status, const char *slug, const char *title,
                 const tg_problem_t *p, const char *detail_fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* Respond to a failed core call: map rc to a status and problem type. */
void adm_fail(adm_req_t *r, int rc, const tg_problem_t *p);

/* ---- request access -------------------------------------------------------- */

/* Request header value or NULL. */
const char *adm_header_in(adm_req_t *r, const char *name);
/* Query parameter or NULL. */
const char *adm_query(adm_req_t *r, const char *name);

/*
 * Parse the body as a JSON object, checking Content-Type (415 unless
 * application/json or, when merge_patch, application/merge-patch+json),
 * syntax (400, naming line and column) and duplicates. On failure the
 * response is already set and NULL is returned. New reference.
 */
json_t *adm_body_object(adm_req_t *r, bool merge_patch);

/* Record an audit row for this request (actor = the token's name). On
 * failure the response is set to the error and false is returned. */
bool adm_audit(adm_req_t *r, const char *action, tg_entity_t ent, const char *id,
               const json_t *before, const json_t *after);

/* ---- dispatch (routes.c) ------------------------------------------------- */

/* Route, authenticate, authorise and run the handler; sets the response. */
void adm_dispatch(adm_req_t *r);

/* Every route as "METHOD /pattern" lines, for tests and the OpenAPI check. */
void adm_routes_print(FILE *out);

/* ---- server (http.c) ------------------------------------------------------ */

/* The calling thread's store connection (opened on first use). */
tg_store_t *adm_thread_store(adm_server_t *srv, tg_problem_t *p);

/* Start MHD on the configured address; fills *port with the bound port. */
int adm_start(adm_server_t *srv, const struct sockaddr *addr, const char *tls_key_pem,
              const char *tls_cert_pem, unsigned threads, int *port, tg_problem_t *p);

/* Stop accepting, let in-flight requests finish (up to drain_ms), stop. */
void adm_stop(adm_server_t *srv, int64_t drain_ms);

#endif
