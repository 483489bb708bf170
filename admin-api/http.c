/*
 * http.c - libmicrohttpd glue for the admin API: request contexts, bounded
 * body collection, responses and problem documents, per-thread store
 * connections, start and graceful stop.
 *
 * Invariants:
 *   - a request body never grows past admin_max_body: the first byte over
 *     it answers 413 and the rest is not read;
 *   - every response carries X-Request-Id and Cache-Control: no-store (the
 *     admin API hands out secrets);
 *   - the request context is freed only in MHD's completion callback, never
 *     inside the access handler that uses it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "admin-api/adm.h"
#include "core/report.h"
#include "core/lifecycle.h"
#include "core/log.h"
#include "core/util.h"

#define PROBLEM_BASE "https://tollgate.dev/problems/"

/* ---- per-thread store connections ----------------------------------------- */

tg_store_t *adm_thread_store(adm_server_t *srv, tg_problem_t *p) {
  return tg_httpd_thread_store(&srv->httpd, p);
}

/* ---- responses -------------------------------------------------------------- */

/* Drop the body set so far. Headers stay: handlers add them before the
 * body (ETag, Location, Link); adm_problem drops those that describe a
 * success. */
static void reset_response(adm_req_t *r) {
  free(r->resp_body);
  r->resp_body = NULL;
  r->resp_len = 0;
}

void adm_raw(adm_req_t *r, int status, const char *type, const char *data, size_t len) {
  reset_response(r);
  r->status = status;
  r->resp_type = type;
  r->resp_body = malloc(len + 1);
  if (r->resp_body) {
    memcpy(r->resp_body, data, len);
    r->resp_len = len;
  }
  r->responded = true;
}

void adm_json(adm_req_t *r, int status, json_t *body) {
  char *text = body ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
  json_decref(body);
  if (!text) {
    reset_response(r);
    r->status = 500;
    r->resp_type = "application/problem+json";
    r->resp_body = NULL;
    r->responded = true;
    return;
  }
  reset_response(r);
  r->status = status;
  r->resp_type = "application/json";
  r->resp_body = text;
  r->resp_len = strlen(text);
  r->responded = true;
}

void adm_no_content(adm_req_t *r) {
  reset_response(r);
  r->status = 204;
  r->resp_type = NULL;
  r->responded = true;
}

void adm_header(adm_req_t *r, const char *name, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  tg_httpd_header_vadd(&r->hdrs, name, fmt, ap);
  va_end(ap);
}

void adm_problem(adm_req_t *r, int status, const char *slug, const char *title,
                 const tg_problem_t *p, const char *detail_fmt, ...) {
  char detail[TG_PROBLEM_DETAIL_MAX + 64], type[128];
  va_list ap;
  va_start(ap, detail_fmt);
  vsnprintf(detail, sizeof(detail), detail_fmt, ap);
  va_end(ap);
  snprintf(type, sizeof(type), PROBLEM_BASE "%s", slug);
  /* headers of a success (ETag, Location, Link) must not ride on an
   * error; Allow, WWW-Authenticate and Retry-After belong to it */
  int kept = 0;
  for (int i = 0; i < r->hdrs.n; i++) {
    const char *n = r->hdrs.h[i].name;
    bool success_only = strcmp(n, "Location") == 0 || strcmp(n, "Link") == 0 ||
                        (strcmp(n, "ETag") == 0 && status != 412); /* 412 says what is current */
    if (success_only)
      free(r->hdrs.h[i].value);
    else
      r->hdrs.h[kept++] = r->hdrs.h[i];
  }
  r->hdrs.n = kept;
  json_t *doc =
      json_pack("{s:s, s:s, s:i, s:s, s:s, s:s}", "type", type, "title", title, "status", status,
                "detail", detail, "instance", r->path ? r->path : "", "request_id", r->request_id);
  if (doc && p && p->nitems > 0) {
    json_t *errors = json_array();
    for (int i = 0; errors && i < p->nitems; i++)
      json_array_append_new(errors, json_pack("{s:s, s:s}", "pointer", p->items[i].field, "detail",
                                              p->items[i].detail));
    json_object_set_new(doc, "errors", errors);
  } else if (doc && p && p->field[0] && p->code == TG_EINVAL) {
    json_object_set_new(doc, "errors",
                        json_pack("[{s:s, s:s}]", "pointer", p->field, "detail", p->detail));
  }
  adm_json(r, status, doc);
  r->resp_type = "application/problem+json";
}

/* A detail sentence for the client: the core's own, prefixed by the field
 * when it names one that is not a JSON pointer already in the sentence. */
static void describe(const tg_problem_t *p, int rc, char *out, size_t cap) {
  if (!p || !p->detail[0])
    snprintf(out, cap, "%s", tg_strerror(rc));
  else if (p->field[0] && p->field[0] == '/')
    snprintf(out, cap, "%s %s", p->field, p->detail);
  else
    snprintf(out, cap, "%s", p->detail);
}

void adm_fail(adm_req_t *r, int rc, const tg_problem_t *p) {
  char detail[TG_PROBLEM_DETAIL_MAX + TG_PROBLEM_FIELD_MAX + 2];
  describe(p, rc, detail, sizeof(detail));
  switch (rc) {
  case TG_EINVAL:
    adm_problem(r, 422, "validation-failed", "The request is not valid", p, "%s", detail);
    break;
  case TG_ETOOBIG:
    adm_problem(r, 422, "validation-failed", "The request is not valid", p, "%s", detail);
    break;
  case TG_ENOTFOUND: adm_problem(r, 404, "not-found", "Not found", NULL, "%s", detail); break;
  case TG_ECONFLICT: adm_problem(r, 409, "conflict", "Conflict", NULL, "%s", detail); break;
  case TG_EPRECOND:
    adm_problem(r, 412, "precondition-failed", "Precondition failed", NULL, "%s", detail);
    break;
  case TG_EBUSY:
    adm_header(r, "Retry-After", "1");
    adm_problem(r, 503, "store-busy", "The store is busy", NULL, "%s", detail);
    break;
  default:
    tg_log(TG_LOG_ERROR, "request failed", "request_id", r->request_id, "error", tg_strerror(rc),
           "detail", p ? p->detail : "", NULL);
    adm_problem(r, 500, "internal", "Internal error", NULL,
                "the server could not complete the request (request id %s)", r->request_id);
  }
}

/* ---- request access ---------------------------------------------------------- */

const char *adm_header_in(adm_req_t *r, const char *name) {
  return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *adm_query(adm_req_t *r, const char *name) {
  return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

/* Media type of Content-Type without parameters, compared case-blind. */
static bool media_type_is(const char *ct, const char *want) {
  size_t n = strlen(want);
  if (!ct || strncasecmp(ct, want, n) != 0)
    return false;
  return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ';
}

json_t *adm_body_object(adm_req_t *r, bool merge_patch) {
  const char *ct = adm_header_in(r, "Content-Type");
  if (!media_type_is(ct, "application/json") &&
      !(merge_patch && media_type_is(ct, "application/merge-patch+json"))) {
    adm_problem(r, 415, "unsupported-media-type", "Unsupported media type", NULL,
                "send the body as application/json%s (got %s)",
                merge_patch ? " or application/merge-patch+json" : "", ct ? ct : "none");
    return NULL;
  }
  if (r->in.len == 0) {
    adm_problem(r, 400, "malformed-json", "The body is not valid JSON", NULL,
                "the request has no body");
    return NULL;
  }
  json_error_t e;
  json_t *v =
      json_loadb(r->in.data, r->in.len, JSON_REJECT_DUPLICATES | JSON_DISABLE_EOF_CHECK, &e);
  if (v && e.position < (int)r->in.len) {
    /* JSON_DISABLE_EOF_CHECK stops after the value; only whitespace may follow */
    for (size_t i = (size_t)e.position; i < r->in.len; i++)
      if (!strchr(" \t\r\n", r->in.data[i])) {
        json_decref(v);
        adm_problem(r, 400, "malformed-json", "The body is not valid JSON", NULL,
                    "unexpected data after the JSON value at byte %zu", i);
        return NULL;
      }
  }
  if (!v) {
    adm_problem(r, 400, "malformed-json", "The body is not valid JSON", NULL,
                "line %d, column %d: %s", e.line, e.column, e.text);
    return NULL;
  }
  if (!json_is_object(v)) {
    json_decref(v);
    adm_problem(r, 400, "malformed-json", "The body is not valid JSON", NULL,
                "the body must be a JSON object");
    return NULL;
  }
  return v;
}

bool adm_audit(adm_req_t *r, const char *action, tg_entity_t ent, const char *id,
               const json_t *before, const json_t *after) {
  tg_problem_t p = {0};
  int rc = tg_audit(r->store, r->actor, action, ent, id, before, after, r->request_id, &p);
  if (rc)
    adm_fail(r, rc, &p);
  return rc == TG_OK;
}

/* ---- the MHD callbacks ---------------------------------------------------- */

/* X-Request-Id from the client if it is sane, else 32 random hex chars. */
static void set_request_id(adm_req_t *r) {
  const char *in = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Request-Id");
  size_t n = in ? strlen(in) : 0;
  if (n > 0 && n <= ADM_REQUEST_ID_MAX &&
      strspn(in, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n) {
    memcpy(r->request_id, in, n + 1);
    return;
  }
  unsigned char raw[16];
  randombytes_buf(raw, sizeof(raw));
  tg_hex_encode(raw, sizeof(raw), r->request_id);
}

/* MHD asks for the next bytes of a streamed response. */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
  adm_req_t *r = cls;
  (void)pos;
  while (r->stream_off >= r->stream_len) {
    if (r->stream_done)
      return MHD_CONTENT_READER_END_OF_STREAM;
    tg_problem_t p = {0};
    int rc = tg_report_read(r->stream, &r->stream_data, &r->stream_len, &p);
    r->stream_off = 0;
    if (rc < 0) {
      tg_log(TG_LOG_ERROR, "report stream failed", "request_id", r->request_id, "error", p.detail,
             NULL);
      return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    if (rc == 0) {
      r->stream_done = true;
      r->stream_len = 0;
    }
  }
  size_t n = r->stream_len - r->stream_off;
  if (n > max)
    n = max;
  memcpy(buf, r->stream_data + r->stream_off, n);
  r->stream_off += n;
  return (ssize_t)n;
}

void adm_stream(adm_req_t *r, int status, const char *type, struct tg_report *rep,
                tg_store_t *store) {
  reset_response(r);
  r->status = status;
  r->resp_type = type;
  r->stream = rep;
  r->stream_store = store;
}

tg_store_t *adm_open_store(adm_server_t *srv, tg_problem_t *p) {
  tg_store_t *s = NULL;
  tg_store_open(&srv->httpd.store_opt, &s, NULL, NULL, p);
  return s;
}

static enum MHD_Result send_response(adm_req_t *r) {
  struct MHD_Response *resp =
      r->stream
          ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 32 * 1024, stream_reader, r, NULL)
          : MHD_create_response_from_buffer(r->resp_len, r->resp_body ? r->resp_body : (void *)"",
                                            MHD_RESPMEM_MUST_COPY);
  if (!resp)
    return MHD_NO;
  if (r->resp_type)
    MHD_add_response_header(resp, "Content-Type", r->resp_type);
  MHD_add_response_header(resp, "X-Request-Id", r->request_id);
  MHD_add_response_header(resp, "Cache-Control", "no-store");
  MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
  tg_httpd_headers_apply(&r->hdrs, resp);
  enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)r->status, resp);
  MHD_destroy_response(resp);
  return ret;
}

static void log_request(adm_req_t *r) {
  if (!tg_log_enabled(TG_LOG_INFO))
    return;
  char status[8], ms[24];
  snprintf(status, sizeof(status), "%d", r->status);
  snprintf(ms, sizeof(ms), "%lld", (long long)(tg_now_ms() - r->started_ms));
  tg_log(TG_LOG_INFO, "request", "request_id", r->request_id, "method", r->method, "path", r->path,
         "status", status, "ms", ms, "actor", r->actor ? r->actor : "", NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **ctx) {
  adm_server_t *srv = cls;
  adm_req_t *r = *ctx;
  if (!r) {
    r = calloc(1, sizeof(*r));
    if (!r)
      return MHD_NO;
    r->srv = srv;
    r->conn = conn;
    r->method = method;
    r->path = url;
    r->started_ms = tg_now_ms();
    set_request_id(r);
    atomic_fetch_add(&srv->httpd.inflight, 1);
    *ctx = r;
    /* a declared length over the limit is refused before a byte is read */
    tg_httpd_body_begin(&r->in, conn, srv->max_body);
    if (!r->in.too_big)
      return MHD_YES;
  }
  if (*upload_size > 0)
    return tg_httpd_body_add(&r->in, upload_data, upload_size);
  if (r->responded)
    return MHD_YES; /* 413 already queued; MHD discards the rest */
  if (r->in.too_big) {
    *upload_size = 0;
    adm_problem(r, 413, "payload-too-large", "Request body too large", NULL,
                "the body exceeds the limit of %zu bytes (admin_max_body)", srv->max_body);
    adm_header(r, "Connection", "close");
  } else {
    adm_dispatch(r);
  }
  log_request(r);
  r->responded = true;
  return send_response(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **ctx,
                         enum MHD_RequestTerminationCode toe) {
  adm_server_t *srv = cls;
  adm_req_t *r = *ctx;
  if (!r)
    return;
  reset_response(r);
  tg_httpd_headers_free(&r->hdrs);
  tg_report_close(r->stream);
  tg_store_close(r->stream_store);
  tg_httpd_body_free(&r->in, false);
  json_decref(r->token);
  for (int i = 0; i < ADM_MAX_PARAMS; i++)
    free(r->params[i]);
  free(r);
  *ctx = NULL;
  atomic_fetch_sub(&srv->httpd.inflight, 1);
}

int adm_start(adm_server_t *srv, const struct sockaddr *addr, const char *tls_key_pem,
              const char *tls_cert_pem, unsigned threads, int *port, tg_problem_t *p) {
  tg_httpd_config_t c = {
      .addr = addr,
      .lfd = -1,
      .tls_key_pem = tls_key_pem,
      .tls_cert_pem = tls_cert_pem,
      .threads = threads,
      .timeout_s = (unsigned)((tg_config_int(srv->cfg, "admin_timeout") + 999) / 1000),
      .max_connections = (unsigned)tg_config_int(srv->cfg, "admin_max_connections"),
      .per_ip_connections = (unsigned)tg_config_int(srv->cfg, "admin_per_ip_connections"),
      .listen_key = "admin_listen",
      .what = "admin API",
      .on_request = on_request,
      .on_completed = on_completed,
      .cls = srv,
  };
  return tg_httpd_start(&srv->httpd, &c, port, p);
}

void adm_stop(adm_server_t *srv, int64_t drain_ms) {
  tg_httpd_stop(&srv->httpd, drain_ms);
}
