/*
 * ckt/fragment.h — the Fragment: one unit of what flows over a circuit,
 * and the 128-bit random IDs that name peers and circuits.
 *
 * A circuit is a persistent two-way conversation between two peers, carried
 * by one QUIC bidirectional stream.  It is opened by an OPEN fragment naming
 * the target service, carries DATA and ERROR fragments both ways, and ends
 * with a CLOSE (or a REFUSE in answer to the OPEN).
 *
 * A fragment is a plain struct the caller may read and fill directly; the
 * functions below allocate, copy and free its owned fields.  On the wire a
 * fragment is a versioned, big-endian binary record (docs/wire.md); the
 * library encodes and decodes it, enforcing the hard limits defined here on
 * both sides, so a peer can never make another allocate more than these
 * limits (plus the receiver's own payload limit) for one fragment.  The
 * string and argument limits are those of the Message (ckt/message.h).
 *
 * Ownership: every pointer in a ckt_fragment (strings, args, each key and
 * value, payload) is owned by the fragment, allocated with malloc() and
 * freed by ckt_fragment_free().  Code that assigns a field directly hands
 * that memory to the fragment.  A NULL string means the empty string; a NULL
 * payload means no payload (payload_len must then be 0).  Fragments made by
 * the decoder have every string non-NULL (empty strings as "") and a NULL
 * payload when it is empty.  The ID arrays are plain values.
 *
 * Threading: a fragment has no internal locking.  Different fragments may
 * be used from different threads freely; one fragment may be read
 * (get_arg, copy, encode) by several threads at once only while no thread
 * modifies it.  The peer ID functions are pure and thread-safe.
 */
#ifndef CKT_FRAGMENT_H
#define CKT_FRAGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "ckt/error.h"
#include "ckt/message.h" /* ckt_kv and the shared limits */

#ifdef __cplusplus
extern "C" {
#endif

/* Bytes of a peer or circuit ID: 128 random bits, so IDs chosen
 * independently by different peers do not collide. */
#define CKT_PEER_ID_LEN 16

/* Characters of an ID in hex, without the terminating NUL. */
#define CKT_PEER_ID_HEX_LEN (2 * CKT_PEER_ID_LEN)

/* Fragment types (the `type` field). */
enum {
  CKT_FRAG_DATA = 1,  /* user data */
  CKT_FRAG_ERROR = 2, /* a user-level error; `err` says what */
  /* Opens a circuit: `service` names the target service, `subject` the
   * circuit's name; may carry a first payload. */
  CKT_FRAG_OPEN = 3,
  CKT_FRAG_CLOSE = 4, /* closes a circuit; `err` = the reason, may be empty */
  /* The remote refused an OPEN; `err` says why (unknown service, a limit
   * reached — with the URL of the peer that holds it, ...). */
  CKT_FRAG_REFUSE = 5
};

/* Hard limits, the same for every peer and the same as the Message's:
 * exceeding one is an error when setting, encoding and decoding.  String
 * lengths are in bytes, without the terminating NUL. */
#define CKT_FRAGMENT_SERVICE_MAX CKT_MESSAGE_SERVICE_MAX
#define CKT_FRAGMENT_SUBJECT_MAX CKT_MESSAGE_SUBJECT_MAX
#define CKT_FRAGMENT_ERR_MAX CKT_MESSAGE_ERR_MAX
#define CKT_FRAGMENT_NARGS_MAX CKT_MESSAGE_NARGS_MAX
#define CKT_FRAGMENT_ARG_KEY_MAX CKT_MESSAGE_ARG_KEY_MAX
#define CKT_FRAGMENT_ARG_VALUE_MAX CKT_MESSAGE_ARG_VALUE_MAX
#define CKT_FRAGMENT_ARGS_TOTAL_MAX CKT_MESSAGE_ARGS_TOTAL_MAX

/* The receiver's payload limit when none is configured. */
#define CKT_FRAGMENT_DEFAULT_MAX_PAYLOAD (16u * 1024 * 1024)

/* Limits a receiver chooses; NULL where a function takes one means all
 * defaults. */
typedef struct ckt_fragment_limits {
  size_t max_payload; /* largest payload accepted; 0: the default 16 MiB */
} ckt_fragment_limits;

typedef struct ckt_fragment {
  uint8_t from_peer[CKT_PEER_ID_LEN]; /* the sending peer */
  uint8_t to_peer[CKT_PEER_ID_LEN];   /* the receiving peer */
  uint8_t circuit[CKT_PEER_ID_LEN];   /* the circuit it belongs to */
  uint64_t serial;
  uint8_t type; /* CKT_FRAG_*; must be set before the fragment is sent */
  int64_t op;   /* user-defined operation code */
  int64_t part; /* user-defined sequence number within a stream of parts */
  char *service;
  char *subject;
  ckt_kv *args; /* nargs entries */
  size_t nargs;
  uint8_t *payload;
  size_t payload_len;
  char *err; /* set on ERROR, CLOSE (may be empty) and REFUSE */
} ckt_fragment;

/* Returns a new fragment with every field zero/NULL (type 0: not yet
 * valid), or NULL when out of memory.  Free it with ckt_fragment_free(). */
CKT_EXTERN ckt_fragment *ckt_fragment_new(void);

/* Frees the fragment and everything it owns, zeroing the payload, strings
 * and args first (they may carry secrets).  NULL is fine. */
CKT_EXTERN void ckt_fragment_free(ckt_fragment *f);

/* Each setter replaces the field with a copy of s (NULL: empty) and frees
 * the old value.  On error the fragment is unchanged.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (f is NULL, or s is longer than the
 * field's limit: CKT_FRAGMENT_SERVICE_MAX, CKT_FRAGMENT_SUBJECT_MAX,
 * CKT_FRAGMENT_ERR_MAX); CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_fragment_set_service(ckt_fragment *f, const char *s);
CKT_EXTERN int ckt_fragment_set_subject(ckt_fragment *f, const char *s);
CKT_EXTERN int ckt_fragment_set_err(ckt_fragment *f, const char *s);

/* Replaces the payload with a copy of data[0..len) (len 0: no payload;
 * data may then be NULL).  On error the fragment is unchanged.  The
 * receiver's max_payload is not applied here (it is the receiver's choice).
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (f is NULL, data is NULL with len > 0,
 * or len does not fit the wire's 32-bit length); CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_fragment_set_payload(ckt_fragment *f, const void *data,
                                        size_t len);

/* Sets argument `key` to a copy of value (NULL: empty), replacing the
 * value of an existing argument with that key or appending a new one.
 * On error the fragment is unchanged.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (f or key is NULL, key is empty or
 * longer than CKT_FRAGMENT_ARG_KEY_MAX, value is longer than
 * CKT_FRAGMENT_ARG_VALUE_MAX, or the change would exceed
 * CKT_FRAGMENT_NARGS_MAX or CKT_FRAGMENT_ARGS_TOTAL_MAX); CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_fragment_set_arg(ckt_fragment *f, const char *key,
                                    const char *value);

/* Returns the value of argument `key` ("" when its value is empty), or
 * NULL when f or key is NULL or the fragment has no such argument.  The
 * pointer stays valid until the argument is changed or the fragment
 * freed. */
CKT_EXTERN const char *ckt_fragment_get_arg(const ckt_fragment *f,
                                            const char *key);

/* Makes *out a deep copy of src (no memory shared); free it with
 * ckt_fragment_free().  On error *out is NULL.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (src or out is NULL, or src has an
 * argument with a NULL key, or payload NULL with payload_len > 0);
 * CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_fragment_copy(const ckt_fragment *src, ckt_fragment **out);

/* Writes id as CKT_PEER_ID_HEX_LEN lowercase hex digits and a NUL into
 * out.  Both must be non-NULL (a NULL id writes "" when out is not). */
CKT_EXTERN void ckt_peer_id_to_hex(const uint8_t id[CKT_PEER_ID_LEN],
                                   char out[CKT_PEER_ID_HEX_LEN + 1]);

/* Parses exactly CKT_PEER_ID_HEX_LEN hex digits (either case, nothing
 * before or after) into id.  On error id is unchanged.
 * CKT_OK; CKT_ERR_FORMAT (wrong length or a non-hex character);
 * CKT_ERR_INVALID_ARGUMENT (hex or id is NULL). */
CKT_EXTERN int ckt_peer_id_from_hex(const char *hex,
                                    uint8_t id[CKT_PEER_ID_LEN]);

#ifdef __cplusplus
}
#endif

#endif /* CKT_FRAGMENT_H */
