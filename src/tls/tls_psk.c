/* tls_psk.c — the pre-shared-key layer's cryptography (see tls_psk.h). */
#include <errno.h>
#include <sodium.h>
#include <string.h>

#include "ckt/error.h"
#include "core_file.h"
#include "core_util.h"
#include "tls_int.h"
#include "tls_psk.h"

static const uint8_t magic[8] = {'C', 'K', 'T', 'P', 'S', 'K', '1', 0};
#define HELLO_LABEL "ckt psk v1 hello"
#define KEYS_LABEL "ckt psk v1 keys"
#define AD_LABEL "ckt psk v1"
#define AD_LEN (sizeof(AD_LABEL) - 1 + 2)

int ckt_psk_load(const char *path, uint8_t psk[CKT_PSK_MAX], size_t *len) {
  ckt_buf b;
  int rv;
  ckt_buf_init(&b, CKT_PSK_MAX + 1);
  rv = ckt_file_read(path, CKT_PSK_MAX + 1, &b);
  if (rv == CKT_ERR_TOO_LARGE ||
      (rv == CKT_OK && (b.len < CKT_PSK_MIN || b.len > CKT_PSK_MAX))) {
    rv = CKT_ERR_FORMAT;
  }
  if (rv == CKT_OK) {
    memcpy(psk, b.data, b.len);
    *len = b.len;
  }
  ckt_buf_free(&b); /* wipes */
  return rv;
}

int ckt_psk_hs_init(ckt_psk_hs *h, const uint8_t *psk, size_t psk_len,
                    int client, const uint8_t exporter[CKT_PSK_EXPORTER_LEN],
                    const uint8_t seed[32]) {
  int rv;
  memset(h, 0, sizeof(*h));
  if (!psk || psk_len < CKT_PSK_MIN || psk_len > CKT_PSK_MAX) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if ((rv = ckt_tls_init()) != CKT_OK) {
    return rv;
  }
  memcpy(h->psk, psk, psk_len);
  h->psk_len = psk_len;
  h->client = client ? 1 : 0;
  memcpy(h->exporter, exporter, CKT_PSK_EXPORTER_LEN);
  memcpy(h->eph_sk, seed, 32);
  crypto_scalarmult_base(h->eph_pk, h->eph_sk);
  return CKT_OK;
}

void ckt_psk_hs_wipe(ckt_psk_hs *h) {
  sodium_memzero(h, sizeof(*h));
}

/* What a HELLO's signature covers. */
static void hello_message(uint8_t out[16 + 1 + 32 + CKT_PSK_EXPORTER_LEN],
                          int client, const uint8_t eph[32],
                          const uint8_t exporter[CKT_PSK_EXPORTER_LEN]) {
  memcpy(out, HELLO_LABEL, 16);
  out[16] = client ? 0 : 1;
  memcpy(out + 17, eph, 32);
  memcpy(out + 49, exporter, CKT_PSK_EXPORTER_LEN);
}

int ckt_psk_hello_encode(const ckt_psk_hs *h, const ckt_ed25519_key *key,
                         uint8_t out[CKT_PSK_HELLO_LEN]) {
  uint8_t msg[16 + 1 + 32 + CKT_PSK_EXPORTER_LEN];
  uint8_t pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
  int rv;
  hello_message(msg, h->client, h->eph_pk, h->exporter);
  memcpy(out, magic, sizeof(magic));
  memcpy(out + 8, h->eph_pk, 32);
  rv = crypto_sign_seed_keypair(pk, sk, key->seed) == 0 &&
               crypto_sign_detached(out + 40, NULL, msg, sizeof(msg), sk) == 0
           ? CKT_OK
           : CKT_ERR_CRYPTO;
  sodium_memzero(sk, sizeof(sk));
  return rv;
}

int ckt_psk_hello_accept(ckt_psk_hs *h, const uint8_t in[CKT_PSK_HELLO_LEN],
                         const uint8_t peer_key[CKT_ED25519_KEY_LEN]) {
  uint8_t msg[16 + 1 + 32 + CKT_PSK_EXPORTER_LEN], shared[32], keys[64];
  crypto_generichash_state st;
  const uint8_t *ceph, *seph;
  if (memcmp(in, magic, sizeof(magic)) != 0) {
    return CKT_ERR_FORMAT;
  }
  /* The peer signed with its own role: the opposite of ours. */
  hello_message(msg, !h->client, in + 8, h->exporter);
  if (crypto_sign_verify_detached(in + 40, msg, sizeof(msg), peer_key) != 0) {
    return CKT_ERR_PSK;
  }
  memcpy(h->peer_eph, in + 8, 32);
  /* Fails on a low-order point (an all-zero shared secret). */
  if (crypto_scalarmult(shared, h->eph_sk, h->peer_eph) != 0) {
    return CKT_ERR_PSK;
  }
  ceph = h->client ? h->eph_pk : h->peer_eph;
  seph = h->client ? h->peer_eph : h->eph_pk;
  crypto_generichash_init(&st, h->psk, h->psk_len, sizeof(keys));
  crypto_generichash_update(&st, (const uint8_t *)KEYS_LABEL,
                            sizeof(KEYS_LABEL) - 1);
  crypto_generichash_update(&st, shared, sizeof(shared));
  crypto_generichash_update(&st, h->exporter, CKT_PSK_EXPORTER_LEN);
  crypto_generichash_update(&st, ceph, 32);
  crypto_generichash_update(&st, seph, 32);
  crypto_generichash_final(&st, keys, sizeof(keys));
  /* keys[0..32) seal client -> server, keys[32..64) server -> client. */
  memcpy(h->tx, keys + (h->client ? 0 : 32), 32);
  memcpy(h->rx, keys + (h->client ? 32 : 0), 32);
  h->have_keys = 1;
  sodium_memzero(shared, sizeof(shared));
  sodium_memzero(keys, sizeof(keys));
  sodium_memzero(&st, sizeof(st));
  return CKT_OK;
}

/* "ckt psk v1" | direction (0: client to server) | frame type. */
static void make_ad(uint8_t ad[AD_LEN], int from_client, uint8_t type) {
  memcpy(ad, AD_LABEL, sizeof(AD_LABEL) - 1);
  ad[sizeof(AD_LABEL) - 1] = from_client ? 0 : 1;
  ad[sizeof(AD_LABEL)] = type;
}

#define CONFIRM_TYPE 0xff /* no frame has this type */

int ckt_psk_seal(ckt_psk_hs *h, uint8_t type, const uint8_t *body, size_t len,
                 const uint8_t rand16[16], ckt_buf *out) {
  uint8_t nonce[CKT_PSK_NONCE_LEN], ad[AD_LEN];
  size_t start = out->len;
  uint8_t *p;
  int rv;
  if (!h->have_keys) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  for (int i = 0; i < 8; i++) {
    nonce[i] = (uint8_t)(h->tx_count >> (8 * i));
  }
  memcpy(nonce + 8, rand16, 16);
  if ((rv = ckt_buf_append(out, nonce, sizeof(nonce))) != CKT_OK ||
      (len && (rv = ckt_buf_append(out, body, len)) != CKT_OK) ||
      (rv = ckt_buf_append(out, nonce, CKT_PSK_TAG_LEN)) != CKT_OK) {
    out->len = start; /* as it was */
    if (out->data) {
      out->data[start] = 0;
    }
    return rv;
  }
  make_ad(ad, h->client, type);
  p = out->data + start + CKT_PSK_NONCE_LEN;
  crypto_aead_xchacha20poly1305_ietf_encrypt_detached(
      p, p + len, NULL, p, len, ad, sizeof(ad), NULL, nonce, h->tx);
  h->tx_count++;
  return CKT_OK;
}

int ckt_psk_open(const ckt_psk_hs *h, uint8_t type, const uint8_t *in,
                 size_t len, ckt_buf *out) {
  uint8_t ad[AD_LEN];
  size_t start = out->len, n;
  uint8_t *p;
  int rv;
  if (!h->have_keys) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (len < CKT_PSK_OVERHEAD) {
    return CKT_ERR_PSK;
  }
  n = len - CKT_PSK_OVERHEAD;
  if (n && (rv = ckt_buf_append(out, in + CKT_PSK_NONCE_LEN, n)) != CKT_OK) {
    return rv;
  }
  make_ad(ad, !h->client, type);
  p = out->data ? out->data + start : NULL;
  if (crypto_aead_xchacha20poly1305_ietf_decrypt_detached(
          p, NULL, n ? p : (const uint8_t *)"", n, in + len - CKT_PSK_TAG_LEN,
          ad, sizeof(ad), in, h->rx) != 0) {
    if (n) {
      sodium_memzero(out->data + start, n);
      out->len = start;
      out->data[start] = 0;
    }
    return CKT_ERR_PSK;
  }
  return CKT_OK;
}

int ckt_psk_confirm_encode(ckt_psk_hs *h, const uint8_t rand16[16],
                           uint8_t out[CKT_PSK_CONFIRM_LEN]) {
  ckt_buf b;
  int rv;
  ckt_buf_init(&b, CKT_PSK_CONFIRM_LEN);
  rv = ckt_psk_seal(h, CONFIRM_TYPE, NULL, 0, rand16, &b);
  if (rv == CKT_OK) {
    memcpy(out, b.data, CKT_PSK_CONFIRM_LEN);
  }
  ckt_buf_free(&b);
  return rv;
}

int ckt_psk_confirm_check(const ckt_psk_hs *h,
                          const uint8_t in[CKT_PSK_CONFIRM_LEN]) {
  ckt_buf b;
  int rv;
  ckt_buf_init(&b, 0);
  rv = ckt_psk_open(h, CONFIRM_TYPE, in, CKT_PSK_CONFIRM_LEN, &b);
  ckt_buf_free(&b);
  return rv;
}
