/*
 * tls_quic.h — wolfSSL contexts and sessions for ckt's QUIC connections.
 *
 * Policy, enforced here for both roles: TLS 1.3 only; one cipher suite
 * (ChaCha20-Poly1305 by default, AES-128-GCM on request); X25519 only;
 * Ed25519 signatures only; both sides present a CA-signed Ed25519
 * certificate and verify the peer's against the CA; the client sends and
 * checks SNI "localhost"; ALPN from a table (ckt/1 now).
 */
#ifndef CKT_TLS_QUIC_H
#define CKT_TLS_QUIC_H

#include <stddef.h>
#include <stdint.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include <ngtcp2/ngtcp2_crypto.h>

#include "ckt/identity.h"

#define CKT_ALPN "ckt/1"
#define CKT_SNI "localhost"

typedef struct ckt_tls_config {
  const char *cert_pem; /* this side's certificate */
  size_t cert_len;
  const ckt_ed25519_key *key;
  const char *ca_pem; /* the CA peers must be signed by */
  size_t ca_len;
  int aes_gcm;     /* 0: TLS_CHACHA20_POLY1305_SHA256 only */
  int skip_verify; /* INSECURE: accept any peer certificate */
  /* Known keys of the peers this context meets (tls_known.h): a server
   * context's known client keys, a client context's known server keys;
   * NULL: none.  On CKT_OK the context owns it (ckt_tls_ctx_free() frees
   * it); on an error the caller still does.  Checked in the verify
   * callback once the peer's certificate passed the CA check (in
   * skip-verify mode too: listed keys pass, lockdown refuses the others,
   * and nothing is recorded). */
  struct ckt_known *known;
} ckt_tls_config;

/* Per-connection TLS state.  `ref` must stay the first member: ngtcp2's
 * wolfSSL glue finds it through the session's app data, and the verify
 * callback casts that pointer back to the whole struct. */
typedef struct ckt_tls_link {
  ngtcp2_crypto_conn_ref ref;
  int verify_error;  /* CKT_ERR_* from our certificate checks, 0 if none */
  char why[192];     /* one sentence for the log and the peer */
  char peer_key[65]; /* hex Ed25519 key of the verified peer */
  /* A key the known-keys file may record once the handshake completes
   * (the peer has then proved it holds the private key). */
  int known_pending, known_verified;
  uint8_t known_key[CKT_ED25519_KEY_LEN];
  char known_host[72];
  char known_email[128];
} ckt_tls_link;

/* Makes a QUIC-ready context for the server (server != 0) or client role.
 * CKT_OK, CKT_ERR_FORMAT (certificate), CKT_ERR_KEY_TYPE,
 * CKT_ERR_KEY_MISMATCH, CKT_ERR_NOMEM, CKT_ERR_CRYPTO. */
int ckt_tls_ctx_new(int server, const ckt_tls_config *cfg, WOLFSSL_CTX **out);
void ckt_tls_ctx_free(WOLFSSL_CTX *ctx);

/* A session for one connection; link->ref must be filled by the caller.
 * CKT_OK, CKT_ERR_NOMEM, CKT_ERR_CRYPTO. */
int ckt_tls_session_new(WOLFSSL_CTX *ctx, int server, ckt_tls_link *link,
                        WOLFSSL **out);

/* The handshake is complete: records the peer's key in a writable
 * known-keys file if it is new (decided again: the file may have become
 * read-only meanwhile).  CKT_OK, or CKT_ERR_TLS with link->why set: the
 * connection must be closed. */
int ckt_tls_handshake_done(WOLFSSL *ssl, ckt_tls_link *link);

/* Which application protocol the handshake agreed on: 1 for ckt/1, 0 for
 * none (the ALPN dispatch point). */
int ckt_tls_alpn(WOLFSSL *ssl);

/* The negotiated cipher suite in IANA form ("TLS_CHACHA20_POLY1305_SHA256"),
 * or "(none)". */
const char *ckt_tls_suite(WOLFSSL *ssl);

/* The alert a known-keys refusal sends (access_denied, RFC 8446 6.2: a
 * valid certificate, but access control refused it). */
#define CKT_TLS_ALERT_ACCESS_DENIED 49

/* A sentence for a handshake the peer refused with TLS alert `alert`
 * (certificate_required, unknown_ca, access_denied, ...). */
const char *ckt_tls_alert_text(uint8_t alert);

/* Why this side refuses a handshake it aborts with `alert`, when no
 * certificate check of ours said more (server: 1 if we are the server). */
const char *ckt_tls_refusal_text(uint8_t alert, int server);

#endif
