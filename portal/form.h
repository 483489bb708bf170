/*
 * form.h - the portal's pure parsing helpers, apart from libmicrohttpd so
 * that the fuzz target (tests/fuzz/fuzz_portal.c) reaches them:
 * application/x-www-form-urlencoded bodies, route patterns, and the local
 * path a sign-in may go on to.
 */
#ifndef PORTAL_FORM_H
#define PORTAL_FORM_H

#include <stdbool.h>
#include <stddef.h>

typedef struct portal_field {
  char *name, *value; /* decoded, NUL-terminated; one allocation each */
} portal_field_t;

/*
 * Parse body[0..len) as application/x-www-form-urlencoded (WHATWG URL,
 * section 5.1): '&'-separated name=value pairs, '+' is a space, %XX a
 * byte; empty pairs are skipped. Stricter than browsers need: a bad %XX,
 * a decoded name or value that is not UTF-8 or holds control characters
 * other than tab, CR and LF, an empty name, a name given twice, or more
 * than `max` fields make it fail (returns false; the fields parsed so far
 * stay in `fields`, *n counting them, for the caller to free). On success
 * *n fields were filled.
 */
bool portal_form_parse(const char *body, size_t len, portal_field_t *fields, int max, int *n);

/* Free the strings of n fields. */
void portal_form_free(portal_field_t *fields, int n);

/*
 * Match `path` against a route `pattern` whose {name} parts each take one
 * non-empty path segment (no '/'). On a match, params[0..k) receive new
 * strings (the caller frees them) for the pattern's k placeholders (at
 * most max); otherwise nothing is allocated.
 */
bool portal_path_match(const char *pattern, const char *path, char **params, int max);

/*
 * `next` if it is a path on this site to go on to after signing in
 * ("/apps/x?y"), else NULL: never "//host", "/\host", a scheme, control
 * characters, backslashes, or more than 512 bytes (open redirects).
 */
const char *portal_safe_next(const char *next);

#endif
