/* jsync_wire.c — encoding and bounded decoding of jsync's messages. */
#include "jsync_wire.h"

#include <stdlib.h>
#include <string.h>
#include <zstd.h>

/* ---- writing ------------------------------------------------------------- */

void jsync_wbuf_init(jsync_wbuf *w) {
  memset(w, 0, sizeof(*w));
}

void jsync_wbuf_free(jsync_wbuf *w) {
  free(w->p);
  memset(w, 0, sizeof(*w));
}

uint8_t *jsync_wbuf_take(jsync_wbuf *w, size_t *len) {
  uint8_t *p = w->p;
  *len = w->len;
  memset(w, 0, sizeof(*w));
  return p;
}

static uint8_t *w_room(jsync_wbuf *w, size_t n) {
  if (w->err) {
    return NULL;
  }
  if (w->cap - w->len < n) {
    size_t cap = w->cap ? w->cap : 256;
    uint8_t *p;
    while (cap - w->len < n) {
      cap *= 2;
    }
    p = realloc(w->p, cap);
    if (!p) {
      w->err = 1;
      return NULL;
    }
    w->p = p;
    w->cap = cap;
  }
  return w->p + w->len;
}

void jsync_w_bytes(jsync_wbuf *w, const void *p, size_t n) {
  uint8_t *d = w_room(w, n);
  if (d && n) {
    memcpy(d, p, n);
    w->len += n;
  }
}

void jsync_w_u8(jsync_wbuf *w, uint8_t v) {
  jsync_w_bytes(w, &v, 1);
}

void jsync_w_varint(jsync_wbuf *w, uint64_t v) {
  uint8_t b[10];
  size_t n = 0;
  do {
    b[n] = (uint8_t)(v & 0x7f);
    v >>= 7;
    if (v) {
      b[n] |= 0x80;
    }
    n++;
  } while (v);
  jsync_w_bytes(w, b, n);
}

void jsync_w_svarint(jsync_wbuf *w, int64_t v) {
  /* zigzag */
  jsync_w_varint(w, ((uint64_t)v << 1) ^ (uint64_t)(v >> 63));
}

void jsync_w_str(jsync_wbuf *w, const char *s) {
  size_t n = s ? strlen(s) : 0;
  jsync_w_varint(w, n);
  jsync_w_bytes(w, s, n);
}

/* ---- reading ------------------------------------------------------------- */

void jsync_rbuf_init(jsync_rbuf *r, const void *p, size_t len) {
  r->p = p;
  r->len = p ? len : 0;
  r->off = 0;
  r->err = 0;
}

static int r_need(jsync_rbuf *r, size_t n) {
  if (r->err || r->len - r->off < n) {
    r->err = 1;
    return 0;
  }
  return 1;
}

void jsync_r_bytes(jsync_rbuf *r, void *out, size_t n) {
  if (!r_need(r, n)) {
    memset(out, 0, n);
    return;
  }
  memcpy(out, r->p + r->off, n);
  r->off += n;
}

uint8_t jsync_r_u8(jsync_rbuf *r) {
  uint8_t v;
  jsync_r_bytes(r, &v, 1);
  return v;
}

uint64_t jsync_r_varint(jsync_rbuf *r) {
  uint64_t v = 0;
  unsigned shift = 0;
  for (;;) {
    uint8_t b;
    if (!r_need(r, 1)) {
      return 0;
    }
    b = r->p[r->off++];
    if (shift == 63 && (b & 0x7e)) {
      r->err = 1; /* more than 64 bits */
      return 0;
    }
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      if (b == 0 && shift > 0) {
        r->err = 1; /* overlong: every value has one encoding */
        return 0;
      }
      return v;
    }
    shift += 7;
    if (shift > 63) {
      r->err = 1;
      return 0;
    }
  }
}

uint64_t jsync_r_varint_max(jsync_rbuf *r, uint64_t max) {
  uint64_t v = jsync_r_varint(r);
  if (v > max) {
    r->err = 1;
    return 0;
  }
  return r->err ? 0 : v;
}

int64_t jsync_r_svarint(jsync_rbuf *r) {
  uint64_t v = jsync_r_varint(r);
  return (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
}

void jsync_r_str(jsync_rbuf *r, char *out, size_t out_sz, size_t max) {
  uint64_t n = jsync_r_varint_max(r, max);
  out[0] = '\0';
  if (r->err || n >= out_sz || !r_need(r, (size_t)n)) {
    r->err = 1;
    return;
  }
  if (memchr(r->p + r->off, '\0', (size_t)n)) {
    r->err = 1;
    return;
  }
  memcpy(out, r->p + r->off, (size_t)n);
  out[n] = '\0';
  r->off += (size_t)n;
}

uint64_t jsync_r_count(jsync_rbuf *r, size_t min_item, uint64_t max) {
  uint64_t n = jsync_r_varint_max(r, max);
  if (!r->err && min_item && n > (r->len - r->off) / min_item) {
    r->err = 1;
    return 0;
  }
  return r->err ? 0 : n;
}

int jsync_r_done(const jsync_rbuf *r) {
  return !r->err && r->off == r->len;
}

/* An allocated copy of a string read from r. */
static char *r_strdup(jsync_rbuf *r, size_t max) {
  uint64_t n = jsync_r_varint_max(r, max);
  char *s;
  if (r->err || !r_need(r, (size_t)n) || memchr(r->p + r->off, '\0', n)) {
    r->err = 1;
    return NULL;
  }
  s = malloc((size_t)n + 1);
  if (!s) {
    r->err = 1;
    return NULL;
  }
  memcpy(s, r->p + r->off, (size_t)n);
  s[n] = '\0';
  r->off += (size_t)n;
  return s;
}

/* ---- HELLO / JOIN -------------------------------------------------------- */

void jsync_hello_encode(jsync_wbuf *w, const jsync_hello *h) {
  size_t i;
  jsync_w_varint(w, h->version);
  jsync_w_u8(w, h->mode);
  jsync_w_varint(w, h->flags);
  jsync_w_varint(w, h->ncircuits);
  jsync_w_bytes(w, h->session, sizeof(h->session));
  jsync_w_varint(w, h->npaths);
  for (i = 0; i < h->npaths; ++i) {
    jsync_w_str(w, h->paths[i]);
  }
  jsync_w_varint(w, h->nexcludes);
  for (i = 0; i < h->nexcludes; ++i) {
    jsync_w_str(w, h->excludes[i]);
  }
}

static char **r_strlist(jsync_rbuf *r, size_t *n, uint64_t max) {
  uint64_t count = jsync_r_count(r, 1, max), i;
  char **v;
  *n = 0;
  if (r->err) {
    return NULL;
  }
  v = calloc(count ? count : 1, sizeof(*v));
  if (!v) {
    r->err = 1;
    return NULL;
  }
  for (i = 0; i < count && !r->err; ++i) {
    v[i] = r_strdup(r, JSYNC_WIRE_PATH_MAX);
    *n = i + 1;
  }
  return v;
}

void jsync_hello_free(jsync_hello *h) {
  size_t i;
  for (i = 0; i < h->npaths; ++i) {
    free(h->paths[i]);
  }
  for (i = 0; i < h->nexcludes; ++i) {
    free(h->excludes[i]);
  }
  free(h->paths);
  free(h->excludes);
  memset(h, 0, sizeof(*h));
}

int jsync_hello_decode(const void *p, size_t len, jsync_hello *h) {
  jsync_rbuf r;
  memset(h, 0, sizeof(*h));
  jsync_rbuf_init(&r, p, len);
  h->version = (uint32_t)jsync_r_varint_max(&r, UINT32_MAX);
  h->mode = jsync_r_u8(&r);
  h->flags = (uint32_t)jsync_r_varint_max(&r, JSYNC_F_ALL);
  h->ncircuits = (uint32_t)jsync_r_varint_max(&r, JSYNC_WIRE_CIRCUITS_MAX);
  jsync_r_bytes(&r, h->session, sizeof(h->session));
  h->paths = r_strlist(&r, &h->npaths, JSYNC_WIRE_PATHS_MAX);
  h->excludes = r_strlist(&r, &h->nexcludes, JSYNC_WIRE_EXCLUDES_MAX);
  if (!jsync_r_done(&r) || (h->mode != JSYNC_PUSH && h->mode != JSYNC_PULL) ||
      h->ncircuits < 1) {
    jsync_hello_free(h);
    return -1;
  }
  return 0;
}

void jsync_join_encode(jsync_wbuf *w, const jsync_join *j) {
  jsync_w_bytes(w, j->session, sizeof(j->session));
  jsync_w_varint(w, j->index);
}

int jsync_join_decode(const void *p, size_t len, jsync_join *j) {
  jsync_rbuf r;
  jsync_rbuf_init(&r, p, len);
  jsync_r_bytes(&r, j->session, sizeof(j->session));
  j->index = (uint32_t)jsync_r_varint_max(&r, JSYNC_WIRE_CIRCUITS_MAX - 1);
  return jsync_r_done(&r) ? 0 : -1;
}

/* ---- the file list ------------------------------------------------------- */

void jsync_list_begin_encode(jsync_wbuf *w, const jsync_list_begin *b) {
  jsync_w_varint(w, b->nsources);
  jsync_w_varint(w, b->flags);
}

int jsync_list_begin_decode(const void *p, size_t len, jsync_list_begin *b) {
  jsync_rbuf r;
  jsync_rbuf_init(&r, p, len);
  b->nsources = (uint32_t)jsync_r_varint_max(&r, JSYNC_WIRE_PATHS_MAX);
  b->flags = (uint32_t)jsync_r_varint_max(&r, JSYNC_LIST_CONTENTS);
  return jsync_r_done(&r) ? 0 : -1;
}

void jsync_entry_ctx_init(jsync_entry_ctx *c) {
  c->next_id = 0;
  c->prev_len = 0;
  c->prev[0] = '\0';
}

void jsync_entry_put(jsync_wbuf *w, jsync_entry_ctx *c, const jsync_wentry *e) {
  size_t len = strlen(e->path), shared = 0;
  while (shared < len && shared < c->prev_len &&
         e->path[shared] == c->prev[shared]) {
    shared++;
  }
  jsync_w_varint(w, e->id - c->next_id);
  jsync_w_u8(w, e->type);
  jsync_w_varint(w, e->mode);
  jsync_w_varint(w, e->uid);
  jsync_w_varint(w, e->gid);
  jsync_w_varint(w, e->size);
  jsync_w_svarint(w, e->mtime_sec);
  jsync_w_varint(w, e->mtime_nsec);
  jsync_w_varint(w, shared);
  jsync_w_str(w, e->path + shared);
  if (e->type == JSYNC_E_SYMLINK) {
    jsync_w_str(w, e->link);
  }
  c->next_id = e->id + 1;
  memcpy(c->prev, e->path, len + 1);
  c->prev_len = len;
}

int jsync_entry_next(jsync_rbuf *r, jsync_entry_ctx *c, jsync_wentry *e) {
  uint64_t gap, shared;
  size_t rest;
  if (r->err) {
    return -1;
  }
  if (r->off == r->len) {
    return 0;
  }
  gap = jsync_r_varint(r);
  e->id = c->next_id + gap;
  if (e->id < c->next_id || e->id == UINT64_MAX) {
    r->err = 1; /* ids only grow */
  }
  e->type = jsync_r_u8(r);
  e->mode = (uint32_t)jsync_r_varint_max(r, 07777);
  e->uid = (uint32_t)jsync_r_varint_max(r, UINT32_MAX);
  e->gid = (uint32_t)jsync_r_varint_max(r, UINT32_MAX);
  e->size = jsync_r_varint_max(r, INT64_MAX);
  e->mtime_sec = jsync_r_svarint(r);
  e->mtime_nsec = (uint32_t)jsync_r_varint_max(r, 999999999);
  shared = jsync_r_varint_max(r, c->prev_len);
  memcpy(e->path, c->prev, (size_t)shared);
  jsync_r_str(r, e->path + shared, sizeof(e->path) - (size_t)shared,
              JSYNC_WIRE_PATH_MAX - (size_t)shared);
  rest = strlen(e->path + shared);
  /* the longest shared length, or the encoding would not be canonical */
  if (!r->err && rest > 0 && shared < c->prev_len &&
      e->path[shared] == c->prev[shared]) {
    r->err = 1;
  }
  e->link[0] = '\0';
  if (e->type == JSYNC_E_SYMLINK) {
    jsync_r_str(r, e->link, sizeof(e->link), JSYNC_WIRE_PATH_MAX);
  } else if (e->type != JSYNC_E_FILE && e->type != JSYNC_E_DIR) {
    r->err = 1;
  }
  if (r->err) {
    return -1;
  }
  c->next_id = e->id + 1;
  c->prev_len = (size_t)shared + rest;
  memcpy(c->prev, e->path, c->prev_len + 1);
  return 1;
}

int jsync_entries_z_unpack(const void *p, size_t len, uint8_t *out,
                           size_t out_cap, size_t *out_len) {
  jsync_rbuf r;
  uint64_t raw;
  size_t got;
  jsync_rbuf_init(&r, p, len);
  raw = jsync_r_varint_max(&r, JSYNC_LIST_RAW_MAX);
  if (r.err || raw > out_cap || r.off == r.len) {
    return -1;
  }
  got = ZSTD_decompress(out, (size_t)raw, r.p + r.off, r.len - r.off);
  if (ZSTD_isError(got) || got != raw) {
    return -1;
  }
  *out_len = got;
  return 0;
}

void jsync_list_end_encode(jsync_wbuf *w, uint64_t count, uint32_t flags) {
  jsync_w_varint(w, count);
  jsync_w_varint(w, flags);
}

int jsync_list_end_decode(const void *p, size_t len, uint64_t *count,
                          uint32_t *flags) {
  jsync_rbuf r;
  jsync_rbuf_init(&r, p, len);
  *count = jsync_r_varint(&r);
  *flags = (uint32_t)jsync_r_varint_max(&r, JSYNC_LIST_INCOMPLETE);
  return jsync_r_done(&r) ? 0 : -1;
}

/* ---- requests ------------------------------------------------------------ */

void jsync_req_put(jsync_wbuf *w, const jsync_req *q) {
  jsync_w_u8(w, q->kind);
  jsync_w_varint(w, q->id);
  if (q->kind == JSYNC_REQ_CHUNKS || q->kind == JSYNC_REQ_DATA) {
    jsync_w_varint(w, q->nitems);
  }
}

void jsync_req_put_group(jsync_wbuf *w, uint64_t group) {
  jsync_w_varint(w, group);
}

void jsync_req_put_range(jsync_wbuf *w, uint64_t off, uint64_t len) {
  jsync_w_varint(w, off);
  jsync_w_varint(w, len);
}

int jsync_req_next(jsync_rbuf *r, jsync_req *q) {
  if (r->err) {
    return -1;
  }
  if (r->off == r->len) {
    return 0;
  }
  q->kind = jsync_r_u8(r);
  q->id = jsync_r_varint(r);
  q->nitems = 0;
  if (q->kind == JSYNC_REQ_CHUNKS) {
    q->nitems = jsync_r_count(r, 1, UINT32_MAX);
  } else if (q->kind == JSYNC_REQ_DATA) {
    q->nitems = jsync_r_count(r, 2, UINT32_MAX);
  } else if (q->kind < JSYNC_REQ_WHOLE || q->kind > JSYNC_REQ_END) {
    r->err = 1;
  }
  return r->err ? -1 : 1;
}

int jsync_req_group(jsync_rbuf *r, uint64_t *group) {
  *group = jsync_r_varint(r);
  return r->err ? -1 : 0;
}

int jsync_req_range(jsync_rbuf *r, uint64_t *off, uint64_t *len) {
  *off = jsync_r_varint_max(r, INT64_MAX);
  *len = jsync_r_varint_max(r, INT64_MAX);
  if (!r->err && *off + *len > (uint64_t)INT64_MAX) {
    r->err = 1;
  }
  return r->err ? -1 : 0;
}

/* ---- answers ------------------------------------------------------------- */

void jsync_groups_head_put(jsync_wbuf *w, const jsync_groups_head *g) {
  jsync_w_varint(w, g->id);
  jsync_w_varint(w, g->size);
  jsync_w_varint(w, g->avg);
  jsync_w_bytes(w, g->whole, sizeof(g->whole));
  jsync_w_varint(w, g->ngroups);
}

int jsync_groups_head_get(jsync_rbuf *r, jsync_groups_head *g) {
  g->id = jsync_r_varint(r);
  g->size = jsync_r_varint_max(r, INT64_MAX);
  g->avg = (uint32_t)jsync_r_varint_max(r, UINT32_MAX);
  jsync_r_bytes(r, g->whole, sizeof(g->whole));
  /* each group is at least 18 bytes */
  g->ngroups = jsync_r_count(r, 18, UINT32_MAX);
  /* the chunker's sizes: a power of two in range */
  if (!r->err &&
      (g->avg < 8192 || g->avg > 262144 || (g->avg & (g->avg - 1)))) {
    r->err = 1;
  }
  return r->err ? -1 : 0;
}

void jsync_group_put(jsync_wbuf *w, const jsync_wgroup *g) {
  jsync_w_bytes(w, g->hash, sizeof(g->hash));
  jsync_w_varint(w, g->nchunks);
  jsync_w_varint(w, g->bytes);
}

int jsync_group_get(jsync_rbuf *r, jsync_wgroup *g) {
  jsync_r_bytes(r, g->hash, sizeof(g->hash));
  g->nchunks = (uint32_t)jsync_r_varint_max(r, UINT32_MAX);
  g->bytes = jsync_r_varint_max(r, INT64_MAX);
  if (!r->err && (g->nchunks == 0 || g->bytes < g->nchunks)) {
    r->err = 1;
  }
  return r->err ? -1 : 0;
}

void jsync_chunks_head_put(jsync_wbuf *w, const jsync_chunks_head *c) {
  jsync_w_varint(w, c->id);
  jsync_w_varint(w, c->group);
  jsync_w_varint(w, c->nchunks);
}

int jsync_chunks_head_get(jsync_rbuf *r, jsync_chunks_head *c) {
  c->id = jsync_r_varint(r);
  c->group = jsync_r_varint(r);
  c->nchunks = (uint32_t)jsync_r_count(r, 17, UINT32_MAX);
  return r->err ? -1 : 0;
}

void jsync_chunk_put(jsync_wbuf *w, const jsync_wchunk *c) {
  jsync_w_varint(w, c->len);
  jsync_w_bytes(w, c->hash, sizeof(c->hash));
}

int jsync_chunk_get(jsync_rbuf *r, jsync_wchunk *c) {
  c->len = (uint32_t)jsync_r_varint_max(r, UINT32_MAX);
  jsync_r_bytes(r, c->hash, sizeof(c->hash));
  if (!r->err && c->len == 0) {
    r->err = 1;
  }
  return r->err ? -1 : 0;
}

void jsync_data_head_put(jsync_wbuf *w, const jsync_data_head *d) {
  jsync_w_varint(w, d->id);
  jsync_w_varint(w, d->off);
  jsync_w_u8(w, d->codec);
  jsync_w_varint(w, d->raw_len);
}

int jsync_data_head_get(jsync_rbuf *r, jsync_data_head *d) {
  d->id = jsync_r_varint(r);
  d->off = jsync_r_varint_max(r, INT64_MAX);
  d->codec = jsync_r_u8(r);
  d->raw_len = (uint32_t)jsync_r_varint_max(r, UINT32_MAX);
  if (r->err) {
    return -1;
  }
  switch (d->codec) {
  case JSYNC_CODEC_RAW:
    /* the bytes are the rest of the payload */
    if (d->raw_len != r->len - r->off || d->raw_len > JSYNC_DATA_MAX) {
      r->err = 1;
    }
    break;
  case JSYNC_CODEC_ZSTD:
    if (d->raw_len > JSYNC_DATA_MAX || r->off == r->len) {
      r->err = 1;
    }
    break;
  case JSYNC_CODEC_ZERO:
    if (r->off != r->len) {
      r->err = 1;
    }
    break;
  default:
    r->err = 1;
  }
  if (!r->err && d->off + d->raw_len > (uint64_t)INT64_MAX) {
    r->err = 1;
  }
  return r->err ? -1 : 0;
}

void jsync_file_end_encode(jsync_wbuf *w, const jsync_file_end *e) {
  jsync_w_varint(w, e->id);
  jsync_w_varint(w, e->status);
  jsync_w_varint(w, e->size);
  jsync_w_bytes(w, e->whole, sizeof(e->whole));
  jsync_w_str(w, e->text);
}

int jsync_file_end_decode(const void *p, size_t len, jsync_file_end *e) {
  jsync_rbuf r;
  jsync_rbuf_init(&r, p, len);
  e->id = jsync_r_varint(&r);
  e->status = (uint32_t)jsync_r_varint_max(&r, UINT32_MAX);
  e->size = jsync_r_varint_max(&r, INT64_MAX);
  jsync_r_bytes(&r, e->whole, sizeof(e->whole));
  jsync_r_str(&r, e->text, sizeof(e->text), JSYNC_WIRE_TEXT_MAX);
  return jsync_r_done(&r) ? 0 : -1;
}

/* ---- results ------------------------------------------------------------- */

void jsync_result_put(jsync_wbuf *w, const jsync_result *res) {
  jsync_w_u8(w, res->what);
  jsync_w_varint(w, res->id);
  jsync_w_varint(w, res->literal);
  jsync_w_varint(w, res->matched);
  jsync_w_str(w, res->path);
  jsync_w_str(w, res->text);
}

int jsync_result_next(jsync_rbuf *r, jsync_result *res) {
  if (r->err) {
    return -1;
  }
  if (r->off == r->len) {
    return 0;
  }
  res->what = jsync_r_u8(r);
  res->id = jsync_r_varint(r);
  res->literal = jsync_r_varint_max(r, INT64_MAX);
  res->matched = jsync_r_varint_max(r, INT64_MAX);
  jsync_r_str(r, res->path, sizeof(res->path), JSYNC_WIRE_PATH_MAX);
  jsync_r_str(r, res->text, sizeof(res->text), JSYNC_WIRE_TEXT_MAX);
  if (!r->err && (res->what < JSYNC_R_CREATED || res->what > JSYNC_R_FAILED)) {
    r->err = 1;
  }
  return r->err ? -1 : 1;
}

void jsync_done_encode(jsync_wbuf *w, const jsync_done *d) {
  jsync_w_varint(w, d->status);
  jsync_w_varint(w, d->files);
  jsync_w_varint(w, d->transferred);
  jsync_w_varint(w, d->literal);
  jsync_w_varint(w, d->matched);
  jsync_w_varint(w, d->deleted);
  jsync_w_str(w, d->text);
}

int jsync_done_decode(const void *p, size_t len, jsync_done *d) {
  jsync_rbuf r;
  jsync_rbuf_init(&r, p, len);
  d->status = (uint32_t)jsync_r_varint_max(&r, UINT32_MAX);
  d->files = jsync_r_varint(&r);
  d->transferred = jsync_r_varint(&r);
  d->literal = jsync_r_varint_max(&r, INT64_MAX);
  d->matched = jsync_r_varint_max(&r, INT64_MAX);
  d->deleted = jsync_r_varint(&r);
  jsync_r_str(&r, d->text, sizeof(d->text), JSYNC_WIRE_TEXT_MAX);
  return jsync_r_done(&r) ? 0 : -1;
}

/* ---- bundles ------------------------------------------------------------- */

int jsync_bundle_next(jsync_rbuf *r, int64_t *op, const uint8_t **p,
                      size_t *len) {
  uint64_t n;
  if (r->err) {
    return -1;
  }
  if (r->off == r->len) {
    return 0;
  }
  *op = (int64_t)jsync_r_varint_max(r, JSYNC_OP_MAX);
  n = jsync_r_varint_max(r, JSYNC_BUNDLE_ITEM_MAX);
  if (r->err || *op < JSYNC_OP_HELLO || *op == JSYNC_OP_BUNDLE ||
      !r_need(r, (size_t)n)) {
    r->err = 1;
    return -1;
  }
  *p = r->p + r->off;
  *len = (size_t)n;
  r->off += (size_t)n;
  return 1;
}

/* ---- checking any message ------------------------------------------------ */

static int check_batch(int64_t op, jsync_rbuf *r) {
  jsync_req q;
  int rv;
  switch (op) {
  case JSYNC_OP_ENTRIES: {
    jsync_wentry *e = malloc(sizeof(*e));
    jsync_entry_ctx *c = malloc(sizeof(*c));
    rv = -1;
    if (e && c) {
      jsync_entry_ctx_init(c);
      while ((rv = jsync_entry_next(r, c, e)) == 1) {
      }
    }
    free(e);
    free(c);
    return rv;
  }
  case JSYNC_OP_RESULTS: {
    jsync_result *res = malloc(sizeof(*res));
    if (!res) {
      return -1;
    }
    while ((rv = jsync_result_next(r, res)) == 1) {
    }
    free(res);
    return rv;
  }
  case JSYNC_OP_REQ:
    while ((rv = jsync_req_next(r, &q)) == 1) {
      uint64_t i, a, b;
      for (i = 0; i < q.nitems && !r->err; ++i) {
        if (q.kind == JSYNC_REQ_CHUNKS) {
          jsync_req_group(r, &a);
        } else {
          jsync_req_range(r, &a, &b);
        }
      }
    }
    return rv;
  }
  return -1;
}

int jsync_wire_check(int64_t op, const void *p, size_t len) {
  jsync_rbuf r;
  union {
    jsync_hello hello;
    jsync_join join;
    jsync_list_begin begin;
    jsync_groups_head groups;
    jsync_chunks_head chunks;
    jsync_data_head data;
    jsync_file_end end;
    jsync_done done;
    jsync_wgroup g;
    jsync_wchunk c;
    struct {
      uint64_t count;
      uint32_t flags;
    };
  } u;
  uint64_t i;
  jsync_rbuf_init(&r, p, len);
  switch (op) {
  case JSYNC_OP_HELLO:
    if (jsync_hello_decode(p, len, &u.hello) != 0) {
      return -1;
    }
    jsync_hello_free(&u.hello);
    return 0;
  case JSYNC_OP_WELCOME:
    return len == 0 ? 0 : -1;
  case JSYNC_OP_JOIN:
    return jsync_join_decode(p, len, &u.join);
  case JSYNC_OP_LIST_BEGIN:
    return jsync_list_begin_decode(p, len, &u.begin);
  case JSYNC_OP_LIST_END:
    return jsync_list_end_decode(p, len, &u.count, &u.flags);
  case JSYNC_OP_ENTRIES:
  case JSYNC_OP_RESULTS:
  case JSYNC_OP_REQ:
    return check_batch(op, &r) == 0 && jsync_r_done(&r) ? 0 : -1;
  case JSYNC_OP_ENTRIES_Z: {
    uint8_t *raw = malloc(JSYNC_LIST_RAW_MAX);
    size_t n;
    int rv = -1;
    if (raw &&
        jsync_entries_z_unpack(p, len, raw, JSYNC_LIST_RAW_MAX, &n) == 0) {
      rv = jsync_wire_check(JSYNC_OP_ENTRIES, raw, n);
    }
    free(raw);
    return rv;
  }
  case JSYNC_OP_GROUPS: {
    uint64_t n;
    if (jsync_groups_head_get(&r, &u.groups) != 0) {
      return -1;
    }
    n = u.groups.ngroups;
    for (i = 0; i < n && jsync_group_get(&r, &u.g) == 0; ++i) {
    }
    return jsync_r_done(&r) ? 0 : -1;
  }
  case JSYNC_OP_CHUNKS: {
    uint64_t n;
    if (jsync_chunks_head_get(&r, &u.chunks) != 0) {
      return -1;
    }
    n = u.chunks.nchunks;
    for (i = 0; i < n && jsync_chunk_get(&r, &u.c) == 0; ++i) {
    }
    return jsync_r_done(&r) ? 0 : -1;
  }
  case JSYNC_OP_DATA:
    return jsync_data_head_get(&r, &u.data);
  case JSYNC_OP_FILE_END:
    return jsync_file_end_decode(p, len, &u.end);
  case JSYNC_OP_DONE:
    return jsync_done_decode(p, len, &u.done);
  case JSYNC_OP_BUNDLE: {
    int64_t iop;
    const uint8_t *ip;
    size_t ilen;
    int rv;
    if (len > JSYNC_BUNDLE_MAX) {
      return -1;
    }
    while ((rv = jsync_bundle_next(&r, &iop, &ip, &ilen)) == 1) {
      if (jsync_wire_check(iop, ip, ilen) != 0) {
        return -1;
      }
    }
    return rv;
  }
  }
  return -1;
}
