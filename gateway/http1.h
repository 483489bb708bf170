/*
 * http1.h - strict HTTP/1.1 message framing for the gateway (RFC 9110,
 * RFC 9112): request heads from clients, response heads from upstreams,
 * and the chunked transfer coding in both directions.
 *
 * Why our own parser and not llhttp: Debian's llhttp 8.1.0 accepts
 * obs-fold, whitespace before the colon, empty header names, HTTP/0.9 and
 * HTTP/2.0 request lines (tests/unit/llhttp records each), and enforces no
 * size, Host or target rules, so every byte would have to be checked again
 * around it. A single strict pass is both simpler and faster
 * (bench/http1_parse.c measures it against llhttp on the same requests).
 *
 * Zero-copy: every pointer in a parsed head points into the caller's
 * buffer, which must stay unchanged while the head is used. Nothing here
 * allocates.
 *
 * Request rules (each violation is an error with a status and a reason):
 *
 *   | rule                                                     | status |
 *   |----------------------------------------------------------|--------|
 *   | request line longer than max_line                        | 414    |
 *   | head longer than max_head, or more than max_headers      | 431    |
 *   | lines end in CRLF only (bare LF or bare CR)              | 400    |
 *   | NUL or other CTL bytes (HTAB allowed in values)          | 400    |
 *   | method is a token; CONNECT, TRACE and unknown methods    | 501    |
 *   | target is origin-form: "/" + RFC 3986 path [ "?" query ];|        |
 *   |   no "#", no space, valid %XX escapes                    | 400    |
 *   | version "HTTP/1.1" or "HTTP/1.0"; other 1.x/2.x/3.x      | 505    |
 *   |   anything else (incl. HTTP/0.9's missing version)       | 400    |
 *   | header name is a token followed directly by ":"          | 400    |
 *   |   (empty name, whitespace before the colon)              | 400    |
 *   | obs-fold (a line starting with SP or HTAB)               | 400    |
 *   | Host: exactly one in HTTP/1.1, at most one in 1.0;       |        |
 *   |   a valid host[:port]                                    | 400    |
 *   | Content-Length: digits only, one header, one value,      |        |
 *   |   at most 2^62                                           | 400    |
 *   | Content-Length and Transfer-Encoding together            | 400    |
 *   | Transfer-Encoding other than exactly "chunked"           | 501    |
 *   | Transfer-Encoding in an HTTP/1.0 request                 | 400    |
 *   | POST/PUT/PATCH with neither CL nor TE                    | 411    |
 *   | Expect other than "100-continue"                         | 417    |
 */
#ifndef GW_HTTP1_H
#define GW_HTTP1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GW_MAX_HEADERS 128 /* hard ceiling; the configured limit is lower */

typedef enum gw_method {
  GW_GET,
  GW_HEAD,
  GW_POST,
  GW_PUT,
  GW_PATCH,
  GW_DELETE,
  GW_OPTIONS,
} gw_method_t;

/*
 * The header names the gateway itself acts on. The parser recognises them
 * once, while it has the name in cache (gw_header_t.id), so the checks
 * that follow (hop-by-hop lists, our own headers, the key) compare a
 * number instead of a name: a request went through ~90 name comparisons.
 */
typedef enum gw_header_id {
  GW_H_OTHER = 0, /* any other name */
  GW_H_HOST,
  GW_H_CONNECTION,
  GW_H_KEEP_ALIVE,
  GW_H_PROXY_CONNECTION,
  GW_H_TE,
  GW_H_TRAILER,
  GW_H_TRANSFER_ENCODING,
  GW_H_UPGRADE,
  GW_H_PROXY_AUTHORIZATION,
  GW_H_EXPECT,
  GW_H_CONTENT_LENGTH,
  GW_H_X_REQUEST_ID,
  GW_H_TRACEPARENT,
  GW_H_VIA,
  GW_H_AUTHORIZATION,
  GW_H_X_FORWARDED_FOR,
  GW_H_X_FORWARDED_PROTO,
  GW_H_X_FORWARDED_HOST,
  GW_H_FORWARDED,
} gw_header_id_t;

typedef struct gw_header {
  const char *name;  /* as sent (case kept); compare case-insensitively */
  const char *value; /* OWS trimmed on both sides */
  uint16_t name_len;
  uint8_t id; /* gw_header_id_t */
  uint32_t value_len;
} gw_header_t;

typedef struct gw_limits {
  size_t max_line;      /* request line incl. CRLF (414 above) */
  size_t max_head;      /* whole head incl. the final CRLF (431 above) */
  unsigned max_headers; /* header fields (431 above); <= GW_MAX_HEADERS */
} gw_limits_t;

/* Connection-level facts derived from the headers. */
enum {
  GW_CONN_CLOSE = 1 << 0,      /* "Connection: close" (or 1.0 without keep-alive) */
  GW_CONN_KEEP_ALIVE = 1 << 1, /* "Connection: keep-alive" */
  GW_CONN_UPGRADE = 1 << 2,    /* "Connection: upgrade" */
  /* Connection lists an option other than keep-alive and upgrade (whose
   * fields are hop-by-hop anyway): a field of that name, if any, is
   * hop-by-hop too (RFC 9110 7.6.1). Without this flag nothing needs
   * looking up in the Connection lists. */
  GW_CONN_NAMES = 1 << 3,
};

typedef struct gw_request_head {
  gw_method_t method;
  const char *method_str;
  uint16_t method_len;
  const char *target; /* raw origin-form target: path [ "?" query ] */
  uint32_t target_len;
  uint32_t path_len; /* target[0..path_len) is the path */
  const char *query; /* after "?", or NULL */
  uint32_t query_len;
  int minor; /* HTTP/1.<minor>: 0 or 1 */
  gw_header_t headers[GW_MAX_HEADERS];
  unsigned nheaders;
  int host;               /* index into headers of Host, or -1 (1.0 only) */
  int64_t content_length; /* -1 when absent */
  bool chunked;           /* Transfer-Encoding: chunked */
  bool expect_continue;
  unsigned conn_flags; /* GW_CONN_* */
  bool keep_alive;     /* the connection may carry another request after this one */
  size_t head_len;     /* bytes of the head, incl. the empty line */
} gw_request_head_t;

/* Result of a parse call. */
typedef struct gw_parse_error {
  int status;         /* 400, 411, 414, 417, 431, 501 or 505 */
  const char *reason; /* static English sentence, for the problem detail */
} gw_parse_error_t;

/*
 * Parse a request head from buf[0..len).
 * Returns  1: complete and valid; *out filled, out->head_len bytes used.
 *          0: incomplete: read more (no limit is exceeded so far: a line or
 *             head that can no longer fit its limit is reported at once).
 *         -1: invalid; *err says why. The connection cannot be trusted
 *             after this: answer err->status and close it.
 */
int gw_http1_parse_request(const char *buf, size_t len, const gw_limits_t *lim,
                           gw_request_head_t *out, gw_parse_error_t *err);

/*
 * Point a parsed head at a copy of its bytes: h was parsed from `from`,
 * the same head_len bytes are now at `to`. (The gateway parses in its read
 * buffer, then keeps the head in a buffer of its own: parsing once and
 * moving the pointers costs less than parsing the copy again.)
 */
void gw_http1_request_rebase(gw_request_head_t *h, const char *from, const char *to);

typedef struct gw_response_head {
  int status; /* 100..599 */
  int minor;  /* HTTP/1.<minor> */
  const char *reason;
  uint32_t reason_len;
  gw_header_t headers[GW_MAX_HEADERS];
  unsigned nheaders;
  int64_t content_length; /* -1 when absent */
  bool chunked;
  unsigned conn_flags; /* GW_CONN_* */
  bool keep_alive;     /* the upstream connection may be reused */
  size_t head_len;
} gw_response_head_t;

/*
 * Parse an upstream's response head. Same return convention; an invalid
 * upstream response becomes a 502 for the client. Upstreams are trusted a
 * little more than clients (obs-text in values, a missing reason phrase),
 * but framing is just as strict: CL+TE, bad or duplicate CL, bare LF and
 * obs-fold are errors, since they would desynchronise a pooled connection.
 */
int gw_http1_parse_response(const char *buf, size_t len, const gw_limits_t *lim,
                            gw_response_head_t *out, gw_parse_error_t *err);

/*
 * Whether a response to `method` with `status` has a body at all
 * (RFC 9112 section 6.3: HEAD, 1xx, 204, 304 have none).
 */
bool gw_http1_response_has_body(gw_method_t method, int status);

/*
 * Chunked transfer coding decoder (RFC 9112 section 7.1), incremental.
 * Chunk extensions are parsed and dropped; trailer fields are parsed,
 * checked like header fields and dropped (never forwarded: a Content-Length
 * in a trailer must not reach anyone). Sizes: hex digits only, at most 15
 * digits (no overflow), no leading/trailing spaces.
 */
typedef struct gw_chunked {
  int state;          /* internal */
  uint64_t remaining; /* data bytes left in the current chunk */
  unsigned digits;
  size_t line_len; /* bytes of the current size/trailer line */
  unsigned trailers;
} gw_chunked_t;

void gw_chunked_init(gw_chunked_t *c);

/*
 * Consume in[0..len). Returns the number of bytes consumed (>= 0), or -1
 * with *err set (status 400) on malformed framing. When a data span is
 * found, *data and *data_len point to it inside `in` and the call returns
 * right after it, so the caller forwards each span and calls again with
 * the rest. *done is set when the terminating chunk and trailers were
 * consumed; bytes after that belong to the next message.
 */
long gw_chunked_decode(gw_chunked_t *c, const char *in, size_t len, const char **data,
                       size_t *data_len, bool *done, gw_parse_error_t *err);

/* Case-insensitive comparison of a header name with a lowercase name (for
 * names only known at run time, such as the configured key header: the
 * fixed ones are compared by gw_header_t.id). */
bool gw_header_is(const gw_header_t *h, const char *lower_name);

/* The index of the first header with this id, or -1. */
int gw_header_find(const gw_header_t *hs, unsigned n, gw_header_id_t id);

#endif
