/* core_cursor.c — bounded read cursor. */
#include "core_cursor.h"

#include <string.h>

void ckt_cursor_init(ckt_cursor *c, const void *data, size_t len) {
  c->p = data;
  c->left = data ? len : 0;
  c->bad = 0;
}

int ckt_cursor_take(ckt_cursor *c, const uint8_t **out, size_t n) {
  if (c->bad || n > c->left) {
    c->bad = 1;
    return -1;
  }
  *out = c->p;
  c->p += n;
  c->left -= n;
  return 0;
}

int ckt_cursor_skip(ckt_cursor *c, size_t n) {
  const uint8_t *p;
  return ckt_cursor_take(c, &p, n);
}

int ckt_cursor_copy(ckt_cursor *c, void *out, size_t n) {
  const uint8_t *p;
  if (ckt_cursor_take(c, &p, n) != 0) {
    return -1;
  }
  if (n) {
    memcpy(out, p, n);
  }
  return 0;
}

int ckt_cursor_sub(ckt_cursor *c, ckt_cursor *sub, size_t n) {
  const uint8_t *p;
  if (ckt_cursor_take(c, &p, n) != 0) {
    ckt_cursor_init(sub, NULL, 0);
    sub->bad = 1;
    return -1;
  }
  ckt_cursor_init(sub, p, n);
  return 0;
}

static int read_be(ckt_cursor *c, uint64_t *out, size_t n) {
  const uint8_t *p;
  uint64_t v = 0;
  size_t i;
  if (ckt_cursor_take(c, &p, n) != 0) {
    return -1;
  }
  for (i = 0; i < n; ++i) {
    v = (v << 8) | p[i];
  }
  *out = v;
  return 0;
}

int ckt_cursor_u8(ckt_cursor *c, uint8_t *out) {
  uint64_t v;
  if (read_be(c, &v, 1) != 0) {
    return -1;
  }
  *out = (uint8_t)v;
  return 0;
}

int ckt_cursor_be16(ckt_cursor *c, uint16_t *out) {
  uint64_t v;
  if (read_be(c, &v, 2) != 0) {
    return -1;
  }
  *out = (uint16_t)v;
  return 0;
}

int ckt_cursor_be32(ckt_cursor *c, uint32_t *out) {
  uint64_t v;
  if (read_be(c, &v, 4) != 0) {
    return -1;
  }
  *out = (uint32_t)v;
  return 0;
}

int ckt_cursor_be64(ckt_cursor *c, uint64_t *out) {
  return read_be(c, out, 8);
}
