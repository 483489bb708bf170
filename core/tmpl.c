/*
 * tmpl.c - see tmpl.h.
 *
 * A template compiles into a flat array of ops. A section owns the ops
 * after it up to its `end`, so rendering is a walk over index ranges that
 * recurses once per open section or partial, with the context stack as a
 * chain of frames on the C stack: no allocation but the output's growth.
 *
 *   | op       | a                              | b                          |
 *   | -------- | ------------------------------ | -------------------------- |
 *   | TEXT     | offset of the text in src      | its length                 |
 *   | VAR, URL | offset of the path in the pool | -                          |
 *   | SECTION, | offset of the path in the pool | end: the index of the op   |
 *   | INVERTED |                                | after the body             |
 *   | PARTIAL  | offset of the name in the pool | index of the template in   |
 *   |          |                                | the set (after load)       |
 *
 * A path in the pool is nseg segments, each one length byte, the bytes and
 * a NUL (json_object_get wants C strings); "." is no segment at all.
 *
 * Every writer measures what it appends, reserves that much (the one place
 * that allocates) and then writes. The output gets its NUL only at the
 * end of a render; a failed render puts len back.
 */
#include "core/tmpl.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/util.h"

#define OUT_FIRST_CAP 4096

enum op_kind { OP_TEXT, OP_VAR, OP_URL, OP_SECTION, OP_INVERTED, OP_PARTIAL };

typedef struct op {
  uint8_t kind;
  uint8_t nseg; /* path segments; 0 is "." */
  uint32_t pos; /* source offset of the tag, for render-time errors */
  uint32_t a, b;
} op_t;

typedef struct tmpl {
  char *name; /* the template's name */
  char *file; /* what messages call it: "login.html", or the name */
  char *src;  /* the source, NUL-terminated; TEXT ops point into it */
  size_t src_len;
  op_t *ops;
  uint32_t nops, cap_ops;
  char *pool; /* paths and partial names */
  uint32_t pool_len, pool_cap;
} tmpl_t;

struct tg_tmpl_set {
  tmpl_t *t; /* sorted by name */
  size_t n;
};

_Static_assert(TG_TMPL_FILE_MAX < UINT32_MAX / 4, "offsets, op and pool sizes fit 32 bits");
_Static_assert(TG_TMPL_NAME_MAX < 256, "a path segment's length fits its byte");

/* ---- the output buffer ------------------------------------------------- */

void tg_tmpl_out_init(tg_tmpl_out_t *o, size_t max) {
  memset(o, 0, sizeof(*o));
  if (max == 0)
    max = TG_TMPL_OUT_MAX_DEFAULT;
  o->max = max > TG_TMPL_OUT_MAX_LIMIT ? TG_TMPL_OUT_MAX_LIMIT : max;
}

void tg_tmpl_out_reset(tg_tmpl_out_t *o) {
  o->len = 0;
  if (o->data)
    o->data[0] = '\0';
}

void tg_tmpl_out_dispose(tg_tmpl_out_t *o) {
  if (!o)
    return;
  size_t max = o->max;
  free(o->data);
  memset(o, 0, sizeof(*o));
  o->max = max;
}

/* Capacity for `add` more bytes and a NUL, doubling up to max + 1.
 * TG_ETOOBIG past max, TG_ENOMEM; either way nothing changes. */
static int out_grow(tg_tmpl_out_t *o, size_t add) {
  if (add > o->max - o->len)
    return TG_ETOOBIG;
  size_t need = o->len + add + 1; /* <= max + 1 <= TG_TMPL_OUT_MAX_LIMIT + 1 */
  size_t cap = o->cap ? o->cap : OUT_FIRST_CAP;
  if (cap > o->max + 1)
    cap = o->max + 1;
  while (cap < need)
    cap = cap > (o->max + 1) / 2 ? o->max + 1 : cap * 2;
  char *d = realloc(o->data, cap);
  if (!d)
    return TG_ENOMEM;
  o->data = d;
  o->cap = cap;
  return TG_OK;
}

/* cap <= max + 1, so room under cap is also room under max. */
static inline int out_reserve(tg_tmpl_out_t *o, size_t add) {
  return o->cap - o->len > add ? TG_OK : out_grow(o, add);
}

static inline int out_put(tg_tmpl_out_t *o, const char *s, size_t n) {
  int rc = out_reserve(o, n);
  if (rc)
    return rc;
  memcpy(o->data + o->len, s, n);
  o->len += n;
  return TG_OK;
}

/* ---- escaping ---------------------------------------------------------- */

/* What each ASCII byte becomes in HTML; NULL: itself. NUL is U+FFFD. */
static const char *const html_entity[128] = {
    ['\0'] = "\xEF\xBF\xBD", ['&'] = "&amp;",  ['<'] = "&lt;",
    ['>'] = "&gt;",          ['"'] = "&quot;", ['\''] = "&#39;",
};
static const unsigned char html_entity_len[128] = {
    ['\0'] = 3, ['&'] = 5, ['<'] = 4, ['>'] = 4, ['"'] = 6, ['\''] = 5,
};
static const char replacement[3] = {'\xEF', '\xBF', '\xBD'}; /* U+FFFD */

/* Append s[0..n) HTML-escaped (tmpl.h's table). */
static int put_html(tg_tmpl_out_t *o, const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  size_t need = 0;
  for (size_t i = 0; i < n;) {
    if (u[i] < 0x80) {
      need += html_entity_len[u[i]] ? html_entity_len[u[i]] : 1;
      i++;
      continue;
    }
    size_t k = tg_utf8_seq_len(u + i, n - i);
    need += k ? k : sizeof(replacement);
    i += k ? k : 1;
  }
  if (need == n) /* nothing grows, so nothing changes */
    return out_put(o, s, n);
  int rc = out_reserve(o, need);
  if (rc)
    return rc;
  char *w = o->data + o->len;
  size_t run = 0; /* start of the bytes copied as they are */
  for (size_t i = 0; i < n;) {
    const char *rep;
    size_t rep_len;
    if (u[i] < 0x80) {
      if (!html_entity[u[i]]) {
        i++;
        continue;
      }
      rep = html_entity[u[i]];
      rep_len = html_entity_len[u[i]];
    } else {
      size_t k = tg_utf8_seq_len(u + i, n - i);
      if (k) {
        i += k;
        continue;
      }
      rep = replacement;
      rep_len = sizeof(replacement);
    }
    memcpy(w, s + run, i - run);
    w += i - run;
    memcpy(w, rep, rep_len);
    w += rep_len;
    run = ++i;
  }
  memcpy(w, s + run, n - run);
  o->len += need;
  return TG_OK;
}

/* RFC 3986 section 2.3. Not isalnum: that one follows the locale. */
static inline bool unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

/* Append s[0..n) percent-encoded (RFC 3986 sections 2.1, 2.5). */
static int put_url(tg_tmpl_out_t *o, const char *s, size_t n) {
  static const char hex[] = "0123456789ABCDEF";
  const unsigned char *u = (const unsigned char *)s;
  size_t need = n;
  for (size_t i = 0; i < n; i++)
    need += unreserved(u[i]) ? 0 : 2;
  int rc = out_reserve(o, need);
  if (rc)
    return rc;
  char *w = o->data + o->len;
  for (size_t i = 0; i < n; i++) {
    if (unreserved(u[i])) {
      *w++ = (char)u[i];
    } else {
      *w++ = '%';
      *w++ = hex[u[i] >> 4];
      *w++ = hex[u[i] & 15];
    }
  }
  o->len += need;
  return TG_OK;
}

/*
 * s[0..n) is what "%.6f" made: [-]DIGITS POINT DDDDDD, POINT being the
 * locale's decimal point (maybe several bytes). Make POINT '.', drop
 * trailing zeros and a bare point, make "-0" "0". Returns the new length.
 */
static size_t real_normalise(char *s, size_t n) {
  size_t i = s[0] == '-' ? 1 : 0;
  while (i < n && s[i] >= '0' && s[i] <= '9')
    i++;
  if (n < i + 1 + 6) /* NEVER: no point and six decimals */
    return n;
  memmove(s + i + 1, s + n - 6, 6);
  s[i] = '.';
  n = i + 7;
  while (s[n - 1] == '0')
    n--;
  if (s[n - 1] == '.')
    n--;
  if (n == 2 && s[0] == '-' && s[1] == '0') {
    s[0] = '0';
    n = 1;
  }
  s[n] = '\0';
  return n;
}

/*
 * Append value v as tmpl.h's table says, HTML-escaped or URL-encoded.
 * Out of line: its number buffer must not sit in every frame of run().
 */
__attribute__((noinline)) static int put_value(tg_tmpl_out_t *o, const json_t *v, bool url) {
  char tmp[330]; /* "%.6f" of -DBL_MAX: 1 + 309 + 1 + 6 */
  const char *s = tmp;
  size_t n;
  int k;
  if (!v)
    return TG_OK;
  switch (json_typeof(v)) {
  case JSON_STRING:
    s = json_string_value(v);
    n = json_string_length(v);
    break;
  case JSON_INTEGER:
    k = snprintf(tmp, sizeof(tmp), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    n = k > 0 ? (size_t)k : 0;
    break;
  case JSON_REAL:
    k = snprintf(tmp, sizeof(tmp), "%.6f", json_real_value(v));
    if (k <= 0 || (size_t)k >= sizeof(tmp)) /* NEVER: jansson holds finite doubles */
      return TG_OK;
    n = real_normalise(tmp, (size_t)k);
    break;
  case JSON_TRUE: s = "true", n = 4; break;
  case JSON_FALSE: s = "false", n = 5; break;
  default: return TG_OK; /* null, objects and arrays render as nothing */
  }
  return url ? put_url(o, s, n) : put_html(o, s, n);
}

/* ---- rendering --------------------------------------------------------- */

/* One context of the stack: the innermost is the chain's head. */
typedef struct frame {
  const json_t *v; /* borrowed; may be NULL */
  const struct frame *up;
} frame_t;

typedef struct render {
  const tg_tmpl_set_t *set;
  tg_tmpl_out_t *out;
  size_t work;  /* steps left before TG_ETOOBIG */
  int partials; /* partials open */
  /* where and why it failed (the innermost failure) */
  const tmpl_t *err_t;
  uint32_t err_pos;
  enum { WHY_OTHER, WHY_OUTPUT, WHY_WORK, WHY_PARTIALS } why;
} render_t;

static int render_fail(render_t *r, int code, const tmpl_t *t, const op_t *op, int why) {
  if (!r->err_t) {
    r->err_t = t;
    r->err_pos = op->pos;
    r->why = why;
  }
  return code;
}

/* The value at op's path from the context stack, or NULL. The first
 * segment is searched outwards, the others only inside (Mustache). */
static const json_t *lookup(const frame_t *ctx, const tmpl_t *t, const op_t *op) {
  if (op->nseg == 0) /* "." (and maybe no pool at all) */
    return ctx->v;
  const char *path = t->pool + op->a;
  unsigned nseg = op->nseg;
  const json_t *v = NULL;
  for (const frame_t *f = ctx; f && !v; f = f->up)
    if (json_is_object(f->v))
      v = json_object_get(f->v, path + 1);
  for (unsigned k = 1; k < nseg && v; k++) {
    path += (unsigned char)path[0] + 2;
    v = json_is_object(v) ? json_object_get(v, path + 1) : NULL;
  }
  return v;
}

static bool truthy(const json_t *v) {
  if (!v)
    return false;
  switch (json_typeof(v)) {
  case JSON_OBJECT: return true;
  case JSON_ARRAY: return json_array_size(v) > 0;
  case JSON_STRING: return json_string_length(v) > 0;
  case JSON_INTEGER: return json_integer_value(v) != 0;
  case JSON_REAL: return json_real_value(v) != 0.0;
  case JSON_TRUE: return true;
  default: return false;
  }
}

/* Run ops [i, end) of t with context stack ctx. */
static int run(render_t *r, const tmpl_t *t, uint32_t i, uint32_t end, const frame_t *ctx) {
  int rc = TG_OK;
  while (i < end) {
    const op_t *op = &t->ops[i];
    if (r->work == 0)
      return render_fail(r, TG_ETOOBIG, t, op, WHY_WORK);
    r->work--;
    switch (op->kind) {
    case OP_TEXT:
      rc = out_put(r->out, t->src + op->a, op->b);
      i++;
      break;
    case OP_VAR:
    case OP_URL:
      rc = put_value(r->out, lookup(ctx, t, op), op->kind == OP_URL);
      i++;
      break;
    case OP_SECTION: {
      const json_t *v = lookup(ctx, t, op);
      frame_t f = {v, ctx};
      if (json_is_array(v)) {
        size_t n = json_array_size(v);
        for (size_t k = 0; k < n && rc == TG_OK; k++) {
          if (r->work == 0)
            return render_fail(r, TG_ETOOBIG, t, op, WHY_WORK);
          r->work--;
          f.v = json_array_get(v, k);
          rc = run(r, t, i + 1, op->b, &f);
        }
      } else if (truthy(v)) {
        rc = run(r, t, i + 1, op->b, &f);
      }
      i = op->b;
      break;
    }
    case OP_INVERTED:
      if (!truthy(lookup(ctx, t, op)))
        rc = run(r, t, i + 1, op->b, ctx);
      i = op->b;
      break;
    case OP_PARTIAL: {
      if (r->partials == TG_TMPL_PARTIAL_DEPTH_MAX)
        return render_fail(r, TG_EINVAL, t, op, WHY_PARTIALS);
      const tmpl_t *pt = &r->set->t[op->b];
      r->partials++;
      rc = run(r, pt, 0, pt->nops, ctx);
      r->partials--;
      i++;
      break;
    }
    }
    if (rc)
      return render_fail(r, rc, t, op, rc == TG_ETOOBIG ? WHY_OUTPUT : WHY_OTHER);
  }
  return TG_OK;
}

/* 1-based line and column (in characters) of offset pos of s. */
static void line_col(const char *s, size_t pos, unsigned *line, unsigned *col) {
  unsigned l = 1, c = 1;
  for (size_t i = 0; i < pos; i++) {
    if (s[i] == '\n') {
      l++;
      c = 1;
    } else if (((unsigned char)s[i] & 0xC0) != 0x80) {
      c++;
    }
  }
  *line = l;
  *col = c;
}

static int name_cmp(const void *key, const void *elem) {
  return strcmp((const char *)key, ((const tmpl_t *)elem)->name);
}

static const tmpl_t *set_find(const tg_tmpl_set_t *set, const char *name) {
  return bsearch(name, set->t, set->n, sizeof(*set->t), name_cmp);
}

int tg_tmpl_render(const tg_tmpl_set_t *set, const char *name, const json_t *ctx,
                   tg_tmpl_out_t *out, tg_problem_t *p) {
  if (!set || !name || !out)
    return tg_problem_set(p, TG_EINVAL, NULL, "no template set, name or output");
  const tmpl_t *t = set_find(set, name);
  if (!t)
    return tg_problem_set(p, TG_ENOTFOUND, NULL, "no template \"%.*s\"", TG_TMPL_NAME_MAX, name);

  size_t start = out->len;
  render_t r = {.set = set, .out = out, .work = out->max};
  frame_t root = {ctx, NULL};
  int rc = out_reserve(out, 0); /* data is not NULL after a success */
  if (rc == TG_OK)
    rc = run(&r, t, 0, t->nops, &root);
  if (rc == TG_OK) {
    out->data[out->len] = '\0';
    return TG_OK;
  }

  out->len = start;
  if (out->data)
    out->data[start] = '\0';
  if (!r.err_t) /* the first reserve */
    return tg_problem_set(p, rc, NULL, "rendering \"%s\": %s", t->name, tg_strerror(rc));
  char why[96];
  switch (r.why) {
  case WHY_OUTPUT: snprintf(why, sizeof(why), "output over %zu bytes", out->max); break;
  case WHY_WORK:
    snprintf(why, sizeof(why), "more than %zu steps (the output maximum)", out->max);
    break;
  case WHY_PARTIALS:
    snprintf(why, sizeof(why), "partials nested deeper than %d", TG_TMPL_PARTIAL_DEPTH_MAX);
    break;
  default: snprintf(why, sizeof(why), "%s", tg_strerror(rc)); break;
  }
  unsigned line, col;
  line_col(r.err_t->src, r.err_pos, &line, &col);
  return tg_problem_set(p, rc, r.err_t->file, "%s:%u:%u: %s, rendering \"%s\"", r.err_t->file, line,
                        col, why, t->name);
}

/* ---- compiling ---------------------------------------------------------- */

typedef struct open_section {
  uint32_t op;       /* index of the SECTION/INVERTED op */
  uint32_t name_pos; /* the name in the source, for the close tag */
  uint32_t name_len;
} open_section_t;

typedef struct compiler {
  tmpl_t *t;
  const char *s; /* t->src */
  size_t n;
  tg_problem_t *p;
  open_section_t open[TG_TMPL_DEPTH_MAX];
  int depth;
} compiler_t;

/* Record a compile error at source offset pos; returns code. */
__attribute__((format(printf, 4, 5))) static int cerr(compiler_t *c, int code, size_t pos,
                                                      const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  unsigned line, col;
  line_col(c->s, pos, &line, &col);
  return tg_problem_set(c->p, code, c->t->file, "%s:%u:%u: %s", c->t->file, line, col, msg);
}

static int add_op(compiler_t *c, uint8_t kind, size_t pos, uint32_t a, uint32_t b, uint8_t nseg) {
  tmpl_t *t = c->t;
  if (t->nops == t->cap_ops) {
    uint32_t cap = t->cap_ops ? t->cap_ops * 2 : 16;
    op_t *ops = realloc(t->ops, cap * sizeof(*ops));
    if (!ops)
      return tg_problem_set(c->p, TG_ENOMEM, NULL, NULL);
    t->ops = ops;
    t->cap_ops = cap;
  }
  t->ops[t->nops++] = (op_t){.kind = kind, .nseg = nseg, .pos = (uint32_t)pos, .a = a, .b = b};
  return TG_OK;
}

/* Append segment s[0..n) (n < 256) to the pool: length byte, bytes, NUL. */
static int pool_add(compiler_t *c, const char *s, size_t n) {
  tmpl_t *t = c->t;
  if (t->pool_cap - t->pool_len < n + 2) {
    uint32_t cap = t->pool_cap ? t->pool_cap : 256;
    while (cap - t->pool_len < n + 2)
      cap *= 2;
    char *pool = realloc(t->pool, cap);
    if (!pool)
      return tg_problem_set(c->p, TG_ENOMEM, NULL, NULL);
    t->pool = pool;
    t->pool_cap = cap;
  }
  t->pool[t->pool_len] = (char)n;
  memcpy(t->pool + t->pool_len + 1, s, n);
  t->pool[t->pool_len + 1 + n] = '\0';
  t->pool_len += (uint32_t)n + 2;
  return TG_OK;
}

static bool name_char(char ch, bool colon) {
  return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
         ch == '_' || ch == '.' || ch == '-' || (colon && ch == ':');
}

/* True iff s[0..n) is a name: 1..TG_TMPL_NAME_MAX name chars. */
static bool name_ok(const char *s, size_t n, bool colon) {
  if (n == 0 || n > TG_TMPL_NAME_MAX)
    return false;
  for (size_t i = 0; i < n; i++)
    if (!name_char(s[i], colon))
      return false;
  return true;
}

/* Add path s[0..n) ("." or dotted segments) to the pool; *nseg its
 * segments. pos is the tag's, for errors. */
static int add_path(compiler_t *c, size_t pos, const char *s, size_t n, uint8_t *nseg) {
  *nseg = 0;
  if (n == 1 && s[0] == '.')
    return TG_OK;
  for (size_t i = 0; i <= n;) {
    const char *dot = memchr(s + i, '.', n - i);
    size_t j = dot ? (size_t)(dot - s) : n;
    if (j == i)
      return cerr(c, TG_EINVAL, pos, "empty segment in name \"%.*s\"", (int)n, s);
    int rc = pool_add(c, s + i, j - i);
    if (rc)
      return rc;
    (*nseg)++; /* at most TG_TMPL_NAME_MAX / 2 + 1 */
    i = j + 1;
  }
  return TG_OK;
}

static bool space(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/*
 * Compile one tag: its content between {{ and }}, without the leading
 * whitespace, is s[a..b) (not empty); the tag starts at offset tag. Adds
 * the op, or pushes or pops a section.
 */
static int compile_tag(compiler_t *c, size_t tag, size_t a, size_t b) {
  const char *s = c->s;
  char sigil = s[a];
  if (sigil == '!')
    return TG_OK;
  if (sigil == '{' || sigil == '&')
    return cerr(c, TG_EINVAL, tag, "unescaped output ({{{x}}}, {{&x}}) does not exist here");

  bool var = name_char(sigil, false);
  if (!var) {
    if (!strchr("#^/>", sigil))
      return cerr(c, TG_EINVAL, tag, "unknown tag kind \"{{%.*s\"",
                  sigil > ' ' && sigil < 0x7f ? 1 : 0, &s[a]);
    a++;
  }
  while (a < b && space(s[a]))
    a++;
  while (b > a && space(s[b - 1]))
    b--;
  const char *name = s + a;
  size_t len = b - a;
  if (!name_ok(name, len, sigil != '>'))
    return cerr(c, TG_EINVAL, tag, "bad name \"%.*s\": 1..%d of A-Z a-z 0-9 _ . -%s",
                len > 64 ? 64 : (int)len, name, TG_TMPL_NAME_MAX, sigil != '>' ? " :" : "");
  const char *colon = memchr(name, ':', len);
  if (colon && !var)
    return cerr(c, TG_EINVAL, tag, "a filter applies to a variable only");
  if (colon && (colon - name != 3 || memcmp(name, "url", 3) != 0))
    return cerr(c, TG_EINVAL, tag, "unknown filter \"%.*s:\" (there is only url:)",
                (int)(colon - name), name);
  if (colon && (len == 4 || memchr(colon + 1, ':', len - 4)))
    return cerr(c, TG_EINVAL, tag, "bad name after url: \"%.*s\"", (int)len - 4, colon + 1);

  uint32_t at = c->t->pool_len;
  uint8_t nseg = 0;
  int rc;
  switch (sigil) {
  case '#':
  case '^':
    if (c->depth == TG_TMPL_DEPTH_MAX)
      return cerr(c, TG_EINVAL, tag, "sections nested deeper than %d", TG_TMPL_DEPTH_MAX);
    rc = add_path(c, tag, name, len, &nseg);
    if (rc == TG_OK)
      rc = add_op(c, sigil == '#' ? OP_SECTION : OP_INVERTED, tag, at, 0, nseg);
    if (rc == TG_OK)
      c->open[c->depth++] = (open_section_t){
          .op = c->t->nops - 1, .name_pos = (uint32_t)a, .name_len = (uint32_t)len};
    return rc;
  case '/': {
    if (c->depth == 0)
      return cerr(c, TG_EINVAL, tag, "close tag {{/%.*s}} without an open section", (int)len, name);
    const open_section_t *o = &c->open[c->depth - 1];
    if (o->name_len != len || memcmp(s + o->name_pos, name, len) != 0) {
      unsigned line, col;
      line_col(s, c->t->ops[o->op].pos, &line, &col);
      return cerr(c, TG_EINVAL, tag, "close tag {{/%.*s}} does not match {{#%.*s}} of %u:%u",
                  (int)len, name, (int)o->name_len, s + o->name_pos, line, col);
    }
    c->t->ops[o->op].b = c->t->nops;
    c->depth--;
    return TG_OK;
  }
  case '>':
    rc = pool_add(c, name, len);
    return rc ? rc : add_op(c, OP_PARTIAL, tag, at, UINT32_MAX, 0);
  default:
    if (colon) {
      rc = add_path(c, tag, colon + 1, len - 4, &nseg);
      return rc ? rc : add_op(c, OP_URL, tag, at, 0, nseg);
    }
    rc = add_path(c, tag, name, len, &nseg);
    return rc ? rc : add_op(c, OP_VAR, tag, at, 0, nseg);
  }
}

/* Offset of the first "{{" or "}}" (pair[0] == pair[1]) at or after i. */
static size_t find_pair(const char *s, size_t n, size_t i, char ch) {
  const char pair[2] = {ch, ch};
  const char *f = i < n ? memmem(s + i, n - i, pair, 2) : NULL;
  return f ? (size_t)(f - s) : n;
}

/*
 * Standalone (tmpl.h): true when only spaces and tabs stand between the
 * line start and the tag at `tag`, and between its end `after` and the
 * line end; then *ls is the line start and *next where text resumes.
 * The text before the tag starts at `text`, so no tag shares its line on
 * the left unless a standalone one whose line end is consumed already.
 */
static bool standalone(const char *s, size_t n, size_t text, size_t tag, size_t after, size_t *ls,
                       size_t *next) {
  size_t l = tag;
  while (l > text && (s[l - 1] == ' ' || s[l - 1] == '\t'))
    l--;
  if (l > 0 && s[l - 1] != '\n')
    return false;
  size_t r = after;
  while (r < n && (s[r] == ' ' || s[r] == '\t'))
    r++;
  if (r < n && s[r] == '\r' && r + 1 < n && s[r + 1] == '\n')
    r += 2;
  else if (r < n && s[r] == '\n')
    r++;
  else if (r < n)
    return false;
  *ls = l;
  *next = r;
  return true;
}

/* Add the text s[text..end) as an op, when not empty. */
static int add_text(compiler_t *c, size_t text, size_t end) {
  return end > text ? add_op(c, OP_TEXT, text, (uint32_t)text, (uint32_t)(end - text), 0) : TG_OK;
}

static int compile(compiler_t *c) {
  const char *s = c->s;
  size_t n = c->n, text = 0;
  int rc;

  /* The text is copied to the output as it is: it must be clean. */
  for (size_t i = 0; i < n;) {
    size_t k = s[i] ? tg_utf8_seq_len((const unsigned char *)s + i, n - i) : 0;
    if (k == 0)
      return cerr(c, TG_EINVAL, i, s[i] ? "not UTF-8" : "NUL byte");
    i += k;
  }

  for (;;) {
    size_t tag = find_pair(s, n, text, '{');
    if (tag == n)
      break;
    size_t close = find_pair(s, n, tag + 2, '}');
    if (close == n)
      return cerr(c, TG_EINVAL, tag, "tag without }}");
    size_t a = tag + 2, text_end = tag, next = close + 2, ls, after;
    while (a < close && space(s[a]))
      a++;
    if (a == close)
      return cerr(c, TG_EINVAL, tag, "empty tag");
    if (strchr("#^/!>", s[a]) && standalone(s, n, text, tag, next, &ls, &after)) {
      text_end = ls;
      next = after;
    }
    if ((rc = add_text(c, text, text_end)) || (rc = compile_tag(c, tag, a, close)))
      return rc;
    text = next;
  }
  if ((rc = add_text(c, text, n)))
    return rc;
  if (c->depth > 0) {
    const open_section_t *o = &c->open[c->depth - 1];
    return cerr(c, TG_EINVAL, c->t->ops[o->op].pos, "section {{#%.*s}} is not closed",
                (int)o->name_len, s + o->name_pos);
  }
  return TG_OK;
}

static void tmpl_dispose(tmpl_t *t) {
  free(t->name);
  free(t->file);
  free(t->src);
  free(t->ops);
  free(t->pool);
}

/* Compile src[0..len) as template `name` into t (zeroed); `file` names it
 * in messages. t owns what it copied, also on failure: dispose it. */
static int tmpl_compile(tmpl_t *t, const char *name, const char *file, const char *src, size_t len,
                        tg_problem_t *p) {
  if (len > TG_TMPL_FILE_MAX)
    return tg_problem_set(p, TG_ETOOBIG, file, "%s: larger than %zu bytes", file, TG_TMPL_FILE_MAX);
  t->name = strdup(name);
  t->file = strdup(file);
  t->src = malloc(len + 1);
  if (!t->name || !t->file || !t->src)
    return tg_problem_set(p, TG_ENOMEM, NULL, NULL);
  memcpy(t->src, src, len);
  t->src[len] = '\0';
  t->src_len = len;
  compiler_t c = {.t = t, .s = t->src, .n = len, .p = p};
  return compile(&c);
}

static int tmpl_cmp(const void *x, const void *y) {
  return strcmp(((const tmpl_t *)x)->name, ((const tmpl_t *)y)->name);
}

/* Sort the compiled templates, refuse duplicates, resolve partials. */
static int set_finish(tg_tmpl_set_t *set, tg_problem_t *p) {
  qsort(set->t, set->n, sizeof(*set->t), tmpl_cmp);
  for (size_t i = 1; i < set->n; i++)
    if (strcmp(set->t[i - 1].name, set->t[i].name) == 0)
      return tg_problem_set(p, TG_EINVAL, set->t[i].file, "two templates named \"%s\"",
                            set->t[i].name);
  for (size_t i = 0; i < set->n; i++) {
    tmpl_t *t = &set->t[i];
    for (uint32_t k = 0; k < t->nops; k++) {
      op_t *op = &t->ops[k];
      if (op->kind != OP_PARTIAL)
        continue;
      const tmpl_t *target = set_find(set, t->pool + op->a + 1);
      if (!target) {
        compiler_t c = {.t = t, .s = t->src, .n = t->src_len, .p = p};
        return cerr(&c, TG_EINVAL, op->pos, "partial \"%s\" is not in the set",
                    t->pool + op->a + 1);
      }
      op->b = (uint32_t)(target - set->t);
    }
  }
  return TG_OK;
}

/* A new set with room for n templates (none compiled yet), or NULL. */
static tg_tmpl_set_t *set_new(size_t n, tg_problem_t *p) {
  tg_tmpl_set_t *set = calloc(1, sizeof(*set));
  if (set && !(set->t = calloc(n, sizeof(*set->t)))) {
    free(set);
    set = NULL;
  }
  if (!set)
    tg_problem_set(p, TG_ENOMEM, NULL, NULL);
  return set;
}

void tg_tmpl_free(tg_tmpl_set_t *set) {
  if (!set)
    return;
  for (size_t i = 0; i < set->n; i++)
    tmpl_dispose(&set->t[i]);
  free(set->t);
  free(set);
}

tg_tmpl_set_t *tg_tmpl_load_strings(const char *const *names, const char *const *sources, size_t n,
                                    tg_problem_t *p) {
  int rc = TG_ENOMEM;
  tg_tmpl_set_t *set = NULL;
  if (!names || !sources || n == 0) {
    rc = tg_problem_set(p, TG_EINVAL, NULL, "no templates");
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    if (!names[i] || !sources[i] || !name_ok(names[i], strlen(names[i]), false)) {
      rc = tg_problem_set(p, TG_EINVAL, NULL, "template %zu: bad name or no source", i);
      goto out;
    }
  }
  if (!(set = set_new(n, p))) {
    rc = TG_ENOMEM;
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    set->n++; /* disposed on failure, compiled or not */
    rc = tmpl_compile(&set->t[i], names[i], names[i], sources[i], strlen(sources[i]), p);
    if (rc)
      goto out;
  }
  rc = set_finish(set, p);
out:
  if (rc) {
    tg_tmpl_free(set);
    set = NULL;
  }
  return set;
}

/* ---- loading a directory ------------------------------------------------ */

static int str_cmp(const void *x, const void *y) {
  return strcmp(*(char *const *)x, *(char *const *)y);
}

/* The "*.html" names in d, sorted (load errors come in a stable order). */
static int list_html(DIR *d, const char *dir, char ***out, size_t *count, tg_problem_t *p) {
  char **v = NULL;
  size_t n = 0, cap = 0;
  int rc = TG_OK;
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t len = strlen(e->d_name);
    if (e->d_name[0] == '.' || len <= 5 || strcmp(e->d_name + len - 5, ".html") != 0)
      continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 32;
      char **nv = realloc(v, cap * sizeof(*v));
      if (!nv) {
        rc = tg_problem_set(p, TG_ENOMEM, NULL, NULL);
        break;
      }
      v = nv;
    }
    if (!(v[n] = strdup(e->d_name))) {
      rc = tg_problem_set(p, TG_ENOMEM, NULL, NULL);
      break;
    }
    n++;
  }
  if (rc == TG_OK && n == 0)
    rc = tg_problem_set(p, TG_ENOTFOUND, NULL, "%s: no *.html templates", dir);
  if (rc) {
    for (size_t i = 0; i < n; i++)
      free(v[i]);
    free(v);
    v = NULL;
    n = 0;
  } else {
    qsort(v, n, sizeof(*v), str_cmp);
  }
  *out = v;
  *count = n;
  return rc;
}

/* Read file `name` of directory fd dfd into a new buffer (*out, *len):
 * *out NULL and TG_OK when it is not a regular file. */
static int read_file(int dfd, const char *name, char **out, size_t *len, tg_problem_t *p) {
  int rc = TG_EIO;
  char *buf = NULL;
  size_t n = 0;
  struct stat st;
  int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC);
  if (fd < 0 || fstat(fd, &st) != 0) {
    rc = tg_problem_set(p, TG_EIO, name, "%s: cannot open", name);
    goto out;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = TG_OK;
    goto out;
  }
  if ((uintmax_t)st.st_size > TG_TMPL_FILE_MAX) {
    rc = tg_problem_set(p, TG_ETOOBIG, name, "%s: larger than %zu bytes", name, TG_TMPL_FILE_MAX);
    goto out;
  }
  /* One byte more than the limit: a file that grew since fstat shows. */
  size_t cap = (size_t)st.st_size + 1;
  if (!(buf = malloc(cap + 1))) {
    rc = tg_problem_set(p, TG_ENOMEM, NULL, NULL);
    goto out;
  }
  for (;;) {
    ssize_t got = read(fd, buf + n, cap - n);
    if (got < 0) {
      rc = tg_problem_set(p, TG_EIO, name, "%s: cannot read", name);
      goto out;
    }
    if (got == 0)
      break;
    n += (size_t)got;
    if (n == cap) {
      rc = tg_problem_set(p, TG_EIO, name, "%s: changed while read", name);
      goto out;
    }
  }
  rc = TG_OK;
out:
  if (fd >= 0)
    close(fd);
  if (rc) {
    free(buf);
    buf = NULL;
  }
  *out = buf;
  *len = buf ? n : 0;
  return rc;
}

tg_tmpl_set_t *tg_tmpl_load_dir(const char *dir, tg_problem_t *p) {
  int rc = TG_ENOMEM;
  tg_tmpl_set_t *set = NULL;
  char **files = NULL, *src = NULL;
  size_t nfiles = 0;
  DIR *d = dir ? opendir(dir) : NULL;
  if (!d) {
    rc = tg_problem_set(p, TG_EIO, NULL, "%s: cannot open the template directory",
                        dir ? dir : "(null)");
    goto out;
  }
  if ((rc = list_html(d, dir, &files, &nfiles, p)))
    goto out;
  if (!(set = set_new(nfiles, p))) {
    rc = TG_ENOMEM;
    goto out;
  }
  for (size_t i = 0; i < nfiles; i++) {
    size_t len;
    if ((rc = read_file(dirfd(d), files[i], &src, &len, p)))
      goto out;
    if (!src)
      continue;                         /* not a regular file */
    size_t nlen = strlen(files[i]) - 5; /* the name: without ".html" */
    if (!name_ok(files[i], nlen, false)) {
      rc = tg_problem_set(p, TG_EINVAL, files[i],
                          "%s: a template name is 1..%d of A-Z a-z 0-9 _ . -", files[i],
                          TG_TMPL_NAME_MAX);
      goto out;
    }
    char name[TG_TMPL_NAME_MAX + 1];
    memcpy(name, files[i], nlen);
    name[nlen] = '\0';
    set->n++; /* disposed on failure, compiled or not */
    rc = tmpl_compile(&set->t[set->n - 1], name, files[i], src, len, p);
    free(src);
    src = NULL;
    if (rc)
      goto out;
  }
  if (set->n == 0) {
    rc = tg_problem_set(p, TG_ENOTFOUND, NULL, "%s: no *.html templates", dir);
    goto out;
  }
  rc = set_finish(set, p);
out:
  if (d)
    closedir(d);
  for (size_t i = 0; i < nfiles; i++)
    free(files[i]);
  free(files);
  free(src);
  if (rc) {
    tg_tmpl_free(set);
    set = NULL;
  }
  return set;
}
