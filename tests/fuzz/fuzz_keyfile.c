/*
 * fuzz_keyfile.c — libFuzzer target for the PEM armor decoder and the
 * private-key file parser (plain PKCS#8 and ckt's sealed format), plus the
 * certificate reader that shares the PEM decoder.
 *
 * The sealed format's KDF is never run here: with no passphrase the parser
 * checks the armor and the headers and stops before Argon2id.
 */
#include <stddef.h>
#include <stdint.h>

#include "ckt/identity.h"
#include "tls_pem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *text = (const char *)data;
  ckt_ed25519_key key;
  ckt_cert_info info;
  ckt_pem pem;

  if (ckt_pem_decode(text, size, &pem) == CKT_OK) {
    ckt_pem_clear(&pem);
  }
  (void)ckt_key_from_pem(text, size, NULL, 0, &key);
  (void)ckt_key_pem_is_encrypted(text, size);
  (void)ckt_cert_describe(text, size, &info);
  ckt_key_wipe(&key);
  return 0;
}
