/*
 * ckt/identity.h — Ed25519 identities: keys, key files, certificates, CA.
 *
 * Every ckt node proves who it is with an Ed25519 key and a certificate
 * signed by the deployment's CA.  These functions make and read them; the
 * `selfy` tool is a thin command line over them.
 *
 * Formats (details in docs/identity.md):
 *  - certificates: X.509 v3 in PEM ("CERTIFICATE"), Ed25519 only;
 *  - plain private keys: PKCS#8 (RFC 8410) PEM, label "PRIVATE KEY", the
 *    same as `openssl genpkey -algorithm ed25519` writes;
 *  - encrypted private keys: PEM label "CKT ENCRYPTED PRIVATE KEY"; the
 *    PKCS#8 DER sealed with XChaCha20-Poly1305 under a key derived from the
 *    passphrase by Argon2id; the KDF parameters, salt and nonce are stored
 *    as PEM headers and authenticated.
 *
 * Ownership: functions returning `char **pem` allocate it with malloc();
 * the caller frees it with ckt_free().  Key structs hold secrets: wipe them
 * with ckt_key_wipe() when done.
 *
 * Threading: every function here is thread-safe; none keeps global state
 * beyond the one-time initialisation of the crypto libraries.
 */
#ifndef CKT_IDENTITY_H
#define CKT_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

#include "ckt/error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CKT_ED25519_KEY_LEN 32
/* Default validity of new certificates, in days (10 years). */
#define CKT_CERT_DEFAULT_DAYS 3650
/* Longest validity selfy will write (100 years). */
#define CKT_CERT_MAX_DAYS 36500
/* Largest certificate or key file ckt reads. */
#define CKT_IDENTITY_FILE_MAX (64 * 1024)
/* Size of a pre-shared key made by ckt_psk_create(). */
#define CKT_PSK_LEN 32

typedef struct ckt_ed25519_key {
  uint8_t seed[CKT_ED25519_KEY_LEN]; /* the private key (RFC 8032 seed) */
  uint8_t pub[CKT_ED25519_KEY_LEN];  /* the public key derived from it */
} ckt_ed25519_key;

/* Frees memory returned by ckt functions. NULL is fine. */
CKT_EXTERN void ckt_free(void *p);

/* Formats n bytes as lowercase hex into out, with `sep` between bytes when
 * it is not 0 (fingerprints: ':').  Truncates to fit outsz (always
 * NUL-terminated when outsz > 0). */
CKT_EXTERN void ckt_hex_format(char *out, size_t outsz, const uint8_t *in,
                               size_t n, char sep);

/* Fills key with a new random key pair.  CKT_OK, CKT_ERR_IO (no entropy). */
CKT_EXTERN int ckt_key_generate(ckt_ed25519_key *key);

/* Zeroes a key. */
CKT_EXTERN void ckt_key_wipe(ckt_ed25519_key *key);

/* Encodes key as PEM.  With pass == NULL: plain PKCS#8.  Otherwise the key
 * is encrypted with Argon2id + XChaCha20-Poly1305 (passlen may be 0 only
 * with pass == NULL).  *pem is NUL-terminated; free it with ckt_free().
 * CKT_OK, CKT_ERR_INVALID_ARGUMENT, CKT_ERR_NOMEM, CKT_ERR_CRYPTO. */
CKT_EXTERN int ckt_key_to_pem(const ckt_ed25519_key *key, const char *pass,
                              size_t passlen, char **pem, size_t *pemlen);

/* Decodes a PEM private key (plain PKCS#8 or ckt-encrypted).
 * CKT_OK; CKT_ERR_FORMAT (not PEM, truncated, bad DER, or an encryption
 * format ckt does not read); CKT_ERR_TOO_LARGE; CKT_ERR_KEY_TYPE (a valid
 * key of another algorithm: RSA, EC, Ed448, X25519);
 * CKT_ERR_PASSPHRASE_REQUIRED (encrypted, pass == NULL);
 * CKT_ERR_PASSPHRASE (wrong passphrase or altered file); CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_key_from_pem(const char *pem, size_t pemlen,
                                const char *pass, size_t passlen,
                                ckt_ed25519_key *key);

/* 1 if pem holds a ckt-encrypted private key, 0 otherwise (also when out
 * of memory: ckt_key_from_pem() says CKT_ERR_PASSPHRASE_REQUIRED for
 * sure). */
CKT_EXTERN int ckt_key_pem_is_encrypted(const char *pem, size_t pemlen);

typedef struct ckt_cert_options {
  const char *common_name; /* NULL: "localhost" for leaves, "ckt CA" for CAs */
  const char *unit;        /* organizational unit, e.g. the identity name */
  const char *email;       /* NULL: none */
  uint32_t valid_days;     /* 0: CKT_CERT_DEFAULT_DAYS */
  /* Start of validity, Unix seconds (0: now).  With a fixed start and
   * serial, and the same keys, the certificate is the same bytes every
   * time (the simulator's built-in identities rely on it). */
  int64_t not_before;
  /* Serial number, big-endian, 1..20 bytes, the first in 0x01..0x7f
   * (positive, shortest form); NULL: a random 128-bit serial. */
  const uint8_t *serial;
  size_t serial_len;
} ckt_cert_options;

/* Makes a self-signed CA certificate (basicConstraints CA:TRUE, keyUsage
 * keyCertSign + cRLSign, random 128-bit serial unless opt gives one) for
 * ca_key.
 * CKT_OK, CKT_ERR_INVALID_ARGUMENT, CKT_ERR_NOMEM, CKT_ERR_CRYPTO. */
CKT_EXTERN int ckt_cert_make_ca(const ckt_ed25519_key *ca_key,
                                const ckt_cert_options *opt, char **pem,
                                size_t *pemlen);

/* Makes a certificate for key, signed by the CA (ca_pem + ca_key): CN
 * localhost, SAN DNS:localhost, IP:127.0.0.1 and email:<email>, the email
 * also in the subject, keyUsage digitalSignature, extKeyUsage serverAuth +
 * clientAuth, CA:FALSE, random serial unless opt gives one.
 * CKT_OK, CKT_ERR_INVALID_ARGUMENT, CKT_ERR_FORMAT (ca_pem), CKT_ERR_KEY_TYPE
 * (CA not Ed25519), CKT_ERR_CERT_NOT_CA, CKT_ERR_KEY_MISMATCH (ca_key is not
 * the CA's key), CKT_ERR_NOMEM, CKT_ERR_CRYPTO. */
CKT_EXTERN int ckt_cert_make_leaf(const ckt_ed25519_key *key,
                                  const ckt_ed25519_key *ca_key,
                                  const char *ca_pem, size_t ca_pemlen,
                                  const ckt_cert_options *opt, char **pem,
                                  size_t *pemlen);

/* Checks that cert_pem was signed by the CA in ca_pem and is valid now.
 * CKT_OK; CKT_ERR_FORMAT (either is not a PEM certificate);
 * CKT_ERR_KEY_TYPE (either is not Ed25519); CKT_ERR_CERT_NOT_CA (ca_pem is
 * not a CA); CKT_ERR_CERT_UNTRUSTED; CKT_ERR_CERT_EXPIRED;
 * CKT_ERR_CERT_NOT_YET_VALID; CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_cert_verify(const char *ca_pem, size_t ca_pemlen,
                               const char *cert_pem, size_t cert_pemlen);

/* Checks that key is the private key of the certificate.
 * CKT_OK, CKT_ERR_INVALID_ARGUMENT, CKT_ERR_FORMAT, CKT_ERR_TOO_LARGE,
 * CKT_ERR_KEY_TYPE, CKT_ERR_KEY_MISMATCH, CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_cert_check_key(const char *cert_pem, size_t cert_pemlen,
                                  const ckt_ed25519_key *key);

typedef struct ckt_cert_info {
  char subject[256]; /* "/CN=localhost/O=ckt/..." */
  char issuer[256];
  char serial[64];    /* hex, colon-separated */
  int64_t not_before; /* Unix seconds, UTC */
  int64_t not_after;
  int is_ed25519;    /* 1 if the subject key is Ed25519 */
  char key_type[16]; /* "Ed25519", "RSA", "ECDSA", "Ed448", "unknown" */
  int is_ca;         /* basicConstraints CA:TRUE */
  char sans[512];    /* "DNS:localhost, IP:127.0.0.1, email:a@b" */
  char email[128];   /* subject emailAddress, else the first SAN email */
  uint8_t public_key[CKT_ED25519_KEY_LEN]; /* valid if is_ed25519 */
  uint8_t sha256[32];                      /* SHA-256 of the DER certificate */
} ckt_cert_info;

/* Reads the fields of a PEM certificate (no trust decision is made).
 * CKT_OK, CKT_ERR_FORMAT, CKT_ERR_TOO_LARGE, CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_cert_describe(const char *cert_pem, size_t cert_pemlen,
                                 ckt_cert_info *info);

/* ---- files and directories (selfy's layout) -------------------------- */

/* Writes ckt's configuration directory into out: $CKT_CONFIG_DIR if set,
 * else $XDG_CONFIG_HOME/ckt, else $HOME/.config/ckt.  Identities live in
 * its certs/ and the CA in its my-keep-private-dir/.
 * CKT_OK, CKT_ERR_TOO_LARGE (does not fit outsz). */
CKT_EXTERN int ckt_config_dir(char *out, size_t outsz);

/* Asked for a passphrase when a key must be encrypted (confirm == 1: a new
 * passphrase, to be asked twice) or decrypted (confirm == 0).  `what`
 * names the key file.  Writes up to bufsize-1 bytes and a NUL into buf and
 * returns the length, or a negative CKT_ERR_* (CKT_ERR_CANCELED). */
typedef int (*ckt_passphrase_cb)(void *user, const char *what, int confirm,
                                 char *buf, size_t bufsize);

typedef struct ckt_identity_options {
  ckt_cert_options cert;
  /* NULL means keys are written unencrypted (selfy -nopass) and encrypted
   * keys cannot be read (CKT_ERR_PASSPHRASE_REQUIRED). */
  ckt_passphrase_cb passphrase;
  void *passphrase_user;
} ckt_identity_options;

/* Creates private_dir (0700) if needed and writes private_dir/ca.crt and
 * private_dir/ca.key (0600).  Never overwrites: CKT_ERR_EXISTS if either
 * file exists.  Also CKT_ERR_IO (errno set), CKT_ERR_CANCELED, and the
 * codes of ckt_cert_make_ca(). */
CKT_EXTERN int ckt_identity_make_ca(const char *private_dir,
                                    const ckt_identity_options *opt);

/* Writes cert_dir/name.crt and cert_dir/name.key (0600) signed by the CA in
 * private_dir; creates the CA first when private_dir has none (then
 * *ca_created = 1), and puts a copy of the CA certificate at
 * cert_dir/ca.crt when none is there (peers verify against it; the CA key
 * never leaves private_dir).  Never overwrites.  CKT_ERR_INVALID_ARGUMENT (name
 * empty or with '/'), CKT_ERR_EXISTS, CKT_ERR_IO, CKT_ERR_CANCELED,
 * CKT_ERR_PASSPHRASE, and the codes of ckt_key_from_pem() and
 * ckt_cert_make_leaf(). */
CKT_EXTERN int ckt_identity_make(const char *cert_dir, const char *name,
                                 const char *private_dir,
                                 const ckt_identity_options *opt,
                                 int *ca_created);

/* Reads a PEM file of at most CKT_IDENTITY_FILE_MAX bytes into *pem.
 * CKT_OK, CKT_ERR_NOT_FOUND, CKT_ERR_IO, CKT_ERR_TOO_LARGE, CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_pem_file_read(const char *path, char **pem, size_t *len);

/* Loads a private key file, asking opt->passphrase if it is encrypted.
 * The codes of ckt_pem_file_read() and ckt_key_from_pem(). */
CKT_EXTERN int ckt_key_load(const char *path, const ckt_identity_options *opt,
                            ckt_ed25519_key *key);

/* Loads cert_dir/name.crt and cert_dir/name.key and checks that they belong
 * together.  *cert_pem is the certificate (free with ckt_free()).
 * Codes of ckt_key_load(), ckt_cert_check_key(). */
CKT_EXTERN int ckt_identity_load(const char *cert_dir, const char *name,
                                 const ckt_identity_options *opt,
                                 char **cert_pem, size_t *cert_pemlen,
                                 ckt_ed25519_key *key);

/* Writes CKT_PSK_LEN random bytes to a new file (0600), creating its
 * directory (0700) if missing.  CKT_OK, CKT_ERR_EXISTS, CKT_ERR_IO. */
CKT_EXTERN int ckt_psk_create(const char *path);

#ifdef __cplusplus
}
#endif

#endif /* CKT_IDENTITY_H */
