/*
 * fuzz_message.c — libFuzzer target for the Message decoder.
 *
 * Property: the encoding is canonical, so whenever the decoder accepts an
 * input, encoding the result must give back exactly the input bytes, and
 * decoding those must give an equal message.  Anything else is a codec bug
 * and aborts.  Frame headers are decoded from the first bytes as well.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"
#include "ckt/message.h"
#include "core_buf.h"
#include "fragment_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ckt_message *m = NULL, *again = NULL;
  ckt_buf b;
  uint8_t type;
  uint32_t len;
  int rv;

  if (size >= CKT_FRAME_HEADER_LEN &&
      ckt_frame_header_decode(data, &type, &len) == CKT_OK) {
    uint8_t hdr[CKT_FRAME_HEADER_LEN];
    ckt_frame_header_encode(hdr, type, len);
    if (memcmp(hdr, data, CKT_FRAME_HEADER_LEN) != 0) {
      abort();
    }
  }

  rv = ckt_message_decode(data, size, NULL, &m);
  if (rv != CKT_OK) {
    if (m != NULL || (rv != CKT_ERR_FORMAT && rv != CKT_ERR_TOO_LARGE &&
                      rv != CKT_ERR_NOMEM)) {
      abort();
    }
    return 0;
  }
  ckt_buf_init(&b, ckt_message_encoded_max(NULL));
  if (ckt_message_encode(m, &b) != CKT_OK || b.len != size ||
      memcmp(b.data, data, size) != 0) {
    abort();
  }
  if (ckt_message_decode(b.data, b.len, NULL, &again) != CKT_OK ||
      !ckt_message_equal(m, again)) {
    abort();
  }
  ckt_message_free(again);
  ckt_message_free(m);
  ckt_buf_free(&b);
  return 0;
}
