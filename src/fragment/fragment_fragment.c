/* fragment_fragment.c — the Fragment type, its wire codec, and peer IDs.
 * The fields it shares with the Message (strings, args, payload) are
 * handled by fragment_fields.c. */
#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"
#include "ckt/fragment.h"
#include "core_buf.h"
#include "core_cursor.h"
#include "core_util.h"
#include "fragment_codec.h"
#include "fragment_fields.h"

/* ---- ownership ---- */

ckt_fragment *ckt_fragment_new(void) {
  return calloc(1, sizeof(ckt_fragment));
}

void ckt_fragment_free(ckt_fragment *f) {
  if (!f) {
    return;
  }
  ckt_fields_str_free(f->service);
  ckt_fields_str_free(f->subject);
  ckt_fields_str_free(f->err);
  ckt_fields_args_free(f->args, f->nargs);
  ckt_fields_payload_free(f->payload, f->payload_len);
  free(f);
}

/* ---- setters ---- */

int ckt_fragment_set_service(ckt_fragment *f, const char *s) {
  return f ? ckt_fields_str_set(&f->service, s, CKT_FRAGMENT_SERVICE_MAX)
           : CKT_ERR_INVALID_ARGUMENT;
}

int ckt_fragment_set_subject(ckt_fragment *f, const char *s) {
  return f ? ckt_fields_str_set(&f->subject, s, CKT_FRAGMENT_SUBJECT_MAX)
           : CKT_ERR_INVALID_ARGUMENT;
}

int ckt_fragment_set_err(ckt_fragment *f, const char *s) {
  return f ? ckt_fields_str_set(&f->err, s, CKT_FRAGMENT_ERR_MAX)
           : CKT_ERR_INVALID_ARGUMENT;
}

int ckt_fragment_set_payload(ckt_fragment *f, const void *data, size_t len) {
  return f ? ckt_fields_payload_set(&f->payload, &f->payload_len, data, len)
           : CKT_ERR_INVALID_ARGUMENT;
}

int ckt_fragment_set_arg(ckt_fragment *f, const char *key, const char *value) {
  return f ? ckt_fields_args_set(&f->args, &f->nargs, key, value)
           : CKT_ERR_INVALID_ARGUMENT;
}

const char *ckt_fragment_get_arg(const ckt_fragment *f, const char *key) {
  return f ? ckt_fields_args_get(f->args, f->nargs, key) : NULL;
}

int ckt_fragment_copy(const ckt_fragment *src, ckt_fragment **out) {
  ckt_fragment *f;
  int rv;

  if (!out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  *out = NULL;
  if (!src || (!src->payload && src->payload_len)) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  f = ckt_fragment_new();
  if (!f) {
    return CKT_ERR_NOMEM;
  }
  memcpy(f->from_peer, src->from_peer, CKT_PEER_ID_LEN);
  memcpy(f->to_peer, src->to_peer, CKT_PEER_ID_LEN);
  memcpy(f->circuit, src->circuit, CKT_PEER_ID_LEN);
  f->serial = src->serial;
  f->type = src->type;
  f->op = src->op;
  f->part = src->part;
  /* The args first: their shape is checked there, before any copying. */
  rv = ckt_fields_args_copy(&f->args, src->args, src->nargs);
  if (rv != CKT_OK) {
    goto fail;
  }
  f->nargs = src->nargs;
  rv = CKT_ERR_NOMEM;
  if (ckt_fields_str_copy(&f->service, src->service) ||
      ckt_fields_str_copy(&f->subject, src->subject) ||
      ckt_fields_str_copy(&f->err, src->err) ||
      ckt_fields_payload_copy(&f->payload, src->payload, src->payload_len)) {
    goto fail;
  }
  f->payload_len = src->payload_len;
  *out = f;
  return CKT_OK;
fail:
  ckt_fragment_free(f);
  return rv;
}

int ckt_fragment_equal(const ckt_fragment *a, const ckt_fragment *b) {
  return memcmp(a->from_peer, b->from_peer, CKT_PEER_ID_LEN) == 0 &&
         memcmp(a->to_peer, b->to_peer, CKT_PEER_ID_LEN) == 0 &&
         memcmp(a->circuit, b->circuit, CKT_PEER_ID_LEN) == 0 &&
         a->serial == b->serial && a->type == b->type && a->op == b->op &&
         a->part == b->part && ckt_fields_str_eq(a->service, b->service) &&
         ckt_fields_str_eq(a->subject, b->subject) &&
         ckt_fields_str_eq(a->err, b->err) &&
         ckt_fields_args_eq(a->args, a->nargs, b->args, b->nargs) &&
         a->payload_len == b->payload_len &&
         ckt_fields_payload_eq(a->payload, b->payload, a->payload_len);
}

/* ---- peer IDs ---- */

void ckt_peer_id_to_hex(const uint8_t id[CKT_PEER_ID_LEN],
                        char out[CKT_PEER_ID_HEX_LEN + 1]) {
  if (!out) {
    return;
  }
  if (!id) {
    out[0] = 0;
    return;
  }
  ckt_hex_encode(out, id, CKT_PEER_ID_LEN, 0);
}

static int hex_digit(char ch) {
  if (ch >= '0' && ch <= '9') {
    return ch - '0';
  }
  if (ch >= 'a' && ch <= 'f') {
    return ch - 'a' + 10;
  }
  if (ch >= 'A' && ch <= 'F') {
    return ch - 'A' + 10;
  }
  return -1;
}

int ckt_peer_id_from_hex(const char *hex, uint8_t id[CKT_PEER_ID_LEN]) {
  uint8_t tmp[CKT_PEER_ID_LEN];
  size_t i;
  int hi, lo;

  if (!hex || !id) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  /* strnlen: a long string is refused without reading all of it. */
  if (strnlen(hex, CKT_PEER_ID_HEX_LEN + 1) != CKT_PEER_ID_HEX_LEN) {
    return CKT_ERR_FORMAT;
  }
  for (i = 0; i < CKT_PEER_ID_LEN; ++i) {
    hi = hex_digit(hex[2 * i]);
    lo = hex_digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return CKT_ERR_FORMAT;
    }
    tmp[i] = (uint8_t)(hi << 4 | lo);
  }
  /* Only a whole, valid ID replaces the caller's. */
  memcpy(id, tmp, CKT_PEER_ID_LEN);
  return CKT_OK;
}

/* ---- encoding ---- */

static int type_known(uint8_t type) {
  return type >= CKT_FRAG_DATA && type <= CKT_FRAG_REFUSE;
}

/* Checks f against the hard limits and sets *size to its encoded length.
 * CKT_OK or CKT_ERR_INVALID_ARGUMENT. */
static int check_fragment(const ckt_fragment *f, size_t *size) {
  size_t service, subject, err, args;

  if (!type_known(f->type) || (!f->payload && f->payload_len) ||
      (uint64_t)f->payload_len > UINT32_MAX ||
      ckt_fields_check_str(f->service, CKT_FRAGMENT_SERVICE_MAX, &service) ||
      ckt_fields_check_str(f->subject, CKT_FRAGMENT_SUBJECT_MAX, &subject) ||
      ckt_fields_check_str(f->err, CKT_FRAGMENT_ERR_MAX, &err) ||
      ckt_fields_check_args(f->args, f->nargs, &args)) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  *size = CKT_FRAGMENT_FIXED_LEN + 2 + service + 2 + subject + args + 4 +
          f->payload_len + 4 + err;
  return CKT_OK;
}

int ckt_fragment_encode(const ckt_fragment *f, ckt_buf *out) {
  size_t size, start;
  int rv;

  if (!f || !out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  rv = check_fragment(f, &size);
  if (rv != CKT_OK) {
    return rv;
  }
  if (size > out->limit || out->len > out->limit - size) {
    return CKT_ERR_TOO_LARGE;
  }
  start = out->len;
  if ((rv = ckt_fields_append_be(out, CKT_FRAGMENT_VERSION, 1)) ||
      (rv = ckt_fields_append_be(out, f->type, 1)) ||
      (rv = ckt_buf_append(out, f->from_peer, CKT_PEER_ID_LEN)) ||
      (rv = ckt_buf_append(out, f->to_peer, CKT_PEER_ID_LEN)) ||
      (rv = ckt_buf_append(out, f->circuit, CKT_PEER_ID_LEN)) ||
      (rv = ckt_fields_append_be(out, f->serial, 8)) ||
      (rv = ckt_fields_append_be(out, (uint64_t)f->op, 8)) ||
      (rv = ckt_fields_append_be(out, (uint64_t)f->part, 8)) ||
      (rv = ckt_fields_append_str(out, f->service, 2)) ||
      (rv = ckt_fields_append_str(out, f->subject, 2)) ||
      (rv = ckt_fields_append_args(out, f->args, f->nargs)) ||
      (rv = ckt_fields_append_payload(out, f->payload, f->payload_len)) ||
      (rv = ckt_fields_append_str(out, f->err, 4))) {
    /* Only NOMEM gets here (the size was checked): drop the partial
     * fragment. */
    out->len = start;
    if (out->data) {
      out->data[start] = 0;
    }
    return rv;
  }
  return CKT_OK;
}

/* ---- decoding ---- */

static int decode_body(ckt_cursor *c, size_t max_payload, ckt_fragment *f) {
  uint8_t version;
  uint64_t op, part;
  size_t len;
  int rv;

  if (ckt_cursor_u8(c, &version) != 0 || version != CKT_FRAGMENT_VERSION) {
    return CKT_ERR_FORMAT;
  }
  ckt_cursor_u8(c, &f->type);
  ckt_cursor_copy(c, f->from_peer, CKT_PEER_ID_LEN);
  ckt_cursor_copy(c, f->to_peer, CKT_PEER_ID_LEN);
  ckt_cursor_copy(c, f->circuit, CKT_PEER_ID_LEN);
  ckt_cursor_be64(c, &f->serial);
  ckt_cursor_be64(c, &op);
  ckt_cursor_be64(c, &part);
  /* The cursor's failure is sticky: one check covers the fixed part. */
  if (c->bad || !type_known(f->type)) {
    return CKT_ERR_FORMAT;
  }
  f->op = ckt_fields_to_i64(op);
  f->part = ckt_fields_to_i64(part);

  if ((rv = ckt_fields_read_str(c, 2, CKT_FRAGMENT_SERVICE_MAX, &f->service,
                                &len)) ||
      (rv = ckt_fields_read_str(c, 2, CKT_FRAGMENT_SUBJECT_MAX, &f->subject,
                                &len)) ||
      (rv = ckt_fields_read_args(c, &f->args, &f->nargs)) ||
      (rv = ckt_fields_read_payload(c, max_payload, &f->payload,
                                    &f->payload_len)) ||
      (rv = ckt_fields_read_str(c, 4, CKT_FRAGMENT_ERR_MAX, &f->err, &len))) {
    return rv;
  }
  return c->left ? CKT_ERR_FORMAT : CKT_OK;
}

static size_t max_payload_of(const ckt_fragment_limits *lim) {
  return lim && lim->max_payload ? lim->max_payload
                                 : CKT_FRAGMENT_DEFAULT_MAX_PAYLOAD;
}

int ckt_fragment_decode(const uint8_t *buf, size_t len,
                        const ckt_fragment_limits *lim, ckt_fragment **out) {
  ckt_cursor c;
  ckt_fragment *f;
  int rv;

  if (!out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  *out = NULL;
  if (!buf && len) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  f = ckt_fragment_new();
  if (!f) {
    return CKT_ERR_NOMEM;
  }
  ckt_cursor_init(&c, buf, len);
  rv = decode_body(&c, max_payload_of(lim), f);
  if (rv != CKT_OK) {
    ckt_fragment_free(f);
    return rv;
  }
  *out = f;
  return CKT_OK;
}

size_t ckt_fragment_encoded_max(const ckt_fragment_limits *lim) {
  size_t payload = max_payload_of(lim);
  size_t rest = CKT_FRAGMENT_FIXED_LEN + 2 + CKT_FRAGMENT_SERVICE_MAX + 2 +
                CKT_FRAGMENT_SUBJECT_MAX + CKT_FIELDS_ARGS_ENCODED_MAX + 4 + 4 +
                CKT_FRAGMENT_ERR_MAX;
  if ((uint64_t)payload > UINT32_MAX) {
    payload = UINT32_MAX; /* the wire cannot say more */
  }
  return payload > SIZE_MAX - rest ? SIZE_MAX : rest + payload;
}
