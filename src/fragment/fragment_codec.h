/*
 * fragment_codec.h — the Message and Fragment wire codecs and stream frame
 * headers (layouts in docs/wire.md).
 *
 * The encodings are canonical: fixed-width integers, every field always
 * present, no padding.  So a buffer a decoder accepts is exactly the
 * encoding of the record it returns, which the fuzzers check.
 */
#ifndef CKT_FRAGMENT_CODEC_H
#define CKT_FRAGMENT_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "ckt/fragment.h"
#include "ckt/message.h"
#include "core_buf.h"

/* The message layout version this code writes and the only one it reads. */
#define CKT_MESSAGE_VERSION 1

/* Bytes of the fixed part: version, type, flags, call_id, serial, seqno,
 * created, deadline, stream_part. */
#define CKT_MESSAGE_FIXED_LEN (3 + 6 * 8)

/* A frame on a QUIC stream: u8 frame type, u32 big-endian body length,
 * body. */
#define CKT_FRAME_MESSAGE 0x01  /* body: one encoded message */
#define CKT_FRAME_FRAGMENT 0x02 /* body: one encoded fragment */
/* body: u8 codec, u32 raw length, one encoded message zstd-compressed or
 * stored as is (fragment_zstd.h) */
#define CKT_FRAME_ZMESSAGE 0x03
#define CKT_FRAME_HEADER_LEN 5

/* Appends the encoding of m to out.  On error out is left as it was.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (m or out is NULL, unknown type or flag
 * bits, a field beyond its hard limit, an empty, NULL or duplicate arg key,
 * payload NULL with payload_len > 0); CKT_ERR_TOO_LARGE (the encoding does
 * not fit out's limit); CKT_ERR_NOMEM. */
int ckt_message_encode(const ckt_message *m, ckt_buf *out);

/* Decodes exactly buf[0..len) into a new message *out (free it with
 * ckt_message_free()); lim NULL means the defaults.  Every length is checked
 * against its limit before anything is allocated for it.  On error *out is
 * NULL.
 * CKT_OK; CKT_ERR_FORMAT (truncated, trailing bytes, unknown version, type
 * or flag bits, a string with a NUL byte, an empty or duplicate arg key);
 * CKT_ERR_TOO_LARGE (a length or count beyond a hard limit or beyond
 * lim->max_payload); CKT_ERR_INVALID_ARGUMENT (out NULL, or buf NULL with
 * len > 0); CKT_ERR_NOMEM. */
int ckt_message_decode(const uint8_t *buf, size_t len,
                       const ckt_message_limits *lim, ckt_message **out);

/* The longest encoding a message can have and still be accepted under
 * lim (NULL: defaults).  A stream reader compares a frame's body length
 * with this before buffering the body. */
size_t ckt_message_encoded_max(const ckt_message_limits *lim);

/* 1 when a and b hold the same message (a NULL string equals "", a NULL
 * payload equals an empty one; args compared in order), 0 otherwise. */
int ckt_message_equal(const ckt_message *a, const ckt_message *b);

/* The fragment layout version this code writes and the only one it
 * reads. */
#define CKT_FRAGMENT_VERSION 1

/* Bytes of the fixed part: version, type, from_peer, to_peer, circuit,
 * serial, op, part. */
#define CKT_FRAGMENT_FIXED_LEN (2 + 3 * CKT_PEER_ID_LEN + 3 * 8)

/* Appends the encoding of f to out.  On error out is left as it was.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (f or out is NULL, unknown type, a
 * field beyond its hard limit, an empty, NULL or duplicate arg key,
 * payload NULL with payload_len > 0 or longer than the u32 length);
 * CKT_ERR_TOO_LARGE (the encoding does not fit out's limit);
 * CKT_ERR_NOMEM. */
int ckt_fragment_encode(const ckt_fragment *f, ckt_buf *out);

/* Decodes exactly buf[0..len) into a new fragment *out (free it with
 * ckt_fragment_free()); lim NULL means the defaults.  Every length is
 * checked against its limit before anything is allocated for it.  On error
 * *out is NULL.
 * CKT_OK; CKT_ERR_FORMAT (truncated, trailing bytes, unknown version or
 * type, a string with a NUL byte, an empty or duplicate arg key);
 * CKT_ERR_TOO_LARGE (a length or count beyond a hard limit or beyond
 * lim->max_payload); CKT_ERR_INVALID_ARGUMENT (out NULL, or buf NULL with
 * len > 0); CKT_ERR_NOMEM. */
int ckt_fragment_decode(const uint8_t *buf, size_t len,
                        const ckt_fragment_limits *lim, ckt_fragment **out);

/* The longest encoding a fragment can have and still be accepted under
 * lim (NULL: defaults), for bounding a frame's body before buffering it. */
size_t ckt_fragment_encoded_max(const ckt_fragment_limits *lim);

/* 1 when a and b hold the same fragment (IDs and integers equal, a NULL
 * string equals "", a NULL payload equals an empty one; args compared in
 * order), 0 otherwise. */
int ckt_fragment_equal(const ckt_fragment *a, const ckt_fragment *b);

/* Writes a frame header. */
void ckt_frame_header_encode(uint8_t hdr[CKT_FRAME_HEADER_LEN], uint8_t type,
                             uint32_t len);

/* Reads a frame header; the caller bounds *len before reading the body,
 * and checks that *type (CKT_FRAME_MESSAGE, CKT_FRAME_FRAGMENT or
 * CKT_FRAME_ZMESSAGE) is one the stream may carry.
 * CKT_OK; CKT_ERR_FORMAT (a frame type this version does not know: the
 * stream cannot be trusted past it); CKT_ERR_INVALID_ARGUMENT (NULL). */
int ckt_frame_header_decode(const uint8_t hdr[CKT_FRAME_HEADER_LEN],
                            uint8_t *type, uint32_t *len);

#endif
