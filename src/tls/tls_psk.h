/*
 * tls_psk.h — the pre-shared-key layer's cryptography (docs/security.md).
 *
 * Inside a QUIC connection that TLS already authenticated, both ends run a
 * second key exchange that only holders of the pre-shared key (PSK) can
 * complete, and then seal every frame with it:
 *
 *   HELLO   (each side, once): magic "CKTPSK1\0" | X25519 ephemeral public
 *           key (32) | Ed25519 signature (64) by the node's identity key
 *           over "ckt psk v1 hello" | role (0 client, 1 server) | the
 *           ephemeral key | the TLS exporter of the outer session (32).
 *   keys:   BLAKE2b-512 keyed with the PSK over "ckt psk v1 keys" |
 *           X25519 shared secret | exporter | client's ephemeral key |
 *           server's ephemeral key; the first 32 bytes seal what the
 *           client sends, the last 32 what the server sends.
 *   CONFIRM (each side, once, sealed): proves the sender derived the same
 *           keys — a PSK that differs shows here, on both sides.
 *   frames: nonce (24: an 8-byte per-direction counter, then 16 random
 *           bytes) | XChaCha20-Poly1305 ciphertext of the frame body, with
 *           "ckt psk v1" | direction | frame type as associated data.
 *
 * The exporter binds the inner keys to this very TLS session (a HELLO
 * replayed into another connection does not verify); the signatures bind
 * them to the identities TLS authenticated; the PSK keeps out anyone who
 * holds a CA-signed key but not the PSK.
 *
 * Ownership: a ckt_psk_hs holds secrets: ckt_psk_hs_wipe() when done.
 * Threading: none; one handshake per connection, on its loop.
 */
#ifndef CKT_TLS_PSK_H
#define CKT_TLS_PSK_H

#include <stddef.h>
#include <stdint.h>

#include "ckt/identity.h"
#include "core_buf.h"

#define CKT_PSK_MIN 32 /* bytes of a pre-shared key file, at least */
#define CKT_PSK_MAX 64 /* and at most */
#define CKT_PSK_EXPORTER_LEN 32
#define CKT_PSK_EXPORTER_LABEL "EXPORTER-ckt-psk-v1"
#define CKT_PSK_HELLO_LEN (8 + 32 + 64)
#define CKT_PSK_NONCE_LEN 24
#define CKT_PSK_TAG_LEN 16
#define CKT_PSK_OVERHEAD (CKT_PSK_NONCE_LEN + CKT_PSK_TAG_LEN)
#define CKT_PSK_CONFIRM_LEN CKT_PSK_OVERHEAD

typedef struct ckt_psk_hs {
  uint8_t psk[CKT_PSK_MAX];
  size_t psk_len;
  int client; /* 1: we dialed */
  uint8_t exporter[CKT_PSK_EXPORTER_LEN];
  uint8_t eph_sk[32], eph_pk[32], peer_eph[32];
  uint8_t tx[32], rx[32]; /* per-direction keys, once derived */
  uint64_t tx_count;      /* frames sealed so far */
  int have_keys;
} ckt_psk_hs;

/* Reads a PSK file (CKT_PSK_MIN..CKT_PSK_MAX raw bytes, as `selfy -gensym`
 * writes).  CKT_OK, CKT_ERR_NOT_FOUND, CKT_ERR_IO (errno set),
 * CKT_ERR_FORMAT (too short or too long), CKT_ERR_NOMEM. */
int ckt_psk_load(const char *path, uint8_t psk[CKT_PSK_MAX], size_t *len);

/* Starts a handshake; `seed` (32 bytes, from the runtime's randomness so
 * simulations replay) makes the ephemeral X25519 key.  CKT_OK,
 * CKT_ERR_INVALID_ARGUMENT (psk_len outside CKT_PSK_MIN..CKT_PSK_MAX). */
int ckt_psk_hs_init(ckt_psk_hs *h, const uint8_t *psk, size_t psk_len,
                    int client, const uint8_t exporter[CKT_PSK_EXPORTER_LEN],
                    const uint8_t seed[32]);
void ckt_psk_hs_wipe(ckt_psk_hs *h);

/* Our HELLO, signed with our identity key.  CKT_OK, CKT_ERR_CRYPTO. */
int ckt_psk_hello_encode(const ckt_psk_hs *h, const ckt_ed25519_key *key,
                         uint8_t out[CKT_PSK_HELLO_LEN]);
/* Checks the peer's HELLO against the Ed25519 key TLS authenticated and
 * derives the keys.  CKT_OK; CKT_ERR_FORMAT (not a HELLO); CKT_ERR_PSK
 * (the signature does not verify, or the ephemeral key is unusable). */
int ckt_psk_hello_accept(ckt_psk_hs *h, const uint8_t in[CKT_PSK_HELLO_LEN],
                         const uint8_t peer_key[CKT_ED25519_KEY_LEN]);

/* Our CONFIRM (after hello_accept).  CKT_OK, CKT_ERR_INVALID_ARGUMENT (no
 * keys yet). */
int ckt_psk_confirm_encode(ckt_psk_hs *h, const uint8_t rand16[16],
                           uint8_t out[CKT_PSK_CONFIRM_LEN]);
/* CKT_OK if the peer's CONFIRM opens: both sides hold the same PSK;
 * CKT_ERR_PSK otherwise; CKT_ERR_INVALID_ARGUMENT (no keys yet). */
int ckt_psk_confirm_check(const ckt_psk_hs *h,
                          const uint8_t in[CKT_PSK_CONFIRM_LEN]);

/* Appends the sealed form of a frame body (type: the frame's type byte)
 * to out: CKT_PSK_OVERHEAD bytes more than len.  CKT_OK, CKT_ERR_NOMEM,
 * CKT_ERR_TOO_LARGE (out's limit), CKT_ERR_INVALID_ARGUMENT (no keys). */
int ckt_psk_seal(ckt_psk_hs *h, uint8_t type, const uint8_t *body, size_t len,
                 const uint8_t rand16[16], ckt_buf *out);
/* Appends the opened body of a sealed frame to out.  CKT_OK; CKT_ERR_PSK
 * (shorter than the overhead, altered, or sealed with another key);
 * CKT_ERR_NOMEM; CKT_ERR_TOO_LARGE; CKT_ERR_INVALID_ARGUMENT (no keys). */
int ckt_psk_open(const ckt_psk_hs *h, uint8_t type, const uint8_t *in,
                 size_t len, ckt_buf *out);

#endif
