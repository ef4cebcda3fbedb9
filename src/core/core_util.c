/* core_util.c — wiping, randomness, hex. */
#include "core_util.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "ckt/error.h"

void ckt_secure_zero(void *p, size_t n) {
  if (p && n) {
    explicit_bzero(p, n);
  }
}

int ckt_random_bytes(void *buf, size_t n) {
  uint8_t *p = buf;
  while (n > 0) {
    ssize_t got = getrandom(p, n, 0);
    if (got < 0) {
      if (errno == EINTR) {
        continue;
      }
      return CKT_ERR_IO;
    }
    p += got;
    n -= (size_t)got;
  }
  return CKT_OK;
}

void ckt_hex_encode(char *out, const uint8_t *in, size_t n, char sep) {
  static const char digits[] = "0123456789abcdef";
  size_t i;
  char *o = out;
  for (i = 0; i < n; ++i) {
    if (sep && i) {
      *o++ = sep;
    }
    *o++ = digits[in[i] >> 4];
    *o++ = digits[in[i] & 15];
  }
  *o = 0;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

int ckt_hex_decode(uint8_t *out, const char *in, size_t n) {
  size_t i;
  for (i = 0; i < n; ++i) {
    int hi = hex_value(in[2 * i]), lo = hi < 0 ? -1 : hex_value(in[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return 0;
    }
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  return 1;
}
