/*
 * quic_ev.h — the production runtime: a libev loop, one UDP socket (GSO on
 * send, GRO + recvmmsg on receive) and a thread-safe post queue, behind
 * the ckt_runtime interface of core_runtime.h.
 *
 * Threading: the loop runs on one thread (ckt_ev_run); ckt_ev_post() and
 * ckt_ev_stop() may be called from any thread.
 */
#ifndef CKT_QUIC_EV_H
#define CKT_QUIC_EV_H

#include "core_runtime.h"
#include "quic_udp.h"

typedef struct ckt_ev ckt_ev;

/* Receives every datagram read from the socket, then `batch_done` once per
 * batch (the endpoint writes its answers then). */
typedef struct ckt_ev_receiver {
  void (*datagram)(void *user, const ckt_addr *from, const uint8_t *data,
                   size_t len);
  void (*batch_done)(void *user);
  void *user;
} ckt_ev_receiver;

/* Opens the socket on bind_addr and a new libev loop.  CKT_OK,
 * CKT_ERR_IO (errno set: EADDRINUSE...), CKT_ERR_NOMEM. */
int ckt_ev_new(const ckt_addr *bind_addr, ckt_ev **out);
void ckt_ev_free(ckt_ev *r);
ckt_runtime *ckt_ev_runtime(ckt_ev *r);
ckt_udp *ckt_ev_udp(ckt_ev *r);
void ckt_ev_set_receiver(ckt_ev *r, const ckt_ev_receiver *recv);
/* Runs the loop on the calling thread until ckt_ev_stop(). */
void ckt_ev_run(ckt_ev *r);
/* Runs the posted work now, on the calling thread (which must own the
 * loop or have stopped it): used at shutdown so that no posted job is
 * lost.  ckt_ev_free() drops what is left without running it. */
void ckt_ev_run_posted(ckt_ev *r);
/* Makes ckt_ev_run() return soon.  Thread-safe. */
void ckt_ev_stop(ckt_ev *r);

#endif
