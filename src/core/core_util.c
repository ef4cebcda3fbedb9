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
