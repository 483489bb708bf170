/*
 * tls.h - TLS for the gateway (OpenSSL): the server side on
 * gateway_tls_listen with SNI over several certificates and ALPN
 * "http/1.1", the client side for https:// upstream targets with
 * certificate and host name verification, and non-blocking I/O helpers
 * that make a plain socket and a TLS one look alike to the workers.
 */
#ifndef GW_TLS_H
#define GW_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/*
 * Server context from "CERT.pem:KEY.pem[,CERT2.pem:KEY2.pem...]": the
 * first pair is the default; a client's SNI name picks the pair whose
 * certificate matches it (X509_check_host). TLS 1.2 and 1.3 only, forward-
 * secret AEAD suites for 1.2, ALPN http/1.1. NULL with err on failure.
 */
SSL_CTX *gw_tls_server_ctx(const char *spec, char *err, size_t errlen);

/* Client context for upstreams: peer verification on, against ca_file
 * (PEM bundle) or, when it is NULL or empty, the system CA store. */
SSL_CTX *gw_tls_client_ctx(const char *ca_file, char *err, size_t errlen);

/* A client-side SSL for fd that checks the upstream's name `host`. */
SSL *gw_tls_client_new(SSL_CTX *ctx, int fd, const char *host);

#define GW_IO_AGAIN (-2) /* would block: wait for the readiness flag it cleared */
#define GW_IO_ERROR (-1)

/*
 * Read or write on fd, through ssl when it is not NULL. Returns bytes
 * (> 0), 0 at EOF (read only), GW_IO_AGAIN after clearing *rd or *wr (the
 * readiness the operation waits for: TLS may need to write to read),
 * or GW_IO_ERROR.
 */
ssize_t gw_io_read(int fd, SSL *ssl, void *buf, size_t len, bool *rd, bool *wr);
ssize_t gw_io_write(int fd, SSL *ssl, const void *buf, size_t len, bool *rd, bool *wr);

/* Drive a handshake: 1 done, 0 in progress (a flag cleared), -1 failed. */
int gw_io_handshake(SSL *ssl, bool *rd, bool *wr);

#endif
