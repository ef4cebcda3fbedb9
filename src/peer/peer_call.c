/*
 * peer_call.c — calls on QUIC streams (docs/wire.md, "Streams" and
 * "Streaming calls"):
 *
 *  - the caller's side: ckt_call, for unary and streaming calls, with
 *    cancellation and deadlines;
 *  - the server's side: synchronous handlers (answered at once), and
 *    ckt_srvcall for asynchronous and streaming handlers;
 *  - message frames, plain or compressed (reader makes right).
 *
 * A call is one bidirectional stream.  The caller writes the request (a
 * CALL, stream_part 0) and, for an upload or bistream, parts (CALL,
 * stream_part 1, 2, ..., LAST_PART on the last), then FIN.  The server
 * writes, for a download or bistream, parts (REPLY, stream_part 1, 2, ...)
 * and then the final REPLY or ERROR (stream_part 0) and FIN.  A caller
 * that gives up resets the stream: 0x10 (cancelled) or 0x13 (deadline).
 *
 * Sending: each side queues frames in a sendq, which hands them to the
 * stream and measures what waits (queued + unacknowledged) against
 * max_queued_per_circuit: over it, a loop-thread sender gets
 * CKT_ERR_AGAIN and later a writable callback; another thread waits on the
 * sendq's condition variable.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core_util.h"
#include "fragment_zstd.h"
#include "peer_int.h"

/* ---- sending queues ----------------------------------------------------- */

typedef struct sendq {
  ckt_buf pending; /* frames not yet handed to the stream */
  int fin;         /* FIN follows pending */
  int fin_written;
  uint64_t posted; /* atomic: bytes other threads handed over, not yet here */
  uint64_t queued; /* atomic: pending + unacknowledged, as the loop saw it */
  int want_writable;
  int waiters; /* atomic: threads waiting for room */
  pthread_mutex_t mu;
  pthread_cond_t cv;
} sendq;

static void sq_init(sendq *q) {
  memset(q, 0, sizeof(*q));
  ckt_buf_init(&q->pending, SIZE_MAX);
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->cv, NULL);
}

static void sq_destroy(sendq *q) {
  free(q->pending.data); /* no secrets: it was sent in the clear of TLS */
  pthread_cond_destroy(&q->cv);
  pthread_mutex_destroy(&q->mu);
}

static uint64_t sq_load(const uint64_t *p) {
  return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}

/* Room for another frame: what waits is under the limit. */
static int sq_room(sendq *q, uint64_t limit) {
  return sq_load(&q->posted) + sq_load(&q->queued) < limit;
}

/* Wakes threads waiting for room or for the end.  A waiter counts itself
 * (seq_cst) before it checks for room, so a waker that changed the state
 * and then sees no waiter can skip the lock. */
static void sq_wake(sendq *q) {
  if (!__atomic_load_n(&q->waiters, __ATOMIC_SEQ_CST)) {
    return;
  }
  pthread_mutex_lock(&q->mu);
  pthread_cond_broadcast(&q->cv);
  pthread_mutex_unlock(&q->mu);
}

/* Hands pending frames (and FIN) to the stream.  CKT_OK (also when the
 * connection's queue is full: they wait for an acknowledgement), or the
 * stream's error. */
static int sq_flush(sendq *q, ckt_stream *s) {
  int rv;
  if (!s || (!q->pending.len && (!q->fin || q->fin_written))) {
    return CKT_OK;
  }
  rv = node_stream_write(s, q->pending.data, q->pending.len, q->fin);
  if (rv == CKT_ERR_AGAIN) {
    return CKT_OK;
  }
  if (rv == CKT_OK) {
    q->pending.len = 0;
    q->fin_written = q->fin;
  }
  return rv;
}

/* Recomputes what waits; 1 when there is room. */
static int sq_update(sendq *q, ckt_stream *s, uint64_t limit) {
  uint64_t v = q->pending.len + (s ? ckt_stream_unacked(s) : 0);
  __atomic_store_n(&q->queued, v, __ATOMIC_SEQ_CST);
  if (sq_room(q, limit)) {
    sq_wake(q);
    return 1;
  }
  return 0;
}

/* Appends a frame (loop thread). */
static int sq_append(sendq *q, const uint8_t *frame, size_t len, int fin) {
  int rv = ckt_buf_append(&q->pending, frame, len);
  if (rv == CKT_OK && fin) {
    q->fin = 1;
  }
  return rv;
}

/* ---- frames and compression --------------------------------------------- */

static pthread_key_t zkey;
static pthread_once_t zkey_once = PTHREAD_ONCE_INIT;

static void zctx_destroy(void *z) {
  ckt_zctx_free(z);
}

static void zkey_make(void) {
  pthread_key_create(&zkey, zctx_destroy);
}

/* This thread's compression context, made on first use. */
static ckt_zctx *thread_zctx(void) {
  ckt_zctx *z;
  pthread_once(&zkey_once, zkey_make);
  z = pthread_getspecific(zkey);
  if (!z && (z = ckt_zctx_new()) != NULL) {
    pthread_setspecific(zkey, z);
  }
  return z;
}

int node_codec(ckt_node *n, const pconn *pc, const ckt_message *m, int answer) {
  int c = m->codec;
  if (c == CKT_CODEC_AUTO) {
    c = answer ? (pc ? __atomic_load_n(&pc->peer_codec, __ATOMIC_RELAXED) : 0)
               : n->cfg.codec;
  }
  return c >= CKT_CODEC_NONE && c <= CKT_CODEC_MAX ? c : CKT_CODEC_NONE;
}

int node_frame_encode(ckt_node *n, const ckt_message *m, int codec,
                      uint8_t **out, size_t *len) {
  const int z = codec > CKT_CODEC_NONE;
  const size_t head = CKT_FRAME_HEADER_LEN + (z ? CKT_ZFRAME_PREFIX_LEN : 0);
  ckt_zctx *zc = NULL;
  ckt_buf b;
  int rv;

  if (m->payload_len > n->lim.max_payload) {
    return CKT_ERR_TOO_LARGE;
  }
  if (z && !(zc = thread_zctx())) {
    return CKT_ERR_NOMEM;
  }
  /* The message is encoded once, behind room for the frame's head; a
   * compressed frame then replaces it in place. */
  ckt_buf_init(&b, ckt_message_encoded_max(&n->lim) + head);
  rv = ckt_buf_append(&b, "\0\0\0\0\0\0\0\0\0\0", head);
  if (rv == CKT_OK) {
    rv = ckt_message_encode(m, &b);
  }
  if (rv == CKT_OK && z) {
    rv = ckt_zframe_seal(zc, codec, (m->flags & CKT_MSG_FLAG_NO_COMPRESS) != 0,
                         &b, 0);
  } else if (rv == CKT_OK) {
    ckt_frame_header_encode(b.data, CKT_FRAME_MESSAGE,
                            (uint32_t)(b.len - CKT_FRAME_HEADER_LEN));
  }
  if (rv != CKT_OK) {
    ckt_buf_free(&b);
    return rv;
  }
  *out = ckt_buf_release(&b, len);
  return *out ? CKT_OK : CKT_ERR_NOMEM;
}

int node_message_decode(ckt_node *n, uint8_t type, ckt_buf *body,
                        ckt_message **out) {
  ckt_buf raw;
  int codec = CKT_CODEC_NONE;
  int rv;
  *out = NULL;
  if (type == CKT_FRAME_MESSAGE) {
    rv = ckt_message_decode(body->data, body->len, &n->lim, out);
    ckt_buf_free(body);
  } else if (type == CKT_FRAME_ZMESSAGE) {
    if (!n->zctx && !(n->zctx = ckt_zctx_new())) {
      ckt_buf_free(body);
      return CKT_ERR_NOMEM;
    }
    rv = ckt_zframe_decode(n->zctx, body->data, body->len,
                           ckt_message_encoded_max(&n->lim), &raw, &codec);
    ckt_buf_free(body);
    if (rv == CKT_OK) {
      rv = ckt_message_decode(raw.data, raw.len, &n->lim, out);
      free(raw.data);
    }
  } else {
    ckt_buf_free(body);
    rv = CKT_ERR_FORMAT;
  }
  if (rv == CKT_OK) {
    (*out)->codec = (uint8_t)codec;
  }
  return rv;
}

void node_stamp(ckt_node *n, ckt_message *m, const char *peer,
                uint64_t timeout_ns) {
  m->created_ns = n->rt->ops->wall(n->rt);
  m->deadline_ns = timeout_ns ? m->created_ns + (int64_t)timeout_ns : 0;
  m->seqno = __atomic_add_fetch(&n->next_seqno, 1, __ATOMIC_RELAXED);
  ckt_message_set_from(m, n->address);
  ckt_message_set_to(m, peer);
}

int node_run_on_loop(ckt_node *n, ckt_post_fn fn, void *job) {
  if (node_on_loop(n)) {
    fn(job);
    return CKT_OK;
  }
  return n->rt->ops->post(n->rt, fn, job);
}

/* ---- the caller's side -------------------------------------------------- */

struct ckt_call {
  rxstate rx; /* first: stream user pointers cast to rxstate */
  ckt_node *n;
  pconn *pc;
  ckt_stream *stream;
  ckt_timer *timer;
  sendq q; /* the request and parts not yet on the stream */
  ckt_call_done done;
  ckt_call_part_cb on_part;
  ckt_call_writable_cb on_writable;
  void *user;
  uint64_t id;
  uint64_t timeout_ns; /* 0: no deadline */
  int64_t deadline_ns;
  int kind;
  int refs;        /* atomic: the node's (until done ran), the handle's */
  int finished;    /* atomic: done ran or is running */
  int last_queued; /* atomic: the caller's last part is on its way */
  int got_final;   /* the final reply arrived */
  int64_t nparts;  /* parts sent (the sending thread's count) */
  ckt_addr addr;
  char service[CKT_MESSAGE_SERVICE_MAX + 1];
  struct ckt_call *next, *prev; /* on pc->calls */
};

static void call_unref(ckt_call *c) {
  if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0) {
    node_rx_clear(&c->rx);
    ckt_buf_free(&c->rx.held);
    sq_destroy(&c->q);
    free(c);
  }
}

static int call_streaming(const ckt_call *c) {
  return c->kind != CKT_CALL_UNARY;
}

static void call_unlink(ckt_call *c) {
  pconn *pc = c->pc;
  if (!pc) {
    return;
  }
  if (c->prev) {
    c->prev->next = c->next;
  } else {
    pc->calls = c->next;
  }
  if (c->next) {
    c->next->prev = c->prev;
  }
  c->pc = NULL;
  c->next = c->prev = NULL;
}

static void call_link(ckt_call *c, pconn *pc) {
  c->pc = pc;
  c->prev = NULL;
  c->next = pc->calls;
  if (pc->calls) {
    pc->calls->prev = c;
  }
  pc->calls = c;
}

/* Ends the call: done runs once, with reply or an ERROR saying why.
 * reset_code: how to end a stream still open (0: APP_CANCELED). */
static void call_finish_code(ckt_call *c, int err, ckt_message *reply,
                             const char *why, uint64_t reset_code) {
  ckt_node *n = c->n;
  if (__atomic_exchange_n(&c->finished, 1, __ATOMIC_SEQ_CST)) {
    ckt_message_free(reply);
    return;
  }
  call_unlink(c);
  if (c->timer) {
    n->rt->ops->timer_free(n->rt, c->timer);
    c->timer = NULL;
  }
  if (c->stream) {
    node_rx_credit(ckt_stream_conn(c->stream), &c->rx);
    if (c->rx.owed) {
      ckt_stream_credit(c->stream, c->rx.owed);
      c->rx.owed = 0;
    }
    ckt_stream_set_user(c->stream, NULL);
    if (!c->got_final || !c->q.fin_written) {
      ckt_stream_reset(c->stream, reset_code ? reset_code : APP_CANCELED);
    }
    c->stream = NULL;
  }
  sq_wake(&c->q);
  if (!reply) {
    reply = ckt_message_new();
    if (reply) {
      reply->type = CKT_MSG_ERROR;
      reply->call_id = c->id;
      ckt_message_set_service(reply, c->service);
      ckt_message_set_err(reply, why ? why : ckt_strerror(err));
    }
  }
  if (err == CKT_OK) {
    CKT_COUNTER_ADD(n->stats.calls_answered, 1);
  } else {
    CKT_COUNTER_ADD(n->stats.calls_failed, 1);
  }
  if (reply) {
    c->done(n, err, reply, c->user);
    ckt_message_free(reply);
  } else {
    ckt_message fallback;
    memset(&fallback, 0, sizeof(fallback));
    fallback.type = CKT_MSG_ERROR;
    fallback.err = (char *)(uintptr_t) "out of memory";
    c->done(n, err == CKT_OK ? CKT_ERR_NOMEM : err, &fallback, c->user);
  }
  call_unref(c);
}

static void call_finish(ckt_call *c, int err, ckt_message *reply,
                        const char *why) {
  call_finish_code(c, err, reply, why, 0);
}

static void call_timeout(void *arg) {
  ckt_call *c = arg;
  char why[256];
  snprintf(why, sizeof(why), "no reply from %s within the deadline",
           c->pc ? c->pc->name : "the peer");
  call_finish_code(c, CKT_ERR_TIMEOUT, NULL, why, APP_DEADLINE);
}

/* What the call has queued goes to its stream; room may follow. */
static void call_flush(ckt_call *c) {
  int rv = sq_flush(&c->q, c->stream);
  if (rv != CKT_OK) {
    call_finish(c, CKT_ERR_CONNECTION, NULL,
                "the connection would not take the call's data");
    return;
  }
  if (sq_update(&c->q, c->stream, c->n->circuit_queue_max) &&
      c->q.want_writable && c->on_writable) {
    c->q.want_writable = 0;
    c->on_writable(c->n, c, c->user);
  }
}

void calls_pump(pconn *pc) {
  ckt_call *c, *next;
  for (c = pc->calls; c; c = next) {
    next = c->next;
    if (c->stream) {
      continue;
    }
    if (ckt_conn_open_stream(pc->conn, 1, c, &c->stream) != CKT_OK) {
      c->stream = NULL;
      return; /* stream limit: streams_available brings us back */
    }
    if (call_streaming(c)) {
      /* Credit follows consumption, so that the caller can pause. */
      c->rx.manual = 1;
      ckt_stream_set_manual_credit(c->stream, 1);
    }
    if (node_stream_write(c->stream, c->q.pending.data, c->q.pending.len,
                          c->q.fin) != CKT_OK) {
      /* The connection will not take it: give the stream back; the call
       * waits for another chance or its deadline. */
      ckt_stream_set_user(c->stream, NULL);
      ckt_stream_reset(c->stream, APP_CANCELED);
      c->stream = NULL;
      c->rx.manual = 0;
      return;
    }
    c->q.pending.len = 0;
    c->q.fin_written = c->q.fin;
    call_flush(c);
  }
}

void calls_adopt(pconn *to, pconn *from) {
  ckt_call *c, *next;
  for (c = from->calls; c; c = next) {
    next = c->next;
    if (!c->stream) {
      call_unlink(c);
      call_link(c, to);
    }
  }
}

void calls_conn_lost(pconn *pc, int err, const char *why) {
  while (pc->calls) {
    call_finish(pc->calls, err, NULL, why);
  }
}

static void call_start(void *arg) {
  ckt_call *c = arg;
  ckt_node *n = c->n;
  pconn *pc;
  char why[256];
  int rv;

  if (__atomic_load_n(&c->finished, __ATOMIC_ACQUIRE)) {
    call_unref(c); /* cancelled before it got here: the job's reference */
    return;
  }
  rv = node_pconn_get(n, &c->addr, &pc);
  if (rv != CKT_OK) {
    char who[CKT_ADDR_STRLEN];
    ckt_addr_format(&c->addr, who, sizeof(who));
    snprintf(why, sizeof(why), "cannot call %s: %s", who, ckt_strerror(rv));
    call_finish(c, rv == CKT_ERR_CLOSED ? CKT_ERR_CLOSED : CKT_ERR_CONNECTION,
                NULL, why);
    call_unref(c);
    return;
  }
  if (c->timeout_ns) {
    c->timer = n->rt->ops->timer_new(n->rt, call_timeout, c);
    if (!c->timer) {
      call_finish(c, CKT_ERR_NOMEM, NULL, "out of memory");
      call_unref(c);
      return;
    }
    n->rt->ops->timer_arm(n->rt, c->timer,
                          n->rt->ops->now(n->rt) + c->timeout_ns);
  }
  call_link(c, pc);
  CKT_COUNTER_ADD(n->stats.calls_sent, 1);
  call_unref(c); /* the job's reference */
  node_pconn_pump(pc);
}

int ckt_node_call_start(ckt_node *n, const char *peer, ckt_message *req,
                        const ckt_call_opts *o, ckt_call **out) {
  ckt_call *c;
  uint8_t *frame;
  size_t frame_len;
  uint32_t ms;
  int rv;

  if (out) {
    *out = NULL;
  }
  if (!n || !peer || !req || !o || !o->done || o->kind < CKT_CALL_UNARY ||
      o->kind > CKT_CALL_BISTREAM ||
      ((o->kind == CKT_CALL_DOWNLOAD || o->kind == CKT_CALL_BISTREAM) &&
       !o->on_part)) {
    ckt_message_free(req);
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (node_stopping(n)) {
    ckt_message_free(req);
    return CKT_ERR_CLOSED;
  }
  c = calloc(1, sizeof(*c));
  if (!c) {
    ckt_message_free(req);
    return CKT_ERR_NOMEM;
  }
  if (node_parse_addr(n, peer, &c->addr) != CKT_OK) {
    free(c);
    ckt_message_free(req);
    return CKT_ERR_INVALID_ARGUMENT;
  }
  sq_init(&c->q);
  ms = o->timeout_ms;
  if (ms == 0 && o->kind == CKT_CALL_UNARY) {
    ms = n->cfg.call_timeout_ms;
  }
  c->timeout_ns = ms == 0 || ms == CKT_NO_TIMEOUT ? 0 : ms * 1000000ull;
  c->rx.kind = RX_CALL;
  c->n = n;
  c->kind = o->kind;
  c->done = o->done;
  c->on_part = o->on_part;
  c->on_writable = o->on_writable;
  c->user = o->user;
  c->id = __atomic_add_fetch(&n->next_call_id, 1, __ATOMIC_RELAXED);
  req->type = CKT_MSG_CALL;
  req->call_id = c->id;
  req->stream_part = 0;
  req->flags &= (uint8_t)~CKT_MSG_FLAG_LAST_PART;
  if (o->kind == CKT_CALL_DOWNLOAD) {
    req->flags |= CKT_MSG_FLAG_LAST_PART; /* nothing follows it */
  }
  rv = o->kind == CKT_CALL_UPLOAD
           ? ckt_message_set_arg(req, "ckt.stream", "upload")
       : o->kind == CKT_CALL_DOWNLOAD
           ? ckt_message_set_arg(req, "ckt.stream", "download")
       : o->kind == CKT_CALL_BISTREAM
           ? ckt_message_set_arg(req, "ckt.stream", "bistream")
           : CKT_OK;
  node_stamp(n, req, peer, c->timeout_ns);
  c->deadline_ns = req->deadline_ns;
  snprintf(c->service, sizeof(c->service), "%s",
           req->service ? req->service : "");
  if (rv == CKT_OK) {
    rv = node_frame_encode(n, req, node_codec(n, NULL, req, 0), &frame,
                           &frame_len);
  }
  ckt_message_free(req);
  if (rv == CKT_OK) {
    /* The request is the first thing queued: its buffer becomes the
     * queue's. */
    c->q.pending.data = frame;
    c->q.pending.len = c->q.pending.cap = frame_len;
    c->q.fin = o->kind == CKT_CALL_UNARY || o->kind == CKT_CALL_DOWNLOAD;
    __atomic_store_n(&c->q.queued, (uint64_t)frame_len, __ATOMIC_RELEASE);
  }
  if (rv != CKT_OK) {
    sq_destroy(&c->q);
    free(c);
    return rv;
  }
  /* References: the node's (dropped when done has run), the start job's,
   * and the caller's handle. */
  c->refs = out ? 3 : 2;
  if (out) {
    *out = c;
  }
  rv = node_run_on_loop(n, call_start, c);
  if (rv != CKT_OK) {
    if (out) {
      *out = NULL;
    }
    sq_destroy(&c->q);
    free(c);
  }
  return rv;
}

int ckt_node_call_async(ckt_node *n, const char *peer, ckt_message *req,
                        uint32_t timeout_ms, ckt_call_done done, void *user) {
  ckt_call_opts o;
  memset(&o, 0, sizeof(o));
  o.timeout_ms = timeout_ms;
  o.done = done;
  o.user = user;
  return ckt_node_call_start(n, peer, req, &o, NULL);
}

typedef struct sync_call {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, err;
  ckt_message *reply;
} sync_call;

static void sync_done(ckt_node *n, int err, const ckt_message *reply,
                      void *user) {
  sync_call *sc = user;
  ckt_message *copy = NULL;
  (void)n;
  if (ckt_message_copy(reply, &copy) != CKT_OK) {
    copy = NULL;
  }
  pthread_mutex_lock(&sc->mu);
  sc->err = err;
  sc->reply = copy;
  sc->done = 1;
  pthread_cond_signal(&sc->cv);
  pthread_mutex_unlock(&sc->mu);
}

int ckt_node_call(ckt_node *n, const char *peer, ckt_message *req,
                  uint32_t timeout_ms, ckt_message **reply) {
  sync_call sc;
  int rv;
  if (reply) {
    *reply = NULL;
  }
  if (n && node_on_loop(n)) {
    ckt_message_free(req);
    return CKT_ERR_INVALID_ARGUMENT; /* would wait on itself forever */
  }
  memset(&sc, 0, sizeof(sc));
  pthread_mutex_init(&sc.mu, NULL);
  pthread_cond_init(&sc.cv, NULL);
  rv = ckt_node_call_async(n, peer, req, timeout_ms, sync_done, &sc);
  if (rv == CKT_OK) {
    pthread_mutex_lock(&sc.mu);
    while (!sc.done) {
      pthread_cond_wait(&sc.cv, &sc.mu);
    }
    pthread_mutex_unlock(&sc.mu);
    rv = sc.err;
    if (reply) {
      *reply = sc.reply;
    } else {
      ckt_message_free(sc.reply);
    }
  }
  pthread_cond_destroy(&sc.cv);
  pthread_mutex_destroy(&sc.mu);
  return rv;
}

/* A frame some thread encoded for a call or a served call. */
typedef struct part_job {
  void *call; /* ckt_call or ckt_srvcall */
  uint8_t *frame;
  size_t len;
  int last;
} part_job;

static void call_part_run(void *arg) {
  part_job *j = arg;
  ckt_call *c = j->call;
  __atomic_sub_fetch(&c->q.posted, (uint64_t)j->len, __ATOMIC_SEQ_CST);
  if (!__atomic_load_n(&c->finished, __ATOMIC_ACQUIRE)) {
    if (sq_append(&c->q, j->frame, j->len, j->last) != CKT_OK) {
      call_finish(c, CKT_ERR_NOMEM, NULL, "out of memory");
    } else {
      call_flush(c);
    }
  }
  free(j->frame);
  free(j);
  call_unref(c);
}

/* Waits (another thread) until q has room or stop says the end came.
 * 1 with room, 0 at the end. */
static int sq_wait_room(sendq *q, uint64_t limit, const int *stop) {
  int ok;
  pthread_mutex_lock(&q->mu);
  __atomic_add_fetch(&q->waiters, 1, __ATOMIC_SEQ_CST);
  while (!__atomic_load_n(stop, __ATOMIC_SEQ_CST) && !sq_room(q, limit)) {
    pthread_cond_wait(&q->cv, &q->mu);
  }
  __atomic_sub_fetch(&q->waiters, 1, __ATOMIC_SEQ_CST);
  ok = !__atomic_load_n(stop, __ATOMIC_ACQUIRE);
  pthread_mutex_unlock(&q->mu);
  return ok;
}

/* Whether a sender may queue another frame on q now.  On the loop:
 * CKT_ERR_AGAIN when q is full (the writable callback follows).  On
 * another thread: waits for room.  CKT_OK; CKT_ERR_CLOSED once *ended
 * (the call finished or was cancelled). */
static int sq_admit(sendq *q, ckt_node *n, int on_loop, const int *ended) {
  if (!on_loop) {
    return sq_wait_room(q, n->circuit_queue_max, ended) ? CKT_OK
                                                        : CKT_ERR_CLOSED;
  }
  if (__atomic_load_n(ended, __ATOMIC_ACQUIRE)) {
    return CKT_ERR_CLOSED;
  }
  if (!sq_room(q, n->circuit_queue_max)) {
    q->want_writable = 1;
    return CKT_ERR_AGAIN;
  }
  return CKT_OK;
}

int ckt_call_send(ckt_call *c, ckt_message *part, int last) {
  ckt_node *n;
  part_job *j;
  int on_loop, rv;

  if (!c || !part ||
      (c->kind != CKT_CALL_UPLOAD && c->kind != CKT_CALL_BISTREAM) ||
      __atomic_load_n(&c->last_queued, __ATOMIC_ACQUIRE)) {
    ckt_message_free(part);
    return CKT_ERR_INVALID_ARGUMENT;
  }
  n = c->n;
  on_loop = node_on_loop(n);
  if ((rv = sq_admit(&c->q, n, on_loop, &c->finished)) != CKT_OK) {
    if (rv != CKT_ERR_AGAIN) {
      ckt_message_free(part);
      rv = CKT_ERR_CLOSED;
    }
    return rv;
  }
  part->type = CKT_MSG_CALL;
  part->call_id = c->id;
  part->stream_part = ++c->nparts;
  part->deadline_ns = c->deadline_ns;
  part->created_ns = n->rt->ops->wall(n->rt);
  part->flags = (uint8_t)((part->flags & CKT_MSG_FLAG_NO_COMPRESS) |
                          (last ? CKT_MSG_FLAG_LAST_PART : 0));
  rv = ckt_message_set_service(part, c->service);
  j = calloc(1, sizeof(*j));
  if (rv == CKT_OK && !j) {
    rv = CKT_ERR_NOMEM;
  }
  if (rv == CKT_OK) {
    rv = node_frame_encode(n, part, node_codec(n, NULL, part, 0), &j->frame,
                           &j->len);
  }
  ckt_message_free(part);
  if (rv != CKT_OK) {
    free(j);
    return rv;
  }
  if (last) {
    __atomic_store_n(&c->last_queued, 1, __ATOMIC_RELEASE);
  }
  j->call = c;
  j->last = last;
  __atomic_add_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
  __atomic_add_fetch(&c->q.posted, (uint64_t)j->len, __ATOMIC_SEQ_CST);
  if (on_loop) {
    call_part_run(j);
    return CKT_OK;
  }
  rv = n->rt->ops->post(n->rt, call_part_run, j);
  if (rv != CKT_OK) {
    __atomic_sub_fetch(&c->q.posted, (uint64_t)j->len, __ATOMIC_SEQ_CST);
    free(j->frame);
    free(j);
    call_unref(c);
    return CKT_ERR_CLOSED;
  }
  return CKT_OK;
}

static void call_cancel_run(void *arg) {
  ckt_call *c = arg;
  if (c->stream || c->got_final) {
    char why[256];
    snprintf(why, sizeof(why),
             "the call was cancelled; %s was asked to abandon it",
             c->pc ? c->pc->name : "the peer");
    call_finish(c, CKT_ERR_CANCEL_SENT, NULL, why);
  } else {
    call_finish(c, CKT_ERR_CANCELED, NULL,
                "the call was cancelled before its request was sent");
  }
  call_unref(c);
}

int ckt_call_cancel(ckt_call *c) {
  int rv;
  if (!c) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (__atomic_load_n(&c->finished, __ATOMIC_ACQUIRE)) {
    return CKT_ERR_CLOSED;
  }
  __atomic_add_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
  rv = node_run_on_loop(c->n, call_cancel_run, c);
  if (rv != CKT_OK) {
    call_unref(c);
    return CKT_ERR_CLOSED;
  }
  return CKT_OK;
}

/* ckt_call_pause() or ckt_srvcall_pause() on its way to the loop. */
typedef struct pause_job {
  void *owner; /* ckt_call or ckt_srvcall (a reference held) */
  int on;
} pause_job;

static void rx_pause(ckt_stream *s, rxstate *rx, int on) {
  if (rx->paused == on) {
    return;
  }
  rx->paused = on;
  if (!on && s) {
    if (rx->owed) {
      ckt_stream_credit(s, rx->owed);
      rx->owed = 0;
    }
    node_stream_resume(s);
  }
}

static void call_pause_run(void *arg) {
  pause_job *j = arg;
  ckt_call *c = j->owner;
  if (!__atomic_load_n(&c->finished, __ATOMIC_ACQUIRE)) {
    rx_pause(c->stream, &c->rx, j->on);
  }
  free(j);
  call_unref(c);
}

int ckt_call_pause(ckt_call *c, int on) {
  pause_job *j;
  int rv;
  if (!c) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (!(j = calloc(1, sizeof(*j)))) {
    return CKT_ERR_NOMEM;
  }
  j->owner = c;
  j->on = on != 0;
  __atomic_add_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
  rv = node_run_on_loop(c->n, call_pause_run, j);
  if (rv != CKT_OK) {
    free(j);
    call_unref(c);
    return CKT_ERR_CLOSED;
  }
  return CKT_OK;
}

uint64_t ckt_call_id(const ckt_call *c) {
  return c ? c->id : 0;
}

void ckt_call_release(ckt_call *c) {
  if (c) {
    call_unref(c);
  }
}

/* The final reply's error code. */
static int reply_error(const ckt_message *m) {
  const char *st;
  if (m->type != CKT_MSG_ERROR) {
    return CKT_OK;
  }
  st = ckt_message_get_arg(m, "ckt.status");
  return !st                             ? CKT_ERR_REMOTE
         : strcmp(st, "no-service") == 0 ? CKT_ERR_NO_SERVICE
         : strcmp(st, "limit") == 0      ? CKT_ERR_LIMIT
         : strcmp(st, "deadline") == 0   ? CKT_ERR_TIMEOUT
                                         : CKT_ERR_REMOTE;
}

int call_on_message(rxstate *rx, ckt_stream *s, ckt_message *m) {
  ckt_call *c = (ckt_call *)rx;
  (void)s;
  if (m->call_id != c->id ||
      (m->type != CKT_MSG_REPLY && m->type != CKT_MSG_ERROR)) {
    ckt_message_free(m);
    call_finish(c, CKT_ERR_CONNECTION, NULL,
                "the peer answered with a malformed reply");
    return 0;
  }
  if (m->type == CKT_MSG_REPLY && m->stream_part > 0) {
    if (c->kind != CKT_CALL_DOWNLOAD && c->kind != CKT_CALL_BISTREAM) {
      ckt_message_free(m);
      call_finish(c, CKT_ERR_CONNECTION, NULL,
                  "the peer streamed parts to a call that asked for none");
      return 0;
    }
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
    c->on_part(c->n, c, m, c->user);
    ckt_message_free(m);
    call_unref(c);
    return 0;
  }
  /* If the server answered before our last part, finishing resets what
   * we had left to send (it asked us to stop with APP_DONE). */
  c->got_final = 1;
  call_finish_code(c, reply_error(m), m, NULL, APP_DONE);
  return 0;
}

void call_on_stream_closed(rxstate *rx, uint64_t app_error) {
  ckt_call *c = (ckt_call *)rx;
  char why[160];
  c->stream = NULL;
  snprintf(why, sizeof(why),
           "the peer closed the call's stream without a reply (code %" PRIu64
           ")",
           app_error);
  call_finish(c, CKT_ERR_CONNECTION, NULL, why);
}

void call_malformed(rxstate *rx) {
  call_finish((ckt_call *)rx, CKT_ERR_CONNECTION, NULL,
              "the peer sent a malformed reply");
}

void call_acked(rxstate *rx) {
  ckt_call *c = (ckt_call *)rx;
  if (!__atomic_load_n(&c->finished, __ATOMIC_ACQUIRE)) {
    call_flush(c);
  }
}

/* ---- the server's side: synchronous handlers ---------------------------- */

/* Writes a final answer frame for req, or resets the stream. */
static void answer(ckt_node *n, ckt_stream *s, pconn *pc, ckt_message *reply,
                   const ckt_message *req) {
  uint8_t *frame;
  size_t len;
  int rv;
  reply->created_ns = n->rt->ops->wall(n->rt);
  ckt_message_set_from(reply, n->address);
  ckt_message_set_to(reply, req->from);
  rv = node_frame_encode(n, reply, node_codec(n, pc, reply, 1), &frame, &len);
  if (rv == CKT_ERR_TOO_LARGE) {
    /* Tell the caller rather than leave it waiting for its timeout. */
    ckt_message *err = ckt_message_new();
    if (err) {
      err->type = CKT_MSG_ERROR;
      err->call_id = req->call_id;
      ckt_message_set_err(err, "the reply exceeds the maximum message size");
      rv = node_frame_encode(n, err, node_codec(n, pc, err, 1), &frame, &len);
      ckt_message_free(err);
    }
  }
  ckt_message_free(reply);
  if (rv != CKT_OK) {
    ckt_stream_reset(s, APP_MALFORMED);
    return;
  }
  if (node_stream_write(s, frame, len, 1) != CKT_OK) {
    ckt_stream_reset(s, APP_MALFORMED);
  }
  free(frame);
}

static const char *kind_name(int kind) {
  switch (kind) {
  case CKT_CALL_UPLOAD:
    return "upload";
  case CKT_CALL_DOWNLOAD:
    return "download";
  case CKT_CALL_BISTREAM:
    return "bistream";
  default:
    return "call";
  }
}

static int stream_kind(const ckt_message *req) {
  const char *k = ckt_message_get_arg(req, "ckt.stream");
  if (!k) {
    return CKT_CALL_UNARY;
  }
  return strcmp(k, "upload") == 0     ? CKT_CALL_UPLOAD
         : strcmp(k, "download") == 0 ? CKT_CALL_DOWNLOAD
         : strcmp(k, "bistream") == 0 ? CKT_CALL_BISTREAM
                                      : -1;
}

static ckt_message *error_reply(const ckt_message *req, const char *why,
                                const char *status) {
  ckt_message *r = ckt_message_new();
  if (r) {
    r->type = CKT_MSG_ERROR;
    r->call_id = req->call_id;
    r->serial = req->serial;
    ckt_message_set_service(r, req->service);
    ckt_message_set_err(r, why);
    if (status) {
      ckt_message_set_arg(r, "ckt.status", status);
    }
  }
  return r;
}

static void srvcall_begin(ckt_node *n, ckt_stream *s, rxstate *rx,
                          ckt_message *req, const service_t *svc, int kind);

void node_serve(ckt_node *n, ckt_stream *s, rxstate *rx, ckt_message *req) {
  pconn *pc = ckt_conn_user(ckt_stream_conn(s));
  service_t svc;
  ckt_message *reply = NULL;
  int kind = stream_kind(req);
  char why[CKT_MESSAGE_SERVICE_MAX + 96];

  node_service_lookup(n, req->service, &svc);
  if (req->deadline_ns && n->rt->ops->wall(n->rt) > req->deadline_ns) {
    reply =
        error_reply(req, "the deadline passed before the call ran", "deadline");
  } else if (!svc.call && !svc.serve && !svc.parts) {
    snprintf(why, sizeof(why), "no service '%s' on this node", req->service);
    reply = error_reply(req, why, "no-service");
  } else if (kind < 0 || kind != (svc.call ? CKT_CALL_UNARY : svc.call_kind)) {
    snprintf(why, sizeof(why),
             "service '%s' is %s %s service; this call asked for %s",
             req->service,
             svc.call || svc.call_kind == CKT_CALL_UNARY ? "a" : "an",
             svc.call ? "call" : kind_name(svc.call_kind),
             kind < 0 ? "an unknown kind" : kind_name(kind));
    reply = error_reply(req, why, "wrong-kind");
  } else if (!svc.call) {
    srvcall_begin(n, s, rx, req, &svc, kind);
    return;
  } else {
    int rv;
    reply = ckt_message_new();
    if (reply) {
      reply->type = CKT_MSG_REPLY;
      reply->call_id = req->call_id;
      reply->serial = req->serial;
      ckt_message_set_service(reply, req->service);
      CKT_COUNTER_ADD(n->stats.calls_served, 1);
      rv = svc.call(n, req, reply, svc.call_user);
      if (rv != 0) {
        reply->type = CKT_MSG_ERROR;
        if (!reply->err || !*reply->err) {
          ckt_message_set_err(reply, "the handler failed");
        }
      }
    }
  }
  if (!reply) {
    ckt_stream_reset(s, APP_MALFORMED);
  } else {
    answer(n, s, pc, reply, req);
  }
  /* Answered: whatever else arrives on the stream is dropped unread; the
   * caller stops sending when the answer reaches it (see
   * srvcall_reply_run). */
  rx->answered = 1;
  ckt_message_free(req);
}

/* ---- the server's side: ckt_srvcall ------------------------------------- */

struct ckt_srvcall {
  rxstate rx; /* first: stream user pointers cast to rxstate */
  ckt_node *n;
  ckt_stream *stream; /* NULL once the stream is gone */
  ckt_timer *timer;   /* the deadline */
  sendq q;
  int kind;
  ckt_serve_fn serve;
  ckt_parts_fn parts;
  void *user;
  uint64_t id, serial;
  int64_t deadline_ns;
  char peer[CKT_ADDR_STRLEN];
  char service[CKT_MESSAGE_SERVICE_MAX + 1];
  int cancelled;      /* atomic: why the call ended early; 0 while live */
  int replied;        /* atomic: the handler answered */
  int got_last;       /* the caller's last part arrived */
  int last_queued;    /* atomic: our last part is on its way */
  int64_t nparts;     /* parts sent (the sending thread's count) */
  int refs;           /* atomic: the stream's and the handler's */
  int codec;          /* atomic: the codec of the caller's last message */
  part_job reply_job; /* the final answer's trip to the loop */
  ckt_srvcall_cancel_cb on_cancel;
  void *cancel_user;
  int cancel_ran;
  ckt_srvcall_writable_cb on_writable;
  void *writable_user;
  struct ckt_srvcall *next, *prev; /* n->srvcalls */
};

static void srvcall_unref(ckt_srvcall *sc) {
  ckt_node *n = sc->n;
  if (__atomic_sub_fetch(&sc->refs, 1, __ATOMIC_ACQ_REL) != 0) {
    return;
  }
  /* The last reference goes on the loop thread (the stream's is dropped
   * there, and the handler's reply job runs there). */
  if (sc->prev) {
    sc->prev->next = sc->next;
  } else {
    n->srvcalls = sc->next;
  }
  if (sc->next) {
    sc->next->prev = sc->prev;
  }
  if (sc->timer) {
    n->rt->ops->timer_free(n->rt, sc->timer);
  }
  node_rx_clear(&sc->rx);
  ckt_buf_free(&sc->rx.held);
  sq_destroy(&sc->q);
  free(sc);
}

/* The call ends early: the handler hears why, once. */
static void srvcall_cancel(ckt_srvcall *sc, int why) {
  int expect = 0;
  if (__atomic_load_n(&sc->replied, __ATOMIC_ACQUIRE) ||
      !__atomic_compare_exchange_n(&sc->cancelled, &expect, why, 0,
                                   __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    return;
  }
  if (sc->timer) {
    sc->n->rt->ops->timer_free(sc->n->rt, sc->timer);
    sc->timer = NULL;
  }
  sq_wake(&sc->q);
  if (sc->on_cancel && !sc->cancel_ran) {
    sc->cancel_ran = 1;
    __atomic_add_fetch(&sc->refs, 1, __ATOMIC_ACQ_REL);
    sc->on_cancel(sc, why, sc->cancel_user);
    srvcall_unref(sc);
  }
}

static void srvcall_flush(ckt_srvcall *sc) {
  int rv = sq_flush(&sc->q, sc->stream);
  if (rv != CKT_OK) {
    if (sc->stream) {
      ckt_stream_reset(sc->stream, APP_CANCELED);
    }
    srvcall_cancel(sc, CKT_ERR_CONNECTION);
    return;
  }
  if (sq_update(&sc->q, sc->stream, sc->n->circuit_queue_max) &&
      sc->q.want_writable && sc->on_writable &&
      !__atomic_load_n(&sc->cancelled, __ATOMIC_ACQUIRE)) {
    sc->q.want_writable = 0;
    __atomic_add_fetch(&sc->refs, 1, __ATOMIC_ACQ_REL);
    sc->on_writable(sc, sc->writable_user);
    srvcall_unref(sc);
  }
}

static void srvcall_deadline(void *arg) {
  ckt_srvcall *sc = arg;
  ckt_message *r;
  uint8_t *frame;
  size_t len;
  if (__atomic_load_n(&sc->replied, __ATOMIC_ACQUIRE)) {
    return;
  }
  /* Tell the caller (it may be giving up at this very moment too), then
   * the handler. */
  r = ckt_message_new();
  if (r && sc->stream) {
    r->type = CKT_MSG_ERROR;
    r->call_id = sc->id;
    ckt_message_set_service(r, sc->service);
    ckt_message_set_err(r, "the deadline passed before the handler answered");
    ckt_message_set_arg(r, "ckt.status", "deadline");
    if (node_frame_encode(sc->n, r, CKT_CODEC_NONE, &frame, &len) == CKT_OK) {
      if (sq_append(&sc->q, frame, len, 1) == CKT_OK) {
        sq_flush(&sc->q, sc->stream);
      }
      free(frame);
    }
  }
  ckt_message_free(r);
  srvcall_cancel(sc, CKT_ERR_TIMEOUT);
}

static void srvcall_begin(ckt_node *n, ckt_stream *s, rxstate *rx,
                          ckt_message *req, const service_t *svc, int kind) {
  ckt_srvcall *sc = calloc(1, sizeof(*sc));
  int64_t left;
  if (!sc) {
    ckt_stream_reset(s, APP_MALFORMED);
    ckt_message_free(req);
    return;
  }
  sc->rx = *rx; /* the reader's state moves over */
  sc->rx.kind = RX_SRVCALL;
  memset(&rx->body, 0, sizeof(rx->body));
  memset(&rx->held, 0, sizeof(rx->held));
  free(rx);
  ckt_stream_set_user(s, sc);
  sq_init(&sc->q);
  sc->n = n;
  sc->stream = s;
  sc->kind = kind;
  sc->serve = svc->serve;
  sc->parts = svc->parts;
  sc->user = svc->call_user;
  sc->id = req->call_id;
  sc->serial = req->serial;
  sc->deadline_ns = req->deadline_ns;
  snprintf(sc->peer, sizeof(sc->peer), "%s", req->from ? req->from : "");
  snprintf(sc->service, sizeof(sc->service), "%s", req->service);
  sc->refs = 2; /* the stream's and the handler's */
  sc->next = n->srvcalls;
  if (n->srvcalls) {
    n->srvcalls->prev = sc;
  }
  n->srvcalls = sc;
  if (kind == CKT_CALL_UPLOAD || kind == CKT_CALL_BISTREAM) {
    sc->rx.manual = 1; /* so that the handler can pause the caller */
    ckt_stream_set_manual_credit(s, 1);
  }
  if (sc->deadline_ns) {
    left = sc->deadline_ns - n->rt->ops->wall(n->rt);
    sc->timer = n->rt->ops->timer_new(n->rt, srvcall_deadline, sc);
    if (sc->timer) {
      n->rt->ops->timer_arm(n->rt, sc->timer,
                            n->rt->ops->now(n->rt) +
                                (uint64_t)(left > 0 ? left : 0));
    }
  }
  sc->codec = req->codec;
  CKT_COUNTER_ADD(n->stats.calls_served, 1);
  sc->got_last = (req->flags & CKT_MSG_FLAG_LAST_PART) != 0;
  __atomic_add_fetch(&sc->refs, 1, __ATOMIC_ACQ_REL);
  if (sc->parts) {
    sc->parts(sc, req, sc->got_last, sc->user);
  } else {
    sc->serve(sc, req, sc->user);
  }
  ckt_message_free(req);
  srvcall_unref(sc);
}

int srvcall_on_message(rxstate *rx, ckt_stream *s, ckt_message *m) {
  ckt_srvcall *sc = (ckt_srvcall *)rx;
  (void)s;
  if (__atomic_load_n(&sc->replied, __ATOMIC_ACQUIRE) ||
      __atomic_load_n(&sc->cancelled, __ATOMIC_ACQUIRE)) {
    ckt_message_free(m); /* the call is over: late parts are dropped */
    return 0;
  }
  if (m->type != CKT_MSG_CALL || m->call_id != sc->id || m->stream_part <= 0 ||
      sc->got_last ||
      (sc->kind != CKT_CALL_UPLOAD && sc->kind != CKT_CALL_BISTREAM)) {
    ckt_message_free(m);
    srvcall_malformed(rx);
    return APP_MALFORMED;
  }
  sc->got_last = (m->flags & CKT_MSG_FLAG_LAST_PART) != 0;
  __atomic_store_n(&sc->codec, m->codec, __ATOMIC_RELAXED);
  __atomic_add_fetch(&sc->refs, 1, __ATOMIC_ACQ_REL);
  sc->parts(sc, m, sc->got_last, sc->user);
  ckt_message_free(m);
  srvcall_unref(sc);
  return 0;
}

void srvcall_malformed(rxstate *rx) {
  ckt_srvcall *sc = (ckt_srvcall *)rx;
  srvcall_cancel(sc, CKT_ERR_CONNECTION);
}

void srvcall_on_stream_closed(rxstate *rx, uint64_t app_error) {
  ckt_srvcall *sc = (ckt_srvcall *)rx;
  ckt_node *n = sc->n;
  sc->stream = NULL;
  srvcall_cancel(sc, node_stopping(n)            ? CKT_ERR_CLOSED
                     : app_error == APP_CANCELED ? CKT_ERR_CANCELED
                     : app_error == APP_DEADLINE ? CKT_ERR_TIMEOUT
                                                 : CKT_ERR_CONNECTION);
  srvcall_unref(sc); /* the stream's reference */
}

void srvcall_acked(rxstate *rx) {
  srvcall_flush((ckt_srvcall *)rx);
}

void srvcalls_free_all(ckt_node *n) {
  /* Handlers were to answer before the node went (ckt/call.h); what they
   * still hold goes now, without callbacks: the loop is gone. */
  while (n->srvcalls) {
    ckt_srvcall *sc = n->srvcalls;
    n->srvcalls = sc->next;
    if (sc->stream) {
      ckt_stream_set_user(sc->stream, NULL);
    }
    if (sc->timer) {
      n->rt->ops->timer_free(n->rt, sc->timer);
    }
    node_rx_clear(&sc->rx);
    ckt_buf_free(&sc->rx.held);
    sq_destroy(&sc->q);
    free(sc);
  }
}

/* Encodes an answer of sc (a part or the final reply) on any thread, with
 * the codec of the caller's last message unless m names its own. */
static int srvcall_encode(ckt_srvcall *sc, ckt_message *m, uint8_t **frame,
                          size_t *len) {
  ckt_node *n = sc->n;
  int codec = m->codec != CKT_CODEC_AUTO
                  ? m->codec
                  : __atomic_load_n(&sc->codec, __ATOMIC_RELAXED);
  m->call_id = sc->id;
  m->serial = sc->serial;
  m->created_ns = n->rt->ops->wall(n->rt);
  if (ckt_message_set_service(m, sc->service) != CKT_OK ||
      ckt_message_set_from(m, n->address) != CKT_OK ||
      ckt_message_set_to(m, sc->peer) != CKT_OK) {
    return CKT_ERR_NOMEM;
  }
  if (codec < CKT_CODEC_NONE || codec > CKT_CODEC_MAX) {
    codec = CKT_CODEC_NONE;
  }
  return node_frame_encode(n, m, codec, frame, len);
}

static void srvcall_part_run(void *arg) {
  part_job *j = arg;
  ckt_srvcall *sc = j->call;
  __atomic_sub_fetch(&sc->q.posted, (uint64_t)j->len, __ATOMIC_SEQ_CST);
  if (!__atomic_load_n(&sc->cancelled, __ATOMIC_ACQUIRE) && sc->stream) {
    if (sq_append(&sc->q, j->frame, j->len, 0) == CKT_OK) {
      srvcall_flush(sc);
    }
  }
  free(j->frame);
  free(j);
  srvcall_unref(sc);
}

int ckt_srvcall_send(ckt_srvcall *sc, ckt_message *part, int last) {
  ckt_node *n;
  part_job *j;
  int on_loop, rv;
  if (!sc || !part ||
      (sc->kind != CKT_CALL_DOWNLOAD && sc->kind != CKT_CALL_BISTREAM) ||
      __atomic_load_n(&sc->last_queued, __ATOMIC_ACQUIRE) ||
      __atomic_load_n(&sc->replied, __ATOMIC_ACQUIRE)) {
    ckt_message_free(part);
    return CKT_ERR_INVALID_ARGUMENT;
  }
  n = sc->n;
  on_loop = node_on_loop(n);
  if ((rv = sq_admit(&sc->q, n, on_loop, &sc->cancelled)) != CKT_OK) {
    if (rv != CKT_ERR_AGAIN) {
      ckt_message_free(part);
      rv = CKT_ERR_CANCELED;
    }
    return rv;
  }
  part->type = CKT_MSG_REPLY;
  part->stream_part = ++sc->nparts;
  part->flags = (uint8_t)((part->flags & CKT_MSG_FLAG_NO_COMPRESS) |
                          (last ? CKT_MSG_FLAG_LAST_PART : 0));
  j = calloc(1, sizeof(*j));
  rv = j ? srvcall_encode(sc, part, &j->frame, &j->len) : CKT_ERR_NOMEM;
  ckt_message_free(part);
  if (rv != CKT_OK) {
    free(j);
    return rv;
  }
  if (last) {
    __atomic_store_n(&sc->last_queued, 1, __ATOMIC_RELEASE);
  }
  j->call = sc;
  __atomic_add_fetch(&sc->refs, 1, __ATOMIC_ACQ_REL);
  __atomic_add_fetch(&sc->q.posted, (uint64_t)j->len, __ATOMIC_SEQ_CST);
  if (on_loop) {
    srvcall_part_run(j);
    return CKT_OK;
  }
  if (n->rt->ops->post(n->rt, srvcall_part_run, j) != CKT_OK) {
    __atomic_sub_fetch(&sc->q.posted, (uint64_t)j->len, __ATOMIC_SEQ_CST);
    free(j->frame);
    free(j);
    __atomic_sub_fetch(&sc->refs, 1, __ATOMIC_ACQ_REL);
    return CKT_ERR_CANCELED;
  }
  return CKT_OK;
}

static void srvcall_reply_run(void *arg) {
  part_job *j = arg;
  ckt_srvcall *sc = j->call;
  if (!__atomic_load_n(&sc->cancelled, __ATOMIC_ACQUIRE) && sc->stream) {
    if (sc->timer) {
      sc->n->rt->ops->timer_free(sc->n->rt, sc->timer);
      sc->timer = NULL;
    }
    if (!j->frame) {
      ckt_stream_reset(sc->stream, APP_MALFORMED); /* nothing to answer */
    } else if (sq_append(&sc->q, j->frame, j->len, 1) == CKT_OK) {
      srvcall_flush(sc);
    }
    /* Parts still on their way are dropped as they come; the caller
     * stops sending when it has the answer.  (No STOP_SENDING: ngtcp2
     * 0.12.1 answers a STOP_SENDING that crosses the last of our data
     * with a RESET_STREAM whose final size is short, which kills the
     * connection.) */
  }
  free(j->frame);
  j->frame = NULL;
  srvcall_unref(sc); /* the handler's reference */
}

int ckt_srvcall_reply(ckt_srvcall *sc, ckt_message *reply) {
  part_job *j;
  int rv = CKT_OK;
  if (!sc) {
    ckt_message_free(reply);
    return CKT_ERR_INVALID_ARGUMENT;
  }
  j = &sc->reply_job;
  j->call = sc;
  j->frame = NULL;
  if (__atomic_load_n(&sc->cancelled, __ATOMIC_ACQUIRE)) {
    ckt_message_free(reply);
    rv = CKT_ERR_CANCELED;
  } else {
    if (!reply) {
      reply = ckt_message_new();
    }
    if (reply) {
      if (reply->type != CKT_MSG_ERROR) {
        reply->type = reply->err && *reply->err ? CKT_MSG_ERROR : CKT_MSG_REPLY;
      }
      reply->stream_part = 0;
      reply->flags &= (uint8_t)~CKT_MSG_FLAG_LAST_PART;
      rv = srvcall_encode(sc, reply, &j->frame, &j->len);
      ckt_message_free(reply);
    } else {
      rv = CKT_ERR_NOMEM;
    }
    if (rv != CKT_OK) {
      /* Tell the caller rather than leave it waiting for its deadline. */
      ckt_message *e = ckt_message_new();
      j->frame = NULL;
      if (e) {
        e->type = CKT_MSG_ERROR;
        ckt_message_set_err(e, rv == CKT_ERR_TOO_LARGE
                                   ? "the reply exceeds the maximum message "
                                     "size"
                                   : "the handler's reply could not be sent");
        if (srvcall_encode(sc, e, &j->frame, &j->len) != CKT_OK) {
          j->frame = NULL;
        }
        ckt_message_free(e);
      }
    }
  }
  __atomic_store_n(&sc->replied, 1, __ATOMIC_RELEASE);
  if (node_run_on_loop(sc->n, srvcall_reply_run, j) != CKT_OK) {
    /* The loop is gone: ckt_node_free() frees the handle. */
    free(j->frame);
    j->frame = NULL;
    __atomic_sub_fetch(&sc->refs, 1, __ATOMIC_ACQ_REL);
  }
  return rv;
}

int ckt_srvcall_cancelled(const ckt_srvcall *sc) {
  return sc ? __atomic_load_n(&sc->cancelled, __ATOMIC_ACQUIRE) : 0;
}

void ckt_srvcall_on_cancel(ckt_srvcall *sc, ckt_srvcall_cancel_cb cb,
                           void *user) {
  int why;
  if (!sc) {
    return;
  }
  sc->on_cancel = cb;
  sc->cancel_user = user;
  why = __atomic_load_n(&sc->cancelled, __ATOMIC_ACQUIRE);
  if (why && cb && !sc->cancel_ran) {
    sc->cancel_ran = 1;
    cb(sc, why, user);
  }
}

void ckt_srvcall_on_writable(ckt_srvcall *sc, ckt_srvcall_writable_cb cb,
                             void *user) {
  if (sc) {
    sc->on_writable = cb;
    sc->writable_user = user;
  }
}

static void srvcall_pause_run(void *arg) {
  pause_job *j = arg;
  ckt_srvcall *sc = j->owner;
  if (sc->stream) {
    rx_pause(sc->stream, &sc->rx, j->on);
  }
  free(j);
  srvcall_unref(sc);
}

int ckt_srvcall_pause(ckt_srvcall *sc, int on) {
  pause_job *j;
  if (!sc) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (!(j = calloc(1, sizeof(*j)))) {
    return CKT_ERR_NOMEM;
  }
  j->owner = sc;
  j->on = on != 0;
  __atomic_add_fetch(&sc->refs, 1, __ATOMIC_ACQ_REL);
  if (node_run_on_loop(sc->n, srvcall_pause_run, j) != CKT_OK) {
    free(j);
    __atomic_sub_fetch(&sc->refs, 1, __ATOMIC_ACQ_REL);
  }
  return CKT_OK;
}

ckt_node *ckt_srvcall_node(const ckt_srvcall *sc) {
  return sc ? sc->n : NULL;
}

uint64_t ckt_srvcall_id(const ckt_srvcall *sc) {
  return sc ? sc->id : 0;
}

const char *ckt_srvcall_peer(const ckt_srvcall *sc) {
  return sc ? sc->peer : "";
}

int64_t ckt_srvcall_deadline(const ckt_srvcall *sc) {
  return sc ? sc->deadline_ns : 0;
}
