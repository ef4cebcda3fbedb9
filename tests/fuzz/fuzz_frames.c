/*
 * fuzz_frames.c — libFuzzer target for the stream-to-frame reader
 * (node_rx_frame in src/peer/peer_node.c): the bytes of a QUIC stream,
 * arriving in pieces of any size, cut into frames (5-byte header, bounded
 * body) and each body decoded as a message or a fragment.
 *
 * Property: how the bytes are cut into pieces changes nothing.  The input
 * is read twice, once whole and once in pieces whose sizes come from the
 * input itself, and both reads must give the same frames (type and body)
 * and end the same way (a frame error, or bytes left waiting).  Bodies
 * larger than the node's limit are refused before any of it is held.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"
#include "ckt/fragment.h"
#include "ckt/message.h"
#include "core_buf.h"
#include "fragment_codec.h"
#include "peer_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_FRAMES 64
#define FRAME_MAX 4096 /* a small limit, so that "too large" is reached */

typedef struct outcome {
  int nframes;
  uint8_t types[MAX_FRAMES];
  uint64_t hashes[MAX_FRAMES];
  size_t lens[MAX_FRAMES];
  int err;                  /* the error that ended the read, 0 if none */
  size_t hdr_got, body_got; /* what was left waiting for more bytes */
  uint64_t credit;          /* bytes the reader said it consumed */
  size_t consumed;          /* bytes it took from the input */
} outcome;

static uint64_t hash(const uint8_t *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) {
    h = (h ^ p[i]) * 1099511628211ull;
  }
  return h;
}

static void decode_body(uint8_t type, const ckt_buf *body) {
  if (type == CKT_FRAME_MESSAGE) {
    ckt_message *m = NULL;
    if (ckt_message_decode(body->data, body->len, NULL, &m) == CKT_OK) {
      ckt_message_free(m);
    }
  } else if (type == CKT_FRAME_FRAGMENT) {
    ckt_fragment *f = NULL;
    if (ckt_fragment_decode(body->data, body->len, NULL, &f) == CKT_OK) {
      ckt_fragment_free(f);
    }
  }
}

/* Feeds data in pieces: piece sizes cycle through `cuts` (NULL: whole). */
static void read_all(ckt_node *n, const uint8_t *data, size_t size,
                     const uint8_t *cuts, size_t ncuts, outcome *o) {
  rxstate rx;
  size_t off = 0, k = 0;
  memset(&rx, 0, sizeof(rx));
  memset(o, 0, sizeof(*o));
  while (off < size && !o->err) {
    size_t piece = ncuts ? (size_t)cuts[k++ % ncuts] + 1 : size - off;
    const uint8_t *p = data + off;
    size_t len = piece < size - off ? piece : size - off;
    off += len;
    while (len > 0 && !o->err) {
      size_t before = len;
      uint8_t type = 0;
      ckt_buf body;
      int rv = node_rx_frame(n, &rx, &p, &len, &type, &body);
      o->consumed += before - len;
      if (rv < 0) {
        o->err = rv;
      } else if (rv == 1) {
        if (body.len > FRAME_MAX) {
          abort(); /* the limit was not applied */
        }
        if (o->nframes < MAX_FRAMES) {
          o->types[o->nframes] = type;
          o->lens[o->nframes] = body.len;
          o->hashes[o->nframes] = hash(body.data, body.len);
          o->nframes++;
          decode_body(type, &body);
        }
        ckt_buf_free(&body);
      }
    }
  }
  o->hdr_got = rx.hdr_got;
  o->body_got = rx.body.len;
  o->credit = rx.credit;
  node_rx_clear(&rx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ckt_node n;
  outcome whole, pieces;
  size_t ncuts;

  if (size < 1) {
    return 0;
  }
  /* The first byte says how many of the following bytes are piece sizes
   * (at least one: with none both reads would be the same). */
  ncuts = data[0] % 8 + 1;
  if (size < 1 + ncuts) {
    return 0;
  }
  memset(&n, 0, sizeof(n));
  n.frame_max = FRAME_MAX;
  read_all(&n, data + 1 + ncuts, size - 1 - ncuts, NULL, 0, &whole);
  read_all(&n, data + 1 + ncuts, size - 1 - ncuts, data + 1, ncuts, &pieces);
  if (whole.err != pieces.err || whole.nframes != pieces.nframes) {
    abort();
  }
  /* The same state left waiting, and credit for every byte taken. */
  if (!whole.err &&
      (whole.hdr_got != pieces.hdr_got || whole.body_got != pieces.body_got ||
       whole.consumed != pieces.consumed)) {
    abort();
  }
  if (whole.credit != whole.consumed || pieces.credit != pieces.consumed) {
    abort();
  }
  for (int i = 0; i < whole.nframes; i++) {
    if (whole.types[i] != pieces.types[i] || whole.lens[i] != pieces.lens[i] ||
        whole.hashes[i] != pieces.hashes[i]) {
      abort();
    }
  }
  return 0;
}
