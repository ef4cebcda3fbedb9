/*
 * tls_cert.c — Ed25519 X.509 certificates with wolfSSL: making CA and leaf
 * certificates, verifying a certificate against a CA, reading fields.
 */
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/asn.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ed25519.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/random.h>

#include "ckt/identity.h"
#include "core_buf.h"
#include "core_util.h"
#include "tls_int.h"
#include "tls_pem.h"

#define CERT_LABEL "CERTIFICATE"
#define CERT_DER_MAX 4096

/* Decodes a PEM certificate to DER (caller clears pem). */
static int cert_der(const char *text, size_t len, ckt_pem *pem) {
  int rv;
  if (!text) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (len > CKT_IDENTITY_FILE_MAX) {
    return CKT_ERR_TOO_LARGE;
  }
  rv = ckt_pem_decode(text, len, pem);
  if (rv != CKT_OK) {
    return rv;
  }
  if (strcmp(pem->label, CERT_LABEL) != 0) {
    ckt_pem_clear(pem);
    return CKT_ERR_FORMAT;
  }
  return CKT_OK;
}

/* 1 when a wolfSSL call that failed ran out of memory; errno must be
 * cleared before the call.  Out of memory is no verdict on a certificate,
 * but wolfSSL 5.5.4 reports some allocation failures as what the caller
 * was doing (GetCertName: ASN_PARSE_E); malloc's ENOMEM tells. */
static int out_of_memory(int wolf) {
  return wolf == MEMORY_E || errno == ENOMEM;
}

/* ---- reading ----------------------------------------------------------- */

static int64_t cert_time(const byte *raw, int raw_len) {
  const byte *date;
  byte format;
  int len;
  struct tm tm;
  if (!raw || wc_GetDateInfo(raw, raw_len, &date, &format, &len) != 0) {
    return 0;
  }
  memset(&tm, 0, sizeof(tm));
  if (wc_GetDateAsCalendarTime(date, len, format, &tm) != 0) {
    return 0;
  }
  return (int64_t)timegm(&tm);
}

static void append_san(char *out, size_t outsz, const char *kind,
                       const char *value) {
  size_t used = strlen(out);
  if (used < outsz) {
    snprintf(out + used, outsz - used, "%s%s:%s", used ? ", " : "", kind,
             value);
  }
}

static void copy_bounded(char *out, size_t outsz, const char *s, size_t n) {
  if (n >= outsz) {
    n = outsz - 1;
  }
  memcpy(out, s, n);
  out[n] = 0;
}

static void describe_decoded(const DecodedCert *dc, const uint8_t *der,
                             size_t der_len, ckt_cert_info *info) {
  const DNS_entry *e;

  copy_bounded(info->subject, sizeof(info->subject), dc->subject,
               strnlen(dc->subject, sizeof(dc->subject)));
  copy_bounded(info->issuer, sizeof(info->issuer), dc->issuer,
               strnlen(dc->issuer, sizeof(dc->issuer)));
  if (dc->serialSz > 0 && dc->serialSz <= 20) {
    ckt_hex_encode(info->serial, dc->serial, (size_t)dc->serialSz, ':');
  }
  info->not_before = cert_time(dc->beforeDate, dc->beforeDateLen);
  info->not_after = cert_time(dc->afterDate, dc->afterDateLen);
  info->is_ca = dc->isCA ? 1 : 0;
  switch (dc->keyOID) {
  case ED25519k:
    snprintf(info->key_type, sizeof(info->key_type), "Ed25519");
    if (dc->publicKey && dc->pubKeySize == CKT_ED25519_KEY_LEN) {
      info->is_ed25519 = 1;
      memcpy(info->public_key, dc->publicKey, CKT_ED25519_KEY_LEN);
    }
    break;
  case RSAk:
    snprintf(info->key_type, sizeof(info->key_type), "RSA");
    break;
  case ECDSAk:
    snprintf(info->key_type, sizeof(info->key_type), "ECDSA");
    break;
  case ED448k:
    snprintf(info->key_type, sizeof(info->key_type), "Ed448");
    break;
  default:
    snprintf(info->key_type, sizeof(info->key_type), "unknown");
  }
  for (e = dc->altNames; e; e = e->next) {
    char v[256];
    if (e->type == ASN_DNS_TYPE && e->len > 0) {
      copy_bounded(v, sizeof(v), e->name, (size_t)e->len);
      append_san(info->sans, sizeof(info->sans), "DNS", v);
    } else if (e->type == ASN_IP_TYPE && e->len == 4) {
      const uint8_t *ip = (const uint8_t *)e->name;
      snprintf(v, sizeof(v), "%u.%u.%u.%u", ip[0], ip[1], ip[2], ip[3]);
      append_san(info->sans, sizeof(info->sans), "IP", v);
    } else if (e->type == ASN_IP_TYPE && e->ipString) {
      append_san(info->sans, sizeof(info->sans), "IP", e->ipString);
    } else if (e->type == ASN_RFC822_TYPE && e->len > 0) {
      copy_bounded(v, sizeof(v), e->name, (size_t)e->len);
      append_san(info->sans, sizeof(info->sans), "email", v);
      if (!info->email[0]) {
        copy_bounded(info->email, sizeof(info->email), v, strlen(v));
      }
    }
  }
#ifndef IGNORE_NAME_CONSTRAINTS
  /* wolfSSL keeps rfc822Name entries on a list of their own. */
  for (e = dc->altEmailNames; e; e = e->next) {
    char v[256], tagged[270];
    if (e->type != ASN_RFC822_TYPE || e->len <= 0) {
      continue;
    }
    copy_bounded(v, sizeof(v), e->name, (size_t)e->len);
    snprintf(tagged, sizeof(tagged), "email:%s", v);
    if (!strstr(info->sans, tagged)) {
      append_san(info->sans, sizeof(info->sans), "email", v);
    }
    if (!info->email[0]) {
      copy_bounded(info->email, sizeof(info->email), v, strlen(v));
    }
  }
#endif
  if (dc->subjectEmail && dc->subjectEmailLen > 0) {
    copy_bounded(info->email, sizeof(info->email), dc->subjectEmail,
                 (size_t)dc->subjectEmailLen);
  }
  crypto_hash_sha256(info->sha256, der, der_len);
}

int ckt_cert_describe_der(const uint8_t *der, size_t len, ckt_cert_info *info) {
  DecodedCert dc;
  int rv = CKT_OK, wolf;

  if (!info || !der) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  memset(info, 0, sizeof(*info));
  if (len > CKT_IDENTITY_FILE_MAX) {
    return CKT_ERR_TOO_LARGE;
  }
  if ((rv = ckt_tls_init()) != CKT_OK) {
    return rv;
  }
  wc_InitDecodedCert(&dc, der, (word32)len, NULL);
  errno = 0;
  wolf = wc_ParseCert(&dc, CERT_TYPE, NO_VERIFY, NULL);
  if (wolf != 0) {
    rv = out_of_memory(wolf) ? CKT_ERR_NOMEM : CKT_ERR_FORMAT;
  } else {
    describe_decoded(&dc, der, len, info);
  }
  wc_FreeDecodedCert(&dc);
  return rv;
}

int ckt_cert_describe(const char *text, size_t len, ckt_cert_info *info) {
  ckt_pem pem;
  int rv;

  if (!info) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  memset(info, 0, sizeof(*info));
  if ((rv = ckt_tls_init()) != CKT_OK) {
    return rv;
  }
  if ((rv = cert_der(text, len, &pem)) != CKT_OK) {
    return rv;
  }
  rv = ckt_cert_describe_der(pem.der, pem.der_len, info);
  ckt_pem_clear(&pem);
  return rv;
}

int ckt_cert_check_key(const char *cert_pem, size_t cert_pemlen,
                       const ckt_ed25519_key *key) {
  ckt_cert_info info;
  int rv;
  if (!key) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  rv = ckt_cert_describe(cert_pem, cert_pemlen, &info);
  if (rv != CKT_OK) {
    return rv;
  }
  if (!info.is_ed25519) {
    return CKT_ERR_KEY_TYPE;
  }
  return sodium_memcmp(info.public_key, key->pub, CKT_ED25519_KEY_LEN) == 0
             ? CKT_OK
             : CKT_ERR_KEY_MISMATCH;
}

/* ---- verifying --------------------------------------------------------- */

/* errno must be cleared before the call that returned wolf. */
static int verify_error(int wolf) {
  if (out_of_memory(wolf)) {
    return CKT_ERR_NOMEM;
  }
  switch (wolf) {
  case ASN_AFTER_DATE_E:
    return CKT_ERR_CERT_EXPIRED;
  case ASN_BEFORE_DATE_E:
    return CKT_ERR_CERT_NOT_YET_VALID;
  default: /* ASN_NO_SIGNER_E, ASN_SIG_CONFIRM_E, ... */
    return CKT_ERR_CERT_UNTRUSTED;
  }
}

int ckt_cert_verify(const char *ca_text, size_t ca_len, const char *text,
                    size_t len) {
  ckt_cert_info ca_info, info;
  WOLFSSL_CERT_MANAGER *cm;
  ckt_pem ca, leaf;
  int rv, wolf;

  if ((rv = ckt_cert_describe(ca_text, ca_len, &ca_info)) != CKT_OK ||
      (rv = ckt_cert_describe(text, len, &info)) != CKT_OK) {
    return rv;
  }
  if (!ca_info.is_ed25519 || !info.is_ed25519) {
    return CKT_ERR_KEY_TYPE;
  }
  if (!ca_info.is_ca) {
    return CKT_ERR_CERT_NOT_CA;
  }
  if ((rv = cert_der(ca_text, ca_len, &ca)) != CKT_OK) {
    return rv;
  }
  if ((rv = cert_der(text, len, &leaf)) != CKT_OK) {
    ckt_pem_clear(&ca);
    return rv;
  }
  cm = wolfSSL_CertManagerNew();
  if (!cm) {
    rv = CKT_ERR_NOMEM;
    goto done;
  }
  errno = 0;
  wolf = wolfSSL_CertManagerLoadCABuffer(cm, ca.der, (long)ca.der_len,
                                         WOLFSSL_FILETYPE_ASN1);
  if (wolf != WOLFSSL_SUCCESS) {
    /* The CA itself is unusable: expired, or not self-consistent (or there
     * was no memory to load it). */
    rv = out_of_memory(wolf) || wolf == ASN_AFTER_DATE_E ||
                 wolf == ASN_BEFORE_DATE_E
             ? verify_error(wolf)
             : CKT_ERR_CERT_UNTRUSTED;
    goto done;
  }
  errno = 0;
  wolf = wolfSSL_CertManagerVerifyBuffer(cm, leaf.der, (long)leaf.der_len,
                                         WOLFSSL_FILETYPE_ASN1);
  rv = wolf == WOLFSSL_SUCCESS ? CKT_OK : verify_error(wolf);

done:
  if (cm) {
    wolfSSL_CertManagerFree(cm);
  }
  ckt_pem_clear(&ca);
  ckt_pem_clear(&leaf);
  return rv;
}

/* ---- making ------------------------------------------------------------ */

/* Certificate name fields must be short printable ASCII (they are encoded
 * as PrintableString/IA5String and the email also as an rfc822Name). */
static int name_ok(const char *s) {
  size_t i, n;
  if (!s) {
    return 1;
  }
  n = strlen(s);
  if (n == 0 || n >= CTC_NAME_SIZE) {
    return 0;
  }
  for (i = 0; i < n; ++i) {
    if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e) {
      return 0;
    }
  }
  return 1;
}

/* SubjectAltName: DNS:localhost, IP:127.0.0.1 and the email; every length
 * fits one DER length octet because names are < CTC_NAME_SIZE (64). */
static int leaf_alt_names(Cert *cert, const char *email) {
  static const char dns[] = "localhost";
  uint8_t *p = cert->altNames + 2;
  size_t elen = email ? strlen(email) : 0;

  *p++ = 0x82; /* [2] dNSName */
  *p++ = (uint8_t)(sizeof(dns) - 1);
  memcpy(p, dns, sizeof(dns) - 1);
  p += sizeof(dns) - 1;
  *p++ = 0x87; /* [7] iPAddress */
  *p++ = 4;
  *p++ = 127;
  *p++ = 0;
  *p++ = 0;
  *p++ = 1;
  if (elen) {
    *p++ = 0x81; /* [1] rfc822Name */
    *p++ = (uint8_t)elen;
    memcpy(p, email, elen);
    p += elen;
  }
  cert->altNames[0] = 0x30; /* SEQUENCE OF GeneralName */
  cert->altNames[1] = (uint8_t)(p - cert->altNames - 2);
  cert->altNamesSz = (int)(p - cert->altNames);
  return 0;
}

static int import_key(ed25519_key *k, const ckt_ed25519_key *key) {
  if (wc_ed25519_init(k) != 0) {
    return -1;
  }
  if (wc_ed25519_import_private_key(key->seed, CKT_ED25519_KEY_LEN, key->pub,
                                    CKT_ED25519_KEY_LEN, k) != 0) {
    wc_ed25519_free(k);
    return -1;
  }
  return 0;
}

static int fill_subject(Cert *cert, const ckt_cert_options *opt, int is_ca) {
  const char *cn = opt && opt->common_name ? opt->common_name
                                           : (is_ca ? "ckt CA" : "localhost");
  const char *unit = opt ? opt->unit : NULL;
  const char *email = opt ? opt->email : NULL;
  uint32_t days =
      opt && opt->valid_days ? opt->valid_days : CKT_CERT_DEFAULT_DAYS;
  if (!name_ok(cn) || !name_ok(unit) || !name_ok(email) ||
      days > CKT_CERT_MAX_DAYS) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  snprintf(cert->subject.commonName, CTC_NAME_SIZE, "%s", cn);
  snprintf(cert->subject.org, CTC_NAME_SIZE, "ckt");
  if (unit) {
    snprintf(cert->subject.unit, CTC_NAME_SIZE, "%s", unit);
  }
  if (email) {
    snprintf(cert->subject.email, CTC_NAME_SIZE, "%s", email);
  }
  cert->daysValid = (int)days;
  return CKT_OK;
}

/* Writes t as a DER UTCTime (years before 2050) or GeneralizedTime, tag
 * and length included; returns its size, or 0 if out of range. */
static int der_time(int64_t t, uint8_t out[CTC_DATE_SIZE]) {
  time_t tt = (time_t)t;
  struct tm tm;
  char text[20];
  int n;
  if (!gmtime_r(&tt, &tm) || tm.tm_year + 1900 < 1950 ||
      tm.tm_year + 1900 > 9999) {
    return 0;
  }
  if (tm.tm_year + 1900 < 2050) {
    n = snprintf(text, sizeof(text), "%02d%02d%02d%02d%02d%02dZ",
                 tm.tm_year % 100, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                 tm.tm_min, tm.tm_sec);
    out[0] = 0x17; /* UTCTime */
  } else {
    n = snprintf(text, sizeof(text), "%04d%02d%02d%02d%02d%02dZ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                 tm.tm_min, tm.tm_sec);
    out[0] = 0x18; /* GeneralizedTime */
  }
  out[1] = (uint8_t)n;
  memcpy(out + 2, text, (size_t)n);
  return n + 2;
}

/* A fixed validity window: [not_before, not_before + days). */
static int fixed_validity(Cert *cert, int64_t not_before, uint32_t days) {
  cert->beforeDateSz = der_time(not_before, cert->beforeDate);
  cert->afterDateSz =
      der_time(not_before + (int64_t)days * 86400, cert->afterDate);
  return cert->beforeDateSz && cert->afterDateSz ? CKT_OK
                                                 : CKT_ERR_INVALID_ARGUMENT;
}

static int set_serial(Cert *cert, const ckt_cert_options *opt) {
  int rv;
  if (opt && opt->serial) {
    /* A positive INTEGER in its shortest form (RFC 5280: not zero). */
    if (opt->serial_len < 1 || opt->serial_len > 20 || opt->serial[0] >= 0x80 ||
        opt->serial[0] == 0) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    memcpy(cert->serial, opt->serial, opt->serial_len);
    cert->serialSz = (int)opt->serial_len;
    return CKT_OK;
  }
  rv = ckt_random_bytes(cert->serial, 16);
  if (rv != CKT_OK) {
    return rv;
  }
  /* Positive, and 16 significant bytes (RFC 5280: at most 20 octets). */
  cert->serial[0] = (uint8_t)((cert->serial[0] & 0x7f) | 0x40);
  cert->serialSz = 16;
  return CKT_OK;
}

/* Builds, signs and PEM-encodes a certificate for `key`; `issuer_der` NULL
 * means self-signed (a CA) with signer == key. */
static int make_cert(const ckt_ed25519_key *key, const ckt_ed25519_key *signer,
                     const uint8_t *issuer_der, size_t issuer_len,
                     const ckt_cert_options *opt, char **pem, size_t *pemlen) {
  int is_ca = issuer_der == NULL;
  ed25519_key subject_key, signer_key;
  Cert cert;
  WC_RNG rng;
  uint8_t der[CERT_DER_MAX];
  ckt_buf out;
  int rv, n;

  if (!key || !signer || !pem) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if ((rv = ckt_tls_init()) != CKT_OK) {
    return rv;
  }
  if (wc_InitCert(&cert) != 0) {
    return CKT_ERR_CRYPTO;
  }
  if ((rv = fill_subject(&cert, opt, is_ca)) != CKT_OK ||
      (rv = set_serial(&cert, opt)) != CKT_OK) {
    return rv;
  }
  if (opt && opt->not_before &&
      (rv = fixed_validity(&cert, opt->not_before, (uint32_t)cert.daysValid)) !=
          CKT_OK) {
    return rv;
  }
  cert.sigType = CTC_ED25519;
  if (is_ca) {
    cert.isCA = 1;
    if (wc_SetKeyUsage(&cert, "keyCertSign,cRLSign") != 0) {
      return CKT_ERR_CRYPTO;
    }
  } else {
    cert.isCA = 0;
    cert.basicConstSet = 1; /* write CA:FALSE explicitly */
    if (wc_SetKeyUsage(&cert, "digitalSignature") != 0 ||
        wc_SetExtKeyUsage(&cert, "serverAuth,clientAuth") != 0) {
      return CKT_ERR_CRYPTO;
    }
    leaf_alt_names(&cert, opt ? opt->email : NULL);
    errno = 0;
    n = wc_SetIssuerBuffer(&cert, issuer_der, (int)issuer_len);
    if (n != 0) {
      return out_of_memory(n) ? CKT_ERR_NOMEM : CKT_ERR_FORMAT;
    }
  }

  if (import_key(&subject_key, key) != 0) {
    return CKT_ERR_CRYPTO;
  }
  if (import_key(&signer_key, signer) != 0) {
    rv = CKT_ERR_CRYPTO;
    goto free_subject;
  }
  if (wc_InitRng(&rng) != 0) {
    rv = CKT_ERR_CRYPTO;
    goto free_signer;
  }
  rv = CKT_ERR_CRYPTO;
  if (wc_SetSubjectKeyIdFromPublicKey_ex(&cert, ED25519_TYPE, &subject_key) !=
          0 ||
      wc_SetAuthKeyIdFromPublicKey_ex(&cert, ED25519_TYPE, &signer_key) != 0) {
    goto free_rng;
  }
  n = wc_MakeCert_ex(&cert, der, sizeof(der), ED25519_TYPE, &subject_key, &rng);
  if (n < 0) {
    goto free_rng;
  }
  n = wc_SignCert_ex(cert.bodySz, cert.sigType, der, sizeof(der), ED25519_TYPE,
                     &signer_key, &rng);
  if (n < 0) {
    goto free_rng;
  }
  ckt_buf_init(&out, 3 * CERT_DER_MAX);
  rv = ckt_pem_encode(&out, CERT_LABEL, NULL, der, (size_t)n);
  if (rv == CKT_OK) {
    *pem = (char *)ckt_buf_release(&out, pemlen);
    rv = *pem ? CKT_OK : CKT_ERR_NOMEM;
  } else {
    ckt_buf_free(&out);
  }

free_rng:
  wc_FreeRng(&rng);
free_signer:
  wc_ed25519_free(&signer_key);
free_subject:
  wc_ed25519_free(&subject_key);
  return rv;
}

int ckt_cert_make_ca(const ckt_ed25519_key *ca_key, const ckt_cert_options *opt,
                     char **pem, size_t *pemlen) {
  return make_cert(ca_key, ca_key, NULL, 0, opt, pem, pemlen);
}

int ckt_cert_make_leaf(const ckt_ed25519_key *key,
                       const ckt_ed25519_key *ca_key, const char *ca_pem,
                       size_t ca_pemlen, const ckt_cert_options *opt,
                       char **pem, size_t *pemlen) {
  ckt_cert_info ca_info;
  ckt_pem ca;
  int rv;

  if (!key || !ca_key || !ca_pem || !pem) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if ((rv = ckt_cert_describe(ca_pem, ca_pemlen, &ca_info)) != CKT_OK) {
    return rv;
  }
  if (!ca_info.is_ed25519) {
    return CKT_ERR_KEY_TYPE;
  }
  if (!ca_info.is_ca) {
    return CKT_ERR_CERT_NOT_CA;
  }
  if (sodium_memcmp(ca_info.public_key, ca_key->pub, CKT_ED25519_KEY_LEN) !=
      0) {
    return CKT_ERR_KEY_MISMATCH;
  }
  if ((rv = cert_der(ca_pem, ca_pemlen, &ca)) != CKT_OK) {
    return rv;
  }
  rv = make_cert(key, ca_key, ca.der, ca.der_len, opt, pem, pemlen);
  ckt_pem_clear(&ca);
  return rv;
}
