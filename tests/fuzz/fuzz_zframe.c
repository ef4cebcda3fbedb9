/*
 * fuzz_zframe.c — libFuzzer target for the compressed-message frame
 * decoder (ckt_zframe_decode, src/fragment/fragment_zstd.c).
 *
 * The input is a ZMESSAGE frame body.  Properties: the decoder never
 * crashes, leaks or keeps anything on error, and never holds more than
 * the announced raw length; whatever it accepts re-encodes with the same
 * codec (stored and, where it pays, compressed) into frames that decode to
 * the same bytes; and a stored body re-encodes with store_only to exactly
 * the input.  Anything else aborts.  One context serves every input, as
 * one serves every frame of a connection.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"
#include "core_buf.h"
#include "fragment_codec.h"
#include "fragment_zstd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_RAW (1024u * 1024)
#define HEAD (CKT_FRAME_HEADER_LEN + CKT_ZFRAME_PREFIX_LEN)

static void check(int ok) {
  if (!ok) {
    abort();
  }
}

/* Encodes raw with codec, then decodes the frame and compares. */
static void reencode(ckt_zctx *z, int codec, int store_only, const ckt_buf *raw,
                     const uint8_t *input, size_t input_len) {
  ckt_buf out, again;
  uint8_t type;
  uint32_t body_len;
  int codec2 = -1;

  /* The stored form's size is the limit: compression must fit in it. */
  ckt_buf_init(&out, HEAD + raw->len);
  check(ckt_zframe_encode(z, codec, store_only, raw->data, raw->len, &out) ==
        CKT_OK);
  check(out.len >= HEAD);
  check(ckt_frame_header_decode(out.data, &type, &body_len) == CKT_OK);
  check(type == CKT_FRAME_ZMESSAGE &&
        body_len == out.len - CKT_FRAME_HEADER_LEN);
  if (store_only) {
    check(out.len == HEAD + raw->len);
  }
  if (store_only && input_len == CKT_ZFRAME_PREFIX_LEN + raw->len) {
    /* The input was the stored form: the encoding is the same bytes. */
    check(memcmp(out.data + CKT_FRAME_HEADER_LEN, input, input_len) == 0);
  }
  check(ckt_zframe_decode(z, out.data + CKT_FRAME_HEADER_LEN, body_len,
                          raw->len, &again, &codec2) == CKT_OK);
  check(codec2 == codec && again.len == raw->len);
  check(raw->len == 0 || memcmp(again.data, raw->data, raw->len) == 0);
  ckt_buf_free(&again);
  ckt_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static ckt_zctx *z;
  ckt_buf raw;
  int codec = -1, rv;

  if (!z) {
    z = ckt_zctx_new();
    check(z != NULL);
  }
  rv = ckt_zframe_decode(z, data, size, MAX_RAW, &raw, &codec);
  if (rv != CKT_OK) {
    check(raw.data == NULL && raw.len == 0 && codec == -1);
    check(rv == CKT_ERR_FORMAT || rv == CKT_ERR_TOO_LARGE ||
          rv == CKT_ERR_NOMEM);
    return 0;
  }
  check(codec >= CKT_CODEC_ZSTD_FAST && codec <= CKT_CODEC_ZSTD_11);
  check(raw.len <= MAX_RAW && size >= CKT_ZFRAME_PREFIX_LEN);
  check(raw.len == 0 || raw.cap == raw.len + 1);
  if (size - CKT_ZFRAME_PREFIX_LEN == raw.len) {
    check(raw.len == 0 ||
          memcmp(raw.data, data + CKT_ZFRAME_PREFIX_LEN, raw.len) == 0);
  }
  reencode(z, codec, 1, &raw, data, size);
  reencode(z, codec, 0, &raw, data, size);
  ckt_buf_free(&raw);
  return 0;
}
