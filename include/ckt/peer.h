/*
 * ckt/peer.h — peers, circuits and fragments.
 *
 * A peer is an instance of a named service running on a node; the same
 * service code runs on any node, whichever role it has.  Peers talk over
 * circuits: persistent, ordered, bidirectional channels of fragments
 * between two peers, each circuit its own QUIC stream (so a slow circuit
 * holds back no other).  Opening a circuit costs no round trip: its first
 * frame names the target peer and service.
 *
 * A peer URL names a peer: ckt://host:port/service/peerID (peerID: 32 hex
 * digits), optionally followed by /circuitID.
 *
 * Threading: callbacks run on the node's loop thread.  The functions
 * below are loop-thread only unless they say otherwise; from another
 * thread, run work on the loop with ckt_node_post().
 *
 * Ownership: fragments passed to send functions are taken (freed once
 * encoded, also on error); fragments handed to callbacks belong to ckt
 * and live for the call.  Peers and circuits are owned by the node: a
 * circuit pointer is valid until its circuit_closed callback returns, a
 * peer pointer until ckt_peer_stop() (or the node stopping) has run its
 * stopping callback and closed its circuits.
 */
#ifndef CKT_PEER_H
#define CKT_PEER_H

#include <stddef.h>
#include <stdint.h>

#include "ckt/error.h"
#include "ckt/fragment.h"
#include "ckt/node.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ckt_peer ckt_peer;
typedef struct ckt_circuit ckt_circuit;

/* Longest peer URL ckt writes, NUL included. */
#define CKT_PEER_URL_MAX 400
/* Bytes a circuit may have written but unacknowledged before
 * ckt_circuit_send() says CKT_ERR_AGAIN (then `writable` follows). */
#define CKT_CIRCUIT_QUEUE_MAX (1024u * 1024)

/* What a service does; every callback is optional. */
typedef struct ckt_peer_service {
  /* A peer of this service started (locally or at a remote's request). */
  void (*started)(ckt_peer *p, void *user);
  /* A remote peer opened circuit c to p.  `open` is its OPEN fragment
   * (service, subject = the circuit's name, args).  Return 0 to accept;
   * anything else refuses it (the opener's circuit closes with a reason). */
  int (*circuit_new)(ckt_peer *p, ckt_circuit *c, const ckt_fragment *open,
                     void *user);
  /* A data fragment arrived on c, in order. */
  void (*fragment)(ckt_peer *p, ckt_circuit *c, const ckt_fragment *f,
                   void *user);
  /* An error fragment arrived on c (f->err says what). */
  void (*error)(ckt_peer *p, ckt_circuit *c, const ckt_fragment *f, void *user);
  /* c is closed: by either end (reason given), by the peer stopping, or by
   * the connection being lost ("connection lost: ...").  remote: 1 if the
   * other end closed it. */
  void (*circuit_closed)(ckt_peer *p, ckt_circuit *c, const char *reason,
                         int remote, void *user);
  /* c can take more after ckt_circuit_send() said CKT_ERR_AGAIN. */
  void (*writable)(ckt_peer *p, ckt_circuit *c, void *user);
  /* p is stopping; its circuits are closed right after. */
  void (*stopping)(ckt_peer *p, void *user);
  /* At most this many peers of the service at once on this node (0: no
   * limit).  Starting one more fails with CKT_ERR_LIMIT, naming the URL of
   * a running one. */
  unsigned max_instances;
  /* The service's version (0: unversioned).  Circuits carry the opener's
   * version; a receiver with another nonzero version refuses them,
   * saying both. */
  unsigned version;
} ckt_peer_service;

/* Registers a service that peers can be started for, here or by remote
 * nodes (remote requests and circuits to the service's instances).  Any
 * thread, before or after ckt_node_start().  CKT_OK,
 * CKT_ERR_INVALID_ARGUMENT, CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_node_register_peer_service(ckt_node *n, const char *name,
                                              const ckt_peer_service *svc,
                                              void *user);

/* Runs fn(arg) on the node's loop thread soon.  Any thread.  CKT_OK,
 * CKT_ERR_CLOSED, CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_node_post(ckt_node *n, void (*fn)(void *arg), void *arg);

/* Starts a peer of a registered service on this node; its ID is random
 * (128 bits) and new for every start.  CKT_OK, CKT_ERR_NO_SERVICE,
 * CKT_ERR_LIMIT (max_instances running; *out is then one of them),
 * CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_node_start_peer(ckt_node *n, const char *service,
                                   ckt_peer **out);

/* Starts a peer of `service` on the node at host_port (dialing it if
 * needed) and reports its URL.  done runs on the loop: err CKT_OK with
 * url, else the Message API's call errors (CKT_ERR_NO_SERVICE when the
 * remote has no such peer service) with `why`.  Any thread. */
typedef void (*ckt_peer_started_fn)(ckt_node *n, int err, const char *url,
                                    const char *why, void *user);
CKT_EXTERN int ckt_node_start_remote_peer(ckt_node *n, const char *host_port,
                                          const char *service,
                                          ckt_peer_started_fn done, void *user);

/* Stops a peer: `stopping`, then every circuit closes ("peer stopped"),
 * telling the remote ends. */
CKT_EXTERN void ckt_peer_stop(ckt_peer *p);

/* This peer's URL and ID (hex). */
CKT_EXTERN const char *ckt_peer_url(const ckt_peer *p);
CKT_EXTERN const char *ckt_peer_id(const ckt_peer *p);
CKT_EXTERN const char *ckt_peer_service_name(const ckt_peer *p);
CKT_EXTERN ckt_node *ckt_peer_node(const ckt_peer *p);

/* Opens a circuit from p to the peer at `url`, named `name`, optionally
 * sending `first` (a data fragment, taken) in the same flight: no round
 * trip.  The circuit exists at once; if the remote refuses it,
 * circuit_closed says why.  CKT_OK, CKT_ERR_INVALID_ARGUMENT (bad URL),
 * CKT_ERR_CLOSED, CKT_ERR_AGAIN (this node's dial budget is used up),
 * CKT_ERR_TOO_LARGE (first is too big), CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_peer_open_circuit(ckt_peer *p, const char *url,
                                     const char *name, ckt_fragment *first,
                                     void *circuit_user, ckt_circuit **out);
/* Opens a circuit from p to the running instance of `service` on the node
 * at host_port, starting one there only if none runs (prefer-extant: all
 * callers reach the same canonical peer).  The remote's answer comes as
 * usual: circuit_closed says why if it refuses.  circuit_remote_url()
 * gives the remote peer's URL once the circuit carried a fragment back. */
CKT_EXTERN int ckt_peer_open_circuit_extant(
    ckt_peer *p, const char *host_port, const char *service, const char *name,
    ckt_fragment *first, void *circuit_user, ckt_circuit **out);
/* Another circuit to the same remote peer as c. */
CKT_EXTERN int ckt_circuit_open_sibling(ckt_circuit *c, const char *name,
                                        ckt_fragment *first, void *circuit_user,
                                        ckt_circuit **out);

/* Sends a data fragment on c; never blocks.  CKT_OK; CKT_ERR_AGAIN when
 * CKT_CIRCUIT_QUEUE_MAX bytes wait for the remote (nothing is sent; wait
 * for `writable`); CKT_ERR_TOO_LARGE; CKT_ERR_CLOSED. */
CKT_EXTERN int ckt_circuit_send(ckt_circuit *c, ckt_fragment *f);
/* Sends an error fragment with text `err` (the same limits apply). */
CKT_EXTERN int ckt_circuit_send_error(ckt_circuit *c, const char *err);
/* Closes c, telling the remote end `reason` (may be NULL).  Both ends get
 * circuit_closed (this one with remote = 0). */
CKT_EXTERN void ckt_circuit_close(ckt_circuit *c, const char *reason);

CKT_EXTERN void *ckt_circuit_user(const ckt_circuit *c);
CKT_EXTERN void ckt_circuit_set_user(ckt_circuit *c, void *user);
CKT_EXTERN const char *ckt_circuit_name(const ckt_circuit *c);
CKT_EXTERN const char *ckt_circuit_id(const ckt_circuit *c);
/* The remote peer's URL. */
CKT_EXTERN const char *ckt_circuit_remote_url(const ckt_circuit *c);
CKT_EXTERN ckt_peer *ckt_circuit_peer(const ckt_circuit *c);

/* ---- for a program's own threads ---------------------------------------- */

/* A peer driven from ordinary threads: blocking reads with timeouts, in
 * the seed's channel style.  Every function below may be called from any
 * thread except the node's loop.  Each circuit has a bounded inbox; a
 * reader that falls behind holds back that circuit's sender only (QUIC
 * flow control), never the other circuits.
 *
 * Every peer of a thread-registered service delivers its circuits to the
 * same ckt_tpeer's accept queue: the one ckt_tpeer_start() starts, and any
 * a remote node starts there (ckt_node_start_remote_peer(), or a
 * prefer-extant open when none runs).  ckt_tpeer_stop() stops them all. */
typedef struct ckt_tpeer ckt_tpeer;
typedef struct ckt_tcircuit ckt_tcircuit;

/* Registers `service` for thread-driven peers (replacing its callbacks)
 * and starts one peer of it.  CKT_OK, CKT_ERR_INVALID_ARGUMENT,
 * CKT_ERR_LIMIT, CKT_ERR_CLOSED, CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_tpeer_start(ckt_node *n, const char *service,
                               ckt_tpeer **out);
CKT_EXTERN const char *ckt_tpeer_url(const ckt_tpeer *tp);
/* Stops the peer (its circuits close, remote ends told) and releases it.
 * tcircuits still held stay valid (closed) until ckt_tcircuit_close(). */
CKT_EXTERN void ckt_tpeer_stop(ckt_tpeer *tp);
/* Opens a circuit to the peer at url (first is taken).  CKT_OK, or the
 * codes of ckt_peer_open_circuit(). */
CKT_EXTERN int ckt_tpeer_open(ckt_tpeer *tp, const char *url, const char *name,
                              ckt_fragment *first, ckt_tcircuit **out);
/* Opens a circuit to the running instance of `service` on the node at
 * host_port, starting one there only if none runs (prefer-extant, as
 * ckt_peer_open_circuit_extant(); first is taken).  CKT_OK,
 * CKT_ERR_INVALID_ARGUMENT, CKT_ERR_CLOSED (tp stopped), CKT_ERR_AGAIN
 * (this node's dial budget is used up), CKT_ERR_TOO_LARGE (first is too
 * big), CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_tpeer_open_extant(ckt_tpeer *tp, const char *host_port,
                                     const char *service, const char *name,
                                     ckt_fragment *first, ckt_tcircuit **out);
/* Opens another circuit to the same remote peer as tc (first is taken).
 * If tc is a prefer-extant circuit that has not carried a fragment back
 * yet, the new one is prefer-extant too.  CKT_OK, CKT_ERR_INVALID_ARGUMENT,
 * CKT_ERR_CLOSED (tc is closed), CKT_ERR_AGAIN, CKT_ERR_TOO_LARGE,
 * CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_tcircuit_open_sibling(ckt_tcircuit *tc, const char *name,
                                         ckt_fragment *first,
                                         ckt_tcircuit **out);
/* Waits for the next circuit a remote peer opened to tp; timeout_ms < 0
 * waits forever.  CKT_OK, CKT_ERR_TIMEOUT, CKT_ERR_CLOSED (tp's peer
 * stopped). */
CKT_EXTERN int ckt_tpeer_accept(ckt_tpeer *tp, int timeout_ms,
                                ckt_tcircuit **out);
/* Sends a fragment (taken) / an error fragment.  CKT_OK, CKT_ERR_AGAIN
 * (the circuit's send queue is full: try again later, or use
 * ckt_tcircuit_send_wait()), CKT_ERR_TOO_LARGE, CKT_ERR_CLOSED. */
CKT_EXTERN int ckt_tcircuit_send(ckt_tcircuit *tc, ckt_fragment *f);
CKT_EXTERN int ckt_tcircuit_send_error(ckt_tcircuit *tc, const char *err);
/* Sends a fragment (taken, whatever happens), waiting while the circuit's
 * send queue is full: it tries again each time the queue drains (the
 * `writable` event), without polling.  timeout_ms < 0 waits forever.
 * Several threads may wait on one circuit; each fragment goes out whole,
 * in the order the sends succeed.  CKT_OK, CKT_ERR_TIMEOUT (still full
 * when timeout_ms elapsed; nothing was sent), CKT_ERR_TOO_LARGE,
 * CKT_ERR_CLOSED, CKT_ERR_NOMEM. */
CKT_EXTERN int ckt_tcircuit_send_wait(ckt_tcircuit *tc, ckt_fragment *f,
                                      int timeout_ms);
/* Waits for the next fragment (data, or an error one: type CKT_FRAG_ERROR)
 * in order; free it with ckt_fragment_free().  CKT_OK, CKT_ERR_TIMEOUT,
 * CKT_ERR_CLOSED (closed and nothing left: see ckt_tcircuit_reason()). */
CKT_EXTERN int ckt_tcircuit_recv(ckt_tcircuit *tc, int timeout_ms,
                                 ckt_fragment **out);
/* The circuit's name (as the opener gave it). */
CKT_EXTERN const char *ckt_tcircuit_name(const ckt_tcircuit *tc);
/* Why the circuit closed, or NULL while it is open. */
CKT_EXTERN const char *ckt_tcircuit_reason(const ckt_tcircuit *tc);
/* The remote peer's URL, or "" until it is known (a prefer-extant circuit
 * learns it from the first fragment back).  Once known it stays valid
 * until ckt_tcircuit_close(). */
CKT_EXTERN const char *ckt_tcircuit_remote_url(const ckt_tcircuit *tc);
/* Closes (telling the remote end) and releases the handle. */
CKT_EXTERN void ckt_tcircuit_close(ckt_tcircuit *tc, const char *reason);

typedef struct ckt_url {
  char host_port[CKT_MESSAGE_ADDR_MAX + 1];
  char service[CKT_MESSAGE_SERVICE_MAX + 1];
  uint8_t peer_id[CKT_PEER_ID_LEN];
  uint8_t circuit_id[CKT_PEER_ID_LEN];
  int has_circuit;
} ckt_url;

/* Parses ckt://host:port/service/peerID[/circuitID].  CKT_OK,
 * CKT_ERR_FORMAT. */
CKT_EXTERN int ckt_url_parse(const char *url, ckt_url *out);
/* Writes the URL form; CKT_OK or CKT_ERR_TOO_LARGE. */
CKT_EXTERN int ckt_url_format(const ckt_url *u, char *out, size_t outsz);

#ifdef __cplusplus
}
#endif

#endif /* CKT_PEER_H */
