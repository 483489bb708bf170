/*
 * portal.h - the developer portal of tollgate-server: a second
 * libmicrohttpd daemon (default port 8002) serving server-rendered HTML
 * pages from web/templates, the portal's CSS/JS and vendored libraries,
 * and two small JSON endpoints (API documents, usage series).
 *
 * A request goes: MHD access callback (http.c) -> form body collected up
 * to portal_max_body (413 page above) -> portal_dispatch (pages.c): route
 * match (404/405 page), session from the cookie (tg_session_lookup), a
 * signed-in route without a session redirects to /login, every POST's CSRF
 * token checked (403 page) -> handler -> page rendered by the template
 * engine, or a 303 redirect after a successful POST (post/redirect/get).
 *
 * Security headers on every response (http.c): a CSP without inline
 * script or style (the API reference page alone allows RapiDoc's shadow
 * style, see web/README.md), frame-ancestors 'none', nosniff,
 * Referrer-Policy no-referrer (reset links carry their token in the URL),
 * Cache-Control no-store on everything but static files.
 *
 * Access control: every route under /apps/{id} loads the app and answers
 * 404 unless it belongs to the signed-in developer, before anything else
 * (the same 404 as for an id that does not exist).
 */
#ifndef PORTAL_H
#define PORTAL_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "core/accounts.h"
#include "core/config.h"
#include "core/httpd.h"
#include "core/store.h"
#include "core/throttle.h"
#include "core/tmpl.h"
#include "portal/form.h"

#define PORTAL_MAX_PARAMS 3
#define PORTAL_MAX_FIELDS 32

/* A static file, read at start and served from memory. */
typedef struct portal_file {
  char *path; /* URL path: "/static/vendor/uplot/uPlot.min.css" */
  const char *type;
  char *data;
  size_t len;
  char etag[24];
} portal_file_t;

typedef struct portal_server {
  const tg_config_t *cfg;
  const tg_secret_t *secret;
  tg_httpd_t httpd; /* daemon, worker store connections, in-flight count, tls */
  tg_tmpl_set_t *tmpl;
  portal_file_t *files;
  size_t nfiles;
  size_t max_body;
  bool secure_cookies;
  tg_signup_mode_t signup;
  tg_session_limits_t session;
  char public_url[512];
  char gateway_url[512];
  tg_throttle_t *throttle;
  pthread_mutex_t write_lock;
} portal_server_t;

typedef struct portal_req {
  portal_server_t *srv;
  struct MHD_Connection *conn;
  const char *method, *path; /* borrowed from MHD */
  char request_id[40];
  int64_t started_ms;
  char client[64];    /* the peer address, for throttles and sessions */
  tg_httpd_body_t in; /* the form body, at most max_body */
  portal_field_t fields[PORTAL_MAX_FIELDS];
  int nfields;
  bool form_bad; /* the body was not a well-formed urlencoded form */
  tg_store_t *store;
  /* the session, when signed in */
  json_t *session, *dev; /* new references */
  char session_token[TG_TOKEN_MAX_LEN + 1];
  char csrf[TG_CSRF_LEN + 1];
  char *params[PORTAL_MAX_PARAMS];
  /* response */
  int status;
  char *resp_body;
  size_t resp_len;
  const char *resp_type;
  const portal_file_t *file; /* a static file instead of resp_body */
  bool docs_csp;             /* the API reference page's CSP */
  bool cacheable;            /* static: public caching allowed */
  tg_httpd_headers_t hdrs;   /* extra response headers */
  bool responded;
} portal_req_t;

/* ---- http.c: responses and request access ---------------------------------- */

/* A form field's value ("" when absent, never NULL). */
const char *portal_field(portal_req_t *r, const char *name);
/* A query parameter or NULL. */
const char *portal_query(portal_req_t *r, const char *name);
/* A request header or NULL. */
const char *portal_header_in(portal_req_t *r, const char *name);
/* A cookie or NULL. */
const char *portal_cookie(portal_req_t *r, const char *name);

/* Add a response header (copied). */
void portal_header(portal_req_t *r, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Set a cookie with the portal's attributes (HttpOnly, SameSite=Lax,
 * Path=/, Secure when served over TLS); max_age < 0 deletes it. */
void portal_set_cookie(portal_req_t *r, const char *name, const char *value, int64_t max_age);

/* Render page template `name` with `ctx` (borrowed; the layout's common
 * members are added: signed-in developer, CSRF token, nav). */
void portal_page(portal_req_t *r, int status, const char *name, json_t *ctx);
/* A page that only says something (errors: 403, 404, 405, 413, 429, 500). */
void portal_message(portal_req_t *r, int status, const char *title, const char *text);
/* 303 See Other to a path of the portal. */
void portal_redirect(portal_req_t *r, const char *location);
/* Raw bytes (copied), e.g. JSON. */
void portal_raw(portal_req_t *r, int status, const char *type, const char *data, size_t len);
/* A static file by URL path, or NULL. */
const portal_file_t *portal_file_find(portal_server_t *srv, const char *path);

/* This thread's store connection. */
tg_store_t *portal_thread_store(portal_server_t *srv, tg_problem_t *p);

/* ---- pages.c ------------------------------------------------------------------- */

void portal_dispatch(portal_req_t *r);
void portal_routes_print(FILE *out);

/* ---- http.c: the daemon --------------------------------------------------------- */

/* Load templates and static files from portal_web_dir and start the
 * daemon on the listening socket lfd (taken over on success).
 * srv->httpd must be initialised and srv->public_url set. */
int portal_start(portal_server_t *srv, int lfd, const char *tls_key_pem, const char *tls_cert_pem,
                 unsigned threads, tg_problem_t *p);
/* Stop accepting, let in-flight requests finish (up to drain_ms), stop. */
void portal_stop(portal_server_t *srv, int64_t drain_ms);

#endif
