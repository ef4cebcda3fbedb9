/*
 * fragment_fields.h — the parts the Message and the Fragment share: owned
 * strings, payloads and argument lists, and their wire encoding.
 *
 * Both record types hold the same kinds of fields with the same hard
 * limits (CKT_MESSAGE_* in ckt/message.h) and the same ownership rules, so
 * the rules live here once: a fix to, say, the args total accounting
 * reaches both types.  The functions act on the fields themselves (a
 * `char **`, an args array and its count), not on the records, so the
 * callers keep their public structs and NULL checks.
 *
 * Everything wipes what it frees: strings and payloads may carry
 * credentials.
 */
#ifndef CKT_FRAGMENT_FIELDS_H
#define CKT_FRAGMENT_FIELDS_H

#include <stddef.h>
#include <stdint.h>

#include "ckt/message.h"
#include "core_buf.h"
#include "core_cursor.h"

/* ---- owned strings (NULL means "") ---- */

/* Wipes and frees s; NULL is fine. */
void ckt_fields_str_free(char *s);

/* Replaces *field with a copy of s (NULL: empty) and frees the old value.
 * On error *field is unchanged.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (s longer than max); CKT_ERR_NOMEM. */
int ckt_fields_str_set(char **field, const char *s, size_t max);

/* *dst = a copy of src (NULL stays NULL).  CKT_OK or CKT_ERR_NOMEM (*dst
 * NULL). */
int ckt_fields_str_copy(char **dst, const char *src);

/* 1 when a and b hold the same text, NULL counting as "". */
int ckt_fields_str_eq(const char *a, const char *b);

/* ---- payloads (NULL with length 0 means none) ---- */

/* Wipes and frees p (len bytes); NULL is fine. */
void ckt_fields_payload_free(uint8_t *p, size_t len);

/* Replaces *payload and *len with a copy of data[0..n).  On error both are
 * unchanged.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (data NULL with n > 0, or n beyond the
 * wire's u32 length); CKT_ERR_NOMEM. */
int ckt_fields_payload_set(uint8_t **payload, size_t *len, const void *data,
                           size_t n);

/* *dst = a copy of src[0..n) (NULL when n is 0).  CKT_OK or CKT_ERR_NOMEM
 * (*dst NULL). */
int ckt_fields_payload_copy(uint8_t **dst, const uint8_t *src, size_t n);

/* 1 when both hold the same n bytes. */
int ckt_fields_payload_eq(const uint8_t *a, const uint8_t *b, size_t n);

/* ---- argument lists ---- */

/* Frees every key and value and the array; NULL is fine. */
void ckt_fields_args_free(ckt_kv *args, size_t nargs);

/* Sets argument key to a copy of value (NULL: empty), replacing an
 * existing value in place or appending, under the CKT_MESSAGE_ARG* and
 * CKT_MESSAGE_NARGS_MAX limits.  On error the list is unchanged.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (key NULL, empty or too long, value too
 * long, a limit would be exceeded); CKT_ERR_NOMEM. */
int ckt_fields_args_set(ckt_kv **args, size_t *nargs, const char *key,
                        const char *value);

/* The value of key ("" when empty) or NULL when absent or key is NULL. */
const char *ckt_fields_args_get(const ckt_kv *args, size_t nargs,
                                const char *key);

/* Deep-copies src[0..n) into *dst (NULL when n is 0), NULL values staying
 * NULL.  Limits are not checked (a copy is as valid as its source), the
 * shape is: src NULL with n > 0 or a NULL key is refused before anything
 * is allocated.  On error *dst is NULL.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT; CKT_ERR_NOMEM. */
int ckt_fields_args_copy(ckt_kv **dst, const ckt_kv *src, size_t n);

/* 1 when both lists hold the same keys and values in the same order (NULL
 * values count as ""). */
int ckt_fields_args_eq(const ckt_kv *a, size_t na, const ckt_kv *b, size_t nb);

/* ---- wire: sizes and checks before encoding ---- */

/* Sets *len to the length of s (0 for NULL) when it is at most max.
 * CKT_OK or CKT_ERR_INVALID_ARGUMENT. */
int ckt_fields_check_str(const char *s, size_t max, size_t *len);

/* Checks args against everything the decoder enforces (count, key and
 * value lengths, the total, non-empty non-NULL unique keys) and sets *size
 * to the bytes ckt_fields_append_args() will write (the u16 count
 * included).  CKT_OK or CKT_ERR_INVALID_ARGUMENT. */
int ckt_fields_check_args(const ckt_kv *args, size_t nargs, size_t *size);

/* The most bytes an args section can take on the wire. */
#define CKT_FIELDS_ARGS_ENCODED_MAX                                            \
  (2 + (size_t)CKT_MESSAGE_NARGS_MAX * (2 + 4) + CKT_MESSAGE_ARGS_TOTAL_MAX)

/* ---- wire: writing (big-endian) ---- */

/* Writes the low n bytes of v (n <= 8) at p. */
void ckt_fields_put_be(uint8_t *p, uint64_t v, size_t n);

/* Each appends to out: CKT_OK, CKT_ERR_NOMEM or CKT_ERR_TOO_LARGE (out's
 * limit).  On error out may hold part of the field: encoders check the
 * whole size first and cut back to their start on failure. */
int ckt_fields_append_be(ckt_buf *out, uint64_t v, size_t n);
/* A length len_bytes (2 or 4) wide, then the bytes of s. */
int ckt_fields_append_str(ckt_buf *out, const char *s, size_t len_bytes);
/* u16 count, then per arg: key (u16 length), value (u32 length). */
int ckt_fields_append_args(ckt_buf *out, const ckt_kv *args, size_t nargs);
/* u32 length, then the bytes. */
int ckt_fields_append_payload(ckt_buf *out, const uint8_t *p, size_t len);

/* ---- wire: reading ---- */

/* Two's complement of v without implementation-defined conversion. */
int64_t ckt_fields_to_i64(uint64_t v);

/* Reads a length (len_bytes: 2 or 4) and that many bytes into a new
 * NUL-terminated *out; *len gets the length.  The length is checked against
 * max, then against the input left, and only then is memory allocated.
 * CKT_OK; CKT_ERR_TOO_LARGE (beyond max); CKT_ERR_FORMAT (truncated, or a
 * NUL byte inside); CKT_ERR_NOMEM. */
int ckt_fields_read_str(ckt_cursor *c, size_t len_bytes, size_t max, char **out,
                        size_t *len);

/* Reads an args section into a new *args and *nargs, enforcing every arg
 * limit (CKT_ERR_TOO_LARGE) and non-empty unique keys (CKT_ERR_FORMAT).  On
 * error *args may hold a partly filled array of *nargs entries (NULL where
 * not yet read) for the caller's free. */
int ckt_fields_read_args(ckt_cursor *c, ckt_kv **args, size_t *nargs);

/* Reads a u32 length and that many bytes into a new *payload (NULL when
 * empty).  CKT_OK; CKT_ERR_TOO_LARGE (beyond max); CKT_ERR_FORMAT;
 * CKT_ERR_NOMEM. */
int ckt_fields_read_payload(ckt_cursor *c, size_t max, uint8_t **payload,
                            size_t *len);

#endif
