/*
 * test_tmpl.c - the portal's template engine: escaping in text and
 * attributes, sections, inverted sections, the context stack, dotted
 * paths, {{.}}, partials and their limits, comments, standalone lines,
 * url: encoding, compile errors with their exact file:line:column,
 * output and work bounds, number formatting, loading a directory,
 * allocation failure, rendering from several threads, and a timing.
 *
 * tmpl.c is included (h2o style) with allocation redirected, so failures
 * can be injected, and to reach real_normalise.
 */
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static long fail_in = -1; /* >= 0: the allocation that many calls from now fails */
static bool alloc_fails(void) {
  if (fail_in < 0)
    return false;
  return fail_in-- == 0;
}
static void *test_malloc(size_t n) {
  return alloc_fails() ? NULL : malloc(n);
}
static void *test_calloc(size_t k, size_t n) {
  return alloc_fails() ? NULL : calloc(k, n);
}
static void *test_realloc(void *p, size_t n) {
  return alloc_fails() ? NULL : realloc(p, n);
}
static char *test_strdup(const char *s) {
  return alloc_fails() ? NULL : strdup(s);
}
#define malloc  test_malloc
#define calloc  test_calloc
#define realloc test_realloc
#define strdup  test_strdup
#include "../../../core/tmpl.c"
#undef malloc
#undef calloc
#undef realloc
#undef strdup

#include "tg_test.h"

/* ---- helpers ----------------------------------------------------------- */

static tg_problem_t prob;
static tg_tmpl_out_t out;

/* A set of templates given as name, source, name, source, ..., NULL. */
static tg_tmpl_set_t *set_of(const char *name, ...) {
  const char *names[16], *srcs[16];
  size_t n = 0;
  va_list ap;
  va_start(ap, name);
  for (const char *nm = name; nm && n < 16; nm = va_arg(ap, const char *)) {
    names[n] = nm;
    srcs[n] = va_arg(ap, const char *);
    n++;
  }
  va_end(ap);
  tg_problem_clear(&prob);
  return tg_tmpl_load_strings(names, srcs, n, &prob);
}

/* Render `name` of `set` with the JSON text ctx into a fresh output;
 * the output, or NULL on failure (then prob says why). */
static const char *render_json(const tg_tmpl_set_t *set, const char *name, const char *ctx) {
  json_error_t err;
  json_t *j = ctx ? json_loads(ctx, JSON_DECODE_ANY, &err) : NULL;
  if (ctx && !j) {
    fprintf(stderr, "  bad test JSON: %s\n", err.text);
    return NULL;
  }
  tg_tmpl_out_reset(&out);
  tg_problem_clear(&prob);
  int rc = tg_tmpl_render(set, name, j, &out, &prob);
  json_decref(j);
  return rc == TG_OK ? out.data : NULL;
}

/* Compile the one template src, render it with JSON ctx. */
static tg_tmpl_set_t *r_set; /* the last one R compiled */
static const char *R(const char *src, const char *ctx) {
  tg_tmpl_free(r_set);
  tg_tmpl_set_t *set = r_set = set_of("t", src, NULL);
  if (!set) {
    fprintf(stderr, "  compile: %s\n", prob.detail);
    return NULL;
  }
  return render_json(set, "t", ctx);
}

/* The problem detail of compiling src as template "page". */
static const char *compile_error(const char *src) {
  tg_tmpl_set_t *set = set_of("page", src, NULL);
  if (set) {
    tg_tmpl_free(set);
    return "(compiled)";
  }
  return prob.detail;
}

__attribute__((constructor)) static void setup(void) {
  tg_tmpl_out_init(&out, 0);
}

/* ---- escaping ---------------------------------------------------------- */

TG_TEST(escapes_each_special_character) {
  ASSERT_STR_EQ(R("{{v}}", "{\"v\":\"&\"}"), "&amp;");
  ASSERT_STR_EQ(R("{{v}}", "{\"v\":\"<\"}"), "&lt;");
  ASSERT_STR_EQ(R("{{v}}", "{\"v\":\">\"}"), "&gt;");
  ASSERT_STR_EQ(R("{{v}}", "{\"v\":\"\\\"\"}"), "&quot;");
  ASSERT_STR_EQ(R("{{v}}", "{\"v\":\"'\"}"), "&#39;");
  ASSERT_STR_EQ(R("{{v}}", "{\"v\":\"a&b<c>d\\\"e'f\"}"), "a&amp;b&lt;c&gt;d&quot;e&#39;f");
  ASSERT_STR_EQ(R("{{v}}", "{\"v\":\"&amp;\"}"), "&amp;amp;"); /* no double-decoding tricks */
  ASSERT_STR_EQ(R("{{v}}", "{\"v\":\"plain text, caf\\u00e9 \\u20ac / = ` ok\"}"),
                "plain text, caf\xc3\xa9 \xe2\x82\xac / = ` ok");
  /* the template's own text is not escaped */
  ASSERT_STR_EQ(R("<b>&amp;{{v}}</b>", "{\"v\":\"<i>\"}"), "<b>&amp;&lt;i&gt;</b>");
}

TG_TEST(script_values_are_inert) {
  const char *ctx = "{\"v\":\"<script>alert(document.cookie)</script>\","
                    "\"w\":\"<img src=x onerror=alert(1)>\"}";
  ASSERT_STR_EQ(R("<p>{{v}}</p>", ctx),
                "<p>&lt;script&gt;alert(document.cookie)&lt;/script&gt;</p>");
  ASSERT_STR_EQ(R("<p>{{w}}</p>", ctx), "<p>&lt;img src=x onerror=alert(1)&gt;</p>");
  /* also through sections, partials and {{.}} */
  ASSERT_STR_EQ(R("{{#l}}{{.}}{{/l}}", "{\"l\":[\"<s>\",\"</textarea>\"]}"),
                "&lt;s&gt;&lt;/textarea&gt;");
}

TG_TEST(attribute_values_cannot_be_broken_out_of) {
  const char *ctx = "{\"v\":\"\\\" onmouseover=\\\"alert(1)\",\"w\":\"' autofocus onfocus='x\"}";
  ASSERT_STR_EQ(R("<a title=\"{{v}}\">", ctx), "<a title=\"&quot; onmouseover=&quot;alert(1)\">");
  ASSERT_STR_EQ(R("<a title='{{w}}'>", ctx), "<a title='&#39; autofocus onfocus=&#39;x'>");
  const char *o = R("<input value=\"{{v}}{{w}}\">", ctx);
  ASSERT(o);
  /* exactly the template's two quotes survive */
  int quotes = 0;
  for (const char *q = o; *q; q++)
    quotes += *q == '"' || *q == '\'';
  ASSERT_INT_EQ(quotes, 2);
}

TG_TEST(nul_and_bad_utf8_in_values_become_u_fffd) {
  tg_tmpl_set_t *set = set_of("t", "[{{a}}|{{b}}|{{c}}]", NULL);
  ASSERT(set);
  json_t *ctx = json_object();
  json_object_set_new(ctx, "a", json_stringn("x\0y", 3));
  json_object_set_new(ctx, "b", json_stringn_nocheck("\xff<\xc3", 3)); /* lone bytes */
  json_object_set_new(ctx, "c", json_string("\xf0\x9f\x94\x91 key"));
  tg_tmpl_out_reset(&out);
  ASSERT_INT_EQ(tg_tmpl_render(set, "t", ctx, &out, &prob), TG_OK);
  ASSERT_STR_EQ(out.data, "[x\xef\xbf\xbdy|\xef\xbf\xbd&lt;\xef\xbf\xbd|\xf0\x9f\x94\x91 key]");
  ASSERT(tg_utf8_valid(out.data, out.len, true));
  json_decref(ctx);
  tg_tmpl_free(set);
}

/* ---- values ------------------------------------------------------------ */

TG_TEST(numbers_and_booleans) {
  ASSERT_STR_EQ(R("{{a}} {{b}} {{c}} {{d}}", "{\"a\":0,\"b\":-12,\"c\":9223372036854775807,"
                                             "\"d\":-9223372036854775808}"),
                "0 -12 9223372036854775807 -9223372036854775808");
  ASSERT_STR_EQ(R("{{a}} {{b}} {{c}} {{d}} {{e}}", "{\"a\":2.5,\"b\":3.0,\"c\":-0.25,\"d\":0.0,"
                                                   "\"e\":-0.0}"),
                "2.5 3 -0.25 0 0");
  ASSERT_STR_EQ(R("{{a}} {{b}} {{c}} {{d}}", "{\"a\":3.14159265358,\"b\":2.1234567,"
                                             "\"c\":-1e-9,\"d\":0.000001}"),
                "3.141593 2.123457 0 0.000001");
  ASSERT_STR_EQ(R("{{a}} {{b}}", "{\"a\":1e20,\"b\":1234567.891}"),
                "100000000000000000000 1234567.891");
  json_t *sum = json_pack("{s:f}", "v", 0.1 + 0.2);
  tg_tmpl_set_t *set = set_of("t", "{{v}}", NULL);
  tg_tmpl_out_reset(&out);
  ASSERT_INT_EQ(tg_tmpl_render(set, "t", sum, &out, &prob), TG_OK);
  ASSERT_STR_EQ(out.data, "0.3");
  json_decref(sum);
  /* the largest double: 309 digits, no truncation */
  json_t *big = json_pack("{s:f}", "v", 1.7976931348623157e308);
  tg_tmpl_out_reset(&out);
  ASSERT_INT_EQ(tg_tmpl_render(set, "t", big, &out, &prob), TG_OK);
  ASSERT_INT_EQ(out.len, 309);
  ASSERT(memcmp(out.data, "17976931348623157", 17) == 0);
  json_decref(big);
  tg_tmpl_free(set);

  ASSERT_STR_EQ(R("{{t}}/{{f}}", "{\"t\":true,\"f\":false}"), "true/false");
  /* null, objects, arrays and missing names render as nothing */
  ASSERT_STR_EQ(R("[{{n}}{{o}}{{a}}{{missing}}]", "{\"n\":null,\"o\":{\"x\":1},\"a\":[1]}"), "[]");
  ASSERT_STR_EQ(R("[{{x}}]", NULL), "[]");
  ASSERT_STR_EQ(R("[{{.}}]", "\"root\""), "[root]");
}

TG_TEST(reals_ignore_the_locale_decimal_point) {
  /* "%.6f" under a locale with "," or a multi-byte point (no such locale
   * need be installed: the normalisation is what matters) */
  char a[] = "3,140000", b[] = "-0,000000",
       c[] = "12\xd9\xab"
             "500000",
       d[] = "7.000000";
  ASSERT_INT_EQ(real_normalise(a, strlen(a)), 4);
  ASSERT_STR_EQ(a, "3.14");
  ASSERT_INT_EQ(real_normalise(b, strlen(b)), 1);
  ASSERT_STR_EQ(b, "0");
  real_normalise(c, strlen(c));
  ASSERT_STR_EQ(c, "12.5");
  real_normalise(d, strlen(d));
  ASSERT_STR_EQ(d, "7");
}

/* ---- sections ---------------------------------------------------------- */

TG_TEST(sections_over_arrays_objects_and_scalars) {
  const char *list = "<ul>{{#apps}}<li>{{name}}</li>{{/apps}}</ul>";
  ASSERT_STR_EQ(R(list, "{\"apps\":[{\"name\":\"a\"},{\"name\":\"<b>\"}]}"),
                "<ul><li>a</li><li>&lt;b&gt;</li></ul>");
  ASSERT_STR_EQ(R(list, "{\"apps\":[]}"), "<ul></ul>");
  ASSERT_STR_EQ(R(list, "{\"apps\":{\"name\":\"one\"}}"), "<ul><li>one</li></ul>");
  ASSERT_STR_EQ(R(list, "{\"apps\":{}}"), "<ul><li></li></ul>"); /* an object is truthy */

  /* {{#v}} and {{^v}}: exactly one of them renders */
  static const struct {
    const char *ctx;
    bool truthy;
  } cases[] = {
      {"{\"v\":true}", true}, {"{\"v\":false}", false},    {"{\"v\":null}", false},
      {"{}", false},          {"{\"v\":\"\"}", false},     {"{\"v\":\"x\"}", true},
      {"{\"v\":0}", false},   {"{\"v\":7}", true},         {"{\"v\":-1}", true},
      {"{\"v\":0.0}", false}, {"{\"v\":0.5}", true},       {"{\"v\":[]}", false},
      {"{\"v\":[0]}", true}, /* one element, even a falsy one */
      {"{\"v\":{}}", true},   {"{\"v\":{\"a\":1}}", true},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    ASSERT_STR_EQ(R("{{#v}}yes{{/v}}", cases[i].ctx), cases[i].truthy ? "yes" : "");
    ASSERT_STR_EQ(R("{{^v}}none{{/v}}", cases[i].ctx), cases[i].truthy ? "" : "none");
  }
  /* a section over an array renders per element, an inverted one once */
  ASSERT_STR_EQ(R("{{#v}}+{{/v}}{{^v}}-{{/v}}", "{\"v\":[1,2,3]}"), "+++");

  /* a scalar becomes the context */
  ASSERT_STR_EQ(R("{{#s}}[{{.}}]{{/s}}", "{\"s\":\"<hi>\"}"), "[&lt;hi&gt;]");
  ASSERT_STR_EQ(R("{{#n}}[{{.}}]{{/n}}", "{\"n\":42}"), "[42]");
  /* nested arrays */
  ASSERT_STR_EQ(R("{{#rows}}({{#.}}{{.}},{{/.}}){{/rows}}", "{\"rows\":[[1,2],[],[3]]}"),
                "(1,2,)()(3,)");
}

TG_TEST(inverted_sections) {
  ASSERT_STR_EQ(R("{{#apps}}{{name}}{{/apps}}{{^apps}}You have no apps.{{/apps}}", "{\"apps\":[]}"),
                "You have no apps.");
  /* the context stays the same inside */
  ASSERT_STR_EQ(R("{{^v}}{{w}}{{/v}}", "{\"w\":\"<w>\"}"), "&lt;w&gt;");
}

TG_TEST(lookup_falls_back_to_parent_contexts) {
  const char *ctx = "{\"owner\":\"root\",\"name\":\"outer\","
                    "\"apps\":[{\"name\":\"a\"},{\"name\":\"b\",\"owner\":\"bob\"}]}";
  ASSERT_STR_EQ(R("{{#apps}}{{name}}:{{owner}} {{/apps}}{{name}}", ctx), "a:root b:bob outer");
  /* three levels */
  ASSERT_STR_EQ(R("{{#a}}{{#b}}{{#c}}{{x}}{{y}}{{z}}{{/c}}{{/b}}{{/a}}",
                  "{\"x\":1,\"a\":{\"y\":2,\"b\":[{\"c\":{\"z\":3}}]}}"),
                "123");
  /* scalars on the stack are skipped */
  ASSERT_STR_EQ(R("{{#l}}{{.}}{{sep}}{{/l}}", "{\"sep\":\";\",\"l\":[\"x\",\"y\"]}"), "x;y;");
}

TG_TEST(dotted_paths) {
  const char *ctx = "{\"app\":{\"name\":\"Weather\",\"owner\":{\"email\":\"a@b.c\"},\"n\":5},"
                    "\"b\":{\"c\":\"root-c\"},\"s\":\"str\"}";
  ASSERT_STR_EQ(R("{{app.name}} {{app.owner.email}} {{app.n}}", ctx), "Weather a@b.c 5");
  ASSERT_STR_EQ(R("[{{app.nope}}{{nope.name}}{{app.name.x}}{{s.x}}]", ctx), "[]");
  ASSERT_STR_EQ(R("{{#app.owner}}{{email}}{{/app.owner}}", ctx), "a@b.c");
  /* Mustache: only the first segment searches the stack */
  ASSERT_STR_EQ(R("{{#app}}[{{owner.email}}][{{b.c}}]{{/app}}", ctx), "[a@b.c][root-c]");
  ASSERT_STR_EQ(R("{{#a}}[{{b.c}}]{{/a}}", "{\"a\":{\"b\":{}},\"b\":{\"c\":\"no\"}}"), "[]");
  ASSERT_STR_EQ(R("{{ app.name }}|{{#  app.owner }}{{ email }}{{/ app.owner  }}", ctx),
                "Weather|a@b.c");
}

TG_TEST(current_element) {
  ASSERT_STR_EQ(R("{{#tags}}<i>{{.}}</i>{{/tags}}", "{\"tags\":[\"a\",\"<b>\",3,true,null]}"),
                "<i>a</i><i>&lt;b&gt;</i><i>3</i><i>true</i><i></i>");
  ASSERT_STR_EQ(R("{{#ids}}/x/{{url:.}}{{/ids}}", "{\"ids\":[\"a b\",\"c/d\"]}"),
                "/x/a%20b/x/c%2Fd");
  ASSERT_STR_EQ(R("{{#o}}[{{.}}]{{/o}}", "{\"o\":{\"k\":1}}"), "[]"); /* an object: nothing */
}

/* ---- partials, comments, standalone lines ------------------------------ */

TG_TEST(partials) {
  tg_tmpl_set_t *set =
      set_of("page", "{{> header}}<main>{{#apps}}{{>row}}{{/apps}}</main>{{> footer }}", "header",
             "<h1>{{title}}</h1>", "row", "<p>{{name}} ({{title}})</p>", "footer",
             "<footer>{{year}}</footer>", NULL);
  ASSERT(set);
  ASSERT_STR_EQ(
      render_json(set, "page",
                  "{\"title\":\"<T>\",\"year\":2026,"
                  "\"apps\":[{\"name\":\"a\"},{\"name\":\"b\",\"title\":\"t\"}]}"),
      "<h1>&lt;T&gt;</h1><main><p>a (&lt;T&gt;)</p><p>b (t)</p></main><footer>2026</footer>");
  ASSERT(render_json(set, "nope", "{}") == NULL);
  ASSERT_INT_EQ(prob.code, TG_ENOTFOUND);
  tg_tmpl_free(set);

  /* a partial that includes itself renders a tree */
  /* (leaves need their own empty kids: a missing one is looked up in the
   * parent, as Mustache does, which would recurse until the limit) */
  set = set_of("tree", "{{#kids}}<li>{{n}}<ul>{{> tree}}</ul></li>{{/kids}}", NULL);
  ASSERT(set);
  ASSERT_STR_EQ(render_json(set, "tree",
                            "{\"kids\":[{\"n\":1,\"kids\":[{\"n\":2,\"kids\":[]}]},"
                            "{\"n\":3,\"kids\":[]}]}"),
                "<li>1<ul><li>2<ul></ul></li></ul></li><li>3<ul></ul></li>");
  tg_tmpl_free(set);
}

TG_TEST(missing_partial_is_a_load_error) {
  tg_tmpl_set_t *set = set_of("a", "ok", "b", "line one\n  {{#x}}{{> nothere}}{{/x}}", NULL);
  ASSERT(set == NULL);
  ASSERT_INT_EQ(prob.code, TG_EINVAL);
  ASSERT_STR_EQ(prob.detail, "b:2:9: partial \"nothere\" is not in the set");
  ASSERT_STR_EQ(prob.field, "b");
}

/* A tree `depth` levels deep, as JSON. */
static char *tree_json(int depth) {
  static char buf[4096];
  size_t n = 0;
  for (int i = 0; i < depth; i++)
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "{\"kids\":[");
  n += (size_t)snprintf(buf + n, sizeof(buf) - n, "{\"kids\":[]}");
  for (int i = 0; i < depth; i++)
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "]}");
  return buf;
}

TG_TEST(partial_recursion_limit_at_render) {
  tg_tmpl_set_t *set =
      set_of("tree", "{{#kids}}.{{> tree}}{{/kids}}", "loop", "x\n {{> loop}}", NULL);
  ASSERT(set);
  /* 16 nested partials are fine, the 17th is not */
  ASSERT_STR_EQ(render_json(set, "tree", tree_json(16)), "................");
  tg_tmpl_out_reset(&out);
  json_t *deep = json_loads(tree_json(17), 0, NULL);
  memcpy(out.data, "kept", 5);
  out.len = 4;
  tg_problem_clear(&prob);
  ASSERT_INT_EQ(tg_tmpl_render(set, "tree", deep, &out, &prob), TG_EINVAL);
  ASSERT_STR_EQ(prob.detail, "tree:1:11: partials nested deeper than 16, rendering \"tree\"");
  ASSERT_INT_EQ(out.len, 4); /* nothing appended */
  ASSERT_STR_EQ(out.data, "kept");
  json_decref(deep);

  /* unconditional recursion stops there too */
  ASSERT(render_json(set, "loop", "{}") == NULL);
  ASSERT_INT_EQ(prob.code, TG_EINVAL);
  ASSERT_STR_EQ(prob.detail, "loop:2:2: partials nested deeper than 16, rendering \"loop\"");
  tg_tmpl_free(set);
}

TG_TEST(comments) {
  ASSERT_STR_EQ(R("a{{! a comment with <b> and {{ and } }}b", "{}"), "ab");
  ASSERT_STR_EQ(R("a{{!\nmulti\nline\n}}b", "{}"), "ab");
  ASSERT_STR_EQ(R("<p>\n  {{! standalone }}\n</p>", "{}"), "<p>\n</p>");
}

TG_TEST(standalone_lines_are_removed) {
  const char *t = "<ul>\n  {{#l}}\n  <li>{{.}}</li>\n  {{/l}}\n</ul>\n";
  ASSERT_STR_EQ(R(t, "{\"l\":[1,2]}"), "<ul>\n  <li>1</li>\n  <li>2</li>\n</ul>\n");
  ASSERT_STR_EQ(R("a\r\n\t{{^x}}\r\nb\r\n{{/x}}\r\nc", "{}"), "a\r\nb\r\nc");
  ASSERT_STR_EQ(R("{{#x}}\nyes\n{{/x}}", "{\"x\":1}"), "yes\n"); /* first and last line */
  /* not standalone: something else shares the line */
  ASSERT_STR_EQ(R(" {{#x}} y{{/x}}\n", "{\"x\":1}"), "  y\n");
  ASSERT_STR_EQ(R("{{v}}{{#x}}\n1{{/x}}", "{\"x\":1,\"v\":\"v\"}"), "v\n1");
  /* variables are never standalone */
  ASSERT_STR_EQ(R("a\n  {{v}}\nb", "{\"v\":\"\"}"), "a\n  \nb");
  /* a standalone partial: its line goes, its own text is not re-indented */
  tg_tmpl_set_t *set = set_of("t", "x\n  {{> p}}\ny", "p", "P1\nP2\n", NULL);
  ASSERT(set);
  ASSERT_STR_EQ(render_json(set, "t", "{}"), "x\nP1\nP2\ny");
  tg_tmpl_free(set);
}

TG_TEST(whitespace_inside_tags) {
  ASSERT_STR_EQ(R("{{ v }}{{\tv\t}}{{ #s }}+{{ /s }}{{ ^s }}-{{ /s }}", "{\"v\":1,\"s\":1}"),
                "11+");
}

/* ---- url: -------------------------------------------------------------- */

TG_TEST(url_filter_percent_encodes) {
  ASSERT_STR_EQ(R("{{url:v}}", "{\"v\":\"AZaz09-._~\"}"), "AZaz09-._~");
  ASSERT_STR_EQ(R("{{url:v}}", "{\"v\":\"a b/c?d&e=f#g\"}"), "a%20b%2Fc%3Fd%26e%3Df%23g");
  ASSERT_STR_EQ(R("{{url:v}}", "{\"v\":\"caf\\u00e9 \\u20ac \\ud83d\\udd11\"}"),
                "caf%C3%A9%20%E2%82%AC%20%F0%9F%94%91");
  ASSERT_STR_EQ(R("{{url:v}}", "{\"v\":\"<>\\\"'%+:;,@!$()*[]\"}"),
                "%3C%3E%22%27%25%2B%3A%3B%2C%40%21%24%28%29%2A%5B%5D");
  /* no scheme can start an href: ':' and '/' are encoded */
  ASSERT_STR_EQ(R("<a href=\"/apps/{{url:id}}?q={{url:q}}\">", "{\"id\":\"javascript:alert(1)\","
                                                               "\"q\":\"//evil.example/\"}"),
                "<a href=\"/apps/javascript%3Aalert%281%29?q=%2F%2Fevil.example%2F\">");
  ASSERT_STR_EQ(R("{{url:n}}/{{url:r}}/{{url:b}}/{{url:o.k}}", "{\"n\":-5,\"r\":1.5,\"b\":true,"
                                                               "\"o\":{\"k\":\"x y\"}}"),
                "-5/1.5/true/x%20y");
  tg_tmpl_set_t *set = set_of("t", "{{url:v}}", NULL);
  json_t *ctx = json_object();
  json_object_set_new(ctx, "v", json_stringn("a\0b", 3));
  tg_tmpl_out_reset(&out);
  ASSERT_INT_EQ(tg_tmpl_render(set, "t", ctx, &out, &prob), TG_OK);
  ASSERT_STR_EQ(out.data, "a%00b");
  json_decref(ctx);
  tg_tmpl_free(set);
}

/* ---- compile errors ---------------------------------------------------- */

TG_TEST(compile_errors_name_file_line_column) {
  ASSERT_STR_EQ(compile_error("<p>\n  {{#apps}}\n  <li>{{name}}</li>\n"),
                "page:2:3: section {{#apps}} is not closed");
  ASSERT_STR_EQ(compile_error("{{#a}}{{#b}}\n{{/a}}{{/b}}"),
                "page:2:1: close tag {{/a}} does not match {{#b}} of 1:7");
  ASSERT_STR_EQ(compile_error("x\n\nyz {{/a}}"),
                "page:3:4: close tag {{/a}} without an open section");
  ASSERT_STR_EQ(compile_error("ab{{=<% %>=}}"), "page:1:3: unknown tag kind \"{{=\"");
  ASSERT_STR_EQ(compile_error("{{<parent}}{{/parent}}"), "page:1:1: unknown tag kind \"{{<\"");
  ASSERT_STR_EQ(compile_error("{{$block}}{{/block}}"), "page:1:1: unknown tag kind \"{{$\"");
  ASSERT_STR_EQ(compile_error("<p>\n <b>{{{html}}}</b>"),
                "page:2:5: unescaped output ({{{x}}}, {{&x}}) does not exist here");
  ASSERT_STR_EQ(compile_error("{{& html}}"),
                "page:1:1: unescaped output ({{{x}}}, {{&x}}) does not exist here");
  ASSERT_STR_EQ(compile_error("{{ {html} }}"),
                "page:1:1: unescaped output ({{{x}}}, {{&x}}) does not exist here");
  ASSERT_STR_EQ(compile_error("<script>{{js:data}}</script>"),
                "page:1:9: unknown filter \"js:\" (there is only url:)");
  ASSERT_STR_EQ(compile_error("{{#url:x}}{{/url:x}}"),
                "page:1:1: a filter applies to a variable only");
  ASSERT_STR_EQ(compile_error("{{url:}}"), "page:1:1: bad name after url: \"\"");
  ASSERT_STR_EQ(compile_error("{{url:a:b}}"), "page:1:1: bad name after url: \"a:b\"");
  ASSERT_STR_EQ(compile_error("a {{ name"), "page:1:3: tag without }}");
  ASSERT_STR_EQ(compile_error("a {{}}"), "page:1:3: empty tag");
  ASSERT_STR_EQ(compile_error("a {{  }}"), "page:1:3: empty tag");
  ASSERT_STR_EQ(compile_error("{{a b}}"),
                "page:1:1: bad name \"a b\": 1..128 of A-Z a-z 0-9 _ . - :");
  ASSERT_STR_EQ(compile_error("{{a.}}"), "page:1:1: empty segment in name \"a.\"");
  ASSERT_STR_EQ(compile_error("{{..}}"), "page:1:1: empty segment in name \"..\"");
  ASSERT_STR_EQ(compile_error("{{#}}{{/}}"),
                "page:1:1: bad name \"\": 1..128 of A-Z a-z 0-9 _ . - :");
  ASSERT_STR_EQ(compile_error("{{> a:b}}"),
                "page:1:1: bad name \"a:b\": 1..128 of A-Z a-z 0-9 _ . -");
  /* columns count characters, not bytes */
  ASSERT_STR_EQ(compile_error("\xc3\xa9\xe2\x82\xac{{&x}}"),
                "page:1:3: unescaped output ({{{x}}}, {{&x}}) does not exist here");
  ASSERT_STR_EQ(compile_error("ok\nb\xff"), "page:2:2: not UTF-8");
  ASSERT_INT_EQ(prob.code, TG_EINVAL);
  ASSERT_STR_EQ(prob.field, "page");
}

TG_TEST(name_and_depth_limits) {
  char name[TG_TMPL_NAME_MAX + 2], src[512];
  memset(name, 'n', sizeof(name));
  name[TG_TMPL_NAME_MAX] = '\0';
  snprintf(src, sizeof(src), "{{%s}}", name);
  ASSERT_STR_EQ(compile_error(src), "(compiled)");
  name[TG_TMPL_NAME_MAX] = 'n';
  name[TG_TMPL_NAME_MAX + 1] = '\0';
  snprintf(src, sizeof(src), "{{%s}}", name);
  ASSERT_STR_CONTAINS(compile_error(src), "page:1:1: bad name \"nnnn");

  char deep[2048];
  size_t n = 0;
  for (int i = 0; i < TG_TMPL_DEPTH_MAX; i++)
    n += (size_t)snprintf(deep + n, sizeof(deep) - n, "{{#a}}");
  size_t open_end = n;
  for (int i = 0; i < TG_TMPL_DEPTH_MAX; i++)
    n += (size_t)snprintf(deep + n, sizeof(deep) - n, "{{/a}}");
  ASSERT_STR_EQ(compile_error(deep), "(compiled)");
  /* one more */
  memmove(deep + open_end + 6, deep + open_end, n - open_end + 1);
  memcpy(deep + open_end, "{{#a}}", 6);
  ASSERT_STR_EQ(compile_error(deep), "page:1:385: sections nested deeper than 64");

  /* the 64 levels render, with the context stack as deep */
  deep[open_end] = '.';
  memmove(deep + open_end + 1, deep + open_end + 6, strlen(deep + open_end + 6) + 1);
  tg_tmpl_set_t *set = set_of("t", deep, NULL);
  ASSERT(set);
  ASSERT_STR_EQ(render_json(set, "t", "{\"a\":true}"), ".");
  tg_tmpl_free(set);
}

TG_TEST(load_strings_rejects_bad_input) {
  const char *names[] = {"a", "a"}, *srcs[] = {"1", "2"};
  tg_problem_clear(&prob);
  ASSERT(tg_tmpl_load_strings(names, srcs, 2, &prob) == NULL);
  ASSERT_STR_EQ(prob.detail, "two templates named \"a\"");
  const char *bad[] = {"a b"};
  tg_problem_clear(&prob);
  ASSERT(tg_tmpl_load_strings(bad, srcs, 1, &prob) == NULL);
  ASSERT_INT_EQ(prob.code, TG_EINVAL);
  tg_problem_clear(&prob);
  ASSERT(tg_tmpl_load_strings(names, srcs, 0, &prob) == NULL);
  ASSERT_INT_EQ(prob.code, TG_EINVAL);
  ASSERT_INT_EQ(tg_tmpl_render(NULL, "a", NULL, &out, NULL), TG_EINVAL);
  tg_tmpl_free(NULL);
}

/* ---- directories ------------------------------------------------------- */

static char tmpdir[64];

static void write_file(const char *name, const char *data, size_t len) {
  char path[256];
  snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, len, f) != len)
    abort();
  fclose(f);
}

static void make_tmpdir(void) {
  snprintf(tmpdir, sizeof(tmpdir), "/tmp/tg-tmpl-XXXXXX");
  if (!mkdtemp(tmpdir))
    abort();
}

static void remove_tmpdir(void) {
  DIR *d = opendir(tmpdir);
  struct dirent *e;
  char path[512];
  while (d && (e = readdir(d))) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    snprintf(path, sizeof(path), "%s/%s", tmpdir, e->d_name);
    if (unlink(path) != 0)
      rmdir(path);
  }
  if (d)
    closedir(d);
  rmdir(tmpdir);
}

#define WRITE(name, lit) write_file((name), (lit), sizeof(lit) - 1)

TG_TEST(load_dir) {
  make_tmpdir();
  WRITE("layout.html", "<title>{{title}}</title>\n");
  WRITE("login.html", "{{> layout}}<form action=\"/login?next={{url:next}}\"></form>");
  WRITE("notes.txt", "{{{ not a template }}}");
  WRITE(".draft.html", "{{{ hidden }}}");
  char sub[128];
  snprintf(sub, sizeof(sub), "%s/dir.html", tmpdir);
  mkdir(sub, 0700);
  tg_problem_clear(&prob);
  tg_tmpl_set_t *set = tg_tmpl_load_dir(tmpdir, &prob);
  ASSERT(set);
  ASSERT_INT_EQ(set->n, 2);
  ASSERT_STR_EQ(render_json(set, "login", "{\"title\":\"Sign in\",\"next\":\"/apps?x=1\"}"),
                "<title>Sign in</title>\n<form action=\"/login?next=%2Fapps%3Fx%3D1\"></form>");
  tg_tmpl_free(set);

  /* errors name the file */
  WRITE("signup.html", "<form>\n  <input value=\"{{&email}}\">\n</form>\n");
  tg_problem_clear(&prob);
  ASSERT(tg_tmpl_load_dir(tmpdir, &prob) == NULL);
  ASSERT_INT_EQ(prob.code, TG_EINVAL);
  ASSERT_STR_EQ(prob.field, "signup.html");
  ASSERT_STR_EQ(prob.detail,
                "signup.html:2:17: unescaped output ({{{x}}}, {{&x}}) does not exist here");
  WRITE("signup.html", "{{#a}}\n{{> nope}}\n{{/a}}");
  tg_problem_clear(&prob);
  ASSERT(tg_tmpl_load_dir(tmpdir, &prob) == NULL);
  ASSERT_STR_EQ(prob.detail, "signup.html:2:1: partial \"nope\" is not in the set");
  WRITE("signup.html", "a\0b");
  tg_problem_clear(&prob);
  ASSERT(tg_tmpl_load_dir(tmpdir, &prob) == NULL);
  ASSERT_STR_EQ(prob.detail, "signup.html:1:2: NUL byte");

  /* a file over 1 MiB */
  char *big = malloc(TG_TMPL_FILE_MAX + 1);
  memset(big, 'x', TG_TMPL_FILE_MAX + 1);
  write_file("signup.html", big, TG_TMPL_FILE_MAX);
  tg_problem_clear(&prob);
  set = tg_tmpl_load_dir(tmpdir, &prob);
  ASSERT(set); /* exactly the maximum is fine */
  tg_tmpl_free(set);
  write_file("signup.html", big, TG_TMPL_FILE_MAX + 1);
  tg_problem_clear(&prob);
  ASSERT(tg_tmpl_load_dir(tmpdir, &prob) == NULL);
  ASSERT_INT_EQ(prob.code, TG_ETOOBIG);
  ASSERT_STR_EQ(prob.detail, "signup.html: larger than 1048576 bytes");
  const char *names[] = {"big"}, *srcs[] = {big};
  big[TG_TMPL_FILE_MAX] = '\0';
  tg_problem_clear(&prob);
  set = tg_tmpl_load_strings(names, srcs, 1, &prob);
  ASSERT(set);
  tg_tmpl_free(set);
  free(big);

  WRITE("signup.html", "ok");
  WRITE("bad name.html", "ok");
  tg_problem_clear(&prob);
  ASSERT(tg_tmpl_load_dir(tmpdir, &prob) == NULL);
  ASSERT_STR_EQ(prob.detail, "bad name.html: a template name is 1..128 of A-Z a-z 0-9 _ . -");
  remove_tmpdir();

  tg_problem_clear(&prob);
  ASSERT(tg_tmpl_load_dir(tmpdir, &prob) == NULL);
  ASSERT_INT_EQ(prob.code, TG_EIO);
  make_tmpdir();
  tg_problem_clear(&prob);
  ASSERT(tg_tmpl_load_dir(tmpdir, &prob) == NULL);
  ASSERT_INT_EQ(prob.code, TG_ENOTFOUND);
  remove_tmpdir();
}

/* ---- bounds ------------------------------------------------------------ */

TG_TEST(output_bound_is_too_big) {
  tg_tmpl_set_t *set = set_of("t", "<p>{{#l}}{{v}}{{/l}}</p>", NULL);
  ASSERT(set);
  json_t *ctx = json_loads("{\"v\":\"<>\",\"l\":[1,2,3,4,5,6,7,8,9,10]}", 0, NULL);
  tg_tmpl_out_t small;
  tg_tmpl_out_init(&small, 87); /* 3 + 10 * 8 + 4 bytes */
  ASSERT_INT_EQ(tg_tmpl_render(set, "t", ctx, &small, &prob), TG_OK);
  ASSERT_INT_EQ(small.len, 87);
  tg_tmpl_out_reset(&small);
  ASSERT_INT_EQ(tg_tmpl_render(set, "t", ctx, &small, &prob), TG_OK);
  /* one byte less */
  tg_tmpl_out_dispose(&small);
  tg_tmpl_out_init(&small, 86);
  tg_problem_clear(&prob);
  ASSERT_INT_EQ(tg_tmpl_render(set, "t", ctx, &small, &prob), TG_ETOOBIG);
  ASSERT_INT_EQ(small.len, 0);
  ASSERT_STR_EQ(small.data, "");
  ASSERT_STR_EQ(prob.detail, "t:1:21: output over 86 bytes, rendering \"t\"");
  ASSERT_STR_EQ(prob.field, "t");
  tg_tmpl_out_dispose(&small);
  /* appending: what was there stays */
  tg_tmpl_out_init(&small, 90); /* 7 + 87 do not fit */
  tg_tmpl_out_t *o = &small;
  ASSERT_INT_EQ(tg_tmpl_render(set, "t", NULL, o, &prob), TG_OK);
  ASSERT_STR_EQ(o->data, "<p></p>");
  tg_problem_clear(&prob);
  ASSERT_INT_EQ(tg_tmpl_render(set, "t", ctx, o, &prob), TG_ETOOBIG);
  ASSERT_STR_EQ(o->data, "<p></p>");
  ASSERT_INT_EQ(o->len, 7);
  tg_tmpl_out_dispose(o);
  tg_tmpl_out_dispose(NULL);
  /* the default and the ceiling */
  tg_tmpl_out_init(&small, 0);
  ASSERT_INT_EQ(small.max, TG_TMPL_OUT_MAX_DEFAULT);
  tg_tmpl_out_init(&small, (size_t)1 << 40);
  ASSERT_INT_EQ(small.max, TG_TMPL_OUT_MAX_LIMIT);
  json_decref(ctx);
  tg_tmpl_free(set);
}

TG_TEST(work_is_bounded_without_output) {
  /* 64 nested sections over a 10-element array, writing nothing:
   * 10^64 iterations without the bound */
  char src[1024];
  size_t n = 0;
  for (int i = 0; i < 64; i++)
    n += (size_t)snprintf(src + n, sizeof(src) - n, "{{#l}}");
  for (int i = 0; i < 64; i++)
    n += (size_t)snprintf(src + n, sizeof(src) - n, "{{/l}}");
  tg_tmpl_set_t *set = set_of("t", src, NULL);
  ASSERT(set);
  json_t *ctx = json_loads("{\"l\":[0,1,2,3,4,5,6,7,8,9]}", 0, NULL);
  tg_tmpl_out_t o;
  tg_tmpl_out_init(&o, 1 << 16);
  tg_problem_clear(&prob);
  ASSERT_INT_EQ(tg_tmpl_render(set, "t", ctx, &o, &prob), TG_ETOOBIG);
  ASSERT_STR_CONTAINS(prob.detail, "more than 65536 steps (the output maximum), rendering \"t\"");
  tg_tmpl_out_dispose(&o);
  json_decref(ctx);
  tg_tmpl_free(set);
}

/* The deepest render there is: 64 nested sections in each of 17 nested
 * partials. Run on a thread whose stack is painted, to measure its use. */
typedef struct deep_arg {
  const tg_tmpl_set_t *set;
  const json_t *ctx;
  int rc;
  size_t len;
} deep_arg_t;

static void *deep_thread(void *p) {
  deep_arg_t *a = p;
  tg_tmpl_out_t o;
  tg_tmpl_out_init(&o, 0);
  a->rc = tg_tmpl_render(a->set, "t", a->ctx, &o, NULL);
  a->len = o.len;
  tg_tmpl_out_dispose(&o);
  return NULL;
}

TG_TEST(deepest_render_stack_use) {
  /* t: 63 x {{#k}}, then {{#more}}{{> t}}{{/more}}: 64 deep */
  char src[1024];
  size_t n = 0;
  for (int i = 0; i < TG_TMPL_DEPTH_MAX - 1; i++)
    n += (size_t)snprintf(src + n, sizeof(src) - n, "{{#k}}");
  n += (size_t)snprintf(src + n, sizeof(src) - n, ".{{#more}}{{> t}}{{/more}}");
  for (int i = 0; i < TG_TMPL_DEPTH_MAX - 1; i++)
    n += (size_t)snprintf(src + n, sizeof(src) - n, "{{/k}}");
  tg_tmpl_set_t *set = set_of("t", src, NULL);
  ASSERT(set);
  /* k nested 63 times per level of partial; the last says no more */
  int levels = (TG_TMPL_DEPTH_MAX - 1) * (TG_TMPL_PARTIAL_DEPTH_MAX + 1);
  json_t *ctx = json_pack("{s:b}", "more", 0);
  for (int i = 0; i < levels; i++)
    ctx = json_pack("{s:o}", "k", ctx);
  json_object_set_new(ctx, "more", json_true());

  size_t size = (size_t)4 << 20;
  unsigned char *stack = malloc(size);
  ASSERT(stack);
  memset(stack, 0xA5, size);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstack(&attr, stack, size);
  deep_arg_t arg = {.set = set, .ctx = ctx};
  pthread_t th;
  ASSERT_INT_EQ(pthread_create(&th, &attr, deep_thread, &arg), 0);
  pthread_join(th, NULL);
  pthread_attr_destroy(&attr);
  size_t untouched = 0; /* the stack grows down */
  while (untouched < size && stack[untouched] == 0xA5)
    untouched++;
  free(stack);
  ASSERT_INT_EQ(arg.rc, TG_OK);
  ASSERT_INT_EQ(arg.len, TG_TMPL_PARTIAL_DEPTH_MAX + 1); /* one '.' per level */
  printf("  deepest render (%d sections, %d partials): %zu KiB of stack\n",
         (TG_TMPL_DEPTH_MAX - 1) * (TG_TMPL_PARTIAL_DEPTH_MAX + 1) + TG_TMPL_PARTIAL_DEPTH_MAX + 1,
         TG_TMPL_PARTIAL_DEPTH_MAX, (size - untouched) >> 10);
  json_decref(ctx);
  tg_tmpl_free(set);
}

/* ---- allocation failure ------------------------------------------------ */

TG_TEST(allocation_failure_is_clean) {
  const char *names[] = {"page", "row"};
  const char *srcs[] = {"<h1>{{t}}</h1>{{#rows}}{{> row}}{{/rows}}", "<p>{{a.b}} {{url:c}}</p>"};
  int failures = 0;
  for (long k = 0;; k++) {
    tg_problem_clear(&prob);
    fail_in = k;
    tg_tmpl_set_t *set = tg_tmpl_load_strings(names, srcs, 2, &prob);
    fail_in = -1;
    if (set) {
      tg_tmpl_free(set);
      break;
    }
    ASSERT_INT_EQ(prob.code, TG_ENOMEM);
    failures++;
  }
  ASSERT(failures >= 8); /* names, files, sources, ops, pools, the set */

  tg_tmpl_set_t *set = set_of("t", "{{v}}", NULL);
  json_t *ctx = json_loads("{\"v\":\"<x>\"}", 0, NULL);
  tg_tmpl_out_t o;
  tg_tmpl_out_init(&o, 0);
  fail_in = 0;
  tg_problem_clear(&prob);
  ASSERT_INT_EQ(tg_tmpl_render(set, "t", ctx, &o, &prob), TG_ENOMEM);
  ASSERT(o.data == NULL && o.len == 0);
  fail_in = -1;
  ASSERT_INT_EQ(tg_tmpl_render(set, "t", ctx, &o, &prob), TG_OK);
  ASSERT_STR_EQ(o.data, "&lt;x&gt;");
  tg_tmpl_out_dispose(&o);
  json_decref(ctx);
  tg_tmpl_free(set);
}

/* ---- a real page: threads and timing ----------------------------------- */

static const char *page_names[] = {"apps", "head", "nav", "row", "foot"};
static const char *page_srcs[] = {
    "{{> head}}\n{{> nav}}\n<main class=\"container\">\n  <h1>Your applications</h1>\n"
    "  <p class=\"lead\">Each application has its own keys, subscriptions and usage. Keys are "
    "shown once, when they are issued; store them in a secret manager, never in source code "
    "or in a browser.</p>\n"
    "  {{^apps}}<p>You have no applications yet.</p>{{/apps}}\n"
    "  <table class=\"apps\">\n    <thead><tr><th>Name</th><th>Plan</th><th>Calls</th>"
    "<th>Cost</th><th>Status</th><th></th></tr></thead>\n    <tbody>\n"
    "    {{#apps}}\n{{> row}}\n    {{/apps}}\n    </tbody>\n  </table>\n"
    "  <section class=\"help\">\n    <h2>Keys and limits</h2>\n"
    "    <p>Send your key in the <code>Authorization: Bearer</code> header. A key belongs to one "
    "application and works for every API the application is subscribed to. Rotating a key "
    "issues a new one and keeps the old one working for the grace period you choose, so that "
    "you can roll it out without downtime; revoking a key stops it within a second.</p>\n"
    "    <p>Rate limits and quotas come from the plan of each subscription. When a limit is "
    "reached the gateway answers <code>429 Too Many Requests</code> with a "
    "<code>Retry-After</code> header; quotas reset at midnight UTC (daily) or on the first day "
    "of the month (monthly). Usage is counted per minute and shown here within a minute.</p>\n"
    "    <p>Costs are estimates for the current month: the plan's fee plus the calls over the "
    "included calls at the plan's price. The invoice is made from the same numbers at the end "
    "of the month, in the plan's currency.</p>\n"
    "    <p>Suspended applications keep their keys, but every call with them is refused with "
    "<code>403 Forbidden</code> until the application is active again. An application is "
    "suspended when its owner asks for it, when a subscription that needs approval is "
    "waiting, or when the publisher of an API suspends it; the reason is shown on its "
    "page.</p>\n"
    "    <p>Need more? Plans can be changed at any time from the application's page: the new "
    "limits apply within a second, and the month is billed per plan for the calls made on "
    "it. Questions about an API go to its publisher, whose contact is on the API's page in the "
    "catalog; questions about your account or an invoice go to support.</p>\n  </section>\n"
    "</main>\n{{> foot}}\n",
    "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>{{title}} - {{site.name}}</title>\n<link rel=\"stylesheet\" href=\"/css/portal.css\">\n"
    "<script src=\"/js/portal.js\" defer></script>\n</head>\n<body>\n",
    "<nav class=\"top\">\n  <a class=\"brand\" href=\"/\">{{site.name}}</a>\n"
    "  <a href=\"/catalog\">API catalog</a>\n  <a href=\"/apps\">Applications</a>\n"
    "  <a href=\"/usage\">Usage</a>\n  <a href=\"/docs\">Documentation</a>\n"
    "  <span class=\"who\">Signed in as {{user.email}}</span>\n"
    "  <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" "
    "value=\"{{csrf}}\"><button>Sign out</button></form>\n</nav>\n",
    "      <tr class=\"app\">\n        <td><a href=\"/apps/{{url:id}}\" "
    "title=\"{{description}}\">{{name}}</a></td>\n        <td>{{plan}}</td>\n"
    "        <td class=\"num\">{{calls}}</td>\n        <td class=\"num\">{{cost}} "
    "{{currency}}</td>\n"
    "        <td>{{#active}}<span class=\"ok\">active</span>{{/active}}"
    "{{^active}}<span class=\"off\">suspended</span>{{/active}}</td>\n"
    "        <td class=\"actions\"><a class=\"button\" href=\"/apps/{{url:id}}/keys\">Keys</a>\n"
    "          <a class=\"button\" href=\"/apps/{{url:id}}/usage\">Usage</a></td>\n      </tr>",
    "<footer>\n  <nav class=\"sitemap\">\n"
    "    <ul><li><h3>Platform</h3></li><li><a href=\"/catalog\">API catalog</a></li>"
    "<li><a href=\"/pricing\">Plans and pricing</a></li><li><a href=\"/status\">Service "
    "status</a></li><li><a href=\"/changelog\">Changelog</a></li></ul>\n"
    "    <ul><li><h3>Developers</h3></li><li><a href=\"/docs/quickstart\">Quick start</a></li>"
    "<li><a href=\"/docs/auth\">Authentication</a></li><li><a href=\"/docs/limits\">Rate "
    "limits and quotas</a></li><li><a href=\"/docs/errors\">Errors</a></li><li><a "
    "href=\"/docs/webhooks\">Webhooks</a></li></ul>\n"
    "    <ul><li><h3>Account</h3></li><li><a href=\"/apps\">Applications</a></li><li><a "
    "href=\"/usage\">Usage and billing</a></li><li><a href=\"/account/security\">Security"
    "</a></li><li><a href=\"/account/delete\">Delete account</a></li></ul>\n"
    "    <ul><li><h3>Company</h3></li><li><a href=\"/about\">About</a></li><li><a "
    "href=\"/contact\">Contact and support</a></li><li><a href=\"/security\">Responsible "
    "disclosure</a></li></ul>\n  </nav>\n"
    "  <p>&copy; {{year}} {{site.name}} &middot; <a href=\"/terms\">Terms</a> &middot; "
    "<a href=\"/privacy\">Privacy</a></p>\n</footer>\n</body>\n</html>\n",
};

#define PAGE_ROWS 11

static json_t *page_ctx(void) {
  json_t *apps = json_array();
  for (int i = 0; i < PAGE_ROWS; i++) {
    char id[32], name[64];
    snprintf(id, sizeof(id), "app_01J%04dXYZ", i);
    snprintf(name, sizeof(name), "Weather & Tides <%d>", i);
    json_array_append_new(apps,
                          json_pack("{s:s, s:s, s:s, s:s, s:I, s:f, s:s, s:b}", "id", id, "name",
                                    name, "description", "Forecasts for the \"coast\" app", "plan",
                                    "Pro (monthly)", "calls", (json_int_t)(123456 + i * 1000),
                                    "cost", 19.5 + i, "currency", "EUR", "active", i % 3 != 0));
  }
  return json_pack("{s:s, s:{s:s}, s:{s:s}, s:s, s:i, s:o}", "title", "Applications", "site",
                   "name", "Acme APIs", "user", "email", "dev@example.com", "csrf",
                   "k2Jv9-Qx_0aBcDeFgHiJkLmNoPq", "year", 2026, "apps", apps);
}

typedef struct thread_arg {
  const tg_tmpl_set_t *set;
  const json_t *ctx;
  const char *want;
  int bad;
} thread_arg_t;

static void *render_thread(void *p) {
  thread_arg_t *a = p;
  tg_tmpl_out_t o;
  tg_tmpl_out_init(&o, 0);
  for (int i = 0; i < 500; i++) {
    tg_tmpl_out_reset(&o);
    if (tg_tmpl_render(a->set, "apps", a->ctx, &o, NULL) != TG_OK || strcmp(o.data, a->want) != 0)
      a->bad++;
  }
  tg_tmpl_out_dispose(&o);
  return NULL;
}

TG_TEST(renders_from_several_threads) {
  tg_problem_clear(&prob);
  tg_tmpl_set_t *set = tg_tmpl_load_strings(page_names, page_srcs, 5, &prob);
  ASSERT(set);
  json_t *ctx = page_ctx();
  tg_tmpl_out_reset(&out);
  ASSERT_INT_EQ(tg_tmpl_render(set, "apps", ctx, &out, &prob), TG_OK);
  thread_arg_t args[4];
  pthread_t th[4];
  for (int i = 0; i < 4; i++) {
    args[i] = (thread_arg_t){.set = set, .ctx = ctx, .want = out.data};
    ASSERT_INT_EQ(pthread_create(&th[i], NULL, render_thread, &args[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    ASSERT_INT_EQ(args[i].bad, 0);
  }
  json_decref(ctx);
  tg_tmpl_free(set);
}

/* Thread CPU time: the test machine may be busy with other work. */
static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

TG_TEST(page_render_timing) {
  tg_problem_clear(&prob);
  tg_tmpl_set_t *set = tg_tmpl_load_strings(page_names, page_srcs, 5, &prob);
  ASSERT(set);
  json_t *ctx = page_ctx();
  tg_tmpl_out_reset(&out);
  ASSERT_INT_EQ(tg_tmpl_render(set, "apps", ctx, &out, &prob), TG_OK);
  ASSERT(out.len > 9000 && out.len < 11000);
  ASSERT_STR_CONTAINS(out.data, "<a href=\"/apps/app_01J0003XYZ\" title=\"Forecasts for the "
                                "&quot;coast&quot; app\">Weather &amp; Tides &lt;3&gt;</a>");
  ASSERT_STR_CONTAINS(out.data,
                      "<td class=\"num\">125456</td>\n        <td class=\"num\">21.5 EUR");
  ASSERT(strstr(out.data, "<span class=\"off\">suspended</span>"));
  ASSERT(!strstr(out.data, "{{"));
  size_t escaped = 0;
  for (const char *q = out.data; (q = strstr(q, "&lt;")); q++)
    escaped++;
  ASSERT_INT_EQ(escaped, PAGE_ROWS);

  /* the best of 5 batches */
  int iters = 4000;
  double us = 1e9;
  for (int batch = 0; batch < 5; batch++) {
    double t0 = cpu_s();
    for (int i = 0; i < iters; i++) {
      tg_tmpl_out_reset(&out);
      if (tg_tmpl_render(set, "apps", ctx, &out, NULL) != TG_OK)
        ASSERT(0);
    }
    double b = (cpu_s() - t0) / iters * 1e6;
    us = b < us ? b : us;
  }
  /* variables: head 2, nav 3, foot 2, 9 per row; sections: 2, 2 per row */
  printf("  page: %zu bytes, %d variables, %d sections, %d partials: "
         "%.2f us/render (CPU), %.0f renders/s on one core\n",
         out.len, 7 + 9 * PAGE_ROWS, 2 + 2 * PAGE_ROWS, 3 + PAGE_ROWS, us, 1e6 / us);
  json_decref(ctx);
  tg_tmpl_free(set);
}

__attribute__((destructor)) static void teardown(void) {
  tg_tmpl_out_dispose(&out);
  tg_tmpl_free(r_set);
}

TG_TEST_MAIN()
