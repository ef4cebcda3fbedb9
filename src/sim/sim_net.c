/*
 * sim_net.c — the simulated network: addresses, per-pair link state and
 * faults, and one datagram's way from send() to the receiver.
 *
 * Every random decision is drawn from the network's stream in a fixed
 * order (send: host send fault, link send fault, loss, jitter, reorder?,
 * reorder delay, duplicate?, the copy's jitter; arrival: host receive
 * fault, link receive fault), and only when the fault is on, so a run is
 * reproducible from its seed and a scenario without faults draws nothing
 * but jitter.
 */
#include "sim_int.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"
#include "sim_trace.h"

#define DEFAULT_MTU 1472u
#define DEFAULT_QUEUE_BYTES (1024u * 1024u)
#define BITS_NS 8000000000ull /* bits per byte x ns per second */
#define SIM_NET_PREFIX (127u << 24 | 77u << 16)
/* A datagram buffer is at least this big, so that recycled events rarely
 * need a bigger one. */
#define MIN_BUF 1536u

__extension__ typedef unsigned __int128 sim_u128;

static uint64_t add_sat(uint64_t a, uint64_t b) {
  return a + b < a ? UINT64_MAX : a + b;
}

static uint64_t u128_sat(sim_u128 v) {
  return v > UINT64_MAX ? UINT64_MAX : (uint64_t)v;
}

/* ---- addresses ----------------------------------------------------------- */

ckt_sim_host *sim_net_lookup(ckt_sim *s, const ckt_addr *a, uint16_t *port) {
  struct sockaddr_in in;
  uint32_t ip, hi, lo, idx;
  if (a->ss.ss_family != AF_INET) {
    return NULL;
  }
  memcpy(&in, &a->ss, sizeof(in));
  ip = ntohl(in.sin_addr.s_addr);
  hi = (ip >> 8) & 0xFF;
  lo = ip & 0xFF;
  if ((ip & 0xFFFF0000u) != SIM_NET_PREFIX || lo < 1 || lo > 250) {
    return NULL;
  }
  idx = hi * 250 + lo - 1;
  if (idx >= (uint32_t)s->nhosts) {
    return NULL;
  }
  *port = ntohs(in.sin_port);
  return s->hosts[idx];
}

void sim_net_addr(uint32_t ip, uint16_t port, ckt_addr *out) {
  struct sockaddr_in in;
  memset(out, 0, sizeof(*out));
  memset(&in, 0, sizeof(in));
  in.sin_family = AF_INET;
  in.sin_port = htons(port);
  in.sin_addr.s_addr = htonl(ip);
  memcpy(&out->ss, &in, sizeof(in));
  out->len = sizeof(in);
}

/* ---- pairs --------------------------------------------------------------- */

static uint32_t pair_key(int from, int to) {
  return (uint32_t)from * CKT_SIM_MAX_HOSTS + (uint32_t)to + 1;
}

static uint32_t pair_hash(uint32_t key, uint32_t cap) {
  uint64_t h = key * 0x9E3779B97F4A7C15ull;
  return (uint32_t)(h ^ (h >> 32)) & (cap - 1);
}

static sim_pair *pair_find(const sim_pairs *p, uint32_t key) {
  uint32_t i;
  if (p->cap == 0) {
    return NULL;
  }
  for (i = pair_hash(key, p->cap);; i = (i + 1) & (p->cap - 1)) {
    if (p->slots[i].key == key) {
      return &p->slots[i];
    }
    if (p->slots[i].key == 0) {
      return NULL;
    }
  }
}

static sim_pair *pair_slot(sim_pairs *p, uint32_t key) {
  uint32_t i = pair_hash(key, p->cap);
  while (p->slots[i].key != 0) {
    i = (i + 1) & (p->cap - 1);
  }
  return &p->slots[i];
}

static int pairs_grow(sim_pairs *p) {
  uint32_t cap = p->cap ? p->cap * 2 : 64, i;
  sim_pairs bigger = {calloc(cap, sizeof(sim_pair)), cap, p->n};
  if (!bigger.slots) {
    return CKT_ERR_NOMEM;
  }
  for (i = 0; i < p->cap; ++i) {
    if (p->slots[i].key != 0) {
      *pair_slot(&bigger, p->slots[i].key) = p->slots[i];
    }
  }
  free(p->slots);
  *p = bigger;
  return CKT_OK;
}

/* The pair's state, made on first use; NULL when out of memory.  The
 * pointer lasts until the next pair is made. */
static sim_pair *pair_get(ckt_sim *s, int from, int to) {
  uint32_t key = pair_key(from, to);
  sim_pair *pr = pair_find(&s->pairs, key);
  if (pr) {
    return pr;
  }
  if ((s->pairs.n + 1) * 2 > s->pairs.cap && pairs_grow(&s->pairs) != CKT_OK) {
    return NULL;
  }
  pr = pair_slot(&s->pairs, key);
  memset(pr, 0, sizeof(*pr));
  pr->key = key;
  s->pairs.n++;
  return pr;
}

/* For the fault API, which cannot report an error: a cut or a link that
 * silently did not happen would make the whole run lie. */
static sim_pair *pair_must(ckt_sim *s, int from, int to) {
  sim_pair *pr = pair_get(s, from, to);
  if (!pr) {
    fputs("ckt sim: out of memory for link state\n", stderr);
    abort();
  }
  return pr;
}

void sim_pairs_free(sim_pairs *p) {
  free(p->slots);
  memset(p, 0, sizeof(*p));
}

static const ckt_sim_link *link_of(const ckt_sim *s, const sim_pair *pr) {
  return pr && pr->has_link ? &pr->link : &s->def;
}

/* ---- the fault API ------------------------------------------------------- */

void ckt_sim_link_set(ckt_sim *s, ckt_sim_host *from, ckt_sim_host *to,
                      const ckt_sim_link *l) {
  sim_pair *pr = pair_must(s, from->index, to->index);
  pr->link = *l;
  pr->has_link = 1;
}

void ckt_sim_link_set_all(ckt_sim *s, const ckt_sim_link *l) {
  uint32_t i;
  s->def = *l;
  for (i = 0; i < s->pairs.cap; ++i) {
    s->pairs.slots[i].has_link = 0;
  }
}

void ckt_sim_link_get(ckt_sim *s, const ckt_sim_host *from,
                      const ckt_sim_host *to, ckt_sim_link *out) {
  *out = *link_of(s, pair_find(&s->pairs, pair_key(from->index, to->index)));
}

void ckt_sim_partition(ckt_sim *s, ckt_sim_host *a, ckt_sim_host *b,
                       int oneway) {
  pair_must(s, a->index, b->index)->cut = 1;
  if (!oneway) {
    pair_must(s, b->index, a->index)->cut = 1;
  }
}

void ckt_sim_heal(ckt_sim *s, ckt_sim_host *a, ckt_sim_host *b) {
  sim_pair *ab = pair_find(&s->pairs, pair_key(a->index, b->index));
  sim_pair *ba = pair_find(&s->pairs, pair_key(b->index, a->index));
  if (ab) {
    ab->cut = 0;
  }
  if (ba) {
    ba->cut = 0;
  }
}

void ckt_sim_heal_all(ckt_sim *s) {
  uint32_t i;
  int k;
  for (i = 0; i < s->pairs.cap; ++i) {
    s->pairs.slots[i].cut = 0;
  }
  for (k = 0; k < s->nhosts; ++k) {
    s->hosts[k]->isolated = 0;
  }
}

void ckt_sim_isolate(ckt_sim_host *h, int on) {
  h->isolated = on != 0;
}

void ckt_sim_host_flaky(ckt_sim_host *h, uint32_t send_ppm, uint32_t recv_ppm) {
  h->send_ppm = send_ppm;
  h->recv_ppm = recv_ppm;
}

/* ---- sending ------------------------------------------------------------- */

/* The sender's side of the link: a datagram waits for the ones before it
 * to be serialized.  *end: when its last bit is out.  0 when the bytes
 * still waiting and this one would pass the queue's size (tail drop). */
static int serialize(ckt_sim *s, sim_pair *pr, const ckt_sim_link *l, size_t n,
                     uint64_t *end) {
  uint64_t bps = l->bandwidth_bps;
  uint64_t cap = l->queue_bytes ? l->queue_bytes : DEFAULT_QUEUE_BYTES;
  uint64_t start;
  sim_u128 waiting;
  if (bps == 0) {
    *end = s->now;
    return 1;
  }
  start = pr->busy_until > s->now ? pr->busy_until : s->now;
  /* Bytes not on the wire yet, rounded up. */
  waiting = ((sim_u128)(start - s->now) * bps + BITS_NS - 1) / BITS_NS;
  if (n > cap || waiting > cap - n) {
    return 0;
  }
  /* Rounded up, so the link never carries more than bps. */
  pr->busy_until = add_sat(
      start, u128_sat(((sim_u128)n * BITS_NS + bps - 1) / (sim_u128)bps));
  *end = pr->busy_until;
  return 1;
}

/* Keeps the pair in order: never before the latest in-order arrival. */
static uint64_t fifo(sim_pair *pr, uint64_t at) {
  if (at < pr->last_arrival) {
    return pr->last_arrival;
  }
  pr->last_arrival = at;
  return at;
}

/* Queues a copy of p (whose trace digest is `digest`) to arrive at `at`. */
static int schedule_dgram(ckt_sim *s, const ckt_sim_host *from,
                          ckt_sim_host *to, uint16_t port, const uint8_t *p,
                          size_t n, uint64_t digest, uint64_t at) {
  sim_event *e = sim_event_new(s);
  if (!e) {
    return CKT_ERR_AGAIN;
  }
  if (e->cap < n) {
    size_t cap = n < MIN_BUF ? MIN_BUF : n;
    uint8_t *buf = realloc(e->buf, cap);
    if (!buf) {
      sim_event_recycle(s, e);
      return CKT_ERR_AGAIN;
    }
    e->buf = buf;
    e->cap = cap;
  }
  memcpy(e->buf, p, n);
  e->kind = SIM_EV_DGRAM;
  e->host = to;
  e->u.dgram.gen = to->bound && to->port == port ? to->gen : 0;
  e->u.dgram.digest = digest;
  e->u.dgram.len = n;
  e->u.dgram.from = from->index;
  e->u.dgram.from_port = from->port;
  e->u.dgram.to_port = port;
  sim_event_schedule(s, e, at);
  return CKT_OK;
}

/* A datagram that entered the link at `base` (serialized by then):
 * latency, jitter, reordering and duplication decide when it arrives. */
static int transmit(ckt_sim *s, const ckt_sim_host *from, ckt_sim_host *to,
                    uint16_t port, sim_pair *pr, const ckt_sim_link *l,
                    uint64_t base, const uint8_t *p, size_t n) {
  uint64_t prop = add_sat(base, l->latency_ns);
  uint64_t at = add_sat(prop, sim_rand_below(&s->net, l->jitter_ns));
  uint64_t digest = sim_trace_bytes(SIM_TRACE_INIT, p, n);
  int rv;
  if (sim_rand_ppm(&s->net, l->reorder_ppm)) {
    /* Free to overtake and be overtaken: not held by, nor holding, the
     * in-order ones. */
    at = add_sat(at, sim_rand_below(&s->net, l->reorder_ns));
    s->st.reordered++;
  } else {
    at = fifo(pr, at);
  }
  if ((rv = schedule_dgram(s, from, to, port, p, n, digest, at)) != CKT_OK) {
    return rv;
  }
  if (sim_rand_ppm(&s->net, l->dup_ppm)) {
    at = fifo(pr, add_sat(prop, sim_rand_below(&s->net, l->jitter_ns)));
    if (schedule_dgram(s, from, to, port, p, n, digest, at) == CKT_OK) {
      s->st.duplicated++;
    }
  }
  return CKT_OK;
}

/* The checks at the sender, in order; 1 if the datagram may go on. */
static int may_leave(ckt_sim *s, const ckt_sim_host *h, const ckt_sim_host *to,
                     const sim_pair *pr, const ckt_sim_link *l, size_t n) {
  uint32_t mtu = l->mtu ? l->mtu : DEFAULT_MTU;
  if (to->isolated || pr->cut) {
    s->st.dropped_partition++;
    return 0;
  }
  if (sim_rand_ppm(&s->net, h->send_ppm) ||
      sim_rand_ppm(&s->net, l->send_fault_ppm)) {
    s->st.dropped_fault++;
    return 0;
  }
  if (n > mtu) {
    s->st.dropped_mtu++;
    return 0;
  }
  return 1;
}

static int send_one(ckt_sim *s, ckt_sim_host *h, ckt_sim_host *to,
                    uint16_t port, const uint8_t *p, size_t n) {
  sim_pair *pr;
  const ckt_sim_link *l;
  uint64_t base;
  s->st.datagrams_sent++;
  h->counters.datagrams_sent++;
  h->counters.bytes_sent += n;
  if (!h->up) {
    s->st.dropped_down++;
    return CKT_OK;
  }
  if (h->isolated) {
    s->st.dropped_partition++;
    return CKT_OK;
  }
  if (!to) {
    s->st.dropped_unbound++; /* not a simulated address */
    return CKT_OK;
  }
  if (!(pr = pair_get(s, h->index, to->index))) {
    return CKT_ERR_AGAIN;
  }
  l = link_of(s, pr);
  if (!may_leave(s, h, to, pr, l, n)) {
    return CKT_OK;
  }
  if (!serialize(s, pr, l, n, &base)) {
    s->st.dropped_queue++;
    return CKT_OK;
  }
  if (sim_rand_ppm(&s->net, l->loss_ppm)) {
    s->st.dropped_loss++; /* after serializing: it used the bandwidth */
    return CKT_OK;
  }
  return transmit(s, h, to, port, pr, l, base, p, n);
}

int sim_net_send(ckt_sim *s, ckt_sim_host *h, const ckt_addr *to,
                 const uint8_t *data, size_t len, size_t segment) {
  uint16_t port = 0;
  ckt_sim_host *dst = to ? sim_net_lookup(s, to, &port) : NULL;
  size_t off;
  int rv = CKT_OK;
  if (segment == 0 || segment > len) {
    segment = len;
  }
  for (off = 0; off < len; off += segment) {
    size_t n = len - off < segment ? len - off : segment;
    if (send_one(s, h, dst, port, data + off, n) != CKT_OK) {
      rv = CKT_ERR_AGAIN;
    }
  }
  return rv;
}

/* ---- arriving ------------------------------------------------------------ */

/* The checks at arrival, in order; 1 if e may be handed over. */
static int may_arrive(ckt_sim *s, const sim_event *e) {
  const ckt_sim_host *to = e->host;
  const ckt_sim_host *from = s->hosts[e->u.dgram.from];
  const sim_pair *pr;
  const ckt_sim_link *l;
  if (!to->up) {
    s->st.dropped_down++;
    return 0;
  }
  pr = pair_find(&s->pairs, pair_key(from->index, to->index));
  if (to->isolated || from->isolated || (pr && pr->cut)) {
    s->st.dropped_partition++;
    return 0;
  }
  l = link_of(s, pr);
  if (sim_rand_ppm(&s->net, to->recv_ppm) ||
      sim_rand_ppm(&s->net, l->recv_fault_ppm)) {
    s->st.dropped_fault++;
    return 0;
  }
  if (!to->bound || to->port != e->u.dgram.to_port ||
      (e->u.dgram.gen != 0 && e->u.dgram.gen != to->gen)) {
    s->st.dropped_unbound++;
    return 0;
  }
  return 1;
}

static void deliver(ckt_sim *s, ckt_sim_host *to, sim_event *e) {
  const ckt_sim_host *from = s->hosts[e->u.dgram.from];
  size_t len = e->u.dgram.len;
  ckt_addr addr;
  sim_net_addr(from->ip, e->u.dgram.from_port, &addr);
  s->st.datagrams_delivered++;
  s->st.bytes_delivered += len;
  to->counters.datagrams_received++;
  to->counters.bytes_received += len;
  if (to->recv.datagram) {
    to->recv.datagram(to->recv.user, &addr, e->buf, len);
  }
  sim_record(s, SIM_EV_DGRAM, to->index, from->index, len, e->u.dgram.digest);
  sim_event_recycle(s, e);
}

/* The next queued event is a datagram for `to` due now. */
static int same_batch(const ckt_sim *s, const ckt_sim_host *to) {
  const sim_qnode *q = sim_queue_peek(&s->queue);
  const sim_event *next = (const sim_event *)q;
  return next && next->kind == SIM_EV_DGRAM && next->host == to &&
         q->time == s->now;
}

void sim_net_arrive(ckt_sim *s, sim_event *e) {
  ckt_sim_host *to = e->host, *prev;
  uint64_t gen;
  if (!may_arrive(s, e)) {
    sim_event_recycle(s, e);
    return;
  }
  gen = to->gen;
  prev = sim_set_current(s, to);
  deliver(s, to, e);
  /* Datagrams for the same host due at the same instant, right behind
   * this one in the queue, go over as one batch; the receiver may have
   * let go of its binding in between. */
  while (to->gen == gen && same_batch(s, to)) {
    e = (sim_event *)sim_queue_pop(&s->queue);
    if (may_arrive(s, e)) {
      deliver(s, to, e);
    } else {
      sim_event_recycle(s, e);
    }
  }
  if (to->gen == gen && to->recv.batch_done) {
    to->recv.batch_done(to->recv.user);
  }
  sim_set_current(s, prev);
}
