/*
 * tls.c - OpenSSL plumbing for the gateway (see tls.h).
 *
 * SNI: contexts are built once at start; the servername callback switches
 * the connection to the context whose certificate covers the name. The
 * contexts are never changed afterwards, so workers share them without
 * locks (OpenSSL's SSL_CTX is thread-safe for this use).
 */
#include "gateway/tls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CERTS 32

typedef struct sni_table {
  SSL_CTX *ctx[MAX_CERTS];
  X509 *cert[MAX_CERTS];
  int n;
} sni_table_t;

static sni_table_t sni; /* built at start, read-only afterwards */

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg) {
  (void)ssl;
  (void)arg;
  /* RFC 7301: pick http/1.1 if offered; otherwise go on without ALPN */
  for (unsigned i = 0; i + 1 <= inlen;) {
    unsigned l = in[i];
    if (i + 1 + l > inlen)
      break;
    if (l == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
      *out = in + i + 1;
      *outlen = 8;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + l;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

static int sni_cb(SSL *ssl, int *alert, void *arg) {
  (void)alert;
  (void)arg;
  const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (!name)
    return SSL_TLSEXT_ERR_OK; /* the default certificate */
  for (int i = 0; i < sni.n; i++)
    if (X509_check_host(sni.cert[i], name, 0, 0, NULL) == 1) {
      if (i > 0)
        SSL_set_SSL_CTX(ssl, sni.ctx[i]);
      return SSL_TLSEXT_ERR_OK;
    }
  return SSL_TLSEXT_ERR_OK; /* no match: the default one, as nginx does */
}

static SSL_CTX *server_ctx_one(const char *cert, const char *key, char *err, size_t errlen) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) {
    snprintf(err, errlen, "cannot create a TLS context");
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20");
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
  SSL_CTX_set_tlsext_servername_callback(ctx, sni_cb);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    unsigned long e = ERR_get_error();
    snprintf(err, errlen, "%s / %s: %s", cert, key, e ? ERR_reason_error_string(e) : "bad pair");
    SSL_CTX_free(ctx);
    return NULL;
  }
  return ctx;
}

SSL_CTX *gw_tls_server_ctx(const char *spec, char *err, size_t errlen) {
  char *copy = strdup(spec), *save = NULL;
  if (!copy) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  for (char *pair = strtok_r(copy, ",", &save); pair; pair = strtok_r(NULL, ",", &save)) {
    char *colon = strchr(pair, ':');
    if (!colon || colon == pair || !colon[1]) {
      snprintf(err, errlen, "\"%s\" is not CERT.pem:KEY.pem", pair);
      goto fail;
    }
    *colon = '\0';
    if (sni.n == MAX_CERTS) {
      snprintf(err, errlen, "at most %d certificates", MAX_CERTS);
      goto fail;
    }
    SSL_CTX *ctx = server_ctx_one(pair, colon + 1, err, errlen);
    if (!ctx)
      goto fail;
    sni.ctx[sni.n] = ctx;
    sni.cert[sni.n] = SSL_CTX_get0_certificate(ctx);
    sni.n++;
  }
  free(copy);
  if (sni.n == 0) {
    snprintf(err, errlen, "no certificate given");
    return NULL;
  }
  return sni.ctx[0];
fail:
  free(copy);
  return NULL;
}

SSL_CTX *gw_tls_client_ctx(const char *ca_file, char *err, size_t errlen) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) {
    snprintf(err, errlen, "cannot create a TLS client context");
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  int ok = ca_file && *ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                               : SSL_CTX_set_default_verify_paths(ctx);
  if (ok != 1) {
    snprintf(err, errlen, "cannot load CA certificates from %s",
             ca_file && *ca_file ? ca_file : "the system store");
    SSL_CTX_free(ctx);
    return NULL;
  }
  static const unsigned char alpn[] = "\x08http/1.1";
  SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
  return ctx;
}

SSL *gw_tls_client_new(SSL_CTX *ctx, int fd, const char *host) {
  SSL *ssl = SSL_new(ctx);
  if (!ssl)
    return NULL;
  SSL_set_fd(ssl, fd);
  SSL_set_connect_state(ssl);
  SSL_set_tlsext_host_name(ssl, host);
  /* verify the name, or the IP address when the target is one */
  X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
  if (X509_VERIFY_PARAM_set1_ip_asc(vp, host) != 1)
    X509_VERIFY_PARAM_set1_host(vp, host, 0);
  return ssl;
}

static ssize_t ssl_result(SSL *ssl, int n, bool *rd, bool *wr) {
  int e = SSL_get_error(ssl, n);
  if (e == SSL_ERROR_WANT_READ) {
    *rd = false;
    return GW_IO_AGAIN;
  }
  if (e == SSL_ERROR_WANT_WRITE) {
    *wr = false;
    return GW_IO_AGAIN;
  }
  if (e == SSL_ERROR_ZERO_RETURN)
    return 0;
  ERR_clear_error();
  return GW_IO_ERROR;
}

ssize_t gw_io_read(int fd, SSL *ssl, void *buf, size_t len, bool *rd, bool *wr) {
  if (ssl) {
    int n = SSL_read(ssl, buf, len > 1 << 30 ? 1 << 30 : (int)len);
    return n > 0 ? n : ssl_result(ssl, n, rd, wr);
  }
  for (;;) {
    ssize_t n = read(fd, buf, len);
    if (n >= 0)
      return n;
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN) {
      *rd = false;
      return GW_IO_AGAIN;
    }
    return GW_IO_ERROR;
  }
}

ssize_t gw_io_write(int fd, SSL *ssl, const void *buf, size_t len, bool *rd, bool *wr) {
  if (ssl) {
    int n = SSL_write(ssl, buf, len > 1 << 30 ? 1 << 30 : (int)len);
    return n > 0 ? n : ssl_result(ssl, n, rd, wr);
  }
  for (;;) {
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0)
      return n;
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN) {
      *wr = false;
      return GW_IO_AGAIN;
    }
    return GW_IO_ERROR;
  }
}

int gw_io_handshake(SSL *ssl, bool *rd, bool *wr) {
  int n = SSL_do_handshake(ssl);
  if (n == 1)
    return 1;
  ssize_t r = ssl_result(ssl, n, rd, wr);
  return r == GW_IO_AGAIN ? 0 : -1;
}
