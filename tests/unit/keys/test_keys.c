/*
 * test_keys.c - tokens (shape, checksum, digests, verify), hex, the server
 * secret (env and file) and password hashing, against core/keys.h.
 *
 * Files live in mkdtemp directories under /tmp that are removed at exit
 * even when a test fails half-way. Password tests are few: argon2id at the
 * interactive limits takes 64 MiB and is slow under sanitizers.
 */
#include "core/keys.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tests/unit/tg_test.h"

static const char *const type_text[] = {"tg_live_", "tg_adm_", "tg_ses_", "tg_act_"};
static const tg_token_type_t all_types[] = {TG_TOKEN_API_KEY, TG_TOKEN_ADMIN, TG_TOKEN_SESSION,
                                            TG_TOKEN_ACCOUNT};
#define TYPE_COUNT 3
#define BASE62     "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

static void setup(void) {
  ASSERT_INT_EQ(tg_keys_init(), TG_OK);
}

static void secret_fill(tg_secret_t *s, unsigned char seed) {
  for (size_t i = 0; i < sizeof(s->bytes); i++)
    s->bytes[i] = (unsigned char)(seed + i * 7);
}

static bool all_base62(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (!s[i] || !strchr(BASE62, s[i]))
      return false;
  }
  return true;
}

/* Next base62 char after c, wrapping: a different but still valid char. */
static char base62_next(char c) {
  const char *at = strchr(BASE62, c);
  return at[1] ? at[1] : BASE62[0];
}

/* ---- temporary directories, removed at exit even after a failed test ---- */

#define TMP_DIRS_MAX 32
static char tmp_dirs[TMP_DIRS_MAX][64];
static int tmp_dir_count;

static void tmp_dir_remove(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;

  if (!d)
    return;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    /* Tests make files and at most one level of directories. */
    if (unlinkat(dirfd(d), e->d_name, 0) != 0)
      unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR);
  }
  closedir(d);
  rmdir(dir);
}

static void tmp_dirs_remove_all(void) {
  for (int i = 0; i < tmp_dir_count; i++)
    tmp_dir_remove(tmp_dirs[i]);
  tmp_dir_count = 0;
}

static const char *tmp_dir_new(void) {
  static bool registered;
  char *dir;

  if (!registered) {
    atexit(tmp_dirs_remove_all);
    registered = true;
  }
  ASSERT(tmp_dir_count < TMP_DIRS_MAX);
  dir = tmp_dirs[tmp_dir_count];
  snprintf(dir, sizeof(tmp_dirs[0]), "/tmp/tg_test_keys.XXXXXX");
  ASSERT(mkdtemp(dir) != NULL);
  tmp_dir_count++;
  return dir;
}

static void write_file(const char *path, const void *data, size_t len, mode_t mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  ASSERT(fd >= 0);
  ASSERT(fchmod(fd, mode) == 0); /* the umask must not decide the test */
  ASSERT_INT_EQ(write(fd, data, len), (long long)len);
  ASSERT_INT_EQ(close(fd), 0);
}

/* ---- tokens ---- */

TG_TEST(token_generate_shape) {
  setup();
  tg_secret_t secret;
  secret_fill(&secret, 1);
  for (int t = 0; t < TYPE_COUNT; t++) {
    size_t tlen = strlen(type_text[t]);
    for (int round = 0; round < 200; round++) {
      char text[TG_TOKEN_MAX_LEN + 1];
      char prefix[TG_TOKEN_PREFIX_MAX + 1];
      unsigned char digest[TG_DIGEST_BYTES], again[TG_DIGEST_BYTES];
      tg_token_type_t got = (tg_token_type_t)-1;
      tg_problem_t p = {0};

      ASSERT_INT_EQ(tg_token_generate(all_types[t], &secret, text, prefix, digest), TG_OK);
      size_t len = strlen(text);
      ASSERT_INT_EQ(len, tlen + TG_KEY_BODY_LEN + TG_KEY_CHECKSUM_LEN);
      ASSERT(len <= TG_TOKEN_MAX_LEN);
      ASSERT(strncmp(text, type_text[t], tlen) == 0);
      ASSERT(all_base62(text + tlen, TG_KEY_BODY_LEN + TG_KEY_CHECKSUM_LEN));

      ASSERT_INT_EQ(strlen(prefix), tlen + TG_KEY_PREFIX_BODY);
      ASSERT(strncmp(prefix, text, tlen + TG_KEY_PREFIX_BODY) == 0);

      tg_token_digest(&secret, text, len, again);
      ASSERT(memcmp(digest, again, sizeof(digest)) == 0);

      ASSERT_INT_EQ(tg_token_check(text, len, &got, &p), TG_OK);
      ASSERT_INT_EQ(got, all_types[t]);
      ASSERT_INT_EQ(p.code, TG_OK);
      ASSERT_INT_EQ(tg_token_check(text, len, NULL, NULL), TG_OK);
    }
  }
}

TG_TEST(token_compose_fixed_body) {
  setup();
  tg_secret_t secret;
  secret_fill(&secret, 2);
  const char body[] = "FixtureFixtureFixtureFixtureFixtureFixture0";
  char text[TG_TOKEN_MAX_LEN + 1], again[TG_TOKEN_MAX_LEN + 1];
  char prefix[TG_TOKEN_PREFIX_MAX + 1];
  unsigned char digest[TG_DIGEST_BYTES], d2[TG_DIGEST_BYTES];
  ASSERT_INT_EQ(tg_token_compose(TG_TOKEN_API_KEY, body, &secret, text, prefix, digest), TG_OK);
  ASSERT(strncmp(text, "tg_live_FixtureFixture", 22) == 0);
  ASSERT_INT_EQ(strlen(text), 8 + TG_KEY_BODY_LEN + TG_KEY_CHECKSUM_LEN);
  ASSERT_STR_EQ(prefix, "tg_live_FixtureF");
  ASSERT_INT_EQ(tg_token_check(text, strlen(text), NULL, NULL), TG_OK);
  ASSERT(tg_token_verify(&secret, text, strlen(text), digest));
  /* the same body gives the same token: a fixture, not a secret */
  ASSERT_INT_EQ(tg_token_compose(TG_TOKEN_API_KEY, body, &secret, again, prefix, d2), TG_OK);
  ASSERT_STR_EQ(again, text);
  char bad[TG_KEY_BODY_LEN];
  memcpy(bad, body, sizeof(bad));
  bad[5] = '-';
  ASSERT_INT_EQ(tg_token_compose(TG_TOKEN_API_KEY, bad, &secret, again, prefix, d2), TG_EINVAL);
  ASSERT_STR_EQ(again, "");
}

TG_TEST(token_prefix_of_checked_token) {
  setup();
  char prefix[TG_TOKEN_PREFIX_MAX + 1];
  const char *text = "tg_adm_0123456789";
  tg_token_prefix(text, strlen(text), prefix);
  ASSERT_STR_EQ(prefix, "tg_adm_01234567");
  /* Not a token: nothing to display rather than a guess. */
  tg_token_prefix("nope", 4, prefix);
  ASSERT_STR_EQ(prefix, "");
}

/* Bitwise CRC-32 (IEEE, reflected 0xEDB88320), independent of the table in keys.c. */
static uint32_t ref_crc32(const char *data, size_t len) {
  uint32_t crc = 0xffffffffu;
  for (size_t i = 0; i < len; i++) {
    crc ^= (unsigned char)data[i];
    for (int b = 0; b < 8; b++)
      crc = (crc & 1) ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
  }
  return crc ^ 0xffffffffu;
}

/* Build "tg_live_" + body + checksum by hand, the checksum from ref_crc32. */
static size_t build_api_key(char *text, char body_char, char last_char) {
  size_t n = 8;
  memcpy(text, "tg_live_", 8);
  memset(text + n, body_char, TG_KEY_BODY_LEN - 1);
  n += TG_KEY_BODY_LEN - 1;
  text[n++] = last_char;
  uint32_t crc = ref_crc32(text, n);
  for (size_t i = TG_KEY_CHECKSUM_LEN; i-- > 0;) {
    text[n + i] = BASE62[crc % 62];
    crc /= 62;
  }
  n += TG_KEY_CHECKSUM_LEN;
  text[n] = '\0';
  return n;
}

TG_TEST(token_checksum_is_crc32_base62) {
  setup();
  char text[TG_TOKEN_MAX_LEN + 1];
  /* The reference itself: the standard CRC-32 check value. */
  ASSERT_INT_EQ(ref_crc32("123456789", 9), 0xCBF43926u);

  size_t n = build_api_key(text, 'A', 'A');
  ASSERT_INT_EQ(tg_token_check(text, n, NULL, NULL), TG_OK);

  /* A CRC below 62^5 must be zero-padded to six chars ("0....."). */
  bool padded = false;
  for (const char *c = BASE62; *c && !padded; c++) {
    n = build_api_key(text, 'q', *c);
    if (ref_crc32(text, n - TG_KEY_CHECKSUM_LEN) < 916132832u) {
      padded = true;
      ASSERT_INT_EQ(text[n - TG_KEY_CHECKSUM_LEN], '0');
      ASSERT_INT_EQ(tg_token_check(text, n, NULL, NULL), TG_OK);
    }
  }
  ASSERT(padded);
}

TG_TEST(token_check_rejects_every_single_char_change) {
  setup();
  tg_secret_t secret;
  secret_fill(&secret, 3);
  for (int t = 0; t < TYPE_COUNT; t++) {
    char text[TG_TOKEN_MAX_LEN + 1];
    char prefix[TG_TOKEN_PREFIX_MAX + 1];
    unsigned char digest[TG_DIGEST_BYTES];
    ASSERT_INT_EQ(tg_token_generate(all_types[t], &secret, text, prefix, digest), TG_OK);
    size_t len = strlen(text);
    size_t tlen = strlen(type_text[t]);

    /* Any body or checksum char replaced by another base62 char. */
    for (size_t i = tlen; i < len; i++) {
      char saved = text[i];
      tg_problem_t p = {0};
      text[i] = base62_next(saved);
      ASSERT_INT_EQ(tg_token_check(text, len, NULL, &p), TG_EAUTH);
      ASSERT_INT_EQ(p.code, TG_EAUTH);
      ASSERT_STR_CONTAINS(p.detail, "checksum");
      ASSERT(!tg_token_verify(&secret, text, len, digest));
      text[i] = saved;
    }
    ASSERT_INT_EQ(tg_token_check(text, len, NULL, NULL), TG_OK);
  }
}

TG_TEST(token_check_rejects_retyped_token) {
  setup();
  tg_secret_t secret;
  secret_fill(&secret, 4);
  char text[TG_TOKEN_MAX_LEN + 1];
  char prefix[TG_TOKEN_PREFIX_MAX + 1];
  unsigned char digest[TG_DIGEST_BYTES];
  tg_problem_t p = {0};
  /* An admin token relabelled as a session token: the CRC covers the type. */
  ASSERT_INT_EQ(tg_token_generate(TG_TOKEN_ADMIN, &secret, text, prefix, digest), TG_OK);
  memcpy(text, "tg_ses_", 7);
  ASSERT_INT_EQ(tg_token_check(text, strlen(text), NULL, &p), TG_EAUTH);
  ASSERT_STR_CONTAINS(p.detail, "checksum");
}

TG_TEST(token_check_rejects_truncated_and_long) {
  setup();
  tg_secret_t secret;
  secret_fill(&secret, 5);
  for (int t = 0; t < TYPE_COUNT; t++) {
    char text[TG_TOKEN_MAX_LEN + 2];
    char prefix[TG_TOKEN_PREFIX_MAX + 1];
    unsigned char digest[TG_DIGEST_BYTES];
    ASSERT_INT_EQ(tg_token_generate(all_types[t], &secret, text, prefix, digest), TG_OK);
    size_t len = strlen(text);

    for (size_t n = 0; n < len; n++) {
      tg_problem_t p = {0};
      ASSERT_INT_EQ(tg_token_check(text, n, NULL, &p), TG_EAUTH);
      ASSERT_STR_CONTAINS(p.detail, n == 0 ? "empty" : "truncated");
      ASSERT(!tg_token_verify(&secret, text, n, digest));
    }

    /* One more base62 char, and one more NUL counted in len. */
    tg_problem_t p = {0};
    text[len] = 'a';
    text[len + 1] = '\0';
    ASSERT_INT_EQ(tg_token_check(text, len + 1, NULL, &p), TG_EAUTH);
    ASSERT_STR_CONTAINS(p.detail, "too long");
    text[len] = '\0';
    ASSERT_INT_EQ(tg_token_check(text, len + 1, NULL, NULL), TG_EAUTH);
    ASSERT(!tg_token_verify(&secret, text, len + 1, digest));
    ASSERT_INT_EQ(tg_token_check(text, len, NULL, NULL), TG_OK);
  }
}

TG_TEST(token_check_rejects_unknown_type) {
  setup();
  tg_secret_t secret;
  secret_fill(&secret, 6);
  char text[TG_TOKEN_MAX_LEN + 1];
  char prefix[TG_TOKEN_PREFIX_MAX + 1];
  unsigned char digest[TG_DIGEST_BYTES];
  ASSERT_INT_EQ(tg_token_generate(TG_TOKEN_API_KEY, &secret, text, prefix, digest), TG_OK);
  size_t len = strlen(text);

  static const char *const bad[] = {"tg_test_", "TG_LIVE_", "xx_live_", "tg-live_", "ghp_live"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    tg_problem_t p = {0};
    memcpy(text, bad[i], 8);
    ASSERT_INT_EQ(tg_token_check(text, len, NULL, &p), TG_EAUTH);
    ASSERT_STR_CONTAINS(p.detail, "known type");
  }
  tg_problem_t p = {0};
  ASSERT_INT_EQ(tg_token_check("x", 1, NULL, &p), TG_EAUTH);
  ASSERT_STR_CONTAINS(p.detail, "known type");
}

TG_TEST(token_check_rejects_bad_bytes) {
  setup();
  tg_secret_t secret;
  secret_fill(&secret, 7);
  for (int t = 0; t < TYPE_COUNT; t++) {
    char text[TG_TOKEN_MAX_LEN + 1];
    char prefix[TG_TOKEN_PREFIX_MAX + 1];
    unsigned char digest[TG_DIGEST_BYTES];
    ASSERT_INT_EQ(tg_token_generate(all_types[t], &secret, text, prefix, digest), TG_OK);
    size_t len = strlen(text);
    size_t tlen = strlen(type_text[t]);
    const size_t positions[] = {tlen, tlen + 20, len - 2};

    /* Every byte that is not a letter or digit: punctuation, controls, an
     * embedded NUL (len counts it), invalid UTF-8 bytes. */
    for (size_t k = 0; k < sizeof(positions) / sizeof(positions[0]); k++) {
      size_t i = positions[k];
      char saved = text[i];
      for (int c = 0; c < 256; c++) {
        if ((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))
          continue;
        tg_problem_t p = {0};
        text[i] = (char)c;
        ASSERT_INT_EQ(tg_token_check(text, len, NULL, &p), TG_EAUTH);
        ASSERT_STR_CONTAINS(p.detail, "letter or digit");
        ASSERT(!tg_token_verify(&secret, text, len, digest));
      }
      text[i] = saved;
    }

    /* 0xc3 0x28: a UTF-8 lead byte followed by a non-continuation byte. */
    char saved0 = text[tlen + 5], saved1 = text[tlen + 6];
    text[tlen + 5] = (char)0xc3;
    text[tlen + 6] = (char)0x28;
    ASSERT_INT_EQ(tg_token_check(text, len, NULL, NULL), TG_EAUTH);
    text[tlen + 5] = saved0;
    text[tlen + 6] = saved1;
    ASSERT_INT_EQ(tg_token_check(text, len, NULL, NULL), TG_OK);
  }
}

TG_TEST(token_check_rejects_empty) {
  setup();
  tg_problem_t p = {0};
  ASSERT_INT_EQ(tg_token_check("", 0, NULL, &p), TG_EAUTH);
  ASSERT_STR_CONTAINS(p.detail, "empty");
  ASSERT_INT_EQ(tg_token_check("\0", 1, NULL, NULL), TG_EAUTH);
}

TG_TEST(token_digest_keyed_and_deterministic) {
  setup();
  tg_secret_t a, b;
  secret_fill(&a, 10);
  secret_fill(&b, 11);
  char text[TG_TOKEN_MAX_LEN + 1];
  char prefix[TG_TOKEN_PREFIX_MAX + 1];
  unsigned char digest[TG_DIGEST_BYTES], da1[TG_DIGEST_BYTES], da2[TG_DIGEST_BYTES],
      db[TG_DIGEST_BYTES], ref[TG_DIGEST_BYTES];
  ASSERT_INT_EQ(tg_token_generate(TG_TOKEN_API_KEY, &a, text, prefix, digest), TG_OK);
  size_t len = strlen(text);

  tg_token_digest(&a, text, len, da1);
  tg_token_digest(&a, text, len, da2);
  tg_token_digest(&b, text, len, db);
  ASSERT(memcmp(da1, da2, sizeof(da1)) == 0);
  ASSERT(memcmp(da1, digest, sizeof(da1)) == 0);
  ASSERT(memcmp(da1, db, sizeof(da1)) != 0);

  /* The contract: BLAKE2b-256 of the whole text, keyed with the secret. */
  crypto_generichash(ref, sizeof(ref), (const unsigned char *)text, len, a.bytes, sizeof(a.bytes));
  ASSERT(memcmp(da1, ref, sizeof(ref)) == 0);
}

TG_TEST(token_verify) {
  setup();
  tg_secret_t a, b;
  secret_fill(&a, 20);
  secret_fill(&b, 21);
  char text[TG_TOKEN_MAX_LEN + 1], other[TG_TOKEN_MAX_LEN + 1];
  char prefix[TG_TOKEN_PREFIX_MAX + 1];
  unsigned char digest[TG_DIGEST_BYTES], other_digest[TG_DIGEST_BYTES];
  unsigned char bad_digest[TG_DIGEST_BYTES];
  ASSERT_INT_EQ(tg_token_generate(TG_TOKEN_SESSION, &a, text, prefix, digest), TG_OK);
  ASSERT_INT_EQ(tg_token_generate(TG_TOKEN_SESSION, &a, other, prefix, other_digest), TG_OK);
  size_t len = strlen(text);

  ASSERT(tg_token_verify(&a, text, len, digest));
  ASSERT(!tg_token_verify(&b, text, len, digest));
  ASSERT(!tg_token_verify(&a, text, len, other_digest));
  ASSERT(!tg_token_verify(&a, other, strlen(other), digest));
  ASSERT(tg_token_verify(&a, other, strlen(other), other_digest));

  memcpy(bad_digest, digest, sizeof(bad_digest));
  bad_digest[TG_DIGEST_BYTES - 1] ^= 1;
  ASSERT(!tg_token_verify(&a, text, len, bad_digest));

  /* A text that fails the shape check does not verify even if its digest is stored. */
  text[len - 1] = base62_next(text[len - 1]);
  tg_token_digest(&a, text, len, bad_digest);
  ASSERT(!tg_token_verify(&a, text, len, bad_digest));
}

TG_TEST(token_generate_rejects_unknown_type) {
  setup();
  tg_secret_t a;
  secret_fill(&a, 22);
  char text[TG_TOKEN_MAX_LEN + 1];
  char prefix[TG_TOKEN_PREFIX_MAX + 1];
  unsigned char digest[TG_DIGEST_BYTES];
  ASSERT_INT_EQ(tg_token_generate((tg_token_type_t)7, &a, text, prefix, digest), TG_EINVAL);
  ASSERT_STR_EQ(text, "");
}

/* ---- 100,000 API keys ---- */

#define MANY_KEYS 100000
struct many_key {
  char text[TG_TOKEN_MAX_LEN + 1];
  unsigned char digest[TG_DIGEST_BYTES];
};
/* Static, not malloc'd: a failed ASSERT longjmps out without a leak report. */
static struct many_key many_keys[MANY_KEYS];

static int many_key_cmp_text(const void *a, const void *b) {
  return strcmp(((const struct many_key *)a)->text, ((const struct many_key *)b)->text);
}

static int many_key_cmp_digest(const void *a, const void *b) {
  return memcmp(((const struct many_key *)a)->digest, ((const struct many_key *)b)->digest,
                TG_DIGEST_BYTES);
}

TG_TEST(token_100k_distinct_and_verify) {
  setup();
  struct timespec t0, t1;
  tg_secret_t secret;
  char prefix[TG_TOKEN_PREFIX_MAX + 1];

  clock_gettime(CLOCK_MONOTONIC, &t0);
  randombytes_buf(secret.bytes, sizeof(secret.bytes));
  for (size_t i = 0; i < MANY_KEYS; i++)
    ASSERT_INT_EQ(tg_token_generate(TG_TOKEN_API_KEY, &secret, many_keys[i].text, prefix,
                                    many_keys[i].digest),
                  TG_OK);

  qsort(many_keys, MANY_KEYS, sizeof(many_keys[0]), many_key_cmp_text);
  for (size_t i = 1; i < MANY_KEYS; i++)
    ASSERT(strcmp(many_keys[i - 1].text, many_keys[i].text) != 0);

  qsort(many_keys, MANY_KEYS, sizeof(many_keys[0]), many_key_cmp_digest);
  for (size_t i = 0; i < MANY_KEYS; i++) {
    const struct many_key *k = &many_keys[i];
    size_t len = strlen(k->text);
    ASSERT(tg_token_verify(&secret, k->text, len, k->digest));
    if (i + 1 < MANY_KEYS) {
      const struct many_key *next = &many_keys[i + 1];
      ASSERT(memcmp(k->digest, next->digest, TG_DIGEST_BYTES) != 0);
      ASSERT(!tg_token_verify(&secret, k->text, len, next->digest));
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  fprintf(stderr, "  %d keys generated, sorted, verified in %.3f s\n", MANY_KEYS,
          (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
  sodium_memzero(many_keys, sizeof(many_keys));
}

/* ---- constant-time compare and hex ---- */

TG_TEST(ct_equal) {
  setup();
  ASSERT(tg_ct_equal("abcd", "abcd", 4));
  ASSERT(!tg_ct_equal("abcd", "abce", 4));
  ASSERT(tg_ct_equal("x", "y", 0));
}

TG_TEST(hex_round_trip) {
  setup();
  const unsigned char known[] = {0x00, 0xab, 0xff, 0x10};
  char hex[2 * TG_SECRET_BYTES + 1];
  unsigned char bin[TG_SECRET_BYTES], back[TG_SECRET_BYTES];

  tg_hex_encode(known, sizeof(known), hex);
  ASSERT_STR_EQ(hex, "00abff10");
  ASSERT_INT_EQ(tg_hex_decode("00abff10", 8, back, 4), TG_OK);
  ASSERT(memcmp(back, known, 4) == 0);

  randombytes_buf(bin, sizeof(bin));
  tg_hex_encode(bin, sizeof(bin), hex);
  ASSERT_INT_EQ(strlen(hex), 2 * TG_SECRET_BYTES);
  ASSERT_INT_EQ(tg_hex_decode(hex, strlen(hex), back, sizeof(back)), TG_OK);
  ASSERT(memcmp(bin, back, sizeof(bin)) == 0);

  tg_hex_encode(known, 0, hex);
  ASSERT_STR_EQ(hex, "");
}

TG_TEST(hex_decode_rejects) {
  setup();
  unsigned char bin[4];
  ASSERT_INT_EQ(tg_hex_decode("00abff1", 7, bin, 4), TG_EINVAL);     /* short */
  ASSERT_INT_EQ(tg_hex_decode("00abff1020", 10, bin, 4), TG_EINVAL); /* long */
  ASSERT_INT_EQ(tg_hex_decode("00abff10", 8, bin, 3), TG_EINVAL);    /* len mismatch */
  ASSERT_INT_EQ(tg_hex_decode("00abfg10", 8, bin, 4), TG_EINVAL);    /* non-hex */
  ASSERT_INT_EQ(tg_hex_decode("zzzzzzzz", 8, bin, 4), TG_EINVAL);
  ASSERT_INT_EQ(tg_hex_decode("00ab ff1", 8, bin, 4), TG_EINVAL);  /* space */
  ASSERT_INT_EQ(tg_hex_decode("00ab:f10", 8, bin, 4), TG_EINVAL);  /* separator */
  ASSERT_INT_EQ(tg_hex_decode("00ab\0f10", 8, bin, 4), TG_EINVAL); /* NUL inside */
  ASSERT_INT_EQ(tg_hex_decode("0xabff10", 8, bin, 4), TG_EINVAL);
  ASSERT_INT_EQ(tg_hex_decode("\xff\xff\xff\xff\xff\xff\xff\xff", 8, bin, 4), TG_EINVAL);
}

/* ---- server secret ---- */

static const char known_hex[] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

static void secret_known(tg_secret_t *s) {
  for (size_t i = 0; i < sizeof(s->bytes); i++)
    s->bytes[i] = (unsigned char)i;
}

TG_TEST(secret_file_created_0600_and_reloaded) {
  setup();
  const char *dir = tmp_dir_new();
  char path[128];
  tg_secret_t first, again;
  bool created = false;
  tg_problem_t p = {0};
  struct stat st;
  char content[128];

  snprintf(path, sizeof(path), "%s/tollgate.secret", dir);
  ASSERT_INT_EQ(tg_secret_load(NULL, path, true, &first, &created, &p), TG_OK);
  ASSERT(created);
  ASSERT_INT_EQ(p.code, TG_OK);

  ASSERT_INT_EQ(stat(path, &st), 0);
  ASSERT(S_ISREG(st.st_mode));
  ASSERT_INT_EQ(st.st_mode & 0777, 0600);

  /* 64 lowercase hex + '\n', decoding to the bytes returned. */
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  ASSERT(fd >= 0);
  ssize_t n = read(fd, content, sizeof(content));
  close(fd);
  ASSERT_INT_EQ(n, 65);
  ASSERT_INT_EQ(content[64], '\n');
  char hex[65];
  tg_hex_encode(first.bytes, sizeof(first.bytes), hex);
  ASSERT(memcmp(content, hex, 64) == 0);

  created = true;
  ASSERT_INT_EQ(tg_secret_load(NULL, path, false, &again, &created, &p), TG_OK);
  ASSERT(!created);
  ASSERT(memcmp(first.bytes, again.bytes, sizeof(first.bytes)) == 0);

  /* may_create on an existing file loads it and creates nothing. */
  ASSERT_INT_EQ(tg_secret_load(NULL, path, true, &again, &created, &p), TG_OK);
  ASSERT(!created);
  ASSERT(memcmp(first.bytes, again.bytes, sizeof(first.bytes)) == 0);

  /* created may be NULL. */
  ASSERT_INT_EQ(tg_secret_load(NULL, path, false, &again, NULL, NULL), TG_OK);
  tmp_dirs_remove_all();
}

TG_TEST(secret_file_missing_not_created) {
  setup();
  const char *dir = tmp_dir_new();
  char path[128];
  tg_secret_t s;
  bool created = true;
  tg_problem_t p = {0};
  struct stat st;

  snprintf(path, sizeof(path), "%s/absent.secret", dir);
  ASSERT_INT_EQ(tg_secret_load(NULL, path, false, &s, &created, &p), TG_ESECRET);
  ASSERT(!created);
  ASSERT_INT_EQ(p.code, TG_ESECRET);
  ASSERT_STR_EQ(p.field, "secret_file");
  ASSERT_STR_CONTAINS(p.detail, path);
  ASSERT_INT_EQ(stat(path, &st), -1);
  ASSERT_INT_EQ(errno, ENOENT);

  /* Missing directory with may_create: cannot be created, still an error. */
  tg_problem_clear(&p);
  snprintf(path, sizeof(path), "%s/no/such/dir/x.secret", dir);
  ASSERT_INT_EQ(tg_secret_load(NULL, path, true, &s, &created, &p), TG_ESECRET);
  ASSERT(!created);
  ASSERT_STR_CONTAINS(p.detail, path);

  tg_problem_clear(&p);
  ASSERT_INT_EQ(tg_secret_load(NULL, NULL, true, &s, &created, &p), TG_ESECRET);
  ASSERT_INT_EQ(p.code, TG_ESECRET);
  tmp_dirs_remove_all();
}

TG_TEST(secret_file_group_readable_rejected) {
  setup();
  const char *dir = tmp_dir_new();
  char path[128];
  char content[80];
  tg_secret_t s;
  tg_problem_t p = {0};

  snprintf(path, sizeof(path), "%s/open.secret", dir);
  snprintf(content, sizeof(content), "%s\n", known_hex);
  write_file(path, content, strlen(content), 0644);
  ASSERT_INT_EQ(tg_secret_load(NULL, path, false, &s, NULL, &p), TG_ESECRET);
  ASSERT_STR_EQ(p.field, "secret_file");
  ASSERT_STR_CONTAINS(p.detail, path);
  ASSERT_STR_CONTAINS(p.detail, "0644");

  tg_problem_clear(&p);
  ASSERT_INT_EQ(chmod(path, 0604), 0);
  ASSERT_INT_EQ(tg_secret_load(NULL, path, true, &s, NULL, &p), TG_ESECRET);
  ASSERT_STR_CONTAINS(p.detail, "0604");

  /* The same content at 0600 (and 0400) is fine. */
  ASSERT_INT_EQ(chmod(path, 0600), 0);
  ASSERT_INT_EQ(tg_secret_load(NULL, path, false, &s, NULL, NULL), TG_OK);
  ASSERT_INT_EQ(chmod(path, 0400), 0);
  ASSERT_INT_EQ(tg_secret_load(NULL, path, false, &s, NULL, NULL), TG_OK);
  tg_secret_t want;
  secret_known(&want);
  ASSERT(memcmp(s.bytes, want.bytes, sizeof(want.bytes)) == 0);
  tmp_dirs_remove_all();
}

TG_TEST(secret_file_malformed_rejected) {
  setup();
  const char *dir = tmp_dir_new();
  char path[128];
  char content[160];
  tg_secret_t s;
  bool created;

  snprintf(path, sizeof(path), "%s/bad.secret", dir);
  struct {
    const char *what;
    const char *head; /* content = head + tail */
    const char *tail;
  } cases[] = {
      {"63 hex", known_hex + 1, ""},
      {"63 hex + newline", known_hex + 1, "\n"},
      {"65 hex", known_hex, "0"},
      {"two newlines", known_hex, "\n\n"},
      {"trailing data", known_hex, "\nextra"},
      {"trailing space", known_hex, " "},
      {"CRLF", known_hex, "\r\n"},
      {"empty", "", ""},
      {"newline only", "", "\n"},
      {"non-hex", "g00102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", "\n"},
      {"leading space", " 00102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", ""},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    tg_problem_t p = {0};
    snprintf(content, sizeof(content), "%s%s", cases[i].head, cases[i].tail);
    unlink(path);
    write_file(path, content, strlen(content), 0600);
    created = true;
    if (tg_secret_load(NULL, path, true, &s, &created, &p) != TG_ESECRET)
      TG_FAIL_("case \"%s\" was accepted", cases[i].what);
    ASSERT(!created);
    ASSERT_STR_EQ(p.field, "secret_file");
    ASSERT_STR_CONTAINS(p.detail, path);
    ASSERT_STR_CONTAINS(p.detail, "64 hex");
  }

  /* An embedded NUL in place of one hex char. */
  tg_problem_t p = {0};
  memcpy(content, known_hex, 64);
  content[10] = '\0';
  unlink(path);
  write_file(path, content, 64, 0600);
  ASSERT_INT_EQ(tg_secret_load(NULL, path, false, &s, NULL, &p), TG_ESECRET);

  /* Well-formed without the newline is accepted. */
  unlink(path);
  write_file(path, known_hex, 64, 0600);
  ASSERT_INT_EQ(tg_secret_load(NULL, path, false, &s, NULL, NULL), TG_OK);
  tg_secret_t want;
  secret_known(&want);
  ASSERT(memcmp(s.bytes, want.bytes, sizeof(want.bytes)) == 0);
  tmp_dirs_remove_all();
}

TG_TEST(secret_file_symlink_and_directory_rejected) {
  setup();
  const char *dir = tmp_dir_new();
  char target[128], link_path[128], sub[128];
  tg_secret_t s;
  tg_problem_t p = {0};

  snprintf(target, sizeof(target), "%s/real.secret", dir);
  snprintf(link_path, sizeof(link_path), "%s/link.secret", dir);
  write_file(target, known_hex, 64, 0600);
  ASSERT_INT_EQ(symlink(target, link_path), 0);
  ASSERT_INT_EQ(tg_secret_load(NULL, link_path, true, &s, NULL, &p), TG_ESECRET);
  ASSERT_STR_CONTAINS(p.detail, link_path);
  ASSERT_STR_CONTAINS(p.detail, "symbolic link");

  tg_problem_clear(&p);
  snprintf(sub, sizeof(sub), "%s/adir", dir);
  ASSERT_INT_EQ(mkdir(sub, 0700), 0);
  ASSERT_INT_EQ(tg_secret_load(NULL, sub, true, &s, NULL, &p), TG_ESECRET);
  ASSERT_STR_CONTAINS(p.detail, sub);
  rmdir(sub);
  tmp_dirs_remove_all();
}

TG_TEST(secret_env_wins_over_file) {
  setup();
  const char *dir = tmp_dir_new();
  char path[128];
  tg_secret_t s, want, from_file;
  bool created = true;
  struct stat st;

  /* A missing file with may_create: env wins and no file appears. */
  snprintf(path, sizeof(path), "%s/never.secret", dir);
  ASSERT_INT_EQ(tg_secret_load(known_hex, path, true, &s, &created, NULL), TG_OK);
  ASSERT(!created);
  secret_known(&want);
  ASSERT(memcmp(s.bytes, want.bytes, sizeof(want.bytes)) == 0);
  ASSERT_INT_EQ(stat(path, &st), -1);

  /* An existing file with another secret: env still wins. */
  ASSERT_INT_EQ(tg_secret_load(NULL, path, true, &from_file, &created, NULL), TG_OK);
  ASSERT(created);
  ASSERT_INT_EQ(tg_secret_load(known_hex, path, false, &s, &created, NULL), TG_OK);
  ASSERT(!created);
  ASSERT(memcmp(s.bytes, want.bytes, sizeof(want.bytes)) == 0);
  ASSERT(memcmp(s.bytes, from_file.bytes, sizeof(want.bytes)) != 0);
  tmp_dirs_remove_all();
}

TG_TEST(secret_env_bad_rejected) {
  setup();
  char buf[160];
  tg_secret_t s;
  static const char *const bad[] = {
      "",
      known_hex + 1,                                                       /* 63 */
      "00102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f0g", /* non-hex */
      "0x0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
      " 00102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    tg_problem_t p = {0};
    ASSERT_INT_EQ(tg_secret_load(bad[i], "/nonexistent/secret", true, &s, NULL, &p), TG_ESECRET);
    ASSERT_STR_EQ(p.field, "TOLLGATE_SECRET");
    ASSERT_STR_CONTAINS(p.detail, "64 hex");
  }
  /* 65 chars and 64 + newline: exactly 64 means exactly 64. */
  const char *tails[] = {"0", "\n"};
  for (size_t i = 0; i < 2; i++) {
    tg_problem_t p = {0};
    snprintf(buf, sizeof(buf), "%s%s", known_hex, tails[i]);
    ASSERT_INT_EQ(tg_secret_load(buf, NULL, false, &s, NULL, &p), TG_ESECRET);
    /* The detail never echoes the value. */
    ASSERT(strstr(p.detail, "0a0b0c") == NULL);
  }
  /* Out-parameter is wiped on failure. */
  static const tg_secret_t zero;
  memset(&s, 0xaa, sizeof(s));
  ASSERT_INT_EQ(tg_secret_load("zz", NULL, false, &s, NULL, NULL), TG_ESECRET);
  ASSERT(memcmp(&s, &zero, sizeof(s)) == 0);
}

TG_TEST(secret_fingerprint) {
  setup();
  tg_secret_t a, b;
  char fa[33], fa2[33], fb[33];
  unsigned char ref[16];
  char ref_hex[33];
  secret_fill(&a, 30);
  secret_fill(&b, 31);
  tg_secret_fingerprint(&a, fa);
  tg_secret_fingerprint(&a, fa2);
  tg_secret_fingerprint(&b, fb);
  ASSERT_INT_EQ(strlen(fa), 32);
  ASSERT_INT_EQ(strspn(fa, "0123456789abcdef"), 32);
  ASSERT_STR_EQ(fa, fa2);
  ASSERT(strcmp(fa, fb) != 0);

  crypto_generichash(ref, sizeof(ref), (const unsigned char *)"tollgate-secret-check", 21, a.bytes,
                     sizeof(a.bytes));
  tg_hex_encode(ref, sizeof(ref), ref_hex);
  ASSERT_STR_EQ(fa, ref_hex);
}

/* ---- passwords ---- */

TG_TEST(password_round_trip) {
  setup();
  char hash[TG_PWHASH_MAX];
  const char *pw = "correct horse battery staple";
  bool rehash = true;

  ASSERT_INT_EQ(tg_password_hash(pw, strlen(pw), hash), TG_OK);
  ASSERT(strncmp(hash, "$argon2id$", 10) == 0);
  ASSERT_INT_EQ(tg_password_verify(hash, pw, strlen(pw), &rehash), TG_OK);
  ASSERT(!rehash);

  rehash = true;
  ASSERT_INT_EQ(tg_password_verify(hash, "correct horse battery stapler", strlen(pw) + 1, &rehash),
                TG_EAUTH);
  ASSERT(!rehash);
  /* A prefix of the right password (len shorter than the string) is wrong. */
  ASSERT_INT_EQ(tg_password_verify(hash, pw, strlen(pw) - 1, NULL), TG_EAUTH);
}

TG_TEST(password_length_limits) {
  setup();
  char hash[TG_PWHASH_MAX];
  static char long_pw[TG_PASSWORD_MAX + 1];
  memset(long_pw, 'x', sizeof(long_pw));

  ASSERT_INT_EQ(tg_password_hash("", 0, hash), TG_EINVAL);
  ASSERT_INT_EQ(tg_password_hash(long_pw, TG_PASSWORD_MAX + 1, hash), TG_EINVAL);
  ASSERT_INT_EQ(tg_password_verify("$argon2id$x", "", 0, NULL), TG_EAUTH);
  ASSERT_INT_EQ(tg_password_verify("$argon2id$x", long_pw, TG_PASSWORD_MAX + 1, NULL), TG_EAUTH);
}

TG_TEST(password_malformed_hash) {
  setup();
  static char unterminated[TG_PWHASH_MAX + 8];
  bool rehash = true;
  memset(unterminated, 'a', sizeof(unterminated) - 1);

  ASSERT_INT_EQ(tg_password_verify("", "pw", 2, &rehash), TG_EAUTH);
  ASSERT(!rehash);
  ASSERT_INT_EQ(tg_password_verify("not a hash", "pw", 2, NULL), TG_EAUTH);
  ASSERT_INT_EQ(tg_password_verify("$argon2id$v=19$m=65536,t=2,p=1$!!!!$????", "pw", 2, NULL),
                TG_EAUTH);
  ASSERT_INT_EQ(tg_password_verify("$2b$12$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ012",
                                   "pw", 2, NULL),
                TG_EAUTH);
  ASSERT_INT_EQ(tg_password_verify(unterminated, "pw", 2, NULL), TG_EAUTH);
}

TG_TEST(password_weaker_hash_needs_rehash) {
  setup();
  char weak[crypto_pwhash_STRBYTES];
  const char *pw = "hunter2";
  bool rehash = false;

  ASSERT_INT_EQ(crypto_pwhash_str_alg(weak, pw, strlen(pw), crypto_pwhash_OPSLIMIT_MIN,
                                      crypto_pwhash_MEMLIMIT_MIN, crypto_pwhash_ALG_ARGON2ID13),
                0);
  ASSERT_INT_EQ(tg_password_verify(weak, pw, strlen(pw), &rehash), TG_OK);
  ASSERT(rehash);
  ASSERT_INT_EQ(tg_password_verify(weak, "hunter3", 7, &rehash), TG_EAUTH);
  ASSERT(!rehash);
}

TG_TEST_MAIN()
