/*
 * sim_world.c — the simulation: one virtual clock, one event queue, the
 * hosts, and the runtimes that bound nodes run on (include/ckt/sim.h,
 * sim_world.h).  The network lives in sim_net.c.
 */
#include "sim_int.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"
#include "sim_trace.h"
#include "tls_random.h"

/* Events are allocated this many at a time and never given back before
 * ckt_sim_free(): the pool is as large as the most ever queued at once. */
#define SLAB_EVENTS 256

struct sim_slab {
  sim_slab *next;
  sim_event ev[SLAB_EVENTS];
};

/* The random hook is per thread, so is the simulation. */
static _Thread_local ckt_sim *tl_sim;

static sim_event *event_of(sim_qnode *q) {
  return (sim_event *)q; /* q is the first member */
}

static sim_event *timer_event(ckt_timer *t) {
  return (sim_event *)(void *)t;
}

static ckt_timer *event_timer(sim_event *e) {
  return (ckt_timer *)(void *)e;
}

/* ---- events -------------------------------------------------------------- */

/* Adds a slab to the free list, with queue room for all of it first so
 * that queueing an allocated event never fails. */
static int grow_events(ckt_sim *s) {
  sim_slab *sl;
  size_t i;
  int rv = sim_queue_reserve(&s->queue, s->nevents + SLAB_EVENTS);
  if (rv != CKT_OK) {
    return rv;
  }
  sl = calloc(1, sizeof(*sl));
  if (!sl) {
    return CKT_ERR_NOMEM;
  }
  sl->next = s->slabs;
  s->slabs = sl;
  for (i = SLAB_EVENTS; i-- > 0;) {
    sl->ev[i].q.idx = SIM_QUEUE_NONE;
    sl->ev[i].u.free_next = s->free_events;
    s->free_events = &sl->ev[i];
  }
  s->nevents += SLAB_EVENTS;
  return CKT_OK;
}

sim_event *sim_event_new(ckt_sim *s) {
  sim_event *e;
  if (!s->free_events && grow_events(s) != CKT_OK) {
    return NULL;
  }
  e = s->free_events;
  s->free_events = e->u.free_next;
  return e;
}

void sim_event_recycle(ckt_sim *s, sim_event *e) {
  e->kind = SIM_EV_FREE;
  e->host = NULL;
  e->u.free_next = s->free_events;
  s->free_events = e;
}

void sim_event_schedule(ckt_sim *s, sim_event *e, uint64_t t) {
  sim_queue_push(&s->queue, &e->q, t, s->seq++);
}

void sim_record(ckt_sim *s, int kind, int host, int from, size_t len,
                uint64_t digest) {
  uint64_t h = s->trace;
  s->st.events++;
  h = sim_trace_fold(h, s->now);
  h = sim_trace_fold(h, (uint64_t)(uint32_t)kind << 32 | (uint32_t)host);
  if (kind == SIM_EV_DGRAM) {
    h = sim_trace_fold(h, (uint64_t)(uint32_t)from << 32 | (uint32_t)len);
    h = sim_trace_fold(h, digest);
  }
  s->trace = h;
  if (s->observer) {
    ckt_sim_event ev;
    ev.time_ns = s->now;
    ev.kind = kind;
    ev.host = host;
    ev.from_host = from;
    ev.len = len;
    s->observer(s->observer_user, &ev);
  }
}

/* ---- randomness ---------------------------------------------------------- */

ckt_sim_host *sim_set_current(ckt_sim *s, ckt_sim_host *h) {
  ckt_sim_host *prev = s->current;
  s->current = h;
  return prev;
}

ckt_sim_host *sim_enter(ckt_sim_host *h) {
  ckt_sim *s = h ? h->sim : tl_sim;
  return s ? sim_set_current(s, h) : NULL;
}

void sim_leave(ckt_sim_host *prev) {
  ckt_sim *s = prev ? prev->sim : tl_sim;
  if (s) {
    s->current = prev;
  }
}

/* What wolfSSL draws on this thread (tls_random.h). */
static void random_hook(void *user, uint8_t *buf, size_t len) {
  ckt_sim *s = user;
  sim_rand_fill(s->current ? &s->current->rng : &s->misc, buf, len);
}

uint64_t ckt_sim_rand(ckt_sim *s) {
  return sim_rand_next(&s->scenario);
}

uint64_t ckt_sim_rand_below(ckt_sim *s, uint64_t n) {
  return sim_rand_below(&s->scenario, n);
}

void sim_host_secret(const ckt_sim_host *h, uint8_t out[32]) {
  sim_rand r;
  /* Its own domain: the same bytes however often the host was bound. */
  sim_rand_seed(&r, h->sim->seed, SIM_RAND_SECRET, (uint64_t)h->index, 0);
  sim_rand_fill(&r, out, 32);
  memset(&r, 0, sizeof(r));
}

/* ---- the simulation ------------------------------------------------------ */

int ckt_sim_new(uint64_t seed, const ckt_sim_link *def, ckt_sim **out) {
  ckt_sim *s;
  int rv;
  if (!out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  *out = NULL;
  if (tl_sim) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  s = calloc(1, sizeof(*s));
  if (!s) {
    return CKT_ERR_NOMEM;
  }
  s->seed = seed;
  if (def) {
    s->def = *def;
  } else {
    s->def.latency_ns = CKT_SIM_MS;
  }
  sim_queue_init(&s->queue);
  sim_rand_seed(&s->net, seed, SIM_RAND_NET, 0, 0);
  sim_rand_seed(&s->scenario, seed, SIM_RAND_SCENARIO, 0, 0);
  sim_rand_seed(&s->misc, seed, SIM_RAND_MISC, 0, 0);
  s->trace = SIM_TRACE_INIT;
  if ((rv = tls_random_set_hook(random_hook, s)) != CKT_OK) {
    free(s);
    return rv;
  }
  tl_sim = s;
  *out = s;
  return CKT_OK;
}

void ckt_sim_free(ckt_sim *s) {
  int i;
  if (!s) {
    return;
  }
  if (tl_sim == s) {
    tls_random_set_hook(NULL, NULL);
    tl_sim = NULL;
  }
  /* Every event lives in a slab, wherever it is (queued, a timer, a
   * parked post, free): freeing the slabs frees them all. */
  while (s->slabs) {
    sim_slab *next = s->slabs->next;
    size_t k;
    for (k = 0; k < SLAB_EVENTS; ++k) {
      free(s->slabs->ev[k].buf);
    }
    free(s->slabs);
    s->slabs = next;
  }
  for (i = 0; i < s->nhosts; ++i) {
    free(s->hosts[i]);
  }
  free(s->hosts);
  while (s->invariants) {
    sim_invariant *next = s->invariants->next;
    free(s->invariants);
    s->invariants = next;
  }
  free(s->failure);
  sim_pairs_free(&s->pairs);
  sim_queue_free(&s->queue);
  free(s);
}

uint64_t ckt_sim_seed(const ckt_sim *s) {
  return s->seed;
}

uint64_t ckt_sim_now(const ckt_sim *s) {
  return s->now;
}

uint64_t ckt_sim_trace(const ckt_sim *s) {
  return s->trace;
}

void ckt_sim_get_stats(const ckt_sim *s, ckt_sim_stats *out) {
  *out = s->st;
}

void ckt_sim_set_observer(ckt_sim *s,
                          void (*fn)(void *user, const ckt_sim_event *ev),
                          void *user) {
  s->observer = fn;
  s->observer_user = fn ? user : NULL;
}

/* ---- runtime ------------------------------------------------------------- */

static uint64_t rt_now(ckt_runtime *rt) {
  ckt_sim_host *h = rt->impl;
  return h->sim->now;
}

static int64_t rt_wall(ckt_runtime *rt) {
  ckt_sim_host *h = rt->impl;
  /* In unsigned arithmetic: a clock run to the far future wraps instead
   * of overflowing a signed sum. */
  return (int64_t)((uint64_t)CKT_SIM_WALL_EPOCH + h->sim->now +
                   (uint64_t)h->skew_ns);
}

static ckt_timer *rt_timer_new(ckt_runtime *rt, ckt_timer_fn fn, void *arg) {
  ckt_sim_host *h = rt->impl;
  sim_event *e;
  if (!h->bound || !fn || !(e = sim_event_new(h->sim))) {
    return NULL;
  }
  e->kind = SIM_EV_TIMER;
  e->host = h;
  e->u.timer.fn = fn;
  e->u.timer.arg = arg;
  e->u.timer.prev = NULL;
  e->u.timer.parked = 0;
  e->u.timer.next = h->timers;
  if (h->timers) {
    h->timers->u.timer.prev = e;
  }
  h->timers = e;
  return event_timer(e);
}

/* A deadline in the past fires now, after what is already queued for
 * now (the fresh sequence number sees to that). */
static void rt_timer_arm(ckt_runtime *rt, ckt_timer *t, uint64_t deadline) {
  ckt_sim *s = ((ckt_sim_host *)rt->impl)->sim;
  sim_event *e = timer_event(t);
  e->u.timer.parked = 0;
  if (deadline == CKT_TIME_NEVER) {
    sim_queue_remove(&s->queue, &e->q);
    return;
  }
  if (sim_qnode_queued(&e->q)) {
    sim_queue_update(&s->queue, &e->q, deadline > s->now ? deadline : s->now,
                     s->seq++);
  } else {
    sim_event_schedule(s, e, deadline > s->now ? deadline : s->now);
  }
}

/* Frees t and takes it off the host's list. */
static void timer_release(ckt_sim *s, ckt_sim_host *h, sim_event *e) {
  sim_queue_remove(&s->queue, &e->q);
  if (e->u.timer.prev) {
    e->u.timer.prev->u.timer.next = e->u.timer.next;
  } else {
    h->timers = e->u.timer.next;
  }
  if (e->u.timer.next) {
    e->u.timer.next->u.timer.prev = e->u.timer.prev;
  }
  sim_event_recycle(s, e);
}

static void rt_timer_free(ckt_runtime *rt, ckt_timer *t) {
  ckt_sim_host *h = rt->impl;
  if (t) {
    timer_release(h->sim, h, timer_event(t));
  }
}

static int rt_send(ckt_runtime *rt, const ckt_addr *to, const uint8_t *data,
                   size_t len, size_t segment) {
  ckt_sim_host *h = rt->impl;
  if (!h->bound) {
    return CKT_OK; /* a runtime used after its node let go: nowhere */
  }
  return sim_net_send(h->sim, h, to, data, len, segment);
}

/* Unlike production's, not thread-safe: a simulation has one thread, and
 * the thread-driven API that posts from others cannot be used on it. */
static int rt_post(ckt_runtime *rt, ckt_post_fn fn, void *arg) {
  ckt_sim_host *h = rt->impl;
  sim_event *e;
  if (!h->bound || !fn) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (!(e = sim_event_new(h->sim))) {
    return CKT_ERR_NOMEM;
  }
  e->kind = SIM_EV_POST;
  e->host = h;
  e->u.post.fn = fn;
  e->u.post.arg = arg;
  e->u.post.next = NULL;
  if (h->posts_tail) {
    h->posts_tail->u.post.next = e;
  } else {
    h->posts_head = e;
  }
  h->posts_tail = e;
  sim_event_schedule(h->sim, e, h->sim->now);
  return CKT_OK;
}

static void rt_random(ckt_runtime *rt, uint8_t *buf, size_t len) {
  ckt_sim_host *h = rt->impl;
  sim_rand_fill(&h->rng, buf, len);
}

static const ckt_runtime_ops sim_ops = {
    rt_now,        rt_wall, rt_timer_new, rt_timer_arm,
    rt_timer_free, rt_send, rt_post,      rt_random,
};

/* ---- hosts --------------------------------------------------------------- */

static int grow_hosts(ckt_sim *s) {
  int cap = s->hosts_cap ? s->hosts_cap * 2 : 16;
  ckt_sim_host **p;
  if (cap > CKT_SIM_MAX_HOSTS) {
    cap = CKT_SIM_MAX_HOSTS;
  }
  p = realloc(s->hosts, (size_t)cap * sizeof(*p));
  if (!p) {
    return CKT_ERR_NOMEM;
  }
  s->hosts = p;
  s->hosts_cap = cap;
  return CKT_OK;
}

int ckt_sim_host_new(ckt_sim *s, ckt_sim_host **out) {
  ckt_sim_host *h;
  int i;
  if (!s || !out) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (s->nhosts >= CKT_SIM_MAX_HOSTS) {
    return CKT_ERR_LIMIT;
  }
  if (s->nhosts == s->hosts_cap && grow_hosts(s) != CKT_OK) {
    return CKT_ERR_NOMEM;
  }
  if (!(h = calloc(1, sizeof(*h)))) {
    return CKT_ERR_NOMEM;
  }
  i = s->nhosts;
  h->sim = s;
  h->index = i;
  h->ip = 127u << 24 | 77u << 16 | (uint32_t)(i / 250) << 8 |
          (uint32_t)(i % 250 + 1);
  snprintf(h->ip_str, sizeof(h->ip_str), "127.77.%u.%u", (h->ip >> 8) & 0xFF,
           h->ip & 0xFF);
  h->up = 1;
  h->rt.ops = &sim_ops;
  h->rt.impl = h;
  sim_rand_seed(&h->rng, s->seed, SIM_RAND_HOST, (uint64_t)i, 0);
  s->hosts[s->nhosts++] = h;
  *out = h;
  return CKT_OK;
}

int ckt_sim_host_index(const ckt_sim_host *h) {
  return h ? h->index : -1;
}

ckt_sim_host *ckt_sim_host_at(ckt_sim *s, int index) {
  return s && index >= 0 && index < s->nhosts ? s->hosts[index] : NULL;
}

int ckt_sim_host_count(const ckt_sim *s) {
  return s ? s->nhosts : 0;
}

const char *ckt_sim_host_ip(const ckt_sim_host *h) {
  return h->ip_str;
}

static int is_in(sim_event *const *v, size_t n, const sim_event *e) {
  for (size_t i = 0; i < n; i++) {
    if (v[i] == e) {
      return 1;
    }
  }
  return 0;
}

static int by_due(const void *a, const void *b) {
  const sim_event *x = *(sim_event *const *)a, *y = *(sim_event *const *)b;
  if (x->q.time != y->q.time) {
    return x->q.time < y->q.time ? -1 : 1;
  }
  return x->q.seq < y->q.seq ? -1 : x->q.seq > y->q.seq;
}

/* A host that was down is frozen, not wiped: the posts and timers that
 * came due meanwhile waited (posts first in its list, see
 * run_post_event; timers marked parked, see fire_timer).  Once it is up
 * they run at now, in the order they came due, before what its posts
 * queued behind them. */
static void requeue_parked(ckt_sim *s, ckt_sim_host *h) {
  sim_event **due = NULL, *e;
  size_t n = 0, cap = 0, i;
  for (e = h->posts_head; e && !sim_qnode_queued(&e->q); e = e->u.post.next) {
    n++;
  }
  for (e = h->timers; e; e = e->u.timer.next) {
    n += e->u.timer.parked;
  }
  if (n == 0) {
    return;
  }
  cap = n;
  if (!(due = malloc(cap * sizeof(*due)))) {
    abort(); /* out of memory: the run cannot go on as its seed says */
  }
  n = 0;
  for (e = h->posts_head; e && !sim_qnode_queued(&e->q); e = e->u.post.next) {
    due[n++] = e;
  }
  for (e = h->timers; e; e = e->u.timer.next) {
    if (e->u.timer.parked) {
      e->u.timer.parked = 0;
      due[n++] = e;
    }
  }
  qsort(due, n, sizeof(*due), by_due);
  for (i = 0; i < n; i++) {
    sim_event_schedule(s, due[i], s->now);
  }
  /* Posts queued behind the parked ones go after them again. */
  for (e = h->posts_head; e; e = e->u.post.next) {
    if (sim_qnode_queued(&e->q) && !is_in(due, n, e)) {
      sim_queue_remove(&s->queue, &e->q);
      sim_event_schedule(s, e, s->now);
    }
  }
  free(due);
}

void ckt_sim_host_down(ckt_sim_host *h) {
  h->up = 0;
}

void ckt_sim_host_up(ckt_sim_host *h) {
  if (!h->up) {
    h->up = 1;
    requeue_parked(h->sim, h);
  }
}

int ckt_sim_host_is_up(const ckt_sim_host *h) {
  return h->up;
}

void ckt_sim_host_set_skew(ckt_sim_host *h, int64_t skew_ns) {
  h->skew_ns = skew_ns;
}

/* ---- bindings ------------------------------------------------------------ */

int sim_host_bind(ckt_sim_host *h, uint16_t port, const sim_receiver *r,
                  ckt_runtime **rt, ckt_addr *local) {
  ckt_sim *s;
  if (!h || !r || !rt || port == 0 || h->bound) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  s = h->sim;
  h->bound = 1;
  h->port = port;
  h->recv = *r;
  h->gen = ++s->last_gen;
  h->binds++;
  sim_rand_seed(&h->rng, s->seed, SIM_RAND_HOST, (uint64_t)h->index, h->binds);
  /* A node's counters start at zero, as a fresh socket's do. */
  memset(&h->counters, 0, sizeof(h->counters));
  *rt = &h->rt;
  if (local) {
    sim_net_addr(h->ip, port, local);
  }
  return CKT_OK;
}

void sim_host_unbind(ckt_sim_host *h) {
  ckt_sim *s;
  if (!h || !h->bound) {
    return;
  }
  s = h->sim;
  while (h->timers) {
    timer_release(s, h, h->timers);
  }
  while (h->posts_head) {
    sim_event *e = h->posts_head;
    h->posts_head = e->u.post.next;
    sim_queue_remove(&s->queue, &e->q);
    sim_event_recycle(s, e);
  }
  h->posts_tail = NULL;
  /* Datagrams in flight to this binding are dropped when they arrive
   * (their gen no longer matches): no walk over the queue here. */
  h->bound = 0;
  h->gen = 0;
  h->port = 0;
  memset(&h->recv, 0, sizeof(h->recv));
}

int sim_host_is_bound(const ckt_sim_host *h) {
  return h->bound;
}

const sim_host_counters *sim_host_get_counters(const ckt_sim_host *h) {
  return &h->counters;
}

/* Runs the oldest post of h (e, taken out of the queue). */
static void run_post(ckt_sim *s, ckt_sim_host *h, sim_event *e) {
  ckt_post_fn fn = e->u.post.fn;
  void *arg = e->u.post.arg;
  ckt_sim_host *prev;
  assert(e == h->posts_head);
  h->posts_head = e->u.post.next;
  if (!h->posts_head) {
    h->posts_tail = NULL;
  }
  sim_event_recycle(s, e);
  prev = sim_set_current(s, h);
  fn(arg);
  sim_set_current(s, prev);
  s->st.posts_run++;
  sim_record(s, SIM_EV_POST, h->index, -1, 0, 0);
}

void sim_host_run_posted(ckt_sim_host *h) {
  ckt_sim *s;
  uint64_t gen;
  if (!h || !h->bound) {
    return;
  }
  s = h->sim;
  gen = h->gen;
  /* Also what the posts post; stops if one of them ends the binding.
   * Runs on a host that is down too: this is the node letting its work
   * fail while it is freed. */
  while (h->gen == gen && h->posts_head) {
    sim_event *e = h->posts_head;
    sim_queue_remove(&s->queue, &e->q);
    run_post(s, h, e);
  }
}

/* ---- running ------------------------------------------------------------- */

static void fire_timer(ckt_sim *s, sim_event *e) {
  ckt_sim_host *h = e->host;
  ckt_sim_host *prev;
  if (!h->up) {
    e->u.timer.parked = 1; /* fires when the host is up again */
    return;
  }
  prev = sim_set_current(s, h);
  /* fn may re-arm or free e: e is not touched after it. */
  e->u.timer.fn(e->u.timer.arg);
  sim_set_current(s, prev);
  s->st.timers_fired++;
  sim_record(s, SIM_EV_TIMER, h->index, -1, 0, 0);
}

static void run_post_event(ckt_sim *s, sim_event *e) {
  /* A host that is down does not run its posts; they are not dropped
   * either (the node would leak what they carry): they stay parked at
   * the front of its list until it is up again or the node, being
   * freed, runs them with sim_host_run_posted(). */
  if (e->host->up) {
    run_post(s, e->host, e);
  }
}

static void run_call(ckt_sim *s, sim_event *e) {
  ckt_sim_fn fn = e->u.call.fn;
  void *user = e->u.call.user;
  ckt_sim_host *prev;
  sim_event_recycle(s, e);
  prev = sim_set_current(s, NULL);
  fn(s, user);
  sim_set_current(s, prev);
  s->st.calls_run++;
  sim_record(s, SIM_EV_CALL, -1, -1, 0, 0);
}

static void dispatch(ckt_sim *s, sim_event *e) {
  if (e->q.time > s->now) {
    s->now = e->q.time;
  }
  switch (e->kind) {
  case SIM_EV_DGRAM:
    sim_net_arrive(s, e);
    break;
  case SIM_EV_TIMER:
    fire_timer(s, e);
    break;
  case SIM_EV_POST:
    run_post_event(s, e);
    break;
  case SIM_EV_CALL:
    run_call(s, e);
    break;
  default:
    abort(); /* a free event in the queue: memory is corrupt */
  }
}

int ckt_sim_at(ckt_sim *s, uint64_t at_ns, ckt_sim_fn fn, void *user) {
  sim_event *e;
  if (!s || !fn) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (!(e = sim_event_new(s))) {
    return CKT_ERR_NOMEM;
  }
  e->kind = SIM_EV_CALL;
  e->host = NULL;
  e->u.call.fn = fn;
  e->u.call.user = user;
  sim_event_schedule(s, e, at_ns > s->now ? at_ns : s->now);
  return CKT_OK;
}

/* ---- invariants and failures ------------------------------------------- */

int ckt_sim_add_invariant(ckt_sim *s, ckt_sim_invariant fn, void *user) {
  sim_invariant *inv, **tail;
  if (!s || !fn) {
    return CKT_ERR_INVALID_ARGUMENT;
  }
  if (!(inv = calloc(1, sizeof(*inv)))) {
    return CKT_ERR_NOMEM;
  }
  inv->fn = fn;
  inv->user = user;
  for (tail = &s->invariants; *tail; tail = &(*tail)->next) {
  }
  *tail = inv; /* checked in the order they were added */
  return CKT_OK;
}

void ckt_sim_fail(ckt_sim *s, const char *fmt, ...) {
  char why[512];
  va_list ap;
  if (!s || s->failure) {
    return; /* the first failure is the one that counts */
  }
  va_start(ap, fmt);
  vsnprintf(why, sizeof(why), fmt ? fmt : "failed", ap);
  va_end(ap);
  s->failure = strdup(why); /* NULL if out of memory: "failed" is said */
  s->halted = 1;
  s->failed = 1;
}

const char *ckt_sim_failure(const ckt_sim *s) {
  return s && s->failed ? (s->failure ? s->failure : "failed") : NULL;
}

static void check_invariants(ckt_sim *s) {
  sim_invariant *inv;
  for (inv = s->invariants; inv && !s->failed; inv = inv->next) {
    const char *why = inv->fn(s, inv->user);
    if (why) {
      ckt_sim_fail(s, "invariant: %s", why);
    }
  }
}

uint64_t ckt_sim_run(ckt_sim *s, uint64_t until_ns) {
  uint64_t before;
  sim_qnode *top;
  if (!s || s->running || s->failed) {
    return 0; /* not from inside an event, nor after a failure */
  }
  s->running = 1;
  s->halted = 0;
  before = s->st.events;
  while (!s->halted && (top = sim_queue_peek(&s->queue)) &&
         top->time <= until_ns) {
    dispatch(s, event_of(sim_queue_pop(&s->queue)));
    if (s->invariants) {
      check_invariants(s);
    }
  }
  if (!s->halted && s->now < until_ns) {
    s->now = until_ns;
  }
  s->running = 0;
  return s->st.events - before;
}

int ckt_sim_step(ckt_sim *s) {
  sim_qnode *top;
  if (!s || s->running || s->failed || !(top = sim_queue_pop(&s->queue))) {
    return 0;
  }
  s->running = 1;
  dispatch(s, event_of(top));
  if (s->invariants) {
    check_invariants(s);
  }
  s->running = 0;
  return 1;
}

uint64_t ckt_sim_next_time(const ckt_sim *s) {
  const sim_qnode *top = sim_queue_peek(&s->queue);
  return top ? top->time : UINT64_MAX;
}

void ckt_sim_halt(ckt_sim *s) {
  s->halted = 1;
}
