/*
 * core_buf.h — growable byte buffer with a mandatory maximum size.
 *
 * Like curl's dynbuf: every buffer is created with a cap, appends past the
 * cap fail with CKT_ERR_TOO_LARGE and leave the buffer as it was.  The
 * contents are always followed by a NUL byte (not counted in len) so text
 * can be used as a C string.
 */
#ifndef CKT_CORE_BUF_H
#define CKT_CORE_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ckt_buf {
  uint8_t *data;
  size_t len;
  size_t cap;   /* allocated bytes */
  size_t limit; /* most bytes len may reach */
} ckt_buf;

void ckt_buf_init(ckt_buf *b, size_t limit);
/* Frees the memory after zeroing it (buffers may hold key material). */
void ckt_buf_free(ckt_buf *b);
/* CKT_OK, CKT_ERR_NOMEM, CKT_ERR_TOO_LARGE. */
int ckt_buf_append(ckt_buf *b, const void *data, size_t n);
int ckt_buf_append_str(ckt_buf *b, const char *s);
int ckt_buf_printf(ckt_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Hands the memory to the caller (NUL-terminated); the buffer is reset. */
uint8_t *ckt_buf_release(ckt_buf *b, size_t *len);

#endif
