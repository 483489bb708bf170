/*
 * fuzz_tmpl.c - the portal's template engine over arbitrary templates
 * and contexts.
 *
 * The input is TEMPLATES NUL JSON: the templates are split on 0x1e into
 * at most 8, named t0..t7 (so {{> t1}} works), and the JSON (any value,
 * NUL escapes allowed) is the context; invalid JSON renders with none.
 *
 * A load that fails must say why in a "tK..." problem. A load that works
 * renders t0 after a prefix already in the buffer, twice: the same result
 * each time, a failure leaves exactly the prefix, and the output is
 * well-formed UTF-8 without NUL.
 *
 * The escaping invariant, by difference. t0 is rendered with every string
 * of the context replaced by <x>"' and again by _x_ : both non-empty, so
 * every section goes the same way and the template text in the two
 * outputs is the same; only the values differ. So the two outputs must
 * hold as many < > " and ' as each other (_x_ has none): one more in the
 * first would be a value's byte let through. The same between the real
 * context and a copy whose strings have each of < > " ' made _ (same
 * lengths: same sections). And when no template holds a '<', the <x>"'
 * output holds none either.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/tmpl.h"
#include "core/util.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

#define MAX_TEMPLATES 8
#define OUT_MAX       ((size_t)64 << 10) /* also bounds the work of a render */

/* What map_strings makes of each string. */
enum mapping { TO_MARKER, TO_PLAIN, SCRUBBED };

static json_t *map_string(const json_t *v, enum mapping m) {
  if (m == TO_MARKER)
    return json_string("<x>\"'");
  if (m == TO_PLAIN)
    return json_string("_x_");
  size_t n = json_string_length(v);
  char *s = malloc(n + 1);
  if (!s)
    abort();
  memcpy(s, json_string_value(v), n + 1);
  for (size_t i = 0; i < n; i++)
    if (s[i] == '<' || s[i] == '>' || s[i] == '"' || s[i] == '\'')
      s[i] = '_';
  json_t *c = json_stringn(s, n);
  free(s);
  return c;
}

/* A copy of v with every string mapped (keys kept). New reference. */
static json_t *map_strings(const json_t *v, enum mapping m) {
  json_t *c = NULL;
  const char *key;
  json_t *item;
  size_t i;
  switch (json_typeof(v)) {
  case JSON_STRING: c = map_string(v, m); break;
  case JSON_OBJECT:
    c = json_object();
    json_object_foreach((json_t *)v, key, item) {
      if (json_object_set_new(c, key, map_strings(item, m)))
        abort();
    }
    break;
  case JSON_ARRAY:
    c = json_array();
    json_array_foreach(v, i, item) {
      if (json_array_append_new(c, map_strings(item, m)))
        abort();
    }
    break;
  default: c = json_incref((json_t *)v);
  }
  if (!c)
    abort();
  return c;
}

static size_t count(const char *s, size_t n, char ch) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    k += s[i] == ch;
  return k;
}

/* Render t0 after a 3-byte prefix; check what every render must keep.
 * Returns the result code; out holds prefix + output. */
static int render_checked(const tg_tmpl_set_t *set, const json_t *ctx, tg_tmpl_out_t *out) {
  tg_problem_t p = {0};
  tg_tmpl_out_reset(out);
  if (out->data == NULL && tg_tmpl_render(set, "t0", NULL, out, NULL) == TG_OK)
    tg_tmpl_out_reset(out); /* get memory, whatever t0 is */
  if (out->data == NULL)
    return TG_ENOMEM;
  memcpy(out->data, "PRE", 4);
  out->len = 3;
  int rc = tg_tmpl_render(set, "t0", ctx, out, &p);
  if (rc == TG_OK) {
    if (p.code != TG_OK || out->data[out->len] != '\0' || out->len > out->max)
      abort();
    if (!tg_utf8_valid(out->data, out->len, true)) /* also: no NUL */
      abort();
  } else {
    if (rc != TG_ETOOBIG && rc != TG_EINVAL)
      abort(); /* no ENOMEM here, no ENOTFOUND: t0 exists */
    if (p.code != rc || p.detail[0] == '\0' || out->len != 3 || strcmp(out->data, "PRE") != 0)
      abort();
  }
  return rc;
}

/* Render t0 with contexts x and y, which differ only in strings of the
 * same truth; true when both worked (then a and b hold the outputs). Only
 * the output's length may make one fail and not the other. */
static bool render_pair(const tg_tmpl_set_t *set, const json_t *x, const json_t *y,
                        tg_tmpl_out_t *a, tg_tmpl_out_t *b) {
  int rx = render_checked(set, x, a), ry = render_checked(set, y, b);
  if (rx != ry && rx != TG_ETOOBIG && ry != TG_ETOOBIG)
    abort();
  if (rx != TG_OK || ry != TG_OK)
    return false;
  for (const char *s = "<>\"'"; *s; s++)
    if (count(a->data, a->len, *s) != count(b->data, b->len, *s))
      abort(); /* a value's byte came through unescaped */
  return true;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  const unsigned char *nul = memchr(data, 0, size);
  size_t tlen = nul ? (size_t)(nul - data) : size;

  /* Split the templates. */
  char *srcs[MAX_TEMPLATES] = {0};
  const char *names[MAX_TEMPLATES] = {"t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"};
  size_t n = 0, start = 0;
  bool has_lt = memchr(data, '<', tlen) != NULL;
  for (size_t i = 0; i <= tlen; i++) {
    if (i < tlen && (data[i] != 0x1e || n == MAX_TEMPLATES - 1))
      continue;
    srcs[n] = malloc(i - start + 1);
    if (!srcs[n])
      abort();
    memcpy(srcs[n], data + start, i - start);
    srcs[n][i - start] = '\0';
    n++;
    start = i + 1;
  }

  tg_problem_t p = {0};
  tg_tmpl_set_t *set = tg_tmpl_load_strings(names, (const char *const *)srcs, n, &p);
  if (!set) {
    /* a compile error names its template: "tK:LINE:COL: ..." */
    if (p.code != TG_EINVAL && p.code != TG_ETOOBIG)
      abort();
    if (p.field[0] != 't' || strncmp(p.detail, p.field, strlen(p.field)) != 0 ||
        p.detail[strlen(p.field)] != ':')
      abort();
    goto out;
  }

  json_t *ctx = NULL;
  if (nul)
    ctx =
        json_loadb((const char *)nul + 1, size - tlen - 1, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);

  tg_tmpl_out_t a, b;
  tg_tmpl_out_init(&a, OUT_MAX);
  tg_tmpl_out_init(&b, OUT_MAX);

  /* The real context, twice: the same. */
  int rc = render_checked(set, ctx, &a);
  if (render_checked(set, ctx, &b) != rc || a.len != b.len || memcmp(a.data, b.data, a.len) != 0)
    abort();

  /* The escaping invariant. */
  if (ctx) {
    json_t *marked = map_strings(ctx, TO_MARKER), *plain = map_strings(ctx, TO_PLAIN);
    json_t *scrubbed = map_strings(ctx, SCRUBBED);
    if (render_pair(set, marked, plain, &a, &b) && !has_lt &&
        (memchr(a.data, '<', a.len) || strstr(a.data, "<x>")))
      abort(); /* a '<' that no template holds */
    render_pair(set, ctx, scrubbed, &a, &b);
    json_decref(marked);
    json_decref(plain);
    json_decref(scrubbed);
  }

  tg_tmpl_out_dispose(&a);
  tg_tmpl_out_dispose(&b);
  json_decref(ctx);
  tg_tmpl_free(set);
out:
  for (size_t i = 0; i < n; i++)
    free(srcs[i]);
  return 0;
}
