/*
 * fragment_zstd.h — the compressed-message frame (CKT_FRAME_ZMESSAGE,
 * docs/wire.md "Compressed messages") and its zstd codec.
 *
 * A ZMESSAGE frame carries one encoded message (ckt_message_encode()) either
 * zstd-compressed or stored as is: the sender names the codec it chose
 * (CKT_CODEC_ZSTD_FAST..CKT_CODEC_ZSTD_11) even for a message it did not
 * compress, so that the receiver learns which codec to answer with.  Every
 * zstd level decodes with the same decoder.
 *
 * The decoder is the hostile side: the announced raw length is checked
 * against the receiver's bound before anything is allocated, the output
 * buffer is exactly that long, and the zstd data must be exactly one frame
 * that fills it.
 *
 * Threading: a ckt_zctx may be used by one thread at a time; different
 * contexts are independent.  ckt_compress_worthwhile() and
 * ckt_codec_level() are pure.
 */
#ifndef CKT_FRAGMENT_ZSTD_H
#define CKT_FRAGMENT_ZSTD_H

#include <stddef.h>
#include <stdint.h>

#include "ckt/message.h"
#include "core_buf.h"

/* The body of a ZMESSAGE frame starts with u8 codec, u32 raw_len. */
#define CKT_ZFRAME_PREFIX_LEN 5 /* codec + raw_len */

/* A reusable zstd compression and decompression context, so that a sender
 * or receiver allocates zstd's work memory once, not per message. */
typedef struct ckt_zctx ckt_zctx;

/* A new context; NULL when out of memory.  Free it with ckt_zctx_free(). */
ckt_zctx *ckt_zctx_new(void);

/* Frees z and zstd's memory in it.  NULL is fine. */
void ckt_zctx_free(ckt_zctx *z);

/* 1 when raw[0..len) looks worth compressing, 0 when it looks
 * incompressible (random or already compressed) or is shorter than 64
 * bytes.  Looks at no more than 1 KiB whatever len is (8 windows spread
 * from the start to the end, so that a compressible tail is seen): a byte
 * histogram (collision entropy below 7 bits per byte: worth it) and, when
 * the bytes look uniform, repeated 4-byte sequences.  Costs well under a
 * microsecond, a few percent of copying 1 MiB.  A guess: a 1 that zstd
 * cannot beat costs a compression attempt, never a larger frame. */
int ckt_compress_worthwhile(const uint8_t *raw, size_t len);

/* Appends one complete CKT_FRAME_ZMESSAGE frame (the 5-byte frame header,
 * the prefix, the data) holding the encoded message raw[0..raw_len) to out.
 * codec is CKT_CODEC_ZSTD_FAST..CKT_CODEC_ZSTD_11.  store_only != 0 forces
 * the stored form (the message's NO_COMPRESS flag).  Otherwise the message
 * is compressed when ckt_compress_worthwhile() says so, and stored when
 * zstd's output would not be smaller.
 *
 * The stored form must fit out's limit (CKT_FRAME_HEADER_LEN +
 * CKT_ZFRAME_PREFIX_LEN + raw_len bytes after out->len), even when the
 * compressed one would be shorter; the compressed form is never longer.
 * zstd writes straight into out, whose length grows by no more than the
 * stored form's even while compressing: no zstd worst-case bound is
 * reserved, no scratch buffer used.  On error out holds what it held.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (z or out NULL, raw NULL with
 * raw_len > 0, codec not 2..6, raw_len > UINT32_MAX -
 * CKT_ZFRAME_PREFIX_LEN); CKT_ERR_TOO_LARGE (out's limit); CKT_ERR_NOMEM. */
int ckt_zframe_encode(ckt_zctx *z, int codec, int store_only,
                      const uint8_t *raw, size_t raw_len, ckt_buf *out);

/* The same frame, made in place: b->data[start..start + 10) is reserved
 * for the frame header and prefix, and the encoded message follows up to
 * b->len.  Stored, only the 10 bytes are written (no copy); compressed,
 * zstd's output goes to z's scratch buffer and replaces the message, and
 * b->len shrinks.  The cheapest way for a sender that encodes the message
 * itself.  CKT_OK; CKT_ERR_INVALID_ARGUMENT (z or b NULL, codec not 2..6,
 * fewer than 10 bytes after start, a message longer than UINT32_MAX -
 * CKT_ZFRAME_PREFIX_LEN).  Never fails for want of memory: it stores. */
int ckt_zframe_seal(ckt_zctx *z, int codec, int store_only, ckt_buf *b,
                    size_t start);

/* Decodes the body of a ZMESSAGE frame (what follows its 5-byte frame
 * header), body[0..len), into *raw and *codec (set only on success).  This
 * function initialises *raw (when raw is not NULL) with limit max_raw, and
 * allocates raw_len + 1 bytes for it, no more, only once raw_len is known
 * to be at most max_raw and the zstd frame's header and extent agree; the
 * caller frees it with ckt_buf_free() (harmless after an error: *raw is
 * then empty).  The result is the encoded message, for
 * ckt_message_decode().  Every check is in docs/wire.md.
 * CKT_OK; CKT_ERR_FORMAT (shorter than the prefix, codec not 2..6, data
 * longer than raw_len, zstd data that is not exactly one valid frame of
 * exactly raw_len bytes); CKT_ERR_TOO_LARGE (raw_len > max_raw);
 * CKT_ERR_NOMEM; CKT_ERR_INVALID_ARGUMENT (z, raw or codec NULL, body NULL
 * with len > 0). */
int ckt_zframe_decode(ckt_zctx *z, const uint8_t *body, size_t len,
                      size_t max_raw, ckt_buf *raw, int *codec);

/* The zstd level of codec 2..6: -5, 1, 3, 7, 11; 0 (zstd's default) for
 * any other value. */
int ckt_codec_level(int codec);

#endif
