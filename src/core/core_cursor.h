/*
 * core_cursor.h — bounded read cursor over a byte range.
 *
 * Every parser in ckt reads through a cursor: each read checks the bytes
 * left first, and a failed read poisons the cursor so that a chain of reads
 * needs one check at the end.  No raw pointer arithmetic on input.
 */
#ifndef CKT_CORE_CURSOR_H
#define CKT_CORE_CURSOR_H

#include <stddef.h>
#include <stdint.h>

typedef struct ckt_cursor {
  const uint8_t *p;
  size_t left;
  int bad; /* set by the first read that did not fit */
} ckt_cursor;

void ckt_cursor_init(ckt_cursor *c, const void *data, size_t len);
/* Each returns 0 on success, -1 (and sets c->bad) if the bytes are short. */
int ckt_cursor_u8(ckt_cursor *c, uint8_t *out);
int ckt_cursor_be16(ckt_cursor *c, uint16_t *out);
int ckt_cursor_be32(ckt_cursor *c, uint32_t *out);
int ckt_cursor_be64(ckt_cursor *c, uint64_t *out);
int ckt_cursor_copy(ckt_cursor *c, void *out, size_t n);
/* Points *out at the next n bytes without copying and advances. */
int ckt_cursor_take(ckt_cursor *c, const uint8_t **out, size_t n);
/* Carves the next n bytes into a sub-cursor and advances past them. */
int ckt_cursor_sub(ckt_cursor *c, ckt_cursor *sub, size_t n);
int ckt_cursor_skip(ckt_cursor *c, size_t n);

#endif
