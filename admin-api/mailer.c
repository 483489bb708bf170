/*
 * mailer.c - delivers the mail outbox over SMTP when mail_smtp_host is
 * set (without it, messages stay queued in the outbox, which the admin API
 * lists at GET /mail).
 *
 * One thread: every mail_interval it takes up to 50 queued messages, in
 * creation order, and hands each to the relay in its own SMTP session
 * (RFC 5321: EHLO, MAIL FROM, RCPT TO, DATA, QUIT; dot-stuffing, CRLF).
 * A message the relay accepts becomes `sent`; a temporary failure (4xx, no
 * connection, a timeout) counts an attempt and retries next round, up to
 * mail_max_attempts, then `failed`; a permanent refusal (5xx) fails it at
 * once. The relay is trusted (the local MTA or a smarthost on a private
 * network): no AUTH and no TLS here; the relay does those onwards.
 *
 * Addresses are checked again before they reach the wire: anything that
 * is not printable ASCII without spaces or angle brackets never becomes an
 * SMTP command or a header (no header or command injection through an
 * address the admin API stored).
 */
#include "admin-api/mailer.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "admin-api/jobs.h"
#include "core/log.h"
#include "core/util.h"

#define BATCH     50
#define REPLY_MAX 4096

typedef struct smtp {
  int fd;
  int timeout_ms;
  char buf[REPLY_MAX];
  size_t len;
  char err[256];
} smtp_t;

static bool addr_ok(const char *a) {
  if (!*a || strlen(a) > 254 || !strchr(a, '@'))
    return false;
  for (const char *c = a; *c; c++)
    if (*c <= ' ' || *c >= 0x7f || *c == '<' || *c == '>' || *c == '(' || *c == ')' || *c == ',' ||
        *c == ';' || *c == '"' || *c == '\\')
      return false;
  return true;
}

static int smtp_connect(smtp_t *c, const char *host, int port) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
  char ports[16];
  snprintf(ports, sizeof(ports), "%d", port);
  int rc = getaddrinfo(host, ports, &hints, &res);
  if (rc) {
    snprintf(c->err, sizeof(c->err), "cannot resolve %s: %s", host, gai_strerror(rc));
    return -1;
  }
  c->fd = -1;
  for (struct addrinfo *ai = res; ai && c->fd < 0; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
      continue;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      close(fd);
      continue;
    }
    struct pollfd pfd = {fd, POLLOUT, 0};
    int err = 0;
    socklen_t el = sizeof(err);
    if (poll(&pfd, 1, c->timeout_ms) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) ||
        err) {
      snprintf(c->err, sizeof(c->err), "cannot connect to %s:%d: %s", host, port,
               err ? strerror(err) : "timed out");
      close(fd);
      continue;
    }
    c->fd = fd;
  }
  freeaddrinfo(res);
  if (c->fd < 0 && !c->err[0])
    snprintf(c->err, sizeof(c->err), "cannot connect to %s:%d", host, port);
  return c->fd < 0 ? -1 : 0;
}

static int smtp_write(smtp_t *c, const char *data, size_t len) {
  while (len > 0) {
    struct pollfd pfd = {c->fd, POLLOUT, 0};
    if (poll(&pfd, 1, c->timeout_ms) != 1) {
      snprintf(c->err, sizeof(c->err), "the relay stopped reading (timeout)");
      return -1;
    }
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
      continue;
    if (n <= 0) {
      snprintf(c->err, sizeof(c->err), "write to the relay failed: %s", strerror(errno));
      return -1;
    }
    data += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Read one reply (all its lines, RFC 5321 4.2.1); returns its code, or -1
 * on a broken connection. */
static int smtp_reply(smtp_t *c) {
  for (;;) {
    /* a complete reply: its last line is "NNN " ... CRLF */
    size_t start = 0;
    for (size_t i = 0; i + 1 < c->len; i++) {
      if (c->buf[i] != '\r' || c->buf[i + 1] != '\n')
        continue;
      size_t ll = i - start;
      if (ll < 3) {
        snprintf(c->err, sizeof(c->err), "malformed reply from the relay");
        return -1;
      }
      if (ll == 3 || c->buf[start + 3] == ' ') {
        int code = (c->buf[start] - '0') * 100 + (c->buf[start + 1] - '0') * 10 +
                   (c->buf[start + 2] - '0');
        if (code < 200 || code > 599) {
          snprintf(c->err, sizeof(c->err), "malformed reply from the relay");
          return -1;
        }
        if (code >= 400)
          snprintf(c->err, sizeof(c->err), "relay said: %.*s", (int)(ll > 200 ? 200 : ll),
                   c->buf + start);
        memmove(c->buf, c->buf + i + 2, c->len - i - 2);
        c->len -= i + 2;
        return code;
      }
      start = i + 2;
    }
    if (c->len == sizeof(c->buf)) {
      snprintf(c->err, sizeof(c->err), "reply from the relay too long");
      return -1;
    }
    struct pollfd pfd = {c->fd, POLLIN, 0};
    if (poll(&pfd, 1, c->timeout_ms) != 1) {
      snprintf(c->err, sizeof(c->err), "the relay did not answer (timeout)");
      return -1;
    }
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
      continue;
    if (n <= 0) {
      snprintf(c->err, sizeof(c->err), "the relay closed the connection");
      return -1;
    }
    c->len += (size_t)n;
  }
}

/* Send a command and expect a reply class (2 or 3). Returns 0, or the
 * reply code (4xx/5xx), or -1. */
static int smtp_cmd(smtp_t *c, const char *line, int want) {
  if (line && (smtp_write(c, line, strlen(line)) || smtp_write(c, "\r\n", 2)))
    return -1;
  int code = smtp_reply(c);
  if (code < 0)
    return -1;
  if (code / 100 == want)
    return 0;
  if (!c->err[0])
    snprintf(c->err, sizeof(c->err), "unexpected reply %d", code);
  return code;
}

/* The message: headers and the body with CRLF line ends and dot-stuffing
 * (RFC 5321 4.5.2). New string. */
static char *message_text(const json_t *m, const char *from, const char *helo) {
  const char *to = json_string_value(json_object_get(m, "to_addr"));
  const char *subject = json_string_value(json_object_get(m, "subject"));
  const char *body = json_string_value(json_object_get(m, "body"));
  const char *id = json_string_value(json_object_get(m, "id"));
  char date[64];
  time_t now = (time_t)tg_now();
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
  size_t cap = strlen(body) * 2 + 4096; /* every byte may grow to two; headers are bounded */
  char *out = malloc(cap);
  if (!out)
    return NULL;
  int n = snprintf(out, cap,
                   "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s@%s>\r\n"
                   "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                   "Content-Transfer-Encoding: 8bit\r\nAuto-Submitted: auto-generated\r\n\r\n",
                   from, to, subject, date, id, helo);
  if (n < 0 || (size_t)n >= cap - 16) {
    free(out);
    return NULL;
  }
  size_t o = (size_t)n;
  bool bol = true;
  for (const char *c = body; *c; c++) {
    if (bol && *c == '.')
      out[o++] = '.';
    if (*c == '\n') {
      out[o++] = '\r';
      out[o++] = '\n';
      bol = true;
    } else if (*c != '\r') {
      out[o++] = *c;
      bol = false;
    }
  }
  if (!bol) {
    out[o++] = '\r';
    out[o++] = '\n';
  }
  memcpy(out + o, ".\r\n", 4);
  return out;
}

/* Deliver one message. 0: accepted; >0: a permanent refusal; <0: try again
 * later. c->err says why. */
static int deliver(const tg_config_t *cfg, const json_t *m, smtp_t *c) {
  const char *from = tg_config_str(cfg, "mail_from");
  const char *to = json_string_value(json_object_get(m, "to_addr"));
  char line[600], helo[256];
  int rc;
  snprintf(helo, sizeof(helo), "%s", tg_config_str(cfg, "mail_helo"));
  if (!addr_ok(to)) {
    snprintf(c->err, sizeof(c->err), "the address cannot be used in SMTP");
    return 1;
  }
  if (smtp_connect(c, tg_config_str(cfg, "mail_smtp_host"),
                   (int)tg_config_int(cfg, "mail_smtp_port")))
    return -1;
  if ((rc = smtp_cmd(c, NULL, 2)))
    goto out;
  snprintf(line, sizeof(line), "EHLO %s", helo);
  if ((rc = smtp_cmd(c, line, 2))) {
    snprintf(line, sizeof(line), "HELO %s", helo);
    c->err[0] = '\0';
    if (rc < 0 || (rc = smtp_cmd(c, line, 2)))
      goto out;
  }
  snprintf(line, sizeof(line), "MAIL FROM:<%s>", from);
  if ((rc = smtp_cmd(c, line, 2)))
    goto out;
  snprintf(line, sizeof(line), "RCPT TO:<%s>", to);
  if ((rc = smtp_cmd(c, line, 2)))
    goto out;
  if ((rc = smtp_cmd(c, "DATA", 3)))
    goto out;
  char *text = message_text(m, from, helo);
  if (!text) {
    snprintf(c->err, sizeof(c->err), "out of memory");
    rc = -1;
    goto out;
  }
  rc = smtp_write(c, text, strlen(text)) ? -1 : smtp_cmd(c, NULL, 2);
  free(text);
  if (rc == 0)
    smtp_cmd(c, "QUIT", 2); /* the message is accepted whatever QUIT says */
out:
  close(c->fd);
  c->fd = -1;
  if (rc > 0)
    return rc >= 500 ? rc : -rc; /* 4xx: try again later */
  return rc;
}

static void deliver_batch(adm_job_t *job, adm_server_t *srv, tg_store_t *s) {
  const tg_config_t *cfg = srv->cfg;
  tg_filter_t f = {"status", "queued"};
  tg_list_query_t q = {.filters = &f, .nfilters = 1, .limit = BATCH};
  json_t *rows = NULL;
  char next[TG_ID_LEN + 1];
  tg_problem_t p = {0};
  if (tg_store_list(s, TG_ENT_MAIL, &q, &rows, next, &p)) {
    tg_log(TG_LOG_WARN, "mail: cannot read the outbox", "error", p.detail, NULL);
    return;
  }
  int64_t max_attempts = tg_config_int(cfg, "mail_max_attempts");
  size_t i;
  json_t *m;
  json_array_foreach(rows, i, m) {
    if (adm_job_stopping(job))
      break;
    smtp_t c = {.fd = -1, .timeout_ms = (int)tg_config_int(cfg, "mail_timeout")};
    int rc = deliver(cfg, m, &c);
    int64_t attempts = json_integer_value(json_object_get(m, "attempts")) + 1;
    const char *id = json_string_value(json_object_get(m, "id"));
    json_t *ch;
    if (rc == 0)
      ch = json_pack("{s:s, s:I, s:I, s:n}", "status", "sent", "attempts", (json_int_t)attempts,
                     "sent_at", (json_int_t)tg_now(), "last_error");
    else
      ch = json_pack("{s:s, s:I, s:s}", "status",
                     rc > 0 || attempts >= max_attempts ? "failed" : "queued", "attempts",
                     (json_int_t)attempts, "last_error", c.err);
    tg_problem_t up = {0};
    pthread_mutex_lock(&srv->write_lock);
    if (!ch || tg_store_update(s, TG_ENT_MAIL, id, ch, false, 0, NULL, &up))
      tg_log(TG_LOG_WARN, "mail: cannot record a delivery", "id", id, "error", up.detail, NULL);
    pthread_mutex_unlock(&srv->write_lock);
    json_decref(ch);
    if (rc)
      tg_log(TG_LOG_WARN, "mail not delivered", "id", id, "error", c.err, NULL);
    else
      tg_log(TG_LOG_INFO, "mail delivered", "id", id, NULL);
    if (rc < 0 && c.err[0] && strstr(c.err, "connect"))
      break; /* the relay is down: the rest waits for the next round */
  }
  json_decref(rows);
}

static adm_job_t mailer = {.name = "mail delivery", .run = deliver_batch};

void adm_mailer_start(adm_server_t *srv) {
  if (!*tg_config_str(srv->cfg, "mail_smtp_host"))
    return;
  mailer.interval_ms = tg_config_int(srv->cfg, "mail_interval");
  adm_job_start(&mailer, srv);
}

void adm_mailer_stop(void) {
  adm_job_stop(&mailer);
}
