/*
 * tg_test.h - the unit-test harness: one executable per area, tests
 * registered with TG_TEST, run in order (or one by name: ./test NAME).
 * Asserts print both values (libuv style) and abort the current test only.
 * Each binary prints "name: ok|FAIL" lines and exits non-zero if any failed.
 * Include the .c under test to reach statics (h2o style) where needed.
 */
#ifndef TG_TEST_H
#define TG_TEST_H

#include <inttypes.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*tg_test_fn)(void);
struct tg_test_case {
  const char *name;
  tg_test_fn fn;
};

#define TG_TEST_MAX 256
static struct tg_test_case tg_test_cases[TG_TEST_MAX];
static int tg_test_count;
static jmp_buf tg_test_jmp;
static int tg_test_failed_now;

static inline void tg_test_register(const char *name, tg_test_fn fn) {
  if (tg_test_count == TG_TEST_MAX) {
    fprintf(stderr, "too many tests\n");
    exit(2);
  }
  tg_test_cases[tg_test_count].name = name;
  tg_test_cases[tg_test_count].fn = fn;
  tg_test_count++;
}

#define TG_TEST(name)                                                                              \
  static void test_##name(void);                                                                   \
  __attribute__((constructor)) static void test_register_##name(void) {                            \
    tg_test_register(#name, test_##name);                                                          \
  }                                                                                                \
  static void test_##name(void)

#define TG_FAIL_(...)                                                                              \
  do {                                                                                             \
    fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__);                                              \
    fprintf(stderr, __VA_ARGS__);                                                                  \
    fprintf(stderr, "\n");                                                                         \
    tg_test_failed_now = 1;                                                                        \
    longjmp(tg_test_jmp, 1);                                                                       \
  } while (0)

#define ASSERT(cond)                                                                               \
  do {                                                                                             \
    if (!(cond))                                                                                   \
      TG_FAIL_("assertion failed: %s", #cond);                                                     \
  } while (0)

#define ASSERT_INT_EQ(a, b)                                                                        \
  do {                                                                                             \
    long long a_ = (long long)(a), b_ = (long long)(b);                                            \
    if (a_ != b_)                                                                                  \
      TG_FAIL_("%s == %s: %lld != %lld", #a, #b, a_, b_);                                          \
  } while (0)

#define ASSERT_INT_NE(a, b)                                                                        \
  do {                                                                                             \
    long long a_ = (long long)(a), b_ = (long long)(b);                                            \
    if (a_ == b_)                                                                                  \
      TG_FAIL_("%s != %s: both %lld", #a, #b, a_);                                                 \
  } while (0)

#define ASSERT_STR_EQ(a, b)                                                                        \
  do {                                                                                             \
    const char *a_ = (a), *b_ = (b);                                                               \
    if (!a_ || !b_ || strcmp(a_, b_) != 0)                                                         \
      TG_FAIL_("%s == %s: \"%s\" != \"%s\"", #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");      \
  } while (0)

#define ASSERT_STR_CONTAINS(hay, needle)                                                           \
  do {                                                                                             \
    const char *h_ = (hay), *n_ = (needle);                                                        \
    if (!h_ || !strstr(h_, n_))                                                                    \
      TG_FAIL_("\"%s\" does not contain \"%s\"", h_ ? h_ : "(null)", n_);                          \
  } while (0)

static inline int tg_test_main(int argc, char **argv) {
  volatile int failed = 0, ran = 0;
  for (volatile int i = 0; i < tg_test_count; i++) {
    if (argc > 1 && strcmp(argv[1], tg_test_cases[i].name) != 0)
      continue;
    ran++;
    tg_test_failed_now = 0;
    if (setjmp(tg_test_jmp) == 0)
      tg_test_cases[i].fn();
    printf("%s: %s\n", tg_test_cases[i].name, tg_test_failed_now ? "FAIL" : "ok");
    fflush(stdout);
    failed += tg_test_failed_now;
  }
  if (ran == 0) {
    fprintf(stderr, "no test ran\n");
    return 2;
  }
  printf("%d passed, %d failed\n", ran - failed, failed);
  return failed ? 1 : 0;
}

#define TG_TEST_MAIN()                                                                             \
  int main(int argc, char **argv) {                                                                \
    return tg_test_main(argc, argv);                                                               \
  }

#endif
