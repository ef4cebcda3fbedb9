/*
 * peer_int.h — what the node (peer_node.c) and circuits (peer_circuit.c)
 * share: the node's state, connections, frame reading and sending.
 * Everything here runs on the loop thread unless it says otherwise.
 */
#ifndef CKT_PEER_INT_H
#define CKT_PEER_INT_H

#include <pthread.h>
#include <stdint.h>

#include "ckt/call.h"
#include "ckt/node.h"
#include "ckt/peer.h"
#include "core_buf.h"
#include "fragment_codec.h"
#include "quic_endpoint.h"
#include "quic_ev.h"
#include "sim_world.h"
#include "tls_psk.h"
#include "tls_quic.h"

/* App error codes on streams and connections. */
#define APP_CANCELED 0x10  /* the caller gave up (timeout) */
#define APP_MALFORMED 0x11 /* a frame that did not decode */
#define APP_PSK 0x12       /* the pre-shared-key layer failed */
#define APP_DEADLINE 0x13  /* the caller gave up: the call's deadline passed */
#define APP_DONE 0x14      /* the caller has the answer: it sends no more */

enum {
  RX_CALL = 1,
  RX_INBOUND = 2,
  RX_CIRCUIT = 3,
  RX_PSK = 4,
  RX_SRVCALL = 5
};

/* Collects one frame from a stream, bounded by the node's limits. */
typedef struct rxstate {
  int kind;
  uint8_t hdr[CKT_FRAME_HEADER_LEN];
  size_t hdr_got;
  uint32_t body_len;
  ckt_buf body;    /* grows as bytes arrive, never past body_len */
  uint64_t credit; /* bytes of the frame being read, not yet credited */
  /* Streaming calls: their streams' credit is manual (`manual`); while
   * `paused`, it is owed instead of given, and bytes that already arrived
   * wait in `held` (credited to the connection at once: `precredited` of
   * rx->credit must not be credited again). */
  int manual, paused;
  int answered; /* an inbound call was answered: drop what follows */
  uint64_t owed, precredited;
  ckt_buf held;
} rxstate;

typedef struct pconn pconn;

typedef struct oneway {
  struct oneway *next;
  uint8_t *frame;
  size_t frame_len;
} oneway;

/* One connection (either role) and what waits on it. */
struct pconn {
  pconn *next, *prev;
  ckt_node *n;
  ckt_conn *conn;
  ckt_addr addr;
  char name[CKT_ADDR_STRLEN];
  struct ckt_call *calls;         /* waiting for a stream or in flight */
  struct ckt_circuit *circuits;   /* open on this connection or waiting */
  struct ckt_circuit *wr_waiters; /* told CKT_ERR_AGAIN (peer_circuit.c) */
  size_t circuits_waiting;        /* of circuits, those without a stream */
  int linked;                     /* in n->conns */
  oneway *ow_head, *ow_tail;
  /* The pre-shared-key layer (peer_psk.c), when the node has a PSK:
   * streams wait until psk_ready; frames are sealed and opened with the
   * keys once psk.have_keys. */
  int psk_on, psk_ready;
  ckt_psk_hs psk;
  ckt_stream *psk_tx; /* our unidirectional stream: HELLO, then CONFIRM */
  uint8_t psk_in[CKT_PSK_HELLO_LEN + CKT_PSK_CONFIRM_LEN];
  size_t psk_in_len;
  /* The codec of the peer's last message: replies, pushes and download
   * parts answer with it (reader makes right).  0: none seen yet. */
  uint8_t peer_codec;
};

typedef struct service_t {
  struct service_t *next;
  char name[CKT_MESSAGE_SERVICE_MAX + 1];
  /* The call handler: `call` (answers at once), or `serve`/`parts` for
   * the kind in `call_kind` (ckt/call.h); registering one clears the
   * others. */
  int call_kind;
  ckt_serve_fn serve;
  ckt_parts_fn parts;
  ckt_call_handler call;
  ckt_oneway_handler oneway;
  void *call_user, *oneway_user;
  int has_peer; /* a peer service is registered under this name */
  ckt_peer_service peer;
  void *peer_user;
} service_t;

struct ckt_node {
  ckt_node_config cfg;
  char *listen, *cert_dir, *server_name, *client_name, *ca_file;
  ckt_message_limits lim;
  ckt_ev *ev;
  ckt_runtime *rt;
  ckt_endpoint *ep;
  WOLFSSL_CTX *server_tls, *client_tls;
  char address[CKT_ADDR_STRLEN];
  pconn *conns;
  pthread_mutex_t mu; /* services, stats */
  service_t *services;
  ckt_node_stats stats;
  uint64_t next_call_id, next_seqno;
  pthread_t thread;
  int thread_started;
  pthread_t loop_thread;
  int loop_running; /* guarded by mu */
  int stopping;
  size_t frame_max; /* largest frame body accepted (message or fragment) */
  ckt_fragment_limits flim;
  /* The fragment a service callback is being handed right now: the thread
   * layer takes it (node_take_rx_fragment) rather than copying it. */
  ckt_fragment *rx_frag;
  struct ckt_peer *peers; /* local peers (loop thread) */
  ckt_timer *stop_timer;  /* the grace period of a stop */
  /* Set when the node runs on a simulated host (ckt_sim_node_new):
   * no ev loop, no thread; the simulation drives everything. */
  ckt_sim_host *sim_host;
  int stop_posted;
  uint64_t circuit_queue_max; /* cfg.max_queued_per_circuit or default */
  /* The pre-shared key (psk_len 0: none) and the identity keys that sign
   * its HELLOs, [1] for connections we accept, [0] for those we dial. */
  uint8_t psk[CKT_PSK_MAX];
  size_t psk_len;
  ckt_ed25519_key id_key[2];
  /* Decompression on the loop thread (senders use one per thread). */
  struct ckt_zctx *zctx;
  /* Calls being served by asynchronous and streaming handlers. */
  struct ckt_srvcall *srvcalls;
};

/* peer_psk.c: the pre-shared-key layer on a connection. */
/* Starts it on a ready connection (sends our HELLO).  0, or the
 * connection is being closed. */
int psk_start(pconn *pc);
/* Bytes of the peer's PSK stream.  0, or the connection is being closed;
 * calls node_pconn_pump() once the layer is ready. */
int psk_input(pconn *pc, const uint8_t *data, size_t len);
/* ckt_stream_write() of whole frames, sealed when the layer is on. */
int node_stream_write(ckt_stream *s, const uint8_t *frames, size_t len,
                      int fin);
/* Opens a sealed frame body in place when the layer is on.  CKT_OK or
 * CKT_ERR_PSK. */
int psk_open_body(pconn *pc, uint8_t type, ckt_buf *body);

/* peer_call.c: calls on streams, both sides, and message frames. */
/* The codec a message travels with: its own, else the node's (requests)
 * or the one the peer last used (answers: answer != 0). */
int node_codec(ckt_node *n, const pconn *pc, const ckt_message *m, int answer);
/* Encodes m as one frame with codec (CKT_CODEC_NONE..MAX).  Any thread.
 * CKT_OK, CKT_ERR_TOO_LARGE, CKT_ERR_NOMEM, CKT_ERR_INVALID_ARGUMENT. */
int node_frame_encode(ckt_node *n, const ckt_message *m, int codec,
                      uint8_t **out, size_t *len);
/* Decodes a message frame's body (plain or compressed; body is freed).
 * Sets (*out)->codec.  CKT_OK or the decoders' errors. */
int node_message_decode(ckt_node *n, uint8_t type, ckt_buf *body,
                        ckt_message **out);
/* Stamps an outgoing message: created, seqno, from, to. */
void node_stamp(ckt_node *n, ckt_message *m, const char *peer,
                uint64_t timeout_ns);
/* Runs fn(job) on the loop: directly when already there. */
int node_run_on_loop(ckt_node *n, ckt_post_fn fn, void *job);
/* A CALL arrived on a peer-opened bidirectional stream whose reader is
 * rx (an inbound one): serves it at once or hands it to an asynchronous
 * or streaming handler (rx then becomes the call's).  Takes m. */
void node_serve(ckt_node *n, ckt_stream *s, rxstate *rx, ckt_message *m);
/* A message on a call's stream (either side).  Takes m.  0, or an
 * application error to reset the stream with. */
int call_on_message(rxstate *rx, ckt_stream *s, ckt_message *m);
int srvcall_on_message(rxstate *rx, ckt_stream *s, ckt_message *m);
/* The stream of a call (either side) is gone; app_error as the
 * endpoint gave it. */
void call_on_stream_closed(rxstate *rx, uint64_t app_error);
void srvcall_on_stream_closed(rxstate *rx, uint64_t app_error);
/* A frame on a call's stream did not decode. */
void call_malformed(rxstate *rx);
void srvcall_malformed(rxstate *rx);
/* The peer acknowledged data on a call's stream. */
void call_acked(rxstate *rx);
void srvcall_acked(rxstate *rx);
/* Opens streams for calls waiting on pc. */
void calls_pump(pconn *pc);
/* Moves calls still waiting for a stream from `from` to `to`. */
void calls_adopt(pconn *to, pconn *from);
/* Finishes every call on pc with err and why (the connection is gone). */
void calls_conn_lost(pconn *pc, int err, const char *why);
/* Frees what handlers still hold (the node is being freed). */
void srvcalls_free_all(ckt_node *n);
/* peer_node.c: the service entry for name, copied under the lock (NULL
 * members when there is none). */
void node_service_lookup(ckt_node *n, const char *name, service_t *out);
/* Feeds a resumed stream what it held while paused. */
void node_stream_resume(ckt_stream *s);

/* peer_sim.c: the simulation's built-in identity for host `index`: a
 * certificate and key derived from the index, signed by the built-in CA
 * (PEM strings owned by a process-wide cache; *key is a copy to wipe).
 * CKT_OK, CKT_ERR_NOMEM, CKT_ERR_CRYPTO. */
int peer_sim_identity(int index, const char **cert, size_t *cert_len,
                      ckt_ed25519_key *key, const char **ca, size_t *ca_len);

void node_log(ckt_node *n, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int node_stopping(ckt_node *n);
/* ckt_addr_parse() of "host:port", numeric only on a simulated node. */
int node_parse_addr(ckt_node *n, const char *host_port, ckt_addr *out);
int node_on_loop(ckt_node *n);
/* A connection to addr for sending (a ready one of either role first, else
 * one being dialed); dials when there is none.  CKT_OK, CKT_ERR_CLOSED,
 * CKT_ERR_AGAIN, CKT_ERR_NOMEM. */
int node_pconn_get(ckt_node *n, const ckt_addr *addr, pconn **out);
/* Opens streams for what waits on pc (calls, one-way, circuits). */
void node_pconn_pump(pconn *pc);
/* Reads one frame: 1 with *type and the body moved into *body (the caller
 * frees it), 0 when more bytes are needed, or a CKT_ERR_*. */
int node_rx_frame(ckt_node *n, rxstate *rx, const uint8_t **data, size_t *len,
                  uint8_t *type, ckt_buf *body);
void node_rx_clear(rxstate *rx);
void node_rx_credit(ckt_conn *conn, rxstate *rx);
/* A peer service registered under name (copied out under the lock). */
/* Takes ownership of f if it is the fragment being delivered (the
 * caller frees it later); NULL otherwise.  Loop thread. */
ckt_fragment *node_take_rx_fragment(ckt_node *n, const ckt_fragment *f);

int node_peer_service(ckt_node *n, const char *name, ckt_peer_service *svc,
                      void **user);

/* peer_circuit.c: the node hands circuit events over. */
void circuit_accept(ckt_node *n, pconn *pc, ckt_stream *s, rxstate *inbound,
                    ckt_fragment *open, uint64_t open_bytes);
int circuit_on_frame(ckt_stream *s, rxstate *rx, uint8_t type, ckt_buf *body);
void circuit_on_stream_closed(rxstate *rx, uint64_t app_error);
void circuit_pump(pconn *pc);
/* Moves circuits still waiting for a stream from `from` to `to`. */
void circuit_adopt(pconn *to, pconn *from);
void circuit_conn_lost(pconn *pc, const char *why);
void circuit_writable(ckt_stream *s, rxstate *rx);
/* ckt_circuit_send() that never takes f (the caller frees it, so it can
 * try again after CKT_ERR_AGAIN without copying the payload). */
int circuit_send_data(ckt_circuit *c, ckt_fragment *f);
/* Stops every peer of `service` whose callbacks get `user` (a thread peer
 * going away: the peers remote nodes started for it too). */
void circuit_stop_peers_of(ckt_node *n, const char *service, const void *user);
/* Stops every peer; 1 if any circuit was closed (CLOSE frames queued). */
int circuit_stop_all(ckt_node *n);
/* A frame on a circuit's stream did not decode: the circuit ends. */
void circuit_malformed(rxstate *rx, const char *what);
/* Withdraws a peer service (a thread-driven peer went away). */
void node_unregister_peer_service(ckt_node *n, const char *name,
                                  const void *user);
void circuit_register_builtin(ckt_node *n);
/* Stream credit of circuits: the node reports every received chunk; a
 * circuit whose reader fell behind (the thread-facing layer's queue is
 * full) keeps it owed until the reader catches up. */
void circuit_received(rxstate *rx, uint64_t n);
void circuit_set_stalled(ckt_circuit *c, int on);

#endif
