/*
 * fuzz_known_keys.c — libFuzzer target for the known-keys file parser and
 * formatter (src/tls/tls_known.c).
 *
 * Whatever the parser accepts must format into lines it accepts again, to
 * the same entries: parse -> format -> parse is the identity on entries.
 * Memory stays bounded: entries are kept up to a fixed count (the input is
 * at most -max_len bytes, so a few hundred), and nothing else is held.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"
#include "tls_known.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_KEPT 512

typedef struct kept {
  ckt_known_entry *e;
  size_t n, seen;
} kept;

static int keep(void *user, const ckt_known_entry *e) {
  kept *k = user;
  if (k->n < MAX_KEPT) {
    k->e[k->n++] = *e;
  }
  k->seen++;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static ckt_known_entry first[MAX_KEPT], second[MAX_KEPT];
  static char text[MAX_KEPT * (CKT_KNOWN_MAX_LINE + 2)];
  kept a = {first, 0, 0}, b = {second, 0, 0};
  ckt_known_error err;
  size_t off = 0, i;
  int rv;

  rv = ckt_known_parse((const char *)data, size, keep, &a, &err);
  if (rv != CKT_OK) {
    /* A refusal names a line inside the input, with a reason. */
    if ((rv != CKT_ERR_FORMAT && rv != CKT_ERR_TOO_LARGE) || !err.what[0] ||
        err.line > size + 1) {
      abort();
    }
    return 0;
  }
  for (i = 0; i < a.n; ++i) {
    int n = ckt_known_format(&a.e[i], text + off, sizeof(text) - off);
    if (n <= 0 || n > CKT_KNOWN_MAX_LINE + 1 ||
        text[off + (size_t)n - 1] != '\n') {
      abort();
    }
    off += (size_t)n;
  }
  rv = ckt_known_parse(text, off, keep, &b, &err);
  if (rv != CKT_OK || b.n != a.n ||
      (a.n && memcmp(a.e, b.e, a.n * sizeof(a.e[0])) != 0)) {
    abort();
  }
  return 0;
}
