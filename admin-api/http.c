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

static _Thread_local tg_store_t *thread_store;

tg_store_t *adm_thread_store(adm_server_t *srv, tg_problem_t *p) {
  if (thread_store)
    return thread_store;
  tg_store_t *s = NULL;
  if (tg_store_open(&srv->store_opt, &s, NULL, NULL, p))
    return NULL;
  pthread_mutex_lock(&srv->stores_lock);
  if (srv->nstores == ADM_MAX_STORES) {
    pthread_mutex_unlock(&srv->stores_lock);
    tg_store_close(s);
    tg_problem_set(p, TG_ESTORE, "", "too many store connections");
    return NULL;
  }
  srv->stores[srv->nstores++] = s;
  pthread_mutex_unlock(&srv->stores_lock);
  thread_store = s;
  return s;
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

static void free_headers(adm_req_t *r) {
  for (int i = 0; i < r->nheaders; i++)
    free(r->headers[i].value);
  r->nheaders = 0;
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
  char value[2048];
  va_list ap;
  if (r->nheaders == ADM_MAX_HEADERS)
    return;
  va_start(ap, fmt);
  vsnprintf(value, sizeof(value), fmt, ap);
  va_end(ap);
  char *copy = strdup(value);
  if (!copy)
    return;
  r->headers[r->nheaders].name = name;
  r->headers[r->nheaders].value = copy;
  r->nheaders++;
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
  for (int i = 0; i < r->nheaders; i++) {
    const char *n = r->headers[i].name;
    bool success_only = strcmp(n, "Location") == 0 || strcmp(n, "Link") == 0 ||
                        (strcmp(n, "ETag") == 0 && status != 412); /* 412 says what is current */
    if (success_only)
      free(r->headers[i].value);
    else
      r->headers[kept++] = r->headers[i];
  }
  r->nheaders = kept;
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
  if (r->body_len == 0) {
    adm_problem(r, 400, "malformed-json", "The body is not valid JSON", NULL,
                "the request has no body");
    return NULL;
  }
  json_error_t e;
  json_t *v = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES | JSON_DISABLE_EOF_CHECK, &e);
  if (v && e.position < (int)r->body_len) {
    /* JSON_DISABLE_EOF_CHECK stops after the value; only whitespace may follow */
    for (size_t i = (size_t)e.position; i < r->body_len; i++)
      if (!strchr(" \t\r\n", r->body[i])) {
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
  tg_store_open(&srv->store_opt, &s, NULL, NULL, p);
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
  for (int i = 0; i < r->nheaders; i++)
    MHD_add_response_header(resp, r->headers[i].name, r->headers[i].value);
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
    atomic_fetch_add(&srv->inflight, 1);
    *ctx = r;
    /* A declared length over the limit is refused before a byte is read. */
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (cl) {
      char *end;
      errno = 0;
      unsigned long long n = strtoull(cl, &end, 10);
      if (errno || *end || n > srv->max_body)
        r->too_big = true;
    }
    if (!r->too_big)
      return MHD_YES;
  }
  if (*upload_size > 0 && r->too_big) {
    /* A chunked body that outgrew the limit: MHD cannot answer before the
     * upload ends, so the rest is read and dropped (counted, and cut off
     * with the connection past 4x the limit) and 413 follows. */
    r->discarded += *upload_size;
    *upload_size = 0;
    return r->discarded > 4 * srv->max_body ? MHD_NO : MHD_YES;
  }
  if (*upload_size > 0 && !r->too_big) {
    size_t n = *upload_size;
    if (n > srv->max_body - r->body_len) {
      r->too_big = true;
      free(r->body);
      r->body = NULL;
      r->body_len = r->body_cap = 0;
      r->discarded = n;
      *upload_size = 0;
      return MHD_YES;
    } else {
      if (r->body_len + n > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < r->body_len + n)
          cap *= 2;
        if (cap > srv->max_body)
          cap = srv->max_body;
        char *nb = realloc(r->body, cap + 1);
        if (!nb)
          return MHD_NO;
        r->body = nb;
        r->body_cap = cap;
      }
      memcpy(r->body + r->body_len, upload_data, n);
      r->body_len += n;
      r->body[r->body_len] = '\0';
      *upload_size = 0;
      return MHD_YES;
    }
  }
  if (r->responded)
    return MHD_YES; /* 413 already queued; MHD discards the rest */
  if (r->too_big) {
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
  free_headers(r);
  tg_report_close(r->stream);
  tg_store_close(r->stream_store);
  free(r->body);
  json_decref(r->token);
  for (int i = 0; i < ADM_MAX_PARAMS; i++)
    free(r->params[i]);
  free(r);
  *ctx = NULL;
  atomic_fetch_sub(&srv->inflight, 1);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
  char msg[512];
  vsnprintf(msg, sizeof(msg), fmt, ap);
  size_t n = strlen(msg);
  while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
    msg[--n] = '\0';
  tg_log(TG_LOG_WARN, "libmicrohttpd", "detail", msg, NULL);
}

int adm_start(adm_server_t *srv, const struct sockaddr *addr, const char *tls_key_pem,
              const char *tls_cert_pem, unsigned threads, int *port, tg_problem_t *p) {
  /* poll(), not epoll: libmicrohttpd 0.9.75's MHD_quiesce_daemon races its
   * own epoll workers over removing the listen socket and aborts the
   * process ("Failed to remove listen FD from epoll set", about 1 stop in
   * 200 here). With poll the workers rebuild their sets every turn, and an
   * admin API has few connections. */
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG | MHD_USE_ITC;
  if (addr->sa_family == AF_INET6)
    flags |= MHD_USE_IPv6;
  if (tls_key_pem)
    flags |= MHD_USE_TLS;
  unsigned timeout_s = (unsigned)((tg_config_int(srv->cfg, "admin_timeout") + 999) / 1000);
  struct MHD_OptionItem tls_opts[] = {
      {MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)tls_key_pem},
      {MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)tls_cert_pem},
      {MHD_OPTION_END, 0, NULL},
  };
  srv->daemon = MHD_start_daemon(
      flags, 0, NULL, NULL, on_request, srv, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
      MHD_OPTION_SOCK_ADDR, addr, MHD_OPTION_THREAD_POOL_SIZE, threads,
      MHD_OPTION_CONNECTION_TIMEOUT, timeout_s, MHD_OPTION_CONNECTION_LIMIT,
      (unsigned)tg_config_int(srv->cfg, "admin_max_connections"),
      MHD_OPTION_PER_IP_CONNECTION_LIMIT,
      (unsigned)tg_config_int(srv->cfg, "admin_per_ip_connections"),
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024, MHD_OPTION_STRICT_FOR_CLIENT, 1,
      MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_ARRAY,
      tls_key_pem ? tls_opts : &tls_opts[2], MHD_OPTION_END);
  if (!srv->daemon)
    return tg_problem_set(p, TG_EIO, "admin_listen",
                          "cannot start the admin API (address in use, or bad TLS files?)");
  const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
  *port = info ? info->port : 0;
  srv->tls = tls_key_pem != NULL;
  return TG_OK;
}

void adm_stop(adm_server_t *srv, int64_t drain_ms) {
  if (!srv->daemon)
    return;
  /* the listen socket is ours after quiescing, but worker threads may
   * still hold it in their epoll sets: close it only after they stop */
  MHD_socket lfd = MHD_quiesce_daemon(srv->daemon);
  if (lfd != MHD_INVALID_SOCKET)
    shutdown(lfd, SHUT_RDWR); /* refuse new connections now; fd stays valid */
  int64_t deadline = tg_now_ms() + drain_ms;
  while (atomic_load(&srv->inflight) > 0 && tg_now_ms() < deadline) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  MHD_stop_daemon(srv->daemon);
  srv->daemon = NULL;
  if (lfd != MHD_INVALID_SOCKET)
    close(lfd);
  pthread_mutex_lock(&srv->stores_lock);
  for (int i = 0; i < srv->nstores; i++)
    tg_store_close(srv->stores[i]);
  srv->nstores = 0;
  pthread_mutex_unlock(&srv->stores_lock);
}
