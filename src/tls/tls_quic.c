/* tls_quic.c — wolfSSL contexts and sessions for QUIC, with ckt's policy. */
#include "tls_quic.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <ngtcp2/ngtcp2_crypto_wolfssl.h>
#include <wolfssl/wolfcrypt/error-crypt.h>

#include "core_addr.h"
#include "core_util.h"
#include "tls_int.h"
#include "tls_known.h"

static const char suite_chacha[] = "TLS13-CHACHA20-POLY1305-SHA256";
static const char suite_aes[] = "TLS13-AES128-GCM-SHA256";

/* ALPN protocols a server offers, in preference order (wolfSSL's
 * comma-separated form).  A second protocol (h3 for status) joins here;
 * the endpoint dispatches on ckt_tls_alpn(). */
static const char alpn_server_list[] = CKT_ALPN;

/* Keeps the first, most specific reason a handshake failed. */
static void set_why(ckt_tls_link *link, int err, const char *side,
                    const char *what) {
  if (!link || link->verify_error) {
    return;
  }
  link->verify_error = err;
  snprintf(link->why, sizeof(link->why), "the %s's certificate %s", side, what);
}

static const char *verify_text(int wolf, int *err) {
  switch (wolf) {
  case ASN_AFTER_DATE_E:
    *err = CKT_ERR_CERT_EXPIRED;
    return "has expired";
  case ASN_BEFORE_DATE_E:
    *err = CKT_ERR_CERT_NOT_YET_VALID;
    return "is not valid yet";
  default: /* ASN_NO_SIGNER_E, ASN_SIG_CONFIRM_E, ... */
    *err = CKT_ERR_CERT_UNTRUSTED;
    return "is not signed by our CA";
  }
}

/* ---- known keys in the handshake ---------------------------------------- */

/* The CTX ex_data slot holding a context's ckt_known store. */
static pthread_once_t known_index_once = PTHREAD_ONCE_INIT;
static int known_index = -1;

static void make_known_index(void) {
  known_index = wolfSSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static ckt_known *ctx_known(WOLFSSL_CTX *ctx) {
  pthread_once(&known_index_once, make_known_index);
  return ctx && known_index >= 0 ? wolfSSL_CTX_get_ex_data(ctx, known_index)
                                 : NULL;
}

/* After a known-keys refusal wolfSSL would send bad_certificate (it picks
 * the alert from its own error code).  The session's QUIC method is then
 * swapped for this one, which reports access_denied instead: the peer's
 * certificate was fine, our access control said no.  The handshake is
 * over, so the other callbacks refuse any further work. */
static int refused_secrets(WOLFSSL *ssl, WOLFSSL_ENCRYPTION_LEVEL level,
                           const uint8_t *rx, const uint8_t *tx, size_t len) {
  (void)ssl, (void)level, (void)rx, (void)tx, (void)len;
  return 0;
}

static int refused_data(WOLFSSL *ssl, WOLFSSL_ENCRYPTION_LEVEL level,
                        const uint8_t *data, size_t len) {
  (void)ssl, (void)level, (void)data, (void)len;
  return 0;
}

static int refused_flush(WOLFSSL *ssl) {
  (void)ssl;
  return 1;
}

static int refused_alert(WOLFSSL *ssl, WOLFSSL_ENCRYPTION_LEVEL level,
                         uint8_t alert) {
  ngtcp2_crypto_conn_ref *ref = wolfSSL_get_app_data(ssl);
  ngtcp2_conn *conn = ref && ref->get_conn ? ref->get_conn(ref) : NULL;
  (void)level, (void)alert;
  if (conn) {
    ngtcp2_conn_set_tls_alert(conn, CKT_TLS_ALERT_ACCESS_DENIED);
  }
  return 1;
}

static const WOLFSSL_QUIC_METHOD refused_method = {
    refused_secrets, refused_data, refused_flush, refused_alert};

/* The peer's address as its packets arrive ("127.0.0.1:40123"). */
static void peer_host(ckt_tls_link *link, char *out, size_t outsz) {
  ngtcp2_conn *conn =
      link->ref.get_conn ? link->ref.get_conn(&link->ref) : NULL;
  const ngtcp2_path *path = conn ? ngtcp2_conn_get_path(conn) : NULL;
  ckt_addr a;
  out[0] = 0;
  if (!path || !path->remote.addr || path->remote.addrlen == 0 ||
      path->remote.addrlen > sizeof(a.ss)) {
    return;
  }
  memset(&a, 0, sizeof(a));
  memcpy(&a.ss, path->remote.addr, path->remote.addrlen);
  a.len = (socklen_t)path->remote.addrlen;
  ckt_addr_format(&a, out, outsz);
}

/* The leaf passed every other check: consult the known keys, if any. */
static int check_known(WOLFSSL *ssl, ckt_tls_link *link,
                       const ckt_cert_info *info, int verified) {
  ckt_known *known = ctx_known(wolfSSL_get_SSL_CTX(ssl));
  char host[CKT_ADDR_STRLEN];
  ckt_known_peer peer;
  if (!known) {
    return 1;
  }
  peer_host(link, host, sizeof(host));
  peer.key = info->public_key;
  peer.host = host;
  peer.email = info->email;
  peer.verified = verified;
  peer.defer_record = 1; /* CertificateVerify has not been checked yet */
  if (ckt_known_check(known, &peer, link->why, sizeof(link->why)) == CKT_OK) {
    link->why[0] = 0;
    link->known_pending = 1;
    link->known_verified = verified;
    memcpy(link->known_key, info->public_key, CKT_ED25519_KEY_LEN);
    snprintf(link->known_host, sizeof(link->known_host), "%s", host);
    snprintf(link->known_email, sizeof(link->known_email), "%s", info->email);
    return 1;
  }
  link->verify_error = CKT_ERR_TLS;
  (void)wolfSSL_set_quic_method(ssl, &refused_method);
  return 0;
}

/* ---- the verify callback ------------------------------------------------ */

/* Runs for every certificate of the peer's chain, on success too (our
 * wolfSSL is built with WOLFSSL_ALWAYS_VERIFY_CB), the leaf (depth 0)
 * last: wolfSSL decided the chain; we add the Ed25519-only rule, then the
 * known keys, and keep a sentence for the log.  insecure: skip-verify,
 * any issuer and date pass. */
static int verify_common(int preverify, WOLFSSL_X509_STORE_CTX *store,
                         int insecure) {
  WOLFSSL *ssl = wolfSSL_X509_STORE_CTX_get_ex_data(
      store, wolfSSL_get_ex_data_X509_STORE_CTX_idx());
  ckt_tls_link *link = ssl ? wolfSSL_get_app_data(ssl) : NULL;
  WOLFSSL_X509 *x = wolfSSL_X509_STORE_CTX_get_current_cert(store);
  int depth = wolfSSL_X509_STORE_CTX_get_error_depth(store);
  const char *side = ssl && wolfSSL_is_server(ssl) ? "client" : "server";
  const unsigned char *der;
  ckt_cert_info info;
  int der_len = 0, err;

  der = x ? wolfSSL_X509_get_der(x, &der_len) : NULL;
  if (!der || der_len <= 0 ||
      ckt_cert_describe_der(der, (size_t)der_len, &info) != CKT_OK) {
    set_why(link, CKT_ERR_FORMAT, side, "is unreadable");
    return 0;
  }
  if (!info.is_ed25519) {
    set_why(link, CKT_ERR_KEY_TYPE, side,
            "has a key that is not Ed25519 (ckt accepts only Ed25519)");
    return 0;
  }
  if (!preverify && !insecure) {
    const char *what =
        verify_text(wolfSSL_X509_STORE_CTX_get_error(store), &err);
    set_why(link, err, side, what);
    return 0;
  }
  if (depth == 0 && !link) {
    return 0; /* no link, no known-keys decision: refuse */
  }
  if (depth == 0) {
    /* Only a key whose whole chain held up is compared or recorded. */
    if (link->verify_error || !check_known(ssl, link, &info, !insecure)) {
      return 0;
    }
    ckt_hex_encode(link->peer_key, info.public_key, CKT_ED25519_KEY_LEN, 0);
  }
  return 1;
}

static int verify_cb(int preverify, WOLFSSL_X509_STORE_CTX *store) {
  return verify_common(preverify, store, 0);
}

/* INSECURE mode: keeps the Ed25519 rule, accepts any issuer and date. */
static int verify_cb_insecure(int preverify, WOLFSSL_X509_STORE_CTX *store) {
  return verify_common(preverify, store, 1);
}

static int load_identity(WOLFSSL_CTX *ctx, const ckt_tls_config *cfg) {
  char *key_pem = NULL;
  size_t key_len = 0;
  ckt_cert_info ca;
  int rv;

  if ((rv = ckt_cert_check_key(cfg->cert_pem, cfg->cert_len, cfg->key)) !=
      CKT_OK) {
    return rv;
  }
  if ((rv = ckt_cert_describe(cfg->ca_pem, cfg->ca_len, &ca)) != CKT_OK) {
    return rv;
  }
  if (!ca.is_ed25519) {
    return CKT_ERR_KEY_TYPE;
  }
  if (!ca.is_ca) {
    return CKT_ERR_CERT_NOT_CA;
  }
  if ((rv = ckt_key_to_pem(cfg->key, NULL, 0, &key_pem, &key_len)) != CKT_OK) {
    return rv;
  }
  rv = CKT_ERR_CRYPTO;
  if (wolfSSL_CTX_use_certificate_buffer(
          ctx, (const unsigned char *)cfg->cert_pem, (long)cfg->cert_len,
          WOLFSSL_FILETYPE_PEM) == WOLFSSL_SUCCESS &&
      wolfSSL_CTX_use_PrivateKey_buffer(ctx, (const unsigned char *)key_pem,
                                        (long)key_len, WOLFSSL_FILETYPE_PEM) ==
          WOLFSSL_SUCCESS &&
      wolfSSL_CTX_check_private_key(ctx) == WOLFSSL_SUCCESS &&
      wolfSSL_CTX_load_verify_buffer(ctx, (const unsigned char *)cfg->ca_pem,
                                     (long)cfg->ca_len,
                                     WOLFSSL_FILETYPE_PEM) == WOLFSSL_SUCCESS) {
    rv = CKT_OK;
  }
  ckt_secure_zero(key_pem, key_len);
  ckt_free(key_pem);
  return rv;
}

int ckt_tls_ctx_new(int server, const ckt_tls_config *cfg, WOLFSSL_CTX **out) {
  int groups[1] = {WOLFSSL_ECC_X25519};
  WOLFSSL_CTX *ctx;
  int rv;

  if (!cfg || !cfg->cert_pem || !cfg->key || !cfg->ca_pem || !out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if ((rv = ckt_tls_init()) != CKT_OK) {
    return rv;
  }
  ctx = wolfSSL_CTX_new(server ? wolfTLSv1_3_server_method()
                               : wolfTLSv1_3_client_method());
  if (!ctx) {
    return CKT_ERR_NOMEM;
  }
  rv = CKT_ERR_CRYPTO;
  if ((server ? ngtcp2_crypto_wolfssl_configure_server_context(ctx)
              : ngtcp2_crypto_wolfssl_configure_client_context(ctx)) != 0 ||
      wolfSSL_CTX_set_cipher_list(
          ctx, cfg->aes_gcm ? suite_aes : suite_chacha) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_set_groups(ctx, groups, 1) != WOLFSSL_SUCCESS ||
      wolfSSL_CTX_set1_sigalgs_list(ctx, "ED25519") != WOLFSSL_SUCCESS) {
    goto fail;
  }
  if ((rv = load_identity(ctx, cfg)) != CKT_OK) {
    goto fail;
  }
  wolfSSL_CTX_set_verify(
      ctx, WOLFSSL_VERIFY_PEER | WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT,
      cfg->skip_verify ? verify_cb_insecure : verify_cb);
  if (server) {
    /* No resumption: every connection proves its certificate again (and
     * meets the known keys again). */
    wolfSSL_CTX_no_ticket_TLSv13(ctx);
  }
  if (cfg->known) {
    pthread_once(&known_index_once, make_known_index);
    if (known_index < 0 ||
        wolfSSL_CTX_set_ex_data(ctx, known_index, cfg->known) !=
            WOLFSSL_SUCCESS) {
      rv = CKT_ERR_CRYPTO;
      goto fail;
    }
  }
  *out = ctx;
  return CKT_OK;

fail:
  wolfSSL_CTX_free(ctx);
  return rv;
}

void ckt_tls_ctx_free(WOLFSSL_CTX *ctx) {
  if (ctx) {
    ckt_known_free(ctx_known(ctx));
    wolfSSL_CTX_free(ctx);
  }
}

int ckt_tls_session_new(WOLFSSL_CTX *ctx, int server, ckt_tls_link *link,
                        WOLFSSL **out) {
  char alpn[] = CKT_ALPN;
  WOLFSSL *ssl = wolfSSL_new(ctx);
  if (!ssl) {
    return CKT_ERR_NOMEM;
  }
  wolfSSL_set_app_data(ssl, &link->ref);
  /* Handshake data for exporting keying material (the PSK layer); freed
   * once the handshake is complete. */
  wolfSSL_KeepArrays(ssl);
  if (server) {
    char list[sizeof(alpn_server_list)];
    memcpy(list, alpn_server_list, sizeof(list));
    wolfSSL_set_accept_state(ssl);
    if (wolfSSL_UseALPN(ssl, list, (unsigned int)strlen(list),
                        WOLFSSL_ALPN_FAILED_ON_MISMATCH) != WOLFSSL_SUCCESS) {
      wolfSSL_free(ssl);
      return CKT_ERR_CRYPTO;
    }
  } else {
    wolfSSL_set_connect_state(ssl);
    if (wolfSSL_UseSNI(ssl, WOLFSSL_SNI_HOST_NAME, CKT_SNI,
                       (unsigned short)strlen(CKT_SNI)) != WOLFSSL_SUCCESS ||
        wolfSSL_UseALPN(ssl, alpn, (unsigned int)strlen(alpn),
                        WOLFSSL_ALPN_FAILED_ON_MISMATCH) != WOLFSSL_SUCCESS ||
        wolfSSL_check_domain_name(ssl, CKT_SNI) != WOLFSSL_SUCCESS) {
      wolfSSL_free(ssl);
      return CKT_ERR_CRYPTO;
    }
  }
  *out = ssl;
  return CKT_OK;
}

int ckt_tls_alpn(WOLFSSL *ssl) {
  char *name = NULL;
  unsigned short len = 0;
  if (wolfSSL_ALPN_GetProtocol(ssl, &name, &len) != WOLFSSL_SUCCESS || !name ||
      len != strlen(CKT_ALPN) || memcmp(name, CKT_ALPN, len) != 0) {
    return 0;
  }
  return 1;
}

const char *ckt_tls_suite(WOLFSSL *ssl) {
  const char *name = ssl ? wolfSSL_get_cipher_name(ssl) : NULL;
  if (!name) {
    return "(none)";
  }
  if (strcmp(name, suite_chacha) == 0) {
    return "TLS_CHACHA20_POLY1305_SHA256";
  }
  if (strcmp(name, suite_aes) == 0) {
    return "TLS_AES_128_GCM_SHA256";
  }
  return name;
}

const char *ckt_tls_alert_text(uint8_t alert) {
  switch (alert) {
  case 40:
    return "handshake failure (no common cipher suite, group or "
           "signature algorithm: is the peer's key Ed25519?)";
  case 42:
  case 43:
  case 46:
    return "the peer rejected our certificate";
  case 44:
    return "the peer says our certificate was revoked";
  case 45:
    return "the peer says our certificate has expired";
  case 48:
    return "the peer does not trust our CA (unknown CA)";
  case CKT_TLS_ALERT_ACCESS_DENIED:
    return "the peer refused our key: it is not among its known keys "
           "(lockdown)";
  case 112:
    return "the peer does not serve the name localhost";
  case 116:
    return "the peer requires a certificate and we sent none";
  case 120:
    return "no common application protocol (ALPN ckt/1)";
  default:
    return "TLS handshake failed";
  }
}

const char *ckt_tls_refusal_text(uint8_t alert, int server) {
  switch (alert) {
  case 40:
    return "no common cipher suite, group or signature algorithm (ckt "
           "needs Ed25519, X25519 and the same suite on both ends)";
  case CKT_TLS_ALERT_ACCESS_DENIED:
    return server ? "the client's key is not among our known keys"
                  : "the server's key is not among our known keys";
  case 116:
    return server ? "the client presented no certificate"
                  : "the server presented no certificate";
  case 120:
    return "no common application protocol (ALPN ckt/1)";
  default:
    return "TLS handshake failed";
  }
}

int ckt_tls_handshake_done(WOLFSSL *ssl, ckt_tls_link *link) {
  ckt_known *known;
  ckt_known_peer peer;
  if (!link->known_pending) {
    return CKT_OK;
  }
  link->known_pending = 0;
  known = ctx_known(wolfSSL_get_SSL_CTX(ssl));
  if (!known) {
    return CKT_OK;
  }
  memset(&peer, 0, sizeof(peer));
  peer.key = link->known_key;
  peer.host = link->known_host;
  peer.email = link->known_email;
  peer.verified = link->known_verified;
  if (ckt_known_check(known, &peer, link->why, sizeof(link->why)) != CKT_OK) {
    link->verify_error = CKT_ERR_TLS;
    return CKT_ERR_TLS;
  }
  return CKT_OK;
}
