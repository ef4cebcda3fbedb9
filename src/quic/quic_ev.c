/* quic_ev.c — libev + UDP runtime. */
#include "quic_ev.h"

#include <ev.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ckt/error.h"
#include "core_util.h"

#define RX_BATCH 64
/* Batches read per wakeup before other watchers get a turn. */
#define RX_ROUNDS 16

typedef struct post_item {
  struct post_item *next;
  ckt_post_fn fn;
  void *arg;
} post_item;

struct ckt_timer {
  ev_timer w;
  ckt_ev *r;
  ckt_timer_fn fn;
  void *arg;
};

struct ckt_ev {
  ckt_runtime rt;
  struct ev_loop *loop;
  ckt_udp udp;
  ckt_udp_rxbuf *rx;
  ckt_udp_dgram dgrams[RX_BATCH];
  ckt_ev_receiver recv;
  ev_io io;
  ev_async async;
  ev_prepare prepare;
  pthread_mutex_t mu;
  post_item *post_head, *post_tail;
  int stop; /* guarded by mu */
};

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rt_now(ckt_runtime *rt) {
  (void)rt;
  return mono_ns();
}

static int64_t rt_wall(ckt_runtime *rt) {
  struct timespec ts;
  (void)rt;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000ll + (int64_t)ts.tv_nsec;
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  ckt_timer *t = (ckt_timer *)w;
  (void)loop, (void)revents;
  t->fn(t->arg);
}

static ckt_timer *rt_timer_new(ckt_runtime *rt, ckt_timer_fn fn, void *arg) {
  ckt_timer *t = calloc(1, sizeof(*t));
  if (!t) {
    return NULL;
  }
  ev_init(&t->w, timer_cb);
  t->r = rt->impl;
  t->fn = fn;
  t->arg = arg;
  return t;
}

static void rt_timer_arm(ckt_runtime *rt, ckt_timer *t, uint64_t deadline) {
  ckt_ev *r = rt->impl;
  uint64_t n;
  ev_timer_stop(r->loop, &t->w);
  if (deadline == CKT_TIME_NEVER) {
    return;
  }
  n = mono_ns();
  ev_timer_set(&t->w, deadline > n ? (double)(deadline - n) / 1e9 : 0.0, 0.0);
  ev_timer_start(r->loop, &t->w);
}

static void rt_timer_free(ckt_runtime *rt, ckt_timer *t) {
  ckt_ev *r = rt->impl;
  if (t) {
    ev_timer_stop(r->loop, &t->w);
    free(t);
  }
}

static int rt_send(ckt_runtime *rt, const ckt_addr *to, const uint8_t *data,
                   size_t len, size_t segment) {
  ckt_ev *r = rt->impl;
  return ckt_udp_send(&r->udp, to, data, len, segment);
}

static void run_posted(ckt_ev *r) {
  post_item *list;
  pthread_mutex_lock(&r->mu);
  list = r->post_head;
  r->post_head = r->post_tail = NULL;
  pthread_mutex_unlock(&r->mu);
  while (list) {
    post_item *next = list->next;
    list->fn(list->arg);
    free(list);
    list = next;
  }
}

static int rt_post(ckt_runtime *rt, ckt_post_fn fn, void *arg) {
  ckt_ev *r = rt->impl;
  post_item *it = malloc(sizeof(*it));
  if (!it) {
    return CKT_ERR_NOMEM;
  }
  it->next = NULL;
  it->fn = fn;
  it->arg = arg;
  pthread_mutex_lock(&r->mu);
  if (r->post_tail) {
    r->post_tail->next = it;
  } else {
    r->post_head = it;
  }
  r->post_tail = it;
  pthread_mutex_unlock(&r->mu);
  /* Wakes the loop if it sleeps in another thread; cheap when not. */
  ev_async_send(r->loop, &r->async);
  return CKT_OK;
}

static void rt_random(ckt_runtime *rt, uint8_t *buf, size_t len) {
  (void)rt;
  if (ckt_random_bytes(buf, len) != CKT_OK) {
    abort(); /* no entropy: nothing secure can be done */
  }
}

static const ckt_runtime_ops ev_ops = {
    rt_now,        rt_wall, rt_timer_new, rt_timer_arm,
    rt_timer_free, rt_send, rt_post,      rt_random,
};

static void io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  ckt_ev *r = w->data;
  int round, n, i;
  (void)loop, (void)revents;
  for (round = 0; round < RX_ROUNDS; ++round) {
    n = ckt_udp_recv(&r->udp, r->rx, r->dgrams, RX_BATCH);
    if (n <= 0) {
      break;
    }
    if (!r->recv.datagram) {
      continue;
    }
    for (i = 0; i < n; ++i) {
      r->recv.datagram(r->recv.user, &r->dgrams[i].from, r->dgrams[i].data,
                       r->dgrams[i].len);
    }
    if (r->recv.batch_done) {
      r->recv.batch_done(r->recv.user);
    }
  }
}

static void async_cb(struct ev_loop *loop, ev_async *w, int revents) {
  ckt_ev *r = w->data;
  int stop;
  (void)revents;
  run_posted(r);
  pthread_mutex_lock(&r->mu);
  stop = r->stop;
  pthread_mutex_unlock(&r->mu);
  if (stop) {
    ev_break(loop, EVBREAK_ALL);
  }
}

/* Before the loop sleeps: run what the loop thread itself posted. */
static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents) {
  (void)loop, (void)revents;
  run_posted(w->data);
}

int ckt_ev_new(const ckt_addr *bind_addr, ckt_ev **out) {
  ckt_ev *r = calloc(1, sizeof(*r));
  int rv;
  if (!r) {
    return CKT_ERR_NOMEM;
  }
  r->rt.ops = &ev_ops;
  r->rt.impl = r;
  pthread_mutex_init(&r->mu, NULL);
  if ((rv = ckt_udp_open(&r->udp, bind_addr)) != CKT_OK) {
    pthread_mutex_destroy(&r->mu);
    free(r);
    return rv;
  }
  if ((rv = ckt_udp_rxbuf_new(&r->rx)) != CKT_OK ||
      !(r->loop = ev_loop_new(EVFLAG_AUTO))) {
    ckt_udp_rxbuf_free(r->rx);
    ckt_udp_close(&r->udp);
    pthread_mutex_destroy(&r->mu);
    free(r);
    return rv != CKT_OK ? rv : CKT_ERR_NOMEM;
  }
  ev_io_init(&r->io, io_cb, r->udp.fd, EV_READ);
  r->io.data = r;
  ev_io_start(r->loop, &r->io);
  ev_async_init(&r->async, async_cb);
  r->async.data = r;
  ev_async_start(r->loop, &r->async);
  ev_prepare_init(&r->prepare, prepare_cb);
  r->prepare.data = r;
  ev_prepare_start(r->loop, &r->prepare);
  *out = r;
  return CKT_OK;
}

void ckt_ev_free(ckt_ev *r) {
  if (!r) {
    return;
  }
  while (r->post_head) { /* the owner ran what it needed: drop the rest */
    post_item *next = r->post_head->next;
    free(r->post_head);
    r->post_head = next;
  }
  ev_io_stop(r->loop, &r->io);
  ev_async_stop(r->loop, &r->async);
  ev_prepare_stop(r->loop, &r->prepare);
  ev_loop_destroy(r->loop);
  ckt_udp_rxbuf_free(r->rx);
  ckt_udp_close(&r->udp);
  pthread_mutex_destroy(&r->mu);
  free(r);
}

void ckt_ev_run_posted(ckt_ev *r) {
  run_posted(r);
}

ckt_runtime *ckt_ev_runtime(ckt_ev *r) {
  return &r->rt;
}

ckt_udp *ckt_ev_udp(ckt_ev *r) {
  return &r->udp;
}

void ckt_ev_set_receiver(ckt_ev *r, const ckt_ev_receiver *recv) {
  r->recv = *recv;
}

void ckt_ev_run(ckt_ev *r) {
  int stop;
  pthread_mutex_lock(&r->mu);
  stop = r->stop;
  pthread_mutex_unlock(&r->mu);
  if (!stop) { /* a stop requested before the loop ran still counts */
    ev_run(r->loop, 0);
  }
}

void ckt_ev_stop(ckt_ev *r) {
  pthread_mutex_lock(&r->mu);
  r->stop = 1;
  pthread_mutex_unlock(&r->mu);
  ev_async_send(r->loop, &r->async);
}
