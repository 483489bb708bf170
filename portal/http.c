/*
 * http.c - libmicrohttpd glue for the developer portal: request contexts,
 * bounded form bodies, urlencoded form parsing, cookies, page rendering,
 * static files from memory, security headers, start and graceful stop.
 *
 * Invariants:
 *   - a request body never grows past portal_max_body: the first byte over
 *     it answers 413 and the rest is not kept;
 *   - every response carries the security headers (send_response), HTML
 *     and JSON are never cached (no-store), static files are revalidated
 *     by ETag;
 *   - the request context is freed only in MHD's completion callback.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/keys.h"
#include "core/log.h"
#include "core/util.h"
#include "portal/portal.h"

#define STATIC_FILE_MAX  ((size_t)4 << 20)
#define STATIC_FILES_MAX 256

/* The CSP of every page; the API reference page (RapiDoc) adds one style
 * hash and style attributes (web/README.md, "What RapiDoc needs"). */
#define CSP_PAGE                                                                                   \
  "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "                \
  "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
#define CSP_DOCS                                                                                   \
  "default-src 'self'; script-src 'self'; style-src 'self' "                                       \
  "'sha256-NolJvpLT1T5e8QBkz4jdiH1sL721JFKC74rleMr1A7w='; style-src-attr 'unsafe-inline'; "        \
  "img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "             \
  "form-action 'self'"

/* ---- per-thread store connections ----------------------------------------------- */

tg_store_t *portal_thread_store(portal_server_t *srv, tg_problem_t *p) {
  return tg_httpd_thread_store(&srv->httpd, p);
}

/* ---- request access -------------------------------------------------------------- */

const char *portal_field(portal_req_t *r, const char *name) {
  for (int i = 0; i < r->nfields; i++)
    if (strcmp(r->fields[i].name, name) == 0)
      return r->fields[i].value;
  return "";
}

const char *portal_query(portal_req_t *r, const char *name) {
  return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *portal_header_in(portal_req_t *r, const char *name) {
  return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *portal_cookie(portal_req_t *r, const char *name) {
  return MHD_lookup_connection_value(r->conn, MHD_COOKIE_KIND, name);
}

/* Parse the collected body as a form (form.c); form_bad on anything odd. */
static void parse_form(portal_req_t *r) {
  r->form_bad =
      !portal_form_parse(r->in.data, r->in.len, r->fields, PORTAL_MAX_FIELDS, &r->nfields);
}

/* ---- responses --------------------------------------------------------------------- */

static void reset_response(portal_req_t *r) {
  free(r->resp_body);
  r->resp_body = NULL;
  r->resp_len = 0;
  r->file = NULL;
}

void portal_header(portal_req_t *r, const char *name, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  tg_httpd_header_vadd(&r->hdrs, name, fmt, ap);
  va_end(ap);
}

void portal_set_cookie(portal_req_t *r, const char *name, const char *value, int64_t max_age) {
  bool secure = r->srv->httpd.tls || r->srv->secure_cookies;
  if (max_age < 0)
    portal_header(r, "Set-Cookie", "%s=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax%s", name,
                  secure ? "; Secure" : "");
  else
    portal_header(r, "Set-Cookie", "%s=%s; Path=/; Max-Age=%lld; HttpOnly; SameSite=Lax%s", name,
                  value, (long long)max_age, secure ? "; Secure" : "");
}

void portal_raw(portal_req_t *r, int status, const char *type, const char *data, size_t len) {
  reset_response(r);
  r->status = status;
  r->resp_type = type;
  r->resp_body = malloc(len + 1);
  if (r->resp_body) {
    memcpy(r->resp_body, data, len);
    r->resp_len = len;
  } else {
    r->status = 500;
  }
  r->responded = true;
}

void portal_page(portal_req_t *r, int status, const char *name, json_t *ctx) {
  tg_problem_t p = {0};
  json_t *c = ctx ? json_incref(ctx) : json_object();
  /* one buffer per page, not per thread: MHD's threads end without a
   * destructor for thread-locals (a leak at every stop) */
  tg_tmpl_out_t out;
  tg_tmpl_out_init(&out, 0);
  if (c && r->dev) {
    json_object_set_new(c, "signed_in", json_true());
    json_object_set(c, "me", r->dev);
  }
  if (c)
    json_object_set_new(c, "csrf", json_string(r->csrf));
  if (!c || tg_tmpl_render(r->srv->tmpl, name, c, &out, &p) != TG_OK) {
    tg_log(TG_LOG_ERROR, "portal page failed to render", "template", name, "error", p.detail,
           "request_id", r->request_id, NULL);
    json_decref(c);
    tg_tmpl_out_dispose(&out);
    portal_raw(r, 500, "text/plain; charset=utf-8", "Internal error\n", 15);
    return;
  }
  json_decref(c);
  portal_raw(r, status, "text/html; charset=utf-8", out.data, out.len);
  tg_tmpl_out_dispose(&out);
}

void portal_message(portal_req_t *r, int status, const char *title, const char *text) {
  json_t *ctx = json_pack("{s:s, s:s, s:i}", "title", title, "text", text, "status", status);
  portal_page(r, status, "message", ctx);
  json_decref(ctx);
}

void portal_redirect(portal_req_t *r, const char *location) {
  reset_response(r);
  r->status = 303;
  r->resp_type = NULL;
  portal_header(r, "Location", "%s", location);
  r->responded = true;
}

const portal_file_t *portal_file_find(portal_server_t *srv, const char *path) {
  size_t lo = 0, hi = srv->nfiles;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = strcmp(path, srv->files[mid].path);
    if (c == 0)
      return &srv->files[mid];
    if (c < 0)
      hi = mid;
    else
      lo = mid + 1;
  }
  return NULL;
}

static enum MHD_Result send_response(portal_req_t *r) {
  const char *data = r->file ? r->file->data : r->resp_body ? r->resp_body : "";
  size_t len = r->file ? r->file->len : r->resp_len;
  bool not_modified = false;
  if (r->file) {
    const char *inm = portal_header_in(r, "If-None-Match");
    if (inm && strstr(inm, r->file->etag)) {
      not_modified = true;
      r->status = 304;
      len = 0;
    }
  }
  struct MHD_Response *resp = MHD_create_response_from_buffer(
      len, (void *)data, r->file ? MHD_RESPMEM_PERSISTENT : MHD_RESPMEM_MUST_COPY);
  if (!resp)
    return MHD_NO;
  if (r->file) {
    if (!not_modified)
      MHD_add_response_header(resp, "Content-Type", r->file->type);
    MHD_add_response_header(resp, "ETag", r->file->etag);
    MHD_add_response_header(resp, "Cache-Control", "public, max-age=300");
  } else {
    if (r->resp_type)
      MHD_add_response_header(resp, "Content-Type", r->resp_type);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
  }
  MHD_add_response_header(resp, "Content-Security-Policy", r->docs_csp ? CSP_DOCS : CSP_PAGE);
  MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
  MHD_add_response_header(resp, "X-Frame-Options", "DENY");
  MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
  MHD_add_response_header(resp, "Cross-Origin-Opener-Policy", "same-origin");
  MHD_add_response_header(resp, "Permissions-Policy", "camera=(), microphone=(), geolocation=()");
  if (r->srv->httpd.tls)
    MHD_add_response_header(resp, "Strict-Transport-Security", "max-age=31536000");
  MHD_add_response_header(resp, "X-Request-Id", r->request_id);
  tg_httpd_headers_apply(&r->hdrs, resp);
  enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)r->status, resp);
  MHD_destroy_response(resp);
  return ret;
}

static void log_request(portal_req_t *r) {
  if (!tg_log_enabled(TG_LOG_INFO))
    return;
  char status[8], ms[24];
  snprintf(status, sizeof(status), "%d", r->status);
  snprintf(ms, sizeof(ms), "%lld", (long long)(tg_now_ms() - r->started_ms));
  const char *dev = r->dev ? json_string_value(json_object_get(r->dev, "id")) : NULL;
  tg_log(TG_LOG_INFO, "portal request", "request_id", r->request_id, "method", r->method, "path",
         r->path, "status", status, "ms", ms, "developer", dev ? dev : "", NULL);
}

static void client_address(portal_req_t *r) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  r->client[0] = '\0';
  if (!ci || !ci->client_addr)
    return;
  const struct sockaddr *sa = ci->client_addr;
  if (sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, r->client, sizeof(r->client));
  else if (sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, r->client,
              sizeof(r->client));
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **ctx) {
  portal_server_t *srv = cls;
  portal_req_t *r = *ctx;
  if (!r) {
    unsigned char rnd[12];
    r = calloc(1, sizeof(*r));
    if (!r)
      return MHD_NO;
    r->srv = srv;
    r->conn = conn;
    r->method = method;
    r->path = url;
    r->started_ms = tg_now_ms();
    randombytes_buf(rnd, sizeof(rnd));
    tg_hex_encode(rnd, sizeof(rnd), r->request_id);
    client_address(r);
    atomic_fetch_add(&srv->httpd.inflight, 1);
    *ctx = r;
    tg_httpd_body_begin(&r->in, conn, srv->max_body);
    return MHD_YES;
  }
  if (*upload_size > 0)
    return tg_httpd_body_add(&r->in, upload_data, upload_size);
  if (r->responded)
    return MHD_YES;
  if (r->in.too_big) {
    char text[160];
    snprintf(text, sizeof(text), "The form sent more than %zu bytes, the most this site accepts.",
             srv->max_body);
    portal_message(r, 413, "Too much data", text);
    portal_header(r, "Connection", "close");
  } else {
    if (strcmp(method, "POST") == 0)
      parse_form(r);
    portal_dispatch(r);
  }
  log_request(r);
  r->responded = true;
  return send_response(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **ctx,
                         enum MHD_RequestTerminationCode toe) {
  portal_server_t *srv = cls;
  portal_req_t *r = *ctx;
  if (!r)
    return;
  reset_response(r);
  tg_httpd_headers_free(&r->hdrs);
  for (int i = 0; i < r->nfields; i++) {
    sodium_memzero(r->fields[i].value, strlen(r->fields[i].value));
    free(r->fields[i].name);
    free(r->fields[i].value);
  }
  tg_httpd_body_free(&r->in, true); /* passwords */
  sodium_memzero(r->session_token, sizeof(r->session_token));
  json_decref(r->session);
  json_decref(r->dev);
  for (int i = 0; i < PORTAL_MAX_PARAMS; i++)
    free(r->params[i]);
  free(r);
  *ctx = NULL;
  atomic_fetch_sub(&srv->httpd.inflight, 1);
}

/* ---- static files ------------------------------------------------------------------ */

static const char *type_of(const char *name) {
  static const struct {
    const char *ext, *type;
  } types[] = {
      {".css", "text/css; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".svg", "image/svg+xml"},
      {".png", "image/png"},
      {".ico", "image/x-icon"},
      {".txt", "text/plain; charset=utf-8"},
      {".json", "application/json"},
      {".woff2", "font/woff2"},
  };
  const char *dot = strrchr(name, '.');
  for (size_t i = 0; dot && i < sizeof(types) / sizeof(types[0]); i++)
    if (strcmp(dot, types[i].ext) == 0)
      return types[i].type;
  return NULL; /* not served: LICENSE files, MANIFEST, README */
}

static int read_file(const char *path, char **data, size_t *len, tg_problem_t *p) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  int rc = TG_OK;
  *data = NULL;
  if (fd < 0)
    return tg_problem_set(p, TG_EIO, "portal_web_dir", "cannot open %s: %s", path, strerror(errno));
  if (fstat(fd, &st) || !S_ISREG(st.st_mode) || (size_t)st.st_size > STATIC_FILE_MAX) {
    rc = tg_problem_set(p, TG_EIO, "portal_web_dir", "%s is not a file of at most 4 MiB", path);
    goto out;
  }
  *data = malloc((size_t)st.st_size + 1);
  size_t got = 0;
  while (*data && got < (size_t)st.st_size) {
    ssize_t n = read(fd, *data + got, (size_t)st.st_size - got);
    if (n <= 0)
      break;
    got += (size_t)n;
  }
  if (!*data || got != (size_t)st.st_size) {
    free(*data);
    *data = NULL;
    rc = tg_problem_set(p, TG_EIO, "portal_web_dir", "cannot read %s", path);
    goto out;
  }
  (*data)[got] = '\0';
  *len = got;
out:
  close(fd);
  return rc;
}

/* Add every servable file under dir (recursively) as url/NAME. */
static int load_files(portal_server_t *srv, const char *dir, const char *url, int depth,
                      tg_problem_t *p) {
  DIR *d = opendir(dir);
  int rc = TG_OK;
  if (!d)
    return TG_OK; /* an absent folder serves nothing */
  struct dirent *e;
  while (rc == TG_OK && (e = readdir(d))) {
    char path[1024], sub[512];
    struct stat st;
    if (e->d_name[0] == '.')
      continue;
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >= sizeof(path) ||
        (size_t)snprintf(sub, sizeof(sub), "%s/%s", url, e->d_name) >= sizeof(sub) ||
        stat(path, &st))
      continue;
    if (S_ISDIR(st.st_mode)) {
      if (depth < 4)
        rc = load_files(srv, path, sub, depth + 1, p);
      continue;
    }
    const char *type = type_of(e->d_name);
    if (!S_ISREG(st.st_mode) || !type)
      continue;
    if (srv->nfiles == STATIC_FILES_MAX) {
      rc = tg_problem_set(p, TG_ETOOBIG, "portal_web_dir", "more than %d static files",
                          STATIC_FILES_MAX);
      break;
    }
    portal_file_t *f = &srv->files[srv->nfiles];
    if ((rc = read_file(path, &f->data, &f->len, p)))
      break;
    if (!(f->path = strdup(sub))) {
      free(f->data);
      rc = tg_problem_set(p, TG_ENOMEM, "", NULL);
      break;
    }
    unsigned char h[8];
    crypto_generichash(h, sizeof(h), (const unsigned char *)f->data, f->len, NULL, 0);
    f->etag[0] = '"';
    tg_hex_encode(h, sizeof(h), f->etag + 1);
    f->etag[17] = '"';
    f->etag[18] = '\0';
    f->type = type;
    srv->nfiles++;
  }
  closedir(d);
  return rc;
}

static int by_path(const void *a, const void *b) {
  return strcmp(((const portal_file_t *)a)->path, ((const portal_file_t *)b)->path);
}

static void free_files(portal_server_t *srv) {
  for (size_t i = 0; i < srv->nfiles; i++) {
    free(srv->files[i].path);
    free(srv->files[i].data);
  }
  free(srv->files);
  srv->files = NULL;
  srv->nfiles = 0;
}

static int load_web(portal_server_t *srv, tg_problem_t *p) {
  const char *web = tg_config_str(srv->cfg, "portal_web_dir");
  char dir[1024];
  static const char *const parts[] = {"css", "js", "static"};
  snprintf(dir, sizeof(dir), "%s/templates", web);
  if (!(srv->tmpl = tg_tmpl_load_dir(dir, p)))
    return p->code ? p->code : TG_EIO;
  srv->files = calloc(STATIC_FILES_MAX, sizeof(portal_file_t));
  if (!srv->files)
    return tg_problem_set(p, TG_ENOMEM, "", NULL);
  for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
    char url[16];
    snprintf(dir, sizeof(dir), "%s/%s", web, parts[i]);
    snprintf(url, sizeof(url), "/%s", parts[i]);
    int rc = load_files(srv, dir, url, 0, p);
    if (rc)
      return rc;
  }
  qsort(srv->files, srv->nfiles, sizeof(portal_file_t), by_path);
  return TG_OK;
}

/* ---- the daemon ------------------------------------------------------------------------ */

int portal_start(portal_server_t *srv, int lfd, const char *tls_key_pem, const char *tls_cert_pem,
                 unsigned threads, tg_problem_t *p) {
  int rc = load_web(srv, p);
  if (rc)
    goto fail;
  if (!(srv->throttle = tg_throttle_new(65536))) {
    rc = tg_problem_set(p, TG_ENOMEM, "", NULL);
    goto fail;
  }
  tg_httpd_config_t c = {
      .lfd = lfd,
      .tls_key_pem = tls_key_pem,
      .tls_cert_pem = tls_cert_pem,
      .threads = threads,
      .timeout_s = (unsigned)((tg_config_int(srv->cfg, "portal_timeout") + 999) / 1000),
      .max_connections = (unsigned)tg_config_int(srv->cfg, "portal_max_connections"),
      .per_ip_connections = (unsigned)tg_config_int(srv->cfg, "portal_per_ip_connections"),
      .listen_key = "portal_listen",
      .what = "developer portal",
      .on_request = on_request,
      .on_completed = on_completed,
      .cls = srv,
  };
  if ((rc = tg_httpd_start(&srv->httpd, &c, NULL, p)))
    goto fail;
  return TG_OK;
fail:
  tg_tmpl_free(srv->tmpl);
  srv->tmpl = NULL;
  free_files(srv);
  tg_throttle_free(srv->throttle);
  srv->throttle = NULL;
  return rc;
}

void portal_stop(portal_server_t *srv, int64_t drain_ms) {
  if (!srv->httpd.daemon)
    return;
  tg_httpd_stop(&srv->httpd, drain_ms);
  tg_tmpl_free(srv->tmpl);
  srv->tmpl = NULL;
  free_files(srv);
  tg_throttle_free(srv->throttle);
  srv->throttle = NULL;
}
