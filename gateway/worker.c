/*
 * worker.c - the gateway's data plane: one thread per worker, each with
 * its own epoll loop (edge-triggered), SO_REUSEPORT listener, client
 * connections, upstream keep-alive pools and timer heap. No locks and no
 * store access on the request path.
 *
 * A client connection runs one request at a time (pipelined requests wait
 * in its read buffer, so responses leave in order):
 *
 *   HEAD ──parse/route──▶ UPSTREAM (connect, send head+body, read head)
 *     ▲                        │
 *     │                        ▼
 *     └──── keep-alive ◀─── BODY (stream response) ──▶ close
 *
 * Readiness is tracked in flags (rd/wr ready) because epoll is
 * edge-triggered; pump() makes all the progress it can and stops on
 * EAGAIN or back-pressure (a full buffer on the other side). Memory per
 * connection is bounded: rx grows to max_head at most, tx and utx are
 * fixed (GW_IO_BUF) and bodies stream through them.
 *
 * Ownership: a connection is freed only by conn_close(), never while a
 * pump() for it is on the stack (closing sets a flag; the loop frees it).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "gateway/gw.h"
#include "gateway/ring.h"
#include "gateway/tls.h"

#define GW_IO_BUF   (16 * 1024)
#define GW_BUF_POOL 64 /* free I/O buffers a worker keeps: 1 MiB at most */
/* A request body up to this size is kept so that the request can be sent
 * again to another target (retries); larger bodies stream once. */
#define GW_REPLAY_MAX   (64 * 1024)
#define GW_EVENTS       256
#define GW_LOG_BUF      (64 * 1024)
#define GW_LOG_FLUSH_MS 100 /* access-log lines wait at most this long in the buffer */
#define GW_PATH_MAX     8192

enum { K_LISTEN = 1, K_LISTEN_TLS, K_CLIENT, K_UP, K_WAKE };

enum {
  S_HEAD,     /* reading a request head */
  S_UPSTREAM, /* connecting / sending the request / awaiting the response head */
  S_BODY,     /* streaming the response body */
  S_FLUSH,    /* writing a response we made ourselves */
};

typedef struct gw_buf {
  char *data;
  size_t start, end, cap;
} gw_buf_t;

typedef struct gw_tstate gw_tstate_t;
typedef struct gw_conn gw_conn_t;
typedef struct gw_worker gw_worker_t;

typedef struct gw_upconn {
  uint8_t kind;
  int fd;
  gw_tstate_t *ts;
  gw_conn_t *owner; /* NULL while idle in the pool */
  struct gw_upconn *next, *prev;
  int64_t idle_since;
  bool connected, rd_ready, wr_ready, reused;
  bool rd_hup; /* the peer's FIN (or an error) was reported: read to the end */
  SSL *ssl;    /* https:// targets */
  bool tls_ready;
  gw_buf_t rx;
} gw_upconn_t;

/* Per worker, per upstream target: pool, balancing, passive health. */
struct gw_tstate {
  char id[GW_ID_LEN + 300]; /* "<target id>|<host:port>|<https>" */
  gw_upconn_t *idle;        /* doubly linked */
  int nidle;
  int current_weight; /* smooth weighted round robin */
  int failures;       /* consecutive */
  int64_t down_until; /* ms; passive health cool-down */
  gw_tstate_t *hnext; /* hash chain */
};

struct gw_conn {
  uint8_t kind;
  int fd;
  gw_worker_t *w;
  int state;
  bool rd_ready, wr_ready, rd_eof, closing, close_after;
  bool rd_hup; /* the peer's FIN (or an error) was reported: read to the end */
  SSL *ssl;    /* clients of gateway_tls_listen */
  bool tls_ready;
  int heap_index;
  int64_t deadline;    /* when the timer fires */
  int64_t heap_key;    /* its place in the heap: <= deadline (see timer_set) */
  int deadline_status; /* 408 (client) or 504 (upstream) when it fires */
  gw_buf_t rx, tx, utx;
  /* the request in flight; its head is copied to headbuf and parsed
   * there, so it stays valid while rx moves on (retries rebuild from it) */
  gw_request_head_t req;
  char *headbuf;
  size_t headcap;
  gw_snapshot_t *snap; /* the snapshot route and target point into */
  const char *method_name;
  uint64_t moved;     /* bytes moved by any I/O: progress detection */
  uint64_t resp_sent; /* response bytes written to the client */
  bool queued, dead;
  /* the upstream send waits for the batch's (send_batch); its result,
   * once the ring has it, for upstream_flush to take as send()'s */
  bool send_queued, sent_ready;
  int sent_res; /* bytes, or -errno */
  const gw_route_t *route;
  const gw_target_t *target;
  gw_upconn_t *up;
  int retries_left;
  bool up_wrote; /* this attempt wrote bytes to the upstream */
  char *replay;  /* the body so far, while it fits GW_REPLAY_MAX */
  size_t replay_len, replay_pos;
  bool replay_ok;
  bool req_chunked, req_sent_all, resp_started, client_keep_alive;
  int64_t req_body_left; /* CL bytes still to forward */
  int64_t req_body_total;
  gw_chunked_t req_dec;
  bool req_dec_done;
  /* the response */
  gw_method_t method;
  int status;
  int resp_mode; /* 0 none, 1 length, 2 chunked->chunked, 3 close->chunked, 4 close->close */
  int64_t resp_left;
  gw_chunked_t resp_dec;
  bool resp_done;
  int64_t bytes_in, bytes_out;
  int64_t started_ms, started_us; /* on the worker's loop clock */
  int64_t ended_us;               /* when the request was done (latency) */
  char request_id[65];
  bool rid_ours; /* request_id came from new_request_id */
  char path_log[256];
  char client_ip[INET6_ADDRSTRLEN];
  /* the caller, once known (policy records live as long as the process) */
  const gw_key_t *key;
  gw_sub_t *sub;
  const gw_plan_t *plan;
  uint8_t reason; /* gw_reason_t: why the gateway refused it */
  bool admitted;  /* passed keys, limits and quotas: forwarded */
  bool metered;
  bool has_verdict;
  int64_t up_start_us, up_head_us; /* the upstream exchange, for the access log */
  /* the last valid key this connection sent, and its record */
  char kc_text[TG_TOKEN_MAX_LEN];
  size_t kc_len;
  const gw_key_t *kc_key;
  gw_verdict_t verdict; /* limits and quotas, for the response headers */
};

struct gw_worker {
  gw_server_t *srv;
  gw_stats_t stats; /* this worker's counters: no cache line shared on the hot path */
  int64_t now;      /* ms, refreshed once per loop turn */
  int64_t now_us;   /* the same instant in us */
  int64_t wall_ms;  /* the gateway's wall clock (gw_wall_ms) at that instant */
  int index;
  pthread_t thread;
  int ep, lfd, tlsfd, wakefd;
  uint8_t listen_kind, tls_kind, wake_kind;
  atomic_uint_fast64_t gen; /* snapshot generation this worker holds */
  _Atomic uint64_t epoch;   /* policy epoch this loop turn entered with */
  gw_snapshot_t *snap;
  gw_conn_t **heap;
  int nheap, capheap;
  gw_tstate_t *tbuckets[256];
  int nconns;
  bool draining;
  char logbuf[GW_LOG_BUF];
  size_t loglen;
  int64_t log_due; /* ms: when the buffer's first line has waited long enough */
  uint64_t rng;
  /* snapshots still used by in-flight requests (see snap_hold) */
  struct {
    gw_snapshot_t *snap;
    int refs;
  } held[16];
  int nheld;
  /* connections whose pump() stopped at its guard with work left */
  gw_conn_t **again;
  int nagain, capagain;
  /* target pointer -> state, valid for the snapshot it was filled under */
  struct {
    const gw_target_t *t;
    gw_tstate_t *ts;
    uint64_t gen; /* generations never repeat, unlike addresses */
  } tcache[64];
  /* connections closed during an event batch, freed after it */
  gw_conn_t **dead;
  int ndead, capdead;
  /* free GW_IO_BUF buffers (buf_init) */
  char *bufpool[GW_BUF_POOL];
  int nbufpool;
  /* connections with a request to send to their upstream, sent together
   * at the end of the batch through the ring (send_batch); ring.fd -1:
   * each is sent at once */
  gw_ring_t ring;
  gw_conn_t **sendq;
  int nsend, capsend;
  bool sending; /* in send_batch: what else is to send goes at once */
};

/* ---- small helpers ------------------------------------------------------ */

static int64_t now_ms(void) {
  return tg_mono_us() / 1000;
}

static uint64_t rng_next(gw_worker_t *w) {
  /* xorshift64*: request ids and parent ids need uniqueness, not secrecy */
  uint64_t x = w->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  w->rng = x;
  return x * 0x2545F4914F6CDD1DULL;
}

/* "00" .. "ff" and "00" .. "99": two digits per table look-up */
static const char hex_pairs[513] =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
static const char dec_pairs[201] = "00010203040506070809101112131415161718192021222324"
                                   "25262728293031323334353637383940414243444546474849"
                                   "50515253545556575859606162636465666768697071727374"
                                   "75767778798081828384858687888990919293949596979899";

static void hex64(uint64_t v, char *out) {
  for (int i = 14; i >= 0; i -= 2, v >>= 8)
    memcpy(out + i, hex_pairs + 2 * (v & 0xff), 2);
}

/* Decimal and hex without printf: these run ~15 times per request. */
static size_t fmt_dec(char *out, uint64_t v) {
  size_t n = 1;
  for (uint64_t t = v; t >= 10; t /= 10)
    n++;
  char *p = out + n;
  while (v >= 100) {
    p -= 2;
    memcpy(p, dec_pairs + 2 * (v % 100), 2);
    v /= 100;
  }
  if (v >= 10)
    memcpy(p - 2, dec_pairs + 2 * v, 2);
  else
    p[-1] = (char)('0' + v);
  return n;
}

static size_t fmt_hex(char *out, uint64_t v) {
  static const char hx[] = "0123456789abcdef";
  char tmp[20];
  size_t n = 0;
  do {
    tmp[n++] = hx[v & 15];
    v >>= 4;
  } while (v);
  for (size_t i = 0; i < n; i++)
    out[i] = tmp[n - 1 - i];
  return n;
}

/* "<32 hex>" request ids from the worker's generator (also the trace id
 * of a new trace: rid_ours says it is one without checking again) */
static void new_request_id(gw_conn_t *c) {
  hex64(rng_next(c->w), c->request_id);
  hex64(rng_next(c->w), c->request_id + 16);
  c->request_id[32] = '\0';
  c->rid_ours = true;
}

/* I/O buffers of GW_IO_BUF bytes come from the worker's free list when it
 * has one: a request's upstream buffer lives only as long as the request
 * (idle connections hold none), and malloc/free of 16 KiB per request
 * made glibc shrink and regrow the arena, a page fault every few
 * requests (perf: 4% of the worker's time). */
static bool buf_init(gw_worker_t *w, gw_buf_t *b, size_t cap) {
  if (b->data)
    return true;
  b->data = cap == GW_IO_BUF && w->nbufpool > 0 ? w->bufpool[--w->nbufpool] : malloc(cap);
  b->cap = b->data ? cap : 0;
  b->start = b->end = 0;
  return b->data != NULL;
}

static void buf_free(gw_worker_t *w, gw_buf_t *b) {
  if (b->data && b->cap == GW_IO_BUF && w->nbufpool < GW_BUF_POOL)
    w->bufpool[w->nbufpool++] = b->data;
  else
    free(b->data);
  memset(b, 0, sizeof(*b));
}

static size_t buf_len(const gw_buf_t *b) {
  return b->end - b->start;
}

static size_t buf_space(gw_buf_t *b) {
  if (b->start > 0 && b->start == b->end)
    b->start = b->end = 0;
  if (b->end == b->cap && b->start > 0) {
    memmove(b->data, b->data + b->start, b->end - b->start);
    b->end -= b->start;
    b->start = 0;
  }
  return b->cap - b->end;
}

static inline bool buf_put(gw_buf_t *b, const void *p, size_t n) {
  /* inline, and the space check first: a request head is ~50 small puts,
   * most of them two or three bytes long */
  if (b->cap - b->end < n && buf_space(b) < n)
    return false;
  memcpy(b->data + b->end, p, n);
  b->end += n;
  return true;
}

static bool buf_puts(gw_buf_t *b, const char *s) {
  return buf_put(b, s, strlen(s));
}

/* ---- timers: a min-heap of connection deadlines ------------------------- */

static void heap_swap(gw_worker_t *w, int a, int b) {
  gw_conn_t *t = w->heap[a];
  w->heap[a] = w->heap[b];
  w->heap[b] = t;
  w->heap[a]->heap_index = a;
  w->heap[b]->heap_index = b;
}

static void heap_up(gw_worker_t *w, int i) {
  while (i > 0) {
    int p = (i - 1) / 2;
    if (w->heap[p]->heap_key <= w->heap[i]->heap_key)
      break;
    heap_swap(w, p, i);
    i = p;
  }
}

static void heap_down(gw_worker_t *w, int i) {
  for (;;) {
    int l = 2 * i + 1, r = l + 1, m = i;
    if (l < w->nheap && w->heap[l]->heap_key < w->heap[m]->heap_key)
      m = l;
    if (r < w->nheap && w->heap[r]->heap_key < w->heap[m]->heap_key)
      m = r;
    if (m == i)
      return;
    heap_swap(w, i, m);
    i = m;
  }
}

static void timer_cancel(gw_conn_t *c) {
  gw_worker_t *w = c->w;
  int i = c->heap_index;
  if (i < 0)
    return;
  w->nheap--;
  if (i != w->nheap) {
    w->heap[i] = w->heap[w->nheap];
    w->heap[i]->heap_index = i;
    heap_down(w, i);
    heap_up(w, i);
  }
  c->heap_index = -1;
}

/*
 * Set c's one timer. Extending a deadline is the common case (every bit
 * of progress does it) and costs nothing: the heap keeps the old, earlier
 * key, and when that key comes up the loop re-files the connection at its
 * real deadline. Only an earlier deadline moves it in the heap now.
 */
static void timer_set(gw_conn_t *c, int ms, int status) {
  gw_worker_t *w = c->w;
  c->deadline = w->now + ms;
  c->deadline_status = status;
  if (c->heap_index >= 0) {
    if (c->deadline < c->heap_key) {
      c->heap_key = c->deadline;
      heap_up(w, c->heap_index);
    }
    return;
  }
  c->heap_key = c->deadline;
  if (w->nheap == w->capheap) {
    int cap = w->capheap ? w->capheap * 2 : 1024;
    gw_conn_t **h = realloc(w->heap, sizeof(*h) * (size_t)cap);
    if (!h)
      return; /* no timer: the connection still ends on EOF or error */
    w->heap = h;
    w->capheap = cap;
  }
  c->heap_index = w->nheap;
  w->heap[w->nheap++] = c;
  heap_up(w, c->heap_index);
}

/* ---- upstream target state ------------------------------------------------ */

static unsigned id_hash(const char *id) {
  unsigned h = 2166136261u;
  for (; *id; id++)
    h = (h ^ (unsigned char)*id) * 16777619u;
  return h & 255;
}

/* Target state is keyed by the target's id and address, so that a
 * target whose URL changed gets a fresh pool instead of old connections.
 * A small cache by target pointer saves building the key per request; it
 * is emptied whenever the worker changes snapshot, and a held (older)
 * snapshot's targets simply miss and are looked up by key. */
static gw_tstate_t *tstate_slow(gw_worker_t *w, const gw_target_t *tg);

static gw_tstate_t *tstate(gw_worker_t *w, const gw_target_t *tg) {
  unsigned slot = (unsigned)(((uintptr_t)tg >> 4) * 2654435761u) & 63;
  uint64_t gen = w->snap ? w->snap->gen : 0;
  if (w->tcache[slot].t == tg && w->tcache[slot].gen == gen && gen != 0)
    return w->tcache[slot].ts;
  gw_tstate_t *ts = tstate_slow(w, tg);
  w->tcache[slot].t = tg;
  w->tcache[slot].ts = ts;
  w->tcache[slot].gen = gen;
  return ts;
}

static gw_tstate_t *tstate_slow(gw_worker_t *w, const gw_target_t *tg) {
  char key[sizeof(((gw_tstate_t *)0)->id)];
  snprintf(key, sizeof(key), "%s|%s|%d", tg->id, tg->host_header, tg->https);
  unsigned b = id_hash(key);
  for (gw_tstate_t *t = w->tbuckets[b]; t; t = t->hnext)
    if (strcmp(t->id, key) == 0)
      return t;
  gw_tstate_t *t = calloc(1, sizeof(*t));
  if (!t)
    return NULL;
  snprintf(t->id, sizeof(t->id), "%s", key);
  t->hnext = w->tbuckets[b];
  w->tbuckets[b] = t;
  return t;
}

/* Smooth weighted round robin (as nginx): over healthy targets only. */
static const gw_target_t *pick_target(gw_worker_t *w, const gw_route_t *r,
                                      const gw_target_t *avoid) {
  const gw_target_t *best = NULL;
  gw_tstate_t *best_ts = NULL;
  int total = 0;
  int64_t now = now_ms();
  for (int i = 0; i < r->ntargets; i++) {
    const gw_target_t *t = &r->targets[i];
    gw_tstate_t *ts = tstate(w, t);
    if (!ts || !t->resolved || ts->down_until > now || gw_target_down(t) ||
        (t == avoid && r->ntargets > 1))
      continue;
    ts->current_weight += t->weight;
    total += t->weight;
    if (!best || ts->current_weight > best_ts->current_weight) {
      best = t;
      best_ts = ts;
    }
  }
  if (best_ts)
    best_ts->current_weight -= total;
  return best;
}

static void target_failed(gw_worker_t *w, const gw_target_t *t) {
  gw_tstate_t *ts = tstate(w, t);
  if (!ts)
    return;
  /* passive health: the API's passive_failures consecutive failures (0:
   * off) take a target out for its passive_cooldown_ms */
  if (t->passive_failures > 0 && ++ts->failures >= t->passive_failures) {
    ts->down_until = now_ms() + t->passive_cooldown_ms;
    ts->failures = 0;
  }
  atomic_fetch_add_explicit(&w->stats.upstream_errors, 1, memory_order_relaxed);
}

static void target_ok(gw_worker_t *w, const gw_target_t *t) {
  gw_tstate_t *ts = tstate(w, t);
  if (ts)
    ts->failures = 0;
}

/* ---- snapshots held by requests ------------------------------------------ */

static void snap_hold(gw_worker_t *w, gw_snapshot_t *snap) {
  for (int i = 0; i < w->nheld; i++)
    if (w->held[i].snap == snap) {
      w->held[i].refs++;
      return;
    }
  if (w->nheld < 16) {
    w->held[w->nheld].snap = snap;
    w->held[w->nheld].refs = 1;
    w->nheld++;
  }
}

static void snap_release(gw_worker_t *w, gw_snapshot_t *snap) {
  for (int i = 0; i < w->nheld; i++)
    if (w->held[i].snap == snap) {
      if (--w->held[i].refs == 0)
        w->held[i] = w->held[--w->nheld];
      return;
    }
}

/* The generation this worker may still touch: its current snapshot's, or
 * an older one that an in-flight request holds. The config thread frees a
 * snapshot only below every worker's published generation. */
static void publish_gen(gw_worker_t *w) {
  uint64_t g = w->snap ? w->snap->gen : 0;
  for (int i = 0; i < w->nheld; i++)
    if (w->held[i].snap && w->held[i].snap->gen < g)
      g = w->held[i].snap->gen;
  atomic_store_explicit(&w->gen, g, memory_order_release);
}

static void request_release(gw_conn_t *c) {
  if (c->snap) {
    snap_release(c->w, c->snap);
    c->snap = NULL;
  }
  c->route = NULL;
  c->target = NULL;
}

/* ---- connections ------------------------------------------------------- */

static void ep_add(gw_worker_t *w, int fd, void *tag, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.ptr = tag};
  epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev);
}

/* Free an upstream connection that is not in a pool (deleting an fd that
 * was never added to epoll is a harmless ENOENT). */
static void up_destroy(gw_worker_t *w, gw_upconn_t *u) {
  epoll_ctl(w->ep, EPOLL_CTL_DEL, u->fd, NULL);
  SSL_free(u->ssl);
  close(u->fd);
  buf_free(w, &u->rx);
  free(u);
}

/* Close an upstream connection, unlinking it from its idle pool first. */
static void up_close(gw_worker_t *w, gw_upconn_t *u) {
  if (!u)
    return;
  if (!u->owner && u->ts) { /* unlink from the idle pool */
    if (u->prev)
      u->prev->next = u->next;
    else if (u->ts->idle == u)
      u->ts->idle = u->next;
    if (u->next)
      u->next->prev = u->prev;
    u->ts->nidle--;
  }
  up_destroy(w, u);
}

/* Give a finished upstream connection back to its pool, or close it. */
static void up_release(gw_worker_t *w, gw_upconn_t *u, bool reusable) {
  if (!u)
    return;
  u->owner = NULL;
  if (!reusable || !u->ts || u->ts->nidle >= w->srv->pool_size || buf_len(&u->rx) > 0 ||
      w->draining) {
    up_destroy(w, u); /* not in the pool, so nothing to unlink */
    return;
  }
  u->idle_since = now_ms();
  u->rd_ready = u->wr_ready = false;
  u->rx.start = u->rx.end = 0;
  u->prev = NULL;
  u->next = u->ts->idle;
  if (u->next)
    u->next->prev = u;
  u->ts->idle = u;
  u->ts->nidle++;
}

static void conn_close(gw_conn_t *c) {
  if (c->closing)
    return;
  c->closing = true;
}

static void meter_request(gw_conn_t *c);

static void conn_free(gw_conn_t *c) {
  gw_worker_t *w = c->w;
  timer_cancel(c);
  if (c->status != 0) { /* a request in flight when the connection went */
    c->ended_us = tg_mono_us();
    meter_request(c);
  }
  request_release(c);
  free(c->headbuf);
  for (int i = 0; i < w->nagain; i++)
    if (w->again[i] == c)
      w->again[i] = NULL;
  if (c->up)
    up_destroy(w, c->up); /* never pooled: it is mid-exchange */
  epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
  SSL_free(c->ssl);
  close(c->fd);
  buf_free(c->w, &c->rx);
  buf_free(c->w, &c->tx);
  buf_free(c->w, &c->utx);
  free(c->replay);
  free(c);
  w->nconns--;
  atomic_fetch_sub_explicit(&w->srv->live_connections, 1, memory_order_relaxed);
  atomic_fetch_sub_explicit(&w->srv->stats.connections_open, 1, memory_order_relaxed);
}

/* ---- access log ---------------------------------------------------------- */

static void log_flush(gw_worker_t *w) {
  if (w->loglen == 0 || w->srv->access_log_fd < 0) {
    w->loglen = 0;
    return;
  }
  size_t off = 0;
  while (off < w->loglen) {
    ssize_t n = write(w->srv->access_log_fd, w->logbuf + off, w->loglen - off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break; /* a full disk must not stop the gateway */
    off += (size_t)n;
  }
  w->loglen = 0;
}

static bool log_plain(unsigned char ch) {
  return ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\';
}

/* How many bytes from s[i] on need no escaping: eight at a time, each
 * word tested for a control byte, '"', '\\', DEL or a high bit (the lowest
 * flagged byte is exact; the byte loop finds it). */
static size_t plain_end(const char *s, size_t i, size_t n) {
  const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
  for (; i + 8 <= n; i += 8) {
    uint64_t v, q, b, d;
    memcpy(&v, s + i, 8);
    q = v ^ (ones * '"');
    b = v ^ (ones * '\\');
    d = v ^ (ones * 0x7f);
    if ((((v - ones * 0x20) & ~v) | ((q - ones) & ~q) | ((b - ones) & ~b) | ((d - ones) & ~d) | v) &
        highs)
      break;
  }
  while (i < n && log_plain((unsigned char)s[i]))
    i++;
  return i;
}

/* JSON-escape s[0..n) into the log buffer (bounded): runs of plain bytes
 * are copied whole. */
static void log_str(gw_worker_t *w, const char *s, size_t n) {
  size_t i = 0;
  while (i < n && w->loglen + 8 < GW_LOG_BUF) {
    size_t run = plain_end(s, i, n);
    size_t room = GW_LOG_BUF - 8 - w->loglen;
    size_t k = run - i < room ? run - i : room;
    memcpy(w->logbuf + w->loglen, s + i, k);
    w->loglen += k;
    i += k;
    if (i == n || i < run || w->loglen + 8 >= GW_LOG_BUF)
      break;
    unsigned char ch = (unsigned char)s[i++];
    if (ch == '"' || ch == '\\') {
      w->logbuf[w->loglen++] = '\\';
      w->logbuf[w->loglen++] = (char)ch;
    } else {
      w->loglen += (size_t)snprintf(w->logbuf + w->loglen, 8, "\\u%04x", ch);
    }
  }
}

static bool is_b62(char ch) {
  return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

/* The request target, never with a secret in it: the value of the API's
 * key parameter, and anything shaped like a Tollgate token wherever it
 * is (a key sent where it is not accepted is still a key). */
static void log_path(gw_worker_t *w, const gw_conn_t *c) {
  const char *p = c->path_log, *end = p + strlen(p);
  const char *qp = c->route ? c->route->key_query_param : "";
  size_t pl = strlen(qp);
  const char *q = strchr(p, '?');
  while (p < end) {
    /* a parameter named like the API's key parameter */
    if (pl && q && p > q && (p[-1] == '?' || p[-1] == '&') && (size_t)(end - p) > pl &&
        memcmp(p, qp, pl) == 0 && p[pl] == '=') {
      log_str(w, p, pl + 1);
      log_str(w, "[redacted]", 10);
      p += pl + 1;
      while (p < end && *p != '&')
        p++;
      continue;
    }
    static const char *const types[] = {"tg_live_", "tg_adm_", "tg_ses_"};
    bool token = false;
    for (size_t t = 0; t < 3 && !token; t++) {
      size_t tl = strlen(types[t]);
      if ((size_t)(end - p) >= tl && memcmp(p, types[t], tl) == 0) {
        log_str(w, p, tl);
        log_str(w, "[redacted]", 10);
        p += tl;
        while (p < end && is_b62(*p))
          p++;
        token = true;
      }
    }
    if (token)
      continue;
    const char *e = p + 1;
    while (e < end && *e != '&' && *e != '?' && *e != 't')
      e++;
    log_str(w, p, (size_t)(e - p));
    p = e;
  }
}

/* Append to the log buffer (room was made before the line started). */
static void log_raw(gw_worker_t *w, const char *s, size_t n) {
  if (w->loglen + n < GW_LOG_BUF) {
    memcpy(w->logbuf + w->loglen, s, n);
    w->loglen += n;
  }
}

static void log_lit(gw_worker_t *w, const char *s) {
  log_raw(w, s, strlen(s));
}

/* A string literal: its length is known when compiling. */
#define LOG_LIT(w, lit) log_raw((w), "" lit, sizeof(lit) - 1)

static void log_num(gw_worker_t *w, int64_t v) {
  char tmp[24];
  if (v < 0) {
    log_raw(w, "-", 1);
    v = -v;
  }
  log_raw(w, tmp, fmt_dec(tmp, (uint64_t)v));
}

/* One JSON line per request, written by hand (no printf: this runs for
 * every request). Strings that may hold client bytes go through log_str. */
static void access_log(gw_conn_t *c) {
  gw_worker_t *w = c->w;
  if (w->srv->access_log_fd < 0)
    return;
  if (w->loglen > GW_LOG_BUF - 4096)
    log_flush(w);
  if (w->loglen == 0)
    w->log_due = w->now + GW_LOG_FLUSH_MS;
  /* every stamp on one microsecond clock, the split made before rounding:
   * milliseconds of each part would not add up (a negative gateway part) */
  int64_t wall = w->wall_ms, us = c->ended_us - c->started_us, ms = us / 1000;
  char frac[4] = {(char)('0' + wall % 1000 / 100), (char)('0' + wall % 100 / 10),
                  (char)('0' + wall % 10), 0};
  LOG_LIT(w, "{\"time\":");
  log_num(w, wall / 1000);
  log_raw(w, ".", 1);
  log_raw(w, frac, 3);
  LOG_LIT(w, ",\"request_id\":\"");
  log_str(w, c->request_id, strlen(c->request_id));
  LOG_LIT(w, "\",\"client\":\"");
  log_lit(w, c->client_ip);
  LOG_LIT(w, "\",\"method\":\"");
  log_lit(w, c->method_name ? c->method_name : "-");
  LOG_LIT(w, "\",\"path\":\"");
  log_path(w, c);
  /* upstream: from sending the request to its response head (Kong's
   * "proxy" latency); the rest is the gateway's and the client's */
  int64_t up_us =
      c->up_head_us >= c->up_start_us && c->up_start_us ? c->up_head_us - c->up_start_us : 0;
  if (up_us > us)
    up_us = us;
  gw_app_t *app =
      c->key ? atomic_load_explicit(&((gw_key_t *)c->key)->app, memory_order_acquire) : NULL;
  LOG_LIT(w, "\",\"status\":");
  log_num(w, c->status);
  LOG_LIT(w, ",\"api\":\"");
  log_lit(w, c->route ? c->route->slug : "");
  LOG_LIT(w, "\",\"app\":\"");
  log_lit(w, app ? app->id : "");
  LOG_LIT(w, "\",\"key_prefix\":\"");
  log_lit(w, c->key ? c->key->prefix : "");
  LOG_LIT(w, "\",\"plan\":\"");
  log_str(w, c->plan ? c->plan->slug : "", c->plan ? strlen(c->plan->slug) : 0);
  LOG_LIT(w, "\",\"rejected\":\"");
  log_lit(w, gw_reason_name((gw_reason_t)c->reason));
  LOG_LIT(w, "\",\"upstream\":\"");
  log_str(w, c->target ? c->target->host_header : "",
          c->target ? strlen(c->target->host_header) : 0);
  LOG_LIT(w, "\",\"target\":\"");
  log_lit(w, c->target ? c->target->id : "");
  LOG_LIT(w, "\",\"latency_ms\":");
  log_num(w, ms);
  LOG_LIT(w, ",\"upstream_latency_ms\":");
  log_num(w, up_us / 1000);
  LOG_LIT(w, ",\"gateway_latency_ms\":");
  log_num(w, (us - up_us) / 1000);
  LOG_LIT(w, ",\"bytes_in\":");
  log_num(w, c->bytes_in);
  LOG_LIT(w, ",\"bytes_out\":");
  log_num(w, c->bytes_out);
  LOG_LIT(w, "}\n");
}

/* Add to a counter only this worker writes: a plain load and store (no
 * locked instruction); the status thread reads it with a relaxed load. */
static inline void bump(_Atomic uint64_t *v, uint64_t n) {
  atomic_store_explicit(v, atomic_load_explicit(v, memory_order_relaxed) + n, memory_order_relaxed);
}

static void count_request(gw_conn_t *c) {
  gw_stats_t *st = &c->w->stats;
  int cls = c->status / 100;
  if (cls < 0 || cls > 5)
    cls = 0;
  bump(&st->requests[cls], 1);
  bump(&st->bytes_in, (uint64_t)c->bytes_in);
  bump(&st->bytes_out, (uint64_t)c->bytes_out);
  static const int64_t le_us[GW_LAT_BUCKETS] = {5000,    10000,   25000,   50000,    75000,
                                                100000,  250000,  500000,  750000,   1000000,
                                                2500000, 5000000, 7500000, 10000000, 30000000};
  int64_t us = c->ended_us - c->started_us;
  int b = 0;
  while (b < GW_LAT_BUCKETS && us > le_us[b])
    b++;
  bump(&st->latency_bucket[b], 1);
  bump(&st->latency_sum_us, (uint64_t)us);
}

/* ---- responses we make ourselves ------------------------------------------ */

static const char *status_text(int s) {
  switch (s) {
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 429: return "Too Many Requests";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 411: return "Length Required";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 417: return "Expectation Failed";
  case 431: return "Request Header Fields Too Large";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return "Error";
  }
}

static const char *problem_slug(int s) {
  switch (s) {
  case 400: return "bad-request";
  case 404: return "no-route";
  case 405: return "method-not-allowed";
  case 408: return "request-timeout";
  case 411: return "length-required";
  case 413: return "payload-too-large";
  case 414: return "uri-too-long";
  case 417: return "expectation-failed";
  case 431: return "headers-too-large";
  case 501: return "not-implemented";
  case 502: return "bad-gateway";
  case 503: return "no-healthy-upstream";
  case 504: return "upstream-timeout";
  case 505: return "http-version-not-supported";
  default: return "error";
  }
}

/*
 * Answer with application/problem+json (RFC 9457). `close_after` when the
 * stream can no longer be trusted (a framing error, an unread body).
 */
static void respond_problem_ex(gw_conn_t *c, int status, const char *slug, const char *detail,
                               const char *headers, const char *members, bool close_after) {
  close_after = close_after || c->w->draining;
  char body[1024];
  int bl = snprintf(body, sizeof(body),
                    "{\"type\":\"https://tollgate.dev/problems/%s\",\"title\":\"%s\",\"status\":%d,"
                    "\"detail\":\"%s\",\"request_id\":\"%s\"%s}",
                    slug, status_text(status), status, detail, c->request_id, members);
  if (bl < 0 || (size_t)bl >= sizeof(body))
    bl = (int)strlen(body);
  char head[2048];
  int hl = snprintf(head, sizeof(head),
                    "HTTP/1.1 %d %s\r\nContent-Type: application/problem+json\r\n"
                    "Content-Length: %d\r\nX-Request-Id: %s\r\n%s%s%s\r\n",
                    status, status_text(status), bl, c->request_id,
                    status == 503 ? "Retry-After: 1\r\n" : "", headers,
                    close_after ? "Connection: close\r\n" : "");
  if (hl < 0 || (size_t)hl >= sizeof(head))
    hl = (int)strlen(head);
  if (!buf_init(c->w, &c->tx, GW_IO_BUF)) {
    conn_close(c);
    return;
  }
  c->tx.start = c->tx.end = 0;
  buf_put(&c->tx, head, (size_t)hl);
  if (!(c->method_name && c->method == GW_HEAD))
    buf_put(&c->tx, body, (size_t)bl);
  c->status = status;
  c->close_after = c->close_after || close_after;
  c->bytes_out += hl + bl;
  if (c->up) {
    up_release(c->w, c->up, false);
    c->up = NULL;
  }
  c->state = S_FLUSH;
  c->resp_done = true;
}

static void respond_problem(gw_conn_t *c, int status, const char *detail, bool close_after) {
  respond_problem_ex(c, status, problem_slug(status), detail, "", "", close_after);
}

/* ---- keys, limits and quotas (policy.h), metering (meter.h) ------------------ */

int64_t gw_wall_ms(const gw_server_t *srv) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + srv->clock_offset_ms;
}

static const char *const policy_names[GW_LIM_N] = {"second", "minute", "hour", "day", "month"};

/* RateLimit-Policy/RateLimit (draft-ietf-httpapi-ratelimit-headers) for
 * every policy / the tightest, and X-RateLimit-* for the tightest. */
static size_t fmt_ratelimit(const gw_server_t *srv, const gw_plan_t *plan, const gw_verdict_t *v,
                            char *out, size_t cap) {
  if (cap > 0)
    out[0] = '\0';
  if (v->nstates == 0 || srv->ratelimit_headers == GW_RLH_OFF || cap < 512)
    return 0;
  const gw_limit_state_t *t = &v->states[0];
  size_t n = 0;
#define PUT(s, len)                                                                                \
  do {                                                                                             \
    size_t l_ = (len);                                                                             \
    if (n + l_ >= cap)                                                                             \
      return 0;                                                                                    \
    memcpy(out + n, (s), l_);                                                                      \
    n += l_;                                                                                       \
  } while (0)
#define LIT(s) PUT(s, sizeof(s) - 1)
#define DEC(x)                                                                                     \
  do {                                                                                             \
    char d_[24];                                                                                   \
    PUT(d_, fmt_dec(d_, (uint64_t)((x) < 0 ? 0 : (x))));                                           \
  } while (0)
  if (srv->ratelimit_headers == GW_RLH_BOTH || srv->ratelimit_headers == GW_RLH_DRAFT) {
    LIT("RateLimit-Policy: ");
    PUT(plan->policy_hdr, plan->policy_len);
    LIT("\r\nRateLimit: \"");
    PUT(policy_names[t->policy], strlen(policy_names[t->policy]));
    LIT("\";r=");
    DEC(t->remaining);
    LIT(";t=");
    DEC(t->reset_s);
    LIT("\r\n");
  }
  if (srv->ratelimit_headers == GW_RLH_BOTH || srv->ratelimit_headers == GW_RLH_LEGACY) {
    LIT("X-RateLimit-Limit: ");
    DEC(t->limit);
    LIT("\r\nX-RateLimit-Remaining: ");
    DEC(t->remaining);
    LIT("\r\nX-RateLimit-Reset: ");
    DEC(t->reset_s);
    LIT("\r\n");
  }
#undef DEC
#undef LIT
#undef PUT
  out[n] = '\0'; /* n < cap: PUT keeps one byte free */
  return n;
}

/* Failed key attempts per client address (gw.h). */
static _Atomic uint64_t *authfail_slot(gw_conn_t *c) {
  gw_server_t *srv = c->w->srv;
  uint64_t h = srv->authfail_seed;
  for (const char *p = c->client_ip; *p; p++)
    h = (h ^ (unsigned char)*p) * 1099511628211ull;
  return &srv->authfail[(h ^ (h >> 32)) & (GW_AUTHFAIL_SLOTS - 1)];
}

#define AUTHFAIL_BITS 32 /* minute (low 32 bits) << 32 | failures */
static bool auth_throttled(gw_conn_t *c, int64_t minute) {
  gw_server_t *srv = c->w->srv;
  if (srv->auth_failures <= 0)
    return false;
  uint64_t v = atomic_load_explicit(authfail_slot(c), memory_order_relaxed);
  return (v >> AUTHFAIL_BITS) == (uint32_t)minute &&
         (int64_t)(v & ((UINT64_C(1) << AUTHFAIL_BITS) - 1)) >= srv->auth_failures;
}

static void auth_failed(gw_conn_t *c, int64_t minute) {
  if (c->w->srv->auth_failures <= 0)
    return;
  _Atomic uint64_t *slot = authfail_slot(c);
  uint64_t v = atomic_load_explicit(slot, memory_order_relaxed), nv;
  do {
    uint64_t count =
        (v >> AUTHFAIL_BITS) == (uint32_t)minute ? v & ((UINT64_C(1) << AUTHFAIL_BITS) - 1) : 0;
    nv = (uint64_t)(uint32_t)minute << AUTHFAIL_BITS | (count + 1);
  } while (!atomic_compare_exchange_weak_explicit(slot, &v, nv, memory_order_relaxed,
                                                  memory_order_relaxed));
}

/* The token of an "Authorization: Bearer <token>" header (the scheme in
 * any case, blanks after it skipped); false if h is no such header. */
static bool bearer_token(const gw_header_t *h, const char **t, size_t *tl) {
  if (h->id != GW_H_AUTHORIZATION || h->value_len <= 7 || strncasecmp(h->value, "bearer ", 7) != 0)
    return false;
  const char *v = h->value + 7, *end = h->value + h->value_len;
  while (v < end && (*v == ' ' || *v == '\t'))
    v++;
  *t = v;
  *tl = (size_t)(end - v);
  return true;
}

/* The API key of the request: the configured header, Authorization:
 * Bearer, or the API's query parameter. */
static bool find_key(gw_conn_t *c, const char **kt, size_t *kl) {
  const gw_request_head_t *q = &c->req;
  const gw_server_t *srv = c->w->srv;
  for (unsigned i = 0; i < q->nheaders; i++) {
    const gw_header_t *h = &q->headers[i];
    if (gw_header_is(h, srv->key_header)) {
      *kt = h->value;
      *kl = h->value_len;
      return true;
    }
  }
  for (unsigned i = 0; i < q->nheaders; i++)
    if (bearer_token(&q->headers[i], kt, kl))
      return true;
  const char *pn = c->route->key_query_param;
  size_t pl = strlen(pn);
  if (pl && q->query) {
    const char *p = q->query, *end = q->query + q->query_len;
    while (p < end) {
      const char *amp = memchr(p, '&', (size_t)(end - p));
      const char *e = amp ? amp : end;
      if ((size_t)(e - p) > pl && memcmp(p, pn, pl) == 0 && p[pl] == '=') {
        *kt = p + pl + 1;
        *kl = (size_t)(e - *kt);
        return true;
      }
      p = e + 1;
    }
  }
  return false;
}

static void refuse(gw_conn_t *c, int status, gw_reason_t reason, const char *slug,
                   const char *detail, const char *headers, const char *members) {
  c->reason = (uint8_t)reason;
  atomic_fetch_add_explicit(&c->w->srv->rejected[reason], 1, memory_order_relaxed);
  bool has_body = c->req.chunked || c->req.content_length > 0;
  respond_problem_ex(c, status, slug, detail, headers, members, has_body);
}

static const char www_auth[] = "WWW-Authenticate: Bearer realm=\"tollgate\"";

/*
 * Keys, subscription, limits and quotas for c->route. Returns true when
 * the request may go on; otherwise it has been answered (401, 403, 429).
 */
static bool admit(gw_conn_t *c) {
  gw_worker_t *w = c->w;
  gw_server_t *srv = w->srv;
  const gw_route_t *r = c->route;
  if (!r->auth_key) {
    c->admitted = true;
    return true;
  }
  int64_t wall_ms = w->wall_ms, minute = wall_ms / 60000;
  const char *kt = NULL;
  size_t kl = 0;
  char hdr[256];
  if (!find_key(c, &kt, &kl)) {
    snprintf(hdr, sizeof(hdr), "%s\r\n", www_auth);
    refuse(c, 401, GW_R_MISSING_KEY, "missing-api-key",
           "this API needs an API key (in the key header or Authorization: Bearer)", hdr, "");
    return false;
  }
  if (auth_throttled(c, minute)) {
    int64_t wait = 60 - (wall_ms / 1000) % 60;
    snprintf(hdr, sizeof(hdr), "Retry-After: %lld\r\n", (long long)wait);
    refuse(c, 429, GW_R_AUTH_THROTTLED, "too-many-failed-keys",
           "too many requests with invalid keys from this address", hdr, "");
    return false;
  }
  tg_token_type_t type;
  const gw_key_t *k = NULL;
  if (c->kc_len == kl && memcmp(c->kc_text, kt, kl) == 0) {
    /* the same key as this connection's previous request: the same record
     * (its status is read afresh below); skips the checksum and digest */
    k = c->kc_key;
  } else if (tg_token_check(kt, kl, &type, NULL) == TG_OK && type == TG_TOKEN_API_KEY) {
    unsigned char d[TG_DIGEST_BYTES];
    tg_token_digest(&srv->secret, kt, kl, d);
    k = gw_policy_key(srv->policy, d);
    if (k && kl <= sizeof(c->kc_text)) {
      memcpy(c->kc_text, kt, kl);
      c->kc_len = kl;
      c->kc_key = k;
    }
  }
  int64_t exp = k ? atomic_load_explicit(&((gw_key_t *)k)->expires_at, memory_order_acquire) : 0;
  gw_app_t *app = k ? atomic_load_explicit(&((gw_key_t *)k)->app, memory_order_acquire) : NULL;
  if (!k || atomic_load_explicit(&((gw_key_t *)k)->status, memory_order_acquire) != GW_ST_ACTIVE ||
      (exp != 0 && exp * 1000 <= wall_ms) || !app ||
      atomic_load_explicit(&app->status, memory_order_acquire) == GW_ST_GONE) {
    auth_failed(c, minute);
    snprintf(hdr, sizeof(hdr), "%s, error=\"invalid_token\"\r\n", www_auth);
    refuse(c, 401, GW_R_INVALID_KEY, "invalid-api-key",
           "the API key is not valid (unknown, revoked or expired)", hdr, "");
    return false;
  }
  c->key = k;
  gw_dev_t *dev = atomic_load_explicit(&app->dev, memory_order_acquire);
  if (atomic_load_explicit(&app->status, memory_order_acquire) != GW_ST_ACTIVE || !dev ||
      atomic_load_explicit(&dev->status, memory_order_acquire) != GW_ST_ACTIVE) {
    refuse(c, 403, GW_R_SUSPENDED, "access-suspended",
           "the app or its developer account is not active", "", "");
    return false;
  }
  gw_sub_t *sub = gw_policy_sub(srv->policy, app->no, r->api_no);
  int sst = sub ? atomic_load_explicit(&sub->status, memory_order_acquire) : GW_ST_GONE;
  if (sst == GW_ST_GONE || sst == GW_ST_PENDING) {
    refuse(c, 403, GW_R_NOT_SUBSCRIBED, "not-subscribed",
           sst == GW_ST_PENDING ? "the app's subscription to this API awaits approval"
                                : "the app is not subscribed to this API",
           "", "");
    return false;
  }
  c->sub = sub;
  c->plan = atomic_load_explicit(&sub->plan, memory_order_acquire);
  if (sst != GW_ST_ACTIVE) {
    refuse(c, 403, GW_R_SUSPENDED, "subscription-suspended",
           "the app's subscription to this API is suspended", "", "");
    return false;
  }
  gw_verdict_t *v = &c->verdict;
  gw_limits_take(sub, c->plan, w->now_us * 1000, wall_ms / 1000, v);
  c->has_verdict = v->nstates > 0;
  if (!v->admitted) {
    char h[1024], m[128];
    /* Retry-After: whole seconds, never early, with a little jitter so
     * that refused clients do not all come back at once */
    int64_t ra = (v->retry_after_ms + 999) / 1000;
    if (ra < 1)
      ra = 1;
    ra += (int64_t)(rng_next(w) % (uint64_t)(ra / 10 + 1));
    int hn = snprintf(h, sizeof(h), "Retry-After: %lld\r\n", (long long)ra);
    fmt_ratelimit(srv, c->plan, v, h + hn, sizeof(h) - (size_t)hn);
    snprintf(m, sizeof(m), ",\"violated-policies\":[\"%s\"]", policy_names[v->violated]);
    bool quota = v->violated >= GW_LIM_DAY;
    refuse(
        c, 429, quota ? GW_R_QUOTA : GW_R_RATE_LIMITED, quota ? "quota-exceeded" : "rate-limited",
        quota ? "the plan's quota for this period is used up" : "the plan's rate limit is exceeded",
        h, m);
    return false;
  }
  c->admitted = true;
  return true;
}

/* Count a finished (or abandoned) request in this worker's usage table. */
static void meter_request(gw_conn_t *c) {
  if (c->metered)
    return;
  c->metered = true;
  gw_server_t *srv = c->w->srv;
  gw_meter_slot_t *ms = &srv->meter[c->w->index];
  if (!ms->cur) /* metering = off */
    return;
  int64_t wall = c->w->wall_ms / 60000; /* minutes since the epoch */
  gw_meter_key_t k = {.minute = wall > 0 ? (uint32_t)wall : 0,
                      .key = c->key,
                      .sub = c->sub,
                      .plan = c->plan,
                      .api_no = c->route ? c->route->api_no : 0};
  int status = c->status;
  if (c->admitted) {
    if (status < 100)
      status = 499; /* the client left before the answer (nginx's code) */
    k.status_class = (uint8_t)(status / 100 > 5 ? 5 : status / 100);
  } else {
    k.reason = c->reason ? c->reason : (status == 404 ? GW_R_NO_ROUTE : GW_R_BAD_REQUEST);
    if (!c->reason)
      atomic_fetch_add_explicit(&srv->rejected[k.reason], 1, memory_order_relaxed);
  }
  int64_t us = c->ended_us - c->started_us;
  if (!gw_meter_add(ms->cur, &k, c->bytes_in, c->bytes_out, us))
    tg_log(TG_LOG_ERROR, "usage not counted: out of memory", "request_id", c->request_id, NULL);
}

/* The metering thread asked for this worker's table: hand it over. */
static void meter_handover(gw_worker_t *w) {
  gw_meter_slot_t *ms = &w->srv->meter[w->index];
  if (!atomic_load_explicit(&ms->want, memory_order_acquire) ||
      atomic_load_explicit(&ms->out, memory_order_acquire))
    return;
  atomic_store_explicit(&ms->want, false, memory_order_relaxed);
  if (!ms->cur || ms->cur->n == 0)
    return;
  gw_meter_tab_t *fresh = atomic_exchange_explicit(&ms->spare, NULL, memory_order_acquire);
  if (!fresh && !(fresh = gw_meter_tab_new()))
    return; /* keep counting into the old one */
  atomic_store_explicit(&ms->out, ms->cur, memory_order_release);
  ms->cur = fresh;
}

/* ---- request ids and forwarded headers -------------------------------------- */

static bool is_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return false;
  return true;
}

static const gw_header_t *find_header(const gw_request_head_t *h, gw_header_id_t id) {
  int i = gw_header_find(h->headers, h->nheaders, id);
  return i >= 0 ? &h->headers[i] : NULL;
}

/* Whether h's name is listed in one of the Connection headers; conn_flags
 * is the head's (GW_CONN_NAMES: some Connection lists a name at all). */
static bool named_in_connection(const gw_header_t *hs, unsigned n, unsigned conn_flags,
                                const gw_header_t *h) {
  if (!(conn_flags & GW_CONN_NAMES))
    return false;
  for (unsigned i = 0; i < n; i++) {
    const gw_header_t *ch = &hs[i];
    if (ch->id != GW_H_CONNECTION)
      continue;
    const char *v = ch->value, *end = v + ch->value_len;
    while (v < end) {
      while (v < end && (*v == ' ' || *v == '\t' || *v == ','))
        v++;
      const char *t = v;
      while (v < end && *v != ',' && *v != ' ' && *v != '\t')
        v++;
      size_t tl = (size_t)(v - t);
      if (tl && tl == h->name_len && strncasecmp(t, h->name, tl) == 0)
        return true;
    }
  }
  return false;
}

/* Headers never forwarded: hop-by-hop (RFC 9110 7.6.1) plus the ones the
 * gateway sets itself. Also any named in Connection. */
static bool drop_request_header(const gw_request_head_t *req, const gw_header_t *h,
                                bool trust_forwarded) {
  switch ((gw_header_id_t)h->id) {
  case GW_H_CONNECTION:
  case GW_H_KEEP_ALIVE:
  case GW_H_PROXY_CONNECTION:
  case GW_H_TE:
  case GW_H_TRAILER:
  case GW_H_TRANSFER_ENCODING:
  case GW_H_UPGRADE:
  case GW_H_PROXY_AUTHORIZATION:
  case GW_H_EXPECT:
  case GW_H_X_REQUEST_ID:
  case GW_H_TRACEPARENT:
  case GW_H_VIA:
  case GW_H_CONTENT_LENGTH: return true;
  case GW_H_X_FORWARDED_FOR:
  case GW_H_X_FORWARDED_PROTO:
  case GW_H_X_FORWARDED_HOST:
  case GW_H_FORWARDED:
    if (!trust_forwarded)
      return true;
    break;
  case GW_H_OTHER:
  case GW_H_HOST:
  case GW_H_AUTHORIZATION: break;
  }
  /* names listed in Connection are hop-by-hop too */
  return named_in_connection(req->headers, req->nheaders, req->conn_flags, h);
}

/* ---- building the upstream request ------------------------------------------ */

/* A header where the gateway reads API keys: the configured key header
 * (every copy, not only the one used) and an Authorization: Bearer that
 * holds a Tollgate key (another bearer token is the upstream's own). With
 * key stripping on, none of them reaches the upstream. */
static bool is_key_copy(const gw_server_t *srv, const gw_header_t *h) {
  const char *t;
  size_t tl;
  return gw_header_is(h, srv->key_header) ||
         (bearer_token(h, &t, &tl) && tl >= 8 && memcmp(t, "tg_live_", 8) == 0);
}

/* A client's copy of a header the gateway sets to say who is calling:
 * never forwarded, so it cannot be forged. */
static bool is_ident_header(const gw_server_t *srv, const gw_header_t *h) {
  const gw_ident_headers_t *id = &srv->ident;
  return (id->app[0] && gw_header_is(h, id->app)) ||
         (id->developer[0] && gw_header_is(h, id->developer)) ||
         (id->plan[0] && gw_header_is(h, id->plan)) ||
         (id->key_prefix[0] && gw_header_is(h, id->key_prefix));
}

static bool put_header(gw_buf_t *b, const char *name, const char *v, size_t vl);

static bool put_ident_headers(gw_conn_t *c, gw_buf_t *b) {
  const gw_ident_headers_t *id = &c->w->srv->ident_names;
  gw_app_t *app = atomic_load_explicit(&((gw_key_t *)c->key)->app, memory_order_acquire);
  gw_dev_t *dev = app ? atomic_load_explicit(&app->dev, memory_order_acquire) : NULL;
  bool ok = true;
  if (id->app[0] && app)
    ok = ok && put_header(b, id->app, app->id, strlen(app->id));
  if (id->developer[0] && dev)
    ok = ok && put_header(b, id->developer, dev->id, strlen(dev->id));
  if (id->plan[0] && c->plan)
    ok = ok && put_header(b, id->plan, c->plan->slug, strlen(c->plan->slug));
  if (id->key_prefix[0])
    ok = ok && put_header(b, id->key_prefix, c->key->prefix, strlen(c->key->prefix));
  return ok;
}

static bool put_header_n(gw_buf_t *b, const char *name, size_t nl, const char *v, size_t vl) {
  size_t n = nl + 2 + vl + 2;
  if (b->cap - b->end < n && buf_space(b) < n)
    return false;
  char *o = b->data + b->end;
  memcpy(o, name, nl);
  memcpy(o + nl, ": ", 2);
  memcpy(o + nl + 2, v, vl);
  memcpy(o + nl + 2 + vl, "\r\n", 2);
  b->end += n;
  return true;
}

static bool put_header(gw_buf_t *b, const char *name, const char *v, size_t vl) {
  return put_header_n(b, name, strlen(name), v, vl);
}

/*
 * Write the upstream request head into c->utx: method, target rewritten
 * for the route (normalised path, prefix stripped, target base path),
 * end-to-end headers, then ours (Host, Via, X-Forwarded-*, X-Request-Id,
 * traceparent) and the body framing.
 */
static bool build_upstream_head(gw_conn_t *c, const char *npath, size_t nplen) {
  const gw_request_head_t *q = &c->req;
  const gw_route_t *r = c->route;
  const gw_target_t *t = c->target;
  gw_buf_t *b = &c->utx;
  b->start = b->end = 0;
  const char *rest = npath;
  size_t restlen = nplen;
  if (r->strip_prefix && r->prefix_len > 1) {
    rest += r->prefix_len;
    restlen -= r->prefix_len;
  }
  bool ok =
      buf_put(b, q->method_str, q->method_len) && buf_put(b, " ", 1) && buf_puts(b, t->base_path);
  if (restlen == 0 || rest[0] != '/')
    ok = ok && buf_put(b, "/", 1);
  ok = ok && buf_put(b, rest, restlen);
  if (q->query && c->key && c->w->srv->strip_key && r->key_query_param[0]) {
    /* the API's key parameter never reaches the upstream, wherever the
     * key that was used came from: forward the other parameters only */
    const char *p = q->query, *end = q->query + q->query_len;
    size_t pl = strlen(r->key_query_param);
    bool first = true;
    while (ok && p <= end) {
      const char *amp = memchr(p, '&', (size_t)(end - p));
      const char *e = amp ? amp : end;
      bool is_key = (size_t)(e - p) > pl && memcmp(p, r->key_query_param, pl) == 0 && p[pl] == '=';
      if (!is_key && e > p) {
        ok = buf_put(b, first ? "?" : "&", 1) && buf_put(b, p, (size_t)(e - p));
        first = false;
      }
      p = e + 1;
    }
  } else if (q->query) {
    ok = ok && buf_put(b, "?", 1) && buf_put(b, q->query, q->query_len);
  }
  ok = ok && buf_puts(b, " HTTP/1.1\r\n");
  const gw_header_t *host = q->host >= 0 ? &q->headers[q->host] : NULL;
  const gw_header_t *xff = NULL, *via = NULL;
  for (unsigned i = 0; ok && i < q->nheaders; i++) {
    const gw_header_t *h = &q->headers[i];
    if (h->id == GW_H_HOST)
      continue;
    /* a previous hop's values are kept only if the client did not mark
     * them hop-by-hop by naming them in Connection */
    if ((h->id == GW_H_X_FORWARDED_FOR || h->id == GW_H_VIA) &&
        !named_in_connection(q->headers, q->nheaders, q->conn_flags, h))
      *(h->id == GW_H_VIA ? &via : &xff) = h;
    if (drop_request_header(q, h, c->w->srv->trust_forwarded) || is_ident_header(c->w->srv, h) ||
        (c->key && c->w->srv->strip_key && is_key_copy(c->w->srv, h)))
      continue;
    ok = put_header_n(b, h->name, h->name_len, h->value, h->value_len);
  }
  if (ok && c->key) /* who is calling, for the upstream */
    ok = put_ident_headers(c, b);
  ok = ok && put_header(b, "Host", t->host_header, strlen(t->host_header));
  /* X-Forwarded-*: appended to a trusted proxy's, else ours alone */
  if (ok && c->w->srv->trust_forwarded && xff) {
    ok = buf_puts(b, "X-Forwarded-For: ") && buf_put(b, xff->value, xff->value_len) &&
         buf_puts(b, ", ") && buf_puts(b, c->client_ip) && buf_puts(b, "\r\n");
  } else if (ok) {
    ok = put_header(b, "X-Forwarded-For", c->client_ip, strlen(c->client_ip));
    ok = ok && put_header(b, "X-Forwarded-Proto", c->ssl ? "https" : "http", c->ssl ? 5 : 4);
    if (host)
      ok = ok && put_header(b, "X-Forwarded-Host", host->value, host->value_len);
  }
  if (ok && via)
    ok = buf_puts(b, "Via: ") && buf_put(b, via->value, via->value_len) &&
         buf_puts(b, ", 1.1 tollgate\r\n");
  else if (ok)
    ok = buf_puts(b, "Via: 1.1 tollgate\r\n");
  ok = ok && put_header(b, "X-Request-Id", c->request_id, strlen(c->request_id));
  /* W3C trace context: same trace, a new parent (this hop) */
  char tp[64], parent[17];
  const gw_header_t *in = find_header(q, GW_H_TRACEPARENT);
  hex64(rng_next(c->w), parent);
  parent[16] = '\0';
  if (in && in->value_len == 55 && memcmp(in->value, "00-", 3) == 0 && is_hex(in->value + 3, 32) &&
      in->value[35] == '-' && is_hex(in->value + 36, 16) && in->value[52] == '-' &&
      is_hex(in->value + 53, 2)) {
    memcpy(tp, "00-", 3);
    memcpy(tp + 3, in->value + 3, 32);
    tp[35] = '-';
    memcpy(tp + 36, parent, 16);
    tp[52] = '-';
    memcpy(tp + 53, in->value + 53, 2);
    tp[55] = '\0';
  } else {
    char trace[33];
    if (c->rid_ours || (strlen(c->request_id) == 32 && is_hex(c->request_id, 32)))
      memcpy(trace, c->request_id, 33);
    else {
      hex64(rng_next(c->w), trace);
      hex64(rng_next(c->w), trace + 16);
      trace[32] = '\0';
    }
    memcpy(tp, "00-", 3);
    memcpy(tp + 3, trace, 32);
    tp[35] = '-';
    memcpy(tp + 36, parent, 16);
    memcpy(tp + 52, "-01", 4);
  }
  ok = ok && put_header(b, "traceparent", tp, strlen(tp));
  if (q->chunked) {
    ok = ok && buf_puts(b, "Transfer-Encoding: chunked\r\n");
  } else if (q->content_length >= 0) {
    char cl[32];
    size_t n = fmt_dec(cl, (uint64_t)q->content_length);
    ok = ok && put_header(b, "Content-Length", cl, n);
  }
  return ok && buf_put(b, "\r\n", 2);
}

/* ---- the state machine ---------------------------------------------------------- */

static void pump(gw_conn_t *c);

/*
 * A read that filled less than the room it had emptied the socket: with
 * edge-triggered epoll the next bytes will raise a new event, so reading
 * again now would only fetch EAGAIN (a wasted syscall per read, two per
 * proxied request; nginx's ngx_unix_recv does the same). Not once the
 * peer's FIN was reported (that event will not come again: read on to the
 * 0), and not under TLS (OpenSSL may hold decrypted bytes of its own).
 */
static inline bool drained(ssize_t n, size_t space, const SSL *ssl, bool hup) {
  return (size_t)n < space && !ssl && !hup;
}

static void client_read(gw_conn_t *c) {
  while (c->rd_ready && !c->rd_eof) {
    size_t space = buf_space(&c->rx);
    if (space == 0)
      return;
    ssize_t n =
        gw_io_read(c->fd, c->ssl, c->rx.data + c->rx.end, space, &c->rd_ready, &c->wr_ready);
    if (n > 0) {
      c->rx.end += (size_t)n;
      c->bytes_in += n;
      c->moved += (uint64_t)n;
      if (drained(n, space, c->ssl, c->rd_hup)) {
        c->rd_ready = false;
        return;
      }
      continue;
    }
    if (n == GW_IO_AGAIN)
      return;
    c->rd_eof = true;
    if (n == GW_IO_ERROR)
      conn_close(c);
    return;
  }
}

/* Write tx to the client. True when everything pending was written. */
static bool client_flush(gw_conn_t *c) {
  while (buf_len(&c->tx) > 0) {
    if (!c->wr_ready)
      return false;
    ssize_t n = gw_io_write(c->fd, c->ssl, c->tx.data + c->tx.start, buf_len(&c->tx), &c->rd_ready,
                            &c->wr_ready);
    if (n > 0) {
      c->tx.start += (size_t)n;
      c->moved += (uint64_t)n;
      c->resp_sent += (uint64_t)n;
      continue;
    }
    if (n == GW_IO_AGAIN)
      return false;
    conn_close(c);
    return false;
  }
  c->tx.start = c->tx.end = 0;
  return true;
}

static void request_done(gw_conn_t *c) {
  c->ended_us = tg_mono_us(); /* one clock read for the metrics, the ledger and the log */
  count_request(c);
  meter_request(c);
  access_log(c);
  request_release(c);
  c->method_name = NULL;
  if (c->close_after || !c->client_keep_alive || c->w->draining) {
    conn_close(c);
    return;
  }
  buf_free(c->w, &c->utx); /* idle keep-alive connections hold as little as possible */
  free(c->replay);
  c->replay = NULL;
  c->state = S_HEAD;
  c->status = 0;
  c->resp_done = false;
  timer_set(c, c->w->srv->idle_timeout_ms, 0);
}

static void start_request(gw_conn_t *c);

/* Open (or reuse) an upstream connection for c->target. */
static bool upstream_attach(gw_conn_t *c) {
  gw_worker_t *w = c->w;
  gw_tstate_t *ts = tstate(w, c->target);
  int64_t now = now_ms();
  while (ts && ts->idle) {
    gw_upconn_t *u = ts->idle;
    ts->idle = u->next;
    if (u->next)
      u->next->prev = NULL;
    ts->nidle--;
    u->next = u->prev = NULL;
    if (now - u->idle_since > w->srv->idle_timeout_ms) {
      up_destroy(w, u); /* already unlinked above */
      continue;
    }
    u->owner = c;
    u->reused = true;
    u->wr_ready = true;
    u->rd_ready = true; /* edge already consumed: try a read */
    c->up = u;
    return true;
  }
  if (c->target->https && !w->srv->tls_client) {
    respond_problem(c, 502, "no CA certificates to verify HTTPS upstreams with", false);
    return false;
  }
  int fd = socket(c->target->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    respond_problem(c, 502, "cannot open a socket to the upstream", false);
    return false;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  gw_upconn_t *u = calloc(1, sizeof(*u));
  if (!u || !buf_init(w, &u->rx, GW_IO_BUF)) {
    free(u);
    close(fd);
    respond_problem(c, 502, "out of memory", false);
    return false;
  }
  u->kind = K_UP;
  u->fd = fd;
  u->ts = ts;
  u->owner = c;
  if (c->target->https && !(u->ssl = gw_tls_client_new(w->srv->tls_client, fd, c->target->host))) {
    up_destroy(w, u);
    respond_problem(c, 502, "cannot start TLS toward the upstream", false);
    return false;
  }
  int rc = connect(fd, (struct sockaddr *)&c->target->addr, c->target->addrlen);
  u->connected = rc == 0;
  if (rc != 0 && errno != EINPROGRESS) {
    up_destroy(w, u);
    return false; /* the caller counts the failure, then retries or answers 502 */
  }
  ep_add(w, fd, u, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET);
  c->up = u;
  return true;
}

static bool idempotent(gw_method_t m) {
  return m == GW_GET || m == GW_HEAD || m == GW_PUT || m == GW_DELETE || m == GW_OPTIONS;
}

/* An upstream failed before any response byte reached the client: retry
 * on another target when the request can be sent again, else 502/504. */
static void upstream_failed(gw_conn_t *c, int status, const char *why) {
  gw_worker_t *w = c->w;
  bool stale_pooled = c->up && c->up->reused && status == 502;
  if (c->up) {
    up_release(w, c->up, false);
    c->up = NULL;
  }
  if (!stale_pooled)
    target_failed(w, c->target);
  /* Sent again only what can be sent again whole (the body so far is in
   * the replay copy), and only when that cannot apply it twice: a request
   * that never reached the upstream, or an idempotent one (RFC 9110 9.2.2;
   * nginx likewise never retries a POST or PATCH once sent). */
  bool whole =
      c->req_body_total == 0 || (c->replay_ok && c->replay_len == (size_t)c->req_body_total);
  bool resendable = !c->resp_started && whole && (!c->up_wrote || idempotent(c->req.method));
  if (resendable && (stale_pooled || c->retries_left > 0)) {
    if (!stale_pooled)
      c->retries_left--;
    const gw_target_t *next = pick_target(w, c->route, stale_pooled ? NULL : c->target);
    if (next) {
      c->target = next;
      c->req_body_left = c->req.content_length > 0 ? c->req.content_length : 0;
      c->req_body_total = 0;
      c->req_sent_all = !c->req_chunked && c->req_body_left == 0;
      c->replay_pos = 0;
      /* the head names the target's Host and base path: rebuild it */
      c->state = S_HEAD;
      start_request(c);
      return;
    }
  }
  respond_problem(c, status, why, c->req_body_left > 0 || (c->req_chunked && !c->req_dec_done));
}

/* ---- body framing, shared by both directions ------------------------------ */

/* Move up to *left bytes of a length-framed body from src to dst. */
static size_t move_length(gw_buf_t *src, gw_buf_t *dst, int64_t *left) {
  size_t avail = buf_len(src), space = buf_space(dst);
  size_t n = avail < space ? avail : space;
  if ((int64_t)n > *left)
    n = (size_t)*left;
  if (n > 0) {
    buf_put(dst, src->data + src->start, n);
    src->start += n;
    *left -= (int64_t)n;
  }
  return n;
}

/* Write data as one chunk, "<hex>\r\n<data>\r\n" (dst has room). */
static void put_chunk(gw_buf_t *dst, const char *data, size_t n) {
  char hdr[24];
  size_t hl = fmt_hex(hdr, n);
  hdr[hl++] = '\r';
  hdr[hl++] = '\n';
  buf_put(dst, hdr, hl);
  buf_put(dst, data, n);
  buf_put(dst, "\r\n", 2);
}

/*
 * Decode one span of a chunked body from src and re-frame it into dst,
 * ending with the last chunk when the body is done (trailers are dropped).
 * *dlen gets the data bytes moved. Returns 1 when something was consumed,
 * 0 when more input or output room is needed, -1 on bad framing (*err).
 * `room_left` caps the data (the body size limit) and is charged.
 */
static int rechunk(gw_chunked_t *dec, gw_buf_t *src, gw_buf_t *dst, int64_t *room_left,
                   size_t *dlen, bool *done, gw_parse_error_t *err) {
  *dlen = 0;
  *done = false;
  if (buf_space(dst) < 32 || buf_len(src) == 0)
    return 0;
  const char *data = NULL;
  size_t limit = buf_space(dst) - 24, avail = buf_len(src);
  long used = gw_chunked_decode(dec, src->data + src->start, avail < limit ? avail : limit, &data,
                                dlen, done, err);
  if (used < 0)
    return -1;
  src->start += (size_t)used;
  if (*dlen > 0) {
    if ((int64_t)*dlen > *room_left) {
      err->status = 413;
      err->reason = "the request body exceeds this API's limit";
      return -1;
    }
    *room_left -= (int64_t)*dlen;
    put_chunk(dst, data, *dlen);
  }
  if (*done)
    buf_puts(dst, "0\r\n\r\n");
  return used > 0 || *dlen > 0;
}

/* Move request body bytes from rx into utx (re-framing chunked). */
static void feed_request_body(gw_conn_t *c) {
  while (!c->req_sent_all) {
    if (!c->req_chunked) {
      size_t n;
      if (c->replay_pos < c->replay_len) { /* a retry sends the kept copy first */
        n = c->replay_len - c->replay_pos;
        if (n > buf_space(&c->utx))
          n = buf_space(&c->utx);
        buf_put(&c->utx, c->replay + c->replay_pos, n);
        c->replay_pos += n;
        c->req_body_left -= (int64_t)n;
      } else {
        n = move_length(&c->rx, &c->utx, &c->req_body_left);
        if (n > 0 && c->replay_ok) {
          memcpy(c->replay + c->replay_len, c->utx.data + c->utx.end - n, n);
          c->replay_len += n;
          c->replay_pos = c->replay_len;
        }
      }
      if (n == 0)
        break;
      c->req_body_total += (int64_t)n;
      c->req_sent_all = c->req_body_left == 0;
      continue;
    }
    int64_t room = c->route->max_body - c->req_body_total;
    size_t dlen;
    bool done;
    gw_parse_error_t err;
    int rc = rechunk(&c->req_dec, &c->rx, &c->utx, &room, &dlen, &done, &err);
    if (rc < 0) {
      respond_problem(c, err.status, err.reason, true);
      return;
    }
    c->req_body_total += (int64_t)dlen;
    if (done)
      c->req_dec_done = c->req_sent_all = true;
    if (rc == 0)
      break;
  }
}

/* Write utx to the upstream. */
static bool upstream_flush(gw_conn_t *c) {
  gw_upconn_t *u = c->up;
  while (buf_len(&c->utx) > 0) {
    if (!u->wr_ready)
      return false;
    ssize_t n;
    if (c->sent_ready) { /* this send went out with the batch's (send_batch) */
      c->sent_ready = false;
      n = c->sent_res >= 0 ? c->sent_res : c->sent_res == -EAGAIN ? GW_IO_AGAIN : GW_IO_ERROR;
      if (n == GW_IO_AGAIN)
        u->wr_ready = false;
    } else {
      n = gw_io_write(u->fd, u->ssl, c->utx.data + c->utx.start, buf_len(&c->utx), &u->rd_ready,
                      &u->wr_ready);
    }
    if (n > 0) {
      c->utx.start += (size_t)n;
      c->moved += (uint64_t)n;
      c->up_wrote = true;
      continue;
    }
    if (n == GW_IO_AGAIN)
      return false;
    upstream_failed(c, 502, "the upstream closed the connection");
    return false;
  }
  c->utx.start = c->utx.end = 0;
  return true;
}

/* Read from the upstream into its rx. Returns -1 on EOF/error. */
static int upstream_read(gw_conn_t *c) {
  gw_upconn_t *u = c->up;
  while (u->rd_ready) {
    size_t space = buf_space(&u->rx);
    if (space == 0)
      return 0;
    ssize_t n =
        gw_io_read(u->fd, u->ssl, u->rx.data + u->rx.end, space, &u->rd_ready, &u->wr_ready);
    if (n > 0) {
      u->rx.end += (size_t)n;
      c->moved += (uint64_t)n;
      if (drained(n, space, u->ssl, u->rd_hup)) {
        u->rd_ready = false;
        return 0;
      }
      continue;
    }
    if (n == GW_IO_AGAIN)
      return 0;
    return -1;
  }
  return 0;
}

/* Headers the upstream may not pass to the client (hop-by-hop). */
static bool drop_response_header(const gw_response_head_t *rh, const gw_header_t *h) {
  switch ((gw_header_id_t)h->id) {
  case GW_H_CONNECTION:
  case GW_H_KEEP_ALIVE:
  case GW_H_PROXY_CONNECTION:
  case GW_H_TRANSFER_ENCODING:
  case GW_H_TRAILER:
  case GW_H_UPGRADE:
  case GW_H_CONTENT_LENGTH:
  case GW_H_X_REQUEST_ID: return true;
  default: return named_in_connection(rh->headers, rh->nheaders, rh->conn_flags, h);
  }
}
static void parse_response_head(gw_conn_t *c) {
  gw_upconn_t *u = c->up;
  gw_response_head_t rh;
  gw_parse_error_t err;
  for (;;) {
    int rc = gw_http1_parse_response(u->rx.data + u->rx.start, buf_len(&u->rx), &c->w->srv->limits,
                                     &rh, &err);
    if (rc == 0)
      return;
    if (rc < 0) {
      upstream_failed(c, 502, "the upstream sent an invalid response");
      return;
    }
    if (rh.status >= 100 && rh.status < 200) {
      if (rh.status == 101) {
        upstream_failed(c, 502, "the upstream tried to switch protocols");
        return;
      }
      u->rx.start += rh.head_len; /* interim responses are not forwarded */
      continue;
    }
    break;
  }
  target_ok(c->w, c->target);
  c->up_head_us = c->w->now_us;
  c->status = rh.status;
  c->resp_started = true;
  timer_set(c, c->route->read_ms, 504);
  bool has_body = gw_http1_response_has_body(c->method, rh.status);
  bool client_11 = c->req.minor == 1;
  /* response framing toward the client */
  if (!has_body)
    c->resp_mode = 0;
  else if (rh.chunked)
    c->resp_mode = 2;
  else if (rh.content_length >= 0)
    c->resp_mode = 1, c->resp_left = rh.content_length;
  else
    c->resp_mode = client_11 ? 3 : 4;
  if (c->resp_mode == 4)
    c->close_after = true;
  /* the upstream connection is reusable only if the response is framed;
   * a body-less answer (HEAD, 204, 304) is framed whatever its headers */
  bool up_keep = (has_body ? rh.keep_alive : !(rh.conn_flags & GW_CONN_CLOSE)) &&
                 (c->resp_mode == 0 || c->resp_mode == 1 || c->resp_mode == 2);
  gw_chunked_init(&c->resp_dec);
  if (!buf_init(c->w, &c->tx, GW_IO_BUF)) {
    conn_close(c);
    return;
  }
  gw_buf_t *b = &c->tx;
  char line[128];
  size_t rl = rh.reason_len < 64 ? rh.reason_len : 64;
  memcpy(line, client_11 ? "HTTP/1.1 " : "HTTP/1.0 ", 9);
  int n = 9 + (int)fmt_dec(line + 9, (uint64_t)rh.status);
  line[n++] = ' ';
  memcpy(line + n, rh.reason, rl);
  n += (int)rl;
  line[n++] = '\r';
  line[n++] = '\n';
  bool ok = buf_put(b, line, (size_t)n);
  const gw_header_t *via = NULL;
  for (unsigned i = 0; ok && i < rh.nheaders; i++) {
    const gw_header_t *h = &rh.headers[i];
    if (h->id == GW_H_VIA) {
      via = h;
      continue;
    }
    if (drop_response_header(&rh, h))
      continue;
    ok = put_header_n(b, h->name, h->name_len, h->value, h->value_len);
  }
  if (ok && via)
    ok = buf_puts(b, "Via: ") && buf_put(b, via->value, via->value_len) &&
         buf_puts(b, ", 1.1 tollgate\r\n");
  else if (ok)
    ok = buf_puts(b, "Via: 1.1 tollgate\r\n");
  ok = ok && put_header(b, "X-Request-Id", c->request_id, strlen(c->request_id));
  if (ok && c->has_verdict) {
    char rlh[1024];
    size_t rn = fmt_ratelimit(c->w->srv, c->plan, &c->verdict, rlh, sizeof(rlh));
    ok = buf_put(b, rlh, rn);
  }
  if (c->resp_mode == 1 || (!has_body && rh.content_length >= 0 && c->method == GW_HEAD)) {
    char cl[32];
    n = (int)fmt_dec(cl, (uint64_t)rh.content_length);
    ok = ok && put_header(b, "Content-Length", cl, (size_t)n);
  } else if (c->resp_mode == 2 || c->resp_mode == 3) {
    ok = ok && buf_puts(b, "Transfer-Encoding: chunked\r\n");
  }
  if (c->w->draining)
    c->close_after = true;
  if (c->close_after || !c->client_keep_alive)
    ok = ok && buf_puts(b, "Connection: close\r\n");
  else if (!client_11)
    ok = ok && buf_puts(b, "Connection: keep-alive\r\n");
  ok = ok && buf_put(b, "\r\n", 2);
  if (!ok) {
    c->resp_started = false;
    c->tx.start = c->tx.end = 0;
    upstream_failed(c, 502, "the upstream response head is too large");
    return;
  }
  c->bytes_out += (int64_t)buf_len(b);
  u->rx.start += rh.head_len;
  c->state = S_BODY;
  c->resp_done = c->resp_mode == 0 || (c->resp_mode == 1 && c->resp_left == 0);
  /* keep the reuse decision with the connection */
  u->reused = up_keep; /* reused now means "may go back to the pool" */
}

/* Move response body bytes from the upstream rx to tx (framing). */
static void feed_response_body(gw_conn_t *c, bool up_eof) {
  gw_upconn_t *u = c->up;
  while (!c->resp_done) {
    if (c->resp_mode == 1) {
      size_t n = move_length(&u->rx, &c->tx, &c->resp_left);
      c->bytes_out += (int64_t)n;
      c->resp_done = c->resp_left == 0;
      if (n == 0)
        break;
      continue;
    }
    if (c->resp_mode == 2) {
      int64_t unlimited = INT64_MAX;
      size_t dlen;
      bool done;
      gw_parse_error_t err;
      int rc = rechunk(&c->resp_dec, &u->rx, &c->tx, &unlimited, &dlen, &done, &err);
      if (rc < 0) {
        target_failed(c->w, c->target);
        if (c->resp_sent == 0) /* nothing reached the client: a clean 502 */
          respond_problem(c, 502, "the upstream sent a malformed chunked body", true);
        else
          conn_close(c); /* mid-body: the client sees a cut response */
        return;
      }
      c->bytes_out += (int64_t)dlen;
      c->resp_done = done;
      if (rc == 0)
        break;
      continue;
    }
    /* close-delimited: everything until EOF, re-chunked (3) or as is (4) */
    size_t avail = buf_len(&u->rx);
    if (avail > 0) {
      size_t space = buf_space(&c->tx);
      size_t room = c->resp_mode == 3 ? (space > 24 ? space - 24 : 0) : space;
      size_t n = avail < room ? avail : room;
      if (n == 0)
        break;
      if (c->resp_mode == 3)
        put_chunk(&c->tx, u->rx.data + u->rx.start, n);
      else
        buf_put(&c->tx, u->rx.data + u->rx.start, n);
      u->rx.start += n;
      c->bytes_out += (int64_t)n;
      continue;
    }
    if (up_eof) {
      if (c->resp_mode == 3 && !buf_puts(&c->tx, "0\r\n\r\n"))
        break;
      c->resp_done = true;
    }
    break;
  }
}

static void start_request(gw_conn_t *c) {
  gw_worker_t *w = c->w;
  gw_server_t *srv = w->srv;
  gw_parse_error_t err;
  if (c->state == S_HEAD && !c->route) {
    int rc = gw_http1_parse_request(c->rx.data + c->rx.start, buf_len(&c->rx), &srv->limits,
                                    &c->req, &err);
    if (rc == 0) {
      if (c->rd_eof)
        conn_close(c);
      else if (buf_len(&c->rx) > 0 && c->deadline_status != 408)
        timer_set(c, srv->header_timeout_ms, 408);
      return;
    }
    c->started_ms = w->now;
    c->started_us = w->now_us;
    c->key = NULL;
    c->sub = NULL;
    c->plan = NULL;
    c->reason = GW_R_NONE;
    c->admitted = c->metered = c->has_verdict = false;
    c->up_start_us = c->up_head_us = 0;
    c->bytes_in = 0; /* counted below: the head, then body bytes as they arrive */
    c->bytes_out = 0;
    c->request_id[0] = '\0';
    c->rid_ours = false;
    snprintf(c->path_log, sizeof(c->path_log), "-");
    if (rc < 0) {
      c->status = 0;
      new_request_id(c);
      respond_problem(c, err.status, err.reason, true);
      return;
    }
    /* keep the head in a buffer of its own: the request's pointers must
     * survive rx compaction, and rx moves on to the body now */
    size_t hlen = c->req.head_len;
    if (hlen > c->headcap) {
      char *nb = realloc(c->headbuf, hlen);
      if (!nb) {
        conn_close(c);
        return;
      }
      c->headbuf = nb;
      c->headcap = hlen;
    }
    memcpy(c->headbuf, c->rx.data + c->rx.start, hlen);
    gw_http1_request_rebase(&c->req, c->rx.data + c->rx.start, c->headbuf);
    c->rx.start += hlen;
    c->bytes_in = (int64_t)hlen;
    static const char *const names[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
    c->method = c->req.method;
    c->method_name = names[c->req.method];
    c->client_keep_alive = c->req.keep_alive;
    c->status = 0;
    c->resp_sent = 0;
    size_t tl =
        c->req.target_len < sizeof(c->path_log) - 1 ? c->req.target_len : sizeof(c->path_log) - 1;
    memcpy(c->path_log, c->req.target, tl); /* once per request: no printf */
    c->path_log[tl] = '\0';
    /* the request id: the client's if sane, else a new one */
    const gw_header_t *rid = find_header(&c->req, GW_H_X_REQUEST_ID);
    if (rid && rid->value_len > 0 && rid->value_len <= 64) {
      bool sane = true;
      for (uint32_t i = 0; i < rid->value_len && sane; i++) {
        char ch = rid->value[i];
        sane = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
               ch == '-' || ch == '_' || ch == '.';
      }
      if (sane)
        snprintf(c->request_id, sizeof(c->request_id), "%.*s", (int)rid->value_len, rid->value);
    }
    if (!c->request_id[0])
      new_request_id(c);
    c->status = 1; /* marks "a request is in flight" for logging */
    /* route on the normalised path */
    char npath[GW_PATH_MAX];
    if (c->req.path_len >= sizeof(npath)) {
      respond_problem(c, 414, "the request path is too long", true);
      return;
    }
    long nl = gw_path_normalise(c->req.target, c->req.path_len, npath);
    if (nl < 0) {
      respond_problem(c, 400, "the request path is not valid (escapes, or climbs above /)", true);
      return;
    }
    gw_snapshot_t *snap = w->snap;
    if (snap) { /* held until the request ends: route and target live in it */
      c->snap = snap;
      snap_hold(w, snap);
    }
    bool mismatch = false;
    const gw_header_t *host = c->req.host >= 0 ? &c->req.headers[c->req.host] : NULL;
    c->route = snap ? gw_route_match(snap, host ? host->value : NULL, host ? host->value_len : 0,
                                     npath, (size_t)nl, c->req.method, &mismatch)
                    : NULL;
    bool has_body = c->req.chunked || c->req.content_length > 0;
    if (!c->route) {
      respond_problem(c, mismatch ? 405 : 404,
                      mismatch ? "this API does not accept this method"
                               : "no API is published at this path",
                      has_body);
      return;
    }
    if (c->req.content_length > c->route->max_body) {
      respond_problem(c, 413, "the request body exceeds this API's limit", true);
      return;
    }
    if (!admit(c))
      return;
    c->retries_left = c->route->retries;
    c->target = pick_target(w, c->route, NULL);
    if (!c->target) {
      respond_problem(c, 503, "no healthy upstream target for this API", has_body);
      return;
    }
    c->req_chunked = c->req.chunked;
    c->req_body_left = c->req.content_length > 0 ? c->req.content_length : 0;
    c->req_body_total = 0;
    c->req_sent_all = !c->req_chunked && c->req_body_left == 0;
    c->req_dec_done = false;
    gw_chunked_init(&c->req_dec);
    c->replay_len = c->replay_pos = 0;
    c->replay_ok = !c->req_chunked && c->req_body_left > 0 && c->req_body_left <= GW_REPLAY_MAX &&
                   c->route->retries > 0;
    if (c->replay_ok && !c->replay && !(c->replay = malloc(GW_REPLAY_MAX)))
      c->replay_ok = false;
    c->resp_started = false;
    c->resp_done = false;
    if (!buf_init(c->w, &c->utx, GW_IO_BUF) || !build_upstream_head(c, npath, (size_t)nl)) {
      respond_problem(c, 431, "the request head does not fit the upstream buffer", true);
      return;
    }
    if (c->req.expect_continue && !c->req_sent_all) {
      buf_init(c->w, &c->tx, GW_IO_BUF);
      buf_puts(&c->tx, "HTTP/1.1 100 Continue\r\n\r\n");
    }
  } else if (c->route) {
    /* a retry: rebuild the head for the new target (no body was sent) */
    char npath[GW_PATH_MAX];
    long nl = gw_path_normalise(c->req.target, c->req.path_len, npath);
    if (nl < 0 || !build_upstream_head(c, npath, (size_t)nl)) {
      respond_problem(c, 502, "cannot rebuild the request for another target", true);
      return;
    }
  }
  c->state = S_UPSTREAM;
  c->up_wrote = false;
  c->up_start_us = c->w->now_us;
  c->up_head_us = 0;
  if (!upstream_attach(c)) {
    if (c->state == S_UPSTREAM)
      upstream_failed(c, 502, "the upstream refused the connection");
    return;
  }
  timer_set(c, c->up->connected || c->up->reused ? c->route->write_ms : c->route->connect_ms, 504);
}

/* Queue c to be pumped again on the next loop turn (its guard ran out
 * while it could still move bytes: edge-triggered epoll will not say so). */
static void pump_again(gw_conn_t *c) {
  gw_worker_t *w = c->w;
  if (c->queued || c->closing)
    return;
  if (w->nagain == w->capagain) {
    int cap = w->capagain ? w->capagain * 2 : 64;
    gw_conn_t **a = realloc(w->again, sizeof(*a) * (size_t)cap);
    if (!a)
      return;
    w->again = a;
    w->capagain = cap;
  }
  w->again[w->nagain++] = c;
  c->queued = true;
}

/* Keep c's upstream send for the end of the batch (send_batch), where
 * the ring sends every connection's in one system call: the upstream, if
 * it shares our core, then wakes once for the batch instead of taking
 * the core from us at each send (gateway/ring.h). false: send it now. */
static bool queue_send(gw_conn_t *c) {
  gw_worker_t *w = c->w;
  if (c->send_queued)
    return true; /* more of it (a body) joins the same send */
  if (w->ring.fd < 0 || w->sending || c->up->ssl || !c->up->wr_ready)
    return false;
  if (w->nsend == w->capsend) {
    int cap = w->capsend ? w->capsend * 2 : GW_EVENTS;
    gw_conn_t **q = realloc(w->sendq, sizeof(*q) * (size_t)cap);
    if (!q)
      return false;
    w->sendq = q;
    w->capsend = cap;
  }
  w->sendq[w->nsend++] = c;
  c->send_queued = true;
  return true;
}

static void defer_free(gw_worker_t *w, gw_conn_t *c);

static void send_result(void *arg, uint64_t tag, int res) {
  gw_worker_t *w = arg;
  if (tag < (uint64_t)w->nsend) {
    gw_conn_t *c = w->sendq[tag];
    c->sent_res = res;
    c->sent_ready = true;
  }
}

/* Send what queue_send kept, then let each connection go on from its
 * send's result (upstream_flush takes it as send()'s). */
static void send_batch(gw_worker_t *w) {
  int n = w->nsend;
  uint64_t sends = 0, calls = 0;
  for (int i = 0; i < n && w->ring.fd >= 0;) {
    int first = i;
    unsigned queued = 0;
    for (; i < n && gw_ring_room(&w->ring) > 0; i++) {
      gw_conn_t *c = w->sendq[i];
      if (c->closing || !c->up || c->up->ssl || !c->up->wr_ready || buf_len(&c->utx) == 0 ||
          (c->state != S_UPSTREAM && c->state != S_BODY))
        continue; /* its pump below finds its way */
      gw_ring_send(&w->ring, c->up->fd, c->utx.data + c->utx.start, buf_len(&c->utx), (uint64_t)i);
      queued++;
    }
    if (queued == 0)
      continue;
    int rc = gw_ring_submit(&w->ring, send_result, w);
    sends += queued;
    calls++;
    if (rc < 0) {
      /* the ring broke (it should not): whether the unreported sends
       * went out is unknown, so they fail like a broken connection
       * (up_wrote: no retry of a request that may have reached the
       * upstream), and this worker sends without it from now on */
      char e[16];
      snprintf(e, sizeof(e), "%d", -rc);
      tg_log(TG_LOG_ERROR, "io_uring failed: sending without it", "errno", e, NULL);
      for (int j = first; j < i; j++) {
        gw_conn_t *c = w->sendq[j];
        if (!c->sent_ready && !c->closing && c->up && buf_len(&c->utx) > 0) {
          c->sent_res = -EIO;
          c->sent_ready = true;
          c->up_wrote = true;
        }
      }
      gw_ring_free(&w->ring); /* fd -1: the loop ends, the rest go at once */
      atomic_fetch_sub(&w->srv->rings, 1);
    }
  }
  w->sending = true;
  for (int i = 0; i < n; i++) {
    gw_conn_t *c = w->sendq[i];
    c->send_queued = false;
    if (!c->closing)
      pump(c);
    if (c->sent_ready) {
      /* not taken (closed, or its state moved on): a result nobody
       * accounted for leaves the upstream stream unknown */
      c->sent_ready = false;
      if (!c->closing)
        conn_close(c);
    }
    if (c->closing)
      defer_free(w, c);
  }
  w->sending = false;
  w->nsend = 0;
  bump(&w->stats.ring_sends, sends);
  bump(&w->stats.ring_calls, calls);
}

/* Upstream exchange and response streaming: one pass. Returns true when
 * the caller should loop again (progress was made or the state changed). */
static bool pump_upstream(gw_conn_t *c) {
  int state = c->state;
  gw_upconn_t *u = c->up;
  uint64_t moved0 = c->moved;
  size_t rx0 = buf_len(&c->rx);
  if (!u)
    return false;
  if (!u->connected) {
    if (!u->wr_ready)
      return false;
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr != 0) {
      upstream_failed(c, 502, "the upstream refused the connection");
      return true;
    }
    u->connected = true;
    timer_set(c, c->route->write_ms, 504);
  }
  if (u->ssl && !u->tls_ready) {
    int h = gw_io_handshake(u->ssl, &u->rd_ready, &u->wr_ready);
    if (h < 0) {
      upstream_failed(c, 502, "TLS with the upstream failed (certificate not trusted?)");
      return true;
    }
    if (h == 0)
      return false;
    u->tls_ready = true;
  }
  /* 100 Continue to the client, request body toward the upstream */
  if (state == S_UPSTREAM && buf_len(&c->tx) > 0) {
    client_flush(c);
    if (c->closing)
      return false;
  }
  if (!c->req_sent_all) {
    client_read(c);
    if (c->closing)
      return false;
    feed_request_body(c);
    if (c->state != state)
      return true;
    if (!c->req_sent_all && c->rd_eof && buf_len(&c->rx) == 0) {
      conn_close(c); /* the client left mid-body */
      return false;
    }
    if (buf_len(&c->rx) != rx0 || c->moved != moved0) /* body bytes arrived: wait anew */
      timer_set(c, c->w->srv->body_timeout_ms, 408);
  }
  if (buf_len(&c->utx) > 0) {
    if (!c->sent_ready && queue_send(c))
      return false; /* goes out with the batch's others (send_batch) */
    upstream_flush(c);
    if (c->state != state || c->closing)
      return !c->closing;
    if (c->req_sent_all && buf_len(&c->utx) == 0 && state == S_UPSTREAM)
      timer_set(c, c->route->read_ms, 504);
  }
  int rr = upstream_read(c);
  if (c->state == S_UPSTREAM) {
    if (buf_len(&u->rx) > 0)
      parse_response_head(c);
    if (c->state == S_UPSTREAM && rr < 0) {
      upstream_failed(c, 502, "the upstream closed the connection without a response");
      return true;
    }
    if (c->state != S_BODY) /* still waiting, or answered by us (S_FLUSH) */
      return c->state != S_UPSTREAM || c->moved != moved0;
  }
  /* S_BODY: stream, with back-pressure on both buffers */
  bool up_eof = rr < 0;
  feed_response_body(c, up_eof && buf_len(&u->rx) == 0);
  if (c->closing || c->state != S_BODY)
    return !c->closing;
  if (up_eof && buf_len(&u->rx) == 0 && !c->resp_done)
    feed_response_body(c, true); /* the rest moved out: now EOF ends it */
  if (c->closing || c->state != S_BODY)
    return !c->closing;
  client_flush(c);
  if (c->closing)
    return false;
  if (c->resp_done && buf_len(&c->tx) == 0) {
    bool reusable = u->reused && c->req_sent_all && buf_len(&c->utx) == 0 && !up_eof;
    if (!c->req_sent_all)
      c->close_after = true; /* unread request body on the client side */
    c->up = NULL;
    up_release(c->w, u, reusable);
    request_done(c);
    return true;
  }
  /* a framed body that ends early is cut: so must the client's be */
  if (up_eof && buf_len(&u->rx) == 0 && !c->resp_done && (c->resp_mode == 1 || c->resp_mode == 2)) {
    conn_close(c);
    return false;
  }
  if (c->moved != moved0) {
    timer_set(c, c->route->read_ms, 504); /* a transfer may last as long as it moves */
    return true;
  }
  return false;
}

static void pump(gw_conn_t *c) {
  if (c->ssl && !c->tls_ready) {
    int h = gw_io_handshake(c->ssl, &c->rd_ready, &c->wr_ready);
    if (h < 0)
      conn_close(c);
    if (h <= 0)
      return;
    c->tls_ready = true;
  }
  for (int guard = 0; !c->closing; guard++) {
    if (guard == 64) {
      pump_again(c); /* fairness: let other connections run */
      return;
    }
    int state = c->state;
    if (state == S_HEAD) {
      if (!client_flush(c))
        return; /* a 100 Continue or similar still going out */
      client_read(c);
      if (c->closing)
        return;
      if (buf_len(&c->rx) == 0) {
        if (c->rd_eof)
          conn_close(c);
        return;
      }
      /* a request head that outgrows rx is a 431 by the parser's limit */
      if (buf_space(&c->rx) == 0 && c->rx.cap < c->w->srv->limits.max_head + 1) {
        size_t cap = c->rx.cap * 2;
        if (cap > c->w->srv->limits.max_head + 1)
          cap = c->w->srv->limits.max_head + 1;
        char *nd = realloc(c->rx.data, cap);
        if (nd) {
          c->rx.data = nd;
          c->rx.cap = cap;
          continue;
        }
      }
      start_request(c);
      if (c->state == S_HEAD && !c->closing)
        return;
      continue;
    }
    if (state == S_FLUSH) {
      if (!client_flush(c))
        return;
      request_done(c);
      continue;
    }
    if (state == S_UPSTREAM || state == S_BODY) {
      if (!pump_upstream(c))
        return;
      continue;
    }
    return;
  }
}

/* ---- events ----------------------------------------------------------------- */

static void on_timer(gw_conn_t *c) {
  if (c->deadline_status == 0 || (c->state == S_HEAD && buf_len(&c->rx) == 0)) {
    conn_close(c); /* idle keep-alive */
    return;
  }
  if (c->state == S_HEAD) {
    new_request_id(c);
    respond_problem(c, 408, "the request head did not arrive in time", true);
  } else if (c->state == S_UPSTREAM) {
    if (c->up && !c->up->connected)
      upstream_failed(c, 504, "the upstream did not accept the connection in time");
    else if (!c->req_sent_all && buf_len(&c->utx) == 0)
      respond_problem(c, 408, "the request body did not arrive in time", true);
    else {
      if (c->target)
        target_failed(c->w, c->target);
      respond_problem(c, 504, "the upstream did not answer in time", true);
    }
  } else if (c->state == S_BODY) {
    conn_close(c); /* the response was started: all we can do is cut it */
  } else {
    conn_close(c);
  }
  c->wr_ready = true;
  pump(c);
}

static void accept_all(gw_worker_t *w, bool tls) {
  gw_server_t *srv = w->srv;
  /* a bounded batch: the listener is level-triggered, so what is left
   * comes back on the next turn, after the connections already open */
  for (int batch = 0; batch < 16; batch++) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd =
        accept4(tls ? w->tlsfd : w->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR)
        continue;
      return; /* EAGAIN, or EMFILE: the next event retries */
    }
    if (atomic_load_explicit(&srv->live_connections, memory_order_relaxed) >=
            srv->max_connections ||
        w->draining) {
      close(fd);
      continue;
    }
    gw_conn_t *c = calloc(1, sizeof(*c));
    if (!c || !buf_init(w, &c->rx, 4096) || (tls && !(c->ssl = SSL_new(srv->tls_server)))) {
      if (c)
        buf_free(w, &c->rx);
      free(c);
      close(fd);
      continue;
    }
    if (c->ssl) {
      SSL_set_fd(c->ssl, fd);
      SSL_set_accept_state(c->ssl);
    }
    atomic_fetch_add_explicit(&srv->live_connections, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&srv->stats.connections_open, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&srv->stats.connections_total, 1, memory_order_relaxed);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->kind = K_CLIENT;
    c->fd = fd;
    c->w = w;
    c->heap_index = -1;
    c->state = S_HEAD;
    c->rd_ready = true;
    c->wr_ready = true;
    if (ss.ss_family == AF_INET)
      inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->client_ip,
                sizeof(c->client_ip));
    else
      inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, c->client_ip,
                sizeof(c->client_ip));
    w->nconns++;
    ep_add(w, fd, c, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET);
    timer_set(c, srv->header_timeout_ms, 408);
    pump(c);
    if (c->closing)
      conn_free(c);
  }
}

/* Close pooled connections idle too long or closed by their upstream. */
static void sweep_pools(gw_worker_t *w) {
  int64_t now = now_ms();
  for (int b = 0; b < 256; b++)
    for (gw_tstate_t *t = w->tbuckets[b]; t; t = t->hnext) {
      gw_upconn_t *u = t->idle;
      while (u) {
        gw_upconn_t *next = u->next;
        if (now - u->idle_since > w->srv->idle_timeout_ms)
          up_close(w, u);
        u = next;
      }
    }
}

/* Free c after the current event batch (a later event in it may name c).
 * If the list cannot grow, c is freed now: a stale event for it is then
 * possible, so the list is sized to make that a memory-exhaustion case. */
static void defer_free(gw_worker_t *w, gw_conn_t *c) {
  if (c->dead)
    return;
  if (w->ndead == w->capdead) {
    int cap = w->capdead ? w->capdead * 2 : GW_EVENTS * 2;
    gw_conn_t **d = realloc(w->dead, sizeof(*d) * (size_t)cap);
    if (!d) {
      conn_free(c);
      return;
    }
    w->dead = d;
    w->capdead = cap;
  }
  c->dead = true;
  w->dead[w->ndead++] = c;
}

static void *worker_main(void *arg) {
  gw_worker_t *w = arg;
  char name[16];
  snprintf(name, sizeof(name), "tg-worker-%d", w->index);
  gw_thread_role(name, false);
  w->now_us = tg_mono_us();
  w->now = w->now_us / 1000;
  gw_server_t *srv = w->srv;
  w->wall_ms = gw_wall_ms(srv);
  /* the ring: created here, since only this thread may submit to it */
  w->ring.fd = -1;
  int rrc = srv->io_uring ? gw_ring_init(&w->ring, GW_EVENTS) : -1;
  if (rrc == 0) {
    atomic_fetch_add(&srv->rings, 1);
  } else if (srv->io_uring && w->index == 0) {
    char e[16];
    snprintf(e, sizeof(e), "%d", -rrc);
    tg_log(TG_LOG_WARN, "io_uring not available: one send() per upstream request", "errno", e,
           NULL);
  }
  struct epoll_event evs[GW_EVENTS];
  int64_t last_sweep = now_ms();
  for (;;) {
    /* one snapshot per loop turn: publish what we hold */
    gw_snapshot_t *snap = atomic_load_explicit(&srv->current, memory_order_acquire);
    if (snap != w->snap)
      w->snap = snap;
    publish_gen(w);
    atomic_store(&w->epoch, gw_policy_epoch(srv->policy));
    meter_handover(w);
    if (atomic_load_explicit(&srv->stopping, memory_order_relaxed) && !w->draining) {
      w->draining = true;
      /* idle keep-alive connections have nothing in flight: close them now */
      for (int i = w->nheap - 1; i >= 0; i--) {
        gw_conn_t *c = w->heap[i];
        if (i < w->nheap && c->state == S_HEAD && buf_len(&c->rx) == 0 && !c->closing) {
          conn_close(c);
          conn_free(c);
        }
      }
      epoll_ctl(w->ep, EPOLL_CTL_DEL, w->lfd, NULL);
      close(w->lfd);
      w->lfd = -1;
      if (w->tlsfd >= 0) {
        epoll_ctl(w->ep, EPOLL_CTL_DEL, w->tlsfd, NULL);
        close(w->tlsfd);
        w->tlsfd = -1;
      }
    }
    if (w->draining && w->nconns == 0)
      break;
    int timeout = 1000;
    int64_t before = w->nheap > 0 || w->loglen > 0 ? now_ms() : 0;
    if (w->nheap > 0) {
      int64_t d = w->heap[0]->heap_key - before;
      timeout = d < 0 ? 0 : (d > 1000 ? 1000 : (int)d);
    }
    if (w->loglen > 0) {
      int64_t d = w->log_due - before;
      timeout = d < 0 ? 0 : (d < timeout ? (int)d : timeout);
    }
    if (w->nagain > 0)
      timeout = 0;
    int n = epoll_wait(w->ep, evs, GW_EVENTS, timeout);
    w->now_us = tg_mono_us();
    w->now = w->now_us / 1000;
    w->wall_ms = gw_wall_ms(srv);
    /* the snapshot may have changed while we slept: requests in this
     * batch must see the one that is current now */
    gw_snapshot_t *fresh = atomic_load_explicit(&srv->current, memory_order_acquire);
    if (fresh != w->snap) {
      w->snap = fresh;
      publish_gen(w);
    }
    for (int i = 0; i < n; i++) {
      uint8_t kind = *(uint8_t *)evs[i].data.ptr;
      uint32_t e = evs[i].events;
      if (kind == K_LISTEN || kind == K_LISTEN_TLS) {
        accept_all(w, kind == K_LISTEN_TLS);
      } else if (kind == K_WAKE) {
        uint64_t v;
        ssize_t r = read(w->wakefd, &v, sizeof(v));
        (void)r;
      } else if (kind == K_CLIENT) {
        gw_conn_t *c = evs[i].data.ptr;
        if (c->closing)
          continue;
        if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
          c->rd_ready = true;
        if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
          c->rd_hup = true;
        if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))
          c->wr_ready = true;
        pump(c);
        if (c->closing)
          defer_free(w, c);
      } else if (kind == K_UP) {
        gw_upconn_t *u = evs[i].data.ptr;
        if (!u->owner) { /* idle in the pool: any event means it closed */
          if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            up_close(w, u);
          continue;
        }
        gw_conn_t *c = u->owner;
        if (c->closing)
          continue;
        if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
          u->rd_ready = true;
        if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
          u->rd_hup = true;
        if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))
          u->wr_ready = true;
        pump(c);
        if (c->closing)
          defer_free(w, c);
      }
    }
    /* connections that stopped at their guard with work left */
    int nagain = w->nagain;
    for (int i = 0; i < nagain; i++) {
      gw_conn_t *c = w->again[i];
      if (!c)
        continue;
      w->again[i] = NULL;
      c->queued = false;
      if (c->closing)
        continue;
      pump(c);
      if (c->closing)
        defer_free(w, c);
    }
    /* the batch's upstream sends, in one go */
    if (w->nsend > 0)
      send_batch(w);
    /* keep what was queued during this pass */
    int kept = 0;
    for (int i = 0; i < w->nagain; i++)
      if (w->again[i])
        w->again[kept++] = w->again[i];
    w->nagain = kept;
    /* free after the batch: a later event in it may name the same conn */
    for (int i = 0; i < w->ndead; i++)
      conn_free(w->dead[i]);
    w->ndead = 0;
    w->now_us = tg_mono_us();
    int64_t now = w->now = w->now_us / 1000;
    while (w->nheap > 0 && w->heap[0]->heap_key <= now) {
      gw_conn_t *c = w->heap[0];
      if (c->deadline > now) { /* extended since it was filed: re-file */
        c->heap_key = c->deadline;
        heap_down(w, 0);
        continue;
      }
      timer_cancel(c);
      on_timer(c);
      if (c->closing)
        conn_free(c);
    }
    if (now - last_sweep >= 1000) {
      sweep_pools(w);
      last_sweep = now;
    }
    /* the access log is written when its buffer fills (access_log) or
     * its oldest line is GW_LOG_FLUSH_MS old, as nginx's buffer= and
     * flush=: a write per loop turn cost a syscall per request or two
     * when turns are short (an open-loop client at a steady rate) */
    if (w->loglen > 0 && now >= w->log_due)
      log_flush(w);
  }
  log_flush(w);
  while (w->nbufpool > 0)
    free(w->bufpool[--w->nbufpool]);
  if (w->ring.fd >= 0) {
    gw_ring_free(&w->ring);
    atomic_fetch_sub(&srv->rings, 1);
  }
  free(w->sendq);
  /* what this worker counted now belongs to gw_meter_stop */
  atomic_store(&srv->meter[w->index].exited, true);
  return NULL;
}

/* ---- start and stop ---------------------------------------------------------- */

static int make_listener(struct sockaddr_storage *addr, socklen_t addrlen, char *err,
                         size_t errlen) {
  int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, errlen, "socket: %s", strerror(errno));
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (bind(fd, (struct sockaddr *)addr, addrlen) != 0 || listen(fd, 4096) != 0) {
    snprintf(err, errlen, "cannot listen on the gateway address: %s", strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

/* The port fd is bound to, written back into addr for the next worker. */
static uint16_t pin_port(int fd, struct sockaddr_storage *addr) {
  struct sockaddr_storage ss;
  socklen_t sl = sizeof(ss);
  getsockname(fd, (struct sockaddr *)&ss, &sl);
  uint16_t port;
  if (ss.ss_family == AF_INET) {
    port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    ((struct sockaddr_in *)addr)->sin_port = htons(port);
  } else {
    port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    ((struct sockaddr_in6 *)addr)->sin6_port = htons(port);
  }
  return port;
}

int gw_workers_start(gw_server_t *srv, char *err, size_t errlen) {
  for (int i = 0; i < srv->nworkers; i++) {
    gw_worker_t *w = calloc(1, sizeof(*w));
    if (!w) {
      snprintf(err, errlen, "out of memory");
      return -1;
    }
    srv->workers[i] = w;
    w->srv = srv;
    w->index = i;
    if (srv->metering && !(srv->meter[i].cur = gw_meter_tab_new())) {
      snprintf(err, errlen, "out of memory");
      return -1;
    }
    w->listen_kind = K_LISTEN;
    w->tls_kind = K_LISTEN_TLS;
    w->wake_kind = K_WAKE;
    w->tlsfd = -1;
    randombytes_buf(&w->rng, sizeof(w->rng));
    w->rng |= 1;
    if ((w->lfd = make_listener(&srv->listen_addr, srv->listen_addrlen, err, errlen)) < 0)
      return -1;
    if (i == 0) /* port 0: every worker must bind the port the first one got */
      srv->port = pin_port(w->lfd, &srv->listen_addr);
    if (srv->tls_server) {
      if ((w->tlsfd = make_listener(&srv->tls_addr, srv->tls_addrlen, err, errlen)) < 0)
        return -1;
      if (i == 0)
        srv->tls_port = pin_port(w->tlsfd, &srv->tls_addr);
    }
    w->ep = epoll_create1(EPOLL_CLOEXEC);
    w->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->ep < 0 || w->wakefd < 0) {
      snprintf(err, errlen, "epoll: %s", strerror(errno));
      return -1;
    }
    ep_add(w, w->lfd, &w->listen_kind, EPOLLIN | EPOLLEXCLUSIVE);
    if (w->tlsfd >= 0)
      ep_add(w, w->tlsfd, &w->tls_kind, EPOLLIN | EPOLLEXCLUSIVE);
    ep_add(w, w->wakefd, &w->wake_kind, EPOLLIN);
  }
  for (int i = 0; i < srv->nworkers; i++)
    if (pthread_create(&srv->workers[i]->thread, NULL, worker_main, srv->workers[i]) != 0) {
      snprintf(err, errlen, "cannot start worker threads");
      return -1;
    }
  return 0;
}

void gw_stats_sum(gw_server_t *srv, gw_stats_t *out) {
  memset(out, 0, sizeof(*out));
#define SUM(f)                                                                                     \
  atomic_fetch_add_explicit(&out->f, atomic_load_explicit(&w->stats.f, memory_order_relaxed),      \
                            memory_order_relaxed)
  for (int i = 0; i < srv->nworkers; i++) {
    gw_worker_t *w = srv->workers[i];
    if (!w)
      continue;
    for (int k = 0; k < 6; k++)
      SUM(requests[k]);
    for (int k = 0; k <= GW_LAT_BUCKETS; k++)
      SUM(latency_bucket[k]);
    SUM(upstream_errors);
    SUM(bytes_in);
    SUM(bytes_out);
    SUM(latency_sum_us);
    SUM(ring_sends);
    SUM(ring_calls);
  }
#undef SUM
  atomic_store(&out->connections_open, atomic_load(&srv->stats.connections_open));
  atomic_store(&out->connections_total, atomic_load(&srv->stats.connections_total));
}

uint64_t gw_workers_min_epoch(void *arg) {
  gw_server_t *srv = arg;
  uint64_t min = UINT64_MAX;
  for (int i = 0; i < srv->nworkers; i++) {
    gw_worker_t *w = srv->workers[i];
    if (!w || atomic_load(&srv->meter[i].exited))
      continue;
    uint64_t e = atomic_load(&w->epoch);
    if (e < min)
      min = e;
  }
  return min;
}

void gw_workers_wake(gw_server_t *srv) {
  for (int i = 0; i < srv->nworkers; i++) {
    uint64_t one = 1;
    if (srv->workers[i]) {
      ssize_t r = write(srv->workers[i]->wakefd, &one, sizeof(one));
      (void)r;
    }
  }
}

uint64_t gw_workers_min_gen(gw_server_t *srv) {
  uint64_t min = UINT64_MAX;
  for (int i = 0; i < srv->nworkers; i++) {
    uint64_t g = atomic_load_explicit(&srv->workers[i]->gen, memory_order_acquire);
    if (g < min)
      min = g;
  }
  return min;
}

void gw_workers_stop(gw_server_t *srv, int64_t drain_ms) {
  atomic_store(&srv->stopping, true);
  for (int i = 0; i < srv->nworkers; i++) {
    uint64_t one = 1;
    ssize_t r = write(srv->workers[i]->wakefd, &one, sizeof(one));
    (void)r;
  }
  /* workers exit when their connections are done; past the drain
   * deadline the process ends anyway (main exits) */
  int64_t deadline = now_ms() + drain_ms;
  for (int i = 0; i < srv->nworkers; i++) {
    gw_worker_t *w = srv->workers[i];
    for (;;) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      int64_t left = deadline - now_ms();
      if (left <= 0)
        break;
      ts.tv_sec += left / 1000;
      ts.tv_nsec += (left % 1000) * 1000000;
      if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
      }
      if (pthread_timedjoin_np(w->thread, NULL, &ts) == 0) {
        w->thread = 0;
        break;
      }
    }
  }
}
