/*
 * tmpl.h - the developer portal's HTML templates: a logic-less Mustache
 * subset in which every substitution is escaped by the engine (OWASP XSS
 * prevention, rule 1). There is no syntax for unescaped output.
 *
 * Compile once, render many: a template set is loaded (every template
 * parsed into a flat array of ops, partials resolved) and is immutable
 * afterwards, so any number of threads may render from it at once.
 * Rendering walks the ops, never re-parses, and allocates nothing but the
 * growth of the caller's output buffer.
 *
 * Tags (whitespace around the name is allowed: {{ name }}, {{# name }}):
 *
 *   | tag              | output                                                |
 *   | ---------------- | ----------------------------------------------------- |
 *   | {{name}}         | the value, HTML-escaped (table below)                 |
 *   | {{a.b.c}}        | dotted path: a is looked up through the context       |
 *   |                  | stack, b and c only inside what a found (Mustache)    |
 *   | {{.}}            | the current context (the element of a section)        |
 *   | {{url:name}}     | the value percent-encoded as one URL path segment or  |
 *   |                  | query value: RFC 3986 section 2.3 unreserved bytes    |
 *   |                  | (A-Z a-z 0-9 - . _ ~) kept, every other byte of the   |
 *   |                  | UTF-8 %XX with upper-case hex (sections 2.1, 2.5)     |
 *   | {{#name}}..{{/name}} | section, below                                    |
 *   | {{^name}}..{{/name}} | inverted section: the body once iff name is falsy |
 *   | {{! text }}      | comment, nothing (ends at the first }})               |
 *   | {{> other}}      | the template named `other` of the same set, with the  |
 *   |                  | current context stack                                 |
 *
 * Compile errors: {{{x}}} and {{&x}} (unescaped output), any other sigil
 * (=, <, $ ...), a filter other than url: (there is no js:, the CSP allows
 * no inline script), url: on anything but a variable, an empty or bad name,
 * a tag without }}, an unclosed section, a close tag that does not match
 * the open section, sections nested deeper than TG_TMPL_DEPTH_MAX, a
 * partial that is not in the set, a template that is not UTF-8 or holds a
 * NUL byte (TG_EINVAL), a template larger than TG_TMPL_FILE_MAX
 * (TG_ETOOBIG). The problem's detail starts with "FILE:LINE:COLUMN: "
 * (1-based; the column counts characters, a tab is one) and its field is
 * FILE: "login.html" from a directory, the given name from strings.
 *
 * Names: 1..TG_TMPL_NAME_MAX bytes of [A-Za-z0-9_.-:]. A ':' separates a
 * filter from the path, so keys that contain ':' cannot be looked up.
 * Template names (file names without ".html") are the same without ':'.
 *
 * Values (a jansson context; NULL renders as {}):
 *
 *   | value              | {{x}} / {{url:x}}                 | {{#x}} section             |
 *   | ------------------ | --------------------------------- | -------------------------- |
 *   | string             | escaped / encoded text            | once iff non-empty, the    |
 *   |                    |                                   | string as context          |
 *   | integer            | decimal, "-12"                    | once iff non-zero, ditto   |
 *   | real               | fixed point, at most 6 decimals,  | once iff non-zero, ditto   |
 *   |                    | trailing zeros dropped: 2.5, 0.3, |                            |
 *   |                    | 3 (3.0), 0 (-1e-9); '.' whatever  |                            |
 *   |                    | the locale                        |                            |
 *   | true / false       | "true" / "false"                  | once (context: true) / not |
 *   | object             | nothing                           | once, the object as context|
 *   | array              | nothing                           | once per element, each as  |
 *   |                    |                                   | context; empty: not        |
 *   | null, missing      | nothing                           | not                        |
 *
 * A name is looked up in the innermost context that is an object having
 * it, then outwards (Mustache); {{^x}} renders iff {{#x}} would not.
 *
 * HTML escaping, applied to every byte of a value rendered by {{x}}:
 *
 *   | input                                 | output                     |
 *   | ------------------------------------- | -------------------------- |
 *   | & < > " '                             | &amp; &lt; &gt; &quot; &#39; |
 *   | NUL, a byte that does not start a     | U+FFFD (EF BF BD)          |
 *   | well-formed UTF-8 sequence (RFC 3629) |                            |
 *   | anything else                         | as it is                   |
 *
 * So a value is inert as element text and inside a single- or double-quoted
 * attribute value, and the output is well-formed UTF-8 without NUL (the
 * template text is checked to be so at load). Escaping is NOT enough, and
 * templates must not put {{x}} there: in an unquoted attribute value
 * (spaces pass), at the start of a URL attribute (href="{{x}}" passes
 * "javascript:..."; write href="/apps/{{url:id}}"), inside <script>,
 * <style> or on*= attributes. url: output is only [A-Za-z0-9-._~%], safe in
 * any quoted attribute, and cannot start a scheme (':' is encoded).
 *
 * Standalone lines (Mustache): a line holding only whitespace and one
 * section, inverted, close, comment or partial tag is removed whole, the
 * indentation and the line end with it. Partials are not re-indented.
 *
 * Limits: a template file is at most TG_TMPL_FILE_MAX bytes; sections nest
 * at most TG_TMPL_DEPTH_MAX deep in one template; at render time, partials
 * nest at most TG_TMPL_PARTIAL_DEPTH_MAX deep (a partial may include itself,
 * for trees; deeper is TG_EINVAL naming the tag). A render's work, counted
 * as ops run plus section iterations, is bounded by the output buffer's
 * maximum like its bytes (TG_ETOOBIG): sections over arrays can multiply
 * work without writing anything. The C stack holds one frame (about 130
 * bytes at -O2) per open section or partial: the deepest render there is
 * (64 sections in each of 17 nested templates) takes about 150 KiB, 400
 * KiB under ASan (measured by the unit test). Render threads need that.
 */
#ifndef TG_TMPL_H
#define TG_TMPL_H

#include <jansson.h>
#include <stddef.h>

#include "core/error.h"

#define TG_TMPL_FILE_MAX          ((size_t)1 << 20)
#define TG_TMPL_DEPTH_MAX         64
#define TG_TMPL_PARTIAL_DEPTH_MAX 16
#define TG_TMPL_NAME_MAX          128

/* Default and ceiling of an output buffer's maximum (tg_tmpl_out_init). */
#define TG_TMPL_OUT_MAX_DEFAULT ((size_t)8 << 20)
#define TG_TMPL_OUT_MAX_LIMIT   ((size_t)1 << 30)

/*
 * The output buffer renders append to. data[0..len) is the output since
 * the last reset; whenever data is not NULL, data[len] is a NUL (not part
 * of the output), and after a successful render data is not NULL. len
 * never exceeds max. Read the fields; change them only through the
 * functions below. Keep one per thread and reset it per page: its memory
 * is reused, so a warm render allocates nothing.
 */
typedef struct tg_tmpl_out {
  char *data; /* owned; NULL until the first write */
  size_t len; /* bytes of output */
  size_t cap; /* bytes allocated */
  size_t max; /* hard maximum of len, and of a render's work */
} tg_tmpl_out_t;

/* An immutable set of compiled templates. */
typedef struct tg_tmpl_set tg_tmpl_set_t;

/*
 * Prepare an empty buffer whose output may grow to `max` bytes (0: the
 * default TG_TMPL_OUT_MAX_DEFAULT; more than TG_TMPL_OUT_MAX_LIMIT: the
 * limit). Allocates nothing.
 */
void tg_tmpl_out_init(tg_tmpl_out_t *o, size_t max);

/* Drop the output (len = 0) and keep the memory. */
void tg_tmpl_out_reset(tg_tmpl_out_t *o);

/* Free the memory and leave `o` as after init with the same max. NULL is a
 * no-op. */
void tg_tmpl_out_dispose(tg_tmpl_out_t *o);

/*
 * Load and compile every regular file "NAME.html" of directory `dir` (not
 * its subdirectories; names starting with '.' are skipped), NAME being
 * the template's name. Returns a new set (free with tg_tmpl_free), or NULL
 * with `p` filled: TG_EIO (the directory or a file cannot be read),
 * TG_ENOTFOUND (no template in it), TG_EINVAL (a compile error, a bad
 * file name), TG_ETOOBIG (a file over TG_TMPL_FILE_MAX), TG_ENOMEM.
 */
tg_tmpl_set_t *tg_tmpl_load_dir(const char *dir, tg_problem_t *p);

/*
 * The same from memory: template names[i] is the NUL-terminated
 * sources[i], for i in 0..n. The strings are copied. Errors as above, and
 * TG_EINVAL for a duplicate or bad name, or n == 0.
 */
tg_tmpl_set_t *tg_tmpl_load_strings(const char *const *names, const char *const *sources, size_t n,
                                    tg_problem_t *p);

/*
 * Render template `name` of `set` with context `ctx` (borrowed; NULL is an
 * empty object), appending to `out`. Returns TG_OK, TG_ENOTFOUND (no such
 * template), TG_ETOOBIG (the output or the work would pass out->max),
 * TG_EINVAL (partials nested deeper than TG_TMPL_PARTIAL_DEPTH_MAX) or
 * TG_ENOMEM, with `p` filled. On failure out->len is as before the call.
 * Thread-safe for one set and many threads, each with its own `out`, as
 * long as nobody changes `ctx` meanwhile (jansson reads do not write).
 */
int tg_tmpl_render(const tg_tmpl_set_t *set, const char *name, const json_t *ctx,
                   tg_tmpl_out_t *out, tg_problem_t *p);

/* Free a set. NULL is a no-op. No render may be running on it. */
void tg_tmpl_free(tg_tmpl_set_t *set);

#endif
