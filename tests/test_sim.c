/* test_sim.c — the simulator through its internal API (sim_world.h):
 * virtual time, the event queue, timers and posts, the network's delays
 * and faults, the random streams, and that a seed decides the whole run. */
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/random.h>

#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "ckt/error.h"
#include "ckt/sim.h"
#include "core_addr.h"
#include "sim_queue.h"
#include "sim_world.h"

#define MS CKT_SIM_MS
#define US 1000ull
#define PORT 7100

/* ---- harness ------------------------------------------------------------- */

/* One datagram as a receiver saw it. */
typedef struct rec {
  uint64_t t;
  int from; /* sender's host index, from the from address */
  uint16_t port;
  uint32_t k; /* the datagram's number: its first 4 bytes */
  size_t len;
  int intact;   /* every byte as make_payload() wrote it */
  uint64_t sum; /* FNV-1a of every byte */
} rec;

/* A bound host that logs what it receives and can send at a pace. */
typedef struct peer {
  ckt_sim *s;
  ckt_sim_host *h;
  ckt_runtime *rt;
  ckt_addr addr;
  rec *log;
  size_t n, cap;
  size_t batches;
  /* pacer: `count` datagrams of `len` bytes to dst, one per interval */
  ckt_timer *pace;
  struct peer *dst;
  uint32_t next_k, count;
  size_t len;
  uint64_t interval;
  uint64_t *sent_at;
} peer;

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const uint8_t *b = p;
  size_t i;
  for (i = 0; i < n; ++i) {
    h = (h ^ b[i]) * 1099511628211ull;
  }
  return h;
}

static uint8_t pattern(uint32_t k, size_t i) {
  return (uint8_t)(k * 131 + i * 7 + 1);
}

static void make_payload(uint8_t *p, size_t len, uint32_t k) {
  size_t i;
  for (i = 0; i < len; ++i) {
    p[i] = i < 4 ? (uint8_t)(k >> (8 * i)) : pattern(k, i);
  }
}

static int host_of(const ckt_addr *a, uint16_t *port) {
  struct sockaddr_in in;
  uint32_t ip;
  cr_assert_eq(a->ss.ss_family, AF_INET);
  memcpy(&in, &a->ss, sizeof(in));
  ip = ntohl(in.sin_addr.s_addr);
  cr_assert_eq(ip >> 16, 127u << 8 | 77u, "from address outside 127.77/16");
  *port = ntohs(in.sin_port);
  return (int)(((ip >> 8) & 0xFF) * 250 + (ip & 0xFF) - 1);
}

static void on_datagram(void *user, const ckt_addr *from, const uint8_t *data,
                        size_t len) {
  peer *p = user;
  rec *r;
  size_t i;
  if (p->n == p->cap) {
    p->cap = p->cap ? 2 * p->cap : 256;
    p->log = realloc(p->log, p->cap * sizeof(*p->log));
    cr_assert_not_null(p->log);
  }
  r = &p->log[p->n++];
  r->t = ckt_sim_now(p->s);
  r->from = host_of(from, &r->port);
  r->len = len;
  r->k = 0;
  for (i = 0; i < 4 && i < len; ++i) {
    r->k |= (uint32_t)data[i] << (8 * i);
  }
  r->intact = 1;
  for (i = 4; i < len; ++i) {
    r->intact &= data[i] == pattern(r->k, i);
  }
  r->sum = fnv(14695981039346656037ull, data, len);
}

static void on_batch(void *user) {
  ((peer *)user)->batches++;
}

static void peer_bind(peer *p, ckt_sim *s, ckt_sim_host *h, uint16_t port) {
  sim_receiver r = {on_datagram, on_batch, p};
  p->s = s;
  p->h = h;
  cr_assert_eq(sim_host_bind(h, port, &r, &p->rt, &p->addr), CKT_OK);
}

static void peer_new(peer *p, ckt_sim *s, uint16_t port) {
  ckt_sim_host *h;
  memset(p, 0, sizeof(*p));
  cr_assert_eq(ckt_sim_host_new(s, &h), CKT_OK);
  peer_bind(p, s, h, port);
}

static void peer_free(peer *p) {
  if (sim_host_is_bound(p->h)) {
    sim_host_unbind(p->h);
  }
  free(p->log);
  free(p->sent_at);
  p->log = NULL;
  p->sent_at = NULL;
  p->n = p->cap = 0;
}

/* Sends datagram k of len bytes from p to q (as one datagram). */
static void send_k(peer *p, const peer *q, uint32_t k, size_t len) {
  uint8_t buf[4096];
  cr_assert_leq(len, sizeof(buf));
  make_payload(buf, len, k);
  cr_assert_eq(p->rt->ops->send(p->rt, &q->addr, buf, len, 0), CKT_OK);
}

static void pace_fire(void *arg) {
  peer *p = arg;
  p->sent_at[p->next_k] = p->rt->ops->now(p->rt);
  send_k(p, p->dst, p->next_k, p->len);
  if (++p->next_k < p->count) {
    p->rt->ops->timer_arm(p->rt, p->pace, p->rt->ops->now(p->rt) + p->interval);
  }
}

/* From now on, p sends count datagrams of len bytes to q, one per
 * interval (the first right away). */
static void pace(peer *p, peer *q, uint32_t count, size_t len,
                 uint64_t interval) {
  p->dst = q;
  p->count = count;
  p->len = len;
  p->interval = interval;
  p->next_k = 0;
  p->sent_at = calloc(count, sizeof(*p->sent_at));
  cr_assert_not_null(p->sent_at);
  p->pace = p->rt->ops->timer_new(p->rt, pace_fire, p);
  cr_assert_not_null(p->pace);
  p->rt->ops->timer_arm(p->rt, p->pace, p->rt->ops->now(p->rt));
}

static ckt_sim *sim_with(uint64_t seed, const ckt_sim_link *l) {
  ckt_sim *s;
  cr_assert_eq(ckt_sim_new(seed, l, &s), CKT_OK);
  return s;
}

static uint64_t drops(const ckt_sim_stats *st) {
  return st->dropped_loss + st->dropped_partition + st->dropped_fault +
         st->dropped_down + st->dropped_queue + st->dropped_mtu +
         st->dropped_unbound;
}

/* With nothing in flight, every datagram sent is accounted for. */
static void assert_balanced(ckt_sim *s) {
  ckt_sim_stats st;
  ckt_sim_get_stats(s, &st);
  cr_assert_eq(ckt_sim_next_time(s), UINT64_MAX, "events still queued");
  cr_assert_eq(
      st.datagrams_sent + st.duplicated, st.datagrams_delivered + drops(&st),
      "sent %llu + dup %llu != delivered %llu + dropped %llu",
      (unsigned long long)st.datagrams_sent, (unsigned long long)st.duplicated,
      (unsigned long long)st.datagrams_delivered,
      (unsigned long long)drops(&st));
}

/* ---- the event queue ----------------------------------------------------- */

static uint64_t xorshift(uint64_t *x) {
  *x ^= *x << 13;
  *x ^= *x >> 7;
  *x ^= *x << 17;
  return *x;
}

#define QN 300

typedef struct qmodel {
  sim_qnode nodes[QN];
  int queued[QN];
  uint64_t time[QN], seq[QN];
  size_t n;
} qmodel;

/* The model's first queued node (by time, then seq), -1 if none. */
static int qmodel_first(const qmodel *m) {
  int i, best = -1;
  for (i = 0; i < QN; ++i) {
    if (m->queued[i] &&
        (best < 0 || m->time[i] < m->time[best] ||
         (m->time[i] == m->time[best] && m->seq[i] < m->seq[best]))) {
      best = i;
    }
  }
  return best;
}

/* Every entry no earlier than its parent. */
static void heap_check(const sim_queue *q) {
  uint32_t k;
  for (k = 1; k < q->n; ++k) {
    cr_assert(!(q->ents[k].key < q->ents[(k - 1) / 2].key), "heap order");
  }
}

static void qmodel_check(const qmodel *m, const sim_queue *q) {
  int i;
  cr_assert_eq(q->n, m->n);
  for (i = 0; i < QN; ++i) {
    cr_assert_eq(sim_qnode_queued(&m->nodes[i]), m->queued[i]);
    if (m->queued[i]) {
      cr_assert_eq(q->ents[m->nodes[i].idx].node, &m->nodes[i]);
    }
  }
}

Test(sim, queue_matches_a_naive_model) {
  static qmodel m;
  sim_queue q;
  uint64_t x = 88172645463325252ull, seq = 0;
  int step, i;
  sim_queue_init(&q);
  cr_assert_eq(sim_queue_reserve(&q, QN), CKT_OK);
  for (i = 0; i < QN; ++i) {
    m.nodes[i].idx = SIM_QUEUE_NONE;
  }
  for (step = 0; step < 200000; ++step) {
    i = (int)(xorshift(&x) % QN);
    /* Few distinct times: ties are decided by seq. */
    uint64_t t = xorshift(&x) % 50;
    /* Phases that fill and drain, so every size from empty to full is
     * met (small heaps have their own corner cases). */
    uint64_t op = xorshift(&x) % 8;
    if ((step / 3000) % 2 == 1) {
      op = op < 5 ? 3 : op - 5; /* mostly pops */
    } else {
      op = op < 5 ? op % 2 : op - 5; /* mostly pushes */
    }
    switch (op) {
    case 0:
    case 1:
      if (m.queued[i]) {
        sim_queue_update(&q, &m.nodes[i], t, seq);
      } else {
        sim_queue_push(&q, &m.nodes[i], t, seq);
        m.queued[i] = 1;
        m.n++;
      }
      m.time[i] = t;
      m.seq[i] = seq++;
      break;
    case 2:
      sim_queue_remove(&q, &m.nodes[i]); /* queued or not */
      m.n -= (size_t)m.queued[i];
      m.queued[i] = 0;
      break;
    default: {
      int want = qmodel_first(&m);
      sim_qnode *got = sim_queue_pop(&q);
      cr_assert_eq(got, want < 0 ? NULL : &m.nodes[want], "step %d", step);
      if (want >= 0) {
        cr_assert_eq(got->time, m.time[want]);
        m.queued[want] = 0;
        m.n--;
      }
    }
    }
    heap_check(&q);
    if (step % 97 == 0) {
      qmodel_check(&m, &q);
    }
  }
  qmodel_check(&m, &q);
  while (m.n > 0) {
    int want = qmodel_first(&m);
    cr_assert_eq(sim_queue_pop(&q), &m.nodes[want]);
    m.queued[want] = 0;
    m.n--;
  }
  cr_assert_null(sim_queue_pop(&q));
  sim_queue_free(&q);
}

/* ---- hosts and addresses ------------------------------------------------- */

Test(sim, hosts_get_addresses_by_index_up_to_the_limit) {
  ckt_sim *s = sim_with(1, NULL);
  ckt_sim_host *h = NULL, *extra = NULL;
  int i;
  for (i = 0; i < CKT_SIM_MAX_HOSTS; ++i) {
    cr_assert_eq(ckt_sim_host_new(s, &h), CKT_OK);
    cr_assert_eq(ckt_sim_host_index(h), i);
  }
  cr_assert_eq(ckt_sim_host_new(s, &extra), CKT_ERR_LIMIT);
  cr_assert_null(extra);
  cr_assert_eq(ckt_sim_host_count(s), CKT_SIM_MAX_HOSTS);
  cr_assert_str_eq(ckt_sim_host_ip(ckt_sim_host_at(s, 0)), "127.77.0.1");
  cr_assert_str_eq(ckt_sim_host_ip(ckt_sim_host_at(s, 249)), "127.77.0.250");
  cr_assert_str_eq(ckt_sim_host_ip(ckt_sim_host_at(s, 250)), "127.77.1.1");
  cr_assert_str_eq(ckt_sim_host_ip(ckt_sim_host_at(s, 4095)), "127.77.16.96");
  cr_assert_null(ckt_sim_host_at(s, CKT_SIM_MAX_HOSTS));
  cr_assert_null(ckt_sim_host_at(s, -1));
  ckt_sim_free(s);
}

Test(sim, second_simulation_on_a_thread_is_refused) {
  ckt_sim *s = sim_with(1, NULL), *t = NULL;
  cr_assert_eq(ckt_sim_new(2, NULL, &t), CKT_ERR_INVALID_ARGUMENT);
  cr_assert_null(t);
  ckt_sim_free(s);
  cr_assert_eq(ckt_sim_new(2, NULL, &t), CKT_OK);
  cr_assert_eq(ckt_sim_seed(t), 2);
  ckt_sim_free(t);
}

Test(sim, bind_refuses_a_second_binding_and_gives_the_address) {
  ckt_sim *s = sim_with(1, NULL);
  peer a;
  ckt_runtime *rt;
  char buf[CKT_ADDR_STRLEN];
  sim_receiver r = {on_datagram, on_batch, &a};
  peer_new(&a, s, PORT);
  ckt_addr_format(&a.addr, buf, sizeof(buf));
  cr_assert_str_eq(buf, "127.77.0.1:7100");
  cr_assert(sim_host_is_bound(a.h));
  cr_assert_eq(sim_host_bind(a.h, PORT + 1, &r, &rt, NULL),
               CKT_ERR_INVALID_ARGUMENT);
  sim_host_unbind(a.h);
  cr_assert_not(sim_host_is_bound(a.h));
  peer_free(&a);
  ckt_sim_free(s);
}

/* ---- delays -------------------------------------------------------------- */

static void send_one_later(ckt_sim *s, void *user) {
  peer *p = user;
  (void)s;
  send_k(p, p->dst, 99, 200);
}

Test(sim, latency_is_exact_and_the_clock_moves_to_until) {
  ckt_sim_link l = {.latency_ns = 5 * MS};
  ckt_sim *s = sim_with(1, &l);
  peer a, b;
  char buf[CKT_ADDR_STRLEN];
  ckt_sim_stats st;
  size_t i;
  peer_new(&a, s, PORT);
  peer_new(&b, s, 9000);
  for (i = 0; i < 3; ++i) {
    send_k(&a, &b, (uint32_t)i, 100 + i);
  }
  a.dst = &b;
  cr_assert_eq(ckt_sim_at(s, 2 * MS, send_one_later, &a), CKT_OK);
  cr_assert_eq(ckt_sim_next_time(s), 2 * MS);
  ckt_sim_run(s, 20 * MS);
  cr_assert_eq(ckt_sim_now(s), 20 * MS);
  cr_assert_eq(b.n, 4);
  for (i = 0; i < 3; ++i) {
    cr_assert_eq(b.log[i].t, 5 * MS);
    cr_assert_eq(b.log[i].k, i);
    cr_assert_eq(b.log[i].len, 100 + i);
    cr_assert(b.log[i].intact);
    cr_assert_eq(b.log[i].from, 0);
    cr_assert_eq(b.log[i].port, PORT);
  }
  cr_assert_eq(b.log[3].t, 7 * MS);
  cr_assert_eq(b.log[3].k, 99);
  cr_assert_eq(b.batches, 2, "three at 5 ms are one batch, then one");
  ckt_addr_format(&b.addr, buf, sizeof(buf));
  cr_assert_str_eq(buf, "127.77.0.2:9000");
  ckt_sim_get_stats(s, &st);
  cr_assert_eq(st.datagrams_sent, 4);
  cr_assert_eq(st.datagrams_delivered, 4);
  cr_assert_eq(st.bytes_delivered, 100 + 101 + 102 + 200);
  cr_assert_eq(sim_host_get_counters(b.h)->datagrams_received, 4);
  cr_assert_eq(sim_host_get_counters(a.h)->bytes_sent, 503);
  assert_balanced(s);
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
}

Test(sim, jitter_is_bounded_and_keeps_order) {
  ckt_sim_link l = {.latency_ns = 1 * MS, .jitter_ns = 500 * US};
  ckt_sim *s = sim_with(7, &l);
  peer a, b;
  size_t i, exact = 0;
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  pace(&a, &b, 2000, 300, 10 * US);
  ckt_sim_run(s, 1000 * MS);
  cr_assert_eq(b.n, 2000);
  for (i = 0; i < b.n; ++i) {
    uint64_t sent = a.sent_at[b.log[i].k];
    cr_assert_eq(b.log[i].k, i, "datagram %zu arrived out of order", i);
    cr_assert_geq(b.log[i].t, sent + 1 * MS);
    cr_assert_lt(b.log[i].t, sent + 1 * MS + 500 * US);
    exact += b.log[i].t == sent + 1 * MS;
  }
  cr_assert_lt(exact, 100, "jitter did not vary the delay");
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
}

Test(sim, bandwidth_serializes_and_tail_drops) {
  /* 8 Mbit/s: one byte per microsecond; room for 10 datagrams. */
  ckt_sim_link l = {
      .latency_ns = 1 * MS, .bandwidth_bps = 8000000, .queue_bytes = 10000};
  ckt_sim *s = sim_with(1, &l);
  peer a, b;
  ckt_sim_stats st;
  size_t i;
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  for (i = 0; i < 20; ++i) {
    send_k(&a, &b, (uint32_t)i, 1000);
  }
  ckt_sim_run(s, 50 * MS);
  ckt_sim_get_stats(s, &st);
  cr_assert_eq(st.dropped_queue, 10);
  cr_assert_eq(b.n, 10);
  for (i = 0; i < 10; ++i) {
    cr_assert_eq(b.log[i].k, i);
    cr_assert_eq(b.log[i].t, (i + 1) * MS + 1 * MS);
  }
  /* The queue drained: the next one only waits for itself. */
  send_k(&a, &b, 20, 500);
  ckt_sim_run(s, 100 * MS);
  cr_assert_eq(b.n, 11);
  cr_assert_eq(b.log[10].t, 50 * MS + 500 * US + 1 * MS);
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
}

Test(sim, loss_rate_is_near_the_configured_ppm) {
  ckt_sim_link l = {.latency_ns = 1 * MS, .loss_ppm = 100000};
  ckt_sim *s = sim_with(42, &l);
  peer a, b;
  ckt_sim_stats st;
  size_t i;
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  for (i = 0; i < 20000; ++i) {
    send_k(&a, &b, (uint32_t)i, 64);
  }
  ckt_sim_run(s, 10 * MS);
  ckt_sim_get_stats(s, &st);
  /* 2000 expected, standard deviation ~42. */
  cr_assert(st.dropped_loss > 1800 && st.dropped_loss < 2200, "lost %llu",
            (unsigned long long)st.dropped_loss);
  cr_assert_eq(b.n, 20000 - st.dropped_loss);
  for (i = 1; i < b.n; ++i) {
    cr_assert_gt(b.log[i].k, b.log[i - 1].k);
  }
  assert_balanced(s);
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
}

Test(sim, duplicates_arrive_twice) {
  ckt_sim_link l = {
      .latency_ns = 1 * MS, .jitter_ns = 200 * US, .dup_ppm = 200000};
  ckt_sim *s = sim_with(3, &l);
  peer a, b;
  ckt_sim_stats st;
  uint8_t *seen = calloc(5000, 1);
  size_t i, twice = 0;
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  pace(&a, &b, 5000, 100, 20 * US);
  ckt_sim_run(s, 1000 * MS);
  ckt_sim_get_stats(s, &st);
  cr_assert(st.duplicated > 850 && st.duplicated < 1150, "duplicated %llu",
            (unsigned long long)st.duplicated);
  cr_assert_eq(b.n, 5000 + st.duplicated);
  for (i = 0; i < b.n; ++i) {
    cr_assert(b.log[i].intact);
    cr_assert_lt(++seen[b.log[i].k], 3);
    twice += seen[b.log[i].k] == 2;
    /* A copy has its own jitter but stays in order too. */
    cr_assert(i == 0 || b.log[i].k >= b.log[i - 1].k);
    cr_assert_lt(b.log[i].t, a.sent_at[b.log[i].k] + 1 * MS + 200 * US);
  }
  cr_assert_eq(twice, st.duplicated);
  assert_balanced(s);
  free(seen);
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
}

Test(sim, reordering_is_bounded) {
  ckt_sim_link l = {.latency_ns = 1 * MS,
                    .jitter_ns = 100 * US,
                    .reorder_ppm = 100000,
                    .reorder_ns = 2 * MS};
  ckt_sim *s = sim_with(5, &l);
  peer a, b;
  ckt_sim_stats st;
  size_t i, inversions = 0;
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  pace(&a, &b, 2000, 100, 10 * US);
  ckt_sim_run(s, 1000 * MS);
  ckt_sim_get_stats(s, &st);
  cr_assert_eq(b.n, 2000);
  cr_assert(st.reordered > 150 && st.reordered < 250, "reordered %llu",
            (unsigned long long)st.reordered);
  for (i = 0; i < b.n; ++i) {
    uint64_t sent = a.sent_at[b.log[i].k];
    cr_assert_geq(b.log[i].t, sent + 1 * MS);
    cr_assert_lt(b.log[i].t, sent + 1 * MS + 100 * US + 2 * MS);
    inversions += i > 0 && b.log[i].k < b.log[i - 1].k;
  }
  cr_assert_gt(inversions, 50, "only %zu out of order", inversions);
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
}

Test(sim, mtu_drops_what_is_too_big) {
  ckt_sim *s = sim_with(1, NULL);
  peer a, b;
  ckt_sim_stats st;
  ckt_sim_link l = {.latency_ns = 1 * MS, .mtu = 500};
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  send_k(&a, &b, 1, 1472); /* the default: Ethernet's */
  send_k(&a, &b, 2, 1473);
  ckt_sim_link_set(s, a.h, b.h, &l);
  send_k(&a, &b, 3, 500);
  send_k(&a, &b, 4, 501);
  send_k(&b, &a, 5, 1000); /* the other direction keeps the default */
  ckt_sim_run(s, 10 * MS);
  ckt_sim_get_stats(s, &st);
  cr_assert_eq(st.dropped_mtu, 2);
  cr_assert_eq(b.n, 2);
  cr_assert_eq(b.log[0].k, 1);
  cr_assert_eq(b.log[1].k, 3);
  cr_assert_eq(a.n, 1);
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
}

Test(sim, links_are_per_direction_and_set_all_clears_overrides) {
  ckt_sim *s = sim_with(1, NULL);
  ckt_sim_host *a, *b;
  ckt_sim_link got, l = {.latency_ns = 7 * MS, .loss_ppm = 5};
  ckt_sim_link all = {.latency_ns = 3 * MS};
  cr_assert_eq(ckt_sim_host_new(s, &a), CKT_OK);
  cr_assert_eq(ckt_sim_host_new(s, &b), CKT_OK);
  ckt_sim_link_get(s, a, b, &got);
  cr_assert_eq(got.latency_ns, 1 * MS, "the default default: 1 ms");
  ckt_sim_link_set(s, a, b, &l);
  ckt_sim_link_get(s, a, b, &got);
  cr_assert_eq(got.latency_ns, 7 * MS);
  cr_assert_eq(got.loss_ppm, 5);
  ckt_sim_link_get(s, b, a, &got);
  cr_assert_eq(got.latency_ns, 1 * MS);
  ckt_sim_link_set_all(s, &all);
  ckt_sim_link_get(s, a, b, &got);
  cr_assert_eq(got.latency_ns, 3 * MS);
  cr_assert_eq(got.loss_ppm, 0);
  ckt_sim_free(s);
}

/* ---- partitions, isolation, crashes, flaky hosts ------------------------- */

static size_t count_from(const peer *p, int from) {
  size_t i, n = 0;
  for (i = 0; i < p->n; ++i) {
    n += p->log[i].from == from;
  }
  return n;
}

Test(sim, partitions_full_one_way_heal_and_heal_all) {
  ckt_sim *s = sim_with(1, NULL);
  peer a, b, c;
  ckt_sim_stats st;
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  peer_new(&c, s, PORT);

  ckt_sim_partition(s, a.h, b.h, 0);
  send_k(&a, &b, 1, 10);
  send_k(&b, &a, 2, 10);
  send_k(&a, &c, 3, 10);
  ckt_sim_run(s, 10 * MS);
  cr_assert_eq(a.n + b.n, 0);
  cr_assert_eq(c.n, 1);
  ckt_sim_get_stats(s, &st);
  cr_assert_eq(st.dropped_partition, 2);

  ckt_sim_heal(s, a.h, b.h);
  ckt_sim_partition(s, a.h, b.h, 1);
  send_k(&a, &b, 4, 10);
  send_k(&b, &a, 5, 10);
  ckt_sim_run(s, 20 * MS);
  cr_assert_eq(b.n, 0, "a -> b is cut");
  cr_assert_eq(a.n, 1, "b -> a is not");

  /* A cut made while a datagram is in flight catches it on arrival. */
  ckt_sim_heal(s, a.h, b.h);
  send_k(&a, &b, 6, 10);
  ckt_sim_run(s, 20 * MS + 500 * US);
  ckt_sim_partition(s, b.h, a.h, 0);
  ckt_sim_run(s, 30 * MS);
  cr_assert_eq(b.n, 0);

  ckt_sim_isolate(c.h, 1);
  ckt_sim_heal_all(s);
  send_k(&a, &b, 7, 10);
  send_k(&b, &a, 8, 10);
  send_k(&a, &c, 9, 10);
  ckt_sim_run(s, 40 * MS);
  cr_assert_eq(b.n, 1);
  cr_assert_eq(a.n, 2);
  cr_assert_eq(c.n, 2);
  ckt_sim_get_stats(s, &st);
  cr_assert_eq(st.dropped_partition, 4);
  assert_balanced(s);
  peer_free(&a);
  peer_free(&b);
  peer_free(&c);
  ckt_sim_free(s);
}

Test(sim, isolation_cuts_a_host_from_everyone) {
  ckt_sim *s = sim_with(1, NULL);
  peer a, b, c;
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  peer_new(&c, s, PORT);
  ckt_sim_isolate(a.h, 1);
  send_k(&a, &b, 1, 10);
  send_k(&b, &a, 2, 10);
  send_k(&c, &a, 3, 10);
  send_k(&c, &b, 4, 10);
  ckt_sim_run(s, 10 * MS);
  cr_assert_eq(a.n, 0);
  cr_assert_eq(b.n, 1);
  cr_assert_eq(count_from(&b, 2), 1);
  ckt_sim_isolate(a.h, 0);
  send_k(&a, &b, 5, 10);
  send_k(&c, &a, 6, 10);
  ckt_sim_run(s, 20 * MS);
  cr_assert_eq(a.n, 1);
  cr_assert_eq(b.n, 2);
  peer_free(&a);
  peer_free(&b);
  peer_free(&c);
  ckt_sim_free(s);
}

static int fired;

static void count_fire(void *arg) {
  (void)arg;
  fired++;
}

static void down_at(ckt_sim *s, void *user) {
  (void)s;
  ckt_sim_host_down(user);
}

static void up_at(ckt_sim *s, void *user) {
  (void)s;
  ckt_sim_host_up(user);
}

static int due_order[8], ndue_order;

static void note_due(void *arg) {
  if (ndue_order < 8) {
    due_order[ndue_order++] = (int)(intptr_t)arg;
  }
  fired++;
}

Test(sim, a_host_that_is_down_drops_traffic_and_is_frozen) {
  ckt_sim *s = sim_with(1, NULL);
  peer a, b;
  ckt_sim_stats st;
  ckt_timer *t;
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  fired = 0;
  ndue_order = 0;
  t = b.rt->ops->timer_new(b.rt, note_due, (void *)(intptr_t)1);
  b.rt->ops->timer_arm(b.rt, t, 5 * MS);
  send_k(&a, &b, 1, 10); /* in flight when b goes down */
  cr_assert_eq(ckt_sim_at(s, 500 * US, down_at, b.h), CKT_OK);
  cr_assert_eq(ckt_sim_at(s, 7 * MS, up_at, b.h), CKT_OK);
  ckt_sim_run(s, 2 * MS);
  cr_assert_not(ckt_sim_host_is_up(b.h));
  send_k(&a, &b, 2, 10);
  send_k(&b, &a, 3, 10);
  cr_assert_eq(b.rt->ops->post(b.rt, note_due, (void *)(intptr_t)2), CKT_OK);
  ckt_sim_run(s, 6 * MS);
  cr_assert_eq(fired, 0, "a timer or post ran on a host that is down");
  ckt_sim_run(s, 20 * MS);
  cr_assert(ckt_sim_host_is_up(b.h));
  /* Frozen, not wiped: the post (due at 2 ms) and the timer (due at
   * 5 ms) waited, and ran once the host was up, in the order they came
   * due. */
  cr_assert_eq(fired, 2);
  cr_assert_eq(due_order[0], 2);
  cr_assert_eq(due_order[1], 1);
  cr_assert_eq(a.n + b.n, 0);
  ckt_sim_get_stats(s, &st);
  cr_assert_eq(st.dropped_down, 3);
  cr_assert_eq(st.timers_fired, 1);
  cr_assert_eq(st.posts_run, 1);
  send_k(&a, &b, 4, 10);
  b.rt->ops->timer_arm(b.rt, t, 25 * MS);
  ckt_sim_run(s, 30 * MS);
  cr_assert_eq(b.n, 1);
  cr_assert_eq(fired, 3);
  b.rt->ops->timer_free(b.rt, t);
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
}

Test(sim, a_timer_rearmed_or_freed_while_down_is_not_parked) {
  ckt_sim *s = sim_with(2, NULL);
  peer b;
  ckt_timer *t1, *t2;
  peer_new(&b, s, PORT);
  fired = 0;
  ndue_order = 0;
  t1 = b.rt->ops->timer_new(b.rt, note_due, (void *)(intptr_t)1);
  t2 = b.rt->ops->timer_new(b.rt, note_due, (void *)(intptr_t)2);
  b.rt->ops->timer_arm(b.rt, t1, 1 * MS);
  b.rt->ops->timer_arm(b.rt, t2, 2 * MS);
  ckt_sim_host_down(b.h);
  ckt_sim_run(s, 3 * MS);                  /* both came due: parked */
  b.rt->ops->timer_arm(b.rt, t1, 10 * MS); /* re-armed: not parked now */
  b.rt->ops->timer_free(b.rt, t2);         /* freed while parked */
  ckt_sim_host_up(b.h);
  ckt_sim_run(s, 5 * MS);
  cr_assert_eq(fired, 0);
  ckt_sim_run(s, 11 * MS);
  cr_assert_eq(fired, 1);
  cr_assert_eq(due_order[0], 1);
  b.rt->ops->timer_free(b.rt, t1);
  peer_free(&b);
  ckt_sim_free(s);
}

Test(sim, flaky_hosts_drop_a_share_of_their_traffic) {
  ckt_sim *s = sim_with(11, NULL);
  peer a, b, c;
  ckt_sim_stats st;
  size_t i;
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  peer_new(&c, s, PORT);
  ckt_sim_host_flaky(a.h, 500000, 0);
  for (i = 0; i < 4000; ++i) {
    send_k(&a, &b, (uint32_t)i, 10);
  }
  ckt_sim_run(s, 10 * MS);
  ckt_sim_get_stats(s, &st);
  cr_assert(st.dropped_fault > 1850 && st.dropped_fault < 2150, "%llu",
            (unsigned long long)st.dropped_fault);
  cr_assert_eq(b.n, 4000 - st.dropped_fault);

  ckt_sim_host_flaky(a.h, 0, 0);
  ckt_sim_host_flaky(c.h, 0, 250000);
  for (i = 0; i < 4000; ++i) {
    send_k(&a, &c, (uint32_t)i, 10);
    send_k(&a, &b, (uint32_t)i, 10);
  }
  ckt_sim_run(s, 20 * MS);
  cr_assert(c.n > 2850 && c.n < 3150, "c got %zu", c.n);
  cr_assert_eq(b.n, 4000 - st.dropped_fault + 4000);
  assert_balanced(s);
  peer_free(&a);
  peer_free(&b);
  peer_free(&c);
  ckt_sim_free(s);
}

Test(sim, link_send_and_receive_faults) {
  ckt_sim_link l = {.latency_ns = 1 * MS, .send_fault_ppm = 300000};
  ckt_sim *s = sim_with(12, &l);
  peer a, b;
  ckt_sim_stats st;
  size_t i;
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  for (i = 0; i < 4000; ++i) {
    send_k(&a, &b, (uint32_t)i, 10);
  }
  ckt_sim_run(s, 10 * MS);
  l.send_fault_ppm = 0;
  l.recv_fault_ppm = 300000;
  ckt_sim_link_set(s, a.h, b.h, &l);
  for (i = 0; i < 4000; ++i) {
    send_k(&a, &b, (uint32_t)i, 10);
  }
  ckt_sim_run(s, 20 * MS);
  ckt_sim_get_stats(s, &st);
  /* 2400 expected in all. */
  cr_assert(st.dropped_fault > 2200 && st.dropped_fault < 2600, "%llu",
            (unsigned long long)st.dropped_fault);
  cr_assert_eq(b.n, 8000 - st.dropped_fault);
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
}

/* ---- addresses that do not answer ---------------------------------------- */

static ckt_addr addr_of(const char *ip, const char *port) {
  ckt_addr a;
  cr_assert_eq(ckt_addr_parse(ip, port, &a), CKT_OK);
  return a;
}

Test(sim, unbound_ports_and_unknown_addresses_drop) {
  ckt_sim *s = sim_with(1, NULL);
  peer a, b;
  ckt_sim_stats st;
  uint8_t buf[10] = {0};
  ckt_addr wrong_port = addr_of("127.77.0.2", "7101");
  ckt_addr no_host = addr_of("127.77.0.9", "7100");
  ckt_addr elsewhere = addr_of("10.0.0.1", "7100");
  ckt_addr v6 = addr_of("::1", "7100");
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  cr_assert_eq(a.rt->ops->send(a.rt, &wrong_port, buf, 10, 0), CKT_OK);
  cr_assert_eq(a.rt->ops->send(a.rt, &no_host, buf, 10, 0), CKT_OK);
  cr_assert_eq(a.rt->ops->send(a.rt, &elsewhere, buf, 10, 0), CKT_OK);
  cr_assert_eq(a.rt->ops->send(a.rt, &v6, buf, 10, 0), CKT_OK);
  ckt_sim_run(s, 10 * MS);
  ckt_sim_get_stats(s, &st);
  cr_assert_eq(st.dropped_unbound, 4);
  cr_assert_eq(b.n, 0);
  assert_balanced(s);
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
}

Test(sim, datagrams_for_an_ended_binding_are_dropped_later_ones_delivered) {
  ckt_sim *s = sim_with(1, NULL);
  peer a, b;
  ckt_sim_stats st;
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  send_k(&a, &b, 1, 10); /* for b's first binding */
  ckt_sim_run(s, 500 * US);
  sim_host_unbind(b.h);
  send_k(&a, &b, 2, 10); /* to the address while nothing is bound */
  peer_bind(&b, s, b.h, PORT);
  send_k(&a, &b, 3, 10); /* for the second binding */
  ckt_sim_run(s, 10 * MS);
  cr_assert_eq(b.n, 2);
  cr_assert_eq(b.log[0].k, 2);
  cr_assert_eq(b.log[1].k, 3);
  ckt_sim_get_stats(s, &st);
  cr_assert_eq(st.dropped_unbound, 1);
  /* A binding on another port does not get what was sent to this one. */
  send_k(&a, &b, 4, 10);
  sim_host_unbind(b.h);
  peer_bind(&b, s, b.h, PORT + 1);
  ckt_sim_run(s, 20 * MS);
  cr_assert_eq(b.n, 2);
  ckt_sim_get_stats(s, &st);
  cr_assert_eq(st.dropped_unbound, 2);
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
}

Test(sim, send_splits_into_segments) {
  ckt_sim *s = sim_with(1, NULL);
  peer a, b;
  uint8_t buf[3500];
  size_t i;
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  for (i = 0; i < sizeof(buf); ++i) {
    buf[i] = (uint8_t)(i * 13);
  }
  cr_assert_eq(a.rt->ops->send(a.rt, &b.addr, buf, 3500, 1000), CKT_OK);
  cr_assert_eq(a.rt->ops->send(a.rt, &b.addr, buf, 1200, 0), CKT_OK);
  ckt_sim_run(s, 10 * MS);
  cr_assert_eq(b.n, 5);
  cr_assert_eq(b.log[0].len, 1000);
  cr_assert_eq(b.log[1].len, 1000);
  cr_assert_eq(b.log[2].len, 1000);
  cr_assert_eq(b.log[3].len, 500);
  cr_assert_eq(b.log[4].len, 1200);
  /* Each segment starts where the last ended: its first bytes tell. */
  for (i = 0; i < 4; ++i) {
    uint32_t k = (uint32_t)buf[i * 1000] | (uint32_t)buf[i * 1000 + 1] << 8 |
                 (uint32_t)buf[i * 1000 + 2] << 16 |
                 (uint32_t)buf[i * 1000 + 3] << 24;
    cr_assert_eq(b.log[i].k, k);
  }
  cr_assert_eq(b.batches, 1, "all due at once: one batch");
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
}

/* ---- timers and posts ---------------------------------------------------- */

#define ORDER_MAX 64

typedef struct order_ctx {
  peer *p;
  int got[ORDER_MAX];
  uint64_t at[ORDER_MAX];
  int n;
  ckt_timer *timers[8];
  int rearm_left;
} order_ctx;

typedef struct tag {
  order_ctx *c;
  int id;
} tag;

static void note(order_ctx *c, int id) {
  cr_assert_lt(c->n, ORDER_MAX);
  c->at[c->n] = c->p->rt->ops->now(c->p->rt);
  c->got[c->n++] = id;
}

static void note_fire(void *arg) {
  tag *t = arg;
  note(t->c, t->id);
}

Test(sim, timers_fire_in_time_then_arming_order) {
  ckt_sim *s = sim_with(1, NULL);
  peer a;
  order_ctx c = {0};
  tag tags[5];
  const uint64_t when[5] = {3 * MS, 1 * MS, 2 * MS, 1 * MS, 1 * MS};
  const int want[5] = {3, 4, 1, 2, 0};
  int i;
  peer_new(&a, s, PORT);
  c.p = &a;
  for (i = 0; i < 5; ++i) {
    tags[i].c = &c;
    tags[i].id = i;
    c.timers[i] = a.rt->ops->timer_new(a.rt, note_fire, &tags[i]);
    a.rt->ops->timer_arm(a.rt, c.timers[i], when[i]);
  }
  /* Re-arming moves a timer behind the others due at the same time. */
  a.rt->ops->timer_arm(a.rt, c.timers[1], 1 * MS);
  ckt_sim_run(s, 10 * MS);
  cr_assert_eq(c.n, 5);
  for (i = 0; i < 5; ++i) {
    cr_assert_eq(c.got[i], want[i], "position %d: %d", i, c.got[i]);
    cr_assert_eq(c.at[i], when[want[i]]);
  }
  /* Disarmed, and moved later: fires once, at the later time. */
  a.rt->ops->timer_arm(a.rt, c.timers[0], 12 * MS);
  a.rt->ops->timer_arm(a.rt, c.timers[0], CKT_TIME_NEVER);
  a.rt->ops->timer_arm(a.rt, c.timers[1], 11 * MS);
  a.rt->ops->timer_arm(a.rt, c.timers[1], 15 * MS);
  ckt_sim_run(s, 20 * MS);
  cr_assert_eq(c.n, 6);
  cr_assert_eq(c.got[5], 1);
  cr_assert_eq(c.at[5], 15 * MS);
  for (i = 0; i < 5; ++i) {
    a.rt->ops->timer_free(a.rt, c.timers[i]);
  }
  peer_free(&a);
  ckt_sim_free(s);
}

static void rearm_fire(void *arg) {
  order_ctx *c = arg;
  note(c, 100);
  if (--c->rearm_left > 0) {
    c->p->rt->ops->timer_arm(c->p->rt, c->timers[0],
                             c->p->rt->ops->now(c->p->rt) + 2 * MS);
  }
}

/* Frees itself and the timer due right after it. */
static void free_fire(void *arg) {
  order_ctx *c = arg;
  note(c, 200);
  c->p->rt->ops->timer_free(c->p->rt, c->timers[2]);
  c->p->rt->ops->timer_free(c->p->rt, c->timers[1]);
  /* The freed slots may be reused at once. */
  c->timers[3] = c->p->rt->ops->timer_new(c->p->rt, count_fire, NULL);
  c->p->rt->ops->timer_arm(c->p->rt, c->timers[3], 0);
}

Test(sim, timers_rearm_and_free_from_their_callbacks) {
  ckt_sim *s = sim_with(1, NULL);
  peer a;
  order_ctx c = {0};
  peer_new(&a, s, PORT);
  c.p = &a;
  c.rearm_left = 3;
  fired = 0;
  c.timers[0] = a.rt->ops->timer_new(a.rt, rearm_fire, &c);
  c.timers[1] = a.rt->ops->timer_new(a.rt, free_fire, &c);
  c.timers[2] = a.rt->ops->timer_new(a.rt, count_fire, NULL);
  a.rt->ops->timer_arm(a.rt, c.timers[0], 1 * MS);
  a.rt->ops->timer_arm(a.rt, c.timers[1], 4 * MS);
  a.rt->ops->timer_arm(a.rt, c.timers[2], 4 * MS);
  ckt_sim_run(s, 20 * MS);
  cr_assert_eq(c.n, 4);
  cr_assert_eq(c.got[0], 100);
  cr_assert_eq(c.at[0], 1 * MS);
  cr_assert_eq(c.got[1], 100);
  cr_assert_eq(c.at[1], 3 * MS);
  cr_assert_eq(c.got[2], 200);
  cr_assert_eq(c.at[2], 4 * MS);
  cr_assert_eq(c.got[3], 100);
  cr_assert_eq(c.at[3], 5 * MS);
  cr_assert_eq(fired, 1, "the freed timer fired, or the new one did not");
  a.rt->ops->timer_free(a.rt, c.timers[0]);
  a.rt->ops->timer_free(a.rt, c.timers[3]);
  peer_free(&a);
  ckt_sim_free(s);
}

static void note_post(void *arg) {
  note_fire(arg);
}

/* A post that posts: the new one runs after what was already queued. */
static void post_again(void *arg) {
  tag *t = arg;
  note(t->c, t->id);
  t->id += 10;
  cr_assert_eq(t->c->p->rt->ops->post(t->c->p->rt, note_post, t), CKT_OK);
}

Test(sim, past_deadlines_fire_now_after_what_is_queued) {
  ckt_sim *s = sim_with(1, NULL);
  peer a;
  order_ctx c = {0};
  tag t0 = {&c, 0}, t1 = {&c, 1}, t2 = {&c, 2};
  ckt_timer *t;
  peer_new(&a, s, PORT);
  c.p = &a;
  ckt_sim_run(s, 5 * MS);
  cr_assert_eq(a.rt->ops->post(a.rt, note_post, &t0), CKT_OK);
  t = a.rt->ops->timer_new(a.rt, note_fire, &t1);
  a.rt->ops->timer_arm(a.rt, t, 1 * MS); /* in the past */
  cr_assert_eq(a.rt->ops->post(a.rt, post_again, &t2), CKT_OK);
  ckt_sim_run(s, 10 * MS);
  cr_assert_eq(c.n, 4);
  cr_assert_eq(c.got[0], 0);
  cr_assert_eq(c.got[1], 1);
  cr_assert_eq(c.got[2], 2);
  cr_assert_eq(c.got[3], 12);
  cr_assert_eq(c.at[1], 5 * MS);
  cr_assert_eq(c.at[3], 5 * MS);
  a.rt->ops->timer_free(a.rt, t);
  peer_free(&a);
  ckt_sim_free(s);
}

Test(sim, run_posted_runs_pending_posts_now_in_order) {
  ckt_sim *s = sim_with(1, NULL);
  peer a;
  order_ctx c = {0};
  tag t0 = {&c, 0}, t1 = {&c, 1}, t2 = {&c, 2};
  ckt_sim_stats st;
  peer_new(&a, s, PORT);
  c.p = &a;
  cr_assert_eq(a.rt->ops->post(a.rt, note_post, &t0), CKT_OK);
  cr_assert_eq(a.rt->ops->post(a.rt, post_again, &t1), CKT_OK);
  cr_assert_eq(a.rt->ops->post(a.rt, note_post, &t2), CKT_OK);
  sim_host_run_posted(a.h);
  cr_assert_eq(c.n, 4);
  cr_assert_eq(c.got[0], 0);
  cr_assert_eq(c.got[1], 1);
  cr_assert_eq(c.got[2], 2);
  cr_assert_eq(c.got[3], 11, "posted while running: runs too");
  cr_assert_eq(ckt_sim_next_time(s), UINT64_MAX, "left in the queue");
  ckt_sim_run(s, 10 * MS);
  cr_assert_eq(c.n, 4);
  ckt_sim_get_stats(s, &st);
  cr_assert_eq(st.posts_run, 4);
  peer_free(&a);
  ckt_sim_free(s);
}

Test(sim, unbind_frees_timers_and_posts) {
  ckt_sim *s = sim_with(1, NULL);
  peer a;
  ckt_timer *t;
  ckt_sim_stats st;
  peer_new(&a, s, PORT);
  fired = 0;
  t = a.rt->ops->timer_new(a.rt, count_fire, NULL);
  a.rt->ops->timer_arm(a.rt, t, 1 * MS);
  (void)a.rt->ops->timer_new(a.rt, count_fire, NULL); /* never armed */
  cr_assert_eq(a.rt->ops->post(a.rt, count_fire, NULL), CKT_OK);
  sim_host_unbind(a.h);
  cr_assert_eq(ckt_sim_next_time(s), UINT64_MAX);
  ckt_sim_run(s, 10 * MS);
  cr_assert_eq(fired, 0);
  ckt_sim_get_stats(s, &st);
  cr_assert_eq(st.events, 0);
  peer_free(&a);
  ckt_sim_free(s);
}

/* ---- running ------------------------------------------------------------- */

typedef struct call_ctx {
  int got[16];
  uint64_t at[16];
  int n;
  int halt_on;
} call_ctx;

typedef struct call_tag {
  call_ctx *c;
  int id;
} call_tag;

static void on_call(ckt_sim *s, void *user) {
  call_tag *t = user;
  t->c->at[t->c->n] = ckt_sim_now(s);
  t->c->got[t->c->n++] = t->id;
  if (t->id == t->c->halt_on) {
    ckt_sim_halt(s);
  }
}

Test(sim, calls_run_in_order_and_halt_stops_the_run) {
  ckt_sim *s = sim_with(1, NULL);
  call_ctx c = {.halt_on = 2};
  call_tag t[4] = {{&c, 0}, {&c, 1}, {&c, 2}, {&c, 3}};
  uint64_t ran;
  cr_assert_eq(ckt_sim_at(s, 5 * MS, on_call, &t[0]), CKT_OK);
  cr_assert_eq(ckt_sim_at(s, 1 * MS, on_call, &t[1]), CKT_OK);
  cr_assert_eq(ckt_sim_at(s, 3 * MS, on_call, &t[2]), CKT_OK);
  cr_assert_eq(ckt_sim_at(s, 3 * MS, on_call, &t[3]), CKT_OK);
  ran = ckt_sim_run(s, 100 * MS);
  cr_assert_eq(ran, 2);
  cr_assert_eq(ckt_sim_now(s), 3 * MS, "halted: the clock stays");
  cr_assert_eq(ckt_sim_next_time(s), 3 * MS);
  cr_assert_eq(ckt_sim_step(s), 1);
  cr_assert_eq(c.got[2], 3);
  ran = ckt_sim_run(s, 100 * MS);
  cr_assert_eq(ran, 1);
  cr_assert_eq(ckt_sim_now(s), 100 * MS);
  cr_assert_eq(c.n, 4);
  cr_assert_eq(c.got[0], 1);
  cr_assert_eq(c.got[1], 2);
  cr_assert_eq(c.got[3], 0);
  cr_assert_eq(c.at[3], 5 * MS);
  /* In the past: now.  The clock never goes back. */
  cr_assert_eq(ckt_sim_at(s, 1 * MS, on_call, &t[1]), CKT_OK);
  cr_assert_eq(ckt_sim_next_time(s), 100 * MS);
  ckt_sim_run(s, 50 * MS);
  cr_assert_eq(c.n, 4, "due at 100 ms, not by 50 ms");
  cr_assert_eq(ckt_sim_now(s), 100 * MS);
  cr_assert_eq(ckt_sim_step(s), 1);
  cr_assert_eq(c.n, 5);
  cr_assert_eq(c.at[4], 100 * MS);
  cr_assert_eq(ckt_sim_step(s), 0);
  cr_assert_eq(ckt_sim_next_time(s), UINT64_MAX);
  ckt_sim_free(s);
}

typedef struct obs_ctx {
  int kinds[5];
  uint64_t last_time;
  size_t len;
  int from;
} obs_ctx;

static void observe(void *user, const ckt_sim_event *ev) {
  obs_ctx *o = user;
  cr_assert(ev->kind >= 1 && ev->kind <= 4);
  cr_assert_geq(ev->time_ns, o->last_time);
  o->last_time = ev->time_ns;
  o->kinds[ev->kind]++;
  if (ev->kind == CKT_SIM_EV_DATAGRAM) {
    o->len += ev->len;
    o->from = ev->from_host;
    cr_assert_eq(ev->host, 1);
  } else if (ev->kind == CKT_SIM_EV_CALL) {
    cr_assert_eq(ev->host, -1);
  }
}

static void nothing(ckt_sim *s, void *user) {
  (void)s, (void)user;
}

Test(sim, the_observer_sees_every_event) {
  ckt_sim *s = sim_with(1, NULL);
  peer a, b;
  obs_ctx o = {0};
  ckt_sim_stats st;
  ckt_timer *t;
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  ckt_sim_set_observer(s, observe, &o);
  send_k(&a, &b, 1, 30);
  send_k(&a, &b, 2, 40);
  t = a.rt->ops->timer_new(a.rt, count_fire, NULL);
  a.rt->ops->timer_arm(a.rt, t, 2 * MS);
  cr_assert_eq(a.rt->ops->post(a.rt, count_fire, NULL), CKT_OK);
  cr_assert_eq(ckt_sim_at(s, 3 * MS, nothing, NULL), CKT_OK);
  cr_assert_eq(ckt_sim_run(s, 10 * MS), 5);
  cr_assert_eq(o.kinds[CKT_SIM_EV_DATAGRAM], 2);
  cr_assert_eq(o.kinds[CKT_SIM_EV_TIMER], 1);
  cr_assert_eq(o.kinds[CKT_SIM_EV_POST], 1);
  cr_assert_eq(o.kinds[CKT_SIM_EV_CALL], 1);
  cr_assert_eq(o.len, 70);
  cr_assert_eq(o.from, 0);
  ckt_sim_get_stats(s, &st);
  cr_assert_eq(st.events, 5);
  cr_assert_eq(st.timers_fired + st.posts_run + st.calls_run, 3);
  ckt_sim_set_observer(s, NULL, NULL);
  cr_assert_eq(ckt_sim_at(s, 11 * MS, nothing, NULL), CKT_OK);
  ckt_sim_run(s, 20 * MS);
  cr_assert_eq(o.kinds[CKT_SIM_EV_CALL], 1);
  a.rt->ops->timer_free(a.rt, t);
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
}

Test(sim, wall_clock_is_the_epoch_plus_now_plus_skew) {
  ckt_sim *s = sim_with(1, NULL);
  peer a, b;
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  ckt_sim_run(s, 1234 * MS);
  ckt_sim_host_set_skew(b.h, -5 * (int64_t)CKT_SIM_S);
  cr_assert_eq(a.rt->ops->wall(a.rt), CKT_SIM_WALL_EPOCH + 1234 * (int64_t)MS);
  cr_assert_eq(b.rt->ops->wall(b.rt), CKT_SIM_WALL_EPOCH + 1234 * (int64_t)MS -
                                          5 * (int64_t)CKT_SIM_S);
  cr_assert_eq(b.rt->ops->now(b.rt), 1234 * MS, "monotonic is not skewed");
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
}

/* ---- randomness and determinism ------------------------------------------ */

#define CHAOS_HOSTS 4
#define CHAOS_STEPS 3000

typedef struct chaos {
  ckt_sim *s;
  peer p[CHAOS_HOSTS];
  int steps;
} chaos;

typedef struct chaos_result {
  uint64_t trace;
  uint64_t log_hash;
  ckt_sim_stats st;
} chaos_result;

static void chaos_fault(chaos *c) {
  ckt_sim *s = c->s;
  peer *x = &c->p[ckt_sim_rand_below(s, CHAOS_HOSTS)];
  peer *y = &c->p[ckt_sim_rand_below(s, CHAOS_HOSTS)];
  switch (ckt_sim_rand_below(s, 6)) {
  case 0:
    ckt_sim_partition(s, x->h, y->h, (int)ckt_sim_rand_below(s, 2));
    break;
  case 1:
    ckt_sim_heal(s, x->h, y->h);
    break;
  case 2:
    ckt_sim_isolate(x->h, (int)ckt_sim_rand_below(s, 2));
    break;
  case 3:
    if (ckt_sim_host_is_up(x->h)) {
      ckt_sim_host_down(x->h);
    } else {
      ckt_sim_host_up(x->h);
    }
    break;
  case 4:
    ckt_sim_host_flaky(x->h, (uint32_t)ckt_sim_rand_below(s, 100000),
                       (uint32_t)ckt_sim_rand_below(s, 100000));
    break;
  default:
    ckt_sim_heal_all(s);
  }
}

/* One scenario step: mostly a burst of random datagrams, sometimes a
 * fault; then the next step a random while later. */
static void chaos_step(ckt_sim *s, void *user) {
  chaos *c = user;
  uint8_t buf[3000];
  if (ckt_sim_rand_below(s, 10) == 0) {
    chaos_fault(c);
  } else {
    peer *x = &c->p[ckt_sim_rand_below(s, CHAOS_HOSTS)];
    peer *y = &c->p[ckt_sim_rand_below(s, CHAOS_HOSTS)];
    size_t len = 1 + ckt_sim_rand_below(s, sizeof(buf));
    size_t seg = ckt_sim_rand_below(s, 1400);
    make_payload(buf, len, (uint32_t)c->steps);
    x->rt->ops->send(x->rt, &y->addr, buf, len, seg);
  }
  if (++c->steps < CHAOS_STEPS) {
    cr_assert_eq(ckt_sim_at(s, ckt_sim_now(s) + ckt_sim_rand_below(s, 200 * US),
                            chaos_step, c),
                 CKT_OK);
  } else {
    ckt_sim_heal_all(s);
  }
}

static chaos_result run_chaos(uint64_t seed) {
  ckt_sim_link l = {.latency_ns = 2 * MS,
                    .jitter_ns = 300 * US,
                    .bandwidth_bps = 100000000,
                    .queue_bytes = 64000,
                    .loss_ppm = 20000,
                    .dup_ppm = 10000,
                    .reorder_ppm = 30000,
                    .reorder_ns = 1 * MS,
                    .send_fault_ppm = 5000,
                    .recv_fault_ppm = 5000};
  chaos c;
  chaos_result r;
  int i;
  size_t k;
  memset(&c, 0, sizeof(c));
  c.s = sim_with(seed, &l);
  for (i = 0; i < CHAOS_HOSTS; ++i) {
    peer_new(&c.p[i], c.s, (uint16_t)(PORT + i));
  }
  pace(&c.p[0], &c.p[1], 500, 1200, 300 * US);
  cr_assert_eq(ckt_sim_at(c.s, 0, chaos_step, &c), CKT_OK);
  ckt_sim_run(c.s, 10 * CKT_SIM_S);
  assert_balanced(c.s);
  r.trace = ckt_sim_trace(c.s);
  ckt_sim_get_stats(c.s, &r.st);
  r.log_hash = 14695981039346656037ull;
  for (i = 0; i < CHAOS_HOSTS; ++i) {
    for (k = 0; k < c.p[i].n; ++k) {
      /* Segments of a bigger buffer do not start with their number:
       * the bytes go in through their hash. */
      r.log_hash = fnv(r.log_hash, &c.p[i].log[k].sum, 8);
      r.log_hash = fnv(r.log_hash, &c.p[i].log[k].t, 8);
      r.log_hash = fnv(r.log_hash, &c.p[i].log[k].from, sizeof(int));
      r.log_hash = fnv(r.log_hash, &c.p[i].log[k].k, 4);
      r.log_hash = fnv(r.log_hash, &c.p[i].log[k].len, sizeof(size_t));
    }
  }
  if (c.p[0].pace) {
    c.p[0].rt->ops->timer_free(c.p[0].rt, c.p[0].pace);
  }
  for (i = 0; i < CHAOS_HOSTS; ++i) {
    peer_free(&c.p[i]);
  }
  ckt_sim_free(c.s);
  return r;
}

Test(sim, the_same_seed_gives_the_same_run) {
  chaos_result a = run_chaos(2026), b = run_chaos(2026), c = run_chaos(2027);
  cr_assert_eq(a.trace, b.trace);
  cr_assert_eq(a.log_hash, b.log_hash);
  cr_assert_eq(memcmp(&a.st, &b.st, sizeof(a.st)), 0);
  cr_assert_neq(a.trace, c.trace);
  cr_assert_neq(a.log_hash, c.log_hash);
  /* The workload exercised what it was meant to. */
  cr_assert_gt(a.st.datagrams_delivered, 1000);
  cr_assert_gt(a.st.dropped_loss, 0);
  cr_assert_gt(a.st.dropped_partition, 0);
  cr_assert_gt(a.st.dropped_down, 0);
  cr_assert_gt(a.st.dropped_fault, 0);
  cr_assert_gt(a.st.duplicated, 0);
  cr_assert_gt(a.st.reordered, 0);
}

Test(sim, the_trace_covers_every_byte) {
  uint64_t traces[3];
  int round;
  for (round = 0; round < 3; ++round) {
    ckt_sim *s = sim_with(1, NULL);
    peer a, b;
    uint8_t buf[100];
    peer_new(&a, s, PORT);
    peer_new(&b, s, PORT);
    memset(buf, 7, sizeof(buf));
    buf[77] ^= (uint8_t)(round == 1); /* one bit in one byte */
    cr_assert_eq(a.rt->ops->send(a.rt, &b.addr, buf, round == 2 ? 99 : 100, 0),
                 CKT_OK);
    ckt_sim_run(s, 10 * MS);
    traces[round] = ckt_sim_trace(s);
    peer_free(&a);
    peer_free(&b);
    ckt_sim_free(s);
  }
  cr_assert_neq(traces[0], traces[1]);
  cr_assert_neq(traces[0], traces[2]);
  cr_assert_neq(traces[1], traces[2]);
}

/* b's first bytes from its runtime, after a (maybe) drew `a_draws` times. */
static void host_bytes(uint64_t seed, int a_draws, uint8_t out[32]) {
  ckt_sim *s = sim_with(seed, NULL);
  peer a, b;
  uint8_t junk[64];
  int i;
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  for (i = 0; i < a_draws; ++i) {
    a.rt->ops->random(a.rt, junk, sizeof(junk));
  }
  (void)ckt_sim_rand(s); /* the scenario's stream is apart too */
  b.rt->ops->random(b.rt, out, 32);
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
}

Test(sim, host_streams_are_independent) {
  uint8_t x[32], y[32], z[32];
  host_bytes(9, 0, x);
  host_bytes(9, 100, y);
  host_bytes(10, 0, z);
  cr_assert_eq(memcmp(x, y, 32), 0, "a's draws moved b's stream");
  cr_assert_neq(memcmp(x, z, 32), 0, "the seed did not matter");
}

Test(sim, rebinding_restarts_the_stream_anew) {
  ckt_sim *s = sim_with(9, NULL);
  peer a;
  uint8_t first[32], second[32], again[32];
  peer_new(&a, s, PORT);
  a.rt->ops->random(a.rt, first, 32);
  sim_host_unbind(a.h);
  peer_bind(&a, s, a.h, PORT);
  a.rt->ops->random(a.rt, second, 32);
  cr_assert_neq(memcmp(first, second, 32), 0);
  peer_free(&a);
  ckt_sim_free(s);
  /* ... reproducibly. */
  s = sim_with(9, NULL);
  peer_new(&a, s, PORT);
  sim_host_unbind(a.h);
  peer_bind(&a, s, a.h, PORT);
  a.rt->ops->random(a.rt, again, 32);
  cr_assert_eq(memcmp(second, again, 32), 0);
  peer_free(&a);
  ckt_sim_free(s);
}

Test(sim, host_secret_is_stable_across_binds_and_differs_per_host) {
  ckt_sim *s = sim_with(5, NULL);
  peer a, b;
  uint8_t sa[32], sa2[32], sb[32], other[32];
  peer_new(&a, s, PORT);
  peer_new(&b, s, PORT);
  sim_host_secret(a.h, sa);
  sim_host_secret(b.h, sb);
  sim_host_unbind(a.h);
  peer_bind(&a, s, a.h, PORT);
  sim_host_secret(a.h, sa2);
  cr_assert_eq(memcmp(sa, sa2, 32), 0);
  cr_assert_neq(memcmp(sa, sb, 32), 0);
  peer_free(&a);
  peer_free(&b);
  ckt_sim_free(s);
  s = sim_with(6, NULL);
  peer_new(&a, s, PORT);
  sim_host_secret(a.h, other);
  cr_assert_neq(memcmp(sa, other, 32), 0);
  peer_free(&a);
  ckt_sim_free(s);
}

static void wolf_draw(void *arg) {
  uint8_t *out = arg;
  WC_RNG rng;
  cr_assert_eq(wc_InitRng(&rng), 0);
  cr_assert_eq(wc_RNG_GenerateBlock(&rng, out, 32), 0);
  wc_FreeRng(&rng);
}

/* wolfSSL DRBG output drawn inside each kind of event. */
typedef struct wolf_out {
  uint8_t post[32], timer[32], dgram[32], call[32];
} wolf_out;

static void wolf_on_datagram(void *user, const ckt_addr *from,
                             const uint8_t *data, size_t len) {
  (void)from, (void)data, (void)len;
  wolf_draw(user);
}

static void wolf_call(ckt_sim *s, void *user) {
  (void)s;
  wolf_draw(user);
}

/* Host b draws in a post, a timer and as it receives a datagram; the
 * scenario draws in a call (no host current: the misc stream).  Host a
 * first makes its own DRBGs `a_rngs` times, in posts and timers, and so
 * does the scenario (an event drawing from the wrong stream then shows). */
static void wolf_bytes(uint64_t seed, int a_rngs, wolf_out *out) {
  ckt_sim *s = sim_with(seed, NULL);
  peer a, b;
  uint8_t junk[8][32];
  ckt_timer *ta[8], *tb;
  sim_receiver r = {wolf_on_datagram, NULL, out->dgram};
  ckt_sim_host *hb;
  int i;
  peer_new(&a, s, PORT);
  memset(&b, 0, sizeof(b));
  cr_assert_eq(ckt_sim_host_new(s, &hb), CKT_OK);
  b.h = hb;
  cr_assert_eq(sim_host_bind(hb, PORT, &r, &b.rt, &b.addr), CKT_OK);
  for (i = 0; i < a_rngs; ++i) {
    cr_assert_eq(a.rt->ops->post(a.rt, wolf_draw, junk[i]), CKT_OK);
    ta[i] = a.rt->ops->timer_new(a.rt, wolf_draw, junk[i]);
    a.rt->ops->timer_arm(a.rt, ta[i], 1 * MS);
    cr_assert_eq(ckt_sim_at(s, 500 * US, wolf_call, junk[i]), CKT_OK);
  }
  cr_assert_eq(b.rt->ops->post(b.rt, wolf_draw, out->post), CKT_OK);
  tb = b.rt->ops->timer_new(b.rt, wolf_draw, out->timer);
  b.rt->ops->timer_arm(b.rt, tb, 1 * MS);
  send_k(&a, &b, 1, 10);
  cr_assert_eq(ckt_sim_at(s, 3 * MS, wolf_call, out->call), CKT_OK);
  ckt_sim_run(s, 5 * MS);
  sim_host_unbind(hb);
  peer_free(&a);
  ckt_sim_free(s);
}

Test(sim, wolfssl_draws_from_the_current_hosts_stream) {
  wolf_out x, y, z, w;
  wolf_bytes(77, 0, &x);
  wolf_bytes(77, 0, &y);
  wolf_bytes(77, 3, &z);
  wolf_bytes(78, 0, &w);
  cr_assert_eq(memcmp(&x, &y, sizeof(x)), 0, "not reproducible");
  cr_assert_eq(memcmp(x.post, z.post, 32), 0, "a's draws moved b's stream");
  cr_assert_eq(memcmp(x.timer, z.timer, 32), 0, "a timer ran off its host");
  cr_assert_eq(memcmp(x.dgram, z.dgram, 32), 0, "a datagram ran off its host");
  cr_assert_neq(memcmp(x.call, z.call, 32), 0, "a call drew from a host");
  cr_assert_neq(memcmp(x.post, w.post, 32), 0, "the seed did not matter");
  cr_assert_neq(memcmp(x.call, w.call, 32), 0, "the seed did not matter");
  cr_assert_neq(memcmp(x.post, x.timer, 32), 0, "the stream repeated");
}

Test(sim, wolfssl_is_seeded_by_the_os_again_after_free) {
  uint8_t x[32], y[32];
  ckt_sim *s = sim_with(1, NULL);
  ckt_sim_free(s);
  wolf_draw(x);
  wolf_draw(y);
  cr_assert_neq(memcmp(x, y, 32), 0);
}
