/*
 * test_deps.c — the bootstrap's wolfSSL does what ckt needs: a QUIC-TLS
 * handshake in memory with mutual Ed25519 certificates made by ckt,
 * ChaCha20-Poly1305 and X25519, and CRYPTO data that ends inside and
 * exactly after a handshake message header (the case our
 * quic_record_append patch fixes).
 */
#include <criterion/criterion.h>
#include <string.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/quic.h>

#include "ckt/identity.h"

#define LEVELS 4
#define QUEUE_MAX 32768

typedef struct side {
  WOLFSSL_CTX *ctx;
  WOLFSSL *ssl;
  uint8_t out[LEVELS][QUEUE_MAX]; /* CRYPTO data this side has to send */
  size_t out_len[LEVELS];
  int alert;
} side;

static int set_secrets(WOLFSSL *ssl, WOLFSSL_ENCRYPTION_LEVEL level,
                       const uint8_t *rs, const uint8_t *ws, size_t len) {
  (void)ssl, (void)level, (void)rs, (void)ws, (void)len;
  return 1;
}

static int add_data(WOLFSSL *ssl, WOLFSSL_ENCRYPTION_LEVEL level,
                    const uint8_t *data, size_t len) {
  side *s = wolfSSL_get_app_data(ssl);
  cr_assert_leq(s->out_len[level] + len, QUEUE_MAX);
  memcpy(s->out[level] + s->out_len[level], data, len);
  s->out_len[level] += len;
  return 1;
}

static int flush_flight(WOLFSSL *ssl) {
  (void)ssl;
  return 1;
}

static int send_alert(WOLFSSL *ssl, WOLFSSL_ENCRYPTION_LEVEL level,
                      uint8_t alert) {
  side *s = wolfSSL_get_app_data(ssl);
  (void)level;
  s->alert = alert;
  return 1;
}

static WOLFSSL_QUIC_METHOD quic_method = {set_secrets, add_data, flush_flight,
                                          send_alert};

typedef struct pki {
  char *ca, *server_crt, *server_key, *client_crt, *client_key;
  size_t ca_len, server_crt_len, server_key_len, client_crt_len, client_key_len;
} pki;

static void make_identity(const ckt_ed25519_key *ca_key, const char *ca,
                          size_t ca_len, char **crt, size_t *crt_len,
                          char **key_pem, size_t *key_len) {
  ckt_ed25519_key k;
  cr_assert_eq(ckt_key_generate(&k), CKT_OK);
  cr_assert_eq(ckt_cert_make_leaf(&k, ca_key, ca, ca_len, NULL, crt, crt_len),
               CKT_OK);
  cr_assert_eq(ckt_key_to_pem(&k, NULL, 0, key_pem, key_len), CKT_OK);
}

static void make_pki(pki *p) {
  ckt_ed25519_key ca_key;
  cr_assert_eq(ckt_key_generate(&ca_key), CKT_OK);
  cr_assert_eq(ckt_cert_make_ca(&ca_key, NULL, &p->ca, &p->ca_len), CKT_OK);
  make_identity(&ca_key, p->ca, p->ca_len, &p->server_crt, &p->server_crt_len,
                &p->server_key, &p->server_key_len);
  make_identity(&ca_key, p->ca, p->ca_len, &p->client_crt, &p->client_crt_len,
                &p->client_key, &p->client_key_len);
}

static void free_pki(pki *p) {
  ckt_free(p->ca);
  ckt_free(p->server_crt);
  ckt_free(p->server_key);
  ckt_free(p->client_crt);
  ckt_free(p->client_key);
}

static void setup_side(side *s, int server, const char *trusted_ca,
                       size_t ca_len, const char *crt, size_t crt_len,
                       const char *key, size_t key_len) {
  static const uint8_t params[] = {0x01, 0x01, 0x00};
  memset(s, 0, sizeof(*s));
  s->ctx = wolfSSL_CTX_new(server ? wolfTLSv1_3_server_method()
                                  : wolfTLSv1_3_client_method());
  cr_assert_not_null(s->ctx);
  cr_assert_eq(
      wolfSSL_CTX_use_certificate_buffer(s->ctx, (const unsigned char *)crt,
                                         (long)crt_len, WOLFSSL_FILETYPE_PEM),
      WOLFSSL_SUCCESS);
  cr_assert_eq(
      wolfSSL_CTX_use_PrivateKey_buffer(s->ctx, (const unsigned char *)key,
                                        (long)key_len, WOLFSSL_FILETYPE_PEM),
      WOLFSSL_SUCCESS, "wolfSSL reads ckt's PKCS#8 Ed25519 key");
  cr_assert_eq(
      wolfSSL_CTX_load_verify_buffer(s->ctx, (const unsigned char *)trusted_ca,
                                     (long)ca_len, WOLFSSL_FILETYPE_PEM),
      WOLFSSL_SUCCESS);
  wolfSSL_CTX_set_verify(
      s->ctx, WOLFSSL_VERIFY_PEER | WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  cr_assert_eq(
      wolfSSL_CTX_set_cipher_list(s->ctx, "TLS13-CHACHA20-POLY1305-SHA256"),
      WOLFSSL_SUCCESS);
  s->ssl = wolfSSL_new(s->ctx);
  cr_assert_not_null(s->ssl);
  wolfSSL_set_app_data(s->ssl, s);
  cr_assert_eq(wolfSSL_set_quic_method(s->ssl, &quic_method), WOLFSSL_SUCCESS);
  cr_assert_eq(
      wolfSSL_set_quic_transport_params(s->ssl, params, sizeof(params)),
      WOLFSSL_SUCCESS);
  cr_assert_eq(wolfSSL_UseKeyShare(s->ssl, WOLFSSL_ECC_X25519),
               WOLFSSL_SUCCESS);
  if (!server) {
    cr_assert_eq(wolfSSL_UseSNI(s->ssl, WOLFSSL_SNI_HOST_NAME, "localhost", 9),
                 WOLFSSL_SUCCESS);
    wolfSSL_set_connect_state(s->ssl);
  } else {
    wolfSSL_set_accept_state(s->ssl);
  }
}

static void free_side(side *s) {
  wolfSSL_free(s->ssl);
  wolfSSL_CTX_free(s->ctx);
}

/* Hands everything `from` queued to `to`, in pieces of 2, 2 and the rest:
 * the first piece ends inside the 4-byte handshake message header and the
 * second exactly after it. */
static int deliver(side *from, side *to) {
  int level, moved = 0;
  for (level = 0; level < LEVELS; ++level) {
    size_t len = from->out_len[level], off = 0;
    while (off < len) {
      size_t n = off < 4 ? 2 : len - off;
      if (n > len - off) {
        n = len - off;
      }
      if (wolfSSL_provide_quic_data(to->ssl, (WOLFSSL_ENCRYPTION_LEVEL)level,
                                    from->out[level] + off,
                                    n) != WOLFSSL_SUCCESS) {
        return -1;
      }
      off += n;
    }
    from->out_len[level] = 0;
    moved += len > 0;
  }
  return moved;
}

/* Runs the handshake; returns 1 when both sides finished, 0 on failure. */
static int handshake(side *c, side *s) {
  int round;
  for (round = 0; round < 10; ++round) {
    int rc = wolfSSL_connect(c->ssl);
    int rs = wolfSSL_accept(s->ssl);
    if (rc == WOLFSSL_SUCCESS && rs == WOLFSSL_SUCCESS) {
      return 1;
    }
    cr_assert_neq(deliver(c, s), -1, "server refused split CRYPTO data");
    cr_assert_neq(deliver(s, c), -1, "client refused split CRYPTO data");
    if (c->alert || s->alert) {
      return 0;
    }
  }
  return 0;
}

Test(deps, quic_handshake_mutual_ed25519_chacha20_split_headers) {
  pki p;
  side c, s;
  WOLFSSL_X509 *peer;
  make_pki(&p);
  setup_side(&s, 1, p.ca, p.ca_len, p.server_crt, p.server_crt_len,
             p.server_key, p.server_key_len);
  setup_side(&c, 0, p.ca, p.ca_len, p.client_crt, p.client_crt_len,
             p.client_key, p.client_key_len);
  cr_assert(handshake(&c, &s), "alerts: client %d server %d", c.alert, s.alert);
  cr_assert_str_eq(wolfSSL_get_cipher_name(c.ssl),
                   "TLS13-CHACHA20-POLY1305-SHA256");
  cr_assert_str_eq(wolfSSL_get_version(s.ssl), "TLSv1.3");
  peer = wolfSSL_get_peer_certificate(s.ssl);
  cr_assert_not_null(peer, "the server saw the client's certificate");
  wolfSSL_X509_free(peer);
  free_side(&c);
  free_side(&s);
  free_pki(&p);
}

Test(deps, quic_handshake_fails_against_a_foreign_ca) {
  pki p, other;
  side c, s;
  make_pki(&p);
  make_pki(&other);
  setup_side(&s, 1, p.ca, p.ca_len, p.server_crt, p.server_crt_len,
             p.server_key, p.server_key_len);
  /* The client trusts another CA: it must refuse the server. */
  setup_side(&c, 0, other.ca, other.ca_len, other.client_crt,
             other.client_crt_len, other.client_key, other.client_key_len);
  cr_assert_not(handshake(&c, &s));
  cr_assert_neq(c.alert, 0, "the client sent an alert");
  free_side(&c);
  free_side(&s);
  free_pki(&p);
  free_pki(&other);
}
