/* tls_quic.c — wolfSSL contexts and sessions for QUIC, with ckt's policy. */
#include "tls_quic.h"

#include <stdio.h>
#include <string.h>

#include <ngtcp2/ngtcp2_crypto_wolfssl.h>
#include <wolfssl/wolfcrypt/error-crypt.h>

#include "core_util.h"
#include "tls_int.h"

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

/* Runs for every certificate of the peer's chain, on success too (our
 * wolfSSL is built with WOLFSSL_ALWAYS_VERIFY_CB): wolfSSL decided the
 * chain; we add the Ed25519-only rule and keep a sentence for the log. */
static int verify_cb(int preverify, WOLFSSL_X509_STORE_CTX *store) {
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
  if (!preverify) {
    const char *what =
        verify_text(wolfSSL_X509_STORE_CTX_get_error(store), &err);
    set_why(link, err, side, what);
    return 0;
  }
  if (depth == 0 && link) {
    ckt_hex_encode(link->peer_key, info.public_key, CKT_ED25519_KEY_LEN, 0);
  }
  return 1;
}

/* INSECURE mode: keeps the Ed25519 rule, accepts any issuer and date. */
static int verify_cb_insecure(int preverify, WOLFSSL_X509_STORE_CTX *store) {
  int ok = verify_cb(1, store);
  (void)preverify;
  return ok;
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
    /* No resumption: every connection proves its certificate again. */
    wolfSSL_CTX_no_ticket_TLSv13(ctx);
  }
  *out = ctx;
  return CKT_OK;

fail:
  wolfSSL_CTX_free(ctx);
  return rv;
}

void ckt_tls_ctx_free(WOLFSSL_CTX *ctx) {
  if (ctx) {
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
  case 116:
    return server ? "the client presented no certificate"
                  : "the server presented no certificate";
  case 120:
    return "no common application protocol (ALPN ckt/1)";
  default:
    return "TLS handshake failed";
  }
}
