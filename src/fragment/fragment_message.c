/* fragment_message.c — the Message type and its wire codec. */
#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"
#include "ckt/message.h"
#include "core_buf.h"
#include "core_cursor.h"
#include "core_util.h"
#include "fragment_codec.h"

/* ---- ownership ---- */

/* Strings and payloads may carry credentials, so they are wiped like every
 * other buffer in ckt before their memory goes back to the allocator. */
static void free_str(char *s) {
  if (s) {
    ckt_secure_zero(s, strlen(s));
    free(s);
  }
}

/* Copies n bytes of s into a new NUL-terminated string. */
static char *dup_bytes(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d) {
    if (n) {
      memcpy(d, s, n);
    }
    d[n] = 0;
  }
  return d;
}

static size_t str_len(const char *s) {
  return s ? strlen(s) : 0;
}

ckt_message *ckt_message_new(void) {
  return calloc(1, sizeof(ckt_message));
}

void ckt_message_free(ckt_message *m) {
  size_t i;
  if (!m) {
    return;
  }
  free_str(m->from);
  free_str(m->to);
  free_str(m->service);
  free_str(m->subject);
  free_str(m->err);
  if (m->args) {
    for (i = 0; i < m->nargs; ++i) {
      free_str(m->args[i].key);
      free_str(m->args[i].value);
    }
    free(m->args);
  }
  if (m->payload) {
    ckt_secure_zero(m->payload, m->payload_len);
    free(m->payload);
  }
  free(m);
}

/* ---- setters ---- */

static int set_str(ckt_message *m, char **field, const char *s, size_t max) {
  size_t n;
  char *d = NULL;
  if (!m) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (s) {
    /* strnlen: an oversized string is refused without scanning all of it. */
    n = strnlen(s, max + 1);
    if (n > max) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    d = dup_bytes(s, n);
    if (!d) {
      return CKT_ERR_NOMEM;
    }
  }
  free_str(*field);
  *field = d;
  return CKT_OK;
}

int ckt_message_set_service(ckt_message *m, const char *s) {
  return set_str(m, m ? &m->service : NULL, s, CKT_MESSAGE_SERVICE_MAX);
}

int ckt_message_set_from(ckt_message *m, const char *s) {
  return set_str(m, m ? &m->from : NULL, s, CKT_MESSAGE_ADDR_MAX);
}

int ckt_message_set_to(ckt_message *m, const char *s) {
  return set_str(m, m ? &m->to : NULL, s, CKT_MESSAGE_ADDR_MAX);
}

int ckt_message_set_subject(ckt_message *m, const char *s) {
  return set_str(m, m ? &m->subject : NULL, s, CKT_MESSAGE_SUBJECT_MAX);
}

int ckt_message_set_err(ckt_message *m, const char *s) {
  return set_str(m, m ? &m->err : NULL, s, CKT_MESSAGE_ERR_MAX);
}

int ckt_message_set_payload(ckt_message *m, const void *data, size_t len) {
  uint8_t *d = NULL;
  if (!m || (!data && len) || (uint64_t)len > UINT32_MAX) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (len) {
    d = malloc(len);
    if (!d) {
      return CKT_ERR_NOMEM;
    }
    memcpy(d, data, len);
  }
  if (m->payload) {
    ckt_secure_zero(m->payload, m->payload_len);
    free(m->payload);
  }
  m->payload = d;
  m->payload_len = len;
  return CKT_OK;
}

static ckt_kv *find_arg(const ckt_message *m, const char *key) {
  size_t i;
  for (i = 0; i < m->nargs; ++i) {
    if (m->args[i].key && strcmp(m->args[i].key, key) == 0) {
      return &m->args[i];
    }
  }
  return NULL;
}

int ckt_message_set_arg(ckt_message *m, const char *key, const char *value) {
  size_t klen, vlen, total = 0, i;
  ckt_kv *kv, *grown;
  char *k, *v = NULL;

  if (!m || !key) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  klen = strnlen(key, CKT_MESSAGE_ARG_KEY_MAX + 1);
  vlen = value ? strnlen(value, CKT_MESSAGE_ARG_VALUE_MAX + 1) : 0;
  if (klen == 0 || klen > CKT_MESSAGE_ARG_KEY_MAX ||
      vlen > CKT_MESSAGE_ARG_VALUE_MAX) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  for (i = 0; i < m->nargs; ++i) {
    total += str_len(m->args[i].key) + str_len(m->args[i].value);
  }
  kv = find_arg(m, key);
  if (kv) {
    total -= str_len(kv->value);
  } else {
    if (m->nargs >= CKT_MESSAGE_NARGS_MAX) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    total += klen;
  }
  if (total + vlen > CKT_MESSAGE_ARGS_TOTAL_MAX) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (value) {
    v = dup_bytes(value, vlen);
    if (!v) {
      return CKT_ERR_NOMEM;
    }
  }
  if (kv) {
    free_str(kv->value);
    kv->value = v;
    return CKT_OK;
  }
  k = dup_bytes(key, klen);
  grown = k ? realloc(m->args, (m->nargs + 1) * sizeof(*m->args)) : NULL;
  if (!grown) {
    free_str(k);
    free_str(v);
    return CKT_ERR_NOMEM;
  }
  m->args = grown;
  m->args[m->nargs].key = k;
  m->args[m->nargs].value = v;
  m->nargs++;
  return CKT_OK;
}

const char *ckt_message_get_arg(const ckt_message *m, const char *key) {
  const ckt_kv *kv;
  if (!m || !key) {
    return NULL;
  }
  kv = find_arg(m, key);
  if (!kv) {
    return NULL;
  }
  return kv->value ? kv->value : "";
}

/* Copies *src into *dst; NULL stays NULL.  0 or CKT_ERR_NOMEM. */
static int copy_str(char **dst, const char *src) {
  *dst = NULL;
  if (src) {
    *dst = dup_bytes(src, strlen(src));
    if (!*dst) {
      return CKT_ERR_NOMEM;
    }
  }
  return CKT_OK;
}

int ckt_message_copy(const ckt_message *src, ckt_message **out) {
  ckt_message *m;
  size_t i;

  if (!out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  *out = NULL;
  if (!src || (!src->payload && src->payload_len) ||
      (!src->args && src->nargs)) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  for (i = 0; i < src->nargs; ++i) {
    if (!src->args[i].key) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
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
  if (copy_str(&m->from, src->from) || copy_str(&m->to, src->to) ||
      copy_str(&m->service, src->service) ||
      copy_str(&m->subject, src->subject) || copy_str(&m->err, src->err)) {
    goto nomem;
  }
  if (src->nargs) {
    /* calloc: the free on a later failure sees NULL for entries not yet
     * copied. */
    m->args = calloc(src->nargs, sizeof(*m->args));
    if (!m->args) {
      goto nomem;
    }
    m->nargs = src->nargs;
    for (i = 0; i < src->nargs; ++i) {
      if (copy_str(&m->args[i].key, src->args[i].key) ||
          copy_str(&m->args[i].value, src->args[i].value)) {
        goto nomem;
      }
    }
  }
  if (src->payload_len) {
    m->payload = malloc(src->payload_len);
    if (!m->payload) {
      goto nomem;
    }
    memcpy(m->payload, src->payload, src->payload_len);
    m->payload_len = src->payload_len;
  }
  *out = m;
  return CKT_OK;
nomem:
  ckt_message_free(m);
  return CKT_ERR_NOMEM;
}

static int str_eq(const char *a, const char *b) {
  return strcmp(a ? a : "", b ? b : "") == 0;
}

int ckt_message_equal(const ckt_message *a, const ckt_message *b) {
  size_t i;
  if (a->type != b->type || a->flags != b->flags || a->call_id != b->call_id ||
      a->serial != b->serial || a->seqno != b->seqno ||
      a->created_ns != b->created_ns || a->deadline_ns != b->deadline_ns ||
      a->stream_part != b->stream_part || !str_eq(a->from, b->from) ||
      !str_eq(a->to, b->to) || !str_eq(a->service, b->service) ||
      !str_eq(a->subject, b->subject) || !str_eq(a->err, b->err) ||
      a->nargs != b->nargs || a->payload_len != b->payload_len) {
    return 0;
  }
  for (i = 0; i < a->nargs; ++i) {
    if (!str_eq(a->args[i].key, b->args[i].key) ||
        !str_eq(a->args[i].value, b->args[i].value)) {
      return 0;
    }
  }
  return a->payload_len == 0 ||
         memcmp(a->payload, b->payload, a->payload_len) == 0;
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
  size_t n = CKT_MESSAGE_FIXED_LEN, i, j, len, total = 0;

  if (!type_known(m->type) || (m->flags & ~FLAGS_KNOWN) ||
      m->nargs > CKT_MESSAGE_NARGS_MAX || (!m->args && m->nargs) ||
      (!m->payload && m->payload_len) ||
      (uint64_t)m->payload_len > UINT32_MAX) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  for (i = 0; i < sizeof(strs) / sizeof(strs[0]); ++i) {
    len = strs[i].s ? strnlen(strs[i].s, strs[i].max + 1) : 0;
    if (len > strs[i].max) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    n += strs[i].len_bytes + len;
  }
  n += 2; /* nargs */
  for (i = 0; i < m->nargs; ++i) {
    const ckt_kv *kv = &m->args[i];
    size_t klen, vlen;
    if (!kv->key) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    klen = strnlen(kv->key, CKT_MESSAGE_ARG_KEY_MAX + 1);
    vlen = kv->value ? strnlen(kv->value, CKT_MESSAGE_ARG_VALUE_MAX + 1) : 0;
    if (klen == 0 || klen > CKT_MESSAGE_ARG_KEY_MAX ||
        vlen > CKT_MESSAGE_ARG_VALUE_MAX) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    /* Each term is bounded, so this cannot overflow before the check. */
    total += klen + vlen;
    if (total > CKT_MESSAGE_ARGS_TOTAL_MAX) {
      return CKT_ERR_INVALID_ARGUMENT;
    }
    for (j = 0; j < i; ++j) {
      if (strcmp(m->args[j].key, kv->key) == 0) {
        return CKT_ERR_INVALID_ARGUMENT;
      }
    }
    n += 2 + 4;
  }
  n += total + 4 + m->payload_len;
  *size = n;
  return CKT_OK;
}

static void put_be(uint8_t *p, uint64_t v, size_t n) {
  size_t i;
  for (i = 0; i < n; ++i) {
    p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
  }
}

static int append_be(ckt_buf *out, uint64_t v, size_t n) {
  uint8_t b[8];
  put_be(b, v, n);
  return ckt_buf_append(out, b, n);
}

/* Appends a length (len_bytes wide) and the bytes of s. */
static int append_str(ckt_buf *out, const char *s, size_t len_bytes) {
  size_t len = str_len(s);
  int rv = append_be(out, len, len_bytes);
  return rv ? rv : ckt_buf_append(out, s, len);
}

int ckt_message_encode(const ckt_message *m, ckt_buf *out) {
  size_t size, start, i;
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
  if ((rv = append_be(out, CKT_MESSAGE_VERSION, 1)) ||
      (rv = append_be(out, m->type, 1)) || (rv = append_be(out, m->flags, 1)) ||
      (rv = append_be(out, m->call_id, 8)) ||
      (rv = append_be(out, m->serial, 8)) ||
      (rv = append_be(out, m->seqno, 8)) ||
      (rv = append_be(out, (uint64_t)m->created_ns, 8)) ||
      (rv = append_be(out, (uint64_t)m->deadline_ns, 8)) ||
      (rv = append_be(out, (uint64_t)m->stream_part, 8)) ||
      (rv = append_str(out, m->from, 2)) || (rv = append_str(out, m->to, 2)) ||
      (rv = append_str(out, m->service, 2)) ||
      (rv = append_str(out, m->subject, 2)) ||
      (rv = append_be(out, m->nargs, 2))) {
    goto fail;
  }
  for (i = 0; i < m->nargs; ++i) {
    if ((rv = append_str(out, m->args[i].key, 2)) ||
        (rv = append_str(out, m->args[i].value, 4))) {
      goto fail;
    }
  }
  if ((rv = append_be(out, m->payload_len, 4)) ||
      (rv = ckt_buf_append(out, m->payload, m->payload_len)) ||
      (rv = append_str(out, m->err, 4))) {
    goto fail;
  }
  return CKT_OK;
fail:
  /* Only NOMEM gets here (the size was checked): drop the partial message. */
  out->len = start;
  if (out->data) {
    out->data[start] = 0;
  }
  return rv;
}

/* ---- decoding ---- */

/* Two's complement without relying on implementation-defined conversion. */
static int64_t to_i64(uint64_t v) {
  return v <= INT64_MAX ? (int64_t)v : -(int64_t)(UINT64_MAX - v) - 1;
}

static int read_len(ckt_cursor *c, size_t len_bytes, size_t *len) {
  uint16_t v16;
  uint32_t v32;
  if (len_bytes == 2) {
    if (ckt_cursor_be16(c, &v16) != 0) {
      return CKT_ERR_FORMAT;
    }
    *len = v16;
  } else {
    if (ckt_cursor_be32(c, &v32) != 0) {
      return CKT_ERR_FORMAT;
    }
    *len = v32;
  }
  return CKT_OK;
}

/* Reads a length-prefixed string into a new NUL-terminated copy.  The
 * length is checked against max, then against the bytes present, and only
 * then is memory allocated.  *len receives the length. */
static int read_str(ckt_cursor *c, size_t len_bytes, size_t max, char **out,
                    size_t *len) {
  const uint8_t *p;
  int rv = read_len(c, len_bytes, len);
  if (rv != CKT_OK) {
    return rv;
  }
  if (*len > max) {
    return CKT_ERR_TOO_LARGE;
  }
  if (ckt_cursor_take(c, &p, *len) != 0) {
    return CKT_ERR_FORMAT;
  }
  /* A NUL would silently cut the C string short of what was sent. */
  if (*len && memchr(p, 0, *len)) {
    return CKT_ERR_FORMAT;
  }
  *out = dup_bytes((const char *)p, *len);
  return *out ? CKT_OK : CKT_ERR_NOMEM;
}

static int decode_args(ckt_cursor *c, ckt_message *m) {
  uint16_t nargs;
  size_t i, j, klen, vlen, total = 0;
  int rv;

  if (ckt_cursor_be16(c, &nargs) != 0) {
    return CKT_ERR_FORMAT;
  }
  if (nargs > CKT_MESSAGE_NARGS_MAX) {
    return CKT_ERR_TOO_LARGE;
  }
  if (nargs == 0) {
    return CKT_OK;
  }
  /* At most CKT_MESSAGE_NARGS_MAX entries: bounded before any byte of them
   * is seen.  calloc so that a failure part way frees cleanly. */
  m->args = calloc(nargs, sizeof(*m->args));
  if (!m->args) {
    return CKT_ERR_NOMEM;
  }
  m->nargs = nargs;
  for (i = 0; i < nargs; ++i) {
    rv = read_str(c, 2, CKT_MESSAGE_ARG_KEY_MAX, &m->args[i].key, &klen);
    if (rv != CKT_OK) {
      return rv;
    }
    if (klen == 0) {
      return CKT_ERR_FORMAT;
    }
    if (klen > CKT_MESSAGE_ARGS_TOTAL_MAX - total) {
      return CKT_ERR_TOO_LARGE;
    }
    total += klen;
    for (j = 0; j < i; ++j) {
      /* Duplicates would make "which value wins" differ between peers. */
      if (strcmp(m->args[j].key, m->args[i].key) == 0) {
        return CKT_ERR_FORMAT;
      }
    }
    /* The value's own cap is the smaller of its field limit and what the
     * total still allows, so an over-budget value is refused before its
     * bytes are copied. */
    rv = read_str(c, 4,
                  CKT_MESSAGE_ARGS_TOTAL_MAX - total < CKT_MESSAGE_ARG_VALUE_MAX
                      ? CKT_MESSAGE_ARGS_TOTAL_MAX - total
                      : CKT_MESSAGE_ARG_VALUE_MAX,
                  &m->args[i].value, &vlen);
    if (rv != CKT_OK) {
      return rv;
    }
    total += vlen;
  }
  return CKT_OK;
}

static int decode_body(ckt_cursor *c, size_t max_payload, ckt_message *m) {
  uint8_t version;
  uint64_t created, deadline, part;
  const uint8_t *p;
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
  m->created_ns = to_i64(created);
  m->deadline_ns = to_i64(deadline);
  m->stream_part = to_i64(part);

  if ((rv = read_str(c, 2, CKT_MESSAGE_ADDR_MAX, &m->from, &len)) ||
      (rv = read_str(c, 2, CKT_MESSAGE_ADDR_MAX, &m->to, &len)) ||
      (rv = read_str(c, 2, CKT_MESSAGE_SERVICE_MAX, &m->service, &len)) ||
      (rv = read_str(c, 2, CKT_MESSAGE_SUBJECT_MAX, &m->subject, &len)) ||
      (rv = decode_args(c, m))) {
    return rv;
  }

  if ((rv = read_len(c, 4, &len)) != CKT_OK) {
    return rv;
  }
  if (len > max_payload) {
    return CKT_ERR_TOO_LARGE;
  }
  if (ckt_cursor_take(c, &p, len) != 0) {
    return CKT_ERR_FORMAT;
  }
  if (len) {
    m->payload = malloc(len);
    if (!m->payload) {
      return CKT_ERR_NOMEM;
    }
    memcpy(m->payload, p, len);
    m->payload_len = len;
  }

  if ((rv = read_str(c, 4, CKT_MESSAGE_ERR_MAX, &m->err, &len)) != CKT_OK) {
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
                CKT_MESSAGE_SERVICE_MAX + 2 + CKT_MESSAGE_SUBJECT_MAX + 2 +
                CKT_MESSAGE_NARGS_MAX * (2 + 4) + CKT_MESSAGE_ARGS_TOTAL_MAX +
                4 + 4 + CKT_MESSAGE_ERR_MAX;
  if ((uint64_t)payload > UINT32_MAX) {
    payload = UINT32_MAX; /* the wire cannot say more */
  }
  return payload > SIZE_MAX - rest ? SIZE_MAX : rest + payload;
}

/* ---- frames ---- */

void ckt_frame_header_encode(uint8_t hdr[CKT_FRAME_HEADER_LEN], uint8_t type,
                             uint32_t len) {
  hdr[0] = type;
  put_be(hdr + 1, len, 4);
}

int ckt_frame_header_decode(const uint8_t hdr[CKT_FRAME_HEADER_LEN],
                            uint8_t *type, uint32_t *len) {
  ckt_cursor c;
  uint8_t t;
  uint32_t n;
  if (!hdr || !type || !len) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  ckt_cursor_init(&c, hdr, CKT_FRAME_HEADER_LEN);
  ckt_cursor_u8(&c, &t);
  ckt_cursor_be32(&c, &n);
  if (t != CKT_FRAME_MESSAGE) {
    return CKT_ERR_FORMAT;
  }
  *type = t;
  *len = n;
  return CKT_OK;
}
