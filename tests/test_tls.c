/* test_tls.c — tls: PEM, Ed25519 key files, certificates, identities. */
#include <criterion/criterion.h>
#include <sodium.h>
#include <criterion/hooks.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckt/identity.h"
#include "core_buf.h"
#include "tls_pem.h"

#ifndef FIXTURES_SCRIPT
#error "FIXTURES_SCRIPT must name tests/openssl_fixtures.sh"
#endif

/* ---- fixtures: openssl-made files, generated once per run --------------- */

static char fixtures[] = "/tmp/ckt-test-tls-fx-XXXXXX";

ReportHook(PRE_ALL)(struct criterion_test_set *set) {
  char cmd[1024];
  (void)set;
  if (!mkdtemp(fixtures)) {
    perror("mkdtemp");
    exit(1);
  }
  snprintf(cmd, sizeof(cmd), "sh '%s' '%s'", FIXTURES_SCRIPT, fixtures);
  if (system(cmd) != 0) {
    fprintf(stderr, "test_tls: cannot make openssl fixtures\n");
    exit(1);
  }
  setenv("CKT_TEST_FIXTURES", fixtures, 1);
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats) {
  char cmd[1024];
  (void)stats;
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fixtures);
  if (system(cmd) != 0) {
    fprintf(stderr, "test_tls: cannot remove %s\n", fixtures);
  }
}

static char *fixture(const char *name, size_t *len) {
  char path[1024];
  char *pem = NULL;
  snprintf(path, sizeof(path), "%s/%s", getenv("CKT_TEST_FIXTURES"), name);
  cr_assert_eq(ckt_pem_file_read(path, &pem, len), CKT_OK, "read %s", path);
  return pem;
}

static char tmpdir[] = "/tmp/ckt-test-tls-XXXXXX";

static void setup_tmp(void) {
  cr_assert_not_null(mkdtemp(tmpdir));
}

static void teardown_tmp(void) {
  char cmd[256];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
  cr_assert_eq(system(cmd), 0);
}

/* ---- PEM ----------------------------------------------------------------- */

Test(tls, pem_round_trip_with_headers) {
  const uint8_t der[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
  ckt_buf b;
  ckt_pem pem;
  ckt_buf_init(&b, 4096);
  cr_assert_eq(
      ckt_pem_encode(&b, "TEST BLOCK", "A: 1\nB: two\n", der, sizeof(der)),
      CKT_OK);
  cr_assert_eq(ckt_pem_decode((char *)b.data, b.len, &pem), CKT_OK);
  cr_assert_str_eq(pem.label, "TEST BLOCK");
  cr_assert_str_eq(pem.headers, "A: 1\nB: two\n");
  cr_assert_eq(pem.der_len, sizeof(der));
  cr_assert_eq(memcmp(pem.der, der, sizeof(der)), 0);
  ckt_pem_clear(&pem);
  ckt_buf_free(&b);
}

Test(tls, pem_rejects_malformed_armor) {
  static const char *bad[] = {
      "",
      "no armor at all",
      "-----BEGIN X-----\nAAAA\n",                        /* no END */
      "-----BEGIN X-----\nAAAA\n-----END Y-----\n",       /* END mismatch */
      "-----BEGIN X-----\nA$AA\n-----END X-----\n",       /* bad base64 */
      "-----BEGIN X-----\n-----END X-----\n",             /* empty body */
      "-----BEGIN -----\nAAAA\n-----END -----\n",         /* empty label */
      "-----BEGIN X-----\nH: v\nAAAA\n-----END X-----\n", /* no blank line */
      "-----BEGIN X\nAAAA\n-----END X-----\n",            /* broken BEGIN */
  };
  size_t i;
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    ckt_pem pem;
    cr_assert_eq(ckt_pem_decode(bad[i], strlen(bad[i]), &pem), CKT_ERR_FORMAT,
                 "case %zu", i);
    cr_assert_null(pem.der);
  }
}

Test(tls, pem_accepts_crlf_and_leading_text) {
  const char *text = "Bag Attributes: junk\r\n-----BEGIN X-----\r\nAQID\r\n"
                     "-----END X-----\r\n";
  ckt_pem pem;
  cr_assert_eq(ckt_pem_decode(text, strlen(text), &pem), CKT_OK);
  cr_assert_eq(pem.der_len, 3);
  ckt_pem_clear(&pem);
}

Test(tls, pem_limits_body_size) {
  ckt_buf b;
  ckt_pem pem;
  size_t i;
  ckt_buf_init(&b, 1 << 20);
  ckt_buf_append_str(&b, "-----BEGIN X-----\n");
  for (i = 0; i < (CKT_PEM_DER_MAX / 48) + 2; ++i) {
    ckt_buf_append_str(&b, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                           "AAAAAAAAAAAAAAAA\n");
  }
  ckt_buf_append_str(&b, "-----END X-----\n");
  cr_assert_eq(ckt_pem_decode((char *)b.data, b.len, &pem), CKT_ERR_TOO_LARGE);
  ckt_buf_free(&b);
}

/* ---- keys ---------------------------------------------------------------- */

Test(tls, plain_key_round_trip_is_pkcs8) {
  ckt_ed25519_key k, back;
  char *pem;
  size_t len;
  cr_assert_eq(ckt_key_generate(&k), CKT_OK);
  cr_assert_eq(ckt_key_to_pem(&k, NULL, 0, &pem, &len), CKT_OK);
  cr_assert_eq(strncmp(pem, "-----BEGIN PRIVATE KEY-----\n", 28), 0);
  cr_assert_eq(ckt_key_pem_is_encrypted(pem, len), 0);
  cr_assert_eq(ckt_key_from_pem(pem, len, NULL, 0, &back), CKT_OK);
  cr_assert_eq(memcmp(&k, &back, sizeof(k)), 0);
  ckt_free(pem);
}

Test(tls, encrypted_key_round_trip_and_wrong_passphrase) {
  ckt_ed25519_key k, back;
  char *pem;
  size_t len;
  cr_assert_eq(ckt_key_generate(&k), CKT_OK);
  cr_assert_eq(ckt_key_to_pem(&k, "correct horse", 13, &pem, &len), CKT_OK);
  cr_assert(strstr(pem, "-----BEGIN CKT ENCRYPTED PRIVATE KEY-----"));
  cr_assert(strstr(pem, "KDF: argon2id"));
  cr_assert_eq(ckt_key_pem_is_encrypted(pem, len), 1);
  cr_assert_eq(ckt_key_from_pem(pem, len, "correct horse", 13, &back), CKT_OK);
  cr_assert_eq(memcmp(&k, &back, sizeof(k)), 0);
  cr_assert_eq(ckt_key_from_pem(pem, len, "correct hors", 12, &back),
               CKT_ERR_PASSPHRASE);
  cr_assert_eq(ckt_key_from_pem(pem, len, NULL, 0, &back),
               CKT_ERR_PASSPHRASE_REQUIRED);
  ckt_free(pem);
}

Test(tls, encrypted_key_does_not_contain_the_seed) {
  ckt_ed25519_key k;
  char *pem, *plain;
  size_t len, plen;
  cr_assert_eq(ckt_key_generate(&k), CKT_OK);
  cr_assert_eq(ckt_key_to_pem(&k, "pw", 2, &pem, &len), CKT_OK);
  cr_assert_eq(ckt_key_to_pem(&k, NULL, 0, &plain, &plen), CKT_OK);
  /* The plain file's base64 of the seed must not appear in the sealed one. */
  cr_assert_null(strstr(pem, plain + 28 + 20));
  ckt_free(pem);
  ckt_free(plain);
}

/* A copy of s with the first `from` replaced by `to`. */
static char *replace(const char *s, const char *from, const char *to) {
  const char *at = strstr(s, from);
  size_t n = strlen(s) - strlen(from) + strlen(to) + 1;
  char *out = malloc(n);
  cr_assert_not_null(at);
  snprintf(out, n, "%.*s%s%s", (int)(at - s), s, to, at + strlen(from));
  return out;
}

Test(tls, altered_encryption_headers_are_detected) {
  ckt_ed25519_key k, back;
  char *pem, *p;
  size_t len;
  cr_assert_eq(ckt_key_generate(&k), CKT_OK);
  cr_assert_eq(ckt_key_to_pem(&k, "pw", 2, &pem, &len), CKT_OK);
  /* Lowering the Argon2id cost must not go unnoticed. */
  p = strstr(pem, "t=3");
  cr_assert_not_null(p);
  p[2] = '2';
  cr_assert_eq(ckt_key_from_pem(pem, len, "pw", 2, &back), CKT_ERR_PASSPHRASE);
  p[2] = '3';
  cr_assert_eq(ckt_key_from_pem(pem, len, "pw", 2, &back), CKT_OK);
  /* An absurd memory cost (10 GiB) is refused before any work is done. */
  {
    char *huge = replace(pem, "m=65536", "m=10485760");
    cr_assert_eq(ckt_key_from_pem(huge, strlen(huge), "pw", 2, &back),
                 CKT_ERR_FORMAT);
    free(huge);
  }
  ckt_free(pem);
}

Test(tls, every_truncation_of_a_key_file_fails_cleanly) {
  ckt_ed25519_key k, back;
  char *pem, *enc;
  size_t len, elen, i;
  cr_assert_eq(ckt_key_generate(&k), CKT_OK);
  cr_assert_eq(ckt_key_to_pem(&k, NULL, 0, &pem, &len), CKT_OK);
  for (i = 0; i + 1 < len; ++i) {
    int rv = ckt_key_from_pem(pem, i, NULL, 0, &back);
    cr_assert(rv == CKT_ERR_FORMAT, "length %zu gave %d", i, rv);
  }
  cr_assert_eq(ckt_key_to_pem(&k, "pw", 2, &enc, &elen), CKT_OK);
  for (i = 0; i + 1 < elen; i += 7) {
    int rv = ckt_key_from_pem(enc, i, "pw", 2, &back);
    cr_assert(rv == CKT_ERR_FORMAT || rv == CKT_ERR_PASSPHRASE,
              "length %zu gave %d", i, rv);
  }
  ckt_free(pem);
  ckt_free(enc);
}

Test(tls, garbage_key_files_fail_cleanly) {
  static const char *bad[] = {
      "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
      /* PKCS#8 prefix with a 31-byte seed */
      ("-----BEGIN PRIVATE KEY-----\n"
       "MC0CAQAwBQYDK2VwBCAEHwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
       "-----END PRIVATE KEY-----\n"),
      ("-----BEGIN CKT ENCRYPTED PRIVATE KEY-----\nAAAA\n"
       "-----END CKT ENCRYPTED PRIVATE KEY-----\n"),
  };
  ckt_ed25519_key back;
  size_t i;
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); ++i) {
    cr_assert_eq(ckt_key_from_pem(bad[i], strlen(bad[i]), "pw", 2, &back),
                 CKT_ERR_FORMAT, "case %zu", i);
  }
}

Test(tls, openssl_ed25519_key_loads_with_the_same_public_key) {
  ckt_ed25519_key k;
  char hex[65], *pem, *pub;
  size_t len, plen;
  pem = fixture("ossl_leaf.key", &len);
  cr_assert_eq(ckt_key_from_pem(pem, len, NULL, 0, &k), CKT_OK);
  pub = fixture("ossl_leaf.pub", &plen);
  ckt_hex_format(hex, sizeof(hex), k.pub, 32, 0);
  cr_assert_str_eq(hex, pub);
  ckt_free(pem);
  ckt_free(pub);
}

Test(tls, other_key_algorithms_are_refused_by_type) {
  static const char *files[] = {"rsa.key", "ec.key", "ec_trad.key", "ed448.key",
                                "x25519.key"};
  ckt_ed25519_key k;
  size_t i, len;
  for (i = 0; i < sizeof(files) / sizeof(files[0]); ++i) {
    char *pem = fixture(files[i], &len);
    cr_assert_eq(ckt_key_from_pem(pem, len, NULL, 0, &k), CKT_ERR_KEY_TYPE,
                 "%s", files[i]);
    ckt_free(pem);
  }
}

Test(tls, openssl_encrypted_key_is_a_format_error) {
  ckt_ed25519_key k;
  size_t len;
  char *pem = fixture("ossl_enc.key", &len);
  cr_assert_eq(ckt_key_from_pem(pem, len, "secret", 6, &k), CKT_ERR_FORMAT);
  ckt_free(pem);
}

/* ---- certificates -------------------------------------------------------- */

typedef struct pki {
  ckt_ed25519_key ca_key, key;
  char *ca, *leaf;
  size_t ca_len, leaf_len;
} pki;

static void make_pki(pki *p, const char *email) {
  ckt_cert_options o = {.email = email, .unit = "node", .valid_days = 30};
  cr_assert_eq(ckt_key_generate(&p->ca_key), CKT_OK);
  cr_assert_eq(ckt_key_generate(&p->key), CKT_OK);
  cr_assert_eq(ckt_cert_make_ca(&p->ca_key, NULL, &p->ca, &p->ca_len), CKT_OK);
  cr_assert_eq(ckt_cert_make_leaf(&p->key, &p->ca_key, p->ca, p->ca_len, &o,
                                  &p->leaf, &p->leaf_len),
               CKT_OK);
}

static void free_pki(pki *p) {
  ckt_free(p->ca);
  ckt_free(p->leaf);
}

Test(tls, ca_certificate_fields) {
  pki p;
  ckt_cert_info info;
  make_pki(&p, NULL);
  cr_assert_eq(ckt_cert_describe(p.ca, p.ca_len, &info), CKT_OK);
  cr_assert(info.is_ca);
  cr_assert(info.is_ed25519);
  cr_assert_str_eq(info.key_type, "Ed25519");
  cr_assert_str_eq(info.subject, info.issuer, "a CA is self-signed");
  cr_assert(strstr(info.subject, "CN=ckt CA"));
  cr_assert_eq(memcmp(info.public_key, p.ca_key.pub, 32), 0);
  cr_assert_eq(info.not_after - info.not_before >= 3649 * 86400, 1);
  free_pki(&p);
}

Test(tls, leaf_certificate_fields) {
  pki p;
  ckt_cert_info info;
  make_pki(&p, "ops@example.org");
  cr_assert_eq(ckt_cert_describe(p.leaf, p.leaf_len, &info), CKT_OK);
  cr_assert_not(info.is_ca);
  cr_assert(info.is_ed25519);
  cr_assert(strstr(info.subject, "CN=localhost"), "%s", info.subject);
  cr_assert(strstr(info.subject, "OU=node"), "%s", info.subject);
  cr_assert(strstr(info.issuer, "CN=ckt CA"), "%s", info.issuer);
  cr_assert(strstr(info.sans, "DNS:localhost"), "%s", info.sans);
  cr_assert(strstr(info.sans, "IP:127.0.0.1"), "%s", info.sans);
  cr_assert(strstr(info.sans, "email:ops@example.org"), "%s", info.sans);
  cr_assert_str_eq(info.email, "ops@example.org");
  cr_assert_eq(memcmp(info.public_key, p.key.pub, 32), 0);
  cr_assert_eq(info.not_after - info.not_before >= 29 * 86400, 1);
  cr_assert_eq(info.not_after - info.not_before <= 31 * 86400, 1);
  free_pki(&p);
}

Test(tls, serial_numbers_are_random) {
  pki a, b;
  ckt_cert_info ia, ib;
  make_pki(&a, NULL);
  make_pki(&b, NULL);
  cr_assert_eq(ckt_cert_describe(a.leaf, a.leaf_len, &ia), CKT_OK);
  cr_assert_eq(ckt_cert_describe(b.leaf, b.leaf_len, &ib), CKT_OK);
  cr_assert_geq(strlen(ia.serial), 16 * 3 - 1);
  cr_assert_str_neq(ia.serial, ib.serial);
  free_pki(&a);
  free_pki(&b);
}

Test(tls, chain_verification_good_and_bad) {
  pki p, other;
  make_pki(&p, NULL);
  make_pki(&other, NULL);
  cr_assert_eq(ckt_cert_verify(p.ca, p.ca_len, p.leaf, p.leaf_len), CKT_OK);
  cr_assert_eq(ckt_cert_verify(p.ca, p.ca_len, p.ca, p.ca_len), CKT_OK);
  cr_assert_eq(ckt_cert_verify(other.ca, other.ca_len, p.leaf, p.leaf_len),
               CKT_ERR_CERT_UNTRUSTED);
  cr_assert_eq(ckt_cert_verify(p.leaf, p.leaf_len, p.leaf, p.leaf_len),
               CKT_ERR_CERT_NOT_CA);
  cr_assert_eq(ckt_cert_verify(p.ca, p.ca_len, "junk", 4), CKT_ERR_FORMAT);
  free_pki(&p);
  free_pki(&other);
}

Test(tls, signing_with_the_wrong_ca_key_is_refused) {
  pki p;
  ckt_ed25519_key stranger, k;
  char *pem = NULL;
  size_t len;
  make_pki(&p, NULL);
  cr_assert_eq(ckt_key_generate(&stranger), CKT_OK);
  cr_assert_eq(ckt_key_generate(&k), CKT_OK);
  cr_assert_eq(
      ckt_cert_make_leaf(&k, &stranger, p.ca, p.ca_len, NULL, &pem, &len),
      CKT_ERR_KEY_MISMATCH);
  cr_assert_eq(
      ckt_cert_make_leaf(&k, &p.key, p.leaf, p.leaf_len, NULL, &pem, &len),
      CKT_ERR_CERT_NOT_CA);
  cr_assert_null(pem);
  free_pki(&p);
}

Test(tls, key_must_match_certificate) {
  pki p;
  make_pki(&p, NULL);
  cr_assert_eq(ckt_cert_check_key(p.leaf, p.leaf_len, &p.key), CKT_OK);
  cr_assert_eq(ckt_cert_check_key(p.leaf, p.leaf_len, &p.ca_key),
               CKT_ERR_KEY_MISMATCH);
  free_pki(&p);
}

Test(tls, bad_certificate_options_are_refused) {
  ckt_ed25519_key k;
  char *pem = NULL;
  size_t len;
  ckt_cert_options too_long = {
      .email = "a-very-long-address-that-cannot-fit-in-sixty-four-characters@"
               "example.org"};
  ckt_cert_options control = {.email = "bad\nemail"};
  ckt_cert_options days = {.valid_days = CKT_CERT_MAX_DAYS + 1};
  cr_assert_eq(ckt_key_generate(&k), CKT_OK);
  cr_assert_eq(ckt_cert_make_ca(&k, &too_long, &pem, &len),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_cert_make_ca(&k, &control, &pem, &len),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_cert_make_ca(&k, &days, &pem, &len),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_null(pem);
}

Test(tls, openssl_made_ed25519_chain_verifies_in_ckt) {
  char *ca, *leaf, *expired;
  size_t ca_len, leaf_len, exp_len;
  ckt_cert_info info;
  ca = fixture("ossl_ca.crt", &ca_len);
  leaf = fixture("ossl_leaf.crt", &leaf_len);
  expired = fixture("ossl_expired.crt", &exp_len);
  cr_assert_eq(ckt_cert_describe(leaf, leaf_len, &info), CKT_OK);
  cr_assert(info.is_ed25519);
  cr_assert_eq(ckt_cert_verify(ca, ca_len, leaf, leaf_len), CKT_OK);
  cr_assert_eq(ckt_cert_verify(ca, ca_len, expired, exp_len),
               CKT_ERR_CERT_EXPIRED);
  ckt_free(ca);
  ckt_free(leaf);
  ckt_free(expired);
}

Test(tls, rsa_certificate_is_refused_by_type) {
  char *rsa;
  size_t len;
  ckt_cert_info info;
  pki p;
  rsa = fixture("rsa.crt", &len);
  cr_assert_eq(ckt_cert_describe(rsa, len, &info), CKT_OK);
  cr_assert_str_eq(info.key_type, "RSA");
  cr_assert_not(info.is_ed25519);
  make_pki(&p, NULL);
  cr_assert_eq(ckt_cert_verify(p.ca, p.ca_len, rsa, len), CKT_ERR_KEY_TYPE);
  cr_assert_eq(ckt_cert_verify(rsa, len, p.leaf, p.leaf_len), CKT_ERR_KEY_TYPE);
  ckt_free(rsa);
  free_pki(&p);
}

Test(tls, ckt_signs_with_an_openssl_made_ca) {
  char *ca, *cakey, *leaf;
  size_t ca_len, cakey_len, leaf_len;
  ckt_ed25519_key ca_key, k;
  ca = fixture("ossl_ca.crt", &ca_len);
  cakey = fixture("ossl_ca.key", &cakey_len);
  cr_assert_eq(ckt_key_from_pem(cakey, cakey_len, NULL, 0, &ca_key), CKT_OK);
  cr_assert_eq(ckt_key_generate(&k), CKT_OK);
  cr_assert_eq(
      ckt_cert_make_leaf(&k, &ca_key, ca, ca_len, NULL, &leaf, &leaf_len),
      CKT_OK);
  cr_assert_eq(ckt_cert_verify(ca, ca_len, leaf, leaf_len), CKT_OK);
  ckt_free(ca);
  ckt_free(cakey);
  ckt_free(leaf);
}

/* ---- identities on disk -------------------------------------------------- */

static char good_pass[] = "s3cret", bad_pass[] = "guess";

static int test_pass(void *user, const char *what, int confirm, char *buf,
                     size_t size) {
  (void)what;
  (void)confirm;
  return snprintf(buf, size, "%s", (const char *)user);
}

static void path(char *out, const char *rel) {
  snprintf(out, 512, "%s/%s", tmpdir, rel);
}

static mode_t mode_of(const char *rel) {
  char p[512];
  struct stat st;
  path(p, rel);
  cr_assert_eq(stat(p, &st), 0, "stat %s", p);
  return st.st_mode & 0777;
}

Test(tls, identity_create_and_load, .init = setup_tmp, .fini = teardown_tmp) {
  char certs[512], priv[512], *pem;
  size_t len;
  ckt_ed25519_key k;
  int ca_created = 0;
  ckt_identity_options o = {.passphrase = test_pass,
                            .passphrase_user = good_pass};
  path(certs, "certs");
  path(priv, "private");
  cr_assert_eq(ckt_identity_make(certs, "node", priv, &o, &ca_created), CKT_OK);
  cr_assert_eq(ca_created, 1);
  cr_assert_eq(mode_of("private"), 0700);
  cr_assert_eq(mode_of("certs"), 0700);
  cr_assert_eq(mode_of("private/ca.key"), 0600);
  cr_assert_eq(mode_of("certs/node.key"), 0600);
  cr_assert_eq(ckt_identity_make(certs, "client", priv, &o, &ca_created),
               CKT_OK);
  cr_assert_eq(ca_created, 0, "the existing CA signs the second identity");

  cr_assert_eq(ckt_identity_load(certs, "node", &o, &pem, &len, &k), CKT_OK);
  {
    char ca_path[512], *ca;
    size_t ca_len;
    path(ca_path, "private/ca.crt");
    cr_assert_eq(ckt_pem_file_read(ca_path, &ca, &ca_len), CKT_OK);
    cr_assert_eq(ckt_cert_verify(ca, ca_len, pem, len), CKT_OK);
    ckt_free(ca);
  }
  ckt_free(pem);

  /* Encrypted keys are unusable without the right passphrase. */
  {
    ckt_identity_options wrong = {.passphrase = test_pass,
                                  .passphrase_user = bad_pass};
    ckt_identity_options none = {0};
    cr_assert_eq(ckt_identity_load(certs, "node", &wrong, &pem, &len, &k),
                 CKT_ERR_PASSPHRASE);
    cr_assert_eq(ckt_identity_load(certs, "node", &none, &pem, &len, &k),
                 CKT_ERR_PASSPHRASE_REQUIRED);
    /* ...and so is the CA: signing a new identity needs its passphrase. */
    cr_assert_eq(ckt_identity_make(certs, "third", priv, &wrong, NULL),
                 CKT_ERR_PASSPHRASE);
    {
      char third[600];
      snprintf(third, sizeof(third), "%s/third.key", certs);
      cr_assert_neq(access(third, F_OK), 0, "nothing written on failure");
    }
  }
}

Test(tls, identity_never_overwrites, .init = setup_tmp, .fini = teardown_tmp) {
  char certs[512], priv[512], keyp[512], *before, *after;
  size_t blen, alen;
  path(certs, "certs");
  path(priv, "private");
  path(keyp, "certs/node.key");
  cr_assert_eq(ckt_identity_make(certs, "node", priv, NULL, NULL), CKT_OK);
  cr_assert_eq(ckt_pem_file_read(keyp, &before, &blen), CKT_OK);
  cr_assert_eq(ckt_identity_make(certs, "node", priv, NULL, NULL),
               CKT_ERR_EXISTS);
  cr_assert_eq(ckt_identity_make_ca(priv, NULL), CKT_ERR_EXISTS);
  cr_assert_eq(ckt_pem_file_read(keyp, &after, &alen), CKT_OK);
  cr_assert_eq(blen, alen);
  cr_assert_eq(memcmp(before, after, blen), 0);
  ckt_free(before);
  ckt_free(after);
}

Test(tls, identity_names_are_checked, .init = setup_tmp, .fini = teardown_tmp) {
  char certs[512], priv[512];
  path(certs, "certs");
  path(priv, "private");
  cr_assert_eq(ckt_identity_make(certs, "../evil", priv, NULL, NULL),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_identity_make(certs, "", priv, NULL, NULL),
               CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_identity_make(certs, "a b", priv, NULL, NULL),
               CKT_ERR_INVALID_ARGUMENT);
}

Test(tls, psk_file_is_32_random_bytes_and_not_overwritten, .init = setup_tmp,
     .fini = teardown_tmp) {
  char p[512];
  struct stat st;
  path(p, "deep/dir/psk.binary");
  cr_assert_eq(ckt_psk_create(p), CKT_OK);
  cr_assert_eq(stat(p, &st), 0);
  cr_assert_eq(st.st_size, CKT_PSK_LEN);
  cr_assert_eq(st.st_mode & 0777, 0600);
  cr_assert_eq(mode_of("deep/dir"), 0700);
  cr_assert_eq(ckt_psk_create(p), CKT_ERR_EXISTS);
}

Test(tls, fixed_serial_and_validity_make_the_same_certificate) {
  static const uint8_t serial[] = {0x12, 0x34};
  ckt_ed25519_key k;
  ckt_cert_options o;
  ckt_cert_info info;
  char *a = NULL, *b = NULL;
  size_t alen, blen;
  uint8_t sk[crypto_sign_SECRETKEYBYTES];
  memset(k.seed, 7, sizeof(k.seed));
  crypto_sign_seed_keypair(k.pub, sk, k.seed);
  memset(&o, 0, sizeof(o));
  o.not_before = 946684800; /* 2000-01-01 */
  o.valid_days = 36500;
  o.serial = serial;
  o.serial_len = sizeof(serial);
  cr_assert_eq(ckt_cert_make_ca(&k, &o, &a, &alen), CKT_OK);
  cr_assert_eq(ckt_cert_make_ca(&k, &o, &b, &blen), CKT_OK);
  cr_assert_eq(alen, blen);
  cr_assert(memcmp(a, b, alen) == 0, "the same inputs, the same bytes");
  cr_assert_eq(ckt_cert_describe(a, alen, &info), CKT_OK);
  cr_assert_str_eq(info.serial, "12:34");
  cr_assert_eq(info.not_before, 946684800);
  cr_assert_eq(info.not_after, 946684800 + 36500ll * 86400);
  ckt_free(a);
  ckt_free(b);
  /* Zero, negative and padded serials are refused. */
  o.serial = (const uint8_t[]){0x00, 0x01};
  cr_assert_eq(ckt_cert_make_ca(&k, &o, &a, &alen), CKT_ERR_INVALID_ARGUMENT);
  o.serial = (const uint8_t[]){0x80, 0x01};
  cr_assert_eq(ckt_cert_make_ca(&k, &o, &a, &alen), CKT_ERR_INVALID_ARGUMENT);
  o.serial_len = 21;
  cr_assert_eq(ckt_cert_make_ca(&k, &o, &a, &alen), CKT_ERR_INVALID_ARGUMENT);
}

/* ---- the pre-shared-key layer's cryptography ----------------------------- */

#include "tls_psk.h"

static void psk_key(ckt_ed25519_key *k, uint8_t fill) {
  uint8_t sk[crypto_sign_SECRETKEYBYTES];
  memset(k->seed, fill, sizeof(k->seed));
  crypto_sign_seed_keypair(k->pub, sk, k->seed);
}

typedef struct psk_pair {
  ckt_ed25519_key ck, sk; /* client's and server's identity keys */
  ckt_psk_hs c, s;
} psk_pair;

/* Both handshakes, HELLOs exchanged; returns hello_accept's codes. */
static void psk_pair_init(psk_pair *p, const char *cpsk, const char *spsk,
                          uint8_t cexp, uint8_t sexp, int *crv, int *srv) {
  uint8_t e1[32], e2[32], seed1[32], seed2[32];
  uint8_t hc[CKT_PSK_HELLO_LEN], hs[CKT_PSK_HELLO_LEN];
  psk_key(&p->ck, 1);
  psk_key(&p->sk, 2);
  memset(e1, cexp, sizeof(e1));
  memset(e2, sexp, sizeof(e2));
  memset(seed1, 3, sizeof(seed1));
  memset(seed2, 4, sizeof(seed2));
  cr_assert_eq(
      ckt_psk_hs_init(&p->c, (const uint8_t *)cpsk, strlen(cpsk), 1, e1, seed1),
      CKT_OK);
  cr_assert_eq(
      ckt_psk_hs_init(&p->s, (const uint8_t *)spsk, strlen(spsk), 0, e2, seed2),
      CKT_OK);
  cr_assert_eq(ckt_psk_hello_encode(&p->c, &p->ck, hc), CKT_OK);
  cr_assert_eq(ckt_psk_hello_encode(&p->s, &p->sk, hs), CKT_OK);
  *srv = ckt_psk_hello_accept(&p->s, hc, p->ck.pub);
  *crv = ckt_psk_hello_accept(&p->c, hs, p->sk.pub);
}

#define PSK_A "0123456789abcdef0123456789abcdef"
#define PSK_B "0123456789abcdef0123456789abcdeX"

Test(tls, psk_handshake_confirms_and_seals_both_ways) {
  psk_pair p;
  uint8_t conf[CKT_PSK_CONFIRM_LEN], r[16] = {0};
  ckt_buf sealed, opened;
  int crv, srv;
  psk_pair_init(&p, PSK_A, PSK_A, 9, 9, &crv, &srv);
  cr_assert_eq(crv, CKT_OK);
  cr_assert_eq(srv, CKT_OK);
  cr_assert_eq(ckt_psk_confirm_encode(&p.c, r, conf), CKT_OK);
  cr_assert_eq(ckt_psk_confirm_check(&p.s, conf), CKT_OK);
  cr_assert_eq(ckt_psk_confirm_encode(&p.s, r, conf), CKT_OK);
  cr_assert_eq(ckt_psk_confirm_check(&p.c, conf), CKT_OK);
  /* A frame each way; the counter makes every nonce new. */
  ckt_buf_init(&sealed, 1 << 16);
  ckt_buf_init(&opened, 1 << 16);
  cr_assert_eq(ckt_psk_seal(&p.c, 2, (const uint8_t *)"hello", 5, r, &sealed),
               CKT_OK);
  cr_assert_eq(sealed.len, 5 + CKT_PSK_OVERHEAD);
  cr_assert_eq(sealed.data[0], 1, "the counter: one frame before this one");
  cr_assert_eq(ckt_psk_open(&p.s, 2, sealed.data, sealed.len, &opened), CKT_OK);
  cr_assert_eq(opened.len, 5);
  cr_assert(memcmp(opened.data, "hello", 5) == 0);
  /* Another frame type, the wrong direction, or one flipped bit: refused,
   * and out is left as it was. */
  cr_assert_eq(ckt_psk_open(&p.s, 1, sealed.data, sealed.len, &opened),
               CKT_ERR_PSK);
  cr_assert_eq(ckt_psk_open(&p.c, 2, sealed.data, sealed.len, &opened),
               CKT_ERR_PSK);
  sealed.data[30] ^= 1;
  cr_assert_eq(ckt_psk_open(&p.s, 2, sealed.data, sealed.len, &opened),
               CKT_ERR_PSK);
  cr_assert_eq(opened.len, 5);
  cr_assert_eq(ckt_psk_open(&p.s, 2, sealed.data, 10, &opened), CKT_ERR_PSK);
  sealed.len = 0;
  cr_assert_eq(ckt_psk_seal(&p.s, 2, (const uint8_t *)"back", 4, r, &sealed),
               CKT_OK);
  opened.len = 0;
  cr_assert_eq(ckt_psk_open(&p.c, 2, sealed.data, sealed.len, &opened), CKT_OK);
  cr_assert(opened.len == 4 && memcmp(opened.data, "back", 4) == 0);
  ckt_buf_free(&sealed);
  ckt_buf_free(&opened);
  ckt_psk_hs_wipe(&p.c);
  ckt_psk_hs_wipe(&p.s);
}

Test(tls, psk_that_differs_fails_the_confirm_on_both_sides) {
  psk_pair p;
  uint8_t conf[CKT_PSK_CONFIRM_LEN], r[16] = {0};
  int crv, srv;
  psk_pair_init(&p, PSK_A, PSK_B, 9, 9, &crv, &srv);
  cr_assert_eq(crv, CKT_OK); /* the HELLOs verify: TLS identities hold */
  cr_assert_eq(srv, CKT_OK);
  cr_assert_eq(ckt_psk_confirm_encode(&p.c, r, conf), CKT_OK);
  cr_assert_eq(ckt_psk_confirm_check(&p.s, conf), CKT_ERR_PSK);
  cr_assert_eq(ckt_psk_confirm_encode(&p.s, r, conf), CKT_OK);
  cr_assert_eq(ckt_psk_confirm_check(&p.c, conf), CKT_ERR_PSK);
}

Test(tls, psk_hello_is_bound_to_the_identity_and_the_tls_session) {
  psk_pair p;
  ckt_ed25519_key other;
  uint8_t hello[CKT_PSK_HELLO_LEN], seed[32], exp[32];
  ckt_psk_hs h;
  int crv, srv;
  /* Another TLS session (exporter): the HELLOs do not verify. */
  psk_pair_init(&p, PSK_A, PSK_A, 9, 8, &crv, &srv);
  cr_assert_eq(crv, CKT_ERR_PSK);
  cr_assert_eq(srv, CKT_ERR_PSK);
  /* Signed by a key other than the one TLS authenticated. */
  psk_key(&other, 7);
  memset(seed, 5, sizeof(seed));
  memset(exp, 9, sizeof(exp));
  cr_assert_eq(ckt_psk_hs_init(&h, (const uint8_t *)PSK_A, 32, 1, exp, seed),
               CKT_OK);
  cr_assert_eq(ckt_psk_hello_encode(&h, &other, hello), CKT_OK);
  psk_pair_init(&p, PSK_A, PSK_A, 9, 9, &crv, &srv);
  cr_assert_eq(ckt_psk_hello_accept(&p.s, hello, p.ck.pub), CKT_ERR_PSK);
  /* Not a HELLO at all. */
  hello[0] = 'X';
  cr_assert_eq(ckt_psk_hello_accept(&p.s, hello, other.pub), CKT_ERR_FORMAT);
  /* A low-order ephemeral key, properly signed: refused. */
  memset(h.eph_pk, 0, sizeof(h.eph_pk));
  cr_assert_eq(ckt_psk_hello_encode(&h, &other, hello), CKT_OK);
  cr_assert_eq(ckt_psk_hello_accept(&p.s, hello, other.pub), CKT_ERR_PSK);
  /* No keys, no sealing. */
  cr_assert_eq(ckt_psk_confirm_check(&h, hello), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_eq(ckt_psk_hs_init(&h, (const uint8_t *)"short", 5, 1, exp, seed),
               CKT_ERR_INVALID_ARGUMENT);
}

Test(tls, psk_files_hold_32_to_64_bytes) {
  char path[] = "/tmp/ckt-test-psk-XXXXXX";
  uint8_t psk[CKT_PSK_MAX], data[80];
  size_t len = 0;
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  memset(data, 0x5a, sizeof(data));
  cr_assert_eq(write(fd, data, 31), 31);
  cr_assert_eq(ckt_psk_load(path, psk, &len), CKT_ERR_FORMAT);
  cr_assert_eq(write(fd, data, 1), 1);
  cr_assert_eq(ckt_psk_load(path, psk, &len), CKT_OK);
  cr_assert_eq(len, 32);
  cr_assert_eq(write(fd, data, 33), 33);
  cr_assert_eq(ckt_psk_load(path, psk, &len), CKT_ERR_FORMAT);
  close(fd);
  unlink(path);
  cr_assert_eq(ckt_psk_load(path, psk, &len), CKT_ERR_NOT_FOUND);
}
