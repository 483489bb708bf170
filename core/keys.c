/*
 * keys.c - token generation and checking, keyed token digests, the server
 * secret (environment or file) and password hashing. The token format and
 * the at-rest model are in keys.h.
 *
 * Invariants:
 * - Token text, the server secret and passwords never reach a problem
 *   detail, a log or the heap through this file; every stack buffer that
 *   held a copy of one is wiped with sodium_memzero before return.
 * - Digests are compared only in constant time (sodium_memcmp).
 * - tg_token_check accepts exactly the texts tg_token_generate can produce
 *   (one known type, exact length, base62 body, matching checksum), so a
 *   stored prefix is always type + TG_KEY_PREFIX_BODY base62 chars.
 * - The secret file is created only when the caller allows it, with O_EXCL
 *   and mode 0600, and is unlinked again if anything after open failed: a
 *   half-written secret never survives to be loaded later.
 */
#include "core/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(TG_PWHASH_MAX == crypto_pwhash_STRBYTES, "TG_PWHASH_MAX must match libsodium");
_Static_assert(TG_SECRET_BYTES == crypto_generichash_KEYBYTES, "secret is a generichash key");
_Static_assert(TG_DIGEST_BYTES == crypto_generichash_BYTES, "digest is BLAKE2b-256");
_Static_assert(TG_TOKEN_MAX_LEN >= 8 + TG_KEY_BODY_LEN + TG_KEY_CHECKSUM_LEN, "token fits");
_Static_assert(TG_TOKEN_PREFIX_MAX >= 8 + TG_KEY_PREFIX_BODY, "prefix fits");

#define SECRET_HEX_LEN    (TG_SECRET_BYTES * 2)
#define FINGERPRINT_BYTES 16 /* BLAKE2b-128 */
#define PWHASH_OPSLIMIT   crypto_pwhash_OPSLIMIT_INTERACTIVE
#define PWHASH_MEMLIMIT   crypto_pwhash_MEMLIMIT_INTERACTIVE

struct token_kind {
  tg_token_type_t type;
  const char *text;
  size_t len;
};

#define TOKEN_KIND(t, s)                                                                           \
  { (t), (s), sizeof(s) - 1 }
static const struct token_kind token_kinds[] = {
    TOKEN_KIND(TG_TOKEN_API_KEY, "tg_live_"),
    TOKEN_KIND(TG_TOKEN_ADMIN, "tg_adm_"),
    TOKEN_KIND(TG_TOKEN_SESSION, "tg_ses_"),
    TOKEN_KIND(TG_TOKEN_ACCOUNT, "tg_act_"),
};
#define TOKEN_KIND_COUNT (sizeof(token_kinds) / sizeof(token_kinds[0]))

static const char base62_alphabet[62] = "0123456789"
                                        "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "abcdefghijklmnopqrstuvwxyz";

/* CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), as zlib computes it. */
static const uint32_t crc32_table[256] = {
    0x00000000u, 0x77073096u, 0xee0e612cu, 0x990951bau, 0x076dc419u, 0x706af48fu, 0xe963a535u,
    0x9e6495a3u, 0x0edb8832u, 0x79dcb8a4u, 0xe0d5e91eu, 0x97d2d988u, 0x09b64c2bu, 0x7eb17cbdu,
    0xe7b82d07u, 0x90bf1d91u, 0x1db71064u, 0x6ab020f2u, 0xf3b97148u, 0x84be41deu, 0x1adad47du,
    0x6ddde4ebu, 0xf4d4b551u, 0x83d385c7u, 0x136c9856u, 0x646ba8c0u, 0xfd62f97au, 0x8a65c9ecu,
    0x14015c4fu, 0x63066cd9u, 0xfa0f3d63u, 0x8d080df5u, 0x3b6e20c8u, 0x4c69105eu, 0xd56041e4u,
    0xa2677172u, 0x3c03e4d1u, 0x4b04d447u, 0xd20d85fdu, 0xa50ab56bu, 0x35b5a8fau, 0x42b2986cu,
    0xdbbbc9d6u, 0xacbcf940u, 0x32d86ce3u, 0x45df5c75u, 0xdcd60dcfu, 0xabd13d59u, 0x26d930acu,
    0x51de003au, 0xc8d75180u, 0xbfd06116u, 0x21b4f4b5u, 0x56b3c423u, 0xcfba9599u, 0xb8bda50fu,
    0x2802b89eu, 0x5f058808u, 0xc60cd9b2u, 0xb10be924u, 0x2f6f7c87u, 0x58684c11u, 0xc1611dabu,
    0xb6662d3du, 0x76dc4190u, 0x01db7106u, 0x98d220bcu, 0xefd5102au, 0x71b18589u, 0x06b6b51fu,
    0x9fbfe4a5u, 0xe8b8d433u, 0x7807c9a2u, 0x0f00f934u, 0x9609a88eu, 0xe10e9818u, 0x7f6a0dbbu,
    0x086d3d2du, 0x91646c97u, 0xe6635c01u, 0x6b6b51f4u, 0x1c6c6162u, 0x856530d8u, 0xf262004eu,
    0x6c0695edu, 0x1b01a57bu, 0x8208f4c1u, 0xf50fc457u, 0x65b0d9c6u, 0x12b7e950u, 0x8bbeb8eau,
    0xfcb9887cu, 0x62dd1ddfu, 0x15da2d49u, 0x8cd37cf3u, 0xfbd44c65u, 0x4db26158u, 0x3ab551ceu,
    0xa3bc0074u, 0xd4bb30e2u, 0x4adfa541u, 0x3dd895d7u, 0xa4d1c46du, 0xd3d6f4fbu, 0x4369e96au,
    0x346ed9fcu, 0xad678846u, 0xda60b8d0u, 0x44042d73u, 0x33031de5u, 0xaa0a4c5fu, 0xdd0d7cc9u,
    0x5005713cu, 0x270241aau, 0xbe0b1010u, 0xc90c2086u, 0x5768b525u, 0x206f85b3u, 0xb966d409u,
    0xce61e49fu, 0x5edef90eu, 0x29d9c998u, 0xb0d09822u, 0xc7d7a8b4u, 0x59b33d17u, 0x2eb40d81u,
    0xb7bd5c3bu, 0xc0ba6cadu, 0xedb88320u, 0x9abfb3b6u, 0x03b6e20cu, 0x74b1d29au, 0xead54739u,
    0x9dd277afu, 0x04db2615u, 0x73dc1683u, 0xe3630b12u, 0x94643b84u, 0x0d6d6a3eu, 0x7a6a5aa8u,
    0xe40ecf0bu, 0x9309ff9du, 0x0a00ae27u, 0x7d079eb1u, 0xf00f9344u, 0x8708a3d2u, 0x1e01f268u,
    0x6906c2feu, 0xf762575du, 0x806567cbu, 0x196c3671u, 0x6e6b06e7u, 0xfed41b76u, 0x89d32be0u,
    0x10da7a5au, 0x67dd4accu, 0xf9b9df6fu, 0x8ebeeff9u, 0x17b7be43u, 0x60b08ed5u, 0xd6d6a3e8u,
    0xa1d1937eu, 0x38d8c2c4u, 0x4fdff252u, 0xd1bb67f1u, 0xa6bc5767u, 0x3fb506ddu, 0x48b2364bu,
    0xd80d2bdau, 0xaf0a1b4cu, 0x36034af6u, 0x41047a60u, 0xdf60efc3u, 0xa867df55u, 0x316e8eefu,
    0x4669be79u, 0xcb61b38cu, 0xbc66831au, 0x256fd2a0u, 0x5268e236u, 0xcc0c7795u, 0xbb0b4703u,
    0x220216b9u, 0x5505262fu, 0xc5ba3bbeu, 0xb2bd0b28u, 0x2bb45a92u, 0x5cb36a04u, 0xc2d7ffa7u,
    0xb5d0cf31u, 0x2cd99e8bu, 0x5bdeae1du, 0x9b64c2b0u, 0xec63f226u, 0x756aa39cu, 0x026d930au,
    0x9c0906a9u, 0xeb0e363fu, 0x72076785u, 0x05005713u, 0x95bf4a82u, 0xe2b87a14u, 0x7bb12baeu,
    0x0cb61b38u, 0x92d28e9bu, 0xe5d5be0du, 0x7cdcefb7u, 0x0bdbdf21u, 0x86d3d2d4u, 0xf1d4e242u,
    0x68ddb3f8u, 0x1fda836eu, 0x81be16cdu, 0xf6b9265bu, 0x6fb077e1u, 0x18b74777u, 0x88085ae6u,
    0xff0f6a70u, 0x66063bcau, 0x11010b5cu, 0x8f659effu, 0xf862ae69u, 0x616bffd3u, 0x166ccf45u,
    0xa00ae278u, 0xd70dd2eeu, 0x4e048354u, 0x3903b3c2u, 0xa7672661u, 0xd06016f7u, 0x4969474du,
    0x3e6e77dbu, 0xaed16a4au, 0xd9d65adcu, 0x40df0b66u, 0x37d83bf0u, 0xa9bcae53u, 0xdebb9ec5u,
    0x47b2cf7fu, 0x30b5ffe9u, 0xbdbdf21cu, 0xcabac28au, 0x53b39330u, 0x24b4a3a6u, 0xbad03605u,
    0xcdd70693u, 0x54de5729u, 0x23d967bfu, 0xb3667a2eu, 0xc4614ab8u, 0x5d681b02u, 0x2a6f2b94u,
    0xb40bbe37u, 0xc30c8ea1u, 0x5a05df1bu, 0x2d02ef8du,
};

/* Slice-by-8 tables (Intel's "slicing-by-8"): crc8[k][b] is the CRC of
 * byte b followed by k zero bytes, so eight bytes fold in at once. The
 * gateway checks a key's checksum on every request with a new key; this
 * is 4x the byte-wise loop. Built once, before main. */
static uint32_t crc8[8][256];

__attribute__((constructor)) static void crc8_init(void) {
  for (int b = 0; b < 256; b++) {
    crc8[0][b] = crc32_table[b];
    for (int k = 1; k < 8; k++)
      crc8[k][b] = crc32_table[crc8[k - 1][b] & 0xffu] ^ (crc8[k - 1][b] >> 8);
  }
}

static uint32_t crc32_ieee(const char *data, size_t len) {
  const unsigned char *p = (const unsigned char *)data;
  uint32_t crc = 0xffffffffu;
  for (; len >= 8; p += 8, len -= 8) {
    uint32_t lo =
        crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
    uint32_t hi =
        (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
    crc = crc8[7][lo & 0xffu] ^ crc8[6][(lo >> 8) & 0xffu] ^ crc8[5][(lo >> 16) & 0xffu] ^
          crc8[4][lo >> 24] ^ crc8[3][hi & 0xffu] ^ crc8[2][(hi >> 8) & 0xffu] ^
          crc8[1][(hi >> 16) & 0xffu] ^ crc8[0][hi >> 24];
  }
  while (len--)
    crc = crc32_table[(crc ^ *p++) & 0xffu] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

/* 62^6 > 2^32, so six digits hold any CRC-32 and the encoding is injective. */
static void checksum_encode(uint32_t crc, char out[TG_KEY_CHECKSUM_LEN]) {
  for (size_t i = TG_KEY_CHECKSUM_LEN; i-- > 0;) {
    out[i] = base62_alphabet[crc % 62u];
    crc /= 62u;
  }
}

/* A table: every request's key is checked, ~45 characters of it. */
static const bool base62_byte[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1,
    ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1,
    ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1,
    ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1,
    ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1,
    ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1,
    ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

static bool is_base62(unsigned char c) {
  return base62_byte[c];
}

/*
 * Fill out[0..n) with uniform base62 chars. One randombytes_buf call per
 * token instead of one randombytes_uniform(62) per char: with the sysrandom
 * backend each randombytes_uniform is a getrandom() syscall, 43 per token.
 * Bytes >= 248 (= 4 * 62) are rejected so that byte % 62 stays exactly
 * uniform, which is the same rejection randombytes_uniform does on 32 bits.
 */
static void random_base62(char *out, size_t n) {
  unsigned char pool[64];
  size_t used = sizeof(pool);
  size_t i = 0;

  while (i < n) {
    if (used == sizeof(pool)) {
      randombytes_buf(pool, sizeof(pool));
      used = 0;
    }
    unsigned char b = pool[used++];
    if (b >= 248)
      continue;
    out[i++] = base62_alphabet[b % 62u];
  }
  sodium_memzero(pool, sizeof(pool));
}

/* The kind whose type text starts `text`, or NULL. */
static const struct token_kind *token_kind_of(const char *text, size_t len) {
  for (size_t i = 0; i < TOKEN_KIND_COUNT; i++) {
    if (len >= token_kinds[i].len && memcmp(text, token_kinds[i].text, token_kinds[i].len) == 0)
      return &token_kinds[i];
  }
  return NULL;
}

/* True if text[0..len) is a proper beginning of some type text ("tg_l"). */
static bool is_partial_type(const char *text, size_t len) {
  for (size_t i = 0; i < TOKEN_KIND_COUNT; i++) {
    if (len < token_kinds[i].len && memcmp(text, token_kinds[i].text, len) == 0)
      return true;
  }
  return false;
}

int tg_keys_init(void) {
  return sodium_init() < 0 ? TG_ESECRET : TG_OK;
}

int tg_token_compose(tg_token_type_t type, const char body[TG_KEY_BODY_LEN],
                     const tg_secret_t *secret, char *text, char *prefix,
                     unsigned char digest[TG_DIGEST_BYTES]) {
  const struct token_kind *kind = NULL;
  size_t n;

  for (size_t i = 0; i < TOKEN_KIND_COUNT; i++) {
    if (token_kinds[i].type == type)
      kind = &token_kinds[i];
  }
  for (size_t i = 0; kind && i < TG_KEY_BODY_LEN; i++)
    if (!is_base62((unsigned char)body[i]))
      kind = NULL;
  if (!kind) {
    text[0] = '\0';
    prefix[0] = '\0';
    return TG_EINVAL;
  }

  memcpy(text, kind->text, kind->len);
  n = kind->len;
  memcpy(text + n, body, TG_KEY_BODY_LEN);
  n += TG_KEY_BODY_LEN;
  checksum_encode(crc32_ieee(text, n), text + n);
  n += TG_KEY_CHECKSUM_LEN;
  text[n] = '\0';

  tg_token_prefix(text, n, prefix);
  tg_token_digest(secret, text, n, digest);
  return TG_OK;
}

int tg_token_generate(tg_token_type_t type, const tg_secret_t *secret, char *text, char *prefix,
                      unsigned char digest[TG_DIGEST_BYTES]) {
  char body[TG_KEY_BODY_LEN];
  random_base62(body, TG_KEY_BODY_LEN);
  int rc = tg_token_compose(type, body, secret, text, prefix, digest);
  sodium_memzero(body, sizeof(body));
  return rc;
}

/*
 * Details name the reason but never echo the text: a rejected token may
 * still be a real key with one typo.
 */
int tg_token_check(const char *text, size_t len, tg_token_type_t *type, tg_problem_t *p) {
  const struct token_kind *kind;
  char expected[TG_KEY_CHECKSUM_LEN];
  size_t want;

  if (!text || len == 0)
    return tg_problem_set(p, TG_EAUTH, NULL, "The token is empty.");
  kind = token_kind_of(text, len);
  if (!kind) {
    if (is_partial_type(text, len))
      return tg_problem_set(p, TG_EAUTH, NULL, "The token is truncated.");
    return tg_problem_set(p, TG_EAUTH, NULL,
                          "The token does not start with a known type "
                          "(tg_live_, tg_adm_, tg_ses_ or tg_act_).");
  }

  want = kind->len + TG_KEY_BODY_LEN + TG_KEY_CHECKSUM_LEN;
  if (len < want)
    return tg_problem_set(p, TG_EAUTH, NULL, "The token is truncated.");
  if (len > want)
    return tg_problem_set(p, TG_EAUTH, NULL, "The token is too long.");

  for (size_t i = kind->len; i < len; i++) {
    if (!is_base62((unsigned char)text[i]))
      return tg_problem_set(p, TG_EAUTH, NULL,
                            "The token contains a character that is not a letter or digit.");
  }

  /* Not secret: the checksum is public, so a plain memcmp is fine here. */
  checksum_encode(crc32_ieee(text, len - TG_KEY_CHECKSUM_LEN), expected);
  if (memcmp(expected, text + len - TG_KEY_CHECKSUM_LEN, TG_KEY_CHECKSUM_LEN) != 0)
    return tg_problem_set(p, TG_EAUTH, NULL,
                          "The token has a wrong checksum; it was mistyped or damaged.");

  if (type)
    *type = kind->type;
  return TG_OK;
}

void tg_token_digest(const tg_secret_t *secret, const char *text, size_t len,
                     unsigned char digest[TG_DIGEST_BYTES]) {
  crypto_generichash(digest, TG_DIGEST_BYTES, (const unsigned char *)text, len, secret->bytes,
                     sizeof(secret->bytes));
}

bool tg_token_verify(const tg_secret_t *secret, const char *text, size_t len,
                     const unsigned char digest[TG_DIGEST_BYTES]) {
  unsigned char actual[TG_DIGEST_BYTES];
  bool ok;

  if (tg_token_check(text, len, NULL, NULL) != TG_OK)
    return false;
  tg_token_digest(secret, text, len, actual);
  ok = sodium_memcmp(actual, digest, TG_DIGEST_BYTES) == 0;
  sodium_memzero(actual, sizeof(actual));
  return ok;
}

/* Defensive on unchecked input: anything that is not a token yields "". */
void tg_token_prefix(const char *text, size_t len, char prefix[TG_TOKEN_PREFIX_MAX + 1]) {
  const struct token_kind *kind = text ? token_kind_of(text, len) : NULL;
  size_t n;

  if (!kind || len < kind->len + TG_KEY_PREFIX_BODY) {
    prefix[0] = '\0';
    return;
  }
  n = kind->len + TG_KEY_PREFIX_BODY;
  memcpy(prefix, text, n);
  prefix[n] = '\0';
}

bool tg_ct_equal(const void *a, const void *b, size_t len) {
  return sodium_memcmp(a, b, len) == 0;
}

/* sodium_bin2hex/hex2bin run in constant time, which matters for secrets. */
void tg_hex_encode(const unsigned char *bin, size_t len, char *hex) {
  sodium_bin2hex(hex, len * 2 + 1, bin, len);
}

int tg_hex_decode(const char *hex, size_t hexlen, unsigned char *bin, size_t len) {
  size_t got = 0;

  if (!hex || len > SIZE_MAX / 2 || hexlen != len * 2)
    return TG_EINVAL;
  /* No ignore set and no hex_end: any non-hex char or leftover fails. */
  if (sodium_hex2bin(bin, len, hex, hexlen, NULL, &got, NULL) != 0 || got != len) {
    sodium_memzero(bin, len);
    return TG_EINVAL;
  }
  return TG_OK;
}

static int secret_from_env(const char *env_hex, tg_secret_t *out, tg_problem_t *p) {
  /* strnlen: a longer value is wrong whatever follows, no need to scan it. */
  size_t n = strnlen(env_hex, SECRET_HEX_LEN + 1);

  if (n != SECRET_HEX_LEN || tg_hex_decode(env_hex, n, out->bytes, sizeof(out->bytes)) != TG_OK)
    return tg_problem_set(p, TG_ESECRET, "TOLLGATE_SECRET",
                          "TOLLGATE_SECRET must be exactly %d hex characters "
                          "(%d random bytes).",
                          SECRET_HEX_LEN, TG_SECRET_BYTES);
  return TG_OK;
}

/*
 * Read and parse an existing secret file. A missing file sets *missing and
 * returns TG_ESECRET without touching p, so the caller can decide whether
 * to create it or to report it.
 */
static int secret_read_file(const char *path, tg_secret_t *out, bool *missing, tg_problem_t *p) {
  int result = TG_ESECRET;
  int fd = -1;
  /* 64 hex + '\n' + one more byte, to notice trailing data. */
  char buf[SECRET_HEX_LEN + 2];
  size_t n = 0;
  struct stat st;

  *missing = false;
  fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENOENT)
      *missing = true;
    else if (errno == ELOOP)
      tg_problem_set(p, TG_ESECRET, "secret_file",
                     "The secret file %s is a symbolic link; point secret_file at the file "
                     "itself.",
                     path);
    else
      tg_problem_set(p, TG_ESECRET, "secret_file", "The secret file %s cannot be opened: %s.", path,
                     strerror(errno));
    goto out;
  }
  if (fstat(fd, &st) != 0) {
    tg_problem_set(p, TG_ESECRET, "secret_file", "The secret file %s cannot be examined: %s.", path,
                   strerror(errno));
    goto out;
  }
  if (!S_ISREG(st.st_mode)) {
    tg_problem_set(p, TG_ESECRET, "secret_file", "The secret file %s is not a regular file.", path);
    goto out;
  }
  if (st.st_mode & 077) {
    tg_problem_set(p, TG_ESECRET, "secret_file",
                   "The secret file %s is accessible to group or others (mode %04o); "
                   "run `chmod 600` on it.",
                   path, (unsigned)(st.st_mode & 07777));
    goto out;
  }

  while (n < sizeof(buf)) {
    ssize_t r = read(fd, buf + n, sizeof(buf) - n);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      tg_problem_set(p, TG_ESECRET, "secret_file", "The secret file %s cannot be read: %s.", path,
                     strerror(errno));
      goto out;
    }
    if (r == 0)
      break;
    n += (size_t)r;
  }
  if (!(n == SECRET_HEX_LEN || (n == SECRET_HEX_LEN + 1 && buf[SECRET_HEX_LEN] == '\n')) ||
      tg_hex_decode(buf, SECRET_HEX_LEN, out->bytes, sizeof(out->bytes)) != TG_OK) {
    tg_problem_set(p, TG_ESECRET, "secret_file",
                   "The secret file %s must hold exactly %d hex characters, optionally "
                   "followed by one newline.",
                   path, SECRET_HEX_LEN);
    goto out;
  }
  result = TG_OK;

out:
  if (fd >= 0)
    close(fd);
  sodium_memzero(buf, sizeof(buf));
  return result;
}

/*
 * fsync the directory holding `path`, so the new name survives a crash as
 * surely as the digests the store commits under this secret: losing the file
 * but keeping the digests would invalidate every key.
 */
static int sync_parent_dir(const char *path) {
  char dir[4096];
  const char *slash = strrchr(path, '/');
  size_t n;
  int fd;
  int rc;

  if (!slash) {
    memcpy(dir, ".", 2);
  } else {
    n = slash == path ? 1 : (size_t)(slash - path);
    if (n >= sizeof(dir)) {
      errno = ENAMETOOLONG;
      return -1;
    }
    memcpy(dir, path, n);
    dir[n] = '\0';
  }
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  rc = fsync(fd);
  close(fd);
  return rc;
}

/*
 * Create the secret file with fresh random bytes into *out. EEXIST (someone
 * created it since our open) sets *exists without touching p.
 */
static int secret_create_file(const char *path, tg_secret_t *out, bool *exists, tg_problem_t *p) {
  int result = TG_ESECRET;
  int fd = -1;
  bool made = false;
  char buf[SECRET_HEX_LEN + 2]; /* hex + '\n' + NUL from tg_hex_encode */
  size_t off = 0;
  const size_t total = SECRET_HEX_LEN + 1;

  *exists = false;
  fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST)
      *exists = true;
    else
      tg_problem_set(p, TG_ESECRET, "secret_file", "The secret file %s cannot be created: %s.",
                     path, strerror(errno));
    goto out;
  }
  made = true;

  randombytes_buf(out->bytes, sizeof(out->bytes));
  tg_hex_encode(out->bytes, sizeof(out->bytes), buf);
  buf[SECRET_HEX_LEN] = '\n';

  while (off < total) {
    ssize_t w = write(fd, buf + off, total - off);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      tg_problem_set(p, TG_ESECRET, "secret_file", "The secret file %s cannot be written: %s.",
                     path, strerror(errno));
      goto out;
    }
    off += (size_t)w;
  }
  if (fsync(fd) != 0) {
    tg_problem_set(p, TG_ESECRET, "secret_file", "The secret file %s cannot be synced: %s.", path,
                   strerror(errno));
    goto out;
  }
  {
    int fd_closing = fd;
    fd = -1;
    if (close(fd_closing) != 0) {
      tg_problem_set(p, TG_ESECRET, "secret_file", "The secret file %s cannot be closed: %s.", path,
                     strerror(errno));
      goto out;
    }
  }
  if (sync_parent_dir(path) != 0) {
    tg_problem_set(p, TG_ESECRET, "secret_file",
                   "The directory of the secret file %s cannot be synced: %s.", path,
                   strerror(errno));
    goto out;
  }
  result = TG_OK;

out:
  if (fd >= 0)
    close(fd);
  if (result != TG_OK && made)
    unlink(path);
  sodium_memzero(buf, sizeof(buf));
  return result;
}

int tg_secret_load(const char *env_hex, const char *path, bool may_create, tg_secret_t *out,
                   bool *created, tg_problem_t *p) {
  int result;
  bool missing = false;
  bool exists = false;

  if (created)
    *created = false;

  if (env_hex) {
    result = secret_from_env(env_hex, out, p);
    goto out;
  }
  if (!path || !*path) {
    result = tg_problem_set(p, TG_ESECRET, "secret_file",
                            "No server secret is configured: set TOLLGATE_SECRET or secret_file.");
    goto out;
  }

  result = secret_read_file(path, out, &missing, p);
  if (result == TG_OK || !missing)
    goto out;

  if (!may_create) {
    result = tg_problem_set(p, TG_ESECRET, "secret_file",
                            "The secret file %s does not exist. A new secret is only created "
                            "for a store without keys; restore the file or set TOLLGATE_SECRET.",
                            path);
    goto out;
  }
  result = secret_create_file(path, out, &exists, p);
  if (result == TG_OK) {
    if (created)
      *created = true;
    goto out;
  }
  if (!exists)
    goto out;

  /* Lost a creation race to another process: use the secret it wrote. */
  result = secret_read_file(path, out, &missing, p);
  if (result != TG_OK && missing)
    result = tg_problem_set(p, TG_ESECRET, "secret_file",
                            "The secret file %s appeared and vanished while it was being "
                            "created.",
                            path);

out:
  if (result != TG_OK)
    sodium_memzero(out, sizeof(*out));
  return result;
}

void tg_secret_fingerprint(const tg_secret_t *secret, char fp[33]) {
  static const char label[] = "tollgate-secret-check";
  unsigned char h[FINGERPRINT_BYTES];

  crypto_generichash(h, sizeof(h), (const unsigned char *)label, sizeof(label) - 1, secret->bytes,
                     sizeof(secret->bytes));
  tg_hex_encode(h, sizeof(h), fp);
}

int tg_password_hash(const char *password, size_t len, char *out) {
  out[0] = '\0';
  if (!password || len == 0 || len > TG_PASSWORD_MAX)
    return TG_EINVAL;
  /* The only runtime failure of argon2 here is allocating its memlimit. */
  if (crypto_pwhash_str_alg(out, password, len, PWHASH_OPSLIMIT, PWHASH_MEMLIMIT,
                            crypto_pwhash_ALG_ARGON2ID13) != 0) {
    out[0] = '\0';
    return TG_ENOMEM;
  }
  return TG_OK;
}

int tg_password_verify(const char *hash, const char *password, size_t len, bool *needs_rehash) {
  int result = TG_EAUTH;
  /* libsodium takes a crypto_pwhash_STRBYTES array; a shorter caller string
   * is copied into one so that nothing past its NUL is ever read. */
  char copy[crypto_pwhash_STRBYTES] = {0};
  size_t hlen;

  if (needs_rehash)
    *needs_rehash = false;
  /* No hash can exist for a password we would refuse to hash. */
  if (!hash || !password || len == 0 || len > TG_PASSWORD_MAX)
    goto out;
  hlen = strnlen(hash, sizeof(copy));
  if (hlen == sizeof(copy))
    goto out;
  memcpy(copy, hash, hlen);

  if (crypto_pwhash_str_verify(copy, password, len) != 0)
    goto out;
  /* The argon2id-specific check (not crypto_pwhash_str_needs_rehash) also
   * flags argon2i hashes; it flags any limits other than ours, stronger too. */
  if (needs_rehash)
    *needs_rehash =
        crypto_pwhash_argon2id_str_needs_rehash(copy, PWHASH_OPSLIMIT, PWHASH_MEMLIMIT) != 0;
  result = TG_OK;

out:
  return result;
}
