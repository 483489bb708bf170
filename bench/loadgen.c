/*
 * loadgen.c - an open-loop HTTP/1.1 load generator with coordinated-omission
 * correction (wrk2's idea; Debian has no wrk2), to compare the tail latency
 * of two servers (nginx and tollgate-gateway) at the same offered rate.
 *
 *   loadgen -u http://IP[:PORT][/path] -r RATE [-c CONNS] -d SECONDS
 *           [-k KEYFILE] [-H 'Name: value']... [-w WARMUP_SECONDS] [-s SEED]
 *
 * -r is requests per second in all, -c keep-alive connections (default 64,
 * at most 10,000), -d the measured seconds (fractional allowed), -w seconds
 * sent first at the same rate and not recorded (default 1). -k names a file
 * of API keys, one a line: each request carries "X-API-Key: " and one of
 * them, picked per request by splitmix64 seeded with -s (default 12345).
 * -H adds a header line (up to 16). The URL's host is a numeric IPv4
 * address; the port defaults to 80, the path to "/".
 *
 * Why open loop: wrk sends a connection's next request only after the
 * previous answer, so when the server stalls wrk stalls with it and the
 * requests that would have waited are never sent nor measured (coordinated
 * omission); at saturation its p99 mostly restates the throughput. Here
 * request i has an intended send time t0 + i / RATE fixed in advance, is
 * sent at that time on an idle connection (one request per connection at a
 * time, no pipelining), and its latency runs from the intended time to the
 * last byte of its response. When no connection is idle the request waits
 * in a FIFO (implicit: the requests are sent in index order) and the wait
 * counts in its latency, as it would for a real client.
 *
 * Prints three lines, a stable format that bench scripts parse:
 *
 *   loadgen: rate 40000/s target, 39998.5/s sent, 39998.1/s completed over 10.00 s, 64 connections
 *   latency us: p50 812 p90 1203 p99 2210 p99.9 4410 max 9120 mean 870.2
 *   status: 2xx 399981 3xx 0 4xx 0 5xx 0 errors 0 late 0
 *
 * | field     | what it counts: measured requests (intended after the warm-up)    |
 * | --------- | ----------------------------------------------------------------- |
 * | sent      | requests written, also those written during the drain             |
 * | completed | complete responses, any status: the only ones with a latency      |
 * | pNN, max  | microseconds; a percentile is its bucket's highest value          |
 * | errors    | requests lost with their connection (reset, closed, response      |
 * |           | unreadable), connects that failed and idle connections closed     |
 * |           | unannounced (from the measured phase on), and requests unanswered |
 * |           | 2 s after the last intended send time (the drain)                 |
 * | late      | requests that found no idle connection when they were due         |
 *
 * Latencies go to a log-linear histogram: 1 us buckets below 1,024 us, then
 * 128 buckets per doubling (< 0.8% wide) up to 60 s. No allocation happens
 * per request: the request texts (one per key) are formatted at start.
 * Exit status: 0, 1 on a runtime failure (cannot connect at start, nothing
 * answered), 2 on a bad argument (one line on stderr names it).
 *
 * Timing: one thread, epoll, CLOCK_MONOTONIC in ns. Between sends the loop
 * sleeps in epoll_pwait2 (a timespec timeout: epoll_wait's milliseconds are
 * coarser than the 25 us between sends at 40k/s) with the timer slack at
 * 1 ns, but never less than 100 us: it does not spin, since on a 2-core
 * machine it shares its core with a server. Requests go out in batches up
 * to ~100 us late, and that lateness counts in their latency (the same for
 * every server measured).
 *
 * Build and run from the source root:
 *   cc -O2 -std=c11 -D_GNU_SOURCE bench/loadgen.c -o /tmp/loadgen
 *   /tmp/loadgen -u http://127.0.0.1:8080/v1/pets -r 20000 -c 64 -d 10 -k /tmp/keys.txt
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS     10000
#define MAX_HEADERS   16
#define MAX_KEY_LEN   1024
#define MAX_RATE      10000000LL
#define MAX_SECONDS   1e6
#define LINE_CAP      256          /* bytes kept of a response line: enough for the headers read */
#define HEAD_MAX      65536        /* a longer response head (or trailer) is an error */
#define MIN_SLEEP_NS  100000LL     /* never sleep less: sends go out in batches this far apart */
#define RETRY_NS      10000000LL   /* wait after a failed connect before the next attempt */
#define DRAIN_NS      2000000000LL /* answers awaited this long after the last intended send */
#define CONNECT_NS    5000000000LL /* deadline of the connects at start */
#define MAX_WAIT_NS   1000000000LL /* longest single sleep */
#define HIST_LIN_BITS 10           /* 1 us buckets below 2^10 us */
#define HIST_SUB_BITS 7            /* then 2^7 buckets per doubling */
#define HIST_MAX_US   60000000ULL  /* 60 s: longer latencies count as 60 s */
#define HIST_TOP_BITS 26           /* 2^26 us > 60 s */
#define HIST_BUCKETS  ((1 << HIST_LIN_BITS) + (HIST_TOP_BITS - HIST_LIN_BITS) * (1 << HIST_SUB_BITS))
#define NEVER         INT64_MAX

#define USAGE                                                                                      \
  "loadgen -u http://IP[:PORT][/path] -r RATE [-c CONNS] -d SECONDS [-k KEYFILE] "                 \
  "[-H 'Name: value']... [-w WARMUP_SECONDS] [-s SEED]"

struct options {
  struct sockaddr_in addr;
  char hostport[32]; /* the Host header: "IP:PORT" */
  const char *path;
  long long rate;
  int conns;
  double duration, warmup;
  uint64_t seed;
  const char *keyfile;
  const char *headers[MAX_HEADERS];
  int nheaders;
};

/* A growable byte buffer, used at start only. */
struct sbuf {
  char *p;
  size_t len, cap;
};

/* The request texts, one per key (one in all without -k), back to back:
 * request k is text.p[k ? end[k - 1] : 0 .. end[k]). */
struct reqs {
  struct sbuf text;
  size_t *end;
  size_t n, cap;
};

/* Where a response's parse stands (RFC 9112). Lines are kept up to LINE_CAP
 * bytes; the rest of a longer line is counted, not kept. */
enum resp_state {
  RS_STATUS,
  RS_HEADER,
  RS_BODY_LEN,
  RS_BODY_EOF,
  RS_CHUNK_SIZE,
  RS_CHUNK_DATA,
  RS_CHUNK_END,
  RS_TRAILER
};

enum { FEED_MORE, FEED_DONE, FEED_ERR };

struct resp {
  enum resp_state st;
  int status;
  bool http10, keep_alive, close_tok, te, chunked, have_len;
  bool close; /* the connection ends with this response */
  uint64_t remaining;
  uint32_t head_bytes;
  uint32_t line_len;
  bool line_long; /* bytes of this line were dropped */
  char line[LINE_CAP];
};

enum conn_state { C_CLOSED, C_DOWN, C_CONNECTING, C_IDLE, C_BUSY };

struct conn {
  int fd;
  uint32_t gen; /* bumped per socket: events of a closed socket are ignored */
  enum conn_state state;
  bool out_armed;
  struct conn *idle_prev, *idle_next; /* in the idle FIFO iff C_IDLE */
  const char *req;
  size_t req_len, req_sent;
  int64_t req_i;    /* the request in flight (C_BUSY) */
  int64_t retry_at; /* C_DOWN: when to connect again */
  struct resp resp;
};

struct hist {
  uint64_t count, max_ns, sum_ns;
  uint64_t bucket[HIST_BUCKETS];
};

struct lg {
  const struct options *o;
  const struct reqs *rq;
  int ep;
  bool no_pwait2;
  struct conn *conns;
  int nconns, n_idle, n_busy, n_down;
  struct conn *idle_head, *idle_tail;
  int64_t next_retry;
  int last_err;
  double interval_ns;
  int64_t t0, t_meas, deadline;
  int64_t n_warm, total; /* requests [n_warm, total) are measured */
  int64_t next_i;        /* the next request to send */
  int64_t due_i, late_mark;
  uint64_t prng;
  uint64_t sent, completed, errors, late, status[6];
  struct hist hist;
  char rbuf[65536];
};

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

static int64_t max64(int64_t a, int64_t b) {
  return a > b ? a : b;
}

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* ---- arguments ---- */

__attribute__((format(printf, 1, 2))) _Noreturn static void usage_error(const char *fmt, ...) {
  va_list ap;
  fputs("loadgen: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "; usage: %s\n", USAGE);
  exit(2);
}

static long long parse_ll(const char *opt, const char *s, long long lo, long long hi) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (end == s || *end || errno || v < lo || v > hi)
    usage_error("bad %s '%s' (an integer from %lld to %lld)", opt, s, lo, hi);
  return v;
}

/* Seconds: lo < v <= MAX_SECONDS, or lo <= v when zero is allowed. */
static double parse_seconds(const char *opt, const char *s, bool zero_ok) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  bool ok = end != s && !*end && !errno && (zero_ok ? v >= 0 : v > 0) && v <= MAX_SECONDS;
  if (!ok)
    usage_error("bad %s '%s' (seconds, %s %g)", opt, s,
                zero_ok ? ">= 0, <=" : "> 0, <=", MAX_SECONDS);
  return v;
}

static bool visible(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] <= ' ' || s[i] == 0x7f)
      return false;
  return true;
}

/* http://A.B.C.D[:PORT][/path]; the path is borrowed from argv. */
static void parse_url(const char *u, struct options *o) {
  const char *h = u + 7, *e = h;
  char host[16];
  long long port = 80;
  if (strncasecmp(u, "http://", 7) != 0)
    usage_error("bad -u '%s' (http:// only)", u);
  while (*e && *e != ':' && *e != '/')
    e++;
  if (e == h || e - h >= (long)sizeof host)
    usage_error("bad -u '%s' (the host must be a numeric IPv4 address)", u);
  memcpy(host, h, (size_t)(e - h));
  host[e - h] = '\0';
  memset(&o->addr, 0, sizeof o->addr);
  if (inet_pton(AF_INET, host, &o->addr.sin_addr) != 1)
    usage_error("bad -u '%s' (the host must be a numeric IPv4 address)", u);
  if (*e == ':') {
    char *pe = (char *)e + 1;
    errno = 0;
    if (*pe >= '0' && *pe <= '9')
      port = strtoll(e + 1, &pe, 10);
    if (pe == e + 1 || port < 1 || port > 65535 || errno || (*pe && *pe != '/'))
      usage_error("bad -u '%s' (port 1-65535)", u);
    e = pe;
  }
  if (*e && !visible(e, strlen(e)))
    usage_error("bad -u '%s' (spaces or control characters in the path)", u);
  o->addr.sin_family = AF_INET;
  o->addr.sin_port = htons((uint16_t)port);
  o->path = *e ? e : "/";
  snprintf(o->hostport, sizeof o->hostport, "%s:%lld", host, port);
}

/* A header line: a non-empty token name, a colon, no CR, LF or NUL. */
static void check_header(const char *hdr) {
  const char *colon = strchr(hdr, ':');
  if (!colon || colon == hdr || !visible(hdr, (size_t)(colon - hdr)) || strpbrk(hdr, "\r\n"))
    usage_error("bad -H '%s' (Name: value)", hdr);
}

static void parse_args(int argc, char **argv, struct options *o) {
  int ch;
  memset(o, 0, sizeof *o);
  o->conns = 64;
  o->warmup = 1;
  o->seed = 12345;
  opterr = 0;
  while ((ch = getopt(argc, argv, ":u:r:c:d:k:H:w:s:")) != -1) {
    switch (ch) {
    case 'u': parse_url(optarg, o); break;
    case 'r': o->rate = parse_ll("-r", optarg, 1, MAX_RATE); break;
    case 'c': o->conns = (int)parse_ll("-c", optarg, 1, MAX_CONNS); break;
    case 'd': o->duration = parse_seconds("-d", optarg, false); break;
    case 'w': o->warmup = parse_seconds("-w", optarg, true); break;
    case 's': o->seed = (uint64_t)parse_ll("-s", optarg, 0, INT64_MAX); break;
    case 'k': o->keyfile = optarg; break;
    case 'H':
      if (o->nheaders == MAX_HEADERS)
        usage_error("bad -H '%s' (at most %d)", optarg, MAX_HEADERS);
      check_header(optarg);
      o->headers[o->nheaders++] = optarg;
      break;
    case ':': usage_error("bad -%c (it needs a value)", optopt); break;
    default: usage_error("bad option '-%c'", optopt);
    }
  }
  if (optind < argc)
    usage_error("bad argument '%s'", argv[optind]);
  if (!o->path)
    usage_error("missing -u");
  if (!o->rate)
    usage_error("missing -r");
  if (!o->duration)
    usage_error("missing -d");
}

/* ---- request texts ---- */

static int sbuf_add(struct sbuf *b, const char *s, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->len + n)
      cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
      return -1;
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  return 0;
}

static int sbuf_str(struct sbuf *b, const char *s) {
  return sbuf_add(b, s, strlen(s));
}

/* Appends "<head>X-API-Key: <key>\r\n<tail>" (no key line if key is NULL). */
static int reqs_add(struct reqs *r, const struct sbuf *head, const char *key,
                    const struct sbuf *tail) {
  if (r->n == r->cap) {
    size_t cap = r->cap ? r->cap * 2 : 64;
    size_t *end = realloc(r->end, cap * sizeof *end);
    if (!end)
      return -1;
    r->end = end;
    r->cap = cap;
  }
  if (sbuf_add(&r->text, head->p, head->len) ||
      (key && (sbuf_str(&r->text, "X-API-Key: ") || sbuf_str(&r->text, key) ||
               sbuf_str(&r->text, "\r\n"))) ||
      sbuf_add(&r->text, tail->p, tail->len))
    return -1;
  r->end[r->n++] = r->text.len;
  return 0;
}

/* One request per key in the file: a key is a line of visible ASCII (a
 * trailing CR and blanks are dropped; blank lines are skipped). A bad key
 * file is an argument error (exit 2). Returns 0, or -1 when out of memory. */
static int read_keys(const struct options *o, struct reqs *r, const struct sbuf *head,
                     const struct sbuf *tail) {
  FILE *f = fopen(o->keyfile, "r");
  char *line = NULL, bad[64] = "";
  size_t cap = 0, lineno = 0;
  ssize_t n;
  int result = -1;
  if (!f)
    usage_error("bad -k '%s' (%s)", o->keyfile, strerror(errno));
  while ((n = getline(&line, &cap, f)) >= 0) {
    lineno++;
    while (n > 0 && strchr("\n\r \t", line[n - 1]))
      n--;
    if (n == 0)
      continue;
    line[n] = '\0';
    if (n > MAX_KEY_LEN || !visible(line, (size_t)n)) {
      snprintf(bad, sizeof bad, "line %zu is not a key", lineno);
      goto out;
    }
    if (reqs_add(r, head, line, tail))
      goto out;
  }
  if (r->n == 0)
    snprintf(bad, sizeof bad, "no keys");
  result = 0;
out:
  fclose(f);
  free(line);
  if (*bad)
    usage_error("bad -k '%s' (%s)", o->keyfile, bad);
  return result;
}

static void reqs_free(struct reqs *r) {
  free(r->text.p);
  free(r->end);
}

/* Formats the requests; returns 0, or -1 when out of memory. */
static int build_requests(const struct options *o, struct reqs *r) {
  struct sbuf head = {0}, tail = {0};
  int result = -1;
  memset(r, 0, sizeof *r);
  if (sbuf_str(&head, "GET ") || sbuf_str(&head, o->path) ||
      sbuf_str(&head, " HTTP/1.1\r\nHost: ") || sbuf_str(&head, o->hostport) ||
      sbuf_str(&head, "\r\n"))
    goto out;
  for (int i = 0; i < o->nheaders; i++)
    if (sbuf_str(&tail, o->headers[i]) || sbuf_str(&tail, "\r\n"))
      goto out;
  if (sbuf_str(&tail, "\r\n"))
    goto out;
  result = o->keyfile ? read_keys(o, r, &head, &tail) : reqs_add(r, &head, NULL, &tail);
out:
  free(head.p);
  free(tail.p);
  return result;
}

/* ---- histogram ---- */

static int hist_index(uint64_t us) {
  if (us > HIST_MAX_US)
    us = HIST_MAX_US;
  if (us < (1u << HIST_LIN_BITS))
    return (int)us;
  int e = 63 - __builtin_clzll(us);
  int sub = (int)((us >> (e - HIST_SUB_BITS)) & ((1u << HIST_SUB_BITS) - 1));
  return (1 << HIST_LIN_BITS) + ((e - HIST_LIN_BITS) << HIST_SUB_BITS) + sub;
}

/* The highest value (us) that falls in bucket i. */
static uint64_t hist_top(int i) {
  if (i < (1 << HIST_LIN_BITS))
    return (uint64_t)i;
  int k = i - (1 << HIST_LIN_BITS);
  int shift = HIST_LIN_BITS + (k >> HIST_SUB_BITS) - HIST_SUB_BITS;
  uint64_t lo = (uint64_t)((1 << HIST_SUB_BITS) + (k & ((1 << HIST_SUB_BITS) - 1))) << shift;
  return lo + ((uint64_t)1 << shift) - 1;
}

static void hist_add(struct hist *h, uint64_t ns) {
  h->bucket[hist_index((ns + 500) / 1000)]++;
  h->count++;
  h->sum_ns += ns;
  if (ns > h->max_ns)
    h->max_ns = ns;
}

static uint64_t hist_percentile(const struct hist *h, double p) {
  double want_d = p / 100 * (double)h->count;
  uint64_t want = (uint64_t)want_d, seen = 0, max_us = (h->max_ns + 500) / 1000;
  if ((double)want < want_d || want == 0)
    want++;
  for (int i = 0; i < HIST_BUCKETS; i++) {
    seen += h->bucket[i];
    if (seen >= want)
      return hist_top(i) < max_us ? hist_top(i) : max_us;
  }
  return max_us;
}

/* ---- response parsing ---- */

static void resp_reset(struct resp *r) {
  memset(r, 0, offsetof(struct resp, line));
  r->st = RS_STATUS;
}

/* Does the comma-separated list s[0..n) hold the token tok (case-insensitive)? */
static bool has_token(const char *s, size_t n, const char *tok, bool last_only) {
  size_t tl = strlen(tok), i = 0;
  bool found = false;
  while (i < n) {
    size_t j = i;
    while (j < n && s[j] != ',')
      j++;
    size_t a = i, b = j;
    while (a < b && (s[a] == ' ' || s[a] == '\t'))
      a++;
    while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t'))
      b--;
    bool match = b - a == tl && strncasecmp(s + a, tok, tl) == 0;
    found = last_only ? match : (found || match);
    i = j + 1;
  }
  return found;
}

/* "HTTP/1.x NNN reason" (RFC 9112 section 4). */
static int parse_status(struct resp *r, const char *l, size_t n) {
  if (n < 12 || memcmp(l, "HTTP/1.", 7) != 0 || (l[7] != '0' && l[7] != '1') || l[8] != ' ' ||
      (n > 12 && l[12] != ' '))
    return FEED_ERR;
  for (int i = 9; i < 12; i++)
    if (l[i] < '0' || l[i] > '9')
      return FEED_ERR;
  r->status = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
  if (r->status < 100 || r->status > 599)
    return FEED_ERR;
  r->http10 = l[7] == '0';
  r->st = RS_HEADER;
  return FEED_MORE;
}

static bool name_is(const char *l, size_t n, const char *name) {
  return n == strlen(name) && strncasecmp(l, name, n) == 0;
}

/* Reads the headers that frame the body or end the connection. */
static int parse_header(struct resp *r, const char *l, size_t n, bool truncated) {
  const char *colon = memchr(l, ':', n);
  if (!colon)
    return FEED_ERR;
  size_t nl = (size_t)(colon - l), a = nl + 1, b = n;
  while (a < b && (l[a] == ' ' || l[a] == '\t'))
    a++;
  while (b > a && (l[b - 1] == ' ' || l[b - 1] == '\t'))
    b--;
  bool cl = name_is(l, nl, "content-length"), te = name_is(l, nl, "transfer-encoding");
  bool conn = name_is(l, nl, "connection");
  if ((cl || te || conn) && truncated)
    return FEED_ERR;
  if (cl) {
    uint64_t v = 0;
    if (a == b || b - a > 18)
      return FEED_ERR;
    for (size_t i = a; i < b; i++) {
      if (l[i] < '0' || l[i] > '9')
        return FEED_ERR;
      v = v * 10 + (uint64_t)(l[i] - '0');
    }
    if (r->have_len && v != r->remaining)
      return FEED_ERR; /* RFC 9112 section 6.3 rule 5 */
    r->have_len = true;
    r->remaining = v;
  } else if (te) {
    r->te = true;
    r->chunked = has_token(l + a, b - a, "chunked", true);
  } else if (conn) {
    r->close_tok |= has_token(l + a, b - a, "close", false);
    r->keep_alive |= has_token(l + a, b - a, "keep-alive", false);
  }
  return FEED_MORE;
}

/* The head is complete: how long is the body (RFC 9112 section 6.3)? */
static int head_done(struct resp *r) {
  if (r->status < 200) {
    if (r->status == 101)
      return FEED_ERR; /* we never asked to switch protocols */
    resp_reset(r);     /* an interim response (RFC 9110 section 15.2): the real one follows */
    return FEED_MORE;
  }
  r->close = r->close_tok || (r->http10 && !r->keep_alive);
  r->head_bytes = 0;
  if (r->status == 204 || r->status == 304)
    return FEED_DONE;
  if (r->te && r->chunked) {
    r->st = RS_CHUNK_SIZE;
  } else if (r->te || !r->have_len) {
    r->close = true;
    r->st = RS_BODY_EOF;
  } else if (r->remaining == 0) {
    return FEED_DONE;
  } else {
    r->st = RS_BODY_LEN;
  }
  return FEED_MORE;
}

/* "HEX[;ext]" (RFC 9112 section 7.1). */
static int parse_chunk_size(struct resp *r, const char *l, size_t n) {
  uint64_t v = 0;
  size_t i = 0;
  for (; i < n && i < 16; i++) {
    char c = l[i];
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                   : -1;
    if (d < 0)
      break;
    v = v * 16 + (uint64_t)d;
  }
  if (i == 0 || (i < n && l[i] != ';' && l[i] != ' ' && l[i] != '\t'))
    return FEED_ERR;
  r->head_bytes = 0;
  r->remaining = v;
  r->st = v ? RS_CHUNK_DATA : RS_TRAILER;
  return FEED_MORE;
}

static int line_done(struct resp *r) {
  size_t n = r->line_len;
  bool truncated = r->line_long;
  while (n > 0 && (r->line[n - 1] == '\n' || r->line[n - 1] == '\r'))
    n--;
  r->line_len = 0;
  r->line_long = false;
  switch (r->st) {
  case RS_STATUS: return parse_status(r, r->line, n);
  case RS_HEADER: return n ? parse_header(r, r->line, n, truncated) : head_done(r);
  case RS_CHUNK_SIZE: return parse_chunk_size(r, r->line, n);
  case RS_CHUNK_END: r->st = RS_CHUNK_SIZE; return n ? FEED_ERR : FEED_MORE;
  case RS_TRAILER: return n ? FEED_MORE : FEED_DONE;
  default: return FEED_ERR;
  }
}

/* Takes bytes of one line (up to and including its LF, if nl). */
static int line_feed(struct resp *r, const char *p, size_t n, bool nl) {
  r->head_bytes += (uint32_t)n;
  if (r->head_bytes > HEAD_MAX)
    return FEED_ERR;
  if (n > LINE_CAP - r->line_len) {
    r->line_long = true;
    n = LINE_CAP - r->line_len;
  }
  memcpy(r->line + r->line_len, p, n);
  r->line_len += (uint32_t)n;
  return nl ? line_done(r) : FEED_MORE;
}

/* Feeds n bytes of the response. FEED_DONE: complete after *used bytes;
 * FEED_MORE: all taken, more needed; FEED_ERR: not a response we can read. */
static int resp_feed(struct resp *r, const char *p, size_t n, size_t *used) {
  size_t i = 0;
  int rc = FEED_MORE;
  while (i < n && rc == FEED_MORE) {
    if (r->st == RS_BODY_LEN || r->st == RS_CHUNK_DATA) {
      size_t take = n - i < r->remaining ? n - i : (size_t)r->remaining;
      i += take;
      r->remaining -= take;
      if (r->remaining == 0 && r->st == RS_BODY_LEN)
        rc = FEED_DONE;
      else if (r->remaining == 0)
        r->st = RS_CHUNK_END;
    } else if (r->st == RS_BODY_EOF) {
      i = n; /* the body ends when the server closes */
    } else {
      const char *nl = memchr(p + i, '\n', n - i);
      size_t take = nl ? (size_t)(nl - (p + i)) + 1 : n - i;
      rc = line_feed(r, p + i, take, nl != NULL);
      i += take;
    }
  }
  *used = i;
  return rc;
}

/* ---- connections ---- */

static int64_t intended(const struct lg *g, int64_t i) {
  return g->t0 + (int64_t)((double)i * g->interval_ns);
}

static void idle_push(struct lg *g, struct conn *c) {
  c->state = C_IDLE;
  c->idle_next = NULL;
  c->idle_prev = g->idle_tail;
  if (g->idle_tail)
    g->idle_tail->idle_next = c;
  else
    g->idle_head = c;
  g->idle_tail = c;
  g->n_idle++;
}

static void idle_unlink(struct lg *g, struct conn *c) {
  if (c->idle_prev)
    c->idle_prev->idle_next = c->idle_next;
  else
    g->idle_head = c->idle_next;
  if (c->idle_next)
    c->idle_next->idle_prev = c->idle_prev;
  else
    g->idle_tail = c->idle_prev;
  c->idle_prev = c->idle_next = NULL;
  g->n_idle--;
}

/* Counts an error once the measured phase has begun: a lost request when
 * req_i >= 0 (if it is a measured one), else a connection's. */
static void count_error(struct lg *g, int64_t now, int64_t req_i) {
  if (req_i >= 0 ? req_i >= g->n_warm : now >= g->t_meas)
    g->errors++;
}

static void conn_watch(struct lg *g, struct conn *c, int op, uint32_t events) {
  struct epoll_event ev = {.events = events};
  ev.data.u64 = (uint64_t)c->gen << 32 | (uint32_t)(c - g->conns);
  if (epoll_ctl(g->ep, op, c->fd, &ev) < 0) {
    perror("loadgen: epoll_ctl");
    exit(1);
  }
  c->out_armed = events & EPOLLOUT;
}

/* Closes the socket, whatever the state; the request in flight is dropped
 * (the caller has counted it). Leaves the connection C_CLOSED. */
static void conn_close(struct lg *g, struct conn *c) {
  if (c->state == C_IDLE)
    idle_unlink(g, c);
  else if (c->state == C_BUSY)
    g->n_busy--;
  else if (c->state == C_DOWN)
    g->n_down--;
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
  c->req_i = -1;
  c->state = C_CLOSED;
}

/* A connect failed: try again in RETRY_NS. */
static void conn_down(struct lg *g, struct conn *c, int64_t now, int err) {
  conn_close(g, c);
  count_error(g, now, -1);
  g->last_err = err;
  c->state = C_DOWN;
  c->retry_at = now + RETRY_NS;
  g->next_retry = min64(g->next_retry, c->retry_at);
  g->n_down++;
}

/* Starts a non-blocking connect on a C_CLOSED connection. */
static void conn_open(struct lg *g, struct conn *c, int64_t now) {
  int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    conn_down(g, c, now, errno);
    return;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->fd = fd;
  c->gen++;
  if (connect(fd, (const struct sockaddr *)&g->o->addr, sizeof g->o->addr) < 0 &&
      errno != EINPROGRESS) {
    conn_down(g, c, now, errno);
    return;
  }
  c->state = C_CONNECTING;
  conn_watch(g, c, EPOLL_CTL_ADD, EPOLLOUT);
}

static void conn_reopen(struct lg *g, struct conn *c, int64_t now) {
  conn_close(g, c);
  conn_open(g, c, now);
}

/* The connection broke: the request on it, if any, is lost. */
static void conn_fail(struct lg *g, struct conn *c, int64_t now) {
  count_error(g, now, c->state == C_BUSY ? c->req_i : -1);
  conn_reopen(g, c, now);
}

static void conn_connected(struct lg *g, struct conn *c, int64_t now) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
    err = errno;
  if (err) {
    conn_down(g, c, now, err);
    return;
  }
  conn_watch(g, c, EPOLL_CTL_MOD, EPOLLIN);
  idle_push(g, c);
}

static void conn_flush(struct lg *g, struct conn *c, int64_t now) {
  while (c->req_sent < c->req_len) {
    ssize_t n = send(c->fd, c->req + c->req_sent, c->req_len - c->req_sent, MSG_NOSIGNAL);
    if (n > 0) {
      c->req_sent += (size_t)n;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!c->out_armed)
        conn_watch(g, c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
      return;
    } else if (n == 0 || errno != EINTR) {
      conn_fail(g, c, now);
      return;
    }
  }
  if (c->out_armed)
    conn_watch(g, c, EPOLL_CTL_MOD, EPOLLIN);
}

/* Sends request i on the idle connection c, with a key picked at random. */
static void send_request(struct lg *g, struct conn *c, int64_t i, int64_t now) {
  const struct reqs *rq = g->rq;
  size_t k = rq->n > 1 ? (size_t)(splitmix64(&g->prng) % rq->n) : 0; /* bias < n / 2^64 */
  size_t start = k ? rq->end[k - 1] : 0;
  idle_unlink(g, c);
  c->state = C_BUSY;
  g->n_busy++;
  c->req = rq->text.p + start;
  c->req_len = rq->end[k] - start;
  c->req_sent = 0;
  c->req_i = i;
  resp_reset(&c->resp);
  if (i >= g->n_warm)
    g->sent++;
  conn_flush(g, c, now);
}

static void record(struct lg *g, int64_t i, int status, int64_t now) {
  if (i < g->n_warm)
    return;
  g->completed++;
  g->status[status / 100]++;
  hist_add(&g->hist, (uint64_t)(now - intended(g, i)));
}

/* The response is complete. Bytes after it (extra) are a protocol error:
 * nothing was asked for. */
static void conn_response(struct lg *g, struct conn *c, int64_t now, bool extra) {
  record(g, c->req_i, c->resp.status, now);
  g->n_busy--;
  c->req_i = -1;
  c->state = C_CLOSED; /* neither busy nor idle, for conn_reopen */
  if (extra || c->resp.close || c->req_sent < c->req_len) {
    if (extra)
      count_error(g, now, -1);
    conn_reopen(g, c, now);
    return;
  }
  idle_push(g, c);
}

static void conn_eof(struct lg *g, struct conn *c, int64_t now) {
  if (c->state == C_BUSY && c->resp.st == RS_BODY_EOF)
    conn_response(g, c, now, false);
  else
    conn_fail(g, c, now); /* also an idle connection closed unannounced */
}

static void conn_read(struct lg *g, struct conn *c, int64_t now) {
  for (;;) {
    ssize_t n = read(c->fd, g->rbuf, sizeof g->rbuf);
    size_t used;
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    if (n < 0 || c->state != C_BUSY) {
      conn_fail(g, c, now);
      return;
    }
    if (n == 0) {
      conn_eof(g, c, now);
      return;
    }
    int rc = resp_feed(&c->resp, g->rbuf, (size_t)n, &used);
    if (rc == FEED_ERR) {
      conn_fail(g, c, now);
      return;
    }
    if (rc == FEED_DONE) {
      conn_response(g, c, now_ns(), used < (size_t)n);
      return;
    }
    if ((size_t)n < sizeof g->rbuf)
      return; /* level-triggered: any rest comes with the next event */
  }
}

static void on_event(struct lg *g, const struct epoll_event *ev) {
  struct conn *c = &g->conns[(uint32_t)ev->data.u64];
  int64_t now = now_ns();
  if (c->gen != (uint32_t)(ev->data.u64 >> 32) || c->fd < 0)
    return; /* its socket was closed earlier in this batch */
  if (c->state == C_CONNECTING) {
    conn_connected(g, c, now);
    return;
  }
  if ((ev->events & EPOLLOUT) && c->state == C_BUSY) {
    uint32_t gen = c->gen;
    conn_flush(g, c, now);
    if (c->gen != gen)
      return;
  }
  if (ev->events & (EPOLLIN | EPOLLERR | EPOLLHUP))
    conn_read(g, c, now);
}

/* Reconnects the connections whose retry time has come. */
static void retry_down(struct lg *g, int64_t now) {
  if (g->n_down == 0 || now < g->next_retry)
    return;
  g->next_retry = NEVER;
  for (int i = 0; i < g->nconns; i++) {
    struct conn *c = &g->conns[i];
    if (c->state == C_DOWN && c->retry_at <= now)
      conn_reopen(g, c, now);
    else if (c->state == C_DOWN)
      g->next_retry = min64(g->next_retry, c->retry_at);
  }
}

/* ---- the loop ---- */

/* Waits for events at most timeout_ns, but at least MIN_SLEEP_NS unless
 * something is due now: the generator never spins, because on a 2-core
 * machine the core it would spin on is shared with a server (the
 * upstream, or wrk's peer), and a spinning client steals from it. Sends
 * are thus up to ~100 us late, in batches; the lateness counts in each
 * request's latency, the same for every server measured. */
static int wait_events(struct lg *g, struct epoll_event *evs, int max, int64_t timeout_ns) {
  int n;
  timeout_ns = min64(timeout_ns, MAX_WAIT_NS);
  if (timeout_ns <= 0) {
    n = epoll_wait(g->ep, evs, max, 0);
  } else if (!g->no_pwait2) {
    timeout_ns = max64(timeout_ns, MIN_SLEEP_NS);
    struct {
      int64_t tv_sec, tv_nsec; /* struct __kernel_timespec */
    } ts = {timeout_ns / 1000000000, timeout_ns % 1000000000};
    n = (int)syscall(SYS_epoll_pwait2, g->ep, evs, max, &ts, NULL, 0);
    if (n < 0 && errno == ENOSYS) {
      g->no_pwait2 = true; /* Linux < 5.11: whole milliseconds */
      n = 0;
    }
  } else {
    n = epoll_wait(g->ep, evs, max, (int)((timeout_ns + 999999) / 1000000));
  }
  if (n < 0 && errno != EINTR) {
    perror("loadgen: epoll_wait");
    exit(1);
  }
  return n < 0 ? 0 : n;
}

/* Sends every due request on an idle connection, oldest first; counts as
 * late the due ones left waiting. */
static void dispatch(struct lg *g, int64_t now) {
  while (g->next_i < g->total && g->idle_head && intended(g, g->next_i) <= now) {
    send_request(g, g->idle_head, g->next_i, now);
    g->next_i++;
  }
  g->due_i = max64(g->due_i, g->next_i);
  while (g->due_i < g->total && intended(g, g->due_i) <= now)
    g->due_i++;
  int64_t from = max64(max64(g->next_i, g->late_mark), g->n_warm);
  if (g->due_i > from)
    g->late += (uint64_t)(g->due_i - from);
  g->late_mark = max64(g->late_mark, g->due_i);
}

static int64_t next_wake(const struct lg *g) {
  int64_t wake = g->deadline;
  if (g->next_i < g->total && g->idle_head)
    wake = min64(wake, intended(g, g->next_i));
  if (g->n_down)
    wake = min64(wake, g->next_retry);
  return wake;
}

static void run(struct lg *g) {
  struct epoll_event evs[256];
  g->t0 = now_ns();
  g->t_meas = intended(g, g->n_warm);
  g->deadline = intended(g, g->total) + DRAIN_NS;
  for (;;) {
    int64_t now = now_ns();
    retry_down(g, now);
    dispatch(g, now);
    if ((g->next_i == g->total && g->n_busy == 0) || now >= g->deadline)
      break;
    int n = wait_events(g, evs, 256, next_wake(g) - now);
    for (int i = 0; i < n; i++)
      on_event(g, &evs[i]);
  }
  /* Unanswered by the deadline, or never sent: errors (timeouts). */
  for (int i = 0; i < g->nconns; i++)
    if (g->conns[i].state == C_BUSY && g->conns[i].req_i >= g->n_warm)
      g->errors++;
  g->errors += (uint64_t)(g->total - max64(g->next_i, g->n_warm));
}

/* Connects all connections; 0 when all are up, else -1 (message printed). */
static int connect_all(struct lg *g) {
  struct epoll_event evs[256];
  int64_t deadline = now_ns() + CONNECT_NS;
  for (int i = 0; i < g->nconns; i++)
    conn_open(g, &g->conns[i], now_ns());
  while (g->n_idle < g->nconns && g->n_down == 0) {
    int64_t now = now_ns();
    if (now >= deadline) {
      fprintf(stderr, "loadgen: cannot connect to %s: timed out\n", g->o->hostport);
      return -1;
    }
    int n = wait_events(g, evs, 256, deadline - now);
    for (int i = 0; i < n; i++)
      on_event(g, &evs[i]);
  }
  if (g->n_down) {
    fprintf(stderr, "loadgen: cannot connect to %s: %s\n", g->o->hostport, strerror(g->last_err));
    return -1;
  }
  return 0;
}

/* Raises the open-file limit to what -c needs. */
static int fd_limit(int conns) {
  struct rlimit rl;
  rlim_t need = (rlim_t)conns + 32;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need) {
    rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < need) {
      fprintf(stderr, "loadgen: -c %d needs %lu open files; the limit is %lu\n", conns,
              (unsigned long)need, (unsigned long)rl.rlim_cur);
      return -1;
    }
  }
  return 0;
}

static void report(const struct lg *g) {
  const struct options *o = g->o;
  const struct hist *h = &g->hist;
  printf("loadgen: rate %lld/s target, %.1f/s sent, %.1f/s completed over %.2f s, %d connections\n",
         o->rate, (double)g->sent / o->duration, (double)g->completed / o->duration, o->duration,
         o->conns);
  printf("latency us: p50 %" PRIu64 " p90 %" PRIu64 " p99 %" PRIu64 " p99.9 %" PRIu64
         " max %" PRIu64 " mean %.1f\n",
         hist_percentile(h, 50), hist_percentile(h, 90), hist_percentile(h, 99),
         hist_percentile(h, 99.9), (h->max_ns + 500) / 1000,
         h->count ? (double)h->sum_ns / (double)h->count / 1000 : 0.0);
  printf("status: 2xx %" PRIu64 " 3xx %" PRIu64 " 4xx %" PRIu64 " 5xx %" PRIu64 " errors %" PRIu64
         " late %" PRIu64 "\n",
         g->status[2], g->status[3], g->status[4], g->status[5], g->errors, g->late);
}

int main(int argc, char **argv) {
  struct options o;
  struct reqs rq;
  struct lg *g = NULL;
  int result = 1;
  parse_args(argc, argv, &o);
  if (build_requests(&o, &rq)) {
    fprintf(stderr, "loadgen: out of memory\n");
    goto out;
  }
  if (fd_limit(o.conns))
    goto out;
  /* Sleeps end at the timer's expiry, not up to 50 us later (the default slack). */
  prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  g = calloc(1, sizeof *g);
  if (!g)
    goto out;
  g->ep = -1;
  g->conns = calloc((size_t)o.conns, sizeof *g->conns);
  if (!g->conns)
    goto out;
  for (int i = 0; i < o.conns; i++)
    g->conns[i].fd = -1;
  g->o = &o;
  g->rq = &rq;
  g->nconns = o.conns;
  g->prng = o.seed;
  g->interval_ns = 1e9 / (double)o.rate;
  g->n_warm = (int64_t)(o.warmup * (double)o.rate + 0.5);
  g->total = g->n_warm + max64(1, (int64_t)(o.duration * (double)o.rate + 0.5));
  g->t_meas = g->next_retry = NEVER;
  g->ep = epoll_create1(EPOLL_CLOEXEC);
  if (g->ep < 0 || connect_all(g))
    goto out;
  run(g);
  report(g);
  result = g->completed ? 0 : 1;
out:
  if (g && g->conns)
    for (int i = 0; i < g->nconns; i++)
      if (g->conns[i].fd >= 0)
        close(g->conns[i].fd);
  if (g && g->ep >= 0)
    close(g->ep);
  if (g)
    free(g->conns);
  free(g);
  reqs_free(&rq);
  return result;
}
