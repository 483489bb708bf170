/*
 * gw.h - tollgate-gateway's shared types: the configuration snapshot the
 * workers read, the router over it, and the process-wide state.
 *
 * Threads:
 *   - N workers, each with its own epoll loop, SO_REUSEPORT listener,
 *     connections and upstream pools; no locks and no SQLite on the
 *     request path;
 *   - one config thread: loads the snapshot from the store at start and
 *     rebuilds it when the store changes (PRAGMA data_version, then the
 *     change log), publishing it with an atomic pointer swap;
 *   - one status thread: /health and /metrics on status_listen;
 *   - one health thread (health.c): active health checks of the targets of
 *     APIs with a healthcheck_path, from a copy of their addresses that the
 *     config thread hands over with each snapshot it publishes; it never
 *     reads a snapshot itself.
 *
 * Snapshot lifetime (a simple epoch scheme): workers read `current` once
 * per loop turn and publish the generation they hold; the config thread
 * frees an old snapshot only when every worker holds a newer generation,
 * so a snapshot is never freed under a request that uses it.
 */
#ifndef GW_H
#define GW_H

#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/config.h"
#include "gateway/http1.h"
#include "gateway/meter.h"
#include "gateway/policy.h"

#define GW_MAX_WORKERS 256
#define GW_ID_LEN      30
#define GW_TKEY_LEN    (GW_ID_LEN + 300) /* "<target id>|<host_header>|<https>" */

/*
 * Active health of one upstream target. health.c keeps a registry of these
 * keyed like a worker's per-target state ("<target id>|<host_header>|
 * <https>", so a target whose URL changes starts afresh) and never frees an
 * entry while the process runs: the distinct targets bound their number, and
 * a snapshot's target may point at its entry for as long as the snapshot
 * lives, whatever the health thread does meanwhile.
 *
 *   | member               | written by          | read by                  |
 *   |----------------------|---------------------|--------------------------|
 *   | down                 | health thread       | workers (relaxed load)   |
 *   | probes_ok, _failed   | health thread       | status thread            |
 *   | successes .. seen    | health thread       | health thread            |
 *   | key, hnext           | gw_health_entry_for, under the registry lock   |
 */
typedef struct gw_health_entry {
  atomic_bool down; /* held out by active checks */
  _Atomic uint64_t probes_ok, probes_failed;
  int successes, failures; /* consecutive probe results */
  int64_t next_due;        /* ms (monotonic) of the next probe; 0: at once */
  bool probing;            /* a probe is in flight */
  uint64_t seen;           /* the last probe list that named this entry */
  struct gw_health_entry *hnext;
  char key[GW_TKEY_LEN];
} gw_health_entry_t;

typedef struct gw_target {
  char id[GW_ID_LEN + 1];
  char host[256];        /* as in the URL (names, IPv4, IPv6 without []) */
  char host_header[280]; /* Host sent upstream: host[:port] as in the URL */
  char base_path[1024];  /* the URL's path without a trailing '/', or "" */
  uint16_t port;
  bool https;
  int weight;
  struct sockaddr_storage addr;
  socklen_t addrlen;
  bool resolved;
  /* passive health, copied from the route so that a failure needs only the
   * target: passive_failures consecutive failures (0: never) take the target
   * out for passive_cooldown_ms, per worker */
  int passive_failures, passive_cooldown_ms;
  gw_health_entry_t *health; /* the registry entry; NULL: no active checks */
} gw_target_t;

/* True when active health checks hold t out of the rotation (workers: one
 * relaxed load; a change seen a little late costs a request, no more). */
static inline bool gw_target_down(const gw_target_t *t) {
  return t->health && atomic_load_explicit(&t->health->down, memory_order_relaxed);
}

typedef struct gw_route {
  char api_id[GW_ID_LEN + 1];
  char slug[64];
  uint32_t api_no;          /* gw_policy_api_no: the subscription table's key */
  bool auth_key;            /* auth_mode "key" (else "none": no key, no limits) */
  char key_query_param[65]; /* "" unless the API accepts the key in the query */
  char **hosts;             /* lowercase; "*.example.com" wildcards; none = any host */
  int nhosts;
  char *prefix; /* normalised path prefix, "/" matches everything */
  size_t prefix_len;
  unsigned methods; /* bit (1 << gw_method_t); 0 = any */
  bool strip_prefix;
  int connect_ms, read_ms, write_ms, retries;
  int64_t max_body;
  /* active health checks (NULL path: off) and passive health */
  char *hc_path;
  int hc_interval_ms, hc_timeout_ms, healthy_threshold, unhealthy_threshold;
  int passive_failures, passive_cooldown_ms;
  gw_target_t *targets;
  int ntargets;
  int total_weight;
} gw_route_t;

typedef struct gw_snapshot {
  uint64_t gen;
  gw_route_t *routes; /* sorted: longest prefix first, then host-specific */
  int nroutes;
} gw_snapshot_t;

/* Build a snapshot from the store (config thread only). */
struct tg_store;
int gw_snapshot_load(struct tg_store *store, gw_policy_t *pol, uint64_t gen, gw_snapshot_t **out,
                     char *err, size_t errlen);
void gw_snapshot_free(gw_snapshot_t *snap);

/*
 * Normalise a request path for routing (RFC 3986 6.2.2): decode %XX of
 * unreserved characters, upper-case other escapes, and remove dot segments
 * (5.2.4). An encoded slash (%2F) stays encoded, so it can never create a
 * segment, and a path that climbs above the root is refused: "/a/../admin"
 * becomes "/admin", "/%2e%2e/x" and "/../x" are errors. out holds at least
 * len + 1 bytes. Returns the new length, or -1 for a path to refuse (400).
 */
long gw_path_normalise(const char *path, size_t len, char *out);

/* The route for host (may be NULL), normalised path and method, or NULL. */
const gw_route_t *gw_route_match(const gw_snapshot_t *snap, const char *host, size_t host_len,
                                 const char *path, size_t path_len, gw_method_t method,
                                 bool *method_mismatch);

/* Process-wide counters, summed over workers for /metrics. */
#define GW_LAT_BUCKETS 15 /* OpenTelemetry HTTP buckets, seconds */
typedef struct gw_stats {
  _Atomic uint64_t requests[6];       /* by status class 0 (none) .. 5 */
  _Atomic uint64_t gateway_errors[8]; /* 400,404,405,408,413,414,431,5xx gateway-made */
  _Atomic uint64_t upstream_errors;   /* connect/reset/timeouts/bad responses */
  _Atomic uint64_t bytes_in, bytes_out;
  _Atomic uint64_t latency_bucket[GW_LAT_BUCKETS + 1];
  _Atomic uint64_t latency_sum_us;
  _Atomic uint64_t connections_open;
  _Atomic uint64_t connections_total;
  _Atomic uint64_t ring_sends, ring_calls; /* upstream sends through io_uring, and its calls */
} gw_stats_t;

/* A worker's usage table and its hand-over to the metering thread (meter.h). */
typedef struct gw_meter_slot {
  gw_meter_tab_t *cur;             /* the worker's; the metering thread's once it exited */
  _Atomic(gw_meter_tab_t *) out;   /* handed over, not yet taken */
  _Atomic(gw_meter_tab_t *) spare; /* an empty table given back */
  atomic_bool want;                /* the metering thread asks for cur */
  atomic_bool exited;              /* the worker has returned */
} gw_meter_slot_t;

/* Failed key attempts per client address: a fixed table of counters
 * (minute << 32 | count), shared by the workers; collisions only make it
 * stricter. */
#define GW_AUTHFAIL_SLOTS 65536

/* Identity headers the upstream receives (empty name: not sent). */
typedef struct gw_ident_headers {
  char app[128], developer[128], plan[128], key_prefix[128];
} gw_ident_headers_t;

enum { GW_RLH_BOTH, GW_RLH_DRAFT, GW_RLH_LEGACY, GW_RLH_OFF };

typedef struct gw_server {
  const tg_config_t *cfg;
  int nworkers;
  struct gw_worker *workers[GW_MAX_WORKERS];
  _Atomic(gw_snapshot_t *) current;
  atomic_bool stopping;
  atomic_int live_connections;
  gw_limits_t limits;
  int header_timeout_ms, body_timeout_ms, idle_timeout_ms;
  int max_connections, pool_size;
  bool trust_forwarded;
  struct sockaddr_storage listen_addr;
  socklen_t listen_addrlen;
  uint16_t port;                 /* bound port */
  struct ssl_ctx_st *tls_server; /* NULL: no TLS listener */
  struct ssl_ctx_st *tls_client; /* for https:// targets; NULL if no CA store */
  struct sockaddr_storage tls_addr;
  socklen_t tls_addrlen;
  uint16_t tls_port;
  int access_log_fd; /* -1: off */
  gw_stats_t stats;
  int64_t started_ms;
  atomic_bool ready; /* a snapshot is loaded */
  /* issue 5: keys, limits, metering */
  gw_policy_t *policy;
  bool metering;     /* config "metering" */
  bool io_uring;     /* config "gateway_io_uring" */
  _Atomic int rings; /* workers that run a ring (gateway/ring.h), for /metrics */
  gw_meter_slot_t meter[GW_MAX_WORKERS];
  char key_header[128];
  bool strip_key;
  gw_ident_headers_t ident;       /* lower case, to match requests */
  gw_ident_headers_t ident_names; /* as configured, to send */
  tg_secret_t secret;             /* keys' digests */
  int ratelimit_headers;          /* GW_RLH_* */
  int64_t auth_failures;          /* per address and minute; 0: no limit */
  _Atomic uint64_t authfail[GW_AUTHFAIL_SLOTS];
  uint64_t authfail_seed;
  int64_t clock_offset_ms;           /* tests: TOLLGATE_TEST_NOW moves the wall clock */
  _Atomic uint64_t rejected[GW_R_N]; /* by reason, for /metrics */
} gw_server_t;

/* The gateway's wall clock (ms): real time, moved by TOLLGATE_TEST_NOW. */
int64_t gw_wall_ms(const gw_server_t *srv);

/* Name the calling thread (top -H, perf) and, for a thread that is not a
 * worker (metering, config, health, status), make it SCHED_BATCH: it keeps
 * its fair share of the CPU, but its wake-ups no longer preempt a worker
 * on the same core. Any thread may do this; where refused, nothing
 * changes. */
static inline void gw_thread_role(const char *name, bool background) {
  pthread_setname_np(pthread_self(), name);
  if (background) {
    struct sched_param sp = {0};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
  }
}

/* workers (worker.c) */
int gw_workers_start(gw_server_t *srv, char *err, size_t errlen);
void gw_workers_stop(gw_server_t *srv, int64_t drain_ms);
/* Sum of every worker's counters (for /metrics). */
void gw_stats_sum(gw_server_t *srv, gw_stats_t *out);
/* Lowest snapshot generation any worker still holds. */
uint64_t gw_workers_min_gen(gw_server_t *srv);
/* Lowest policy epoch any worker may still be reading under (policy.h). */
uint64_t gw_workers_min_epoch(void *srv);
/* Wake every worker's loop (eventfd). */
void gw_workers_wake(gw_server_t *srv);

/* active health checks (health.c) */

/*
 * The registry entry for target t (keyed as above), created when it is
 * new. Any thread (snapshot loads); takes the registry lock. NULL when
 * out of memory. The entry lives as long as the process.
 */
gw_health_entry_t *gw_health_entry_for(const gw_target_t *t);

/*
 * Hand the health thread the probes of `snap` (borrowed: read here, never
 * kept): one per target of every route with a healthcheck_path. Called by
 * whoever publishes the snapshot, while it is certainly alive; may be
 * called before gw_health_start (the thread then starts with it). 0, or -1
 * when out of memory (the health thread keeps its previous list).
 */
int gw_health_publish(const gw_snapshot_t *snap);

/* Start / stop the health thread (probes use srv->tls_client for https). */
int gw_health_start(gw_server_t *srv, char *err, size_t errlen);
void gw_health_stop(void);

/*
 * Prometheus lines for the targets being probed (tollgate_upstream_target_up
 * and tollgate_upstream_health_checks_total), written into out (cap bytes,
 * whole lines only). Returns the bytes written. Status thread.
 */
size_t gw_health_metrics(char *out, size_t cap);

/*
 * The final status code of the HTTP/1.x response at the start of buf
 * (RFC 9112 4: "HTTP/1.x SSS ..."), skipping interim 1xx heads: > 0 the
 * status, 0 when more bytes are needed, -1 when it is not an HTTP/1.x
 * response (or a 101, which a GET without Upgrade must not get).
 */
int gw_health_parse_status(const char *buf, size_t len);

/* status endpoint (status.c) */
int gw_status_start(gw_server_t *srv, const struct sockaddr *addr, socklen_t len, char *err,
                    size_t errlen);
void gw_status_stop(void);
/* The port status_listen is bound to (useful with port 0). */
int gw_status_port(void);

#endif
