/* tls_pem.c — PEM decode/encode with bounded lengths. */
#include "tls_pem.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"
#include "core_util.h"

typedef struct line {
  const char *p;
  size_t len; /* without the line end */
} line;

/* Splits the next line off [*pos, end); returns 0 at the end of input. */
static int next_line(const char **pos, const char *end, line *l) {
  const char *s = *pos, *e;
  if (s >= end) {
    return 0;
  }
  e = memchr(s, '\n', (size_t)(end - s));
  if (!e) {
    e = end;
    *pos = end;
  } else {
    *pos = e + 1;
  }
  l->p = s;
  l->len = (size_t)(e - s);
  if (l->len && l->p[l->len - 1] == '\r') {
    l->len--;
  }
  /* Trailing blanks are harmless; strip them so comparisons are exact. */
  while (l->len && (l->p[l->len - 1] == ' ' || l->p[l->len - 1] == '\t')) {
    l->len--;
  }
  return 1;
}

static int has_prefix(const line *l, const char *prefix) {
  size_t n = strlen(prefix);
  return l->len >= n && memcmp(l->p, prefix, n) == 0;
}

/* Parses "-----<kind> LABEL-----" into label; 0 on success. */
static int armor_label(const line *l, const char *kind, char *label) {
  size_t pre = strlen(kind), n;
  const char *s;
  size_t i;
  if (!has_prefix(l, kind) || l->len < pre + 5 ||
      memcmp(l->p + l->len - 5, "-----", 5) != 0) {
    return -1;
  }
  s = l->p + pre;
  n = l->len - pre - 5;
  if (n == 0 || n > CKT_PEM_LABEL_MAX) {
    return -1;
  }
  for (i = 0; i < n; ++i) {
    /* RFC 7468 labels: printable ASCII except '-', single spaces. */
    if (s[i] < 0x20 || s[i] > 0x7e || s[i] == '-') {
      return -1;
    }
  }
  memcpy(label, s, n);
  label[n] = 0;
  return 0;
}

void ckt_pem_clear(ckt_pem *pem) {
  if (pem->der) {
    ckt_secure_zero(pem->der, pem->der_len);
    free(pem->der);
  }
  pem->der = NULL;
  pem->der_len = 0;
}

int ckt_pem_decode(const char *text, size_t len, ckt_pem *pem) {
  const char *pos = text, *end = text + len;
  const char *body = NULL, *body_end = NULL;
  char end_label[CKT_PEM_LABEL_MAX + 1];
  line l;
  int in_headers = 1;
  size_t b64_len, out_len;
  uint8_t *der;

  memset(pem, 0, sizeof(*pem));
  if (!text) {
    return CKT_ERR_FORMAT;
  }
  for (;;) {
    if (!next_line(&pos, end, &l)) {
      return CKT_ERR_FORMAT;
    }
    if (armor_label(&l, "-----BEGIN ", pem->label) == 0) {
      break;
    }
  }
  for (;;) {
    const char *line_start = pos;
    if (!next_line(&pos, end, &l)) {
      return CKT_ERR_FORMAT; /* no END line: truncated */
    }
    if (has_prefix(&l, "-----")) {
      if (armor_label(&l, "-----END ", end_label) != 0 ||
          strcmp(end_label, pem->label) != 0) {
        return CKT_ERR_FORMAT;
      }
      if (!body) {
        body = body_end = line_start;
      }
      break;
    }
    if (in_headers && !body) {
      if (memchr(l.p, ':', l.len)) {
        if (pem->headers_len + l.len + 1 > CKT_PEM_HEADERS_MAX) {
          return CKT_ERR_TOO_LARGE;
        }
        memcpy(pem->headers + pem->headers_len, l.p, l.len);
        pem->headers_len += l.len;
        pem->headers[pem->headers_len++] = '\n';
        pem->headers[pem->headers_len] = 0;
        continue;
      }
      in_headers = 0;
      if (l.len == 0) {
        continue; /* the blank line after the headers */
      }
      if (pem->headers_len) {
        return CKT_ERR_FORMAT; /* headers need a blank line after them */
      }
    }
    if (!body) {
      body = line_start;
    }
    body_end = pos;
  }
  b64_len = (size_t)(body_end - body);
  /* base64 of CKT_PEM_DER_MAX bytes with line ends is below 2x that. */
  if (b64_len > 2 * (size_t)CKT_PEM_DER_MAX) {
    return CKT_ERR_TOO_LARGE;
  }
  der = malloc(b64_len / 4 * 3 + 3);
  if (!der) {
    return CKT_ERR_NOMEM;
  }
  if (sodium_base642bin(der, b64_len / 4 * 3 + 3, body, b64_len, " \t\r\n",
                        &out_len, NULL, sodium_base64_VARIANT_ORIGINAL) != 0) {
    free(der);
    return CKT_ERR_FORMAT;
  }
  if (out_len == 0) {
    free(der);
    return CKT_ERR_FORMAT;
  }
  if (out_len > CKT_PEM_DER_MAX) {
    ckt_secure_zero(der, out_len);
    free(der);
    return CKT_ERR_TOO_LARGE;
  }
  pem->der = der;
  pem->der_len = out_len;
  return CKT_OK;
}

int ckt_pem_encode(ckt_buf *out, const char *label, const char *headers,
                   const uint8_t *der, size_t der_len) {
  char *b64;
  size_t b64_len, i;
  int rv;

  if (der_len > CKT_PEM_DER_MAX) {
    return CKT_ERR_TOO_LARGE;
  }
  b64_len = sodium_base64_encoded_len(der_len, sodium_base64_VARIANT_ORIGINAL);
  b64 = malloc(b64_len);
  if (!b64) {
    return CKT_ERR_NOMEM;
  }
  sodium_bin2base64(b64, b64_len, der, der_len, sodium_base64_VARIANT_ORIGINAL);
  b64_len = strlen(b64);
  rv = ckt_buf_printf(out, "-----BEGIN %s-----\n", label);
  if (rv == CKT_OK && headers && *headers) {
    rv = ckt_buf_printf(out, "%s\n", headers);
  }
  for (i = 0; rv == CKT_OK && i < b64_len; i += 64) {
    size_t n = b64_len - i < 64 ? b64_len - i : 64;
    rv = ckt_buf_append(out, b64 + i, n);
    if (rv == CKT_OK) {
      rv = ckt_buf_append(out, "\n", 1);
    }
  }
  if (rv == CKT_OK) {
    rv = ckt_buf_printf(out, "-----END %s-----\n", label);
  }
  ckt_secure_zero(b64, b64_len);
  free(b64);
  return rv;
}
