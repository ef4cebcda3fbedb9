/* fragment_message.c — the Message type and its wire codec.  The fields it
 * shares with the Fragment (strings, args, payload) are handled by
 * fragment_fields.c. */
#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"
#include "ckt/message.h"
#include "core_buf.h"
#include "core_cursor.h"
#include "fragment_codec.h"
#include "fragment_fields.h"

/* ---- ownership ---- */

ckt_message *ckt_message_new(void) {
  return calloc(1, sizeof(ckt_message));
}

void ckt_message_free(ckt_message *m) {
  if (!m) {
    return;
  }
  ckt_fields_str_free(m->from);
  ckt_fields_str_free(m->to);
  ckt_fields_str_free(m->service);
  ckt_fields_str_free(m->subject);
  ckt_fields_str_free(m->err);
  ckt_fields_args_free(m->args, m->nargs);
  ckt_fields_payload_free(m->payload, m->payload_len);
  free(m);
}

/* ---- setters ---- */

int ckt_message_set_service(ckt_message *m, const char *s) {
  return m ? ckt_fields_str_set(&m->service, s, CKT_MESSAGE_SERVICE_MAX)
           : CKT_ERR_INVALID_ARGUMENT;
}

int ckt_message_set_from(ckt_message *m, const char *s) {
  return m ? ckt_fields_str_set(&m->from, s, CKT_MESSAGE_ADDR_MAX)
           : CKT_ERR_INVALID_ARGUMENT;
}

int ckt_message_set_to(ckt_message *m, const char *s) {
  return m ? ckt_fields_str_set(&m->to, s, CKT_MESSAGE_ADDR_MAX)
           : CKT_ERR_INVALID_ARGUMENT;
}

int ckt_message_set_subject(ckt_message *m, const char *s) {
  return m ? ckt_fields_str_set(&m->subject, s, CKT_MESSAGE_SUBJECT_MAX)
           : CKT_ERR_INVALID_ARGUMENT;
}

int ckt_message_set_err(ckt_message *m, const char *s) {
  return m ? ckt_fields_str_set(&m->err, s, CKT_MESSAGE_ERR_MAX)
           : CKT_ERR_INVALID_ARGUMENT;
}

int ckt_message_set_payload(ckt_message *m, const void *data, size_t len) {
  return m ? ckt_fields_payload_set(&m->payload, &m->payload_len, data, len)
           : CKT_ERR_INVALID_ARGUMENT;
}

int ckt_message_set_arg(ckt_message *m, const char *key, const char *value) {
  return m ? ckt_fields_args_set(&m->args, &m->nargs, key, value)
           : CKT_ERR_INVALID_ARGUMENT;
}

const char *ckt_message_get_arg(const ckt_message *m, const char *key) {
  return m ? ckt_fields_args_get(m->args, m->nargs, key) : NULL;
}

int ckt_message_copy(const ckt_message *src, ckt_message **out) {
  ckt_message *m;
  int rv;

  if (!out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  *out = NULL;
  if (!src || (!src->payload && src->payload_len)) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  m = ckt_message_new();
  if (!m) {
    return CKT_ERR_NOMEM;
  }
  m->type = src->type;
  m->flags = src->flags;
  m->call_id = src->call_id;
  m->serial = src->serial;
  m->seqno = src->seqno;
  m->created_ns = src->created_ns;
  m->deadline_ns = src->deadline_ns;
  m->stream_part = src->stream_part;
  m->codec = src->codec;
  /* The args first: their shape is checked there, before any copying. */
  rv = ckt_fields_args_copy(&m->args, src->args, src->nargs);
  if (rv != CKT_OK) {
    goto fail;
  }
  m->nargs = src->nargs;
  rv = CKT_ERR_NOMEM;
  if (ckt_fields_str_copy(&m->from, src->from) ||
      ckt_fields_str_copy(&m->to, src->to) ||
      ckt_fields_str_copy(&m->service, src->service) ||
      ckt_fields_str_copy(&m->subject, src->subject) ||
      ckt_fields_str_copy(&m->err, src->err) ||
      ckt_fields_payload_copy(&m->payload, src->payload, src->payload_len)) {
    goto fail;
  }
  m->payload_len = src->payload_len;
  *out = m;
  return CKT_OK;
fail:
  ckt_message_free(m);
  return rv;
}

int ckt_message_equal(const ckt_message *a, const ckt_message *b) {
  return a->type == b->type && a->flags == b->flags &&
         a->call_id == b->call_id && a->serial == b->serial &&
         a->seqno == b->seqno && a->created_ns == b->created_ns &&
         a->deadline_ns == b->deadline_ns && a->stream_part == b->stream_part &&
         ckt_fields_str_eq(a->from, b->from) &&
         ckt_fields_str_eq(a->to, b->to) &&
         ckt_fields_str_eq(a->service, b->service) &&
         ckt_fields_str_eq(a->subject, b->subject) &&
         ckt_fields_str_eq(a->err, b->err) &&
         ckt_fields_args_eq(a->args, a->nargs, b->args, b->nargs) &&
         a->payload_len == b->payload_len &&
         ckt_fields_payload_eq(a->payload, b->payload, a->payload_len);
}

/* ---- encoding ---- */

static int type_known(uint8_t type) {
  return type >= CKT_MSG_CALL && type <= CKT_MSG_CANCEL;
}

#define FLAGS_KNOWN (CKT_MSG_FLAG_NO_COMPRESS | CKT_MSG_FLAG_LAST_PART)

/* Checks m against the hard limits and sets *size to its encoded length.
 * CKT_OK or CKT_ERR_INVALID_ARGUMENT. */
static int check_message(const ckt_message *m, size_t *size) {
  const struct {
    const char *s;
    size_t max;
    size_t len_bytes;
  } strs[] = {
      {m->from, CKT_MESSAGE_ADDR_MAX, 2},
      {m->to, CKT_MESSAGE_ADDR_MAX, 2},
      {m->service, CKT_MESSAGE_SERVICE_MAX, 2},
      {m->subject, CKT_MESSAGE_SUBJECT_MAX, 2},
      {m->err, CKT_MESSAGE_ERR_MAX, 4},
  };
  size_t n = CKT_MESSAGE_FIXED_LEN, i, len;

  if (!type_known(m->type) || (m->flags & ~FLAGS_KNOWN) ||
      (!m->payload && m->payload_len) ||
      (uint64_t)m->payload_len > UINT32_MAX) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  for (i = 0; i < sizeof(strs) / sizeof(strs[0]); ++i) {
    if (ckt_fields_check_str(strs[i].s, strs[i].max, &len) != CKT_OK) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    n += strs[i].len_bytes + len;
  }
  if (ckt_fields_check_args(m->args, m->nargs, &len) != CKT_OK) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  *size = n + len + 4 + m->payload_len;
  return CKT_OK;
}

int ckt_message_encode(const ckt_message *m, ckt_buf *out) {
  size_t size, start;
  int rv;

  if (!m || !out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  rv = check_message(m, &size);
  if (rv != CKT_OK) {
    return rv;
  }
  if (size > out->limit || out->len > out->limit - size) {
    return CKT_ERR_TOO_LARGE;
  }
  start = out->len;
  if ((rv = ckt_fields_append_be(out, CKT_MESSAGE_VERSION, 1)) ||
      (rv = ckt_fields_append_be(out, m->type, 1)) ||
      (rv = ckt_fields_append_be(out, m->flags, 1)) ||
      (rv = ckt_fields_append_be(out, m->call_id, 8)) ||
      (rv = ckt_fields_append_be(out, m->serial, 8)) ||
      (rv = ckt_fields_append_be(out, m->seqno, 8)) ||
      (rv = ckt_fields_append_be(out, (uint64_t)m->created_ns, 8)) ||
      (rv = ckt_fields_append_be(out, (uint64_t)m->deadline_ns, 8)) ||
      (rv = ckt_fields_append_be(out, (uint64_t)m->stream_part, 8)) ||
      (rv = ckt_fields_append_str(out, m->from, 2)) ||
      (rv = ckt_fields_append_str(out, m->to, 2)) ||
      (rv = ckt_fields_append_str(out, m->service, 2)) ||
      (rv = ckt_fields_append_str(out, m->subject, 2)) ||
      (rv = ckt_fields_append_args(out, m->args, m->nargs)) ||
      (rv = ckt_fields_append_payload(out, m->payload, m->payload_len)) ||
      (rv = ckt_fields_append_str(out, m->err, 4))) {
    /* Only NOMEM gets here (the size was checked): drop the partial
     * message. */
    out->len = start;
    if (out->data) {
      out->data[start] = 0;
    }
    return rv;
  }
  return CKT_OK;
}

/* ---- decoding ---- */

static int decode_body(ckt_cursor *c, size_t max_payload, ckt_message *m) {
  uint8_t version;
  uint64_t created, deadline, part;
  size_t len;
  int rv;

  if (ckt_cursor_u8(c, &version) != 0) {
    return CKT_ERR_FORMAT;
  }
  if (version != CKT_MESSAGE_VERSION) {
    return CKT_ERR_FORMAT;
  }
  ckt_cursor_u8(c, &m->type);
  ckt_cursor_u8(c, &m->flags);
  ckt_cursor_be64(c, &m->call_id);
  ckt_cursor_be64(c, &m->serial);
  ckt_cursor_be64(c, &m->seqno);
  ckt_cursor_be64(c, &created);
  ckt_cursor_be64(c, &deadline);
  ckt_cursor_be64(c, &part);
  /* The cursor's failure is sticky: one check covers the fixed part. */
  if (c->bad || !type_known(m->type) || (m->flags & ~FLAGS_KNOWN)) {
    return CKT_ERR_FORMAT;
  }
  m->created_ns = ckt_fields_to_i64(created);
  m->deadline_ns = ckt_fields_to_i64(deadline);
  m->stream_part = ckt_fields_to_i64(part);

  if ((rv = ckt_fields_read_str(c, 2, CKT_MESSAGE_ADDR_MAX, &m->from, &len)) ||
      (rv = ckt_fields_read_str(c, 2, CKT_MESSAGE_ADDR_MAX, &m->to, &len)) ||
      (rv = ckt_fields_read_str(c, 2, CKT_MESSAGE_SERVICE_MAX, &m->service,
                                &len)) ||
      (rv = ckt_fields_read_str(c, 2, CKT_MESSAGE_SUBJECT_MAX, &m->subject,
                                &len)) ||
      (rv = ckt_fields_read_args(c, &m->args, &m->nargs)) ||
      (rv = ckt_fields_read_payload(c, max_payload, &m->payload,
                                    &m->payload_len)) ||
      (rv = ckt_fields_read_str(c, 4, CKT_MESSAGE_ERR_MAX, &m->err, &len))) {
    return rv;
  }
  return c->left ? CKT_ERR_FORMAT : CKT_OK;
}

static size_t max_payload_of(const ckt_message_limits *lim) {
  return lim && lim->max_payload ? lim->max_payload
                                 : CKT_MESSAGE_DEFAULT_MAX_PAYLOAD;
}

int ckt_message_decode(const uint8_t *buf, size_t len,
                       const ckt_message_limits *lim, ckt_message **out) {
  ckt_cursor c;
  ckt_message *m;
  int rv;

  if (!out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  *out = NULL;
  if (!buf && len) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  m = ckt_message_new();
  if (!m) {
    return CKT_ERR_NOMEM;
  }
  ckt_cursor_init(&c, buf, len);
  rv = decode_body(&c, max_payload_of(lim), m);
  if (rv != CKT_OK) {
    ckt_message_free(m);
    return rv;
  }
  *out = m;
  return CKT_OK;
}

size_t ckt_message_encoded_max(const ckt_message_limits *lim) {
  size_t payload = max_payload_of(lim);
  size_t rest = CKT_MESSAGE_FIXED_LEN + 2 * (2 + CKT_MESSAGE_ADDR_MAX) + 2 +
                CKT_MESSAGE_SERVICE_MAX + 2 + CKT_MESSAGE_SUBJECT_MAX +
                CKT_FIELDS_ARGS_ENCODED_MAX + 4 + 4 + CKT_MESSAGE_ERR_MAX;
  if ((uint64_t)payload > UINT32_MAX) {
    payload = UINT32_MAX; /* the wire cannot say more */
  }
  return payload > SIZE_MAX - rest ? SIZE_MAX : rest + payload;
}
