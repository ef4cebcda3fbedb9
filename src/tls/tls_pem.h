/*
 * tls_pem.h — PEM armor (RFC 7468, plus RFC 1421-style headers for ckt's
 * encrypted keys), decoded with hard limits.
 */
#ifndef CKT_TLS_PEM_H
#define CKT_TLS_PEM_H

#include <stddef.h>
#include <stdint.h>

#include "core_buf.h"

#define CKT_PEM_LABEL_MAX 48
#define CKT_PEM_HEADERS_MAX 1024
#define CKT_PEM_DER_MAX (32 * 1024)

typedef struct ckt_pem {
  char label[CKT_PEM_LABEL_MAX + 1];
  /* "Name: value\n" lines between the BEGIN line and the blank line, with
   * line ends normalised to "\n"; empty when there are none. */
  char headers[CKT_PEM_HEADERS_MAX + 1];
  size_t headers_len;
  uint8_t *der; /* decoded body, malloc()ed; free with ckt_pem_clear() */
  size_t der_len;
} ckt_pem;

/* Decodes the first PEM block in text[0..len).  Text before the BEGIN line
 * is skipped (as openssl does).  CKT_OK, CKT_ERR_FORMAT (no block, bad
 * label, mismatched END, bad base64), CKT_ERR_TOO_LARGE, CKT_ERR_NOMEM.
 * On error *pem holds nothing to free. */
int ckt_pem_decode(const char *text, size_t len, ckt_pem *pem);

/* Wipes and frees pem->der. */
void ckt_pem_clear(ckt_pem *pem);

/* Appends a PEM block: BEGIN line, headers (may be NULL; each line ending
 * in "\n") and a blank line after them, base64 in 64-column lines, END
 * line.  CKT_OK, CKT_ERR_NOMEM, CKT_ERR_TOO_LARGE. */
int ckt_pem_encode(ckt_buf *out, const char *label, const char *headers,
                   const uint8_t *der, size_t der_len);

#endif
