/*
 * jsync_send.c — the sending role: lists the sources on the control
 * circuit and answers the receiver's requests on each data circuit (whole
 * files, group lists, chunk lists, byte ranges), compressing what
 * compresses.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include "jsync_index.h"
#include "jsync_int.h"

/* Bytes per DATA message. */
#define BLOCK (256u * 1024)
/* Entries are sent in batches of about this many bytes. */
#define LIST_BATCH (256u * 1024)
/* Indexes a data thread keeps between a file's requests. */
#define CACHE_MAX 64
/* After a block that did not compress, this many go raw untried. */
#define BACKOFF 8

void jsync_id_bytes(jsync_chunk_id id, uint8_t out[16]) {
  XXH128_hash_t h;
  XXH128_canonical_t c;
  h.high64 = id.hi;
  h.low64 = id.lo;
  XXH128_canonicalFromHash(&c, h);
  memcpy(out, c.digest, 16);
}

/* A file being answered in pieces: its index and open descriptor. */
typedef struct cached {
  uint64_t id;
  int fd;
  jsync_index ix;
} cached;

typedef struct sender_chan {
  jsync_sess *s;
  ckt_tcircuit *tc;
  pthread_t th;
  ZSTD_CCtx *zc;
  uint8_t *buf, *out; /* BLOCK, and 32 header bytes + compressed bound */
  size_t out_cap;
  unsigned backoff;
  cached cache[CACHE_MAX];
  size_t ncache;
  jsync_wbuf bundle; /* small answers not yet sent */
} sender_chan;

static int all_zero(const uint8_t *p, size_t n) {
  static const uint8_t z[4096];
  while (n >= sizeof(z)) {
    if (memcmp(p, z, sizeof(z)) != 0) {
      return 0;
    }
    p += sizeof(z);
    n -= sizeof(z);
  }
  return memcmp(p, z, n) == 0;
}

/* A DATA header's bytes; returns its length (at most 32). */
static size_t data_head(uint8_t *out, uint64_t id, uint64_t off, uint8_t codec,
                        size_t n) {
  jsync_wbuf w;
  jsync_data_head d;
  size_t len = 0;
  d.id = id;
  d.off = off;
  d.codec = codec;
  d.raw_len = (uint32_t)n;
  jsync_wbuf_init(&w);
  jsync_data_head_put(&w, &d);
  if (!w.err && w.len <= 32) {
    memcpy(out, w.p, w.len);
    len = w.len;
  }
  jsync_wbuf_free(&w);
  return len;
}

/* Sends op with a payload the fragment takes over (no copy): the bulk
 * path.  It waits as long as the receiver needs; a receiver that gives up
 * closes the circuit, which ends the wait. */
static int send_owned(jsync_sess *s, ckt_tcircuit *tc, int64_t op,
                      uint8_t *payload, size_t len) {
  ckt_fragment *f = ckt_fragment_new();
  int rv;
  if (!f) {
    free(payload);
    return sess_fail(s, FAIL_NOMEM, "out of memory");
  }
  f->type = CKT_FRAG_DATA;
  f->op = op;
  f->payload = payload;
  f->payload_len = len;
  rv = ckt_tcircuit_send_wait(tc, f, -1);
  return rv == CKT_OK ? 0 : sess_fail_circuit(s, tc, rv, NULL);
}

/* Small answers travel bundled: many per fragment, in order. */
static int chan_flush(sender_chan *c) {
  if (c->bundle.len == 0) {
    return 0;
  }
  return sess_send(c->s, c->tc, JSYNC_OP_BUNDLE, &c->bundle);
}

static int chan_emit(sender_chan *c, int64_t op, const void *p, size_t n) {
  if (n > JSYNC_BUNDLE_ITEM_MAX) {
    if (chan_flush(c) != 0) {
      return -1;
    }
    return sess_send_bytes(c->s, c->tc, op, p, n);
  }
  if (c->bundle.len + n + 16 > JSYNC_BUNDLE_MAX && chan_flush(c) != 0) {
    return -1;
  }
  jsync_w_varint(&c->bundle, (uint64_t)op);
  jsync_w_varint(&c->bundle, n);
  jsync_w_bytes(&c->bundle, p, n);
  if (c->bundle.err) {
    jsync_wbuf_free(&c->bundle);
    return sess_fail(c->s, FAIL_NOMEM, "out of memory");
  }
  return 0;
}

static int chan_emit_w(sender_chan *c, int64_t op, jsync_wbuf *w) {
  int rv = w->err ? sess_fail(c->s, FAIL_NOMEM, "out of memory")
                  : chan_emit(c, op, w->p, w->len);
  jsync_wbuf_free(w);
  return rv;
}

/* Reads up to `want` bytes of fd at off and sends them as one DATA
 * message: raw (read straight into the message), zstd-compressed when
 * that saves a sixteenth, or a zero run.  *got says how many were read
 * (0 at the end of a file that shrank); h and the live counters see
 * them. */
static int send_block(sender_chan *c, uint64_t id, int fd, uint64_t off,
                      size_t want, whole_hash *h, size_t *got) {
  jsync_sess *s = c->s;
  uint8_t head[32];
  size_t hl = data_head(head, id, off, JSYNC_CODEC_RAW, want), n, clen = 0;
  uint8_t *pay = hl ? malloc(hl + want) : NULL;
  ssize_t r;
  if (!pay) {
    return sess_fail(s, FAIL_NOMEM, "out of memory");
  }
  do {
    r = pread(fd, pay + hl, want, (off_t)off);
  } while (r < 0 && errno == EINTR);
  if (r <= 0) {
    free(pay);
    *got = 0;
    return r < 0 ? (errno ? errno : EIO) : 0;
  }
  n = (size_t)r;
  *got = n;
  if (h) {
    whole_update(h, pay + hl, n);
  }
  if (s->opts && s->opts->live) {
    live_add(&s->opts->live->bytes_done, n);
  }
  if (all_zero(pay + hl, n)) {
    free(pay);
    hl = data_head(head, id, off, JSYNC_CODEC_ZERO, n);
    return chan_emit(c, JSYNC_OP_DATA, head, hl);
  }
  if (!(s->flags & JSYNC_F_NO_COMPRESS) && c->zc && n >= 512) {
    if (c->backoff > 0) {
      c->backoff--;
    } else {
      size_t z = ZSTD_compressCCtx(c->zc, c->out + 32, c->out_cap - 32,
                                   pay + hl, n, s->zlevel);
      if (!ZSTD_isError(z) && z < n - n / 16) {
        clen = z;
      } else {
        c->backoff = BACKOFF;
      }
    }
  }
  if (clen > 0) {
    size_t zl = data_head(head, id, off, JSYNC_CODEC_ZSTD, n);
    free(pay);
    memcpy(c->out + 32 - zl, head, zl);
    return chan_emit(c, JSYNC_OP_DATA, c->out + 32 - zl, zl + clen);
  }
  if (n != want) {
    /* a short read: the header's length changes, maybe its size too */
    size_t hl2 = data_head(head, id, off, JSYNC_CODEC_RAW, n);
    if (hl2 != hl) {
      memmove(pay + hl2, pay + hl, n);
      hl = hl2;
    }
  }
  memcpy(pay, head, hl);
  if (hl + n <= JSYNC_BUNDLE_ITEM_MAX) {
    int rv = chan_emit(c, JSYNC_OP_DATA, pay, hl + n);
    free(pay);
    return rv;
  }
  if (chan_flush(c) != 0) {
    free(pay);
    return -1;
  }
  return send_owned(s, c->tc, JSYNC_OP_DATA, pay, hl + n);
}

static int send_zeros(sender_chan *c, uint64_t id, uint64_t off, uint64_t n) {
  while (n > 0) {
    uint32_t k = n > (1u << 30) ? (1u << 30) : (uint32_t)n;
    jsync_wbuf w;
    jsync_data_head d = {id, off, JSYNC_CODEC_ZERO, k};
    jsync_wbuf_init(&w);
    jsync_data_head_put(&w, &d);
    if (chan_emit_w(c, JSYNC_OP_DATA, &w) != 0) {
      return -1;
    }
    off += k;
    n -= k;
  }
  return 0;
}

static int send_file_end(sender_chan *c, uint64_t id, int err, uint64_t size,
                         const uint8_t *hash, const char *path) {
  jsync_file_end e;
  jsync_wbuf w;
  memset(&e, 0, sizeof(e));
  e.id = id;
  e.status = (uint32_t)err;
  e.size = size;
  if (hash) {
    memcpy(e.whole, hash, JSYNC_HASH_LEN);
  }
  if (err) {
    snprintf(e.text, sizeof(e.text), "%s: %s", path, strerror(err));
  }
  jsync_wbuf_init(&w);
  jsync_file_end_encode(&w, &e);
  return chan_emit_w(c, JSYNC_OP_FILE_END, &w);
}

/* A copy of entry id (the array moves while the list grows; the path
 * string it points to does not), or NULL when id names no file. */
static const sent_entry *entry_of(jsync_sess *s, uint64_t id,
                                  sent_entry *copy) {
  const sent_entry *e = NULL;
  pthread_mutex_lock(&s->mu);
  if (id < s->nents && s->ents[id].type == JSYNC_E_FILE) {
    *copy = s->ents[id];
    e = copy;
  }
  pthread_mutex_unlock(&s->mu);
  return e;
}

static int open_entry(jsync_sess *s, const sent_entry *e) {
  return jsync_open_beneath(s->src[e->src].fd, e->path,
                            O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0);
}

/* Sends [off, off+len) of fd as DATA, holes as zero runs; hashes what it
 * sent when h is set.  Stops early at a shorter file; *sent says how far
 * it got. */
static int send_range(sender_chan *c, uint64_t id, int fd, uint64_t off,
                      uint64_t len, whole_hash *h, uint64_t *sent) {
  uint64_t end = off + len;
  *sent = off;
  while (off < end) {
    off_t data = lseek(fd, (off_t)off, SEEK_DATA), hole;
    if (sess_failed(c->s)) {
      return -1;
    }
    if (data < 0) {
      /* ENXIO: a hole up to the end, or the file got shorter than we
       * thought: never send zeros for bytes that are not there */
      struct stat st;
      if (fstat(fd, &st) != 0) {
        return errno ? errno : EIO;
      }
      if ((uint64_t)st.st_size < end) {
        end = (uint64_t)st.st_size > off ? (uint64_t)st.st_size : off;
      }
      data = (off_t)end;
    } else if ((uint64_t)data > end) {
      data = (off_t)end;
    }
    if ((uint64_t)data > off) {
      if (send_zeros(c, id, off, (uint64_t)data - off) != 0) {
        return -1;
      }
      if (h) {
        whole_zeros(h, (uint64_t)data - off);
      }
      off = (uint64_t)data;
      *sent = off;
      if (off >= end) {
        break;
      }
    }
    hole = lseek(fd, (off_t)off, SEEK_HOLE);
    if (hole < 0 || (uint64_t)hole > end || (uint64_t)hole <= off) {
      hole = (off_t)end;
    }
    while (off < (uint64_t)hole) {
      size_t want = (uint64_t)hole - off > BLOCK
                        ? BLOCK
                        : (size_t)((uint64_t)hole - off),
             got = 0;
      int rv = send_block(c, id, fd, off, want, h, &got);
      if (rv != 0) {
        return rv; /* -1: the session failed; > 0: errno */
      }
      if (got == 0) {
        return 0; /* the file shrank: send what there is */
      }
      off += got;
      *sent = off;
    }
  }
  return 0;
}

static int serve_whole(sender_chan *c, uint64_t id) {
  jsync_sess *s = c->s;
  sent_entry ecopy;
  const sent_entry *e = entry_of(s, id, &ecopy);
  struct stat st;
  whole_hash *h;
  uint8_t hash[JSYNC_HASH_LEN];
  uint64_t sent = 0;
  int fd, rv;
  if (!e) {
    return sess_fail(s, FAIL_PROTOCOL, "request for an unknown file");
  }
  fd = open_entry(s, e);
  if (fd < 0) {
    return send_file_end(c, id, -fd, 0, NULL, e->path);
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return send_file_end(c, id, EINVAL, 0, NULL, e->path);
  }
  if (s->opts && s->opts->live) {
    live_add(&s->opts->live->bytes_total, (uint64_t)st.st_size);
  }
  h = whole_new(!!(s->flags & JSYNC_F_BLAKE2B));
  if (!h) {
    close(fd);
    return sess_fail(s, FAIL_NOMEM, "out of memory");
  }
  rv = send_range(c, id, fd, 0, (uint64_t)st.st_size, h, &sent);
  close(fd);
  whole_final(h, hash);
  whole_free(h);
  if (rv < 0) {
    return -1;
  }
  return send_file_end(c, id, rv, sent, hash, e->path);
}

static cached *cache_find(sender_chan *c, uint64_t id) {
  size_t i;
  for (i = 0; i < c->ncache; ++i) {
    if (c->cache[i].id == id) {
      return &c->cache[i];
    }
  }
  return NULL;
}

static void cache_drop(sender_chan *c, cached *x) {
  close(x->fd);
  jsync_index_free(&x->ix);
  *x = c->cache[--c->ncache];
}

/* The BLAKE2b of a whole file (the index has its XXH3 only). */
static int file_blake2b(int fd, uint8_t *buf, uint8_t out[JSYNC_HASH_LEN]) {
  whole_hash *h = whole_new(1);
  uint64_t off = 0;
  if (!h) {
    return ENOMEM;
  }
  for (;;) {
    ssize_t n = pread(fd, buf, BLOCK, (off_t)off);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      whole_final(h, out);
      whole_free(h);
      return n < 0 ? errno : 0;
    }
    whole_update(h, buf, (size_t)n);
    off += (uint64_t)n;
  }
}

static int serve_groups(sender_chan *c, uint64_t id) {
  jsync_sess *s = c->s;
  sent_entry ecopy;
  const sent_entry *e = entry_of(s, id, &ecopy);
  jsync_groups_head gh;
  jsync_wbuf w;
  struct stat st;
  cached *x;
  size_t g;
  int fd;
  if (!e) {
    return sess_fail(s, FAIL_PROTOCOL, "request for an unknown file");
  }
  if ((x = cache_find(c, id))) {
    cache_drop(c, x);
  }
  if (c->ncache == CACHE_MAX) {
    cache_drop(c, &c->cache[0]);
  }
  fd = open_entry(s, e);
  if (fd < 0) {
    return send_file_end(c, id, -fd, 0, NULL, e->path);
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return send_file_end(c, id, EINVAL, 0, NULL, e->path);
  }
  if (s->opts && s->opts->live) {
    live_add(&s->opts->live->bytes_total, (uint64_t)st.st_size);
  }
  if (chan_flush(c) != 0) { /* indexing takes a while: send what waits */
    close(fd);
    return -1;
  }
  x = &c->cache[c->ncache];
  x->id = id;
  x->fd = fd;
  if (jsync_index_fd(fd, (uint64_t)st.st_size, &x->ix) != 0) {
    int err = errno ? errno : EIO;
    close(fd);
    return send_file_end(c, id, err, 0, NULL, e->path);
  }
  c->ncache++;
  memset(&gh, 0, sizeof(gh));
  gh.id = id;
  gh.size = x->ix.size;
  gh.avg = x->ix.params.avg;
  gh.ngroups = x->ix.ngroups;
  if (s->flags & JSYNC_F_BLAKE2B) {
    int err = file_blake2b(fd, c->buf, gh.whole);
    if (err) {
      cache_drop(c, x);
      return send_file_end(c, id, err, 0, NULL, e->path);
    }
  } else {
    jsync_id_bytes(x->ix.whole, gh.whole);
  }
  jsync_wbuf_init(&w);
  jsync_groups_head_put(&w, &gh);
  for (g = 0; g < x->ix.ngroups; ++g) {
    jsync_wgroup wg;
    size_t a = x->ix.group_start[g], b = x->ix.group_start[g + 1];
    const jsync_chunk_ref *last = &x->ix.chunks[b - 1];
    jsync_id_bytes(x->ix.groups[g], wg.hash);
    wg.nchunks = (uint32_t)(b - a);
    wg.bytes = last->off + last->len - x->ix.chunks[a].off;
    jsync_group_put(&w, &wg);
  }
  return chan_emit_w(c, JSYNC_OP_GROUPS, &w);
}

static int serve_chunks(sender_chan *c, const jsync_req *q, jsync_rbuf *r) {
  jsync_sess *s = c->s;
  cached *x = cache_find(c, q->id);
  uint64_t i, g;
  for (i = 0; i < q->nitems; ++i) {
    jsync_chunks_head ch;
    jsync_wbuf w;
    size_t k;
    if (jsync_req_group(r, &g) != 0) {
      return sess_fail(s, FAIL_PROTOCOL, "malformed request");
    }
    if (!x || g >= x->ix.ngroups) {
      return sess_fail(s, FAIL_PROTOCOL, "request for an unknown group");
    }
    ch.id = q->id;
    ch.group = g;
    ch.nchunks = (uint32_t)(x->ix.group_start[g + 1] - x->ix.group_start[g]);
    jsync_wbuf_init(&w);
    jsync_chunks_head_put(&w, &ch);
    for (k = x->ix.group_start[g]; k < x->ix.group_start[g + 1]; ++k) {
      jsync_wchunk wc;
      wc.len = x->ix.chunks[k].len;
      jsync_id_bytes(x->ix.chunks[k].id, wc.hash);
      jsync_chunk_put(&w, &wc);
    }
    if (chan_emit_w(c, JSYNC_OP_CHUNKS, &w) != 0) {
      return -1;
    }
  }
  return 0;
}

static int serve_data(sender_chan *c, const jsync_req *q, jsync_rbuf *r) {
  jsync_sess *s = c->s;
  cached *x = cache_find(c, q->id);
  sent_entry ecopy;
  const sent_entry *e = entry_of(s, q->id, &ecopy);
  uint64_t i, off, len, sent;
  int err = 0;
  if (!x || !e) {
    return sess_fail(s, FAIL_PROTOCOL, "data request for an unknown file");
  }
  for (i = 0; i < q->nitems; ++i) {
    if (jsync_req_range(r, &off, &len) != 0 || off + len > x->ix.size) {
      return sess_fail(s, FAIL_PROTOCOL, "malformed data request");
    }
    if (err == 0) {
      err = send_range(c, q->id, x->fd, off, len, NULL, &sent);
      if (err < 0) {
        return -1;
      }
      if (err == 0 && sent < off + len) {
        err = ENODATA; /* the file shrank since it was indexed */
      }
    }
  }
  cache_drop(c, x);
  return send_file_end(c, q->id, err, 0, NULL, e->path);
}

static void *sender_chan_main(void *arg) {
  sender_chan *c = arg;
  jsync_sess *s = c->s;
  ckt_fragment *f;
  while ((f = sess_recv(s, c->tc)) != NULL) {
    jsync_rbuf r;
    jsync_req q;
    int rv = 0, more;
    if (f->op != JSYNC_OP_REQ) {
      sess_fail(s, FAIL_PROTOCOL, "unexpected message %lld on a data circuit",
                (long long)f->op);
      ckt_fragment_free(f);
      break;
    }
    jsync_rbuf_init(&r, f->payload, f->payload_len);
    while (rv == 0 && (more = jsync_req_next(&r, &q)) == 1) {
      switch (q.kind) {
      case JSYNC_REQ_WHOLE:
        rv = serve_whole(c, q.id);
        break;
      case JSYNC_REQ_GROUPS:
        rv = serve_groups(c, q.id);
        break;
      case JSYNC_REQ_CHUNKS:
        rv = serve_chunks(c, &q, &r);
        break;
      case JSYNC_REQ_DATA:
        rv = serve_data(c, &q, &r);
        break;
      case JSYNC_REQ_END:
        rv = 1; /* the receiver is done with this circuit */
        break;
      case JSYNC_REQ_CANCEL: {
        cached *x = cache_find(c, q.id);
        if (x) {
          cache_drop(c, x);
        }
        break;
      }
      }
    }
    if (rv == 0 && more < 0) {
      sess_fail(s, FAIL_PROTOCOL, "malformed request");
      rv = -1;
    }
    if (rv >= 0 && chan_flush(c) != 0) {
      rv = -1;
    }
    if (rv > 0) {
      ckt_fragment_free(f);
      break;
    }
    ckt_fragment_free(f);
    if (rv != 0) {
      break;
    }
  }
  while (c->ncache > 0) {
    cache_drop(c, &c->cache[0]);
  }
  jsync_wbuf_free(&c->bundle);
  return NULL;
}

/* ---- the list ------------------------------------------------------------ */

static void drain_ctrl(jsync_sess *s);

typedef struct lister {
  jsync_sess *s;
  uint32_t src;
  jsync_wbuf w;
  jsync_wentry *e;
  jsync_entry_ctx ctx; /* each batch starts afresh */
  uint64_t warnings;   /* entries left out: the list is incomplete */
} lister;

/* Sends the batch, zstd-compressed when that is smaller (paths and
 * metadata of neighbours compress several times over). */
static int flush_list(lister *l) {
  jsync_sess *s = l->s;
  size_t bound, z;
  uint8_t *out;
  jsync_wbuf h;
  uint64_t next_id = l->ctx.next_id;
  int rv;
  /* paths start afresh in each batch; ids keep growing across them */
  jsync_entry_ctx_init(&l->ctx);
  l->ctx.next_id = next_id;
  if (l->w.len == 0) {
    return 0;
  }
  if (l->w.err) {
    jsync_wbuf_free(&l->w);
    return sess_fail(s, FAIL_NOMEM, "out of memory");
  }
  bound = ZSTD_compressBound(l->w.len) + 16;
  out = malloc(bound);
  jsync_wbuf_init(&h);
  jsync_w_varint(&h, l->w.len);
  if (!out || h.err) {
    free(out);
    jsync_wbuf_free(&h);
    return sess_send(s, s->ctrl, JSYNC_OP_ENTRIES, &l->w);
  }
  memcpy(out, h.p, h.len);
  z = ZSTD_compress(out + h.len, bound - h.len, l->w.p, l->w.len, 3);
  if (ZSTD_isError(z) || h.len + z >= l->w.len) {
    free(out);
    jsync_wbuf_free(&h);
    return sess_send(s, s->ctrl, JSYNC_OP_ENTRIES, &l->w);
  }
  rv = sess_send_bytes(s, s->ctrl, JSYNC_OP_ENTRIES_Z, out, h.len + z);
  free(out);
  jsync_wbuf_free(&h);
  jsync_wbuf_free(&l->w);
  jsync_wbuf_init(&l->w);
  return rv;
}

static int on_entry(const char *path, const jsync_meta *m, const char *link,
                    void *user) {
  lister *l = user;
  jsync_sess *s = l->s;
  jsync_wentry *e = l->e;
  char *copy;
  if (sess_failed(s)) {
    return -1;
  }
  if (strlen(path) > JSYNC_WIRE_PATH_MAX ||
      (link && strlen(link) > JSYNC_WIRE_PATH_MAX)) {
    sess_log(s, 1, "%s: path or link too long, skipped", path);
    l->warnings++;
    return 0;
  }
  copy = strdup(path);
  pthread_mutex_lock(&s->mu);
  if (copy && s->nents == s->ents_cap) {
    size_t cap = s->ents_cap ? s->ents_cap * 2 : 1024;
    sent_entry *n = realloc(s->ents, cap * sizeof(*n));
    if (n) {
      s->ents = n;
      s->ents_cap = cap;
    } else {
      free(copy);
      copy = NULL;
    }
  }
  if (!copy) {
    pthread_mutex_unlock(&s->mu);
    return sess_fail(s, FAIL_NOMEM, "out of memory");
  }
  e->id = s->nents;
  s->ents[s->nents].path = copy;
  s->ents[s->nents].src = l->src;
  s->ents[s->nents].type = (uint8_t)m->type;
  s->nents++;
  s->st.files++;
  pthread_mutex_unlock(&s->mu);
  e->type = (uint8_t)m->type;
  e->mode = m->mode;
  e->uid = m->uid;
  e->gid = m->gid;
  e->size = m->type == JSYNC_FILE ? m->size : 0;
  e->mtime_sec = m->mtime_sec;
  e->mtime_nsec = m->mtime_nsec;
  snprintf(e->path, sizeof(e->path), "%s", path);
  snprintf(e->link, sizeof(e->link), "%s", link ? link : "");
  jsync_entry_put(&l->w, &l->ctx, e);
  if (s->opts && s->opts->live) {
    live_add(&s->opts->live->files_total, 1);
  }
  if (l->w.len >= LIST_BATCH) {
    if (flush_list(l) != 0) {
      return -1;
    }
    drain_ctrl(s);
  }
  return 0;
}

static void on_warn(const char *path, const char *why, void *user) {
  lister *l = user;
  l->warnings++;
  sess_log(l->s, 1, "%s: %s", path[0] ? path : ".", why);
}

/* Lists every source; 0 or -1. */
static int send_list(jsync_sess *s) {
  lister l;
  jsync_list_begin b;
  jsync_wbuf w;
  size_t i;
  int rv;
  memset(&l, 0, sizeof(l));
  jsync_entry_ctx_init(&l.ctx);
  l.s = s;
  l.e = malloc(sizeof(*l.e));
  if (!l.e) {
    return sess_fail(s, FAIL_NOMEM, "out of memory");
  }
  b.nsources = (uint32_t)s->nsrc;
  b.flags = s->nsrc == 1 && s->src[0].rel[0] == '\0' ? JSYNC_LIST_CONTENTS : 0;
  jsync_wbuf_init(&w);
  jsync_list_begin_encode(&w, &b);
  rv = sess_send(s, s->ctrl, JSYNC_OP_LIST_BEGIN, &w);
  jsync_wbuf_init(&l.w);
  for (i = 0; rv == 0 && i < s->nsrc; ++i) {
    l.src = (uint32_t)i;
    rv = jsync_walk(s->src[i].fd, s->src[i].rel, s->ex, on_entry, on_warn, &l);
    if (rv != 0 && !sess_failed(s)) {
      sess_fail(s, FAIL_LOCAL, "%s: %s", s->src[i].rel[0] ? s->src[i].rel : ".",
                rv < 0 ? strerror(-rv) : "cannot list");
    }
  }
  if (rv == 0) {
    rv = flush_list(&l);
  }
  jsync_wbuf_free(&l.w);
  free(l.e);
  if (rv == 0) {
    jsync_wbuf_init(&w);
    jsync_list_end_encode(&w, s->nents, l.warnings ? JSYNC_LIST_INCOMPLETE : 0);
    rv = sess_send(s, s->ctrl, JSYNC_OP_LIST_END, &w);
  }
  if (rv == 0 && s->opts && s->opts->live) {
    s->opts->live->list_done = 1;
  }
  return rv ? -1 : 0;
}

/* A message on the control circuit: RESULTS (shown by the client) or the
 * final DONE.  1 after DONE, 0 after RESULTS, -1 on failure; frees f. */
static int on_ctrl(jsync_sess *s, ckt_fragment *f) {
  if (f->op == JSYNC_OP_RESULTS) {
    if (s->is_client) {
      sess_take_results(s, f);
    }
    ckt_fragment_free(f);
    return sess_failed(s) ? -1 : 0;
  }
  if (f->op == JSYNC_OP_DONE) {
    jsync_done d;
    int ok = jsync_done_decode(f->payload, f->payload_len, &d) == 0;
    ckt_fragment_free(f);
    if (!ok) {
      return sess_fail(s, FAIL_PROTOCOL, "malformed DONE");
    }
    pthread_mutex_lock(&s->mu);
    s->st.transferred = d.transferred;
    s->st.literal = d.literal;
    s->st.matched = d.matched;
    s->st.deleted = d.deleted;
    s->st.failed = d.status;
    s->finished = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 1;
  }
  ckt_fragment_free(f);
  return sess_fail(s, FAIL_PROTOCOL, "unexpected message on the control");
}

/* Takes what the receiver sent on the control circuit so far, without
 * waiting.  While the list is still going out, the receiver's results
 * must not pile up: a receiver blocked on a full control circuit stops
 * reading the list, and the two would wait on each other. */
static void drain_ctrl(jsync_sess *s) {
  for (;;) {
    ckt_fragment *f = NULL;
    int rv = ckt_tcircuit_recv(s->ctrl, 0, &f);
    if (rv == CKT_ERR_TIMEOUT) {
      return;
    }
    if (rv != CKT_OK || f->type != CKT_FRAG_DATA) {
      sess_fail_circuit(s, s->ctrl, rv, rv == CKT_OK ? f : NULL);
      ckt_fragment_free(f);
      return;
    }
    if (on_ctrl(s, f) != 0) {
      return;
    }
  }
}

/* The control circuit after the list: results, then DONE. */
static int wait_done(jsync_sess *s) {
  ckt_fragment *f;
  int done;
  pthread_mutex_lock(&s->mu);
  done = s->finished;
  pthread_mutex_unlock(&s->mu);
  if (done) {
    return 0; /* DONE came while the list went out */
  }
  while ((f = sess_recv(s, s->ctrl)) != NULL) {
    int rv = on_ctrl(s, f);
    if (rv != 0) {
      return rv > 0 ? 0 : -1;
    }
  }
  return -1;
}

int sender_run(jsync_sess *s) {
  sender_chan *ch = calloc(s->ndata, sizeof(*ch));
  unsigned k, started = 0;
  int rv = 0;
  if (!ch) {
    return sess_fail(s, FAIL_NOMEM, "out of memory");
  }
  s->ctrl_stalled = drain_ctrl;
  for (k = 0; k < s->ndata; ++k) {
    sender_chan *c = &ch[k];
    c->s = s;
    c->tc = s->data[k];
    c->zc = ZSTD_createCCtx();
    c->out_cap = ZSTD_compressBound(BLOCK) + 64;
    c->buf = malloc(BLOCK);
    c->out = malloc(c->out_cap);
    if (!c->zc || !c->buf || !c->out) {
      rv = sess_fail(s, FAIL_NOMEM, "out of memory");
      break;
    }
    if (pthread_create(&c->th, NULL, sender_chan_main, c) != 0) {
      rv = sess_fail(s, FAIL_NOMEM, "cannot start a thread");
      break;
    }
    started++;
  }
  if (rv == 0) {
    rv = send_list(s);
  }
  if (rv == 0) {
    rv = wait_done(s);
  }
  pthread_mutex_lock(&s->mu);
  s->finished = 1;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  for (k = 0; k < started; ++k) {
    pthread_join(ch[k].th, NULL);
  }
  for (k = 0; k < s->ndata; ++k) {
    ZSTD_freeCCtx(ch[k].zc);
    free(ch[k].buf);
    free(ch[k].out);
  }
  free(ch);
  return rv;
}
