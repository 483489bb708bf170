/*
 * test_util.c - UTF-8 checks, ids and time formatting.
 */
#include "core/keys.h"
#include "core/model.h"
#include "core/util.h"
#include "tg_test.h"

static bool valid(const char *s, bool allow_ctl) {
  return tg_utf8_valid(s, strlen(s), allow_ctl);
}

TG_TEST(utf8_accepts_well_formed_text) {
  ASSERT(valid("", false));
  ASSERT(valid("plain ascii", false));
  ASSERT(valid("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", false)); /* é € 😀 */
  ASSERT(valid("\xf4\x8f\xbf\xbf", false));                          /* U+10FFFF */
  ASSERT(valid("tab\tnewline\n", false));
}

TG_TEST(utf8_rejects_malformed_sequences) {
  const char *bad[] = {
      "\xc0\xaf",         /* overlong '/' */
      "\xe0\x80\xaf",     /* overlong, 3 bytes */
      "\xed\xa0\x80",     /* UTF-16 surrogate */
      "\xf4\x90\x80\x80", /* above U+10FFFF */
      "\xf5\x80\x80\x80", /* lead byte out of range */
      "\x80",             /* lone continuation */
      "\xc3",             /* truncated */
      "\xe2\x82",         /* truncated */
      "\xc3\x28",         /* bad continuation */
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    if (valid(bad[i], true))
      TG_FAIL_("accepted malformed sequence %zu", i);
  ASSERT(!tg_utf8_valid("a\0b", 3, true)); /* NUL is never text */
}

TG_TEST(utf8_control_characters_only_when_allowed) {
  ASSERT(!valid("bell\a", false));
  ASSERT(valid("bell\a", true));
  ASSERT(!valid("del\x7f", false));
  ASSERT(!valid("esc\x1b[31m", false));
}

TG_TEST(ids_are_well_formed_unique_and_time_ordered) {
  char a[TG_ID_LEN + 1], b[TG_ID_LEN + 1];
  tg_clock_override_ms(1700000000000LL);
  tg_id_new("api", a);
  tg_clock_override_ms(1700000000001LL);
  tg_id_new("api", b);
  tg_clock_override_ms(0);
  ASSERT_INT_EQ(strlen(a), TG_ID_LEN);
  ASSERT(tg_model_id_valid(a, "api"));
  ASSERT(!tg_model_id_valid(a, "key"));
  ASSERT(strcmp(a, b) < 0); /* a later millisecond sorts later */
  for (int i = 0; i < 1000; i++) {
    tg_id_new("key", a);
    tg_id_new("key", b);
    ASSERT(strcmp(a, b) != 0);
    ASSERT(tg_model_id_valid(a, "key"));
  }
  /* the time part is the first 10 chars: 48 bits of milliseconds */
  tg_clock_override_ms(1);
  tg_id_new("app", a);
  tg_clock_override_ms(0);
  ASSERT(strncmp(a + 4, "0000000001", 10) == 0);
}

TG_TEST(time_format_is_rfc3339_utc) {
  char out[21];
  tg_time_format(0, out);
  ASSERT_STR_EQ(out, "1970-01-01T00:00:00Z");
  tg_time_format(1795697174, out);
  ASSERT_STR_EQ(out, "2026-11-26T12:46:14Z");
}

TG_TEST(clock_override) {
  tg_clock_override_ms(86400500);
  ASSERT_INT_EQ(tg_now(), 86400);
  ASSERT_INT_EQ(tg_now_ms(), 86400500);
  tg_clock_override_ms(0);
  ASSERT(tg_now() > 1700000000);
}

int main(int argc, char **argv) {
  if (tg_keys_init())
    return 2;
  return tg_test_main(argc, argv);
}
