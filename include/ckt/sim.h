/*
 * ckt/sim.h — deterministic simulation: real nodes on virtual time.
 *
 * A simulation is one process, one thread and one clock that only moves
 * when nothing is left to do before the next event.  Hosts have virtual
 * addresses (127.77.x.y, never bound: no packet leaves the process) and
 * run real ckt nodes — the same QUIC, TLS, peer and circuit code as in
 * production — on a runtime whose timers, datagrams and posted work are
 * events in one queue ordered by (time, sequence).  The network between
 * hosts has per-link latency, jitter, bandwidth, loss, duplication,
 * bounded reordering, partitions (full or one-way) and flaky send and
 * receive faults, per link or per host; hosts can be isolated, taken down
 * and brought back, and their wall clocks skewed.
 *
 * Everything is decided by the seed: the network's dice, every random
 * byte ngtcp2, wolfSSL and ckt draw while a host's event runs (each host
 * has its own stream, so one host's activity does not shift another's),
 * and the built-in identities.  The same seed gives the same run, event
 * for event; ckt_sim_trace() folds every event (time, host, kind, length,
 * bytes) into a hash that proves it.  See docs/dst.md.
 *
 * Threading: a simulation and its nodes belong to the thread that made
 * them; nothing here is thread-safe and no threads are started.  While a
 * simulation exists, wolfSSL's random seeds on that thread come from it;
 * other threads are not affected.  One simulation per thread at a time.
 *
 * Ownership: the simulation owns its hosts; the caller owns the nodes it
 * creates on them (ckt_node_free() them before ckt_sim_free()).
 */
#ifndef CKT_SIM_H
#define CKT_SIM_H

#include <stddef.h>
#include <stdint.h>

#include "ckt/error.h"
#include "ckt/node.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ckt_sim ckt_sim;
typedef struct ckt_sim_host ckt_sim_host;

/* Probabilities are integers in parts per million (no floating point, so
 * runs agree on every machine). */
#define CKT_SIM_PPM 1000000u
#define CKT_SIM_MS 1000000ull /* nanoseconds */
#define CKT_SIM_S 1000000000ull
/* What the simulated wall clock reads at virtual time 0 (Unix ns):
 * 2026-01-01T00:00:00Z. */
#define CKT_SIM_WALL_EPOCH (1767225600ll * 1000000000ll)
/* Largest number of hosts in one simulation. */
#define CKT_SIM_MAX_HOSTS 4096

/* One direction of a link between two hosts. */
typedef struct ckt_sim_link {
  uint64_t latency_ns; /* one-way propagation delay */
  /* Each datagram is delayed by a further uniform [0, jitter_ns); jitter
   * alone never reorders (a datagram never overtakes an earlier one). */
  uint64_t jitter_ns;
  /* Bits per second at the sender's side of the link (0: unlimited); a
   * datagram waits for the ones before it to be serialized. */
  uint64_t bandwidth_bps;
  /* Bytes waiting for the bandwidth before new datagrams are tail-dropped
   * (0: 1 MiB).  Only meaningful with a bandwidth. */
  uint64_t queue_bytes;
  uint32_t loss_ppm;    /* lost in transit */
  uint32_t dup_ppm;     /* delivered twice (the copy with its own jitter) */
  uint32_t reorder_ppm; /* delayed by a further uniform [0, reorder_ns),
                           free to overtake and be overtaken */
  uint64_t reorder_ns;
  /* Flaky faults: dropped at the sender before entering the link, or at
   * the receiver after crossing it. */
  uint32_t send_fault_ppm;
  uint32_t recv_fault_ppm;
  /* Largest UDP payload carried (0: 1472, Ethernet's); bigger ones are
   * dropped. */
  uint32_t mtu;
} ckt_sim_link;

/* Counters over the whole simulation. */
typedef struct ckt_sim_stats {
  uint64_t events;         /* events run */
  uint64_t datagrams_sent; /* handed to the network */
  uint64_t datagrams_delivered;
  uint64_t bytes_delivered;
  uint64_t dropped_loss, dropped_partition, dropped_fault, dropped_down,
      dropped_queue, dropped_mtu, dropped_unbound;
  uint64_t duplicated, reordered;
  uint64_t timers_fired, posts_run, calls_run;
} ckt_sim_stats;

/* What ckt_sim_set_observer() reports for each event run. */
enum {
  CKT_SIM_EV_DATAGRAM = 1, /* a datagram was handed to a bound host */
  CKT_SIM_EV_TIMER = 2,    /* a host's timer fired */
  CKT_SIM_EV_POST = 3,     /* work a host posted ran */
  CKT_SIM_EV_CALL = 4      /* a ckt_sim_at() callback ran */
};
typedef struct ckt_sim_event {
  uint64_t time_ns;
  int kind;      /* CKT_SIM_EV_* */
  int host;      /* index of the host it ran on; -1 for CKT_SIM_EV_CALL */
  int from_host; /* datagrams: the sender's index */
  size_t len;    /* datagrams: payload length */
} ckt_sim_event;

/* A new simulation at virtual time 0 with every link as `def` (NULL: 1 ms
 * latency, nothing else).  CKT_OK, CKT_ERR_INVALID_ARGUMENT (another
 * simulation exists on this thread, or out is NULL), CKT_ERR_NOMEM,
 * CKT_ERR_CRYPTO (wolfSSL refused the random hook). */
CKT_EXTERN int ckt_sim_new(uint64_t seed, const ckt_sim_link *def,
                           ckt_sim **out);
/* Frees the simulation and its hosts; events still queued are dropped.
 * Nodes on its hosts must have been freed. */
CKT_EXTERN void ckt_sim_free(ckt_sim *s);

CKT_EXTERN uint64_t ckt_sim_seed(const ckt_sim *s);
/* Virtual time, nanoseconds since the simulation began. */
CKT_EXTERN uint64_t ckt_sim_now(const ckt_sim *s);
/* The scenario's own random stream (separate from the network's and the
 * hosts', so a scenario that draws more does not change them). */
CKT_EXTERN uint64_t ckt_sim_rand(ckt_sim *s);
/* Uniform in [0, n) (n > 0). */
CKT_EXTERN uint64_t ckt_sim_rand_below(ckt_sim *s, uint64_t n);

/* ---- hosts --------------------------------------------------------------- */

/* Adds a host; its address is 127.77.<i / 250>.<i % 250 + 1> for the i-th
 * host (i from 0).  CKT_OK, CKT_ERR_INVALID_ARGUMENT (s or out is NULL),
 * CKT_ERR_LIMIT (CKT_SIM_MAX_HOSTS), CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_sim_host_new(ckt_sim *s, ckt_sim_host **out);
CKT_EXTERN int ckt_sim_host_index(const ckt_sim_host *h);
CKT_EXTERN ckt_sim_host *ckt_sim_host_at(ckt_sim *s, int index);
CKT_EXTERN int ckt_sim_host_count(const ckt_sim *s);
/* "127.77.0.1" (the IP only). */
CKT_EXTERN const char *ckt_sim_host_ip(const ckt_sim_host *h);

/* Creates a node on host h, bound to port `port` (0: CKT_DEFAULT_PORT) of
 * the host's address; cfg->listen is ignored.  With cfg->cert_dir NULL the
 * node uses the simulation's built-in identity for this host: an Ed25519
 * key and certificate derived from the host's index, signed by a built-in
 * CA (the same in every simulation, so traces depend on the seed alone).
 * Peers are named by numeric address only ("127.77.0.2:7100"): a host
 * name would go to the resolver, out of the simulation.
 * The node runs only as the simulation runs: ckt_node_start() and
 * ckt_node_run() fail or return at once, and the thread-driven peer API
 * (ckt_tpeer_*) cannot be used.  One node per host at a time.
 * CKT_OK; CKT_ERR_INVALID_ARGUMENT (h already has a node); the codes of
 * ckt_node_new(). */
CKT_EXTERN int ckt_sim_node_new(ckt_sim_host *h, uint16_t port,
                                const ckt_node_config *cfg, ckt_node **out);

/* ---- faults -------------------------------------------------------------- */

/* Sets the link from -> to (one direction).  Datagrams already in flight
 * keep the delays they were given. */
CKT_EXTERN void ckt_sim_link_set(ckt_sim *s, ckt_sim_host *from,
                                 ckt_sim_host *to, const ckt_sim_link *l);
/* Sets every link, existing and future, to l. */
CKT_EXTERN void ckt_sim_link_set_all(ckt_sim *s, const ckt_sim_link *l);
CKT_EXTERN void ckt_sim_link_get(ckt_sim *s, const ckt_sim_host *from,
                                 const ckt_sim_host *to, ckt_sim_link *out);

/* Cuts a -> b, and b -> a unless oneway.  Datagrams sent across a cut, or
 * arriving while it lasts, are dropped. */
CKT_EXTERN void ckt_sim_partition(ckt_sim *s, ckt_sim_host *a, ckt_sim_host *b,
                                  int oneway);
/* Restores a -> b and b -> a. */
CKT_EXTERN void ckt_sim_heal(ckt_sim *s, ckt_sim_host *a, ckt_sim_host *b);
/* Restores every cut and ends every isolation. */
CKT_EXTERN void ckt_sim_heal_all(ckt_sim *s);
/* Cuts h off from every host (on: 1) or ends that (0); links' own cuts
 * stay as they are. */
CKT_EXTERN void ckt_sim_isolate(ckt_sim_host *h, int on);
/* Flaky faults of a host: each datagram it sends is dropped with
 * probability send_ppm, each it would receive with recv_ppm. */
CKT_EXTERN void ckt_sim_host_flaky(ckt_sim_host *h, uint32_t send_ppm,
                                   uint32_t recv_ppm);
/* Takes h down or brings it back up.  While down, everything it sends or
 * is sent is dropped and its node is frozen: its timers and posted work
 * wait, and run once it is up again, in the order they came due (a node
 * paused, say by a long GC or SIGSTOP, then resumed).  To model a crash
 * and restart instead: ckt_sim_host_down(), ckt_node_free() (nothing it
 * says on the way out gets through), later ckt_sim_host_up() and
 * ckt_sim_node_new() on the same host. */
CKT_EXTERN void ckt_sim_host_down(ckt_sim_host *h);
CKT_EXTERN void ckt_sim_host_up(ckt_sim_host *h);
CKT_EXTERN int ckt_sim_host_is_up(const ckt_sim_host *h);
/* What h's wall clock reads ahead (positive) or behind the simulation's;
 * the monotonic clock is never skewed. */
CKT_EXTERN void ckt_sim_host_set_skew(ckt_sim_host *h, int64_t skew_ns);

/* ---- running ------------------------------------------------------------- */

typedef void (*ckt_sim_fn)(ckt_sim *s, void *user);

/* Calls fn(s, user) at virtual time at_ns (now if in the past): fault
 * schedules and workload steps.  CKT_OK, CKT_ERR_INVALID_ARGUMENT (s or fn
 * is NULL), CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_sim_at(ckt_sim *s, uint64_t at_ns, ckt_sim_fn fn,
                          void *user);
/* Runs events in (time, sequence) order until none is due at or before
 * until_ns (the clock then reads until_ns, or stays where it is when it
 * already reads more), or ckt_sim_halt().  Returns the number of events
 * run (what the trace folds: a datagram dropped on arrival, or a frozen
 * host's timer, is not one).  Datagrams due at one host at the same
 * instant are handed over as one batch: one step, one invariant check. */
CKT_EXTERN uint64_t ckt_sim_run(ckt_sim *s, uint64_t until_ns);
/* Runs the next event (or batch of datagrams), advancing the clock to
 * it.  1 if one ran, 0 if the queue is empty or the simulation failed. */
CKT_EXTERN int ckt_sim_step(ckt_sim *s);
/* The time of the next event (CKT_TIME_NEVER-like UINT64_MAX: none). */
CKT_EXTERN uint64_t ckt_sim_next_time(const ckt_sim *s);
/* Makes the running ckt_sim_run() return after the current event (the
 * workload is done, say).  The next ckt_sim_run() clears it. */
CKT_EXTERN void ckt_sim_halt(ckt_sim *s);

/* ---- invariants and failures --------------------------------------------- */

/* An invariant of the scenario: NULL while it holds, else one sentence
 * saying what broke (it may point into user's memory). */
typedef const char *(*ckt_sim_invariant)(ckt_sim *s, void *user);
/* Checks fn after every event (or batch of datagrams) from now on (keep
 * it cheap: it runs millions of times); the first that fails fails the
 * simulation as ckt_sim_fail("invariant: <why>").  CKT_OK,
 * CKT_ERR_INVALID_ARGUMENT, CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_sim_add_invariant(ckt_sim *s, ckt_sim_invariant fn,
                                     void *user);
/* Fails the simulation (a check in a callback found something wrong):
 * keeps the first reason and halts.  A failed simulation runs no more
 * events: ckt_sim_run() and ckt_sim_step() return 0 at once. */
CKT_EXTERN void ckt_sim_fail(ckt_sim *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The first failure's reason, or NULL while none. */
CKT_EXTERN const char *ckt_sim_failure(const ckt_sim *s);

/* The trace hash so far: every event run folded in order (time, host,
 * kind, length, and a datagram's bytes). */
CKT_EXTERN uint64_t ckt_sim_trace(const ckt_sim *s);
CKT_EXTERN void ckt_sim_get_stats(const ckt_sim *s, ckt_sim_stats *out);
/* Calls fn for every event run, after it ran (debugging, event logs);
 * NULL stops it. */
CKT_EXTERN void ckt_sim_set_observer(
    ckt_sim *s, void (*fn)(void *user, const ckt_sim_event *ev), void *user);

#ifdef __cplusplus
}
#endif

#endif /* CKT_SIM_H */
