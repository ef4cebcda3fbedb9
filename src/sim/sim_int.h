/*
 * sim_int.h — the simulation's insides, shared by sim_world.c (the
 * simulation, its hosts, their runtimes and the event loop) and sim_net.c
 * (links, faults and the datagrams' way across).
 */
#ifndef CKT_SIM_INT_H
#define CKT_SIM_INT_H

#include <stddef.h>
#include <stdint.h>

#include "ckt/sim.h"
#include "core_addr.h"
#include "core_runtime.h"
#include "sim_queue.h"
#include "sim_rand.h"
#include "sim_world.h"

/* Event kinds (the public CKT_SIM_EV_* values, plus "on the free list"). */
enum {
  SIM_EV_FREE = 0,
  SIM_EV_DGRAM = CKT_SIM_EV_DATAGRAM,
  SIM_EV_TIMER = CKT_SIM_EV_TIMER,
  SIM_EV_POST = CKT_SIM_EV_POST,
  SIM_EV_CALL = CKT_SIM_EV_CALL
};

/* One event.  A timer is an event that lives from timer_new to
 * timer_free and is in the queue only while armed (ckt_timer * points to
 * one).  Events are recycled through a free list and keep their datagram
 * buffer, so a steady flow of datagrams allocates nothing. */
typedef struct sim_event sim_event;
struct sim_event {
  sim_qnode q; /* time, seq, heap index */
  uint8_t kind;
  ckt_sim_host *host; /* timer, post: the owner; datagram: the receiver */
  union {
    struct {
      ckt_timer_fn fn;
      void *arg;
      sim_event *prev, *next; /* the binding's timers */
      uint8_t parked;         /* came due while its host was down */
    } timer;
    struct {
      ckt_post_fn fn;
      void *arg;
      sim_event *next; /* the binding's posts, oldest first */
    } post;
    struct {
      ckt_sim_fn fn;
      void *user;
    } call;
    struct {
      /* The receiver's binding when it was sent (0: the port was not
       * bound then); a datagram for a binding that ended is dropped. */
      uint64_t gen;
      /* The bytes' trace hash, taken at send time while they are hot in
       * the cache (the receiver may never read them). */
      uint64_t digest;
      size_t len;
      int from; /* sender's index */
      uint16_t from_port, to_port;
    } dgram;
    sim_event *free_next;
  } u;
  uint8_t *buf; /* datagram bytes */
  size_t cap;
};

/* State of one direction between two hosts, made when first needed. */
typedef struct sim_pair {
  uint32_t key; /* from * CKT_SIM_MAX_HOSTS + to + 1; 0: empty slot */
  uint8_t cut;
  uint8_t has_link;      /* link overrides the simulation's default */
  uint64_t busy_until;   /* the sender's side is serializing until then */
  uint64_t last_arrival; /* latest in-order arrival (FIFO) */
  ckt_sim_link link;
} sim_pair;

/* Open addressing, linear probing, never deletes; at most half full. */
typedef struct sim_pairs {
  sim_pair *slots;
  uint32_t cap; /* a power of two, or 0 */
  uint32_t n;
} sim_pairs;

typedef struct sim_slab sim_slab;

struct ckt_sim_host {
  ckt_sim *sim;
  int index;
  uint32_t ip; /* host byte order */
  char ip_str[16];
  uint8_t up, isolated, bound;
  uint32_t send_ppm, recv_ppm;
  int64_t skew_ns;
  uint64_t binds; /* binds so far */
  /* The binding (while bound). */
  uint64_t gen; /* unique over the simulation; 0: none */
  uint16_t port;
  sim_receiver recv;
  ckt_runtime rt;
  sim_event *timers;                  /* doubly linked */
  sim_event *posts_head, *posts_tail; /* FIFO; those parked first */
  sim_host_counters counters;
  sim_rand rng;
};

typedef struct sim_invariant {
  struct sim_invariant *next;
  ckt_sim_invariant fn;
  void *user;
} sim_invariant;

struct ckt_sim {
  uint64_t seed;
  uint64_t now;
  uint64_t seq; /* next (time, seq) sequence number */
  sim_queue queue;
  sim_event *free_events;
  sim_slab *slabs;
  size_t nevents; /* allocated, queue room reserved for all */
  ckt_sim_host **hosts;
  int nhosts, hosts_cap;
  ckt_sim_link def;
  sim_pairs pairs;
  sim_rand net, scenario, misc;
  ckt_sim_host *current;
  uint64_t last_gen;
  uint64_t trace;
  ckt_sim_stats st;
  void (*observer)(void *user, const ckt_sim_event *ev);
  void *observer_user;
  int halted;
  int running; /* inside ckt_sim_run/step: they do not nest */
  sim_invariant *invariants;
  char *failure; /* the first failure (ckt_sim_fail or an invariant) */
  int failed;
};

/* ---- sim_world.c --------------------------------------------------------- */

/* A fresh event from the free list (fields unset), NULL when out of
 * memory. */
sim_event *sim_event_new(ckt_sim *s);
/* Returns e (not queued) to the free list. */
void sim_event_recycle(ckt_sim *s, sim_event *e);
/* Queues e at time t with the next sequence number. */
void sim_event_schedule(ckt_sim *s, sim_event *e, uint64_t t);
/* Counts, hashes and reports an event that ran at s->now; datagrams bring
 * the sender's index, their length and their bytes' digest. */
void sim_record(ckt_sim *s, int kind, int host, int from, size_t len,
                uint64_t digest);
/* Makes h current (NULL: none); returns the one before. */
ckt_sim_host *sim_set_current(ckt_sim *s, ckt_sim_host *h);

/* ---- sim_net.c ----------------------------------------------------------- */

/* The host with that address, its port in *port; NULL if none. */
ckt_sim_host *sim_net_lookup(ckt_sim *s, const ckt_addr *a, uint16_t *port);
/* Fills *out with ip:port. */
void sim_net_addr(uint32_t ip, uint16_t port, ckt_addr *out);
/* h's runtime send().  CKT_OK, CKT_ERR_AGAIN (out of memory: dropped). */
int sim_net_send(ckt_sim *s, ckt_sim_host *h, const ckt_addr *to,
                 const uint8_t *data, size_t len, size_t segment);
/* A datagram event came due: drop it or hand it (and the datagrams for
 * the same host right behind it) over.  Recycles what it took. */
void sim_net_arrive(ckt_sim *s, sim_event *e);
void sim_pairs_free(sim_pairs *p);

#endif
