/* core_buf.c — capped growable buffer. */
#include "core_buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"
#include "core_util.h"

void ckt_buf_init(ckt_buf *b, size_t limit) {
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
  b->limit = limit;
}

void ckt_buf_free(ckt_buf *b) {
  if (b->data) {
    ckt_secure_zero(b->data, b->cap);
    free(b->data);
  }
  ckt_buf_init(b, b->limit);
}

static int buf_reserve(ckt_buf *b, size_t extra) {
  size_t need, ncap;
  uint8_t *nd;
  if (extra > b->limit || b->len > b->limit - extra) {
    return CKT_ERR_TOO_LARGE;
  }
  need = b->len + extra + 1; /* room for the NUL */
  if (need <= b->cap) {
    return CKT_OK;
  }
  ncap = b->cap ? b->cap : 64;
  while (ncap < need) {
    ncap = ncap > SIZE_MAX / 2 ? need : ncap * 2;
  }
  /* Copy instead of realloc so that the old block can be wiped. */
  nd = malloc(ncap);
  if (!nd) {
    return CKT_ERR_NOMEM;
  }
  if (b->data) {
    memcpy(nd, b->data, b->len);
    ckt_secure_zero(b->data, b->cap);
    free(b->data);
  }
  b->data = nd;
  b->cap = ncap;
  return CKT_OK;
}

int ckt_buf_append(ckt_buf *b, const void *data, size_t n) {
  int rv = buf_reserve(b, n);
  if (rv != CKT_OK) {
    return rv;
  }
  if (n) {
    memcpy(b->data + b->len, data, n);
  }
  b->len += n;
  b->data[b->len] = 0;
  return CKT_OK;
}

int ckt_buf_append_str(ckt_buf *b, const char *s) {
  return ckt_buf_append(b, s, strlen(s));
}

int ckt_buf_printf(ckt_buf *b, const char *fmt, ...) {
  va_list ap;
  int n, rv;
  va_start(ap, fmt);
  n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  rv = buf_reserve(b, (size_t)n);
  if (rv != CKT_OK) {
    return rv;
  }
  va_start(ap, fmt);
  vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return CKT_OK;
}

uint8_t *ckt_buf_release(ckt_buf *b, size_t *len) {
  uint8_t *d = b->data;
  if (len) {
    *len = b->len;
  }
  if (!d) {
    d = calloc(1, 1);
  }
  b->data = NULL;
  b->len = b->cap = 0;
  return d;
}
