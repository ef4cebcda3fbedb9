/* fragment_fields.c — owned strings, payloads, args and their wire form,
 * shared by the Message and the Fragment. */
#include "fragment_fields.h"

#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"
#include "core_util.h"

/* ---- owned strings ---- */

/* Strings and payloads may carry credentials, so they are wiped like every
 * other buffer in ckt before their memory goes back to the allocator. */
void ckt_fields_str_free(char *s) {
  if (s) {
    ckt_secure_zero(s, strlen(s));
    free(s);
  }
}

/* Copies n bytes of s into a new NUL-terminated string. */
static char *dup_bytes(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d) {
    if (n) {
      memcpy(d, s, n);
    }
    d[n] = 0;
  }
  return d;
}

static size_t str_len(const char *s) {
  return s ? strlen(s) : 0;
}

int ckt_fields_str_set(char **field, const char *s, size_t max) {
  size_t n;
  char *d = NULL;
  if (s) {
    /* strnlen: an oversized string is refused without scanning all of it. */
    n = strnlen(s, max + 1);
    if (n > max) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    d = dup_bytes(s, n);
    if (!d) {
      return CKT_ERR_NOMEM;
    }
  }
  ckt_fields_str_free(*field);
  *field = d;
  return CKT_OK;
}

int ckt_fields_str_copy(char **dst, const char *src) {
  *dst = NULL;
  if (src) {
    *dst = dup_bytes(src, strlen(src));
    if (!*dst) {
      return CKT_ERR_NOMEM;
    }
  }
  return CKT_OK;
}

int ckt_fields_str_eq(const char *a, const char *b) {
  return strcmp(a ? a : "", b ? b : "") == 0;
}

/* ---- payloads ---- */

void ckt_fields_payload_free(uint8_t *p, size_t len) {
  if (p) {
    ckt_secure_zero(p, len);
    free(p);
  }
}

int ckt_fields_payload_set(uint8_t **payload, size_t *len, const void *data,
                           size_t n) {
  uint8_t *d = NULL;
  if ((!data && n) || (uint64_t)n > UINT32_MAX) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (n) {
    d = malloc(n);
    if (!d) {
      return CKT_ERR_NOMEM;
    }
    memcpy(d, data, n);
  }
  ckt_fields_payload_free(*payload, *len);
  *payload = d;
  *len = n;
  return CKT_OK;
}

int ckt_fields_payload_copy(uint8_t **dst, const uint8_t *src, size_t n) {
  *dst = NULL;
  if (n) {
    *dst = malloc(n);
    if (!*dst) {
      return CKT_ERR_NOMEM;
    }
    memcpy(*dst, src, n);
  }
  return CKT_OK;
}

int ckt_fields_payload_eq(const uint8_t *a, const uint8_t *b, size_t n) {
  return n == 0 || memcmp(a, b, n) == 0;
}

/* ---- argument lists ---- */

void ckt_fields_args_free(ckt_kv *args, size_t nargs) {
  size_t i;
  if (!args) {
    return;
  }
  for (i = 0; i < nargs; ++i) {
    ckt_fields_str_free(args[i].key);
    ckt_fields_str_free(args[i].value);
  }
  free(args);
}

/* The index of key in args, or nargs when absent. */
static size_t find_arg(const ckt_kv *args, size_t nargs, const char *key) {
  size_t i;
  for (i = 0; i < nargs; ++i) {
    if (args[i].key && strcmp(args[i].key, key) == 0) {
      break;
    }
  }
  return i;
}

int ckt_fields_args_set(ckt_kv **args, size_t *nargs, const char *key,
                        const char *value) {
  size_t klen, vlen, total = 0, i, at;
  ckt_kv *kv = NULL, *grown;
  char *k, *v = NULL;

  if (!key) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  klen = strnlen(key, CKT_MESSAGE_ARG_KEY_MAX + 1);
  vlen = value ? strnlen(value, CKT_MESSAGE_ARG_VALUE_MAX + 1) : 0;
  if (klen == 0 || klen > CKT_MESSAGE_ARG_KEY_MAX ||
      vlen > CKT_MESSAGE_ARG_VALUE_MAX) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  for (i = 0; i < *nargs; ++i) {
    total += str_len((*args)[i].key) + str_len((*args)[i].value);
  }
  at = find_arg(*args, *nargs, key);
  if (at < *nargs) {
    kv = &(*args)[at];
    total -= str_len(kv->value);
  } else {
    if (*nargs >= CKT_MESSAGE_NARGS_MAX) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    total += klen;
  }
  if (total + vlen > CKT_MESSAGE_ARGS_TOTAL_MAX) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (value) {
    v = dup_bytes(value, vlen);
    if (!v) {
      return CKT_ERR_NOMEM;
    }
  }
  if (kv) {
    ckt_fields_str_free(kv->value);
    kv->value = v;
    return CKT_OK;
  }
  k = dup_bytes(key, klen);
  grown = k ? realloc(*args, (*nargs + 1) * sizeof(**args)) : NULL;
  if (!grown) {
    ckt_fields_str_free(k);
    ckt_fields_str_free(v);
    return CKT_ERR_NOMEM;
  }
  *args = grown;
  grown[*nargs].key = k;
  grown[*nargs].value = v;
  (*nargs)++;
  return CKT_OK;
}

const char *ckt_fields_args_get(const ckt_kv *args, size_t nargs,
                                const char *key) {
  size_t at;
  if (!key) {
    return NULL;
  }
  at = find_arg(args, nargs, key);
  if (at == nargs) {
    return NULL;
  }
  return args[at].value ? args[at].value : "";
}

int ckt_fields_args_copy(ckt_kv **dst, const ckt_kv *src, size_t n) {
  ckt_kv *d;
  size_t i;

  *dst = NULL;
  if (!src && n) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  for (i = 0; i < n; ++i) {
    if (!src[i].key) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
  }
  if (n == 0) {
    return CKT_OK;
  }
  /* calloc: the free on a later failure sees NULL for entries not yet
   * copied. */
  d = calloc(n, sizeof(*d));
  if (!d) {
    return CKT_ERR_NOMEM;
  }
  for (i = 0; i < n; ++i) {
    if (ckt_fields_str_copy(&d[i].key, src[i].key) ||
        ckt_fields_str_copy(&d[i].value, src[i].value)) {
      ckt_fields_args_free(d, n);
      return CKT_ERR_NOMEM;
    }
  }
  *dst = d;
  return CKT_OK;
}

int ckt_fields_args_eq(const ckt_kv *a, size_t na, const ckt_kv *b, size_t nb) {
  size_t i;
  if (na != nb) {
    return 0;
  }
  for (i = 0; i < na; ++i) {
    if (!ckt_fields_str_eq(a[i].key, b[i].key) ||
        !ckt_fields_str_eq(a[i].value, b[i].value)) {
      return 0;
    }
  }
  return 1;
}

/* ---- wire: checks ---- */

int ckt_fields_check_str(const char *s, size_t max, size_t *len) {
  size_t n = s ? strnlen(s, max + 1) : 0;
  if (n > max) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  *len = n;
  return CKT_OK;
}

int ckt_fields_check_args(const ckt_kv *args, size_t nargs, size_t *size) {
  size_t n = 2, i, j, total = 0;

  if (nargs > CKT_MESSAGE_NARGS_MAX || (!args && nargs)) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  for (i = 0; i < nargs; ++i) {
    const ckt_kv *kv = &args[i];
    size_t klen, vlen;
    if (!kv->key) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    klen = strnlen(kv->key, CKT_MESSAGE_ARG_KEY_MAX + 1);
    vlen = kv->value ? strnlen(kv->value, CKT_MESSAGE_ARG_VALUE_MAX + 1) : 0;
    if (klen == 0 || klen > CKT_MESSAGE_ARG_KEY_MAX ||
        vlen > CKT_MESSAGE_ARG_VALUE_MAX) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    /* Each term is bounded, so this cannot overflow before the check. */
    total += klen + vlen;
    if (total > CKT_MESSAGE_ARGS_TOTAL_MAX) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    for (j = 0; j < i; ++j) {
      if (strcmp(args[j].key, kv->key) == 0) {
        return CKT_ERR_INVALID_ARGUMENT;
      }
    }
    n += 2 + 4;
  }
  *size = n + total;
  return CKT_OK;
}

/* ---- wire: writing ---- */

void ckt_fields_put_be(uint8_t *p, uint64_t v, size_t n) {
  size_t i;
  for (i = 0; i < n; ++i) {
    p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
  }
}

int ckt_fields_append_be(ckt_buf *out, uint64_t v, size_t n) {
  uint8_t b[8];
  ckt_fields_put_be(b, v, n);
  return ckt_buf_append(out, b, n);
}

int ckt_fields_append_str(ckt_buf *out, const char *s, size_t len_bytes) {
  size_t len = str_len(s);
  int rv = ckt_fields_append_be(out, len, len_bytes);
  return rv ? rv : ckt_buf_append(out, s, len);
}

int ckt_fields_append_args(ckt_buf *out, const ckt_kv *args, size_t nargs) {
  size_t i;
  int rv = ckt_fields_append_be(out, nargs, 2);
  for (i = 0; rv == CKT_OK && i < nargs; ++i) {
    if ((rv = ckt_fields_append_str(out, args[i].key, 2)) == CKT_OK) {
      rv = ckt_fields_append_str(out, args[i].value, 4);
    }
  }
  return rv;
}

int ckt_fields_append_payload(ckt_buf *out, const uint8_t *p, size_t len) {
  int rv = ckt_fields_append_be(out, len, 4);
  return rv ? rv : ckt_buf_append(out, p, len);
}

/* ---- wire: reading ---- */

int64_t ckt_fields_to_i64(uint64_t v) {
  return v <= INT64_MAX ? (int64_t)v : -(int64_t)(UINT64_MAX - v) - 1;
}

static int read_len(ckt_cursor *c, size_t len_bytes, size_t *len) {
  uint16_t v16;
  uint32_t v32;
  if (len_bytes == 2) {
    if (ckt_cursor_be16(c, &v16) != 0) {
      return CKT_ERR_FORMAT;
    }
    *len = v16;
  } else {
    if (ckt_cursor_be32(c, &v32) != 0) {
      return CKT_ERR_FORMAT;
    }
    *len = v32;
  }
  return CKT_OK;
}

int ckt_fields_read_str(ckt_cursor *c, size_t len_bytes, size_t max, char **out,
                        size_t *len) {
  const uint8_t *p;
  int rv = read_len(c, len_bytes, len);
  if (rv != CKT_OK) {
    return rv;
  }
  if (*len > max) {
    return CKT_ERR_TOO_LARGE;
  }
  if (ckt_cursor_take(c, &p, *len) != 0) {
    return CKT_ERR_FORMAT;
  }
  /* A NUL would silently cut the C string short of what was sent. */
  if (*len && memchr(p, 0, *len)) {
    return CKT_ERR_FORMAT;
  }
  *out = dup_bytes((const char *)p, *len);
  return *out ? CKT_OK : CKT_ERR_NOMEM;
}

int ckt_fields_read_args(ckt_cursor *c, ckt_kv **args, size_t *nargs) {
  uint16_t count;
  size_t i, j, klen, vlen, total = 0;
  ckt_kv *a;
  int rv;

  if (ckt_cursor_be16(c, &count) != 0) {
    return CKT_ERR_FORMAT;
  }
  if (count > CKT_MESSAGE_NARGS_MAX) {
    return CKT_ERR_TOO_LARGE;
  }
  if (count == 0) {
    return CKT_OK;
  }
  /* At most CKT_MESSAGE_NARGS_MAX entries: bounded before any byte of them
   * is seen.  calloc so that a failure part way frees cleanly. */
  a = calloc(count, sizeof(*a));
  if (!a) {
    return CKT_ERR_NOMEM;
  }
  *args = a;
  *nargs = count;
  for (i = 0; i < count; ++i) {
    rv = ckt_fields_read_str(c, 2, CKT_MESSAGE_ARG_KEY_MAX, &a[i].key, &klen);
    if (rv != CKT_OK) {
      return rv;
    }
    if (klen == 0) {
      return CKT_ERR_FORMAT;
    }
    if (klen > CKT_MESSAGE_ARGS_TOTAL_MAX - total) {
      return CKT_ERR_TOO_LARGE;
    }
    total += klen;
    for (j = 0; j < i; ++j) {
      /* Duplicates would make "which value wins" differ between peers. */
      if (strcmp(a[j].key, a[i].key) == 0) {
        return CKT_ERR_FORMAT;
      }
    }
    /* The value's own cap is the smaller of its field limit and what the
     * total still allows, so an over-budget value is refused before its
     * bytes are copied. */
    rv = ckt_fields_read_str(c, 4,
                             CKT_MESSAGE_ARGS_TOTAL_MAX - total <
                                     CKT_MESSAGE_ARG_VALUE_MAX
                                 ? CKT_MESSAGE_ARGS_TOTAL_MAX - total
                                 : CKT_MESSAGE_ARG_VALUE_MAX,
                             &a[i].value, &vlen);
    if (rv != CKT_OK) {
      return rv;
    }
    total += vlen;
  }
  return CKT_OK;
}

int ckt_fields_read_payload(ckt_cursor *c, size_t max, uint8_t **payload,
                            size_t *len) {
  const uint8_t *p;
  size_t n;
  int rv = read_len(c, 4, &n);
  if (rv != CKT_OK) {
    return rv;
  }
  if (n > max) {
    return CKT_ERR_TOO_LARGE;
  }
  if (ckt_cursor_take(c, &p, n) != 0) {
    return CKT_ERR_FORMAT;
  }
  if (n) {
    *payload = malloc(n);
    if (!*payload) {
      return CKT_ERR_NOMEM;
    }
    memcpy(*payload, p, n);
    *len = n;
  }
  return CKT_OK;
}
