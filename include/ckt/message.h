/*
 * ckt/message.h — the Message: one call, reply, one-way message, push,
 * error or cancellation travelling between peers.
 *
 * A message is a plain struct the caller may read and fill directly; the
 * functions below allocate, copy and free its owned fields.  On the wire a
 * message is a versioned, big-endian binary record (docs/wire.md); the
 * library encodes and decodes it, enforcing the hard limits defined here on
 * both sides, so a peer can never make another allocate more than these
 * limits (plus the receiver's own payload limit) for one message.
 *
 * Ownership: every pointer in a ckt_message (strings, args, each key and
 * value, payload) is owned by the message, allocated with malloc() and freed
 * by ckt_message_free().  Code that assigns a field directly hands that
 * memory to the message.  A NULL string means the empty string; a NULL
 * payload means no payload (payload_len must then be 0).  Messages made by
 * the decoder have every string non-NULL (empty strings as "") and a NULL
 * payload when it is empty.
 *
 * Threading: a message has no internal locking.  Different messages may be
 * used from different threads freely; one message may be read (get_arg,
 * copy, encode) by several threads at once only while no thread modifies it.
 */
#ifndef CKT_MESSAGE_H
#define CKT_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

#include "ckt/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Message types (the `type` field). */
enum {
  CKT_MSG_CALL = 1,   /* two-way request; expects a REPLY or an ERROR */
  CKT_MSG_REPLY = 2,  /* the answer to a CALL */
  CKT_MSG_ONEWAY = 3, /* request that expects no answer */
  CKT_MSG_PUSH = 4,   /* unsolicited message from server to client */
  CKT_MSG_ERROR = 5,  /* the answer to a CALL that failed; `err` says why */
  CKT_MSG_CANCEL = 6  /* asks the other side to abandon call `call_id` */
};

/* Message flags (the `flags` field; bits may be combined). */
enum {
  CKT_MSG_FLAG_NO_COMPRESS = 1, /* the payload is not worth compressing */
  CKT_MSG_FLAG_LAST_PART = 2    /* the last part of a streamed sequence */
};

/* Compression codecs (the `codec` field; docs/wire.md, "Compressed
 * messages").  The sender chooses per message, the receiver decodes any
 * ("reader makes right").  Every zstd level decodes with the same
 * decoder; the level only trades the sender's time for size. */
enum {
  CKT_CODEC_AUTO = 0,      /* the node decides: for a call, one-way message
                            * or upload, its configured codec; for a reply,
                            * push or download part, the codec that peer last
                            * used (reader makes right) */
  CKT_CODEC_NONE = 1,      /* sent as is */
  CKT_CODEC_ZSTD_FAST = 2, /* zstd level -5: cheapest, least compression */
  CKT_CODEC_ZSTD_1 = 3,    /* zstd level 1 */
  CKT_CODEC_ZSTD_3 = 4,    /* zstd level 3 (zstd's default) */
  CKT_CODEC_ZSTD_7 = 5,    /* zstd level 7 */
  CKT_CODEC_ZSTD_11 = 6    /* zstd level 11: slowest, most compression */
};
#define CKT_CODEC_MAX CKT_CODEC_ZSTD_11

/* The codec's name: "auto", "none", "zstd:fast", "zstd:01", "zstd:03",
 * "zstd:07", "zstd:11"; "?" for an unknown value.  Static storage. */
CKT_EXTERN const char *ckt_codec_name(int codec);
/* Parses a codec name as ckt_codec_name() writes it; also accepted:
 * "zstd" (zstd:01), "zstd:1", "zstd:3", "zstd:7", "off" (none).
 * CKT_OK and *codec set; CKT_ERR_INVALID_ARGUMENT (unknown name, NULL). */
CKT_EXTERN int ckt_codec_parse(const char *name, int *codec);

/* Hard limits, the same for every peer: exceeding one is an error when
 * setting, encoding and decoding.  String lengths are in bytes, without the
 * terminating NUL. */
#define CKT_MESSAGE_SERVICE_MAX 255
#define CKT_MESSAGE_ADDR_MAX 512 /* from, to */
#define CKT_MESSAGE_SUBJECT_MAX 4096
#define CKT_MESSAGE_ERR_MAX 65536
#define CKT_MESSAGE_NARGS_MAX 256
#define CKT_MESSAGE_ARG_KEY_MAX 255
#define CKT_MESSAGE_ARG_VALUE_MAX 65536
/* The sum of the lengths of every arg key and value. */
#define CKT_MESSAGE_ARGS_TOTAL_MAX (1024u * 1024)

/* The receiver's payload limit when none is configured. */
#define CKT_MESSAGE_DEFAULT_MAX_PAYLOAD (16u * 1024 * 1024)

/* Limits a receiver chooses; NULL where a function takes one means all
 * defaults. */
typedef struct ckt_message_limits {
  size_t max_payload; /* largest payload accepted; 0: the default 16 MiB */
} ckt_message_limits;

/* One named argument.  Keys are non-empty and unique within a message. */
typedef struct ckt_kv {
  char *key;
  char *value; /* NULL: empty */
} ckt_kv;

typedef struct ckt_message {
  uint8_t type;  /* CKT_MSG_*; must be set before the message is sent */
  uint8_t flags; /* CKT_MSG_FLAG_* */
  uint64_t call_id;
  uint64_t serial;
  uint64_t seqno;
  int64_t created_ns;  /* Unix time in nanoseconds */
  int64_t deadline_ns; /* 0: none; Unix ns */
  int64_t stream_part;
  char *from;
  char *to;
  char *service;
  char *subject;
  ckt_kv *args; /* nargs entries */
  size_t nargs;
  uint8_t *payload;
  size_t payload_len;
  char *err; /* set on CKT_MSG_ERROR */
  /* How the message travels (CKT_CODEC_*; not part of the encoded
   * message: it selects the frame, docs/wire.md).  On a received message:
   * the codec the sender chose (CKT_CODEC_NONE for a plain frame).  Set
   * CKT_MSG_FLAG_NO_COMPRESS instead to keep one message uncompressed
   * without changing what the peer learns. */
  uint8_t codec;
} ckt_message;

/* Returns a new message with every field zero/NULL (type 0: not yet
 * valid), or NULL when out of memory.  Free it with ckt_message_free(). */
CKT_EXTERN ckt_message *ckt_message_new(void);

/* Frees the message and everything it owns, zeroing the payload, strings
 * and args first (they may carry secrets).  NULL is fine. */
CKT_EXTERN void ckt_message_free(ckt_message *m);

/* Each setter replaces the field with a copy of s (NULL: empty) and frees
 * the old value.  On error the message is unchanged.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (m is NULL, or s is longer than the
 * field's limit: CKT_MESSAGE_SERVICE_MAX, CKT_MESSAGE_ADDR_MAX for from and
 * to, CKT_MESSAGE_SUBJECT_MAX, CKT_MESSAGE_ERR_MAX); CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_message_set_service(ckt_message *m, const char *s);
CKT_EXTERN int ckt_message_set_from(ckt_message *m, const char *s);
CKT_EXTERN int ckt_message_set_to(ckt_message *m, const char *s);
CKT_EXTERN int ckt_message_set_subject(ckt_message *m, const char *s);
CKT_EXTERN int ckt_message_set_err(ckt_message *m, const char *s);

/* Replaces the payload with a copy of data[0..len) (len 0: no payload;
 * data may then be NULL).  On error the message is unchanged.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (m is NULL, data is NULL with len > 0,
 * or len does not fit the wire's 32-bit length); CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_message_set_payload(ckt_message *m, const void *data,
                                       size_t len);

/* Sets argument `key` to a copy of value (NULL: empty), replacing the
 * value of an existing argument with that key or appending a new one.
 * On error the message is unchanged.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (m or key is NULL, key is empty or
 * longer than CKT_MESSAGE_ARG_KEY_MAX, value is longer than
 * CKT_MESSAGE_ARG_VALUE_MAX, or the change would exceed
 * CKT_MESSAGE_NARGS_MAX or CKT_MESSAGE_ARGS_TOTAL_MAX); CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_message_set_arg(ckt_message *m, const char *key,
                                   const char *value);

/* Returns the value of argument `key` ("" when its value is empty), or
 * NULL when m or key is NULL or the message has no such argument.  The
 * pointer stays valid until the argument is changed or the message freed. */
CKT_EXTERN const char *ckt_message_get_arg(const ckt_message *m,
                                           const char *key);

/* Makes *out a deep copy of src (no memory shared); free it with
 * ckt_message_free().  On error *out is NULL.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (src or out is NULL, or src has an
 * argument with a NULL key, or payload NULL with payload_len > 0);
 * CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_message_copy(const ckt_message *src, ckt_message **out);

#ifdef __cplusplus
}
#endif

#endif /* CKT_MESSAGE_H */
