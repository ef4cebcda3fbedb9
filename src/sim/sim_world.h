/*
 * sim_world.h — what a node needs of a simulated host (the peer layer's
 * side of include/ckt/sim.h).
 *
 * A bound host serves one node: sim_host_bind() hands out a ckt_runtime
 * whose clock is the simulation's, whose timers and posted work are events
 * in the simulation's queue, whose sends go into the simulated network and
 * whose random bytes come from the host's own stream; datagrams for the
 * host's port are handed to the receiver, each followed by batch_done.
 *
 * Threading: the simulation's thread only.
 */
#ifndef CKT_SIM_WORLD_H
#define CKT_SIM_WORLD_H

#include <stddef.h>
#include <stdint.h>

#include "ckt/sim.h"
#include "core_addr.h"
#include "core_runtime.h"

typedef struct sim_receiver {
  void (*datagram)(void *user, const ckt_addr *from, const uint8_t *data,
                   size_t len);
  void (*batch_done)(void *user);
  void *user;
} sim_receiver;

typedef struct sim_host_counters {
  uint64_t bytes_sent, bytes_received; /* UDP payload bytes */
  uint64_t datagrams_sent, datagrams_received;
} sim_host_counters;

/* Binds h's address at `port` for one node: *rt is its runtime, *local
 * its address.  The host's random stream restarts from (seed, host,
 * number of binds so far), so a restarted node draws new but reproducible
 * bytes.  CKT_OK, CKT_ERR_INVALID_ARGUMENT (already bound). */
int sim_host_bind(ckt_sim_host *h, uint16_t port, const sim_receiver *r,
                  ckt_runtime **rt, ckt_addr *local);
/* Runs the host's pending posted work now (a node being freed lets its
 * posted work run and fail as "closed", as the production loop does). */
void sim_host_run_posted(ckt_sim_host *h);
/* Ends the binding: pending posts and datagrams for it are dropped; timers
 * still armed are freed (the node should have freed them). */
void sim_host_unbind(ckt_sim_host *h);
int sim_host_is_bound(const ckt_sim_host *h);
const sim_host_counters *sim_host_get_counters(const ckt_sim_host *h);
/* 32 bytes derived from the seed and the host's index: the same for every
 * node the host runs (stateless-reset keys survive a restart). */
void sim_host_secret(const ckt_sim_host *h, uint8_t out[32]);

/* While h is current, random bytes drawn through sim_random() (and so
 * wolfSSL's seeds, see tls_random.h) come from h's stream.  The
 * simulation makes a host current while it runs one of its events; the
 * peer layer does so around building a node.  Returns the previous one. */
ckt_sim_host *sim_enter(ckt_sim_host *h);
void sim_leave(ckt_sim_host *prev);

#endif
