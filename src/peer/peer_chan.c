/*
 * peer_chan.c — peers for a program's own threads (the seed's channel
 * style): start a peer, open or accept circuits, send, and read fragments
 * with blocking reads that take a timeout, without touching the loop.
 *
 * Each circuit has a bounded inbox.  When a reader falls behind and its
 * inbox fills, the circuit's received bytes stop being credited to its
 * QUIC stream, so the sender of that circuit alone is held back; reading
 * gives the credit back.
 *
 * A sender whose circuit's send queue is full can wait for room
 * (ckt_tcircuit_send_wait): the circuit's `writable` callback bumps a
 * generation counter that the waiting thread read before its attempt, so
 * a wakeup between the attempt and the wait is never lost.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckt/peer.h"
#include "peer_int.h"

/* An inbox holds at most this many fragments or this many payload bytes
 * before its circuit is held back. */
#define INBOX_MAX_FRAGMENTS 256
#define INBOX_MAX_BYTES (4u * 1024 * 1024)

typedef struct item {
  struct item *next;
  ckt_fragment *f;
} item;

struct ckt_tcircuit {
  ckt_tpeer *tp;
  ckt_circuit *c; /* NULL once closed (loop thread writes, under mu) */
  int refs;       /* the loop's and the program's */
  item *head, *tail;
  size_t count, bytes;
  int closed, stalled;
  unsigned writable_gen; /* bumped by every `writable` (under mu) */
  int remote_known;      /* remote_url is set, never written again */
  char reason[512];
  char name[CKT_MESSAGE_SUBJECT_MAX + 1];
  char remote_url[CKT_PEER_URL_MAX];
  ckt_tcircuit *accept_next; /* in tp's accept queue */
};

struct ckt_tpeer {
  ckt_node *n;
  ckt_peer *p;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  ckt_tcircuit *accept_head, *accept_tail;
  char url[CKT_PEER_URL_MAX];
  char service[CKT_MESSAGE_SERVICE_MAX + 1];
  int refs; /* the program's, and one per tcircuit (under mu) */
};

/* ---- waiting on the loop ------------------------------------------------- */

typedef struct sync_job {
  void (*fn)(struct sync_job *);
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, rv;
  ckt_tpeer *tp;
  ckt_tcircuit *tc;
  ckt_fragment *f;
  const char *text, *text2, *text3;
} sync_job;

static void sync_run(void *arg) {
  sync_job *j = arg;
  j->fn(j);
  pthread_mutex_lock(&j->mu);
  j->done = 1;
  pthread_cond_signal(&j->cv);
  pthread_mutex_unlock(&j->mu);
}

/* Runs fn on the loop and waits for it (directly when already there). */
static int on_loop_wait(ckt_node *n, sync_job *j, void (*fn)(sync_job *)) {
  int rv;
  j->fn = fn;
  if (node_on_loop(n)) {
    fn(j);
    return j->rv;
  }
  pthread_mutex_init(&j->mu, NULL);
  pthread_cond_init(&j->cv, NULL);
  j->done = 0;
  rv = ckt_node_post(n, sync_run, j);
  if (rv == CKT_OK) {
    pthread_mutex_lock(&j->mu);
    while (!j->done) {
      pthread_cond_wait(&j->cv, &j->mu);
    }
    pthread_mutex_unlock(&j->mu);
    rv = j->rv;
  }
  pthread_cond_destroy(&j->cv);
  pthread_mutex_destroy(&j->mu);
  return rv;
}

static int deadline_of(int timeout_ms, struct timespec *until) {
  if (timeout_ms < 0) {
    return 0; /* wait forever */
  }
  clock_gettime(CLOCK_REALTIME, until);
  until->tv_sec += timeout_ms / 1000;
  until->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (until->tv_nsec >= 1000000000L) {
    until->tv_sec++;
    until->tv_nsec -= 1000000000L;
  }
  return 1;
}

/* Waits on tp's condition until `ready` or the deadline; mu held. */
static int wait_until(ckt_tpeer *tp, int timed, const struct timespec *until) {
  if (!timed) {
    pthread_cond_wait(&tp->cv, &tp->mu);
    return 0;
  }
  return pthread_cond_timedwait(&tp->cv, &tp->mu, until);
}

static void tp_unref(ckt_tpeer *tp) {
  int last;
  pthread_mutex_lock(&tp->mu);
  last = --tp->refs == 0;
  pthread_mutex_unlock(&tp->mu);
  if (last) {
    pthread_cond_destroy(&tp->cv);
    pthread_mutex_destroy(&tp->mu);
    free(tp);
  }
}

static void tc_unref(ckt_tcircuit *tc) {
  ckt_tpeer *tp = tc->tp;
  int last;
  pthread_mutex_lock(&tp->mu);
  last = --tc->refs == 0;
  pthread_mutex_unlock(&tp->mu);
  if (last) {
    while (tc->head) {
      item *it = tc->head;
      tc->head = it->next;
      ckt_fragment_free(it->f);
      free(it);
    }
    free(tc);
    tp_unref(tp); /* a tcircuit keeps its tpeer's memory alive */
  }
}

/* ---- the service the thread peers run (loop thread) ---------------------- */

/* Records the remote peer's URL once it names a peer: a prefer-extant
 * circuit learns which instance answered from the first fragment back.
 * mu held, or tc not yet seen by the program. */
static void tc_learn_remote(ckt_tcircuit *tc, ckt_circuit *c) {
  static const uint8_t zero[CKT_PEER_ID_LEN];
  const char *url = ckt_circuit_remote_url(c);
  ckt_url u;
  if (ckt_url_parse(url, &u) == CKT_OK &&
      memcmp(u.peer_id, zero, sizeof(zero)) != 0) {
    snprintf(tc->remote_url, sizeof(tc->remote_url), "%s", url);
    tc->remote_known = 1;
  }
}

static ckt_tcircuit *tc_new(ckt_tpeer *tp, ckt_circuit *c) {
  ckt_tcircuit *tc = calloc(1, sizeof(*tc));
  if (tc) {
    tc->tp = tp;
    tc->c = c;
    tc->refs = 2;
    pthread_mutex_lock(&tp->mu);
    tp->refs++;
    pthread_mutex_unlock(&tp->mu);
    snprintf(tc->name, sizeof(tc->name), "%s", ckt_circuit_name(c));
    tc_learn_remote(tc, c);
    ckt_circuit_set_user(c, tc);
  }
  return tc;
}

static int t_circuit_new(ckt_peer *p, ckt_circuit *c, const ckt_fragment *open,
                         void *user) {
  ckt_tpeer *tp = user;
  ckt_tcircuit *tc = tc_new(tp, c);
  (void)p, (void)open;
  if (!tc) {
    return -1;
  }
  pthread_mutex_lock(&tp->mu);
  if (tp->accept_tail) {
    tp->accept_tail->accept_next = tc;
  } else {
    tp->accept_head = tc;
  }
  tp->accept_tail = tc;
  pthread_cond_broadcast(&tp->cv);
  pthread_mutex_unlock(&tp->mu);
  return 0;
}

/* What a queued fragment costs in memory, roughly: all its variable
 * fields, not just the payload. */
static size_t fragment_bytes(const ckt_fragment *f) {
  size_t n = f->payload_len + strlen(f->subject ? f->subject : "") +
             strlen(f->err ? f->err : "") +
             strlen(f->service ? f->service : "") + 64,
         i;
  for (i = 0; i < f->nargs; ++i) {
    n += strlen(f->args[i].key) + strlen(f->args[i].value) + 8;
  }
  return n;
}

static void t_fragment(ckt_peer *p, ckt_circuit *c, const ckt_fragment *f,
                       void *user) {
  ckt_tpeer *tp = user;
  ckt_tcircuit *tc = ckt_circuit_user(c);
  item *it = malloc(sizeof(*it));
  (void)p;
  /* Take the delivered fragment itself; copy only if that is not it. */
  if (tc && it) {
    it->f = node_take_rx_fragment(ckt_peer_node(p), f);
  }
  if (!tc || !it || (!it->f && ckt_fragment_copy(f, &it->f) != CKT_OK)) {
    free(it);
    ckt_circuit_close(c, "out of memory at the receiver");
    return;
  }
  f = it->f;
  it->next = NULL;
  pthread_mutex_lock(&tp->mu);
  if (!tc->remote_known) {
    tc_learn_remote(tc, c);
  }
  if (tc->tail) {
    tc->tail->next = it;
  } else {
    tc->head = it;
  }
  tc->tail = it;
  tc->count++;
  tc->bytes += fragment_bytes(f);
  if (!tc->stalled &&
      (tc->count >= INBOX_MAX_FRAGMENTS || tc->bytes >= INBOX_MAX_BYTES)) {
    tc->stalled = 1;
    circuit_set_stalled(c, 1); /* hold this circuit's sender back */
  }
  pthread_cond_broadcast(&tp->cv);
  pthread_mutex_unlock(&tp->mu);
}

static void t_closed(ckt_peer *p, ckt_circuit *c, const char *reason,
                     int remote, void *user) {
  ckt_tpeer *tp = user;
  ckt_tcircuit *tc = ckt_circuit_user(c);
  (void)p, (void)remote;
  if (!tc) {
    return;
  }
  pthread_mutex_lock(&tp->mu);
  if (!tc->remote_known) {
    tc_learn_remote(tc, c);
  }
  tc->closed = 1;
  tc->c = NULL;
  snprintf(tc->reason, sizeof(tc->reason), "%s", reason);
  pthread_cond_broadcast(&tp->cv);
  pthread_mutex_unlock(&tp->mu);
  tc_unref(tc); /* the loop's reference */
}

/* The circuit's send queue has room again: senders waiting in
 * ckt_tcircuit_send_wait() try again. */
static void t_writable(ckt_peer *p, ckt_circuit *c, void *user) {
  ckt_tpeer *tp = user;
  ckt_tcircuit *tc = ckt_circuit_user(c);
  (void)p;
  if (!tc) {
    return;
  }
  pthread_mutex_lock(&tp->mu);
  tc->writable_gen++;
  pthread_cond_broadcast(&tp->cv);
  pthread_mutex_unlock(&tp->mu);
}

/* A peer of the service is going away (ckt_tpeer_stop, or the whole node
 * stopping).  If it is tp's own, jobs posted later must not touch it, and
 * waiting acceptors wake.  Other peers of the service (started at remote
 * nodes' requests) share tp but are not tp->p. */
static void t_stopping(ckt_peer *p, void *user) {
  ckt_tpeer *tp = user;
  pthread_mutex_lock(&tp->mu);
  if (tp->p == p) {
    tp->p = NULL;
    pthread_cond_broadcast(&tp->cv);
  }
  pthread_mutex_unlock(&tp->mu);
}

static const ckt_peer_service thread_service = {
    .stopping = t_stopping,
    .circuit_new = t_circuit_new,
    .fragment = t_fragment,
    .error = t_fragment, /* error fragments queue in order too */
    .circuit_closed = t_closed,
    .writable = t_writable,
};

/* ---- peers --------------------------------------------------------------- */

static void do_start(sync_job *j) {
  ckt_tpeer *tp = j->tp;
  j->rv = ckt_node_start_peer(tp->n, j->text, &tp->p);
  if (j->rv == CKT_OK) {
    snprintf(tp->url, sizeof(tp->url), "%s", ckt_peer_url(tp->p));
  }
}

int ckt_tpeer_start(ckt_node *n, const char *service, ckt_tpeer **out) {
  ckt_tpeer *tp;
  sync_job j;
  int rv;
  if (!n || !service || !out || n->sim_host) {
    return CKT_ERR_INVALID_ARGUMENT; /* blocking reads need a loop thread */
  }
  tp = calloc(1, sizeof(*tp));
  if (!tp) {
    return CKT_ERR_NOMEM;
  }
  tp->n = n;
  tp->refs = 1;
  snprintf(tp->service, sizeof(tp->service), "%s", service);
  pthread_mutex_init(&tp->mu, NULL);
  pthread_cond_init(&tp->cv, NULL);
  rv = ckt_node_register_peer_service(n, service, &thread_service, tp);
  if (rv == CKT_OK) {
    memset(&j, 0, sizeof(j));
    j.tp = tp;
    j.text = service;
    rv = on_loop_wait(n, &j, do_start);
  }
  if (rv != CKT_OK) {
    pthread_cond_destroy(&tp->cv);
    pthread_mutex_destroy(&tp->mu);
    free(tp);
    return rv;
  }
  *out = tp;
  return CKT_OK;
}

const char *ckt_tpeer_url(const ckt_tpeer *tp) {
  return tp->url;
}

static void do_stop(sync_job *j) {
  ckt_tpeer *tp = j->tp;
  node_unregister_peer_service(tp->n, tp->service, tp);
  /* tp->p (t_stopping clears it) and any peer a remote node started for
   * the service: they all hand their circuits to tp. */
  circuit_stop_peers_of(tp->n, tp->service, tp);
  j->rv = CKT_OK;
}

void ckt_tpeer_stop(ckt_tpeer *tp) {
  sync_job j;
  if (!tp) {
    return;
  }
  memset(&j, 0, sizeof(j));
  j.tp = tp;
  if (on_loop_wait(tp->n, &j, do_stop) != CKT_OK) {
    /* The loop is gone: the node already stopped every peer. */
  }
  pthread_mutex_lock(&tp->mu);
  while (tp->accept_head) {
    ckt_tcircuit *tc = tp->accept_head;
    tp->accept_head = tc->accept_next;
    pthread_mutex_unlock(&tp->mu);
    tc_unref(tc); /* never handed to the program */
    pthread_mutex_lock(&tp->mu);
  }
  tp->accept_tail = NULL;
  pthread_mutex_unlock(&tp->mu);
  tp_unref(tp); /* freed once the tcircuits still held are closed too */
}

/* ---- circuits ------------------------------------------------------------ */

/* Wraps a circuit just opened (j->rv says whether it was) for the
 * program. */
static void opened(sync_job *j, ckt_circuit *c) {
  if (j->rv == CKT_OK) {
    j->tc = tc_new(j->tp, c);
    if (!j->tc) {
      ckt_circuit_close(c, "out of memory");
      j->rv = CKT_ERR_NOMEM;
    }
  }
}

static void do_open(sync_job *j) {
  ckt_circuit *c;
  if (!j->tp->p) {
    j->rv = CKT_ERR_CLOSED;
    return; /* the caller frees j->f */
  }
  j->rv = ckt_peer_open_circuit(j->tp->p, j->text, j->text2, j->f, NULL, &c);
  j->f = NULL;
  opened(j, c);
}

static void do_open_extant(sync_job *j) {
  ckt_circuit *c;
  if (!j->tp->p) {
    j->rv = CKT_ERR_CLOSED;
    return; /* the caller frees j->f */
  }
  j->rv = ckt_peer_open_circuit_extant(j->tp->p, j->text, j->text2, j->text3,
                                       j->f, NULL, &c);
  j->f = NULL;
  opened(j, c);
}

static void do_open_sibling(sync_job *j) {
  ckt_circuit *c;
  if (!j->tc->c) {
    j->rv = CKT_ERR_CLOSED;
    return; /* the caller frees j->f */
  }
  j->tp = j->tc->tp;
  j->rv = ckt_circuit_open_sibling(j->tc->c, j->text, j->f, NULL, &c);
  j->f = NULL;
  opened(j, c);
}

/* Runs an open job on tp's loop; the first fragment is taken whatever
 * happens. */
static int open_job(ckt_tpeer *tp, sync_job *j, void (*fn)(sync_job *),
                    ckt_tcircuit **out) {
  int rv = on_loop_wait(tp->n, j, fn);
  ckt_fragment_free(j->f); /* set only if the loop never took it */
  if (rv == CKT_OK) {
    *out = j->tc;
  }
  return rv;
}

int ckt_tpeer_open(ckt_tpeer *tp, const char *url, const char *name,
                   ckt_fragment *first, ckt_tcircuit **out) {
  sync_job j;
  memset(&j, 0, sizeof(j));
  j.tp = tp;
  j.text = url;
  j.text2 = name;
  j.f = first;
  return open_job(tp, &j, do_open, out);
}

int ckt_tpeer_open_extant(ckt_tpeer *tp, const char *host_port,
                          const char *service, const char *name,
                          ckt_fragment *first, ckt_tcircuit **out) {
  sync_job j;
  if (!tp || !out) {
    ckt_fragment_free(first);
    return CKT_ERR_INVALID_ARGUMENT;
  }
  memset(&j, 0, sizeof(j));
  j.tp = tp;
  j.text = host_port;
  j.text2 = service;
  j.text3 = name;
  j.f = first;
  return open_job(tp, &j, do_open_extant, out);
}

int ckt_tcircuit_open_sibling(ckt_tcircuit *tc, const char *name,
                              ckt_fragment *first, ckt_tcircuit **out) {
  sync_job j;
  if (!tc || !out) {
    ckt_fragment_free(first);
    return CKT_ERR_INVALID_ARGUMENT;
  }
  memset(&j, 0, sizeof(j));
  j.tc = tc;
  j.text = name;
  j.f = first;
  return open_job(tc->tp, &j, do_open_sibling, out);
}

int ckt_tpeer_accept(ckt_tpeer *tp, int timeout_ms, ckt_tcircuit **out) {
  struct timespec until;
  int timed = deadline_of(timeout_ms, &until), rv = CKT_OK;
  pthread_mutex_lock(&tp->mu);
  while (!tp->accept_head) {
    if (!tp->p) {
      rv = CKT_ERR_CLOSED; /* the peer stopped */
      break;
    }
    if (wait_until(tp, timed, &until) != 0) {
      rv = CKT_ERR_TIMEOUT;
      break;
    }
  }
  if (rv == CKT_OK) {
    *out = tp->accept_head;
    tp->accept_head = (*out)->accept_next;
    if (!tp->accept_head) {
      tp->accept_tail = NULL;
    }
  }
  pthread_mutex_unlock(&tp->mu);
  return rv;
}

/* Sends j->f (or an error fragment, j->text) on the loop; the fragment
 * stays with the caller, who frees it (off the loop) or tries again. */
static void do_send(sync_job *j) {
  ckt_circuit *c = j->tc->c;
  if (!c) {
    j->rv = CKT_ERR_CLOSED;
  } else if (j->text) {
    j->rv = ckt_circuit_send_error(c, j->text);
  } else {
    j->rv = circuit_send_data(c, j->f);
  }
}

int ckt_tcircuit_send(ckt_tcircuit *tc, ckt_fragment *f) {
  sync_job j;
  int rv;
  memset(&j, 0, sizeof(j));
  j.tc = tc;
  j.f = f;
  rv = on_loop_wait(tc->tp->n, &j, do_send);
  ckt_fragment_free(f);
  return rv;
}

int ckt_tcircuit_send_wait(ckt_tcircuit *tc, ckt_fragment *f, int timeout_ms) {
  ckt_tpeer *tp = tc->tp;
  struct timespec until;
  int timed = deadline_of(timeout_ms, &until), rv;
  unsigned gen;
  sync_job j;
  for (;;) {
    /* Read before the attempt: a `writable` from then on bumps it. */
    pthread_mutex_lock(&tp->mu);
    gen = tc->writable_gen;
    pthread_mutex_unlock(&tp->mu);
    memset(&j, 0, sizeof(j));
    j.tc = tc;
    j.f = f;
    rv = on_loop_wait(tp->n, &j, do_send);
    if (rv != CKT_ERR_AGAIN) {
      break;
    }
    pthread_mutex_lock(&tp->mu);
    while (rv == CKT_ERR_AGAIN && tc->writable_gen == gen) {
      if (tc->closed) {
        rv = CKT_ERR_CLOSED;
      } else if (wait_until(tp, timed, &until) != 0 &&
                 tc->writable_gen == gen && !tc->closed) {
        rv = CKT_ERR_TIMEOUT;
      }
    }
    pthread_mutex_unlock(&tp->mu);
    if (rv != CKT_ERR_AGAIN) {
      break;
    }
  }
  ckt_fragment_free(f);
  return rv;
}

int ckt_tcircuit_send_error(ckt_tcircuit *tc, const char *err) {
  sync_job j;
  memset(&j, 0, sizeof(j));
  j.tc = tc;
  j.text = err ? err : "";
  return on_loop_wait(tc->tp->n, &j, do_send);
}

static void do_unstall(void *arg) {
  ckt_tcircuit *tc = arg;
  ckt_circuit *c;
  int still_behind;
  pthread_mutex_lock(&tc->tp->mu);
  c = tc->c;
  /* The inbox may have filled again since the reader posted this. */
  still_behind = tc->stalled;
  pthread_mutex_unlock(&tc->tp->mu);
  if (c && !still_behind) {
    circuit_set_stalled(c, 0);
  }
  tc_unref(tc);
}

int ckt_tcircuit_recv(ckt_tcircuit *tc, int timeout_ms, ckt_fragment **out) {
  ckt_tpeer *tp = tc->tp;
  struct timespec until;
  int timed = deadline_of(timeout_ms, &until), rv = CKT_OK, unstall = 0;
  item *it = NULL;
  pthread_mutex_lock(&tp->mu);
  while (!tc->head && !tc->closed) {
    if (wait_until(tp, timed, &until) != 0) {
      rv = CKT_ERR_TIMEOUT;
      break;
    }
  }
  if (rv == CKT_OK && tc->head) {
    it = tc->head;
    tc->head = it->next;
    if (!tc->head) {
      tc->tail = NULL;
    }
    tc->count--;
    tc->bytes -= fragment_bytes(it->f);
    /* Below half the limits, the sender may go on. */
    if (tc->stalled && tc->count <= INBOX_MAX_FRAGMENTS / 2 &&
        tc->bytes <= INBOX_MAX_BYTES / 2) {
      tc->stalled = 0;
      unstall = 1;
      tc->refs++; /* for the posted job */
    }
  } else if (rv == CKT_OK) {
    rv = CKT_ERR_CLOSED; /* closed and drained */
  }
  pthread_mutex_unlock(&tp->mu);
  if (unstall && ckt_node_post(tp->n, do_unstall, tc) != CKT_OK) {
    tc_unref(tc);
  }
  if (it) {
    *out = it->f;
    free(it);
  }
  return rv;
}

const char *ckt_tcircuit_name(const ckt_tcircuit *tc) {
  return tc->name;
}

const char *ckt_tcircuit_reason(const ckt_tcircuit *tc) {
  return tc->closed ? tc->reason : NULL;
}

const char *ckt_tcircuit_remote_url(const ckt_tcircuit *tc) {
  int known;
  pthread_mutex_lock(&tc->tp->mu);
  known = tc->remote_known;
  pthread_mutex_unlock(&tc->tp->mu);
  return known ? tc->remote_url : "";
}

static void do_close(sync_job *j) {
  ckt_circuit *c = j->tc->c;
  if (c) {
    ckt_circuit_close(c, j->text); /* t_closed drops the loop's ref */
  }
  j->rv = CKT_OK;
}

void ckt_tcircuit_close(ckt_tcircuit *tc, const char *reason) {
  sync_job j;
  if (!tc) {
    return;
  }
  memset(&j, 0, sizeof(j));
  j.tc = tc;
  j.text = reason;
  on_loop_wait(tc->tp->n, &j, do_close);
  tc_unref(tc); /* the program's reference */
}
