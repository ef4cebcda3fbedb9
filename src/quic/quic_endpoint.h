/*
 * quic_endpoint.h — one UDP port, both roles, any number of connections.
 *
 * The endpoint is I/O-free: the runtime hands it datagrams
 * (ckt_endpoint_recv) and it answers through the runtime's send, timers
 * and post.  It accepts connections (server role, when a server TLS
 * context is given) and dials them (client role) at the same time, and
 * demultiplexes every packet through one connection-ID table.
 *
 * Streams carry bytes; framing is the caller's.  Received bytes are handed
 * over at once and credited back to flow control when the callback
 * returns; written bytes are copied and kept until the peer acknowledges
 * them.
 *
 * Threading: everything here runs on the runtime's loop thread.
 */
#ifndef CKT_QUIC_ENDPOINT_H
#define CKT_QUIC_ENDPOINT_H

#include <stddef.h>
#include <stdint.h>

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>

#include "core_addr.h"
#include "core_runtime.h"

typedef struct ckt_endpoint ckt_endpoint;
typedef struct ckt_conn ckt_conn;
typedef struct ckt_stream ckt_stream;

/* Local connection IDs all have this length (the demultiplexing key). */
#define CKT_SCID_LEN 16
#define CKT_STATIC_SECRET_LEN 32

typedef struct ckt_endpoint_callbacks {
  /* The handshake finished and the peer's certificate was accepted.
   * Return 0; nonzero closes the connection (say why first with
   * ckt_conn_set_why()).  Keying material can be exported only here. */
  int (*conn_ready)(ckt_conn *c, void *user);
  /* The connection is gone: err is CKT_OK for an orderly close by either
   * side, else CKT_ERR_TLS, CKT_ERR_TIMEOUT, CKT_ERR_CONNECTION; `why` is
   * one sentence.  Right after it, stream_closed runs for every stream
   * whose user pointer is still set (so owners can free their state). */
  void (*conn_closed)(ckt_conn *c, int err, const char *why, void *user);
  /* The peer opened a stream.  Return 0 to keep it. */
  int (*stream_opened)(ckt_conn *c, ckt_stream *s, void *user);
  /* Bytes arrived on s (copy what you keep); fin: the peer finished
   * sending.  Return 0, or a positive application error code to reset the
   * stream with it (bad framing). */
  int (*stream_data)(ckt_conn *c, ckt_stream *s, const uint8_t *data,
                     size_t len, int fin, void *user);
  /* s is closed in both directions (app_error != 0: it was reset). */
  void (*stream_closed)(ckt_conn *c, ckt_stream *s, uint64_t app_error,
                        void *user);
  /* The peer allows more streams: a ckt_conn_open_stream() that failed
   * with CKT_ERR_AGAIN can be retried. */
  void (*streams_available)(ckt_conn *c, void *user);
  /* The peer acknowledged data on s (ckt_stream_unacked() went down). */
  void (*stream_acked)(ckt_conn *c, ckt_stream *s, void *user);
} ckt_endpoint_callbacks;

typedef struct ckt_endpoint_config {
  WOLFSSL_CTX *server_tls;    /* NULL: no server role (nothing accepted) */
  WOLFSSL_CTX *client_tls;    /* NULL: no client role */
  uint64_t idle_timeout;      /* ns; a silent peer is dropped after this */
  uint64_t keepalive;         /* ns; PING when idle this long (0: never) */
  uint64_t handshake_timeout; /* ns */
  int retry;                  /* validate client addresses with Retry */
  size_t max_connections;     /* accepted, and dialed, each (0: 4096) */
  size_t max_handshakes;      /* accepted ones still in handshake (0: 256);
                                 past a quarter of it, Retry is required */
  size_t max_per_address;     /* accepted connections from one IP (0: a
                                 quarter of max_connections) */
  uint32_t handshake_rate;    /* accepted handshakes a second before Retry
                                 is required (0: 1000) */
  uint64_t max_queued;        /* bytes written but not yet acknowledged, per
                                 connection (0: 64 MiB) */
  uint64_t stream_window;     /* flow-control window per stream, bytes */
  uint64_t conn_window;       /* flow-control window per connection, bytes */
  uint64_t max_streams;       /* concurrent peer-opened streams per kind */
  /* 1: the connection-level flow-control window is credited only by
   * ckt_conn_credit(), as the owner consumes what it buffered, so
   * conn_window bounds what a peer can make this side hold.  Stream-level
   * credit stays automatic. */
  int manual_conn_credit;
  /* 1: peers' addresses say nothing about where they are (the simulator's
   * virtual 127.77.x.y hosts): no loopback shortcuts (big packets,
   * unpaced bursts) whatever the address looks like. */
  int no_loopback_shortcuts;
  /* Keys stateless-reset tokens and retry tokens.  Derive it from the
   * node's identity so that a restarted node can still reset connections
   * its previous run had (peers then notice at once). */
  uint8_t static_secret[CKT_STATIC_SECRET_LEN];
  ckt_endpoint_callbacks cb;
  void *user;
  /* Optional: one line per notable event (refused handshake, reset...). */
  void (*log)(void *user, const char *line);
} ckt_endpoint_config;

typedef struct ckt_endpoint_stats {
  uint64_t connections_accepted, connections_dialed, connections_open;
  uint64_t packets_dropped; /* undecodable or for nobody */
  uint64_t stateless_resets_sent, version_negotiations_sent, retries_sent;
} ckt_endpoint_stats;

/* `local` is the address the runtime's socket is bound to (a concrete
 * address: it names the path of every connection).  CKT_OK,
 * CKT_ERR_INVALID_ARGUMENT, CKT_ERR_NOMEM. */
int ckt_endpoint_new(ckt_runtime *rt, const ckt_addr *local,
                     const ckt_endpoint_config *cfg, ckt_endpoint **out);
/* Closes every connection (CONNECTION_CLOSE sent; no conn_closed, but
 * stream_closed for streams that still hold a user pointer, so owners can
 * free their state) and frees everything. */
void ckt_endpoint_free(ckt_endpoint *ep);
/* A datagram arrived on the endpoint's socket.  Replies are written by
 * ckt_endpoint_flush(), which the runtime calls after each batch it read
 * (so that ACKs for a whole batch share packets). */
void ckt_endpoint_recv(ckt_endpoint *ep, const ckt_addr *from,
                       const uint8_t *data, size_t len);
void ckt_endpoint_flush(ckt_endpoint *ep);
const ckt_endpoint_stats *ckt_endpoint_get_stats(const ckt_endpoint *ep);

/* Dials `to`.  The connection reports conn_ready or conn_closed later.
 * CKT_OK, CKT_ERR_INVALID_ARGUMENT (no client role), CKT_ERR_AGAIN (at
 * max_connections), CKT_ERR_NOMEM, CKT_ERR_CRYPTO. */
int ckt_endpoint_connect(ckt_endpoint *ep, const ckt_addr *to, void *user,
                         ckt_conn **out);

void *ckt_conn_user(const ckt_conn *c);
void ckt_conn_set_user(ckt_conn *c, void *user);
const ckt_addr *ckt_conn_peer(const ckt_conn *c);
int ckt_conn_is_ready(const ckt_conn *c);
int ckt_conn_is_client(const ckt_conn *c);   /* 1: we dialed it */
uint64_t ckt_conn_serial(const ckt_conn *c); /* unique per endpoint */
/* "TLS_CHACHA20_POLY1305_SHA256" once ready. */
const char *ckt_conn_suite(const ckt_conn *c);
/* The peer's Ed25519 public key in hex (empty in skip-verify mode before
 * the handshake ends). */
const char *ckt_conn_peer_key(const ckt_conn *c);
/* Keying material exported from the connection's TLS session (RFC 8446
 * 7.5), once ready: the same bytes on both ends.  CKT_OK, CKT_ERR_CRYPTO. */
int ckt_conn_export(ckt_conn *c, const char *label, uint8_t *out, size_t len);
/* The sentence a refused connection is closed with (from conn_ready). */
void ckt_conn_set_why(ckt_conn *c, const char *why);
/* Closes gracefully: CONNECTION_CLOSE with an application error code and a
 * reason; conn_closed follows (err CKT_OK when app_error is 0). */
void ckt_conn_close(ckt_conn *c, uint64_t app_error, const char *why);

/* Gives the peer n more bytes of connection-level credit (with
 * manual_conn_credit: call it for every received byte once it is consumed
 * or dropped). */
void ckt_conn_credit(ckt_conn *c, uint64_t n);

/* Opens a stream (bidi or unidirectional) once the connection is ready.
 * CKT_OK, CKT_ERR_AGAIN (the peer's stream limit: wait for
 * streams_available; also before ready), CKT_ERR_CLOSED, CKT_ERR_NOMEM. */
int ckt_conn_open_stream(ckt_conn *c, int bidi, void *user, ckt_stream **out);
/* Queues bytes (copied) and optionally the end of the stream.  CKT_OK,
 * CKT_ERR_CLOSED (the stream's sending side is finished or reset, or the
 * connection is closing), CKT_ERR_AGAIN (max_queued bytes already wait
 * for the peer's acknowledgement), CKT_ERR_NOMEM. */
int ckt_stream_write(ckt_stream *s, const void *data, size_t len, int fin);
/* Aborts both directions with app_error (nonzero). */
void ckt_stream_reset(ckt_stream *s, uint64_t app_error);
/* With manual credit on, bytes received on s are not credited back to its
 * flow-control window until the owner calls ckt_stream_credit(): a reader
 * that stops consuming stalls this stream only. */
void ckt_stream_set_manual_credit(ckt_stream *s, int on);
void ckt_stream_credit(ckt_stream *s, uint64_t n);
void *ckt_stream_user(const ckt_stream *s);
void ckt_stream_set_user(ckt_stream *s, void *user);
ckt_conn *ckt_stream_conn(const ckt_stream *s);
int64_t ckt_stream_id(const ckt_stream *s);
/* Bytes written but not yet acknowledged by the peer. */
uint64_t ckt_stream_unacked(const ckt_stream *s);

#endif
