/* fragment_frame.c — stream frame headers (docs/wire.md, "Frames"). */
#include <stddef.h>
#include <stdint.h>

#include "ckt/error.h"
#include "core_cursor.h"
#include "fragment_codec.h"
#include "fragment_fields.h"

void ckt_frame_header_encode(uint8_t hdr[CKT_FRAME_HEADER_LEN], uint8_t type,
                             uint32_t len) {
  hdr[0] = type;
  ckt_fields_put_be(hdr + 1, len, 4);
}

int ckt_frame_header_decode(const uint8_t hdr[CKT_FRAME_HEADER_LEN],
                            uint8_t *type, uint32_t *len) {
  ckt_cursor c;
  uint8_t t;
  uint32_t n;
  if (!hdr || !type || !len) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  ckt_cursor_init(&c, hdr, CKT_FRAME_HEADER_LEN);
  ckt_cursor_u8(&c, &t);
  ckt_cursor_be32(&c, &n);
  if (t != CKT_FRAME_MESSAGE && t != CKT_FRAME_FRAGMENT &&
      t != CKT_FRAME_ZMESSAGE) {
    return CKT_ERR_FORMAT;
  }
  *type = t;
  *len = n;
  return CKT_OK;
}
