/* tls_der.c — minimal strict DER TLV reader. */
#include "tls_der.h"

int ckt_der_peek_tag(const ckt_cursor *c) {
  if (c->bad || c->left == 0) {
    return -1;
  }
  return c->p[0];
}

int ckt_der_expect(ckt_cursor *c, uint8_t tag, ckt_cursor *value) {
  uint8_t t, b;
  size_t len = 0;
  if (ckt_cursor_u8(c, &t) != 0 || t != tag || ckt_cursor_u8(c, &b) != 0) {
    c->bad = 1;
    return -1;
  }
  if (b < 0x80) {
    len = b;
  } else {
    unsigned n = b & 0x7f, i;
    /* 0x80 is BER's indefinite form; DER keys never need > 4 octets. */
    if (n == 0 || n > 4) {
      c->bad = 1;
      return -1;
    }
    for (i = 0; i < n; ++i) {
      if (ckt_cursor_u8(c, &b) != 0 || (i == 0 && b == 0)) {
        c->bad = 1;
        return -1;
      }
      len = (len << 8) | b;
    }
    if (len < 0x80) {
      c->bad = 1; /* not the minimal encoding */
      return -1;
    }
  }
  return ckt_cursor_sub(c, value, len);
}
