/*
 * fuzz_fragment.c — libFuzzer target for the Fragment decoder.
 *
 * Property: the encoding is canonical, so whenever the decoder accepts an
 * input, encoding the result must give back exactly the input bytes, and
 * decoding those must give an equal fragment.  Anything else is a codec bug
 * and aborts.  Copying an accepted fragment must give an equal one too, and
 * frame headers are decoded from the first bytes as well.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"
#include "ckt/fragment.h"
#include "core_buf.h"
#include "fragment_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ckt_fragment *f = NULL, *again = NULL, *copy = NULL;
  ckt_buf b;
  uint8_t type;
  uint32_t len;
  int rv;

  if (size >= CKT_FRAME_HEADER_LEN &&
      ckt_frame_header_decode(data, &type, &len) == CKT_OK) {
    uint8_t hdr[CKT_FRAME_HEADER_LEN];
    if (type != CKT_FRAME_MESSAGE && type != CKT_FRAME_FRAGMENT &&
        type != CKT_FRAME_ZMESSAGE) {
      abort();
    }
    ckt_frame_header_encode(hdr, type, len);
    if (memcmp(hdr, data, CKT_FRAME_HEADER_LEN) != 0) {
      abort();
    }
  }

  rv = ckt_fragment_decode(data, size, NULL, &f);
  if (rv != CKT_OK) {
    if (f != NULL || (rv != CKT_ERR_FORMAT && rv != CKT_ERR_TOO_LARGE &&
                      rv != CKT_ERR_NOMEM)) {
      abort();
    }
    return 0;
  }
  ckt_buf_init(&b, ckt_fragment_encoded_max(NULL));
  if (ckt_fragment_encode(f, &b) != CKT_OK || b.len != size ||
      memcmp(b.data, data, size) != 0) {
    abort();
  }
  if (ckt_fragment_decode(b.data, b.len, NULL, &again) != CKT_OK ||
      !ckt_fragment_equal(f, again)) {
    abort();
  }
  if (ckt_fragment_copy(f, &copy) != CKT_OK || !ckt_fragment_equal(f, copy)) {
    abort();
  }
  ckt_fragment_free(copy);
  ckt_fragment_free(again);
  ckt_fragment_free(f);
  ckt_buf_free(&b);
  return 0;
}
