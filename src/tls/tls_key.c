/*
 * tls_key.c — Ed25519 private keys: generation, PKCS#8 (RFC 8410), and
 * ckt's passphrase-encrypted PEM (Argon2id + XChaCha20-Poly1305).
 */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/identity.h"
#include "core_buf.h"
#include "core_cursor.h"
#include "core_util.h"
#include "tls_der.h"
#include "tls_int.h"
#include "tls_pem.h"

#define PKCS8_LABEL "PRIVATE KEY"
#define ENC_LABEL "CKT ENCRYPTED PRIVATE KEY"

/* PrivateKeyInfo { v1, { id-Ed25519 }, OCTET STRING { OCTET STRING(32) } } */
static const uint8_t pkcs8_prefix[16] = {0x30, 0x2e, 0x02, 0x01, 0x00, 0x30,
                                         0x05, 0x06, 0x03, 0x2b, 0x65, 0x70,
                                         0x04, 0x22, 0x04, 0x20};
static const uint8_t oid_ed25519[3] = {0x2b, 0x65, 0x70};

/* Default Argon2id cost: 64 MiB, 3 passes (~0.15 s here).  Files may carry
 * other values within the bounds below, which cap what a hostile file can
 * make us spend. */
#define KDF_DEFAULT_M_KIB 65536u
#define KDF_DEFAULT_T 3u
#define KDF_MIN_M_KIB 8u
#define KDF_MAX_M_KIB (1024u * 1024u)
#define KDF_MAX_T 64u
#define SALT_LEN crypto_pwhash_SALTBYTES
#define NONCE_LEN crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TAG_LEN crypto_aead_xchacha20poly1305_ietf_ABYTES
#define SEALED_MAX 1024

void ckt_free(void *p) {
  free(p);
}

void ckt_hex_format(char *out, size_t outsz, const uint8_t *in, size_t n,
                    char sep) {
  size_t per = sep ? 3 : 2; /* characters per byte, separator included */
  if (!out || outsz == 0) {
    return;
  }
  if (n && (outsz - 1 + (sep ? 1 : 0)) / per < n) {
    n = (outsz - 1 + (sep ? 1 : 0)) / per;
  }
  ckt_hex_encode(out, in, n, sep);
}

void ckt_key_wipe(ckt_ed25519_key *key) {
  if (key) {
    ckt_secure_zero(key, sizeof(*key));
  }
}

static int derive_public(ckt_ed25519_key *key) {
  uint8_t sk[crypto_sign_SECRETKEYBYTES];
  int rv = crypto_sign_seed_keypair(key->pub, sk, key->seed);
  ckt_secure_zero(sk, sizeof(sk));
  return rv == 0 ? CKT_OK : CKT_ERR_CRYPTO;
}

int ckt_key_generate(ckt_ed25519_key *key) {
  int rv;
  if (!key) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if ((rv = ckt_tls_init()) != CKT_OK) {
    return rv;
  }
  rv = ckt_random_bytes(key->seed, sizeof(key->seed));
  if (rv != CKT_OK) {
    return rv;
  }
  return derive_public(key);
}

/* ---- PKCS#8 ----------------------------------------------------------- */

static void pkcs8_encode(const ckt_ed25519_key *key, uint8_t out[48]) {
  memcpy(out, pkcs8_prefix, sizeof(pkcs8_prefix));
  memcpy(out + sizeof(pkcs8_prefix), key->seed, 32);
}

/* Parses PrivateKeyInfo / OneAsymmetricKey (RFC 5958), Ed25519 only. */
static int pkcs8_decode(const uint8_t *der, size_t len, ckt_ed25519_key *key) {
  ckt_cursor c, body, version, algid, oid, outer, inner, skip;
  uint8_t v;
  int tag, has_pub = 0;
  uint8_t pub[32];

  ckt_cursor_init(&c, der, len);
  if (ckt_der_expect(&c, CKT_DER_SEQUENCE, &body) != 0 || c.left != 0 ||
      ckt_der_expect(&body, CKT_DER_INTEGER, &version) != 0 ||
      version.left != 1 || ckt_cursor_u8(&version, &v) != 0 || v > 1 ||
      ckt_der_expect(&body, CKT_DER_SEQUENCE, &algid) != 0 ||
      ckt_der_expect(&algid, CKT_DER_OID, &oid) != 0) {
    return CKT_ERR_FORMAT;
  }
  if (oid.left != sizeof(oid_ed25519) ||
      memcmp(oid.p, oid_ed25519, sizeof(oid_ed25519)) != 0) {
    return CKT_ERR_KEY_TYPE; /* a well-formed key of another algorithm */
  }
  /* RFC 8410: the parameters are absent; the key is an OCTET STRING
   * wrapping the 32-byte seed. */
  if (algid.left != 0 ||
      ckt_der_expect(&body, CKT_DER_OCTET_STRING, &outer) != 0 ||
      ckt_der_expect(&outer, CKT_DER_OCTET_STRING, &inner) != 0 ||
      outer.left != 0 || inner.left != 32) {
    return CKT_ERR_FORMAT;
  }
  memcpy(key->seed, inner.p, 32);
  if (ckt_der_peek_tag(&body) == 0xa0) { /* [0] attributes: ignored */
    if (ckt_der_expect(&body, 0xa0, &skip) != 0) {
      goto bad;
    }
  }
  tag = ckt_der_peek_tag(&body);
  if (tag == 0x81 && v == 1) { /* [1] IMPLICIT BIT STRING public key */
    ckt_cursor bits;
    uint8_t unused;
    if (ckt_der_expect(&body, 0x81, &bits) != 0 ||
        ckt_cursor_u8(&bits, &unused) != 0 || unused != 0 || bits.left != 32 ||
        ckt_cursor_copy(&bits, pub, 32) != 0) {
      goto bad;
    }
    has_pub = 1;
  }
  if (body.left != 0 || derive_public(key) != CKT_OK) {
    goto bad;
  }
  if (has_pub && sodium_memcmp(pub, key->pub, 32) != 0) {
    goto bad; /* the stored public key is not this seed's */
  }
  return CKT_OK;

bad:
  ckt_key_wipe(key);
  return CKT_ERR_FORMAT;
}

/* ---- encrypted keys ---------------------------------------------------- */

typedef struct kdf_params {
  uint32_t m_kib;
  uint32_t t;
  uint8_t salt[SALT_LEN];
  uint8_t nonce[NONCE_LEN];
} kdf_params;

/* The headers are the AEAD's associated data, so the canonical text is
 * rebuilt from parsed values on decode: any change to them fails. */
static int enc_headers(const kdf_params *kp, char *out, size_t outsz) {
  char
      salt[sodium_base64_ENCODED_LEN(SALT_LEN, sodium_base64_VARIANT_ORIGINAL)];
  char nonce[sodium_base64_ENCODED_LEN(NONCE_LEN,
                                       sodium_base64_VARIANT_ORIGINAL)];
  int n;
  sodium_bin2base64(salt, sizeof(salt), kp->salt, SALT_LEN,
                    sodium_base64_VARIANT_ORIGINAL);
  sodium_bin2base64(nonce, sizeof(nonce), kp->nonce, NONCE_LEN,
                    sodium_base64_VARIANT_ORIGINAL);
  n = snprintf(out, outsz,
               "Proc-Type: ckt-key-v1\n"
               "KDF: argon2id\n"
               "KDF-Params: v=19, m=%u, t=%u, p=1\n"
               "Salt: %s\n"
               "Cipher: xchacha20-poly1305\n"
               "Nonce: %s\n",
               kp->m_kib, kp->t, salt, nonce);
  return n > 0 && (size_t)n < outsz ? n : -1;
}

static int header_value(const char *headers, const char *name, char *out,
                        size_t outsz) {
  size_t nlen = strlen(name);
  const char *p = headers;
  while (*p) {
    const char *eol = strchr(p, '\n');
    size_t len = eol ? (size_t)(eol - p) : strlen(p);
    if (len > nlen + 1 && memcmp(p, name, nlen) == 0 && p[nlen] == ':') {
      const char *v = p + nlen + 1;
      size_t vlen = len - nlen - 1;
      while (vlen && *v == ' ') {
        v++;
        vlen--;
      }
      if (vlen >= outsz) {
        return -1;
      }
      memcpy(out, v, vlen);
      out[vlen] = 0;
      return 0;
    }
    p += len + (eol ? 1 : 0);
  }
  return -1;
}

static int b64_exact(const char *s, uint8_t *out, size_t n) {
  size_t got;
  if (sodium_base642bin(out, n, s, strlen(s), NULL, &got, NULL,
                        sodium_base64_VARIANT_ORIGINAL) != 0) {
    return -1;
  }
  return got == n ? 0 : -1;
}

static int parse_enc_headers(const char *headers, kdf_params *kp) {
  char v[128];
  unsigned ver, m, t, p;
  char extra;
  if (header_value(headers, "Proc-Type", v, sizeof(v)) != 0 ||
      strcmp(v, "ckt-key-v1") != 0 ||
      header_value(headers, "KDF", v, sizeof(v)) != 0 ||
      strcmp(v, "argon2id") != 0 ||
      header_value(headers, "Cipher", v, sizeof(v)) != 0 ||
      strcmp(v, "xchacha20-poly1305") != 0 ||
      header_value(headers, "KDF-Params", v, sizeof(v)) != 0 ||
      sscanf(v, "v=%u, m=%u, t=%u, p=%u%c", &ver, &m, &t, &p, &extra) != 4 ||
      ver != 19 || p != 1 || m < KDF_MIN_M_KIB || m > KDF_MAX_M_KIB || t < 1 ||
      t > KDF_MAX_T || header_value(headers, "Salt", v, sizeof(v)) != 0 ||
      b64_exact(v, kp->salt, SALT_LEN) != 0 ||
      header_value(headers, "Nonce", v, sizeof(v)) != 0 ||
      b64_exact(v, kp->nonce, NONCE_LEN) != 0) {
    return -1;
  }
  kp->m_kib = m;
  kp->t = t;
  return 0;
}

static int kdf(const kdf_params *kp, const char *pass, size_t passlen,
               uint8_t out[crypto_aead_xchacha20poly1305_ietf_KEYBYTES]) {
  if (crypto_pwhash(out, crypto_aead_xchacha20poly1305_ietf_KEYBYTES, pass,
                    passlen, kp->salt, kp->t, (size_t)kp->m_kib * 1024u,
                    crypto_pwhash_ALG_ARGON2ID13) != 0) {
    return CKT_ERR_NOMEM; /* libsodium fails only when it cannot allocate */
  }
  return CKT_OK;
}

int ckt_key_to_pem(const ckt_ed25519_key *key, const char *pass, size_t passlen,
                   char **pem, size_t *pemlen) {
  uint8_t der[48], sealed[48 + TAG_LEN];
  uint8_t k[crypto_aead_xchacha20poly1305_ietf_KEYBYTES];
  char headers[512];
  kdf_params kp;
  ckt_buf out;
  int rv, hlen;

  if (!key || !pem || (pass == NULL && passlen != 0)) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if ((rv = ckt_tls_init()) != CKT_OK) {
    return rv;
  }
  ckt_buf_init(&out, 4096);
  pkcs8_encode(key, der);
  if (!pass) {
    rv = ckt_pem_encode(&out, PKCS8_LABEL, NULL, der, sizeof(der));
    goto done;
  }
  kp.m_kib = KDF_DEFAULT_M_KIB;
  kp.t = KDF_DEFAULT_T;
  if ((rv = ckt_random_bytes(kp.salt, SALT_LEN)) != CKT_OK ||
      (rv = ckt_random_bytes(kp.nonce, NONCE_LEN)) != CKT_OK) {
    goto done;
  }
  hlen = enc_headers(&kp, headers, sizeof(headers));
  if (hlen < 0) {
    rv = CKT_ERR_CRYPTO;
    goto done;
  }
  if ((rv = kdf(&kp, pass, passlen, k)) != CKT_OK) {
    goto done;
  }
  crypto_aead_xchacha20poly1305_ietf_encrypt(sealed, NULL, der, sizeof(der),
                                             (const uint8_t *)headers,
                                             (size_t)hlen, NULL, kp.nonce, k);
  rv = ckt_pem_encode(&out, ENC_LABEL, headers, sealed, sizeof(sealed));

done:
  ckt_secure_zero(der, sizeof(der));
  ckt_secure_zero(k, sizeof(k));
  if (rv != CKT_OK) {
    ckt_buf_free(&out);
    return rv;
  }
  *pem = (char *)ckt_buf_release(&out, pemlen);
  return *pem ? CKT_OK : CKT_ERR_NOMEM;
}

int ckt_key_pem_is_encrypted(const char *text, size_t len) {
  ckt_pem pem;
  int enc;
  if (ckt_pem_decode(text, len, &pem) != CKT_OK) {
    return 0;
  }
  enc = strcmp(pem.label, ENC_LABEL) == 0;
  ckt_pem_clear(&pem);
  return enc;
}

static int decrypt_key(const ckt_pem *pem, const char *pass, size_t passlen,
                       ckt_ed25519_key *key) {
  uint8_t k[crypto_aead_xchacha20poly1305_ietf_KEYBYTES];
  uint8_t der[SEALED_MAX];
  unsigned long long der_len;
  char headers[512];
  kdf_params kp;
  int rv, hlen;

  if (pem->der_len < TAG_LEN || pem->der_len > SEALED_MAX ||
      parse_enc_headers(pem->headers, &kp) != 0) {
    return CKT_ERR_FORMAT;
  }
  if (!pass) {
    return CKT_ERR_PASSPHRASE_REQUIRED;
  }
  hlen = enc_headers(&kp, headers, sizeof(headers));
  if (hlen < 0) {
    return CKT_ERR_FORMAT;
  }
  if ((rv = kdf(&kp, pass, passlen, k)) != CKT_OK) {
    return rv;
  }
  if (crypto_aead_xchacha20poly1305_ietf_decrypt(
          der, &der_len, NULL, pem->der, pem->der_len, (const uint8_t *)headers,
          (size_t)hlen, kp.nonce, k) != 0) {
    rv = CKT_ERR_PASSPHRASE;
  } else {
    rv = pkcs8_decode(der, (size_t)der_len, key);
  }
  ckt_secure_zero(k, sizeof(k));
  ckt_secure_zero(der, sizeof(der));
  return rv;
}

int ckt_key_from_pem(const char *text, size_t len, const char *pass,
                     size_t passlen, ckt_ed25519_key *key) {
  ckt_pem pem;
  int rv;

  if (!text || !key || (pass == NULL && passlen != 0)) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if ((rv = ckt_tls_init()) != CKT_OK) {
    return rv;
  }
  if (len > CKT_IDENTITY_FILE_MAX) {
    return CKT_ERR_TOO_LARGE;
  }
  rv = ckt_pem_decode(text, len, &pem);
  if (rv != CKT_OK) {
    return rv;
  }
  if (strcmp(pem.label, PKCS8_LABEL) == 0) {
    rv = pkcs8_decode(pem.der, pem.der_len, key);
  } else if (strcmp(pem.label, ENC_LABEL) == 0) {
    rv = decrypt_key(&pem, pass, passlen, key);
  } else if (strcmp(pem.label, "RSA PRIVATE KEY") == 0 ||
             strcmp(pem.label, "EC PRIVATE KEY") == 0 ||
             strcmp(pem.label, "DSA PRIVATE KEY") == 0) {
    rv = CKT_ERR_KEY_TYPE;
  } else {
    /* Includes PKCS#8 "ENCRYPTED PRIVATE KEY" (PBES2) and OpenSSH keys. */
    rv = CKT_ERR_FORMAT;
  }
  ckt_pem_clear(&pem);
  return rv;
}
