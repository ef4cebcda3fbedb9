/*
 * fuzz_psk.c — libFuzzer target for the pre-shared-key layer's decoders
 * (src/tls/tls_psk.c): a peer's HELLO, its CONFIRM, and sealed frames.
 *
 * Both ends of a handshake are set up with fixed keys.  The input is
 * tried as the client's HELLO (it must be refused unless it is the real
 * one), as a CONFIRM, and as a sealed frame (type from its first byte): a
 * random input never opens.  Then the input is sealed as a frame body and
 * must open to exactly itself on the other side.
 */
#include <sodium.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"
#include "core_buf.h"
#include "tls_psk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int ready;
static ckt_ed25519_key ckey, skey;
static uint8_t chello[CKT_PSK_HELLO_LEN];

static void make_key(ckt_ed25519_key *k, uint8_t fill) {
  uint8_t sk[crypto_sign_SECRETKEYBYTES];
  memset(k->seed, fill, sizeof(k->seed));
  crypto_sign_seed_keypair(k->pub, sk, k->seed);
}

static void pair(ckt_psk_hs *c, ckt_psk_hs *s) {
  static const uint8_t psk[32] = "0123456789abcdef0123456789abcdef";
  uint8_t exp[32], seed1[32], seed2[32], shello[CKT_PSK_HELLO_LEN];
  memset(exp, 7, sizeof(exp));
  memset(seed1, 1, sizeof(seed1));
  memset(seed2, 2, sizeof(seed2));
  if (ckt_psk_hs_init(c, psk, sizeof(psk), 1, exp, seed1) != CKT_OK ||
      ckt_psk_hs_init(s, psk, sizeof(psk), 0, exp, seed2) != CKT_OK ||
      ckt_psk_hello_encode(c, &ckey, chello) != CKT_OK ||
      ckt_psk_hello_encode(s, &skey, shello) != CKT_OK ||
      ckt_psk_hello_accept(s, chello, ckey.pub) != CKT_OK ||
      ckt_psk_hello_accept(c, shello, skey.pub) != CKT_OK) {
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ckt_psk_hs c, s, fresh;
  ckt_buf sealed, opened;
  uint8_t r[16] = {0}, seed[32], exp[32];
  int rv;

  if (!ready) {
    if (sodium_init() < 0) {
      abort();
    }
    make_key(&ckey, 3);
    make_key(&skey, 4);
    ready = 1;
  }
  pair(&c, &s);

  /* As the client's HELLO, to a fresh server handshake. */
  if (size >= CKT_PSK_HELLO_LEN) {
    memset(seed, 9, sizeof(seed));
    memset(exp, 7, sizeof(exp));
    ckt_psk_hs_init(&fresh, (const uint8_t *)"0123456789abcdef0123456789abcdef",
                    32, 0, exp, seed);
    rv = ckt_psk_hello_accept(&fresh, data, ckey.pub);
    if (rv == CKT_OK && memcmp(data, chello, CKT_PSK_HELLO_LEN) != 0) {
      abort(); /* a forged HELLO verified */
    }
    ckt_psk_hs_wipe(&fresh);
  }
  /* As a CONFIRM and as a sealed frame: random bytes never open. */
  if (size >= CKT_PSK_CONFIRM_LEN &&
      ckt_psk_confirm_check(&s, data) == CKT_OK) {
    abort();
  }
  ckt_buf_init(&opened, 1u << 20);
  if (size > 0 &&
      ckt_psk_open(&s, data[0], data + 1, size - 1, &opened) != CKT_ERR_PSK) {
    abort();
  }
  if (opened.len != 0) {
    abort(); /* a refused frame left bytes behind */
  }
  /* Sealed by the client, the input opens to itself at the server. */
  ckt_buf_init(&sealed, (1u << 20) + CKT_PSK_OVERHEAD);
  if (ckt_psk_seal(&c, 2, data, size, r, &sealed) != CKT_OK ||
      sealed.len != size + CKT_PSK_OVERHEAD ||
      ckt_psk_open(&s, 2, sealed.data, sealed.len, &opened) != CKT_OK ||
      opened.len != size || (size && memcmp(opened.data, data, size) != 0)) {
    abort();
  }
  ckt_buf_free(&sealed);
  ckt_buf_free(&opened);
  ckt_psk_hs_wipe(&c);
  ckt_psk_hs_wipe(&s);
  return 0;
}
