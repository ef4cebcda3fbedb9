/*
 * peer_chan.c — peers for a program's own threads (the seed's channel
 * style): start a peer, open or accept circuits, send, and read fragments
 * with blocking reads that take a timeout, without touching the loop.
 *
 * Each circuit has a bounded inbox.  When a reader falls behind and its
 * inbox fills, the circuit's received bytes stop being credited to its
 * QUIC stream, so the sender of that circuit alone is held back; reading
 * gives the credit back.
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
  char reason[512];
  char name[CKT_MESSAGE_SUBJECT_MAX + 1];
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
  const char *text, *text2;
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
  if (!tc || !it || ckt_fragment_copy(f, &it->f) != CKT_OK) {
    free(it);
    ckt_circuit_close(c, "out of memory at the receiver");
    return;
  }
  it->next = NULL;
  pthread_mutex_lock(&tp->mu);
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
  tc->closed = 1;
  tc->c = NULL;
  snprintf(tc->reason, sizeof(tc->reason), "%s", reason);
  pthread_cond_broadcast(&tp->cv);
  pthread_mutex_unlock(&tp->mu);
  tc_unref(tc); /* the loop's reference */
}

/* The peer is going away (ckt_tpeer_stop, or the whole node stopping):
 * jobs posted later must not touch it, and waiting acceptors wake. */
static void t_stopping(ckt_peer *p, void *user) {
  ckt_tpeer *tp = user;
  (void)p;
  pthread_mutex_lock(&tp->mu);
  tp->p = NULL;
  pthread_cond_broadcast(&tp->cv);
  pthread_mutex_unlock(&tp->mu);
}

static const ckt_peer_service thread_service = {
    .stopping = t_stopping,
    .circuit_new = t_circuit_new,
    .fragment = t_fragment,
    .error = t_fragment, /* error fragments queue in order too */
    .circuit_closed = t_closed,
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
  if (!n || !service || !out) {
    return CKT_ERR_INVALID_ARGUMENT;
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
  if (tp->p) {
    ckt_peer_stop(tp->p); /* t_stopping clears tp->p */
  }
  node_unregister_peer_service(tp->n, tp->service, tp);
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

static void do_open(sync_job *j) {
  ckt_circuit *c;
  if (!j->tp->p) {
    j->rv = CKT_ERR_CLOSED;
    return; /* the caller frees j->f */
  }
  j->rv = ckt_peer_open_circuit(j->tp->p, j->text, j->text2, j->f, NULL, &c);
  j->f = NULL;
  if (j->rv == CKT_OK) {
    j->tc = tc_new(j->tp, c);
    if (!j->tc) {
      ckt_circuit_close(c, "out of memory");
      j->rv = CKT_ERR_NOMEM;
    }
  }
}

int ckt_tpeer_open(ckt_tpeer *tp, const char *url, const char *name,
                   ckt_fragment *first, ckt_tcircuit **out) {
  sync_job j;
  int rv;
  memset(&j, 0, sizeof(j));
  j.tp = tp;
  j.text = url;
  j.text2 = name;
  j.f = first;
  rv = on_loop_wait(tp->n, &j, do_open);
  if (j.f) {
    ckt_fragment_free(j.f); /* the loop never ran it */
  }
  if (rv == CKT_OK) {
    *out = j.tc;
  }
  return rv;
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

static void do_send(sync_job *j) {
  ckt_circuit *c = j->tc->c;
  ckt_fragment *f = j->f;
  j->f = NULL;
  if (!c) {
    ckt_fragment_free(f);
    j->rv = CKT_ERR_CLOSED;
    return;
  }
  j->rv = j->text ? ckt_circuit_send_error(c, j->text) : ckt_circuit_send(c, f);
  if (j->text) {
    ckt_fragment_free(f);
  }
}

int ckt_tcircuit_send(ckt_tcircuit *tc, ckt_fragment *f) {
  sync_job j;
  int rv;
  memset(&j, 0, sizeof(j));
  j.tc = tc;
  j.f = f;
  rv = on_loop_wait(tc->tp->n, &j, do_send);
  ckt_fragment_free(j.f);
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
